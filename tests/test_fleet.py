"""Fleet personalization: users discovery, the per-user job, Ray orchestration, resume, report, CLI."""
from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from imutune.fleet.report import build_report, write_fleet_report
from imutune.fleet.users import UserSpec, discover_users, read_user_files
from imutune.fleet.worker import FleetConfig, personalize_user, user_seed
from imutune.personalize.finetune import FinetuneConfig

WINDOW_S = 1.0


def _crop(rec, seconds: float):
    from imutune.data.recordings import Recording

    n = int(seconds * rec.sample_rate_hz)
    return Recording(rec.values[:n], rec.labels[:n], rec.sample_rate_hz, rec.channels, rec.class_names, rec.user,
                     rec.name, dict(rec.meta))


def _tiny_config(method: str = "ce", **kw) -> FleetConfig:
    """2 epochs; plain cross-entropy for the orchestration tests (the job test runs FilterLoss-CV)."""
    ft = FinetuneConfig()
    return FleetConfig(method=method, finetune=replace(ft, train=replace(ft.train, epochs=2, batch_size=32)), **kw)


@pytest.fixture(scope="module")
def fleet_data(tmp_path_factory, watch_recordings):
    """A tiny tinycnn1d base (1 s windows) and 3 users of 7 cropped watch recordings each, plus a broken user."""
    import torch

    from imutune.data.recordings import save_npz
    from imutune.signal.windows import WindowConfig, make_windows
    from imutune.train.bundle import save_bundle
    from imutune.train.loop import TrainConfig
    from imutune.train.pretrain import pretrain

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("fleet")
    src = [_crop(r, 8.0) for r in watch_recordings if r.meta["subject"] in (1, 2)]
    win = WindowConfig(window_s=WINDOW_S, hop_s=0.5)
    base = pretrain(make_windows(src, win), model_name="tinycnn1d", window=win,
                    train_config=TrainConfig(epochs=2, batch_size=64, lr=3e-3, device="cpu"), progress=False)
    save_bundle(base, root / "base")
    users = root / "users"
    for subj in (3, 4, 5):
        for r in watch_recordings:
            if r.meta["subject"] == subj and r.meta["side"] == 0:
                save_npz(_crop(r, 12.0), users / f"user{subj}" / f"{r.name}.npz")
    broken = users / "user_broken"
    broken.mkdir(parents=True)
    save_npz(_crop(watch_recordings[0], 12.0), broken / "rec.npz")
    data = (broken / "rec.npz").read_bytes()
    (broken / "rec.npz").write_bytes(data[:200])
    return {"root": root, "base": root / "base", "users": users}


@pytest.fixture(scope="module")
def local_ray():
    ray = pytest.importorskip("ray")
    started = not ray.is_initialized()
    if started:
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
                 object_store_memory=100 * 1024 * 1024)
    yield ray
    if started:
        ray.shutdown()


# --------------------------------------------------------------------------- users

