"""``analyze``: run a model over calibration data and stream its layer outputs into CKA."""
from __future__ import annotations

import contextlib
import functools
import itertools
from typing import Dict, Iterable, Optional, Sequence, Union

import torch
import torch.nn as nn

from ..engine import checks
from ..adapters import BlockList, family_traits
from ..distributed import resolve as resolve_shard
from .reduction import reduce_sink
from .capture import LayerCapture
from .batches import Forward, batch_context, call_model, check_data, to_device
from .layers import LayerSelection, resolve_layers
from .placement import execution_device
from .result import Analysis
from .input_capture import InputCapture
from .similarity_sinks import SimilaritySink, WithBlockIO
from .sinks import MatrixSink, TokenSink
from .views import NORMALIZATIONS, VIEWS, apply_view

Layers = Union[str, Sequence[str], BlockList]
METRICS = ("cka", "cosine", "angular")
TOKEN_METRIC_VIEWS = ("tokens", "last_token")


def analyze(model: nn.Module, data: Iterable, layers: Layers = "auto", view: Optional[str] = None,
            kernel: str = "linear", unbiased: bool = True, other: Optional[nn.Module] = None,
            forward: Optional[Forward] = None, max_batches: Optional[int] = None, device=None, progress: bool = True,
            distributed: Union[str, bool] = "auto", *, metric: str = "cka",
            block_inputs: Optional[bool] = None, normalize: Optional[str] = "auto",
            precision: str = "highest") -> Analysis:
    """CKA (or cosine / angular distance) between the layers of ``model`` on calibration ``data``,
    one batch in memory at a time.

    Forward hooks on the chosen layers apply ``view`` to each layer's output and hand
    the batch to the CKA engine at once; only L x L float64 sums outlive a batch.

    Args:
        model: any ``nn.Module``; it runs in eval mode under ``torch.no_grad()``. Its mode
            (per submodule) is restored and the hooks are removed afterwards, also on errors.
            It is never moved or otherwise modified.
        data: an iterable of batches (a DataLoader, a list, ``mpruner.data.text_batches``).
            A dict runs as ``model(**batch)``, a tuple/list as ``model(batch[0])``, a tensor
            as ``model(batch)``. Tensors are moved to the model's device.
        layers: ``"auto"`` (the first block list ``mpruner.find_blocks`` finds; T5: the
            encoder), a block-list name (``"decoder.block"``), the attribute path of an
            ``nn.Sequential``/``nn.ModuleList``, or a list of module names.
        view: how an output becomes features per sample (default ``"mean"`` for CKA,
            ``"tokens"`` for cosine/angular): ``"mean"`` (mean over real tokens,
            using the batch's ``attention_mask``; spatial mean of conv maps), ``"flatten"``,
            ``"cls"``, ``"last_token"``, or ``"tokens"`` (per-sequence CKA with tokens as
            samples, averaged over sequences; linear kernel only).
        kernel: ``"linear"`` or ``"rbf"``.
        unbiased: unbiased HSIC_1 (each batch needs >= 4 samples; per sequence >= 4 tokens
            for ``"tokens"``) or biased HSIC_0 (>= 2). Smaller batches (typically a short
            last batch) are skipped and counted in ``options["skipped_batches"]`` and
            ``num_skipped``.
        other: a second model run on the same batches with the same ``layers`` argument;
            gives the (L, M) cross-model CKA matrix (e.g. pruned vs original).
        forward: ``forward(model, batch)`` replaces the default call (also used for ``other``).
        max_batches: stop after this many batches of ``data``.
        device: where CKA is computed (default: the model's device). Inputs always go to
            the model's device; for a model dispatched over devices or offloaded by accelerate
            (``device_map="auto"``, ``dispatch_model``, ``disk_offload``) that is its execution
            device, and each block's output is moved to ``device`` as it is captured.
        progress: show a tqdm progress bar (on rank 0 only when distributed).
        distributed: ``"auto"`` (default): when a ``torch.distributed`` process group of W > 1
            ranks is initialised (torchrun), rank r analyses batches r, r + W, ... of ``data``
            (after ``max_batches``) and one all-reduce sums the float64 statistics, so every
            rank returns the single-process result. ``True``: the same, and an error without a
            process group. ``False``: every rank analyses every batch.
        metric: ``"cka"``; ``"cosine"``: the mean over every real token (padding excluded) of
            cos(h_a[t], h_b[t]) between the outputs of blocks a and b; ``"angular"``: the mean
            of arccos(cos)/pi (Gromov et al.). These two take ``view="tokens"`` (every real
            token, the default) or ``"last_token"``, need blocks of one width, and never give
            NaN (zero vectors: see ``mpruner.engine.similarity``).
        block_inputs: also capture each block's INPUT (a forward pre-hook, same pass) for
            ``Analysis.block_influence()`` and ``Analysis.run_distance()``; default: on for
            cosine/angular, off for CKA (with CKA it adds the token cosines of input vs output).
        normalize: ``"rms"`` scales every token vector of a (batch, tokens, features) block output to
            unit root-mean-square before the view (what the next block's norm sees), ``None``
            leaves the outputs as they are. ``"auto"`` (default): ``"rms"`` for decoder language
            models (the LLaMA, Qwen2, Mistral, Qwen3, Gemma, Phi-3, Mixtral and GPT-2 families),
            whose residual stream carries a few massive dimensions that saturate linear CKA near
            1 for every block; ``None`` otherwise. Recorded in ``options["normalize"]``. Cosine
            and angular distance are scale-invariant per token and unaffected.
        precision: the CKA Grams' float32 GEMM mode: ``"highest"`` (IEEE float32, default),
            ``"high"`` (~16 mantissa bits: TF32 on CUDA, two bfloat16 terms on a CPU's matrix
            engine; ``"tf32"`` is an alias) or ``"medium"`` (bfloat16 inputs), as in
            :func:`mpruner.cka_matrix`; without the hardware, ``"highest"`` (one warning).
            Recorded in ``options["precision"]``. Cosine and angular distance run no GEMM.

    Returns:
        :class:`Analysis` with ``.cka`` (float64, CPU), ``.layer_names``, ``.num_samples``, ``.options``.
    """
    checks.check_choice(metric, METRICS, "metric")
    precision = checks.check_precision(precision)
    if view is None:
        view = "mean" if metric == "cka" else "tokens"
    if block_inputs is None:
        block_inputs = metric != "cka"
    if metric != "cka":
        if view not in TOKEN_METRIC_VIEWS:
            raise ValueError(f"metric={metric!r} compares blocks token by token: view must be 'tokens' or "
                             f"'last_token', got {view!r}")
        if other is not None:
            raise ValueError(f"other= (cross-model comparison) is computed with metric='cka'; got metric={metric!r}")
    _check_args(model, data, view, kernel, other, forward, max_batches)
    normalize = resolve_normalize(normalize, model)
    shard = resolve_shard(distributed)
    selection = resolve_layers(model, layers)
    other_selection = resolve_layers(other, layers, argument="layers (for other)") if other is not None else None
    run_device = execution_device(model)
    cka_device = torch.device(device) if device is not None else run_device
    names, other_names = list(selection.names), list(other_selection.names) if other_selection else []
    sink, view_fn = choose_sink(metric, view, kernel, unbiased, bool(block_inputs), names, other_names, cka_device,
                                normalize, precision)

    total = _length(data, max_batches)
    batches = data if max_batches is None else itertools.islice(data, max_batches)
    if shard is not None:
        batches, total, progress = shard.take(batches), shard.count(total), progress and shard.rank == 0
    seen, failure = 0, None
    other_hooks = LayerCapture(other_selection, functools.partial(apply_view, view, normalize=normalize)) \
        if other is not None \
        else contextlib.nullcontext()
    input_hooks = InputCapture(selection) if block_inputs else contextlib.nullcontext()
    try:
        with _restore_modes(model, other), torch.no_grad(), _progress(batches, total, progress) as batches, \
                LayerCapture(selection, view_fn) as capture, other_hooks as other_capture, \
                input_hooks as in_capture:
            model.eval()
            if other is not None:
                other.eval()
            for index, batch in enumerate(batches):
                if shard is not None:
                    index = shard.rank + index * shard.world  # the batch's place in the whole stream
                seen += 1
                feats, ctx = _run(model, capture, batch, run_device, forward, index, in_capture)
                ins = in_capture.collect() if block_inputs else None
                other_feats = None
                if other is not None:
                    other_feats, _ = _run(other, other_capture, batch, execution_device(other), forward, index)
                sink.update(feats, ins, other_feats, ctx)
    except Exception as e:
        if shard is None:
            raise
        failure = e
    if shard is not None:  # every rank joins, also one that failed (it re-raises its own error)
        seen = reduce_sink(shard, sink, seen, failure)
    result = sink.result()
    extra = result.extra if shard is None else dict(result.extra, world_size=shard.world)
    options = _options(model, other, selection, other_selection, view, kernel, unbiased, max_batches, cka_device,
                       sink, seen, extra)
    options["normalize"] = normalize
    if metric == "cka":
        options["precision"] = precision
    if metric != "cka" or block_inputs:
        options.update(metric=metric, block_inputs=bool(block_inputs))
    return Analysis(result.matrix, names, result.num_samples, options, other_names if other is not None else None,
                    metric=metric, block_io=result.block_io)


