"""Latency benchmark: every backend side by side, against this host's compute limit.

``imutune bench latency --out DIR`` (or ``python benchmarks/latency.py --out DIR``)
measures, in one run: PyTorch eager, ONNX Runtime fp32 and int8 (static QDQ),
ExecuTorch XNNPACK fp32 and int8 (PT2E) and ExecuTorch portable kernels; for
``mobilecnn1d`` and ``resnet1d34``; at 1 and 2 threads; at two window
lengths (T = 100: 2 s at 50 Hz, and T = 500: 5 s at 100 Hz; 6 channels,
8 classes, batch 1). Each model file is exported and reloaded with its
manifest exactly as an app would (:func:`imutune.deploy.export.write_exports`,
:func:`imutune.deploy.backends.load_backend`).

Per configuration it reports:

* latency of ``backend.run`` on one (1, C, T) window: p50 / p95 / p99 in ms,
  after warm-up (at least 5 calls and 0.2 s), over three rounds of at least
  ``min_reps`` calls and ``round_s`` seconds each (fewer for very slow
  configurations, capped at ``max_config_s``); the spread of the three
  round medians shows how stable the median is;
* per-call overhead: the same measurement on a near-empty model of the same
  input and output (a 1x1 conv from C to K channels and a global average
  pool) -- what a call costs before any real compute;
* FLOPs per window, counted with ``torch.utils.flop_counter.FlopCounterMode``
  (convolutions and matrix multiplies, 2 FLOPs per multiply-add; batch norm,
  activations and pooling are not counted), achieved GFLOP/s = FLOPs / p50,
  and the fraction of this host's single-core fp32 peak, with ``x floor`` =
  p50 / (FLOPs / peak);
* the peak: the larger of (a) a large single-thread fp32 matrix multiply
  measured on the spot (2048 x 2048 with torch and, if present, numpy's
  BLAS, best of 5, pinned to one core) and (b) the FMA peak, vector lanes
  (from the CPU flags: AVX-512 16, AVX2 8, SSE/NEON 4 fp32) x 2 FLOPs x
  ``fma_units`` (2 per core, as on current x86 and big Arm cores; an
  assumption) x clock (``cpuinfo_max_freq``, else ``cpu MHz``). Both are
  printed; int8 configurations are compared with the fp32 peak too (they
  can exceed it).

Threads are enforced through device profiles: a run at n threads pins the
process to the first n available cores and gives every backend n threads;
the threads each engine reports (:meth:`threads_in_effect`) are recorded.

Further sections: int8 accuracy (fp32 vs int8 of the same weights on
held-out windows of the embedded watch data, calibrated on training windows;
``resnet1d34`` is trained for a few epochs on CPU only, see ``accuracy_epochs``),
the runtime's own work against the model call in a replay of the mobile model
under the ``phone-big-core`` profile (pacing off), and a long stream replayed
from disk in constant memory (``stream_hours`` of 9-channel data at 100 Hz
written with :class:`imutune.data.streams.NpzStreamWriter`). The targets of the
issue are evaluated at the end of the report.

Outputs: ``latency.json``, ``latency.md`` and ``latency.png`` (p50 latency per
backend) in ``out_dir``.
"""
from __future__ import annotations

import os
import time
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .. import _validation as V
from .._host import cpu_flags, cpuinfo
from .report import host_info, markdown_table, new_figure, write_report

__all__ = ["LatencyBenchConfig", "quick_config", "run_latency_benchmark", "measure_peak", "fma_peak",
           "count_flops", "time_calls", "near_empty_model", "BACKENDS", "BACKEND_LABELS"]

#: Backend keys, in report order.
BACKENDS = ("torch", "onnxruntime-fp32", "onnxruntime-int8", "executorch-xnnpack-fp32", "executorch-xnnpack-int8",
            "executorch-portable")
#: Short labels for tables and plots.
BACKEND_LABELS = {"torch": "PyTorch eager", "onnxruntime-fp32": "ORT fp32", "onnxruntime-int8": "ORT int8",
                  "executorch-xnnpack-fp32": "ET XNNPACK fp32", "executorch-xnnpack-int8": "ET XNNPACK int8",
                  "executorch-portable": "ET portable"}
_VARIANT = {"onnxruntime-fp32": "onnx", "onnxruntime-int8": "onnx-int8", "executorch-xnnpack-fp32": "pte",
            "executorch-xnnpack-int8": "pte-int8", "executorch-portable": "pte-portable"}


@dataclass(frozen=True)
class LatencyBenchConfig:
    """Settings of ``imutune bench latency``."""

    models: tuple[str, ...] = ("mobilecnn1d", "resnet1d34")
    windows: tuple[tuple[int, float], ...] = ((100, 50.0), (500, 100.0))   # (T samples, sample rate Hz)
    threads: tuple[int, ...] = (1, 2)
    backends: tuple[str, ...] = BACKENDS
    in_channels: int = 6
    num_classes: int = 8
    min_reps: int = 30              # calls per round at least
    round_s: float = 0.4            # seconds per round at least
    rounds: int = 3                 # rounds per configuration (spread of medians = stability)
    max_config_s: float = 4.0       # stop a configuration's rounds early past this (slow backends)
    fma_units: int = 2              # FMA pipes per core assumed for the FMA peak
    accuracy: bool = True           # int8 vs fp32 accuracy on the watch data
    accuracy_models: tuple[str, ...] = ("mobilecnn1d", "resnet1d34")
    accuracy_epochs: dict = field(default_factory=lambda: {"mobilecnn1d": 15, "resnet1d34": 3})
    accuracy_max_train_windows: int | None = None   # subsample training windows (speed), None: all
    overhead_replay: bool = True    # runtime work vs model call, mobile model, phone-big-core profile
    stream_hours: float = 24.0      # long stream replayed from disk (0: skip)
    seed: int = 0

    def __post_init__(self) -> None:
        for b in self.backends:
            V.check_choice("backends entry", b, BACKENDS)
        for t in self.threads:
            V.check_int_at_least("threads entry", t, 1)
        for T, fs in self.windows:
            V.check_int_at_least("window length T", T, 8)
            V.check_positive("sample rate", fs)
        V.check_int_at_least("min_reps", self.min_reps, 1)
        V.check_int_at_least("rounds", self.rounds, 1)
        V.check_int_at_least("fma_units", self.fma_units, 1)
        if self.stream_hours < 0:
            raise ValueError(f"stream_hours must be >= 0, got {self.stream_hours!r}")


