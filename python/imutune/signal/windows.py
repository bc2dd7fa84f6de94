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
from ..data.recording import split_at_gaps
from ..data.recordings import Recording
from .contract import DEFAULT_MIN_PURITY, Preprocessing, check_window_fields, seconds_to_samples

__all__ = ["seconds_to_samples", "WindowConfig", "Windows", "make_windows", "resample", "resample_recording",
           "Normalizer", "longtail_subsample", "window_starts", "Preprocessing", "STANDARD_GRAVITY",
           "UNIT_SCALE", "unit_factor", "parse_units", "GRAVITY_CUTOFF_HZ", "remove_gravity"]

#: Standard gravity in m/s^2 (CGPM 1901; ISO 80000-3): 1 g = 9.80665 m/s^2.
STANDARD_GRAVITY = 9.80665
#: Units imutune converts between: unit -> (quantity, factor to the quantity's SI unit).
UNIT_SCALE: dict[str, tuple[str, float]] = {
    "g": ("acceleration", STANDARD_GRAVITY),
    "m/s^2": ("acceleration", 1.0),
    "rad/s": ("angular velocity", 1.0),
    "deg/s": ("angular velocity", float(np.pi / 180.0)),
}
_UNIT_ALIASES = {"m/s2": "m/s^2", "m/s**2": "m/s^2", "ms^-2": "m/s^2", "dps": "deg/s", "°/s": "deg/s",
                 "rad/sec": "rad/s", "deg/sec": "deg/s", "G": "g"}


def _canonical_unit(u: str) -> str:
    u = str(u).strip()
    return _UNIT_ALIASES.get(u, u)


def unit_factor(from_unit: str, to_unit: str, *, where: str = "") -> float:
    """The factor that converts values in ``from_unit`` to ``to_unit`` (``x_to = x_from * factor``).

    g <-> m/s^2 uses :data:`STANDARD_GRAVITY` (1 g = 9.80665 m/s^2); deg/s <->
    rad/s uses pi / 180. Equal unit names give 1 (also for units imutune
    does not know, which are carried as given).

    Raises
    ------
    ValueError
        If the units differ and are not both in :data:`UNIT_SCALE` for the
        same quantity (e.g. 'g' -> 'rad/s'); the message names ``where``.
    """
    a, b = _canonical_unit(from_unit), _canonical_unit(to_unit)
    if a == b:
        return 1.0
    qa, qb = UNIT_SCALE.get(a), UNIT_SCALE.get(b)
    if qa is None or qb is None or qa[0] != qb[0]:
        at = f"{where}: " if where else ""
        raise ValueError(f"{at}cannot convert {from_unit!r} to {to_unit!r}; expected units of the same quantity "
                         f"among {sorted(UNIT_SCALE)} (g <-> m/s^2, rad/s <-> deg/s)")
    return qa[1] / qb[1]


def parse_units(units: str | Sequence[str | None] | None, channels: Sequence[str], *,
                what: str = "units") -> tuple[str | None, ...] | None:
    """Per-channel units from a user's statement (``--units`` / ``units=``).

    ``units`` is None, a sequence of one unit per channel, or a string: one
    unit for every channel (``"g"``), a comma-separated list in channel
    order (``"g,g,g,rad/s,rad/s,rad/s"``), or ``channel=unit`` pairs
    (``"acc_x=m/s^2,acc_y=m/s^2,..."``; unnamed channels stay undeclared).

    Raises
    ------
    ValueError
        If the count does not match ``channels`` or a named channel is not among them.
    """
    if units is None:
        return None
    channels = tuple(channels)
    if isinstance(units, str):
        parts = [u.strip() for u in units.split(",") if u.strip()]
        if parts and all("=" in u for u in parts):
            named = dict(tuple(x.strip() for x in u.split("=", 1)) for u in parts)
            unknown = [c for c in named if c not in channels]
            if unknown:
                raise ValueError(f"{what} {units!r} names channels {unknown} that are not among {list(channels)}; "
                                 "expected channel=unit pairs for the model's channels")
            return tuple(_canonical_unit(named[c]) if c in named else None for c in channels)
        if len(parts) == 1:
            parts = parts * len(channels)
        units = parts
    out = tuple(None if u is None else _canonical_unit(u) for u in units)
    if len(out) != len(channels):
        raise ValueError(f"{what} has {len(out)} entries {list(out)}; expected {len(channels)} (one per channel "
                         f"{list(channels)}), one unit for all, or channel=unit pairs")
    return out


