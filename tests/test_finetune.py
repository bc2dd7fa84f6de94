"""Tests for imutune.finetune: the training loop, resumable checkpoints, bundles and the fine-tuning stage."""
from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from imutune.models.resnet1d import create_model
from imutune.personalize.finetune import FinetuneConfig, finetune
from imutune.personalize.quality import CategoryWeights
from imutune.signal.windows import Normalizer, WindowConfig, Windows
from imutune.train.bundle import ModelBundle, load_bundle, save_bundle
from imutune.train.loop import (
    TrainConfig,
    predict_logits,
    predict_proba,
    resolve_device,
    train,
)
from imutune.train.losses import FilterLoss
from imutune.train.pretrain import pretrain, split_holdout

C, T = 3, 32
WINDOW = WindowConfig(window_s=0.64, hop_s=0.32, sample_rate_hz=50.0)   # T = 32 samples
FAST = TrainConfig(epochs=3, batch_size=16, lr=1e-2, seed=0, device="cpu")


pytestmark = pytest.mark.usefixtures("one_torch_thread")   # tests/conftest.py


def _data(n=64, k=2, seed=0):
    """Separable windows: class c adds +2 to channel c % C."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % k
    x = rng.normal(size=(n, C, T)).astype(np.float32)
    for c in range(k):
        x[y == c, c % C, :] += 2.0
    return x, y.astype(np.int64)


def _windows(n=64, class_names=("a", "b"), channels=("x", "y", "z"), seed=0):
    x, y = _data(n, len(class_names), seed)
    rec = np.arange(n) % 8
    return Windows(x, y, rec.astype(np.int64), np.array(["u"] * n), tuple(class_names), tuple(channels))


def _model(k=2, seed=0):
    torch.manual_seed(seed)
    return create_model("tinycnn1d", in_channels=C, num_classes=k)


def _bundle(windows: Windows, seed=0) -> ModelBundle:
    model = _model(windows.num_classes, seed)
    norm = Normalizer.fit(windows.x)
    train(model, norm(windows.x), windows.y, config=FAST, progress=False)
    return ModelBundle(model, "tinycnn1d", windows.class_names, windows.channels, WINDOW, norm, {"stage": "test"})


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# --------------------------------------------------------------------------- TrainConfig

@pytest.mark.parametrize("kw,msg", [
    ({"epochs": 0}, r"epochs must be an integer >= 1, got 0"),
    ({"epochs": 2.5}, r"epochs must be an integer >= 1, got 2.5"),
    ({"epochs": True}, r"epochs must be an integer >= 1, got True"),
    ({"batch_size": 0}, r"batch_size must be an integer >= 1, got 0"),
    ({"lr": 0.0}, r"lr in TrainConfig must be a positive number, got 0.0"),
    ({"lr": float("nan")}, r"lr in TrainConfig must be a positive number"),
    ({"weight_decay": -1e-4}, r"weight_decay must be >= 0, got -0.0001"),
    ({"device": "tpu"}, r"device must be one of \['auto', 'cpu', 'cuda'\], got 'tpu'"),
])
def test_train_config_validation(kw, msg):
    with pytest.raises(ValueError, match=msg):
        TrainConfig(**kw)


def test_finetune_config_validation():
    with pytest.raises(ValueError, match=r"loss must be one of \['filterloss', 'filterloss-cv', 'filterloss-learned', 'filterloss-soft', 'ce'.*\], got 'mse'"):
        FinetuneConfig(loss="mse")


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match=r"device='cuda' was requested but no CUDA device is available"):
            resolve_device("cuda")


# --------------------------------------------------------------------------- train

def test_train_reduces_loss_and_fits():
    x, y = _data()
    model = _model()
    before = torch.nn.functional.cross_entropy(torch.from_numpy(predict_logits(model, x, device="cpu")),
                                               torch.from_numpy(y)).item()
    hist = train(model, x, y, config=replace(FAST, epochs=4), progress=False)
    assert len(hist["loss"]) == 4 and hist["resumed_from_epoch"] == 0 and hist["device"] == "cpu"
    assert hist["seconds"] > 0
    assert hist["loss"][-1] < hist["loss"][0]
    logits = predict_logits(model, x, device="cpu")
    after = torch.nn.functional.cross_entropy(torch.from_numpy(logits), torch.from_numpy(y)).item()
    assert after < before
    assert np.mean(logits.argmax(1) == y) >= 0.9
    assert not model.training                        # left in eval mode


def test_train_is_deterministic_for_a_seed():
    x, y = _data()
    m1, m2 = _model(), _model()
    h1 = train(m1, x, y, config=replace(FAST, epochs=2), progress=False)
    h2 = train(m2, x, y, config=replace(FAST, epochs=2), progress=False)
    assert h1["loss"] == h2["loss"]
    for k, v in m1.state_dict().items():
        assert torch.equal(v, m2.state_dict()[k]), k


def test_train_only_updates_trainable_params():
    x, y = _data()
    model = _model()
    for p in model.parameters():
        p.requires_grad_(False)
    for p in model.head.parameters():
        p.requires_grad_(True)
    conv_before = model.stem[0].weight.detach().clone()
    head_before = model.head.weight.detach().clone()
    train(model, x, y, config=replace(FAST, epochs=1), progress=False)
    assert torch.equal(model.stem[0].weight, conv_before)
    assert not torch.equal(model.head.weight, head_before)


def test_zero_weight_samples_do_not_train():
    """With FilterLoss and weight only on class-0 windows the model never sees class 1 as a target."""
    x, y = _data()
    model = _model()
    w = (y == 0).astype(np.float32)
    train(model, x, y, config=replace(FAST, epochs=3), loss_fn=FilterLoss(), sample_weights=w, progress=False)
    pred = predict_logits(model, x, device="cpu").argmax(1)
    # (not exactly all: zero-weighted windows still shift the batch-norm statistics)
    assert np.mean(pred == 0) >= 0.9
    # the same run without weights separates the classes
    model = _model()
    train(model, x, y, config=replace(FAST, epochs=3), loss_fn=FilterLoss(), progress=False)
    assert np.mean(predict_logits(model, x, device="cpu").argmax(1) == y) >= 0.9


# checkpoints and resume: tests/test_train_loop.py (bit-exact resume, pickles never loaded, broken files)


@pytest.mark.parametrize("w,msg", [
    (np.ones(63, np.float32), r"sample_weights must have shape \(64,\), got \(63,\)"),
    (np.ones((64, 1), np.float32), r"sample_weights must have shape \(64,\), got \(64, 1\)"),
    (np.r_[-1.0, np.ones(63)], r"sample_weights must be finite, >= 0 and not all zero"),
    (np.r_[np.nan, np.ones(63)], r"sample_weights must be finite, >= 0 and not all zero"),
    (np.zeros(64), r"sample_weights must be finite, >= 0 and not all zero"),
])
def test_train_sample_weights_validation(w, msg):
    x, y = _data()
    with pytest.raises(ValueError, match=msg):
        train(_model(), x, y, config=FAST, sample_weights=w, progress=False)


def test_train_input_validation():
    x, y = _data()
    model = _model()
    with pytest.raises(ValueError, match=r"x must have shape \(N, C, T\), got \(64, 96\)"):
        train(model, x.reshape(64, -1), y, config=FAST, progress=False)
    with pytest.raises(ValueError, match=r"y must have shape \(64,\), got \(63,\)"):
        train(model, x, y[:-1], config=FAST, progress=False)
    with pytest.raises(ValueError, match=r"x has 2 channels; the model expects 3"):
        train(model, x[:, :2], y, config=FAST, progress=False)
    bad = x.copy()
    bad[3, 1, 7] = np.inf
    with pytest.raises(ValueError, match=r"x contains 1 NaN/Inf values \(first at index \(3, 1, 7\)\)"):
        train(model, bad, y, config=FAST, progress=False)
    with pytest.raises(ValueError, match=r"x is empty"):
        train(model, x[:0], y[:0], config=FAST, progress=False)


def test_train_nan_loss_raises():
    x, y = _data()

    class NanLoss(torch.nn.Module):
        def forward(self, logits, targets, weights):
            return logits.sum() * float("nan")

    with pytest.raises(ValueError, match=r"loss became nan at epoch 1 \(train\); check the learning rate"):
        train(_model(), x, y, config=FAST, loss_fn=NanLoss(), progress=False)


def test_predict_proba_rows_sum_to_one():
    x, _ = _data(n=5)
    p = predict_proba(_model(k=3), x, device="cpu")
    assert p.shape == (5, 3) and p.dtype == np.float32
    np.testing.assert_allclose(p.sum(1), 1.0, atol=1e-6)
    with pytest.raises(ValueError, match=r"x must have shape \(N, C, T\), got \(5, 96\)"):
        predict_logits(_model(), x.reshape(5, -1))


# --------------------------------------------------------------------------- bundles

def test_bundle_round_trip(tmp_path):
    w = _windows()
    b = _bundle(w)
    out = save_bundle(b, tmp_path / "bundle")
    assert sorted(p.name for p in out.iterdir()) == ["model.json", "model.safetensors"]
    meta = json.loads((out / "model.json").read_text())
    assert meta["model_name"] == "tinycnn1d" and meta["in_channels"] == 3 and meta["num_classes"] == 2
    assert meta["class_names"] == ["a", "b"] and meta["channels"] == ["x", "y", "z"]
    assert {k: meta[k] for k in ("window_s", "hop_s", "sample_rate_hz", "min_purity")} == {"window_s": 0.64, "hop_s": 0.32, "sample_rate_hz": 50.0, "min_purity": 0.8}
    assert meta["model_config"]["widths"] == [8, 16] and meta["info"] == {"stage": "test"}

    for path in (out, out / "model.json"):
        back = load_bundle(path)
        assert back.model_name == "tinycnn1d" and back.class_names == ("a", "b")
        assert back.channels == ("x", "y", "z") and back.window == WINDOW and back.info == {"stage": "test"}
        assert back.model.config == b.model.config
        np.testing.assert_array_equal(back.normalizer.mean, b.normalizer.mean)
        np.testing.assert_array_equal(back.normalizer.std, b.normalizer.std)
        xn = b.normalizer(w.x)
        np.testing.assert_array_equal(predict_logits(back.model, xn, device="cpu"),
                                      predict_logits(b.model, xn, device="cpu"))


def test_load_bundle_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"model metadata .*model\.json' does not exist"):
        load_bundle(tmp_path / "nowhere")
    out = save_bundle(_bundle(_windows()), tmp_path / "b")
    (out / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"model weights .*model\.safetensors' does not exist"):
        load_bundle(out)


def test_load_bundle_bad_metadata(tmp_path):
    out = save_bundle(_bundle(_windows()), tmp_path / "b")
    meta = json.loads((out / "model.json").read_text())
    del meta["hop_s"]
    (out / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"model\.json': preprocessing fields missing \['hop_s'\]"):
        load_bundle(out)
    (out / "model.json").write_text('{"model_name": "tinycn')
    with pytest.raises(ValueError, match=r"is not valid JSON \(JSONDecodeError"):
        load_bundle(out)


def test_load_bundle_weights_mismatch(tmp_path):
    out = save_bundle(_bundle(_windows()), tmp_path / "b")
    meta = json.loads((out / "model.json").read_text())
    meta["num_classes"] = 5
    (out / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"model weights .* do not match tinycnn1d with config"):
        load_bundle(out)


# --------------------------------------------------------------------------- stages

FT = FinetuneConfig(train=replace(FAST, epochs=2), loss="filterloss")   # the first version: its fixed weights below


def test_finetune_same_classes_keeps_head():
    w = _windows()
    b = _bundle(w)
    before = _state(b.model)
    head = b.model.head
    target = _windows(seed=1)
    ft = finetune(b, target, config=FT, progress=False)
    assert ft.info["head_replaced"] is False and ft.info["stage"] == "finetune"
    counts = ft.info["category_counts"]
    assert set(counts) == {"high_value", "boundary", "noisy"} and sum(counts.values()) == 64
    assert ft.info["category_weights"] == {"high_value": 1.0, "boundary": 0.5, "noisy": 0.1}
    assert ft.info["class_counts"] == [32, 32] and ft.info["n_train"] == 64
    assert len(ft.info["loss_history"]) == 2 and ft.info["base"] == {"stage": "test"}
    assert ft.model.num_classes == 2 and ft.model is not b.model
    assert ft.normalizer is b.normalizer and ft.class_names == ("a", "b")
    # the input bundle is not modified
    assert b.model.head is head
    for k, v in b.model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert any(not torch.equal(v, before[k]) for k, v in ft.model.state_dict().items())


def test_finetune_model_classes_in_another_order_keep_the_head():
    """A CSV's class names come sorted: the model's own classes in another order are remapped, not a new head."""
    b = _bundle(_windows())
    target = _windows(seed=1)
    flipped = Windows(target.x, 1 - target.y, target.recording, target.users, ("b", "a"), target.channels)
    ref = finetune(b, target, config=FT, progress=False)
    ft = finetune(b, flipped, config=FT, progress=False)
    assert ft.info["head_replaced"] is False and ft.class_names == ("a", "b")
    assert ft.info["class_counts"] == ref.info["class_counts"]
    for k, v in ref.model.state_dict().items():      # the same labels in the model's order: the same training
        assert torch.equal(v, ft.model.state_dict()[k]), k


def test_selective_personalize_remaps_the_model_classes_in_another_order():
    from imutune.personalize.selective import SelectiveConfig, personalize

    b = _bundle(_windows())
    target = _windows(seed=1)
    cfg = SelectiveConfig(train=FAST)
    ref, _ = personalize(b, target.x, target.y, config=cfg)
    per, info = personalize(b, target.x, 1 - target.y, config=cfg, class_names=("b", "a"))
    assert info["head_replaced"] is False and per.class_names == ("a", "b")
    for k, v in ref.model.state_dict().items():
        assert torch.equal(v, per.model.state_dict()[k]), k


def test_finetune_new_class_set_replaces_head():
    b = _bundle(_windows())
    target = _windows(class_names=("p", "q", "r"), seed=2)
    ft = finetune(b, target, config=FT, progress=False)
    assert ft.info["head_replaced"] is True
    assert ft.model.num_classes == 3 and ft.model.head.out_features == 3
    assert ft.class_names == ("p", "q", "r")
    assert predict_logits(ft.model, b.normalizer(target.x), device="cpu").shape == (64, 3)
    assert sum(ft.info["category_counts"].values()) == 64
    assert b.model.num_classes == 2 and b.model.head.out_features == 2


def test_finetune_given_weights_and_ce():
    b = _bundle(_windows())
    target = _windows(seed=3)
    ft = finetune(b, target, config=FT, sample_weights=np.ones(64, np.float32), progress=False)
    assert "category_counts" not in ft.info and ft.info["loss"] == "filterloss"
    ft = finetune(b, target, config=replace(FT, loss="ce"), progress=False)
    assert "category_counts" not in ft.info and ft.info["loss"] == "ce"
    with pytest.raises(ValueError, match=r"sample_weights must have shape \(64,\), got \(3,\)"):
        finetune(b, target, config=FT, sample_weights=np.ones(3), progress=False)


def test_finetune_all_zero_category_weights():
    b = _bundle(_windows())
    cfg = replace(FT, weights=CategoryWeights(high_value=0.0, boundary=0.0, noisy=0.0))
    with pytest.raises(ValueError, match=r"all sample weights are zero"):
        finetune(b, _windows(seed=1), config=cfg, progress=False)


def test_finetune_channel_mismatch():
    b = _bundle(_windows())
    target = _windows(channels=("x", "z", "y"))
    with pytest.raises(ValueError, match=r"target windows have channels \['x', 'z', 'y'\]; the model expects "
                                         r"\['x', 'y', 'z'\]"):
        finetune(b, target, config=FT, progress=False)


def test_split_holdout_by_group():
    groups = np.repeat(np.arange(10), 5)
    labels = np.repeat(np.arange(10) % 2, 5)
    tr, ho = split_holdout(groups, labels, 0.2, seed=0)
    assert tr.dtype == bool and np.all(tr ^ ho)
    assert len(np.unique(groups[ho])) == 2              # round(0.2 * 5) = 1 group per class
    assert set(np.unique(labels[ho]).tolist()) == {0, 1}
    assert set(np.unique(labels[tr]).tolist()) == {0, 1}
    assert not set(groups[tr]) & set(groups[ho])        # groups are never split
    with pytest.raises(ValueError, match=r"holdout_fraction must be in \(0, 1\)"):
        split_holdout(groups, labels, 1.0)


def test_pretrain_info():
    w = _windows()
    b = pretrain(w, model_name="tinycnn1d", window=WINDOW, train_config=replace(FAST, epochs=2),
                 holdout_fraction=0.25, progress=False)
    assert b.model_name == "tinycnn1d" and b.class_names == ("a", "b") and b.window == WINDOW
    assert b.info["n_train"] + b.info["n_holdout"] == 64 and b.info["n_holdout"] > 0
    assert 0.0 <= b.info["source_accuracy"] <= 1.0 and len(b.info["loss_history"]) == 2


def test_finetune_with_source_rehearsal_mixes_source_windows():
    src = _windows(n=64, seed=2)
    b = _bundle(src)
    target = _windows(n=16, seed=3)
    ft = finetune(b, target, config=replace(FT, rehearsal_ratio=2.0), source_windows=src, progress=False)
    assert ft.info["n_rehearsal"] == 32 and ft.info["n_train"] == 16
    # more source windows than exist: capped at what the source has
    ft = finetune(b, target, config=replace(FT, rehearsal_ratio=10.0), source_windows=src, progress=False)
    assert ft.info["n_rehearsal"] == 64


def test_finetune_rehearsal_errors():
    src = _windows(n=32, seed=2)
    b = _bundle(src)
    with pytest.raises(ValueError, match="rehearsal_ratio must be a finite number >= 0, got -1"):
        FinetuneConfig(rehearsal_ratio=-1)
    with pytest.raises(ValueError, match=r"rehearsal_ratio=1.0 needs source_windows"):
        finetune(b, _windows(n=16), config=replace(FT, rehearsal_ratio=1.0), progress=False)
    other = _windows(n=16, class_names=("a", "b", "c"))   # a new class set: multi-head rehearsal takes src
    foreign = _windows(n=16, class_names=("u", "v"), seed=2)   # neither the target's nor the model's classes
    with pytest.raises(ValueError, match=r"source_windows for rehearsal must have the target's classes "
                                         r"\['a', 'b', 'c'\] \(one head\) or, for a new class set, the model's"):
        finetune(b, other, config=replace(FT, rehearsal_ratio=1.0), source_windows=foreign, progress=False)
