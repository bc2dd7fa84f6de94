"""Pretraining a registry model on many source users' windows."""
from __future__ import annotations

import os
from dataclasses import asdict
from typing import Any

import numpy as np
import torch

from .. import _validation as V
from ..models.resnet1d import create_model
from ..signal.windows import Normalizer, WindowConfig, Windows
from .bundle import ModelBundle, contract_of_windows
from .loop import PRETRAIN, TrainConfig, predict_logits, train

__all__ = ['pretrain', 'split_holdout']


def split_holdout(groups: np.ndarray, labels: np.ndarray, fraction: float, *, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Split windows into (train, holdout) masks by group (recording), stratified by
    each group's majority class so every class keeps training groups.

    Returns two boolean arrays of shape (N,).
    """
    V.check_fraction("holdout_fraction", fraction, high_closed=False)
    rng = np.random.default_rng(seed)
    held = set()
    uniq = np.unique(groups)
    major = {g: np.bincount(labels[groups == g]).argmax() for g in uniq}
    for k in np.unique(labels):
        gs = [g for g in uniq if major[g] == k]
        n_hold = int(round(fraction * len(gs)))
        if len(gs) >= 2 and n_hold >= 1:
            held.update(rng.choice(gs, size=min(n_hold, len(gs) - 1), replace=False).tolist())
    hold = np.isin(groups, list(held))
    return ~hold, hold


def pretrain(windows: Windows, *, model_name: str = "mobilecnn1d", window: WindowConfig | None = None,
             train_config: TrainConfig = PRETRAIN, holdout_fraction: float = 0.2,
             checkpoint_path: str | os.PathLike | None = None, progress: bool = True) -> ModelBundle:
    """Pretrain a registry model on source windows.

    A stratified ``holdout_fraction`` of the source recordings is held out to
    measure the source accuracy (the reference of the restore ratio); the
    normalizer is fitted on the training part only.

    Parameters
    ----------
    windows : Windows
        Source windows, (N, C, T) float32 in physical units. The bundle's
        preprocessing contract is the one the windows carry (from
        :func:`~imutune.signal.windows.make_windows`) plus the fitted
        normalization.
    window : WindowConfig, optional
        Needed only for windows built by hand (``windows.preprocessing`` is
        None); otherwise it must agree with the windows' contract.

    Raises
    ------
    ValueError
        If ``window`` disagrees with the windows (e.g. windows of T=50 and a
        4 s window at 50 Hz), or hand-built windows come without ``window``.

    Returns
    -------
    ModelBundle
        ``info`` holds ``source_accuracy``, ``source_macro_f1``, ``n_train``,
        ``n_holdout``, the train config and the loss history.
    """
    from ..metrics import accuracy, macro_f1

    spec = contract_of_windows(windows, window)
    tr, ho = split_holdout(windows.recording, windows.y, holdout_fraction, seed=train_config.seed)
    wtr = windows.subset(tr)
    norm = Normalizer.fit(wtr.x)
    torch.manual_seed(train_config.seed)
    model = create_model(model_name, in_channels=len(windows.channels), num_classes=windows.num_classes)
    hist = train(model, norm(wtr.x), wtr.y, config=train_config, checkpoint_path=checkpoint_path,
                 desc="pretrain", progress=progress, extra_config={"model_name": model_name})
    info: dict[str, Any] = {"stage": "pretrain", "train_config": asdict(train_config), "n_train": int(tr.sum()),
                            "n_holdout": int(ho.sum()), "loss_history": hist["loss"], "train_seconds": hist["seconds"],
                            "steps": hist["steps"], "resumed_from_epoch": hist["resumed_from_epoch"]}
    if ho.any():
        who = windows.subset(ho)
        pred = predict_logits(model, norm(who.x), device=train_config.device).argmax(1)
        info["source_accuracy"] = accuracy(who.y, pred)
        info["source_macro_f1"] = macro_f1(who.y, pred, windows.num_classes)
    return ModelBundle(model, model_name, spec.with_normalization(norm.mean.tolist(), norm.std.tolist()), info)

