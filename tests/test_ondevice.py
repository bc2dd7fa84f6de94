"""On-device FilterLoss training (imutune.ondevice): training-friendly model, program export per trainable
set, ExecuTorch-vs-PyTorch weight parity, masked rows, the patch round trip and the errors.

Three training programs are exported in the whole module (ExecuTorch lowering is the slow part)."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from imutune.models.resnet1d import create_model
from imutune.ondevice.config import OnDeviceConfig
from imutune.ondevice.loop import OnDeviceTrainer, batch_indices, eager_sgd, row_masks, weight_parity
from imutune.ondevice.model import ConvAsMatmul, trainable_entries, training_net
from imutune.ondevice.program import TRAIN_ARTIFACT, export_training_program, variant_selection, write_training_program
from imutune.personalize.patch import apply_patch, load_patch, state_hash

pytestmark = [pytest.mark.usefixtures("one_torch_thread"),
              pytest.mark.filterwarnings("ignore::DeprecationWarning"), pytest.mark.filterwarnings("ignore::UserWarning"),
              pytest.mark.filterwarnings("ignore::FutureWarning")]

B = 4   # static batch of the test programs


@pytest.fixture(scope="module")
def setup(tmp_path_factory, watch_recordings):
    """A tiny pretrained tinycnn1d-train bundle, calibration/test recordings on disk, and an export folder
    holding the 'rows' training program (written by write_training_program)."""
    from imutune.data.recordings import save_npz
    from imutune.personalize.protocols import calibrate_then_use
    from imutune.signal.windows import WindowConfig, make_windows
    from imutune.train.config import TrainConfig
    from imutune.train.pretrain import pretrain

    root = tmp_path_factory.mktemp("ondevice")
    wc = WindowConfig(window_s=0.64, hop_s=0.64)
    src = [r for r in watch_recordings if r.user in ("subject01", "subject02")]
    tgt = [r for r in watch_recordings if r.user == "subject03"][:6]
    torch.manual_seed(0)
    bundle = pretrain(make_windows(src, wc), model_name="tinycnn1d-train", window=wc,
                      train_config=TrainConfig(epochs=1, device="cpu", seed=0), progress=False)
    cal, test = calibrate_then_use(tgt, window_s=wc.window_s)
    cal_files = [save_npz(r, root / "cal" / f"{i}.npz") for i, r in enumerate(cal)]
    test_files = [save_npz(r, root / "test" / f"{i}.npz") for i, r in enumerate(test)]
    ws = make_windows(src, wc)
    xs = bundle.normalizer(ws.x[:32])
    export = root / "export"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        manifest = write_training_program(bundle, export, xs, variant="rows", batch_size=B)
    wcal = make_windows(cal, wc)
    return {"root": root, "bundle": bundle, "xs": xs, "export": export, "manifest": manifest,
            "cal_files": cal_files, "test_files": test_files, "wcal": wcal, "wc": wc}


@pytest.fixture(scope="module")
def programs(setup):
    """Training programs of the setup's model by trainable set (exported on first use)."""
    cache = {"rows": (setup["export"] / TRAIN_ARTIFACT).read_bytes()}

    def get(variant: str) -> bytes:
        if variant not in cache:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                cache[variant] = export_training_program(setup["bundle"].model, setup["xs"], variant=variant,
                                                         batch_size=B).buffer
        return cache[variant]
    return get


