"""Post-training static int8 quantization for both export formats, and its accuracy cost.

Both flows are *static*: activation ranges are calibrated once, offline, on
training windows (normalized, float32, shape (N, C, T)), so the phone runs
integer kernels without computing ranges at run time.

* ExecuTorch (:func:`quantize_pt2e_xnnpack`): PT2E quantization with the
  XNNPACK quantizer -- ``torch.export`` -> ``prepare_pt2e`` (folds batch norm
  into the convs and inserts observers) -> calibration forward passes ->
  ``convert_pt2e`` (quantize/dequantize pairs) -- after which
  :func:`imutune.deploy.export.export_pte` lowers the graph to XNNPACK, whose int8
  kernels replace each dq -> op -> q pattern. Scheme: symmetric int8
  weights, per output channel; int8 activations with per-tensor affine
  ranges (``get_symmetric_quantization_config(is_per_channel=True)``).
* ONNX Runtime (:func:`quantize_onnx`): ``quant_pre_process`` (shape
  inference, graph optimization with conv + batch-norm fusion), then
  ``quantize_static`` in QDQ format (QuantizeLinear/DequantizeLinear around
  each quantized op, the format ONNX Runtime fuses into QLinearConv etc.).
  Defaults: weights int8 symmetric per channel, activations uint8 (the
  u8s8 combination ONNX Runtime's x86 and Arm int8 kernels are fastest
  with; s8s8 runs through slower paths on x86 -- measured about 3.4x
  slower for resnet1d34 here), MinMax calibration.

:func:`int8_accuracy_report` compares an int8 backend with its fp32
counterpart on the same held-out windows: accuracy and macro-F1 of both,
the change in percentage points, the top-1 agreement and the largest logit
difference.
"""
from __future__ import annotations

import os
import tempfile
from typing import Any

import numpy as np

from .. import _validation as V
from .. import metrics

__all__ = ["calibration_subset", "quantize_pt2e_xnnpack", "quantize_onnx", "predict_backend",
           "int8_accuracy_report", "ONNX_ACTIVATION_TYPES", "DEFAULT_MAX_CALIBRATION_WINDOWS"]

#: ``activation_type`` values of :func:`quantize_onnx`.
ONNX_ACTIVATION_TYPES = ("uint8", "int8")
#: Calibration windows used at most (a seeded random subset of larger sets).
DEFAULT_MAX_CALIBRATION_WINDOWS = 256


def calibration_subset(windows: Any, *, max_windows: int = DEFAULT_MAX_CALIBRATION_WINDOWS,
                       seed: int = 0) -> np.ndarray:
    """A seeded random subset of at most ``max_windows`` calibration windows.

    Parameters
    ----------
    windows : np.ndarray or torch.Tensor
        Array of shape (N, C, T), float32, finite, normalized training windows.
    max_windows : int, default 256
    seed : int, default 0

    Returns
    -------
    np.ndarray
        Array of shape (min(N, max_windows), C, T), float32, in the original order.

    Raises
    ------
    ValueError
        If ``windows`` is not a finite float32 (N, C, T) array with N >= 1.
    """
    x = _as_windows("calibration_windows", windows)
    V.check_int_at_least("max_windows", max_windows, 1)
    if x.shape[0] <= max_windows:
        return x
    idx = np.sort(np.random.default_rng(seed).choice(x.shape[0], size=max_windows, replace=False))
    return np.ascontiguousarray(x[idx])


def _as_windows(name: str, windows: Any) -> np.ndarray:
    """Float32 (N, C, T) finite windows as a contiguous numpy array (the export's input check)."""

    return V.check_windows(name, windows, finite=True)


# --------------------------------------------------------------------------- ExecuTorch / PT2E


