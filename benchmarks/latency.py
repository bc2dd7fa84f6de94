"""Latency benchmark: PyTorch eager, ONNX Runtime fp32/int8, ExecuTorch XNNPACK fp32/int8 and
ExecuTorch portable, for mobilecnn1d and resnet1d34, at 1 and 2 threads and two window lengths,
against this host's single-core fp32 peak (see imutune.bench.latency).

Same as ``imutune bench latency``; all options are passed through, e.g.::

    flock /tmp/imutune-heavy.lock python benchmarks/latency.py --out runs/bench_latency
    python benchmarks/latency.py --out runs/bench_latency_quick --quick
    python benchmarks/latency.py --out runs/lat_t1 --threads 1 --no-accuracy --stream-hours 0
"""
from __future__ import annotations

import sys

from imutune.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "latency", *sys.argv[1:]]))
