"""Channel-subset fine-tuning benchmark (issue 15, item 2): a user with an accelerometer only.

Source: watch subjects other than the targets (by default 1-9) pretrain two
models of one registry architecture: one on all 6 channels and one on the
accelerometer only (``acc_channels``). Each target subject (held out of both)
is split calibrate-then-use
(:func:`imutune.personalize.protocols.calibrate_then_use`: the first half of
each recording calibrates, the rest after a ``gap_s`` gap is the test) and
fine-tuned with the default :func:`imutune.personalize.finetune.finetune`
(FilterLoss, the FINETUNE preset) in three cases:

* ``6ch->6ch``: the 6-channel model on all 6 channels (the reference);
* ``6ch->acc``: the 6-channel model on the accelerometer only: a channel-subset
  fine-tune (the stem filters' input slices,
  :func:`imutune.personalize.finetune.adapt_bundle_channels`);
* ``acc->acc``: the accelerometer-only model on the accelerometer.

"before" is the untrained (adapted) model, "after" the fine-tuned one; both
beside RandomForest / logistic regression on window statistics of the same
calibration windows (:func:`imutune.personalize.reference.reference_report`).
Outputs: ``channels.json``, ``channels.md``, ``channels.png``; the first subject's first ``6ch->acc``
model in ``finetuned_6ch-acc/`` and that user's test recordings on the subset in ``user_acc_test/`` (npz),
ready for ``imutune export`` / ``imutune replay``.
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..personalize.finetune import FinetuneConfig
from ..signal.windows import WindowConfig, make_windows
from ..train.config import PRETRAIN, TrainConfig
from .report import cached_bundle, host_info, jsonable, markdown_table, new_figure, write_report

__all__ = ["ChannelsBenchConfig", "CASES", "run_channels_bench"]

#: (case, pretrained model, channels the user has)
CASES = (("6ch->6ch", "all", "all"), ("6ch->acc", "all", "acc"), ("acc->acc", "acc", "acc"))
SCORES = ("before", "after", "random_forest", "logistic_regression")


@dataclass(frozen=True)
class ChannelsBenchConfig:
    """Settings of ``benchmarks/channels.py`` (defaults: the README run)."""

    subjects: tuple[int, ...] = (10,)         # watch target subjects, held out of pretraining
    seeds: tuple[int, ...] = (0,)              # fine-tuning (and reference) seeds
    model_name: str = "mobilecnn1d"
    window: WindowConfig = WindowConfig()
    pretrain: TrainConfig = PRETRAIN
    holdout_fraction: float = 0.2
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    acc_channels: tuple[str, ...] = ("acc_x", "acc_y", "acc_z")
    calibration_fraction: float = 0.5
    gap_s: float = 2.0
    device: str = "cpu"
    threads: int = 1

    def __post_init__(self) -> None:
        for name in ("subjects", "seeds"):
            v = getattr(self, name)
            if not v or any(isinstance(s, bool) or not isinstance(s, int) for s in v):
                raise ValueError(f"{name} must be a non-empty list of ints, got {list(v)}")
        if isinstance(self.threads, bool) or not isinstance(self.threads, int) or self.threads < 1:
            raise ValueError(f"threads must be an int >= 1, got {self.threads!r}")
        if not self.acc_channels:
            raise ValueError("acc_channels is empty; expected the accelerometer channel names")


def run_channels_bench(out_dir: str | Path, config: ChannelsBenchConfig = ChannelsBenchConfig(), *,
                       recordings: Sequence[Any] | None = None, command: str = "", progress: bool = True,
                       log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run the benchmark and write ``channels.json``, ``channels.md``, ``channels.png`` into ``out_dir``.

    Parameters
    ----------
    out_dir : path
        Output folder; pretrained models are cached there (``source_<all|acc>_<fingerprint>``) and reused
        by a later run with the same settings.
    config : ChannelsBenchConfig
    recordings : sequence of Recording, optional
        Recordings with ``meta["subject"]`` (default: :func:`imutune.data.recordings.load_watch`), used in
        name order (the order ``imutune pretrain --data <folder>`` reads a folder of them in).

    Returns
    -------
    dict
        ``{"config", "pretrained": {"all"|"acc": {...}}, "results": [{subject, seed, case, n_train, n_test,
        before, after, random_forest, logistic_regression, fit_seconds}], "summary": {case: {score: mean}}}``.

    Raises
    ------
    ValueError
        If a target subject has no recordings, or no recordings are left to pretrain on.
    """
    import torch

    log = log or (print if progress else (lambda s: None))
    before = torch.get_num_threads()
    torch.set_num_threads(config.threads)
    try:
        return _compute_bench(Path(out_dir), config, recordings, command, log)
    finally:
        torch.set_num_threads(before)


