"""Codec benchmark: the learned codec (three training modes, a lambda sweep) against classic codecs.

``imutune bench codec --out DIR`` (or ``python benchmarks/codec.py --out DIR``), on the embedded
watch data with held-out users and the calibrate-then-use protocol
(:func:`imutune.personalize.protocols.calibrate_then_use`: per recording, the first half in time is
the user's calibration upload, the rest after a gap of one window is the test part):

1. a classifier (``mobilecnn1d``) is pretrained on the source subjects' windows;
2. codecs are trained on the source subjects' streams: codec-only, codec for the frozen classifier
   and joint (codec + classifier), at every lambda of the sweep (same epochs and seeds);
3. every target recording part is compressed by every method and operating point, as a real
   file: ``.imz`` for the learned codec (container header included), the classic stream bytes for
   float32, float16, int16 + zstd, delta + zstd (lossless) and uniform k-bit + zstd (k = 2..12);
4. per target user and operating point: bits per sample (measured bytes * 8 / values; for the
   learned codec also the payload alone and the model's estimate), ratio vs float32 and vs int16,
   PRD, PRDN (mean removed), SNR, encode and decode time; macro-F1 of the classifier on decoded
   test windows (the joint mode's own classifier for joint); and macro-F1 of a model personalized
   (fine-tuned from the mode's classifier) on the *decoded calibration upload* and tested on the
   *raw* test part, the user's real path; beside it, the classical reference
   (:func:`imutune.personalize.reference.reference_score`: a RandomForest on per-window statistics)
   fitted on the same decoded calibration windows and scored on the same raw test windows, and once
   on the raw upload;
5. the encoder of one learned codec is exported to ONNX and ``.pte`` (parity on the target users'
   real segments) and its encode latency per segment at 1 thread, entropy coding included, is
   measured for eager torch, ONNX Runtime and ExecuTorch XNNPACK, with bytes per second.

PRD / PRDN / SNR are per channel (units differ), then averaged over channels:
``PRD = 100 * sqrt(sum (x - x_hat)^2 / sum x^2)``, ``PRDN`` the same with the recording's channel
mean removed from ``x`` in the denominator, ``SNR = 10 log10(sum (x - mean)^2 / sum (x - x_hat)^2)``
in dB (so ``SNR = -20 log10(PRDN / 100)``).

Outputs: ``codec.json``, ``codec.md``, ``codec_rate_accuracy.png`` (personalized macro-F1 and
classifier macro-F1 against bits per sample) and ``codec_rate_distortion.png`` in ``out_dir``.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from .. import _validation as V
from ..codec.bitstream import StreamEncoder, decode_stream, encode_recording, rate_estimate_bits, segment_values
from ..codec.classic import ClassicCodec
from ..codec.model import CodecConfig, LearnedCodec, load_codec, save_codec
from ..codec.train import CodecTrainConfig, train_codec
from ..data.recordings import Recording, load_watch
from ..metrics import macro_f1
from ..personalize.finetune import FinetuneConfig, finetune
from ..personalize.protocols import calibrate_then_use
from ..personalize.reference import reference_score
from ..signal.windows import WindowConfig, Windows, make_windows
from ..train.bundle import ModelBundle, load_bundle, save_bundle
from ..train.loop import FINETUNE, PRETRAIN, TrainConfig, predict_logits
from ..train.pretrain import pretrain
from .report import cached_bundle, cached_json_value
from .report import host_info, load_average_text, markdown_table, new_figure, write_report

__all__ = ["CodecBenchConfig", "quick_config", "run_codec_bench", "distortion_metrics"]


@dataclass(frozen=True)
class CodecBenchConfig:
    """Settings of ``imutune bench codec``."""

    source_subjects: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 7)    # pretraining and codec training
    test_subjects: tuple[int, ...] = (8, 9, 10)                  # held-out users
    classifier_model: str = "mobilecnn1d"
    window: WindowConfig = WindowConfig(window_s=2.0, hop_s=0.5, sample_rate_hz=50.0)
    pretrain: TrainConfig = replace(PRETRAIN, epochs=15)
    finetune: FinetuneConfig = FinetuneConfig(train=replace(FINETUNE, epochs=15), loss="ce")
    calibration_fraction: float = 0.5
    codec: CodecConfig = CodecConfig(hidden_channels=32)
    modes: tuple[str, ...] = ("codec", "classifier", "joint")
    lambdas: tuple[float, ...] = (8.0, 16.0, 64.0, 512.0)        # 4096 sat at the 512 rate in the first run
    codec_epochs: int = 50                                       # 2300 steps at hop 1 s (10 epochs left PRDN ~30 %)
    codec_hop_s: float = 1.0                                     # hop of the codec training chunks
    beta: float = 0.1
    kbits: tuple[int, ...] = tuple(range(2, 13))
    latency_lambda_index: int = 1                                # which codec-only point is exported and timed
    latency_segments: int = 300
    export_latency: bool = True                                  # export the encoder and time it (off in tests)
    threads: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.test_subjects or set(self.test_subjects) & set(self.source_subjects):
            raise ValueError(f"test_subjects {self.test_subjects} must be non-empty and disjoint from "
                             f"source_subjects {self.source_subjects}")
        for k in self.kbits:
            if not 2 <= int(k) <= 16:
                raise ValueError(f"kbits entries must be in [2, 16], got {k!r}")
        if not self.lambdas:
            raise ValueError("lambdas must not be empty")
        V.check_int_at_least("threads", self.threads, 1)
        V.check_int_at_least("codec_epochs", self.codec_epochs, 1)


def quick_config(**overrides: Any) -> CodecBenchConfig:
    """A reduced run: 2 source and 1 test subject, two lambdas, few epochs and k values."""
    base = CodecBenchConfig(source_subjects=(1, 2, 3), test_subjects=(10,), lambdas=(8.0, 64.0), codec_epochs=3,
                            pretrain=replace(PRETRAIN, epochs=4),
                            finetune=FinetuneConfig(train=replace(FINETUNE, epochs=4), loss="ce"),
                            kbits=(2, 4, 8), latency_lambda_index=0, latency_segments=60)
    return replace(base, **overrides)


def distortion_metrics(x: np.ndarray, x_hat: np.ndarray) -> dict[str, float]:
    """Per-channel PRD, PRDN (%) and SNR (dB) of streams (S, C), averaged over channels (see module doc)."""
    x = np.asarray(x, np.float64)
    e = np.asarray(x_hat, np.float64) - x
    se = (e ** 2).sum(axis=0)
    p = (x ** 2).sum(axis=0)
    pc = ((x - x.mean(axis=0)) ** 2).sum(axis=0)
    tiny = 1e-30
    return {"prd": float(np.mean(100 * np.sqrt(se / np.maximum(p, tiny)))),
            "prdn": float(np.mean(100 * np.sqrt(se / np.maximum(pc, tiny)))),
            "snr_db": float(np.mean(10 * np.log10(np.maximum(pc, tiny) / np.maximum(se, tiny))))}


def _fp(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _replace_values(rec: Recording, values: np.ndarray) -> Recording:
    return Recording(values, rec.labels, rec.sample_rate_hz, rec.channels, rec.class_names, rec.user, rec.name,
                     dict(rec.meta))


def _f1(bundle: ModelBundle, w: Windows) -> float:
    pred = predict_logits(bundle.model, bundle.normalizer(w.x), device="cpu").argmax(1)
    return macro_f1(w.y, pred, w.num_classes)


# --------------------------------------------------------------------------- methods


@dataclass
class _Point:
    family: str                 # "float32", "float16", "int16-zstd", "delta-zstd", "k-bit", "learned/<mode>"
    name: str
    param: float | None
    codec: Any = None           # ClassicCodec or LearnedCodec
    classifier: ModelBundle | None = None
    per_user: dict = field(default_factory=dict)


def _code(point: _Point, rec: Recording) -> tuple[np.ndarray, dict[str, float]]:
    """Compress and decompress one recording part; returns (decoded values, sizes and times)."""
    t0 = time.perf_counter()
    if isinstance(point.codec, LearnedCodec):
        data = encode_recording(point.codec, rec)
        t1 = time.perf_counter()
        dec = decode_stream(point.codec, data)
        t2 = time.perf_counter()
        return dec.recording.values, {"bytes": len(data), "payload_bytes": dec.payload_bytes,
                                      "estimate_bits": rate_estimate_bits(point.codec, rec.values),
                                      "encode_s": t1 - t0, "decode_s": t2 - t1}
    data = point.codec.encode(rec.values, channels=rec.channels)
    t1 = time.perf_counter()
    vals = point.codec.decode(data)
    t2 = time.perf_counter()
    return vals, {"bytes": len(data), "payload_bytes": len(data), "estimate_bits": 8.0 * len(data),
                  "encode_s": t1 - t0, "decode_s": t2 - t1}


def _evaluate_point(point: _Point, base: ModelBundle, users: dict, cfg: CodecBenchConfig,
                    raw_reference: dict | None) -> None:
    clf = point.classifier or base
    for user, (cal, test, test_w) in users.items():
        sizes = {"bytes": 0, "payload_bytes": 0, "estimate_bits": 0.0, "encode_s": 0.0, "decode_s": 0.0}
        xs, xhs, dec_cal, dec_test = [], [], [], []
        n_values, dur = 0, 0.0
        for part, out in ((cal, dec_cal), (test, dec_test)):
            for rec in part:
                vals, s = _code(point, rec)
                for k in sizes:
                    sizes[k] += s[k]
                xs.append(rec.values)
                xhs.append(vals)
                out.append(_replace_values(rec, vals))
                n_values += rec.values.size
                dur += rec.duration_s
        dist = distortion_metrics(np.concatenate(xs), np.concatenate(xhs))
        lossless = all(np.array_equal(a, b) for a, b in zip(xs, xhs))
        row: dict[str, Any] = {"bits_per_sample": 8.0 * sizes["bytes"] / n_values,
                               "payload_bits_per_sample": 8.0 * sizes["payload_bytes"] / n_values,
                               "estimate_bits_per_sample": sizes["estimate_bits"] / n_values,
                               "bytes": int(sizes["bytes"]), "bytes_per_second": sizes["bytes"] / dur,
                               "encode_ms_per_s": 1e3 * sizes["encode_s"] / dur,
                               "decode_ms_per_s": 1e3 * sizes["decode_s"] / dur, "lossless": bool(lossless), **dist}
        row["ratio_vs_float32"] = 32.0 / row["bits_per_sample"]
        row["ratio_vs_int16"] = 16.0 / row["bits_per_sample"]
        dtw = make_windows(dec_test, clf.window, channels=clf.channels)
        row["classifier_macro_f1_decoded"] = _f1(clf, dtw)
        if lossless and raw_reference is not None and point.classifier is None:
            row["personalized_macro_f1"] = raw_reference[user]     # identical input -> identical (seeded) result
            row["personalized_reused_raw"] = True
        else:
            cw = make_windows(dec_cal, clf.window, channels=clf.channels)
            tuned = finetune(clf, cw, config=cfg.finetune, progress=False)
            row["personalized_macro_f1"] = _f1(tuned, test_w)
        row["classifier_macro_f1_raw"] = _f1(clf, test_w)
        point.per_user[user] = row


def _evaluate_cached(out: Path, point: _Point, base: ModelBundle, users: dict, cfg: CodecBenchConfig,
                     raw_reference: dict, log) -> None:
    """:func:`_evaluate_point`, reusing ``out/points/<name>.json`` when its fingerprint matches (same codec,
    classifier, users, protocol and fine-tuning settings)."""
    fp = _fp({"codec": _codec_ident(point), "name": point.name, "base": base.info.get("bench_fingerprint"),
              "clf": point.classifier.info.get("codec_lambda") if point.classifier else None,
              "users": sorted(users), "finetune": asdict(cfg.finetune), "window": asdict(cfg.window),
              "cal": cfg.calibration_fraction, "raw": raw_reference})

    def compute() -> dict:
        _evaluate_point(point, base, users, cfg, raw_reference)
        return point.per_user

    point.per_user = cached_json_value(out / "points" / (_point_file(point.name) + ".json"), fp, "per_user", compute,
                                       log=log, name=point.name)


def _reference_cached(out: Path, point: _Point, users: dict, cfg: CodecBenchConfig, window: WindowConfig,
                      channels: tuple[str, ...], log) -> None:
    """Add ``random_forest_macro_f1`` to every user's row of ``point``: the classical reference fitted on the
    user's *decoded* calibration windows and scored on the raw test windows (the personalized model's data).

    Cached apart from the fine-tuning, in ``out/points/<name>.reference.json`` (fingerprint: codec, users,
    window, protocol, seed), so it is computed once per operating point and a point's cached fine-tuning is
    not redone for it (the calibration parts are decoded again for it: milliseconds per second of data)."""
    fp = _fp({"codec": _codec_ident(point), "name": point.name, "users": sorted(users), "window": asdict(window),
              "channels": list(channels), "cal": cfg.calibration_fraction, "method": "random_forest",
              "seed": cfg.seed})

    def compute() -> dict:
        scores = {}
        for user, (cal, _test, test_w) in users.items():
            dec = [_replace_values(rec, _code(point, rec)[0]) for rec in cal]
            cw = make_windows(dec, window, channels=channels)
            scores[user] = reference_score(cw, test_w, method="random_forest", seed=cfg.seed)["macro_f1"]
        return scores

    per_user = cached_json_value(out / "points" / (_point_file(point.name) + ".reference.json"), fp, "per_user",
                                 compute, log=log, name=point.name)
    for user, row in point.per_user.items():
        row["random_forest_macro_f1"] = float(per_user[user])
        row["personalized_minus_random_forest"] = row["personalized_macro_f1"] - row["random_forest_macro_f1"]


def _codec_ident(point: _Point) -> Any:
    """What identifies a point's codec in a fingerprint: the learned codec's hash, a classic codec's settings."""
    from ..codec.model import codec_hash

    return codec_hash(point.codec) if isinstance(point.codec, LearnedCodec) else asdict(point.codec)


