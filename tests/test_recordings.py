"""Tests for imutune.recordings: the embedded watch data, .npz, CSV and SHL-2018 loaders."""
from __future__ import annotations

import numpy as np
import pytest
from conftest import write_shl_folder
from imutune.data.recordings import (
    SHL_CLASS_NAMES,
    WATCH_CHANNELS,
    WATCH_CLASS_NAMES,
    Recording,
    load_csv,
    load_npz,
    load_recordings,
    load_shl2018,
    load_watch,
    save_npz,
)


def _rec(n=20, *, name="r1", labels=None, values=None, sample_rate_hz=50.0, class_names=("a", "b", "c")):
    rng = np.random.default_rng(1)
    values = rng.normal(size=(n, 2)).astype(np.float32) if values is None else values
    labels = np.arange(n) % 3 if labels is None else labels
    return Recording(values, labels, sample_rate_hz, ("x", "y"), class_names, user="u1", name=name)


# --------------------------------------------------------------------------- watch

def test_load_watch_shape_users_classes(watch_recordings):
    recs = watch_recordings
    assert len(recs) == 140
    assert len({r.user for r in recs}) == 10
    assert {r.user for r in recs} == {f"subject{i:02d}" for i in range(1, 11)}
    assert {int(r.labels[0]) for r in recs} == set(range(7))
    for r in recs:
        assert r.class_names == WATCH_CLASS_NAMES and r.channels == WATCH_CHANNELS
        assert r.values.dtype == np.float32 and r.values.shape[1] == 6
        assert r.labels.dtype == np.int64 and r.labels.shape == (r.n_samples,)
        assert r.sample_rate_hz == 50.0
        assert np.isfinite(r.values).all()
        assert r.meta["side"] in (0, 1)


def test_load_watch_subjects_filter_and_error():
    recs = load_watch(subjects=[3])
    assert recs and {r.user for r in recs} == {"subject03"}
    with pytest.raises(ValueError, match=r"subjects \[99\] not found"):
        load_watch(subjects=[99])


# --------------------------------------------------------------------------- Recording checks

def test_recording_rejects_nan():
    v = np.zeros((5, 2), np.float32)
    v[2, 1] = np.nan
    with pytest.raises(ValueError, match=r"values in recording 'r1' contains 1 NaN/Inf.*\(2, 1\)"):
        _rec(5, values=v)


@pytest.mark.parametrize("sr", [0.0, -50.0, float("nan"), None, "fast"])
def test_recording_rejects_bad_sample_rate(sr):
    with pytest.raises(ValueError, match=r"sample_rate_hz in recording 'r1' must be a positive number"):
        _rec(sample_rate_hz=sr)


def test_recording_rejects_labels_outside_class_list():
    with pytest.raises(ValueError, match=r"labels in recording 'r1' has values \[3\] outside the class list"):
        _rec(4, labels=np.array([0, 1, 2, 3]))
    with pytest.raises(ValueError, match=r"values \[-2\]"):
        _rec(4, labels=np.array([0, -2, 2, -1]))


def test_recording_rejects_shape_mismatch():
    with pytest.raises(ValueError, match=r"labels in recording 'r1' has 3 samples, values has 4"):
        _rec(4, labels=np.array([0, 1, 2]))


# --------------------------------------------------------------------------- .npz

def test_npz_round_trip(tmp_path):
    r = _rec(30, labels=np.r_[np.full(10, -1), np.arange(20) % 3])
    p = save_npz(r, tmp_path / "sub" / "rec.npz")
    back = load_npz(p)
    np.testing.assert_array_equal(back.values, r.values)
    np.testing.assert_array_equal(back.labels, r.labels)
    assert back.values.dtype == np.float32 and back.labels.dtype == np.int64
    assert (back.sample_rate_hz, back.channels, back.class_names, back.user, back.name) == \
        (50.0, ("x", "y"), ("a", "b", "c"), "u1", "rec")
    assert [q.name for q in (tmp_path / "sub").iterdir()] == ["rec.npz"]  # no temp file left behind


def test_npz_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"recording file .*nope\.npz' does not exist"):
        load_npz(tmp_path / "nope.npz")


