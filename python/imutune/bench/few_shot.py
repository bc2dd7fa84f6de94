"""Few-shot schedule and multi-head rehearsal benchmark (issue 15, items 3 and 4).

Source: the watch model (a bundle given as ``source_model``, else pretrained
on all 10 watch subjects and cached in the output folder exactly as
``imutune bench transfer`` does). Target: BasicMotions
(:func:`imutune.data.basicmotions.load_basicmotions`, read from the ``aeon``
wheel; a new class set, another device, 10 Hz, m/s^2), k labelled windows per
class drawn from TRAIN, scored on every TEST window.

* **schedule**: for each loss (``ce``, ``filterloss-cv``), k in ``ks`` and
  seed, the fine-tune with the schedule before issue 15 (``old``:
  ``replace(FINETUNE, min_steps=0, balanced_batches=False)`` and filter fold
  minimums 0) against the ``FINETUNE`` preset (``new``: at least 90 optimiser
  steps, class-balanced batches; fold minimums 30 / 60 on a new head).
* **rehearsal**: for k in ``rehearsal_ks``, seed and ``rehearsal_ratio``,
  a cross-entropy fine-tune on the new classes with ``rehearsal_windows``
  watch windows rehearsed through the kept source head (multi-head), scored
  on the target (macro-F1) and, through
  :func:`imutune.personalize.finetune.source_head_bundle`, on the other watch
  windows (accuracy, macro-F1). Those are windows of users the model was
  pretrained on: this measures forgetting, not generalization.

Outputs: ``few_shot.json``, ``few_shot.md``, ``few_shot.png``.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..personalize.reference import reference_score
from ..signal.windows import make_windows
from .report import host_info, jsonable, markdown_table, new_figure, write_report
from .transfer import TransferBenchConfig, draw_shots, source_bundle

__all__ = ["FewShotBenchConfig", "run_few_shot_bench", "SCHEDULES"]

SCHEDULES = ("old", "new")


@dataclass(frozen=True)
class FewShotBenchConfig:
    """Settings of ``benchmarks/few_shot.py`` (defaults: the README run)."""

    source_model: str | None = None              # a pretrained watch bundle; default: pretrain and cache one
    model_name: str = "mobilecnn1d"
    pretrain_epochs: int = 20
    ks: tuple[int, ...] = (2, 5, 10)             # labelled windows per class (schedule part)
    seeds: tuple[int, ...] = (0, 1, 2)
    losses: tuple[str, ...] = ("ce", "filterloss-cv")
    rehearsal_ks: tuple[int, ...] = (5, 20)
    rehearsal_ratios: tuple[float, ...] = (0.0, 1.0, 5.0)
    rehearsal_windows: int = 1500                # watch windows rehearsed; the other watch windows are scored
    rehearsal_loss: str = "ce"
    extra_min_steps: tuple[int, ...] = ()       # more schedules: FINETUNE with min_steps=n ("min_steps=n")
    extra_losses: tuple[str, ...] = ("ce",)      # the losses the extra schedules run for
    device: str = "cpu"
    threads: int = 1

    def __post_init__(self) -> None:
        for name in ("ks", "rehearsal_ks"):
            v = getattr(self, name)
            if any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in v):
                raise ValueError(f"{name} must be positive ints (labelled windows per class), got {list(v)}")
        if not self.ks and not self.rehearsal_ks:
            raise ValueError("ks and rehearsal_ks are both empty; expected at least one k")
        if not self.seeds:
            raise ValueError("seeds is empty; expected at least one seed")
        if any(not isinstance(r, (int, float)) or isinstance(r, bool) or r < 0 for r in self.rehearsal_ratios):
            raise ValueError(f"rehearsal_ratios must be numbers >= 0, got {list(self.rehearsal_ratios)}")
        if any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in self.extra_min_steps):
            raise ValueError(f"extra_min_steps must be ints >= 1, got {list(self.extra_min_steps)}")
        for name in ("rehearsal_windows", "threads", "pretrain_epochs"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an int >= 1, got {v!r}")


def run_few_shot_bench(out_dir: str | Path, config: FewShotBenchConfig = FewShotBenchConfig(), *,
                       target: tuple[Sequence[Any], Sequence[Any]] | None = None,
                       source_recordings: Sequence[Any] | None = None, command: str = "",
                       progress: bool = True, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run the benchmark and write ``few_shot.json``, ``few_shot.md``, ``few_shot.png`` into ``out_dir``.

    Parameters
    ----------
    target : (pool recordings, test recordings), optional
        Default: BasicMotions TRAIN / TEST (needs ``aeon``: ``pip install --no-deps aeon``).
    source_recordings : sequence of Recording, optional
        Recordings of the source model's classes for rehearsal and the forgetting score (default: the watch data).

    Returns
    -------
    dict
        ``{"config", "schedule": {"results": [{loss, k, seed, schedule, macro_f1, steps, boundary,
        seconds}], "summary": {loss: {k: {old, new, diff, per_seed}}}}, "rehearsal": {"results": [...],
        "summary": {k: {ratio: {...}}}, "pretrained_source_accuracy", ...}}``.

    Raises
    ------
    FileNotFoundError
        If the BasicMotions target is used and ``aeon`` is not installed (the message names
        ``pip install --no-deps aeon``).
    ValueError
        For a bad config or data (the message names it).
    """
    import torch

    log = log or (print if progress else (lambda s: None))
    before = torch.get_num_threads()
    torch.set_num_threads(config.threads)
    try:
        return _compute_bench(Path(out_dir), config, target, source_recordings, command, log)
    finally:
        torch.set_num_threads(before)


