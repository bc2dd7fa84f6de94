"""Fleet benchmark: a simulated fleet personalized on Ray, its throughput, scaling and crash recovery.

``imutune bench fleet --users 200 --out DIR`` (or ``--quick``: 20 users):

1. **Base model**: ``mobilecnn1d`` pretrained on watch subjects 1-5 (cached in ``DIR/base``).
2. **Simulated fleet** (:mod:`imutune.fleet.simulate`, SIMULATED users, not real ones): N users from the
   other subjects (6-10) x arm side x a simulated sensor distortion x a simulated label-noise habit, each
   with a calibration session (calibrate-then-use: the first half of every exercise recording, ~150
   calibration windows after ``max_calibration_windows``) and a clean-labelled use session; plus
   ``n_broken`` deliberately broken users (a truncated file, a recording too short for a window) to show
   that failures are recorded and do not stop the fleet.
3. **Scaling**: the same users with 1 worker and with 2 workers, on one local Ray instance
   (``num_cpus`` CPUs), each into a fresh folder, in interleaved rounds of ``round_users`` users (1 worker,
   then 2 workers, on the same users; then the next users) so that a change of the host's load hits both
   alike: users/hour, users/core-hour, CPU utilisation, summed over the rounds. Before the first round one
   untimed warm-up run of ``max(workers)`` users starts every worker process (imports, base model cached),
   so each worker count is timed in the steady state of a long fleet; its wall time is reported apart.
   Each round records where the CPU went (:mod:`imutune.fleet.proc`: user jobs, the workers outside the
   jobs, driver, raylet, GCS, dashboard, agents, log monitor, and other processes on the host); the
   scaling entry adds the **CPU-budget ceiling**: the speed-up the cores allow if nothing but this run used
   them, ``min(hi / lo, cores * J / (lo * (J + O)))`` with ``J`` the user jobs' and ``O`` everything else of
   this run's CPU seconds per user in the ``hi``-worker rounds (CPU seconds, so it does not move with the
   host's load) -- the reference against which a speed-up measured on a shared host can be read. Per round
   the report lists both runs' wall time and the other processes' cores, and the speed-up over the *quiet*
   rounds (other processes below ``QUIET_OTHER_CORES`` cores in both runs of the round), labelled as such.
4. **Killed worker**: a 2-worker run in which one worker process (a ``ray::imutune_fleet_user`` process
   started by this benchmark) is SIGKILLed after ``kill_after_fraction`` of the users; Ray retries its
   task. Then a rerun: every user must be skipped (verified), and every user's patch hash and scores must
   equal the uninterrupted 2-worker run's.
5. **Killed fleet** (the driver crashes): ``imutune fleet`` as a subprocess with its own Ray, its whole
   process group SIGKILLed after ``kill_after_fraction`` of the users; then a rerun here, which must skip
   exactly the users finished before the crash, compute the rest, and match the reference.

Timings depend on the host load; the report records the load average and labels figures measured while
other processes competed for the CPUs. Outputs: ``fleet_bench.json``, ``fleet_bench.md``, ``gain_hist.png``
(the 2-worker run) and each run's own fleet report under ``DIR/run_*``.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from .. import _validation as V
from .._io import write_json_atomic
from ..fleet.report import gain_histogram
from ..fleet.run import DONE_FILE, FAILED_FILE, TASK_NAME, run_fleet
from ..fleet.simulate import SimulationConfig, simulate_fleet
from ..fleet.worker import FleetConfig
from ..train.loop import PRETRAIN, TrainConfig
from .report import host_info, markdown_table, write_report

__all__ = ["FleetBenchConfig", "quick_config", "run_fleet_bench", "compare_runs"]


@dataclass(frozen=True)
class FleetBenchConfig:
    """Settings of ``imutune bench fleet``."""

    n_users: int = 200                                   # simulated users (plus n_broken broken ones)
    n_broken: int = 2                                    # deliberately broken users (0..2)
    model_name: str = "mobilecnn1d"                      # base model
    source_subjects: tuple[int, ...] = (1, 2, 3, 4, 5)   # watch subjects the base model is pretrained on
    pretrain: TrainConfig = replace(PRETRAIN, epochs=15)
    # the personalization job's throughput and recovery; the classical reference is off here (it is on by
    # default in imutune fleet, where it adds one RandomForest fit per user)
    fleet: FleetConfig = FleetConfig(method="filterloss-cv", max_calibration_windows=150, classical_reference=False)
    simulation: SimulationConfig = SimulationConfig()
    workers: tuple[int, ...] = (1, 2)                    # scaling runs, in this order
    num_cpus: int = 2                                    # CPUs of the local Ray instance
    kill_worker: bool = True                             # phase 4
    kill_driver: bool = True                             # phase 5
    kill_after_fraction: float = 0.3                     # share of users finished before a kill
    round_users: int = 10                                # scaling: users per interleaved round (1 w, 2 w, 1 w, ...)
    extra: dict = field(default_factory=dict)            # free-form notes recorded in the report

    def __post_init__(self) -> None:
        V.check_int_at_least("n_users", self.n_users, 2)
        V.check_in_range("n_broken", self.n_broken, 0, 2)
        V.check_int_at_least("num_cpus", self.num_cpus, 1)
        V.check_int_at_least("round_users", self.round_users, 1)
        if not self.workers or any(int(w) < 1 for w in self.workers):
            raise ValueError(f"workers must be a non-empty tuple of integers >= 1, got {self.workers!r}")
        V.check_fraction("kill_after_fraction", self.kill_after_fraction, high_closed=False)


def quick_config(**overrides: Any) -> FleetBenchConfig:
    """20 users, a shorter pretraining: a few minutes on 2 cores."""
    return replace(FleetBenchConfig(n_users=20, pretrain=replace(PRETRAIN, epochs=8), round_users=5),
                   **overrides)


# --------------------------------------------------------------------------- setup

def _base(out: Path, cfg: FleetBenchConfig, recs: list, progress: bool) -> Path:
    from ..signal.windows import WindowConfig, make_windows
    from ..train.bundle import save_bundle
    from ..train.pretrain import pretrain

    d = out / "base"
    key = {"model_name": cfg.model_name, "source_subjects": list(cfg.source_subjects), "pretrain": asdict(cfg.pretrain)}
    try:
        if json.loads((d / "base_config.json").read_text()) == json.loads(json.dumps(key)) and \
                (d / "model.safetensors").is_file():
            return d
    except (OSError, ValueError):
        pass
    src = [r for r in recs if r.meta.get("subject") in set(cfg.source_subjects)]
    b = pretrain(make_windows(src, WindowConfig()), model_name=cfg.model_name, train_config=cfg.pretrain,
                 progress=progress)
    save_bundle(b, d)
    write_json_atomic(d / "base_config.json", key)
    return d


def _broken_users(users_dir: Path, n: int, recs: list) -> list[str]:
    """Write up to two broken users: a truncated .npz and a recording shorter than one window."""
    from ..data.recordings import Recording, save_npz

    made = []
    if n >= 1:
        d = users_dir / "broken_truncated"
        save_npz(recs[0], d / "rec.npz")
        data = (d / "rec.npz").read_bytes()
        (d / "rec.npz").write_bytes(data[: len(data) // 3])
        made.append(d.name)
    if n >= 2:
        r = recs[1]
        d = users_dir / "broken_short"
        save_npz(Recording(r.values[:40], r.labels[:40], r.sample_rate_hz, r.channels, r.class_names, "broken_short",
                           "short"), d / "rec.npz")
        made.append(d.name)
    return made


# --------------------------------------------------------------------------- kills

def _ppid(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def _own_task_processes() -> list[int]:
    """PIDs of processes titled ``ray::imutune_fleet_user`` that descend from this process."""
    me, out = os.getpid(), []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            title = (p / "cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
        except OSError:
            continue
        if not title.startswith(f"ray::{TASK_NAME}"):
            continue
        pid, anc = int(p.name), int(p.name)
        for _ in range(64):
            anc = _ppid(anc)
            if anc is None or anc <= 1:
                break
            if anc == me:
                out.append(pid)
                break
    return out


def _count_done(run_dir: Path) -> int:
    d = run_dir / "users"
    if not d.is_dir():
        return 0
    return sum(1 for u in d.iterdir() if (u / DONE_FILE).is_file() or (u / FAILED_FILE).is_file())


def _kill_worker_when(run_dir: Path, threshold: int, stop: threading.Event, log: dict) -> None:
    while not stop.is_set():
        if _count_done(run_dir) >= threshold:
            pids = _own_task_processes()
            if pids:
                os.kill(pids[0], signal.SIGKILL)
                log.update(killed_pid=pids[0], users_done_at_kill=_count_done(run_dir), t_unix_s=time.time())
                return
        time.sleep(0.05)


# --------------------------------------------------------------------------- comparison

def compare_runs(a: dict, b: dict) -> dict[str, Any]:
    """Per-user identity of two fleet reports: patch hash, before/after scores and window counts.

    Returns ``{"compared": n, "identical": n, "differ": [user ids], "missing": [user ids]}`` over the
    users with results in ``a``.
    """
    keys = ("patched_sha256", "before_macro_f1", "after_macro_f1", "before_accuracy", "after_accuracy",
            "n_calibration", "n_test")
    ub = {u["user_id"]: u for u in b["users"]}
    differ, missing, n = [], [], 0
    for u in a["users"]:
        if u["status"] not in ("computed", "skipped"):
            continue
        n += 1
        v = ub.get(u["user_id"])
        if v is None or v["status"] not in ("computed", "skipped"):
            missing.append(u["user_id"])
        elif any(u[k] != v[k] for k in keys):
            differ.append(u["user_id"])
    return {"compared": n, "identical": n - len(differ) - len(missing), "differ": differ, "missing": missing}


def _merge_rounds(rounds: list[dict], full: dict) -> dict[str, Any]:
    """One phase entry from interleaved rounds: sums of computed users, wall and CPU seconds."""
    computed = sum(r["counts"]["computed"] for r in rounds)
    wall = sum(r["throughput"]["wall_s"] or 0.0 for r in rounds)
    cores = max((r["throughput"]["cores"] or 0) for r in rounds) or 1
    cpu_s = sum(u["cpu_s"] or 0.0 for r in rounds for u in r["users"] if u["status"] in ("computed", "failed"))
    job_cpu = sum(u["cpu_s"] or 0.0 for r in rounds for u in r["users"] if u["status"] == "computed")
    host = [(r["throughput"]["host_cpu_utilisation"], r["throughput"]["wall_s"] or 0.0) for r in rounds
            if r["throughput"]["host_cpu_utilisation"] is not None]
    uph = computed / wall * 3600.0 if wall > 0 else None
    jobs = sorted(u["seconds"] for r in rounds for u in r["users"] if u["status"] == "computed" and u["seconds"])
    budget = _merge_budgets([r["throughput"].get("cpu_budget") for r in rounds], computed, wall)
    return {"counts": full["counts"], "rounds": len(rounds), "computed_in_rounds": computed, "wall_s": wall,
            "cpu_budget": budget,
            "workers": full["throughput"].get("workers") or rounds[0]["throughput"]["workers"],
            "users_per_hour": uph, "users_per_core_hour": uph / cores if uph else None,
            "task_cpu_utilisation": cpu_s / (wall * cores) if wall > 0 else None,
            "host_cpu_utilisation": (sum(h * t for h, t in host) / sum(t for _, t in host)) if host else None,
            "users_per_cpu_hour": computed / job_cpu * 3600.0 if job_cpu > 0 else None,
            "median_job_s": jobs[len(jobs) // 2] if jobs else None,
            "load_average_end": rounds[-1]["run"].get("load_average"),
            "failures_by_reason": full["failures_by_reason"]}


def _merge_budgets(budgets: list[dict | None], computed: int, wall: float) -> dict[str, Any] | None:
    """Sum of the rounds' CPU budgets (:func:`imutune.fleet.report.build_report`): CPU s by process kind,
    per computed user, in cores (CPU s / wall s), and the max thread count per kind."""
    budgets = [b for b in budgets if b]
    if not budgets or computed <= 0:
        return None
    cpu: dict[str, float] = {}
    threads: dict[str, int] = {}
    for b in budgets:
        for k, v in b["cpu_s"].items():
            cpu[k] = cpu.get(k, 0.0) + float(v)
        for k, v in b["threads_max"].items():
            threads[k] = max(threads.get(k, 0), int(v))
    other = "other processes (not this run)"
    own = sum(v for k, v in cpu.items() if k != other)
    jobs = cpu.get("worker: user jobs", 0.0)
    return {"cpu_s": cpu, "cpu_s_per_user": {k: v / computed for k, v in cpu.items()},
            "cores": {k: v / wall for k, v in cpu.items()} if wall > 0 else {}, "threads_max": threads,
            "own_cpu_s_per_user": own / computed, "outside_jobs_cpu_s_per_user": (own - jobs) / computed,
            "other_processes_cores": cpu[other] / wall if other in cpu and wall > 0 else None}


def _phase(report: dict) -> dict[str, Any]:
    t, c = report["throughput"], report["counts"]
    cpu_s = sum(u["cpu_s"] or 0.0 for u in report["users"] if u["status"] == "computed")
    return {"counts": c, "wall_s": t.get("wall_s"), "workers": t.get("workers"), "users_per_hour": t.get("users_per_hour"),
            "users_per_core_hour": t.get("users_per_core_hour"), "task_cpu_utilisation": t.get("task_cpu_utilisation"),
            "host_cpu_utilisation": t.get("host_cpu_utilisation"),
            "users_per_cpu_hour": (c["computed"] / cpu_s * 3600.0) if cpu_s > 0 else None,
            "median_job_s": (t.get("job_seconds") or {}).get("median"),
            "load_average_end": report["run"].get("load_average"), "failures_by_reason": report["failures_by_reason"]}


# --------------------------------------------------------------------------- run

def run_fleet_bench(out_dir: str | os.PathLike, config: FleetBenchConfig = FleetBenchConfig(), *,
                    command: str | None = None, progress: bool = True) -> dict[str, Any]:
    """Run the fleet benchmark (module notes) and write its report into ``out_dir``.

    Returns
    -------
    dict
        ``config``, ``host``, ``phases`` (per run: counts, wall time, users/hour, users/core-hour, CPU
        utilisation), ``scaling``, ``kill_worker``, ``kill_driver`` and ``targets`` (each with the measured
        figure and whether it is met).

    Raises
    ------
    ValueError
        If Ray is not installed.
    """
    import ray

    from ..data.recordings import load_watch

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t_all = time.perf_counter()
    recs = load_watch()
    base = _base(out, config, recs, progress)
    users_dir = out / "users"
    sim = simulate_fleet(users_dir, config.n_users, config=config.simulation, recordings=recs)
    broken = _broken_users(users_dir, config.n_broken, recs)
    n_all = config.n_users + len(broken)
    fleet_cfg = config.fleet
    res: dict[str, Any] = {"config": asdict(config), "host": host_info(), "command": command,
                           "note": "SIMULATED fleet (imutune.fleet.simulate); timings measured on a shared host "
                                   "under whatever load the load averages show", "phases": {}}
    started = not ray.is_initialized()
    if started:
        import logging

        ray.init(address="local", num_cpus=config.num_cpus, include_dashboard=False, log_to_driver=False,
                 logging_level=logging.WARNING)
    reports: dict[str, dict] = {}
    try:
        from ..fleet.users import discover_users

        specs = discover_users(users_dir)
        rounds: dict[str, list[dict]] = {f"run_{w}w": [] for w in config.workers}
        for name in rounds:
            shutil.rmtree(out / name, ignore_errors=True)
        step = max(1, int(config.round_users))
        real = [u for u in specs if u.user_id not in set(broken)]
        shutil.rmtree(out / "run_warmup", ignore_errors=True)     # a warm-up must compute, not skip
        warm = run_fleet(base, real[:max(config.workers)], out / "run_warmup", config=fleet_cfg,
                         workers=max(config.workers), progress=False, command=command)
        res["warmup"] = {"users": len(real[:max(config.workers)]), "workers": max(config.workers),
                         "computed": warm["counts"]["computed"], "wall_s": warm["throughput"]["wall_s"],
                         "note": "untimed: starts every worker process (imports, base model) before the rounds"}
        for i in range(0, len(specs), step):     # interleaved rounds: host-load drift hits every worker count alike
            for w in config.workers:
                name = f"run_{w}w"
                rounds[name].append(run_fleet(base, specs[i:i + step], out / name, config=fleet_cfg, workers=w,
                                              progress=False, command=command))
        for w in config.workers:
            name = f"run_{w}w"
            full = run_fleet(base, specs, out / name, config=fleet_cfg, workers=w, progress=False, command=command)
            reports[name] = full
            res["phases"][name] = _merge_rounds(rounds[name], full)
        ref_name = f"run_{max(config.workers)}w"
        ref = reports[ref_name]
        if len(config.workers) >= 2:
            lo, hi = min(config.workers), max(config.workers)
            a, b = res["phases"][f"run_{lo}w"], res["phases"][f"run_{hi}w"]
            res["scaling"] = {"workers": [lo, hi], "users_per_hour": [a["users_per_hour"], b["users_per_hour"]],
                              "speedup": (b["users_per_hour"] / a["users_per_hour"]) if a["users_per_hour"] else None,
                              "identical_results": compare_runs(reports[f"run_{lo}w"], ref),
                              **_ceiling(a, b, lo, hi, config.num_cpus),
                              **_round_pairs(rounds[f"run_{lo}w"], rounds[f"run_{hi}w"])}
        threshold = max(1, int(config.kill_after_fraction * n_all))
        if config.kill_worker:
            name = "run_kill_worker"
            shutil.rmtree(out / name, ignore_errors=True)
            stop, log = threading.Event(), {}
            th = threading.Thread(target=_kill_worker_when, args=(out / name, threshold, stop, log), daemon=True)
            th.start()
            r1 = run_fleet(base, users_dir, out / name, config=fleet_cfg, workers=max(config.workers),
                           progress=progress, command=command)
            stop.set()
            th.join()
            r2 = run_fleet(base, users_dir, out / name, config=fleet_cfg, workers=max(config.workers),
                           progress=progress, command=command)
            res["kill_worker"] = {"kill": log or {"killed_pid": None, "why": "no task process found before the end"},
                                  "first_run": _phase(r1), "rerun_counts": r2["counts"],
                                  "identical_to_reference": compare_runs(ref, r2)}
        if config.kill_driver:
            res["kill_driver"] = _kill_driver_phase(out, base, users_dir, fleet_cfg, ref, threshold, config, command,
                                                    progress)
    finally:
        if started:
            ray.shutdown()
    res["total_s"] = time.perf_counter() - t_all
    res["simulation"] = {"n_users": len(sim), "broken_users": broken,
                         "distortions": sorted({u["distortion"] for u in sim}),
                         "label_noises": sorted({u["label_noise"] for u in sim}),
                         "mean_noisy_label_fraction": sum(u["noisy_label_fraction"] for u in sim) / len(sim)}
    res["quality"] = ref["quality"]
    res["targets"] = _targets(res, config)
    fig = gain_histogram(ref)
    write_report(out, "fleet_bench", res, _markdown(res), {"gain_hist": fig})
    return res


def _ceiling(a: dict, b: dict, lo: int, hi: int, num_cpus: int) -> dict[str, Any]:
    """CPU-budget ceiling of the speed-up (module notes) and the other processes' share in both phases."""
    ba, bb = a.get("cpu_budget") or {}, b.get("cpu_budget") or {}
    out: dict[str, Any] = {"other_processes_cores": [ba.get("other_processes_cores"), bb.get("other_processes_cores")],
                           "own_cpu_s_per_user": [ba.get("own_cpu_s_per_user"), bb.get("own_cpu_s_per_user")],
                           "outside_jobs_cpu_s_per_user": [ba.get("outside_jobs_cpu_s_per_user"),
                                                           bb.get("outside_jobs_cpu_s_per_user")]}
    cores = min(hi, num_cpus, os.cpu_count() or num_cpus)
    own = bb.get("own_cpu_s_per_user")
    jobs = (bb.get("cpu_s_per_user") or {}).get("worker: user jobs")
    if own and jobs:
        # CPU seconds only (robust to the host's load): with `lo` workers a user costs at least its job's CPU
        # time in wall time (one single-threaded job, nothing else on its core); with `hi` workers the `cores`
        # CPUs must do all of the run's own CPU work (jobs + driver + Ray's processes). Taken from the same
        # (hi) phase so that the per-user job cost is the same on both sides.
        out["cpu_budget_ceiling"] = min(float(hi) / lo, (jobs / lo) * cores / own)
    return out


