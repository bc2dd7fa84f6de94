"""FilterLoss weights from the sample-quality filter ("matching weight filter"):
score every target training window, sort it into a quality category, and
choose the weight of each category by cross-validation or learn it.

Source: Han, Zhong, Feng, "FilterLoss: A Transfer Learning Approach for
Communication Scene Recognition", ICCC 2025, arXiv 2602.07772, Sec. III-A (the
matching weight filter: high-value samples keep weight 1, boundary and noisy
samples get smaller weights, one per broad category, chosen by
cross-validation) and Sec. V (future work: learn the weights as trainable
parameters).

Algorithm (:func:`filter_weights`)
----------------------------------
Scoring (steps 1-4) is in :mod:`imutune.personalize.filter`, the weights (step 5) here.

1. **Embeddings.** The pretrained model embeds every target training window
   (``model.embed``, the penultimate features), once.
2. **Out-of-fold probabilities** (the model's opinion of a window without
   having fitted that window): the windows are split into ``n_folds`` (4)
   stratified folds; for each fold a model is fine-tuned *from the pretrained
   weights* on the other folds and predicts the held-out fold. With
   ``oof="full"`` (default) the whole network is fine-tuned end to end for
   ``oof_epochs`` (10) epochs, at least ``oof_min_steps`` (30) optimiser steps
   with class-balanced batches for few windows (the fold models see the user's data, so a user
   shift of the pretrained model does not read as label noise); with
   ``oof="head"`` the fold model is the pretrained classifier head fine-tuned
   on the frozen embeddings (full-batch gradient descent with momentum, L2
   pull towards the pretrained head; milliseconds).
3. **Two label-quality views.** (a) *kNN label agreement*: the share of a
   window's ``knn_k`` nearest neighbours (cosine similarity of the pretrained
   embeddings, the window itself excluded) that carry its label, divided by
   the most that can (``min(knn_k, n_label - 1)``); a window alone in its
   class gets 1. (b) *Confident-learning label issues* on the out-of-fold
   probabilities (``cleanlab.filter.find_label_issues``, per-class
   thresholds ``t_k`` = mean self-confidence of class k; Northcutt et al.,
   JAIR 2021), with ``QualityConfig.label_issues``.
4. **Categories** (:func:`~imutune.personalize.filter.categorize`), with
   ``p`` the out-of-fold probabilities, ``margin = p(label) - max_{k != label}
   p(k)`` and ``a`` the agreement; thresholds in ``QualityConfig``:

   * **noisy** -- ``a < agreement_noisy`` (0.5) *and* the probability view
     contradicts the label: the fold model predicts another class with
     probability >= ``noisy_confidence`` (0.6), or (``label_issues="agree"``,
     default) confident learning flags the window and the fold model predicts
     another class. ``"union"`` takes either view alone, ``"off"`` only the
     confidence rule (the original filter);
   * **high-value** -- the fold model predicts the label with
     ``margin >= boundary_margin`` (0.2) *and* ``a >= agreement_high`` (0.5);
   * **boundary** -- everything else (one view unsure or in conflict);
   * windows of a class with fewer than ``min_class_windows`` (3) windows are
     never noisy (at worst boundary): with so few examples neither view can
     tell a rare class from a wrong label;
   * *source view* (``QualityConfig.source_veto``; on for
     ``loss="filterloss-soft"`` at :data:`SOFT_SOURCE_VETO` = 0.5, off
     otherwise): a window whose label the pretrained model (its own head on the
     embeddings) gives probability >= ``source_veto`` is never noisy. That
     model never saw the user's labels, so it is a view the label noise cannot
     bend: where corrupted windows outnumber a rare class's clean ones, the fold
     models and the kNN vote learn the corrupted majority and flag the clean
     minority, and the pretrained model still recognizes them. It only protects
     (a user shift that makes it wrong cannot mark a window noisy on its own);
     with ``QualityConfig.source_flag`` (:data:`SOFT_SOURCE_FLAG` = 0.6 for
     ``"filterloss-soft"``) a window is also noisy when the pretrained model
     predicts another class with probability >= ``source_flag``, the fold model
     predicts another class too and the kNN agreement is below
     ``agreement_noisy`` (all three views against the label); with
     ``QualityConfig.change_points`` (on for ``"filterloss-soft"``, with the
     windows' recordings: ``groups``, time order within each) every change of
     label is moved to where the pretrained model finds it most likely
     (:func:`imutune.personalize.filter.change_point_flags`) and the windows
     it moves over are noisy: users tap late or early at activity changes.
     All three are off when the head was replaced for a new class set. An
     imutune extension (cf. the agreement of two networks in Co-teaching, Han
     et al., NeurIPS 2018), not in the FilterLoss paper.

   With ``stages=2`` the fold models are trained again with the first pass's
   weights (noisy windows out) and steps 2-4 repeat (two-stage re-scoring).

5. **Weights.** A window's weight is ``c[category] * f[label]``, with ``c``
   the category weights and ``f_k = (n_min / n_k) ** beta`` a class-balance
   factor (``beta = 0``: the paper's category-only weights); with *soft*
   weighting a boundary window's weight is also multiplied by its label
   quality ``min(1, p(label) / t_label)`` (:func:`quality_factors`), so
   per-window scores replace the flat boundary weight (the paper's stated
   limit of three flat categories).

   * ``mode="fixed"``: ``c``, ``beta`` and soft weighting as configured
     (``loss="filterloss-soft"``: :data:`SOFT_WEIGHTS`, noisy 0 / boundary 1
     times the soft factor / high-value 1, ``beta = 0``, and the source view:
     ``FilterConfig.source_soft`` makes a window's soft factor the larger of its
     out-of-fold label quality and the pretrained model's probability of its
     label);
   * ``mode="cv"`` (:func:`select_weights`): every ``(c, beta, soft)`` of a
     small grid is scored by stratified ``cv_folds``-fold cross-validation on
     the target training windows only, with the head fine-tuned on frozen
     embeddings under FilterLoss as the (cheap) proxy model; the pooled
     out-of-fold macro-F1 over *all* held-out windows against their observed
     labels picks the winner (so zeroing windows wrongly marked noisy costs
     the held-out windows they would have taught; ties: lower class-balanced
     held-out cross-entropy; ``cv_tolerance > 0`` prefers the earliest grid
     entry, i.e. the least filtering, within that much macro-F1 of the best);
   * ``mode="learned"`` (:func:`learn_weights`, the paper's future work):
     ``c = sigmoid(theta)`` (and ``beta = sigmoid(rho)``; with
     ``per_sample=True`` also one logit offset per window) are trainable
     parameters, updated by meta-gradient descent: the head fine-tune on each
     training part is unrolled differentiably and the class-balanced
     cross-entropy of the held-out windows not categorized noisy (a trusted
     meta set, as in Ren et al., "Learning to Reweight Examples for Robust
     Deep Learning", ICML 2018) is back-propagated to the weights.

   Category weights are finally divided by their maximum, so they lie in
   [0, 1] with the largest at 1 (FilterLoss normalizes by the weight sum, so
   only ratios matter).

Failure modes: fewer windows than ``n_folds`` or ``cv_folds`` raise
``ValueError``; classes without windows are ignored (they have no loss
terms); non-finite embeddings or probabilities raise ``ValueError``; a grid
entry that zeroes every training weight of a fold is skipped; all weights zero
in ``mode="fixed"`` raises ``ValueError``.

First version (:func:`categorize` without ``agreement``; ``loss="filterloss"`` in
:func:`imutune.personalize.finetune.finetune`): the categories come from class
probabilities alone -- out-of-fold probabilities of heads on the frozen
embeddings, not the pretrained model's own (which a user shift makes
confidently wrong on clean windows):

* **noisy** -- the model predicts another class than the label with
  probability >= ``noisy_confidence`` (confidently wrong);
* **high-value** -- the model predicts the label and the margin
  ``p(label) - max_{k != label} p(k)`` is >= ``boundary_margin``;
* **boundary** -- everything else (low margin or unconfidently wrong).
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from .. import _validation as V
from .filter import (
    BOUNDARY,
    CATEGORY_NAMES,
    HIGH_VALUE,
    NOISY,
    QualityConfig,
    _check_embeddings,
    _head_of,
    _Probe,
    categorize,
    category_counts,
    embed_windows,
    knn_agreement,
    oof_probabilities,
    oof_probabilities_full,
    stratified_folds,
)

__all__ = ["CategoryWeights", "sample_weights", "class_balance_factors", "FilterConfig", "FilterResult",
           "quality_factors",
           "DEFAULT_WEIGHT_GRID", "SOFT_WEIGHTS", "SOFT_SOURCE_VETO", "SOFT_SOURCE_FLAG",
           "select_weights", "learn_weights", "filter_weights", "score_embeddings",
           "HIGH_VALUE", "BOUNDARY", "NOISY", "CATEGORY_NAMES"]

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


def class_balance_factors(labels: np.ndarray, num_classes: int, exponent: float) -> np.ndarray:
    """Class-balance factor ``f_k = (n_min / n_k) ** exponent`` per class, in (0, 1].

    ``n_min`` is the smallest count among present classes; absent classes get
    1 (they have no samples to weight). ``exponent = 0`` gives all ones,
    ``exponent = 1`` inverse class frequency (scaled so the rarest class has 1).

    Returns
    -------
    np.ndarray
        Array of shape (K,), float64.
    """
    if not np.isfinite(exponent) or exponent < 0:
        raise ValueError(f"class-balance exponent must be finite and >= 0, got {exponent!r}")
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes).astype(np.float64)
    present = counts > 0
    f = np.ones(num_classes)
    if present.any():
        f[present] = (counts[present].min() / counts[present]) ** float(exponent)
    return f


# --------------------------------------------------------------------------- weights

#: Category weights of ``loss="filterloss-soft"``: high-value 1, boundary 1 (then scaled per window by its
#: soft label quality, :func:`quality_factors`), noisy 0. Fixed by the filter's design, not searched: a
#: window is noisy only when two independent views (kNN agreement of the embeddings and the out-of-fold
#: models or confident learning) contradict its label, so it carries no weight; an unsure window counts
#: as much as its label quality says.
SOFT_WEIGHTS = CategoryWeights(high_value=1.0, boundary=1.0, noisy=0.0)

#: Source veto of ``loss="filterloss-soft"`` (:attr:`imutune.personalize.filter.QualityConfig.source_veto`, with
#: ``FilterConfig.source_soft``): a window whose label the pretrained model gives at least this probability is
#: never noisy, and its soft factor is at least that probability. 0.5 was fixed before the development runs
#: (seeds the benchmark does not use; README, "The source view") and not searched.
SOFT_SOURCE_VETO = 0.5
#: Source flag of ``loss="filterloss-soft"`` (:attr:`imutune.personalize.filter.QualityConfig.source_flag`): a
#: window is also noisy when the pretrained model predicts another class with at least this probability, the fold
#: model predicts another class and the kNN agreement is low (the same 0.6 as ``QualityConfig.noisy_confidence``;
#: fixed before its development run, not searched).
SOFT_SOURCE_FLAG = 0.6

#: (high_value, boundary, noisy) weights searched by ``mode="cv"``, from "no filtering" to strong filtering.
DEFAULT_WEIGHT_GRID: tuple[tuple[float, float, float], ...] = (
    (1.0, 1.0, 1.0),    # plain cross-entropy (no filtering)
    (1.0, 1.0, 0.0),    # drop noisy windows only
    (1.0, 0.5, 0.1),    # CategoryWeights() default
    (1.0, 0.5, 0.0),
    (1.0, 0.25, 0.0),
    (0.5, 1.0, 0.1),    # emphasise boundary (hard) windows
)


@dataclass(frozen=True)
class FilterConfig:
    """Settings of the full sample-quality filter and its weight choice (module docstring)."""

    mode: str = "cv"                       # "fixed", "cv" (grid + cross-validation) or "learned" (meta-gradient)
    quality: QualityConfig = QualityConfig()  # category thresholds
    n_folds: int = 4                       # out-of-fold scoring folds
    oof: str = "full"                      # fold models: "full" (whole network, end to end) or "head" (frozen)
    oof_epochs: int = 10                   # epochs per fold model when oof="full"
    oof_batch_size: int = 32               # batch size when oof="full"
    oof_lr: float = 1e-3                   # learning rate when oof="full"
    fold_block_windows: int = 16           # oof="full" with the windows' recordings: folds deal runs of up to
                                           # this many consecutive windows (filter.blocked_folds); 1: per window
    # optimiser steps at least per fold model (TrainConfig.min_steps, balanced batches when it sets the budget):
    # 30 = 10 epochs x 3 batches, what a fold of 65+ windows gets anyway, so sets of >= 96 windows score as before
    # and a few-shot set (a new class set's fresh head: 10 steps on 15 windows left half of them "boundary") gets 30
    oof_min_steps: int = 30
    # fold models' step minimum when the head was replaced (a new class set; applied by personalize.finetune):
    # the fold models grow a random head, and 30 steps left 14 of 15 (n=15) / 34 of 96 (n=96) windows of an easy
    # new-class case "boundary"; 60 leaves 1 / 5 (tests/test_few_shot.py). Same-class sets never see it
    new_head_oof_min_steps: int = 60
    cv_folds: int = 3                      # folds of the weight search and of the meta-learning
    cv_tolerance: float = 0.0              # "cv": the earliest grid entry within this macro-F1 of the best wins
    soft_grid: tuple[bool, ...] = (False, True)  # "cv": boundary weights scaled per window by label quality
    fixed_soft: bool = False               # soft per-window weights for "fixed"
    # soft factor of a window: the larger of its out-of-fold label quality and the pretrained model's probability
    # of its label (needs the pretrained head on the target's classes; with QualityConfig.source_veto: the
    # source view of loss="filterloss-soft")
    source_soft: bool = False
    stages: int = 1                        # scoring passes; 2 re-scores with fold models trained on pass-1 weights
    weight_grid: tuple[tuple[float, float, float], ...] = DEFAULT_WEIGHT_GRID  # (high, boundary, noisy) for "cv"
    balance_grid: tuple[float, ...] = (0.0, 0.5, 1.0)  # class-balance exponents beta for "cv"
    fixed_weights: CategoryWeights = CategoryWeights()  # category weights for "fixed"
    fixed_balance: float = 0.0             # beta for "fixed"
    probe_steps: int = 100                 # gradient steps of every head fit (scoring, search, meta unroll)
    probe_lr: float = 0.2                  # head-fit step size (features scaled to unit mean square norm)
    probe_weight_decay: float = 1e-2       # L2 pull of the head towards its initial (pretrained) value
    meta_iterations: int = 20              # meta-gradient steps for "learned"
    meta_unroll_steps: int = 50            # head-fit steps unrolled (differentiably) per meta step
    meta_lr: float = 0.2                   # Adam step size on the weight logits
    per_sample: bool = False               # "learned": also one weight offset per window
    per_sample_l2: float = 1e-2            # "learned": L2 penalty on the per-window offsets
    seed: int = 0                          # folds and initialisations
    device: str = "auto"                   # "auto" (CUDA if present), "cpu" or "cuda"

    def __post_init__(self) -> None:
        V.check_choice("mode", self.mode, ("fixed", "cv", "learned"))
        V.check_choice("oof", self.oof, ("head", "full"))
        V.check_int_at_least("n_folds", self.n_folds, 2)
        V.check_int_at_least("cv_folds", self.cv_folds, 2)
        V.check_int_at_least("stages", self.stages, 1)
        V.check_in_range("cv_tolerance", self.cv_tolerance, 0.0, 1.0)
        if not self.soft_grid:
            raise ValueError("soft_grid must not be empty; use (False,) for category weights only")
        V.check_int_at_least("oof_epochs", self.oof_epochs, 1)
        V.check_int_at_least("fold_block_windows", self.fold_block_windows, 1)
        V.check_int_at_least("oof_min_steps", self.oof_min_steps, 0)
        V.check_int_at_least("new_head_oof_min_steps", self.new_head_oof_min_steps, 0)
        V.check_int_at_least("probe_steps", self.probe_steps, 1)
        V.check_int_at_least("meta_iterations", self.meta_iterations, 1)
        V.check_int_at_least("meta_unroll_steps", self.meta_unroll_steps, 1)
        V.check_positive("probe_lr", self.probe_lr, where="FilterConfig")
        V.check_positive("meta_lr", self.meta_lr, where="FilterConfig")
        if not self.weight_grid or not self.balance_grid:
            raise ValueError("weight_grid and balance_grid must not be empty")
        for t in self.weight_grid:
            if len(t) != 3:
                raise ValueError(f"weight_grid entries must be (high_value, boundary, noisy), got {t!r}")
            CategoryWeights(*t)
        for beta in (*self.balance_grid, self.fixed_balance):
            if not (np.isfinite(beta) and beta >= 0):
                raise ValueError(f"class-balance exponents must be finite and >= 0, got {beta!r}")


@dataclass(frozen=True, eq=False)
class FilterResult:
    """What :func:`filter_weights` found.

    ``sample_weights`` (N,) float32 in [0, 1] go to :class:`imutune.train.losses.FilterLoss`;
    ``categories`` (N,) int64; ``oof_probs`` (N, K); ``agreement`` (N,);
    ``class_factors`` (K,); ``search`` the CV table (mode "cv"); ``trace`` the
    meta-learning history (mode "learned").
    """

    sample_weights: np.ndarray
    categories: np.ndarray
    category_weights: CategoryWeights
    class_balance: float
    class_factors: np.ndarray
    oof_probs: np.ndarray
    agreement: np.ndarray
    mode: str
    scoring_seconds: float
    selection_seconds: float
    search: list[dict] = field(default_factory=list)
    trace: dict = field(default_factory=dict)
    issues: np.ndarray | None = None       # (N,) bool confident-learning label issues (None: not computed)
    quality_factors: np.ndarray | None = None  # (N,) soft label-quality factor in [0, 1]
    soft: bool = False                     # whether boundary weights were scaled by quality_factors

    def summary(self) -> dict[str, Any]:
        """JSON-able summary: mode, category counts and weights, beta, soft weighting, times."""
        out = {"filter_mode": self.mode, "category_counts": category_counts(self.categories),
               "category_weights": asdict(self.category_weights), "class_balance": float(self.class_balance),
               "soft_weights": bool(self.soft),
               "scoring_seconds": float(self.scoring_seconds), "selection_seconds": float(self.selection_seconds)}
        if self.issues is not None:
            out["label_issues"] = int(np.sum(self.issues))
        return out


def quality_factors(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Soft per-window label quality ``min(1, p(label) / t_label)`` in [0, 1], with ``t_k`` the
    confident-learning per-class threshold (mean ``p(k)`` of the windows labelled k; Northcutt et al.,
    JAIR 2021, Eq. 2): a window as self-confident as its class's average counts fully, less confident
    ones proportionally less. Array of shape (N,), float64."""
    from .filter import self_confidence_thresholds

    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    t = self_confidence_thresholds(p, y)
    return np.clip(p[np.arange(y.shape[0]), y] / np.maximum(t[y], 1e-12), 0.0, 1.0)