def _source(out: Path, cfg: FewShotBenchConfig, log):
    return source_bundle(out, TransferBenchConfig(source_model=cfg.source_model, model_name=cfg.model_name,
                                                   pretrain_epochs=cfg.pretrain_epochs, device=cfg.device,
                                                   threads=cfg.threads), log)


def _configs(cfg: FewShotBenchConfig, schedule: str, seed: int, loss: str, ratio: float = 0.0):
    from ..personalize.finetune import FinetuneConfig
    from ..personalize.weights import FilterConfig
    from ..train.config import FINETUNE

    tc = replace(FINETUNE, device=cfg.device, threads=cfg.threads, seed=seed)
    fc = FilterConfig(device=cfg.device)
    if schedule == "old":
        tc = replace(tc, min_steps=0, balanced_batches=False)
        fc = replace(fc, oof_min_steps=0, new_head_oof_min_steps=0)
    elif schedule.startswith("min_steps="):
        tc = replace(tc, min_steps=int(schedule.split("=")[1]))
    return FinetuneConfig(train=tc, filter=fc, loss=loss, rehearsal_ratio=float(ratio))


def _compute_bench(out: Path, cfg: FewShotBenchConfig, target, source_recordings, command: str,
                   log) -> dict[str, Any]:
    from ..personalize.finetune import finetune, source_head_bundle
    from ..train.bundle import evaluate_bundle

    t_all = time.perf_counter()
    if target is None:
        from ..data.basicmotions import load_basicmotions

        target = (load_basicmotions("TRAIN"), load_basicmotions("TEST"))
        target_desc = "BasicMotions (aeon wheel): TRAIN calibration pool, every TEST window scored"
    else:
        target_desc = "given recordings"
    src, src_how = _source(out, cfg, log)
    pool = make_windows(list(target[0]), src.preprocessing, channels=src.channels)
    test = make_windows(list(target[1]), src.preprocessing, channels=src.channels).relabel(
        pool.class_names, what="target test windows")
    log(f"[target] pool {len(pool)} windows, test {len(test)}")
    sched_rows: list[dict[str, Any]] = []
    reference: dict[str, list[float]] = {}   # the classical reference on the same draws (issue 15, item 6)
    for k in cfg.ks:
        for seed in cfg.seeds:
            score = reference_score(pool.subset(draw_shots(pool, k, seed)), test, seed=seed)
            reference.setdefault(str(k), []).append(score["macro_f1"])
    for loss in cfg.losses:
        for k in cfg.ks:
            for seed in cfg.seeds:
                cal = pool.subset(draw_shots(pool, k, seed))
                extra = [f"min_steps={n}" for n in cfg.extra_min_steps] if loss in cfg.extra_losses else []
                for schedule in (*SCHEDULES, *extra):
                    t = time.perf_counter()
                    per = finetune(src, cal, config=_configs(cfg, schedule, seed, loss), progress=False)
                    f1 = evaluate_bundle(per, test, device=cfg.device)["macro_f1"]
                    cats = per.info.get("category_counts")
                    row = {"loss": loss, "k": k, "seed": seed, "schedule": schedule, "n_train": len(cal),
                           "macro_f1": f1, "steps": int(per.info["steps"]), "category_counts": cats,
                           "seconds": time.perf_counter() - t}
                    sched_rows.append(row)
                    log(f"[schedule] {loss} k={k} seed={seed} {schedule}: {row['steps']} steps, macro-F1 "
                        f"{f1:.3f} ({row['seconds']:.1f} s)")
    reh: dict[str, Any] = {}
    if cfg.rehearsal_ks and cfg.rehearsal_ratios:
        reh = _rehearsal(cfg, src, pool, test, source_recordings, finetune, source_head_bundle, evaluate_bundle, log)
    data = {"command": command, "config": jsonable(asdict(cfg)), "target": target_desc, "n_pool": len(pool),
            "n_test": len(test), "class_names": list(pool.class_names),
            "source_model": {"how": src_how, "model_name": src.model_name,
                             "source_accuracy": src.info.get("source_accuracy")},
            "schedule": {"results": sched_rows, "summary": _schedule_summary(sched_rows, cfg)},
            "random_forest": {"per_seed": reference, "mean": {k: float(np.mean(v)) for k, v in reference.items()}},
            "rehearsal": reh, "host": host_info(), "seconds": time.perf_counter() - t_all}
    write_report(out, "few_shot", data, _markdown(data, cfg), {"few_shot": _figure(data, cfg)})
    return data


