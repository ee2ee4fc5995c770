"""Every strategy on every seed on one budget, scored by a NAS-Bench-201 table.

    python -m darts.compare --space nb201 --benchmark table.csv \\
        --strategies random,evolution,ga,reinforce,anneal,bo --seeds 20 --budget 100 --out DIR

Each (strategy, seed) is one run of `--budget` table queries (or `--budget_seconds` of the
table's training times), selecting on `--metric` and reporting `--report` of the best so far,
as NAS-Bench-201's paper does. Written to DIR:

    summary.csv       strategy, seed, best_arch, best_score, best_reported, rank (by --report)
    curves.csv        strategy, seed, evaluation, best_score, best_reported (best so far)
    summary.md        per strategy: mean and standard deviation of the final reported metric,
                      median rank, runs that found the table's optimum, distance to random
    best_so_far.png   the reported metric of the incumbent (the best so far by --metric)
                      against evaluations: the mean over seeds and a band of one standard
                      deviation, one line per strategy; whole and zoomed on the last 3/4

Strategies use their defaults (those of `train_search.py --strategy X`). Everything is checked
before the first run (the table, its columns, that DIR can be made): a table with a gap in
--metric, --report or (for --budget_seconds) the training times is refused, and nothing is
written.
"""

from __future__ import annotations

import csv
import errno
import io
import math
import os
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from darts import plugins
from darts.benchmarks.nb201 import BenchmarkTable
from darts.errors import UserError
from darts.evaluators.benchmark import BenchmarkEvaluator
from darts.registry import Choices
from darts.spaces import SPACES
from darts.strategies import STRATEGIES
from darts.strategies import run as run_strategy
from darts.train.cli import Parser, command, report
from darts.train.config import finite_float
from darts.train.files import atomic_open, write_error

NASWOT = "naswot"
WARM = "+warm"


def on_a_table() -> list[str]:
    """The strategies a table can score: not those that train what they propose (ENAS's shared
    weights, network morphism's inherited ones: `scored_by_table` False)."""
    return [n for n, c in STRATEGIES.items() if getattr(c, "scored_by_table", True)]


def check_strategies(names: Sequence[str]) -> None:
    """Each name a registered strategy, `X+warm` (X warm-startable) or `naswot`."""
    for name in names:
        base = name[:-len(WARM)] if name.endswith(WARM) else name
        if base in STRATEGIES and base not in on_a_table():
            raise UserError(f"--strategies: {base} trains the networks it proposes, which a "
                            f"table cannot stand for; compare {', '.join(on_a_table())}")
        ok = name == NASWOT or (base in STRATEGIES and (
            base == name or getattr(STRATEGIES[base], "warm_startable", False)))
        if not ok:
            able = [n + WARM for n, c in STRATEGIES.items() if getattr(c, "warm_startable", False)]
            raise UserError(f"--strategies {','.join(names)}: choose from "
                            f"{', '.join(STRATEGIES)}, {', '.join(able)} or {NASWOT} ({name!r} "
                            f"is none of them)")


def _naswot(ranker, space, evaluator, sample: int, seed: int, budget: int):
    """NASWOT's recipe (Mellor et al., ICML 2021): `sample` random candidates ranked by the
    proxy, the best queried in the table once; its curve is flat over the budget."""
    from darts.proxies.score import sample_candidates
    from darts.spaces import to_text

    best = ranker.rank(sample_candidates(space, sample, seed, stream="naswot"))[0]
    result = evaluator(best)
    record = {"n": 1, "candidate": to_text(space, best), "score": result.score,
              "reported": result.reported, "cost": result.cost}
    return [record], [(result.score, result.reported)] * budget


