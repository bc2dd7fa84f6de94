"""Recordings: continuous multichannel sensor streams with per-sample labels.

A :class:`Recording` is one uninterrupted stream of one user. Loaders:

* :func:`load_watch` -- the embedded default, the real smartwatch IMU data set
  shipped by ``seglearn`` (``seglearn/data/watch_dataset.npy``; 10 subjects x 2
  arm sides x 7 shoulder exercises, 6 channels at 50 Hz, accelerometer in g and
  gyroscope in rad/s; BSD licence). Each of its 140 recordings becomes one
  :class:`Recording` with ``user = "subject01"`` ... ``"subject10"``.
* :func:`load_npz` / :func:`save_npz` -- the generic recording file (see README).
* :func:`load_csv` -- a CSV with a header: a timestamp column in seconds, one
  column per channel and a label column.
* :func:`load_shl2018` -- the SHL-2018 challenge layout.
* :func:`load_recordings` -- any of the above from a path.
"""
from __future__ import annotations

import csv
import importlib.util
import io
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from . import _validation as V
from ._io import write_with_atomic

__all__ = ["Recording", "load_watch", "load_npz", "save_npz", "load_csv", "load_shl2018",
           "load_recordings", "WATCH_CLASS_NAMES", "WATCH_CHANNELS", "WATCH_SAMPLE_RATE_HZ",
           "SHL_CLASS_NAMES"]

WATCH_CLASS_NAMES = ("PEN", "ABD", "FEL", "IR", "ER", "TRAP", "ROW")
WATCH_CHANNELS = ("acc_x", "acc_y", "acc_z", "gyr_x", "gyr_y", "gyr_z")
WATCH_SAMPLE_RATE_HZ = 50.0
SHL_CLASS_NAMES = ("Still", "Walk", "Run", "Bike", "Car", "Bus", "Train", "Subway")


@dataclass(frozen=True, eq=False)
class Recording:
    """One continuous labelled sensor stream of one user.

    Parameters
    ----------
    values : np.ndarray
        Array of shape (S, C), float32: S samples of C channels in physical
        units (accelerometer in g or m/s^2, gyroscope in rad/s).
    labels : np.ndarray
        Array of shape (S,), int64: class index in ``[0, K)`` per sample, -1 for
        unlabeled samples.
    sample_rate_hz : float
        Sampling rate in Hz, > 0.
    channels : tuple of str
        C channel names.
    class_names : tuple of str
        K class names; ``labels`` index into it.
    user : str
        User (subject) identifier.
    name : str
        Human-readable identifier of this recording (file name or data set key).
    meta : dict
        Free-form metadata (for the watch data: ``{"side": 0 or 1}``).

    Raises
    ------
    ValueError
        If shapes disagree, values are not finite, labels fall outside the
        class list or the sample rate is not positive. The message names the
        recording.
    """

    values: np.ndarray
    labels: np.ndarray
    sample_rate_hz: float
    channels: tuple[str, ...]
    class_names: tuple[str, ...]
    user: str
    name: str = ""
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        where = f"recording {self.name or self.user!r}"
        values = V.check_array_2d("values", self.values, where=where)
        values = np.ascontiguousarray(values, dtype=np.float32)
        V.check_finite_array("values", values, where=where)
        V.check_positive("sample_rate_hz", self.sample_rate_hz, where=where)
        channels = tuple(str(c) for c in self.channels)
        if len(channels) != values.shape[1]:
            raise ValueError(f"channels in {where} has {len(channels)} names {list(channels)}, "
                             f"but values has {values.shape[1]} columns")
        class_names = tuple(str(c) for c in self.class_names)
        if len(class_names) == 0:
            raise ValueError(f"class_names in {where} is empty; expected at least one class")
        labels = V.check_labels("labels", self.labels, len(class_names), where=where)
        if labels.shape[0] != values.shape[0]:
            raise ValueError(f"labels in {where} has {labels.shape[0]} samples, values has "
                             f"{values.shape[0]}; expected one label per sample")
        object.__setattr__(self, "values", values)
        object.__setattr__(self, "labels", labels)
        object.__setattr__(self, "sample_rate_hz", float(self.sample_rate_hz))
        object.__setattr__(self, "channels", channels)
        object.__setattr__(self, "class_names", class_names)
        object.__setattr__(self, "user", str(self.user))

    @property
    def n_samples(self) -> int:
        """Number of samples S."""
        return int(self.values.shape[0])

    @property
    def duration_s(self) -> float:
        """Length in seconds."""
        return self.n_samples / self.sample_rate_hz

    def select_channels(self, names: Sequence[str]) -> "Recording":
        """Return a copy with only ``names``, in that order.

        Raises
        ------
        ValueError
            If a name is not among this recording's channels.
        """
        missing = [n for n in names if n not in self.channels]
        if missing:
            raise ValueError(f"channels {missing} not found in recording {self.name or self.user!r}; "
                             f"it has {list(self.channels)}")
        idx = [self.channels.index(n) for n in names]
        return Recording(self.values[:, idx], self.labels, self.sample_rate_hz, tuple(names),
                         self.class_names, self.user, self.name, dict(self.meta))


