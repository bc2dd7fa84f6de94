"""Mobile-side reference runtime: stream a recording through an exported model.

This is what a phone app does with an exported model and its manifest: sensor
samples arrive in small chunks, are appended to a fixed-length ring buffer,
and every ``hop_samples`` samples (once the buffer holds a full window) the
latest window is normalized with the manifest statistics, laid out as
``(1, C, T)`` and passed to the model. It is the standard sliding-window
human-activity-recognition inference loop (fixed windows with overlap; see
Banos et al., "Window Size Impact in Human Activity Recognition", Sensors
14(4), 2014), run online one window at a time instead of as an offline batch.

The replay produces the same windows as :func:`imutune.windows.window_starts`
on the (resampled, channel-selected) recording: window ``w`` covers samples
``[w * hop, w * hop + T)``, so a recording of ``S`` samples yields
``1 + (S - T) // hop`` windows, independently of the delivery chunk size.

Timing: only the ``backend.run`` call is timed as model latency; the runtime's
own work (ring-buffer pushes since the previous window, reading the window,
normalization, layout, argmax and bookkeeping) is timed separately as runtime
overhead. Ground-truth scoring and realtime sleeping are in neither.
"""
from __future__ import annotations

import io
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from . import _validation as V
from . import metrics
from ._io import write_bytes_atomic
from .manifest import Manifest
from .recordings import Recording

__all__ = ["RingBuffer", "ReplayConfig", "ReplayResult", "replay", "replay_many",
           "plot_confusion_matrix"]


# --------------------------------------------------------------------------- ring buffer

class RingBuffer:
    """Fixed-length FIFO of the most recent ``window_samples`` sensor samples.

    Storage is preallocated once; :meth:`push` writes in place and
    :meth:`latest` copies the samples in time order into a preallocated output
    array, so the steady-state loop allocates nothing.

    Parameters
    ----------
    window_samples : int
        Capacity T in samples (>= 1): the model's window length.
    n_channels : int
        Number of channels C (>= 1).

    Raises
    ------
    ValueError
        If either size is not an integer >= 1.
    """

    def __init__(self, window_samples: int, n_channels: int) -> None:
        self._T = V.check_int_at_least("window_samples", window_samples, 1)
        self._C = V.check_int_at_least("n_channels", n_channels, 1)
        self._buf = np.zeros((self._T, self._C), dtype=np.float32)  # circular storage (T, C)
        self._out = np.empty((self._T, self._C), dtype=np.float32)  # time-ordered copy (T, C)
        self._pos = 0      # row the next sample is written to (also the oldest sample once full)
        self._filled = 0   # valid rows, in [0, T]
        self._total = 0    # samples pushed since construction or reset()

    @property
    def window_samples(self) -> int:
        """Capacity T in samples."""
        return self._T

    @property
    def n_channels(self) -> int:
        """Number of channels C."""
        return self._C

    @property
    def filled(self) -> int:
        """Number of valid samples held, in ``[0, window_samples]``."""
        return self._filled

    @property
    def is_full(self) -> bool:
        """Whether a whole window is available."""
        return self._filled == self._T

    @property
    def total_pushed(self) -> int:
        """Samples pushed since construction or the last :meth:`reset`."""
        return self._total

    def reset(self) -> None:
        """Forget all samples (start of a new stream); storage is kept."""
        self._pos = 0
        self._filled = 0
        self._total = 0

    def push(self, chunk: np.ndarray) -> None:
        """Append samples, overwriting the oldest ones.

        Parameters
        ----------
        chunk : np.ndarray
            Array of shape (n, C) in time order, any real dtype (stored as
            float32); ``n`` may be 0 or larger than the capacity (then only the
            last T samples are kept). For one sample pass ``sample[None, :]``.
            Values are not checked for NaN/Inf.

        Raises
        ------
        ValueError
            If ``chunk`` is not 2-D with C columns.
        """
        a = np.asarray(chunk)
        if a.ndim != 2 or a.shape[1] != self._C:
            raise ValueError(f"chunk must have shape (n, {self._C}) (n samples of {self._C} channels), "
                             f"got shape {a.shape}; use sample[None, :] for a single sample")
        n = a.shape[0]
        if n == 0:
            return
        T = self._T
        if n >= T:
            self._buf[:] = a[n - T:]
            self._pos = 0
        else:
            first = min(n, T - self._pos)
            self._buf[self._pos:self._pos + first] = a[:first]
            rest = n - first
            if rest:
                self._buf[:rest] = a[first:]
            self._pos = (self._pos + n) % T
        self._filled = min(T, self._filled + n)
        self._total += n

    def latest(self, out: np.ndarray | None = None) -> np.ndarray:
        """The last T samples in time order (oldest first).

        Parameters
        ----------
        out : np.ndarray, optional
            Destination of shape (T, C), float32. By default an internal
            preallocated array is used: it is overwritten by the next call, so
            copy it if it must outlive that.

        Returns
        -------
        np.ndarray
            Array of shape (T, C), float32 (``out`` or the internal array).

        Raises
        ------
        ValueError
            If fewer than T samples have been pushed, or ``out`` has the wrong
            shape or dtype.
        """
        if self._filled < self._T:
            raise ValueError(f"ring buffer holds {self._filled} of {self._T} samples; a full window is "
                             "needed (check .is_full first)")
        if out is None:
            dst = self._out
        else:
            if not isinstance(out, np.ndarray) or out.shape != (self._T, self._C) or out.dtype != np.float32:
                raise ValueError(f"out must be a float32 array of shape ({self._T}, {self._C}), got "
                                 f"{getattr(out, 'dtype', type(out).__name__)} of shape {getattr(out, 'shape', None)}")
            dst = out
        p = self._pos
        dst[:self._T - p] = self._buf[p:]   # oldest samples: from the write position to the end
        dst[self._T - p:] = self._buf[:p]   # newest samples: wrapped to the front
        return dst


