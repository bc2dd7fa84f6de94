"""Selective filter fine-tuning benchmark (Borda-ranked filters vs full, layer-level
and random-filter fine-tuning under sensor distortions, on the embedded watch data).

Same as ``imutune bench selective``; all options are passed through, e.g.::

    python benchmarks/selective.py --out runs/bench_selective
    python benchmarks/selective.py --out runs/bench_selective_quick --quick
    python benchmarks/selective.py --out runs/bs_noise --distortions noise rotation --shots 5
"""
from __future__ import annotations

import sys

from imutune.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "selective", *sys.argv[1:]]))
