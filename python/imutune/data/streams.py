"""Incremental stream readers: replay arbitrarily long recordings in constant memory.

A :class:`Stream` describes one recording (name, user, channels, classes,
sample rate, length if known) and yields it as :class:`StreamBlock` s of at
most ``block_samples`` samples, reading the file as it goes; nothing holds
the whole recording. :func:`imutune.runtime.replay_stream` consumes them.

Readers:

* :class:`NpzStream` -- the generic ``.npz`` recording file (see
  :func:`imutune.recordings.save_npz`). ``np.savez`` stores each array as an
  ``.npy`` member of a zip archive; the reader opens the ``values.npy`` and
  ``labels.npy`` members, parses their ``.npy`` headers and then reads rows
  sequentially (zip members written by ``np.savez`` are stored, those of
  ``np.savez_compressed`` are deflated; both are read incrementally). Arrays
  must be in C order (``save_npz`` writes them so).
* :class:`CsvStream` -- a CSV file as read by :func:`imutune.recordings.load_csv`
  (timestamp column in seconds, label column, one column per channel), read
  row block by row block. Timestamps reveal gaps (an interval longer than
  1.5 sample periods: ``gap_before`` = missing samples) and must increase.
  Without ``class_names`` / ``sample_rate_hz`` a first pass reads the label
  column (distinct labels only) and the first 1000 timestamps.
* :class:`Shl2018Stream` -- the SHL-2018 challenge layout (see
  :func:`imutune.recordings.load_shl2018`). A first pass records the byte
  offset of every line of the label and channel files (8 bytes per frame);
  frames are then read in time order (by ``*_order.txt``) with one seek per
  file per frame. A jump in the order values is a gap of
  ``(jump - 1) * frame_length`` samples.
* :class:`RecordingStream` -- an in-memory :class:`~imutune.recordings.Recording`.

:class:`NpzStreamWriter` writes a generic ``.npz`` incrementally (also in
constant memory; labels go through a temporary file), so long streams can be
generated or converted without holding them.

Values are passed through as read: NaN/Inf samples reach the runtime, which
repairs or rejects them (``ReplayConfig.nan_policy``). Labels are class
indices into ``class_names`` (-1: unlabeled).

:class:`StreamResampler` is the streaming form of
:func:`imutune.windows.resample` (the same polyphase filter as
``scipy.signal.resample_poly`` with zero padding at both ends, so its output
equals the offline resampling of the whole stream up to float rounding).
"""
from __future__ import annotations

import csv
import os
import tempfile
import zipfile
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from .. import _validation as V
from .recordings import Recording, _is_float, _is_int

__all__ = ["StreamBlock", "Stream", "RecordingStream", "NpzStream", "CsvStream", "Shl2018Stream",
           "NpzStreamWriter", "StreamResampler", "open_stream", "open_streams", "DEFAULT_BLOCK_SAMPLES"]

#: Samples per block read from a file (a few hundred kB for 9 channels).
DEFAULT_BLOCK_SAMPLES = 8192


@dataclass(frozen=True, eq=False)
class StreamBlock:
    """A run of consecutive samples of a stream.

    Attributes
    ----------
    values : np.ndarray
        Array of shape (n, C), float32, in the stream's channel order; may
        hold NaN/Inf.
    labels : np.ndarray
        Array of shape (n,), int64: class index into the stream's
        ``class_names``, -1 for unlabeled samples.
    gap_before : int
        Samples missing (at the stream's rate) between the previous block's
        last sample and this block's first; 0 when contiguous.
    """

    values: np.ndarray
    labels: np.ndarray
    gap_before: int = 0

    @property
    def n(self) -> int:
        """Number of samples n."""
        return int(self.values.shape[0])


class Stream:
    """Base class: metadata plus :meth:`blocks`.

    Attributes
    ----------
    name, user : str
    channels : tuple of str
        C channel names.
    class_names : tuple of str
        K class names.
    sample_rate_hz : float
    n_samples : int or None
        Total samples, where the header says (None: unknown until read).
    block_samples : int
        Largest block size yielded.
    """

    name: str = ""
    user: str = ""
    channels: tuple[str, ...] = ()
    class_names: tuple[str, ...] = ()
    sample_rate_hz: float = 0.0
    n_samples: int | None = None
    block_samples: int = DEFAULT_BLOCK_SAMPLES

    def blocks(self) -> Iterator[StreamBlock]:  # pragma: no cover - abstract
        """Yield the stream from its start, block by block (each call starts over)."""
        raise NotImplementedError

    def describe(self) -> dict:
        """JSON-ready metadata."""
        return {"name": self.name, "user": self.user, "channels": list(self.channels),
                "class_names": list(self.class_names), "sample_rate_hz": float(self.sample_rate_hz),
                "n_samples": self.n_samples, "kind": type(self).__name__}

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(name={self.name!r}, channels={list(self.channels)}, "
                f"sample_rate_hz={self.sample_rate_hz}, n_samples={self.n_samples})")


