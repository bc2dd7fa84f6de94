"""Per-user patches: only what fine-tuning changed, tied to the base model by hash.

A patch is one safetensors file:

* tensors: for every state-dict entry that changed, either the whole new
  tensor or only its changed rows (dim 0: the output channels of a conv, the
  channels of a batch norm), whichever is smaller;
* metadata (strings): ``format`` (``"imutune-patch"``), ``version``,
  ``base_sha256`` (:func:`state_hash` of the base model), ``patched_sha256``
  (of the model the patch produces; checked after applying), ``rows`` (JSON:
  for each row-patched entry, its row indices: a list of integers, or the
  compact strings ``"ranges:0-3,7,9-12"`` (sorted runs) or
  ``"bitmap:N:<base64>"`` (one bit per row of the N-row tensor,
  ``numpy.packbits`` little bit order), whichever is shortest with
  ``row_format="auto"``), ``dtype`` (version 2: ``"float16"`` when floating
  entries are stored as fp16), ``class_names`` (JSON, when the user's classes
  differ from the base) and ``info`` (JSON).

Version ``"1"`` patches (lists of indices, fp32) are written whenever a patch
needs nothing else, so older readers keep reading them; a patch using ranges,
bitmaps or fp16 is version ``"2"``. Both are read.

fp32 patches are bit-exact: the patched model is the fine-tuned model, bit for
bit. fp16 patches (``dtype="float16"``) halve the stored values but are
*lossy*: values are rounded to the nearest fp16, and ``patched_sha256`` is the
hash of the rounded model, so applying still verifies bit-exactly against what
the patch encodes (not against the fine-tuned fp32 model).

:func:`apply_patch` refuses a base model whose hash differs from
``base_sha256`` and verifies the result against ``patched_sha256``, so the
user's model is bit-identical to the one fine-tuned. The result is an
ordinary model (:func:`apply_patch_bundle` gives a :class:`ModelBundle`) and
exports like any other.
"""
from __future__ import annotations

import base64
import copy
import hashlib
import re
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

from .. import _validation as V
from .._io import json_default_or_str, write_bytes_atomic

__all__ = ["PATCH_FORMAT", "PATCH_VERSION", "PATCH_VERSIONS", "ROW_FORMATS", "PATCH_DTYPES", "Patch",
           "encode_rows", "decode_rows", "state_hash", "make_patch", "save_patch", "load_patch",
           "patch_bytes", "apply_patch", "apply_patch_bundle", "model_bytes"]

PATCH_FORMAT = "imutune-patch"
PATCH_VERSION = "2"                  # written when a patch uses ranges, bitmaps or fp16; else "1"
PATCH_VERSIONS = ("1", "2")          # read
ROW_FORMATS = ("auto", "list", "ranges", "bitmap")
PATCH_DTYPES = ("float32", "float16")


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
    row_format: str = "list"         # how ``rows`` are written (ROW_FORMATS)
    dtype: str = "float32"           # storage of floating entries (PATCH_DTYPES; float16 is lossy)
    n_rows: dict[str, int] = field(default_factory=dict)   # rows of each row-patched entry's full tensor (bitmaps)

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


# --------------------------------------------------------------------------- row index encodings

def _ranges(idx: list[int]) -> list[tuple[int, int]]:
    runs: list[tuple[int, int]] = []
    for i in idx:
        if runs and i == runs[-1][1] + 1:
            runs[-1] = (runs[-1][0], i)
        else:
            runs.append((i, i))
    return runs


def encode_rows(idx: list[int], n_rows: int, row_format: str = "auto") -> list[int] | str:
    """Row indices (sorted, distinct, in [0, n_rows)) as a JSON value of the ``rows`` metadata.

    ``"list"``: the list itself; ``"ranges"``: ``"ranges:a-b,c,..."`` (sorted
    runs); ``"bitmap"``: ``"bitmap:N:<base64 of numpy.packbits(mask,
    bitorder='little')>"``; ``"auto"``: the shortest of the three as stored
    (JSON inside the safetensors header's JSON string; ties: list, ranges, bitmap).

    Raises
    ------
    ValueError
        On an unknown format or indices that are not sorted, distinct and in range.
    """
    V.check_choice("row_format", row_format, ROW_FORMATS)
    idx = [int(i) for i in idx]
    if any(b <= a for a, b in zip(idx, idx[1:])) or (idx and (idx[0] < 0 or idx[-1] >= n_rows)):
        raise ValueError(f"row indices must be sorted, distinct and in [0, {n_rows}), got {str(idx)[:80]}")
    options: dict[str, list[int] | str] = {"list": idx}
    if row_format in ("ranges", "auto"):
        options["ranges"] = "ranges:" + ",".join(f"{a}" if a == b else f"{a}-{b}" for a, b in _ranges(idx))
    if row_format in ("bitmap", "auto"):
        mask = np.zeros(n_rows, dtype=bool)
        mask[idx] = True
        options["bitmap"] = f"bitmap:{n_rows}:" + base64.b64encode(np.packbits(mask, bitorder="little").tobytes()
                                                                   ).decode("ascii")
    if row_format != "auto":
        return options[row_format]
    # the rows JSON is itself a string inside the safetensors header's JSON: count the escaped quotes too
    return min(options.values(), key=lambda v: len(json.dumps(json.dumps(v, separators=(",", ":")))))


