"""Real-world sensor distortions: what a user's phone does differently from the
phones a model was trained on.

Every distortion has its parameters in physical units, a validated range, and
is seeded. Accelerometer channels are those whose name starts with ``acc``
(in g by default, or m/s^2 with ``acc_unit="m/s^2"``), gyroscope channels
start with ``gyr`` (rad/s); other channels are left alone by the unit-bound
distortions (bias, clipping) and rotated only if they form an x/y/z triad.

========================  ===============================================  ==================  =====================
name (``make_distortion``)  effect                                          severity parameter  range
========================  ===============================================  ==================  =====================
``noise``                 additive white Gaussian noise                    SNR in dB           [-10, 60]
``bias``                  constant offset per axis plus a slow linear      acc offset in g     [0, 2]
                          drift (gyro offset: same number in rad/s;
                          drift: the offset per minute)
``gain``                  scale-factor error ``1 +/- e`` per axis          relative error e    [0, 0.9]
``clip``                  saturation at the sensor's full-scale range      acc range in g      (0, 64]
                          (gyro range: 2.18 rad/s per g, the +-2 g /
                          +-250 deg/s pairing of phone IMUs)
``rate``                  sample-clock mismatch: the device samples at     true / nominal      [0.5, 2]
                          ``r`` times its nominal rate, so motion appears
                          ``r`` times slower (polyphase resampling)
``rotation``              device orientation: every x/y/z triad rotated    angle in degrees    [0, 180]
                          by the same angle about a seeded random axis
``dropout``               dropped samples, filled by the last delivered    drop probability    [0, 0.95]
                          sample (what a polling app reads)
========================  ===============================================  ==================  =====================

Randomness is split in two: *device* parameters (bias and gain signs, the
rotation axis, the time since calibration) come from ``seed`` alone, so every
window or recording of one user sees the same phone; *noise* (additive noise,
drop pattern) comes from ``noise_seed`` and the stream's index, so two calls
with different ``noise_seed`` see the same phone with fresh noise.

Distortions act on streams whose last axis is time: windows ``(N, C, T)``
(:func:`distort_windows`, each window one stream, length kept) or recordings
(:func:`distort_recording`, length may change with ``rate``). They compose
with :class:`Compose` or ``"+"`` in a spec string (:func:`parse_distortion`).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Sequence

import numpy as np

from .. import _validation as V
from ..data.recordings import Recording

__all__ = ["Distortion", "AdditiveNoise", "Bias", "GainError", "Clipping", "SampleRateMismatch",
           "AxisRotation", "DroppedSamples", "Compose", "make_distortion", "parse_distortion",
           "distort_windows", "distort_recording", "distort_recordings", "channel_kinds", "axis_triads",
           "DISTORTION_NAMES", "SEVERITY_RANGES", "SEVERITY_UNITS", "BENCH_SEVERITIES", "G", "GYRO_RANGE_PER_G"]

G = 9.80665                    # standard gravity, m/s^2 per g
GYRO_RANGE_PER_G = 250.0 / 2.0 * math.pi / 180.0   # rad/s of gyro range per g of accelerometer range (2.18)

DISTORTION_NAMES = ("noise", "bias", "gain", "clip", "rate", "rotation", "dropout")
# (low, high, low_open) of the single severity parameter of make_distortion
SEVERITY_RANGES: dict[str, tuple[float, float, bool]] = {
    "noise": (-10.0, 60.0, False), "bias": (0.0, 2.0, False), "gain": (0.0, 0.9, False),
    "clip": (0.0, 64.0, True), "rate": (0.5, 2.0, False), "rotation": (0.0, 180.0, False),
    "dropout": (0.0, 0.95, False)}
SEVERITY_UNITS = {"noise": "dB SNR", "bias": "g (and rad/s)", "gain": "relative", "clip": "g full scale",
                  "rate": "true/nominal rate", "rotation": "degrees", "dropout": "probability"}
# Mild, moderate and severe levels of the selective fine-tuning benchmark. Chosen, before any fine-tuning
# run, so that the accuracy of the pretrained mobilecnn1d on the held-out watch users (0.85 clean) drops
# from a few points to a lot: noise 0.85/0.76/0.59, bias 0.83/0.70/0.47, gain 0.81/0.78/0.66,
# clip 0.83/0.76/0.49, rate 0.82/0.79/0.76, rotation 0.80/0.75/0.51, dropout 0.84/0.81/0.72.
BENCH_SEVERITIES: dict[str, tuple[float, float, float]] = {
    "noise": (5.0, 0.0, -5.0), "bias": (0.1, 0.3, 0.6), "gain": (0.1, 0.25, 0.5), "clip": (1.0, 0.75, 0.5),
    "rate": (1.1, 1.5, 2.0), "rotation": (10.0, 20.0, 45.0), "dropout": (0.5, 0.8, 0.95)}


# --------------------------------------------------------------------------- channel layout

def channel_kinds(channels: Sequence[str]) -> list[str]:
    """``"acc"``, ``"gyr"``, ``"mag"`` or ``"other"`` per channel, from the name prefix."""
    out = []
    for c in channels:
        n = str(c).strip().lower()
        out.append(next((k for k in ("acc", "gyr", "mag") if n.startswith(k)), "other"))
    return out


_AXIS = re.compile(r"^(.*?)[_\-. ]?([xyz])$")


def axis_triads(channels: Sequence[str]) -> list[tuple[int, int, int]]:
    """Index triples (x, y, z) of channels named ``<prefix>_x``, ``<prefix>_y``, ``<prefix>_z``
    (case-insensitive; separator ``_``, ``-``, ``.``, space or none)."""
    groups: dict[str, dict[str, int]] = {}
    for i, c in enumerate(channels):
        m = _AXIS.match(str(c).strip().lower())
        if m and m.group(1):
            groups.setdefault(m.group(1), {})[m.group(2)] = i
    return [(g["x"], g["y"], g["z"]) for g in groups.values() if set(g) == {"x", "y", "z"}]


@dataclass(frozen=True)
class _Ctx:
    sample_rate_hz: float
    channels: tuple[str, ...]
    acc_unit: str
    device_rng: np.random.Generator
    noise_rngs: list[np.random.Generator]   # one per stream

    @property
    def kinds(self) -> list[str]:
        return channel_kinds(self.channels)

    def acc_scale(self) -> float:
        """Data units per g for accelerometer channels."""
        return 1.0 if self.acc_unit == "g" else G


# --------------------------------------------------------------------------- distortions

class Distortion:
    """Base class. Subclasses implement ``_apply(streams, ctx) -> streams`` on a
    list of (C, S_i) float64 arrays."""

    name = "distortion"

    def _apply(self, streams: list[np.ndarray], ctx: _Ctx) -> list[np.ndarray]:  # pragma: no cover
        raise NotImplementedError

    def __add__(self, other: "Distortion") -> "Compose":
        return Compose((self, other))

    def describe(self) -> str:
        """A short human-readable description with units."""
        return repr(self)


def _check_range(cls: str, name: str, value: float, low: float, high: float, *, low_open: bool = False) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{cls}.{name} must be a number, got {value!r}") from None
    ok = (v > low if low_open else v >= low) and v <= high
    if not ok or not math.isfinite(v):
        lo = "(" if low_open else "["
        raise ValueError(f"{cls}.{name} must be in {lo}{low:g}, {high:g}], got {value!r}")
    return v


def _signs(rng: np.random.Generator, n: int) -> np.ndarray:
    return np.where(rng.random(n) < 0.5, -1.0, 1.0)


@dataclass(frozen=True)
class AdditiveNoise(Distortion):
    """White Gaussian noise at ``snr_db`` (in [-10, 60] dB).

    The signal power of channel ``c`` is the mean square of its streams after
    removing each stream's mean (the dynamic part: gravity and offsets carry no
    information about motion), pooled over all streams of the call, so one call
    adds noise of one physical level per channel:
    ``sigma_c = sqrt(P_c / 10^(snr_db / 10))``.
    """

    snr_db: float = 20.0
    name = "noise"

    def __post_init__(self) -> None:
        _check_range("AdditiveNoise", "snr_db", self.snr_db, -10.0, 60.0)

    def _apply(self, streams, ctx):
        c = streams[0].shape[0]
        num = np.zeros(c)
        den = 0
        for s in streams:
            num += ((s - s.mean(axis=1, keepdims=True)) ** 2).sum(axis=1)
            den += s.shape[1]
        power = num / max(den, 1)
        sigma = np.sqrt(power / 10.0 ** (self.snr_db / 10.0))
        return [s + sigma[:, None] * rng.standard_normal(s.shape) for s, rng in zip(streams, ctx.noise_rngs)]

    def describe(self) -> str:
        return f"additive white noise at {self.snr_db:g} dB SNR"


@dataclass(frozen=True)
class Bias(Distortion):
    """Constant offset per axis plus a slow linear drift.

    Accelerometer axes get ``+/- acc_g`` g, gyroscope axes ``+/- gyr_rad_s``
    rad/s (sign per axis from the device seed). The offset then drifts at
    ``acc_drift_g_per_s`` / ``gyr_drift_rad_s_per_s`` (sign per axis from the
    device seed): at time ``t`` seconds into a stream the added value is
    ``offset + drift * (t0 + t)``, where ``t0`` is the stream's time since
    calibration, uniform in ``[0, max_elapsed_s]`` per stream (device seed).
    Ranges: offsets in [0, 2] g and [0, 5] rad/s, drifts in [0, 0.1] per s,
    ``max_elapsed_s`` in [0, 3600].
    """

    acc_g: float = 0.1
    gyr_rad_s: float = 0.1
    acc_drift_g_per_s: float = 0.0
    gyr_drift_rad_s_per_s: float = 0.0
    max_elapsed_s: float = 60.0
    name = "bias"

    def __post_init__(self) -> None:
        _check_range("Bias", "acc_g", self.acc_g, 0.0, 2.0)
        _check_range("Bias", "gyr_rad_s", self.gyr_rad_s, 0.0, 5.0)
        _check_range("Bias", "acc_drift_g_per_s", self.acc_drift_g_per_s, 0.0, 0.1)
        _check_range("Bias", "gyr_drift_rad_s_per_s", self.gyr_drift_rad_s_per_s, 0.0, 0.1)
        _check_range("Bias", "max_elapsed_s", self.max_elapsed_s, 0.0, 3600.0)

    def _per_channel(self, ctx: _Ctx) -> tuple[np.ndarray, np.ndarray]:
        kinds = ctx.kinds
        off = np.array([self.acc_g * ctx.acc_scale() if k == "acc" else self.gyr_rad_s if k == "gyr" else 0.0
                        for k in kinds])
        drift = np.array([self.acc_drift_g_per_s * ctx.acc_scale() if k == "acc" else
                          self.gyr_drift_rad_s_per_s if k == "gyr" else 0.0 for k in kinds])
        n = len(kinds)
        return off * _signs(ctx.device_rng, n), drift * _signs(ctx.device_rng, n)

    def _apply(self, streams, ctx):
        off, drift = self._per_channel(ctx)
        t0 = ctx.device_rng.uniform(0.0, self.max_elapsed_s, size=len(streams))
        out = []
        for s, t0_i in zip(streams, t0):
            t = t0_i + np.arange(s.shape[1]) / ctx.sample_rate_hz
            out.append(s + off[:, None] + drift[:, None] * t[None, :])
        return out

    def describe(self) -> str:
        return (f"bias +/-{self.acc_g:g} g, +/-{self.gyr_rad_s:g} rad/s; drift {self.acc_drift_g_per_s:g} g/s, "
                f"{self.gyr_drift_rad_s_per_s:g} rad/s/s")


@dataclass(frozen=True)
class GainError(Distortion):
    """Scale-factor error: every channel is multiplied by ``1 + s_c * error``
    with a sign ``s_c`` per channel from the device seed; ``error`` in [0, 0.9]."""

    error: float = 0.1
    name = "gain"

    def __post_init__(self) -> None:
        _check_range("GainError", "error", self.error, 0.0, 0.9)

    def _apply(self, streams, ctx):
        gain = 1.0 + self.error * _signs(ctx.device_rng, streams[0].shape[0])
        return [s * gain[:, None] for s in streams]

    def describe(self) -> str:
        return f"gain error +/-{100 * self.error:g}%"


@dataclass(frozen=True)
class Clipping(Distortion):
    """Saturation at the sensor's full-scale range: accelerometer channels are
    clipped to ``+/- acc_range_g`` g (in (0, 64]), gyroscope channels to
    ``+/- gyr_range_rad_s`` rad/s (in (0, 100]); others are untouched."""

    acc_range_g: float = 2.0
    gyr_range_rad_s: float = 2.0 * GYRO_RANGE_PER_G
    name = "clip"

    def __post_init__(self) -> None:
        _check_range("Clipping", "acc_range_g", self.acc_range_g, 0.0, 64.0, low_open=True)
        _check_range("Clipping", "gyr_range_rad_s", self.gyr_range_rad_s, 0.0, 100.0, low_open=True)

    def _apply(self, streams, ctx):
        lim = np.array([self.acc_range_g * ctx.acc_scale() if k == "acc" else self.gyr_range_rad_s if k == "gyr"
                        else np.inf for k in ctx.kinds])
        return [np.clip(s, -lim[:, None], lim[:, None]) for s in streams]

    def describe(self) -> str:
        return f"clipping at +/-{self.acc_range_g:g} g, +/-{self.gyr_range_rad_s:.3g} rad/s"


@dataclass(frozen=True)
class SampleRateMismatch(Distortion):
    """The device's true sample rate is ``rate_ratio`` (in [0.5, 2]) times its
    nominal rate. Its samples are read as if at the nominal rate, so a motion at
    ``f`` Hz appears at ``f / rate_ratio`` Hz and a stream of ``S`` samples
    becomes ``round(S * rate_ratio)`` samples (polyphase resampling with an
    anti-aliasing filter, ratio approximated to a fraction with denominator <= 100).
    :func:`distort_windows` keeps the window length by taking the centred
    ``T`` samples (edge-padding when ``rate_ratio < 1``).
    """

    rate_ratio: float = 1.1
    name = "rate"

    def __post_init__(self) -> None:
        _check_range("SampleRateMismatch", "rate_ratio", self.rate_ratio, 0.5, 2.0)

    def _apply(self, streams, ctx):
        frac = Fraction(float(self.rate_ratio)).limit_denominator(100)
        if frac == 1:
            return [s.copy() for s in streams]
        from scipy.signal import resample_poly

        # padtype="line": the edges are extended along the line through the end points (no step at the edges)
        return [resample_poly(s, frac.numerator, frac.denominator, axis=1, padtype="line") for s in streams]

    def describe(self) -> str:
        return f"sample clock {self.rate_ratio:g} x nominal"


@dataclass(frozen=True)
class AxisRotation(Distortion):
    """Device orientation: every x/y/z channel triad (``acc_*``, ``gyr_*``,
    ``mag_*``) is rotated by the same rotation of ``angle_deg`` (in [0, 180])
    degrees about a random unit axis drawn from the device seed (or ``axis``)."""

    angle_deg: float = 30.0
    axis: tuple[float, float, float] | None = None
    name = "rotation"

    def __post_init__(self) -> None:
        _check_range("AxisRotation", "angle_deg", self.angle_deg, 0.0, 180.0)
        if self.axis is not None:
            a = np.asarray(self.axis, dtype=np.float64)
            if a.shape != (3,) or not np.all(np.isfinite(a)) or np.linalg.norm(a) == 0:
                raise ValueError(f"AxisRotation.axis must be a non-zero 3-vector, got {self.axis!r}")

    def matrix(self, rng: np.random.Generator | None = None) -> np.ndarray:
        """The (3, 3) rotation matrix (Rodrigues' formula)."""
        if self.axis is not None:
            k = np.asarray(self.axis, dtype=np.float64)
        else:
            k = (rng if rng is not None else np.random.default_rng(0)).standard_normal(3)
        k = k / np.linalg.norm(k)
        th = math.radians(self.angle_deg)
        K = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
        return np.eye(3) + math.sin(th) * K + (1 - math.cos(th)) * (K @ K)

    def _apply(self, streams, ctx):
        triads = axis_triads(ctx.channels)
        if not triads:
            raise ValueError(f"AxisRotation needs x/y/z channel triads (e.g. acc_x, acc_y, acc_z); channels are "
                             f"{list(ctx.channels)}")
        R = self.matrix(ctx.device_rng)
        out = []
        for s in streams:
            s = s.copy()
            for tri in triads:
                idx = list(tri)
                s[idx] = R @ s[idx]          # (3, 3) @ (3, S) -> (3, S)
            out.append(s)
        return out

    def describe(self) -> str:
        return f"axes rotated by {self.angle_deg:g} deg"


@dataclass(frozen=True)
class DroppedSamples(Distortion):
    """Each sample (all channels together) is lost with probability
    ``drop_prob`` (in [0, 0.95], independently per sample); a lost sample reads
    as the last delivered one (zero-order hold). The first sample of a stream
    is always delivered."""

    drop_prob: float = 0.2
    name = "dropout"

    def __post_init__(self) -> None:
        _check_range("DroppedSamples", "drop_prob", self.drop_prob, 0.0, 0.95)

    def _apply(self, streams, ctx):
        out = []
        for s, rng in zip(streams, ctx.noise_rngs):
            n = s.shape[1]
            keep = rng.random(n) >= self.drop_prob
            keep[0] = True
            src = np.maximum.accumulate(np.where(keep, np.arange(n), 0))   # index of the last delivered sample
            out.append(s[:, src])
        return out

    def describe(self) -> str:
        return f"{100 * self.drop_prob:g}% samples dropped (held)"


@dataclass(frozen=True)
class Compose(Distortion):
    """Apply ``distortions`` in order; each gets its own device and noise seeds."""

    distortions: tuple[Distortion, ...] = field(default_factory=tuple)
    name = "compose"

    def __post_init__(self) -> None:
        flat: list[Distortion] = []
        for d in self.distortions:
            if not isinstance(d, Distortion):
                raise ValueError(f"Compose takes Distortion objects, got {type(d).__name__}")
            flat.extend(d.distortions if isinstance(d, Compose) else [d])
        object.__setattr__(self, "distortions", tuple(flat))

    def describe(self) -> str:
        return " + ".join(d.describe() for d in self.distortions) or "no distortion"


def make_distortion(name: str, severity: float) -> Distortion:
    """The distortion ``name`` (one of :data:`DISTORTION_NAMES`) at one severity
    in physical units (see the module table).

    Raises
    ------
    ValueError
        If the name is unknown or ``severity`` lies outside its range.
    """
    V.check_choice("distortion name", name, DISTORTION_NAMES)
    lo, hi, lo_open = SEVERITY_RANGES[name]
    s = _check_range(name, "severity", severity, lo, hi, low_open=lo_open)
    if name == "noise":
        return AdditiveNoise(snr_db=s)
    if name == "bias":
        return Bias(acc_g=s, gyr_rad_s=s, acc_drift_g_per_s=s / 60.0, gyr_drift_rad_s_per_s=s / 60.0)
    if name == "gain":
        return GainError(error=s)
    if name == "clip":
        return Clipping(acc_range_g=s, gyr_range_rad_s=min(100.0, s * GYRO_RANGE_PER_G))
    if name == "rate":
        return SampleRateMismatch(rate_ratio=s)
    if name == "rotation":
        return AxisRotation(angle_deg=s)
    return DroppedSamples(drop_prob=s)


def parse_distortion(spec: str) -> Distortion:
    """Parse ``"name:severity[+name:severity...]"``, e.g. ``"noise:10+rotation:30"``.

    Raises
    ------
    ValueError
        On a malformed spec, an unknown name or an out-of-range severity.
    """
    parts = [p.strip() for p in str(spec).split("+") if p.strip()]
    if not parts:
        raise ValueError(f"distortion spec {spec!r} is empty; expected e.g. 'noise:10+rotation:30'")
    ds = []
    for p in parts:
        name, sep, val = p.partition(":")
        if not sep:
            raise ValueError(f"distortion {p!r} in spec {spec!r} must be 'name:severity' with name in "
                             f"{list(DISTORTION_NAMES)}")
        try:
            sev = float(val)
        except ValueError:
            raise ValueError(f"severity {val!r} of distortion {name!r} is not a number") from None
        ds.append(make_distortion(name.strip(), sev))
    return ds[0] if len(ds) == 1 else Compose(tuple(ds))


# --------------------------------------------------------------------------- application

def _run(d: Distortion, streams: list[np.ndarray], *, sample_rate_hz: float, channels: Sequence[str],
         seed: int, noise_seed: int | None, acc_unit: str, stream_ids: Sequence[int] | None = None
         ) -> list[np.ndarray]:
    if not isinstance(d, Distortion):
        raise ValueError(f"distortion must be a Distortion, got {type(d).__name__}")
    V.check_positive("sample_rate_hz", sample_rate_hz)
    V.check_choice("acc_unit", acc_unit, ("g", "m/s^2"))
    channels = tuple(str(c) for c in channels)
    if streams and streams[0].shape[0] != len(channels):
        raise ValueError(f"data has {streams[0].shape[0]} channels but {len(channels)} channel names were given")
    noise_seed = seed if noise_seed is None else noise_seed
    ids = list(range(len(streams))) if stream_ids is None else [int(i) for i in stream_ids]
    parts = d.distortions if isinstance(d, Compose) else (d,)
    for k, part in enumerate(parts):
        ctx = _Ctx(float(sample_rate_hz), channels, acc_unit, np.random.default_rng([int(seed), k, 0]),
                   [np.random.default_rng([int(noise_seed), k, 1, i]) for i in ids])
        streams = part._apply(streams, ctx)
    return streams


def _fit_length(s: np.ndarray, T: int) -> np.ndarray:
    n = s.shape[1]
    if n == T:
        return s
    if n > T:
        a = (n - T) // 2
        return s[:, a:a + T]
    a = (T - n) // 2
    return np.pad(s, ((0, 0), (a, T - n - a)), mode="edge")


def distort_windows(x: np.ndarray, distortion: Distortion, *, channels: Sequence[str], sample_rate_hz: float,
                    seed: int = 0, noise_seed: int | None = None, acc_unit: str = "g") -> np.ndarray:
    """Distort windows in physical units.

    Parameters
    ----------
    x : np.ndarray
        Array of shape (N, C, T), physical units (not normalized); each window
        is one stream.
    distortion : Distortion
    channels : sequence of str
        C channel names (decide accelerometer / gyroscope channels and triads).
    sample_rate_hz : float
        Sample rate of ``x``.
    seed : int
        Device seed (signs, rotation axis, time since calibration).
    noise_seed : int, optional
        Seed of the per-window noise; ``seed`` by default.
    acc_unit : str
        ``"g"`` or ``"m/s^2"``.

    Returns
    -------
    np.ndarray
        Array of shape (N, C, T), float32.
    """
    x = np.asarray(x)
    if x.ndim != 3:
        raise ValueError(f"x must have shape (N, C, T), got {x.shape}")
    V.check_finite_array("x", x)
    if x.shape[0] == 0:
        return x.astype(np.float32)
    T = x.shape[2]
    streams = _run(distortion, [w.astype(np.float64) for w in x], sample_rate_hz=sample_rate_hz, channels=channels,
                   seed=seed, noise_seed=noise_seed, acc_unit=acc_unit)
    return np.stack([_fit_length(s, T) for s in streams]).astype(np.float32)


def distort_recordings(recordings: Sequence[Recording], distortion: Distortion, *, seed: int = 0,
                       noise_seed: int | None = None, acc_unit: str = "g") -> list[Recording]:
    """Distort recordings as one device would: device parameters shared, noise
    independent per recording. With a sample-rate mismatch the length changes and
    labels follow the nearest original sample. Recordings are grouped by sample
    rate and channels (each group is one call)."""
    out: list[Recording | None] = [None] * len(recordings)
    groups: dict[tuple, list[int]] = {}
    for i, r in enumerate(recordings):
        groups.setdefault((r.sample_rate_hz, r.channels), []).append(i)
    for (fs, chans), idx in groups.items():
        streams = [recordings[i].values.T.astype(np.float64) for i in idx]      # (S, C) -> (C, S)
        res = _run(distortion, streams, sample_rate_hz=fs, channels=chans, seed=seed, noise_seed=noise_seed,
                   acc_unit=acc_unit, stream_ids=idx)
        for i, s in zip(idx, res):
            r = recordings[i]
            n = s.shape[1]
            lab_idx = np.minimum(np.round(np.arange(n) * r.n_samples / max(n, 1)).astype(np.int64), r.n_samples - 1)
            out[i] = Recording(s.T.astype(np.float32), r.labels[lab_idx], r.sample_rate_hz, r.channels,
                               r.class_names, r.user, r.name, {**r.meta, "distortion": distortion.describe()})
    return out  # type: ignore[return-value]


def distort_recording(recording: Recording, distortion: Distortion, *, seed: int = 0,
                      noise_seed: int | None = None, acc_unit: str = "g") -> Recording:
    """Distort one recording (see :func:`distort_recordings`)."""
    return distort_recordings([recording], distortion, seed=seed, noise_seed=noise_seed, acc_unit=acc_unit)[0]
