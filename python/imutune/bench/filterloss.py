"""FilterLoss benchmark: personalization measured as users live it (issue 16).

Protocols (:mod:`imutune.personalize.protocols`):

* **calibrate-then-use** (default): for each watch subject, pretrain on the other subjects once (seeded;
  a stratified 20% of their recordings held out for the source accuracy). Each of the target's
  recordings (both arm sides) is split in time: the first ``calibration_fraction`` (0.5) is
  calibration data, the rest, after a gap of one window, is test data
  (:func:`~imutune.personalize.protocols.calibrate_then_use`). The calibration parts of one arm side,
  joined in recording order, form one labelled session
  (:func:`~imutune.signal.label_noise.concatenate_session`).
* **new-placement** (stress case): calibrate on the target's arm side ``train_side``, test on the other
  side (a placement never seen while calibrating).
* **cross-dataset** (``target_data``): pretrain once on the watch subjects; the target is any set of
  recordings (one user), split calibrate-then-use (or ``target_test_data`` is the test set).

Per (target, noise, seed): the calibration session's labels get the label noise
(:mod:`imutune.signal.label_noise`; truth kept), the windows are long-tail subsampled at the imbalance
ratio by their true class (calibration part only; the test data keep their natural distribution and
clean labels), then every method of :mod:`imutune.personalize.baselines` fine-tunes with the same
:class:`~imutune.train.loop.TrainConfig`, and the classical reference (``random_forest``, optionally
``logistic_regression``: :mod:`imutune.personalize.reference`, 13 statistics per channel) is fitted on the
same calibration windows and labels. Macro-F1 and accuracy on the target's test windows;
``personalization_gain`` = macro-F1 minus that of no fine-tuning. Every filter (FilterLoss variants,
cleanlab) gets its noisy-window precision and recall against the injected truth, and FilterLoss the
share of its total loss weight that sits on corrupted windows.

Paired comparisons per target subject (mean over seeds): each FilterLoss variant against ``ce`` and
against ``cleanlab`` (mean difference with a 95% t-interval, ``scipy.stats.t``), the best FilterLoss
variant against the random forest, and the oracle against the best FilterLoss variant.

Outputs in ``out_dir``: ``filterloss.json``, ``filterloss.md``, ``macro_f1.png``, ``filter_pr.png``;
caches ``pretrained/<target>/`` bundles and ``cells/<target>/*.json`` (one per finished cell, written
atomically), so a rerun with the same config skips finished work.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from .. import _validation as V
from .._io import write_json_atomic
from ..personalize.baselines import FILTERLOSS_METHODS, METHOD_REVISIONS, METHODS, run_method
from ..personalize.filter import NOISY
from ..personalize.reference import REFERENCE_METHODS, reference_score
from ..personalize.weights import FilterConfig
from ..signal.label_noise import (
    NoisyWindows,
    concatenate_session,
    noisy_windows,
    parse_label_noise,
    precision_recall,
)
from ..signal.windows import WindowConfig, Windows, longtail_subsample, make_windows
from ..train.bundle import ModelBundle, load_bundle, save_bundle
from ..train.loop import FINETUNE, PRETRAIN, TrainConfig, resolve_device
from ..train.pretrain import pretrain
from .report import host_info, markdown_table, new_figure, paired_comparison, recorded_load_text, write_report

__all__ = ["FilterLossBenchConfig", "quick_config", "run_filterloss_bench", "paired_comparison", "DEFAULT_METHODS",
           "CLASSICAL_METHODS", "DEFAULT_NOISES", "precision_recall"]

DEFAULT_METHODS: tuple[str, ...] = ("none", "ce", "undersample", "class_balanced", "focal", "gce", "cleanlab",
                                    "oracle", "filterloss", "filterloss_cv", "filterloss_learned", "filterloss_soft",
                                    "random_forest")
#: The classical references (:mod:`imutune.personalize.reference`) the benchmark can run beside the deep methods:
#: fitted on the same calibration windows and (noisy) labels, scored on the same test windows.
CLASSICAL_METHODS: tuple[str, ...] = REFERENCE_METHODS
DEFAULT_NOISES: tuple[str, ...] = ("none", "boundary:0.2", "shift:1-3", "symmetric:0.3")
PROTOCOL_NAMES = ("calibrate-then-use", "new-placement")


@dataclass(frozen=True)
class FilterLossBenchConfig:
    """Settings of ``imutune bench filterloss``."""

    model_name: str = "mobilecnn1d"                       # registry model
    subjects: tuple[int, ...] = tuple(range(1, 11))       # target subjects (1..10), each held out in turn
    source_subjects: tuple[int, ...] | None = None        # pretraining subjects (default: all others; all 10 cross)
    protocol: str = "calibrate-then-use"                  # or "new-placement" (the cross-arm stress case)
    calibration_fraction: float = 0.5                     # calibrate-then-use: first share of each recording
    gap_s: float | None = None                            # calibrate-then-use: gap before the test part (window)
    noises: tuple[str, ...] = DEFAULT_NOISES              # label-noise specs (imutune.signal.label_noise)
    ratios: tuple[float | None, ...] = (10.0,)            # long-tail imbalance ratios (None: natural)
    seeds: tuple[int, ...] = (0, 1, 2)                    # vary noise, subsampling and fine-tuning
    methods: tuple[str, ...] = DEFAULT_METHODS            # names in imutune.personalize.baselines.METHODS
    window: WindowConfig = WindowConfig()                 # window length, hop, model sample rate
    pretrain: TrainConfig = replace(PRETRAIN, epochs=15)
    finetune: TrainConfig = FINETUNE                      # the budget of every method
    filter: FilterConfig = FilterConfig()                 # FilterLoss / cleanlab scoring settings
    holdout_fraction: float = 0.2                         # source recordings held out for the source accuracy
    train_side: int = 0                                   # new-placement: watch arm side used for calibration
    pretrain_seed: int = 0                                # seed of every pretraining
    target_data: tuple[str, ...] = ()                     # cross-dataset target recordings (one user)
    target_test_data: tuple[str, ...] = ()                # its test recordings (default: calibrate-then-use)
    device: str = "auto"                                  # "auto" (CUDA if present), "cpu", "cuda"

    def __post_init__(self) -> None:
        if not self.subjects or not self.seeds or not self.ratios or not self.methods or not self.noises:
            raise ValueError("subjects, seeds, ratios, noises and methods must not be empty")
        bad = [m for m in self.methods if m not in METHODS and m not in CLASSICAL_METHODS]
        if bad:
            raise ValueError(f"unknown methods {bad}; expected some of {list(METHODS) + list(CLASSICAL_METHODS)}")
        for r in self.ratios:
            if r is not None and not float(r) >= 1:
                raise ValueError(f"ratios must be >= 1 or None (natural), got {r!r}")
        for n in self.noises:
            parse_label_noise(n)
        V.check_choice("protocol", self.protocol, PROTOCOL_NAMES)
        if not 0 < self.calibration_fraction < 1:
            raise ValueError(f"calibration_fraction must be in (0, 1), got {self.calibration_fraction!r}")
        if self.source_subjects is not None and not self.source_subjects:
            raise ValueError("source_subjects must be None (all) or non-empty")
        if self.target_test_data and not self.target_data:
            raise ValueError("target_test_data needs target_data")
        V.check_choice("device", self.device, ("auto", "cpu", "cuda"))


def quick_config(**overrides: Any) -> FilterLossBenchConfig:
    """A reduced run (3 subjects, 1 seed, 1 s hop, few epochs, two noise settings) for a smoke test."""
    base = FilterLossBenchConfig(subjects=(3, 7, 10), seeds=(0,), window=WindowConfig(hop_s=1.0),
                                 noises=("none", "symmetric:0.3"),
                                 pretrain=replace(PRETRAIN, epochs=4), finetune=replace(FINETUNE, epochs=10),
                                 filter=FilterConfig(oof_epochs=5))
    return replace(base, **overrides)


def _ratio_key(r: float | None) -> str:
    return "natural" if r is None else f"{float(r):g}"


def _fingerprint(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


# --------------------------------------------------------------------------- data

@dataclass
class _Unit:
    """One target: name, pretrained bundle, clean calibration recordings (sessions) and test windows."""

    name: str
    bundle: ModelBundle
    calibration: list
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


def _sessions(recs: list, by_side: bool) -> list:
    """Join calibration recordings into sessions (one per arm side for the watch data)."""
    if not by_side:
        return [concatenate_session(recs, name="session")] if len({r.user for r in recs}) == 1 else list(recs)
    out = []
    for side in sorted({r.meta.get("side") for r in recs}, key=str):
        part = [r for r in recs if r.meta.get("side") == side]
        out.append(concatenate_session(part, name=f"session:side{side}"))
    return out


def _units(out: Path, cfg: FilterLossBenchConfig, progress: bool, log: Callable[[str], None], *,
           cached_only: bool = False):
    """Yield one :class:`_Unit` per target (pretraining lazily, so progress shows; with ``cached_only``
    targets without a cached pretraining are skipped)."""
    from ..data.recordings import load_many, load_watch
    from ..personalize.protocols import calibrate_then_use, split_target

    if cfg.target_data:
        source = make_windows(load_watch(subjects=cfg.source_subjects), cfg.window)
        bundle, secs, cached = _pretrained(out, "watch_all", source, cfg, progress)
        target_recs = load_many(cfg.target_data)
        if cfg.target_test_data:
            cal, test_recs = target_recs, load_many(cfg.target_test_data)
        else:
            cal, test_recs = calibrate_then_use(target_recs, window_s=bundle.window.window_s,
                                                calibration_fraction=cfg.calibration_fraction, gap_s=cfg.gap_s)
        test = make_windows(test_recs, bundle.window, channels=bundle.channels)
        log(f"[data] cross-dataset target: {len(cal)} calibration recordings, {len(test)} test windows, "
            f"classes {list(test.class_names)}")
        yield _Unit("target", bundle, _sessions(cal, by_side=False), test, secs, cached)
        return
    recs = load_watch()
    for s in cfg.subjects:
        name = f"subject{s:02d}"
        source, tr, te = split_target(recs, name, train_side=cfg.train_side)
        if cfg.source_subjects is not None:
            source = [r for r in source if r.meta.get("subject") in set(cfg.source_subjects)]
            if not source:
                raise ValueError(f"source_subjects {cfg.source_subjects} leave no source recordings for {name}")
        if cfg.protocol == "calibrate-then-use":
            cal, test_recs = calibrate_then_use([r for r in recs if r.user == name], window_s=cfg.window.window_s,
                                                calibration_fraction=cfg.calibration_fraction, gap_s=cfg.gap_s)
        else:
            cal, test_recs = tr, te
        if cached_only and not (out / "pretrained" / name / "model.json").is_file():
            log(f"[skip] {name}: no cached pretraining")
            continue
        bundle, secs, cached = _pretrained(out, name, make_windows(source, cfg.window), cfg, progress)
        yield _Unit(name, bundle, _sessions(cal, by_side=True), make_windows(test_recs, cfg.window), secs, cached)


def _calibration(unit: _Unit, noise: str, ratio: float | None, seed: int, cfg: FilterLossBenchConfig) -> NoisyWindows:
    nw = noisy_windows(unit.calibration, parse_label_noise(noise), unit.bundle.window, seed=seed,
                       channels=unit.bundle.channels)
    if ratio is None:
        return nw
    return nw.subset(longtail_subsample(nw.y_true, ratio, seed=seed, num_classes=nw.windows.num_classes))


# --------------------------------------------------------------------------- one cell

def _uses_filter(method: str) -> bool:
    """Whether ``method`` runs the sample-quality filter's fold models (``FilterLossBenchConfig.filter``)."""
    return method.startswith("filterloss") or method == "cleanlab"


