"""Model analysis: CKA between the layers of a model on calibration data (MPruner's first stage).

``analyze(model, data)`` hooks the model's block list, turns each block's output into
features per sample (a *view*), streams every batch into the CKA engine and returns an
:class:`Analysis` (the L x L matrix, layer names, plot, JSON save/load).
"""
from .driver import analyze
from .layers import LayerSelection, resolve_layers
from ..moved import forward_names
from .result import Analysis
from .views import VIEWS

__all__ = ["analyze", "Analysis", "VIEWS", "resolve_layers", "LayerSelection"]

# Renamed: the cluster members to remove are mpruner.redundant_members.
__getattr__ = forward_names(__name__, {"select_layers": ("mpruner.analysis.layers", "resolve_layers")})
