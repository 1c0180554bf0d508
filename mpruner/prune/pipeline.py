"""``Pipeline``: depth pruning by CKA, then width pruning, then Wanda sparsity, one discipline.

Every stage is followed by the same recovery fine-tuning and the same acceptance test against
the ORIGINAL model's metric; a stage that fails it is rolled back to the last accepted model
(which the stage never touched: it works on a copy), and the next stage starts from there.
"""
from __future__ import annotations

import copy
import json
import math
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional

import torch
import torch.nn as nn

from ..sparsity import count_nonzero, frozen_copy, refresh_masked_weights, wanda
from ..surgery import load_pruned, model_stats, save_pruned, write_model_card
from ..surgery.stats import format_count
from . import checkpoint as ckpt
from .loop import MPruner, PruneResult
from .shared_calibration import SharedCalibration

STATE = "pipeline.json"


@dataclass
class Stage:
    """One stage's outcome (an entry of ``PipelineResult.stages``; ``dense`` is the starting point)."""
    name: str
    accepted: bool
    metric: Optional[float]
    params: int
    nonzero: int
    macs: Optional[int] = None
    latency_ms: Optional[float] = None
    seconds: float = 0.0
    details: Dict = field(default_factory=dict)


@dataclass
class PipelineResult:
    model: nn.Module
    stages: List[Stage]
    metric_before: float
    metric_after: float
    depth: Optional[PruneResult] = None

    def to_dict(self) -> dict:
        return {"metric_before": self.metric_before, "metric_after": self.metric_after,
                "stages": [asdict(s) for s in self.stages]}

    def summary(self) -> str:
        lines = [f"{'stage':<10} {'result':<11} {'params':>12} {'non-zero':>12} {'MACs':>8} {'latency':>9} "
                 f"{'metric':>8}"]
        for s in self.stages:
            lat = "-" if s.latency_ms is None or math.isnan(s.latency_ms) else f"{s.latency_ms:.2f}ms"
            lines.append(f"{s.name:<10} {'accepted' if s.accepted else 'rolled back':<11} {s.params:>12,} "
                         f"{s.nonzero:>12,} {'-' if s.macs is None else format_count(s.macs):>8} {lat:>9} "
                         f"{'-' if s.metric is None else format(s.metric, '.4f'):>8}")
        return "\n".join(lines)


