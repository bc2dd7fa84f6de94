"""Tests for imutune.manifest and imutune._io: manifest round trip, artifact verification, atomic writes."""
from __future__ import annotations

import dataclasses
import hashlib
import json

import numpy as np
import pytest
from imutune._io import (
    save_torch_atomic,
    sha256_bytes,
    sha256_file,
    write_bytes_atomic,
    write_json_atomic,
    write_text_atomic,
    write_with_atomic,
)
from imutune.deploy.manifest import (
    MANIFEST_KEYS,
    MANIFEST_VERSION,
    Manifest,
    load_manifest,
    verify_artifact,
)
from imutune.signal.contract import CONTRACT_KEYS, Preprocessing


def _manifest(**over) -> Manifest:
    """A manifest from the flat contract keywords (the form other tests use)."""
    kw = dict(model_name="tinycnn1d", model_config={"layers": [1, 1], "widths": [8, 16]},
              class_names=("walk", "run", "still"), channels=("acc_x", "acc_y"), sample_rate_hz=50.0,
              window_s=2.0, hop_s=0.5, norm_mean=(0.1, -0.2), norm_std=(1.5, 0.25))
    kw.update(over)
    return Manifest(**kw)


def _spec(*, units=None, norm=True) -> Preprocessing:
    return Preprocessing(channels=("acc_x", "acc_y"), class_names=("walk", "run", "still"), sample_rate_hz=50.0,
                         window_s=2.0, hop_s=0.5, units=units, norm_mean=(0.1, -0.2) if norm else None,
                         norm_std=(1.5, 0.25) if norm else None)


# --------------------------------------------------------------------------- Manifest

def test_derived_sample_counts_and_to_dict():
    m = _manifest()
    assert (m.window_samples, m.hop_samples) == (100, 25)
    assert isinstance(m.preprocessing, Preprocessing) and m.preprocessing.hop_s == 0.5
    d = m.to_dict()
    assert d["window_samples"] == 100 and d["hop_samples"] == 25
    assert d["class_names"] == ["walk", "run", "still"] and d["channels"] == ["acc_x", "acc_y"]
    assert d["units"] is None and d["min_purity"] == 0.8
    assert d["version"] == MANIFEST_VERSION == 2
    assert (d["input_layout"], d["input_name"], d["output_name"]) == ("NCT", "x", "logits")
    assert set(d) == set(MANIFEST_KEYS) | set(CONTRACT_KEYS)
    json.dumps(d)  # JSON-ready


def test_manifest_for_carries_the_bundle_contract():
    """manifest_for copies nothing by hand: the manifest holds the bundle's contract object."""
    from imutune.deploy.manifest import manifest_for
    from imutune.models.resnet1d import create_model
    from imutune.train.bundle import ModelBundle

    spec = _spec(units=("g", "rad/s"))
    bundle = ModelBundle(create_model("tinycnn1d", in_channels=2, num_classes=3), "tinycnn1d", spec, {})
    m = manifest_for(bundle)
    assert m.preprocessing is spec and m.units == ("g", "rad/s") and m.hop_s == 0.5


def test_round_trip(tmp_path):
    m = _manifest(units=("g", None)).with_artifact("model.onnx", sha256="ab" * 32, format="onnx",
                                                   precision="fp32", parity_max_abs_err=1e-6)
    p = m.save(tmp_path / "out" / "manifest.json")
    assert p == tmp_path / "out" / "manifest.json"
    back = load_manifest(p)
    assert back == m
    assert back.class_names == ("walk", "run", "still") and isinstance(back.channels, tuple)
    assert back.units == ("g", None)
    assert back.artifacts["model.onnx"]["precision"] == "fp32"
    assert sorted(q.name for q in p.parent.iterdir()) == ["manifest.json"]  # no temp file left


def test_with_artifact_returns_copy():
    m = _manifest()
    m2 = m.with_artifact("a.pte", sha256="00", format="pte")
    assert m.artifacts == {} and m2.artifacts == {"a.pte": {"sha256": "00", "format": "pte"}}
    m3 = m2.with_artifact("a.pte", sha256="11", format="pte")
    assert m3.artifacts["a.pte"]["sha256"] == "11" and m2.artifacts["a.pte"]["sha256"] == "00"


def test_replace_changes_contract_fields():
    m = _manifest()
    m2 = dataclasses.replace(m, hop_s=1.0)
    assert m2.hop_samples == 50 and m.hop_samples == 25 and m2.preprocessing.window_s == 2.0
    with pytest.raises(ValueError, match=r"unexpected fields \['colour'\]"):
        dataclasses.replace(m, colour="blue")


