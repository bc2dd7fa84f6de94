"""One entry point for every personalization method: :func:`personalize`.

FilterLoss variants and plain cross-entropy run through
:func:`imutune.personalize.finetune.finetune` (rehearsal, checkpoints, given
sample weights); every other method of ``FinetuneConfig.loss`` (``gce``,
``cleanlab``, ``oracle``, ...) through
:func:`imutune.personalize.baselines.run_method` with ``config.train`` as its
budget.
"""
from __future__ import annotations

import os
from typing import Any

import numpy as np

from ..signal.windows import Windows
from ..train.bundle import ModelBundle
from .baselines import run_method
from .finetune import NATIVE_LOSSES, FinetuneConfig, finetune

__all__ = ["personalize"]


def personalize(bundle: ModelBundle, windows: Windows, *, config: FinetuneConfig = FinetuneConfig(),
                noisy_mask: np.ndarray | None = None, source_windows: Windows | None = None,
                checkpoint_path: str | os.PathLike | None = None, progress: bool = True) -> ModelBundle:
    """Personalize ``bundle`` for one user with the method ``config.loss``.

    Parameters
    ----------
    noisy_mask : np.ndarray, optional
        Array of shape (N,), bool: the injected label-noise truth; needed by ``"oracle"`` only.
    source_windows, checkpoint_path :
        Rehearsal windows and a resumable checkpoint; FilterLoss variants and ``"ce"`` only.

    Raises
    ------
    ValueError
        If a baseline is asked for rehearsal (``config.rehearsal_ratio > 0``), or as the method raises
        (``"oracle"`` without ``noisy_mask``, channel mismatch, ...).
    """
    if config.loss in NATIVE_LOSSES:
        return finetune(bundle, windows, config=config, source_windows=source_windows,
                        checkpoint_path=checkpoint_path, progress=progress)
    if config.rehearsal_ratio > 0:
        raise ValueError(f"loss {config.loss!r} takes no rehearsal (rehearsal_ratio={config.rehearsal_ratio}); "
                         "use a FilterLoss variant or 'ce' for that")
    name = config.loss.replace("-", "_")
    opts: dict[str, Any] = {}
    if name == "oracle":
        opts["noisy_mask"] = noisy_mask
    if name in ("cleanlab", "filterloss", "filterloss_cv", "filterloss_learned"):
        opts["filter_config"] = config.filter
    return run_method(name, bundle, windows, config.train, progress=progress, **opts)
