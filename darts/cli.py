"""The shared command line of train_search.py and train_final.py: flags from a config
dataclass, `--resume RUN_DIR`, and one clear message (exit 2) for a user's mistake."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any

from darts.config import add_arguments, from_arguments, given_flags
from darts.errors import UserError


def parse_args(cls: type, description: str, what: str,
               argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_arguments(parser, cls)
    parser.add_argument("--resume", metavar="RUN_DIR",
                        help=f"continue the {what} in RUN_DIR (or from its checkpoint.pt) with the "
                             "config it was started with; other flags are ignored")
    return parser.parse_args(argv)


def main(cls: type, run: Callable[..., Any], description: str, what: str,
         argv: Sequence[str] | None = None) -> int:
    """Parses the flags into `cls` and calls `run(config, resume=...)`; returns the exit code."""
    args = parse_args(cls, description, what, argv)
    ignored = sorted(given_flags(args, cls))
    if args.resume and ignored:
        print(f"warning: --resume continues with the run's saved config; ignoring "
              f"{', '.join('--' + f for f in ignored)}", file=sys.stderr)
    try:
        run(from_arguments(cls, args), resume=args.resume)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: the last finished epoch is in checkpoint.pt (resume with --resume RUN_DIR)",
              file=sys.stderr)
        return 130
    return 0
