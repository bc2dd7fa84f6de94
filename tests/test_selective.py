"""Selective filter fine-tuning: layers, Borda count, selection, bit-identical frozen entries,
personalization and the ``personalize`` command."""
from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from imutune.models.resnet1d import count_parameters, create_model
from imutune.personalize.selective import (
    Selection,
    SelectiveConfig,
    activation_distances,
    borda_count,
    conv_layers,
    count_trainable,
    entry_masks,
    finetune_selected,
    full_selection,
    last_block_selection,
    personalize,
    random_selection,
    rank_filters,
    reference_distances,
    select_filters,
)
from imutune.train.loop import TrainConfig


pytestmark = pytest.mark.usefixtures("one_torch_thread")   # tests/conftest.py


FAST = TrainConfig(epochs=4, batch_size=8, lr=5e-3, weight_decay=1e-2, device="cpu")


@pytest.fixture(scope="module")
def model_and_data():
    torch.manual_seed(0)
    m = create_model("tinycnn1d", in_channels=6, num_classes=4)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((24, 6, 32)).astype(np.float32)
    y = np.arange(24) % 4
    m.train()
    with torch.no_grad():                       # give the batch norms non-trivial running statistics
        for _ in range(3):
            m(torch.from_numpy(x * 2 + 1))
    m.eval()
    xd = (x + 0.7 * rng.standard_normal(x.shape)).astype(np.float32)
    return m, x, xd, y


def test_conv_layers_pair_each_conv_with_its_batch_norm(model_and_data):
    m = model_and_data[0]
    layers = {l.name: l.bn_name for l in conv_layers(m)}
    assert layers == {"stem.0": "stem.1", "stages.0.0.conv1": "stages.0.0.bn1", "stages.0.0.conv2": "stages.0.0.bn2",
                      "stages.1.0.conv1": "stages.1.0.bn1", "stages.1.0.conv2": "stages.1.0.bn2",
                      "stages.1.0.downsample.0": "stages.1.0.downsample.1"}
    stem = conv_layers(m)[0]
    assert stem.n_filters == 8 and stem.params_per_filter == 6 * 5 + 2


def test_borda_count_hand_checked_example():
    # 3 samples (voters) x 4 filters (candidates); larger distance = more affected
    d = np.array([[0.1, 0.5, 0.3, 0.9],     # ranks 1 3 2 4 -> points 0 2 1 3
                  [0.2, 0.1, 0.4, 0.3],     # ranks 2 1 4 3 -> points 1 0 3 2
                  [0.5, 0.5, 0.1, 0.2]])    # tie at the top: ranks 3.5 3.5 1 2 -> points 2.5 2.5 0 1
    np.testing.assert_array_equal(borda_count(d), [3.5, 4.5, 4.0, 6.0])
    sel = select_filters({"layer": borda_count(d)}, 0.5)
    np.testing.assert_array_equal(sel.filters["layer"], [False, True, False, True])
    # 0.25 of 4 filters -> the single winner
    np.testing.assert_array_equal(select_filters({"layer": borda_count(d)}, 0.25).filters["layer"],
                                  [False, False, False, True])
    with pytest.raises(ValueError, match=r"distances must have shape \(N, F\) with N, F > 0, got \(0, 3\)"):
        borda_count(np.zeros((0, 3)))


def test_select_filters_per_layer_and_global(model_and_data):
    m = model_and_data[0]
    scores = {l.name: np.arange(l.n_filters, dtype=float) for l in conv_layers(m)}
    sel = select_filters(scores, 0.25)
    for l in conv_layers(m):
        k = max(1, round(0.25 * l.n_filters))
        assert sel.filters[l.name].sum() == k
        assert sel.filters[l.name][-k:].all()                       # the highest scores
    # ties: lower index first
    tie = select_filters({"a": np.ones(4)}, 0.5).filters["a"]
    np.testing.assert_array_equal(tie, [True, True, False, False])
    # at least one filter per layer
    assert all(v.sum() == 1 for v in select_filters(scores, 0.01).filters.values())
    g = select_filters({k: v / max(len(v) - 1, 1) for k, v in scores.items()}, 0.2, budget="global", model=m)
    layers = {l.name: l for l in conv_layers(m)}
    used = sum(layers[k].params_per_filter * v.sum() for k, v in g.filters.items())
    total = sum(l.params_per_filter * l.n_filters for l in layers.values())
    assert 0 < used <= 0.2 * total
    with pytest.raises(ValueError, match="needs the model"):
        select_filters(scores, 0.2, budget="global")


@pytest.mark.parametrize("fraction", [0, -0.1, 1.5, float("nan"), "x"])
def test_fraction_outside_0_1_is_an_error(model_and_data, fraction):
    m = model_and_data[0]
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        select_filters({"stem.0": np.ones(8)}, fraction)
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        random_selection(m, fraction)
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        SelectiveConfig(fraction=fraction)


