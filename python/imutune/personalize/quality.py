"""Sample-quality filter ("matching weight filter") and FilterLoss weights:
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
1. **Embeddings.** The pretrained model embeds every target training window
   (``model.embed``, the penultimate features), once.
2. **Out-of-fold probabilities** (the model's opinion of a window without
   having fitted that window): the windows are split into ``n_folds``
   stratified folds; for each fold a model is fine-tuned *from the pretrained
   weights* on the other folds and predicts the held-out fold. With
   ``oof="head"`` (default) the fold model is the pretrained classifier head
   fine-tuned on the frozen embeddings (full-batch gradient descent with
   momentum, L2 pull towards the pretrained head; milliseconds); with
   ``oof="full"`` the whole network is fine-tuned for ``oof_epochs`` epochs.
3. **kNN label agreement**: the share of a window's ``knn_k`` nearest
   neighbours (cosine similarity of the pretrained embeddings, the window
   itself excluded) that carry its label, divided by the most that can
   (``min(knn_k, n_label - 1)``), so a window of a rare class is not
   penalized for having few same-class neighbours. A window that is the only
   one of its class has no evidence either way and gets agreement 1.
4. **Categories** (:func:`categorize` with ``agreement``), with ``p`` the
   out-of-fold probabilities, ``margin = p(label) - max_{k != label} p(k)``
   and ``a`` the agreement; thresholds in :class:`QualityConfig`:

   * **noisy** -- the fold model predicts another class with probability
     >= ``noisy_confidence`` (0.6) *and* ``a < agreement_noisy`` (0.5): both
     views contradict the label (a flipped or wrong label);
   * **high-value** -- the fold model predicts the label with
     ``margin >= boundary_margin`` (0.2) *and* ``a >= agreement_high`` (0.5);
   * **boundary** -- everything else (one view unsure or in conflict);
   * windows of a class with fewer than ``min_class_windows`` (3) windows are
     never noisy (at worst boundary): with so few examples neither view can
     tell a rare class from a wrong label.

5. **Weights.** A window's weight is ``c[category] * f[label]``, with ``c``
   the category weights and ``f_k = (n_min / n_k) ** beta`` a class-balance
   factor (``beta = 0``: the paper's category-only weights).

   * ``mode="fixed"``: ``c`` and ``beta`` as configured;
   * ``mode="cv"`` (:func:`select_weights`): every ``(c, beta)`` of a small
     grid is scored by stratified ``cv_folds``-fold cross-validation on the
     target training windows only, with the head fine-tuned on frozen
     embeddings under FilterLoss as the (cheap) proxy model; the pooled
     out-of-fold macro-F1 on the held-out windows *not* categorized noisy
     (their labels are suspect, and scoring against them would reward fitting
     the noise) picks the winner (ties: lower class-balanced held-out
     cross-entropy on the same windows, then the earlier grid entry);
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

First version (:func:`categorize` without ``agreement``): the categories come
from class probabilities alone (for example of the pretrained model):

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

__all__ = ["HIGH_VALUE", "BOUNDARY", "NOISY", "CATEGORY_NAMES", "QualityConfig", "CategoryWeights",
           "categorize", "sample_weights", "category_counts", "knn_agreement", "stratified_folds",
           "class_balance_factors", "oof_probabilities", "FilterConfig", "FilterResult", "DEFAULT_WEIGHT_GRID",
           "select_weights", "learn_weights", "filter_weights", "score_embeddings", "embed_windows"]

HIGH_VALUE, BOUNDARY, NOISY = 0, 1, 2
CATEGORY_NAMES = ("high_value", "boundary", "noisy")


@dataclass(frozen=True)
class QualityConfig:
    """Thresholds of the sample-quality filter.

    ``boundary_margin`` and ``noisy_confidence`` are probabilities in [0, 1]
    and act on class probabilities (pretrained or out-of-fold); the agreement
    thresholds act on the kNN label agreement in [0, 1]; see
    :func:`categorize` for the rule.
    """

    boundary_margin: float = 0.2      # p(label) - best other p below this -> not high-value
    noisy_confidence: float = 0.6     # wrong prediction at least this confident -> noisy candidate
    knn_k: int = 10                   # neighbours in the pretrained embedding space
    agreement_high: float = 0.5       # kNN agreement at least this needed for high-value
    agreement_noisy: float = 0.5      # kNN agreement below this needed for noisy
    min_class_windows: int = 3        # classes with fewer windows are never marked noisy

    def __post_init__(self) -> None:
        V.check_in_range("boundary_margin", self.boundary_margin, 0.0, 1.0)
        V.check_in_range("noisy_confidence", self.noisy_confidence, 0.0, 1.0)
        V.check_int_at_least("knn_k", self.knn_k, 1)
        V.check_in_range("agreement_high", self.agreement_high, 0.0, 1.0)
        V.check_in_range("agreement_noisy", self.agreement_noisy, 0.0, 1.0)
        V.check_int_at_least("min_class_windows", self.min_class_windows, 1)


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


def categorize(probs: np.ndarray, labels: np.ndarray, *, config: QualityConfig = QualityConfig(),
               agreement: np.ndarray | None = None) -> np.ndarray:
    """Assign each sample a quality category.

    Without ``agreement`` this is the first-version rule on probabilities
    alone (module docstring, last section). With ``agreement`` (the kNN label
    agreement of :func:`knn_agreement`) it is the full filter rule (module
    docstring, step 4): noisy needs both a confident wrong prediction and low
    agreement, high-value a confident right prediction and high agreement, and
    classes with fewer than ``config.min_class_windows`` windows are never
    noisy.

    Parameters
    ----------
    probs : np.ndarray
        Array of shape (N, K): class probabilities, rows sum to 1 (for the
        full filter: out-of-fold probabilities).
    labels : np.ndarray
        Array of shape (N,), int in [0, K).
    config : QualityConfig
        Thresholds.
    agreement : np.ndarray, optional
        Array of shape (N,), float in [0, 1].

    Returns
    -------
    np.ndarray
        Array of shape (N,), int64 in {HIGH_VALUE=0, BOUNDARY=1, NOISY=2}.

    Raises
    ------
    ValueError
        If ``probs`` is not a finite probability matrix, labels are out of
        range, or ``agreement`` has the wrong shape, NaN or values outside [0, 1].
    """
    p, y = _check_probs(probs, labels)
    if agreement is None:
        return _compute_categories(p, y, config)
    a = np.asarray(agreement, dtype=np.float64)
    if a.shape != y.shape:
        raise ValueError(f"agreement must have shape {y.shape}, got {a.shape}")
    V.check_finite_array("agreement", a)
    if np.any(a < 0) or np.any(a > 1):
        raise ValueError("agreement must lie in [0, 1]")
    return _compute_categories_full(p, y, a, config)


def _margins(p: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n = p.shape[0]
    p_label = p[np.arange(n), y]
    others = p.copy()
    others[np.arange(n), y] = -np.inf
    best_other = others.max(axis=1) if p.shape[1] > 1 else np.zeros(n)
    return p_label, best_other, p.argmax(axis=1)


def _compute_categories(p: np.ndarray, y: np.ndarray, config: QualityConfig) -> np.ndarray:
    p_label, best_other, pred = _margins(p, y)
    cat = np.full(y.shape[0], BOUNDARY, dtype=np.int64)
    cat[(pred == y) & (p_label - best_other >= config.boundary_margin)] = HIGH_VALUE
    cat[(pred != y) & (best_other >= config.noisy_confidence)] = NOISY
    return cat


def _compute_categories_full(p: np.ndarray, y: np.ndarray, a: np.ndarray, config: QualityConfig) -> np.ndarray:
    p_label, best_other, pred = _margins(p, y)
    cat = np.full(y.shape[0], BOUNDARY, dtype=np.int64)
    cat[(pred == y) & (p_label - best_other >= config.boundary_margin) & (a >= config.agreement_high)] = HIGH_VALUE
    noisy = (pred != y) & (best_other >= config.noisy_confidence) & (a < config.agreement_noisy)
    counts = np.bincount(y, minlength=p.shape[1])
    noisy &= counts[y] >= config.min_class_windows
    cat[noisy] = NOISY
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


# --------------------------------------------------------------------------- scores

def stratified_folds(labels: np.ndarray, n_folds: int, *, seed: int = 0) -> np.ndarray:
    """Fold index in ``[0, n_folds)`` per sample, stratified by label.

    Each class is shuffled (seeded) and dealt round-robin from a random
    starting fold, so classes with fewer samples than folds (the tail of a
    long-tailed set) still land in different folds, without the warnings of
    scikit-learn's ``StratifiedKFold``.

    Returns
    -------
    np.ndarray
        Array of shape (N,), int64.

    Raises
    ------
    ValueError
        If ``n_folds`` < 2 or there are fewer samples than folds.
    """
    V.check_int_at_least("n_folds", n_folds, 2)
    y = np.asarray(labels, dtype=np.int64).ravel()
    if y.shape[0] < n_folds:
        raise ValueError(f"got {y.shape[0]} target windows, fewer than n_folds={n_folds}; use fewer folds or "
                         "collect more windows")
    rng = np.random.default_rng(seed)
    folds = np.empty(y.shape[0], dtype=np.int64)
    start = 0
    for k in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == k))
        folds[idx] = (start + np.arange(idx.size)) % n_folds
        start = (start + idx.size) % n_folds
    return folds


def knn_agreement(embeddings: np.ndarray, labels: np.ndarray, *, k: int = 10, chunk: int = 2048) -> np.ndarray:
    """kNN label agreement in [0, 1] per sample (module docstring, step 3).

    Cosine similarity on ``embeddings``; the sample itself is excluded; the
    count of same-label neighbours among the ``k`` nearest is divided by
    ``min(k, n_label - 1)``; a sample alone in its class gets 1.

    Parameters
    ----------
    embeddings : np.ndarray
        Array of shape (N, D), finite.
    labels : np.ndarray
        Array of shape (N,), int >= 0.

    Returns
    -------
    np.ndarray
        Array of shape (N,), float64.
    """
    z = torch.as_tensor(np.asarray(embeddings, dtype=np.float32))
    y = np.asarray(labels, dtype=np.int64).ravel()
    if z.ndim != 2 or z.shape[0] != y.shape[0]:
        raise ValueError(f"embeddings must have shape (N, D) with N = {y.shape[0]}, got {tuple(z.shape)}")
    V.check_finite_array("embeddings", z.numpy())
    V.check_int_at_least("k", k, 1)
    n = y.shape[0]
    if n < 2:
        return np.ones(n)
    kk = min(k, n - 1)
    zn = torch.nn.functional.normalize(z, dim=1)
    yt = torch.from_numpy(y)
    same = np.zeros(n)
    for s in range(0, n, chunk):
        sim = zn[s:s + chunk] @ zn.T                                  # (B, N)
        sim[torch.arange(sim.shape[0]), torch.arange(s, s + sim.shape[0])] = -np.inf
        nn_idx = sim.topk(kk, dim=1).indices                          # (B, kk)
        same[s:s + chunk] = (yt[nn_idx] == yt[s:s + chunk, None]).sum(1).numpy()
    n_label = np.bincount(y)[y]
    denom = np.minimum(kk, n_label - 1)
    return np.where(denom > 0, same / np.maximum(denom, 1), 1.0).clip(0.0, 1.0)


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


def embed_windows(model: nn.Module, x: np.ndarray, *, batch_size: int = 512, device: str = "auto") -> np.ndarray:
    """Penultimate features ``model.embed`` of normalized windows (N, C, T) -> (N, D) float32 (eval mode).

    Raises
    ------
    ValueError
        If the model has no ``embed`` method or the features are not finite.
    """
    from ..train.loop import resolve_device

    if not hasattr(model, "embed"):
        raise ValueError(f"{type(model).__name__} has no embed(x) method; the quality filter needs the "
                         "pretrained model's penultimate features")
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 3:
        raise ValueError(f"x must have shape (N, C, T), got {x.shape}")
    dev = resolve_device(device)
    was_training = model.training
    model.eval().to(dev)
    with torch.no_grad():
        out = [model.embed(torch.from_numpy(x[s:s + batch_size]).to(dev)).float().cpu().numpy()
               for s in range(0, x.shape[0], batch_size)]
    model.train(was_training)
    z = np.concatenate(out) if out else np.zeros((0, 0), np.float32)
    if not np.all(np.isfinite(z)):
        raise ValueError("the model's embeddings of the target windows contain NaN/Inf; check the inputs and "
                         "the pretrained weights")
    return z


# --------------------------------------------------------------------------- head probe (batched)

class _Probe:
    """Linear heads on frozen embeddings, many at once.

    Features are centred and scaled to unit mean square norm; the initial head
    (pretrained, if it fits) is rewritten so that its logits are unchanged:
    ``W z + b = (s W)((z - mu) / s) + (b + W mu)``.
    """

    def __init__(self, z: np.ndarray, y: np.ndarray, num_classes: int, head: tuple[np.ndarray, np.ndarray] | None,
                 *, steps: int, lr: float, weight_decay: float, device: torch.device, momentum: float = 0.9) -> None:
        zt = torch.as_tensor(np.asarray(z, dtype=np.float32), device=device)
        mu = zt.mean(0)
        scale = float(((zt - mu) ** 2).sum(1).mean().sqrt().clamp_min(1e-8))
        self.z = (zt - mu) / scale                                                   # (N, D)
        self.onehot = torch.nn.functional.one_hot(torch.as_tensor(y, device=device), num_classes).float()  # (N, K)
        self.y = np.asarray(y, dtype=np.int64)
        D, K = self.z.shape[1], num_classes
        if head is not None:
            W = torch.as_tensor(np.asarray(head[0], np.float32), device=device)      # (K, D) as in nn.Linear
            b = torch.as_tensor(np.asarray(head[1], np.float32), device=device)      # (K,)
            self.W0 = (W * scale).T.contiguous()                                     # (D, K)
            self.b0 = b + W @ mu
        else:
            self.W0 = torch.zeros(D, K, device=device)
            self.b0 = torch.zeros(K, device=device)
        self.steps, self.lr, self.wd, self.momentum = steps, lr, weight_decay, momentum

    def fit(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Fit B heads with sample weights ``w`` of shape (B, N) (FilterLoss: weighted mean CE),
        full batch, heavy-ball momentum, L2 pull towards the initial head. Differentiable in ``w``.

        Returns ``W`` (B, D, K) and ``b`` (B, K).
        """
        B = w.shape[0]
        W = self.W0.expand(B, -1, -1)
        b = self.b0.expand(B, -1)
        vW = torch.zeros_like(W)
        vb = torch.zeros_like(b)
        wn = (w / w.sum(1, keepdim=True).clamp_min(1e-12))[..., None]               # (B, N, 1)
        for _ in range(self.steps):
            logits = torch.einsum("nd,bdk->bnk", self.z, W) + b[:, None, :]
            g = wn * (torch.softmax(logits, dim=2) - self.onehot)                     # dL/dlogits (B, N, K)
            gW = torch.einsum("nd,bnk->bdk", self.z, g) + self.wd * (W - self.W0)
            vW = self.momentum * vW + gW
            vb = self.momentum * vb + g.sum(1)
            W = W - self.lr * vW
            b = b - self.lr * vb
        return W, b

    def logits(self, W: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """(B, N, K) logits of every head on every sample."""
        return torch.einsum("nd,bdk->bnk", self.z, W) + b[:, None, :]

    def balanced_ce(self, logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Class-balanced cross-entropy over the samples in ``mask`` (B, N): the mean over the classes
        present in each row's mask of the mean CE of that class. Returns (B,)."""
        ce = -(torch.log_softmax(logits, dim=2) * self.onehot).sum(2)                 # (B, N)
        m = mask.float()[..., None] * self.onehot                                      # (B, N, K)
        per_class_n = m.sum(1)                                                         # (B, K)
        per_class = (ce[..., None] * m).sum(1) / per_class_n.clamp_min(1)              # (B, K)
        present = (per_class_n > 0).float()
        return (per_class * present).sum(1) / present.sum(1).clamp_min(1)


def _head_of(model: nn.Module, num_classes: int) -> tuple[np.ndarray, np.ndarray] | None:
    head = getattr(model, "head", None)
    if isinstance(head, nn.Linear) and head.out_features == num_classes and head.bias is not None:
        return head.weight.detach().cpu().numpy(), head.bias.detach().cpu().numpy()
    return None


def oof_probabilities(embeddings: np.ndarray, labels: np.ndarray, num_classes: int, *, n_folds: int = 5,
                      seed: int = 0, head: tuple[np.ndarray, np.ndarray] | None = None, steps: int = 100,
                      lr: float = 0.2, weight_decay: float = 1e-2, device: str = "auto") -> np.ndarray:
    """Out-of-fold class probabilities from heads fine-tuned on frozen embeddings (step 2, ``oof="head"``).

    Parameters
    ----------
    embeddings : np.ndarray
        Array of shape (N, D), the pretrained model's features of the windows.
    labels : np.ndarray
        Array of shape (N,), int in [0, num_classes).
    head : (W (K, D), b (K,)), optional
        The pretrained classifier head every fold model starts from; zeros if omitted.

    Returns
    -------
    np.ndarray
        Array of shape (N, K), float64, rows sum to 1: row ``i`` comes from the
        fold model that did not see window ``i``.
    """
    from ..train.loop import resolve_device

    z, y = _check_embeddings(embeddings, labels, num_classes)
    folds = stratified_folds(y, n_folds, seed=seed)
    probe = _Probe(z, y, num_classes, head, steps=steps, lr=lr, weight_decay=weight_decay,
                   device=resolve_device(device))
    train_mask = torch.as_tensor(folds[None, :] != np.arange(n_folds)[:, None], dtype=torch.float32,
                                 device=probe.z.device)                                # (F, N)
    with torch.no_grad():
        W, b = probe.fit(train_mask)
        p = torch.softmax(probe.logits(W, b), dim=2)                                   # (F, N, K)
    p = p[torch.as_tensor(folds, device=p.device), torch.arange(len(y), device=p.device)]
    out = p.double().cpu().numpy()
    V.check_finite_array("out-of-fold probabilities", out)
    return out / out.sum(1, keepdims=True)


def _check_embeddings(embeddings, labels, num_classes) -> tuple[np.ndarray, np.ndarray]:
    z = np.asarray(embeddings, dtype=np.float32)
    if z.ndim != 2 or z.shape[0] == 0:
        raise ValueError(f"embeddings must have shape (N, D) with N > 0, got {z.shape}")
    V.check_finite_array("embeddings", z)
    y = V.check_labels("labels", labels, num_classes, allow_unlabeled=False)
    if y.shape[0] != z.shape[0]:
        raise ValueError(f"labels has {y.shape[0]} entries and embeddings {z.shape[0]} rows; expected equal")
    return z, y


def _oof_full(model: nn.Module, x: np.ndarray, y: np.ndarray, num_classes: int, config: "FilterConfig") -> np.ndarray:
    """Step 2 with ``oof="full"``: each fold's whole model fine-tuned from the pretrained weights."""
    import copy

    from ..train.loop import TrainConfig, predict_proba, train

    folds = stratified_folds(y, config.n_folds, seed=config.seed)
    probs = np.zeros((len(y), num_classes))
    cfg = TrainConfig(epochs=config.oof_epochs, batch_size=config.oof_batch_size, lr=config.oof_lr,
                      seed=config.seed, device=config.device)
    for f in range(config.n_folds):
        tr = folds != f
        m = copy.deepcopy(model)
        train(m, x[tr], y[tr], config=cfg, progress=False, desc=f"oof fold {f + 1}")
        probs[~tr] = predict_proba(m, x[~tr], device=config.device)
    V.check_finite_array("out-of-fold probabilities", probs)
    return probs / probs.sum(1, keepdims=True)


# --------------------------------------------------------------------------- weights

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
    n_folds: int = 5                       # out-of-fold scoring folds
    oof: str = "head"                      # fold models: "head" (frozen embeddings) or "full" (whole network)
    oof_epochs: int = 5                    # epochs per fold model when oof="full"
    oof_batch_size: int = 32               # batch size when oof="full"
    oof_lr: float = 1e-3                   # learning rate when oof="full"
    cv_folds: int = 3                      # folds of the weight search and of the meta-learning
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
        V.check_int_at_least("oof_epochs", self.oof_epochs, 1)
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

    ``sample_weights`` (N,) float32 in [0, 1] go to :class:`imutune.losses.FilterLoss`;
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

    def summary(self) -> dict[str, Any]:
        """JSON-able summary: mode, category counts and weights, beta, times."""
        return {"filter_mode": self.mode, "category_counts": category_counts(self.categories),
                "category_weights": asdict(self.category_weights), "class_balance": float(self.class_balance),
                "scoring_seconds": float(self.scoring_seconds), "selection_seconds": float(self.selection_seconds)}


def _final_weights(categories: np.ndarray, labels: np.ndarray, cw: np.ndarray, factors: np.ndarray) -> np.ndarray:
    return (cw[categories] * factors[labels]).astype(np.float32)


def select_weights(embeddings: np.ndarray, labels: np.ndarray, categories: np.ndarray, num_classes: int, *,
                   config: FilterConfig = FilterConfig(),
                   head: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[CategoryWeights, float, list[dict]]:
    """Choose category weights and class-balance exponent by stratified k-fold CV (module docstring, step 5).

    Every pair of ``config.weight_grid`` x ``config.balance_grid`` trains one
    head per fold (on frozen embeddings, FilterLoss with those weights) and is
    scored by the pooled out-of-fold macro-F1 on the target training windows.

    Returns
    -------
    (CategoryWeights, float, list of dict)
        The chosen weights, the chosen beta, and one row per grid entry
        (``weights``, ``beta``, ``macro_f1``, ``balanced_ce``, ``valid``, ``chosen``).

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
    combos = [(tuple(float(v) for v in t), float(beta)) for beta in config.balance_grid for t in config.weight_grid]
    F = config.cv_folds
    rows_w = []
    valid = []
    for t, beta in combos:
        w = _final_weights(cats, y, np.asarray(t), class_balance_factors(y, num_classes, beta))
        ok = all(np.any(w[folds != f] > 0) for f in range(F))
        valid.append(ok)
        for f in range(F):
            rows_w.append(np.where(folds != f, w, 0.0) if ok else np.where(folds != f, 1.0, 0.0))
    wt = torch.as_tensor(np.stack(rows_w), dtype=torch.float32, device=probe.z.device)      # (G*F, N)
    with torch.no_grad():
        W, b = probe.fit(wt)
        logits = probe.logits(W, b).view(len(combos), F, *probe.onehot.shape)             # (G, F, N, K)
    fidx = torch.as_tensor(folds, device=logits.device)
    held = logits[:, fidx, torch.arange(len(y), device=logits.device)]                     # (G, N, K) out-of-fold
    trusted = cats != NOISY if np.any(cats != NOISY) else np.ones_like(cats, dtype=bool)
    tmask = torch.as_tensor(trusted, device=held.device)[None, :].expand(held.shape[:2])
    ce = probe.balanced_ce(held, tmask).cpu().numpy()
    pred = held.argmax(2).cpu().numpy()
    table, best = [], None
    for g, ((t, beta), ok) in enumerate(zip(combos, valid)):
        f1 = macro_f1(y[trusted], pred[g][trusted], num_classes) if ok else float("nan")
        table.append({"weights": dict(zip(CATEGORY_NAMES, t)), "beta": beta, "macro_f1": float(f1),
                      "balanced_ce": float(ce[g]) if ok else float("nan"), "valid": bool(ok), "chosen": False})
        if ok and np.isfinite(f1) and (best is None or _better(f1, ce[g], table[best])):
            best = g
    if best is None:
        raise ValueError("no weight grid entry gives a positive weight to the training part of every fold; "
                         "add an entry with positive high_value/boundary weights")
    table[best]["chosen"] = True
    (t, beta) = combos[best]
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
    """
    z, y = _check_embeddings(embeddings, labels, num_classes)
    if oof_probs is None:
        oof_probs = oof_probabilities(z, y, num_classes, n_folds=config.n_folds, seed=config.seed, head=head,
                                      steps=config.probe_steps, lr=config.probe_lr,
                                      weight_decay=config.probe_weight_decay, device=config.device)
    agreement = knn_agreement(z, y, k=config.quality.knn_k)
    cats = categorize(oof_probs, y, config=config.quality, agreement=agreement)
    return oof_probs, agreement, cats


def filter_weights(model: nn.Module, x: np.ndarray, labels: np.ndarray, *, num_classes: int | None = None,
                   config: FilterConfig = FilterConfig()) -> FilterResult:
    """Run the whole filter (module docstring) and return FilterLoss weights for every window.

    Parameters
    ----------
    model : nn.Module
        The pretrained model (with ``embed``; its ``head`` is the start of
        every fold model when it has ``num_classes`` outputs). Not modified.
    x : np.ndarray
        Array of shape (N, C, T), float32, normalized target training windows.
    labels : np.ndarray
        Array of shape (N,), int in [0, num_classes).
    num_classes : int, optional
        K; ``model.num_classes`` by default.
    config : FilterConfig
        Mode ("fixed", "cv", "learned"), thresholds, folds and grids.

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
    for name, n in (("n_folds", config.n_folds), ("cv_folds", config.cv_folds if config.mode != "fixed" else 2)):
        if y.shape[0] < n:
            raise ValueError(f"got {y.shape[0]} target windows, fewer than {name}={n}; use fewer folds or "
                             "collect more windows")
    head = _head_of(model, K)
    z = embed_windows(model, x, device=config.device)
    oof = _oof_full(model, x, y, K, config) if config.oof == "full" else None
    probs, agreement, cats = score_embeddings(z, y, K, config=config, head=head, oof_probs=oof)
    t1 = time.perf_counter()
    search: list[dict] = []
    trace: dict = {}
    per = None
    if config.mode == "fixed":
        cw, beta = config.fixed_weights, float(config.fixed_balance)
    elif config.mode == "cv":
        cw, beta, search = select_weights(z, y, cats, K, config=config, head=head)
    else:
        cw, beta, per, trace = learn_weights(z, y, cats, K, config=config, head=head)
    factors = class_balance_factors(y, K, beta)
    w = per if per is not None else _final_weights(cats, y, cw.as_array().astype(np.float64), factors)
    if not np.any(w > 0):
        raise ValueError(f"all sample weights are zero with {cw} (categories {category_counts(cats)}); "
                         "expected at least one positive weight")
    t2 = time.perf_counter()
    return FilterResult(np.asarray(w, np.float32), cats, cw, beta, factors, probs, agreement, config.mode,
                        t1 - t0, t2 - t1, search, trace)
