"""Label noise: how a user's own calibration labels go wrong, as named, seeded models.

A user who labels a calibration session on their phone taps "walking" a few
seconds late, or fuzzily around activity changes, or picks the wrong class.
These models corrupt the *training* labels only; the injected truth is kept
(:class:`NoisyWindows`), so an oracle (drop exactly the corrupted windows) and
a filter's noisy-window precision and recall can be computed. Test labels
stay clean.

==============  ========  ==========================================================  ====================
name            level     effect                                                      parameter (default)
==============  ========  ==========================================================  ====================
``none``        --        nothing                                                     --
``boundary``    samples   the first and the last ``fraction`` of the samples of each  fraction per end
                          labelled segment get the neighbouring segment's class        (0.2)
                          (the previous segment's at its start, the next one's at
                          its end; a session edge has no neighbour and stays clean)
``shift``       samples   every boundary between two labelled segments moves by a     1-3 s
                          uniform random ``min_s..max_s`` seconds, earlier or later
                          with equal probability (the user taps early or late)
``symmetric``   windows   exactly ``round(rate * N)`` windows, chosen at random, get  rate (0.3)
                          a uniformly random *other* class
``confusion``   windows   class-pair confusion matrix: of the windows of a class in   pairs IR<->ER,
                          a pair, exactly ``round(rate * n)`` get the partner class   ABD<->FEL; rate 0.3
==============  ========  ==========================================================  ====================

A *segment* is a maximal run of equal per-sample labels; unlabelled samples
(-1) are never relabelled and never act as a neighbour. Sample-level models
act on per-sample labels before windowing (so the window purity check sees the
user's labels, as it would on the device); window-level models act on window
labels after windowing. Models compose with :class:`ComposeNoise` or ``"+"``
in a spec (:func:`parse_label_noise`): sample-level ones first, in order,
then window-level ones, in order.

Randomness: recording ``i`` uses ``numpy.random.default_rng([seed, i])``, the
window-level models ``default_rng([seed, 2**31 - 1, j])`` for the j-th model,
so results depend only on ``seed`` and the input order.

The watch data set stores one exercise per recording; :func:`concatenate_session`
joins a user's recordings in order into one session stream, the way a user
would record one exercise after another, so segments have neighbours.
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from .. import _validation as V
from ..data.recordings import Recording

__all__ = ["LabelNoise", "NoLabelNoise", "BoundaryNoise", "ShiftNoise", "SymmetricNoise", "ConfusionNoise",
           "ComposeNoise", "LABEL_NOISE_NAMES", "WATCH_CONFUSION_PAIRS", "parse_label_noise", "label_segments",
           "noisy_recording", "noisy_windows", "NoisyWindows", "concatenate_session", "precision_recall"]

LABEL_NOISE_NAMES = ("none", "boundary", "shift", "symmetric", "confusion")
#: Exercises of the watch data that look alike: internal/external rotation, abduction/forward elevation.
WATCH_CONFUSION_PAIRS: tuple[tuple[str, str], ...] = (("IR", "ER"), ("ABD", "FEL"))


@dataclass(frozen=True)
class LabelNoise:
    """Base class: a label-noise model (no effect)."""

    name = "none"
    level = "none"      # "samples", "windows" or "none"

    def describe(self) -> str:
        return "none"

    def apply_samples(self, labels: np.ndarray, *, sample_rate_hz: float, rng: np.random.Generator) -> np.ndarray:
        """Noisy copy of per-sample labels (S,) int64; identity here."""
        return np.array(labels, dtype=np.int64, copy=True)

    def apply_windows(self, y: np.ndarray, class_names: Sequence[str], *, rng: np.random.Generator) -> np.ndarray:
        """Noisy copy of window labels (N,) int64; identity here."""
        return np.array(y, dtype=np.int64, copy=True)

    @property
    def parts(self) -> tuple["LabelNoise", ...]:
        return () if type(self) is LabelNoise or isinstance(self, NoLabelNoise) else (self,)


@dataclass(frozen=True)
class NoLabelNoise(LabelNoise):
    """Clean labels."""

    name = "none"


def label_segments(labels: np.ndarray) -> list[tuple[int, int, int]]:
    """Maximal runs of equal labels: ``[(start, stop, label), ...]`` (stop exclusive) in time order."""
    y = np.asarray(labels, dtype=np.int64).ravel()
    if y.size == 0:
        return []
    change = np.flatnonzero(np.diff(y)) + 1
    starts = np.concatenate([[0], change])
    stops = np.concatenate([change, [y.size]])
    return [(int(a), int(b), int(y[a])) for a, b in zip(starts, stops)]


@dataclass(frozen=True)
class BoundaryNoise(LabelNoise):
    """Fuzzy activity changes: the first and last ``fraction`` of each labelled segment's samples take the
    neighbouring segment's class (module table)."""

    fraction: float = 0.2
    name = "boundary"
    level = "samples"

    def __post_init__(self) -> None:
        if not (0.0 <= float(self.fraction) < 0.5):
            raise ValueError(f"boundary noise fraction must be in [0, 0.5) (share of each segment relabelled at "
                             f"each end), got {self.fraction!r}")

    def describe(self) -> str:
        return f"boundary {self.fraction:g} per end"

    def apply_samples(self, labels, *, sample_rate_hz, rng):
        y = np.asarray(labels, dtype=np.int64)
        out = y.copy()
        segs = label_segments(y)
        for i, (a, b, c) in enumerate(segs):
            if c < 0:
                continue
            n = int(np.floor(self.fraction * (b - a)))
            if n == 0:
                continue
            if i > 0 and segs[i - 1][2] >= 0 and segs[i - 1][2] != c:
                out[a:a + n] = segs[i - 1][2]
            if i + 1 < len(segs) and segs[i + 1][2] >= 0 and segs[i + 1][2] != c:
                out[b - n:b] = segs[i + 1][2]
        return out


