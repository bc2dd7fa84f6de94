"""One function per CLI stage on the user's own recording files.

Each job loads what it needs, calls the library, and writes its artifacts
atomically together with the config it ran with (``*_config.json``):

* :func:`run_pretrain` -- recordings -> pretrained bundle.
* :func:`run_finetune` -- bundle + target recordings -> personalized bundle.
* :func:`run_export` -- bundle -> ``model.onnx`` / ``model.pte`` + ``manifest.json``.
* :func:`run_replay` -- manifest + artifact + recordings -> replay report.
"""
from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ._io import write_json_atomic, write_text_atomic
from .data.recordings import load_many
from .deploy.manifest import Manifest, manifest_for
from .personalize.finetune import FinetuneConfig, finetune
from .signal.windows import WindowConfig, longtail_subsample, make_windows
from .train.bundle import ModelBundle, load_bundle, save_bundle
from .train.loop import PRETRAIN, TrainConfig
from .train.pretrain import pretrain

__all__ = ["run_pretrain", "run_finetune", "run_export", "run_replay"]


def run_pretrain(data: Sequence[str | os.PathLike], out_dir: str | os.PathLike, *, model_name: str = "mobilecnn1d",
                 window: WindowConfig = WindowConfig(), train_config: TrainConfig = PRETRAIN,
                 holdout_fraction: float = 0.2, channels: Sequence[str] | None = None,
                 units: str | Sequence[str] | None = None, self_supervised: Any = None,
                 progress: bool = True) -> ModelBundle:
    """Pretrain on recordings and write the bundle (``model.safetensors``, ``model.json``)
    plus ``pretrain_config.json`` and a resumable ``checkpoints/pretrain.ckpt`` into ``out_dir``.
    ``units`` states the units of recordings that declare none (``make_windows``). With
    ``self_supervised`` (a :class:`imutune.train.selfsup.SelfSupConfig`) the labels are ignored: every
    full window is used and the encoder is pretrained by multi-task transformation prediction; the bundle
    gets an untrained head for the recordings' classes, fitted by ``finetune``."""
    recs = load_many(data)
    w = make_windows(recs, window, channels=channels, units=units, unlabeled=self_supervised is not None)
    out = Path(out_dir)
    write_json_atomic(out / "pretrain_config.json", {"data": [str(p) for p in data], "model_name": model_name,
                                                     "window": asdict(window), "train": asdict(train_config),
                                                     "holdout_fraction": holdout_fraction,
                                                     "self_supervised": (None if self_supervised is None else
                                                                         asdict(self_supervised))})
    if self_supervised is not None:
        from .train.selfsup import pretrain_self_supervised

        bundle = pretrain_self_supervised(w, model_name=model_name, window=window, config=self_supervised,
                                          progress=progress)
        save_bundle(bundle, out)
        return bundle
    bundle = pretrain(w, model_name=model_name, window=window, train_config=train_config,
                      holdout_fraction=holdout_fraction, checkpoint_path=out / "checkpoints" / "pretrain.ckpt",
                      progress=progress)
    save_bundle(bundle, out)
    return bundle


