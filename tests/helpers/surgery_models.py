"""Tiny models for the surgery and block tests: random weights, no downloads; and what the
surgery tests check of a model (its snapshot, outputs, parameter counts).

The torchvision-style ResNet mirrors torchvision.models.resnet (same attribute
names: conv1/bn1/relu/maxpool/layer1..layer4/avgpool/fc, blocks with
conv1/bn1/conv2/bn2/downsample/stride) because torchvision is not importable here.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from mpruner.adapters import find_blocks

VOCAB = 100


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """torchvision.models.ResNet in miniature (width 8 instead of 64)."""

    def __init__(self, block=BasicBlock, layers=(2, 2, 2, 2), num_classes=10, width=8):
        super().__init__()
        self.inplanes = width
        self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = self._make_layer(block, width, layers[0])
        self.layer2 = self._make_layer(block, width * 2, layers[1], stride=2)
        self.layer3 = self._make_layer(block, width * 4, layers[2], stride=2)
        self.layer4 = self._make_layer(block, width * 8, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(width * 8 * block.expansion, num_classes)

    def _make_layer(self, block, planes, blocks, stride=1):
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(nn.Conv2d(self.inplanes, planes * block.expansion, 1, stride, bias=False),
                                       nn.BatchNorm2d(planes * block.expansion))
        layers = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def randomize_batchnorm(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BN statistics, so that a wrong weight mapping shows in outputs."""
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.copy_(torch.randn(module.num_features, generator=generator) * 0.1)
            module.running_var.copy_(torch.rand(module.num_features, generator=generator) + 0.5)
            module.weight.data.copy_(torch.rand(module.num_features, generator=generator) + 0.5)
            module.bias.data.copy_(torch.randn(module.num_features, generator=generator) * 0.1)
    return model


def hf_case(kind: str):
    """(model class, config, example forward kwargs) for a tiny Hugging Face model."""
    import transformers as T

    torch.manual_seed(0)
    ids = torch.randint(3, VOCAB, (2, 7))
    text = dict(input_ids=ids, attention_mask=torch.ones_like(ids))
    small = dict(hidden_size=32, num_attention_heads=2, num_hidden_layers=4, intermediate_size=64, vocab_size=VOCAB)
    decoder = dict(small, num_key_value_heads=1, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    if kind == "bert":
        return T.BertForSequenceClassification, T.BertConfig(**small), text
    if kind == "roberta":
        return T.RobertaModel, T.RobertaConfig(**small, pad_token_id=1), text
    if kind == "distilbert":
        return T.DistilBertModel, T.DistilBertConfig(dim=32, n_heads=2, n_layers=4, hidden_dim=64,
                                                     vocab_size=VOCAB), text
    if kind == "t5":
        config = T.T5Config(d_model=32, num_heads=2, num_layers=3, num_decoder_layers=4, d_ff=64, d_kv=16,
                            vocab_size=VOCAB, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
        return T.T5ForConditionalGeneration, config, dict(text, decoder_input_ids=ids[:, :4])
    if kind == "llama":
        return T.LlamaForCausalLM, T.LlamaConfig(**decoder), text
    if kind == "mistral":
        return T.MistralForCausalLM, T.MistralConfig(**decoder), text
    if kind == "qwen2":
        # Sliding-window layers from index 2 on: layer_types is ["full", "full", "sliding", "sliding"].
        return T.Qwen2ForCausalLM, T.Qwen2Config(**decoder, use_sliding_window=True, sliding_window=4,
                                                 max_window_layers=2), text
    if kind == "qwen3":  # Qwen2's sliding-window layout, per-head q/k norms
        return T.Qwen3ForCausalLM, T.Qwen3Config(**decoder, head_dim=16, use_sliding_window=True, sliding_window=4,
                                                 max_window_layers=2), text
    if kind == "mixtral":  # sparse mixture of 4 experts, 2 per token
        return T.MixtralForCausalLM, T.MixtralConfig(**decoder, num_local_experts=4, num_experts_per_tok=2), text
    if kind == "gemma":
        return T.GemmaForCausalLM, T.GemmaConfig(**decoder, head_dim=16), text
    if kind == "gemma2":  # layer_types alternates sliding and full attention: [sliding, full, sliding, full]
        return T.Gemma2ForCausalLM, T.Gemma2Config(**decoder, head_dim=16, query_pre_attn_scalar=16,
                                                   sliding_window=4), text
    if kind == "phi3":  # fused qkv_proj and gate_up_proj
        return T.Phi3ForCausalLM, T.Phi3Config(**decoder, max_position_embeddings=64,
                                               original_max_position_embeddings=64), text
    if kind == "gpt2":
        config = T.GPT2Config(n_embd=32, n_head=2, n_layer=4, n_positions=64, vocab_size=VOCAB,
                              bos_token_id=1, eos_token_id=2, pad_token_id=0)
        return T.GPT2LMHeadModel, config, text
    if kind == "vit":
        config = T.ViTConfig(hidden_size=32, num_attention_heads=2, num_hidden_layers=4, intermediate_size=64,
                             image_size=16, patch_size=4, num_labels=3)
        return T.ViTForImageClassification, config, dict(pixel_values=torch.randn(2, 3, 16, 16))
    if kind == "hf-resnet":
        # Stage 0 keeps its width (identity shortcuts throughout); stage 1 widens in its first block.
        config = T.ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[3, 2], layer_type="basic",
                                num_labels=3)
        return T.ResNetForImageClassification, config, dict(pixel_values=torch.randn(2, 3, 32, 32))
    raise KeyError(kind)


def hf_model(kind: str):
    model_class, config, inputs = hf_case(kind)
    torch.manual_seed(0)
    model = model_class(config).eval()
    if kind == "hf-resnet":
        randomize_batchnorm(model)
    return model, inputs


def efficientnet_lite0(image_size: int = 64):
    """EfficientNet-Lite0 architecture, random weights (the real weights are in tests/surgery/test_pretrained.py)."""
    import pytest

    EfficientNet = pytest.importorskip("efficientnet_lite_pytorch").EfficientNet  # skip, not fail, without it
    torch.manual_seed(0)
    model = EfficientNet.from_name("efficientnet-lite0", image_size=image_size, num_classes=10)
    return randomize_batchnorm(model.eval())


def snapshot(model):
    """Everything a failed or non-inplace removal must leave as it was."""
    state = {k: v.clone() for k, v in model.state_dict().items()}
    config = model.config.to_dict() if hasattr(model, "config") else None
    return state, config, repr(model), dict(model.__dict__.get("_mpruner_surgery") or {})


def assert_unchanged(model, before):
    state, config, text, record = snapshot(model)
    assert text == before[2]
    assert state.keys() == before[0].keys()
    assert all(torch.equal(state[k], before[0][k]) for k in state)
    assert config == before[1]
    assert record == before[3]


def output_of(model, inputs):
    with torch.no_grad():
        out = model(**inputs) if isinstance(inputs, dict) else model(inputs)
    if isinstance(out, torch.Tensor):
        return out
    return out.logits if getattr(out, "logits", None) is not None else out.last_hidden_state


def n_params(model):
    return sum(p.numel() for p in model.parameters())


def tv_resnet():
    """The torchvision-style ResNet in eval mode, seeded, with non-trivial BN statistics."""
    torch.manual_seed(0)
    return randomize_batchnorm(ResNet().eval())


def removed_parameter_count_cnn(model, indices):
    (bl,) = find_blocks(model)
    return sum(p.numel() for i in indices for p in bl.modules[i].parameters())
