"""Tests of the mobile-side reference runtime (streaming replay, plots)."""
from __future__ import annotations

import time

import numpy as np
import pytest
from imutune.data.recordings import Recording
from imutune.deploy.manifest import Manifest
from imutune.plots import plot_confusion_matrix
from imutune.runtime.replay import ReplayConfig, ReplayResult, replay, replay_many
from imutune.signal.windows import window_starts

CLASSES = ("still", "walk", "run")
CHANNELS = ("acc_x", "acc_y", "gyr_z")
MEAN = (10.0, 0.0, 1.0)
STD = (2.0, 1.0, 0.5)


def make_manifest(*, sample_rate_hz=50.0, window_s=0.2, hop_s=0.1, classes=CLASSES) -> Manifest:
    # 50 Hz: T = 10 samples, hop = 5 samples
    return Manifest(model_name="fake", model_config={}, class_names=tuple(classes), channels=CHANNELS,
                    sample_rate_hz=sample_rate_hz, window_s=window_s, hop_s=hop_s, norm_mean=MEAN, norm_std=STD)


def encoded_recording(labels, *, sample_rate_hz=50.0, channels=CHANNELS, classes=CLASSES, name="rec",
                      code=None) -> Recording:
    """Channel acc_x holds ``mean + std * code`` (so its normalized value is ``code``), by default
    the class index (-1 for unlabeled samples). Other channels are noise."""
    labels = np.asarray(labels, dtype=np.int64)
    code = labels if code is None else np.asarray(code)
    rng = np.random.default_rng(0)
    values = rng.normal(size=(labels.size, len(channels))).astype(np.float32)
    values[:, list(channels).index("acc_x")] = MEAN[0] + STD[0] * code
    return Recording(values, labels, sample_rate_hz, tuple(channels), tuple(classes), user="u1", name=name)


def segment_labels(spec) -> np.ndarray:
    """[(label, n), ...] -> concatenated (S,) labels."""
    return np.concatenate([np.full(n, lab, dtype=np.int64) for lab, n in spec])


class MajorityCodeBackend:
    """Fake backend: predicts the majority of round(normalized channel 0) over the window,
    ignoring codes outside [0, K) (unlabeled samples); class 0 if there are none."""

    name = "fake-majority"
    num_threads = 1

    def __init__(self, num_classes=len(CLASSES)):
        self.K = num_classes
        self.calls = 0
        self.shapes = set()

    def run(self, x: np.ndarray) -> np.ndarray:
        assert x.dtype == np.float32 and x.ndim == 3
        self.calls += 1
        self.shapes.add(x.shape)
        codes = np.round(x[:, 0, :]).astype(np.int64)   # (N, T)
        out = np.zeros((x.shape[0], self.K), dtype=np.float32)
        for i, row in enumerate(codes):
            row = row[(row >= 0) & (row < self.K)]
            out[i, np.bincount(row, minlength=self.K).argmax()] = 5.0
        return out


class ConstantBackend:
    name = "const"

    def __init__(self, k=0, K=len(CLASSES), sleep_s=0.0, shape=None):
        self.k, self.K, self.sleep_s, self.shape = k, K, sleep_s, shape

    def run(self, x):
        if self.sleep_s:
            time.sleep(self.sleep_s)
        out = np.zeros(self.shape or (x.shape[0], self.K), dtype=np.float32)
        out[..., self.k] = 1.0
        return out


# --------------------------------------------------------------------------- replay