def _point_file(name: str) -> str:
    return name.replace(" ", "_").replace("=", "").replace("+", "_").replace("/", "_")


def _summary(point: _Point) -> dict[str, Any]:
    keys = next(iter(point.per_user.values())).keys()
    out: dict[str, Any] = {"family": point.family, "name": point.name, "param": point.param}
    for k in keys:
        vals = [r[k] for r in point.per_user.values()]
        if isinstance(vals[0], bool):
            out[k] = all(vals)
        elif isinstance(vals[0], (int, float)):
            out[k] = float(np.mean(vals))
    return out


# --------------------------------------------------------------------------- main


def run_codec_bench(out_dir: str, config: CodecBenchConfig = CodecBenchConfig(), *, command: str = "",
                    log=print) -> dict[str, Any]:
    """Run the codec benchmark (see the module docstring) and write its report.

    Returns
    -------
    dict
        The report (also ``codec.json``): ``config``, ``host``, ``points`` (per operating point:
        means over users and ``per_user``), ``latency``, ``export``, ``targets``.
    """
    import torch

    torch.set_num_threads(config.threads)
    cfg = config
    out = Path(out_dir)
    t_start = time.perf_counter()
    recs = load_watch()
    source = [r for r in recs if r.meta["subject"] in cfg.source_subjects]
    target = [r for r in recs if r.meta["subject"] in cfg.test_subjects]
    base = _pretrained(out, cfg, source, log)
    users: dict[str, tuple] = {}
    for u in sorted({r.user for r in target}):
        cal, test = calibrate_then_use([r for r in target if r.user == u], window_s=cfg.window.window_s,
                                       calibration_fraction=cfg.calibration_fraction)
        users[u] = (cal, test, make_windows(test, base.window, channels=base.channels))
    # reference: personalized on raw uploads
    raw_ref, rf_raw = {}, {}
    for u, (cal, test, tw) in users.items():
        cw = make_windows(cal, base.window, channels=base.channels)
        raw_ref[u] = _f1(finetune(base, cw, config=cfg.finetune, progress=False), tw)
        rf_raw[u] = reference_score(cw, tw, method="random_forest", seed=cfg.seed)["macro_f1"]
    log(f"[reference] personalized on raw: {raw_ref}")
    log(f"[reference] RandomForest on raw: {rf_raw}")
    points = [_Point("float32", "float32", None, ClassicCodec("float32")),
              _Point("float16", "float16", None, ClassicCodec("float16")),
              _Point("int16-zstd", "int16+zstd", None, ClassicCodec("int16-zstd")),
              _Point("delta-zstd", "delta+zstd", None, ClassicCodec("delta-zstd"))]
    points += [_Point("k-bit", f"{k}-bit+zstd", float(k), ClassicCodec("kbit-zstd", bits=int(k))) for k in cfg.kbits]
    chunks = make_windows(source, WindowConfig(window_s=2 * cfg.codec.segment_samples / cfg.window.sample_rate_hz,
                                               hop_s=cfg.codec_hop_s, sample_rate_hz=cfg.window.sample_rate_hz,
                                               min_purity=0.5), channels=base.channels)
    for mode in cfg.modes:
        for lm in cfg.lambdas:
            codec, clf = _trained_codec(out, cfg, chunks, base, mode, lm, log)
            points.append(_Point(f"learned/{mode}", f"learned {mode} lambda={lm:g}", float(lm), codec, clf))
    for p in points:
        t = time.perf_counter()
        _evaluate_cached(out, p, base, users, cfg, raw_ref, log)
        clf = p.classifier or base
        _reference_cached(out, p, users, cfg, clf.window, clf.channels, log)
        s = _summary(p)
        log(f"[{p.name}] {s['bits_per_sample']:.3f} bits/sample, PRDN {s['prdn']:.1f}%, classifier F1 "
            f"{s['classifier_macro_f1_decoded']:.3f}, personalized F1 {s['personalized_macro_f1']:.3f}, "
            f"RandomForest F1 {s['random_forest_macro_f1']:.3f} "
            f"({time.perf_counter() - t:.1f} s)")
    lat_codec = [p for p in points if p.family == "learned/codec"]
    lat_point = lat_codec[min(cfg.latency_lambda_index, len(lat_codec) - 1)] if lat_codec else \
        [p for p in points if p.family.startswith("learned/")][0]
    export, latency = _export_and_latency(out, lat_point.codec, users, cfg, log) if cfg.export_latency else \
        ({"artifacts": {}}, {"segment_s": lat_point.codec.segment_s})
    summaries = [_summary(p) for p in points]
    for s, p in zip(summaries, points):
        s["per_user"] = p.per_user
    report = {"command": command, "config": _config_dict(cfg), "host": host_info(),
              "reference_personalized_macro_f1_raw": raw_ref,
              "reference_personalized_macro_f1_raw_mean": float(np.mean(list(raw_ref.values()))),
              "reference_random_forest_macro_f1_raw": rf_raw,
              "reference_random_forest_macro_f1_raw_mean": float(np.mean(list(rf_raw.values()))),
              "base_classifier_macro_f1_raw": {u: _f1(base, tw) for u, (_, _, tw) in users.items()},
              "points": summaries, "latency": latency, "export": export,
              "latency_codec": lat_point.name, "seconds": time.perf_counter() - t_start}
    report["targets"] = _targets(report, points)
    write_report(out, "codec", report, _markdown(report), {"codec_rate_accuracy": _plot_accuracy(summaries, report),
                                                           "codec_rate_distortion": _plot_distortion(summaries)})
    return report


