"""The on-device SGD loop: FilterLoss steps through ``model_train.pte`` with ExecuTorch's training runtime.

:class:`OnDeviceTrainer` loads a training program (:mod:`imutune.ondevice.program`) with
``executorch.extension.training`` (``_load_for_executorch_for_training_from_buffer``,
``TrainingModule.forward_backward``, ``named_gradients``, ``named_parameters``, ``get_sgd_optimizer``)
and takes SGD steps on batches of ``(windows, labels, weights)``. Before every optimizer step the
gradients are edited in Python, as the Kotlin ``TrainingModule``/``SGD`` pair allows too: weight decay
is added as ``g + weight_decay * p`` (the optimizer itself runs with weight decay 0), then each
row-selected parameter's gradient is multiplied by its 0/1 row mask. Unselected rows therefore get a
zero update (and a zero momentum buffer) and keep their bits.

:func:`eager_sgd` runs the same steps -- same initial weights, batches, loss weights, masks and
``torch.optim.SGD`` -- in eager PyTorch on the training-friendly twin; :func:`weight_parity` compares
the two (the acceptance check is 1e-5 relative after 50 steps).

Data order (:func:`batch_indices`): seeded permutations of the N windows, concatenated, cut into
``steps`` batches of the program's static batch size B (an epoch boundary may fall inside a batch;
N < B repeats windows).
"""
from __future__ import annotations

import os
import time
from typing import Mapping, Sequence

import numpy as np
import torch
from torch import nn

from .. import _validation as V
from ..personalize.selective import Selection, entry_masks
from .config import OnDeviceConfig
from .model import state_key, training_net
from .program import read_program_metadata

__all__ = ["OnDeviceConfig", "OnDeviceTrainer", "batch_indices", "eager_sgd", "weight_parity", "row_masks",
           "set_executorch_threads", "timed_steps"]


def set_executorch_threads(num_threads: int) -> int:
    """Size the ExecuTorch CPU threadpool (process-wide; used by XNNPACK). Call before loading a program:
    resizing it after an XNNPACK program was loaded crashed executorch 1.5.1 in our runs. Returns the size."""
    from executorch.extension.pybindings import portable_lib

    V.check_int_at_least("num_threads", num_threads, 1)
    if int(portable_lib._threadpool_get_thread_count()) != num_threads:
        portable_lib._unsafe_reset_threadpool(int(num_threads))
    return int(portable_lib._threadpool_get_thread_count())


