"""Undertraining check of the learned codec (issue 10 follow-up): codec-only training at a few lambdas
with the benchmark's budget and with more epochs, evaluated exactly as ``imutune bench codec`` does
(held-out users, calibrate-then-use; real .imz file sizes; PRDN; classifier macro-F1 on decoded test
windows; macro-F1 personalized on the decoded upload, tested on raw).

    nice -n 10 python benchmarks/codec_steps.py --out runs/codec_steps --lambdas 64 512 --epochs 10 50

Writes ``<out>/codec_steps.json`` (one row per lambda x epochs, updated as rows finish),
``codec_steps.md`` and ``codec_steps.png`` (PRDN and personalized macro-F1 against optimizer steps),
and reuses the benchmark's caches (classifier and codecs) under ``--bench-out``.
``--report-only`` re-renders the Markdown and PNG from an existing ``codec_steps.json``.
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np


NAME = "codec_steps"


def _report(data: dict) -> tuple[str, dict]:
    """Markdown table and figure of the rows of ``codec_steps.json``."""
    from imutune.bench.report import markdown_table, new_figure

    rows = data["rows"]
    ref = data.get("reference_mean")
    table = markdown_table(
        ["mode", "lambda", "epochs", "optimizer steps", "bits/sample (file)", "PRDN %", "F1 decoded (classifier)",
         "F1 personalized decoded -> raw"],
        [[r["mode"], f"{r['lambda']:g}", r["epochs"], r["steps"], r["bits_per_sample"], r["prdn"],
          r["classifier_macro_f1_decoded"], "n/a" if r["personalized_macro_f1"] is None else r["personalized_macro_f1"]]
         for r in rows], floatfmt=".3f")
    md = "\n".join(["# Codec training budget (codec_steps)", "",
                     "Codec-only training at each lambda with more epochs, evaluated as `imutune bench codec` "
                     "(held-out users, calibrate-then-use, real .imz sizes).", "", table, "",
                     f"Reference: personalized on raw uploads, macro-F1 {ref:.3f}." if ref is not None else ""])
    fig, (a1, a2) = new_figure(1, 2, figsize=(10, 4))
    for lm in sorted({r["lambda"] for r in rows}):
        rr = sorted((r for r in rows if r["lambda"] == lm), key=lambda r: r["steps"])
        a1.plot([r["steps"] for r in rr], [r["prdn"] for r in rr], marker="o", label=f"lambda {lm:g}")
        f1 = [(r["steps"], r["personalized_macro_f1"]) for r in rr if r["personalized_macro_f1"] is not None]
        if f1:
            a2.plot(*zip(*f1), marker="o", label=f"lambda {lm:g}")
    if ref is not None:
        a2.axhline(ref, color="k", lw=0.8, ls="--", label="raw uploads")
    a1.set_xlabel("codec optimizer steps")
    a1.set_ylabel("PRDN %")
    a2.set_xlabel("codec optimizer steps")
    a2.set_ylabel("macro-F1, personalized on decoded upload")
    for ax in (a1, a2):
        ax.legend(fontsize=7)
    return md, {NAME: fig}


def main() -> int:
    import torch

    from imutune._io import write_json_atomic
    from imutune.bench import codec as B
    from imutune.data.recordings import load_watch
    from imutune.personalize.finetune import finetune
    from imutune.personalize.protocols import calibrate_then_use
    from imutune.signal.windows import WindowConfig, make_windows

    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--bench-out", default="runs/codec_steps/cache", help="benchmark folder whose caches are (re)used")
    ap.add_argument("--lambdas", type=float, nargs="+", default=[64.0, 512.0])
    ap.add_argument("--epochs", type=int, nargs="+", default=[10, 50])
    ap.add_argument("--mode", default="codec")
    ap.add_argument("--no-personalize", action="store_true")
    ap.add_argument("--report-only", action="store_true", help="re-render codec_steps.md/.png from the JSON in --out")
    a = ap.parse_args()
    from imutune.bench.report import write_report

    if a.report_only:
        data = json.loads((Path(a.out) / f"{NAME}.json").read_text())
        write_report(a.out, NAME, data, *_report(data))
        return 0
    torch.set_num_threads(1)
    cfg = B.CodecBenchConfig()
    out, bout = Path(a.out), Path(a.bench_out)
    recs = load_watch()
    source = [r for r in recs if r.meta["subject"] in cfg.source_subjects]
    target = [r for r in recs if r.meta["subject"] in cfg.test_subjects]
    base = B._pretrained(bout, cfg, source, print)
    users = {}
    for u in sorted({r.user for r in target}):
        cal, test = calibrate_then_use([r for r in target if r.user == u], window_s=cfg.window.window_s,
                                       calibration_fraction=cfg.calibration_fraction)
        users[u] = (cal, test, make_windows(test, base.window, channels=base.channels))
    raw_ref = {}
    if not a.no_personalize:
        for u, (cal, test, tw) in users.items():
            tuned = finetune(base, make_windows(cal, base.window, channels=base.channels), config=cfg.finetune,
                             progress=False)
            raw_ref[u] = B._f1(tuned, tw)
        print("reference", raw_ref, flush=True)
    chunks = make_windows(source, WindowConfig(window_s=2 * cfg.codec.segment_samples / cfg.window.sample_rate_hz,
                                               hop_s=cfg.codec_hop_s, sample_rate_hz=cfg.window.sample_rate_hz,
                                               min_purity=0.5), channels=base.channels)
    rows = []
    path = out / f"{NAME}.json"
    data: dict = {"rows": rows}
    for ep in a.epochs:
        for lm in a.lambdas:
            c2 = replace(cfg, codec_epochs=ep)
            codec, clf = B._trained_codec(bout, c2, chunks, base, a.mode, lm, print)
            p = B._Point(f"learned/{a.mode}", f"learned {a.mode} lambda={lm:g} epochs={ep}", lm, codec, clf)
            t = time.perf_counter()
            if a.no_personalize:
                c3 = replace(cfg, finetune=replace(cfg.finetune, train=replace(cfg.finetune.train, epochs=1)))
                B._evaluate_point(p, base, users, c3, None)
            else:
                B._evaluate_point(p, base, users, cfg, raw_ref)
            s = B._summary(p)
            steps = ep * (chunks.x.shape[0] // 64)
            row = {"mode": a.mode, "lambda": lm, "epochs": ep, "steps": steps,
                   "train_seconds": codec.info.get("train_seconds"),
                   "final_train_bits": codec.info["history"]["bits_per_sample"][-1],
                   "final_train_mse": codec.info["history"]["mse"][-1],
                   **{k: s[k] for k in ("bits_per_sample", "payload_bits_per_sample", "estimate_bits_per_sample",
                                        "prdn", "snr_db", "classifier_macro_f1_decoded", "personalized_macro_f1")},
                   "per_user": p.per_user, "eval_seconds": time.perf_counter() - t}
            if a.no_personalize:
                row["personalized_macro_f1"] = None
            rows.append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "per_user"}), flush=True)
            data = {"reference_personalized_macro_f1_raw": raw_ref,
                    "reference_mean": float(np.mean(list(raw_ref.values()))) if raw_ref else None,
                    "config": json.loads(json.dumps(asdict(cfg), default=str)), "rows": rows}
            write_json_atomic(path, data)
    write_report(out, NAME, data, *_report(data))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
