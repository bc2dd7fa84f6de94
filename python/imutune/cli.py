"""``imutune`` command line: parses arguments and calls library functions.

Subcommands: ``demo``, ``pretrain``, ``finetune``, ``personalize``, ``apply-patch``, ``export``,
``replay``, ``models``, and the ``bench`` group (``bench filterloss``, ``bench selective``, ...).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from typing import Sequence

__all__ = ["main", "build_parser"]


def _add_window_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--window-s", type=float, default=2.0, help="window length in seconds (default 2.0)")
    p.add_argument("--hop-s", type=float, default=0.5, help="hop between windows in seconds (default 0.5)")
    p.add_argument("--sample-rate-hz", type=float, default=50.0,
                   help="model sample rate in Hz; recordings at another rate are resampled (default 50)")
    p.add_argument("--min-purity", type=float, default=0.8, help="minimum majority-label fraction per window")


def _add_train_args(p: argparse.ArgumentParser, *, epochs: int, lr: float, batch_size: int) -> None:
    p.add_argument("--epochs", type=int, default=epochs, help=f"training epochs (default {epochs})")
    p.add_argument("--lr", type=float, default=lr, help=f"peak learning rate (default {lr:g})")
    p.add_argument("--batch-size", type=int, default=batch_size, help=f"windows per step (default {batch_size})")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                   help="training device; auto uses CUDA when present (default auto)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="imutune", description="On-device personalization of IMU sensor models.")
    sub = ap.add_subparsers(dest="command", required=True)

    d = sub.add_parser("demo", help="pretrain, personalize with FilterLoss, export and replay on the embedded watch data")
    d.add_argument("--out", required=True, help="output folder")
    d.add_argument("--quick", action="store_true", help="reduced run (under a minute)")
    d.add_argument("--target-user", default="subject10", help="target user (default subject10)")
    d.add_argument("--model", default="mobilecnn1d", help="registry model name (default mobilecnn1d)")
    d.add_argument("--imbalance-ratio", type=float, default=10.0, help="long-tail ratio of target training data")
    d.add_argument("--rehearsal-ratio", type=float, default=None,
                   help="source windows mixed into fine-tuning per target window (default 4; 0 = target only)")
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
    _add_window_args(p)
    _add_train_args(p, epochs=20, lr=3e-3, batch_size=64)

    f = sub.add_parser("finetune", help="personalize a pretrained bundle for one user with FilterLoss")
    f.add_argument("--base", required=True, help="pretrained bundle folder")
    f.add_argument("--data", nargs="+", required=True, help="target user's training recordings")
    f.add_argument("--test-data", nargs="+", default=(), help="target user's held-out recordings (optional)")
    f.add_argument("--out", required=True, help="output bundle folder")
    f.add_argument("--loss", default="filterloss", choices=("filterloss", "ce"))
    f.add_argument("--source-data", nargs="+", default=(),
                   help="source recordings for rehearsal (same classes and channels as the base model)")
    f.add_argument("--rehearsal-ratio", type=float, default=0.0,
                   help="source windows mixed in per target window (needs --source-data; default 0)")
    f.add_argument("--imbalance-ratio", type=float, default=None,
                   help="long-tail subsample the target windows to this ratio (experiments)")
    _add_train_args(f, epochs=30, lr=1e-3, batch_size=32)

    e = sub.add_parser("export", help="export a bundle to ONNX and ExecuTorch (.pte) with parity checks")
    e.add_argument("--model", required=True, help="bundle folder (model.json + model.safetensors)")
    e.add_argument("--data", nargs="+", required=True, help="recordings whose windows are used for the parity check")
    e.add_argument("--out", required=True, help="output folder")
    e.add_argument("--formats", nargs="+", default=["onnx", "pte"],
                   choices=("onnx", "pte", "onnx-int8", "pte-int8", "pte-portable"),
                   help="variants; int8 ones are calibrated on the --data windows (default onnx pte)")
    e.add_argument("--eval-data", nargs="+", default=(),
                   help="held-out recordings: record each artifact's accuracy and the int8 change vs fp32")

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

    sub.add_parser("models", help="list registered models")

    bench = sub.add_parser("bench", help="benchmarks (JSON, Markdown table, PNG plots)")
    bench_sub = bench.add_subparsers(dest="bench_command", required=True)
    _add_bench_filterloss(bench_sub)
    _add_bench_selective(bench_sub)
    _add_bench_latency(bench_sub)
    _add_personalize(sub)
    return ap


def _add_bench_filterloss(bench_sub) -> None:
    b = bench_sub.add_parser("filterloss", help="FilterLoss vs baselines: leave-one-subject-out on the watch data "
                                                "or a cross-dataset target")
    b.add_argument("--out", required=True, help="output folder (finished cells there are reused)")
    b.add_argument("--quick", action="store_true", help="reduced run: 3 subjects, 1 seed, few epochs")
    b.add_argument("--model", default=None, help="registry model name (default mobilecnn1d)")
    b.add_argument("--subjects", type=int, nargs="+", default=None,
                   help="LOSO target subjects 1..10 (default all)")
    b.add_argument("--source-subjects", type=int, nargs="+", default=None,
                   help="pretraining subjects (default: all other subjects; all 10 for --target-data)")
    b.add_argument("--ratios", nargs="+", default=None,
                   help="imbalance ratios, numbers >= 1 or 'natural' (default 1 10 50)")
    b.add_argument("--seeds", type=int, nargs="+", default=None, help="seeds (default 0 1 2)")
    b.add_argument("--methods", nargs="+", default=None, help="methods (default: all baselines + FilterLoss)")
    b.add_argument("--epochs", type=int, default=None, help="fine-tuning epochs of every method")
    b.add_argument("--pretrain-epochs", type=int, default=None, help="pretraining epochs")
    b.add_argument("--target-data", nargs="+", default=(),
                   help="cross-dataset target: generic recordings of one user (.npz/.csv files or folders)")
    b.add_argument("--target-test-data", nargs="+", default=(),
                   help="its test recordings (default: per-class halves of --target-data)")
    b.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    b.add_argument("--threads", type=int, default=2, help="torch CPU threads for the run (default 2)")
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
        over["methods"] = tuple(args.methods)
    if args.epochs:
        over["finetune"] = replace(cfg.finetune, epochs=args.epochs)
    if args.pretrain_epochs:
        over["pretrain"] = replace(cfg.pretrain, epochs=args.pretrain_epochs)
    cfg = replace(cfg, **over)
    res = run_filterloss_bench(args.out, cfg, progress=not args.no_progress, threads=args.threads)
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
    b.add_argument("--epochs", type=int, default=None, help="fine-tuning epochs of every method")
    b.add_argument("--pretrain-epochs", type=int, default=None, help="pretraining epochs")
    b.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    b.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")


def _bench_selective(args) -> int:
    from .bench.selective import SelectiveBenchConfig, quick_config, run_selective_bench

    cfg = quick_config() if args.quick else SelectiveBenchConfig()
    over: dict = {"threads": args.threads, "pretrain": replace(cfg.pretrain, device=args.device),
                  "finetune": replace(cfg.finetune, device=args.device)}
    for key, attr in (("model", "model_name"), ("targets", "target_users"), ("subjects", "subjects"),
                      ("distortions", "distortions"), ("levels", "levels"), ("shots", "shots"), ("seeds", "seeds"),
                      ("fractions", "fractions")):
        v = getattr(args, key)
        if v:
            over[attr] = v if isinstance(v, str) else tuple(v)
    if args.epochs:
        over["finetune"] = replace(over["finetune"], epochs=args.epochs)
    if args.pretrain_epochs:
        over["pretrain"] = replace(over["pretrain"], epochs=args.pretrain_epochs)
    res = run_selective_bench(args.out, replace(cfg, **over))
    print(json.dumps(res["targets"], indent=2))
    return 0


def _add_personalize(sub) -> None:
    p = sub.add_parser("personalize", help="selective filter fine-tuning for one user; writes a small patch "
                                           "of the base model")
    p.add_argument("--base", required=True, help="base bundle folder (model.json + model.safetensors)")
    p.add_argument("--data", nargs="+", required=True, help="the user's recordings (as the user's device records)")
    p.add_argument("--out", required=True, help="output folder: patch.safetensors, personalize_report.json")
    p.add_argument("--filters", type=float, default=0.1, help="fraction of conv filters to fine-tune, in (0, 1] "
                                                              "(default 0.1)")
    p.add_argument("--budget", default="per_layer", choices=("per_layer", "global"),
                   help="top fraction of every layer, or a global parameter budget (default per_layer)")
    p.add_argument("--clean-data", nargs="+", default=None,
                   help="the same recordings without the device's distortion (paired ranking of the paper); "
                        "default: pair-free ranking against the base model's batch-norm statistics")
    p.add_argument("--distortion", default=None,
                   help="simulate a device: treat --data as clean and distort it, e.g. 'noise:10+rotation:30'")
    p.add_argument("--test-data", nargs="+", default=(), help="the user's held-out recordings (accuracy before/after)")
    p.add_argument("--loss", default="ce", choices=("ce", "filterloss"))
    p.add_argument("--write-bundle", action="store_true", help="also write the patched model as a bundle in OUT/model")
    _add_train_args(p, epochs=30, lr=1e-3, batch_size=32)

    a = sub.add_parser("apply-patch", help="apply a personalize patch to its base bundle; writes a full bundle")
    a.add_argument("--base", required=True, help="base bundle folder")
    a.add_argument("--patch", required=True, help="patch.safetensors")
    a.add_argument("--out", required=True, help="output bundle folder (then: imutune export --model OUT ...)")


def _personalize(args) -> int:
    from .personalize.selective import SelectiveConfig, run_personalize

    cfg = SelectiveConfig(fraction=args.filters, budget=args.budget, train=_train_config(args), loss=args.loss)
    res = run_personalize(args.base, args.data, args.out, config=cfg, clean_data=args.clean_data,
                          distortion=args.distortion, test_data=args.test_data, write_bundle=args.write_bundle,
                          progress=not args.no_progress)
    keys = ("ranking", "selected_filters", "total_filters", "trainable_parameters", "patch_bytes", "model_bytes",
            "patch_fraction", "train_seconds", "before", "after")
    print(json.dumps({k: res[k] for k in keys if k in res}))
    return 0


def _apply_patch(args) -> int:
    from .personalize.patch import apply_patch_bundle
    from .train.bundle import load_bundle, save_bundle

    b = apply_patch_bundle(load_bundle(args.base), args.patch)
    save_bundle(b, args.out)
    print(json.dumps({"out": str(args.out), "patched_sha256": b.info["patch"]["patched_sha256"]}))
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


#: ``imutune bench <name>`` handlers; each benchmark adds its parser in build_parser and its entry here.
_BENCH_HANDLERS = {"filterloss": _bench_filterloss, "selective": _bench_selective, "latency": _bench_latency}


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
    except (ValueError, FileNotFoundError) as e:
        print(f"imutune {args.command}: error: {e}", file=sys.stderr)
        return 2


def _train_config(args):
    from .train.loop import TrainConfig

    return TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed, device=args.device)


def _dispatch(args) -> int:
    if args.command == "demo":
        from .demo import DemoConfig, quick_config, run_demo

        base = quick_config() if args.quick else DemoConfig()
        cfg = replace(base, target_user=args.target_user, model_name=args.model, imbalance_ratio=args.imbalance_ratio,
                      seed=args.seed, replay_threads=args.threads, replay_realtime=args.realtime,
                      pretrain=replace(base.pretrain, seed=args.seed, device=args.device),
                      finetune=replace(base.finetune, train=replace(base.finetune.train, device=args.device),
                                       rehearsal_ratio=(base.finetune.rehearsal_ratio if args.rehearsal_ratio is None
                                                        else args.rehearsal_ratio)))
        t = time.perf_counter()
        report = run_demo(args.out, cfg, progress=not args.no_progress)
        keys = ("source_accuracy", "target_accuracy_before", "target_accuracy_after", "restore_ratio",
                "target_macro_f1", "parity_max_abs_err", "latency_ms")
        print(json.dumps({k: report[k] for k in keys}, indent=2))
        print(f"wall time {time.perf_counter() - t:.1f} s")
        return 0
    if args.command == "pretrain":
        from .jobs import run_pretrain
        from .signal.windows import WindowConfig

        w = WindowConfig(args.window_s, args.hop_s, args.sample_rate_hz, args.min_purity)
        b = run_pretrain(args.data, args.out, model_name=args.model, window=w, train_config=_train_config(args),
                         holdout_fraction=args.holdout_fraction, channels=args.channels, progress=not args.no_progress)
        print(json.dumps({k: b.info.get(k) for k in ("source_accuracy", "source_macro_f1", "n_train", "n_holdout")}))
        return 0
    if args.command == "finetune":
        from .jobs import run_finetune
        from .personalize.finetune import FinetuneConfig

        cfg = FinetuneConfig(train=_train_config(args), loss=args.loss, rehearsal_ratio=args.rehearsal_ratio)
        res = run_finetune(args.base, args.data, args.out, config=cfg, imbalance_ratio=args.imbalance_ratio,
                           test_data=args.test_data, source_data=args.source_data, seed=args.seed,
                           progress=not args.no_progress)
        print(json.dumps(res))
        return 0
    if args.command == "export":
        from .jobs import run_export

        m = run_export(args.model, args.data, args.out, formats=args.formats, eval_data=args.eval_data)
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
                       smoothing_k=args.smoothing_k, stream=args.stream)
        print(json.dumps({k: s[k] for k in ("n_windows", "accuracy", "macro_f1", "latency_ms", "deadline_misses")}))
        return 0
    if args.command == "bench":
        return _BENCH_HANDLERS[args.bench_command](args)
    if args.command == "personalize":
        return _personalize(args)
    if args.command == "apply-patch":
        return _apply_patch(args)
    if args.command == "models":
        from .models.resnet1d import count_parameters, create_model, list_models

        for n in list_models():
            print(f"{n}\t{count_parameters(create_model(n, in_channels=6, num_classes=8))} parameters (6 ch, 8 classes)")
        return 0
    raise AssertionError(args.command)


if __name__ == "__main__":
    sys.exit(main())
