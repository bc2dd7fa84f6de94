"""Resumable training checkpoints that are data, never pickles.

A checkpoint at path ``P`` (e.g. ``<out>/checkpoints/pretrain.ckpt``) is two files:

* ``P`` -- JSON: format and version, the epoch and optimiser-step counters, the
  run's identity (config, data fingerprint), the loss history and evaluation
  curve, the optimiser's hyper-parameters and non-tensor state, the scheduler
  state, the RNG states (torch CPU/CUDA and the shuffling generator as base64
  bytes, numpy's and Python's global generators as lists) and the SHA-256 of
  the tensors file;
* ``P.<first 16 hex digits of that SHA-256>.safetensors`` -- the model's state
  dict (``model.<key>``) and the optimiser's state tensors
  (``optimizer.<param index>.<name>``).

Both are written atomically (:mod:`imutune._io`), the tensors first and the
JSON last, so the JSON switches the checkpoint from one consistent state to
the next in one rename: a crash in between leaves the previous checkpoint
intact (its tensors file is only removed after the new JSON is in place).
Nothing here calls ``pickle`` or ``torch.load``; a pickle, a truncated, empty
or foreign file, a missing or modified tensors file each raise a
``ValueError`` that names the file and says how to start fresh.
"""
from __future__ import annotations

import base64
import json
import os
import random
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._io import sha256_bytes, write_bytes_atomic, write_json_atomic

__all__ = ["FORMAT", "VERSION", "TrainState", "save_checkpoint", "read_checkpoint_header", "load_checkpoint",
           "tensors_path", "capture_rng", "restore_rng", "checkpoint_error"]

FORMAT = "imutune-train-checkpoint"
VERSION = 1
_MAX_JSON_BYTES = 64 << 20          # RNG states and histories are a few kB; refuse to parse anything huge
# a temporary file beside a checkpoint older than this was left by a killed writer and is removed; a younger one
# may be another process's write in flight (e.g. two benchmark processes on one folder) and is left alone
_STALE_TMP_S = 600.0
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


@dataclass
class TrainState:
    """Everything :func:`imutune.train.loop.train` needs to continue a run after ``epoch`` epochs."""

    epoch: int
    steps: int
    identity: dict[str, Any]
    history: list[float] = field(default_factory=list)
    curve: list[list[float]] = field(default_factory=list)
    model: dict[str, torch.Tensor] = field(default_factory=dict)
    optimizer: dict[str, Any] = field(default_factory=dict)      # torch optimizer state_dict
    scheduler: dict[str, Any] = field(default_factory=dict)      # torch scheduler state_dict (JSON-able)
    shuffle_rng: torch.Tensor | None = None                       # torch.Generator state (uint8)
    rng: dict[str, Any] = field(default_factory=dict)            # encoded global RNG states (see capture_rng)


def tensors_path(path: str | os.PathLike, sha256: str) -> Path:
    """The tensors file that the checkpoint JSON at ``path`` names by ``sha256``."""
    p = Path(path)
    return p.with_name(f"{p.name}.{sha256[:16]}.safetensors")


def _fresh_hint(path: Path) -> str:
    return (f"to start fresh, delete {path} and {path.name}.*.safetensors next to it (or write to a new --out "
            "folder)")


def checkpoint_error(path: Path, reason: str) -> ValueError:
    """The ValueError for an unusable checkpoint: names the file, the reason and how to start fresh."""
    return ValueError(f"checkpoint {path} is not a usable imutune checkpoint: {reason}; {_fresh_hint(path)}")


# --------------------------------------------------------------------------- RNG states

def _b64(t: torch.Tensor) -> str:
    return base64.b64encode(t.detach().cpu().contiguous().numpy().tobytes()).decode("ascii")


def _unb64(s: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(s.encode("ascii"), validate=True)), dtype=torch.uint8)


