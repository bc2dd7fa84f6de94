"""Classic baselines: exact sizes on known signals, round-trip errors, bad input."""
from __future__ import annotations

import numpy as np
import pytest
from imutune.codec.classic import CLASSIC_METHODS, ClassicCodec, parse_classic

S, C = 1000, 2


def _ramp() -> np.ndarray:
    t = np.arange(S, dtype=np.float32)
    return np.stack([t / S, -2.0 * t / S], axis=1).astype(np.float32)   # (S, C)


def test_raw_sizes_are_exact_on_a_known_signal():
    x = _ramp()
    assert len(ClassicCodec("float32").encode(x)) == 12 + 4 * S * C
    assert len(ClassicCodec("float16").encode(x)) == 12 + 2 * S * C
    np.testing.assert_array_equal(ClassicCodec("float32").decode(ClassicCodec("float32").encode(x)), x)
    f16 = ClassicCodec("float16")
    np.testing.assert_allclose(f16.decode(f16.encode(x)), x, atol=2e-3)


def test_zstd_methods_shrink_a_constant_signal_to_a_few_dozen_bytes():
    x = np.full((S, C), 0.25, np.float32)
    for name in ("int16-zstd", "delta-zstd", "kbit-zstd:6"):
        c = parse_classic(name)
        data = c.encode(x, channels=("acc_x", "gyr_x"))
        assert len(data) < 12 + 8 * C + 60, (name, len(data))
        np.testing.assert_allclose(c.decode(data), x, atol=1e-3)


def test_delta_zstd_is_lossless_and_beats_float32_on_a_smooth_signal():
    x = np.sin(np.linspace(0, 20, S * C)).reshape(S, C).astype(np.float32) + 1.0
    c = ClassicCodec("delta-zstd")
    data = c.encode(x)
    np.testing.assert_array_equal(c.decode(data), x)
    assert len(data) < 12 + 4 * S * C


def test_int16_uses_the_sensor_full_scale_and_kbit_the_channel_range():
    x = _ramp()
    c = ClassicCodec("int16-zstd")
    got = c.decode(c.encode(x, channels=("acc_x", "gyr_x")))
    lsb = np.array([8.0, 34.906585]) / 32767.0
    assert np.all(np.abs(got - x).max(axis=0) <= lsb / 2 + 1e-7)
    for k in (2, 4, 12):
        q = ClassicCodec("kbit-zstd", bits=k)
        err = np.abs(q.decode(q.encode(x)) - x).max(axis=0)
        span = x.max(axis=0) - x.min(axis=0)
        assert np.all(err <= span / (2 * (2 ** k - 1)) + 1e-6)
    # fewer bits -> fewer bytes on the same signal
    sizes = [len(ClassicCodec("kbit-zstd", bits=k).encode(np.random.default_rng(0).normal(size=(S, C))
                                                           .astype(np.float32))) for k in (2, 6, 12)]
    assert sizes[0] < sizes[1] < sizes[2]


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="bits of kbit-zstd"):
        ClassicCodec("kbit-zstd", bits=1)
    with pytest.raises(ValueError, match="method must be one of"):
        ClassicCodec("gzip")
    with pytest.raises(ValueError, match="unknown"):
        parse_classic("kbit-zstd")
    with pytest.raises(ValueError, match="expected kbit-zstd:K"):
        parse_classic("kbit-zstd:x")
    x = _ramp()
    x[3, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        ClassicCodec("int16-zstd").encode(x)
    with pytest.raises(ValueError, match="not a classic codec stream"):
        ClassicCodec().decode(b"IMZ1" + bytes(20))
    data = ClassicCodec("int16-zstd").encode(_ramp())
    with pytest.raises(ValueError, match="truncated or corrupt"):
        ClassicCodec().decode(data[:-10])
    assert set(CLASSIC_METHODS) >= {"float32", "float16", "int16-zstd", "delta-zstd", "kbit-zstd"}
