"""Target-user fine-tuning with FilterLoss (Han, Zhong, Feng, ICCC 2025, arXiv 2602.07772)
and its baselines' shared entry point.
"""
from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from .. import _validation as V
from ..signal.windows import Windows
from ..train.bundle import ModelBundle
from ..train.loop import FINETUNE, TrainConfig, train
from ..train.losses import FilterLoss
from .filter import QualityConfig
from .methods import DEFAULT_LOSS, METHOD_NAMES, NATIVE_LOSSES, canonical_loss
from .weights import CategoryWeights, FilterConfig

__all__ = ['FinetuneConfig', 'finetune', 'LOSSES', 'NATIVE_LOSSES', 'canonical_loss', 'source_head_bundle',
           'adapt_bundle_channels']

#: Every name ``FinetuneConfig.loss`` (and ``imutune finetune --loss``) accepts, in dash form.
LOSSES: tuple[str, ...] = METHOD_NAMES


@dataclass(frozen=True)
class FinetuneConfig:
    """Target-user fine-tuning with FilterLoss."""

    train: TrainConfig = FINETUNE   # fine-tuning optimiser settings (imutune.train.loop.FINETUNE)
    # "filterloss" (categories from out-of-fold probabilities alone, fixed weights), "filterloss-cv"
    # (full filter, weights chosen by cross-validation), "filterloss-learned" (full filter, meta-learned
    # weights), "filterloss-soft" (full filter, fixed weights: noisy 0, boundary scaled per window by its label
    # quality; weights.SOFT_WEIGHTS; with the source view, weights.SOFT_SOURCE_VETO / SOFT_SOURCE_FLAG and
    # QualityConfig.change_points on, unless quality sets source_veto / source_flag / change_points) -- see
    # imutune.personalize.weights -- "ce" (plain cross-entropy), or any other method of
    # imutune.personalize.baselines.METHODS ("gce", "cleanlab", "oracle", ...; dashes or underscores);
    # default methods.DEFAULT_LOSS, "filterloss-soft"
    loss: str = DEFAULT_LOSS
    quality: QualityConfig | None = None      # filter thresholds; None: filter.quality (given: used by every variant)
    weights: CategoryWeights | None = None    # "filterloss" / "filterloss-soft" category weights; None: their defaults
    filter: FilterConfig = FilterConfig()        # thresholds, folds, grids, meta-learning of the filter
    rehearsal_ratio: float = 0.0    # source windows mixed in per target window (0 = target only, as in the paper)

    def __post_init__(self) -> None:
        object.__setattr__(self, "loss", canonical_loss(self.loss))
        V.check_choice("loss", self.loss, LOSSES)
        if not (np.isfinite(self.rehearsal_ratio) and self.rehearsal_ratio >= 0):
            raise ValueError(f"rehearsal_ratio must be a finite number >= 0, got {self.rehearsal_ratio!r}")


