"""Sliding windows, resampling, per-channel normalization and long-tail subsampling.

Windowing follows the standard human-activity-recognition recipe: fixed-length
windows of ``window_s`` seconds every ``hop_s`` seconds, each labelled by the
majority of its per-sample labels when that majority covers at least
``min_purity`` of the window (windows straddling a label change or mostly
unlabeled are dropped).
"""
from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import Sequence

import numpy as np

from .. import _validation as V
from ..data.recordings import Recording

__all__ = ["seconds_to_samples", "WindowConfig", "Windows", "make_windows", "resample", "resample_recording",
           "Normalizer", "longtail_subsample", "window_starts"]


def seconds_to_samples(seconds: float, sample_rate_hz: float, *, minimum: int = 0) -> int:
    """``round(seconds * sample_rate_hz)``, at least ``minimum``: the one rule for window and hop lengths."""
    return max(minimum, int(round(seconds * sample_rate_hz)))


@dataclass(frozen=True)
class WindowConfig:
    """How recordings become model inputs."""

    window_s: float = 2.0          # window length in seconds
    hop_s: float = 0.5             # step between window starts in seconds
    sample_rate_hz: float = 50.0   # model sample rate in Hz; recordings at another rate are resampled
    min_purity: float = 0.8        # minimum fraction of a window's samples carrying its majority label

    def __post_init__(self) -> None:
        V.check_positive("window_s", self.window_s, where="WindowConfig")
        V.check_positive("hop_s", self.hop_s, where="WindowConfig")
        V.check_positive("sample_rate_hz", self.sample_rate_hz, where="WindowConfig")
        V.check_fraction("min_purity", self.min_purity)
        if self.window_samples < 8:
            raise ValueError(f"window_s * sample_rate_hz gives {self.window_samples} samples per window; expected >= 8")

    @property
    def window_samples(self) -> int:
        """Window length T in samples."""
        return seconds_to_samples(self.window_s, self.sample_rate_hz)

    @property
    def hop_samples(self) -> int:
        """Hop in samples (at least 1)."""
        return seconds_to_samples(self.hop_s, self.sample_rate_hz, minimum=1)


@dataclass(frozen=True, eq=False)
class Windows:
    """A batch of labelled windows.

    Attributes
    ----------
    x : np.ndarray
        Array of shape (N, C, T), float32, channel-first, physical units (not
        normalized).
    y : np.ndarray
        Array of shape (N,), int64, class index in [0, K).
    recording : np.ndarray
        Array of shape (N,), int64: index of the source recording in the list
        given to :func:`make_windows` (for grouped splits).
    users : np.ndarray
        Array of shape (N,), str: the user of each window.
    class_names, channels : tuple of str
    """

    x: np.ndarray
    y: np.ndarray
    recording: np.ndarray
    users: np.ndarray
    class_names: tuple[str, ...]
    channels: tuple[str, ...]

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def subset(self, idx: np.ndarray) -> "Windows":
        """Windows at integer or boolean index ``idx``."""
        return Windows(self.x[idx], self.y[idx], self.recording[idx], self.users[idx],
                       self.class_names, self.channels)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def class_counts(self) -> np.ndarray:
        """Array of shape (K,), int64: windows per class."""
        return np.bincount(self.y, minlength=self.num_classes).astype(np.int64)


def resample(values: np.ndarray, from_hz: float, to_hz: float) -> np.ndarray:
    """Resample a (S, C) stream from ``from_hz`` to ``to_hz`` with a polyphase
    anti-aliasing filter (``scipy.signal.resample_poly``).

    Returns an array of shape (round(S * to_hz / from_hz), C), float32.
    """
    V.check_positive("from_hz", from_hz)
    V.check_positive("to_hz", to_hz)
    values = np.asarray(values, dtype=np.float32)
    if np.isclose(from_hz, to_hz, rtol=1e-9):
        return values
    from scipy.signal import resample_poly

    frac = Fraction(to_hz / from_hz).limit_denominator(1000)
    out = resample_poly(values, frac.numerator, frac.denominator, axis=0)
    return out.astype(np.float32)


def resample_recording(rec: Recording, to_hz: float) -> Recording:
    """Resample values (polyphase) and labels (nearest sample) of ``rec`` to ``to_hz``."""
    if np.isclose(rec.sample_rate_hz, to_hz, rtol=1e-9):
        return rec
    values = resample(rec.values, rec.sample_rate_hz, to_hz)
    # nearest original sample for each new sample time
    src_idx = np.minimum(np.round(np.arange(values.shape[0]) * rec.sample_rate_hz / to_hz).astype(np.int64),
                         rec.n_samples - 1)
    return Recording(values, rec.labels[src_idx], to_hz, rec.channels, rec.class_names, rec.user,
                     rec.name, {**rec.meta, "resampled_from_hz": rec.sample_rate_hz})


def window_starts(n_samples: int, window_samples: int, hop_samples: int) -> np.ndarray:
    """Start indices of all full windows: ``0, hop, 2*hop, ...`` with ``start + T <= S``."""
    if n_samples < window_samples:
        return np.zeros(0, dtype=np.int64)
    return np.arange(0, n_samples - window_samples + 1, hop_samples, dtype=np.int64)


