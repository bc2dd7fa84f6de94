"""Cached-prefix selective fine-tuning (issue 14, item 1): time per epoch with and without caching the
frozen prefix, by the depth of the earliest trained unit, and a bit-identity check of the weights.

For each model and each split point k (the first k units -- stem, residual blocks -- frozen), a
selection trains ``--fraction`` of the filters (seeded, at random) of every conv layer from unit k on,
plus the head; :func:`imutune.personalize.selective.finetune_selected` runs it once uncached and once
with ``cache_prefix=True`` on the same windows (one target user of the embedded watch data). Weights
are a seeded random initialisation whose batch-norm statistics were warmed on the data: timing and
exactness do not depend on them. Writes ``cached_prefix.json``, ``cached_prefix.md`` and
``cached_prefix.png`` into ``--out``.

    nice -n 10 python benchmarks/cached_prefix.py --out runs/cached_prefix --quick
    python benchmarks/cached_prefix.py --out runs/cached_prefix --models mobilecnn1d resnet1d18 --epochs 30
"""
from __future__ import annotations

import argparse
import copy
import sys
import time
from dataclasses import replace

import numpy as np
import torch


def _selection(model, k: int, fraction: float, seed: int):
    from imutune.personalize.selective import Selection, _units, conv_layers

    trained = tuple(name + "." for name, _ in _units(model)[k:])
    rng = np.random.default_rng(seed)
    sel = {}
    for l in conv_layers(model):
        m = np.zeros(l.n_filters, bool)
        if l.name.startswith(trained):
            m[rng.choice(l.n_filters, size=max(1, round(fraction * l.n_filters)), replace=False)] = True
        sel[l.name] = m
    return Selection(sel, ("head",))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--models", nargs="+", default=["mobilecnn1d"])
    ap.add_argument("--user", default="subject10")
    ap.add_argument("--windows", type=int, default=280, help="target training windows (default 280)")
    ap.add_argument("--epochs", type=int, default=None, help="epochs per run (default: FINETUNE's 30; 5 with --quick)")
    ap.add_argument("--fraction", type=float, default=0.1, help="fraction of filters trained per layer")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1: a phone-class core)")
    ap.add_argument("--quick", action="store_true", help="5 epochs, 140 windows")
    args = ap.parse_args(argv)

    from imutune.bench.report import host_info, markdown_table, new_figure, write_report
    from imutune.data.recordings import load_watch
    from imutune.models.resnet1d import create_model
    from imutune.personalize.selective import _units, finetune_selected, frozen_prefix
    from imutune.signal.windows import Normalizer, WindowConfig, make_windows
    from imutune.train.loop import FINETUNE

    torch.set_num_threads(args.threads)
    epochs = args.epochs or (5 if args.quick else FINETUNE.epochs)
    n_max = 140 if args.quick else args.windows
    cfg = replace(FINETUNE, epochs=epochs, device="cpu", threads=args.threads)
    w = make_windows([r for r in load_watch() if r.user == args.user], WindowConfig())
    idx = np.random.default_rng(0).choice(len(w), size=min(n_max, len(w)), replace=False)
    x = Normalizer.fit(w.x)(w.x[idx])                 # (N, C, T), normalized
    y = w.y[idx]
    rows, t0 = [], time.perf_counter()
    for name in args.models:
        torch.manual_seed(0)
        base = create_model(name, in_channels=x.shape[1], num_classes=w.num_classes)
        base.train()
        with torch.no_grad():                          # warm the batch-norm statistics on the data
            for s in range(0, len(x), 64):
                base(torch.from_numpy(x[s:s + 64]))
        base.eval()
        for k in range(len(_units(base))):
            sel = _selection(base, k, args.fraction, seed=k)
            assert frozen_prefix(base, sel) == k
            res, models = {}, {}
            for cache in (False, True):
                m = copy.deepcopy(base)
                res[cache] = finetune_selected(m, x, y, sel, config=cfg, cache_prefix=cache)
                models[cache] = m
            same = all(torch.equal(a, b) for a, b in zip(models[False].state_dict().values(),
                                                         models[True].state_dict().values()))
            row = {"model": name, "frozen_units": k, "first_trained_unit": _units(base)[k][0],
                   "trainable_parameters": res[False]["trainable_parameters"], "epochs": epochs, "windows": len(x),
                   "uncached_s_per_epoch": res[False]["seconds"] / epochs,
                   "cached_s_per_epoch": res[True]["seconds"] / epochs, "cache_seconds": res[True]["cache_seconds"],
                   "speedup": res[False]["seconds"] / res[True]["seconds"], "bit_identical": same,
                   "same_loss_history": res[False]["loss"] == res[True]["loss"]}
            rows.append(row)
            print(f"[{name} k={k}] {row['uncached_s_per_epoch'] * 1e3:.1f} -> {row['cached_s_per_epoch'] * 1e3:.1f} "
                  f"ms/epoch (x{row['speedup']:.2f}), bit-identical {same}", flush=True)
    md = ["# Cached-prefix selective fine-tuning", "",
          f"Command: `python benchmarks/cached_prefix.py {' '.join(sys.argv[1:] if argv is None else argv)}`. "
          f"{len(x)} windows of {args.user} (watch data, 2 s at 50 Hz), {epochs} epochs, batch {cfg.batch_size}, "
          f"{args.threads} torch thread(s), {args.fraction:g} of the filters of every conv layer from the first "
          "trained unit on, plus the head. Seconds per epoch include the one-off caching, spread over the epochs.", "",
          markdown_table(["model", "frozen units", "first trained unit", "trainable params", "uncached ms/epoch",
                          "cached ms/epoch", "speed-up", "bit-identical"],
                         [[r["model"], r["frozen_units"], r["first_trained_unit"], r["trainable_parameters"],
                           f"{r['uncached_s_per_epoch'] * 1e3:.1f}", f"{r['cached_s_per_epoch'] * 1e3:.1f}",
                           f"{r['speedup']:.2f}x", "yes" if r["bit_identical"] else "NO"] for r in rows])]
    fig, ax = new_figure(figsize=(6.5, 4))
    for name in args.models:
        rr = [r for r in rows if r["model"] == name]
        ax.plot([r["frozen_units"] for r in rr], [r["uncached_s_per_epoch"] * 1e3 for r in rr], "o--",
                label=f"{name} uncached")
        ax.plot([r["frozen_units"] for r in rr], [r["cached_s_per_epoch"] * 1e3 for r in rr], "o-",
                label=f"{name} cached prefix")
    ax.set_xlabel("frozen leading units (stem, residual blocks)")
    ax.set_ylabel("ms per epoch")
    ax.set_ylim(bottom=0)
    ax.legend()
    write_report(args.out, "cached_prefix", {"rows": rows, "host": host_info(), "args": vars(args),
                                             "wall_seconds": time.perf_counter() - t0},
                 "\n".join(md), {"cached_prefix": fig})
    print(f"[done] {args.out}/cached_prefix.md")
    return 0 if all(r["bit_identical"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
