"""pytest-benchmark entry: ``pytest benchmarks/ tests/bench/ --benchmark-only [--benchmark-json out.json]``.

Collects ``bench_*.py`` here; the suite's rows and the checks of its machinery are
``tests/bench/test_suite.py``, which the main test run (``pytest``, ``make test``) collects
with ``--benchmark-disable``: its correctness checks run once each, untimed. Shared test
helpers live in importable modules (tests/helpers/), never in a conftest, so the two
conftest modules never shadow each other.
"""
import pytest


def pytest_collect_file(file_path, parent):
    # Files named on the command line are collected by pytest itself; don't collect them twice.
    if file_path.suffix == ".py" and file_path.name.startswith("bench_") and not parent.session.isinitpath(file_path):
        return pytest.Module.from_parent(parent, path=file_path)
