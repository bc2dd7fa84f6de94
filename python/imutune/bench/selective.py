"""Benchmark of selective filter fine-tuning under sensor distortions
(``imutune bench selective``, ``benchmarks/selective.py``).

Protocol (embedded watch data, :func:`imutune.data.recordings.load_watch`):

1. Pretrain ``model_name`` on the clean windows of every subject except the
   target users (cached in ``<out>/pretrained``; reused when its config matches).
2. Calibrate-then-use (:func:`imutune.personalize.protocols.calibrate_then_use`):
   each target user's recordings are cut in time; the first
   ``calibration_fraction`` of every recording is the pool of calibration
   (fine-tuning) windows (hop ``window.hop_s``), the rest after a gap of one
   window the test set (non-overlapping windows, hop ``test_hop_s``), so
   calibration and test windows never overlap.
3. For every distortion, severity level and seed, the user's "phone" distorts
   both the fine-tuning and the test windows (:func:`imutune.signal.distortions.distort_windows`;
   same device parameters, independent noise). ``shots`` windows per class are
   drawn from the pool (seeded; the same draw for every distortion).
4. Methods, all trained by :func:`imutune.personalize.selective.finetune_selected` on
   the distorted few-shot windows, ``full`` with the fine-tuning budget
   (``finetune``, :data:`~imutune.train.config.FINETUNE`), every other method
   with the selective budget (``selective_train``,
   :data:`~imutune.train.config.SELECTIVE`: the same epochs at a 10x learning
   rate) and partly selected batch norms with ``bn_statistics`` statistics:
   ``none`` (the pretrained model), ``full`` (all parameters), ``full (selective
   lr)`` (all parameters at the selective budget: the control showing that the
   larger rate does not help full fine-tuning), ``layer`` (last
   residual block + head), ``random 10%`` (random filters, the same number per
   layer as Borda at 10%, + head), ``borda X%`` (paired ranking of the clean and
   distorted versions of the few-shot windows, + head), ``borda-bn 10%``
   (pair-free ranking against the base model's batch-norm statistics: what
   ``imutune personalize`` does without clean data), ``grad 10%`` (per-layer
   top 10% by the squared gradient of the calibration loss, one voter per
   class: :func:`imutune.personalize.selective.gradient_magnitudes`, an imutune
   extension) and the "pay only for what
   is trained" modes of issue 14, all with the deep budget
   (:func:`imutune.personalize.selective.select_filters` ``budget="deep"``: a
   global parameter budget over the deepest blocks, so the frozen prefix is
   long and cached): ``borda-deep 10%`` (paired ranking), ``shift-deep 10%``
   (user-shift ranking: source-user vs target-user activation statistics per
   class, an imutune extension), ``combined-deep 10%`` (Borda count of both) and
   ``random-deep 10%`` (random filters, the same number per layer as
   ``borda-deep``). Every method trains with ``cache_prefix`` and ``rows_only``
   (exact; the selective tests show same weights as without).

Measures, per run (target user x distortion x severity x shots x seed):
accuracy on the distorted test windows after fine-tuning, the accuracy curve
after every ``eval_every`` epochs (for time-to-accuracy; never used to select
a model), fine-tuning time (training time plus ranking time; evaluation
excluded; ``threads`` CPU threads, or CUDA when present; timings on a shared
machine are noisy), time per epoch, analytic backward/forward FLOPs per
training window (:func:`imutune.personalize.selective.backward_flops`),
trainable parameters and patch size (:mod:`imutune.personalize.patch`): fp32
with the shortest row-index encoding, fp32 with plain index lists (version 1)
and fp16 (lossy; its accuracy is measured too).

Aggregates (means over runs):

* ``recovered`` = (acc - acc_none) / (acc_clean - acc_none): the fraction of
  the distortion's accuracy drop won back, ``acc_clean`` being the pretrained
  model on the clean test windows (can exceed 1: fine-tuning also adapts to
  the user);
* ``vs full`` = (acc - acc_none) / (acc_full - acc_none): the fraction of full
  fine-tuning's gain;
* ``time to 90% of full`` = the first evaluated epoch at which the method's
  mean accuracy curve reaches acc_none + 0.9 (acc_full - acc_none), in mean
  seconds (ranking and prefix caching included); ``time_to_90pct_vs_full``
  divides it by full fine-tuning's own time to that level (the issue's
  "<= half its time to that level");
* ``step_flops_vs_full`` = analytic (forward + backward) FLOPs of a training
  step / full fine-tuning's (the cached prefix's forward excluded);
* targets of issue 14 for every 10% method (gain, time, patch fp32 and fp16)
  and paired 95% t-intervals against random filters at the same budget.

Results of each run are stored in ``<out>/runs/`` as they finish; a rerun
with the same config skips finished runs.
"""
from __future__ import annotations

import copy
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
from ..data.recordings import Recording, load_watch
from ..metrics import accuracy
from ..personalize.protocols import calibrate_then_use
from ..personalize.selective import BN_STATISTICS
from ..signal.distortions import (
    BENCH_SEVERITIES,
    DISTORTION_NAMES,
    SEVERITY_UNITS,
    distort_windows,
    make_distortion,
)
from ..signal.windows import WindowConfig, Windows, make_windows
from ..train.bundle import ModelBundle, save_bundle
from ..train.loop import FINETUNE, PRETRAIN, SELECTIVE, TrainConfig, predict_logits
from ..train.pretrain import pretrain
from .report import cached_bundle, cached_json_value, folder_lock
from .report import host_info, markdown_table, new_figure, recorded_load_text, write_report

__all__ = ["SelectiveBenchConfig", "quick_config", "run_selective_bench", "METHODS", "split_halves"]

BENCH_NAME = "bench_selective"


