"""imutune: on-device personalization of IMU sensor models.

The public Python API, one name per pipeline step (each is documented where it is defined)::

    import imutune as it

    recs = it.load_recordings("watch")                         # or .npz / .csv files, SHL-2018 folders
    w = it.make_windows(recs, it.WindowConfig(window_s=2.0, hop_s=0.5, sample_rate_hz=50.0))
    base = it.pretrain(w, model_name="mobilecnn1d")            # a ModelBundle
    user = it.finetune(base, user_windows, config=it.FinetuneConfig(loss="filterloss-cv"))
    manifest = it.write_exports(user.model, it.manifest_for(user), "out/", user_windows.x)
    backend = it.load_backend("out/model.pte", manifest=manifest)
    result = it.replay(recording, backend, manifest)

Subpackages, lowest layer first (a module never imports one above it): :mod:`imutune.data`
(recordings, stream readers), :mod:`imutune.signal` (windows, resampling, distortions, label noise),
:mod:`imutune.models` (registry), :mod:`imutune.train` (training loop, losses, bundles, pretraining),
:mod:`imutune.personalize` (quality filter, FilterLoss fine-tuning, baselines, selective filters,
patches, protocols), :mod:`imutune.deploy` (manifest, ONNX/ExecuTorch export, int8, backends),
:mod:`imutune.runtime` (device profiles, replay), then the applications (``jobs``, ``demo``, ``cli``)
and the benchmarks (:mod:`imutune.bench`).

Names are imported on first use, so ``import imutune`` stays light (no torch until a training or
export name is touched).
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

#: public name -> module that defines it
_API: dict[str, str] = {
    # data
    "Recording": "imutune.data.recording",
    "load_recordings": "imutune.data.recordings",
    "load_watch": "imutune.data.watch",
    "save_npz": "imutune.data.npz",
    "open_stream": "imutune.data.streams",
    # signal
    "WindowConfig": "imutune.signal.windows",
    "Windows": "imutune.signal.windows",
    "make_windows": "imutune.signal.windows",
    "Preprocessing": "imutune.signal.contract",
    # models
    "create_model": "imutune.models.resnet1d",
    "list_models": "imutune.models.resnet1d",
    # train
    "TrainConfig": "imutune.train.config",
    "PRETRAIN": "imutune.train.config",
    "FINETUNE": "imutune.train.config",
    "train": "imutune.train.loop",
    "ModelBundle": "imutune.train.bundle",
    "load_bundle": "imutune.train.bundle",
    "save_bundle": "imutune.train.bundle",
    "evaluate_bundle": "imutune.train.bundle",
    "pretrain": "imutune.train.pretrain",
    # personalize
    "FinetuneConfig": "imutune.personalize.finetune",
    "finetune": "imutune.personalize.finetune",
    "calibrate_then_use": "imutune.personalize.protocols",
    "SelectiveConfig": "imutune.personalize.selective",
    "finetune_selected": "imutune.personalize.selective",
    "make_patch": "imutune.personalize.patch",
    "apply_patch": "imutune.personalize.patch",
    # deploy
    "Manifest": "imutune.deploy.manifest",
    "manifest_for": "imutune.deploy.manifest",
    "load_manifest": "imutune.deploy.manifest",
    "write_exports": "imutune.deploy.export",
    "load_backend": "imutune.deploy.backends",
    # runtime
    "ReplayConfig": "imutune.runtime.config",
    "replay": "imutune.runtime.replay",
}

__all__ = sorted(_API) + ["__version__"]


def __getattr__(name: str) -> Any:
    module = _API.get(name)
    if module is None:
        raise AttributeError(f"module 'imutune' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value          # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))
