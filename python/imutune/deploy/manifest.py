"""The export manifest: everything a phone needs to preprocess identically.

A manifest (``manifest.json``) sits next to the exported artifacts. The same
key/value pairs (JSON-encoded values) are also stored in the ONNX
``metadata_props``. Fields:

``model_name``, ``model_config`` (the registry config used to build the model),
``class_names`` (K,), ``channels`` (C,), ``sample_rate_hz`` (Hz),
``window_s`` / ``hop_s`` (s) and the derived ``window_samples`` /
``hop_samples``, ``input_layout`` (``"NCT"``: batch, channel, time),
``input_name`` / ``output_name`` (``"x"`` -> ``"logits"``), ``normalization``
(per-channel ``mean`` and ``std`` in the channels' physical units; the model
input is ``(x - mean) / std``), and ``artifacts``: file name -> ``{"sha256",
"format", "precision", "parity_max_abs_err"}``.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .. import _validation as V
from .._io import sha256_file, write_json_atomic
from ..signal.windows import seconds_to_samples

if TYPE_CHECKING:
    from ..train.bundle import ModelBundle

__all__ = ["manifest_for", "Manifest", "load_manifest", "verify_artifact", "MANIFEST_VERSION"]

MANIFEST_VERSION = 1


@dataclass(frozen=True)
class Manifest:
    """Preprocessing and artifact metadata of one exported model.

    ``norm_mean`` / ``norm_std`` are per-channel, length C, in the physical
    units of ``channels``. ``artifacts`` maps a file name (relative to the
    manifest's folder) to ``{"sha256": str, "format": "onnx" | "pte",
    "precision": "fp32" | "int8", ...}``.
    """

    model_name: str
    model_config: dict
    class_names: tuple[str, ...]
    channels: tuple[str, ...]
    sample_rate_hz: float
    window_s: float
    hop_s: float
    norm_mean: tuple[float, ...]
    norm_std: tuple[float, ...]
    artifacts: dict = field(default_factory=dict)
    input_layout: str = "NCT"
    input_name: str = "x"
    output_name: str = "logits"
    version: int = MANIFEST_VERSION

    def __post_init__(self) -> None:
        V.check_positive("sample_rate_hz", self.sample_rate_hz, where="manifest")
        V.check_positive("window_s", self.window_s, where="manifest")
        V.check_positive("hop_s", self.hop_s, where="manifest")
        if len(self.norm_mean) != len(self.channels) or len(self.norm_std) != len(self.channels):
            raise ValueError(f"manifest normalization has {len(self.norm_mean)} means and {len(self.norm_std)} stds; "
                             f"expected {len(self.channels)} (one per channel)")
        if any(not (s > 0) for s in self.norm_std):
            raise ValueError(f"manifest norm_std must be > 0 per channel, got {list(self.norm_std)}")

    @property
    def window_samples(self) -> int:
        """Window length T in samples at ``sample_rate_hz``."""
        return seconds_to_samples(self.window_s, self.sample_rate_hz)

    @property
    def hop_samples(self) -> int:
        """Hop in samples at ``sample_rate_hz`` (at least 1)."""
        return seconds_to_samples(self.hop_s, self.sample_rate_hz, minimum=1)

    def with_artifact(self, name: str, **info: Any) -> "Manifest":
        """Return a copy with ``artifacts[name]`` set to ``info``."""
        arts = dict(self.artifacts)
        arts[name] = dict(info)
        return replace(self, artifacts=arts)

    def to_dict(self) -> dict:
        """JSON-ready dict, with the derived sample counts added."""
        d = asdict(self)
        d["class_names"] = list(self.class_names)
        d["channels"] = list(self.channels)
        d["norm_mean"] = [float(v) for v in self.norm_mean]
        d["norm_std"] = [float(v) for v in self.norm_std]
        d["window_samples"] = self.window_samples
        d["hop_samples"] = self.hop_samples
        return d

    def metadata_props(self) -> dict[str, str]:
        """String key/value pairs for ONNX ``metadata_props`` (values JSON-encoded).

        ``artifacts`` is left out: an artifact cannot carry its own hash.
        """
        d = self.to_dict()
        d.pop("artifacts")
        return {f"imutune.{k}": json.dumps(v) for k, v in d.items()}

    def save(self, path: str | os.PathLike) -> Path:
        """Write ``manifest.json`` atomically."""
        return write_json_atomic(path, self.to_dict())

    def normalize(self, x: np.ndarray) -> np.ndarray:
        """Apply ``(x - mean) / std`` to channel-last ``(..., C)`` samples, float32."""
        mean = np.asarray(self.norm_mean, dtype=np.float32)
        std = np.asarray(self.norm_std, dtype=np.float32)
        return ((np.asarray(x, dtype=np.float32) - mean) / std).astype(np.float32, copy=False)


def load_manifest(path: str | os.PathLike) -> Manifest:
    """Read a ``manifest.json``.

    Raises
    ------
    FileNotFoundError
        If the file does not exist.
    ValueError
        If it is not valid JSON, a field is missing, or the version is unknown.
    """
    p = V.check_file(path, what="manifest")
    try:
        d = json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"manifest {str(p)!r} is not valid JSON ({e}); it may be truncated") from e
    if not isinstance(d, dict):
        raise ValueError(f"manifest {str(p)!r} holds a JSON {type(d).__name__}; expected an object")
    if d.get("version") != MANIFEST_VERSION:
        raise ValueError(f"manifest {str(p)!r} has version {d.get('version')!r}; expected {MANIFEST_VERSION}")
    d.pop("window_samples", None)
    d.pop("hop_samples", None)
    try:
        d["class_names"] = tuple(d["class_names"])
        d["channels"] = tuple(d["channels"])
        d["norm_mean"] = tuple(d["norm_mean"])
        d["norm_std"] = tuple(d["norm_std"])
        return Manifest(**d)
    except (KeyError, TypeError) as e:
        raise ValueError(f"manifest {str(p)!r} is missing or has unexpected fields ({e})") from e


def verify_artifact(manifest: Manifest, artifact_path: str | os.PathLike) -> dict:
    """Check an artifact file against its manifest entry (by file name and SHA-256).

    Returns
    -------
    dict
        The artifact's manifest entry.

    Raises
    ------
    FileNotFoundError
        If the artifact does not exist.
    ValueError
        If the manifest has no entry for the file, or the hash differs.
    """
    p = V.check_file(artifact_path, what="model artifact")
    entry = manifest.artifacts.get(p.name)
    if entry is None:
        raise ValueError(f"model artifact {str(p)!r} is not listed in the manifest; it lists {sorted(manifest.artifacts)}")
    digest = sha256_file(p)
    if digest != entry.get("sha256"):
        raise ValueError(f"model artifact {str(p)!r} has sha256 {digest[:16]}...; the manifest expects "
                         f"{str(entry.get('sha256'))[:16]}... (file changed or belongs to another export)")
    return entry


def manifest_for(bundle: ModelBundle) -> Manifest:
    """The export manifest of a bundle (artifacts filled in by :func:`imutune.deploy.export.write_exports`)."""
    w = bundle.window
    return Manifest(model_name=bundle.model_name, model_config=asdict(bundle.model.config),
                    class_names=tuple(bundle.class_names), channels=tuple(bundle.channels),
                    sample_rate_hz=w.sample_rate_hz, window_s=w.window_s, hop_s=w.hop_s,
                    norm_mean=tuple(float(v) for v in bundle.normalizer.mean),
                    norm_std=tuple(float(v) for v in bundle.normalizer.std))
