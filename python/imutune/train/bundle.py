"""Model bundles: ``model.safetensors`` (weights) and ``model.json`` (registry name and config,
class names, channels, window config, normalization statistics, training info).
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .. import _validation as V
from .._io import write_bytes_atomic, write_json_atomic
from ..metrics import accuracy, macro_f1
from ..models.resnet1d import ResNet1d, create_model
from ..signal.windows import Normalizer, WindowConfig, Windows
from .loop import predict_logits

__all__ = ["evaluate_bundle", 'ModelBundle', 'save_bundle', 'load_bundle']


@dataclass(frozen=True, eq=False)
class ModelBundle:
    """A trained model with everything needed to feed it."""

    model: ResNet1d
    model_name: str
    class_names: tuple[str, ...]
    channels: tuple[str, ...]
    window: WindowConfig
    normalizer: Normalizer
    info: dict = field(default_factory=dict)   # training config, metrics, provenance


def save_bundle(bundle: ModelBundle, out_dir: str | os.PathLike) -> Path:
    """Write ``model.safetensors`` and ``model.json`` into ``out_dir`` (atomically)."""
    from safetensors.torch import save as st_save

    out = Path(out_dir)
    m = bundle.model
    state = {k: v.detach().cpu().contiguous() for k, v in m.state_dict().items()}
    write_bytes_atomic(out / "model.safetensors", st_save(state))
    meta = {"model_name": bundle.model_name, "model_config": asdict(m.config), "in_channels": m.in_channels,
            "num_classes": m.num_classes, "class_names": list(bundle.class_names),
            "channels": list(bundle.channels), "window": asdict(bundle.window),
            "normalization": bundle.normalizer.to_dict(), "info": bundle.info}
    write_json_atomic(out / "model.json", meta)
    return out


def load_bundle(path: str | os.PathLike) -> ModelBundle:
    """Read a bundle folder (or its ``model.json``) written by :func:`save_bundle`.

    Raises
    ------
    FileNotFoundError
        If ``model.json`` or ``model.safetensors`` is missing.
    ValueError
        If the metadata is incomplete or the weights do not fit the config.
    """
    from safetensors.torch import load_file

    p = Path(path)
    folder = p if p.is_dir() else p.parent
    meta_path = V.check_file(folder / "model.json", what="model metadata")
    weights_path = V.check_file(folder / "model.safetensors", what="model weights")
    try:
        meta = json.loads(meta_path.read_text())
        cfg = meta["model_config"]
        model = create_model(meta["model_name"], in_channels=meta["in_channels"], num_classes=meta["num_classes"],
                             **{k: tuple(v) if isinstance(v, list) else v for k, v in cfg.items()})
        window = WindowConfig(**meta["window"])
        norm = Normalizer(np.asarray(meta["normalization"]["mean"], np.float32),
                          np.asarray(meta["normalization"]["std"], np.float32))
    except (KeyError, TypeError, json.JSONDecodeError) as e:
        raise ValueError(f"model metadata {str(meta_path)!r} is incomplete or invalid ({type(e).__name__}: {e})") from e
    try:
        state = load_file(str(weights_path))
        model.load_state_dict(state)
    except Exception as e:
        raise ValueError(f"model weights {str(weights_path)!r} do not match {meta['model_name']} "
                         f"with config {cfg} ({type(e).__name__}: {e})") from e
    model.eval()
    return ModelBundle(model, meta["model_name"], tuple(meta["class_names"]), tuple(meta["channels"]),
                       window, norm, meta.get("info", {}))


def evaluate_bundle(bundle: ModelBundle, windows: Windows, *, device: str = "auto") -> dict[str, float]:
    """Accuracy and macro-F1 of ``bundle`` on ``windows`` (in [0, 1])."""
    pred = predict_logits(bundle.model, bundle.normalizer(windows.x), device=device).argmax(1)
    return {"accuracy": accuracy(windows.y, pred), "macro_f1": macro_f1(windows.y, pred, windows.num_classes)}
