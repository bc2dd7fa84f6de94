"""The one training loop of every stage: pretraining, fine-tuning, the quality filter's
out-of-fold fits, the baselines and selective filter fine-tuning.

AdamW, the one-cycle cosine schedule of :func:`one_cycle_schedule`, seeded
shuffling (or, for few windows, a step minimum with class-balanced batches), a loss with the uniform signature ``loss(logits (N, K), targets (N,),
weights (N,))`` (see :mod:`imutune.train.losses`), progress bars, per-epoch
evaluation, resumable checkpoints that are data (:mod:`imutune.train.checkpoint`:
safetensors + JSON, bit-exact resume) and :class:`TrainHooks` for what a stage
adds (gradient masks for selected rows, frozen batch-norm statistics, ...).
:func:`train` returns what it did (:class:`TrainResult`: steps taken, epochs,
final loss, the epoch it resumed from).

Presets (:data:`PRETRAIN`, :data:`FINETUNE`, :data:`SELECTIVE`) and :class:`TrainConfig` live in
:mod:`imutune.train.config` (torch-free) and are re-exported here.
Uses CUDA when available (``device="auto"``), the CPU otherwise.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Sequence, TypedDict

import numpy as np
import torch
from torch import nn

from .. import _validation as V
from .config import FINETUNE, PRETRAIN, SELECTIVE, SMALL_MODEL_PARAMETERS, TrainConfig
from .losses import FilterLoss, WeightedCrossEntropy

__all__ = ['TrainConfig', 'PRETRAIN', 'FINETUNE', 'SELECTIVE', 'TrainResult', 'TrainHooks', 'GradientMask', 'FrozenModules',
           'train', 'one_cycle_schedule', 'resolve_threads', 'predict_logits', 'predict_proba', 'resolve_device']


class TrainResult(TypedDict):
    """What :func:`train` did (a plain dict; these keys are always present)."""

    loss: list[float]             # per-epoch mean training loss, all epochs (resumed ones included)
    final_loss: float | None      # loss[-1], None when no epoch ran
    seconds: float                # training time of this call (batches only: evaluation and checkpoints excluded)
    epochs: int                   # epochs completed in total (== config.epochs)
    epochs_run: int               # epochs this call ran (epochs - resumed_from_epoch)
    steps: int                    # optimiser steps taken in total (resumed ones included)
    steps_run: int                # optimiser steps this call took
    steps_per_epoch: int          # batches per epoch, ceil(N / batch_size) (lone tails and all-zero-weight
    #                               batches are skipped, so ``steps`` can be smaller than epochs * this)
    scheduled_steps: int          # steps the one-cycle schedule spans: max(epochs * steps_per_epoch, min_steps)
    few_shot: bool                # min_steps set the budget (even slices of full, maybe balanced, batches; then
    #                               steps == scheduled_steps; see TrainConfig.min_steps)
    resumed_from_epoch: int       # epochs restored from the checkpoint (0 = started fresh)
    device: str
    threads: int                  # torch intra-op threads during training
    curve: list[list[float]]      # [epoch, cumulative seconds, eval_fn value] per evaluation (empty without eval_fn)


class TrainHooks:
    """Extension points of :func:`train`; every method is a no-op here.

    Called in this order: :meth:`param_groups` once (before the optimiser is
    built), then per epoch :meth:`on_train_mode` (after ``model.train()``), per
    step :meth:`after_backward` (gradients computed, before the optimiser
    step) and :meth:`after_step`; :meth:`on_end` always runs last, also when
    training raises. Several hooks are called in list order.

    ``resumable = False`` marks a hook whose state lives outside the model's
    state dict (e.g. scratch batch-norm statistics); :func:`train` refuses a
    ``checkpoint_path`` together with such a hook.
    """

    resumable: bool = True

    def param_groups(self, model: nn.Module, config: TrainConfig) -> list[dict] | None:
        """AdamW parameter groups, or None for one group of every ``requires_grad`` parameter."""
        return None

    def on_train_mode(self, model: nn.Module) -> None:
        """Adjust module modes after ``model.train()`` at the start of every epoch."""

    def after_backward(self, model: nn.Module) -> None:
        """Edit gradients before the optimiser step."""

    def after_step(self, model: nn.Module) -> None:
        """After the optimiser and scheduler step."""

    def on_end(self, model: nn.Module) -> None:
        """After the last epoch, or when training raised."""


class GradientMask(TrainHooks):
    """Train only selected entries (rows) of some parameters.

    Every backward pass multiplies each masked parameter's gradient by its 0/1
    mask, and masked parameters get no weight decay (AdamW's decoupled decay
    would move the unselected entries; at lr 1e-3 and decay 1e-4 it would
    shrink the selected ones by only 1e-7 per step), so Adam's moments and
    update of the unselected entries are exactly zero and those entries keep
    their bits. Other trainable parameters form the first group with
    ``config.weight_decay``.

    Parameters
    ----------
    masks : sequence of (nn.Parameter, torch.Tensor)
        Each parameter with a bool or 0/1 tensor broadcastable to it (e.g.
        shape (F, 1, 1) for the rows of a conv weight (F, C, k)).
    extra : sequence of nn.Parameter
        Trainable parameters outside the model (e.g. the compact selected rows
        of a conv weight in selective fine-tuning) that join the masked ones'
        group: stepped by the optimiser, no weight decay, no mask.
    """

    def __init__(self, masks: Sequence[tuple[nn.Parameter, torch.Tensor]], *,
                 extra: Sequence[nn.Parameter] = ()) -> None:
        self.params = [p for p, _ in masks]
        self.masks = [m.to(device=p.device, dtype=p.dtype).expand_as(p).contiguous() for p, m in masks]
        self._ids = {id(p) for p in self.params}
        self.extra = list(extra)

    def param_groups(self, model: nn.Module, config: TrainConfig) -> list[dict]:
        full = [p for p in model.parameters() if p.requires_grad and id(p) not in self._ids]
        part = [p for p in model.parameters() if p.requires_grad and id(p) in self._ids] + self.extra
        groups = [{"params": full, "weight_decay": config.weight_decay}] if full else []
        if part:
            groups.append({"params": part, "weight_decay": 0.0})
        return groups

    def after_backward(self, model: nn.Module) -> None:
        pairs = [(p.grad, m) for p, m in zip(self.params, self.masks) if p.grad is not None]
        if pairs:
            # torch._foreach_mul_: PyTorch's (underscore, but stable since 1.9) fused in-place multiply of tensor lists
            torch._foreach_mul_([g for g, _ in pairs], [m for _, m in pairs])


class FrozenModules(TrainHooks):
    """Keep some modules in eval mode while the model trains (e.g. a batch norm none of whose
    channels train: it then normalizes with, and never updates, its running statistics)."""

    def __init__(self, modules: Sequence[nn.Module]) -> None:
        self.modules = list(modules)

    def on_train_mode(self, model: nn.Module) -> None:
        for m in self.modules:
            m.eval()


class _Hooks(TrainHooks):
    def __init__(self, hooks: Sequence[TrainHooks]) -> None:
        self.hooks = list(hooks)
        self.resumable = all(h.resumable for h in self.hooks)

    def param_groups(self, model, config):
        groups = [g for g in (h.param_groups(model, config) for h in self.hooks) if g is not None]
        if len(groups) > 1:
            raise ValueError(f"{len(groups)} hooks define parameter groups; at most one may")
        return groups[0] if groups else None

    def on_train_mode(self, model):
        for h in self.hooks:
            h.on_train_mode(model)

    def after_backward(self, model):
        for h in self.hooks:
            h.after_backward(model)

    def after_step(self, model):
        for h in self.hooks:
            h.after_step(model)

    def on_end(self, model):
        for h in self.hooks:
            h.on_end(model)


def one_cycle_schedule(opt: torch.optim.Optimizer, lr: float, total_steps: int):
    """The schedule of every stage: one-cycle cosine (``torch.optim.lr_scheduler.OneCycleLR``,
    ``anneal_strategy="cos"``: warm-up from ``lr / 25`` to ``lr``, then cosine decay to
    ``lr / 25e4``; Smith & Topin, "Super-Convergence", arXiv 1708.07120).

    The warm-up is 10% of the steps but at least 1.5 steps: OneCycleLR divides by
    zero when ``pct_start * total_steps == 1`` and its warm-up is meaningless below
    one step. With fewer than 3 steps (where the cycle is undefined; one step would
    be taken at ``lr / 25e4``) the rate is the constant ``lr``.
    """
    if total_steps < 3:
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=total_steps,
                                               pct_start=max(0.1, 1.5 / total_steps), anneal_strategy="cos")


def resolve_device(device: str = "auto") -> torch.device:
    """``"auto"`` -> CUDA if available, else CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' was requested but no CUDA device is available; use 'auto' or 'cpu'")
    return torch.device(device)


