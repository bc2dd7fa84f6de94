"""Tests for imutune.signal.contract: one preprocessing contract carried by windows, bundle and manifest."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
from imutune.data.recordings import Recording
from imutune.deploy.manifest import Manifest, manifest_for
from imutune.models.resnet1d import create_model
from imutune.signal.contract import CONTRACT_KEYS, MIN_WINDOW_SAMPLES, Preprocessing
from imutune.signal.windows import Normalizer, WindowConfig, Windows, make_windows
from imutune.train.bundle import BUNDLE_KEYS, ModelBundle, load_bundle, save_bundle
from imutune.train.config import TrainConfig
from imutune.train.pretrain import pretrain

CH = ("acc_x", "acc_y", "gyr_z")
CLASSES = ("walk", "run")
FAST = TrainConfig(epochs=1, batch_size=16, lr=1e-2, seed=0, device="cpu")


def _spec(**over) -> Preprocessing:
    kw = dict(channels=CH, class_names=CLASSES, sample_rate_hz=50.0, window_s=1.0, hop_s=0.5,
              units=("g", "g", "rad/s"), norm_mean=(0.0, 0.1, 0.2), norm_std=(1.0, 2.0, 0.5))
    kw.update(over)
    return Preprocessing(**kw)


def _rec(seed=0, *, n=400, fs=50.0, classes=CLASSES, units=None, channels=CH, user="u1") -> Recording:
    rng = np.random.default_rng(seed)
    labels = (np.arange(n) // 100 % len(classes)).astype(np.int64)
    values = rng.normal(size=(n, len(channels))).astype(np.float32) + labels[:, None].astype(np.float32)
    meta = {} if units is None else {"units": units}
    return Recording(values, labels, fs, channels, classes, user, f"rec{seed}", meta)


# --------------------------------------------------------------------------- Preprocessing


def test_derived_counts_and_round_trip():
    p = _spec()
    assert (p.window_samples, p.hop_samples) == (50, 25)
    d = p.to_dict()
    assert tuple(d) == CONTRACT_KEYS
    assert d["units"] == ["g", "g", "rad/s"] and d["hop_samples"] == 25
    back = Preprocessing.from_dict(json.loads(json.dumps(d)), source="test")
    assert back == p and back.differences(p) == []


def test_one_minimum_window_rule_everywhere():
    """8 samples in WindowConfig, none in Manifest, 1 in the runtime today: one rule now."""
    assert MIN_WINDOW_SAMPLES == 8
    pattern = r"gives 7 samples per window; expected >= 8"
    with pytest.raises(ValueError, match=pattern):
        WindowConfig(window_s=0.14, sample_rate_hz=50.0)
    with pytest.raises(ValueError, match=pattern):
        _spec(window_s=0.14)
    with pytest.raises(ValueError, match=pattern):
        Manifest("tinycnn1d", {}, class_names=CLASSES, channels=CH, sample_rate_hz=50.0, window_s=0.14, hop_s=0.1,
                 norm_mean=(0.0,) * 3, norm_std=(1.0,) * 3)
    assert _spec(window_s=0.16).window_samples == 8


@pytest.mark.parametrize("mutate, pattern", [
    (lambda d: d.pop("hop_s"), r"missing \['hop_s'\]"),
    (lambda d: d.update(colour="blue"), r"unknown \['colour'\]"),
    (lambda d: d.update(channels="acc_x"), r"channels in preprocessing must be a list of names"),
    (lambda d: d.update(channels=["a", ""]), r"channels in preprocessing has invalid entries \[''\]"),
    (lambda d: d.update(class_names=["a", "a"]), r"class_names in preprocessing lists \['a'\] more than once"),
    (lambda d: d.update(sample_rate_hz=float("nan")), r"sample_rate_hz in preprocessing must be a positive number"),
    (lambda d: d.update(sample_rate_hz=float("inf")), r"sample_rate_hz in preprocessing must be a positive number"),
    (lambda d: d.update(sample_rate_hz=1e-300), r"gives 0 samples per window"),
    (lambda d: d.update(window_s=[1.0]), r"window_s in preprocessing must be a positive number, got \[1\.0\]"),
    (lambda d: d.update(norm_std=[1.0, -2.0, 0.5]), r"norm_std\[1\] in preprocessing must be > 0"),
    (lambda d: d.update(norm_mean=[0.0, float("nan"), 0.0]), r"norm_mean\[1\] in preprocessing must be a finite"),
    (lambda d: d.update(norm_mean=None), r"needs both norm_mean and norm_std"),
    (lambda d: d.update(window_samples=51), r"window_samples is 51 but window_s/hop_s at sample_rate_hz give 50"),
    (lambda d: d.update(hop_samples="25"), r"hop_samples is '25' but"),
    (lambda d: d.update(units=["g", "g", 3]), r"units in preprocessing has invalid entries \[3\]"),
    (lambda d: d.update(min_purity=0), r"min_purity must be in \(0, 1\]"),
])
def test_from_dict_is_strict_and_names_source_and_field(mutate, pattern):
    d = _spec().to_dict()
    mutate(d)
    with pytest.raises(ValueError, match=r"^model metadata 'x/model\.json': .*" + pattern):
        Preprocessing.from_dict(d, source="model metadata 'x/model.json'")


def test_from_dict_not_a_dict_and_normalization_required():
    with pytest.raises(ValueError, match=r"src: preprocessing must be a JSON object, got list"):
        Preprocessing.from_dict([], source="src")
    d = _spec(norm_mean=None, norm_std=None).to_dict()
    assert Preprocessing.from_dict(d, source="src").has_normalization is False
    with pytest.raises(ValueError, match=r"src: norm_mean / norm_std are null"):
        Preprocessing.from_dict(d, source="src", require_normalization=True)


def test_units_compared_only_where_both_declare():
    a = _spec(units=("g", None, "rad/s"))
    assert a.differences(_spec(units=None)) == []
    assert a.differences(_spec(units=("g", "m/s^2", "rad/s"))) == []
    assert a.differences(_spec(units=("m/s^2", "g", "rad/s")))[0][0] == "units"
    with pytest.raises(ValueError, match=r"where: the windows has units = \['g', None, 'rad/s'\] but the model has "
                                         r"\['m/s\^2', 'g', 'rad/s'\]"):
        a.check_matches(_spec(units=("m/s^2", "g", "rad/s")), where="where", this_name="the windows",
                        other_name="the model")
    assert _spec(units=(None, None, None)).units is None          # nothing declared: unknown


def test_hostile_numbers_are_value_errors():
    for fs in (1e308, True, "50", 10 ** 400):
        with pytest.raises(ValueError, match=r"sample_rate_hz"):
            _spec(sample_rate_hz=fs)


# --------------------------------------------------------------------------- windows


def test_make_windows_carries_the_contract():
    w = make_windows([_rec(0, units=("g", "g", "rad/s"))], WindowConfig(window_s=1.0, hop_s=0.5))
    p = w.preprocessing
    assert isinstance(p, Preprocessing) and not p.has_normalization
    assert (p.channels, p.class_names, p.units) == (CH, CLASSES, ("g", "g", "rad/s"))
    assert (p.window_samples, p.hop_samples) == (50, 25) == (w.x.shape[2], 25)
    assert w.subset(np.arange(3)).preprocessing is p
    # a recording without declared units keeps them unknown
    assert make_windows([_rec(0)], WindowConfig(window_s=1.0, hop_s=0.5)).preprocessing.units is None


def test_make_windows_units_must_agree_where_declared():
    recs = [_rec(0, units={"acc_x": "g", "gyr_z": "rad/s"}), _rec(1, units={"acc_x": "m/s^2", "gyr_z": "rad/s"})]
    w = make_windows(recs, WindowConfig(window_s=1.0, hop_s=0.5))          # converted, not refused
    assert w.preprocessing.units == ("g", None, "rad/s") and "m/s^2 -> g" in w.unit_conversions[0]
    model = _spec(units=("g", "g", "rad/s"))
    with pytest.raises(ValueError, match=r"recording 'rec3' declares no units for channels"):
        make_windows([_rec(3)], model)
    assert make_windows([_rec(3)], model, units="g,g,rad/s").preprocessing.units == ("g", "g", "rad/s")
    w = make_windows([_rec(3, units=("g", "g", "deg/s"))], model)           # deg/s -> rad/s
    assert "gyr_z deg/s -> rad/s" in w.unit_conversions[0]
    with pytest.raises(ValueError, match=r"cannot convert 'g' to 'rad/s'"):
        make_windows([_rec(3, units=("g", "g", "g"))], model)


def test_windows_refuse_a_contract_that_does_not_describe_them():
    x = np.zeros((4, 3, 40), np.float32)
    args = (x, np.zeros(4, np.int64), np.zeros(4, np.int64), np.array(["u"] * 4), CLASSES, CH)
    with pytest.raises(ValueError, match=r"Windows x has shape \(4, 3, 40\), but the preprocessing gives "
                                         r"\(N, 3, 50\)"):
        Windows(*args, _spec(norm_mean=None, norm_std=None))
    with pytest.raises(ValueError, match=r"Windows have classes \['walk', 'run'\] .* their preprocessing has "
                                         r"\['a', 'b'\]"):
        Windows(*args, _spec(window_s=0.8, class_names=("a", "b")))


def test_relabel_by_name():
    w = make_windows([_rec(0, classes=("run", "walk"))], WindowConfig(window_s=1.0, hop_s=0.5))
    r = w.relabel(("walk", "run", "sit"))
    assert r.class_names == ("walk", "run", "sit") and r.preprocessing.class_names == r.class_names
    np.testing.assert_array_equal(np.array(r.class_names)[r.y], np.array(w.class_names)[w.y])
    with pytest.raises(ValueError, match=r"test have classes \['run', 'walk'\]; \['run'\] are not among"):
        w.relabel(("walk", "sit"), what="test")


# --------------------------------------------------------------------------- pretrain / bundle


def test_pretrain_refuses_a_window_config_the_windows_were_not_cut_with():
    """Windows of T=50 with window=WindowConfig(window_s=4.0) gave a bundle claiming 200 samples."""
    w = make_windows([_rec(0), _rec(1)], WindowConfig(window_s=1.0, hop_s=0.5))
    assert w.x.shape[2] == 50
    with pytest.raises(ValueError, match=r"window= has window_s = 4\.0, but the windows were cut with window_s = "
                                         r"1\.0"):
        pretrain(w, model_name="tinycnn1d", window=WindowConfig(window_s=4.0), train_config=FAST, progress=False)
    bare = Windows(w.x, w.y, w.recording, w.users, w.class_names, w.channels)     # built by hand: no contract
    with pytest.raises(ValueError, match=r"windows have shape \(\d+, 3, 50\) \(T=50 samples\), but window= gives "
                                         r"200 samples"):
        pretrain(bare, model_name="tinycnn1d", window=WindowConfig(window_s=4.0), train_config=FAST, progress=False)
    with pytest.raises(ValueError, match=r"windows carry no preprocessing .*pass window="):
        pretrain(bare, model_name="tinycnn1d", train_config=FAST, progress=False)


def test_pretrained_bundle_takes_its_contract_from_the_windows(tmp_path):
    w = make_windows([_rec(0, units=("g", "g", "rad/s")), _rec(1, units=("g", "g", "rad/s"))],
                     WindowConfig(window_s=1.0, hop_s=0.5, min_purity=0.9))
    b = pretrain(w, model_name="tinycnn1d", train_config=FAST, holdout_fraction=0.5, progress=False)
    p = b.preprocessing
    assert p.without_normalization() == w.preprocessing
    assert p.units == ("g", "g", "rad/s") and p.min_purity == 0.9 and b.window.window_samples == 50
    np.testing.assert_allclose(p.norm_mean, b.normalizer.mean, rtol=1e-6)
    m = manifest_for(b)
    assert m.preprocessing is p and (m.window_samples, m.hop_samples) == (50, 25)
    # the same contract survives the files: bundle -> model.json -> manifest
    save_bundle(b, tmp_path / "b")
    back = load_bundle(tmp_path / "b")
    assert back.preprocessing == p and manifest_for(back).to_dict() == m.to_dict()
    meta = json.loads((tmp_path / "b" / "model.json").read_text())
    assert set(meta) == set(BUNDLE_KEYS) | set(CONTRACT_KEYS)
    assert meta["hop_s"] == 0.5 and meta["units"] == ["g", "g", "rad/s"]


def test_bundle_checks_model_against_contract_and_derive_keeps_units():
    model = create_model("tinycnn1d", in_channels=3, num_classes=2)
    with pytest.raises(ValueError, match=r"model takes 3 input channels but the preprocessing lists 2"):
        ModelBundle(model, "tinycnn1d", _spec(channels=("a", "b"), units=None, norm_mean=(0, 0), norm_std=(1, 1)))
    with pytest.raises(ValueError, match=r"model has 2 outputs but the preprocessing lists 3 classes"):
        ModelBundle(model, "tinycnn1d", _spec(class_names=("a", "b", "c")))
    with pytest.raises(ValueError, match=r"needs norm_mean / norm_std"):
        ModelBundle(model, "tinycnn1d", _spec(norm_mean=None, norm_std=None))
    b = ModelBundle(model, "tinycnn1d", _spec(), {"stage": "x"})
    three = create_model("tinycnn1d", in_channels=3, num_classes=3)
    d = b.derive(three, class_names=("a", "b", "c"), info={"stage": "y"})
    assert d.units == b.units and d.class_names == ("a", "b", "c") and d.preprocessing.hop_s == 0.5
    # the parts form: a contract in the window slot keeps its units
    parts = ModelBundle(three, "tinycnn1d", ("a", "b", "c"), CH, b.preprocessing, b.normalizer, {})
    assert parts.preprocessing.differences(d.preprocessing) == [] and parts.units == b.units
    legacy = ModelBundle(model, "tinycnn1d", CLASSES, CH, WindowConfig(window_s=1.0, hop_s=0.5),
                         Normalizer(np.zeros(3, np.float32), np.ones(3, np.float32)))
    assert legacy.units is None and legacy.window == WindowConfig(window_s=1.0, hop_s=0.5)


# --------------------------------------------------------------------------- load_bundle messages


@pytest.fixture
def bundle_dir(tmp_path):
    model = create_model("tinycnn1d", in_channels=3, num_classes=2)
    save_bundle(ModelBundle(model, "tinycnn1d", _spec(), {}), tmp_path / "base")
    return tmp_path / "base"


def test_missing_base_names_the_folder_given(tmp_path):
    """Today: "model metadata 'runs/model.json' does not exist" for --base runs/nobase (the parent's file)."""
    with pytest.raises(FileNotFoundError, match=r"the model folder '.*runs/nobase' does not exist; expected a folder "
                                                r"holding model\.json and model\.safetensors"):
        load_bundle(tmp_path / "runs" / "nobase")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"the model folder '.*empty' has no model\.json"):
        load_bundle(tmp_path / "empty")