def test_discover_users_folder_json_csv_and_errors(tmp_path):
    for u in ("b", "a"):
        (tmp_path / "f" / u).mkdir(parents=True)
        (tmp_path / "f" / u / "r.npz").write_bytes(b"x")
    (tmp_path / "f" / "c" / "calibration").mkdir(parents=True)
    (tmp_path / "f" / "c" / "test").mkdir()
    (tmp_path / "f" / "c" / "calibration" / "x.csv").write_text("t")
    (tmp_path / "f" / "c" / "test" / "y.csv").write_text("t")
    us = discover_users(tmp_path / "f")
    assert [u.user_id for u in us] == ["a", "b", "c"]
    assert us[0].recordings[0].endswith("r.npz") and not us[0].explicit_split
    assert us[2].explicit_split and us[2].test[0].endswith("y.csv")

    man = tmp_path / "m.json"
    man.write_text(json.dumps({"users": [{"id": "u2", "recordings": ["d/r1.npz"]},
                                         {"id": "u1", "calibration": ["c.npz"], "test": ["t.npz"]}]}))
    us = discover_users(man)
    assert [u.user_id for u in us] == ["u1", "u2"]
    assert us[1].recordings == (str((tmp_path / "d" / "r1.npz").resolve()),)

    csv = tmp_path / "m.csv"
    csv.write_text("user_id,path,split\nx,a.npz,calibration\nx,b.npz,test\ny,c.npz,\n")
    us = discover_users(csv)
    assert [(u.user_id, u.explicit_split) for u in us] == [("x", True), ("y", False)]

    with pytest.raises(FileNotFoundError, match="does not exist"):
        discover_users(tmp_path / "nope")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"id": "../evil", "recordings": ["a.npz"]}]))
    with pytest.raises(ValueError, match="not usable as a folder name"):
        discover_users(bad)
    bad.write_text(json.dumps([{"id": "a", "recordings": ["a.npz"]}, {"id": "a", "recordings": ["b.npz"]}]))
    with pytest.raises(ValueError, match="appears twice"):
        discover_users(bad)
    bad.write_text(json.dumps([{"id": "a"}]))
    with pytest.raises(ValueError, match="neither 'recordings' nor both"):
        discover_users(bad)
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        discover_users(bad)
    csv.write_text("uid,file\nx,a.npz\n")
    with pytest.raises(ValueError, match="user_id,path"):
        discover_users(csv)
    csv.write_text("user_id,path,split\nx,a.npz,calibration\n")
    with pytest.raises(ValueError, match="needs both calibration and test"):
        discover_users(csv)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no sub-folders"):
        discover_users(tmp_path / "empty")
    (tmp_path / "m.txt").write_text("x")
    with pytest.raises(ValueError, match="expected a folder, a .json or a .csv"):
        discover_users(tmp_path / "m.txt")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_user_files(UserSpec("z", recordings=(str(tmp_path / "missing.npz"),)))


def test_user_seed_depends_on_fleet_seed_and_id_only():
    assert user_seed("alice", 0) == user_seed("alice", 0)
    assert user_seed("alice", 0) != user_seed("bob", 0)
    assert user_seed("alice", 0) != user_seed("alice", 1)
    assert 0 <= user_seed("x" * 100, 7) < 2**31


def test_fleet_config_validates():
    assert FleetConfig(method="ce").finetune.loss == "ce"
    with pytest.raises(ValueError, match="method must be one of"):
        FleetConfig(method="magic")
    with pytest.raises(ValueError, match="calibration_fraction must be in"):
        FleetConfig(calibration_fraction=1.0)
    with pytest.raises(ValueError, match="export must be one of"):
        FleetConfig(exports=("pte",))
    with pytest.raises(ValueError, match="min_calibration_windows"):
        FleetConfig(min_calibration_windows=1)


# --------------------------------------------------------------------------- the job (no Ray)

def test_personalize_user_results_and_failure_reasons(fleet_data):
    from imutune.personalize.patch import apply_patch, load_patch, state_hash
    from imutune.train.bundle import load_bundle

    base = load_bundle(fleet_data["base"])
    spec = discover_users(fleet_data["users"])[0]
    files, _ = read_user_files(spec)
    cfg = _tiny_config("filterloss-cv")
    a = personalize_user(base, spec.user_id, files, config=cfg)
    b = personalize_user(base, spec.user_id, files, config=cfg)
    assert a["status"] == "ok", a.get("error")
    r = a["result"]
    assert r["protocol"] == "calibrate-then-use" and r["n_calibration"] >= 10 and r["n_test"] >= 1
    assert r["patched_sha256"] == b["result"]["patched_sha256"]        # same user, same seed: same patch
    assert r["base_sha256"] == state_hash(base.model)
    tmp = fleet_data["root"] / "job_patch.safetensors"
    tmp.write_bytes(a["outputs"]["patch.safetensors"])
    assert state_hash(apply_patch(base.model, load_patch(tmp))) == r["patched_sha256"]

    capped = personalize_user(base, spec.user_id, files, config=_tiny_config(max_calibration_windows=12))
    assert capped["result"]["n_calibration"] == 12

    # the classical reference: a RandomForest on the same calibration windows, scored on the same test windows
    rf = r["random_forest"]
    assert set(rf) == {"accuracy", "macro_f1"} and 0 <= rf["macro_f1"] <= 1
    assert r["model_minus_random_forest"] == pytest.approx(r["after"]["macro_f1"] - rf["macro_f1"])
    assert a["timing"]["reference_s"] >= 0
    off = personalize_user(base, spec.user_id, files, config=_tiny_config("filterloss-cv", classical_reference=False))
    assert off["result"]["random_forest"] is None and off["result"]["model_minus_random_forest"] is None
    assert off["result"]["patched_sha256"] == r["patched_sha256"]      # the model does not depend on it
    assert r["random_forest_error"] is None

    bad = [("recording", "broken.npz", b"PK\x03\x04 not a zip")]
    res = personalize_user(base, "u", bad, config=cfg)
    assert res["status"] == "failed" and res["reason"] == "bad_input" and "broken.npz" in res["error"]
    few = personalize_user(base, "u", files[:1], config=_tiny_config(min_calibration_windows=500))
    assert few["status"] == "failed" and few["reason"] == "too_few_windows"
    only_cal = personalize_user(base, "u", [("calibration",) + tuple(files[0][1:])], config=cfg)
    assert only_cal["reason"] == "bad_input" and "explicit split needs both" in only_cal["error"]
    with pytest.raises(ValueError, match="has no files"):
        personalize_user(base, "u", [], config=cfg)
    with pytest.raises(ValueError, match="role of file"):
        personalize_user(base, "u", [("train", "a.npz", b"")], config=cfg)


