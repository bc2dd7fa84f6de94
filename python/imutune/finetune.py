"""Training loop (pretraining and fine-tuning), prediction, and model bundles.

:func:`train` is one loop for both stages: AdamW with a cosine schedule,
mini-batches drawn with a seeded generator, a loss with the uniform signature
``loss(logits (N, K), targets (N,), weights (N,))`` (see :mod:`imutune.losses`),
progress bars (tqdm), and a resumable checkpoint written atomically after every
epoch with its config saved next to it. Only parameters with
``requires_grad`` are optimised. Uses CUDA when available (``device="auto"``).

A *model bundle* is what a stage hands to the next: ``model.safetensors``
(weights) and ``model.json`` (registry name and config, class names, channels,
window config, normalization statistics, training config).
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from . import _validation as V
from ._io import save_torch_atomic, write_bytes_atomic, write_json_atomic
from .losses import FilterLoss, WeightedCrossEntropy
from .models import ResNet1d, ResNet1dConfig, create_model
from .quality import CategoryWeights, FilterConfig, QualityConfig
from .windows import Normalizer, WindowConfig, Windows

__all__ = ["TrainConfig", "train", "predict_logits", "predict_proba", "resolve_device", "ModelBundle",
           "save_bundle", "load_bundle", "FinetuneConfig", "pretrain", "finetune", "split_holdout"]


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


# --------------------------------------------------------------------------- model bundles

@dataclass(frozen=True, eq=False)
class ModelBundle:
    """A trained model with everything needed to feed it."""

    model: ResNet1d
    model_name: str
    class_names: tuple[str, ...]
    channels: tuple[str, ...]
    window: WindowConfig
    normalizer: Normalizer
    info: dict = field(default_factory=dict)   # training config, metrics, provenance


def save_bundle(bundle: ModelBundle, out_dir: str | os.PathLike) -> Path:
    """Write ``model.safetensors`` and ``model.json`` into ``out_dir`` (atomically)."""
    from safetensors.torch import save as st_save

    out = Path(out_dir)
    m = bundle.model
    state = {k: v.detach().cpu().contiguous() for k, v in m.state_dict().items()}
    write_bytes_atomic(out / "model.safetensors", st_save(state))
    meta = {"model_name": bundle.model_name, "model_config": asdict(m.config), "in_channels": m.in_channels,
            "num_classes": m.num_classes, "class_names": list(bundle.class_names),
            "channels": list(bundle.channels), "window": asdict(bundle.window),
            "normalization": bundle.normalizer.to_dict(), "info": bundle.info}
    write_json_atomic(out / "model.json", meta)
    return out


def load_bundle(path: str | os.PathLike) -> ModelBundle:
    """Read a bundle folder (or its ``model.json``) written by :func:`save_bundle`.

    Raises
    ------
    FileNotFoundError
        If ``model.json`` or ``model.safetensors`` is missing.
    ValueError
        If the metadata is incomplete or the weights do not fit the config.
    """
    from safetensors.torch import load_file

    p = Path(path)
    folder = p if p.is_dir() else p.parent
    meta_path = V.check_file(folder / "model.json", what="model metadata")
    weights_path = V.check_file(folder / "model.safetensors", what="model weights")
    try:
        meta = json.loads(meta_path.read_text())
        cfg = meta["model_config"]
        model = create_model(meta["model_name"], in_channels=meta["in_channels"], num_classes=meta["num_classes"],
                             **{k: tuple(v) if isinstance(v, list) else v for k, v in cfg.items()})
        window = WindowConfig(**meta["window"])
        norm = Normalizer(np.asarray(meta["normalization"]["mean"], np.float32),
                          np.asarray(meta["normalization"]["std"], np.float32))
    except (KeyError, TypeError, json.JSONDecodeError) as e:
        raise ValueError(f"model metadata {str(meta_path)!r} is incomplete or invalid ({type(e).__name__}: {e})") from e
    try:
        state = load_file(str(weights_path))
        model.load_state_dict(state)
    except Exception as e:
        raise ValueError(f"model weights {str(weights_path)!r} do not match {meta['model_name']} "
                         f"with config {cfg} ({type(e).__name__}: {e})") from e
    model.eval()
    return ModelBundle(model, meta["model_name"], tuple(meta["class_names"]), tuple(meta["channels"]),
                       window, norm, meta.get("info", {}))


# --------------------------------------------------------------------------- stages

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


def pretrain(windows: Windows, *, model_name: str = "mobilecnn1d", window: WindowConfig = WindowConfig(),
             train_config: TrainConfig = TrainConfig(), holdout_fraction: float = 0.2,
             checkpoint_path: str | os.PathLike | None = None, progress: bool = True) -> ModelBundle:
    """Pretrain a registry model on source windows.

    A stratified ``holdout_fraction`` of the source recordings is held out to
    measure the source accuracy (the reference of the restore ratio); the
    normalizer is fitted on the training part only.

    Parameters
    ----------
    windows : Windows
        Source windows, (N, C, T) float32 in physical units.

    Returns
    -------
    ModelBundle
        ``info`` holds ``source_accuracy``, ``source_macro_f1``, ``n_train``,
        ``n_holdout``, the train config and the loss history.
    """
    from .metrics import accuracy, macro_f1

    tr, ho = split_holdout(windows.recording, windows.y, holdout_fraction, seed=train_config.seed)
    wtr = windows.subset(tr)
    norm = Normalizer.fit(wtr.x)
    torch.manual_seed(train_config.seed)
    model = create_model(model_name, in_channels=len(windows.channels), num_classes=windows.num_classes)
    hist = train(model, norm(wtr.x), wtr.y, config=train_config, checkpoint_path=checkpoint_path,
                 desc="pretrain", progress=progress, extra_config={"model_name": model_name})
    info: dict[str, Any] = {"stage": "pretrain", "train_config": asdict(train_config), "n_train": int(tr.sum()),
                            "n_holdout": int(ho.sum()), "loss_history": hist["loss"], "train_seconds": hist["seconds"]}
    if ho.any():
        who = windows.subset(ho)
        pred = predict_logits(model, norm(who.x), device=train_config.device).argmax(1)
        info["source_accuracy"] = accuracy(who.y, pred)
        info["source_macro_f1"] = macro_f1(who.y, pred, windows.num_classes)
    return ModelBundle(model, model_name, windows.class_names, windows.channels, window, norm, info)


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
        from .models import replace_head

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
