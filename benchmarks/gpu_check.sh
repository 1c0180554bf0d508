#!/usr/bin/env bash
# One call on a GPU machine (H100/H200: torch with CUDA and nvcc, no network needed):
# build for sm_90, run the CUDA tests, time the engine in both precision modes and the
# suite's GPU workload against the peers. Everything printed is also written under the
# results folder, with a JSON record of the device, torch/CUDA versions and commit.
#
#   benchmarks/gpu_check.sh benchmarks/results/gpu-h200     # then commit that folder
#
# Environment: PYTHON (default python3), CUDA_HOME (default: torch's guess), MAX_JOBS,
# GPU_CHECK_BUDGET_S (default 480: the steps get fixed shares of it).
set -uo pipefail
OUT="${1:?usage: benchmarks/gpu_check.sh RESULTS_DIR}"
cd "$(dirname "$0")/.."
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
PY="${PYTHON:-python3}"
BUDGET="${GPU_CHECK_BUDGET_S:-480}"
LOG="$OUT/gpu_check.log"
: >"$LOG"
start=$SECONDS
status=0

say() { echo "$@" | tee -a "$LOG"; }
# step NAME SHARE CMD...: runs CMD with a time limit of SHARE percent of the budget,
# its output tee'd to the log and to OUT/NAME.log; a failure is recorded, not fatal.
step() {
  local name="$1" share="$2"
  shift 2
  local limit=$((BUDGET * share / 100))
  say "=== $name (limit ${limit}s, at $((SECONDS - start))s)"
  timeout --signal=INT --kill-after=20 "$limit" "$@" 2>&1 | tee "$OUT/$name.log" >>"$LOG"
  local rc=${PIPESTATUS[0]}
  tail -5 "$OUT/$name.log"
  say "=== $name: exit $rc after $((SECONDS - start))s"
  [ "$rc" -eq 0 ] || status=1
  echo "$name $rc" >>"$OUT/steps.txt"
}
: >"$OUT/steps.txt"

"$PY" - "$OUT/machine.json" <<'EOF' 2>&1 | tee -a "$LOG"
import json, platform, subprocess, sys, time
import torch
info = {"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "python": platform.python_version(),
        "torch": torch.__version__, "torch_cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available()}
try:
    info["commit"] = subprocess.check_output(["git", "rev-parse", "HEAD"], text=True).strip()
    info["dirty"] = bool(subprocess.check_output(["git", "status", "--porcelain", "--untracked-files=no"], text=True))
except Exception:
    info["commit"] = None
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    info.update(device_name=p.name, capability=f"{p.major}.{p.minor}", sm_count=p.multi_processor_count,
                memory_gib=round(p.total_memory / 2**30, 1))
try:
    info["nvcc"] = subprocess.check_output(["nvcc", "--version"], text=True).strip().splitlines()[-1]
except Exception:
    info["nvcc"] = None
json.dump(info, open(sys.argv[1], "w"), indent=2)
print(json.dumps(info, indent=2))
if not torch.cuda.is_available():
    sys.exit("gpu_check: torch sees no CUDA device")
EOF
[ "${PIPESTATUS[0]}" -eq 0 ] || { say "no GPU: stopping"; exit 1; }

# 1. Build for sm_90 only (about a minute on a many-core machine).
export TORCH_CUDA_ARCH_LIST=9.0 FORCE_CUDA=1 MAX_JOBS="${MAX_JOBS:-$(nproc)}"
rm -rf build mpruner/_C*.so
step build 30 "$PY" setup.py build_ext --inplace
"$PY" -c "import mpruner; assert mpruner.cuda_built(); print(mpruner.build_info())" 2>&1 | tee -a "$LOG" ||
  { say "the CUDA build did not load: stopping"; exit 1; }

# 2. The CUDA tests: every cuda-marked test and the device-parametrised suite on CUDA
#    (opcheck included), plus the device-path and tiling tests.
step tests 20 "$PY" -m pytest -q -ra -p no:cacheprovider tests -k "cuda or device_path" --junitxml="$OUT/tests.xml"

# 3. Engine against the bare cuBLAS Grams, IEEE fp32 and TF32 (writes engine_cuda.json).
step bench_engine 25 "$PY" benchmarks/bench_engine.py --device cuda --precision both --repeats 5 --out "$OUT"

# 4. The suite's GPU workload with the installed peers (no network: nothing is installed).
step bench_suite 20 "$PY" -m mpruner bench --device cuda --workload gpu --peers installed --repeats 3 \
  --processes 1 --budget 10 --timeout 120 --out "$OUT/suite"

"$PY" - "$OUT" <<'EOF' 2>&1 | tee -a "$LOG"
import json, os, sys
out = sys.argv[1]
info = json.load(open(os.path.join(out, "machine.json")))
info["steps"] = dict(line.split() for line in open(os.path.join(out, "steps.txt")) if line.strip())
path = os.path.join(out, "engine_cuda.json")
if os.path.exists(path):
    rows = json.load(open(path))["results"]
    info["engine_vs_cublas"] = {f"{r['workload']}-{r['precision']}": round(r["ratio"], 3) for r in rows}
json.dump(info, open(os.path.join(out, "gpu_check.json"), "w"), indent=2)
print(json.dumps(info, indent=2))
EOF
say "gpu_check: done in $((SECONDS - start))s, status $status; results in $OUT"
exit $status
