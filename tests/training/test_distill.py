"""Distillation from the unpruned model (mpruner/training/distill.py): the loss and its gradient
against an independent computation on full logits (padding excluded, temperature applied), the
fused and the full-logits paths alike, the hidden-state term at the blocks around each cut, an
identical student that does not move, and the refusals."""
import copy

import pytest
import torch
import torch.nn.functional as F

import mpruner
from mpruner.training.distill import Distiller, check_distill, hidden_pairs
from tests.helpers.tiny_lms import VOCAB, tiny_lm


def _batch(seed=0, B=3, T=10):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (B, T), generator=g)
    mask = torch.ones(B, T, dtype=torch.long)
    mask[1, 7:] = 0  # right padding
    mask[2, :3] = 0  # left padding
    labels = ids.masked_fill(mask == 0, -100)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def _pair(family="llama", cut=(1, 2)):
    teacher = tiny_lm(family, layers=5).double()
    student = mpruner.remove_layers(teacher, list(cut))
    with torch.no_grad():  # a student that differs from the teacher everywhere, not only by the cut
        for p in student.parameters():
            p.add_(0.01 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel()),
                                      dtype=p.dtype))
    return teacher, student


def _reference(student, teacher, batch, temperature, alpha):
    """The loss written out on full logits, independently of the module under test."""
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    s = student(**inputs).logits
    with torch.no_grad():
        t = teacher(**inputs).logits
    real = batch["attention_mask"].bool()
    p_t = torch.softmax(t[real] / temperature, -1)
    kl = (p_t * (torch.log(p_t) - torch.log_softmax(s[real] / temperature, -1))).sum(-1).mean()
    # the next-token loss at real positions whose next token is labelled (a left-padded position
    # predicting the first real token is not a real token's logit)
    rows, targets = [], []
    for b in range(s.shape[0]):
        for t in range(s.shape[1] - 1):
            if real[b, t] and batch["labels"][b, t + 1] >= 0:
                rows.append(s[b, t])
                targets.append(int(batch["labels"][b, t + 1]))
    ce = F.cross_entropy(torch.stack(rows), torch.tensor(targets))
    return alpha * temperature ** 2 * kl + (1 - alpha) * ce


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("family", ["llama", "gpt2"])
@pytest.mark.parametrize("temperature,alpha", [(2.0, 1.0), (1.0, 0.5), (3.0, 0.0)])
def test_loss_and_gradient_equal_an_independent_computation(family, fused, temperature, alpha):
    teacher, student = _pair(family)
    batch = _batch()
    spec = check_distill(dict(teacher=teacher, temperature=temperature, alpha=alpha))
    distiller = Distiller(spec, student, student, fused=fused)
    try:
        assert (distiller.s_head is not None) == fused
        got = distiller(student, batch)
        got.backward()
    finally:
        distiller.close()
    grads = {k: p.grad.clone() for k, p in student.named_parameters()}
    student.zero_grad()
    want = _reference(student, teacher, batch, temperature, alpha)
    want.backward()
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    for k, p in student.named_parameters():
        torch.testing.assert_close(grads[k], p.grad, rtol=1e-8, atol=1e-12, msg=k)


def test_padding_tokens_do_not_count():
    teacher, student = _pair()
    batch = _batch()
    changed = {k: v.clone() for k, v in batch.items()}
    changed["input_ids"][1, 7:] = 5  # other tokens where the mask is 0
    spec = check_distill(dict(teacher=teacher))
    d = Distiller(spec, student, student, fused=True)
    try:
        a, b = d(student, batch), d(student, changed)
    finally:
        d.close()
    torch.testing.assert_close(a, b, rtol=1e-12, atol=0)


def test_chunks_of_rows_give_the_one_chunk_answer(monkeypatch):
    from mpruner.training import distill

    teacher, student = _pair()
    batch = _batch(B=4, T=12)
    spec = check_distill(dict(teacher=teacher, alpha=0.7))
    out = []
    for rows_bytes in (1 << 30, 4 * VOCAB * 16):  # everything in one chunk; 16 rows a chunk
        monkeypatch.setattr(distill, "CHUNK_BYTES", rows_bytes)
        d = Distiller(spec, student, student, fused=True)
        try:
            loss = d(student, batch)
            loss.backward()
        finally:
            d.close()
        out.append((loss.detach(), [p.grad.clone() for p in student.parameters()]))
        student.zero_grad()
    torch.testing.assert_close(out[0][0], out[1][0], rtol=1e-12, atol=0)
    for a, b in zip(out[0][1], out[1][1]):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-14)


def test_hidden_pairs_match_the_cut():
    teacher, student = _pair(cut=(1, 2))  # student blocks 0, 1, 2 are teacher blocks 0, 3, 4
    assert hidden_pairs(student, teacher) == [(0, 2), (1, 3)]
    twice = mpruner.remove_layers(student, [2])  # now teacher blocks 0, 3: another cut at the end
    assert hidden_pairs(twice, teacher) == [(0, 2), (1, 3), (1, 4)]
    front = mpruner.remove_layers(teacher, [0])
    assert hidden_pairs(front, teacher) == [(0, 1)]