def _run_cell(unit: _Unit, nw: NoisyWindows, noise: str, ratio: float | None, seed: int, method: str,
              cfg: FilterLossBenchConfig) -> dict:
    from ..metrics import restore_ratio
    from ..train.bundle import evaluate_bundle

    w = nw.windows
    t = time.perf_counter()
    if method in CLASSICAL_METHODS:   # the classical reference on the same calibration windows and labels
        ev = reference_score(w, unit.test, method=method, seed=seed)
        wall = time.perf_counter() - t
        info: dict[str, Any] = {"train_seconds": wall}
    else:
        tc = replace(cfg.finetune, seed=seed, device=cfg.device)
        opts: dict[str, Any] = {}
        if _uses_filter(method):
            opts["filter_config"] = cfg.filter
        if method == "oracle":
            opts["noisy_mask"] = nw.noisy
        b = run_method(method, unit.bundle, w, tc, **opts)
        wall = time.perf_counter() - t
        ev = evaluate_bundle(b, unit.test, device=cfg.device)
        info = b.info
    src = unit.bundle.info["source_accuracy"]
    cell = {"target": unit.name, "noise": noise, "ratio": _ratio_key(ratio), "seed": seed, "method": method,
            "accuracy": ev["accuracy"], "macro_f1": ev["macro_f1"], "restore_ratio": restore_ratio(ev["accuracy"], src),
            "source_accuracy": src, "n_train": len(w), "class_counts": w.class_counts().tolist(),
            "noise_rate": nw.noise_rate, "n_corrupted": int(nw.noisy.sum()),
            "n_train_effective": info.get("n_train_effective", len(w)), "steps": info.get("steps", 0),
            "train_seconds": float(info.get("train_seconds", 0.0)), "wall_seconds": wall}
    flagged = None
    if "categories" in info:
        cats = np.asarray(info["categories"])
        flagged = cats == NOISY
        if "sample_weights" in info:
            sw = np.asarray(info["sample_weights"], dtype=np.float64)
            cell["corrupted_weight_share"] = float(sw[nw.noisy].sum() / max(sw.sum(), 1e-12))
    elif "dropped" in info and method == "cleanlab":
        flagged = np.zeros(len(w), bool)
        flagged[np.asarray(info["dropped"], dtype=np.int64)] = True
    if flagged is not None:
        cell["filter"] = precision_recall(flagged, nw.noisy)
    for k in ("category_counts", "category_weights", "class_balance", "soft_weights", "scoring_seconds",
              "selection_seconds", "label_issues"):
        if k in info and _uses_filter(method):
            cell[k] = info[k]
    return cell