def resolve_normalize(normalize, model: nn.Module) -> Optional[str]:
    """``analyze``'s ``normalize``, with ``"auto"`` decided by the model's family (see ``analyze``)."""
    if normalize == "auto":
        traits = family_traits(model)
        return "rms" if traits is not None and traits.causal_lm else None
    if normalize not in NORMALIZATIONS:
        raise ValueError(f"normalize must be 'auto', 'rms' or None, got {normalize!r}")
    return normalize


def choose_sink(metric: str, view: str, kernel: str, unbiased: bool, block_inputs: bool, names, other_names,
                device, normalize: Optional[str] = None, precision: str = "highest"):
    """The sink for this analysis and the view its hooks apply, chosen once:

    - ``metric="cosine"/"angular"``: token cosines (:class:`SimilaritySink`) on the token states;
    - ``metric="cka"``: per-sequence CKA (``view="tokens"``, :class:`TokenSink`) or minibatch
      CKA (:class:`MatrixSink`); with ``block_inputs`` also the token cosines of each block's
      input against its output, from the same hooks (:class:`WithBlockIO`).
    """
    if metric != "cka":
        return (SimilaritySink(metric, view, names, block_inputs, device),
                functools.partial(apply_view, "tokens"))
    if view == "tokens":
        sink = TokenSink(unbiased, names, other_names, device, precision)
    else:
        sink = MatrixSink(kernel, unbiased, names, other_names, device, precision)
    if not block_inputs:
        return sink, functools.partial(apply_view, view, normalize=normalize)
    similarity = SimilaritySink("cosine", "tokens", names, True, device)
    return WithBlockIO(sink, similarity), functools.partial(_both_views, view, normalize)


