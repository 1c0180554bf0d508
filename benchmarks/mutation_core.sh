#!/usr/bin/env bash
# Mutation testing (mutmut) of mpruner's core Python modules against their fast tests.
#   benchmarks/mutation_core.sh [MODULE_GLOB ...]     (default: the core modules below)
# Runs in a temporary copy of the tree (mutmut rewrites the sources it mutates), prints the
# counts, writes benchmarks/results/reliability/mutmut_<name>.txt with every surviving mutant.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PY="${PYTHON:-python}"
MODULES=("$@")
if [ ${#MODULES[@]} -eq 0 ]; then
  MODULES=(mpruner/prune/cluster.py mpruner/prune/checkpoint.py mpruner/engine/reference.py mpruner/analysis/result.py)
fi
# The fast tests that cover them (the slow subprocess/fault tests would make each mutant minutes).
TESTS="${MUTMUT_TESTS:-tests/test_behaviours.py tests/test_prune.py tests/test_cka_api.py tests/test_security.py tests/test_faults.py}"
WORK="$(mktemp -d /tmp/mpruner-mutmut.XXXX)"
cd "$ROOT"
git ls-files -z | xargs -0 -I{} cp --parents {} "$WORK"/
cp mpruner/_C*.so "$WORK/mpruner/"
cd "$WORK"
only=$(printf '    %s\n' "${MODULES[@]}")
tests=$(printf '    %s\n' $TESTS)
cat > setup.cfg <<CFG
[mutmut]
source_paths = mpruner
only_mutate =
$only
pytest_add_cli_args_test_selection =
$tests
pytest_add_cli_args =
    -m
    not slow
    -p
    no:cacheprovider
also_copy =
    tests
    README.md
    benchmarks
    mpruner/_C.cpython-311-x86_64-linux-gnu.so
CFG
"$PY" -m mutmut run --max-children "${MUTMUT_CHILDREN:-2}" || true
"$PY" -m mutmut results --all true > results.txt 2>&1 || "$PY" -m mutmut results > results.txt 2>&1 || true
name=$(basename "${MODULES[0]}" .py)
mkdir -p "$ROOT/benchmarks/results/reliability"
cp results.txt "$ROOT/benchmarks/results/reliability/mutmut_${name}.txt"
grep -c ": survived" results.txt || true
echo "work tree: $WORK"