def finetune(bundle: ModelBundle, windows: Windows, *, config: FinetuneConfig = FinetuneConfig(),
             sample_weights: np.ndarray | None = None, source_windows: Windows | None = None,
             checkpoint_path: str | os.PathLike | None = None, progress: bool = True) -> ModelBundle:
    """Fine-tune a pretrained bundle for one target user with FilterLoss.

    ``config.loss`` must be a FilterLoss variant or ``"ce"``
    (:data:`NATIVE_LOSSES`); every other method name of ``FinetuneConfig``
    runs through :func:`imutune.personalize.run.personalize`.

    If the target's class list differs from the bundle's, the classifier head
    is replaced (FilterLoss paper, Sec. III: transfer to a new class set);
    the bundle's classes in another order (a CSV's class names come sorted)
    keep the head, with the labels mapped to the bundle's order;
    windows must already be cut at the bundle's sample rate
    (:func:`imutune.signal.windows.make_windows` with ``bundle.preprocessing``
    resamples) and hold the bundle's channels or a subset of them.

    Channel subsets (e.g. accelerometer only, or fewer axes): when the
    windows' channels are a strict subset of the bundle's (any order; the
    full set must come in the bundle's order, as before), the model gets
    a new input layer for exactly those channels, initialized from the
    matching pretrained stem filters' input slices
    (:func:`imutune.models.resnet1d.adapt_input_channels`: ``weight[:, idx, :]``,
    no rescaling, i.e. the adapted model starts as the pretrained one with the
    missing normalized channels at their training mean), and everything is
    fine-tuned on the real channels only: no channel is faked. The returned
    bundle's contract lists the windows' channels with the source
    normalizer's and units' matching entries
    (:meth:`imutune.signal.contract.Preprocessing.subset_channels`), so export
    and the runtime see the real channel list; ``info["channels_adapted"]``
    records it. Rehearsal source windows must then have the same subset.
    Unless ``sample_weights`` are given, the sample-quality filter
    (:func:`imutune.personalize.quality.categorize`) scores the target windows with the
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

    Multi-head rehearsal (a new class set: the head is replaced and
    ``source_windows`` carry the bundle's own source classes): the bundle's
    source head is kept as a second head on the shared backbone
    (:class:`~imutune.models.resnet1d.MultiHead`) and the loss is the
    target loss plus ``rehearsal_ratio`` x the mean cross-entropy of the
    source windows through the source head (each term normalized over its
    own windows; learning without forgetting with replayed data, cf. Li &
    Hoiem, LwF, TPAMI 2018, and iCaRL), so the backbone keeps the source
    activities while it learns the new ones. The returned bundle is the
    target-head model (its export and contract have the target's classes
    only); the rehearsed source head is kept as data in
    ``info["source_head"]`` and :func:`source_head_bundle` rebuilds the
    source-class model from it (kept, not dropped: it costs K_s x (D + 1)
    floats and is what tells a user how much of the source survived).

    Returns
    -------
    ModelBundle
        A new bundle (the input is not modified); ``info`` has the category
        counts, weights used and training time.

    Raises
    ------
    ValueError
        If the windows have a channel the bundle does not (the message lists
        the channels seen and the ones expected), the weights are invalid, or
        rehearsal is asked for without source windows of the target's class
        list (or, for a new class set, of the bundle's source class list).
    """
    import copy

    from .filter import categorize, category_counts
    from .weights import sample_weights as _weights

    if config.loss not in NATIVE_LOSSES:
        raise ValueError(f"loss {config.loss!r} is a baseline, not a FilterLoss fine-tune; run it with "
                         "imutune.personalize.run.personalize (or imutune.personalize.baselines.run_method)")

    model = copy.deepcopy(bundle.model)
    bundle, channel_info = _adapt_to_channels(bundle, model, windows.channels)   # a subset: a new input layer
    if windows.preprocessing is not None:   # rate, window and units must be the model's (hop may differ)
        windows.preprocessing.check_matches(bundle.preprocessing, where="finetune", this_name="the target windows",
                                            other_name="the model", input_only=True)
    if set(windows.class_names) == set(bundle.class_names):   # the model's classes in another order (a CSV's
        windows = windows.relabel(bundle.class_names)         # are sorted): same head, labels in the model's order
    head_replaced = tuple(windows.class_names) != tuple(bundle.class_names)
    if head_replaced:
        from ..models.resnet1d import replace_head

        torch.manual_seed(config.train.seed)
        replace_head(model, windows.num_classes)
    xn = bundle.normalizer(windows.x)
    info: dict[str, Any] = {"stage": "finetune", "loss": config.loss, "head_replaced": head_replaced,
                            "n_train": len(windows), "class_counts": windows.class_counts().tolist()}
    if channel_info is not None:
        info["channels_adapted"] = channel_info
    t0 = time.perf_counter()
    quality = config.quality if config.quality is not None else config.filter.quality
    if config.loss == "filterloss" and sample_weights is None:
        # first version: probabilities alone, but out of fold (a head on the frozen embeddings fitted on the
        # other folds), so a user shift of the pretrained model does not mark clean windows noisy; no extra
        # training of the model itself (the budget stays the other methods')
        cw = config.weights if config.weights is not None else config.filter.fixed_weights
        probs = _first_version_probs(model, xn, windows.y, windows.num_classes, config)
        cats = categorize(probs, windows.y, config=quality)
        sample_weights = _weights(cats, cw)
        info["category_counts"] = category_counts(cats)
        info["category_weights"] = asdict(cw)
        info["categories"] = cats.tolist()
    info["scoring_seconds"] = time.perf_counter() - t0
    if config.loss in ("filterloss-cv", "filterloss-learned", "filterloss-soft") and sample_weights is None:
        from dataclasses import replace as _replace

        from .weights import SOFT_SOURCE_FLAG, SOFT_SOURCE_VETO, SOFT_WEIGHTS, filter_weights

        fcfg = _replace(config.filter, quality=quality, seed=config.train.seed, device=config.train.device)
        if config.loss == "filterloss-soft":   # fixed weights, soft factors and the source view (weights docstring)
            fcfg = _replace(fcfg, mode="fixed", fixed_soft=True, source_soft=True,
                            fixed_weights=config.weights if config.weights is not None else SOFT_WEIGHTS,
                            quality=_replace(quality, source_veto=SOFT_SOURCE_VETO if quality.source_veto is None
                                             else quality.source_veto,
                                             source_flag=SOFT_SOURCE_FLAG if quality.source_flag is None
                                             else quality.source_flag,
                                             change_points=True if quality.change_points is None
                                             else quality.change_points))
        else:
            fcfg = _replace(fcfg, mode=config.loss.split("-", 1)[1])
        if head_replaced:   # the fold models grow a random head: a longer minimum (FilterConfig.new_head_oof_min_steps);
            # the new head is random, so the pretrained model has no opinion on the new classes: no source view
            fcfg = _replace(fcfg, oof_min_steps=max(fcfg.oof_min_steps, fcfg.new_head_oof_min_steps),
                            quality=_replace(fcfg.quality, source_veto=None, source_flag=None, change_points=None),
                            source_soft=False)
        res = filter_weights(model, xn, windows.y, num_classes=windows.num_classes, config=fcfg,
                             groups=windows.recording)
        sample_weights = res.sample_weights
        info.update(res.summary())
        info["categories"] = res.categories.tolist()
    if sample_weights is not None and config.loss.startswith("filterloss"):
        info["sample_weights"] = np.asarray(sample_weights, dtype=np.float64).round(6).tolist()
    y = windows.y
    multi = None
    if config.rehearsal_ratio > 0:
        xn, y, sample_weights, multi = _add_rehearsal(xn, y, sample_weights, bundle, source_windows, windows, config,
                                                      model=model)
        info["n_rehearsal"] = int(len(y) - len(windows))
        info["rehearsal"] = "multi-head" if multi is not None else "same-classes"
    loss_fn = FilterLoss() if config.loss.startswith("filterloss") else None
    if multi is not None:   # target loss + rehearsal_ratio x source CE through the source head
        loss_fn = _MultiHeadLoss(multi.splits[0], config.rehearsal_ratio)
    hist = train(model if multi is None else multi, xn, y, config=config.train, loss_fn=loss_fn,
                 sample_weights=sample_weights, checkpoint_path=checkpoint_path, desc="finetune", progress=progress)
    info.update(train_config=asdict(config.train), loss_history=hist["loss"], train_seconds=hist["seconds"],
                steps=hist["steps"], resumed_from_epoch=hist["resumed_from_epoch"])
    if multi is not None:
        info["source_head"] = _encode_head(multi.heads[0], bundle.class_names)
    return bundle.derive(model, class_names=windows.class_names, info={**info, "base": bundle.info})


