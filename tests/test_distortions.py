"""Sensor distortions: each one's physical effect, seeding, composition, and range errors."""
from __future__ import annotations

import math

import numpy as np
import pytest
from imutune.data.recordings import Recording
from imutune.signal.distortions import (
    GYRO_RANGE_PER_G,
    AdditiveNoise,
    AxisRotation,
    Bias,
    Clipping,
    Compose,
    DroppedSamples,
    G,
    GainError,
    SampleRateMismatch,
    axis_triads,
    channel_kinds,
    distort_recording,
    distort_windows,
    make_distortion,
    parse_distortion,
)

CH = ("acc_x", "acc_y", "acc_z", "gyr_x", "gyr_y", "gyr_z")
FS = 50.0


def _windows(n=64, t=200, seed=0):
    rng = np.random.default_rng(seed)
    tt = np.arange(t) / FS
    x = np.empty((n, 6, t), np.float32)
    for c in range(6):
        f = 0.5 + 0.3 * c
        x[:, c] = 0.5 * np.sin(2 * np.pi * f * tt + rng.uniform(0, 6, (n, 1))) + (1.0 if c == 2 else 0.0)
    return x


def _dw(x, d, **kw):
    return distort_windows(x, d, channels=CH, sample_rate_hz=FS, **kw)


def test_channel_layout():
    assert channel_kinds(CH + ("mag_x", "temp")) == ["acc"] * 3 + ["gyr"] * 3 + ["mag", "other"]
    assert axis_triads(CH) == [(0, 1, 2), (3, 4, 5)]
    assert axis_triads(("Acc_X", "Acc_Y", "Acc_Z", "p")) == [(0, 1, 2)]
    assert axis_triads(("a", "b")) == []


def test_noise_has_requested_snr_and_is_seeded():
    x = _windows()
    for snr in (20.0, 0.0):
        y = _dw(x, AdditiveNoise(snr), seed=1)
        noise = (y - x).astype(np.float64)
        sig = x - x.mean(axis=2, keepdims=True)
        measured = 10 * np.log10((sig ** 2).mean(axis=(0, 2)) / (noise ** 2).mean(axis=(0, 2)))
        np.testing.assert_allclose(measured, snr, atol=0.15)
        assert abs(noise.mean()) < 0.01 * noise.std() * 10
    a, b = _dw(x, AdditiveNoise(10), seed=3), _dw(x, AdditiveNoise(10), seed=3)
    np.testing.assert_array_equal(a, b)
    c = _dw(x, AdditiveNoise(10), seed=3, noise_seed=4)
    assert not np.array_equal(a, c)
    assert a.shape == x.shape and a.dtype == np.float32


def test_bias_offsets_in_physical_units_and_drift():
    x = _windows()
    y = _dw(x, Bias(acc_g=0.2, gyr_rad_s=0.05), seed=0)
    shift = (y - x).mean(axis=(0, 2))
    np.testing.assert_allclose(np.abs(shift[:3]), 0.2, atol=1e-5)
    np.testing.assert_allclose(np.abs(shift[3:]), 0.05, atol=1e-5)
    assert np.allclose(y - x, shift[None, :, None], atol=1e-5)          # constant without drift
    # m/s^2 data: the same 0.2 g is 0.2 * 9.80665 m/s^2
    y2 = distort_windows(x, Bias(acc_g=0.2, gyr_rad_s=0.0), channels=CH, sample_rate_hz=FS, acc_unit="m/s^2")
    np.testing.assert_allclose(np.abs((y2 - x).mean(axis=(0, 2))[:3]), 0.2 * G, rtol=1e-5)
    # drift: slope of drift per second, same slope for every window
    yd = _dw(x, Bias(acc_g=0.0, gyr_rad_s=0.0, acc_drift_g_per_s=0.01, gyr_drift_rad_s_per_s=0.02), seed=0)
    steps = np.diff((yd - x).astype(np.float64), axis=2) * FS          # units per second
    np.testing.assert_allclose(np.abs(steps[:, :3]), 0.01, atol=2e-4)
    np.testing.assert_allclose(np.abs(steps[:, 3:]), 0.02, atol=2e-4)
    # offsets at the start differ between windows (time since calibration in [0, max_elapsed_s])
    start = (yd - x)[:, 0, 0]
    assert np.ptp(start) > 0 and np.all(np.abs(start) <= 0.01 * 60 + 1e-4)


