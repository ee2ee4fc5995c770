#!/usr/bin/env python
"""Retrain a genotype from scratch with the DARTS paper's recipe.

    python train_final.py --genotype darts_v2                     # CIFAR-10, the paper's recipe
    python train_final.py --genotype runs/search-.../genotype.json --dataset cifar100
    python train_final.py --dataset imagenet --data /path/to/imagenet --genotype darts_v2
    python train_final.py --dataset synthetic --epochs 2 --layers 6 --init_channels 8   # offline
    python train_final.py --resume runs/final-cifar10-darts_v2-...   # continue a stopped run

`darts-final` (installed by `pip install .`) is the same command.
"""

import sys

from darts.final import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
