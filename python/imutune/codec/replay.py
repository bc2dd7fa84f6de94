"""Phone-side reference: replay a recording sample chunk by sample chunk, encode each segment as soon as
it is full, and time it.

The replay feeds ``chunk_samples`` samples at a time (as a sensor callback delivers them) into a
segment buffer; each full segment is encoded by :class:`imutune.codec.bitstream.StreamEncoder`
(encoder call + rounding + range coding) and the wall time of that call is one latency sample. At
the end the partial last segment is padded as :func:`imutune.codec.bitstream.segment_values` pads it
and the container is closed, so the bytes equal :func:`imutune.codec.bitstream.encode_recording`'s.
"""
from __future__ import annotations

import time
from typing import Any

import numpy as np

from .. import _validation as V
from ..data.recordings import Recording
from ..metrics import latency_summary
from .bitstream import StreamEncoder, close_stream
from .model import LearnedCodec

__all__ = ["replay_encode"]


def replay_encode(codec: LearnedCodec, recording: Recording, *, encoder: Any = None,
                  chunk_samples: int = 1) -> dict[str, Any]:
    """Encode ``recording`` as a live stream and measure per-segment encode latency.

    Parameters
    ----------
    codec : LearnedCodec
    recording : Recording
        At the codec's sample rate, with its channels.
    encoder : backend, optional
        Exported encoder (``OnnxBackend`` / ``PteBackend``, 1 thread for phone-class figures); eager
        torch by default.
    chunk_samples : int
        Samples per sensor delivery (>= 1).

    Returns
    -------
    dict
        ``data`` (the ``.imz`` bytes), ``bytes``, ``bytes_per_second`` (of stream time),
        ``n_segments``, ``latency_ms`` (:func:`imutune.metrics.latency_summary` of the per-segment
        encode calls, in ms, entropy coding included; None if no segment filled) and
        ``latencies_ms`` (every call, in order).

    Raises
    ------
    ValueError
        If the recording's channels or sample rate differ from the codec's, or ``chunk_samples`` < 1.
    """
    V.check_int_at_least("chunk_samples", chunk_samples, 1)
    if tuple(recording.channels) != tuple(codec.channels) or \
            not np.isclose(recording.sample_rate_hz, codec.sample_rate_hz, rtol=1e-9):
        raise ValueError(f"recording {recording.name!r} has channels {list(recording.channels)} at "
                         f"{recording.sample_rate_hz} Hz; the codec expects {list(codec.channels)} at "
                         f"{codec.sample_rate_hz} Hz")
    T = codec.segment_samples
    enc = StreamEncoder(codec, encoder=encoder)
    buf = np.empty((T, len(codec.channels)), np.float32)
    fill = 0
    times: list[float] = []
    v = recording.values
    for start in range(0, v.shape[0], chunk_samples):
        chunk = v[start:start + chunk_samples]
        i = 0
        while i < chunk.shape[0]:
            k = min(T - fill, chunk.shape[0] - i)
            buf[fill:fill + k] = chunk[i:i + k]
            fill += k
            i += k
            if fill == T:
                t0 = time.perf_counter()
                enc.push_segment(np.ascontiguousarray(buf.T))            # (T, C) -> (C, T)
                times.append(1e3 * (time.perf_counter() - t0))
                fill = 0
    if fill:
        buf[fill:] = buf[fill - 1]
        enc.push_segment(np.ascontiguousarray(buf.T))
    units = recording.meta.get("units") if isinstance(recording.meta, dict) else None
    data = close_stream(enc, n_samples=v.shape[0], labels=recording.labels, class_names=recording.class_names,
                        user=recording.user, name=recording.name, units=units)
    return {"data": data, "bytes": len(data), "bytes_per_second": len(data) / recording.duration_s,
            "n_segments": int(enc.n_segments), "latency_ms": latency_summary(times) if times else None,
            "latencies_ms": times}