def _config_dict(cfg: CodecBenchConfig) -> dict:
    return json.loads(json.dumps(asdict(cfg), default=str))


def _pretrained(out: Path, cfg: CodecBenchConfig, source: list[Recording], log) -> ModelBundle:
    fp = _fp({"m": cfg.classifier_model, "s": cfg.source_subjects, "w": asdict(cfg.window), "t": asdict(cfg.pretrain),
              "seed": cfg.seed})
    folder = out / "classifier"
    b = cached_bundle(folder, fp)
    if b is not None:
        log(f"[pretrain] reusing {folder}")
        return b
    w = make_windows(source, cfg.window)
    b = pretrain(w, model_name=cfg.classifier_model, window=cfg.window, train_config=replace(cfg.pretrain, seed=cfg.seed),
                 progress=False)
    b = replace(b, info={**b.info, "bench_fingerprint": fp})
    save_bundle(b, folder)
    log(f"[pretrain] {cfg.classifier_model}: source macro-F1 {b.info.get('source_macro_f1', float('nan')):.3f}")
    return b


def _trained_codec(out: Path, cfg: CodecBenchConfig, chunks: Windows, base: ModelBundle, mode: str, lm: float,
                   log) -> tuple[LearnedCodec, ModelBundle | None]:
    tcfg = CodecTrainConfig(mode=mode, lmbda=lm, beta=cfg.beta, epochs=cfg.codec_epochs, hop_s=cfg.codec_hop_s,
                            seed=cfg.seed, device="cpu")
    fp = _fp({"t": asdict(tcfg), "c": asdict(cfg.codec), "s": cfg.source_subjects, "base": base.info.get("bench_fingerprint")})
    folder = out / "codecs" / f"{mode}_lambda{lm:g}"
    if (folder / "codec.json").exists():
        try:
            codec = load_codec(folder)
            if codec.info.get("bench_fingerprint") == fp:
                clf = load_bundle(folder / "classifier") if mode == "joint" else None
                log(f"[codec {mode} lambda={lm:g}] reusing {folder}")
                return _with_hints(codec, chunks), clf
        except (ValueError, FileNotFoundError):
            pass
    codec, clf = train_codec(chunks, config=tcfg, codec_config=cfg.codec, sample_rate_hz=cfg.window.sample_rate_hz,
                             classifier=base if mode != "codec" else None)
    codec = LearnedCodec(codec.model, codec.channels, codec.sample_rate_hz, codec.normalizer, codec.tables,
                         {**codec.info, "bench_fingerprint": fp}, codec.header_hints)
    if clf is not None:
        save_bundle(clf, folder / "classifier")
    save_codec(codec, folder)
    log(f"[codec {mode} lambda={lm:g}] trained in {codec.info['train_seconds']:.1f} s, "
        f"{codec.info['parameters']} parameters")
    return codec, clf


