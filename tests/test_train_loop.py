"""The one training loop (imutune.train.loop): presets, schedule, threads, hooks, the result it
returns, and checkpoints that are data (imutune.train.checkpoint): bit-exact resume, no pickle
ever loaded, clear errors for broken checkpoints."""
from __future__ import annotations

import json
import pickle
import random
from dataclasses import replace

import numpy as np
import pytest
import torch
from imutune.models.resnet1d import ResNet1d, default_config
from imutune.train.checkpoint import FORMAT, read_checkpoint_header, tensors_path
from imutune.train.config import FINETUNE, PRETRAIN, SELECTIVE, TrainConfig
from imutune.train.loop import (
    FrozenModules,
    GradientMask,
    TrainHooks,
    one_cycle_schedule,
    resolve_threads,
    train,
)

from conftest import crashing_loss

pytestmark = pytest.mark.usefixtures("one_torch_thread")

C, T = 3, 32
FAST = TrainConfig(epochs=4, batch_size=16, lr=1e-2, seed=0, device="cpu")


def _data(n=64, k=2, seed=0):
    rng = np.random.default_rng(seed)
    y = (np.arange(n) % k).astype(np.int64)
    x = rng.normal(size=(n, C, T)).astype(np.float32)
    for c in range(k):
        x[y == c, c % C, :] += 2.0
    return x, y


def _model(seed=0, dropout=0.3):
    """tinycnn1d with dropout before the head, so a resume must restore the torch RNG too."""
    torch.manual_seed(seed)
    return ResNet1d(C, 2, replace(default_config("tinycnn1d"), dropout=dropout))


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


# --------------------------------------------------------------------------- presets (issue 8, defect 4)

def test_presets_hold_the_numbers_the_cli_and_demo_use():
    from imutune.cli import build_parser
    from imutune.demo import DemoConfig
    from imutune.personalize.finetune import FinetuneConfig
    from imutune.personalize.selective import SelectiveConfig

    assert (PRETRAIN.epochs, PRETRAIN.batch_size, PRETRAIN.lr) == (20, 64, 3e-3)
    assert (FINETUNE.epochs, FINETUNE.batch_size, FINETUNE.lr) == (30, 32, 1e-3)
    assert TrainConfig() == PRETRAIN                       # the Python API pretrains like `imutune pretrain`
    assert DemoConfig().pretrain == PRETRAIN
    assert FinetuneConfig().train == FINETUNE and SelectiveConfig().train == SELECTIVE
    assert (SELECTIVE.epochs, SELECTIVE.batch_size, SELECTIVE.lr) == (30, 32, 1e-2)
    ap = build_parser()
    for argv, preset in ((["pretrain", "--data", "d", "--out", "o"], PRETRAIN),
                         (["finetune", "--base", "b", "--data", "d", "--out", "o"], FINETUNE),
                         (["personalize", "--base", "b", "--data", "d", "--out", "o"], SELECTIVE)):
        a = ap.parse_args(argv)
        assert (a.epochs, a.batch_size, a.lr, a.seed, a.device, a.threads) == (
            preset.epochs, preset.batch_size, preset.lr, preset.seed, preset.device, preset.threads), argv[0]


def test_cli_threads_flag_and_errors_name_the_flag(capsys):
    from imutune.cli import _train_config, build_parser, main

    a = build_parser().parse_args(["finetune", "--base", "b", "--data", "d", "--out", "o", "--threads", "3"])
    assert _train_config(a) == replace(FINETUNE, threads=3)
    assert main(["finetune", "--base", "b", "--data", "d", "--out", "o", "--threads", "0"]) == 2
    assert "--threads must be an integer >= 1, got 0" in capsys.readouterr().err


@pytest.mark.parametrize("kw,msg", [({"threads": 0}, r"threads must be an integer >= 1, got 0"),
                                    ({"threads": 1.5}, r"threads must be an integer >= 1, got 1.5")])
def test_threads_validation(kw, msg):
    with pytest.raises(ValueError, match=msg):
        TrainConfig(**kw)


# --------------------------------------------------------------------------- schedule, threads, result

