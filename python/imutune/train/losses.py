"""Losses, all in one place. Every loss maps ``logits`` (N, K) float32,
``targets`` (N,) int64 and per-sample ``weights`` (N,) float to a scalar tensor,
so the training loop (:func:`imutune.train.loop.train`) and an exported
on-device training graph call every loss the same way.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["FilterLoss", "WeightedCrossEntropy", "FocalLoss", "ClassBalancedLoss", "inverse_frequency_weights",
           "effective_number_weights", "GeneralizedCrossEntropy", "SymmetricCrossEntropy"]


class FilterLoss(nn.Module):
    """Per-sample weighted cross-entropy (Han, Zhong, Feng, "FilterLoss: A
    Transfer Learning Approach for Communication Scene Recognition", ICCC 2025,
    arXiv 2602.07772, Sec. III-B).

    ``loss = sum_i w_i * CE(logits_i, y_i) / sum_i w_i``

    The weights come from the sample-quality filter (:mod:`imutune.personalize.quality`):
    high-value samples count fully, boundary and noisy ones less. They are an
    input of ``forward``, so the same module serves server-side training and an
    exported on-device training graph.

    Parameters
    ----------
    label_smoothing : float
        Passed to :func:`torch.nn.functional.cross_entropy`, in [0, 1).
    check_weights : bool
        In eager mode, raise when weights are negative, non-finite or all zero
        instead of returning NaN. Turn off for graph export (the check is
        data-dependent).
    """

    def __init__(self, *, label_smoothing: float = 0.0, check_weights: bool = True) -> None:
        super().__init__()
        self.label_smoothing = float(label_smoothing)
        self.check_weights = check_weights

    def forward(self, logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """Weighted mean cross-entropy.

        Parameters
        ----------
        logits : torch.Tensor
            Shape (N, K), float.
        targets : torch.Tensor
            Shape (N,), int64 in [0, K).
        weights : torch.Tensor
            Shape (N,), float, >= 0, not all zero.

        Raises
        ------
        ValueError
            If ``check_weights`` and the weights are negative, NaN/Inf or all zero.
        """
        if self.check_weights and not torch.compiler.is_compiling():
            if weights.shape != targets.shape:
                raise ValueError(f"weights must have shape {tuple(targets.shape)}, got {tuple(weights.shape)}")
            if not bool(torch.isfinite(weights).all()) or bool((weights < 0).any()):
                raise ValueError("weights must be finite and >= 0; got negative or NaN/Inf values")
            if not bool((weights > 0).any()):
                raise ValueError("weights are all zero; FilterLoss needs at least one positive weight")
        ce = F.cross_entropy(logits, targets, reduction="none", label_smoothing=self.label_smoothing)
        return (weights * ce).sum() / weights.sum().clamp_min(1e-12)


class WeightedCrossEntropy(nn.Module):
    """Cross-entropy with per-class weights (``class_weights`` of shape (K,)),
    e.g. inverse class frequency; ``None`` gives plain cross-entropy."""

    def __init__(self, class_weights: torch.Tensor | None = None, *, label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.register_buffer("class_weights", None if class_weights is None else torch.as_tensor(class_weights, dtype=torch.float32))
        self.label_smoothing = float(label_smoothing)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
        """Mean (class-weighted) cross-entropy; ``weights`` is ignored (uniform API)."""
        return F.cross_entropy(logits, targets, weight=self.class_weights, label_smoothing=self.label_smoothing)


def _weights_or_ones(weights: torch.Tensor | None, logits: torch.Tensor, targets: torch.Tensor, where: str,
                     check: bool) -> torch.Tensor:
    """Per-sample weights (N,): ones where none are given; checked unless ``check`` is off or torch is compiling."""
    if weights is None:
        weights = torch.ones_like(targets, dtype=logits.dtype)
    if check and not torch.compiler.is_compiling():
        _check_weights(weights, targets, where)
    return weights


def _weighted_mean(loss: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``sum_i w_i loss_i / sum_i w_i`` (the denominator clamped at 1e-12)."""
    return (weights * loss).sum() / weights.sum().clamp_min(1e-12)


def _check_weights(weights: torch.Tensor, targets: torch.Tensor, where: str) -> None:
    if weights.shape != targets.shape:
        raise ValueError(f"{where}: weights must have shape {tuple(targets.shape)}, got {tuple(weights.shape)}")
    if not bool(torch.isfinite(weights).all()) or bool((weights < 0).any()):
        raise ValueError(f"{where}: weights must be finite and >= 0; got negative or NaN/Inf values")
    if not bool((weights > 0).any()):
        raise ValueError(f"{where}: weights are all zero; expected at least one positive weight")