def quick_config(**overrides: Any) -> LatencyBenchConfig:
    """A small run (tiny model, short windows, 1 thread, few repetitions) for tests and smoke checks."""
    base = LatencyBenchConfig(models=("tinycnn1d",), windows=((32, 50.0),), threads=(1,), min_reps=5,
                              round_s=0.02, rounds=2, max_config_s=1.0, accuracy=False, overhead_replay=False,
                              stream_hours=0.0)
    return replace(base, **overrides)


# --------------------------------------------------------------------------- measurement helpers


def time_calls(fn: Callable[[], Any], *, min_reps: int = 30, round_s: float = 0.4, rounds: int = 3,
               max_s: float = 4.0, warmup_calls: int = 5, warmup_s: float = 0.2) -> dict:
    """Time ``fn()`` repeatedly.

    Warm-up: at least ``warmup_calls`` calls and ``warmup_s`` seconds (at
    most 50 calls). Then ``rounds`` rounds, each of at least ``min_reps``
    calls and ``round_s`` seconds; a round stops early once the whole
    measurement passed ``max_s`` (with at least 3 calls), and later rounds
    are skipped.

    Returns
    -------
    dict
        ``p50``, ``p95``, ``p99``, ``min``, ``max``, ``mean`` (ms), ``reps``,
        ``rounds`` (completed), ``round_medians_ms``, ``median_spread_pct``
        (max - min of the round medians over their median, in %).
    """
    perf = time.perf_counter
    t = perf()
    k = 0
    while k < warmup_calls or (perf() - t < warmup_s and k < 50):
        fn()
        k += 1
    samples: list[float] = []
    medians: list[float] = []
    start = perf()
    for _ in range(rounds):
        r: list[float] = []
        t_round = perf()
        while True:
            a = perf()
            fn()
            r.append(perf() - a)
            now = perf()
            if len(r) >= min_reps and now - t_round >= round_s:
                break
            if now - start > max_s and len(r) >= 3:
                break
        samples.extend(r)
        medians.append(float(np.median(r)) * 1e3)
        if perf() - start > max_s:
            break
    a = np.asarray(samples) * 1e3
    p50, p95, p99 = np.percentile(a, [50, 95, 99])
    med = float(np.median(medians))
    return {"p50": float(p50), "p95": float(p95), "p99": float(p99), "min": float(a.min()), "max": float(a.max()),
            "mean": float(a.mean()), "reps": int(a.size), "rounds": len(medians),
            "round_medians_ms": medians,
            "median_spread_pct": float(100 * (max(medians) - min(medians)) / med) if med > 0 else 0.0}


def count_flops(model: Any, example: Any) -> int:
    """FLOPs of one forward pass (``torch.utils.flop_counter.FlopCounterMode``)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as fc, torch.no_grad():
        model(example)
    return int(fc.get_total_flops())


def near_empty_model(in_channels: int, num_classes: int):
    """The smallest model with the real models' input and output: 1x1 conv (C -> K) and a global average pool."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv1d(in_channels, num_classes, 1), nn.AdaptiveAvgPool1d(1), nn.Flatten())
    m.in_channels, m.num_classes = in_channels, num_classes
    return m.eval()


def _clock_ghz() -> tuple[float | None, str]:
    p = Path("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq")
    try:
        return int(p.read_text().strip()) / 1e6, "cpuinfo_max_freq"
    except (OSError, ValueError):
        pass
    try:
        return float(cpuinfo()["cpu MHz"]) / 1e3, "/proc/cpuinfo cpu MHz"
    except (KeyError, ValueError):
        return None, "unknown"


def fma_peak(*, fma_units: int = 2) -> dict:
    """Single-core fp32 FMA peak from the CPU's vector width and clock.

    Returns
    -------
    dict
        ``isa``, ``fp32_lanes``, ``fma_units``, ``clock_ghz``, ``clock_source``,
        ``gflops`` (lanes x 2 x units x GHz; None if the clock is unknown) and
        ``formula``.
    """
    flags = cpu_flags()
    if "avx512f" in flags:
        isa, lanes = "AVX-512", 16
    elif "avx2" in flags or "fma" in flags:
        isa, lanes = "AVX2/FMA", 8
    elif "asimd" in flags or "neon" in flags:
        isa, lanes = "NEON", 4
    else:
        isa, lanes = "SSE", 4
    ghz, src = _clock_ghz()
    g = None if ghz is None else lanes * 2 * fma_units * ghz
    return {"isa": isa, "fp32_lanes": lanes, "fma_units": fma_units, "clock_ghz": ghz, "clock_source": src,
            "gflops": g, "formula": f"{lanes} lanes x 2 FLOP/FMA x {fma_units} FMA units x "
                                    f"{'?' if ghz is None else f'{ghz:.3f}'} GHz"}


