"""Selective filter fine-tuning: rank conv filters by how far a sensor
distortion moves their activation maps, combine the per-sample rankings by
Borda count, and fine-tune only the most affected filters and the head.

Source: Bianchi, Vendra, Protopapas, Brambilla, "Improving Image
Classification Robustness through Selective CNN-Filters Fine-Tuning",
arXiv 1904.03949 (2019): per layer, the distance between each filter's
activation maps on a clean and a distorted version of the same input ranks
the filters for that sample; the Borda count of the per-sample rankings
gives the layer's ranking; only the top filters are retrained.

Here (1-D sensor models, :mod:`imutune.models`):

* a *filter* is one output channel of a ``Conv1d`` together with its
  ``BatchNorm1d`` entries (the batch norm that directly follows the conv in
  module order, :func:`conv_layers`); its *activation map* is the batch-norm
  output (eval mode), i.e. the conv output in the layer's standardized units;
* distance: Euclidean over time between the clean and distorted maps;
* Borda count: within a layer, a filter scores ``rank - 1`` points per sample
  (0 for the least moved, ``F - 1`` for the most moved; ties share the mean
  rank) and the points are summed over samples (:func:`borda_count`);
* selection: the top ``fraction`` of filters of every layer (at least one), a
  global parameter budget, or the global budget over the deepest blocks only
  (``budget="deep"``, issue 14: a long frozen prefix; :func:`select_filters`);
* user-shift ranking (an imutune extension, issue 14; not in the paper):
  filters ranked by the shift between the source users' and the target
  user's per-class activation statistics on the calibration windows
  (:func:`user_shift_distances`), and the Borda count of both rankings
  (``rank_filters(..., ranking="combined")``);
* pair-free ranking (an imutune extension, for users whose clean data does not
  exist): each window's per-filter distance between its conv-output
  mean/std and the base model's batch-norm running statistics (the source
  distribution), a standardized 2-Wasserstein distance between Gaussians
  (:func:`reference_distances`).

Selective fine-tuning (:func:`finetune_selected`) runs the one training loop
(:func:`imutune.train.loop.train`) with the hooks of :func:`selection_hooks`
and trains only the selected entries; everything else stays bit-identical:

* partly selected conv layers compute their weight gradient for the selected
  rows only (:class:`_RowsConvFn`, bit-identical to the masked whole-tensor
  gradient); gradients of unselected rows are masked to zero and partly selected tensors
  get no weight decay (:class:`~imutune.train.loop.GradientMask`; AdamW's
  decoupled decay would otherwise move the unselected rows); at the end the
  unselected entries are copied back from a frozen copy as a safety net;
* batch norm: a layer whose filters are all selected trains normally (batch
  statistics, running statistics updated); a layer with none selected runs in
  eval mode (running statistics, untouched); a partly selected layer uses
  batch statistics for its selected channels and the frozen running
  statistics for the others (so training and inference agree for frozen
  channels), in one affine pass over the activations (batch statistics of the
  selected channels only); running statistics move only for the selected channels (in
  scratch buffers, committed at the end, :class:`_PartialBN`), and
  ``num_batches_tracked`` stays as it was (unused with the default momentum).

The same loop trains any :class:`Selection` -- full fine-tuning, the last
block plus head, random filters, Borda-selected filters -- so their times are
comparable. With ``cache_prefix=True`` a frozen leading part of the model is
run once and training starts from its cached outputs (:func:`frozen_prefix`;
bit-identical weights, less time per epoch).
"""
from __future__ import annotations

import contextlib
import copy
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .. import _validation as V
from ..train.bundle import ModelBundle
from ..train.loop import (
    SELECTIVE,
    FrozenModules,
    GradientMask,
    TrainConfig,
    TrainHooks,
    predict_proba,
    resolve_device,
    resolve_threads,
    train,
)

__all__ = ["ConvLayer", "conv_layers", "Selection", "BN_STATISTICS", "gradient_magnitudes", "activation_distances", "reference_distances", "borda_count",
           "activation_statistics", "user_shift_distances", "RANKINGS", "BUDGETS", "backward_flops", "rank_filters",
           "select_filters", "random_selection", "last_block_selection", "full_selection",
           "entry_masks", "count_trainable", "selection_hooks", "frozen_prefix", "finetune_selected",
           "SelectiveConfig", "personalize"]


# --------------------------------------------------------------------------- layers and selections

@dataclass(frozen=True, eq=False)
class ConvLayer:
    """A conv layer and the batch norm that follows it (``None`` if there is none)."""

    name: str
    conv: nn.Conv1d
    bn_name: str | None
    bn: nn.BatchNorm1d | None

    @property
    def n_filters(self) -> int:
        return int(self.conv.out_channels)

    @property
    def params_per_filter(self) -> int:
        """Trainable parameters of one filter: its conv weight row (+ bias) and its batch-norm scale and shift."""
        n = self.conv.weight[0].numel() + (1 if self.conv.bias is not None else 0)
        return int(n + (2 if self.bn is not None and self.bn.affine else 0))


def conv_layers(model: nn.Module) -> list[ConvLayer]:
    """Every ``Conv1d`` of ``model`` in module order, each paired with the
    ``BatchNorm1d`` that comes right after it in ``named_modules`` order when
    its ``num_features`` equals the conv's ``out_channels``."""
    mods = list(model.named_modules())
    out = []
    for i, (name, m) in enumerate(mods):
        if isinstance(m, nn.Conv1d):
            bn_name, bn = None, None
            if i + 1 < len(mods):
                n2, m2 = mods[i + 1]
                if isinstance(m2, nn.BatchNorm1d) and m2.num_features == m.out_channels:
                    bn_name, bn = n2, m2
            out.append(ConvLayer(name, m, bn_name, bn))
    return out


@dataclass(frozen=True, eq=False)
class Selection:
    """What fine-tuning may change.

    Attributes
    ----------
    filters : dict
        Conv layer name -> array of shape (F,), bool: selected filters (their
        conv rows and batch-norm entries train). Layers not listed are frozen.
    modules : tuple of str
        Names of modules trained in full (``"head"``; ``""`` is the whole model).
    """

    filters: dict[str, np.ndarray] = field(default_factory=dict)
    modules: tuple[str, ...] = ("head",)

    def n_selected(self) -> int:
        return int(sum(int(np.sum(m)) for m in self.filters.values()))

    def summary(self) -> dict[str, list[int]]:
        """Layer -> selected filter indices."""
        return {k: np.flatnonzero(v).tolist() for k, v in self.filters.items()}


def _check_fraction(fraction: float) -> float:
    try:
        f = float(fraction)
    except (TypeError, ValueError):
        raise ValueError(f"fraction of filters must be a number in (0, 1], got {fraction!r}") from None
    if not (0.0 < f <= 1.0) or not np.isfinite(f):
        raise ValueError(f"fraction of filters must be in (0, 1], got {fraction!r}")
    return f


def _k_of(fraction: float, n: int) -> int:
    return int(min(n, max(1, round(fraction * n))))


def full_selection(model: nn.Module) -> Selection:
    """Everything trains (full fine-tuning)."""
    return Selection({l.name: np.ones(l.n_filters, bool) for l in conv_layers(model)}, ("",))


def last_block_selection(model: nn.Module, *, head: str = "head") -> Selection:
    """Layer-level fine-tuning: every filter of the last residual block (the last
    ``stages.i.j``; for other models the last conv layer) plus the head."""
    layers = conv_layers(model)
    if not layers:
        raise ValueError("the model has no Conv1d layer")
    blocks = sorted({".".join(l.name.split(".")[:3]) for l in layers if l.name.startswith("stages.")},
                    key=lambda b: tuple(int(p) for p in b.split(".")[1:3]))
    last = blocks[-1] + "." if blocks else layers[-1].name
    return Selection({l.name: np.full(l.n_filters, l.name.startswith(last) or l.name == last, bool)
                      for l in layers}, (head,))


