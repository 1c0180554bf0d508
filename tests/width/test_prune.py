"""mpruner.width.prune_width: HF reload with plain from_pretrained, CNN save/load, depth + width, errors."""
import pytest
import torch
import torch.nn as nn

import mpruner
from mpruner.width import prune_width

pytest.importorskip("torch_pruning")
T = pytest.importorskip("transformers")

from tests.helpers.surgery_models import ResNet, randomize_batchnorm  # noqa: E402

IDS = {"input_ids": torch.randint(0, 64, (2, 7), generator=torch.Generator().manual_seed(0))}


def tiny(kind, seed=0):
    torch.manual_seed(seed)
    if kind == "bert":
        return T.BertForSequenceClassification(T.BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2,
                                                            num_attention_heads=4, intermediate_size=64)).eval()
    if kind == "roberta":
        return T.RobertaForSequenceClassification(T.RobertaConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2,
                                                                  num_attention_heads=4, intermediate_size=64,
                                                                  max_position_embeddings=40)).eval()
    if kind == "gpt2":
        return T.GPT2LMHeadModel(T.GPT2Config(vocab_size=64, n_embd=32, n_layer=2, n_head=4, n_positions=32)).eval()
    if kind == "llama":  # MHA
        return T.LlamaForCausalLM(T.LlamaConfig(vocab_size=64, hidden_size=48, intermediate_size=64, num_hidden_layers=3,
                                                num_attention_heads=4, num_key_value_heads=4,
                                                max_position_embeddings=64)).eval()
    if kind == "qwen2":  # GQA, biases on q/k/v
        return T.Qwen2ForCausalLM(T.Qwen2Config(vocab_size=64, hidden_size=48, intermediate_size=64, num_hidden_layers=2,
                                                num_attention_heads=8, num_key_value_heads=4,
                                                max_position_embeddings=64)).eval()
    raise ValueError(kind)


def params(m):
    return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize("kind", ["bert", "roberta", "gpt2", "llama", "qwen2"])
def test_hf_width_pruned_reloads_with_plain_from_pretrained(kind, tmp_path):
    model = tiny(kind)
    pruned = prune_width(model, IDS, ratio=0.25)
    assert params(pruned) < params(model) and params(model) == params(tiny(kind))  # caller's model untouched
    cfg = pruned.config
    assert cfg.hidden_size == model.config.hidden_size  # hidden size kept
    if kind in ("llama", "qwen2"):
        assert cfg.num_attention_heads == {"llama": 3, "qwen2": 6}[kind]
        assert cfg.intermediate_size == 48
    _reloads_and_generates(type(model), pruned, tmp_path, generate=False)


def _reloads_and_generates(cls, pruned, tmp_path, generate=True):
    """Plain from_pretrained gives the same parameters and logits; KV-cache generate() matches the uncached run."""
    with torch.no_grad():
        want = pruned(**IDS).logits
    pruned.save_pretrained(tmp_path)
    back = cls.from_pretrained(tmp_path).eval()
    assert params(back) == params(pruned)
    with torch.no_grad():
        torch.testing.assert_close(back(**IDS).logits, want)
    if not generate:
        return
    prompt = IDS["input_ids"][:1]
    cached = back.generate(prompt, max_new_tokens=5, do_sample=False, use_cache=True, pad_token_id=0)
    plain = back.generate(prompt, max_new_tokens=5, do_sample=False, use_cache=False, pad_token_id=0)
    assert torch.equal(cached, plain)


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
@pytest.mark.parametrize("heads", [True, False])
def test_prune_hidden_llama_family_reloads_and_generates(kind, heads, tmp_path):
    """The residual stream shrinks everywhere it is read or written; the heads keep their size."""
    model = tiny(kind)
    hd = model.model.layers[0].self_attn.head_dim
    pruned = prune_width(model, IDS, ratio=0.25, prune_hidden=True, prune_heads=heads)
    cfg = pruned.config
    assert cfg.hidden_size == 36 and cfg.head_dim == hd and model.config.hidden_size == 48
    assert pruned.model.embed_tokens.weight.shape == (64, 36) and pruned.model.norm.weight.shape == (36,)
    layer = pruned.model.layers[0]
    assert layer.self_attn.q_proj.in_features == 36 and layer.mlp.down_proj.out_features == 36
    assert layer.self_attn.o_proj.in_features == cfg.num_attention_heads * hd
    _reloads_and_generates(type(model), pruned, tmp_path)


