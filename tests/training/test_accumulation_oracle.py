"""Finetuner's step against gradients computed by hand in the test (not by a second Finetuner):
accumulation over equal batches equals one large batch; over unequal batches each batch's mean
loss counts once (as documented); clipping scales to max_grad_norm. Gradients, not weights, are
compared: AdamW's first step is nearly sign(g), blind to a wrong loss scale."""
import pytest
import torch
import torch.nn.functional as F

import mpruner
from tests.helpers.training_data import batches, net


def hand_grads(parts, weights):
    """Gradients of sum_i weights[i] * CE_mean(part_i) at the initial weights, by plain autograd."""
    model = net()
    loss = sum(w * F.cross_entropy(model(x), y) for (x, y), w in zip(parts, weights))
    loss.backward()
    return {k: p.grad for k, p in model.named_parameters()}, float(loss.detach())


def step_grads(sizes, **options):
    model = net()
    mpruner.Finetuner(batches(sizes), lr=1e-3, max_steps=1, progress=False, amp=False, **options)(model)
    return {k: p.grad for k, p in model.named_parameters()}


def test_accumulating_equal_batches_is_one_large_batch():
    parts = batches((8, 8))
    whole = [(torch.cat([x for x, _ in parts]), torch.cat([y for _, y in parts]))]
    want, _ = hand_grads(whole, [1.0])
    got = step_grads((8, 8), gradient_accumulation_steps=2, max_grad_norm=1e9)
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-10, atol=1e-12)


def test_accumulating_unequal_batches_averages_their_mean_losses():
    want, _ = hand_grads(batches((8, 3)), [0.5, 0.5])
    got = step_grads((8, 3), gradient_accumulation_steps=2, max_grad_norm=1e9)
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-10, atol=1e-12)
    # and not the pooled mean over the 11 samples (which weights the larger batch more)
    parts = batches((8, 3))
    pooled, _ = hand_grads([(torch.cat([x for x, _ in parts]), torch.cat([y for _, y in parts]))], [1.0])
    assert not torch.allclose(got["0.weight"], pooled["0.weight"])


def test_without_accumulation_a_step_sees_only_its_batch():
    want, _ = hand_grads(batches((8,)), [1.0])
    got = step_grads((8, 8), max_grad_norm=1e9)
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("max_norm", [1e-2, 1e9], ids=["clipped", "unclipped"])
def test_clipping_scales_the_gradient_to_max_grad_norm(max_norm):
    want, _ = hand_grads(batches((8, 8)), [0.5, 0.5])
    norm = torch.sqrt(sum((g.double() ** 2).sum() for g in want.values()))
    assert norm > 1e-2  # so the clipped case really clips
    scale = min(1.0, max_norm / (float(norm) + 1e-6))  # torch's clip_grad_norm_ rule
    got = step_grads((8, 8), gradient_accumulation_steps=2, max_grad_norm=max_norm)
    for k in want:
        torch.testing.assert_close(got[k], want[k] * scale, rtol=1e-8, atol=1e-12)


def test_returned_loss_is_the_mean_of_the_batch_losses():
    parts = batches((8, 3, 5, 6))
    model = net()
    with torch.no_grad():
        first = [float(F.cross_entropy(model(x), y)) for x, y in parts[:2]]
    loss = mpruner.Finetuner(batches((8, 3, 5, 6)), lr=1e-3, max_steps=1, progress=False, amp=False,
                             gradient_accumulation_steps=2)(net())
    assert loss == pytest.approx(sum(first) / 2, rel=1e-12)
