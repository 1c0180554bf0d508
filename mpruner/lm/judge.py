"""``task_metric``: an lm-evaluation-harness task as the judge of the pruning loop.

``MPruner(model, calib, mpruner.lm.task_metric("mpruner_wiki_cloze", tokenizer))`` accepts or
rolls back each attempt by the task's accuracy; a perplexity-type metric (lower is better) is
judged the other way, without ``higher_is_better=False`` (the loop reads the judge's
``higher_is_better``). The tasks are loaded, and their metrics and directions read, when the
judge is made: an unknown task, a metric a task does not report, or tasks whose metrics point
in opposite directions fail then, before any model runs.
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence, Union

import torch.nn as nn

from . import harness

# Which metric judges a task when none is named: the first of these it reports, else the first
# in its metric_list (accuracy before perplexity, as lambada_openai reports both).
PREFERRED = ("acc", "acc_norm", "exact_match", "word_perplexity", "perplexity")


class TaskMetric:
    """``metric(model) -> float``: the mean over the tasks of each task's metric.

    Attributes:
        metrics: task -> the metric that judges it (for a group or tag: its tasks).
        higher_is_better: the metrics' direction (the same for all of them).
        last_results: lm-eval's results dict of the latest call (None before the first).
    """

    def __init__(self, tasks: Union[str, Sequence[str]], tokenizer, *, metric: Optional[str] = None,
                 include_path=None, limit: Optional[int] = None, batch_size: int = 8,
                 num_fewshot: Optional[int] = None, max_length: Optional[int] = None, progress: bool = False,
                 distributed="auto", **simple_evaluate_kwargs):
        harness.lm_eval_module()
        self.names = harness.task_names(tasks)
        harness.check_tokenizer(tokenizer)
        harness.check_limit(limit)
        if metric is not None and (not isinstance(metric, str) or not metric):
            raise ValueError(f"metric must be the name of a metric the tasks report (e.g. 'acc'), got {metric!r}")
        self.tokenizer, self.include_path = tokenizer, include_path
        self.options = dict(limit=limit, batch_size=batch_size, num_fewshot=num_fewshot, max_length=max_length,
                            distributed=distributed)
        self.progress = progress
        # A judge needs the value, not its error bar: no bootstrapped standard errors.
        self.simple_evaluate_kwargs = {"bootstrap_iters": 0, "log_samples": False, **simple_evaluate_kwargs}
        manager = harness.task_manager(self.names, include_path)
        self.metrics, directions = _leaf_metrics(manager, self.names, metric)
        if len(set(directions.values())) > 1:
            up = sorted(t for t, d in directions.items() if d)
            down = sorted(t for t, d in directions.items() if not d)
            raise ValueError(f"the tasks' metrics point in opposite directions ({up}: higher is better; {down}: lower "
                             "is better); judge by tasks of one kind (accuracies, or perplexities)")
        self.higher_is_better = next(iter(directions.values()))
        self.last_results: Optional[dict] = None

    @property
    def name(self) -> str:
        """``lm-eval:task/metric,...``, as reports and model cards name the judge."""
        return "lm-eval:" + ",".join(f"{t}/{m}" for t, m in self.metrics.items())

    def __repr__(self) -> str:
        return f"TaskMetric({self.name}, {'higher' if self.higher_is_better else 'lower'} is better)"

    def __call__(self, model: nn.Module) -> float:
        results = harness.evaluate(model, self.tokenizer, self.names, include_path=self.include_path,
                                   progress=self.progress, **self.options, **self.simple_evaluate_kwargs)
        self.last_results = results
        return float(math.fsum(self.values(results).values()) / len(self.metrics))

    def values(self, results: dict) -> Dict[str, float]:
        """Each task's judging metric in an lm-eval results dict."""
        out = {}
        for task, metric in self.metrics.items():
            row = results["results"].get(task, {})
            keys = [k for k in row if k.split(",")[0] == metric and not k.endswith("_stderr")]
            if not keys:
                raise ValueError(f"lm-eval's results for {task!r} have no {metric!r} (they have "
                                 f"{sorted(k for k in row if ',' in k)})")
            out[task] = float(row[sorted(keys)[0]])  # the first filter ("none" for tasks without filters)
        return out


def _leaf_metrics(manager, names: Sequence[str], metric: Optional[str]):
    """(task -> judging metric, task -> higher is better) for every task the names expand to."""
    try:
        loaded = manager.load(list(names))
    except Exception as error:  # noqa: BLE001 - a task whose data cannot be read (offline: a hub data set)
        raise ValueError(f"lm-eval could not load {names} ({type(error).__name__}: {str(error)[:300]}); offline, "
                         f"only local tasks run: mpruner's {', '.join(harness.local_tasks.TASKS)}, or your own "
                         "(dataset_path: json with data_files) through include_path=") from None
    metrics, directions = {}, {}
    for task_name, task in loaded["tasks"].items():
        better = task.higher_is_better()
        listed: List[str] = [m["metric"] for m in (task.config.metric_list or []) if isinstance(m.get("metric"), str)]
        listed = listed or list(better)
        if metric is not None:
            if metric not in better:
                raise ValueError(f"task {task_name!r} does not report metric {metric!r} (it reports {sorted(better)})")
            chosen = metric
        else:
            chosen = next((m for m in PREFERRED if m in better), listed[0] if listed else None)
        if chosen is None:
            raise ValueError(f"task {task_name!r} reports no metric to judge by")
        metrics[task_name], directions[task_name] = chosen, bool(better[chosen])
    return metrics, directions


def task_metric(tasks: Union[str, Sequence[str]], tokenizer, *, metric: Optional[str] = None, include_path=None,
                limit: Optional[int] = None, batch_size: int = 8, num_fewshot: Optional[int] = None,
                max_length: Optional[int] = None, progress: bool = False, distributed="auto",
                **simple_evaluate_kwargs) -> TaskMetric:
    """An lm-eval judge for ``MPruner(evaluate=...)``: ``judge(model) -> float``.

    Args:
        tasks: task names (see :func:`mpruner.lm.evaluate`); several are averaged, unweighted
            (a group or tag counts as its tasks). Their metrics must share a direction.
        tokenizer: the model's tokenizer.
        metric: the metric that judges (e.g. ``"acc"``, ``"byte_perplexity"``; default: the
            first of ``acc``, ``acc_norm``, ``exact_match``, ``word_perplexity``, ``perplexity``
            a task reports, else its first listed metric).
        include_path, limit, batch_size, num_fewshot, max_length, progress, distributed: as for
            :func:`mpruner.lm.evaluate` (under torchrun every rank returns the same value).
        **simple_evaluate_kwargs: for ``lm_eval.simple_evaluate`` (default ``bootstrap_iters=0``,
            ``log_samples=False``).

    The judge's ``higher_is_better`` is True for accuracies and False for perplexities; the
    loop takes it from there. ``judge.last_results`` keeps lm-eval's latest results dict.
    """
    return TaskMetric(tasks, tokenizer, metric=metric, include_path=include_path, limit=limit, batch_size=batch_size,
                      num_fewshot=num_fewshot, max_length=max_length, progress=progress, distributed=distributed,
                      **simple_evaluate_kwargs)
