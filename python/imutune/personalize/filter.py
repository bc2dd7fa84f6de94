"""Sample-quality filter, scoring side: embeddings, out-of-fold probabilities, kNN label
agreement, confident-learning label issues and the quality categories of every target
training window. The weights built on these scores are in :mod:`imutune.personalize.weights`
(whose module docstring describes the whole algorithm, steps 1-5).

Source: Han, Zhong, Feng, "FilterLoss: A Transfer Learning Approach for Communication Scene
Recognition", ICCC 2025, arXiv 2602.07772, Sec. III-A (the matching weight filter); label
issues by confident learning: Northcutt, Jiang, Chuang, "Confident Learning: Estimating
Uncertainty in Dataset Labels", JAIR 2021 (``cleanlab.filter.find_label_issues``).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .. import _validation as V

__all__ = ["HIGH_VALUE", "BOUNDARY", "NOISY", "CATEGORY_NAMES", "QualityConfig", "categorize", "category_counts",
           "knn_agreement", "stratified_folds", "blocked_folds", "oof_probabilities", "oof_probabilities_full", "embed_windows",
           "label_issues", "self_confidence_thresholds", "change_point_flags"]

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
    label_issues: str = "agree"       # confident-learning issues in the noisy rule: "off", "agree", "union"
    # full filter: a window whose label the pretrained (source) model gives at least this probability is never
    # noisy (that model never saw the user's labels: an independent view that only protects); None: off
    source_veto: float | None = None
    # full filter: a window is also noisy when the pretrained model predicts another class with at least this
    # probability, the fold model predicts another class too and the kNN agreement is low; None: off
    source_flag: float | None = None
    # full filter, windows in time order per recording (``groups``): every change of label is moved to the position
    # the pretrained model finds most likely (change_point_flags) and the windows it moves over are noisy (users tap
    # late or early at activity changes); None or False: off
    change_points: bool | None = None

    def __post_init__(self) -> None:
        V.check_in_range("boundary_margin", self.boundary_margin, 0.0, 1.0)
        V.check_in_range("noisy_confidence", self.noisy_confidence, 0.0, 1.0)
        V.check_int_at_least("knn_k", self.knn_k, 1)
        V.check_in_range("agreement_high", self.agreement_high, 0.0, 1.0)
        V.check_in_range("agreement_noisy", self.agreement_noisy, 0.0, 1.0)
        V.check_int_at_least("min_class_windows", self.min_class_windows, 1)
        V.check_choice("label_issues", self.label_issues, ("off", "agree", "union"))
        for name in ("source_veto", "source_flag"):
            if getattr(self, name) is not None:
                V.check_in_range(name, getattr(self, name), 0.0, 1.0)
        if self.change_points is not None and not isinstance(self.change_points, bool):
            raise ValueError(f"change_points must be True, False or None (the loss decides), got "
                             f"{self.change_points!r}")


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
               agreement: np.ndarray | None = None, issues: np.ndarray | None = None,
               source_probs: np.ndarray | None = None, groups: np.ndarray | None = None) -> np.ndarray:
    """Assign each sample a quality category.

    Without ``agreement`` this is the first-version rule on probabilities
    alone (module docstring, last section). With ``agreement`` (the kNN label
    agreement of :func:`knn_agreement`) it is the full filter rule (module
    docstring, step 4): noisy needs a confident wrong prediction and low
    agreement, or (with ``issues`` and ``config.label_issues``) a
    confident-learning label issue on which the fold model disagrees with the
    label; high-value a confident right prediction and high agreement; classes
    with fewer than ``config.min_class_windows`` windows are never noisy; with
    ``source_probs`` and ``config.source_veto``, neither is a window whose label
    the pretrained model gives probability >= ``source_veto``; with
    ``config.source_flag``, a window is also noisy when the pretrained model
    predicts another class with probability >= ``source_flag``, the fold model
    predicts another class and the agreement is below ``agreement_noisy``; with
    ``config.change_points``, ``source_probs`` and ``groups``, the windows
    :func:`change_point_flags` finds under the pretrained model are noisy too
    (the veto and ``min_class_windows`` still apply).

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
    issues : np.ndarray, optional
        Array of shape (N,), bool: confident-learning label issues
        (:func:`label_issues`); used only with ``agreement``.
    source_probs : np.ndarray, optional
        Array of shape (N, K): the pretrained (source) model's class
        probabilities, rows sum to 1; used only with ``agreement`` and
        ``config.source_veto``, ``config.source_flag`` or ``config.change_points``.
    groups : np.ndarray, optional
        Array of shape (N,), int: the recording of each window, windows in
        time order within it; used only with ``config.change_points``.

    Returns
    -------
    np.ndarray
        Array of shape (N,), int64 in {HIGH_VALUE=0, BOUNDARY=1, NOISY=2}.

    Raises
    ------
    ValueError
        If ``probs`` (or ``source_probs``) is not a finite probability matrix of
        the same shape, labels are out of range, or ``agreement`` has the wrong
        shape, NaN or values outside [0, 1], or ``groups`` has the wrong shape.
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
    iss = None
    if issues is not None and config.label_issues != "off":
        iss = np.asarray(issues, dtype=bool).ravel()
        if iss.shape != y.shape:
            raise ValueError(f"issues must have shape {y.shape}, got {iss.shape}")
    src = None
    if source_probs is not None and (config.source_veto is not None or config.source_flag is not None
                                     or config.change_points):
        if np.shape(source_probs) != p.shape:
            raise ValueError(f"source_probs must have shape {p.shape} like probs, got {np.shape(source_probs)}")
        src, _ = _check_probs(source_probs, y)
    moved = None
    if config.change_points and src is not None and groups is not None:
        moved = change_point_flags(y, src, groups)
    return _compute_categories_full(p, y, a, config, iss, src, moved)