def random_selection(model: nn.Module, fraction: float, *, seed: int = 0, head: str = "head") -> Selection:
    """The same number of filters per layer as :func:`select_filters` (per layer), chosen at random."""
    f = _check_fraction(fraction)
    rng = np.random.default_rng(seed)
    sel = {}
    for l in conv_layers(model):
        m = np.zeros(l.n_filters, bool)
        m[rng.choice(l.n_filters, size=_k_of(f, l.n_filters), replace=False)] = True
        sel[l.name] = m
    return Selection(sel, (head,))


# --------------------------------------------------------------------------- ranking

def _capture(model: nn.Module, layers: Sequence[ConvLayer], *, pre_bn: bool) -> tuple[dict, list]:
    acts: dict[str, torch.Tensor] = {}
    handles = []
    for l in layers:
        mod = l.conv if (pre_bn or l.bn is None) else l.bn
        handles.append(mod.register_forward_hook(lambda _m, _i, o, n=l.name: acts.__setitem__(n, o.detach())))
    return acts, handles


@contextlib.contextmanager
def _capturing(model: nn.Module, layers: Sequence[ConvLayer], *, pre_bn: bool, device: str):
    """Run ``model`` in eval mode on ``device`` with forward hooks that capture each layer's conv output
    (``pre_bn``) or batch-norm output; yields ``(device, acts)`` and restores the mode and hooks afterwards."""
    dev = resolve_device(device)
    was_training = model.training
    model.eval().to(dev)
    acts, handles = _capture(model, layers, pre_bn=pre_bn)
    try:
        yield dev, acts
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)


def _batches(x: np.ndarray, batch_size: int, device):
    for s in range(0, x.shape[0], batch_size):
        yield s, torch.from_numpy(np.ascontiguousarray(x[s:s + batch_size], dtype=np.float32)).to(device)


def _check_x(name: str, x: np.ndarray, model: nn.Module) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 3 or x.shape[0] == 0:
        raise ValueError(f"{name} must have shape (N, C, T) with N > 0, got {x.shape}")
    V.check_finite_array(name, x)
    c = getattr(model, "in_channels", x.shape[1])
    if x.shape[1] != c:
        raise ValueError(f"{name} has {x.shape[1]} channels; the model expects {c}")
    return x


@torch.no_grad()
def activation_distances(model: nn.Module, x_clean: np.ndarray, x_distorted: np.ndarray, *, batch_size: int = 256,
                         device: str = "auto") -> dict[str, np.ndarray]:
    """Per-sample, per-filter distance between activation maps on clean and distorted windows.

    Parameters
    ----------
    model : nn.Module
        The base model (evaluated in eval mode; not modified).
    x_clean, x_distorted : np.ndarray
        Arrays of shape (N, C, T), float32, normalized: the same windows clean
        and distorted.

    Returns
    -------
    dict
        Conv layer name -> array of shape (N, F), float64: Euclidean distance over
        time between the filter's batch-norm outputs.
    """
    xc = _check_x("x_clean", x_clean, model)
    xd = _check_x("x_distorted", x_distorted, model)
    if xc.shape != xd.shape:
        raise ValueError(f"x_clean {xc.shape} and x_distorted {xd.shape} must have the same shape (paired windows)")
    layers = conv_layers(model)
    if not layers:
        raise ValueError("the model has no Conv1d layer to rank")
    out = {l.name: np.zeros((xc.shape[0], l.n_filters)) for l in layers}
    with _capturing(model, layers, pre_bn=False, device=device) as (dev, acts):
        for (s, bc), (_, bd) in zip(_batches(xc, batch_size, dev), _batches(xd, batch_size, dev)):
            model(bc)
            clean = dict(acts)
            model(bd)
            for l in layers:
                a, b = clean[l.name].double(), acts[l.name].double()        # (B, F, T')
                out[l.name][s:s + bc.shape[0]] = (b - a).pow(2).sum(dim=-1).sqrt().cpu().numpy()
    return out


@torch.no_grad()
def reference_distances(model: nn.Module, x: np.ndarray, *, batch_size: int = 256,
                        device: str = "auto") -> dict[str, np.ndarray]:
    """Pair-free per-sample, per-filter distance of windows ``x`` from the source
    distribution stored in the base model's batch-norm running statistics.

    For filter ``f`` with running mean ``mu`` and variance ``var`` of its conv
    output, a window whose conv output has mean ``m`` and standard deviation
    ``s`` over time scores ``sqrt((m - mu)^2 + (s - sqrt(var))^2) / sqrt(var)``
    (the 2-Wasserstein distance between the two Gaussians, in units of the
    source standard deviation). An imutune extension of the paired ranking for
    data without clean counterparts.

    Returns
    -------
    dict
        Conv layer name -> array of shape (N, F), float64.

    Raises
    ------
    ValueError
        If a conv layer has no batch norm (no reference statistics).
    """
    x = _check_x("x", x, model)
    layers = conv_layers(model)
    missing = [l.name for l in layers if l.bn is None or l.bn.running_mean is None]
    if missing:
        raise ValueError(f"conv layers {missing} have no batch norm with running statistics; the pair-free "
                         "ranking needs them (give clean/distorted pairs instead)")
    out = {l.name: np.zeros((x.shape[0], l.n_filters)) for l in layers}
    with _capturing(model, layers, pre_bn=True, device=device) as (dev, acts):
        for s, b in _batches(x, batch_size, dev):
            model(b)
            for l in layers:
                z = acts[l.name].double()                                  # (B, F, T')
                mu = l.bn.running_mean.double()[None, :]
                sd = (l.bn.running_var.double() + l.bn.eps).sqrt()[None, :]
                m, sw = z.mean(dim=-1), z.std(dim=-1, unbiased=False)
                out[l.name][s:s + b.shape[0]] = (((m - mu) ** 2 + (sw - sd) ** 2).sqrt() / sd).cpu().numpy()
    return out


def borda_count(distances: np.ndarray) -> np.ndarray:
    """Borda count of per-sample rankings.

    Parameters
    ----------
    distances : np.ndarray
        Array of shape (N, F): for each of N samples (voters), a score per filter
        (candidate); larger means more affected.

    Returns
    -------
    np.ndarray
        Array of shape (F,), float64: total points. Per sample, the filter of
        rank ``r`` (1 = least affected ... F = most affected) gets ``r - 1``
        points; tied filters share the mean of their ranks.
    """
    from scipy.stats import rankdata

    d = np.asarray(distances, dtype=np.float64)
    if d.ndim != 2 or d.shape[0] == 0 or d.shape[1] == 0:
        raise ValueError(f"distances must have shape (N, F) with N, F > 0, got {d.shape}")
    V.check_finite_array("distances", d)
    return (rankdata(d, axis=1, method="average") - 1.0).sum(axis=0)


RANKINGS = ("distortion", "user_shift", "combined", "gradient")


