"""Live-stream replay of the encoder: same bytes as the batch encoder, one latency sample per full segment."""
from __future__ import annotations

import numpy as np
import pytest
from imutune.codec.bitstream import decode_stream, encode_recording, segment_values
from imutune.codec.model import CodecConfig, new_codec
from imutune.codec.replay import replay_encode
from imutune.signal.windows import Normalizer

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def rec_and_codec():
    from imutune.data.recordings import load_watch

    rec = load_watch(subjects=[5])[0]
    norm = Normalizer.fit(segment_values(rec.values, 100))
    return rec, new_codec(CodecConfig(hidden_channels=8, latent_channels=4), rec.channels, 50.0, norm)


@pytest.mark.parametrize("chunk", [1, 7, 100, 333])
def test_replay_gives_the_batch_encoders_bytes(rec_and_codec, chunk):
    rec, codec = rec_and_codec
    res = replay_encode(codec, rec, chunk_samples=chunk)
    assert res["data"] == encode_recording(codec, rec)
    assert res["n_segments"] == -(-rec.n_samples // 100)
    assert len(res["latencies_ms"]) == rec.n_samples // 100 and res["latency_ms"]["n"] == rec.n_samples // 100
    assert res["bytes_per_second"] == pytest.approx(res["bytes"] / rec.duration_s)
    assert decode_stream(codec, res["data"]).recording.n_samples == rec.n_samples


def test_replay_refusals(rec_and_codec):
    rec, codec = rec_and_codec
    with pytest.raises(ValueError, match="chunk_samples must be an integer >= 1"):
        replay_encode(codec, rec, chunk_samples=0)
    with pytest.raises(ValueError, match="the codec expects"):
        replay_encode(codec, rec.select_channels(["acc_x", "acc_y", "acc_z", "gyr_x", "gyr_z", "gyr_y"]))
    assert np.isfinite(rec.values).all()
