"""On-device personalization in the reference runtime: export folder + calibration data -> imutune patch.

:func:`personalize_on_device` does on this host what the phone does, with the phone's artifacts only:

1. opens the export folder (``manifest.json``, ``model.pte``, ``model_train.pte`` and the base weights
   ``model.json`` + ``model.safetensors`` written by :func:`imutune.ondevice.program.write_training_program`)
   and refuses a training program whose base hash differs from the inference model's
   (:func:`imutune.personalize.patch.state_hash`) or whose file differs from its manifest entry;
2. scores the calibration windows with the inference model ``model.pte`` (ExecuTorch) and derives the
   FilterLoss weights with the first-version quality filter (:func:`imutune.personalize.quality.categorize`
   on the model's probabilities, :func:`imutune.personalize.quality.sample_weights`), unless weights are
   given;
3. for the ``"rows"`` program, ranks the filters on the calibration windows (pair-free Borda ranking
   against the base model's batch-norm statistics, :func:`imutune.personalize.selective.rank_filters`)
   and keeps the top ``filters_fraction`` of each layer;
4. takes ``steps`` SGD steps through ``model_train.pte`` at the device profile's thread count
   (:class:`imutune.ondevice.loop.OnDeviceTrainer`);
5. returns the updated weights as an imutune patch (safetensors, base hash;
   :func:`imutune.personalize.patch.make_patch`) that ``imutune apply-patch --base EXPORT_DIR`` and
   ``imutune export`` accept, and scores the personalized model on held-out windows if given.

:func:`run_export_train` and :func:`run_personalize_on_device` are the command-line jobs
(``imutune export-train``, ``imutune personalize-on-device``).
"""
from __future__ import annotations

import copy
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from .. import _validation as V
from .._io import sha256_file, write_json_atomic
from ..deploy.manifest import load_manifest, verify_artifact
from ..metrics import accuracy, latency_summary, macro_f1
from ..personalize.patch import Patch, make_patch, save_patch, state_hash
from .loop import OnDeviceConfig, OnDeviceTrainer, batch_indices, row_masks
from .program import TRAIN_ARTIFACT

__all__ = ["OnDeviceExport", "open_export", "calibration_labels", "quality_weights", "personalize_on_device",
           "run_export_train", "run_personalize_on_device", "tuned_model"]


class OnDeviceExport:
    """An export folder opened for on-device training (see :func:`open_export`)."""

    def __init__(self, folder: Path, manifest: Any, bundle: Any, entry: dict) -> None:
        self.folder, self.manifest, self.bundle, self.entry = folder, manifest, bundle, entry

    @property
    def program_path(self) -> Path:
        return self.folder / TRAIN_ARTIFACT

    @property
    def inference_path(self) -> Path | None:
        p = self.folder / "model.pte"
        return p if p.is_file() and "model.pte" in self.manifest.artifacts else None


def open_export(export_dir: str | os.PathLike) -> OnDeviceExport:
    """Open and cross-check an export folder holding a training program.

    Raises
    ------
    FileNotFoundError
        If the folder, ``manifest.json``, ``model_train.pte`` or the base weights are missing.
    ValueError
        If the manifest does not list ``model_train.pte``, a file's SHA-256 differs from its manifest entry,
        or the training program was exported from another model than the inference model in the folder.
    """
    from ..train.bundle import load_bundle

    folder = V.check_dir(export_dir, what="export folder")
    manifest = load_manifest(folder / "manifest.json")
    entry = manifest.artifacts.get(TRAIN_ARTIFACT)
    if entry is None or entry.get("kind") != "training":
        raise ValueError(f"export folder {str(folder)!r} has no training program in its manifest (it lists "
                         f"{sorted(manifest.artifacts)}); run `imutune export-train --model BUNDLE --out "
                         f"{folder}` first")
    V.check_file(folder / TRAIN_ARTIFACT, what="training program")
    verify_artifact(manifest, folder / TRAIN_ARTIFACT)
    if not (folder / "model.json").is_file():
        raise FileNotFoundError(f"export folder {str(folder)!r} has no base model (model.json + model.safetensors); "
                                "`imutune export-train` writes it next to the training program")
    bundle = load_bundle(folder)
    base = state_hash(bundle.model)
    if base != entry.get("base_sha256"):
        raise ValueError(f"training program {str(folder / TRAIN_ARTIFACT)!r} was exported from base model sha256 "
                         f"{str(entry.get('base_sha256'))[:16]}..., but the inference model in {str(folder)!r} "
                         f"hashes to {base[:16]}...; re-run `imutune export-train` for this model")
    inf = folder / "model.pte"
    if "inference_sha256" in entry and inf.is_file() and sha256_file(inf) != entry["inference_sha256"]:
        raise ValueError(f"inference model {str(inf)!r} has changed since the training program was exported (sha256 "
                         f"{sha256_file(inf)[:16]}..., the training entry expects {entry['inference_sha256'][:16]}...); "
                         "re-run `imutune export-train`")
    return OnDeviceExport(folder, manifest, bundle, entry)


