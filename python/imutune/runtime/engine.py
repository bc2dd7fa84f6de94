"""The online loop of the reference runtime: deliveries -> window buffer -> (1, C, T) input -> model ->
prediction, timing the model call apart from the runtime's own work."""
from __future__ import annotations

import math
import os
import time
from typing import Any

import numpy as np

from ..deploy.manifest import Manifest
from .config import ReplayConfig
from .result import ReplayResult

__all__ = []


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


class _Clock:
    """Time the engine must not count as runtime work (file reads, label mapping)."""

    __slots__ = ("io_s", "harness_s")

    def __init__(self) -> None:
        self.io_s = 0.0
        self.harness_s = 0.0


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