def quantize_pt2e_xnnpack(model: Any, example_input: Any, calibration_windows: Any, *,
                          per_channel: bool = True):
    """Quantize a float model to int8 with PT2E and the XNNPACK quantizer.

    Parameters
    ----------
    model : torch.nn.Module
        In eval mode; maps (N, C, T) float32 to logits (N, K).
    example_input : torch.Tensor
        Shape (B, C, T), float32: fixes the exported (static) input shape.
    calibration_windows : np.ndarray
        Array of shape (N, C, T), float32: normalized training windows, run
        through the observed graph 64 at a time (the graph is traced with a
        dynamic batch for calibration; where that fails, in batches of B,
        the example's batch, leaving out a last partial batch).
    per_channel : bool, default True
        Per-output-channel weight scales (per-tensor otherwise).

    Returns
    -------
    torch.fx.GraphModule
        The converted graph (quantize/dequantize pairs around int8 ops),
        ready for ``torch.export.export`` and XNNPACK lowering.

    Raises
    ------
    ValueError
        If the calibration windows do not match the example's (C, T).
    """
    import torch
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    calib = _as_windows("calibration_windows", calibration_windows)
    b, c, t = example_input.shape
    if calib.shape[1:] != (c, t):
        raise ValueError(f"calibration_windows have shape {calib.shape}; expected (N, {c}, {t}) like the "
                         "example input")
    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=bool(per_channel)))
    prepared, batched = _prepare_for_calibration(model, example_input, quantizer, prepare_pt2e)
    n = calib.shape[0]
    with torch.no_grad():
        if batched:          # the observed graph takes any batch: calibrate 64 windows per call
            for start in range(0, n, 64):
                prepared(torch.from_numpy(np.ascontiguousarray(calib[start:start + 64])))
        else:
            if n < b:
                calib, n = np.resize(calib, (b, c, t)).astype(np.float32), b
            for start in range(0, n - b + 1, b):
                prepared(torch.from_numpy(np.ascontiguousarray(calib[start:start + b])))
    return convert_pt2e(prepared)


def _prepare_for_calibration(model, example_input, quantizer, prepare_pt2e):
    """(observed graph, takes_any_batch): traced with a dynamic batch if possible, else the example's."""
    import torch
    from torch.export import Dim

    x2 = example_input.repeat(2, 1, 1) if example_input.shape[0] == 1 else example_input
    try:
        graph = torch.export.export(model, (x2,), dynamic_shapes=({0: Dim("batch", min=1, max=4096)},)).module()
        return prepare_pt2e(graph, quantizer), True
    except Exception:  # a model whose graph depends on the batch size: calibrate at the example's batch
        graph = torch.export.export(model, (example_input,)).module()
        return prepare_pt2e(graph, quantizer), False


# --------------------------------------------------------------------------- ONNX Runtime


def quantize_onnx(model: Any, calibration_windows: Any, *, per_channel: bool = True,
                  activation_type: str = "uint8", input_name: str = "x"):
    """Static int8 quantization (QDQ format) of an fp32 ONNX model with ONNX Runtime.

    Parameters
    ----------
    model : onnx.ModelProto or path-like
        The fp32 model (self-contained).
    calibration_windows : np.ndarray
        Array of shape (N, C, T), float32: normalized training windows, fed
        one at a time to calibrate activation ranges (MinMax).
    per_channel : bool, default True
        Per-output-channel weight scales.
    activation_type : {"uint8", "int8"}, default "uint8"
        Activation type; weights are always int8 (symmetric).
    input_name : str, default "x"

    Returns
    -------
    onnx.ModelProto
        The QDQ model; the fp32 model's ``metadata_props`` are kept and
        ``imutune.precision`` is set to ``"int8"``.

    Raises
    ------
    ValueError
        If ``activation_type`` is unknown or quantization fails.
    """
    import json

    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    V.check_choice("activation_type", activation_type, ONNX_ACTIVATION_TYPES)
    calib = _as_windows("calibration_windows", calibration_windows)
    proto = model if isinstance(model, onnx.ModelProto) else onnx.load(str(model))
    props = {p.key: p.value for p in proto.metadata_props}

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter(range(calib.shape[0]))

        def get_next(self):
            i = next(self._it, None)
            return None if i is None else {input_name: calib[i:i + 1]}

    with tempfile.TemporaryDirectory(prefix="imutune-quant-") as tmp:
        src, pre, dst = (os.path.join(tmp, n) for n in ("fp32.onnx", "pre.onnx", "int8.onnx"))
        onnx.save(proto, src)
        try:
            quant_pre_process(src, pre, skip_symbolic_shape=True)
            quantize_static(pre, dst, _Reader(), quant_format=QuantFormat.QDQ, per_channel=bool(per_channel),
                            activation_type=QuantType.QUInt8 if activation_type == "uint8" else QuantType.QInt8,
                            weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax)
        except Exception as e:  # onnxruntime raises assorted types
            raise ValueError(f"ONNX Runtime static quantization failed: {type(e).__name__}: {e}") from e
        out = onnx.load(dst)
    have = {p.key for p in out.metadata_props}
    props["imutune.precision"] = json.dumps("int8")
    for k, v in props.items():
        if k in have:
            for p in out.metadata_props:
                if p.key == k:
                    p.value = v
            continue
        entry = out.metadata_props.add()
        entry.key, entry.value = k, v
    return out


