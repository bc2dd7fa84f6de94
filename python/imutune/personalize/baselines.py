"""Fine-tuning baselines for imbalanced target data, each one function with
the same protocol and budget as FilterLoss fine-tuning.

Every function takes a pretrained :class:`~imutune.train.bundle.ModelBundle`, the
target user's training :class:`~imutune.signal.windows.Windows` (physical units, cut
at the bundle's window config) and a :class:`~imutune.train.config.TrainConfig`
(epochs, batch size, learning rate, seed, device: the *budget*, identical for
all methods), and returns a new fine-tuned bundle (the input is not
modified). As in :func:`imutune.personalize.finetune.finetune`, the bundle's normalizer is
kept and the classifier head is replaced when the target brings another class
list. ``info`` records the method, the windows actually trained on, optimiser
steps and times.

Methods (:data:`METHODS`):

* ``none`` -- no fine-tuning, the pretrained model as is (only possible when
  the class lists agree);
* ``ce`` -- plain cross-entropy;
* ``oversample`` / ``undersample`` -- imbalanced-learn's
  ``RandomOverSampler`` / ``RandomUnderSampler`` on flattened windows
  (``(N, C*T)``), then cross-entropy; the same number of *epochs* as the others,
  so oversampling takes more optimiser steps and undersampling fewer (the
  usual way these baselines are run; ``info["steps"]`` has the counts);
* ``class_weighted`` -- cross-entropy with inverse class-frequency weights;
* ``class_balanced`` -- class-balanced loss, effective number of samples
  (Cui et al., CVPR 2019), ``beta = 0.99`` (from the paper's grid; with at
  most ~60 windows per class ``beta >= 0.999`` is within a few percent of
  inverse frequency, which ``class_weighted`` already covers);
* ``focal`` -- focal loss, ``gamma = 2`` (Lin et al., ICCV 2017);
* ``filterloss`` -- FilterLoss with the first-version filter (pretrained
  probabilities, fixed weights 1 / 0.5 / 0.1);
* ``filterloss_cv`` / ``filterloss_learned`` -- FilterLoss with the full
  sample-quality filter and cross-validated or meta-learned weights
  (:mod:`imutune.personalize.quality`), via :func:`imutune.personalize.finetune.finetune`;
* ``filterloss_soft`` -- the full filter with fixed weights
  (:data:`imutune.personalize.weights.SOFT_WEIGHTS`): noisy windows 0,
  high-value 1, boundary windows their soft label quality
  ``min(1, p(label) / t_label)``; nothing is searched (the weight choice of
  ``filterloss_cv``, scored against the noisy held-out labels of ~100-150
  windows, is too unstable to drop what the filter finds).

A class without target windows is allowed (documented fallback): it simply
gets no loss terms (class weights 0 for it; the resamplers only see present
classes).
"""
from __future__ import annotations

import copy
from dataclasses import asdict, replace
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from ..signal.windows import Windows
from ..train.bundle import ModelBundle
from ..train.loop import FINETUNE, TrainConfig, train
from ..train.losses import (
    ClassBalancedLoss,
    FocalLoss,
    GeneralizedCrossEntropy,
    SymmetricCrossEntropy,
    WeightedCrossEntropy,
    inverse_frequency_weights,
)
from .finetune import FinetuneConfig, finetune
from .weights import FilterConfig

__all__ = ["METHODS", "BASELINES", "FILTERLOSS_METHODS", "METHOD_REVISIONS", "run_method", "no_finetune", "finetune_ce",
           "finetune_oversample", "finetune_undersample", "finetune_class_weighted", "finetune_class_balanced",
           "finetune_focal", "finetune_filterloss", "finetune_filterloss_cv", "finetune_filterloss_learned", "finetune_filterloss_soft",
           "resample_windows", "finetune_gce", "finetune_sce", "finetune_cleanlab", "finetune_oracle",
           "cleanlab_issues"]


def _check_inputs(bundle: ModelBundle, windows: Windows) -> None:
    if tuple(windows.channels) != tuple(bundle.channels):
        raise ValueError(f"target windows have channels {list(windows.channels)}; the model expects "
                         f"{list(bundle.channels)}")
    if len(windows) == 0:
        raise ValueError("the target has no training windows; expected at least one")


