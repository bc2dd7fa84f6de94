"""The fleet report: per-user before/after macro-F1, the gain distribution, throughput, CPU use, failures.

:func:`build_report` turns the per-user rows of a run into one JSON-able dict; :func:`write_fleet_report`
writes ``fleet_report.json``, ``fleet_report.md`` and ``gain_hist.png`` (histogram of the per-user macro-F1
gain, after minus before, on each user's test windows) into the output folder, atomically.

Throughput counts the users computed in this run only (``computed``; users ``skipped`` because their
verified outputs already existed cost no job): ``users_per_hour = computed / wall_s * 3600`` and
``users_per_core_hour = users_per_hour / (workers * cpus_per_user)``. ``task_cpu_utilisation`` is the
process CPU time of the user jobs over ``wall_s * workers * cpus_per_user``; ``host_cpu_utilisation`` is the
whole host's busy share from ``/proc/stat`` over the same interval (it includes every other process).
``cpu_budget`` (when the run recorded one, :func:`imutune.fleet.proc.cpu_budget`) splits the CPU seconds of
the interval by process: the driver, the Ray worker processes (the user jobs, and the workers' CPU outside
the jobs: start-up, imports, Ray's own threads), ``raylet``, ``gcs_server``, the dashboard, agents and log
monitor of a local Ray instance, and ``other processes`` (everything else on the host), each also per
computed user.
"""
from __future__ import annotations

import io
import os
from collections import Counter
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .._io import write_bytes_atomic, write_json_atomic, write_text_atomic

__all__ = ["build_report", "write_fleet_report", "gain_histogram", "report_markdown", "STATUSES"]

STATUSES = ("computed", "skipped", "failed", "pending")
_MD_USER_ROWS = 500   # per-user lines in the Markdown report (the JSON has every user)


def _f(v: Any) -> float | None:
    return None if v is None else float(v)


def _user_row(r: dict) -> dict[str, Any]:
    res = r.get("result") or {}
    t = r.get("timing") or {}
    before, after = res.get("before"), res.get("after")
    return {"user_id": r["user_id"], "status": r["status"], "reason": r.get("reason"), "error": r.get("error"),
            "before_macro_f1": _f(before["macro_f1"]) if before else None,
            "after_macro_f1": _f(after["macro_f1"]) if after else None,
            "before_accuracy": _f(before["accuracy"]) if before else None,
            "after_accuracy": _f(after["accuracy"]) if after else None,
            "gain_macro_f1": _f(res.get("gain_macro_f1")),
            "random_forest_macro_f1": _f((res.get("random_forest") or {}).get("macro_f1")),
            "model_minus_random_forest": _f(res.get("model_minus_random_forest")),
            "n_calibration": res.get("n_calibration"),
            "n_test": res.get("n_test"), "patch_bytes": res.get("patch_bytes"),
            "patched_sha256": res.get("patched_sha256"), "seconds": _f(t.get("total_s")), "cpu_s": _f(t.get("cpu_s")),
            "pid": t.get("pid"), "node": t.get("node")}


def _dist(values: Sequence[float]) -> dict[str, float] | None:
    a = np.asarray([v for v in values if v is not None], dtype=np.float64)
    if a.size == 0:
        return None
    p5, p25, p50, p75, p95 = np.percentile(a, [5, 25, 50, 75, 95])
    return {"n": int(a.size), "mean": float(a.mean()), "std": float(a.std()), "min": float(a.min()),
            "p5": float(p5), "p25": float(p25), "median": float(p50), "p75": float(p75), "p95": float(p95),
            "max": float(a.max())}


