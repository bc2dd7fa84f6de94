"""On-device FilterLoss training benchmark (``imutune bench ondevice``).

Protocol (calibrate-then-use, :func:`imutune.personalize.protocols.calibrate_then_use`): the watch
data's subjects 1..``users`` are the target users. The base models are trained cross-subject in two
folds (targets of the first half of the subjects use a base pretrained on the other half, and vice
versa), so no target's data are in its base model and one training program per fold and trainable set
serves all of the fold's users. Each target's recordings are split in time: the first half is its
calibration data, the rest (after a one-window gap) its test data. FilterLoss weights are the
first-version quality filter on the base model's probabilities
(:func:`imutune.ondevice.personalize.quality_weights`), the same for both sides.

For each trainable set (``head``, ``last-block``, ``rows``: Borda-ranked top ``filters_fraction``
filter rows of every conv layer + head, masked gradients) it compares

* **on-device**: ``steps`` SGD steps (momentum, constant lr, batch 16) through ``model_train.pte``
  in the ExecuTorch training runtime (:class:`imutune.ondevice.loop.OnDeviceTrainer`, 1 thread);
* **server-side**: :func:`imutune.train.loop.train` with the fine-tuning preset
  (:data:`imutune.train.config.FINETUNE`: AdamW, one-cycle, 30 epochs, batch 32), FilterLoss with the
  same weights, the same trainable set and row masks (:class:`~imutune.train.loop.GradientMask`) and
  batch norm frozen in eval mode (:class:`~imutune.train.loop.FrozenModules`), as on the device;

on the test windows (macro-F1, accuracy), plus the on-device step count at which the macro-F1 first
reaches the server-side one (scored every ``eval_every`` steps). Also measured: per-step latency
p50/p95 (batch 16, 1 ExecuTorch thread), peak memory of a process running the program (resident set
size, ``ru_maxrss``, and its growth over the process after loading), ``.pte`` sizes, and weight parity
of ``parity_steps`` steps against eager PyTorch (:func:`imutune.ondevice.loop.eager_sgd`).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..metrics import accuracy, latency_summary, macro_f1
from ..signal.windows import WindowConfig
from ..train.config import FINETUNE, PRETRAIN, TrainConfig
from .report import jsonable as _jsonable

__all__ = ["OnDeviceBenchConfig", "quick_config", "run_ondevice_bench"]


@dataclass(frozen=True)
class OnDeviceBenchConfig:
    """Settings of ``imutune bench ondevice`` (module docstring)."""

    model_name: str = "mobilecnn1d-train"
    users: int = 10                                       # watch subjects 1..users are the targets
    window: WindowConfig = WindowConfig()                 # 2 s windows, 0.5 s hop, 50 Hz
    pretrain: TrainConfig = replace(PRETRAIN, epochs=15, device="cpu")
    server: TrainConfig = replace(FINETUNE, device="cpu")
    variants: tuple[str, ...] = ("head", "last-block", "rows")
    batch_size: int = 16                                  # static batch of the training programs
    steps: int = 800                                      # on-device SGD steps per user
    lr: float = 0.02
    momentum: float = 0.9
    filters_fraction: float = 0.1                         # "rows": share of each layer's filters
    eval_every: int = 50                                  # on-device scoring interval (steps)
    parity_steps: int = 50
    latency_steps: int = 200
    threads: int = 1
    seed: int = 0
    subjects: tuple[int, ...] = field(default=tuple(range(1, 11)))   # watch subjects loaded


def quick_config() -> OnDeviceBenchConfig:
    """Smoke run: tiny model, 1-s windows, 2 users, few steps."""
    return OnDeviceBenchConfig(model_name="tinycnn1d-train", users=2, subjects=(1, 2, 3, 4),
                               window=WindowConfig(window_s=1.0, hop_s=0.5),
                               pretrain=replace(PRETRAIN, epochs=2, device="cpu"),
                               server=replace(FINETUNE, epochs=3, device="cpu"), steps=60, eval_every=20,
                               parity_steps=20, latency_steps=30, variants=("head", "last-block", "rows"))


def run_ondevice_bench(out_dir: str | os.PathLike, config: OnDeviceBenchConfig = OnDeviceBenchConfig(), *,
                       command: str = "imutune bench ondevice") -> dict[str, Any]:
    """Run the benchmark; writes ``ondevice.json``, ``ondevice.md`` and ``ondevice_curves.png`` into ``out_dir``.

    Returns
    -------
    dict
        The JSON report: ``config``, ``rows`` (per variant), ``users`` (per user and variant), ``targets``
        (each target with its measured value and whether it is met), ``host``, ``command``.
    """
    import torch

    from ..data.recordings import load_watch
    from ..personalize.protocols import calibrate_then_use
    from ..signal.windows import make_windows
    from ..train.pretrain import pretrain

    torch.set_num_threads(config.threads)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    recs = load_watch(subjects=list(config.subjects))
    users = sorted({r.user for r in recs})
    targets = users[:config.users]
    half = len(users) // 2
    folds = [users[:half], users[half:]]
    per_user: list[dict] = []
    programs: dict[tuple[int, str], Any] = {}
    bases: dict[int, Any] = {}
    curves: dict[str, list] = {v: [] for v in config.variants}
    sizes: dict[str, int] = {}
    parity: dict[str, float] = {}
    latency: dict[str, dict] = {}
    memory: dict[str, dict] = {}
    for fi, fold in enumerate(folds):
        fold_targets = [u for u in targets if u in fold]
        if not fold_targets:
            continue
        source = [r for r in recs if r.user not in fold]
        w_src = make_windows(source, config.window)
        bundle = pretrain(w_src, model_name=config.model_name, window=config.window,
                          train_config=replace(config.pretrain, seed=config.seed), progress=False)
        bases[fi] = bundle
        xs = bundle.normalizer(w_src.x[np.random.default_rng(0).permutation(len(w_src))[:256]])
        for v in config.variants:
            programs[(fi, v)] = _export(bundle, xs, v, config)
            sizes.setdefault(v, len(programs[(fi, v)].buffer))
        if fi == 0:
            sizes["model.pte (inference, batch 1)"] = _inference_pte_size(bundle, xs)
        for u in fold_targets:
            tgt = [r for r in recs if r.user == u]
            cal, test = calibrate_then_use(tgt, window_s=config.window.window_s)
            wc, wt = make_windows(cal, config.window), make_windows(test, config.window)
            row = _one_user(u, bundle, wc, wt, programs, fi, config, curves, first=(not parity))
            if "parity" in row:
                parity.update(row.pop("parity"))
                latency.update(row.pop("latency"))
            per_user.append(row)
    for v in config.variants:
        memory[v] = _memory_probe(programs[(0, v)].buffer, config)
    rows = _summarize(per_user, config, sizes, parity, latency, memory)
    res = {"config": _jsonable(asdict(config)), "rows": rows, "users": per_user, "sizes_bytes": sizes,
           "targets": _targets(rows), "command": command, "seconds": time.perf_counter() - t_start,
           "equivalence": _equivalence(bases[0], config)}
    from .report import host_info, write_report

    res["host"] = host_info()
    loads = [x for r in rows for x in r["load_average_1min"]]
    res["note"] = (f"timings measured on this host ({os.cpu_count()} cores; 1-min load average "
                   f"{min(loads):.1f}-{max(loads):.1f} around the latency measurements); "
                   f"{config.threads} ExecuTorch thread(s)")
    write_report(out, "ondevice", res, _markdown(res), {"ondevice_curves": _figure(curves, per_user, config)})
    return res


def _export(bundle, xs: np.ndarray, variant: str, config: OnDeviceBenchConfig):
    from ..ondevice.program import export_training_program

    return export_training_program(bundle.model.cpu().eval(), xs, variant=variant, batch_size=config.batch_size)


def _inference_pte_size(bundle, xs: np.ndarray) -> int:
    from ..deploy.export import export_pte

    return len(export_pte(bundle.model.cpu().eval(), xs[:1]).buffer)


def _masks_for(model, variant: str, xn: np.ndarray, trainable: list[str], fraction: float):
    from ..ondevice.loop import row_masks
    from ..personalize.selective import rank_filters, select_filters

    if variant != "rows":
        return {}, None
    sel = select_filters(rank_filters(model, xn, device="cpu"), fraction)
    return row_masks(model, sel, trainable), sel


def _one_user(user: str, bundle, wc, wt, programs, fi: int, config: OnDeviceBenchConfig, curves: dict,
              *, first: bool) -> dict:
    import torch

    from ..ondevice.loop import OnDeviceTrainer, batch_indices, eager_sgd, weight_parity
    from ..ondevice.personalize import quality_weights, tuned_model
    from ..train.loop import predict_proba

    base = bundle.model.cpu().eval()
    k = len(bundle.class_names)
    xn, y = bundle.normalizer(wc.x), wc.y
    xt, yt = bundle.normalizer(wt.x), wt.y
    w, counts = quality_weights(predict_proba(base, xn, device="cpu"), y)
    row: dict[str, Any] = {"user": user, "n_calibration": int(len(y)), "n_test": int(len(yt)),
                           "category_counts": counts, "base": _score(base, xt, yt, k),
                           "random_forest": _random_forest(wc, wt, config)}
    for v in config.variants:
        prog = programs[(fi, v)]
        trainable = prog.trainable
        masks, _ = _masks_for(base, v, xn, trainable, config.filters_fraction)
        # on-device
        tr = OnDeviceTrainer(prog.buffer, lr=config.lr, momentum=config.momentum, masks=masks,
                             num_threads=config.threads)
        batches = batch_indices(len(y), tr.batch_size, config.steps, seed=config.seed)
        curve, times = [], []
        for i, idx in enumerate(batches):
            t0 = time.perf_counter()
            tr.step(xn[idx], y[idx], w[idx])
            times.append(1000.0 * (time.perf_counter() - t0))
            if (i + 1) % config.eval_every == 0 or i + 1 == config.steps:
                curve.append([i + 1, _score(tuned_model(base, tr.parameters()), xt, yt, k)["macro_f1"]])
        ondev = _score(tuned_model(base, tr.parameters()), xt, yt, k)
        # server-side
        server = _score(_server(base, trainable, masks, xn, y, w, config), xt, yt, k)
        reach = next((s for s, f1 in curve if f1 >= server["macro_f1"] - 1e-12), None)
        row[v] = {"ondevice": ondev, "server": server, "steps_to_server": reach, "curve": curve,
                  "train_seconds_ondevice": float(sum(times)) / 1000.0}
        curves[v].append(curve)
        if first:
            # parity on the real model: the same steps in eager PyTorch, checked after 1, 10 and parity_steps steps
            pb = batches[:config.parity_steps]
            t2 = OnDeviceTrainer(prog.buffer, lr=config.lr, momentum=config.momentum, masks=masks,
                                 num_threads=config.threads)
            traj = []
            for s_i, idx in enumerate(pb):
                t2.step(xn[idx], y[idx], w[idx])
                if s_i + 1 in (1, 10, len(pb)):
                    ref = eager_sgd(base, trainable, xn, y, w, pb[:s_i + 1], lr=config.lr, momentum=config.momentum,
                                    masks=masks)
                    got = t2.parameters()
                    worst = max(trainable, key=lambda n: weight_parity({n: got[n]}, {n: ref[n]}))
                    traj.append({"steps": s_i + 1, "rel": weight_parity(got, ref), "worst": worst})
            row.setdefault("parity", {})[v] = traj[-1]["rel"]
            row["parity"][v + ":trajectory"] = traj
            if masks:
                st = base.state_dict()
                same = all(torch.equal(t2.parameters()[n][m == 0], st[n][m == 0]) for n, m in masks.items())
                row["parity"][v + ":masked_rows_bit_identical"] = bool(same)
            row.setdefault("latency", {})[v] = _latency(prog, base, trainable, masks, xn, y, w, config)
    return row


def _random_forest(wc, wt, config: OnDeviceBenchConfig) -> dict[str, float]:
    """The classical reference on the user's calibration windows (RandomForest on 13 statistics per channel),
    scored on the same test windows: ``{"accuracy", "macro_f1"}``."""
    from ..personalize.reference import reference_score

    return reference_score(wc, wt, seed=config.seed)


def _latency(prog, base, trainable, masks, xn, y, w, config: OnDeviceBenchConfig) -> dict[str, Any]:
    """Per-step latency (ms) of the ExecuTorch program and, interleaved step by step under the same host load,
    of the same SGD step in eager PyTorch (1 thread each)."""
    import torch

    from ..ondevice.loop import OnDeviceTrainer, batch_indices
    from ..ondevice.model import training_net
    from ..train.losses import FilterLoss

    tr = OnDeviceTrainer(prog.buffer, lr=config.lr, momentum=config.momentum, masks=masks, num_threads=config.threads)
    net = training_net(base, trainable)
    opt = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=config.lr, momentum=config.momentum)
    loss_fn = FilterLoss(check_weights=False)
    et, eager = [], []
    batches = batch_indices(len(y), tr.batch_size, config.latency_steps + 5, seed=config.seed + 1)
    load_before = os.getloadavg()[0]
    for i, idx in enumerate(batches):
        t0 = time.perf_counter()
        tr.step(xn[idx], y[idx], w[idx])
        t1 = time.perf_counter()
        xb, yb, wb = torch.from_numpy(xn[idx]), torch.from_numpy(y[idx]), torch.from_numpy(w[idx])
        t2 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss_fn(net(xb), yb, wb).backward()
        opt.step()
        t3 = time.perf_counter()
        if i >= 5:   # warm-up
            et.append(1000.0 * (t1 - t0))
            eager.append(1000.0 * (t3 - t2))
    s_et, s_eager = latency_summary(et), latency_summary(eager)
    return {"p50": s_et["p50"], "p95": s_et["p95"], "min": float(min(et)), "n": len(et),
            "eager_p50": s_eager["p50"], "eager_p95": s_eager["p95"], "eager_min": float(min(eager)),
            "load_average_1min": [load_before, os.getloadavg()[0]]}


def _server(base, trainable: list[str], masks: dict, xn, y, w, config: OnDeviceBenchConfig):
    import copy

    from torch import nn

    from ..train.loop import FrozenModules, GradientMask, train
    from ..train.losses import FilterLoss

    m = copy.deepcopy(base)
    names = set(trainable)
    for k, p in m.named_parameters():
        p.requires_grad_(k in names)
    params = dict(m.named_parameters())
    hooks = [FrozenModules([mod for mod in m.modules() if isinstance(mod, nn.modules.batchnorm._BatchNorm)])]
    if masks:
        hooks.append(GradientMask([(params[k], mk) for k, mk in masks.items()]))
    train(m, xn, y, config=replace(config.server, seed=config.seed), loss_fn=FilterLoss(), sample_weights=w,
          progress=False, hooks=hooks)
    return m.eval()


def _score(model, x, y, k) -> dict[str, float]:
    from ..train.loop import predict_logits

    pred = predict_logits(model, x, device="cpu").argmax(1)
    return {"accuracy": accuracy(y, pred), "macro_f1": macro_f1(y, pred, k)}


def _memory_probe(buffer: bytes, config: OnDeviceBenchConfig) -> dict[str, float]:
    """Peak RSS of a fresh process that loads the program and runs 20 steps (MiB)."""
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "model_train.pte"
        p.write_bytes(buffer)
        proc = subprocess.run([sys.executable, "-m", "imutune.bench.ondevice", "--memory-probe", str(p),
                               str(config.threads)], capture_output=True, text=True, timeout=600)
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not line:
        return {"error": (proc.stderr or proc.stdout)[-500:]}
    return json.loads(line[-1])


def _probe_main(path: str, threads: int) -> None:
    import resource

    import torch

    from ..ondevice.loop import OnDeviceTrainer

    def rss_mib() -> float:
        with open("/proc/self/status") as fh:
            for ln in fh:
                if ln.startswith("VmRSS:"):
                    return int(ln.split()[1]) / 1024.0
        return float("nan")

    torch.set_num_threads(1)
    before = rss_mib()
    tr = OnDeviceTrainer(path, num_threads=threads)
    m = tr.metadata
    rng = np.random.default_rng(0)
    x = rng.standard_normal((m["batch_size"], m["in_channels"], m["window_samples"])).astype(np.float32)
    y = rng.integers(0, m["num_classes"], m["batch_size"])
    w = np.ones(m["batch_size"], np.float32)
    loaded = rss_mib()
    for _ in range(20):
        tr.step(x, y, w)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    print(json.dumps({"rss_before_load_mib": before, "rss_after_load_mib": loaded, "peak_rss_mib": peak,
                      "training_growth_mib": peak - before}))


def _summarize(per_user, config, sizes, parity, latency, memory) -> list[dict]:
    rows = []
    for v in config.variants:
        od = [u[v]["ondevice"]["macro_f1"] for u in per_user]
        sv = [u[v]["server"]["macro_f1"] for u in per_user]
        reach = [u[v]["steps_to_server"] for u in per_user]
        rows.append({"variant": v, "users": len(per_user),
                     "ondevice_macro_f1": float(np.mean(od)), "server_macro_f1": float(np.mean(sv)),
                     "gap_points": 100.0 * (float(np.mean(od)) - float(np.mean(sv))),
                     "base_macro_f1": float(np.mean([u["base"]["macro_f1"] for u in per_user])),
                     "random_forest_macro_f1": float(np.mean([u["random_forest"]["macro_f1"] for u in per_user])),
                     "ondevice_accuracy": float(np.mean([u[v]["ondevice"]["accuracy"] for u in per_user])),
                     "server_accuracy": float(np.mean([u[v]["server"]["accuracy"] for u in per_user])),
                     "users_reaching_server": int(sum(r is not None for r in reach)),
                     "median_steps_to_server": (float(np.median([r for r in reach if r is not None]))
                                                if any(r is not None for r in reach) else None),
                     "step_p50_ms": latency[v]["p50"], "step_p95_ms": latency[v]["p95"],
                     "step_min_ms": latency[v]["min"], "eager_step_p50_ms": latency[v]["eager_p50"],
                     "load_average_1min": latency[v]["load_average_1min"],
                     "parity_trajectory": parity.get(v + ":trajectory"),
                     "pte_bytes": sizes[v], "parity_rel": parity[v],
                     "masked_rows_bit_identical": parity.get(v + ":masked_rows_bit_identical"),
                     "peak_rss_mib": memory[v].get("peak_rss_mib"),
                     "training_growth_mib": memory[v].get("training_growth_mib")})
    return rows


def _targets(rows) -> dict[str, Any]:
    by = {r["variant"]: r for r in rows}
    t: dict[str, Any] = {}
    if "last-block" in by:
        r = by["last-block"]
        t["step_p50_ms_last_block_b16_1thread"] = {"value": r["step_p50_ms"], "target": "<= 5", "met": r["step_p50_ms"] <= 5}
    for v, r in by.items():
        t[f"macro_f1_gap_points_{v}"] = {"value": r["gap_points"], "target": ">= -1", "met": r["gap_points"] >= -1.0}
        t[f"parity_rel_{v}"] = {"value": r["parity_rel"], "target": "<= 1e-5", "met": r["parity_rel"] <= 1e-5}
    return t


def _equivalence(bundle, config: OnDeviceBenchConfig) -> dict[str, Any]:
    """The ``*-train`` model against its plain twin with the same weights (logits, top-1)."""
    import torch

    from ..models.resnet1d import create_model

    plain_name = config.model_name.removesuffix("-train")
    m = bundle.model.cpu().eval()
    plain = create_model(plain_name, in_channels=m.in_channels, num_classes=m.num_classes,
                         **{k: v for k, v in asdict(m.config).items()}).eval()
    plain.load_state_dict(m.state_dict())
    x = torch.randn(256, m.in_channels, config.window.window_samples, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b = m(x), plain(x)
    return {"plain_model": plain_name, "max_abs_logit_diff": float((a - b).abs().max()),
            "top1_agreement": float((a.argmax(1) == b.argmax(1)).float().mean())}


def _markdown(res: dict) -> str:
    from .report import markdown_table

    hdr = ["trainable set", "on-device macro-F1", "server macro-F1", "gap (points)", "base macro-F1",
           "RandomForest macro-F1 (same calibration windows)", "users reaching server", "median steps to server", "step p50 ms", "step p95 ms", "step min ms",
           "eager PyTorch step p50 ms", "model_train.pte bytes",
           "parity (rel.)", "peak RSS MiB"]
    rows = [[r["variant"], r["ondevice_macro_f1"], r["server_macro_f1"], f"{r['gap_points']:+.2f}", r["base_macro_f1"],
             r.get("random_forest_macro_f1", "n/a"), f"{r['users_reaching_server']}/{r['users']}", r["median_steps_to_server"], f"{r['step_p50_ms']:.2f}",
             f"{r['step_p95_ms']:.2f}", f"{r['step_min_ms']:.2f}", f"{r['eager_step_p50_ms']:.2f}", r["pte_bytes"], f"{r['parity_rel']:.2g}",
             "n/a" if r["peak_rss_mib"] is None else f"{r['peak_rss_mib']:.0f}"] for r in res["rows"]]
    c = res["config"]
    lines = [f"# On-device FilterLoss training ({c['model_name']}, {res['rows'][0]['users']} users, calibrate-then-use)",
             "", markdown_table(hdr, rows), "",
             f"On-device: {c['steps']} SGD steps (lr {c['lr']}, momentum {c['momentum']}, batch {c['batch_size']}) "
             f"through model_train.pte (ExecuTorch XNNPACK, {c['threads']} thread). Server-side: imutune.train.loop.train "
             "(FINETUNE preset: AdamW one-cycle), FilterLoss, same weights, trainable set and row masks, batch norm "
             "frozen. Parity: max relative weight difference after "
             f"{c['parity_steps']} steps vs eager PyTorch SGD. Sizes: " +
             ", ".join(f"{k} {v} B" for k, v in res["sizes_bytes"].items()) + ".",
             "", "Parity trajectories (steps, max relative weight difference, worst tensor): " +
             "; ".join(f"{r['variant']}: " + ", ".join(f"{t['steps']}: {t['rel']:.2g} ({t['worst']})"
                                                     for t in (r["parity_trajectory"] or [])) for r in res["rows"]) + ".",
             "", "Step latency: ExecuTorch and eager PyTorch steps interleaved one by one (same host load; 1-min load "
             "average " + ", ".join(f"{r['load_average_1min'][0]:.1f}" for r in res["rows"]) + " when measured).",
             "", f"Training-friendly model vs its plain twin with the same weights: {res['equivalence']}.",
             "", f"Command: `{res['command']}`; {res['seconds']:.0f} s. {res['note']}.", ""]
    lines += ["| target | value | goal | met |", "|---|---|---|---|"]
    lines += [f"| {k} | {v['value']:.4g} | {v['target']} | {v['met']} |" for k, v in res["targets"].items()]
    return "\n".join(lines)


def _figure(curves: dict, per_user: list, config: OnDeviceBenchConfig):
    from .report import new_figure

    fig, axes = new_figure(1, len(config.variants), figsize=(4.2 * len(config.variants), 3.6), squeeze=False)
    for ax, v in zip(axes[0], config.variants):
        cs = [c for c in curves[v] if c]
        if cs:
            n = min(len(c) for c in cs)
            steps = [s for s, _ in cs[0][:n]]
            mean = np.mean([[c[i][1] for i in range(n)] for c in cs], axis=0)
            ax.plot(steps, mean, label="on-device (mean over users)")
        ax.axhline(float(np.mean([u[v]["server"]["macro_f1"] for u in per_user])), color="k", ls="--",
                   label="server-side FilterLoss")
        ax.set_title(v)
        ax.set_xlabel("SGD steps (batch 16)")
        ax.set_ylabel("test macro-F1")
        ax.legend(loc="lower right", fontsize=7)
    return fig




if __name__ == "__main__":  # memory probe subprocess: python -m imutune.bench.ondevice --memory-probe PATH THREADS
    if len(sys.argv) == 4 and sys.argv[1] == "--memory-probe":
        _probe_main(sys.argv[2], int(sys.argv[3]))
