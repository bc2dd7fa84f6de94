"""Model bundles: ``model.safetensors`` (weights) and ``model.json`` (metadata).

``model.json`` is one JSON object with exactly these keys:

``format`` (``"imutune-model"``), ``version`` (:data:`BUNDLE_VERSION`),
``model_name`` (registry name), ``model_config`` (the registry config the
weights were built with), ``in_channels`` (C), ``num_classes`` (K), the
preprocessing contract's keys at the top level
(:data:`imutune.signal.contract.CONTRACT_KEYS`: channels, units, class names,
sample rate, window, hop, sample counts, purity, normalization), and ``info``
(training config, metrics, provenance).

``model.safetensors`` holds the state dict; its metadata repeats
``format``, ``model_name`` and ``model_config`` so that a ``model.json``
paired with another model's weights is refused on load.
"""
from __future__ import annotations

import functools
import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .._io import write_bytes_atomic, write_json_atomic
from ..metrics import accuracy, macro_f1
from ..models.resnet1d import ResNet1d, create_model, default_config, list_models
from ..signal.contract import CONTRACT_KEYS, Preprocessing, split_contract
from ..signal.windows import Normalizer, WindowConfig, Windows
from .loop import predict_logits

__all__ = ["evaluate_bundle", "ModelBundle", "save_bundle", "load_bundle", "BUNDLE_FORMAT", "BUNDLE_VERSION",
           "BUNDLE_KEYS"]

BUNDLE_FORMAT = "imutune-model"
BUNDLE_VERSION = 1
#: Keys of ``model.json`` besides the contract's.
BUNDLE_KEYS = ("format", "version", "model_name", "model_config", "in_channels", "num_classes", "info")
_MAX_JSON_BYTES = 64 << 20          # model.json larger than this is refused before parsing
_MAX_CONFIG_INT = 1 << 16           # widths, kernels, strides, blocks per stage
_MAX_STAGES = 64


@dataclass(frozen=True, eq=False, init=False)
class ModelBundle:
    """A trained model with the preprocessing contract it was trained with.

    Construct as ``ModelBundle(model, model_name, preprocessing, info)``, where
    ``preprocessing`` is the :class:`~imutune.signal.contract.Preprocessing` of
    the training windows with their normalization (see
    :func:`imutune.train.pretrain.pretrain`), or derive one from another with
    :meth:`derive`. The parts form ``ModelBundle(model, model_name,
    class_names, channels, window, normalizer, info)`` builds the same
    contract from a window config (or a contract, whose units are kept) and a
    :class:`Normalizer`.

    ``class_names``, ``channels``, ``window`` (a :class:`WindowConfig`),
    ``normalizer`` and ``units`` are read from the contract.

    Raises
    ------
    ValueError
        If the contract has no normalization, or the model's input channels or
        class count differ from the contract's.
    """

    model: ResNet1d
    model_name: str
    preprocessing: Preprocessing
    info: dict

    def __init__(self, model: Any, model_name: str, preprocessing: Any, *parts: Any,
                 info: dict | None = None) -> None:
        if isinstance(preprocessing, Preprocessing):
            if len(parts) > 1:
                raise ValueError("ModelBundle(model, model_name, preprocessing, info) takes at most 4 positional "
                                 f"arguments; got {3 + len(parts)}")
            if parts:
                info = parts[0]
            spec = preprocessing
        else:
            if len(parts) not in (3, 4):
                raise ValueError("ModelBundle takes (model, model_name, preprocessing[, info]) or (model, "
                                 "model_name, class_names, channels, window, normalizer[, info])")
            channels, window, normalizer = parts[:3]
            if len(parts) == 4:
                info = parts[3]
            spec = _contract_from_parts(preprocessing, channels, window, normalizer)
        if not isinstance(model_name, str) or not model_name:
            raise ValueError(f"model_name must be a non-empty str, got {model_name!r}")
        if not spec.has_normalization:
            raise ValueError("a ModelBundle's preprocessing needs norm_mean / norm_std (the normalization fitted "
                             "on the training windows)")
        c_in, k = getattr(model, "in_channels", None), getattr(model, "num_classes", None)
        if c_in is not None and c_in != spec.num_channels:
            raise ValueError(f"model takes {c_in} input channels but the preprocessing lists "
                             f"{spec.num_channels} {list(spec.channels)}")
        if k is not None and k != spec.num_classes:
            raise ValueError(f"model has {k} outputs but the preprocessing lists {spec.num_classes} classes "
                             f"{list(spec.class_names)}")
        if info is not None and not isinstance(info, dict):
            raise ValueError(f"info must be a dict, got {type(info).__name__}")
        object.__setattr__(self, "model", model)
        object.__setattr__(self, "model_name", model_name)
        object.__setattr__(self, "preprocessing", spec)
        object.__setattr__(self, "info", dict(info or {}))

    # ------------------------------------------------------------------ views of the contract

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.preprocessing.class_names

    @property
    def channels(self) -> tuple[str, ...]:
        return self.preprocessing.channels

    @property
    def units(self) -> tuple[str | None, ...] | None:
        return self.preprocessing.units

    @property
    def window(self) -> WindowConfig:
        """The window config of the contract (window, hop, sample rate, purity)."""
        return WindowConfig.from_preprocessing(self.preprocessing)

    @property
    def normalizer(self) -> Normalizer:
        """``(x - mean) / std`` with the contract's per-channel statistics (one object per statistics)."""
        return _normalizer(self.preprocessing.norm_mean, self.preprocessing.norm_std)

    def derive(self, model: Any, *, class_names: tuple[str, ...] | list[str] | None = None,
               info: dict | None = None) -> "ModelBundle":
        """A bundle for ``model`` with this bundle's contract (and name), optionally another class list."""
        spec = self.preprocessing if class_names is None else self.preprocessing.with_classes(class_names)
        return ModelBundle(model, self.model_name, spec, {} if info is None else info)


