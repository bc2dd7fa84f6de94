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
    with pytest.raises(FileNotFoundError):
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
