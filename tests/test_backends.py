"""Tests for imutune.backends: ONNX Runtime, ExecuTorch and torch backends, load_backend."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("executorch")

from imutune._io import sha256_file  # noqa: E402
from imutune.deploy.backends import (  # noqa: E402
    CONTRACT_FIELDS,
    OnnxBackend,
    PteBackend,
    TorchBackend,
    _run_fixed_batch,
    load_backend,
)
from imutune.deploy.export import export_onnx, export_pte  # noqa: E402
from imutune.deploy.manifest import Manifest  # noqa: E402
from imutune.models.resnet1d import create_model  # noqa: E402

C, K, T = 3, 4, 64


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(1)
    return create_model("mobilecnn1d", in_channels=C, num_classes=K).eval()


@pytest.fixture(scope="module")
def x():
    return np.random.default_rng(1).standard_normal((5, C, T)).astype(np.float32)


@pytest.fixture(scope="module")
def artifacts(model, x, tmp_path_factory):
    """model.onnx and model.pte (both with the manifest's contract embedded), bare.onnx (no contract, as a
    plain torch.onnx export) and partial.onnx (contract without hop_s), plus a manifest listing all."""
    import onnx

    out = tmp_path_factory.mktemp("backends")
    man = Manifest(model_name="mobilecnn1d", model_config={}, class_names=tuple("abcd"),
                   channels=("acc_x", "acc_y", "acc_z"), sample_rate_hz=32.0, window_s=2.0, hop_s=1.0,
                   norm_mean=(0.0,) * C, norm_std=(1.0,) * C, units=("g", "g", "g"))
    proto = export_onnx(model, x[:1], manifest=man)
    (out / "model.onnx").write_bytes(proto.SerializeToString())
    (out / "model.pte").write_bytes(export_pte(model, x[:1], manifest=man).buffer)
    (out / "bare.onnx").write_bytes(export_onnx(model, x[:1]).SerializeToString())
    partial = onnx.ModelProto()
    partial.CopyFrom(proto)
    keep = [(p.key, p.value) for p in partial.metadata_props if p.key != "imutune.hop_s"]
    del partial.metadata_props[:]
    for k, v in keep:
        e = partial.metadata_props.add()
        e.key, e.value = k, v
    (out / "partial.onnx").write_bytes(partial.SerializeToString())
    for name, fmt in [("model.onnx", "onnx"), ("model.pte", "pte"), ("bare.onnx", "onnx"), ("partial.onnx", "onnx")]:
        man = man.with_artifact(name, sha256=sha256_file(out / name), format=fmt, precision="fp32")
    return out, man


def _ref(model, x):
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


@pytest.mark.parametrize("name, cls, backend_name", [("model.onnx", OnnxBackend, "onnxruntime"),
                                                      ("model.pte", PteBackend, "executorch-xnnpack")])
def test_load_backend_by_suffix_and_run(artifacts, model, x, name, cls, backend_name):
    out, man = artifacts
    b = load_backend(out / name, manifest=man, num_threads=2)
    assert isinstance(b, cls)
    assert (b.name, b.num_threads, b.in_channels, b.window_samples) == (backend_name, 2, C, T)
    logits = b.run(x)
    assert logits.shape == (len(x), K) and logits.dtype == np.float32
    np.testing.assert_allclose(logits, _ref(model, x), atol=1e-4, rtol=0)


def test_torch_backend(model, x):
    b = TorchBackend(model, num_threads=1)
    assert (b.name, b.num_threads, b.in_channels) == ("torch", 1, C)
    np.testing.assert_array_equal(b.run(x), _ref(model, x))
    with pytest.raises(ValueError, match="torch.nn.Module"):
        TorchBackend(object())


def test_tampered_file_fails_sha256(artifacts, tmp_path):
    out, man = artifacts
    p = tmp_path / "model.onnx"
    data = bytearray((out / "model.onnx").read_bytes())
    data[len(data) // 2] ^= 0x01
    p.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="sha256"):
        load_backend(p, manifest=man)


def test_file_not_in_manifest(artifacts, tmp_path):
    out, man = artifacts
    p = tmp_path / "other.onnx"
    p.write_bytes((out / "model.onnx").read_bytes())
    with pytest.raises(ValueError, match="not listed"):
        load_backend(p, manifest=man)


@pytest.mark.parametrize("name", ["model.onnx", "model.pte"])
def test_manifest_shape_mismatch(artifacts, name):
    out, man = artifacts
    wrong_c = dataclasses.replace(man, channels=("a", "b"), norm_mean=(0.0, 0.0), norm_std=(1.0, 1.0), units=None)
    with pytest.raises(ValueError, match=r"channel count C = 3; the manifest expects 2"):
        load_backend(out / name, manifest=wrong_c)
    wrong_t = dataclasses.replace(man, window_s=3.0)
    with pytest.raises(ValueError, match=r"window length T \(samples\) = 64; the manifest expects 96"):
        load_backend(out / name, manifest=wrong_t)


@pytest.mark.parametrize("name", ["model.onnx", "model.pte"])
def test_bad_inputs_raise(artifacts, x, name):
    b = load_backend(artifacts[0] / name)
    with pytest.raises(ValueError, match=r"has 2 channels .* expects C=3"):
        b.run(x[:, :2])
    with pytest.raises(ValueError, match=r"32 samples .* expects T=64"):
        b.run(x[:, :, :32])
    with pytest.raises(ValueError, match="float32, got float64"):
        b.run(x.astype(np.float64))
    with pytest.raises(ValueError, match=r"shape \(N, C, T\)"):
        b.run(x[0])
    with pytest.raises(ValueError, match="numpy array"):
        b.run(torch.from_numpy(x))


def test_unknown_suffix_missing_file_and_corrupt(tmp_path):
    p = tmp_path / "model.tflite"
    p.write_bytes(b"abc")
    with pytest.raises(ValueError, match=r"suffix '\.tflite'.*\.onnx"):
        load_backend(p)
    with pytest.raises(FileNotFoundError, match="missing.onnx"):
        load_backend(tmp_path / "missing.onnx")
    with pytest.raises(FileNotFoundError, match="missing.pte"):
        PteBackend(tmp_path / "missing.pte")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not an onnx model")
    with pytest.raises(ValueError, match="could not be loaded"):
        load_backend(bad)
    bad_pte = tmp_path / "bad.pte"
    bad_pte.write_bytes(b"not a pte program")
    with pytest.raises(ValueError, match="could not be loaded"):
        load_backend(bad_pte)


def test_num_threads_validated(artifacts):
    with pytest.raises(ValueError, match="num_threads"):
        load_backend(artifacts[0] / "model.onnx", num_threads=0)


def test_run_fixed_batch_pads_and_trims():
    calls = []

    def fn(b):
        calls.append(b.shape[0])
        return b.sum(axis=(1, 2))[:, None]

    x = np.arange(5 * 2 * 3, dtype=np.float32).reshape(5, 2, 3)
    out = _run_fixed_batch(fn, x, 2)
    assert calls == [2, 2, 2]
    np.testing.assert_array_equal(out, x.sum(axis=(1, 2))[:, None])


# --------------------------------------------------------------------------- manifest contract


@pytest.mark.parametrize("name", ["model.onnx", "model.pte"])
def test_embedded_contract_is_checked_on_load(artifacts, name):
    out, man = artifacts
    b = load_backend(out / name, manifest=man)
    meta = b.embedded_metadata
    assert meta["channels"] == ["acc_x", "acc_y", "acc_z"] and meta["sample_rate_hz"] == 32.0
    assert meta["hop_s"] == 1.0 and meta["hop_samples"] == 32 and meta["units"] == ["g", "g", "g"]
    assert set(CONTRACT_FIELDS) <= set(meta) and meta["precision"] == "fp32"
    assert meta["delegate"] == ("xnnpack" if name.endswith(".pte") else None)
    cases = [(dict(sample_rate_hz=16.0, window_s=4.0), r"sample_rate_hz = 32\.0, but the manifest says 16\.0"),
             (dict(channels=("acc_x", "acc_y", "gyr_z")), r"channels = \['acc_x', 'acc_y', 'acc_z'\].*'gyr_z'"),
             (dict(class_names=tuple("abce")), r"class_names"),
             (dict(norm_std=(1.0, 2.0, 1.0)), r"norm_std"),
             (dict(min_purity=0.5), r"min_purity = 0\.8, but the manifest says 0\.5"),
             (dict(units=("g", "g", "m/s^2")), r"units = \['g', 'g', 'g'\], but the manifest says \['g', 'g', 'm/s\^2'\]"),
             (dict(units=None), r"units = \['g', 'g', 'g'\], but the manifest says None")]
    for change, pattern in cases:
        with pytest.raises(ValueError, match=pattern):
            load_backend(out / name, manifest=dataclasses.replace(man, **change))


@pytest.mark.parametrize("name", ["model.onnx", "model.pte"])
def test_hop_is_part_of_the_checked_contract(artifacts, name):
    """Today an artifact loads against a manifest with another hop (hop_s is not compared): it must not."""
    out, man = artifacts
    with pytest.raises(ValueError, match=rf"model file '.*{name}' was exported for hop_s = 1\.0, but the manifest "
                                         r"says 0\.5 \(also hop_samples\)"):
        load_backend(out / name, manifest=dataclasses.replace(man, hop_s=0.5))


def test_model_name_is_part_of_the_checked_contract(artifacts):
    out, man = artifacts
    with pytest.raises(ValueError, match=r"model_name = 'mobilecnn1d', but the manifest says 'tinycnn1d'"):
        load_backend(out / "model.onnx", manifest=dataclasses.replace(man, model_name="tinycnn1d"))


def test_incomplete_or_invalid_embedded_contract_is_refused(artifacts, tmp_path):
    import onnx

    out, man = artifacts
    with pytest.raises(ValueError, match=r"partial\.onnx' embeds an incomplete imutune contract \(missing "
                                         r"\['hop_s'\]\)"):
        load_backend(out / "partial.onnx", manifest=man)
    proto = onnx.load(str(out / "model.onnx"))
    for p in proto.metadata_props:
        if p.key == "imutune.window_samples":
            p.value = "99"
    bad = tmp_path / "model.onnx"
    bad.write_bytes(proto.SerializeToString())
    m2 = man.with_artifact("model.onnx", **{**man.artifacts["model.onnx"], "sha256": sha256_file(bad)})
    with pytest.raises(ValueError, match=r"model\.onnx' \(embedded contract\): window_samples is 99 but "
                                         r"window_s/hop_s at sample_rate_hz give 64"):
        load_backend(bad, manifest=m2)


def test_artifact_without_embedded_contract_is_checked_by_hash_and_shape(artifacts):
    out, man = artifacts
    assert load_backend(out / "bare.onnx", manifest=man).embedded_metadata is None
    with pytest.raises(ValueError, match=r"window length T \(samples\) = 64; the manifest expects 96"):
        load_backend(out / "bare.onnx", manifest=dataclasses.replace(man, window_s=3.0))


def test_manifest_entry_format_delegate_and_class_count(artifacts):
    out, man = artifacts
    entry = man.artifacts["model.pte"]
    with pytest.raises(ValueError, match="delegate None"):
        load_backend(out / "model.pte", manifest=man.with_artifact("model.pte", **entry, delegate=None))
    with pytest.raises(ValueError, match="format 'pte'"):
        load_backend(out / "model.onnx", manifest=man.with_artifact("model.onnx", **{**man.artifacts["model.onnx"],
                                                                                      "format": "pte"}))
    five = dataclasses.replace(man, class_names=tuple("abcde"))
    for name in ("model.onnx", "model.pte"):
        with pytest.raises(ValueError, match="class count K = 4; the manifest expects 5"):
            load_backend(out / name, manifest=five)


@pytest.mark.parametrize("name", ["model.onnx", "model.pte"])
def test_threads_in_effect_and_prepare(artifacts, model, name):
    out, _ = artifacts
    b1 = load_backend(out / name, num_threads=1)
    b2 = load_backend(out / name, num_threads=2)
    assert b2.threads_in_effect() == 2
    b1.prepare()                  # re-applies the process-wide pool size for .pte
    assert b1.threads_in_effect() == 1
    t = TorchBackend(model, num_threads=2)
    torch.set_num_threads(1)
    t.prepare()
    assert t.threads_in_effect() == 2
    TorchBackend(model, num_threads=1)
