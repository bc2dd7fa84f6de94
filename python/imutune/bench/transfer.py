"""Cross-dataset transfer benchmark (issue 15): does imutune's transfer beat a classical reference?

Source: a model pretrained (supervised) on the embedded watch data (all 10
subjects). Target: a data set the source never saw -- by default BasicMotions
(:func:`imutune.data.basicmotions.load_basicmotions`: another smartwatch,
10 Hz, m/s^2 without gravity, 4 everyday activities, the archive's fixed
TRAIN / TEST split), or any recordings given as ``target_data``.

For every k in ``ks`` labelled windows per class and every seed, k windows
per class are drawn from the target's calibration pool (TRAIN), and every
method is scored (macro-F1) on *all* windows of the target's test part:

* ``transfer_ce`` / ``transfer_filterloss``: the watch model fine-tuned
  (new head, all layers) with cross-entropy / FilterLoss;
* ``transfer_ce_preset``: the same as ``transfer_ce`` with the schedule
  ``imutune finetune`` uses by default (:data:`imutune.train.config.FINETUNE`:
  30 epochs of batch 32, at least 90 optimiser steps, class-balanced batches)
  instead of ``steps``: what a user gets without setting a budget;
* ``selfsup_ft``: a model pretrained self-supervised
  (:mod:`imutune.train.selfsup`) on the target's *unlabeled* calibration
  pool, then fine-tuned with cross-entropy;
* ``probe``: logistic regression on the frozen watch embedding;
* ``scratch``: the same architecture from random weights, same step budget;
* ``random_forest`` / ``logistic_regression``: scikit-learn on 13 per-channel
  window statistics (:mod:`imutune.personalize.reference`).

Every deep fine-tune but ``transfer_ce_preset`` gets the same optimiser-step
budget (``steps``; epochs = ceil(steps / batches per epoch), batch =
min(batch_size, n)). Paired differences over seeds (mean, 95% t-interval,
wins) are reported per k. Outputs: ``transfer.json``,
``transfer.md``, ``transfer.png`` (macro-F1 against k).
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..signal.windows import WindowConfig, Windows, make_windows
from .report import jsonable as _jsonable
from .report import host_info, markdown_table, new_figure, paired_comparison, recorded_load_text, write_report

__all__ = ["TransferBenchConfig", "quick_config", "run_transfer_bench", "METHODS", "load_target", "draw_shots",
           "source_bundle"]

METHODS = ("transfer_ce", "transfer_ce_preset", "transfer_filterloss", "selfsup_ft", "probe", "scratch",
           "random_forest", "logistic_regression")
DEEP = ("transfer_ce", "transfer_ce_preset", "transfer_filterloss", "selfsup_ft", "probe", "scratch")
CLASSICAL = ("random_forest", "logistic_regression")


@dataclass(frozen=True)
class TransferBenchConfig:
    """Settings of ``imutune bench transfer`` (defaults: the full run)."""

    target_data: tuple[str, ...] = ("basicmotions",)   # 'basicmotions' or recording paths
    target_test_data: tuple[str, ...] = ()             # paths; default: split target_data by recording
    units: str | None = None                            # units of target recordings that declare none
    source_model: str | None = None                     # a pretrained watch bundle folder; default: pretrain here
    model_name: str = "mobilecnn1d"
    window: WindowConfig = WindowConfig()
    ks: tuple[int, ...] = (2, 5, 10, 20)                 # labelled windows per class
    seeds: tuple[int, ...] = tuple(range(10))            # k-shot draws and fine-tuning seeds (pairs of the stats)
    steps: int = 300                                    # optimiser steps of every deep fine-tune (but the preset's)
    batch_size: int = 32
    lr: float = 1e-3
    pretrain_epochs: int = 20                           # supervised watch pretraining (PRETRAIN preset otherwise)
    selfsup_steps: int = 600
    selfsup_batch_size: int = 64
    methods: tuple[str, ...] = METHODS
    device: str = "cpu"
    threads: int = 1

    def __post_init__(self) -> None:
        bad = [m for m in self.methods if m not in METHODS]
        if bad or not self.methods:
            raise ValueError(f"methods has {list(self.methods)}; expected a non-empty subset of {list(METHODS)}")
        if not self.ks or any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in self.ks):
            raise ValueError(f"ks must be positive ints (labelled windows per class), got {list(self.ks)}")
        if not self.seeds:
            raise ValueError("seeds is empty; expected at least one seed")
        for name in ("steps", "batch_size", "pretrain_epochs", "selfsup_steps", "selfsup_batch_size", "threads"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an int >= 1, got {v!r}")


def quick_config(**over) -> TransferBenchConfig:
    """A short run: the tiny model, 100 steps, short pretraining, 3 seeds (minutes on one core)."""
    base = dict(model_name="tinycnn1d", steps=100, pretrain_epochs=3, selfsup_steps=150, selfsup_batch_size=32,
                seeds=(0, 1, 2))
    base.update(over)
    return TransferBenchConfig(**base)


def load_target(cfg: TransferBenchConfig, window) -> tuple[list, list, str]:
    """Calibration-pool and test recordings of the target, and a description."""
    from ..data.recordings import load_many

    if tuple(cfg.target_data) == ("basicmotions",):
        from ..data.basicmotions import load_basicmotions

        return (load_basicmotions("TRAIN"), load_basicmotions("TEST"),
                "BasicMotions (UEA archive, shipped in the aeon wheel): smartwatch acc (m/s^2, gravity removed) + "
                "gyr (rad/s) at 10 Hz, 4 activities, fixed TRAIN (calibration pool) / TEST split, 40 + 40 cases")
    recs = load_many(list(cfg.target_data))
    if cfg.target_test_data:
        return recs, load_many(list(cfg.target_test_data)), f"{list(cfg.target_data)} / {list(cfg.target_test_data)}"
    # split by recording, per majority class: every other recording goes to the test part
    by_class: dict[int, list] = {}
    for r in recs:
        lab = r.labels[r.labels >= 0]
        by_class.setdefault(int(np.bincount(lab).argmax()) if lab.size else -1, []).append(r)
    pool, test = [], []
    for k in sorted(by_class):
        rs = by_class[k]
        if len(rs) < 2:
            raise ValueError(f"target_data {list(cfg.target_data)}: class index {k} has {len(rs)} recording; "
                             "expected at least 2 per class to split by recording (or pass target_test_data)")
        pool += rs[0::2]
        test += rs[1::2]
    return pool, test, f"{list(cfg.target_data)} split by recording (even: calibration pool, odd: test)"


def draw_shots(w: Windows, k: int, seed: int) -> np.ndarray:
    """Sorted indices of k windows per class of ``w`` (all of a class when it has fewer), seeded by
    (seed, k): the draw of ``imutune bench transfer`` and ``bench few-shot``. Array (<= k K,), int64."""
    rng = np.random.default_rng([seed, k])
    idx = [rng.choice(np.flatnonzero(w.y == c), size=min(k, int((w.y == c).sum())), replace=False)
           for c in range(w.num_classes) if (w.y == c).any()]
    return np.sort(np.concatenate(idx))


def _schedule(cfg: TransferBenchConfig, n: int, seed: int):
    from ..train.config import TrainConfig

    bs = min(cfg.batch_size, n)
    spe = math.ceil(n / bs)
    epochs = max(1, math.ceil(cfg.steps / spe))
    return TrainConfig(epochs=epochs, batch_size=bs, lr=cfg.lr, seed=seed, device=cfg.device, threads=cfg.threads)


def _probe(bundle, cal: Windows, test: Windows, device: str) -> float:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from ..metrics import macro_f1
    from ..personalize.filter import embed_windows

    z_tr = embed_windows(bundle.model, bundle.normalizer(cal.x), device=device)
    z_te = embed_windows(bundle.model, bundle.normalizer(test.x), device=device)
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(z_tr, cal.y)
    return macro_f1(test.y, clf.predict(z_te), test.num_classes)


def run_transfer_bench(out_dir: str | Path, config: TransferBenchConfig = TransferBenchConfig(), *,
                       command: str = "", progress: bool = True,
                       log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run the benchmark and write ``transfer.json``, ``transfer.md``, ``transfer.png`` into ``out_dir``.

    Returns
    -------
    dict
        ``{"config", "target", "results": [{k, seed, method, macro_f1, steps, seconds}], "summary":
        {k: {method: {mean, std}}}, "paired": {k: ...}, "targets": ...}``.

    Raises
    ------
    ValueError
        For a bad config or target data (the message names it).
    """
    import torch

    log = log or (print if progress else (lambda s: None))
    threads_before = torch.get_num_threads()
    torch.set_num_threads(config.threads)
    try:
        return _compute_bench(Path(out_dir), config, command, log)
    finally:
        torch.set_num_threads(threads_before)