# --------------------------------------------------------------------------- watch data

def _watch_file() -> Path:
    spec = importlib.util.find_spec("seglearn")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the embedded watch data set needs the 'seglearn' package "
                                "(pip install seglearn); it was not found")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "watch_dataset.npy"
    if not path.is_file():
        raise FileNotFoundError(f"watch data file {str(path)!r} does not exist; reinstall seglearn")
    return path


def load_watch(*, subjects: Sequence[int] | None = None) -> list[Recording]:
    """Load the real smartwatch IMU data set shipped by ``seglearn``.

    Source: Burns et al., "Shoulder physiotherapy exercise recognition: machine
    learning the inertial signals from a smartwatch", Physiol. Meas. 2018; data
    file ``seglearn/data/watch_dataset.npy`` (BSD licence). It is read directly
    (``seglearn`` itself is not imported).

    Parameters
    ----------
    subjects : sequence of int, optional
        Subject numbers in 1..10 to keep; all by default.

    Returns
    -------
    list of Recording
        One per (subject, arm side, exercise): values (S, 6) float32 with
        channels ``acc_x, acc_y, acc_z`` in g and ``gyr_x, gyr_y, gyr_z`` in
        rad/s at 50 Hz; every sample labelled with the exercise (7 classes);
        ``user = f"subject{n:02d}"``; ``meta = {"side": 0 or 1, "subject": n}``.
    """
    raw = np.load(_watch_file(), allow_pickle=True).item()
    keep = None if subjects is None else {int(s) for s in subjects}
    out = []
    for i, (x, y, subj, side) in enumerate(zip(raw["X"], raw["y"], raw["subject"], raw["side"])):
        subj, side, y = int(subj), int(side), int(y)
        if keep is not None and subj not in keep:
            continue
        x = np.asarray(x, dtype=np.float32)
        labels = np.full(x.shape[0], y, dtype=np.int64)
        out.append(Recording(x, labels, WATCH_SAMPLE_RATE_HZ, WATCH_CHANNELS, WATCH_CLASS_NAMES,
                             user=f"subject{subj:02d}", name=f"watch_s{subj:02d}_side{side}_{WATCH_CLASS_NAMES[y]}_{i:03d}",
                             meta={"side": side, "subject": subj}))
    if keep is not None and not out:
        raise ValueError(f"subjects {sorted(keep)} not found in the watch data; expected numbers in 1..10")
    return out


# --------------------------------------------------------------------------- generic .npz

_NPZ_KEYS = ("values", "labels", "sample_rate_hz", "channels", "class_names", "user")


def load_npz(path: str | os.PathLike) -> Recording:
    """Load a generic recording file.

    The ``.npz`` holds ``values`` (S, C) float32, ``labels`` (S,) int64 with -1
    for unlabeled samples, ``sample_rate_hz`` (scalar, Hz), ``channels`` (C,)
    str, ``class_names`` (K,) str and ``user`` (str).

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        If the file is truncated or not an ``.npz``, a key is missing, or the
        contents fail the :class:`Recording` checks; the message names the file.
    """
    p = V.check_file(path, what="recording file", suffixes=(".npz",))
    try:
        with np.load(p, allow_pickle=False) as z:
            missing = [k for k in _NPZ_KEYS if k not in z.files]
            if missing:
                raise ValueError(f"recording file {str(p)!r} lacks keys {missing}; expected keys {list(_NPZ_KEYS)}")
            data = {k: z[k] for k in _NPZ_KEYS}
    except ValueError:
        raise
    except Exception as e:  # zipfile.BadZipFile, EOFError, OSError ...
        raise ValueError(f"recording file {str(p)!r} could not be read as .npz ({type(e).__name__}: {e}); "
                         "it may be truncated") from e
    sr = data["sample_rate_hz"]
    if sr.size != 1:
        raise ValueError(f"sample_rate_hz in {str(p)!r} must be a scalar, got shape {sr.shape}")
    try:
        return Recording(data["values"], data["labels"], float(sr.reshape(())),
                         tuple(data["channels"].tolist()), tuple(data["class_names"].tolist()),
                         str(data["user"].reshape(()).item()), name=p.stem)
    except ValueError as e:
        raise ValueError(f"recording file {str(p)!r}: {e}") from e


