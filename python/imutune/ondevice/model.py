"""The training-friendly form of a 1-D ResNet: the eager model whose training graph ExecuTorch runs.

:func:`training_net` turns a :class:`imutune.models.resnet1d.ResNet1d` (any registered model; the
``*-train`` twins such as ``mobilecnn1d-train`` already have the right pool) into a
:class:`TrainingNet` with the same weights and the same logits, built only from ops whose backward
ExecuTorch 1.5.1 runs correctly and fast:

* the input (N, C, T) is unsqueezed to (N, C, 1, T) and every frozen ``Conv1d`` becomes a
  ``Conv2d`` with a (1, k) kernel (:func:`imutune.deploy.export.conv1d_as_conv2d`), so the frozen
  trunk is one XNNPACK partition;
* every conv from the first trainable layer on becomes a :class:`ConvAsMatmul` (zero-pad by
  concatenation, k strided slices, one matrix product). ExecuTorch 1.5.1 has a
  ``convolution_backward`` only for 2-D convs and only on its portable kernels, which made a batch-16
  step of ``mobilecnn1d`` (last block + head) take about 45 ms on one core of this host; as slices and a
  matmul the whole backward is XNNPACK ``linear``/``mm`` work (about 4 ms). A ``constant_pad_nd`` pad
  cannot be used: its backward is a negative pad, which the 1.5.1 portable kernel rejects;
* ``AdaptiveAvgPool1d(1)`` becomes :class:`imutune.models.resnet1d.TimeMean` (ExecuTorch 1.5.1 has
  no ``avg_pool2d`` backward kernel);
* batch norm is in eval mode (frozen statistics; its scale and shift may train): train-mode batch
  norm does not export to a joint graph;
* a max-pool after the first trainable layer is refused: its backward gives wrong, drifting gradients
  in ExecuTorch 1.5.1 (pytorch/executorch issue #21686). Max-pools in the frozen trunk are fine.

Parameter names of the :class:`TrainingNet` are ``"body." + state-dict key`` and every parameter keeps
its state-dict shape (a :class:`ConvAsMatmul` weight is (O, I, k) as in ``Conv1d``; a frozen
``Conv2d`` weight is (O, I, 1, k) but never trains), so :func:`state_key` maps them back.
"""
from __future__ import annotations

import copy
from typing import Sequence

import torch
from torch import nn

from ..personalize.selective import Selection, entry_masks

__all__ = ["ConvAsMatmul", "TrainingNet", "training_net", "trainable_entries", "state_key", "BODY_PREFIX", "AffineBatchNorm"]

#: Prefix of every parameter name of a :class:`TrainingNet` (and so of the training program's names).
BODY_PREFIX = "body."


