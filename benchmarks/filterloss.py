"""FilterLoss benchmark (leave-one-subject-out on the embedded watch data, or a
cross-dataset target): FilterLoss against every standard baseline.

Same as ``imutune bench filterloss``; all options are passed through, e.g.::

    python benchmarks/filterloss.py --out runs/bench_filterloss
    python benchmarks/filterloss.py --out runs/bench_filterloss_quick --quick
    python benchmarks/filterloss.py --out runs/xdata --target-data my_user/ --ratios natural 10
"""
from __future__ import annotations

import sys

from imutune.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "filterloss", *sys.argv[1:]]))