def save_npz(recording: Recording, path: str | os.PathLike) -> Path:
    """Write ``recording`` as a generic ``.npz`` recording file, atomically."""
    def _w(tmp: str) -> None:
        with open(tmp, "wb") as fh:
            np.savez(fh, values=recording.values, labels=recording.labels,
                     sample_rate_hz=np.float64(recording.sample_rate_hz),
                     channels=np.array(recording.channels, dtype=str),
                     class_names=np.array(recording.class_names, dtype=str),
                     user=np.array(recording.user, dtype=str))
    return write_with_atomic(path, _w)


# --------------------------------------------------------------------------- CSV

def load_csv(path: str | os.PathLike, *, class_names: Sequence[str] | None = None,
             user: str | None = None, timestamp_column: str = "timestamp_s",
             label_column: str = "label", sample_rate_hz: float | None = None) -> Recording:
    """Load a recording from a CSV file with a header row.

    Columns: ``timestamp_column`` (seconds), ``label_column`` (a class name, an
    integer class index, or empty for unlabeled) and every other column a
    channel. The sample rate is ``1 / median(diff(timestamp))`` unless given.

    Parameters
    ----------
    path : path-like
        The CSV file.
    class_names : sequence of str, optional
        The class list. By default the sorted distinct label strings (or, for
        integer labels, ``"class0"`` ... ``"class{K-1}"``).
    user : str, optional
        User id; the file stem by default.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        On a missing column, a non-numeric value, fewer than two rows,
        non-increasing timestamps or a label not in ``class_names``; the
        message names the file and row.
    """
    p = V.check_file(path, what="recording file", suffixes=(".csv",))
    with open(p, newline="") as fh:
        reader = csv.reader(fh)
        try:
            header = [h.strip() for h in next(reader)]
        except StopIteration:
            raise ValueError(f"recording file {str(p)!r} has no header row") from None
        rows = [r for r in reader if r]
    for col in (timestamp_column, label_column):
        if col not in header:
            raise ValueError(f"recording file {str(p)!r} lacks column {col!r}; header is {header}")
    if len(rows) < 2:
        raise ValueError(f"recording file {str(p)!r} has {len(rows)} data rows; expected at least 2")
    ti, li = header.index(timestamp_column), header.index(label_column)
    ch_idx = [i for i in range(len(header)) if i not in (ti, li)]
    channels = tuple(header[i] for i in ch_idx)
    n = len(rows)
    values = np.empty((n, len(ch_idx)), dtype=np.float32)
    ts = np.empty(n, dtype=np.float64)
    raw_labels = []
    for r, row in enumerate(rows):
        if len(row) != len(header):
            raise ValueError(f"recording file {str(p)!r} row {r + 2} has {len(row)} fields; expected {len(header)}")
        try:
            ts[r] = float(row[ti])
            values[r] = [float(row[i]) for i in ch_idx]
        except ValueError:
            raise ValueError(f"recording file {str(p)!r} row {r + 2} has a non-numeric value: {row}") from None
        raw_labels.append(row[li].strip())
    dt = np.diff(ts)
    if np.any(dt <= 0):
        bad = int(np.argmax(dt <= 0))
        raise ValueError(f"recording file {str(p)!r}: timestamps must increase; row {bad + 3} has "
                         f"{ts[bad + 1]} after {ts[bad]}")
    if sample_rate_hz is None:
        sample_rate_hz = 1.0 / float(np.median(dt))
    present = sorted({l for l in raw_labels if l != ""})
    all_int = all(_is_int(l) for l in present)
    if class_names is None:
        if all_int and present:
            class_names = tuple(f"class{i}" for i in range(max(int(l) for l in present) + 1))
        else:
            class_names = tuple(present)
    class_names = tuple(class_names)
    lookup = {c: i for i, c in enumerate(class_names)}
    labels = np.empty(n, dtype=np.int64)
    for r, l in enumerate(raw_labels):
        if l == "" or l == "-1":
            labels[r] = -1
        elif l in lookup:
            labels[r] = lookup[l]
        elif _is_int(l) and 0 <= int(l) < len(class_names):
            labels[r] = int(l)
        else:
            raise ValueError(f"recording file {str(p)!r} row {r + 2}: label {l!r} is not in the class list "
                             f"{list(class_names)}")
    try:
        return Recording(values, labels, sample_rate_hz, channels, class_names,
                         user if user is not None else p.stem, name=p.stem)
    except ValueError as e:
        raise ValueError(f"recording file {str(p)!r}: {e}") from e


def _is_int(s: str) -> bool:
    try:
        int(s)
        return True
    except ValueError:
        return False