# --------------------------------------------------------------------------- accuracy


def predict_backend(backend: Any, x: np.ndarray, *, batch_size: int = 64) -> np.ndarray:
    """Logits of a backend (``run(x) -> (N, K)``) on windows ``x``, (N, K) float32."""
    x = _as_windows("x", x)
    outs = [np.asarray(backend.run(np.ascontiguousarray(x[s:s + batch_size])), dtype=np.float32)
            for s in range(0, x.shape[0], batch_size)]
    return np.concatenate(outs, axis=0)


def int8_accuracy_report(fp32: Any, int8: Any, x: Any, y: Any, *, num_classes: int | None = None) -> dict:
    """Accuracy of an int8 model against its fp32 counterpart on the same windows.

    Parameters
    ----------
    fp32, int8 : backend or np.ndarray
        Objects with ``run(x) -> logits`` (e.g. :class:`imutune.deploy.backends.OnnxBackend`,
        ``PteBackend``, ``TorchBackend``), or precomputed logits of shape (N, K).
    x : np.ndarray
        Array of shape (N, C, T), float32: normalized held-out windows.
    y : np.ndarray
        Array of shape (N,), int: their labels.
    num_classes : int, optional
        K for macro-F1 (default: from the logits).

    Returns
    -------
    dict
        ``{"n": N, "fp32": {"accuracy", "macro_f1"}, "int8": {...},
        "accuracy_change_points": 100 * (int8 - fp32) accuracy,
        "macro_f1_change_points", "top1_agreement" (fraction of windows with
        the same argmax), "max_abs_logit_err"}``.

    Raises
    ------
    ValueError
        If shapes disagree.
    """
    x = _as_windows("x", x)
    y = np.asarray(y).astype(np.int64)
    if y.shape != (x.shape[0],):
        raise ValueError(f"y must have shape ({x.shape[0]},), got {y.shape}")
    lf = fp32 if isinstance(fp32, np.ndarray) else predict_backend(fp32, x)
    lq = int8 if isinstance(int8, np.ndarray) else predict_backend(int8, x)
    if lf.shape != lq.shape or lf.shape[0] != x.shape[0]:
        raise ValueError(f"fp32 logits {lf.shape} and int8 logits {lq.shape} must both be ({x.shape[0]}, K)")
    k = int(num_classes) if num_classes is not None else lf.shape[1]
    pf, pq = lf.argmax(1), lq.argmax(1)
    res = {"n": int(x.shape[0])}
    for name, p in (("fp32", pf), ("int8", pq)):
        res[name] = {"accuracy": metrics.accuracy(y, p), "macro_f1": metrics.macro_f1(y, p, k)}
    res["accuracy_change_points"] = 100.0 * (res["int8"]["accuracy"] - res["fp32"]["accuracy"])
    res["macro_f1_change_points"] = 100.0 * (res["int8"]["macro_f1"] - res["fp32"]["macro_f1"])
    res["top1_agreement"] = float(np.mean(pf == pq))
    res["max_abs_logit_err"] = float(np.max(np.abs(lf.astype(np.float64) - lq)))
    return res
