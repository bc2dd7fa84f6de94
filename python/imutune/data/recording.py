"""The Recording type, the Stream protocol and the input rules every reader shares.

A :class:`Recording` is one labelled multichannel sensor stream of one user,
held in memory. A :class:`Stream` describes a recording (name, user,
channels, classes, sample rate) and yields it as :class:`StreamBlock` s.

Every file format has exactly one parser, a :class:`Stream` subclass in its
own module (:mod:`.npz`, :mod:`.csv`, :mod:`.shl2018`); its eager loader is
:func:`read_stream`, the stream read to the end. The rules below are defined
here once and used by every reader:

* **Sample rate**: a real number in ``SAMPLE_RATE_RANGE_HZ`` = [0.001 Hz,
  100 kHz] (not a bool, not complex) -- :func:`check_sample_rate`. Inferred
  rates are ``1 / median(diff(t))`` over the first ``RATE_INFERENCE_ROWS``
  timestamps -- :func:`infer_sample_rate`.
* **Gaps**: two timestamps more than ``GAP_FACTOR`` = 1.5 sample periods apart
  are a gap of ``max(round(dt * fs) - 1, 1)`` missing samples --
  :func:`find_gaps`. A stream reports it as ``StreamBlock.gap_before``; the
  eager loader records it in :attr:`Recording.gaps`, and
  :class:`RecordingStream` yields it again, so a recording replays with the
  gaps its file had.
* **Labels**: ``""`` and ``"-1"`` mark unlabeled samples
  (``UNLABELED_MARKERS``). Without a declared class list the class names are
  the distinct labels, treated as names (all-integer labels are ordered by
  value, others sorted) -- :func:`infer_class_names`. With a declared list a
  label is a name in it or an integer index into it -- :class:`LabelCoder`.
  An integer label never makes the reader allocate a class per integer.
* **Names**: channel and class names are non-empty distinct strings of at
  most ``MAX_NAME_CHARS`` characters, at most ``MAX_CHANNELS`` channels and
  ``MAX_CLASSES`` classes -- :func:`check_names`.
* **Errors**: readers raise only ``ValueError`` and ``FileNotFoundError``,
  with the file named; :func:`reading` turns anything else a malformed file
  provokes in a library (``csv.Error``, ``zipfile.BadZipFile``,
  ``zlib.error``, ``OverflowError`` ...) into a ``ValueError`` that names the
  file.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Sequence

import numpy as np

from .. import _validation as V

__all__ = ["Recording", "Stream", "StreamBlock", "RecordingStream", "read_stream", "split_at_gaps",
           "DEFAULT_BLOCK_SAMPLES", "SAMPLE_RATE_RANGE_HZ", "MAX_CHANNELS", "MAX_CLASSES", "MAX_NAME_CHARS",
           "UNLABELED_MARKERS", "GAP_FACTOR", "RATE_INFERENCE_ROWS", "declared_gravity", "parse_gravity"]

#: Samples per block read from a file (a few hundred kB for 9 channels).
DEFAULT_BLOCK_SAMPLES = 8192
#: Accepted sample rates in Hz, inclusive: 0.001 Hz (one sample per 1000 s) to 100 kHz.
SAMPLE_RATE_RANGE_HZ = (1e-3, 1e5)
#: Most channels a header may declare.
MAX_CHANNELS = 1024
#: Most classes a class list (declared, or inferred from labels) may hold.
MAX_CLASSES = 1024
#: Longest channel name, class name, label or user id, in characters.
MAX_NAME_CHARS = 256
#: Label strings that mark an unlabeled sample (label -1).
UNLABELED_MARKERS = ("", "-1")
#: An interval longer than this many sample periods is a gap.
GAP_FACTOR = 1.5
#: Timestamps used to infer a sample rate (the first rows of the file).
RATE_INFERENCE_ROWS = 1001


# --------------------------------------------------------------------------- shared rules


def check_sample_rate(value, *, where: str, inferred: bool = False) -> float:
    """Require a real number of Hz in :data:`SAMPLE_RATE_RANGE_HZ`.

    Raises
    ------
    ValueError
        For a bool, complex, string, non-finite or out-of-range value; the
        message names ``where``, the value and the accepted range.
    """
    lo, hi = SAMPLE_RATE_RANGE_HZ
    how = " (inferred as 1 / median timestamp interval; are the timestamps in seconds?)" if inferred else ""
    msg = (f"sample_rate_hz in {where} must be a positive number of Hz in [{lo:g}, {hi:g}] "
           f"(0 < fs <= 100 kHz), got {value!r}{how}")
    if isinstance(value, np.ndarray) and value.size == 1:
        value = value.reshape(()).item() if value.dtype.kind in "fiub" else value
    if isinstance(value, (bool, np.bool_, str, bytes, complex, np.complexfloating)) or value is None:
        raise ValueError(msg)
    try:
        v = float(value)
    except (TypeError, ValueError, OverflowError):
        raise ValueError(msg) from None
    if not math.isfinite(v) or not (lo <= v <= hi):
        raise ValueError(msg)
    return v


def check_names(kind: str, names, *, where: str, limit: int) -> tuple[str, ...]:
    """Require 1..``limit`` distinct, non-empty strings of at most :data:`MAX_NAME_CHARS` characters.

    Raises
    ------
    ValueError
        Naming ``kind`` (e.g. ``"channels"``), ``where`` and the offending names.
    """
    if isinstance(names, (str, bytes)) or not isinstance(names, Iterable):
        raise ValueError(f"{kind} in {where} must be a sequence of names, got {type(names).__name__} {names!r:.80}")
    names = list(names)
    if not names:
        raise ValueError(f"{kind} in {where} is empty; expected at least one name")
    if len(names) > limit:
        raise ValueError(f"{kind} in {where} has {len(names)} names; expected at most {limit}")
    bad = [n for n in names if not isinstance(n, (str, np.str_))]
    if bad:
        raise ValueError(f"{kind} in {where} must be strings, got {bad[:3]!r:.120}")
    out = tuple(str(n) for n in names)
    empty = [i for i, n in enumerate(out) if not n.strip()]
    if empty:
        raise ValueError(f"{kind} in {where} has empty names at positions {empty[:5]}; got {list(out)!r:.200}")
    long = [n for n in out if len(n) > MAX_NAME_CHARS]
    if long:
        raise ValueError(f"{kind} in {where} has a name of {len(long[0])} characters ({long[0][:40]!r}...); "
                         f"expected at most {MAX_NAME_CHARS}")
    dupes = sorted({n for n in out if out.count(n) > 1}) if len(set(out)) != len(out) else []
    if dupes:
        raise ValueError(f"{kind} in {where} repeats {dupes[:5]}; expected distinct names, got {list(out)!r:.200}")
    return out


def is_float(s: str) -> bool:
    """Whether ``float(s)`` parses (the number syntax of every text reader)."""
    try:
        float(s)
        return True
    except ValueError:
        return False


def _int_or_none(s: str) -> int | None:
    s = s.strip()
    if not s or len(s) > 20 or not s.lstrip("+-").isdigit():
        return None
    return int(s)


def infer_class_names(labels: Iterable[str], *, where: str) -> tuple[str, ...]:
    """Class names from the distinct label strings seen, unlabeled markers left out.

    All-integer labels are ordered by value (``"2" < "10"``), others sorted
    as strings. The labels are names: ``"10000000"`` is one class.

    Raises
    ------
    ValueError
        If no label is present (pass ``class_names=``) or there are more than
        :data:`MAX_CLASSES`.
    """
    present = {s for s in labels if s not in UNLABELED_MARKERS}
    if not present:
        raise ValueError(f"{where}: no labelled rows and no class_names given; pass class_names=")
    if len(present) > MAX_CLASSES:
        raise ValueError(f"{where} has more than {MAX_CLASSES} distinct labels; expected at most {MAX_CLASSES} "
                         "classes (pass class_names= if integer labels index a class list)")
    ints = {s: _int_or_none(s) for s in present}
    if all(v is not None for v in ints.values()):
        return tuple(sorted(present, key=lambda s: (ints[s], s)))
    return tuple(sorted(present))


class LabelCoder:
    """Map label strings to class indices (-1: unlabeled) with one rule for every reader.

    A label is unlabeled (:data:`UNLABELED_MARKERS`), a name in
    ``class_names``, or an integer index ``0 <= i < K`` into it.
    """

    def __init__(self, class_names: Sequence[str], *, where: str) -> None:
        self.class_names = tuple(class_names)
        self.where = where
        self.lookup = {c: i for i, c in enumerate(self.class_names)}

    def code(self, s: str, row: int | str) -> int:
        """The class index of one stripped label string; ``row`` goes in the error message."""
        if s in UNLABELED_MARKERS:
            return -1
        i = self.lookup.get(s)
        if i is not None:
            return i
        k = _int_or_none(s)
        if k is not None and 0 <= k < len(self.class_names):
            return k
        raise ValueError(f"{self.where} row {row}: label {s[:60]!r} is not in the class list "
                         f"{list(self.class_names)!r:.300} (nor an index 0..{len(self.class_names) - 1} into it)")

    def codes(self, labels: Sequence[str], rows: Sequence[int]) -> np.ndarray:
        """Class indices of stripped label strings, shape (n,) int64."""
        cache: dict[str, int] = {}
        out = np.empty(len(labels), dtype=np.int64)
        for j, s in enumerate(labels):
            c = cache.get(s)
            if c is None:
                c = cache[s] = self.code(s, rows[j])
            out[j] = c
        return out


def infer_sample_rate(timestamps: np.ndarray, *, where: str) -> float:
    """``1 / median(diff(t))`` over the timestamps given (the first :data:`RATE_INFERENCE_ROWS` of a file).

    Raises
    ------
    ValueError
        With fewer than 2 timestamps, or if the result is outside :data:`SAMPLE_RATE_RANGE_HZ`.
    """
    t = np.asarray(timestamps, dtype=np.float64)
    if t.size < 2:
        raise ValueError(f"{where} has {t.size} data rows; expected at least 2 to infer the sample rate "
                         "(or pass sample_rate_hz=)")
    with np.errstate(over="ignore", invalid="ignore"):
        med = float(np.median(np.diff(t)))
        fs = 1.0 / med if med > 0 else float("nan")
    return check_sample_rate(fs, where=where, inferred=True)


def find_gaps(dt: np.ndarray, sample_rate_hz: float) -> tuple[np.ndarray, list[int]]:
    """Gaps among timestamp intervals ``dt`` (seconds): indices ``g`` with ``dt[g] > GAP_FACTOR / fs``.

    Returns the indices and, per gap, the missing samples ``max(round(dt * fs) - 1, 1)``.
    ``dt`` must be finite and positive.
    """
    gaps = np.flatnonzero(dt > GAP_FACTOR / sample_rate_hz)
    missing = [max(int(round(float(dt[g]) * sample_rate_hz)) - 1, 1) for g in gaps.tolist()]
    return gaps, missing


@contextmanager
def reading(where: str, path: str):
    """Give every error raised while reading ``path`` a documented type and the file's name.

    ``ValueError`` / ``FileNotFoundError`` that already name the file pass
    through; others get ``where`` prefixed. Any other exception a malformed
    file provokes in a library (``csv.Error``, ``zipfile.BadZipFile``,
    ``zlib.error``, ``OverflowError``, ``UnicodeDecodeError`` ...) becomes a
    ``ValueError`` naming the file and the original error.
    """
    try:
        yield
    except FileNotFoundError as e:
        if path in str(e):
            raise
        raise FileNotFoundError(f"{where}: {e}") from e
    except UnicodeDecodeError as e:
        raise ValueError(f"{where} is not UTF-8 text ({e.reason}: byte {e.object[e.start:e.start + 1]!r}); "
                         "expected a UTF-8 file (re-save it as UTF-8; Latin-1/CP-1252 files are not accepted)") \
            from e
    except ValueError as e:
        if path in str(e):
            raise
        raise ValueError(f"{where}: {e}") from e
    except MemoryError:
        raise
    except Exception as e:  # library errors on malformed bytes: csv.Error, BadZipFile, zlib.error, OverflowError
        raise ValueError(f"{where} could not be read ({type(e).__name__}: {str(e)[:200]}); the file is "
                         "malformed or corrupt") from e


# --------------------------------------------------------------------------- Recording


def check_gaps(gaps, n_samples: int, where: str) -> tuple[tuple[int, int], ...]:
    """Require ``(sample index, missing samples)`` pairs with increasing indices in 1..S-1 and >= 1 missing."""
    out = []
    prev = 0
    for g in gaps:
        try:
            at, missing = (int(x) for x in g)
        except (TypeError, ValueError):
            raise ValueError(f"gaps in {where} must be (sample index, missing samples) pairs, got {g!r}") from None
        if not (prev < at < n_samples) or missing < 1:
            raise ValueError(f"gaps in {where} has ({at}, {missing}); expected increasing sample indices in "
                             f"1..{n_samples - 1} and at least 1 missing sample")
        out.append((at, missing))
        prev = at
    return tuple(out)


@dataclass(frozen=True, eq=False)
class Recording:
    """One labelled sensor stream of one user.

    Parameters
    ----------
    values : np.ndarray
        Array of shape (S, C), S >= 1, C >= 1, real (float/int, cast to
        float32): S samples of C channels in physical units (accelerometer
        in g or m/s^2, gyroscope in rad/s). Complex, structured, string and
        object arrays are rejected.
    labels : np.ndarray
        Array of shape (S,), int64: class index in ``[0, K)`` per sample, -1 for
        unlabeled samples.
    sample_rate_hz : float
        Sampling rate in Hz, in :data:`SAMPLE_RATE_RANGE_HZ` ([0.001, 100000]).
    channels : tuple of str
        C distinct, non-empty channel names.
    class_names : tuple of str
        K distinct, non-empty class names (1 <= K <= :data:`MAX_CLASSES`); ``labels`` index into it.
    user : str
        User (subject) identifier.
    name : str
        Human-readable identifier of this recording (file name or data set key).
    meta : dict
        Free-form metadata (for the watch data: ``{"side": 0 or 1}``; a CSV
        whose cut-off last row was dropped: ``{"dropped_rows": 1}``). Two keys
        have a meaning: ``"units"`` (a channel -> unit mapping) and
        ``"gravity"`` (True: the accelerometer includes gravity, as a raw
        watch or phone accelerometer records it; False: gravity removed,
        "linear acceleration"; absent or None: unknown), see
        :func:`declared_gravity`.
    gaps : tuple of (int, int)
        Gaps in time found by the reader: ``(i, m)`` means ``m`` samples are
        missing before sample ``i`` (0 < i < S, increasing). Empty for a
        contiguous recording. :class:`RecordingStream` yields them as
        ``gap_before``, so :func:`imutune.runtime.replay.replay` applies the
        same gap policy as a replay of the file as a stream.

    Raises
    ------
    ValueError
        If shapes disagree, S or C is 0, values are not real and finite,
        labels fall outside the class list, names are empty or repeat, the
        sample rate is outside the accepted range, or a gap is malformed.
        The message names the recording.
    """

    values: np.ndarray
    labels: np.ndarray
    sample_rate_hz: float
    channels: tuple[str, ...]
    class_names: tuple[str, ...]
    user: str
    name: str = ""
    meta: dict = field(default_factory=dict)
    gaps: tuple[tuple[int, int], ...] = ()

    def __post_init__(self) -> None:
        where = f"recording {self.name or self.user!r}"
        values = V.check_array_2d("values", self.values, where=where)
        if values.dtype.kind not in "fiu":
            raise ValueError(f"values in {where} has dtype {values.dtype}; expected real numbers (float or int), "
                             "not complex, bool, string, structured or object data")
        if values.shape[0] == 0 or values.shape[1] == 0:
            raise ValueError(f"values in {where} has shape {values.shape}; expected at least 1 sample and "
                             "1 channel")
        values = np.ascontiguousarray(values, dtype=np.float32)
        V.check_finite_array("values", values, where=where)
        sample_rate_hz = check_sample_rate(self.sample_rate_hz, where=where)
        channels = check_names("channels", self.channels, where=where, limit=MAX_CHANNELS)
        if len(channels) != values.shape[1]:
            raise ValueError(f"channels in {where} has {len(channels)} names {list(channels)}, "
                             f"but values has {values.shape[1]} columns")
        if isinstance(self.class_names, (list, tuple)) and len(self.class_names) == 0:
            raise ValueError(f"class_names in {where} is empty; expected at least one class")
        class_names = check_names("class_names", self.class_names, where=where, limit=MAX_CLASSES)
        labels = V.check_labels("labels", self.labels, len(class_names), where=where)
        if labels.shape[0] != values.shape[0]:
            raise ValueError(f"labels in {where} has {labels.shape[0]} samples, values has "
                             f"{values.shape[0]}; expected one label per sample")
        object.__setattr__(self, "values", values)
        object.__setattr__(self, "labels", labels)
        object.__setattr__(self, "sample_rate_hz", sample_rate_hz)
        object.__setattr__(self, "channels", channels)
        object.__setattr__(self, "class_names", class_names)
        object.__setattr__(self, "user", str(self.user))
        object.__setattr__(self, "gaps", check_gaps(self.gaps, values.shape[0], where))

    @property
    def n_samples(self) -> int:
        """Number of samples S."""
        return int(self.values.shape[0])

    @property
    def duration_s(self) -> float:
        """Length in seconds (samples present; gaps not counted)."""
        return self.n_samples / self.sample_rate_hz

    def with_classes(self, class_names: Sequence[str]) -> "Recording":
        """Return a copy whose labels index ``class_names`` (matched by name; unlabeled -1 kept).

        Raises
        ------
        ValueError
            If a class of this recording is not in ``class_names``.
        """
        target = tuple(class_names)
        if target == self.class_names:
            return self
        missing = [c for c in self.class_names if c not in target]
        if missing:
            raise ValueError(f"recording {self.name or self.user!r} has classes {missing} that are not among "
                             f"{list(target)}")
        lookup = np.array([-1] + [target.index(c) for c in self.class_names], dtype=np.int64)
        return Recording(self.values, lookup[self.labels + 1], self.sample_rate_hz, self.channels, target,
                         self.user, self.name, dict(self.meta), gaps=self.gaps)

    def select_channels(self, names: Sequence[str]) -> "Recording":
        """Return a copy with only ``names``, in that order (gaps kept).

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
                         self.class_names, self.user, self.name, dict(self.meta), self.gaps)