def test_replay_predictions_windows_and_accuracy():
    m = make_manifest()
    T, H = m.window_samples, m.hop_samples
    assert (T, H) == (10, 5)
    labels = segment_labels([(0, 40), (1, 33), (-1, 25), (2, 47)])
    rec = encoded_recording(labels)
    be = MajorityCodeBackend()
    res = replay(rec, be, m)
    S = labels.size
    n = 1 + (S - T) // H
    assert isinstance(res, ReplayResult)
    assert res.n_windows == n == be.calls
    assert be.shapes == {(1, len(CHANNELS), T)}
    np.testing.assert_array_equal(res.window_ends, window_starts(S, T, H) + T)
    # streaming predictions equal the offline, batched evaluation of the same windows
    xn = (rec.values - np.asarray(MEAN, np.float32)) / np.asarray(STD, np.float32)
    batch = np.stack([xn[s:s + T].T for s in window_starts(S, T, H)]).astype(np.float32)  # (W, T, C) -> (W, C, T)
    np.testing.assert_array_equal(res.predictions, be.run(batch).argmax(axis=1))
    # windows entirely in the unlabeled stretch are counted but not scored
    scored = res.true_labels >= 0
    assert 0 < scored.sum() < n
    np.testing.assert_array_equal(res.predictions[scored], res.true_labels[scored])
    s = res.summary()
    assert s["accuracy"] == 1.0 and s["macro_f1"] == 1.0
    assert s["n_windows"] == n and s["n_scored"] == int(scored.sum())
    assert np.trace(np.array(s["confusion_matrix"])) == s["n_scored"]
    assert s["latency_ms"]["n"] == n and s["runtime_overhead_ms"]["n"] == n
    assert np.all(res.latencies_ms >= 0) and np.all(res.runtime_overhead_ms > 0)
    assert s["hop_period_ms"] == pytest.approx(100.0)
    assert s["deadline_misses"] == 0 and s["late_windows"] is None
    assert s["resampled"] is False and s["backend"] == "fake-majority" and s["num_threads"] == 1


def test_replay_constant_backend_accuracy_and_confusion():
    m = make_manifest()
    labels = segment_labels([(0, 30), (1, 30), (2, 30)])
    res = replay(encoded_recording(labels), ConstantBackend(0), m)
    s = res.summary()
    t = res.true_labels
    assert s["accuracy"] == pytest.approx(np.mean(t == 0))
    cm = np.array(s["confusion_matrix"])
    assert cm.shape == (3, 3) and cm[:, 1:].sum() == 0
    np.testing.assert_array_equal(cm[:, 0], np.bincount(t, minlength=3))
    assert s["backend"] == "const" and s["num_threads"] == 1   # no num_threads attribute: the config's


@pytest.mark.parametrize("chunk", [3, 10, 23, 1000])
def test_chunk_size_does_not_change_predictions(chunk):
    m = make_manifest()
    labels = segment_labels([(2, 21), (0, 37), (1, 29)])
    rec = encoded_recording(labels)
    ref = replay(rec, MajorityCodeBackend(), m)
    got = replay(rec, MajorityCodeBackend(), m, config=ReplayConfig(chunk_samples=chunk))
    np.testing.assert_array_equal(got.predictions, ref.predictions)
    np.testing.assert_array_equal(got.window_ends, ref.window_ends)
    np.testing.assert_array_equal(got.true_labels, ref.true_labels)
    assert got.summary()["chunk_samples"] == chunk


def test_max_windows_caps_stream():
    m = make_manifest()
    res = replay(encoded_recording(segment_labels([(1, 100)])), MajorityCodeBackend(), m,
                 config=ReplayConfig(max_windows=4, chunk_samples=7))
    assert res.n_windows == 4
    np.testing.assert_array_equal(res.window_ends, [10, 15, 20, 25])


def test_resampling_when_rates_differ():
    m = make_manifest(sample_rate_hz=50.0)
    labels = segment_labels([(0, 120), (2, 120), (1, 120)])     # 3.6 s at 100 Hz
    rec = encoded_recording(labels, sample_rate_hz=100.0)
    res = replay(rec, MajorityCodeBackend(), m)
    S_new = labels.size // 2
    T, H = m.window_samples, m.hop_samples
    assert res.resampled and res.summary()["resampled"] is True
    assert res.n_windows == 1 + (S_new - T) // H
    assert res.window_ends[-1] <= S_new
    assert res.summary()["accuracy"] >= 0.9   # filter ringing only near the label changes
    same = replay(encoded_recording(labels[::2]), MajorityCodeBackend(), m)
    assert not same.resampled


