"""Sample-quality filter: sort target training windows into quality categories
and turn categories into per-sample FilterLoss weights.

Source: Han, Zhong, Feng, "FilterLoss", ICCC 2025, arXiv 2602.07772, Sec. III-A
(the "matching weight filter": high-value samples keep weight 1, boundary and
noisy samples get smaller weights chosen per category).

First version (this module's :func:`categorize`): the categories come from
class probabilities of a model on the windows (for example the pretrained
model, or out-of-fold fine-tuned models):

* **noisy** -- the model predicts another class than the label with
  probability >= ``noisy_confidence`` (confidently wrong);
* **high-value** -- the model predicts the label and the margin
  ``p(label) - max_{k != label} p(k)`` is >= ``boundary_margin``;
* **boundary** -- everything else (low margin or unconfidently wrong).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from . import _validation as V

__all__ = ["HIGH_VALUE", "BOUNDARY", "NOISY", "CATEGORY_NAMES", "QualityConfig", "CategoryWeights",
           "categorize", "sample_weights", "category_counts"]

HIGH_VALUE, BOUNDARY, NOISY = 0, 1, 2
CATEGORY_NAMES = ("high_value", "boundary", "noisy")


@dataclass(frozen=True)
class QualityConfig:
    """Thresholds of the sample-quality filter (probabilities in [0, 1])."""

    boundary_margin: float = 0.2    # p(label) - best other p below this -> boundary
    noisy_confidence: float = 0.6   # wrong prediction at least this confident -> noisy

    def __post_init__(self) -> None:
        V.check_in_range("boundary_margin", self.boundary_margin, 0.0, 1.0)
        V.check_in_range("noisy_confidence", self.noisy_confidence, 0.0, 1.0)


@dataclass(frozen=True)
class CategoryWeights:
    """FilterLoss weight per category, each in [0, 1]."""

    high_value: float = 1.0
    boundary: float = 0.5
    noisy: float = 0.1

    def __post_init__(self) -> None:
        for k, v in asdict(self).items():
            V.check_in_range(k, v, 0.0, 1.0)

    def as_array(self) -> np.ndarray:
        """Array of shape (3,), float32, indexed by category."""
        return np.array([self.high_value, self.boundary, self.noisy], dtype=np.float32)


def _check_probs(probs: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[0] == 0:
        raise ValueError(f"probs must have shape (N, K) with N > 0, got {p.shape}")
    V.check_finite_array("probs", p)
    if np.any(p < -1e-6) or not np.allclose(p.sum(axis=1), 1.0, atol=1e-3):
        raise ValueError("probs must be probabilities (rows >= 0 summing to 1); apply softmax to logits first")
    y = V.check_labels("labels", labels, p.shape[1], allow_unlabeled=False)
    if y.shape[0] != p.shape[0]:
        raise ValueError(f"labels has {y.shape[0]} entries and probs {p.shape[0]} rows; expected equal")
    return p, y


def categorize(probs: np.ndarray, labels: np.ndarray, *, config: QualityConfig = QualityConfig()) -> np.ndarray:
    """Assign each sample a quality category.

    Parameters
    ----------
    probs : np.ndarray
        Array of shape (N, K): class probabilities, rows sum to 1.
    labels : np.ndarray
        Array of shape (N,), int in [0, K).
    config : QualityConfig
        Thresholds.

    Returns
    -------
    np.ndarray
        Array of shape (N,), int64 in {HIGH_VALUE=0, BOUNDARY=1, NOISY=2}.

    Raises
    ------
    ValueError
        If ``probs`` is not a finite probability matrix or labels are out of range.
    """
    p, y = _check_probs(probs, labels)
    return _compute_categories(p, y, config)


def _compute_categories(p: np.ndarray, y: np.ndarray, config: QualityConfig) -> np.ndarray:
    n = p.shape[0]
    p_label = p[np.arange(n), y]
    others = p.copy()
    others[np.arange(n), y] = -np.inf
    best_other = others.max(axis=1)
    pred = p.argmax(axis=1)
    cat = np.full(n, BOUNDARY, dtype=np.int64)
    cat[(pred == y) & (p_label - best_other >= config.boundary_margin)] = HIGH_VALUE
    cat[(pred != y) & (best_other >= config.noisy_confidence)] = NOISY
    return cat


def sample_weights(categories: np.ndarray, weights: CategoryWeights = CategoryWeights()) -> np.ndarray:
    """Per-sample FilterLoss weights, array of shape (N,), float32.

    Raises
    ------
    ValueError
        If a category is outside {0, 1, 2} or every resulting weight is zero.
    """
    c = np.asarray(categories, dtype=np.int64)
    if c.size and (c.min() < 0 or c.max() > 2):
        raise ValueError(f"categories must be in {{0, 1, 2}}, got values in [{c.min()}, {c.max()}]")
    w = weights.as_array()[c]
    if c.size and not np.any(w > 0):
        raise ValueError(f"all sample weights are zero with {weights}; expected at least one positive weight")
    return w


def category_counts(categories: np.ndarray) -> dict[str, int]:
    """Samples per category name."""
    c = np.asarray(categories, dtype=np.int64)
    return {name: int((c == i).sum()) for i, name in enumerate(CATEGORY_NAMES)}