#: a round counts as quiet when the host's other processes used less than this many cores during it
QUIET_OTHER_CORES = 0.1


def _round_pairs(lo_rounds: list[dict], hi_rounds: list[dict]) -> dict[str, Any]:
    """Per interleaved round: both worker counts' users/hour and the other processes' cores, and the speed-up
    over the rounds in which the host was otherwise quiet (both runs below :data:`QUIET_OTHER_CORES`)."""
    def facts(r: dict) -> tuple[int, float, float | None]:
        t = r["throughput"]
        other = ((t.get("cpu_budget") or {}).get("cores") or {}).get("other processes (not this run)")
        return t["computed"], float(t["wall_s"] or 0.0), other

    def job_cpu(r: dict) -> float | None:
        cpu = [u["cpu_s"] for u in r["users"] if u["status"] == "computed" and u["cpu_s"] is not None]
        return sum(cpu) / len(cpu) if cpu else None

    pairs, quiet = [], [[0, 0.0], [0, 0.0]]
    for ra, rb in zip(lo_rounds, hi_rounds):
        (na, wa, oa), (nb, wb, ob) = facts(ra), facts(rb)
        if not (na and nb and wa > 0 and wb > 0):
            continue
        is_quiet = oa is not None and ob is not None and oa < QUIET_OTHER_CORES and ob < QUIET_OTHER_CORES
        pairs.append({"users": [na, nb], "wall_s": [wa, wb], "other_processes_cores": [oa, ob],
                      "job_cpu_s_per_user": [job_cpu(ra), job_cpu(rb)], "speedup": (nb / wb) / (na / wa),
                      "quiet": is_quiet})
        if is_quiet:
            quiet[0][0] += na
            quiet[0][1] += wa
            quiet[1][0] += nb
            quiet[1][1] += wb
    out: dict[str, Any] = {"rounds": pairs, "quiet_rounds": sum(p["quiet"] for p in pairs)}
    if quiet[0][1] > 0 and quiet[1][1] > 0:
        out["speedup_quiet_rounds"] = (quiet[1][0] / quiet[1][1]) / (quiet[0][0] / quiet[0][1])
    return out