def test_channels_selected_by_name_and_missing_channel_raises():
    m = make_manifest()
    labels = segment_labels([(1, 40), (2, 40)])
    ref = replay(encoded_recording(labels), MajorityCodeBackend(), m)
    # permuted channels plus an extra one: selected by name in the manifest's order
    perm = encoded_recording(labels, channels=("gyr_z", "extra", "acc_x", "acc_y"))
    got = replay(perm, MajorityCodeBackend(), m)
    np.testing.assert_array_equal(got.predictions, ref.predictions)
    bad = encoded_recording(labels, channels=("acc_x", "acc_y", "gyr_x"), name="phone7")
    with pytest.raises(ValueError, match=r"gyr_z.*phone7|phone7.*gyr_z") as ei:
        replay(bad, MajorityCodeBackend(), m)
    assert "gyr_x" in str(ei.value)       # the channels seen are listed too


def test_class_names_mapped_by_name_and_unknown_label_raises():
    m = make_manifest()
    labels = segment_labels([(0, 40), (1, 40)])
    # recording lists classes in another order plus an unused extra class
    rec_classes = ("run", "still", "walk", "swim")
    rec_labels = np.array([rec_classes.index(CLASSES[k]) for k in labels])
    rec = encoded_recording(rec_labels, classes=rec_classes, code=labels)
    res = replay(rec, MajorityCodeBackend(), m)
    assert res.summary()["accuracy"] == 1.0
    assert set(res.true_labels.tolist()) == {0, 1}
    # a label the manifest does not know
    rec_labels[50:] = rec_classes.index("swim")
    with pytest.raises(ValueError, match="swim"):
        replay(encoded_recording(rec_labels, classes=rec_classes, code=labels), MajorityCodeBackend(), m)


def test_errors_short_recording_and_bad_logits():
    m = make_manifest()
    with pytest.raises(ValueError, match="one window needs 10"):
        replay(encoded_recording(segment_labels([(0, 9)])), MajorityCodeBackend(), m)
    rec = encoded_recording(segment_labels([(0, 30)]))
    with pytest.raises(ValueError, match=r"expected \(1, 3\)"):
        replay(rec, ConstantBackend(shape=(1, 4), K=4), m)
    with pytest.raises(ValueError, match="run"):
        replay(rec, object(), m)
    with pytest.raises(ValueError, match="chunk_samples"):
        ReplayConfig(chunk_samples=0)


def test_deadline_misses_counted_from_latency():
    m = make_manifest(sample_rate_hz=1000.0, window_s=0.01, hop_s=0.002)   # hop period 2 ms
    rec = encoded_recording(segment_labels([(0, 40)]), sample_rate_hz=1000.0)
    res = replay(rec, ConstantBackend(sleep_s=0.004), m, config=ReplayConfig(max_windows=3))
    assert res.hop_period_ms == pytest.approx(2.0)
    assert res.deadline_misses == 3 == res.summary()["deadline_misses"]


def test_realtime_pacing_takes_stream_duration():
    m = make_manifest(sample_rate_hz=100.0, window_s=0.1, hop_s=0.05)
    rec = encoded_recording(segment_labels([(1, 30)]), sample_rate_hz=100.0)   # 0.3 s
    t0 = time.perf_counter()
    res = replay(rec, MajorityCodeBackend(), m, config=ReplayConfig(realtime=True, chunk_samples=2))
    elapsed = time.perf_counter() - t0
    assert elapsed >= 0.25
    assert res.wall_time_s >= 0.25
    assert res.n_windows == 1 + (30 - 10) // 5
    assert res.summary()["realtime"] is True and res.late_windows is not None