@dataclass(frozen=True)
class ShiftNoise(LabelNoise):
    """Late or early taps: every boundary between two labelled segments moves by ``min_s..max_s`` seconds
    (uniform), later or earlier with equal probability; each segment keeps at least one sample."""

    min_s: float = 1.0
    max_s: float = 3.0
    name = "shift"
    level = "samples"

    def __post_init__(self) -> None:
        if not (np.isfinite(self.min_s) and np.isfinite(self.max_s) and 0.0 <= self.min_s <= self.max_s):
            raise ValueError(f"shift noise needs 0 <= min_s <= max_s (seconds), got min_s={self.min_s!r}, "
                             f"max_s={self.max_s!r}")

    def describe(self) -> str:
        return f"shift {self.min_s:g}-{self.max_s:g} s"

    def apply_samples(self, labels, *, sample_rate_hz, rng):
        y = np.asarray(labels, dtype=np.int64)
        out = y.copy()
        segs = label_segments(y)
        for (a0, b0, c0), (a1, b1, c1) in zip(segs[:-1], segs[1:]):
            shift_s = rng.uniform(self.min_s, self.max_s)
            later = bool(rng.integers(0, 2))
            if c0 < 0 or c1 < 0:
                continue
            d = int(round(shift_s * sample_rate_hz))
            if later:   # the next activity starts, the old label is still on: its first d samples read c0
                d = min(d, b1 - a1 - 1)
                out[a1:a1 + d] = c0
            else:       # the user tapped early: the last d samples of the previous segment read c1
                d = min(d, b0 - a0 - 1)
                out[b0 - d:b0] = c1
        return out


@dataclass(frozen=True)
class SymmetricNoise(LabelNoise):
    """Exactly ``round(rate * N)`` random windows get a uniformly random other class."""

    rate: float = 0.3
    name = "symmetric"
    level = "windows"

    def __post_init__(self) -> None:
        V.check_in_range("symmetric noise rate", self.rate, 0.0, 1.0)

    def describe(self) -> str:
        return f"symmetric {self.rate:g}"

    def apply_windows(self, y, class_names, *, rng):
        y = np.asarray(y, dtype=np.int64)
        out = y.copy()
        K = len(class_names)
        if K < 2 or y.size == 0:
            return out
        idx = rng.choice(y.size, size=int(round(self.rate * y.size)), replace=False)
        offset = rng.integers(1, K, size=idx.size)          # 1..K-1: never the own class
        out[idx] = (y[idx] + offset) % K
        return out


