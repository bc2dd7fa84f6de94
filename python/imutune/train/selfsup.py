"""Self-supervised pretraining on unlabeled windows: multi-task transformation prediction.

The objective is that of Saeed, Ozcelebi and Lukkien, "Multi-task
Self-Supervised Learning for Human Activity Detection", Proc. ACM IMWUT 3(2),
2019 (Sec. 3): a shared encoder with one binary head per signal
transformation; head ``t`` tells a window from its transformed copy
(original 0, transformed 1), and the loss is the mean of the per-task binary
cross-entropies. Haresamudram et al., "Assessing the State of
Self-Supervised Human Activity Recognition Using Wearables", Proc. ACM IMWUT
6(3), 2022, evaluate it among the standard self-supervised HAR methods.

The eight transformations (:data:`TRANSFORMATIONS`; Saeed et al. Sec. 3.1 and
Um et al., "Data augmentation of wearable sensor data for Parkinson's disease
monitoring using convolutional neural networks", ICMI 2017) act on the raw
windows (physical units) before normalization:

* ``noise``: additive Gaussian noise, sigma = ``noise_std`` x the channel's std;
* ``scaling``: per-channel factor ~ N(1, ``scaling_std``);
* ``rotation``: a uniformly random 3-D rotation of each consecutive channel
  triple (x, y, z of one sensor; channels beyond the last full triple are kept);
* ``negation``: x -> -x;
* ``time_flip``: the window reversed in time;
* ``permutation``: ``permutation_segments`` equal segments in random order;
* ``time_warp``: time stretched and compressed by a smooth random speed curve
  (4 knots, speed ~ N(1, ``warp_std``)), linear interpolation;
* ``channel_shuffle``: the axes of each channel triple in a random order.

The encoder is a registry model (:func:`imutune.models.resnet1d.create_model`);
its ``embed`` output feeds the task heads, which are dropped afterwards: the
bundle holds the encoder and a freshly initialised classifier head for the
recordings' class list, to be fitted by fine-tuning
(:func:`imutune.personalize.finetune.finetune` replaces it for a new class set).
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from ..models.resnet1d import create_model
from ..signal.windows import Normalizer, WindowConfig, Windows
from .bundle import ModelBundle, contract_of_windows
from .loop import resolve_device

__all__ = ["TRANSFORMATIONS", "SelfSupConfig", "pretrain_self_supervised", "transform", "selfsup_loss"]

#: The transformations whose detection is the pretext task, in head order.
TRANSFORMATIONS = ("noise", "scaling", "rotation", "negation", "time_flip", "permutation", "time_warp",
                   "channel_shuffle")


@dataclass(frozen=True)
class SelfSupConfig:
    """Settings of self-supervised pretraining.

    Attributes
    ----------
    steps : int
        Optimiser steps (the budget is in steps, not epochs, so a small corpus
        still gets a full schedule), >= 1.
    batch_size : int
        Windows per step (each step forwards ``(1 + len(tasks)) * batch_size`` windows).
    lr : float
        Peak Adam learning rate (linear warm-up over 5% of the steps, cosine decay).
    weight_decay : float
    tasks : tuple of str
        A non-empty subset of :data:`TRANSFORMATIONS`.
    noise_std, scaling_std, warp_std : float
        Transformation strengths (see the module docstring).
    permutation_segments : int
        Segments of the ``permutation`` transformation, >= 2.
    seed : int
    device : str
        ``"auto"``, ``"cpu"`` or ``"cuda"``.
    """

    steps: int = 600
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-4
    tasks: tuple[str, ...] = TRANSFORMATIONS
    noise_std: float = 0.1
    scaling_std: float = 0.2
    warp_std: float = 0.2
    permutation_segments: int = 4
    seed: int = 0
    device: str = "auto"

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "permutation_segments"):
            v = getattr(self, name)
            lo = 2 if name == "permutation_segments" else 1
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise ValueError(f"SelfSupConfig.{name} must be an int >= {lo}, got {v!r}")
        for name in ("lr", "noise_std", "scaling_std", "warp_std"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
                raise ValueError(f"SelfSupConfig.{name} must be a positive number, got {v!r}")
        if not (isinstance(self.weight_decay, (int, float)) and self.weight_decay >= 0):
            raise ValueError(f"SelfSupConfig.weight_decay must be >= 0, got {self.weight_decay!r}")
        tasks = tuple(self.tasks)
        bad = [t for t in tasks if t not in TRANSFORMATIONS]
        if not tasks or bad or len(set(tasks)) != len(tasks):
            raise ValueError(f"SelfSupConfig.tasks has {list(tasks)}; expected distinct names among "
                             f"{list(TRANSFORMATIONS)}")
        object.__setattr__(self, "tasks", tasks)


# --------------------------------------------------------------------------- transformations (raw units)


def _random_rotations(n: int, g: torch.Generator) -> torch.Tensor:
    """(n, 3, 3) rotation matrices, uniform on SO(3) (QR of a Gaussian matrix with sign fix)."""
    a = torch.randn(n, 3, 3, generator=g)
    q, r = torch.linalg.qr(a)
    q = q * torch.sign(torch.diagonal(r, dim1=1, dim2=2)).unsqueeze(1)
    det = torch.linalg.det(q)
    q[:, :, 0] = q[:, :, 0] * det.unsqueeze(1)                         # proper rotations (det +1)
    return q


def _triples(c: int) -> int:
    return c // 3


def _t_noise(x, std, cfg, g):
    return x + torch.randn(x.shape, generator=g) * (cfg.noise_std * std)[None, :, None]


def _t_scaling(x, std, cfg, g):
    return x * (1.0 + cfg.scaling_std * torch.randn(x.shape[0], x.shape[1], 1, generator=g))


def _t_rotation(x, std, cfg, g):
    n, c, t = x.shape
    k = _triples(c)
    if k == 0:
        return x
    out = x.clone()
    head = x[:, : 3 * k].reshape(n, k, 3, t)                           # (N, 3k, T) -> (N, k, 3, T)
    rot = _random_rotations(n, g)                                       # one rotation per window, all sensors
    out[:, : 3 * k] = torch.einsum("nij,nkjt->nkit", rot, head).reshape(n, 3 * k, t)   # (N, k, 3, T) -> (N, 3k, T)
    return out


def _t_negation(x, std, cfg, g):
    return -x


def _t_time_flip(x, std, cfg, g):
    return torch.flip(x, dims=(2,))


def _t_permutation(x, std, cfg, g):
    n, c, t = x.shape
    m = cfg.permutation_segments
    edges = np.linspace(0, t, m + 1).round().astype(int)
    segs = [torch.arange(edges[i], edges[i + 1]) for i in range(m)]
    idx = torch.empty(n, t, dtype=torch.long)
    for i in range(n):
        order = torch.randperm(m, generator=g)
        if torch.equal(order, torch.arange(m)):                         # never the identity
            order = torch.roll(order, 1)
        idx[i] = torch.cat([segs[j] for j in order.tolist()])
    return torch.gather(x, 2, idx[:, None, :].expand(n, c, t))


def _t_time_warp(x, std, cfg, g):
    n, c, t = x.shape
    knots = 4
    speed = (1.0 + cfg.warp_std * torch.randn(n, knots + 2, generator=g)).clamp(min=0.2)   # (N, K+2)
    grid = torch.linspace(0, knots + 1, t)
    lo = grid.floor().long().clamp(max=knots)
    frac = grid - lo
    sp = speed[:, lo] * (1 - frac) + speed[:, lo + 1] * frac                                 # (N, T)
    pos = torch.cumsum(sp, dim=1)
    pos = (pos - pos[:, :1]) / (pos[:, -1:] - pos[:, :1]).clamp(min=1e-6) * (t - 1)          # warped sample times
    i0 = pos.floor().long().clamp(0, t - 2)
    w = (pos - i0).unsqueeze(1)                                                               # (N, 1, T)
    a = torch.gather(x, 2, i0[:, None, :].expand(n, c, t))
    b = torch.gather(x, 2, (i0 + 1)[:, None, :].expand(n, c, t))
    return a * (1 - w) + b * w


def _t_channel_shuffle(x, std, cfg, g):
    n, c, t = x.shape
    k = _triples(c)
    if k == 0:
        return x
    out = x.clone()
    for i in range(n):
        order = torch.randperm(3, generator=g)
        if torch.equal(order, torch.arange(3)):
            order = torch.tensor([1, 2, 0])
        for s in range(k):
            out[i, 3 * s:3 * s + 3] = x[i, 3 * s + order]
    return out


_TRANSFORMS: dict[str, Callable[..., torch.Tensor]] = {
    "noise": _t_noise, "scaling": _t_scaling, "rotation": _t_rotation, "negation": _t_negation,
    "time_flip": _t_time_flip, "permutation": _t_permutation, "time_warp": _t_time_warp,
    "channel_shuffle": _t_channel_shuffle,
}


def transform(name: str, x: np.ndarray | torch.Tensor, *, std: np.ndarray | torch.Tensor | None = None,
              config: SelfSupConfig = SelfSupConfig(), seed: int = 0) -> torch.Tensor:
    """Apply one of :data:`TRANSFORMATIONS` to raw windows.

    Parameters
    ----------
    name : str
    x : array of shape (N, C, T), float32, physical units.
    std : array of shape (C,), optional
        Channel std for ``noise`` (default: the std of ``x``).
    config : SelfSupConfig
        Strengths.
    seed : int

    Returns
    -------
    torch.Tensor of shape (N, C, T), float32.

    Raises
    ------
    ValueError
        If ``name`` is unknown or ``x`` is not (N, C, T).
    """
    if name not in _TRANSFORMS:
        raise ValueError(f"transformation {name!r} is unknown; expected one of {list(TRANSFORMATIONS)}")
    xt = torch.as_tensor(np.asarray(x, dtype=np.float32))
    if xt.ndim != 3 or xt.shape[2] < 2:
        raise ValueError(f"x must have shape (N, C, T) with T >= 2, got {tuple(xt.shape)}")
    s = xt.std(dim=(0, 2)) if std is None else torch.as_tensor(np.asarray(std, dtype=np.float32))
    g = torch.Generator().manual_seed(int(seed))
    return _TRANSFORMS[name](xt, s, config, g)


# --------------------------------------------------------------------------- objective


class _TaskHeads(nn.Module):
    def __init__(self, dim: int, n_tasks: int) -> None:
        super().__init__()
        self.heads = nn.Linear(dim, n_tasks)           # one binary logit per task

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.heads(z)


def selfsup_loss(encoder: nn.Module, heads: nn.Module, x_raw: torch.Tensor, mean: torch.Tensor, std: torch.Tensor,
                 config: SelfSupConfig, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean binary cross-entropy of the transformation-detection tasks on one batch (Saeed et al. 2019, Eq. 1
    with equal task weights), and the per-task detection accuracy (shape (len(tasks),))."""
    b = x_raw.shape[0]
    views = [x_raw] + [_TRANSFORMS[t](x_raw, std, config, g) for t in config.tasks]
    xin = (torch.cat(views) - mean[None, :, None]) / std[None, :, None]        # ((1+M) B, C, T)
    dev = next(encoder.parameters()).device
    logits = heads(encoder.embed(xin.to(dev)))                                  # ((1+M) B, M)
    m = len(config.tasks)
    orig = logits[:b]                                                           # (B, M): every head sees originals
    trans = logits[b:].reshape(m, b, m)                                         # (M B, M) -> (M, B, M)
    own = trans[torch.arange(m), :, torch.arange(m)]                            # (M, B): head t on transform t
    bce = nn.functional.binary_cross_entropy_with_logits
    per_task = bce(orig, torch.zeros_like(orig), reduction="none").mean(0) + \
        bce(own, torch.ones_like(own), reduction="none").mean(1)               # (M,)
    acc = 0.5 * ((orig < 0).float().mean(0) + (own > 0).float().mean(1))
    return 0.5 * per_task.mean(), acc.detach()


