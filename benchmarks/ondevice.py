"""On-device FilterLoss training benchmark: per-step latency (batch 16, 1 thread), peak memory, .pte sizes,
weight parity against eager PyTorch, and on-device vs server-side FilterLoss macro-F1 on the
calibrate-then-use protocol (see imutune.bench.ondevice).

Same as ``imutune bench ondevice``; all options are passed through, e.g.::

    flock /tmp/imutune-heavy.lock nice -n 10 python benchmarks/ondevice.py --out runs/bench_ondevice
    python benchmarks/ondevice.py --out runs/bench_ondevice_quick --quick
"""
from __future__ import annotations

import sys

from imutune.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "ondevice", *sys.argv[1:]]))