def _final_weights(categories: np.ndarray, labels: np.ndarray, cw: np.ndarray, factors: np.ndarray,
                   soft: np.ndarray | None = None) -> np.ndarray:
    """``c[category] * f[label]``, the boundary windows' weight also times ``soft`` when given."""
    w = cw[categories] * factors[labels]
    if soft is not None:
        w = np.where(categories == BOUNDARY, w * soft, w)
    return w.astype(np.float32)


def select_weights(embeddings: np.ndarray, labels: np.ndarray, categories: np.ndarray, num_classes: int, *,
                   config: FilterConfig = FilterConfig(), head: tuple[np.ndarray, np.ndarray] | None = None,
                   soft: np.ndarray | None = None) -> tuple[CategoryWeights, float, list[dict]]:
    """Choose category weights, class-balance exponent and soft weighting by stratified k-fold CV
    (module docstring, step 5).

    Every entry of ``config.weight_grid`` x ``config.balance_grid`` x ``config.soft_grid`` (soft entries
    only when ``soft`` factors are given) trains one head per fold (on frozen embeddings, FilterLoss with
    those weights) and is scored by the pooled out-of-fold macro-F1 over *all* held-out training windows
    against their observed labels: an entry that zeroes windows which were wrongly marked noisy loses the
    held-out windows it can no longer predict, so dropping data is not free. The winner is the earliest
    grid entry (the grid runs from no filtering to strong filtering) whose macro-F1 is within
    ``config.cv_tolerance`` of the best; within that set, the earliest of those with the best macro-F1 when
    the tolerance is 0 (ties: lower class-balanced held-out cross-entropy).

    Returns
    -------
    (CategoryWeights, float, list of dict)
        The chosen weights, the chosen beta, and one row per grid entry
        (``weights``, ``beta``, ``soft``, ``macro_f1``, ``balanced_ce``, ``valid``, ``chosen``).

    Raises
    ------
    ValueError
        If there are fewer windows than ``config.cv_folds`` or no grid entry is valid.
    """
    from ..metrics import macro_f1
    from ..train.loop import resolve_device

    z, y = _check_embeddings(embeddings, labels, num_classes)
    cats = _check_categories(categories, y.shape[0])
    folds = stratified_folds(y, config.cv_folds, seed=config.seed + 1)
    probe = _Probe(z, y, num_classes, head, steps=config.probe_steps, lr=config.probe_lr,
                   weight_decay=config.probe_weight_decay, device=resolve_device(config.device))
    softs = [sf for sf in config.soft_grid if not sf or soft is not None] or [False]
    combos = [(tuple(float(v) for v in t), float(beta), bool(sf))
              for sf in softs for beta in config.balance_grid for t in config.weight_grid]
    F = config.cv_folds
    rows_w = []
    valid = []
    for t, beta, sf in combos:
        w = _final_weights(cats, y, np.asarray(t), class_balance_factors(y, num_classes, beta),
                           soft if sf else None)
        ok = all(np.any(w[folds != f] > 0) for f in range(F))
        valid.append(ok)
        for f in range(F):
            rows_w.append(np.where(folds != f, w, 0.0) if ok else np.where(folds != f, 1.0, 0.0))
    wt = torch.as_tensor(np.stack(rows_w), dtype=torch.float32, device=probe.z.device)      # (G*F, N)
    with torch.no_grad():
        W, b = probe.fit(wt)
        logits = probe.logits(W, b).view(len(combos), F, *probe.onehot.shape)             # (G*F, N, K) -> (G, F, N, K)
    fidx = torch.as_tensor(folds, device=logits.device)
    held = logits[:, fidx, torch.arange(len(y), device=logits.device)]                     # (G, N, K) out-of-fold
    tmask = torch.ones(held.shape[:2], dtype=torch.bool, device=held.device)
    ce = probe.balanced_ce(held, tmask).cpu().numpy()
    pred = held.argmax(2).cpu().numpy()
    table = []
    for g, ((t, beta, sf), ok) in enumerate(zip(combos, valid)):
        f1 = macro_f1(y, pred[g], num_classes) if ok else float("nan")
        table.append({"weights": dict(zip(CATEGORY_NAMES, t)), "beta": beta, "soft": sf, "macro_f1": float(f1),
                      "balanced_ce": float(ce[g]) if ok else float("nan"), "valid": bool(ok), "chosen": False})
    scored = [g for g, r in enumerate(table) if r["valid"] and np.isfinite(r["macro_f1"])]
    if not scored:
        raise ValueError("no weight grid entry gives a positive weight to the training part of every fold; "
                         "add an entry with positive high_value/boundary weights")
    top = max(table[g]["macro_f1"] for g in scored)
    near = [g for g in scored if table[g]["macro_f1"] >= top - config.cv_tolerance - 1e-12]
    if config.cv_tolerance > 0:
        best = near[0]
    else:
        best = near[0]
        for g in near[1:]:
            if _better(table[g]["macro_f1"], table[g]["balanced_ce"], table[best]):
                best = g
    table[best]["chosen"] = True
    (t, beta, _sf) = combos[best]
    return CategoryWeights(*t), beta, table