class Pipeline:
    """Depth -> width -> sparsity with recovery fine-tuning and accept/roll-back after each stage.

    Args:
        model: the model; never modified (every stage works on a copy).
        calib_data: calibration batches, for the CKA analysis and Wanda's statistics.
        evaluate: ``evaluate(model) -> float``, higher is better.
        finetune: recovery ``finetune(model)`` after every stage (e.g. ``mpruner.Finetuner``); None: none.
        depth: run MPruner's depth pruning first (``depth_kwargs`` go to ``MPruner``).
        width: fraction of channels/heads for ``mpruner.width.prune_width`` (None: no width stage;
            ``width_kwargs`` go to it); needs ``example_inputs``.
        sparsity / pattern: Wanda's fraction (e.g. 0.5) or N:M pattern (``"2:4"``); both None: no
            sparsity stage (``wanda_kwargs`` go to ``mpruner.sparsity.wanda``).
        tolerance, tolerance_mode: the acceptance test against the original metric, for every stage
            (``"auto"``: ``"absolute"``, as the pipeline's metrics are higher-is-better).
        checkpoint_dir: each finished stage's state and model; ``run(resume=True)`` continues.
        example_inputs: for width pruning's tracing and each stage's MACs / latency.
        share_calibration: when Wanda runs in one pass (``wanda_kwargs={"sequential": False}``) on
            exactly the model depth pruning analysed last, its statistics come from that analysis pass.
    """

    def __init__(self, model: nn.Module, calib_data: Iterable, evaluate: Callable[[nn.Module], float],
                 finetune: Optional[Callable[[nn.Module], None]] = None, *, depth: bool = True,
                 width: Optional[float] = None, sparsity: Optional[float] = None, pattern: Optional[str] = None,
                 tolerance: float = 0.01, tolerance_mode: str = "auto", checkpoint_dir=None,
                 example_inputs=None, progress: bool = True, depth_kwargs: Optional[dict] = None,
                 width_kwargs: Optional[dict] = None, wanda_kwargs: Optional[dict] = None,
                 share_calibration: bool = True, seed: int = 0):
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if not callable(evaluate):
            raise TypeError("evaluate must be a callable evaluate(model) -> float (higher is better)")
        if getattr(evaluate, "higher_is_better", True) is False:
            raise ValueError(f"the pipeline accepts each stage by a higher-is-better metric; evaluate ({evaluate!r}) is "
                             "lower is better: judge by an accuracy (e.g. mpruner.lm.task_metric('mpruner_wiki_cloze', "
                             "tokenizer))")
        if width is not None and example_inputs is None:
            raise ValueError("width pruning traces the model: pass example_inputs (one batch)")
        if width is not None and not (isinstance(width, (int, float)) and 0 < width < 1):
            raise ValueError(f"width must be a fraction in (0, 1) or None, got {width!r}")
        if sparsity is not None or pattern is not None:
            from ..sparsity.wanda import _check_sparsity, parse_pattern

            _check_sparsity(sparsity, parse_pattern(pattern))  # bad values fail here, before any work
        if tolerance_mode not in ("auto", "absolute", "relative"):
            raise ValueError(f"tolerance_mode must be 'auto', 'absolute' or 'relative', got {tolerance_mode!r}")
        if tolerance_mode == "auto":  # the metric is higher-is-better here (accuracy)
            tolerance_mode = "absolute"
        self.original, self.calib_data, self.evaluate, self.finetune = model, calib_data, evaluate, finetune
        self.depth, self.width, self.sparsity, self.pattern = depth, width, sparsity, pattern
        self.tolerance, self.tolerance_mode = float(tolerance), tolerance_mode
        self.checkpoint_dir = None if checkpoint_dir is None else Path(checkpoint_dir)
        self.example_inputs, self.progress, self.seed = example_inputs, progress, seed
        self.depth_kwargs, self.width_kwargs = dict(depth_kwargs or {}), dict(width_kwargs or {})
        self.wanda_kwargs = dict(wanda_kwargs or {})
        self.share = share_calibration and (sparsity is not None or pattern is not None) and depth \
            and self.wanda_kwargs.get("sequential") is False
        self.shared: Optional[SharedCalibration] = None
        self.stage_names = (["depth"] if depth else []) + (["width"] if width is not None else []) + \
            (["sparsity"] if sparsity is not None or pattern is not None else [])

    # ------------------------------------------------------------------ helpers
    def _log(self, msg):
        if self.progress:
            from tqdm.auto import tqdm

            tqdm.write(msg)

    def _accepts(self, metric) -> bool:
        if metric is None or math.isnan(metric):
            return False
        if self.tolerance_mode == "absolute":
            return metric >= self.metric_before - self.tolerance
        return metric >= self.metric_before * (1 - self.tolerance)

    def _stage(self, name, model, metric, accepted, seconds, **details) -> Stage:
        macs = latency = None
        if self.example_inputs is not None:
            st = model_stats(model, self.example_inputs)
            macs, latency = st.macs, st.latency_ms
        return Stage(name, accepted, metric, sum(p.numel() for p in model.parameters()), count_nonzero(model), macs,
                     latency, seconds, details)

    def _options(self):
        return {"depth": self.depth, "width": self.width, "sparsity": self.sparsity, "pattern": self.pattern,
                "tolerance": self.tolerance, "tolerance_mode": self.tolerance_mode, "seed": self.seed}

    # ------------------------------------------------------------------ stages
    def _run_depth(self, resume: bool) -> (nn.Module, Stage, PruneResult):
        t = time.perf_counter()
        kwargs = dict(self.depth_kwargs)
        if self.share:
            self.shared = SharedCalibration(kwargs.get("analyze_kwargs", {}).get("forward"),
                                            self.wanda_kwargs.get("layers", "auto"))
            kwargs["analyze_kwargs"] = {**kwargs.get("analyze_kwargs", {}), "forward": self.shared.forward}
        pruner = MPruner(self.original, self.calib_data, self.evaluate, finetune=self.finetune,
                         tolerance=self.tolerance, tolerance_mode=self.tolerance_mode, progress=self.progress,
                         checkpoint_dir=None if self.checkpoint_dir is None else self.checkpoint_dir / "depth",
                         seed=self.seed, **kwargs)
        result = pruner.run(resume=resume and self.checkpoint_dir is not None)
        self.metric_before = result.metric_before
        stage = self._stage("depth", result.model, result.metric_after, result.layers_after < result.layers_before,
                            time.perf_counter() - t, layers_before=result.layers_before,
                            layers_after=result.layers_after, attempts=len(result.history))
        return result.model, stage, result

    def _candidate(self, name: str, model: nn.Module) -> nn.Module:
        if name == "width":
            from ..width import prune_width

            return prune_width(model, self.example_inputs, ratio=self.width, **self.width_kwargs)
        norms = self.shared.norms_for(model) if self.shared is not None else None
        if norms is not None:
            self._log("mpruner: Wanda statistics taken from the depth stage's last analysis pass")
        kwargs = {"progress": self.progress, **self.wanda_kwargs}
        return wanda(model, self.calib_data, sparsity=self.sparsity, pattern=self.pattern, norms=norms, **kwargs)

    def _try(self, name: str, model: nn.Module) -> (nn.Module, Stage):
        """Builds the stage's candidate from a copy, fine-tunes, evaluates; accepts or rolls back."""
        t = time.perf_counter()
        candidate = self._candidate(name, refresh_masked_weights(model))
        if self.finetune is not None:
            torch.manual_seed(self.seed + 1000 + self.stage_names.index(name))
            self.finetune(candidate)
        metric = float(self.evaluate(candidate))
        accepted = self._accepts(metric)
        self._log(f"mpruner: {name} stage -> metric {metric:.4f} ({'accepted' if accepted else 'rolled back'}; "
                  f"original {self.metric_before:.4f}, tolerance {self.tolerance} {self.tolerance_mode})")
        stage = self._stage(name, candidate, metric, accepted, time.perf_counter() - t)
        return (candidate if accepted else model), stage

    # ------------------------------------------------------------------ checkpoints
    def _save(self, model, stages, done):
        if self.checkpoint_dir is None:
            return
        d = self.checkpoint_dir
        d.mkdir(parents=True, exist_ok=True)
        name = f"stage-{len(stages):02d}"
        tmp = d / f".{name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        frozen = frozen_copy(model)  # prune masks folded: plain weights, plain loaders
        if hasattr(frozen, "save_pretrained"):
            frozen.save_pretrained(str(tmp))
            write_model_card(tmp, frozen, self._card_summary(stages), stages=self._stages_run(stages))
        else:
            save_pruned(frozen, tmp, card={"summary": self._card_summary(stages), "stages": self._stages_run(stages)})
        shutil.rmtree(d / name, ignore_errors=True)
        tmp.rename(d / name)
        ckpt.write_json_atomic(d / STATE, {"version": 1, "options": self._options(), "done": done,
                                           "metric_before": self.metric_before, "model_dir": name,
                                           "stages": [asdict(s) for s in stages]})
        for old in d.glob("stage-*"):
            if old.name != name:
                shutil.rmtree(old, ignore_errors=True)

    def _card_summary(self, stages) -> dict:
        done = [s for s in stages if s is not None]
        accepted = [s for s in done if s.accepted]
        return {"metric_before": self.metric_before, "metric_after": accepted[-1].metric if accepted else None,
                "tolerance": self.tolerance, "tolerance_mode": self.tolerance_mode,
                "params_before": sum(p.numel() for p in self.original.parameters()),
                "stages": [asdict(s) for s in done]}

    @staticmethod
    def _stages_run(stages) -> List[str]:
        return [s.name for s in stages if s is not None and s.name != "dense" and s.accepted]

    def _load(self):
        state = ckpt.read_state_file(self.checkpoint_dir / STATE) if self.checkpoint_dir else None
        if state is None:
            return None
        if state["options"] != self._options():
            raise ValueError(f"the checkpoint in {self.checkpoint_dir} was made with options {state['options']}, "
                             f"this run uses {self._options()}; use another checkpoint_dir or the same options")
        path = self.checkpoint_dir / state["model_dir"]
        if hasattr(self.original, "save_pretrained"):
            model = type(self.original).from_pretrained(str(path))
        else:
            model = load_pruned(path, lambda: copy.deepcopy(self.original))
        return state, model

    # ------------------------------------------------------------------ run
    def run(self, resume: bool = False) -> PipelineResult:
        stages: List[Stage] = []
        model, depth_result = self.original, None
        done: List[str] = []
        if resume:
            loaded = self._load()
            if loaded is not None:
                state, model = loaded
                self.metric_before = state["metric_before"]
                stages = [Stage(**s) for s in state["stages"]]
                done = [s.name for s in stages if s.name != "dense"]
                self._log(f"mpruner: pipeline resumed after {done or ['dense']}")
        if not stages:
            t = time.perf_counter()
            if not self.depth:
                self.metric_before = float(self.evaluate(self.original))
            else:
                self.metric_before = None
            stages.append(None)  # the dense row, filled once the original metric is known
        for name in self.stage_names:
            if name in done:
                continue
            if name == "depth":
                model, stage, depth_result = self._run_depth(resume)
            else:
                model, stage = self._try(name, model)
            stages.append(stage)
            if stages[0] is None:
                stages[0] = self._stage("dense", self.original, self.metric_before, True, 0.0)
            self._save(model, stages, done=False)
        if stages[0] is None:
            stages[0] = self._stage("dense", self.original, self.metric_before, True, time.perf_counter() - t)
        self._save(model, stages, done=True)
        accepted = [s for s in stages if s.accepted]
        return PipelineResult(model, stages, self.metric_before, accepted[-1].metric, depth_result)

    def save(self, model: nn.Module, path) -> str:
        """Saves the final model with its masks folded: ``save_pretrained`` for HF models, else ``save_pruned``."""
        frozen = frozen_copy(model)
        if hasattr(frozen, "save_pretrained"):
            frozen.save_pretrained(str(path))
            write_model_card(path, frozen, stages=self.stage_names)
            return "save_pretrained"
        save_pruned(frozen, path, card={"stages": self.stage_names})
        return "save_pruned"


