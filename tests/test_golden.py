"""Golden capture of the reference runtime (imutune.runtime.golden) and the replay capture hook."""
from __future__ import annotations

import json

import numpy as np
import pytest
from imutune.data.recordings import Recording
from imutune.deploy.manifest import Manifest
from imutune.runtime.golden import GOLDEN_VERSION, GoldenCapture
from imutune.runtime.replay import ReplayConfig, replay, replay_many

CLASSES = ("still", "walk", "run")
CHANNELS = ("acc_x", "acc_y", "gyr_z")
MEAN = (10.0, 0.0, 1.0)
STD = (2.0, 1.0, 0.5)


def _manifest() -> Manifest:   # 50 Hz: T = 10, hop = 5
    return Manifest(model_name="fake", model_config={}, class_names=CLASSES, channels=CHANNELS, sample_rate_hz=50.0,
                    window_s=0.2, hop_s=0.1, norm_mean=MEAN, norm_std=STD)


def _recording(n=37, *, channels=("gyr_z", "acc_x", "extra", "acc_y"), name="r1") -> Recording:
    rng = np.random.default_rng(1)
    values = rng.normal(size=(n, len(channels))).astype(np.float32)
    labels = np.repeat(np.arange(3), -(-n // 3))[:n]
    return Recording(values, labels, 50.0, channels, CLASSES, user="u", name=name)


class _SumBackend:
    """Logits from the window's mean per channel: depends on every input value."""

    name = "sum"

    def run(self, x):
        m = x.mean(axis=2)                                  # (1, C, T) -> (1, C)
        return np.stack([m[:, 0], m[:, 1], m[:, 2] - m[:, 0]], axis=1).astype(np.float32)  # (1, C) -> (1, K)


def test_capture_records_samples_windows_inputs_and_logits():
    m, rec = _manifest(), _recording()
    cap = GoldenCapture()
    res = replay(rec, _SumBackend(), m, config=ReplayConfig(smoothing_k=2, chunk_samples=3), capture=cap)
    (s,) = cap._done
    idx = [rec.channels.index(c) for c in CHANNELS]
    np.testing.assert_array_equal(s["samples"], rec.values[:, idx])          # raw, manifest order
    np.testing.assert_array_equal(s["window_ends"], [10, 15, 20, 25, 30, 35])
    np.testing.assert_array_equal(s["window_ends"], res.window_ends)
    norm = (rec.values[:, idx] - np.float32(MEAN)) / np.float32(STD)
    for w, e in enumerate(s["window_ends"]):
        np.testing.assert_array_equal(s["inputs"][w], norm[e - 10:e].T)      # (T, C) -> (C, T)
        np.testing.assert_allclose(s["logits"][w], _SumBackend().run(s["inputs"][w][None])[0])
    np.testing.assert_array_equal(s["predictions"], s["logits"].argmax(axis=1))
    np.testing.assert_array_equal(s["smoothed_predictions"], res.smoothed_predictions)
    assert s["smoothing_k"] == 2


def test_write_round_trips_and_copies_the_manifest(tmp_path):
    m = _manifest()
    mpath = m.save(tmp_path / "manifest.json")
    cap = GoldenCapture()
    replay_many([_recording(name="a"), _recording(25, name="b/c"), _recording(5, name="short")], _SumBackend(), m,
                capture=cap)
    assert cap.n_streams == 2                                              # the 5-sample one has no window
    index_path = cap.write(tmp_path / "golden", manifest_path=mpath, extra={"artifact": "x.onnx"})
    index = json.loads(index_path.read_text())
    assert index["golden_version"] == GOLDEN_VERSION and index["artifact"] == "x.onnx"
    assert (tmp_path / "golden" / "manifest.json").read_bytes() == mpath.read_bytes()
    st = index["streams"][1]
    assert st["recording"] == "b/c" and "/" not in st["files"]["inputs"]["file"]
    for key, spec in st["files"].items():
        arr = np.fromfile(tmp_path / "golden" / spec["file"], dtype=spec["dtype"]).reshape(spec["shape"])
        np.testing.assert_array_equal(arr, cap._done[1][key])
    assert st["files"]["inputs"]["shape"] == [st["n_windows"], 3, 10]


def test_gap_and_empty_capture_are_refused(tmp_path):
    cap = GoldenCapture()
    with pytest.raises(ValueError, match="gap of 7 samples"):
        cap.reset(7)
    with pytest.raises(ValueError, match="holds no stream"):
        cap.write(tmp_path / "g")
