"""The selective fine-tuning benchmark on a tiny configuration: outputs, resume, command line."""
from __future__ import annotations

import json

import numpy as np
import pytest
from imutune.bench.selective import (
    SelectiveBenchConfig,
    quick_config,
    run_selective_bench,
    split_halves,
)
from imutune.train.loop import TrainConfig


def _tiny(**kw) -> SelectiveBenchConfig:
    base = SelectiveBenchConfig(model_name="tinycnn1d", target_users=("subject10",), subjects=(9, 10),
                                distortions=("bias", "rotation"), levels=(2,), shots=(2,), seeds=(0,),
                                fractions=(0.1, 0.25), pretrain=TrainConfig(epochs=1, batch_size=64, lr=3e-3),
                                finetune=TrainConfig(epochs=2, batch_size=8, lr=1e-3),
                                selective_train=TrainConfig(epochs=2, batch_size=8, lr=1e-2), eval_every=1)
    return SelectiveBenchConfig(**{**base.__dict__, **kw})


def test_split_halves(watch_recordings):
    r = watch_recordings[0]
    a, b = split_halves([r])
    assert a[0].n_samples + b[0].n_samples == r.n_samples
    np.testing.assert_array_equal(np.concatenate([a[0].values, b[0].values]), r.values)


def test_tiny_benchmark_writes_report_and_resumes(tmp_path):
    logs: list[str] = []
    rep = run_selective_bench(tmp_path, _tiny(), log=logs.append)
    for name in ("bench_selective.json", "bench_selective.md", "selective_recovery.png", "selective_curves.png",
                 "selective_severity.png", "pretrained/model.json"):
        assert (tmp_path / name).is_file(), name
    assert rep["n_runs"] == 2 and len(list((tmp_path / "runs").glob("*.json"))) == 2
    s = rep["summary"]
    deep = ["borda-deep 10%", "random-deep 10%", "shift-deep 10%", "combined-deep 10%"]
    assert set(s) == {"none", "full", "full (selective lr)", "layer", "random 10%", "borda 10%", "borda 25%",
                      "borda-bn 10%", "grad 10%", *deep}
    assert s["grad 10%"]["trainable_parameters"] == s["borda 10%"]["trainable_parameters"]
    assert s["grad 10%"]["rank_seconds"] > 0
    # the control trains everything, at the selective budget; the other runs' curves follow their own budgets
    assert s["full (selective lr)"]["trainable_parameters"] == s["full"]["trainable_parameters"]
    assert rep["config"]["selective_train"]["lr"] == 1e-2 and rep["config"]["bn_statistics"] == "frozen"
    assert s["full"]["vs_full"] == pytest.approx(1.0) or s["full"]["vs_full"] is None
    assert s["borda 10%"]["trainable_parameters"] == s["random 10%"]["trainable_parameters"] \
        < s["borda 25%"]["trainable_parameters"] < s["full"]["trainable_parameters"]
    assert s["borda-deep 10%"]["trainable_parameters"] == s["random-deep 10%"]["trainable_parameters"]
    assert all(v.get("frozen_drift", 0) == 0 for v in s.values())
    assert 0 < s["borda 10%"]["patch_fraction"] < 1
    assert s["borda 10%"]["patch_bytes_fp16"] < s["borda 10%"]["patch_bytes"] <= s["borda 10%"]["patch_bytes_list"]
    # the deep budget leaves a cached frozen prefix and costs less per step than per-layer selection and full
    for m in deep:
        assert s[m]["cached_units"] >= 1 and s[m]["step_flops_vs_full"] < s["borda 10%"]["step_flops_vs_full"] < 1
    assert s["full"]["step_flops_vs_full"] == pytest.approx(1.0) and s["full"]["cached_units"] == 0
    assert all(s[m]["seconds_per_epoch"] > 0 for m in s if m != "none")
    assert "borda 10%: vs_full >= 0.9" in rep["targets"] and "combined-deep 10%: patch <= 10% of model (fp16)" \
        in rep["targets"]
    assert "borda-deep 10% vs random-deep 10%: paired 95% interval above 0" in rep["targets"]
    assert set(rep["comparisons"]) == {"borda 10% vs random 10%", "grad 10% vs random 10%",
                                       "borda-deep 10% vs random-deep 10%",
                                       "shift-deep 10% vs random-deep 10%", "combined-deep 10% vs random-deep 10%"}
    assert rep["protocol"].startswith("calibrate-then-use")
    assert (tmp_path / "selective_cost.png").is_file()
    md = (tmp_path / "bench_selective.md").read_text()
    assert "| borda 10% |" in md and "## Targets" in md and "| shift-deep 10% |" in md
    data = json.loads((tmp_path / "bench_selective.json").read_text())
    assert data["runs"][0]["methods"]["borda 10%"]["curve"][0][0] == 0
    # the host line is measured: each run records the 1-min load average around itself
    loads = [v for r in data["runs"] for v in r["load_average_1min"]]
    assert len(loads) == 4 and all(v >= 0 for v in loads)
    assert f"1-min load average {min(loads):.1f}-{max(loads):.1f} around the runs on " in md
    assert "shared machine" not in md
    # the classical reference, fitted on each run's distorted calibration windows (issue 15)
    ref = rep["classical_reference"]
    assert ref["n"] == 2 and 0 <= ref["random_forest_accuracy_mean"] <= 1 and "## Classical reference" in md
    assert ref["full_minus_random_forest_mean"] == pytest.approx(ref["full_accuracy_mean"]
                                                                 - ref["random_forest_accuracy_mean"])
    assert len(list((tmp_path / "reference").glob("*.json"))) == 2
    reference_mtimes = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "reference").glob("*.json")}
    # resume: finished runs are reused, nothing is retrained
    logs.clear()
    rep2 = run_selective_bench(tmp_path, _tiny(), log=logs.append)
    assert not any(line.startswith("[1/") for line in logs)
    assert any("reusing" in line for line in logs)
    assert rep2["summary"]["borda 10%"]["accuracy"] == s["borda 10%"]["accuracy"]
    assert rep2["classical_reference"] == ref                          # reused, not refitted
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "reference").glob("*.json")} == reference_mtimes


