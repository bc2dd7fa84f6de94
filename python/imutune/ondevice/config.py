"""Settings of the on-device loop. Torch-free, so the command line can read the defaults cheaply."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import _validation as V

__all__ = ["OnDeviceConfig"]


@dataclass(frozen=True)
class OnDeviceConfig:
    """Settings of the on-device personalization loop (:func:`imutune.ondevice.personalize.personalize_on_device`)."""

    steps: int = 300                  # SGD steps (batches of the program's static batch size)
    lr: float = 0.02                  # SGD learning rate (constant; the ExecuTorch SGD has no schedule)
    momentum: float = 0.9             # SGD momentum (dampening 0, no Nesterov)
    weight_decay: float = 0.0         # L2 added to the gradient before masking (unselected rows stay fixed)
    seed: int = 0                     # data order
    filters_fraction: float = 0.1     # trainable variant "rows": share of each layer's filters that train
    profile: str = "phone-big-core"   # device profile whose thread count the ExecuTorch threadpool gets
    eval_every: int = 0               # with test windows: score every this many steps (0: only at the end)

    def __post_init__(self) -> None:
        V.check_int_at_least("steps", self.steps, 1)
        V.check_positive("lr", self.lr, where="OnDeviceConfig")
        V.check_in_range("momentum", self.momentum, 0.0, 0.999)
        if not (self.weight_decay >= 0 and np.isfinite(self.weight_decay)):
            raise ValueError(f"weight_decay must be a finite number >= 0, got {self.weight_decay!r}")
        V.check_int_at_least("seed", self.seed, 0)
        V.check_fraction("filters_fraction", self.filters_fraction)
        V.check_int_at_least("eval_every", self.eval_every, 0)