@dataclass(frozen=True)
class ConfusionNoise(LabelNoise):
    """Class-pair confusion: for each pair (a, b), exactly ``round(rate * n_a)`` windows of a become b and
    ``round(rate * n_b)`` of b become a (a symmetric confusion matrix with ``1 - rate`` on the diagonal of
    the paired classes)."""

    pairs: tuple[tuple[str, str], ...] = WATCH_CONFUSION_PAIRS
    rate: float = 0.3
    name = "confusion"
    level = "windows"

    def __post_init__(self) -> None:
        V.check_in_range("confusion noise rate", self.rate, 0.0, 1.0)
        pairs = tuple((str(a), str(b)) for a, b in self.pairs)
        seen = [c for p in pairs for c in p]
        if not pairs or len(set(seen)) != len(seen) or any(a == b for a, b in pairs):
            raise ValueError(f"confusion noise pairs must be non-empty pairs of distinct classes, each class in "
                             f"at most one pair, got {self.pairs!r}")
        object.__setattr__(self, "pairs", pairs)

    def describe(self) -> str:
        return "confusion " + ",".join(f"{a}<->{b}" for a, b in self.pairs) + f" {self.rate:g}"

    def matrix(self, class_names: Sequence[str]) -> np.ndarray:
        """The (K, K) row-stochastic confusion matrix ``P[true, observed]``."""
        K = len(class_names)
        P = np.eye(K)
        for a, b in self.pairs:
            i, j = self._index(class_names, a), self._index(class_names, b)
            P[i, i] = P[j, j] = 1.0 - self.rate
            P[i, j] = P[j, i] = self.rate
        return P

    @staticmethod
    def _index(class_names: Sequence[str], c: str) -> int:
        if c not in class_names:
            raise ValueError(f"confusion noise class {c!r} is not in the class list {list(class_names)}")
        return list(class_names).index(c)

    def apply_windows(self, y, class_names, *, rng):
        y = np.asarray(y, dtype=np.int64)
        out = y.copy()
        for a, b in self.pairs:
            for src, dst in ((a, b), (b, a)):
                k, j = self._index(class_names, src), self._index(class_names, dst)
                idx = np.flatnonzero(y == k)
                pick = rng.choice(idx, size=int(round(self.rate * idx.size)), replace=False)
                out[pick] = j
        return out


@dataclass(frozen=True)
class ComposeNoise(LabelNoise):
    """Several models: sample-level ones first (in order), then window-level ones (in order)."""

    models: tuple[LabelNoise, ...] = field(default_factory=tuple)
    name = "compose"

    def __post_init__(self) -> None:
        flat: list[LabelNoise] = []
        for m in self.models:
            if not isinstance(m, LabelNoise):
                raise ValueError(f"ComposeNoise takes LabelNoise objects, got {type(m).__name__}")
            flat.extend(m.parts)
        object.__setattr__(self, "models", tuple(flat))

    @property
    def parts(self) -> tuple[LabelNoise, ...]:
        return self.models

    def describe(self) -> str:
        return " + ".join(m.describe() for m in self.models) or "none"


_NUM = r"[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?"


def parse_label_noise(spec: str) -> LabelNoise:
    """Parse a label-noise spec.

    Grammar: parts joined by ``+``; a part is ``none``, ``boundary[:FRACTION]``,
    ``shift[:MIN-MAX]`` (seconds), ``symmetric[:RATE]`` or
    ``confusion[:A-B/C-D][@RATE]``. Examples: ``"boundary:0.2"``,
    ``"shift:1-3"``, ``"symmetric:0.3"``, ``"confusion:IR-ER/ABD-FEL@0.3"``,
    ``"shift:1-3+symmetric:0.1"``.

    Raises
    ------
    ValueError
        On an empty or malformed spec, an unknown name or an out-of-range parameter;
        the message quotes the spec.
    """
    parts = [p.strip() for p in str(spec).split("+") if p.strip()]
    if not parts:
        raise ValueError(f"label-noise spec {spec!r} is empty; expected e.g. 'boundary:0.2' or 'none'")
    models: list[LabelNoise] = []
    for p in parts:
        m = re.fullmatch(r"([a-z]+)(?::([^@]*))?(?:@(.*))?", p)
        if not m:
            raise ValueError(f"label-noise spec {spec!r}: part {p!r} is not 'name[:arg]'; expected one of "
                             f"{list(LABEL_NOISE_NAMES)}")
        name, arg, rate = m.group(1), (m.group(2) or "").strip(), m.group(3)
        try:
            models.append(_parse_part(name, arg, rate, p))
        except ValueError as e:
            raise ValueError(f"label-noise spec {spec!r}: {e}") from None
    if len(models) == 1:
        return models[0]
    return ComposeNoise(tuple(models))