def _rehearsal(cfg, src, pool, test, source_recordings, finetune, source_head_bundle, evaluate_bundle, log):
    if source_recordings is None:
        from ..data.recordings import load_watch

        source_recordings = load_watch()
    watch = make_windows(list(source_recordings), src.preprocessing, channels=src.channels).relabel(
        src.class_names, what="source recordings")
    if len(watch) <= cfg.rehearsal_windows:
        raise ValueError(f"rehearsal_windows={cfg.rehearsal_windows} but the source recordings give {len(watch)} "
                         "windows; expected more (the rest is the forgetting test)")
    perm = np.random.default_rng(0).permutation(len(watch))
    rehearse, held = watch.subset(np.sort(perm[:cfg.rehearsal_windows])), watch.subset(np.sort(perm[cfg.rehearsal_windows:]))
    base = evaluate_bundle(src, held, device=cfg.device)
    rows = []
    for k in cfg.rehearsal_ks:
        for seed in cfg.seeds:
            cal = pool.subset(draw_shots(pool, k, seed))
            for ratio in cfg.rehearsal_ratios:
                t = time.perf_counter()
                per = finetune(src, cal, config=_configs(cfg, "new", seed, cfg.rehearsal_loss, ratio),
                               source_windows=rehearse if ratio else None, progress=False)
                fit_s = time.perf_counter() - t
                e_t = evaluate_bundle(per, test, device=cfg.device)
                e_s = evaluate_bundle(source_head_bundle(per, base=src), held, device=cfg.device)
                rows.append({"k": k, "seed": seed, "rehearsal_ratio": float(ratio), "n_train": len(cal),
                             "steps": int(per.info["steps"]), "rehearsal": per.info.get("rehearsal"),
                             "target_macro_f1": e_t["macro_f1"], "source_macro_f1": e_s["macro_f1"],
                             "source_accuracy": e_s["accuracy"], "fit_seconds": fit_s})
                log(f"[rehearsal] k={k} seed={seed} ratio={ratio:g}: target macro-F1 {e_t['macro_f1']:.3f}, "
                    f"source accuracy {e_s['accuracy']:.3f} ({fit_s:.1f} s)")
    summary: dict[str, Any] = {}
    for k in cfg.rehearsal_ks:
        summary[str(k)] = {}
        for ratio in cfg.rehearsal_ratios:
            sel = [r for r in rows if r["k"] == k and r["rehearsal_ratio"] == float(ratio)]
            summary[str(k)][f"{float(ratio):g}"] = {m: float(np.mean([r[m] for r in sel])) for m in (
                "target_macro_f1", "source_macro_f1", "source_accuracy", "fit_seconds")}
    return {"n_rehearsal": len(rehearse), "n_source_scored": len(held),
            "pretrained_source_accuracy": base["accuracy"], "pretrained_source_macro_f1": base["macro_f1"],
            "results": rows, "summary": summary}