def test_host_line_says_when_runs_recorded_no_load():
    from imutune.bench.selective import _host_line

    assert "not recorded" in _host_line({"runs": [{"acc_none": 0.5}], "host": {"cores": 2}})
    line = _host_line({"runs": [{"load_average_1min": [0.5, 1.0]}, {"load_average_1min": [2.5, 1.5]}],
                       "host": {"cores": 2}})
    assert "1-min load average 0.5-2.5 around the runs on 2 cores" in line


def test_bench_config_errors():
    with pytest.raises(ValueError, match="must be one of"):
        _tiny(distortions=("blur",))
    with pytest.raises(ValueError, match="levels"):
        _tiny(levels=(3,))
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        _tiny(fractions=(1.5,))
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        _tiny(deep_fraction=0.0 + 2)
    with pytest.raises(ValueError, match="deep_pool must be a number >= 1"):
        _tiny(deep_pool=0.5)
    with pytest.raises(ValueError, match="calibration_fraction must be in"):
        _tiny(calibration_fraction=1.0)
    with pytest.raises(ValueError, match="bn_statistics must be one of"):
        _tiny(bn_statistics="running")
    with pytest.raises(ValueError, match=r"shard must be \(i, n\) with integers 0 <= i < n, got \(2, 2\)"):
        _tiny(shard=(2, 2))
    assert quick_config().seeds == (0,)


def test_bench_selective_command(tmp_path, capsys):
    from imutune.cli import main

    rc = main(["bench", "selective", "--out", str(tmp_path), "--model", "tinycnn1d", "--targets", "subject10",
               "--subjects", "9", "10", "--distortions", "gain", "--levels", "0", "--shots", "2", "--seeds", "0",
               "--fractions", "0.1", "--deep-fraction", "0.2", "--epochs", "1", "--pretrain-epochs", "1",
               "--selective-lr", "0.02", "--bn-statistics", "batch", "--eval-every", "1"])
    assert rc == 0 and (tmp_path / "bench_selective.md").is_file()
    md = (tmp_path / "bench_selective.md").read_text()
    assert "| borda-deep 20% |" in md and "lr 0.02 (every other method" in md and "with batch statistics" in md
    cfg = json.loads((tmp_path / "bench_selective_config.json").read_text())
    assert cfg["selective_train"]["lr"] == 0.02 and cfg["finetune"]["lr"] == 1e-3 and cfg["bn_statistics"] == "batch"
    assert main(["bench", "selective", "--out", str(tmp_path / "x"), "--distortions", "blur"]) == 2
    capsys.readouterr()
    assert main(["bench", "selective", "--out", str(tmp_path / "y"), "--shard", "2/2"]) == 2
    assert "--shard must be (i, n) with integers 0 <= i < n, got (2, 2)" in capsys.readouterr().err
    assert main(["bench", "selective", "--out", str(tmp_path / "y"), "--shard", "two"]) == 2
    assert "--shard must be I/N with integers, e.g. 0/2, got 'two'" in capsys.readouterr().err
    assert not (tmp_path / "y").exists()                       # refused before anything is written


