"""The shared command line of train_search.py and train_final.py: flags from a config
dataclass, `--resume RUN_DIR`, and one clear message (exit 2) for a user's mistake.

`Parser` is argparse with whole flag names only (`--epoch` is not taken for `--epochs`) and
a one-line error; `main` is the one place where a run's `UserError` becomes `error: ...` on
standard error and exit status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from darts import plugins
from darts.errors import UserError, one_line
from darts.train.config import add_arguments, from_arguments, given_flags

EXIT_USER_ERROR = 2


class Parser(argparse.ArgumentParser):
    """argparse without flag abbreviations, whose errors are one line and exit 2."""

    def __init__(self, *args: Any, **kwargs: Any):
        kwargs.setdefault("allow_abbrev", False)
        kwargs.setdefault("formatter_class", argparse.ArgumentDefaultsHelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USER_ERROR, f"error: {' '.join(message.split())} "
                                   f"(`{self.prog} --help` lists the flags)\n")


def command(module_form: str, installed: str) -> list[str]:
    """How to call a command in what this process prints: `installed` (e.g. darts-final)
    where this process was started as an installed command itself, else `module_form` (e.g.
    "python train_final.py" or "python -m darts.compare") from a checkout."""
    return [installed] if Path(sys.argv[0]).name.startswith("darts-") else module_form.split()


def report(error: UserError) -> int:
    """Prints a user's mistake as one line on standard error; returns the exit status."""
    print(f"error: {one_line(error)}", file=sys.stderr)
    return EXIT_USER_ERROR


def parse_args(cls: type, description: str, what: str,
               argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = Parser(description=description)
    try:
        plugins.preload(argv)
    except UserError as e:
        parser.exit(report(e))
    add_arguments(parser, cls)
    resumable = ", ".join("--" + k for k in getattr(cls, "RESUMABLE", ()))
    parser.add_argument("--resume", metavar="RUN_DIR",
                        help=f"continue the {what} in RUN_DIR (or from its checkpoint.pt) with the "
                             "config it was started with; other flags are ignored"
                             + (f", except {resumable}, which change it from the epoch "
                                "reached (e.g. after a diverged epoch)" if resumable else "")
                             + ("; --epochs, if given, must be the run's own: its epochs fix "
                                "its schedule, so a longer run is a new run"
                                if "epochs" in {f.name for f in dataclasses.fields(cls)} else ""))
    return parser.parse_args(argv)


def main(cls: type, run: Callable[..., Any], description: str, what: str,
         argv: Sequence[str] | None = None) -> int:
    """Parses the flags into `cls` and calls `run(config, resume=...)`; returns the exit code."""
    args = parse_args(cls, description, what, argv)
    given = given_flags(args, cls)
    # --epochs goes to the run with the changes, which refuses another number of epochs
    # than the run's own (darts.train.checkpoint.resume_changes): never silently ignored.
    resumable = set(getattr(cls, "RESUMABLE", ())) | {"epochs"} if args.resume else set()
    ignored = sorted(given - resumable)
    if args.resume and ignored:
        print(f"warning: --resume continues with the run's saved config; ignoring "
              f"{', '.join('--' + f for f in ignored)}", file=sys.stderr)
    cfg = from_arguments(cls, args)
    changes = {k: getattr(cfg, k) for k in sorted(given & resumable)}
    try:
        run(cfg, resume=args.resume, **({"changes": changes} if changes else {}))
    except UserError as e:
        return report(e)
    except Exception as e:  # a plugin's own code that fails: named as the plugin's
        where = plugins.blame(e)
        if where is None:
            raise
        message = " ".join(str(e).split()) or "(no message)"
        print(f"error: {type(e).__name__} {where}: {message}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("interrupted: --resume RUN_DIR continues where the run stopped (the epoch or "
              "evaluation in progress is done again); a run that had not finished its first "
              "epoch or evaluation leaves nothing", file=sys.stderr)
        return 130
    return 0
