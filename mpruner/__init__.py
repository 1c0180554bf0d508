"""mpruner: depth pruning by CKA layer redundancy (MPruner), with a C++/CUDA CKA engine.

The engine can be used on its own::

    import mpruner
    c = mpruner.cka_matrix([h1, h2, h3])          # (3, 3) linear CKA
    acc = mpruner.CKAAccumulator()                 # minibatch CKA over a data set
    for batch in loader:
        acc.update(layer_outputs(batch))
    acc.compute()

One package per stage of the data flow (engine, adapters, analysis, surgery, prune, and
beside them training, evaluation, sparsity, width, lm, bench); ``docs/design.md`` shows
the layout.
"""
from .version import __version__
from .moved import forward_names as _forward_names, install_finder as _install_finder
from .engine import CKAAccumulator, build_info, center_gram, cka, cka_matrix, cuda_built, gram, hsic, reference, token_cka
from . import data
from .adapters import BlockList, find_blocks
from .analysis import Analysis, analyze
from .evaluation import PerplexityResult, accuracy, perplexity
from .prune import MPruner, Pipeline, PruneResult, cluster_layers, redundant_members
from .training import Finetuner
from . import lm, sparsity, width
from .surgery import (ModelStats, get_record, load_pruned, model_stats, read_record, removable_layers,
                      remove_layers, save_pruned)

__all__ = [
    "__version__", "build_info", "cuda_built", "gram", "center_gram", "hsic", "cka", "cka_matrix", "token_cka",
    "CKAAccumulator", "reference", "data", "analyze", "Analysis", "BlockList", "find_blocks", "remove_layers",
    "removable_layers", "save_pruned", "load_pruned", "model_stats", "ModelStats", "get_record", "read_record",
    "cluster_layers", "redundant_members", "MPruner", "Pipeline", "PruneResult", "Finetuner", "lm", "sparsity", "width",
    "perplexity", "PerplexityResult", "accuracy",
]

_install_finder()  # old module paths (mpruner.prune.finetune, ...) still import, with a DeprecationWarning
__getattr__ = _forward_names(__name__, {"select_layers": ("mpruner.prune.cluster", "redundant_members")})