def test_report_counts_failures_and_writes_files(tmp_path):
    rows = [{"user_id": "a", "status": "computed", "timing": {"total_s": 2.0, "cpu_s": 1.5},
             "result": {"before": {"macro_f1": 0.5, "accuracy": 0.6}, "after": {"macro_f1": 0.7, "accuracy": 0.8},
                        "gain_macro_f1": 0.2, "n_calibration": 150, "n_test": 100,
                        "random_forest": {"macro_f1": 0.75, "accuracy": 0.8}, "model_minus_random_forest": -0.05}},
            {"user_id": "b", "status": "failed", "reason": "bad_input", "error": "file x.npz is truncated",
             "timing": {}, "result": None},
            {"user_id": "c", "status": "skipped", "timing": {},
             "result": {"before": {"macro_f1": 0.6, "accuracy": 0.6}, "after": {"macro_f1": 0.5, "accuracy": 0.5},
                        "gain_macro_f1": -0.1}}]
    rep = build_report(rows, {"wall_s": 3.6, "workers": 1, "cpus_per_user": 1, "method": "filterloss-cv"})
    assert rep["counts"]["done"] == 2 and rep["counts"]["failed"] == 1
    assert rep["failures_by_reason"] == {"bad_input": 1}
    assert rep["throughput"]["users_per_hour"] == pytest.approx(1000.0)
    assert rep["quality"]["improved"] == 1 and rep["quality"]["worse"] == 1
    assert rep["quality"]["random_forest_macro_f1"]["n"] == 1 and rep["quality"]["random_forest_macro_f1"]["mean"] == 0.75
    assert rep["quality"]["model_minus_random_forest"]["mean"] == pytest.approx(-0.05)
    paths = write_fleet_report(tmp_path, rep)
    md = paths["md"].read_text()
    assert "model_minus_random_forest" in md and "ahead for 0 of 1 users, behind for 1" in md
    assert paths["png"].read_bytes()[:4] == b"\x89PNG"
    assert "bad_input" in paths["md"].read_text() and json.loads(paths["json"].read_text())["counts"]["users"] == 3
    with pytest.raises(ValueError, match="has status"):
        build_report([{"user_id": "z", "status": "weird"}], {})


# --------------------------------------------------------------------------- Ray

def _by_user(report):
    return {u["user_id"]: u for u in report["users"]}


