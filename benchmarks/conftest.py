"""pytest-benchmark entry: ``pytest benchmarks/ --benchmark-only [--benchmark-json out.json]``.

Collects ``bench_*.py`` here as well as ``test_*.py``. The main test run (``pytest``,
testpaths = tests) never looks in this directory.
"""
import pytest


def pytest_collect_file(file_path, parent):
    # Files named on the command line are collected by pytest itself; don't collect them twice.
    if file_path.suffix == ".py" and file_path.name.startswith("bench_") and not parent.session.isinitpath(file_path):
        return pytest.Module.from_parent(parent, path=file_path)
