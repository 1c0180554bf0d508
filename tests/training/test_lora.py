"""LoRA healing through peft: adapters only, merged back; pruned and healed models save, reload, generate."""
import pytest
import torch

import mpruner

from tests.helpers.tiny_lms import FAMILIES, tiny_lm

pytest.importorskip("transformers")


def _windows(n=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 97, (n * 2 * 16,), generator=g)
    return mpruner.lm.lm_batches(ids, seq_len=16, batch_size=2)


def _generate_matches_uncached(model):
    prompt = torch.randint(3, 97, (2, 5), generator=torch.Generator().manual_seed(9))
    kw = dict(max_new_tokens=6, do_sample=False, pad_token_id=0, attention_mask=torch.ones_like(prompt))
    with torch.no_grad():
        cached = model.generate(prompt, use_cache=True, **kw)
        plain = model.generate(prompt, use_cache=False, **kw)
    assert torch.equal(cached, plain)


@pytest.mark.parametrize("family", FAMILIES)
def test_lora_heals_merges_and_reloads(family, tmp_path):
    pytest.importorskip("peft")
    import transformers as T

    model = tiny_lm(family, layers=4)
    pruned = mpruner.remove_layers(model, {mpruner.find_blocks(model)[0].name: [1, 2]})
    targets = ["c_attn", "c_proj"] if family == "gpt2" else ["q_proj", "v_proj"]
    frozen = {n: p.detach().clone() for n, p in pruned.named_parameters()}
    data = _windows()
    before = mpruner.perplexity(pruned, torch.cat([b["input_ids"].flatten() for b in data]), seq_len=16,
                                progress=False).perplexity
    mpruner.Finetuner(data, lr=1e-2, max_steps=6, progress=False, lora=dict(r=4, alpha=8, target_modules=targets))(pruned)
    after = mpruner.perplexity(pruned, torch.cat([b["input_ids"].flatten() for b in data]), seq_len=16,
                               progress=False).perplexity
    assert after < before  # the adapters learned something, and it was merged into the weights
    names = {n for n, _ in pruned.named_parameters()}
    assert names == set(frozen) and not any("lora" in n for n in names)  # a plain model again
    changed = [n for n in names if not torch.equal(frozen[n], dict(pruned.named_parameters())[n])]
    assert changed and all(any(t in n for t in targets) for n in changed)  # only adapted weights moved
    assert all(p.requires_grad for p in pruned.parameters())
    pruned.save_pretrained(tmp_path / "m")
    assert not (tmp_path / "m" / "adapter_config.json").exists()
    again = T.AutoModelForCausalLM.from_pretrained(tmp_path / "m").eval()
    assert again.config.num_hidden_layers == 2
    x = torch.randint(3, 97, (1, 9))
    with torch.no_grad():
        torch.testing.assert_close(again(x).logits, pruned.eval()(x).logits)
    _generate_matches_uncached(again)


def test_missing_peft_is_reported(monkeypatch):
    import builtins

    real = builtins.__import__

    def no_peft(name, *a, **kw):
        if name == "peft" or name.startswith("peft."):
            raise ImportError("No module named 'peft'")
        return real(name, *a, **kw)

    monkeypatch.setattr(builtins, "__import__", no_peft)
    with pytest.raises(ImportError, match=r"mpruner\[lm\]"):
        mpruner.Finetuner([], lora=dict(r=4))


def test_bad_lora_options():
    with pytest.raises(ValueError, match="unknown lora option"):
        mpruner.Finetuner([], lora=dict(rank=4))
    with pytest.raises(ValueError, match="r must be"):
        mpruner.Finetuner([], lora=dict(r=0))
