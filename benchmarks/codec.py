"""Codec benchmark: the learned sensor codec (codec-only, for the frozen classifier, joint; a lambda
sweep) against float32, float16, int16 + zstd, delta + zstd and uniform k-bit + zstd on the watch data,
held-out users, calibrate-then-use (see imutune.bench.codec).

Same as ``imutune bench codec``; all options are passed through, e.g.::

    nice -n 10 python benchmarks/codec.py --out runs/bench_codec
    python benchmarks/codec.py --out runs/bench_codec_quick --quick
"""
from __future__ import annotations

import sys

from imutune.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "codec", *sys.argv[1:]]))
