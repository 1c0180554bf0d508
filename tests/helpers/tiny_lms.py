"""Tiny decoder LMs with random weights (LLaMA, Qwen2, Mistral, GPT-2) for the LM tests."""
import torch

VOCAB = 97
FAMILIES = ("llama", "qwen2", "mistral", "gpt2")


def tiny_lm(family: str, layers: int = 4, seed: int = 0):
    import transformers as tf

    common = dict(vocab_size=VOCAB, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    if family == "gpt2":
        config = tf.GPT2Config(n_embd=32, n_layer=layers, n_head=4, n_positions=64, **common)
        cls = tf.GPT2LMHeadModel
    else:
        config_cls, cls = {"llama": (tf.LlamaConfig, tf.LlamaForCausalLM),
                           "qwen2": (tf.Qwen2Config, tf.Qwen2ForCausalLM),
                           "mistral": (tf.MistralConfig, tf.MistralForCausalLM)}[family]
        config = config_cls(hidden_size=32, intermediate_size=64, num_hidden_layers=layers, num_attention_heads=4,
                            num_key_value_heads=2, max_position_embeddings=64, **common)
    torch.manual_seed(seed)
    model = cls(config).eval()
    # Random init keeps hidden states close to the embeddings; scaling the blocks' output
    # projections makes the layers differ, so similarity tests are not all-ones.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2 and ("o_proj" in name or "down_proj" in name or "c_proj" in name):
                p.mul_(8.0)
    return model


class ToyTokenizer:
    """Just enough tokenizer for perplexity(data=[str], tokenizer=...): one id per character."""

    def __init__(self, bos=1, eos=2):
        self.bos_token_id, self.eos_token_id, self.pad_token_id = bos, eos, 0

    def __call__(self, texts, add_special_tokens=False, **kw):
        single = isinstance(texts, str)
        ids = [[3 + (ord(c) % (VOCAB - 3)) for c in t] for t in ([texts] if single else texts)]
        return {"input_ids": ids[0] if single else ids}
