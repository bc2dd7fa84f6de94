"""Losses, all in one place. Every loss maps ``logits`` (N, K) float32 and
``targets`` (N,) int64 to a scalar tensor.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["FilterLoss", "WeightedCrossEntropy"]


class FilterLoss(nn.Module):
    """Per-sample weighted cross-entropy (Han, Zhong, Feng, "FilterLoss: A
    Transfer Learning Approach for Communication Scene Recognition", ICCC 2025,
    arXiv 2602.07772, Sec. III-B).

    ``loss = sum_i w_i * CE(logits_i, y_i) / sum_i w_i``

    The weights come from the sample-quality filter (:mod:`imutune.quality`):
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
