"""Units in the contract, converted on load (issue 15 item 1)."""
from __future__ import annotations

import numpy as np
import pytest

from imutune.data.csv import load_csv
from imutune.data.npz import load_npz, save_npz
from imutune.data.recording import Recording
from imutune.data.watch import WATCH_UNITS
from imutune.signal.contract import Preprocessing
from imutune.signal.windows import STANDARD_GRAVITY, WindowConfig, make_windows, parse_units, unit_factor

CH = ("acc_x", "acc_y", "gyr_z")
CFG = WindowConfig(window_s=1.0, hop_s=0.5)


def _rec(values=None, *, units=None, name="rec0", n=200) -> Recording:
    rng = np.random.default_rng(0)
    v = rng.normal(size=(n, 3)).astype(np.float32) if values is None else values
    meta = {} if units is None else {"units": units}
    return Recording(v, np.zeros(v.shape[0], dtype=np.int64), 50.0, CH, ("a",), "u1", name, meta)


def _model(units) -> Preprocessing:
    return Preprocessing(channels=CH, class_names=("a",), sample_rate_hz=50.0, window_s=1.0, hop_s=0.5,
                         units=units)


def test_unit_factors_both_ways():
    assert unit_factor("g", "m/s^2") == pytest.approx(9.80665)
    assert unit_factor("m/s^2", "g") == pytest.approx(1 / 9.80665)
    assert unit_factor("deg/s", "rad/s") == pytest.approx(np.pi / 180)
    assert unit_factor("rad/s", "deg/s") == pytest.approx(180 / np.pi)
    assert unit_factor("uT", "uT") == 1.0
    with pytest.raises(ValueError, match=r"acc: cannot convert 'g' to 'rad/s'; expected units of the same quantity"):
        unit_factor("g", "rad/s", where="acc")


def test_m_s2_and_deg_s_recording_is_converted_to_a_g_rad_s_model():
    g_vals = np.tile(np.array([[1.0, -0.5, 0.25]], dtype=np.float32), (200, 1))     # g, g, rad/s
    si = g_vals * np.array([STANDARD_GRAVITY, STANDARD_GRAVITY, 180 / np.pi], dtype=np.float32)
    rec = _rec(si, units={"acc_x": "m/s^2", "acc_y": "m/s^2", "gyr_z": "deg/s"})
    w = make_windows([rec], _model(("g", "g", "rad/s")))
    np.testing.assert_allclose(w.x[:, :, 0], np.tile(g_vals[0], (len(w), 1)), rtol=1e-5)
    assert w.preprocessing.units == ("g", "g", "rad/s")
    assert w.unit_conversions == ("recording 'rec0': acc_x, acc_y m/s^2 -> g (x 0.101972)",
                                  "recording 'rec0': gyr_z deg/s -> rad/s (x 0.0174533)")
    # and the other way: a g / rad/s recording into an m/s^2 / deg/s model
    back = make_windows([_rec(g_vals, units=("g", "g", "rad/s"))], _model(("m/s^2", "m/s^2", "deg/s")))
    np.testing.assert_allclose(back.x[0, :, 0], si[0], rtol=1e-5)
    assert len(back.unit_conversions) == 2 and "g -> m/s^2 (x 9.80665)" in back.unit_conversions[0]


def test_recordings_in_mixed_units_are_harmonized_to_the_first_declared():
    v = np.ones((200, 3), dtype=np.float32)
    w = make_windows([_rec(v, units=("g", "g", "rad/s")),
                      _rec(v * np.array([STANDARD_GRAVITY, STANDARD_GRAVITY, 1.0], dtype=np.float32),
                           units=("m/s^2", "m/s^2", "rad/s"), name="rec1")], CFG)
    np.testing.assert_allclose(w.x, 1.0, rtol=1e-5)
    assert w.preprocessing.units == ("g", "g", "rad/s") and len(w.unit_conversions) == 1
    assert w.subset(np.arange(2)).unit_conversions == w.unit_conversions


def test_undeclared_units_are_an_error_naming_recording_and_expected_units():
    with pytest.raises(ValueError, match=r"recording 'rec0' declares no units for channels \['acc_x', 'acc_y', "
                                         r"'gyr_z'\]; expected units \['acc_x\[g\]', 'acc_y\[g\]', "
                                         r"'gyr_z\[rad/s\]'\].*--units"):
        make_windows([_rec()], _model(("g", "g", "rad/s")))
    # stated by the caller: accepted and converted
    v = np.full((200, 3), 2.0, dtype=np.float32)
    w = make_windows([_rec(v)], _model(("g", "g", "rad/s")), units="m/s^2,m/s^2,rad/s")
    np.testing.assert_allclose(w.x[:, :2], 2.0 / STANDARD_GRAVITY, rtol=1e-5)
    np.testing.assert_allclose(w.x[:, 2], 2.0)
    # a recording's own declaration wins over the statement
    w2 = make_windows([_rec(v, units=("g", "g", "rad/s"))], _model(("g", "g", "rad/s")), units="m/s^2")
    np.testing.assert_allclose(w2.x, 2.0)
    assert w2.unit_conversions == ()
    # a model without units and recordings without units: carried as unknown
    assert make_windows([_rec()], CFG).preprocessing.units is None


def test_parse_units_forms_and_errors():
    assert parse_units("g", CH) == ("g", "g", "g")
    assert parse_units("g,g,deg/s", CH) == ("g", "g", "deg/s")
    assert parse_units("gyr_z=dps", CH) == (None, None, "deg/s")
    with pytest.raises(ValueError, match=r"units has 2 entries \['g', 'g'\]; expected 3"):
        parse_units("g,g", CH)
    with pytest.raises(ValueError, match=r"names channels \['mag_x'\] that are not among"):
        parse_units("mag_x=uT", CH)
    with pytest.raises(ValueError, match=r"cannot convert 'g' to 'rad/s'"):
        make_windows([_rec(units=("g", "g", "g"))], _model(("g", "g", "rad/s")))


def test_readers_declare_units(tmp_path):
    rec = _rec(units={"acc_x": "m/s^2", "acc_y": "m/s^2", "gyr_z": "deg/s"})
    back = load_npz(save_npz(rec, tmp_path / "r.npz"))
    assert back.meta["units"] == {"acc_x": "m/s^2", "acc_y": "m/s^2", "gyr_z": "deg/s"}
    assert "units" not in load_npz(save_npz(_rec(), tmp_path / "plain.npz")).meta
    bad = tmp_path / "bad.npz"
    np.savez(bad, values=rec.values, labels=rec.labels, sample_rate_hz=50.0, channels=np.array(CH),
             class_names=np.array(["a"]), user=np.array("u1"), units=np.array(["g", "g"]))
    with pytest.raises(ValueError, match=r"units in recording file '.*bad\.npz' must be a 1-D array of 3 strings"):
        load_npz(bad)
    csv = tmp_path / "r.csv"
    rows = "\n".join(f"{i / 50:.3f},a,9.80665,0,{180 / np.pi:.6f}" for i in range(100))
    csv.write_text("timestamp_s,label,acc_x[m/s^2],acc_y [m/s^2],gyr_z\n" + rows + "\n")
    r = load_csv(csv)
    assert r.channels == CH and r.meta["units"] == {"acc_x": "m/s^2", "acc_y": "m/s^2", "gyr_z": None}
    w = make_windows([r], _model(("g", "g", "rad/s")), units="gyr_z=deg/s")
    np.testing.assert_allclose(w.x[0, :, 0], [1.0, 0.0, 1.0], rtol=1e-5, atol=1e-6)
    assert set(WATCH_UNITS.values()) == {"g", "rad/s"}
