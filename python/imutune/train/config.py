"""Optimisation settings of a training stage and the named presets every stage reads.

Torch-free on purpose: the command line reads its defaults from :data:`PRETRAIN` and
:data:`FINETUNE` while it builds its parser, before anything heavy is imported.
:mod:`imutune.train.loop` re-exports every name here.
"""
from __future__ import annotations

from dataclasses import dataclass

from .. import _validation as V

__all__ = ["TrainConfig", "PRETRAIN", "FINETUNE", "SMALL_MODEL_PARAMETERS"]

#: Models with fewer parameters than this train on one CPU thread when ``TrainConfig.threads`` is None.
SMALL_MODEL_PARAMETERS = 1_000_000


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings of one training stage (:func:`imutune.train.loop.train`).

    The defaults are the pretraining preset (:data:`PRETRAIN`); fine-tuning
    stages use :data:`FINETUNE`. Derive variants with ``dataclasses.replace``
    (``replace(FINETUNE, epochs=10)``) so the other numbers keep coming from
    the preset.

    Attributes
    ----------
    epochs : int
        Passes over the training windows, >= 1.
    batch_size : int
        Windows per optimiser step, >= 1.
    lr : float
        Peak AdamW learning rate of the one-cycle cosine schedule
        (:func:`imutune.train.loop.one_cycle_schedule`).
    weight_decay : float
        AdamW decoupled weight decay, >= 0.
    seed : int
        Seeds parameter-init order, shuffling and dropout.
    device : str
        ``"auto"`` (CUDA if present, else CPU), ``"cpu"`` or ``"cuda"``.
    threads : int or None
        torch intra-op threads while training (``torch.set_num_threads``,
        restored afterwards). ``None`` (default) applies the rule: **1 thread for
        a model with fewer than 1,000,000 parameters
        (:data:`SMALL_MODEL_PARAMETERS`) on the CPU, otherwise torch's current
        setting is left as it is** (small 1-D CNNs lose more to thread hand-offs
        than they gain). Not part of a checkpoint's identity: a run may resume
        with another thread count.
    """

    epochs: int = 20
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 1e-4
    seed: int = 0
    device: str = "auto"
    threads: int | None = None

    def __post_init__(self) -> None:
        V.check_int_at_least("epochs", self.epochs, 1)
        V.check_int_at_least("batch_size", self.batch_size, 1)
        V.check_positive("lr", self.lr, where="TrainConfig")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay!r}")
        V.check_choice("device", self.device, ("auto", "cpu", "cuda"))
        if self.threads is not None:
            V.check_int_at_least("threads", self.threads, 1)


#: Pretraining on the source users (``imutune pretrain``, the demo, the benchmarks' base models).
PRETRAIN = TrainConfig(epochs=20, batch_size=64, lr=3e-3)
#: Fine-tuning for one target user: the budget every personalization method gets (FilterLoss, the
#: baselines, selective filters, ``imutune finetune`` / ``personalize``).
FINETUNE = TrainConfig(epochs=30, batch_size=32, lr=1e-3)