# --------------------------------------------------------------------------- statistics

def _mean_std(v: Sequence[float]) -> tuple[float, float]:
    a = np.asarray(v, dtype=np.float64)
    return float(a.mean()), float(a.std(ddof=1)) if a.size > 1 else 0.0


def _key(c: dict) -> str:
    return f"{c['noise']} | ratio {c['ratio']}"


def _per_unit(cells: list[dict], key: str, method: str, many_targets: bool) -> dict[str, float]:
    groups: dict[str, list[float]] = {}
    for c in cells:
        if _key(c) == key and c["method"] == method:
            groups.setdefault(c["target"] if many_targets else str(c["seed"]), []).append(c["macro_f1"])
    return {k: float(np.mean(v)) for k, v in groups.items()}


def _summaries(cells: list[dict], cfg: FilterLossBenchConfig) -> dict[str, Any]:
    keys = [f"{n} | ratio {_ratio_key(r)}" for n in cfg.noises for r in cfg.ratios]
    methods = [m for m in cfg.methods if any(c["method"] == m for c in cells)]
    summary: dict[str, dict[str, Any]] = {}
    for k in keys:
        summary[k] = {}
        none = {(c["target"], c["seed"]): c["macro_f1"] for c in cells if _key(c) == k and c["method"] == "none"}
        for m in methods:
            cs = [c for c in cells if _key(c) == k and c["method"] == m]
            if not cs:
                continue
            s: dict[str, Any] = {"n": len(cs)}
            for f in ("accuracy", "macro_f1", "restore_ratio", "train_seconds", "wall_seconds", "noise_rate"):
                s[f + "_mean"], s[f + "_std"] = _mean_std([c[f] for c in cs])
            gains = [c["macro_f1"] - none[(c["target"], c["seed"])] for c in cs if (c["target"], c["seed"]) in none]
            if gains:
                s["personalization_gain_mean"], s["personalization_gain_std"] = _mean_std(gains)
            fl = [c["filter"] for c in cs if "filter" in c]
            if fl:
                prec = [f["precision"] for f in fl if f["precision"] is not None]
                rec = [f["recall"] for f in fl if f["recall"] is not None]
                tp = sum(f["true_positives"] for f in fl)
                s["filter_precision_mean"] = float(np.mean(prec)) if prec else None
                s["filter_recall_mean"] = float(np.mean(rec)) if rec else None
                s["filter_precision_pooled"] = tp / max(sum(f["flagged"] for f in fl), 1) if any(
                    f["flagged"] for f in fl) else None
                s["filter_recall_pooled"] = tp / max(sum(f["corrupted"] for f in fl), 1) if any(
                    f["corrupted"] for f in fl) else None
                s["flagged_mean"] = float(np.mean([f["flagged"] for f in fl]))
            for f in ("corrupted_weight_share", "scoring_seconds", "selection_seconds", "class_balance"):
                vals = [c[f] for c in cs if f in c]
                if vals and len(vals) == len(cs):
                    s[f + "_mean"], s[f + "_std"] = _mean_std(vals)
            summary[k][m] = s
    many = len({c["target"] for c in cells}) > 1
    paired: dict[str, dict[str, Any]] = {}
    for k in keys:
        paired[k] = {}
        fls = [m for m in methods if m in FILTERLOSS_METHODS and m in summary[k]]
        for m in fls:
            a = _per_unit(cells, k, m, many)
            for ref in ("ce", "cleanlab"):
                b = _per_unit(cells, k, ref, many)
                units = sorted(set(a) & set(b))
                if units:
                    paired[k][f"{m} vs {ref}"] = {"unit": "subject" if many else "seed",
                                                  **paired_comparison([a[u] for u in units], [b[u] for u in units])}
        if fls and "random_forest" in summary[k]:   # the best FilterLoss variant against the classical reference
            best = max(fls, key=lambda m: summary[k][m]["macro_f1_mean"])
            a, b = _per_unit(cells, k, best, many), _per_unit(cells, k, "random_forest", many)
            units = sorted(set(a) & set(b))
            if units:
                paired[k][f"{best} vs random_forest"] = {"unit": "subject" if many else "seed",
                                                         **paired_comparison([a[u] for u in units], [b[u] for u in units])}
        if fls and "oracle" in summary[k]:
            best = max(fls, key=lambda m: summary[k][m]["macro_f1_mean"])
            a, b = _per_unit(cells, k, "oracle", many), _per_unit(cells, k, best, many)
            units = sorted(set(a) & set(b))
            if units:
                paired[k][f"oracle vs {best}"] = {"unit": "subject" if many else "seed",
                                                  **paired_comparison([a[u] for u in units], [b[u] for u in units])}
    return {"summary": summary, "paired": paired}


