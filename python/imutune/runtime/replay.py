"""Mobile-side reference runtime: stream a recording through an exported model.

This is what a phone app does with an exported model and its manifest: sensor
samples arrive in small chunks, are appended to a window buffer (the
segment's last T - 1 normalized samples plus the incoming block, :mod:`imutune.runtime.engine`),
and every ``hop_samples`` samples (once a full window has arrived) the
latest window is normalized with the manifest statistics, laid out as
``(1, C, T)`` and passed to the model. It is the standard sliding-window
human-activity-recognition inference loop (fixed windows with overlap; see
Banos et al., "Window Size Impact in Human Activity Recognition", Sensors
14(4), 2014), run online one window at a time instead of as an offline batch.

The replay produces the same windows as :func:`imutune.signal.windows.window_starts`
on the (resampled, channel-selected) recording: window ``w`` covers samples
``[w * hop, w * hop + T)``, so a recording of ``S`` samples yields
``1 + (S - T) // hop`` windows, independently of the delivery chunk size.

Streams: :func:`replay` takes an in-memory :class:`~imutune.data.recordings.Recording`;
:func:`replay_stream` reads a file block by block (:mod:`imutune.data.streams`:
generic ``.npz``, CSV, SHL-2018 layout) so a recording of any length replays
in constant memory, resampling on the fly when its rate differs from the
manifest's. Bad input is repaired or rejected per :class:`ReplayConfig`
(``nan_policy``, ``gap_policy``) and counted in the result's ``input_report``.

Device profiles (:mod:`imutune.runtime.profiles`, :meth:`ReplayConfig.from_profile`):
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
import os
from typing import Any, Sequence

import numpy as np

from ..data.recordings import Recording
from ..deploy.manifest import Manifest
from .conditioning import _channel_index, _check_manifest, _condition, _new_report, _prepare, _rec_id
from .config import GAP_POLICIES, NAN_POLICIES, ReplayConfig
from .engine import _Clock, _engine
from .result import ReplayResult, _summarize

__all__ = ['replay', 'replay_stream', 'replay_many', 'ReplayConfig', 'ReplayResult', 'NAN_POLICIES', 'GAP_POLICIES']


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
    rate with :func:`imutune.signal.windows.resample_recording` (polyphase filter for
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
        file path loaded with :func:`imutune.deploy.backends.load_backend` using
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
        class the manifest does not list, declares the other gravity
        convention than the manifest's, is shorter than one window, the
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

    The file is read block by block (:mod:`imutune.data.streams`); channels are
    selected and labels mapped per block; a stream at another rate is
    resampled on the fly with :class:`imutune.data.streams.StreamResampler`
    (equal to offline resampling up to float rounding); bad input is
    repaired or rejected per ``config`` and counted. Memory use does not
    grow with the recording's length, apart from the per-window results
    (seven numbers, 56 bytes, per window: about 10 MB for a day at a 0.5 s
    hop) and, with ``smoothing_k > 1``, a transient (W, k) int16 matrix.

    Parameters
    ----------
    stream : Stream, Recording or path-like
        An :class:`imutune.data.streams.Stream`, a path opened with
        :func:`imutune.data.streams.open_stream` (``.npz``, ``.csv``, SHL-2018
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
        The streams (a :class:`imutune.data.streams.Stream` is read incrementally).
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
