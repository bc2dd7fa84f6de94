"""Tests for imutune.bench.filterloss: the statistics, a tiny calibrate-then-use run with label noise
(precision/recall against the injected truth, oracle, paired comparisons, resume, cached-only report),
the new-placement stress case, and the cross-dataset path on generated .npz recordings with a new class
set and another sample rate (tinycnn1d, very few epochs)."""
from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
from imutune.bench.filterloss import (
    FilterLossBenchConfig,
    quick_config,
    run_filterloss_bench,
)
from imutune.data.recordings import WATCH_CHANNELS, Recording, save_npz
from imutune.personalize.weights import FilterConfig
from imutune.signal.windows import WindowConfig
from imutune.train.loop import TrainConfig

FAST = dict(model_name="tinycnn1d", window=WindowConfig(hop_s=2.0), seeds=(0,),
            pretrain=TrainConfig(epochs=1, batch_size=64), finetune=TrainConfig(epochs=2, batch_size=32),
            filter=FilterConfig(probe_steps=20, meta_iterations=2, meta_unroll_steps=10, oof_epochs=1, n_folds=2),
            device="cpu")


def test_host_line_says_when_cells_recorded_no_load():
    from imutune.bench.filterloss import _host_line

    assert "not recorded" in _host_line({"cells": [{"macro_f1": 0.5}], "host": {"cores": 2}})
    assert "on 2 cores, 1-min load average 0.2-3.0 around the cells" in _host_line(
        {"cells": [{"load_average_1min": [0.2, 3.0]}], "host": {"cores": 2}})


def test_config_rejects_bad_input():
    with pytest.raises(ValueError, match="unknown methods"):
        FilterLossBenchConfig(methods=("ce", "smote"))
    with pytest.raises(ValueError, match=r"ratios must be >= 1 or None \(natural\), got 0\.5"):
        FilterLossBenchConfig(ratios=(0.5,))
    with pytest.raises(ValueError, match=r"target_test_data needs target_data"):
        FilterLossBenchConfig(target_test_data=("x.npz",))
    with pytest.raises(ValueError, match=r"subjects, seeds, ratios, noises and methods must not be empty"):
        FilterLossBenchConfig(seeds=())
    with pytest.raises(ValueError, match="label-noise spec 'loud'"):
        FilterLossBenchConfig(noises=("loud",))
    with pytest.raises(ValueError, match="protocol"):
        FilterLossBenchConfig(protocol="cross-arm")
    with pytest.raises(ValueError, match="calibration_fraction"):
        FilterLossBenchConfig(calibration_fraction=1.0)
    q = quick_config()
    assert q.protocol == "calibrate-then-use" and len(q.subjects) == 3 and "none" in q.noises


METHODS = ("none", "ce", "cleanlab", "oracle", "filterloss", "filterloss_cv")


def test_calibrate_then_use_run_with_label_noise_writes_report_and_resumes(tmp_path):
    cfg = FilterLossBenchConfig(subjects=(10,), source_subjects=(1, 2, 3), noises=("none", "symmetric:0.3"),
                                methods=METHODS, **FAST)
    logs = []
    res = run_filterloss_bench(tmp_path, cfg, progress=False, log=logs.append, threads=1)
    for name in ("filterloss.json", "filterloss.md", "macro_f1.png", "filter_pr.png",
                 "pretrained/subject10/model.json"):
        assert (tmp_path / name).is_file(), name
    assert res["protocol"] == "calibrate-then-use"
    assert res["cells_run"] == 12 and len(res["cells"]) == 12
    clean, noisy = res["summary"]["none | ratio 10"], res["summary"]["symmetric:0.3 | ratio 10"]
    assert set(clean) == set(METHODS)
    assert clean["ce"]["noise_rate_mean"] == 0 and 0.2 < noisy["ce"]["noise_rate_mean"] < 0.4
    for m, v in noisy.items():
        assert 0 <= v["macro_f1_mean"] <= 1
    assert "personalization_gain_mean" in noisy["ce"]
    cells = {(c["noise"], c["method"]): c for c in res["cells"]}
    oracle, ce = cells[("symmetric:0.3", "oracle")], cells[("symmetric:0.3", "ce")]
    assert oracle["n_train_effective"] == ce["n_train"] - ce["n_corrupted"]       # drops exactly the corrupted
    for m in ("cleanlab", "filterloss", "filterloss_cv"):
        f = cells[("symmetric:0.3", m)]["filter"]
        assert f["corrupted"] == ce["n_corrupted"] and 0 <= f["true_positives"] <= f["flagged"]
    assert 0 <= cells[("symmetric:0.3", "filterloss_cv")]["corrupted_weight_share"] <= 1
    p = res["paired"]["symmetric:0.3 | ratio 10"]
    assert {"filterloss_cv vs ce", "filterloss_cv vs cleanlab", "filterloss vs ce"} <= set(p)
    assert p["filterloss_cv vs ce"]["unit"] == "seed"
    md = (tmp_path / "filterloss.md").read_text()
    assert "calibrate-then-use" in md and "## Targets" in md and "precision / recall" in md
    data = json.loads((tmp_path / "filterloss.json").read_text())
    assert "wall time" in data["targets"]
    # the host line is measured: each cell records the 1-min load average around itself
    loads = [v for c in data["cells"] for v in c["load_average_1min"]]
    assert len(loads) == 2 * len(data["cells"]) and all(v >= 0 for v in loads)
    assert f"1-min load average {min(loads):.1f}-{max(loads):.1f} around the cells" in md and "shared 2-core machine" not in md
    # a rerun with the same config reuses the pretrained model and every cell
    res2 = run_filterloss_bench(tmp_path, cfg, progress=False, log=logs.append, threads=1)
    assert res2["cells_run"] == 0 and res2["cells_cached"] == 12 and res2["pretrain_seconds"] == 0
    assert res2["summary"]["none | ratio 10"]["ce"]["macro_f1_mean"] == pytest.approx(clean["ce"]["macro_f1_mean"])
    # cached-only: reports what is there, trains nothing, counts what is missing
    res3 = run_filterloss_bench(tmp_path, replace(cfg, noises=("none", "symmetric:0.3", "boundary:0.2")),
                                progress=False, log=logs.append, threads=1, cached_only=True)
    assert res3["cells_run"] == 0 and res3["cells_missing"] == len(METHODS) and res3["cells_cached"] == 12