def test_fleet_on_ray_broken_user_and_rerun_skips(fleet_data, local_ray, tmp_path):
    from imutune.fleet.run import run_fleet

    out = tmp_path / "out"
    rep = run_fleet(fleet_data["base"], fleet_data["users"], out, config=_tiny_config(), progress=False)
    c = rep["counts"]
    assert (c["computed"], c["failed"], c["users"]) == (3, 1, 4)
    assert rep["failures_by_reason"] == {"bad_input": 1}
    assert "rec.npz" in rep["failures"][0]["error"]
    for uid in ("user3", "user4", "user5"):
        d = out / "users" / uid
        assert {"patch.safetensors", "metrics.json", "done.json"} <= {p.name for p in d.iterdir()}
    assert json.loads((out / "users" / "user_broken" / "failed.json").read_text())["reason"] == "bad_input"
    assert (out / "fleet_report.md").is_file() and (out / "gain_hist.png").is_file()
    budget = rep["throughput"]["cpu_budget"]        # the local Ray's processes descend from this process
    assert budget["cpu_s"]["worker: user jobs"] > 0 and {"raylet", "gcs_server", "driver"} <= set(budget["cpu_s"])
    assert budget["cpu_s_per_user"]["raylet"] == pytest.approx(budget["cpu_s"]["raylet"] / 3)
    assert "Where the CPU went" in (out / "fleet_report.md").read_text()
    marks = {u: json.loads((out / "users" / u / "done.json").read_text())["written_unix_s"]
             for u in ("user3", "user4", "user5")}

    rep2 = run_fleet(fleet_data["base"], fleet_data["users"], out, config=_tiny_config(), progress=False)
    st = {u: r["status"] for u, r in _by_user(rep2).items()}
    assert st == {"user3": "skipped", "user4": "skipped", "user5": "skipped", "user_broken": "failed"}
    for u, t in marks.items():    # not recomputed: the markers were not rewritten
        assert json.loads((out / "users" / u / "done.json").read_text())["written_unix_s"] == t
    for u in marks:
        assert _by_user(rep2)[u]["patched_sha256"] == _by_user(rep)[u]["patched_sha256"]

    # another config is another fingerprint: nothing is reused
    rep3 = run_fleet(fleet_data["base"], fleet_data["users"], out, config=_tiny_config(seed=1), progress=False,
                     limit=1)
    assert rep3["counts"]["computed"] == 1 and rep3["counts"]["pending"] == 3


def test_resume_after_interruption_matches_uninterrupted(fleet_data, local_ray, tmp_path):
    from imutune.fleet.run import run_fleet

    ref = run_fleet(fleet_data["base"], fleet_data["users"], tmp_path / "ref", config=_tiny_config(), progress=False)
    out = tmp_path / "out"
    part = run_fleet(fleet_data["base"], fleet_data["users"], out, config=_tiny_config(), progress=False, limit=3,
                     workers=1)
    st = {u: r["status"] for u, r in _by_user(part).items()}
    assert st == {"user3": "computed", "user4": "computed", "user5": "computed", "user_broken": "pending"}
    # user4 was in flight when the fleet died: outputs written, marker not yet -> recomputed
    (out / "users" / "user4" / "done.json").unlink()
    # user5's patch was damaged afterwards: it no longer verifies -> recomputed
    (out / "users" / "user5" / "patch.safetensors").write_bytes(b"corrupt")
    mark3 = (out / "users" / "user3" / "done.json").read_text()
    rest = run_fleet(fleet_data["base"], fleet_data["users"], out, config=_tiny_config(), progress=False)
    st = {u: r["status"] for u, r in _by_user(rest).items()}
    assert st == {"user3": "skipped", "user4": "computed", "user5": "computed", "user_broken": "failed"}
    assert (out / "users" / "user3" / "done.json").read_text() == mark3
    for u in ("user3", "user4", "user5"):
        for k in ("patched_sha256", "before_macro_f1", "after_macro_f1"):
            assert _by_user(rest)[u][k] == _by_user(ref)[u][k]


def test_cli_fleet_and_bad_users_path(fleet_data, local_ray, tmp_path, capsys):
    from imutune.cli import main

    code = main(["fleet", "--base", str(fleet_data["base"]), "--users", str(fleet_data["users"]), "--out",
                 str(tmp_path / "o"), "--epochs", "1", "--limit", "1", "--method", "ce", "--no-progress", "--export", "bundle"])
    assert code == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["counts"]["computed"] + printed["counts"]["failed"] == 1
    done = [d for d in (tmp_path / "o" / "users").iterdir() if (d / "done.json").is_file()]
    assert done and (done[0] / "model" / "model.safetensors").is_file()
    code = main(["fleet", "--base", str(fleet_data["base"]), "--users", str(tmp_path / "none"), "--out",
                 str(tmp_path / "o2")])
    assert code == 2 and "does not exist" in capsys.readouterr().err