def test_npz_truncated(tmp_path):
    p = save_npz(_rec(200), tmp_path / "rec.npz")
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"rec\.npz' could not be read as \.npz .*truncated"):
        load_npz(p)


def test_npz_wrong_suffix_and_empty(tmp_path):
    (tmp_path / "rec.txt").write_text("x")
    with pytest.raises(ValueError, match=r"rec\.txt' has suffix '\.txt'; expected one of \['\.npz'\]"):
        load_npz(tmp_path / "rec.txt")
    (tmp_path / "empty.npz").write_bytes(b"")
    with pytest.raises(ValueError, match=r"empty\.npz' is empty \(0 bytes\)"):
        load_npz(tmp_path / "empty.npz")


def _write_npz(path, **over):
    r = _rec(10)
    d = dict(values=r.values, labels=r.labels, sample_rate_hz=np.float64(50.0), channels=np.array(r.channels),
             class_names=np.array(r.class_names), user=np.array("u1"))
    d.update(over)
    np.savez(path, **{k: v for k, v in d.items() if v is not None})
    return path


def test_npz_missing_key(tmp_path):
    p = _write_npz(tmp_path / "rec.npz", labels=None)
    with pytest.raises(ValueError, match=r"rec\.npz' lacks keys \['labels'\]; expected keys"):
        load_npz(p)


def test_npz_missing_sample_rate(tmp_path):
    p = _write_npz(tmp_path / "rec.npz", sample_rate_hz=None)
    with pytest.raises(ValueError, match=r"lacks keys \['sample_rate_hz'\]"):
        load_npz(p)


@pytest.mark.parametrize("sr", [0.0, -100.0])
def test_npz_non_positive_sample_rate(tmp_path, sr):
    p = _write_npz(tmp_path / "rec.npz", sample_rate_hz=np.float64(sr))
    with pytest.raises(ValueError, match=r"sample_rate_hz in recording file .*rec\.npz' must be a positive number of Hz in \[0\.001, 100000\]"):
        load_npz(p)


def test_npz_nan_values_and_bad_labels(tmp_path):
    v = np.zeros((10, 2), np.float32)
    v[4, 0] = np.nan
    with pytest.raises(ValueError, match=r"nan\.npz'.*contains 1 NaN/Inf"):
        load_npz(_write_npz(tmp_path / "nan.npz", values=v))
    with pytest.raises(ValueError, match=r"lab\.npz': label 5 at sample 0 is outside the class list \(-1 or 0\.\.2\)"):
        load_npz(_write_npz(tmp_path / "lab.npz", labels=np.full(10, 5)))


# --------------------------------------------------------------------------- CSV

def _write_csv(path, rows, header="timestamp_s,ax,ay,label"):
    path.write_text(header + "\n" + "\n".join(rows) + "\n")
    return path


def test_csv_string_labels_and_inferred_rate(tmp_path):
    rows = [f"{i * 0.02:.2f},{i},{-i},{lab}" for i, lab in enumerate(["walk", "walk", "run", "", "sit", "run"])]
    r = load_csv(_write_csv(tmp_path / "a.csv", rows))
    assert r.class_names == ("run", "sit", "walk")  # sorted distinct labels
    np.testing.assert_array_equal(r.labels, [2, 2, 0, -1, 1, 0])
    assert r.channels == ("ax", "ay") and r.values.dtype == np.float32
    np.testing.assert_array_equal(r.values[:, 0], np.arange(6))
    assert r.sample_rate_hz == pytest.approx(50.0)
    assert r.user == "a" and r.name == "a"


def test_csv_integer_labels_and_class_names(tmp_path):
    rows = [f"{i * 0.01},{i},{i},{lab}" for i, lab in enumerate([0, 2, 2, -1, 1])]
    p = _write_csv(tmp_path / "b.csv", rows)
    r = load_csv(p, user="alice")
    assert r.class_names == ("0", "1", "2") and r.user == "alice"   # integer labels are names
    np.testing.assert_array_equal(r.labels, [0, 2, 2, -1, 1])
    assert r.sample_rate_hz == pytest.approx(100.0)
    r2 = load_csv(p, class_names=["A", "B", "C", "D"], sample_rate_hz=64.0)
    assert r2.class_names == ("A", "B", "C", "D") and r2.sample_rate_hz == 64.0