def resolve_threads(config: TrainConfig, model: nn.Module, device: torch.device) -> int | None:
    """Intra-op threads to train with: ``config.threads`` if set, else 1 for a model with
    fewer than :data:`~imutune.train.config.SMALL_MODEL_PARAMETERS` (1,000,000) parameters
    on the CPU, else None (leave torch's setting)."""
    if config.threads is not None:
        return int(config.threads)
    if device.type == "cpu" and sum(p.numel() for p in model.parameters()) < SMALL_MODEL_PARAMETERS:
        return 1
    return None


def _check_xy(x: np.ndarray, y: np.ndarray, model: nn.Module | None = None) -> None:
    if x.ndim != 3:
        raise ValueError(f"x must have shape (N, C, T), got {x.shape}")
    if y.shape != (x.shape[0],):
        raise ValueError(f"y must have shape ({x.shape[0]},), got {y.shape}")
    V.check_finite_array("x", x)
    if model is not None and getattr(model, "in_channels", x.shape[1]) != x.shape[1]:
        raise ValueError(f"x has {x.shape[1]} channels; the model expects {model.in_channels}")


def _fingerprint(*arrays: np.ndarray) -> str:
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(memoryview(a).cast("B"))
    return h.hexdigest()


def train(model: nn.Module, x: np.ndarray, y: np.ndarray, *, config: TrainConfig = PRETRAIN,
          loss_fn: nn.Module | None = None, sample_weights: np.ndarray | None = None,
          checkpoint_path: str | os.PathLike | None = None, desc: str = "train",
          progress: bool = True, extra_config: dict | None = None,
          hooks: TrainHooks | Sequence[TrainHooks] | None = None,
          eval_fn: Callable[[nn.Module], float] | None = None) -> TrainResult:
    """Train ``model`` in place on normalized windows.

    Parameters
    ----------
    model : nn.Module
        Maps (B, C, T) float32 to logits (B, K). Only parameters with
        ``requires_grad`` train.
    x : np.ndarray
        Array of shape (N, C, T), float32, normalized.
    y : np.ndarray
        Array of shape (N,), int64 in [0, K).
    config : TrainConfig
        Epochs, batch size, learning rate, seed, device, threads, step minimum
        and balanced batches (default :data:`PRETRAIN`; fine-tuning stages pass
        :data:`FINETUNE`). The run takes ``config.total_steps(N)`` =
        ``max(epochs x ceil(N / batch_size), min_steps)`` steps; when the minimum
        sets it (few-shot) the steps are spread over the epochs in full batches
        (class-balanced with ``balanced_batches``); see :class:`TrainConfig`.
    loss_fn : nn.Module, optional
        Called as ``loss_fn(logits, targets, weights)``; by default FilterLoss
        (weighted cross-entropy) when ``sample_weights`` are given, else plain
        cross-entropy.
    sample_weights : np.ndarray, optional
        Array of shape (N,), float32, >= 0 (FilterLoss weights); ones by default.
    checkpoint_path : path-like, optional
        Resumable checkpoint (:mod:`imutune.train.checkpoint`: JSON at this
        path + a safetensors file beside it) written after every epoch. If it
        exists and was written by the same run (same config except
        ``threads``, same data, same ``extra_config``), training resumes after
        its last epoch with the saved weights, optimiser, schedule and RNG
        states, so the result is bit-identical to an uninterrupted run; a
        checkpoint of another run is overwritten.
    extra_config : dict, optional
        Extra JSON fields saved in (and matched against) the checkpoint.
    hooks : TrainHooks or sequence of TrainHooks, optional
        See :class:`TrainHooks`, :class:`GradientMask`, :class:`FrozenModules`.
    eval_fn : callable, optional
        Called with the model in eval mode (under ``torch.no_grad``) before the
        first epoch and after every epoch; its values form ``curve``. Its time
        is not counted in ``seconds``.

    Returns
    -------
    TrainResult
        A dict: ``loss``, ``final_loss``, ``seconds``, ``epochs``,
        ``epochs_run``, ``steps``, ``steps_run``, ``steps_per_epoch``,
        ``resumed_from_epoch``, ``device``, ``threads``, ``curve``.

    Raises
    ------
    ValueError
        On shape mismatches, non-finite inputs or weights, no trainable
        parameter, a NaN loss, a checkpoint together with a non-resumable
        hook, or an unreadable checkpoint (the message names the file and says
        how to start fresh; a pickle is never loaded).
    """
    hk = _Hooks([] if hooks is None else [hooks] if isinstance(hooks, TrainHooks) else list(hooks))
    threads_before = torch.get_num_threads()
    threads = None
    try:  # the hooks' on_end runs however this ends (they may have changed requires_grad or forwards)
        x = np.asarray(x, dtype=np.float32)
        y = np.asarray(y, dtype=np.int64)
        _check_xy(x, y, model)
        n = x.shape[0]
        if n == 0:
            raise ValueError("x is empty; expected at least one training window")
        w = np.ones(n, dtype=np.float32) if sample_weights is None else np.asarray(sample_weights, dtype=np.float32)
        if w.shape != (n,):
            raise ValueError(f"sample_weights must have shape ({n},), got {w.shape}")
        if not np.all(np.isfinite(w)) or np.any(w < 0) or not np.any(w > 0):
            raise ValueError("sample_weights must be finite, >= 0 and not all zero")
        if loss_fn is None:  # given weights are always used: FilterLoss is the weighted cross-entropy
            loss_fn = FilterLoss() if sample_weights is not None else WeightedCrossEntropy()
        if checkpoint_path is not None and not hk.resumable:
            raise ValueError("checkpoint_path cannot be used with a hook whose state is not in the model's state "
                             f"dict ({[type(h).__name__ for h in hk.hooks if not h.resumable]}); train without one")
        device = resolve_device(config.device)
        threads = resolve_threads(config, model, device)
        if threads is not None:
            torch.set_num_threads(threads)
        return _compute_train(model, x, y, w, config=config, loss_fn=loss_fn, device=device, hooks=hk,
                              checkpoint_path=checkpoint_path, desc=desc, progress=progress,
                              extra_config=extra_config, eval_fn=eval_fn)
    finally:
        try:
            hk.on_end(model)
        finally:
            model.eval()
            if threads is not None:
                torch.set_num_threads(threads_before)


