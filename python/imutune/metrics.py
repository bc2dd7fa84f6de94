"""Classification and latency metrics: accuracy, macro-F1, confusion matrix, percentiles.

Classification scores are scikit-learn's (``sklearn.metrics``) behind imutune's input checks.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from sklearn import metrics as sklearn_metrics

__all__ = ["accuracy", "macro_f1", "confusion_matrix", "latency_summary", "restore_ratio"]


def _check_pair(y_true: np.ndarray, y_pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    t = np.asarray(y_true).astype(np.int64, copy=False).ravel()
    p = np.asarray(y_pred).astype(np.int64, copy=False).ravel()
    if t.shape != p.shape:
        raise ValueError(f"y_true has {t.shape[0]} labels and y_pred {p.shape[0]}; expected the same length")
    if t.size == 0:
        raise ValueError("y_true is empty; expected at least one label")
    return t, p


def accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Fraction of correct predictions, in [0, 1].

    Parameters
    ----------
    y_true, y_pred : np.ndarray
        Integer arrays of shape (N,).

    Raises
    ------
    ValueError
        If the lengths differ or are zero.
    """
    t, p = _check_pair(y_true, y_pred)
    return float(sklearn_metrics.accuracy_score(t, p))


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """Confusion matrix of shape (K, K), int64; rows are true classes, columns predictions."""
    t, p = _check_pair(y_true, y_pred)
    for name, a in (("y_true", t), ("y_pred", p)):
        if a.min() < 0 or a.max() >= num_classes:
            raise ValueError(f"{name} has values in [{a.min()}, {a.max()}]; expected [0, {num_classes - 1}]")
    return sklearn_metrics.confusion_matrix(t, p, labels=np.arange(num_classes)).astype(np.int64)


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int | None = None) -> float:
    """Macro-averaged F1 over the classes present in ``y_true``, in [0, 1].

    Classes absent from ``y_true`` are left out of the mean (as scikit-learn
    does when ``labels`` is the set of true labels); a present class that is
    never predicted counts with F1 = 0.
    """
    t, p = _check_pair(y_true, y_pred)
    if num_classes is not None:
        confusion_matrix(t, p, int(num_classes))      # range check of both label arrays
    return float(sklearn_metrics.f1_score(t, p, labels=np.unique(t), average="macro", zero_division=0))


def latency_summary(latencies_ms: Sequence[float]) -> dict[str, float]:
    """Percentiles of per-call latencies in ms: ``p50``, ``p95``, ``p99``, ``max``, ``mean``, ``n``."""
    a = np.asarray(latencies_ms, dtype=np.float64)
    if a.size == 0:
        raise ValueError("latencies_ms is empty; expected at least one measurement")
    p50, p95, p99 = np.percentile(a, [50, 95, 99])
    return {"p50": float(p50), "p95": float(p95), "p99": float(p99), "max": float(a.max()),
            "mean": float(a.mean()), "n": int(a.size)}


def restore_ratio(target_accuracy_after: float, source_accuracy: float) -> float:
    """Restore ratio: target accuracy after transfer divided by the source model's accuracy
    (Han, Zhong, Feng, FilterLoss, ICCC 2025, Sec. IV: 92.34% reported)."""
    if not source_accuracy > 0:
        raise ValueError(f"source_accuracy must be > 0, got {source_accuracy!r}")
    return float(target_accuracy_after / source_accuracy)