@pytest.mark.parametrize("total", [1, 2, 3, 5, 9, 10, 11, 15, 40])
def test_one_cycle_schedule_is_defined_for_every_step_count(total):
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([p], lr=1e-2)
    sched = one_cycle_schedule(opt, 1e-2, total)
    lrs = []
    for _ in range(total):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert all(0 < v <= 1e-2 * (1 + 1e-12) for v in lrs)
    if total < 3:
        assert lrs == [1e-2] * total                       # constant: the cycle is undefined
    else:
        assert lrs[0] == pytest.approx(1e-2 / 25) and max(lrs) > 0.5e-2   # warm-up, then the peak is reached


def test_threads_rule_and_restore():
    small = _model()
    big = torch.nn.Linear(1001, 1000)                       # 1,001,000 parameters
    assert resolve_threads(FAST, small, torch.device("cpu")) == 1
    assert resolve_threads(FAST, big, torch.device("cpu")) is None
    assert resolve_threads(FAST, small, torch.device("cuda")) is None
    assert resolve_threads(replace(FAST, threads=3), small, torch.device("cpu")) == 3
    x, y = _data()
    torch.set_num_threads(2)
    try:
        res = train(small, x, y, config=replace(FAST, epochs=1), progress=False)
        assert res["threads"] == 1 and torch.get_num_threads() == 2     # applied while training, then restored
    finally:
        torch.set_num_threads(1)


def test_result_reports_the_steps_taken():
    x, y = _data(n=33)                                     # batches of 16, 16 and a lone 1 (skipped)
    res = train(_model(), x, y, config=replace(FAST, epochs=3), progress=False)
    assert res["steps_per_epoch"] == 3 and res["steps"] == res["steps_run"] == 3 * 2
    assert res["epochs"] == res["epochs_run"] == 3 and res["resumed_from_epoch"] == 0
    assert res["final_loss"] == res["loss"][-1] and len(res["loss"]) == 3 and res["curve"] == []
    w = np.zeros(33, np.float32)
    w[:3] = 1.0                                            # batches with only zero weights are skipped too
    res = train(_model(), x, y, config=replace(FAST, epochs=3), sample_weights=w, progress=False)
    gen = torch.Generator().manual_seed(FAST.seed)         # the loop's seeded shuffles
    perms = [torch.randperm(33, generator=gen) for _ in range(3)]
    expected = sum(1 for p in perms for s in (0, 16) if w[p[s:s + 16].numpy()].any())
    assert res["steps"] == expected and 3 <= expected < 6
    calls = []
    res = train(_model(), x, y, config=replace(FAST, epochs=2), progress=False,
                eval_fn=lambda m: calls.append(m.training) or 0.5)
    assert [c[0] for c in res["curve"]] == [0, 1, 2] and calls == [False] * 3


def test_no_trainable_parameter_is_a_clear_error():
    x, y = _data()
    m = _model()
    for p in m.parameters():
        p.requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameter"):
        train(m, x, y, config=FAST, progress=False)


# --------------------------------------------------------------------------- hooks

def test_gradient_mask_keeps_unselected_rows_bit_identical():
    x, y = _data()
    m = _model()
    conv = m.stem[0].weight                                 # (8, C, 5)
    rows = torch.zeros(8, 1, 1, dtype=torch.bool)
    rows[:3] = True
    before = conv.detach().clone()
    hook = GradientMask([(conv, rows)])
    groups = hook.param_groups(m, FAST)
    assert groups[-1]["weight_decay"] == 0.0 and groups[-1]["params"] == [conv]
    train(m, x, y, config=replace(FAST, weight_decay=0.1), hooks=hook, progress=False)
    assert torch.equal(conv[3:], before[3:])                # masked rows: no gradient, no decay
    assert not torch.equal(conv[:3], before[:3])


def test_frozen_modules_keep_their_running_statistics():
    x, y = _data()
    m = _model()
    bn = m.stem[1]
    rm, rv = bn.running_mean.clone(), bn.running_var.clone()
    train(m, x, y, config=replace(FAST, epochs=1), hooks=[FrozenModules([bn])], progress=False)
    assert torch.equal(bn.running_mean, rm) and torch.equal(bn.running_var, rv)