def calibration_labels(recordings: Sequence[Any], model_classes: Sequence[str], *, what: str = "calibration") -> None:
    """Require every labelled class in ``recordings`` to be one of the model's classes.

    Raises
    ------
    ValueError
        Naming the first recording (file) with a class the model does not know.
    """
    known = set(model_classes)
    for rec in recordings:
        labels = np.unique(rec.labels[rec.labels >= 0])
        present = [rec.class_names[int(i)] for i in labels]
        unknown = sorted(set(present) - known)
        if unknown:
            raise ValueError(f"{what} recording {rec.name or rec.user!r} has classes {unknown} that the model does "
                             f"not know; the model's classes are {list(model_classes)} (on-device training keeps "
                             "the head's classes)")


def _remap(windows: Any, model_classes: Sequence[str]) -> np.ndarray:
    """Labels of ``windows`` as indices into ``model_classes``: array of shape (N,), int64."""
    lut = np.array([list(model_classes).index(c) if c in model_classes else -1 for c in windows.class_names],
                   dtype=np.int64)
    y = lut[windows.y]
    if np.any(y < 0):
        bad = sorted({windows.class_names[i] for i in np.unique(windows.y[y < 0])})
        raise ValueError(f"windows have classes {bad} that the model does not know; the model's classes are "
                         f"{list(model_classes)}")
    return y


def quality_weights(probs: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, dict[str, int]]:
    """First-version FilterLoss weights from the inference model's probabilities (default thresholds and
    category weights of :mod:`imutune.personalize.quality`): (weights (N,) float32, category counts)."""
    from ..personalize.quality import categorize, category_counts, sample_weights

    cats = categorize(probs, labels)
    return sample_weights(cats), category_counts(cats)


def _probs(export: OnDeviceExport, xn: np.ndarray, num_threads: int) -> tuple[np.ndarray, str]:
    if export.inference_path is not None:
        from ..deploy.backends import load_backend
        from ..deploy.quantize import predict_backend

        backend = load_backend(export.inference_path, manifest=export.manifest, num_threads=num_threads)
        logits = predict_backend(backend, xn)
        source = "model.pte"
    else:
        from ..train.loop import predict_logits

        logits = predict_logits(export.bundle.model, xn, device="cpu")
        source = "eager base model (no model.pte in the folder)"
    return torch.softmax(torch.from_numpy(np.asarray(logits, np.float32)), dim=1).numpy(), source


