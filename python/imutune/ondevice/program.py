"""Export the FilterLoss training program ``model_train.pte`` (ExecuTorch training extension).

The program's ``forward`` takes ``(x, labels, weights)`` -- windows of shape (B, C, T) float32
(normalized), labels (B,) int64 and per-sample FilterLoss weights (B,) float32 -- and returns
``(loss, logits)`` followed, for :class:`executorch.extension.training.TrainingModule`, by the
gradients and the current values of the trainable parameters. ``loss`` is FilterLoss (Han, Zhong,
Feng, ICCC 2025, arXiv 2602.07772, Sec. III-B): ``sum_i w_i CE_i / sum_i w_i``; the weights are an
input, so the quality filter can run on the device. B is static (the batch the program was exported
with, 16 by default).

Flow (checked with torch 2.13 and executorch 1.5.1): the loss-returning module is captured with
``torch.export.export``; ``torch.export.experimental._export_forward_backward(ep,
joint_loss_index=0)`` adds the backward; ``to_edge_transform_and_lower`` (XNNPACK partitioner,
``EdgeCompileConfig(_check_ir_validity=False)``, which the joint graph's ops need) and
``to_executorch`` give the program. The model is first made training-friendly
(:func:`imutune.ondevice.model.training_net`).

Trainable sets (:data:`TRAINABLE_VARIANTS`):

* ``"head"`` -- the classifier head only;
* ``"last-block"`` -- every filter of the last residual block plus the head
  (:func:`imutune.personalize.selective.last_block_selection`);
* ``"rows"`` -- every conv weight, batch-norm scale/shift and the head; the on-device loop
  (:mod:`imutune.ondevice.loop`) zeroes the gradient rows of the filters it did not select before
  every optimizer step, so unselected rows keep their bits (as the server-side selective path does,
  Borda-ranked filters after arXiv 1904.03949). The program does not depend on which rows are chosen:
  the device ranks its own filters on its own data.

The program embeds, as the constant method ``imutune_training_metadata``, a JSON object
(:func:`read_program_metadata`): ``format``, ``version``, ``variant``, ``batch_size``, ``in_channels``,
``window_samples``, ``num_classes``, ``trainable`` (state-dict name, program name and shape of each
trainable parameter, in program order), ``base_sha256`` (:func:`imutune.personalize.patch.state_hash`
of the model it was exported from), ``loss``, ``inputs``, ``outputs``, ``delegate`` and, when a manifest
is given, ``contract`` (:func:`imutune.deploy.export.artifact_contract`).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .. import _validation as V
from .._io import sha256_bytes, sha256_file, write_bytes_atomic
from ..deploy.manifest import Manifest, load_manifest, manifest_for
from ..personalize.patch import state_hash
from ..personalize.selective import Selection, conv_layers, last_block_selection
from ..train.losses import FilterLoss
from .model import TrainingNet, state_key, trainable_entries, training_net

__all__ = ["TRAINABLE_VARIANTS", "TRAIN_ARTIFACT", "PROGRAM_FORMAT", "PROGRAM_VERSION", "METADATA_METHOD",
           "TrainingProgram", "variant_selection", "export_training_program", "read_program_metadata",
           "write_training_program", "LossProgram"]

#: Trainable sets a training program can be exported with (module docstring).
TRAINABLE_VARIANTS = ("head", "last-block", "rows")
#: File name of the training program next to ``model.pte``.
TRAIN_ARTIFACT = "model_train.pte"
PROGRAM_FORMAT = "imutune-training-program"
PROGRAM_VERSION = 1
#: Constant method holding the program's JSON metadata.
METADATA_METHOD = "imutune_training_metadata"
#: Program delegates: XNNPACK (default) or None (portable kernels only).
PROGRAM_DELEGATES = ("xnnpack", None)


class LossProgram(nn.Module):
    """``(x (B, C, T), labels (B,), weights (B,)) -> (FilterLoss, logits (B, K))``."""

    def __init__(self, net: TrainingNet) -> None:
        super().__init__()
        self.net = net
        self.loss = FilterLoss(check_weights=False)   # data-dependent checks cannot be exported

    def forward(self, x: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor):
        logits = self.net(x)
        return self.loss(logits, labels, weights), logits.detach()


@dataclass(frozen=True, eq=False)
class TrainingProgram:
    """An exported training program: ``buffer`` (the ``.pte`` bytes) and its embedded ``metadata``."""

    buffer: bytes
    metadata: dict = field(default_factory=dict)

    @property
    def trainable(self) -> list[str]:
        """State-dict names of the trainable parameters, in program order."""
        return [t["name"] for t in self.metadata["trainable"]]


def variant_selection(model: nn.Module, variant: str) -> Selection:
    """The :class:`~imutune.personalize.selective.Selection` (whole tensors) behind a trainable variant.

    Raises
    ------
    ValueError
        If ``variant`` is not one of :data:`TRAINABLE_VARIANTS` or the model has no conv layer.
    """
    V.check_choice("trainable variant", variant, TRAINABLE_VARIANTS)
    if variant == "head":
        return Selection({}, ("head",))
    if variant == "last-block":
        return last_block_selection(model)
    layers = conv_layers(model)
    if not layers:
        raise ValueError("the model has no Conv1d layer; trainable variant 'rows' needs conv filters")
    return Selection({l.name: np.ones(l.n_filters, bool) for l in layers}, ("head",))


def export_training_program(model: nn.Module, example_windows: Any, *, variant: str = "last-block",
                            batch_size: int = 16, delegate: str | None = "xnnpack",
                            manifest: Manifest | None = None) -> TrainingProgram:
    """Export the FilterLoss training program of ``model`` (module docstring).

    Parameters
    ----------
    model : nn.Module
        A 1-D ResNet (:mod:`imutune.models.resnet1d`) mapping (N, C, T) float32 to logits (N, K); not
        modified. Its current weights are the program's initial weights.
    example_windows : np.ndarray or torch.Tensor
        Array of shape (N, C, T), float32, normalized, N >= 1; the first ``batch_size`` (repeated if
        fewer) trace the program and check the rewrite.
    variant : {"head", "last-block", "rows"}
        Trainable set (:data:`TRAINABLE_VARIANTS`).
    batch_size : int
        B, the program's static batch, >= 2.
    delegate : {"xnnpack", None}
        XNNPACK delegation of the joint graph, or portable kernels only.
    manifest : Manifest, optional
        Its preprocessing contract is embedded in the metadata.

    Returns
    -------
    TrainingProgram

    Raises
    ------
    ValueError
        If an argument is invalid, or the model cannot be made training-friendly (a max-pool after the
        first trainable layer: ExecuTorch 1.5.1, issue #21686) -- see
        :func:`imutune.ondevice.model.training_net`.
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    V.check_int_at_least("batch_size", batch_size, 2)
    if delegate not in PROGRAM_DELEGATES:
        raise ValueError(f"delegate must be one of {list(PROGRAM_DELEGATES)}, got {delegate!r}")
    x = V.check_windows("example_windows", example_windows, in_channels=getattr(model, "in_channels", None),
                        finite=True)
    if x.shape[0] == 0:
        raise ValueError("example_windows is empty; expected at least one normalized window (N, C, T)")
    if manifest is not None and not isinstance(manifest, Manifest):
        raise ValueError(f"manifest must be an imutune.deploy.manifest.Manifest, got {type(manifest).__name__}")
    reps = -(-batch_size // x.shape[0])
    xb = torch.from_numpy(np.ascontiguousarray(np.concatenate([x] * reps)[:batch_size]))  # (N, C, T) -> (B, C, T)
    return _compute_program(model, xb, variant, delegate, manifest)


def _compute_program(model: nn.Module, xb: torch.Tensor, variant: str, delegate: str | None,
                     manifest: Manifest | None) -> TrainingProgram:
    from executorch.exir import EdgeCompileConfig, to_edge_transform_and_lower
    from torch.export.experimental import _export_forward_backward

    selection = variant_selection(model, variant)
    names = trainable_entries(model, selection)
    net = training_net(model, names, check_input=xb)
    prog = LossProgram(net).eval()
    k = int(getattr(model, "num_classes", 0)) or int(net(xb[:1]).shape[1])
    yb = torch.arange(xb.shape[0], dtype=torch.int64) % k
    wb = torch.ones(xb.shape[0], dtype=torch.float32)
    ep = torch.export.export(prog, (xb, yb, wb), strict=False)
    ep = _export_forward_backward(ep, joint_loss_index=0)
    params = {state_key(n.removeprefix("net.")): p for n, p in prog.named_parameters() if p.requires_grad}
    meta = {"format": PROGRAM_FORMAT, "version": PROGRAM_VERSION, "variant": variant,
            "batch_size": int(xb.shape[0]), "in_channels": int(xb.shape[1]), "window_samples": int(xb.shape[2]),
            "num_classes": k, "trainable": [{"name": n, "program_name": "net." + "body." + n,
                                             "shape": list(params[n].shape)} for n in names],
            "base_sha256": state_hash(model), "loss": "filterloss", "inputs": ["x", "labels", "weights"],
            "outputs": ["loss", "logits"], "delegate": delegate,
            "selection": {"modules": list(selection.modules), "filters": selection.summary()}}
    if manifest is not None:
        from ..deploy.export import artifact_contract

        meta["contract"] = artifact_contract(manifest, precision="fp32", delegate=delegate)
    blob = json.dumps(meta).encode("utf-8")
    constant_methods = {METADATA_METHOD: torch.frombuffer(bytearray(blob), dtype=torch.uint8).clone()}
    partitioner = None
    if delegate == "xnnpack":
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner

        partitioner = [XnnpackPartitioner()]
    edge = to_edge_transform_and_lower(ep, partitioner=partitioner, constant_methods=constant_methods,
                                       compile_config=EdgeCompileConfig(_check_ir_validity=False))
    return TrainingProgram(bytes(edge.to_executorch().buffer), meta)


def read_program_metadata(module: Any, *, source: str = "training program") -> dict:
    """The embedded metadata of a loaded training program.

    Parameters
    ----------
    module : executorch.extension.training.TrainingModule
        The loaded program.
    source : str
        Name of the file, for error messages.

    Raises
    ------
    ValueError
        If the program has no imutune metadata, it is not valid JSON or of another format/version.
    """
    try:
        raw = module.model.run_method(METADATA_METHOD, ())[0]
    except Exception as e:  # the pybinding raises RuntimeError for a missing method
        raise ValueError(f"{source} has no {METADATA_METHOD!r} method: it is not an imutune training program "
                         f"(export one with `imutune export-train`) ({type(e).__name__}: {e})") from e
    try:
        meta = json.loads(bytes(raw.numpy().astype(np.uint8)).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{source}: embedded metadata is not valid JSON ({e})") from e
    if not isinstance(meta, dict) or meta.get("format") != PROGRAM_FORMAT:
        raise ValueError(f"{source}: embedded metadata has format {meta.get('format') if isinstance(meta, dict) else meta!r}; "
                         f"expected {PROGRAM_FORMAT!r}")
    if meta.get("version") != PROGRAM_VERSION:
        raise ValueError(f"{source}: training program version {meta.get('version')!r}; this imutune reads "
                         f"version {PROGRAM_VERSION}")
    return meta


def write_training_program(bundle: Any, out_dir: str | os.PathLike, example_windows: Any, *,
                           variant: str = "last-block", batch_size: int = 16, delegate: str | None = "xnnpack",
                           tolerance: float = 1e-4) -> Manifest:
    """Export, check and write ``model_train.pte`` next to ``model.pte``; record it in ``manifest.json``.

    Writes into ``out_dir`` (atomically, file by file): ``model_train.pte``; the base model
    (``model.json`` + ``model.safetensors``, :func:`imutune.train.bundle.save_bundle`), which the device
    keeps to compute the patch's hashes; and ``manifest.json`` -- the existing one (from ``imutune
    export``) or a new one from the bundle -- with the entry ``artifacts["model_train.pte"] =
    {"sha256", "format": "pte", "precision": "fp32", "kind": "training", "variant", "delegate",
    "batch_size", "trainable": [{"name", "shape"}], "trainable_parameters", "base_sha256",
    "inference_sha256" (of ``model.pte`` when listed), "loss", "inputs", "outputs", "size_bytes",
    "parity_grad_max_abs_err"}``. Before writing, the program is loaded with the ExecuTorch training
    runtime and one ``forward_backward`` on the example batch is compared with eager PyTorch.

    Parameters
    ----------
    bundle : imutune.train.bundle.ModelBundle
        The inference model (the base of the user's patch).
    out_dir : path-like
        Export folder (created if missing).
    example_windows : np.ndarray
        Array of shape (N, C, T), float32, normalized (e.g. source windows).
    variant, batch_size, delegate
        See :func:`export_training_program`.
    tolerance : float
        Largest allowed gradient difference, relative to the largest eager gradient entry.

    Returns
    -------
    Manifest
        The manifest written.

    Raises
    ------
    ValueError
        If an argument is invalid, the export fails (see :func:`export_training_program`), or the gradient
        check exceeds ``tolerance`` (nothing is written then).
    """
    from executorch.extension.training import _load_for_executorch_for_training_from_buffer

    from ..train.bundle import save_bundle

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"out_dir {str(out)!r} is a file; expected a folder")
    man_path = out / "manifest.json"
    manifest = load_manifest(man_path) if man_path.exists() else manifest_for(bundle)
    model = bundle.model.cpu().eval()
    prog = export_training_program(model, example_windows, variant=variant, batch_size=batch_size,
                                   delegate=delegate, manifest=manifest)
    tm = _load_for_executorch_for_training_from_buffer(prog.buffer)
    xb = np.asarray(example_windows, np.float32)
    reps = -(-prog.metadata["batch_size"] // xb.shape[0])
    xb = torch.from_numpy(np.ascontiguousarray(np.concatenate([xb] * reps)[:prog.metadata["batch_size"]]))
    yb = torch.arange(xb.shape[0], dtype=torch.int64) % prog.metadata["num_classes"]
    wb = torch.linspace(0.1, 1.0, xb.shape[0])
    tm.forward_backward("forward", (xb, yb, wb))
    got = {state_key(k.removeprefix("net.")): v for k, v in tm.named_gradients().items()}
    ref = _eager_gradients(model, prog.trainable, xb, yb, wb)
    scale = max(float(max(g.abs().max() for g in ref.values())), 1e-12)
    err = max(float((got[k] - ref[k]).abs().max()) for k in ref) / scale
    if not err <= tolerance:
        raise ValueError(f"gradient check of {TRAIN_ARTIFACT} failed: max |ExecuTorch - PyTorch| gradient is "
                         f"{err:.3g} of the largest gradient; expected <= {tolerance:g}. Nothing was written to "
                         f"{str(out)!r}")
    entry: dict[str, Any] = {
        "sha256": sha256_bytes(prog.buffer), "format": "pte", "precision": "fp32", "kind": "training",
        "variant": variant, "delegate": delegate, "batch_size": prog.metadata["batch_size"],
        "trainable": [{"name": t["name"], "shape": t["shape"]} for t in prog.metadata["trainable"]],
        "trainable_parameters": int(sum(int(np.prod(t["shape"])) for t in prog.metadata["trainable"])),
        "base_sha256": prog.metadata["base_sha256"], "loss": "filterloss",
        "inputs": prog.metadata["inputs"], "outputs": prog.metadata["outputs"], "size_bytes": len(prog.buffer),
        "parity_grad_max_abs_err": err}
    if "model.pte" in manifest.artifacts and (out / "model.pte").is_file():
        entry["inference_sha256"] = sha256_file(out / "model.pte")
    save_bundle(bundle, out)
    write_bytes_atomic(out / TRAIN_ARTIFACT, prog.buffer)
    manifest = manifest.with_artifact(TRAIN_ARTIFACT, **entry)
    manifest.save(man_path)
    return manifest


def _eager_gradients(model: nn.Module, trainable: list[str], x: torch.Tensor, y: torch.Tensor,
                     w: torch.Tensor) -> dict[str, torch.Tensor]:
    net = training_net(model, trainable)
    loss = FilterLoss(check_weights=False)(net(x), y, w)
    loss.backward()
    return {state_key(k): p.grad.detach().clone() for k, p in net.named_parameters() if p.requires_grad}
