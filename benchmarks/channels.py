"""Channel-subset fine-tuning benchmark (issue 15): a 6-channel and an accelerometer-only watch model,
fine-tuned on a held-out subject's 6 channels or accelerometer only, beside RandomForest / logistic regression.

    python benchmarks/channels.py --out runs/bench_channels                 # subject 10, seed 0 (README)
    python benchmarks/channels.py --out runs/bench_channels --subjects 8 9 10 --seeds 0 1 2

Body: imutune.bench.channels.run_channels_bench. Writes channels.json, channels.md, channels.png.
"""
from __future__ import annotations

import argparse
import sys


def main(argv=None) -> int:
    from imutune.bench.channels import ChannelsBenchConfig, run_channels_bench

    c = ChannelsBenchConfig()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="output folder (pretrained models are cached there)")
    ap.add_argument("--subjects", type=int, nargs="+", default=list(c.subjects), help="target watch subjects")
    ap.add_argument("--seeds", type=int, nargs="+", default=list(c.seeds), help="fine-tuning seeds")
    ap.add_argument("--model", default=c.model_name, help="registry model")
    ap.add_argument("--threads", type=int, default=c.threads, help="torch threads")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    try:
        cfg = ChannelsBenchConfig(subjects=tuple(args.subjects), seeds=tuple(args.seeds), model_name=args.model,
                                  threads=args.threads)
        run_channels_bench(args.out, cfg, command=" ".join(["python benchmarks/channels.py", *sys.argv[1:]]),
                           progress=not args.no_progress)
    except (ValueError, OSError) as e:
        print(f"benchmarks/channels.py: error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.out}/channels.json, channels.md, channels.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