def test_new_placement_stress_case(tmp_path):
    cfg = FilterLossBenchConfig(subjects=(10,), source_subjects=(1, 2), noises=("none",), methods=("none", "ce"),
                                protocol="new-placement", **FAST)
    res = run_filterloss_bench(tmp_path, cfg, progress=False, log=lambda s: None, threads=1)
    assert res["protocol"] == "new-placement" and len(res["cells"]) == 2
    assert "new-placement (stress case)" in (tmp_path / "filterloss.md").read_text()


def _write_target(folder, *, rate=100.0, seconds=60.0, seed=0):
    """Three recordings of one user with a new class set, at another sample rate than the watch data."""
    rng = np.random.default_rng(seed)
    classes = ("walk", "sit", "stairs")
    folder.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * rate)) / rate
    paths = []
    for k, name in enumerate(classes):
        values = rng.normal(scale=0.1, size=(t.size, 6)).astype(np.float32)
        values[:, k] += np.sin(2 * np.pi * (1 + k) * t)
        values[:, 3 + k] += 0.5
        rec = Recording(values, np.full(t.size, k), rate, WATCH_CHANNELS, classes, "newuser", name=f"rec_{name}")
        paths.append(save_npz(rec, folder / f"rec_{name}.npz"))
    return paths


def test_cross_dataset_new_classes_and_sample_rate(tmp_path):
    _write_target(tmp_path / "target")
    cfg = FilterLossBenchConfig(source_subjects=(1, 2), ratios=(None, 3.0), noises=("none",),
                                methods=("none", "ce", "oversample", "filterloss_cv"),
                                target_data=(str(tmp_path / "target"),), **{**FAST, "seeds": (0, 1)})
    res = run_filterloss_bench(tmp_path / "out", cfg, progress=False, log=lambda s: None, threads=1)
    assert res["targets_run"] == ["target"] and res["protocol"] == "cross-dataset"
    assert any("'none' needs the source class list" in s for s in res["skipped"])
    assert set(res["summary"]) == {"none | ratio natural", "none | ratio 3"}
    assert set(res["summary"]["none | ratio natural"]) == {"ce", "oversample", "filterloss_cv"}
    cells = res["cells"]
    assert len(cells) == 2 * 2 * 3
    natural = [c for c in cells if c["ratio"] == "natural"]
    # 60 s at 100 Hz resampled to 50 Hz; first half of each recording calibrates: 2 s windows every 2 s, 15 each
    assert all(c["class_counts"] == [15, 15, 15] for c in natural)
    assert all(0 <= c["accuracy"] <= 1 for c in cells)
    assert res["paired"]["none | ratio natural"]["filterloss_cv vs ce"]["unit"] == "seed"
    assert (tmp_path / "out" / "pretrained" / "watch_all" / "model.json").is_file()


