"""Range coding of rounded latents and the .imz container: exact round trip, rate estimate vs real
size on real data, and every refusal the container documents."""
from __future__ import annotations

import zlib

import numpy as np
import pytest
from imutune.codec.bitstream import (
    LatentCoder,
    decode_latents,
    decode_stream,
    encode_recording,
    encode_values,
    pack_container,
    rate_estimate_bits,
    read_container,
    segment_values,
)
from imutune.codec.model import CodecConfig, EntropyTables, new_codec
from imutune.codec.train import CodecTrainConfig, train_codec
from imutune.signal.windows import Normalizer, WindowConfig, make_windows

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def watch_s1():
    from imutune.data.recordings import load_watch

    return load_watch(subjects=[1])


@pytest.fixture(scope="module")
def codec(watch_s1):
    """A codec briefly trained on real watch data (subject 1)."""
    chunks = make_windows(watch_s1, WindowConfig(window_s=4.0, hop_s=2.0, sample_rate_hz=50.0))
    c, _ = train_codec(chunks, config=CodecTrainConfig(epochs=2, lmbda=32.0, device="cpu"),
                       codec_config=CodecConfig(hidden_channels=12, latent_channels=4))
    return c


def test_latent_coder_round_trip_is_exact_including_escapes():
    import constriction

    rng = np.random.default_rng(0)
    tables = EntropyTables(np.array([-3, -1]), (np.array([1000, 30000, 30000, 4535, 1]), np.array([65000, 535, 1])))
    coder = LatentCoder(tables)
    lat = rng.integers(-3, 2, size=(7, 2, 25))
    lat[0, 0, 0], lat[3, 1, 5], lat[6, 1, 24] = 900, -32768, 32767          # outside the tables: escapes
    enc = constriction.stream.queue.RangeEncoder()
    for y in lat:
        coder.encode_segment(enc, y)
    dec = constriction.stream.queue.RangeDecoder(enc.get_compressed())
    got = np.stack([coder.decode_segment(dec, 25) for _ in range(7)])
    np.testing.assert_array_equal(got, lat)


def test_stream_round_trip_reproduces_the_encoders_latents(codec, watch_s1):
    rec = watch_s1[0]
    data = encode_recording(codec, rec)
    header, lat = decode_latents(codec, data)
    segs = segment_values(rec.values, codec.segment_samples)
    import torch

    with torch.inference_mode():
        ref = codec.encoder_graph()(torch.from_numpy(segs)).numpy().reshape(lat.shape)
    np.testing.assert_array_equal(lat, ref.astype(np.int64))
    dec = decode_stream(codec, data)
    assert dec.recording.n_samples == rec.n_samples and header["n_segments"] == segs.shape[0]
    np.testing.assert_array_equal(dec.recording.labels, rec.labels)
    assert dec.recording.user == rec.user and dec.recording.class_names == rec.class_names
    assert dec.recording.meta["units"] == rec.meta["units"]
    assert dec.file_bytes == len(data) and dec.payload_bytes < len(data)


def test_rate_estimate_matches_the_real_payload_within_2_percent_on_real_data(codec, watch_s1):
    est = real = 0.0
    for rec in watch_s1[:8]:
        est += rate_estimate_bits(codec, rec.values)
        real += 8 * decode_stream(codec, encode_recording(codec, rec)).payload_bytes
    assert abs(real - est) / est <= 0.02, (real, est)


def test_tables_cost_matches_the_model(codec, watch_s1):
    segs = segment_values(watch_s1[1].values, codec.segment_samples)
    import torch

    with torch.inference_mode():
        lat = codec.encoder_graph()(torch.from_numpy(segs)).numpy()
    lat = lat.reshape(segs.shape[0], codec.config.latent_channels, -1).astype(np.int64)
    est = rate_estimate_bits(codec, watch_s1[1].values)
    assert abs(codec.tables.bits(lat) - est) / est < 0.02
    assert all(int(f.sum()) == 1 << 16 and f.min() >= 1 for f in codec.tables.freqs)


def test_stream_from_another_codec_is_refused(codec, watch_s1):
    other = new_codec(codec.config, codec.channels, codec.sample_rate_hz, codec.normalizer, seed=5)
    data = encode_recording(other, watch_s1[0])
    with pytest.raises(ValueError, match="was encoded by codec .* but this codec is"):
        decode_stream(codec, data)


