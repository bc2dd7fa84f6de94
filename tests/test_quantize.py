"""int8 exports (ExecuTorch PT2E + XNNPACK, ONNX Runtime static QDQ): parity with fp32 within the stated
tolerance, accuracy change on held-out windows, manifest entries and argument checks."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")
pytest.importorskip("executorch")

from imutune.deploy.backends import load_backend  # noqa: E402
from imutune.deploy.export import export_pte, write_exports  # noqa: E402
from imutune.deploy.manifest import Manifest  # noqa: E402
from imutune.deploy.quantize import (  # noqa: E402
    calibration_subset,
    int8_accuracy_report,
    quantize_onnx,
)

C, T, K = 3, 32, 3
#: int8 parity tolerance stated for these tests: top-1 agreement with fp32 >= 95% and at most 2 points of
#: held-out accuracy lost (a tiny model on 120 held-out windows; one window is 0.8 points).
MIN_AGREEMENT, MAX_DROP_POINTS = 0.95, 2.0


def _synthetic(n, seed):
    """Class k: a sinusoid of frequency 1 + 2k cycles per window on every channel, plus noise."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, K, n)
    t = np.arange(T) / T
    phase = rng.uniform(0, 2 * np.pi, (n, C, 1))
    x = np.sin(2 * np.pi * (1 + 2 * y)[:, None, None] * t[None, None, :] + phase)
    x += 0.3 * rng.standard_normal((n, C, T))
    return x.astype(np.float32), y.astype(np.int64)


@pytest.fixture(scope="module")
def trained():
    from imutune.models.resnet1d import create_model
    from imutune.train.loop import TrainConfig, train

    xtr, ytr = _synthetic(480, 0)
    xte, yte = _synthetic(120, 1)
    torch.manual_seed(0)
    model = create_model("tinycnn1d", in_channels=C, num_classes=K)
    train(model, xtr, ytr, config=TrainConfig(epochs=12, batch_size=32, lr=1e-2, device="cpu"), progress=False)
    return model.eval(), (xtr, ytr), (xte, yte)


@pytest.fixture(scope="module")
def manifest():
    return Manifest(model_name="tinycnn1d", model_config={}, class_names=("a", "b", "c"),
                    channels=("acc_x", "acc_y", "acc_z"), sample_rate_hz=32.0, window_s=1.0, hop_s=0.5,
                    norm_mean=(0.0,) * C, norm_std=(1.0,) * C)


@pytest.fixture(scope="module")
def exported(trained, manifest, tmp_path_factory):
    model, (xtr, _), (xte, yte) = trained
    out = tmp_path_factory.mktemp("int8")
    m = write_exports(model, manifest, out, xte[:48], formats=("onnx", "onnx-int8", "pte-int8"),
                      calibration_windows=xtr, int8_min_agreement=MIN_AGREEMENT, eval_windows=(xte, yte))
    return out, m


def test_int8_parity_and_accuracy_within_tolerance(exported, trained):
    out, m = exported
    _, _, (xte, yte) = trained
    fp32 = m.artifacts["model.onnx"]
    assert fp32["eval_accuracy"] > 0.8                       # the model learned the task
    # model_int8.pte is compared with eager torch (no fp32 .pte was exported), model_int8.onnx with model.onnx
    for name, ref in (("model_int8.onnx", "model.onnx"), ("model_int8.pte", "torch")):
        a = m.artifacts[name]
        assert (a["precision"], a["format"]) == ("int8", name.rsplit(".", 1)[1])
        assert a["parity_top1_agreement"] >= MIN_AGREEMENT
        assert a["parity_tolerance"] == {"min_top1_agreement": MIN_AGREEMENT}
        assert a["calibration_windows"] == 256 and "quantization" in a
        assert a["fp32_reference"] == ref
        assert a["accuracy_change_vs_fp32_points"] >= -MAX_DROP_POINTS
        ref_acc = m.artifacts["model.onnx"]["eval_accuracy"]     # fp32 ORT and torch agree on every window
        assert a["accuracy_change_vs_fp32_points"] == pytest.approx(100 * (a["eval_accuracy"] - ref_acc))
        assert a["size_bytes"] == (out / name).stat().st_size
    assert m.artifacts["model_int8.pte"]["delegate"] == "xnnpack"
    assert m.artifacts["model_int8.pte"]["graph_rewrite"] == "conv1d->conv2d"
    # the same comparison from the backends, via the report helper
    assert m.artifacts["model.onnx"]["parity_top1_agreement"] == 1.0
    rep = int8_accuracy_report(load_backend(out / "model.onnx", manifest=m),
                               load_backend(out / "model_int8.onnx", manifest=m), xte, yte, num_classes=K)
    assert rep["n"] == 120 and rep["top1_agreement"] >= MIN_AGREEMENT
    assert rep["accuracy_change_points"] == pytest.approx(m.artifacts["model_int8.onnx"]["accuracy_change_vs_fp32_points"])