def test_simulated_fleet_is_deterministic(tmp_path, watch_recordings):
    from imutune.data.recordings import load_npz
    from imutune.fleet.simulate import SimulationConfig, simulate_fleet

    cfg = SimulationConfig(subjects=(6,), label_noises=("shift:1-3",), distortions=("none", "rotation:20"))
    a = simulate_fleet(tmp_path / "a", 2, config=cfg, recordings=watch_recordings)
    b = simulate_fleet(tmp_path / "b", 2, config=cfg, recordings=watch_recordings)
    assert [u["user_id"] for u in a] == [u["user_id"] for u in b]
    for u in a:
        ra = load_npz(tmp_path / "a" / u["user_id"] / "calibration" / "session.npz")
        rb = load_npz(tmp_path / "b" / u["user_id"] / "calibration" / "session.npz")
        assert np.array_equal(ra.values, rb.values) and np.array_equal(ra.labels, rb.labels)
        assert u["noisy_label_fraction"] > 0           # shift noise moved some boundaries
    assert len(discover_users(tmp_path / "a")) == 2 and discover_users(tmp_path / "a")[0].explicit_split
    meta = json.loads((tmp_path / "a" / "simulation.json").read_text())
    assert "SIMULATED" in meta["note"]
    with pytest.raises(ValueError, match="exceeds"):
        simulate_fleet(tmp_path / "c", 99, config=cfg, recordings=watch_recordings)


def test_label_issues_pins_cleanlab_to_one_process(monkeypatch):
    """cleanlab forks a process pool per call unless n_jobs is given; that deadlocked inside Ray workers."""
    import numpy as np

    cf = pytest.importorskip("cleanlab.filter")
    from imutune.personalize.filter import label_issues

    seen = []
    monkeypatch.setattr(cf, "find_label_issues", lambda *a, **kw: seen.append(kw.get("n_jobs")) or np.zeros(4, bool))
    label_issues(np.full((4, 2), 0.5), np.array([0, 1, 0, 1]))
    assert seen == [1]


def test_bench_compare_runs_flags_differences_and_missing_users():
    from imutune.bench.fleet import compare_runs

    def user(uid, sha, status="computed"):
        return {"user_id": uid, "status": status, "patched_sha256": sha, "before_macro_f1": 0.5,
                "after_macro_f1": 0.7, "before_accuracy": 0.5, "after_accuracy": 0.7, "n_calibration": 9, "n_test": 3}

    a = {"users": [user("x", "1"), user("y", "2"), user("z", "3"), user("f", None, "failed")]}
    b = {"users": [user("x", "1", "skipped"), user("y", "9"), user("z", None, "pending")]}
    assert compare_runs(a, b) == {"compared": 3, "identical": 1, "differ": ["y"], "missing": ["z"]}


# --------------------------------------------------------------------------- where the CPU goes

def test_process_kinds_from_command_lines():
    from imutune.fleet.proc import _kind

    assert _kind(["ray::IDLE"]) == "worker" and _kind(["ray::imutune_fleet_user"]) == "worker"
    assert _kind(["ray::DashboardAgent"]) == "dashboard_agent"
    assert _kind(["/x/ray/core/src/ray/raylet/raylet", "--raylet_socket_name=s"]) == "raylet"
    assert _kind(["/x/gcs_server", "--log_dir=d"]) == "gcs_server"
    assert _kind(["/usr/bin/python", "-u", "/x/ray/_private/log_monitor.py", "--a"]) == "log_monitor"
    assert _kind(["/usr/bin/python", "/x/ray/dashboard/dashboard.py"]) == "dashboard"
    assert _kind(["/usr/bin/python", "-u", "/x/ray/autoscaler/_private/monitor.py"]) == "monitor"
    assert _kind(["bash", "-c", "true"]) == "other" and _kind([]) == "other"