def compare(table: BenchmarkTable, strategies: Sequence[str], seeds: int, budget: int,
            metric: str = "cifar10_valid", report_metric: str = "cifar10_test",
            budget_seconds: float | None = None, progress=None, space: Any = None,
            ranker: Any = None, warm_start: int = 100, naswot_sample: int = 100
            ) -> list[dict[str, Any]]:
    """One record per (strategy, seed): the run's best and its best-so-far curve. `X+warm`
    starts strategy X from the best of `warm_start` random candidates ranked by `ranker`
    (darts.evaluators.proxy.ProxyRanker); `naswot` queries the table once, for the best of
    `naswot_sample` random candidates. Table queries and proxy evaluations are counted apart."""
    from darts.multitrial import make_strategy
    from darts.proxies.score import sample_candidates
    from darts.search_config import SearchConfig
    from darts.spaces import nb201, to_text

    space = nb201 if space is None else space

    evaluator = BenchmarkEvaluator(table, metric, report_metric, budget_seconds=budget_seconds)
    optimum = max(r[report_metric] for r in table.rows.values() if not math.isnan(r[report_metric]))
    runs = []
    for name in strategies:
        for seed in range(seeds):
            proxied = ranker.scored if ranker is not None else 0
            if name == NASWOT:
                records, flat = _naswot(ranker, space, evaluator, naswot_sample, seed, budget)
            else:
                base = name[:-len(WARM)] if name.endswith(WARM) else name
                strategy = make_strategy(SearchConfig(strategy=base, seed=seed), space)
                if name.endswith(WARM):
                    strategy.warm_start(ranker.rank(sample_candidates(space, warm_start, seed,
                                                                      stream="warm")))
                records = run_strategy(strategy, evaluator, None if budget_seconds else budget,
                                       seconds=budget_seconds or None,
                                       to_text=lambda c: to_text(space, c))
                flat = None
            proxied = (ranker.scored if ranker is not None else 0) - proxied
            curve, best = [], None
            for r in records:
                if best is None or r["score"] > best["score"]:
                    best = r
                curve.append((best["score"], best["reported"]))
            rank = table.rank(best["candidate"], report_metric)
            runs.append({"strategy": name, "seed": seed, "best_arch": best["candidate"],
                         "best_score": best["score"], "best_reported": best["reported"],
                         "rank": rank, "optimum": best["reported"] >= optimum,
                         "evaluations": len(records), "proxy_evaluations": proxied,
                         "curve": flat or curve})
            if progress is not None:
                progress(runs[-1])
    return runs


def summary_table(runs: list[dict[str, Any]], report_metric: str) -> str:
    """The per-strategy table (Markdown), random search first where it ran."""
    names = list(dict.fromkeys(r["strategy"] for r in runs))
    finals = {n: [r["best_reported"] for r in runs if r["strategy"] == n] for n in names}
    ranks = {n: [r["rank"] for r in runs if r["strategy"] == n] for n in names}
    found = {n: sum(r["optimum"] for r in runs if r["strategy"] == n) for n in names}
    base = statistics.mean(finals["random"]) if "random" in finals else None
    seeds = len(finals[names[0]])
    lines = [f"| strategy | {report_metric} of the best (mean ± sd) | median rank | found the "
             f"optimum | vs random |", "|---|---|---|---|---|"]
    for n in names:
        mean = statistics.mean(finals[n])
        sd = statistics.stdev(finals[n]) if len(finals[n]) > 1 else 0.0
        gap = "" if base is None or n == "random" else f"{mean - base:+.2f}"
        lines.append(f"| {n} | {mean:.2f} ± {sd:.2f} | {statistics.median(ranks[n]):g} | "
                     f"{found[n]}/{seeds} | {gap} |")
    return "\n".join(lines) + "\n"


def _write_text(path: Path, text: str) -> None:
    with atomic_open(path) as f:
        f.write(text.encode("utf-8"))


