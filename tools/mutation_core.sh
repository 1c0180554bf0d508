#!/usr/bin/env bash
# Mutation testing (mutmut) of mpruner's Python modules against their fast tests.
#   tools/mutation_core.sh [MODULE_GLOB ...]     (default: the core modules below)
#   a folder glob (mpruner/sparsity/*) mutates every module of the folder in one run, its verdicts
#   written to mutmut_<folder>.txt
#   env: MUTMUT_TESTS (test files; default: those of the first module, below), MUTMUT_CHILDREN
#   (workers, 2), MUTMUT_SECONDS (time limit of the run, default none: the mutants not reached
#   are reported "not checked"), MUTMUT_WORK (the work tree of an earlier run to continue),
#   MUTMUT_RERUN (with MUTMUT_WORK: re-run its survivors against the current tests; the value
#   lists test files added since, e.g. "tests/prune/test_loop.py", or is empty), PYTHON.
# Runs in a temporary copy of the tree (mutmut rewrites the sources it mutates), prints the
# counts, writes benchmarks/results/reliability/mutmut_<name>.txt with every surviving mutant.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PY="$(realpath -s "$(command -v "${PYTHON:-python}")")"  # absolute: the run happens in a copy of the tree
MODULES=("$@")
if [ ${#MODULES[@]} -eq 0 ]; then
  MODULES=(mpruner/prune/cluster.py mpruner/prune/checkpoint.py mpruner/engine/reference.py mpruner/analysis/result.py)
fi
# The fast tests that cover the first module (the slow subprocess/fault tests, deselected by
# "not slow", would make each mutant minutes); MUTMUT_TESTS overrides them.
case "${MODULES[0]}" in
  */engine/cka.py|*/engine/reference.py)
    DEFAULT_TESTS="tests/engine/test_cka.py tests/engine/test_reference.py tests/engine/test_checks.py
      tests/engine/test_accumulator.py tests/engine/test_ops.py tests/engine/test_token_cka.py
      tests/engine/test_similarity.py tests/test_stacklevel.py" ;;
  */analysis/result.py)
    DEFAULT_TESTS="tests/analysis/test_result.py tests/analysis/test_plot.py tests/cli/test_analyze.py
      tests/test_fuzz_readers.py" ;;
  */surgery/persist.py)
    DEFAULT_TESTS="tests/surgery/test_persist.py tests/surgery/test_remove.py tests/adapters/test_cnn.py
      tests/adapters/test_generic.py tests/test_security.py tests/test_fuzz_readers.py" ;;
  */prune/loop.py)
    DEFAULT_TESTS="tests/prune/test_loop.py tests/prune/test_checkpoint.py tests/prune/test_cluster.py
      tests/prune/test_strategies.py tests/prune/test_options.py tests/prune/test_records.py tests/test_faults.py
      tests/test_security.py" ;;
  */sparsity/*)
    DEFAULT_TESTS="tests/sparsity/test_wanda.py tests/sparsity/test_sparsity_oracle.py
      tests/sparsity/test_sparsity_inputs.py tests/sparsity/test_sparsity_wanda_paths.py tests/prune/test_pipeline_tolerance.py tests/surgery/test_card.py
      tests/cli/test_prune_stages.py" ;;
  */width/*)
    DEFAULT_TESTS="tests/width/test_prune.py tests/width/test_width_oracle.py tests/adapters/test_registry.py" ;;
  */data/*)
    DEFAULT_TESTS="tests/data/test_batches.py tests/data/test_datasets.py tests/data/test_gguf.py
      tests/evaluation/test_perplexity.py" ;;
  */prune/pipeline.py)
    DEFAULT_TESTS="tests/prune/test_pipeline.py tests/prune/test_pipeline_tolerance.py tests/cli/test_prune_stages.py" ;;
  *)  # prune/cluster.py, prune/checkpoint.py
    DEFAULT_TESTS="tests/prune/test_cluster.py tests/prune/test_checkpoint.py tests/prune/test_loop.py
      tests/test_security.py tests/test_faults.py tests/test_fuzz_readers.py" ;;