def test_distances_and_ranking(model_and_data):
    m, x, xd, _ = model_and_data
    same = activation_distances(m, x, x)
    assert all(np.all(v == 0) for v in same.values())
    d = activation_distances(m, x, xd)
    assert {k: v.shape for k, v in d.items()}["stages.1.0.conv2"] == (24, 16)
    assert all(np.all(v > 0) for v in d.values())
    r = reference_distances(m, xd)
    assert set(r) == set(d) and all(np.all(v >= 0) for v in r.values())
    s = rank_filters(m, xd, x)
    assert all(0 <= v.min() and v.max() <= 1 for v in s.values())
    with pytest.raises(ValueError, match="same shape"):
        activation_distances(m, x, xd[:5])
    with pytest.raises(ValueError, match="channels"):
        rank_filters(m, xd[:, :3])


def _assert_only_selected_changed(before, after, masks):
    changed_selected = 0
    for k, v in before.items():
        w = after[k]
        mk = masks[k]
        if mk is False:
            assert torch.equal(v, w), f"frozen entry {k} changed"
        elif mk is not True:
            mm = mk.expand_as(v)
            assert torch.equal(v[~mm], w[~mm]), f"unselected rows of {k} changed"
            changed_selected += int((v[mm] != w[mm]).sum())
    return changed_selected


@pytest.mark.parametrize("make", ["borda", "random", "global", "layer", "deep"])
def test_unselected_entries_stay_bit_identical(model_and_data, make):
    m, x, xd, y = model_and_data
    scores = rank_filters(m, xd, x)
    sel = {"borda": lambda: select_filters(scores, 0.25),
           "random": lambda: random_selection(m, 0.25, seed=1),
           "global": lambda: select_filters(scores, 0.3, budget="global", model=m),
           "layer": lambda: last_block_selection(m),
           "deep": lambda: select_filters(scores, 0.1, budget="deep", model=m, deep_pool=1.5)}[make]()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    tuned = copy.deepcopy(m)
    res = finetune_selected(tuned, xd, y, sel, config=FAST)
    after = tuned.state_dict()
    masks = entry_masks(m, sel)
    changed = _assert_only_selected_changed(before, after, masks)
    assert res["frozen_drift"] == 0
    if make != "layer":
        assert changed > 0                                    # selected rows (and their BN stats) did move
    assert not torch.equal(before["head.weight"], after["head.weight"])
    assert res["trainable_parameters"] == count_trainable(m, sel) < count_parameters(m)
    assert all(p.requires_grad for p in tuned.parameters())   # flags restored
    # running statistics of a partly selected batch norm moved only on selected channels
    bn_key = "stages.1.0.bn1.running_mean" if make == "deep" else "stages.0.0.bn1.running_mean"
    if isinstance(masks[bn_key], torch.Tensor) and make != "layer":
        mk = masks[bn_key]
        assert not torch.equal(before[bn_key][mk], after[bn_key][mk])


def test_full_selection_trains_everything(model_and_data):
    m, _, xd, y = model_and_data
    tuned = copy.deepcopy(m)
    res = finetune_selected(tuned, xd, y, full_selection(m), config=FAST,
                            eval_fn=lambda mm: 0.5)
    assert res["trainable_parameters"] == count_parameters(m)
    assert [c[0] for c in res["curve"]] == list(range(FAST.epochs + 1))
    assert all(not torch.equal(a, b) for (k, a), b in zip(m.state_dict().items(), tuned.state_dict().values())
               if a.is_floating_point())


def test_selection_errors(model_and_data):
    m, _, xd, y = model_and_data
    with pytest.raises(ValueError, match="not a conv layer"):
        entry_masks(m, Selection({"nope": np.ones(3, bool)}))
    with pytest.raises(ValueError, match="shape"):
        entry_masks(m, Selection({"stem.0": np.ones(3, bool)}))
    with pytest.raises(ValueError, match="trains no parameter"):
        finetune_selected(copy.deepcopy(m), xd, y, Selection({}, ()), config=FAST)


def test_selective_training_runs_on_the_one_loop(model_and_data):
    """finetune_selected is imutune.train.loop.train with hooks: same result fields, same steps."""
    from imutune.train.loop import train

    m, x, xd, y = model_and_data
    res = finetune_selected(copy.deepcopy(m), xd, y, full_selection(m), config=FAST)
    plain = copy.deepcopy(m)
    ref = train(plain, xd, y, config=FAST, progress=False)
    assert res["steps"] == ref["steps"] == FAST.epochs * 3 and res["resumed_from_epoch"] == 0
    assert res["loss"] == ref["loss"]                # full selection = plain training, bit for bit