# --------------------------------------------------------------------------- config / result

@dataclass(frozen=True)
class ReplayConfig:
    """How a recording is streamed through the runtime."""

    chunk_samples: int = 1            # samples per sensor delivery (1 = sample by sample), at the manifest rate
    realtime: bool = False            # pace deliveries at the sample rate (wall clock), else as fast as possible
    num_threads: int = 1              # intra-op threads, used only when the backend is given as a file path
    max_windows: int | None = None    # stop after this many windows (per stream in replay, in total in replay_many)

    def __post_init__(self) -> None:
        V.check_int_at_least("chunk_samples", self.chunk_samples, 1)
        V.check_int_at_least("num_threads", self.num_threads, 1)
        if self.max_windows is not None:
            V.check_int_at_least("max_windows", self.max_windows, 1)
        if not isinstance(self.realtime, (bool, np.bool_)):
            raise ValueError(f"realtime must be a bool, got {self.realtime!r}")


@dataclass(frozen=True, eq=False)
class ReplayResult:
    """Per-window outcome of one replayed stream.

    Attributes
    ----------
    predictions : np.ndarray
        Array of shape (W,), int64: argmax class index per window.
    true_labels : np.ndarray
        Array of shape (W,), int64: majority label of the window's labelled
        samples (in the manifest's class order; ties go to the lower index),
        -1 for windows without labelled samples (counted, not scored).
    window_ends : np.ndarray
        Array of shape (W,), int64: exclusive end sample index of each window
        at the manifest rate; window ``w`` covers ``[end - T, end)``.
    latencies_ms : np.ndarray
        Array of shape (W,), float64: wall time of the ``backend.run`` call in ms.
    runtime_overhead_ms : np.ndarray
        Array of shape (W,), float64: the runtime's own work per window in ms
        (buffer pushes since the previous window, window read, normalization,
        layout, argmax, bookkeeping).
    deadline_misses : int
        Windows with ``latency_ms > hop_period_ms`` (inference slower than the
        arrival of the next hop, so a realtime app would fall behind).
    hop_period_ms : float
        Hop length in ms at the manifest rate: the per-window deadline.
    class_names : tuple of str
        The manifest's K class names.
    backend_name : str
        ``backend.name`` (or the backend's type name).
    num_threads : int
        ``backend.num_threads`` (or the config's when the backend has none).
    resampled : bool
        Whether the recording was resampled to the manifest rate first.
    realtime : bool
        Whether deliveries were paced at the sample rate.
    chunk_samples : int
        Samples per delivery.
    late_windows : int or None
        Realtime mode only: windows whose result was ready after the sample
        completing the next window had arrived (wall clock, so delivery
        batching counts too); None when not realtime.
    wall_time_s : float
        Wall time of the whole replay loop in seconds.
    recording : str
        Name (or user) of the replayed recording.
    """

    predictions: np.ndarray
    true_labels: np.ndarray
    window_ends: np.ndarray
    latencies_ms: np.ndarray
    runtime_overhead_ms: np.ndarray
    deadline_misses: int
    hop_period_ms: float
    class_names: tuple[str, ...]
    backend_name: str
    num_threads: int
    resampled: bool
    realtime: bool
    chunk_samples: int
    late_windows: int | None
    wall_time_s: float
    recording: str = ""

    @property
    def n_windows(self) -> int:
        """Number of windows W."""
        return int(self.predictions.shape[0])

    def summary(self) -> dict:
        """JSON-ready summary.

        Returns
        -------
        dict
            ``accuracy`` and ``macro_f1`` over scored windows (None if none),
            ``confusion_matrix`` (K x K list of lists, rows true classes),
            ``latency_ms`` and ``runtime_overhead_ms`` (see
            :func:`imutune.metrics.latency_summary`; None without windows),
            ``n_windows``, ``n_scored``, ``deadline_misses``, ``late_windows``,
            ``hop_period_ms``, ``resampled``, ``backend``, ``num_threads``,
            ``realtime``, ``chunk_samples``, ``class_names``, ``wall_time_s``.
        """
        return _summarize(self.predictions, self.true_labels, self.latencies_ms, self.runtime_overhead_ms,
                          class_names=self.class_names, hop_period_ms=self.hop_period_ms,
                          deadline_misses=self.deadline_misses, late_windows=self.late_windows,
                          resampled=self.resampled, backend_name=self.backend_name,
                          num_threads=self.num_threads, realtime=self.realtime,
                          chunk_samples=self.chunk_samples, wall_time_s=self.wall_time_s)