def build_report(rows: Sequence[dict], run: dict[str, Any]) -> dict[str, Any]:
    """The fleet report of one run.

    Parameters
    ----------
    rows : sequence of dict
        One per user: ``user_id``, ``status`` (one of :data:`STATUSES`), ``result`` (the job's result or
        ``None``), ``timing``, and ``reason``/``error`` for failures.
    run : dict
        Run facts: ``wall_s``, ``workers``, ``cpus_per_user``, ``host_cpu_utilisation``, ``command``, ...

    Returns
    -------
    dict
        ``run``, ``counts``, ``throughput``, ``quality`` (distributions of before/after macro-F1 and gain
        over all users with results, computed or skipped), ``failures_by_reason``, ``failures`` and ``users``.

    Raises
    ------
    ValueError
        If a row has an unknown status.
    """
    users = [_user_row(r) for r in rows]
    for u in users:
        if u["status"] not in STATUSES:
            raise ValueError(f"user {u['user_id']!r} has status {u['status']!r}; expected one of {list(STATUSES)}")
    counts = Counter(u["status"] for u in users)
    counts_d = {s: int(counts.get(s, 0)) for s in STATUSES}
    counts_d["users"] = len(users)
    counts_d["done"] = counts_d["computed"] + counts_d["skipped"]
    computed = [u for u in users if u["status"] == "computed"]
    wall = float(run.get("wall_s") or 0.0)
    cores = int(run.get("workers") or 0) * int(run.get("cpus_per_user") or 1)
    jobs = [u for u in users if u["status"] in ("computed", "failed") and u["cpu_s"] is not None]
    throughput: dict[str, Any] = {"computed": len(computed), "wall_s": wall, "workers": run.get("workers"),
                                  "cores": cores}
    if wall > 0 and computed:
        uph = len(computed) / wall * 3600.0
        throughput.update(users_per_hour=uph, users_per_core_hour=uph / max(cores, 1),
                          task_cpu_utilisation=(sum(u["cpu_s"] for u in jobs) / (wall * max(cores, 1))),
                          job_seconds=_dist([u["seconds"] for u in computed]))
    throughput["host_cpu_utilisation"] = run.get("host_cpu_utilisation")
    budget = _budget(run.get("cpu_budget"), sum(u["cpu_s"] for u in jobs), len(computed), wall)
    if budget is not None:
        throughput["cpu_budget"] = budget
    with_res = [u for u in users if u["status"] in ("computed", "skipped")]
    gains = [u["gain_macro_f1"] for u in with_res if u["gain_macro_f1"] is not None]
    quality = {"before_macro_f1": _dist([u["before_macro_f1"] for u in with_res]),
               "after_macro_f1": _dist([u["after_macro_f1"] for u in with_res]),
               "gain_macro_f1": _dist(gains),
               "random_forest_macro_f1": _dist([u["random_forest_macro_f1"] for u in with_res]),
               "model_minus_random_forest": _dist([u["model_minus_random_forest"] for u in with_res]),
               "improved": int(sum(g > 0 for g in gains)), "worse": int(sum(g < 0 for g in gains)),
               "unchanged": int(sum(g == 0 for g in gains))}
    failed = [u for u in users if u["status"] == "failed"]
    return {"run": dict(run), "counts": counts_d, "throughput": throughput, "quality": quality,
            "failures_by_reason": dict(sorted(Counter(u["reason"] for u in failed).items())),
            "failures": [{"user_id": u["user_id"], "reason": u["reason"], "error": u["error"]} for u in failed],
            "users": users}


