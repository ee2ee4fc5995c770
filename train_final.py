#!/usr/bin/env python
"""Retrain a genotype from scratch with the DARTS paper's recipe.

    python train_final.py --genotype darts_v2                     # CIFAR-10, the paper's recipe
    python train_final.py --genotype runs/search-.../genotype.json --dataset cifar100
    python train_final.py --dataset imagenet --data /path/to/imagenet --genotype darts_v2
    python train_final.py --dataset synthetic --epochs 2 --layers 6 --init_channels 8   # offline
    python train_final.py --resume runs/final-cifar10-darts_v2-...   # continue a stopped run
"""

from __future__ import annotations

import argparse
import sys

from darts.config import add_arguments, from_arguments, given_flags
from darts.errors import UserError
from darts.final import FinalConfig, run


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Retrain a DARTS genotype from scratch (the paper's recipe by default).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_arguments(parser, FinalConfig)
    parser.add_argument("--resume", metavar="RUN_DIR",
                        help="continue the run in RUN_DIR (or from its checkpoint.pt) with the "
                             "config it was started with; other flags are ignored")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    ignored = sorted(given_flags(args, FinalConfig))
    if args.resume and ignored:
        print(f"warning: --resume continues with the run's saved config; ignoring "
              f"{', '.join('--' + f for f in ignored)}", file=sys.stderr)
    try:
        run(from_arguments(FinalConfig, args), resume=args.resume)
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
