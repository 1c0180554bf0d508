"""Language models: what depth pruning of decoder LLMs needs, in one place.

- which blocks go: :func:`rank_blocks` / :func:`choose_blocks` (:mod:`.select`: similarity
  signals of each block's input and output from one pass, leave-one-out and greedy
  calibration loss);
- a training-free stand-in for what is removed: :func:`linear_replacement` (:mod:`.replace`);
- perplexity as the judge (:func:`mpruner.evaluation.perplexity`), token windows for
  calibration and healing (:func:`mpruner.data.lm_batches`), LoRA healing
  (:mod:`mpruner.training.lora`), and beside CKA the metrics LLM pruning uses (cosine, angular
  distance, Block Influence: ``mpruner.analyze(metric=...)``).
"""
from ..data.corpus import corpus_ids, lm_batches
from ..evaluation.perplexity import PerplexityResult, perplexity
from ..training.lora import merge_lora, wrap_lora
from .replace import linear_replacement
from .select import METHODS, choose_blocks, rank_blocks

__all__ = ["perplexity", "PerplexityResult", "corpus_ids", "lm_batches", "wrap_lora", "merge_lora", "rank_blocks",
           "choose_blocks", "linear_replacement", "METHODS"]
