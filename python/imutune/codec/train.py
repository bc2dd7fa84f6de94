"""Training the learned codec in the seed paper's three modes.

Li et al., "Optimized Learned Image Compression for Facial Expression
Recognition" (arXiv 2509.17262), compare a codec trained for reconstruction
only, a codec fine-tuned for a frozen recognition model, and joint
optimisation of codec and classifier. Here, per training step:

* ``mode="codec"`` (codec-only): ``loss = R + lambda * D``;
* ``mode="classifier"`` (codec for the frozen classifier):
  ``loss = R + lambda * (D + beta * CE(classifier(decoded window), y))``, the
  classifier's weights fixed (the task term is scaled with ``lambda`` like the
  distortion, so ``beta`` weighs it against the MSE at every operating point);
* ``mode="joint"`` (codec and classifier): the same loss plus
  ``lambda * raw_ce_weight * CE(classifier(raw window), y)``, and the classifier's
  weights are trained too (so it stays accurate on uncompressed data).

``R`` is the rate in bits per raw sample (``-sum(log2 likelihood)`` of the
noisy latents, Ballé et al. ICLR 2018, divided by the number of values
coded) and ``D`` the mean squared error in normalized units. Training
examples are chunks of two consecutive codec segments (``2 T`` samples, hop
``hop_s``) of the continuous stream: both segments are coded independently,
as at inference, and the classifier sees a window cut at a random offset of
the decoded chunk, so it learns across segment boundaries as it will meet
them on decoded uploads (classifier windows overlap, codec segments do
not). The classifier is kept in eval mode (frozen batch-norm statistics) in
both classifier modes.
"""
from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from .. import _validation as V
from ..signal.windows import Normalizer, Windows
from ..train.bundle import ModelBundle
from ..train.loop import resolve_device
from .model import CodecConfig, LearnedCodec, new_codec

__all__ = ["CodecTrainConfig", "train_codec", "TRAIN_MODES"]

TRAIN_MODES = ("codec", "classifier", "joint")


@dataclass(frozen=True)
class CodecTrainConfig:
    """Settings of one codec training run."""

    mode: str = "codec"             # "codec" (rate + lambda*MSE), "classifier" (+ beta*CE, frozen), "joint"
    lmbda: float = 8.0              # weight of the MSE in normalized units against the rate in bits per sample
    beta: float = 0.1               # weight of the classifier's cross-entropy on decoded windows, relative to the MSE
    raw_ce_weight: float = 0.1      # joint only: weight of the classifier's cross-entropy on raw windows, same scale
    epochs: int = 50                # passes over the training chunks (50 at hop 0.5 s ~ 4600 steps on the watch
                                    # source subjects; 470 steps left PRDN at ~30 %, 2300-4600 reach 13-15 %)
    batch_size: int = 64            # chunks (2 segments each) per step
    lr: float = 3e-3                # peak AdamW learning rate of the transforms (cosine decay)
    prior_lr: float = 1e-2          # learning rate of the entropy model
    classifier_lr: float = 3e-4     # joint only: learning rate of the classifier
    hop_s: float = 0.5              # hop between training chunks in seconds
    seed: int = 0
    device: str = "auto"            # "auto", "cpu" or "cuda"

    def __post_init__(self) -> None:
        V.check_choice("mode", self.mode, TRAIN_MODES)
        V.check_positive("lmbda", self.lmbda, where="CodecTrainConfig")
        for n in ("beta", "raw_ce_weight"):
            v = getattr(self, n)
            if not (np.isfinite(v) and v >= 0):
                raise ValueError(f"{n} must be a finite number >= 0, got {v!r}")
        V.check_int_at_least("epochs", self.epochs, 1)
        V.check_int_at_least("batch_size", self.batch_size, 2)
        for n in ("lr", "prior_lr", "classifier_lr", "hop_s"):
            V.check_positive(n, getattr(self, n), where="CodecTrainConfig")
        V.check_choice("device", self.device, ("auto", "cpu", "cuda"))


