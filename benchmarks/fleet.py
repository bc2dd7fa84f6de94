"""Fleet benchmark: a SIMULATED fleet (watch subjects x arm side x distortion x label noise) personalized
on a local Ray instance; users/core-hour, 1 vs 2 workers, a killed worker and a killed fleet recovering.

Same as ``imutune bench fleet``; all options are passed through, e.g.::

    nice -n 10 python benchmarks/fleet.py --out runs/bench_fleet_quick --quick
    nice -n 10 python benchmarks/fleet.py --out runs/bench_fleet --users 200
"""
from __future__ import annotations

import sys

from imutune.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "fleet", *sys.argv[1:]]))