def _check_block_samples(block_samples: int) -> int:
    return V.check_int_at_least("block_samples", block_samples, 1)


# --------------------------------------------------------------------------- in memory


class RecordingStream(Stream):
    """An in-memory :class:`Recording` as a stream of views (no copies)."""

    def __init__(self, recording: Recording, *, block_samples: int = DEFAULT_BLOCK_SAMPLES) -> None:
        if not isinstance(recording, Recording):
            raise ValueError(f"recording must be an imutune Recording, got {type(recording).__name__}")
        self.recording = recording
        self.name = recording.name or recording.user
        self.user = recording.user
        self.channels = tuple(recording.channels)
        self.class_names = tuple(recording.class_names)
        self.sample_rate_hz = float(recording.sample_rate_hz)
        self.n_samples = recording.n_samples
        self.block_samples = _check_block_samples(block_samples)

    def blocks(self) -> Iterator[StreamBlock]:
        v, lab, b = self.recording.values, self.recording.labels, self.block_samples
        for s in range(0, v.shape[0], b):
            yield StreamBlock(v[s:s + b], lab[s:s + b], 0)


# --------------------------------------------------------------------------- .npz


def _read_npy_header(fh, where: str) -> tuple[tuple[int, ...], bool, np.dtype]:
    fmt = np.lib.format
    try:
        version = fmt.read_magic(fh)
        if version == (1, 0):
            return fmt.read_array_header_1_0(fh)
        if version == (2, 0):
            return fmt.read_array_header_2_0(fh)
        return fmt._read_array_header(fh, version)  # (3, 0): utf-8 header
    except Exception as e:
        raise ValueError(f"{where}: invalid .npy header ({type(e).__name__}: {e})") from e