@pytest.mark.parametrize("kind", ["bert", "roberta", "bert-mlm"])
def test_bert_heads_and_hidden_together_reload_with_plain_from_pretrained(kind, tmp_path):
    """BERT's config derives the head size from hidden_size / num_heads: one head of four goes
    with a quarter of the hidden channels, so the head size (8) stays and from_pretrained rebuilds it."""
    if kind == "bert-mlm":
        torch.manual_seed(0)
        model = T.BertForMaskedLM(T.BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2,
                                               num_attention_heads=4, intermediate_size=64)).eval()
    else:
        model = tiny(kind)
    pruned = prune_width(model, IDS, ratio=0.25, prune_hidden=True)
    cfg = pruned.config
    assert (cfg.hidden_size, cfg.num_attention_heads, cfg.intermediate_size) == (24, 3, 48)
    assert model.config.hidden_size == 32 and params(pruned) < 0.7 * params(model)
    attn = pruned.base_model.encoder.layer[0].attention.self
    assert attn.query.weight.shape == (24, 24) and attn.attention_head_size == 8
    if kind == "bert-mlm":  # the decoder stays tied to the word embeddings
        assert pruned.cls.predictions.decoder.weight is pruned.bert.embeddings.word_embeddings.weight
    _reloads_and_generates(type(model), pruned, tmp_path, generate=False)


def test_bert_keeps_its_strongest_heads():
    """A head whose q/k/v rows and output columns are zero is the one removed."""
    model = tiny("bert")
    with torch.no_grad():
        for layer in model.bert.encoder.layer:
            for lin in (layer.attention.self.query, layer.attention.self.key, layer.attention.self.value):
                lin.weight[16:24] = 0
            layer.attention.output.dense.weight[:, 16:24] = 0
    q_before = model.bert.encoder.layer[0].attention.self.query.weight
    pruned = prune_width(model, IDS, ratio=0.25, prune_hidden=True)
    q = pruned.bert.encoder.layer[0].attention.self.query.weight  # (24 heads' rows, 24 kept hidden columns)
    kept_rows = [r for r in range(32) if not 16 <= r < 24]
    emb = model.bert.embeddings.word_embeddings.weight
    cols = [c for c in range(32) if any(torch.equal(pruned.bert.embeddings.word_embeddings.weight[:, j], emb[:, c])
                                        for j in range(24))]
    torch.testing.assert_close(q, q_before[kept_rows][:, cols])


def test_prune_hidden_drops_the_weakest_channels():
    """Channels whose every weight is zero carry nothing: they are the ones removed."""
    model = tiny("llama")
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2 and p.shape[1] == 48:
                p[:, 5] = 0
                p[:, 7] = 0
            elif p.dim() == 2 and p.shape[0] == 48:
                p[5] = 0
                p[7] = 0
            elif p.dim() == 1 and p.shape[0] == 48:
                p[5] = p[7] = 0
    pruned = prune_width(model, IDS, ratio=2 / 48, prune_hidden=True, prune_heads=False)
    kept = pruned.model.embed_tokens.weight
    want = model.model.embed_tokens.weight[:, [c for c in range(48) if c not in (5, 7)]]
    assert torch.equal(kept, want)


def test_generate_with_kv_cache_matches_uncached_after_depth_and_width():
    model = tiny("llama")
    shallow = mpruner.remove_layers(model, [1])
    pruned = prune_width(shallow, IDS, ratio=0.25)
    prompt = IDS["input_ids"][:1]
    cached = pruned.generate(prompt, max_new_tokens=6, do_sample=False, use_cache=True, pad_token_id=0)
    plain = pruned.generate(prompt, max_new_tokens=6, do_sample=False, use_cache=False, pad_token_id=0)
    assert torch.equal(cached, plain)
    assert pruned.config.num_hidden_layers == 2 and pruned.config.num_attention_heads == 3