def _better(f1: float, ce: float, row: dict, eps: float = 1e-9) -> bool:
    """Higher macro-F1 wins; within ``eps``, lower balanced cross-entropy."""
    if f1 > row["macro_f1"] + eps:
        return True
    return abs(f1 - row["macro_f1"]) <= eps and ce < row["balanced_ce"] - eps


def _check_categories(categories: np.ndarray, n: int) -> np.ndarray:
    c = np.asarray(categories, dtype=np.int64).ravel()
    if c.shape[0] != n:
        raise ValueError(f"categories has {c.shape[0]} entries; expected {n}")
    if c.size and (c.min() < 0 or c.max() > 2):
        raise ValueError(f"categories must be in {{0, 1, 2}}, got values in [{c.min()}, {c.max()}]")
    return c


def learn_weights(embeddings: np.ndarray, labels: np.ndarray, categories: np.ndarray, num_classes: int, *,
                  config: FilterConfig = FilterConfig(), head: tuple[np.ndarray, np.ndarray] | None = None
                  ) -> tuple[CategoryWeights, float, np.ndarray | None, dict]:
    """Learn category weights (and beta, and optionally per-window offsets) by meta-gradient descent.

    Parameters: ``c = sigmoid(theta)`` (3,), initialised at 0.88 each (no
    filtering), ``beta = sigmoid(rho)`` initialised at 0.5, and with
    ``config.per_sample`` one offset ``delta_i`` per window (``c`` becomes
    ``sigmoid(theta[cat_i] + delta_i)``, initialised at 0, L2-penalized). Each
    of ``config.meta_iterations`` Adam steps unrolls ``config.meta_unroll_steps``
    steps of the head fine-tune on the training part of each of
    ``config.cv_folds`` stratified folds (differentiably) and descends the
    class-balanced cross-entropy of the held-out windows not categorized noisy
    (the trusted meta set, as in Ren et al., "Learning to Reweight Examples for
    Robust Deep Learning", ICML 2018). Category weights with no window keep
    their initial value.

    Returns
    -------
    (CategoryWeights, float, np.ndarray or None, dict)
        Category weights scaled to max 1, beta, per-window weights (N,) in
        [0, 1] (``per_sample`` only; they already include category and class
        factors) and the trace (``meta_loss`` per iteration, initial/final values).

    Raises
    ------
    ValueError
        If there are fewer windows than ``config.cv_folds`` or the meta loss
        becomes NaN/Inf.
    """
    from ..train.loop import resolve_device

    z, y = _check_embeddings(embeddings, labels, num_classes)
    cats = _check_categories(categories, y.shape[0])
    dev = resolve_device(config.device)
    folds = stratified_folds(y, config.cv_folds, seed=config.seed + 1)
    probe = _Probe(z, y, num_classes, head, steps=config.meta_unroll_steps, lr=config.probe_lr,
                   weight_decay=config.probe_weight_decay, device=dev)
    F = config.cv_folds
    train_mask = torch.as_tensor(folds[None, :] != np.arange(F)[:, None], dtype=torch.float32, device=dev)
    trusted = torch.as_tensor(cats != NOISY if np.any(cats != NOISY) else np.ones(len(y), bool),
                              dtype=torch.float32, device=dev)
    cat_t = torch.as_tensor(cats, device=dev)
    counts = np.bincount(y, minlength=num_classes).astype(np.float64)
    log_ratio = torch.as_tensor(np.log(counts[counts > 0].min() / np.maximum(counts, 1)), dtype=torch.float32,
                                device=dev)[torch.as_tensor(y, device=dev)]               # log(n_min / n_y), (N,)
    theta = torch.full((3,), 2.0, device=dev, requires_grad=True)
    rho = torch.zeros((), device=dev, requires_grad=True)
    params = [theta, rho]
    delta = None
    if config.per_sample:
        delta = torch.zeros(len(y), device=dev, requires_grad=True)
        params.append(delta)
    opt = torch.optim.Adam(params, lr=config.meta_lr)

    def weights() -> torch.Tensor:
        logit = theta[cat_t] + (delta if delta is not None else 0.0)
        return torch.sigmoid(logit) * torch.exp(torch.sigmoid(rho) * log_ratio)

    history = []
    for it in range(config.meta_iterations):
        w = weights()
        W, b = probe.fit(train_mask * w[None, :])
        loss = probe.balanced_ce(probe.logits(W, b), (1.0 - train_mask) * trusted).mean()
        if delta is not None:
            loss = loss + config.per_sample_l2 * (delta ** 2).mean()
        if not torch.isfinite(loss):
            raise ValueError(f"meta loss became {loss.item()} at iteration {it + 1}; check the embeddings and "
                             "lower meta_lr")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        history.append(float(loss.detach()))
    with torch.no_grad():
        c = torch.sigmoid(theta).cpu().numpy().astype(np.float64)
        beta = float(torch.sigmoid(rho))
        per = None
        if delta is not None:
            wfin = weights().cpu().numpy().astype(np.float64)
            per = (wfin / max(wfin.max(), 1e-12)).astype(np.float32)
    cw = CategoryWeights(*np.clip(c / c.max(), 0.0, 1.0).tolist())
    trace = {"meta_loss": history, "initial": {"weights": [float(torch.sigmoid(torch.tensor(2.0)))] * 3, "beta": 0.5},
             "final": {"weights": c.tolist(), "beta": beta}}
    return cw, beta, per, trace


