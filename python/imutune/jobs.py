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
from .personalize.selective import SelectiveConfig
from .personalize.selective import personalize as personalize_selected
from .personalize.finetune import FinetuneConfig, finetune
from .signal.windows import WindowConfig, longtail_subsample, make_windows
from .train.bundle import ModelBundle, load_bundle, save_bundle
from .train.loop import PRETRAIN, TrainConfig
from .train.pretrain import pretrain

__all__ = ["run_personalize", "run_apply_patch", "run_pretrain", "run_finetune", "run_export", "run_replay",
           "finetune_channels"]


def run_pretrain(data: Sequence[str | os.PathLike], out_dir: str | os.PathLike, *, model_name: str = "mobilecnn1d",
                 window: WindowConfig = WindowConfig(), train_config: TrainConfig = PRETRAIN,
                 holdout_fraction: float = 0.2, channels: Sequence[str] | None = None,
                 units: str | Sequence[str] | None = None, self_supervised: Any = None,
                 gravity: bool | str | None = None, progress: bool = True) -> ModelBundle:
    """Pretrain on recordings and write the bundle (``model.safetensors``, ``model.json``)
    plus ``pretrain_config.json`` and a resumable ``checkpoints/pretrain.ckpt`` into ``out_dir``.
    ``units`` states the units of recordings that declare none (``make_windows``), ``gravity`` whether
    their accelerometer includes gravity ("included" / "removed"; the bundle's contract carries it);
    ``channels`` picks the model's input channels (e.g. ``("acc_x", "acc_y", "acc_z")`` for an
    accelerometer-only model; ``bundle.channels`` lists them). With
    ``self_supervised`` (a :class:`imutune.train.selfsup.SelfSupConfig`) the labels are ignored: every
    full window is used and the encoder is pretrained by multi-task transformation prediction; the bundle
    gets an untrained head for the recordings' classes, fitted by ``finetune``."""
    recs = load_many(data)
    w = make_windows(recs, window, channels=channels, units=units, unlabeled=self_supervised is not None,
                     gravity=gravity)
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
                 seed: int = 0, units: str | Sequence[str] | None = None, channels: Sequence[str] | None = None,
                 gravity: bool | str | None = None, remove_gravity: bool = False,
                 progress: bool = True) -> dict[str, Any]:
    """Fine-tune a bundle for a target user and write the personalized bundle.

    Recordings are converted to the bundle's units (g <-> m/s^2, rad/s <->
    deg/s); ``units`` states the units of recordings that declare none (else
    such a recording is an error naming the model's units when the bundle
    declares them). The conversions go to the report (``unit_conversions``).

    Target recordings are windowed with the base bundle's window config (and so
    resampled to its sample rate) and channels; a new class set replaces the
    head. Recordings that hold only some of the bundle's channels (e.g.
    ``acc_x, acc_y, acc_z`` of a 6-channel model), or ``channels`` naming a
    subset, fine-tune a model with an input layer for exactly those channels
    (:func:`imutune.personalize.finetune.finetune`); the written bundle's
    contract lists them (report: ``channels_adapted``). A recording channel
    the model does not have, when the model's are not all there, is a
    ``ValueError`` naming the channels seen and expected. ``gravity`` states
    whether recordings that declare nothing include gravity;
    ``remove_gravity`` converts gravity-included recordings for a model
    trained without gravity (:func:`imutune.signal.windows.make_windows`). ``source_data`` feeds source rehearsal (``config.rehearsal_ratio``).
    ``imbalance_ratio`` optionally long-tail subsamples the target
    windows (for experiments). With ``test_data``, accuracy and macro-F1 before
    and after are measured and returned.
    """
    from .train.bundle import evaluate_bundle

    bundle = load_bundle(base)
    recs = load_many(data)
    chans = finetune_channels(bundle.channels, recs, channels)
    gopt = {"gravity": gravity, "remove_gravity_from": remove_gravity}
    w = make_windows(recs, bundle.preprocessing, channels=chans, units=units, **gopt)
    wt = wt_before = None
    if test_data:   # checked against the class list the model will have before anything is trained
        wt_raw = make_windows(load_many(test_data), bundle.preprocessing, channels=chans, units=units, **gopt)
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
    src = make_windows(load_many(source_data), bundle.preprocessing, channels=chans) if source_data else None
    per = finetune(bundle, w, config=config, source_windows=src, checkpoint_path=out / "checkpoints" / "finetune.ckpt",
                   progress=progress)
    if wt is not None:   # the model's classes in another order were mapped to the model's order
        wt = wt.relabel(per.class_names, what=f"--test-data {[str(p) for p in test_data]}")
    save_bundle(per, out)
    result: dict[str, Any] = {"n_train": len(w), "class_counts": w.class_counts().tolist(),
                              "category_counts": per.info.get("category_counts"),
                              "head_replaced": per.info["head_replaced"],
                              "unit_conversions": list(w.unit_conversions)}
    if "channels_adapted" in per.info:
        result["channels_adapted"] = per.info["channels_adapted"]
    if wt is not None:
        if "channels_adapted" in per.info:   # "before": the pretrained model on the subset, untrained
            from .personalize.finetune import adapt_bundle_channels

            sub = adapt_bundle_channels(bundle, chans)
            kind = ("the pretrained model adapted to the channels before fine-tuning (its stem filters' slices: "
                    f"the missing channels {[c for c in bundle.channels if c not in chans]} at their training mean)")
            if wt_before is not None and not per.info["head_replaced"]:
                result["before"] = {**evaluate_bundle(sub, wt_before), "kind": kind}
            else:
                result["before"] = {**_head_only_before(sub, w, wt), "kind": kind + ", then a head-only fit"}
        elif wt_before is not None and not per.info["head_replaced"]:
            result["before"] = evaluate_bundle(bundle, wt_before)
        elif per.info["head_replaced"]:
            result["before"] = _head_only_before(bundle, w, wt)
        result["after"] = evaluate_bundle(per, wt)
        result["scored_windows"] = (f"{len(wt)} test windows whose majority label covers >= "
                                    f"{bundle.preprocessing.min_purity:g} of the window (as in training); "
                                    "imutune replay scores every window of the stream")
    result["classical_reference"] = _classical_reference(w, wt, result.get("after"))
    write_json_atomic(out / "finetune_report.json", result)
    return result