def test_selective_cleans_up_when_training_fails(model_and_data):
    m, x, xd, y = model_and_data

    class NanLoss(torch.nn.Module):
        def forward(self, logits, targets, weights):
            return logits.sum() * float("nan")

    sel = random_selection(m, 0.25, seed=1)
    tuned = copy.deepcopy(m)
    with pytest.raises(ValueError, match=r"loss became nan at epoch 1 \(selective\)"):
        finetune_selected(tuned, xd, y, sel, config=FAST, loss_fn=NanLoss())
    assert all(p.requires_grad for p in tuned.parameters())                        # flags restored
    assert not any("forward" in vars(mod) for mod in tuned.modules())              # partial BN forwards removed
    _assert_only_selected_changed(m.state_dict(), tuned.state_dict(), entry_masks(m, sel))
    assert torch.equal(m.head.weight, tuned.head.weight)                           # no optimizer step happened
    with pytest.raises(ValueError, match=r"y must have shape \(24,\)"):
        finetune_selected(tuned, xd, y[:-1], sel, config=FAST)
    assert all(p.requires_grad for p in tuned.parameters())
    assert not any("forward" in vars(mod) for mod in tuned.modules())


def test_selection_hooks_refuse_checkpoints(model_and_data, tmp_path):
    from imutune.personalize.selective import selection_hooks
    from imutune.train.loop import train

    m, x, xd, y = model_and_data
    tuned = copy.deepcopy(m)
    with pytest.raises(ValueError, match=r"checkpoint_path cannot be used with a hook .*_RowsConvHook.*_PartialBNHook"):
        train(tuned, xd, y, config=FAST, hooks=selection_hooks(tuned, random_selection(m, 0.25, seed=1)),
              checkpoint_path=tmp_path / "c.ckpt", progress=False)
    assert not any("forward" in vars(mod) for mod in tuned.modules())


# --------------------------------------------------------------------------- cached frozen prefix (issue 14)

def _dropout_copy(m, p=0.3):
    """The fixture model with dropout before the head (so the RNG stream must match as well)."""
    from dataclasses import replace as _replace

    from imutune.models.resnet1d import ResNet1d

    d = ResNet1d(6, 4, _replace(m.config, dropout=p))
    d.load_state_dict(m.state_dict())
    return d.eval()


def _rows(m, layer_prefixes, k=2):
    return Selection({l.name: (np.arange(l.n_filters) < k) if l.name.startswith(layer_prefixes)
                      else np.zeros(l.n_filters, bool) for l in conv_layers(m)}, ("head",))


@pytest.mark.parametrize("case", ["last_block_rows", "second_block_partial_bn", "head_only", "weighted"])
def test_cached_prefix_training_equals_uncached(model_and_data, case):
    from imutune.personalize.selective import frozen_prefix
    from imutune.train.losses import FilterLoss

    m0, _, xd, y = model_and_data
    m = _dropout_copy(m0)
    sel = {"last_block_rows": _rows(m, ("stages.1.0.conv2",)),
           "second_block_partial_bn": _rows(m, ("stages.1.",), k=5),
           "head_only": Selection({}, ("head",)),
           "weighted": _rows(m, ("stages.1.0.conv2",))}[case]
    expect_units = {"last_block_rows": 2, "second_block_partial_bn": 2, "head_only": 3, "weighted": 2}[case]
    assert frozen_prefix(m, sel) == expect_units
    kw = {}
    if case == "weighted":
        kw = {"loss_fn": FilterLoss(), "sample_weights": np.linspace(0.1, 1.0, len(y)).astype(np.float32)}
    runs = {}
    for cache in (False, True):
        tuned = copy.deepcopy(m)
        res = finetune_selected(tuned, xd, y, sel, config=FAST, cache_prefix=cache, eval_fn=lambda mm: 0.0, **kw)
        runs[cache] = (tuned, res)
    (plain, r0), (cached, r1) = runs[False], runs[True]
    assert r0["cached_units"] == 0 and r1["cached_units"] == expect_units
    assert r1["loss"] == r0["loss"] and r1["steps"] == r0["steps"] and r1["frozen_drift"] == 0
    assert [c[0] for c in r1["curve"]] == [c[0] for c in r0["curve"]] == list(range(FAST.epochs + 1))
    for k, v in plain.state_dict().items():
        assert torch.equal(v, cached.state_dict()[k]), k                 # same weights after N steps, bit for bit
    assert not torch.equal(plain.head.weight, m.head.weight)             # and training did happen
    assert all(p.requires_grad for p in cached.parameters()) and not cached.training


def test_frozen_prefix_is_empty_when_the_stem_trains_or_the_model_is_not_a_chain(model_and_data):
    from imutune.personalize.selective import frozen_prefix

    m, _, xd, y = model_and_data
    assert frozen_prefix(m, full_selection(m)) == 0
    assert frozen_prefix(m, _rows(m, ("stem.",))) == 0
    assert frozen_prefix(m, Selection({}, ("stages.1",))) == 2          # a whole module trained in full
    other = torch.nn.Sequential(torch.nn.Conv1d(6, 4, 3), torch.nn.AdaptiveAvgPool1d(1), torch.nn.Flatten(),
                                torch.nn.Linear(4, 4))
    assert frozen_prefix(other, Selection({}, ("3",))) == 0
    res = finetune_selected(other, xd, y, Selection({}, ("3",)), config=FAST, cache_prefix=True)
    assert res["cached_units"] == 0 and res["steps"] > 0


