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

import argparse
import sys

from darts.config import add_arguments, from_arguments, given_flags
from darts.errors import UserError
from darts.search import SearchConfig, run


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="DARTS architecture search (the paper's settings by default).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_arguments(parser, SearchConfig)
    parser.add_argument("--resume", metavar="RUN_DIR",
                        help="continue the search in RUN_DIR (or from its checkpoint.pt) with the "
                             "config it was started with; other flags are ignored")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    ignored = sorted(given_flags(args, SearchConfig))
    if args.resume and ignored:
        print(f"warning: --resume continues with the run's saved config; ignoring "
              f"{', '.join('--' + f for f in ignored)}", file=sys.stderr)
    try:
        run(from_arguments(SearchConfig, args), resume=args.resume)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: the last finished epoch is in checkpoint.pt (resume with --resume RUN_DIR)",
              file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