def make_windows(recordings: Sequence[Recording], config: WindowConfig = WindowConfig(), *,
                 channels: Sequence[str] | None = None) -> Windows:
    """Cut recordings into labelled windows.

    Parameters
    ----------
    recordings : sequence of Recording
        All must share ``class_names``; channels are selected by name.
    config : WindowConfig
        Window length, hop, model sample rate and minimum label purity.
    channels : sequence of str, optional
        Channel names in model order; the first recording's channels by default.

    Returns
    -------
    Windows
        ``x`` of shape (N, C, T) float32 with T = ``config.window_samples``.

    Raises
    ------
    ValueError
        If ``recordings`` is empty, class lists differ, a channel is missing,
        or no window passes the purity check.
    """
    if len(recordings) == 0:
        raise ValueError("recordings is empty; expected at least one Recording")
    class_names = recordings[0].class_names
    channels = tuple(channels) if channels is not None else recordings[0].channels
    T, H = config.window_samples, config.hop_samples
    xs, ys, recs, users = [], [], [], []
    for i, rec in enumerate(recordings):
        if rec.class_names != class_names:
            raise ValueError(f"recording {rec.name!r} has classes {list(rec.class_names)}; expected "
                             f"{list(class_names)} like the first recording")
        rec = resample_recording(rec.select_channels(channels), config.sample_rate_hz)
        starts = window_starts(rec.n_samples, T, H)
        if starts.size == 0:
            continue
        idx = starts[:, None] + np.arange(T)[None, :]            # (W, T)
        lab = rec.labels[idx]                                    # (W, T)
        K = len(class_names)
        counts = np.stack([(lab == k).sum(axis=1) for k in range(K)], axis=1)  # (W, K)
        maj = counts.argmax(axis=1)
        keep = counts.max(axis=1) >= config.min_purity * T
        if not keep.any():
            continue
        win = rec.values[idx[keep]]                               # (W', T, C)
        xs.append(np.ascontiguousarray(win.transpose(0, 2, 1)))  # (W', T, C) -> (W', C, T)
        ys.append(maj[keep])
        recs.append(np.full(int(keep.sum()), i, dtype=np.int64))
        users.append(np.full(int(keep.sum()), rec.user, dtype=object))
    if not xs:
        raise ValueError(f"no window of {T} samples with label purity >= {config.min_purity} was found in "
                         f"{len(recordings)} recordings")
    return Windows(np.concatenate(xs).astype(np.float32), np.concatenate(ys).astype(np.int64),
                   np.concatenate(recs), np.concatenate(users).astype(str), class_names, channels)


@dataclass(frozen=True)
class Normalizer:
    """Per-channel standardization ``(x - mean) / std``, fitted on training windows only.

    ``mean`` and ``std`` are arrays of shape (C,), float32, in the channels' units.
    """

    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def fit(cls, x: np.ndarray, *, min_std: float = 1e-6) -> "Normalizer":
        """Fit on windows ``x`` of shape (N, C, T)."""
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 3 or x.shape[0] == 0:
            raise ValueError(f"x must have shape (N, C, T) with N > 0, got {x.shape}")
        mean = x.mean(axis=(0, 2))
        std = np.maximum(x.std(axis=(0, 2)), min_std)
        return cls(mean.astype(np.float32), std.astype(np.float32))

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Normalize (N, C, T) windows; returns float32."""
        x = np.asarray(x, dtype=np.float32)
        if x.ndim != 3 or x.shape[1] != self.mean.shape[0]:
            raise ValueError(f"x must have shape (N, {self.mean.shape[0]}, T), got {x.shape}")
        return ((x - self.mean[None, :, None]) / self.std[None, :, None]).astype(np.float32)

    def to_dict(self) -> dict:
        return {"mean": self.mean.tolist(), "std": self.std.tolist()}


def longtail_subsample(y: np.ndarray, imbalance_ratio: float, *, seed: int = 0,
                       num_classes: int | None = None) -> np.ndarray:
    """Indices of a long-tailed subset of ``y``.

    Class ``i`` of a seeded random class order keeps
    ``n_max * imbalance_ratio ** (-i / (K - 1))`` samples (at least 1), the
    exponential profile of Cui et al., "Class-Balanced Loss Based on Effective
    Number of Samples", CVPR 2019, Sec. 5.1, where ``n_max`` is the smallest
    class count (so every class can supply its quota). Ratio 1 keeps a
    balanced subset.

    Returns
    -------
    np.ndarray
        Sorted int64 indices into ``y``.

    Raises
    ------
    ValueError
        If ``imbalance_ratio`` < 1 or a present class count is zero.
    """
    if not float(imbalance_ratio) >= 1.0:
        raise ValueError(f"imbalance_ratio must be >= 1, got {imbalance_ratio!r}")
    y = np.asarray(y, dtype=np.int64)
    if y.size == 0:
        raise ValueError("y is empty; expected labels")
    K = int(y.max() + 1) if num_classes is None else int(num_classes)
    present = np.array([k for k in range(K) if np.any(y == k)])
    if present.size == 0:
        raise ValueError("y is empty; expected labels")
    rng = np.random.default_rng(seed)
    order = rng.permutation(present)
    n_max = min(int((y == k).sum()) for k in present)
    keep = []
    for rank, k in enumerate(order):
        frac = rank / max(len(order) - 1, 1)
        n_k = max(1, int(np.floor(n_max * float(imbalance_ratio) ** (-frac))))
        idx = np.flatnonzero(y == k)
        keep.append(rng.choice(idx, size=n_k, replace=False))
    return np.sort(np.concatenate(keep)).astype(np.int64)