def parse_gravity(value, *, where: str) -> bool | None:
    """A gravity declaration: True / False / None, numpy booleans, or the strings ``"included"`` /
    ``"removed"`` (also ``"true"`` / ``"false"``, ``"unknown"``; as ``--gravity`` takes them).

    Raises
    ------
    ValueError
        For anything else; the message names ``where`` and the accepted values.
    """
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, str):
        v = value.strip().lower()
        if v in ("included", "true", "with", "yes"):
            return True
        if v in ("removed", "false", "without", "no", "linear"):
            return False
        if v in ("unknown", "none", ""):
            return None
    raise ValueError(f"gravity of {where} is {value!r}; expected True / 'included' (the accelerometer includes "
                     "gravity), False / 'removed' (gravity removed, linear acceleration) or None / 'unknown'")


def declared_gravity(recording: "Recording") -> bool | None:
    """Whether ``recording`` declares its accelerometer with gravity (``meta["gravity"]``); None: unknown.

    Raises
    ------
    ValueError
        If ``meta["gravity"]`` is not a gravity declaration (:func:`parse_gravity`); the message names the
        recording.
    """
    meta = recording.meta if isinstance(recording.meta, dict) else {}
    return parse_gravity(meta.get("gravity"), where=f"recording {recording.name or recording.user!r}")


