"""One reader per format (issue 8, defect 2): the eager loader is the stream read to the end, so the same file
gives the same values, labels, classes, gaps and windows both ways."""
from __future__ import annotations

import numpy as np
import pytest
from conftest import write_shl_folder
from imutune.data import (
    CsvStream,
    NpzStream,
    Recording,
    RecordingStream,
    Shl2018Stream,
    load_csv,
    load_npz,
    load_shl2018,
    read_stream,
    save_npz,
    split_at_gaps,
)
from imutune.signal.windows import WindowConfig, make_windows

FS = 50.0


def _gapped_csv(path, *, n=400, gap_at=150, gap_samples=10):
    """50 Hz; rows ``gap_at..`` come ``gap_samples`` samples late; labels Walk/Run plus both unlabeled markers."""
    rng = np.random.default_rng(0)
    t = np.arange(n) / FS
    t[gap_at:] += gap_samples / FS
    labels = np.where(np.arange(n) // 60 % 2 == 0, "Walk", "Run").astype(object)
    labels[5:15] = "-1"
    labels[200:230] = ""
    v = rng.normal(size=(n, 3)).round(4)
    lines = ["timestamp_s,acc_x,acc_y,acc_z,label"]
    lines += [f"{t[i]:.5f},{v[i, 0]},{v[i, 1]},{v[i, 2]},{labels[i]}" for i in range(n)]
    path.write_text("\n".join(lines) + "\n")
    return path, v.astype(np.float32)


def _concat(blocks):
    return (np.concatenate([b.values for b in blocks]), np.concatenate([b.labels for b in blocks]),
            [(int(sum(b.n for b in blocks[:i])), b.gap_before) for i, b in enumerate(blocks) if b.gap_before])


@pytest.mark.parametrize("block_samples", [7, 64, 8192])
def test_gapped_unlabeled_csv_is_identical_eager_and_streamed(tmp_path, block_samples):
    path, v = _gapped_csv(tmp_path / "walk.csv")
    rec = load_csv(path)
    stream = CsvStream(path, block_samples=block_samples)
    values, labels, gaps = _concat(list(stream.blocks()))
    # classes: the unlabeled markers '' and '-1' are never classes, in either reader
    assert rec.class_names == stream.class_names == ("Run", "Walk")
    assert rec.sample_rate_hz == pytest.approx(FS) and stream.sample_rate_hz == rec.sample_rate_hz
    np.testing.assert_array_equal(rec.values, values)
    np.testing.assert_array_equal(rec.values, v)
    np.testing.assert_array_equal(rec.labels, labels)
    assert (rec.labels[5:15] == -1).all() and (rec.labels[200:230] == -1).all()
    # the 10-sample gap: reported by the stream and kept by the loader, at the same sample
    assert gaps == [(150, 10)]
    assert rec.gaps == ((150, 10),)
    # the in-memory recording streams with the same gap, so replaying it matches replaying the file
    rv, rl, rg = _concat(list(RecordingStream(rec, block_samples=block_samples).blocks()))
    np.testing.assert_array_equal(rv, values)
    np.testing.assert_array_equal(rl, labels)
    assert rg == gaps
    # identical windows from both ways
    cfg = WindowConfig(window_s=1.0, hop_s=0.5, sample_rate_hz=FS)
    w_eager = make_windows([rec], cfg)
    w_stream = make_windows([read_stream(CsvStream(path, block_samples=block_samples))], cfg)
    np.testing.assert_array_equal(w_eager.x, w_stream.x)
    np.testing.assert_array_equal(w_eager.y, w_stream.y)
    assert w_eager.class_names == w_stream.class_names == ("Run", "Walk")


def test_split_at_gaps_gives_gap_free_pieces(tmp_path):
    path, v = _gapped_csv(tmp_path / "walk.csv")
    pieces = split_at_gaps(load_csv(path))
    assert [p.n_samples for p in pieces] == [150, 250] and all(not p.gaps for p in pieces)
    assert [p.name for p in pieces] == ["walk_000", "walk_001"]
    np.testing.assert_array_equal(np.concatenate([p.values for p in pieces]), v)


def test_npz_round_trip_keeps_gaps_and_matches_stream(tmp_path):
    path, _ = _gapped_csv(tmp_path / "walk.csv")
    rec = load_csv(path)
    p = save_npz(rec, tmp_path / "walk.npz")
    back = load_npz(p)
    assert back.gaps == rec.gaps == ((150, 10),)
    np.testing.assert_array_equal(back.values, rec.values)
    values, labels, gaps = _concat(list(NpzStream(p, block_samples=64).blocks()))
    np.testing.assert_array_equal(values, rec.values)
    np.testing.assert_array_equal(labels, rec.labels)
    assert gaps == [(150, 10)]


def test_shl_loader_is_the_stream_cut_at_gaps(tmp_path):
    w = write_shl_folder(tmp_path / "train", order=[3, 1, 2, 7, 8], frame_len=20, channels=("Acc_x", "Gyr_z"))
    recs = load_shl2018(w["folder"], channels=("Gyr_z", "Acc_x"))
    stream = Shl2018Stream(w["folder"], channels=("Gyr_z", "Acc_x"))
    values, labels, gaps = _concat(list(stream.blocks()))
    assert gaps == [(60, 3 * 20)]                 # order 3 -> 7: frames 4, 5, 6 missing
    assert [r.n_samples for r in recs] == [60, 40]
    np.testing.assert_array_equal(np.concatenate([r.values for r in recs]), values)
    np.testing.assert_array_equal(np.concatenate([r.labels for r in recs]), labels)
    assert recs[0].channels == stream.channels == ("Gyr_z", "Acc_x")


@pytest.mark.parametrize("channels, match", [
    (("Acc_x", "Acc_x"), r"repeats \['Acc_x'\]"),
    ((), r"is empty"),
    (("",), r"has invalid names \[''\]"),
    (("Label",), r"has invalid names \['Label'\]"),
    (("train_order",), r"has invalid names \['train_order'\]"),
])
def test_shl_channel_rules_are_the_same_for_loader_and_stream(tmp_path, channels, match):
    w = write_shl_folder(tmp_path / "train", order=[1, 2], frame_len=20, channels=("Acc_x",))
    for reader in (load_shl2018, Shl2018Stream):
        with pytest.raises(ValueError, match=r"channels for SHL folder .*train' " + match):
            reader(w["folder"], channels=channels)


def test_recording_gaps_are_validated():
    v = np.zeros((10, 1), np.float32)
    lab = np.zeros(10, np.int64)
    with pytest.raises(ValueError, match=r"gaps in recording 'r' has \(10, 2\); expected increasing sample indices "
                                         r"in 1\.\.9"):
        Recording(v, lab, 50.0, ("a",), ("x",), "u", "r", gaps=((10, 2),))
    with pytest.raises(ValueError, match=r"at least 1 missing sample"):
        Recording(v, lab, 50.0, ("a",), ("x",), "u", "r", gaps=((3, 0),))
    r = Recording(v, lab, 50.0, ("a",), ("x",), "u", "r", gaps=((3, 2), (5, 1)))
    assert r.select_channels(["a"]).gaps == ((3, 2), (5, 1))
