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
    from imutune.runtime.replay import _smooth   # the reference rule the Java smoother must match

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
            p = Path(tmp) / f"{i:02d}_{r.name.split(':')[0]}.npz"
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
    write_json_atomic(Path(args.out) / "smoothing_cases.json", {"source": "imutune.runtime.replay._smooth",
                                                                "cases": cases})
    out = Path(args.out)
    total = sum(f.stat().st_size for f in out.iterdir())
    print(f"golden data in {out}: {len(streams)} streams, {total} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