def test_replay_many_resets_buffer_and_concatenates():
    m = make_manifest()
    T, H = m.window_samples, m.hop_samples
    a = encoded_recording(segment_labels([(0, 42)]), name="a")
    b = encoded_recording(segment_labels([(2, 31)]), name="b")
    short = encoded_recording(segment_labels([(1, 5)]), name="short")
    fast = encoded_recording(segment_labels([(1, 64)]), sample_rate_hz=100.0, name="fast")
    s = replay_many([a, short, b, fast], MajorityCodeBackend(), m)
    n = [1 + (S - T) // H for S in (42, 31, 32)]
    assert s["n_windows"] == sum(n) and s["n_recordings"] == 3
    assert s["skipped_recordings"] == ["short"]
    assert s["accuracy"] == 1.0 and s["resampled"] is True and s["n_resampled"] == 1
    assert [p["recording"] for p in s["per_recording"]] == ["a", "b", "fast"]
    assert [p["n_windows"] for p in s["per_recording"]] == n
    assert s["latency_ms"]["n"] == sum(n)
    capped = replay_many([a, b], MajorityCodeBackend(), m, config=ReplayConfig(max_windows=8))
    assert capped["n_windows"] == 8 and [p["n_windows"] for p in capped["per_recording"]] == [7, 1]
    with pytest.raises(ValueError, match="empty"):
        replay_many([], MajorityCodeBackend(), m)
    with pytest.raises(ValueError, match="at least one window"):
        replay_many([short], MajorityCodeBackend(), m)


def test_torch_model_backend():
    torch = pytest.importorskip("torch")

    class TorchWrap:
        name = "torch-wrap"
        num_threads = 1

        def __init__(self):
            torch.manual_seed(0)
            self.model = torch.nn.Sequential(torch.nn.Conv1d(3, 4, 3), torch.nn.AdaptiveAvgPool1d(1),
                                             torch.nn.Flatten(), torch.nn.Linear(4, 3)).eval()

        def run(self, x):
            with torch.inference_mode():
                return self.model(torch.from_numpy(x)).numpy()

    m = make_manifest()
    rec = encoded_recording(segment_labels([(0, 30), (1, 30)]))
    be = TorchWrap()
    res = replay(rec, be, m, config=ReplayConfig(chunk_samples=4))
    T, H = m.window_samples, m.hop_samples
    xn = m.normalize(rec.values)
    batch = np.stack([xn[s:s + T].T for s in window_starts(rec.n_samples, T, H)]).astype(np.float32)
    np.testing.assert_array_equal(res.predictions, be.run(batch).argmax(axis=1))


# --------------------------------------------------------------------------- plot

def test_confusion_png_written(tmp_path):
    cm = [[5, 1, 0], [0, 3, 2], [0, 0, 0]]
    path = plot_confusion_matrix(cm, CLASSES, tmp_path / "sub" / "cm.png", title="test")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    import matplotlib.image as mpimg

    img = mpimg.imread(path)
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100
    assert not list((tmp_path / "sub").glob(".*.tmp"))
    with pytest.raises(ValueError, match="class_names"):
        plot_confusion_matrix(cm, CLASSES[:2], tmp_path / "x.png")
    with pytest.raises(ValueError, match="square"):
        plot_confusion_matrix([[1, 2]], CLASSES[:1], tmp_path / "x.png")


# --------------------------------------------------------------------------- real backends

def _tiny_model(torch):
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv1d(3, 8, 3, padding=1), torch.nn.ReLU(),
                               torch.nn.AdaptiveAvgPool1d(1), torch.nn.Flatten(),
                               torch.nn.Linear(8, 3)).eval()


@pytest.mark.filterwarnings("ignore::FutureWarning")   # emitted inside torch.onnx's dynamo exporter
def test_replay_through_onnx_export_matches_torch(tmp_path):
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnxruntime")
    backends = pytest.importorskip("imutune.deploy.backends")
    from imutune._io import sha256_file

    m = make_manifest()
    model = _tiny_model(torch)
    path = tmp_path / "model.onnx"
    example = torch.zeros(1, len(CHANNELS), m.window_samples)
    torch.onnx.export(model, (example,), str(path), dynamo=True, input_names=["x"], output_names=["logits"])
    m = m.with_artifact(path.name, sha256=sha256_file(path), format="onnx", precision="fp32")
    rec = encoded_recording(segment_labels([(0, 35), (1, 30), (2, 40)]))
    cfg = ReplayConfig(chunk_samples=4, num_threads=1)
    onnx_res = replay(rec, path, m, config=cfg)           # a path is loaded with load_backend
    torch_res = replay(rec, backends.TorchBackend(model, num_threads=1), m, config=cfg)
    assert onnx_res.summary()["backend"] == "onnxruntime" and onnx_res.num_threads == 1
    assert torch_res.summary()["backend"] == "torch"
    np.testing.assert_array_equal(onnx_res.predictions, torch_res.predictions)
    # and both equal the offline batch through the ONNX backend
    T, H = m.window_samples, m.hop_samples
    xn = m.normalize(rec.values)
    batch = np.stack([xn[s:s + T].T for s in window_starts(rec.n_samples, T, H)]).astype(np.float32)
    ob = backends.load_backend(path, manifest=m)
    np.testing.assert_array_equal(onnx_res.predictions, ob.run(batch).argmax(axis=1))
    s = replay_many([rec, rec], ob, m)
    assert s["n_windows"] == 2 * onnx_res.n_windows and s["backend"] == "onnxruntime"