@torch.no_grad()
def activation_statistics(model: nn.Module, x: np.ndarray, y: np.ndarray | None = None, *, batch_size: int = 256,
                          device: str = "auto") -> dict[str, Any]:
    """Per-filter mean and standard deviation of every conv layer's output (before its batch
    norm; eval mode) over windows and time, per class when ``y`` is given.

    Parameters
    ----------
    model : nn.Module
        The base model (not modified).
    x : np.ndarray
        Array of shape (N, C, T), float32, normalized.
    y : np.ndarray, optional
        Array of shape (N,), int labels: statistics per class (the voters of
        :func:`user_shift_distances`); without, one group of all windows.

    Returns
    -------
    dict
        ``"groups"``: list of the V class labels (``[-1]`` without ``y``);
        ``"layers"``: conv layer name -> (mean, std), each of shape (V, F), float64.
    """
    x = _check_x("x", x, model)
    if y is not None:
        y = np.asarray(y)
        if y.shape != (x.shape[0],):
            raise ValueError(f"y must have shape ({x.shape[0]},) (one label per window), got {y.shape}")
    groups = sorted(int(c) for c in np.unique(y)) if y is not None else [-1]
    gid = np.searchsorted(groups, y) if y is not None else np.zeros(x.shape[0], dtype=np.int64)
    layers = conv_layers(model)
    if not layers:
        raise ValueError("the model has no Conv1d layer to rank")
    V_ = len(groups)
    s1 = {l.name: np.zeros((V_, l.n_filters)) for l in layers}
    s2 = {l.name: np.zeros((V_, l.n_filters)) for l in layers}
    cnt = {l.name: np.zeros((V_, 1)) for l in layers}
    with _capturing(model, layers, pre_bn=True, device=device) as (dev, acts):
        for s, b in _batches(x, batch_size, dev):
            model(b)
            g = torch.from_numpy(gid[s:s + b.shape[0]].astype(np.int64))
            for l in layers:
                z = acts[l.name].double().cpu()                                  # (B, F, T')
                one = torch.zeros(V_, z.shape[0], dtype=torch.float64)
                one[g, torch.arange(z.shape[0])] = 1.0                          # (V, B) group indicator
                s1[l.name] += (one @ z.sum(dim=-1)).numpy()                     # (V, B) @ (B, F) -> (V, F)
                s2[l.name] += (one @ z.pow(2).sum(dim=-1)).numpy()
                cnt[l.name] += one.sum(dim=1, keepdim=True).numpy() * z.shape[-1]
    out = {}
    for l in layers:
        n = np.maximum(cnt[l.name], 1.0)
        m = s1[l.name] / n
        out[l.name] = (m, np.sqrt(np.maximum(s2[l.name] / n - m ** 2, 0.0)))
    return {"groups": groups, "layers": out}


def _batchnorm_statistics(model: nn.Module) -> dict[str, Any]:
    layers = conv_layers(model)
    missing = [l.name for l in layers if l.bn is None or l.bn.running_mean is None]
    if missing:
        raise ValueError(f"conv layers {missing} have no batch norm with running statistics; give source "
                         "statistics (activation_statistics of source windows) for the user-shift ranking")
    return {"groups": [-1], "layers": {l.name: (l.bn.running_mean.detach().double().cpu().numpy()[None, :],
                                                (l.bn.running_var.detach().double() + l.bn.eps).sqrt().cpu()
                                                .numpy()[None, :]) for l in layers}}


def user_shift_distances(model: nn.Module, x_target: np.ndarray, y_target: np.ndarray | None = None, *,
                         source: dict[str, Any] | None = None, batch_size: int = 256,
                         device: str = "auto") -> dict[str, np.ndarray]:
    """Per-filter shift between the source users' and the target user's activation statistics.

    An imutune extension (issue 14), not in Bianchi et al. (arXiv 1904.03949),
    whose ranking (Sec. 3, :func:`activation_distances`) targets a distortion
    of the same inputs: full fine-tuning also adapts to the new user, so this
    ranking targets the filters whose output distribution differs most between
    the source users (pretraining data) and the target user's calibration
    windows. For filter ``f`` with source mean/std ``(mu, sd)`` and target
    mean/std ``(m, s)`` of its conv output (over windows and time), the score is
    ``sqrt((m - mu)^2 + (s - sd)^2) / sd``: the 2-Wasserstein distance between
    the two Gaussians in units of the source standard deviation. Voters for
    the Borda count are the classes present in both (class-conditional
    statistics, so a different class mix is not mistaken for a shift) when
    ``source`` has per-class statistics and ``y_target`` is given; otherwise one
    voter over all windows.

    Parameters
    ----------
    x_target : np.ndarray
        The target user's calibration windows, shape (N, C, T), float32, normalized.
    y_target : np.ndarray, optional
        Array of shape (N,), int labels.
    source : dict, optional
        :func:`activation_statistics` of source-user windows (with labels for
        class-conditional voters); default: the base model's batch-norm
        running statistics (the pretraining distribution, one group).

    Returns
    -------
    dict
        Conv layer name -> array of shape (V, F), float64 (V voters).

    Raises
    ------
    ValueError
        On bad windows or labels, source statistics of another model, or no
        batch norm to read default statistics from.
    """
    src = source if source is not None else _batchnorm_statistics(model)
    per_class = src["groups"] != [-1] and y_target is not None
    tgt = activation_statistics(model, x_target, y_target if per_class else None, batch_size=batch_size,
                                device=device)
    if set(tgt["layers"]) != set(src["layers"]):
        raise ValueError(f"source statistics cover layers {sorted(src['layers'])}, the model has "
                         f"{sorted(tgt['layers'])}; compute them with this base model")
    if per_class:
        common = [g for g in tgt["groups"] if g in src["groups"]]
        if not common:
            raise ValueError(f"target classes {tgt['groups']} and source classes {src['groups']} do not overlap")
        ti = [tgt["groups"].index(g) for g in common]
        si = [src["groups"].index(g) for g in common]
    else:
        ti, si = [0], [0]
        if src["groups"] != [-1]:            # per-class source, no target labels: pool the source groups
            raise ValueError("source statistics are per class: give y_target (the calibration labels)")
    out = {}
    for name, (mt, st) in tgt["layers"].items():
        ms, ss = src["layers"][name]
        if ms.shape[1] != mt.shape[1]:
            raise ValueError(f"source statistics of layer {name!r} have {ms.shape[1]} filters, the model "
                             f"{mt.shape[1]}")
        mu, sd = ms[si], np.maximum(ss[si], 1e-12)                          # (V, F)
        out[name] = np.sqrt((mt[ti] - mu) ** 2 + (st[ti] - sd) ** 2) / sd
    return out


def gradient_magnitudes(model: nn.Module, x: np.ndarray, y: np.ndarray, *, batch_size: int = 256,
                        device: str = "auto") -> dict[str, np.ndarray]:
    """Per-filter squared gradient of the calibration loss, one voter per class.

    An imutune extension (issue 14), not in Bianchi et al. (arXiv 1904.03949):
    where :func:`activation_distances` ranks the filters a distortion moves,
    this ranks the filters whose weights the user's own labelled windows pull
    on hardest, a diagonal-Fisher saliency (the squared gradient, summed over a
    filter's weights) of the pretrained model in eval mode. For each class
    ``c`` present, the gradient of the mean cross-entropy of its windows is
    computed once; filter ``f``'s score from that voter is ``sum(g_f ** 2)``.
    Classes vote separately so that a frequent class does not decide alone.

    Parameters
    ----------
    model : nn.Module
        Not modified (a copy is differentiated).
    x : np.ndarray
        The calibration windows, shape (N, C, T), float32, normalized.
    y : np.ndarray
        Array of shape (N,), int labels in ``[0, num_classes)``.

    Returns
    -------
    dict
        Conv layer name -> array of shape (classes present, F), float64, >= 0.

    Raises
    ------
    ValueError
        If ``x`` is not (N, C, T) with the model's channels, or ``y`` has the wrong
        shape or labels outside the model's classes.
    """
    x = _check_x("x", x, model)
    K = int(getattr(model, "num_classes", int(np.max(y)) + 1 if np.size(y) else 1))
    yy = V.check_labels("y", y, K, allow_unlabeled=False)
    if yy.shape[0] != x.shape[0]:
        raise ValueError(f"y has {yy.shape[0]} labels and x {x.shape[0]} windows; expected one label per window")
    dev = resolve_device(device)
    m = copy.deepcopy(model).to(dev).eval()
    for p in m.parameters():
        p.requires_grad_(True)
    layers = conv_layers(m)
    out: dict[str, list[np.ndarray]] = {l.name: [] for l in layers}
    for c in np.unique(yy):
        xc = x[yy == c]
        m.zero_grad(set_to_none=True)
        for _s, xb in _batches(xc, batch_size, dev):
            target = torch.full((xb.shape[0],), int(c), dtype=torch.long, device=dev)
            (F.cross_entropy(m(xb), target, reduction="sum") / xc.shape[0]).backward()
        for l in layers:
            g = l.conv.weight.grad
            sq = torch.zeros(l.n_filters) if g is None else (g.double() ** 2).reshape(l.n_filters, -1).sum(1)
            out[l.name].append(sq.cpu().numpy())      # (F, C_in, k) -> (F,)
    return {k: np.stack(v) for k, v in out.items()}   # (classes, F) per layer