def test_csv_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"none\.csv' does not exist"):
        load_csv(tmp_path / "none.csv")


def test_csv_missing_column(tmp_path):
    p = _write_csv(tmp_path / "c.csv", ["0,1,2", "1,1,2"], header="time,ax,label")
    with pytest.raises(ValueError, match=r"c\.csv' lacks column 'timestamp_s'; header is \['time', 'ax', 'label'\]"):
        load_csv(p)


def test_csv_non_increasing_timestamps(tmp_path):
    p = _write_csv(tmp_path / "d.csv", ["0.0,1,1,a", "0.1,1,1,a", "0.1,1,1,a"])
    with pytest.raises(ValueError, match=r"d\.csv': timestamps must increase; row 4 has 0\.1 after 0\.1"):
        load_csv(p)


def test_csv_unknown_label(tmp_path):
    p = _write_csv(tmp_path / "e.csv", ["0.0,1,1,a", "0.1,1,1,zzz"])
    with pytest.raises(ValueError, match=r"e\.csv' row 3: label 'zzz' is not in the class list \['a', 'b'\]"):
        load_csv(p, class_names=["a", "b"])


def test_csv_nan_value_and_non_numeric(tmp_path):
    with pytest.raises(ValueError, match=r"f\.csv' row 2 column 'ax' is 'nan', which is NaN/Inf in float32; expected a finite number"):
        load_csv(_write_csv(tmp_path / "f.csv", ["0.0,nan,1,a", "0.1,1,1,a"]))
    with pytest.raises(ValueError, match=r"g\.csv' row 3 has a non-numeric value"):
        load_csv(_write_csv(tmp_path / "g.csv", ["0.0,1,1,a", "0.1,oops,1,a"]))


# --------------------------------------------------------------------------- SHL-2018

ALL_SHL = ("Acc_x", "Acc_y", "Acc_z", "Gyr_x", "Gyr_y", "Gyr_z", "Mag_x")


def test_shl_time_order_channels_null_and_gap(shl_folder):
    labels = np.random.default_rng(3).integers(0, 9, size=(4, 6000))
    labels[0, :10] = 0
    w = shl_folder(order=[12, 10, 20, 11], channels=ALL_SHL, labels=labels)   # shuffled, gap 12 -> 20
    recs = load_shl2018(w["folder"], channels=("Mag_x", "Acc_y"))
    assert [r.name for r in recs] == ["shl_train_000", "shl_train_001"]
    assert [r.n_samples for r in recs] == [3 * 6000, 6000]
    assert [(r.meta["order_first"], r.meta["order_last"], r.meta["n_frames"]) for r in recs] == \
        [(10, 12, 3), (20, 20, 1)]
    time_lines = [[1, 3, 0], [2]]   # file lines of each recording, in time order
    for r, lines in zip(recs, time_lines):
        assert r.channels == ("Mag_x", "Acc_y") and r.class_names == SHL_CLASS_NAMES
        assert r.sample_rate_hz == 100.0 and r.user == "shl-user1" and r.duration_s == 60.0 * len(lines)
        assert r.values.dtype == np.float32 and r.labels.dtype == np.int64
        np.testing.assert_array_equal(r.values[:, 0], np.concatenate([w["data"]["Mag_x"][i] for i in lines]))
        np.testing.assert_array_equal(r.values[:, 1], np.concatenate([w["data"]["Acc_y"][i] for i in lines]))
        np.testing.assert_array_equal(r.labels, np.concatenate([labels[i] for i in lines]) - 1)
    # each frame's first value encodes its order value (order * 1000 + channel index * 100)
    np.testing.assert_array_equal(recs[0].values[::6000, 1], [10100, 11100, 12100])
    np.testing.assert_array_equal(recs[1].values[::6000, 0], [20600])
    assert (recs[0].labels[12000:12010] == -1).all()   # Null (code 0, line 0 = order 12 = 3rd frame) -> -1
    assert recs[0].labels.min() >= -1 and recs[0].labels.max() <= 7