# --------------------------------------------------------------------------- delivery, smoothing, accounting


def test_per_hop_delivery_matches_sample_by_sample():
    m = make_manifest()
    rec = encoded_recording(segment_labels([(0, 33), (1, 41), (2, 29)]))
    ref = replay(rec, MajorityCodeBackend(), m, config=ReplayConfig(chunk_samples=1))
    got = replay(rec, MajorityCodeBackend(), m, config=ReplayConfig(chunk_samples=None))
    np.testing.assert_array_equal(got.predictions, ref.predictions)
    np.testing.assert_array_equal(got.window_ends, ref.window_ends)
    s = got.summary()
    assert s["chunk_samples"] is None and s["runtime_overhead_ratio"] > 0
    assert s["realtime_factor"] == pytest.approx((got.latencies_ms.sum() + got.runtime_overhead_ms.sum()) / 1e3
                                                 / (rec.n_samples / m.sample_rate_hz))
    assert s["stream_duration_s"] == pytest.approx(rec.n_samples / m.sample_rate_hz)
    assert s["memory"]["rss_peak_mb"] >= s["memory"]["rss_start_mb"] > 0
    assert s["input"]["samples_in"] == rec.n_samples and s["input"]["tail_samples"] == (103 - 10) % 5


def test_smoothing_majority_vote_is_causal_and_per_segment():
    from imutune.runtime.engine import _smooth

    pred = np.array([0, 1, 1, 0, 2, 2, 0, 0])
    segs = np.array([0, 0, 0, 0, 0, 1, 1, 1])
    out = _smooth(pred, segs, 3, 3)
    # w0: [0] -> 0; w1: [0,1] tie -> current 1; w2: [0,1,1] -> 1; w3: [1,1,0] -> 1; w4: [1,0,2] tie -> current 2;
    # w5 starts segment 1: [2] -> 2; w6: [2,0] tie -> current 0; w7: [2,0,0] -> 0
    np.testing.assert_array_equal(out, [0, 1, 1, 1, 2, 2, 0, 0])
    np.testing.assert_array_equal(_smooth(pred, segs, 1, 3), pred)
    m = make_manifest()
    labels = segment_labels([(0, 300)])
    code = labels.copy()
    for a in (40, 120, 200):
        code[a:a + 8] = 2                                     # short glitches: one wrong window each
    rec = encoded_recording(labels, code=code)
    res = replay(rec, MajorityCodeBackend(), m, config=ReplayConfig(smoothing_k=3))
    s = res.summary()
    assert s["smoothing_k"] == 3 and s["accuracy"] < 1.0 and s["smoothed_accuracy"] == 1.0
    np.testing.assert_array_equal(res.smoothed_predictions, _smooth(res.predictions, res.segments, 3, 3))


def test_runtime_overhead_excludes_the_model_call():
    m = make_manifest()
    rec = encoded_recording(segment_labels([(1, 200)]))
    res = replay(rec, ConstantBackend(sleep_s=0.002), m, config=ReplayConfig(chunk_samples=None))
    assert res.latencies_ms.min() >= 2.0
    assert np.median(res.runtime_overhead_ms) < 0.5          # buffering + layout + argmax, not the sleep


def test_config_validation_new_fields():
    for kw, pat in ((dict(smoothing_k=0), "smoothing_k"), (dict(nan_policy="zero"), "nan_policy"),
                    (dict(gap_policy="skip"), "gap_policy"), (dict(max_hold_gap_s=-1.0), "max_hold_gap_s"),
                    (dict(cpu_affinity=()), "cpu_affinity")):
        with pytest.raises(ValueError, match=pat):
            ReplayConfig(**kw)
