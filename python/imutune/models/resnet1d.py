"""Model registry: 1D ResNets for (N, C, T) sensor windows.

``resnet1d34`` is ResNet-34 (He et al., "Deep Residual Learning for Image
Recognition", CVPR 2016, Table 1: basic blocks [3, 4, 6, 3], widths 64-512)
with every 2-D operation replaced by its 1-D counterpart; it is the backbone of
the FilterLoss paper (Han, Zhong, Feng, ICCC 2025, Sec. III). ``mobilecnn1d``
is the phone-size default: the same block design, three stages of one block,
under 100k parameters.

All models map ``x`` of shape (N, C, T), float32 (normalized windows) to
``logits`` of shape (N, K). Conv layers are followed by batch norm, so a
filter is one output channel of a ``Conv1d`` plus its ``BatchNorm1d`` entries
(used by selective fine-tuning).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Callable, Sequence

import torch
from torch import nn

__all__ = ["ResNet1dConfig", "ResNet1d", "create_model", "list_models", "default_config",
           "register_model", "replace_head", "adapt_input_channels", "count_parameters", "TimeMean", "TrainFriendlyResNet1d",
           "MultiHead"]


@dataclass(frozen=True)
class ResNet1dConfig:
    """Architecture of a 1-D ResNet."""

    layers: tuple[int, ...] = (3, 4, 6, 3)       # basic blocks per stage
    widths: tuple[int, ...] = (64, 128, 256, 512)  # output channels per stage
    stem_width: int = 64                         # channels of the stem conv
    stem_kernel: int = 7                         # stem conv kernel size in samples
    stem_stride: int = 2                         # stem conv stride in samples
    stem_pool: bool = True                       # max-pool (k=3, s=2) after the stem, as in ResNet
    kernel_size: int = 3                         # kernel size of block convs in samples
    dropout: float = 0.0                         # dropout before the classifier head

    def __post_init__(self) -> None:
        if len(self.layers) != len(self.widths) or not self.layers:
            raise ValueError(f"layers {self.layers} and widths {self.widths} must be non-empty and of equal length")


class BasicBlock1d(nn.Module):
    """Two 3-tap convs with batch norm and an identity (or 1x1 projection) shortcut."""

    def __init__(self, c_in: int, c_out: int, stride: int, kernel_size: int) -> None:
        super().__init__()
        pad = kernel_size // 2
        self.conv1 = nn.Conv1d(c_in, c_out, kernel_size, stride, pad, bias=False)
        self.bn1 = nn.BatchNorm1d(c_out)
        self.conv2 = nn.Conv1d(c_out, c_out, kernel_size, 1, pad, bias=False)
        self.bn2 = nn.BatchNorm1d(c_out)
        self.relu = nn.ReLU(inplace=False)
        self.downsample = None
        if stride != 1 or c_in != c_out:
            self.downsample = nn.Sequential(nn.Conv1d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm1d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ResNet1d(nn.Module):
    """1-D ResNet classifier: (N, C, T) float32 -> logits (N, K)."""

    def __init__(self, in_channels: int, num_classes: int, config: ResNet1dConfig = ResNet1dConfig()) -> None:
        super().__init__()
        if in_channels < 1 or num_classes < 2:
            raise ValueError(f"in_channels must be >= 1 and num_classes >= 2, got {in_channels}, {num_classes}")
        self.config = config
        self.in_channels = in_channels
        self.num_classes = num_classes
        c = config.stem_width
        stem: list[nn.Module] = [nn.Conv1d(in_channels, c, config.stem_kernel, config.stem_stride,
                                           config.stem_kernel // 2, bias=False), nn.BatchNorm1d(c), nn.ReLU()]
        if config.stem_pool:
            stem.append(nn.MaxPool1d(3, 2, 1))
        self.stem = nn.Sequential(*stem)
        stages = []
        for i, (n, w) in enumerate(zip(config.layers, config.widths)):
            blocks = []
            for j in range(n):
                stride = 2 if (j == 0 and i > 0) else 1
                blocks.append(BasicBlock1d(c, w, stride, config.kernel_size))
                c = w
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool1d(1)
        self.dropout = nn.Dropout(config.dropout)
        self.head = nn.Linear(c, num_classes)
        self.embedding_dim = c

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features: (N, C, T) -> (N, D)."""
        h = self.stages(self.stem(x))          # (N, C, T) -> (N, D, T')
        return self.pool(h).flatten(1)         # (N, D, T') -> (N, D)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.embed(x)))