def train_codec(chunks: Windows, *, config: CodecTrainConfig = CodecTrainConfig(),
                codec_config: CodecConfig | None = None, sample_rate_hz: float = 50.0,
                classifier: ModelBundle | None = None, init: LearnedCodec | None = None,
                progress: bool = False) -> tuple[LearnedCodec, ModelBundle | None]:
    """Train a codec (and, in joint mode, the classifier) on source chunks.

    Parameters
    ----------
    chunks : Windows
        Training chunks of ``2 * segment_samples`` samples: ``x`` (N, C, 2T) float32 in physical
        units, ``y`` (N,) labels (used by the classifier modes). Cut them with
        :func:`imutune.signal.windows.make_windows` and ``window_s = 2 * segment_s``.
    config : CodecTrainConfig
    codec_config : CodecConfig, optional
        Architecture of a new codec (default ``CodecConfig(in_channels=C, segment_samples=2T/2)``);
        ignored when ``init`` is given.
    sample_rate_hz : float
        Sample rate of the chunks, part of the codec's contract.
    classifier : ModelBundle, optional
        Required for ``mode="classifier"`` and ``"joint"``; same channels and sample rate, window
        of at most ``2 T`` samples.
    init : LearnedCodec, optional
        Start from this codec (fine-tuning); its normalizer is kept.

    Returns
    -------
    (LearnedCodec, ModelBundle or None)
        The trained codec with fresh integer tables (``info``: mode, lambda, beta, loss history,
        seconds) and, in joint mode, the trained classifier bundle (None otherwise).

    Raises
    ------
    ValueError
        If the chunks are not (N, C, 2T) with finite values, the mode needs a classifier that is
        missing or does not fit, or a loss becomes NaN.
    """
    x = V.check_windows("chunks.x", chunks.x, finite=True, allow_tensor=False)
    if init is not None:
        cfg = init.config
    else:
        cfg = codec_config or CodecConfig(in_channels=x.shape[1], segment_samples=x.shape[2] // 2)
    T = cfg.segment_samples
    if x.shape[1] != cfg.in_channels or x.shape[2] != 2 * T:
        raise ValueError(f"chunks.x has shape {x.shape}; expected (N, {cfg.in_channels}, {2 * T}): two codec "
                         f"segments of {T} samples per chunk")
    if config.mode != "codec":
        _check_classifier(classifier, chunks, sample_rate_hz, 2 * T, config.mode)
    return _compute_train(chunks, x, cfg, config, sample_rate_hz, classifier, init, progress)


def _check_classifier(classifier, chunks, sample_rate_hz, max_window, mode) -> None:
    if classifier is None:
        raise ValueError(f"mode={mode!r} needs a classifier bundle (--classifier); got None")
    if tuple(classifier.channels) != tuple(chunks.channels):
        raise ValueError(f"classifier expects channels {list(classifier.channels)}; the data has "
                         f"{list(chunks.channels)}")
    if not np.isclose(classifier.window.sample_rate_hz, sample_rate_hz):
        raise ValueError(f"classifier runs at {classifier.window.sample_rate_hz} Hz; the codec data is at "
                         f"{sample_rate_hz} Hz")
    if classifier.window.window_samples > max_window:
        raise ValueError(f"classifier window of {classifier.window.window_samples} samples is longer than a "
                         f"training chunk ({max_window} samples = two codec segments)")
    if tuple(classifier.class_names) != tuple(chunks.class_names):
        raise ValueError(f"classifier classes {list(classifier.class_names)} differ from the data's "
                         f"{list(chunks.class_names)}")


def _compute_train(chunks, x, cfg, config, sample_rate_hz, classifier, init, progress):
    device = resolve_device(config.device)
    torch.manual_seed(config.seed)
    if init is None:
        codec = new_codec(cfg, tuple(chunks.channels), sample_rate_hz, Normalizer.fit(x), seed=config.seed)
    else:
        codec = LearnedCodec(copy.deepcopy(init.model), init.channels, init.sample_rate_hz, init.normalizer,
                             init.tables, dict(init.info), dict(init.header_hints))
    model = codec.model.to(device).train()
    mean = torch.tensor(np.asarray(codec.normalizer.mean, np.float32), device=device)[None, :, None]
    std = torch.tensor(np.asarray(codec.normalizer.std, np.float32), device=device)[None, :, None]
    clf = None
    groups = [{"params": [p for n, p in model.named_parameters() if not n.startswith("prior.")], "lr": config.lr},
              {"params": list(model.prior.parameters()), "lr": config.prior_lr}]
    if config.mode != "codec":
        clf = copy.deepcopy(classifier.model).to(device).eval()
        for p in clf.parameters():
            p.requires_grad_(config.mode == "joint")
        if config.mode == "joint":
            groups.append({"params": list(clf.parameters()), "lr": config.classifier_lr})
        c_mean = torch.tensor(np.asarray(classifier.normalizer.mean, np.float32), device=device)[None, :, None]
        c_std = torch.tensor(np.asarray(classifier.normalizer.std, np.float32), device=device)[None, :, None]
        Tw = classifier.window.window_samples
    opt = torch.optim.AdamW(groups, weight_decay=0.0)
    n = x.shape[0]
    steps = config.epochs * max(1, n // config.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=[g["lr"] for g in groups], total_steps=steps,
                                                pct_start=0.1 if steps != 10 else 0.15)
    gen = torch.Generator().manual_seed(config.seed)
    xt = torch.from_numpy(x)
    yt = torch.from_numpy(np.asarray(chunks.y, np.int64))
    C, T2 = x.shape[1], x.shape[2]
    T = T2 // 2
    history: dict[str, list[float]] = {"loss": [], "bits_per_sample": [], "mse": [], "ce": []}
    t0 = time.perf_counter()
    it = range(config.epochs)
    if progress:
        from tqdm.auto import tqdm
        it = tqdm(it, desc=f"codec {config.mode}", unit="epoch", leave=False)
    step = 0
    for _ in it:
        perm = torch.randperm(n, generator=gen)
        sums = {k: 0.0 for k in history}
        count = 0
        for s in range(0, n - config.batch_size + 1, config.batch_size):
            if step >= steps:
                break
            idx = perm[s:s + config.batch_size]
            xb = xt[idx].to(device)
            yb = yt[idx].to(device)
            B = xb.shape[0]
            xn = (xb - mean) / std
            segs = xn.reshape(B, C, 2, T).permute(0, 2, 1, 3).reshape(2 * B, C, T)  # (B, C, 2T) -> (2B, C, T)
            out = model(segs, noise=True)
            x_hat = out["x_hat"].reshape(B, 2, C, T).permute(0, 2, 1, 3).reshape(B, C, T2)  # (2B, C, T) -> (B, C, 2T)
            rate = out["bits"] / float(xb.numel())
            mse = F.mse_loss(x_hat, xn)
            loss = rate + config.lmbda * mse
            ce = torch.zeros((), device=device)
            if clf is not None:
                off = int(torch.randint(0, T2 - Tw + 1, (1,), generator=gen))
                dec = (x_hat[:, :, off:off + Tw] * std + mean - c_mean) / c_std
                ce = config.beta * F.cross_entropy(clf(dec), yb)
                if config.mode == "joint" and config.raw_ce_weight > 0:
                    raw = (xb[:, :, off:off + Tw] - c_mean) / c_std
                    ce = ce + config.raw_ce_weight * F.cross_entropy(clf(raw), yb)
                loss = loss + config.lmbda * ce
            if not torch.isfinite(loss):
                raise ValueError(f"codec training loss became {float(loss)} (mode {config.mode}, lambda "
                                 f"{config.lmbda}); lower the learning rate")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            for k, v in (("loss", loss), ("bits_per_sample", rate), ("mse", mse), ("ce", ce)):
                sums[k] += float(v.detach()) * B
            count += B
        for k in history:
            history[k].append(sums[k] / max(count, 1))
    model.eval().cpu()
    info: dict[str, Any] = {"mode": config.mode, "lambda": config.lmbda, "beta": config.beta,
                            "train_config": asdict(config), "codec_config": asdict(cfg), "n_chunks": int(n),
                            "history": history, "train_seconds": time.perf_counter() - t0,
                            "parameters": int(sum(p.numel() for p in model.parameters())),
                            "encoder_parameters": int(sum(p.numel() for p in model.analysis.parameters()))}
    units = chunks.preprocessing.units if chunks.preprocessing is not None else None
    trained = LearnedCodec(model, codec.channels, codec.sample_rate_hz, codec.normalizer, codec.tables,
                           {**codec.info, **info}).with_tables().with_header_hints(chunks.class_names, units)
    new_clf = None
    if config.mode == "joint":
        clf = clf.cpu().eval()
        for p in clf.parameters():
            p.requires_grad_(True)
        new_clf = ModelBundle(clf, classifier.model_name, classifier.class_names, classifier.channels,
                              classifier.window, classifier.normalizer,
                              {"stage": "codec-joint", "codec_lambda": config.lmbda, "base": classifier.info})
    return trained, new_clf
