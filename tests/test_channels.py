"""Channel sets (issue 15, item 2): a channel-subset fine-tune (a new input layer from the pretrained filters'
slices, the contract subset), accelerometer-only pretraining, and pretraining on an SHL-2018 folder as one
command (the README's commands)."""
from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from conftest import write_shl_folder
from imutune.cli import main
from imutune.data.recordings import Recording, save_npz
from imutune.models.resnet1d import adapt_input_channels, create_model
from imutune.personalize import finetune as ft_module
from imutune.personalize.finetune import FinetuneConfig, adapt_bundle_channels, finetune
from imutune.signal.contract import Preprocessing
from imutune.signal.windows import WindowConfig, make_windows
from imutune.train.bundle import evaluate_bundle, load_bundle, save_bundle
from imutune.train.loop import TrainConfig
from imutune.train.pretrain import pretrain

CH = ("acc_x", "acc_y", "acc_z", "gyr_x", "gyr_y", "gyr_z")
ACC = ("acc_x", "acc_y", "acc_z")
UNITS = {"acc_x": "g", "acc_y": "g", "acc_z": "g", "gyr_x": "rad/s", "gyr_y": "rad/s", "gyr_z": "rad/s"}
CLASSES = ("still", "walk", "run")
FAST = TrainConfig(epochs=2, batch_size=16, lr=3e-3, device="cpu")
COMMON = ["--no-progress", "--device", "cpu", "--seed", "0"]
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _rec(i: int, channels=CH, *, n: int = 450, name: str | None = None, gravity=True) -> Recording:
    """Three classes separated by the acc_x level and the gyr_z variance, 50 Hz."""
    rng = np.random.default_rng(i)
    labels = np.repeat(np.arange(3), n // 3)
    full = rng.normal(0.0, 0.2, size=(n, len(CH))).astype(np.float32)
    full[:, 2] += 1.0                                           # gravity on acc_z
    full[:, 0] += labels * 0.8
    full[:, 5] *= 1 + labels
    values = full[:, [CH.index(c) for c in channels]]
    meta = {"units": {c: UNITS[c] for c in channels}, "gravity": gravity}
    return Recording(values, labels, 50.0, tuple(channels), CLASSES, user=f"u{i}", name=name or f"r{i}", meta=meta)


@pytest.fixture(scope="module")
def base():
    w = make_windows([_rec(0), _rec(1), _rec(2)], WindowConfig(window_s=1.0, hop_s=0.5))
    torch.manual_seed(0)
    return pretrain(w, model_name="tinycnn1d", train_config=FAST, holdout_fraction=0.34, progress=False)


# ---------------------------------------------------------------------------------------------- the model surgery

def test_adapt_input_channels_copies_the_slices_and_equals_mean_imputation():
    torch.manual_seed(0)
    model = create_model("tinycnn1d", in_channels=6, num_classes=3).eval()
    for mod in model.modules():                       # non-trivial batch-norm statistics
        if isinstance(mod, torch.nn.BatchNorm1d):
            mod.running_mean.uniform_(-0.3, 0.3)
            mod.running_var.uniform_(0.5, 1.5)
    before = copy.deepcopy(model)
    keep = [4, 0, 2]
    adapt_input_channels(model, keep)
    assert model.in_channels == 3 and model.stem[0].in_channels == 3
    torch.testing.assert_close(model.stem[0].weight, before.stem[0].weight[:, keep, :], rtol=0, atol=0)
    for k, v in before.state_dict().items():          # nothing but the stem conv changed
        if k != "stem.0.weight":
            torch.testing.assert_close(model.state_dict()[k], v, rtol=0, atol=0)
    x = torch.randn(5, 6, 50)
    x_missing_at_mean = x.clone()
    x_missing_at_mean[:, [1, 3, 5]] = 0.0             # normalized input: 0 is the training mean
    with torch.no_grad():
        torch.testing.assert_close(model(x[:, keep]), before(x_missing_at_mean), rtol=1e-5, atol=1e-5)


def test_adapt_input_channels_refuses_bad_indices():
    model = create_model("tinycnn1d", in_channels=6, num_classes=3)
    with pytest.raises(ValueError, match=r"keep_idx \[0, 6\] must be a non-empty list of distinct channel indices "
                                         r"in \[0, 6\)"):
        adapt_input_channels(model, [0, 6])
    with pytest.raises(ValueError, match="distinct"):
        adapt_input_channels(model, [1, 1])
    with pytest.raises(ValueError, match="non-empty"):
        adapt_input_channels(model, [])
    with pytest.raises(ValueError, match="stem"):
        adapt_input_channels(torch.nn.Linear(3, 3), [0])


def test_contract_subset_picks_units_and_normalization():
    p = Preprocessing(channels=CH, class_names=CLASSES, sample_rate_hz=50.0, window_s=1.0, hop_s=0.5,
                      units=tuple(UNITS[c] for c in CH), norm_mean=(1, 2, 3, 4, 5, 6),
                      norm_std=(0.1, 0.2, 0.3, 0.4, 0.5, 0.6), gravity=True)
    q = p.subset_channels(("gyr_z", "acc_x"))
    assert q.channels == ("gyr_z", "acc_x") and q.units == ("rad/s", "g")
    assert q.norm_mean == (6.0, 1.0) and q.norm_std == (0.6, 0.1)
    assert (q.class_names, q.window_samples, q.hop_s, q.gravity) == (CLASSES, 50, 0.5, True)
    assert p.subset_channels(CH) is p
    with pytest.raises(ValueError, match=r"channels \['acc_x', 'mag_x'\] in finetune: \['mag_x'\] are not among "
                                         r"the model's channels; expected a non-empty subset of the model's "
                                         r"channels \['acc_x', 'acc_y'"):
        p.subset_channels(("acc_x", "mag_x"), where="finetune")
    with pytest.raises(ValueError, match="repeats a channel"):
        p.subset_channels(("acc_x", "acc_x"))


# ---------------------------------------------------------------------------------------------- finetune

def test_subset_finetune_starts_from_the_slices_and_saves_the_subset(base, tmp_path, monkeypatch):
    w = make_windows([_rec(5, ACC), _rec(6, ACC)], base.preprocessing, channels=ACC)
    seen = {}
    real_train = ft_module.train

    def spy(model, x, *a, **kw):
        seen["stem"] = model.stem[0].weight.detach().clone()
        seen["x_shape"] = tuple(x.shape)
        return real_train(model, x, *a, **kw)

    monkeypatch.setattr(ft_module, "train", spy)
    per = finetune(base, w, config=FinetuneConfig(train=FAST, loss="ce"), progress=False)
    # before training: the pretrained stem filters' slices for acc_x, acc_y, acc_z; no fake channels
    torch.testing.assert_close(seen["stem"], base.model.stem[0].weight[:, :3, :].detach(), rtol=0, atol=0)
    assert seen["x_shape"][1] == 3
    assert not torch.equal(per.model.stem[0].weight, seen["stem"])            # and it was fine-tuned
    assert base.model.in_channels == 6 and base.channels == CH                # the input is not modified
    assert per.channels == ACC and per.model.in_channels == 3
    assert per.preprocessing.units == ("g", "g", "g") and per.preprocessing.gravity is True
    np.testing.assert_allclose(per.preprocessing.norm_mean, base.preprocessing.norm_mean[:3])
    np.testing.assert_allclose(per.preprocessing.norm_std, base.preprocessing.norm_std[:3])
    assert per.info["channels_adapted"]["to"] == list(ACC)
    assert per.info["channels_adapted"]["kept_input_index"] == [0, 1, 2]
    save_bundle(per, tmp_path / "acc")
    meta = json.loads((tmp_path / "acc" / "model.json").read_text())
    assert meta["channels"] == list(ACC) and meta["in_channels"] == 3 and meta["gravity"] is True
    back = load_bundle(tmp_path / "acc")
    assert back.channels == ACC and back.preprocessing == per.preprocessing
    test = make_windows([_rec(7, ACC)], back.preprocessing)                   # the contract gives the channels
    score = evaluate_bundle(back, test, device="cpu")
    assert 0.0 <= score["accuracy"] <= 1.0
    with torch.no_grad():
        logits = back.model(torch.from_numpy(back.normalizer(test.x)))
    assert tuple(logits.shape) == (len(test), 3)


def test_adapted_bundle_predicts_as_the_full_model_with_the_missing_channels_at_their_mean(base):
    test = make_windows([_rec(15)], base.preprocessing)
    sub = adapt_bundle_channels(base, ("gyr_z", "acc_x"))
    assert sub.channels == ("gyr_z", "acc_x") and base.model.in_channels == 6
    imputed = test.x.copy()
    for j, c in enumerate(CH):                         # raw missing channels set to the training mean
        if c not in sub.channels:
            imputed[:, j] = base.preprocessing.norm_mean[j]
    with torch.no_grad():
        full = base.model.eval()(torch.from_numpy(base.normalizer(imputed)))
        adapted = sub.model.eval()(torch.from_numpy(sub.normalizer(test.x[:, [5, 0]])))
    torch.testing.assert_close(adapted, full, rtol=1e-4, atol=1e-4)
    assert adapt_bundle_channels(base, CH) is base
    with pytest.raises(ValueError, match=r"the model expects \[.*\] in this order .* or a strict subset"):
        adapt_bundle_channels(base, CH[::-1])


def test_subset_in_another_order_and_fewer_axes(base):
    chans = ("gyr_z", "acc_x")
    w = make_windows([_rec(8, chans)], base.preprocessing, channels=chans)
    per = finetune(base, w, config=FinetuneConfig(train=FAST, loss="ce"), progress=False)
    assert per.channels == chans and per.info["channels_adapted"]["kept_input_index"] == [5, 0]
    assert per.preprocessing.units == ("rad/s", "g")


def test_finetune_refuses_a_channel_the_model_does_not_have(base):
    w = make_windows([_rec(9, ACC)], WindowConfig(window_s=1.0, hop_s=0.5))
    w = type(w)(w.x, w.y, w.recording, w.users, w.class_names, ("acc_x", "acc_y", "mag_x"))
    with pytest.raises(ValueError, match=r"target windows have channels \['acc_x', 'acc_y', 'mag_x'\]; the model "
                                         r"expects \['acc_x', 'acc_y', 'acc_z', 'gyr_x', 'gyr_y', 'gyr_z'\] or a "
                                         r"subset of them \(\['mag_x'\] are not among"):
        finetune(base, w, config=FinetuneConfig(train=FAST, loss="ce"), progress=False)


# ---------------------------------------------------------------------------------------------- the commands

@pytest.fixture(scope="module")
def base_dir(base, tmp_path_factory):
    d = tmp_path_factory.mktemp("chan") / "base"
    save_bundle(base, d)
    return d


def _write(recs, folder):
    folder.mkdir(parents=True, exist_ok=True)
    for r in recs:
        save_npz(r, folder / f"{r.name}.npz")
    return folder


def test_cli_finetune_on_accelerometer_only_recordings_and_export(base_dir, tmp_path, capsys):
    tr = _write([_rec(10, ACC, name="me_a"), _rec(11, ACC, name="me_b")], tmp_path / "acc_train")
    te = _write([_rec(12, ACC, name="me_t")], tmp_path / "acc_test")
    rc = main(["finetune", "--base", str(base_dir), "--data", str(tr), "--test-data", str(te), "--out",
               str(tmp_path / "me"), "--loss", "ce", "--epochs", "2", *COMMON])
    out = capsys.readouterr()
    assert rc == 0, out.err
    report = json.loads((tmp_path / "me" / "finetune_report.json").read_text())
    assert report["channels_adapted"]["to"] == list(ACC) and "macro_f1" in report["after"]
    assert 0 <= report["before"]["macro_f1"] <= 1 and "at their training mean" in report["before"]["kind"]
    assert load_bundle(tmp_path / "me").channels == ACC
    pytest.importorskip("onnxruntime")
    rc = main(["export", "--model", str(tmp_path / "me"), "--data", str(te), "--out", str(tmp_path / "exp"),
               "--formats", "onnx", "--no-progress"])
    assert rc == 0, capsys.readouterr().err
    from imutune.deploy.backends import load_backend
    from imutune.deploy.manifest import load_manifest

    m = load_manifest(tmp_path / "exp" / "manifest.json")
    assert m.channels == ACC and m.preprocessing.gravity is True and m.preprocessing.units == ("g", "g", "g")
    backend = load_backend(tmp_path / "exp" / "model.onnx", manifest=m)
    x = np.zeros((1, 3, m.window_samples), np.float32)
    assert backend.run(x).shape == (1, 3)


def test_cli_finetune_names_the_channels_when_none_match(base_dir, tmp_path, capsys):
    r = _rec(13, ACC)
    odd = Recording(r.values, r.labels, 50.0, ("ax", "ay", "az"), CLASSES, user="u", name="odd")
    d = _write([odd], tmp_path / "odd")
    rc = main(["finetune", "--base", str(base_dir), "--data", str(d), "--out", str(tmp_path / "o"),
               "--epochs", "1", *COMMON])
    err = capsys.readouterr().err
    assert rc == 2
    assert "the recordings have channels ['ax', 'ay', 'az']; the model expects ['acc_x'" in err
    assert "Traceback" not in err


def test_cli_personalize_points_a_subset_to_finetune(base_dir, tmp_path, capsys):
    d = _write([_rec(14, ACC)], tmp_path / "accp")
    rc = main(["personalize", "--base", str(base_dir), "--data", str(d), "--out", str(tmp_path / "p"),
               "--epochs", "1", *COMMON])
    assert rc == 2
    assert "for a channel subset use imutune finetune" in capsys.readouterr().err


def test_finetune_channels_rule():
    from imutune.jobs import finetune_channels

    full = [_rec(0)]
    assert finetune_channels(CH, full) == CH                                   # extra channels: as before
    assert finetune_channels(CH[:3], full) == CH[:3]
    assert finetune_channels(CH, [_rec(1, ("acc_z", "acc_x"))]) == ("acc_x", "acc_z")   # the model's order
    assert finetune_channels(CH, full, ("gyr_x",)) == ("gyr_x",)
    with pytest.raises(ValueError, match=r"\['mag_x'\] are not among the model's channels"):
        finetune_channels(CH, [Recording(np.zeros((60, 2), np.float32), np.zeros(60, np.int64), 50.0,
                                         ("acc_x", "mag_x"), CLASSES, user="u")])


def _tiny_shl(folder, *, n_frames: int = 12, frame_len: int = 500):
    codes = np.repeat((np.arange(n_frames) % 3 + 1)[:, None], frame_len, axis=1)     # Still, Walk, Run
    return write_shl_folder(folder, order=list(range(n_frames)), frame_len=frame_len, labels=codes)


def test_pretrain_on_an_shl_folder_is_one_command_and_acc_only_works(tmp_path, capsys):
    _tiny_shl(tmp_path / "shl" / "train")
    rc = main(["pretrain", "--data", str(tmp_path / "shl" / "train"), "--out", str(tmp_path / "shl_model"),
               "--model", "tinycnn1d", "--epochs", "1", *COMMON])
    assert rc == 0, capsys.readouterr().err
    full = load_bundle(tmp_path / "shl_model")
    assert full.channels == ("Acc_x", "Acc_y", "Acc_z", "Gyr_x", "Gyr_y", "Gyr_z") and full.preprocessing.gravity
    rc = main(["pretrain", "--data", str(tmp_path / "shl" / "train"), "--out", str(tmp_path / "shl_acc"),
               "--model", "tinycnn1d", "--channels", "Acc_x", "Acc_y", "Acc_z", "--epochs", "1", *COMMON])
    printed = capsys.readouterr().out
    assert rc == 0 and json.loads(printed.strip().splitlines()[-1])["n_train"] > 0
    acc = load_bundle(tmp_path / "shl_acc")
    assert acc.channels == ("Acc_x", "Acc_y", "Acc_z") and acc.model.in_channels == 3
    assert acc.preprocessing.gravity is True and acc.preprocessing.sample_rate_hz == 50.0
