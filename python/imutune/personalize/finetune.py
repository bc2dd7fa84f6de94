"""Target-user fine-tuning with FilterLoss (Han, Zhong, Feng, ICCC 2025, arXiv 2602.07772)
and its baselines' shared entry point.
"""
from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from .. import _validation as V
from ..signal.windows import Windows
from ..train.bundle import ModelBundle
from ..train.loop import TrainConfig, predict_proba, train
from ..train.losses import FilterLoss
from .quality import CategoryWeights, FilterConfig, QualityConfig

__all__ = ['FinetuneConfig', 'finetune']


@dataclass(frozen=True)
class FinetuneConfig:
    """Target-user fine-tuning with FilterLoss."""

    train: TrainConfig = TrainConfig(epochs=30, batch_size=32, lr=1e-3)  # fine-tuning optimiser settings
    # "filterloss" (categories from the pretrained model's probabilities, fixed weights), "filterloss-cv"
    # (full filter, weights chosen by cross-validation), "filterloss-learned" (full filter, meta-learned
    # weights) -- see imutune.quality -- or "ce" (plain cross-entropy)
    loss: str = "filterloss"
    quality: QualityConfig = QualityConfig()     # sample-quality filter thresholds
    weights: CategoryWeights = CategoryWeights()  # FilterLoss weight per quality category ("filterloss")
    filter: FilterConfig = FilterConfig()        # folds, grids, meta-learning ("filterloss-cv"/"-learned")
    rehearsal_ratio: float = 0.0    # source windows mixed in per target window (0 = target only, as in the paper)

    def __post_init__(self) -> None:
        V.check_choice("loss", self.loss, ("filterloss", "filterloss-cv", "filterloss-learned", "ce"))
        if not (np.isfinite(self.rehearsal_ratio) and self.rehearsal_ratio >= 0):
            raise ValueError(f"rehearsal_ratio must be a finite number >= 0, got {self.rehearsal_ratio!r}")