def test_cpu_budget_counts_a_busy_child_and_new_processes():
    import os
    import subprocess
    import sys

    from imutune.fleet.proc import cpu_budget, host_cpu_s, process_tree

    if not process_tree():
        pytest.skip("no /proc on this host")
    h0, before = host_cpu_s(), process_tree()
    child = subprocess.Popen([sys.executable, "-c", "import sys\nx = 0\nfor i in range(3_000_000): x += i\n"
                                                    "print('busy done', flush=True)\nsys.stdin.read()"],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert child.stdout.readline().strip() == b"busy done"      # the loop ran; the child now waits
        after, h1 = process_tree(), host_cpu_s()
    finally:
        child.communicate(b"")
    assert after[child.pid].ppid == os.getpid() and after[child.pid].kind == "other"
    b = cpu_budget(before, after, h0, h1)
    assert b["by_kind"]["other"]["cpu_s"] >= 0.05          # the child's CPU counts from zero (started in between)
    assert b["own_cpu_s"] == pytest.approx(sum(g["cpu_s"] for g in b["by_kind"].values()))
    assert b["host_busy_s"] >= 0 and b["other_processes_cpu_s"] >= 0
    assert cpu_budget({}, {})["own_cpu_s"] == 0.0


def test_bench_cpu_budget_merge_and_ceiling():
    from imutune.bench.fleet import _ceiling, _merge_budgets

    r = {"cpu_s": {"worker: user jobs": 30.0, "raylet": 0.5, "driver": 0.5, "other processes (not this run)": 10.0},
         "threads_max": {"worker": 24, "raylet": 29}}
    m = _merge_budgets([r, r, None], computed=20, wall=40.0)
    assert m["cpu_s_per_user"]["worker: user jobs"] == pytest.approx(3.0)
    assert m["own_cpu_s_per_user"] == pytest.approx(3.1) and m["outside_jobs_cpu_s_per_user"] == pytest.approx(0.1)
    assert m["other_processes_cores"] == pytest.approx(0.5) and m["threads_max"] == {"worker": 24, "raylet": 29}
    assert _merge_budgets([None], computed=3, wall=1.0) is None
    c = _ceiling({"cpu_budget": m}, {"cpu_budget": m}, 1, 2, 2)
    assert c["cpu_budget_ceiling"] == pytest.approx(2 * 3.0 / 3.1)     # cores * J / (J + O)
    assert c["other_processes_cores"] == [pytest.approx(0.5)] * 2
    assert "cpu_budget_ceiling" not in _ceiling({}, {}, 1, 2, 2)
    from imutune.bench.fleet import FleetBenchConfig

    with pytest.raises(ValueError, match="round_users must be an integer >= 1"):
        FleetBenchConfig(round_users=0)


def test_bench_round_pairs_speedup_over_quiet_rounds_only():
    from imutune.bench.fleet import _round_pairs

    def rnd(n, wall, other):
        return {"throughput": {"computed": n, "wall_s": wall,
                               "cpu_budget": {"cores": {"other processes (not this run)": other}}},
                "users": [{"status": "computed", "cpu_s": 3.0}, {"status": "failed", "cpu_s": 0.1}]}

    lo = [rnd(10, 32.0, 0.0), rnd(10, 40.0, 0.9), rnd(2, 6.4, 0.05)]
    hi = [rnd(10, 17.0, 0.05), rnd(10, 30.0, 0.8), rnd(2, 3.3, 0.0)]
    r = _round_pairs(lo, hi)
    assert [p["quiet"] for p in r["rounds"]] == [True, False, True] and r["quiet_rounds"] == 2
    assert r["rounds"][1]["speedup"] == pytest.approx(40.0 / 30.0)
    assert r["rounds"][0]["job_cpu_s_per_user"] == [3.0, 3.0]              # computed users only
    assert r["speedup_quiet_rounds"] == pytest.approx((12 / 20.3) / (12 / 38.4))   # the noisy round left out
    assert "speedup_quiet_rounds" not in _round_pairs(lo[1:2], hi[1:2])


def test_a_failing_classical_reference_does_not_fail_the_user(fleet_data, monkeypatch):
    import imutune.personalize.reference as R
    from imutune.train.bundle import load_bundle

    def boom(*a, **k):
        raise ValueError("train has 12 windows of 1 classes; the classical reference needs at least 2 classes present")

    monkeypatch.setattr(R, "fit_reference", boom)
    base = load_bundle(fleet_data["base"])
    spec = discover_users(fleet_data["users"])[0]
    files, _ = read_user_files(spec)
    res = personalize_user(base, spec.user_id, files, config=_tiny_config("ce"))
    assert res["status"] == "ok"
    assert res["result"]["random_forest"] is None and res["result"]["model_minus_random_forest"] is None
    assert "at least 2 classes" in res["result"]["random_forest_error"]
