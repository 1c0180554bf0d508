"""Distributed analysis: 2 processes x 1 thread against 1 process x 1 thread, same batches.

    python benchmarks/bench_distributed.py [--samples 256] [--batch-size 16] [--repeats 3] [--out benchmarks/results]
    python benchmarks/bench_distributed.py --device cuda      # on a machine with >= 2 GPUs (NCCL)

Two worker processes (gloo on the CPU, NCCL on GPUs; launched here with torch.multiprocessing
and the same environment torchrun sets) load all-MiniLM-L6-v2 and the tokenized Rotten
Tomatoes batches once. Each repeat then times, interleaved so that machine noise hits both:
  single: rank 0 alone runs ``analyze(distributed=False)`` over all batches (rank 1 waits);
  sharded: both ranks run ``analyze(distributed=True)``, each on half of the batches.
The wall time of a run is rank 0's, from a barrier to the returned Analysis. The final
all-reduce is timed inside (its wait for the slower rank included), and once more alone
after a barrier (the communication itself). The two results are checked equal (1e-12).

On a shared machine the other processes' CPU use during each run is recorded (from
/proc/stat minus this benchmark's own CPU time): with the cores busy, two processes cannot
both run all the time and the wall-time speed-up shrinks. Rank 0's CPU seconds against the
single run's (``cpu_per_rank_ratio``) show the work each process is left with, which is
the wall-time ratio on cores nobody else uses. The goal (sharded <= 0.6 x single, wall
time) is reported, never asserted. Writes distributed_<device>.json.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

GOAL = 0.6
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.dirname(HERE), HERE]  # this checkout's mpruner, and bench_analysis beside this file


def _cpu_counters():
    """(all CPUs' busy jiffies, all jiffies) from /proc/stat."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    idle = v[3] + (v[4] if len(v) > 4 else 0)
    return sum(v) - idle, sum(v)


def _timed_reduce(times):
    """Wraps the analysis all-reduce to record its seconds (including the wait for the slower rank)."""
    from mpruner import distributed as ranks

    original = ranks._all_reduce

    def timed(shard, flat):
        t = time.perf_counter()
        out = original(shard, flat)
        times.append(time.perf_counter() - t)
        return out

    ranks._all_reduce = timed
    return original


def _worker(rank, world, port, args, out_path):
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    cuda = args.device == "cuda"
    if cuda:
        torch.cuda.set_device(rank)
    dist.init_process_group("nccl" if cuda else "gloo")
    from bench_analysis import load, machine_info

    from mpruner.analysis import analyze

    device = torch.device("cuda", rank) if cuda else torch.device("cpu")
    model, batches = load(args.samples, args.batch_size, args.max_length, device)
    sync = (lambda: torch.cuda.synchronize(device)) if cuda else (lambda: None)
    reduce_times = []
    _timed_reduce(reduce_times)

    def run(mode):
        dist.barrier()
        sync()
        c0, (busy0, all0), t0 = time.process_time(), _cpu_counters(), time.perf_counter()
        result = None
        if mode == "sharded":
            result = analyze(model, batches, progress=False, distributed=True)
        elif rank == 0:
            result = analyze(model, batches, progress=False, distributed=False)
        sync()
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        busy1, all1 = _cpu_counters()
        dist.barrier()  # rank 1 waits here during the single run
        mine = torch.tensor([cpu], dtype=torch.float64, device=device)
        dist.all_reduce(mine)  # this benchmark's CPU seconds, both ranks
        jiffy = os.sysconf("SC_CLK_TCK")
        busy_cpu_s = (busy1 - busy0) / jiffy
        others = max(0.0, busy_cpu_s - float(mine.item())) / wall  # cores' worth used by other processes
        return result, {"wall_s": wall, "cpu_s_rank0": cpu, "cpu_s_all_ranks": float(mine.item()),
                        "other_processes_cores": others, "machine_busy_cores": busy_cpu_s / wall}

    run("single"), run("sharded")  # warm-up (allocations, first-call costs)
    rows = {"single": [], "sharded": []}
    results = {}
    for _ in range(args.repeats):
        for mode in ("single", "sharded"):
            del reduce_times[:]
            results[mode], row = run(mode)
            if mode == "sharded":
                row["all_reduce_s"] = reduce_times[-1]
            rows[mode].append(row)
    # The all-reduce alone: the same (L+L^2+counts) float64 vector after a barrier.
    L = len(results["sharded"].layer_names) if rank == 0 else 0
    size = torch.tensor([L], device=device)
    dist.broadcast(size, 0)
    flat = torch.zeros(2 + 5 + int(size) ** 2 + int(size), dtype=torch.float64, device=device)
    alone = []
    for _ in range(20):
        dist.barrier()
        t = time.perf_counter()
        dist.all_reduce(flat)
        sync()
        alone.append(time.perf_counter() - t)
    if rank == 0:
        diff = float((results["single"].cka - results["sharded"].cka).abs().max())
        with open(out_path, "w") as f:
            json.dump({"rows": rows, "all_reduce_alone_s": statistics.median(alone), "max_abs_diff": diff,
                       "layers": L, "samples": results["single"].num_samples, "batches": len(batches),
                       "machine": machine_info(device)}, f)
    dist.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--samples", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=os.path.join(HERE, "results"))
    args = parser.parse_args(argv)
    if args.device == "cuda" and torch.cuda.device_count() < 2:
        raise SystemExit("--device cuda needs two GPUs (one per process)")
    os.makedirs(args.out, exist_ok=True)
    tmp = os.path.join(args.out, f".distributed_{args.device}.raw.json")
    load0 = os.getloadavg()
    mp.start_processes(_worker, args=(2, _free_port(), args, tmp), nprocs=2, join=True, start_method="spawn")
    with open(tmp) as f:
        raw = json.load(f)
    os.remove(tmp)
    med = {m: {k: statistics.median(r[k] for r in rows) for k in rows[0]} for m, rows in raw["rows"].items()}
    ratio = med["sharded"]["wall_s"] / med["single"]["wall_s"]
    share = med["sharded"]["all_reduce_s"] / med["sharded"]["wall_s"]
    summary = {
        "workload": {"model": "all-MiniLM-L6-v2", "data": "Rotten Tomatoes snippets", "view": "mean",
                     "samples": raw["samples"], "batches": raw["batches"], "batch_size": args.batch_size,
                     "max_length": args.max_length, "layers": raw["layers"], "threads_per_process": 1,
                     "repeats": args.repeats, "device": args.device},
        "single_s": med["single"]["wall_s"], "sharded_s": med["sharded"]["wall_s"], "ratio": ratio,
        "goal": GOAL, "goal_met": ratio <= GOAL,
        "cpu_ratio": med["sharded"]["cpu_s_all_ranks"] / med["single"]["cpu_s_all_ranks"],
        # Rank 0's CPU seconds (its share of the work) against the single run's: the speed-up the
        # sharding gives when each process has a core to itself, whatever the other processes do.
        "cpu_per_rank_ratio": med["sharded"]["cpu_s_rank0"] / med["single"]["cpu_s_rank0"],
        "all_reduce_s": med["sharded"]["all_reduce_s"], "all_reduce_share": share,
        "all_reduce_alone_s": raw["all_reduce_alone_s"],
        "other_processes_cores": {m: med[m]["other_processes_cores"] for m in med},
        "max_abs_diff_single_vs_sharded": raw["max_abs_diff"],
        "load_average_before": list(load0), "load_average_after": list(os.getloadavg()),
        "machine": raw["machine"], "repeats": raw["rows"],
    }
    print(f"all-MiniLM-L6-v2, {raw['samples']} snippets in {raw['batches']} batches, mean view, 1 thread per process")
    print(f"1 process: {summary['single_s']:.2f} s   2 processes: {summary['sharded_s']:.2f} s   "
          f"ratio {ratio:.2f} (goal <= {GOAL}: {'met' if ratio <= GOAL else 'missed'})")
    print(f"all-reduce: {summary['all_reduce_s'] * 1e3:.1f} ms in the run ({share:.1%}, the wait for the slower rank "
          f"included), {summary['all_reduce_alone_s'] * 1e3:.2f} ms alone")
    print(f"CPU seconds, 2 processes / 1: {summary['cpu_ratio']:.2f} in all, {summary['cpu_per_rank_ratio']:.2f} "
          f"per rank; other processes used "
          f"{summary['other_processes_cores']['single']:.2f} / {summary['other_processes_cores']['sharded']:.2f} "
          f"cores during the single / sharded runs (of {os.cpu_count()})")
    path = os.path.join(args.out, f"distributed_{args.device}.json")
    with open(path, "w") as f:
        json.dump(summary, f, indent=2)
    print("wrote", path)


if __name__ == "__main__":
    sys.exit(main())
