"""Export the codec's phone-side encoder (normalization + analysis transform + rounding) to ONNX and
ExecuTorch ``.pte``, with a parity check on real segments.

The exported graph is :class:`imutune.codec.model.EncoderGraph`: input ``x`` of shape (N, C, T)
float32, raw segments in physical units; output (N, L * T') float32, the rounded latents,
channel-major. It reuses :func:`imutune.deploy.export.export_onnx` (dynamo export, dynamic batch)
and :func:`imutune.deploy.export.export_pte` (XNNPACK delegate with the Conv1d -> Conv2d rewrite
:func:`imutune.deploy.export.conv1d_as_conv2d`; batch 1). The ONNX file carries the codec id and
contract in ``metadata_props`` (``imutune.codec_id``, ``imutune.codec_contract``).

Parity (issue 10): on real segments, the rounded latents of each artifact must equal eager
torch's on at least ``min_identical`` (default 99.9%) of the elements, and the rest may differ by
at most one (a value that sits at a rounding boundary can flip). ``encoder_manifest.json`` records
file names, SHA-256, the codec id and the parity figures.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import _validation as V
from .._io import sha256_file, write_bytes_atomic, write_json_atomic
from .model import LearnedCodec, codec_contract, codec_hash

__all__ = ["export_encoder", "latent_parity", "ENCODER_FILES"]

#: Variant -> file name written by :func:`export_encoder`.
ENCODER_FILES = {"onnx": "encoder.onnx", "pte": "encoder.pte"}


def latent_parity(reference: np.ndarray, got: np.ndarray) -> dict[str, float]:
    """Agreement of two rounded-latent arrays of equal shape.

    Returns ``{"identical_fraction", "max_abs_diff", "n_elements"}``.
    """
    ref = np.asarray(reference, np.float64)
    g = np.asarray(got, np.float64)
    if ref.shape != g.shape:
        raise ValueError(f"latents have shape {g.shape}; the reference has {ref.shape}")
    d = np.abs(ref - g)
    return {"identical_fraction": float(np.mean(d == 0)) if d.size else 1.0,
            "max_abs_diff": float(d.max(initial=0.0)) if np.all(np.isfinite(d)) else float("inf"),
            "n_elements": int(d.size)}


def export_encoder(codec: LearnedCodec, out_dir: str | os.PathLike, segments: np.ndarray, *,
                   formats: tuple[str, ...] = ("onnx", "pte"), min_identical: float = 0.999,
                   num_threads: int = 1) -> dict[str, Any]:
    """Export the encoder and check parity on real segments.

    Parameters
    ----------
    codec : LearnedCodec
    out_dir : path-like
        Folder for ``encoder.onnx``, ``encoder.pte`` and ``encoder_manifest.json``.
    segments : np.ndarray
        Array of shape (N, C, T), float32: real raw segments (physical units) for tracing and the
        parity check.
    formats : tuple of str
        ``"onnx"`` and/or ``"pte"``.
    min_identical : float
        Smallest allowed fraction of identical rounded latents.
    num_threads : int
        Threads of the backends in the parity check.

    Returns
    -------
    dict
        The encoder manifest: ``codec_id``, ``contract``, and per file ``sha256``, ``size_bytes``,
        ``graph_rewrite`` (pte), ``identical_fraction``, ``max_abs_diff``, ``n_elements``.

    Raises
    ------
    ValueError
        If ``segments`` do not fit the codec, a format is unknown, or an artifact fails parity (then
        nothing is written to ``out_dir``).
    """
    x = V.check_windows("segments", segments, in_channels=len(codec.channels),
                        window_samples=codec.segment_samples, expected_by="the codec", finite=True,
                        allow_tensor=False)
    formats = tuple(formats)
    if not formats:
        raise ValueError(f"formats must name at least one of {sorted(ENCODER_FILES)}, got {formats!r}")
    for f in formats:
        V.check_choice("formats entry", f, tuple(ENCODER_FILES))
    V.check_fraction("min_identical", min_identical)
    V.check_int_at_least("num_threads", num_threads, 1)
    return _compute_export(codec, Path(out_dir), x, formats, float(min_identical), num_threads)


def _compute_export(codec, out: Path, x, formats, min_identical, num_threads) -> dict[str, Any]:
    from ..deploy.backends import load_backend
    from ..deploy.export import _compute_pte, export_onnx

    graph = codec.encoder_graph().eval()
    with torch.inference_mode():
        ref = graph(torch.from_numpy(x)).numpy()
    cid = codec_hash(codec)
    manifest: dict[str, Any] = {"codec_id": cid[:32], "codec_sha256": cid, "contract": codec_contract(codec),
                                "input": "x (N, C, T) float32, raw segments in physical units",
                                "output": "rounded latents (N, L*T') float32, channel-major", "artifacts": {}}
    out.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".imutune-codec-export-", dir=out))
    try:
        staged = {}
        for fmt in formats:
            name = ENCODER_FILES[fmt]
            entry: dict[str, Any] = {"format": fmt}
            if fmt == "onnx":
                proto = export_onnx(graph, x[:2])
                for key, value in (("imutune.codec_id", json.dumps(cid[:32])),
                                   ("imutune.codec_contract", json.dumps(codec_contract(codec)))):
                    p = proto.metadata_props.add()
                    p.key, p.value = key, value
                data = proto.SerializeToString()
            else:
                prog, extra = _compute_pte(graph, torch.from_numpy(x[:1]), "xnnpack")
                data = prog.buffer
                entry.update(delegate="xnnpack", **extra)
            path = write_bytes_atomic(staging / name, data)
            backend = load_backend(path, num_threads=num_threads)
            got = np.concatenate([backend.run(np.ascontiguousarray(x[s:s + 256])) for s in range(0, x.shape[0], 256)])
            par = latent_parity(ref, got)
            if not (par["identical_fraction"] >= min_identical and par["max_abs_diff"] <= 1.0):
                raise ValueError(f"encoder parity failed for {name} ({backend.name}): rounded latents identical on "
                                 f"{par['identical_fraction']:.4%} of {par['n_elements']} elements (expected >= "
                                 f"{min_identical:.1%}), max difference {par['max_abs_diff']:g} (expected <= 1). "
                                 f"Nothing was written to {str(out)!r}")
            entry.update(sha256=sha256_file(path), size_bytes=len(data), backend=backend.name, **par)
            manifest["artifacts"][name] = entry
            staged[name] = path
        for name, path in staged.items():
            os.replace(path, out / name)
        write_json_atomic(out / "encoder_manifest.json", manifest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return manifest
