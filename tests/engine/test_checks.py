"""Bad input: every error names the argument and the fix."""
import pytest
import torch

import mpruner


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
