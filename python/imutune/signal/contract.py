"""The preprocessing contract: one type for how sensor samples become model inputs.

:class:`Preprocessing` holds everything a model was trained with and a phone
must reproduce: the channels (in model order) and their physical units, the
class names (logit order), the sample rate, the window and hop (seconds, and
the derived sample counts), the label-purity rule used to label training
windows, and the per-channel normalization. It is built and validated once:

* :func:`imutune.signal.windows.make_windows` builds it (without
  normalization) and :class:`~imutune.signal.windows.Windows` carries it;
* pretraining adds the normalization fitted on the training windows, and the
  :class:`~imutune.train.bundle.ModelBundle` carries the result;
* :func:`imutune.deploy.manifest.manifest_for` puts the bundle's contract into
  the :class:`~imutune.deploy.manifest.Manifest`, and every exported artifact
  embeds it; :func:`imutune.deploy.backends.load_backend` compares the two in
  full (hop included).

Serialized form (:meth:`Preprocessing.to_dict`, a flat JSON object whose keys
``model.json`` and ``manifest.json`` hold at their top level)::

    channels        list of C str          model channel order
    units           list of C (str|null)   physical unit per channel ('g', 'm/s^2', 'rad/s',
                    or null                'deg/s', ...); null: not declared
    class_names     list of K str          logit order
    sample_rate_hz  number > 0             Hz
    window_s        number > 0             s
    hop_s           number > 0             s
    window_samples  int                    round(window_s * sample_rate_hz), >= MIN_WINDOW_SAMPLES
    hop_samples     int                    max(1, round(hop_s * sample_rate_hz))
    min_purity      number in (0, 1]       training-window label purity
    norm_mean       list of C number|null  model input is (x - norm_mean) / norm_std
    norm_std        list of C number > 0|null
    gravity         bool (optional key)    whether the accelerometer channels include gravity (true:
                                           raw accelerometer, as a watch or phone records it; false:
                                           gravity removed, "linear acceleration"); written only when
                                           declared: a file without the key (every file from before
                                           this field) reads as null = unknown

:meth:`Preprocessing.from_dict` is strict: a missing or unknown key, a wrong
type, a NaN or infinite number, a non-positive std or a stored sample count
that disagrees with the seconds is a ``ValueError`` naming the source (file)
and the field.

Units are carried here; :func:`imutune.signal.windows.make_windows` converts
recordings to the contract's units. Two contracts agree on units, and on
``gravity``, where both declare them (an undeclared value is unknown, not a
mismatch). :meth:`Preprocessing.subset_channels` is the contract of a model
adapted to a subset of its channels (the channel-subset fine-tune,
:func:`imutune.personalize.finetune.finetune`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Mapping, Sequence

__all__ = ["Preprocessing", "MIN_WINDOW_SAMPLES", "MAX_WINDOW_SAMPLES", "DEFAULT_MIN_PURITY", "CONTRACT_KEYS",
           "KNOWN_UNITS", "OPTIONAL_CONTRACT_KEYS", "seconds_to_samples", "check_window_fields",
           "split_contract", "check_gravity"]

#: The one minimum-window rule of the package: a window has at least this many samples.
MIN_WINDOW_SAMPLES = 8
#: Largest window (and hop) in samples a contract accepts (guards hostile files: 1e308 Hz).
MAX_WINDOW_SAMPLES = 1 << 20
#: Default training-window label purity (the one place this default lives).
DEFAULT_MIN_PURITY = 0.8
#: Units imutune knows by name (others are carried as given).
KNOWN_UNITS = ("g", "m/s^2", "rad/s", "deg/s")
#: Keys of :meth:`Preprocessing.to_dict`, in order.
CONTRACT_KEYS = ("channels", "units", "class_names", "sample_rate_hz", "window_s", "hop_s", "window_samples",
                 "hop_samples", "min_purity", "norm_mean", "norm_std")
#: Keys :meth:`Preprocessing.to_dict` writes only when declared (absent: unknown; older files lack them).
OPTIONAL_CONTRACT_KEYS = ("gravity",)
_MAX_NAMES = 100_000          # channels or classes one contract may list
_MAX_NAME_CHARS = 256
_F32_MAX = 3.4028234663852886e38       # np.finfo(np.float32).max
_F32_TINY = 1.1754943508222875e-38     # np.finfo(np.float32).tiny


def seconds_to_samples(seconds: float, sample_rate_hz: float, *, minimum: int = 0) -> int:
    """``round(seconds * sample_rate_hz)``, at least ``minimum``: the one rule for window and hop lengths.

    Raises
    ------
    ValueError
        If the product is not finite (e.g. 1e308 Hz).
    """
    prod = float(seconds) * float(sample_rate_hz)
    if not math.isfinite(prod):
        raise ValueError(f"{seconds!r} s at {sample_rate_hz!r} Hz is not a finite number of samples")
    return max(minimum, int(round(prod)))


def _where(where: str) -> str:
    return f" in {where}" if where else ""


def _number(name: str, value: Any, where: str, *, positive: bool = True) -> float:
    """A real, finite number (bool refused), > 0 if ``positive``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) and not _is_np_number(value):
        raise ValueError(f"{name}{_where(where)} must be a positive number, got {value!r}")
    try:
        v = float(value)
    except (OverflowError, ValueError):
        raise ValueError(f"{name}{_where(where)} must be a positive number, got {value!r}") from None
    if not math.isfinite(v) or (positive and v <= 0):
        raise ValueError(f"{name}{_where(where)} must be a positive number, got {value!r}")
    return v