def _normalized_borda(dist: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k: borda_count(d) / (d.shape[0] * max(d.shape[1] - 1, 1)) for k, d in dist.items()}


def rank_filters(model: nn.Module, x_distorted: np.ndarray, x_clean: np.ndarray | None = None, *,
                 ranking: str = "distortion", y: np.ndarray | None = None, source: dict[str, Any] | None = None,
                 batch_size: int = 256, device: str = "auto") -> dict[str, np.ndarray]:
    """Normalized Borda score per filter, in [0, 1] (mean points / (F - 1); 1 =
    the most moved filter for every voter).

    ``ranking``:

    * ``"distortion"`` (the paper's, Sec. 3): with ``x_clean`` (paired windows)
      the distances are :func:`activation_distances`; without,
      :func:`reference_distances` of ``x_distorted``; voters are windows;
    * ``"user_shift"`` (imutune extension): :func:`user_shift_distances` of the
      calibration windows ``x_distorted`` (labels ``y``) against ``source``;
    * ``"combined"``: the Borda count of the two rankings above (each layer's
      two normalized score vectors are the voters), normalized the same way;
    * ``"gradient"`` (imutune extension): :func:`gradient_magnitudes` of the
      calibration windows ``x_distorted`` with labels ``y``; voters are classes.

    Returns
    -------
    dict
        Conv layer name -> array of shape (F,), float64.
    """
    V.check_choice("ranking", ranking, RANKINGS)
    if ranking == "gradient":
        if y is None:
            raise ValueError("ranking='gradient' needs the calibration labels y")
        return _normalized_borda(gradient_magnitudes(model, x_distorted, y, batch_size=batch_size, device=device))
    out = {}
    if ranking in ("distortion", "combined"):
        if x_clean is not None:
            dist = activation_distances(model, x_clean, x_distorted, batch_size=batch_size, device=device)
        else:
            dist = reference_distances(model, x_distorted, batch_size=batch_size, device=device)
        out["distortion"] = _normalized_borda(dist)
    if ranking in ("user_shift", "combined"):
        out["user_shift"] = _normalized_borda(user_shift_distances(model, x_distorted, y, source=source,
                                                                   batch_size=batch_size, device=device))
    if ranking != "combined":
        return out[ranking]
    return _normalized_borda({k: np.stack([out["distortion"][k], out["user_shift"][k]]) for k in out["distortion"]})


BUDGETS = ("per_layer", "global", "deep")


def _layer_units(model: nn.Module, names: Sequence[str]) -> list[str]:
    """The forward-chain unit (:func:`_units`) of each conv layer name; the layer itself for other models."""
    units = _units(model)
    out = []
    for n in names:
        u = next((u for u, _ in units if n.startswith(u + ".")), n) if units is not None else n
        out.append(u)
    return out


def select_filters(scores: dict[str, np.ndarray], fraction: float, *, budget: str = "per_layer",
                   model: nn.Module | None = None, head: str = "head", deep_pool: float = 3.0) -> Selection:
    """Select the highest-scoring filters.

    Parameters
    ----------
    scores : dict
        Conv layer name -> array of shape (F,) (e.g. :func:`rank_filters`).
    fraction : float
        In (0, 1].
    budget : str
        ``"per_layer"``: the top ``max(1, round(fraction * F))`` filters of every
        layer (ties: lower index first). ``"global"``: filters of all layers in
        order of score (normalized Borda scores are comparable across layers;
        ties: layer order, then index) while the selected filters' parameters
        stay within ``fraction`` of all conv filters' parameters (at least one
        filter); needs ``model``. ``"deep"`` (issue 14; an imutune extension
        of the paper's per-layer selection): the global budget restricted to
        the deepest units of the forward chain (stem, residual blocks;
        :func:`frozen_prefix`): units are added from the last one backwards
        until their filters hold ``deep_pool`` times the budget, so the ranking
        still chooses among several times more filters than it may train while
        everything before the pool stays frozen -- a long frozen prefix that
        the cached-prefix training skips and that backward never reaches.
    deep_pool : float
        Candidate pool of ``"deep"``, as a multiple (>= 1) of the parameter budget.

    Raises
    ------
    ValueError
        If ``fraction`` is outside (0, 1], ``budget`` is unknown, ``deep_pool``
        is below 1, or a layer is missing from ``model``.
    """
    f = _check_fraction(fraction)
    V.check_choice("budget", budget, BUDGETS)
    sel: dict[str, np.ndarray] = {}
    if budget == "per_layer":
        for name, s in scores.items():
            s = np.asarray(s, dtype=np.float64)
            order = np.argsort(-s, kind="stable")
            m = np.zeros(s.shape[0], bool)
            m[order[:_k_of(f, s.shape[0])]] = True
            sel[name] = m
        return Selection(sel, (head,))
    if model is None:
        raise ValueError(f"budget={budget!r} needs the model (to count parameters per filter)")
    layers = {l.name: l for l in conv_layers(model)}
    missing = [k for k in scores if k not in layers]
    if missing:
        raise ValueError(f"layers {missing} of the scores are not conv layers of the model")
    total = sum(layers[n].params_per_filter * layers[n].n_filters for n in scores)
    cap = f * total
    pool = set(scores)
    if budget == "deep":
        try:
            dp = float(deep_pool)
        except (TypeError, ValueError):
            dp = float("nan")
        if not dp >= 1.0 or not np.isfinite(dp):
            raise ValueError(f"deep_pool must be a number >= 1 (a multiple of the budget), got {deep_pool!r}")
        order = [n for n in layers if n in scores]           # forward order
        units = _layer_units(model, order)
        pool, held = set(), 0
        for u in reversed(list(dict.fromkeys(units))):
            members = [n for n, uu in zip(order, units) if uu == u]
            pool.update(members)
            held += sum(layers[n].params_per_filter * layers[n].n_filters for n in members)
            if held >= dp * cap:
                break
    cands = []
    for li, (name, s) in enumerate(scores.items()):
        if name not in pool:
            continue
        for j, v in enumerate(np.asarray(s, dtype=np.float64)):
            cands.append((-v, li, j, name))
    cands.sort()
    used = 0
    sel = {n: np.zeros(layers[n].n_filters, bool) for n in scores}
    for _, _, j, name in cands:
        p = layers[name].params_per_filter
        if used + p <= cap or used == 0:
            sel[name][j] = True
            used += p
    return Selection(sel, (head,))


# --------------------------------------------------------------------------- masks

def _module_prefixes(modules: Sequence[str]) -> list[str]:
    return ["" if m == "" else m + "." for m in modules]


def entry_masks(model: nn.Module, selection: Selection) -> dict[str, bool | torch.Tensor]:
    """Which ``state_dict`` entries fine-tuning may change.

    Returns
    -------
    dict
        State-dict key -> ``True`` (all of it), ``False`` (none of it) or a bool
        tensor broadcastable to the entry (selected rows).

    Raises
    ------
    ValueError
        If the selection names an unknown layer or a mask has the wrong length.
    """
    state = model.state_dict(keep_vars=True)
    masks: dict[str, bool | torch.Tensor] = {k: False for k in state}
    prefixes = _module_prefixes(selection.modules)
    for k in state:
        if any(k.startswith(p) for p in prefixes):
            masks[k] = True
    layers = {l.name: l for l in conv_layers(model)}
    for name, m in selection.filters.items():
        if name not in layers:
            raise ValueError(f"selection names layer {name!r}, which is not a conv layer; conv layers are "
                             f"{list(layers)}")
        l = layers[name]
        m = np.asarray(m, dtype=bool)
        if m.shape != (l.n_filters,):
            raise ValueError(f"selection of layer {name!r} must have shape ({l.n_filters},), got {m.shape}")
        if not m.any():
            continue
        whole = bool(m.all())
        mt = torch.from_numpy(m.copy())
        keys = [f"{name}.weight", f"{name}.bias"]
        if l.bn_name is not None:
            keys += [f"{l.bn_name}.{s}" for s in ("weight", "bias", "running_mean", "running_var")]
        for k in keys:
            if k in state and masks[k] is not True:
                masks[k] = True if whole else mt.reshape((-1,) + (1,) * (state[k].dim() - 1))
        if l.bn_name is not None and whole:
            masks[f"{l.bn_name}.num_batches_tracked"] = True
    return masks


