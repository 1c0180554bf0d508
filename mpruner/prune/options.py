"""The MPruner options, listed once: the constructor, the checkpoint's option check and the
command line's flags all read :class:`PruneOptions`.

Each field carries, besides its default, the flag of ``mpruner prune`` that sets it (``flag``;
``None`` when the command line has none) and whether a resumed run must use the value the
checkpoint was made with (``checkpointed``).
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field, fields
from typing import Optional, Union

from .cluster import METHODS as CLUSTER_METHODS
from .strategies import SELECTIONS

TOLERANCE_MODES = ("auto", "absolute", "relative")
REPLACEMENTS = (None, "linear")
# Options the constructor also takes by position, in this order (after model, calib_data, evaluate, finetune).
POSITIONAL = ("layers", "threshold", "tolerance", "max_granularity", "max_iterations", "view", "checkpoint_dir",
              "example_inputs", "progress")


def _option(default, flag: Optional[str], checkpointed: bool = False, doc: str = ""):
    return field(default=default, metadata={"flag": flag, "checkpointed": checkpointed, "doc": doc})


@dataclass
class PruneOptions:
    """How :class:`mpruner.MPruner` prunes; see its docstring for each option's meaning."""

    layers: Union[str, object] = _option("auto", "--layers", doc="the block list to prune")
    threshold: Union[float, str] = _option(0.98, "--threshold", True,
                                           "CKA threshold for clusters, in (0, 1], or 'auto'")
    tolerance: float = _option(0.01, "--tolerance", True, "allowed metric drop against the original model's")
    max_granularity: int = _option(3, "--max-granularity", True,
                                   "largest step k (removes cluster[1::k]) tried after rollbacks")
    max_iterations: int = _option(10, "--max-iterations", True,
                                  "most attempts, each a removal + fine-tune + evaluation")
    view: Optional[str] = _option(None, "--view", True, "how block outputs become features")
    checkpoint_dir: object = _option(None, "--out", doc="where every attempt is checkpointed")
    example_inputs: object = _option(None, None, doc="for MACs and latency before and after")
    progress: bool = _option(True, "--no-progress", doc="progress bars")
    tolerance_mode: str = _option("auto", "--tolerance-mode", True,
                                  "absolute: metric >= before - tolerance; relative: metric >= before * "
                                  "(1 - tolerance) (perplexity: metric <= before * (1 + tolerance)); auto: "
                                  "absolute for a higher-is-better metric such as accuracy, relative for a "
                                  "lower-is-better one such as perplexity")
    cluster_method: str = _option("anchor", None, True, "anchor (MPruner) or adjacent clusters")
    analyze_kwargs: Optional[dict] = _option(None, None, doc="extra arguments of mpruner.analyze")
    seed: int = _option(0, "--seed", True, "attempt i's recovery fine-tuning starts from torch.manual_seed(seed + i)")
    verbose: bool = _option(True, None, doc="one line per stage and attempt")
    higher_is_better: bool = _option(True, "--metric", True, "False for perplexity or loss")
    select: str = _option("cluster", "--select", True, "which blocks go")
    n: Optional[int] = _option(None, "--n", True, "blocks to remove in all (token strategies)")
    target_layers: Optional[int] = _option(None, "--target-layers", doc="depth to reach instead of n")
    replace: Optional[str] = _option(None, "--replace", True,
                                     "'linear': each removed run replaced by a fitted linear map (decoder LMs)")
    replace_data: object = _option(None, None, doc="batches the linear maps are fitted on (default: calib_data)")

    def __post_init__(self):
        t = self.threshold
        if t != "auto" and (isinstance(t, bool) or not isinstance(t, (int, float)) or not 0 < t <= 1):
            raise ValueError(f"threshold must be in (0, 1] or 'auto', got {t!r}")
        if isinstance(self.tolerance, bool) or not isinstance(self.tolerance, (int, float)) or self.tolerance < 0:
            raise ValueError(f"tolerance must be a number >= 0, got {self.tolerance!r}")
        if not isinstance(self.higher_is_better, bool):
            raise TypeError(f"higher_is_better must be True or False, got {self.higher_is_better!r}")
        if self.tolerance_mode not in TOLERANCE_MODES:
            raise ValueError(f"tolerance_mode must be one of {TOLERANCE_MODES}, got {self.tolerance_mode!r}")
        if self.cluster_method not in CLUSTER_METHODS:
            raise ValueError(f"cluster_method must be one of {CLUSTER_METHODS}, got {self.cluster_method!r}")
        for name in ("max_granularity", "max_iterations"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
        if self.tolerance_mode == "auto":  # resolved now: checkpoints record what the run used
            self.tolerance_mode = "absolute" if self.higher_is_better else "relative"
        if self.replace not in REPLACEMENTS:
            raise ValueError(f"replace must be one of {REPLACEMENTS}, got {self.replace!r}")
        self.tolerance = float(self.tolerance)
        self.view = self._checked_view()

    def _checked_view(self) -> str:
        """Validates the selection arguments; returns the view to analyse with."""
        select, n, target = self.select, self.n, self.target_layers
        if select not in SELECTIONS:
            raise ValueError(f"select must be one of {SELECTIONS}, got {select!r}")
        if select == "cluster":
            if n is not None or target is not None:
                raise ValueError("n / target_layers apply to select='lowest-influence' or 'contiguous'; "
                                 "select='cluster' removes what the CKA clusters give")
            return "mean" if self.view is None else self.view
        if (n is None) == (target is None):
            raise ValueError(f"select={select!r} needs n (blocks to remove) or target_layers (depth to reach), "
                             "exactly one of them")
        for name, v in (("n", n), ("target_layers", target)):
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
        view = "tokens" if self.view is None else self.view
        if view not in ("tokens", "last_token"):
            raise ValueError(f"select={select!r} compares block inputs and outputs token by token: view must be "
                             f"'tokens' or 'last_token', got {view!r}")
        return view

    @classmethod
    def from_call(cls, args: tuple, kwargs: dict) -> "PruneOptions":
        """The options of ``MPruner(model, calib_data, evaluate, finetune, *args, **kwargs)``."""
        if len(args) > len(POSITIONAL):
            raise TypeError(f"MPruner takes at most {4 + len(POSITIONAL)} positional arguments (model, calib_data, "
                            f"evaluate, finetune, {', '.join(POSITIONAL)}); pass the others by keyword")
        given = dict(zip(POSITIONAL, args))
        twice = sorted(set(given) & set(kwargs))
        if twice:
            raise TypeError(f"MPruner got multiple values for {', '.join(twice)}")
        return cls(**given, **kwargs)

    def checkpointed(self, block_list: str, n: Optional[int]) -> dict:
        """What a checkpoint records and a resumed run must match (format of state.json version 1).

        ``block_list`` is the resolved block-list name and ``n`` the blocks to remove in all
        (``target_layers`` turned into a count); options left at the defaults that version 1
        did not record are left out, so older checkpoints keep resuming.
        """
        out = {"block_list": block_list}
        for f in fields(self):
            if f.metadata["checkpointed"]:
                out[f.name] = getattr(self, f.name)
        out["n"] = n
        if self.higher_is_better:
            del out["higher_is_better"]
        if self.replace is None:
            del out["replace"]
        if self.select == "cluster":
            del out["select"], out["n"]
        return out


def option(name: str):
    """The dataclass field of option ``name`` (its ``default`` and ``metadata``: flag, doc)."""
    return next(f for f in fields(PruneOptions) if f.name == name)


def flags() -> dict:
    """Option name (as checkpoints record it) -> the ``mpruner prune`` flag that sets it."""
    out = {"block_list": "--layers"}
    for f in fields(PruneOptions):
        out[f.name] = f.metadata["flag"] or f"({f.name})"
    return out


def signature(leading: inspect.Signature) -> inspect.Signature:
    """``MPruner.__init__``'s signature: ``leading`` parameters, then every option with its default."""
    params = list(leading.parameters.values())
    for f in fields(PruneOptions):
        kind = (inspect.Parameter.POSITIONAL_OR_KEYWORD if f.name in POSITIONAL
                else inspect.Parameter.KEYWORD_ONLY)
        params.append(inspect.Parameter(f.name, kind, default=f.default))
    return leading.replace(parameters=params)
