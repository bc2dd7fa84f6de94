"""Codec model, tables, bundle save/load and hash, and the three training modes."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from imutune.codec.model import (
    CodecConfig,
    FactorizedPrior,
    SensorCodec,
    build_tables,
    codec_hash,
    load_codec,
    new_codec,
    save_codec,
)
from imutune.codec.train import CodecTrainConfig, train_codec
from imutune.signal.windows import Normalizer, WindowConfig, make_windows

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def chunks():
    from imutune.data.recordings import load_watch

    return make_windows(load_watch(subjects=[2]), WindowConfig(window_s=4.0, hop_s=4.0, sample_rate_hz=50.0))


@pytest.fixture(scope="module")
def tiny_classifier(chunks):
    from imutune.train.loop import TrainConfig
    from imutune.train.pretrain import pretrain

    from imutune.data.recordings import load_watch

    wins = make_windows(load_watch(subjects=[2]), WindowConfig(window_s=2.0, hop_s=1.0))
    return pretrain(wins, model_name="tinycnn1d", train_config=TrainConfig(epochs=1, device="cpu"), progress=False)


def test_shapes_noise_in_training_and_rounding_at_inference():
    cfg = CodecConfig(segment_samples=100, latent_channels=5, strides=(2, 5))
    m = SensorCodec(cfg)
    x = torch.randn(3, 6, 100)
    out = m(x, noise=False)
    assert out["x_hat"].shape == (3, 6, 100) and out["y_hat"].shape == (3, 5, cfg.latent_samples) == (3, 5, 10)
    assert torch.equal(out["y_hat"], torch.round(out["y_hat"]))
    noisy = m(x, noise=True)["y_hat"]
    assert not torch.equal(noisy, torch.round(noisy))
    assert float(out["bits"].detach()) > 0
    assert sum(p.numel() for p in SensorCodec(CodecConfig()).parameters()) < 50_000


def test_factorized_prior_is_a_distribution_per_channel():
    prior = FactorizedPrior(3)
    ks = torch.arange(-400, 401, dtype=torch.float32)
    lik = prior.likelihood(ks.reshape(1, 1, -1).expand(1, 3, -1).contiguous())   # (1, 3, 801)
    np.testing.assert_allclose(lik.sum(dim=2).detach().numpy(), 1.0, atol=1e-3)
    cdf = prior.cdf_at(np.linspace(-50, 50, 11))
    assert np.all(np.diff(cdf, axis=1) >= 0)


def test_tables_sum_to_16_bits_and_keep_every_symbol():
    prior = FactorizedPrior(4)
    t = build_tables(prior, CodecConfig(latent_channels=4))
    assert len(t.freqs) == 4 and t.offsets.shape == (4,)
    for f in t.freqs:
        assert int(f.sum()) == 1 << 16 and int(f.min()) >= 1


def test_config_errors():
    with pytest.raises(ValueError, match="divisible by prod"):
        CodecConfig(segment_samples=100, strides=(3,))
    with pytest.raises(ValueError, match="odd integer"):
        CodecConfig(kernel_size=4)
    with pytest.raises(ValueError, match="mode must be one of"):
        CodecTrainConfig(mode="fast")
    with pytest.raises(ValueError, match="beta must be"):
        CodecTrainConfig(beta=-1.0)


def test_save_load_keeps_the_hash_and_detects_mixed_files(tmp_path):
    n = Normalizer(np.zeros(6, np.float32), np.ones(6, np.float32))
    c = new_codec(CodecConfig(), tuple("abcdef"), 50.0, n)
    save_codec(c, tmp_path / "c")
    back = load_codec(tmp_path / "c")
    assert codec_hash(back) == codec_hash(c)
    other = new_codec(CodecConfig(), tuple("abcdef"), 50.0, n, seed=3)
    assert codec_hash(other) != codec_hash(c)
    save_codec(other, tmp_path / "o")
    (tmp_path / "c" / "codec.safetensors").write_bytes((tmp_path / "o" / "codec.safetensors").read_bytes())
    with pytest.raises(ValueError, match="do not belong together"):
        load_codec(tmp_path / "c")
    meta = json.loads((tmp_path / "o" / "codec.json").read_text())
    del meta["config"]
    (tmp_path / "o" / "codec.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="incomplete or invalid"):
        load_codec(tmp_path / "o")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_codec(tmp_path / "missing")


def test_codec_only_training_lowers_the_loss(chunks):
    c, clf = train_codec(chunks, config=CodecTrainConfig(epochs=3, lmbda=16.0, device="cpu", batch_size=16),
                         codec_config=CodecConfig(hidden_channels=8, latent_channels=4))
    h = c.info["history"]
    assert clf is None and c.info["mode"] == "codec" and h["loss"][-1] < h["loss"][0]
    assert all(v == 0 for v in h["ce"])


def test_classifier_modes_need_a_fitting_classifier(chunks, tiny_classifier):
    cfg = CodecConfig(hidden_channels=8, latent_channels=4)
    with pytest.raises(ValueError, match="needs a classifier bundle"):
        train_codec(chunks, config=CodecTrainConfig(mode="classifier", epochs=1, device="cpu"), codec_config=cfg)
    before = {k: v.clone() for k, v in tiny_classifier.model.state_dict().items()}
    c, clf = train_codec(chunks, config=CodecTrainConfig(mode="classifier", epochs=1, device="cpu", batch_size=16),
                         codec_config=cfg, classifier=tiny_classifier)
    assert clf is None and c.info["history"]["ce"][0] > 0
    c2, clf2 = train_codec(chunks, config=CodecTrainConfig(mode="joint", epochs=1, device="cpu", batch_size=16),
                           codec_config=cfg, classifier=tiny_classifier)
    assert clf2 is not None and clf2.info["stage"] == "codec-joint"
    changed = any(not torch.equal(before[k], v) for k, v in clf2.model.state_dict().items())
    assert changed                                               # joint trains the classifier ...
    assert all(torch.equal(before[k], v) for k, v in tiny_classifier.model.state_dict().items())  # ... on a copy
    bad = chunks.subset(np.arange(len(chunks)))
    with pytest.raises(ValueError, match="expected \\(N, 6, 100\\)"):
        train_codec(bad, config=CodecTrainConfig(epochs=1, device="cpu"),
                    codec_config=CodecConfig(segment_samples=50, strides=(2,)))


def test_header_hints_are_part_of_the_identity_and_survive_save_load(tmp_path, chunks):
    n = Normalizer(np.zeros(6, np.float32), np.ones(6, np.float32))
    c = new_codec(CodecConfig(), tuple("abcdef"), 50.0, n)
    h = c.with_header_hints(["x", "y"], ["g", "g", "g", "rad/s", "rad/s", "rad/s"])
    assert h.header_hints == {"class_names": ["x", "y"], "units": dict(zip("abcdef", ["g"] * 3 + ["rad/s"] * 3))}
    assert codec_hash(h) != codec_hash(c)                       # another header dictionary: another codec id
    assert codec_hash(c.with_header_hints()) == codec_hash(c)   # no hints: the hash of a codec saved without them
    save_codec(h, tmp_path / "h")
    back = load_codec(tmp_path / "h")
    assert back.header_hints == h.header_hints and codec_hash(back) == codec_hash(h)
    assert "header_hints" not in json.loads(save_codec(c, tmp_path / "c").joinpath("codec.json").read_text())
    with pytest.raises(ValueError, match="units has 2 entries; expected 6"):
        c.with_header_hints(["x"], ["g", "g"])
    with pytest.raises(ValueError, match="name channels \\['q'\\]"):
        c.with_header_hints(["x"], {"q": "g"})
    meta = json.loads((tmp_path / "h" / "codec.json").read_text())
    meta["header_hints"] = ["x"]
    (tmp_path / "h" / "codec.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="header_hints is list"):
        load_codec(tmp_path / "h")


def test_training_records_the_datas_classes_and_units_as_header_hints(chunks):
    c, _ = train_codec(chunks, config=CodecTrainConfig(epochs=1, device="cpu", batch_size=16),
                       codec_config=CodecConfig(hidden_channels=8, latent_channels=4))
    assert c.header_hints["class_names"] == list(chunks.class_names)
    assert c.header_hints["units"] == dict(zip(chunks.channels, chunks.preprocessing.units))


def test_default_training_budget_is_the_measured_one():
    assert CodecTrainConfig().epochs == 50          # 470 steps left PRDN at ~30 % (notes/codec2_note.md)