def _summarize(pred: np.ndarray, true: np.ndarray, lat: np.ndarray, ovh: np.ndarray, *,
               class_names: tuple[str, ...], hop_period_ms: float, deadline_misses: int,
               late_windows: int | None, resampled: bool, backend_name: str, num_threads: int,
               realtime: bool, chunk_samples: int, wall_time_s: float) -> dict:
    K = len(class_names)
    scored = true >= 0
    n_scored = int(scored.sum())
    if n_scored:
        acc = metrics.accuracy(true[scored], pred[scored])
        f1 = metrics.macro_f1(true[scored], pred[scored], num_classes=K)
        cm = metrics.confusion_matrix(true[scored], pred[scored], K)
    else:
        acc, f1, cm = None, None, np.zeros((K, K), dtype=np.int64)
    n = int(pred.shape[0])
    return {
        "accuracy": acc,
        "macro_f1": f1,
        "confusion_matrix": cm.tolist(),
        "latency_ms": metrics.latency_summary(lat) if n else None,
        "runtime_overhead_ms": metrics.latency_summary(ovh) if n else None,
        "n_windows": n,
        "n_scored": n_scored,
        "deadline_misses": int(deadline_misses),
        "late_windows": None if late_windows is None else int(late_windows),
        "hop_period_ms": float(hop_period_ms),
        "resampled": bool(resampled),
        "backend": backend_name,
        "num_threads": int(num_threads),
        "realtime": bool(realtime),
        "chunk_samples": int(chunk_samples),
        "class_names": list(class_names),
        "wall_time_s": float(wall_time_s),
    }


# --------------------------------------------------------------------------- replay

