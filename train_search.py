#!/usr/bin/env python
"""Search a cell with DARTS (Liu, Simonyan and Yang, ICLR 2019).

    python train_search.py                                   # CIFAR-10, the paper's settings (second order)
    python train_search.py --order 1                         # first order: about 3x faster
    python train_search.py --order 2 --hessian exact         # exact Hessian-vector products
    python train_search.py --dataset synthetic --epochs 2 --layers 5 --init_channels 8   # offline
    python train_search.py --resume runs/search-cifar10-...  # continue a stopped search

The run directory ends with genotype.json; the last log line is the train_final.py command
that retrains it.
"""

from __future__ import annotations

import sys

from darts.search import SearchConfig, run
from darts.train import cli


def main(argv: list[str] | None = None) -> int:
    return cli.main(SearchConfig, run, "DARTS architecture search (the paper's settings by default).",
                    "search", argv)


if __name__ == "__main__":
    sys.exit(main())