def adapt_bundle_channels(bundle: ModelBundle, channels: Sequence[str]) -> ModelBundle:
    """The pretrained bundle adapted to ``channels`` (a strict subset of its channels, any order), untrained.

    The channel-subset rule of :func:`finetune` without the fine-tuning: the
    model gets an input layer for exactly ``channels``
    (:func:`imutune.models.resnet1d.adapt_input_channels`: the pretrained stem
    filters' slices, no rescaling, so it computes what the pretrained model
    computes with the missing normalized channels at their training mean)
    and the contract is :meth:`Preprocessing.subset_channels`. ``bundle``
    itself when ``channels`` are its channels in its order.

    Raises
    ------
    ValueError
        As :func:`finetune` for channels (the message lists the channels seen and the ones expected).
    """
    import copy

    return _adapt_to_channels(bundle, copy.deepcopy(bundle.model), channels)[0]


def _adapt_to_channels(bundle: ModelBundle, model: nn.Module, channels: Sequence[str]
                       ) -> tuple[ModelBundle, dict[str, Any] | None]:
    """The channel-subset rule of :func:`finetune`: ``bundle`` itself when the windows have its channels;
    for a subset, ``model`` (a copy) gets an input layer for exactly those channels
    (:func:`imutune.models.resnet1d.adapt_input_channels`: the pretrained stem filters' slices) and the
    result is a bundle of that model with the contract subset (:meth:`Preprocessing.subset_channels`:
    the channels' units and normalization statistics), plus what was done."""
    have, want = tuple(channels), tuple(bundle.channels)
    if have == want:
        return bundle, None
    unknown = [c for c in have if c not in want]
    if unknown or not have or len(set(have)) != len(have):
        raise ValueError(f"target windows have channels {list(have)}; the model expects {list(want)} or a subset "
                         f"of them ({unknown or 'repeated names'} are not among the model's channels). A channel "
                         "the model has never seen cannot be fine-tuned in: pretrain a model on these channels "
                         "(imutune pretrain --channels ...) or pass the model's channel names")
    if len(have) == len(want):
        raise ValueError(f"target windows have channels {list(have)}; the model expects {list(want)} in this "
                         "order (make_windows with bundle.preprocessing orders them) or a strict subset of them")
    from ..models.resnet1d import adapt_input_channels

    keep = [want.index(c) for c in have]
    spec = bundle.preprocessing.subset_channels(have, where="finetune")
    adapt_input_channels(model, keep)
    info = {"from": list(want), "to": list(have), "kept_input_index": keep,
            "rule": "new stem conv = pretrained weight[:, kept, :] (no rescaling: mean-imputation of the "
                    "missing normalized channels); normalization and units: the source's entries"}
    import copy

    # the base of the fine-tune: the adapted, not yet trained model (a copy: ``model`` is trained in place)
    return ModelBundle(copy.deepcopy(model), bundle.model_name, spec, bundle.info), info