def _targets(summary: dict, paired: dict, cfg: FilterLossBenchConfig, wall_s: float | None) -> dict[str, Any]:
    """The issue's targets, evaluated on the measured figures (met or not, with the figure)."""
    out: dict[str, Any] = {}
    fl = [m for m in FILTERLOSS_METHODS if m in cfg.methods]
    r10 = "10"
    for noise in ("boundary:0.2", "symmetric:0.3"):
        k = f"{noise} | ratio {r10}"
        s = summary.get(k, {})
        if not s or not fl or not all(m in s for m in ("ce", "cleanlab")):
            continue
        best = max((m for m in fl if m in s), key=lambda m: s[m]["macro_f1_mean"])
        f1 = s[best]["macro_f1_mean"]
        pc = paired[k].get(f"{best} vs ce", {})
        out[f"{noise}: best FilterLoss >= cleanlab + 0.01"] = {
            "met": f1 >= s["cleanlab"]["macro_f1_mean"] + 0.01, "method": best, "filterloss": f1,
            "cleanlab": s["cleanlab"]["macro_f1_mean"]}
        out[f"{noise}: paired 95% interval vs ce above 0"] = {
            "met": pc.get("ci_low") is not None and pc["ci_low"] > 0, "method": best,
            "mean_diff": pc.get("mean_diff"), "ci_low": pc.get("ci_low"), "ci_high": pc.get("ci_high")}
        if "oracle" in s:
            out[f"{noise}: within 0.03 of the oracle"] = {"met": f1 >= s["oracle"]["macro_f1_mean"] - 0.03,
                                                          "method": best, "filterloss": f1,
                                                          "oracle": s["oracle"]["macro_f1_mean"]}
        if noise.startswith("symmetric"):
            pr = s[best]
            p, r = pr.get("filter_precision_pooled"), pr.get("filter_recall_pooled")
            out[f"{noise}: noisy precision >= 0.8 and recall >= 0.7"] = {
                "met": p is not None and r is not None and p >= 0.8 and r >= 0.7, "method": best,
                "precision": p, "recall": r}
    k = f"none | ratio {r10}"
    s = summary.get(k, {})
    if s and "ce" in s and fl:
        best = max((m for m in fl if m in s), key=lambda m: s[m]["macro_f1_mean"])
        out["clean: FilterLoss at most 0.005 below ce"] = {
            "met": s[best]["macro_f1_mean"] >= s["ce"]["macro_f1_mean"] - 0.005, "method": best,
            "filterloss": s[best]["macro_f1_mean"], "ce": s["ce"]["macro_f1_mean"]}
        gains = {m: v["personalization_gain_mean"] for m, v in s.items() if "personalization_gain_mean" in v
                 and m != "none"}
        if gains:
            m = max(gains, key=gains.get)
            out["clean: personalization gain >= +0.10"] = {"met": gains[m] >= 0.10, "method": m, "gain": gains[m],
                                                           "ce_gain": gains.get("ce")}
    full = (len(cfg.subjects) == 10 and len(cfg.seeds) == 3)
    if wall_s is not None:   # a cached-only report measured nothing
        out["wall time"] = {"met": wall_s <= (30 * 60 if full else 3 * 60), "seconds": wall_s,
                            "limit_s": 30 * 60 if full else 3 * 60, "run": "full" if full else "reduced"}
    return out


