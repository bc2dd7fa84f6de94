"""Tests for imutune.windows: window config, cutting, resampling, normalization, long-tail subsampling."""
from __future__ import annotations

import numpy as np
import pytest
from imutune.data.recordings import Recording
from imutune.signal.windows import (
    Normalizer,
    WindowConfig,
    longtail_subsample,
    make_windows,
    resample,
    resample_recording,
    window_starts,
)

CLASSES = ("a", "b", "c")


def _rec(labels, *, sample_rate_hz=10.0, channels=("ch0", "ch1"), values=None, class_names=CLASSES,
         user="u1", name="r"):
    labels = np.asarray(labels, dtype=np.int64)
    s = labels.shape[0]
    if values is None:
        # channel c holds sample_index + 1000 * c, so a window's position is readable from its values
        values = np.stack([np.arange(s) + 1000.0 * c for c in range(len(channels))], axis=1)
    return Recording(np.asarray(values, np.float32), labels, sample_rate_hz, channels, class_names, user, name)


# 10 Hz, 1 s windows, 0.5 s hop -> T = 10, H = 5
CFG10 = WindowConfig(window_s=1.0, hop_s=0.5, sample_rate_hz=10.0, min_purity=0.8)


# --------------------------------------------------------------------------- WindowConfig

def test_window_config_sample_counts():
    c = WindowConfig()
    assert (c.window_samples, c.hop_samples) == (100, 25)
    c = WindowConfig(window_s=2.56, hop_s=1.28, sample_rate_hz=100.0)
    assert (c.window_samples, c.hop_samples) == (256, 128)
    # a hop shorter than one sample still advances by one sample
    assert WindowConfig(window_s=1.0, hop_s=0.001, sample_rate_hz=50.0).hop_samples == 1


@pytest.mark.parametrize("field", ["window_s", "hop_s", "sample_rate_hz"])
@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf")])
def test_window_config_rejects_non_positive(field, bad):
    with pytest.raises(ValueError, match=rf"{field} in WindowConfig must be a positive number"):
        WindowConfig(**{field: bad})


@pytest.mark.parametrize("bad", [0.0, -0.1, 1.5, float("nan")])
def test_window_config_rejects_bad_purity(bad):
    with pytest.raises(ValueError, match=r"min_purity must be in \(0, 1\]"):
        WindowConfig(min_purity=bad)


def test_window_config_rejects_too_short_window():
    with pytest.raises(ValueError, match=r"gives 7 samples per window; expected >= 8"):
        WindowConfig(window_s=0.14, sample_rate_hz=50.0)
    assert WindowConfig(window_s=0.16, sample_rate_hz=50.0).window_samples == 8


# --------------------------------------------------------------------------- window_starts

@pytest.mark.parametrize("s,t,h,expected", [
    (25, 10, 5, [0, 5, 10, 15]),
    (10, 10, 3, [0]),
    (9, 10, 3, []),
    (20, 10, 4, [0, 4, 8]),
    (12, 4, 1, list(range(9))),
])
def test_window_starts(s, t, h, expected):
    got = window_starts(s, t, h)
    assert got.dtype == np.int64
    assert got.tolist() == expected
    if s >= t:
        assert len(got) == 1 + (s - t) // h
    assert all(st + t <= s for st in got)


# --------------------------------------------------------------------------- make_windows

@pytest.mark.parametrize("s", [10, 11, 14, 15, 37, 100])
def test_make_windows_count_and_content(s):
    rec = _rec(np.zeros(s, np.int64))
    w = make_windows([rec], CFG10)
    n = 1 + (s - 10) // 5
    assert len(w) == n
    assert w.x.shape == (n, 2, 10) and w.x.dtype == np.float32
    assert w.y.dtype == np.int64 and w.y.tolist() == [0] * n
    for i in range(n):
        np.testing.assert_array_equal(w.x[i, 0], np.arange(5 * i, 5 * i + 10))
        np.testing.assert_array_equal(w.x[i, 1], 1000 + np.arange(5 * i, 5 * i + 10))
    assert w.channels == ("ch0", "ch1") and w.class_names == CLASSES
    assert w.num_classes == 3
    assert w.class_counts().tolist() == [n, 0, 0]