def _schedule_summary(rows: list[dict], cfg: FewShotBenchConfig) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for loss in cfg.losses:
        out[loss] = {}
        for k in cfg.ks:
            f = {s: {r["seed"]: r["macro_f1"] for r in rows if r["loss"] == loss and r["k"] == k
                     and r["schedule"] == s} for s in SCHEDULES}
            d = [f["new"][s] - f["old"][s] for s in cfg.seeds]
            out[loss][str(k)] = {"old": float(np.mean(list(f["old"].values()))),
                                 "new": float(np.mean(list(f["new"].values()))), "diff": float(np.mean(d)),
                                 "per_seed": [float(x) for x in d], "wins": int(sum(x > 0 for x in d)),
                                 "steps": {s: sorted({r["steps"] for r in rows if r["loss"] == loss and r["k"] == k
                                                      and r["schedule"] == s}) for s in SCHEDULES}}
            for n in cfg.extra_min_steps:
                name = f"min_steps={n}"
                e = {r["seed"]: r["macro_f1"] for r in rows if r["loss"] == loss and r["k"] == k
                     and r["schedule"] == name}
                if e:
                    dn = [e[s] - f["new"][s] for s in cfg.seeds]
                    out[loss][str(k)][name] = {"mean": float(np.mean(list(e.values()))),
                                               "minus_new": float(np.mean(dn)), "per_seed": [float(x) for x in dn]}
    return out


def _count(rows: list[dict], loss: str, k: int, seed: int, schedule: str) -> Any:
    r = [r for r in rows if (r["loss"], r["k"], r["seed"], r["schedule"]) == (loss, k, seed, schedule)]
    return r[0]["category_counts"].get("boundary", 0) if r else "n/a"