# --------------------------------------------------------------------------- report

def _f(v: Any, fmt: str = ".3f") -> str:
    return "n/a" if v is None else format(v, fmt)


def _host_line(res: dict[str, Any]) -> str:
    """The sentence on the host while the cells were timed, from the 1-min load averages each cell recorded
    around itself (cells cached by an older version recorded none)."""
    load = recorded_load_text(res.get("cells", []))
    cores = res.get("host", {}).get("cores")
    if load is None:
        return f"on {cores} cores; the host load was not recorded for these cells (cached by an older version)."
    return (f"on {cores} cores, {load} around the cells (above the core count, cells shared a core and their "
            "times are noisy).")


def _markdown(res: dict[str, Any]) -> str:
    cfg = res["config"]
    summ, paired, tg = res["summary"], res["paired"], res["targets"]
    lines = ["# FilterLoss benchmark", ""]
    if cfg["target_data"]:
        lines.append(f"Cross-dataset: pretrained on watch subjects {cfg['source_subjects'] or 'all'}; target "
                     f"{', '.join(cfg['target_data'])}.")
    elif cfg["protocol"] == "calibrate-then-use":
        lines.append(f"Protocol **calibrate-then-use**: watch subjects {cfg['subjects']}, each held out in turn; "
                     f"the first {cfg['calibration_fraction']:g} of each of its recordings (both arm sides) is "
                     f"calibration data, the rest after a gap of {cfg['gap_s'] or cfg['window']['window_s']:g} s is "
                     "test data; label noise on the calibration session only.")
    else:
        lines.append(f"Protocol **new-placement (stress case)**: calibrate on arm side {cfg['train_side']}, test on "
                     "the other side.")
    ft = cfg["finetune"]
    lines += [f"Model `{cfg['model_name']}`; pretrain {cfg['pretrain']['epochs']} epochs; every method fine-tunes "
              f"{ft['epochs']} epochs, batch {ft['batch_size']}, lr {ft['lr']:g}; seeds {cfg['seeds']}; imbalance "
              f"ratios {cfg['ratios']}; {len(res['targets_run'])} target(s). `oracle` drops exactly the corrupted "
              "windows: an upper bound, not a method.", "", "## Macro-F1 (mean ± std over targets x seeds)", ""]
    methods = [m for m in cfg["methods"] if any(m in v for v in summ.values())]
    rows = []
    for k, ms in summ.items():
        if not ms:
            continue
        best = max((m for m in ms if m != "oracle"), key=lambda m: ms[m]["macro_f1_mean"], default=None)
        row = [k, _f(next(iter(ms.values()))["noise_rate_mean"], ".3f")]
        for m in methods:
            if m in ms:
                v = f"{ms[m]['macro_f1_mean']:.3f} ± {ms[m]['macro_f1_std']:.3f}"
                row.append(f"**{v}**" if m == best else v)
            else:
                row.append("")
        rows.append(row)
    lines += [markdown_table(["noise | ratio", "corrupted share"] + methods, rows), ""]
    rows = []
    for k, ps in paired.items():
        for name, p in ps.items():
            ci = "n/a" if p["ci_low"] is None else f"[{p['ci_low']:+.4f}, {p['ci_high']:+.4f}]"
            rows.append([k, name, f"{p['n']} {p['unit']}s", p["wins"], p["losses"], p["ties"],
                         f"{p['mean_diff']:+.4f}", ci])
    if rows:
        lines += ["## Paired comparisons (macro-F1, per subject, mean over seeds)", "",
                  markdown_table(["noise | ratio", "comparison", "pairs", "wins", "losses", "ties", "mean diff",
                                  "95% CI"], rows), ""]
    rows = []
    for k, ms in summ.items():
        for m, s in ms.items():
            if "filter_precision_mean" in s:
                rows.append([k, m, _f(s.get("flagged_mean"), ".1f"), _f(s["filter_precision_pooled"]),
                             _f(s["filter_recall_pooled"]), _f(s["filter_precision_mean"]),
                             _f(s["filter_recall_mean"]), _f(s.get("corrupted_weight_share_mean"))])
    if rows:
        lines += ["## Noisy-window precision / recall against the injected truth", "",
                  "Pooled over all cells (and the mean of the per-cell values; a cell without flagged windows has "
                  "no precision, one without corrupted windows no recall). Weight share: the part of FilterLoss's "
                  "total loss weight on corrupted windows.", "",
                  markdown_table(["noise | ratio", "filter", "flagged / cell", "precision", "recall",
                                  "precision (cell mean)", "recall (cell mean)", "corrupted weight share"], rows), ""]
    rows = []
    for k, ms in summ.items():
        for m, s in ms.items():
            if "personalization_gain_mean" in s and m != "none":
                rows.append([k, m, f"{s['personalization_gain_mean']:+.3f}", f"{s['wall_seconds_mean']:.2f}",
                             _f(s.get("scoring_seconds_mean"), ".2f"), f"{s['train_seconds_mean']:.2f}"])
    if rows:
        lines += ["## Personalization gain and time per cell", "",
                  "Gain: macro-F1 minus no fine-tuning's on the same test windows. Seconds, mean per cell, "
                  + _host_line(res), "",
                  markdown_table(["noise | ratio", "method", "gain", "wall s", "scoring s", "fine-tune s"], rows), ""]
    if tg:
        lines += ["## Targets", ""]
        for name, v in tg.items():
            figs = ", ".join(f"{a} {_f(b, '.4f') if isinstance(b, float) else b}" for a, b in v.items() if a != "met")
            lines.append(f"- {name}: **{'met' if v['met'] else 'NOT met'}** ({figs})")
        lines.append("")
    h = res["host"]
    lines += [f"Wall time of this invocation {res['wall_seconds']:.0f} s (pretraining {res['pretrain_seconds']:.0f} s, "
              f"{res['cells_run']} cells run, {res['cells_cached']} from cache, {res.get('cells_missing', 0)} "
              f"missing); the cells' own fine-tuning wall times sum to {res['cell_seconds_total']:.0f} s; on "
              f"{h['cpu']}, {h.get('threads')} torch threads, device {h['device']}.", "",
              "![macro-F1](macro_f1.png)", "",
              "![filter precision and recall](filter_pr.png)", ""]
    return "\n".join(lines)


