"""Argument checks (mpruner/engine/checks.py): every error names the argument and the fix;
precision='tf32' changes CUDA's float32 matmul mode for the call only, thread-safely (the
setting is process-wide; it works without a GPU, so this runs everywhere)."""
import threading
import warnings

import pytest
import torch

import mpruner
from mpruner.engine import checks as I

CUDA = torch.device("cuda")


def _x(n=10, d=4):
    return torch.randn(n, d)


def test_different_n_across_layers():
    with pytest.raises(ValueError, match=r"features\[1\] has 9 samples but features\[0\] has 10.*same n"):
        mpruner.cka_matrix([_x(10), _x(9)])
    acc = mpruner.CKAAccumulator()
    with pytest.raises(ValueError, match=r"other\[0\] has 7 samples"):
        acc.update([_x(10)], other=[_x(7)])


def test_too_few_samples():
    with pytest.raises(ValueError, match=r"n=3 samples; the unbiased estimator needs n >= 4: use unbiased=False"):
        mpruner.cka_matrix([_x(3), _x(3)], unbiased=True)
    with pytest.raises(ValueError, match=r"n=1 samples; the biased estimator needs n >= 2"):
        mpruner.cka_matrix([_x(1), _x(1)])
    with pytest.raises(ValueError, match="needs n >= 4"):
        mpruner.CKAAccumulator().update([_x(3)])
    with pytest.raises(ValueError, match=r"k is 3x3.*n >= 4"):
        mpruner.center_gram(torch.eye(3), unbiased=True)


def test_non_floating_and_non_tensor():
    with pytest.raises(TypeError, match=r"features\[0\] has dtype torch.int64.*\.float\(\)"):
        mpruner.cka_matrix([torch.ones(5, 2, dtype=torch.long)])
    with pytest.raises(TypeError, match=r"features\[1\] must be a torch.Tensor"):
        mpruner.cka_matrix([_x(), [[1.0, 2.0]]])
    with pytest.raises(TypeError, match="list of tensors"):
        mpruner.cka_matrix(_x())
    with pytest.raises(TypeError, match="k has dtype torch.int32"):
        mpruner.hsic(torch.ones(5, 5, dtype=torch.int32), torch.ones(5, 5))


def test_empty_input():
    with pytest.raises(ValueError, match="features is empty"):
        mpruner.cka_matrix([])
    with pytest.raises(ValueError, match=r"features\[0\] is empty"):
        mpruner.cka_matrix([torch.empty(0, 3)])
    with pytest.raises(ValueError, match=r"is empty"):
        mpruner.cka_matrix([torch.empty(5, 0)])


def test_bad_options():
    with pytest.raises(ValueError, match="kernel must be one of 'linear', 'rbf'; got 'poly'"):
        mpruner.cka_matrix([_x()], kernel="poly")
    with pytest.raises(ValueError, match="sigma only applies to kernel='rbf'"):
        mpruner.cka_matrix([_x()], sigma=0.3)
    with pytest.raises(ValueError, match="sigma must be a positive number"):
        mpruner.cka_matrix([_x()], kernel="rbf", sigma=-1)
    with pytest.raises(ValueError, match="precision must be one of"):
        mpruner.cka_matrix([_x()], precision="fast")
    with pytest.raises(ValueError, match="estimator must be one of"):
        mpruner.CKAAccumulator(estimator="approx")
    with pytest.raises(ValueError, match="nan_policy must be one of"):
        mpruner.CKAAccumulator(nan_policy="ignore")


def test_gram_shape_errors():
    with pytest.raises(ValueError, match=r"k must be square"):
        mpruner.center_gram(torch.randn(4, 5))
    with pytest.raises(ValueError, match="k and l must have the same shape"):
        mpruner.hsic(torch.eye(5), torch.eye(6))


def test_nan_in_activations_names_the_layer():
    bad = _x()
    bad[2, 1] = float("inf")
    with pytest.raises(ValueError, match=r"NaN or Inf in the activations of features\[1\]"):
        mpruner.cka_matrix([_x(), bad, _x()])


def test_mixed_devices():
    # The check runs before any kernel, so the meta device stands in for a GPU on a CPU machine.
    with pytest.raises(ValueError, match=r"features\[1\] is on meta but features\[0\] is on cpu; move all "
                                         r"activations to one device") as info:
        mpruner.cka_matrix([_x(), _x().to("meta")])
    assert "device=" not in str(info.value)  # cka_matrix has no device argument
    with pytest.raises(ValueError, match=r"y is on meta but x is on cpu") as info:
        mpruner.cka(_x(), _x().to("meta"))
    assert "other[0]" not in str(info.value) and "features[0]" not in str(info.value)
    with pytest.raises(ValueError, match=r"other\[0\] is on meta but features\[0\] is on cpu"):
        mpruner.cka_matrix([_x()], other=[_x().to("meta")])