def test_prefix_activations_do_not_depend_on_the_batch_size(model_and_data):
    """The exactness the cache relies on: per-window conv outputs are the same in any batch of >= 2 windows."""
    from imutune.personalize.selective import _prefix_activations

    m, _, xd, _ = model_and_data
    full = _prefix_activations(m, 2, xd, torch.device("cpu"), batch_size=256)      # (24, 16, T')
    for bs in (2, 3, 5, 16):
        np.testing.assert_array_equal(_prefix_activations(m, 2, xd, torch.device("cpu"), batch_size=bs), full)
    with torch.no_grad():
        for idx in (torch.tensor([3, 17]), torch.arange(24)[torch.randperm(24)[:9]]):
            direct = m.stages[0](m.stem(torch.from_numpy(xd)[idx])).numpy()
            np.testing.assert_array_equal(direct, full[idx.numpy()])


def test_personalize_paired_and_pairfree(model_and_data):
    from imutune.signal.windows import Normalizer, WindowConfig
    from imutune.train.bundle import ModelBundle

    m, x, xd, y = model_and_data
    norm = Normalizer(np.zeros(6, np.float32), np.ones(6, np.float32))
    b = ModelBundle(m, "tinycnn1d", ("a", "b", "c", "d"), tuple(f"c{i}" for i in range(6)),
                    WindowConfig(window_s=0.64, hop_s=0.32), norm)
    cfg = SelectiveConfig(fraction=0.25, train=FAST)
    per, info = personalize(b, xd, y, config=cfg, x_clean=x)
    assert info["ranking"] == "paired" and info["selected_filters"] > 0
    assert per.model is not m and per.class_names == b.class_names
    per2, info2 = personalize(b, xd, y, config=cfg)
    assert info2["ranking"] == "batchnorm"
    per3, info3 = personalize(b, xd, y, config=SelectiveConfig(fraction=0.25, train=FAST, loss="filterloss"))
    assert info3["category_counts"] is not None
    per4, info4 = personalize(b, xd, y % 2, config=cfg, class_names=("p", "q"))
    assert info4["head_replaced"] and per4.model.num_classes == 2


# --------------------------------------------------------------------------- command line

@pytest.fixture(scope="module")
def cli_setup(tmp_path_factory, watch_recordings):
    from imutune.data.recordings import save_npz
    from imutune.signal.windows import WindowConfig, make_windows
    from imutune.train.bundle import save_bundle
    from imutune.train.pretrain import pretrain

    root = tmp_path_factory.mktemp("personalize")
    win = WindowConfig(hop_s=2.0)
    src = make_windows([r for r in watch_recordings if r.user == "subject01"], win)
    b = pretrain(src, model_name="tinycnn1d", window=win, train_config=TrainConfig(epochs=1, device="cpu"),
                 progress=False)
    save_bundle(b, root / "base")
    tgt = [r for r in watch_recordings if r.user == "subject02" and r.labels[0] < 3]   # 3 exercises: small and fast
    for part, recs in (("train", [r for r in tgt if r.meta["side"] == 0]), ("test", [r for r in tgt if r.meta["side"] == 1])):
        for r in recs:
            save_npz(r, root / part / f"{r.name}.npz")
    return root


def test_personalize_command_writes_a_small_patch(cli_setup, tmp_path):
    from imutune.cli import main
    from imutune.personalize.patch import load_patch, state_hash
    from imutune.train.bundle import load_bundle

    root = cli_setup
    out = tmp_path / "user"
    rc = main(["personalize", "--base", str(root / "base"), "--data", str(root / "train"), "--filters", "0.25",
               "--out", str(out), "--test-data", str(root / "test"), "--distortion", "bias:0.3", "--epochs", "3",
               "--write-bundle", "--no-progress", "--device", "cpu"])
    assert rc == 0
    rep = json.loads((out / "personalize_report.json").read_text())
    assert rep["ranking"] == "paired" and 0 < rep["patch_fraction"] < 1
    assert {"before", "after"} <= set(rep)
    p = load_patch(out / "patch.safetensors")
    assert p.base_sha256 == state_hash(load_bundle(root / "base").model)
    assert state_hash(load_bundle(out / "model").model) == p.patched_sha256
    # apply-patch gives the same bundle
    rc = main(["apply-patch", "--base", str(root / "base"), "--patch", str(out / "patch.safetensors"),
               "--out", str(tmp_path / "applied")])
    assert rc == 0 and state_hash(load_bundle(tmp_path / "applied").model) == p.patched_sha256
    # pair-free ranking without clean data
    rc = main(["personalize", "--base", str(root / "base"), "--data", str(root / "train"), "--out",
               str(tmp_path / "pf"), "--epochs", "2", "--no-progress", "--device", "cpu"])
    assert rc == 0
    assert json.loads((tmp_path / "pf" / "personalize_report.json").read_text())["ranking"] == "batchnorm"
    # deep budget + combined ranking (user shift against the batch-norm statistics): the prefix is cached
    rc = main(["personalize", "--base", str(root / "base"), "--data", str(root / "train"), "--out",
               str(tmp_path / "deep"), "--epochs", "2", "--no-progress", "--device", "cpu", "--budget", "deep",
               "--ranking", "combined", "--distortion", "gain:0.3"])
    assert rc == 0
    rep = json.loads((tmp_path / "deep" / "personalize_report.json").read_text())
    assert rep["ranking_method"] == "combined" and rep["cached_units"] >= 1
    # gradient ranking from the user's labels
    rc = main(["personalize", "--base", str(root / "base"), "--data", str(root / "train"), "--out",
               str(tmp_path / "grad"), "--epochs", "2", "--no-progress", "--device", "cpu", "--ranking", "gradient"])
    assert rc == 0
    rep = json.loads((tmp_path / "grad" / "personalize_report.json").read_text())
    assert rep["ranking_method"] == "gradient" and rep["selected_filters"] > 0


