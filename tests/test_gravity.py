"""Gravity in the contract (issue 15, item 1): whether the accelerometer includes gravity travels with the
recordings (npz member, CSV option, the watch and SHL readers), the windows, the bundle and the manifest; a
recording with the opposite convention to the model is an error naming it, or (gravity included -> removed
only) converted with a low-pass estimate; files without the field read as unknown."""
from __future__ import annotations

import json

import numpy as np
import pytest
from imutune.data.csv import load_csv
from imutune.data.recording import declared_gravity
from imutune.data.recordings import Recording, load_npz, save_npz
from imutune.data.shl2018 import shl_gravity
from imutune.deploy.manifest import load_manifest, manifest_for
from imutune.signal.contract import CONTRACT_KEYS, Preprocessing
from imutune.signal.windows import GRAVITY_CUTOFF_HZ, WindowConfig, make_windows, remove_gravity
from imutune.train.bundle import load_bundle, save_bundle
from imutune.train.loop import TrainConfig
from imutune.train.pretrain import pretrain

CH = ("acc_x", "acc_y", "acc_z", "gyr_z")
CLASSES = ("still", "walk")
WIN = WindowConfig(window_s=1.0, hop_s=0.5)
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _spec(**kw) -> Preprocessing:
    base = dict(channels=CH, class_names=CLASSES, sample_rate_hz=50.0, window_s=1.0, hop_s=0.5,
                norm_mean=(0.0,) * 4, norm_std=(1.0,) * 4)
    return Preprocessing(**{**base, **kw})


