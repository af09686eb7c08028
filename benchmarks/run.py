"""Run the optimizer-step benchmark (the same as ``optimkit bench``); see docs/benchmarks.md.

python benchmarks/run.py --steps 7 --peak-memory     # the full table
python benchmarks/run.py --memory --quick      # optimizer-state memory (docs/memory.md)
python benchmarks/run.py --scale 0.1 --steps 3       # a quick look
"""

import argparse
import sys

from optimkit import bench

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command")
    bench.add_parser(sub)
    sys.exit(bench.main(parser.parse_args(["bench", *sys.argv[1:]])))