def _with_hints(codec: LearnedCodec, chunks: Windows) -> LearnedCodec:
    """The codec with the training data's class names and units as ``.imz`` header hints (as
    :func:`~imutune.codec.train.train_codec` sets them; also for codecs cached before hints existed)."""
    units = chunks.preprocessing.units if chunks.preprocessing is not None else None
    return codec.with_header_hints(chunks.class_names, units)


def _export_and_latency(out: Path, codec: LearnedCodec, users: dict, cfg: CodecBenchConfig, log):
    from ..codec.export import ENCODER_FILES, export_encoder
    from ..deploy.backends import load_backend
    from ..metrics import latency_summary

    segs = np.concatenate([segment_values(r.values, codec.segment_samples)
                           for (cal, test, _) in users.values() for r in (*cal, *test)])
    export = export_encoder(codec, out / "encoder", segs, num_threads=1)
    log("[export] parity: " + ", ".join(f"{k} {v['identical_fraction']:.5f} identical, max diff {v['max_abs_diff']:g}"
                                         for k, v in export["artifacts"].items()))
    backends = {"torch": None}
    for fmt, name in ENCODER_FILES.items():
        backends[{"onnx": "onnxruntime", "pte": "executorch-xnnpack"}[fmt]] = load_backend(out / "encoder" / name,
                                                                                      num_threads=1)
    from ..codec.replay import replay_encode

    recs = [r for (cal, _, _) in users.values() for r in cal]             # the upload path: calibration parts
    dur = sum(r.duration_s for r in recs)
    load_before = os.getloadavg()[0]
    latency: dict[str, Any] = {"segment_s": codec.segment_s, "threads": 1, "chunk_samples": 5,
                               "method": "replay of the held-out users' calibration parts, 5 samples per delivery; "
                                         "one sample = one full segment's encoder call + rounding + range coding"}
    for key, backend in backends.items():
        if backend is not None and hasattr(backend, "prepare"):
            backend.prepare()
        warm = StreamEncoder(codec, encoder=backend)
        for s in segs[:20]:
            warm.push_segment(s)                                       # warm-up
        times, nbytes = [], 0
        for r in recs:
            res = replay_encode(codec, r, encoder=backend, chunk_samples=5)
            times += res["latencies_ms"]
            nbytes += res["bytes"]
            if len(times) >= cfg.latency_segments:
                break
        dur_used = sum(r.duration_s for r in recs[:recs.index(r) + 1])
        latency[key] = {**latency_summary(times), "bytes_per_second": nbytes / dur_used}
        log(f"[latency] {key}: p50 {latency[key]['p50']:.3f} ms per {codec.segment_s:g} s segment "
            f"(p95 {latency[key]['p95']:.3f}), {latency[key]['bytes_per_second']:.1f} bytes/s")
    latency["stream_s_available"] = dur
    latency["load_average_1min"] = [load_before, os.getloadavg()[0]]   # around the latency runs: the host note
    return export, latency