def contract_of_windows(windows: Windows, window: WindowConfig | None = None) -> Preprocessing:
    """The contract a model trained on ``windows`` gets (without normalization).

    Windows from :func:`~imutune.signal.windows.make_windows` carry it;
    ``window`` must then agree with it (or be None). Hand-built windows need
    ``window``, and their T must be its ``window_samples``.

    Raises
    ------
    ValueError
        If ``window`` disagrees with the windows, or neither gives a contract.
    """
    if not isinstance(windows, Windows):
        raise ValueError(f"windows must be Windows, got {type(windows).__name__}")
    if window is not None and not isinstance(window, WindowConfig):
        raise ValueError(f"window must be a WindowConfig or None, got {type(window).__name__}")
    spec = windows.preprocessing
    shape = tuple(windows.x.shape)
    if spec is None:
        if window is None:
            raise ValueError("windows carry no preprocessing (built by hand, not by make_windows); pass window= "
                             "(the WindowConfig they were cut with)")
        if len(shape) != 3 or shape[2] != window.window_samples:
            raise ValueError(f"windows have shape {shape} (T={shape[-1]} samples), but window= gives "
                             f"{window.window_samples} samples ({window.window_s:g} s at {window.sample_rate_hz:g} "
                             "Hz); a model must be described by the windows it is trained on")
        return Preprocessing(channels=tuple(windows.channels), class_names=tuple(windows.class_names),
                             **_window_fields(window))
    if window is not None:
        bad = [(k, v, getattr(spec, k)) for k, v in _window_fields(window).items()
               if not math.isclose(v, getattr(spec, k), rel_tol=1e-9)]
        if bad:
            k, v, have = bad[0]
            raise ValueError(f"window= has {k} = {v!r}, but the windows were cut with {k} = {have!r} "
                             f"({spec.describe()}); pass the WindowConfig the windows were made with, or none")
    return spec


@functools.lru_cache(maxsize=256)
def _normalizer(mean: tuple[float, ...], std: tuple[float, ...]) -> Normalizer:
    m, s = np.asarray(mean, np.float32), np.asarray(std, np.float32)
    m.setflags(write=False)     # shared by every bundle with these statistics
    s.setflags(write=False)
    return Normalizer(m, s)


def _contract_from_parts(class_names: Any, channels: Any, window: Any, normalizer: Any) -> Preprocessing:
    if not isinstance(normalizer, Normalizer):
        raise ValueError(f"normalizer must be a Normalizer, got {type(normalizer).__name__}")
    if isinstance(window, Preprocessing):
        base = window
        if tuple(channels) != base.channels:
            raise ValueError(f"channels {list(channels)} differ from the preprocessing's {list(base.channels)}")
    elif isinstance(window, WindowConfig):
        base = Preprocessing(channels=tuple(channels), class_names=tuple(class_names), **_window_fields(window))
    else:
        raise ValueError(f"window must be a WindowConfig or a Preprocessing, got {type(window).__name__}")
    return base.with_classes(tuple(class_names)).with_normalization(np.asarray(normalizer.mean).tolist(),
                                                                    np.asarray(normalizer.std).tolist())