def finetune(bundle: ModelBundle, windows: Windows, *, config: FinetuneConfig = FinetuneConfig(),
             sample_weights: np.ndarray | None = None, source_windows: Windows | None = None,
             checkpoint_path: str | os.PathLike | None = None, progress: bool = True) -> ModelBundle:
    """Fine-tune a pretrained bundle for one target user with FilterLoss.

    If the target's class list differs from the bundle's, the classifier head
    is replaced (FilterLoss paper, Sec. III: transfer to a new class set);
    windows must already be cut at the bundle's sample rate and channels
    (:func:`imutune.windows.make_windows` with ``bundle.window`` resamples).
    Unless ``sample_weights`` are given, the sample-quality filter
    (:func:`imutune.quality.categorize`) scores the target windows with the
    pretrained model and assigns the category weights of ``config.weights``.
    The normalizer of the pretrained bundle is kept (the phone preprocesses
    like the source).

    Source rehearsal (``config.rehearsal_ratio > 0``, needs ``source_windows``
    with the same class list): every fine-tuning run also sees
    ``round(rehearsal_ratio * N)`` source windows drawn without replacement
    (seeded), with weight 1, so the model keeps what it learned from the
    source users while adapting (rehearsal / experience replay, e.g. Rebuffi
    et al., iCaRL, CVPR 2017, Sec. 2.2). The target windows keep their
    FilterLoss weights.

    Returns
    -------
    ModelBundle
        A new bundle (the input is not modified); ``info`` has the category
        counts, weights used and training time.

    Raises
    ------
    ValueError
        If the channels differ from the bundle's, the weights are invalid, or
        rehearsal is asked for without source windows of the same class list.
    """
    import copy

    from .quality import categorize, category_counts
    from .quality import sample_weights as _weights

    if tuple(windows.channels) != tuple(bundle.channels):
        raise ValueError(f"target windows have channels {list(windows.channels)}; the model expects "
                         f"{list(bundle.channels)}")
    model = copy.deepcopy(bundle.model)
    head_replaced = tuple(windows.class_names) != tuple(bundle.class_names)
    if head_replaced:
        from ..models.resnet1d import replace_head

        torch.manual_seed(config.train.seed)
        replace_head(model, windows.num_classes)
    xn = bundle.normalizer(windows.x)
    info: dict[str, Any] = {"stage": "finetune", "loss": config.loss, "head_replaced": head_replaced,
                            "n_train": len(windows), "class_counts": windows.class_counts().tolist()}
    t0 = time.perf_counter()
    if config.loss == "filterloss" and sample_weights is None:
        if head_replaced:
            # a fresh head has no opinion yet: score with a quick head-only fit (the probe of the embedding)
            _fit_head_only(model, xn, windows.y, config.train)
        probs = predict_proba(model, xn, device=config.train.device)
        cats = categorize(probs, windows.y, config=config.quality)
        sample_weights = _weights(cats, config.weights)
        info["category_counts"] = category_counts(cats)
        info["category_weights"] = asdict(config.weights)
    info["scoring_seconds"] = time.perf_counter() - t0
    if config.loss in ("filterloss-cv", "filterloss-learned") and sample_weights is None:
        from dataclasses import replace as _replace

        from .quality import filter_weights

        fcfg = _replace(config.filter, mode=config.loss.split("-", 1)[1], quality=config.quality,
                        seed=config.train.seed, device=config.train.device)
        res = filter_weights(model, xn, windows.y, num_classes=windows.num_classes, config=fcfg)
        sample_weights = res.sample_weights
        info.update(res.summary())
    y = windows.y
    if config.rehearsal_ratio > 0:
        xn, y, sample_weights = _add_rehearsal(xn, y, sample_weights, bundle, source_windows, windows, config)
        info["n_rehearsal"] = int(len(y) - len(windows))
    loss_fn = FilterLoss() if config.loss.startswith("filterloss") else None
    hist = train(model, xn, y, config=config.train, loss_fn=loss_fn, sample_weights=sample_weights,
                 checkpoint_path=checkpoint_path, desc="finetune", progress=progress)
    info.update(train_config=asdict(config.train), loss_history=hist["loss"], train_seconds=hist["seconds"])
    return ModelBundle(model, bundle.model_name, windows.class_names, bundle.channels, bundle.window,
                       bundle.normalizer, {**info, "base": bundle.info})


def _add_rehearsal(xn: np.ndarray, y: np.ndarray, weights: np.ndarray | None, bundle: ModelBundle,
                   source: Windows | None, target: Windows, config: FinetuneConfig):
    """Append ``round(rehearsal_ratio * N)`` normalized source windows (weight 1)."""
    if source is None:
        raise ValueError(f"rehearsal_ratio={config.rehearsal_ratio} needs source_windows; got None")
    if tuple(source.class_names) != tuple(target.class_names) or tuple(source.channels) != tuple(bundle.channels):
        raise ValueError(f"source_windows for rehearsal must share the target's classes {list(target.class_names)} "
                         f"and the model's channels {list(bundle.channels)}; got {list(source.class_names)} and "
                         f"{list(source.channels)}")
    n = min(len(source), int(round(config.rehearsal_ratio * len(target))))
    idx = np.random.default_rng(config.train.seed).choice(len(source), size=n, replace=False)
    w_t = np.ones(len(target), np.float32) if weights is None else np.asarray(weights, np.float32)
    return (np.concatenate([xn, bundle.normalizer(source.x[idx])]),   # (N + n, C, T)
            np.concatenate([y, source.y[idx]]),
            np.concatenate([w_t, np.ones(n, np.float32)]))


def _fit_head_only(model: nn.Module, xn: np.ndarray, y: np.ndarray, cfg: TrainConfig) -> None:
    """Train only ``model.head`` for a few epochs (used before scoring a new class set)."""
    from dataclasses import replace as _replace

    flags = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    for p in model.head.parameters():
        p.requires_grad_(True)
    train(model, xn, y, config=_replace(cfg, epochs=max(5, cfg.epochs // 3)), progress=False)
    for p, f in zip(model.parameters(), flags):
        p.requires_grad_(f)