def _budget(b: dict | None, job_cpu_s: float, n_computed: int, wall_s: float) -> dict[str, Any] | None:
    """CPU seconds by process kind, the jobs split out of the workers, per computed user and in cores."""
    if not b or not b.get("by_kind"):
        return None
    rows = {}
    for kind, g in b["by_kind"].items():
        if kind == "worker":
            rows["worker: user jobs"] = job_cpu_s
            rows["worker: outside the jobs"] = max(0.0, g["cpu_s"] - job_cpu_s)
        else:
            rows[kind] = g["cpu_s"]
    if b.get("other_processes_cpu_s") is not None:
        rows["other processes (not this run)"] = b["other_processes_cpu_s"]
    per_user = {k: (v / n_computed if n_computed else None) for k, v in rows.items()}
    cores = {k: (v / wall_s if wall_s > 0 else None) for k, v in rows.items()}
    threads = {k: g["threads_max"] for k, g in b["by_kind"].items()}
    own = b.get("own_cpu_s", 0.0)
    return {"cpu_s": rows, "cpu_s_per_user": per_user, "cores": cores, "threads_max": threads,
            "own_cpu_s": own, "own_cpu_s_per_user": own / n_computed if n_computed else None,
            "outside_jobs_cpu_s_per_user": ((own - job_cpu_s) / n_computed) if n_computed else None,
            "host_busy_s": b.get("host_busy_s"), "worker_processes": len(b.get("workers", []))}


