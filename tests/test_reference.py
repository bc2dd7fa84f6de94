"""The classical reference (issue 15 item 6): statistics, fit, and its place in the finetune report."""
from __future__ import annotations

import json

import numpy as np
import pytest

from imutune.data.recording import Recording
from imutune.personalize.reference import (
    STATISTICS,
    ReferenceConfig,
    fit_reference,
    reference_markdown,
    reference_report,
    window_statistics,
)
from imutune.signal.windows import WindowConfig, make_windows
from imutune.train.config import TrainConfig

pytestmark = pytest.mark.usefixtures("one_torch_thread")
CH = ("acc_x", "acc_y", "gyr_z")
CLASSES = ("walk", "run")
FAST = TrainConfig(epochs=1, batch_size=16, lr=1e-2, seed=0, device="cpu")
UNITS = {"acc_x": "g", "acc_y": "g", "gyr_z": "rad/s"}


def _rec(seed=0, *, n=800, user="u1") -> Recording:
    """Class 1 oscillates with 3x the amplitude of class 0: easy for statistics."""
    rng = np.random.default_rng(seed)
    labels = (np.arange(n) // 100 % 2).astype(np.int64)
    t = np.arange(n) / 50.0
    amp = 1.0 + 2.0 * labels[:, None]
    values = (amp * np.sin(2 * np.pi * 2.0 * t)[:, None] + 0.2 * rng.normal(size=(n, 3))).astype(np.float32)
    return Recording(values, labels, 50.0, CH, CLASSES, user, f"rec{seed}", {"units": UNITS})


def test_window_statistics_values_and_shape():
    x = np.array([[[1.0, -1.0, 1.0, -1.0, 3.0], [2.0, 2.0, 2.0, 2.0, 2.0]]])        # (1, 2, 5)
    f = window_statistics(x)
    assert f.shape == (1, 2 * len(STATISTICS)) and len(STATISTICS) == 13
    s = dict(zip(STATISTICS, f[0, :13]))
    assert s["mean"] == pytest.approx(0.6) and s["min"] == -1.0 and s["max"] == 3.0 and s["median"] == 1.0
    assert s["energy"] == pytest.approx(13 / 5) and s["mean_abs_diff"] == pytest.approx(2.5)
    assert s["mean_crossing_rate"] == pytest.approx(4 / 4) and s["skewness"] > 0
    const = dict(zip(STATISTICS, f[0, 13:]))
    assert const["std"] == 0.0 and const["skewness"] == 0.0 and const["mean"] == 2.0
    with pytest.raises(ValueError, match=r"x must be a real array of shape \(N, C, T\) with N >= 1 and T >= 2"):
        window_statistics(np.zeros((3, 4)))
    with pytest.raises(ValueError, match="x holds NaN or Inf"):
        window_statistics(np.full((1, 1, 4), np.nan))


def test_reference_separates_an_easy_task_and_reports_the_difference():
    cfg = WindowConfig(window_s=1.0, hop_s=0.5)
    train, test = make_windows([_rec(0)], cfg), make_windows([_rec(1, user="u2")], cfg)
    rep = reference_report(train, test, model_macro_f1=0.5, config=ReferenceConfig(n_estimators=20))
    assert set(rep["methods"]) == {"random_forest", "logistic_regression"}
    assert rep["methods"]["random_forest"]["macro_f1"] > 0.9
    assert rep["model_minus_reference"]["random_forest"] == pytest.approx(
        0.5 - rep["methods"]["random_forest"]["macro_f1"])
    assert "behind the best classical reference" in rep["verdict"]
    assert "| random_forest (13 statistics per channel) |" in reference_markdown(rep)


def test_reference_errors():
    cfg = WindowConfig(window_s=1.0, hop_s=0.5)
    one = make_windows([_rec(0)], cfg)
    one = one.subset(np.flatnonzero(one.y == 0))
    with pytest.raises(ValueError, match=r"the classical reference needs at least 2 classes present"):
        fit_reference(one)
    with pytest.raises(ValueError, match=r"ReferenceConfig.methods has \['svm'\]; expected a non-empty subset"):
        ReferenceConfig(methods=("svm",))
    with pytest.raises(ValueError, match=r"n_estimators must be an int >= 1, got 0"):
        ReferenceConfig(n_estimators=0)


def test_the_classical_reference_is_in_the_finetune_report(tmp_path):
    from imutune.data.npz import save_npz
    from imutune.jobs import run_finetune
    from imutune.personalize.finetune import FinetuneConfig
    from imutune.train.bundle import save_bundle
    from imutune.train.pretrain import pretrain

    cfg = WindowConfig(window_s=1.0, hop_s=0.5)
    b = pretrain(make_windows([_rec(5), _rec(6, user="u6")], cfg), model_name="tinycnn1d", train_config=FAST,
                 holdout_fraction=0.5, progress=False)
    save_bundle(b, tmp_path / "base")
    save_npz(_rec(7, user="u7"), tmp_path / "train.npz")
    save_npz(_rec(8, user="u7"), tmp_path / "test.npz")
    res = run_finetune(tmp_path / "base", [tmp_path / "train.npz"], tmp_path / "per",
                       test_data=[tmp_path / "test.npz"], config=FinetuneConfig(train=FAST, loss="ce"),
                       progress=False)
    ref = res["classical_reference"]
    on_disk = json.loads((tmp_path / "per" / "finetune_report.json").read_text())["classical_reference"]
    assert on_disk == ref and ref["n_train"] == res["n_train"]
    assert ref["model_macro_f1"] == res["after"]["macro_f1"]
    for m in ("random_forest", "logistic_regression"):
        assert ref["model_minus_reference"][m] == pytest.approx(res["after"]["macro_f1"] - ref["methods"][m]["macro_f1"])
    # without --test-data the report says why there is no reference
    from imutune.jobs import _classical_reference

    assert "no --test-data" in _classical_reference(None, None, None)["skipped"]


def test_reference_score_is_one_fitted_method_scored_on_the_test_windows():
    from imutune.personalize.reference import ReferenceConfig, fit_reference, reference_score
    from imutune.signal.windows import Windows

    rng = np.random.default_rng(1)

    def windows(n):
        y = np.arange(n) % 2
        x = rng.normal(size=(n, 2, 16)).astype(np.float32)
        x[y == 1, 0] += 3.0
        return Windows(x, y, np.zeros(n, np.int64), np.array(["u"] * n), ("a", "b"), ("x", "y"))

    train, test = windows(20), windows(40)
    for method in ("random_forest", "logistic_regression"):
        by_hand = fit_reference(train, config=ReferenceConfig(methods=(method,), seed=2)).evaluate(test)[method]
        assert reference_score(train, test, method=method, seed=2) == by_hand
    with pytest.raises(ValueError, match=r"ReferenceConfig.methods has \['svm'\]"):
        reference_score(train, test, method="svm")
