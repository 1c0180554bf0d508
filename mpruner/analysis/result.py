"""``Analysis``: the CKA matrix of a model's layers, with names, counts and options; JSON save/load."""
from __future__ import annotations

import json
import math
import os
from typing import Dict, List, Optional, Sequence

import torch

FORMAT = "mpruner.analysis"
FORMAT_VERSION = 1
MAX_FILE_BYTES = 1 << 30  # 1 GiB: a 10,000-layer matrix is ~2 GB less; refuse before parsing anything bigger


def _names(data: Dict, key: str, required: bool) -> Optional[List[str]]:
    """A list of layer names from a loaded file (a bare string would split into letters)."""
    names = data[key] if required else data.get(key)
    if names is None and not required:
        return None
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ValueError(f"{key!r} must be a list of strings, got {type(names).__name__}"
                         + (f" {names!r:.40}" if isinstance(names, str) else ""))
    return names


def _number(v) -> float:
    """One CKA entry: a number, or null for NaN (a constant layer)."""
    if v is None:
        return float("nan")
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ValueError(f"'cka' entries must be numbers or null, got {v!r:.40}")
    return float(v)


class Analysis:
    """The result of :func:`mpruner.analyze`.

    Attributes:
        matrix: (L, L) float64 CPU tensor of ``metric`` between the analysed layers (entry
            [i, j] compares layer i with layer j); with ``other=``, the (L, M) cross matrix.
        metric: ``"cka"``, ``"cosine"`` (mean cosine similarity over tokens) or ``"angular"``
            (mean arccos(cos)/pi: 0 identical, 1/2 orthogonal).
        cka: ``matrix`` when ``metric == "cka"`` (NaN where a layer was constant), else None.
        block_io: with block inputs captured, ``{"cosine": M, "angular": M}`` where M[i, j]
            compares the INPUT of block i with the OUTPUT of block j (float64); else None.
        layer_names: qualified module names of the L layers, in forward order.
        other_layer_names: the M names of the other model's layers (None without ``other``).
        num_samples: samples that entered the estimate (sequences for ``view="tokens"``).
        options: how it was computed: view, kernel, unbiased, estimator, block list
            (``layers``), model class, batches used and skipped, versions. Plain JSON values.
    """

    def __init__(self, cka: torch.Tensor, layer_names: Sequence[str], num_samples: int, options: Optional[Dict] = None,
                 other_layer_names: Optional[Sequence[str]] = None, *, metric: str = "cka",
                 block_io: Optional[Dict[str, torch.Tensor]] = None):
        cka = torch.as_tensor(cka, dtype=torch.float64).cpu()
        rows = len(layer_names)
        cols = rows if other_layer_names is None else len(other_layer_names)
        if cka.dim() != 2 or tuple(cka.shape) != (rows, cols):
            raise ValueError(f"cka has shape {tuple(cka.shape)} but there are {rows} x {cols} layer names")
        self.matrix, self.metric = cka, metric
        self.cka = cka if metric == "cka" else None
        self.block_io = None if block_io is None else {k: torch.as_tensor(v, dtype=torch.float64).cpu()
                                                       for k, v in block_io.items()}
        self.layer_names: List[str] = list(layer_names)
        self.other_layer_names: Optional[List[str]] = None if other_layer_names is None else list(other_layer_names)
        self.num_samples = int(num_samples)
        self.options: Dict = dict(options or {})

    # ------------------------------------------------------------------ views of the result
    @property
    def num_layers(self) -> int:
        return len(self.layer_names)

    @property
    def is_cross(self) -> bool:
        """Whether ``cka`` compares two models (L x M) rather than one model's layers (L x L)."""
        return self.other_layer_names is not None

    @property
    def num_skipped(self) -> int:
        """Samples (sequences for ``view="tokens"``) left out because their batch was too small."""
        return int(self.options.get("skipped_samples", 0))

    def adjacent(self) -> torch.Tensor:
        """``metric`` of each layer with the next one: (L - 1,) float64, ``matrix[i, i + 1]``."""
        if self.is_cross:
            raise ValueError("adjacent() compares consecutive layers of one model; this is a cross-model analysis")
        return torch.diagonal(self.matrix, offset=1).clone()

    def _io(self, kind: str) -> torch.Tensor:
        if self.block_io is None:
            raise ValueError("this analysis has no block inputs; run mpruner.analyze(..., block_inputs=True) "
                             "(the default for metric='cosine' and 'angular')")
        return self.block_io[kind]

    def block_influence(self) -> torch.Tensor:
        """ShortGPT's Block Influence: (L,) float64, 1 - mean cosine between each block's input and output.

        Low means the block changes its input little: the first candidate for removal.
        """
        return 1.0 - torch.diagonal(self._io("cosine")).clone()

    def run_distance(self, n: int) -> torch.Tensor:
        """Angular distance between the input of block i and the output of block i + n - 1 (Gromov et al.).

        (L - n + 1,) float64: entry i is the cost of removing the run of ``n`` blocks starting at i.
        """
        io = self._io("angular")
        if not isinstance(n, int) or not 1 <= n <= io.shape[0]:
            raise ValueError(f"n must be an integer in [1, {io.shape[0]}], got {n!r}")
        return torch.diagonal(io, offset=n - 1).clone()

    def plot(self, path: Optional[str] = None, clusters: Optional[Sequence[Sequence[int]]] = None,
             title: Optional[str] = None, annotate: Optional[bool] = None, cmap: str = "viridis", dpi: int = 150):
        """Heatmap of ``cka`` with layer names and a colour bar; saved as PNG when ``path`` is given.

        Args:
            clusters: runs of consecutive layer indices (e.g. ``[[0, 1, 2], [3], [4, 5]]``);
                each run of two or more layers is outlined on the diagonal.
            annotate: write the values in the cells (default: when there are at most 12 layers).

        Returns the ``matplotlib.figure.Figure`` (needs matplotlib: ``pip install matplotlib``).
        """
        from .plot import plot_analysis

        return plot_analysis(self, path, clusters=clusters, title=title, annotate=annotate, cmap=cmap, dpi=dpi)

    # ------------------------------------------------------------------ persistence
    def to_dict(self) -> Dict:
        """Plain JSON-able values (NaN as null)."""
        rows = lambda m: [[None if math.isnan(v) else v for v in row] for row in m.tolist()]  # noqa: E731
        extra = {}
        if self.metric != "cka":
            extra["metric"] = self.metric
        if self.block_io is not None:
            extra["block_io"] = {k: rows(v) for k, v in self.block_io.items()}
        return {"format": FORMAT, "version": FORMAT_VERSION, **extra,
                "cka": rows(self.matrix),
                "layer_names": self.layer_names, "other_layer_names": self.other_layer_names,
                "num_samples": self.num_samples, "options": self.options}

    @classmethod
    def from_dict(cls, data: Dict) -> "Analysis":
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError(f"not an mpruner analysis (expected format {FORMAT!r})")
        if data.get("version", 0) > FORMAT_VERSION:
            raise ValueError(f"analysis format version {data['version']} is newer than this mpruner reads "
                             f"({FORMAT_VERSION}); upgrade mpruner")
        names = _names(data, "layer_names", required=True)
        other = _names(data, "other_layer_names", required=False)
        shape = (len(names), len(names) if other is None else len(other))
        rows = data["cka"]
        if not isinstance(rows, list) or len(rows) != shape[0] or \
                any(not isinstance(row, list) or len(row) != shape[1] for row in rows):
            got = (f"{len(rows)} rows of lengths {sorted({len(r) for r in rows if isinstance(r, list)})}"
                   if isinstance(rows, list) else type(rows).__name__)
            raise ValueError(f"'cka' must be a {shape[0]} x {shape[1]} list of rows (one per layer name), got {got}")
        values = [[_number(v) for v in row] for row in rows]
        num_samples = data["num_samples"]
        if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 0:
            raise ValueError(f"'num_samples' must be an integer >= 0, got {num_samples!r}")
        options = data.get("options") or {}
        if not isinstance(options, dict):
            raise ValueError(f"'options' must be a JSON object, got {type(options).__name__}")
        cka = torch.tensor(values, dtype=torch.float64).reshape(shape)
        metric = data.get("metric", "cka")
        if not isinstance(metric, str):
            raise ValueError(f"'metric' must be a string, got {metric!r:.40}")
        io = data.get("block_io")
        if io is not None:
            if not isinstance(io, dict) or any(not isinstance(m, list) or any(not isinstance(r, list) for r in m)
                                               for m in io.values()):
                raise ValueError("'block_io' must map names to lists of rows")
            io = {str(k): torch.tensor([[_number(v) for v in row] for row in m], dtype=torch.float64)
                  for k, m in io.items()}
        return cls(cka, names, num_samples, options, other, metric=metric, block_io=io)

    def save(self, path: str) -> None:
        """Write JSON (no pickle); written to a temporary file first, so a crash leaves no half file."""
        text = json.dumps(self.to_dict(), indent=1, allow_nan=False)
        tmp = f"{path}.tmp{os.getpid()}"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str) -> "Analysis":
        """Read a file written by :meth:`save`."""
        size = os.path.getsize(path)
        if size > MAX_FILE_BYTES:
            raise ValueError(f"{path} is {size} bytes; an analysis file is at most {MAX_FILE_BYTES} (was it written "
                             "by Analysis.save?)")
        with open(path, encoding="utf-8") as f:
            try:
                data = json.load(f)
            except (ValueError, RecursionError) as e:  # bad UTF-8 or JSON, > 4300-digit integers, deep nesting
                raise ValueError(f"{path} is not valid JSON ({type(e).__name__}: {str(e)[:100]}); was it written "
                                 "by Analysis.save?") from None
        try:
            return cls.from_dict(data)
        except KeyError as e:
            raise ValueError(f"{path}: malformed mpruner analysis (missing key {e})") from None
        except (TypeError, ValueError, OverflowError) as e:
            raise ValueError(f"{path}: malformed mpruner analysis ({e})") from None

    def __repr__(self) -> str:
        shape = "x".join(map(str, self.matrix.shape))
        view = self.options.get("view", "?")
        return (f"Analysis({shape} {self.metric if self.metric != 'cka' else 'CKA'}, layers={self.options.get('layers', '?')!r}, view={view!r}, "
                f"num_samples={self.num_samples})")