def _is_np_number(value: Any) -> bool:
    try:
        import numpy as np
    except ImportError:  # pragma: no cover
        return False
    return isinstance(value, (np.integer, np.floating)) and not isinstance(value, np.bool_)


def check_window_fields(window_s: Any, hop_s: Any, sample_rate_hz: Any, min_purity: Any, *,
                        where: str = "") -> tuple[float, float, float, float]:
    """Validate window length, hop, sample rate and purity; the one rule for every window config.

    Returns the four values as floats.

    Raises
    ------
    ValueError
        If a value is not a finite positive number, ``min_purity`` is outside
        (0, 1], or the window has fewer than :data:`MIN_WINDOW_SAMPLES` (or more
        than :data:`MAX_WINDOW_SAMPLES`) samples.
    """
    window_s = _number("window_s", window_s, where)
    hop_s = _number("hop_s", hop_s, where)
    sample_rate_hz = _number("sample_rate_hz", sample_rate_hz, where)
    if isinstance(min_purity, bool) or not isinstance(min_purity, (int, float)) and not _is_np_number(min_purity):
        raise ValueError(f"min_purity must be in (0, 1], got {min_purity!r}")
    purity = float(min_purity)
    if not (0.0 < purity <= 1.0):
        raise ValueError(f"min_purity must be in (0, 1], got {min_purity!r}")
    for name, sec in (("window_s", window_s), ("hop_s", hop_s)):
        prod = sec * sample_rate_hz
        if not math.isfinite(prod) or prod > MAX_WINDOW_SAMPLES:
            raise ValueError(f"{name} * sample_rate_hz{_where(where)} is {prod:g} samples ({sec!r} s at "
                             f"{sample_rate_hz!r} Hz); expected at most {MAX_WINDOW_SAMPLES}")
    n = seconds_to_samples(window_s, sample_rate_hz)
    if n < MIN_WINDOW_SAMPLES:
        raise ValueError(f"window_s * sample_rate_hz{_where(where)} gives {n} samples per window; expected "
                         f">= {MIN_WINDOW_SAMPLES}")
    return window_s, hop_s, sample_rate_hz, purity


def _names(name: str, value: Any, where: str) -> tuple[str, ...]:
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
        raise ValueError(f"{name}{_where(where)} must be a list of names, got {type(value).__name__} {_short(value)}")
    if len(value) == 0 or len(value) > _MAX_NAMES:
        raise ValueError(f"{name}{_where(where)} has {len(value)} entries; expected 1 to {_MAX_NAMES}")
    bad = [v for v in value if not isinstance(v, str) or not v.strip() or len(v) > _MAX_NAME_CHARS]
    if bad:
        raise ValueError(f"{name}{_where(where)} has invalid entries {_short(bad[:3])}; expected non-empty "
                         f"strings of at most {_MAX_NAME_CHARS} characters")
    seen: set[str] = set()
    dup = [v for v in value if v in seen or seen.add(v)]
    if dup:
        raise ValueError(f"{name}{_where(where)} lists {_short(sorted(set(dup))[:3])} more than once; expected "
                         "unique names")
    return tuple(value)


