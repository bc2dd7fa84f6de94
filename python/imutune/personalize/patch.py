"""Per-user patches: only what fine-tuning changed, tied to the base model by hash.

A patch is one safetensors file:

* tensors: for every state-dict entry that changed, either the whole new
  tensor or only its changed rows (dim 0: the output channels of a conv, the
  channels of a batch norm), whichever is smaller;
* metadata (strings): ``format`` (``"imutune-patch"``), ``version``,
  ``base_sha256`` (:func:`state_hash` of the base model), ``patched_sha256``
  (of the model the patch produces; checked after applying), ``rows`` (JSON:
  for each row-patched entry, its row indices), ``class_names`` (JSON, when
  the user's classes differ from the base) and ``info`` (JSON).

:func:`apply_patch` refuses a base model whose hash differs from
``base_sha256`` and verifies the result against ``patched_sha256``, so the
user's model is bit-identical to the one fine-tuned. The result is an
ordinary model (:func:`apply_patch_bundle` gives a :class:`ModelBundle`) and
exports like any other.
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

from .. import _validation as V
from .._io import write_bytes_atomic

__all__ = ["PATCH_FORMAT", "PATCH_VERSION", "Patch", "state_hash", "make_patch", "save_patch", "load_patch",
           "patch_bytes", "apply_patch", "apply_patch_bundle", "model_bytes"]

PATCH_FORMAT = "imutune-patch"
PATCH_VERSION = "1"


def _state(obj: nn.Module | Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    st = obj.state_dict() if isinstance(obj, nn.Module) else dict(obj)
    return {k: v.detach().cpu().contiguous() for k, v in st.items()}


def state_hash(obj: nn.Module | Mapping[str, torch.Tensor]) -> str:
    """SHA-256 (hex) of a model's state dict: for every entry in sorted key order,
    its name, dtype, shape and raw bytes. Independent of file format and device."""
    h = hashlib.sha256()
    for k, v in sorted(_state(obj).items()):
        h.update(k.encode("utf-8") + b"\0" + str(v.dtype).encode() + b"\0" + str(tuple(v.shape)).encode() + b"\0")
        h.update(v.numpy().tobytes() if v.dtype != torch.bfloat16 else v.view(torch.int16).numpy().tobytes())
    return h.hexdigest()


def model_bytes(model: nn.Module | Mapping[str, torch.Tensor]) -> int:
    """Size in bytes of the model's full ``model.safetensors`` (all state-dict entries)."""
    from safetensors.torch import save as st_save

    return len(st_save(_state(model)))


@dataclass(frozen=True, eq=False)
class Patch:
    """An in-memory patch (see the module notes for the file layout)."""

    tensors: dict[str, torch.Tensor]
    rows: dict[str, list[int]]
    base_sha256: str
    patched_sha256: str
    class_names: tuple[str, ...] | None = None
    info: dict = field(default_factory=dict)

    def n_values(self) -> int:
        """Stored tensor elements."""
        return int(sum(t.numel() for t in self.tensors.values()))

    def changed_entries(self) -> list[str]:
        return sorted(self.tensors)


def _bits(t: torch.Tensor) -> np.ndarray:
    """Raw bytes per element: shape t.shape + (itemsize,)."""
    a = t.numpy() if t.dtype != torch.bfloat16 else t.view(torch.int16).numpy()
    a = np.ascontiguousarray(a)
    return a.view(np.uint8).reshape(tuple(a.shape) + (a.dtype.itemsize,))


def make_patch(base: nn.Module | Mapping[str, torch.Tensor], tuned: nn.Module | Mapping[str, torch.Tensor], *,
               class_names: tuple[str, ...] | list[str] | None = None, info: dict | None = None) -> Patch:
    """The patch that turns ``base`` into ``tuned``.

    Entries are compared bit by bit; unchanged entries are left out, entries
    with changed rows store those rows (or the whole tensor when that is not
    larger, or when the shape changed, e.g. a new head).

    Raises
    ------
    ValueError
        If the two state dicts have different keys.
    """
    a, b = _state(base), _state(tuned)
    if set(a) != set(b):
        raise ValueError(f"base and tuned models have different state-dict keys: only in base "
                         f"{sorted(set(a) - set(b))}, only in tuned {sorted(set(b) - set(a))}")
    tensors: dict[str, torch.Tensor] = {}
    rows: dict[str, list[int]] = {}
    for k in sorted(b):
        x, y = a[k], b[k]
        if x.dtype != y.dtype or x.shape != y.shape:
            tensors[k] = y.clone()
            continue
        if y.dim() == 0:
            if not np.array_equal(_bits(x), _bits(y)):
                tensors[k] = y.clone()
            continue
        changed = (_bits(x) != _bits(y)).reshape(y.shape[0], -1).any(axis=1)
        if not changed.any():
            continue
        idx = np.flatnonzero(changed)
        row_elems = y[0].numel()
        # stored rows + their indices (JSON, ~4 bytes each) vs the whole tensor
        if changed.all() or idx.size * (row_elems * y.element_size() + 4) >= y.numel() * y.element_size():
            tensors[k] = y.clone()
        else:
            tensors[k] = y[torch.from_numpy(idx)].clone()
            rows[k] = idx.tolist()
    return Patch(tensors, rows, state_hash(a), state_hash(b),
                 tuple(class_names) if class_names is not None else None, dict(info or {}))


