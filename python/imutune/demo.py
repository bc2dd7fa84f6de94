"""The main job: pretrain on source users, personalize for one target user with
FilterLoss, export to ONNX and ExecuTorch, replay the target's held-out
recordings through both exports, and write a report.

Protocol (``protocol``, :mod:`imutune.personalize.protocols`): pretrain on the
9 other subjects (a stratified 20% of their recordings held out for the source
accuracy), then

* ``"calibrate-then-use"`` (default, how a user personalizes): the first
  ``calibration_fraction`` of each of the target's recordings (both arm sides)
  is the self-labelled calibration session (one per arm side, recordings
  joined in order), the rest, after a gap of one window, the test data. The
  calibration labels carry the ``label_noise`` setting
  (:mod:`imutune.signal.label_noise`; ``"none"`` by default) and the windows
  are long-tail subsampled to ``imbalance_ratio`` by their true class;
* ``"new-placement"`` (stress case): calibrate on arm side
  ``target_train_side``, test on the other side.

``personalization_gain`` in the report is the target's test macro-F1 after
fine-tuning minus before. Source rehearsal
(:class:`imutune.personalize.finetune.FinetuneConfig.rehearsal_ratio`) is off
by default (the paper's target-only setting); it was introduced for the
new-placement stress case, where target-only fine-tuning lowered the other
side's macro-F1 (``benchmarks/rehearsal.py``).
"""
from __future__ import annotations

import os
import platform
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ._host import cpu_name
from ._io import write_json_atomic, write_text_atomic
from .data.recordings import load_watch
from .metrics import restore_ratio
from .personalize.filter import NOISY
from .personalize.finetune import FinetuneConfig
from .personalize.protocols import PROTOCOLS, calibrate_then_use, split_target
from .personalize.run import personalize
from .signal.label_noise import concatenate_session, noisy_windows, parse_label_noise, precision_recall
from .signal.windows import WindowConfig, longtail_subsample, make_windows
from .train.bundle import evaluate_bundle, save_bundle
from .train.loop import FINETUNE, PRETRAIN, TrainConfig, resolve_device
from .train.pretrain import pretrain

__all__ = ["DemoConfig", "quick_config", "run_demo"]


@dataclass(frozen=True)
class DemoConfig:
    """Settings of ``imutune demo``."""

    target_user: str = "subject10"                 # user to personalize for; all others are source users
    protocol: str = "calibrate-then-use"           # or "new-placement" (cross-arm stress case)
    calibration_fraction: float = 0.5              # calibrate-then-use: first share of each recording calibrates
    label_noise: str = "none"                      # noise of the calibration labels (imutune.signal.label_noise)
    target_train_side: int = 0                     # new-placement: watch arm side (0/1) used for calibration
    model_name: str = "mobilecnn1d"                # registry name (imutune.models.list_models())
    window: WindowConfig = WindowConfig()          # window_s, hop_s, sample_rate_hz, min_purity
    imbalance_ratio: float = 10.0                  # long-tail ratio of the target training windows
    holdout_fraction: float = 0.2                  # share of source recordings held out for source accuracy
    pretrain: TrainConfig = PRETRAIN                # imutune.train.loop.PRETRAIN
    finetune: FinetuneConfig = FinetuneConfig()    # FilterLoss on the target windows only (rehearsal_ratio 0)
    replay_chunk_samples: int = 1                  # samples per sensor delivery during replay (1 = sample by sample)
    replay_realtime: bool = False                  # pace replay at the sensor rate (slow: real duration)
    replay_threads: int = 1                        # inference threads (phone-class profile: 1)
    max_replay_recordings: int | None = None       # replay only the first n target test recordings
    subjects: tuple[int, ...] | None = None        # restrict the watch data to these subjects (tests)
    seed: int = 0                                  # seeds splits, subsampling and training

    def __post_init__(self) -> None:
        if not float(self.imbalance_ratio) >= 1:
            raise ValueError(f"imbalance_ratio must be >= 1, got {self.imbalance_ratio!r}")
        if self.target_train_side not in (0, 1):
            raise ValueError(f"target_train_side must be 0 or 1, got {self.target_train_side!r}")
        if self.protocol not in PROTOCOLS[:2]:
            raise ValueError(f"protocol must be one of {list(PROTOCOLS[:2])}, got {self.protocol!r}")
        if not 0 < float(self.calibration_fraction) < 1:
            raise ValueError(f"calibration_fraction must be in (0, 1), got {self.calibration_fraction!r}")
        parse_label_noise(self.label_noise)


