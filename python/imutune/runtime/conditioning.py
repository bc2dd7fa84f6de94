"""Input conditioning of the reference runtime: channel selection by name, label mapping to the
manifest's classes, resampling, NaN holding and timestamp-gap repair, each counted in the input report."""
from __future__ import annotations

import time
from typing import Any, Sequence

import numpy as np

from ..data.recordings import Recording
from ..deploy.manifest import Manifest
from ..signal.contract import MIN_WINDOW_SAMPLES
from .config import ReplayConfig
from .engine import _Clock

__all__ = []


def _rec_id(rec: Recording) -> str:
    return rec.name or rec.user


def _prepare(recording: Recording, manifest: Manifest) -> tuple[Recording, bool]:
    """Select channels, map labels to the manifest's classes and resample to its rate."""
    from ..signal.windows import resample_recording

    if not isinstance(recording, Recording):
        raise ValueError(f"recording must be an imutune Recording, got {type(recording).__name__}")
    rid = _rec_id(recording)
    _channel_index(recording.channels, manifest, rid)
    _check_gravity(recording, manifest, rid)
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


def _check_gravity(source: Any, manifest: Manifest, rid: str) -> None:
    """A recording or stream that declares the other gravity convention than the manifest's model is an error."""
    from ..data.recording import parse_gravity

    want = manifest.preprocessing.gravity
    meta = getattr(source, "meta", None)
    if want is None or not isinstance(meta, dict):
        return
    got = parse_gravity(meta.get("gravity"), where=f"recording {rid!r}")
    if got is not None and got != want:
        say = {True: "included", False: "removed"}
        raise ValueError(f"recording {rid!r} declares its accelerometer with gravity {say[got]}; the manifest's "
                         f"model expects gravity {say[want]}; expected a recording of the model's convention "
                         "(imutune.signal.windows.remove_gravity subtracts a gravity estimate; gravity cannot be "
                         "added back)")


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
    _check_gravity(stream, manifest, rid)
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
