#!/usr/bin/env python3
"""Regenerate the Android host tests' golden data from a real demo export.

Steps (all through the public imutune API and CLI):

1. ``imutune demo --quick --out runs/demo_q`` (skipped when ``--export`` already
   holds ``model.onnx`` + ``manifest.json``);
2. take the demo target's held-out recordings (calibrate-then-use protocol:
   the second half of each of ``subject10``'s watch recordings) of three
   exercises: stream 0 joins the first ``--samples``/2 samples of the first
   two (an exercise switch), stream 1 is the first ``--samples`` of the
   third; saved as ``.npz`` recordings;
3. ``imutune replay --model EXPORT/model.onnx --data A.npz B.npz --smoothing-k 3
   --dump-golden android_demo/core/src/test/resources/golden``, plus
   ``smoothing_cases.json``: the reference majority vote on synthetic
   prediction sequences.

Run from the repository root::

    python android_demo/tools/make_golden.py            # or: bash android_demo/tools/make_golden.sh
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--export", default=str(ROOT / "runs" / "demo_q"), help="demo export folder (default runs/demo_q)")
    ap.add_argument("--out", default=str(ROOT / "android_demo" / "core" / "src" / "test" / "resources" / "golden"))
    ap.add_argument("--samples", type=int, default=600, help="samples kept per recording (default 600: 12 s)")
    ap.add_argument("--smoothing-k", type=int, default=3, help="majority vote window count (default 3)")
    args = ap.parse_args(argv)

    import numpy as np

    from imutune._io import write_json_atomic
    from imutune.data.recordings import Recording, load_watch, save_npz
    from imutune.personalize.protocols import calibrate_then_use
    from imutune.runtime.engine import _smooth   # the reference rule the Java smoother must match

    export = Path(args.export)
    if not (export / "model.onnx").is_file() or not (export / "manifest.json").is_file():
        subprocess.run(["imutune", "demo", "--quick", "--out", str(export)], check=True)
    cfg = json.loads((export / "demo_config.json").read_text())
    user = cfg["target_user"]
    recs = [r for r in load_watch() if r.user == user]
    _, test = calibrate_then_use(recs, window_s=cfg["window"]["window_s"],
                                 calibration_fraction=cfg["calibration_fraction"])
    # stream 0: the first half of one held-out recording followed by the first half of another exercise's
    # (a user switching exercise: the smoother sees a real transition); stream 1: one more exercise, alone
    half = args.samples // 2
    by_cls: dict[int, Recording] = {}
    for r in test:
        lab = r.labels[r.labels >= 0]
        if r.n_samples >= args.samples and lab.size and int(lab[0]) not in by_cls:
            by_cls[int(lab[0])] = r
    if len(by_cls) < 3:
        raise SystemExit(f"need held-out recordings of 3 exercises with {args.samples} samples; found {len(by_cls)}")
    a, b, c = list(by_cls.values())[:3]
    streams = [
        Recording(np.concatenate([a.values[:half], b.values[:half]]), np.concatenate([a.labels[:half], b.labels[:half]]),
                  a.sample_rate_hz, a.channels, a.class_names, a.user, f"{a.name}[:{half}]+{b.name}[:{half}]"),
        Recording(c.values[:args.samples], c.labels[:args.samples], c.sample_rate_hz, c.channels, c.class_names,
                  c.user, f"{c.name}[:{args.samples}]"),
    ]
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for i, r in enumerate(streams):
            stem = "+".join(part.split(":")[0].replace("watch_", "") for part in r.name.split("+"))
            p = Path(tmp) / f"{stem}.npz"
            save_npz(r, p)
            paths.append(str(p))
            print(f"stream {i}: {r.name} ({r.n_samples} samples)")
        subprocess.run(["imutune", "replay", "--model", str(export / "model.onnx"), "--data", *paths,
                        "--out", str(Path(tmp) / "replay"), "--smoothing-k", str(args.smoothing_k),
                        "--dump-golden", args.out, "--no-progress"], check=True)
    # the reference smoother on synthetic prediction sequences (ties, several k, a segment change)
    rng = np.random.default_rng(0)
    cases = []
    for k in (1, 2, 3, 4, 5, 8):
        for K in (2, 3, 7):
            pred = rng.integers(0, K, size=40)
            segs = np.repeat([0, 1], [25, 15])
            cases.append({"k": k, "num_classes": K, "predictions": pred.tolist(), "segments": segs.tolist(),
                          "smoothed": _smooth(pred, segs, k, K).tolist()})
    write_json_atomic(Path(args.out) / "smoothing_cases.json", {"source": "imutune.runtime.engine._smooth",
                                                                "cases": cases})
    index_path = Path(args.out) / "golden.json"
    index = json.loads(index_path.read_text())
    for entry, r in zip(index["streams"], streams):
        entry["source"] = f"imutune.data.recordings.load_watch(): {r.name} (held-out target data of the demo)"
    index["generated_by"] = ("android_demo/tools/make_golden.py: imutune replay --model " + str(Path(args.export).name)
                             + f"/model.onnx --smoothing-k {args.smoothing_k} --dump-golden ...")
    write_json_atomic(index_path, index)
    write_json_atomic(Path(args.out) / "contract_cases.json", _contract_cases(Path(args.out) / "manifest.json"))
    out = Path(args.out)
    total = sum(f.stat().st_size for f in out.iterdir())
    print(f"golden data in {out}: {len(streams)} streams, {total} bytes")
    return 0


def _python_verdict(folder: Path, text: str) -> str | None:
    """The Python loader's verdict on a manifest text: None (accepted) or its error, the path shown as manifest.json."""
    from imutune.deploy.manifest import load_manifest

    p = folder / "manifest.json"
    p.write_text(text)
    try:
        load_manifest(p)
        return None
    except ValueError as e:
        return str(e).replace(str(p), "manifest.json")