def quick_config(**overrides: Any) -> DemoConfig:
    """A reduced demo (fewer epochs, 1 s hop, two replayed recordings) that runs in well under a minute."""
    base = DemoConfig(window=WindowConfig(hop_s=1.0), pretrain=replace(PRETRAIN, epochs=4),
                      finetune=FinetuneConfig(train=replace(FINETUNE, epochs=10)),
                      max_replay_recordings=2)
    return replace(base, **overrides)


def run_demo(out_dir: str | os.PathLike, config: DemoConfig = DemoConfig(), *, progress: bool = True,
             log=print) -> dict[str, Any]:
    """Run the whole job on the embedded watch data and write its artifacts.

    Writes into ``out_dir``: ``report.json``, ``report.md``, ``model.onnx``,
    ``model.pte``, ``manifest.json``, ``confusion_matrix.png``,
    ``demo_config.json``, and the bundles ``pretrained/`` and ``personalized/``
    (``model.safetensors`` + ``model.json``), plus training checkpoints in
    ``checkpoints/`` (a rerun with the same config resumes from them).

    Returns
    -------
    dict
        The report (also ``report.json``); see README for the fields.
    """
    from .deploy.backends import load_backend
    from .deploy.export import write_exports
    from .deploy.manifest import manifest_for
    from .plots import plot_confusion_matrix
    from .runtime.replay import ReplayConfig, replay_many

    t_start = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "demo_config.json", asdict(config))
    timings: dict[str, float] = {}

    t = time.perf_counter()
    recs = load_watch(subjects=config.subjects)
    source, tgt_train_recs, tgt_test_recs = split_target(recs, config.target_user, train_side=config.target_train_side)
    if config.protocol == "calibrate-then-use":
        tgt_train_recs, tgt_test_recs = calibrate_then_use(
            [r for r in recs if r.user == config.target_user], window_s=config.window.window_s,
            calibration_fraction=config.calibration_fraction)
    w_src = make_windows(source, config.window)
    sessions = [concatenate_session([r for r in tgt_train_recs if r.meta.get("side") == side], name=f"session:side{side}")
                for side in sorted({r.meta.get("side") for r in tgt_train_recs}, key=str)]
    noisy = noisy_windows(sessions, parse_label_noise(config.label_noise), config.window, seed=config.seed)
    w_tr_full = noisy.windows
    w_te = make_windows(tgt_test_recs, config.window)
    keep = longtail_subsample(noisy.y_true, config.imbalance_ratio, seed=config.seed, num_classes=w_tr_full.num_classes)
    noisy = noisy.subset(keep)
    w_tr = noisy.windows
    timings["data_s"] = time.perf_counter() - t
    log(f"[data] watch: {len(recs)} recordings; source {len(w_src)} windows, target {config.target_user}: "
        f"{len(w_tr)} training windows (ratio {config.imbalance_ratio:g}, counts {w_tr.class_counts().tolist()}), "
        f"{len(w_te)} test windows")

    t = time.perf_counter()
    pre = pretrain(w_src, model_name=config.model_name, window=config.window, train_config=config.pretrain,
                   holdout_fraction=config.holdout_fraction, checkpoint_path=out / "checkpoints" / "pretrain.ckpt",
                   progress=progress)
    save_bundle(pre, out / "pretrained")
    timings["pretrain_s"] = time.perf_counter() - t
    before = evaluate_bundle(pre, w_te, device=config.pretrain.device)
    log(f"[pretrain] {config.model_name}: source accuracy {pre.info['source_accuracy']:.4f}; target before "
        f"{before['accuracy']:.4f} ({timings['pretrain_s']:.1f} s)")

    t = time.perf_counter()
    ft_cfg = replace(config.finetune, train=replace(config.finetune.train, seed=config.seed))
    per = personalize(pre, w_tr, config=ft_cfg, source_windows=w_src,
                      checkpoint_path=out / "checkpoints" / "finetune.ckpt", progress=progress, noisy_mask=noisy.noisy)
    per = replace(per, info={**per.info, "demo_config": asdict(config)})
    save_bundle(per, out / "personalized")
    timings["finetune_s"] = time.perf_counter() - t
    after = evaluate_bundle(per, w_te, device=config.pretrain.device)
    log(f"[finetune] {ft_cfg.loss}, rehearsal {ft_cfg.rehearsal_ratio:g}x: categories {per.info.get('category_counts')}; target after "
        f"{after['accuracy']:.4f}, macro-F1 {after['macro_f1']:.4f} ({timings['finetune_s']:.1f} s)")

    from .personalize.reference import reference_report

    reference = reference_report(w_tr, w_te, model_macro_f1=after["macro_f1"])   # same calibration windows/labels
    log(f"[reference] RandomForest macro-F1 {reference['methods']['random_forest']['macro_f1']:.4f}, logistic "
        f"regression {reference['methods']['logistic_regression']['macro_f1']:.4f}; {reference['verdict']}")

    t = time.perf_counter()
    manifest = manifest_for(per)
    manifest = write_exports(per.model.cpu(), manifest, out, per.normalizer(w_te.x), formats=("onnx", "pte"),
                             config=asdict(config))
    timings["export_s"] = time.perf_counter() - t
    parity = {fmt: manifest.artifacts[f"model.{fmt}"]["parity_max_abs_err"] for fmt in ("onnx", "pte")}
    log(f"[export] model.onnx, model.pte; parity max abs err {parity} ({timings['export_s']:.1f} s)")

    t = time.perf_counter()
    replay_recs = tgt_test_recs[: config.max_replay_recordings] if config.max_replay_recordings else tgt_test_recs
    rcfg = ReplayConfig(chunk_samples=config.replay_chunk_samples, realtime=config.replay_realtime,
                        num_threads=config.replay_threads)
    replays = {}
    for fmt in ("onnx", "pte"):
        backend = load_backend(out / f"model.{fmt}", manifest=manifest, num_threads=config.replay_threads)
        replays[fmt] = replay_many(replay_recs, backend, manifest, config=rcfg)
        log(f"[replay] {fmt} ({replays[fmt]['backend']}, {config.replay_threads} thread): "
            f"{replays[fmt]['n_windows']} windows, accuracy {replays[fmt]['accuracy']:.4f}, "
            f"p95 latency {replays[fmt]['latency_ms']['p95']:.3f} ms")
    timings["replay_s"] = time.perf_counter() - t
    cm = np.asarray(replays["pte"]["confusion_matrix"])
    plot_confusion_matrix(cm, per.class_names, out / "confusion_matrix.png",
                          title=f"{config.target_user}, replay through model.pte")
    timings["total_s"] = time.perf_counter() - t_start

    report = {
        "dataset": "seglearn watch (10 subjects x 2 arm sides x 7 exercises, 6 ch @ 50 Hz)",
        "target_user": config.target_user,
        "seed": config.seed,
        "model_name": config.model_name,
        "source_accuracy": pre.info["source_accuracy"],
        "target_accuracy_before": before["accuracy"],
        "target_accuracy_after": after["accuracy"],
        "restore_ratio": restore_ratio(after["accuracy"], pre.info["source_accuracy"]),
        "target_macro_f1_before": before["macro_f1"],
        "target_macro_f1": after["macro_f1"],
        "protocol": config.protocol,
        "personalization_gain": after["macro_f1"] - before["macro_f1"],
        "classical_reference": reference,
        "label_noise": {"spec": config.label_noise, "description": noisy.description,
                        "corrupted_windows": int(noisy.noisy.sum()), "corrupted_share": noisy.noise_rate,
                        "filter": (precision_recall(np.asarray(per.info["categories"]) == NOISY, noisy.noisy)
                                   if "categories" in per.info else None)},
        "parity_max_abs_err": parity,
        "latency_ms": {fmt: {k: replays[fmt]["latency_ms"][k] for k in ("p50", "p95", "p99")} for fmt in replays},
        "replay": replays,
        "n_windows": {"source": len(w_src), "target_train": len(w_tr), "target_train_before_subsampling": len(w_tr_full),
                      "target_test": len(w_te)},
        "target_train_class_counts": w_tr.class_counts().tolist(),
        "category_counts": per.info.get("category_counts"),
        "category_weights": per.info.get("category_weights"),
        "timings_s": timings,
        "host": {"cpu": cpu_name(), "python": platform.python_version(),
                 "train_device": str(resolve_device(config.pretrain.device))},
        "config": asdict(config),
    }
    write_json_atomic(out / "report.json", report)
    write_text_atomic(out / "report.md", _report_md(report, per.class_names))
    log(f"[done] {out}/report.json ({timings['total_s']:.1f} s)")
    return report