def run_finetune(base: str | os.PathLike, data: Sequence[str | os.PathLike], out_dir: str | os.PathLike, *,
                 config: FinetuneConfig = FinetuneConfig(), imbalance_ratio: float | None = None,
                 test_data: Sequence[str | os.PathLike] = (), source_data: Sequence[str | os.PathLike] = (),
                 seed: int = 0, units: str | Sequence[str] | None = None, progress: bool = True) -> dict[str, Any]:
    """Fine-tune a bundle for a target user and write the personalized bundle.

    Recordings are converted to the bundle's units (g <-> m/s^2, rad/s <->
    deg/s); ``units`` states the units of recordings that declare none (else
    such a recording is an error naming the model's units when the bundle
    declares them). The conversions go to the report (``unit_conversions``).

    Target recordings are windowed with the base bundle's window config (and so
    resampled to its sample rate) and channels; a new class set replaces the
    head. ``source_data`` feeds source rehearsal (``config.rehearsal_ratio``).
    ``imbalance_ratio`` optionally long-tail subsamples the target
    windows (for experiments). With ``test_data``, accuracy and macro-F1 before
    and after are measured and returned.
    """
    from .train.bundle import evaluate_bundle

    bundle = load_bundle(base)
    recs = load_many(data)
    w = make_windows(recs, bundle.preprocessing, channels=bundle.channels, units=units)
    wt = wt_before = None
    if test_data:   # checked against the class list the model will have before anything is trained
        wt_raw = make_windows(load_many(test_data), bundle.preprocessing, channels=bundle.channels, units=units)
        wt = wt_raw.relabel(w.class_names, what=f"--test-data {[str(p) for p in test_data]}")
        if set(wt_raw.class_names) <= set(bundle.class_names):
            wt_before = wt_raw.relabel(bundle.class_names)
    if imbalance_ratio is not None:
        w = w.subset(longtail_subsample(w.y, imbalance_ratio, seed=seed, num_classes=w.num_classes))
    out = Path(out_dir)
    write_json_atomic(out / "finetune_config.json", {"base": str(base), "data": [str(p) for p in data],
                                                     "source_data": [str(p) for p in source_data],
                                                     "finetune": asdict(config), "imbalance_ratio": imbalance_ratio,
                                                     "seed": seed})
    src = make_windows(load_many(source_data), bundle.preprocessing, channels=bundle.channels) if source_data else None
    per = finetune(bundle, w, config=config, source_windows=src, checkpoint_path=out / "checkpoints" / "finetune.ckpt",
                   progress=progress)
    save_bundle(per, out)
    result: dict[str, Any] = {"n_train": len(w), "class_counts": w.class_counts().tolist(),
                              "category_counts": per.info.get("category_counts"),
                              "head_replaced": per.info["head_replaced"],
                              "unit_conversions": list(w.unit_conversions)}
    if wt is not None:
        if wt_before is not None and not per.info["head_replaced"]:
            result["before"] = evaluate_bundle(bundle, wt_before)
        result["after"] = evaluate_bundle(per, wt)
    result["classical_reference"] = _classical_reference(w, wt, result.get("after"))
    write_json_atomic(out / "finetune_report.json", result)
    return result


def _classical_reference(w, wt, after: dict | None) -> dict[str, Any]:
    """RandomForest / logistic regression on window statistics of the same calibration windows
    (:mod:`imutune.personalize.reference`), scored on the test windows beside the personalized model."""
    from .personalize.reference import reference_report

    if wt is None:
        return {"skipped": "no --test-data: the reference and the model are scored on held-out windows only"}
    if np.unique(w.y).size < 2:
        return {"skipped": f"the calibration windows hold {np.unique(w.y).size} class; the reference needs 2"}
    return reference_report(w, wt, model_macro_f1=None if after is None else after["macro_f1"])


def run_export(model_dir: str | os.PathLike, data: Sequence[str | os.PathLike], out_dir: str | os.PathLike, *,
               formats: Sequence[str] = ("onnx", "pte"), max_parity_windows: int = 256,
               tolerance: float = 1e-4, eval_data: Sequence[str | os.PathLike] = (),
               units: str | Sequence[str] | None = None, progress: bool = True) -> Manifest:
    """Export a bundle to ONNX / ExecuTorch with parity checked on real windows from ``data``.

    int8 variants (``"onnx-int8"``, ``"pte-int8"``) are calibrated on the windows of ``data`` (use
    training recordings); with ``eval_data`` (held-out recordings) every artifact's accuracy and the
    int8 change against fp32 are recorded in the manifest. ``out_dir`` is switched to the new set
    atomically and locked against a second writer (:func:`imutune.deploy.export.write_exports`);
    ``progress`` shows a bar over the variants with the current stage."""
    from .deploy.export import write_exports

    bundle = load_bundle(model_dir)
    w = make_windows(load_many(data), bundle.preprocessing, channels=bundle.channels, units=units)
    x = bundle.normalizer(w.x[:max_parity_windows])
    ev = None
    if eval_data:
        we = make_windows(load_many(eval_data), bundle.preprocessing, channels=bundle.channels, units=units)
        ev = (bundle.normalizer(we.x), we.y)
    calib = bundle.normalizer(w.x) if any(str(f).endswith("-int8") for f in formats) else None
    return write_exports(bundle.model.cpu(), manifest_for(bundle), out_dir, x, formats=tuple(formats),
                         tolerance=tolerance, calibration_windows=calib, eval_windows=ev, progress=progress,
                         config={"model_dir": str(model_dir), "data": [str(p) for p in data],
                                 "formats": list(formats), "eval_data": [str(p) for p in eval_data]})


