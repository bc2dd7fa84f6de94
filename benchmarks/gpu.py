"""GPU check: pretrain and fine-tune ``resnet1d34`` on CUDA and on the CPU with one seed; report
training throughput (windows/s) and how closely the two loss curves agree.

Both devices start from the same initial weights, see the same batches in the same order (the loop's
seeded shuffles) and the same data; they differ only in floating-point order (cuDNN kernels vs CPU),
so the per-epoch losses should agree to a few percent, not exactly. Without a CUDA GPU the CPU part runs
alone and the report says no GPU was present.

    python benchmarks/gpu.py --out runs/bench_gpu            # full: 8 watch subjects pretrain, 1 target
    python benchmarks/gpu.py --out runs/bench_gpu --quick    # short CPU part (a few minutes on 2 cores)

Writes gpu.json, gpu.md and gpu_loss.png into ``--out``. The report gives the 1-min load average around
the CPU run, so CPU timings measured beside other jobs show it.
"""
from __future__ import annotations

import argparse
import copy
import os
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from imutune.bench.report import host_info, load_average_text, markdown_table, new_figure, write_report
from imutune.data.recordings import load_watch
from imutune.models.resnet1d import create_model
from imutune.personalize.protocols import calibrate_then_use
from imutune.signal.windows import Normalizer, WindowConfig, make_windows
from imutune.train.loop import FINETUNE, PRETRAIN, train


def _run(device: str, model0, xs, ys, xt, yt, pre_cfg, ft_cfg, threads: int | None) -> dict:
    model = copy.deepcopy(model0)
    t = time.perf_counter()
    pre = train(model, xs, ys, config=replace(pre_cfg, device=device, threads=threads), progress=False,
                desc=f"pretrain[{device}]")
    pre_s = time.perf_counter() - t
    t = time.perf_counter()
    ft = train(model, xt, yt, config=replace(ft_cfg, device=device, threads=threads), progress=False,
               desc=f"finetune[{device}]")
    ft_s = time.perf_counter() - t
    return {"device": device, "pretrain_loss": pre["loss"], "finetune_loss": ft["loss"],
            "pretrain_seconds": pre_s, "finetune_seconds": ft_s,
            "pretrain_windows_per_s": len(ys) * pre_cfg.epochs / max(pre["seconds"], 1e-9),
            "finetune_windows_per_s": len(yt) * ft_cfg.epochs / max(ft["seconds"], 1e-9)}


def _agreement(a: list[float], b: list[float]) -> dict:
    a, b = np.asarray(a), np.asarray(b)
    rel = np.abs(a - b) / np.maximum(np.abs(b), 1e-12)
    return {"max_rel_diff": float(rel.max()), "mean_rel_diff": float(rel.mean()),
            "final_rel_diff": float(rel[-1])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/bench_gpu")
    ap.add_argument("--model", default="resnet1d34")
    ap.add_argument("--quick", action="store_true", help="1 source subject, 1 s hop, 1+2 epochs: CPU part in minutes")
    ap.add_argument("--threads", type=int, default=None, help="CPU torch threads (default: the loop's rule)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    out = Path(args.out)
    win = WindowConfig(hop_s=1.0 if args.quick else 0.5)
    subjects = (1,) if args.quick else tuple(range(1, 9))
    target = 10
    src = make_windows(load_watch(subjects=subjects), win)
    cal, _ = calibrate_then_use(load_watch(subjects=(target,)), window_s=win.window_s)
    tgt = make_windows(cal, win)
    norm = Normalizer.fit(src.x)
    pre_cfg = replace(PRETRAIN, epochs=1 if args.quick else 10, seed=args.seed)
    ft_cfg = replace(FINETUNE, epochs=2 if args.quick else 30, seed=args.seed)
    torch.manual_seed(args.seed)
    model0 = create_model(args.model, in_channels=len(src.channels), num_classes=src.num_classes)
    n_params = sum(p.numel() for p in model0.parameters())
    has_cuda = torch.cuda.is_available()
    runs = {}
    if has_cuda:
        runs["cuda"] = _run("cuda", model0, norm(src.x), src.y, norm(tgt.x), tgt.y, pre_cfg, ft_cfg, None)
        runs["cuda"]["gpu"] = torch.cuda.get_device_name(0)
    load0 = os.getloadavg()[0]
    runs["cpu"] = _run("cpu", model0, norm(src.x), src.y, norm(tgt.x), tgt.y, pre_cfg, ft_cfg, args.threads)
    runs["cpu"]["load_average_1min"] = [load0, os.getloadavg()[0]]    # around the CPU run: the report's CPU line
    agree = None
    if has_cuda:
        agree = {"pretrain": _agreement(runs["cuda"]["pretrain_loss"], runs["cpu"]["pretrain_loss"]),
                 "finetune": _agreement(runs["cuda"]["finetune_loss"], runs["cpu"]["finetune_loss"])}
    res = {"model": args.model, "parameters": int(n_params), "quick": args.quick, "source_windows": len(src),
           "target_windows": len(tgt), "pretrain_epochs": pre_cfg.epochs, "finetune_epochs": ft_cfg.epochs,
           "cuda_present": has_cuda, "runs": runs, "loss_agreement": agree,
           "host": {**host_info(), "cpu_threads": torch.get_num_threads()}}
    rows = [[d, f"{r['pretrain_windows_per_s']:.1f}", f"{r['finetune_windows_per_s']:.1f}",
             f"{r['pretrain_seconds']:.1f}", f"{r['finetune_seconds']:.1f}", f"{r['pretrain_loss'][-1]:.4f}",
             f"{r['finetune_loss'][-1]:.4f}"] for d, r in runs.items()]
    lines = [f"# GPU check: {args.model} ({n_params:,} parameters)", "",
             f"Pretrain {pre_cfg.epochs} epochs on {len(src)} windows (watch subjects {subjects}), fine-tune "
             f"{ft_cfg.epochs} epochs on {len(tgt)} calibration windows of subject {target}; seed {args.seed}.", "",
             markdown_table(["device", "pretrain windows/s", "fine-tune windows/s", "pretrain s", "fine-tune s",
                             "final pretrain loss", "final fine-tune loss"], rows), ""]
    if has_cuda:
        lines += [f"GPU: {runs['cuda']['gpu']}. Loss-curve agreement (relative difference CUDA vs CPU per epoch): "
                  f"pretrain max {agree['pretrain']['max_rel_diff']:.2e}, fine-tune max "
                  f"{agree['finetune']['max_rel_diff']:.2e}.", ""]
    else:
        lines += ["**No CUDA GPU was present on this machine**: only the CPU part ran; no GPU throughput or "
                  "loss-curve agreement was measured.", ""]
    load = load_average_text(runs["cpu"]["load_average_1min"])
    lines += [f"CPU: {res['host']['cpu']} ({res['host']['cores']} cores, {load} around the CPU run).", "",
              "![loss curves](gpu_loss.png)", ""]
    fig, axes = new_figure(1, 2, figsize=(9, 3.5))
    for d, r in runs.items():
        axes[0].plot(range(1, len(r["pretrain_loss"]) + 1), r["pretrain_loss"], marker="o", label=d)
        axes[1].plot(range(1, len(r["finetune_loss"]) + 1), r["finetune_loss"], marker="o", label=d)
    for ax, t in zip(axes, ("pretrain", "fine-tune")):
        ax.set_xlabel("epoch")
        ax.set_ylabel("training loss")
        ax.set_title(t)
        ax.legend()
    write_report(out, "gpu", res, "\n".join(lines), {"gpu_loss": fig})
    print("\n".join(lines))


if __name__ == "__main__":
    main()