def measure_peak(*, n: int = 2048, repeats: int = 5, fma_units: int = 2) -> dict:
    """This host's single-core fp32 peak: the larger of a measured matmul and the FMA peak.

    The matmul (n x n by n x n, float32) runs with one thread pinned to one
    core, with torch and, when available, numpy's BLAS (limited to one thread
    with ``threadpoolctl``); the best of ``repeats`` runs counts.

    Returns
    -------
    dict
        ``matmul_torch_gflops``, ``matmul_numpy_gflops`` (None if not
        measured), ``matmul_gflops`` (the larger), ``fma`` (:func:`fma_peak`),
        ``peak_gflops`` (the larger of matmul and FMA peak) and ``peak_source``.
    """
    import torch

    from ..runtime.profiles import available_cores, pin_process

    prev = pin_process(available_cores()[:1])
    old_threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        a = torch.randn(n, n)
        b = torch.randn(n, n)
        a @ b
        best = min(_timed(lambda: a @ b) for _ in range(repeats))
        g_torch = 2 * n ** 3 / best / 1e9
        g_np = None
        try:
            from threadpoolctl import threadpool_limits

            an = np.random.default_rng(0).standard_normal((n, n)).astype(np.float32)
            bn = np.random.default_rng(1).standard_normal((n, n)).astype(np.float32)
            with threadpool_limits(limits=1):
                an @ bn
                best = min(_timed(lambda: an @ bn) for _ in range(repeats))
            g_np = 2 * n ** 3 / best / 1e9
        except ImportError:
            pass
    finally:
        torch.set_num_threads(old_threads)
        if prev is not None:
            pin_process(prev)
    fma = fma_peak(fma_units=fma_units)
    mm = max(g for g in (g_torch, g_np) if g is not None)
    peak, src = (mm, "matmul") if fma["gflops"] is None or mm >= fma["gflops"] else (fma["gflops"], "fma")
    return {"matmul_n": n, "matmul_torch_gflops": g_torch, "matmul_numpy_gflops": g_np, "matmul_gflops": mm,
            "fma": fma, "peak_gflops": peak, "peak_source": src}


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


# --------------------------------------------------------------------------- exports


def _manifest(model_name: str, C: int, K: int, T: int, fs: float):
    from ..deploy.manifest import Manifest

    return Manifest(model_name=model_name, model_config={}, class_names=tuple(f"class{k}" for k in range(K)),
                    channels=tuple(f"ch{c}" for c in range(C)), sample_rate_hz=fs, window_s=T / fs,
                    hop_s=T / fs / 4, norm_mean=(0.0,) * C, norm_std=(1.0,) * C)


def _export_all(model, model_name: str, out: Path, T: int, fs: float, cfg: LatencyBenchConfig,
                calib: np.ndarray, log) -> tuple[Any, dict]:
    """Write every file variant the configured backends need; returns (manifest, seconds per variant)."""
    from ..deploy.export import write_exports

    variants = [_VARIANT[b] for b in cfg.backends if b in _VARIANT]
    man = _manifest(model_name, cfg.in_channels, cfg.num_classes, T, fs)
    if not variants:
        return man, {}
    rng = np.random.default_rng(cfg.seed + 1)
    example = rng.standard_normal((8, cfg.in_channels, T)).astype(np.float32)
    times = {}
    merged = None
    for v in variants:  # one call per variant, to time each export
        t = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            m = write_exports(model, man, out / v, example, formats=(v,), calibration_windows=calib,
                              int8_min_agreement=0.0)
        times[v] = time.perf_counter() - t
        if merged is None:
            merged = m
        else:
            art_name, art_info = next(iter(m.artifacts.items()))
            merged = merged.with_artifact(art_name, **art_info)
        log(f"    exported {v} in {times[v]:.1f} s")
    return merged, times


def _load(backend_key: str, model, out: Path, manifest, threads: int, T: int):
    from ..deploy.backends import TorchBackend, load_backend

    if backend_key == "torch":
        return TorchBackend(model, num_threads=threads, window_samples=T)
    v = _VARIANT[backend_key]
    from ..deploy.export import ARTIFACT_NAMES

    name = ARTIFACT_NAMES[v]
    man = replace(manifest, artifacts={name: manifest.artifacts[name]})
    return load_backend(out / v / name, manifest=man, num_threads=threads)


# --------------------------------------------------------------------------- sections