def inverse_frequency_weights(class_counts: Sequence[int] | np.ndarray) -> np.ndarray:
    """Per-class weights ``n / (K_present * n_k)`` (mean 1 over present classes).

    Classes with no samples get weight 0 (documented fallback: they contribute
    no loss terms anyway, and an infinite weight would poison the loss).

    Returns
    -------
    np.ndarray
        Array of shape (K,), float32.

    Raises
    ------
    ValueError
        If a count is negative or all counts are zero.
    """
    c = _check_counts(class_counts)
    present = c > 0
    w = np.zeros(c.shape, dtype=np.float64)
    w[present] = c.sum() / (present.sum() * c[present])
    return w.astype(np.float32)


def effective_number_weights(class_counts: Sequence[int] | np.ndarray, beta: float = 0.99) -> np.ndarray:
    """Class-balanced weights of Cui et al., "Class-Balanced Loss Based on
    Effective Number of Samples", CVPR 2019, Eq. 4-5:
    ``w_k = (1 - beta) / (1 - beta ** n_k)``, rescaled so the weights of the
    present classes sum to their number. Absent classes get weight 0.

    Returns
    -------
    np.ndarray
        Array of shape (K,), float32.

    Raises
    ------
    ValueError
        If ``beta`` is not in [0, 1), a count is negative or all counts are zero.
    """
    if not 0.0 <= float(beta) < 1.0:
        raise ValueError(f"beta must be in [0, 1), got {beta!r}")
    c = _check_counts(class_counts)
    present = c > 0
    w = np.zeros(c.shape, dtype=np.float64)
    w[present] = (1.0 - beta) / (1.0 - np.power(beta, c[present]))
    w[present] *= present.sum() / w[present].sum()
    return w.astype(np.float32)


def _check_counts(class_counts) -> np.ndarray:
    c = np.asarray(class_counts, dtype=np.float64).ravel()
    if c.size < 2 or not np.all(np.isfinite(c)) or np.any(c < 0):
        raise ValueError(f"class_counts must be >= 0 for at least 2 classes, got {c.tolist()}")
    if not np.any(c > 0):
        raise ValueError("class_counts are all zero; expected at least one class with samples")
    return c