def _rec_id(rec: Recording) -> str:
    return rec.name or rec.user


def _prepare(recording: Recording, manifest: Manifest) -> tuple[Recording, bool]:
    """Select channels, map labels to the manifest's classes and resample to its rate."""
    from .windows import resample_recording

    if not isinstance(recording, Recording):
        raise ValueError(f"recording must be an imutune Recording, got {type(recording).__name__}")
    rid = _rec_id(recording)
    missing = [c for c in manifest.channels if c not in recording.channels]
    if missing:
        raise ValueError(f"recording {rid!r} lacks channels {missing} required by the manifest; it has "
                         f"{list(recording.channels)}, the manifest expects {list(manifest.channels)}")
    idx = [recording.channels.index(c) for c in manifest.channels]
    values = recording.values[:, idx]                                   # (S, C_rec) -> (S, C) manifest order
    labels = recording.labels
    if tuple(recording.class_names) != tuple(manifest.class_names):
        # Map by name; classes the manifest lacks are fine only if no sample carries them.
        lookup = {c: i for i, c in enumerate(manifest.class_names)}
        mapping = np.array([lookup.get(c, -2) for c in recording.class_names], dtype=np.int64)
        mapped = np.where(labels >= 0, mapping[np.maximum(labels, 0)], -1)
        bad = mapped == -2
        if bad.any():
            unknown = sorted({recording.class_names[int(k)] for k in labels[bad]})
            raise ValueError(f"recording {rid!r} has labels {unknown} that are not in the manifest's class "
                             f"list {list(manifest.class_names)}")
        labels = mapped
    rec = Recording(values, labels, recording.sample_rate_hz, tuple(manifest.channels),
                    tuple(manifest.class_names), recording.user, recording.name, dict(recording.meta))
    resampled = not np.isclose(rec.sample_rate_hz, manifest.sample_rate_hz, rtol=1e-9)
    if resampled:
        rec = resample_recording(rec, manifest.sample_rate_hz)
    return rec, bool(resampled)


def _resolve_backend(backend: Any, manifest: Manifest, config: ReplayConfig) -> Any:
    if isinstance(backend, (str, os.PathLike)):
        from .backends import load_backend

        return load_backend(backend, manifest=manifest, num_threads=config.num_threads)
    if not callable(getattr(backend, "run", None)):
        raise ValueError(f"backend must have a run(x) method or be a model file path, got {type(backend).__name__}")
    return backend


def _backend_info(backend: Any, config: ReplayConfig) -> tuple[str, int]:
    name = str(getattr(backend, "name", type(backend).__name__))
    threads = getattr(backend, "num_threads", None)
    return name, int(threads) if threads is not None else int(config.num_threads)


def _sleep_until(target: float) -> None:
    while True:
        remaining = target - time.perf_counter()
        if remaining <= 0:
            return
        time.sleep(remaining)


def _check_manifest(manifest: Manifest) -> None:
    if not isinstance(manifest, Manifest):
        raise ValueError(f"manifest must be an imutune Manifest, got {type(manifest).__name__}")
    if manifest.input_layout != "NCT":
        raise ValueError(f"manifest input_layout is {manifest.input_layout!r}; this runtime feeds (1, C, T) "
                         "windows and needs 'NCT'")
    if manifest.window_samples < 1:
        raise ValueError(f"manifest window of {manifest.window_s} s at {manifest.sample_rate_hz} Hz is "
                         f"{manifest.window_samples} samples; expected at least 1")