# --------------------------------------------------------------------------- targets


def _interp_at(rates: np.ndarray, vals: np.ndarray, at: np.ndarray) -> np.ndarray:
    o = np.argsort(rates)
    return np.interp(np.log(at), np.log(rates[o]), vals[o])


def _targets(report: dict, points: list[_Point]) -> dict[str, Any]:
    ref = report["reference_personalized_macro_f1_raw_mean"]
    S = [s for s in report["points"]]
    learned = [s for s in S if s["family"].startswith("learned/")]
    classic = [s for s in S if s["family"] in ("k-bit", "float16", "int16-zstd", "float32", "delta-zstd")]
    t: dict[str, Any] = {}
    # 1: <= 1 point lost at >= 20x smaller than float32
    for key, label in (("bits_per_sample", "file"), ("payload_bits_per_sample", "payload")):
        ok = [s for s in learned if s[key] <= 32 / 20]
        best = max(ok, key=lambda s: s["personalized_macro_f1"]) if ok else None
        t[f"f1_loss_at_20x_{label}"] = {
            "target": "<= 1 point macro-F1 lost (personalized on decoded, tested on raw) at >= 20x smaller than float32",
            "size": label, "reference_macro_f1": ref,
            "best_point": best["name"] if best else None,
            "bits_per_sample": best[key] if best else None,
            "ratio_vs_float32": 32 / best[key] if best else None,
            "macro_f1": best["personalized_macro_f1"] if best else None,
            "loss_points": 100 * (ref - best["personalized_macro_f1"]) if best else None,
            "met": bool(best and 100 * (ref - best["personalized_macro_f1"]) <= 1.0)}
    # 2: at equal accuracy (reference - 1 point), bytes vs the best classic codec
    thr = ref - 0.01
    for key, label in (("bits_per_sample", "file"), ("payload_bits_per_sample", "payload")):
        lr = [s[key] for s in learned if s["personalized_macro_f1"] >= thr]
        cr = [s["bits_per_sample"] for s in classic if s["personalized_macro_f1"] >= thr]
        best_c = min(cr) if cr else None
        best_l = min(lr) if lr else None
        ratio = best_c / best_l if (best_c and best_l) else None
        t[f"bytes_vs_classic_{label}"] = {
            "target": ">= 1.5x fewer bytes than the best classic codec at equal accuracy (within 1 point of raw)",
            "size": label, "accuracy_threshold": thr, "learned_bits_per_sample": best_l,
            "classic_bits_per_sample": best_c, "ratio": ratio, "met": bool(ratio is not None and ratio >= 1.5)}
    # 3: joint vs codec-only at equal rate, paired over users
    by = {p.family: [] for p in points}
    for p in points:
        by[p.family].append(p)
    res3 = {}
    for metric in ("personalized_macro_f1", "classifier_macro_f1_decoded"):
        diffs = []
        if by.get("learned/joint") and by.get("learned/codec"):
            for u in by["learned/codec"][0].per_user:
                rj = np.array([p.per_user[u]["bits_per_sample"] for p in by["learned/joint"]])
                vj = np.array([p.per_user[u][metric] for p in by["learned/joint"]])
                rc = np.array([p.per_user[u]["bits_per_sample"] for p in by["learned/codec"]])
                vc = np.array([p.per_user[u][metric] for p in by["learned/codec"]])
                lo, hi = max(rj.min(), rc.min()), min(rj.max(), rc.max())
                grid = np.exp(np.linspace(np.log(lo), np.log(hi), 9)) if hi > lo else np.array([np.sqrt(lo * hi)])
                diffs.append(float(np.mean(_interp_at(rj, vj, grid) - _interp_at(rc, vc, grid))))
        res3[metric] = {"mean_paired_difference_points": 100 * float(np.mean(diffs)) if diffs else None,
                        "per_user_points": [100 * d for d in diffs],
                        "users_joint_better": int(sum(d > 0 for d in diffs)), "users": len(diffs)}
    m = res3["personalized_macro_f1"]
    t["joint_beats_codec_only"] = {"target": "joint > codec-only in accuracy at equal rate, paired over users",
                                   **res3, "met": bool(m["mean_paired_difference_points"] is not None
                                                       and m["mean_paired_difference_points"] > 0)}
    lat = report["latency"]
    engines = [k for k in lat if isinstance(lat[k], dict)]
    best_key = min(engines, key=lambda k: lat[k]["p50"]) if engines else None
    t["encoder_latency"] = {"target": "<= 0.5 ms per 2 s segment at 1 thread including entropy coding",
                            "segment_s": lat["segment_s"], "p50_ms": {k: lat[k]["p50"] for k in engines},
                            "best": best_key, "met": bool(best_key and lat[best_key]["p50"] <= 0.5)}
    return t


