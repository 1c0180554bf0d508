"""Metrics that judge a pruned model: top-1 accuracy and held-out perplexity.

Both run under ``torch.no_grad()`` in eval mode, restore the model's modes afterwards and,
under torchrun, score 1/W of the batches per rank and sum the counts over the ranks.
"""
from .accuracy import accuracy
from .perplexity import PerplexityResult, perplexity

__all__ = ["accuracy", "perplexity", "PerplexityResult"]