def _add_rehearsal(xn: np.ndarray, y: np.ndarray, weights: np.ndarray | None, bundle: ModelBundle,
                   source: Windows | None, target: Windows, config: FinetuneConfig, *, model: nn.Module):
    """Append ``round(rehearsal_ratio * N)`` normalized source windows (weight 1).

    Same classes (source classes == target classes): the windows join the target's label space, one head.
    New class set (``model``'s head was replaced and the source windows carry the bundle's own classes):
    multi-head rehearsal, the source labels are offset by the target's K and a
    :class:`~imutune.models.resnet1d.MultiHead` of ``model`` and a copy of the bundle's (source) head is
    returned to train. Returns ``(x (N + n, C, T), y (N + n,), weights (N + n,), MultiHead or None)``.
    """
    if source is None:
        raise ValueError(f"rehearsal_ratio={config.rehearsal_ratio} needs source_windows; got None")
    same = tuple(source.class_names) == tuple(target.class_names)
    multi_head = not same and tuple(target.class_names) != tuple(bundle.class_names) \
        and tuple(source.class_names) == tuple(bundle.class_names)
    if not (same or multi_head) or tuple(source.channels) != tuple(bundle.channels):
        raise ValueError(f"source_windows for rehearsal must have the target's classes {list(target.class_names)} "
                         f"(one head) or, for a new class set, the model's source classes "
                         f"{list(bundle.class_names)} (multi-head rehearsal), and the model's channels "
                         f"{list(bundle.channels)}; got {list(source.class_names)} and {list(source.channels)}")
    n = min(len(source), int(round(config.rehearsal_ratio * len(target))))
    idx = np.random.default_rng(config.train.seed).choice(len(source), size=n, replace=False)
    w_t = np.ones(len(target), np.float32) if weights is None else np.asarray(weights, np.float32)
    multi = None
    y_s = source.y[idx]
    if multi_head:
        import copy

        from ..models.resnet1d import MultiHead

        multi = MultiHead(model, [copy.deepcopy(bundle.model.head)])
        y_s = y_s + target.num_classes                       # the source head's logits follow the target's
    return (np.concatenate([xn, bundle.normalizer(source.x[idx])]),   # (N + n, C, T)
            np.concatenate([y, y_s]),
            np.concatenate([w_t, np.ones(n, np.float32)]), multi)


class _MultiHeadLoss(nn.Module):
    """Multi-head rehearsal loss on concatenated logits (N, K_t + K_s): the weighted mean cross-entropy of
    the target windows (labels < K_t) over the target head's logits (FilterLoss: ``sum w CE / sum w``) plus
    ``ratio`` x the mean cross-entropy of the source windows over the source head's logits. Each term is
    normalized within its own windows, so the weighting does not depend on how batches mix them."""

    def __init__(self, k_target: int, ratio: float) -> None:
        super().__init__()
        self.k, self.ratio = int(k_target), float(ratio)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
        import torch.nn.functional as F

        w = torch.ones_like(targets, dtype=logits.dtype) if weights is None else weights
        t = targets < self.k
        loss = logits.new_zeros(())
        for mask, part, offset, scale in ((t, slice(0, self.k), 0, 1.0), (~t, slice(self.k, None), self.k, self.ratio)):
            wm = w[mask]
            if bool(mask.any()) and float(wm.sum()) > 0:
                ce = F.cross_entropy(logits[mask, part], targets[mask] - offset, reduction="none")  # (n_head,)
                loss = loss + scale * (wm * ce).sum() / wm.sum()
        return loss


