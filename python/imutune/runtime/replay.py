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

Streams: :func:`replay` takes an in-memory :class:`~imutune.recordings.Recording`;
:func:`replay_stream` reads a file block by block (:mod:`imutune.streams`:
generic ``.npz``, CSV, SHL-2018 layout) so a recording of any length replays
in constant memory, resampling on the fly when its rate differs from the
manifest's. Bad input is repaired or rejected per :class:`ReplayConfig`
(``nan_policy``, ``gap_policy``) and counted in the result's ``input_report``.

Device profiles (:mod:`imutune.profiles`, :meth:`ReplayConfig.from_profile`):
thread count (enforced on the backend), CPU pinning, real-time pacing at the
sensor rate and the sensor delivery size; the deadline of every window is the
hop period.

Timing: only the ``backend.run`` call is timed as model latency. The
runtime's own work -- per block: channel selection, NaN/gap repair,
resampling, normalization into channel-first layout; per delivery: the copy
into the window buffer; per window: the (1, C, T) layout copy, the logits
check, argmax and bookkeeping -- is timed separately as runtime overhead
(everything between two model calls minus what is excluded). Excluded:
reading the file (the sensor's part), mapping and scoring ground-truth
labels, memory sampling and real-time sleeping. Per window the result also
holds the segment and a causal majority vote over the last ``smoothing_k``
windows; :meth:`ReplayResult.summary` adds the real-time factor, the
overhead ratio, deadline misses and memory (RSS).
"""
from __future__ import annotations

import contextlib
import io
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .. import _validation as V
from .. import metrics
from .._io import write_bytes_atomic
from ..data.recordings import Recording
from ..deploy.manifest import Manifest
from ..signal.contract import MIN_WINDOW_SAMPLES

__all__ = ["RingBuffer", "ReplayConfig", "ReplayResult", "replay", "replay_stream", "replay_many",
           "plot_confusion_matrix", "NAN_POLICIES", "GAP_POLICIES"]


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

#: ``ReplayConfig.nan_policy`` values.
NAN_POLICIES = ("hold", "error")
#: ``ReplayConfig.gap_policy`` values.
GAP_POLICIES = ("hold", "reset", "error")


@dataclass(frozen=True)
class ReplayConfig:
    """How a recording is streamed through the runtime.

    Attributes
    ----------
    chunk_samples : int or None, default 1
        Samples per sensor delivery at the manifest rate (1: sample by
        sample). None: one delivery per hop, ending exactly at each window
        end (batched sensor events, as the phone profiles use).
    realtime : bool, default False
        Pace deliveries at the sample rate (wall clock); else as fast as possible.
    num_threads : int, default 1
        Intra-op threads for a backend given as a file path; with a
        ``profile``, a backend object must have this many threads.
    max_windows : int, optional
        Stop after this many windows (per stream in :func:`replay`, in
        total in :func:`replay_many`).
    smoothing_k : int, default 1
        Also report accuracy after a causal majority vote over the last k
        windows of a stream (1: no smoothing). Ties go to the current
        window's class, then to the lower class index.
    nan_policy : {"hold", "error"}, default "hold"
        Non-finite samples: ``"hold"`` replaces each NaN/Inf value with the
        last finite value of its channel (the channel mean, i.e. 0 after
        normalization, before any), counting repaired samples and values;
        ``"error"`` raises.
    gap_policy : {"hold", "reset", "error"}, default "hold"
        Gaps in a stream's timestamps: ``"hold"`` fills gaps of at most
        ``max_hold_gap_s`` by repeating the last sample (unlabeled) and
        treats longer ones as ``"reset"``; ``"reset"`` empties the buffer and
        starts the window sequence again after the gap (samples of the
        unfinished window are dropped and counted); ``"error"`` raises.
    max_hold_gap_s : float, default 0.25
        Longest gap ``"hold"`` fills, in seconds.
    cpu_affinity : tuple of int, optional
        Pin the process to these cores during the replay.
    profile : str, optional
        Name of the device profile the config came from (see
        :meth:`from_profile`); with it, backend thread counts are enforced.
    block_samples : int, default 8192
        Block size in which in-memory recordings are fed (file streams use
        their reader's).
    """

    chunk_samples: int | None = 1
    realtime: bool = False
    num_threads: int = 1
    max_windows: int | None = None
    smoothing_k: int = 1
    nan_policy: str = "hold"
    gap_policy: str = "hold"
    max_hold_gap_s: float = 0.25
    cpu_affinity: tuple[int, ...] | None = None
    profile: str | None = None
    block_samples: int = 8192

    def __post_init__(self) -> None:
        if self.chunk_samples is not None:
            V.check_int_at_least("chunk_samples", self.chunk_samples, 1)
        V.check_int_at_least("num_threads", self.num_threads, 1)
        if self.max_windows is not None:
            V.check_int_at_least("max_windows", self.max_windows, 1)
        if not isinstance(self.realtime, (bool, np.bool_)):
            raise ValueError(f"realtime must be a bool, got {self.realtime!r}")
        V.check_int_at_least("smoothing_k", self.smoothing_k, 1)
        V.check_choice("nan_policy", self.nan_policy, NAN_POLICIES)
        V.check_choice("gap_policy", self.gap_policy, GAP_POLICIES)
        if not (float(self.max_hold_gap_s) >= 0) or not np.isfinite(float(self.max_hold_gap_s)):
            raise ValueError(f"max_hold_gap_s must be a finite number >= 0, got {self.max_hold_gap_s!r}")
        V.check_int_at_least("block_samples", self.block_samples, 1)
        if self.cpu_affinity is not None:
            cores = tuple(int(V.check_int_at_least("core id in cpu_affinity", c, 0)) for c in self.cpu_affinity)
            if not cores:
                raise ValueError("cpu_affinity is empty; use None for no pinning")
            object.__setattr__(self, "cpu_affinity", cores)
            if self.num_threads > len(cores):
                raise ValueError(f"num_threads={self.num_threads} exceeds the {len(cores)} pinned core(s) "
                                 f"{list(cores)}")

    @classmethod
    def from_profile(cls, profile: Any, **overrides: Any) -> "ReplayConfig":
        """A config enforcing a device profile (:mod:`imutune.profiles`), checked against this host.

        Parameters
        ----------
        profile : str or DeviceProfile
            A built-in profile name or a profile.
        **overrides
            Other :class:`ReplayConfig` fields (e.g. ``realtime=False`` to
            replay a long recording quickly under the profile's threads and
            pinning, ``smoothing_k=5``).

        Raises
        ------
        ValueError
            If the profile is unknown, asks for more threads than this host
            has, or pins a core it lacks.
        """
        from .profiles import get_profile

        p = get_profile(profile).check()
        fields = dict(chunk_samples=p.chunk_samples, realtime=p.realtime, num_threads=p.num_threads,
                      cpu_affinity=p.cpu_affinity, profile=p.name)
        fields.update(overrides)
        return cls(**fields)


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
        at the manifest rate, counted from the stream's start (gaps
        included); window ``w`` covers ``[end - T, end)``.
    latencies_ms : np.ndarray
        Array of shape (W,), float64: wall time of the ``backend.run`` call in ms.
    runtime_overhead_ms : np.ndarray
        Array of shape (W,), float64: the runtime's own work per window in ms
        since the previous window: buffer pushes, input repair (NaN, gaps),
        resampling of file streams, window read, normalization, layout,
        logits check, argmax and bookkeeping. Not included: reading the
        file (the sensor's part), ground-truth scoring, memory sampling and
        real-time sleeping.
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
    chunk_samples : int or None
        Samples per delivery (None: one per hop).
    late_windows : int or None
        Realtime mode only: windows whose result was ready after the sample
        completing the next window had arrived (wall clock, so delivery
        batching counts too); None when not realtime.
    wall_time_s : float
        Wall time of the whole replay loop in seconds.
    recording : str
        Name (or user) of the replayed recording.
    smoothing_k : int
        Window count of the majority vote.
    smoothed_predictions : np.ndarray
        Array of shape (W,), int64: causal majority vote over the last
        ``smoothing_k`` windows of the same segment.
    segments : np.ndarray
        Array of shape (W,), int64: segment index of each window (a reset
        gap starts a new segment).
    input_report : dict
        Input accounting (see :func:`replay_stream`).
    stream_duration_s : float
        Length of the stream at the manifest rate, gaps included.
    memory : dict
        ``rss_start_mb``, ``rss_peak_mb`` (sampled during the replay),
        ``rss_end_mb``, ``maxrss_mb`` (process high-water mark).
    profile : str or None
        Device profile name, if the config came from one.
    cpu_affinity : tuple of int or None
        Cores the replay was pinned to.
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
    chunk_samples: int | None
    late_windows: int | None
    wall_time_s: float
    recording: str = ""
    smoothing_k: int = 1
    smoothed_predictions: np.ndarray | None = None
    segments: np.ndarray | None = None
    input_report: dict = field(default_factory=dict)
    stream_duration_s: float = 0.0
    memory: dict = field(default_factory=dict)
    profile: str | None = None
    cpu_affinity: tuple[int, ...] | None = None

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
            ``smoothed_accuracy`` / ``smoothed_macro_f1`` (majority vote over
            ``smoothing_k`` windows), ``confusion_matrix`` (K x K list of
            lists, rows true classes), ``latency_ms`` and
            ``runtime_overhead_ms`` (see :func:`imutune.metrics.latency_summary`;
            None without windows), ``runtime_overhead_ratio`` (total runtime
            work / total model time), ``realtime_factor`` (model + runtime
            time / stream duration; < 1 keeps up), ``n_windows``, ``n_scored``,
            ``deadline_misses``, ``deadline_misses_with_runtime`` (model +
            runtime time > hop period), ``late_windows``, ``hop_period_ms``,
            ``resampled``, ``backend``, ``num_threads``, ``realtime``,
            ``chunk_samples``, ``class_names``, ``wall_time_s``,
            ``stream_duration_s``, ``input`` (:attr:`input_report`),
            ``memory``, ``profile``, ``cpu_affinity``.
        """
        return _summarize([self])


def _sum_reports(reports: Sequence[dict]) -> dict:
    out: dict[str, Any] = {}
    for r in reports:
        for k, v in r.items():
            if isinstance(v, bool):
                out[k] = bool(out.get(k, False) or v)
            elif isinstance(v, (int, float)):
                out[k] = out.get(k, 0) + v
    return out


def _summarize(results: Sequence[ReplayResult]) -> dict:
    r0 = results[0]
    cat = lambda attr: np.concatenate([getattr(r, attr) for r in results])  # noqa: E731
    pred, true, lat, ovh = cat("predictions"), cat("true_labels"), cat("latencies_ms"), cat("runtime_overhead_ms")
    smooth = np.concatenate([r.smoothed_predictions if r.smoothed_predictions is not None else r.predictions
                             for r in results])
    K = len(r0.class_names)
    scored = true >= 0
    n_scored = int(scored.sum())
    if n_scored:
        acc = metrics.accuracy(true[scored], pred[scored])
        f1 = metrics.macro_f1(true[scored], pred[scored], num_classes=K)
        sacc = metrics.accuracy(true[scored], smooth[scored])
        sf1 = metrics.macro_f1(true[scored], smooth[scored], num_classes=K)
        cm = metrics.confusion_matrix(true[scored], pred[scored], K)
    else:
        acc = f1 = sacc = sf1 = None
        cm = np.zeros((K, K), dtype=np.int64)
    n = int(pred.shape[0])
    duration = float(sum(r.stream_duration_s for r in results))
    busy_s = float(lat.sum() + ovh.sum()) / 1e3
    mems = [r.memory for r in results if r.memory]
    memory = {}
    if mems:
        memory = {"rss_start_mb": mems[0].get("rss_start_mb"), "rss_end_mb": mems[-1].get("rss_end_mb"),
                  "rss_peak_mb": max(m.get("rss_peak_mb") or 0.0 for m in mems),
                  "maxrss_mb": max(m.get("maxrss_mb") or 0.0 for m in mems)}
    late = [r.late_windows for r in results]
    return {
        "accuracy": acc,
        "macro_f1": f1,
        "smoothing_k": int(r0.smoothing_k),
        "smoothed_accuracy": sacc,
        "smoothed_macro_f1": sf1,
        "confusion_matrix": cm.tolist(),
        "latency_ms": metrics.latency_summary(lat) if n else None,
        "runtime_overhead_ms": metrics.latency_summary(ovh) if n else None,
        "runtime_overhead_ratio": float(ovh.sum() / lat.sum()) if n and lat.sum() > 0 else None,
        "realtime_factor": busy_s / duration if duration > 0 else None,
        "n_windows": n,
        "n_scored": n_scored,
        "deadline_misses": int(sum(r.deadline_misses for r in results)),
        "deadline_misses_with_runtime": int(np.sum(lat + ovh > r0.hop_period_ms)),
        "late_windows": None if any(v is None for v in late) else int(sum(late)),
        "hop_period_ms": float(r0.hop_period_ms),
        "resampled": any(bool(r.resampled) for r in results),
        "backend": r0.backend_name,
        "num_threads": int(r0.num_threads),
        "realtime": bool(r0.realtime),
        "chunk_samples": None if r0.chunk_samples is None else int(r0.chunk_samples),
        "class_names": list(r0.class_names),
        "wall_time_s": float(sum(r.wall_time_s for r in results)),
        "stream_duration_s": duration,
        "input": _sum_reports([r.input_report for r in results]),
        "memory": memory,
        "profile": r0.profile,
        "cpu_affinity": None if r0.cpu_affinity is None else list(r0.cpu_affinity),
    }


# --------------------------------------------------------------------------- replay

def _rec_id(rec: Recording) -> str:
    return rec.name or rec.user


def _prepare(recording: Recording, manifest: Manifest) -> tuple[Recording, bool]:
    """Select channels, map labels to the manifest's classes and resample to its rate."""
    from ..signal.windows import resample_recording

    if not isinstance(recording, Recording):
        raise ValueError(f"recording must be an imutune Recording, got {type(recording).__name__}")
    rid = _rec_id(recording)
    _channel_index(recording.channels, manifest, rid)
    idx = [recording.channels.index(c) for c in manifest.channels]
    values = recording.values[:, idx]                                   # (S, C_rec) -> (S, C) manifest order
    labels = recording.labels
    if tuple(recording.class_names) != tuple(manifest.class_names):
        mapping = _class_mapping(recording.class_names, manifest)
        mapped = mapping[labels + 1]
        bad = mapped == -2
        if bad.any():
            unknown = sorted({recording.class_names[int(k)] for k in labels[bad]})
            raise ValueError(f"recording {rid!r} has labels {unknown} that are not in the manifest's class "
                             f"list {list(manifest.class_names)}")
        labels = mapped
    rec = Recording(values, labels, recording.sample_rate_hz, tuple(manifest.channels),
                    tuple(manifest.class_names), recording.user, recording.name, dict(recording.meta),
                    gaps=recording.gaps)
    resampled = not np.isclose(rec.sample_rate_hz, manifest.sample_rate_hz, rtol=1e-9)
    if resampled:
        rec = resample_recording(rec, manifest.sample_rate_hz)
    return rec, bool(resampled)


def _channel_index(channels: Sequence[str], manifest: Manifest, rid: str) -> list[int]:
    missing = [c for c in manifest.channels if c not in channels]
    if missing:
        raise ValueError(f"recording {rid!r} lacks channels {missing} required by the manifest; it has "
                         f"{list(channels)}, the manifest expects {list(manifest.channels)}")
    return [list(channels).index(c) for c in manifest.channels]


def _class_mapping(class_names: Sequence[str], manifest: Manifest) -> np.ndarray:
    """``mapping[label + 1]`` -> manifest class index; -1 stays -1, classes the manifest lacks -> -2."""
    lookup = {c: i for i, c in enumerate(manifest.class_names)}
    return np.array([-1] + [lookup.get(c, -2) for c in class_names], dtype=np.int64)


def _resolve_backend(backend: Any, manifest: Manifest, config: ReplayConfig) -> Any:
    if isinstance(backend, (str, os.PathLike)):
        from ..deploy.backends import load_backend

        return load_backend(backend, manifest=manifest, num_threads=config.num_threads)
    if not callable(getattr(backend, "run", None)):
        raise ValueError(f"backend must have a run(x) method or be a model file path, got {type(backend).__name__}")
    threads = getattr(backend, "num_threads", None)
    if config.profile is not None and threads is not None and int(threads) != config.num_threads:
        raise ValueError(f"backend {getattr(backend, 'name', type(backend).__name__)!r} runs {threads} threads, "
                         f"but profile {config.profile!r} allows {config.num_threads}; create it with "
                         f"num_threads={config.num_threads} (or pass the model file path)")
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
    # window and hop come from the manifest's Preprocessing, validated once where it was built: the
    # window has at least MIN_WINDOW_SAMPLES samples (the package's one rule), the hop at least 1.
    if manifest.window_samples < MIN_WINDOW_SAMPLES:   # only reachable for a hand-altered object
        raise ValueError(f"manifest window of {manifest.window_s} s at {manifest.sample_rate_hz} Hz is "
                         f"{manifest.window_samples} samples; expected at least {MIN_WINDOW_SAMPLES}")


def _rss_mb() -> float | None:
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError, AttributeError):
        return None


def _maxrss_mb() -> float | None:
    try:
        import resource
        import sys

        r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return r / 2**20 if sys.platform == "darwin" else r / 1024
    except (ImportError, OSError):
        return None


@contextlib.contextmanager
def _constraints(config: ReplayConfig, backend: Any):
    """Pin the process (config.cpu_affinity) and re-apply the backend's thread settings."""
    from .profiles import pin_process

    previous = pin_process(config.cpu_affinity) if config.cpu_affinity is not None else None
    try:
        prepare = getattr(backend, "prepare", None)
        if callable(prepare):
            prepare()
        yield
    finally:
        if previous is not None:
            pin_process(previous)


class _Clock:
    """Time the engine must not count as runtime work (file reads, label mapping)."""

    __slots__ = ("io_s", "harness_s")

    def __init__(self) -> None:
        self.io_s = 0.0
        self.harness_s = 0.0


def _new_report() -> dict:
    return {"samples_in": 0, "samples_replayed": 0, "nan_samples_repaired": 0, "nan_values_repaired": 0,
            "gaps": 0, "gap_samples_filled": 0, "gap_resets": 0, "samples_dropped": 0, "tail_samples": 0,
            "windows_capped": False, "rows_dropped": 0}


def _ffill(values: np.ndarray, bad: np.ndarray, last: np.ndarray) -> None:
    """Replace ``values[bad]`` in place with the last good value of the column (``last`` before the block)."""
    n, C = values.shape
    idx = np.where(~bad, np.arange(n)[:, None], -1)
    np.maximum.accumulate(idx, axis=0, out=idx)
    filled = np.where(idx >= 0, values[np.maximum(idx, 0), np.arange(C)[None, :]], last[None, :])
    values[bad] = filled[bad]


def _condition(stream: Any, manifest: Manifest, config: ReplayConfig, clock: _Clock, report: dict):
    """Stream events in the manifest's channels, classes and rate.

    Yields ``("data", values (n, C) float32, labels (n,) int64)`` and
    ``("reset", skipped samples at the manifest rate)``.
    """
    from ..data.streams import StreamResampler

    rid = stream.name or stream.user
    idx = _channel_index(stream.channels, manifest, rid)
    identity_channels = idx == list(range(len(stream.channels)))
    mapping = None if tuple(stream.class_names) == tuple(manifest.class_names) else \
        _class_mapping(stream.class_names, manifest)
    src_fs, fs = float(stream.sample_rate_hz), float(manifest.sample_rate_hz)
    resample = not np.isclose(src_fs, fs, rtol=1e-9)
    C = len(manifest.channels)
    resampler = StreamResampler(src_fs, fs, C) if resample else None
    max_hold = int(round(config.max_hold_gap_s * src_fs))
    last = np.asarray(manifest.norm_mean, dtype=np.float32).copy()   # last finite value per channel
    have_sample = False
    pos = 0                                                          # source samples seen (gaps included)
    perf = time.perf_counter
    blocks = stream.blocks()
    while True:
        ta = perf()
        blk = next(blocks, None)
        clock.io_s += perf() - ta
        if blk is None:
            break
        gap = int(blk.gap_before)
        if gap:
            report["gaps"] += 1
            if config.gap_policy == "error":
                raise ValueError(f"stream {rid!r} has a gap of {gap} samples ({gap / src_fs:.3f} s) before sample "
                                 f"{pos + gap}; gap_policy='error'")
            if config.gap_policy == "hold" and gap <= max_hold and have_sample:
                fill_v = np.repeat(last[None, :], gap, axis=0)
                fill_l = np.full(gap, -1, dtype=np.int64)
                report["gap_samples_filled"] += gap
                report["samples_replayed"] += gap
                if resampler is None:
                    yield ("data", fill_v, fill_l)
                else:
                    out_v, out_l = resampler.push(fill_v, fill_l)
                    if out_v.shape[0]:
                        yield ("data", out_v, out_l)
            else:
                report["gap_resets"] += 1
                if resampler is not None:
                    out_v, out_l = resampler.flush()
                    if out_v.shape[0]:
                        yield ("data", out_v, out_l)
                    resampler = StreamResampler(src_fs, fs, C)
                yield ("reset", int(round(gap * fs / src_fs)))
            pos += gap
        n = blk.n
        if n == 0:
            continue
        values = blk.values if identity_channels else blk.values[:, idx]
        values = np.array(values, dtype=np.float32, copy=True) if values is blk.values else \
            values.astype(np.float32, copy=False)
        bad = ~np.isfinite(values)
        if bad.any():
            if config.nan_policy == "error":
                r, c = (int(i) for i in np.argwhere(bad)[0])
                raise ValueError(f"stream {rid!r} has {int(bad.sum())} NaN/Inf values in samples {pos}..{pos + n - 1} "
                                 f"(first: sample {pos + r}, channel {manifest.channels[c]!r}); nan_policy='error'")
            report["nan_samples_repaired"] += int(bad.any(axis=1).sum())
            report["nan_values_repaired"] += int(bad.sum())
            _ffill(values, bad, last)
        last = values[-1].copy()
        have_sample = True
        tl = perf()
        labels = blk.labels
        if mapping is not None:
            labels = mapping[labels + 1]
            if (labels == -2).any():
                k = int(blk.labels[int(np.argmax(labels == -2))])
                raise ValueError(f"stream {rid!r} has label {stream.class_names[k]!r} (near sample {pos}) that is not "
                                 f"in the manifest's class list {list(manifest.class_names)}")
        clock.harness_s += perf() - tl
        report["samples_in"] += n
        report["samples_replayed"] += n
        pos += n
        if resampler is None:
            yield ("data", values, labels)
        else:
            out_v, out_l = resampler.push(values, labels)
            if out_v.shape[0]:
                yield ("data", out_v, out_l)
    if resampler is not None:
        out_v, out_l = resampler.flush()
        if out_v.shape[0]:
            yield ("data", out_v, out_l)


def _smooth(pred: np.ndarray, segs: np.ndarray, k: int, K: int) -> np.ndarray:
    """Causal majority vote over the last ``k`` windows of the same segment.

    Ties go to the current window's class, then to the lower class index.
    Memory: a (W, k) int16 matrix of lagged predictions, not (W, K) counts.
    """
    if k <= 1 or pred.size == 0:
        return pred.copy()
    W = pred.shape[0]
    p16 = pred.astype(np.int16)
    lagged = np.full((W, k), -1, dtype=np.int16)           # lagged[w, j] = pred[w - j] (same segment) or -1
    for j in range(k):
        same = segs[j:] == segs[:W - j]
        lagged[j:, j] = np.where(same, p16[:W - j], -1)
    best = np.zeros(W, dtype=np.int64)
    best_score = np.full(W, -1, dtype=np.int32)
    for c in range(K):
        score = 2 * (lagged == c).sum(axis=1, dtype=np.int32) + (pred == c)
        better = score > best_score
        best[better] = c
        best_score[better] = score[better]
    return best


def _engine(events, backend: Any, manifest: Manifest, config: ReplayConfig, clock: _Clock, report: dict, *,
            rid: str, resampled: bool, max_windows: int | None, n_hint: int | None,
            capture: Any = None) -> ReplayResult:
    """The online loop: deliveries -> ring buffer -> window -> model -> prediction.

    ``capture`` (optional, e.g. :class:`imutune.runtime.golden.GoldenCapture`)
    is called with every block fed (``samples(values)``), every window
    (``window(end, x, logits)``, untimed), every reset gap (``reset(skipped)``)
    and the result (``finish(result)``).

    Buffering is done per block, vectorized: each incoming block is
    normalized once into channel-first layout and joined to the last T - 1
    normalized samples of the segment (runtime work, counted). A window is
    then a slice of that array, and laying it out as (1, C, T) is a single
    copy. Deliveries only decide when windows fire (and, with pacing, when
    the loop waits for the sensor).
    """
    T, H = manifest.window_samples, manifest.hop_samples
    C, K = len(manifest.channels), len(manifest.class_names)
    fs = float(manifest.sample_rate_hz)
    hop_period_ms = H / fs * 1e3
    name, threads = _backend_info(backend, config)
    chunk = config.chunk_samples
    realtime = bool(config.realtime)
    mean = np.asarray(manifest.norm_mean, dtype=np.float32).reshape(C, 1)
    std = np.asarray(manifest.norm_std, dtype=np.float32).reshape(C, 1)
    tail = np.empty((C, 0), dtype=np.float32)       # the segment's last <= T - 1 normalized samples
    x_in = np.empty((1, C, T), dtype=np.float32)     # model input, reused every window
    xv = x_in[0]                                     # (C, T) view
    shape1k = (1, K)
    cap = 1024 if n_hint is None else max(1, 1 + max(n_hint - T, 0) // H)
    if max_windows is not None:
        cap = min(cap, max_windows)
    cap = max(cap, 1)
    preds = np.empty(cap, np.int64)                  # per-window results; doubled when full
    trues = np.empty(cap, np.int64)
    ends = np.empty(cap, np.int64)
    segs = np.empty(cap, np.int64)
    lat = np.empty(cap, np.float64)
    ovh = np.empty(cap, np.float64)
    run = backend.run
    perf = time.perf_counter
    isfinite, copyto = math.isfinite, np.copyto

    rss0 = _rss_mb()
    rss_peak = rss0 or 0.0
    w = 0
    seg = 0             # segment index (a reset gap starts a new one)
    seg_n = 0           # samples in the current segment
    seg_windows = 0     # windows in the current segment
    next_end = T        # segment-relative exclusive end of the next window
    abs_n = 0           # samples since the stream start at the manifest rate, gaps included
    late = 0
    stop = False
    wmax = max_windows if max_windows is not None else np.iinfo(np.int64).max
    carry = np.empty(0, np.int64)   # labels of the current segment's last T - 1 samples (scoring only)
    it = iter(events)
    t0 = perf()
    t_last = t0         # end of the previous window's bookkeeping
    excl = 0.0          # excluded (harness) time since t_last

    def covered(nw: int) -> int:
        return 0 if nw == 0 else (nw - 1) * min(T, H) + T

    while not stop:
        io0, h0 = clock.io_s, clock.harness_s
        ev = next(it, None)
        excl += (clock.io_s - io0) + (clock.harness_s - h0)
        if ev is None:
            break
        if ev[0] == "reset":
            report["samples_dropped"] += seg_n - covered(seg_windows)
            seg += 1
            seg_n = seg_windows = 0
            next_end = T
            abs_n += ev[1]
            carry = carry[:0]
            tail = tail[:, :0]
            if capture is not None:
                capture.reset(ev[1])
            continue
        values, labels = ev[1], ev[2]
        if capture is not None:
            ts = perf()
            capture.samples(values)
            excl += perf() - ts
        n = values.shape[0]
        vt = np.subtract(values.T, mean)             # (C, n) normalized, channel-first (runtime work)
        np.divide(vt, std, out=vt)
        if tail.shape[1]:
            vt = np.concatenate([tail, vt], axis=1)  # + the segment's previous T - 1 samples
        off = vt.shape[1] - n                        # column of this block's first sample
        w_first = w
        i = 0
        while i < n:
            to_end = next_end - seg_n
            piece = to_end if to_end < n - i else n - i
            if chunk is not None:
                to_boundary = chunk - abs_n % chunk
                if to_boundary < piece:
                    piece = to_boundary
            if realtime:
                ts = perf()
                _sleep_until(t0 + (abs_n + (to_end if chunk is None else chunk - abs_n % chunk)) / fs)
                excl += perf() - ts
            seg_n += piece
            abs_n += piece
            i += piece
            if seg_n != next_end:
                continue
            # -- a window is complete: lay it out as (1, C, T) and run the model
            e = off + i
            copyto(xv, vt[:, e - T:e])
            tb = perf()
            logits = run(x_in)
            tc = perf()
            if type(logits) is np.ndarray and logits.shape == shape1k:
                cls = int(logits.argmax())
            else:
                logits = np.asarray(logits)
                if logits.shape != shape1k:
                    raise ValueError(f"backend {name!r} returned logits of shape {logits.shape} for a (1, {C}, {T}) "
                                     f"window; expected (1, {K}) for the manifest's {K} classes")
                cls = int(logits.argmax())
            if not isfinite(float(logits[0, cls])):
                raise ValueError(f"backend {name!r} returned non-finite logits {np.asarray(logits)[0].tolist()} for "
                                 f"the window ending at sample {abs_n} of recording {rid!r}")
            if w == cap:
                cap *= 2
                preds, trues, ends, segs, lat, ovh = (np.resize(a, cap) for a in (preds, trues, ends, segs, lat, ovh))
            preds[w] = cls
            ends[w] = abs_n
            segs[w] = seg
            td = perf()
            lat[w] = tc - tb
            ovh[w] = (tb - t_last) - excl + (td - tc)
            if capture is not None:
                capture.window(abs_n, x_in, logits)
            # -- harness (untimed): lateness, memory; ground truth after the block
            if realtime and td > t0 + (abs_n + H) / fs:
                late += 1
            if (w & 255) == 0:
                r = _rss_mb()
                if r is not None and r > rss_peak:
                    rss_peak = r
            w += 1
            seg_windows += 1
            next_end += H
            if w >= wmax:
                stop = True
                report["windows_capped"] = True
                break
            t_last = perf()
            excl = 0.0
        # buffering for the next block: keep the segment's last T - 1 samples (runtime work)
        tail = vt[:, max(0, vt.shape[1] - (T - 1)):].copy()
        # -- ground truth of this block's windows (harness, untimed)
        ts = perf()
        lab = np.concatenate([carry, labels]) if carry.size else labels
        loff = lab.shape[0] - n                          # label index of this block's first sample
        block_start = abs_n - i                          # absolute index of this block's first sample
        for wi in range(w_first, w):
            e = loff + int(ends[wi]) - block_start
            lw = lab[e - T:e]
            lw = lw[lw >= 0]
            trues[wi] = int(np.bincount(lw, minlength=K).argmax()) if lw.size else -1
        carry = lab[max(0, lab.shape[0] - (T - 1)):].copy()
        excl += perf() - ts
    wall = perf() - t0
    if not stop:
        report["samples_dropped"] += seg_n - covered(seg_windows)
        report["tail_samples"] += seg_n - (T + (seg_windows - 1) * H if seg_windows else 0)
    rss1 = _rss_mb()
    memory = {"rss_start_mb": rss0, "rss_peak_mb": max(rss_peak, rss1 or 0.0), "rss_end_mb": rss1,
              "maxrss_mb": _maxrss_mb()}
    preds, trues, ends, segs = (a[:w].copy() for a in (preds, trues, ends, segs))
    lat, ovh = lat[:w] * 1e3, ovh[:w] * 1e3                # seconds -> ms
    result = ReplayResult(
        predictions=preds, true_labels=trues, window_ends=ends, latencies_ms=lat, runtime_overhead_ms=ovh,
        deadline_misses=int(np.sum(lat > hop_period_ms)), hop_period_ms=float(hop_period_ms),
        class_names=tuple(manifest.class_names), backend_name=name, num_threads=threads, resampled=resampled,
        realtime=realtime, chunk_samples=chunk, late_windows=late if realtime else None, wall_time_s=float(wall),
        recording=rid, smoothing_k=int(config.smoothing_k),
        smoothed_predictions=_smooth(preds, segs, config.smoothing_k, K), segments=segs,
        input_report=dict(report), stream_duration_s=abs_n / fs, memory=memory, profile=config.profile,
        cpu_affinity=config.cpu_affinity)
    if capture is not None:
        capture.finish(result)
    return result


def _replay_prepared(rec: Recording, backend: Any, manifest: Manifest, config: ReplayConfig, *, resampled: bool,
                     max_windows: int | None, capture: Any = None) -> ReplayResult:
    from ..data.streams import RecordingStream

    clock, report = _Clock(), _new_report()
    report["rows_dropped"] = int(rec.meta.get("dropped_rows", 0))
    events = _condition(RecordingStream(rec, block_samples=config.block_samples), manifest, config, clock, report)
    return _engine(events, backend, manifest, config, clock, report, rid=_rec_id(rec), resampled=resampled,
                   max_windows=max_windows, n_hint=rec.n_samples, capture=capture)


def _replay_stream(stream: Any, backend: Any, manifest: Manifest, config: ReplayConfig, *,
                   max_windows: int | None, capture: Any = None) -> ReplayResult:
    clock, report = _Clock(), _new_report()
    resampled = not np.isclose(float(stream.sample_rate_hz), manifest.sample_rate_hz, rtol=1e-9)
    events = _condition(stream, manifest, config, clock, report)
    hint = stream.n_samples
    if hint is not None and resampled:
        hint = int(hint * manifest.sample_rate_hz / float(stream.sample_rate_hz)) + 1
    result = _engine(events, backend, manifest, config, clock, report, rid=stream.name or stream.user,
                     resampled=resampled, max_windows=max_windows, n_hint=hint, capture=capture)
    result.input_report["rows_dropped"] = int(getattr(stream, "dropped_rows", 0))  # known once the file is read
    return result


def replay(recording: Recording, backend: Any, manifest: Manifest, *,
           config: ReplayConfig = ReplayConfig(), capture: Any = None) -> ReplayResult:
    """Stream one recording through the runtime, as a phone app would.

    Steps: channels are selected by name in the manifest's order; labels are
    mapped to the manifest's class list by name; a recording at another
    sample rate is first resampled (offline, whole stream) to the manifest
    rate with :func:`imutune.windows.resample_recording` (polyphase filter for
    values, nearest sample for labels) and ``resampled`` is set in the result
    -- on a phone this corresponds to requesting the manifest rate from the
    sensor API or resampling in the sensor pipeline. Samples are then
    delivered ``config.chunk_samples`` at a time into a ring buffer; at
    every window end (``T``, ``T + hop``, ...) the window is normalized
    with the manifest statistics, laid out as (1, C, T) float32 and passed to
    ``backend.run``, and the argmax is the prediction.

    For files too large to load, use :func:`replay_stream`.

    Parameters
    ----------
    recording : Recording
        The stream: values (S, C_rec) float32 in physical units, labels (S,)
        int64 (-1 unlabeled).
    backend : object or path-like
        Anything with ``run(x: (N, C, T) float32) -> logits (N, K)`` (and
        optionally ``name`` / ``num_threads`` / ``prepare()``), or a model
        file path loaded with :func:`imutune.backends.load_backend` using
        ``config.num_threads``. The input array is reused between calls; the
        backend must not keep a reference to it.
    manifest : Manifest
        Channels, classes, sample rate, window/hop and normalization.
    config : ReplayConfig
        Delivery chunk size, realtime pacing, threads, pinning, smoothing,
        window cap (see :meth:`ReplayConfig.from_profile` for device profiles).
    capture : object, optional
        A capture hook such as :class:`imutune.runtime.golden.GoldenCapture`
        (methods ``samples(values (n, C) float32)``, ``window(end, x (1, C, T),
        logits (1, K))``, ``reset(skipped)``, ``finish(result)``); it sees the
        raw samples fed, every window's input and logits (golden data for the
        Android host tests). Its window calls are not timed.

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
        class the manifest does not list, is shorter than one window, the
        backend's thread count differs from the profile's, or the backend
        returns logits of the wrong shape or non-finite logits.
    """
    _check_manifest(manifest)
    backend = _resolve_backend(backend, manifest, config)
    rec, resampled = _prepare(recording, manifest)
    if rec.n_samples < manifest.window_samples:
        raise ValueError(f"recording {_rec_id(recording)!r} has {rec.n_samples} samples at "
                         f"{manifest.sample_rate_hz} Hz; one window needs {manifest.window_samples}")
    with _constraints(config, backend):
        return _replay_prepared(rec, backend, manifest, config, resampled=resampled, max_windows=config.max_windows,
                                capture=capture)


def replay_stream(stream: Any, backend: Any, manifest: Manifest, *,
                  config: ReplayConfig = ReplayConfig()) -> ReplayResult:
    """Stream a recording file through the runtime in constant memory.

    The file is read block by block (:mod:`imutune.streams`); channels are
    selected and labels mapped per block; a stream at another rate is
    resampled on the fly with :class:`imutune.streams.StreamResampler`
    (equal to offline resampling up to float rounding); bad input is
    repaired or rejected per ``config`` and counted. Memory use does not
    grow with the recording's length, apart from the per-window results
    (seven numbers, 56 bytes, per window: about 10 MB for a day at a 0.5 s
    hop) and, with ``smoothing_k > 1``, a transient (W, k) int16 matrix.

    Parameters
    ----------
    stream : Stream, Recording or path-like
        An :class:`imutune.streams.Stream`, a path opened with
        :func:`imutune.streams.open_stream` (``.npz``, ``.csv``, SHL-2018
        folder), or a Recording (see :func:`replay`).
    backend, manifest, config
        As in :func:`replay`.

    Returns
    -------
    ReplayResult
        ``input_report`` holds: ``samples_in`` (read), ``samples_replayed``
        (including filled gap samples), ``nan_samples_repaired`` /
        ``nan_values_repaired``, ``gaps``, ``gap_samples_filled``,
        ``gap_resets``, ``samples_dropped`` (samples at the manifest rate in
        no evaluated window: unfinished windows before a reset gap and at the
        end, and samples between windows when hop > window),
        ``tail_samples`` (of those, after the last window of the stream: a
        stream that stops mid-window), ``windows_capped`` and
        ``rows_dropped`` (file rows the reader left out: a CSV's cut-off last
        row, :attr:`imutune.data.CsvStream.dropped_rows`).

    Raises
    ------
    FileNotFoundError
        If a path does not exist.
    ValueError
        As :func:`replay`; for NaN/Inf samples with ``nan_policy="error"``
        and gaps with ``gap_policy="error"`` (the message gives the sample
        index); a file that is truncated or malformed (from the reader).
    """
    from ..data.streams import Stream, open_stream

    _check_manifest(manifest)
    if isinstance(stream, Recording):
        return replay(stream, backend, manifest, config=config)
    if not isinstance(stream, Stream):
        stream = open_stream(stream)
    backend = _resolve_backend(backend, manifest, config)
    _channel_index(stream.channels, manifest, stream.name or stream.user)
    with _constraints(config, backend):
        return _replay_stream(stream, backend, manifest, config, max_windows=config.max_windows)


def replay_many(recordings: Sequence[Any], backend: Any, manifest: Manifest, *,
                config: ReplayConfig = ReplayConfig(), progress: bool = False, capture: Any = None) -> dict:
    """Replay several recordings, each as its own stream, and summarize them together.

    The ring buffer starts empty for every recording (no window spans two
    recordings). Recordings shorter than one window are skipped and listed.
    ``config.max_windows`` caps the total number of windows; replay stops
    once it is reached.

    Parameters
    ----------
    recordings : sequence of Recording or Stream
        The streams (a :class:`imutune.streams.Stream` is read incrementally).
    backend : object or path-like
        As in :func:`replay`; a path is loaded once.
    manifest : Manifest
        As in :func:`replay`.
    config : ReplayConfig
        As in :func:`replay`.
    progress : bool, default False
        Show a tqdm bar over the recordings (windows so far in its postfix).
    capture : object, optional
        A capture hook (see :func:`replay`), called for every replayed recording.

    Returns
    -------
    dict
        :meth:`ReplayResult.summary` keys over all windows of all streams
        (``resampled`` is True if any recording was resampled;
        ``wall_time_s`` and the input counts are summed), plus
        ``n_recordings`` (replayed), ``n_resampled``, ``skipped_recordings``
        (names shorter than a window or not reached before the window cap)
        and ``per_recording`` (list of ``{"recording", "n_windows",
        "n_scored", "accuracy", "macro_f1", "smoothed_accuracy",
        "smoothed_macro_f1", "resampled", "input"}``).

    Raises
    ------
    ValueError
        If ``recordings`` is empty, any recording fails the checks of
        :func:`replay` (channels, classes), or no recording yields a window.
    """
    from ..data.streams import Stream

    recordings = list(recordings)
    if not recordings:
        raise ValueError("recordings is empty; expected at least one Recording")
    _check_manifest(manifest)
    backend = _resolve_backend(backend, manifest, config)
    # Check every recording before streaming any, so a bad one fails fast.
    prepared = []
    for r in recordings:
        if isinstance(r, Stream):
            _channel_index(r.channels, manifest, r.name or r.user)
            prepared.append((r, None))
        else:
            prepared.append(_prepare(r, manifest))
    results: list[ReplayResult] = []
    skipped: list[str] = []
    remaining = config.max_windows
    bar = _RecordingBar(len(recordings), progress)
    with _constraints(config, backend), bar:
        for orig, (rec, resampled) in bar.wrap(zip(recordings, prepared), results):
            rid = orig.name or orig.user
            if remaining is not None and remaining <= 0:
                skipped.append(rid)
                continue
            if resampled is None:
                res = _replay_stream(rec, backend, manifest, config, max_windows=remaining, capture=capture)
                if res.n_windows == 0:
                    skipped.append(rid)
                    continue
            else:
                if rec.n_samples < manifest.window_samples:
                    skipped.append(rid)
                    continue
                res = _replay_prepared(rec, backend, manifest, config, resampled=resampled, max_windows=remaining,
                                       capture=capture)
            results.append(res)
            if remaining is not None:
                remaining -= res.n_windows
    if not results or sum(r.n_windows for r in results) == 0:
        raise ValueError(f"none of the {len(recordings)} recordings is at least one window "
                         f"({manifest.window_samples} samples at {manifest.sample_rate_hz} Hz) long")
    out = _summarize(results)
    per = []
    for r in results:
        s = r.summary()
        per.append({"recording": r.recording, "n_windows": r.n_windows, "n_scored": s["n_scored"],
                    "accuracy": s["accuracy"], "macro_f1": s["macro_f1"],
                    "smoothed_accuracy": s["smoothed_accuracy"], "smoothed_macro_f1": s["smoothed_macro_f1"],
                    "resampled": r.resampled, "input": r.input_report})
    out.update(n_recordings=len(results), n_resampled=sum(r.resampled for r in results),
               skipped_recordings=skipped, per_recording=per)
    return out


class _RecordingBar:
    """tqdm bar over the recordings of :func:`replay_many` (a no-op when disabled)."""

    def __init__(self, total: int, enabled: bool) -> None:
        self._bar = None
        if enabled:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, desc="replay", unit="recording", leave=False, dynamic_ncols=True)

    def wrap(self, items, results: list):
        for item in items:
            if self._bar is not None:
                rid = item[0].name or item[0].user
                self._bar.set_postfix_str(f"{rid}; {sum(r.n_windows for r in results)} windows so far")
            yield item
            if self._bar is not None:
                self._bar.update(1)

    def __enter__(self) -> "_RecordingBar":
        return self

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.close()


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
