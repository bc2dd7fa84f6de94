"""The codec benchmark: distortion metrics on known signals, config checks, and a tiny end-to-end run
with its report (JSON, Markdown, PNG) and targets."""
from __future__ import annotations

import json

import numpy as np
import pytest
from imutune.bench.codec import CodecBenchConfig, distortion_metrics, quick_config, run_codec_bench
from imutune.codec.classic import ClassicCodec
from imutune.codec.model import CodecConfig
from imutune.data.recordings import Recording, load_watch
from imutune.personalize.finetune import FinetuneConfig
from imutune.personalize.protocols import calibrate_then_use
from imutune.personalize.reference import reference_score
from imutune.signal.windows import make_windows
from imutune.train.loop import TrainConfig

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_distortion_metrics_on_a_known_signal():
    t = np.linspace(0, 1, 1000)
    x = np.stack([10 + np.sin(2 * np.pi * 5 * t), np.cos(2 * np.pi * 3 * t)], axis=1)
    m = distortion_metrics(x, x + 0.1 * np.sign(np.sin(2 * np.pi * 50 * t))[:, None])
    var = np.array([np.var(x[:, 0]), np.var(x[:, 1])])
    prdn = 100 * np.sqrt(0.01 / var)
    assert m["prdn"] == pytest.approx(prdn.mean(), rel=1e-3)
    assert m["prd"] < m["prdn"]                               # the offset inflates the PRD denominator
    assert m["snr_db"] == pytest.approx(np.mean(-20 * np.log10(prdn / 100)), rel=1e-3)
    assert distortion_metrics(x, x)["snr_db"] > 200


def test_config_checks():
    with pytest.raises(ValueError, match="disjoint"):
        CodecBenchConfig(source_subjects=(1, 2), test_subjects=(2,))
    with pytest.raises(ValueError, match="kbits"):
        CodecBenchConfig(kbits=(1,))
    assert quick_config().test_subjects == (10,)


def test_tiny_end_to_end_run(tmp_path):
    cfg = quick_config(source_subjects=(1,), test_subjects=(10,), classifier_model="tinycnn1d",
                       modes=("codec", "joint"), lambdas=(16.0,), kbits=(2, 6), codec_epochs=1,
                       codec=CodecConfig(hidden_channels=8, latent_channels=4),
                       pretrain=TrainConfig(epochs=1, device="cpu"),
                       finetune=FinetuneConfig(train=TrainConfig(epochs=1, device="cpu"), loss="ce"),
                       export_latency=False)
    res = run_codec_bench(str(tmp_path), cfg, command="test", log=lambda *_: None)
    for f in ("codec.json", "codec.md", "codec_rate_accuracy.png", "codec_rate_distortion.png"):
        assert (tmp_path / f).is_file()
    names = [p["name"] for p in res["points"]]
    assert names[:4] == ["float32", "float16", "int16+zstd", "delta+zstd"] and "2-bit+zstd" in names
    pts = {p["name"]: p for p in res["points"]}
    assert pts["float32"]["bits_per_sample"] > 32 and pts["float32"]["lossless"]
    assert pts["delta+zstd"]["lossless"] and pts["delta+zstd"]["personalized_reused_raw"] == 1.0
    learned = [p for p in res["points"] if p["family"].startswith("learned/")]
    assert len(learned) == 2
    for p in learned:                                      # measured file > payload, payload ~ estimate
        assert p["bits_per_sample"] > p["payload_bits_per_sample"]
        assert abs(p["payload_bits_per_sample"] - p["estimate_bits_per_sample"]) < 0.05 * p["estimate_bits_per_sample"] + 0.01
    assert pts["2-bit+zstd"]["bits_per_sample"] < pts["6-bit+zstd"]["bits_per_sample"]
    assert set(res["targets"]) >= {"f1_loss_at_20x_file", "bytes_vs_classic_file", "joint_beats_codec_only",
                                   "encoder_latency"}
    assert json.loads((tmp_path / "codec.json").read_text())["command"] == "test"
    assert "| float32 |" in (tmp_path / "codec.md").read_text()
    # the classical reference: on a lossless point it is the raw upload's; on a lossy one it is fitted on the
    # decoded calibration windows (checked by hand) and scored on the raw test windows
    rf_raw = res["reference_random_forest_macro_f1_raw_mean"]
    assert 0.0 <= rf_raw <= 1.0 and pts["float32"]["random_forest_macro_f1"] == pytest.approx(rf_raw)
    assert pts["2-bit+zstd"]["personalized_minus_random_forest"] == pytest.approx(
        pts["2-bit+zstd"]["personalized_macro_f1"] - pts["2-bit+zstd"]["random_forest_macro_f1"])
    users = [r for r in load_watch() if r.meta["subject"] == 10]
    (user,) = {r.user for r in users}
    cal, test = calibrate_then_use(users, window_s=cfg.window.window_s, calibration_fraction=cfg.calibration_fraction)
    k2 = ClassicCodec("kbit-zstd", bits=2)
    dec = [Recording(k2.decode(k2.encode(r.values, channels=r.channels)), r.labels, r.sample_rate_hz, r.channels,
                     r.class_names, r.user, r.name, r.meta, r.gaps) for r in cal]
    tw = make_windows(test, cfg.window)
    by_hand = reference_score(make_windows(dec, cfg.window), tw, seed=cfg.seed)["macro_f1"]
    assert pts["2-bit+zstd"]["per_user"][user]["random_forest_macro_f1"] == pytest.approx(by_hand)
    assert by_hand != pytest.approx(reference_score(make_windows(cal, cfg.window), tw, seed=cfg.seed)["macro_f1"])
    md = (tmp_path / "codec.md").read_text()
    assert "F1 RandomForest decoded->raw" in md
    assert "latency not measured in this run" in md and "shared with other jobs" not in md   # host note: measured
    seen = []
    run_codec_bench(str(tmp_path), cfg, command="test", log=seen.append)   # second run: the reference is cached
    assert any("2-bit_zstd.reference.json" in line and "reusing" in line for line in seen)
