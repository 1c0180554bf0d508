"""Streaming CKA over minibatches: memory stays O(L^2 + L n^2) whatever the data size."""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import torch

from . import checks
from . import precision as precision_modes
from .cka import hsic_to_cka
from .exact import ExactSums
from .minibatch import MinibatchSums

# The estimators are sibling classes with one interface; the accumulator picks one at reset().
ESTIMATOR_CLASSES = {"minibatch": MinibatchSums, "exact": ExactSums}
ESTIMATORS = tuple(ESTIMATOR_CLASSES)


class _SettledCounter:
    """An int counter of the accumulator that first takes in the skips counted on the device."""

    def __init__(self, field: str, doc: str):
        self.field, self.__doc__ = field, doc

    def __get__(self, acc, owner=None):
        if acc is None:
            return self
        acc._settle()
        return getattr(acc, self.field)

    def __set__(self, acc, value) -> None:
        acc._settle()
        setattr(acc, self.field, int(value))


class CKAAccumulator:
    """Accumulates HSIC between layers batch by batch; ``compute()`` gives the CKA matrix.

    ``estimator="minibatch"`` (Nguyen, Raghu & Kornblith 2021) sums the per-batch HSIC of
    every layer pair (unbiased HSIC_1 by default) and normalises at the end. Sums from
    several accumulators, processes or machines add up to the same answer (``merge``,
    ``all_reduce``). ``estimator="exact"`` (linear kernel) streams feature-space cross
    products so ``compute()`` equals CKA over all samples at once; it needs
    sum_a,b d_a d_b float64 numbers of memory and refuses when that exceeds
    ``max_exact_bytes``.

    Args:
        kernel: ``"linear"`` or ``"rbf"`` (minibatch only).
        unbiased: HSIC_1 (each batch needs n >= 4) or the biased HSIC_0.
        sigma: RBF bandwidth as a fraction of the per-batch median distance (0.5).
        device: where sums are kept and Grams computed (default: the first batch's device).
        estimator: ``"minibatch"`` or ``"exact"``.
        layer_names: names used in warnings and errors (default ``layer 0`` ...).
        nan_policy: ``"raise"`` on NaN/Inf activations, or ``"skip"`` the batch (counted in
            ``num_skipped``).
        precision: the float32 GEMM mode: ``"highest"`` (IEEE float32, default), ``"high"``
            (~16 mantissa bits: TF32 on CUDA, two bfloat16 terms on a CPU's matrix engine;
            ``"tf32"`` is an alias) or ``"medium"`` (bfloat16 inputs, float32 sums); see
            :func:`mpruner.cka_matrix`. float64 activations are computed in float64 whatever
            the mode; hardware without the mode runs ``"highest"`` (one warning, at the
            first batch).
        max_exact_bytes: memory bound of the exact estimator (default 4 GiB).
        cuda_graph: on a CUDA device, replay ``update()`` from a CUDA graph captured per input
            shape (minibatch estimator; costs one batch's activations of device memory). Other
            devices run eagerly.
    """

    def __init__(self, kernel: str = "linear", unbiased: bool = True, sigma: Optional[float] = None,
                 device=None, estimator: str = "minibatch", *, layer_names: Optional[Sequence[str]] = None,
                 nan_policy: str = "raise", precision: str = "highest", max_exact_bytes: int = 4 * 2**30,
                 cuda_graph: bool = False):
        checks.check_choice(kernel, checks.KERNELS, "kernel")
        checks.check_choice(estimator, ESTIMATORS, "estimator")
        checks.check_choice(nan_policy, checks.NAN_POLICIES, "nan_policy")
        precision = checks.check_precision(precision)
        if cuda_graph and estimator != "minibatch":
            raise ValueError("cuda_graph=True replays the minibatch estimator's update; use estimator='minibatch' "
                             "or cuda_graph=False")
        self.cuda_graph = bool(cuda_graph)
        if estimator == "exact" and kernel != "linear":
            raise ValueError("estimator='exact' works in feature space and supports only kernel='linear'; "
                             "use estimator='minibatch' for the RBF kernel")
        self.kernel, self.unbiased, self.estimator = kernel, bool(unbiased), estimator
        self.sigma = checks.check_sigma(sigma, kernel)
        self.device = None if device is None else torch.device(device)
        self.layer_names = None if layer_names is None else list(layer_names)
        self.nan_policy, self.precision, self.max_exact_bytes = nan_policy, precision, int(max_exact_bytes)
        self.reset()

    # ------------------------------------------------------------------ state
    def reset(self) -> None:
        """Forgets all batches (keeps the options)."""
        self._est = self._new_estimator()
        self._shape: Optional[tuple] = None             # (L, M)
        self._num_batches = 0
        self._num_samples = 0
        self._num_skipped = 0

    def _new_estimator(self):
        args = (self.kernel, self.unbiased, self.sigma, self._mode(), self.nan_policy, self.max_exact_bytes)
        if self.cuda_graph:
            return ESTIMATOR_CLASSES[self.estimator](*args, cuda_graph=True)
        return ESTIMATOR_CLASSES[self.estimator](*args)

    # Counters: reading one settles the device-side skips (one device->host read, never per batch).
    num_batches = _SettledCounter("_num_batches", "Batches accumulated (skipped ones not included).")
    num_samples = _SettledCounter("_num_samples", "Samples in the accumulated batches.")
    num_skipped = _SettledCounter("_num_skipped", 'Batches dropped for NaN/Inf under ``nan_policy="skip"``.')

    def _settle(self) -> None:
        """Moves the device's count of masked (skipped) batches into the counters."""
        skipped, samples = self._est.take_device_skips()
        if not skipped:
            return
        self._num_batches -= skipped
        self._num_samples -= samples
        self._num_skipped += skipped
        if self._num_batches == 0:  # every batch was skipped: nothing accumulated
            self._est = self._new_estimator()
            self._shape = None

    def _mode(self) -> str:
        """The precision the GEMMs run at on this accumulator's device, once it is known
        (resolved once: the fallback warning comes at most once per accumulator)."""
        if self.device is None:
            return self.precision
        if getattr(self, "_resolved", None) is None or self._resolved[0] != self.device:
            self._resolved = (self.device, precision_modes.resolve(self.precision, self.device))
        return self._resolved[1]

    @property
    def hsic(self) -> torch.Tensor:
        """The float64 HSIC sums over all layers (L + M when a cross matrix is accumulated)."""
        self._settle()
        if self._shape is None:
            raise RuntimeError("no batch accumulated yet: call update(features) first")
        return self._est.hsic()

    # ------------------------------------------------------------------ updates
    def update(self, features: Sequence[torch.Tensor], other: Optional[Sequence[torch.Tensor]] = None, *,
               batch: Optional[int] = None) -> None:
        """Adds one minibatch: L tensors (n, ...) with the same n (and M more in ``other``).

        NaN/Inf activations show in the layer's self-HSIC (no extra pass over the data).
        On the CPU they raise here; on other devices (``nan_policy="raise"``) a device flag
        records the first bad batch per layer and ``compute()`` raises, so ``update`` never
        waits for the device; with ``nan_policy="skip"`` such a batch adds zeros there and
        the counters learn of it when first read. ``batch`` is the index named in that error (default: the
        number of batches passed so far).
        """
        feats = checks.as_layer_list(features, "features")
        oth = None if other is None else checks.as_layer_list(other, "other")
        shape = (len(feats), 0 if oth is None else len(oth))
        if self._shape is not None and shape != self._shape:
            raise ValueError(f"this accumulator holds (L, M)={self._shape} layers but the batch has {shape}; "
                             "pass the same layers every batch (or reset())")
        # An estimator that pools samples across batches takes a tiny batch too.
        per_batch_unbiased = self.unbiased and not self._est.pools_samples
        xs = checks.prepare_layers(feats, per_batch_unbiased, other=oth, device=self.device,
                              device_fix=" (or pass CKAAccumulator(device=...) to move them)")
        names = self._names(shape)
        if self.device is None:
            self.device = xs[0].device
        self._est.precision = self._mode()
        n = xs[0].shape[0]
        # Batches passed so far, from the raw counters: a device-side skip moves one batch from
        # one to the other, so their sum is known without settling (a device read per batch).
        index = self._num_batches + self._num_skipped if batch is None else int(batch)
        if not self._est.update(xs, names, index):
            self._num_skipped += 1
            return
        self._shape = shape
        self._num_batches += 1
        self._num_samples += n

    def _names(self, shape) -> List[str]:
        L, M = shape
        if self.layer_names is not None:
            if len(self.layer_names) != L + M:
                raise ValueError(f"layer_names has {len(self.layer_names)} names for {L + M} layers")
            return self.layer_names
        return [f"layer {i}" for i in range(L)] + [f"other layer {j}" for j in range(M)]

    # ------------------------------------------------------------------ results
    def compute(self) -> torch.Tensor:
        """The (L, L) CKA matrix, or (L, M) with ``other``; float64."""
        self._settle()
        if self._shape is None:
            raise RuntimeError("no batch accumulated yet: call update(features) first"
                               + (f" ({self.num_skipped} batches were skipped for NaN/Inf)" if self.num_skipped else ""))
        L, M = self._shape
        names = self._names(self._shape)
        self._est.raise_deferred(names)
        h, thr = self._est.result(self.num_samples)
        c = hsic_to_cka(h, thr, names)
        return c if M == 0 else c[:L, L:]

    # ------------------------------------------------------------------ combining
    def _check_compatible(self, other: "CKAAccumulator") -> None:
        if not isinstance(other, CKAAccumulator):
            raise TypeError(f"merge expects a CKAAccumulator, got {type(other).__name__}")
        mine = (self.kernel, self.unbiased, self.sigma, self.estimator)
        theirs = (other.kernel, other.unbiased, other.sigma, other.estimator)
        if mine != theirs:
            raise ValueError(f"cannot merge accumulators with different options (kernel, unbiased, sigma, "
                             f"estimator): {mine} vs {theirs}")
        if self._shape is not None and other._shape is not None and self._shape != other._shape:
            raise ValueError(f"cannot merge accumulators over different layers: {self._shape} vs {other._shape}")

    def merge(self, other: "CKAAccumulator") -> "CKAAccumulator":
        """Adds another accumulator's batches to this one (same options and layers); returns self."""
        self._check_compatible(other)
        self._settle()
        other._settle()
        for acc in (self, other):
            if acc._shape is not None:
                acc._est.raise_deferred(acc._names(acc._shape))
        if other._shape is None:
            self.num_skipped += other.num_skipped
            return self
        if self._shape is None:
            skipped = self.num_skipped  # load_state_dict resets the counters: keep this one's skips
            self.load_state_dict(other.state_dict())
            self.num_skipped += skipped
            return self
        self._est.merge(other._est)
        self.num_batches += other.num_batches
        self.num_samples += other.num_samples
        self.num_skipped += other.num_skipped
        return self

    def all_reduce(self, group=None) -> "CKAAccumulator":
        """Sums the accumulated state over all ranks of ``torch.distributed`` (in place); returns self.

        Every rank must have accumulated at least one batch over the same layers.
        """
        import torch.distributed as dist

        self._settle()
        if self._shape is None:
            raise RuntimeError("all_reduce needs at least one update() on every rank")
        self._est.raise_deferred(self._names(self._shape))
        self._est.all_reduce(group)
        counts = torch.tensor([self.num_batches, self.num_samples, self.num_skipped], dtype=torch.float64,
                              device=self._est.device)
        dist.all_reduce(counts, group=group)
        self.num_batches, self.num_samples, self.num_skipped = (int(v) for v in counts.tolist())
        self._est.total_samples(self.num_samples)
        return self

    def state_dict(self) -> Dict:
        """Plain tensors and numbers (safe to save with safetensors/JSON; no pickled objects)."""
        self._settle()
        state = {"kernel": self.kernel, "unbiased": self.unbiased, "sigma": self.sigma, "estimator": self.estimator,
                 "shape": None if self._shape is None else list(self._shape), "num_batches": self.num_batches,
                 "num_samples": self.num_samples, "num_skipped": self.num_skipped}
        if self._shape is not None:
            self._est.raise_deferred(self._names(self._shape))
            state.update(self._est.state_dict())
        return state

    def load_state_dict(self, state: Dict) -> None:
        """Restores a ``state_dict()``; the options must match this accumulator's."""
        opts = (state["kernel"], state["unbiased"], state["sigma"], state["estimator"])
        if opts != (self.kernel, self.unbiased, self.sigma, self.estimator):
            raise ValueError(f"state was saved with (kernel, unbiased, sigma, estimator)={opts}, this accumulator "
                             f"uses {(self.kernel, self.unbiased, self.sigma, self.estimator)}")
        self.reset()
        self.num_batches, self.num_samples = int(state["num_batches"]), int(state["num_samples"])
        self.num_skipped = int(state["num_skipped"])
        if state["shape"] is None:
            return
        self._shape = tuple(state["shape"])
        self._est.load_state_dict(state, self.device, self.max_exact_bytes)
        if self.device is None:
            self.device = self._est.device

    def __repr__(self) -> str:
        return (f"CKAAccumulator(kernel={self.kernel!r}, unbiased={self.unbiased}, estimator={self.estimator!r}, "
                f"layers={self._shape}, batches={self.num_batches}, samples={self.num_samples}, "
                f"skipped={self.num_skipped})")
