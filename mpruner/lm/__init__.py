"""Language models: what depth pruning of decoder LLMs needs, in one place.

Perplexity as the judge (:func:`mpruner.evaluation.perplexity`), token windows for
calibration and healing (:func:`mpruner.data.lm_batches`), LoRA healing
(:mod:`mpruner.training.lora`), and beside CKA the metrics LLM pruning uses (cosine,
angular distance, Block Influence: ``mpruner.analyze(metric=...)``).
"""
from ..data.corpus import corpus_ids, lm_batches
from ..evaluation.perplexity import PerplexityResult, perplexity
from ..training.lora import merge_lora, wrap_lora

__all__ = ["perplexity", "PerplexityResult", "corpus_ids", "lm_batches", "wrap_lora", "merge_lora"]