def _fit(bundle: ModelBundle, windows: Windows, method: str, train_config: TrainConfig, *,
         loss_fn: nn.Module | None = None, x: np.ndarray | None = None, y: np.ndarray | None = None,
         progress: bool = False, extra: dict | None = None) -> ModelBundle:
    """Fine-tune a copy of ``bundle.model`` on (x, y) (default: the windows) with ``loss_fn``."""
    _check_inputs(bundle, windows)
    x = windows.x if x is None else x
    y = windows.y if y is None else y
    model = copy.deepcopy(bundle.model)
    head_replaced = tuple(windows.class_names) != tuple(bundle.class_names)
    if head_replaced:
        from ..models.resnet1d import replace_head

        torch.manual_seed(train_config.seed)
        replace_head(model, windows.num_classes)
    xn = bundle.normalizer(x)
    hist = train(model, xn, y, config=train_config, loss_fn=loss_fn, desc=f"finetune[{method}]", progress=progress)
    info: dict[str, Any] = {"stage": "finetune", "method": method, "head_replaced": head_replaced,
                            "n_train": len(windows), "n_train_effective": int(len(y)),
                            "class_counts": windows.class_counts().tolist(),
                            "class_counts_effective": np.bincount(y, minlength=windows.num_classes).tolist(),
                            "steps": hist["steps"], "train_config": asdict(train_config),
                            "loss_history": hist["loss"], "train_seconds": hist["seconds"], **(extra or {})}
    return ModelBundle(model, bundle.model_name, windows.class_names, bundle.channels, bundle.window,
                       bundle.normalizer, {**info, "base": bundle.info})


def no_finetune(bundle: ModelBundle, windows: Windows, train_config: TrainConfig = FINETUNE, *,
                progress: bool = False) -> ModelBundle:
    """The pretrained model as is.

    Raises
    ------
    ValueError
        If the target's class list differs from the model's (a new class set
        needs at least a new head).
    """
    _check_inputs(bundle, windows)
    if tuple(windows.class_names) != tuple(bundle.class_names):
        raise ValueError(f"no fine-tuning is impossible: the target classes {list(windows.class_names)} differ "
                         f"from the model's {list(bundle.class_names)}")
    return ModelBundle(copy.deepcopy(bundle.model), bundle.model_name, bundle.class_names, bundle.channels,
                       bundle.window, bundle.normalizer,
                       {"stage": "finetune", "method": "none", "train_seconds": 0.0, "steps": 0,
                        "n_train": len(windows), "base": bundle.info})


def finetune_ce(bundle: ModelBundle, windows: Windows, train_config: TrainConfig = FINETUNE, *,
                progress: bool = False) -> ModelBundle:
    """Plain cross-entropy fine-tuning."""
    return _fit(bundle, windows, "ce", train_config, loss_fn=WeightedCrossEntropy(), progress=progress)


