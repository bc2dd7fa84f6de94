"""Self-supervised pretraining (issue 15 item 5): transformations, the objective, the CLI bundle."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from imutune.data.recording import Recording
from imutune.signal.windows import WindowConfig, make_windows
from imutune.train.selfsup import TRANSFORMATIONS, SelfSupConfig, pretrain_self_supervised, transform

pytestmark = pytest.mark.usefixtures("one_torch_thread")
CH = ("acc_x", "acc_y", "acc_z", "gyr_x", "gyr_y", "gyr_z")
UNITS = dict(zip(CH, ("g",) * 3 + ("rad/s",) * 3))
CFG = WindowConfig(window_s=1.0, hop_s=0.5)


def _rec(seed, *, n=1500, labelled=True) -> Recording:
    rng = np.random.default_rng(seed)
    t = np.arange(n) / 50.0
    f = rng.uniform(0.5, 3.0, size=6)
    v = np.sin(2 * np.pi * f[None, :] * t[:, None] + rng.uniform(0, 6, size=6)) + 0.1 * rng.normal(size=(n, 6))
    v[:, 2] += 1.0                                                       # gravity on z
    labels = (np.arange(n) // 250 % 2) if labelled else np.full(n, -1)
    return Recording(v.astype(np.float32), labels.astype(np.int64), 50.0, CH, ("a", "b"), f"u{seed}", f"r{seed}",
                     {"units": UNITS})


def test_transformations_do_what_they_say():
    x = make_windows([_rec(0)], CFG).x[:8]
    xt = torch.as_tensor(x)
    assert torch.equal(transform("negation", x), -xt)
    assert torch.equal(transform("time_flip", x), torch.flip(xt, dims=(2,)))
    rot = transform("rotation", x, seed=1)
    for s in (0, 3):   # a rotation keeps each sensor's vector norm and changes the axes
        np.testing.assert_allclose(rot[:, s:s + 3].norm(dim=1), xt[:, s:s + 3].norm(dim=1), rtol=1e-4)
    assert not torch.allclose(rot, xt)
    perm = transform("permutation", x, seed=2)
    np.testing.assert_allclose(np.sort(perm.numpy(), axis=2), np.sort(x, axis=2))   # same samples, new order
    assert not torch.allclose(perm, xt)
    shuf = transform("channel_shuffle", x, seed=3)
    assert sorted(shuf[0, :3, 0].tolist()) == pytest.approx(sorted(x[0, :3, 0].tolist()))
    for name in TRANSFORMATIONS:
        y = transform(name, x, seed=4)
        assert y.shape == xt.shape and torch.isfinite(y).all() and not torch.allclose(y, xt), name
    with pytest.raises(ValueError, match=r"transformation 'jitter' is unknown; expected one of"):
        transform("jitter", x)
    with pytest.raises(ValueError, match=r"x must have shape \(N, C, T\) with T >= 2, got \(8, 6\)"):
        transform("noise", x[:, :, 0])


def test_self_supervised_objective_decreases_on_a_tiny_corpus():
    w = make_windows([_rec(1, labelled=False), _rec(2, labelled=False)], CFG, unlabeled=True)
    assert len(w) > 100 and (w.y == -1).all()                            # unlabeled windows are kept
    b = pretrain_self_supervised(w, model_name="tinycnn1d",
                                 config=SelfSupConfig(steps=80, batch_size=16, lr=3e-3, device="cpu"))
    info = b.info
    assert info["selfsup_loss_last"] < info["selfsup_loss_first"] - 0.05, (info["selfsup_loss_first"],
                                                                            info["selfsup_loss_last"])
    assert info["selfsup_loss_first"] == pytest.approx(np.log(2), abs=0.1)        # chance at the start
    assert info["head"] == "untrained" and b.class_names == ("a", "b") and b.units == tuple(UNITS.values())
    assert info["selfsup_task_accuracy"]["negation"] > 0.6


def test_config_errors():
    with pytest.raises(ValueError, match=r"SelfSupConfig.steps must be an int >= 1, got 0"):
        SelfSupConfig(steps=0)
    with pytest.raises(ValueError, match=r"SelfSupConfig.tasks has \['blur'\]; expected distinct names"):
        SelfSupConfig(tasks=("blur",))
    w = make_windows([_rec(1)], CFG)
    with pytest.raises(ValueError, match=r"windows holds 1 windows; self-supervised pretraining needs at least 2"):
        pretrain_self_supervised(w.subset(np.arange(1)))


def test_cli_pretrain_self_supervised_writes_a_bundle_that_finetunes(tmp_path):
    from imutune.cli import main
    from imutune.data.npz import save_npz
    from imutune.train.bundle import load_bundle

    (tmp_path / "unl").mkdir()
    for s in (3, 4):
        save_npz(_rec(s, labelled=False), tmp_path / "unl" / f"r{s}.npz")
    save_npz(_rec(5), tmp_path / "me.npz")
    common = ["--no-progress", "--device", "cpu", "--seed", "0"]
    assert main(["pretrain", "--self-supervised", "--selfsup-steps", "5", "--data", str(tmp_path / "unl"),
                 "--out", str(tmp_path / "ssl"), "--model", "tinycnn1d", "--window-s", "1.0", "--batch-size", "8",
                 *common]) == 0
    b = load_bundle(tmp_path / "ssl")
    assert b.info["head"] == "untrained" and b.info["steps"] == 5
    assert json.loads((tmp_path / "ssl" / "pretrain_config.json").read_text())["self_supervised"]["steps"] == 5
    assert main(["finetune", "--base", str(tmp_path / "ssl"), "--data", str(tmp_path / "me.npz"),
                 "--out", str(tmp_path / "per"), "--epochs", "1", "--loss", "ce", *common]) == 0
    assert (tmp_path / "per" / "model.json").is_file()
    assert main(["pretrain", "--selfsup-steps", "5", "--data", str(tmp_path / "unl"), "--out", str(tmp_path / "x"),
                 *common]) == 2
