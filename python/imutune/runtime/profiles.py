"""Device profiles: named sets of constraints the reference runtime runs under.

A phone does not give a model the whole machine. A profile states what the
model gets, and the runtime (:func:`imutune.runtime.replay`,
:func:`imutune.runtime.replay_stream`) and the latency benchmark
(``imutune bench latency``) enforce it on this host:

``num_threads``
    Intra-op threads of every backend: ``intra_op_num_threads`` for ONNX
    Runtime, the ExecuTorch CPU threadpool size
    (``portable_lib._unsafe_reset_threadpool``), ``torch.set_num_threads``
    for eager PyTorch.
``cpu_affinity``
    Core ids the whole process (every existing thread, and so every thread
    created later) is pinned to with :func:`os.sched_setaffinity` while the
    profile is active; None leaves the affinity alone.
``realtime``
    Pace sensor deliveries at the sensor rate (sample ``i`` is available at
    ``t0 + (i + 1) / fs``) instead of replaying as fast as possible.
``chunk_samples``
    Samples per sensor delivery; None delivers once per hop, right when a
    window completes (Android sensor batching with the report latency set
    to the hop period; iOS Core Motion batched updates).

The per-window deadline is always the hop period of the manifest
(``hop_s``): a result later than the next hop means the app falls behind.

Built-in profiles (:data:`PROFILES`):

* ``phone-big-core`` -- one inference thread pinned to one core (core 0 of
  this host standing in for the phone's big core), real-time pacing, one
  sensor delivery per hop. The usual budget of a background HAR model on a
  big.LITTLE phone.
* ``phone-two-cores`` -- two threads pinned to cores 0 and 1, real-time
  pacing, one delivery per hop (a mid-range phone giving the app two cores).
* ``phone-big-core-per-sample`` -- as ``phone-big-core`` but every sample is
  delivered on its own (an unbatched sensor listener).
* ``host`` -- one thread, no pinning, no pacing: offline evaluation as fast
  as the host allows.

A thread count above the number of cores the profile may use, or a core id
this host does not have (or this process may not use), is a ``ValueError``
raised by :meth:`DeviceProfile.check` before anything runs.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import asdict, dataclass, replace
from typing import Iterator

from .. import _validation as V

__all__ = ["DeviceProfile", "PROFILES", "get_profile", "list_profiles", "available_cores", "pin_process",
           "apply_profile"]


def _initial_cores() -> tuple[int, ...]:
    if hasattr(os, "sched_getaffinity"):
        return tuple(sorted(os.sched_getaffinity(0)))
    return tuple(range(os.cpu_count() or 1))


#: The process's CPU affinity when this module was imported, before any pinning by imutune.
_INITIAL_CORES = _initial_cores()


def available_cores() -> tuple[int, ...]:
    """Core ids this process may run on: its CPU affinity before imutune pinned anything
    (``os.sched_getaffinity(0)`` at import; all cores where unsupported)."""
    return _INITIAL_CORES


@dataclass(frozen=True)
class DeviceProfile:
    """A documented set of runtime constraints (see the module docstring).

    Parameters
    ----------
    name : str
        Identifier (``--profile`` on the command line).
    description : str
        What device or situation it stands for.
    num_threads : int
        Intra-op threads for every backend (>= 1).
    cpu_affinity : tuple of int or None
        Core ids to pin the process to; None: no pinning.
    realtime : bool
        Pace deliveries at the sensor rate.
    chunk_samples : int or None
        Samples per sensor delivery; None: one delivery per hop.
    """

    name: str
    description: str
    num_threads: int = 1
    cpu_affinity: tuple[int, ...] | None = None
    realtime: bool = False
    chunk_samples: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"profile name must be a non-empty string, got {self.name!r}")
        V.check_int_at_least(f"num_threads of profile {self.name!r}", self.num_threads, 1)
        if self.cpu_affinity is not None:
            cores = tuple(self.cpu_affinity)
            if not cores:
                raise ValueError(f"cpu_affinity of profile {self.name!r} is empty; use None for no pinning")
            for c in cores:
                V.check_int_at_least(f"core id in cpu_affinity of profile {self.name!r}", c, 0)
            if len(set(cores)) != len(cores):
                raise ValueError(f"cpu_affinity of profile {self.name!r} repeats core ids: {list(cores)}")
            object.__setattr__(self, "cpu_affinity", tuple(int(c) for c in cores))
            if self.num_threads > len(cores):
                raise ValueError(f"profile {self.name!r} asks for {self.num_threads} threads but pins only "
                                 f"{len(cores)} core(s) {list(cores)}; threads would share cores")
        if not isinstance(self.realtime, bool):
            raise ValueError(f"realtime of profile {self.name!r} must be a bool, got {self.realtime!r}")
        if self.chunk_samples is not None:
            V.check_int_at_least(f"chunk_samples of profile {self.name!r}", self.chunk_samples, 1)

    def check(self) -> "DeviceProfile":
        """Check that this host can honour the profile.

        Returns
        -------
        DeviceProfile
            ``self``.

        Raises
        ------
        ValueError
            If a pinned core id is not one this process may use, or
            ``num_threads`` exceeds the cores available (pinned or not).
        """
        cores = available_cores()
        if self.cpu_affinity is not None:
            missing = [c for c in self.cpu_affinity if c not in cores]
            if missing:
                raise ValueError(f"profile {self.name!r} pins cores {list(self.cpu_affinity)}, but this host (or "
                                 f"this process) has no core(s) {missing}; available core ids: {list(cores)}")
        if self.num_threads > len(cores):
            raise ValueError(f"profile {self.name!r} asks for {self.num_threads} threads, but this process may use "
                             f"only {len(cores)} core(s) {list(cores)}")
        return self

    def to_dict(self) -> dict:
        """JSON-ready fields."""
        d = asdict(self)
        d["cpu_affinity"] = None if self.cpu_affinity is None else list(self.cpu_affinity)
        return d

    def with_overrides(self, **changes) -> "DeviceProfile":
        """A copy with fields changed (validated again)."""
        return replace(self, **changes)


PROFILES: dict[str, DeviceProfile] = {p.name: p for p in (
    DeviceProfile("phone-big-core", "one inference thread pinned to one (big) core, real-time pacing at the "
                  "sensor rate, one sensor delivery per hop (batched sensor events)",
                  num_threads=1, cpu_affinity=(0,), realtime=True, chunk_samples=None),
    DeviceProfile("phone-two-cores", "two inference threads pinned to two cores, real-time pacing, one "
                  "sensor delivery per hop", num_threads=2, cpu_affinity=(0, 1), realtime=True,
                  chunk_samples=None),
    DeviceProfile("phone-big-core-per-sample", "as phone-big-core, but every sensor sample is delivered on "
                  "its own (unbatched sensor listener)", num_threads=1, cpu_affinity=(0,), realtime=True,
                  chunk_samples=1),
    DeviceProfile("host", "offline evaluation: one thread, no pinning, no pacing",
                  num_threads=1, cpu_affinity=None, realtime=False, chunk_samples=None),
)}


def list_profiles() -> list[str]:
    """Names of the built-in profiles."""
    return sorted(PROFILES)


def get_profile(profile: str | DeviceProfile) -> DeviceProfile:
    """A built-in profile by name (a :class:`DeviceProfile` is returned as is).

    Raises
    ------
    ValueError
        If the name is unknown (the message lists the known names).
    """
    if isinstance(profile, DeviceProfile):
        return profile
    if profile not in PROFILES:
        raise ValueError(f"device profile {profile!r} is unknown; expected one of {list_profiles()}")
    return PROFILES[profile]


def _task_ids() -> list[int]:
    try:
        return [int(t) for t in os.listdir("/proc/self/task")]
    except OSError:
        return [0]


def pin_process(cores: tuple[int, ...] | list[int]) -> tuple[int, ...] | None:
    """Pin every thread of this process to ``cores``.

    ``os.sched_setaffinity`` acts on one thread; this applies it to each
    thread in ``/proc/self/task`` (threads created afterwards inherit the
    mask of their creator).

    Returns
    -------
    tuple of int or None
        The previous affinity of the calling thread (to restore), or None
        where pinning is not supported (then nothing was changed).

    Raises
    ------
    ValueError
        If a core id is not available to this process.
    """
    if not hasattr(os, "sched_setaffinity"):
        return None
    cores = tuple(int(c) for c in cores)
    avail = available_cores()
    missing = [c for c in cores if c not in avail]
    if missing:
        raise ValueError(f"cannot pin to cores {list(cores)}: this host (or this process) has no core(s) "
                         f"{missing}; available core ids: {list(avail)}")
    previous = tuple(sorted(os.sched_getaffinity(0)))
    for tid in _task_ids():
        try:
            os.sched_setaffinity(tid, cores)
        except (ProcessLookupError, PermissionError):  # thread ended meanwhile / not ours
            pass
    return previous


@contextlib.contextmanager
def apply_profile(profile: str | DeviceProfile) -> Iterator[DeviceProfile]:
    """Check ``profile`` against this host and pin the process for the ``with`` block.

    Thread counts are not set here (each backend takes ``num_threads``);
    the affinity is restored on exit.

    Yields
    ------
    DeviceProfile
        The checked profile.
    """
    p = get_profile(profile).check()
    previous = pin_process(p.cpu_affinity) if p.cpu_affinity is not None else None
    try:
        yield p
    finally:
        if previous is not None:
            pin_process(previous)
