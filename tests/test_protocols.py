"""Evaluation protocols: calibrate-then-use split and the new-placement split."""
import numpy as np
import pytest

from imutune.data.recordings import Recording
from imutune.personalize.protocols import calibrate_then_use, split_target
from imutune.signal.windows import WindowConfig, make_windows, window_starts


def _rec(n, name="r0", sr=50.0, user="u"):
    t = np.arange(n, dtype=np.float32)
    values = np.stack([t, -t], axis=1)            # sample index encoded in the values
    return Recording(values, np.zeros(n, np.int64), sr, ("a", "b"), ("c0",), user, name, {"side": 0})


def test_calibrate_then_use_no_test_window_overlaps_a_calibration_window():
    cfg = WindowConfig(window_s=2.0, hop_s=0.5, sample_rate_hz=50.0)
    recs = [_rec(1000, "a"), _rec(1501, "b"), _rec(777, "c")]
    cal, test = calibrate_then_use(recs, window_s=cfg.window_s, calibration_fraction=0.5)
    assert [r.meta["split"] for r in cal] == ["calibration"] * 3
    assert [r.meta["split"] for r in test] == ["test"] * 3
    wc, wt = make_windows(cal, cfg), make_windows(test, cfg)
    for i, rec in enumerate(recs):
        # values[:, 0] is the original sample index: the sample span of every window
        c = wc.x[wc.recording == i, 0, :]
        t = wt.x[wt.recording == i, 0, :]
        assert c.size and t.size
        cal_last = c.max()
        test_first = t.min()
        assert test_first > cal_last                          # no overlap
        assert test_first - cal_last - 1 >= cfg.window_samples  # at least one window apart
        assert cal[i].meta["split_end_sample"] == int(0.5 * rec.n_samples)
        assert test[i].meta["split_start_sample"] == int(0.5 * rec.n_samples) + cfg.window_samples
        assert cal[i].meta["split_source"] == rec.name and cal[i].meta["side"] == 0


def test_calibrate_then_use_fraction_and_gap():
    rec = _rec(1000)
    cal, test = calibrate_then_use([rec], window_s=2.0, calibration_fraction=0.6, gap_s=3.0)
    assert cal[0].n_samples == 600
    assert test[0].n_samples == 1000 - 600 - 150
    np.testing.assert_array_equal(test[0].values[0], rec.values[750])
    assert test[0].meta["gap_s"] == 3.0 and cal[0].meta["calibration_fraction"] == 0.6


def test_calibrate_then_use_errors():
    with pytest.raises(ValueError, match="'tiny'.*at least one window"):
        calibrate_then_use([_rec(1000, "ok"), _rec(250, "tiny")], window_s=2.0)
    with pytest.raises(ValueError, match="calibration_fraction"):
        calibrate_then_use([_rec(1000)], window_s=2.0, calibration_fraction=1.0)
    with pytest.raises(ValueError, match="gap_s must be at least window_s"):
        calibrate_then_use([_rec(1000)], window_s=2.0, gap_s=1.0)
    with pytest.raises(ValueError, match="window_s"):
        calibrate_then_use([_rec(1000)], window_s=0.0)
    with pytest.raises(ValueError, match="empty"):
        calibrate_then_use([], window_s=2.0)


def test_calibrate_then_use_on_watch_data(watch_recordings):
    cal, test = calibrate_then_use(watch_recordings, window_s=2.0)
    assert len(cal) == len(test) == len(watch_recordings)
    assert window_starts(min(r.n_samples for r in test), 100, 25).size >= 1


def test_split_target_is_new_placement(watch_recordings):
    src, tr, te = split_target(watch_recordings, "subject03", train_side=1)
    assert {r.meta["side"] for r in tr} == {1} and {r.meta["side"] for r in te} == {0}
    assert all(r.user != "subject03" for r in src)