def test_personalize_command_errors(cli_setup, tmp_path, capsys):
    from imutune.cli import main

    root = cli_setup
    base = ["personalize", "--base", str(root / "base"), "--data", str(root / "train"), "--out", str(tmp_path / "o"),
            "--epochs", "1", "--no-progress"]
    assert main(base + ["--filters", "1.5"]) == 2
    assert "(0, 1]" in capsys.readouterr().err
    assert main(base + ["--filters", "0"]) == 2
    with pytest.raises(SystemExit, match="2"):
        main(base + ["--ranking", "users"])
    assert "invalid choice: 'users'" in capsys.readouterr().err
    assert main(base + ["--distortion", "noise:99"]) == 2
    assert "must be in" in capsys.readouterr().err
    assert main(base + ["--distortion", "noise:10", "--clean-data", str(root / "train")]) == 2
    assert main(base + ["--clean-data", str(root / "test")]) == 2
    assert "same recordings" in capsys.readouterr().err


# --------------------------------------------------------------------------- pay only for what is trained (issue 14)

def test_rows_only_conv_gradient_equals_the_rows_of_the_whole_gradient():
    from imutune.personalize.selective import _RowsConvFn

    torch.manual_seed(0)
    conv = torch.nn.Conv1d(6, 10, 3, stride=2, padding=1, bias=False)
    x = torch.randn(5, 6, 33, requires_grad=True)
    go = torch.randn(5, 10, 17)
    gx, gw = torch.autograd.grad(conv(x), (x, conv.weight), go)
    idx = torch.tensor([1, 4, 9])
    rows = torch.nn.Parameter(conv.weight.detach()[idx].clone())            # (S, C, k): the compact parameter
    frozen = conv.weight.detach()
    y = _RowsConvFn.apply(x, frozen, rows, idx, conv.stride, conv.padding, conv.dilation)
    assert torch.equal(y, conv(x))                                          # same forward, bit for bit
    rx, rr = torch.autograd.grad(y, (x, rows), go)
    assert torch.equal(rx, gx)
    assert rr.shape == (3, 6, 3)                                            # no (F, C, k) gradient is formed
    assert torch.equal(rr, gw[idx])
    assert frozen.grad is None


@pytest.mark.parametrize("case", ["borda", "deep", "random_cached"])
def test_rows_only_gradients_equal_masked_gradients(model_and_data, case):
    """Training with rows-only weight gradients gives the same weights after N steps as whole-tensor
    gradients masked afterwards (and the same losses), bit for bit."""
    m, x, xd, y = model_and_data
    scores = rank_filters(m, xd, x)
    sel = {"borda": lambda: select_filters(scores, 0.25),
           "deep": lambda: select_filters(scores, 0.2, budget="deep", model=m, deep_pool=1.5),
           "random_cached": lambda: random_selection(m, 0.25, seed=3)}[case]()
    runs = {}
    for rows_only in (False, True):
        tuned = copy.deepcopy(m)
        res = finetune_selected(tuned, xd, y, sel, config=FAST, rows_only=rows_only,
                                cache_prefix=case == "random_cached")
        runs[rows_only] = (tuned, res)
    (masked, r0), (rows, r1) = runs[False], runs[True]
    assert r1["loss"] == r0["loss"] and r1["steps"] == r0["steps"] == FAST.epochs * 3
    for k, v in masked.state_dict().items():
        assert torch.equal(v, rows.state_dict()[k]), k
    assert not torch.equal(rows.head.weight, m.head.weight)
    assert not any("forward" in vars(mod) for mod in rows.modules())      # rows-only forwards removed
    _assert_only_selected_changed(m.state_dict(), rows.state_dict(), entry_masks(m, sel))