def test_hidden_term_is_the_normalized_mse_at_the_pairs():
    teacher, student = _pair(cut=(1, 2))
    batch = _batch()
    spec = check_distill(dict(teacher=teacher, hidden=0.5))
    plain = Distiller(check_distill(dict(teacher=teacher)), student, student, fused=True)
    d = Distiller(spec, student, student, fused=True)
    try:
        with torch.no_grad():
            extra = d(student, batch) - plain(student, batch)
    finally:
        d.close()
        plain.close()
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    real = batch["attention_mask"].bool()
    with torch.no_grad():
        hs = student(**inputs, output_hidden_states=True).hidden_states  # [embeddings, block 0, ...]
        ht = teacher(**inputs, output_hidden_states=True).hidden_states

    def rms(x):
        return x / x.pow(2).mean(-1, keepdim=True).sqrt()

    # the last entry of hidden_states is after the final norm: the blocks' own outputs are the others
    s_out = lambda j: hs[j + 1] if j + 1 < len(hs) - 1 else None  # noqa: E731
    pairs = [(0, 2), (1, 3)]
    want = 0.5 * torch.stack([((rms(s_out(j)[real]) - rms(ht[k + 1][real])) ** 2).mean() for j, k in pairs]).mean()
    torch.testing.assert_close(extra, want, rtol=1e-9, atol=1e-12)


def test_an_identical_student_has_zero_loss_and_does_not_move():
    model = tiny_lm("llama", layers=3)
    teacher = copy.deepcopy(model)
    data = [_batch(seed=s) for s in range(3)]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    seen = []
    tuner = mpruner.Finetuner(data, lr=1e-2, weight_decay=0.0, progress=False,
                              distill=dict(teacher=teacher, alpha=1.0, temperature=2.0))
    original = Distiller.__call__

    def spy(self, wrapped, batch, totals=None):
        loss = original(self, wrapped, batch, totals)
        seen.append(float(loss.detach()))
        return loss

    Distiller.__call__ = spy
    try:
        tuner(model)
    finally:
        Distiller.__call__ = original
    assert seen and all(v == 0.0 for v in seen)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_teacher_left_as_it_was():
    model = tiny_lm("llama", layers=3)
    teacher = copy.deepcopy(model).train()
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    student = mpruner.remove_layers(model, [1])
    mpruner.Finetuner([_batch()], lr=1e-2, progress=False, distill=dict(teacher=teacher, hidden=1.0))(student)
    assert teacher.training and all(p.grad is None for p in teacher.parameters())
    assert all(torch.equal(v, before[k]) for k, v in teacher.state_dict().items())
    assert not teacher._forward_hooks and all(not m._forward_hooks for m in teacher.modules())


@pytest.mark.parametrize("options,match", [
    (dict(alpha=1.5), r"alpha must be in \[0, 1\]"),
    (dict(alpha=-0.1), r"alpha must be in \[0, 1\]"),
    (dict(temperature=0), "temperature must be a number > 0"),
    (dict(temperature=-1.0), "temperature must be a number > 0"),
    (dict(hidden=-1), "hidden must be None or a weight >= 0"),
    (dict(beta=1), r"unknown option\(s\) \['beta'\]"),
])
def test_bad_options_are_refused_when_built(options, match):
    with pytest.raises(ValueError, match=match):
        mpruner.Finetuner([], distill=dict(teacher=tiny_lm("llama", layers=2), **options))


def test_teacher_must_be_a_model_and_not_the_student():
    with pytest.raises(TypeError, match=r"distill\['teacher'\] must be the unpruned model"):
        mpruner.Finetuner([], distill=dict(teacher="model"))
    model = tiny_lm("llama", layers=2)
    with pytest.raises(ValueError, match="is the model being trained itself"):
        mpruner.Finetuner([_batch()], progress=False, distill=dict(teacher=model))(model)


def test_teacher_with_another_vocabulary_is_refused_before_training():
    import transformers as tf

    student = tiny_lm("llama", layers=2)
    other = tf.LlamaForCausalLM(tf.LlamaConfig(vocab_size=VOCAB + 5, hidden_size=32, intermediate_size=64,
                                               num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2))
    before = {k: v.clone() for k, v in student.state_dict().items()}
    with pytest.raises(ValueError, match=f"predicts {VOCAB + 5} tokens but the student {VOCAB}"):
        mpruner.Finetuner([_batch()], progress=False, distill=dict(teacher=other))(student)
    assert all(torch.equal(v, before[k]) for k, v in student.state_dict().items())


def test_teacher_on_another_device_is_refused():
    student = tiny_lm("llama", layers=2)
    teacher = tiny_lm("llama", layers=2).to("meta")
    with pytest.raises(ValueError, match=r"move the teacher there first \(teacher.to\('cpu'\)\)"):
        mpruner.Finetuner([_batch()], progress=False, distill=dict(teacher=teacher))(student)


def test_distill_and_loss_fn_are_exclusive():
    with pytest.raises(ValueError, match="drop loss_fn"):
        mpruner.Finetuner([], loss_fn=F.cross_entropy, distill=dict(teacher=tiny_lm("llama", layers=2)))


def test_hidden_needs_a_cut_model():
    model = tiny_lm("llama", layers=2)
    with pytest.raises(ValueError, match="carries no record of removed blocks"):
        mpruner.Finetuner([_batch()], progress=False,
                          distill=dict(teacher=copy.deepcopy(model), hidden=1.0))(model)