# --------------------------------------------------------------------------- report


def _markdown(r: dict) -> str:
    lines = ["# Codec benchmark: learned codec vs classic codecs (watch data, held-out users, calibrate-then-use)", ""]
    if r["command"]:
        lines += [f"Command: `{r['command']}`", ""]
    c = r["config"]
    lines += [f"Source subjects {c['source_subjects']}, held-out users {c['test_subjects']}; classifier "
              f"{c['classifier_model']}; personalized on raw (reference): macro-F1 "
              f"{r['reference_personalized_macro_f1_raw_mean']:.4f}; classical reference (RandomForest on "
              "per-window statistics of the same calibration windows) on raw: macro-F1 "
              f"{r['reference_random_forest_macro_f1_raw_mean']:.4f}. Bits per sample = measured file bytes * 8 / "
              "values (the .imz container header included for the learned codec; payload = the range-coded "
              f"latents alone; estimate = the model's -sum log2 likelihood). Host: {_host_note(r)}.", ""]
    hdr = ["method", "bits/sample", "payload b/s", "estimate b/s", "x float32", "x int16", "PRD %", "PRDN %",
           "SNR dB", "F1 classifier decoded", "F1 personalized decoded->raw", "F1 RandomForest decoded->raw",
           "personalized - RF", "enc ms/s", "dec ms/s"]
    rows = [[s["name"], s["bits_per_sample"], s["payload_bits_per_sample"], s["estimate_bits_per_sample"],
             s["ratio_vs_float32"], s["ratio_vs_int16"], s["prd"], s["prdn"], s["snr_db"],
             s["classifier_macro_f1_decoded"], s["personalized_macro_f1"], s["random_forest_macro_f1"],
             s["personalized_minus_random_forest"], s["encode_ms_per_s"], s["decode_ms_per_s"]]
            for s in r["points"]]
    lines += [markdown_table(hdr, rows, floatfmt=".3f"), ""]
    lat = r["latency"]
    lines += [f"## Encoder latency ({r['latency_codec']}, 1 thread, per {lat['segment_s']:g} s segment, entropy "
              "coding included)", ""]
    lines += [markdown_table(["engine", "p50 ms", "p95 ms", "bytes/s"],
                             [[k, v["p50"], v["p95"], v["bytes_per_second"]] for k, v in lat.items()
                              if isinstance(v, dict)], floatfmt=".3f"), ""]
    lines += ["Export parity (rounded latents vs eager torch on the held-out users' real segments): " +
              "; ".join(f"{k}: {v['identical_fraction']:.5f} identical of {v['n_elements']}, max diff "
                        f"{v['max_abs_diff']:g}" for k, v in r["export"]["artifacts"].items()), ""]
    lines += ["## Targets", ""]
    for k, v in r["targets"].items():
        vv = {a: b for a, b in v.items() if a not in ("target",)}
        lines.append(f"- **{k}** ({v['target']}): {'met' if v['met'] else 'NOT met'} -- `{json.dumps(vv, default=str)}`")
    return "\n".join(lines)


