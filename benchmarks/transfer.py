"""Cross-dataset transfer benchmark (issue 15): the watch model's transfer, self-supervised pretraining,
a frozen-embedding probe and training from scratch against RandomForest / logistic regression on window
statistics, with k labelled windows per class.

Same as ``imutune bench transfer``; all options are passed through, e.g.::

    python benchmarks/transfer.py --out runs/bench_transfer                  # BasicMotions (aeon wheel)
    python benchmarks/transfer.py --out runs/bench_transfer_quick --quick
    python benchmarks/transfer.py --out runs/bt_mine --target-data my_recordings/ --units g
"""
from __future__ import annotations

import sys

from imutune.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "transfer", *sys.argv[1:]]))