def test_hooks_end_runs_on_errors_and_unresumable_hooks_refuse_checkpoints(tmp_path):
    x, y = _data()

    class Probe(TrainHooks):
        resumable = False
        ended = 0

        def on_end(self, model):
            Probe.ended += 1

    with pytest.raises(ValueError, match="y must have shape"):
        train(_model(), x, y[:-1], config=FAST, hooks=Probe(), progress=False)
    with pytest.raises(ValueError, match=r"checkpoint_path cannot be used with a hook .*\['Probe'\]"):
        train(_model(), x, y, config=FAST, hooks=Probe(), checkpoint_path=tmp_path / "c.ckpt", progress=False)
    assert Probe.ended == 2 and not (tmp_path / "c.ckpt").exists()

    class Groups(TrainHooks):
        def param_groups(self, model, config):
            return [{"params": list(model.parameters())}]

    with pytest.raises(ValueError, match="2 hooks define parameter groups; at most one may"):
        train(_model(), x, y, config=FAST, hooks=[Groups(), Groups()], progress=False)


# --------------------------------------------------------------------------- checkpoints (issue 9, Critical)

def test_resume_is_bit_exact_and_really_resumes(tmp_path):
    x, y = _data()
    cfg = FAST                                              # 4 epochs of 4 steps
    np.random.seed(1)
    random.seed(1)
    ref_model = _model()
    ref = train(ref_model, x, y, config=cfg, loss_fn=crashing_loss(perturb_global_rngs=True), progress=False)

    ckpt = tmp_path / "checkpoints" / "train.ckpt"
    np.random.seed(1)
    random.seed(1)
    with pytest.raises(KeyboardInterrupt):                  # killed in the 2nd step of epoch 3
        train(_model(), x, y, config=cfg, loss_fn=crashing_loss(10, perturb_global_rngs=True), checkpoint_path=ckpt, progress=False)
    head = read_checkpoint_header(ckpt)
    assert head["epoch"] == 2 and head["steps"] == 8 and len(head["history"]) == 2
    np.random.seed(99)                                      # whatever the global RNGs hold now: the checkpoint wins
    random.seed(99)
    loss = crashing_loss(perturb_global_rngs=True)
    resumed_model = _model(seed=123)                        # other initial weights: the checkpoint wins
    res = train(resumed_model, x, y, config=cfg, loss_fn=loss, checkpoint_path=ckpt, progress=False)
    assert res["resumed_from_epoch"] == 2 and res["epochs_run"] == 2
    assert res["steps_run"] == 8 and loss.calls == 8        # only epochs 3 and 4 ran
    assert res["steps"] == ref["steps"] == 16
    assert res["loss"] == ref["loss"]                       # bit-exact, not approximately
    _same_weights(ref_model, resumed_model)
    assert read_checkpoint_header(ckpt)["epoch"] == 4

    # a finished checkpoint of the same run: nothing left to do, the saved weights come back
    again_model = _model(seed=7)
    again = train(again_model, x, y, config=cfg, loss_fn=crashing_loss(perturb_global_rngs=True), checkpoint_path=ckpt, progress=False)
    assert again["resumed_from_epoch"] == 4 and again["steps_run"] == 0 and again["loss"] == ref["loss"]
    _same_weights(ref_model, again_model)


def test_checkpoint_files_are_safetensors_and_json(tmp_path):
    from safetensors import safe_open

    x, y = _data()
    ckpt = tmp_path / "c.ckpt"
    train(_model(), x, y, config=replace(FAST, epochs=2), checkpoint_path=ckpt, progress=False)
    head = json.loads(ckpt.read_text())
    assert head["format"] == FORMAT and head["epoch"] == 2
    tp = tensors_path(ckpt, head["tensors_sha256"])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([ckpt.name, tp.name])   # earlier epoch's removed
    with safe_open(tp, framework="pt") as f:
        keys = set(f.keys())
    assert {"model.head.weight", "rng.shuffle"} <= keys and any(k.startswith("optimizer.") for k in keys)
    for p in (ckpt, tp):
        assert p.read_bytes()[:1] != b"\x80" and p.read_bytes()[:2] != b"PK"