def personalize_on_device(export_dir: str | os.PathLike, windows: Any, *, config: OnDeviceConfig = OnDeviceConfig(),
                          sample_weights: np.ndarray | None = None, test_windows: Any = None,
                          num_threads: int | None = None) -> tuple[Patch, dict[str, Any]]:
    """Personalize the model of an export folder on calibration windows through its training program.

    Parameters
    ----------
    export_dir : path-like
        Export folder (:func:`open_export`).
    windows : imutune.signal.windows.Windows
        Calibration windows cut with the model's window config and channels (physical units; the model's
        normalization is applied here), with class names among the model's.
    config : OnDeviceConfig
        Steps, SGD settings, seed, row fraction, device profile.
    sample_weights : np.ndarray, optional
        Array of shape (N,), float32, >= 0: FilterLoss weights; by default the first-version quality filter on
        the inference model's probabilities.
    test_windows : Windows, optional
        Held-out windows: accuracy and macro-F1 before and after (and every ``config.eval_every`` steps).
    num_threads : int, optional
        ExecuTorch threads; default the profile's.

    Returns
    -------
    (Patch, dict)
        The patch of the base model, and a report: steps, loss per step, step latency (ms) p50/p95,
        threads, category counts, trainable set, selected rows, before/after scores, curve.

    Raises
    ------
    ValueError
        See :func:`open_export`; windows with unknown classes, other channels or another length; invalid
        weights.
    """
    from ..runtime.profiles import get_profile

    if not isinstance(config, OnDeviceConfig):
        raise ValueError(f"config must be an OnDeviceConfig, got {type(config).__name__}")
    export = open_export(export_dir)
    b = export.bundle
    if tuple(windows.channels) != tuple(b.channels):
        raise ValueError(f"calibration windows have channels {list(windows.channels)}; the model expects {list(b.channels)}")
    y = _remap(windows, b.class_names)
    xn = V.check_windows("calibration windows", b.normalizer(windows.x), in_channels=len(b.channels),
                         window_samples=b.window.window_samples, expected_by="the model", finite=True)
    threads = get_profile(config.profile).num_threads if num_threads is None else int(num_threads)
    report: dict[str, Any] = {"export_dir": str(export.folder), "n_calibration": int(len(y)),
                              "config": asdict(config), "threads": threads, "variant": export.entry.get("variant")}
    if sample_weights is None:
        probs, src = _probs(export, xn, threads)
        w, counts = quality_weights(probs, y)
        report.update(weights_source=f"first-version quality filter on {src}", category_counts=counts)
    else:
        w = np.asarray(sample_weights, np.float32)
        if w.shape != y.shape or not np.all(np.isfinite(w)) or np.any(w < 0) or not np.any(w > 0):
            raise ValueError(f"sample_weights must have shape {y.shape}, be finite, >= 0 and not all zero; got "
                             f"shape {w.shape}")
        report["weights_source"] = "given"
    base_model = b.model.cpu().eval()
    trainable = [t["name"] for t in export.entry["trainable"]]
    masks: dict[str, torch.Tensor] = {}
    if export.entry.get("variant") == "rows":
        from ..personalize.selective import rank_filters, select_filters

        sel = select_filters(rank_filters(base_model, xn, device="cpu"), config.filters_fraction)
        masks = row_masks(base_model, sel, trainable)
        report["selected_filters"] = sel.summary()
    trainer = OnDeviceTrainer(export.program_path, lr=config.lr, momentum=config.momentum,
                              weight_decay=config.weight_decay, masks=masks, num_threads=threads)
    batches = batch_indices(len(y), trainer.batch_size, config.steps, seed=config.seed)
    test = None
    if test_windows is not None:
        test = (b.normalizer(test_windows.x), _remap(test_windows, b.class_names))
        report["before"] = _score(base_model, *test, len(b.class_names))
    curve, losses, times = [], [], []
    import time

    for i, idx in enumerate(batches):
        t0 = time.perf_counter()
        losses.append(trainer.step(xn[idx], y[idx], w[idx]))
        times.append(1000.0 * (time.perf_counter() - t0))
        if test is not None and config.eval_every and (i + 1) % config.eval_every == 0:
            curve.append([i + 1, _score(tuned_model(base_model, trainer.parameters()), *test, len(b.class_names))["macro_f1"]])
    tuned = tuned_model(base_model, trainer.parameters())
    patch = make_patch(base_model, tuned, info={"method": "on-device", "variant": export.entry.get("variant"),
                                                "steps": config.steps, "lr": config.lr, "momentum": config.momentum,
                                                "program_sha256": export.entry["sha256"]})
    report.update(steps=config.steps, loss=losses, step_latency_ms=latency_summary(times),
                  trainable=trainable, patch_entries=patch.changed_entries(), patch_values=patch.n_values(),
                  base_sha256=patch.base_sha256, patched_sha256=patch.patched_sha256, curve=curve)
    if test is not None:
        report["after"] = _score(tuned, *test, len(b.class_names))
    return patch, report


def tuned_model(base: torch.nn.Module, params: dict[str, torch.Tensor]) -> torch.nn.Module:
    """A copy of ``base`` (eval mode) with the trained ``params`` (state-dict name -> tensor) loaded."""
    m = copy.deepcopy(base)
    state = m.state_dict()
    for k, v in params.items():
        state[k] = v.reshape(state[k].shape).to(state[k].dtype)
    m.load_state_dict(state)
    return m.eval()


