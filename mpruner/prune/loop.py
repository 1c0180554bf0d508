"""The MPruner loop: analyse -> cluster -> remove -> fine-tune -> evaluate -> accept or roll back."""
from __future__ import annotations

import contextlib
import copy
import inspect
import math
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Iterable, List, Optional

import torch
import torch.nn as nn

from ..adapters import find_blocks
from ..distributed import Ranks
from ..stacklevel import user_stacklevel
from ..surgery import load_pruned, model_stats, removable_layers, remove_layers
from . import checkpoint as ckpt
from . import strategies
from .options import PruneOptions, signature
from .planning import AttemptPlanning
from .records import Iteration, PruneResult


def _check_replaceable(model: nn.Module) -> None:
    """replace="linear" needs a decoder LM whose family declares where to fold the map (checked now,
    not after the first analysis)."""
    from ..adapters import family_traits

    traits = family_traits(model)
    if traits is None or traits.residual_projection is None:
        raise ValueError(f"replace='linear' folds a fitted map into each block's MLP output projection; "
                         f"{type(model).__name__} declares none (supported: the LLaMA, Qwen2, Mistral, Qwen3, Phi-3 "
                         "and GPT-2 families); drop replace")


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


class MPruner(AttemptPlanning):
    """Depth pruning by CKA redundancy (MPruner, arXiv 2408.13482).

    Args:
        model: the model to prune; it is never modified (the loop works on copies).
        calib_data: batches for the CKA analysis (see ``mpruner.analyze``).
        evaluate: ``evaluate(model) -> float``, higher is better unless ``higher_is_better=False``
            (e.g. perplexity: ``lambda m: mpruner.perplexity(m, ids).perplexity``); a judge with a
            ``higher_is_better`` attribute (:func:`mpruner.lm.task_metric`) sets the direction itself.
        finetune: ``finetune(model) -> None`` trains in place (e.g. ``mpruner.Finetuner``); None skips recovery.
        layers: ``"auto"`` (the first block list) or a block-list name from ``mpruner.find_blocks``.
        threshold: CKA threshold for clustering, or ``"auto"`` (the highest adjacent similarity, >= 0.9).
        tolerance: allowed metric drop against the ORIGINAL model's metric.
        tolerance_mode: ``"absolute"`` (metric >= before - tolerance) or ``"relative"``
            (metric >= before * (1 - tolerance)); with ``higher_is_better=False`` the bounds
            are metric <= before + tolerance and metric <= before * (1 + tolerance). Default
            ``"auto"``: absolute for a higher-is-better metric (accuracy), relative for a
            lower-is-better one (perplexity: ``tolerance=0.1`` allows 10% more).
        higher_is_better: False for a metric where lower is better (perplexity, loss).
        max_granularity: largest step k (removes ``cluster[1::k]``) tried after rejections.
        max_iterations: most attempts (each = one removal + fine-tune + evaluation).
        view: how block outputs become samples x features (``mean``, ``cls``, ``flatten``, ``tokens``...);
            default ``"mean"``, or ``"tokens"`` for the token-metric strategies (which take
            ``"tokens"`` or ``"last_token"``).
        checkpoint_dir: writes every attempt's state atomically; ``run(resume=True)`` continues from it.
        example_inputs: when given, ``model_stats`` (MACs, latency) before and after.
        progress: progress bars (one line per stage and attempt is printed either way; ``verbose=False``
            silences those).
        cluster_method: ``"anchor"`` (MPruner) or ``"adjacent"``.
        analyze_kwargs: extra arguments for ``mpruner.analyze`` (e.g. ``max_batches``, ``forward``).
        seed: fine-tuning of attempt i starts from ``torch.manual_seed(seed + i)``.
        select: ``"cluster"`` (MPruner's CKA clusters), ``"lowest-influence"`` (the blocks of
            lowest Block Influence, ShortGPT), ``"contiguous"`` (the run of consecutive blocks
            whose input and output are closest by angular distance, Gromov et al.), or a block
            ranking of :func:`mpruner.lm.rank_blocks` for decoder LMs (``"cka"``, ``"influence"``,
            ``"angular"``, ``"update"``, ``"loo"``, ``"greedy"``, ``"auto"``; the first and last
            block are kept); see :mod:`mpruner.prune.strategies`.
        n, target_layers: for every ``select`` but ``"cluster"``: remove ``n`` blocks in all, or
            down to ``target_layers`` blocks (one of the two).
        replace: ``"linear"``: each removed run of blocks is replaced by a linear map fitted on
            ``calib_data`` and folded into the previous block (:func:`mpruner.lm.linear_replacement`;
            decoder LMs of the LLaMA, Qwen2, Mistral, Qwen3, Phi-3 and GPT-2 families); default
            None: plain removal.
        replace_data: the batches the linear maps are fitted on (default ``calib_data``): the fit
            needs at least 8 tokens per dimension of the residual stream, often more than the
            block choice needs.
    """

    def __init__(self, model: nn.Module, calib_data: Iterable, evaluate: Callable[[nn.Module], float],
                 finetune: Optional[Callable[[nn.Module], None]] = None, *args, **options):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if not callable(evaluate):
            raise TypeError("evaluate must be a callable evaluate(model) -> float (higher is better)")
        if finetune is not None and not callable(finetune):
            raise TypeError("finetune must be a callable finetune(model) -> None, a mpruner.Finetuner, or None")
        judged = getattr(evaluate, "higher_is_better", None)  # a judge that knows its direction (lm.task_metric)
        if isinstance(judged, bool):
            if options.get("higher_is_better", judged) != judged:
                raise ValueError(f"evaluate ({evaluate!r}) is {'higher' if judged else 'lower'} is better, but "
                                 f"higher_is_better={options['higher_is_better']}; drop higher_is_better")
            options = {**options, "higher_is_better": judged}
        self.options = opts = PruneOptions.from_call(args, options)  # every option checked here
        self.original = model
        self.calib_data, self.evaluate, self.finetune = calib_data, evaluate, finetune
        self.threshold, self.tolerance, self.tolerance_mode = opts.threshold, opts.tolerance, opts.tolerance_mode
        self.higher_is_better = opts.higher_is_better
        self.max_granularity, self.max_iterations = opts.max_granularity, opts.max_iterations
        self.view, self.example_inputs, self.progress, self.verbose = (opts.view, opts.example_inputs, opts.progress,
                                                                        opts.verbose)
        self.cluster_method, self.analyze_kwargs, self.seed = opts.cluster_method, dict(opts.analyze_kwargs or {}), \
            opts.seed
        self.select, self.n, self.target_layers = opts.select, opts.n, opts.target_layers
        self.replace, self.replace_data = opts.replace, opts.replace_data
        if self.replace is not None:
            _check_replaceable(model)
        self.checkpoint_dir = None if opts.checkpoint_dir is None else Path(opts.checkpoint_dir)
        self.ranks = Ranks.current()  # under torchrun: rank 0 decides and writes (see mpruner/distributed.py)
        if self.checkpoint_dir is not None:
            ckpt.check_directory(self.checkpoint_dir)  # now, not after the first attempt
        self.block_list = self._resolve_block_list(model, opts.layers)
        self._reset()
        if self.target_layers is not None:
            if not 1 <= self.target_layers < self.layers_before:
                raise ValueError(f"target_layers must be in [1, {self.layers_before - 1}] (the model has "
                                 f"{self.layers_before} blocks), got {self.target_layers}")
            self.n = self.layers_before - self.target_layers
        elif self.n is not None and self.n >= self.layers_before:
            raise ValueError(f"n={self.n} would remove every block (the model has {self.layers_before}); pass a "
                             "smaller n")

    # ------------------------------------------------------------------ setup
    def _resolve_block_list(self, model, layers) -> str:
        """The block list to prune; ``self._path`` is set when it is named by attribute path."""
        self._path = None
        if layers == "auto":
            lists = find_blocks(model)  # raises, naming the fix, when no adapter knows the model
            if not lists:
                raise ValueError("found no block list in this model; pass layers='<attribute path>'")
            if lists[0].adapter == "generic" and lists[0].name:
                self._path = lists[0].name  # a guessed container: keep it when pruning leaves it one block
            return lists[0].name
        try:
            detected = {bl.name: bl for bl in find_blocks(model)}
        except TypeError:
            detected = {}
        names = list(detected)
        if layers in detected:
            if detected[layers].adapter == "generic" and layers:
                self._path = layers  # a guessed container: keep it when pruning leaves it one block
            return layers
        try:
            found = find_blocks(model, path=layers)
        except (TypeError, ValueError, AttributeError) as error:
            raise ValueError(f"layers={layers!r} is not a block list of this model (available: {names or 'none'}); "
                             f"{error}") from None
        self._path = layers
        return found[0].name

    def _block_lists(self, model):
        return find_blocks(model) if self._path is None else find_blocks(model, path=self._path)

    def _reset(self):
        self.model: nn.Module = copy.deepcopy(self.original)
        self.history: List[Iteration] = []
        self.granularity, self.iteration = 1, 0
        self.metric_before: Optional[float] = None
        self.metric_current: Optional[float] = None
        self.done, self.stop_reason = False, ""
        self.seconds = {"analyze": 0.0, "finetune": 0.0, "evaluate": 0.0}
        self._analysis = None
        self._scores = None
        self._rejected: List[List[int]] = []   # removal sets rolled back for the current model
        self._excluded: List[int] = []         # layers whose removal alone was rolled back
        self._model_dir: Optional[str] = None
        self.params_before = _params(self.original)
        self.layers_before = self._num_layers(self.model)

    def _num_layers(self, model) -> int:
        return next(len(bl) for bl in self._block_lists(model) if bl.name == self.block_list)

    def _options(self) -> dict:
        """The options a checkpoint records and a resumed run must match."""
        return self.options.checkpointed(self.block_list, self.n)

    def _log(self, msg: str):
        if not self.verbose or not self.ranks.is_main:
            return
        if self.progress:
            from tqdm.auto import tqdm

            tqdm.write(msg)  # above any bar
        else:
            print(msg, flush=True)

    def _timed(self, stage, fn, *args):
        t = time.perf_counter()
        try:
            return fn(*args)
        finally:
            self.seconds[stage] += time.perf_counter() - t

    # ------------------------------------------------------------------ the loop
    def accepts(self, metric: float) -> bool:
        """Whether ``metric`` is within tolerance of the original model's metric."""
        if metric is None or math.isnan(metric):
            return False
        bound = self._bound()
        return metric >= bound if self.higher_is_better else metric <= bound

    def _analyze(self):
        from ..analysis import analyze

        kwargs = dict(self.analyze_kwargs)
        if self.select != "cluster":
            kwargs.update(metric=strategies.ANALYSIS_METRIC[self.select], block_inputs=True)
        analysis = analyze(self.model, self.calib_data, layers=self._path or self.block_list, view=self.view,
                           progress=self.progress, **kwargs)
        self._scores = None
        if self.select in strategies.RANKING_SELECTIONS:
            from ..lm import rank_blocks

            remaining = self.n - (self.layers_before - self._num_layers(self.model))
            self._scores = rank_blocks(self.model, self.calib_data, self.select, layers=self._path or self.block_list,
                                       protect="ends", limit=remaining, progress=self.progress)
        return analysis

    def step(self) -> Optional[Iteration]:
        """One attempt; returns its record, or None once the loop has finished."""
        if self.done:
            return None
        if self.metric_before is None:
            self.ranks.sync_weights(self.model)  # one starting point on every rank (the loop's own copy)
            self.metric_before = self.ranks.metric(float(self._timed("evaluate", self.evaluate, self.model)))
            self.metric_current = self.metric_before
            self._log(f"mpruner: original metric {self.metric_before:.4f}")
        if self.iteration >= self.max_iterations:
            return self._finish(f"reached max_iterations={self.max_iterations}")
        if self.select != "cluster" and self.layers_before - self._num_layers(self.model) >= self.n:
            return self._finish(f"removed n={self.n} blocks ({self.select})")
        if self._analysis is None:
            self._analysis = self._timed("analyze", self._analyze)
        cka = torch.as_tensor(self._analysis.matrix, dtype=torch.float64)
        names = list(self._analysis.layer_names)
        allowed = set(removable_layers(self.model, path=self._path).get(self.block_list, []))
        if self.select in strategies.RANKING_SELECTIONS:
            allowed -= {0, len(names) - 1}  # a decoder LM depends most on its first and last block
        plan = self._plan(cka, allowed) if self.select == "cluster" else self._plan_strategy(allowed)
        plan, self.granularity, self._excluded = self.ranks.from_main((plan, self.granularity, self._excluded))
        L = len(names)
        if isinstance(plan, str):
            return self._finish(plan)
        threshold, clusters, removed = plan
        if self.replace == "linear":
            from ..lm import linear_replacement

            candidate = linear_replacement(self.model, removed, self.calib_data if self.replace_data is None
                                           else self.replace_data)
        else:
            candidate = remove_layers(self.model, {self.block_list: removed})
        secs = {}
        if self.finetune is not None:
            torch.manual_seed(self.seed + self.iteration)
            t = time.perf_counter()
            with self._healing_checkpoint(removed):
                self._timed("finetune", self.finetune, candidate)
            secs["finetune"] = time.perf_counter() - t
        t = time.perf_counter()
        metric = self.ranks.metric(float(self._timed("evaluate", self.evaluate, candidate)))
        secs["evaluate"] = time.perf_counter() - t
        accepted = self.ranks.from_main(self.accepts(metric))
        record = Iteration(self.iteration, self.granularity, threshold, names, cka.tolist(), clusters, removed,
                           [names[i] for i in removed], L, L - len(removed), metric, accepted, secs,
                           self._analysis.metric)
        self.history.append(record)
        self._log(f"mpruner: attempt {self.iteration}: k={self.granularity} remove {removed} -> metric {metric:.4f} "
                  f"({'accepted' if accepted else 'rolled back'}; bound "
                  f"{self._bound():.4f})")
        self.iteration += 1
        if accepted:
            self.model, self.metric_current, self._analysis = candidate, metric, None
            self._rejected, self._excluded = [], []
            self._save(model_changed=True)
        else:
            del candidate  # roll back: the last accepted model was never touched
            self._rejected.append(sorted(removed))
            if len(removed) == 1:
                # A single layer has no finer step: leave it in this model and try others.
                self._excluded.append(removed[0])
            else:
                self.granularity += 1  # a finer step next (_plan stops past max_granularity)
            self._save(model_changed=False)
        return record

    def _healing_checkpoint(self, removed):
        """A Finetuner healing this attempt checkpoints into the run's directory, so a resumed run
        continues the attempt's healing instead of starting it over."""
        if self.checkpoint_dir is None:
            return contextlib.nullcontext()
        from ..training.healing_state import healing_checkpoint

        return healing_checkpoint(self.checkpoint_dir, f"attempt {self.iteration}: remove {sorted(removed)}")

    def _bound(self) -> float:
        sign = 1 if self.higher_is_better else -1  # lower is better: the bound lies above
        if self.tolerance_mode == "absolute":
            return self.metric_before - sign * self.tolerance
        return self.metric_before * (1 - sign * self.tolerance)

    def _finish(self, reason: str, record: Optional[Iteration] = None):
        self.done, self.stop_reason = True, reason
        self._log(f"mpruner: stopped: {reason}")
        self._save(model_changed=False)
        return record

    def run(self, resume: bool = False) -> PruneResult:
        """Runs the loop to the end; with ``resume=True`` continues from ``checkpoint_dir``."""
        if resume:
            if self.checkpoint_dir is None:
                raise ValueError("resume=True needs checkpoint_dir")
            self._load()
        stats_before = None
        if self.example_inputs is not None:
            stats_before = model_stats(self.original, self.example_inputs).to_dict()
        with self.ranks.guard(self.checkpoint_dir):
            while not self.done:
                self.step()
        stats_after = model_stats(self.model, self.example_inputs).to_dict() if self.example_inputs is not None else None
        return PruneResult(
            model=self.model, history=list(self.history), metric_before=self.metric_before,
            metric_after=self.metric_current, layers_before=self.layers_before,
            layers_after=self._num_layers(self.model), params_before=self.params_before,
            params_after=_params(self.model), tolerance=self.tolerance, tolerance_mode=self.tolerance_mode,
            higher_is_better=self.higher_is_better,
            stop_reason=self.stop_reason, seconds=dict(self.seconds), stats_before=stats_before,
            stats_after=stats_after)

    # ------------------------------------------------------------------ checkpoints
    def _save(self, model_changed: bool):
        if self.checkpoint_dir is None:
            return
        if not self.ranks.is_main:  # rank 0 writes; the others only keep the name in step
            if model_changed or self._model_dir is None:
                self._model_dir = f"model-{self.iteration:04d}"
            return
        d = self.checkpoint_dir
        d.mkdir(parents=True, exist_ok=True)
        if model_changed or self._model_dir is None:
            self._model_dir = ckpt.save_model_atomic(d, f"model-{self.iteration:04d}", self.model)
        state = {"version": 1, "options": self._options(), "iteration": self.iteration,
                 "granularity": self.granularity, "metric_before": self.metric_before,
                 "metric_current": self.metric_current, "done": self.done, "stop_reason": self.stop_reason,
                 "seconds": self.seconds, "model_dir": self._model_dir, "rejected": self._rejected,
                 "excluded": self._excluded,
                 "history": [asdict(h) for h in self.history]}
        ckpt.write_json_atomic(d / ckpt.STATE, state)
        ckpt.prune_old_models(d, keep=self._model_dir)

    def _iteration(self, h: dict, i: int) -> Iteration:
        fields = set(Iteration.__dataclass_fields__)
        missing = fields - set(h) - {"seconds", "similarity"}  # similarity: recorded since 0.2
        if missing or set(h) - fields:
            raise ValueError(f"{self.checkpoint_dir / ckpt.STATE}: history[{i}] has fields {sorted(h)}, expected "
                             f"{sorted(fields)}; the checkpoint is damaged or from another mpruner")
        return Iteration(**h)

    def _load(self):
        state = self.ranks.from_main(ckpt.read_state(self.checkpoint_dir) if self.ranks.is_main else None)
        if state is None:
            import warnings

            warnings.warn(f"resume=True: no checkpoint in {self.checkpoint_dir}; starting from the beginning",
                          UserWarning, stacklevel=user_stacklevel())
            return
        differences = ckpt.option_differences(state["options"], self._options())
        if differences:
            raise ckpt.CheckpointMismatch(self.checkpoint_dir, differences)
        self._reset()
        self.model = load_pruned(self.checkpoint_dir / state["model_dir"], lambda: copy.deepcopy(self.original))
        self._model_dir = state["model_dir"]
        self.iteration, self.granularity = state["iteration"], state["granularity"]
        self.metric_before, self.metric_current = state["metric_before"], state["metric_current"]
        self.done, self.stop_reason = state["done"], state["stop_reason"]
        self.seconds = dict(state["seconds"])
        self._rejected, self._excluded = state["rejected"], state["excluded"]
        self.history = [self._iteration(h, i) for i, h in enumerate(state["history"])]
        self._log(f"mpruner: resumed at attempt {self.iteration} (k={self.granularity}, "
                  f"{self._num_layers(self.model)} layers)")


# The constructor's signature as help(), IDEs and the API reference show it: every option of
# PruneOptions with its default (the options are listed once, there).
MPruner.__init__.__signature__ = signature(inspect.Signature([
    inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=default)
    for name, default in (("self", inspect.Parameter.empty), ("model", inspect.Parameter.empty),
                          ("calib_data", inspect.Parameter.empty), ("evaluate", inspect.Parameter.empty),
                          ("finetune", None))]))
