"""Figures shared by reports: the confusion matrix (matplotlib object API, Agg canvas, no pyplot state)."""
from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from ._io import write_bytes_atomic

__all__ = ['plot_confusion_matrix']


def plot_confusion_matrix(cm: np.ndarray | Sequence[Sequence[int]], class_names: Sequence[str],
                          path: str | os.PathLike, *, title: str = "") -> Path:
    """Write a confusion-matrix heat map as a PNG, atomically.

    Rendered with matplotlib's Agg canvas (no display, no pyplot state) into
    memory and written with :func:`imutune._io.write_bytes_atomic`. Cells show
    counts; colours are row-normalized (per-class recall) so rare classes stay
    visible.

    Parameters
    ----------
    cm : array-like
        Shape (K, K), non-negative counts; rows are true classes, columns
        predictions (as in ``summary()["confusion_matrix"]``).
    class_names : sequence of str
        K class names.
    path : path-like
        Destination ``.png`` file.
    title : str, optional
        Figure title.

    Returns
    -------
    Path
        ``path``.

    Raises
    ------
    ValueError
        If ``cm`` is not square, does not match ``class_names``, or has
        negative or non-finite entries.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    m = np.asarray(cm, dtype=np.float64)
    names = [str(c) for c in class_names]
    if m.ndim != 2 or m.shape[0] != m.shape[1]:
        raise ValueError(f"cm must be a square (K, K) matrix, got shape {m.shape}")
    if m.shape[0] != len(names):
        raise ValueError(f"cm is {m.shape[0]}x{m.shape[1]} but class_names has {len(names)} names")
    if m.size and (not np.all(np.isfinite(m)) or m.min() < 0):
        raise ValueError("cm must hold finite, non-negative counts")
    K = len(names)
    row = m.sum(axis=1, keepdims=True)
    frac = np.divide(m, row, out=np.zeros_like(m), where=row > 0)
    side = max(4.0, 0.6 * K + 2.5)
    fig = Figure(figsize=(side + 1.0, side), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    im = ax.imshow(frac, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of true class")
    ax.set_xticks(range(K))
    ax.set_yticks(range(K))
    ax.set_xticklabels(names, rotation=45, ha="right")
    ax.set_yticklabels(names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(K):
        for j in range(K):
            v = m[i, j]
            txt = str(int(v)) if float(v).is_integer() else f"{v:.2g}"
            ax.text(j, i, txt, ha="center", va="center", fontsize=8,
                    color="white" if frac[i, j] > 0.5 else "black")
    if title:
        ax.set_title(title)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return write_bytes_atomic(path, buf.getvalue())