def _score(model: torch.nn.Module, x: np.ndarray, y: np.ndarray, k: int) -> dict[str, float]:
    from ..train.loop import predict_logits

    pred = predict_logits(model, x, device="cpu").argmax(1)
    return {"accuracy": accuracy(y, pred), "macro_f1": macro_f1(y, pred, k)}


# --------------------------------------------------------------------------- jobs (command line)


def run_export_train(model_dir: str | os.PathLike, data: Sequence[str | os.PathLike], out_dir: str | os.PathLike, *,
                     variant: str = "last-block", batch_size: int = 16, max_windows: int = 256) -> dict[str, Any]:
    """``imutune export-train``: write ``model_train.pte`` (and ``model.pte`` if the folder has no export yet).

    ``data`` are recordings whose (normalized) windows trace the program and check its gradients
    (source or server-side windows; the user's data are not needed).

    Raises
    ------
    ValueError / FileNotFoundError
        As :func:`imutune.ondevice.program.write_training_program` and the loaders.
    """
    from ..data.recordings import load_many
    from ..deploy.export import write_exports
    from ..deploy.manifest import manifest_for
    from ..signal.windows import make_windows
    from ..train.bundle import load_bundle
    from .program import write_training_program

    bundle = load_bundle(model_dir)
    w = make_windows(load_many(data), bundle.window, channels=bundle.channels)
    x = bundle.normalizer(w.x[:max_windows])
    out = Path(out_dir)
    if not (out / "manifest.json").is_file():
        write_exports(bundle.model.cpu().eval(), manifest_for(bundle), out, x[:64], formats=("pte",))
    m = write_training_program(bundle, out, x, variant=variant, batch_size=batch_size)
    e = m.artifacts[TRAIN_ARTIFACT]
    return {"out": str(out), "variant": variant, "batch_size": e["batch_size"], "size_bytes": e["size_bytes"],
            "trainable_parameters": e["trainable_parameters"], "parity_grad_max_abs_err": e["parity_grad_max_abs_err"],
            "base_sha256": e["base_sha256"]}


def run_personalize_on_device(export_dir: str | os.PathLike, data: Sequence[str | os.PathLike],
                              out_dir: str | os.PathLike, *, config: OnDeviceConfig = OnDeviceConfig(),
                              test_data: Sequence[str | os.PathLike] = (), weights_path: str | os.PathLike | None = None,
                              num_threads: int | None = None) -> dict[str, Any]:
    """``imutune personalize-on-device``: writes ``patch.safetensors`` and ``ondevice_report.json`` into ``out_dir``.

    ``weights_path`` is an optional ``.npy`` file of shape (N,) float32 with one FilterLoss weight per
    calibration window (in :func:`imutune.signal.windows.make_windows` order).

    Raises
    ------
    ValueError
        A calibration file with classes the model does not know (the message names it), a mismatched
        training program (see :func:`open_export`), bad weights.
    FileNotFoundError
        Missing files.
    """
    from ..data.recordings import load_many
    from ..signal.windows import make_windows

    export = open_export(export_dir)
    b = export.bundle
    recs = load_many(data)
    calibration_labels(recs, b.class_names)
    w = make_windows(recs, b.window, channels=b.channels)
    if len(w) == 0:
        raise ValueError(f"calibration data {[str(p) for p in data]} give no full window of "
                         f"{b.window.window_s:g} s; record longer")
    wt = None
    if test_data:
        trecs = load_many(test_data)
        calibration_labels(trecs, b.class_names, what="test")
        wt = make_windows(trecs, b.window, channels=b.channels)
    weights = None
    if weights_path is not None:
        p = V.check_file(weights_path, what="sample weights", suffixes=(".npy",))
        try:
            weights = np.load(p, allow_pickle=False)
        except ValueError as e:
            raise ValueError(f"sample weights {str(p)!r} are not a plain .npy array ({e})") from e
    patch, report = personalize_on_device(export.folder, w, config=config, sample_weights=weights, test_windows=wt,
                                          num_threads=num_threads)
    out = Path(out_dir)
    save_patch(patch, out / "patch.safetensors")
    report["patch"] = str(out / "patch.safetensors")
    report["data"] = [str(p) for p in data]
    report["test_data"] = [str(p) for p in test_data]
    write_json_atomic(out / "ondevice_report.json", report)
    return report
