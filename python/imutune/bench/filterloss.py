"""FilterLoss benchmark: leave-one-subject-out on the embedded watch data (or a
cross-dataset target), FilterLoss against every standard baseline.

Protocol (issue 3; FilterLoss paper, Han, Zhong, Feng, ICCC 2025, Sec. IV,
adapted):

* **LOSO** over the watch subjects: for each target subject, pretrain on the
  other subjects once (seeded; a stratified 20% of their recordings held out
  for the source accuracy); the target's recordings of arm side
  ``train_side`` are its training data, long-tail subsampled to each
  imbalance ratio (:func:`imutune.windows.longtail_subsample`); its other arm
  side is the test set.
* **Cross-dataset** (``target_data``): pretrain once on the watch subjects;
  the target is any set of generic recordings (one user; a new class list
  replaces the head, another sample rate is resampled to the model's); its
  windows are split into train/test halves per class (in recording and time
  order, dropping the test windows that overlap the last training window), or
  ``target_test_data`` is the test set. Ratio ``None`` ("natural") keeps the
  target's own class distribution.
* Every (target, ratio, seed) cell fine-tunes every method of
  :mod:`imutune.baselines` with the same :class:`~imutune.finetune.TrainConfig`
  (epochs, batch size, learning rate); the seed varies the subsampling and the
  fine-tuning. Accuracy and macro-F1 on the test windows; restore ratio =
  target accuracy after / source accuracy.
* Paired comparison per target subject (mean over seeds; per seed when there
  is one target): each FilterLoss variant against the baseline with the best
  mean macro-F1 at that ratio, wins/losses and the mean difference with a 95%
  t-interval (``scipy.stats.t``).

Outputs in ``out_dir``: ``filterloss.json`` (config, every cell, summaries,
paired comparisons, target checks), ``filterloss.md`` (tables),
``macro_f1.png`` and ``filterloss_weights.png``; caches ``pretrained/<target>/``
bundles and ``cells/<target>/*.json`` (one per finished cell, written
atomically), so a rerun with the same config skips finished work.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from .. import _validation as V
from .._io import write_json_atomic
from ..personalize.baselines import BASELINES, FILTERLOSS_METHODS, METHODS, run_method
from ..personalize.quality import CATEGORY_NAMES, FilterConfig
from ..signal.windows import WindowConfig, Windows, longtail_subsample, make_windows
from ..train.bundle import ModelBundle, load_bundle, save_bundle
from ..train.loop import TrainConfig, resolve_device
from ..train.pretrain import pretrain
from .report import host_info, markdown_table, write_report

__all__ = ["FilterLossBenchConfig", "quick_config", "run_filterloss_bench", "split_per_class",
           "paired_comparison", "DEFAULT_METHODS"]

DEFAULT_METHODS: tuple[str, ...] = ("none", "ce", "oversample", "undersample", "class_weighted", "class_balanced",
                                    "focal", "filterloss", "filterloss_cv", "filterloss_learned")


@dataclass(frozen=True)
class FilterLossBenchConfig:
    """Settings of ``imutune bench filterloss``."""

    model_name: str = "mobilecnn1d"                       # registry model
    subjects: tuple[int, ...] = tuple(range(1, 11))       # LOSO target subjects (1..10)
    source_subjects: tuple[int, ...] | None = None        # pretraining subjects (default: all others; all 10 cross)
    ratios: tuple[float | None, ...] = (1.0, 10.0, 50.0)  # long-tail imbalance ratios (None: natural)
    seeds: tuple[int, ...] = (0, 1, 2)                    # vary subsampling and fine-tuning
    methods: tuple[str, ...] = DEFAULT_METHODS            # names in imutune.baselines.METHODS
    window: WindowConfig = WindowConfig()                 # window length, hop, model sample rate
    pretrain: TrainConfig = TrainConfig(epochs=15, batch_size=64, lr=3e-3)
    finetune: TrainConfig = TrainConfig(epochs=30, batch_size=32, lr=1e-3)  # the budget of every method
    filter: FilterConfig = FilterConfig()                 # FilterLoss filter settings (mode set per method)
    holdout_fraction: float = 0.2                         # source recordings held out for the source accuracy
    train_side: int = 0                                   # watch arm side used as target training data
    pretrain_seed: int = 0                                # seed of every pretraining
    target_data: tuple[str, ...] = ()                     # cross-dataset target recordings (one user)
    target_test_data: tuple[str, ...] = ()                # its test recordings (default: per-class halves)
    device: str = "auto"                                  # "auto" (CUDA if present), "cpu", "cuda"

    def __post_init__(self) -> None:
        if not self.subjects or not self.seeds or not self.ratios or not self.methods:
            raise ValueError("subjects, seeds, ratios and methods must not be empty")
        bad = [m for m in self.methods if m not in METHODS]
        if bad:
            raise ValueError(f"unknown methods {bad}; expected some of {list(METHODS)}")
        for r in self.ratios:
            if r is not None and not float(r) >= 1:
                raise ValueError(f"ratios must be >= 1 or None (natural), got {r!r}")
        if self.source_subjects is not None and not self.source_subjects:
            raise ValueError("source_subjects must be None (all) or non-empty")
        if self.target_test_data and not self.target_data:
            raise ValueError("target_test_data needs target_data")
        V.check_choice("device", self.device, ("auto", "cpu", "cuda"))


def quick_config(**overrides: Any) -> FilterLossBenchConfig:
    """A reduced run (3 subjects, 1 seed, 1 s hop, few epochs) for a smoke test in a few minutes."""
    base = FilterLossBenchConfig(subjects=(3, 7, 10), seeds=(0,), window=WindowConfig(hop_s=1.0),
                                 pretrain=TrainConfig(epochs=4, batch_size=64, lr=3e-3),
                                 finetune=TrainConfig(epochs=10, batch_size=32, lr=1e-3))
    return replace(base, **overrides)


def _ratio_key(r: float | None) -> str:
    return "natural" if r is None else f"{float(r):g}"


def _fingerprint(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


# --------------------------------------------------------------------------- data

def split_per_class(windows: Windows, *, gap: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Split windows into train/test halves per class, in recording and time order.

    For each class the first half of its windows (in the order
    :func:`imutune.windows.make_windows` produced them) is training data and
    the rest test data, less the first ``gap`` test windows when they come
    from the same recording as the last training window (they overlap it). A
    class with a single window goes to training only (documented fallback).

    Returns
    -------
    (np.ndarray, np.ndarray)
        Sorted int64 indices of the training and test windows.
    """
    tr, te = [], []
    for k in np.unique(windows.y):
        idx = np.flatnonzero(windows.y == k)
        cut = max(1, idx.size // 2)
        tr.append(idx[:cut])
        rest = idx[cut:]
        drop = 0
        while drop < min(gap, rest.size) and windows.recording[rest[drop]] == windows.recording[idx[cut - 1]]:
            drop += 1
        te.append(rest[drop:])
    return np.sort(np.concatenate(tr)), np.sort(np.concatenate(te)) if te else np.zeros(0, np.int64)


@dataclass
class _Unit:
    """One target: its name, pretrained bundle, training windows (before subsampling) and test windows."""

    name: str
    bundle: ModelBundle
    train: Windows
    test: Windows
    pretrain_seconds: float
    cached: bool


def _pretrained(out: Path, name: str, source: Windows, cfg: FilterLossBenchConfig, progress: bool
                ) -> tuple[ModelBundle, float, bool]:
    fp = _fingerprint({"model": cfg.model_name, "window": asdict(cfg.window), "pretrain": asdict(cfg.pretrain),
                       "holdout": cfg.holdout_fraction, "seed": cfg.pretrain_seed, "n": len(source),
                       "users": sorted(set(source.users.tolist())), "device": cfg.device})
    folder = out / "pretrained" / name
    if (folder / "model.json").is_file():
        try:
            b = load_bundle(folder)
            if b.info.get("bench_fingerprint") == fp:
                return b, float(b.info.get("train_seconds", 0.0)), True
        except (ValueError, FileNotFoundError):
            pass
    t = time.perf_counter()
    tc = replace(cfg.pretrain, seed=cfg.pretrain_seed, device=cfg.device)
    b = pretrain(source, model_name=cfg.model_name, window=cfg.window, train_config=tc,
                 holdout_fraction=cfg.holdout_fraction, checkpoint_path=out / "checkpoints" / f"pretrain_{name}.ckpt",
                 progress=progress)
    if "source_accuracy" not in b.info:
        raise ValueError(f"pretraining for {name} held out no source recordings, so there is no source accuracy "
                         f"for the restore ratio; raise holdout_fraction (now {cfg.holdout_fraction}) or use more "
                         "source subjects")
    b = replace(b, info={**b.info, "bench_fingerprint": fp})
    save_bundle(b, folder)
    return b, time.perf_counter() - t, False


def _units(out: Path, cfg: FilterLossBenchConfig, progress: bool, log: Callable[[str], None]):
    """Yield one :class:`_Unit` per target (pretraining lazily, so progress shows)."""
    from ..data.recordings import load_many, load_watch
    from ..personalize.protocols import split_target

    if cfg.target_data:
        source = make_windows(load_watch(subjects=cfg.source_subjects), cfg.window)
        bundle, secs, cached = _pretrained(out, "watch_all", source, cfg, progress)
        target_recs = load_many(cfg.target_data)
        w = make_windows(target_recs, bundle.window, channels=bundle.channels)
        if cfg.target_test_data:
            train, test = w, make_windows(load_many(cfg.target_test_data), bundle.window, channels=bundle.channels)
            if test.class_names != train.class_names:
                raise ValueError(f"target test recordings have classes {list(test.class_names)}; the training "
                                 f"recordings have {list(train.class_names)}")
        else:
            gap = max(0, math.ceil(bundle.window.window_s / bundle.window.hop_s) - 1)
            itr, ite = split_per_class(w, gap=gap)
            if ite.size == 0:
                raise ValueError("the target recordings are too short to split into train and test halves; "
                                 "pass target_test_data")
            train, test = w.subset(itr), w.subset(ite)
        users = sorted(set(w.users.tolist()))
        log(f"[data] cross-dataset target {users}: {len(train)} training windows {train.class_counts().tolist()}, "
            f"{len(test)} test windows, classes {list(train.class_names)}")
        yield _Unit("target", bundle, train, test, secs, cached)
        return
    recs = load_watch()
    for s in cfg.subjects:
        name = f"subject{s:02d}"
        source, tr, te = split_target(recs, name, train_side=cfg.train_side)
        if cfg.source_subjects is not None:
            source = [r for r in source if r.meta.get("subject") in set(cfg.source_subjects)]
            if not source:
                raise ValueError(f"source_subjects {cfg.source_subjects} leave no source recordings for {name}")
        bundle, secs, cached = _pretrained(out, name, make_windows(source, cfg.window), cfg, progress)
        yield _Unit(name, bundle, make_windows(tr, cfg.window), make_windows(te, cfg.window), secs, cached)


def _subsample(w: Windows, ratio: float | None, seed: int) -> Windows:
    if ratio is None:
        return w
    return w.subset(longtail_subsample(w.y, ratio, seed=seed, num_classes=w.num_classes))


# --------------------------------------------------------------------------- one cell

def _run_cell(unit: _Unit, ratio: float | None, seed: int, method: str, cfg: FilterLossBenchConfig) -> dict:
    from ..metrics import restore_ratio
    from ..train.bundle import evaluate_bundle

    w = _subsample(unit.train, ratio, seed)
    tc = replace(cfg.finetune, seed=seed, device=cfg.device)
    opts = {"filter_config": cfg.filter} if method in ("filterloss_cv", "filterloss_learned") else {}
    t = time.perf_counter()
    b = run_method(method, unit.bundle, w, tc, **opts)
    wall = time.perf_counter() - t
    ev = evaluate_bundle(b, unit.test, device=cfg.device)
    src = unit.bundle.info["source_accuracy"]
    info = b.info
    cell = {"target": unit.name, "ratio": _ratio_key(ratio), "seed": seed, "method": method,
            "accuracy": ev["accuracy"], "macro_f1": ev["macro_f1"], "restore_ratio": restore_ratio(ev["accuracy"], src),
            "source_accuracy": src, "n_train": len(w), "class_counts": w.class_counts().tolist(),
            "n_train_effective": info.get("n_train_effective", len(w)), "steps": info.get("steps", 0),
            "train_seconds": float(info.get("train_seconds", 0.0)), "wall_seconds": wall}
    for k in ("category_counts", "category_weights", "class_balance", "scoring_seconds", "selection_seconds"):
        if k in info and method.startswith("filterloss"):
            cell[k] = info[k]
    if method == "filterloss":   # first version: fixed weights, no class balance, nothing to select
        cell.setdefault("class_balance", 0.0)
        cell.setdefault("selection_seconds", 0.0)
    return cell


# --------------------------------------------------------------------------- statistics

def paired_comparison(a: Sequence[float], b: Sequence[float], *, confidence: float = 0.95) -> dict[str, Any]:
    """Paired comparison of ``a`` against ``b`` (same units, same order).

    Returns
    -------
    dict
        ``n``, ``wins`` (a > b), ``losses``, ``ties``, ``mean_diff`` (a - b) and
        ``ci_low``/``ci_high``: the ``confidence`` t-interval of the mean
        difference (None with fewer than 2 pairs).
    """
    from scipy import stats

    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    if d.size == 0:
        raise ValueError("paired_comparison needs at least one pair")
    out: dict[str, Any] = {"n": int(d.size), "wins": int((d > 1e-12).sum()), "losses": int((d < -1e-12).sum()),
                           "ties": int((np.abs(d) <= 1e-12).sum()), "mean_diff": float(d.mean()),
                           "ci_low": None, "ci_high": None}
    if d.size >= 2:
        sem = d.std(ddof=1) / math.sqrt(d.size)
        h = float(stats.t.ppf(0.5 + confidence / 2, d.size - 1) * sem)
        out["ci_low"], out["ci_high"] = out["mean_diff"] - h, out["mean_diff"] + h
    return out


def _mean_std(v: Sequence[float]) -> tuple[float, float]:
    a = np.asarray(v, dtype=np.float64)
    return float(a.mean()), float(a.std(ddof=1)) if a.size > 1 else 0.0


def _summaries(cells: list[dict], cfg: FilterLossBenchConfig) -> dict[str, Any]:
    ratios = [_ratio_key(r) for r in cfg.ratios]
    methods = [m for m in cfg.methods if any(c["method"] == m for c in cells)]
    summary: dict[str, dict[str, Any]] = {}
    for r in ratios:
        summary[r] = {}
        for m in methods:
            cs = [c for c in cells if c["ratio"] == r and c["method"] == m]
            if not cs:
                continue
            s: dict[str, Any] = {"n": len(cs)}
            for k in ("accuracy", "macro_f1", "restore_ratio", "train_seconds", "steps"):
                s[k + "_mean"], s[k + "_std"] = _mean_std([c[k] for c in cs])
            if m.startswith("filterloss"):
                for k in ("scoring_seconds", "selection_seconds", "class_balance"):
                    if all(k in c for c in cs):
                        s[k + "_mean"], s[k + "_std"] = _mean_std([c[k] for c in cs])
                if all("category_weights" in c for c in cs):
                    for name in CATEGORY_NAMES:
                        s[f"weight_{name}_mean"], s[f"weight_{name}_std"] = _mean_std(
                            [c["category_weights"][name] for c in cs])
                        s[f"count_{name}_mean"], _ = _mean_std([c["category_counts"][name] for c in cs])
            summary[r][m] = s
    # paired comparisons
    targets = sorted({c["target"] for c in cells})
    paired: dict[str, dict[str, Any]] = {}
    baselines = [m for m in methods if m in BASELINES]
    for r in ratios:
        if not baselines or r not in summary:
            continue
        best = max((m for m in baselines if m in summary[r]), key=lambda m: summary[r][m]["macro_f1_mean"],
                   default=None)
        if best is None:
            continue
        paired[r] = {}
        for m in (m for m in methods if m in FILTERLOSS_METHODS and m in summary[r]):
            def per_unit(method: str) -> dict[str, float]:
                key = (lambda c: c["target"]) if len(targets) > 1 else (lambda c: str(c["seed"]))
                groups: dict[str, list[float]] = {}
                for c in cells:
                    if c["ratio"] == r and c["method"] == method:
                        groups.setdefault(key(c), []).append(c["macro_f1"])
                return {k: float(np.mean(v)) for k, v in groups.items()}
            a, b = per_unit(m), per_unit(best)
            units = sorted(set(a) & set(b))
            if units:
                paired[r][m] = {"baseline": best, "unit": "subject" if len(targets) > 1 else "seed",
                                **paired_comparison([a[u] for u in units], [b[u] for u in units])}
    return {"summary": summary, "paired": paired}


def _targets(summary: dict, cfg: FilterLossBenchConfig) -> dict[str, Any]:
    """The issue's targets, evaluated on the measured figures."""
    out: dict[str, Any] = {}
    fl = [m for m in ("filterloss_cv", "filterloss_learned") if m in cfg.methods]
    for r in ("10", "50"):
        if r not in summary or not fl:
            continue
        s = summary[r]
        best_all = max(s, key=lambda m: s[m]["macro_f1_mean"])
        best_fl = max((m for m in fl if m in s), key=lambda m: s[m]["macro_f1_mean"])
        out[f"best_macro_f1_ratio_{r}"] = {"met": best_all in fl, "best_method": best_all,
                                           "best_macro_f1": s[best_all]["macro_f1_mean"], "best_filterloss": best_fl,
                                           "filterloss_macro_f1": s[best_fl]["macro_f1_mean"]}
        out[f"restore_ratio_ratio_{r}"] = {"met": s[best_fl]["restore_ratio_mean"] >= 0.95, "method": best_fl,
                                           "restore_ratio": s[best_fl]["restore_ratio_mean"]}
    cost = {}
    for m in fl:
        cs = [s[m] for s in summary.values() if m in s and "scoring_seconds_mean" in s[m]]
        if cs:
            filt = float(np.mean([c["scoring_seconds_mean"] + c.get("selection_seconds_mean", 0.0) for c in cs]))
            ft = float(np.mean([c["train_seconds_mean"] for c in cs]))
            cost[m] = {"met": filt <= ft, "scoring_plus_selection_s": filt, "finetune_s": ft}
    if cost:
        out["cost"] = cost
    return out


# --------------------------------------------------------------------------- report

def _fmt_ms(mean: float, std: float) -> str:
    return f"{mean:.4f} ± {std:.4f}"


def _markdown(res: dict[str, Any]) -> str:
    cfg = res["config"]
    summ, paired, tg = res["summary"], res["paired"], res["targets"]
    n_targets = len(res["targets_run"])
    lines = ["# FilterLoss benchmark", ""]
    if cfg["target_data"]:
        lines.append(f"Cross-dataset: pretrained on watch subjects {cfg['source_subjects'] or 'all'}; target "
                     f"{', '.join(cfg['target_data'])}.")
    else:
        lines.append(f"Leave-one-subject-out over watch subjects {cfg['subjects']} (train arm side "
                     f"{cfg['train_side']}, test on the other side).")
    ft = cfg["finetune"]
    lines += [f"Model `{cfg['model_name']}`; pretrain {cfg['pretrain']['epochs']} epochs; every method fine-tunes "
              f"{ft['epochs']} epochs, batch {ft['batch_size']}, lr {ft['lr']:g}; seeds {cfg['seeds']}; "
              f"{n_targets} target(s). Mean ± std over targets x seeds.", "",
              "## Accuracy, macro-F1 and restore ratio", ""]
    rows = []
    for r, ms in summ.items():
        best = max(ms, key=lambda m: ms[m]["macro_f1_mean"])
        for m, s in ms.items():
            f1 = _fmt_ms(s["macro_f1_mean"], s["macro_f1_std"])
            rows.append([r, m, _fmt_ms(s["accuracy_mean"], s["accuracy_std"]), f"**{f1}**" if m == best else f1,
                         _fmt_ms(s["restore_ratio_mean"], s["restore_ratio_std"]), s["n"]])
    lines += [markdown_table(["ratio", "method", "accuracy", "macro-F1", "restore ratio", "cells"], rows), ""]
    if paired:
        lines += ["## Paired comparison against the best baseline (macro-F1)", ""]
        rows = []
        for r, ps in paired.items():
            for m, p in ps.items():
                ci = "n/a" if p["ci_low"] is None else f"[{p['ci_low']:+.4f}, {p['ci_high']:+.4f}]"
                rows.append([r, m, p["baseline"], f"{p['n']} {p['unit']}s", p["wins"], p["losses"], p["ties"],
                             f"{p['mean_diff']:+.4f}", ci])
        lines += [markdown_table(["ratio", "FilterLoss", "best baseline", "pairs", "wins", "losses", "ties",
                                  "mean diff", "95% CI"], rows), ""]
    rows = []
    for r, ms in summ.items():
        for m, s in ms.items():
            if "weight_high_value_mean" in s:
                rows.append([r, m] + [_fmt_ms(s[f"weight_{n}_mean"], s[f"weight_{n}_std"]) for n in CATEGORY_NAMES]
                            + [_fmt_ms(s["class_balance_mean"], s["class_balance_std"]) if "class_balance_mean" in s
                               else "0 (none)",
                               " / ".join(f"{s[f'count_{n}_mean']:.1f}" for n in CATEGORY_NAMES)])
    if rows:
        lines += ["## FilterLoss weights (chosen or learned) and category counts", "",
                  markdown_table(["ratio", "variant", "high-value", "boundary", "noisy", "class-balance beta",
                                  "windows high / boundary / noisy"], rows), ""]
    rows = []
    for r, ms in summ.items():
        for m, s in ms.items():
            if "scoring_seconds_mean" in s:
                sel = s.get("selection_seconds_mean", 0.0)
                filt = s["scoring_seconds_mean"] + sel
                rows.append([r, m, f"{s['scoring_seconds_mean']:.3f}", f"{sel:.3f}",
                             f"{s['train_seconds_mean']:.3f}", f"{filt / max(s['train_seconds_mean'], 1e-9):.2f}"])
    if rows:
        lines += ["## Cost per cell (seconds, mean)", "",
                  markdown_table(["ratio", "variant", "scoring", "weight selection", "fine-tuning",
                                  "(scoring + selection) / fine-tuning"], rows), ""]
    if tg:
        lines += ["## Targets", ""]
        for k, v in tg.items():
            if k == "cost":
                for m, c in v.items():
                    lines.append(f"- cost, {m}: scoring + selection {c['scoring_plus_selection_s']:.3f} s vs "
                                 f"fine-tuning {c['finetune_s']:.3f} s -> {'met' if c['met'] else 'NOT met'}")
            elif k.startswith("best_macro_f1"):
                lines.append(f"- best mean macro-F1 at ratio {k.rsplit('_', 1)[1]}: {v['best_method']} "
                             f"({v['best_macro_f1']:.4f}); best FilterLoss {v['best_filterloss']} "
                             f"({v['filterloss_macro_f1']:.4f}) -> {'met' if v['met'] else 'NOT met'}")
            else:
                lines.append(f"- restore ratio >= 0.95 at ratio {k.rsplit('_', 1)[1]}: {v['method']} "
                             f"{v['restore_ratio']:.4f} -> {'met' if v['met'] else 'NOT met'}")
        lines.append("")
    h = res["host"]
    lines += [f"Wall time {res['wall_seconds']:.0f} s (pretraining {res['pretrain_seconds']:.0f} s, "
              f"{res['cells_run']} cells run, {res['cells_cached']} from cache) on {h['cpu']}, {h.get('threads')} "
              f"torch threads, device {h['device']}.", "",
              "![macro-F1](macro_f1.png)", "", "![FilterLoss weights](filterloss_weights.png)", ""]
    return "\n".join(lines)


def _figures(res: dict[str, Any]) -> dict[str, Any]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summ = res["summary"]
    ratios = list(summ)
    methods = [m for m in res["config"]["methods"] if any(m in summ[r] for r in ratios)]
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(methods) * len(ratios) / 2), 4))
    width = 0.8 / max(len(methods), 1)
    for i, m in enumerate(methods):
        xs = [j + (i - (len(methods) - 1) / 2) * width for j in range(len(ratios))]
        ys = [summ[r][m]["macro_f1_mean"] if m in summ[r] else np.nan for r in ratios]
        es = [summ[r][m]["macro_f1_std"] if m in summ[r] else 0 for r in ratios]
        ax.bar(xs, ys, width, yerr=es, capsize=2, label=m,
               hatch="//" if m.startswith("filterloss") else None)
    ax.set_xticks(range(len(ratios)), [f"ratio {r}" for r in ratios])
    ax.set_ylabel("macro-F1 (mean ± std)")
    ax.set_ylim(0, 1)
    ax.set_title("Target macro-F1 per method and imbalance ratio")
    ax.legend(fontsize=7, ncol=min(len(methods), 5), loc="upper center", bbox_to_anchor=(0.5, -0.08))
    figs = {"macro_f1": fig}

    fl = [m for m in methods if any("weight_high_value_mean" in summ[r].get(m, {}) for r in ratios)]
    fig, axes = plt.subplots(1, max(len(fl), 1), figsize=(5 * max(len(fl), 1), 3.6), squeeze=False)
    names = list(CATEGORY_NAMES) + ["class_balance"]
    for ax, m in zip(axes[0], fl):
        width = 0.8 / len(names)
        for i, n in enumerate(names):
            key = f"weight_{n}" if n != "class_balance" else n
            xs = [j + (i - (len(names) - 1) / 2) * width for j in range(len(ratios))]
            ys = [summ[r][m].get(f"{key}_mean", np.nan) if m in summ[r] else np.nan for r in ratios]
            es = [summ[r][m].get(f"{key}_std", 0) if m in summ[r] else 0 for r in ratios]
            ax.bar(xs, ys, width, yerr=es, capsize=2, label=n if n != "class_balance" else "class-balance beta")
        ax.set_xticks(range(len(ratios)), [f"ratio {r}" for r in ratios])
        ax.set_ylim(0, 1.1)
        ax.set_title(f"{m}: weight per category")
        ax.legend(fontsize=7, ncol=2, loc="upper center", bbox_to_anchor=(0.5, -0.08))
    if not fl:
        axes[0][0].text(0.5, 0.5, "no FilterLoss variant in this run", ha="center")
    figs["filterloss_weights"] = fig
    return figs


