"""Data-pipeline benchmark: a thin script around `zipmo-robot bench data` (zipmo_robot/bench/data.py).

python benchmarks/bench_data.py --suite libero_spatial --task 0 --demos 2
python benchmarks/bench_data.py --table /work/data   # per-task table of a `collect --out` folder
"""

from __future__ import annotations

import sys

from zipmo_robot.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "data", *sys.argv[1:]]))