@pytest.mark.parametrize("order", ["depth-then-width", "width-then-depth"])
def test_cnn_channels_pruned_save_and_load_pruned(order, tmp_path):
    model = randomize_batchnorm(ResNet()).eval()
    x = torch.randn(2, 3, 32, 32)
    if order == "depth-then-width":
        pruned = prune_width(mpruner.remove_layers(model, {"layer1..layer4": [1]}), x, ratio=0.25)
    else:
        pruned = mpruner.remove_layers(prune_width(model, x, ratio=0.25), {"layer1..layer4": [1]})
    assert params(pruned) < 0.75 * params(model)
    record = mpruner.get_record(pruned)
    assert record["width"] and record["steps"] == [{"layer1..layer4": [1]}]
    mpruner.save_pruned(pruned, tmp_path)
    back = mpruner.load_pruned(tmp_path, ResNet).eval()
    with torch.no_grad():
        torch.testing.assert_close(back(x), pruned.eval()(x))
    assert mpruner.get_record(back)["width"] == record["width"]
    stats = mpruner.model_stats(pruned, x, measure_latency=False)
    assert stats.macs < mpruner.model_stats(model, x, measure_latency=False).macs


def test_inplace_updates_the_callers_object():
    model = tiny("bert")
    out = prune_width(model, IDS, ratio=0.5, inplace=True)
    assert out is model and model.config.intermediate_size == 32


class Shift(nn.Module):
    """Adds a fixed-width buffer: Torch-Pruning narrows the channels but has no rule for it."""

    def __init__(self, width):
        super().__init__()
        self.register_buffer("offset", torch.linspace(0, 1, width))

    def forward(self, x):
        return x + self.offset


class Odd(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.shift, self.b, self.fc = nn.Linear(8, 8), Shift(8), nn.Linear(8, 8), nn.Linear(8, 3)

    def forward(self, x):
        return self.fc(self.b(self.shift(self.a(x))))


@pytest.mark.parametrize("kwargs,err,match", [
    (dict(ratio=0), ValueError, "ratio"), (dict(ratio=1.0), ValueError, "ratio"),
    (dict(importance="nope"), ValueError, "importance"), (dict(prune_heads=True), ValueError, "head size"),
    (dict(prune_hidden=True, prune_heads=False), ValueError, "removes heads with the hidden channels"), (dict(ignored_layers=["nope"]), ValueError, "not a module"),
    (dict(round_to=0), ValueError, "round_to"),
])
@pytest.mark.parametrize("inplace", [False, True])
def test_errors_leave_the_model_unchanged(kwargs, err, match, inplace):
    model = tiny("bert")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(err, match=match):
        prune_width(model, IDS, inplace=inplace, **kwargs)
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert model.config.intermediate_size == 64


def test_unprunable_model_error_names_the_problem():
    model = Odd()
    with pytest.raises(RuntimeError, match="Torch-Pruning could not.*shift \\(Shift\\)"):
        prune_width(model, torch.randn(2, 8), ratio=0.5)
    assert model.a.out_features == 8


def test_missing_torch_pruning_says_how_to_install(monkeypatch):
    import builtins

    real = builtins.__import__

    def fake(name, *a, **k):
        if name == "torch_pruning":
            raise ImportError(name)
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", fake)
    with pytest.raises(ImportError, match="pip install torch-pruning"):
        prune_width(tiny("bert"), IDS)


def test_reachable_from_plain_import():
    assert mpruner.width.prune_width is prune_width


def test_gpt2_heads_and_hidden_together_reload_and_generate(tmp_path):
    model = tiny("gpt2")
    pruned = prune_width(model, IDS, ratio=0.25, prune_hidden=True)
    assert (pruned.config.n_embd, pruned.config.n_head, pruned.config.n_inner) == (24, 3, 96)
    assert pruned.lm_head.weight is pruned.transformer.wte.weight and model.config.n_embd == 32
    _reloads_and_generates(type(model), pruned, tmp_path)