def _host_note(r: dict) -> str:
    """The host line of the report, measured: cores and the 1-minute load average around the latency runs."""
    h, load = r["host"], load_average_text(r["latency"].get("load_average_1min"))
    where = f"{load} around the latency measurements" if load else "latency not measured in this run"
    return f"{h['cpu']} ({h['cores']} cores; {where})"


def _plot_accuracy(S: list[dict], r: dict):
    fig, axes = new_figure(1, 2, figsize=(12, 4.5))
    for ax, key, title in ((axes[0], "personalized_macro_f1", "personalized on decoded upload, tested on raw"),
                           (axes[1], "classifier_macro_f1_decoded", "classifier on decoded windows")):
        fams = []
        for s in S:
            if s["family"] not in fams:
                fams.append(s["family"])
        for fam in fams:
            pts = sorted([s for s in S if s["family"] == fam], key=lambda s: s["bits_per_sample"])
            ax.plot([s["bits_per_sample"] for s in pts], [s[key] for s in pts],
                    "o-" if len(pts) > 1 else "s", label=fam)
        if key == "personalized_macro_f1":
            ax.axhline(r["reference_personalized_macro_f1_raw_mean"], color="k", lw=0.8, ls="--", label="raw")
            ax.axhline(r["reference_random_forest_macro_f1_raw_mean"], color="tab:brown", lw=0.8, ls="-.",
                       label="RandomForest on raw (classical reference)")
        ax.axvline(32 / 20, color="gray", lw=0.8, ls=":", label="20x smaller than float32")
        ax.set_xscale("log")
        ax.set_xlabel("bits per sample (measured file size)")
        ax.set_ylabel("macro-F1")
        ax.set_title(title)
    axes[0].legend(fontsize=7)
    return fig


def _plot_distortion(S: list[dict]):
    fig, ax = new_figure(figsize=(6.4, 4.5))
    fams = []
    for s in S:
        if s["family"] not in fams:
            fams.append(s["family"])
    for fam in fams:
        pts = sorted([s for s in S if s["family"] == fam and not s["lossless"]], key=lambda s: s["bits_per_sample"])
        if pts:
            ax.plot([s["bits_per_sample"] for s in pts], [s["snr_db"] for s in pts], "o-", label=fam)
    ax.set_xscale("log")
    ax.set_xlabel("bits per sample (measured file size)")
    ax.set_ylabel("SNR dB (mean removed)")
    ax.legend(fontsize=7)
    return fig
