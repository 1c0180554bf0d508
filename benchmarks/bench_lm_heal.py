"""Healing after depth pruning of SmolLM2-135M: mpruner's recipe beside the published ones.

    python benchmarks/bench_lm_heal.py [--n 8 4] [--recipes mpruner shortgpt gromov sleb]
                                       [--heal-tokens 150k] [--quick]

Runs ``mpruner demo --scenario lm`` (``mpruner.demos.run_lm_demo``) with the chosen block counts,
recipes and healing budget, then copies its summary to ``benchmarks/results/lm_heal.json`` (with
the machine, the commit and the load average before and after) and its plot of held-out
perplexity against healing tokens to ``lm_heal.png``. Goals are reported, never asserted:

- 8 of 30 blocks removed: healed perplexity <= 1.3x the original within 30 minutes, all included;
- 4 of 30 removed: <= 1.10x.

The full demo (both n, all four recipes, 150k tokens each) takes about two hours on 2 CPU cores;
``--n`` and ``--recipes`` run part of it (the rows that ran are the ones in the JSON). Measure on
an idle machine: the load average is recorded beside the figures.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_analysis import machine_info  # noqa: E402

from mpruner.demos.language_model import FULL, QUICK, run_lm_demo  # noqa: E402
from mpruner.demos.lm_recipes import RECIPES  # noqa: E402
from mpruner.training.budget import parse_tokens  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, nargs="+", default=[n for n, _ in FULL.goals],
                   help="block counts to remove, each with its goal (default: %(default)s)")
    p.add_argument("--recipes", nargs="+", choices=RECIPES, default=list(RECIPES),
                   help="recipes to run (default: all)")
    p.add_argument("--heal-tokens", default=str(FULL.heal_tokens), help="healing budget per recipe (default: %(default)s)")
    p.add_argument("--quick", action="store_true", help="the demo's smoke configuration; writes nothing to results/")
    p.add_argument("--out", default=None, help="the demo's folder (default: a temporary one)")
    args = p.parse_args(argv)
    goals = dict(FULL.goals)
    unknown = [n for n in args.n if n not in goals]
    if unknown and not args.quick:
        p.error(f"--n {unknown}: goals are known for {sorted(goals)} only")
    base = QUICK if args.quick else FULL
    cfg = base if args.quick else dataclasses.replace(
        base, goals=tuple((n, goals[n]) for n in args.n), recipes=tuple(args.recipes),
        heal_tokens=parse_tokens(args.heal_tokens))
    if args.quick:
        cfg = dataclasses.replace(cfg, recipes=tuple(args.recipes))
    before = os.getloadavg()
    out = args.out or tempfile.mkdtemp(prefix="mpruner-lm-heal-")
    summary = run_lm_demo(out, quick=args.quick, config=cfg, progress=True)
    if args.quick:
        print(f"--quick: results left in {out}")
        return 0
    info = machine_info("cpu")
    info["load_average_before"] = before
    record = {**summary, "machine": {**summary["machine"], **info}}
    os.makedirs(RESULTS, exist_ok=True)
    with open(os.path.join(RESULTS, "lm_heal.json"), "w") as f:
        json.dump(record, f, indent=1)
    if os.path.isfile(os.path.join(out, "lm_heal.png")):
        shutil.copyfile(os.path.join(out, "lm_heal.png"), os.path.join(RESULTS, "lm_heal.png"))
    print(f"wrote {os.path.join(RESULTS, 'lm_heal.json')} and lm_heal.png (the demo's folder: {out})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
