"""precision='tf32' changes CUDA's float32 matmul mode for the call only, thread-safely
(the setting is process-wide; it works without a GPU, so this runs everywhere)."""
import threading

import torch

from mpruner.engine import inputs as I

CUDA = torch.device("cuda")


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
