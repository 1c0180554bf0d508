"""Language models: perplexity as the judge, LoRA healing, the LM demo pieces.

Depth pruning of decoder LLMs (LLaMA, Qwen2, Mistral, GPT-2) with the metrics their users
know (cosine, angular distance, Block Influence: see ``mpruner.analyze(metric=...)``) beside CKA.
"""
from .perplexity import PerplexityResult, corpus_ids, perplexity

__all__ = ["perplexity", "PerplexityResult", "corpus_ids"]
