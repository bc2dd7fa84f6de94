"""Incremental stream readers, the streamable .npz writer, streaming resampling, and streamed replay
with bad input (NaN, gaps, missing channels, a stream that stops mid-window) in bounded memory."""
from __future__ import annotations

import tracemalloc
import zipfile

import numpy as np
import pytest
from imutune.data.recordings import (
    Recording,
    load_csv,
    load_npz,
    load_shl2018,
    save_npz,
)
from imutune.data.streams import (
    CsvStream,
    NpzStream,
    NpzStreamWriter,
    RecordingStream,
    Shl2018Stream,
    Stream,
    StreamBlock,
    StreamResampler,
    open_stream,
    open_streams,
)
from imutune.deploy.manifest import Manifest
from imutune.runtime.replay import ReplayConfig, replay, replay_many, replay_stream
from imutune.signal.windows import resample

CLASSES = ("still", "walk", "run")
CHANNELS = ("acc_x", "acc_y", "gyr_z")


def make_recording(S=500, *, fs=50.0, seed=0, channels=CHANNELS, name="rec") -> Recording:
    rng = np.random.default_rng(seed)
    labels = np.repeat(rng.integers(0, len(CLASSES), -(-S // 40)), 40)[:S]
    labels[:7] = -1
    values = rng.standard_normal((S, len(channels))).astype(np.float32)
    values[:, 0] += 3 * labels
    return Recording(values, labels, fs, channels, CLASSES, user="u1", name=name)


def make_manifest(*, fs=50.0, window_s=0.4, hop_s=0.2) -> Manifest:
    return Manifest(model_name="fake", model_config={}, class_names=CLASSES, channels=CHANNELS, sample_rate_hz=fs,
                    window_s=window_s, hop_s=hop_s, norm_mean=(0.0, 0.0, 0.0), norm_std=(1.0, 1.0, 1.0))


class ThresholdBackend:
    """Predicts the class from the mean of normalized channel 0 (value ~ 3 * class)."""

    name, num_threads = "threshold", 1

    def run(self, x):
        m = x[:, 0, :].mean(axis=1)
        k = np.clip(np.round(m / 3), 0, 2).astype(int)
        out = np.zeros((x.shape[0], 3), np.float32)
        out[np.arange(x.shape[0]), k] = 1
        return out


def _concat(stream):
    blocks = list(stream.blocks())
    return (np.concatenate([b.values for b in blocks]), np.concatenate([b.labels for b in blocks]),
            [b.gap_before for b in blocks], [b.n for b in blocks])


# --------------------------------------------------------------------------- .npz


def test_npz_stream_reads_save_npz_files_incrementally(tmp_path):
    rec = make_recording(1003)
    path = save_npz(rec, tmp_path / "r.npz")
    s = NpzStream(path, block_samples=100)
    assert (s.channels, s.class_names, s.sample_rate_hz, s.user, s.n_samples) == (CHANNELS, CLASSES, 50.0, "u1", 1003)
    v, lab, gaps, sizes = _concat(s)
    np.testing.assert_array_equal(v, rec.values)
    np.testing.assert_array_equal(lab, rec.labels)
    assert max(sizes) == 100 and sum(sizes) == 1003 and not any(gaps)
    # savez_compressed members are deflated: still read incrementally
    comp = tmp_path / "c.npz"
    np.savez_compressed(comp, values=rec.values, labels=rec.labels, sample_rate_hz=np.float64(50.0),
                        channels=np.array(CHANNELS), class_names=np.array(CLASSES), user=np.array("u1"))
    np.testing.assert_array_equal(_concat(NpzStream(comp, block_samples=64))[0], rec.values)


def test_npz_stream_writer_roundtrip_and_errors(tmp_path):
    rec = make_recording(700)
    path = tmp_path / "w.npz"
    with NpzStreamWriter(path, n_samples=700, channels=CHANNELS, class_names=CLASSES, sample_rate_hz=50.0,
                         user="u1") as w:
        for s in range(0, 700, 123):
            w.write(rec.values[s:s + 123], rec.labels[s:s + 123])
    back = load_npz(path)                                     # a normal generic recording file
    np.testing.assert_array_equal(back.values, rec.values)
    np.testing.assert_array_equal(back.labels, rec.labels)
    bad = tmp_path / "short.npz"
    with pytest.raises(ValueError, match="5 samples were written but n_samples=10"):
        with NpzStreamWriter(bad, n_samples=10, channels=CHANNELS, class_names=CLASSES, sample_rate_hz=50.0,
                             user="u") as w:
            w.write(rec.values[:5], rec.labels[:5])
    assert not bad.exists() and not list(tmp_path.glob(".*.tmp"))
    with pytest.raises(ValueError, match="shape"):
        NpzStreamWriter(tmp_path / "x.npz", n_samples=3, channels=CHANNELS, class_names=CLASSES,
                        sample_rate_hz=50.0, user="u").write(np.zeros((3, 2)), np.zeros(3, int))


def test_npz_stream_rejects_bad_files(tmp_path):
    rec = make_recording(300)
    path = save_npz(rec, tmp_path / "r.npz")
    cut = tmp_path / "cut.npz"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ValueError, match="not a complete .npz.*truncated"):
        NpzStream(cut)
    fortran = tmp_path / "f.npz"
    np.savez(fortran, values=np.asfortranarray(rec.values), labels=rec.labels, sample_rate_hz=np.float64(50.0),
             channels=np.array(CHANNELS), class_names=np.array(CLASSES), user=np.array("u1"))
    with pytest.raises(ValueError, match="Fortran"):
        NpzStream(fortran)
    nolab = tmp_path / "n.npz"
    np.savez(nolab, values=rec.values, sample_rate_hz=np.float64(50.0), channels=np.array(CHANNELS),
             class_names=np.array(CLASSES), user=np.array("u1"))
    with pytest.raises(ValueError, match="lacks keys.*labels"):
        NpzStream(nolab)
    # a values member shorter than its header states (a hand-truncated member inside a valid zip)
    short = tmp_path / "s.npz"
    with zipfile.ZipFile(path) as zin, zipfile.ZipFile(short, "w") as zout:
        for item in zin.namelist():
            data = zin.read(item)
            zout.writestr(item, data[:-120] if item == "values.npy" else data)
    # caught when the stream opens: the header's shape is checked against the member's size
    with pytest.raises(ValueError, match=r"s\.npz' member 'values': its header states shape \(300, 3\) of float32 "
                                         r"\(3600 bytes\) but the member holds 3480 bytes; the file is truncated"):
        NpzStream(short)


def test_replay_stream_from_npz_equals_in_memory_replay(tmp_path):
    rec = make_recording(900)
    path = save_npz(rec, tmp_path / "r.npz")
    m = make_manifest()
    for chunk in (1, 7, None):
        cfg = ReplayConfig(chunk_samples=chunk, smoothing_k=3)
        ref = replay(rec, ThresholdBackend(), m, config=cfg)
        got = replay_stream(NpzStream(path, block_samples=64), ThresholdBackend(), m, config=cfg)
        np.testing.assert_array_equal(got.predictions, ref.predictions)
        np.testing.assert_array_equal(got.true_labels, ref.true_labels)
        np.testing.assert_array_equal(got.window_ends, ref.window_ends)
        np.testing.assert_array_equal(got.smoothed_predictions, ref.smoothed_predictions)
    s = replay_stream(path, ThresholdBackend(), m).summary()   # a path is opened with open_stream
    assert s["accuracy"] > 0.9 and s["input"]["samples_in"] == 900
    many = replay_many([NpzStream(path), rec], ThresholdBackend(), m)
    assert many["n_windows"] == 2 * ref.n_windows


# --------------------------------------------------------------------------- CSV


def _write_csv(path, t, values, labels, *, header=("timestamp_s", "acc_x", "acc_y", "gyr_z", "label"), tail=""):
    lines = [",".join(header)]
    for ti, v, lab in zip(t, values, labels):
        vals = ["" if np.isnan(x) else f"{x:.6f}" for x in v]
        lines.append(",".join([f"{ti:.4f}", *vals, "" if lab < 0 else CLASSES[lab]]))
    path.write_text("\n".join(lines) + "\n" + tail)
    return path


def test_csv_stream_matches_load_csv_and_reports_gaps(tmp_path):
    rec = make_recording(300)
    t = np.arange(300) / 50.0
    path = _write_csv(tmp_path / "a.csv", t, rec.values, rec.labels)
    ref = load_csv(path, class_names=CLASSES)
    v, lab, gaps, sizes = _concat(CsvStream(path, class_names=CLASSES, block_samples=64))
    np.testing.assert_allclose(v, ref.values, atol=1e-6)
    np.testing.assert_array_equal(lab, ref.labels)
    assert max(sizes) == 64 and not any(gaps)
    s = CsvStream(path)                                          # class names and rate from a first pass
    assert s.sample_rate_hz == pytest.approx(50.0) and set(s.class_names) <= set(CLASSES)
    # a 10-sample gap (0.2 s) after sample 100, a NaN, and a final row cut off while being written
    tg = np.concatenate([t[:100], t[100:] + 0.2])
    vals = rec.values.copy()
    vals[150, 1] = np.nan
    gp = _write_csv(tmp_path / "g.csv", tg, vals, rec.labels, tail="9.99,1.0,2")
    g = CsvStream(gp, class_names=CLASSES, block_samples=64)
    v, lab, gaps, sizes = _concat(g)
    assert g.dropped_rows == 1 and v.shape[0] == 300 and np.isnan(v[150, 1])
    assert sum(gaps) == 10 and max(gaps) == 10
    bad = _write_csv(tmp_path / "b.csv", np.r_[t[:5], t[3:6]], rec.values[:8], rec.labels[:8])
    with pytest.raises(ValueError, match="timestamps must increase"):
        list(CsvStream(bad, class_names=CLASSES, sample_rate_hz=50.0).blocks())


# --------------------------------------------------------------------------- SHL-2018


def test_shl_stream_matches_loader_in_time_order(shl_folder):
    info = shl_folder(order=[3, 1, 2, 7, 8], frame_len=50)     # a gap between order 3 and 7
    recs = load_shl2018(info["folder"])
    s = Shl2018Stream(info["folder"])
    assert s.n_samples == 250 and s.block_samples == 50 and s.channels == recs[0].channels
    v, lab, gaps, sizes = _concat(s)
    np.testing.assert_array_equal(v, np.concatenate([r.values for r in recs]))
    np.testing.assert_array_equal(lab, np.concatenate([r.labels for r in recs]))
    assert gaps == [0, 0, 0, 3 * 50, 0]                          # frames 4, 5, 6 missing
    assert isinstance(open_stream(info["folder"]), Shl2018Stream)
    with pytest.raises(FileNotFoundError, match="Mag_x"):
        Shl2018Stream(info["folder"], channels=("Mag_x",))


def test_open_streams_dispatch(tmp_path):
    save_npz(make_recording(100), tmp_path / "a.npz")
    _write_csv(tmp_path / "b.csv", np.arange(50) / 50.0, make_recording(50).values, make_recording(50).labels)
    kinds = [type(s).__name__ for s in open_streams(tmp_path)]
    assert kinds == ["NpzStream", "CsvStream"]
    assert isinstance(open_stream(make_recording(60)), RecordingStream)
    (tmp_path / "x.txt").write_text("1")
    with pytest.raises(ValueError, match="suffix"):
        open_stream(tmp_path / "x.txt")


# --------------------------------------------------------------------------- resampling


@pytest.mark.parametrize("src, dst", [(100.0, 50.0), (50.0, 100.0), (100.0, 30.0)])
def test_stream_resampler_equals_offline_resampling(src, dst):
    x = np.random.default_rng(1).standard_normal((777, 3)).astype(np.float32)
    r = StreamResampler(src, dst, 3)
    outs = [r.push(x[s:s + 50], np.zeros(len(x[s:s + 50]), np.int64))[0] for s in range(0, 777, 50)]
    outs.append(r.flush()[0])
    np.testing.assert_allclose(np.concatenate(outs), resample(x, src, dst), atol=1e-5)


def test_replay_stream_resamples_on_the_fly(tmp_path):
    rec = make_recording(1200, fs=100.0)
    path = save_npz(rec, tmp_path / "r100.npz")
    m = make_manifest(fs=50.0)
    ref = replay(rec, ThresholdBackend(), m)                       # offline resampling
    got = replay_stream(path, ThresholdBackend(), m)
    assert got.resampled and got.n_windows == ref.n_windows
    np.testing.assert_array_equal(got.predictions, ref.predictions)


# --------------------------------------------------------------------------- bad input


class ArrayStream(Stream):
    """In-memory stream that may hold NaN/Inf values and gaps (``gaps``: block index -> missing samples)."""

    def __init__(self, values, labels, gaps=None, fs=50.0, block=50):
        self.values, self.labels, self.gaps, self.block = values, labels, gaps or {}, block
        self.name, self.user, self.channels, self.class_names = "bad", "u", CHANNELS, CLASSES
        self.sample_rate_hz, self.n_samples = fs, len(values)

    def blocks(self):
        for k, s in enumerate(range(0, len(self.values), self.block)):
            yield StreamBlock(self.values[s:s + self.block], self.labels[s:s + self.block], self.gaps.get(k, 0))


def _stream_with(values, labels, gaps=None):
    return ArrayStream(values, labels, gaps)


def test_nan_samples_are_held_and_counted_or_rejected():
    rec = make_recording(400)
    v = rec.values.copy()
    v[100:103, 0] = np.nan
    v[250, :] = np.inf
    m = make_manifest()
    res = replay_stream(_stream_with(v, rec.labels), ThresholdBackend(), m)
    inp = res.input_report
    assert inp["nan_samples_repaired"] == 4 and inp["nan_values_repaired"] == 3 + 3
    ref = replay(rec, ThresholdBackend(), m)
    assert (res.predictions == ref.predictions).mean() > 0.9
    with pytest.raises(ValueError, match=r"NaN/Inf values.*sample 100, channel 'acc_x'.*nan_policy='error'"):
        replay_stream(_stream_with(v, rec.labels), ThresholdBackend(), m, config=ReplayConfig(nan_policy="error"))


def test_gaps_are_held_reset_or_rejected():
    rec = make_recording(400)
    m = make_manifest()                                            # T = 20, hop = 10, 50 Hz
    short_gap = {3: 5}                                             # 5 samples (0.1 s) before block 3
    held = replay_stream(_stream_with(rec.values, rec.labels, short_gap), ThresholdBackend(), m)
    assert held.input_report["gap_samples_filled"] == 5 and held.input_report["gap_resets"] == 0
    assert held.n_windows == 1 + (405 - 20) // 10
    long_gap = {3: 100}                                            # 2 s: longer than max_hold_gap_s
    reset = replay_stream(_stream_with(rec.values, rec.labels, long_gap), ThresholdBackend(), m)
    r = reset.input_report
    assert r["gap_resets"] == 1 and r["gaps"] == 1
    # 150 samples before the gap -> 14 windows (up to 150), 250 after -> 24 windows; nothing dropped
    assert reset.n_windows == 14 + 24 and r["samples_dropped"] == 0
    assert reset.window_ends[14] == 150 + 100 + 20 and set(reset.segments.tolist()) == {0, 1}
    cfg = ReplayConfig(gap_policy="reset")
    assert replay_stream(_stream_with(rec.values, rec.labels, short_gap), ThresholdBackend(), m,
                         config=cfg).input_report["gap_resets"] == 1
    with pytest.raises(ValueError, match="gap of 5 samples.*gap_policy='error'"):
        replay_stream(_stream_with(rec.values, rec.labels, short_gap), ThresholdBackend(), m,
                      config=ReplayConfig(gap_policy="error"))


def test_stream_stopping_mid_window_and_missing_channel(tmp_path):
    m = make_manifest()                                            # T = 20, hop = 10
    res = replay_stream(make_recording(437), ThresholdBackend(), m)
    assert res.n_windows == 1 + (437 - 20) // 10
    assert res.input_report["tail_samples"] == 437 - res.window_ends[-1] == 7
    assert res.input_report["samples_dropped"] == 7
    rec = make_recording(100, channels=("acc_x", "acc_y", "mag_z"))
    path = save_npz(rec, tmp_path / "m.npz")
    with pytest.raises(ValueError, match=r"lacks channels \['gyr_z'\].*mag_z"):
        replay_stream(path, ThresholdBackend(), m)


# --------------------------------------------------------------------------- memory


def test_long_stream_replays_in_bounded_memory(tmp_path):
    S, C = 1_500_000, 9                              # 4.2 h at 100 Hz, 54 MB of values
    channels = CHANNELS + tuple(f"x{i}" for i in range(C - 3))
    path = tmp_path / "long.npz"
    rng = np.random.default_rng(0)
    with NpzStreamWriter(path, n_samples=S, channels=channels, class_names=CLASSES, sample_rate_hz=100.0,
                         user="u") as w:
        for s in range(0, S, 250_000):
            w.write(rng.standard_normal((250_000, C)).astype(np.float32), np.full(250_000, 1))
    assert path.stat().st_size > S * C * 4
    m = make_manifest(fs=100.0, window_s=2.0, hop_s=2.0)          # T = hop = 200
    tracemalloc.start()
    res = replay_stream(NpzStream(path, block_samples=4096), ThresholdBackend(), m,
                        config=ReplayConfig(chunk_samples=None))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert res.n_windows == S // 200 and res.input_report["samples_in"] == S
    assert peak < 6 * 2**20, f"traced peak {peak / 2**20:.1f} MB"   # vs 54 MB of values on disk
    assert res.summary()["memory"]["rss_peak_mb"] > 0