class FocalLoss(nn.Module):
    """Focal loss (Lin et al., "Focal Loss for Dense Object Detection", ICCV 2017, Eq. 4)
    with per-sample weights: ``sum_i w_i * (1 - p_i) ** gamma * CE_i / sum_i w_i``
    where ``p_i`` is the softmax probability of the true class.

    Parameters
    ----------
    gamma : float
        Focusing parameter, >= 0 (2 in the paper; 0 gives cross-entropy).
    class_weights : array-like of shape (K,), optional
        The paper's ``alpha`` per class; none by default.
    """

    def __init__(self, gamma: float = 2.0, *, class_weights: Sequence[float] | None = None,
                 check_weights: bool = True) -> None:
        super().__init__()
        if not float(gamma) >= 0:
            raise ValueError(f"gamma must be >= 0, got {gamma!r}")
        self.gamma = float(gamma)
        self.register_buffer("class_weights", None if class_weights is None
                             else torch.as_tensor(np.asarray(class_weights), dtype=torch.float32))
        self.check_weights = check_weights

    def forward(self, logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
        """Weighted mean focal loss; ``weights`` (N,) >= 0, ones if omitted."""
        weights = _weights_or_ones(weights, logits, targets, "FocalLoss", self.check_weights)
        logp = torch.log_softmax(logits, dim=1).gather(1, targets[:, None]).squeeze(1)
        loss = -((1.0 - logp.exp()).clamp_min(0.0) ** self.gamma) * logp
        if self.class_weights is not None:
            weights = weights * self.class_weights[targets]
        return _weighted_mean(loss, weights)


class ClassBalancedLoss(nn.Module):
    """Class-balanced softmax cross-entropy (Cui et al., CVPR 2019): class
    weights from the effective number of samples (see
    :func:`effective_number_weights`) times optional per-sample weights;
    ``sum_i w_i c_{y_i} CE_i / sum_i w_i c_{y_i}``.

    Parameters
    ----------
    class_counts : array-like of shape (K,)
        Training samples per class (absent classes get weight 0).
    beta : float
        In [0, 1); 0 gives plain cross-entropy, beta -> 1 inverse frequency.
    """

    def __init__(self, class_counts: Sequence[int] | np.ndarray, beta: float = 0.99, *,
                 check_weights: bool = True) -> None:
        super().__init__()
        self.beta = float(beta)
        self.register_buffer("class_weights", torch.from_numpy(effective_number_weights(class_counts, beta)))
        self.check_weights = check_weights

    def forward(self, logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
        """Class-balanced weighted mean cross-entropy.

        Raises
        ------
        ValueError
            If the weights are invalid, or every sample of the batch has weight 0
            (e.g. all of an absent class) -- instead of returning NaN.
        """
        weights = _weights_or_ones(weights, logits, targets, "ClassBalancedLoss", self.check_weights)
        if self.check_weights and not torch.compiler.is_compiling():
            if int(targets.max()) >= self.class_weights.shape[0]:
                raise ValueError(f"ClassBalancedLoss: targets reach class {int(targets.max())}, but class_counts "
                                 f"has {self.class_weights.shape[0]} classes")
        w = weights * self.class_weights[targets]
        if self.check_weights and not torch.compiler.is_compiling() and not bool((w > 0).any()):
            raise ValueError("ClassBalancedLoss: every sample of the batch belongs to a class with zero count")
        ce = F.cross_entropy(logits, targets, reduction="none")
        return (w * ce).sum() / w.sum().clamp_min(1e-12)


class GeneralizedCrossEntropy(nn.Module):
    """Generalized cross-entropy, a noise-robust loss (Zhang & Sabuncu, "Generalized Cross Entropy Loss for
    Training Deep Neural Networks with Noisy Labels", NeurIPS 2018, Eq. 6, the L_q loss):

    ``L_q(p, y) = (1 - p_y ** q) / q`` with ``p_y`` the softmax probability of the label,
    weighted mean ``sum_i w_i L_q,i / sum_i w_i``.

    ``q -> 0`` gives cross-entropy, ``q = 1`` the (noise-tolerant) mean absolute error; the paper's
    default is ``q = 0.7``. (The paper's truncated variant, which also prunes samples, is not used.)

    Parameters
    ----------
    q : float
        In (0, 1].
    """

    def __init__(self, q: float = 0.7, *, check_weights: bool = True) -> None:
        super().__init__()
        if not 0.0 < float(q) <= 1.0:
            raise ValueError(f"GeneralizedCrossEntropy q must be in (0, 1], got {q!r}")
        self.q = float(q)
        self.check_weights = check_weights

    def forward(self, logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
        """Weighted mean L_q loss; ``weights`` (N,) >= 0, ones if omitted."""
        weights = _weights_or_ones(weights, logits, targets, "GeneralizedCrossEntropy", self.check_weights)
        logp = torch.log_softmax(logits, dim=1).gather(1, targets[:, None]).squeeze(1)
        loss = (1.0 - torch.exp(self.q * logp)) / self.q                     # p_y ** q = exp(q log p_y)
        return _weighted_mean(loss, weights)


class SymmetricCrossEntropy(nn.Module):
    """Symmetric cross-entropy (Wang et al., "Symmetric Cross Entropy for Robust Learning with Noisy
    Labels", ICCV 2019, Eq. 4-6): ``alpha * CE + beta * RCE`` with the reverse cross-entropy
    ``RCE = -sum_k p_k log q_k`` of the prediction ``p`` against the one-hot label ``q``, ``log 0``
    clipped to ``A``; for a one-hot label this is ``RCE = -A (1 - p_y)``. Weighted mean over samples.

    Parameters
    ----------
    alpha, beta : float
        >= 0, not both 0 (the paper's CIFAR-10 setting: 0.1 and 1.0).
    log_zero : float
        ``A`` < 0 (the paper: -4).
    """

    def __init__(self, alpha: float = 0.1, beta: float = 1.0, *, log_zero: float = -4.0,
                 check_weights: bool = True) -> None:
        super().__init__()
        if not (float(alpha) >= 0 and float(beta) >= 0 and float(alpha) + float(beta) > 0):
            raise ValueError(f"SymmetricCrossEntropy alpha and beta must be >= 0 and not both 0, got "
                             f"{alpha!r}, {beta!r}")
        if not float(log_zero) < 0:
            raise ValueError(f"SymmetricCrossEntropy log_zero must be < 0, got {log_zero!r}")
        self.alpha, self.beta, self.log_zero = float(alpha), float(beta), float(log_zero)
        self.check_weights = check_weights

    def forward(self, logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
        """Weighted mean ``alpha * CE + beta * RCE``; ``weights`` (N,) >= 0, ones if omitted."""
        weights = _weights_or_ones(weights, logits, targets, "SymmetricCrossEntropy", self.check_weights)
        logp = torch.log_softmax(logits, dim=1).gather(1, targets[:, None]).squeeze(1)
        rce = -self.log_zero * (1.0 - logp.exp())
        loss = self.alpha * (-logp) + self.beta * rce
        return _weighted_mean(loss, weights)
