"""`python -m darts.proxies`: score candidates with zero-cost proxies, and how the scores rank
against a benchmark table (docs/proxies.md).

    python -m darts.proxies score --space nb201 --all --proxies synflow,jacov,nwot --out s.csv
    python -m darts.proxies score --space darts --sample 200 --seed 0 --proxies nwot --out d.csv
    python -m darts.proxies correlate s.csv --benchmark nb201.csv --metric cifar10_test
"""

from __future__ import annotations

import itertools
import json
import sys
from pathlib import Path
from typing import Any

from darts import plugins
from darts.errors import UserError
from darts.train.cli import Parser, report


def read_candidates(space: Any, path: str) -> list[Any]:
    """The candidates of a file, one per line in the space's text form (or, where the space
    reads them, a JSON object per line); blank lines skipped. One UserError naming the line."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise UserError(f"--archs {path}: cannot read it ({e.strerror or type(e).__name__})") from None
    out = []
    for n, line in enumerate(lines, 1):
        text = line.strip()
        if not text:
            continue
        where = f"--archs {path}, line {n}"
        try:
            if text.startswith("{") and hasattr(space, "from_json"):
                try:
                    data = json.loads(text)
                except json.JSONDecodeError as e:
                    raise UserError(f"not JSON ({e.msg})") from None
                out.append(space.from_json(data, where))
            else:
                out.append(space.parse(text))
        except UserError as e:
            raise UserError(f"{where}: {e}") from None
    if not out:
        raise UserError(f"--archs {path}: no candidate in it (one per line)")
    return out


def _score(args) -> int:
    from darts.proxies import proxy_names
    from darts.proxies.score import (
        ScoreSettings,
        default_threads,
        sample_candidates,
        score_to_csv,
        summary_line,
    )
    from darts.spaces import get_space

    space = get_space(args.space)
    if sum(x is not None and x is not False for x in (args.archs, args.sample, args.all or None)) != 1:
        raise UserError("give exactly one of --archs FILE, --sample N, --all")
    names = tuple(proxy_names(args.proxies))
    if args.workers < 1:
        raise UserError(f"--workers {args.workers}: must be at least 1")
    if args.batch_size < 2:
        raise UserError(f"--batch_size {args.batch_size}: must be at least 2")
    if args.archs is not None:
        candidates = read_candidates(space, args.archs)
    elif args.sample is not None:
        if args.sample < 1:
            raise UserError(f"--sample {args.sample}: must be at least 1")
        candidates = sample_candidates(space, args.sample, args.seed)
    else:
        if not hasattr(space, "all_candidates"):
            raise UserError(f"--all: the {args.space} space cannot be listed; give --sample N")
        candidates = list(itertools.islice(space.all_candidates(), args.limit))
    settings = ScoreSettings(
        args.space, plugins.absolute(args.plugins), names, args.dataset, args.data,
        args.batch_size, args.image_size, args.num_classes, args.synthetic_size, args.channels,
        args.layers, args.seed, args.threads or default_threads(args.workers),
        args.channels_last)
    summary = score_to_csv(settings, candidates, args.out, workers=args.workers,
                           progress=args.progress and sys.stderr.isatty())
    print(summary_line(summary), file=sys.stderr)
    print(f"scores: {args.out}; summary: {args.out}.json", file=sys.stderr)
    return 0


def _correlate(args) -> int:
    from darts.proxies.correlate import correlate, format_table
    from darts.spaces import get_space

    result = correlate(args.scores, args.benchmark, args.metric, out=args.out,
                       plots=not args.no_plots, space=get_space(args.space))
    print(format_table(result))
    return 0


def parser() -> Parser:
    from darts.proxies import PROXIES
    from darts.spaces import SPACES

    p = Parser(prog="python -m darts.proxies", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser)
    s = sub.add_parser("score", help="score candidates into a CSV")
    s.add_argument("--plugins", default="", help="Python files registering spaces, ops, proxies")
    s.add_argument("--space", default="nb201", choices=SPACES)
    s.add_argument("--archs", help="a file of candidates, one per line (the space's text form, "
                                   "as history.jsonl records it; darts: or a genotype JSON object)")
    s.add_argument("--sample", type=int, help="instead: N different candidates drawn by --seed")
    s.add_argument("--all", action="store_true", help="instead: every candidate of the space")
    s.add_argument("--limit", type=int, default=None, help="with --all: the first N only")
    s.add_argument("--proxies", default="synflow,jacov,nwot",
                   help=f"comma-separated: {', '.join(PROXIES)}")
    s.add_argument("--dataset", default="cifar10",
                   choices=("cifar10", "cifar100", "ImageNet16-120", "folder", "synthetic"))
    s.add_argument("--data", default="data", help="dataset root")
    s.add_argument("--batch_size", type=int, default=64, help="images of the one batch")
    s.add_argument("--image_size", type=int, default=None)
    s.add_argument("--num_classes", type=int, default=None)
    s.add_argument("--synthetic_size", type=int, default=5000)
    s.add_argument("--channels", type=int, default=None, help="network channels (the space's default)")
    s.add_argument("--layers", type=int, default=None, help="network layers (the space's default)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--workers", type=int, default=1, help="scoring processes")
    s.add_argument("--threads", type=int, default=0, help="torch threads per process (0: the CPUs / workers)")
    s.add_argument("--out", default="scores.csv")
    s.add_argument("--channels_last", action=__import__("argparse").BooleanOptionalAction,
                   default=True, help="the channels-last memory format (faster on a CPU)")
    s.add_argument("--progress", action=__import__("argparse").BooleanOptionalAction, default=True)
    c = sub.add_parser("correlate", help="rank correlations of a scores CSV with a table")
    c.add_argument("scores")
    c.add_argument("--benchmark", required=True, help="the space's CSV table")
    c.add_argument("--space", default="nb201", choices=SPACES, help="the scores' space")
    c.add_argument("--metric", default="cifar10_test")
    c.add_argument("--out", default=None, help="folder of the report (default: beside the scores)")
    c.add_argument("--no_plots", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        plugins.preload(argv)
    except UserError as e:
        return report(e)
    args = parser().parse_args(argv)
    try:
        return _score(args) if args.command == "score" else _correlate(args)
    except UserError as e:
        return report(e)


if __name__ == "__main__":
    sys.exit(main())
