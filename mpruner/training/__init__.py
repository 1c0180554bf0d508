"""Recovery training after pruning: ``Finetuner`` on accelerate (one device, DDP) or torch
FSDP2, with LoRA healing through peft, distillation from the unpruned model, partial
training and token budgets.

- :mod:`.finetune`: the ``Finetuner`` (AdamW, warm-up and decay, clipping, accumulation).
- :mod:`.accelerated`: the accelerate ``Accelerator`` it trains with, and what it leaves behind.
- :mod:`.sharded`: ``Finetuner(fsdp=True)``: a sharded copy trained and gathered back.
- :mod:`.batch_split`: one global batch shared by the ranks of a data-parallel step.
- :mod:`.lora`: LoRA adapters wrapped around a model and merged back into plain weights.
- :mod:`.distill`: distillation from the unpruned model (chunked-vocabulary KL, hidden states).
- :mod:`.partial`: what trains (``all``, ``lora``, ``around-cuts``, ``last:K``; frozen embeddings).
- :mod:`.budget`: healing budgets in tokens (``"300k"``) and the tokens/s bar.
- :mod:`.healing_state`: the healing state written every few minutes, so a killed call resumes.
"""
from .finetune import Finetuner, default_loss
from .lora import merge_lora, wrap_lora

__all__ = ["Finetuner", "default_loss", "wrap_lora", "merge_lora"]