def test_rows_only_optimiser_steps_compact_rows_not_whole_weights(model_and_data):
    """With rows_only the optimiser's parameters for a partly selected conv layer are its S selected rows
    (S, C, k), not the (F, C, k) weight; each step writes them back into the weight; the hooks' on_end
    restores the forwards and flags."""
    from imutune.personalize.selective import conv_layers, selection_hooks
    from imutune.train.loop import train

    m, _x, xd, y = model_and_data
    tuned = copy.deepcopy(m)
    sel = random_selection(tuned, 0.25, seed=1)
    hooks = selection_hooks(tuned, sel)
    groups = hooks[1].param_groups(tuned, FAST)
    stepped = {id(p): p for g in groups for p in g["params"]}
    partial = [l for l in conv_layers(tuned) if 0 < sel.filters[l.name].sum() < l.n_filters]
    assert partial
    for l in partial:
        assert id(l.conv.weight) not in stepped and not l.conv.weight.requires_grad
    compact = hooks[0].params
    assert [tuple(r.shape) for r in compact] == [(int(sel.filters[l.name].sum()),) + tuple(l.conv.weight.shape[1:])
                                                 for l in partial]
    assert all(id(r) in stepped for r in compact)
    train(tuned, xd, y, config=FAST, hooks=hooks, progress=False)
    for l, r in zip(partial, compact):
        idx = torch.from_numpy(np.flatnonzero(sel.filters[l.name]))
        assert torch.equal(l.conv.weight[idx], r.detach())                   # written back after every step
        assert not torch.equal(r.detach(), m.state_dict()[f"{l.name}.weight"][idx])   # and they trained
        assert l.conv.weight.requires_grad and "forward" not in vars(l.conv)


def test_partial_batch_norm_is_one_pass_with_batch_statistics_for_selected_channels():
    from imutune.personalize.selective import _PartialBN

    torch.manual_seed(0)
    bn = torch.nn.BatchNorm1d(6)
    with torch.no_grad():
        bn.running_mean.copy_(torch.randn(6))
        bn.running_var.copy_(torch.rand(6) + 0.5)
        bn.weight.copy_(torch.rand(6) + 0.5)
        bn.bias.copy_(torch.randn(6))
    mask = torch.tensor([True, False, True, False, False, True])
    ref = copy.deepcopy(bn)
    pb = _PartialBN(bn, mask)
    x = torch.randn(4, 6, 9) * 3 + 1
    bn.train()
    out = pb(x)
    ref.train()
    trained = ref(x)                                         # batch statistics, updates the running stats
    ref.eval()
    frozen = copy.deepcopy(bn).eval()(x)                     # the frozen running statistics
    torch.testing.assert_close(out[:, mask], trained[:, mask], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out[:, ~mask], frozen[:, ~mask], rtol=1e-6, atol=1e-6)
    (out * torch.randn_like(out)).sum().backward()
    assert torch.all(bn.weight.grad[~mask] == 0) and torch.all(bn.weight.grad[mask] != 0)
    pb.commit()
    torch.testing.assert_close(bn.running_mean[mask], ref.running_mean[mask])
    torch.testing.assert_close(bn.running_var[mask], ref.running_var[mask])
    assert torch.equal(bn.running_mean[~mask], pb.frozen_rm[~mask])


def test_deep_budget_leaves_a_long_frozen_prefix(model_and_data):
    from imutune.personalize.selective import backward_flops, frozen_prefix

    m, x, xd, _ = model_and_data
    scores = rank_filters(m, xd, x)
    layers = {l.name: l for l in conv_layers(m)}
    total = sum(l.params_per_filter * l.n_filters for l in layers.values())
    deep = select_filters(scores, 0.1, budget="deep", model=m, deep_pool=1.5)
    glob = select_filters(scores, 0.1, budget="global", model=m)
    used = sum(layers[k].params_per_filter * v.sum() for k, v in deep.filters.items())
    assert 0 < used <= 0.1 * total
    assert frozen_prefix(m, deep) == 2 > frozen_prefix(m, glob)           # only the last block trains
    assert all(not v.any() for k, v in deep.filters.items() if not k.startswith("stages.1."))
    per = select_filters(scores, 0.1)
    f_deep, f_per = backward_flops(m, deep, (6, 32)), backward_flops(m, per, (6, 32))
    f_full = backward_flops(m, full_selection(m), (6, 32))
    assert f_full["backward"] == f_full["full_backward"] and f_full["forward"] == f_full["full_forward"]
    assert f_deep["backward"] < f_per["backward"] < f_full["backward"]
    assert f_deep["forward"] < f_full["forward"]
    assert backward_flops(m, per, (6, 32), rows_only=False)["backward"] > f_per["backward"]
    for bad in (0.5, "x", float("nan")):
        with pytest.raises(ValueError, match="deep_pool must be a number >= 1"):
            select_filters(scores, 0.1, budget="deep", model=m, deep_pool=bad)
    with pytest.raises(ValueError, match="budget='deep' needs the model"):
        select_filters(scores, 0.1, budget="deep")
    with pytest.raises(ValueError, match="must be one of"):
        SelectiveConfig(budget="deepest")