def run_replay(artifact: str | os.PathLike, data: Sequence[str | os.PathLike], out_dir: str | os.PathLike, *,
               manifest_path: str | os.PathLike | None = None, num_threads: int | None = None,
               chunk_samples: int | str | None = None, realtime: bool | None = None, profile: str | None = None,
               smoothing_k: int = 1, stream: bool = False, progress: bool = True,
               dump_golden: str | os.PathLike | None = None) -> dict[str, Any]:
    """Replay recordings through an exported artifact; writes ``replay_report.json``,
    ``replay_report.md`` and ``confusion_matrix.png`` into ``out_dir``.

    Without ``profile``: 1 thread, sample-by-sample delivery, no pacing unless
    given. With a device ``profile`` (:mod:`imutune.profiles`) its threads,
    pinning, pacing and delivery apply, and the arguments given explicitly
    (not None) override them. ``chunk_samples="hop"`` delivers once per hop.
    ``stream=True`` reads each file incrementally (:func:`imutune.streams.open_streams`)
    instead of loading it. ``progress`` shows a bar over the recordings.
    ``dump_golden`` (a folder) also writes the golden data of the replay there
    (:class:`imutune.runtime.golden.GoldenCapture`: raw samples fed, window
    ends, normalized inputs, logits, predictions; ``golden.json`` index).
    """
    from .deploy.backends import load_backend
    from .deploy.manifest import load_manifest
    from .plots import plot_confusion_matrix
    from .runtime.replay import ReplayConfig, replay_many

    artifact = Path(artifact)
    manifest = load_manifest(manifest_path if manifest_path is not None else artifact.parent / "manifest.json")
    over: dict[str, Any] = {"smoothing_k": smoothing_k}
    for key, v in (("num_threads", num_threads), ("realtime", realtime)):
        if v is not None:
            over[key] = v
    if chunk_samples is not None:
        over["chunk_samples"] = None if chunk_samples == "hop" else int(chunk_samples)
    cfg = ReplayConfig.from_profile(profile, **over) if profile is not None else ReplayConfig(**over)
    num_threads = cfg.num_threads
    backend = load_backend(artifact, manifest=manifest, num_threads=num_threads)
    if stream:
        from .data.streams import open_streams

        recs: list[Any] = [s for p in data for s in open_streams(p)]
    else:
        recs = load_many(data)
    capture = None
    if dump_golden is not None:
        from .runtime.golden import GoldenCapture

        capture = GoldenCapture()
    summary = replay_many(recs, backend, manifest, config=cfg, progress=progress, capture=capture)
    if capture is not None:
        capture.write(dump_golden, manifest_path=manifest_path if manifest_path is not None else
                      artifact.parent / "manifest.json", extra={"artifact": artifact.name})
    out = Path(out_dir)
    summary = {"artifact": str(artifact), "replay_config": asdict(cfg), **summary}
    write_json_atomic(out / "replay_report.json", summary)
    lat = summary["latency_ms"]
    acc, f1 = (("n/a" if summary[k] is None else f"{summary[k]:.4f}") for k in ("accuracy", "macro_f1"))
    write_text_atomic(out / "replay_report.md", "\n".join([
        f"# Replay of {artifact.name} ({summary['backend']}, {num_threads} thread(s))", "",
        "| windows | scored | accuracy | macro-F1 | p50 ms | p95 ms | p99 ms | deadline misses |",
        "|---|---|---|---|---|---|---|---|",
        f"| {summary['n_windows']} | {summary['n_scored']} | {acc} | {f1} | {lat['p50']:.3f} | "
        f"{lat['p95']:.3f} | {lat['p99']:.3f} | {summary['deadline_misses']} |", "",
        f"Profile {summary['profile'] or 'none'}; runtime work p50 {summary['runtime_overhead_ms']['p50']:.4f} ms "
        f"({summary['runtime_overhead_ratio']:.3f} of the model time); real-time factor "
        f"{summary['realtime_factor']:.4g}; smoothed (k={summary['smoothing_k']}) accuracy "
        f"{'n/a' if summary['smoothed_accuracy'] is None else format(summary['smoothed_accuracy'], '.4f')}; "
        f"input: {summary['input']}.", ""]))
    if summary["n_scored"]:
        plot_confusion_matrix(np.asarray(summary["confusion_matrix"]), manifest.class_names,
                              out / "confusion_matrix.png", title=f"replay through {artifact.name}")
    return summary