class NpzStream(Stream):
    """A generic ``.npz`` recording file, read incrementally.

    Parameters
    ----------
    path : path-like
        File with members ``values`` (S, C), ``labels`` (S,), ``sample_rate_hz``,
        ``channels``, ``class_names``, ``user`` (see
        :func:`imutune.recordings.load_npz`).
    block_samples : int, default 8192
        Rows read per block.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        If it is not a readable zip / ``.npz`` (e.g. truncated), a member is
        missing, ``values`` is not 2-D real or ``labels`` not 1-D integer of
        the same length, an array is stored in Fortran order, or the small
        members are malformed. While reading, a member ending before the
        length its header states raises a ``ValueError`` naming the file.
    """

    _SMALL = ("sample_rate_hz", "channels", "class_names", "user")

    def __init__(self, path: str | os.PathLike, *, block_samples: int = DEFAULT_BLOCK_SAMPLES) -> None:
        self.path = V.check_file(path, what="recording file", suffixes=(".npz",))
        self.block_samples = _check_block_samples(block_samples)
        where = f"recording file {str(self.path)!r}"
        try:
            zf = zipfile.ZipFile(self.path)
        except (zipfile.BadZipFile, OSError) as e:
            raise ValueError(f"{where} is not a complete .npz archive ({e}); it may be truncated") from e
        with zf:
            names = set(zf.namelist())
            missing = [k for k in ("values", "labels") + self._SMALL if f"{k}.npy" not in names]
            if missing:
                raise ValueError(f"{where} lacks keys {missing}; expected keys "
                                 f"{['values', 'labels', *self._SMALL]}")
            small = {}
            for k in self._SMALL:
                with zf.open(f"{k}.npy") as fh:
                    try:
                        small[k] = np.lib.format.read_array(fh, allow_pickle=False)
                    except Exception as e:
                        raise ValueError(f"{where}: member {k!r} could not be read ({e})") from e
            with zf.open("values.npy") as fh:
                vshape, vfortran, vdtype = _read_npy_header(fh, f"{where} member 'values'")
            with zf.open("labels.npy") as fh:
                lshape, lfortran, ldtype = _read_npy_header(fh, f"{where} member 'labels'")
        if len(vshape) != 2 or vdtype.kind not in "fiu":
            raise ValueError(f"{where}: values must be a real array of shape (S, C), got {vdtype} of shape {vshape}")
        if len(lshape) != 1 or ldtype.kind not in "iu":
            raise ValueError(f"{where}: labels must be an integer array of shape (S,), got {ldtype} of shape "
                             f"{lshape}")
        if lshape[0] != vshape[0]:
            raise ValueError(f"{where}: labels has {lshape[0]} samples, values has {vshape[0]}")
        if vfortran and vshape[1] > 1:
            raise ValueError(f"{where}: values is stored in Fortran (column-major) order and cannot be read row "
                             "by row; re-save it with imutune.recordings.save_npz or NpzStreamWriter")
        sr = small["sample_rate_hz"]
        if sr.size != 1:
            raise ValueError(f"{where}: sample_rate_hz must be a scalar, got shape {sr.shape}")
        self.sample_rate_hz = V.check_positive("sample_rate_hz", float(sr.reshape(())), where=where)
        self.channels = tuple(str(c) for c in np.atleast_1d(small["channels"]).tolist())
        self.class_names = tuple(str(c) for c in np.atleast_1d(small["class_names"]).tolist())
        self.user = str(small["user"].reshape(()).item()) if small["user"].size == 1 else str(small["user"])
        if len(self.channels) != vshape[1]:
            raise ValueError(f"{where}: channels lists {len(self.channels)} names {list(self.channels)} but values "
                             f"has {vshape[1]} columns")
        if not self.class_names:
            raise ValueError(f"{where}: class_names is empty; expected at least one class")
        self.name = self.path.stem
        self.n_samples = int(vshape[0])
        self._vdtype, self._ldtype = vdtype, ldtype

    def blocks(self) -> Iterator[StreamBlock]:
        where = f"recording file {str(self.path)!r}"
        C, S, b = len(self.channels), self.n_samples, self.block_samples
        vsize, lsize = self._vdtype.itemsize * C, self._ldtype.itemsize
        with zipfile.ZipFile(self.path) as zf, zf.open("values.npy") as fv, zf.open("labels.npy") as fl:
            _read_npy_header(fv, where)
            _read_npy_header(fl, where)
            done = 0
            while done < S:
                n = min(b, S - done)
                try:
                    vb = fv.read(n * vsize)
                    lb = fl.read(n * lsize)
                except (zipfile.BadZipFile, EOFError, OSError) as e:
                    raise ValueError(f"{where} could not be read at sample {done} ({e}); it may be corrupt") from e
                if len(vb) != n * vsize or len(lb) != n * lsize:
                    got = min(len(vb) // vsize, len(lb) // lsize)
                    raise ValueError(f"{where} ends after {done + got} of the {S} samples its header states; "
                                     "the file is truncated")
                values = np.frombuffer(vb, dtype=self._vdtype).reshape(n, C).astype(np.float32, copy=False)
                labels = np.frombuffer(lb, dtype=self._ldtype).astype(np.int64)
                K = len(self.class_names)
                bad = (labels < -1) | (labels >= K)
                if bad.any():
                    i = int(np.argmax(bad))
                    raise ValueError(f"{where}: label {int(labels[i])} at sample {done + i} is outside the class "
                                     f"list (-1 or 0..{K - 1})")
                yield StreamBlock(values, labels, 0)
                done += n


class NpzStreamWriter:
    """Write a generic ``.npz`` recording incrementally (constant memory), atomically.

    The archive has the members :func:`imutune.recordings.load_npz` and
    :class:`NpzStream` read, with ``values`` (S, C) float32 and ``labels``
    (S,) int64 stored uncompressed. ``values`` is streamed straight into its
    zip member; labels go to a temporary file and are copied into theirs on
    :meth:`close`. The destination appears (atomic rename) only when exactly
    ``n_samples`` samples were written and the writer closed without error.

    Parameters
    ----------
    path : path-like
        Destination ``.npz``.
    n_samples : int
        Total samples S that will be written (the ``.npy`` header needs it).
    channels, class_names : sequence of str
    sample_rate_hz : float
    user : str

    Examples
    --------
    >>> with NpzStreamWriter("day.npz", n_samples=S, channels=ch, class_names=cls,
    ...                      sample_rate_hz=100.0, user="u1") as w:   # doctest: +SKIP
    ...     for values, labels in chunks:
    ...         w.write(values, labels)
    """

    def __init__(self, path: str | os.PathLike, *, n_samples: int, channels: Sequence[str],
                 class_names: Sequence[str], sample_rate_hz: float, user: str) -> None:
        self.path = Path(path)
        if self.path.suffix.lower() != ".npz":
            raise ValueError(f"path {str(self.path)!r} must end in .npz")
        self.n_samples = V.check_int_at_least("n_samples", n_samples, 0)
        self.channels = tuple(str(c) for c in channels)
        self.class_names = tuple(str(c) for c in class_names)
        if not self.channels or not self.class_names:
            raise ValueError("channels and class_names must both be non-empty")
        self.sample_rate_hz = V.check_positive("sample_rate_hz", sample_rate_hz)
        self.user = str(user)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, self._tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
        os.close(fd)
        self._labels_tmp = tempfile.TemporaryFile()
        self._zf = zipfile.ZipFile(self._tmp, "w", compression=zipfile.ZIP_STORED, allowZip64=True)
        C = len(self.channels)
        self._vfh = self._zf.open("values.npy", "w", force_zip64=True)
        np.lib.format.write_array_header_1_0(self._vfh, {"descr": np.lib.format.dtype_to_descr(np.dtype("<f4")),
                                                         "fortran_order": False, "shape": (self.n_samples, C)})
        self.written = 0
        self._closed = False

    def write(self, values: np.ndarray, labels: np.ndarray) -> None:
        """Append samples: ``values`` (n, C) (cast to float32), ``labels`` (n,) int in [-1, K)."""
        if self._closed:
            raise ValueError("the writer is closed")
        v = np.asarray(values)
        lab = np.asarray(labels)
        C, K = len(self.channels), len(self.class_names)
        if v.ndim != 2 or v.shape[1] != C:
            raise ValueError(f"values must have shape (n, {C}), got {v.shape}")
        if lab.shape != (v.shape[0],):
            raise ValueError(f"labels must have shape ({v.shape[0]},), got {lab.shape}")
        lab = V.check_labels("labels", lab, K)
        if self.written + v.shape[0] > self.n_samples:
            raise ValueError(f"writing {v.shape[0]} more samples would exceed n_samples={self.n_samples} "
                             f"({self.written} written)")
        self._vfh.write(np.ascontiguousarray(v, dtype="<f4").tobytes())
        self._labels_tmp.write(np.ascontiguousarray(lab, dtype="<i8").tobytes())
        self.written += v.shape[0]

    def close(self) -> Path:
        """Finish the archive and move it into place.

        Raises
        ------
        ValueError
            If fewer than ``n_samples`` samples were written (nothing is left
            at ``path``).
        """
        if self._closed:
            return self.path
        self._closed = True
        try:
            self._vfh.close()
            if self.written != self.n_samples:
                raise ValueError(f"{self.written} samples were written but n_samples={self.n_samples} was "
                                 f"declared; {str(self.path)!r} was not written")
            with self._zf.open("labels.npy", "w", force_zip64=True) as fl:
                np.lib.format.write_array_header_1_0(fl, {"descr": np.lib.format.dtype_to_descr(np.dtype("<i8")),
                                                          "fortran_order": False, "shape": (self.n_samples,)})
                self._labels_tmp.seek(0)
                while True:
                    buf = self._labels_tmp.read(1 << 20)
                    if not buf:
                        break
                    fl.write(buf)
            for key, arr in (("sample_rate_hz", np.float64(self.sample_rate_hz)),
                             ("channels", np.array(self.channels, dtype=str)),
                             ("class_names", np.array(self.class_names, dtype=str)),
                             ("user", np.array(self.user, dtype=str))):
                with self._zf.open(f"{key}.npy", "w") as fh:
                    np.lib.format.write_array(fh, np.asarray(arr), allow_pickle=False)
            self._zf.close()
            with open(self._tmp, "rb+") as fh:
                os.fsync(fh.fileno())
            os.replace(self._tmp, self.path)
        except BaseException:
            self._abort()
            raise
        finally:
            self._labels_tmp.close()
        return self.path

    def _abort(self) -> None:
        try:
            self._zf.close()
        except Exception:
            pass
        if os.path.exists(self._tmp):
            os.unlink(self._tmp)

    def __enter__(self) -> "NpzStreamWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self._closed = True
            try:
                self._vfh.close()
            except Exception:
                pass
            self._labels_tmp.close()
            self._abort()


# --------------------------------------------------------------------------- CSV


class CsvStream(Stream):
    """A recording CSV (header row; timestamp, label and channel columns), read in row blocks.

    Parameters
    ----------
    path : path-like
        The ``.csv`` file (same layout as :func:`imutune.recordings.load_csv`).
    class_names : sequence of str, optional
        The class list; by default a first pass collects the distinct labels
        (sorted; integer labels give ``class0..``), as ``load_csv`` does.
    user : str, optional
        Default: the file stem.
    timestamp_column, label_column : str
    sample_rate_hz : float, optional
        Default: ``1 / median(diff(t))`` over the first 1000 rows.
    block_samples : int, default 8192

    Notes
    -----
    Empty value fields are read as NaN (repaired or rejected by the runtime).
    A gap -- two timestamps more than 1.5 sample periods apart -- starts a
    new block with ``gap_before = round(dt * fs) - 1``. A final row with
    fewer fields than the header (a file cut off while being written) is
    dropped and counted in :attr:`dropped_rows`; any other malformed row, a
    non-numeric value or a timestamp that does not increase raises a
    ``ValueError`` naming the file and row.
    """

    def __init__(self, path: str | os.PathLike, *, class_names: Sequence[str] | None = None,
                 user: str | None = None, timestamp_column: str = "timestamp_s", label_column: str = "label",
                 sample_rate_hz: float | None = None, block_samples: int = DEFAULT_BLOCK_SAMPLES) -> None:
        self.path = V.check_file(path, what="recording file", suffixes=(".csv",))
        self.block_samples = _check_block_samples(block_samples)
        where = f"recording file {str(self.path)!r}"
        with open(self.path, newline="") as fh:
            reader = csv.reader(fh)
            try:
                header = [h.strip() for h in next(reader)]
            except StopIteration:
                raise ValueError(f"{where} has no header row") from None
            for col in (timestamp_column, label_column):
                if col not in header:
                    raise ValueError(f"{where} lacks column {col!r}; header is {header}")
            ti, li = header.index(timestamp_column), header.index(label_column)
            labels: set[str] = set()
            ts: list[float] = []
            need_labels = class_names is None
            for r, row in enumerate(reader):
                if not row:
                    continue
                if len(ts) < 1000 and len(row) == len(header):
                    try:
                        ts.append(float(row[ti]))
                    except ValueError:
                        raise ValueError(f"{where} row {r + 2} has a non-numeric timestamp {row[ti]!r}") from None
                if need_labels:
                    if len(row) == len(header):
                        labels.add(row[li].strip())
                elif len(ts) >= 1000:
                    break
        self._header, self._ti, self._li = header, ti, li
        self._ch_idx = [i for i in range(len(header)) if i not in (ti, li)]
        self.channels = tuple(header[i] for i in self._ch_idx)
        if not self.channels:
            raise ValueError(f"{where} has no channel columns; header is {header}")
        if sample_rate_hz is None:
            dt = np.diff(np.asarray(ts, dtype=np.float64))
            if dt.size == 0:
                raise ValueError(f"{where} has fewer than 2 data rows; cannot infer the sample rate")
            if np.any(dt <= 0):
                bad = int(np.argmax(dt <= 0))
                raise ValueError(f"{where}: timestamps must increase; row {bad + 3} has {ts[bad + 1]} after {ts[bad]}")
            sample_rate_hz = 1.0 / float(np.median(dt))
        self.sample_rate_hz = V.check_positive("sample_rate_hz", sample_rate_hz, where=where)
        if class_names is None:
            present = sorted(lab for lab in labels if lab not in ("", "-1"))
            if present and all(_is_int(lab) for lab in present):
                class_names = tuple(f"class{i}" for i in range(max(int(lab) for lab in present) + 1))
            else:
                class_names = tuple(present)
        self.class_names = tuple(str(c) for c in class_names)
        if not self.class_names:
            raise ValueError(f"{where}: no labelled rows and no class_names given; pass class_names=")
        self.user = user if user is not None else self.path.stem
        self.name = self.path.stem
        self.n_samples = None
        self.dropped_rows = 0

    def blocks(self) -> Iterator[StreamBlock]:
        where = f"recording file {str(self.path)!r}"
        lookup = {c: i for i, c in enumerate(self.class_names)}
        K = len(self.class_names)
        fs = self.sample_rate_hz
        ncol = len(self._header)
        self.dropped_rows = 0
        last_t = None
        pending_gap = 0
        with open(self.path, newline="") as fh:
            reader = csv.reader(fh)
            next(reader)
            rows: list[list[str]] = []
            first_row = 2
            rowno = 1
            while True:
                rows.clear()
                for row in reader:
                    rowno += 1
                    if not row:
                        continue
                    rows.append(row)
                    if len(rows) >= self.block_samples:
                        break
                if not rows:
                    return
                # A short final row: the file was cut off mid-write.
                if len(rows[-1]) != ncol:
                    peek = next(reader, None)
                    if peek is None:
                        rows.pop()
                        self.dropped_rows += 1
                    else:
                        rows.append(peek)  # not the last row: reported below as malformed
                        rowno += 1
                for k, row in enumerate(rows):
                    if len(row) != ncol:
                        raise ValueError(f"{where} row {first_row + k} has {len(row)} fields; expected {ncol}")
                if not rows:
                    return
                arr = np.array(rows, dtype=str)
                try:
                    t = arr[:, self._ti].astype(np.float64)
                except ValueError:
                    bad = next(i for i, r in enumerate(rows) if not _is_float(r[self._ti]))
                    raise ValueError(f"{where} row {first_row + bad} has a non-numeric timestamp "
                                     f"{rows[bad][self._ti]!r}") from None
                vals = arr[:, self._ch_idx]
                vals = np.where(np.char.strip(vals) == "", "nan", vals)
                try:
                    values = vals.astype(np.float32)
                except ValueError:
                    bad = next(i for i, r in enumerate(rows)
                               if not all(_is_float(r[j]) or not r[j].strip() for j in self._ch_idx))
                    raise ValueError(f"{where} row {first_row + bad} has a non-numeric value: {rows[bad]}") from None
                raw = np.char.strip(arr[:, self._li])
                uniq, inv = np.unique(raw, return_inverse=True)
                codes = np.empty(uniq.shape[0], dtype=np.int64)
                for u, s in enumerate(uniq.tolist()):
                    if s in ("", "-1"):
                        codes[u] = -1
                    elif s in lookup:
                        codes[u] = lookup[s]
                    elif _is_int(s) and 0 <= int(s) < K:
                        codes[u] = int(s)
                    else:
                        i = int(np.argmax(raw == s))
                        raise ValueError(f"{where} row {first_row + i}: label {s!r} is not in the class list "
                                         f"{list(self.class_names)}")
                labels = codes[inv.reshape(-1)]
                full_t = t if last_t is None else np.concatenate([[last_t], t])
                dt = np.diff(full_t)
                if np.any(dt <= 0):
                    i = int(np.argmax(dt <= 0))
                    off = 0 if last_t is None else -1
                    raise ValueError(f"{where}: timestamps must increase; row {first_row + i + 1 + off} has "
                                     f"{full_t[i + 1]} after {full_t[i]}")
                gaps = np.flatnonzero(dt > 1.5 / fs)
                cuts = (gaps + (0 if last_t is not None else 1)).tolist()  # index in this block where a gap ends
                missing = [max(int(round(dt[g] * fs)) - 1, 1) for g in gaps.tolist()]
                start = 0
                for cut, miss in zip(cuts, missing):
                    if cut > start:
                        yield StreamBlock(values[start:cut], labels[start:cut], pending_gap)
                        pending_gap = 0
                    pending_gap += miss
                    start = cut
                if start < values.shape[0]:
                    yield StreamBlock(values[start:], labels[start:], pending_gap)
                    pending_gap = 0
                last_t = float(t[-1])
                first_row = rowno + 1


# --------------------------------------------------------------------------- SHL-2018


class Shl2018Stream(Stream):
    """One split of the SHL-2018 layout, read frame by frame in time order.

    Parameters
    ----------
    folder : path-like
        The split folder (``Label.txt``, ``<channel>.txt``, order file).
    channels : sequence of str, default ``("Acc_x", ..., "Gyr_z")``
    order_file : path-like, optional
        As in :func:`imutune.recordings.load_shl2018`.
    user : str, default ``"shl-user1"``
    sample_rate_hz : float, default 100.0

    Notes
    -----
    Labels are ``code - 1`` (Null -> -1, unlabeled) over
    :data:`imutune.recordings.SHL_CLASS_NAMES`. Unlike the loader, NaN/Inf
    values are passed on (the runtime repairs or rejects them). Memory: the
    line offsets (8 bytes per frame per file) and one frame at a time.

    Raises
    ------
    FileNotFoundError, ValueError
        As :func:`imutune.recordings.load_shl2018` for missing files,
        repeated order values, line-count mismatches; while reading, for a
        line with the wrong number of values or a bad label code.
    """

    def __init__(self, folder: str | os.PathLike, *, channels: Sequence[str] | None = None,
                 order_file: str | os.PathLike | None = None, user: str = "shl-user1",
                 sample_rate_hz: float = 100.0) -> None:
        from .recordings import (
            _SHL_DEFAULT_CHANNELS,
            SHL_CLASS_NAMES,
            SHL_LABEL_FILE,
            _read_shl_order,
            _shl_channel_files,
            _shl_frame_length,
            _shl_order_path,
        )

        root = V.check_dir(folder, what="SHL folder")
        channels = tuple(_SHL_DEFAULT_CHANNELS if channels is None else
                         ((channels,) if isinstance(channels, str) else channels))
        if not channels or len(set(channels)) != len(channels):
            raise ValueError(f"channels for SHL folder {str(root)!r} must be distinct names, got {list(channels)}")
        label_path = root / SHL_LABEL_FILE
        if not label_path.is_file():
            raise FileNotFoundError(f"SHL folder {str(root)!r} lacks {SHL_LABEL_FILE!r}")
        self._paths = [root / f"{c}.txt" for c in channels]
        for c, p in zip(channels, self._paths):
            if not p.is_file():
                raise FileNotFoundError(f"SHL channel file {str(p)!r} (channel {c!r}) does not exist; channel files "
                                        f"present in {str(root)!r}: {_shl_channel_files(root)}")
        self._order_path = _shl_order_path(root, order_file)
        order = _read_shl_order(self._order_path)
        uniq, counts = np.unique(order, return_counts=True)
        if uniq.shape[0] != order.shape[0]:
            raise ValueError(f"SHL order file {str(self._order_path)!r} repeats order values "
                             f"{uniq[counts > 1][:5].tolist()}; expected one distinct position per frame")
        self._time_idx = np.argsort(order, kind="stable")
        self._sorted_order = order[self._time_idx]
        self._label_path = label_path
        self.frame_length = _shl_frame_length(label_path)
        n_frames = order.shape[0]
        self._offsets = {p: self._line_offsets(p, n_frames) for p in [label_path, *self._paths]}
        self.root = root
        self.channels = channels
        self.class_names = tuple(SHL_CLASS_NAMES)
        self.sample_rate_hz = V.check_positive("sample_rate_hz", sample_rate_hz, where=f"SHL folder {str(root)!r}")
        self.user = str(user)
        self.name = f"shl_{root.name}"
        self.n_samples = int(n_frames * self.frame_length)
        self.block_samples = int(self.frame_length)

    def _line_offsets(self, path: Path, n_frames: int) -> np.ndarray:
        offsets = np.empty(n_frames, dtype=np.int64)
        pos, i = 0, 0
        with open(path, "rb") as fh:
            for line in fh:
                if line.strip():
                    if i >= n_frames:
                        raise ValueError(f"SHL file {str(path)!r} has more than {n_frames} lines; expected "
                                         f"{n_frames} (the number of lines of {str(self._order_path)!r})")
                    offsets[i] = pos
                    i += 1
                pos += len(line)
        if i != n_frames:
            raise ValueError(f"SHL file {str(path)!r} has {i} lines; expected {n_frames} (the number of lines of "
                             f"{str(self._order_path)!r}); the file may be truncated")
        return offsets

    def blocks(self) -> Iterator[StreamBlock]:
        from .recordings import SHL_CLASS_NAMES, _parse_shl_line

        F, C = self.frame_length, len(self.channels)
        handles = {p: open(p, "rb") for p in self._offsets}
        try:
            prev = None
            for k, line_idx in enumerate(self._time_idx.tolist()):
                order_val = int(self._sorted_order[k])
                gap = 0 if prev is None else (order_val - prev - 1) * F
                prev = order_val
                values = np.empty((F, C), dtype=np.float32)
                for ci, p in enumerate(self._paths):
                    row = self._read_line(handles[p], p, line_idx, np.float32, _parse_shl_line)
                    values[:, ci] = row
                codes = self._read_line(handles[self._label_path], self._label_path, line_idx, np.float64,
                                        _parse_shl_line)
                bad = (codes != np.round(codes)) | (codes < 0) | (codes > len(SHL_CLASS_NAMES))
                if bad.any():
                    j = int(np.argmax(bad))
                    raise ValueError(f"SHL label file {str(self._label_path)!r} line {line_idx + 1} value {j + 1} is "
                                     f"{codes[j]:g}; expected an integer code in 0..{len(SHL_CLASS_NAMES)}")
                yield StreamBlock(values, codes.astype(np.int64) - 1, int(gap))
        finally:
            for fh in handles.values():
                fh.close()

    def _read_line(self, fh, path: Path, line_idx: int, dtype, parse) -> np.ndarray:
        fh.seek(int(self._offsets[path][line_idx]))
        text = fh.readline().decode("utf-8", errors="replace")
        row = parse(path, line_idx + 1, text, dtype)
        if row.shape[0] != self.frame_length:
            raise ValueError(f"SHL file {str(path)!r} line {line_idx + 1} has {row.shape[0]} values; expected "
                             f"{self.frame_length} (as in line 1 of Label.txt); the file may be truncated")
        return row


# --------------------------------------------------------------------------- dispatch


def open_stream(path: str | os.PathLike | Recording, **kwargs) -> Stream:
    """A stream for one recording.

    Parameters
    ----------
    path : path-like or Recording
        ``.npz`` -> :class:`NpzStream`; ``.csv`` -> :class:`CsvStream`; a
        folder with ``Label.txt`` -> :class:`Shl2018Stream`; a
        :class:`Recording` -> :class:`RecordingStream`.
    **kwargs
        Options of that reader.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        For another suffix, or a folder that is not an SHL-2018 split (use
        :func:`open_streams` for a folder of files).
    """
    if isinstance(path, Recording):
        return RecordingStream(path, **kwargs)
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"recording path {str(p)!r} does not exist")
    if p.is_dir():
        if (p / "Label.txt").is_file():
            return Shl2018Stream(p, **kwargs)
        raise ValueError(f"folder {str(p)!r} is not an SHL-2018 split (no Label.txt); use open_streams() for a "
                         "folder of .npz/.csv files")
    suffix = p.suffix.lower()
    if suffix == ".npz":
        return NpzStream(p, **kwargs)
    if suffix == ".csv":
        return CsvStream(p, **kwargs)
    raise ValueError(f"recording file {str(p)!r} has suffix {p.suffix!r}; expected '.npz' or '.csv' or an "
                     "SHL-2018 folder")