def test_make_windows_majority_label_and_purity():
    # labels change at sample 13: starts 0, 5, 10, 15, 20
    labels = np.r_[np.zeros(13), np.ones(17)].astype(np.int64)
    w = make_windows([_rec(labels)], CFG10)
    # window 5..14 holds 8 zeros (purity 0.8, kept); window 10..19 holds 3 zeros + 7 ones (0.7, dropped)
    starts = w.x[:, 0, 0].astype(int).tolist()
    assert starts == [0, 5, 15, 20]
    assert w.y.tolist() == [0, 0, 1, 1]
    # with a lower threshold the straddling window is kept and labelled by its majority (class 1)
    w2 = make_windows([_rec(labels)], WindowConfig(window_s=1.0, hop_s=0.5, sample_rate_hz=10.0, min_purity=0.7))
    assert w2.x[:, 0, 0].astype(int).tolist() == [0, 5, 10, 15, 20]
    assert w2.y.tolist() == [0, 0, 1, 1, 1]
    # with purity 1.0 the 8-of-10 window is dropped too
    w3 = make_windows([_rec(labels)], WindowConfig(window_s=1.0, hop_s=0.5, sample_rate_hz=10.0, min_purity=1.0))
    assert w3.x[:, 0, 0].astype(int).tolist() == [0, 15, 20]


def test_make_windows_drops_unlabeled():
    labels = np.r_[np.full(10, 2), np.full(15, -1), np.full(10, 1)].astype(np.int64)  # S = 35
    w = make_windows([_rec(labels)], CFG10)
    # starts 0..25 step 5: 0 -> class 2; 5, 10, 15 mostly/fully unlabeled; 20 -> 5 unlabeled + 5 ones; 25 -> class 1
    assert w.x[:, 0, 0].astype(int).tolist() == [0, 25]
    assert w.y.tolist() == [2, 1]


def test_make_windows_all_unlabeled_raises():
    with pytest.raises(ValueError, match=r"no window of 10 samples with label purity >= 0.8 was found in 1 recordings"):
        make_windows([_rec(np.full(40, -1))], CFG10)


def test_make_windows_too_short_recording_raises():
    with pytest.raises(ValueError, match=r"no window of 10 samples"):
        make_windows([_rec(np.zeros(9, np.int64))], CFG10)


def test_make_windows_groups_and_users():
    r0 = _rec(np.zeros(20, np.int64), user="alice", name="r0")    # 3 windows
    short = _rec(np.zeros(5, np.int64), user="carol", name="short")  # 0 windows, skipped
    r1 = _rec(np.ones(15, np.int64), user="bob", name="r1")        # 2 windows
    w = make_windows([r0, short, r1], CFG10)
    assert w.recording.tolist() == [0, 0, 0, 2, 2]
    assert w.users.tolist() == ["alice"] * 3 + ["bob"] * 2
    assert w.y.tolist() == [0, 0, 0, 1, 1]
    sub = w.subset(w.y == 1)
    assert len(sub) == 2 and sub.users.tolist() == ["bob", "bob"] and sub.recording.tolist() == [2, 2]


def test_make_windows_channel_selection_by_name():
    rec = _rec(np.zeros(10, np.int64), channels=("a", "b", "c"))
    w = make_windows([rec], CFG10, channels=["c", "a"])
    assert w.channels == ("c", "a")
    np.testing.assert_array_equal(w.x[0, 0], 2000 + np.arange(10))
    np.testing.assert_array_equal(w.x[0, 1], np.arange(10))


def test_make_windows_missing_channel_raises():
    rec = _rec(np.zeros(10, np.int64), channels=("a", "b"), name="rec7")
    with pytest.raises(ValueError, match=r"channels \['z'\] not found in recording 'rec7'; it has \['a', 'b'\]"):
        make_windows([rec], CFG10, channels=["a", "z"])


