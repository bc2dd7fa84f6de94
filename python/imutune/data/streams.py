"""Open any recording path as a :class:`~imutune.data.recording.Stream`, and resample streams.

Streams replay arbitrarily long recordings in constant memory: a stream
describes one recording (name, user, channels, classes, sample rate, length
if known) and yields it as blocks of at most ``block_samples`` samples,
reading the file as it goes. :func:`imutune.runtime.replay.replay_stream`
consumes them. Each format's one parser lives in its module:
:class:`~imutune.data.npz.NpzStream`, :class:`~imutune.data.csv.CsvStream`,
:class:`~imutune.data.shl2018.Shl2018Stream`;
:class:`~imutune.data.recording.RecordingStream` wraps an in-memory
recording. This module dispatches a path to its reader
(:func:`open_stream`, :func:`open_streams`) and is the namespace of the
stream API (it exports the names it had before the per-format split).

Values are passed through as read: NaN/Inf samples reach the runtime, which
repairs or rejects them (``ReplayConfig.nan_policy``). Labels are class
indices into ``class_names`` (-1: unlabeled).

:class:`StreamResampler` is the streaming form of
:func:`imutune.signal.windows.resample` (the same polyphase filter as
``scipy.signal.resample_poly`` with zero padding at both ends, so its output
equals the offline resampling of the whole stream up to float rounding).
"""
from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path

import numpy as np

from .. import _validation as V
from .csv import CsvStream
from .npz import NpzStream, NpzStreamWriter
from .recording import DEFAULT_BLOCK_SAMPLES, Recording, RecordingStream, Stream, StreamBlock
from .shl2018 import SHL_LABEL_FILE, Shl2018Stream

__all__ = ["StreamBlock", "Stream", "RecordingStream", "NpzStream", "CsvStream", "Shl2018Stream",
           "NpzStreamWriter", "StreamResampler", "open_stream", "open_streams", "DEFAULT_BLOCK_SAMPLES"]


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
        if (p / SHL_LABEL_FILE).is_file():
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
    if p.is_dir() and not (p / SHL_LABEL_FILE).is_file():
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
    up / down`` (as :func:`imutune.signal.windows.resample`); the filter is
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