def _kill_driver_phase(out: Path, base: Path, users_dir: Path, fleet_cfg: FleetConfig, ref: dict, threshold: int,
                       config: FleetBenchConfig, command: str | None, progress: bool) -> dict[str, Any]:
    name = "run_kill_driver"
    run_dir = out / name
    shutil.rmtree(run_dir, ignore_errors=True)
    cmd = [sys.executable, "-m", "imutune.cli", "fleet", "--base", str(base), "--users", str(users_dir),
           "--out", str(run_dir), "--num-cpus", str(config.num_cpus), "--workers", str(max(config.workers)),
           "--method", fleet_cfg.method, "--no-progress"]
    if fleet_cfg.max_calibration_windows is not None:
        cmd += ["--max-calibration-windows", str(fleet_cfg.max_calibration_windows)]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    killed_at = None
    while proc.poll() is None:
        n = _count_done(run_dir)
        if n >= threshold:
            os.killpg(proc.pid, signal.SIGKILL)
            killed_at = n
            break
        time.sleep(0.05)
    proc.wait()
    stderr = proc.stderr.read().decode(errors="replace")[-2000:] if proc.stderr else ""
    time.sleep(0.5)
    done_before = _count_done(run_dir)
    r2 = run_fleet(base, users_dir, run_dir, config=fleet_cfg, workers=max(config.workers), progress=progress,
                   command=command)
    return {"subprocess": " ".join(cmd), "killed_at_users_done": killed_at, "users_done_before_rerun": done_before,
            "returncode": proc.returncode, "stderr_tail": stderr if killed_at is None else "",
            "seconds_until_kill": time.perf_counter() - t0, "rerun": _phase(r2),
            "identical_to_reference": compare_runs(ref, r2)}


