"""Leave-one-subject-out check of source rehearsal during FilterLoss fine-tuning, on the
new-placement stress case (calibrate on one arm side, test on the other; see
imutune.personalize.protocols -- the default protocol elsewhere is calibrate-then-use).

For each watch subject: pretrain ``mobilecnn1d`` on the other 9 (cached), then on the
subject's arm side 0 long-tail subsampled to ``--ratio``, fine-tune with
* ``none``: the pretrained model as is,
* ``filterloss``: FilterLoss on the target windows only (the paper's setting),
* ``filterloss+rehearsal``: the same plus ``--rehearsal`` source windows per target window,
* ``ce+rehearsal``: plain cross-entropy plus rehearsal,
* ``source-only``: the rehearsal windows alone, no target data (control: is the gain the target's?),
and test on arm side 1. Writes rehearsal.json / rehearsal.md / rehearsal.png.

    python benchmarks/rehearsal.py --out runs/bench_rehearsal
"""
from __future__ import annotations

import argparse
import copy
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from imutune._io import write_json_atomic
from imutune.bench.report import host_info, markdown_table, new_figure, write_report
from imutune.data.recordings import load_watch
from imutune.demo import DemoConfig
from imutune.personalize.finetune import finetune
from imutune.personalize.protocols import split_target
from imutune.signal.windows import longtail_subsample, make_windows
from imutune.train.bundle import evaluate_bundle, load_bundle, save_bundle
from imutune.train.loop import train
from imutune.train.pretrain import pretrain

METHODS = ("none", "filterloss", "filterloss+rehearsal", "ce+rehearsal", "source-only")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/bench_rehearsal")
    ap.add_argument("--ratio", type=float, default=10.0)
    ap.add_argument("--rehearsal", type=float, default=4.0)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--subjects", type=int, nargs="+", default=list(range(1, 11)))
    args = ap.parse_args()
    torch.set_num_threads(1)  # robust timing when other jobs share the cores
    out = Path(args.out)
    cfg = DemoConfig()
    recs = load_watch()
    rows_path = out / "rehearsal_rows.json"
    rows = json.loads(rows_path.read_text()) if rows_path.exists() else []   # resume finished subjects
    done = {r["subject"] for r in rows}
    t0 = time.perf_counter()
    for s in args.subjects:
        user = f"subject{s:02d}"
        if user in done:
            continue
        source, tr, te = split_target(recs, user)
        w_src, w_tr_full, w_te = (make_windows(r, cfg.window) for r in (source, tr, te))
        cache = out / "pretrained" / user
        if (cache / "model.json").exists():
            pre = load_bundle(cache)
        else:
            pre = pretrain(w_src, window=cfg.window, train_config=cfg.pretrain, progress=False)
            save_bundle(pre, cache)
        for seed in args.seeds:
            w_tr = w_tr_full.subset(longtail_subsample(w_tr_full.y, args.ratio, seed=seed, num_classes=7))
            base = replace(cfg.finetune, train=replace(cfg.finetune.train, seed=seed))
            for method in METHODS:
                if method == "none":
                    b = pre
                elif method == "source-only":
                    b = copy.deepcopy(pre)
                    idx = np.random.default_rng(seed).choice(len(w_src), size=int(args.rehearsal * len(w_tr)), replace=False)
                    train(b.model, pre.normalizer(w_src.x[idx]), w_src.y[idx], config=base.train, progress=False)
                else:
                    loss = method.split("+")[0]
                    ratio = args.rehearsal if "rehearsal" in method else 0.0
                    b = finetune(pre, w_tr, config=replace(base, loss=loss, rehearsal_ratio=ratio),
                                 source_windows=w_src, progress=False)
                ev = evaluate_bundle(b, w_te)
                rows.append({"subject": user, "seed": seed, "method": method, **ev,
                             "source_accuracy": pre.info["source_accuracy"]})
        write_json_atomic(rows_path, rows)
        print(f"{user} done ({time.perf_counter() - t0:.0f} s)", flush=True)
    table = []
    for m in METHODS:
        acc = np.array([r["accuracy"] for r in rows if r["method"] == m])
        f1 = np.array([r["macro_f1"] for r in rows if r["method"] == m])
        rr = np.array([r["accuracy"] / r["source_accuracy"] for r in rows if r["method"] == m])
        table.append([m, f"{acc.mean():.4f} ± {acc.std():.4f}", f"{f1.mean():.4f} ± {f1.std():.4f}",
                      f"{rr.mean():.4f}", len(acc)])
    md = (f"# Source rehearsal, leave-one-subject-out (ratio {args.ratio:g}, rehearsal {args.rehearsal:g}x, "
          f"seeds {args.seeds})\n\n" + markdown_table(["method", "accuracy", "macro-F1", "restore ratio", "runs"], table)
          + f"\n\nWall time {time.perf_counter() - t0:.0f} s on {host_info()['cpu']}.\n")
    fig, ax = new_figure(figsize=(7, 3.5))
    ax.boxplot([[r["macro_f1"] for r in rows if r["method"] == m] for m in METHODS], tick_labels=METHODS)
    ax.set_ylabel("macro-F1 (target test side)")
    ax.tick_params(axis="x", rotation=20)
    write_report(out, "rehearsal", {"args": vars(args), "rows": rows, "host": host_info()}, md, {"rehearsal": fig})
    print(md)


if __name__ == "__main__":
    main()
