"""`python -m darts.nb101`: NAS-Bench-101's tables (darts.benchmarks.nb101): convert the official
file, describe a cell (`info`), query a table, write a synthetic one."""

import sys

from darts.benchmarks.nb101 import main

if __name__ == "__main__":
    sys.exit(main())
