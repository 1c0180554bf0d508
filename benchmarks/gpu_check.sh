#!/usr/bin/env bash
# The whole GPU check in one call on an H100/H200 machine (torch with CUDA and nvcc, no network):
# build for sm_90, load, run the CUDA tests, time the engine's kernel variants against each other
# and against the bare cuBLAS Grams, and the suite's GPU workload against the installed peers.
#
#   benchmarks/gpu_check.sh RESULTS_DIR [COMMIT]
#
# RESULTS_DIR may lie outside the repository (it is created). COMMIT names the checkout when it
# has no .git (a copied tree); with .git, `git rev-parse HEAD` is used. Everything printed goes to
# RESULTS_DIR/gpu_check.log and RESULTS_DIR/<step>.log; RESULTS_DIR/gpu_check.json is written on
# every exit (trap): each step's status, exit code and seconds, the first failing step, the device,
# torch/CUDA versions and the commit. All step limits, their kill grace and the summary fit in
# GPU_CHECK_TOTAL_S (default 400 s): a step never starts with less time than it needs to report.
#
# Environment: PYTHON (default python3), MAX_JOBS (default: the cores), GPU_CHECK_TOTAL_S,
# GPU_CHECK_COMMIT (same as the COMMIT argument).
set -uo pipefail
OUT="${1:?usage: benchmarks/gpu_check.sh RESULTS_DIR [COMMIT]}"
COMMIT_GIVEN="${2:-${GPU_CHECK_COMMIT:-}}"
REPO="$(cd "$(dirname "$0")/.." && pwd)"
mkdir -p "$OUT" || { echo "gpu_check: cannot create $OUT" >&2; exit 2; }
OUT="$(cd "$OUT" && pwd)"
cd "$REPO"
PY="${PYTHON:-python3}"
TOTAL="${GPU_CHECK_TOTAL_S:-400}"
GRACE=5     # seconds between the INT at a step's limit and the KILL
RESERVE=10  # kept for the summary
LOG="$OUT/gpu_check.log"
STEPS_TSV="$OUT/steps.tsv"
: >"$LOG"
: >"$STEPS_TSV"
start=$SECONDS
failed_step=""
ALL_STEPS="device build load tests bench_variants bench_engine bench_suite"

say() { echo "$@" | tee -a "$LOG"; }

if [ -d "$REPO/.git" ] || git -C "$REPO" rev-parse --git-dir >/dev/null 2>&1; then
  COMMIT="$(git -C "$REPO" rev-parse HEAD 2>/dev/null || true)"
  COMMIT_SOURCE=git
  DIRTY="$(git -C "$REPO" status --porcelain --untracked-files=no 2>/dev/null | head -1)"
else
  COMMIT="$COMMIT_GIVEN"
  COMMIT_SOURCE=$([ -n "$COMMIT" ] && echo argument || echo none)
  DIRTY=""
  [ -n "$COMMIT" ] || say "gpu_check: no .git here and no COMMIT argument: the results name no commit"
fi

# The summary, on every exit: python without torch (torch may be what failed), else plain bash.
finish() {
  local rc=$?
  trap - EXIT INT TERM HUP
  [ -n "$failed_step" ] || [ "$rc" -eq 0 ] || failed_step="script"
  ALL_STEPS="$ALL_STEPS" COMMIT="$COMMIT" COMMIT_SOURCE="$COMMIT_SOURCE" DIRTY="$DIRTY" FAILED="$failed_step" \
    ELAPSED="$((SECONDS - start))" TOTAL="$TOTAL" "$PY" - "$OUT" <<'EOF' 2>>"$LOG" || finish_plain
import json, os, sys
out = sys.argv[1]
env = os.environ
steps = {}
for line in open(os.path.join(out, "steps.tsv")):
    name, status, rc, secs, limit = line.rstrip("\n").split("\t")
    steps[name] = {"status": status, "exit_code": None if rc == "" else int(rc), "seconds": int(secs),
                   "limit_s": int(limit)}
for name in env["ALL_STEPS"].split():  # steps an interruption or an early stop left out
    steps.setdefault(name, {"status": "not run", "exit_code": None, "seconds": 0, "limit_s": 0})
steps = {name: steps[name] for name in env["ALL_STEPS"].split() + [n for n in steps if n not in env["ALL_STEPS"].split()]}
info = {"status": "failed" if env["FAILED"] else "passed", "failed_step": env["FAILED"] or None,
        "steps": steps, "seconds": int(env["ELAPSED"]), "total_limit_s": int(env["TOTAL"]),
        "commit": env["COMMIT"] or None, "commit_source": env["COMMIT_SOURCE"], "dirty": bool(env["DIRTY"])}
machine = os.path.join(out, "machine.json")
if os.path.exists(machine):
    info.update(json.load(open(machine)))
else:
    info.update(device=None, torch=None, torch_cuda=None)
for name, key in (("engine_cuda.json", "engine_vs_cublas"), ("cuda_variants.json", "variants")):
    path = os.path.join(out, name)
    if os.path.exists(path):
        try:
            data = json.load(open(path))
            info[key] = {r["name"]: r.get("ratio") for r in data.get("rows", [])} if key == "variants" else \
                {f"{r['workload']}-{r['precision']}": round(r["ratio"], 3) for r in data["results"]}
        except Exception as exc:  # a half-written file must not cost the summary
            info[key] = f"unreadable: {exc}"
json.dump(info, open(os.path.join(out, "gpu_check.json"), "w"), indent=2)
print(json.dumps({k: info[k] for k in ("status", "failed_step", "seconds", "commit")}))
EOF
  say "gpu_check: ${failed_step:+failed at $failed_step, }done in $((SECONDS - start))s; results in $OUT"
  [ -z "$failed_step" ] || exit 1
  exit "$rc"
}