def _bench_models(cfg: LatencyBenchConfig, work: Path, peak: float, log) -> tuple[list[dict], list[dict]]:
    import torch

    from ..models.resnet1d import create_model
    from ..runtime.profiles import DeviceProfile, apply_profile, available_cores

    rows, exports = [], []
    cores = available_cores()
    rng = np.random.default_rng(cfg.seed)
    for T, fs in cfg.windows:
        calib = rng.standard_normal((64, cfg.in_channels, T)).astype(np.float32)
        x = rng.standard_normal((1, cfg.in_channels, T)).astype(np.float32)
        entries = [("near-empty", near_empty_model(cfg.in_channels, cfg.num_classes))]
        for name in cfg.models:
            torch.manual_seed(cfg.seed)
            entries.append((name, create_model(name, in_channels=cfg.in_channels,
                                               num_classes=cfg.num_classes).eval()))
        for name, model in entries:
            flops = count_flops(model, torch.from_numpy(x))
            log(f"[{name} T={T}] {flops / 1e6:.2f} MFLOP per window; exporting")
            out = work / f"{name}_T{T}"
            manifest, times = _export_all(model, name, out, T, fs, cfg, calib, log)
            exports.append({"model": name, "T": T, "export_s": times})
            for n in cfg.threads:
                if n > len(cores):
                    log(f"  skipping {n} threads: this process may use only {len(cores)} core(s)")
                    continue
                prof = DeviceProfile(f"bench-{n}-thread", f"{n} thread(s) pinned to cores {list(cores[:n])}",
                                     num_threads=n, cpu_affinity=tuple(cores[:n]))
                with apply_profile(prof):
                    for key in cfg.backends:
                        backend = _load(key, model, out, manifest, n, T)
                        backend.prepare()
                        eff = backend.threads_in_effect()
                        st = time_calls(lambda b=backend: b.run(x), min_reps=cfg.min_reps, round_s=cfg.round_s,
                                        rounds=cfg.rounds, max_s=cfg.max_config_s)
                        row = {"model": name, "T": T, "sample_rate_hz": fs, "threads": n, "backend": key,
                               "threads_in_effect": eff, "flops": flops, **{k: st[k] for k in st}}
                        row["gflops"] = flops / (st["p50"] / 1e3) / 1e9
                        row["frac_core_peak"] = row["gflops"] / peak
                        row["floor_ms"] = flops / (peak * 1e9) * 1e3
                        row["x_floor"] = st["p50"] / row["floor_ms"] if row["floor_ms"] > 0 else None
                        rows.append(row)
                        log(f"  {n}t {BACKEND_LABELS[key]:16s} p50 {st['p50']:.4f} ms  p95 {st['p95']:.4f}  "
                            f"p99 {st['p99']:.4f}  reps {st['reps']}  {row['gflops']:.1f} GFLOP/s  "
                            f"threads={eff}")
                        del backend
    # per-call overhead: the near-empty model's p50 for the same backend, T and threads
    empty = {(r["T"], r["threads"], r["backend"]): r["p50"] for r in rows if r["model"] == "near-empty"}
    for r in rows:
        r["call_overhead_ms"] = empty.get((r["T"], r["threads"], r["backend"]))
    return rows, exports


def _train_eval_int8(cfg: LatencyBenchConfig, work: Path, log) -> list[dict]:
    """fp32 vs int8 accuracy of the same weights on held-out watch windows."""
    import torch

    from ..data.recordings import load_watch
    from ..deploy.export import write_exports
    from ..deploy.manifest import manifest_for
    from ..models.resnet1d import create_model
    from ..signal.windows import Normalizer, WindowConfig, make_windows
    from ..train.bundle import ModelBundle
    from ..train.loop import PRETRAIN, train
    from ..train.pretrain import split_holdout

    recs = load_watch()
    wcfg = WindowConfig()          # 2 s at 50 Hz (T = 100), hop 0.5 s
    w = make_windows(recs, wcfg)
    # held out: whole recordings (stratified), as in pretraining
    tr, ho = split_holdout(w.recording, w.y, 0.25, seed=cfg.seed)
    wtr, who = w.subset(tr), w.subset(ho)
    norm = Normalizer.fit(wtr.x)
    xtr, xho = norm(wtr.x), norm(who.x)
    ytr = wtr.y
    if cfg.accuracy_max_train_windows is not None and xtr.shape[0] > cfg.accuracy_max_train_windows:
        keep = np.sort(np.random.default_rng(cfg.seed).choice(xtr.shape[0], cfg.accuracy_max_train_windows,
                                                              replace=False))
        xtr, ytr = xtr[keep], ytr[keep]
    out = []
    for name in cfg.accuracy_models:
        epochs = int(cfg.accuracy_epochs.get(name, 5))
        torch.manual_seed(cfg.seed)
        model = create_model(name, in_channels=len(w.channels), num_classes=w.num_classes)
        t = time.perf_counter()
        from ..runtime.profiles import available_cores

        torch.set_num_threads(len(available_cores()))          # training (and export) use every core
        train(model, xtr, ytr, config=replace(PRETRAIN, epochs=epochs, seed=cfg.seed, device="cpu",
                                              threads=len(available_cores())), progress=False)
        train_s = time.perf_counter() - t
        model = model.cpu().eval()
        bundle = ModelBundle(model, name, w.class_names, w.channels, wcfg, norm, {})
        man = manifest_for(bundle)
        t = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            m = write_exports(model, man, work / f"acc_{name}", xho[:64],
                              formats=("onnx", "pte", "onnx-int8", "pte-int8"), calibration_windows=xtr,
                              int8_min_agreement=0.0, eval_windows=(xho, who.y))
        export_s = time.perf_counter() - t
        arts = m.artifacts
        row = {"model": name, "epochs": epochs, "train_windows": int(xtr.shape[0]), "heldout_windows": int(xho.shape[0]),
               "train_s": train_s, "export_s": export_s,
               "calibration_windows": arts["model_int8.pte"].get("calibration_windows")}
        for f in ("model.onnx", "model.pte", "model_int8.onnx", "model_int8.pte"):
            a = arts[f]
            row[f] = {k: a.get(k) for k in ("eval_accuracy", "eval_macro_f1", "accuracy_change_vs_fp32_points",
                                             "macro_f1_change_vs_fp32_points", "parity_top1_agreement",
                                             "parity_max_abs_err")}
        out.append(row)
        log(f"[accuracy] {name} ({epochs} epochs, {train_s:.0f} s): fp32 ORT {row['model.onnx']['eval_accuracy']:.4f} "
            f"-> int8 {row['model_int8.onnx']['eval_accuracy']:.4f}; fp32 ET {row['model.pte']['eval_accuracy']:.4f} "
            f"-> int8 {row['model_int8.pte']['eval_accuracy']:.4f}")
    return out