_RANGE = re.compile(r"(\d{1,10})(?:-(\d{1,10}))?")


def decode_rows(value: Any, *, what: str = "rows") -> tuple[list[int], int | None]:
    """Inverse of :func:`encode_rows`: (indices, N of a bitmap or None).

    Raises
    ------
    ValueError
        If ``value`` is not a list of distinct integers in [0, 2^31), a
        ``"ranges:"`` string of increasing, non-overlapping runs, or a
        ``"bitmap:N:"`` string whose base64 payload holds exactly
        ``ceil(N / 8)`` bytes with zero padding bits; the message names ``what``.
    """
    if isinstance(value, list):
        if (any(isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < 2 ** 31 for i in value)
                or len(set(value)) != len(value)):
            raise ValueError(f"{what} are {str(value)[:80]}; expected a list of distinct integers in [0, 2^31)")
        return [int(i) for i in value], None
    if isinstance(value, str) and value.startswith("ranges:"):
        body = value[len("ranges:"):]
        out: list[int] = []
        for part in body.split(",") if body else []:
            mt = _RANGE.fullmatch(part)
            a = int(mt.group(1)) if mt else -1
            b = int(mt.group(2)) if mt and mt.group(2) is not None else a
            if not mt or b < a or b >= 2 ** 31 or (out and a <= out[-1]):
                raise ValueError(f"{what} are {value[:80]!r}: run {part[:24]!r} is not 'a' or 'a-b' with "
                                 "a <= b < 2^31 after the previous run; expected 'ranges:a-b,c,...' in "
                                 "increasing order")
            if len(out) + (b - a + 1) > 2 ** 24:
                raise ValueError(f"{what} are {value[:80]!r}: more than 2^24 rows; expected at most one per "
                                 "stored row")
            out.extend(range(a, b + 1))
        return out, None
    if isinstance(value, str) and value.startswith("bitmap:"):
        mt = re.fullmatch(r"bitmap:(\d{1,10}):([A-Za-z0-9+/=]*)", value)
        n = int(mt.group(1)) if mt else 0
        try:
            raw = base64.b64decode(mt.group(2), validate=True) if mt else b""
        except ValueError:
            mt = None
        if not mt or not 0 < n < 2 ** 31 or len(raw) != (n + 7) // 8:
            raise ValueError(f"{what} are {value[:80]!r}; expected 'bitmap:N:<base64 of ceil(N/8) bytes>' with "
                             "0 < N < 2^31")
        mask = np.unpackbits(np.frombuffer(raw, dtype=np.uint8), bitorder="little")
        if mask[n:].any():
            raise ValueError(f"{what} are {value[:80]!r}: bits set past row {n}; expected zero padding")
        return np.flatnonzero(mask[:n]).tolist(), n
    raise ValueError(f"{what} are {str(value)[:80]}; expected a list of distinct integers in [0, 2^31), "
                     "'ranges:a-b,c,...' or 'bitmap:N:<base64>'")


def _apply_tensors(state: dict[str, torch.Tensor], tensors: Mapping[str, torch.Tensor],
                   rows: Mapping[str, list[int]]) -> dict[str, torch.Tensor]:
    out = dict(state)
    for k, v in tensors.items():
        if k in rows:
            t = out[k].clone()
            t[torch.tensor(rows[k], dtype=torch.long)] = v.to(t.dtype)
            out[k] = t
        else:
            out[k] = v.to(out[k].dtype).clone()
    return out