def source_bundle(out: Path, cfg: TransferBenchConfig, log):
    from ..data.recordings import load_watch
    from ..train.bundle import load_bundle, save_bundle
    from ..train.config import PRETRAIN
    from ..train.pretrain import pretrain

    if cfg.source_model is not None:
        return load_bundle(cfg.source_model), f"loaded from {cfg.source_model}"
    cache = out / f"source_{cfg.model_name}_e{cfg.pretrain_epochs}"
    if (cache / "model.json").is_file():
        b = load_bundle(cache)
        return b, f"cached in {cache} (pretrained by an earlier run of this benchmark)"
    t = time.perf_counter()
    w = make_windows(load_watch(), cfg.window)
    b = pretrain(w, model_name=cfg.model_name, train_config=replace(PRETRAIN, epochs=cfg.pretrain_epochs,
                                                                    device=cfg.device, threads=cfg.threads),
                 holdout_fraction=0.2, progress=False)
    save_bundle(b, cache)
    log(f"[source] pretrained {cfg.model_name} on the watch data ({len(w)} windows) in "
        f"{time.perf_counter() - t:.0f} s; source accuracy {b.info.get('source_accuracy', float('nan')):.4f}")
    return b, f"pretrained on all 10 watch subjects, {cfg.pretrain_epochs} epochs, saved in {cache}"


