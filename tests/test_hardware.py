"""What the CPU can do (mpruner/hardware.py), and bfloat16 autocast chosen from it."""
import torch

from mpruner import hardware
from mpruner.training.accelerated import mixed_precision


def test_features_name_the_cpu_and_its_bf16_engines():
    features = hardware.cpu_features()
    assert "amx_bf16" in features and "avx512_bf16" in features
    engine = hardware.bf16_matrix_engine()
    assert engine in (None, "AMX-BF16", "AVX512-BF16")
    assert (engine is None) == (not features["amx_bf16"] and not features["avx512_bf16"])


def test_bf16_autocast_on_a_cpu_only_with_a_bf16_matrix_engine(monkeypatch):
    cpu = torch.device("cpu")
    for flags, engine, precision in [({"amx_bf16": True, "avx512_bf16": True}, "AMX-BF16", "bf16"),
                                     ({"amx_bf16": False, "avx512_bf16": True}, "AVX512-BF16", "bf16"),
                                     ({"amx_bf16": False, "avx512_bf16": False}, None, "no")]:
        monkeypatch.setattr(hardware, "cpu_features", lambda flags=flags: dict(flags, cpu_name="mock"))
        assert hardware.bf16_matrix_engine() == engine
        assert mixed_precision("auto", cpu) == precision
        assert mixed_precision(False, cpu) == "no" and mixed_precision(True, cpu) == "bf16"
    assert mixed_precision("auto", torch.device("cuda")) == "bf16"
