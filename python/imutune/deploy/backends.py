"""Inference backends: run an exported model on (N, C, T) float32 windows.

Three backends share one contract, ``backend.run(x) -> logits`` with ``x`` an
array of shape (N, C, T), float32 (normalized windows, channel-first) and
``logits`` an array of shape (N, K), float32:

* :class:`OnnxBackend` -- an ``.onnx`` file under onnxruntime (CPU execution
  provider, sequential execution).
* :class:`PteBackend` -- an ExecuTorch ``.pte`` program (XNNPACK-delegated or
  portable kernels) under the ExecuTorch Python runtime.
* :class:`TorchBackend` -- an eager ``torch.nn.Module``, the reference.

:func:`load_backend` picks the file backend by suffix and, given a
:class:`~imutune.deploy.manifest.Manifest`, first checks the file's SHA-256 and its
input shape against the manifest. The export parity check and the replay
runtime both use these classes.

Manifest checks on load (:func:`load_backend` with ``manifest=``): the file
must be listed in ``manifest.artifacts`` with the same SHA-256, format and
(``.pte``) delegate; its input C and T and output K must match the
manifest's channels, window and classes; and the preprocessing contract the
exporter embedded in the artifact (ONNX ``metadata_props`` ``imutune.*``, or
the ``.pte`` constant method ``imutune_metadata``) must equal the manifest's
in full (:data:`CONTRACT_FIELDS`: channels, units, class names, sample rate,
window and hop in seconds and samples, purity, normalization, model name and
config, layout, tensor names, version; and the precision). An artifact with
no embedded contract at all (exported without a manifest, e.g. by
``torch.onnx.export``) is checked by hash and shape only
(``backend.embedded_metadata`` is None); one with an incomplete contract is
refused.

Threads: every backend takes ``num_threads`` and :meth:`threads_in_effect`
reads the setting back from the engine. Two of the knobs are process-wide:
``torch.set_num_threads`` (:class:`TorchBackend`) and the ExecuTorch
threadpool (:class:`PteBackend`); call ``backend.prepare()`` before timing a
backend when several live in one process (the replay and the latency
benchmark do). A thread count above the host's cores is accepted here
(oversubscription); device profiles (:mod:`imutune.runtime.profiles`) reject it.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from .. import _validation as V
from ..signal.contract import CONTRACT_KEYS, Preprocessing

__all__ = ["OnnxBackend", "PteBackend", "TorchBackend", "load_backend", "BACKEND_SUFFIXES",
           "PTE_METADATA_METHOD", "CONTRACT_FIELDS", "check_embedded_metadata"]

#: File suffix -> backend class name, as chosen by :func:`load_backend`.
BACKEND_SUFFIXES = {".onnx": "OnnxBackend", ".pte": "PteBackend"}
#: Name of the ``.pte`` constant method holding the embedded contract (UTF-8 JSON as a uint8 tensor).
PTE_METADATA_METHOD = "imutune_metadata"
#: Manifest fields an artifact embeds and :func:`load_backend` compares with the manifest: the whole
#: preprocessing contract (:data:`imutune.signal.contract.CONTRACT_KEYS`, hop and units included) and the
#: model / input description.
CONTRACT_FIELDS = CONTRACT_KEYS + ("model_name", "model_config", "input_layout", "input_name", "output_name",
                                   "version")


# --------------------------------------------------------------------------- helpers


def _check_num_threads(num_threads: int) -> int:
    return V.check_int_at_least("num_threads", num_threads, 1)


class _Backend:
    """Shared parts: ``name``, ``num_threads``, ``in_channels``, ``window_samples``, ``run``."""

    name: str = ""
    num_threads: int = 1
    in_channels: int | None = None
    window_samples: int | None = None
    num_outputs: int | None = None            # K, where the engine reports it
    embedded_metadata: dict | None = None     # contract embedded by the exporter (None: none found)

    def _where(self) -> str:
        return self.name

    def prepare(self) -> None:
        """Apply this backend's process-wide settings (thread pools) again; call before timing it."""

    def threads_in_effect(self) -> int | None:
        """The intra-op thread count the engine reports for this backend (None if it cannot say)."""
        return None

    def run(self, x: np.ndarray) -> np.ndarray:
        """Run the model on a batch of windows.

        Parameters
        ----------
        x : np.ndarray
            Array of shape (N, C, T), float32: normalized windows, channel-first.

        Returns
        -------
        np.ndarray
            Logits, array of shape (N, K), float32.

        Raises
        ------
        ValueError
            If ``x`` is not a float32 3-D array or its C / T differ from the model's.
        """
        x = V.check_windows(f"x for {self._where()}", x, in_channels=self.in_channels,
                            window_samples=self.window_samples, expected_by="the model",
                            allow_tensor=False)
        out = np.asarray(self._compute_logits(x), dtype=np.float32)
        if out.ndim != 2 or out.shape[0] != x.shape[0]:
            raise ValueError(f"{self._where()} returned logits of shape {out.shape}; "
                             f"expected ({x.shape[0]}, K)")
        return out

    def _compute_logits(self, x: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(name={self.name!r}, num_threads={self.num_threads}, "
                f"in_channels={self.in_channels}, window_samples={self.window_samples})")


# --------------------------------------------------------------------------- ONNX


class OnnxBackend(_Backend):
    """An ``.onnx`` model under onnxruntime (CPU).

    Parameters
    ----------
    path : str or os.PathLike
        The ``.onnx`` file (self-contained; no external data).
    num_threads : int, default 1
        ``intra_op_num_threads`` of the session; ``inter_op_num_threads`` is 1
        and execution is sequential, as on a phone.

    Attributes
    ----------
    name : str
        ``"onnxruntime"``.
    in_channels, window_samples : int or None
        C and T read from the graph input (None where the dimension is symbolic).
    batch_size : int or None
        Fixed batch size of the graph input, or None for a dynamic batch.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        If onnxruntime cannot load the file, or the graph does not have one
        3-D float input.
    """

    name = "onnxruntime"

    def __init__(self, path: str | os.PathLike, *, num_threads: int = 1) -> None:
        self.path = V.check_file(path, what="ONNX model")
        self.num_threads = _check_num_threads(num_threads)
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self.num_threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        try:
            self._session = ort.InferenceSession(str(self.path), sess_options=opts,
                                                 providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own exception types
            raise ValueError(f"ONNX model {str(self.path)!r} could not be loaded by onnxruntime: {e}") from e
        inputs = self._session.get_inputs()
        if len(inputs) != 1 or len(inputs[0].shape) != 3:
            raise ValueError(f"ONNX model {str(self.path)!r} has inputs "
                             f"{[(i.name, i.shape) for i in inputs]}; expected one input of shape (N, C, T)")
        self.input_name = inputs[0].name
        self.output_name = self._session.get_outputs()[0].name
        n, c, t = (d if isinstance(d, int) else None for d in inputs[0].shape)
        self.batch_size, self.in_channels, self.window_samples = n, c, t
        out_shape = self._session.get_outputs()[0].shape
        self.num_outputs = out_shape[-1] if out_shape and isinstance(out_shape[-1], int) else None
        self.embedded_metadata = _onnx_metadata(self._session)
        self._out_names = [self.output_name]

    def _where(self) -> str:
        return f"ONNX model {str(self.path)!r}"

    def threads_in_effect(self) -> int | None:
        """``intra_op_num_threads`` of the session's options."""
        return int(self._session.get_session_options().intra_op_num_threads)

    def _compute_logits(self, x: np.ndarray) -> np.ndarray:
        if self.batch_size is None or x.shape[0] == self.batch_size:
            return self._session.run(self._out_names, {self.input_name: x})[0]
        return _run_fixed_batch(lambda b: self._session.run([self.output_name], {self.input_name: b})[0],
                                x, self.batch_size)


# --------------------------------------------------------------------------- ExecuTorch


def _pte_delegates(path: Path) -> list[str]:
    """Backend ids of the delegates in a ``.pte`` file (empty: portable kernels only)."""
    data = path.read_bytes()
    try:
        from executorch.exir._serialize._program import deserialize_pte_binary

        pte = deserialize_pte_binary(data)
        program = getattr(pte, "program", pte)
        return sorted({d.id for plan in program.execution_plan for d in plan.delegates})
    except Exception:  # private API; fall back to the flatbuffer's string table
        return ["XnnpackBackend"] if b"XnnpackBackend" in data else []


def _onnx_metadata(session) -> dict | None:
    """The ``imutune.*`` metadata_props of an ONNX session, JSON-decoded (None if there are none)."""
    import json

    props = session.get_modelmeta().custom_metadata_map
    out = {}
    for k, v in props.items():
        if k.startswith("imutune."):
            try:
                out[k[len("imutune."):]] = json.loads(v)
            except (ValueError, RecursionError):   # kept as text; check_embedded_metadata rejects it
                out[k[len("imutune."):]] = v
    return out or None


def _pte_metadata(program, path: Path) -> dict | None:
    """The JSON contract of the ``imutune_metadata`` constant method (None if the program has none)."""
    import json

    if PTE_METADATA_METHOD not in program.method_names:
        return None
    try:
        out = program.load_method(PTE_METADATA_METHOD).execute([])
        raw = bytes(np.asarray(out[0].numpy(), dtype=np.uint8))
        meta = json.loads(raw.decode("utf-8"))
    except Exception as e:
        raise ValueError(f"ExecuTorch program {str(path)!r}: its embedded metadata method "
                         f"{PTE_METADATA_METHOD!r} could not be read ({e})") from e
    if not isinstance(meta, dict):
        raise ValueError(f"ExecuTorch program {str(path)!r}: embedded metadata is a JSON {type(meta).__name__}; "
                         "expected an object")
    return meta


def _executorch_thread_count() -> int | None:
    try:
        from executorch.extension.pybindings import portable_lib
    except ImportError:
        return None
    get = getattr(portable_lib, "_threadpool_get_thread_count", None)
    if get is None:
        return None
    from ._quiet import quiet_executorch

    with quiet_executorch():  # the first call creates the pool, which logs its cpuinfo probe
        return int(get())


def _set_executorch_threads(num_threads: int) -> bool:
    """Resize the ExecuTorch CPU threadpool (process-wide). Returns False where unsupported."""
    try:
        from executorch.extension.pybindings import portable_lib
    except ImportError:
        return False
    reset = getattr(portable_lib, "_unsafe_reset_threadpool", None)
    if reset is None:
        return False
    current = getattr(portable_lib, "_threadpool_get_thread_count", None)
    from ._quiet import quiet_executorch

    with quiet_executorch():  # hides the runtime's cpuinfo / "Resetting threadpool" lines
        if current is None or current() != num_threads:  # resetting is 'unsafe' while a method runs
            reset(int(num_threads))
    return True


class PteBackend(_Backend):
    """An ExecuTorch ``.pte`` program under the ExecuTorch Python runtime.

    The program's ``forward`` method is loaded once. A ``.pte`` has a static
    input shape (imutune exports batch 1, what the phone runs); :meth:`run`
    splits larger batches into chunks of that size and zero-pads the last one
    (the models have no cross-sample ops in eval mode, so padding does not
    change the real rows).

    Parameters
    ----------
    path : str or os.PathLike
        The ``.pte`` file.
    num_threads : int, default 1
        Size of the ExecuTorch CPU threadpool used by XNNPACK, set through
        ``executorch.extension.pybindings.portable_lib._unsafe_reset_threadpool``
        when that function exists (ExecuTorch 1.x). This pool is process-wide:
        the last backend created decides it for all ``.pte`` programs. Where
        the function is missing the setting is skipped and
        ``threadpool_configured`` is False.

    Attributes
    ----------
    name : str
        ``"executorch-xnnpack"`` if the program holds XNNPACK delegates, else
        ``"executorch-portable"``.
    delegates : list of str
        Backend ids of the program's delegates.
    batch_size, in_channels, window_samples : int
        The static input shape (N, C, T) of ``forward``.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        If the runtime cannot load the program, it has no ``forward`` method,
        or ``forward`` does not take one 3-D float tensor.
    """

    def __init__(self, path: str | os.PathLike, *, num_threads: int = 1) -> None:
        self.path = V.check_file(path, what="ExecuTorch program")
        self.num_threads = _check_num_threads(num_threads)
        self.threadpool_configured = _set_executorch_threads(self.num_threads)
        from executorch.runtime import Runtime

        from ._quiet import quiet_executorch

        try:
            with quiet_executorch():  # native log noise hidden; other native lines re-emitted
                self._program = Runtime.get().load_program(self.path)
        except Exception as e:
            raise ValueError(f"ExecuTorch program {str(self.path)!r} could not be loaded: {e}") from e
        if "forward" not in self._program.method_names:
            raise ValueError(f"ExecuTorch program {str(self.path)!r} has methods "
                             f"{sorted(self._program.method_names)}; expected 'forward'")
        try:
            with quiet_executorch():
                self._method = self._program.load_method("forward")
        except Exception as e:
            raise ValueError(f"ExecuTorch program {str(self.path)!r}: method 'forward' could not be "
                             f"loaded: {e}") from e
        meta = self._method.metadata
        sizes = tuple(meta.input_tensor_meta(0).sizes()) if meta.num_inputs() == 1 else ()
        if meta.num_inputs() != 1 or len(sizes) != 3:
            raise ValueError(f"ExecuTorch program {str(self.path)!r}: 'forward' has {meta.num_inputs()} "
                             f"inputs (first of shape {sizes}); expected one input of shape (N, C, T)")
        self.batch_size, self.in_channels, self.window_samples = (int(s) for s in sizes)
        out_sizes = tuple(meta.output_tensor_meta(0).sizes()) if meta.num_outputs() >= 1 else ()
        self.num_outputs = int(out_sizes[-1]) if len(out_sizes) == 2 else None
        self.delegates = _pte_delegates(self.path)
        self.name = "executorch-xnnpack" if "XnnpackBackend" in self.delegates else "executorch-portable"
        self.embedded_metadata = _pte_metadata(self._program, self.path)

    def _where(self) -> str:
        return f"ExecuTorch program {str(self.path)!r}"

    def prepare(self) -> None:
        """Resize the process-wide ExecuTorch threadpool to ``num_threads`` (if another backend changed it)."""
        if _executorch_thread_count() != self.num_threads:
            self.threadpool_configured = _set_executorch_threads(self.num_threads)

    def threads_in_effect(self) -> int | None:
        """Size of the ExecuTorch CPU threadpool (process-wide; None where it cannot be read)."""
        return _executorch_thread_count()

    def _forward(self, batch: np.ndarray) -> np.ndarray:
        import torch

        out = self._method.execute([torch.from_numpy(batch)])
        return out[0].detach().numpy().copy()  # outputs may alias the runtime's buffers

    def _compute_logits(self, x: np.ndarray) -> np.ndarray:
        if x.shape[0] == self.batch_size:
            return self._forward(x)
        return _run_fixed_batch(self._forward, x, self.batch_size)


def _run_fixed_batch(fn, x: np.ndarray, batch_size: int) -> np.ndarray:
    """Apply ``fn`` (fixed batch ``batch_size``) to ``x`` of any batch, zero-padding the last chunk."""
    outs = []
    for start in range(0, x.shape[0], batch_size):
        chunk = x[start:start + batch_size]
        n = chunk.shape[0]
        if n < batch_size:
            pad = np.zeros((batch_size - n,) + chunk.shape[1:], dtype=chunk.dtype)
            chunk = np.concatenate([chunk, pad], axis=0)
        outs.append(np.asarray(fn(np.ascontiguousarray(chunk)))[:n])
    return np.concatenate(outs, axis=0)


# --------------------------------------------------------------------------- torch


class TorchBackend(_Backend):
    """An eager ``torch.nn.Module`` (the reference for parity checks).

    Parameters
    ----------
    model : torch.nn.Module
        Maps a float32 tensor of shape (N, C, T) to logits of shape (N, K). It
        is run as given; put it in eval mode first.
    num_threads : int, default 1
        Passed to ``torch.set_num_threads`` (process-wide) on construction.
    in_channels : int, optional
        C to check inputs against; defaults to ``model.in_channels`` if the
        model has that attribute, else not checked.
    window_samples : int, optional
        T to check inputs against; not checked if None.

    Attributes
    ----------
    name : str
        ``"torch"``.

    Raises
    ------
    ValueError
        If ``model`` is not a ``torch.nn.Module``.
    """

    name = "torch"

    def __init__(self, model: Any, *, num_threads: int = 1, in_channels: int | None = None,
                 window_samples: int | None = None) -> None:
        import torch

        if not isinstance(model, torch.nn.Module):
            raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.model = model
        self.num_threads = _check_num_threads(num_threads)
        torch.set_num_threads(self.num_threads)
        if in_channels is None:
            in_channels = getattr(model, "in_channels", None)
        self.in_channels = None if in_channels is None else V.check_int_at_least("in_channels", in_channels, 1)
        self.window_samples = (None if window_samples is None
                               else V.check_int_at_least("window_samples", window_samples, 1))
        self.num_outputs = getattr(model, "num_classes", None)

    def prepare(self) -> None:
        """``torch.set_num_threads(num_threads)`` again (process-wide)."""
        import torch

        if torch.get_num_threads() != self.num_threads:
            torch.set_num_threads(self.num_threads)

    def threads_in_effect(self) -> int | None:
        """``torch.get_num_threads()`` (process-wide)."""
        import torch

        return int(torch.get_num_threads())

    def _compute_logits(self, x: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            return self.model(torch.from_numpy(x)).detach().float().numpy()


# --------------------------------------------------------------------------- loader


def load_backend(path: str | os.PathLike, *, manifest: Any = None, num_threads: int = 1):
    """Open an exported model file with the backend its suffix names.

    Parameters
    ----------
    path : str or os.PathLike
        ``*.onnx`` (-> :class:`OnnxBackend`) or ``*.pte`` (-> :class:`PteBackend`).
    manifest : imutune.deploy.manifest.Manifest, optional
        If given, the file is checked against it before it is used: it must
        be listed in ``manifest.artifacts`` with the same SHA-256
        (:func:`imutune.deploy.manifest.verify_artifact`) and format (and, for a
        ``.pte``, delegate); its input C, T and output K must equal
        ``len(manifest.channels)``, ``manifest.window_samples`` and
        ``len(manifest.class_names)``; and the contract embedded in the file
        (see the module docstring) must agree with the manifest's
        channels, classes, sample rate, window, layout and normalization.
    num_threads : int, default 1
        Threads for the backend (see each backend class).

    Returns
    -------
    OnnxBackend or PteBackend

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        If the suffix is not ``.onnx`` / ``.pte``, the file cannot be loaded,
        or any manifest check fails (the message names the file, the field,
        the artifact's value and the manifest's).
    """
    p = Path(path)
    if p.suffix.lower() not in BACKEND_SUFFIXES:
        raise ValueError(f"model file {str(p)!r} has suffix {p.suffix!r}; expected one of "
                         f"{sorted(BACKEND_SUFFIXES)}")
    V.check_file(p, what="model file")
    _check_num_threads(num_threads)
    entry = None
    if manifest is not None:
        from .manifest import Manifest, verify_artifact

        if not isinstance(manifest, Manifest):
            raise ValueError(f"manifest must be an imutune.deploy.manifest.Manifest, got {type(manifest).__name__}")
        entry = verify_artifact(manifest, p)
        fmt = p.suffix.lower().lstrip(".")
        if entry.get("format") not in (None, fmt):
            raise ValueError(f"model file {str(p)!r} is a .{fmt} file but the manifest lists it as format "
                             f"{entry.get('format')!r}")
    backend = (OnnxBackend if p.suffix.lower() == ".onnx" else PteBackend)(p, num_threads=num_threads)
    if manifest is not None:
        _check_against_manifest(backend, manifest, p, entry)
    return backend


def _check_against_manifest(backend: _Backend, manifest: Any, path: Path, entry: dict | None = None) -> None:
    expected = {"channel count C": len(manifest.channels), "window length T (samples)": manifest.window_samples,
                "class count K": len(manifest.class_names)}
    seen = {"channel count C": backend.in_channels, "window length T (samples)": backend.window_samples,
            "class count K": backend.num_outputs}
    for what, exp in expected.items():
        if seen[what] is not None and seen[what] != exp:
            raise ValueError(f"model file {str(path)!r} has {what} = {seen[what]}; the manifest "
                             f"expects {exp} (channels {list(manifest.channels)}, classes "
                             f"{list(manifest.class_names)}, {manifest.window_s} s at {manifest.sample_rate_hz} Hz)")
    if entry is not None and isinstance(backend, PteBackend) and "delegate" in entry:
        has_xnn = "XnnpackBackend" in backend.delegates
        want = entry.get("delegate")
        if (want == "xnnpack") != has_xnn:
            raise ValueError(f"model file {str(path)!r} has delegates {backend.delegates}; the manifest lists "
                             f"delegate {want!r}")
    if backend.embedded_metadata is not None:
        check_embedded_metadata(backend.embedded_metadata, manifest, where=f"model file {str(path)!r}",
                                precision=None if entry is None else entry.get("precision"))


def check_embedded_metadata(meta: dict, manifest: Any, *, where: str, precision: str | None = None) -> None:
    """Compare an artifact's embedded contract with a manifest, in full.

    Parameters
    ----------
    meta : dict
        Decoded contract (field -> value), as ``backend.embedded_metadata``.
    manifest : Manifest
    where : str
        Names the artifact in messages.
    precision : str, optional
        The manifest entry's precision, compared with ``meta["precision"]``
        when both are present.

    Raises
    ------
    ValueError
        If a field of :data:`CONTRACT_FIELDS` is missing from ``meta`` or
        invalid, or differs from the manifest's (channels, units, classes,
        sample rate, window, hop, sample counts, purity, normalization, model
        name and config, layout, tensor names, version), or the precisions
        differ; the message names the field and gives both values.
    """
    if not isinstance(meta, dict):
        raise ValueError(f"{where}: embedded contract is a {type(meta).__name__}; expected an object")
    missing = [k for k in CONTRACT_FIELDS if k not in meta]
    if missing:
        raise ValueError(f"{where} embeds an incomplete imutune contract (missing {missing}); it was exported by "
                         "an older imutune or altered: re-export it")
    spec = Preprocessing.from_dict({k: meta[k] for k in CONTRACT_KEYS}, source=f"{where} (embedded contract)",
                                   require_normalization=True)
    diffs = spec.differences(manifest.preprocessing)
    if spec.units != manifest.preprocessing.units and not any(d[0] == "units" for d in diffs):
        diffs.append(("units", None if spec.units is None else list(spec.units),
                      None if manifest.units is None else list(manifest.units)))
    man = manifest.to_dict()
    for field in CONTRACT_FIELDS[len(CONTRACT_KEYS):]:
        a, b = meta[field], json.loads(json.dumps(man[field]))
        if a != b:
            diffs.append((field, a, b))
    if diffs:
        field, a, b = diffs[0]
        more = f" (also {', '.join(d[0] for d in diffs[1:])})" if len(diffs) > 1 else ""
        raise ValueError(f"{where} was exported for {field} = {a!r}, but the manifest says {b!r}{more}; the "
                         "artifact and the manifest do not belong together (re-export, or use the manifest "
                         "written with this artifact)")
    if precision is not None and meta.get("precision") not in (None, precision):
        raise ValueError(f"{where} was exported with precision {meta.get('precision')!r}, but the manifest "
                         f"lists precision {precision!r}")