def _compute_bench(out: Path, cfg: TransferBenchConfig, command: str, log) -> dict[str, Any]:
    from ..models.resnet1d import create_model
    from ..personalize.finetune import FinetuneConfig, finetune
    from ..personalize.reference import reference_score
    from ..train.bundle import evaluate_bundle
    from ..train.config import FINETUNE
    from ..train.selfsup import SelfSupConfig, pretrain_self_supervised

    t_all = time.perf_counter()
    src, src_how = source_bundle(out, cfg, log)
    pool_recs, test_recs, target_desc = load_target(cfg, src.window)
    pool = make_windows(pool_recs, src.preprocessing, channels=src.channels, units=cfg.units)
    test = make_windows(test_recs, src.preprocessing, channels=src.channels, units=cfg.units).relabel(
        pool.class_names, what="target test windows")
    log(f"[target] {target_desc}: pool {len(pool)} windows {pool.class_counts().tolist()}, test {len(test)}; "
        f"conversions: {sorted(set(c.split(': ', 1)[1] for c in pool.unit_conversions))}")
    ssl = None
    ssl_info: dict[str, Any] = {}
    if "selfsup_ft" in cfg.methods or "scratch" in cfg.methods:
        t = time.perf_counter()
        unl = make_windows(pool_recs, src.preprocessing, channels=src.channels, units=cfg.units, unlabeled=True)
        ssl = pretrain_self_supervised(unl, model_name=cfg.model_name, config=SelfSupConfig(
            steps=cfg.selfsup_steps, batch_size=cfg.selfsup_batch_size, seed=0, device=cfg.device))
        ssl = ssl.derive(ssl.model, class_names=pool.class_names, info=ssl.info)
        ssl_info = {k: ssl.info[k] for k in ("selfsup_loss_first", "selfsup_loss_last", "selfsup_task_accuracy",
                                             "n_train", "steps")}
        ssl_info["seconds"] = time.perf_counter() - t
        log(f"[selfsup] {cfg.selfsup_steps} steps on {len(unl)} unlabeled target windows: loss "
            f"{ssl_info['selfsup_loss_first']:.3f} -> {ssl_info['selfsup_loss_last']:.3f} ({ssl_info['seconds']:.0f} s)")
    results: list[dict[str, Any]] = []
    for k in cfg.ks:
        for seed in cfg.seeds:
            cal = pool.subset(draw_shots(pool, k, seed))
            tc = _schedule(cfg, len(cal), seed)
            tc_preset = replace(FINETUNE, seed=seed, device=cfg.device, threads=cfg.threads)
            row_base = {"k": k, "seed": seed, "n_train": len(cal)}
            for m in cfg.methods:
                t, load0 = time.perf_counter(), os.getloadavg()[0]
                rec: dict[str, Any] = {**row_base, "method": m}
                try:
                    if m in CLASSICAL:
                        rec["macro_f1"] = reference_score(cal, test, method=m, seed=seed)["macro_f1"]
                    elif m == "probe":
                        rec["macro_f1"] = _probe(src, cal, test, cfg.device)
                    else:
                        if m == "scratch":
                            import torch

                            torch.manual_seed(seed)
                            base = ssl.derive(create_model(cfg.model_name, in_channels=len(src.channels),
                                                           num_classes=pool.num_classes),
                                              class_names=pool.class_names, info={"stage": "random init"})
                        else:
                            base = ssl if m == "selfsup_ft" else src
                        loss = "filterloss" if m == "transfer_filterloss" else "ce"
                        per = finetune(base, cal, config=FinetuneConfig(
                            train=tc_preset if m == "transfer_ce_preset" else tc, loss=loss), progress=False)
                        rec["fit_seconds"] = time.perf_counter() - t
                        rec["steps"] = int(per.info["steps"])
                        rec["macro_f1"] = evaluate_bundle(per, test, device=cfg.device)["macro_f1"]
                except ValueError as e:   # e.g. a method that cannot run on 2 windows per class: reported, not hidden
                    rec["macro_f1"] = None
                    rec["error"] = str(e)[:300]
                rec["seconds"] = time.perf_counter() - t
                rec["load_average_1min"] = [load0, os.getloadavg()[0]]   # around the fit: the time target's note
                results.append(rec)
            line = ", ".join(f"{r['method']} {r['macro_f1']:.3f}" if r["macro_f1"] is not None else
                             f"{r['method']} failed" for r in results[-len(cfg.methods):])
            log(f"[k={k} seed={seed}] n={len(cal)}: {line}")
    summary, paired, targets = _analyse(results, cfg)
    data = {"command": command, "config": _jsonable(asdict(cfg)), "target": target_desc,
            "target_units_conversions": sorted(set(c.split(": ", 1)[1] for c in pool.unit_conversions)),
            "n_pool": len(pool), "n_test": len(test), "class_names": list(pool.class_names),
            "source_model": {"how": src_how, "model_name": src.model_name,
                             "source_accuracy": src.info.get("source_accuracy")},
            "selfsup": ssl_info, "results": results, "summary": summary, "paired": paired, "targets": targets,
            "host": host_info(), "seconds": time.perf_counter() - t_all}
    fig = _figure(summary, cfg, target_desc)
    write_report(out, "transfer", data, _markdown(data, cfg), {"transfer": fig})
    return data




