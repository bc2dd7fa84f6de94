"""What a replay measured: per-window predictions and latencies, and their summaries."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from .. import metrics

__all__ = ['ReplayResult']


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
        "scored_windows": ("every window the stream produced, against the majority label of its labelled samples "
                           "(windows with no labelled sample are not scored); training and fine-tuning reports "
                           "score only windows whose majority label covers min_purity of the window"),
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