def batch_indices(n: int, batch_size: int, steps: int, *, seed: int = 0) -> np.ndarray:
    """Window indices of every step: array of shape (steps, batch_size), int64 (module docstring)."""
    V.check_int_at_least("n", n, 1)
    V.check_int_at_least("batch_size", batch_size, 1)
    V.check_int_at_least("steps", steps, 1)
    rng = np.random.default_rng(seed)
    need = steps * batch_size
    perms = [rng.permutation(n) for _ in range(-(-need // n))]
    return np.concatenate(perms)[:need].reshape(steps, batch_size).astype(np.int64)  # (steps*B,) -> (steps, B)


def row_masks(model: nn.Module, selection: Selection, trainable: Sequence[str]) -> dict[str, torch.Tensor]:
    """0/1 float masks (full parameter shape) of the trainable parameters that ``selection`` trains only in part.

    Parameters fully trained by ``selection`` get no mask; a trainable parameter it does not train at all
    gets an all-zero mask.
    """
    masks = entry_masks(model, selection)
    params = dict(model.named_parameters())
    out = {}
    for k in trainable:
        m = masks.get(k, False)
        if m is True:
            continue
        p = params[k]
        out[k] = (torch.zeros_like(p) if m is False else m.to(p.dtype).expand_as(p).contiguous())
    return out


class OnDeviceTrainer:
    """A training program loaded in the ExecuTorch training runtime, stepping with its SGD.

    Parameters
    ----------
    program : bytes or path-like
        The ``.pte`` bytes or file (:mod:`imutune.ondevice.program`).
    lr, momentum, weight_decay : float
        SGD settings (see :class:`OnDeviceConfig`).
    masks : mapping, optional
        State-dict name -> 0/1 float tensor of the parameter's shape (:func:`row_masks`).
    num_threads : int
        ExecuTorch threadpool size, set before the program is loaded.

    Raises
    ------
    FileNotFoundError
        If ``program`` is a path that does not exist.
    ValueError
        If it is not an imutune training program, or a mask names an untrained parameter or has the wrong
        shape.
    """

    def __init__(self, program: bytes | str | os.PathLike, *, lr: float = 0.02, momentum: float = 0.9,
                 weight_decay: float = 0.0, masks: Mapping[str, torch.Tensor] | None = None,
                 num_threads: int = 1) -> None:
        from executorch.extension.training import _load_for_executorch_for_training_from_buffer

        source = "training program"
        if not isinstance(program, (bytes, bytearray)):
            p = V.check_file(program, what="training program")
            source, program = str(p), p.read_bytes()
        self.threads = set_executorch_threads(num_threads)
        # the runtime reads delegate segments from this buffer lazily, at the first call: keep it alive
        self._buffer = bytes(program)
        try:
            self.module = _load_for_executorch_for_training_from_buffer(self._buffer)
        except Exception as e:  # the pybinding raises RuntimeError on a corrupt or foreign file
            raise ValueError(f"{source} is not an ExecuTorch program ({type(e).__name__}: {e})") from e
        self.metadata = read_program_metadata(self.module, source=source)
        self.source = source
        self.batch_size = int(self.metadata["batch_size"])
        self.trainable = [t["name"] for t in self.metadata["trainable"]]
        shapes = {t["name"]: tuple(t["shape"]) for t in self.metadata["trainable"]}
        self.masks = {}
        for k, m in (masks or {}).items():
            if k not in shapes:
                raise ValueError(f"mask for {k!r}, which {source} does not train; it trains {self.trainable}")
            if tuple(m.shape) != shapes[k]:
                raise ValueError(f"mask for {k!r} has shape {tuple(m.shape)}; the parameter has {shapes[k]}")
            self.masks[k] = m.to(torch.float32)
        self.lr, self.momentum, self.weight_decay = float(lr), float(momentum), float(weight_decay)
        self._opt = None
        self._params: dict[str, torch.Tensor] | None = None
        self.steps_done = 0

    def forward_backward(self, x: np.ndarray, labels: np.ndarray, weights: np.ndarray) -> tuple[float, np.ndarray]:
        """Loss and gradients of one batch (no update): returns (loss, logits (B, K) float32)."""
        xb = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        yb = torch.from_numpy(np.ascontiguousarray(labels, dtype=np.int64))
        wb = torch.from_numpy(np.ascontiguousarray(weights, dtype=np.float32))
        if xb.shape[0] != self.batch_size or yb.shape != (self.batch_size,) or wb.shape != (self.batch_size,):
            raise ValueError(f"{self.source} takes batches of exactly {self.batch_size} windows, labels and weights; "
                             f"got shapes {tuple(xb.shape)}, {tuple(yb.shape)}, {tuple(wb.shape)}")
        out = self.module.forward_backward("forward", (xb, yb, wb))
        if self._params is None:
            params = {state_key(k.removeprefix("net.")): v for k, v in self.module.named_parameters().items()}
            want = {t["name"]: tuple(t["shape"]) for t in self.metadata["trainable"]}
            got = {k: tuple(v.shape) for k, v in params.items()}
            if got != want:
                raise ValueError(f"{self.source} returns parameters {got}, but its metadata lists {want}; the "
                                 "program's parameter outputs are misaligned (a delegate consumed some), so SGD "
                                 "would write to the wrong tensors. Re-export it with this imutune")
            self._params = params
        return float(out[0]), out[1].numpy()

    def step(self, x: np.ndarray, labels: np.ndarray, weights: np.ndarray) -> float:
        """One SGD step on a batch of shape (B, C, T) / (B,) / (B,); returns the batch's FilterLoss (before the step)."""
        from executorch.extension.training import get_sgd_optimizer

        loss, _ = self.forward_backward(x, labels, weights)
        grads = self.module.named_gradients()
        if self._opt is None:
            self._opt = get_sgd_optimizer(self.module.named_parameters(), self.lr, self.momentum, 0.0, 0.0, False)
        params = self.module.named_parameters()
        for k, g in grads.items():
            name = state_key(k.removeprefix("net."))
            if self.weight_decay:
                g.add_(params[k], alpha=self.weight_decay)
            m = self.masks.get(name)
            if m is not None:
                g.mul_(m)
        self._opt.step(grads)
        self.steps_done += 1
        return loss

    def parameters(self) -> dict[str, torch.Tensor]:
        """Current trainable weights by state-dict name (copies; available after the first step)."""
        if self._params is None:
            raise ValueError("the program's parameters are available after the first step")
        return {k: v.detach().clone() for k, v in self._params.items()}


def eager_sgd(model: nn.Module, trainable: Sequence[str], x: np.ndarray, labels: np.ndarray, weights: np.ndarray,
              batches: np.ndarray, *, lr: float, momentum: float = 0.0, weight_decay: float = 0.0,
              masks: Mapping[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """The on-device steps in eager PyTorch (``torch.optim.SGD`` on the training-friendly twin).

    Parameters
    ----------
    model : nn.Module
        The base model (not modified).
    trainable : sequence of str
        State-dict names that train (the program's).
    x, labels, weights : np.ndarray
        Arrays of shape (N, C, T) float32, (N,) int64 and (N,) float32.
    batches : np.ndarray
        Array of shape (steps, B), int64: :func:`batch_indices`.
    lr, momentum, weight_decay, masks
        As :class:`OnDeviceTrainer`.

    Returns
    -------
    dict
        State-dict name -> trained weights.
    """
    net = training_net(model, trainable)
    params = {state_key(k): p for k, p in net.named_parameters() if p.requires_grad}
    opt = torch.optim.SGD(list(params.values()), lr=lr, momentum=momentum, dampening=0.0, weight_decay=0.0)
    from ..train.losses import FilterLoss

    loss_fn = FilterLoss(check_weights=False)
    xt, yt, wt = (torch.from_numpy(np.ascontiguousarray(a)) for a in
                  (np.asarray(x, np.float32), np.asarray(labels, np.int64), np.asarray(weights, np.float32)))
    for idx in np.asarray(batches, np.int64):
        it = torch.from_numpy(idx)
        opt.zero_grad(set_to_none=True)
        loss_fn(net(xt[it]), yt[it], wt[it]).backward()
        with torch.no_grad():
            for k, p in params.items():
                if weight_decay:
                    p.grad.add_(p, alpha=weight_decay)
                if masks and k in masks:
                    p.grad.mul_(masks[k])
        opt.step()
    return {k: p.detach().clone() for k, p in params.items()}


def weight_parity(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> float:
    """Largest relative weight difference: ``max_k max|a_k - b_k| / max(max|b_k|, 1e-12)`` over shared names.

    Raises
    ------
    ValueError
        If the two have different names or shapes.
    """
    if set(a) != set(b):
        raise ValueError(f"weight sets differ: only in the first {sorted(set(a) - set(b))}, only in the second "
                         f"{sorted(set(b) - set(a))}")
    worst = 0.0
    for k in a:
        if tuple(a[k].shape) != tuple(b[k].shape):
            raise ValueError(f"weight {k!r} has shapes {tuple(a[k].shape)} and {tuple(b[k].shape)}")
        d = float((a[k].double() - b[k].double()).abs().max()) if a[k].numel() else 0.0
        worst = max(worst, d / max(float(b[k].abs().max()) if b[k].numel() else 0.0, 1e-12))
    return worst


def timed_steps(trainer: OnDeviceTrainer, x: np.ndarray, labels: np.ndarray, weights: np.ndarray,
                batches: np.ndarray) -> tuple[list[float], list[float]]:
    """Run ``trainer.step`` over ``batches``; returns (losses, per-step wall times in ms)."""
    losses, times = [], []
    for idx in batches:
        t0 = time.perf_counter()
        losses.append(trainer.step(x[idx], labels[idx], weights[idx]))
        times.append(1000.0 * (time.perf_counter() - t0))
    return losses, times
