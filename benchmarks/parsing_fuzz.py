"""Fuzz the manifest / model bundle / patch parsers with seeded mutations (see imutune.bench.parsing_fuzz).

    nice -n 10 python benchmarks/parsing_fuzz.py --out runs/parsing_fuzz            # 3,400 inputs per parser
    python benchmarks/parsing_fuzz.py --out runs/parsing_fuzz_quick --n 200

Writes parsing_fuzz.json and parsing_fuzz.md; exits 1 if any input gave a traceback or an error that does not
name its file.
"""
from __future__ import annotations

import sys

from imutune.bench.parsing_fuzz import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