def finetune_channels(model_channels: Sequence[str], recordings: Sequence[Any],
                      channels: Sequence[str] | None = None) -> tuple[str, ...]:
    """The channels a fine-tune uses: ``channels`` if given; the model's when every recording has them all
    (extra recording channels are ignored, as always); else the model's channels every recording has,
    in the model's order (a channel subset: :func:`imutune.personalize.finetune.finetune` adapts the input
    layer).

    Raises
    ------
    ValueError
        If the recordings lack some of the model's channels and hold channels the model does not have
        (or share none of its channels): the message lists the channels seen and the ones expected.
    """
    model_channels = tuple(model_channels)
    if channels is not None:
        return tuple(channels)
    common = tuple(c for c in model_channels if all(c in r.channels for r in recordings))
    if common == model_channels:
        return model_channels
    seen: list[str] = []
    for r in recordings:
        seen.extend(c for c in r.channels if c not in seen)
    extra = [c for c in seen if c not in model_channels]
    if extra or not common:
        raise ValueError(f"the recordings have channels {seen}; the model expects {list(model_channels)} or a "
                         f"subset of them ({extra or seen} are not among the model's channels). Rename the columns "
                         "to the model's channel names, or name the subset to fine-tune on (--channels / channels=)")
    return common


def _head_only_before(bundle: ModelBundle, w, wt) -> dict[str, Any]:
    """The "before" reference for a new class set: a head fitted on the frozen pretrained model (a logistic
    regression on its penultimate features of the calibration windows; no backbone weight or batch-norm
    statistic changes), scored on the test windows."""
    from sklearn.linear_model import LogisticRegression

    from .metrics import accuracy, macro_f1
    from .personalize.filter import embed_windows

    e_tr = embed_windows(bundle.model, bundle.normalizer(w.x), device="cpu")    # (N, D) frozen features
    e_te = embed_windows(bundle.model, bundle.normalizer(wt.x), device="cpu")
    pred = LogisticRegression(max_iter=2000).fit(e_tr, w.y).predict(e_te)
    return {"accuracy": accuracy(wt.y, pred), "macro_f1": macro_f1(wt.y, pred, wt.num_classes),
            "kind": "head-only fit on the frozen pretrained model (logistic regression on its features): the "
                    "model had no head for this class set"}


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
    given. With a device ``profile`` (:mod:`imutune.runtime.profiles`) its threads,
    pinning, pacing and delivery apply, and the arguments given explicitly
    (not None) override them. ``chunk_samples="hop"`` delivers once per hop.
    ``stream=True`` reads each file incrementally (:func:`imutune.data.streams.open_streams`)
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


