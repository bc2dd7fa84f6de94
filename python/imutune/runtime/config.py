"""Replay settings: delivery size, pacing, threads, NaN and gap policies, smoothing, device profiles."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import _validation as V

__all__ = ['ReplayConfig', 'NAN_POLICIES', 'GAP_POLICIES']


#: ``ReplayConfig.nan_policy`` values.
NAN_POLICIES = ("hold", "error")


#: ``ReplayConfig.gap_policy`` values.
GAP_POLICIES = ("hold", "reset", "error")


@dataclass(frozen=True)
class ReplayConfig:
    """How a recording is streamed through the runtime.

    Attributes
    ----------
    chunk_samples : int or None, default 1
        Samples per sensor delivery at the manifest rate (1: sample by
        sample). None: one delivery per hop, ending exactly at each window
        end (batched sensor events, as the phone profiles use).
    realtime : bool, default False
        Pace deliveries at the sample rate (wall clock); else as fast as possible.
    num_threads : int, default 1
        Intra-op threads for a backend given as a file path; with a
        ``profile``, a backend object must have this many threads.
    max_windows : int, optional
        Stop after this many windows (per stream in :func:`replay`, in
        total in :func:`replay_many`).
    smoothing_k : int, default 1
        Also report accuracy after a causal majority vote over the last k
        windows of a stream (1: no smoothing). Ties go to the current
        window's class, then to the lower class index.
    nan_policy : {"hold", "error"}, default "hold"
        Non-finite samples: ``"hold"`` replaces each NaN/Inf value with the
        last finite value of its channel (the channel mean, i.e. 0 after
        normalization, before any), counting repaired samples and values;
        ``"error"`` raises.
    gap_policy : {"hold", "reset", "error"}, default "hold"
        Gaps in a stream's timestamps: ``"hold"`` fills gaps of at most
        ``max_hold_gap_s`` by repeating the last sample (unlabeled) and
        treats longer ones as ``"reset"``; ``"reset"`` empties the buffer and
        starts the window sequence again after the gap (samples of the
        unfinished window are dropped and counted); ``"error"`` raises.
    max_hold_gap_s : float, default 0.25
        Longest gap ``"hold"`` fills, in seconds.
    cpu_affinity : tuple of int, optional
        Pin the process to these cores during the replay.
    profile : str, optional
        Name of the device profile the config came from (see
        :meth:`from_profile`); with it, backend thread counts are enforced.
    block_samples : int, default 8192
        Block size in which in-memory recordings are fed (file streams use
        their reader's).
    """

    chunk_samples: int | None = 1
    realtime: bool = False
    num_threads: int = 1
    max_windows: int | None = None
    smoothing_k: int = 1
    nan_policy: str = "hold"
    gap_policy: str = "hold"
    max_hold_gap_s: float = 0.25
    cpu_affinity: tuple[int, ...] | None = None
    profile: str | None = None
    block_samples: int = 8192

    def __post_init__(self) -> None:
        if self.chunk_samples is not None:
            V.check_int_at_least("chunk_samples", self.chunk_samples, 1)
        V.check_int_at_least("num_threads", self.num_threads, 1)
        if self.max_windows is not None:
            V.check_int_at_least("max_windows", self.max_windows, 1)
        if not isinstance(self.realtime, (bool, np.bool_)):
            raise ValueError(f"realtime must be a bool, got {self.realtime!r}")
        V.check_int_at_least("smoothing_k", self.smoothing_k, 1)
        V.check_choice("nan_policy", self.nan_policy, NAN_POLICIES)
        V.check_choice("gap_policy", self.gap_policy, GAP_POLICIES)
        if not (float(self.max_hold_gap_s) >= 0) or not np.isfinite(float(self.max_hold_gap_s)):
            raise ValueError(f"max_hold_gap_s must be a finite number >= 0, got {self.max_hold_gap_s!r}")
        V.check_int_at_least("block_samples", self.block_samples, 1)
        if self.cpu_affinity is not None:
            cores = tuple(int(V.check_int_at_least("core id in cpu_affinity", c, 0)) for c in self.cpu_affinity)
            if not cores:
                raise ValueError("cpu_affinity is empty; use None for no pinning")
            object.__setattr__(self, "cpu_affinity", cores)
            if self.num_threads > len(cores):
                raise ValueError(f"num_threads={self.num_threads} exceeds the {len(cores)} pinned core(s) "
                                 f"{list(cores)}")

    @classmethod
    def from_profile(cls, profile: Any, **overrides: Any) -> "ReplayConfig":
        """A config enforcing a device profile (:mod:`imutune.runtime.profiles`), checked against this host.

        Parameters
        ----------
        profile : str or DeviceProfile
            A built-in profile name or a profile.
        **overrides
            Other :class:`ReplayConfig` fields (e.g. ``realtime=False`` to
            replay a long recording quickly under the profile's threads and
            pinning, ``smoothing_k=5``).

        Raises
        ------
        ValueError
            If the profile is unknown, asks for more threads than this host
            has, or pins a core it lacks.
        """
        from .profiles import get_profile

        p = get_profile(profile).check()
        fields = dict(chunk_samples=p.chunk_samples, realtime=p.realtime, num_threads=p.num_threads,
                      cpu_affinity=p.cpu_affinity, profile=p.name)
        fields.update(overrides)
        return cls(**fields)
