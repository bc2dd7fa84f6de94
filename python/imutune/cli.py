"""``imutune`` command line: parses arguments and calls library functions.

Subcommands: ``demo``, ``pretrain``, ``finetune``, ``personalize``, ``apply-patch``, ``export``,
``replay``, ``models``, and the ``bench`` group (``bench filterloss``, ``bench selective``, ...).
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import time
from dataclasses import replace
from functools import partial
from typing import Sequence

__all__ = ["main", "build_parser"]


def _add_window_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--window-s", type=float, default=2.0, help="window length in seconds (default 2.0)")
    p.add_argument("--hop-s", type=float, default=0.5, help="hop between windows in seconds (default 0.5)")
    p.add_argument("--sample-rate-hz", type=float, default=50.0,
                   help="model sample rate in Hz; recordings at another rate are resampled (default 50)")
    p.add_argument("--min-purity", type=float, default=0.8, help="minimum majority-label fraction per window")


def _add_train_args(p: argparse.ArgumentParser, *, preset: str) -> None:
    """Training flags whose defaults come from ``imutune.train.config`` preset ``preset`` (PRETRAIN / FINETUNE)."""
    from .train import config as tc

    c = getattr(tc, preset)
    p.set_defaults(train_preset=preset)
    p.add_argument("--epochs", type=int, default=c.epochs, help=f"training epochs (default {c.epochs})")
    p.add_argument("--lr", type=float, default=c.lr, help=f"peak learning rate (default {c.lr:g})")
    p.add_argument("--batch-size", type=int, default=c.batch_size, help=f"windows per step (default {c.batch_size})")
    p.add_argument("--seed", type=int, default=c.seed, help=f"random seed (default {c.seed})")
    p.add_argument("--device", default=c.device, choices=("auto", "cpu", "cuda"),
                   help=f"training device; auto uses CUDA when present (default {c.device})")
    p.add_argument("--threads", type=int, default=c.threads,
                   help="torch threads while training (default: 1 for models under 1M parameters on the CPU, "
                        "else torch's default)")
    p.add_argument("--min-steps", type=int, default=c.min_steps,
                   help=f"optimiser steps at least: the run takes max(epochs x batches, this) (default {c.min_steps})")
    p.add_argument("--balanced-batches", action=argparse.BooleanOptionalAction, default=c.balanced_batches,
                   help="class-balanced batches when --min-steps sets the budget (default "
                        f"{'on' if c.balanced_batches else 'off'})")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    ap = argparse.ArgumentParser(prog="imutune", description="On-device personalization of IMU sensor models.")
    ap.add_argument("--version", action="version", version=f"imutune {__version__}")
    sub = ap.add_subparsers(dest="command", required=True)

    d = sub.add_parser("demo", help="pretrain, personalize with FilterLoss, export and replay on the embedded watch data")
    d.add_argument("--out", required=True, help="output folder")
    d.add_argument("--quick", action="store_true", help="reduced run (under a minute)")
    d.add_argument("--target-user", default="subject10", help="target user (default subject10)")
    d.add_argument("--model", default="mobilecnn1d", help="registry model name (default mobilecnn1d)")
    d.add_argument("--imbalance-ratio", type=float, default=10.0, help="long-tail ratio of target training data")
    d.add_argument("--rehearsal-ratio", type=float, default=None,
                   help="source windows mixed into fine-tuning per target window (default 0 = target only)")
    d.add_argument("--protocol", default=None, choices=("calibrate-then-use", "new-placement"),
                   help="target split (default calibrate-then-use; new-placement: the cross-arm stress case)")
    d.add_argument("--label-noise", default=None,
                   help="noise of the calibration labels, e.g. boundary:0.2 (default none)")
    from .personalize.methods import DEFAULT_LOSS, NATIVE_LOSSES

    d.add_argument("--loss", default=None, type=lambda v: v.replace("_", "-"), choices=NATIVE_LOSSES,
                   help=f"fine-tuning loss (default {DEFAULT_LOSS})")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--threads", type=int, default=1, help="inference threads during replay (default 1)")
    d.add_argument("--realtime", action="store_true", help="pace the replay at the sensor rate")
    d.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    d.add_argument("--no-progress", action="store_true")

    p = sub.add_parser("pretrain", help="pretrain a model on source recordings")
    p.add_argument("--data", nargs="+", required=True,
                   help="recording files/folders (.npz, .csv, SHL-2018 folder) or 'watch'")
    p.add_argument("--out", required=True, help="output bundle folder")
    p.add_argument("--model", default="mobilecnn1d", help="registry model name")
    p.add_argument("--channels", nargs="+", default=None, help="channel names in model order (default: all)")
    p.add_argument("--holdout-fraction", type=float, default=0.2, help="source recordings held out for source accuracy")
    p.add_argument("--self-supervised", action="store_true",
                   help="ignore the labels: pretrain the encoder by multi-task transformation prediction (Saeed et "
                        "al., IMWUT 2019) on every window; the head is fitted later by finetune")
    p.add_argument("--selfsup-steps", type=int, default=None,
                   help="optimiser steps of --self-supervised (default: imutune.train.selfsup.SelfSupConfig)")
    p.add_argument("--units", default=None, help="units of recordings that declare none, converted to the model's: one for all, one per channel (g,g,g,rad/s,rad/s,rad/s) or channel=unit pairs; units: g, m/s^2, rad/s, deg/s")
    p.add_argument("--gravity", default=None, choices=("included", "removed"), help="whether the accelerometer of recordings that declare nothing includes gravity: included (raw accelerometer, as the watch data) or removed (linear acceleration); default unknown")
    _add_window_args(p)
    _add_train_args(p, preset="PRETRAIN")

    f = sub.add_parser("finetune", help="personalize a pretrained bundle for one user with FilterLoss")
    f.add_argument("--base", required=True, help="pretrained bundle folder")
    f.add_argument("--data", nargs="+", required=True, help="target user's training recordings")
    f.add_argument("--test-data", nargs="+", default=(), help="target user's held-out recordings (optional)")
    f.add_argument("--out", required=True, help="output bundle folder")
    from .personalize.methods import METHOD_NAMES

    f.add_argument("--loss", default=DEFAULT_LOSS, type=lambda v: v.replace("_", "-"), choices=METHOD_NAMES,
                   help=f"personalization method (default {DEFAULT_LOSS}); 'oracle' needs --label-noise")
    f.add_argument("--label-noise", default="none",
                   help="rehearse with noisy calibration labels, e.g. boundary:0.2, shift:1-3, symmetric:0.3, "
                        "confusion:IR-ER/ABD-FEL@0.3 (default none; see imutune.signal.label_noise)")
    f.add_argument("--source-data", nargs="+", default=(),
                   help="source recordings for rehearsal (same classes and channels as the base model)")
    f.add_argument("--rehearsal-ratio", type=float, default=0.0,
                   help="source windows mixed in per target window (needs --source-data; default 0)")
    f.add_argument("--imbalance-ratio", type=float, default=None,
                   help="long-tail subsample the target windows to this ratio (experiments)")
    f.add_argument("--units", default=None, help="units of recordings that declare none, converted to the model's: one for all, one per channel (g,g,g,rad/s,rad/s,rad/s) or channel=unit pairs; units: g, m/s^2, rad/s, deg/s")
    f.add_argument("--channels", nargs="+", default=None,
                   help="fine-tune on these of the model's channels only (default: the model's channels the "
                        "recordings have); a subset gets a new input layer from the pretrained filters' slices")
    f.add_argument("--gravity", default=None, choices=("included", "removed"), help="whether the accelerometer of recordings that declare nothing includes gravity: included (raw accelerometer, as the watch data) or removed (linear acceleration); default unknown")
    f.add_argument("--remove-gravity", action="store_true",
                   help="for a model trained without gravity: subtract a low-pass (0.3 Hz) gravity estimate from "
                        "recordings whose accelerometer includes it (adding gravity is not possible)")
    _add_train_args(f, preset="FINETUNE")

    e = sub.add_parser("export", help="export a bundle to ONNX and ExecuTorch (.pte) with parity checks")
    e.add_argument("--model", required=True, help="bundle folder (model.json + model.safetensors)")
    e.add_argument("--data", nargs="+", required=True,
                   help="training recordings: their windows drive the parity check and calibrate int8 variants")
    e.add_argument("--out", required=True, help="output folder")
    e.add_argument("--formats", nargs="+", default=["onnx", "pte"],
                   choices=("onnx", "pte", "onnx-int8", "pte-int8", "pte-portable"),
                   help="variants; int8 ones are calibrated on the --data windows (default onnx pte)")
    e.add_argument("--eval-data", nargs="+", default=(),
                   help="held-out recordings: record each artifact's accuracy and the int8 change vs fp32")
    e.add_argument("--units", default=None, help="units of recordings that declare none (as for finetune)")
    e.add_argument("--no-progress", action="store_true", help="hide the progress bar")

    r = sub.add_parser("replay", help="stream recordings through an exported model")
    r.add_argument("--model", required=True, help="model.onnx or model.pte (manifest.json next to it)")
    r.add_argument("--manifest", default=None, help="manifest.json (default: next to the model)")
    r.add_argument("--data", nargs="+", required=True, help="recordings to replay")
    r.add_argument("--out", required=True, help="output folder")
    r.add_argument("--threads", type=int, default=None, help="inference threads (default 1, or the profile's)")
    r.add_argument("--chunk-samples", default=None,
                   help="samples per sensor delivery, or 'hop' (default 1, or the profile's)")
    r.add_argument("--realtime", action=argparse.BooleanOptionalAction, default=None,
                   help="pace at the sensor rate (default off, or the profile's)")
    r.add_argument("--profile", default=None,
                   help="device profile: phone-big-core, phone-two-cores, phone-big-core-per-sample, host")
    r.add_argument("--smoothing-k", type=int, default=1, help="also score a majority vote over k windows")
    r.add_argument("--stream", action="store_true", help="read recordings incrementally (constant memory)")
    r.add_argument("--dump-golden", default=None, metavar="DIR",
                   help="also write golden data (raw samples, window ends, inputs, logits) to DIR")
    r.add_argument("--no-progress", action="store_true", help="hide the progress bar")

    sub.add_parser("models", help="list registered models")

    bench = sub.add_parser("bench", help="benchmarks (JSON, Markdown table, PNG plots)")
    bench_sub = bench.add_subparsers(dest="bench_command", required=True)
    _add_bench_filterloss(bench_sub)
    _add_bench_selective(bench_sub)
    _add_bench_latency(bench_sub)
    _add_bench_transfer(bench_sub)
    _add_personalize(sub)
    _add_fleet(sub, bench_sub)
    _add_codec(sub, bench_sub)
    _add_ondevice(sub, bench_sub)
    return ap


def _add_bench_filterloss(bench_sub) -> None:
    b = bench_sub.add_parser("filterloss", help="FilterLoss vs baselines and confident learning under label noise: "
                                                "calibrate-then-use on the watch data, or a cross-dataset target")
    b.add_argument("--out", required=True, help="output folder (finished cells there are reused)")
    b.add_argument("--quick", action="store_true", help="reduced run: 3 subjects, 1 seed, few epochs")
    b.add_argument("--model", default=None, help="registry model name (default mobilecnn1d)")
    b.add_argument("--subjects", type=int, nargs="+", default=None,
                   help="LOSO target subjects 1..10 (default all)")
    b.add_argument("--source-subjects", type=int, nargs="+", default=None,
                   help="pretraining subjects (default: all other subjects; all 10 for --target-data)")
    b.add_argument("--ratios", nargs="+", default=None,
                   help="imbalance ratios, numbers >= 1 or 'natural' (default 10)")
    b.add_argument("--protocol", default=None, choices=("calibrate-then-use", "new-placement"),
                   help="target split (default calibrate-then-use; new-placement: the cross-arm stress case)")
    b.add_argument("--calibration-fraction", type=float, default=None,
                   help="calibrate-then-use: first share of each recording used for calibration (default 0.5)")
    b.add_argument("--noises", nargs="+", default=None,
                   help="label-noise specs (default none boundary:0.2 shift:1-3 symmetric:0.3)")
    b.add_argument("--cached-only", action="store_true",
                   help="report from the finished cells in --out only; run nothing new")
    b.add_argument("--seeds", type=int, nargs="+", default=None, help="seeds (default 0 1 2)")
    b.add_argument("--methods", nargs="+", default=None, help="methods (default: all baselines + FilterLoss)")
    b.add_argument("--epochs", type=int, default=None, help="fine-tuning epochs of every method")
    b.add_argument("--pretrain-epochs", type=int, default=None, help="pretraining epochs")
    b.add_argument("--target-data", nargs="+", default=(),
                   help="cross-dataset target: generic recordings of one user (.npz/.csv files or folders)")
    b.add_argument("--target-test-data", nargs="+", default=(),
                   help="its test recordings (default: calibrate-then-use split of --target-data)")
    b.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    b.add_argument("--threads", type=int, default=1, help="torch CPU threads for the run (default 1)")
    b.add_argument("--no-progress", action="store_true")


def _bench_filterloss(args) -> int:
    from .bench.filterloss import (
        FilterLossBenchConfig,
        quick_config,
        run_filterloss_bench,
    )

    cfg = quick_config() if args.quick else FilterLossBenchConfig()
    over: dict = {"device": args.device, "target_data": tuple(args.target_data),
                  "target_test_data": tuple(args.target_test_data)}
    if args.model:
        over["model_name"] = args.model
    if args.subjects:
        over["subjects"] = tuple(args.subjects)
    if args.source_subjects:
        over["source_subjects"] = tuple(args.source_subjects)
    if args.ratios:
        over["ratios"] = tuple(None if r.lower() in ("natural", "none") else float(r) for r in args.ratios)
    if args.seeds:
        over["seeds"] = tuple(args.seeds)
    if args.methods:
        over["methods"] = tuple(m.replace("-", "_") for m in args.methods)
    if args.protocol:
        over["protocol"] = args.protocol
    if args.calibration_fraction is not None:
        over["calibration_fraction"] = args.calibration_fraction
    if args.noises:
        over["noises"] = tuple(args.noises)
    if args.epochs:
        over["finetune"] = replace(cfg.finetune, epochs=args.epochs)
    if args.pretrain_epochs:
        over["pretrain"] = replace(cfg.pretrain, epochs=args.pretrain_epochs)
    cfg = replace(cfg, **over)
    res = run_filterloss_bench(args.out, cfg, progress=not args.no_progress, threads=args.threads,
                               cached_only=args.cached_only)
    print(json.dumps(res["targets"], indent=2))
    return 0


def _add_bench_selective(bench_sub) -> None:
    b = bench_sub.add_parser("selective", help="selective filter fine-tuning (Borda) vs full, layer-level and "
                                               "random filters under sensor distortions on the watch data")
    b.add_argument("--out", required=True, help="output folder (finished runs there are reused)")
    b.add_argument("--quick", action="store_true", help="reduced run: 1 user, 1 seed, moderate severity, 5 shots")
    b.add_argument("--model", default=None, help="registry model name (default mobilecnn1d)")
    b.add_argument("--targets", nargs="+", default=None, help="target users (default subject09 subject10)")
    b.add_argument("--subjects", type=int, nargs="+", default=None, help="watch subjects 1..10 to load (default all)")
    b.add_argument("--distortions", nargs="+", default=None,
                   help="noise bias gain clip rate rotation dropout (default all)")
    b.add_argument("--levels", type=int, nargs="+", default=None, help="severity levels 0 1 2 (default all)")
    b.add_argument("--shots", type=int, nargs="+", default=None, help="windows per class (default 5 20)")
    b.add_argument("--seeds", type=int, nargs="+", default=None, help="seeds (default 0 1)")
    b.add_argument("--fractions", type=float, nargs="+", default=None, help="Borda budgets (default 0.05 0.1 0.25)")
    b.add_argument("--deep-fraction", type=float, default=None,
                   help="budget of the deep-budget modes (borda/random/shift/combined-deep; default 0.1)")
    b.add_argument("--epochs", type=int, default=None, help="fine-tuning epochs of every method")
    b.add_argument("--selective-lr", type=float, default=None,
                   help="peak learning rate of the selected-filter methods (default: imutune.train.config.SELECTIVE's)")
    b.add_argument("--bn-statistics", default=None, choices=("frozen", "batch"),
                   help="partly selected batch norms: running or batch statistics (default frozen)")
    b.add_argument("--eval-every", type=int, default=None, help="epochs between points of the accuracy curves")
    b.add_argument("--shard", default=None, metavar="I/N",
                   help="run only runs I, I+N, ... (N processes on one --out; the report is written once all runs "
                        "are there)")
    b.add_argument("--pretrain-epochs", type=int, default=None, help="pretraining epochs")
    b.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    b.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")


def _bench_selective(args) -> int:
    from .bench.selective import SelectiveBenchConfig, quick_config, run_selective_bench

    cfg = quick_config() if args.quick else SelectiveBenchConfig()
    over: dict = {"threads": args.threads, "pretrain": replace(cfg.pretrain, device=args.device),
                  "finetune": replace(cfg.finetune, device=args.device),
                  "selective_train": replace(cfg.selective_train, device=args.device)}
    for key, attr in (("model", "model_name"), ("targets", "target_users"), ("subjects", "subjects"),
                      ("distortions", "distortions"), ("levels", "levels"), ("shots", "shots"), ("seeds", "seeds"),
                      ("fractions", "fractions")):
        v = getattr(args, key)
        if v:
            over[attr] = v if isinstance(v, str) else tuple(v)
    if args.deep_fraction is not None:
        over["deep_fraction"] = args.deep_fraction
    if args.epochs:
        over["finetune"] = replace(over["finetune"], epochs=args.epochs)
        over["selective_train"] = replace(over["selective_train"], epochs=args.epochs)
    if args.selective_lr is not None:
        over["selective_train"] = replace(over["selective_train"], lr=args.selective_lr)
    if args.bn_statistics:
        over["bn_statistics"] = args.bn_statistics
    if args.eval_every is not None:
        over["eval_every"] = args.eval_every
    if args.shard is not None:
        try:
            i, n = (int(v) for v in args.shard.split("/"))
        except ValueError:
            raise ValueError(f"--shard must be I/N with integers, e.g. 0/2, got {args.shard!r}") from None
        over["shard"] = (i, n)
    if args.pretrain_epochs:
        over["pretrain"] = replace(over["pretrain"], epochs=args.pretrain_epochs)
    res = run_selective_bench(args.out, _from_flags(partial(replace, cfg), **over))   # errors name the flag
    print(json.dumps(res.get("targets", res), indent=2))
    return 0


def _add_personalize(sub) -> None:
    p = sub.add_parser("personalize", help="selective filter fine-tuning for one user; writes a small patch "
                                           "of the base model")
    p.add_argument("--base", required=True, help="base bundle folder (model.json + model.safetensors)")
    p.add_argument("--data", nargs="+", required=True, help="the user's recordings (as the user's device records)")
    p.add_argument("--out", required=True, help="output folder: patch.safetensors, personalize_report.json")
    p.add_argument("--filters", type=float, default=0.1, help="fraction of conv filters to fine-tune, in (0, 1] "
                                                              "(default 0.1)")
    p.add_argument("--budget", default="per_layer", choices=("per_layer", "global", "deep"),
                   help="top fraction of every layer, a global parameter budget, or the global budget over the "
                        "deepest blocks (long frozen prefix, cheapest training; default per_layer)")
    p.add_argument("--ranking", default="distortion", choices=("distortion", "user_shift", "combined", "gradient"),
                   help="rank filters by the distortion (paper), by the user shift against the base model's "
                        "batch-norm statistics (imutune extension), the Borda count of both, or by the squared "
                        "gradient of the user's calibration loss per class (imutune extension; default distortion)")
    p.add_argument("--clean-data", nargs="+", default=None,
                   help="the same recordings without the device's distortion (paired ranking of the paper); "
                        "default: pair-free ranking against the base model's batch-norm statistics")
    p.add_argument("--distortion", default=None,
                   help="simulate a device: treat --data as clean and distort it, e.g. 'noise:10+rotation:30'")
    p.add_argument("--test-data", nargs="+", default=(), help="the user's held-out recordings (accuracy before/after)")
    p.add_argument("--loss", default="ce", choices=("ce", "filterloss"))
    p.add_argument("--bn-statistics", default=None, choices=("frozen", "batch"),
                   help="partly selected batch norms normalize with their running statistics (kept; the selected "
                        "channels' scale and shift train) or with batch statistics for the selected channels "
                        "(default frozen)")
    p.add_argument("--write-bundle", action="store_true", help="also write the patched model as a bundle in OUT/model")
    _add_train_args(p, preset="SELECTIVE")

    a = sub.add_parser("apply-patch", help="apply a personalize patch to its base bundle; writes a full bundle")
    a.add_argument("--base", required=True, help="base bundle folder")
    a.add_argument("--patch", required=True, help="patch.safetensors")
    a.add_argument("--out", required=True, help="output bundle folder (then: imutune export --model OUT ...)")


def _personalize(args) -> int:
    from .jobs import run_personalize
    from .personalize.selective import SelectiveConfig

    given = {} if args.bn_statistics is None else {"bn_statistics": args.bn_statistics}   # default: SelectiveConfig's
    cfg = SelectiveConfig(fraction=args.filters, budget=args.budget, ranking=args.ranking, train=_train_config(args),
                          loss=args.loss, **given)
    res = run_personalize(args.base, args.data, args.out, config=cfg, clean_data=args.clean_data,
                          distortion=args.distortion, test_data=args.test_data, write_bundle=args.write_bundle,
                          progress=not args.no_progress)
    keys = ("ranking", "selected_filters", "total_filters", "trainable_parameters", "patch_bytes", "model_bytes",
            "patch_fraction", "train_seconds", "before", "after")
    print(json.dumps({k: res[k] for k in keys if k in res}))
    return 0


def _apply_patch(args) -> int:
    from .jobs import run_apply_patch

    print(json.dumps(run_apply_patch(args.base, args.patch, args.out)))
    return 0


def _add_bench_latency(bench_sub) -> None:
    b = bench_sub.add_parser("latency", help="latency of every backend (PyTorch, ONNX Runtime fp32/int8, "
                                             "ExecuTorch XNNPACK fp32/int8, portable) against the host's peak")
    b.add_argument("--out", required=True, help="output folder")
    b.add_argument("--quick", action="store_true", help="smoke run: tiny model, T=32, 1 thread, no extra sections")
    b.add_argument("--models", nargs="+", default=None, help="registry models (default mobilecnn1d resnet1d34)")
    b.add_argument("--windows", nargs="+", default=None,
                   help="window lengths as T:rate_hz (default 100:50 500:100)")
    b.add_argument("--threads", type=int, nargs="+", default=None, help="thread counts (default 1 2)")
    b.add_argument("--backends", nargs="+", default=None, help="subset of the backends (default all six)")
    b.add_argument("--min-reps", type=int, default=None, help="calls per round at least (default 30)")
    b.add_argument("--no-accuracy", action="store_true", help="skip the int8 accuracy section")
    b.add_argument("--accuracy-epochs", type=int, nargs=2, default=None, metavar=("MOBILE", "RESNET"),
                   help="training epochs of mobilecnn1d and resnet1d34 for the int8 accuracy (default 15 3)")
    b.add_argument("--stream-hours", type=float, default=None, help="long-stream section length (default 24; 0 skips)")


def _bench_latency(args) -> int:
    from .bench.latency import LatencyBenchConfig, quick_config, run_latency_benchmark

    cfg = quick_config() if args.quick else LatencyBenchConfig()
    over: dict = {}
    if args.models:
        over["models"] = tuple(args.models)
    if args.windows:
        try:
            over["windows"] = tuple((int(w.split(":")[0]), float(w.split(":")[1])) for w in args.windows)
        except (IndexError, ValueError):
            raise ValueError(f"--windows takes T:rate_hz pairs such as 100:50, got {args.windows}") from None
    if args.threads:
        over["threads"] = tuple(args.threads)
    if args.backends:
        over["backends"] = tuple(args.backends)
    if args.min_reps:
        over["min_reps"] = args.min_reps
    if args.no_accuracy:
        over["accuracy"] = False
    if args.accuracy_epochs:
        over["accuracy_epochs"] = {"mobilecnn1d": args.accuracy_epochs[0], "resnet1d34": args.accuracy_epochs[1]}
    if args.stream_hours is not None:
        over["stream_hours"] = args.stream_hours
    cmd = ["imutune bench latency --out", str(args.out)] + (["--quick"] if args.quick else [])
    for flag, v in (("--models", args.models), ("--windows", args.windows), ("--threads", args.threads),
                    ("--backends", args.backends), ("--min-reps", args.min_reps),
                    ("--accuracy-epochs", args.accuracy_epochs), ("--stream-hours", args.stream_hours)):
        if v is not None:
            cmd += [flag, *(str(x) for x in (v if isinstance(v, list) else [v]))]
    cmd += ["--no-accuracy"] if args.no_accuracy else []
    res = run_latency_benchmark(args.out, replace(cfg, **over), command=" ".join(cmd))
    print(json.dumps(res["targets"], indent=2))
    return 0


def _add_fleet(sub, bench_sub) -> None:
    """``imutune fleet`` and ``imutune bench fleet`` (defaults live in imutune.fleet.worker.FleetConfig)."""
    from .fleet import EXPORT_KINDS, FLEET_METHODS

    f = sub.add_parser("fleet", help="personalize every user of a fleet on Ray (local or a cluster); resumable")
    f.add_argument("--base", required=True, help="base bundle folder (model.json + model.safetensors)")
    f.add_argument("--users", required=True,
                   help="folder of per-user folders, or a .json/.csv manifest of user ids and recordings")
    f.add_argument("--out", required=True, help="output folder (users/<id>/ patch, metrics, done marker; report)")
    f.add_argument("--address", default=None,
                   help="Ray cluster: 'auto' (this machine's cluster) or 'ray://host:10001'; default: a private "
                        "local Ray instance")
    f.add_argument("--cpus-per-user", type=int, default=1, help="CPUs (and torch threads) per user task (default 1)")
    f.add_argument("--workers", type=int, default=None,
                   help="users in flight at once (default: cluster CPUs // --cpus-per-user)")
    f.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local Ray instance (default: all)")
    f.add_argument("--method", default=None, choices=FLEET_METHODS, help=f"personalization method (default {FLEET_METHODS[0]})")
    f.add_argument("--epochs", type=int, default=None, help="fine-tuning epochs (default: the method's preset)")
    f.add_argument("--seed", type=int, default=None, help="fleet seed; each user's seed derives from it and the id")
    f.add_argument("--calibration-fraction", type=float, default=None,
                   help="calibrate-then-use: share of each recording that calibrates (default 0.5)")
    f.add_argument("--max-calibration-windows", type=int, default=None,
                   help="subsample calibration windows to at most this many (default: all)")
    f.add_argument("--export", nargs="+", default=(), choices=EXPORT_KINDS,
                   help="also write per user: the patched bundle ('bundle') and/or an ONNX export ('onnx')")
    f.add_argument("--limit", type=int, default=None, help="compute at most this many users in this run")
    f.add_argument("--no-classical-reference", action="store_true",
                   help="skip the per-user RandomForest reference on the same calibration windows (default: fit it)")
    f.add_argument("--no-progress", action="store_true", help="hide the progress bar")

    b = bench_sub.add_parser("fleet", help="simulated fleet on Ray: users/core-hour, 1 vs 2 workers, killed "
                                           "worker and killed fleet recovery")
    b.add_argument("--out", required=True, help="output folder")
    b.add_argument("--users", type=int, default=None, help="simulated users (default 200; --quick 20)")
    b.add_argument("--quick", action="store_true", help="20 users, shorter pretraining")
    b.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local Ray instance (default 2)")
    b.add_argument("--workers", type=int, nargs="+", default=None,
                   help="worker counts of the scaling runs (default 1 2; the largest is the reference run)")
    b.add_argument("--no-kill", action="store_true", help="skip the killed-worker and killed-fleet phases")
    b.add_argument("--no-kill-driver", action="store_true", help="skip the killed-fleet phase only")
    b.add_argument("--round-users", type=int, default=None,
                   help="scaling: users per interleaved round of each worker count (default 10; --quick 5)")
    b.add_argument("--no-progress", action="store_true")


def _fleet_config(args):
    from .fleet.worker import FleetConfig

    cfg = FleetConfig()
    over: dict = {}
    if args.method:
        over["method"] = args.method
    if args.seed is not None:
        over["seed"] = args.seed
    if args.calibration_fraction is not None:
        over["calibration_fraction"] = args.calibration_fraction
    if args.no_classical_reference:
        over["classical_reference"] = False
    if args.max_calibration_windows is not None:
        over["max_calibration_windows"] = args.max_calibration_windows
    if args.export:
        over["exports"] = tuple(args.export)
    if args.epochs is not None:
        over["finetune"] = replace(cfg.finetune, train=replace(cfg.finetune.train, epochs=args.epochs))
        over["selective"] = replace(cfg.selective, train=replace(cfg.selective.train, epochs=args.epochs))
    return replace(cfg, **over)


def _fleet(args) -> int:
    from .fleet.run import run_fleet

    cmd = f"imutune fleet --base {args.base} --users {args.users} --out {args.out}"
    rep = run_fleet(args.base, args.users, args.out, config=_fleet_config(args), address=args.address,
                    workers=args.workers, cpus_per_user=args.cpus_per_user, num_cpus=args.num_cpus, limit=args.limit,
                    progress=not args.no_progress, command=cmd)
    t = rep["throughput"]
    print(json.dumps({"counts": rep["counts"], "failures_by_reason": rep["failures_by_reason"],
                      "users_per_hour": t.get("users_per_hour"), "users_per_core_hour": t.get("users_per_core_hour"),
                      "gain_macro_f1_mean": (rep["quality"]["gain_macro_f1"] or {}).get("mean"),
                      "report": str(args.out) + "/fleet_report.md"}))
    return 0


def _bench_fleet(args) -> int:
    from .bench.fleet import FleetBenchConfig, quick_config, run_fleet_bench

    cfg = quick_config() if args.quick else FleetBenchConfig()
    over: dict = {}
    if args.users:
        over["n_users"] = args.users
    if args.num_cpus:
        over["num_cpus"] = args.num_cpus
    if args.workers:
        over["workers"] = tuple(args.workers)
    if args.no_kill:
        over.update(kill_worker=False, kill_driver=False)
    if args.no_kill_driver:
        over["kill_driver"] = False
    if args.round_users:
        over["round_users"] = args.round_users
    cmd = ["imutune bench fleet --out", str(args.out)] + (["--quick"] if args.quick else [])
    cmd += [f"--users {args.users}"] if args.users else []
    cmd += [f"--num-cpus {args.num_cpus}"] if args.num_cpus else []
    cmd += ["--workers " + " ".join(str(w) for w in args.workers)] if args.workers else []
    cmd += ["--no-kill"] if args.no_kill else []
    cmd += ["--no-kill-driver"] if args.no_kill_driver else []
    cmd += [f"--round-users {args.round_users}"] if args.round_users else []
    res = run_fleet_bench(args.out, replace(cfg, **over), command=" ".join(cmd), progress=not args.no_progress)
    print(json.dumps(res["targets"], indent=2))
    return 0


#: ``imutune bench <name>`` handlers; each benchmark adds its parser in build_parser and its entry here.
_BENCH_HANDLERS = {"filterloss": _bench_filterloss, "selective": _bench_selective, "latency": _bench_latency}
_BENCH_HANDLERS["fleet"] = _bench_fleet


# --------------------------------------------------------------------------- transfer (issue 15)


def _add_bench_transfer(bench_sub) -> None:
    from .bench.transfer import METHODS, TransferBenchConfig

    c = TransferBenchConfig()
    b = bench_sub.add_parser("transfer", help="cross-dataset transfer from the watch model vs self-supervised, "
                                              "probe, scratch and RandomForest / logistic regression on statistics")
    b.add_argument("--target-data", nargs="+", default=list(c.target_data),
                   help="target recordings, or 'basicmotions' (default; read from the installed aeon package)")
    b.add_argument("--target-test-data", nargs="+", default=(), help="target test recordings (default: split "
                                                                       "--target-data by recording)")
    b.add_argument("--units", default=None, help="units of target recordings that declare none (as for finetune)")
    b.add_argument("--source-model", default=None, help="a pretrained watch bundle (default: pretrain and cache one)")
    b.add_argument("--out", required=True, help="output folder")
    b.add_argument("--quick", action="store_true", help="tiny model, 100 steps, short pretraining")
    b.add_argument("--model", default=None, help=f"registry model (default {c.model_name}; --quick: tinycnn1d)")
    b.add_argument("--ks", nargs="+", type=int, default=None, help=f"labelled windows per class (default {list(c.ks)})")
    b.add_argument("--seeds", nargs="+", type=int, default=None, help=f"seeds (default {list(c.seeds)})")
    b.add_argument("--steps", type=int, default=None, help=f"optimiser steps per fine-tune (default {c.steps})")
    b.add_argument("--selfsup-steps", type=int, default=None, help=f"self-supervised steps (default {c.selfsup_steps})")
    b.add_argument("--pretrain-epochs", type=int, default=None, help=f"watch pretraining epochs (default {c.pretrain_epochs})")
    b.add_argument("--methods", nargs="+", default=None, choices=METHODS, help="methods (default all)")
    b.add_argument("--device", default=c.device, choices=("auto", "cpu", "cuda"))
    b.add_argument("--no-progress", action="store_true")


def _bench_transfer(args) -> int:
    import sys

    from .bench.transfer import TransferBenchConfig, quick_config, run_transfer_bench

    over = {k: v for k, v in (("model_name", args.model), ("steps", args.steps), ("selfsup_steps", args.selfsup_steps),
                              ("pretrain_epochs", args.pretrain_epochs)) if v is not None}
    for k in ("ks", "seeds", "methods"):
        if getattr(args, k) is not None:
            over[k] = tuple(getattr(args, k))
    over.update(target_data=tuple(args.target_data), target_test_data=tuple(args.target_test_data),
                units=args.units, source_model=args.source_model, device=args.device)
    cfg = quick_config(**over) if args.quick else TransferBenchConfig(**over)
    prog = "python benchmarks/transfer.py" if sys.argv[0].endswith("transfer.py") else "imutune"
    res = run_transfer_bench(args.out, cfg, command=" ".join([prog, *sys.argv[1:]]), progress=not args.no_progress)
    print(json.dumps({"targets": {k: v.get("met") for k, v in res["targets"].items()}, "out": str(args.out)}))
    return 0


_BENCH_HANDLERS["transfer"] = _bench_transfer


# --------------------------------------------------------------------------- codec (issue 10)

def _add_codec(sub, bench_sub) -> None:
    c = sub.add_parser("codec", help="learned sensor codec: train, encode to .imz, decode to .npz")
    cs = c.add_subparsers(dest="codec_command", required=True)
    t = cs.add_parser("train", help="train a codec (codec-only, for a frozen classifier, or joint)")
    t.add_argument("--data", nargs="+", required=True, help="training recordings (.npz, .csv, folders) or 'watch'")
    t.add_argument("--out", required=True, help="output codec folder")
    t.add_argument("--mode", default="codec", choices=("codec", "classifier", "joint"),
                   help="codec: rate + lambda*MSE; classifier: + beta*CE of the frozen classifier; joint: both trained")
    t.add_argument("--classifier", default=None, help="classifier bundle folder (needed by classifier and joint)")
    t.add_argument("--init", default=None, help="codec folder to fine-tune from")
    t.add_argument("--lambda", dest="lmbda", type=float, default=None,
                   help="MSE weight against the rate in bits per sample (default 8)")
    t.add_argument("--beta", type=float, default=None, help="CE weight on decoded windows, relative to the MSE (default 0.1)")
    t.add_argument("--latent-channels", type=int, default=None, help="latent channels L (default 8)")
    t.add_argument("--epochs", type=int, default=None, help="training epochs (default 50)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    t.add_argument("--no-export", action="store_true", help="skip the encoder .onnx/.pte export")
    t.add_argument("--no-progress", action="store_true")
    e = cs.add_parser("encode", help="encode recordings into .imz streams")
    e.add_argument("--codec", required=True, help="codec folder")
    e.add_argument("--data", nargs="+", required=True, help="recording(s) to encode")
    e.add_argument("--out", required=True, help="FILE.imz for one recording, else a folder")
    d = cs.add_parser("decode", help="decode an .imz stream into a .npz recording")
    d.add_argument("--codec", required=True, help="codec folder")
    d.add_argument("--in", dest="in_file", required=True, help=".imz stream")
    d.add_argument("--out", required=True, help="output REC.npz")

    b = bench_sub.add_parser("codec", help="learned codec vs classic codecs on the watch data: rate, distortion, "
                                           "classifier and personalization macro-F1, encode latency")
    b.add_argument("--out", required=True, help="output folder")
    b.add_argument("--quick", action="store_true", help="reduced run (few users, epochs and operating points)")
    b.add_argument("--lambdas", type=float, nargs="+", default=None, help="lambda sweep of the learned codec")
    b.add_argument("--epochs", type=int, default=None, help="codec training epochs")
    b.add_argument("--modes", nargs="+", default=None, choices=("codec", "classifier", "joint"),
                   help="learned-codec training modes to run (default: all three)")
    b.add_argument("--test-subjects", type=int, nargs="+", default=None, help="held-out watch subjects")
    b.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")


def _codec(args) -> int:
    if args.codec_command == "train":
        from .codec.jobs import run_codec_train
        from .codec.model import CodecConfig
        from .codec.train import CodecTrainConfig

        over = {k: getattr(args, k) for k in ("lmbda", "beta", "epochs") if getattr(args, k) is not None}
        cfg = CodecTrainConfig(mode=args.mode, seed=args.seed, device=args.device, **over)
        ccfg = CodecConfig(latent_channels=args.latent_channels) if args.latent_channels else None
        res = run_codec_train(args.data, args.out, config=cfg, codec_config=ccfg, classifier=args.classifier,
                              init=args.init, export=not args.no_export, progress=not args.no_progress)
    elif args.codec_command == "encode":
        from .codec.jobs import run_codec_encode

        res = run_codec_encode(args.codec, args.data, args.out)
    else:
        from .codec.jobs import run_codec_decode

        res = run_codec_decode(args.codec, args.in_file, args.out)
    print(json.dumps(res))
    return 0


def _bench_codec(args) -> int:
    from .bench.codec import CodecBenchConfig, quick_config, run_codec_bench

    cfg = quick_config() if args.quick else CodecBenchConfig()
    over: dict = {"threads": args.threads}
    if args.lambdas:
        over["lambdas"] = tuple(args.lambdas)
    if args.epochs:
        over["codec_epochs"] = args.epochs
    if args.test_subjects:
        over["test_subjects"] = tuple(args.test_subjects)
    if args.modes:
        over["modes"] = tuple(args.modes)
    cmd = [f"imutune bench codec --out {args.out}"] + (["--quick"] if args.quick else [])
    for flag, v in (("--lambdas", args.lambdas), ("--epochs", args.epochs), ("--modes", args.modes),
                    ("--test-subjects", args.test_subjects),
                    ("--threads", args.threads)):
        if v is not None:
            cmd += [flag, *(str(x) for x in (v if isinstance(v, (list, tuple)) else [v]))]
    cmd = " ".join(cmd)
    res = run_codec_bench(args.out, replace(cfg, **over), command=cmd)
    print(json.dumps(res["targets"], indent=2))
    return 0


_BENCH_HANDLERS["codec"] = _bench_codec


# --------------------------------------------------------------------------- on-device training (issue 11)

def _add_ondevice(sub, bench_sub) -> None:
    from .ondevice.config import OnDeviceConfig

    d = OnDeviceConfig()
    e = sub.add_parser("export-train", help="export the FilterLoss training program model_train.pte (ExecuTorch "
                                            "training) next to model.pte")
    e.add_argument("--model", required=True, help="bundle folder (model.json + model.safetensors)")
    e.add_argument("--data", nargs="+", required=True,
                   help="recordings whose windows trace the program and check its gradients (e.g. source data)")
    e.add_argument("--out", required=True, help="export folder (model.pte is exported there if missing)")
    e.add_argument("--trainable", default="last-block", choices=("head", "last-block", "rows"),
                   help="trainable set: head, last residual block + head, or filter rows (default last-block)")
    e.add_argument("--batch-size", type=int, default=16, help="static batch of the program (default 16)")

    p = sub.add_parser("personalize-on-device", help="personalize through model_train.pte in the reference "
                                                     "runtime; writes an imutune patch")
    p.add_argument("--model", required=True, help="export folder with model_train.pte (imutune export-train)")
    p.add_argument("--data", nargs="+", required=True, help="the user's calibration recordings")
    p.add_argument("--out", required=True, help="output folder: patch.safetensors, ondevice_report.json")
    p.add_argument("--test-data", nargs="+", default=(), help="held-out recordings (accuracy before/after)")
    p.add_argument("--weights", default=None, help=".npy FilterLoss weight per calibration window (default: the "
                                                   "quality filter on model.pte's outputs)")
    p.add_argument("--steps", type=int, default=d.steps, help=f"SGD steps (default {d.steps})")
    p.add_argument("--lr", type=float, default=d.lr, help=f"SGD learning rate (default {d.lr:g})")
    p.add_argument("--momentum", type=float, default=d.momentum, help=f"SGD momentum (default {d.momentum:g})")
    p.add_argument("--filters", type=float, default=d.filters_fraction,
                   help=f"rows program: share of each layer's filters that train (default {d.filters_fraction:g})")
    p.add_argument("--profile", default=d.profile, help=f"device profile for the thread count (default {d.profile})")
    p.add_argument("--threads", type=int, default=None, help="ExecuTorch threads (default: the profile's)")
    p.add_argument("--seed", type=int, default=d.seed, help="data order seed")

    b = bench_sub.add_parser("ondevice", help="on-device FilterLoss training: step latency, memory, .pte sizes, "
                                              "parity, on-device vs server-side macro-F1 (calibrate-then-use)")
    b.add_argument("--out", required=True, help="output folder")
    b.add_argument("--quick", action="store_true", help="smoke run: tiny model, 2 users, few steps")
    b.add_argument("--users", type=int, default=None, help="target users, watch subjects 1..N (default 10)")
    b.add_argument("--steps", type=int, default=None, help="on-device SGD steps per user")


def _ondevice(args) -> int:
    from .ondevice.config import OnDeviceConfig
    from .ondevice.personalize import run_export_train, run_personalize_on_device

    if args.command == "export-train":
        res = run_export_train(args.model, args.data, args.out, variant=args.trainable, batch_size=args.batch_size)
        print(json.dumps(res))
        return 0
    cfg = OnDeviceConfig(steps=args.steps, lr=args.lr, momentum=args.momentum, filters_fraction=args.filters,
                         profile=args.profile, seed=args.seed)
    res = run_personalize_on_device(args.model, args.data, args.out, config=cfg, test_data=args.test_data,
                                    weights_path=args.weights, num_threads=args.threads)
    keys = ("variant", "n_calibration", "steps", "threads", "step_latency_ms", "category_counts", "patch",
            "patch_values", "before", "after")
    print(json.dumps({k: res[k] for k in keys if k in res}))
    return 0


def _bench_ondevice(args) -> int:
    from .bench.ondevice import OnDeviceBenchConfig, quick_config, run_ondevice_bench

    cfg = quick_config() if args.quick else OnDeviceBenchConfig()
    over: dict = {}
    if args.users:
        over["users"] = args.users
    if args.steps:
        over["steps"] = args.steps
    cmd = " ".join([f"imutune bench ondevice --out {args.out}"] + (["--quick"] if args.quick else [])
                   + ([f"--users {args.users}"] if args.users else []) + ([f"--steps {args.steps}"] if args.steps else []))
    res = run_ondevice_bench(args.out, replace(cfg, **over), command=cmd)
    print(json.dumps(res["targets"], indent=2))
    return 0


_BENCH_HANDLERS["ondevice"] = _bench_ondevice


def _quiet_third_party() -> None:
    """Hide deprecation chatter of torch/ExecuTorch/onnxscript internals on the command line
    (library users keep Python's default warning filters)."""
    import logging
    import warnings

    for category in (FutureWarning, DeprecationWarning, UserWarning):
        for module in ("torch", "executorch", "onnxscript", "copyreg", "torchao"):
            warnings.filterwarnings("ignore", category=category, module=module)
    warnings.filterwarnings("ignore", message=".*experimental.*", module="executorch")
    import torch  # noqa: F401  (torch resets its loggers' levels on import, so set them afterwards)

    for name in ("torch.onnx", "torch._dynamo", "torch.utils._pytree", "torch._export", "torchao"):
        logging.getLogger(name).setLevel(logging.ERROR)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _quiet_third_party()
    try:
        return _dispatch(args)
    except (ValueError, OSError) as e:     # bad input, missing/unreadable files, full disks: a message, not a traceback
        print(f"imutune {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"imutune {args.command}: interrupted", file=sys.stderr)
        return 130


def _from_flags(make, **fields):
    """Build a config from flag values: ``make(**fields)`` (a dataclass or ``functools.partial(replace, base)``),
    with a ``ValueError`` about a field re-worded to name its flag (``window_s`` -> ``--window-s``)."""
    try:
        return make(**fields)
    except ValueError as e:
        msg = str(e)
        for field in sorted(fields, key=len, reverse=True):
            msg = re.sub(rf"^(\w+\.)?{field}\b", "--" + field.replace("_", "-"), msg)
            msg = re.sub(r" in \w+Config\b", "", msg, count=1) if msg.startswith("--") else msg
        raise ValueError(msg) from None


def _train_config(args):
    from .train import config as tc

    return _from_flags(partial(replace, getattr(tc, args.train_preset)), epochs=args.epochs,
                       batch_size=args.batch_size, lr=args.lr, seed=args.seed, device=args.device,
                       threads=args.threads, min_steps=args.min_steps, balanced_batches=args.balanced_batches)


def _dispatch(args) -> int:
    if args.command == "demo":
        from .demo import DemoConfig, quick_config, run_demo

        base = quick_config() if args.quick else DemoConfig()
        cfg = replace(base, target_user=args.target_user, model_name=args.model, imbalance_ratio=args.imbalance_ratio,
                      seed=args.seed, replay_threads=args.threads, replay_realtime=args.realtime,
                      pretrain=replace(base.pretrain, seed=args.seed, device=args.device),
                      finetune=replace(base.finetune, train=replace(base.finetune.train, device=args.device),
                                       loss=args.loss or base.finetune.loss,
                                       rehearsal_ratio=(base.finetune.rehearsal_ratio if args.rehearsal_ratio is None
                                                        else args.rehearsal_ratio)),
                      protocol=args.protocol or base.protocol, label_noise=args.label_noise or base.label_noise)
        t = time.perf_counter()
        report = run_demo(args.out, cfg, progress=not args.no_progress)
        keys = ("protocol", "source_accuracy", "target_accuracy_before", "target_accuracy_after", "restore_ratio",
                "target_macro_f1", "personalization_gain", "parity_max_abs_err", "latency_ms")
        print(json.dumps({k: report[k] for k in keys}, indent=2))
        print(f"wall time {time.perf_counter() - t:.1f} s")
        return 0
    if args.command == "pretrain":
        from .jobs import run_pretrain
        from .signal.windows import WindowConfig

        w = _from_flags(WindowConfig, window_s=args.window_s, hop_s=args.hop_s,
                        sample_rate_hz=args.sample_rate_hz, min_purity=args.min_purity)
        ssl = None
        if args.self_supervised:
            from .train.selfsup import SelfSupConfig

            over = {"steps": args.selfsup_steps} if args.selfsup_steps is not None else {}
            try:
                ssl = SelfSupConfig(batch_size=args.batch_size, seed=args.seed, device=args.device, **over)
            except ValueError as e:
                raise ValueError(str(e).replace("SelfSupConfig.steps", "--selfsup-steps")
                                 .replace("SelfSupConfig.batch_size", "--batch-size")) from None
        elif args.selfsup_steps is not None:
            raise ValueError(f"--selfsup-steps {args.selfsup_steps} needs --self-supervised")
        b = run_pretrain(args.data, args.out, model_name=args.model, window=w, train_config=_train_config(args),
                         holdout_fraction=args.holdout_fraction, channels=args.channels, units=args.units,
                         self_supervised=ssl, gravity=args.gravity, progress=not args.no_progress)
        keys = (("selfsup_loss_first", "selfsup_loss_last", "n_train") if ssl is not None else
                ("source_accuracy", "source_macro_f1", "n_train", "n_holdout"))
        print(json.dumps({k: b.info.get(k) for k in keys}))
        return 0
    if args.command == "finetune":
        from .jobs import run_finetune
        from .personalize.finetune import FinetuneConfig

        cfg = FinetuneConfig(train=_train_config(args), loss=args.loss, rehearsal_ratio=args.rehearsal_ratio)
        from .personalize.finetune import NATIVE_LOSSES

        if args.label_noise != "none" or args.loss not in NATIVE_LOSSES:   # baselines and noise rehearsal
            from .rehearse import run_finetune_rehearsal
            from .signal.label_noise import parse_label_noise

            try:
                parse_label_noise(args.label_noise)
            except ValueError as e:
                raise ValueError(f"--label-noise: {e}") from None
            if args.loss == "oracle" and args.label_noise == "none":
                raise ValueError("--loss oracle drops exactly the corrupted windows, so it needs --label-noise "
                                 "(e.g. --label-noise symmetric:0.3)")
            res = run_finetune_rehearsal(args.base, args.data, args.out, label_noise=args.label_noise, config=cfg,
                                         imbalance_ratio=args.imbalance_ratio, test_data=args.test_data,
                                         seed=args.seed, progress=not args.no_progress)
            print(json.dumps(res))
            return 0
        res = run_finetune(args.base, args.data, args.out, config=cfg, imbalance_ratio=args.imbalance_ratio,
                           test_data=args.test_data, source_data=args.source_data, seed=args.seed,
                           units=args.units, channels=args.channels, gravity=args.gravity,
                           remove_gravity=args.remove_gravity, progress=not args.no_progress)
        print(json.dumps(res))
        return 0
    if args.command == "export":
        from .jobs import run_export

        m = run_export(args.model, args.data, args.out, formats=args.formats, eval_data=args.eval_data,
                       units=args.units, progress=not args.no_progress)
        print(json.dumps({k: {"sha256": v["sha256"][:16], "parity_max_abs_err": v.get("parity_max_abs_err"),
                              **{f: v[f] for f in ("parity_top1_agreement", "eval_accuracy",
                                                   "accuracy_change_vs_fp32_points") if f in v}}
                          for k, v in m.artifacts.items()}))
        return 0
    if args.command == "replay":
        from .jobs import run_replay

        chunk = args.chunk_samples if args.chunk_samples in (None, "hop") else int(args.chunk_samples)
        s = run_replay(args.model, args.data, args.out, manifest_path=args.manifest, num_threads=args.threads,
                       chunk_samples=chunk, realtime=args.realtime, profile=args.profile,
                       smoothing_k=args.smoothing_k, stream=args.stream, progress=not args.no_progress,
                       dump_golden=args.dump_golden)
        print(json.dumps({k: s[k] for k in ("n_windows", "accuracy", "macro_f1", "latency_ms", "deadline_misses")}))
        return 0
    if args.command == "bench":
        return _BENCH_HANDLERS[args.bench_command](args)
    if args.command == "codec":
        return _codec(args)
    if args.command == "personalize":
        return _personalize(args)
    if args.command == "fleet":
        return _fleet(args)
    if args.command == "apply-patch":
        return _apply_patch(args)
    if args.command in ("export-train", "personalize-on-device"):
        return _ondevice(args)
    if args.command == "models":
        from .models.resnet1d import count_parameters, create_model, list_models

        for n in list_models():
            print(f"{n}\t{count_parameters(create_model(n, in_channels=6, num_classes=8))} parameters (6 ch, 8 classes)")
        return 0
    raise AssertionError(args.command)


if __name__ == "__main__":
    sys.exit(main())