def test_gain_scales_each_axis_by_one_plus_minus_error():
    x = _windows() + 2.0
    y = _dw(x, GainError(0.3), seed=5)
    ratio = (y / x).reshape(y.shape[0], 6, -1)
    for c in range(6):
        r = np.unique(np.round(ratio[:, c], 5))
        assert r.size == 1 and (math.isclose(r[0], 1.3, abs_tol=1e-4) or math.isclose(r[0], 0.7, abs_tol=1e-4))


def test_clipping_saturates_at_full_scale_only():
    x = _windows() * 4
    y = _dw(x, Clipping(acc_range_g=1.0, gyr_range_rad_s=1.5))
    assert np.abs(y[:, :3]).max() <= 1.0 + 1e-6 and np.abs(y[:, 3:]).max() <= 1.5 + 1e-6
    inside = np.abs(x[:, :3]) < 1.0
    np.testing.assert_array_equal(y[:, :3][inside], x[:, :3][inside])
    assert (np.abs(y[:, :3]) == 1.0).any()
    d = make_distortion("clip", 2.0)
    assert d.acc_range_g == 2.0 and math.isclose(d.gyr_range_rad_s, 2 * GYRO_RANGE_PER_G)
    assert math.isclose(GYRO_RANGE_PER_G * 2, 250 * math.pi / 180)


def _dominant_hz(sig, fs):
    spec = np.abs(np.fft.rfft(sig - sig.mean()))
    return np.fft.rfftfreq(sig.size, 1 / fs)[spec.argmax()]


def test_sample_rate_mismatch_slows_motion_and_changes_length():
    n = 2000
    tt = np.arange(n) / FS
    values = np.stack([np.sin(2 * np.pi * 2.0 * tt)] * 6, axis=1).astype(np.float32)
    rec = Recording(values, np.zeros(n, np.int64), FS, CH, ("a",), "u")
    out = distort_recording(rec, SampleRateMismatch(1.25))
    assert out.n_samples == 2500 and out.sample_rate_hz == FS
    assert math.isclose(_dominant_hz(out.values[:, 0], FS), 2.0 / 1.25, abs_tol=0.03)
    out2 = distort_recording(rec, SampleRateMismatch(0.8))
    assert out2.n_samples == 1600
    assert math.isclose(_dominant_hz(out2.values[:, 0], FS), 2.0 / 0.8, abs_tol=0.05)
    # windows keep their length (centre crop / edge pad)
    x = _windows(n=4, t=100)
    assert _dw(x, SampleRateMismatch(1.5)).shape == x.shape
    assert _dw(x, SampleRateMismatch(0.5)).shape == x.shape


def test_rotation_is_one_rotation_of_every_triad():
    x = _windows()
    y = _dw(x, AxisRotation(60.0), seed=2).astype(np.float64)
    xa, ya = x[:, :3].astype(np.float64), y[:, :3]
    np.testing.assert_allclose(np.linalg.norm(ya, axis=1), np.linalg.norm(xa, axis=1), rtol=1e-5)
    # recover the matrix from the accelerometer and check it also maps the gyroscope
    A = xa.transpose(1, 0, 2).reshape(3, -1)
    B = ya.transpose(1, 0, 2).reshape(3, -1)
    R = B @ np.linalg.pinv(A)
    np.testing.assert_allclose(R @ R.T, np.eye(3), atol=1e-4)
    assert math.isclose(np.linalg.det(R), 1.0, abs_tol=1e-4)
    angle = math.degrees(math.acos((np.trace(R) - 1) / 2))
    assert math.isclose(angle, 60.0, abs_tol=0.05)
    Gx = x[:, 3:].astype(np.float64).transpose(1, 0, 2).reshape(3, -1)
    Gy = y[:, 3:].transpose(1, 0, 2).reshape(3, -1)
    np.testing.assert_allclose(R @ Gx, Gy, atol=1e-4)
    # explicit axis: 90 degrees about z maps x to y
    v = np.zeros((1, 6, 8), np.float32)
    v[0, 0] = 1.0
    r = _dw(v, AxisRotation(90.0, axis=(0, 0, 1)))
    np.testing.assert_allclose(r[0, :3, 0], [0, 1, 0], atol=1e-6)
    with pytest.raises(ValueError, match="triads"):
        distort_windows(np.zeros((1, 2, 8), np.float32), AxisRotation(10), channels=("a", "b"), sample_rate_hz=FS)


