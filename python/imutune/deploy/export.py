"""Export a trained model to ONNX and ExecuTorch, with a parity check.

The exporters return in-memory programs (as the ExecuTorch examples do);
:func:`write_exports` writes them atomically, reloads each file with the
backend the phone-class runtime uses, checks its outputs against eager torch,
and records the result in ``manifest.json``::

    model = create_model("mobilecnn1d", in_channels=6, num_classes=5).eval()
    manifest = write_exports(model, manifest, "export/run1", example_windows)

Model contract: a ``torch.nn.Module`` in eval mode mapping ``x`` of shape
(N, C, T), float32 (normalized windows, channel-first) to ``logits`` of shape
(N, K). The ONNX graph has input ``"x"`` and output ``"logits"`` with a
dynamic batch dimension; the ``.pte`` program has a static batch (batch 1 in
:func:`write_exports`, what the phone runs).

Variants :func:`write_exports` can write (``formats=``):

============== ====================== ========= ============================
variant        file                   precision engine
============== ====================== ========= ============================
``onnx``       ``model.onnx``         fp32      ONNX Runtime
``pte``        ``model.pte``          fp32      ExecuTorch, ``delegate``
``onnx-int8``  ``model_int8.onnx``    int8      ONNX Runtime (static, QDQ)
``pte-int8``   ``model_int8.pte``     int8      ExecuTorch + XNNPACK (PT2E)
``pte-portable`` ``model_portable.pte`` fp32    ExecuTorch portable kernels
============== ====================== ========= ============================

int8 variants are calibrated on ``calibration_windows`` (training windows;
see :mod:`imutune.deploy.quantize`).

XNNPACK graph rewrite: ExecuTorch lowers ``Conv1d`` as unsqueeze -> conv2d
-> squeeze, and ``MaxPool1d`` as a ``max_pool2d_with_indices`` that XNNPACK
does not take, which splits a 1-D ResNet into several delegate partitions
with layout conversions (NCHW <-> NHWC) around every conv. For the XNNPACK
variants the model is therefore first rewritten into the equivalent 2-D
model on (N, C, 1, T) (:func:`conv1d_as_conv2d`: ``Conv1d`` -> ``Conv2d``
with a (1, k) kernel, ``BatchNorm1d`` -> ``BatchNorm2d``, 1-D pools -> 2-D
pools, same weights); the whole network then becomes a single XNNPACK
partition. The rewrite is used only if its outputs match the original's on
the example input (else the original graph is exported); the manifest
entry records ``graph_rewrite``.

Every artifact embeds the manifest's preprocessing contract (channels,
classes, sample rate, window, layout, normalization, precision): ONNX in
``metadata_props`` (``imutune.*``), ``.pte`` as the constant method
``imutune_metadata``. :func:`imutune.deploy.backends.load_backend` compares it with
the manifest on load.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .. import _validation as V
from .._io import atomic_folder, sha256_file, write_bytes_atomic, write_json_atomic
from .manifest import Manifest

__all__ = ["export_onnx", "export_pte", "parity_max_abs_err", "write_exports", "conv1d_as_conv2d",
           "artifact_contract", "EXPORT_FORMATS", "EXPORT_VARIANTS", "ARTIFACT_NAMES", "PTE_DELEGATES",
           "PRECISIONS"]

#: Default formats of :func:`write_exports` (fp32).
EXPORT_FORMATS = ("onnx", "pte")
#: Every variant :func:`write_exports` understands (see the module docstring).
EXPORT_VARIANTS = ("onnx", "pte", "onnx-int8", "pte-int8", "pte-portable")
#: File name written for each variant.
ARTIFACT_NAMES = {"onnx": "model.onnx", "pte": "model.pte", "onnx-int8": "model_int8.onnx",
                  "pte-int8": "model_int8.pte", "pte-portable": "model_portable.pte"}
#: ``delegate`` values of :func:`export_pte` (None: portable kernels only).
PTE_DELEGATES = ("xnnpack", None)
#: ``precision`` values of :func:`export_pte`.
PRECISIONS = ("fp32", "int8")

INPUT_NAME = "x"
OUTPUT_NAME = "logits"


# --------------------------------------------------------------------------- validation


def _check_model(model: Any):
    import torch

    if not isinstance(model, torch.nn.Module):
        raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if model.training:
        raise ValueError("model is in training mode (batch norm / dropout would be exported in their "
                         "training behaviour); call model.eval() before exporting")
    return model


def _check_example(name: str, x: Any, *, in_channels: int | None = None, window_samples: int | None = None):
    """Require a float32 (N, C, T) tensor or array of finite values; return a float32 torch tensor."""
    import torch

    return torch.from_numpy(V.check_windows(name, x, in_channels=in_channels, window_samples=window_samples,
                                            finite=True))


# --------------------------------------------------------------------------- ONNX


def export_onnx(model: Any, example_input: Any, *, manifest: Manifest | None = None,
                dynamic_batch: bool = True):
    """Export ``model`` to a self-contained ONNX ``ModelProto``.

    Uses ``torch.onnx.export(..., dynamo=True)``; the graph has input ``"x"``
    (N, C, T) float32 and output ``"logits"`` (N, K) float32, and passes
    ``onnx.checker.check_model``. All weights are stored inline (no external
    data), so ``proto.SerializeToString()`` is the complete file.

    Parameters
    ----------
    model : torch.nn.Module
        In eval mode; maps (N, C, T) float32 to (N, K) logits.
    example_input : torch.Tensor or np.ndarray
        Array of shape (N, C, T), float32, used for tracing. C and T are baked
        into the graph.
    manifest : Manifest, optional
        If given, ``manifest.metadata_props()`` (``imutune.*`` keys, JSON
        values) is stored in the model's ``metadata_props``.
    dynamic_batch : bool, default True
        Make N a symbolic dimension named ``"batch"``; otherwise N is fixed to
        the example's batch size.

    Returns
    -------
    onnx.ModelProto

    Raises
    ------
    ValueError
        If ``model`` is not an eval-mode ``torch.nn.Module``, ``example_input``
        is not a finite float32 (N, C, T) array, or the exported graph fails
        the ONNX checker or holds external data.
    """
    _check_model(model)
    x = _check_example("example_input", example_input)
    if manifest is not None and not isinstance(manifest, Manifest):
        raise ValueError(f"manifest must be an imutune.deploy.manifest.Manifest, got {type(manifest).__name__}")
    return _compute_onnx(model, x, manifest, bool(dynamic_batch))


def _compute_onnx(model, x, manifest: Manifest | None, dynamic_batch: bool, precision: str = "fp32"):
    import onnx
    import torch
    from torch.export import Dim

    dynamic_shapes = None
    if dynamic_batch:
        # torch.export specialises dimensions of size 0/1; trace a symbolic
        # batch from at least two rows (the graph is the same for any N).
        if x.shape[0] == 1:
            x = x.repeat(2, 1, 1)
        dynamic_shapes = ({0: Dim("batch", min=1)},)
    program = torch.onnx.export(model, (x,), dynamo=True, input_names=[INPUT_NAME],
                                output_names=[OUTPUT_NAME], dynamic_shapes=dynamic_shapes,
                                external_data=False, verbose=False)
    proto = program.model_proto
    if _has_external_data(proto.graph):
        raise ValueError("exported ONNX graph stores tensors as external data; expected a self-contained model")
    if manifest is not None:
        import json

        existing = {p.key for p in proto.metadata_props}
        props = {f"imutune.{k}": json.dumps(v) for k, v in artifact_contract(manifest, precision=precision).items()}
        for key, value in props.items():
            if key in existing:
                continue
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, value
    try:
        onnx.checker.check_model(proto, full_check=True)
    except onnx.checker.ValidationError as e:
        raise ValueError(f"exported ONNX graph fails onnx.checker: {e}") from e
    return proto


def _has_external_data(graph) -> bool:
    """True if any initializer or constant tensor of ``graph`` (or its subgraphs) is stored externally."""
    import onnx

    def ext(t) -> bool:
        return t.data_location == onnx.TensorProto.EXTERNAL

    if any(ext(t) for t in graph.initializer):
        return True
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t") and ext(attr.t):
                return True
            if any(ext(t) for t in attr.tensors):
                return True
            if attr.HasField("g") and _has_external_data(attr.g):
                return True
            if any(_has_external_data(g) for g in attr.graphs):
                return True
    return False


# --------------------------------------------------------------------------- ExecuTorch


def export_pte(model: Any, example_input: Any, *, delegate: str | None = "xnnpack", precision: str = "fp32",
               calibration_windows: Any = None, manifest: Manifest | None = None, rewrite_conv1d: bool | None = None):
    """Export ``model`` to an ExecuTorch program.

    ``torch.export.export`` -> ``executorch.exir.to_edge_transform_and_lower``
    (with ``XnnpackPartitioner`` when ``delegate="xnnpack"``) ->
    ``.to_executorch()``. The program's ``forward`` has the static input shape
    of ``example_input`` (batch included): pass a batch of 1 for the phone,
    which scores one window at a time. :class:`imutune.deploy.backends.PteBackend`
    loops larger batches over that size.

    Parameters
    ----------
    model : torch.nn.Module
        In eval mode; maps (N, C, T) float32 to (N, K) logits.
    example_input : torch.Tensor or np.ndarray
        Array of shape (N, C, T), float32; fixes the program's input shape.
    delegate : {"xnnpack", None}, default "xnnpack"
        ``"xnnpack"`` delegates supported ops to XNNPACK; None keeps every op
        on ExecuTorch's portable kernels (no delegation).
    precision : {"fp32", "int8"}, default "fp32"
        ``"int8"``: static PT2E quantization with the XNNPACK quantizer
        (:func:`imutune.deploy.quantize.quantize_pt2e_xnnpack`), calibrated on
        ``calibration_windows``; needs ``delegate="xnnpack"``.
    calibration_windows : np.ndarray, optional
        Array of shape (M, C, T), float32: normalized training windows;
        required for int8.
    manifest : Manifest, optional
        If given, its preprocessing contract (:func:`artifact_contract`) is
        embedded as the constant method ``imutune_metadata``.
    rewrite_conv1d : bool, optional
        Export the equivalent 2-D model (:func:`conv1d_as_conv2d`); default:
        True with XNNPACK, False for portable kernels. Skipped (with the
        original graph exported) if the rewrite's outputs differ.

    Returns
    -------
    executorch.exir.ExecutorchProgramManager
        ``.buffer`` holds the ``.pte`` bytes.

    Raises
    ------
    ValueError
        If ``model`` is not an eval-mode ``torch.nn.Module``, ``example_input``
        is not a finite float32 (N, C, T) array, ``delegate`` / ``precision``
        is unknown, int8 is asked for without XNNPACK or without calibration
        windows.
    """
    _check_model(model)
    x = _check_example("example_input", example_input)
    _check_pte_args(delegate, precision, calibration_windows, manifest)
    return _compute_pte(model, x, delegate, precision=precision, calibration=calibration_windows,
                        manifest=manifest, rewrite=rewrite_conv1d)[0]


def _check_pte_args(delegate, precision, calibration_windows, manifest) -> None:
    if delegate not in PTE_DELEGATES:
        raise ValueError(f"delegate must be one of {list(PTE_DELEGATES)}, got {delegate!r}")
    V.check_choice("precision", precision, PRECISIONS)
    if precision == "int8":
        if delegate != "xnnpack":
            raise ValueError("int8 .pte export quantizes for XNNPACK; use delegate='xnnpack' (portable kernels "
                             "have no int8 conv)")
        if calibration_windows is None:
            raise ValueError("int8 export needs calibration_windows: normalized training windows of shape "
                             "(N, C, T), float32")
    if manifest is not None and not isinstance(manifest, Manifest):
        raise ValueError(f"manifest must be an imutune.deploy.manifest.Manifest, got {type(manifest).__name__}")


def conv1d_as_conv2d(model: Any):
    """The equivalent 2-D model of a 1-D conv net, taking the same (N, C, T) input.

    A deep copy of ``model`` in which every ``Conv1d`` becomes a ``Conv2d``
    with a (1, k) kernel (same weights, stride, padding, dilation, groups),
    ``BatchNorm1d`` -> ``BatchNorm2d``, ``MaxPool1d`` / ``AvgPool1d`` ->
    (1, k) 2-D pools and ``AdaptiveAvgPool1d(n)`` / ``AdaptiveMaxPool1d(n)``
    -> their 2-D versions with output (1, n); the result is wrapped so that
    it unsqueezes its (N, C, T) input to (N, C, 1, T). Layers that are
    layout-agnostic (activations, ``Linear`` after a flatten, dropout) are
    kept. Functional 1-D code in ``forward`` methods is not rewritten: check
    the outputs (as :func:`export_pte` does) before using the result.

    Parameters
    ----------
    model : torch.nn.Module

    Returns
    -------
    torch.nn.Module
        In eval mode if ``model`` is.
    """
    import copy

    import torch
    from torch import nn

    class Unsqueeze2d(nn.Module):
        """(N, C, T) -> (N, C, 1, T)."""

        def forward(self, x):
            return x.unsqueeze(2)

    def _pair(v):
        return v[0] if isinstance(v, (tuple, list)) else v

    def convert(mod: nn.Module) -> None:
        for name, c in mod.named_children():
            new = None
            if isinstance(c, nn.Conv1d):
                if isinstance(c.padding, str):
                    pad = c.padding
                else:
                    pad = (0, _pair(c.padding))
                new = nn.Conv2d(c.in_channels, c.out_channels, (1, _pair(c.kernel_size)), (1, _pair(c.stride)),
                                pad, (1, _pair(c.dilation)), c.groups, c.bias is not None, c.padding_mode)
                with torch.no_grad():
                    new.weight.copy_(c.weight.unsqueeze(2))
                    if c.bias is not None:
                        new.bias.copy_(c.bias)
            elif isinstance(c, nn.BatchNorm1d):
                new = nn.BatchNorm2d(c.num_features, c.eps, c.momentum, c.affine, c.track_running_stats)
                new.load_state_dict(c.state_dict())
            elif isinstance(c, nn.MaxPool1d):
                new = nn.MaxPool2d((1, _pair(c.kernel_size)), (1, _pair(c.stride)), (0, _pair(c.padding)),
                                   (1, _pair(c.dilation)), c.return_indices, c.ceil_mode)
            elif isinstance(c, nn.AvgPool1d):
                new = nn.AvgPool2d((1, _pair(c.kernel_size)), (1, _pair(c.stride)), (0, _pair(c.padding)),
                                   c.ceil_mode, c.count_include_pad)
            elif isinstance(c, nn.AdaptiveAvgPool1d):
                new = nn.AdaptiveAvgPool2d((1, _pair(c.output_size)))
            elif isinstance(c, nn.AdaptiveMaxPool1d):
                new = nn.AdaptiveMaxPool2d((1, _pair(c.output_size)), c.return_indices)
            if new is None:
                convert(c)
            else:
                new.train(c.training)
                setattr(mod, name, new)

    m = copy.deepcopy(model)
    convert(m)
    out = nn.Sequential(Unsqueeze2d(), m)
    out.train(model.training)
    return out


def _rewrite_for_xnnpack(model, x) -> tuple[Any, str | None]:
    """(model to export, rewrite name or None): the 2-D form if it reproduces the outputs."""
    import torch

    try:
        m2 = conv1d_as_conv2d(model)
        with torch.no_grad():
            ref, got = model(x), m2(x)
        scale = float(ref.abs().max()) if ref.numel() else 1.0
        if got.shape == ref.shape and torch.allclose(got, ref, rtol=1e-4, atol=1e-5 * max(1.0, scale)):
            return m2, "conv1d->conv2d"
    except Exception:  # an unsupported 1-D construct: export the original graph
        pass
    return model, None


def artifact_contract(manifest: Manifest, *, precision: str = "fp32", delegate: str | None = None) -> dict:
    """The contract embedded in an artifact (ONNX ``metadata_props`` as ``imutune.<key>`` with JSON values;
    the ``.pte`` constant method ``imutune_metadata`` as one JSON object).

    Returns
    -------
    dict
        ``manifest.to_dict()`` without ``artifacts``: the full preprocessing
        contract (:data:`imutune.signal.contract.CONTRACT_KEYS`: channels,
        units, classes, sample rate, window and hop in seconds and samples,
        purity, normalization), model name and config, layout, tensor names
        and version; plus ``precision`` and ``delegate``. All of it is compared
        with the manifest by :func:`imutune.deploy.backends.load_backend`.
    """
    d = manifest.to_dict()
    d.pop("artifacts", None)
    d["precision"] = precision
    d["delegate"] = delegate
    return d


def _compute_pte(model, x, delegate: str | None, *, precision: str = "fp32", calibration: Any = None,
                 manifest: Manifest | None = None, rewrite: bool | None = None) -> tuple[Any, dict]:
    import json

    import torch
    from executorch.exir import to_edge_transform_and_lower

    info: dict[str, Any] = {"graph_rewrite": None}
    if rewrite is None:
        rewrite = delegate == "xnnpack"
    if rewrite:
        model, info["graph_rewrite"] = _rewrite_for_xnnpack(model, x)
    if precision == "int8":
        from .quantize import calibration_subset, quantize_pt2e_xnnpack

        calib = calibration_subset(calibration)
        model = quantize_pt2e_xnnpack(model, x, calib)
        info["calibration_windows"] = int(calib.shape[0])
        info["quantization"] = "pt2e-xnnpack: int8 symmetric per-channel weights, int8 per-tensor activations"
    exported = torch.export.export(model, (x,))
    partitioner = None
    if delegate == "xnnpack":
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import (
            XnnpackPartitioner,
        )

        partitioner = [XnnpackPartitioner()]
    constant_methods = None
    if manifest is not None:
        blob = json.dumps(artifact_contract(manifest, precision=precision, delegate=delegate)).encode("utf-8")
        constant_methods = {"imutune_metadata": torch.frombuffer(bytearray(blob), dtype=torch.uint8).clone()}
    from ._quiet import quiet_executorch

    with quiet_executorch():  # ExecuTorch's native log noise hidden, other native lines kept
        program = to_edge_transform_and_lower(exported, partitioner=partitioner,
                                              constant_methods=constant_methods).to_executorch()
    return program, info


# --------------------------------------------------------------------------- parity


def parity_max_abs_err(model: Any, backend: Any, windows: Any, *, batch_size: int = 64) -> float:
    """Largest absolute logit difference between eager torch and a backend.

    Parameters
    ----------
    model : torch.nn.Module
        The reference, in eval mode.
    backend : object with ``run(x) -> logits``
        E.g. :class:`imutune.deploy.backends.OnnxBackend` / ``PteBackend``.
    windows : np.ndarray or torch.Tensor
        Array of shape (N, C, T), float32.
    batch_size : int, default 64
        Windows per call; the backend may further split them (a ``.pte``
        with a fixed batch does).

    Returns
    -------
    float
        ``max |model(x) - backend.run(x)|`` over all windows and classes
        (``inf`` if any output is NaN/Inf).

    Raises
    ------
    ValueError
        If ``model`` is not an eval-mode module, ``windows`` is not a finite
        float32 (N, C, T) array, ``backend`` has no ``run``, or the two
        outputs differ in shape.
    """
    _check_model(model)
    x = _check_example("windows", windows)
    if not callable(getattr(backend, "run", None)):
        raise ValueError(f"backend must have a run(x) method, got {type(backend).__name__}")
    V.check_int_at_least("batch_size", batch_size, 1)
    return _compute_parity(model, backend, x.numpy(), batch_size)


def _compute_parity(model, backend, x: np.ndarray, batch_size: int) -> float:
    return _compute_parity_agreement(model, backend, x, batch_size)[0]


# --------------------------------------------------------------------------- writer


def write_exports(model: Any, manifest: Manifest, out_dir: str | os.PathLike, example_windows: Any, *,
                  formats: Sequence[str] = EXPORT_FORMATS, tolerance: float = 1e-4,
                  config: dict | None = None, delegate: str | None = "xnnpack",
                  num_threads: int = 1, calibration_windows: Any = None, int8_min_agreement: float = 0.9,
                  eval_windows: tuple[Any, Any] | None = None, progress: bool = False) -> Manifest:
    """Export, write, reload and parity-check each variant; write ``manifest.json``.

    Everything is written into a staging folder next to ``out_dir``
    (:func:`imutune._io.atomic_folder`): each artifact (names in
    :data:`ARTIFACT_NAMES`) is reloaded there with
    :func:`imutune.deploy.backends.load_backend` (which checks its SHA-256, input
    shape and embedded contract against the manifest) and compared with eager
    torch on ``example_windows``; then ``manifest.json`` and, if ``config`` is
    given, ``export_config.json`` are written there and every hash re-checked.
    Only then does the staging folder replace ``out_dir`` in one rename, so
    ``out_dir`` always holds either the complete previous export or the
    complete new one, also if the process is killed at any point (the next
    export finishes or undoes the interrupted switch and removes stale
    staging). Other files already in ``out_dir`` (a bundle, replay reports)
    are kept, hard-linked into the new folder; artifacts of variants not
    exported this time are removed, so the folder holds exactly the files the
    manifest lists. On failure ``out_dir`` is left as it was.

    Writers of one ``out_dir`` exclude each other through the lock file
    ``.<out_dir name>.lock`` beside it (:func:`imutune._io.folder_lock`): a
    second export into a folder being written fails at once, naming the lock
    file and the holder's pid.

    Parameters
    ----------
    model : torch.nn.Module
        In eval mode; maps (N, C, T) float32 to (N, K) logits.
    manifest : Manifest
        Preprocessing metadata; C = ``len(manifest.channels)`` and
        T = ``manifest.window_samples`` must match ``example_windows``.
    out_dir : str or os.PathLike
        Destination folder (created if missing).
    example_windows : np.ndarray or torch.Tensor
        Array of shape (N, C, T), float32: normalized windows for tracing and
        the parity check (a few dozen real windows are a good check).
    formats : sequence of str, default ("onnx", "pte")
        Variants from :data:`EXPORT_VARIANTS`: ``"onnx"``, ``"pte"``,
        ``"onnx-int8"``, ``"pte-int8"``, ``"pte-portable"``.
    tolerance : float, default 1e-4
        Largest allowed ``max |logit difference|`` of an fp32 artifact.
    config : dict, optional
        JSON-serialisable export settings, written to ``export_config.json``.
    delegate : {"xnnpack", None}, default "xnnpack"
        Delegate of ``model.pte`` (see :func:`export_pte`); ``.pte`` files are
        exported with batch 1.
    num_threads : int, default 1
        Threads of the backends used for the parity check.
    calibration_windows : np.ndarray, optional
        Array of shape (M, C, T), float32: normalized *training* windows
        calibrating the int8 variants (at most 256, a seeded subset, are
        used). Defaults to ``example_windows``.
    int8_min_agreement : float, default 0.9
        Parity tolerance of an int8 artifact: the fraction of
        ``example_windows`` on which its top-1 class equals eager fp32
        torch's must be at least this (logits of int8 models differ by far
        more than 1e-4; the largest difference is recorded).
    eval_windows : (x, y), optional
        Held-out normalized windows (N, C, T) float32 and labels (N,): each
        artifact's accuracy and macro-F1 on them are recorded, and int8
        entries get their change in percentage points against the fp32
        artifact of the same format (eager torch if that was not exported).
    progress : bool, default False
        Show a tqdm bar over the variants with the current stage (export,
        quantize, reload + parity, held-out accuracy).

    Returns
    -------
    Manifest
        ``manifest`` with ``artifacts[file name] = {"sha256", "format",
        "precision", "delegate", "variant", "graph_rewrite",
        "parity_max_abs_err", "parity_top1_agreement", "size_bytes"}`` for
        each written file (``delegate`` is None for ONNX and portable
        ``.pte``); int8 entries add ``calibration_windows``,
        ``quantization`` and ``parity_tolerance``; with ``eval_windows``
        every entry adds ``eval_accuracy``, ``eval_macro_f1``, ``eval_n``
        and int8 entries ``accuracy_change_vs_fp32_points`` and
        ``macro_f1_change_vs_fp32_points``. Entries already in
        ``manifest.artifacts`` are dropped: the result lists exactly the
        files this call wrote.

    Raises
    ------
    ValueError
        If an argument is invalid, or an artifact fails its parity check
        (the message names the file, the error and the tolerance), or
        ``out_dir`` is a file or contains the working directory.
    imutune._io.FolderLockedError
        (a ValueError) If another process is writing ``out_dir``.
    """
    from .backends import load_backend

    _check_model(model)
    if not isinstance(manifest, Manifest):
        raise ValueError(f"manifest must be an imutune.deploy.manifest.Manifest, got {type(manifest).__name__}")
    x = _check_example("example_windows", example_windows, in_channels=len(manifest.channels),
                       window_samples=manifest.window_samples)
    if isinstance(formats, str):
        formats = (formats,)
    formats = tuple(formats)
    if not formats:
        raise ValueError(f"formats must name at least one of {list(EXPORT_VARIANTS)}, got {formats!r}")
    for f in formats:
        V.check_choice("formats entry", f, EXPORT_VARIANTS)
    if len(set(formats)) != len(formats):
        raise ValueError(f"formats has duplicates: {list(formats)}")
    tolerance = float(tolerance)
    if not (tolerance >= 0) or not np.isfinite(tolerance):
        raise ValueError(f"tolerance must be a finite number >= 0, got {tolerance!r}")
    V.check_in_range("int8_min_agreement", int8_min_agreement, 0.0, 1.0)
    if config is not None and not isinstance(config, dict):
        raise ValueError(f"config must be a dict or None, got {type(config).__name__}")
    if delegate not in PTE_DELEGATES:
        raise ValueError(f"delegate must be one of {list(PTE_DELEGATES)}, got {delegate!r}")
    V.check_int_at_least("num_threads", num_threads, 1)
    calib = None
    if any(f.endswith("-int8") for f in formats):
        calib = _check_example("calibration_windows", x if calibration_windows is None else calibration_windows,
                               in_channels=len(manifest.channels), window_samples=manifest.window_samples).numpy()
    ev = None
    if eval_windows is not None:
        if not isinstance(eval_windows, (tuple, list)) or len(eval_windows) != 2:
            raise ValueError("eval_windows must be a pair (x, y) of windows (N, C, T) float32 and labels (N,)")
        ex = _check_example("eval_windows x", eval_windows[0], in_channels=len(manifest.channels),
                            window_samples=manifest.window_samples).numpy()
        ey = V.check_labels("eval_windows y", np.asarray(eval_windows[1]), len(manifest.class_names),
                            allow_unlabeled=False)
        if ey.shape[0] != ex.shape[0]:
            raise ValueError(f"eval_windows has {ex.shape[0]} windows but {ey.shape[0]} labels")
        ev = (ex, ey)

    manifest = dataclasses.replace(manifest, artifacts={})
    out = Path(out_dir)
    owned = (*ARTIFACT_NAMES.values(), "manifest.json", "export_config.json")
    bar = _StageBar(formats, enabled=progress)
    try:
        # Everything is written, reloaded and parity-checked in a staging folder next to ``out``;
        # only then does the staging folder replace ``out`` in one rename (imutune._io.atomic_folder).
        with atomic_folder(out, drop=owned) as staging:
            backends: dict[str, Any] = {}
            onnx_fp32 = None
            for variant in formats:
                name = ARTIFACT_NAMES[variant]
                precision = "int8" if variant.endswith("-int8") else "fp32"
                info: dict[str, Any] = {"format": variant.split("-")[0], "precision": precision,
                                        "variant": variant}
                bar.stage(variant, "export")
                if variant in ("onnx", "onnx-int8"):
                    if onnx_fp32 is None:
                        onnx_fp32 = _compute_onnx(model, x[:1], manifest, True)
                    if variant == "onnx":
                        data = onnx_fp32.SerializeToString()
                    else:
                        from .quantize import calibration_subset, quantize_onnx

                        bar.stage(variant, "quantize")
                        cs = calibration_subset(calib)
                        data = quantize_onnx(onnx_fp32, cs).SerializeToString()
                        info.update(calibration_windows=int(cs.shape[0]),
                                    quantization="onnxruntime static QDQ: int8 symmetric per-channel weights, "
                                                 "uint8 activations, MinMax calibration")
                    info.update(delegate=None, graph_rewrite=None)
                else:
                    dlg = {"pte": delegate, "pte-int8": "xnnpack", "pte-portable": None}[variant]
                    bar.stage(variant, "quantize + lower" if precision == "int8" else "lower to ExecuTorch")
                    prog, extra = _compute_pte(model, x[:1], dlg, precision=precision, calibration=calib,
                                               manifest=manifest)
                    data = prog.buffer
                    info.update(delegate=dlg, **extra)
                path = write_bytes_atomic(staging / name, data)
                manifest = manifest.with_artifact(name, sha256=sha256_file(path), **info)
                bar.stage(variant, "reload + parity")
                backend = load_backend(path, manifest=manifest, num_threads=num_threads)
                err, agree = _compute_parity_agreement(model, backend, x.numpy(), 64)
                if precision == "fp32" and not err <= tolerance:
                    raise ValueError(f"parity check failed for {name} ({backend.name}): max |logit difference| "
                                     f"vs torch is {err:.3g} on {x.shape[0]} windows; expected <= "
                                     f"{tolerance:g}. Nothing was written to {str(out)!r}")
                if precision == "int8" and not agree >= int8_min_agreement:
                    raise ValueError(f"parity check failed for {name} ({backend.name}): its top-1 class agrees "
                                     f"with fp32 torch on {agree:.1%} of {x.shape[0]} windows; expected >= "
                                     f"{int8_min_agreement:.1%} (max |logit difference| {err:.3g}). Calibrate on "
                                     f"more representative training windows. Nothing was written to {str(out)!r}")
                extra_info = {"parity_max_abs_err": err, "parity_top1_agreement": agree, "size_bytes": len(data)}
                if precision == "int8":
                    extra_info["parity_tolerance"] = {"min_top1_agreement": float(int8_min_agreement)}
                manifest = manifest.with_artifact(name, **manifest.artifacts[name], **extra_info)
                backends[variant] = backend
                bar.done(variant)
            if ev is not None:
                bar.stage("all", "held-out accuracy")
                manifest = _record_eval(manifest, model, backends, ev)
            manifest.save(staging / "manifest.json")
            if config is not None:
                write_json_atomic(staging / "export_config.json", config)
            _check_staged(staging, manifest, out)
    finally:
        bar.close()
    return manifest


class _StageBar:
    """tqdm bar over the export variants showing the current stage (a no-op when disabled)."""

    def __init__(self, formats: Sequence[str], *, enabled: bool) -> None:
        self._bar = None
        if enabled:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=len(formats), desc="export", unit="variant", leave=False, dynamic_ncols=True)

    def stage(self, variant: str, what: str) -> None:
        if self._bar is not None:
            self._bar.set_postfix_str(f"{variant}: {what}", refresh=True)

    def done(self, variant: str) -> None:
        if self._bar is not None:
            self._bar.set_postfix_str(f"{variant}: ok", refresh=False)
            self._bar.update(1)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def _check_staged(staging: Path, manifest: Manifest, out: Path) -> None:
    """Last check before the folder switch: every manifest entry's file is staged with its hash and size."""
    for name, entry in manifest.artifacts.items():
        p = staging / name
        if not p.is_file() or sha256_file(p) != entry["sha256"] or p.stat().st_size != entry["size_bytes"]:
            raise ValueError(f"staged artifact {name} does not match its manifest entry (sha256/size); "
                             f"nothing was written to {str(out)!r}")