def change_point_flags(labels: np.ndarray, probs: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Windows whose label a maximum-likelihood re-placement of the user's activity changes would flip.

    A user labels an activity change a few seconds late or early, so the windows next to each change of
    label are the likely wrong ones (:mod:`imutune.signal.label_noise`, ``boundary`` and ``shift``). Per
    recording (windows in time order), every change between two runs of labels ``a | b`` is moved to the
    position ``c`` that maximizes ``sum log p(a)`` over the windows before ``c`` plus ``sum log p(b)`` over
    those from ``c``, with ``c`` within the inner half of each run (a run never vanishes) and the user's
    position kept on ties; the windows between the user's change and ``c`` are flagged. A change inside a
    run of one window (a lone label, e.g. a random mistake) cannot move that window's label.

    This is imutune's extension of the FilterLoss filter (Han, Zhong, Feng, ICCC 2025, Sec. III-A, which
    scores windows one by one); with the veto, the flag and the soft factor it makes up the source view of
    ``loss="filterloss-soft"``
    (:attr:`QualityConfig.change_points`; ``probs`` are the pretrained model's, which never saw the
    user's labels).

    Parameters
    ----------
    labels : np.ndarray
        Array of shape (N,), int in [0, K): the user's labels.
    probs : np.ndarray
        Array of shape (N, K): class probabilities, rows sum to 1.
    groups : np.ndarray
        Array of shape (N,), int: the recording of each window; windows in time order within each
        recording (as :func:`imutune.signal.windows.make_windows` emits them; a subset keeps the order).

    Returns
    -------
    np.ndarray
        Array of shape (N,), bool.

    Raises
    ------
    ValueError
        If ``probs`` is not a finite probability matrix, labels are out of range, or ``groups`` does not
        have shape (N,).
    """
    p, y = _check_probs(probs, labels)
    g = np.asarray(groups)
    if g.shape != y.shape:
        raise ValueError(f"groups must have shape {y.shape}, one recording index per window, got {g.shape}")
    return _compute_change_point_flags(y, np.log(np.clip(p, 1e-6, 1.0)), g)


def _compute_change_point_flags(y: np.ndarray, logp: np.ndarray, groups: np.ndarray) -> np.ndarray:
    flags = np.zeros(y.shape[0], dtype=bool)
    for g in np.unique(groups):
        idx = np.flatnonzero(groups == g)
        yy, lp = y[idx], logp[idx]
        cuts = np.flatnonzero(np.diff(yy) != 0) + 1
        starts, ends = np.r_[0, cuts], np.r_[cuts, yy.shape[0]]
        for (s1, e1), (s2, e2) in zip(zip(starts[:-1], ends[:-1]), zip(starts[1:], ends[1:])):
            a, b = yy[s1], yy[s2]
            lo, hi = e1 - (e1 - s1) // 2, s2 + (e2 - s2) // 2       # the inner half of each run
            d = lp[lo:hi, b] - lp[lo:hi, a]                          # (hi - lo,) log-likelihood of b over a
            k = e1 - lo                                              # the user's change, as an offset from lo
            # gain of moving the change k' windows earlier (they become b) or later (they become a),
            # summed outward from the user's change, so "no evidence" is a gain of exactly 0
            gains = np.r_[0.0, np.cumsum(d[:k][::-1]), np.cumsum(-d[k:])]
            j = int(gains.argmax())                                  # the first maximum: 0 (no move) on ties
            if gains[j] > 0:
                c = e1 - j if j <= k else e1 + (j - k)
                flags[idx[min(c, e1):max(c, e1)]] = True
    return flags


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


def _compute_categories_full(p: np.ndarray, y: np.ndarray, a: np.ndarray, config: QualityConfig,
                             issues: np.ndarray | None = None, source_p: np.ndarray | None = None,
                             moved: np.ndarray | None = None) -> np.ndarray:
    p_label, best_other, pred = _margins(p, y)
    cat = np.full(y.shape[0], BOUNDARY, dtype=np.int64)
    cat[(pred == y) & (p_label - best_other >= config.boundary_margin) & (a >= config.agreement_high)] = HIGH_VALUE
    noisy = (pred != y) & (best_other >= config.noisy_confidence) & (a < config.agreement_noisy)
    if issues is not None and config.label_issues == "agree":   # either probability view, kNN must agree
        noisy |= issues & (pred != y) & (a < config.agreement_noisy)
    elif issues is not None and config.label_issues == "union":  # either view alone
        noisy |= issues & (pred != y)
    if source_p is not None and config.source_flag is not None:   # the pretrained model and the fold model disagree
        src_label = source_p[np.arange(y.shape[0]), y]              # with the label, and so do the neighbours
        src_other = np.where(np.eye(p.shape[1], dtype=bool)[y], -np.inf, source_p).max(axis=1)
        noisy |= (pred != y) & (src_other >= config.source_flag) & (src_other > src_label) & (a < config.agreement_noisy)
    if moved is not None:                                          # a re-placed activity change passes over it
        noisy |= moved
    counts = np.bincount(y, minlength=p.shape[1])
    noisy &= counts[y] >= config.min_class_windows
    if source_p is not None and config.source_veto is not None:   # the pretrained model backs the label: protected
        noisy &= source_p[np.arange(y.shape[0]), y] < config.source_veto
    cat[noisy] = NOISY
    return cat


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
    y = _fold_labels(labels, n_folds)
    return _deal_runs(y, n_folds, seed, lambda idx: list(idx[:, None]))   # every window its own run


def _fold_labels(labels: np.ndarray, n_folds: int) -> np.ndarray:
    """``labels`` as (N,) int64, checked against ``n_folds`` (>= 2, at most N)."""
    V.check_int_at_least("n_folds", n_folds, 2)
    y = np.asarray(labels, dtype=np.int64).ravel()
    if y.shape[0] < n_folds:
        raise ValueError(f"got {y.shape[0]} target windows, fewer than n_folds={n_folds}; use fewer folds or "
                         "collect more windows")
    return y


def _deal_runs(y: np.ndarray, n_folds: int, seed: int, runs_of) -> np.ndarray:
    """Fold per window: per class, the runs ``runs_of(class indices)`` are shuffled (seeded) and dealt
    round-robin, each class starting where the previous one stopped."""
    rng = np.random.default_rng(seed)
    folds = np.empty(y.shape[0], dtype=np.int64)
    start = 0
    for k in np.unique(y):
        runs = runs_of(np.flatnonzero(y == k))
        for j, r in enumerate(rng.permutation(len(runs))):
            folds[runs[r]] = (start + j) % n_folds
        start = (start + len(runs)) % n_folds
    return folds


def blocked_folds(labels: np.ndarray, groups: np.ndarray, n_folds: int, *, block_windows: int = 16,
                  seed: int = 0) -> np.ndarray:
    """Fold index in ``[0, n_folds)`` per window, dealing contiguous runs of windows, stratified by label.

    Overlapping windows of one recording share samples, and a mislabelled stretch of a stream (a label
    tapped late) is a run of near-identical windows with the same wrong label: with folds drawn window by
    window, a fold model trains on the overlapping neighbours of every held-out window and returns their
    label, right or wrong (the leakage of random splits of time series; e.g. Bergmeir & Benitez,
    Information Sciences 2012, blocked cross-validation). Here the windows of each class, in their given
    order (time order within a recording, as :func:`imutune.signal.windows.make_windows` and
    ``Windows.subset`` with sorted indices keep it), are cut into runs of at most ``b_k =
    clip(n_k // (2 * n_folds), 1, block_windows)`` consecutive windows of the same group (recording);
    the runs are shuffled (seeded) and dealt round-robin like :func:`stratified_folds`, so a class of
    ``n_k`` windows still spreads over the folds (``b_k = 1``, window by window, for a rare class).

    Parameters
    ----------
    labels : np.ndarray
        Array of shape (N,), int: the (observed) label of each window.
    groups : np.ndarray
        Array of shape (N,), int: the recording of each window (``Windows.recording``).
    n_folds : int
        Number of folds, >= 2.
    block_windows : int
        Longest run, >= 1 (16 windows = 8 s at the default 0.5 s hop); 1 gives per-window folds.

    Returns
    -------
    np.ndarray
        Array of shape (N,), int64.

    Raises
    ------
    ValueError
        If ``n_folds`` < 2, ``block_windows`` < 1, fewer windows than folds, or ``groups`` and ``labels``
        differ in length.
    """
    V.check_int_at_least("block_windows", block_windows, 1)
    g = np.asarray(groups).ravel()
    n = np.asarray(labels).ravel().shape[0]
    if g.shape[0] != n:
        raise ValueError(f"groups has {g.shape[0]} entries and labels {n}; expected one group per window")
    y = _fold_labels(labels, n_folds)

    def runs_of(idx: np.ndarray) -> list[np.ndarray]:
        b = int(np.clip(idx.size // (2 * n_folds), 1, block_windows))
        parts = np.split(idx, np.flatnonzero(np.diff(g[idx]) != 0) + 1)        # never across recordings
        return [part[i:i + b] for part in parts for i in range(0, part.size, b)]

    return _deal_runs(y, n_folds, seed, runs_of)


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


def oof_probabilities_full(model: nn.Module, x: np.ndarray, labels: np.ndarray, num_classes: int, *,
                           n_folds: int = 4, seed: int = 0, train_config=None, sample_weights: np.ndarray | None = None,
                           groups: np.ndarray | None = None, block_windows: int = 16) -> np.ndarray:
    """Out-of-fold class probabilities from whole networks fine-tuned end to end (step 2, ``oof="full"``).

    For each of ``n_folds`` stratified folds a copy of ``model`` (the pretrained network, its head
    already sized to ``num_classes``) is fine-tuned on the other folds with ``train_config`` and predicts
    the held-out fold. This is also what confident learning needs (Northcutt et al., JAIR 2021, Sec. 2:
    out-of-sample predicted probabilities).

    Parameters
    ----------
    model : nn.Module
        Pretrained model; not modified.
    x : np.ndarray
        Array of shape (N, C, T), float32, normalized windows.
    labels : np.ndarray
        Array of shape (N,), int in [0, num_classes).
    train_config : imutune.train.loop.TrainConfig, optional
        Fold fine-tuning settings (default ``TrainConfig(epochs=10, batch_size=32, lr=1e-3)``);
        its seed is offset by the fold index.
    sample_weights : np.ndarray, optional
        Array of shape (N,), >= 0: FilterLoss weights of the fold training (two-stage scoring).
    groups : np.ndarray, optional
        Array of shape (N,), int: the recording of each window, in time order within it. Given, the folds
        are :func:`blocked_folds` of up to ``block_windows`` consecutive windows (no fold model trains on
        the overlapping neighbours of the windows it judges); None: :func:`stratified_folds`.
    block_windows : int
        Longest run of :func:`blocked_folds` (with ``groups``).

    Returns
    -------
    np.ndarray
        Array of shape (N, K), float64, rows sum to 1.

    Raises
    ------
    ValueError
        If there are fewer windows than folds or the probabilities are not finite.
    """
    import copy
    from dataclasses import replace

    from ..train.loop import TrainConfig, predict_proba, train

    y = V.check_labels("labels", labels, num_classes, allow_unlabeled=False)
    folds = (stratified_folds(y, n_folds, seed=seed) if groups is None
             else blocked_folds(y, groups, n_folds, block_windows=block_windows, seed=seed))
    cfg = train_config if train_config is not None else TrainConfig(epochs=10, batch_size=32, lr=1e-3)
    key = _oof_key(model, x, y, num_classes, n_folds, seed, cfg, sample_weights, folds)
    if key in _OOF_CACHE:
        return _OOF_CACHE[key].copy()
    probs = np.zeros((len(y), num_classes))
    w = None if sample_weights is None else np.asarray(sample_weights, np.float32)
    for f in range(n_folds):
        tr = folds != f
        m = copy.deepcopy(model)
        wf = None if w is None else w[tr]
        if wf is not None and not np.any(wf > 0):
            wf = None
        train(m, x[tr], y[tr], config=replace(cfg, seed=cfg.seed + 1000 * (f + 1)), sample_weights=wf,
              progress=False, desc=f"oof fold {f + 1}")
        probs[~tr] = predict_proba(m, x[~tr], device=cfg.device)
    V.check_finite_array("out-of-fold probabilities", probs)
    out = probs / probs.sum(1, keepdims=True)
    _OOF_CACHE[key] = out
    while len(_OOF_CACHE) > 4:
        _OOF_CACHE.pop(next(iter(_OOF_CACHE)))
    return out.copy()


#: Memo of :func:`oof_probabilities_full` (a pure function of its inputs): the FilterLoss variants and the
#: cleanlab baseline score the same windows with the same fold models, so the benchmark computes them once.
_OOF_CACHE: dict[str, np.ndarray] = {}


def _oof_key(model, x, y, num_classes, n_folds, seed, cfg, sample_weights, folds) -> str:
    import hashlib
    from dataclasses import asdict

    h = hashlib.sha256()
    for t in model.state_dict().values():
        h.update(t.detach().cpu().numpy().tobytes())
    h.update(np.ascontiguousarray(x, dtype=np.float32).tobytes())
    h.update(np.asarray(y, np.int64).tobytes())
    h.update(repr((num_classes, n_folds, seed, sorted(asdict(cfg).items()))).encode())
    if sample_weights is not None:
        h.update(np.asarray(sample_weights, np.float32).tobytes())
    h.update(np.asarray(folds, np.int64).tobytes())
    return h.hexdigest()


def self_confidence_thresholds(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per-class thresholds of confident learning: ``t_k`` = mean ``p(k)`` over the windows labelled k
    (Northcutt et al., JAIR 2021, Eq. 2). Array of shape (K,), float64; absent classes get 1."""
    p, y = _check_probs(probs, labels)
    K = p.shape[1]
    t = np.ones(K)
    for k in range(K):
        m = y == k
        if m.any():
            t[k] = float(p[m, k].mean())
    return t


def label_issues(probs: np.ndarray, labels: np.ndarray, *, filter_by: str = "prune_by_noise_rate") -> np.ndarray:
    """Confident-learning label issues (``cleanlab.filter.find_label_issues``) on out-of-fold probabilities.

    Parameters
    ----------
    probs : np.ndarray
        Array of shape (N, K): out-of-fold probabilities, rows sum to 1.
    labels : np.ndarray
        Array of shape (N,), int in [0, K).
    filter_by : str
        cleanlab's rule (``"prune_by_noise_rate"``, ``"prune_by_class"``, ``"both"``,
        ``"confident_learning"``, ``"predicted_neq_given"``).

    Returns
    -------
    np.ndarray
        Array of shape (N,), bool: True where the label is likely wrong. Classes absent from ``labels``
        are handled by cleanlab (they get no issues); a single present class gives no issues.
    """
    p, y = _check_probs(probs, labels)
    if np.unique(y).size < 2:
        return np.zeros(y.shape[0], dtype=bool)
    import warnings

    from cleanlab.filter import find_label_issues

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # n_jobs=1: cleanlab otherwise forks a process pool per call, which deadlocked inside Ray workers
        # (imutune fleet); its results do not depend on n_jobs
        issues = find_label_issues(y, p, filter_by=filter_by, n_jobs=1)
    return np.asarray(issues, dtype=bool)
