"""Batches: how ``analyze`` calls the model, moves inputs, and reads masks."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Callable, Optional

import torch
import torch.nn as nn

from .views import MASK_KEYS, BatchContext

Forward = Callable[[nn.Module, object], object]


def model_device(model: nn.Module) -> torch.device:
    """Where the model takes its inputs: the device of its first parameter (or buffer); CPU if it has none."""
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return torch.device("cpu")


def check_data(data) -> None:
    if isinstance(data, (torch.Tensor, Mapping, str, bytes)):
        raise TypeError(f"data must be an iterable of batches (a DataLoader, a list of batches, ...), got a single "
                        f"{type(data).__name__}; wrap one batch in a list: analyze(model, [batch])")
    try:
        iter(data)
    except TypeError:
        raise TypeError(f"data must be an iterable of batches, got {type(data).__name__}") from None


def to_device(batch, device: torch.device, index: int, where: str = "batch"):
    """Move every tensor of a (nested) dict/list/tuple batch to ``device``."""
    if isinstance(batch, torch.Tensor):
        if batch.device == device:
            return batch
        try:
            return batch.to(device, non_blocking=True)
        except (RuntimeError, NotImplementedError) as e:
            raise RuntimeError(f"batch {index}: cannot move {where} from {batch.device} to the model's device "
                               f"{device} ({str(e).splitlines()[0]}); create the data on {device} or on the CPU"
                               ) from None
    if isinstance(batch, Mapping):
        return {k: to_device(v, device, index, f"{where}[{k!r}]") for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        moved = [to_device(v, device, index, f"{where}[{i}]") for i, v in enumerate(batch)]
        return type(batch)(*moved) if hasattr(batch, "_fields") else type(batch)(moved)  # namedtuple or not
    return batch


def call_model(model: nn.Module, batch, forward: Optional[Forward], index: int):
    """Run one batch: ``forward(model, batch)``, else by the batch's type (see ``analyze``)."""
    if forward is not None:
        return forward(model, batch)
    if isinstance(batch, Mapping):
        if _needs_decoder_inputs(model, batch):
            # An encoder-decoder model (T5) needs inputs for both stacks; the text goes to both,
            # as `mpruner analyze` does, so encoder and decoder blocks can be analysed.
            return model(**batch, decoder_input_ids=batch["input_ids"],
                         decoder_attention_mask=batch.get("attention_mask"))
        return model(**batch)
    if isinstance(batch, (list, tuple)):
        if not batch:
            raise ValueError(f"batch {index} is an empty {type(batch).__name__}")
        return model(batch[0])
    if isinstance(batch, torch.Tensor):
        return model(batch)
    raise TypeError(f"batch {index} is a {type(batch).__name__}: analyze calls model(**batch) for a dict, "
                    "model(batch[0]) for a tuple/list and model(batch) for a tensor; for anything else pass "
                    "forward=lambda model, batch: model(...)")


DECODER_KEYS = ("decoder_input_ids", "decoder_inputs_embeds", "labels")


def _needs_decoder_inputs(model: nn.Module, batch: Mapping) -> bool:
    config = getattr(model, "config", None)
    return (bool(getattr(config, "is_encoder_decoder", False)) and isinstance(batch.get("input_ids"), torch.Tensor)
            and not any(k in batch for k in DECODER_KEYS))


def batch_context(batch, index: int) -> BatchContext:
    """Masks, whether the batch holds token ids, and a description for error messages."""
    if isinstance(batch, Mapping):
        masks = tuple((k, batch[k]) for k in MASK_KEYS if isinstance(batch.get(k), torch.Tensor))
        values = list(batch.values())
        keys = "keys " + ", ".join(map(str, batch.keys()))
    elif isinstance(batch, (list, tuple)):
        masks, values, keys = (), list(batch), f"a {type(batch).__name__} of {len(batch)}"
    else:
        masks, values = (), [batch]
        keys = f"a tensor {tuple(batch.shape)}" if isinstance(batch, torch.Tensor) else type(batch).__name__
    token_ids = any(isinstance(v, torch.Tensor) and not v.is_floating_point() and not v.is_complex()
                    and v.dtype != torch.bool and v.dim() >= 2 for v in values)
    return BatchContext(index=index, masks=masks, token_ids=token_ids, keys=keys)
