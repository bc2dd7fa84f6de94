"""The SHL-2018 challenge layout: one parser (:class:`Shl2018Stream`); :func:`load_shl2018` is that stream
read to the end and cut at its gaps.

A split folder holds ``Label.txt`` and one ``<channel>.txt`` per channel
(``Acc_x.txt``, ...): line ``i`` of every file is one frame of F samples
(F = 6000: one minute at 100 Hz), whitespace-separated; labels are codes
0 (Null) .. 8 (``SHL_CLASS_NAMES``). The order file (``train_order.txt`` /
``test_order.txt``, or ``<parent>/<split>_order.txt``) gives each line's
position in time. Frames are read in time order; wherever two consecutive
order values differ by more than 1 a gap of ``(jump - 1) * F`` samples lies
between them.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from .. import _validation as V
from .recording import (
    MAX_CHANNELS,
    Recording,
    Stream,
    StreamBlock,
    check_names,
    check_sample_rate,
    is_float,
    read_stream,
    reading,
)

__all__ = ["Shl2018Stream", "load_shl2018", "SHL_CLASS_NAMES", "SHL_LABEL_FILE", "SHL_ORDER_FILES",
           "SHL_DEFAULT_CHANNELS", "SHL_MAX_ORDER", "shl_gravity"]

SHL_CLASS_NAMES = ("Still", "Walk", "Run", "Bike", "Car", "Bus", "Train", "Subway")
SHL_LABEL_FILE = "Label.txt"
SHL_ORDER_FILES = ("train_order.txt", "test_order.txt")
SHL_DEFAULT_CHANNELS = ("Acc_x", "Acc_y", "Acc_z", "Gyr_x", "Gyr_y", "Gyr_z")
#: Largest order value accepted (2**53 - 1: exact in float64, no int64 overflow in differences).
SHL_MAX_ORDER = 2 ** 53 - 1


def _check_channels(channels, root: Path) -> tuple[str, ...]:
    """The SHL channel-name rules, once: distinct non-empty file stems, not the label or an order file."""
    where = f"SHL folder {str(root)!r}"
    channels = SHL_DEFAULT_CHANNELS if channels is None else ((channels,) if isinstance(channels, str) else channels)
    channels = list(channels)
    if not channels:
        raise ValueError(f"channels for {where} is empty; expected at least one channel name such as "
                         f"{list(SHL_DEFAULT_CHANNELS)}")
    dupes = sorted({str(c) for c in channels if channels.count(c) > 1})
    if dupes:
        raise ValueError(f"channels for {where} repeats {dupes}; expected distinct names, got {list(channels)}")
    bad = [c for c in channels if not isinstance(c, str) or not c.strip() or c == Path(SHL_LABEL_FILE).stem
           or c.endswith("_order") or "/" in c or "\\" in c or c in (".", "..")]
    if bad:
        raise ValueError(f"channels for {where} has invalid names {bad}; expected channel file stems such as "
                         f"{list(SHL_DEFAULT_CHANNELS)}")
    return check_names("channels", channels, where=where, limit=MAX_CHANNELS)


def _channel_files(root: Path) -> list[str]:
    """Names of the ``*.txt`` files in ``root`` that are neither labels nor order files."""
    return sorted(p.name for p in root.glob("*.txt")
                  if p.name != SHL_LABEL_FILE and not p.name.endswith("_order.txt"))


def _order_path(root: Path, order_file: str | os.PathLike | None) -> Path:
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


def _read_order(path: Path) -> np.ndarray:
    """One integer in 0..SHL_MAX_ORDER per line; trailing blank lines are ignored."""
    with open(path, "r", encoding="utf-8", errors="replace") as fh:
        lines = [ln.strip() for ln in fh]
    while lines and not lines[-1]:
        lines.pop()
    if not lines:
        raise ValueError(f"SHL order file {str(path)!r} has no lines; expected one integer per frame")
    order = np.empty(len(lines), dtype=np.int64)
    for i, ln in enumerate(lines):
        v: float | int
        try:
            v = int(ln) if len(ln) <= 40 else float("nan")
        except ValueError:
            try:  # "12.0" or "1.2e1" as written by some tools
                v = float(ln)
            except ValueError:
                v = float("nan")
            if not np.isfinite(v) or v != round(v):
                raise ValueError(f"SHL order file {str(path)!r} line {i + 1} is {ln[:40]!r}; expected one "
                                 "integer per line") from None
            v = int(v)
        if isinstance(v, float):
            raise ValueError(f"SHL order file {str(path)!r} line {i + 1} is {ln[:40]!r}; expected one "
                             "integer per line")
        if not (0 <= v <= SHL_MAX_ORDER):
            raise ValueError(f"SHL order file {str(path)!r} line {i + 1} is {ln[:40]!r}; expected an integer "
                             f"order value in 0..{SHL_MAX_ORDER}")
        order[i] = v
    return order


def _parse_line(path: Path, lineno: int, text: str, dtype) -> np.ndarray:
    text = text.strip()
    if not text:
        return np.empty(0, dtype=dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)  # numpy < 2.3 warns instead of raising
        try:
            return np.fromstring(text, dtype=dtype, sep=" ")
        except (ValueError, DeprecationWarning):
            pass
    bad = next((t for t in text.split() if not is_float(t)), text[:40])
    raise ValueError(f"SHL file {str(path)!r} line {lineno} has a non-numeric value {bad[:40]!r}; "
                     "expected whitespace-separated numbers")


def _frame_length(label_path: Path) -> int:
    with open(label_path, "rb") as fh:
        first = fh.readline(1 << 24).decode("utf-8", errors="replace")
    n = _parse_line(label_path, 1, first, np.float64).shape[0]
    if n == 0:
        raise ValueError(f"SHL file {str(label_path)!r} line 1 is empty; expected one frame of "
                         "whitespace-separated label codes (6000 in SHL-2018)")
    return n


class Shl2018Stream(Stream):
    """One split of the SHL-2018 layout, read frame by frame in time order.

    Parameters
    ----------
    folder : path-like
        The split folder (``Label.txt``, ``<channel>.txt``, order file).
    channels : sequence of str, default ``("Acc_x", "Acc_y", "Acc_z", "Gyr_x", "Gyr_y", "Gyr_z")``
        Channel names, i.e. file stems in ``folder``, in this order.
    order_file : path-like, optional
        The order file (a path, or a name inside ``folder``). By default
        ``folder/train_order.txt``, else ``folder/test_order.txt``, else
        ``<parent>/<folder name>_order.txt`` (the official archive keeps the
        order files next to the ``train``/``test`` folders).
    user : str, default ``"shl-user1"``
    sample_rate_hz : float, default 100.0
        In [0.001, 100000] Hz.
    require_finite : bool, default False
        Reject NaN/Inf values naming file and line (the eager
        :func:`load_shl2018` sets it; a stream otherwise passes them on for
        the runtime to repair or reject).

    Notes
    -----
    Labels are ``code - 1`` (Null -> -1, unlabeled) over
    :data:`SHL_CLASS_NAMES`. A first pass records the byte offset of every
    line of the label and channel files (8 bytes per frame per file); frames
    are then read in time order with one seek per file per frame. A jump in
    the order values is ``gap_before = (jump - 1) * frame_length``.

    Raises
    ------
    FileNotFoundError
        If ``folder``, ``Label.txt``, the order file or a channel file is
        missing (the message lists the channel files present).
    ValueError
        If ``channels`` is empty, repeats a name or names no channel file,
        ``sample_rate_hz`` is outside the accepted range, an order value is
        not an integer in 0..2**53-1 or repeats, a file has a different number
        of lines than the order file or is too small to hold its frames; while
        reading, a line with a different number of values than line 1 of
        ``Label.txt``, a non-numeric value, a label code that is not an
        integer in 0..8. The message names the file and, where it applies,
        the line (1-based), the value or count seen and what was expected.
    """

    def __init__(self, folder: str | os.PathLike, *, channels: Sequence[str] | None = None,
                 order_file: str | os.PathLike | None = None, user: str = "shl-user1",
                 sample_rate_hz: float = 100.0, require_finite: bool = False) -> None:
        root = V.check_dir(folder, what="SHL folder")
        self.where = where = f"SHL folder {str(root)!r}"
        self._source = str(root)
        channels = _check_channels(channels, root)
        self.sample_rate_hz = check_sample_rate(sample_rate_hz, where=where)
        self.require_finite = bool(require_finite)
        with reading(where, str(root)):
            label_path = root / SHL_LABEL_FILE
            if not label_path.is_file():
                raise FileNotFoundError(f"SHL folder {str(root)!r} lacks {SHL_LABEL_FILE!r}; expected the "
                                        "per-sample label file of the SHL-2018 layout")
            self._paths = [root / f"{c}.txt" for c in channels]
            for c, p in zip(channels, self._paths):
                if not p.is_file():
                    raise FileNotFoundError(f"SHL channel file {str(p)!r} (channel {c!r}) does not exist; channel "
                                            f"files present in {str(root)!r}: {_channel_files(root)}")
            self._order_path = _order_path(root, order_file)
            order = _read_order(self._order_path)
            uniq, counts = np.unique(order, return_counts=True)
            if uniq.shape[0] != order.shape[0]:
                raise ValueError(f"SHL order file {str(self._order_path)!r} repeats order values "
                                 f"{uniq[counts > 1][:5].tolist()}; expected one distinct position per frame")
            self._time_idx = np.argsort(order, kind="stable")     # file line of the k-th frame in time
            self.sorted_order = order[self._time_idx]
            self._label_path = label_path
            self.frame_length = _frame_length(label_path)
            n_frames = order.shape[0]
            self._offsets = {p: self._line_offsets(p, n_frames) for p in [label_path, *self._paths]}
        self.root = root
        self.channels = channels
        self.class_names = tuple(SHL_CLASS_NAMES)
        self.user = str(user)
        self.name = f"shl_{root.name}"
        self.n_samples = int(n_frames * self.frame_length)
        self.block_samples = int(self.frame_length)
        self._n_samples_verified = True     # every file was checked to be large enough (_line_offsets)
        self.meta = {"source": "shl2018", "frame_length": int(self.frame_length)}
        gravity = shl_gravity(channels)
        if gravity is not None:
            self.meta["gravity"] = gravity

    def _line_offsets(self, path: Path, n_frames: int) -> np.ndarray:
        offsets = np.empty(n_frames, dtype=np.int64)
        pos, i = 0, 0
        with open(path, "rb") as fh:
            for line in fh:
                if line.strip():
                    if i >= n_frames:
                        extra = 1 + sum(1 for ln in fh if ln.strip())
                        raise ValueError(f"SHL file {str(path)!r} has {n_frames + extra} lines; expected {n_frames} "
                                         f"(the number of lines of {str(self._order_path)!r})")
                    offsets[i] = pos
                    i += 1
                pos += len(line)
        if i != n_frames:
            raise ValueError(f"SHL file {str(path)!r} has {i} lines; expected {n_frames} (the number of lines of "
                             f"{str(self._order_path)!r}); the file may be truncated")
        # Each value takes at least 2 bytes ("0 "), so a file smaller than this cannot hold its frames.
        if pos < n_frames * (2 * self.frame_length - 1):
            raise ValueError(f"SHL file {str(path)!r} has {pos} bytes, too few for {n_frames} lines of "
                             f"{self.frame_length} values (as in line 1 of {SHL_LABEL_FILE}); the file may be "
                             "truncated")
        return offsets

    def _blocks(self) -> Iterator[StreamBlock]:
        F, C = self.frame_length, len(self.channels)
        handles = {p: open(p, "rb") for p in self._offsets}
        try:
            prev = None
            for k, line_idx in enumerate(self._time_idx.tolist()):
                order_val = int(self.sorted_order[k])
                gap = 0 if prev is None else (order_val - prev - 1) * F
                prev = order_val
                values = np.empty((F, C), dtype=np.float32)
                for ci, p in enumerate(self._paths):
                    values[:, ci] = self._read_line(handles[p], p, line_idx, np.float32)
                codes = self._read_line(handles[self._label_path], self._label_path, line_idx, np.float64)
                bad = (codes != np.round(codes)) | (codes < 0) | (codes > len(SHL_CLASS_NAMES))
                if bad.any():
                    j = int(np.argmax(bad))
                    raise ValueError(f"SHL label file {str(self._label_path)!r} line {line_idx + 1} value {j + 1} is "
                                     f"{codes[j]:g}; expected an integer code in 0..{len(SHL_CLASS_NAMES)} "
                                     f"(0 = Null, 1..8 = {list(SHL_CLASS_NAMES)})")
                yield StreamBlock(values, codes.astype(np.int64) - 1, int(gap))
        finally:
            for fh in handles.values():
                fh.close()

    def _read_line(self, fh, path: Path, line_idx: int, dtype) -> np.ndarray:
        fh.seek(int(self._offsets[path][line_idx]))
        text = fh.readline().decode("utf-8", errors="replace")
        row = _parse_line(path, line_idx + 1, text, dtype)
        if row.shape[0] != self.frame_length:
            raise ValueError(f"SHL file {str(path)!r} line {line_idx + 1} has {row.shape[0]} values; expected "
                             f"{self.frame_length} (as in line 1 of {SHL_LABEL_FILE}); the file may be truncated")
        if self.require_finite and path != self._label_path:
            finite = np.isfinite(row)
            if not finite.all():
                j = int(np.argmin(finite))
                raise ValueError(f"SHL file {str(path)!r} line {line_idx + 1} has {int((~finite).sum())} NaN/Inf "
                                 f"values (first at value {j + 1}); expected finite values")
        return row


def load_shl2018(folder: str | os.PathLike, *, channels: Sequence[str] = SHL_DEFAULT_CHANNELS,
                 order_file: str | os.PathLike | None = None, user: str = "shl-user1",
                 sample_rate_hz: float = 100.0) -> list[Recording]:
    """Load one split of the SHL-2018 challenge layout: :class:`Shl2018Stream` read to the end, cut at gaps.

    Source: Wang et al., "Summary of the Sussex-Huawei Locomotion-Transportation
    Recognition Challenge", UbiComp/ISWC 2018 Adjunct.

    Parameters
    ----------
    folder, channels, order_file, user, sample_rate_hz
        As :class:`Shl2018Stream`.

    Returns
    -------
    list of Recording
        In time order, one per continuous run of frames (the stream's gaps cut
        it): values (S, C) float32 with S = (frames in the run) * F, labels
        (S,) int64 with ``label = code - 1`` (Null -> -1, unlabeled),
        ``class_names =`` :data:`SHL_CLASS_NAMES`, ``name =
        f"shl_{folder.name}_{k:03d}"`` and ``meta = {"source": "shl2018",
        "order_first": int, "order_last": int, "n_frames": int,
        "frame_length": F}``, plus ``"gravity"`` (:func:`shl_gravity`: True for
        ``Acc_*`` channels, False for ``LAcc_*``).

    Raises
    ------
    FileNotFoundError, ValueError
        As :class:`Shl2018Stream`, and for NaN/Inf values (naming file and line).

    Notes
    -----
    Peak memory is about the size of the result (one preallocated array; the
    full 2018 train split with 6 channels: ~2.3 GB).
    """
    stream = Shl2018Stream(folder, channels=channels, order_file=order_file, user=user,
                           sample_rate_hz=sample_rate_hz, require_finite=True)
    whole = read_stream(stream)
    F = stream.frame_length
    cuts = [0] + [at // F for at, _ in whole.gaps] + [stream.sorted_order.shape[0]]   # in frames
    out = []
    for k, (a, b) in enumerate(zip(cuts[:-1], cuts[1:])):
        out.append(Recording(whole.values[a * F:b * F], whole.labels[a * F:b * F], whole.sample_rate_hz,
                             whole.channels, whole.class_names, whole.user, name=f"{stream.name}_{k:03d}",
                             meta={"source": "shl2018", "order_first": int(stream.sorted_order[a]),
                                   "order_last": int(stream.sorted_order[b - 1]), "n_frames": int(b - a),
                                   "frame_length": int(F),
                                   **({} if stream.meta.get("gravity") is None else
                                      {"gravity": stream.meta["gravity"]})}))
    return out


def shl_gravity(channels: Sequence[str]) -> bool | None:
    """Whether SHL channels carry gravity: the raw accelerometer ``Acc_*`` includes it (True), the linear
    acceleration ``LAcc_*`` does not (False); None when both or neither are selected (SHL-2018 user guide:
    Acc, LAcc = Acc - Gra, Gra)."""
    low = [str(c).lower() for c in channels]
    acc, lacc = any(c.startswith("acc_") for c in low), any(c.startswith("lacc_") for c in low)
    return True if acc and not lacc else False if lacc and not acc else None
