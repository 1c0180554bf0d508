"""Benchmark suite: mpruner's CKA engine against other CKA libraries and the hardware.

``mpruner bench`` (``suite.py``, its options in ``mpruner/cli/bench.py``) runs every (workload, method) pair in its own
subprocess (``worker.py``) with a timeout and a memory cap, compares each result with a
float64 reference of the estimator that method computes (``refs.py``), and writes a
table, JSON and plots (``tables.py``). Workloads and their deterministic activations
live in ``workloads.py``; mpruner, the plain-PyTorch baselines and the Gram floor in
``methods.py``; the other libraries, called through their own entry points, in
``peers.py``.

Nothing here is imported by ``import mpruner``.
"""
