"""The recipes ``mpruner demo --scenario lm`` compares, each removing ``n`` blocks of SmolLM2-135M.

- ``mpruner``: one :class:`mpruner.MPruner` loop: the blocks chosen by ``select="auto"``, each
  removed run replaced by a fitted linear map (``replace="linear"``), healing by distillation
  from the original model within a token budget, accepted or rolled back against the original
  perplexity;
- ``shortgpt`` (Men et al. 2024): the blocks of lowest Block Influence, no healing;
- ``gromov`` (Gromov et al. 2024): the contiguous run of smallest angular distance between its
  input and output, healed with LoRA on the next-token loss, the same token budget;
- ``sleb`` (Song et al. 2024): greedy removal by calibration loss, no healing (the selection of
  the ``mpruner`` recipe, without replacement or healing).

Every recipe sees the same calibration windows, healing windows and held-out text.
"""
from __future__ import annotations

import time
from typing import Callable, Dict, List

import torch.nn as nn

from ..analysis import analyze
from ..lm import choose_blocks
from ..prune import MPruner, strategies
from ..surgery import removable_layers, remove_layers
from ..training import Finetuner

RECIPES = ("mpruner", "shortgpt", "gromov", "sleb")
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class Recipes:
    """Runs each recipe on ``base``; ``ratio(model)`` is its held-out perplexity over the original's."""

    def __init__(self, base: nn.Module, cfg, calib: List, fit: List, heal: List, ratio: Callable,
                 out: str, progress: bool, resume: bool = False):
        self.resume = resume
        self.base, self.cfg, self.calib, self.fit, self.heal = base, cfg, calib, fit, heal
        self.ratio, self.out, self.progress = ratio, out, progress
        self.greedy: Dict[int, List[int]] = {}   # n -> the blocks the mpruner recipe's selection chose

    def _healer(self, **options) -> Finetuner:
        cfg = self.cfg
        return Finetuner(self.heal, epochs=1000, lr=options.pop("lr", cfg.heal_lr), progress=self.progress,
                         max_tokens=cfg.heal_tokens, eval_every=cfg.eval_every, eval_fn=self.ratio, **options)

    def mpruner(self, n: int, tolerance: float) -> Dict:
        cfg = self.cfg
        heal = self._healer(train=cfg.heal_train, distill=dict(teacher=self.base, temperature=2.0, alpha=1.0))
        start = {}

        def finetune(model):  # the replaced model's perplexity first: where the healing curve starts
            start["ratio"] = self.ratio(model)
            heal(model)

        t = time.perf_counter()
        pruner = MPruner(self.base, self.calib, self.ratio, finetune=finetune, select="auto", n=n,
                         replace="linear", replace_data=self.fit, higher_is_better=False, tolerance=tolerance,
                         tolerance_mode="relative", max_iterations=1, progress=self.progress,
                         checkpoint_dir=f"{self.out}/n{n}-checkpoint")
        result = pruner.run(resume=self.resume)
        attempt = result.history[-1] if result.history else None
        removed = attempt.removed if attempt is not None else []
        self.greedy[n] = sorted(removed)
        self.accepted_model = result.model if result.layers_after < result.layers_before else None
        curve = ([{"tokens": 0, "metric": start["ratio"]}] if "ratio" in start else []) + list(heal.curve)
        return {"recipe": "mpruner", "n": n, "removed": sorted(removed), "ratio_unhealed": start.get("ratio"),
                "ratio": attempt.metric if attempt is not None else None,
                "accepted": bool(attempt is not None and attempt.accepted), "tolerance": tolerance,
                "heal_tokens": heal.curve[-1]["tokens"] if heal.curve else 0, "curve": curve,
                "healing": f"distillation, train={cfg.heal_train}", "seconds": time.perf_counter() - t,
                "seconds_by_stage": dict(result.seconds)}

    def shortgpt(self, n: int) -> Dict:
        t = time.perf_counter()
        removed = choose_blocks(self.base, self.calib, n, method="influence", protect=None,
                                progress=self.progress)
        return self._unhealed("shortgpt", n, removed, t)

    def sleb(self, n: int) -> Dict:
        t = time.perf_counter()
        removed = self.greedy.get(n) or choose_blocks(self.base, self.calib, n, method="greedy",
                                                      progress=self.progress)
        row = self._unhealed("sleb", n, removed, t)
        row["note"] = "the greedy choice of the mpruner recipe" if n in self.greedy else ""
        return row

    def _unhealed(self, name: str, n: int, removed: List[int], t: float) -> Dict:
        ratio = self.ratio(remove_layers(self.base, {"model.layers": list(removed)}))
        return {"recipe": name, "n": n, "removed": sorted(removed), "ratio": ratio, "heal_tokens": 0, "curve": [],
                "healing": "none", "seconds": time.perf_counter() - t}

    def gromov(self, n: int) -> Dict:
        cfg = self.cfg
        t = time.perf_counter()
        ang = analyze(self.base, self.calib, metric="angular", progress=self.progress)
        candidates = set(removable_layers(self.base).get("model.layers", []))
        start, _ = strategies.best_run(ang.run_distance(n), n, candidates)
        removed = list(range(start, start + n))
        pruned = remove_layers(self.base, {"model.layers": removed})
        unhealed = self.ratio(pruned)
        heal = self._healer(lr=cfg.lora_lr, lora=dict(r=cfg.lora_r, alpha=2 * cfg.lora_r, target_modules=LORA_TARGETS))
        heal(pruned)
        return {"recipe": "gromov", "n": n, "removed": removed, "ratio_unhealed": unhealed, "ratio": self.ratio(pruned),
                "heal_tokens": heal.curve[-1]["tokens"] if heal.curve else 0,
                "curve": [{"tokens": 0, "metric": unhealed}] + list(heal.curve),
                "healing": f"LoRA r={cfg.lora_r}, next-token loss", "seconds": time.perf_counter() - t}