def open_streams(path: str | os.PathLike, **kwargs) -> list[Stream]:
    """Streams for a file, an SHL-2018 folder, or every ``.npz``/``.csv`` directly in a folder (sorted)."""
    p = Path(path)
    if p.is_dir() and not (p / "Label.txt").is_file():
        files = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in (".npz", ".csv"))
        if not files:
            raise FileNotFoundError(f"recording folder {str(p)!r} contains no .npz or .csv files and no Label.txt")
        return [open_stream(f, **(kwargs if f.suffix.lower() == ".csv" else
                                  {k: v for k, v in kwargs.items() if k == "block_samples"})) for f in files]
    return [open_stream(p, **kwargs)]


# --------------------------------------------------------------------------- resampling


class StreamResampler:
    """Streaming polyphase resampler, equal to ``scipy.signal.resample_poly`` on the whole stream.

    The rate ratio is ``Fraction(to_hz / from_hz).limit_denominator(1000) =
    up / down`` (as :func:`imutune.windows.resample`); the filter is
    resample_poly's default (Kaiser-windowed sinc, beta 5, half length
    ``10 * max(up, down)`` input-rate taps, times ``up``). Output sample
    ``m`` is ``sum_n x[n] h[m * down - n * up + half]`` with ``x[n] = 0``
    outside the stream, so it can be emitted once input ``n_max(m) =
    (m * down + half) // up`` has arrived: the output lags the input by
    about ``half / up`` input samples (0.2 s for 100 -> 50 Hz). Labels take
    the input sample nearest in time (``round(m * down / up)``).

    Parameters
    ----------
    from_hz, to_hz : float
        Input and output rates.
    n_channels : int
        C.

    Methods
    -------
    push(values, labels) -> (values_out, labels_out)
        Feed (n, C) float32 / (n,) int64; returns the outputs now determined.
    flush() -> (values_out, labels_out)
        End of stream: the remaining ``ceil(S * up / down)`` outputs.
    """

    def __init__(self, from_hz: float, to_hz: float, n_channels: int) -> None:
        from scipy.signal import firwin

        V.check_positive("from_hz", from_hz)
        V.check_positive("to_hz", to_hz)
        self.C = V.check_int_at_least("n_channels", n_channels, 1)
        frac = Fraction(to_hz / from_hz).limit_denominator(1000)
        self.up, self.down = frac.numerator, frac.denominator
        max_rate = max(self.up, self.down)
        self.half = 10 * max_rate
        h = firwin(2 * self.half + 1, 1.0 / max_rate, window=("kaiser", 5.0)) * self.up
        L = h.shape[0]
        self.J = -(-L // self.up)
        hp = np.zeros((self.up, self.J), dtype=np.float64)
        for r in range(self.up):
            taps = h[r::self.up]
            hp[r, :taps.shape[0]] = taps
        self._hp = hp.astype(np.float32)
        self._hist = np.zeros((self.J - 1, self.C), dtype=np.float32)      # inputs n_in-J+1 .. n_in-1
        self._lhist = np.full(self.J - 1, -1, dtype=np.int64)
        self.n_in = 0
        self.m_out = 0

    def _emit(self, buf: np.ndarray, lbuf: np.ndarray, start: int, m_end: int) -> tuple[np.ndarray, np.ndarray]:
        m = np.arange(self.m_out, m_end, dtype=np.int64)
        if m.size == 0:
            return np.empty((0, self.C), np.float32), np.empty(0, np.int64)
        q = m * self.down + self.half
        nmax, phase = q // self.up, q % self.up
        idx = (nmax - start)[:, None] - np.arange(self.J)[None, :]          # (M, J) rows of buf
        valid = (idx >= 0) & (idx < buf.shape[0])
        safe = np.clip(idx, 0, buf.shape[0] - 1)
        coef = self._hp[phase] * valid                                     # (M, J)
        out = np.einsum("mj,mjc->mc", coef, buf[safe], optimize=False).astype(np.float32)
        src = np.round(m * self.down / self.up).astype(np.int64)
        lab = lbuf[np.clip(src - start, 0, lbuf.shape[0] - 1)]
        self.m_out = int(m_end)
        return out, lab

    def push(self, values: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        v = np.asarray(values, dtype=np.float32)
        lab = np.asarray(labels, dtype=np.int64)
        n = v.shape[0]
        buf = np.concatenate([self._hist, v], axis=0)
        lbuf = np.concatenate([self._lhist, lab])
        start = self.n_in - self._hist.shape[0]       # input index of buf[0]
        self.n_in += n
        # outputs whose newest needed input has arrived: (m * down + half) // up <= n_in - 1
        m_end = max(self.m_out, (self.n_in * self.up - 1 - self.half) // self.down + 1)
        out = self._emit(buf, lbuf, start, m_end)
        keep = self.J - 1                             # buf always holds at least J - 1 rows
        self._hist = buf[buf.shape[0] - keep:].copy()
        self._lhist = lbuf[lbuf.shape[0] - keep:].copy()
        return out

    def flush(self) -> tuple[np.ndarray, np.ndarray]:
        total = -(-self.n_in * self.up // self.down)
        buf, lbuf = self._hist, self._lhist
        start = self.n_in - buf.shape[0]
        # Inputs beyond the end are zero: _emit masks indices past buf; labels clip to the last one.
        return self._emit(buf, lbuf, start, max(self.m_out, total))