def count_trainable(model: nn.Module, selection: Selection) -> int:
    """Trainable parameter elements under ``selection`` (buffers not counted)."""
    masks = entry_masks(model, selection)
    n = 0
    for k, p in model.named_parameters():
        m = masks.get(k, False)
        n += p.numel() if m is True else 0 if m is False else int(m.expand_as(p).sum())
    return n


# --------------------------------------------------------------------------- training

def _bn_channel_masks(model: nn.Module, masks: dict) -> dict[str, tuple[nn.Module, bool | torch.Tensor]]:
    out = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            mk = masks.get(f"{name}.running_mean", masks.get(f"{name}.weight", False))
            out[name] = (m, mk if isinstance(mk, bool) else mk.reshape(-1))
    return out


class _PartialBN:
    """Forward of a partly selected batch norm during selective fine-tuning, in one pass.

    Training: batch statistics are computed for the selected channels only
    (``torch.var_mean`` over (N, T) of those channels) and update scratch running
    statistics; the other channels use the frozen running statistics; every
    channel is then normalized by one affine pass ``x * scale + shift`` (no
    second batch-norm pass over all channels, issue 14). Gradients reach the
    scale/shift of the selected channels only (the frozen channels' entries are
    detached). Eval: each channel uses its own running statistics (scratch for
    selected, frozen for the others). :meth:`commit` writes the selected
    channels' scratch statistics into the module's buffers.
    """

    def __init__(self, bn: nn.Module, mask: torch.Tensor) -> None:
        self.bn = bn
        self.mask = mask                                    # (F,) bool
        self.idx = torch.nonzero(mask).reshape(-1)          # (S,) selected channels
        self.frozen_rm, self.frozen_rv = bn.running_mean.detach().clone(), bn.running_var.detach().clone()
        self.rm, self.rv = self.frozen_rm[self.idx].clone(), self.frozen_rv[self.idx].clone()   # scratch, (S,)

    def _full(self, sel: torch.Tensor, frozen: torch.Tensor) -> torch.Tensor:
        return frozen.index_put((self.idx,), sel)           # (S,) into (F,), differentiable in ``sel``

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        bn = self.bn
        shape = (1, -1, 1) if x.dim() == 3 else (1, -1)
        if bn.training:
            mom = 0.1 if bn.momentum is None else bn.momentum
            xs = x.index_select(1, self.idx)                                  # (N, F, T) -> (N, S, T)
            dims = (0, 2) if x.dim() == 3 else (0,)
            var, mean = torch.var_mean(xs, dim=dims, unbiased=False)         # (S,), (S,)
            n = xs.numel() // xs.shape[1]
            with torch.no_grad():
                self.rm.mul_(1 - mom).add_(mom * mean)
                self.rv.mul_(1 - mom).add_(mom * var * (n / max(n - 1, 1)))
            m, v = self._full(mean, self.frozen_rm), self._full(var, self.frozen_rv)
        else:
            m, v = self._full(self.rm, self.frozen_rm), self._full(self.rv, self.frozen_rv)
        w = bn.weight if bn.weight is not None else torch.ones_like(m)
        b = bn.bias if bn.bias is not None else torch.zeros_like(m)
        w = self._full(w[self.idx], w.detach())             # gradients only for the selected channels
        b = self._full(b[self.idx], b.detach())
        scale = w * torch.rsqrt(v + bn.eps)                 # (F,)
        shift = b - m * scale
        return torch.addcmul(shift.reshape(shape), x, scale.reshape(shape))   # one pass over (N, F, T)

    @torch.no_grad()
    def commit(self) -> None:
        self.bn.running_mean.copy_(self._full(self.rm, self.frozen_rm))
        self.bn.running_var.copy_(self._full(self.rv, self.frozen_rv))


class _RowsConvFn(torch.autograd.Function):
    """``conv1d`` whose selected output rows train as a compact parameter.

    ``apply(x, weight, rows, idx, stride, padding, dilation)``: ``weight`` (F, C, k)
    is the layer's whole weight, frozen (no gradient) and holding the current
    values of the trained rows (:class:`_RowsConvHook` writes ``rows`` into it
    after every optimiser step); ``rows`` (S, C, k) is the trainable parameter
    of the ``S`` selected rows ``idx`` (S,) int64. Forward: the ordinary full
    convolution with ``weight`` (bit-identical outputs). Backward: the input
    gradient as autograd computes it (only when needed), and the gradient of
    ``rows`` from the selected channels of the output gradient
    (``aten.convolution_backward`` on the sliced weight and gradient:
    bit-identical to the rows of the whole-tensor gradient on PyTorch's CPU
    kernels, tested). The weight-gradient cost falls from the whole layer to
    ``S / F`` of it, and no (F, C, k) gradient is formed, masked or stepped
    by the optimiser.
    """

    @staticmethod
    def forward(ctx, x, weight, rows, idx, stride, padding, dilation):
        ctx.save_for_backward(x, weight, idx)
        ctx.conf = (list(stride), list(padding), list(dilation))
        return F.conv1d(x, weight, None, stride, padding, dilation, 1)

    @staticmethod
    def backward(ctx, go):
        x, w, idx = ctx.saved_tensors
        stride, padding, dilation = ctx.conf
        gx = grows = None
        if ctx.needs_input_grad[0]:
            gx = torch.ops.aten.convolution_backward(go, x, w, None, stride, padding, dilation, False, [0], 1,
                                                     [True, False, False])[0]
        if ctx.needs_input_grad[2]:
            grows = torch.ops.aten.convolution_backward(go.index_select(1, idx), x, w.index_select(0, idx), None,
                                                        stride, padding, dilation, False, [0], 1,
                                                        [False, True, False])[1]   # (S, C, k)
        return gx, None, grows, None, None, None, None


def _rows_only_ok(conv: nn.Module) -> bool:
    return (type(conv) is nn.Conv1d and conv.groups == 1 and conv.bias is None and conv.padding_mode == "zeros"
            and not isinstance(conv.padding, str))


class _RowsConvHook(TrainHooks):
    """Trains the selected rows of partly selected conv layers as compact parameters (issue 14).

    For each layer, ``rows`` (S, C, k) is a new leaf parameter initialized from
    the selected rows of the weight, which stops requiring a gradient; the
    layer's forward becomes :class:`_RowsConvFn` (removed at the end). The
    optimiser steps the ``rows`` (:attr:`params`, passed to
    :class:`~imutune.train.loop.GradientMask` as ``extra``), so AdamW touches
    ``S / F`` of the layer's entries instead of the whole tensor with zeroed
    rows; after every step the rows are written back into the weight, so the
    model's state dict is current at every checkpoint and evaluation. Adam's
    update is elementwise and the masked path gives the unselected rows zero
    gradients and no weight decay, so both give the same weights, bit for bit
    (tested). Not resumable: the rows are copied from the weights when the
    hook is built, before a checkpoint would load newer weights.
    """

    resumable = False

    def __init__(self, convs: Sequence[tuple[nn.Conv1d, torch.Tensor]]) -> None:
        self.convs, self.params, self._idx = [], [], []
        for conv, mask in convs:
            idx = torch.nonzero(mask.reshape(-1)).reshape(-1).to(conv.weight.device)
            rows = nn.Parameter(conv.weight.detach().index_select(0, idx).clone())   # (F, C, k) -> (S, C, k)
            conv.weight.requires_grad_(False)
            conv.forward = (lambda x, c=conv, r=rows, i=idx: _RowsConvFn.apply(x, c.weight, r, i, c.stride,
                                                                               c.padding, c.dilation))
            self.convs.append(conv)
            self.params.append(rows)
            self._idx.append(idx)

    def after_step(self, model: nn.Module) -> None:
        with torch.no_grad():
            for conv, rows, idx in zip(self.convs, self.params, self._idx):
                conv.weight.index_copy_(0, idx, rows)          # (S, C, k) into (F, C, k)

    def on_end(self, model: nn.Module) -> None:
        for conv in self.convs:
            if "forward" in conv.__dict__:
                del conv.forward


