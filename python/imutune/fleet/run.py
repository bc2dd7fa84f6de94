"""Ray orchestration of a fleet run: one task per user, bounded in flight, resumable.

:func:`run_fleet` runs :func:`imutune.fleet.worker.personalize_user` for every user as a Ray task
(``num_cpus=cpus_per_user``, torch on ``cpus_per_user`` threads). Ray (``ray`` on PyPI) is the engine:
``address=None`` starts a private local Ray instance on this machine (``ray.init(address="local")``),
``"auto"`` or ``"ray://host:10001"`` joins an existing cluster; an already initialised Ray is reused.

* **Backpressure**: at most ``workers`` tasks are in flight (``ray.wait``); the driver reads a user's files
  only when its task is submitted, so memory stays bounded for any number of users. The base bundle is put
  in the object store once and loaded once per worker process (a per-process cache keyed by its hash).
* **Data movement**: the driver reads each user's files and ships the bytes; workers return the patch,
  metrics and exports as bytes, and only the driver writes ``out_dir``. So workers need no shared
  filesystem, and a worker that dies leaves nothing half-written.
* **Failures**: a user's bad input is that user's ``failed.json`` (reason and message), never the fleet's;
  a worker process that dies (killed, out of memory) has its task retried by Ray up to ``retries`` times
  and, after that, the user fails with reason ``worker_died``.
* **Resume / idempotence**: per user, ``out_dir/users/<id>/`` receives ``patch.safetensors`` (and exports),
  then ``metrics.json``, then -- last, atomically -- ``done.json`` with the SHA-256 of every file, the
  config fingerprint (:func:`imutune.fleet.worker.config_fingerprint`) and the input hash. A rerun skips a
  user whose ``done.json`` verifies (same config and base, same input files, every hash matching) and
  recomputes everything else, so an interrupted run loses at most the users in flight. Seeds come from the
  user id, so a rerun, a resumed run and a run with another worker count give bit-identical patches.

* **Driver cost**: the driver blocks in ``ray.wait`` (no timeout, no polling) and hands a freed worker its
  next user before it writes (and fsyncs) the finished user's files, so the write never idles a worker.
* **Where the CPU goes**: the report's ``cpu_budget`` (:mod:`imutune.fleet.proc`) splits the run's CPU
  seconds into the user jobs, the driver and each of a local Ray instance's processes, plus the other
  processes on the host (``imutune bench fleet`` tabulates it per user). Only the driver's descendants are
  attributed: with ``address="auto"`` on a Ray started by ``ray start`` its processes count as "other
  processes", and on a remote cluster only the driver is seen. Ray runs each worker with
  ``OMP_NUM_THREADS`` = the task's CPUs when the variable is unset; the job also pins the BLAS/OpenMP pools
  to ``cpus_per_user`` whatever the environment says (:func:`imutune.fleet.worker._native_threads`).

The run writes ``fleet_config.json`` and the fleet report (:mod:`imutune.fleet.report`).
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Sequence

from .. import _validation as V
from .._io import json_default_or_str, sha256_bytes, sha256_file, write_bytes_atomic, write_json_atomic
from .proc import cpu_budget, host_cpu_s, process_tree
from .users import UserSpec, discover_users, read_user_files
from .worker import FleetConfig, bundle_files, bundle_from_files, config_fingerprint, personalize_user

__all__ = ["run_fleet", "verify_done", "user_dir", "TASK_NAME", "DONE_FILE", "FAILED_FILE", "METRICS_FILE"]

TASK_NAME = "imutune_fleet_user"   # Ray task name (worker process title "ray::imutune_fleet_user")
DONE_FILE, FAILED_FILE, METRICS_FILE = "done.json", "failed.json", "metrics.json"

_BASE_CACHE: dict[str, Any] = {}    # per worker process: base sha256 -> ModelBundle


def user_dir(out_dir: str | os.PathLike, user_id: str) -> Path:
    """``out_dir/users/<user_id>``."""
    return Path(out_dir) / "users" / user_id


def verify_done(folder: str | os.PathLike, *, fingerprint: str, input_sha256: str | None = None) -> dict | None:
    """The user's ``metrics.json`` content if ``done.json`` in ``folder`` verifies, else ``None``.

    Verifies: ``done.json`` parses, has ``fingerprint`` (and ``input_sha256`` when given), and every file it
    lists exists with the recorded SHA-256.
    """
    d = Path(folder)
    try:
        done = json.loads((d / DONE_FILE).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(done, dict) or done.get("fingerprint") != fingerprint:
        return None
    if input_sha256 is not None and done.get("input_sha256") != input_sha256:
        return None
    files = done.get("files")
    if not isinstance(files, dict) or METRICS_FILE not in files:
        return None
    for rel, sha in files.items():
        p = d / rel
        if not p.is_file() or sha256_file(p) != sha:
            return None
    try:
        return json.loads((d / METRICS_FILE).read_text())
    except (OSError, ValueError):
        return None


# --------------------------------------------------------------------------- the Ray task

def _user_task(base_sha256: str, base_box: list, user_id: str, files: list, config: FleetConfig) -> dict:
    """Body of the Ray task: the cached base model and :func:`personalize_user`."""
    base = _BASE_CACHE.get(base_sha256)
    if base is None:
        import ray

        base = bundle_from_files(ray.get(base_box[0]))
        _BASE_CACHE.clear()
        _BASE_CACHE[base_sha256] = base
    return personalize_user(base, user_id, files, config=config, base_sha256=base_sha256)


# --------------------------------------------------------------------------- driver

def run_fleet(base: str | os.PathLike, users: str | os.PathLike | Sequence[UserSpec], out_dir: str | os.PathLike, *,
              config: FleetConfig = FleetConfig(), address: str | None = None, workers: int | None = None,
              cpus_per_user: int = 1, num_cpus: int | None = None, retries: int = 2, limit: int | None = None,
              progress: bool = True, command: str | None = None, ray_init: dict | None = None) -> dict[str, Any]:
    """Personalize every user of a fleet with Ray (module notes) and write the fleet report.

    Parameters
    ----------
    base : path-like
        Base bundle folder (``model.json`` + ``model.safetensors``).
    users : path-like or sequence of UserSpec
        A folder of per-user folders or a JSON/CSV manifest (:func:`imutune.fleet.users.discover_users`).
    out_dir : path-like
        Output folder (``users/<id>/``, ``fleet_report.json/.md``, ``gain_hist.png``, ``fleet_config.json``).
    config : FleetConfig
        The per-user job; ``config.torch_threads`` is set to ``cpus_per_user``.
    address : str, optional
        ``None``: a private local Ray instance (``num_cpus`` CPUs, all by default); ``"auto"``: the Ray
        cluster of this machine; ``"ray://host:port"``: a remote cluster (Ray Client). Ignored when Ray is
        already initialised in this process.
    workers : int, optional
        Users processed at the same time (tasks in flight); default: the cluster's CPUs // ``cpus_per_user``.
    cpus_per_user : int
        CPUs reserved per task, and torch threads of the task (default 1).
    retries : int
        Ray retries of a task whose worker process died (default 2).
    limit : int, optional
        Compute at most this many users in this run (the rest stay ``pending``); for staged runs.
    command : str, optional
        The command line recorded in the report.
    ray_init : dict, optional
        Extra ``ray.init`` keyword arguments (e.g. ``object_store_memory``) when this call starts Ray.

    Returns
    -------
    dict
        The fleet report (:func:`imutune.fleet.report.build_report`).

    Raises
    ------
    FileNotFoundError
        If the base bundle or the users path does not exist.
    ValueError
        On a bad users path or manifest, ``workers``/``cpus_per_user`` < 1, or a missing ``ray``.
    """
    V.check_int_at_least("cpus_per_user", cpus_per_user, 1)
    V.check_int_at_least("retries", retries, 0)
    if workers is not None:
        V.check_int_at_least("workers", workers, 1)
    if num_cpus is not None:
        V.check_int_at_least("num_cpus", num_cpus, 1)
    if limit is not None:
        V.check_int_at_least("limit", limit, 0)
    specs = list(users) if isinstance(users, (list, tuple)) else discover_users(users)
    if not specs:
        raise ValueError("the fleet has no users; expected at least one")
    base_files = bundle_files(base)
    from ..personalize.patch import state_hash

    base_bundle = bundle_from_files(base_files)
    base_sha = state_hash(base_bundle.model)
    from dataclasses import replace

    config = replace(config, torch_threads=cpus_per_user)
    return _compute_fleet(base, base_files, base_sha, specs, Path(out_dir), config, address=address,
                          workers=workers, cpus_per_user=cpus_per_user, num_cpus=num_cpus, retries=retries,
                          limit=limit, progress=progress, command=command, ray_init=dict(ray_init or {}))


def _import_ray():
    try:
        import ray
    except ImportError:
        raise ValueError("imutune fleet needs Ray: pip install 'imutune[fleet]' (or pip install ray)") from None
    return ray


def _start_ray(ray, address: str | None, num_cpus: int | None, extra: dict) -> bool:
    """Initialise Ray unless it already is; True when this call started (and must stop) it."""
    if ray.is_initialized():
        return False
    import logging

    kw: dict[str, Any] = {"include_dashboard": False, "logging_level": logging.WARNING, "log_to_driver": False,
                          "configure_logging": True}
    if address is None:
        kw.update(address="local", num_cpus=num_cpus or os.cpu_count() or 1)
    else:
        kw["address"] = address
    kw.update(extra)
    try:
        ray.init(**kw)
    except ConnectionError as e:
        raise ValueError(f"--address {address!r}: could not connect to a Ray cluster ({e})") from e
    return True


def _write_outputs(folder: Path, res: dict, fingerprint: str, input_sha: str) -> None:
    """Write a finished user's files, then metrics.json, then done.json (last, atomically)."""
    hashes = {}
    for rel, data in sorted(res["outputs"].items()):
        write_bytes_atomic(folder / rel, data)
        hashes[rel] = sha256_bytes(data)
    metrics = {"user_id": res["user_id"], "status": "ok", "fingerprint": fingerprint, "input_sha256": input_sha,
               "result": res["result"], "timing": res["timing"]}
    mbytes = (json.dumps(metrics, indent=2, default=json_default_or_str) + "\n").encode()
    write_bytes_atomic(folder / METRICS_FILE, mbytes)
    hashes[METRICS_FILE] = sha256_bytes(mbytes)
    (folder / FAILED_FILE).unlink(missing_ok=True)
    write_json_atomic(folder / DONE_FILE, {"user_id": res["user_id"], "fingerprint": fingerprint,
                                           "input_sha256": input_sha, "files": hashes,
                                           "written_unix_s": time.time()})