def _rec(i: int = 0, *, gravity=None, n: int = 600, name: str | None = None) -> Recording:
    """acc_z holds 1 g of gravity (when ``gravity`` is not False) plus a 2 Hz body motion."""
    rng = np.random.default_rng(i)
    t = np.arange(n) / 50.0
    v = rng.normal(0, 0.01, size=(n, 4)).astype(np.float32)
    v[:, 2] += 0.3 * np.sin(2 * np.pi * 2.0 * t) + (0.0 if gravity is False else 1.0)
    v[:, 3] += 0.5
    meta = {} if gravity is None else {"gravity": gravity}
    return Recording(v, np.repeat([0, 1], n // 2), 50.0, CH, CLASSES, user=f"u{i}", name=name or f"r{i}", meta=meta)


# ---------------------------------------------------------------------------------------------- the contract

def test_contract_carries_gravity_and_old_files_read_as_unknown():
    p = _spec(gravity=False)
    d = p.to_dict()
    assert d["gravity"] is False and Preprocessing.from_dict(d, source="x") == p
    old = _spec().to_dict()                                   # undeclared: exactly the keys older versions wrote
    assert list(old) == list(CONTRACT_KEYS) and Preprocessing.from_dict(old, source="x").gravity is None
    assert _spec(gravity=np.bool_(True)).gravity is True
    with pytest.raises(ValueError, match=r"gravity in preprocessing must be true \(accelerometer includes gravity\), "
                                         r"false \(gravity removed\) or null \(unknown\), got 1"):
        _spec(gravity=1)
    with pytest.raises(ValueError, match=r"model\.json: gravity in preprocessing must be true"):
        Preprocessing.from_dict({**old, "gravity": "yes"}, source="model.json")


def test_differences_compare_gravity_only_where_both_declare_it():
    assert _spec(gravity=True).differences(_spec(gravity=False)) == [("gravity", True, False)]
    assert _spec(gravity=True).differences(_spec(gravity=False), input_only=True) == [("gravity", True, False)]
    assert _spec(gravity=True).differences(_spec()) == [] and _spec().differences(_spec(gravity=False)) == []
    with pytest.raises(ValueError, match="has gravity = True but the model has False"):
        _spec(gravity=True).check_matches(_spec(gravity=False), where="w", other_name="the model")


def test_bundle_and_manifest_keep_gravity_and_old_bundles_load(tmp_path):
    w = make_windows([_rec(0, gravity=True), _rec(1, gravity=True)], WIN)
    assert w.preprocessing.gravity is True
    b = pretrain(w, model_name="tinycnn1d", train_config=TrainConfig(epochs=1, batch_size=16, device="cpu"),
                 holdout_fraction=0.5, progress=False)
    assert b.preprocessing.gravity is True
    save_bundle(b, tmp_path / "b")
    assert load_bundle(tmp_path / "b").preprocessing.gravity is True
    m = manifest_for(b)
    (tmp_path / "manifest.json").write_text(json.dumps(m.to_dict()))
    assert load_manifest(tmp_path / "manifest.json").preprocessing.gravity is True
    meta_path = tmp_path / "b" / "model.json"                 # an older bundle: no gravity key
    meta = json.loads(meta_path.read_text())
    del meta["gravity"]
    meta_path.write_text(json.dumps(meta))
    old = load_bundle(tmp_path / "b")
    assert old.preprocessing.gravity is None and old.channels == CH
    # unknown model gravity: recordings of either convention are accepted
    assert make_windows([_rec(2, gravity=False)], old.preprocessing).preprocessing.gravity is False


# ---------------------------------------------------------------------------------------------- the readers

def test_npz_gravity_member_round_trips_and_is_checked(tmp_path):
    save_npz(_rec(0, gravity=False), tmp_path / "a.npz")
    assert load_npz(tmp_path / "a.npz").meta["gravity"] is False
    save_npz(_rec(0), tmp_path / "b.npz")
    assert "gravity" not in load_npz(tmp_path / "b.npz").meta
    r = _rec(0)
    np.savez(tmp_path / "bad.npz", values=r.values, labels=r.labels, sample_rate_hz=np.float64(50.0),
             channels=np.array(CH), class_names=np.array(CLASSES), user=np.array("u"), gravity=np.array([1, 0]))
    with pytest.raises(ValueError, match=r"gravity in recording file '.*bad\.npz' must be one bool"):
        load_npz(tmp_path / "bad.npz")


def test_csv_gravity_option_watch_and_shl_declarations(tmp_path, watch_recordings):
    p = tmp_path / "r.csv"
    p.write_text("timestamp_s,label,acc_x\n" + "".join(f"{i / 50},a,0.1\n" for i in range(20)))
    assert load_csv(p, gravity="removed").meta["gravity"] is False
    assert "gravity" not in load_csv(p).meta
    with pytest.raises(ValueError, match=r"gravity of recording file '.*r\.csv' is 'maybe'; expected True"):
        load_csv(p, gravity="maybe")
    assert all(declared_gravity(r) is True for r in watch_recordings[:3])
    assert shl_gravity(["Acc_x", "Gyr_x"]) is True and shl_gravity(["LAcc_x"]) is False
    assert shl_gravity(["Gyr_x"]) is None and shl_gravity(["Acc_x", "LAcc_x"]) is None


# ---------------------------------------------------------------------------------------------- make_windows

def test_opposite_convention_is_an_error_naming_the_recording():
    model = _spec(gravity=True)
    with pytest.raises(ValueError, match=r"recording 'phone_linear' has its accelerometer with gravity removed, but "
                                         r"the model has gravity included; .*cannot be added back"):
        make_windows([_rec(0, gravity=False, name="phone_linear")], model)
    with pytest.raises(ValueError, match=r"recording 'raw' has its accelerometer with gravity included, but the "
                                         r"model has gravity removed; .*--remove-gravity"):
        make_windows([_rec(0, gravity=True, name="raw")], _spec(gravity=False))
    with pytest.raises(ValueError, match=r"recording 'b' declares gravity removed but recording 'a' declares it "
                                         "included"):
        make_windows([_rec(0, gravity=True, name="a"), _rec(1, gravity=False, name="b")], WIN)
    # undeclared is unknown: accepted, the windows carry the model's convention
    assert make_windows([_rec(0)], model).preprocessing.gravity is True
    # stated for undeclared recordings (--gravity), the recording's own declaration wins
    with pytest.raises(ValueError, match="recording 'r0' has its accelerometer with gravity removed"):
        make_windows([_rec(0)], model, gravity="removed")
    assert make_windows([_rec(0, gravity=True)], model, gravity="removed").preprocessing.gravity is True


def test_remove_gravity_converts_for_a_gravity_free_model():
    w = make_windows([_rec(0, gravity=True, name="raw")], _spec(gravity=False), remove_gravity_from=True)
    assert w.preprocessing.gravity is False
    assert w.unit_conversions == (f"recording 'raw': gravity removed from acc_x, acc_y, acc_z (low-pass "
                                  f"{GRAVITY_CUTOFF_HZ:g} Hz estimate subtracted)",)
    raw = make_windows([_rec(0, gravity=True)], WIN)
    assert abs(raw.x[:, 2].mean() - 1.0) < 0.02 and abs(w.x[:, 2].mean()) < 0.05      # 1 g gone from acc_z
    assert np.allclose(w.x[:, 3], raw.x[:, 3])                                        # gyr_z untouched
    assert np.std(w.x[:, 2]) > 0.15                                                   # the 2 Hz motion stays


def test_remove_gravity_keeps_the_body_motion():
    t = np.arange(1000) / 50.0
    body = 0.3 * np.sin(2 * np.pi * 2.0 * t)
    v = np.stack([body + 1.0, np.full_like(t, 0.25)], axis=1)
    out = remove_gravity(v, 50.0, [0])
    np.testing.assert_allclose(out[100:-100, 0], body[100:-100], atol=0.02)
    np.testing.assert_array_equal(out[:, 1], v[:, 1].astype(np.float32))
    with pytest.raises(ValueError, match=r"cut-off 30 Hz must be in \(0, 25\) Hz"):
        remove_gravity(v, 50.0, [0], cutoff_hz=30)


def test_cli_gravity_flags(tmp_path, capsys):
    from imutune.cli import main

    common = ["--no-progress", "--device", "cpu", "--seed", "0", "--epochs", "1"]
    src = tmp_path / "src"
    src.mkdir()
    for i in range(2):                                        # gravity-free recordings that do not say so
        r = _rec(i, gravity=False)
        save_npz(Recording(r.values, r.labels, 50.0, r.channels, r.class_names, r.user, r.name), src / f"s{i}.npz")
    assert main(["pretrain", "--data", str(src), "--out", str(tmp_path / "lin"), "--model", "tinycnn1d",
                 "--window-s", "1", "--hop-s", "0.5", "--gravity", "removed", *common]) == 0
    assert load_bundle(tmp_path / "lin").preprocessing.gravity is False
    me = tmp_path / "me"
    me.mkdir()
    save_npz(_rec(5, gravity=True, name="watch_raw"), me / "watch_raw.npz")
    capsys.readouterr()
    assert main(["finetune", "--base", str(tmp_path / "lin"), "--data", str(me), "--out", str(tmp_path / "o1"),
                 "--loss", "ce", *common]) == 2
    err = capsys.readouterr().err
    assert "recording 'watch_raw' has its accelerometer with gravity included" in err and "Traceback" not in err
    assert main(["finetune", "--base", str(tmp_path / "lin"), "--data", str(me), "--out", str(tmp_path / "o2"),
                 "--loss", "ce", "--remove-gravity", *common]) == 0
    report = json.loads((tmp_path / "o2" / "finetune_report.json").read_text())
    assert any("gravity removed from acc_x, acc_y, acc_z" in line for line in report["unit_conversions"])


# ---------------------------------------------------------------------------------------------- the runtime


class _Zeros:
    def run(self, x):
        return np.zeros((x.shape[0], len(CLASSES)), np.float32)


@pytest.mark.parametrize("stream", [False, True])
def test_replay_refuses_a_recording_of_the_other_gravity_convention(tmp_path, stream):
    from imutune.data.npz import save_npz
    from imutune.deploy.manifest import Manifest
    from imutune.runtime.replay import replay, replay_stream

    man = Manifest("fake", {}, _spec(gravity=False))
    for rec, ok in ((_rec(1, gravity=True, name="with_g"), False), (_rec(2, gravity=False), True), (_rec(3), True)):
        src = rec
        if stream:
            save_npz(rec, tmp_path / f"{rec.name}.npz")
            src = tmp_path / f"{rec.name}.npz"
        run = (lambda s=src: replay_stream(s, _Zeros(), man)) if stream else (lambda s=src: replay(s, _Zeros(), man))
        if ok:
            assert run().n_windows > 0
        else:
            with pytest.raises(ValueError, match=r"recording 'with_g' declares its accelerometer with gravity "
                                                 r"included; the manifest's model expects gravity removed"):
                run()
    assert replay(_rec(4, gravity=True), _Zeros(), Manifest("fake", {}, _spec())).n_windows > 0  # model: unknown