def _compute_parity_agreement(model, backend, x: np.ndarray, batch_size: int) -> tuple[float, float]:
    """(max |logit difference|, top-1 agreement) of a backend against eager torch."""
    import torch

    worst, same = 0.0, 0
    for start in range(0, x.shape[0], batch_size):
        chunk = np.ascontiguousarray(x[start:start + batch_size])
        with torch.inference_mode():
            ref = model(torch.from_numpy(chunk)).detach().float().numpy()
        got = np.asarray(backend.run(chunk), dtype=np.float32)
        if got.shape != ref.shape:
            raise ValueError(f"backend {getattr(backend, 'name', type(backend).__name__)!r} returned logits of "
                             f"shape {got.shape}; torch returned {ref.shape}")
        diff = np.abs(ref.astype(np.float64) - got.astype(np.float64))
        if not np.all(np.isfinite(diff)):
            return float("inf"), 0.0
        worst = max(worst, float(diff.max(initial=0.0)))
        same += int(np.sum(ref.argmax(1) == got.argmax(1)))
    return worst, same / max(x.shape[0], 1)


def _record_eval(manifest: Manifest, model, backends: dict, ev: tuple[np.ndarray, np.ndarray]) -> Manifest:
    """Add held-out accuracy to every artifact entry, and the int8 change against fp32."""
    import torch

    from .. import metrics
    from .quantize import predict_backend

    x, y = ev
    K = len(manifest.class_names)
    with torch.inference_mode():
        ref_pred = np.concatenate([model(torch.from_numpy(np.ascontiguousarray(x[s:s + 64]))).argmax(1).numpy()
                                   for s in range(0, x.shape[0], 64)])
    scores = {"torch": (metrics.accuracy(y, ref_pred), metrics.macro_f1(y, ref_pred, K))}
    for variant, backend in backends.items():
        pred = predict_backend(backend, x).argmax(1)
        scores[variant] = (metrics.accuracy(y, pred), metrics.macro_f1(y, pred, K))
    for variant in backends:
        name = ARTIFACT_NAMES[variant]
        acc, f1 = scores[variant]
        info = dict(manifest.artifacts[name], eval_accuracy=acc, eval_macro_f1=f1, eval_n=int(x.shape[0]))
        if variant.endswith("-int8"):
            base = variant[:-len("-int8")]
            ref_name = base if base in scores else "torch"
            info.update(accuracy_change_vs_fp32_points=100.0 * (acc - scores[ref_name][0]),
                        macro_f1_change_vs_fp32_points=100.0 * (f1 - scores[ref_name][1]),
                        fp32_reference=ref_name if ref_name == "torch" else ARTIFACT_NAMES[ref_name])
        manifest = manifest.with_artifact(name, **info)
    return manifest