def _targets(res: dict, cfg: FleetBenchConfig) -> dict[str, Any]:
    t: dict[str, Any] = {}
    hi = f"run_{max(cfg.workers)}w"
    p = res["phases"].get(hi)
    if p and p["users_per_core_hour"]:
        t["users_per_core_hour"] = {"target": ">= 1000 (mobilecnn1d, FilterLoss-CV, ~150 calibration windows)",
                                    "measured": p["users_per_core_hour"], "met": p["users_per_core_hour"] >= 1000,
                                    "cpu_time_based": p["users_per_cpu_hour"], "users": res["config"]["n_users"]}
    s = res.get("scaling")
    if s and s["speedup"] is not None:
        t["scaling_2_vs_1_workers"] = {"target": ">= 1.8x", "measured": s["speedup"], "met": s["speedup"] >= 1.8,
                                       "cpu_budget_ceiling": s.get("cpu_budget_ceiling"),
                                       "other_processes_cores": s.get("other_processes_cores"),
                                       "speedup_quiet_rounds": s.get("speedup_quiet_rounds"),
                                       "quiet_rounds": f"{s.get('quiet_rounds', 0)}/{len(s.get('rounds', []))}"}
    for k in ("kill_worker", "kill_driver"):
        kw = res.get(k)
        if kw:
            c = kw["identical_to_reference"]
            t[f"{k}_identical"] = {"target": "every user completes with results identical to the uninterrupted run",
                                   "measured": f"{c['identical']}/{c['compared']} identical, {len(c['missing'])} missing",
                                   "met": c["identical"] == c["compared"] and not c["missing"]}
    return t