def test_cross_dataset_with_explicit_test_recordings_and_wrong_classes(tmp_path):
    tr = _write_target(tmp_path / "train", seed=1)
    te = _write_target(tmp_path / "test", seed=2)
    cfg = FilterLossBenchConfig(source_subjects=(1, 2), ratios=(None,), methods=("ce",), noises=("none",),
                                target_data=tuple(map(str, tr)), target_test_data=tuple(map(str, te)), **FAST)
    res = run_filterloss_bench(tmp_path / "out", cfg, progress=False, log=lambda s: None, threads=1)
    assert res["cells"][0]["n_train"] == 90
    bad = Recording(np.zeros((500, 6), np.float32), np.zeros(500, np.int64), 50.0, WATCH_CHANNELS, ("x", "y"), "u")
    save_npz(bad, tmp_path / "bad.npz")
    with pytest.raises(ValueError, match="classes"):
        run_filterloss_bench(tmp_path / "out", replace(cfg, target_test_data=(str(tmp_path / "bad.npz"),)),
                             progress=False, log=lambda s: None, threads=1)


def test_cli_bench_filterloss(tmp_path, capsys):
    from imutune.cli import main

    rc = main(["bench", "filterloss", "--out", str(tmp_path), "--model", "tinycnn1d", "--subjects", "10",
               "--source-subjects", "1", "2", "--ratios", "10", "--seeds", "0", "--methods", "ce", "focal",
               "--noises", "none", "shift:1-3", "--epochs", "1", "--pretrain-epochs", "1", "--threads", "1",
               "--device", "cpu", "--no-progress"])
    assert rc == 0
    assert (tmp_path / "filterloss.md").is_file()
    rc = main(["bench", "filterloss", "--out", str(tmp_path), "--methods", "smote", "--no-progress"])
    assert rc == 2 and "unknown methods" in capsys.readouterr().err


def test_a_method_revision_reruns_only_that_methods_cached_cells(tmp_path, monkeypatch):
    # the cache is keyed by settings; a method whose computation changed (baselines.METHOD_REVISIONS) must not
    # reuse its old cells, and every other method's cells stay reused
    import imutune.bench.filterloss as B

    cfg = FilterLossBenchConfig(subjects=(10,), source_subjects=(1, 2, 3), noises=("none",),
                                methods=("ce", "filterloss_soft"), **FAST)
    res = run_filterloss_bench(tmp_path, cfg, progress=False, log=lambda *_: None, threads=1)
    assert res["cells_run"] == 2
    again = run_filterloss_bench(tmp_path, cfg, progress=False, log=lambda *_: None, threads=1)
    assert again["cells_run"] == 0 and again["cells_cached"] == 2
    monkeypatch.setitem(B.METHOD_REVISIONS, "filterloss_soft", B.METHOD_REVISIONS.get("filterloss_soft", 1) + 1)
    bumped = run_filterloss_bench(tmp_path, cfg, progress=False, log=lambda *_: None, threads=1)
    assert bumped["cells_run"] == 1 and bumped["cells_cached"] == 1
    assert {c["method"] for c in bumped["cells"]} == {"ce", "filterloss_soft"}


def test_random_forest_reference_runs_on_the_same_calibration_windows(tmp_path):
    # issue 15: every report shows the classical reference; here it is a method of the benchmark grid, fitted
    # on the same (noisy) calibration windows as the deep methods and paired against the best FilterLoss variant
    from imutune.personalize.reference import ReferenceConfig, fit_reference

    cfg = FilterLossBenchConfig(subjects=(10,), source_subjects=(1, 2, 3), noises=("symmetric:0.3",),
                                methods=("ce", "filterloss", "random_forest"), **FAST)
    res = run_filterloss_bench(tmp_path, cfg, progress=False, log=lambda *_: None, threads=1)
    cells = {c["method"]: c for c in res["cells"]}
    rf, ce = cells["random_forest"], cells["ce"]
    assert rf["n_train"] == ce["n_train"] and rf["n_corrupted"] == ce["n_corrupted"] and rf["steps"] == 0
    # the same figure as fitting the reference by hand on the benchmark's calibration windows
    import imutune.bench.filterloss as B

    unit = next(B._units(tmp_path, cfg, False, lambda *_: None))
    nw = B._calibration(unit, "symmetric:0.3", 10.0, 0, cfg)
    ref = fit_reference(nw.windows, config=ReferenceConfig(methods=("random_forest",), seed=0))
    assert rf["macro_f1"] == pytest.approx(ref.evaluate(unit.test)["random_forest"]["macro_f1"])
    assert "filterloss vs random_forest" in res["paired"]["symmetric:0.3 | ratio 10"]
    assert "random_forest" in (tmp_path / "filterloss.md").read_text()
    with pytest.raises(ValueError, match=r"unknown methods \['forest'\]; expected some of .*'random_forest'"):
        FilterLossBenchConfig(methods=("forest",))