def pretrain_self_supervised(windows: Windows, *, model_name: str = "mobilecnn1d",
                             window: WindowConfig | None = None, config: SelfSupConfig = SelfSupConfig(),
                             progress: bool = False, log: Callable[[str], None] | None = None) -> ModelBundle:
    """Pretrain a registry model's encoder by multi-task transformation prediction (Saeed et al. 2019).

    Parameters
    ----------
    windows : Windows
        Unlabeled (or labelled: labels are ignored) windows, (N, C, T)
        float32, physical units, e.g. ``make_windows(recs, cfg, unlabeled=True)``.
    model_name : str
        Registry model whose encoder is pretrained.
    window : WindowConfig, optional
        Only for hand-built windows (as :func:`imutune.train.pretrain.pretrain`).
    config : SelfSupConfig
    progress : bool
        Print the loss every 10% of the steps.
    log : callable, optional
        Where progress lines go (default ``print``).

    Returns
    -------
    ModelBundle
        The pretrained encoder with a fresh classifier head for the windows'
        class list (``info["head"] == "untrained"``), the normalization fitted
        on the windows, ``info["selfsup_loss_history"]`` (mean loss per 1% of
        the steps), ``selfsup_loss_first`` / ``selfsup_loss_last`` (mean over the
        first / last 10% of the steps) and ``info["selfsup_task_accuracy"]`` (last 10% of steps).

    Raises
    ------
    ValueError
        If there are fewer than 2 windows, or the window contract is
        inconsistent (as for supervised pretraining).
    """
    if not isinstance(windows, Windows):
        raise ValueError(f"windows must be Windows, got {type(windows).__name__}")
    if len(windows) < 2:
        raise ValueError(f"windows holds {len(windows)} windows; self-supervised pretraining needs at least 2")
    spec = contract_of_windows(windows, window)
    if len(spec.class_names) < 2:   # a model has >= 2 outputs; the head is refitted by fine-tuning anyway
        spec = spec.with_classes(tuple(spec.class_names) + ("other",))
    return _compute_selfsup(windows, spec, model_name, config, progress, log or print)


