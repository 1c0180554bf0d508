"""``mpruner demo``: the method end to end on real pretrained models and data, offline.

- :mod:`.classification`: all-MiniLM-L6-v2 on Rotten Tomatoes (``text``) and
  EfficientNet-Lite0 on Fashion-MNIST (``vision``), each fine-tuned once (cached), then pruned
  by the MPruner loop against accuracy.
- :mod:`.language_model`: SmolLM2-135M on Wikipedia summaries (``lm``): the same number of
  blocks removed as each selection strategy picks them, judged by held-out perplexity.

The demos use the library as a user would; nothing in the library imports them.
"""
from .classification import run_demo
from .language_model import run_lm_demo

__all__ = ["run_demo", "run_lm_demo"]