def _report_md(r: dict[str, Any], class_names: Sequence[str]) -> str:
    from .personalize.reference import reference_markdown

    lines = [f"# imutune demo report: {r['target_user']}", "",
             f"Dataset: {r['dataset']}. Model: `{r['model_name']}`. Seed: {r['seed']}.", "",
             "| metric | value |", "|---|---|",
             f"| source accuracy (held-out source recordings) | {r['source_accuracy']:.4f} |",
             f"| target accuracy before fine-tuning | {r['target_accuracy_before']:.4f} |",
             f"| target accuracy after FilterLoss fine-tuning | {r['target_accuracy_after']:.4f} |",
             f"| restore ratio (after / source) | {r['restore_ratio']:.4f} |",
             f"| protocol | {r['protocol']} |",
             f"| calibration label noise | {r['label_noise']['description']} "
             f"({r['label_noise']['corrupted_windows']} corrupted windows) |",
             f"| target macro-F1 before / after | {r['target_macro_f1_before']:.4f} / {r['target_macro_f1']:.4f} |",
             f"| personalization gain (macro-F1 after - before) | {r['personalization_gain']:+.4f} |",
             f"| parity max abs err ONNX / PTE | {r['parity_max_abs_err']['onnx']:.2e} / {r['parity_max_abs_err']['pte']:.2e} |",
             "", "## Classical reference (same calibration windows and labels)", "",
             reference_markdown(r["classical_reference"]),
             "", "## Replay of the held-out target recordings", "",
             "| backend | windows | accuracy | macro-F1 | p50 ms | p95 ms | p99 ms | deadline misses |",
             "|---|---|---|---|---|---|---|---|"]
    for fmt, s in r["replay"].items():
        lat = s["latency_ms"]
        lines.append(f"| {fmt} ({s['backend']}) | {s['n_windows']} | {s['accuracy']:.4f} | {s['macro_f1']:.4f} | "
                     f"{lat['p50']:.3f} | {lat['p95']:.3f} | {lat['p99']:.3f} | {s['deadline_misses']} |")
    lines += ["", f"Target training windows per class ({', '.join(class_names)}): {r['target_train_class_counts']}; "
              f"quality categories: {r['category_counts']}.", "",
              "Timings (s): " + ", ".join(f"{k} {v:.1f}" for k, v in r["timings_s"].items()), "",
              f"Host: {r['host']['cpu']}, Python {r['host']['python']}.", "",
              "![confusion matrix](confusion_matrix.png)", ""]
    return "\n".join(lines)