def _units(value: Any, n: int, where: str) -> tuple[str | None, ...] | None:
    if value is None:
        return None
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
        raise ValueError(f"units{_where(where)} must be null or a list of {n} unit strings (e.g. "
                         f"{list(KNOWN_UNITS)}), got {type(value).__name__} {_short(value)}")
    if len(value) != n:
        raise ValueError(f"units{_where(where)} has {len(value)} entries; expected {n} (one per channel)")
    bad = [u for u in value if u is not None and (not isinstance(u, str) or not u.strip() or len(u) > 32)]
    if bad:
        raise ValueError(f"units{_where(where)} has invalid entries {_short(bad[:3])}; expected unit strings "
                         f"such as {list(KNOWN_UNITS)} or null (not declared)")
    out = tuple(value)
    return None if all(u is None for u in out) else out


def _stats(name: str, value: Any, n: int, where: str, *, positive: bool) -> tuple[float, ...]:
    if isinstance(value, (str, bytes)) or not hasattr(value, "__len__") or not hasattr(value, "__iter__"):
        raise ValueError(f"{name}{_where(where)} must be a list of {n} numbers, got {type(value).__name__} "
                         f"{_short(value)}")
    if len(value) != n:
        raise ValueError(f"normalization {name}{_where(where)} has {len(value)} values; expected {n} (one per "
                         "channel)")
    out = []
    for i, v in enumerate(value):
        if isinstance(v, bool) or not isinstance(v, (int, float)) and not _is_np_number(v):
            raise ValueError(f"{name}[{i}]{_where(where)} must be a number, got {v!r}")
        try:
            f = float(v)
        except OverflowError:
            raise ValueError(f"{name}[{i}]{_where(where)} must be a finite number, got {_short(v)}") from None
        if not math.isfinite(f) or abs(f) > _F32_MAX:
            raise ValueError(f"{name}[{i}]{_where(where)} must be a finite number within float32 range (the model "
                             f"input is float32), got {v!r}")
        if positive and not f >= _F32_TINY:
            raise ValueError(f"{name}[{i}]{_where(where)} must be > 0 (a per-channel standard deviation of at least "
                             f"{_F32_TINY:.3g}, float32's smallest normal number), got {v!r}")
        out.append(f)
    return tuple(out)


def _short(v: Any, limit: int = 80) -> str:
    s = repr(v)
    return s if len(s) <= limit else s[:limit] + "..."


