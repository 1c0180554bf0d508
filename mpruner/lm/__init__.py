"""Language models: perplexity as the judge, LoRA healing, the LM demo pieces.

Depth pruning of decoder LLMs (LLaMA, Qwen2, Mistral, GPT-2) with the metrics their users
know (cosine, angular distance, Block Influence: see ``mpruner.analyze(metric=...)``) beside CKA.
"""
from .batches import lm_batches
from .lora import merge_lora, wrap_lora
from .perplexity import PerplexityResult, corpus_ids, perplexity

__all__ = ["perplexity", "PerplexityResult", "corpus_ids", "lm_batches", "wrap_lora", "merge_lora"]