def gain_histogram(report: dict[str, Any]):
    """A matplotlib ``Figure``: histogram of the per-user macro-F1 gain (object API, no pyplot)."""
    from matplotlib.figure import Figure

    gains = [u["gain_macro_f1"] for u in report["users"] if u["gain_macro_f1"] is not None]
    fig = Figure(figsize=(6.4, 4.0))
    ax = fig.subplots()
    if gains:
        ax.hist(gains, bins=min(40, max(5, len(gains) // 5)), color="#3b7dd8", edgecolor="white")
        ax.axvline(0.0, color="black", lw=1)
        ax.axvline(float(np.mean(gains)), color="#d8503b", lw=1.5, ls="--", label=f"mean {np.mean(gains):+.3f}")
        ax.legend(loc="upper left")
    else:
        ax.text(0.5, 0.5, "no user with a before/after score", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("macro-F1 gain (after - before), test windows")
    ax.set_ylabel("users")
    c = report["counts"]
    ax.set_title(f"{report['run'].get('method', '')}: {c['done']} users done, {c['failed']} failed")
    return fig


def _fmt(v: Any, spec: str = ".4f") -> str:
    if v is None:
        return "-"
    return format(v, spec) if isinstance(v, float) else str(v)


def report_markdown(report: dict[str, Any]) -> str:
    """The report as Markdown: run, throughput, quality, failures by reason, per-user table."""
    r, c, t, q = report["run"], report["counts"], report["throughput"], report["quality"]
    lines = ["# Fleet personalization report", ""]
    if r.get("command"):
        lines += [f"Command: `{r['command']}`", ""]
    if r.get("note"):
        lines += [str(r["note"]), ""]
    lines += [f"Method `{r.get('method')}`, {r.get('workers')} workers x {r.get('cpus_per_user')} CPU, "
              f"Ray address `{r.get('address')}`, host cores {r.get('host_cores')}, load average at the end "
              f"{_fmt(r.get('load_average'))}.", "",
              "| users | computed | skipped | failed | pending |", "|---|---|---|---|---|",
              f"| {c['users']} | {c['computed']} | {c['skipped']} | {c['failed']} | {c['pending']} |", "",
              "## Throughput (users computed in this run)", "",
              "| wall s | users/hour | users/core-hour | task CPU utilisation | host CPU utilisation | median job s |",
              "|---|---|---|---|---|---|",
              f"| {_fmt(t.get('wall_s'), '.1f')} | {_fmt(t.get('users_per_hour'), '.0f')} | "
              f"{_fmt(t.get('users_per_core_hour'), '.0f')} | {_fmt(t.get('task_cpu_utilisation'), '.2f')} | "
              f"{_fmt(t.get('host_cpu_utilisation'), '.2f')} | "
              f"{_fmt((t.get('job_seconds') or {}).get('median'), '.2f')} |", ""]
    b = t.get("cpu_budget")
    if b:
        lines += ["## Where the CPU went (this run's process tree and the rest of the host)", "",
                  "| process | CPU s | CPU s per computed user | cores (CPU s / wall s) | threads (max) |",
                  "|---|---|---|---|---|"]
        for k, v in b["cpu_s"].items():
            th = b["threads_max"].get("worker" if k.startswith("worker") else k)
            lines.append(f"| {k} | {v:.2f} | {_fmt(b['cpu_s_per_user'][k], '.3f')} | {_fmt(b['cores'][k], '.2f')} "
                         f"| {_fmt(th)} |")
        lines += ["", f"This run: {b['own_cpu_s']:.1f} CPU s ({_fmt(b['own_cpu_s_per_user'], '.3f')} per user, of "
                      f"which {_fmt(b['outside_jobs_cpu_s_per_user'], '.3f')} outside the user jobs); "
                      f"{b['worker_processes']} worker processes.", ""]
    lines += ["## Quality (users with results, test windows)", "",
              "| | n | mean | median | p5 | p95 |", "|---|---|---|---|---|---|"]
    for k in ("before_macro_f1", "after_macro_f1", "gain_macro_f1", "random_forest_macro_f1",
              "model_minus_random_forest"):
        d = q.get(k)
        if d:
            lines.append(f"| {k} | {d['n']} | {d['mean']:.4f} | {d['median']:.4f} | {d['p5']:.4f} | {d['p95']:.4f} |")
    ahead = [u["model_minus_random_forest"] for u in report["users"] if u.get("model_minus_random_forest") is not None]
    lines += ["", f"Improved {q['improved']}, worse {q['worse']}, unchanged {q['unchanged']}. "
                  "Histogram: `gain_hist.png`."]
    if ahead:
        lines += ["", f"Classical reference (RandomForest on 13 statistics per channel, the same calibration "
                      f"windows): the personalized model is ahead for {sum(a > 0 for a in ahead)} of {len(ahead)} "
                      f"users, behind for {sum(a < 0 for a in ahead)}."]
    lines += ["", "## Failures by reason", ""]
    if report["failures_by_reason"]:
        lines += ["| reason | users |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in report["failures_by_reason"].items()]
        lines += ["", "| user | reason | error |", "|---|---|---|"]
        lines += [f"| {f['user_id']} | {f['reason']} | {str(f['error']).replace('|', '/')[:300]} |"
                  for f in report["failures"][:_MD_USER_ROWS]]
    else:
        lines.append("None.")
    lines += ["", "## Users", "", "| user | status | before macro-F1 | after macro-F1 | gain | RandomForest macro-F1 | "
              "calibration windows | test windows | job s |", "|---|---|---|---|---|---|---|---|---|"]
    for u in report["users"][:_MD_USER_ROWS]:
        lines.append(f"| {u['user_id']} | {u['status']} | {_fmt(u['before_macro_f1'])} | {_fmt(u['after_macro_f1'])} "
                     f"| {_fmt(u['gain_macro_f1'], '+.4f')} | {_fmt(u.get('random_forest_macro_f1'))} "
                     f"| {_fmt(u['n_calibration'])} | {_fmt(u['n_test'])} | {_fmt(u['seconds'], '.2f')} |")
    if len(report["users"]) > _MD_USER_ROWS:
        lines.append(f"\n({len(report['users']) - _MD_USER_ROWS} more users in fleet_report.json.)")
    return "\n".join(lines) + "\n"


def write_fleet_report(out_dir: str | os.PathLike, report: dict[str, Any], *, name: str = "fleet_report"
                       ) -> dict[str, Path]:
    """Write ``<name>.json``, ``<name>.md`` and ``gain_hist.png`` into ``out_dir`` (atomically)."""
    out = Path(out_dir)
    fig = gain_histogram(report)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return {"json": write_json_atomic(out / f"{name}.json", report),
            "md": write_text_atomic(out / f"{name}.md", report_markdown(report)),
            "png": write_bytes_atomic(out / "gain_hist.png", buf.getvalue())}