def test_shards_split_the_runs_and_the_last_one_writes_the_report(tmp_path):
    logs: list[str] = []
    part = run_selective_bench(tmp_path, _tiny(shard=(1, 2)), log=logs.append)
    assert part == {"n_runs": 1, "n_expected": 2, "complete": False}
    assert not (tmp_path / "bench_selective.json").exists()
    assert sorted(p.name for p in (tmp_path / "runs").glob("*.json")) == ["rotation_L2_k2_subject10_s0.json"]
    logs.clear()
    rep = run_selective_bench(tmp_path, _tiny(shard=(0, 2)), log=logs.append)
    assert rep["n_runs"] == 2 and (tmp_path / "bench_selective.json").is_file()
    assert sum(line.startswith("[") and "shots" in line for line in logs) == 1     # only its own run trained
    assert rep["config"]["shard"] == [0, 2] or rep["config"]["shard"] == (0, 2)
    again = run_selective_bench(tmp_path, _tiny(), log=logs.append)                  # unsharded: all cached
    assert again["summary"]["borda 10%"]["accuracy"] == rep["summary"]["borda 10%"]["accuracy"]


def test_a_shard_reports_when_the_other_shard_finishes_after_it_passed_those_runs(tmp_path):
    """Shards run at the same time: shard 1 passes run 0 (shard 0's, not there yet), then shard 0 finishes
    while shard 1 trains run 1; shard 1 must still see run 0 at its end and write the report."""
    started = []

    def log(line: str) -> None:          # shard 1 logs after it trained run 1: shard 0 runs "meanwhile"
        if line.startswith("[2/2]") and not started:
            started.append(1)
            run_selective_bench(tmp_path, _tiny(shard=(0, 2)), log=lambda _line: None)

    rep = run_selective_bench(tmp_path, _tiny(shard=(1, 2)), log=log)
    assert started and rep.get("n_runs") == 2 and "summary" in rep
    assert (tmp_path / "bench_selective.json").is_file()


_CHILD = r"""
import sys
import numpy as np
from pathlib import Path
from imutune.bench.selective import SelectiveBenchConfig, _pretrained
from imutune.signal.windows import Windows
from imutune.train.loop import TrainConfig

rng = np.random.default_rng(0)
src = Windows(rng.normal(size=(64, 6, 100)).astype(np.float32), np.arange(64) % 7, np.zeros(64, np.int64),
              np.array(["s1"] * 64), ("ABD", "ELB", "ER", "FEL", "IR", "PEN", "ROW"),
              ("acc_x", "acc_y", "acc_z", "gyr_x", "gyr_y", "gyr_z"))
cfg = SelectiveBenchConfig(model_name="tinycnn1d", pretrain=TrainConfig(epochs=2, batch_size=16, device="cpu"))
_pretrained(Path(sys.argv[1]), cfg, src, lambda m: print(m, flush=True))
"""


def test_shards_started_together_pretrain_once(tmp_path):
    # two shards on one fresh --out: without the lock both pretrained into the same checkpoint and one crashed
    # when the other's cleanup removed its temporary file; now one pretrains and the other reuses its bundle
    import subprocess
    import sys

    procs = [subprocess.Popen([sys.executable, "-c", _CHILD, str(tmp_path)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [e for _, e in outs]
    logs = [o for o, _ in outs]
    assert sum("reusing" in o for o in logs) == 1 and sum("source accuracy" in o for o in logs) == 1
    assert (tmp_path / "pretrained" / "model.json").is_file()
