"""The one reader of this host's CPU description (``/proc/cpuinfo``), shared by reports and benchmarks."""
from __future__ import annotations

import functools
import platform
from pathlib import Path

__all__ = ["cpuinfo", "cpu_name", "cpu_flags"]

_CPUINFO = Path("/proc/cpuinfo")


@functools.lru_cache(maxsize=1)
def cpuinfo() -> dict[str, str]:
    """The first processor block of ``/proc/cpuinfo`` as ``{key: value}`` (keys as written there,
    e.g. ``"model name"``, ``"cpu MHz"``, ``"flags"``); empty where the file cannot be read (macOS,
    restricted containers)."""
    out: dict[str, str] = {}
    try:
        text = _CPUINFO.read_text(errors="replace")
    except OSError:
        return out
    for line in text.splitlines():
        if not line.strip():
            if out:
                break
            continue
        key, sep, value = line.partition(":")
        if sep:
            out.setdefault(key.strip(), value.strip())
    return out


def cpu_name() -> str:
    """The CPU model name, or the platform's processor/machine string where ``/proc/cpuinfo`` has none."""
    return cpuinfo().get("model name") or platform.processor() or platform.machine()


def cpu_flags() -> set[str]:
    """Instruction-set flags (x86 ``flags``, Arm ``Features``); empty when unknown."""
    info = cpuinfo()
    return set((info.get("flags") or info.get("Features") or "").split())