def _both_views(view: str, normalize: Optional[str], x, ctx, name: str):
    """(CKA features of ``view``, (token states, mask)) of one output, for CKA with block inputs."""
    return apply_view(view, x, ctx, name, normalize), apply_view("tokens", x, ctx, name)


def _run(model: nn.Module, capture: LayerCapture, batch, device: torch.device, forward, index: int,
         inputs: Optional[InputCapture] = None):
    """One forward pass with the hooks armed -> (viewed outputs per layer, batch context)."""
    batch = to_device(batch, device, index)
    ctx = batch_context(batch, index)
    capture.start(ctx)
    if inputs is not None:
        inputs.start(ctx)
    try:
        call_model(model, batch, forward, index)
    except Exception as e:
        if hasattr(e, "add_note"):
            e.add_note(f"(raised by the forward pass of batch {index} in mpruner.analyze)")
        raise
    return capture.collect(), ctx


def _check_args(model, data, view, kernel, other, forward, max_batches) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if other is not None and not isinstance(other, nn.Module):
        raise TypeError(f"other must be a torch.nn.Module (a second model) or None, got {type(other).__name__}")
    if other is model:
        raise ValueError("other is the model itself; pass a different model (e.g. a pruned copy), or leave other=None")
    check_data(data)
    checks.check_choice(view, VIEWS, "view")
    checks.check_choice(kernel, checks.KERNELS, "kernel")
    if view == "tokens" and kernel != "linear":
        raise ValueError("view='tokens' computes linear CKA per sequence; use kernel='linear' (or another view)")
    if forward is not None and not callable(forward):
        raise TypeError(f"forward must be a callable forward(model, batch), got {type(forward).__name__}")
    if max_batches is not None and (isinstance(max_batches, bool) or not isinstance(max_batches, int)
                                    or max_batches < 1):
        raise ValueError(f"max_batches must be a positive integer or None, got {max_batches!r}")


def _length(data, max_batches: Optional[int]) -> Optional[int]:
    try:
        n = len(data)
    except TypeError:
        return max_batches
    return n if max_batches is None else min(n, max_batches)


@contextlib.contextmanager
def _progress(batches, total: Optional[int], enabled: bool):
    if not enabled:
        yield batches
        return
    from tqdm.auto import tqdm

    bar = tqdm(batches, total=total, desc="mpruner analyze", unit="batch")
    try:
        yield bar
    finally:
        bar.close()


@contextlib.contextmanager
def _restore_modes(*models: Optional[nn.Module]):
    """Put every submodule back in its own train/eval mode on exit."""
    saved = [(m, m.training) for model in models if model is not None for m in model.modules()]
    try:
        yield
    finally:
        for module, training in saved:
            module.training = training


def _options(model, other, selection: LayerSelection, other_selection, view, kernel, unbiased, max_batches,
             device, sink, seen, extra) -> Dict:
    from ..version import __version__

    options = {"view": view, "kernel": kernel, "unbiased": bool(unbiased), "layers": selection.source,
               "model": type(model).__name__, "num_batches": sink.num_batches, "batches_seen": seen,
               "skipped_batches": sink.skipped_batches, "skipped_samples": sink.skipped_samples,
               "max_batches": max_batches, "device": str(device), "mpruner_version": __version__,
               "torch_version": torch.__version__}
    if other is not None:
        options.update(other_model=type(other).__name__, other_layers=other_selection.source)
    options.update(extra)
    return options