def _compute_train(model: nn.Module, x: np.ndarray, y: np.ndarray, w: np.ndarray, *, config: TrainConfig,
                   loss_fn: nn.Module, device: torch.device, hooks: _Hooks, checkpoint_path, desc: str,
                   progress: bool, extra_config: dict | None, eval_fn) -> TrainResult:
    from .checkpoint import (
        TrainState,
        capture_rng,
        checkpoint_error,
        load_checkpoint,
        read_checkpoint_header,
        restore_rng,
        save_checkpoint,
    )

    n = x.shape[0]
    torch.manual_seed(config.seed)
    model.to(device)
    loss_fn.to(device)
    groups = hooks.param_groups(model, config)
    if groups is None:
        groups = [p for p in model.parameters() if p.requires_grad]
    if not any(g["params"] if isinstance(g, dict) else True for g in groups):
        raise ValueError("the model has no trainable parameter (every requires_grad is False); nothing to train")
    opt = torch.optim.AdamW(groups, lr=config.lr, weight_decay=config.weight_decay)
    steps_per_epoch = (n + config.batch_size - 1) // config.batch_size
    few_shot = config.few_shot(n)              # min_steps sets the budget: even slices of full batches
    total_steps = config.total_steps(n)
    sched = one_cycle_schedule(opt, config.lr, total_steps)
    gen = torch.Generator().manual_seed(config.seed)
    identity = None
    if checkpoint_path is not None:   # what makes a checkpoint this run's: config (threads aside), data, extras
        inactive = {"threads"} if few_shot else {"threads", "min_steps", "balanced_batches"}  # classic: no effect
        identity = {"train": {k: v for k, v in asdict(config).items() if k not in inactive}, "n_windows": n,
                    "data_sha256": _fingerprint(x, y, w), **(extra_config or {})}
        identity = json.loads(json.dumps(identity))       # as the checkpoint stores it (tuples -> lists)
    start_epoch, steps, history, curve = 0, 0, [], []
    if checkpoint_path is not None and Path(checkpoint_path).exists():
        head = read_checkpoint_header(checkpoint_path)
        if head["identity"] == identity:
            st = load_checkpoint(checkpoint_path, head)
            try:
                model.load_state_dict(st.model)
                opt.load_state_dict(st.optimizer)
                sched.load_state_dict(st.scheduler)
                if st.shuffle_rng is None:
                    raise KeyError("rng.shuffle")
                gen.set_state(st.shuffle_rng)
                restore_rng(st.rng)           # dropout and any global-RNG user continue where they stopped
            except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as e:
                raise checkpoint_error(Path(checkpoint_path), f"its state does not fit this model and optimiser "
                                                              f"({type(e).__name__}: {e})") from None
            start_epoch, steps, history, curve = st.epoch, st.steps, list(st.history), [list(c) for c in st.curve]
    xt, yt, wt = torch.from_numpy(x), torch.from_numpy(y), torch.from_numpy(w)
    pool = torch.from_numpy(np.flatnonzero(w > 0))           # few-shot draws: the windows that carry weight
    y_pool = yt[pool]
    batch = min(config.batch_size, max(int(pool.numel()), 2))  # two at least for batch norm (repeats if one)
    seconds, steps_run = 0.0, 0
    cum = curve[-1][1] if curve else 0.0

    def evaluate(epoch: int) -> None:
        if eval_fn is not None:
            model.eval()
            with torch.no_grad():
                curve.append([epoch, cum + seconds, float(eval_fn(model))])

    if not curve:
        evaluate(start_epoch)
    bar = _progress(range(start_epoch, config.epochs), desc, progress, initial=start_epoch, total=config.epochs)
    for epoch in bar:
        t0 = time.perf_counter()
        model.train()
        hooks.on_train_mode(model)
        if few_shot:
            batches = _few_shot_batches(pool, y_pool, batch, _epoch_steps(total_steps, config.epochs, epoch),
                                        gen, balanced=config.balanced_batches)
        else:
            perm = torch.randperm(n, generator=gen)
            batches = (perm[s:s + config.batch_size] for s in range(0, n, config.batch_size))
        total, count = 0.0, 0
        for idx in batches:
            if idx.numel() < 2 and n >= 2 and not few_shot:  # batch norm needs two samples; skip a lone tail
                continue
            xb, yb, wb = xt[idx].to(device), yt[idx].to(device), wt[idx].to(device)
            if not bool((wb > 0).any()):
                continue
            logits = model(xb)
            loss = loss_fn(logits, yb, wb)
            if not torch.isfinite(loss):
                raise ValueError(f"loss became {loss.item()} at epoch {epoch + 1} ({desc}); "
                                 "check the learning rate and sample weights")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            hooks.after_backward(model)
            opt.step()
            sched.step()
            hooks.after_step(model)
            steps_run += 1
            total += float(loss.detach()) * idx.numel()
            count += idx.numel()
        history.append(total / max(count, 1))
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds += time.perf_counter() - t0
        evaluate(epoch + 1)
        if hasattr(bar, "set_postfix"):
            bar.set_postfix(loss=f"{history[-1]:.4f}")
        if checkpoint_path is not None:
            save_checkpoint(checkpoint_path, TrainState(
                epoch=epoch + 1, steps=steps + steps_run, identity=identity, history=history, curve=curve,
                model=model.state_dict(), optimizer=opt.state_dict(), scheduler=sched.state_dict(),
                shuffle_rng=gen.get_state(), rng=capture_rng()))
    return TrainResult(loss=history, final_loss=history[-1] if history else None, seconds=seconds,
                       epochs=config.epochs, epochs_run=config.epochs - start_epoch, steps=steps + steps_run,
                       steps_run=steps_run, steps_per_epoch=steps_per_epoch, resumed_from_epoch=start_epoch,
                       device=str(device), threads=torch.get_num_threads(), curve=curve,
                       scheduled_steps=total_steps, few_shot=few_shot)