def _scores(results, k, m) -> dict[int, float]:
    return {r["seed"]: r["macro_f1"] for r in results if r["k"] == k and r["method"] == m and r["macro_f1"] is not None}


def _analyse(results: list[dict], cfg: TransferBenchConfig):
    summary: dict[str, Any] = {}
    paired: dict[str, Any] = {}
    for k in cfg.ks:
        s = {}
        for m in cfg.methods:
            v = list(_scores(results, k, m).values())
            s[m] = {"mean": float(np.mean(v)) if v else None, "std": float(np.std(v)) if v else None, "n": len(v)}
        summary[str(k)] = s
        deep = [m for m in cfg.methods if m in DEEP and s[m]["mean"] is not None]
        pk: dict[str, Any] = {}
        if deep:
            best = max(deep, key=lambda m: s[m]["mean"])
            pk["best_imutune"] = best
            for ref in [m for m in CLASSICAL if m in cfg.methods]:
                a, b = _scores(results, k, best), _scores(results, k, ref)
                common = sorted(set(a) & set(b))
                d = [a[i] - b[i] for i in common]
                pc = paired_comparison([a[i] for i in common], [b[i] for i in common]) if d else {}
                pk[f"best_minus_{ref}"] = {"per_seed": d, "mean": pc.get("mean_diff"),
                                           "min": float(np.min(d)) if d else None, "wins": pc.get("wins", 0),
                                           "ties": pc.get("ties", 0), "n": len(d), "ci_low": pc.get("ci_low"),
                                           "ci_high": pc.get("ci_high")}
            for m in deep:
                for ref in [r for r in CLASSICAL if r in cfg.methods][:1]:
                    a, b = _scores(results, k, m), _scores(results, k, ref)
                    d = [a[i] - b[i] for i in sorted(set(a) & set(b))]
                    pk[f"{m}_minus_{ref}"] = float(np.mean(d)) if d else None
            for sup in ("transfer_ce", "transfer_filterloss"):
                if "selfsup_ft" in deep and sup in deep:
                    a, b = _scores(results, k, "selfsup_ft"), _scores(results, k, sup)
                    d = [a[i] - b[i] for i in sorted(set(a) & set(b))]
                    pk[f"selfsup_ft_minus_{sup}"] = {"per_seed": d, "mean": float(np.mean(d)) if d else None}
        paired[str(k)] = pk
    targets: dict[str, Any] = {}
    rows = []
    for k in [k for k in cfg.ks if k >= 5]:
        pk = paired[str(k)]
        d = pk.get("best_minus_random_forest")
        rf = summary[str(k)].get("random_forest", {}).get("mean")
        if d is None or d["mean"] is None or rf is None:
            continue
        need = 0.02 if rf < 0.95 else 0.0
        rows.append({"k": k, "best_imutune": pk["best_imutune"], "rf_mean": rf, "paired_mean_diff": d["mean"],
                     "needed": need, "met": bool(d["mean"] >= need)})
    targets["best_imutune_vs_random_forest_k>=5"] = {"rows": rows, "met": bool(rows) and all(r["met"] for r in rows)}
    rows = []
    for k in [k for k in cfg.ks if k <= 5]:
        d = paired[str(k)].get("selfsup_ft_minus_transfer_ce")
        if d and d["mean"] is not None:
            rows.append({"k": k, "paired_mean_diff": d["mean"], "met": bool(d["mean"] > 0)})
    targets["selfsup_beats_watch_pretraining_k<=5"] = {"rows": rows, "met": bool(rows) and all(r["met"] for r in rows)}
    kmax = max(cfg.ks)
    for method, key in (("transfer_ce", f"finetune_seconds_k={kmax}"),
                        ("transfer_ce_preset", f"finetune_seconds_k={kmax}_preset")):
        if method not in cfg.methods:
            continue
        runs = [r for r in results if r["k"] == kmax and r["method"] == method and "fit_seconds" in r]
        t20 = [r["fit_seconds"] for r in runs]
        targets[key] = {"model_name": cfg.model_name, "threads": cfg.threads, "method": method,
                        "max_s": float(max(t20)) if t20 else None, "mean_s": float(np.mean(t20)) if t20 else None,
                        "steps": sorted({int(r["steps"]) for r in runs}), "met": bool(t20) and max(t20) <= 2.0,
                        "note": "wall time of finetune() incl. the head replacement, measured on this host: "
                                + (recorded_load_text(runs) or "load not recorded")}
    return summary, paired, targets