@dataclass(frozen=True)
class Preprocessing:
    """How sensor samples become the model's input (see the module notes).

    Parameters
    ----------
    channels : tuple of str
        C channel names in model order (unique, non-empty).
    class_names : tuple of str
        K class names in logit order (unique, non-empty).
    sample_rate_hz : float
        Model sample rate in Hz (> 0); streams at another rate are resampled.
    window_s, hop_s : float
        Window length and hop in seconds (> 0); ``window_samples`` must be at
        least :data:`MIN_WINDOW_SAMPLES`.
    units : tuple of (str or None), optional
        Physical unit per channel (``'g'``, ``'m/s^2'``, ``'rad/s'``,
        ``'deg/s'``...); None (or all None): not declared.
    min_purity : float, default 0.8
        Minimum fraction of a training window's samples carrying its label.
    norm_mean, norm_std : tuple of float, optional
        Per-channel normalization in the channels' units (model input
        ``(x - mean) / std``); both None for windows not yet normalized
        (:class:`~imutune.signal.windows.Windows`), both set for a model.
    gravity : bool, optional
        Whether the accelerometer channels include gravity (True: raw
        accelerometer, e.g. the watch data and Android ``TYPE_ACCELEROMETER``;
        False: gravity removed, "linear acceleration"); None: not declared
        (unknown).

    Raises
    ------
    ValueError
        On any invalid field (the message names it, the value and the rule).
    """

    channels: tuple[str, ...]
    class_names: tuple[str, ...]
    sample_rate_hz: float
    window_s: float
    hop_s: float
    units: tuple[str | None, ...] | None = None
    min_purity: float = DEFAULT_MIN_PURITY
    norm_mean: tuple[float, ...] | None = None
    norm_std: tuple[float, ...] | None = None
    gravity: bool | None = None

    def __post_init__(self) -> None:
        self._validate("preprocessing")

    def _validate(self, where: str) -> None:
        set_ = object.__setattr__
        channels = _names("channels", self.channels, where)
        set_(self, "channels", channels)
        set_(self, "class_names", _names("class_names", self.class_names, where))
        w, h, fs, p = check_window_fields(self.window_s, self.hop_s, self.sample_rate_hz, self.min_purity,
                                          where=where)
        set_(self, "window_s", w)
        set_(self, "hop_s", h)
        set_(self, "sample_rate_hz", fs)
        set_(self, "min_purity", p)
        set_(self, "units", _units(self.units, len(channels), where))
        if (self.norm_mean is None) != (self.norm_std is None):
            raise ValueError(f"normalization{_where(where)} needs both norm_mean and norm_std (or neither); got "
                             f"norm_mean={_short(self.norm_mean)}, norm_std={_short(self.norm_std)}")
        if self.norm_mean is not None:
            set_(self, "norm_mean", _stats("norm_mean", self.norm_mean, len(channels), where, positive=False))
            set_(self, "norm_std", _stats("norm_std", self.norm_std, len(channels), where, positive=True))
        set_(self, "gravity", check_gravity(self.gravity, where=where))

    # ------------------------------------------------------------------ derived

    @property
    def window_samples(self) -> int:
        """Window length T in samples (>= :data:`MIN_WINDOW_SAMPLES`)."""
        return seconds_to_samples(self.window_s, self.sample_rate_hz)

    @property
    def hop_samples(self) -> int:
        """Hop in samples (at least 1)."""
        return seconds_to_samples(self.hop_s, self.sample_rate_hz, minimum=1)

    @property
    def has_normalization(self) -> bool:
        return self.norm_mean is not None

    @property
    def num_channels(self) -> int:
        return len(self.channels)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def describe(self) -> str:
        """One line for messages: channels, rate, window and hop."""
        return (f"{len(self.channels)} channels {list(self.channels)}, {len(self.class_names)} classes, "
                f"{self.window_s:g} s window / {self.hop_s:g} s hop at {self.sample_rate_hz:g} Hz "
                f"(T={self.window_samples}, hop {self.hop_samples} samples)")

    # ------------------------------------------------------------------ derived copies

    def with_normalization(self, mean: Sequence[float], std: Sequence[float]) -> "Preprocessing":
        """A copy with per-channel ``mean`` / ``std`` (validated)."""
        return replace(self, norm_mean=tuple(float(v) for v in mean), norm_std=tuple(float(v) for v in std))

    def without_normalization(self) -> "Preprocessing":
        return replace(self, norm_mean=None, norm_std=None)

    def with_classes(self, class_names: Sequence[str]) -> "Preprocessing":
        """A copy with another class list (a new head); ``self`` if the list is the same."""
        names = tuple(class_names)
        return self if names == self.class_names else replace(self, class_names=names)

    def subset_channels(self, channels: Sequence[str], *, where: str = "") -> "Preprocessing":
        """The contract of a model adapted to ``channels``, a subset of this contract's channels.

        Units and normalization statistics are this contract's entries for
        those channels, in the order given; everything else is kept.

        Parameters
        ----------
        channels : sequence of str
            Channel names, each among :attr:`channels`, each once.
        where : str
            Names the caller in messages.

        Raises
        ------
        ValueError
            If ``channels`` is empty, repeats a name, or names a channel this
            contract does not have (the message lists the channels seen and
            the ones expected).
        """
        names = tuple(channels)
        unknown = [c for c in names if c not in self.channels]
        if not names or unknown or len(set(names)) != len(names):
            why = (f"{unknown} are not among the model's channels" if unknown else
                   "it is empty" if not names else "it repeats a channel")
            raise ValueError(f"channels {list(names)}{_where(where)}: {why}; expected a non-empty subset of the "
                             f"model's channels {list(self.channels)} (each once; names are matched exactly)")
        if names == self.channels:
            return self
        idx = [self.channels.index(c) for c in names]

        def pick(v):
            return None if v is None else tuple(v[i] for i in idx)

        return replace(self, channels=names, units=pick(self.units), norm_mean=pick(self.norm_mean),
                       norm_std=pick(self.norm_std))

    def window_fields(self) -> dict[str, float]:
        """``window_s``, ``hop_s``, ``sample_rate_hz``, ``min_purity``: the fields of a window config."""
        return {"window_s": self.window_s, "hop_s": self.hop_s, "sample_rate_hz": self.sample_rate_hz,
                "min_purity": self.min_purity}

    # ------------------------------------------------------------------ comparison

    def differences(self, other: "Preprocessing", *, normalization: bool = True,
                    class_names: bool = True, input_only: bool = False) -> list[tuple[str, Any, Any]]:
        """Fields on which ``self`` and ``other`` disagree, as ``(field, self's value, other's value)``.

        Numbers compare with a relative tolerance of 1e-9 (JSON round trips
        are exact; this absorbs float32 -> float64 noise only). Units compare
        only per channel where both declare one, ``gravity`` only where both
        declare it. ``input_only`` compares only
        what shapes one model input (channels, units, sample rate, window),
        not the hop or purity of how windows were chosen.
        """
        if input_only:
            keep = {"channels", "units", "gravity", "sample_rate_hz", "window_s", "window_samples"}
            return [d for d in self.differences(other, normalization=False, class_names=False) if d[0] in keep]
        out: list[tuple[str, Any, Any]] = []
        if self.channels != other.channels:
            out.append(("channels", list(self.channels), list(other.channels)))
        if class_names and self.class_names != other.class_names:
            out.append(("class_names", list(self.class_names), list(other.class_names)))
        for f in ("sample_rate_hz", "window_s", "hop_s", "min_purity"):
            a, b = getattr(self, f), getattr(other, f)
            if not math.isclose(a, b, rel_tol=1e-9, abs_tol=0.0):
                out.append((f, a, b))
        for f in ("window_samples", "hop_samples"):
            if getattr(self, f) != getattr(other, f):
                out.append((f, getattr(self, f), getattr(other, f)))
        if self.units is not None and other.units is not None and len(self.units) == len(other.units):
            if any(a is not None and b is not None and a != b for a, b in zip(self.units, other.units)):
                out.append(("units", list(self.units), list(other.units)))
        if self.gravity is not None and other.gravity is not None and self.gravity != other.gravity:
            out.append(("gravity", self.gravity, other.gravity))
        if normalization:
            for f in ("norm_mean", "norm_std"):
                a, b = getattr(self, f), getattr(other, f)
                if (a is None) != (b is None) or (a is not None and (len(a) != len(b) or not all(
                        math.isclose(u, v, rel_tol=1e-6, abs_tol=1e-9) for u, v in zip(a, b)))):
                    out.append((f, None if a is None else list(a), None if b is None else list(b)))
        return out

    def check_matches(self, other: "Preprocessing", *, where: str, other_name: str, this_name: str = "it",
                      normalization: bool = True, class_names: bool = True, input_only: bool = False) -> None:
        """Raise ``ValueError`` on the first field that differs (see :meth:`differences`)."""
        diff = self.differences(other, normalization=normalization, class_names=class_names, input_only=input_only)
        if diff:
            f, a, b = diff[0]
            more = f" (and {', '.join(d[0] for d in diff[1:])})" if len(diff) > 1 else ""
            raise ValueError(f"{where}: {this_name} has {f} = {_short(a, 200)} but {other_name} has "
                             f"{_short(b, 200)}{more}; expected the same preprocessing")

    # ------------------------------------------------------------------ serialization

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready flat dict with the keys :data:`CONTRACT_KEYS` (derived sample counts included), plus
        ``gravity`` when it is declared (so a contract without it writes exactly what older versions wrote)."""
        extra = {} if self.gravity is None else {"gravity": bool(self.gravity)}
        return {"channels": list(self.channels), "units": None if self.units is None else list(self.units),
                "class_names": list(self.class_names), "sample_rate_hz": self.sample_rate_hz,
                "window_s": self.window_s, "hop_s": self.hop_s, "window_samples": self.window_samples,
                "hop_samples": self.hop_samples, "min_purity": self.min_purity,
                "norm_mean": None if self.norm_mean is None else list(self.norm_mean),
                "norm_std": None if self.norm_std is None else list(self.norm_std), **extra}

    @classmethod
    def from_dict(cls, d: Any, *, source: str, require_normalization: bool = False) -> "Preprocessing":
        """Parse :meth:`to_dict` output strictly.

        Parameters
        ----------
        d : dict
            Exactly the keys :data:`CONTRACT_KEYS`, and optionally those of
            :data:`OPTIONAL_CONTRACT_KEYS` (absent ``gravity``: unknown).
        source : str
            Names the file (or artifact) in messages, e.g. ``"manifest 'out/manifest.json'"``.
        require_normalization : bool
            Refuse null ``norm_mean`` / ``norm_std`` (a model's contract).

        Raises
        ------
        ValueError
            If ``d`` is not a dict, a key is missing or unknown, a value has
            the wrong type or is out of range, or a stored sample count differs
            from the one the seconds give. The message names ``source`` and the field.
        """
        if not isinstance(d, Mapping):
            raise ValueError(f"{source}: preprocessing must be a JSON object, got {type(d).__name__}")
        missing = [k for k in CONTRACT_KEYS if k not in d]
        unknown = sorted(str(k) for k in d if k not in CONTRACT_KEYS and k not in OPTIONAL_CONTRACT_KEYS)
        if missing or unknown:
            raise ValueError(f"{source}: preprocessing fields missing {missing} / unknown {unknown}; expected "
                             f"exactly {list(CONTRACT_KEYS)}, optionally {list(OPTIONAL_CONTRACT_KEYS)} (a file from an older imutune or another tool: "
                             "write it again with this version)")
        try:
            p = cls(channels=_as_tuple(d["channels"]), class_names=_as_tuple(d["class_names"]),
                    sample_rate_hz=d["sample_rate_hz"], window_s=d["window_s"], hop_s=d["hop_s"],
                    units=_as_tuple(d["units"]), min_purity=d["min_purity"],
                    norm_mean=_as_tuple(d["norm_mean"]), norm_std=_as_tuple(d["norm_std"]),
                    gravity=d.get("gravity"))
        except ValueError as e:
            raise ValueError(f"{source}: {e}") from None
        for k in ("window_samples", "hop_samples"):
            v = d[k]
            if isinstance(v, bool) or not isinstance(v, int) or v != getattr(p, k):
                raise ValueError(f"{source}: {k} is {_short(v)} but window_s/hop_s at sample_rate_hz give "
                                 f"{getattr(p, k)}; expected the derived value")
        if require_normalization and not p.has_normalization:
            raise ValueError(f"{source}: norm_mean / norm_std are null; a model's preprocessing needs its "
                             "per-channel normalization")
        return p


def _as_tuple(v: Any) -> Any:
    return tuple(v) if isinstance(v, list) else v


def split_contract(d: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split a flat file dict into (contract part with :data:`CONTRACT_KEYS` and any of
    :data:`OPTIONAL_CONTRACT_KEYS`, the rest)."""
    keys = CONTRACT_KEYS + OPTIONAL_CONTRACT_KEYS
    return ({k: d[k] for k in keys if k in d}, {k: v for k, v in d.items() if k not in keys})


def check_gravity(value: Any, *, where: str = "") -> bool | None:
    """A declared ``gravity`` flag: True, False or None (unknown); numpy booleans are accepted.

    Raises
    ------
    ValueError
        If ``value`` is anything else (0/1, strings...); the message names ``where``.
    """
    if value is None or isinstance(value, bool):
        return value
    try:
        import numpy as np
    except ImportError:  # pragma: no cover
        np = None
    if np is not None and isinstance(value, np.bool_):
        return bool(value)
    raise ValueError(f"gravity{_where(where)} must be true (accelerometer includes gravity), false (gravity "
                     f"removed) or null (unknown), got {_short(value)}")