@dataclass(frozen=True)
class SelectiveBenchConfig:
    """Settings of the selective fine-tuning benchmark."""

    model_name: str = "mobilecnn1d"
    target_users: tuple[str, ...] = ("subject09", "subject10")   # held out from pretraining, one model per user
    subjects: tuple[int, ...] | None = None                     # load only these watch subjects (tests)
    distortions: tuple[str, ...] = DISTORTION_NAMES
    levels: tuple[int, ...] = (0, 1, 2)          # indices into imutune.signal.distortions.BENCH_SEVERITIES (mild..severe)
    shots: tuple[int, ...] = (5, 20)             # fine-tuning windows per class
    seeds: tuple[int, ...] = (0, 1)
    fractions: tuple[float, ...] = (0.05, 0.1, 0.25)   # Borda budgets (per-layer fraction of filters)
    random_fraction: float = 0.1                 # budget of the random-filter baseline
    pairfree_fraction: float | None = 0.1        # budget of the pair-free Borda ranking (None: left out)
    deep_fraction: float | None = 0.1            # budget of the deep-budget modes (issue 14; None: left out)
    gradient_fraction: float | None = 0.1        # budget of the per-layer gradient ranking (None: left out)
    deep_pool: float = 3.0                       # candidate pool of the deep budget, x the parameter budget
    source_windows: int = 1024                   # source windows (class-balanced draw) for the user-shift statistics
    calibration_fraction: float = 0.5            # calibrate-then-use: share of each recording for calibration
    cache_prefix: bool = True                    # train from cached activations of the frozen prefix (exact)
    rows_only: bool = True                       # weight gradients of selected rows only (exact)
    window: WindowConfig = WindowConfig()
    test_hop_s: float = 2.0                      # hop of the test windows (non-overlapping by default)
    pretrain: TrainConfig = PRETRAIN
    finetune: TrainConfig = FINETUNE             # budget of "full" (the reference every target is relative to)
    selective_train: TrainConfig = SELECTIVE     # budget of every other method (FINETUNE at a 10x learning rate)
    bn_statistics: str = "frozen"                # partly selected batch norms in the selective methods (finetune_selected)
    full_at_selective_lr: bool = True            # control: full fine-tuning with selective_train's budget too
    eval_every: int = 1                          # epochs between points of the accuracy curves
    threads: int = 1                             # torch CPU threads (timings on a phone-class single core)
    shard: tuple[int, int] = (0, 1)              # (i, n): this process runs runs i, i+n, ... (not in the run id)

    def __post_init__(self) -> None:
        for d in self.distortions:
            V.check_choice("distortion", d, DISTORTION_NAMES)
        for lvl in self.levels:
            if lvl not in (0, 1, 2):
                raise ValueError(f"levels must be in {{0, 1, 2}} (mild, moderate, severe), got {lvl!r}")
        for k in self.shots:
            V.check_int_at_least("shots", k, 1)
        for f in (*self.fractions, self.random_fraction) + ((self.pairfree_fraction,) if self.pairfree_fraction else ()) \
                + ((self.deep_fraction,) if self.deep_fraction else ()) \
                + ((self.gradient_fraction,) if self.gradient_fraction else ()):
            V.check_fraction("fraction", f)
        if not (isinstance(self.deep_pool, (int, float)) and self.deep_pool >= 1):
            raise ValueError(f"deep_pool must be a number >= 1, got {self.deep_pool!r}")
        V.check_int_at_least("source_windows", self.source_windows, 1)
        if not 0 < self.calibration_fraction < 1:
            raise ValueError(f"calibration_fraction must be in (0, 1), got {self.calibration_fraction!r}")
        if not self.target_users or not self.seeds:
            raise ValueError("target_users and seeds must not be empty")
        V.check_int_at_least("eval_every", self.eval_every, 1)
        V.check_choice("bn_statistics", self.bn_statistics, BN_STATISTICS)
        V.check_int_at_least("threads", self.threads, 1)
        if not (isinstance(self.shard, (tuple, list)) and len(self.shard) == 2
                and all(isinstance(v, int) and not isinstance(v, bool) for v in self.shard)
                and self.shard[1] >= 1 and 0 <= self.shard[0] < self.shard[1]):
            raise ValueError(f"shard must be (i, n) with integers 0 <= i < n, got {self.shard!r}")
        V.check_positive("test_hop_s", self.test_hop_s)


def quick_config(**overrides: Any) -> SelectiveBenchConfig:
    """A reduced run (one user, one seed, moderate severity, 5 shots, short training): a few minutes at most."""
    base = SelectiveBenchConfig(target_users=("subject10",), levels=(1,), shots=(5,), seeds=(0,),
                                pretrain=replace(PRETRAIN, epochs=5), finetune=replace(FINETUNE, epochs=15),
                                selective_train=replace(SELECTIVE, epochs=15), eval_every=3)
    return replace(base, **overrides)


def _method_names(cfg: SelectiveBenchConfig) -> list[str]:
    names = ["full"] + ([FULL_AT_SELECTIVE_LR] if cfg.full_at_selective_lr else [])
    names += ["layer", f"random {_pct(cfg.random_fraction)}"]
    names += [f"borda {_pct(f)}" for f in cfg.fractions]
    if cfg.pairfree_fraction:
        names.append(f"borda-bn {_pct(cfg.pairfree_fraction)}")
    if cfg.gradient_fraction:
        names.append(f"grad {_pct(cfg.gradient_fraction)}")
    if cfg.deep_fraction:
        names += [f"{k}-deep {_pct(cfg.deep_fraction)}" for k in DEEP_KINDS]
    return names


DEEP_KINDS = ("borda", "random", "shift", "combined")
FULL_AT_SELECTIVE_LR = "full (selective lr)"
METHODS = ("none", "full", FULL_AT_SELECTIVE_LR, "layer", "random 10%", "borda 5%", "borda 10%", "borda 25%", "borda-bn 10%",
           "grad 10%",
           "borda-deep 10%", "random-deep 10%", "shift-deep 10%", "combined-deep 10%")


def _pct(f: float) -> str:
    return f"{100 * f:g}%"


def split_halves(recordings: Sequence[Recording]) -> tuple[list[Recording], list[Recording]]:
    """Cut every recording at its midpoint: (first halves, second halves)."""
    first, second = [], []
    for r in recordings:
        h = r.n_samples // 2
        for part, sl, tag in ((first, slice(0, h), "a"), (second, slice(h, None), "b")):
            part.append(Recording(r.values[sl], r.labels[sl], r.sample_rate_hz, r.channels, r.class_names, r.user,
                                  f"{r.name}_{tag}", dict(r.meta)))
    return first, second