def _overhead_replay(cfg: LatencyBenchConfig, work: Path, log) -> list[dict]:
    """Runtime work vs model call: mobilecnn1d XNNPACK fp32 under phone-big-core, pacing off."""
    from ..data.recordings import Recording
    from ..deploy.backends import load_backend
    from ..deploy.manifest import load_manifest
    from ..runtime.replay import ReplayConfig, replay

    out = []
    rng = np.random.default_rng(cfg.seed)
    for T, fs in cfg.windows:
        d = work / f"mobilecnn1d_T{T}" / "pte"
        if not (d / "manifest.json").is_file():
            continue
        man = load_manifest(d / "manifest.json")
        man = replace(man, hop_s=0.5)
        S = int(fs * 600)           # 10 minutes of signal
        rec = Recording(rng.standard_normal((S, cfg.in_channels)).astype(np.float32),
                        rng.integers(0, cfg.num_classes, S), fs, man.channels, man.class_names, "bench")
        for chunk in (None, 1):
            rc = ReplayConfig.from_profile("phone-big-core", realtime=False, chunk_samples=chunk)
            backend = load_backend(d / "model.pte", manifest=man, num_threads=rc.num_threads)
            replay(rec, backend, man, config=replace(rc, max_windows=2000))      # warm-up
            s = replay(rec, backend, man, config=rc).summary()
            row = {"T": T, "sample_rate_hz": fs, "hop_samples": man.hop_samples, "chunk_samples": chunk,
                   "profile": "phone-big-core", "n_windows": s["n_windows"],
                   "model_ms": s["latency_ms"], "runtime_ms": s["runtime_overhead_ms"],
                   "ratio_mean": s["runtime_overhead_ratio"],
                   "ratio_p50": s["runtime_overhead_ms"]["p50"] / s["latency_ms"]["p50"],
                   "realtime_factor": s["realtime_factor"]}
            out.append(row)
            log(f"[runtime work] T={T} delivery={'per hop' if chunk is None else chunk}: model p50 "
                f"{s['latency_ms']['p50'] * 1e3:.1f} us, runtime p50 {s['runtime_overhead_ms']['p50'] * 1e3:.1f} us, "
                f"ratio (means) {row['ratio_mean']:.3f}")
    return out