class _PartialBNHook(TrainHooks):
    """Installs :class:`_PartialBN` forwards on partly selected batch norms for the run and
    commits their scratch statistics at the end (not resumable: the scratch statistics are
    outside the state dict until then)."""

    resumable = False

    def __init__(self, bns: Sequence[tuple[nn.Module, torch.Tensor]]) -> None:
        self.parts = []
        for bn, mk in bns:
            pb = _PartialBN(bn, mk)
            bn.forward = pb                                 # instance attribute shadows the class forward
            self.parts.append(pb)

    def on_end(self, model: nn.Module) -> None:
        for pb in self.parts:
            pb.commit()
            del pb.bn.forward


class _RestoreFrozen(TrainHooks):
    """At the end, copies unselected state-dict entries back from a frozen copy (a safety net for
    optimizer implementations), counts the entries that had drifted (``drift``), and restores the
    ``requires_grad`` flags."""

    def __init__(self, model: nn.Module, masks: dict, flags: dict[str, bool]) -> None:
        state = model.state_dict(keep_vars=True)
        self.frozen = {k: (t, masks[k].to(t.device), t.detach().clone()) for k, t in state.items()
                       if isinstance(masks[k], torch.Tensor)}
        self.frozen.update({k: (t, None, t.detach().clone()) for k, t in state.items() if masks[k] is False})
        self.flags = flags
        self.model = model                   # the whole model (training may see only its trainable suffix)
        self.drift = 0

    def on_end(self, model: nn.Module) -> None:
        with torch.no_grad():
            for t, mt, orig in self.frozen.values():
                keep = torch.ones_like(t, dtype=torch.bool) if mt is None else ~mt.expand_as(t)
                self.drift += int((t[keep] != orig[keep]).sum()) if t.dim() else int(bool(keep) and bool(t != orig))
                t.copy_(orig if mt is None else torch.where(mt, t, orig))
        for k, p in self.model.named_parameters():
            p.requires_grad_(self.flags[k])


# --------------------------------------------------------------------------- cached frozen prefix (issue 14)

def _units(model: nn.Module) -> list[tuple[str, nn.Module]] | None:
    """The forward chain of a :class:`~imutune.models.resnet1d.ResNet1d` as (state-dict prefix, module):
    the stem, then every residual block in order; None for a model of another structure."""
    if not all(hasattr(model, a) for a in ("stem", "stages", "pool", "dropout", "head")):
        return None
    units: list[tuple[str, nn.Module]] = [("stem", model.stem)]
    for i, stage in enumerate(model.stages):
        units += [(f"stages.{i}.{j}", block) for j, block in enumerate(stage)]
    return units


def frozen_prefix(model: nn.Module, selection: Selection) -> int:
    """How many leading units of the forward chain (stem, then residual blocks; :func:`_units`) the
    selection leaves entirely frozen: none of their state-dict entries may change. 0 for models of
    another structure or when the first unit trains."""
    units = _units(model)
    if units is None:
        return 0
    masks = entry_masks(model, selection)
    k = 0
    for name, _ in units:
        if any(m is not False for key, m in masks.items() if key.startswith(name + ".")):
            break
        k += 1
    return min(k, len(units))


class _Suffix(nn.Module):
    """The part of a ResNet1d after its first ``start`` units (sharing the model's modules and parameters):
    (N, F, T') activations of unit ``start - 1`` -> logits (N, K)."""

    def __init__(self, model: nn.Module, start: int) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([m for _, m in _units(model)[start:]])
        self.pool, self.dropout, self.head = model.pool, model.dropout, model.head

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        for b in self.blocks:
            h = b(h)                                      # (N, F, T') -> (N, F2, T'')
        return self.head(self.dropout(self.pool(h).flatten(1)))   # (N, D, T'') -> (N, D) -> (N, K)


@torch.no_grad()
def _prefix_activations(model: nn.Module, k: int, x: np.ndarray, device, batch_size: int = 256) -> np.ndarray:
    """Outputs of the first ``k`` units in eval mode, (N, C, T) -> (N, F, T'), float32.

    Computed in chunks of at least two windows: PyTorch's CPU convolutions give per-window results that
    do not depend on the batch size from two windows up (checked by the tests), while a batch of one may
    take another kernel; training batches are never a lone window either (the loop skips lone tails).
    """
    prefix = nn.Sequential(*[m for _, m in _units(model)[:k]])
    was = [m.training for m in prefix.modules()]
    prefix.eval()
    n = x.shape[0]
    bounds = list(range(0, n, batch_size)) + [n]
    if len(bounds) > 2 and bounds[-1] - bounds[-2] == 1:
        del bounds[-2]                                    # fold a lone last window into the previous chunk
    out = [prefix(torch.from_numpy(np.ascontiguousarray(x[a:b])).to(device)).float().cpu().numpy()
           for a, b in zip(bounds[:-1], bounds[1:])]
    for m, w in zip(prefix.modules(), was):
        m.train(w)
    return np.concatenate(out)


@torch.no_grad()
def backward_flops(model: nn.Module, selection: Selection, input_shape: tuple[int, int], *,
                   rows_only: bool = True, cache_prefix: bool = True) -> dict[str, float]:
    """Analytic FLOPs per window of one training step's backward pass (and forward) under ``selection``.

    Counts the conv layers and the head (multiply-adds x 2; batch norms,
    activations and the optimiser are left out). A conv layer of forward cost
    ``c = 2 * F * C * k * T'`` costs, in backward, ``c`` for its input gradient
    when a trainable entry lies before it in module order (the gradient must
    flow through it), and ``c * S / F`` for its weight gradient when ``S`` of its
    ``F`` rows train with ``rows_only`` (``c`` with whole-tensor gradients
    masked afterwards; ``c`` when trained in full). ``forward`` counts the
    frozen prefix only when it is not cached (``cache_prefix``,
    :func:`frozen_prefix`).

    Parameters
    ----------
    input_shape : (int, int)
        (C, T) of one window.

    Returns
    -------
    dict
        ``backward``, ``forward`` (per training step and window), ``full_backward``
        (the whole model trained), ``full_forward``, all floats.
    """
    layers = conv_layers(model)
    masks = entry_masks(model, selection)
    shapes: dict[str, tuple] = {}
    hs = [l.conv.register_forward_hook(lambda _m, _i, o, n=l.name: shapes.__setitem__(n, tuple(o.shape)))
          for l in layers]
    was = model.training
    model.eval()
    try:
        dev = next(model.parameters()).device
        model(torch.zeros((2,) + tuple(input_shape), device=dev))            # (2, C, T): shapes only
    finally:
        for h in hs:
            h.remove()
        model.train(was)
    units = _layer_units(model, [l.name for l in layers])
    k = frozen_prefix(model, selection) if cache_prefix else 0
    cached = {u for u, _ in (_units(model) or [])[:k]}
    head_cost = 0.0
    head = getattr(model, "head", None)
    if isinstance(head, nn.Linear):
        head_cost = 2.0 * head.in_features * head.out_features
    fwd = bwd = full_f = full_b = 0.0
    upstream = False                 # a trainable entry lies before this layer
    for i, (l, u) in enumerate(zip(layers, units)):
        c = 2.0 * l.conv.weight[0].numel() * shapes[l.name][1] * shapes[l.name][2]
        full_f += c
        full_b += c * (2.0 if i > 0 else 1.0)
        if u not in cached:
            fwd += c
        keys = [key for key in masks if key.startswith(l.name + ".") or (l.bn_name and key.startswith(l.bn_name + "."))]
        mw = masks.get(f"{l.name}.weight", False)
        if upstream:
            bwd += c
        if mw is True:
            bwd += c
        elif isinstance(mw, torch.Tensor):
            frac = float(mw.float().mean())
            bwd += c * (frac if rows_only and _rows_only_ok(l.conv) else 1.0)
        if any(masks[key] is not False for key in keys):
            upstream = True
    fwd += head_cost
    full_f += head_cost
    full_b += 2.0 * head_cost
    head_trains = any(masks[key] is not False for key in masks if key.startswith("head."))
    bwd += head_cost * ((1.0 if head_trains else 0.0) + (1.0 if upstream else 0.0))
    return {"backward": bwd, "forward": fwd, "full_backward": full_b, "full_forward": full_f}