# --------------------------------------------------------------------------- driver

def run_filterloss_bench(out_dir: str | os.PathLike, config: FilterLossBenchConfig = FilterLossBenchConfig(), *,
                         progress: bool = True, log: Callable[[str], None] = print,
                         threads: int | None = None) -> dict[str, Any]:
    """Run the benchmark (module docstring) and write its report.

    Parameters
    ----------
    out_dir : path-like
        Output folder; finished pretrainings and cells in it are reused when
        the config matches.
    config : FilterLossBenchConfig
        Protocol settings.
    progress : bool
        Show a progress bar over the cells.
    threads : int, optional
        ``torch.set_num_threads`` for this run (CPU only); unchanged if None.

    Returns
    -------
    dict
        The report (also ``filterloss.json``): ``config``, ``cells``,
        ``summary[ratio][method]``, ``paired[ratio][variant]``, ``targets``,
        timings and host.
    """
    import torch

    if threads is not None:
        torch.set_num_threads(int(threads))
    t_start = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg_json = asdict(config)
    write_json_atomic(out / "bench_config.json", cfg_json)
    n_units = 1 if config.target_data else len(config.subjects)
    total = n_units * len(config.ratios) * len(config.seeds) * len(config.methods)
    cell_fp = _fingerprint({k: v for k, v in cfg_json.items() if k not in ("subjects", "ratios", "seeds", "methods")})
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc="filterloss bench", unit="cell", dynamic_ncols=True)
    cells: list[dict] = []
    n_run = n_cached = 0
    pretrain_s = 0.0
    units_run = []
    skipped = []
    for unit in _units(out, config, progress, log):
        units_run.append(unit.name)
        pretrain_s += 0.0 if unit.cached else unit.pretrain_seconds
        log(f"[pretrain] {unit.name}: source accuracy {unit.bundle.info['source_accuracy']:.4f} "
            f"({'cached' if unit.cached else f'{unit.pretrain_seconds:.1f} s'}); {len(unit.train)} training, "
            f"{len(unit.test)} test windows")
        for ratio in config.ratios:
            for seed in config.seeds:
                for method in config.methods:
                    path = out / "cells" / unit.name / f"r{_ratio_key(ratio)}_s{seed}_{method}.json"
                    cell = None
                    if path.is_file():
                        try:
                            c = json.loads(path.read_text())
                            cell = c if c.get("fingerprint") == cell_fp else None
                        except (OSError, json.JSONDecodeError):
                            cell = None
                    if cell is not None:
                        n_cached += 1
                    elif method == "none" and tuple(unit.train.class_names) != tuple(unit.bundle.class_names):
                        skipped.append(f"{unit.name}: 'none' needs the source class list")
                    else:
                        cell = {**_run_cell(unit, ratio, seed, method, config), "fingerprint": cell_fp}
                        write_json_atomic(path, cell)
                        n_run += 1
                    if cell is not None:
                        cells.append(cell)
                    if bar is not None:
                        bar.update(1)
                        bar.set_postfix_str(f"{unit.name} r={_ratio_key(ratio)} s={seed} {method}")
        done = [c for c in cells if c["target"] == unit.name]
        best = {}
        for c in done:
            best.setdefault(c["method"], []).append(c["macro_f1"])
        log(f"[cells] {unit.name}: mean macro-F1 " + ", ".join(f"{m} {np.mean(v):.3f}" for m, v in best.items()))
    if bar is not None:
        bar.close()
    stats = _summaries(cells, config)
    host = {**host_info(), "threads": torch.get_num_threads(), "device": str(resolve_device(config.device))}
    res: dict[str, Any] = {"config": cfg_json, "targets_run": units_run, "cells": cells, **stats,
                           "targets": _targets(stats["summary"], config), "skipped": sorted(set(skipped)),
                           "cells_run": n_run, "cells_cached": n_cached, "pretrain_seconds": pretrain_s,
                           "wall_seconds": time.perf_counter() - t_start, "host": host}
    md = _markdown(res)
    write_report(out, "filterloss", res, md, _figures(res))
    log(f"[done] {out / 'filterloss.md'} ({res['wall_seconds']:.1f} s)")
    return res