def _stream(rec: Recording, backend: Any, manifest: Manifest, config: ReplayConfig, *,
            resampled: bool, max_windows: int | None) -> ReplayResult:
    """Replay one prepared stream (manifest channels, classes and rate)."""
    T, H = manifest.window_samples, manifest.hop_samples
    C, K = len(manifest.channels), len(manifest.class_names)
    S = rec.n_samples
    fs = manifest.sample_rate_hz
    hop_period_ms = H / fs * 1e3
    name, threads = _backend_info(backend, config)
    n_expected = 0 if S < T else 1 + (S - T) // H
    if max_windows is not None:
        n_expected = min(n_expected, max_windows)

    preds = np.empty(n_expected, dtype=np.int64)
    trues = np.empty(n_expected, dtype=np.int64)
    ends = np.empty(n_expected, dtype=np.int64)
    lat = np.empty(n_expected, dtype=np.float64)
    ovh = np.empty(n_expected, dtype=np.float64)
    ring = RingBuffer(T, C)
    x_in = np.empty((1, C, T), dtype=np.float32)   # model input, reused every window
    values, labels = rec.values, rec.labels
    chunk = config.chunk_samples
    late = 0
    clock = time.perf_counter

    w = 0
    pos = 0              # next sample index to deliver
    next_end = T         # exclusive end of the next window
    pending_s = 0.0      # push time accumulated since the previous window
    t0 = clock()
    while pos < S and w < n_expected:
        chunk_end = min(pos + chunk, S)
        if config.realtime:
            # Sample i is available at t0 + (i + 1) / fs; a delivery comes with its last sample.
            _sleep_until(t0 + chunk_end / fs)
        # Split the delivery at window ends so every window is evaluated exactly
        # when its last sample is in the buffer, whatever the chunk size.
        while pos < chunk_end:
            piece_end = min(chunk_end, next_end)
            ta = clock()
            ring.push(values[pos:piece_end])
            pending_s += clock() - ta
            pos = piece_end
            if pos != next_end:
                continue
            ta = clock()
            win = ring.latest()                         # (T, C), time order, internal buffer
            xn = manifest.normalize(win)                # (T, C), float32, (x - mean) / std
            x_in[0] = xn.T                              # (T, C) -> (1, C, T)
            tb = clock()
            logits = backend.run(x_in)
            tc = clock()
            logits = np.asarray(logits)
            if logits.shape != (1, K):
                raise ValueError(f"backend {name!r} returned logits of shape {logits.shape} for a (1, {C}, {T}) "
                                 f"window; expected (1, {K}) for the manifest's {K} classes")
            if not np.all(np.isfinite(logits)):
                raise ValueError(f"backend {name!r} returned non-finite logits {logits[0].tolist()} for the window "
                                 f"ending at sample {next_end} of recording {_rec_id(rec)!r}")
            preds[w] = int(np.argmax(logits[0]))
            ends[w] = next_end
            td = clock()
            lat[w] = (tc - tb) * 1e3
            ovh[w] = (pending_s + (tb - ta) + (td - tc)) * 1e3
            pending_s = 0.0
            if config.realtime and td > t0 + (next_end + H) / fs:
                late += 1
            # Ground truth (harness only, untimed): majority of the labelled samples.
            lw = labels[next_end - T:next_end]
            lw = lw[lw >= 0]
            trues[w] = int(np.bincount(lw, minlength=K).argmax()) if lw.size else -1
            w += 1
            next_end += H
            if w >= n_expected:
                break
    wall = clock() - t0
    return ReplayResult(
        predictions=preds[:w], true_labels=trues[:w], window_ends=ends[:w], latencies_ms=lat[:w],
        runtime_overhead_ms=ovh[:w], deadline_misses=int(np.sum(lat[:w] > hop_period_ms)),
        hop_period_ms=float(hop_period_ms), class_names=tuple(manifest.class_names), backend_name=name,
        num_threads=threads, resampled=resampled, realtime=bool(config.realtime),
        chunk_samples=int(chunk), late_windows=late if config.realtime else None, wall_time_s=float(wall),
        recording=_rec_id(rec))