def _window_fields(w: WindowConfig) -> dict:
    return {"window_s": w.window_s, "hop_s": w.hop_s, "sample_rate_hz": w.sample_rate_hz,
            "min_purity": w.min_purity}


# --------------------------------------------------------------------------- save


def _weights_metadata(bundle: ModelBundle) -> dict[str, str]:
    return {"format": BUNDLE_FORMAT, "model_name": bundle.model_name,
            "model_config": json.dumps(_config_dict(bundle.model), sort_keys=True)}


def _config_dict(model: Any) -> dict:
    cfg = getattr(model, "config", None)
    return asdict(cfg) if cfg is not None else {}


def save_bundle(bundle: ModelBundle, out_dir: str | os.PathLike) -> Path:
    """Write ``model.safetensors`` and ``model.json`` into ``out_dir`` (atomically).

    Raises
    ------
    ValueError
        If ``bundle`` is not a :class:`ModelBundle`.
    """
    from safetensors.torch import save as st_save

    if not isinstance(bundle, ModelBundle):
        raise ValueError(f"bundle must be a ModelBundle, got {type(bundle).__name__}")
    out = Path(out_dir)
    m = bundle.model
    state = {k: v.detach().cpu().contiguous() for k, v in m.state_dict().items()}
    write_bytes_atomic(out / "model.safetensors", st_save(state, metadata=_weights_metadata(bundle)))
    meta = {"format": BUNDLE_FORMAT, "version": BUNDLE_VERSION, "model_name": bundle.model_name,
            "model_config": _config_dict(m), "in_channels": int(getattr(m, "in_channels", bundle.preprocessing.num_channels)),
            "num_classes": int(getattr(m, "num_classes", bundle.preprocessing.num_classes)),
            **bundle.preprocessing.to_dict(), "info": bundle.info}
    write_json_atomic(out / "model.json", meta)
    return out


# --------------------------------------------------------------------------- load


def _resolve_folder(path: str | os.PathLike) -> Path:
    """The bundle folder of ``path`` (a folder or its ``model.json``), with hints for common mistakes."""
    p = Path(path)
    if p.is_dir():
        folder = p
    elif p.is_file():
        if p.name != "model.json":
            raise ValueError(f"model path {str(p)!r} is a file; expected a bundle folder holding model.json and "
                             "model.safetensors (or its model.json)")
        folder = p.parent
    else:
        where = p if p.name != "model.json" else p.parent
        raise FileNotFoundError(f"model metadata {str(where / 'model.json')!r} does not exist: the model folder "
                                f"{str(where)!r} does not exist; expected a folder holding model.json and "
                                "model.safetensors (written by imutune pretrain / finetune)")
    meta = folder / "model.json"
    if not meta.is_file():
        hint = ""
        if (folder / "manifest.json").is_file():
            hint = (" It holds manifest.json: this is an export folder (for replay and the phone); pass the "
                    "bundle folder that export was made from (written by imutune pretrain / finetune).")
        elif (folder / "model.safetensors").is_file():
            hint = " It holds model.safetensors without its model.json; copy both files together."
        raise FileNotFoundError(f"model metadata {str(meta)!r} does not exist: the model folder {str(folder)!r} "
                                f"has no model.json; expected model.json and model.safetensors.{hint}")
    return folder


def _read_json_object(path: Path, what: str) -> dict:
    """Parse a JSON file into a dict; every failure is a ValueError naming ``path``."""
    size = path.stat().st_size
    if size == 0:
        raise ValueError(f"{what} {str(path)!r} is empty (0 bytes)")
    if size > _MAX_JSON_BYTES:
        raise ValueError(f"{what} {str(path)!r} is {size} bytes; expected at most {_MAX_JSON_BYTES}")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ValueError(f"{what} {str(path)!r} is not UTF-8 text ({e}); expected JSON") from None
    try:
        d = json.loads(text)
    except (ValueError, RecursionError) as e:   # JSONDecodeError, int too large to convert, nesting
        raise ValueError(f"{what} {str(path)!r} is not valid JSON ({type(e).__name__}: {str(e)[:200]}); it may "
                         "be truncated") from None
    if not isinstance(d, dict):
        raise ValueError(f"{what} {str(path)!r} holds a JSON {type(d).__name__}; expected an object")
    return d