def test_truncated_and_corrupt_streams_are_refused(codec, watch_s1):
    data = encode_recording(codec, watch_s1[0])
    with pytest.raises(ValueError, match="truncated: its payload"):
        decode_stream(codec, data[:-4])
    with pytest.raises(ValueError, match="truncated: its header"):
        decode_stream(codec, data[:30])
    with pytest.raises(ValueError, match="not an .imz stream"):
        decode_stream(codec, data[:10])
    with pytest.raises(ValueError, match="not an .imz stream"):
        decode_stream(codec, b"PK\x03\x04" + data[4:])
    bad = bytearray(data)
    bad[-3] ^= 0xFF
    with pytest.raises(ValueError, match="CRC-32"):
        decode_stream(codec, bytes(bad))
    with pytest.raises(ValueError, match="bytes after the payload"):
        decode_stream(codec, data + b"\0\0\0\0")


def _repack(codec, data, **changes):
    header, payload = read_container(data, codec)
    header.update(changes)
    return pack_container(header, payload, codec)


def test_segment_count_that_disagrees_with_the_header_is_refused(codec, watch_s1):
    rec = watch_s1[0]
    T = codec.segment_samples
    data = encode_recording(codec, rec)
    header, _ = read_container(data, codec)
    n = header["n_segments"]
    with pytest.raises(ValueError, match="segment count disagrees|fewer segments"):
        decode_stream(codec, _repack(codec, data, n_segments=n + 1, n_samples=(n + 1) * T))
    with pytest.raises(ValueError, match="segment count disagrees"):
        decode_stream(codec, _repack(codec, data, n_segments=n - 1, n_samples=(n - 1) * T))
    with pytest.raises(ValueError, match=f"header records {n + 3} segments for"):
        decode_stream(codec, _repack(codec, data, n_segments=n + 3))
    # a payload whose CRC was recomputed still carries its own segment count
    short = encode_values(codec, rec.values[: (n - 2) * T])
    h2, p2 = read_container(short, codec)
    h2.update(n_segments=n, n_samples=n * T, labels_rle=[[0, n * T]])
    with pytest.raises(ValueError, match="segment count disagrees|fewer segments"):
        decode_stream(codec, pack_container(h2, p2, codec))
    assert zlib.crc32(p2) == h2["payload_crc32"]


def test_bad_input_to_the_encoder_is_refused(codec, watch_s1):
    v = watch_s1[0].values.copy()
    v[10, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        encode_values(codec, v)
    with pytest.raises(ValueError, match="6 channels"):
        encode_values(codec, v[:, :3])
    with pytest.raises(ValueError, match="empty"):
        encode_values(codec, v[:0])
    rec = watch_s1[0].select_channels(["acc_y", "acc_x", "acc_z", "gyr_x", "gyr_y", "gyr_z"])
    with pytest.raises(ValueError, match="channels"):
        encode_recording(codec, rec)


def test_segment_values_pads_the_last_segment_by_edge_repetition():
    v = np.arange(14, dtype=np.float32).reshape(7, 2)
    s = segment_values(v, 4)
    assert s.shape == (2, 2, 4)
    np.testing.assert_array_equal(s[1, 0], [8, 10, 12, 12])
    n = Normalizer(np.zeros(2, np.float32), np.ones(2, np.float32))
    c = new_codec(CodecConfig(in_channels=2, segment_samples=4, strides=(2,)), ("a", "b"), 50.0, n)
    out = decode_stream(c, encode_values(c, v, class_names=("x",))).recording
    assert out.n_samples == 7 and np.all(out.labels == -1)


def test_header_hints_shrink_the_header_and_a_codec_without_them_refuses_the_stream(codec, watch_s1):
    assert codec.header_hints["class_names"] == list(watch_s1[0].class_names)   # set by train_codec
    bare = codec.with_header_hints()
    rec = watch_s1[0]
    hinted, plain = encode_recording(codec, rec), encode_recording(bare, rec)
    h_len = int.from_bytes(hinted[20:22], "little")
    p_len = int.from_bytes(plain[20:22], "little")
    assert h_len + 40 <= p_len, (h_len, p_len)                   # class names and units cost a few bytes
    assert hinted[22 + h_len:] == plain[22 + p_len:]              # same payload
    out = decode_stream(codec, hinted).recording
    assert out.class_names == rec.class_names and out.meta["units"] == rec.meta["units"]
    with pytest.raises(ValueError, match="was encoded by codec .* but this codec is"):
        decode_stream(bare, hinted)
    # other class names than the hints still round-trip (they just cost their bytes)
    other = encode_values(codec, rec.values, labels=np.zeros(rec.n_samples, np.int64), class_names=("walk",))
    assert decode_stream(codec, other).recording.class_names == ("walk",)