def _contract_cases(manifest_path: Path) -> dict:
    """Mutations of the real manifest and the Python loader's verdict on each (None: accepted).

    The Java host tests require ``dev.imutune.core.Manifest`` to reject exactly the cases the Python
    loader (``imutune.deploy.manifest.load_manifest``) rejects.
    """
    import copy

    base = json.loads(manifest_path.read_text())
    C = len(base["channels"])
    arts = base["artifacts"]
    first = next(iter(arts))
    muts = [
        ("valid as exported", {}, []),
        ("missing hop_s", {}, ["hop_s"]),
        ("missing artifacts", {}, ["artifacts"]),
        ("unknown field", {"extra": 1}, []),
        ("version 1", {"version": 1}, []),
        ("version 2.0", {"version": 2.0}, []),
        ("version true", {"version": True}, []),
        ("window_samples disagrees", {"window_samples": base["window_samples"] - 1}, []),
        ("window_samples as float", {"window_samples": float(base["window_samples"])}, []),
        ("hop_samples disagrees", {"hop_samples": base["hop_samples"] + 1}, []),
        ("hop changed consistently", {"hop_s": 0.5, "hop_samples": int(round(0.5 * base["sample_rate_hz"]))}, []),
        ("hop rounds half to even", {"hop_s": 0.05, "hop_samples": 2}, []),
        ("hop rounded half up", {"hop_s": 0.05, "hop_samples": 3}, []),
        ("norm_std zero", {"norm_std": [0.0] * C}, []),
        ("norm_std negative", {"norm_std": [-1.0] * C}, []),
        ("norm_std tiny", {"norm_std": [1e-40] * C}, []),
        ("norm_mean too short", {"norm_mean": base["norm_mean"][:-1]}, []),
        ("norm_mean string entry", {"norm_mean": ["0"] + base["norm_mean"][1:]}, []),
        ("norm_mean beyond float32", {"norm_mean": [1e39] + base["norm_mean"][1:]}, []),
        ("normalization null", {"norm_mean": None, "norm_std": None}, []),
        ("only norm_std null", {"norm_std": None}, []),
        ("channels duplicate", {"channels": [base["channels"][0]] * C}, []),
        ("channels empty", {"channels": []}, []),
        ("channel name blank", {"channels": ["  "] + base["channels"][1:]}, []),
        ("class_names a string", {"class_names": "PEN"}, []),
        ("class_names number entry", {"class_names": [1] + base["class_names"][1:]}, []),
        ("units declared", {"units": ["g"] * 3 + ["rad/s"] * (C - 3)}, []),
        ("units all null", {"units": [None] * C}, []),
        ("units wrong length", {"units": ["g"]}, []),
        ("units empty string", {"units": [""] * C}, []),
        ("units a string", {"units": "g"}, []),
        ("sample_rate_hz zero", {"sample_rate_hz": 0}, []),
        ("sample_rate_hz negative", {"sample_rate_hz": -50.0}, []),
        ("sample_rate_hz string", {"sample_rate_hz": "50"}, []),
        ("sample_rate_hz true", {"sample_rate_hz": True}, []),
        ("sample_rate_hz int", {"sample_rate_hz": 50}, []),
        ("window too short", {"window_s": 0.1, "window_samples": 5}, []),
        ("window too long", {"window_s": 1e6, "window_samples": int(1e6 * base["sample_rate_hz"])}, []),
        ("min_purity zero", {"min_purity": 0}, []),
        ("min_purity above one", {"min_purity": 1.5}, []),
        ("min_purity one", {"min_purity": 1}, []),
        ("input_layout NTC", {"input_layout": "NTC"}, []),
        ("input_name empty", {"input_name": ""}, []),
        ("model_name number", {"model_name": 3}, []),
        ("model_config a list", {"model_config": [1, 2]}, []),
        ("artifacts a list", {"artifacts": []}, []),
        ("artifact name with a slash", {"artifacts": {"../model.onnx": arts[first]}}, []),
        ("artifact without sha256", {"artifacts": {first: {k: v for k, v in arts[first].items() if k != "sha256"}}}, []),
        ("artifact format tflite", {"artifacts": {first: {**arts[first], "format": "tflite"}}}, []),
        ("artifact format null", {"artifacts": {first: {**arts[first], "format": None}}}, []),
        ("no artifacts", {"artifacts": {}}, []),
    ]
    cases = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, sets, deletes in muts:
            d = copy.deepcopy(base)
            d.update(sets)
            for k in deletes:
                d.pop(k)
            text = json.dumps(d)
            verdict = _python_verdict(Path(tmp), text)
            cases.append({"name": name, "set": sets, "delete": deletes, "text": text, "python_error": verdict})
    raw = [("not JSON", "{\"version\": 2,"), ("a JSON array", "[1, 2]"), ("empty file", ""),
           ("trailing data", manifest_path.read_text() + " x")]
    raw_cases = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, text in raw:
            verdict = _python_verdict(Path(tmp), text)
            raw_cases.append({"name": name, "text": text, "python_error": verdict})
    return {"source": "imutune.deploy.manifest.load_manifest on mutations of the exported manifest.json",
            "cases": cases, "raw_cases": raw_cases}


if __name__ == "__main__":
    sys.exit(main())