def _csv_text(header: list[str], rows: list[list[Any]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return out.getvalue()


# One look per strategy: colour, line style and marker differ, so curves that coincide (the
# strategies that start from random samples share their first evaluations) stay apart.
_STYLES = [("-", "o"), ("--", "s"), ("-.", "^"), (":", "D"), ("-", "v"), ("--", "P"),
           ("-.", "X"), (":", "*")]


def _mean_band(curves: list[list[float]]) -> tuple[list[float], list[float], list[float]]:
    """(mean, mean - sd, mean + sd) over runs at each evaluation, up to the shortest run."""
    length = min(len(c) for c in curves)
    means = [statistics.mean(c[i] for c in curves) for i in range(length)]
    sds = [statistics.pstdev([c[i] for c in curves]) for i in range(length)]
    return (means, [m - s for m, s in zip(means, sds, strict=True)],
            [m + s for m, s in zip(means, sds, strict=True)])


def plot(runs: list[dict[str, Any]], path: Path, report_metric: str, title: str,
         metric: str = "cifar10_valid") -> None:
    """The reported metric of each run's incumbent (its best so far by the selection
    `metric`): the mean over seeds and a band of one standard deviation per strategy. The
    incumbent changes only when a better `metric` is found, and its reported metric may then
    drop, so a curve may go down. Left: every evaluation, its y-range holding every curve and
    band; right: the last three quarters, zoomed the same way."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(r["strategy"] for r in runs))
    bands = {n: _mean_band([[rep for _, rep in r["curve"]] for r in runs if r["strategy"] == n])
             for n in names}
    length = min(len(b[0]) for b in bands.values())
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), dpi=120)
    for ax, first in zip(axes, (0, length // 4), strict=True):
        lows, highs = [], []
        for k, name in enumerate(names):
            means, low, high = (v[first:] for v in bands[name])
            xs = range(first + 1, first + len(means) + 1)
            colour = plt.get_cmap("tab10")(k % 10)
            style, marker = _STYLES[k % len(_STYLES)]
            ax.fill_between(xs, low, high, color=colour, alpha=0.12, linewidth=0, zorder=1)
            # markers at staggered evaluations, so that coinciding curves show each marker
            every = max(1, len(means) // 8)
            ax.plot(xs, means, label=name, color=colour, linestyle=style, linewidth=1.2,
                    marker=marker, markersize=4, markevery=(k * every // len(names), every),
                    zorder=3 + k)
            lows += low
            highs += high
        pad = max(0.02 * (max(highs) - min(lows)), 0.05)
        ax.set_ylim(min(lows) - pad, max(highs) + pad)
        ax.set_xlabel("evaluations")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(f"{report_metric} of the best by {metric} so far (%)")
    axes[0].set_title("every evaluation", fontsize=9)
    axes[1].set_title(f"from evaluation {length // 4 + 1} on (zoomed)", fontsize=9)
    handles, labels = axes[0].get_legend_handles_labels()  # below the plots: it hides nothing
    fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.0),
               ncol=min(len(names), 8), fontsize=8, frameon=False)
    fig.suptitle(f"{title}; mean over seeds, band: one standard deviation", fontsize=10)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", bbox_inches="tight")
    plt.close(fig)
    with atomic_open(path) as f:
        f.write(buffer.getvalue())


def _out_error(out: Path, error: OSError) -> UserError:
    """The standard one-line message of a write that failed, naming --out as the flag."""
    return UserError(str(write_error(out, error)).replace("--save", "--out"))


def check_out(out: Path) -> None:
    """Refuses, before any run, an --out that is a file or a folder that cannot be made or
    written (one line naming it); nothing is created here."""
    try:
        if out.exists() and not out.is_dir():
            raise UserError(f"--out {out}: a file, not a folder; choose a new folder for the "
                            f"results (or remove the file)")
        base = out
        while not base.exists() and base != base.parent:
            base = base.parent
        if not base.is_dir():
            raise UserError(f"--out {out}: {base} is a file, so the folder cannot be made; "
                            f"choose another --out")
        if not os.access(base, os.W_OK | os.X_OK):
            read_only = bool(os.statvfs(base).f_flag & os.ST_RDONLY)
            code = errno.EROFS if read_only else errno.EACCES
            raise _out_error(out, OSError(code, os.strerror(code)))
    except OSError as e:
        raise _out_error(out, e) from None


def write(runs: list[dict[str, Any]], out: Path, report_metric: str, title: str,
          metric: str = "cifar10_valid") -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise UserError(f"--out {out}: a file, not a folder; choose a new folder for the "
                        f"results (or remove the file)") from None
    except OSError as e:
        raise _out_error(out, e) from None
    _write_text(out / "summary.csv", _csv_text(
        ["strategy", "seed", "best_arch", "best_score", "best_reported", "rank", "evaluations",
         "proxy_evaluations"],
        [[r["strategy"], r["seed"], r["best_arch"], r["best_score"], r["best_reported"],
          r["rank"], r["evaluations"], r.get("proxy_evaluations", 0)] for r in runs]))
    _write_text(out / "curves.csv", _csv_text(
        ["strategy", "seed", "evaluation", "best_score", "best_reported"],
        [[r["strategy"], r["seed"], n, score, rep] for r in runs
         for n, (score, rep) in enumerate(r["curve"], start=1)]))
    _write_text(out / "summary.md", f"{title}\n\n{summary_table(runs, report_metric)}")
    plot(runs, out / "best_so_far.png", report_metric, title, metric)


def _ranker(args, space: Any):
    """The proxies' ranker of the proxy-guided rows (seed 0: every run's candidates are scored
    on the same batch and initial weights)."""
    from darts.evaluators.proxy import ProxyRanker, parse_weights, settings_of
    from darts.search_config import SearchConfig, resolved

    if args.warm_start < 1 or args.naswot_sample < 1:
        raise UserError("--warm_start and --naswot_sample must be at least 1")
    weights = parse_weights(args.proxy)
    cfg = resolved(SearchConfig(space=args.space, dataset=args.dataset, data=args.data,
                                image_size=args.image_size, batch_size=args.batch_size,
                                init_channels=args.init_channels or 16, layers=args.layers,
                                plugins=args.plugins))
    return ProxyRanker(space, weights, settings_of(cfg, space, tuple(weights)))


def main(argv: list[str] | None = None) -> int:
    parser = Parser(prog=" ".join(command("python -m darts.compare", "darts-compare")),
                    description="Every strategy on every seed on one budget, scored by a "
                                "benchmark table (NAS-Bench-201, NAS-Bench-101): summary.csv, "
                                "summary.md, best_so_far.png.")
    try:
        plugins.preload(argv)
    except UserError as e:
        return report(e)
    parser.add_argument("--plugins", default="",
                        help="Python files (or module names), comma-separated, imported first: "
                             "they may register strategies (darts.strategies.register_strategy)")
    scored = Choices((), SPACES, lambda n: getattr(SPACES[n], "SCORED_BY_TABLE", False))
    parser.add_argument("--space", default=next(iter(scored)), choices=scored,
                        help="the space (one that a benchmark table scores: nb201, nb101)")
    parser.add_argument("--benchmark", required=True,
                        help="the space's CSV table (darts.benchmarks.nb201, darts.nb101)")
    parser.add_argument("--strategies", default=",".join(on_a_table()),
                        help="comma-separated strategies")
    parser.add_argument("--seeds", type=int, default=20, help="runs per strategy (seeds 0..N-1)")
    parser.add_argument("--budget", type=int, default=100, help="evaluations per run")
    parser.add_argument("--budget_seconds", type=finite_float, default=0.0,
                        help="instead of --budget: the table's training seconds per run")
    parser.add_argument("--metric", default="cifar10_valid", help="the column strategies maximise")
    parser.add_argument("--report", default="cifar10_test", help="the column reported")
    parser.add_argument("--out", required=True, help="the folder to write")
    g = parser.add_argument_group("proxy-guided rows (X+warm, naswot; docs/proxies.md)")
    g.add_argument("--proxy", default="nwot", help="the proxy (or a vote, A,B:2) that ranks")
    g.add_argument("--warm_start", type=int, default=100,
                   help="X+warm: random candidates ranked by --proxy; X starts from the best")
    g.add_argument("--naswot_sample", type=int, default=100,
                   help="naswot: random candidates ranked by --proxy; the best is queried")
    g.add_argument("--dataset", default="cifar10", help="the proxies' images")
    g.add_argument("--data", default="data", help="the proxies' dataset root")
    g.add_argument("--image_size", type=int, default=None)
    g.add_argument("--batch_size", type=int, default=64, help="the proxies' batch")
    g.add_argument("--init_channels", type=int, default=None, help="the proxies' network width")
    g.add_argument("--layers", type=int, default=None, help="the proxies' network depth")
    args = parser.parse_args(argv)
    try:
        names = [s.strip() for s in args.strategies.split(",") if s.strip()]
        if not names:
            raise UserError(f"--strategies {args.strategies}: choose from {', '.join(STRATEGIES)}")
        check_strategies(names)
        if len(set(names)) != len(names):
            raise UserError(f"--strategies {args.strategies}: a strategy is listed twice")
        if args.seeds < 1 or args.budget < 1 or args.budget_seconds < 0:
            raise UserError("--seeds and --budget must be at least 1, --budget_seconds 0 or more")
        space = SPACES[args.space]
        table = BenchmarkTable.load(args.benchmark, space)
        if hasattr(space, "for_table"):  # a NAS-Bench-101 subset table: its cells
            space = space.for_table(table)
        # the columns, their gaps and the time budget's training times, before any run
        BenchmarkEvaluator(table, args.metric, args.report, budget_seconds=args.budget_seconds)
        check_out(Path(args.out))
        total, done = len(names) * args.seeds, [0]

        def progress(r: dict[str, Any]) -> None:
            done[0] += 1
            print(f"[{done[0]}/{total}] {r['strategy']} seed {r['seed']}: best "
                  f"{r['best_score']:.2f} ({args.report} {r['best_reported']:.2f}, rank "
                  f"{r['rank']})", flush=True)

        ranker = None
        if any(n == NASWOT or n.endswith(WARM) for n in names):
            ranker = _ranker(args, space)
        runs = compare(table, names, args.seeds, args.budget, args.metric, args.report,
                       args.budget_seconds or None, progress, space=space,
                       ranker=ranker, warm_start=args.warm_start,
                       naswot_sample=args.naswot_sample)
        budget = (f"{args.budget_seconds:g} s of training time" if args.budget_seconds
                  else f"{args.budget} evaluations")
        title = (f"{Path(args.benchmark).name}: {args.seeds} seeds, {budget}, selected on "
                 f"{args.metric}")
        try:
            write(runs, Path(args.out), args.report, title, args.metric)
        except UserError as e:  # atomic_open's message names --save, the runs' flag
            raise UserError(str(e).replace("--save", "--out")) from None
    except UserError as e:
        return report(e)
    print(summary_table(runs, args.report), end="")
    print(f"written to {args.out}: summary.csv, curves.csv, summary.md, best_so_far.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