def test_shl_order_file_options(tmp_path):
    w = write_shl_folder(tmp_path / "test", order=[2, 1], frame_len=20, channels=("Acc_x",),
                         order_name="test_order.txt")
    (r,) = load_shl2018(w["folder"], channels=["Acc_x"], user="u9", sample_rate_hz=50)
    assert r.user == "u9" and r.sample_rate_hz == 50.0 and r.n_samples == 40
    # order file next to the split folder, as in the official archive
    (tmp_path / "test" / "test_order.txt").rename(tmp_path / "test_order.txt")
    assert load_shl2018(w["folder"], channels=["Acc_x"])[0].meta["n_frames"] == 2
    (tmp_path / "test_order.txt").rename(tmp_path / "my_order.txt")
    with pytest.raises(FileNotFoundError, match=r"SHL folder .*test' has no order file; looked for"):
        load_shl2018(w["folder"], channels=["Acc_x"])
    assert len(load_shl2018(w["folder"], channels=["Acc_x"], order_file=tmp_path / "my_order.txt")) == 1


def test_shl_truncated_line(shl_folder):
    w = shl_folder(order=[1, 2, 3], frame_len=20)
    p = w["folder"] / "Gyr_y.txt"
    lines = p.read_text().splitlines()
    lines[1] = " ".join(lines[1].split()[:13])
    p.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"Gyr_y\.txt' line 2 has 13 values; expected 20 \(as in line 1 of Label\.txt\)"):
        load_shl2018(w["folder"])


def test_shl_truncated_file_fewer_lines(shl_folder):
    w = shl_folder(order=[1, 2, 3], frame_len=20)
    p = w["folder"] / "Acc_z.txt"
    p.write_text("\n".join(p.read_text().splitlines()[:2]) + "\n")
    with pytest.raises(ValueError, match=r"Acc_z\.txt' has 2 lines; expected 3 \(the number of lines of .*train_order\.txt'\)"):
        load_shl2018(w["folder"])


def test_shl_extra_lines_and_order_mismatch(shl_folder):
    w = shl_folder(order=[1, 2, 3], frame_len=20)
    (w["folder"] / "train_order.txt").write_text("1\n2\n")
    with pytest.raises(ValueError, match=r"Label\.txt' has 3 lines; expected 2 \(the number of lines of"):
        load_shl2018(w["folder"])


def test_shl_missing_channel_file(shl_folder):
    w = shl_folder(order=[1, 2], frame_len=20)
    with pytest.raises(FileNotFoundError,
                       match=r"Mag_z\.txt' \(channel 'Mag_z'\) does not exist; channel files present .*'Acc_x\.txt'"):
        load_shl2018(w["folder"], channels=("Acc_x", "Mag_z"))


def test_shl_missing_label_file(shl_folder):
    w = shl_folder(order=[1, 2], frame_len=20)
    (w["folder"] / "Label.txt").unlink()
    with pytest.raises(FileNotFoundError, match=r"lacks 'Label\.txt'"):
        load_shl2018(w["folder"])


def test_shl_label_out_of_range(shl_folder):
    labels = np.ones((2, 20), dtype=int)
    labels[1, 4] = 9
    w = shl_folder(order=[1, 2], frame_len=20, labels=labels)
    with pytest.raises(ValueError, match=r"SHL label file .*Label\.txt' line 2 value 5 is 9; expected an integer code in 0\.\.8"):
        load_shl2018(w["folder"])


def test_shl_nan_and_non_numeric(shl_folder):
    w = shl_folder(order=[1, 2], frame_len=20)
    p = w["folder"] / "Acc_x.txt"
    lines = p.read_text().splitlines()
    p.write_text(lines[0] + "\n" + lines[1].replace(lines[1].split()[3], "nan", 1) + "\n")
    with pytest.raises(ValueError, match=r"Acc_x\.txt' line 2 has 1 NaN/Inf values \(first at value 4\)"):
        load_shl2018(w["folder"])
    p.write_text(lines[0] + "\n" + lines[1].replace(lines[1].split()[3], "x1", 1) + "\n")
    with pytest.raises(ValueError, match=r"Acc_x\.txt' line 2 has a non-numeric value 'x1'"):
        load_shl2018(w["folder"])