_REGISTRY: dict[str, tuple[Callable[..., nn.Module], ResNet1dConfig]] = {}


def register_model(name: str, config: ResNet1dConfig, *, cls: Callable[..., nn.Module] | None = None) -> None:
    """Register a ResNet1d configuration under ``name`` (built by ``cls``, default :class:`ResNet1d`)."""
    _REGISTRY[name] = (ResNet1d if cls is None else cls, config)


class TimeMean(nn.Module):
    """Mean over the last (time) axis, kept: (N, D, T') -> (N, D, 1), or (N, D, 1, T') -> (N, D, 1, 1).

    The same numbers as ``AdaptiveAvgPool1d(1)``, but a plain ``mean`` whose backward every runtime has
    (ExecuTorch 1.5.1 has no ``avg_pool2d`` backward kernel) and that works on both the 1-D and the
    rewritten 2-D layout."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=-1, keepdim=True)


class TrainFriendlyResNet1d(ResNet1d):
    """A :class:`ResNet1d` whose training graph runs on ExecuTorch's training extension.

    Same modules, parameter names and state dict as :class:`ResNet1d` of the same config (weights move
    freely between the two), with the global pool a :class:`TimeMean` and no max-pool (its backward
    drifts in ExecuTorch 1.5.1, pytorch/executorch issue #21686). Batch norm runs in eval mode on the
    device (:mod:`imutune.ondevice`), which also rewrites Conv1d into 2-D form for the export.

    Raises
    ------
    ValueError
        If the config asks for the stem max-pool.
    """

    def __init__(self, in_channels: int, num_classes: int, config: ResNet1dConfig = ResNet1dConfig()) -> None:
        if config.stem_pool:
            raise ValueError("a training-friendly model cannot have stem_pool=True (max-pool backward is wrong in "
                             "ExecuTorch 1.5.1, issue #21686); use a strided stem instead")
        super().__init__(in_channels, num_classes, config)
        self.pool = TimeMean()


register_model("resnet1d34", ResNet1dConfig())
register_model("resnet1d18", ResNet1dConfig(layers=(2, 2, 2, 2)))
register_model("mobilecnn1d", ResNet1dConfig(layers=(1, 1, 1), widths=(32, 64, 96), stem_width=32,
                                             stem_kernel=7, stem_stride=2, stem_pool=False, dropout=0.1))
register_model("tinycnn1d", ResNet1dConfig(layers=(1, 1), widths=(8, 16), stem_width=8, stem_kernel=5,
                                           stem_stride=2, stem_pool=False))
# training-friendly twins (same weights; see TrainFriendlyResNet1d and imutune.ondevice)
register_model("mobilecnn1d-train", _REGISTRY["mobilecnn1d"][1], cls=TrainFriendlyResNet1d)
register_model("tinycnn1d-train", _REGISTRY["tinycnn1d"][1], cls=TrainFriendlyResNet1d)


def list_models() -> list[str]:
    """Names in the registry."""
    return sorted(_REGISTRY)


def default_config(name: str) -> ResNet1dConfig:
    """The registered default config of ``name``."""
    if name not in _REGISTRY:
        raise ValueError(f"model_name {name!r} is not registered; expected one of {list_models()}")
    return _REGISTRY[name][1]


def create_model(name: str, *, in_channels: int, num_classes: int, **overrides) -> ResNet1d:
    """Build a registered model.

    Parameters
    ----------
    name : str
        One of :func:`list_models` (``"mobilecnn1d"``, ``"resnet1d34"``, ...).
    in_channels : int
        C, sensor channels.
    num_classes : int
        K, classes.
    **overrides
        Fields of :class:`ResNet1dConfig` to change.

    Raises
    ------
    ValueError
        If ``name`` is unknown or an override is not a config field.
    """
    cfg = default_config(name)
    bad = [k for k in overrides if k not in asdict(cfg)]
    if bad:
        raise ValueError(f"unknown model config fields {bad}; expected some of {list(asdict(cfg))}")
    cfg = replace(cfg, **{k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()})
    cls = _REGISTRY[name][0]
    return cls(in_channels, num_classes, cfg)


def replace_head(model: ResNet1d, num_classes: int) -> ResNet1d:
    """Give ``model`` a new, freshly initialised classifier head with ``num_classes`` outputs (in place)."""
    model.head = nn.Linear(model.embedding_dim, num_classes)
    model.num_classes = num_classes
    return model


def adapt_input_channels(model: ResNet1d, keep_idx: Sequence[int]) -> ResNet1d:
    """Give ``model`` an input layer for a subset of its input channels (in place).

    The stem conv (the only layer that sees the raw channels) is replaced by a
    ``Conv1d`` with ``len(keep_idx)`` input channels whose weight is the
    pretrained ``weight[:, keep_idx, :]`` (shape (F, C', k); same filters F,
    kernel, stride, padding; the bias, if the conv has one, is kept). Nothing
    else changes, so every pretrained filter keeps its response to the kept
    channels.

    Rescaling: none. On normalized input (mean 0 per channel) dropping a
    channel's slice computes exactly what the full model computes when that
    channel is fed its training mean, i.e. the adapted model starts as the
    pretrained model with the missing channels mean-imputed, and the stem
    batch norm that follows re-estimates its statistics during fine-tuning.
    A dropout-style factor C / C' would be right only for a model trained
    with random channel dropout; for this model it would change the kept
    channels' contribution and the stem batch norm's input scale.

    Parameters
    ----------
    model : ResNet1d
        A registry model (:func:`create_model`), taking (N, C, T) input.
    keep_idx : sequence of int
        C' distinct indices into the model's C input channels, in the order
        of the new input (the adapted model takes (N, C', T)).

    Returns
    -------
    ResNet1d
        ``model`` itself, with ``in_channels == len(keep_idx)``.

    Raises
    ------
    ValueError
        If ``keep_idx`` is empty, repeats an index, or an index is outside
        ``[0, C)``, or the model has no ``stem[0]`` ``Conv1d`` (groups=1).
    """
    conv = model.stem[0] if isinstance(getattr(model, "stem", None), nn.Sequential) and len(model.stem) else None
    if not isinstance(conv, nn.Conv1d) or conv.groups != 1:
        raise ValueError(f"adapt_input_channels needs a registry ResNet1d whose stem[0] is a Conv1d with "
                         f"groups=1; got {type(model).__name__}")
    idx = [int(i) for i in keep_idx]
    c = conv.in_channels
    if not idx or len(set(idx)) != len(idx) or any(not 0 <= i < c for i in idx):
        raise ValueError(f"keep_idx {idx} must be a non-empty list of distinct channel indices in [0, {c})")
    new = nn.Conv1d(len(idx), conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                    conv.groups, bias=conv.bias is not None, padding_mode=conv.padding_mode)
    new = new.to(device=conv.weight.device, dtype=conv.weight.dtype)
    with torch.no_grad():
        new.weight.copy_(conv.weight[:, idx, :])          # (F, C, k) -> (F, C', k)
        if conv.bias is not None:
            new.bias.copy_(conv.bias)
    new.train(conv.training)
    model.stem[0] = new
    model.in_channels = len(idx)
    return model


def count_parameters(model: nn.Module, *, trainable_only: bool = False) -> int:
    """Number of parameters (elements)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


class MultiHead(nn.Module):
    """A registry model with extra classifier heads on its embedding: (N, C, T) -> (N, K_0 + K_1 + ...).

    ``forward`` returns the model's own head's logits (K_0 = ``model.num_classes``) followed by every extra
    head's (``splits`` gives the sizes), all computed from the same ``model.dropout(model.embed(x))``, so the
    shared backbone gets the gradients of every head. Used by multi-head rehearsal
    (:func:`imutune.personalize.finetune.finetune` with a new class set): head 0 is the target's, head 1
    the source's. ``model`` is held, not copied: training the wrapper trains it.
    """

    def __init__(self, model: ResNet1d, heads: Sequence[nn.Linear]) -> None:
        super().__init__()
        d = model.embedding_dim
        for h in heads:
            if not isinstance(h, nn.Linear) or h.in_features != d:
                raise ValueError(f"every extra head must be an nn.Linear with in_features {d} (the model's "
                                 f"embedding), got {h!r}")
        self.model = model
        self.heads = nn.ModuleList(heads)
        self.in_channels = model.in_channels
        self.splits = (model.num_classes, *(h.out_features for h in heads))
        self.num_classes = sum(self.splits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.model.dropout(self.model.embed(x))                                 # (N, C, T) -> (N, D)
        return torch.cat([self.model.head(z), *(h(z) for h in self.heads)], dim=1)  # (N, D) -> (N, sum K)