def _write_failure(folder: Path, user_id: str, reason: str, error: str, fingerprint: str,
                   input_sha: str | None, timing: dict | None = None) -> dict:
    rec = {"user_id": user_id, "status": "failed", "reason": reason, "error": error, "fingerprint": fingerprint,
           "input_sha256": input_sha, "timing": timing or {}}
    (folder / DONE_FILE).unlink(missing_ok=True)
    write_json_atomic(folder / FAILED_FILE, rec)
    return rec




def _compute_fleet(base, base_files: dict, base_sha: str, specs: list[UserSpec], out: Path, config: FleetConfig, *,
                   address, workers, cpus_per_user, num_cpus, retries, limit, progress, command, ray_init) -> dict:
    from .report import build_report, write_fleet_report

    fingerprint = config_fingerprint(config, base_sha)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "fleet_config.json", {"base": str(base), "base_sha256": base_sha,
                                                  "fingerprint": fingerprint, "config": asdict(config),
                                                  "cpus_per_user": cpus_per_user, "n_users": len(specs)})
    rows: dict[str, dict] = {}
    todo: list[UserSpec] = []
    t_scan = time.perf_counter()
    for u in specs:
        folder = user_dir(out, u.user_id)
        m = verify_done(folder, fingerprint=fingerprint) if (folder / DONE_FILE).is_file() else None
        if m is not None:
            # the marker verifies; the input must too (hashing the input files costs a read, not a job)
            try:
                _, input_sha = read_user_files(u)
            except (OSError, ValueError):
                input_sha = None
            if input_sha is not None and m.get("input_sha256") == input_sha:
                rows[u.user_id] = {"user_id": u.user_id, "status": "skipped", "result": m.get("result"),
                                   "timing": m.get("timing", {})}
                continue
        todo.append(u)
    scan_s = time.perf_counter() - t_scan
    pending = todo if limit is None else todo[:limit]
    for u in todo[len(pending):]:
        rows[u.user_id] = {"user_id": u.user_id, "status": "pending", "result": None, "timing": {}}

    ray = _import_ray() if pending else None
    started = False
    n_workers = 0
    t0 = time.perf_counter()
    cpu0 = cpu1 = host_cpu_s()
    procs0 = procs1 = {}
    try:
        if pending:
            started = _start_ray(ray, address, num_cpus, ray_init)
            cluster_cpus = int(ray.cluster_resources().get("CPU", 1))
            n_workers = workers or max(1, cluster_cpus // cpus_per_user)
            base_box = [ray.put(base_files)]
            task = ray.remote(_user_task).options(num_cpus=cpus_per_user, max_retries=retries, name=TASK_NAME)
            t0, cpu0, procs0 = time.perf_counter(), host_cpu_s(), process_tree()
            _drive(ray, task, base_sha, base_box, pending, out, config, fingerprint, n_workers, rows, progress,
                   n_total=len(specs), n_done_before=len(specs) - len(todo))
            procs1 = process_tree()     # before ray.shutdown: the Ray processes are still alive
        wall = time.perf_counter() - t0
        cpu1 = host_cpu_s()
    finally:
        if started:
            ray.shutdown()
    host_util = None
    if cpu0 and cpu1 and cpu1[1] > cpu0[1]:
        host_util = (cpu1[0] - cpu0[0]) / (cpu1[1] - cpu0[1])
    budget = cpu_budget(procs0, procs1, cpu0, cpu1) if procs1 else None
    run = {"command": command, "wall_s": wall if pending else 0.0, "scan_s": scan_s, "workers": n_workers,
           "cpus_per_user": cpus_per_user, "address": address or "local", "host_cpu_utilisation": host_util,
           "cpu_budget": budget,
           "host_cores": os.cpu_count(), "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
           "fingerprint": fingerprint, "base_sha256": base_sha, "method": config.method}
    report = build_report([rows[u.user_id] for u in specs], run)
    write_fleet_report(out, report)
    return report


def _drive(ray, task, base_sha, base_box, pending: list[UserSpec], out: Path, config: FleetConfig, fingerprint: str,
           n_workers: int, rows: dict, progress: bool, *, n_total: int, n_done_before: int) -> None:
    """Submit users with at most ``n_workers`` in flight and write each result as it arrives."""
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=n_total, initial=n_done_before, desc="fleet", unit="user", dynamic_ncols=True)
    queue = list(reversed(pending))
    inflight: dict[Any, tuple[UserSpec, str, float]] = {}

    def fill() -> None:
        while queue and len(inflight) < n_workers:
            u = queue.pop()
            folder = user_dir(out, u.user_id)
            (folder / DONE_FILE).unlink(missing_ok=True)    # recomputing: the old marker must not survive
            try:
                files, input_sha = read_user_files(u)
                if not files:
                    raise ValueError(f"user {u.user_id!r} has no .npz/.csv recording files")
            except (OSError, ValueError) as e:
                rows[u.user_id] = _write_failure(folder, u.user_id, "bad_input", str(e), fingerprint, None)
                if bar is not None:
                    bar.update(1)
                continue
            ref = task.remote(base_sha, base_box, u.user_id, files, config)
            inflight[ref] = (u, input_sha, time.perf_counter())

    try:
        fill()
        while inflight:
            # blocks in Ray (no timeout, no polling) until a task finishes
            ready, _ = ray.wait(list(inflight), num_returns=1)
            t_ready = time.perf_counter()
            finished = [(ref, inflight.pop(ref)) for ref in ready]
            fill()    # the freed worker gets its next user before the driver writes (fsyncs) the finished one
            for ref, (u, input_sha, t_sub) in finished:
                folder = user_dir(out, u.user_id)
                try:
                    res = ray.get(ref)
                except Exception as e:   # ray.exceptions.*: the worker died after its retries, or Ray failed
                    died = type(e).__name__ in ("WorkerCrashedError", "NodeDiedError", "OwnerDiedError",
                                                "ActorDiedError", "LocalRayletDiedError")
                    rows[u.user_id] = _write_failure(folder, u.user_id, "worker_died" if died else "internal_error",
                                                     f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}",
                                                     fingerprint, input_sha)
                else:
                    res["timing"]["queue_to_result_s"] = t_ready - t_sub
                    if res["status"] == "ok":
                        _write_outputs(folder, res, fingerprint, input_sha)
                        rows[u.user_id] = {"user_id": u.user_id, "status": "computed", "result": res["result"],
                                           "timing": res["timing"]}
                    else:
                        rows[u.user_id] = _write_failure(folder, u.user_id, res["reason"], res["error"], fingerprint,
                                                         input_sha, res["timing"])
                if bar is not None:
                    bar.update(1)
    finally:
        if bar is not None:
            bar.close()