def _fingerprint(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _sample_shots(y: np.ndarray, k: int, num_classes: int, rng: np.random.Generator) -> np.ndarray:
    idx = []
    for c in range(num_classes):
        pool = np.flatnonzero(y == c)
        if pool.size:
            idx.append(rng.choice(pool, size=min(k, pool.size), replace=False))
    return np.sort(np.concatenate(idx))


def _pretrained(out: Path, cfg: SelectiveBenchConfig, source: Windows, log) -> ModelBundle:
    fp = _fingerprint({"model": cfg.model_name, "targets": cfg.target_users, "subjects": cfg.subjects,
                       "window": asdict(cfg.window), "train": asdict(cfg.pretrain)})
    folder = out / "pretrained"
    with folder_lock(out / ".pretrained.lock"):   # shards started together: one pretrains, the others reuse
        b = cached_bundle(folder, fp)
        if b is not None:
            log(f"[pretrain] reusing {folder}")
            return b
        t = time.perf_counter()
        b = pretrain(source, model_name=cfg.model_name, window=cfg.window, train_config=cfg.pretrain,
                     checkpoint_path=out / "checkpoints" / "pretrain.ckpt", progress=False)
        b = replace(b, info={**b.info, "bench_fingerprint": fp})
        save_bundle(b, folder)
    log(f"[pretrain] {cfg.model_name} on {len(source)} source windows: source accuracy "
        f"{b.info.get('source_accuracy', float('nan')):.4f} ({time.perf_counter() - t:.1f} s)")
    return b


def _random_like(sel, seed: int):
    """Random filters with the same number per layer as ``sel`` (same layers, same head)."""
    from ..personalize.selective import Selection

    rng = np.random.default_rng(seed)
    out = {}
    for k, m in sel.filters.items():
        r = np.zeros(m.shape[0], bool)
        r[rng.choice(m.shape[0], size=int(m.sum()), replace=False)] = True
        out[k] = r
    return Selection(out, sel.modules)


def _classical_reference(runs: list[dict], keys: list, paths: list[Path], data: dict, cfg: SelectiveBenchConfig,
                         run_fp: str) -> dict[str, Any]:
    """The RandomForest reference of every run (cached as ``reference/<run>.json`` beside ``runs/``), its mean
    accuracy overall and by shots, and full fine-tuning minus it, paired over the runs."""
    acc = []
    for (d, lvl, k, ui, u, s), path in zip(keys, paths):
        acc.append(cached_json_value(
            path.parent.parent / "reference" / path.name, run_fp, "random_forest_accuracy",
            lambda: _reference_accuracy(*data[u], cfg=cfg, distortion=d, level=lvl, shots=k, seed=s, user_index=ui)))
    full = [r["methods"]["full"]["accuracy"] for r in runs]
    by_shots = {}
    for k in cfg.shots:
        i = [j for j, key in enumerate(keys) if key[2] == k]
        by_shots[str(k)] = {"random_forest": float(np.mean([acc[j] for j in i])),
                            "full": float(np.mean([full[j] for j in i]))}
    diff = np.asarray(full) - np.asarray(acc)
    return {"method": "random_forest (13 statistics per channel, fitted on each run's distorted calibration windows)",
            "random_forest_accuracy_mean": float(np.mean(acc)), "full_accuracy_mean": float(np.mean(full)),
            "full_minus_random_forest_mean": float(diff.mean()), "full_ahead_runs": int((diff > 0).sum()),
            "n": len(acc), "by_shots": by_shots}


def _run_windows(pool: Windows, test: Windows, *, cfg: SelectiveBenchConfig, distortion: str, level: int, shots: int,
                 seed: int, user_index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One run's windows in physical units: clean and distorted calibration windows (k, C, T) with their labels
    (k,), and the distorted test windows (N, C, T); seeded by the run, so every method sees the same."""
    severity = BENCH_SEVERITIES[distortion][level]
    dist = make_distortion(distortion, severity)
    dev_seed = int(_fingerprint([distortion, level, seed, user_index]), 16) % (2 ** 31)
    kw = dict(channels=pool.channels, sample_rate_hz=cfg.window.sample_rate_hz, seed=dev_seed)
    x_test = distort_windows(test.x, dist, noise_seed=dev_seed + 1, **kw)
    rng = np.random.default_rng([seed, shots, user_index])
    idx = _sample_shots(pool.y, shots, pool.num_classes, rng)
    x_clean = pool.x[idx]
    x_dist = distort_windows(x_clean, dist, noise_seed=dev_seed + 2, **kw)
    return x_clean, x_dist, pool.y[idx], x_test


def _reference_accuracy(pool: Windows, test: Windows, *, cfg: SelectiveBenchConfig, distortion: str, level: int,
                        shots: int, seed: int, user_index: int) -> float:
    """Test accuracy of the classical reference (RandomForest on 13 statistics per channel) fitted on the run's
    distorted calibration windows: the same windows and labels every fine-tuning method gets."""
    from ..personalize.reference import reference_score

    _xc, x_dist, y, x_test = _run_windows(pool, test, cfg=cfg, distortion=distortion, level=level, shots=shots,
                                          seed=seed, user_index=user_index)
    cal = Windows(x_dist, y, np.zeros(len(y), np.int64), np.array(["user"] * len(y)), pool.class_names, pool.channels)
    te = Windows(x_test, test.y, np.zeros(len(test.y), np.int64), np.array(["user"] * len(test.y)), test.class_names,
                 test.channels)
    return float(reference_score(cal, te, seed=seed)["accuracy"])


def _run_one(base: ModelBundle, pool: Windows, test: Windows, *, cfg: SelectiveBenchConfig, distortion: str,
             level: int, shots: int, seed: int, user_index: int, source_stats: dict | None = None) -> dict[str, Any]:
    from ..personalize.patch import apply_patch, make_patch, model_bytes, patch_bytes
    from ..personalize.selective import (
        backward_flops,
        finetune_selected,
        full_selection,
        last_block_selection,
        random_selection,
        rank_filters,
        select_filters,
    )

    x_clean, x_dist, y, x_test = _run_windows(pool, test, cfg=cfg, distortion=distortion, level=level, shots=shots,
                                              seed=seed, user_index=user_index)
    norm = base.normalizer
    xte = norm(x_test)
    xc, xd = norm(x_clean), norm(x_dist)
    model0 = base.model.cpu().eval()
    full_size = model_bytes(model0)
    dev = cfg.finetune.device

    def acc_of(m) -> float:
        return accuracy(test.y, predict_logits(m, xte, device=dev).argmax(1))

    acc_none = acc_of(model0)
    ft = replace(cfg.finetune, seed=seed)
    fts = replace(cfg.selective_train, seed=seed)
    plans: list[tuple[str, Callable[[], Any]]] = [
        ("full", lambda: full_selection(model0)),
        *([(FULL_AT_SELECTIVE_LR, lambda: full_selection(model0))] if cfg.full_at_selective_lr else []),
        ("layer", lambda: last_block_selection(model0)),
        (f"random {_pct(cfg.random_fraction)}", lambda: random_selection(model0, cfg.random_fraction, seed=seed))]
    cache: dict[str, Any] = {}
    rank_s: dict[str, float] = {}

    def scores_of(kind: str):
        """Scores of one ranking, computed once per run; its time is charged to every method using it."""
        if kind not in cache:
            if kind == "combined":
                scores_of("paired"), scores_of("shift")     # their own times are charged separately
            t = time.perf_counter()
            if kind == "paired":
                cache[kind] = rank_filters(model0, xd, xc, device=dev)
            elif kind == "batchnorm":
                cache[kind] = rank_filters(model0, xd, device=dev)
            elif kind == "shift":
                cache[kind] = rank_filters(model0, xd, ranking="user_shift", y=y, source=source_stats, device=dev)
            elif kind == "gradient":
                cache[kind] = rank_filters(model0, xd, ranking="gradient", y=y, device=dev)
            else:   # combined: the Borda count of the two rankings above (re-using their distances' scores)
                from ..personalize.selective import borda_count

                a, b = scores_of("paired"), scores_of("shift")
                cache[kind] = {k: borda_count(np.stack([a[k], b[k]])) / (2 * max(len(a[k]) - 1, 1)) for k in a}
            rank_s[kind] = time.perf_counter() - t
        return cache[kind]

    def rank_time(kind: str) -> float:
        return rank_s.get("paired", 0.0) + rank_s.get("shift", 0.0) + rank_s["combined"] if kind == "combined" \
            else rank_s.get(kind, 0.0)

    for f in cfg.fractions:
        plans.append((f"borda {_pct(f)}", lambda f=f: select_filters(scores_of("paired"), f)))
    if cfg.pairfree_fraction:
        plans.append((f"borda-bn {_pct(cfg.pairfree_fraction)}",
                      lambda: select_filters(scores_of("batchnorm"), cfg.pairfree_fraction)))
    if cfg.gradient_fraction:
        plans.append((f"grad {_pct(cfg.gradient_fraction)}",
                      lambda: select_filters(scores_of("gradient"), cfg.gradient_fraction)))
    deep_sel: dict[str, Any] = {}
    if cfg.deep_fraction:
        def deep(kind: str):
            if kind == "random":
                if "borda" not in deep_sel:
                    deep_sel["borda"] = deep("borda")
                return _random_like(deep_sel["borda"], seed)
            sc = scores_of({"borda": "paired", "shift": "shift", "combined": "combined"}[kind])
            deep_sel[kind] = select_filters(sc, cfg.deep_fraction, budget="deep", model=model0,
                                            deep_pool=cfg.deep_pool)
            return deep_sel[kind]
        for kind in DEEP_KINDS:
            plans.append((f"{kind}-deep {_pct(cfg.deep_fraction)}", lambda kind=kind: deep(kind)))
    results: dict[str, Any] = {}
    every = cfg.eval_every
    rot = int(_fingerprint([distortion, level, shots, seed, user_index]), 16) % len(plans)
    plans = plans[rot:] + plans[:rot]      # rotate the order so no method always runs first (timing fairness)
    for name, make_sel in plans:
        sel = make_sel()
        model = copy.deepcopy(model0)
        tc = ft if name == "full" else fts
        ev_epochs = set(range(0, tc.epochs + 1, every)) | {tc.epochs}
        counter = {"epoch": 0}

        def eval_fn(m, counter=counter, ev_epochs=ev_epochs):
            e = counter["epoch"]
            counter["epoch"] += 1
            return acc_of(m) if e in ev_epochs else float("nan")
        r = finetune_selected(model, xd, y, sel, config=tc, eval_fn=eval_fn, cache_prefix=cfg.cache_prefix,
                              rows_only=cfg.rows_only, bn_statistics=cfg.bn_statistics)
        curve = [c for c in r["curve"] if not np.isnan(c[2])]
        kind = ("batchnorm" if name.startswith("borda-bn") else "gradient" if name.startswith("grad ")
                else "shift" if name.startswith("shift")
                else "combined" if name.startswith("combined") else "paired"
                if name.startswith(("borda", "random-deep")) else "")
        rs = rank_time(kind) if kind else 0.0
        p32 = make_patch(model0, model)
        p16 = make_patch(model0, model, dtype="float16")
        fl = backward_flops(model0, sel, tuple(xd.shape[1:]), rows_only=cfg.rows_only, cache_prefix=cfg.cache_prefix)
        results[name] = {"accuracy": curve[-1][2], "train_seconds": r["seconds"], "rank_seconds": rs,
                         "seconds": r["seconds"] + rs, "seconds_per_epoch": r["seconds"] / max(r["epochs_run"], 1),
                         "cache_seconds": r["cache_seconds"], "cached_units": r["cached_units"],
                         "trainable_parameters": r["trainable_parameters"],
                         "selected_filters": sel.n_selected(), "patch_bytes": len(patch_bytes(p32)),
                         "patch_bytes_list": len(patch_bytes(make_patch(model0, model, row_format="list"))),
                         "patch_bytes_fp16": len(patch_bytes(p16)), "accuracy_fp16": acc_of(apply_patch(model0, p16)),
                         "backward_flops": fl["backward"], "forward_flops": fl["forward"],
                         "full_backward_flops": fl["full_backward"], "full_forward_flops": fl["full_forward"],
                         "frozen_drift": r["frozen_drift"], "curve": curve}
    results = {name: results[name] for name in sorted(results, key=_method_names(cfg).index)}
    return {"distortion": distortion, "level": level, "severity": BENCH_SEVERITIES[distortion][level], "shots": shots,
            "seed": seed, "user": test.users[0] if len(test) else "", "n_train": int(len(y)), "n_test": int(len(test)),
            "acc_none": acc_none, "model_bytes": full_size, "methods": results,
            "total_parameters": int(sum(p.numel() for p in model0.parameters()))}


def run_selective_bench(out_dir: str | os.PathLike, config: SelectiveBenchConfig = SelectiveBenchConfig(), *,
                        log=print) -> dict[str, Any]:
    """Run (or resume) the benchmark; write ``bench_selective.json``, ``bench_selective.md`` and
    ``selective_recovery.png``, ``selective_curves.png``, ``selective_severity.png`` into ``out_dir``.

    Returns
    -------
    dict
        The report (also the JSON file): ``summary`` per method, ``targets``
        (each target of the issue: measured value, threshold, met), per-run
        results under ``runs``, ``config``, ``host``. With ``config.shard``
        (i, n), n > 1, this process runs only runs i, i + n, ...; while other
        shards' runs are missing it writes no report and returns
        ``{"n_runs", "n_expected", "complete": False}``.
    """
    import torch

    cfg = config
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "bench_selective_config.json", asdict(cfg))
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    t_start = time.perf_counter()
    try:
        recs = load_watch(subjects=cfg.subjects)
        users = sorted({r.user for r in recs})
        missing = [u for u in cfg.target_users if u not in users]
        if missing:
            raise ValueError(f"target users {missing} not in the data; users are {users}")
        source = make_windows([r for r in recs if r.user not in cfg.target_users], cfg.window)
        base = _pretrained(out, cfg, source, log)
        test_window = replace(cfg.window, hop_s=cfg.test_hop_s)
        data = {}
        for u in cfg.target_users:
            cal, tst = calibrate_then_use([r for r in recs if r.user == u], window_s=cfg.window.window_s,
                                          calibration_fraction=cfg.calibration_fraction)
            data[u] = (make_windows(cal, cfg.window), make_windows(tst, test_window))
        source_stats = None
        if cfg.deep_fraction:
            from ..personalize.selective import activation_statistics

            t = time.perf_counter()
            rng = np.random.default_rng(0)
            per = max(1, cfg.source_windows // max(source.num_classes, 1))
            sidx = _sample_shots(source.y, per, source.num_classes, rng)
            source_stats = activation_statistics(base.model, base.normalizer(source.x[sidx]), source.y[sidx],
                                                 device=cfg.finetune.device)
            log(f"[source statistics] {len(sidx)} source windows, {time.perf_counter() - t:.1f} s "
                "(once per base model; not charged to the runs)")
        acc_clean = {u: accuracy(te.y, predict_logits(base.model, base.normalizer(te.x), device=cfg.finetune.device)
                                 .argmax(1)) for u, (_, te) in data.items()}
        run_fp = _fingerprint({k: v for k, v in asdict(cfg).items() if k not in ("threads", "shard")})
        runs_dir = out / "runs"
        keys = [(d, lvl, k, ui, u, s) for d in cfg.distortions for lvl in cfg.levels for k in cfg.shots
                for ui, u in enumerate(cfg.target_users) for s in cfg.seeds]
        paths = [runs_dir / f"{d}_L{lvl}_k{k}_{u}_s{s}.json" for d, lvl, k, _ui, u, s in keys]

        def finished(i: int) -> dict | None:
            """Run ``i`` from its file when it holds this config's result (resume, other shards)."""
            try:
                prev = json.loads(paths[i].read_text())
            except (OSError, json.JSONDecodeError):
                return None
            return prev if prev.get("fingerprint") == run_fp else None

        got: dict[int, dict] = {}
        for i, (d, lvl, k, ui, u, s) in enumerate(keys):
            prev = finished(i)
            if prev is not None:
                got[i] = prev
                continue
            if i % cfg.shard[1] != cfg.shard[0]:
                continue                                   # another shard's run
            t, load0 = time.perf_counter(), os.getloadavg()[0]
            pool, test = data[u]
            res = _run_one(base, pool, test, cfg=cfg, distortion=d, level=lvl, shots=k, seed=s, user_index=ui,
                           source_stats=source_stats)
            res.update(acc_clean=acc_clean[u], fingerprint=run_fp, wall_seconds=time.perf_counter() - t,
                       load_average_1min=[load0, os.getloadavg()[0]])   # around the run: the report's host line
            write_json_atomic(paths[i], res)
            got[i] = res
            m = res["methods"]
            log(f"[{i + 1}/{len(keys)}] {d} {BENCH_SEVERITIES[d][lvl]:g} ({SEVERITY_UNITS[d]}), {k} shots, {u}, "
                f"seed {s}: clean {acc_clean[u]:.3f} none {res['acc_none']:.3f} full {m['full']['accuracy']:.3f} "
                + " ".join(f"{n} {v['accuracy']:.3f}" for n, v in m.items() if n != "full")
                + f" ({res['wall_seconds']:.1f} s)")
        for i in range(len(keys)):                         # other shards' runs that finished after they were passed
            if i not in got and (prev := finished(i)) is not None:
                got[i] = prev
        runs = [got[i] for i in sorted(got)]
        if len(runs) < len(keys):                          # sharded: the last shard to finish reports
            log(f"[shard {cfg.shard[0]}/{cfg.shard[1]}] done; {len(runs)} of {len(keys)} runs present, the report "
                "is written when all are (rerun any shard, or the whole benchmark, to write it)")
            return {"n_runs": len(runs), "n_expected": len(keys), "complete": False}
        report = _summarize(runs, cfg, base)
        report["classical_reference"] = _classical_reference(runs, keys, paths, data, cfg, run_fp)
        report["wall_seconds"] = time.perf_counter() - t_start
        report["host"] = host_info()
        report["config"] = asdict(cfg)
        report["runs"] = runs
        md = _markdown(report, cfg)
        write_report(out, BENCH_NAME, report, md, _figures(report, runs, cfg))
        log(f"[done] {out / (BENCH_NAME + '.md')} ({report['wall_seconds']:.1f} s)")
        return report
    finally:
        torch.set_num_threads(threads)


# --------------------------------------------------------------------------- aggregation

def _mean(v) -> float:
    v = [x for x in v if x is not None]
    return float(np.mean(v)) if v else float("nan")


def _agg(runs: list[dict], methods: list[str]) -> dict[str, dict[str, float]]:
    """Mean accuracy per method (plus 'none' and 'clean') over ``runs``."""
    out = {"clean": _mean(r["acc_clean"] for r in runs), "none": _mean(r["acc_none"] for r in runs)}
    for m in methods:
        out[m] = _mean(r["methods"][m]["accuracy"] for r in runs)
    return out


def _ratio(num: float, den: float) -> float | None:
    return float(num / den) if abs(den) > 1e-12 else None


def _time_to(runs: list[dict], method: str, threshold: float) -> float | None:
    """Mean seconds at the first evaluated epoch where the mean curve of ``method`` reaches ``threshold``."""
    curves = [r["methods"][method]["curve"] for r in runs]
    n = min(len(c) for c in curves)
    acc = np.mean([[p[2] for p in c[:n]] for c in curves], axis=0)
    secs = np.mean([[p[1] for p in c[:n]] for c in curves], axis=0)
    rank = _mean(r["methods"][method]["rank_seconds"] for r in runs)
    hit = np.flatnonzero(acc >= threshold - 1e-12)
    return float(secs[hit[0]] + rank) if hit.size else None


def _paired(runs: list[dict], a: str, b: str) -> dict[str, Any] | None:
    """Paired accuracy difference a - b over runs: mean, SE, 95% t interval, wins/ties/losses."""
    from scipy.stats import t as student_t

    if not runs or a not in runs[0]["methods"] or b not in runs[0]["methods"]:
        return None
    diff = np.array([r["methods"][a]["accuracy"] - r["methods"][b]["accuracy"] for r in runs])
    se = float(diff.std(ddof=1) / np.sqrt(len(diff))) if len(diff) > 1 else None
    half = float(student_t.ppf(0.975, len(diff) - 1) * se) if se is not None else None
    return {"a": a, "b": b, "mean_diff": float(diff.mean()), "se": se,
            "ci95": None if half is None else [float(diff.mean() - half), float(diff.mean() + half)],
            "wins": int((diff > 0).sum()), "ties": int((diff == 0).sum()), "losses": int((diff < 0).sum()),
            "n": int(len(diff))}


def _summarize(runs: list[dict], cfg: SelectiveBenchConfig, base: ModelBundle) -> dict[str, Any]:
    methods = _method_names(cfg)
    acc = _agg(runs, methods)
    drop = acc["clean"] - acc["none"]
    gain_full = acc["full"] - acc["none"]
    thr = acc["none"] + 0.9 * gain_full
    t_full = _mean(r["methods"]["full"]["seconds"] for r in runs)
    model_size = runs[0]["model_bytes"]
    summary: dict[str, dict[str, Any]] = {"none": {"accuracy": acc["none"], "recovered": 0.0, "vs_full": 0.0,
                                                   "trainable_parameters": 0, "seconds": 0.0, "patch_bytes": 0}}
    t90_full = _time_to(runs, "full", thr)
    for m in methods:
        rs = [r["methods"][m] for r in runs]
        t90 = _time_to(runs, m, thr)
        g = lambda key, rs=rs: _mean(x.get(key) for x in rs)        # noqa: E731
        summary[m] = {"accuracy": acc[m], "recovered": _ratio(acc[m] - acc["none"], drop),
                      "vs_full": _ratio(acc[m] - acc["none"], gain_full),
                      "trainable_parameters": int(round(g("trainable_parameters"))),
                      "seconds": g("seconds"), "rank_seconds": g("rank_seconds"),
                      "seconds_per_epoch": g("seconds_per_epoch"), "cached_units": g("cached_units"),
                      "time_vs_full": _ratio(g("seconds"), t_full),
                      "seconds_to_90pct_of_full": t90,
                      "time_to_90pct_vs_full": None if t90 is None or not t90_full else t90 / t90_full,
                      "backward_flops": g("backward_flops"), "forward_flops": g("forward_flops"),
                      "backward_flops_vs_full": _ratio(g("backward_flops"), g("full_backward_flops")),
                      "step_flops_vs_full": _ratio(g("backward_flops") + g("forward_flops"),
                                                   g("full_backward_flops") + g("full_forward_flops")),
                      "patch_bytes": int(round(g("patch_bytes"))), "patch_fraction": g("patch_bytes") / model_size,
                      "patch_bytes_list": int(round(g("patch_bytes_list"))),
                      "patch_bytes_fp16": int(round(g("patch_bytes_fp16"))),
                      "patch_fraction_fp16": g("patch_bytes_fp16") / model_size,
                      "accuracy_fp16": g("accuracy_fp16"),
                      "frozen_drift": int(sum(x["frozen_drift"] for x in rs))}
    by_cell: dict[str, dict] = {}
    for d in cfg.distortions:
        for lvl in cfg.levels:
            rr = [r for r in runs if r["distortion"] == d and r["level"] == lvl]
            if rr:
                by_cell[f"{d}|{lvl}"] = {"distortion": d, "level": lvl, "severity": BENCH_SEVERITIES[d][lvl],
                                         **_agg(rr, methods)}
    by_dist = {d: _agg([r for r in runs if r["distortion"] == d], methods) for d in cfg.distortions}
    by_shots = {}
    for k in cfg.shots:
        rr = [r for r in runs if r["shots"] == k]
        a = _agg(rr, methods)
        g = a["full"] - a["none"]
        by_shots[str(k)] = {"accuracy": a, "vs_full": {m: _ratio(a[m] - a["none"], g) for m in methods}}
    # paired comparisons with random filters at the same budget
    rf = _pct(cfg.random_fraction)
    comps = {f"borda {rf} vs random {rf}": _paired(runs, f"borda {rf}", f"random {rf}")}
    if cfg.gradient_fraction:
        gf = _pct(cfg.gradient_fraction)
        comps[f"grad {gf} vs random {rf}"] = _paired(runs, f"grad {gf}", f"random {rf}")
    if cfg.deep_fraction:
        df = _pct(cfg.deep_fraction)
        for kind in ("borda", "shift", "combined"):
            comps[f"{kind}-deep {df} vs random-deep {df}"] = _paired(runs, f"{kind}-deep {df}", f"random-deep {df}")
    comps = {k: v for k, v in comps.items() if v is not None}
    targets: dict[str, dict[str, Any]] = {}
    tenpct = [m for m in methods if m.endswith(" 10%") and not m.startswith("random")]
    for m in tenpct:
        v = summary[m]
        targets[f"{m}: vs_full >= 0.9"] = {"value": v["vs_full"], "threshold": 0.9,
                                           "met": v["vs_full"] is not None and v["vs_full"] >= 0.9}
        targets[f"{m}: time to 90% of full <= 0.5 x full's"] = {
            "value": v["time_to_90pct_vs_full"], "threshold": 0.5,
            "met": v["time_to_90pct_vs_full"] is not None and v["time_to_90pct_vs_full"] <= 0.5}
        targets[f"{m}: patch <= 10% of model (fp32)"] = {"value": v["patch_fraction"], "threshold": 0.1,
                                                        "met": v["patch_fraction"] <= 0.1}
        targets[f"{m}: patch <= 10% of model (fp16)"] = {"value": v["patch_fraction_fp16"], "threshold": 0.1,
                                                        "met": v["patch_fraction_fp16"] <= 0.1}
    for k, c in comps.items():
        targets[f"{k}: paired 95% interval above 0"] = {"value": c["ci95"][0] if c["ci95"] else None,
                                                       "threshold": 0.0, "met": bool(c["ci95"] and c["ci95"][0] > 0)}
    return {"benchmark": "selective filter fine-tuning under sensor distortions",
            "protocol": f"calibrate-then-use (calibration_fraction {cfg.calibration_fraction}, gap one window)",
            "dataset": "seglearn watch (10 subjects x 2 arm sides x 7 exercises, 6 ch @ 50 Hz)",
            "model_name": cfg.model_name, "model_bytes": model_size,
            "total_parameters": runs[0]["total_parameters"], "source_accuracy": base.info.get("source_accuracy"),
            "n_runs": len(runs), "accuracy": acc, "threshold_90pct_of_full": thr, "full_seconds": t_full,
            "full_seconds_to_90pct": t90_full, "summary": summary, "by_distortion": by_dist, "by_cell": by_cell,
            "by_shots": by_shots, "borda_vs_random": comps.get(f"borda {rf} vs random {rf}"), "comparisons": comps,
            "targets": targets}


def _f(v, fmt: str = ".3f") -> str:
    return "n/a" if v is None or (isinstance(v, float) and np.isnan(v)) else format(v, fmt)


def _host_line(rep: dict) -> str:
    """The report's sentence on the host while the runs were timed, from the 1-min load averages each run
    recorded before and after itself (runs cached by an older version recorded none)."""
    load = recorded_load_text(rep.get("runs", []))
    if load is None:
        return "Host load was not recorded for these runs (cached by an older version), so their times may be noisy."
    return (f"Host while timing: {load} around the runs on {rep.get('host', {}).get('cores')} cores (above the "
            "core count, runs shared a core and their times are noisy).")


def _markdown(rep: dict, cfg: SelectiveBenchConfig) -> str:
    methods = _method_names(cfg)
    s = rep["summary"]
    lines = [f"# Selective filter fine-tuning under sensor distortions ({rep['model_name']})", "",
             f"Dataset: {rep['dataset']}. Target users {', '.join(cfg.target_users)} (held out from pretraining); "
             f"distortions {', '.join(cfg.distortions)} at severity levels {list(cfg.levels)}; "
             f"{' and '.join(map(str, cfg.shots))} windows per class; seeds {list(cfg.seeds)}; "
             f"{rep['n_runs']} runs; protocol {rep['protocol']}. Fine-tuning: {cfg.finetune.epochs} epochs, batch {cfg.finetune.batch_size}, "
             f"lr {cfg.finetune.lr:g} (full); {cfg.selective_train.epochs} epochs, batch {cfg.selective_train.batch_size}, "
             f"lr {cfg.selective_train.lr:g} (every other method, and {FULL_AT_SELECTIVE_LR!r}), partly selected batch "
             f"norms with {cfg.bn_statistics} statistics; {cfg.threads} CPU thread(s) on {rep['host']['cpu']}"
             f"{' (CUDA)' if rep['host'].get('cuda') else ''}.", "",
             f"Mean accuracy on the distorted test windows: clean (no distortion, no fine-tuning) "
             f"{rep['accuracy']['clean']:.4f}, distorted without fine-tuning {rep['accuracy']['none']:.4f}. "
             f"Model: {rep['total_parameters']} parameters, {rep['model_bytes'] / 1024:.1f} KiB.", ""]
    header = ["method", "trainable params", "accuracy", "recovered (of drop)", "vs full", "fine-tune s",
              "s / epoch", "s to 90% of full", "vs full's", "bwd MFLOP / window", "step FLOPs vs full",
              "cached units", "patch KiB (fp32)", "patch KiB (v1 lists)", "patch KiB (fp16)", "patch % (fp32)",
              "patch % (fp16)", "acc fp16 patch"]
    rows = [["none", 0, _f(s["none"]["accuracy"], ".4f"), "0", "0", "0", "-", "-", "-", "0", "0", "-", "0", "0", "0",
             "0", "0", "-"]]
    for m in methods:
        v = s[m]
        rows.append([m, v["trainable_parameters"], _f(v["accuracy"], ".4f"), _f(v["recovered"]), _f(v["vs_full"]),
                     _f(v["seconds"], ".2f"), _f(v["seconds_per_epoch"], ".3f"),
                     "not reached" if v["seconds_to_90pct_of_full"] is None else _f(v["seconds_to_90pct_of_full"], ".2f"),
                     _f(v["time_to_90pct_vs_full"], ".2f"), _f(v["backward_flops"] / 1e6, ".2f"),
                     _f(v["step_flops_vs_full"], ".2f"), _f(v["cached_units"], ".1f"),
                     _f(v["patch_bytes"] / 1024, ".1f"), _f(v["patch_bytes_list"] / 1024, ".1f"),
                     _f(v["patch_bytes_fp16"] / 1024, ".1f"), _f(100 * v["patch_fraction"], ".1f"),
                     _f(100 * v["patch_fraction_fp16"], ".1f"), _f(v["accuracy_fp16"], ".4f")])
    lines += [markdown_table(header, rows), ""]
    lines += ["recovered = (acc - acc_none) / (acc_clean - acc_none); vs full = (acc - acc_none) / (acc_full - "
              "acc_none); fine-tune s = training (cached prefix included) + ranking time (evaluation excluded); "
              "s / epoch = training time / epochs; s to 90% of full = mean "
              "time at which the method's mean accuracy curve first reaches acc_none + 0.9 (acc_full - acc_none), "
              f"curves sampled every {cfg.eval_every} epochs; vs full's = that time / full fine-tuning's own time "
              "to the same level; bwd MFLOP / window = analytic backward FLOPs per training window and step "
              "(convs + head); step FLOPs vs full = (forward + backward) / full fine-tuning's, the cached prefix's "
              "forward excluded; patch v1 lists = the same patch with plain index lists (the old format); fp16 "
              "patches are lossy (their accuracy in the last column). " + _host_line(rep), ""]
    if rep["targets"]:
        lines += ["## Targets", "", markdown_table(["target", "measured", "threshold", "met"], [
            [k, _f(v["value"], ".4f"), v["threshold"], "yes" if v["met"] else "no"] for k, v in rep["targets"].items()]), ""]
    if rep.get("comparisons"):
        lines += ["## Paired comparisons with random filters at the same budget", "",
                  markdown_table(["comparison", "mean acc diff", "SE", "95% interval", "wins / ties / losses", "runs"], [
                      [k, f"{c['mean_diff']:+.4f}", _f(c["se"], ".4f"),
                       "n/a" if not c["ci95"] else f"[{c['ci95'][0]:+.4f}, {c['ci95'][1]:+.4f}]",
                       f"{c['wins']} / {c['ties']} / {c['losses']}", c["n"]] for k, c in rep["comparisons"].items()]), ""]
    cols = ["clean", "none"] + methods
    lines += ["## Accuracy per distortion and severity", "",
              markdown_table(["distortion", "severity"] + cols, [
                  [c["distortion"], f"{c['severity']:g} {SEVERITY_UNITS[c['distortion']]}"] + [_f(c[k]) for k in cols]
                  for c in rep["by_cell"].values()]), ""]
    lines += ["## Fraction of full fine-tuning's gain by shots", "",
              markdown_table(["shots per class", "acc none", "acc full"] + methods[1:], [
                  [k, _f(v["accuracy"]["none"]), _f(v["accuracy"]["full"])] + [_f(v["vs_full"][m]) for m in methods[1:]]
                  for k, v in rep["by_shots"].items()]), ""]
    ref = rep.get("classical_reference")
    if ref:
        lines += ["## Classical reference", "",
                  f"A {ref['method']}: mean accuracy {ref['random_forest_accuracy_mean']:.3f}; full fine-tuning "
                  f"{ref['full_accuracy_mean']:.3f}, ahead by {ref['full_minus_random_forest_mean']:+.3f} on average "
                  f"and in {ref['full_ahead_runs']} of {ref['n']} runs.", "",
                  markdown_table(["shots per class", "random forest", "full fine-tuning"], [
                      [k, _f(v["random_forest"]), _f(v["full"])] for k, v in ref["by_shots"].items()]), ""]
    lines += [f"Wall time {rep['wall_seconds']:.0f} s. Figures: selective_recovery.png, selective_curves.png, "
              "selective_severity.png, selective_cost.png.", ""]
    return "\n".join(lines)


def _figures(rep: dict, runs: list[dict], cfg: SelectiveBenchConfig) -> dict[str, Any]:

    methods = _method_names(cfg)
    figs = {}
    # recovered fraction per distortion
    fig, ax = new_figure(figsize=(10, 4))
    w = 0.8 / len(methods)
    for i, m in enumerate(methods):
        vals = []
        for d in cfg.distortions:
            a = rep["by_distortion"][d]
            vals.append(_ratio(a[m] - a["none"], a["clean"] - a["none"]) or 0.0)
        ax.bar(np.arange(len(cfg.distortions)) + i * w, vals, w, label=m)
    ax.set_xticks(np.arange(len(cfg.distortions)) + 0.4 - w / 2, cfg.distortions)
    ax.axhline(1.0, color="k", lw=0.8, ls="--")
    ax.set_ylabel("accuracy drop recovered")
    ax.set_title("Recovered fraction of the distortion's accuracy drop (mean over severities, shots, users, seeds)")
    ax.legend(fontsize=7, ncol=4)
    figs["selective_recovery"] = fig
    # accuracy vs fine-tuning time
    fig, ax = new_figure(figsize=(7, 4.5))
    for m in methods:
        curves = [r["methods"][m]["curve"] for r in runs]
        n = min(len(c) for c in curves)
        acc = np.mean([[p[2] for p in c[:n]] for c in curves], axis=0)
        secs = np.mean([[p[1] for p in c[:n]] for c in curves], axis=0) + _mean(
            r["methods"][m]["rank_seconds"] for r in runs)
        ax.plot(secs, acc, marker=".", label=m)
    ax.axhline(rep["threshold_90pct_of_full"], color="k", lw=0.8, ls="--", label="90% of full's gain")
    ax.set_xlabel("fine-tuning time (s, mean)")
    ax.set_ylabel("accuracy on distorted test windows (mean)")
    ax.legend(fontsize=7)
    figs["selective_curves"] = fig
    # accuracy vs severity per distortion
    nd = len(cfg.distortions)
    fig, axes = new_figure(1, nd, figsize=(2.6 * nd, 3), squeeze=False)
    show = ["clean", "none", "full", "layer", f"random {_pct(cfg.random_fraction)}", "borda 10%"]
    for ax, d in zip(axes[0], cfg.distortions):
        cells = [rep["by_cell"][f"{d}|{l}"] for l in cfg.levels if f"{d}|{l}" in rep["by_cell"]]
        xs = [c["severity"] for c in cells]
        for m in show:
            if all(m in c for c in cells):
                ax.plot(xs, [c[m] for c in cells], marker="o", label=m)
        ax.set_title(d, fontsize=9)
        ax.set_xlabel(SEVERITY_UNITS[d], fontsize=8)
    axes[0][0].set_ylabel("accuracy")
    axes[0][-1].legend(fontsize=6)
    figs["selective_severity"] = fig
    # cost per method: time per epoch, step FLOPs, time to 90% of full, patch size
    s = rep["summary"]
    fig, axes = new_figure(1, 4, figsize=(16, 4), squeeze=False)
    ys = np.arange(len(methods))
    panels = [("seconds_per_epoch", "s / epoch", 1.0),
              ("step_flops_vs_full", "training-step FLOPs / full's", 1.0),
              ("seconds_to_90pct_of_full", "s to 90% of full's gain (missing: not reached)", 1.0),
              ("patch_fraction", "patch / model (fp32; fp16 hatched)", 1.0)]
    for ax, (key, title, _) in zip(axes[0], panels):
        vals = [s[m][key] if s[m][key] is not None else 0.0 for m in methods]
        ax.barh(ys, vals, color="tab:blue")
        if key == "patch_fraction":
            ax.barh(ys, [s[m]["patch_fraction_fp16"] for m in methods], color="none", edgecolor="k", hatch="//")
            ax.axvline(0.1, color="r", lw=0.8, ls="--")
        ax.set_yticks(ys, methods if ax is axes[0][0] else [""] * len(methods), fontsize=7)
        ax.set_title(title, fontsize=9)
    figs["selective_cost"] = fig
    return figs