class _Payload:
    """Unpickling this creates the marker file: proof that a pickle was executed."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_planted_pickle_is_never_executed(tmp_path):
    x, y = _data()
    marker = tmp_path / "PWNED"
    ckpt = tmp_path / "checkpoints" / "pretrain.ckpt"
    ckpt.parent.mkdir()
    payload = pickle.dumps(_Payload(marker))
    ckpt.write_bytes(payload)
    with pytest.raises(ValueError, match=r"pretrain\.ckpt is not a usable imutune checkpoint: it is a pickle .*"
                                         r"never unpickles.*to start fresh, delete .*pretrain\.ckpt"):
        train(_model(), x, y, config=FAST, checkpoint_path=ckpt, progress=False)
    torch.save({"x": _Payload(marker)}, ckpt)               # the zip format older imutune wrote
    with pytest.raises(ValueError, match="it is a pickle"):
        train(_model(), x, y, config=FAST, checkpoint_path=ckpt, progress=False)
    assert not marker.exists()
    # a pickle elsewhere in the folder (or as a stale tensors-file name) is simply never opened
    ckpt.unlink()
    (ckpt.parent / "evil.ckpt").write_bytes(payload)
    (ckpt.parent / "pretrain.ckpt.0000000000000000.safetensors").write_bytes(payload)
    res = train(_model(), x, y, config=replace(FAST, epochs=1), checkpoint_path=ckpt, progress=False)
    assert res["resumed_from_epoch"] == 0 and not marker.exists()
    assert not (ckpt.parent / "pretrain.ckpt.0000000000000000.safetensors").exists()   # stale: cleaned


def test_cli_rerun_with_planted_pickle_is_a_clear_error(tmp_path, capsys, watch_recordings):
    from imutune.cli import main
    from imutune.data.recordings import save_npz

    rec = next(r for r in watch_recordings if r.user == "subject01")
    save_npz(rec, tmp_path / "r.npz")
    marker = tmp_path / "PWNED"
    (tmp_path / "out" / "checkpoints").mkdir(parents=True)
    (tmp_path / "out" / "checkpoints" / "pretrain.ckpt").write_bytes(pickle.dumps(_Payload(marker)))
    rc = main(["pretrain", "--data", str(tmp_path / "r.npz"), "--out", str(tmp_path / "out"), "--model", "tinycnn1d",
               "--epochs", "1", "--no-progress", "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 2 and "it is a pickle" in err and "to start fresh, delete" in err and "Traceback" not in err
    assert not marker.exists()


def _finished(tmp_path, epochs=1):
    x, y = _data()
    ckpt = tmp_path / "c.ckpt"
    train(_model(), x, y, config=replace(FAST, epochs=epochs), checkpoint_path=ckpt, progress=False)
    return x, y, ckpt, json.loads(ckpt.read_text())


@pytest.mark.parametrize("damage,msg", [
    ("empty", r"the file is empty \(0 bytes"),
    ("truncated_json", r"it is not UTF-8 JSON \(truncated or foreign: JSONDecodeError"),
    ("binary", r"it is not UTF-8 JSON \(truncated or foreign: UnicodeDecodeError"),
    ("foreign_json", r"its format is None, expected 'imutune-train-checkpoint'"),
    ("other_version", r"it has version 99; this imutune reads version 1"),
    ("bad_field", r"field 'history' is 'x', expected a list"),
    ("tensors_missing", r"its tensors file c\.ckpt\.[0-9a-f]{16}\.safetensors is missing"),
    ("tensors_truncated", r"has SHA-256 .* the checkpoint names .* \(truncated or modified\)"),
    ("tensors_garbage", r"cannot be read"),
    ("wrong_model", r"its state does not fit this model and optimiser"),
])
def test_broken_checkpoints_are_clear_errors(tmp_path, damage, msg):
    x, y, ckpt, head = _finished(tmp_path)
    tp = tensors_path(ckpt, head["tensors_sha256"])
    if damage == "empty":
        ckpt.write_bytes(b"")
    elif damage == "truncated_json":
        ckpt.write_bytes(ckpt.read_bytes()[:200])
    elif damage == "binary":
        ckpt.write_bytes(b"\xff\xfe\x00garbage")
    elif damage == "foreign_json":
        ckpt.write_text(json.dumps({"model": "something else"}))
    elif damage in ("other_version", "bad_field"):
        head.update({"version": 99} if damage == "other_version" else {"history": "x"})
        ckpt.write_text(json.dumps(head))
    elif damage == "tensors_missing":
        tp.unlink()
    elif damage == "tensors_truncated":
        tp.write_bytes(tp.read_bytes()[:100])
    elif damage == "tensors_garbage":
        from imutune._io import sha256_bytes

        blob = b"\x10\x00\x00\x00\x00\x00\x00\x00{not safetensors}"
        head["tensors_sha256"] = sha256_bytes(blob)
        tensors_path(ckpt, head["tensors_sha256"]).write_bytes(blob)
        ckpt.write_text(json.dumps(head))
    elif damage == "wrong_model":
        from safetensors.torch import load_file, save_file

        from imutune._io import sha256_file

        t = load_file(tp)
        t["model.head.weight"] = torch.zeros(5, 5)
        tp.unlink()
        tmp = tmp_path / "t.safetensors"
        save_file(t, tmp)
        head["tensors_sha256"] = sha256_file(tmp)
        tmp.rename(tensors_path(ckpt, head["tensors_sha256"]))
        ckpt.write_text(json.dumps(head))
    with pytest.raises(ValueError, match=msg) as e:
        train(_model(), x, y, config=replace(FAST, epochs=1), checkpoint_path=ckpt, progress=False)
    assert str(ckpt) in str(e.value) and "to start fresh, delete" in str(e.value) and "--out" in str(e.value)


def test_other_run_starts_fresh_and_a_crash_before_the_json_keeps_the_last_checkpoint(tmp_path):
    x, y, ckpt, head = _finished(tmp_path, epochs=2)
    # a tensors file written by a killed run whose JSON never landed: the previous checkpoint stays valid
    (tmp_path / "c.ckpt.abcdefabcdefabcd.safetensors").write_bytes(b"half-written")
    res = train(_model(), x, y, config=replace(FAST, epochs=2), checkpoint_path=ckpt, progress=False)
    assert res["resumed_from_epoch"] == 2
    # another config, other data or another extra_config is another run: trained from scratch, overwritten
    assert train(_model(), x, y, config=replace(FAST, epochs=3), checkpoint_path=ckpt,
                 progress=False)["resumed_from_epoch"] == 0
    x2 = x.copy()
    x2[0, 0, 0] += 1.0
    assert train(_model(), x2, y, config=replace(FAST, epochs=3), checkpoint_path=ckpt,
                 progress=False)["resumed_from_epoch"] == 0
    assert train(_model(), x2, y, config=replace(FAST, epochs=3), checkpoint_path=ckpt, progress=False,
                 extra_config={"model_name": "other"})["resumed_from_epoch"] == 0
    # the thread count is not part of a run's identity
    assert train(_model(), x2, y, config=replace(FAST, epochs=3, threads=2), checkpoint_path=ckpt, progress=False,
                 extra_config={"model_name": "other"})["resumed_from_epoch"] == 3
    assert not list(tmp_path.glob("*abcdef*")) and not list(tmp_path.glob(".*.tmp"))


def test_pretrain_records_steps_and_resume(tmp_path):
    from imutune.signal.windows import WindowConfig, Windows
    from imutune.train.pretrain import pretrain

    x, y = _data()
    w = Windows(x, y, (np.arange(64) % 8).astype(np.int64), np.array(["u"] * 64), ("a", "b"), ("x", "y", "z"))
    win = WindowConfig(window_s=0.64, hop_s=0.32, sample_rate_hz=50.0)
    b = pretrain(w, model_name="tinycnn1d", window=win, train_config=replace(FAST, epochs=2),
                 checkpoint_path=tmp_path / "p.ckpt", progress=False)
    assert b.info["resumed_from_epoch"] == 0 and b.info["steps"] > 0
    b2 = pretrain(w, model_name="tinycnn1d", window=win, train_config=replace(FAST, epochs=2),
                  checkpoint_path=tmp_path / "p.ckpt", progress=False)
    assert b2.info["resumed_from_epoch"] == 2 and b2.info["steps"] == b.info["steps"]
    _same_weights(b.model, b2.model)



def test_checkpoint_save_removes_a_killed_writers_temporary_file_but_not_a_live_one(tmp_path):
    # a temporary file beside the checkpoint: stale (a killed writer's) is removed on the next save; one written
    # moments ago may be another process's write in flight (two benchmark shards on one folder) and stays
    import os
    import time

    stale, live = tmp_path / ".c.ckpt.111111111111.tmp", tmp_path / ".c.ckpt.222222222222.tmp"
    stale.write_bytes(b"killed")
    live.write_bytes(b"in flight")
    old = time.time() - 3600
    os.utime(stale, (old, old))
    _finished(tmp_path)                                   # trains and saves c.ckpt
    assert not stale.exists() and live.read_bytes() == b"in flight"
