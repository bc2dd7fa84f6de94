"""Per-user patches: round trip, size, hash checks and errors."""
from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from imutune.models.resnet1d import create_model
from imutune.personalize.patch import (
    Patch,
    apply_patch,
    apply_patch_bundle,
    load_patch,
    make_patch,
    model_bytes,
    patch_bytes,
    save_patch,
    state_hash,
)
from imutune.personalize.selective import (
    finetune_selected,
    full_selection,
    random_selection,
)
from imutune.signal.windows import Normalizer, WindowConfig
from imutune.train.bundle import ModelBundle, load_bundle, save_bundle
from imutune.train.loop import TrainConfig

FAST = TrainConfig(epochs=3, batch_size=8, lr=5e-3, device="cpu")


pytestmark = pytest.mark.usefixtures("one_torch_thread")   # tests/conftest.py


@pytest.fixture(scope="module")
def base_and_tuned():
    torch.manual_seed(0)
    base = create_model("tinycnn1d", in_channels=6, num_classes=4).eval()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((16, 6, 32)).astype(np.float32)
    y = np.arange(16) % 4
    tuned = copy.deepcopy(base)
    sel = random_selection(base, 0.25, seed=0)
    finetune_selected(tuned, x, y, sel, config=FAST)
    return base, tuned, x


def test_state_hash_is_content_based(base_and_tuned):
    base, tuned, _ = base_and_tuned
    assert state_hash(base) == state_hash(copy.deepcopy(base)) == state_hash(base.state_dict())
    assert state_hash(base) != state_hash(tuned)
    m = copy.deepcopy(base)
    with torch.no_grad():
        m.head.bias[0] += 1e-7
    assert state_hash(m) != state_hash(base)


def test_patch_round_trip_is_bit_exact(base_and_tuned, tmp_path):
    base, tuned, x = base_and_tuned
    p = make_patch(base, tuned, info={"note": "test"})
    path = save_patch(p, tmp_path / "patch.safetensors")
    q = load_patch(path)
    assert q.base_sha256 == state_hash(base) and q.patched_sha256 == state_hash(tuned)
    assert q.rows == p.rows and q.info == {"note": "test"} and q.class_names is None
    out = apply_patch(base, path)
    assert state_hash(out) == state_hash(tuned)
    with torch.no_grad():
        xt = torch.from_numpy(x)
        assert torch.equal(out(xt), tuned.eval()(xt))
    assert state_hash(base) == q.base_sha256                   # the base is not modified


def test_patch_stores_only_changed_rows_and_is_small(base_and_tuned):
    base, tuned, _ = base_and_tuned
    p = make_patch(base, tuned)
    b, t = base.state_dict(), tuned.state_dict()
    for k in b:
        if torch.equal(b[k], t[k]):
            assert k not in p.tensors
    # conv weights of a 25% selection are stored as rows
    conv_keys = [k for k in p.rows if k.endswith("conv1.weight") or k == "stem.0.weight"]
    assert conv_keys
    for k in conv_keys:
        assert p.tensors[k].shape[0] == len(p.rows[k]) < b[k].shape[0]
    assert "head.weight" in p.tensors and "head.weight" not in p.rows   # the head changes in full
    assert len(patch_bytes(p)) < model_bytes(base)
    # an unchanged model gives an empty patch that still applies
    empty = make_patch(base, copy.deepcopy(base))
    assert not empty.tensors and state_hash(apply_patch(base, empty)) == state_hash(base)


def test_full_fine_tuning_patch_stores_whole_tensors(base_and_tuned):
    base, _, x = base_and_tuned
    tuned = copy.deepcopy(base)
    finetune_selected(tuned, x, np.arange(16) % 4, full_selection(base), config=FAST)
    p = make_patch(base, tuned)
    assert not p.rows
    assert state_hash(apply_patch(base, p)) == state_hash(tuned)


def test_patch_for_another_base_model_is_refused(base_and_tuned, tmp_path):
    base, tuned, _ = base_and_tuned
    path = save_patch(make_patch(base, tuned), tmp_path / "p.safetensors")
    torch.manual_seed(123)
    other = create_model("tinycnn1d", in_channels=6, num_classes=4)
    with pytest.raises(ValueError, match="made for base model"):
        apply_patch(other, path)
    with pytest.raises(ValueError, match="made for base model"):
        apply_patch(tuned, path)


