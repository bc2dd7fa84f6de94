"""The stage commands on user files: pretrain -> finetune (new class set, new sample rate) -> export -> replay."""
from __future__ import annotations

import json

import numpy as np
import pytest
from imutune.cli import main
from imutune.data.recordings import Recording, load_npz, save_npz
from imutune.signal.windows import resample_recording

COMMON = ["--no-progress", "--device", "cpu", "--seed", "0"]


def _write(recs, folder):
    folder.mkdir(parents=True, exist_ok=True)
    for r in recs:
        save_npz(r, folder / f"{r.name}.npz")
    return folder


@pytest.fixture(scope="module")
def stages(tmp_path_factory, watch_recordings):
    """Run the four stages once; tests inspect the outputs."""
    root = tmp_path_factory.mktemp("cli")
    src = _write([r for r in watch_recordings if r.meta["subject"] in (1, 2)], root / "source")
    # the target user brings a new class set (3 movement groups) and a 100 Hz phone
    groups = {"PEN": 0, "ABD": 1, "FEL": 1, "IR": 2, "ER": 2, "TRAP": 1, "ROW": 2}
    mapping = np.array([groups[c] for c in watch_recordings[0].class_names])
    tgt = []
    for r in watch_recordings:
        if r.meta["subject"] == 10:
            r100 = resample_recording(r, 100.0)
            tgt.append(Recording(r100.values, mapping[r100.labels], 100.0, r.channels, ("swing", "raise", "rotate"),
                                 "me", name=f"me_side{r.meta['side']}_{r.name}", meta={"units": r.meta["units"]}))
    tr = _write([r for r in tgt if "side0" in r.name], root / "me_train")
    te = _write([r for r in tgt if "side1" in r.name][:2], root / "me_test")
    rc = {}
    rc["pretrain"] = main(["pretrain", "--data", str(src), "--out", str(root / "base"), "--model", "tinycnn1d",
                           "--hop-s", "1.0", "--epochs", "2", *COMMON])
    rc["finetune"] = main(["finetune", "--base", str(root / "base"), "--data", str(tr), "--test-data", str(te),
                           "--out", str(root / "me"), "--epochs", "2", *COMMON])
    rc["export"] = main(["export", "--model", str(root / "me"), "--data", str(te), "--out", str(root / "export")])
    rc["replay"] = main(["replay", "--model", str(root / "export" / "model.onnx"), "--data", str(te),
                         "--out", str(root / "replay"), "--chunk-samples", "10"])
    return root, rc


def test_every_stage_succeeds_and_writes_its_files(stages):
    root, rc = stages
    assert rc == {"pretrain": 0, "finetune": 0, "export": 0, "replay": 0}
    for rel in ("base/model.safetensors", "base/model.json", "base/pretrain_config.json",
                "me/model.json", "me/finetune_config.json", "me/finetune_report.json",
                "export/model.onnx", "export/model.pte", "export/manifest.json", "export/export_config.json",
                "replay/replay_report.json", "replay/replay_report.md", "replay/confusion_matrix.png"):
        assert (root / rel).is_file(), rel


def test_new_class_set_replaces_head_and_rate_is_resampled(stages):
    root, _ = stages
    me = json.loads((root / "me" / "model.json").read_text())
    assert me["class_names"] == ["swing", "raise", "rotate"] and me["num_classes"] == 3
    assert me["sample_rate_hz"] == 50.0       # the model keeps its rate; 100 Hz data were resampled
    rep = json.loads((root / "me" / "finetune_report.json").read_text())
    assert rep["head_replaced"] is True and "after" in rep
    # a new class set has no "before" model: the reference is a head fitted on the frozen pretrained model
    assert rep["before"]["kind"].startswith("head-only fit on the frozen pretrained model")
    assert 0.0 <= rep["before"]["macro_f1"] <= 1.0
    base_state = json.loads((root / "base" / "model.json").read_text())
    assert base_state["class_names"] != me["class_names"]
    manifest = json.loads((root / "export" / "manifest.json").read_text())
    assert manifest["class_names"] == ["swing", "raise", "rotate"]
    replay = json.loads((root / "replay" / "replay_report.json").read_text())
    assert replay["n_resampled"] == 2 and replay["n_windows"] > 0
    # each report says which windows its figures score (purity-filtered vs every window of the stream)
    assert "majority label covers >= 0.8" in rep["scored_windows"]
    assert replay["scored_windows"].startswith("every window the stream produced")
    assert 0.0 <= replay["accuracy"] <= 1.0


def test_missing_data_file_is_a_clear_error(tmp_path, capsys):
    rc = main(["pretrain", "--data", str(tmp_path / "nope.npz"), "--out", str(tmp_path / "o"), *COMMON])
    assert rc == 2
    assert "nope.npz" in capsys.readouterr().err


def test_replay_of_tampered_artifact_fails(stages, tmp_path, capsys):
    root, _ = stages
    bad = tmp_path / "export"
    bad.mkdir()
    for name in ("model.onnx", "manifest.json"):
        (bad / name).write_bytes((root / "export" / name).read_bytes())
    with open(bad / "model.onnx", "ab") as fh:
        fh.write(b"\0")
    rc = main(["replay", "--model", str(bad / "model.onnx"), "--data", str(root / "me_test"), "--out", str(tmp_path / "r")])
    assert rc == 2
    assert "sha256" in capsys.readouterr().err