finish_plain() {
  {
    printf '{\n  "status": "%s",\n  "failed_step": %s,\n' "$([ -n "$failed_step" ] && echo failed || echo passed)" \
      "$([ -n "$failed_step" ] && printf '"%s"' "$failed_step" || echo null)"
    printf '  "commit": %s,\n  "commit_source": "%s",\n  "summary": "written without python",\n  "steps": {' \
      "$([ -n "$COMMIT" ] && printf '"%s"' "$COMMIT" || echo null)" "$COMMIT_SOURCE"
    local sep=""
    while IFS=$'\t' read -r name status rc secs limit; do
      printf '%s\n    "%s": {"status": "%s", "exit_code": %s, "seconds": %s, "limit_s": %s}' "$sep" "$name" \
        "$status" "${rc:-null}" "$secs" "$limit"
      sep=","
    done <"$STEPS_TSV"
    printf '\n  }\n}\n'
  } >"$OUT/gpu_check.json"
}

trap finish EXIT
trap 'say "gpu_check: interrupted"; failed_step="${failed_step:-interrupted}"; exit 130' INT TERM HUP

record() { printf '%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" "$5" >>"$STEPS_TSV"; }

# step NAME LIMIT CMD...: CMD with at most LIMIT seconds (less when the total would not allow
# it), output to OUT/NAME.log and the log; the status is recorded, the first failure named.
step() {
  local name="$1" want="$2"
  shift 2
  local left=$((TOTAL - RESERVE - GRACE - (SECONDS - start)))
  local limit=$((want < left ? want : left))
  if [ "$limit" -lt 5 ]; then
    say "=== $name: not started, ${left}s left of ${TOTAL}s"
    record "$name" "no time" "" 0 0
    failed_step="${failed_step:-$name}"
    return 1
  fi
  say "=== $name (limit ${limit}s, at $((SECONDS - start))s)"
  local t0=$SECONDS
  timeout --signal=INT --kill-after="$GRACE" "$limit" "$@" 2>&1 | tee "$OUT/$name.log" >>"$LOG"
  local rc=${PIPESTATUS[0]}
  local status=passed
  [ "$rc" -eq 0 ] || status=failed
  [ "$rc" -ne 124 ] && [ "$rc" -ne 137 ] || status=timeout
  tail -5 "$OUT/$name.log"
  say "=== $name: $status (exit $rc) after $((SECONDS - t0))s"
  record "$name" "$status" "$rc" "$((SECONDS - t0))" "$limit"
  [ "$status" = passed ] || { failed_step="${failed_step:-$name}"; return 1; }
}

skip_rest() {
  for name in "$@"; do record "$name" "not run" "" 0 0; done
  exit 1
}

# 1. The machine: versions and device to machine.json; no CUDA device ends the check here.
step device 20 "$PY" - "$OUT/machine.json" <<'EOF' || skip_rest build load tests bench_variants bench_engine bench_suite
import json, platform, subprocess, sys, time
info = {"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "python": platform.python_version(),
        "torch": None, "torch_cuda": None, "device": None}
try:
    info["nvcc"] = subprocess.check_output(["nvcc", "--version"], text=True).strip().splitlines()[-1]
except Exception:
    info["nvcc"] = None
try:
    import torch
    info.update(torch=torch.__version__, torch_cuda=torch.version.cuda, cuda_available=torch.cuda.is_available())
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        info["device"] = {"name": p.name, "capability": f"{p.major}.{p.minor}", "sm_count": p.multi_processor_count,
                          "memory_gib": round(p.total_memory / 2**30, 1),
                          "shared_memory_per_block_optin": getattr(p, "shared_memory_per_block_optin", None)}
finally:
    json.dump(info, open(sys.argv[1], "w"), indent=2)
print(json.dumps(info, indent=2))
if info["device"] is None:
    sys.exit("gpu_check: torch sees no CUDA device" if info["torch"] else "gpu_check: torch does not import")
EOF

# 2. Build for sm_90 only; setup.py finds the cuBLAS/cuSPARSE headers of the pip wheels itself.
export TORCH_CUDA_ARCH_LIST=9.0 FORCE_CUDA=1 MAX_JOBS="${MAX_JOBS:-$(nproc)}"
rm -rf build mpruner/_C*.so
step build 140 "$PY" setup.py build_ext --inplace || skip_rest load tests bench_variants bench_engine bench_suite
step load 15 "$PY" -c "import mpruner; assert mpruner.cuda_built(), 'no CUDA kernels'; print(mpruner.build_info())" ||
  skip_rest tests bench_variants bench_engine bench_suite

# 3. The CUDA tests: every cuda-marked or device-parametrised test on CUDA (opcheck included),
#    the device-path tests, the kernel variants against each other.
step tests 60 "$PY" -m pytest -q -ra -p no:cacheprovider tests -k "cuda or device_path" --junitxml="$OUT/tests.xml"

# 4. The variants that one GPU run decides (issue: launch-bound update, shared-load-bound HSIC
#    reduction): old vs restructured reduction kernel, folded epilogue, CUDA graph; both precisions.
step bench_variants 40 "$PY" benchmarks/bench_cuda_variants.py --repeats 5 --out "$OUT"

# 5. The engine against the bare cuBLAS Grams, IEEE fp32 and TF32 (engine_cuda.json).
step bench_engine 35 "$PY" benchmarks/bench_engine.py --device cuda --workloads gpu --hooks --precision both \
  --repeats 5 --out "$OUT"

# 6. The suite's GPU workload with the installed peers (nothing is installed: no network).
step bench_suite 35 "$PY" -m mpruner bench --device cuda --workload gpu --peers installed --repeats 3 \
  --processes 1 --budget 4 --timeout 30 --no-profile --out "$OUT/suite"
