"""Clocks, memory meters and the hardware roofline."""
from __future__ import annotations

import gc
import os
import platform
import subprocess
import time
from typing import Dict, Optional

import torch


# ---------------------------------------------------------------- memory
def _status_kb(field: str, pid="self") -> Optional[int]:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def rss_bytes(pid="self") -> Optional[int]:
    kb = _status_kb("VmRSS", pid)
    return None if kb is None else kb * 1024


def reset_peak_rss() -> bool:
    """Resets the kernel's high-water mark of this process (Linux clear_refs 5)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class MemoryMeter:
    """Peak memory of a block above what was in use when it started: resident set size
    of the process on the CPU (what torch, NumPy and every library really touch), and
    torch.cuda.max_memory_allocated on a GPU."""

    def __init__(self, device: torch.device):
        self.device = device
        self.cpu_peak = self.cuda_peak = None
        self.exact = True

    def __enter__(self):
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._cuda0 = torch.cuda.memory_allocated(self.device)
        self.exact = reset_peak_rss()
        self._rss0 = rss_bytes()
        return self

    def __exit__(self, *exc):
        hwm = _status_kb("VmHWM")
        if hwm is not None and self._rss0 is not None:
            self.cpu_peak = max(0, hwm * 1024 - self._rss0)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.cuda_peak = torch.cuda.max_memory_allocated(self.device) - self._cuda0
        return False

    @property
    def peak(self) -> Optional[int]:
        return self.cuda_peak if self.device.type == "cuda" else self.cpu_peak


# ---------------------------------------------------------------- time
def sync(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device, source=None):
    """Runs fn(); returns (its result, wall seconds minus activation-generation seconds)."""
    sync(device)
    g0 = source.gen_time if source is not None else 0.0
    t = time.perf_counter()
    out = fn()
    sync(device)
    wall = time.perf_counter() - t
    return out, wall - ((source.gen_time - g0) if source is not None else 0.0)


def _cuda_time(fn, iters: int) -> float:
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    fn()
    torch.cuda.synchronize()
    start.record()
    for _ in range(iters):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / 1e3 / iters


def _cpu_time(fn, iters: int) -> float:
    fn()
    best = float("inf")
    for _ in range(iters):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


# ---------------------------------------------------------------- roofline
def roofline(device: torch.device, shapes=((256, 768),), big: int = 4096) -> Dict:
    """Measured float32 GEMM rate (X X^T at each workload's Gram shape and one big square
    GEMM, best of several) and memory bandwidth (a large copy, read + write)."""
    cuda = device.type == "cuda"
    timer = (lambda f, it: _cuda_time(f, it)) if cuda else (lambda f, it: _cpu_time(f, it))
    prev = torch.backends.cuda.matmul.allow_tf32 if cuda else None
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = False   # the engine's default precision="highest"
    out = {"device": str(device), "gemm": {}}
    try:
        g = torch.Generator().manual_seed(0)
        a = torch.randn(big, big, generator=g).to(device)
        b = torch.randn(big, big, generator=g).to(device)
        t = timer(lambda: torch.mm(a, b), 10 if cuda else 3)
        out["gemm_square_flops"] = 2.0 * big ** 3 / t
        a = b = None  # free them before the bandwidth test
        for n, d in shapes:
            x = torch.randn(n, d, generator=g).to(device)
            t = timer(lambda: torch.mm(x, x.T), 20 if cuda else 5)
            out["gemm"][f"{n}x{d}"] = 2.0 * n * n * d / t
        nbytes = (1 << 30) if cuda else (256 << 20)
        src = torch.empty(nbytes // 4, device=device).uniform_()
        dst = torch.empty_like(src)
        t = timer(lambda: dst.copy_(src), 20 if cuda else 5)
        out["bandwidth_bytes_per_s"] = 2.0 * nbytes / t
    finally:
        if cuda:
            torch.backends.cuda.matmul.allow_tf32 = prev
    out["gemm_peak_flops"] = max([out["gemm_square_flops"], *out["gemm"].values()])
    return out


# ---------------------------------------------------------------- machine
def machine_info(device: torch.device) -> Dict:
    import numpy

    import mpruner

    info = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
            "numpy": numpy.__version__, "mpruner": mpruner.__version__, "mpruner_build": mpruner.build_info(),
            "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
            "platform": platform.platform(), "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    try:
        with open("/proc/cpuinfo") as f:
            info["cpu"] = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
    except (OSError, StopIteration):
        info["cpu"] = platform.processor()
    try:
        with open("/proc/meminfo") as f:
            info["ram_bytes"] = int(f.readline().split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        info.update(gpu=p.name, gpu_memory_bytes=p.total_memory, gpu_capability=f"{p.major}.{p.minor}",
                    cudnn=torch.backends.cudnn.version())
        try:
            info["driver"] = subprocess.check_output(
                ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"], text=True).strip()
        except (OSError, subprocess.CalledProcessError):
            pass
    info["git_commit"], info["git_dirty"] = git_commit()
    try:
        so = mpruner._C.__file__
        info["mpruner_extension"] = {"file": os.path.basename(so),
                                     "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(os.path.getmtime(so)))}
    except (AttributeError, OSError):
        pass
    return info


def git_commit():
    """(HEAD, files of the package and the engine with uncommitted changes, or [])."""
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        commit = subprocess.check_output(["git", "rev-parse", "HEAD"], cwd=here, text=True,
                                         stderr=subprocess.DEVNULL).strip()
        status = subprocess.check_output(["git", "status", "--porcelain", "--untracked-files=no", "--",
                                          "mpruner", "csrc", "setup.py", "CMakeLists.txt"],
                                         cwd=os.path.join(here, "..", ".."), text=True, stderr=subprocess.DEVNULL)
        return commit, [l[3:] for l in status.splitlines() if l.strip()]
    except (OSError, subprocess.CalledProcessError):
        return None, None


def _cpu_times():
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    idle = v[3] + (v[4] if len(v) > 4 else 0)
    return sum(v), idle


def cpu_busy(interval: float = 1.0) -> Optional[float]:
    """Fraction of all CPUs busy over ``interval`` seconds (other people's work included)."""
    try:
        t0, i0 = _cpu_times()
        time.sleep(interval)
        t1, i1 = _cpu_times()
    except (OSError, ValueError, IndexError):
        return None
    return 1.0 - (i1 - i0) / max(1, t1 - t0)


def wait_quiet(max_wait: float, threshold: float = 0.25) -> Optional[float]:
    """Waits (up to max_wait s) until the CPUs are mostly idle; returns the last busy fraction.
    Timings on a shared machine are only comparable when nobody else is computing: with
    the cores oversubscribed, every OpenMP parallel region waits for a descheduled thread."""
    t = time.perf_counter()
    busy = cpu_busy(0.5)
    while busy is not None and busy > threshold and time.perf_counter() - t < max_wait:
        busy = cpu_busy(2.0)
    return busy


def load_average():
    try:
        return list(os.getloadavg())
    except OSError:
        return None
