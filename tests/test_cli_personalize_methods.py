"""``imutune finetune`` accepts every personalization method and ``--label-noise`` (issue 16)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from imutune.cli import build_parser, main
from imutune.data.recordings import Recording, save_npz
from imutune.personalize.baselines import METHODS
from imutune.personalize.methods import METHOD_NAMES, canonical_loss
from imutune.signal.windows import WindowConfig, make_windows
from imutune.train.bundle import save_bundle
from imutune.train.loop import TrainConfig
from imutune.train.pretrain import pretrain

CLASSES = ("a", "b", "c")
CH = ("acc_x", "acc_y", "acc_z")


def _recording(k, seed, user="u", seconds=40.0, rate=50.0):
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    v = rng.normal(scale=0.3, size=(t.size, 3)).astype(np.float32)
    v[:, k] += np.sin(2 * np.pi * (1 + k) * t) + 1.0
    return Recording(v, np.full(t.size, k), rate, CH, CLASSES, user, name=f"r{k}_{seed}")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    win = WindowConfig(window_s=1.0, hop_s=1.0)
    src = [_recording(k, s, user=f"s{s}") for k in range(3) for s in (1, 2)]
    b = pretrain(make_windows(src, win), model_name="tinycnn1d", window=win, progress=False,
                 train_config=TrainConfig(epochs=2, batch_size=32))
    save_bundle(b, d / "base")
    data = [str(save_npz(_recording(k, 7), d / f"user_{k}.npz")) for k in range(3)]
    test = [str(save_npz(_recording(k, 8), d / f"test_{k}.npz")) for k in range(3)]
    return d, data, test


def test_every_method_name_is_accepted_by_the_parser():
    assert {canonical_loss(m) for m in METHODS} == set(METHOD_NAMES)
    ap = build_parser()
    for name in (*METHOD_NAMES, "filterloss_cv", "class_balanced"):
        args = ap.parse_args(["finetune", "--base", "b", "--data", "d", "--out", "o", "--loss", name])
        assert args.loss == canonical_loss(name)
    with pytest.raises(SystemExit):
        ap.parse_args(["finetune", "--base", "b", "--data", "d", "--out", "o", "--loss", "smote"])


@pytest.mark.parametrize("loss", ["gce", "cleanlab", "filterloss-cv", "oracle"])
def test_finetune_with_label_noise_reports_the_filter(setup, loss, capsys):
    d, data, test = setup
    out = d / f"out_{loss}"
    rc = main(["finetune", "--base", str(d / "base"), "--data", *data, "--test-data", *test, "--out", str(out),
               "--loss", loss, "--label-noise", "symmetric:0.3", "--epochs", "1", "--no-progress"])
    assert rc == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert res["label_noise"] == "symmetric 0.3" and res["corrupted_windows"] == round(0.3 * res["n_train"])
    assert 0 <= res["after"]["macro_f1"] <= 1 and "before" in res
    if loss in ("cleanlab", "filterloss-cv"):
        assert res["filter"]["corrupted"] == res["corrupted_windows"]
    assert (out / "model.json").is_file() and (out / "finetune_report.json").is_file()


def test_finetune_label_noise_errors(setup, capsys):
    d, data, _ = setup
    rc = main(["finetune", "--base", str(d / "base"), "--data", *data, "--out", str(d / "x"), "--loss", "oracle",
               "--no-progress"])
    assert rc == 2 and "needs --label-noise" in capsys.readouterr().err
    rc = main(["finetune", "--base", str(d / "base"), "--data", *data, "--out", str(d / "x"),
               "--label-noise", "loud:3", "--no-progress"])
    assert rc == 2 and "--label-noise" in capsys.readouterr().err