def _compute_selfsup(windows: Windows, spec, model_name: str, config: SelfSupConfig, progress: bool,
                     log: Callable[[str], None]) -> ModelBundle:
    norm = Normalizer.fit(windows.x)
    torch.manual_seed(config.seed)
    device = resolve_device(config.device)
    model = create_model(model_name, in_channels=len(windows.channels), num_classes=len(spec.class_names))
    heads = _TaskHeads(model.embedding_dim, len(config.tasks))
    model.to(device)
    heads.to(device)
    params = [p for n, p in model.named_parameters() if not n.startswith("head.")] + list(heads.parameters())
    opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    warm = max(1, int(0.05 * config.steps))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warm if s < warm else 0.5 * (1 + math.cos(math.pi * (s - warm) /
                                                                      max(1, config.steps - warm))))
    x_all = torch.as_tensor(windows.x)
    mean, std = torch.as_tensor(norm.mean), torch.as_tensor(norm.std)
    g = torch.Generator().manual_seed(config.seed)
    n = x_all.shape[0]
    bs = min(config.batch_size, n)
    losses: list[float] = []
    accs: list[np.ndarray] = []
    t0 = time.perf_counter()
    model.train()
    heads.train()
    order = torch.randperm(n, generator=g)
    pos = 0
    for step in range(config.steps):
        if pos + bs > n:
            order, pos = torch.randperm(n, generator=g), 0
        idx = order[pos:pos + bs]
        pos += bs
        loss, acc = selfsup_loss(model, heads, x_all[idx], mean, std, config, g)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        if step >= int(0.9 * config.steps):
            accs.append(acc.cpu().numpy())
        if progress and (step + 1) % max(1, config.steps // 10) == 0:
            log(f"[selfsup] step {step + 1}/{config.steps}: loss {np.mean(losses[-max(1, config.steps // 10):]):.4f}")
    model.eval()
    # a fresh head for the classes fitted later (fine-tuning replaces it for another class set)
    model.head = nn.Linear(model.embedding_dim, model.num_classes).to(device)
    chunk = max(1, config.steps // 100)
    tenth = max(1, config.steps // 10)
    hist = [float(np.mean(losses[i:i + chunk])) for i in range(0, len(losses), chunk)]
    task_acc = np.mean(accs, axis=0) if accs else np.full(len(config.tasks), np.nan)
    info: dict[str, Any] = {
        "stage": "pretrain", "objective": "self-supervised multi-task transformation prediction "
                                          "(Saeed et al., Proc. ACM IMWUT 2019)",
        "head": "untrained", "selfsup_config": asdict(config), "n_train": int(n),
        "selfsup_loss_history": hist, "selfsup_loss_first": float(np.mean(losses[:tenth])),
        "selfsup_loss_last": float(np.mean(losses[-tenth:])),
        "selfsup_task_accuracy": dict(zip(config.tasks, [float(a) for a in task_acc])),
        "train_seconds": time.perf_counter() - t0, "steps": config.steps,
    }
    return ModelBundle(model.cpu(), model_name, spec.with_normalization(norm.mean.tolist(), norm.std.tolist()), info)