def test_dropped_samples_hold_the_last_delivered_value():
    x = _windows(n=32, t=400)
    y = _dw(x, DroppedSamples(0.4), seed=0)
    held = np.all(y[:, :, 1:] == y[:, :, :-1], axis=1)            # all channels repeat the previous sample
    assert math.isclose(held.mean(), 0.4, abs_tol=0.03)
    np.testing.assert_array_equal(y[:, :, 0], x[:, :, 0])
    # every output sample is an input sample at the same or an earlier time
    for i in range(3):
        for t in range(1, 50):
            src = [s for s in range(t + 1) if np.array_equal(y[i, :, t], x[i, :, s])]
            assert src
    np.testing.assert_array_equal(_dw(x, DroppedSamples(0.0)), x)


def test_compose_and_parse():
    x = _windows(n=8)
    d = parse_distortion("noise:20+rotation:30")
    assert isinstance(d, Compose) and len(d.distortions) == 2
    assert isinstance(d.distortions[0], AdditiveNoise) and d.distortions[1].angle_deg == 30
    y = _dw(x, d, seed=1)
    np.testing.assert_array_equal(y, _dw(x, AdditiveNoise(20) + AxisRotation(30), seed=1))
    assert "dB" in d.describe() and "deg" in d.describe()
    assert isinstance(parse_distortion("gain:0.1"), GainError)


@pytest.mark.parametrize("name,severity", [("noise", 100), ("noise", -20), ("bias", 3), ("bias", -0.1),
                                           ("gain", 1.0), ("clip", 0), ("clip", -1), ("rate", 0.2), ("rate", 3),
                                           ("rotation", 200), ("rotation", -1), ("dropout", 1.0),
                                           ("noise", float("nan"))])
def test_severity_out_of_range_is_a_clear_error(name, severity):
    with pytest.raises(ValueError, match="must be in"):
        make_distortion(name, severity)


def test_bad_distortion_inputs():
    with pytest.raises(ValueError, match="must be one of"):
        make_distortion("blur", 1.0)
    for bad in ("noise", "noise:abc", "", "blur:3"):
        with pytest.raises(ValueError, match=r"distortion 'noise' in spec 'noise' must |distortion name must be one of \['noise',|distortion spec '' is empty; expected e\.|severity 'abc' of distortion 'noise' is "):
            parse_distortion(bad)
    with pytest.raises(ValueError, match="AdditiveNoise.snr_db"):
        AdditiveNoise(snr_db=99)
    with pytest.raises(ValueError, match="GainError.error"):
        GainError(error=2)
    with pytest.raises(ValueError, match="Bias.gyr_rad_s"):
        Bias(gyr_rad_s=10)
    with pytest.raises(ValueError, match="axis"):
        AxisRotation(10, axis=(0, 0, 0))
    with pytest.raises(ValueError, match="channel names"):
        distort_windows(np.zeros((1, 3, 8), np.float32), GainError(0.1), channels=CH, sample_rate_hz=FS)
    with pytest.raises(ValueError, match="acc_unit"):
        distort_windows(np.zeros((1, 6, 8), np.float32), GainError(0.1), channels=CH, sample_rate_hz=FS,
                        acc_unit="mg")