def _figure(summary, cfg: TransferBenchConfig, target_desc: str):
    fig, ax = new_figure(figsize=(7.0, 4.5))
    for m in cfg.methods:
        ks = [k for k in cfg.ks if summary[str(k)][m]["mean"] is not None]
        if not ks:
            continue
        mu = np.array([summary[str(k)][m]["mean"] for k in ks])
        sd = np.array([summary[str(k)][m]["std"] for k in ks])
        ax.errorbar(ks, mu, yerr=sd, marker="o", capsize=3, label=m, linestyle="--" if m in CLASSICAL else "-")
    ax.set_xscale("log")
    ax.set_xticks(list(cfg.ks))
    ax.set_xticklabels([str(k) for k in cfg.ks])
    ax.tick_params(axis="x", which="minor", labelbottom=False)
    ax.set_xlabel("labelled windows per class (k)")
    ax.set_ylabel("test macro-F1 (mean ± std over seeds)")
    ax.set_title(f"transfer to {target_desc.split(' (')[0].split(':')[0]}", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    return fig


def _markdown(d: dict[str, Any], cfg: TransferBenchConfig) -> str:
    lines = ["# Cross-dataset transfer benchmark", "", f"Command: `{d['command']}`", "",
             f"Target: {d['target']}; pool {d['n_pool']} windows, test {d['n_test']} windows (all scored); "
             f"classes {d['class_names']}; unit conversions on load: {d['target_units_conversions']}.", "",
             f"Source model: `{d['source_model']['model_name']}`, {d['source_model']['how']}; source accuracy "
             f"{d['source_model']['source_accuracy']}.", "",
             f"Budget: {cfg.steps} optimiser steps per deep fine-tune (batch min({cfg.batch_size}, n), lr {cfg.lr:g}); "
             f"self-supervised pretraining {cfg.selfsup_steps} steps on the unlabeled pool; seeds {list(cfg.seeds)}.",
             "", "## Macro-F1 (mean ± std over seeds)", ""]
    header = ["method"] + [f"k={k}" for k in cfg.ks]
    rows = []
    for m in cfg.methods:
        row = [m]
        for k in cfg.ks:
            s = d["summary"][str(k)][m]
            row.append("failed" if s["mean"] is None else f"{s['mean']:.3f} ± {s['std']:.3f}")
        rows.append(row)
    lines += [markdown_table(header, rows), "", "## Paired differences (over seeds)", ""]
    rows = []
    for k in cfg.ks:
        pk = d["paired"][str(k)]
        rf = pk.get("best_minus_random_forest", {})
        lr = pk.get("best_minus_logistic_regression", {})
        ss = pk.get("selfsup_ft_minus_transfer_ce", {})
        f = (lambda v: "n/a" if v is None else f"{v:+.3f}")
        ci = "n/a" if rf.get("ci_low") is None else f"[{rf['ci_low']:+.3f}, {rf['ci_high']:+.3f}]"
        rows.append([k, pk.get("best_imutune", "n/a"), f(rf.get("mean")), ci, f(rf.get("min")),
                     f"{rf.get('wins', 0)}/{rf.get('n', 0)}", f(lr.get("mean")), f(ss.get("mean"))])
    lines += [markdown_table(["k", "best imutune method", "best - RF (mean)", "best - RF (95% CI)",
                              "best - RF (worst seed)", "wins vs RF", "best - LogReg (mean)",
                              "selfsup_ft - transfer_ce (mean)"], rows), "",
              "The best imutune method is chosen per k after the fact (an optimistic choice for imutune).", "",
              "## Targets", ""]
    t = d["targets"]
    a = t["best_imutune_vs_random_forest_k>=5"]
    lines.append(f"- Best imutune method >= RandomForest at k >= 5 (by >= 0.02 where RF < 0.95): "
                 f"**{'met' if a['met'] else 'not met'}**: " + "; ".join(
                     f"k={r['k']}: {r['best_imutune']} {r['paired_mean_diff']:+.3f} vs RF {r['rf_mean']:.3f} "
                     f"(needed {r['needed']:+.2f})" for r in a["rows"]))
    b = t["selfsup_beats_watch_pretraining_k<=5"]
    lines.append(f"- Self-supervised (target unlabeled) beats watch pretraining at k <= 5: "
                 f"**{'met' if b['met'] else 'not met'}**: " + "; ".join(
                     f"k={r['k']}: {r['paired_mean_diff']:+.3f}" for r in b["rows"]))
    for key in [x for x in t if x.startswith("finetune_seconds")]:
        c = t[key]
        span = "n/a" if c["max_s"] is None else f"max {c['max_s']:.2f} s, mean {c['mean_s']:.2f} s"
        lines.append(f"- Fine-tuning <= 2 s per user on one core ({c['model_name']}, {key.split('_')[2]}, "
                     f"{c['method']}, {'/'.join(map(str, c['steps'])) or 'n/a'} steps): "
                     f"**{'met' if c['met'] else 'not met'}**: {span} ({c['threads']} thread; {c['note']}).")
    errs = [r for r in d["results"] if r.get("error")]
    if errs:
        lines += ["", "Failed runs: " + "; ".join(f"{r['method']} k={r['k']} seed={r['seed']}: {r['error']}"
                                                  for r in errs[:10])]
    if d.get("selfsup"):
        s = d["selfsup"]
        lines += ["", f"Self-supervised objective: loss {s['selfsup_loss_first']:.3f} -> {s['selfsup_loss_last']:.3f} "
                      f"over {s['steps']} steps on {s['n_train']} windows ({s['seconds']:.0f} s); task accuracy (last "
                      f"10%): " + ", ".join(f"{k} {v:.2f}" for k, v in s["selfsup_task_accuracy"].items())]
    lines += ["", f"Host: {d['host']['cpu']}, {d['host']['cores']} cores, torch {d['host']['torch']}; "
                  f"total {d['seconds']:.0f} s.", "", "![macro-F1 against k](transfer.png)", ""]
    return "\n".join(lines)


def parse_ks(values: Sequence[str]) -> tuple[int, ...]:
    """``--ks 2 5 10 20`` -> (2, 5, 10, 20)."""
    return tuple(int(v) for v in values)