def _num(text: str, part: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"part {part!r}: {text!r} is not a number") from None


def _parse_part(name: str, arg: str, rate: str | None, part: str) -> LabelNoise:
    if rate is not None and name != "confusion":
        raise ValueError(f"part {part!r}: '@RATE' is only for confusion noise")
    if name == "none" and not arg:
        return NoLabelNoise()
    if name == "boundary":
        return BoundaryNoise(_num(arg, part)) if arg else BoundaryNoise()
    if name == "shift":
        if not arg:
            return ShiftNoise()
        m = re.fullmatch(rf"({_NUM})-({_NUM})", arg)
        if not m:
            raise ValueError(f"shift part {part!r} must be 'shift:MIN-MAX' in seconds, e.g. 'shift:1-3'")
        return ShiftNoise(float(m.group(1)), float(m.group(2)))
    if name == "symmetric":
        return SymmetricNoise(_num(arg, part)) if arg else SymmetricNoise()
    if name == "confusion":
        pairs = WATCH_CONFUSION_PAIRS
        if arg:
            pairs = tuple(tuple(x.strip() for x in q.split("-")) for q in arg.split("/"))
            if any(len(q) != 2 for q in pairs):
                raise ValueError(f"confusion part {part!r} must list pairs as 'A-B/C-D'")
        return ConfusionNoise(pairs, _num(rate, part)) if rate else ConfusionNoise(pairs)
    raise ValueError(f"unknown label-noise model {part!r}; expected one of {list(LABEL_NOISE_NAMES)}")


# --------------------------------------------------------------------------- application

def concatenate_session(recordings: Sequence[Recording], *, name: str | None = None) -> Recording:
    """Join recordings of one user, in the given order, into one session stream.

    Raises
    ------
    ValueError
        If ``recordings`` is empty or they differ in user, sample rate, channels or classes
        (the message names the first recording that differs).
    """
    if len(recordings) == 0:
        raise ValueError("recordings is empty; expected at least one Recording to join")
    r0 = recordings[0]
    for r in recordings[1:]:
        if (r.user, r.sample_rate_hz, r.channels, r.class_names) != (r0.user, r0.sample_rate_hz, r0.channels,
                                                                      r0.class_names):
            raise ValueError(f"recording {r.name!r} differs from {r0.name!r} in user, sample rate, channels or "
                             "classes; a session joins recordings of one user and one device")
    return Recording(np.concatenate([r.values for r in recordings]), np.concatenate([r.labels for r in recordings]),
                     r0.sample_rate_hz, r0.channels, r0.class_names, r0.user,
                     name or f"session:{r0.user}:{len(recordings)}",
                     {**r0.meta, "session_of": [r.name for r in recordings]})


def noisy_recording(recording: Recording, noise: LabelNoise, *, seed: int = 0, index: int = 0) -> Recording:
    """A copy of ``recording`` whose labels carry the sample-level part of ``noise``.

    ``meta`` gains ``label_noise`` (the description) and ``clean_labels`` (S,) int64, the truth.
    """
    rng = np.random.default_rng([int(seed), int(index)])
    labels = recording.labels
    for m in _parts(noise):
        if m.level == "samples":
            labels = m.apply_samples(labels, sample_rate_hz=recording.sample_rate_hz, rng=rng)
    return Recording(recording.values, labels, recording.sample_rate_hz, recording.channels, recording.class_names,
                     recording.user, recording.name,
                     {**recording.meta, "label_noise": noise.describe(), "clean_labels": recording.labels})


def _parts(noise: LabelNoise) -> tuple[LabelNoise, ...]:
    if not isinstance(noise, LabelNoise):
        raise ValueError(f"noise must be a LabelNoise (see parse_label_noise), got {type(noise).__name__}")
    return noise.parts