def write_pipeline_report(result: PipelineResult, out, extra: Optional[dict] = None,
                          card: Optional[dict] = None) -> dict:
    """``summary.json`` (every stage: params, non-zeros, MACs, latency, metric), ``summary.txt`` and ``model/``
    with its model card ``README.md`` (``card``: more arguments of :func:`mpruner.surgery.model_card`)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    frozen = frozen_copy(result.model)
    if hasattr(frozen, "save_pretrained"):
        frozen.save_pretrained(str(out / "model"))
        saved = "save_pretrained"
    else:
        save_pruned(frozen, out / "model")
        saved = "save_pruned"
    summary = {**result.to_dict(), "model_saved_with": saved, **(extra or {})}
    if result.depth is not None:
        summary["depth"] = {k: v for k, v in result.depth.to_dict().items() if k != "history"}
    with open(out / "summary.json", "w") as f:
        json.dump(summary, f, indent=2, default=str)
    card_summary = {**summary, "params_before": result.stages[0].params if result.stages else None}
    if result.depth is not None:
        card_summary.update(layers_before=result.depth.layers_before, layers_after=result.depth.layers_after,
                            tolerance=result.depth.tolerance, tolerance_mode=result.depth.tolerance_mode)
    write_model_card(out / "model", frozen, card_summary,
                     stages=[s.name for s in result.stages if s.name != "dense" and s.accepted], **(card or {}))
    (out / "summary.txt").write_text(result.summary() + "\n")
    return summary