def split_at_gaps(recording: Recording) -> list[Recording]:
    """The gap-free pieces of ``recording`` (itself, if it has no gaps); piece ``k`` is named ``f"{name}_{k:03d}"``."""
    if not recording.gaps:
        return [recording]
    cuts = [0] + [at for at, _ in recording.gaps] + [recording.n_samples]
    r = recording
    return [Recording(r.values[a:b], r.labels[a:b], r.sample_rate_hz, r.channels, r.class_names, r.user,
                      f"{r.name}_{k:03d}", dict(r.meta)) for k, (a, b) in enumerate(zip(cuts[:-1], cuts[1:]))]


# --------------------------------------------------------------------------- streams


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
    where : str
        How error messages name the source (``"recording file '<path>'"``).
    dropped_rows : int
        Rows the last :meth:`blocks` pass left out (a CSV's cut-off last row); 0 otherwise.
    """

    name: str = ""
    user: str = ""
    channels: tuple[str, ...] = ()
    class_names: tuple[str, ...] = ()
    sample_rate_hz: float = 0.0
    n_samples: int | None = None
    block_samples: int = DEFAULT_BLOCK_SAMPLES
    where: str = "stream"
    dropped_rows: int = 0
    #: True when ``n_samples`` was checked against the bytes present (so it can be preallocated).
    _n_samples_verified: bool = False

    #: The file or folder errors name (``where`` must contain it); set by file readers.
    _source: str = ""

    def blocks(self) -> Iterator[StreamBlock]:
        """Yield the stream from its start, block by block (each call starts over).

        File readers implement ``_blocks``; this wrapper gives every error the
        documented types and the file's name (:func:`reading`).
        """
        with reading(self.where, self._source):
            yield from self._blocks()

    def _blocks(self) -> Iterator[StreamBlock]:  # pragma: no cover - abstract
        raise NotImplementedError

    def describe(self) -> dict:
        """JSON-ready metadata."""
        return {"name": self.name, "user": self.user, "channels": list(self.channels),
                "class_names": list(self.class_names), "sample_rate_hz": float(self.sample_rate_hz),
                "n_samples": self.n_samples, "kind": type(self).__name__}

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(name={self.name!r}, channels={list(self.channels)}, "
                f"sample_rate_hz={self.sample_rate_hz}, n_samples={self.n_samples})")


def check_block_samples(block_samples: int) -> int:
    """Require an integer >= 1."""
    return V.check_int_at_least("block_samples", block_samples, 1)


class RecordingStream(Stream):
    """An in-memory :class:`Recording` as a stream of views (no copies); its :attr:`Recording.gaps` become
    ``gap_before`` of the block after each gap."""

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
        self.block_samples = check_block_samples(block_samples)
        self.where = f"recording {self.name!r}"

    def blocks(self) -> Iterator[StreamBlock]:
        v, lab, b = self.recording.values, self.recording.labels, self.block_samples
        cuts = [0] + [at for at, _ in self.recording.gaps] + [v.shape[0]]
        missing = [0] + [m for _, m in self.recording.gaps]
        for (a, e), gap in zip(zip(cuts[:-1], cuts[1:]), missing):
            for s in range(a, e, b):
                yield StreamBlock(v[s:min(s + b, e)], lab[s:min(s + b, e)], gap if s == a else 0)


_PREALLOC_BYTES = 64 << 20


def read_stream(stream: Stream) -> Recording:
    """Read ``stream`` to its end into one :class:`Recording`: the eager loader of every format.

    Values and labels are the blocks concatenated; each ``gap_before`` becomes
    an entry of :attr:`Recording.gaps`; ``dropped_rows`` (if any) goes into
    ``meta["dropped_rows"]``. The Recording checks then apply (finite values,
    labels in the class list, at least one sample).

    Raises
    ------
    ValueError
        As the stream's reader, or if the data fail the :class:`Recording`
        checks; the message names the source (``stream.where``).
    """
    C = len(stream.channels)
    n_hint = stream.n_samples
    prealloc = n_hint is not None and (stream._n_samples_verified or n_hint * max(C, 1) * 4 <= _PREALLOC_BYTES)
    vals: list[np.ndarray] = []
    labs: list[np.ndarray] = []
    if prealloc:
        v_all = np.empty((n_hint, C), dtype=np.float32)
        l_all = np.empty(n_hint, dtype=np.int64)
    gaps: list[tuple[int, int]] = []
    n = 0
    pending_gap = 0
    for blk in stream.blocks():
        pending_gap += int(blk.gap_before)
        if blk.n == 0:
            continue
        if pending_gap and n > 0:
            gaps.append((n, pending_gap))
        pending_gap = 0
        if prealloc:
            if n + blk.n > n_hint:
                raise ValueError(f"{stream.where} yields more than the {n_hint} samples its header states")
            v_all[n:n + blk.n] = blk.values
            l_all[n:n + blk.n] = blk.labels
        else:
            vals.append(np.asarray(blk.values, dtype=np.float32))
            labs.append(np.asarray(blk.labels, dtype=np.int64))
        n += blk.n
    if n == 0:
        raise ValueError(f"{stream.where} holds 0 samples; expected at least 1")
    if prealloc:
        values, labels = v_all[:n], l_all[:n]
    else:
        values = vals[0] if len(vals) == 1 else np.concatenate(vals)
        labels = labs[0] if len(labs) == 1 else np.concatenate(labs)
    meta = dict(getattr(stream, "meta", None) or {})
    if stream.dropped_rows:
        meta["dropped_rows"] = int(stream.dropped_rows)
    try:
        return Recording(values, labels, stream.sample_rate_hz, stream.channels, stream.class_names, stream.user,
                         name=stream.name, meta=meta, gaps=tuple(gaps))
    except ValueError as e:
        raise ValueError(f"{stream.where}: {e}") from e