def patch_bytes(patch: Patch) -> bytes:
    """The patch serialized as safetensors bytes."""
    from safetensors.torch import save as st_save

    meta = {"format": PATCH_FORMAT, "version": PATCH_VERSION, "base_sha256": patch.base_sha256,
            "patched_sha256": patch.patched_sha256, "rows": json.dumps(patch.rows, separators=(",", ":")),
            "info": json.dumps(patch.info, separators=(",", ":"), default=_json_default)}
    if patch.class_names is not None:
        meta["class_names"] = json.dumps(list(patch.class_names))
    return st_save({k: v.contiguous() for k, v in patch.tensors.items()}, metadata=meta)


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def save_patch(patch: Patch, path: str | os.PathLike) -> Path:
    """Write ``patch`` to ``path`` (safetensors, atomically)."""
    return write_bytes_atomic(path, patch_bytes(patch))


_PATCH_META_KEYS = ("format", "version", "base_sha256", "patched_sha256", "rows", "info", "class_names")
_HEX64 = frozenset("0123456789abcdef")


def _json_meta(meta: dict, key: str, src: str) -> Any:
    try:
        return json.loads(meta[key])
    except (ValueError, RecursionError) as e:   # JSONDecodeError, int too large, deep nesting
        raise ValueError(f"{src}: metadata {key!r} is not valid JSON ({type(e).__name__}: {str(e)[:120]})") from None


def load_patch(path: str | os.PathLike) -> Patch:
    """Read a patch file written by :func:`save_patch`, strictly.

    Raises
    ------
    FileNotFoundError
        If the file does not exist.
    ValueError
        If it is not a safetensors file, not an imutune patch (format,
        version), or its metadata is malformed: unknown or missing keys, a hash
        that is not 64 hex digits, ``rows`` that is not an object of lists of
        distinct non-negative integers matching the stored rows, class names
        that are not distinct non-empty strings, ``info`` that is not an
        object. The message names the file, the field, the value and the
        expectation.
    """
    from safetensors import safe_open

    p = V.check_file(path, what="patch file")
    src = f"patch {str(p)!r}"
    try:
        with safe_open(str(p), framework="pt") as fh:
            meta = fh.metadata() or {}
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    except Exception as e:  # safetensors raises its own error types on garbage
        raise ValueError(f"patch file {str(p)!r} is not a safetensors file ({type(e).__name__}: "
                         f"{str(e)[:200]})") from None
    if meta.get("format") != PATCH_FORMAT:
        raise ValueError(f"{str(p)!r} is not an imutune patch (metadata format {meta.get('format')!r}, expected "
                         f"{PATCH_FORMAT!r})")
    if meta.get("version") != PATCH_VERSION:
        raise ValueError(f"patch {str(p)!r} has version {meta.get('version')!r}; this imutune reads version "
                         f"{PATCH_VERSION!r}")
    missing = [k for k in ("base_sha256", "patched_sha256", "rows") if k not in meta]
    unknown = sorted(k for k in meta if k not in _PATCH_META_KEYS)
    if missing or unknown:
        raise ValueError(f"{src} has malformed metadata: missing {missing}, unknown {unknown}; expected "
                         f"{list(_PATCH_META_KEYS)}")
    hashes = {}
    for key in ("base_sha256", "patched_sha256"):
        h = meta[key]
        if len(h) != 64 or not set(h) <= _HEX64:
            raise ValueError(f"{src}: metadata {key} is {h[:80]!r}; expected 64 lowercase hex digits")
        hashes[key] = h
    raw_rows = _json_meta(meta, "rows", src)
    if not isinstance(raw_rows, dict):
        raise ValueError(f"{src}: metadata 'rows' is a JSON {type(raw_rows).__name__}; expected an object "
                         "(entry name -> row indices)")
    rows: dict[str, list[int]] = {}
    for k, idx in raw_rows.items():
        if k not in tensors:
            raise ValueError(f"patch {str(p)!r} lists rows for entries {[k]} it does not store")
        t = tensors[k]
        if (not isinstance(idx, list) or any(isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < 2 ** 31 for i in idx)
                or len(set(idx)) != len(idx)):
            raise ValueError(f"{src}: rows of {k!r} are {str(idx)[:80]}; expected a list of distinct integers in [0, 2^31)")
        if t.dim() == 0 or len(idx) != t.shape[0]:
            raise ValueError(f"{src}: rows of {k!r} list {len(idx)} indices, but the stored tensor has shape "
                             f"{tuple(t.shape)}; expected one index per stored row")
        rows[k] = [int(i) for i in idx]
    names = None
    if "class_names" in meta:
        names = _json_meta(meta, "class_names", src)
        if (not isinstance(names, list) or not names or any(not isinstance(n, str) or not n.strip() for n in names)
                or len(set(names)) != len(names)):
            raise ValueError(f"{src}: metadata class_names is {str(names)[:80]}; expected a list of distinct "
                             "non-empty strings")
    info = _json_meta(meta, "info", src) if "info" in meta else {}
    if not isinstance(info, dict):
        raise ValueError(f"{src}: metadata info is a JSON {type(info).__name__}; expected an object")
    return Patch(tensors, rows, hashes["base_sha256"], hashes["patched_sha256"],
                 tuple(names) if names is not None else None, info)