def run_personalize(base: str | os.PathLike, data: Sequence[str | os.PathLike], out_dir: str | os.PathLike, *,
                    config: SelectiveConfig = SelectiveConfig(), clean_data: Sequence[str | os.PathLike] | None = None,
                    distortion: str | None = None, test_data: Sequence[str | os.PathLike] = (),
                    write_bundle: bool = False, progress: bool = True) -> dict[str, Any]:
    """``imutune personalize``: selective fine-tuning of a base bundle for one user, saved as a patch.

    Windows are cut with the base bundle's window config and channels. The
    ranking is paired when ``clean_data`` (the same recordings without the
    device's distortion) is given, or when ``distortion`` (a
    :func:`imutune.signal.distortions.parse_distortion` spec) simulates the device on
    ``data`` treated as clean; otherwise pair-free. Writes into ``out_dir``:
    ``patch.safetensors`` (:mod:`imutune.personalize.patch`), ``personalize_report.json``,
    ``personalize_config.json`` and, with ``write_bundle``, the patched bundle in
    ``model/`` (exportable with ``imutune export --model``).

    Returns
    -------
    dict
        The report: ranking, selection, trainable parameters, ``patch_bytes``,
        ``model_bytes``, ``patch_fraction``, times, and with ``test_data``
        accuracy ``before`` (same class list only) and ``after``.

    Raises
    ------
    ValueError
        On a bad fraction or distortion spec, clean data that does not pair
        with the data, or both ``clean_data`` and ``distortion``.
    """
    from ._io import write_json_atomic
    from .data.recordings import load_many
    from .signal.distortions import distort_windows, parse_distortion
    from .signal.windows import Windows, make_windows
    from .train.bundle import evaluate_bundle, load_bundle, save_bundle
    from .personalize.patch import apply_patch_bundle, make_patch, model_bytes, save_patch

    if clean_data and distortion:
        raise ValueError("give either clean_data (recorded pairs) or distortion (simulated device), not both")
    dist = parse_distortion(distortion) if distortion else None
    bundle = load_bundle(base)
    recs = load_many(data)
    if finetune_channels(bundle.channels, recs) != bundle.channels:
        raise ValueError(f"imutune personalize writes a patch of the base model's filters, so the recordings need "
                         f"all its channels {list(bundle.channels)}; for a channel subset use imutune finetune "
                         "(a new input layer for exactly the recordings' channels)")
    w = make_windows(recs, bundle.window, channels=bundle.channels)
    x_clean = None
    x = w.x
    fs = bundle.window.sample_rate_hz
    if dist is not None:
        x_clean = w.x
        x = distort_windows(w.x, dist, channels=w.channels, sample_rate_hz=fs, seed=config.train.seed)
    elif clean_data:
        wc = make_windows(load_many(clean_data), bundle.window, channels=bundle.channels)
        if wc.x.shape != w.x.shape or not np.array_equal(wc.y, w.y):
            raise ValueError(f"clean data gives windows {wc.x.shape} and the data {w.x.shape} (or other labels); "
                             "clean data must be the same recordings without the device's distortion")
        x_clean = wc.x
    out = Path(out_dir)
    write_json_atomic(out / "personalize_config.json", {
        "base": str(base), "data": [str(p) for p in data], "clean_data": [str(p) for p in clean_data or ()],
        "distortion": distortion, "test_data": [str(p) for p in test_data], "selective": asdict(config)})
    per, info = personalize_selected(bundle, x, w.y, config=config, x_clean=x_clean, class_names=w.class_names,
                            progress=progress)
    patch = make_patch(bundle.model, per.model,
                       class_names=per.class_names if info["head_replaced"] else None,
                       info={"fraction": config.fraction, "budget": config.budget, "ranking": info["ranking"],
                             "selected_filters": info["selected_filters"],
                             "trainable_parameters": info["trainable_parameters"]})
    ppath = save_patch(patch, out / "patch.safetensors")
    size, full = ppath.stat().st_size, model_bytes(bundle.model)
    report: dict[str, Any] = {k: v for k, v in info.items() if k not in ("curve", "config")}
    report.update(patch=str(ppath), patch_bytes=size, model_bytes=full, patch_fraction=size / full,
                  base_sha256=patch.base_sha256, patched_sha256=patch.patched_sha256,
                  class_counts=w.class_counts().tolist())
    if test_data:
        wt = make_windows(load_many(test_data), bundle.window, channels=bundle.channels)
        if dist is not None:
            wt = Windows(distort_windows(wt.x, dist, channels=wt.channels, sample_rate_hz=fs, seed=config.train.seed,
                                         noise_seed=config.train.seed + 1), wt.y, wt.recording, wt.users,
                         wt.class_names, wt.channels)
        if set(wt.class_names) <= set(bundle.class_names):
            report["before"] = evaluate_bundle(bundle, wt.relabel(bundle.class_names), device=config.train.device)
        report["after"] = evaluate_bundle(per, wt.relabel(per.class_names, what=f"--test-data {list(test_data)}"),
                                          device=config.train.device)
    if write_bundle:
        save_bundle(apply_patch_bundle(bundle, patch), out / "model")
        report["bundle"] = str(out / "model")
    write_json_atomic(out / "personalize_report.json", report)
    return report


def run_apply_patch(base: str | os.PathLike, patch: str | os.PathLike, out_dir: str | os.PathLike) -> dict[str, Any]:
    """``imutune apply-patch``: apply a personalization patch to its base bundle and write the full bundle.

    Raises ``ValueError`` when the patch was made for another base model (its base hash differs).
    """
    from .personalize.patch import apply_patch_bundle

    b = apply_patch_bundle(load_bundle(base), patch)
    save_bundle(b, out_dir)
    return {"out": str(out_dir), "patched_sha256": b.info["patch"]["patched_sha256"]}
