"""The transfer benchmark (issue 15) on a generated target: every method, k and seed; paired differences."""
from __future__ import annotations

import json

import numpy as np
import pytest

from imutune.bench.report import paired_comparison
from imutune.bench.transfer import METHODS, TransferBenchConfig, quick_config, run_transfer_bench
from imutune.data.npz import save_npz
from imutune.data.recording import Recording
from imutune.signal.windows import WindowConfig, make_windows
from imutune.train.bundle import save_bundle
from imutune.train.config import TrainConfig
from imutune.train.pretrain import pretrain

pytestmark = pytest.mark.usefixtures("one_torch_thread")
CH = ("acc_x", "acc_y", "acc_z", "gyr_x", "gyr_y", "gyr_z")
UNITS = dict(zip(CH, ("g",) * 3 + ("rad/s",) * 3))
WIN = WindowConfig(window_s=1.0, hop_s=0.5)


def _rec(seed: int, cls: int, classes, *, units=UNITS, n=300) -> Recording:
    """One activity per recording: class c oscillates at (1 + c) Hz."""
    rng = np.random.default_rng(seed)
    t = np.arange(n) / 50.0
    v = np.sin(2 * np.pi * (1.0 + cls) * t)[:, None] * rng.uniform(0.5, 1.5, size=6) + 0.2 * rng.normal(size=(n, 6))
    return Recording(v.astype(np.float32), np.full(n, cls, np.int64), 50.0, CH, classes, f"u{seed}",
                     f"r{seed:02d}_{cls}", {"units": units})


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("bt")
    src_cls = ("a", "b", "c")
    w = make_windows([_rec(s, s % 3, src_cls) for s in range(6)], WIN)
    b = pretrain(w, model_name="tinycnn1d", train_config=TrainConfig(epochs=1, batch_size=16, device="cpu"),
                 holdout_fraction=0.3, progress=False)
    save_bundle(b, root / "source")
    # the target: other classes, accelerometer declared in m/s^2 (converted to the model's g on load)
    tgt_units = {**UNITS, "acc_x": "m/s^2", "acc_y": "m/s^2", "acc_z": "m/s^2"}
    (root / "target").mkdir()
    for s in range(8):
        save_npz(_rec(100 + s, s % 2, ("walk", "run"), units=tgt_units), root / "target" / f"t{s}.npz")
    return root


def test_transfer_bench_runs_every_method_and_pairs_over_seeds(setup):
    root = setup
    cfg = quick_config(target_data=(str(root / "target"),), source_model=str(root / "source"), window=WIN,
                       ks=(5,), seeds=(0, 1, 2), steps=4, selfsup_steps=4, selfsup_batch_size=8, device="cpu")
    res = run_transfer_bench(root / "out", cfg, command="test", progress=False)
    for f in ("transfer.json", "transfer.md", "transfer.png"):
        assert (root / "out" / f).is_file(), f
    assert len(res["results"]) == len(METHODS) * 1 * 3
    assert all(r["macro_f1"] is not None for r in res["results"]), [r for r in res["results"] if r.get("error")]
    deep = [r for r in res["results"] if r["method"] in ("transfer_ce", "selfsup_ft", "scratch")]
    assert {r["steps"] for r in deep} == {4} and {r["n_train"] for r in deep} == {10}   # one batch of 10, 4 epochs
    # the preset's schedule, not the benchmark's: 30 epochs x 1 batch < the 90-step minimum of FINETUNE
    assert {r["steps"] for r in res["results"] if r["method"] == "transfer_ce_preset"} == {90}
    assert res["target_units_conversions"] == ["acc_x, acc_y, acc_z m/s^2 -> g (x 0.101972)"]
    pk = res["paired"]["5"]
    best = pk["best_imutune"]
    f1 = {(r["method"], r["seed"]): r["macro_f1"] for r in res["results"] if r["k"] == 5}
    assert pk["best_minus_random_forest"]["per_seed"] == pytest.approx(
        [f1[(best, s)] - f1[("random_forest", s)] for s in (0, 1, 2)])
    pc = paired_comparison([f1[(best, s)] for s in (0, 1, 2)], [f1[("random_forest", s)] for s in (0, 1, 2)])
    assert (pk["best_minus_random_forest"]["ci_low"], pk["best_minus_random_forest"]["ci_high"]) == pytest.approx(
        (pc["ci_low"], pc["ci_high"]))                                 # the 95% t-interval over the 3 seeds
    assert pk["selfsup_ft_minus_transfer_ce"]["mean"] == pytest.approx(
        np.mean([f1[("selfsup_ft", s)] - f1[("transfer_ce", s)] for s in (0, 1, 2)]))
    assert set(res["targets"]) == {"best_imutune_vs_random_forest_k>=5", "selfsup_beats_watch_pretraining_k<=5",
                                   "finetune_seconds_k=5", "finetune_seconds_k=5_preset"}
    for m, key in (("transfer_ce", "finetune_seconds_k=5"), ("transfer_ce_preset", "finetune_seconds_k=5_preset")):
        timed = [r for r in res["results"] if r["method"] == m]
        loads = [v for r in timed for v in r["load_average_1min"]]   # recorded around each timed fit
        tt = res["targets"][key]
        assert tt["method"] == m and tt["max_s"] == pytest.approx(max(r["fit_seconds"] for r in timed))
        assert tt["note"].endswith(f"on this host: 1-min load average {min(loads):.1f}-{max(loads):.1f}")
    assert res["targets"]["finetune_seconds_k=5_preset"]["steps"] == [90]
    md = (root / "out" / "transfer.md").read_text()
    assert "| random_forest |" in md and "## Targets" in md and "best - RF (95% CI)" in md
    assert "k=5, transfer_ce_preset, 90 steps" in md
    assert json.loads((root / "out" / "transfer.json").read_text())["n_test"] == res["n_test"]


def test_transfer_bench_config_errors(setup):
    with pytest.raises(ValueError, match=r"methods has \['svm'\]; expected a non-empty subset"):
        TransferBenchConfig(methods=("svm",))
    with pytest.raises(ValueError, match=r"ks must be positive ints"):
        TransferBenchConfig(ks=(0,))
    cfg = quick_config(target_data=(str(setup / "target" / "t0.npz"),), source_model=str(setup / "source"), window=WIN)
    with pytest.raises(ValueError, match=r"class index 0 has 1 recording; expected at least 2 per class"):
        run_transfer_bench(setup / "bad", cfg, progress=False)