def test_channel_mismatch_is_a_clear_error(stages, tmp_path, capsys):
    root, _ = stages
    r = load_npz(next((root / "me_test").glob("*.npz")))
    save_npz(r.select_channels(["acc_x", "acc_y", "acc_z"]), tmp_path / "three.npz")
    rc = main(["replay", "--model", str(root / "export" / "model.onnx"), "--data", str(tmp_path / "three.npz"),
               "--out", str(tmp_path / "r")])
    assert rc == 2
    assert "gyr_x" in capsys.readouterr().err


def test_nan_in_stream_is_a_clear_error(tmp_path, capsys):
    values = np.zeros((200, 2), np.float32)
    values[17, 1] = np.nan
    np.savez(tmp_path / "nan.npz", values=values, labels=np.zeros(200, np.int64), sample_rate_hz=50.0,
             channels=np.array(["a", "b"]), class_names=np.array(["x"]), user=np.array("u"))
    rc = main(["pretrain", "--data", str(tmp_path / "nan.npz"), "--out", str(tmp_path / "o"), *COMMON])
    assert rc == 2
    err = capsys.readouterr().err
    assert "nan.npz" in err and "NaN" in err


def test_models_lists_registry(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "mobilecnn1d" in out and "resnet1d34" in out


def _choices(parser, argv_prefix, dest):
    """The ``choices`` of option ``dest`` of the sub-command reached by ``argv_prefix``."""
    import argparse

    p = parser
    for name in argv_prefix:
        sub = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction))
        p = sub.choices[name]
    return tuple(next(a for a in p._actions if a.dest == dest).choices)


def test_selective_option_choices_match_the_library_constants():
    # the parser spells these as literals (it stays free of torch imports); they must not drift
    from imutune.cli import build_parser
    from imutune.personalize.selective import BN_STATISTICS, BUDGETS, RANKINGS

    ap = build_parser()
    assert set(_choices(ap, ["personalize"], "ranking")) == set(RANKINGS)
    assert set(_choices(ap, ["personalize"], "budget")) == set(BUDGETS)
    assert set(_choices(ap, ["personalize"], "bn_statistics")) == set(BN_STATISTICS)
    assert set(_choices(ap, ["bench", "selective"], "bn_statistics")) == set(BN_STATISTICS)


def test_fleet_flags_reach_the_fleet_config():
    # the classical reference is on by default in imutune fleet; --no-classical-reference turns it off
    from imutune.cli import _fleet_config, build_parser

    argv = ["fleet", "--base", "b", "--users", "u", "--out", "o"]
    assert _fleet_config(build_parser().parse_args(argv)).classical_reference is True
    assert _fleet_config(build_parser().parse_args([*argv, "--no-classical-reference"])).classical_reference is False
    # and bench filterloss does not carry the fleet's flag
    args = build_parser().parse_args(["bench", "filterloss", "--out", "o"])
    assert not hasattr(args, "no_classical_reference")


def test_default_personalization_method_is_one_constant():
    # finetune, its command line, the demo and the fleet default to the same method: methods.DEFAULT_LOSS
    from imutune.cli import _fleet_config, build_parser
    from imutune.demo import DemoConfig
    from imutune.fleet.worker import FleetConfig
    from imutune.personalize.finetune import FinetuneConfig
    from imutune.personalize.methods import DEFAULT_LOSS

    assert DEFAULT_LOSS == "filterloss-soft"
    assert FinetuneConfig().loss == DEFAULT_LOSS and DemoConfig().finetune.loss == DEFAULT_LOSS
    assert FleetConfig().method == DEFAULT_LOSS and FleetConfig().finetune.loss == DEFAULT_LOSS
    args = build_parser().parse_args(["finetune", "--base", "b", "--data", "d", "--out", "o"])
    assert args.loss == DEFAULT_LOSS
    fleet = _fleet_config(build_parser().parse_args(["fleet", "--base", "b", "--users", "u", "--out", "o"]))
    assert fleet.method == DEFAULT_LOSS


def test_demo_loss_flag_reaches_the_demo_config(monkeypatch, tmp_path):
    import imutune.demo as D
    from imutune.cli import main
    from imutune.personalize.methods import DEFAULT_LOSS

    seen = []

    def fake(out, cfg, **kw):
        seen.append(cfg)
        return dict.fromkeys(("protocol", "source_accuracy", "target_accuracy_before", "target_accuracy_after",
                              "restore_ratio", "target_macro_f1", "personalization_gain", "parity_max_abs_err",
                              "latency_ms"), 0.0)

    monkeypatch.setattr(D, "run_demo", fake)
    assert main(["demo", "--out", str(tmp_path), "--loss", "filterloss", "--no-progress"]) == 0
    assert main(["demo", "--out", str(tmp_path), "--no-progress"]) == 0
    assert [c.finetune.loss for c in seen] == ["filterloss", DEFAULT_LOSS]
    with pytest.raises(SystemExit):      # a baseline is not a demo loss: argparse names the choices
        main(["demo", "--out", str(tmp_path), "--loss", "cleanlab"])
