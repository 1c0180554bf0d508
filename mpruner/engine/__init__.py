"""The CKA engine: Python face of the compiled ``torch.ops.mpruner`` operators.

Gram matrices, centering, all-pairs HSIC and CKA (``cka``, ``cka_matrix``), per-sequence
token CKA (``token_cka``), the streaming minibatch/exact accumulator (``CKAAccumulator``),
the argument checks they share (:mod:`.inputs`), fake kernels (:mod:`.ops`) and a
pure-PyTorch reference of every estimator (:mod:`.reference`).

The engine knows nothing of models: it takes tensors and returns tensors. Nothing here
imports another mpruner stage.
"""
from . import reference
from .accumulator import CKAAccumulator
from .cka import center_gram, cka, cka_matrix, gram, hsic
from .ops import build_info, cuda_built
from .token_cka import token_cka
from .similarity import token_cosine

__all__ = ["gram", "center_gram", "hsic", "cka", "cka_matrix", "token_cka", "CKAAccumulator", "reference",
           "build_info", "cuda_built", "token_cosine"]