def test_metadata_props():
    m = _manifest().with_artifact("model.onnx", sha256="ab", format="onnx")
    props = m.metadata_props()
    assert set(props) == {f"imutune.{k}" for k in set(MANIFEST_KEYS) | set(CONTRACT_KEYS) if k != "artifacts"}
    assert "imutune.artifacts" not in props and "imutune.hop_s" in props and "imutune.units" in props
    assert all(isinstance(v, str) for v in props.values())
    assert json.loads(props["imutune.class_names"]) == ["walk", "run", "still"]
    assert json.loads(props["imutune.norm_std"]) == [1.5, 0.25]
    assert json.loads(props["imutune.window_samples"]) == 100
    assert json.loads(props["imutune.model_name"]) == "tinycnn1d"


def test_normalize_channel_last():
    m = _manifest()
    x = np.array([[0.1, -0.2], [1.6, 0.05]], np.float64)
    out = m.normalize(x)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [[0.0, 0.0], [1.0, 1.0]], atol=1e-6)


def test_manifest_norm_length_mismatch():
    with pytest.raises(ValueError, match=r"normalization norm_mean in preprocessing has 3 values; expected 2"):
        _manifest(norm_mean=(0.0, 0.0, 0.0))
    with pytest.raises(ValueError, match=r"norm_std in preprocessing has 1 values; expected 2"):
        _manifest(norm_std=(1.0,))


@pytest.mark.parametrize("bad", [0.0, -1.0])
def test_manifest_norm_std_positive(bad):
    with pytest.raises(ValueError, match=r"norm_std\[1\] in preprocessing must be > 0"):
        _manifest(norm_std=(1.0, bad))


def test_manifest_norm_not_finite():
    with pytest.raises(ValueError, match=r"norm_std\[1\] in preprocessing must be a finite number within float32 "
                                         r"range .*, got nan"):
        _manifest(norm_std=(1.0, float("nan")))
    with pytest.raises(ValueError, match=r"norm_mean\[0\] in preprocessing must be a finite number within float32"):
        _manifest(norm_mean=(1e308, 0.0))           # inf once the phone casts it to float32
    with pytest.raises(ValueError, match=r"norm_std\[0\] in preprocessing must be > 0 .*got 1e-300"):
        _manifest(norm_std=(1e-300, 1.0))           # 0 in float32: a division by zero


def test_manifest_needs_normalization():
    with pytest.raises(ValueError, match=r"manifest preprocessing needs norm_mean / norm_std"):
        Manifest("tinycnn1d", {}, _spec(norm=False))


@pytest.mark.parametrize("field", ["sample_rate_hz", "window_s", "hop_s"])
def test_manifest_positive_fields(field):
    with pytest.raises(ValueError, match=rf"{field} in preprocessing must be a positive number, got 0"):
        _manifest(**{field: 0})


def test_manifest_minimum_window_is_the_package_rule():
    """Today's Manifest accepts a 1-sample window; the one rule (>= 8 samples) now applies to it too."""
    with pytest.raises(ValueError, match=r"gives 5 samples per window; expected >= 8"):
        _manifest(window_s=0.1)


@pytest.mark.parametrize("name", ["../model.onnx", "sub/model.onnx", "", ".."])
def test_manifest_refuses_artifact_paths(name):
    with pytest.raises(ValueError, match=r"is not a plain file name"):
        _manifest().with_artifact(name, sha256="ab" * 32, format="onnx")


# --------------------------------------------------------------------------- load_manifest errors

def _write(tmp_path, d) -> object:
    p = tmp_path / "manifest.json"
    p.write_text(json.dumps(d))
    return p


def test_load_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"manifest .*nope\.json' does not exist"):
        load_manifest(tmp_path / "nope.json")


