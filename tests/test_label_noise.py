"""Label-noise models: exact effect on constructed recordings and windows, seeding, parsing."""
import numpy as np
import pytest

from imutune.data.recordings import Recording
from imutune.signal.label_noise import (
    BoundaryNoise,
    ComposeNoise,
    ConfusionNoise,
    NoLabelNoise,
    ShiftNoise,
    SymmetricNoise,
    concatenate_session,
    label_segments,
    noisy_recording,
    noisy_windows,
    parse_label_noise,
)
from imutune.signal.windows import WindowConfig, make_windows

CLASSES = ("A", "B", "C", "D")


def _session(seg_len=100, order=(0, 1, 2), sr=10.0):
    labels = np.concatenate([np.full(seg_len, k) for k in order]).astype(np.int64)
    values = np.arange(labels.size, dtype=np.float32)[:, None].repeat(2, 1)
    return Recording(values, labels, sr, ("a", "b"), CLASSES, "u", "s")


def test_label_segments():
    assert label_segments(np.array([0, 0, 1, 1, 1, -1, 2])) == [(0, 2, 0), (2, 5, 1), (5, 6, -1), (6, 7, 2)]


def test_boundary_relabels_first_and_last_fraction_with_neighbours():
    rec = _session()
    out = noisy_recording(rec, BoundaryNoise(0.2)).labels
    exp = rec.labels.copy()
    exp[80:100] = 1          # end of segment A -> next class B
    exp[100:120] = 0         # start of B -> previous class A
    exp[180:200] = 2
    exp[200:220] = 1         # first segment's start and last segment's end have no neighbour
    np.testing.assert_array_equal(out, exp)


def test_boundary_windows_changed_exactly():
    rec = _session()
    cfg = WindowConfig(window_s=1.0, hop_s=1.0, sample_rate_hz=10.0, min_purity=0.8)
    nw = noisy_windows([rec], BoundaryNoise(0.2), cfg)
    # 30 windows of 10 samples: windows 8, 9 (A->B), 10, 11 (B->A), 18, 19, 20, 21
    assert np.flatnonzero(nw.noisy).tolist() == [8, 9, 10, 11, 18, 19, 20, 21]
    np.testing.assert_array_equal(nw.y_true, make_windows([rec], cfg).y)
    assert nw.windows.y[8] == 1 and nw.windows.y[11] == 0


def test_shift_moves_each_boundary_by_1_to_3_s():
    rec = _session(seg_len=100, order=(0, 1, 2, 3))
    out = noisy_recording(rec, ShiftNoise(1.0, 3.0), seed=3).labels
    segs = label_segments(out)
    assert [c for _, _, c in segs] == [0, 1, 2, 3]
    moved = [abs(a - 100 * (i)) for i, (a, _, _) in enumerate(segs)][1:]
    assert all(10 <= m <= 30 for m in moved)                 # 1-3 s at 10 Hz
    assert not np.array_equal(out, noisy_recording(rec, ShiftNoise(1.0, 3.0), seed=4).labels)
    np.testing.assert_array_equal(out, noisy_recording(rec, ShiftNoise(1.0, 3.0), seed=3).labels)


def test_symmetric_changes_exact_count_to_other_classes():
    rec = _session(seg_len=100, order=(0, 1, 2, 3))
    cfg = WindowConfig(window_s=1.0, hop_s=1.0, sample_rate_hz=10.0)
    nw = noisy_windows([rec], SymmetricNoise(0.3), cfg, seed=1)
    assert nw.noisy.sum() == 12                              # round(0.3 * 40)
    assert np.all(nw.windows.y[nw.noisy] != nw.y_true[nw.noisy])
    assert np.array_equal(nw.windows.x, make_windows([rec], cfg).x)


def test_confusion_only_swaps_pairs():
    rec = _session(seg_len=100, order=(0, 1, 2, 3))
    cfg = WindowConfig(window_s=1.0, hop_s=1.0, sample_rate_hz=10.0)
    nw = noisy_windows([rec], ConfusionNoise((("A", "B"),), 0.5), cfg)
    changed = np.flatnonzero(nw.noisy)
    assert changed.size == 10                                 # 5 of A's 10 windows, 5 of B's
    assert set(nw.y_true[changed]) == {0, 1}
    assert np.all(nw.windows.y[changed] == 1 - nw.y_true[changed])
    P = ConfusionNoise((("A", "B"),), 0.5).matrix(CLASSES)
    np.testing.assert_allclose(P.sum(1), 1.0)
    with pytest.raises(ValueError, match="not in the class list"):
        noisy_windows([rec], ConfusionNoise((("IR", "ER"),), 0.5), cfg)


def test_none_and_compose():
    rec = _session()
    cfg = WindowConfig(window_s=1.0, hop_s=1.0, sample_rate_hz=10.0)
    assert noisy_windows([rec], NoLabelNoise(), cfg).noisy.sum() == 0
    comp = ComposeNoise((BoundaryNoise(0.2), SymmetricNoise(0.0)))
    assert np.array_equal(noisy_windows([rec], comp, cfg).noisy, noisy_windows([rec], BoundaryNoise(0.2), cfg).noisy)
    assert parse_label_noise("boundary:0.2+symmetric:0.3").describe() == "boundary 0.2 per end + symmetric 0.3"


def test_parse_errors():
    for spec, msg in [("", "empty"), ("bogus", "unknown label-noise model"), ("boundary:x", "not a number"),
                      ("shift:3", "MIN-MAX"), ("symmetric@0.2", "only for confusion"),
                      ("boundary:0.7", r"\[0, 0.5\)"), ("symmetric:1.5", "rate")]:
        with pytest.raises(ValueError, match=msg):
            parse_label_noise(spec)
    assert isinstance(parse_label_noise("confusion:IR-ER/ABD-FEL@0.3"), ConfusionNoise)


def test_concatenate_session():
    a, b = _session(order=(0,)), _session(order=(1,))
    s = concatenate_session([a, b])
    assert s.n_samples == 200 and label_segments(s.labels) == [(0, 100, 0), (100, 200, 1)]
    other = Recording(a.values, a.labels, 20.0, a.channels, a.class_names, "u", "x")
    with pytest.raises(ValueError, match="'x' differs"):
        concatenate_session([a, other])
    with pytest.raises(ValueError, match="empty"):
        concatenate_session([])