# --------------------------------------------------------------------------- rank for the user shift (issue 14)

def _shift_model():
    """tinycnn1d whose stem filter 5 reads only channel 5 and the other stem filters never read it."""
    torch.manual_seed(0)
    m = create_model("tinycnn1d", in_channels=6, num_classes=4).eval()
    with torch.no_grad():
        w = m.stem[0].weight                                   # (8, 6, 5)
        w[:, 5] = 0.0
        w[5] = 0.0
        w[5, 5] = torch.randn(5)
    return m


def test_user_shift_ranking_puts_the_shifted_filter_first():
    from imutune.personalize.selective import activation_statistics, user_shift_distances

    m = _shift_model()
    rng = np.random.default_rng(0)
    xs = rng.standard_normal((40, 6, 32)).astype(np.float32)
    ys = np.arange(40) % 4
    xt = rng.standard_normal((20, 6, 32)).astype(np.float32)
    yt = np.arange(20) % 4
    xt[:, 5] = xt[:, 5] * 2.0 + 1.5                            # the target user differs on channel 5 only
    src = activation_statistics(m, xs, ys)
    assert src["groups"] == [0, 1, 2, 3] and src["layers"]["stem.0"][0].shape == (4, 8)
    d = user_shift_distances(m, xt, yt, source=src)
    assert d["stem.0"].shape == (4, 8)                          # one voter per class
    assert np.all(d["stem.0"].argmax(axis=1) == 5)
    scores = rank_filters(m, xt, ranking="user_shift", y=yt, source=src)
    assert scores["stem.0"].argmax() == 5 and scores["stem.0"][5] == 1.0   # first for every voter
    assert select_filters(scores, 0.125).filters["stem.0"].tolist() == [i == 5 for i in range(8)]
    # the same data for source and target: no shift at all
    same = user_shift_distances(m, xs, ys, source=src)
    assert max(float(v.max()) for v in same.values()) < 1e-6
    # default source: the batch-norm running statistics (one voter)
    assert user_shift_distances(m, xt, yt)["stem.0"].shape == (1, 8)
    with pytest.raises(ValueError, match="give y_target"):
        user_shift_distances(m, xt, source=src)
    with pytest.raises(ValueError, match=r"y must have shape \(20,\)"):
        user_shift_distances(m, xt, yt[:-1], source=src)
    with pytest.raises(ValueError, match="do not overlap"):
        user_shift_distances(m, xt, yt + 10, source=src)
    with pytest.raises(ValueError, match="must be one of"):
        rank_filters(m, xt, ranking="users")


def test_combined_ranking_is_the_borda_count_of_both_rankings():
    from imutune.personalize.selective import activation_statistics

    m = _shift_model()
    rng = np.random.default_rng(1)
    xs = rng.standard_normal((24, 6, 32)).astype(np.float32)
    y = np.arange(24) % 4
    xt = xs.copy()
    xt[:, 5] += 2.0                                             # user shift: filter 5 of the stem
    xd = xt.copy()
    xd[:, 0] += 3.0                                             # device distortion on channel 0
    src = activation_statistics(m, xs, y)
    dist = rank_filters(m, xd, xt)
    shift = rank_filters(m, xd, ranking="user_shift", y=y, source=src)
    comb = rank_filters(m, xd, xt, ranking="combined", y=y, source=src)
    for k in dist:
        pts = borda_count(np.stack([dist[k], shift[k]])) / (2 * max(len(dist[k]) - 1, 1))
        np.testing.assert_allclose(comb[k], pts)
    assert dist["stem.0"][5] == 0.0                             # the distortion does not reach filter 5 ...
    assert shift["stem.0"].argmax() == 5                        # ... the user shift does
    assert comb["stem.0"][5] > dist["stem.0"][5]


