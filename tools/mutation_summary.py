"""mutmut_summary.json from the verdict files tools/mutation_core.sh writes.

    python tools/mutation_summary.py [--before [--module GLOB ...]]

Reads every ``benchmarks/results/reliability/mutmut_<module>.txt`` (one line per mutant:
``<name>: killed | survived | no tests | timeout | not checked``) and
``mutmut_equivalent.json`` (mutant name -> why it cannot be told apart from the original, or,
for a timeout, why the tests catch it by running past mutmut's limit), and writes
``mutmut_summary.json``: per module the counts of its last run, the survivors explained as
equivalent, and the survivors, mutants without a test and timeouts left unexplained (the
goal: none). ``--before`` records
the counts as the run before the new tests instead (kept under ``before_new_tests``); with
``--module`` only for the named modules (as written in the verdict file's first line, e.g.
``mpruner/sparsity/*``), the others keep theirs.
``docs/reliability.md`` renders its mutation table from ``mutmut_summary.json`` when the docs
are built (``make docs``).
"""
from __future__ import annotations

import argparse
import collections
import json
import re
import subprocess
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent / "benchmarks" / "results" / "reliability"
VERDICT = re.compile(r"^\s+(mpruner\.[\w.]+?\.(x\S+)): (\w[\w ]*)$")  # killed, survived, no tests, ...


def verdicts(path: Path):
    """(module path, tests line, {mutant: verdict}) of one mutation_core.sh results file."""
    head = path.read_text(encoding="utf-8").splitlines()
    module, tests = None, ""
    if head and head[0].startswith("# mutmut over "):
        module, _, tests = head[0][len("# mutmut over "):].partition("; tests: ")
    out = {}
    folder = module is not None and module.endswith("*")  # a folder run: names keep their module's name
    for line in head:
        m = VERDICT.match(line)
        if m:
            key = f"{m.group(1).rsplit('.', 2)[-2]}.{m.group(2)}" if folder else m.group(2)
            out[key] = m.group(3)
            if module is None:  # older files: the module from the mutant's dotted name
                module = m.group(1).rsplit(".", 1)[0].replace(".", "/") + ".py"
    return module, tests, out


def _commit() -> str:
    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE, capture_output=True, text=True)
    return out.stdout.strip() or "unknown"


def summarise(before: bool = False, only=None) -> dict:
    target = HERE / "mutmut_summary.json"
    old = json.loads(target.read_text()) if target.exists() else {}
    equivalent = json.loads((HERE / "mutmut_equivalent.json").read_text())
    modules = {}
    for path in sorted(HERE.glob("mutmut_*.txt")):
        module, tests, marks = verdicts(path)
        if not marks:
            continue
        if before and only and module not in only:  # another module: as the summary had it
            if module in old.get("modules", {}):
                modules[module] = old["modules"][module]
            continue
        counts = collections.Counter(marks.values())
        run = {"mutants": len(marks), "checked": len(marks) - counts["not checked"], "killed": counts["killed"],
               "survived": counts["survived"], "no_tests": counts["no tests"], "timeout": counts["timeout"],
               "not_checked": counts["not checked"]}
        entry = dict(old.get("modules", {}).get(module, {}))
        entry["tests"] = tests
        if before:  # the Reliability page names the commit of the run before the new tests
            entry["before_new_tests"] = {**run, "commit": _commit()}
            modules[module] = entry
            continue
        explained = equivalent.get(module, {})
        left = [name for name, v in marks.items() if v in ("survived", "no tests", "timeout") and name not in explained]
        entry.update(run=run, equivalent={k: v for k, v in explained.items() if marks.get(k) == "survived"},
                     unexplained=left)
        modules[module] = entry
    return {"tool": "mutmut 3.8.1 via tools/mutation_core.sh (2 workers, one thread each, on the 2-core "
                    "machine); counts by tools/mutation_summary.py", "modules": modules}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", action="store_true", help="record the runs as before the new tests "
                        "(default: off, the runs are the current state)")
    parser.add_argument("--module", action="append", default=[], help="with --before: only this module "
                        "(repeatable; as in the verdict file's first line, e.g. 'mpruner/sparsity/*')")
    args = parser.parse_args()
    if args.module and not args.before:
        parser.error("--module goes with --before")
    summary = summarise(args.before, set(args.module))
    (HERE / "mutmut_summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    for module, m in summary["modules"].items():  # the counts docs/reliability.md shows
        short = module if module.endswith("*") else module.rsplit("/", 1)[1]
        for key in ("before_new_tests", "run"):
            r = m.get(key)
            if r:
                extra = (f" ({len(m['equivalent'])} equivalent, {len(m['unexplained'])} unexplained)"
                         if key == "run" else "")
                print(f"{key:>16}: `{short}` {r['mutants']} mutants, {r['checked']} checked: {r['killed']} killed, "
                      f"{r['survived']} survived{extra}; no tests {r['no_tests']}, timeout {r['timeout']}")


if __name__ == "__main__":
    main()
