"""Private input checks shared by the public modules.

Each check raises ``ValueError`` (or ``FileNotFoundError`` for paths) with a
message that names the argument or file, the value seen and what was expected.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

__all__ = [
    "check_positive", "check_fraction", "check_in_range", "check_finite_array",
    "check_array_2d", "check_labels", "check_file", "check_dir", "check_int_at_least",
    "check_choice", "check_windows",
]


def check_positive(name: str, value: float, *, where: str = "") -> float:
    """Require a finite number > 0."""
    loc = f" in {where}" if where else ""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name}{loc} must be a positive number, got {value!r}") from None
    if not np.isfinite(v) or v <= 0:
        raise ValueError(f"{name}{loc} must be a positive number, got {value!r}")
    return v


def check_int_at_least(name: str, value: int, minimum: int) -> int:
    """Require an integer >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def check_fraction(name: str, value: float, *, low_open: bool = True, high_closed: bool = True) -> float:
    """Require a number in (0, 1] (default) or the interval given by the flags."""
    lo, hi = ("(" if low_open else "["), ("]" if high_closed else ")")
    v = float(value)
    ok = (v > 0 if low_open else v >= 0) and (v <= 1 if high_closed else v < 1)
    if not ok or not np.isfinite(v):
        raise ValueError(f"{name} must be in {lo}0, 1{hi}, got {value!r}")
    return v


def check_in_range(name: str, value: float, low: float, high: float) -> float:
    """Require ``low <= value <= high``."""
    v = float(value)
    if not (low <= v <= high):
        raise ValueError(f"{name} must be in [{low}, {high}], got {value!r}")
    return v


def check_choice(name: str, value: str, choices: Iterable[str]) -> str:
    """Require ``value`` to be one of ``choices``."""
    choices = list(choices)
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
    return value


def check_array_2d(name: str, arr: np.ndarray, *, n_cols: int | None = None, where: str = "") -> np.ndarray:
    """Require a 2-D array, optionally with ``n_cols`` columns."""
    loc = f" in {where}" if where else ""
    a = np.asarray(arr)
    if a.ndim != 2:
        raise ValueError(f"{name}{loc} must have shape (S, C), got shape {a.shape}")
    if n_cols is not None and a.shape[1] != n_cols:
        raise ValueError(f"{name}{loc} must have {n_cols} channels (columns), got {a.shape[1]}")
    return a


def check_finite_array(name: str, arr: np.ndarray, *, where: str = "") -> np.ndarray:
    """Require no NaN or Inf; the message gives the count and first index."""
    a = np.asarray(arr)
    bad = ~np.isfinite(a)
    if bad.any():
        loc = f" in {where}" if where else ""
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(f"{name}{loc} contains {int(bad.sum())} NaN/Inf values "
                         f"(first at index {first}); expected finite values")
    return a


def check_labels(name: str, labels: np.ndarray, n_classes: int, *, where: str = "",
                 allow_unlabeled: bool = True) -> np.ndarray:
    """Require integer labels in ``[0, n_classes)`` (and -1 for unlabeled if allowed)."""
    loc = f" in {where}" if where else ""
    y = np.asarray(labels)
    if y.ndim != 1:
        raise ValueError(f"{name}{loc} must have shape (S,), got shape {y.shape}")
    if y.size and not np.issubdtype(y.dtype, np.integer):
        if np.issubdtype(y.dtype, np.floating) and np.all(np.isfinite(y)) and np.all(y == np.round(y)):
            y = y.astype(np.int64)
        else:
            raise ValueError(f"{name}{loc} must be integers, got dtype {y.dtype}")
    lo = -1 if allow_unlabeled else 0
    bad = (y < lo) | (y >= n_classes)
    if bad.any():
        vals = sorted(set(int(v) for v in y[bad]))[:5]
        raise ValueError(f"{name}{loc} has values {vals} outside the class list; expected "
                         f"integers in [{lo}, {n_classes - 1}] for {n_classes} classes")
    return y.astype(np.int64)


def check_file(path: str | os.PathLike, *, what: str = "file", suffixes: Sequence[str] | None = None) -> Path:
    """Require an existing, non-empty regular file (with one of ``suffixes``)."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{what} {str(p)!r} does not exist")
    if not p.is_file():
        raise ValueError(f"{what} {str(p)!r} is not a regular file")
    if p.stat().st_size == 0:
        raise ValueError(f"{what} {str(p)!r} is empty (0 bytes)")
    if suffixes is not None and p.suffix.lower() not in suffixes:
        raise ValueError(f"{what} {str(p)!r} has suffix {p.suffix!r}; expected one of {list(suffixes)}")
    return p


def check_dir(path: str | os.PathLike, *, what: str = "folder") -> Path:
    """Require an existing folder."""
    p = Path(path)
    if not p.is_dir():
        raise FileNotFoundError(f"{what} {str(p)!r} does not exist or is not a folder")
    return p


def check_windows(name: str, x: Any, *, in_channels: int | None = None, window_samples: int | None = None,
                  expected_by: str = "the manifest", finite: bool = False, allow_tensor: bool = True) -> np.ndarray:
    """Require a float32 array (or CPU tensor) of windows, shape (N, C, T) with N >= 1.

    ``in_channels`` / ``window_samples`` pin C and T; ``expected_by`` names who expects them in the
    message. Returns a C-contiguous float32 numpy array. Raises ``ValueError`` naming ``name``.
    """
    if allow_tensor and hasattr(x, "detach") and hasattr(x, "numpy"):       # a torch.Tensor, without importing torch here
        x = x.detach().cpu()
        if str(x.dtype) != "torch.float32":
            raise ValueError(f"{name} must have dtype float32, got {x.dtype}")
        x = x.numpy()
    if not isinstance(x, np.ndarray):
        kinds = "a numpy array or torch.Tensor" if allow_tensor else "a numpy array"
        raise ValueError(f"{name} must be {kinds} of shape (N, C, T), float32; got {type(x).__name__}")
    if x.dtype != np.float32:
        raise ValueError(f"{name} must have dtype float32, got {x.dtype}")
    if x.ndim != 3:
        raise ValueError(f"{name} must have shape (N, C, T), got shape {x.shape}")
    if x.shape[0] < 1:
        raise ValueError(f"{name} must hold at least one window, got shape {x.shape}")
    if in_channels is not None and x.shape[1] != in_channels:
        raise ValueError(f"{name} has {x.shape[1]} channels (shape {x.shape}); {expected_by} expects C={in_channels}")
    if window_samples is not None and x.shape[2] != window_samples:
        raise ValueError(f"{name} has windows of {x.shape[2]} samples (shape {x.shape}); "
                         f"{expected_by} expects T={window_samples}")
    if finite:
        check_finite_array(name, x)
    return np.ascontiguousarray(x)
