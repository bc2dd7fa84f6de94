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
"""
from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from . import _validation as V
from ._io import sha256_file, write_bytes_atomic, write_json_atomic
from .manifest import Manifest

__all__ = ["export_onnx", "export_pte", "parity_max_abs_err", "write_exports",
           "EXPORT_FORMATS", "ARTIFACT_NAMES", "PTE_DELEGATES"]

#: Formats :func:`write_exports` understands.
EXPORT_FORMATS = ("onnx", "pte")
#: File name written for each format.
ARTIFACT_NAMES = {"onnx": "model.onnx", "pte": "model.pte"}
#: ``delegate`` values of :func:`export_pte` (None: portable kernels only).
PTE_DELEGATES = ("xnnpack", None)

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
    """Require a float32 (N, C, T) tensor or array; return a float32 torch tensor."""
    import torch

    if isinstance(x, np.ndarray):
        if x.dtype != np.float32:
            raise ValueError(f"{name} must have dtype float32, got {x.dtype}")
        x = torch.from_numpy(np.ascontiguousarray(x))
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor or numpy array of shape (N, C, T), float32; "
                         f"got {type(x).__name__}")
    if x.dtype != torch.float32:
        raise ValueError(f"{name} must have dtype float32, got {x.dtype}")
    if x.ndim != 3 or x.shape[0] < 1:
        raise ValueError(f"{name} must have shape (N, C, T) with N >= 1, got shape {tuple(x.shape)}")
    if in_channels is not None and x.shape[1] != in_channels:
        raise ValueError(f"{name} has {x.shape[1]} channels (shape {tuple(x.shape)}); expected "
                         f"C={in_channels} from the manifest")
    if window_samples is not None and x.shape[2] != window_samples:
        raise ValueError(f"{name} has windows of {x.shape[2]} samples (shape {tuple(x.shape)}); expected "
                         f"T={window_samples} from the manifest")
    V.check_finite_array(name, x.detach().cpu().numpy())
    return x.detach().contiguous()


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
        raise ValueError(f"manifest must be an imutune.manifest.Manifest, got {type(manifest).__name__}")
    return _compute_onnx(model, x, manifest, bool(dynamic_batch))


def _compute_onnx(model, x, manifest: Manifest | None, dynamic_batch: bool):
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
        existing = {p.key for p in proto.metadata_props}
        for key, value in manifest.metadata_props().items():
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


def export_pte(model: Any, example_input: Any, *, delegate: str | None = "xnnpack"):
    """Export ``model`` to an ExecuTorch program.

    ``torch.export.export`` -> ``executorch.exir.to_edge_transform_and_lower``
    (with ``XnnpackPartitioner`` when ``delegate="xnnpack"``) ->
    ``.to_executorch()``. The program's ``forward`` has the static input shape
    of ``example_input`` (batch included): pass a batch of 1 for the phone,
    which scores one window at a time. :class:`imutune.backends.PteBackend`
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

    Returns
    -------
    executorch.exir.ExecutorchProgramManager
        ``.buffer`` holds the ``.pte`` bytes.

    Raises
    ------
    ValueError
        If ``model`` is not an eval-mode ``torch.nn.Module``, ``example_input``
        is not a finite float32 (N, C, T) array, or ``delegate`` is unknown.
    """
    _check_model(model)
    x = _check_example("example_input", example_input)
    if delegate not in PTE_DELEGATES:
        raise ValueError(f"delegate must be one of {list(PTE_DELEGATES)}, got {delegate!r}")
    return _compute_pte(model, x, delegate)


def _compute_pte(model, x, delegate: str | None):
    import torch
    from executorch.exir import to_edge_transform_and_lower

    exported = torch.export.export(model, (x,))
    partitioner = None
    if delegate == "xnnpack":
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner

        partitioner = [XnnpackPartitioner()]
    return to_edge_transform_and_lower(exported, partitioner=partitioner).to_executorch()


# --------------------------------------------------------------------------- parity


def parity_max_abs_err(model: Any, backend: Any, windows: Any, *, batch_size: int = 64) -> float:
    """Largest absolute logit difference between eager torch and a backend.

    Parameters
    ----------
    model : torch.nn.Module
        The reference, in eval mode.
    backend : object with ``run(x) -> logits``
        E.g. :class:`imutune.backends.OnnxBackend` / ``PteBackend``.
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
    import torch

    worst = 0.0
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
            return float("inf")
        worst = max(worst, float(diff.max(initial=0.0)))
    return worst


# --------------------------------------------------------------------------- writer


