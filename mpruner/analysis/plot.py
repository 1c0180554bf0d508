"""Heatmap of an Analysis: layer names on both axes, colour bar, cluster outlines.

Uses matplotlib's object API (no pyplot), so it changes no global backend or state.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import numpy as np

METRIC_LABELS = {"cka": "CKA", "cosine": "cosine similarity", "angular": "angular distance (arccos cos / π)"}


def short_names(names: Sequence[str]) -> Tuple[str, List[str]]:
    """Split off the dotted prefix all names share: ('encoder.layer', ['0', '1', ...])."""
    parts = [n.split(".") for n in names]
    common = 0
    while all(len(p) > common + 1 for p in parts) and len({p[common] for p in parts}) == 1:
        common += 1
    return ".".join(parts[0][:common]), [".".join(p[common:]) or n for p, n in zip(parts, names)]


def check_clusters(clusters: Sequence[Sequence[int]], num_layers: int) -> List[List[int]]:
    """Validate runs of consecutive layer indices; return them as lists."""
    out, used = [], set()
    for c in clusters:
        run = list(c) if not isinstance(c, (str, bytes)) else None
        if not run or not all(isinstance(i, (int, np.integer)) and not isinstance(i, bool) for i in run):
            raise ValueError(f"clusters must be lists of layer indices, e.g. [[0, 1, 2], [3], [4, 5]]; got {c!r}")
        run = [int(i) for i in run]
        if run != list(range(run[0], run[0] + len(run))):
            raise ValueError(f"cluster {run} is not a run of consecutive layers in increasing order")
        if run[0] < 0 or run[-1] >= num_layers:
            raise ValueError(f"cluster {run} is outside 0..{num_layers - 1}")
        if used & set(run):
            raise ValueError(f"layer(s) {sorted(used & set(run))} appear in two clusters")
        used |= set(run)
        out.append(run)
    return out


def _ticks(ax, axis: str, labels: List[str]) -> None:
    step = max(1, -(-len(labels) // 40))  # at most ~40 labels per axis
    idx = list(range(0, len(labels), step))
    if axis == "x":
        ax.set_xticks(idx)
        ax.set_xticklabels([labels[i] for i in idx], rotation=90 if max(map(len, labels)) > 3 else 0, fontsize=8)
    else:
        ax.set_yticks(idx)
        ax.set_yticklabels([labels[i] for i in idx], fontsize=8)


def plot_analysis(analysis, path: Optional[str] = None, clusters=None, title: Optional[str] = None,
                  annotate: Optional[bool] = None, cmap: str = "viridis", dpi: int = 150):
    """See :meth:`Analysis.plot`."""
    try:
        import matplotlib
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.patches import Rectangle
    except ImportError:
        raise ModuleNotFoundError("Analysis.plot needs matplotlib: pip install matplotlib") from None

    c = analysis.matrix.numpy()
    rows, cols = c.shape
    if clusters is not None:
        if analysis.is_cross:
            raise ValueError("clusters are runs of one model's layers; this is a cross-model (L x M) analysis")
        clusters = check_clusters(clusters, rows)
    row_prefix, row_labels = short_names(analysis.layer_names)
    col_prefix, col_labels = (row_prefix, row_labels) if not analysis.is_cross else short_names(
        analysis.other_layer_names)

    side = min(max(4.5, 0.3 * max(rows, cols) + 2.5), 22)
    fig = Figure(figsize=(side * max(cols / rows, 0.6) + 1.2, side), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    colours = matplotlib.colormaps[cmap].with_extremes(bad="lightgrey")
    image = ax.imshow(np.ma.masked_invalid(c), cmap=colours, vmin=0.0, vmax=1.0, interpolation="nearest",
                      origin="upper")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label=METRIC_LABELS.get(analysis.metric, analysis.metric))
    _ticks(ax, "x", col_labels)
    _ticks(ax, "y", row_labels)
    ax.set_ylabel(f"{row_prefix}.<i>" if row_prefix else "layer")
    ax.set_xlabel(("other: " if analysis.is_cross else "") + (f"{col_prefix}.<i>" if col_prefix else "layer"))
    if annotate is None:
        annotate = max(rows, cols) <= 12
    if annotate:
        for i in range(rows):
            for j in range(cols):
                if np.isfinite(c[i, j]):
                    ax.text(j, i, f"{c[i, j]:.2f}", ha="center", va="center", fontsize=7,
                            color="black" if c[i, j] > 0.6 else "white")
    for run in clusters or []:
        if len(run) > 1:
            ax.add_patch(Rectangle((run[0] - 0.5, run[0] - 0.5), len(run), len(run), fill=False, edgecolor="red",
                                   linewidth=2))
    opts = analysis.options
    ax.set_title(title if title is not None else
                 f"{opts.get('model', 'model')} · {METRIC_LABELS.get(analysis.metric, analysis.metric)} · "
                 f"{opts.get('view', '?')} view · {analysis.num_samples} samples", fontsize=10)
    if path is not None:
        fig.savefig(path, dpi=dpi, bbox_inches="tight")  # long layer names must not be cut at the edge
    return fig