def make_patch(base: nn.Module | Mapping[str, torch.Tensor], tuned: nn.Module | Mapping[str, torch.Tensor], *,
               class_names: tuple[str, ...] | list[str] | None = None, info: dict | None = None,
               row_format: str = "auto", dtype: str = "float32") -> Patch:
    """The patch that turns ``base`` into ``tuned``.

    Entries are compared bit by bit; unchanged entries are left out, entries
    with changed rows store those rows (or the whole tensor when that is not
    larger, or when the shape changed, e.g. a new head).

    Parameters
    ----------
    row_format : str
        How row indices are written (:func:`encode_rows`): ``"auto"`` (the
        shortest per entry; default), ``"list"``, ``"ranges"`` or ``"bitmap"``.
    dtype : str
        ``"float32"`` (bit-exact; default) or ``"float16"``: float32 entries are
        stored rounded to fp16 (lossy; ``patched_sha256`` is the hash of the
        rounded model).

    Raises
    ------
    ValueError
        If the two state dicts have different keys, or on an unknown
        ``row_format`` / ``dtype``.
    """
    V.check_choice("row_format", row_format, ROW_FORMATS)
    V.check_choice("dtype", dtype, PATCH_DTYPES)
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
        size = 2 if (dtype == "float16" and y.dtype == torch.float32) else y.element_size()
        # stored rows + their indices (JSON, ~4 bytes each) vs the whole tensor
        if changed.all() or idx.size * (row_elems * size + 4) >= y.numel() * size:
            tensors[k] = y.clone()
        else:
            tensors[k] = y[torch.from_numpy(idx)].clone()
            rows[k] = idx.tolist()
    n_rows = {k: int(b[k].shape[0]) for k in rows}
    patched = state_hash(b)
    if dtype == "float16":
        tensors = {k: v.half() if v.dtype == torch.float32 else v for k, v in tensors.items()}
        patched = state_hash(_apply_tensors(a, tensors, rows)) if set(a) == set(b) else patched
    return Patch(tensors, rows, state_hash(a), patched, tuple(class_names) if class_names is not None else None,
                 dict(info or {}), row_format, dtype, n_rows)


def patch_bytes(patch: Patch) -> bytes:
    """The patch serialized as safetensors bytes."""
    from safetensors.torch import save as st_save

    rows = {k: encode_rows(v, patch.n_rows.get(k, (max(v) + 1) if v else 1), patch.row_format)
            if patch.row_format != "list" else list(v) for k, v in patch.rows.items()}
    v2 = patch.dtype != "float32" or any(isinstance(v, str) for v in rows.values())
    meta = {"format": PATCH_FORMAT, "version": PATCH_VERSION if v2 else "1", "base_sha256": patch.base_sha256,
            "patched_sha256": patch.patched_sha256, "rows": json.dumps(rows, separators=(",", ":")),
            "info": json.dumps(patch.info, separators=(",", ":"), default=json_default_or_str)}
    if patch.dtype != "float32":
        meta["dtype"] = patch.dtype
    if patch.class_names is not None:
        meta["class_names"] = json.dumps(list(patch.class_names))
    return st_save({k: v.contiguous() for k, v in patch.tensors.items()}, metadata=meta)




def save_patch(patch: Patch, path: str | os.PathLike) -> Path:
    """Write ``patch`` to ``path`` (safetensors, atomically)."""
    return write_bytes_atomic(path, patch_bytes(patch))


_PATCH_META_KEYS = ("format", "version", "base_sha256", "patched_sha256", "rows", "info", "class_names", "dtype")
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
        that is not 64 hex digits, ``rows`` that is not an object of row
        indices (lists of distinct non-negative integers; in version 2 also
        well-formed ``ranges:``/``bitmap:`` strings, :func:`decode_rows`)
        matching the stored rows, a ``dtype`` other than ``float16`` (version
        2 only), class names
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
    if meta.get("version") not in PATCH_VERSIONS:
        raise ValueError(f"patch {str(p)!r} has version {meta.get('version')!r}; this imutune reads versions "
                         f"{list(PATCH_VERSIONS)}")
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
    n_rows: dict[str, int] = {}
    version = meta["version"]
    dtype = meta.get("dtype", "float32")
    if "dtype" in meta and (version == "1" or dtype not in PATCH_DTYPES[1:]):
        raise ValueError(f"{src}: metadata dtype is {dtype[:40]!r} in a version {version} patch; expected "
                         f"{list(PATCH_DTYPES[1:])} in version 2 (absent: float32)")
    fmt = "list"
    for k, raw in raw_rows.items():
        if k not in tensors:
            raise ValueError(f"patch {str(p)!r} lists rows for entries {[k]} it does not store")
        t = tensors[k]
        if version == "1" and not isinstance(raw, list):
            raise ValueError(f"{src}: rows of {k!r} are {str(raw)[:80]}; expected a list of distinct integers in "
                             "[0, 2^31) (version 1)")
        try:
            idx, n = decode_rows(raw, what=f"rows of {k!r}")
        except ValueError as e:
            raise ValueError(f"{src}: {e}") from None
        if isinstance(raw, str):
            fmt = "auto"
        if n is not None:
            n_rows[k] = n
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
                 tuple(names) if names is not None else None, info, fmt, dtype,
                 {k: n_rows.get(k, (max(v) + 1) if v else 1) for k, v in rows.items()})


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
            state[k] = v.to(state[k].dtype).clone()
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
    """Apply ``patch`` to a :class:`imutune.train.bundle.ModelBundle`; returns the user's bundle."""
    if not isinstance(patch, Patch):
        patch = load_patch(patch)
    model = apply_patch(bundle.model, patch)
    names = patch.class_names if patch.class_names is not None else bundle.class_names
    return bundle.derive(model, class_names=tuple(names),
                         info={"stage": "patched", "patch": {"base_sha256": patch.base_sha256,
                                                             "patched_sha256": patch.patched_sha256, **patch.info},
                               "base": bundle.info})
