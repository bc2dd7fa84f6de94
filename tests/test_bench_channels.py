"""The channel-subset benchmark (issue 15) on tiny synthetic subjects: every case, before/after, reference."""
from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from imutune.bench.channels import CASES, ChannelsBenchConfig, run_channels_bench
from imutune.data.recording import Recording
from imutune.personalize.finetune import FinetuneConfig
from imutune.signal.windows import WindowConfig
from imutune.train.config import FINETUNE, TrainConfig

pytestmark = pytest.mark.usefixtures("one_torch_thread")
CH = ("acc_x", "acc_y", "acc_z", "gyr_x", "gyr_y", "gyr_z")
UNITS = dict(zip(CH, ("g",) * 3 + ("rad/s",) * 3))
CLASSES = ("a", "b", "c")
WIN = WindowConfig(window_s=1.0, hop_s=0.5)


def _rec(subject: int, cls: int, n: int = 400) -> Recording:
    """Class c oscillates at (1 + c) Hz on the accelerometer and (1 + c) / 2 Hz on the gyroscope."""
    rng = np.random.default_rng(subject * 10 + cls)
    t = np.arange(n) / 50.0
    v = np.concatenate([np.sin(2 * np.pi * (1.0 + cls) * t)[:, None] * np.ones(3),
                        np.sin(np.pi * (1.0 + cls) * t)[:, None] * np.ones(3)], axis=1) + 0.2 * rng.normal(size=(n, 6))
    return Recording(v.astype(np.float32), np.full(n, cls, np.int64), 50.0, CH, CLASSES, f"subject{subject:02d}",
                     f"s{subject:02d}_{CLASSES[cls]}", {"subject": subject, "units": UNITS})


def _cfg(**over) -> ChannelsBenchConfig:
    base = dict(model_name="tinycnn1d", window=WIN, pretrain=TrainConfig(epochs=1, batch_size=16, device="cpu"),
                holdout_fraction=0.34, subjects=(4,),
                finetune=FinetuneConfig(train=replace(FINETUNE, epochs=2, min_steps=4), loss="ce"))
    base.update(over)
    return ChannelsBenchConfig(**base)


@pytest.fixture(scope="module")
def recs():
    return [_rec(s, c) for s in (1, 2, 3, 4) for c in range(3)]


def test_channels_bench_runs_every_case_and_caches_the_pretrained_models(recs, tmp_path):
    res = run_channels_bench(tmp_path, _cfg(), recordings=recs, command="test", progress=False)
    for f in ("channels.json", "channels.md", "channels.png"):
        assert (tmp_path / f).is_file(), f
    assert [r["case"] for r in res["results"]] == [c for c, _, _ in CASES]
    for r in res["results"]:
        for s in ("before", "after", "random_forest", "logistic_regression"):
            assert 0.0 <= r[s] <= 1.0, (r["case"], s)
        assert r["subject"] == 4 and r["n_train"] > 0 and r["n_test"] > 0
    by = {r["case"]: r for r in res["results"]}
    assert by["6ch->6ch"]["user_channels"] == list(CH) and by["6ch->6ch"]["channels_adapted"] is None
    assert by["6ch->acc"]["model_channels"] == list(CH) and by["6ch->acc"]["user_channels"] == list(CH[:3])
    assert by["6ch->acc"]["channels_adapted"]["to"] == list(CH[:3])
    assert by["acc->acc"]["model_channels"] == list(CH[:3]) and by["acc->acc"]["channels_adapted"] is None
    # the reference sees the same calibration windows whatever model is fine-tuned on them
    assert by["6ch->acc"]["random_forest"] == by["acc->acc"]["random_forest"]
    assert res["pretrained"]["acc"]["channels"] == list(CH[:3]) and res["pretrained"]["all"]["channels"] == list(CH)
    assert res["summary"]["6ch->acc"]["after"] == pytest.approx(by["6ch->acc"]["after"])
    md = (tmp_path / "channels.md").read_text()
    assert "| 6ch->acc |" in md and "Command: `test`" in md
    assert json.loads((tmp_path / "channels.json").read_text())["results"][0]["case"] == "6ch->6ch"
    from imutune.data.npz import load_npz
    from imutune.train.bundle import load_bundle

    assert load_bundle(tmp_path / "finetuned_6ch-acc").channels == CH[:3]
    tests = sorted((tmp_path / "user_acc_test").glob("*.npz"))
    assert len(tests) == 3 and load_npz(tests[0]).channels == CH[:3]
    # a second run reuses the cached pretrained models (same settings): same scores, nothing pretrained
    again = run_channels_bench(tmp_path, _cfg(), recordings=recs, progress=False)
    assert all(p["how"].startswith("cached in") for p in again["pretrained"].values())
    assert [r["after"] for r in again["results"]] == [r["after"] for r in res["results"]]


def test_channels_bench_errors(recs, tmp_path):
    with pytest.raises(ValueError, match=r"subjects must be a non-empty list of ints"):
        ChannelsBenchConfig(subjects=())
    with pytest.raises(ValueError, match=r"threads must be an int >= 1, got 0"):
        ChannelsBenchConfig(threads=0)
    with pytest.raises(ValueError, match=r"subject 7 has no recordings; subjects present are \[1, 2, 3, 4\]"):
        run_channels_bench(tmp_path, _cfg(subjects=(7,)), recordings=recs, progress=False)
    with pytest.raises(ValueError, match=r"leave no recordings to pretrain on"):
        run_channels_bench(tmp_path, _cfg(subjects=(1, 2, 3, 4)), recordings=recs, progress=False)
