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
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from .. import _validation as V
from .._io import write_with_atomic

__all__ = ["load_many", "Recording", "load_watch", "load_npz", "save_npz", "load_csv", "load_shl2018",
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
            files = list(z.files)
            data = {k: z[k] for k in _NPZ_KEYS if k in files}
    except Exception as e:  # zipfile.BadZipFile, EOFError, OSError, object arrays (ValueError) ...
        raise ValueError(f"recording file {str(p)!r} could not be read as .npz ({type(e).__name__}: {e}); "
                         "it may be truncated") from e
    missing = [k for k in _NPZ_KEYS if k not in data]
    if missing:
        raise ValueError(f"recording file {str(p)!r} lacks keys {missing}; expected keys {list(_NPZ_KEYS)}")
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


# --------------------------------------------------------------------------- SHL-2018 challenge layout

SHL_LABEL_FILE = "Label.txt"
SHL_ORDER_FILES = ("train_order.txt", "test_order.txt")
_SHL_DEFAULT_CHANNELS = ("Acc_x", "Acc_y", "Acc_z", "Gyr_x", "Gyr_y", "Gyr_z")


def load_shl2018(folder: str | os.PathLike, *, channels: Sequence[str] = _SHL_DEFAULT_CHANNELS,
                 order_file: str | os.PathLike | None = None, user: str = "shl-user1",
                 sample_rate_hz: float = 100.0) -> list[Recording]:
    """Load one split of the SHL-2018 challenge data as continuous recordings.

    Source: Sussex-Huawei Locomotion-Transportation (SHL) recognition challenge
    2018 (Wang et al., "Summary of the Sussex-Huawei Locomotion-Transportation
    Recognition Challenge", UbiComp/ISWC 2018 Adjunct; data at
    http://www.shl-dataset.org/). One user (user 1), phone in the hips pocket.

    Layout of ``folder`` (a ``train`` or ``test`` split):

    * one text file per channel, ``<channel>.txt`` (``Acc_x`` ... ``Acc_z`` in
      m/s^2, ``Gyr_x`` ... in rad/s, ``Mag_x`` ... in uT, ``Ori_w`` ...,
      ``Gra_x`` ..., ``LAcc_x`` ..., ``Pressure`` in hPa). Each line is one
      frame of F whitespace-separated samples (F = 6000: one minute at 100 Hz);
    * ``Label.txt``, same layout, one integer code per sample: 0 = Null,
      1..8 = Still, Walk, Run, Bike, Car, Bus, Train, Subway;
    * ``train_order.txt`` or ``test_order.txt``: one integer per line, the
      position in time of the frame on the same line of every other file.

    Frames are put back in time order (sorted by their order value) and joined;
    wherever two consecutive order values differ by more than 1 (a gap in
    time) a new recording starts, so each :class:`Recording` is one
    uninterrupted stream.

    Parameters
    ----------
    folder : path-like
        The split folder.
    channels : sequence of str, default ``("Acc_x", "Acc_y", "Acc_z", "Gyr_x", "Gyr_y", "Gyr_z")``
        Channel names, i.e. file stems in ``folder``; they become the
        recordings' ``channels`` in this order.
    order_file : path-like, optional
        The order file (a path, or a name inside ``folder``). By default
        ``folder/train_order.txt``, else ``folder/test_order.txt``, else
        ``<parent>/<folder name>_order.txt`` (the official archive keeps the
        order files next to the ``train``/``test`` folders).
    user : str, default ``"shl-user1"``
        User id given to every recording.
    sample_rate_hz : float, default 100.0
        Sampling rate in Hz, > 0.

    Returns
    -------
    list of Recording
        In time order, one per continuous run of frames: values (S, C) float32
        with S = (number of frames in the run) * F, labels (S,) int64 with
        ``label = code - 1`` (so Null -> -1, unlabeled), ``class_names =``
        :data:`SHL_CLASS_NAMES`, ``name = f"shl_{folder.name}_{k:03d}"`` and
        ``meta = {"source": "shl2018", "order_first": int, "order_last": int,
        "n_frames": int, "frame_length": F}``.

    Raises
    ------
    FileNotFoundError
        If ``folder``, ``Label.txt``, the order file or a channel file is
        missing (the message lists the channel files present).
    ValueError
        If ``channels`` is empty or repeats a name, ``sample_rate_hz`` is not
        positive, a file has a different number of lines than the order file,
        a line has a different number of values than line 1 of ``Label.txt``
        or a non-numeric value, a data value is NaN/Inf, a label code is
        not an integer in 0..8, or order values repeat. The message names the
        file and, where it applies, the line (1-based), the value or count seen
        and what was expected.

    Notes
    -----
    Files are parsed line by line with :func:`numpy.fromstring` straight into
    one preallocated (frames, F, C) float32 array, so peak memory is about the
    size of the result (the full 2018 train split with 6 channels: ~2.3 GB).
    """
    root = V.check_dir(folder, what="SHL folder")
    channels = tuple(channels) if not isinstance(channels, str) else (channels,)
    if not channels:
        raise ValueError(f"channels for SHL folder {str(root)!r} is empty; expected at least one "
                         f"channel name such as {list(_SHL_DEFAULT_CHANNELS)}")
    dupes = sorted({c for c in channels if channels.count(c) > 1})
    if dupes:
        raise ValueError(f"channels for SHL folder {str(root)!r} repeats {dupes}; expected distinct names, "
                         f"got {list(channels)}")
    bad = [c for c in channels if not isinstance(c, str) or not c
           or c == Path(SHL_LABEL_FILE).stem or c.endswith("_order")]
    if bad:
        raise ValueError(f"channels for SHL folder {str(root)!r} has invalid names {bad}; expected "
                         f"channel file stems such as {list(_SHL_DEFAULT_CHANNELS)}")
    sample_rate_hz = V.check_positive("sample_rate_hz", sample_rate_hz, where=f"SHL folder {str(root)!r}")

    label_path = root / SHL_LABEL_FILE
    if not label_path.is_file():
        raise FileNotFoundError(f"SHL folder {str(root)!r} lacks {SHL_LABEL_FILE!r}; expected the "
                                f"per-sample label file of the SHL-2018 layout")
    channel_paths = [root / f"{c}.txt" for c in channels]
    for c, p in zip(channels, channel_paths):
        if not p.is_file():
            raise FileNotFoundError(f"SHL channel file {str(p)!r} (channel {c!r}) does not exist; channel files "
                                    f"present in {str(root)!r}: {_shl_channel_files(root)}")

    order_path = _shl_order_path(root, order_file)
    order = _read_shl_order(order_path)
    n_frames = order.shape[0]
    uniq, counts = np.unique(order, return_counts=True)
    if uniq.shape[0] != n_frames:
        rep = uniq[counts > 1][:5].tolist()
        raise ValueError(f"SHL order file {str(order_path)!r} repeats order values {rep}; expected one "
                         "distinct position per frame")
    time_idx = np.argsort(order, kind="stable")      # file line of the k-th frame in time
    dest = np.empty(n_frames, dtype=np.int64)        # time position of each file line
    dest[time_idx] = np.arange(n_frames)
    sorted_order = order[time_idx]

    frame_len = _shl_frame_length(label_path)
    label_codes = np.empty((n_frames, frame_len), dtype=np.int8)
    _read_shl_frames(label_path, dest, frame_len, label_codes, kind="label", order_path=order_path)
    values = np.empty((n_frames, frame_len, len(channels)), dtype=np.float32)
    for ci, p in enumerate(channel_paths):
        _read_shl_frames(p, dest, frame_len, values[:, :, ci], kind="data", order_path=order_path,
                         label_path=label_path)

    flat_values = values.reshape(n_frames * frame_len, len(channels))
    flat_labels = label_codes.reshape(n_frames * frame_len).astype(np.int64) - 1
    breaks = np.flatnonzero(np.diff(sorted_order) != 1) + 1
    starts = np.concatenate([[0], breaks]).tolist()
    ends = np.concatenate([breaks, [n_frames]]).tolist()
    out = []
    for k, (a, b) in enumerate(zip(starts, ends)):
        name = f"shl_{root.name}_{k:03d}"
        try:
            out.append(Recording(flat_values[a * frame_len:b * frame_len], flat_labels[a * frame_len:b * frame_len],
                                 sample_rate_hz, channels, SHL_CLASS_NAMES, user=user, name=name,
                                 meta={"source": "shl2018", "order_first": int(sorted_order[a]),
                                       "order_last": int(sorted_order[b - 1]), "n_frames": int(b - a),
                                       "frame_length": int(frame_len)}))
        except ValueError as e:
            raise ValueError(f"SHL folder {str(root)!r} (channels {list(channels)}): {e}") from e
    return out


def _shl_channel_files(root: Path) -> list[str]:
    """Names of the ``*.txt`` files in ``root`` that are neither labels nor order files."""
    return sorted(p.name for p in root.glob("*.txt")
                  if p.name != SHL_LABEL_FILE and not p.name.endswith("_order.txt"))


def _shl_order_path(root: Path, order_file: str | os.PathLike | None) -> Path:
    if order_file is not None:
        p = Path(order_file)
        if not p.is_absolute() and not p.exists() and (root / p).exists():
            p = root / p
        if not p.is_file():
            raise FileNotFoundError(f"SHL order file {str(order_file)!r} does not exist (also looked in "
                                    f"{str(root)!r})")
        return p
    candidates = [root / n for n in SHL_ORDER_FILES] + [root.parent / f"{root.name.lower()}_order.txt"]
    for p in candidates:
        if p.is_file():
            return p
    raise FileNotFoundError(f"SHL folder {str(root)!r} has no order file; looked for "
                            f"{[str(p) for p in candidates]}. Pass order_file= explicitly")


def _read_shl_order(path: Path) -> np.ndarray:
    """Read one integer per line; trailing blank lines are ignored."""
    with open(path, "r", encoding="utf-8", errors="replace") as fh:
        lines = [ln.strip() for ln in fh]
    while lines and not lines[-1]:
        lines.pop()
    if not lines:
        raise ValueError(f"SHL order file {str(path)!r} has no lines; expected one integer per frame")
    order = np.empty(len(lines), dtype=np.int64)
    for i, ln in enumerate(lines):
        try:
            order[i] = int(ln)
        except ValueError:
            try:  # "12.0" or "1.2e1" as written by some tools
                v = float(ln)
            except ValueError:
                v = float("nan")
            if not np.isfinite(v) or v != round(v):
                raise ValueError(f"SHL order file {str(path)!r} line {i + 1} is {ln[:40]!r}; expected one "
                                 "integer per line") from None
            order[i] = int(v)
    return order


def _parse_shl_line(path: Path, lineno: int, text: str, dtype) -> np.ndarray:
    text = text.strip()
    if not text:
        return np.empty(0, dtype=dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)  # numpy < 2.3 warns instead of raising
        try:
            return np.fromstring(text, dtype=dtype, sep=" ")
        except (ValueError, DeprecationWarning):
            pass
    bad = next((t for t in text.split() if not _is_float(t)), text[:40])
    raise ValueError(f"SHL file {str(path)!r} line {lineno} has a non-numeric value {bad[:40]!r}; "
                     "expected whitespace-separated numbers")


def _shl_frame_length(label_path: Path) -> int:
    with open(label_path, "r", encoding="utf-8", errors="replace") as fh:
        first = fh.readline()
    n = _parse_shl_line(label_path, 1, first, np.float64).shape[0]
    if n == 0:
        raise ValueError(f"SHL file {str(label_path)!r} line 1 is empty; expected one frame of "
                         "whitespace-separated label codes (6000 in SHL-2018)")
    return n


def _read_shl_frames(path: Path, dest: np.ndarray, frame_len: int, out: np.ndarray, *, kind: str,
                     order_path: Path, label_path: Path | None = None) -> None:
    """Parse ``path`` line by line; line ``i`` goes to ``out[dest[i]]``."""
    n_frames = dest.shape[0]
    ref = f"line 1 of {SHL_LABEL_FILE}" if label_path is not None else "line 1"
    n_read = 0
    with open(path, "r", encoding="utf-8", errors="replace") as fh:
        for i, line in enumerate(fh):
            if i >= n_frames:
                if line.strip():
                    extra = 1 + sum(1 for ln in fh if ln.strip())
                    raise ValueError(f"SHL file {str(path)!r} has {n_frames + extra} lines; expected {n_frames} "
                                     f"(the number of lines of {str(order_path)!r})")
                continue
            row = _parse_shl_line(path, i + 1, line, np.float64 if kind == "label" else np.float32)
            if row.shape[0] != frame_len:
                raise ValueError(f"SHL file {str(path)!r} line {i + 1} has {row.shape[0]} values; expected "
                                 f"{frame_len} (as in {ref}); the file may be truncated")
            if kind == "label":
                bad = (row != np.round(row)) | (row < 0) | (row > len(SHL_CLASS_NAMES))
                if bad.any():
                    j = int(np.argmax(bad))
                    raise ValueError(f"SHL label file {str(path)!r} line {i + 1} value {j + 1} is {row[j]:g}; "
                                     f"expected an integer code in 0..{len(SHL_CLASS_NAMES)} "
                                     f"(0 = Null, 1..8 = {list(SHL_CLASS_NAMES)})")
            else:
                finite = np.isfinite(row)
                if not finite.all():
                    j = int(np.argmin(finite))
                    raise ValueError(f"SHL file {str(path)!r} line {i + 1} has {int((~finite).sum())} NaN/Inf "
                                     f"values (first at value {j + 1}); expected finite values")
            out[dest[i]] = row
            n_read += 1
    if n_read != n_frames:
        raise ValueError(f"SHL file {str(path)!r} has {n_read} lines; expected {n_frames} (the number of "
                         f"lines of {str(order_path)!r}); the file may be truncated")


def _is_float(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False


# --------------------------------------------------------------------------- any of the above

def load_recordings(path: str | os.PathLike, **kwargs) -> list[Recording]:
    """Load recordings from a file, a folder or the embedded data set.

    Parameters
    ----------
    path : str or path-like
        * the string ``"watch"``: :func:`load_watch` (``kwargs`` go to it);
        * a ``.npz`` file: ``[load_npz(path)]`` (no ``kwargs`` allowed);
        * a ``.csv`` file: ``[load_csv(path, **kwargs)]``;
        * a folder containing ``Label.txt``: :func:`load_shl2018`
          (``kwargs`` go to it);
        * any other folder: every ``*.npz`` and ``*.csv`` file directly in it,
          in sorted file-name order (``kwargs`` go to :func:`load_csv`).
    **kwargs
        Options for the loader chosen, as above.

    Returns
    -------
    list of Recording

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist, or a folder holds neither ``Label.txt`` nor
        any ``.npz``/``.csv`` file.
    ValueError
        If a file has another suffix, ``kwargs`` are given where no loader
        takes them, or a loader rejects its input (its message names the file).
    """
    if isinstance(path, str) and path == "watch":
        return load_watch(**kwargs)
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"recording path {str(p)!r} does not exist; expected a .npz or .csv file, "
                                "a folder of them, an SHL-2018 folder, or the string 'watch'")
    if p.is_dir():
        if (p / SHL_LABEL_FILE).is_file():
            return load_shl2018(p, **kwargs)
        files = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in (".npz", ".csv"))
        if not files:
            raise FileNotFoundError(f"recording folder {str(p)!r} contains no .npz or .csv files and no "
                                    f"{SHL_LABEL_FILE!r} (SHL-2018 layout)")
        if kwargs and not any(f.suffix.lower() == ".csv" for f in files):
            raise ValueError(f"options {sorted(kwargs)} apply to .csv files, but recording folder {str(p)!r} "
                             "holds only .npz files")
        return [load_npz(f) if f.suffix.lower() == ".npz" else load_csv(f, **kwargs) for f in files]
    suffix = p.suffix.lower()
    if suffix == ".npz":
        if kwargs:
            raise ValueError(f"recording file {str(p)!r} is a .npz, which takes no options; got {sorted(kwargs)}")
        return [load_npz(p)]
    if suffix == ".csv":
        return [load_csv(p, **kwargs)]
    raise ValueError(f"recording file {str(p)!r} has suffix {p.suffix!r}; expected '.npz' or '.csv', a folder, "
                     "or the string 'watch'")


def load_many(paths: Sequence[str | os.PathLike]) -> list[Recording]:
    """Recordings from every path (``.npz``, ``.csv``, SHL-2018 folder, folder of files, or ``"watch"``)."""
    if not paths:
        raise ValueError("no data paths were given; expected at least one recording file or folder")
    recs: list[Recording] = []
    for p in paths:
        recs.extend(load_recordings(p))
    return recs