class ConvAsMatmul(nn.Module):
    """A (1, k) convolution on (N, C, 1, T) written as slices and one matrix product.

    ``out[n, o, 0, t] = sum_{c, j} W[o, c, j] * xpad[n, c, 0, t * stride + j] (+ b[o])``, exactly a
    ``Conv1d`` with ``padding`` zeros on both sides (dilation 1, groups 1).

    Parameters
    ----------
    conv : nn.Conv1d or nn.Conv2d
        Source layer; its weight (as (O, I, k)) and bias are copied.
    """

    def __init__(self, conv: nn.Module) -> None:
        super().__init__()
        k = conv.kernel_size[-1]
        if conv.groups != 1 or conv.dilation[-1] != 1 or isinstance(conv.padding, str) or conv.padding_mode != "zeros":
            raise ValueError(f"ConvAsMatmul supports groups=1, dilation=1 and numeric zero padding; got groups="
                             f"{conv.groups}, dilation={conv.dilation}, padding={conv.padding!r}")
        w = conv.weight.detach().reshape(conv.out_channels, conv.in_channels, k)  # (O, I[, 1], k) -> (O, I, k)
        self.weight = nn.Parameter(w.clone(), requires_grad=conv.weight.requires_grad)
        self.bias = None if conv.bias is None else nn.Parameter(conv.bias.detach().clone(),
                                                                requires_grad=conv.bias.requires_grad)
        self.kernel_size, self.stride, self.padding = int(k), int(conv.stride[-1]), int(conv.padding[-1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, _, t = x.shape
        k, s, p = self.kernel_size, self.stride, self.padding
        if p:
            z = x.new_zeros((n, c, 1, p))
            x = torch.cat([z, x, z], dim=-1)                             # (N, C, 1, T) -> (N, C, 1, T + 2p)
        t_out = (t + 2 * p - k) // s + 1
        cols = torch.stack([x[..., j:j + s * (t_out - 1) + 1:s] for j in range(k)], dim=-1)  # -> (N, C, 1, T', k)
        cols = cols.permute(0, 2, 3, 1, 4).reshape(n * t_out, c * k)     # (N, C, 1, T', k) -> (N*T', C*k)
        out = nn.functional.linear(cols, self.weight.reshape(self.weight.shape[0], c * k), self.bias)  # (N*T', O)
        return out.reshape(n, 1, t_out, -1).permute(0, 3, 1, 2)          # (N*T', O) -> (N, O, 1, T')


class AffineBatchNorm(nn.Module):
    """An eval-mode batch norm on (N, F, 1, T) as explicit per-channel multiply-add.

    ``y = x * (weight / sqrt(running_var + eps)) + (bias - running_mean * weight / sqrt(running_var + eps))``,
    the numbers of ``BatchNorm2d`` in eval mode, with ``weight`` and ``bias`` trainable and the statistics
    frozen buffers. Used in the trainable path because the XNNPACK partitioner of executorch 1.5.1 folds a
    ``_native_batch_norm_legit_no_training`` node's scale and shift into its delegate: the program then
    stops returning them as parameters and the SGD step writes to the wrong tensors.
    """

    def __init__(self, bn: nn.Module) -> None:
        super().__init__()
        if not bn.affine or bn.running_var is None:
            raise ValueError("AffineBatchNorm needs an affine batch norm with running statistics")
        self.weight = nn.Parameter(bn.weight.detach().clone(), requires_grad=bn.weight.requires_grad)
        self.bias = nn.Parameter(bn.bias.detach().clone(), requires_grad=bn.bias.requires_grad)
        self.register_buffer("running_mean", bn.running_mean.detach().clone())
        self.register_buffer("running_var", bn.running_var.detach().clone())
        self.eps = float(bn.eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        inv = torch.rsqrt(self.running_var + self.eps)
        scale = self.weight * inv
        shift = self.bias - self.running_mean * scale
        return x * scale.reshape(1, -1, 1, 1) + shift.reshape(1, -1, 1, 1)   # (F,) -> (1, F, 1, 1)


class TrainingNet(nn.Module):
    """(N, C, T) float32 -> logits (N, K): the 2-D, training-friendly body of a 1-D ResNet."""

    def __init__(self, body: nn.Module) -> None:
        super().__init__()
        self.body = body

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x.unsqueeze(2))                                 # (N, C, T) -> (N, C, 1, T)


def state_key(name: str) -> str:
    """State-dict key of a :class:`TrainingNet` parameter name (``"body.head.weight"`` -> ``"head.weight"``)."""
    return name[len(BODY_PREFIX):] if name.startswith(BODY_PREFIX) else name


def trainable_entries(model: nn.Module, selection: Selection) -> list[str]:
    """State-dict keys of the *parameters* (not buffers) that ``selection`` lets train, in module order."""
    masks = entry_masks(model, selection)
    return [k for k, _ in model.named_parameters() if masks.get(k, False) is not False]


def training_net(model: nn.Module, trainable: Sequence[str], *, check_input: torch.Tensor | None = None) -> TrainingNet:
    """The training-friendly twin of ``model`` with exactly ``trainable`` parameters requiring grad.

    Parameters
    ----------
    model : nn.Module
        A 1-D conv net (a :class:`imutune.models.resnet1d.ResNet1d`); not modified.
    trainable : sequence of str
        State-dict keys of the parameters that train (e.g. :func:`trainable_entries`).
    check_input : torch.Tensor, optional
        Array of shape (N, C, T), float32: if given, the twin's logits must match ``model``'s (eval mode)
        to 1e-4 relative.

    Returns
    -------
    TrainingNet
        In eval mode (batch norm uses its running statistics).

    Raises
    ------
    ValueError
        If ``trainable`` is empty or names a non-parameter, a max- or average-pool comes after the first
        trainable layer (no correct backward in ExecuTorch 1.5.1), a conv cannot be rewritten, or the
        twin's logits differ from ``model``'s.
    """
    from ..deploy.export import conv1d_as_conv2d

    params = dict(model.named_parameters())
    wanted = list(dict.fromkeys(trainable))
    if not wanted:
        raise ValueError("trainable is empty; expected at least one parameter name such as 'head.weight'")
    bad = [k for k in wanted if k not in params]
    if bad:
        raise ValueError(f"trainable names {bad} are not parameters of the model; parameters are {list(params)}")
    m = copy.deepcopy(model).eval()
    for mod in m.modules():  # global average pools -> TimeMean (same numbers, plain mean backward)
        for name, c in list(mod.named_children()):
            if isinstance(c, nn.AdaptiveAvgPool1d) and c.output_size in (1, (1,)):
                from ..models.resnet1d import TimeMean

                setattr(mod, name, TimeMean())
    body = conv1d_as_conv2d(m)[1]     # conv1d_as_conv2d wraps as Sequential(Unsqueeze2d, model)
    body.eval()
    wanted_set = set(wanted)
    for k, p in body.named_parameters():
        p.requires_grad_(k in wanted_set)
    first = _first_trainable_module(body, wanted_set)
    seen = False
    for name, mod in list(body.named_modules()):
        if name == first:
            seen = True
        if seen and isinstance(mod, (nn.MaxPool1d, nn.MaxPool2d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d)):
            raise ValueError(f"layer {name!r} ({type(mod).__name__}) comes after the first trainable layer "
                             f"{first!r}: max-pool backward gives wrong gradients in ExecuTorch 1.5.1 (issue "
                             "#21686); train only layers after it, or use a model without max-pool such as "
                             "mobilecnn1d-train")
        if seen and isinstance(mod, (nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool2d)):
            raise ValueError(f"layer {name!r} ({type(mod).__name__}) comes after the first trainable layer "
                             f"{first!r}: ExecuTorch 1.5.1 has no avg_pool2d backward kernel; use a mean over time "
                             "(imutune.models.resnet1d.TimeMean)")
    _convs_to_matmul(body, first)
    net = TrainingNet(body).eval()
    names = {state_key(k) for k, p in net.named_parameters() if p.requires_grad}
    if names != wanted_set:
        raise ValueError(f"the training-friendly rewrite lost trainable parameters {sorted(wanted_set - names)}")
    if check_input is not None:
        with torch.no_grad():
            ref, got = model.eval()(check_input), net(check_input)
        scale = max(1.0, float(ref.abs().max()))
        if got.shape != ref.shape or not torch.allclose(got, ref, rtol=1e-4, atol=1e-5 * scale):
            raise ValueError(f"the training-friendly twin's logits differ from the model's by "
                             f"{float((got - ref).abs().max()):.3g}; the model has 1-D code the rewrite does "
                             "not cover")
    return net


def _first_trainable_module(body: nn.Module, wanted: set[str]) -> str:
    """Name of the first module (in module order) that owns a trainable parameter."""
    for name, mod in body.named_modules():
        own = [f"{name}.{pn}" if name else pn for pn, _ in mod.named_parameters(recurse=False)]
        if any(k in wanted for k in own):
            return name
    return ""


def _convs_to_matmul(body: nn.Module, first: str) -> None:
    """Replace every Conv2d at or after module ``first`` (in module order) by a :class:`ConvAsMatmul`."""
    order = [name for name, _ in body.named_modules()]
    start = order.index(first) if first in order else 0
    late = set(order[start:])
    for name, mod in list(body.named_modules()):
        for cname, c in list(mod.named_children()):
            full = f"{name}.{cname}" if name else cname
            if isinstance(c, nn.Conv2d) and full in late:
                setattr(mod, cname, ConvAsMatmul(c))
            elif isinstance(c, nn.BatchNorm2d) and full in late and c.affine and c.weight.requires_grad:
                setattr(mod, cname, AffineBatchNorm(c))
