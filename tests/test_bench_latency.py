"""The latency benchmark: measurement helpers, peak estimate, and a small end-to-end run with its report."""
from __future__ import annotations

import json
import time

import pytest
from imutune.bench.latency import (
    BACKENDS,
    LatencyBenchConfig,
    _targets,
    count_flops,
    fma_peak,
    near_empty_model,
    quick_config,
    time_calls,
)


def test_time_calls_statistics():
    calls = []
    st = time_calls(lambda: calls.append(time.sleep(0.001)), min_reps=10, round_s=0.0, rounds=3, max_s=5.0,
                    warmup_calls=2, warmup_s=0.0)
    assert st["reps"] == 30 and st["rounds"] == 3 and len(calls) == 32
    assert 0.9 <= st["p50"] <= st["p95"] <= st["p99"] <= st["max"]
    assert len(st["round_medians_ms"]) == 3 and st["median_spread_pct"] >= 0
    slow = time_calls(lambda: time.sleep(0.02), min_reps=1000, round_s=10.0, rounds=3, max_s=0.1, warmup_calls=1,
                      warmup_s=0.0)
    assert 3 <= slow["reps"] < 20 and slow["rounds"] == 1          # capped by max_s


def test_flops_and_peak_helpers():
    torch = pytest.importorskip("torch")
    lin = torch.nn.Linear(64, 32)
    assert count_flops(lin, torch.zeros(1, 64)) == 2 * 64 * 32
    m = near_empty_model(6, 8)
    assert tuple(m(torch.zeros(1, 6, 100)).shape) == (1, 8)
    assert count_flops(m, torch.zeros(1, 6, 100)) == 2 * 6 * 8 * 100
    f = fma_peak(fma_units=2)
    assert f["fp32_lanes"] in (4, 8, 16) and f["fma_units"] == 2 and "lanes" in f["formula"]
    if f["clock_ghz"] is not None:
        assert f["gflops"] == pytest.approx(f["fp32_lanes"] * 2 * 2 * f["clock_ghz"])


def test_config_validation():
    with pytest.raises(ValueError, match="backends entry"):
        LatencyBenchConfig(backends=("tflite",))
    with pytest.raises(ValueError, match="threads entry"):
        LatencyBenchConfig(threads=(0,))
    assert set(LatencyBenchConfig().backends) == set(BACKENDS)


def test_targets_evaluation():
    rows = []
    for backend, p50 in (("torch", 1.0), ("executorch-xnnpack-fp32", 0.2), ("executorch-xnnpack-int8", 0.1)):
        rows.append({"model": "mobilecnn1d", "T": 100, "threads": 1, "backend": backend, "p50": p50})
    for backend, p50 in (("executorch-xnnpack-fp32", 3.0), ("executorch-xnnpack-int8", 1.0)):
        rows.append({"model": "resnet1d34", "T": 500, "threads": 1, "backend": backend, "p50": p50,
                     "floor_ms": 2.0, "x_floor": p50 / 2.0})
    acc = [{"model": "resnet1d34", "model_int8.pte": {"accuracy_change_vs_fp32_points": -0.5}}]
    ovh = [{"T": 100, "chunk_samples": None, "ratio_mean": 0.08, "ratio_p50": 0.07}]
    cfg = LatencyBenchConfig(windows=((100, 50.0), (500, 100.0)))
    t = {x["target"].split(" (")[0]: x["met"] for x in _targets(rows, acc, ovh, cfg)}
    assert t["runtime work <= 10% of model call"] is True
    assert t["ET XNNPACK fp32 >= 2x faster than PyTorch eager"] is True
    assert t["int8 >= 1.5x faster than fp32, <= 1 point accuracy lost"] is True
    assert t["resnet1d34 fp32 within 2x of its compute floor"] is True


def test_quick_run_writes_report(tmp_path):
    pytest.importorskip("onnxruntime")
    from imutune.bench.latency import run_latency_benchmark

    cfg = quick_config(backends=("torch", "onnxruntime-fp32"), min_reps=3, rounds=1, round_s=0.0)
    logs = []
    res = run_latency_benchmark(tmp_path, cfg, log=logs.append)
    for name in ("latency.json", "latency.md", "latency.png"):
        assert (tmp_path / name).is_file()
    data = json.loads((tmp_path / "latency.json").read_text())
    rows = [r for r in data["rows"] if r["model"] == "tinycnn1d"]
    assert {r["backend"] for r in rows} == {"torch", "onnxruntime-fp32"}
    for r in rows:
        assert r["threads"] == r["threads_in_effect"] == 1
        assert r["p50"] > 0 and r["flops"] > 0 and r["call_overhead_ms"] > 0
        assert r["gflops"] == pytest.approx(r["flops"] / (r["p50"] / 1e3) / 1e9)
        assert r["x_floor"] == pytest.approx(r["p50"] / r["floor_ms"])
    pk = data["peak"]
    assert pk["peak_gflops"] == pytest.approx(max(pk["matmul_gflops"], pk["fma"]["gflops"] or 0))
    md = (tmp_path / "latency.md").read_text()
    assert "| model | T | thr | backend | p50 ms |" in md and data["host"]["cpu"] in md
    assert "PyTorch eager" in md and "ORT fp32" in md and "near-empty" not in md.split("## Targets")[0].split("|---")[1]
    assert any("exported onnx" in line for line in logs) and res["wall_time_s"] > 0


def test_cli_parses_bench_latency(monkeypatch, tmp_path):
    from imutune import cli

    seen = {}

    def fake(out, cfg, **kw):
        seen["cfg"] = cfg
        return {"targets": []}

    monkeypatch.setattr("imutune.bench.latency.run_latency_benchmark", fake)
    rc = cli.main(["bench", "latency", "--out", str(tmp_path), "--models", "mobilecnn1d", "--windows", "100:50",
                   "--threads", "1", "--backends", "torch", "--no-accuracy", "--stream-hours", "0"])
    assert rc == 0
    c = seen["cfg"]
    assert c.models == ("mobilecnn1d",) and c.windows == ((100, 50.0),) and c.threads == (1,)
    assert c.backends == ("torch",) and not c.accuracy and c.stream_hours == 0
    assert cli.main(["bench", "latency", "--out", str(tmp_path), "--windows", "100"]) == 2