def _pretrained(out: Path, cfg: ChannelsBenchConfig, src: list, kind: str, log) -> tuple[Any, dict[str, Any]]:
    from ..train.bundle import save_bundle
    from ..train.pretrain import pretrain

    chans = None if kind == "all" else cfg.acc_channels
    recipe = {"model_name": cfg.model_name, "channels": chans, "window": asdict(cfg.window),
              "train": asdict(replace(cfg.pretrain, device="cpu", threads=1)), "holdout": cfg.holdout_fraction,
              "source": [r.name for r in src]}
    fp = hashlib.sha256(json.dumps(recipe, sort_keys=True, default=str).encode()).hexdigest()[:12]
    folder = out / f"source_{kind}_{fp}"
    b = cached_bundle(folder, fp)
    if b is not None:
        return b, {"how": f"cached in {folder}", "seconds": None}
    t = time.perf_counter()
    w = make_windows(src, cfg.window, channels=chans)
    b = pretrain(w, model_name=cfg.model_name, window=cfg.window, holdout_fraction=cfg.holdout_fraction,
                 train_config=replace(cfg.pretrain, device=cfg.device, threads=cfg.threads), progress=False)
    b = b.derive(b.model, info={**b.info, "bench_fingerprint": fp})
    save_bundle(b, folder)
    s = time.perf_counter() - t
    log(f"[pretrain {kind}] {len(w)} windows, source macro-F1 {b.info.get('source_macro_f1')}, {s:.0f} s")
    return b, {"how": f"pretrained here, saved in {folder}", "seconds": s}


def _compute_bench(out: Path, cfg: ChannelsBenchConfig, recordings, command: str, log) -> dict[str, Any]:
    from ..personalize.finetune import adapt_bundle_channels, finetune
    from ..personalize.protocols import calibrate_then_use
    from ..personalize.reference import ReferenceConfig, reference_report
    from ..train.bundle import evaluate_bundle

    t_all = time.perf_counter()
    if recordings is None:
        from ..data.recordings import load_watch

        recordings = load_watch()
    recs = sorted(recordings, key=lambda r: r.name)   # name order, as a folder of these recordings is read
    src = [r for r in recs if r.meta.get("subject") not in cfg.subjects]
    present = {r.meta.get("subject") for r in recs}
    missing = [s for s in cfg.subjects if s not in present]
    if missing:
        raise ValueError(f"subjects: subject {missing[0]} has no recordings; subjects present are "
                         f"{sorted(present, key=str)}")
    if not src:
        raise ValueError(f"subjects {list(cfg.subjects)} leave no recordings to pretrain on")
    models, pre = {}, {}
    for kind in ("all", "acc"):
        models[kind], how = _pretrained(out, cfg, src, kind, log)
        b = models[kind]
        pre[kind] = {**how, "channels": list(b.channels), "source_macro_f1": b.info.get("source_macro_f1"),
                     "source_accuracy": b.info.get("source_accuracy"), "n_train": b.info.get("n_train"),
                     "n_holdout": b.info.get("n_holdout")}
    chans = {"all": tuple(models["all"].channels), "acc": tuple(cfg.acc_channels)}
    results: list[dict[str, Any]] = []
    for subject in cfg.subjects:
        mine = [r for r in recs if r.meta.get("subject") == subject]
        cal_recs, test_recs = calibrate_then_use(mine, window_s=cfg.window.window_s,
                                                 calibration_fraction=cfg.calibration_fraction, gap_s=cfg.gap_s)
        for case, model_kind, chan_kind in CASES:
            base = models[model_kind]
            ch = chans[chan_kind]
            w = make_windows(cal_recs, base.preprocessing, channels=ch)
            wt_raw = make_windows(test_recs, base.preprocessing, channels=ch)
            wt = wt_raw.relabel(w.class_names, what=f"subject {subject} test windows")
            start = adapt_bundle_channels(base, ch) if ch != tuple(base.channels) else base
            for seed in cfg.seeds:
                fcfg = replace(cfg.finetune, train=replace(cfg.finetune.train, seed=seed, device=cfg.device,
                                                           threads=cfg.threads))
                t = time.perf_counter()
                per = finetune(base, w, config=fcfg, progress=False)
                fit_s = time.perf_counter() - t
                after = evaluate_bundle(per, wt, device=cfg.device)["macro_f1"]
                if not per.info["head_replaced"] and set(wt_raw.class_names) <= set(start.class_names):
                    bef = evaluate_bundle(start, wt_raw.relabel(start.class_names), device=cfg.device)["macro_f1"]
                else:
                    bef = None   # a new class set: the untrained model has no head for it
                ref = reference_report(w, wt, model_macro_f1=after, config=ReferenceConfig(seed=seed))
                row = {"subject": subject, "seed": seed, "case": case, "model_channels": list(base.channels),
                       "user_channels": list(ch), "n_train": len(w), "n_test": len(wt), "before": bef,
                       "after": after, "random_forest": ref["methods"]["random_forest"]["macro_f1"],
                       "logistic_regression": ref["methods"]["logistic_regression"]["macro_f1"],
                       "fit_seconds": fit_s, "steps": int(per.info["steps"]),
                       "channels_adapted": per.info.get("channels_adapted")}
                results.append(row)
                if case == "6ch->acc" and subject == cfg.subjects[0] and seed == cfg.seeds[0]:
                    _save_subset_example(out, per, test_recs, ch)
                log(f"[subject {subject} seed {seed}] {case}: before {bef if bef is None else round(bef, 3)} "
                    f"after {after:.3f} RF {row['random_forest']:.3f} LR {row['logistic_regression']:.3f} "
                    f"({fit_s:.1f} s)")
    summary = {case: {s: _mean([r[s] for r in results if r["case"] == case]) for s in (*SCORES, "fit_seconds")}
               for case, _, _ in CASES}
    data = {"command": command, "config": jsonable(asdict(cfg)), "pretrained": pre, "results": results,
            "summary": summary, "host": host_info(), "seconds": time.perf_counter() - t_all}
    write_report(out, "channels", data, _markdown(data, cfg), {"channels": _figure(summary)})
    return data


