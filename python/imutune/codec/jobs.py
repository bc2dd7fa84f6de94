"""Codec jobs behind ``imutune codec train|encode|decode``: load files, call the library, write
artifacts atomically with the config they ran with."""
from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .._io import write_json_atomic
from ..data.recordings import Recording, load_many, save_npz
from ..signal.windows import WindowConfig, make_windows, resample_recording
from ..train.bundle import load_bundle, save_bundle
from .bitstream import decode_stream, encode_recording, rate_estimate_bits, read_imz, segment_values, write_imz
from .model import CodecConfig, codec_hash, load_codec, save_codec
from .train import CodecTrainConfig, train_codec

__all__ = ["run_codec_train", "run_codec_encode", "run_codec_decode", "prepare_recording"]


def prepare_recording(rec: Recording, channels: Sequence[str], sample_rate_hz: float) -> Recording:
    """``rec`` with the codec's channels in order, resampled to its sample rate."""
    return resample_recording(rec.select_channels(channels), sample_rate_hz)


def run_codec_train(data: Sequence[str | os.PathLike], out_dir: str | os.PathLike, *,
                    config: CodecTrainConfig = CodecTrainConfig(), codec_config: CodecConfig | None = None,
                    classifier: str | os.PathLike | None = None, init: str | os.PathLike | None = None,
                    sample_rate_hz: float | None = None, export: bool = True,
                    progress: bool = True) -> dict[str, Any]:
    """Train a codec on recordings and write it (``codec.json``, ``codec.safetensors``,
    ``codec_train_config.json``; in joint mode the trained classifier in ``OUT/classifier``; with
    ``export`` the encoder ``.onnx`` / ``.pte`` and ``encoder_manifest.json`` in ``OUT/encoder``).

    The sample rate is the classifier's (if given), else ``sample_rate_hz``, else 50 Hz; the
    channels are the classifier's, else the first recording's.

    Raises
    ------
    FileNotFoundError
        If a data path, the classifier or the init codec does not exist.
    ValueError
        As :func:`imutune.codec.train.train_codec`, or if no training chunk can be cut.
    """
    recs = load_many(data)
    bundle = load_bundle(classifier) if classifier is not None else None
    init_codec = load_codec(init) if init is not None else None
    if init_codec is not None:
        sr, channels = init_codec.sample_rate_hz, init_codec.channels
    elif bundle is not None:
        sr, channels = bundle.window.sample_rate_hz, bundle.channels
    else:
        sr, channels = float(sample_rate_hz or 50.0), recs[0].channels
    cfg = init_codec.config if init_codec is not None else \
        (codec_config or CodecConfig(in_channels=len(channels)))
    if cfg.in_channels != len(channels):
        raise ValueError(f"codec in_channels={cfg.in_channels} but the data/classifier has {len(channels)} channels "
                         f"{list(channels)}")
    seg_s = cfg.segment_samples / sr
    chunks = make_windows(recs, WindowConfig(window_s=2 * seg_s, hop_s=config.hop_s, sample_rate_hz=sr,
                                             min_purity=0.5), channels=channels)
    out = Path(out_dir)
    write_json_atomic(out / "codec_train_config.json", {"data": [str(p) for p in data], "train": asdict(config),
                                                        "codec": asdict(cfg), "classifier": str(classifier),
                                                        "init": str(init), "sample_rate_hz": sr})
    codec, new_clf = train_codec(chunks, config=config, codec_config=cfg, sample_rate_hz=sr, classifier=bundle,
                                 init=init_codec, progress=progress)
    save_codec(codec, out)
    res: dict[str, Any] = {"out": str(out), "codec_id": codec_hash(codec)[:32], "mode": config.mode,
                           "n_chunks": len(chunks), "parameters": codec.info["parameters"],
                           "train_bits_per_sample": codec.info["history"]["bits_per_sample"][-1],
                           "train_mse": codec.info["history"]["mse"][-1]}
    if new_clf is not None:
        save_bundle(new_clf, out / "classifier")
        res["classifier"] = str(out / "classifier")
    if export:
        from .export import export_encoder

        segs = np.concatenate([segment_values(prepare_recording(r, channels, sr).values, cfg.segment_samples)
                               for r in recs[:20]])[:512]
        m = export_encoder(codec, out / "encoder", segs)
        res["encoder"] = {k: {f: v[f] for f in ("identical_fraction", "max_abs_diff", "size_bytes")}
                          for k, v in m["artifacts"].items()}
    return res


def run_codec_encode(codec_dir: str | os.PathLike, data: Sequence[str | os.PathLike],
                     out: str | os.PathLike) -> dict[str, Any]:
    """Encode recordings into ``.imz`` files.

    One recording and ``out`` ending in ``.imz``: that file. Otherwise ``out`` is a folder and
    each recording becomes ``<name>.imz`` in it. Recordings are brought to the codec's channels
    and sample rate first.

    Returns
    -------
    dict
        Per file: ``bytes`` (measured), ``bits_per_sample``, ``estimate_bits_per_sample`` (the model's
        ``-sum log2 likelihood``), ``ratio_vs_float32``, ``bytes_per_second``.
    """
    codec = load_codec(codec_dir)
    recs = load_many(data)
    target = Path(out)
    single = len(recs) == 1 and target.suffix.lower() == ".imz"
    if not single and target.suffix.lower() == ".imz":
        raise ValueError(f"--out {str(target)!r} names one .imz file but {len(recs)} recordings were given; "
                         "pass a folder")
    files: dict[str, Any] = {}
    for rec in recs:
        r = prepare_recording(rec, codec.channels, codec.sample_rate_hz)
        data_bytes = encode_recording(codec, r)
        path = target if single else target / f"{r.name or r.user}.imz"
        write_imz(path, data_bytes)
        n = r.values.size
        files[str(path)] = {"bytes": len(data_bytes), "bits_per_sample": 8 * len(data_bytes) / n,
                            "estimate_bits_per_sample": rate_estimate_bits(codec, r.values) / n,
                            "ratio_vs_float32": 4 * n / len(data_bytes),
                            "bytes_per_second": len(data_bytes) / r.duration_s}
    return {"codec_id": codec_hash(codec)[:32], "files": files}


def run_codec_decode(codec_dir: str | os.PathLike, in_file: str | os.PathLike,
                     out: str | os.PathLike) -> dict[str, Any]:
    """Decode an ``.imz`` file into a generic ``.npz`` recording (usable by ``imutune finetune``).

    Raises
    ------
    FileNotFoundError
        If the codec or the stream does not exist.
    ValueError
        If the stream is not ``.imz``, truncated, corrupt, from another codec, or its segment count
        disagrees with its header; nothing is written then.
    """
    codec = load_codec(codec_dir)
    data = read_imz(in_file)
    dec = decode_stream(codec, data, where=f"codec stream {str(in_file)!r}")
    if Path(out).suffix.lower() != ".npz":
        raise ValueError(f"--out {str(out)!r} must end in .npz (a generic recording file)")
    save_npz(dec.recording, out)
    return {"out": str(out), "n_samples": dec.recording.n_samples, "n_segments": int(dec.header["n_segments"]),
            "file_bytes": dec.file_bytes, "payload_bytes": dec.payload_bytes}