def _encode_head(head: nn.Linear, class_names) -> dict[str, Any]:
    """The rehearsed source head as JSON data (float32 little-endian, base64) for ``info["source_head"]``."""
    import base64

    def b64(t: torch.Tensor) -> str:
        return base64.b64encode(t.detach().cpu().to(torch.float32).contiguous().numpy().astype("<f4").tobytes()
                                ).decode("ascii")

    return {"class_names": list(class_names), "shape": [int(head.out_features), int(head.in_features)],
            "weight": b64(head.weight), "bias": b64(head.bias), "dtype": "float32-le-base64",
            "note": "multi-head rehearsal: the source head trained beside the target head on the shared "
                    "backbone; imutune.personalize.finetune.source_head_bundle(bundle) rebuilds that model"}


def source_head_bundle(bundle: ModelBundle, *, base: ModelBundle | None = None) -> ModelBundle:
    """The fine-tuned backbone of ``bundle`` with the source classes' head: a plain registry bundle.

    After multi-head rehearsal (:func:`finetune` with a new class set and ``rehearsal_ratio > 0``) the
    returned target bundle keeps the rehearsed source head as data in ``info["source_head"]`` (its model,
    export and contract are the target's: one class list, one logits vector); this rebuilds a bundle
    of the same backbone with that head and the source class names, which saves, loads and exports like
    any other. Without that entry, ``base`` (the pretrained bundle) supplies its own, untrained-since head:
    what the source classes get from a fine-tune without rehearsal (the forgetting baseline).

    Parameters
    ----------
    bundle : ModelBundle
        A bundle returned by :func:`finetune` (or loaded from one).
    base : ModelBundle, optional
        The pretrained bundle; used only when ``bundle`` has no rehearsed source head.

    Returns
    -------
    ModelBundle
        Same model name, channels and normalizer, the source class names; ``info["stage"] ==
        "source head"``.

    Raises
    ------
    ValueError
        If ``bundle`` has no ``info["source_head"]`` and no ``base`` is given, or the stored head does not fit
        the model's embedding (the message names the shapes).
    """
    import base64
    import copy

    model = copy.deepcopy(bundle.model)
    d = int(model.embedding_dim)
    entry = bundle.info.get("source_head")
    if entry is None:
        if base is None:
            raise ValueError("bundle has no info['source_head'] (it was not fine-tuned with multi-head rehearsal); "
                             "pass base=<the pretrained bundle> to attach its own head")
        head, names = copy.deepcopy(base.model.head), tuple(base.class_names)
    else:
        k, d_saved = (int(v) for v in entry["shape"])
        if d_saved != d:
            raise ValueError(f"info['source_head'] has shape {[k, d_saved]}; the model's embedding has {d} features")
        head = nn.Linear(d, k)
        with torch.no_grad():
            for name, shape in (("weight", (k, d)), ("bias", (k,))):
                raw = np.frombuffer(base64.b64decode(entry[name]), dtype="<f4")
                if raw.size != int(np.prod(shape)):
                    raise ValueError(f"info['source_head'][{name!r}] holds {raw.size} values; expected {shape}")
                getattr(head, name).copy_(torch.from_numpy(raw.astype(np.float32).reshape(shape)))
        names = tuple(entry["class_names"])
    model.head = head
    model.num_classes = head.out_features
    return bundle.derive(model, class_names=names, info={"stage": "source head", "target": bundle.info.get("stage"),
                                                         "rehearsed": entry is not None})


def _first_version_probs(model: nn.Module, xn: np.ndarray, y: np.ndarray, num_classes: int,
                         config: FinetuneConfig) -> np.ndarray:
    """Out-of-fold probabilities of heads on the frozen embeddings (eval mode: BatchNorm statistics untouched)."""
    from .filter import _head_of, embed_windows, oof_probabilities

    n = len(y)
    if n < 2:
        return np.full((n, num_classes), 1.0 / num_classes)
    fc = config.filter
    z = embed_windows(model, xn, device=config.train.device)
    return oof_probabilities(z, y, num_classes, n_folds=min(fc.n_folds, n), seed=config.train.seed,
                             head=_head_of(model, num_classes), steps=fc.probe_steps, lr=fc.probe_lr,
                             weight_decay=fc.probe_weight_decay, device=config.train.device)