def _figures(res: dict[str, Any]) -> dict[str, Any]:
    summ = res["summary"]
    keys = [k for k in summ if summ[k]]
    methods = [m for m in res["config"]["methods"] if any(m in summ[k] for k in keys)]
    fig, ax = new_figure(figsize=(max(7, 0.5 * len(methods) * len(keys)), 4.2))
    width = 0.8 / max(len(methods), 1)
    for i, m in enumerate(methods):
        xs = [j + (i - (len(methods) - 1) / 2) * width for j in range(len(keys))]
        ys = [summ[k][m]["macro_f1_mean"] if m in summ[k] else np.nan for k in keys]
        es = [summ[k][m]["macro_f1_std"] if m in summ[k] else 0 for k in keys]
        ax.bar(xs, ys, width, yerr=es, capsize=2, label=m, hatch="//" if m.startswith("filterloss") else None)
    ax.set_xticks(range(len(keys)), keys, fontsize=7)
    ax.set_ylabel("target macro-F1 (mean ± std)")
    ax.set_ylim(0, 1)
    ax.set_title("Macro-F1 per label noise and method")
    ax.legend(fontsize=7, ncol=min(len(methods), 6), loc="upper center", bbox_to_anchor=(0.5, -0.1))
    figs = {"macro_f1": fig}
    fig, ax = new_figure(figsize=(6, 4.5))
    for k in keys:
        for m, s in summ[k].items():
            p, r = s.get("filter_precision_pooled"), s.get("filter_recall_pooled")
            if p is not None and r is not None:
                ax.scatter([r], [p], marker="o" if m.startswith("filterloss") else "s")
                ax.annotate(f"{m} / {k.split(' |')[0]}", (r, p), fontsize=6)
    ax.set_xlabel("noisy-window recall")
    ax.set_ylabel("noisy-window precision")
    ax.set_xlim(0, 1.05)
    ax.set_ylim(0, 1.05)
    ax.set_title("Filters against the injected truth (pooled)")
    figs["filter_pr"] = fig
    return figs