@dataclass(frozen=True)
class WindowConfig:
    """How recordings become model inputs (the user-facing input of :func:`make_windows`).

    The windows, the model bundle and the manifest carry the full contract
    (:class:`~imutune.signal.contract.Preprocessing`) built from it; the
    validation rules (positive finite values, at least
    :data:`~imutune.signal.contract.MIN_WINDOW_SAMPLES` samples per window)
    are the contract's.
    """

    window_s: float = 2.0          # window length in seconds
    hop_s: float = 0.5             # step between window starts in seconds
    sample_rate_hz: float = 50.0   # model sample rate in Hz; recordings at another rate are resampled
    min_purity: float = DEFAULT_MIN_PURITY  # minimum fraction of a window's samples carrying its majority label

    def __post_init__(self) -> None:
        w, h, fs, p = check_window_fields(self.window_s, self.hop_s, self.sample_rate_hz, self.min_purity,
                                          where="WindowConfig")
        object.__setattr__(self, "window_s", w)
        object.__setattr__(self, "hop_s", h)
        object.__setattr__(self, "sample_rate_hz", fs)
        object.__setattr__(self, "min_purity", p)

    @classmethod
    def from_preprocessing(cls, p: Preprocessing) -> "WindowConfig":
        """The window fields of a contract."""
        return cls(**p.window_fields())

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
    preprocessing : Preprocessing, optional
        The contract the windows were cut with (set by :func:`make_windows`;
        without normalization). None for windows built by hand, which then
        need a window config wherever a model is trained on them.
    unit_conversions : tuple of str
        What :func:`make_windows` converted on load, one line per recording
        and channel group (e.g. ``"recording 'u1': acc_x, acc_y, acc_z m/s^2
        -> g (x 0.101972)"``); empty when nothing was converted.

    Raises
    ------
    ValueError
        If ``preprocessing`` disagrees with the windows' classes, channels,
        C or T.
    """

    x: np.ndarray
    y: np.ndarray
    recording: np.ndarray
    users: np.ndarray
    class_names: tuple[str, ...]
    channels: tuple[str, ...]
    preprocessing: Preprocessing | None = None
    unit_conversions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        p = self.preprocessing
        if p is None:
            return
        if not isinstance(p, Preprocessing):
            raise ValueError(f"Windows preprocessing must be a Preprocessing or None, got {type(p).__name__}")
        shape = tuple(np.shape(self.x))
        if tuple(self.class_names) != p.class_names or tuple(self.channels) != p.channels:
            raise ValueError(f"Windows have classes {list(self.class_names)} and channels {list(self.channels)}, "
                             f"but their preprocessing has {list(p.class_names)} and {list(p.channels)}")
        if len(shape) != 3 or shape[1] != p.num_channels or shape[2] != p.window_samples:
            raise ValueError(f"Windows x has shape {shape}, but the preprocessing gives (N, "
                             f"{p.num_channels}, {p.window_samples}) ({p.describe()})")

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def subset(self, idx: np.ndarray) -> "Windows":
        """Windows at integer or boolean index ``idx``."""
        return Windows(self.x[idx], self.y[idx], self.recording[idx], self.users[idx],
                       self.class_names, self.channels, self.preprocessing, self.unit_conversions)

    def relabel(self, class_names: Sequence[str], *, what: str = "windows") -> "Windows":
        """The same windows labelled against another class list, matched by name.

        Every class of these windows must be in ``class_names`` (classes of
        ``class_names`` with no window are fine: e.g. a test file that lacks
        one activity). ``what`` names the windows in messages.

        Raises
        ------
        ValueError
            If a class of these windows is not in ``class_names``.
        """
        target = tuple(class_names)
        if target == tuple(self.class_names):
            return self
        unknown = [c for c in self.class_names if c not in target]
        if unknown:
            raise ValueError(f"{what} have classes {list(self.class_names)}; {unknown} are not among the model's "
                             f"classes {list(target)} (classes are matched by name; expected a subset of the "
                             "model's class names)")
        lookup = np.array([target.index(c) for c in self.class_names], dtype=np.int64)
        spec = None if self.preprocessing is None else self.preprocessing.with_classes(target)
        return Windows(self.x, lookup[self.y], self.recording, self.users, target, self.channels, spec,
                       self.unit_conversions)

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


def _recording_units(rec: Recording, channels: Sequence[str]) -> tuple[str | None, ...] | None:
    """Units a recording declares for ``channels`` (``rec.units`` or ``rec.meta["units"]``: a list in the
    recording's channel order or a channel -> unit mapping); None if it declares none."""
    declared = getattr(rec, "units", None)
    if declared is None and isinstance(rec.meta, dict):
        declared = rec.meta.get("units")
    if declared is None:
        return None
    if isinstance(declared, dict):
        by_name = {str(k): v for k, v in declared.items()}
    elif isinstance(declared, (list, tuple)) and len(declared) == len(rec.channels):
        by_name = dict(zip(rec.channels, declared))
    else:
        raise ValueError(f"recording {rec.name or rec.user!r} declares units {declared!r}; expected one unit per "
                         f"channel {list(rec.channels)} (a list or a channel -> unit mapping)")
    out = tuple(None if by_name.get(c) in (None, "") else _canonical_unit(by_name[c]) for c in channels)
    return None if all(u is None for u in out) else out


def _target_units(config: "WindowConfig | Preprocessing", channels: tuple[str, ...],
                  sources: list[tuple[str | None, ...] | None]) -> tuple[str | None, ...]:
    """The units the windows are converted to: the contract's where it declares them (matched by channel
    name), else the first unit any recording declares (or ``units=`` states) for that channel."""
    target: list[str | None] = [None] * len(channels)
    if isinstance(config, Preprocessing) and config.units is not None:
        by_name = dict(zip(config.channels, config.units))
        target = [None if by_name.get(c) is None else _canonical_unit(by_name[c]) for c in channels]
    for src in sources:
        if src is None:
            continue
        target = [t if t is not None else u for t, u in zip(target, src)]
    return tuple(target)


def _convert_units(values: np.ndarray, src: tuple[str | None, ...] | None, target: tuple[str | None, ...],
                   channels: tuple[str, ...], what: str) -> tuple[np.ndarray, list[str]]:
    """``values`` (S, C) converted channel by channel from ``src`` to ``target`` units, and the log lines."""
    need = [c for c, t, u in zip(channels, target, src or (None,) * len(channels)) if t is not None and u is None]
    if need:
        expected = [f"{c}[{t}]" for c, t in zip(channels, target) if t is not None]
        raise ValueError(f"{what} declares no units for channels {need}; expected units {expected} (the model's "
                         "or the other recordings'). Declare them in the file (npz key 'units'; CSV header "
                         "'acc_x[m/s^2]') or state them: units= in Python, --units on the command line "
                         "(e.g. --units g,g,g,rad/s,rad/s,rad/s)")
    if src is None:
        return values, []
    factors = np.ones(len(channels), dtype=np.float64)
    groups: dict[tuple[str, str, float], list[str]] = {}
    for j, (c, t, u) in enumerate(zip(channels, target, src)):
        if t is None or u is None:
            continue
        f = unit_factor(u, t, where=f"{what} channel {c!r}")
        if f != 1.0:
            factors[j] = f
            groups.setdefault((u, t, f), []).append(c)
    if not groups:
        return values, []
    out = (values.astype(np.float64) * factors[None, :]).astype(np.float32)   # (S, C) * (1, C)
    log = [f"{what}: {', '.join(cs)} {u} -> {t} (x {f:.6g})" for (u, t, f), cs in groups.items()]
    return out, log


#: Cut-off of the low-pass gravity estimate of :func:`remove_gravity`, Hz.
GRAVITY_CUTOFF_HZ = 0.3


def _acc_columns(channels: Sequence[str], units: Sequence[str | None] | None) -> list[int]:
    """Accelerometer columns: a unit of acceleration ('g', 'm/s^2'), else a name starting with 'acc'."""
    out = []
    for j, c in enumerate(channels):
        u = None if units is None else units[j]
        if u is not None:
            if UNIT_SCALE.get(_canonical_unit(u), ("", 0.0))[0] == "acceleration":
                out.append(j)
        elif str(c).lower().startswith("acc"):
            out.append(j)
    return out


def remove_gravity(values: np.ndarray, sample_rate_hz: float, columns: Sequence[int], *,
                   cutoff_hz: float = GRAVITY_CUTOFF_HZ) -> np.ndarray:
    """Accelerometer minus its low-pass gravity estimate (linear acceleration).

    Gravity is estimated per axis by a zero-phase 4th-order Butterworth
    low-pass at ``cutoff_hz`` (``scipy.signal.butter`` + ``sosfiltfilt``),
    the usual offline estimate (e.g. Anguita et al., ESANN 2013, the UCI-HAR
    body / gravity split at 0.3 Hz). It is an estimate: slow body motion
    below the cut-off goes with it, and a phone computing linear
    acceleration with its own sensor fusion gives somewhat different
    values. The reverse, adding gravity to a gravity-free recording, is not
    possible in general (it needs the device orientation at every sample),
    so imutune never does it.

    Parameters
    ----------
    values : np.ndarray
        (S, C) samples.
    sample_rate_hz : float
        Hz; ``cutoff_hz`` must be below half of it.
    columns : sequence of int
        The accelerometer columns to change.

    Returns
    -------
    np.ndarray
        (S, C) float32; the other columns unchanged.

    Raises
    ------
    ValueError
        If the cut-off is not below the Nyquist frequency.
    """
    from scipy.signal import butter, sosfiltfilt

    V.check_positive("sample_rate_hz", sample_rate_hz)
    if not 0 < cutoff_hz < sample_rate_hz / 2:
        raise ValueError(f"gravity low-pass cut-off {cutoff_hz} Hz must be in (0, {sample_rate_hz / 2:g}) Hz (half "
                         f"the {sample_rate_hz:g} Hz sample rate)")
    out = np.array(values, dtype=np.float64)                 # (S, C)
    cols = list(columns)
    if not cols:
        return out.astype(np.float32)
    n = out.shape[0]
    if n < 2:
        out[:, cols] -= out[:, cols].mean(axis=0, keepdims=True)
        return out.astype(np.float32)
    sos = butter(4, cutoff_hz, btype="low", fs=sample_rate_hz, output="sos")
    pad = min(3 * (2 * len(sos) + 1), n - 1)
    out[:, cols] -= sosfiltfilt(sos, out[:, cols], axis=0, padlen=pad)
    return out.astype(np.float32)


def _say(g: bool | None) -> str:
    return "unknown" if g is None else ("included" if g else "removed")


def _target_gravity(config: "WindowConfig | Preprocessing", recordings: Sequence[Recording],
                    own: list[bool | None]) -> tuple[bool | None, str]:
    """The windows' gravity: the contract's where it declares one, else the recordings' (which must agree)."""
    if isinstance(config, Preprocessing) and config.gravity is not None:
        return config.gravity, "the model"
    declared = [(g, r) for g, r in zip(own, recordings) if g is not None]
    if not declared:
        return None, ""
    g0, r0 = declared[0]
    for g, r in declared[1:]:
        if g != g0:
            raise ValueError(f"recording {r.name or r.user!r} declares gravity {_say(g)} but recording "
                             f"{r0.name or r0.user!r} declares it {_say(g0)}; expected one convention for all "
                             "recordings of a model (gravity can be removed with remove_gravity_from=True "
                             "when the model's contract says removed; it cannot be added)")
    return g0, f"recording {r0.name or r0.user!r}"


def make_windows(recordings: Sequence[Recording], config: WindowConfig | Preprocessing = WindowConfig(), *,
                 channels: Sequence[str] | None = None,
                 units: str | Sequence[str | None] | None = None, unlabeled: bool = False,
                 gravity: bool | str | None = None, remove_gravity_from: bool = False) -> Windows:
    """Cut recordings into labelled windows, converting units to the model's.

    Parameters
    ----------
    recordings : sequence of Recording
        Channels are selected by name. Classes are matched by name: the
        windows' class list is the first recording's, then the classes of
        later recordings it lacks, in order of appearance (e.g. a folder of
        one-activity CSV files).
    config : WindowConfig or Preprocessing
        Window length, hop, model sample rate and minimum label purity. A
        model's contract (``bundle.preprocessing``) also gives the default
        channels and the units the windows are converted to.
    channels : sequence of str, optional
        Channel names in model order; by default ``config.channels`` for a
        contract, else the first recording's channels.
    units : str or sequence of (str or None), optional
        The units of recordings that declare none, as the user states them
        (``--units`` on the command line): one per selected channel, one for
        all, or ``"channel=unit,..."`` (:func:`parse_units`). A recording's
        own declaration (``meta["units"]``, set by the readers from an npz
        ``units`` key, a CSV header suffix ``acc_x[m/s^2]``, or the watch
        loader's g and rad/s) takes precedence for that recording.
    unlabeled : bool
        Keep every full window (for self-supervised pretraining,
        :mod:`imutune.train.selfsup`): a window whose majority label covers
        less than ``min_purity`` of it (or is unlabeled) gets ``y = -1``
        instead of being dropped. Such windows are not for supervised training.
    gravity : bool or str, optional
        Whether the accelerometer of recordings that declare nothing includes
        gravity (True / ``"included"``, False / ``"removed"``; ``--gravity``
        on the command line); a recording's own ``meta["gravity"]`` (npz
        ``gravity`` member, ``load_csv(gravity=...)``; the watch data:
        included) wins. The windows' contract gets the model's value where it
        declares one, else the recordings' (all declared values must agree).
        Undeclared stays unknown and is accepted against any model.
    remove_gravity_from : bool
        Convert a recording whose accelerometer includes gravity for a model
        (contract) trained without it: subtract the low-pass gravity
        estimate (:func:`remove_gravity`) from its accelerometer channels
        (a unit of acceleration, else a name starting with ``acc``); logged in
        ``unit_conversions``. Without it that case is an error. The reverse
        (adding gravity) is not possible in general and stays an error.

    Returns
    -------
    Windows
        ``x`` of shape (N, C, T) float32 with T = ``config.window_samples``, in
        the target units: the contract's where it declares them, else the
        first unit declared for the channel by any recording. Conversions
        (g <-> m/s^2 with 1 g = :data:`STANDARD_GRAVITY` m/s^2, rad/s <->
        deg/s) are listed in ``unit_conversions``; ``preprocessing`` holds the
        contract (without normalization) with the target units.

    Raises
    ------
    ValueError
        If ``recordings`` is empty, class lists differ, a channel is missing,
        a recording declares no units for a channel whose units are known
        (the model's or another recording's) and ``units`` does not state
        them (the message names the recording and the expected units), units
        of different quantities meet ('g' vs 'rad/s'), a recording declares
        gravity included / removed where the model (or another recording)
        declares the opposite (the message names the recording; see
        ``remove_gravity_from``), or no window passes the purity check.
    """
    if len(recordings) == 0:
        raise ValueError("recordings is empty; expected at least one Recording")
    if not isinstance(config, (WindowConfig, Preprocessing)):
        raise ValueError(f"config must be a WindowConfig or a Preprocessing, got {type(config).__name__}")
    class_names = tuple(dict.fromkeys(c for r in recordings for c in r.class_names))   # by name, first seen first
    if channels is not None:
        channels = tuple(channels)
    elif isinstance(config, Preprocessing):
        channels = config.channels
    else:
        channels = recordings[0].channels
    stated = parse_units(units, channels)
    sources = []
    for rec in recordings:
        own = _recording_units(rec, channels)
        if stated is not None:
            own = stated if own is None else tuple(o if o is not None else s for o, s in zip(own, stated))
        sources.append(own)
    target = _target_units(config, channels, sources)
    from ..data.recording import declared_gravity, parse_gravity

    stated_g = parse_gravity(gravity, where="the recordings (gravity=, --gravity)")
    own_g = [stated_g if declared_gravity(r) is None else declared_gravity(r) for r in recordings]
    target_g, g_source = _target_gravity(config, recordings, own_g)
    T, H = config.window_samples, config.hop_samples
    xs, ys, recs, users = [], [], [], []
    log: list[str] = []
    for i, rec in enumerate(recordings):
        rec = rec.with_classes(class_names).select_channels(channels)
        what = f"recording {rec.name or rec.user!r}"
        values, lines = _convert_units(rec.values, sources[i], target, channels, what)
        g = own_g[i]
        if g is not None and target_g is not None and g != target_g:
            if g and remove_gravity_from:
                cols = _acc_columns(channels, target)
                values = remove_gravity(values, rec.sample_rate_hz, cols)
                lines = [*lines, f"{what}: gravity removed from {', '.join(channels[j] for j in cols) or 'no channel'}"
                                 f" (low-pass {GRAVITY_CUTOFF_HZ:g} Hz estimate subtracted)"]
            else:
                fix = ("pass remove_gravity_from=True (--remove-gravity) to subtract a low-pass gravity estimate"
                       if g else "gravity cannot be added back to a gravity-free recording (it needs the device "
                       "orientation); record the raw accelerometer, or use a model trained without gravity")
                raise ValueError(f"{what} has its accelerometer with gravity {_say(g)}, but {g_source} has gravity "
                                 f"{_say(target_g)}; expected the same convention ({fix})")
        if lines:
            log.extend(lines)
            rec = Recording(values, rec.labels, rec.sample_rate_hz, rec.channels, rec.class_names, rec.user,
                            rec.name, rec.meta, rec.gaps)
        # windows never span a gap in the timestamps (the samples either side are not contiguous): each gap-free
        # piece is resampled and cut on its own; its windows keep the recording index i
        for piece in split_at_gaps(rec):
            piece = resample_recording(piece, config.sample_rate_hz)
            starts = window_starts(piece.n_samples, T, H)
            if starts.size == 0:
                continue
            idx = starts[:, None] + np.arange(T)[None, :]            # (W, T)
            lab = piece.labels[idx]                                  # (W, T)
            K = len(class_names)
            counts = np.stack([(lab == k).sum(axis=1) for k in range(K)], axis=1)  # (W, K)
            maj = counts.argmax(axis=1)
            keep = counts.max(axis=1) >= config.min_purity * T
            if unlabeled:
                maj = np.where(keep, maj, -1)
                keep = np.ones_like(keep)
            if not keep.any():
                continue
            win = piece.values[idx[keep]]                             # (W', T, C)
            xs.append(np.ascontiguousarray(win.transpose(0, 2, 1)))  # (W', T, C) -> (W', C, T)
            ys.append(maj[keep])
            recs.append(np.full(int(keep.sum()), i, dtype=np.int64))
            users.append(np.full(int(keep.sum()), rec.user, dtype=object))
    unit_set = None if all(t is None for t in target) else target
    spec = Preprocessing(channels=tuple(channels), class_names=tuple(class_names),
                         sample_rate_hz=config.sample_rate_hz, window_s=config.window_s, hop_s=config.hop_s,
                         units=unit_set, min_purity=config.min_purity, gravity=target_g)
    if not xs:
        raise ValueError(f"no window of {T} samples with label purity >= {config.min_purity} was found in "
                         f"{len(recordings)} recordings")
    return Windows(np.concatenate(xs).astype(np.float32), np.concatenate(ys).astype(np.int64),
                   np.concatenate(recs), np.concatenate(users).astype(str), class_names, channels, spec,
                   tuple(log))


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
