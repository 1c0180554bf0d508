"""Counting what the engine's device path does: ATen calls, and every read of tensor values back
to the host. On a GPU each such read waits for the device; on the CPU tensors the device-path
tests use, many of them (``.tolist()``, ``bool(t)``, ``.numpy()``) never reach the dispatcher, so
the Python-level conversions are patched for the duration too."""
from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode

# ATen ops whose result depends on tensor values in a way the host must wait for.
DISPATCH_READS = frozenset({
    "aten::_local_scalar_dense", "aten::item", "aten::nonzero", "aten::equal", "aten::is_nonzero",
    "aten::allclose", "aten::masked_select", "aten::_unique2", "aten::unique_consecutive", "aten::unique_dim",
    "aten::repeat_interleave", "aten::bincount", "aten::nonzero_static",
})
# Python-level conversions of a tensor to host values (each is a device-to-host read on a GPU).
PYTHON_READS = ("tolist", "item", "numpy", "cpu", "__bool__", "__int__", "__float__", "__index__", "__complex__",
                "__array__")


class HostReads(TorchDispatchMode):
    """``with HostReads() as m: ...`` -> ``m.ops`` (ATen calls that do work: views only change
    metadata), ``m.reads`` (every value read back to the host, by name)."""

    def __init__(self):
        super().__init__()
        self.ops, self.reads = [], []
        self._saved = {}

    @property
    def syncs(self) -> int:
        return len(self.reads)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not func.is_view:
            self.ops.append(func.name())
        if func._schema.name in DISPATCH_READS:
            self.reads.append(func._schema.name)
        return func(*args, **(kwargs or {}))

    def _patch(self, name):
        original = getattr(torch.Tensor, name)
        self._saved[name] = torch.Tensor.__dict__.get(name)  # None: inherited from the C base class
        mode = self

        def counted(tensor, *args, **kwargs):
            mode.reads.append(f"Tensor.{name}")
            return original(tensor, *args, **kwargs)

        setattr(torch.Tensor, name, counted)

    def __enter__(self):
        for name in PYTHON_READS:
            self._patch(name)
        return super().__enter__()

    def __exit__(self, *exc):
        try:
            return super().__exit__(*exc)
        finally:
            for name, own in self._saved.items():
                if own is None:
                    delattr(torch.Tensor, name)
                else:
                    setattr(torch.Tensor, name, own)
            self._saved.clear()