def _data(setup, n: int = 24, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = setup["xs"][:n]
    y = rng.integers(0, setup["bundle"].model.num_classes, x.shape[0])
    w = rng.uniform(0.1, 1.0, x.shape[0]).astype(np.float32)
    return x, y, w


# --------------------------------------------------------------------------- the training-friendly model

def test_train_model_is_the_plain_model_with_the_same_weights():
    torch.manual_seed(0)
    plain = create_model("mobilecnn1d", in_channels=6, num_classes=7).eval()
    twin = create_model("mobilecnn1d-train", in_channels=6, num_classes=7).eval()
    assert set(twin.state_dict()) == set(plain.state_dict())
    twin.load_state_dict(plain.state_dict())
    x = torch.randn(3, 6, 100)
    with torch.no_grad():
        assert torch.allclose(twin(x), plain(x), atol=1e-6)
    with pytest.raises(ValueError, match="stem_pool"):
        create_model("tinycnn1d-train", in_channels=6, num_classes=3, stem_pool=True)


def test_conv_as_matmul_equals_conv1d():
    torch.manual_seed(0)
    conv = torch.nn.Conv1d(5, 7, 3, stride=2, padding=1, bias=True)
    m = ConvAsMatmul(conv)
    x = torch.randn(2, 5, 17)
    with torch.no_grad():
        assert torch.allclose(m(x.unsqueeze(2)).squeeze(2), conv(x), atol=1e-6)


def test_training_net_refuses_max_pool_after_the_first_trainable_layer():
    model = create_model("tinycnn1d", in_channels=6, num_classes=3, stem_pool=True).eval()
    with pytest.raises(ValueError, match="max-pool backward"):
        training_net(model, ["stem.0.weight", "head.weight"])
    net = training_net(model, ["head.weight", "head.bias"], check_input=torch.randn(2, 6, 32))  # frozen pool: fine
    assert {k for k, p in net.named_parameters() if p.requires_grad} == {"body.head.weight", "body.head.bias"}
    with pytest.raises(ValueError, match="not parameters"):
        training_net(model, ["head.nope"])


# --------------------------------------------------------------------------- export of each trainable set

@pytest.mark.parametrize("variant", ["head", "last-block", "rows"])
def test_export_of_each_trainable_set(setup, programs, variant):
    model = setup["bundle"].model
    tr = OnDeviceTrainer(programs(variant))
    expected = trainable_entries(model, variant_selection(model, variant))
    assert tr.trainable == expected
    assert tr.metadata["base_sha256"] == state_hash(model)
    assert tr.metadata["outputs"] == ["loss", "logits"] and tr.batch_size == B
    if variant == "head":
        assert expected == ["head.weight", "head.bias"]
    x, y, w = _data(setup, B)
    loss, logits = tr.forward_backward(x, y, w)
    with torch.no_grad():
        ref = model.eval()(torch.from_numpy(x))
    assert np.allclose(logits, ref.numpy(), atol=1e-4) and np.isfinite(loss)
    with pytest.raises(ValueError, match="exactly 4 windows"):
        tr.forward_backward(x[:2], y[:2], w[:2])


def test_manifest_records_trainable_names_shapes_and_base_hash(setup):
    e = setup["manifest"].artifacts[TRAIN_ARTIFACT]
    model = setup["bundle"].model
    assert e["kind"] == "training" and e["variant"] == "rows" and e["base_sha256"] == state_hash(model)
    shapes = dict(model.state_dict())
    assert all(list(shapes[t["name"]].shape) == t["shape"] for t in e["trainable"])
    assert e["parity_grad_max_abs_err"] <= 1e-4


# --------------------------------------------------------------------------- parity and masked rows

@pytest.mark.parametrize("variant", ["last-block", "rows"])
def test_executorch_sgd_matches_pytorch_after_50_steps(setup, programs, variant):
    from imutune.personalize.selective import rank_filters, select_filters

    model = setup["bundle"].model.eval()
    x, y, w = _data(setup)
    trainable = OnDeviceTrainer(programs(variant)).trainable
    masks = {}
    if variant == "rows":
        masks = row_masks(model, select_filters(rank_filters(model, x, device="cpu"), 0.25), trainable)
    tr = OnDeviceTrainer(programs(variant), lr=0.05, momentum=0.9, weight_decay=1e-3, masks=masks)
    batches = batch_indices(len(y), B, 50, seed=1)
    for idx in batches:
        tr.step(x[idx], y[idx], w[idx])
    got = tr.parameters()
    ref = eager_sgd(model, trainable, x, y, w, batches, lr=0.05, momentum=0.9, weight_decay=1e-3, masks=masks)
    assert weight_parity(got, ref) <= 1e-5
    base = model.state_dict()
    assert any(not torch.equal(got[k], base[k]) for k in got)           # it trained
    for k, m in masks.items():                                          # unselected rows keep their bits
        assert torch.equal(got[k][m == 0], base[k][m == 0])
        assert m.sum() == 0 or not torch.equal(got[k][m == 1], base[k][m == 1])


def test_batch_indices_cover_every_window_each_epoch():
    b = batch_indices(10, 4, 5, seed=0)
    assert b.shape == (5, 4)
    assert sorted(b.ravel()[:10].tolist()) == list(range(10))


# --------------------------------------------------------------------------- workflow, patch, errors

def test_personalize_on_device_writes_a_patch_apply_patch_accepts(setup, tmp_path):
    from imutune.cli import main
    from imutune.train.bundle import load_bundle

    out = tmp_path / "user"
    rc = main(["personalize-on-device", "--model", str(setup["export"]), "--data", *map(str, setup["cal_files"]),
               "--test-data", *map(str, setup["test_files"]), "--out", str(out), "--steps", "12", "--lr", "0.05",
               "--filters", "0.25", "--profile", "host"])
    assert rc == 0
    import json

    rep = json.loads((out / "ondevice_report.json").read_text())
    assert rep["steps"] == 12 and rep["threads"] == 1 and "after" in rep and "category_counts" in rep
    patch = load_patch(out / "patch.safetensors")
    base = load_bundle(setup["export"]).model
    assert patch.base_sha256 == state_hash(base)
    tuned = apply_patch(base, patch)              # verifies the patched hash
    assert state_hash(tuned) == rep["patched_sha256"] != rep["base_sha256"]
    # unselected filter rows are bit-identical in the patched model
    sel = rep["selected_filters"]
    for layer, rows in sel.items():
        keep = [i for i in range(base.state_dict()[f"{layer}.weight"].shape[0]) if i not in rows]
        assert torch.equal(tuned.state_dict()[f"{layer}.weight"][keep], base.state_dict()[f"{layer}.weight"][keep])
    rc = main(["apply-patch", "--base", str(setup["export"]), "--patch", str(out / "patch.safetensors"),
               "--out", str(tmp_path / "patched")])
    assert rc == 0 and state_hash(load_bundle(tmp_path / "patched").model) == rep["patched_sha256"]


def test_given_weights_are_used(setup):
    from imutune.ondevice.personalize import personalize_on_device

    n = len(setup["wcal"])
    patch, rep = personalize_on_device(setup["export"], setup["wcal"], config=OnDeviceConfig(steps=3, profile="host"),
                                       sample_weights=np.ones(n, np.float32))
    assert rep["weights_source"] == "given" and patch.n_values() > 0
    with pytest.raises(ValueError, match="sample_weights must have shape"):
        personalize_on_device(setup["export"], setup["wcal"], config=OnDeviceConfig(steps=1, profile="host"),
                              sample_weights=np.ones(n + 1, np.float32))


def test_training_program_of_another_model_is_refused(setup, tmp_path):
    import shutil

    from imutune.ondevice.personalize import open_export
    from imutune.train.bundle import save_bundle

    d = tmp_path / "export"
    shutil.copytree(setup["export"], d)
    b = setup["bundle"]
    other = create_model("tinycnn1d-train", in_channels=b.model.in_channels, num_classes=b.model.num_classes).eval()
    save_bundle(b.derive(other), d)
    with pytest.raises(ValueError, match="exported from base model sha256"):
        open_export(d)
    (d / TRAIN_ARTIFACT).write_bytes(b"not a program")
    with pytest.raises(ValueError, match="sha256"):
        open_export(d)


def test_calibration_file_with_unknown_classes_is_refused(setup, tmp_path):
    from imutune.data.recordings import Recording, load_npz, save_npz
    from imutune.ondevice.personalize import run_personalize_on_device

    good = load_npz(setup["cal_files"][0])
    bad = Recording(good.values, np.zeros_like(good.labels), good.sample_rate_hz, good.channels, ("SWIM",),
                    good.user, "swim_session")
    path = save_npz(bad, tmp_path / "swim.npz")
    with pytest.raises(ValueError, match=r"calibration recording 'swim' has classes \['SWIM'\].*does not know"):
        run_personalize_on_device(setup["export"], [path], tmp_path / "out", config=OnDeviceConfig(steps=1))
    assert not (tmp_path / "out").exists()


def test_missing_or_foreign_program_errors(setup, tmp_path):
    from imutune.cli import main

    with pytest.raises(FileNotFoundError, match=r"training program '.*nope\.pte' does not exist"):
        OnDeviceTrainer(tmp_path / "nope.pte")
    (tmp_path / "junk.pte").write_bytes(b"junk")
    with pytest.raises(ValueError, match="not an imutune training program"):
        OnDeviceTrainer(tmp_path / "junk.pte")
    with pytest.raises(ValueError, match="does not train"):
        OnDeviceTrainer((setup["export"] / TRAIN_ARTIFACT).read_bytes(), masks={"nope": torch.zeros(1)})
    assert main(["personalize-on-device", "--model", str(tmp_path), "--data", str(setup["cal_files"][0]),
                 "--out", str(tmp_path / "o")]) == 2
    with pytest.raises(ValueError, match="steps"):
        OnDeviceConfig(steps=0)


def test_bench_ondevice_reports_the_random_forest_reference_of_each_user():
    # issue 15: the on-device benchmark shows the classical reference fitted on the user's calibration windows
    from imutune.bench.ondevice import OnDeviceBenchConfig, _random_forest
    from imutune.personalize.reference import ReferenceConfig, fit_reference
    from imutune.signal.windows import Windows

    rng = np.random.default_rng(0)

    def windows(n):
        y = np.arange(n) % 3
        x = rng.normal(size=(n, 3, 20)).astype(np.float32)
        x[np.arange(n), y] += 2.0                                    # class k lifts channel k
        return Windows(x, y, np.zeros(n, np.int64), np.array(["u"] * n), ("a", "b", "c"), ("x", "y", "z"))

    wc, wt = windows(30), windows(60)
    got = _random_forest(wc, wt, OnDeviceBenchConfig(seed=3))
    want = fit_reference(wc, config=ReferenceConfig(methods=("random_forest",), seed=3)).evaluate(wt)["random_forest"]
    assert got == want and got["macro_f1"] > 0.9
