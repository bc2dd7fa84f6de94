"""Encoder export to ONNX and .pte: rounded-latent parity on real data, refusals, and the exported
encoder producing a stream the eager decoder reads."""
from __future__ import annotations

import json

import numpy as np
import pytest
from imutune.codec.bitstream import decode_stream, encode_recording, segment_values
from imutune.codec.export import export_encoder, latent_parity
from imutune.codec.model import CodecConfig
from imutune.codec.train import CodecTrainConfig, train_codec
from imutune.signal.windows import WindowConfig, make_windows

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from imutune.data.recordings import load_watch

    recs = load_watch(subjects=[3])
    chunks = make_windows(recs, WindowConfig(window_s=4.0, hop_s=4.0, sample_rate_hz=50.0))
    codec, _ = train_codec(chunks, config=CodecTrainConfig(epochs=2, lmbda=64.0, device="cpu", batch_size=16),
                           codec_config=CodecConfig(hidden_channels=12, latent_channels=6))
    segs = np.concatenate([segment_values(r.values, codec.segment_samples) for r in recs])
    out = tmp_path_factory.mktemp("enc")
    return codec, recs, segs, out, export_encoder(codec, out, segs)


def test_onnx_and_pte_latents_match_torch_on_real_data(trained):
    codec, recs, segs, out, manifest = trained
    assert segs.shape[0] * codec.config.latent_channels * codec.config.latent_samples >= 10_000
    for name in ("encoder.onnx", "encoder.pte"):
        entry = manifest["artifacts"][name]
        assert entry["identical_fraction"] >= 0.999 and entry["max_abs_diff"] <= 1.0
        assert (out / name).is_file()
    assert manifest["artifacts"]["encoder.pte"]["graph_rewrite"] == "conv1d->conv2d"
    assert json.loads((out / "encoder_manifest.json").read_text())["codec_id"] == manifest["codec_id"]


def test_exported_encoder_streams_decode_with_the_eager_decoder(trained):
    from imutune.deploy.backends import load_backend

    codec, recs, segs, out, _ = trained
    for name in ("encoder.onnx", "encoder.pte"):
        backend = load_backend(out / name, num_threads=1)
        data = encode_recording(codec, recs[0], encoder=backend)
        dec = decode_stream(codec, data)
        ref = decode_stream(codec, encode_recording(codec, recs[0]))
        assert latent_parity(ref.latents, dec.latents)["identical_fraction"] >= 0.999


def test_export_refusals(trained, tmp_path):
    codec, _, segs, _, _ = trained
    with pytest.raises(ValueError, match="expects T=100"):
        export_encoder(codec, tmp_path, segs[:, :, :50].copy())
    with pytest.raises(ValueError, match="formats entry must be one of"):
        export_encoder(codec, tmp_path, segs, formats=("tflite",))
    with pytest.raises(ValueError, match="shape"):
        latent_parity(np.zeros(3), np.zeros(4))
    assert not (tmp_path / "encoder_manifest.json").exists()
    p = latent_parity(np.array([1.0, 2.0, 3.0]), np.array([1.0, 3.0, 3.0]))
    assert p["identical_fraction"] == pytest.approx(2 / 3) and p["max_abs_diff"] == 1.0
