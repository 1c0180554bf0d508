"""Long fuzzing run of every file reader (tests/helpers/fuzz_targets.py), with atheris (libFuzzer).

    python tools/fuzz_readers.py --seconds 120 [--targets "Analysis.load,read_texts .csv"]

Each target runs in its own process for ``--seconds`` under libFuzzer's limits: a case
taking over 10 s is a hang, over 2 GiB of memory a huge allocation; any exception other
than the reader's documented error naming the file is a finding (its input is kept as
``crash-*`` under benchmarks/results/reliability/fuzz-crashes/). Without atheris the same
mutations are driven by seeded random bytes. Results: benchmarks/results/reliability/fuzz_long.json.
"""
from __future__ import annotations

import argparse
import json
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
OUT = ROOT / "benchmarks" / "results" / "reliability"


def worker(name: str, seconds: int, engine: str) -> None:
    from tests.helpers import fuzz_targets

    target = fuzz_targets.TARGETS[name]
    base = Path(tempfile.mkdtemp(prefix="mpruner-fuzz-"))
    work, backup = base / "work", base / "backup"
    path, seed = fuzz_targets.prepared(target, work)
    shutil.copytree(work, backup)
    counts = {"loaded": 0, "refused": 0}

    def one(data: bytes):
        fuzz_targets.restore(work, backup)
        counts[fuzz_targets.run_one(target, path, seed, data)] += 1

    if engine == "atheris":
        import atheris

        crashes = OUT / "fuzz-crashes"
        crashes.mkdir(parents=True, exist_ok=True)
        atheris.Setup([sys.argv[0], f"-max_total_time={seconds}", "-timeout=10", "-rss_limit_mb=2048",
                       "-print_final_stats=1", f"-artifact_prefix={crashes}/{re.sub(r'[^A-Za-z0-9]+', '_', name)}-"],
                      one)
        atheris.Fuzz()
    else:
        rng, end = random.Random(0), time.time() + seconds
        while time.time() < end:
            one(bytes(rng.randrange(256) for _ in range(rng.randrange(1, 97))))
    print(json.dumps({"counts": counts}), flush=True)


def main():
    from tests.helpers import fuzz_targets

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seconds", type=int, default=120, help="per target (%(default)s)")
    p.add_argument("--targets", help="comma-separated target names (default: all)")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--engine", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    try:
        import atheris  # noqa: F401
        engine = "atheris"
    except ImportError:
        engine = "random"
    engine = args.engine or engine
    if args.worker:
        return worker(args.worker, args.seconds, engine)
    names = [n.strip() for n in args.targets.split(",")] if args.targets else list(fuzz_targets.TARGETS)
    rows = []
    for name in names:
        t = time.time()
        proc = subprocess.run([sys.executable, __file__, "--worker", name, "--seconds", str(args.seconds),
                               "--engine", engine], capture_output=True, text=True, timeout=args.seconds * 3 + 300)
        out = proc.stdout + proc.stderr
        execs = re.findall(r"stat::number_of_executed_units:\s*(\d+)", out)
        found = re.findall(r"(fuzz_targets\.Finding: .*|Uncaught Python exception.*|ERROR: libFuzzer: .*)", out)
        counts = re.findall(r'\{"counts": .*\}', out)
        row = {"target": name, "engine": engine, "seconds": round(time.time() - t, 1),
               "executions": int(execs[-1]) if execs else (sum(json.loads(counts[-1])["counts"].values())
                                                           if counts else None),
               "outcomes": json.loads(counts[-1])["counts"] if counts else None,
               "returncode": proc.returncode, "findings": found[:5]}
        rows.append(row)
        print(f"{name:<28} {row['executions']} executions, rc {proc.returncode}, "
              f"{'no findings' if not found else found[0]}", flush=True)
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / "fuzz_long.json"
    if args.targets and path.exists():  # a rerun of some targets (e.g. after a fix) replaces their rows
        kept = [r for r in json.loads(path.read_text())["rows"] if r["target"] not in names]
        order = list(fuzz_targets.TARGETS)
        rows = sorted(kept + rows, key=lambda r: order.index(r["target"]) if r["target"] in order else 99)
    with open(path, "w") as f:
        json.dump({"seconds_per_target": args.seconds, "engine": engine, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
