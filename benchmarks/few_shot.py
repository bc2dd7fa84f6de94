"""Few-shot schedule and multi-head rehearsal benchmark (issue 15): the watch model fine-tuned on
BasicMotions with the old schedule (no step minimum) vs the FINETUNE preset (90 steps, balanced batches),
and rehearsal of the watch classes through a kept source head while learning BasicMotions' classes.

    python benchmarks/few_shot.py --out runs/bench_few_shot --extra-min-steps 300   # README run (3 seeds)
    python benchmarks/few_shot.py --out runs/bench_few_shot --source-model runs/bench_transfer/source_mobilecnn1d_e20

BasicMotions is read from the aeon wheel (pip install --no-deps aeon). Body:
imutune.bench.few_shot.run_few_shot_bench. Writes few_shot.json, few_shot.md, few_shot.png.
"""
from __future__ import annotations

import argparse
import sys


def main(argv=None) -> int:
    from imutune.bench.few_shot import FewShotBenchConfig, run_few_shot_bench

    c = FewShotBenchConfig()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="output folder (a pretrained watch model is cached there)")
    ap.add_argument("--source-model", default=None, help="a pretrained watch bundle (default: pretrain and cache "
                                                         "one as imutune bench transfer does)")
    ap.add_argument("--model", default=c.model_name, help="registry model when pretraining")
    ap.add_argument("--ks", type=int, nargs="*", default=list(c.ks), help="labelled windows per class (schedule)")
    ap.add_argument("--seeds", type=int, nargs="+", default=list(c.seeds))
    ap.add_argument("--losses", nargs="+", default=list(c.losses), help="fine-tuning losses (schedule)")
    ap.add_argument("--rehearsal-ks", type=int, nargs="*", default=list(c.rehearsal_ks))
    ap.add_argument("--rehearsal-ratios", type=float, nargs="+", default=list(c.rehearsal_ratios))
    ap.add_argument("--extra-min-steps", type=int, nargs="*", default=list(c.extra_min_steps),
                    help="also run FINETUNE with these min_steps (for the losses in --extra-losses)")
    ap.add_argument("--extra-losses", nargs="+", default=list(c.extra_losses))
    ap.add_argument("--threads", type=int, default=c.threads, help="torch threads")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    try:
        cfg = FewShotBenchConfig(source_model=args.source_model, model_name=args.model, ks=tuple(args.ks),
                                 seeds=tuple(args.seeds), losses=tuple(args.losses),
                                 rehearsal_ks=tuple(args.rehearsal_ks), rehearsal_ratios=tuple(args.rehearsal_ratios),
                                 extra_min_steps=tuple(args.extra_min_steps), extra_losses=tuple(args.extra_losses),
                                 threads=args.threads)
        run_few_shot_bench(args.out, cfg, command=" ".join(["python benchmarks/few_shot.py", *sys.argv[1:]]),
                           progress=not args.no_progress)
    except (ValueError, OSError) as e:   # e.g. aeon missing: "... (pip install --no-deps aeon); it was not found"
        print(f"benchmarks/few_shot.py: error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.out}/few_shot.json, few_shot.md, few_shot.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