def _figure(d: dict[str, Any], cfg: FewShotBenchConfig):
    fig, axes = new_figure(1, 2, figsize=(11.0, 4.2), squeeze=False)
    ax = axes[0][0]
    summ = d["schedule"]["summary"]
    for loss in cfg.losses:
        for s, style in (("old", "--"), ("new", "-")):
            ax.plot(list(cfg.ks), [summ[loss][str(k)][s] for k in cfg.ks], style, marker="o", label=f"{loss} {s}")
    ax.set_xscale("log")
    ax.set_xticks(list(cfg.ks))
    ax.set_xticklabels([str(k) for k in cfg.ks])
    ax.tick_params(axis="x", which="minor", labelbottom=False)
    ax.set_xlabel("labelled windows per class (k)")
    ax.set_ylabel("target test macro-F1 (mean over seeds)")
    ax.set_title("schedule: old (no minimum) vs FINETUNE (90 steps, balanced)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax = axes[0][1]
    reh = d["rehearsal"]
    if reh:
        labels = [f"k={k} r={r}" for k in reh["summary"] for r in reh["summary"][k]]
        vals = [(v["target_macro_f1"], v["source_accuracy"]) for k in reh["summary"] for v in reh["summary"][k].values()]
        x = np.arange(len(labels))
        ax.bar(x - 0.2, [v[0] for v in vals], 0.4, label="new classes: macro-F1")
        ax.bar(x + 0.2, [v[1] for v in vals], 0.4, label="watch classes: accuracy")
        ax.axhline(reh["pretrained_source_accuracy"], color="k", lw=0.8, ls=":", label="pretrained watch accuracy")
        ax.set_xticks(x)
        ax.set_xticklabels(labels, fontsize=8)
        ax.set_ylim(0.0, 1.05)
        ax.legend(fontsize=8, loc="lower right")
    ax.set_title("multi-head rehearsal, ratio r", fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    return fig


def _markdown(d: dict[str, Any], cfg: FewShotBenchConfig) -> str:
    lines = ["# Few-shot schedule and multi-head rehearsal benchmark", "", f"Command: `{d['command']}`", "",
             f"Target: {d['target']}; pool {d['n_pool']} windows, test {d['n_test']} windows; classes "
             f"{d['class_names']}.", "",
             f"Source model: `{d['source_model']['model_name']}`, {d['source_model']['how']}; seeds "
             f"{list(cfg.seeds)}.", "", "## Schedule: macro-F1 old -> new (mean over seeds)", "",
             "old: `replace(FINETUNE, min_steps=0, balanced_batches=False)`, filter fold minimums 0; new: `FINETUNE` "
             "(min_steps 90, balanced batches; fold minimums 30, 60 on a new head).", ""]
    summ = d["schedule"]["summary"]
    rows = []
    for loss in cfg.losses:
        row = [loss]
        for k in cfg.ks:
            s = summ[loss][str(k)]
            row.append(f"{s['old']:.3f} -> {s['new']:.3f} ({s['diff']:+.3f}; "
                       + "/".join(f"{x:+.3f}" for x in s["per_seed"]) + ")")
        rows.append(row)
    rf = d.get("random_forest", {}).get("mean", {})
    if rf:   # the classical reference: a RandomForest on 13 statistics per channel of the same draws
        rows.append(["random_forest (13 statistics per channel, same windows)"] + [f"{rf[str(k)]:.3f}" for k in cfg.ks])
    lines += [markdown_table(["method"] + [f"k={k}" for k in cfg.ks], rows), "",
              "Per-seed paired differences new - old in brackets. Steps (old / new): " + "; ".join(
                  f"{loss} k={k}: {summ[loss][str(k)]['steps']['old']} / {summ[loss][str(k)]['steps']['new']}"
                  for loss in cfg.losses for k in cfg.ks) + ".", ""]
    boundary = [r for r in d["schedule"]["results"] if r.get("category_counts")]
    if boundary:
        lines += ["FilterLoss windows in \"boundary\" (weights near uniform), per seed, old -> new: " + "; ".join(
            f"{loss} k={k}: " + ", ".join(
                f"{_count(boundary, loss, k, s, 'old')} -> {_count(boundary, loss, k, s, 'new')}" for s in cfg.seeds)
            + f" of {k * len(d['class_names'])}"
            for loss in cfg.losses for k in cfg.ks if any(r["loss"] == loss and r["k"] == k for r in boundary)) + ".",
            ""]
    extra = [(loss, f"min_steps={n}") for loss in cfg.losses for n in cfg.extra_min_steps
             if f"min_steps={n}" in summ[loss][str(cfg.ks[0])]] if cfg.ks else []
    if extra:
        rows = [[f"{loss} {name}"] + [f"{summ[loss][str(k)][name]['mean']:.3f} ({summ[loss][str(k)][name]['minus_new']:+.3f} "
                                      f"vs new)" for k in cfg.ks] for loss, name in extra]
        lines += ["Longer minimums (FINETUNE with another `min_steps`; paired difference to `new`, mean over seeds):",
                  "", markdown_table(["schedule"] + [f"k={k}" for k in cfg.ks], rows), ""]
    reh = d["rehearsal"]
    if reh:
        lines += ["## Multi-head rehearsal (new class set)", "",
                  f"{reh['n_rehearsal']} watch windows rehearsed, {reh['n_source_scored']} other watch windows "
                  f"scored (users the model was pretrained on: forgetting, not generalization); pretrained "
                  f"accuracy {reh['pretrained_source_accuracy']:.3f}. Loss {cfg.rehearsal_loss}, mean over seeds.", ""]
        rows = [[k, r, f"{v['target_macro_f1']:.3f}", f"{v['source_macro_f1']:.3f}", f"{v['source_accuracy']:.3f}",
                 f"{v['fit_seconds']:.1f}"] for k in reh["summary"] for r, v in reh["summary"][k].items()]
        lines += [markdown_table(["k", "rehearsal_ratio", "target macro-F1", "source macro-F1", "source accuracy",
                                  "fit s"], rows), ""]
    lines += [f"Host: {d['host']['cpu']}, {d['host']['cores']} cores, torch {d['host']['torch']}, {cfg.threads} "
              f"thread(s); total {d['seconds']:.0f} s.", "", "![schedule and rehearsal](few_shot.png)", ""]
    return "\n".join(lines)
