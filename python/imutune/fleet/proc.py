"""Where a fleet run's CPU goes: CPU seconds and threads of this process and its descendants (Linux ``/proc``).

A local Ray instance started by the driver (``ray.init(address="local")``) runs as descendants of the driver
process: ``gcs_server``, ``raylet`` (and below it the worker processes ``ray::IDLE`` /
``ray::<task name>`` plus ``ray::DashboardAgent`` and ``ray::RuntimeEnvAgent``), ``log_monitor.py``,
``dashboard.py`` (started in a reduced form even with ``include_dashboard=False``) and the autoscaler's
``monitor.py``. :func:`process_tree` reads each one's user + system CPU time (``/proc/<pid>/stat`` fields 14
and 15) and thread count; :func:`cpu_budget` turns two snapshots into CPU seconds per kind of process, and
:func:`host_cpu_s` gives the whole host's busy seconds (``/proc/stat``) so that "other processes" -- everything
on the host that is not this run -- is the difference. On hosts without ``/proc`` every function returns
empty results (``{}`` / ``None``), never raises.

CPU time of a process that exits between two snapshots is lost (a killed worker); a process started between
them counts from zero (a new worker's start-up and imports are included).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

__all__ = ["ProcSample", "PROCESS_KINDS", "process_tree", "host_cpu_s", "cpu_budget"]

#: kinds of :func:`process_tree`; ``driver`` is the root process (the fleet driver)
PROCESS_KINDS = ("driver", "worker", "raylet", "gcs_server", "dashboard", "dashboard_agent", "runtime_env_agent",
                 "log_monitor", "monitor", "other")

try:
    _TICK_S = 1.0 / os.sysconf("SC_CLK_TCK")
except (AttributeError, ValueError, OSError):
    _TICK_S = 0.01


@dataclass(frozen=True)
class ProcSample:
    """One process at one moment: ``cpu_s`` user + system CPU seconds since it started, ``threads``."""

    pid: int
    ppid: int
    kind: str
    title: str
    cpu_s: float
    threads: int


def _kind(argv: list[str]) -> str:
    first = argv[0] if argv else ""
    if first.startswith("ray::"):
        return {"ray::DashboardAgent": "dashboard_agent", "ray::RuntimeEnvAgent": "runtime_env_agent"}.get(
            first.strip(), "worker")
    name = Path(first).name
    if name in ("raylet", "gcs_server"):
        return name
    scripts = [Path(a).name for a in argv[1:4]]
    for script, kind in (("log_monitor.py", "log_monitor"), ("dashboard.py", "dashboard"), ("agent.py", "dashboard_agent"),
                         ("monitor.py", "monitor")):
        if script in scripts:
            return kind
    return "other"


def _read(pid: int) -> tuple[int, float, int, list[str]] | None:
    """(ppid, cpu seconds, threads, argv) of a process, or None when it is gone or unreadable."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return None
    try:
        fields = stat.rsplit(")", 1)[1].split()   # after "pid (comm)": state ppid ... utime(14) stime(15) ...
        ppid, utime, stime, threads = int(fields[1]), int(fields[11]), int(fields[12]), int(fields[17])
    except (IndexError, ValueError):
        return None
    return ppid, (utime + stime) * _TICK_S, threads, [a for a in argv if a]


def process_tree(root_pid: int | None = None) -> dict[int, ProcSample]:
    """``{pid: ProcSample}`` of ``root_pid`` (default: this process, kind ``driver``) and all its descendants.

    Returns ``{}`` where ``/proc`` cannot be read.
    """
    root = os.getpid() if root_pid is None else int(root_pid)
    try:
        pids = [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()]
    except OSError:
        return {}
    info = {pid: r for pid in pids if (r := _read(pid)) is not None}
    children: dict[int, list[int]] = {}
    for pid, (ppid, *_rest) in info.items():
        children.setdefault(ppid, []).append(pid)
    out: dict[int, ProcSample] = {}
    stack = [root] if root in info else []
    while stack:
        pid = stack.pop()
        ppid, cpu, threads, argv = info[pid]
        kind = "driver" if pid == root else _kind(argv)
        out[pid] = ProcSample(pid, ppid, kind, (argv[0] if argv else "")[:80].strip(), cpu, threads)
        stack.extend(children.get(pid, ()))
    return out


def host_cpu_s() -> tuple[float, float] | None:
    """(busy, total) CPU seconds of the whole host since boot, summed over cores (``/proc/stat``), or None.

    Busy is everything but ``idle`` and ``iowait``.
    """
    try:
        vals = [float(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except (OSError, ValueError, IndexError):
        return None
    idle = vals[3] + (vals[4] if len(vals) > 4 else 0.0)
    return (sum(vals) - idle) * _TICK_S, sum(vals) * _TICK_S


def cpu_budget(before: dict[int, ProcSample], after: dict[int, ProcSample],
               host_before: tuple[float, float] | None = None,
               host_after: tuple[float, float] | None = None) -> dict:
    """CPU seconds spent between two :func:`process_tree` snapshots, by kind of process.

    Returns
    -------
    dict
        ``by_kind``: ``{kind: {"cpu_s", "processes", "threads_max"}}`` for the kinds seen in ``after``;
        ``own_cpu_s``: their sum; ``workers``: per worker process ``{"pid", "cpu_s", "threads"}``;
        with both host readings also ``host_busy_s`` and ``other_processes_cpu_s`` (host busy seconds not
        spent by this process tree: other users' jobs; never below 0).
    """
    by_kind: dict[str, dict] = {}
    workers = []
    for pid, s in after.items():
        b = before.get(pid)
        d = s.cpu_s - b.cpu_s if b is not None and b.cpu_s <= s.cpu_s else s.cpu_s   # else: new (or reused pid)
        g = by_kind.setdefault(s.kind, {"cpu_s": 0.0, "processes": 0, "threads_max": 0})
        g["cpu_s"] += d
        g["processes"] += 1
        g["threads_max"] = max(g["threads_max"], s.threads)
        if s.kind == "worker":
            workers.append({"pid": pid, "cpu_s": d, "threads": s.threads})
    own = sum(g["cpu_s"] for g in by_kind.values())
    out: dict = {"by_kind": dict(sorted(by_kind.items(), key=lambda kv: -kv[1]["cpu_s"])), "own_cpu_s": own,
                 "workers": sorted(workers, key=lambda w: -w["cpu_s"])}
    if host_before is not None and host_after is not None:
        busy = host_after[0] - host_before[0]
        out.update(host_busy_s=busy, other_processes_cpu_s=max(0.0, busy - own))
    return out