def _long_stream(cfg: LatencyBenchConfig, work: Path, log) -> dict:
    """Write ``stream_hours`` of 9-channel 100 Hz data to .npz (streamed) and replay it from disk."""
    import tracemalloc

    import torch

    from ..data.streams import NpzStream, NpzStreamWriter
    from ..deploy.export import write_exports
    from ..deploy.manifest import Manifest
    from ..models.resnet1d import create_model
    from ..runtime.replay import ReplayConfig, replay_stream

    fs, C_file = 100.0, 9
    channels = ("acc_x", "acc_y", "acc_z", "gyr_x", "gyr_y", "gyr_z", "mag_x", "mag_y", "mag_z")
    classes = tuple(f"class{k}" for k in range(cfg.num_classes))
    S = int(round(cfg.stream_hours * 3600 * fs))
    path = work / "long_stream.npz"
    t = time.perf_counter()
    rng = np.random.default_rng(cfg.seed)
    with NpzStreamWriter(path, n_samples=S, channels=channels, class_names=classes, sample_rate_hz=fs,
                         user="bench") as wtr:
        block = 360_000
        for s in range(0, S, block):
            n = min(block, S - s)
            wtr.write(rng.standard_normal((n, C_file)).astype(np.float32),
                      np.repeat(rng.integers(0, cfg.num_classes, -(-n // 6000)), 6000)[:n])
    write_s = time.perf_counter() - t
    size_mb = path.stat().st_size / 2**20
    man = Manifest("mobilecnn1d", {}, classes, channels[:6], fs, 2.0, 0.5, (0.0,) * 6, (1.0,) * 6)
    torch.manual_seed(cfg.seed)
    model = create_model("mobilecnn1d", in_channels=6, num_classes=cfg.num_classes).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        man = write_exports(model, man, work / "long_stream_model", rng.standard_normal((4, 6, 200)).astype(np.float32),
                            formats=("pte",))
    rc = ReplayConfig.from_profile("phone-big-core", realtime=False, smoothing_k=5)
    model_path = work / "long_stream_model" / "model.pte"
    # pass 1: timings and RSS; pass 2: the same replay under tracemalloc (which slows every allocation,
    # so its timings are not used)
    t = time.perf_counter()
    res = replay_stream(NpzStream(path), model_path, man, config=rc)
    wall = time.perf_counter() - t
    tracemalloc.start()
    t = time.perf_counter()
    traced = replay_stream(NpzStream(path), model_path, man, config=rc)
    traced_wall = time.perf_counter() - t
    _, traced_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    if traced.n_windows != res.n_windows or not np.array_equal(traced.predictions, res.predictions):
        raise AssertionError("the traced replay differs from the timed one")
    s = res.summary()
    out = {"hours": cfg.stream_hours, "samples": S, "channels_in_file": C_file, "file_mb": size_mb,
           "write_s": write_s, "replay_wall_s": wall, "traced_replay_wall_s": traced_wall, "n_windows": s["n_windows"],
           "traced_peak_mb": traced_peak / 2**20, "memory": s["memory"], "latency_ms": s["latency_ms"],
           "runtime_overhead_ms": s["runtime_overhead_ms"], "runtime_overhead_ratio": s["runtime_overhead_ratio"],
           "realtime_factor": s["realtime_factor"], "input": s["input"],
           "result_arrays_mb": sum(a.nbytes for a in (res.predictions, res.true_labels, res.window_ends,
                                                     res.latencies_ms, res.runtime_overhead_ms, res.segments,
                                                     res.smoothed_predictions)) / 2**20}
    log(f"[stream] {cfg.stream_hours:g} h ({S} samples x {C_file} ch, {size_mb:.0f} MB): {s['n_windows']} windows in "
        f"{wall:.1f} s; traced peak {out['traced_peak_mb']:.1f} MB, RSS peak {s['memory']['rss_peak_mb']:.0f} MB")
    try:
        path.unlink()
    except OSError:
        pass
    return out


# --------------------------------------------------------------------------- report


def _fmt(v: Any, nd: int = 3) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.{nd}f}"
    return str(v)


def _row_lookup(rows: list[dict]) -> dict:
    return {(r["model"], r["T"], r["threads"], r["backend"]): r for r in rows}


def _targets(rows: list[dict], acc: list[dict], ovh: list[dict], cfg: LatencyBenchConfig) -> list[dict]:
    L = _row_lookup(rows)
    out = []
    # 1. runtime work <= 10% of the model call (mobile model, per-hop delivery)
    for r in ovh:
        if r["chunk_samples"] is None:
            out.append({"target": f"runtime work <= 10% of model call (mobilecnn1d, T={r['T']}, phone-big-core, "
                                  "one delivery per hop)",
                        "measured": f"{100 * r['ratio_mean']:.1f}% (means), {100 * r['ratio_p50']:.1f}% (p50s)",
                        "met": r["ratio_mean"] <= 0.10})
    # 2. ET XNNPACK fp32 >= 2x faster than eager, mobile, 1 thread
    for T, _ in cfg.windows:
        a, b = L.get(("mobilecnn1d", T, 1, "torch")), L.get(("mobilecnn1d", T, 1, "executorch-xnnpack-fp32"))
        if a and b:
            sp = a["p50"] / b["p50"]
            out.append({"target": f"ET XNNPACK fp32 >= 2x faster than PyTorch eager (mobilecnn1d, T={T}, 1 thread)",
                        "measured": f"{sp:.1f}x ({a['p50']:.4f} -> {b['p50']:.4f} ms)", "met": sp >= 2.0})
    # 3. int8 >= 1.5x faster than fp32, resnet1d34, <= 1 point accuracy lost
    accm = {a["model"]: a for a in acc}
    for T, _ in cfg.windows:
        for fp, q, fname, qname in (("executorch-xnnpack-fp32", "executorch-xnnpack-int8", "model.pte", "model_int8.pte"),
                                    ("onnxruntime-fp32", "onnxruntime-int8", "model.onnx", "model_int8.onnx")):
            a, b = L.get(("resnet1d34", T, 1, fp)), L.get(("resnet1d34", T, 1, q))
            if not (a and b):
                continue
            sp = a["p50"] / b["p50"]
            ac = accm.get("resnet1d34")
            drop = None if ac is None else ac[qname]["accuracy_change_vs_fp32_points"]
            met = sp >= 1.5 and (drop is not None and drop >= -1.0)
            out.append({"target": f"int8 >= 1.5x faster than fp32, <= 1 point accuracy lost (resnet1d34, T={T}, "
                                  f"1 thread, {BACKEND_LABELS[q]})",
                        "measured": f"{sp:.2f}x; accuracy change {_fmt(drop, 2)} points (T=100 watch held-out)",
                        "met": met if drop is not None else None})
    # 4. resnet1d34, T=500, 1 thread, fp32 within 2x of the compute floor
    for key in ("executorch-xnnpack-fp32", "onnxruntime-fp32", "torch"):
        r = L.get(("resnet1d34", 500, 1, key))
        if r:
            ref = key == "torch"          # eager PyTorch is the reference point, not a deployment runtime
            out.append({"target": f"resnet1d34 fp32 within 2x of its compute floor (T=500, 1 thread, "
                                  f"{BACKEND_LABELS[key]}{', for reference' if ref else ''})",
                        "measured": f"{r['p50']:.3f} ms vs floor {r['floor_ms']:.3f} ms = {r['x_floor']:.2f}x",
                        "met": None if ref else r["x_floor"] <= 2.0})
    return out


def _cpu_details() -> dict:
    """CPU vendor, family, model and stepping from /proc/cpuinfo (the model name alone may be generic under a VM)."""
    keys = {"vendor_id": "vendor", "cpu family": "family", "model": "model", "stepping": "stepping",
            "cpu MHz": "mhz", "cache size": "cache"}
    info = cpuinfo()
    out: dict[str, Any] = {name: info[k] for k, name in keys.items() if k in info}
    flags = cpu_flags()
    out["vector_isa"] = [f for f in ("avx512f", "avx512_vnni", "avx512_bf16", "avx2", "fma", "asimd") if f in flags]
    return out


def _markdown(res: dict) -> str:
    h, pk, cfg = res["host"], res["peak"], res["config"]
    fma = pk["fma"]
    cd = res.get("cpu_details", {})
    cpu_line = ", ".join(f"{k} {cd[k]}" for k in ("vendor", "family", "model", "stepping", "mhz") if k in cd)
    lines = ["# Latency benchmark", "",
             f"Host: **{h['cpu']}** ({cpu_line}; {' '.join(cd.get('vector_isa', []))}), "
             f"{h['cores']} cores usable, Python {h['python']}, torch {h['torch']}, "
             f"onnxruntime {res['versions'].get('onnxruntime')}, executorch {res['versions'].get('executorch')}.",
             "",
             f"Single-core fp32 peak: **{pk['peak_gflops']:.1f} GFLOP/s** (the larger of: {pk['matmul_n']}x"
             f"{pk['matmul_n']} matmul at 1 thread measured now: torch {pk['matmul_torch_gflops']:.1f} GFLOP/s, "
             f"numpy {_fmt(pk['matmul_numpy_gflops'], 1)} GFLOP/s; FMA peak {fma['isa']}: {fma['formula']} = "
             f"{_fmt(fma['gflops'], 1)} GFLOP/s, clock from {fma['clock_source']}).", "",
             "Batch 1, one window per call, 6 channels, 8 classes. p50/p95/p99 over "
             f"{cfg['rounds']} rounds of >= {cfg['min_reps']} calls and >= {cfg['round_s']} s after warm-up "
             "(slow configurations capped at "
             f"{cfg['max_config_s']} s); `spread` = range of the round medians. `call` = p50 of a near-empty model "
             "(1x1 conv + pooling) on the same backend: the per-call overhead. MFLOP counted with "
             "torch.utils.flop_counter; `% peak` = achieved GFLOP/s over the single-core peak above (2-thread rows "
             "can reach 200%); `x floor` = p50 / (FLOPs / peak).", ""]
    header = ["model", "T", "thr", "backend", "p50 ms", "p95 ms", "p99 ms", "call ms", "MFLOP", "GFLOP/s",
              "% peak", "x floor", "reps", "spread %"]
    body = []
    for r in res["rows"]:
        if r["model"] == "near-empty":
            continue
        body.append([r["model"], r["T"], r["threads"], BACKEND_LABELS[r["backend"]], _fmt(r["p50"], 4),
                     _fmt(r["p95"], 4), _fmt(r["p99"], 4), _fmt(r["call_overhead_ms"], 4),
                     _fmt(r["flops"] / 1e6, 2), _fmt(r["gflops"], 1), _fmt(100 * r["frac_core_peak"], 1),
                     _fmt(r["x_floor"], 2), r["reps"], _fmt(r["median_spread_pct"], 1)])
    lines += [markdown_table(header, body), ""]
    th = [r for r in res["rows"] if r["threads_in_effect"] is not None and r["threads_in_effect"] != r["threads"]]
    lines += [f"Thread counts reported by the engines matched the requested ones in "
              f"{sum(1 for r in res['rows'] if r['threads_in_effect'] == r['threads'])} of "
              f"{sum(1 for r in res['rows'] if r['threads_in_effect'] is not None)} configurations"
              + ("" if not th else f"; mismatches: {[(r['backend'], r['threads'], r['threads_in_effect']) for r in th]}")
              + ". ET portable kernels are single-threaded whatever the pool size.", ""]
    if res.get("accuracy"):
        lines += ["## int8 accuracy (same weights, held-out watch windows, T = 100)", ""]
        hdr = ["model", "epochs", "train win", "held-out win", "calib win", "ORT fp32", "ORT int8", "change pts",
               "ET fp32", "ET int8", "change pts", "top-1 agree ET"]
        body = []
        for a in res["accuracy"]:
            body.append([a["model"], a["epochs"], a["train_windows"], a["heldout_windows"], a["calibration_windows"],
                         _fmt(a["model.onnx"]["eval_accuracy"], 4), _fmt(a["model_int8.onnx"]["eval_accuracy"], 4),
                         _fmt(a["model_int8.onnx"]["accuracy_change_vs_fp32_points"], 2),
                         _fmt(a["model.pte"]["eval_accuracy"], 4), _fmt(a["model_int8.pte"]["eval_accuracy"], 4),
                         _fmt(a["model_int8.pte"]["accuracy_change_vs_fp32_points"], 2),
                         _fmt(a["model_int8.pte"]["parity_top1_agreement"], 3)])
        lines += [markdown_table(header=hdr, rows=body), ""]
    if res.get("runtime_work"):
        lines += ["## Runtime's own work vs model call (mobilecnn1d, ET XNNPACK fp32, phone-big-core, no pacing)", ""]
        hdr = ["T", "hop", "delivery", "windows", "model p50 us", "runtime p50 us", "runtime mean us",
               "ratio (means)", "ratio (p50)", "real-time factor"]
        body = [[r["T"], r["hop_samples"], "per hop" if r["chunk_samples"] is None else f"{r['chunk_samples']} sample",
                 r["n_windows"], _fmt(r["model_ms"]["p50"] * 1e3, 1), _fmt(r["runtime_ms"]["p50"] * 1e3, 1),
                 _fmt(r["runtime_ms"]["mean"] * 1e3, 1), _fmt(r["ratio_mean"], 3), _fmt(r["ratio_p50"], 3),
                 _fmt(r["realtime_factor"], 5)] for r in res["runtime_work"]]
        lines += [markdown_table(hdr, body), ""]
    if res.get("stream"):
        s = res["stream"]
        lines += ["## Long stream from disk", "",
                  f"{s['hours']:g} h at 100 Hz, {s['channels_in_file']} channels ({s['samples']} samples, "
                  f"{s['file_mb']:.0f} MB .npz written in {s['write_s']:.1f} s), replayed with NpzStream through "
                  f"mobilecnn1d (ET XNNPACK, T = 200, hop 50, 6 of 9 channels) under phone-big-core without pacing: "
                  f"{s['n_windows']} windows in {s['replay_wall_s']:.1f} s; in a second, identical replay under "
                  f"tracemalloc, Python allocations peaked at {s['traced_peak_mb']:.1f} MB "
                  f"({s['result_arrays_mb']:.1f} MB of it the per-window results); process RSS "
                  f"{_fmt(s['memory'].get('rss_start_mb'), 0)} -> peak "
                  f"{_fmt(s['memory'].get('rss_peak_mb'), 0)} MB. Model p50 {s['latency_ms']['p50'] * 1e3:.1f} us, "
                  f"runtime work p50 {s['runtime_overhead_ms']['p50'] * 1e3:.1f} us "
                  f"(ratio of means {s['runtime_overhead_ratio']:.3f}); real-time factor {s['realtime_factor']:.5f}.",
                  ""]
    lines += ["## Targets", ""]
    body = [[t["target"], t["measured"], {True: "met", False: "NOT met", None: "info"}[t["met"]]]
            for t in res["targets"]]
    lines += [markdown_table(["target", "measured", "status"], body), ""]
    lines += [f"Wall time {res['wall_time_s']:.0f} s. Command: `{res['command']}`."]
    return "\n".join(lines)


def _figure(rows: list[dict], cfg: LatencyBenchConfig):
    groups = [(m, T) for m in cfg.models for T, _ in cfg.windows]
    fig, axes = new_figure(1, len(cfg.threads), figsize=(6.5 * len(cfg.threads), 4.5), squeeze=False)
    L = _row_lookup(rows)
    width = 0.8 / max(1, len(groups))
    for ax, n in zip(axes[0], cfg.threads):
        for gi, (m, T) in enumerate(groups):
            vals = [L.get((m, T, n, b), {}).get("p50", np.nan) for b in cfg.backends]
            xs = np.arange(len(cfg.backends)) + (gi - (len(groups) - 1) / 2) * width
            ax.bar(xs, vals, width, label=f"{m} T={T}")
        ax.set_yscale("log")
        ax.set_xticks(range(len(cfg.backends)))
        ax.set_xticklabels([BACKEND_LABELS[b] for b in cfg.backends], rotation=30, ha="right")
        ax.set_ylabel("p50 latency per window (ms, log)")
        ax.set_title(f"{n} thread(s)")
        ax.grid(axis="y", which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def run_latency_benchmark(out_dir: str | os.PathLike, config: LatencyBenchConfig = LatencyBenchConfig(), *,
                          log: Callable[[str], None] = print, command: str = "imutune bench latency") -> dict:
    """Run the benchmark and write ``latency.json``, ``latency.md``, ``latency.png`` into ``out_dir``.

    Exported files go to ``out_dir/artifacts`` (kept for inspection).

    Returns
    -------
    dict
        ``config``, ``host``, ``versions``, ``peak`` (:func:`measure_peak`),
        ``rows`` (one per model x T x threads x backend, near-empty model
        included, with latency statistics, ``call_overhead_ms``, ``flops``,
        ``gflops``, ``frac_core_peak``, ``floor_ms``, ``x_floor``,
        ``threads_in_effect``), ``exports`` (seconds per variant),
        ``accuracy``, ``runtime_work``, ``stream``, ``targets``, ``wall_time_s``.
    """
    t_start = time.perf_counter()
    out = Path(out_dir)
    work = out / "artifacts"
    work.mkdir(parents=True, exist_ok=True)
    versions = {}
    for mod in ("onnxruntime", "executorch", "onnx"):
        try:
            from importlib.metadata import version

            versions[mod] = version(mod)
        except Exception:
            versions[mod] = None
    host = host_info()
    log(f"[host] {host['cpu']}, {host['cores']} cores")
    peak = measure_peak(fma_units=config.fma_units)
    log(f"[peak] matmul torch {peak['matmul_torch_gflops']:.1f}, numpy {_fmt(peak['matmul_numpy_gflops'], 1)} "
        f"GFLOP/s; FMA {peak['fma']['formula']} = {_fmt(peak['fma']['gflops'], 1)} GFLOP/s -> peak "
        f"{peak['peak_gflops']:.1f} GFLOP/s")
    rows, exports = _bench_models(config, work, peak["peak_gflops"], log)
    # the replay right after the latency rows, before training heats the host up
    ovh = _overhead_replay(config, work, log) if config.overhead_replay else []
    acc = _train_eval_int8(config, work, log) if config.accuracy else []
    stream = _long_stream(config, work, log) if config.stream_hours > 0 else None
    res = {"config": asdict(config), "host": host, "cpu_details": _cpu_details(), "versions": versions,
           "peak": peak, "rows": rows,
           "exports": exports, "accuracy": acc, "runtime_work": ovh, "stream": stream, "command": command}
    res["targets"] = _targets(rows, acc, ovh, config)
    res["wall_time_s"] = time.perf_counter() - t_start
    write_report(out, "latency", res, _markdown(res), {"latency": _figure(rows, config)})
    log(f"[done] {res['wall_time_s']:.0f} s -> {out / 'latency.md'}")
    return res
