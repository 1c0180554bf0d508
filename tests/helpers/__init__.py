"""Shared test helpers, imported as ``tests.helpers.<module>``: tiny models, data, the float64
NumPy oracle, hypothesis strategies, fault injection, fuzz targets, and the pruning jobs the
checkpoint tests start as subprocesses (``prune_job.py``, ``prune_job_torchrun.py``)."""