# --------------------------------------------------------------------------- driver

def run_filterloss_bench(out_dir: str | os.PathLike, config: FilterLossBenchConfig = FilterLossBenchConfig(), *,
                         progress: bool = True, log: Callable[[str], None] = print,
                         threads: int | None = None, cached_only: bool = False) -> dict[str, Any]:
    """Run the benchmark (module docstring) and write its report.

    Parameters
    ----------
    out_dir : path-like
        Output folder; finished pretrainings and cells in it are reused when the config matches.
    config : FilterLossBenchConfig
        Protocol settings.
    progress : bool
        Show a progress bar over the cells.
    threads : int, optional
        ``torch.set_num_threads`` for this run (CPU only); unchanged if None.
    cached_only : bool
        Report from the finished cells in ``out_dir`` only (targets without a cached pretraining are
        skipped, missing cells are left out and counted in ``cells_missing``); trains nothing.

    Returns
    -------
    dict
        The report (also ``filterloss.json``): ``config``, ``cells``, ``summary[noise | ratio][method]``,
        ``paired[noise | ratio][comparison]``, ``targets``, timings and host.
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
    total = n_units * len(config.noises) * len(config.ratios) * len(config.seeds) * len(config.methods)
    # a cell's identity: the config minus the grid axes, and minus the filter settings for methods that
    # never run the filter (so a filter change reruns only the filter-based cells)
    base_fp = {k: v for k, v in cfg_json.items() if k not in ("subjects", "ratios", "seeds", "methods", "noises")}
    # and the method's revision (baselines.METHOD_REVISIONS), so a changed computation does not reuse old cells
    cell_fps = {m: _fingerprint({**(base_fp if _uses_filter(m) else {k: v for k, v in base_fp.items()
                                                                     if k != "filter"}),
                                 **({"method_revision": METHOD_REVISIONS[m]} if m in METHOD_REVISIONS else {})})
                for m in config.methods}
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc="filterloss bench", unit="cell", dynamic_ncols=True)
    cells: list[dict] = []
    n_run = n_cached = 0
    pretrain_s = 0.0
    units_run = []
    skipped = []
    n_missing = 0
    for unit in _units(out, config, progress, log, cached_only=cached_only):
        units_run.append(unit.name)
        pretrain_s += 0.0 if unit.cached else unit.pretrain_seconds
        log(f"[pretrain] {unit.name}: source accuracy {unit.bundle.info['source_accuracy']:.4f} "
            f"({'cached' if unit.cached else f'{unit.pretrain_seconds:.1f} s'}); {len(unit.test)} test windows")
        for noise in config.noises:
            for ratio in config.ratios:
                for seed in config.seeds:
                    nw = None
                    for method in config.methods:
                        safe = noise.replace(":", "").replace("/", "_").replace("+", "_").replace("@", "_")
                        path = out / "cells" / unit.name / f"{safe}_r{_ratio_key(ratio)}_s{seed}_{method}.json"
                        cell = None
                        if path.is_file():
                            try:
                                c = json.loads(path.read_text())
                                cell = c if c.get("fingerprint") == cell_fps[method] else None
                            except (OSError, json.JSONDecodeError):
                                cell = None
                        if cell is not None:
                            n_cached += 1
                        elif method == "none" and tuple(unit.test.class_names) != tuple(unit.bundle.class_names):
                            skipped.append(f"{unit.name}: 'none' needs the source class list")
                        elif cached_only:
                            n_missing += 1
                        else:
                            if nw is None:
                                nw = _calibration(unit, noise, ratio, seed, config)
                            load0 = os.getloadavg()[0]
                            cell = {**_run_cell(unit, nw, noise, ratio, seed, method, config),
                                    "fingerprint": cell_fps[method],
                                    "load_average_1min": [load0, os.getloadavg()[0]]}   # the report's host line
                            write_json_atomic(path, cell)
                            n_run += 1
                        if cell is not None:
                            cells.append(cell)
                        if bar is not None:
                            bar.update(1)
                            bar.set_postfix_str(f"{unit.name} {noise} s={seed} {method}")
        done: dict[str, list[float]] = {}
        for c in cells:
            if c["target"] == unit.name:
                done.setdefault(c["method"], []).append(c["macro_f1"])
        log(f"[cells] {unit.name}: mean macro-F1 over noises " + ", ".join(f"{m} {np.mean(v):.3f}"
                                                                           for m, v in done.items()))
    if bar is not None:
        bar.close()
    stats = _summaries(cells, config)
    wall = time.perf_counter() - t_start
    host = {**host_info(), "threads": torch.get_num_threads(), "device": str(resolve_device(config.device))}
    res: dict[str, Any] = {"config": cfg_json, "protocol": "cross-dataset" if config.target_data else config.protocol,
                           "targets_run": units_run, "cells": cells, **stats,
                           "targets": _targets(stats["summary"], stats["paired"], config,
                                               None if cached_only or n_cached else wall),
                           "cell_seconds_total": float(sum(c["wall_seconds"] for c in cells)),
                           "skipped": sorted(set(skipped)), "cells_run": n_run, "cells_cached": n_cached,
                           "cells_missing": n_missing, "cached_only": cached_only,
                           "pretrain_seconds": pretrain_s, "wall_seconds": wall, "host": host}
    write_report(out, "filterloss", res, _markdown(res), _figures(res))
    log(f"[done] {out / 'filterloss.md'} ({res['wall_seconds']:.1f} s)")
    return res
