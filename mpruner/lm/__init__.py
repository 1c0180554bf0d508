"""Language models: what depth pruning of decoder LLMs needs, in one place.

- which blocks go: :func:`rank_blocks` / :func:`choose_blocks` (:mod:`.select`: similarity
  signals of each block's input and output from one pass, leave-one-out and greedy
  calibration loss);
- a training-free stand-in for what is removed: :func:`linear_replacement` (:mod:`.replace`);
- the evaluations the field reports: lm-evaluation-harness on the model in memory
  (:func:`evaluate`, :mod:`.harness`), two local tasks built from the offline Wikipedia
  summaries (:func:`build_tasks`, :mod:`.tasks`), and a task as the loop's judge
  (:func:`task_metric`, :mod:`.judge`); ``pip install 'mpruner[eval]'``;
- perplexity as the judge (:func:`mpruner.evaluation.perplexity`), token windows for
  calibration and healing (:func:`mpruner.data.lm_batches`), LoRA healing
  (:mod:`mpruner.training.lora`), and beside CKA the metrics LLM pruning uses (cosine, angular
  distance, Block Influence: ``mpruner.analyze(metric=...)``).
"""
from ..data.corpus import corpus_ids, lm_batches
from ..evaluation.perplexity import PerplexityResult, perplexity
from ..training.lora import merge_lora, wrap_lora
from .harness import evaluate
from .judge import TaskMetric, task_metric
from .replace import linear_replacement
from .select import METHODS, choose_blocks, rank_blocks
from .tasks import TASKS as LOCAL_TASKS, build_tasks

__all__ = ["perplexity", "PerplexityResult", "corpus_ids", "lm_batches", "wrap_lora", "merge_lora", "rank_blocks",
           "choose_blocks", "linear_replacement", "METHODS", "evaluate", "task_metric", "TaskMetric", "build_tasks",
           "LOCAL_TASKS"]