# The public functions' input errors, word for word: a message that drops or garbles a name, a
# shape, the estimator or the advice, or a bound moved by one, fails here.
@pytest.mark.parametrize("call, error, message", [
    (lambda m, t: m.gram(t.randn(5, 3), "cosine"), ValueError, "kernel must be one of 'linear', 'rbf'; got 'cosine'"),
    (lambda m, t: m.gram(t.randn(5), batched=True), ValueError,
     "with batched=True, x must be a tensor of shape (b, n, ...)"),
    (lambda m, t: m.gram(t.randn(1, 3), "rbf"), ValueError, "x has n=1 samples; the RBF kernel needs n >= 2"),
    (lambda m, t: m.center_gram([[1.0]]), TypeError, "k must be a torch.Tensor Gram matrix (…, n, n), got list"),
    (lambda m, t: m.center_gram(t.ones(3, 3, dtype=t.long)), TypeError,
     "k has dtype torch.int64; pass a floating-point Gram (k.float())"),
    (lambda m, t: m.center_gram(t.ones(3, 4)), ValueError,
     "k must be square in its last two dimensions (…, n, n), got shape (3, 4)"),
    (lambda m, t: m.center_gram(t.ones(2, 3, 4)), ValueError,
     "k must be square in its last two dimensions (…, n, n), got shape (2, 3, 4)"),
    (lambda m, t: m.center_gram(t.ones(3, 3), True), ValueError,
     "k is 3x3; the unbiased estimator needs n >= 4 (or use unbiased=False)"),
    (lambda m, t: m.center_gram(t.ones(1, 1)), ValueError, "k is 1x1; the biased estimator needs n >= 2"),
    (lambda m, t: m.hsic(t.ones(4, 4), t.ones(5, 5)), ValueError, "k and l must have the same shape, got (4, 4) and (5, 5)"),
    (lambda m, t: m.hsic(t.ones(3, 3), t.ones(3, 3), True), ValueError,
     "k is 3x3; the unbiased estimator needs n >= 4 (or use unbiased=False)"),
    (lambda m, t: m.hsic(t.ones(4, 4), t.ones(1, 1)), ValueError, "l is 1x1; the biased estimator needs n >= 2"),
    # l's own (unbiased) estimator bound comes before the shape check
    (lambda m, t: m.hsic(t.ones(4, 4), t.ones(3, 3), True), ValueError,
     "l is 3x3; the unbiased estimator needs n >= 4 (or use unbiased=False)"),
    (lambda m, t: m.hsic(t.ones(4, 4), [[1.0]]), TypeError, "l must be a torch.Tensor Gram matrix (…, n, n), got list"),
    (lambda m, t: m.cka([t.ones(4, 2)], t.ones(4, 2)), TypeError,
     "cka compares two tensors x and y; for lists of layers use mpruner.cka_matrix"),
    (lambda m, t: m.cka(t.ones(4, 2), [t.ones(4, 2)]), TypeError,
     "cka compares two tensors x and y; for lists of layers use mpruner.cka_matrix"),
])
def test_cka_api_errors_word_for_word(call, error, message):
    import torch

    import mpruner

    with pytest.raises(error) as info:
        call(mpruner, torch)
    assert str(info.value) == message


@pytest.mark.parametrize("fn", ["gram", "cka_matrix", "cka"])
def test_precision_tf32_is_an_alias_of_high(device, gen, fn):
    xs = [torch.randn(12, 6, generator=gen).to(device) + 2 for _ in range(2)]
    call = {"gram": lambda p: mpruner.gram(xs[0], precision=p),
            "cka_matrix": lambda p: mpruner.cka_matrix(xs, precision=p),
            "cka": lambda p: mpruner.cka(*xs, precision=p)}[fn]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the fallback where the hardware lacks the mode
        highest, tf32, high = call("highest"), call("tf32"), call("high")
    assert torch.equal(tf32, high)
    # TF32 and the two-term bfloat16 split keep 10 or more mantissa bits
    torch.testing.assert_close(tf32, highest, rtol=0, atol=5e-3 * float(highest.abs().max()))
    assert not torch.backends.cuda.matmul.allow_tf32  # the global setting is restored
    with pytest.raises(ValueError, match="precision must be one of"):
        call("fast")


def _mode():
    return torch.backends.cuda.matmul.fp32_precision


def test_tf32_is_scoped_and_restored():
    before = _mode()
    with I.gemm_precision("tf32", CUDA):
        assert _mode() == "tf32"
        with I.gemm_precision("highest", CUDA):
            assert _mode() == "ieee"
        assert _mode() == "tf32"
    assert _mode() == before
    with I.gemm_precision("tf32", torch.device("cpu")):  # CPU GEMMs have no TF32 mode: untouched
        assert _mode() == before


def test_tf32_scope_restores_on_error():
    before = _mode()
    try:
        with I.gemm_precision("tf32", CUDA):
            raise KeyError("boom")
    except KeyError:
        pass
    assert _mode() == before


def test_concurrent_scopes_leave_the_setting_as_found():
    before = _mode()
    seen = []

    def work(precision):
        for _ in range(200):
            with I.gemm_precision(precision, CUDA):
                seen.append((precision, _mode()))

    threads = [threading.Thread(target=work, args=(p,)) for p in ("tf32", "highest", "tf32", "highest")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert _mode() == before
    assert all(mode == ("tf32" if p == "tf32" else "ieee") for p, mode in seen)