def _epoch_steps(total_steps: int, epochs: int, epoch: int) -> int:
    """Steps of ``epoch`` (0-based) when ``total_steps`` are spread evenly over ``epochs`` (sums to the total)."""
    return (epoch + 1) * total_steps // epochs - epoch * total_steps // epochs


def _cycled(items: torch.Tensor, count: int, gen: torch.Generator) -> torch.Tensor:
    """``count`` entries of ``items`` taken from concatenated seeded permutations (each once per cycle)."""
    reps = -(-count // items.numel())
    order = torch.cat([torch.randperm(items.numel(), generator=gen) for _ in range(reps)])[:count]
    return items[order]


def _few_shot_batches(pool: torch.Tensor, y_pool: torch.Tensor, batch: int, steps: int, gen: torch.Generator, *,
                      balanced: bool) -> list[torch.Tensor]:
    """The index batches of one few-shot epoch: ``steps`` batches of ``batch`` windows from ``pool``.

    Balanced: each class present gets ``batch // K`` windows per batch and ``batch % K`` classes drawn at random
    one more, taken round-robin from seeded permutations of the class (:class:`TrainConfig`,
    ``balanced_batches``). Otherwise: consecutive slices of concatenated seeded permutations of the pool.
    Only ``gen`` is drawn from, so the epoch is a function of the generator state a checkpoint saves.
    """
    if not balanced:
        return list(_cycled(pool, steps * batch, gen).view(steps, batch))   # (steps * B,) -> (steps, B)
    classes = torch.unique(y_pool)
    k = classes.numel()
    quota = torch.full((steps, k), batch // k, dtype=torch.int64)
    for s in range(steps):                                    # the remainder goes to random classes
        quota[s, torch.randperm(k, generator=gen)[:batch % k]] += 1
    members = [_cycled(pool[y_pool == c], int(quota[:, j].sum()), gen) for j, c in enumerate(classes)]
    ends = quota.cumsum(0)                                    # (steps, K) end offset of each batch per class
    return [torch.cat([members[j][int(ends[s, j] - quota[s, j]):int(ends[s, j])] for j in range(k)])
            for s in range(steps)]


def _progress(it, desc: str, enabled: bool, **kw):
    if not enabled:
        return it
    from tqdm.auto import tqdm

    return tqdm(it, desc=desc, unit="epoch", leave=False, dynamic_ncols=True, **kw)


@torch.no_grad()
def predict_logits(model: nn.Module, x: np.ndarray, *, batch_size: int = 512, device: str = "auto") -> np.ndarray:
    """Logits of shape (N, K), float32, for normalized windows ``x`` of shape (N, C, T) (eval mode)."""
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 3:
        raise ValueError(f"x must have shape (N, C, T), got {x.shape}")
    dev = resolve_device(device)
    model.eval().to(dev)
    out = [model(torch.from_numpy(x[s:s + batch_size]).to(dev)).float().cpu().numpy()
           for s in range(0, x.shape[0], batch_size)]
    k = getattr(model, "num_classes", None)
    return np.concatenate(out) if out else np.zeros((0, k or 0), np.float32)


def predict_proba(model: nn.Module, x: np.ndarray, **kw) -> np.ndarray:
    """Softmax probabilities of shape (N, K), float32."""
    logits = predict_logits(model, x, **kw)
    return torch.softmax(torch.from_numpy(logits), dim=1).numpy()