def replay(recording: Recording, backend: Any, manifest: Manifest, *,
           config: ReplayConfig = ReplayConfig()) -> ReplayResult:
    """Stream one recording through the runtime, as a phone app would.

    Steps: channels are selected by name in the manifest's order; labels are
    mapped to the manifest's class list by name; a recording at another
    sample rate is first resampled (offline, whole stream) to the manifest
    rate with :func:`imutune.windows.resample_recording` (polyphase filter for
    values, nearest sample for labels) and ``resampled`` is set in the result
    -- on a phone this corresponds to requesting the manifest rate from the
    sensor API or resampling in the sensor pipeline. Samples are then
    delivered ``config.chunk_samples`` at a time into a :class:`RingBuffer`;
    at every window end (``T``, ``T + hop``, ...) the window is normalized
    with ``manifest.normalize``, laid out as (1, C, T) float32 and passed to
    ``backend.run``, and the argmax is the prediction.

    Parameters
    ----------
    recording : Recording
        The stream: values (S, C_rec) float32 in physical units, labels (S,)
        int64 (-1 unlabeled).
    backend : object or path-like
        Anything with ``run(x: (N, C, T) float32) -> logits (N, K)`` (and
        optionally ``name`` / ``num_threads``), or a model file path loaded
        with :func:`imutune.backends.load_backend` using
        ``config.num_threads``. The input array is reused between calls; the
        backend must not keep a reference to it.
    manifest : Manifest
        Channels, classes, sample rate, window/hop and normalization.
    config : ReplayConfig
        Delivery chunk size, realtime pacing, threads, window cap.

    Returns
    -------
    ReplayResult
        ``1 + (S' - T) // hop`` windows (``S'`` samples after resampling),
        capped by ``config.max_windows``.

    Raises
    ------
    ValueError
        If the recording lacks a manifest channel (the message names the
        recording, its channels and the expected ones), carries labels of a
        class the manifest does not list, is shorter than one window, or the
        backend returns logits of the wrong shape or non-finite logits.
    """
    _check_manifest(manifest)
    backend = _resolve_backend(backend, manifest, config)
    rec, resampled = _prepare(recording, manifest)
    if rec.n_samples < manifest.window_samples:
        raise ValueError(f"recording {_rec_id(recording)!r} has {rec.n_samples} samples at "
                         f"{manifest.sample_rate_hz} Hz; one window needs {manifest.window_samples}")
    return _stream(rec, backend, manifest, config, resampled=resampled, max_windows=config.max_windows)


def replay_many(recordings: Sequence[Recording], backend: Any, manifest: Manifest, *,
                config: ReplayConfig = ReplayConfig()) -> dict:
    """Replay several recordings, each as its own stream, and summarize them together.

    The ring buffer starts empty for every recording (no window spans two
    recordings). Recordings shorter than one window are skipped and listed.
    ``config.max_windows`` caps the total number of windows; replay stops
    once it is reached.

    Parameters
    ----------
    recordings : sequence of Recording
        The streams.
    backend : object or path-like
        As in :func:`replay`; a path is loaded once.
    manifest : Manifest
        As in :func:`replay`.
    config : ReplayConfig
        As in :func:`replay`.

    Returns
    -------
    dict
        :meth:`ReplayResult.summary` keys over all windows of all streams
        (``resampled`` is True if any recording was resampled;
        ``wall_time_s`` is summed), plus ``n_recordings`` (replayed),
        ``n_resampled``, ``skipped_recordings`` (names shorter than a window
        or not reached before the window cap) and ``per_recording`` (list of
        ``{"recording", "n_windows", "n_scored", "accuracy", "resampled"}``).

    Raises
    ------
    ValueError
        If ``recordings`` is empty, any recording fails the checks of
        :func:`replay` (channels, classes), or no recording yields a window.
    """
    recordings = list(recordings)
    if not recordings:
        raise ValueError("recordings is empty; expected at least one Recording")
    _check_manifest(manifest)
    backend = _resolve_backend(backend, manifest, config)
    # Check every recording before streaming any, so a bad one fails fast.
    prepared = [_prepare(r, manifest) for r in recordings]
    results: list[ReplayResult] = []
    skipped: list[str] = []
    remaining = config.max_windows
    for orig, (rec, resampled) in zip(recordings, prepared):
        if rec.n_samples < manifest.window_samples or (remaining is not None and remaining <= 0):
            skipped.append(_rec_id(orig))
            continue
        res = _stream(rec, backend, manifest, config, resampled=resampled, max_windows=remaining)
        results.append(res)
        if remaining is not None:
            remaining -= res.n_windows
    if not results or sum(r.n_windows for r in results) == 0:
        raise ValueError(f"none of the {len(recordings)} recordings is at least one window "
                         f"({manifest.window_samples} samples at {manifest.sample_rate_hz} Hz) long")
    name, threads = _backend_info(backend, config)
    cat = lambda attr: np.concatenate([getattr(r, attr) for r in results])  # noqa: E731
    out = _summarize(cat("predictions"), cat("true_labels"), cat("latencies_ms"), cat("runtime_overhead_ms"),
                     class_names=tuple(manifest.class_names), hop_period_ms=results[0].hop_period_ms,
                     deadline_misses=sum(r.deadline_misses for r in results),
                     late_windows=sum(r.late_windows for r in results) if config.realtime else None,
                     resampled=any(r.resampled for r in results), backend_name=name, num_threads=threads,
                     realtime=bool(config.realtime), chunk_samples=config.chunk_samples,
                     wall_time_s=sum(r.wall_time_s for r in results))
    per = []
    for r in results:
        s = r.true_labels >= 0
        per.append({"recording": r.recording, "n_windows": r.n_windows, "n_scored": int(s.sum()),
                    "accuracy": metrics.accuracy(r.true_labels[s], r.predictions[s]) if s.any() else None,
                    "resampled": r.resampled})
    out.update(n_recordings=len(results), n_resampled=sum(r.resampled for r in results),
               skipped_recordings=skipped, per_recording=per)
    return out


