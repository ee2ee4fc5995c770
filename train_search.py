#!/usr/bin/env python
"""Search a cell with DARTS (Liu, Simonyan and Yang, ICLR 2019).

    python train_search.py                                   # CIFAR-10, the paper's settings (second order)
    python train_search.py --order 1                         # first order: about 3x faster
    python train_search.py --order 2 --hessian exact         # exact Hessian-vector products
    python train_search.py --dataset synthetic --epochs 2 --layers 5 --init_channels 8   # offline
    python train_search.py --resume runs/search-cifar10-...  # continue a stopped search
    python train_search.py --method pc-darts                 # a published method's flag values

The run directory ends with genotype.json; the last log line is the train_final.py command
that retrains it.
"""

from __future__ import annotations

import sys

from darts.errors import UserError
from darts.methods import presets
from darts.search import SearchConfig, run
from darts.train import cli

DESCRIPTION = "DARTS architecture search (the paper's settings by default)."


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)

    def run_method(cfg: SearchConfig, resume: str | None = None, **changes):
        """`--method NAME` sets its preset's flags, except those given explicitly."""
        if resume is None and cfg.method:
            given = cli.given_flags(cli.parse_args(SearchConfig, DESCRIPTION, "search", argv),
                                    SearchConfig)
            cfg = presets.apply(cfg, explicit=given - {"method"})
            try:
                return run(cfg, resume=resume)
            except UserError as e:  # a flag the preset set: say so
                flags = [k for k in presets.PRESETS[cfg.method]
                         if k not in given and f"--{k}" in str(e)]
                if flags:
                    raise UserError(f"{e} (--method {cfg.method} sets --{flags[0]}; an explicit "
                                    f"--{flags[0]} overrides it)") from None
                raise
        return run(cfg, resume=resume, **changes)

    return cli.main(SearchConfig, run_method, DESCRIPTION, "search", argv)


if __name__ == "__main__":
    sys.exit(main())
