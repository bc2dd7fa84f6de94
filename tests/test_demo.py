"""The full pipeline (pretrain -> FilterLoss fine-tune -> export -> replay) on a tiny config of the real watch data."""
from __future__ import annotations

import json

import pytest
from imutune.demo import DemoConfig, quick_config, run_demo
from imutune.deploy.manifest import load_manifest, verify_artifact
from imutune.personalize.finetune import FinetuneConfig
from imutune.personalize.protocols import split_target
from imutune.signal.windows import WindowConfig
from imutune.train.loop import TrainConfig

TINY = DemoConfig(target_user="subject10", model_name="tinycnn1d", subjects=(1, 2, 10),
                  window=WindowConfig(window_s=2.0, hop_s=1.0),
                  pretrain=TrainConfig(epochs=2, batch_size=64, lr=3e-3),
                  finetune=FinetuneConfig(train=TrainConfig(epochs=2, batch_size=32, lr=1e-3)),
                  max_replay_recordings=1)


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    report = run_demo(out, TINY, progress=False, log=lambda *_: None)
    return out, report


def test_demo_writes_every_artifact(demo_run):
    out, report = demo_run
    for name in ("report.json", "report.md", "model.onnx", "model.pte", "manifest.json", "confusion_matrix.png",
                 "demo_config.json", "pretrained/model.safetensors", "personalized/model.json"):
        assert (out / name).is_file(), name
    assert (out / "confusion_matrix.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(out.glob("**/*.tmp")), "no temporary file may be left behind"


def test_demo_report_fields_are_consistent(demo_run):
    out, report = demo_run
    on_disk = json.loads((out / "report.json").read_text())
    for key in ("dataset", "target_user", "seed", "source_accuracy", "target_accuracy_before",
                "target_accuracy_after", "restore_ratio", "target_macro_f1", "parity_max_abs_err", "latency_ms"):
        assert key in on_disk, key
    assert on_disk["target_user"] == "subject10"
    for key in ("source_accuracy", "target_accuracy_before", "target_accuracy_after", "target_macro_f1"):
        assert 0.0 <= on_disk[key] <= 1.0
    assert on_disk["restore_ratio"] == pytest.approx(on_disk["target_accuracy_after"] / on_disk["source_accuracy"])
    # issue 16: calibrate-then-use by default, the gain and the label-noise setting are reported
    assert on_disk["protocol"] == "calibrate-then-use"
    assert on_disk["personalization_gain"] == pytest.approx(on_disk["target_macro_f1"] - on_disk["target_macro_f1_before"])
    assert on_disk["label_noise"]["spec"] == "none" and on_disk["label_noise"]["corrupted_windows"] == 0
    assert "personalization gain" in (out / "report.md").read_text()
    for fmt in ("onnx", "pte"):
        assert on_disk["parity_max_abs_err"][fmt] <= 1e-4
        lat = on_disk["latency_ms"][fmt]
        assert 0 < lat["p50"] <= lat["p95"] <= lat["p99"]
    # both exports replay the same windows to the same predictions as the PyTorch model allows
    assert report["replay"]["onnx"]["n_windows"] == report["replay"]["pte"]["n_windows"] > 0
    assert report["replay"]["onnx"]["confusion_matrix"] == report["replay"]["pte"]["confusion_matrix"]


def test_demo_manifest_matches_artifacts(demo_run):
    out, _ = demo_run
    m = load_manifest(out / "manifest.json")
    assert m.channels == ("acc_x", "acc_y", "acc_z", "gyr_x", "gyr_y", "gyr_z")
    assert m.sample_rate_hz == 50.0 and m.window_samples == 100 and m.hop_samples == 50
    for name in ("model.onnx", "model.pte"):
        assert verify_artifact(m, out / name)["sha256"]


def test_demo_rerun_resumes_from_checkpoints(demo_run):
    from imutune.train.bundle import load_bundle

    out, report = demo_run
    first = {s: load_bundle(out / s).info for s in ("pretrained", "personalized")}
    again = run_demo(out, TINY, progress=False, log=lambda *_: None)
    # finished checkpoints are reused: no epoch is trained again ...
    for stage, cfg in (("pretrained", TINY.pretrain), ("personalized", TINY.finetune.train)):
        info = load_bundle(out / stage).info
        assert first[stage]["resumed_from_epoch"] == 0, stage          # the first run trained from scratch
        assert info["resumed_from_epoch"] == cfg.epochs, stage         # the rerun resumed after the last epoch
        assert info["steps"] == first[stage]["steps"] > 0 and info["loss_history"] == first[stage]["loss_history"]
    # ... so the weights and figures are the same
    assert again["source_accuracy"] == report["source_accuracy"]
    assert again["target_accuracy_after"] == report["target_accuracy_after"]


def test_split_target_errors(watch_recordings):
    with pytest.raises(ValueError, match="target_user 'nobody' not found"):
        split_target(watch_recordings, "nobody")
    src, tr, te = split_target(watch_recordings, "subject03", train_side=1)
    assert {r.meta["side"] for r in tr} == {1} and {r.meta["side"] for r in te} == {0}
    assert all(r.user != "subject03" for r in src)


def test_demo_config_errors():
    with pytest.raises(ValueError, match="imbalance_ratio must be >= 1"):
        DemoConfig(imbalance_ratio=0.5)
    with pytest.raises(ValueError, match="target_train_side must be 0 or 1"):
        DemoConfig(target_train_side=2)
    assert quick_config().pretrain.epochs < DemoConfig().pretrain.epochs
    with pytest.raises(ValueError, match="protocol must be one of"):
        DemoConfig(protocol="cross-arm")
    with pytest.raises(ValueError, match="calibration_fraction"):
        DemoConfig(calibration_fraction=0.0)
    with pytest.raises(ValueError, match="label-noise spec 'loud'"):
        DemoConfig(label_noise="loud")