# --------------------------------------------------------------------------- plotting

def plot_confusion_matrix(cm: np.ndarray | Sequence[Sequence[int]], class_names: Sequence[str],
                          path: str | os.PathLike, *, title: str = "") -> Path:
    """Write a confusion-matrix heat map as a PNG, atomically.

    Rendered with matplotlib's Agg canvas (no display, no pyplot state) into
    memory and written with :func:`imutune._io.write_bytes_atomic`. Cells show
    counts; colours are row-normalized (per-class recall) so rare classes stay
    visible.

    Parameters
    ----------
    cm : array-like
        Shape (K, K), non-negative counts; rows are true classes, columns
        predictions (as in ``summary()["confusion_matrix"]``).
    class_names : sequence of str
        K class names.
    path : path-like
        Destination ``.png`` file.
    title : str, optional
        Figure title.

    Returns
    -------
    Path
        ``path``.

    Raises
    ------
    ValueError
        If ``cm`` is not square, does not match ``class_names``, or has
        negative or non-finite entries.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    m = np.asarray(cm, dtype=np.float64)
    names = [str(c) for c in class_names]
    if m.ndim != 2 or m.shape[0] != m.shape[1]:
        raise ValueError(f"cm must be a square (K, K) matrix, got shape {m.shape}")
    if m.shape[0] != len(names):
        raise ValueError(f"cm is {m.shape[0]}x{m.shape[1]} but class_names has {len(names)} names")
    if m.size and (not np.all(np.isfinite(m)) or m.min() < 0):
        raise ValueError("cm must hold finite, non-negative counts")
    K = len(names)
    row = m.sum(axis=1, keepdims=True)
    frac = np.divide(m, row, out=np.zeros_like(m), where=row > 0)
    side = max(4.0, 0.6 * K + 2.5)
    fig = Figure(figsize=(side + 1.0, side), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    im = ax.imshow(frac, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of true class")
    ax.set_xticks(range(K))
    ax.set_yticks(range(K))
    ax.set_xticklabels(names, rotation=45, ha="right")
    ax.set_yticklabels(names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(K):
        for j in range(K):
            v = m[i, j]
            txt = str(int(v)) if float(v).is_integer() else f"{v:.2g}"
            ax.text(j, i, txt, ha="center", va="center", fontsize=8,
                    color="white" if frac[i, j] > 0.5 else "black")
    if title:
        ax.set_title(title)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return write_bytes_atomic(path, buf.getvalue())