def apply_patch(base_model: nn.Module, patch: Patch | str | os.PathLike, *, verify: bool = True) -> nn.Module:
    """A copy of ``base_model`` with ``patch`` applied (``base_model`` is not modified).

    Raises
    ------
    ValueError
        If the patch was made for another base model (hash mismatch), names
        entries the model lacks, or (``verify``) the result's hash differs from
        the one recorded in the patch.
    """
    if not isinstance(patch, Patch):
        patch = load_patch(patch)
    base_hash = state_hash(base_model)
    if base_hash != patch.base_sha256:
        raise ValueError(f"patch was made for base model sha256 {patch.base_sha256[:16]}..., but this base model "
                         f"hashes to {base_hash[:16]}...; apply the patch to the model it was fine-tuned from")
    model = copy.deepcopy(base_model).cpu()
    state = _state(model)
    unknown = [k for k in patch.tensors if k not in state]
    if unknown:
        raise ValueError(f"patch entries {unknown} are not in the base model's state dict")
    head_w = patch.tensors.get("head.weight")
    if head_w is not None and "head.weight" not in patch.rows and tuple(head_w.shape) != tuple(state["head.weight"].shape):
        from ..models.resnet1d import replace_head

        replace_head(model, int(head_w.shape[0]))
        state = _state(model)
    for k, v in patch.tensors.items():
        if k in patch.rows:
            idx = torch.tensor(patch.rows[k], dtype=torch.long)
            if idx.numel() != v.shape[0] or (idx.numel() and (idx.min() < 0 or idx.max() >= state[k].shape[0])):
                raise ValueError(f"patch rows of {k!r} do not fit its shape {tuple(state[k].shape)}")
            t = state[k].clone()
            t[idx] = v.to(t.dtype)
            state[k] = t
        else:
            if tuple(v.shape) != tuple(state[k].shape):
                raise ValueError(f"patch entry {k!r} has shape {tuple(v.shape)}; the model has {tuple(state[k].shape)}")
            state[k] = v.clone()
    model.load_state_dict(state)
    if hasattr(model, "num_classes") and "head.weight" in state:
        model.num_classes = int(state["head.weight"].shape[0])
    if verify:
        h = state_hash(model)
        if h != patch.patched_sha256:
            raise ValueError(f"patched model hashes to {h[:16]}..., the patch records {patch.patched_sha256[:16]}...; "
                             "the patch file is corrupt")
    return model.eval()


def apply_patch_bundle(bundle, patch: Patch | str | os.PathLike):
    """Apply ``patch`` to a :class:`imutune.finetune.ModelBundle`; returns the user's bundle."""
    if not isinstance(patch, Patch):
        patch = load_patch(patch)
    model = apply_patch(bundle.model, patch)
    names = patch.class_names if patch.class_names is not None else bundle.class_names
    return bundle.derive(model, class_names=tuple(names),
                         info={"stage": "patched", "patch": {"base_sha256": patch.base_sha256,
                                                             "patched_sha256": patch.patched_sha256, **patch.info},
                               "base": bundle.info})