def test_load_truncated_json(tmp_path):
    p = _manifest().save(tmp_path / "manifest.json")
    text = p.read_text()
    p.write_text(text[: len(text) // 2])
    with pytest.raises(ValueError, match=r"manifest .* is not valid JSON .*it may be truncated"):
        load_manifest(p)


def test_load_not_an_object(tmp_path):
    (tmp_path / "manifest.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match=r"manifest .* holds a JSON list; expected an object"):
        load_manifest(tmp_path / "manifest.json")


def test_load_empty_file(tmp_path):
    (tmp_path / "manifest.json").write_bytes(b"")
    with pytest.raises(ValueError, match=r"manifest .* is empty \(0 bytes\)"):
        load_manifest(tmp_path / "manifest.json")


def test_load_not_utf8(tmp_path):
    (tmp_path / "manifest.json").write_bytes(b"\xff\xfe{}")
    with pytest.raises(ValueError, match=r"manifest .*manifest\.json' is not UTF-8 text"):
        load_manifest(tmp_path / "manifest.json")


@pytest.mark.parametrize("version", [1, 3, 0, None, "2", True])
def test_load_wrong_version(tmp_path, version):
    d = _manifest().to_dict()
    d["version"] = version
    with pytest.raises(ValueError, match=rf"has version {version!r}; expected 2"):
        load_manifest(_write(tmp_path, d))


def test_load_old_manifest_names_the_missing_fields(tmp_path):
    """A manifest of the previous layout (no units, no min_purity) gets a clear error naming them."""
    d = _manifest().to_dict()
    del d["units"], d["min_purity"]
    with pytest.raises(ValueError, match=r"manifest '.*manifest\.json' is missing or has unexpected fields: "
                                         r"missing \['units', 'min_purity'\]"):
        load_manifest(_write(tmp_path, d))


def test_load_missing_field(tmp_path):
    d = _manifest().to_dict()
    del d["channels"]
    with pytest.raises(ValueError, match=r"is missing or has unexpected fields: missing \['channels'\]"):
        load_manifest(_write(tmp_path, d))
    d = _manifest().to_dict()
    del d["sample_rate_hz"]
    with pytest.raises(ValueError, match=r"is missing or has unexpected fields: missing \['sample_rate_hz'\]"):
        load_manifest(_write(tmp_path, d))


def test_load_unexpected_field(tmp_path):
    d = _manifest().to_dict()
    d["colour"] = "blue"
    with pytest.raises(ValueError, match=r"is missing or has unexpected fields: missing \[\], unknown \['colour'\]"):
        load_manifest(_write(tmp_path, d))


def test_load_norm_mismatch_in_file(tmp_path):
    d = _manifest().to_dict()
    d["norm_mean"] = [0.0]
    with pytest.raises(ValueError, match=r"manifest '.*manifest\.json': normalization norm_mean in .* has 1 values; "
                                         r"expected 2"):
        load_manifest(_write(tmp_path, d))


@pytest.mark.parametrize("field, value", [("window_samples", 99), ("hop_samples", 50), ("window_samples", 100.0),
                                          ("hop_samples", True)])
def test_load_verifies_stored_sample_counts(tmp_path, field, value):
    """window_samples / hop_samples were written and never checked: a mismatch with the seconds is refused."""
    d = _manifest().to_dict()
    d[field] = value
    with pytest.raises(ValueError, match=rf"manifest '.*': {field} is {value!r} but window_s/hop_s at "
                                         r"sample_rate_hz give"):
        load_manifest(_write(tmp_path, d))


@pytest.mark.parametrize("field, value, pattern", [
    ("channels", "acc_x", r"channels in .* must be a list of names, got str"),
    ("channels", ["acc_x", "acc_x"], r"channels in .* lists \['acc_x'\] more than once"),
    ("class_names", [], r"class_names in .* has 0 entries"),
    ("sample_rate_hz", "50", r"sample_rate_hz in .* must be a positive number, got '50'"),
    ("sample_rate_hz", 1e308, r"window_s \* sample_rate_hz in .* is inf samples"),
    ("sample_rate_hz", True, r"sample_rate_hz in .* must be a positive number, got True"),
    ("hop_s", -0.5, r"hop_s in .* must be a positive number, got -0.5"),
    ("norm_std", [1.0, "x"], r"norm_std\[1\] in .* must be a number, got 'x'"),
    ("norm_mean", [10 ** 400, 0.0], r"norm_mean\[0\] in .* must be a finite number"),
    ("units", "g", r"units in .* must be null or a list of 2 unit strings"),
    ("units", ["g"], r"units in .* has 1 entries; expected 2"),
    ("min_purity", 1.5, r"min_purity must be in \(0, 1\]"),
    ("model_config", [], r"manifest model_config must be a dict, got list"),
    ("artifacts", {"m.onnx": "x"}, r"artifacts\['m\.onnx'\] is a str; expected an object"),
    ("artifacts", {"m.onnx": {"format": "onnx"}}, r"artifacts\['m\.onnx'\] has sha256 None"),
    ("input_layout", 3, r"input_layout is 3; expected one of \[.NCT.\]"),
])
def test_load_invalid_values_name_file_and_field(tmp_path, field, value, pattern):
    d = _manifest().to_dict()
    d[field] = value
    with pytest.raises(ValueError, match=r"manifest '.*manifest\.json'.*" + pattern):
        load_manifest(_write(tmp_path, d))


def test_load_nan_in_file(tmp_path):
    text = json.dumps(_manifest().to_dict()).replace('"norm_std": [1.5, 0.25]', '"norm_std": [NaN, 0.25]')
    (tmp_path / "manifest.json").write_text(text)
    with pytest.raises(ValueError, match=r"manifest '.*': norm_std\[0\] in preprocessing must be a finite number"):
        load_manifest(tmp_path / "manifest.json")


# --------------------------------------------------------------------------- verify_artifact

def test_verify_artifact(tmp_path):
    art = tmp_path / "model.onnx"
    art.write_bytes(b"\x08\x01model bytes")
    m = _manifest().with_artifact("model.onnx", sha256=sha256_file(art), format="onnx", precision="fp32")
    entry = verify_artifact(m, art)
    assert entry == {"sha256": hashlib.sha256(b"\x08\x01model bytes").hexdigest(), "format": "onnx",
                     "precision": "fp32"}
    # one flipped byte
    art.write_bytes(b"\x08\x02model bytes")
    with pytest.raises(ValueError, match=r"model\.onnx' has sha256 [0-9a-f]{16}\.\.\.; the manifest expects "
                                         r"[0-9a-f]{16}\.\.\. \(file changed"):
        verify_artifact(m, art)


def test_verify_artifact_unlisted(tmp_path):
    art = tmp_path / "other.pte"
    art.write_bytes(b"x")
    m = _manifest().with_artifact("model.onnx", sha256="00", format="onnx")
    with pytest.raises(ValueError, match=r"other\.pte' is not listed in the manifest; it lists \['model\.onnx'\]"):
        verify_artifact(m, art)


def test_verify_artifact_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"model artifact .*model\.onnx' does not exist"):
        verify_artifact(_manifest(), tmp_path / "model.onnx")


# --------------------------------------------------------------------------- _io

def test_hashes():
    assert sha256_bytes(b"abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def test_sha256_file_multi_chunk(tmp_path):
    data = bytes(range(256)) * 5000            # > 1 MiB: several read chunks
    (tmp_path / "f").write_bytes(data)
    assert sha256_file(tmp_path / "f") == hashlib.sha256(data).hexdigest()


def test_write_helpers(tmp_path):
    write_bytes_atomic(tmp_path / "a" / "b.bin", b"\x00\x01")
    assert (tmp_path / "a" / "b.bin").read_bytes() == b"\x00\x01"
    write_text_atomic(tmp_path / "t.txt", "héllo")
    assert (tmp_path / "t.txt").read_bytes() == "héllo".encode("utf-8")
    write_json_atomic(tmp_path / "j.json", {"a": np.float32(1.5), "b": np.arange(3), "c": tmp_path / "x"})
    assert json.loads((tmp_path / "j.json").read_text()) == {"a": 1.5, "b": [0, 1, 2], "c": str(tmp_path / "x")}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "j.json", "t.txt"]


def test_write_json_unserialisable_leaves_nothing(tmp_path):
    with pytest.raises(TypeError, match=r"object of type object is not JSON serialisable"):
        write_json_atomic(tmp_path / "j.json", {"a": object()})
    assert list(tmp_path.iterdir()) == []


def test_save_torch_atomic(tmp_path):
    import torch

    save_torch_atomic(tmp_path / "c.pt", {"w": torch.arange(4)})
    assert torch.equal(torch.load(tmp_path / "c.pt")["w"], torch.arange(4))


@pytest.mark.parametrize("exc", [RuntimeError, KeyboardInterrupt])
def test_atomic_write_failure_keeps_old_file(tmp_path, exc):
    target = tmp_path / "model.bin"
    target.write_bytes(b"old contents")
    seen = []

    def writer(tmp: str) -> None:
        seen.append(tmp)
        with open(tmp, "wb") as fh:
            fh.write(b"half of the new")
        raise exc("disk full")

    with pytest.raises(exc, match="disk full"):
        write_with_atomic(target, writer)
    assert target.read_bytes() == b"old contents"
    assert len(seen) == 1 and seen[0] != str(target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.bin"]   # temp file removed


def test_atomic_write_success_replaces(tmp_path):
    target = tmp_path / "model.bin"
    target.write_bytes(b"old")

    def writer(tmp: str) -> None:
        with open(tmp, "wb") as fh:
            fh.write(b"new")

    assert write_with_atomic(target, writer) == target
    assert target.read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.bin"]