@pytest.mark.parametrize("make", ["borda", "deep"])
def test_frozen_bn_statistics_keep_running_statistics_and_train_selected_scale_and_shift(model_and_data, make):
    from imutune.personalize.selective import _PartialBN

    m, x, xd, y = model_and_data
    scores = rank_filters(m, xd, x)
    sel = (select_filters(scores, 0.25) if make == "borda"
           else select_filters(scores, 0.1, budget="deep", model=m, deep_pool=1.5))
    masks = entry_masks(m, sel)
    partial = [k[:-len(".weight")] for k, mk in masks.items()
               if isinstance(mk, torch.Tensor) and k.endswith(".weight") and f"{k[:-7]}.running_mean" in masks]
    assert partial                                              # the case has partly selected batch norms
    before = {k: v.clone() for k, v in m.state_dict().items()}
    seen_modes, calls = [], []
    tuned = copy.deepcopy(m)
    bns = {n: mod for n, mod in tuned.named_modules() if n in partial}
    hooks = [mod.register_forward_pre_hook(lambda mod, inp: seen_modes.append(mod.training)) for mod in bns.values()]
    orig_call = _PartialBN.__call__
    _PartialBN.__call__ = lambda self, inp: calls.append(1) or orig_call(self, inp)
    try:
        res = finetune_selected(tuned, xd, y, sel, config=FAST, bn_statistics="frozen")
    finally:
        _PartialBN.__call__ = orig_call
        for h in hooks:
            h.remove()
    after = tuned.state_dict()
    assert res["frozen_drift"] == 0 and not calls               # no partial batch-norm pass
    assert seen_modes and not any(seen_modes)                   # partly selected batch norms ran in eval mode
    for name in partial:
        for buf in ("running_mean", "running_var", "num_batches_tracked"):
            assert torch.equal(before[f"{name}.{buf}"], after[f"{name}.{buf}"]), f"{name}.{buf} changed"
        mk = masks[f"{name}.weight"].reshape(-1)
        for par in ("weight", "bias"):
            assert torch.equal(before[f"{name}.{par}"][~mk], after[f"{name}.{par}"][~mk])
        assert not torch.equal(before[f"{name}.weight"][mk], after[f"{name}.weight"][mk])
    # the batch-statistics mode moves the selected channels' running statistics instead
    other = copy.deepcopy(m)
    finetune_selected(other, xd, y, sel, config=FAST, bn_statistics="batch")
    name = partial[0]
    mk = masks[f"{name}.weight"].reshape(-1)
    assert not torch.equal(before[f"{name}.running_mean"][mk], other.state_dict()[f"{name}.running_mean"][mk])


def test_bn_statistics_errors(model_and_data):
    m, x, xd, y = model_and_data
    with pytest.raises(ValueError, match=r"bn_statistics must be one of \['batch', 'frozen'\], got 'running'"):
        finetune_selected(copy.deepcopy(m), xd, y, full_selection(m), config=FAST, bn_statistics="running")
    with pytest.raises(ValueError, match="bn_statistics must be one of"):
        SelectiveConfig(bn_statistics="none")


def test_selective_preset_is_finetune_at_ten_times_the_learning_rate():
    from imutune.train.config import FINETUNE, SELECTIVE

    assert SelectiveConfig().train == SELECTIVE and SelectiveConfig().bn_statistics == "frozen"
    assert SELECTIVE.lr == pytest.approx(10 * FINETUNE.lr)
    assert {k: v for k, v in SELECTIVE.__dict__.items() if k != "lr"} == \
        {k: v for k, v in FINETUNE.__dict__.items() if k != "lr"}


def test_gradient_ranking_scores_each_filter_by_its_squared_loss_gradient_per_class():
    from imutune.personalize.selective import gradient_magnitudes

    torch.manual_seed(0)
    m = create_model("tinycnn1d", in_channels=6, num_classes=4).eval()
    with torch.no_grad():
        m.stem[1].weight[3] = 0.0                  # stem filter 3's output is a constant: no gradient reaches it
    before = {k: v.clone() for k, v in m.state_dict().items()}
    rng = np.random.default_rng(0)
    x = rng.standard_normal((24, 6, 32)).astype(np.float32)
    y = np.arange(24) % 3                          # classes 0, 1, 2 present (of 4)
    g = gradient_magnitudes(m, x, y)
    assert g["stem.0"].shape == (3, 8) and all(v.min() >= 0 for v in g.values())
    assert np.all(g["stem.0"][:, 3] == 0) and np.all(np.delete(g["stem.0"], 3, axis=1) > 0)
    ref = copy.deepcopy(m)                         # voter of class 1, by hand
    torch.nn.functional.cross_entropy(ref(torch.from_numpy(x[y == 1])), torch.ones(8, dtype=torch.long)).backward()
    np.testing.assert_allclose(g["stem.0"][1], (ref.stem[0].weight.grad.double() ** 2).sum(dim=(1, 2)).numpy(),
                               rtol=1e-5)
    scores = rank_filters(m, x, ranking="gradient", y=y)
    assert scores["stem.0"][3] == 0.0              # last for every voter
    assert select_filters(scores, 0.5).filters["stem.0"][3] == False    # noqa: E712
    assert all(torch.equal(v, before[k]) for k, v in m.state_dict().items())
    assert all(p.grad is None for p in m.parameters())
    with pytest.raises(ValueError, match="ranking='gradient' needs the calibration labels y"):
        rank_filters(m, x, ranking="gradient")
    with pytest.raises(ValueError, match="y has 23 labels and x 24 windows; expected one label per window"):
        gradient_magnitudes(m, x, y[:-1])
    with pytest.raises(ValueError, match=r"y has values \[10, 11, 12\] outside the class list; expected integers in "
                                         r"\[0, 3\] for 4 classes"):
        gradient_magnitudes(m, x, y + 10)
