"""Optimisation settings of a training stage and the named presets every stage reads.

Torch-free on purpose: the command line reads its defaults from :data:`PRETRAIN` and
:data:`FINETUNE` while it builds its parser, before anything heavy is imported.
:mod:`imutune.train.loop` re-exports every name here.
"""
from __future__ import annotations

from dataclasses import dataclass

from .. import _validation as V

__all__ = ["TrainConfig", "PRETRAIN", "FINETUNE", "SELECTIVE", "SMALL_MODEL_PARAMETERS"]

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
    min_steps : int
        Optimiser steps at least, >= 0 (default 0: no minimum). The run takes
        ``max(epochs x batches_per_epoch, min_steps)`` steps, with
        ``batches_per_epoch = ceil(N / batch_size)``, and the one-cycle schedule
        spans that real total. When the minimum sets the budget
        (``min_steps > epochs x batches_per_epoch``, a *few-shot* run) the steps
        are spread evenly over the ``epochs`` (an epoch is then a 1/epochs slice
        of the run, not one pass: checkpoints, ``loss`` and ``curve`` keep one
        entry per epoch), every batch holds ``min(batch_size, N')`` windows drawn
        from the ``N'`` windows of positive weight (no tail, no skipped batch, so
        the steps taken equal the steps scheduled), and ``balanced_batches``
        applies. Otherwise (``min_steps`` at most the epoch budget) the run is the
        classic one of seeded shuffled passes, bit for bit as with
        ``min_steps=0``, and neither field is part of a checkpoint's identity.
    balanced_batches : bool
        Class-balanced batches in a few-shot run (above): every batch gives each
        class present ``batch // K`` windows and ``batch % K`` randomly chosen
        classes one more; each class's windows are taken round-robin from
        seeded permutations of that class (each window once per cycle, a class
        smaller than its quota repeats windows). Draws use the run's seeded
        shuffling generator only, so a checkpoint resumes bit for bit. False: a
        few-shot run draws its batches from concatenated seeded permutations of
        all windows. No effect on a classic run (the minimum does not set the
        budget), so :data:`FINETUNE` trains every set of 65 or more windows (30
        epochs x 3 or more batches of 32 >= 90 steps) exactly as without it.
    """

    epochs: int = 20
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 1e-4
    seed: int = 0
    device: str = "auto"
    threads: int | None = None
    min_steps: int = 0
    balanced_batches: bool = False

    def __post_init__(self) -> None:
        V.check_int_at_least("epochs", self.epochs, 1)
        V.check_int_at_least("batch_size", self.batch_size, 1)
        V.check_positive("lr", self.lr, where="TrainConfig")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay!r}")
        V.check_choice("device", self.device, ("auto", "cpu", "cuda"))
        if self.threads is not None:
            V.check_int_at_least("threads", self.threads, 1)
        V.check_int_at_least("min_steps", self.min_steps, 0)
        if not isinstance(self.balanced_batches, bool):
            raise ValueError(f"balanced_batches must be True or False, got {self.balanced_batches!r}")

    def few_shot(self, n_windows: int) -> bool:
        """True when ``min_steps`` sets the budget of a run on ``n_windows`` windows
        (``min_steps > epochs x ceil(n_windows / batch_size)``)."""
        return self.min_steps > self.epochs * -(-int(n_windows) // self.batch_size)

    def total_steps(self, n_windows: int) -> int:
        """Optimiser steps the schedule spans for ``n_windows`` windows:
        ``max(epochs x ceil(n_windows / batch_size), min_steps)``."""
        return max(self.epochs * -(-int(n_windows) // self.batch_size), self.min_steps)


#: Pretraining on the source users (``imutune pretrain``, the demo, the benchmarks' base models).
PRETRAIN = TrainConfig(epochs=20, batch_size=64, lr=3e-3)
#: Fine-tuning for one target user: the budget every personalization method gets (FilterLoss, the
#: baselines, selective filters, ``imutune finetune`` / ``personalize``). Few-shot schedule (issue 15):
#: at least 90 optimiser steps with class-balanced batches. 90 = 30 epochs x 3 batches of 32, the budget a
#: set of 65-96 windows gets anyway, so every calibration set of 65 or more windows trains bit for bit as
#: before (the personalization benchmark, the demo, the fleet) and smaller sets get the same 90 steps
#: instead of 30 (N <= 32) or 60 (N <= 64). Deriving a preset with fewer epochs
#: (``replace(FINETUNE, epochs=10)``) keeps the 90-step minimum; add ``min_steps=0`` for the old budget.
FINETUNE = TrainConfig(epochs=30, batch_size=32, lr=1e-3, min_steps=90, balanced_batches=True)
#: Selective filter fine-tuning (``imutune personalize``, :mod:`imutune.personalize.selective`, the
#: selective benchmark's selected-filter methods): the :data:`FINETUNE` budget at a 10x peak learning rate.
#: With a tenth of the filters trained, 1e-3 is too small a step: at the same 30 epochs the 10 % methods
#: stopped at 0.72-0.87 of full fine-tuning's gain, while at 1e-2 they reach it (and full fine-tuning
#: itself gets worse at 1e-2); the selective benchmark reports full fine-tuning at this rate as a control.
SELECTIVE = TrainConfig(epochs=30, batch_size=32, lr=1e-2, min_steps=90, balanced_batches=True)