def test_make_windows_class_list_subset_is_merged_by_name():
    """Was an error ('expected [a, b, c] like the first recording'); classes are now matched by name."""
    r0 = _rec(np.zeros(10, np.int64))
    r1 = _rec(np.ones(10, np.int64), class_names=("c", "b"), name="other")
    w = make_windows([r0, r1], CFG10)
    assert w.class_names == CLASSES and w.y.tolist() == [0] * (len(w) // 2) + [1] * (len(w) // 2)


def test_make_windows_empty_raises():
    with pytest.raises(ValueError, match=r"recordings is empty"):
        make_windows([], CFG10)


def test_make_windows_resamples_to_model_rate():
    fs, f0 = 100.0, 5.0
    t = np.arange(1000) / fs                                   # 10 s at 100 Hz
    sine = np.sin(2 * np.pi * f0 * t)
    labels = np.r_[np.zeros(500), np.ones(500)].astype(np.int64)
    rec = _rec(labels, sample_rate_hz=fs, channels=("s",), values=sine[:, None])
    cfg = WindowConfig(window_s=2.0, hop_s=2.0, sample_rate_hz=50.0, min_purity=1.0)
    w = make_windows([rec], cfg)
    assert cfg.window_samples == 100
    # 500 samples at 50 Hz -> 5 windows of 2 s; the label change at 5 s (sample 250) splits window 2
    # half/half, so purity 1.0 drops it
    assert w.x.shape == (4, 1, 100)
    assert w.y.tolist() == [0, 0, 1, 1]
    # the 5 Hz sine stays at 5 Hz: bin 10 of a 2 s window (0.5 Hz per bin)
    for k in range(4):
        assert int(np.argmax(np.abs(np.fft.rfft(w.x[k, 0])))) == 10


def test_resample_shape_and_frequency():
    fs, f0 = 100.0, 3.0
    x = np.stack([np.sin(2 * np.pi * f0 * np.arange(400) / fs), np.ones(400)], axis=1)
    out = resample(x, fs, 50.0)
    assert out.shape == (200, 2) and out.dtype == np.float32
    # 4 s at 50 Hz: 0.25 Hz per bin -> 3 Hz is bin 12
    assert int(np.argmax(np.abs(np.fft.rfft(out[:, 0])))) == 12
    # upsampling 50 -> 100 Hz doubles the length
    assert resample(out, 50.0, 100.0).shape == (400, 2)
    # same rate is a no-op
    np.testing.assert_array_equal(resample(x, fs, fs), x.astype(np.float32))


def test_resample_rejects_bad_rates():
    with pytest.raises(ValueError, match=r"from_hz must be a positive number"):
        resample(np.zeros((10, 1)), 0.0, 50.0)
    with pytest.raises(ValueError, match=r"to_hz must be a positive number"):
        resample(np.zeros((10, 1)), 50.0, -1.0)


def test_resample_recording_labels_nearest():
    labels = np.repeat(np.array([0, 1, 2, 1]), 10)              # 40 samples at 100 Hz
    rec = _rec(labels, sample_rate_hz=100.0)
    out = resample_recording(rec, 50.0)
    assert out.sample_rate_hz == 50.0 and out.n_samples == 20
    np.testing.assert_array_equal(out.labels, labels[::2])
    assert out.meta["resampled_from_hz"] == 100.0
    assert resample_recording(rec, 100.0) is rec


# --------------------------------------------------------------------------- Normalizer

def test_normalizer_fit_apply():
    rng = np.random.default_rng(0)
    x = rng.normal(loc=[[5.0], [-3.0], [0.0]], scale=[[2.0], [0.5], [10.0]], size=(20, 3, 16)).astype(np.float32)
    norm = Normalizer.fit(x)
    assert norm.mean.shape == (3,) and norm.std.shape == (3,)
    assert norm.mean.dtype == np.float32 and norm.std.dtype == np.float32
    np.testing.assert_allclose(norm.mean, x.astype(np.float64).mean(axis=(0, 2)), rtol=1e-6)
    z = norm(x)
    assert z.dtype == np.float32 and z.shape == x.shape
    np.testing.assert_allclose(z.mean(axis=(0, 2)), 0.0, atol=1e-5)
    np.testing.assert_allclose(z.std(axis=(0, 2)), 1.0, atol=1e-5)
    d = norm.to_dict()
    assert set(d) == {"mean", "std"} and len(d["mean"]) == 3


def test_normalizer_constant_channel_uses_min_std():
    x = np.ones((4, 2, 8), np.float32)
    x[:, 1] = np.arange(8)
    norm = Normalizer.fit(x)
    assert norm.std[0] == pytest.approx(1e-6)
    np.testing.assert_array_equal(norm(x)[:, 0], 0.0)


def test_normalizer_shape_errors():
    with pytest.raises(ValueError, match=r"x must have shape \(N, C, T\) with N > 0, got \(4, 8\)"):
        Normalizer.fit(np.zeros((4, 8)))
    with pytest.raises(ValueError, match=r"with N > 0, got \(0, 2, 8\)"):
        Normalizer.fit(np.zeros((0, 2, 8)))
    norm = Normalizer.fit(np.random.default_rng(0).normal(size=(3, 2, 8)))
    with pytest.raises(ValueError, match=r"x must have shape \(N, 2, T\), got \(3, 3, 8\)"):
        norm(np.zeros((3, 3, 8)))
    with pytest.raises(ValueError, match=r"x must have shape \(N, 2, T\), got \(2, 8\)"):
        norm(np.zeros((2, 8)))


# --------------------------------------------------------------------------- longtail_subsample

def _y(counts):
    return np.concatenate([np.full(c, k) for k, c in enumerate(counts)]).astype(np.int64)


def test_longtail_ratio_one_is_balanced():
    y = _y([100, 150, 200])
    idx = longtail_subsample(y, 1.0, seed=3)
    assert np.bincount(y[idx], minlength=3).tolist() == [100, 100, 100]


def test_longtail_ratio_ten_exact_counts():
    y = _y([100, 150, 200, 120])
    idx = longtail_subsample(y, 10.0, seed=0)
    counts = np.bincount(y[idx], minlength=4)
    # n_max = smallest class count = 100; rank i keeps floor(100 * 10 ** (-i / 3))
    expected = sorted([int(np.floor(100 * 10.0 ** (-i / 3))) for i in range(4)], reverse=True)
    assert expected == [100, 46, 21, 10]
    assert sorted(counts.tolist(), reverse=True) == expected
    assert counts.max() / counts.min() == 10.0


def test_longtail_indices_valid_and_deterministic():
    y = _y([50, 80, 60])
    a = longtail_subsample(y, 5.0, seed=7)
    b = longtail_subsample(y, 5.0, seed=7)
    np.testing.assert_array_equal(a, b)
    assert a.dtype == np.int64
    assert np.all(np.diff(a) > 0)                      # sorted, no duplicates
    assert a.min() >= 0 and a.max() < len(y)
    # different seeds pick different subsets (class order and/or members)
    assert any(not np.array_equal(a, longtail_subsample(y, 5.0, seed=s)) for s in range(1, 5))


def test_longtail_at_least_one_per_class():
    y = _y([3, 3, 3])
    idx = longtail_subsample(y, 1000.0, seed=0)
    assert sorted(np.bincount(y[idx], minlength=3).tolist()) == [1, 1, 3]


def test_longtail_absent_class_skipped():
    y = _y([10, 0, 20])                                   # class 1 absent
    idx = longtail_subsample(y, 1.0, num_classes=3)
    assert np.bincount(y[idx], minlength=3).tolist() == [10, 0, 10]


@pytest.mark.parametrize("bad", [0.5, 0.0, -2.0, float("nan")])
def test_longtail_rejects_ratio_below_one(bad):
    with pytest.raises(ValueError, match=r"imbalance_ratio must be >= 1"):
        longtail_subsample(_y([5, 5]), bad)


def test_longtail_rejects_empty():
    with pytest.raises(ValueError, match=r"y is empty"):
        longtail_subsample(np.zeros(0, np.int64), 2.0, num_classes=3)
    with pytest.raises(ValueError, match=r"y is empty"):
        longtail_subsample(np.zeros(0, np.int64), 2.0)


def test_windows_never_span_a_gap_in_the_timestamps():
    # 60 samples at 10 Hz with 15 samples missing before sample 32: windows of 1 s (10 samples), hop 0.5 s
    base = _rec(np.zeros(60))
    rec = Recording(base.values, base.labels, base.sample_rate_hz, base.channels, base.class_names, base.user,
                    base.name, {}, ((32, 15),))
    cfg = WindowConfig(window_s=1.0, hop_s=0.5, sample_rate_hz=10.0)
    w = make_windows([rec], cfg)
    first = w.x[:, 0, 0]                                       # channel 0 holds the sample index
    assert np.all(np.diff(w.x[:, 0, :], axis=1) == 1)          # every window is contiguous in the file
    # pieces [0, 32) and [32, 60) are cut on their own: starts 0, 5, ..., 20 and 32, 37, ..., 47
    assert first.tolist() == [0, 5, 10, 15, 20, 32, 37, 42, 47]
    assert np.all(w.recording == 0)                            # the pieces keep their recording index
    # the same samples without the gap give windows across sample 32 (e.g. the one starting at 25)
    plain = make_windows([base], cfg)
    assert 25 in plain.x[:, 0, 0].tolist()


def test_recordings_with_other_class_lists_are_matched_by_name():
    """A folder of one-activity CSV files: each file's class list holds only its own activity."""
    walk = _rec([0] * 30, class_names=("walk",), name="walk")
    run = _rec([0] * 30, class_names=("run",), name="run")
    both = _rec([1] * 15 + [0] * 15 + [-1] * 10, class_names=("run", "walk"), name="both")
    w = make_windows([walk, run, both], CFG10)
    assert w.class_names == ("walk", "run")
    names = np.array(w.class_names)[w.y]
    rec = np.asarray(w.recording)
    assert set(names[rec == 0]) == {"walk"} and set(names[rec == 1]) == {"run"}
    assert set(names[rec == 2]) == {"walk", "run"}
    first = names[rec == 2][0]
    assert first == "walk"                            # 'both' starts with label 1 = its 'walk'
    assert make_windows([both], CFG10).class_names == ("run", "walk")   # one recording: its own order


def test_recording_with_classes_maps_labels_by_name_and_names_the_missing_class():
    r = _rec([0, 1, -1, 1], class_names=("x", "y"), name="r7")
    m = r.with_classes(("y", "z", "x"))
    assert m.class_names == ("y", "z", "x") and m.labels.tolist() == [2, 0, -1, 0]
    assert r.with_classes(("x", "y")) is r
    with pytest.raises(ValueError, match=r"recording 'r7' has classes \['x'\] that are not among \['y', 'z'\]"):
        r.with_classes(("y", "z"))
