"""The export manifest: everything a phone needs to preprocess identically.

A manifest (``manifest.json``) sits next to the exported artifacts. It is one
flat JSON object with exactly these keys:

``version`` (:data:`MANIFEST_VERSION`), ``model_name``, ``model_config`` (the
registry config used to build the model), the preprocessing contract
(:class:`~imutune.signal.contract.Preprocessing`, keys
:data:`~imutune.signal.contract.CONTRACT_KEYS`: ``channels`` (C),
``units`` (per channel, or null), ``class_names`` (K), ``sample_rate_hz``
(Hz), ``window_s`` / ``hop_s`` (s) and the derived ``window_samples`` /
``hop_samples`` (verified on load), ``min_purity``, and the per-channel
``norm_mean`` / ``norm_std`` in the channels' physical units: the model input
is ``(x - mean) / std``), ``input_layout`` (``"NCT"``: batch, channel,
time), ``input_name`` / ``output_name`` (``"x"`` -> ``"logits"``), and
``artifacts``: file name -> ``{"sha256", "format", "precision", ...}``.

The same key/value pairs except ``artifacts`` (JSON-encoded values) are
embedded in every artifact (ONNX ``metadata_props``, the ``.pte`` constant
method), and :func:`imutune.deploy.backends.load_backend` compares them with
the manifest in full.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .. import _validation as V
from .._io import sha256_file, write_json_atomic
from ..signal.contract import CONTRACT_KEYS, DEFAULT_MIN_PURITY, Preprocessing, split_contract

if TYPE_CHECKING:
    from ..train.bundle import ModelBundle

__all__ = ["manifest_for", "Manifest", "load_manifest", "verify_artifact", "MANIFEST_VERSION", "MANIFEST_KEYS",
           "ARTIFACT_FORMATS", "INPUT_LAYOUTS"]

#: Version 2: the preprocessing contract in full (units, purity; sample counts verified).
MANIFEST_VERSION = 2
#: Keys of ``manifest.json`` besides the contract's.
MANIFEST_KEYS = ("version", "model_name", "model_config", "input_layout", "input_name", "output_name", "artifacts")
#: ``input_layout`` values a manifest may declare.
INPUT_LAYOUTS = ("NCT",)
#: ``format`` values of an artifact entry.
ARTIFACT_FORMATS = ("onnx", "pte")
# the flat keywords (and old positional order) a Manifest can be built from instead of a Preprocessing
_FLAT_ORDER = ("class_names", "channels", "sample_rate_hz", "window_s", "hop_s", "norm_mean", "norm_std",
               "artifacts", "input_layout", "input_name", "output_name", "version")
_FLAT_CONTRACT = ("class_names", "channels", "sample_rate_hz", "window_s", "hop_s", "norm_mean", "norm_std",
                  "units", "min_purity")
_MAX_JSON_BYTES = 64 << 20


@dataclass(frozen=True, init=False)
class Manifest:
    """Preprocessing and artifact metadata of one exported model.

    Construct as ``Manifest(model_name, model_config, preprocessing)`` with a
    :class:`~imutune.signal.contract.Preprocessing` that has normalization
    (usually :func:`manifest_for` a bundle), or with the contract's fields as
    keywords (``class_names``, ``channels``, ``sample_rate_hz``,
    ``window_s``, ``hop_s``, ``norm_mean``, ``norm_std``, optional ``units``
    and ``min_purity``), from which the contract is built; given with a
    Preprocessing, such keywords replace its fields (so
    ``dataclasses.replace(manifest, hop_s=1.0)`` works). The contract's
    fields read through: ``manifest.channels``, ``.window_samples``,
    ``.hop_samples``, ``.norm_mean``...

    ``artifacts`` maps a plain file name (in the manifest's folder) to
    ``{"sha256": str, "format": "onnx" | "pte", "precision": "fp32" |
    "int8", ...}``.

    Raises
    ------
    ValueError
        If a field is invalid (the message names it; contract fields as in
        :class:`~imutune.signal.contract.Preprocessing`).
    """

    model_name: str
    model_config: dict
    preprocessing: Preprocessing
    artifacts: dict
    input_layout: str
    input_name: str
    output_name: str
    version: int

    def __init__(self, model_name: str, model_config: dict, preprocessing: Any = None, *flat: Any,
                 artifacts: dict | None = None, input_layout: str = "NCT", input_name: str = "x",
                 output_name: str = "logits", version: int = MANIFEST_VERSION, **fields: Any) -> None:
        if not isinstance(preprocessing, Preprocessing):
            if preprocessing is not None:
                flat = (preprocessing, *flat)
            if len(flat) > len(_FLAT_ORDER):
                raise ValueError(f"Manifest takes at most {2 + len(_FLAT_ORDER)} positional arguments")
            given = dict(zip(_FLAT_ORDER, flat))
            dup = sorted(set(given) & set(fields))
            if dup:
                raise ValueError(f"Manifest got {dup} both positionally and by keyword")
            given.update(fields)
            unknown = sorted(k for k in given if k not in _FLAT_ORDER and k not in _FLAT_CONTRACT)
            if unknown:
                raise ValueError(f"Manifest got unexpected fields {unknown}")
            artifacts = given.pop("artifacts", artifacts)
            input_layout = given.pop("input_layout", input_layout)
            input_name = given.pop("input_name", input_name)
            output_name = given.pop("output_name", output_name)
            version = given.pop("version", version)
            missing = [k for k in _FLAT_CONTRACT[:7] if k not in given]
            if missing:
                raise ValueError(f"Manifest needs a Preprocessing or the fields {list(_FLAT_CONTRACT[:7])}; "
                                 f"missing {missing}")
            preprocessing = Preprocessing(
                channels=tuple(given["channels"]), class_names=tuple(given["class_names"]),
                sample_rate_hz=given["sample_rate_hz"], window_s=given["window_s"], hop_s=given["hop_s"],
                units=given.get("units"), min_purity=given.get("min_purity", DEFAULT_MIN_PURITY),
                norm_mean=tuple(given["norm_mean"]), norm_std=tuple(given["norm_std"]))
        elif flat:
            raise ValueError("Manifest(model_name, model_config, preprocessing) takes the other fields by keyword")
        elif fields:   # contract fields as overrides: dataclasses.replace(manifest, hop_s=1.0) works
            unknown = sorted(k for k in fields if k not in _FLAT_CONTRACT)
            if unknown:
                raise ValueError(f"Manifest got unexpected fields {unknown}; contract fields that may be changed: "
                                 f"{list(_FLAT_CONTRACT)}")
            preprocessing = replace(preprocessing, **{k: tuple(v) if isinstance(v, list) else v
                                                      for k, v in fields.items()})
        if not preprocessing.has_normalization:
            raise ValueError("manifest preprocessing needs norm_mean / norm_std (the model's normalization)")
        if not isinstance(model_config, dict):
            raise ValueError(f"manifest model_config must be a dict, got {type(model_config).__name__}")
        for name, v in (("model_name", model_name), ("input_name", input_name), ("output_name", output_name)):
            if not isinstance(v, str) or not v or len(v) > 256:
                raise ValueError(f"manifest {name} must be a non-empty str of at most 256 characters, got "
                                 f"{v!r:.80}")
        if input_layout not in INPUT_LAYOUTS:
            raise ValueError(f"manifest input_layout is {input_layout!r:.80}; expected one of {list(INPUT_LAYOUTS)} "
                             "(batch, channel, time)")
        if isinstance(version, bool) or version != MANIFEST_VERSION:
            raise ValueError(f"manifest version is {version!r}; expected {MANIFEST_VERSION}")
        arts = {} if artifacts is None else artifacts
        _check_artifacts(arts, "manifest")
        set_ = object.__setattr__
        set_(self, "model_name", model_name)
        set_(self, "model_config", model_config)
        set_(self, "preprocessing", preprocessing)
        set_(self, "artifacts", {k: dict(v) for k, v in arts.items()})
        set_(self, "input_layout", input_layout)
        set_(self, "input_name", input_name)
        set_(self, "output_name", output_name)
        set_(self, "version", int(version))

    # ------------------------------------------------------------------ the contract's fields

    channels = property(lambda self: self.preprocessing.channels, doc="C channel names in model order.")
    class_names = property(lambda self: self.preprocessing.class_names, doc="K class names in logit order.")
    units = property(lambda self: self.preprocessing.units, doc="Unit per channel (None: not declared).")
    sample_rate_hz = property(lambda self: self.preprocessing.sample_rate_hz, doc="Model sample rate in Hz.")
    window_s = property(lambda self: self.preprocessing.window_s, doc="Window length in seconds.")
    hop_s = property(lambda self: self.preprocessing.hop_s, doc="Hop in seconds.")
    min_purity = property(lambda self: self.preprocessing.min_purity, doc="Training-window label purity.")
    norm_mean = property(lambda self: self.preprocessing.norm_mean, doc="Per-channel mean (C,).")
    norm_std = property(lambda self: self.preprocessing.norm_std, doc="Per-channel std (C,), > 0.")

    @property
    def window_samples(self) -> int:
        """Window length T in samples at ``sample_rate_hz``."""
        return self.preprocessing.window_samples

    @property
    def hop_samples(self) -> int:
        """Hop in samples at ``sample_rate_hz`` (at least 1)."""
        return self.preprocessing.hop_samples

    def with_artifact(self, name: str, **info: Any) -> "Manifest":
        """Return a copy with ``artifacts[name]`` set to ``info``."""
        arts = dict(self.artifacts)
        arts[name] = dict(info)
        return Manifest(self.model_name, self.model_config, self.preprocessing, artifacts=arts,
                        input_layout=self.input_layout, input_name=self.input_name, output_name=self.output_name,
                        version=self.version)

    def to_dict(self) -> dict:
        """JSON-ready flat dict (the contract's keys at the top level, sample counts included)."""
        return {"version": self.version, "model_name": self.model_name, "model_config": self.model_config,
                **self.preprocessing.to_dict(), "input_layout": self.input_layout, "input_name": self.input_name,
                "output_name": self.output_name, "artifacts": {k: dict(v) for k, v in self.artifacts.items()}}

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


def _check_artifacts(arts: Any, src: str) -> None:
    """``artifacts``: plain file name -> entry with a hex ``sha256`` and a known ``format``."""
    if not isinstance(arts, dict):
        raise ValueError(f"{src}: artifacts is a {type(arts).__name__}; expected an object (file name -> entry)")
    for name, entry in arts.items():
        if (not isinstance(name, str) or not name or name in (".", "..") or "/" in name or "\\" in name
                or "\0" in name):
            raise ValueError(f"{src}: artifact name {name!r} is not a plain file name; expected a file in the "
                             "manifest's folder such as 'model.onnx'")
        if not isinstance(entry, dict):
            raise ValueError(f"{src}: artifacts[{name!r}] is a {type(entry).__name__}; expected an object")
        sha = entry.get("sha256")
        if not isinstance(sha, str) or not sha:
            raise ValueError(f"{src}: artifacts[{name!r}] has sha256 {sha!r}; expected a hex SHA-256 string")
        fmt = entry.get("format")
        if fmt is not None and fmt not in ARTIFACT_FORMATS:
            raise ValueError(f"{src}: artifacts[{name!r}] has format {fmt!r}; expected one of "
                             f"{list(ARTIFACT_FORMATS)}")


def _read_json_object(p: Path, what: str) -> dict:
    size = p.stat().st_size
    if size > _MAX_JSON_BYTES:
        raise ValueError(f"{what} {str(p)!r} is {size} bytes; expected at most {_MAX_JSON_BYTES}")
    try:
        text = p.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ValueError(f"{what} {str(p)!r} is not UTF-8 text ({e}); expected JSON") from None
    try:
        d = json.loads(text)
    except (ValueError, RecursionError) as e:   # JSONDecodeError, int too large, deep nesting
        raise ValueError(f"{what} {str(p)!r} is not valid JSON ({type(e).__name__}: {str(e)[:200]}); it may be "
                         "truncated") from None
    if not isinstance(d, dict):
        raise ValueError(f"{what} {str(p)!r} holds a JSON {type(d).__name__}; expected an object")
    return d


def load_manifest(path: str | os.PathLike) -> Manifest:
    """Read a ``manifest.json`` strictly.

    Raises
    ------
    FileNotFoundError
        If the file does not exist.
    ValueError
        If it is not UTF-8 JSON holding an object, the version is not
        :data:`MANIFEST_VERSION`, a field is missing or unknown, or a value is
        invalid (wrong type, NaN, a stored sample count that disagrees with
        the seconds, a non-plain artifact name...). The message names the file,
        the field, the value and the expectation.
    """
    p = V.check_file(path, what="manifest")
    src = f"manifest {str(p)!r}"
    d = _read_json_object(p, "manifest")
    if d.get("version") != MANIFEST_VERSION or isinstance(d.get("version"), bool):
        raise ValueError(f"{src} has version {d.get('version')!r}; expected {MANIFEST_VERSION} (re-export with "
                         "this imutune)")
    spec_part, rest = split_contract(d)
    missing = [k for k in MANIFEST_KEYS if k not in rest] + [k for k in CONTRACT_KEYS if k not in spec_part]
    unknown = sorted(str(k) for k in rest if k not in MANIFEST_KEYS)
    if missing or unknown:
        raise ValueError(f"{src} is missing or has unexpected fields: missing {missing}, unknown {unknown}; "
                         f"expected {list(MANIFEST_KEYS)} plus {list(CONTRACT_KEYS)}")
    spec = Preprocessing.from_dict(spec_part, source=src, require_normalization=True)
    _check_artifacts(rest["artifacts"], src)
    try:
        return Manifest(rest["model_name"], rest["model_config"], spec, artifacts=rest["artifacts"],
                        input_layout=rest["input_layout"], input_name=rest["input_name"],
                        output_name=rest["output_name"], version=rest["version"])
    except ValueError as e:
        raise ValueError(f"{src}: {e}") from None


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
    """The export manifest of a bundle: its contract as is (artifacts filled in by
    :func:`imutune.deploy.export.write_exports`)."""
    return Manifest(bundle.model_name, asdict(bundle.model.config), bundle.preprocessing)
