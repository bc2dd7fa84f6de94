"""One training loop for every stage: AdamW, a one-cycle cosine schedule, seeded batches,
a loss with the uniform signature ``loss(logits (N, K), targets (N,), weights (N,))``
(see :mod:`imutune.train.losses`), progress bars and resumable checkpoints.

Uses CUDA when available (``device="auto"``), the CPU otherwise.
"""
from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .. import _validation as V
from .._io import save_torch_atomic, write_json_atomic
from .losses import FilterLoss, WeightedCrossEntropy

__all__ = ['TrainConfig', 'train', 'predict_logits', 'predict_proba', 'resolve_device']


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings of one training stage."""

    epochs: int = 20              # passes over the training windows
    batch_size: int = 64          # windows per optimiser step
    lr: float = 2e-3              # peak AdamW learning rate (cosine decay to 0)
    weight_decay: float = 1e-4    # AdamW decoupled weight decay
    seed: int = 0                 # seeds parameter init order, shuffling and dropout
    device: str = "auto"          # "auto" (CUDA if present, else CPU), "cpu" or "cuda"

    def __post_init__(self) -> None:
        V.check_int_at_least("epochs", self.epochs, 1)
        V.check_int_at_least("batch_size", self.batch_size, 1)
        V.check_positive("lr", self.lr, where="TrainConfig")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay!r}")
        V.check_choice("device", self.device, ("auto", "cpu", "cuda"))


def resolve_device(device: str = "auto") -> torch.device:
    """``"auto"`` -> CUDA if available, else CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' was requested but no CUDA device is available; use 'auto' or 'cpu'")
    return torch.device(device)


def _check_xy(x: np.ndarray, y: np.ndarray, model: nn.Module | None = None) -> None:
    if x.ndim != 3:
        raise ValueError(f"x must have shape (N, C, T), got {x.shape}")
    if y.shape != (x.shape[0],):
        raise ValueError(f"y must have shape ({x.shape[0]},), got {y.shape}")
    V.check_finite_array("x", x)
    if model is not None and getattr(model, "in_channels", x.shape[1]) != x.shape[1]:
        raise ValueError(f"x has {x.shape[1]} channels; the model expects {model.in_channels}")


def train(model: nn.Module, x: np.ndarray, y: np.ndarray, *, config: TrainConfig = TrainConfig(),
          loss_fn: nn.Module | None = None, sample_weights: np.ndarray | None = None,
          checkpoint_path: str | os.PathLike | None = None, desc: str = "train",
          progress: bool = True, extra_config: dict | None = None) -> dict[str, Any]:
    """Train ``model`` in place on normalized windows.

    Parameters
    ----------
    model : nn.Module
        Maps (B, C, T) float32 to logits (B, K).
    x : np.ndarray
        Array of shape (N, C, T), float32, normalized.
    y : np.ndarray
        Array of shape (N,), int64 in [0, K).
    config : TrainConfig
        Epochs, batch size, learning rate, seed, device.
    loss_fn : nn.Module, optional
        Called as ``loss_fn(logits, targets, weights)``; by default FilterLoss
        (weighted cross-entropy) when ``sample_weights`` are given, else plain
        cross-entropy.
    sample_weights : np.ndarray, optional
        Array of shape (N,), float32, >= 0 (FilterLoss weights); ones by default.
    checkpoint_path : path-like, optional
        Resumable checkpoint written after every epoch (atomically); if it
        exists and was written with the same config, training resumes after its
        last epoch. The config is saved next to it as ``<name>.config.json``.
    extra_config : dict, optional
        Extra fields saved in (and matched against) the checkpoint config.

    Returns
    -------
    dict
        ``{"loss": [per-epoch mean loss], "seconds": float, "resumed_from_epoch": int, "device": str}``.

    Raises
    ------
    ValueError
        On shape mismatches, non-finite inputs, or a NaN loss.
    """
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
    device = resolve_device(config.device)
    torch.manual_seed(config.seed)
    model.to(device)
    loss_fn.to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    steps_per_epoch = (n + config.batch_size - 1) // config.batch_size
    total_steps = config.epochs * steps_per_epoch
    # OneCycleLR divides by zero when pct_start * total_steps == 1 exactly (10 steps); nudge the warm-up then
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=config.lr, total_steps=total_steps,
                                                pct_start=0.1 if total_steps != 10 else 0.15, anneal_strategy="cos")
    ckpt_cfg = {"train": asdict(config), "n_windows": n, **(extra_config or {})}
    start_epoch, history = 0, []
    if checkpoint_path is not None and Path(checkpoint_path).exists():
        state = torch.load(checkpoint_path, map_location=device, weights_only=False)
        if state.get("config") == ckpt_cfg:
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
            sched.load_state_dict(state["scheduler"])
            start_epoch, history = state["epoch"], list(state["history"])
            torch.set_rng_state(state["torch_rng"])  # dropout continues exactly where it stopped
    gen = torch.Generator().manual_seed(config.seed)
    for _ in range(start_epoch):  # replay the shuffles of finished epochs so a resume sees the same batches
        torch.randperm(n, generator=gen)
    xt = torch.from_numpy(x)
    yt = torch.from_numpy(y)
    wt = torch.from_numpy(w)
    t0 = time.perf_counter()
    bar = _progress(range(start_epoch, config.epochs), desc, progress, initial=start_epoch, total=config.epochs)
    for epoch in bar:
        model.train()
        perm = torch.randperm(n, generator=gen)
        total, count = 0.0, 0
        for s in range(0, n, config.batch_size):
            idx = perm[s:s + config.batch_size]
            if idx.numel() < 2 and n >= 2:  # batch norm needs two samples; fold a lone tail into nothing
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
            opt.step()
            sched.step()
            total += float(loss.detach()) * idx.numel()
            count += idx.numel()
        history.append(total / max(count, 1))
        if hasattr(bar, "set_postfix"):
            bar.set_postfix(loss=f"{history[-1]:.4f}")
        if checkpoint_path is not None:
            save_torch_atomic(checkpoint_path, {"model": model.state_dict(), "optimizer": opt.state_dict(),
                                                "scheduler": sched.state_dict(), "epoch": epoch + 1,
                                                "history": history, "config": ckpt_cfg,
                                                "torch_rng": torch.get_rng_state()})
            write_json_atomic(Path(str(checkpoint_path) + ".config.json"), ckpt_cfg)
    model.eval()
    return {"loss": history, "seconds": time.perf_counter() - t0, "resumed_from_epoch": start_epoch,
            "device": str(device)}


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