def score_embeddings(embeddings: np.ndarray, labels: np.ndarray, num_classes: int, *,
                     config: FilterConfig = FilterConfig(), head: tuple[np.ndarray, np.ndarray] | None = None,
                     oof_probs: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Steps 2-4 on given embeddings: ``(oof_probs (N, K), agreement (N,), categories (N,))``.

    ``oof_probs`` may be passed in (e.g. from ``oof="full"``); otherwise head fold models compute them.
    With ``config.quality.label_issues`` the confident-learning label issues of ``oof_probs`` join the
    noisy rule (:func:`imutune.personalize.filter.categorize`).
    """
    probs, agreement, cats, _ = _score_all(embeddings, labels, num_classes, config, head, oof_probs)
    return probs, agreement, cats


def _source_probs(z: np.ndarray, head: tuple[np.ndarray, np.ndarray] | None, config: FilterConfig
                  ) -> np.ndarray | None:
    """The pretrained model's class probabilities (N, K) from its head on the embeddings, when the source
    view is on (``config.quality.source_veto``, ``source_flag``, ``change_points`` or ``config.source_soft``)
    and the head has the target's classes; else None."""
    q = config.quality
    if head is None or (q.source_veto is None and q.source_flag is None and not q.change_points
                        and not config.source_soft):
        return None
    logits = z.astype(np.float64) @ head[0].T.astype(np.float64) + head[1].astype(np.float64)   # (N, D) -> (N, K)
    logits -= logits.max(axis=1, keepdims=True)
    e = np.exp(logits)
    return e / e.sum(axis=1, keepdims=True)


def _soft_factors(probs: np.ndarray, labels: np.ndarray, source_probs: np.ndarray | None,
                  config: FilterConfig) -> np.ndarray:
    """:func:`quality_factors` of the out-of-fold probabilities; with ``config.source_soft`` and the source
    probabilities, the larger of that and the pretrained model's probability of the label. (N,) float64 in
    [0, 1].

    The source's probability is used as it is, not divided by a per-class threshold as the out-of-fold one
    is: for a class the pretrained model never predicts on this user the threshold is near 0 and the ratio
    near 1, which would back every window of a class the source knows nothing about."""
    q = quality_factors(probs, labels)
    if config.source_soft and source_probs is not None:
        y = np.asarray(labels, dtype=np.int64)
        q = np.maximum(q, source_probs[np.arange(y.shape[0]), y])
    return q


def _score_all(embeddings, labels, num_classes, config, head, oof_probs, source_probs=None, groups=None):
    """:func:`score_embeddings` plus the label issues (N,) bool, or None when not used."""
    from .filter import label_issues

    z, y = _check_embeddings(embeddings, labels, num_classes)
    if oof_probs is None:
        oof_probs = oof_probabilities(z, y, num_classes, n_folds=config.n_folds, seed=config.seed, head=head,
                                      steps=config.probe_steps, lr=config.probe_lr,
                                      weight_decay=config.probe_weight_decay, device=config.device)
    agreement = knn_agreement(z, y, k=config.quality.knn_k)
    issues = label_issues(oof_probs, y) if config.quality.label_issues != "off" else None
    if source_probs is None:
        source_probs = _source_probs(z, head, config)
    cats = categorize(oof_probs, y, config=config.quality, agreement=agreement, issues=issues,
                      source_probs=source_probs, groups=groups)
    return oof_probs, agreement, cats, issues


def _oof_train_config(config: FilterConfig):
    from ..train.loop import TrainConfig

    return TrainConfig(epochs=config.oof_epochs, batch_size=config.oof_batch_size, lr=config.oof_lr,
                       seed=config.seed, device=config.device, min_steps=config.oof_min_steps, balanced_batches=True)


def filter_weights(model: nn.Module, x: np.ndarray, labels: np.ndarray, *, num_classes: int | None = None,
                   config: FilterConfig = FilterConfig(), groups: np.ndarray | None = None) -> FilterResult:
    """Run the whole filter (module docstring) and return FilterLoss weights for every window.

    Parameters
    ----------
    model : nn.Module
        The pretrained model (with ``embed``; its ``head`` is the start of
        every fold model and must have ``num_classes`` outputs for
        ``oof="full"``). Not modified.
    x : np.ndarray
        Array of shape (N, C, T), float32, normalized target training windows.
    labels : np.ndarray
        Array of shape (N,), int in [0, num_classes).
    num_classes : int, optional
        K; ``model.num_classes`` by default.
    config : FilterConfig
        Mode ("fixed", "cv", "learned"), thresholds, folds and grids.
    groups : np.ndarray, optional
        Array of shape (N,), int: the recording of each window (``Windows.recording``; windows in time
        order within it). Given, the out-of-fold models use blocked folds
        (:func:`imutune.personalize.filter.blocked_folds`, ``config.fold_block_windows``), so a window's
        overlapping neighbours never teach the model that judges it, and ``config.quality.change_points``
        can act (it needs the time order; without ``groups`` it is skipped).

    Returns
    -------
    FilterResult
        ``sample_weights`` (N,) float32 and everything behind them, with the
        scoring and selection times in seconds.

    Raises
    ------
    ValueError
        On fewer windows than folds, NaN/Inf windows or embeddings, labels out
        of range, or weights that are all zero.
    """
    t0 = time.perf_counter()
    K = int(num_classes if num_classes is not None else getattr(model, "num_classes"))
    x = np.asarray(x, dtype=np.float32)
    V.check_finite_array("x", x)
    y = V.check_labels("labels", labels, K, allow_unlabeled=False)
    if y.shape[0] != x.shape[0]:
        raise ValueError(f"labels has {y.shape[0]} entries and x {x.shape[0]} windows; expected equal")
    if groups is not None and np.asarray(groups).shape != (x.shape[0],):
        raise ValueError(f"groups has shape {np.asarray(groups).shape}; expected ({x.shape[0]},), one recording "
                         "index per window")
    for name, n in (("n_folds", config.n_folds), ("cv_folds", config.cv_folds if config.mode != "fixed" else 2)):
        if y.shape[0] < n:
            raise ValueError(f"got {y.shape[0]} target windows, fewer than {name}={n}; use fewer folds or "
                             "collect more windows")
    head = _head_of(model, K)
    z = embed_windows(model, x, device=config.device)
    oof = None
    if config.oof == "full":
        oof = oof_probabilities_full(model, x, y, K, n_folds=config.n_folds, seed=config.seed,
                                     train_config=_oof_train_config(config), groups=groups,
                                     block_windows=config.fold_block_windows)
    sp = _source_probs(z, head, config)                   # the pretrained model's view, or None
    probs, agreement, cats, issues = _score_all(z, y, K, config, head, oof, sp, groups)
    soft = _soft_factors(probs, y, sp, config)
    for _stage in range(1, config.stages):
        # two-stage: re-score with fold models trained on the first pass's weights (noisy windows out)
        w1 = _final_weights(cats, y, config.fixed_weights.as_array().astype(np.float64), np.ones(K), soft)
        if config.oof == "full":
            oof = oof_probabilities_full(model, x, y, K, n_folds=config.n_folds, seed=config.seed + 7,
                                         train_config=_oof_train_config(config), sample_weights=w1, groups=groups,
                                         block_windows=config.fold_block_windows)
        probs, agreement, cats, issues = _score_all(z, y, K, config, head, oof, sp, groups)
        soft = _soft_factors(probs, y, sp, config)
    t1 = time.perf_counter()
    search: list[dict] = []
    trace: dict = {}
    per = None
    use_soft = bool(config.fixed_soft)
    if config.mode == "fixed":
        cw, beta = config.fixed_weights, float(config.fixed_balance)
    elif config.mode == "cv":
        cw, beta, search = select_weights(z, y, cats, K, config=config, head=head, soft=soft)
        use_soft = bool(next(r["soft"] for r in search if r["chosen"]))
    else:
        cw, beta, per, trace = learn_weights(z, y, cats, K, config=config, head=head)
        use_soft = False
    factors = class_balance_factors(y, K, beta)
    w = per if per is not None else _final_weights(cats, y, cw.as_array().astype(np.float64), factors,
                                                   soft if use_soft else None)
    if not np.any(w > 0):
        raise ValueError(f"all sample weights are zero with {cw} (categories {category_counts(cats)}); "
                         "expected at least one positive weight")
    t2 = time.perf_counter()
    return FilterResult(np.asarray(w, np.float32), cats, cw, beta, factors, probs, agreement, config.mode,
                        t1 - t0, t2 - t1, search, trace, issues, soft, use_soft)