def _check_int(name: str, v: Any, src: str, lo: int, hi: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise ValueError(f"{src}: {name} is {v!r}; expected an integer in [{lo}, {hi}]")
    return v


def _check_model_config(name: str, cfg: Any, src: str) -> dict:
    """The ``model_config`` of ``model.json``: the registry config's fields with bounded values."""
    if not isinstance(cfg, dict):
        raise ValueError(f"{src}: model_config is a {type(cfg).__name__}; expected an object of "
                         f"{name!r} config fields")
    fields = asdict(default_config(name))
    unknown = sorted(k for k in cfg if k not in fields)
    missing = [k for k in fields if k not in cfg]
    if unknown or missing:
        raise ValueError(f"{src}: model_config has unknown fields {unknown} / misses {missing}; expected exactly "
                         f"{list(fields)}")
    out: dict[str, Any] = {}
    for k, v in cfg.items():
        ref = fields[k]
        if isinstance(ref, tuple):
            if not isinstance(v, list) or not 1 <= len(v) <= _MAX_STAGES:
                raise ValueError(f"{src}: model_config.{k} is {v!r}; expected a list of 1 to {_MAX_STAGES} "
                                 "integers")
            out[k] = tuple(_check_int(f"model_config.{k}[{i}]", e, src, 1, _MAX_CONFIG_INT)
                           for i, e in enumerate(v))
        elif isinstance(ref, bool):
            if not isinstance(v, bool):
                raise ValueError(f"{src}: model_config.{k} is {v!r}; expected true or false")
            out[k] = v
        elif isinstance(ref, int):
            out[k] = _check_int(f"model_config.{k}", v, src, 1, _MAX_CONFIG_INT)
        else:  # float (dropout)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not 0 <= v < 1:
                raise ValueError(f"{src}: model_config.{k} is {v!r}; expected a number in [0, 1)")
            out[k] = float(v)
    if len(out.get("layers", fields["layers"])) != len(out.get("widths", fields["widths"])):
        raise ValueError(f"{src}: model_config layers and widths must have the same length, got "
                         f"{list(out.get('layers', fields['layers']))} and {list(out.get('widths', fields['widths']))}")
    return out


def load_bundle(path: str | os.PathLike) -> ModelBundle:
    """Read a bundle folder (or its ``model.json``) written by :func:`save_bundle`.

    Raises
    ------
    FileNotFoundError
        If the folder, ``model.json`` or ``model.safetensors`` is missing (the
        message names the folder given and what it should hold; an export
        folder gets a hint).
    ValueError
        If ``model.json`` is not a JSON object with exactly the documented keys
        and valid values (the message names the file, the field, the value and
        the expectation), if ``model.safetensors`` is not a safetensors file of
        this model (its recorded model name or config differ from
        ``model.json``, or a tensor's name or shape does not fit), or if the
        weights do not load into the model.
    """
    folder = _resolve_folder(path)
    meta_path = folder / "model.json"
    weights_path = folder / "model.safetensors"
    if not weights_path.is_file():
        raise FileNotFoundError(f"model weights {str(weights_path)!r} does not exist; the model folder "
                                f"{str(folder)!r} must hold model.json and model.safetensors")
    src = f"model metadata {str(meta_path)!r}"
    meta = _read_json_object(meta_path, "model metadata")
    spec_part, rest = split_contract(meta)
    missing = [k for k in BUNDLE_KEYS if k not in rest]
    unknown = sorted(str(k) for k in rest if k not in BUNDLE_KEYS)
    if missing or unknown:
        raise ValueError(f"{src} is incomplete or invalid: fields missing {missing} / unknown {unknown}; expected "
                         f"{list(BUNDLE_KEYS)} plus the preprocessing fields {list(CONTRACT_KEYS)} (a file from "
                         "an older imutune or another tool)")
    if rest["format"] != BUNDLE_FORMAT or rest["version"] != BUNDLE_VERSION:
        raise ValueError(f"{src} has format {rest['format']!r} version {rest['version']!r}; expected "
                         f"{BUNDLE_FORMAT!r} version {BUNDLE_VERSION}")
    name = rest["model_name"]
    if not isinstance(name, str) or name not in list_models():
        raise ValueError(f"{src}: model_name is {name!r}; expected one of {list_models()}")
    cfg = _check_model_config(name, rest["model_config"], src)
    spec = Preprocessing.from_dict(spec_part, source=src, require_normalization=True)
    c_in = _check_int("in_channels", rest["in_channels"], src, 1, _MAX_CONFIG_INT)
    k = _check_int("num_classes", rest["num_classes"], src, 1, 100_000)
    if not isinstance(rest["info"], dict):
        raise ValueError(f"{src}: info is a {type(rest['info']).__name__}; expected an object")
    state = _read_weights(weights_path, name, cfg, src)
    import torch

    with torch.device("meta"):      # shapes only: nothing is allocated for a hostile config
        skeleton = create_model(name, in_channels=c_in, num_classes=k, **cfg)
    want = {key: (tuple(t.shape), t.dtype) for key, t in skeleton.state_dict().items()}
    have = {key: (tuple(t.shape), t.dtype) for key, t in state.items()}
    if want != have:
        diff = sorted(set(want) ^ set(have))
        bad = [key for key in want if key in have and want[key] != have[key]]
        detail = (f"entries only in one of them: {diff[:4]}" if diff else
                  f"{bad[0]} has shape {have[bad[0]][0]} / {have[bad[0]][1]} in the file, the config gives "
                  f"{want[bad[0]][0]} / {want[bad[0]][1]}")
        raise ValueError(f"model weights {str(weights_path)!r} do not match {name} with config {cfg} "
                         f"(in_channels={c_in}, num_classes={k}): {detail}")
    if c_in != spec.num_channels or k != spec.num_classes:
        raise ValueError(f"{src}: in_channels={c_in} / num_classes={k} disagree with its {spec.num_channels} "
                         f"channels / {spec.num_classes} classes")
    model = create_model(name, in_channels=c_in, num_classes=k, **cfg)
    try:
        model.load_state_dict(state)
    except (RuntimeError, ValueError) as e:
        raise ValueError(f"model weights {str(weights_path)!r} do not load into {name} ({type(e).__name__}: "
                         f"{str(e)[:300]})") from None
    model.eval()
    return ModelBundle(model, name, spec, rest["info"])


def _read_weights(path: Path, name: str, cfg: dict, src: str) -> dict:
    """Tensors of ``model.safetensors``, after checking its recorded model name and config."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            wmeta = fh.metadata() or {}
            state = {key: fh.get_tensor(key) for key in fh.keys()}
    except Exception as e:  # safetensors raises its own error types (SafetensorError, ...) on garbage
        raise ValueError(f"model weights {str(path)!r} are not a readable safetensors file "
                         f"({type(e).__name__}: {str(e)[:200]})") from None
    if wmeta.get("format") != BUNDLE_FORMAT:
        raise ValueError(f"model weights {str(path)!r} have metadata format {wmeta.get('format')!r}; expected "
                         f"{BUNDLE_FORMAT!r} (weights written by save_bundle)")
    if wmeta.get("model_name") != name:
        raise ValueError(f"model weights {str(path)!r} were saved for model {wmeta.get('model_name')!r}, but "
                         f"{src} says model_name {name!r}; the two files do not belong together")
    try:
        wcfg = json.loads(wmeta.get("model_config", "null"))
    except (ValueError, RecursionError):
        wcfg = None
    full = {**asdict(default_config(name)), **cfg}
    if not isinstance(wcfg, dict) or {k: tuple(v) if isinstance(v, list) else v for k, v in wcfg.items()} != full:
        raise ValueError(f"model weights {str(path)!r} were saved with model_config {wcfg!r}, but {src} gives "
                         f"{full}; the two files do not belong together")
    return state


def evaluate_bundle(bundle: ModelBundle, windows: Windows, *, device: str = "auto") -> dict[str, float]:
    """Accuracy and macro-F1 of ``bundle`` on ``windows`` (in [0, 1]).

    Raises
    ------
    ValueError
        If the windows' classes or channels differ from the bundle's (scores
        by index across different class lists would be meaningless), or their
        preprocessing differs in what shapes the input (channels, units,
        sample rate, window; another hop is fine).
    """
    if tuple(windows.class_names) != bundle.class_names:
        raise ValueError(f"windows have classes {list(windows.class_names)}; the model scores "
                         f"{list(bundle.class_names)} (same names in the same order expected)")
    if tuple(windows.channels) != bundle.channels:
        raise ValueError(f"windows have channels {list(windows.channels)}; the model expects {list(bundle.channels)}")
    if windows.preprocessing is not None:
        windows.preprocessing.check_matches(bundle.preprocessing, where="evaluate_bundle", this_name="the windows",
                                            other_name="the model", input_only=True)
    pred = predict_logits(bundle.model, bundle.normalizer(windows.x), device=device).argmax(1)
    return {"accuracy": accuracy(windows.y, pred), "macro_f1": macro_f1(windows.y, pred, windows.num_classes)}