def test_int8_artifacts_carry_their_precision(exported, manifest):
    out, m = exported
    b = load_backend(out / "model_int8.pte", manifest=m)
    assert b.embedded_metadata["precision"] == "int8" and b.name == "executorch-xnnpack"
    o = load_backend(out / "model_int8.onnx", manifest=m)
    assert o.embedded_metadata["precision"] == "int8"
    # an int8 file listed as fp32 in the manifest is refused
    import dataclasses

    lied = dataclasses.replace(m, artifacts={**m.artifacts,
                                             "model_int8.onnx": {**m.artifacts["model_int8.onnx"], "precision": "fp32"}})
    with pytest.raises(ValueError, match="precision 'int8'.*precision 'fp32'"):
        load_backend(out / "model_int8.onnx", manifest=lied)


def test_int8_parity_failure_leaves_nothing(trained, manifest, tmp_path):
    model, (xtr, _), (xte, _) = trained
    # calibrating on windows 100x too small saturates the activations: the int8 model's classes drift
    with pytest.raises(ValueError, match="top-1 class agrees with fp32 torch on .* expected >= 90.0%"):
        write_exports(model, manifest, tmp_path / "o", xte[:48], formats=("onnx-int8",),
                      calibration_windows=(xtr * 0.01).astype(np.float32), int8_min_agreement=0.9)
    assert not (tmp_path / "o" / "model_int8.onnx").exists() and not (tmp_path / "o" / "manifest.json").exists()


def test_quantize_argument_checks(trained):
    model, (xtr, _), _ = trained
    x1 = torch.from_numpy(xtr[:1])
    with pytest.raises(ValueError, match="calibration_windows"):
        export_pte(model, x1, precision="int8")
    with pytest.raises(ValueError, match="XNNPACK"):
        export_pte(model, x1, delegate=None, precision="int8", calibration_windows=xtr)
    with pytest.raises(ValueError, match="precision"):
        export_pte(model, x1, precision="int4")
    with pytest.raises(ValueError, match="activation_type"):
        quantize_onnx(b"", xtr, activation_type="int4")
    with pytest.raises(ValueError, match="float32"):
        calibration_subset(xtr.astype(np.float64))
    sub = calibration_subset(np.zeros((500, C, T), np.float32), max_windows=100)
    assert sub.shape == (100, C, T)


def test_int8_accuracy_report_on_logits():
    x = np.zeros((4, C, T), np.float32)
    y = np.array([0, 1, 2, 0])
    lf = np.eye(3, dtype=np.float32)[[0, 1, 2, 0]]
    lq = np.eye(3, dtype=np.float32)[[0, 1, 2, 1]]
    r = int8_accuracy_report(lf, lq, x, y)
    assert r["fp32"]["accuracy"] == 1.0 and r["int8"]["accuracy"] == 0.75
    assert r["accuracy_change_points"] == pytest.approx(-25.0) and r["top1_agreement"] == 0.75
    with pytest.raises(ValueError, match=r"must both be \(4, K\)"):
        int8_accuracy_report(lf, lq[:3], x, y)
