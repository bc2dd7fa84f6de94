"""The few-shot schedule / multi-head rehearsal benchmark (issue 15) on a tiny generated source and target."""
from __future__ import annotations

import json

import numpy as np
import pytest

from imutune.bench.few_shot import FewShotBenchConfig, run_few_shot_bench
from imutune.data.recording import Recording
from imutune.signal.windows import WindowConfig, make_windows
from imutune.train.bundle import save_bundle
from imutune.train.config import TrainConfig
from imutune.train.pretrain import pretrain

pytestmark = pytest.mark.usefixtures("one_torch_thread")
CH = ("acc_x", "acc_y", "acc_z", "gyr_x", "gyr_y", "gyr_z")
UNITS = dict(zip(CH, ("g",) * 3 + ("rad/s",) * 3))
WIN = WindowConfig(window_s=1.0, hop_s=0.5)


def _rec(seed: int, cls: int, classes, n: int = 200) -> Recording:
    """One activity per recording: class c oscillates at (1 + c) Hz."""
    rng = np.random.default_rng(seed)
    t = np.arange(n) / 50.0
    v = np.sin(2 * np.pi * (1.0 + cls) * t)[:, None] * rng.uniform(0.5, 1.5, size=6) + 0.2 * rng.normal(size=(n, 6))
    return Recording(v.astype(np.float32), np.full(n, cls, np.int64), 50.0, CH, classes, f"u{seed}",
                     f"r{seed:02d}_{cls}", {"units": UNITS})


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("fs")
    src_recs = [_rec(s, s % 3, ("a", "b", "c")) for s in range(6)]
    b = pretrain(make_windows(src_recs, WIN), model_name="tinycnn1d", progress=False, holdout_fraction=0.34,
                 train_config=TrainConfig(epochs=1, batch_size=16, device="cpu"))
    save_bundle(b, root / "source")
    target = ([_rec(100 + s, s % 2, ("walk", "run")) for s in range(4)],
              [_rec(200 + s, s % 2, ("walk", "run")) for s in range(2)])
    return root, src_recs, target


def test_few_shot_bench_schedules_and_rehearsal(setup):
    root, src_recs, target = setup
    cfg = FewShotBenchConfig(source_model=str(root / "source"), ks=(2,), seeds=(0, 1), losses=("ce",),
                             rehearsal_ks=(2,), rehearsal_ratios=(0.0, 1.0), rehearsal_windows=10,
                             extra_min_steps=(100,))
    res = run_few_shot_bench(root / "out", cfg, target=target, source_recordings=src_recs, command="test",
                             progress=False)
    for f in ("few_shot.json", "few_shot.md", "few_shot.png"):
        assert (root / "out" / f).is_file(), f
    rows = res["schedule"]["results"]
    assert len(rows) == 1 * 1 * 2 * 3 and {r["n_train"] for r in rows} == {4}
    steps = {r["schedule"]: r["steps"] for r in rows}
    assert steps == {"old": 30, "new": 90, "min_steps=100": 100}   # 30 epochs x 1 batch; the 90-step minimum
    s = res["schedule"]["summary"]["ce"]["2"]
    f1 = {(r["schedule"], r["seed"]): r["macro_f1"] for r in rows}
    assert s["per_seed"] == pytest.approx([f1[("new", i)] - f1[("old", i)] for i in (0, 1)])
    assert s["new"] == pytest.approx(np.mean([f1[("new", i)] for i in (0, 1)]))
    assert s["min_steps=100"]["per_seed"] == pytest.approx([f1[("min_steps=100", i)] - f1[("new", i)] for i in (0, 1)])
    reh = res["rehearsal"]
    assert reh["n_rehearsal"] == 10 and reh["n_source_scored"] > 0
    assert 0.0 <= reh["pretrained_source_accuracy"] <= 1.0
    by = {(r["rehearsal_ratio"], r["seed"]): r for r in reh["results"]}
    assert len(by) == 4
    assert by[(1.0, 0)]["rehearsal"] == "multi-head" and by[(0.0, 0)]["rehearsal"] is None
    for r in reh["results"]:
        assert all(0.0 <= r[m] <= 1.0 for m in ("target_macro_f1", "source_macro_f1", "source_accuracy"))
    assert set(reh["summary"]["2"]) == {"0", "1"}
    md = (root / "out" / "few_shot.md").read_text()
    assert "## Multi-head rehearsal" in md and "| ce |" in md and "| ce min_steps=100 |" in md
    # the classical reference on the same draws (a RandomForest fitted on each seed's calibration windows)
    from imutune.bench.transfer import draw_shots
    from imutune.personalize.reference import ReferenceConfig, fit_reference
    from imutune.signal.windows import make_windows

    rf = res["random_forest"]
    assert len(rf["per_seed"]["2"]) == 2 and rf["mean"]["2"] == pytest.approx(np.mean(rf["per_seed"]["2"]))
    assert "| random_forest (13 statistics per channel, same windows) |" in md
    from imutune.train.bundle import load_bundle

    src = load_bundle(root / "source")
    pool = make_windows(list(target[0]), src.preprocessing, channels=src.channels)
    test = make_windows(list(target[1]), src.preprocessing, channels=src.channels).relabel(pool.class_names)
    by_hand = fit_reference(pool.subset(draw_shots(pool, 2, 1)), config=ReferenceConfig(methods=("random_forest",),
                                                                                         seed=1))
    assert rf["per_seed"]["2"][1] == pytest.approx(by_hand.evaluate(test)["random_forest"]["macro_f1"])
    assert json.loads((root / "out" / "few_shot.json").read_text())["n_test"] == res["n_test"]


def test_few_shot_bench_errors(setup, monkeypatch):
    root, src_recs, target = setup
    with pytest.raises(ValueError, match=r"ks must be positive ints"):
        FewShotBenchConfig(ks=(0,))
    with pytest.raises(ValueError, match=r"extra_min_steps must be ints >= 1, got \[0\]"):
        FewShotBenchConfig(extra_min_steps=(0,))
    with pytest.raises(ValueError, match=r"rehearsal_ratios must be numbers >= 0"):
        FewShotBenchConfig(rehearsal_ratios=(-1.0,))
    cfg = FewShotBenchConfig(source_model=str(root / "source"), ks=(), seeds=(0,), rehearsal_ks=(2,),
                             rehearsal_windows=10_000)
    with pytest.raises(ValueError, match=r"rehearsal_windows=10000 but the source recordings give \d+ windows"):
        run_few_shot_bench(root / "bad", cfg, target=target, source_recordings=src_recs, progress=False)
    # BasicMotions without aeon: the loader's message names the install command
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "aeon" else real(name, *a))
    with pytest.raises(FileNotFoundError, match=r"pip install --no-deps aeon"):
        run_few_shot_bench(root / "bad", cfg, progress=False)


def test_few_shot_script_names_the_aeon_install(setup, monkeypatch, capsys):
    import importlib.util
    import runpy

    root, _, _ = setup
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "aeon" else real(name, *a))
    script = runpy.run_path(str(__import__("pathlib").Path(__file__).parents[1] / "benchmarks" / "few_shot.py"))
    assert script["main"](["--out", str(root / "noaeon"), "--source-model", str(root / "source")]) == 2
    assert "pip install --no-deps aeon" in capsys.readouterr().err