def resample_windows(windows: Windows, kind: str, *, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Random over- or undersampling of windows with imbalanced-learn on flattened windows.

    Parameters
    ----------
    kind : str
        ``"over"`` (``RandomOverSampler``: duplicate minority windows up to the
        majority count) or ``"under"`` (``RandomUnderSampler``: drop majority
        windows down to the minority count).

    Returns
    -------
    (np.ndarray, np.ndarray)
        ``x`` of shape (M, C, T) float32 and ``y`` of shape (M,) int64.

    Raises
    ------
    ValueError
        If ``kind`` is unknown.
    """
    from imblearn.over_sampling import RandomOverSampler
    from imblearn.under_sampling import RandomUnderSampler

    if kind not in ("over", "under"):
        raise ValueError(f"kind must be 'over' or 'under', got {kind!r}")
    n, c, t = windows.x.shape
    if np.unique(windows.y).size < 2:  # nothing to balance (imbalanced-learn refuses one class)
        return windows.x, windows.y
    sampler = (RandomOverSampler if kind == "over" else RandomUnderSampler)(random_state=seed)
    xr, yr = sampler.fit_resample(windows.x.reshape(n, c * t), windows.y)
    return np.ascontiguousarray(xr.reshape(-1, c, t), dtype=np.float32), np.asarray(yr, dtype=np.int64)


def finetune_oversample(bundle: ModelBundle, windows: Windows, train_config: TrainConfig = FINETUNE, *,
                        progress: bool = False) -> ModelBundle:
    """Random oversampling (imbalanced-learn) then cross-entropy, same epochs."""
    x, y = resample_windows(windows, "over", seed=train_config.seed)
    return _fit(bundle, windows, "oversample", train_config, loss_fn=WeightedCrossEntropy(), x=x, y=y,
                progress=progress)


def finetune_undersample(bundle: ModelBundle, windows: Windows, train_config: TrainConfig = FINETUNE, *,
                         progress: bool = False) -> ModelBundle:
    """Random undersampling (imbalanced-learn) then cross-entropy, same epochs."""
    x, y = resample_windows(windows, "under", seed=train_config.seed)
    return _fit(bundle, windows, "undersample", train_config, loss_fn=WeightedCrossEntropy(), x=x, y=y,
                progress=progress)


def finetune_class_weighted(bundle: ModelBundle, windows: Windows, train_config: TrainConfig = FINETUNE, *,
                            progress: bool = False) -> ModelBundle:
    """Cross-entropy weighted by inverse class frequency (absent classes weight 0)."""
    cw = inverse_frequency_weights(windows.class_counts())
    return _fit(bundle, windows, "class_weighted", train_config, loss_fn=WeightedCrossEntropy(torch.from_numpy(cw)),
                progress=progress, extra={"class_weights": cw.tolist()})


def finetune_class_balanced(bundle: ModelBundle, windows: Windows, train_config: TrainConfig = FINETUNE, *,
                            beta: float = 0.99, progress: bool = False) -> ModelBundle:
    """Class-balanced loss (effective number of samples, Cui et al. 2019)."""
    loss = ClassBalancedLoss(windows.class_counts(), beta=beta)
    return _fit(bundle, windows, "class_balanced", train_config, loss_fn=loss, progress=progress,
                extra={"class_weights": loss.class_weights.tolist(), "beta": beta})


def finetune_focal(bundle: ModelBundle, windows: Windows, train_config: TrainConfig = FINETUNE, *,
                   gamma: float = 2.0, progress: bool = False) -> ModelBundle:
    """Focal loss with ``gamma`` (2 by default)."""
    return _fit(bundle, windows, "focal", train_config, loss_fn=FocalLoss(gamma), progress=progress,
                extra={"gamma": gamma})


def finetune_filterloss(bundle: ModelBundle, windows: Windows, train_config: TrainConfig = FINETUNE, *,
                        mode: str = "cv", filter_config: FilterConfig = FilterConfig(),
                        progress: bool = False) -> ModelBundle:
    """FilterLoss fine-tuning through :func:`imutune.personalize.finetune.finetune`.

    ``mode``: ``"first"`` (first-version filter with fixed weights), ``"cv"``,
    ``"learned"`` or ``"soft"`` (full filter).
    """
    loss = {"first": "filterloss", "cv": "filterloss-cv", "learned": "filterloss-learned",
            "soft": "filterloss-soft"}.get(mode)
    if loss is None:
        raise ValueError(f"mode must be 'first', 'cv', 'learned' or 'soft', got {mode!r}")
    _check_inputs(bundle, windows)
    out = finetune(bundle, windows, config=FinetuneConfig(train=train_config, loss=loss, filter=filter_config),
                   progress=progress)
    name = "filterloss" if mode == "first" else f"filterloss_{mode}"
    return replace(out, info={**out.info, "method": name, "n_train_effective": len(windows)})  # "steps": the loop's


def finetune_filterloss_cv(bundle: ModelBundle, windows: Windows, train_config: TrainConfig = FINETUNE, *,
                           filter_config: FilterConfig = FilterConfig(), progress: bool = False) -> ModelBundle:
    """FilterLoss, full filter, weights chosen by stratified k-fold cross-validation."""
    return finetune_filterloss(bundle, windows, train_config, mode="cv", filter_config=filter_config,
                               progress=progress)


def finetune_filterloss_learned(bundle: ModelBundle, windows: Windows, train_config: TrainConfig = FINETUNE, *,
                                filter_config: FilterConfig = FilterConfig(), progress: bool = False) -> ModelBundle:
    """FilterLoss, full filter, weights learned by meta-gradient descent."""
    return finetune_filterloss(bundle, windows, train_config, mode="learned", filter_config=filter_config,
                               progress=progress)


def finetune_filterloss_soft(bundle: ModelBundle, windows: Windows, train_config: TrainConfig = FINETUNE, *,
                            filter_config: FilterConfig = FilterConfig(), progress: bool = False) -> ModelBundle:
    """FilterLoss, full filter, fixed weights :data:`imutune.personalize.weights.SOFT_WEIGHTS` (noisy 0,
    boundary scaled per window by its label quality, high-value 1; nothing searched) and the source view
    (:data:`imutune.personalize.weights.SOFT_SOURCE_VETO`: a window the pretrained model backs is never noisy,
    and its soft factor is at least the pretrained model's probability of its label;
    :data:`~imutune.personalize.weights.SOFT_SOURCE_FLAG`: one that it, the fold model and the neighbours all
    contradict is noisy; ``QualityConfig.change_points``: the windows a maximum-likelihood re-placement of each
    activity change moves over are noisy)."""
    return finetune_filterloss(bundle, windows, train_config, mode="soft", filter_config=filter_config,
                               progress=progress)


def finetune_gce(bundle: ModelBundle, windows: Windows, train_config: TrainConfig = FINETUNE, *,
                 q: float = 0.7, progress: bool = False) -> ModelBundle:
    """Generalized cross-entropy, ``q = 0.7`` (Zhang & Sabuncu, NeurIPS 2018)."""
    return _fit(bundle, windows, "gce", train_config, loss_fn=GeneralizedCrossEntropy(q), progress=progress,
                extra={"q": q})


def finetune_sce(bundle: ModelBundle, windows: Windows, train_config: TrainConfig = FINETUNE, *,
                 alpha: float = 0.1, beta: float = 1.0, progress: bool = False) -> ModelBundle:
    """Symmetric cross-entropy, ``alpha = 0.1, beta = 1, A = -4`` (Wang et al., ICCV 2019)."""
    return _fit(bundle, windows, "sce", train_config, loss_fn=SymmetricCrossEntropy(alpha, beta), progress=progress,
                extra={"alpha": alpha, "beta": beta})


def cleanlab_issues(bundle: ModelBundle, windows: Windows, train_config: TrainConfig = FINETUNE, *,
                    filter_config: FilterConfig = FilterConfig()) -> tuple[np.ndarray, np.ndarray]:
    """Confident-learning label issues of the target windows and the out-of-fold probabilities behind them.

    The out-of-fold probabilities come from whole networks fine-tuned end to end on the other folds
    (:func:`imutune.personalize.filter.oof_probabilities_full`, ``filter_config``'s ``n_folds``,
    ``oof_epochs``, ``oof_batch_size``, ``oof_lr``, ``oof_min_steps``, blocked folds over ``windows.recording``
    with ``fold_block_windows``: the same fold models as FilterLoss), then
    ``cleanlab.filter.find_label_issues`` (``prune_by_noise_rate``; Northcutt et al., JAIR 2021).

    Returns
    -------
    (np.ndarray, np.ndarray)
        Issues (N,) bool and probabilities (N, K) float64.
    """
    from .filter import label_issues, oof_probabilities_full

    _check_inputs(bundle, windows)
    model = copy.deepcopy(bundle.model)
    if tuple(windows.class_names) != tuple(bundle.class_names):
        from ..models.resnet1d import replace_head

        torch.manual_seed(train_config.seed)
        replace_head(model, windows.num_classes)
    fc = filter_config
    tc = replace(train_config, epochs=fc.oof_epochs, batch_size=fc.oof_batch_size, lr=fc.oof_lr,
                 min_steps=fc.oof_min_steps, balanced_batches=True)
    probs = oof_probabilities_full(model, bundle.normalizer(windows.x), windows.y, windows.num_classes,
                                   n_folds=min(fc.n_folds, len(windows)), seed=train_config.seed, train_config=tc,
                                   groups=windows.recording, block_windows=fc.fold_block_windows)
    return label_issues(probs, windows.y), probs


def finetune_cleanlab(bundle: ModelBundle, windows: Windows, train_config: TrainConfig = FINETUNE, *,
                      filter_config: FilterConfig = FilterConfig(), progress: bool = False) -> ModelBundle:
    """Confident-learning pruning: drop the windows :func:`cleanlab_issues` flags, then cross-entropy.

    ``info["dropped"]`` lists the dropped window indices (for precision/recall against a known truth).
    """
    import time

    t = time.perf_counter()
    issues, _ = cleanlab_issues(bundle, windows, train_config, filter_config=filter_config)
    keep = ~issues
    if not keep.any():
        keep = np.ones_like(issues)
    scoring = time.perf_counter() - t
    return _fit(bundle, windows, "cleanlab", train_config, loss_fn=WeightedCrossEntropy(), x=windows.x[keep],
                y=windows.y[keep], progress=progress,
                extra={"dropped": np.flatnonzero(~keep).tolist(), "scoring_seconds": scoring})


def finetune_oracle(bundle: ModelBundle, windows: Windows, train_config: TrainConfig = FINETUNE, *,
                    noisy_mask: np.ndarray | None = None, progress: bool = False) -> ModelBundle:
    """Upper bound, not a method: drop exactly the windows whose label was corrupted, then cross-entropy.

    Raises
    ------
    ValueError
        If ``noisy_mask`` (N,) bool, the injected truth, is missing or has the wrong shape.
    """
    if noisy_mask is None:
        raise ValueError("method 'oracle' needs noisy_mask, the injected label-noise truth (N,) bool; it exists "
                         "only when label noise was injected (imutune finetune --label-noise)")
    m = np.asarray(noisy_mask, dtype=bool).ravel()
    if m.shape != (len(windows),):
        raise ValueError(f"noisy_mask must have shape ({len(windows)},), got {m.shape}")
    keep = ~m if (~m).any() else np.ones_like(m)
    return _fit(bundle, windows, "oracle", train_config, loss_fn=WeightedCrossEntropy(), x=windows.x[keep],
                y=windows.y[keep], progress=progress, extra={"dropped": np.flatnonzero(~keep).tolist()})


#: Name -> function(bundle, windows, train_config, *, progress) -> ModelBundle.
METHODS: dict[str, Callable[..., ModelBundle]] = {
    "none": no_finetune,
    "ce": finetune_ce,
    "oversample": finetune_oversample,
    "undersample": finetune_undersample,
    "class_weighted": finetune_class_weighted,
    "class_balanced": finetune_class_balanced,
    "focal": finetune_focal,
    "gce": finetune_gce,
    "sce": finetune_sce,
    "cleanlab": finetune_cleanlab,
    "oracle": finetune_oracle,          # an upper bound (needs noisy_mask), not a method
    "filterloss": lambda b, w, c=FINETUNE, **kw: finetune_filterloss(b, w, c, mode="first", **kw),  # filter_config ok
    "filterloss_cv": finetune_filterloss_cv,
    "filterloss_learned": finetune_filterloss_learned,
    "filterloss_soft": finetune_filterloss_soft,
}
#: The standard baselines of the benchmark (everything but FilterLoss); "oracle" is an upper bound, not a method.
BASELINES: tuple[str, ...] = ("none", "ce", "oversample", "undersample", "class_weighted", "class_balanced", "focal",
                              "gce", "sce", "cleanlab", "oracle")
#: FilterLoss variants.
FILTERLOSS_METHODS: tuple[str, ...] = ("filterloss", "filterloss_cv", "filterloss_learned", "filterloss_soft")
#: Revision of a method's computation (1 when absent), bumped whenever what a method computes changes for the
#: same settings, so benchmark caches keyed by settings rerun its cells. filterloss_soft 2: the source veto
#: (:data:`imutune.personalize.weights.SOFT_SOURCE_VETO`); 3: the source flag (``SOFT_SOURCE_FLAG``); 4: the
#: re-placed activity changes (``QualityConfig.change_points``).
METHOD_REVISIONS: dict[str, int] = {"filterloss_soft": 4}


def run_method(name: str, bundle: ModelBundle, windows: Windows, train_config: TrainConfig = FINETUNE, *,
               progress: bool = False, **options: Any) -> ModelBundle:
    """Fine-tune with the method called ``name`` (one of :data:`METHODS`).

    Raises
    ------
    ValueError
        If ``name`` is unknown.
    """
    if name not in METHODS:
        raise ValueError(f"method {name!r} is unknown; expected one of {list(METHODS)}")
    return METHODS[name](bundle, windows, train_config, progress=progress, **options)