BN_STATISTICS = ("batch", "frozen")


def selection_hooks(model: nn.Module, selection: Selection, *, rows_only: bool = True,
                    bn_statistics: str = "batch") -> list[TrainHooks]:
    """The :class:`~imutune.train.loop.TrainHooks` that make :func:`~imutune.train.loop.train`
    change only what ``selection`` allows (see :func:`finetune_selected`).

    Sets ``requires_grad`` on ``model``'s parameters (the last hook restores the
    flags at the end) and installs the partial batch-norm forwards (removed at
    the end); build them right before training, on the model's final device.
    The last hook's ``drift`` counts unselected entries that had changed.
    With ``rows_only`` a partly selected ``Conv1d`` (groups 1, no bias) trains
    its selected rows as a compact (S, C, k) parameter (:class:`_RowsConvHook`,
    :class:`_RowsConvFn`): the weight gradient is computed for those rows only
    and the optimiser steps only them, instead of the whole tensor's gradient
    masked afterwards and stepped whole; same weights, bit for bit.
    ``bn_statistics="frozen"`` keeps every batch norm that is not trained whole
    in eval mode: it normalizes with its running statistics, which stay
    bit-identical, and the selected channels' scale and shift still train (a
    per-channel affine map, so they can absorb the shift of their filter's
    output); no :class:`_PartialBN`. ``"batch"``: partly selected batch norms
    use batch statistics for their selected channels (:class:`_PartialBN`).
    """
    V.check_choice("bn_statistics", bn_statistics, BN_STATISTICS)
    masks = entry_masks(model, selection)
    if bn_statistics == "frozen":      # running statistics of partly selected batch norms stay as they are
        masks = {k: (False if k.rsplit(".", 1)[-1] in ("running_mean", "running_var") and isinstance(m, torch.Tensor)
                     else m) for k, m in masks.items()}
    flags = {k: p.requires_grad for k, p in model.named_parameters()}
    restore = _RestoreFrozen(model, masks, flags)
    part = []
    for k, p in model.named_parameters():
        m = masks[k]
        p.requires_grad_(m is not False)
        if m is not False and m is not True:
            part.append((p, m))
    bns = _bn_channel_masks(model, masks)
    dev = next(model.parameters()).device
    rows = []
    if rows_only:
        for l in conv_layers(model):
            m = masks.get(f"{l.name}.weight", False)
            if isinstance(m, torch.Tensor) and _rows_only_ok(l.conv):
                rows.append((l.conv, m))
    compact = {id(conv.weight) for conv, _ in rows}
    rows_hook = _RowsConvHook(rows)                       # the compact rows replace these weights' masked training
    part = [(p, m) for p, m in part if id(p) not in compact]
    return [rows_hook, GradientMask(part, extra=rows_hook.params),
            FrozenModules([bn for bn, mk in bns.values() if mk is False]),   # "frozen": partly selected ones too
            _PartialBNHook([(bn, mk.to(dev)) for bn, mk in bns.values() if isinstance(mk, torch.Tensor)]),
            restore]


def finetune_selected(model: nn.Module, x: np.ndarray, y: np.ndarray, selection: Selection, *,
                      config: TrainConfig = SELECTIVE,
                      loss_fn: nn.Module | None = None, sample_weights: np.ndarray | None = None,
                      eval_fn: Callable[[nn.Module], float] | None = None, progress: bool = False,
                      desc: str = "selective", cache_prefix: bool = False,
                      rows_only: bool = True, bn_statistics: str = "batch") -> dict[str, Any]:
    """Fine-tune ``model`` in place, changing only what ``selection`` allows.

    Trained by the one loop, :func:`imutune.train.loop.train` (AdamW,
    :func:`~imutune.train.loop.one_cycle_schedule`, seeded shuffling, lone tail
    batches skipped), with the hooks of :func:`selection_hooks`. Unselected
    entries of the state dict stay bit-identical:

    * tensors trained in full: ordinary AdamW with ``config.weight_decay``;
    * partly selected tensors (conv weights, batch-norm scale/shift):
      :class:`~imutune.train.loop.GradientMask` multiplies their gradient by
      the row mask after every backward pass and gives them no weight decay,
      so Adam's moments and update of the unselected rows are exactly zero
      and those rows keep their bits; with ``rows_only`` the selected rows of
      a conv weight are a compact parameter instead (no decay either), which
      gives the same weights;
    * batch norm: a layer with no selected filter stays in eval mode
      (:class:`~imutune.train.loop.FrozenModules`); a partly selected one
      uses :class:`_PartialBN` (see the module notes);
    * at the end, unselected entries are copied back from a frozen copy
      anyway (a safety net for optimizer implementations; the number of
      entries that had drifted is returned as ``frozen_drift``, 0 with
      PyTorch's AdamW).

    Parameters
    ----------
    model : nn.Module
        Modified in place; ``requires_grad`` flags are restored on return.
    x : np.ndarray
        Array of shape (N, C, T), float32, normalized.
    y : np.ndarray
        Array of shape (N,), int64.
    selection : Selection
    config : TrainConfig
        Default :data:`~imutune.train.config.SELECTIVE` (the fine-tuning budget at a 10x learning rate).
    loss_fn : nn.Module, optional
        ``loss_fn(logits, targets, weights)``; cross-entropy by default.
    sample_weights : np.ndarray, optional
        Array of shape (N,) of per-sample weights (FilterLoss).
    eval_fn : callable, optional
        Called with the model (in eval mode) before training and after every
        epoch; its value is recorded in ``curve``. Its time is not counted in
        ``seconds``.
    cache_prefix : bool
        Pay only for what is trained (issue 14; an imutune optimisation, not in
        the paper): when the selection leaves the first units of a ResNet1d
        (stem, leading residual blocks; :func:`frozen_prefix`) entirely
        frozen, their outputs are computed once for all windows (eval mode,
        which is what frozen units run in anyway) and the loop trains the
        rest of the model on these cached activations. Same batches, same
        arithmetic: the weights after training are bit-identical to uncached
        training on PyTorch's CPU kernels (tested); time per epoch falls with
        the depth of the earliest selected filter. The caching time counts in
        ``seconds`` and ``curve``.
    rows_only : bool
        Train the selected rows of partly selected conv layers as compact
        parameters (:func:`selection_hooks`; an imutune optimisation): weight
        gradients for those rows only, and AdamW steps ``S / F`` of each such
        layer instead of the whole tensor. Same weights as whole-tensor
        gradients masked afterwards (tested); resnet1d34 at 10 % of the filters
        of every layer, one CPU thread: 0.69x full fine-tuning's time per
        epoch (1.02x with rows-only gradients stepped whole, 1.1-1.2x masked).
    bn_statistics : {"batch", "frozen"}
        How a partly selected batch norm normalizes while training
        (:func:`selection_hooks`): "batch" (batch statistics for its selected
        channels, :class:`_PartialBN`) or "frozen" (its running statistics,
        left bit-identical, with the selected channels' scale and shift
        trained; fewer operations per step, issue 14).

    Returns
    -------
    dict
        The loop's :class:`~imutune.train.loop.TrainResult` (``loss``,
        ``seconds`` (training time, evaluation excluded), ``steps``, ``curve``
        (list of ``[epoch, cumulative seconds, eval value]``, epoch 0 first;
        empty without ``eval_fn``), ``device``, ...) plus
        ``trainable_parameters``, ``frozen_drift``, ``cached_units`` (leading
        units trained from cached activations, 0 without caching) and
        ``cache_seconds``.

    Raises
    ------
    ValueError
        If the selection trains no parameter, or on the loop's input errors.
    """
    from ..train.losses import WeightedCrossEntropy

    x = _check_x("x", x, model)
    dev = resolve_device(config.device)
    model.to(dev)
    n_trainable = count_trainable(model, selection)
    if n_trainable == 0:
        raise ValueError("the selection trains no parameter")
    k = frozen_prefix(model, selection) if cache_prefix else 0
    net, inputs, cache_s, ev = model, x, 0.0, eval_fn
    if k > 0:
        t0 = time.perf_counter()
        inputs = _prefix_activations(model, k, x, dev)    # (N, C, T) -> (N, F, T')
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        cache_s = time.perf_counter() - t0
        net = _Suffix(model, k)
        if config.threads is None:   # the threads rule of the whole model, not of the smaller suffix
            from dataclasses import replace as _replace

            thr = resolve_threads(config, model, dev)
            config = _replace(config, threads=thr if thr is not None else torch.get_num_threads())
        if eval_fn is not None:
            ev = lambda _suffix: eval_fn(model.eval())    # noqa: E731 (evaluate the whole model on raw windows)
    hooks = selection_hooks(model, selection, rows_only=rows_only, bn_statistics=bn_statistics)
    try:
        res = train(net, inputs, y, config=config,
                    loss_fn=loss_fn if loss_fn is not None else WeightedCrossEntropy(),
                    sample_weights=sample_weights, hooks=hooks, eval_fn=ev, progress=progress, desc=desc)
    finally:
        model.eval()
    if k > 0:
        res = {**res, "seconds": res["seconds"] + cache_s, "curve": [[e, t + cache_s, v] for e, t, v in res["curve"]]}
    return {**res, "trainable_parameters": n_trainable, "frozen_drift": hooks[-1].drift, "cached_units": k,
            "cache_seconds": cache_s}