def write_exports(model: Any, manifest: Manifest, out_dir: str | os.PathLike, example_windows: Any, *,
                  formats: Sequence[str] = EXPORT_FORMATS, tolerance: float = 1e-4,
                  config: dict | None = None, delegate: str | None = "xnnpack",
                  num_threads: int = 1) -> Manifest:
    """Export, write, reload and parity-check each format; write ``manifest.json``.

    For each format the artifact is first written to a staging folder inside
    ``out_dir``, reloaded with :func:`imutune.backends.load_backend` (which
    checks its SHA-256 and input shape against the manifest) and compared
    with eager torch on ``example_windows``. Only when every format passes are
    the files renamed into ``out_dir`` (``model.onnx``, ``model.pte``), then
    ``manifest.json`` and, if ``config`` is given, ``export_config.json`` are
    written, all atomically. On failure nothing new is left in ``out_dir``.

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
    formats : sequence of {"onnx", "pte"}, default ("onnx", "pte")
    tolerance : float, default 1e-4
        Largest allowed ``max |logit difference|`` (fp32) per artifact.
    config : dict, optional
        JSON-serialisable export settings, written to ``export_config.json``.
    delegate : {"xnnpack", None}, default "xnnpack"
        Delegate of the ``.pte`` (see :func:`export_pte`); it is exported with
        batch 1.
    num_threads : int, default 1
        Threads of the backends used for the parity check.

    Returns
    -------
    Manifest
        ``manifest`` with ``artifacts[file name] = {"sha256", "format",
        "precision": "fp32", "delegate", "parity_max_abs_err", "size_bytes"}``
        for each written file (``delegate`` is None for ONNX and for a
        portable ``.pte``). Entries already in ``manifest.artifacts`` are
        dropped: the result lists exactly the files this call wrote.

    Raises
    ------
    ValueError
        If an argument is invalid, or an artifact's parity error exceeds
        ``tolerance`` (the message names the file, the error and the
        tolerance).
    """
    from .backends import load_backend

    _check_model(model)
    if not isinstance(manifest, Manifest):
        raise ValueError(f"manifest must be an imutune.manifest.Manifest, got {type(manifest).__name__}")
    x = _check_example("example_windows", example_windows, in_channels=len(manifest.channels),
                       window_samples=manifest.window_samples)
    if isinstance(formats, str):
        formats = (formats,)
    formats = tuple(formats)
    if not formats:
        raise ValueError(f"formats must name at least one of {list(EXPORT_FORMATS)}, got {formats!r}")
    for f in formats:
        V.check_choice("formats entry", f, EXPORT_FORMATS)
    if len(set(formats)) != len(formats):
        raise ValueError(f"formats has duplicates: {list(formats)}")
    tolerance = float(tolerance)
    if not (tolerance >= 0) or not np.isfinite(tolerance):
        raise ValueError(f"tolerance must be a finite number >= 0, got {tolerance!r}")
    if config is not None and not isinstance(config, dict):
        raise ValueError(f"config must be a dict or None, got {type(config).__name__}")
    if delegate not in PTE_DELEGATES:
        raise ValueError(f"delegate must be one of {list(PTE_DELEGATES)}, got {delegate!r}")
    V.check_int_at_least("num_threads", num_threads, 1)

    manifest = dataclasses.replace(manifest, artifacts={})
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".imutune-export-", dir=out))
    try:
        staged: dict[str, Path] = {}
        for fmt in formats:
            name = ARTIFACT_NAMES[fmt]
            if fmt == "onnx":
                data = _compute_onnx(model, x[:1], manifest, True).SerializeToString()
                info = {"format": "onnx", "precision": "fp32", "delegate": None}
            else:
                data = _compute_pte(model, x[:1], delegate).buffer
                info = {"format": "pte", "precision": "fp32", "delegate": delegate}
            path = write_bytes_atomic(staging / name, data)
            manifest = manifest.with_artifact(name, sha256=sha256_file(path), **info)
            backend = load_backend(path, manifest=manifest, num_threads=num_threads)
            err = _compute_parity(model, backend, x.numpy(), 64)
            if not err <= tolerance:
                raise ValueError(f"parity check failed for {name} ({backend.name}): max |logit difference| "
                                 f"vs torch is {err:.3g} on {x.shape[0]} windows; expected <= {tolerance:g}. "
                                 f"Nothing was written to {str(out)!r}")
            manifest = manifest.with_artifact(name, **manifest.artifacts[name], parity_max_abs_err=err,
                                              size_bytes=len(data))
            staged[name] = path
        for name, path in staged.items():
            os.replace(path, out / name)
        manifest.save(out / "manifest.json")
        if config is not None:
            write_json_atomic(out / "export_config.json", config)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return manifest