def _save_subset_example(out: Path, bundle, test_recs: list, channels: tuple[str, ...]) -> None:
    """The first subject's first 6ch->acc model (``finetuned_6ch-acc``) and that user's test recordings on the
    subset (``user_acc_test/*.npz``), for ``imutune export`` / ``imutune replay`` of a channel-subset model."""
    from ..data.npz import save_npz
    from ..train.bundle import save_bundle

    save_bundle(bundle, out / "finetuned_6ch-acc")
    for r in test_recs:
        save_npz(r.select_channels(channels), out / "user_acc_test" / f"{r.name.replace(':', '_')}.npz")


def _mean(v: list) -> float | None:
    v = [x for x in v if x is not None]
    return float(np.mean(v)) if v else None


def _figure(summary: dict[str, Any]):
    fig, ax = new_figure(figsize=(7.0, 4.2))
    cases = list(summary)
    width = 0.2
    for i, s in enumerate(SCORES):
        vals = [summary[c][s] if summary[c][s] is not None else 0.0 for c in cases]
        ax.bar(np.arange(len(cases)) + (i - 1.5) * width, vals, width, label=s.replace("_", " "))
    ax.set_xticks(np.arange(len(cases)))
    names = {"6ch->6ch": "6-channel model\n-> 6 channels", "6ch->acc": "6-channel model\n-> acc only (subset)",
             "acc->acc": "acc-only model\n-> acc only"}
    ax.set_xticklabels([names.get(c, c) for c in cases], fontsize=8)
    ax.set_ylim(0.0, 1.05)
    ax.set_ylabel("test macro-F1 (mean over subjects and seeds)")
    ax.set_title("fine-tuning on a channel subset (held-out watch subjects, calibrate-then-use)", fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    return fig


def _markdown(d: dict[str, Any], cfg: ChannelsBenchConfig) -> str:
    f = (lambda v: "n/a" if v is None else f"{v:.3f}")
    pre = d["pretrained"]
    n_test = sorted({r["n_test"] for r in d["results"]})
    lines = ["# Channel-subset fine-tuning benchmark", "", f"Command: `{d['command']}`", "",
             f"Pretrained `{cfg.model_name}` on the watch subjects other than {list(cfg.subjects)}: 6 channels "
             f"source macro-F1 {f(pre['all']['source_macro_f1'])}, accelerometer only "
             f"{f(pre['acc']['source_macro_f1'])} ({pre['all']['how']}; {pre['acc']['how']}).", "",
             f"Targets: subjects {list(cfg.subjects)}, calibrate-then-use (first {cfg.calibration_fraction:g} of each "
             f"recording calibrates, the rest after a {cfg.gap_s:g} s gap tests; {n_test} test windows); default "
             f"finetune (loss {cfg.finetune.loss}); seeds {list(cfg.seeds)}.", "",
             "## Macro-F1 (mean over subjects and seeds)", ""]
    rows = [[c, f(s["before"]), f(s["after"]), f(s["random_forest"]), f(s["logistic_regression"]),
             f"{s['fit_seconds']:.1f}"] for c, s in d["summary"].items()]
    lines += [markdown_table(["base model -> user's channels", "before", "after", "RandomForest",
                              "logistic regression", "fine-tune s"], rows), "",
              "before: the pretrained model untrained (for 6ch->acc: adapted to the subset, the gyroscope at its "
              "training mean).", "", "## Per subject and seed", ""]
    rows = [[r["subject"], r["seed"], r["case"], r["n_train"], r["n_test"], f(r["before"]), f(r["after"]),
             f(r["random_forest"]), f(r["logistic_regression"]), r["steps"]] for r in d["results"]]
    lines += [markdown_table(["subject", "seed", "case", "n_train", "n_test", "before", "after", "RF", "LR",
                              "steps"], rows), "",
              f"Host: {d['host']['cpu']}, {d['host']['cores']} cores, torch {d['host']['torch']}, {cfg.threads} "
              f"thread(s); total {d['seconds']:.0f} s.", "", "![macro-F1 per case](channels.png)", ""]
    return "\n".join(lines)