def test_shl_bad_arguments_and_order_values(shl_folder, tmp_path):
    w = shl_folder(order=[1, 2], frame_len=20)
    with pytest.raises(ValueError, match=r"sample_rate_hz in SHL folder .* must be a positive number of Hz in \[0\.001, 100000\].*got 0"):
        load_shl2018(w["folder"], sample_rate_hz=0)
    with pytest.raises(ValueError, match=r"channels for SHL folder .* repeats \['Acc_x'\]"):
        load_shl2018(w["folder"], channels=("Acc_x", "Acc_x"))
    with pytest.raises(ValueError, match=r"channels for SHL folder .* is empty"):
        load_shl2018(w["folder"], channels=())
    with pytest.raises(FileNotFoundError, match=r"SHL folder .*nowhere' does not exist"):
        load_shl2018(tmp_path / "nowhere")
    (w["folder"] / "train_order.txt").write_text("5\n5\n")
    with pytest.raises(ValueError, match=r"train_order\.txt' repeats order values \[5\]"):
        load_shl2018(w["folder"])
    (w["folder"] / "train_order.txt").write_text("5\nfive\n")
    with pytest.raises(ValueError, match=r"train_order\.txt' line 2 is 'five'; expected one integer per line"):
        load_shl2018(w["folder"])


# --------------------------------------------------------------------------- load_recordings

def test_load_recordings_dispatch(tmp_path, shl_folder):
    save_npz(_rec(10, name="n"), tmp_path / "b.npz")
    _write_csv(tmp_path / "a.csv", ["0,1,2,x", "0.5,1,2,y"])
    (tmp_path / "notes.txt").write_text("ignored")
    recs = load_recordings(tmp_path)
    assert [r.name for r in recs] == ["a", "b"]
    assert recs[0].sample_rate_hz == pytest.approx(2.0)
    assert [r.name for r in load_recordings(tmp_path / "b.npz")] == ["b"]
    assert load_recordings(str(tmp_path / "a.csv"), user="z")[0].user == "z"
    w = shl_folder(name="shl/train", order=[1, 2, 5], frame_len=20)
    assert [r.n_samples for r in load_recordings(w["folder"], channels=["Gyr_z"])] == [40, 20]
    watch = load_recordings("watch", subjects=[2])
    assert watch and {r.user for r in watch} == {"subject02"}


def test_load_recordings_errors(tmp_path):
    (tmp_path / "x.parquet").write_text("x")
    with pytest.raises(ValueError, match=r"x\.parquet' has suffix '\.parquet'; expected '\.npz' or '\.csv'"):
        load_recordings(tmp_path / "x.parquet")
    with pytest.raises(FileNotFoundError, match=r"recording path .*missing\.npz' does not exist"):
        load_recordings(tmp_path / "missing.npz")
    with pytest.raises(FileNotFoundError, match=r"recording folder .* contains no \.npz or \.csv files"):
        load_recordings(tmp_path)
    save_npz(_rec(10), tmp_path / "r.npz")
    with pytest.raises(ValueError, match=r"r\.npz' is a \.npz, which takes no options; got \['user'\]"):
        load_recordings(tmp_path / "r.npz", user="u")
    with pytest.raises(ValueError, match=r"options \['user'\] apply to \.csv files"):
        load_recordings(tmp_path, user="u")


def test_pretrain_command_on_a_folder_of_one_activity_csv_files(tmp_path):
    """Each CSV infers its own class list (one activity); the windows match classes by name."""
    from imutune.cli import main

    rng = np.random.default_rng(0)
    folder = tmp_path / "user"
    folder.mkdir()
    for k, act in enumerate(("walk", "run", "sit")):
        rows = [f"{i * 0.02:.2f},{rng.normal() + k:.4f},{rng.normal() - k:.4f},{act}" for i in range(400)]
        _write_csv(folder / f"{act}.csv", rows)
    rc = main(["pretrain", "--data", str(folder), "--out", str(tmp_path / "base"), "--model", "tinycnn1d",
               "--epochs", "1", "--window-s", "1.0", "--hop-s", "0.5", "--no-progress"])
    assert rc == 0
    from imutune.train.bundle import load_bundle

    assert sorted(load_bundle(tmp_path / "base").class_names) == ["run", "sit", "walk"]
