"""Compatibility module: the sample-quality filter now lives in two modules,
:mod:`imutune.personalize.filter` (scoring: out-of-fold probabilities, kNN
agreement, confident-learning label issues, categories) and
:mod:`imutune.personalize.weights` (FilterLoss weights: fixed, cross-validated,
learned; :func:`filter_weights`). Every public name is re-exported here so
existing imports keep working; new code should import from the new homes.
"""
from __future__ import annotations

from .filter import (  # noqa: F401
    BOUNDARY,
    CATEGORY_NAMES,
    HIGH_VALUE,
    NOISY,
    QualityConfig,
    categorize,
    category_counts,
    embed_windows,
    knn_agreement,
    label_issues,
    oof_probabilities,
    oof_probabilities_full,
    self_confidence_thresholds,
    stratified_folds,
)
from .weights import (  # noqa: F401
    DEFAULT_WEIGHT_GRID,
    CategoryWeights,
    FilterConfig,
    FilterResult,
    class_balance_factors,
    filter_weights,
    learn_weights,
    quality_factors,
    sample_weights,
    score_embeddings,
    select_weights,
)

__all__ = ["HIGH_VALUE", "BOUNDARY", "NOISY", "CATEGORY_NAMES", "QualityConfig", "CategoryWeights",
           "categorize", "sample_weights", "category_counts", "knn_agreement", "stratified_folds",
           "class_balance_factors", "oof_probabilities", "oof_probabilities_full", "FilterConfig", "FilterResult",
           "DEFAULT_WEIGHT_GRID", "select_weights", "learn_weights", "filter_weights", "score_embeddings",
           "embed_windows", "label_issues", "self_confidence_thresholds", "quality_factors"]