def _budget_table(phases: dict) -> list[str]:
    """CPU seconds per computed user by process, one column per scaling phase."""
    names = [n for n, p in phases.items() if p.get("cpu_budget")]
    if not names:
        return []
    kinds: list[str] = []
    for n in names:
        kinds += [k for k in phases[n]["cpu_budget"]["cpu_s_per_user"] if k not in kinds]
    rows = []
    for k in kinds:
        row: list[Any] = [k]
        for n in names:
            b = phases[n]["cpu_budget"]
            th = b["threads_max"].get("worker" if k.startswith("worker") else k)
            v = b["cpu_s_per_user"].get(k)
            row.append("-" if v is None else f"{v:.3f}" + (f" ({th} thr)" if th else ""))
        rows.append(row)
    rows.append(["this run, outside the user jobs"] + [f"{phases[n]['cpu_budget']['outside_jobs_cpu_s_per_user']:.3f}"
                                                       for n in names])
    return ["", "### Where the CPU went: CPU seconds per computed user (max threads per process)", "",
            markdown_table(["process"] + names, rows)]


def _markdown(res: dict) -> str:
    cfg = res["config"]
    lines = ["# Fleet benchmark (SIMULATED fleet)", ""]
    if res.get("command"):
        lines += [f"Command: `{res['command']}`", ""]
    h = res["host"]
    lines += [f"Host: {h['cpu']}, {h['cores']} cores (the load averages below show what else ran). "
              f"{cfg['n_users']} simulated users + {len(res['simulation']['broken_users'])} broken ones; base "
              f"`{cfg['model_name']}` pretrained on watch subjects {cfg['source_subjects']}; method "
              f"`{cfg['fleet']['method']}`, at most {cfg['fleet']['max_calibration_windows']} calibration windows "
              "per user.", "", "## Runs", ""]
    rows = []
    for name, p in res["phases"].items():
        rows.append([name, p["workers"], p.get("computed_in_rounds", p["counts"]["computed"]), p["counts"]["failed"],
                     p["wall_s"],
                     p["users_per_hour"], p["users_per_core_hour"], p["users_per_cpu_hour"],
                     p["task_cpu_utilisation"], p["host_cpu_utilisation"],
                     " ".join(f"{v:.2f}" for v in (p["load_average_end"] or []))])
    lines.append(markdown_table(["run", "workers", "computed", "failed", "wall s", "users/hour", "users/core-hour",
                                 "users/CPU-hour (job CPU time)", "task CPU util", "host CPU util",
                                 "load avg (1/5/15 min)"], rows, floatfmt=".2f"))
    s = res.get("scaling")
    if s:
        c = s["identical_results"]
        lines += ["", f"Scaling {s['workers'][0]} -> {s['workers'][1]} workers: {s['speedup']:.2f}x users/hour; "
                      f"results identical for {c['identical']}/{c['compared']} users."]
        if s.get("cpu_budget_ceiling") is not None:
            oc = ["-" if v is None else f"{v:.2f}" for v in s["other_processes_cores"]]
            lines += ["", f"CPU-budget ceiling of the speed-up (if nothing else used the cores): "
                          f"{s['cpu_budget_ceiling']:.2f}x. Other processes on the host used {oc[0]} cores during the "
                          f"{s['workers'][0]}-worker rounds and {oc[1]} during the {s['workers'][1]}-worker rounds."]
        if s.get("rounds"):
            q = s.get("speedup_quiet_rounds")
            lines += ["", f"Rounds in which other processes used < {QUIET_OTHER_CORES} cores in both runs: "
                          f"{s['quiet_rounds']}/{len(s['rounds'])}" + (f"; speed-up over them {q:.2f}x." if q else "."),
                      "", markdown_table(["round", "users", "wall s", "speed-up", "other processes (cores)",
                                          "job CPU s per user", "quiet"],
                                         [[i + 1, "/".join(str(n) for n in p["users"]),
                                           " / ".join(f"{w:.1f}" for w in p["wall_s"]), p["speedup"],
                                           " / ".join("-" if o is None else f"{o:.2f}" for o in p["other_processes_cores"]),
                                           " / ".join("-" if c is None else f"{c:.3f}" for c in p["job_cpu_s_per_user"]),
                                           p["quiet"]] for i, p in enumerate(s["rounds"])], floatfmt=".2f")]
        lines += _budget_table(res["phases"])
    if res.get("warmup"):
        w = res["warmup"]
        lines += ["", f"Warm-up (untimed, before the rounds): {w['users']} users on {w['workers']} workers, "
                      f"{w['wall_s']:.1f} s."]
    kw = res.get("kill_worker")
    if kw:
        c = kw["identical_to_reference"]
        lines += ["", "## Killed worker", "",
                  f"SIGKILL of worker pid {kw['kill'].get('killed_pid')} after {kw['kill'].get('users_done_at_kill')} "
                  f"users; first run: {kw['first_run']['counts']['computed']} computed, "
                  f"{kw['first_run']['counts']['failed']} failed; rerun: {kw['rerun_counts']['skipped']} skipped, "
                  f"{kw['rerun_counts']['computed']} computed; identical to the uninterrupted run: "
                  f"{c['identical']}/{c['compared']} (missing {len(c['missing'])})."]
    kd = res.get("kill_driver")
    if kd:
        c = kd["identical_to_reference"]
        lines += ["", "## Killed fleet (driver crash)", "",
                  f"`imutune fleet` subprocess SIGKILLed (process group) at {kd['killed_at_users_done']} users done; "
                  f"rerun: {kd['rerun']['counts']['skipped']} skipped, {kd['rerun']['counts']['computed']} computed, "
                  f"{kd['rerun']['counts']['failed']} failed; identical to the uninterrupted run: "
                  f"{c['identical']}/{c['compared']} (missing {len(c['missing'])})."]
    q = res["quality"]
    if q.get("gain_macro_f1"):
        g, b, a = q["gain_macro_f1"], q["before_macro_f1"], q["after_macro_f1"]
        lines += ["", "## Quality (reference run, test windows of each user's use session)", "",
                  f"macro-F1 before {b['mean']:.4f} (median {b['median']:.4f}), after {a['mean']:.4f} "
                  f"(median {a['median']:.4f}); gain mean {g['mean']:+.4f}, median {g['median']:+.4f}, "
                  f"p5 {g['p5']:+.4f}, p95 {g['p95']:+.4f}; improved {q['improved']}, worse {q['worse']}. "
                  "Histogram: `gain_hist.png`."]
    lines += ["", "## Targets", ""]
    lines.append(markdown_table(["target", "goal", "measured", "met"],
                                [[k, v["target"], v["measured"], v["met"]] for k, v in res["targets"].items()],
                                floatfmt=".2f"))
    lines += ["", f"Total benchmark time {res['total_s']:.0f} s."]
    return "\n".join(lines)