def capture_rng() -> dict[str, Any]:
    """The global RNG states (torch CPU, CUDA if initialised, numpy legacy, Python ``random``), JSON-able."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    ver, internal, gauss_next = random.getstate()
    out: dict[str, Any] = {"torch": _b64(torch.get_rng_state()),
                           "numpy": {"kind": kind, "keys": base64.b64encode(np.asarray(keys, "<u4").tobytes()).decode(),
                                     "pos": int(pos), "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
                           "python": {"version": ver, "state": list(internal), "gauss_next": gauss_next}}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["cuda"] = [_b64(s) for s in torch.cuda.get_rng_state_all()]
    return out


def restore_rng(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng` (raises ``KeyError``/``TypeError``/``ValueError`` on a malformed state)."""
    torch.set_rng_state(_unb64(state["torch"]))
    n = state["numpy"]
    keys = np.frombuffer(base64.b64decode(n["keys"], validate=True), dtype="<u4").astype(np.uint32)
    np.random.set_state((str(n["kind"]), keys, int(n["pos"]), int(n["has_gauss"]), float(n["cached_gaussian"])))
    p = state["python"]
    random.setstate((int(p["version"]), tuple(int(v) for v in p["state"]), p["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([_unb64(s) for s in state["cuda"]])


# --------------------------------------------------------------------------- optimizer state

def _split_optimizer(sd: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Optimizer ``state_dict`` -> (tensors, JSON part); tuples (e.g. Adam's betas) are recorded to come back."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for pid, st in sd["state"].items():
        for name, v in st.items():
            if torch.is_tensor(v):
                tensors[f"optimizer.{int(pid)}.{name}"] = v.detach().cpu().contiguous().clone()
            else:
                scalars.setdefault(str(int(pid)), {})[name] = v
    groups, tuples = [], []
    for gi, g in enumerate(sd["param_groups"]):
        row = {}
        for k, v in g.items():
            if isinstance(v, tuple):
                tuples.append([gi, k])
                v = list(v)
            row[k] = v
        groups.append(row)
    return tensors, {"param_groups": groups, "tuples": tuples, "scalars": scalars}


def _join_optimizer(tensors: dict[str, torch.Tensor], js: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, t in tensors.items():
        if key.startswith("optimizer."):
            _, pid, name = key.split(".", 2)
            state.setdefault(int(pid), {})[name] = t
    for pid, st in js["scalars"].items():
        state.setdefault(int(pid), {}).update(st)
    groups = [dict(g) for g in js["param_groups"]]
    for gi, k in js["tuples"]:
        groups[int(gi)][k] = tuple(groups[int(gi)][k])
    return {"state": state, "param_groups": groups}


# --------------------------------------------------------------------------- save / load

def save_checkpoint(path: str | os.PathLike, state: TrainState) -> Path:
    """Write ``state`` as a checkpoint at ``path`` (tensors file first, JSON last, both atomic).

    Returns the JSON path. Tensors files of earlier epochs and stale
    temporary files of this checkpoint are removed after the switch.
    """
    from safetensors.torch import save as st_save

    path = Path(path)
    opt_tensors, opt_json = _split_optimizer(state.optimizer)
    tensors = {f"model.{k}": v.detach().cpu().contiguous().clone() for k, v in state.model.items()}
    tensors.update(opt_tensors)
    if state.shuffle_rng is not None:
        tensors["rng.shuffle"] = state.shuffle_rng.detach().cpu().contiguous().clone()
    blob = st_save(tensors, metadata={"format": FORMAT, "version": str(VERSION)})
    sha = sha256_bytes(blob)
    tpath = tensors_path(path, sha)
    write_bytes_atomic(tpath, blob)
    write_json_atomic(path, {"format": FORMAT, "version": VERSION, "epoch": int(state.epoch),
                             "steps": int(state.steps), "identity": state.identity,
                             "history": [float(v) for v in state.history], "curve": state.curve,
                             "optimizer": opt_json, "scheduler": state.scheduler, "rng": state.rng,
                             "tensors_sha256": sha})
    for old in path.parent.glob(f"{_glob_escape(path.name)}.*.safetensors"):
        if old != tpath and re.fullmatch(rf"{re.escape(path.name)}\.[0-9a-f]{{16}}\.safetensors", old.name):
            old.unlink(missing_ok=True)
    now = time.time()
    for tmp in path.parent.glob(f".{_glob_escape(path.name)}*.tmp"):   # left by a killed writer (imutune._io names)
        try:
            if now - tmp.stat().st_mtime > _STALE_TMP_S:
                tmp.unlink(missing_ok=True)
        except FileNotFoundError:                                       # its writer renamed it meanwhile
            pass
    return path


def _glob_escape(name: str) -> str:
    """``name`` with glob metacharacters escaped."""
    import glob

    return glob.escape(name)


def read_checkpoint_header(path: str | os.PathLike) -> dict[str, Any]:
    """Parse and check the checkpoint JSON at ``path`` (not its tensors).

    Raises
    ------
    ValueError
        If the file is empty, a pickle (``torch.save``, as older imutune
        versions wrote), not UTF-8 JSON, not an imutune training checkpoint, of
        another version, or misses fields; the message names the file and says
        how to start fresh. The file is never unpickled.
    """
    path = Path(path)
    if path.is_dir():
        raise checkpoint_error(path, "it is a folder, expected a JSON file")
    size = path.stat().st_size
    if size == 0:
        raise checkpoint_error(path, "the file is empty (0 bytes; an interrupted copy?)")
    if size > _MAX_JSON_BYTES:
        raise checkpoint_error(path, f"the file has {size} bytes, far more than a checkpoint header "
                                     f"(at most {_MAX_JSON_BYTES})")
    raw = path.read_bytes()
    if raw[:4] == b"PK\x03\x04" or raw[:1] == b"\x80":
        raise checkpoint_error(path, "it is a pickle / torch.save file (older imutune versions wrote those); "
                                     "imutune never unpickles checkpoints because a pickle can run code")
    try:
        head = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise checkpoint_error(path, f"it is not UTF-8 JSON (truncated or foreign: {type(e).__name__}: {e})") from None
    if not isinstance(head, dict) or head.get("format") != FORMAT:
        got = head.get("format") if isinstance(head, dict) else type(head).__name__
        raise checkpoint_error(path, f"its format is {got!r}, expected {FORMAT!r}")
    if head.get("version") != VERSION:
        raise checkpoint_error(path, f"it has version {head.get('version')!r}; this imutune reads version {VERSION}")
    types = {"epoch": int, "steps": int, "identity": dict, "history": list, "curve": list, "optimizer": dict,
             "scheduler": dict, "rng": dict, "tensors_sha256": str}
    for k, t in types.items():
        if not isinstance(head.get(k), t) or isinstance(head.get(k), bool):
            raise checkpoint_error(path, f"field {k!r} is {head.get(k)!r}, expected a {t.__name__}")
    if not _SHA256.match(head["tensors_sha256"]):
        raise checkpoint_error(path, f"tensors_sha256 is {head['tensors_sha256']!r}, expected 64 hex digits")
    if head["epoch"] < 0 or head["steps"] < 0 or len(head["history"]) != head["epoch"]:
        raise checkpoint_error(path, f"epoch {head['epoch']}, steps {head['steps']} and {len(head['history'])} "
                                     "history entries do not agree")
    return head


def load_checkpoint(path: str | os.PathLike, head: dict[str, Any] | None = None) -> TrainState:
    """Read a checkpoint written by :func:`save_checkpoint` (``head``: an already checked header).

    Raises
    ------
    ValueError
        As :func:`read_checkpoint_header`, or if the tensors file is missing,
        its SHA-256 differs from the one the JSON names (truncated, swapped or
        modified), or it is not a valid safetensors file.
    """
    from safetensors.torch import load as st_load

    path = Path(path)
    head = read_checkpoint_header(path) if head is None else head
    tpath = tensors_path(path, head["tensors_sha256"])
    if not tpath.is_file():
        raise checkpoint_error(path, f"its tensors file {tpath.name} is missing")
    blob = tpath.read_bytes()
    sha = sha256_bytes(blob)
    if sha != head["tensors_sha256"]:
        raise checkpoint_error(path, f"its tensors file {tpath.name} has SHA-256 {sha[:16]}..., the checkpoint names "
                         f"{head['tensors_sha256'][:16]}... (truncated or modified)")
    try:
        tensors = st_load(blob)
        optimizer = _join_optimizer(tensors, head["optimizer"])
    except Exception as e:  # safetensors raises its own error types on a malformed header
        raise checkpoint_error(path, f"{tpath.name} cannot be read ({type(e).__name__}: {e})") from None
    model = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    return TrainState(epoch=head["epoch"], steps=head["steps"], identity=head["identity"],
                      history=list(head["history"]), curve=list(head["curve"]), model=model, optimizer=optimizer,
                      scheduler=head["scheduler"], shuffle_rng=tensors.get("rng.shuffle"), rng=head["rng"])