# --------------------------------------------------------------------------- personalization

@dataclass(frozen=True)
class SelectiveConfig:
    """Selective fine-tuning of a base model for one user."""

    fraction: float = 0.1            # fraction of conv filters to fine-tune, in (0, 1]
    budget: str = "per_layer"        # "per_layer" (top fraction of each layer), "global" (parameter budget)
    #                                  or "deep" (global budget over the deepest units; select_filters)
    ranking: str = "distortion"      # "distortion" (the paper's), "user_shift" or "combined" (rank_filters)
    train: TrainConfig = SELECTIVE   # FINETUNE's budget at a 10x learning rate (imutune.train.config.SELECTIVE)
    loss: str = "ce"                 # "ce" or "filterloss" (quality-weighted CE, imutune.personalize.quality)
    rank_batch_size: int = 256       # windows per forward pass while ranking
    cache_prefix: bool = True        # train from cached activations of a frozen prefix (exact; finetune_selected)
    bn_statistics: str = "frozen"    # partly selected batch norms: "frozen" running statistics or "batch" statistics

    def __post_init__(self) -> None:
        _check_fraction(self.fraction)
        V.check_choice("budget", self.budget, BUDGETS)
        V.check_choice("ranking", self.ranking, RANKINGS)
        V.check_choice("loss", self.loss, ("ce", "filterloss"))
        V.check_int_at_least("rank_batch_size", self.rank_batch_size, 1)
        V.check_choice("bn_statistics", self.bn_statistics, BN_STATISTICS)


def personalize(bundle: ModelBundle, x: np.ndarray, y: np.ndarray, *, config: SelectiveConfig = SelectiveConfig(),
                x_clean: np.ndarray | None = None, class_names: Sequence[str] | None = None,
                eval_fn: Callable[[nn.Module], float] | None = None,
                progress: bool = False) -> tuple[ModelBundle, dict[str, Any]]:
    """Rank, select and fine-tune the most distortion-affected filters of a base bundle.

    Parameters
    ----------
    bundle : ModelBundle
        The base model (not modified).
    x : np.ndarray
        The user's windows, shape (N, C, T), physical units (as the user's
        device delivers them); normalized with the bundle's normalizer.
    y : np.ndarray
        Array of shape (N,), int64 labels.
    config : SelectiveConfig
    x_clean : np.ndarray, optional
        The same windows without the device's distortion, shape (N, C, T),
        physical units: enables the paired ranking of the paper; without it
        the pair-free ranking against the base model's batch-norm statistics
        is used.
    class_names : sequence of str, optional
        The user's classes; a different class list replaces the head (the
        model's own classes in another order do not: labels are remapped).

    Returns
    -------
    (ModelBundle, dict)
        The personalized bundle and an info dict: ``ranking`` ("paired" or
        "batchnorm"), ``selection`` (layer -> filter indices), ``scores``,
        ``trainable_parameters``, ``train_seconds``, ``loss_history``, ``curve``.
    """
    from ..models.resnet1d import replace_head
    from ..train.losses import FilterLoss
    from .quality import categorize, category_counts
    from .quality import sample_weights as _weights

    model = copy.deepcopy(bundle.model).cpu()
    xn = bundle.normalizer(x)
    xc = None if x_clean is None else bundle.normalizer(x_clean)
    t0 = time.perf_counter()
    scores = rank_filters(model, xn, xc, ranking=config.ranking, y=y, batch_size=config.rank_batch_size,
                          device=config.train.device)
    rank_s = time.perf_counter() - t0
    sel = select_filters(scores, config.fraction, budget=config.budget, model=model)
    names = tuple(class_names) if class_names is not None else tuple(bundle.class_names)
    if names != tuple(bundle.class_names) and sorted(names) == sorted(bundle.class_names):
        # the model's classes in another order: same head, labels remapped to the model's order
        lookup = np.array([list(bundle.class_names).index(c) for c in names], dtype=np.int64)
        y = lookup[V.check_labels("y", y, len(names), allow_unlabeled=False)]
        names = tuple(bundle.class_names)
    head_replaced = names != tuple(bundle.class_names)
    if head_replaced:
        torch.manual_seed(config.train.seed)
        replace_head(model, len(names))
    weights, cats = None, None
    loss_fn = None
    if config.loss == "filterloss":
        if head_replaced:
            raise ValueError("loss='filterloss' scores windows with the base model's head; it needs the base "
                             "model's class list")
        c = categorize(predict_proba(model, xn, device=config.train.device), y)
        weights, cats = _weights(c), category_counts(c)
        loss_fn = FilterLoss()
    res = finetune_selected(model, xn, y, sel, config=config.train, loss_fn=loss_fn, sample_weights=weights,
                            eval_fn=eval_fn, progress=progress, desc="personalize", cache_prefix=config.cache_prefix,
                            bn_statistics=config.bn_statistics)
    info = {"stage": "personalize", "ranking": "paired" if xc is not None else "batchnorm",
            "ranking_method": config.ranking,
            "fraction": config.fraction, "budget": config.budget, "selection": sel.summary(),
            "selected_filters": sel.n_selected(), "total_filters": int(sum(len(v) for v in sel.filters.values())),
            "scores": {k: v.tolist() for k, v in scores.items()}, "head_replaced": head_replaced,
            "trainable_parameters": res["trainable_parameters"], "rank_seconds": rank_s,
            "train_seconds": res["seconds"], "loss_history": res["loss"], "curve": res["curve"],
            "cached_units": res["cached_units"], "steps": res["steps"],
            "category_counts": cats, "config": asdict(config), "n_train": int(xn.shape[0])}
    per = ModelBundle(model.cpu(), bundle.model_name, names, bundle.channels, bundle.window, bundle.normalizer,
                      {**{k: v for k, v in info.items() if k not in ("scores", "curve")}, "base": bundle.info})
    return per, info