@dataclass(frozen=True, eq=False)
class NoisyWindows:
    """Windows whose labels ``windows.y`` are the user's (noisy) labels, with the truth kept.

    ``y_true`` (N,) int64: majority of the clean per-sample labels of each window, then no
    window-level noise; ``noisy`` (N,) bool: ``windows.y != y_true``.
    """

    windows: object            # imutune.signal.windows.Windows (typed loosely: no import cycle at runtime)
    y_true: np.ndarray
    description: str

    @property
    def noisy(self) -> np.ndarray:
        return np.asarray(self.windows.y != self.y_true)

    @property
    def noise_rate(self) -> float:
        return float(self.noisy.mean()) if self.y_true.size else 0.0

    def subset(self, idx: np.ndarray) -> "NoisyWindows":
        return NoisyWindows(self.windows.subset(idx), self.y_true[idx], self.description)


def noisy_windows(recordings: Sequence[Recording], noise: LabelNoise, config=None, *, seed: int = 0,
                  channels: Sequence[str] | None = None) -> NoisyWindows:
    """Cut recordings into windows whose labels carry ``noise``, keeping the truth.

    Parameters
    ----------
    recordings : sequence of Recording
        Clean recordings (the injected truth).
    noise : LabelNoise
        The model (:func:`parse_label_noise`).
    config : imutune.signal.windows.WindowConfig, optional
        Windowing (default ``WindowConfig()``); the purity check runs on the noisy labels,
        as it would on the user's device.
    seed : int
        Seeds every random choice (module docstring).

    Returns
    -------
    NoisyWindows
        ``windows`` (x (N, C, T) float32, noisy ``y``) and ``y_true`` (N,).

    Raises
    ------
    ValueError
        As :func:`imutune.signal.windows.make_windows` (no window passes the purity check, ...).
    """
    from .windows import WindowConfig, make_windows, resample_recording, window_starts

    config = config or WindowConfig()
    parts = _parts(noise)
    recs = list(recordings)
    noisy = [noisy_recording(r, noise, seed=seed, index=i) for i, r in enumerate(recs)]
    w = make_windows(noisy, config, channels=channels)
    # truth per kept window: same starts and purity rule as make_windows, majority of the clean labels
    T, H, K = config.window_samples, config.hop_samples, w.num_classes
    truth, seen = [], []
    for r, rn in zip(recs, noisy):
        rc = resample_recording(r, config.sample_rate_hz)
        rnn = resample_recording(rn, config.sample_rate_hz)
        starts = window_starts(rc.n_samples, T, H)
        if starts.size == 0:
            continue
        idx = starts[:, None] + np.arange(T)[None, :]                            # (W, T)
        cn = np.stack([(rnn.labels[idx] == k).sum(1) for k in range(K)], axis=1)  # (W, K)
        keep = cn.max(1) >= config.min_purity * T
        cc = np.stack([(rc.labels[idx[keep]] == k).sum(1) for k in range(K)], axis=1)  # (W', K)
        truth.append(cc.argmax(1))
        seen.append(cn[keep].argmax(1))
    y_true = np.concatenate(truth).astype(np.int64)
    if y_true.shape[0] != len(w) or not np.array_equal(np.concatenate(seen), w.y):
        raise RuntimeError("internal: the truth windows do not line up with make_windows; report this")
    y = w.y
    for j, m in enumerate(parts):
        if m.level == "windows":
            y = m.apply_windows(y, w.class_names, rng=np.random.default_rng([int(seed), 2**31 - 1, j]))
    return NoisyWindows(dataclasses.replace(w, y=np.asarray(y, dtype=np.int64)), y_true, noise.describe())


def precision_recall(flagged: np.ndarray, truth: np.ndarray) -> dict:
    """Noisy-window precision and recall of a filter against the injected truth.

    Parameters
    ----------
    flagged, truth : np.ndarray
        Arrays of shape (N,), bool: windows the filter marked noisy / whose label was corrupted.

    Returns
    -------
    dict
        ``flagged``, ``corrupted``, ``true_positives`` (int), ``precision`` (None when nothing is
        flagged) and ``recall`` (None when nothing is corrupted).

    Raises
    ------
    ValueError
        If the shapes differ.
    """
    f = np.asarray(flagged, bool).ravel()
    t = np.asarray(truth, bool).ravel()
    if f.shape != t.shape:
        raise ValueError(f"flagged has {f.shape[0]} entries and truth {t.shape[0]}; expected equal")
    tp = int((f & t).sum())
    return {"flagged": int(f.sum()), "corrupted": int(t.sum()), "true_positives": tp,
            "precision": tp / int(f.sum()) if f.any() else None, "recall": tp / int(t.sum()) if t.any() else None}