def test_corrupt_or_foreign_files(base_and_tuned, tmp_path):
    from safetensors.torch import save_file

    base, tuned, _ = base_and_tuned
    with pytest.raises(FileNotFoundError, match=r"patch file '.*missing\.safetensors' does not exist"):
        load_patch(tmp_path / "missing.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file at all")
    with pytest.raises(ValueError, match="not a safetensors"):
        load_patch(tmp_path / "junk.safetensors")
    save_file({"a": torch.zeros(2)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(ValueError, match="not an imutune patch"):
        load_patch(tmp_path / "plain.safetensors")
    # a patch whose stored values were altered fails the result hash
    p = make_patch(base, tuned)
    k = next(iter(p.tensors))
    bad = Patch({**p.tensors, k: p.tensors[k] + 1}, p.rows, p.base_sha256, p.patched_sha256)
    with pytest.raises(ValueError, match="corrupt"):
        apply_patch(base, bad)
    with pytest.raises(ValueError, match="different state-dict keys"):
        make_patch(base, create_model("tinycnn1d", in_channels=6, num_classes=4, layers=(1,), widths=(8,)))


def test_new_class_set_and_bundle_export(base_and_tuned, tmp_path):
    from imutune.deploy.export import write_exports
    from imutune.deploy.manifest import manifest_for
    from imutune.models.resnet1d import replace_head

    base, _, x = base_and_tuned
    bundle = ModelBundle(base, "tinycnn1d", ("a", "b", "c", "d"), tuple(f"c{i}" for i in range(6)),
                         WindowConfig(window_s=0.64, hop_s=0.32), Normalizer(np.zeros(6, np.float32),
                                                                              np.ones(6, np.float32)))
    tuned = copy.deepcopy(base)
    torch.manual_seed(1)
    replace_head(tuned, 2)
    finetune_selected(tuned, x, np.arange(16) % 2, random_selection(base, 0.1), config=FAST)
    p = make_patch(base, tuned, class_names=("walk", "run"))
    path = save_patch(p, tmp_path / "p.safetensors")
    user = apply_patch_bundle(bundle, path)
    assert user.class_names == ("walk", "run") and user.model.num_classes == 2
    assert state_hash(user.model) == state_hash(tuned)
    save_bundle(user, tmp_path / "user")
    assert state_hash(load_bundle(tmp_path / "user").model) == state_hash(tuned)
    m = write_exports(user.model, manifest_for(user), tmp_path / "export", x[:4], formats=("onnx",))
    assert "model.onnx" in m.artifacts and m.artifacts["model.onnx"]["parity_max_abs_err"] < 1e-4
    meta = json.loads((tmp_path / "export" / "manifest.json").read_text())
    assert meta["class_names"] == ["walk", "run"]


# --------------------------------------------------------------------------- smaller patches (issue 14)

@pytest.mark.parametrize("fmt", ["list", "ranges", "bitmap", "auto"])
def test_each_row_format_round_trips_bit_exactly(base_and_tuned, tmp_path, fmt):
    from safetensors import safe_open

    base, tuned, x = base_and_tuned
    p = make_patch(base, tuned, row_format=fmt)
    assert p.rows
    path = save_patch(p, tmp_path / f"{fmt}.safetensors")
    with safe_open(str(path), framework="pt") as fh:
        meta = fh.metadata()
    rows = json.loads(meta["rows"])
    if fmt == "list":
        assert meta["version"] == "1" and all(isinstance(v, list) for v in rows.values())   # old readers read it
    elif fmt in ("ranges", "bitmap"):
        assert meta["version"] == "2" and all(v.startswith(fmt + ":") for v in rows.values())
    q = load_patch(path)
    assert q.rows == p.rows and q.dtype == "float32"
    out = apply_patch(base, path)
    assert state_hash(out) == state_hash(tuned)                  # bit-exact for fp32
    with torch.no_grad():
        assert torch.equal(out(torch.from_numpy(x)), tuned.eval()(torch.from_numpy(x)))
    if fmt == "auto":                                           # never longer than any fixed format
        n = len(patch_bytes(p))
        assert all(n <= len(patch_bytes(make_patch(base, tuned, row_format=f))) for f in ("list", "ranges", "bitmap"))


@pytest.mark.parametrize("idx,n", [([], 5), ([0], 1), ([0, 1, 2, 7, 9, 10], 12), ([3, 5, 7], 8),
                                   (list(range(20)), 96), ([95], 96)])
def test_row_encodings_decode_to_the_same_indices(idx, n):
    from imutune.personalize.patch import decode_rows, encode_rows

    for fmt in ("list", "ranges", "bitmap", "auto"):
        enc = encode_rows(idx, n, fmt)
        dec, nn = decode_rows(json.loads(json.dumps(enc)))
        assert dec == idx, (fmt, enc)
        assert nn == (n if isinstance(enc, str) and enc.startswith("bitmap:") else None)
    assert encode_rows(list(range(20)), 96, "ranges") == "ranges:0-19"
    with pytest.raises(ValueError, match="sorted, distinct"):
        encode_rows([3, 1], 5)
    with pytest.raises(ValueError, match="must be one of"):
        encode_rows([1], 5, "zip")


@pytest.mark.parametrize("value,pattern", [
    ("ranges:3-1", r"is not 'a' or 'a-b'"), ("ranges:0-2,2", r"is not 'a' or 'a-b'"), ("ranges:x", r"'a-b'"),
    ("ranges:0-99999999999", r"'a-b'"), ("ranges:0-2147483646", r"more than 2\^24 rows"),
    ("bitmap:8:!!", r"expected 'bitmap:N:<base64"), ("bitmap:9:AQ==", r"ceil\(N/8\) bytes"),
    ("bitmap:3:Dw==", r"bits set past row 3"), ("bitmap:0:", r"0 < N"), ("zip:abc", r"expected a list of distinct"),
    (7, r"expected a list of distinct")])
def test_corrupt_row_encodings_give_clear_errors(base_and_tuned, tmp_path, value, pattern):
    from safetensors.torch import load as st_load
    from safetensors.torch import save as st_save

    base, tuned, _ = base_and_tuned
    p = make_patch(base, tuned, row_format="ranges")
    data = patch_bytes(p)
    from safetensors import safe_open

    good = save_patch(p, tmp_path / "good.safetensors")
    with safe_open(str(good), framework="pt") as fh:
        meta = fh.metadata()
    k = next(iter(p.rows))
    rows = {**json.loads(meta["rows"]), k: value}
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(st_save(st_load(data), metadata={**meta, "rows": json.dumps(rows)}))
    with pytest.raises(ValueError, match=rf"patch '{bad}': rows of '{k}' are .*{pattern}"):
        load_patch(bad)
    # a version-1 patch may only hold lists; dtype needs version 2
    v1 = tmp_path / "v1.safetensors"
    v1.write_bytes(st_save(st_load(data), metadata={**meta, "version": "1"}))
    with pytest.raises(ValueError, match=r"expected a list of distinct integers in \[0, 2\^31\) \(version 1\)"):
        load_patch(v1)
    v1.write_bytes(st_save(st_load(data), metadata={**meta, "dtype": "float8"}))
    with pytest.raises(ValueError, match=r"metadata dtype is 'float8'"):
        load_patch(v1)


def test_fp16_patch_is_half_the_size_and_verifies_the_rounded_model(base_and_tuned, tmp_path):
    base, tuned, x = base_and_tuned
    p32, p16 = make_patch(base, tuned), make_patch(base, tuned, dtype="float16")
    b32, b16 = len(patch_bytes(p32)), len(patch_bytes(p16))
    values = sum(v.numel() for v in p32.tensors.values() if v.is_floating_point())
    assert b32 - b16 >= 2 * values - 64                          # 2 bytes saved per stored value (header aside)
    assert all(v.dtype == torch.float16 for v in p16.tensors.values() if v.is_floating_point())
    path = save_patch(p16, tmp_path / "p16.safetensors")
    q = load_patch(path)
    assert q.dtype == "float16" and q.rows == p32.rows and q.patched_sha256 == p16.patched_sha256
    out = apply_patch(base, path)                                # verifies against the rounded model's hash
    assert state_hash(out) == p16.patched_sha256 != state_hash(tuned)      # lossy, and says so by its hash
    st, tt = out.state_dict(), tuned.state_dict()
    for k in p32.tensors:
        if tt[k].is_floating_point():
            want = tt[k].clone()
            rows = torch.tensor(p32.rows[k]) if k in p32.rows else torch.arange(want.shape[0])
            want[rows] = want[rows].half().float()               # each stored value is the nearest fp16 ...
            assert torch.equal(st[k], want), k                   # ... and rows not stored keep their bits
    for k in tt:
        if k not in p32.tensors:
            assert torch.equal(st[k], tt[k])                     # untouched entries stay bit-identical
    with pytest.raises(ValueError, match="must be one of"):
        make_patch(base, tuned, dtype="int8")
    bad = Patch({k: v + 1 if v.is_floating_point() else v for k, v in p16.tensors.items()}, p16.rows,
                p16.base_sha256, p16.patched_sha256, dtype="float16")
    with pytest.raises(ValueError, match="corrupt"):
        apply_patch(base, bad)