esac
TESTS="$(echo ${MUTMUT_TESTS:-$DEFAULT_TESTS})"  # (echo: one line, single spaces)
if [ -n "${MUTMUT_WORK:-}" ]; then  # continue an earlier run there: only its unchecked mutants are run
  WORK="$MUTMUT_WORK"  # (same MUTMUT_TESTS, or mutmut starts over)
else
  WORK="$(mktemp -d /tmp/mpruner-mutmut.XXXX)"
  cd "$ROOT"
  git ls-files -z | xargs -0 -I{} cp --parents {} "$WORK"/
  cp mpruner/_C*.so "$WORK/mpruner/"
fi
cd "$WORK"
rerun=()
if [ -n "${MUTMUT_WORK:-}" ] && [ -n "${MUTMUT_RERUN+set}" ]; then
  # Re-run the earlier run's survivors (and mutants without a test or timed out) against the
  # current tests. Changing mutmut's test selection would discard every verdict, so test files
  # added since (MUTMUT_RERUN) are imported by the selection's first test file.
  cp -r "$ROOT"/tests/. tests/
  first="${TESTS%% *}"
  for f in ${MUTMUT_RERUN}; do
    module=$(echo "${f%.py}" | tr / .)  # tests/prune/test_loop.py -> tests.prune.test_loop
    echo "from $module import *  # noqa: F401,F403  (added by mutation_core.sh)" >> "$first"
  done
  mapfile -t rerun < <("$PY" -m mutmut results --all true 2>/dev/null |
    sed -n 's/^ *\([^ ]*\): \(survived\|no tests\|timeout\)$/\1/p')
  echo "re-running ${#rerun[@]} mutants"
fi
only=$(printf '    %s\n' "${MODULES[@]}")
tests=$(printf '    %s\n' $TESTS)
# (the fullgraph torch.compile test cannot trace mutmut's trampolines: its stats run fails)
cat > setup.cfg <<CFG
[mutmut]
source_paths = mpruner
only_mutate =
$only
pytest_add_cli_args_test_selection =
$tests
process_isolation = forkserver
pytest_add_cli_args =
    -m
    not slow
    --deselect
    tests/engine/test_ops.py::test_compile_fullgraph_cka_matrix
    -p
    no:cacheprovider
also_copy =
    tests
    README.md
    benchmarks
    mpruner/_C.cpython-311-x86_64-linux-gnu.so
CFG
# One thread per mutant: mutmut's limit is CPU time, which torch's thread pool would use up in
# a fraction of the wall time (every mutant "timed out"); and workers that fork from a process
# where torch already ran can hang, hence forkserver.
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
limit=()
if [ -n "${MUTMUT_SECONDS:-}" ]; then limit=(timeout -k 30 "$MUTMUT_SECONDS"); fi
# mutmut saves each mutant's verdict as it comes, so a run stopped by the limit keeps them.
"${limit[@]}" "$PY" -m mutmut run --max-children "${MUTMUT_CHILDREN:-2}" "${rerun[@]}" > run.log 2>&1 || true
"$PY" -m mutmut results --all true > results.txt 2>&1 || true
name=$(basename "${MODULES[0]}" .py)
if [ "$name" = "*" ]; then name=$(basename "$(dirname "${MODULES[0]}")"); fi  # a folder run
out="$ROOT/benchmarks/results/reliability/mutmut_${name}.txt"
mkdir -p "$ROOT/benchmarks/results/reliability"
{
  echo "# mutmut over ${MODULES[*]}; tests: $TESTS"
  echo "# counts: $(sed 's/^ *[^:]*: //' results.txt | sort | uniq -c | awk '{c=$1; $1=""; printf "%s%s=%d", s, substr($0,2), c; s=", "}')"
  cat results.txt
  # the diff of every surviving mutant, to kill it with a test or to explain it
  for m in $(grep ": survived" results.txt | sed 's/^ *//; s/: survived$//'); do
    echo; "$PY" -m mutmut show "$m" 2>&1 || true
  done
} > "$out"
sed -n 2p "$out"
echo "work tree: $WORK"