def test_export_folder_as_base_gets_a_hint(tmp_path):
    (tmp_path / "export").mkdir()
    (tmp_path / "export" / "manifest.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match=r"this is an export folder .*pass the bundle folder"):
        load_bundle(tmp_path / "export")


def test_model_name_disagreeing_with_weights_is_refused(bundle_dir):
    """Today any registry name loads (the full config builds the same model): the weights know their name."""
    meta = json.loads((bundle_dir / "model.json").read_text())
    meta["model_name"] = "mobilecnn1d"
    (bundle_dir / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"model\.safetensors' were saved for model 'tinycnn1d', but model metadata "
                                         r"'.*model\.json' says model_name 'mobilecnn1d'"):
        load_bundle(bundle_dir)


def test_model_config_disagreeing_with_weights_is_refused(bundle_dir):
    meta = json.loads((bundle_dir / "model.json").read_text())
    meta["model_config"]["dropout"] = 0.5
    (bundle_dir / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"were saved with model_config .* the two files do not belong together"):
        load_bundle(bundle_dir)


def test_old_model_json_layout_names_the_fields(bundle_dir):
    meta = json.loads((bundle_dir / "model.json").read_text())
    old = {k: v for k, v in meta.items() if k not in CONTRACT_KEYS and k not in ("format", "version")}
    old.update(class_names=list(CLASSES), channels=list(CH), window={"window_s": 1.0, "hop_s": 0.5},
               normalization={"mean": [0.0] * 3, "std": [1.0] * 3})
    (bundle_dir / "model.json").write_text(json.dumps(old))
    with pytest.raises(ValueError, match=r"model\.json' is incomplete or invalid: fields missing \['format', "
                                         r"'version'\] / unknown \['normalization', 'window'\]"):
        load_bundle(bundle_dir)


def test_hostile_model_config_is_bounded(bundle_dir):
    meta = json.loads((bundle_dir / "model.json").read_text())
    meta["model_config"]["widths"] = [10 ** 9, 16]
    (bundle_dir / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"model_config\.widths\[0\] is 1000000000; expected an integer in"):
        load_bundle(bundle_dir)
    meta["model_config"]["widths"] = [8, 16]
    del meta["model_config"]["dropout"]
    (bundle_dir / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"model_config has unknown fields \[\] / misses \['dropout'\]"):
        load_bundle(bundle_dir)


# --------------------------------------------------------------------------- finetune --test-data


@pytest.fixture
def finetune_files(tmp_path):
    from imutune.data.npz import save_npz

    w = make_windows([_rec(0), _rec(1)], WindowConfig(window_s=1.0, hop_s=0.5))
    b = pretrain(w, model_name="tinycnn1d", train_config=FAST, holdout_fraction=0.5, progress=False)
    save_bundle(b, tmp_path / "base")
    save_npz(_rec(2), tmp_path / "train.npz")
    return tmp_path


def _finetune(root, test_rec, name):
    from imutune.data.npz import save_npz
    from imutune.jobs import run_finetune
    from imutune.personalize.finetune import FinetuneConfig

    save_npz(test_rec, root / f"{name}.npz")
    return run_finetune(root / "base", [root / "train.npz"], root / name, test_data=[root / f"{name}.npz"],
                        config=FinetuneConfig(train=FAST, loss="ce"), progress=False)


def test_finetune_test_data_with_other_class_names_fails_before_training(finetune_files):
    """Same count, other names: scored by index silently today."""
    root = finetune_files
    with pytest.raises(ValueError, match=r"--test-data \['.*other\.npz'\] have classes \['sit', 'lie'\]; "
                                         r"\['sit', 'lie'\] are not among the model's classes \['walk', 'run'\]"):
        _finetune(root, _rec(3, classes=("sit", "lie")), "other")
    assert not (root / "other" / "model.json").exists()        # nothing trained or written


def test_finetune_test_data_missing_a_class_is_scored_by_name(finetune_files):
    """A class missing from the test file trained, wrote the model, then failed in sklearn today."""
    root = finetune_files
    rec = _rec(4, classes=("run",))   # only one of the two classes
    res = _finetune(root, Recording(rec.values, np.zeros(rec.n_samples, np.int64), 50.0, CH, ("run",), "u9", "r"),
                    "partial")
    assert 0.0 <= res["after"]["accuracy"] <= 1.0 and "before" in res
    assert math.isfinite(res["after"]["macro_f1"])


def test_finetune_data_with_the_model_classes_in_another_order_keeps_the_head(finetune_files):
    """A CSV's class names come sorted: the model's classes in another order replaced the head before."""
    from imutune.data.npz import save_npz

    root = finetune_files
    r = _rec(2)
    flipped = Recording(r.values, 1 - r.labels, r.sample_rate_hz, r.channels, CLASSES[::-1], r.user, r.name, r.meta)
    save_npz(flipped, root / "train.npz")
    t = _rec(5)
    res = _finetune(root, Recording(t.values, 1 - t.labels, 50.0, CH, CLASSES[::-1], "u9", "t"), "flipped")
    assert res["head_replaced"] is False and "before" in res and 0.0 <= res["after"]["accuracy"] <= 1.0
    assert load_bundle(root / "flipped").class_names == CLASSES
