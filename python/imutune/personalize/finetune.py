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
from ..train.loop import FINETUNE, TrainConfig, train
from ..train.losses import FilterLoss
from .filter import QualityConfig
from .methods import METHOD_NAMES, canonical_loss
from .weights import CategoryWeights, FilterConfig

__all__ = ['FinetuneConfig', 'finetune', 'LOSSES', 'NATIVE_LOSSES', 'canonical_loss']

#: Every name ``FinetuneConfig.loss`` (and ``imutune finetune --loss``) accepts, in dash form.
LOSSES: tuple[str, ...] = METHOD_NAMES
#: The losses :func:`finetune` itself runs (with rehearsal, checkpoints and given sample weights).
NATIVE_LOSSES: tuple[str, ...] = ("filterloss", "filterloss-cv", "filterloss-learned", "ce")


@dataclass(frozen=True)
class FinetuneConfig:
    """Target-user fine-tuning with FilterLoss."""

    train: TrainConfig = FINETUNE   # fine-tuning optimiser settings (imutune.train.loop.FINETUNE)
    # "filterloss" (categories from out-of-fold probabilities alone, fixed weights), "filterloss-cv"
    # (full filter, weights chosen by cross-validation), "filterloss-learned" (full filter, meta-learned
    # weights) -- see imutune.personalize.weights -- "ce" (plain cross-entropy), or any other method of
    # imutune.personalize.baselines.METHODS ("gce", "cleanlab", "oracle", ...; dashes or underscores)
    loss: str = "filterloss"
    quality: QualityConfig | None = None      # filter thresholds; None: filter.quality (given: used by every variant)
    weights: CategoryWeights | None = None    # "filterloss" category weights; None: filter.fixed_weights
    filter: FilterConfig = FilterConfig()        # thresholds, folds, grids, meta-learning of the filter
    rehearsal_ratio: float = 0.0    # source windows mixed in per target window (0 = target only, as in the paper)

    def __post_init__(self) -> None:
        object.__setattr__(self, "loss", canonical_loss(self.loss))
        V.check_choice("loss", self.loss, LOSSES)
        if not (np.isfinite(self.rehearsal_ratio) and self.rehearsal_ratio >= 0):
            raise ValueError(f"rehearsal_ratio must be a finite number >= 0, got {self.rehearsal_ratio!r}")


def finetune(bundle: ModelBundle, windows: Windows, *, config: FinetuneConfig = FinetuneConfig(),
             sample_weights: np.ndarray | None = None, source_windows: Windows | None = None,
             checkpoint_path: str | os.PathLike | None = None, progress: bool = True) -> ModelBundle:
    """Fine-tune a pretrained bundle for one target user with FilterLoss.

    ``config.loss`` must be a FilterLoss variant or ``"ce"``
    (:data:`NATIVE_LOSSES`); every other method name of ``FinetuneConfig``
    runs through :func:`imutune.personalize.run.personalize`.

    If the target's class list differs from the bundle's, the classifier head
    is replaced (FilterLoss paper, Sec. III: transfer to a new class set);
    windows must already be cut at the bundle's sample rate and channels
    (:func:`imutune.signal.windows.make_windows` with ``bundle.window`` resamples).
    Unless ``sample_weights`` are given, the sample-quality filter
    (:func:`imutune.personalize.quality.categorize`) scores the target windows with the
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

    from .filter import categorize, category_counts
    from .weights import sample_weights as _weights

    if config.loss not in NATIVE_LOSSES:
        raise ValueError(f"loss {config.loss!r} is a baseline, not a FilterLoss fine-tune; run it with "
                         "imutune.personalize.run.personalize (or imutune.personalize.baselines.run_method)")

    if tuple(windows.channels) != tuple(bundle.channels):
        raise ValueError(f"target windows have channels {list(windows.channels)}; the model expects "
                         f"{list(bundle.channels)}")
    if windows.preprocessing is not None:   # rate, window and units must be the model's (hop may differ)
        windows.preprocessing.check_matches(bundle.preprocessing, where="finetune", this_name="the target windows",
                                            other_name="the model", input_only=True)
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
    quality = config.quality if config.quality is not None else config.filter.quality
    if config.loss == "filterloss" and sample_weights is None:
        # first version: probabilities alone, but out of fold (a head on the frozen embeddings fitted on the
        # other folds), so a user shift of the pretrained model does not mark clean windows noisy; no extra
        # training of the model itself (the budget stays the other methods')
        cw = config.weights if config.weights is not None else config.filter.fixed_weights
        probs = _first_version_probs(model, xn, windows.y, windows.num_classes, config)
        cats = categorize(probs, windows.y, config=quality)
        sample_weights = _weights(cats, cw)
        info["category_counts"] = category_counts(cats)
        info["category_weights"] = asdict(cw)
        info["categories"] = cats.tolist()
    info["scoring_seconds"] = time.perf_counter() - t0
    if config.loss in ("filterloss-cv", "filterloss-learned") and sample_weights is None:
        from dataclasses import replace as _replace

        from .weights import filter_weights

        fcfg = _replace(config.filter, mode=config.loss.split("-", 1)[1], quality=quality,
                        seed=config.train.seed, device=config.train.device)
        res = filter_weights(model, xn, windows.y, num_classes=windows.num_classes, config=fcfg)
        sample_weights = res.sample_weights
        info.update(res.summary())
        info["categories"] = res.categories.tolist()
    if sample_weights is not None and config.loss.startswith("filterloss"):
        info["sample_weights"] = np.asarray(sample_weights, dtype=np.float64).round(6).tolist()
    y = windows.y
    if config.rehearsal_ratio > 0:
        xn, y, sample_weights = _add_rehearsal(xn, y, sample_weights, bundle, source_windows, windows, config)
        info["n_rehearsal"] = int(len(y) - len(windows))
    loss_fn = FilterLoss() if config.loss.startswith("filterloss") else None
    hist = train(model, xn, y, config=config.train, loss_fn=loss_fn, sample_weights=sample_weights,
                 checkpoint_path=checkpoint_path, desc="finetune", progress=progress)
    info.update(train_config=asdict(config.train), loss_history=hist["loss"], train_seconds=hist["seconds"],
                steps=hist["steps"], resumed_from_epoch=hist["resumed_from_epoch"])
    return bundle.derive(model, class_names=windows.class_names, info={**info, "base": bundle.info})


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


def _first_version_probs(model: nn.Module, xn: np.ndarray, y: np.ndarray, num_classes: int,
                         config: FinetuneConfig) -> np.ndarray:
    """Out-of-fold probabilities of heads on the frozen embeddings (eval mode: BatchNorm statistics untouched)."""
    from .filter import _head_of, embed_windows, oof_probabilities

    n = len(y)
    if n < 2:
        return np.full((n, num_classes), 1.0 / num_classes)
    fc = config.filter
    z = embed_windows(model, xn, device=config.train.device)
    return oof_probabilities(z, y, num_classes, n_folds=min(fc.n_folds, n), seed=config.train.seed,
                             head=_head_of(model, num_classes), steps=fc.probe_steps, lr=fc.probe_lr,
                             weight_decay=fc.probe_weight_decay, device=config.train.device)
