"""DARTS and its published collapse fixes on NAS-Bench-201's space: the derived cell, its skip
connections and its table score after every epoch, per method and seed.

    python benchmarks/collapse_nb201.py --protocol cpu50 --benchmark synthetic.csv \\
        --dataset folder --data ../shared/data/cifar10-5k --seeds 3 --jobs 2 --keep \\
        --json benchmarks/results/cpu-amd-epyc/collapse_cpu50.json \\
        --figure docs/results/collapse-cpu50/collapse_cpu50.png --markdown collapse_cpu50.md

Each (method, seed) is one `train_search.py --space nb201 --method M` run in `--runs`
(`<method>-s<seed>`); the rows are read back from its metrics.json (the derived cell, its skip
connections and, with `--benchmark`, its table score after every epoch). The run directories
are the record: `--keep` reuses a finished run, resumes an unfinished one from its last epoch
(`train_search.py --resume`), and runs the missing ones, so a grid can be stopped and continued
across days. The JSON holds every run found in `--runs`, so separate invocations (another
method, one seed of `darts-hvp`) add to one grid.

The JSON keeps every epoch's derived cell, so a grid is scored again by another table without
its runs (e.g. a grid measured with a synthetic table, by the official one, converted):

    python benchmarks/collapse_nb201.py --from_json benchmarks/results/cpu-amd-epyc/collapse_cpu50.json \\
        --score_with nb201.csv --json scored.json --markdown scored.md --figure scored.png

Protocols (every deviation from a method's published settings is listed here):
- `benchmark`: NAS-Bench-201's, 50 epochs on CIFAR-10 with C = 16, N = 5 (a GPU's work).
- `cpu50`: what one CPU core runs in minutes and what still shows DARTS's collapse: C = 8,
  N = 1, 16-pixel images, 50 epochs, batch 64, first order, one thread per run (`--jobs` runs
  side by side). Warm-up epochs as the methods' code gives them for its own epochs (P-DARTS 10
  of a 25-epoch stage, PC-DARTS 15 of 50); P-DARTS runs one 50-epoch stage; P-DARTS's and
  PC-DARTS's batch size, final learning rate, learning rate and alpha learning rate are left at
  DARTS's, so that every method sees the same data and steps.
- `reduced`: as cpu50 but 10 epochs, warm-up epochs scaled by 10/50, the threads of the machine.
- ENAS (`--method enas`, NAS-Bench-201's ENAS settings) takes the reduced network, images,
  batch size and epochs; it has no alphas and no `--order`.
A reduced run shows whether a method collapses in this setting, not its published number.

Entries beyond the presets: `darts-o2` is DARTS's second order (finite-difference Hessian,
eq. 8), `darts-hvp` the same with the exact Hessian-vector product.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

METHODS = ("darts", "gdas", "drnas", "fairdarts", "beta-darts", "sdarts-rs", "sdarts-adv",
           "darts-minus", "pdarts", "pc-darts", "enas")
# Methods without alphas (no --order): ENAS's controller samples the cell.
NO_ALPHAS = ("enas",)
# Entries that are a preset with other flags: (preset, flags).
VARIANTS = {
    "darts-o2": ("darts", ["--order", "2"]),
    "darts-hvp": ("darts", ["--order", "2", "--hessian", "exact"]),
}

# Published CIFAR-10 test accuracy (%) of each method's cell on NAS-Bench-201, the mean of the
# papers' runs, with the source. DARTS's collapsed cell is the all-skip cell.
PUBLISHED = {
    "darts": (54.30, "Dong & Yang, ICLR 2020 (NAS-Bench-201), DARTS-V1's all-skip cell"),
    "darts-o2": (54.30, "Dong & Yang, ICLR 2020 (NAS-Bench-201), DARTS-V2's all-skip cell"),
    "gdas": (93.61, "Dong & Yang, ICLR 2020 (NAS-Bench-201)"),
    "drnas": (94.36, "Chen et al., ICLR 2021 (DrNAS)"),
    "beta-darts": (94.36, "Ye et al., CVPR 2022 (beta-DARTS)"),
    "darts-minus": (93.80, "Chu et al., ICLR 2021 (DARTS-)"),
    "pc-darts": (93.41, "Chen et al., ICLR 2021 (DrNAS), their run of PC-DARTS"),
    "enas": (53.89, "Dong & Yang, ICLR 2020 (NAS-Bench-201), Table 5"),
}

SMALL = ["--layers", "1", "--init_channels", "8", "--image_size", "16", "--batch_size", "64"]
FIRST_ORDER = ["--order", "1"]  # the protocols' alpha step, for the methods with alphas
PROTOCOLS = {
    "benchmark": ([], {}),
    "cpu50": (SMALL + ["--epochs", "50", "--threads", "1"], {
        "pdarts": ["--warmup_epochs", "10", "--learning_rate_min", "0.001",
                   "--arch_learning_rate", "3e-4"],
        "pc-darts": ["--warmup_epochs", "15", "--learning_rate", "0.025",
                     "--arch_learning_rate", "3e-4"],
    }),
    "reduced": (SMALL + ["--epochs", "10"], {
        "pdarts": ["--warmup_epochs", "2", "--learning_rate_min", "0.001",
                   "--arch_learning_rate", "3e-4"],
        "pc-darts": ["--warmup_epochs", "3", "--learning_rate", "0.025",
                     "--arch_learning_rate", "3e-4"],
    }),
}
COLLAPSE = (4, 5, 6)  # skip counts (of the cell's 6 edges) whose first epoch is reported
# The figure's columns: methods drawn together (at most five lines a panel); plain DARTS's mean
# is drawn in every other column as a dashed grey reference. Entries in no group go last.
GROUPS = (
    ("DARTS first and second order, ENAS", ("darts", "darts-o2", "darts-hvp", "enas")),
    ("changed mixing: GDAS, DrNAS, FairDARTS, PC-DARTS", ("gdas", "drnas", "fairdarts", "pc-darts")),
    ("regularised search: beta-DARTS, SDARTS, DARTS-, P-DARTS",
     ("beta-darts", "sdarts-rs", "sdarts-adv", "darts-minus", "pdarts")),
)


def command_of(entry: str, seed: int, args, run_dir: Path) -> list[str]:
    """The train_search.py command of one (entry, seed): a fresh run, or a resumed one."""
    script = [sys.executable, str(ROOT / "train_search.py")]
    if (run_dir / "checkpoint.pt").exists():
        return script + ["--resume", str(run_dir), "--no-progress"]
    method, extra = VARIANTS.get(entry, (entry, []))
    flags, per_method = PROTOCOLS[args.protocol]
    command = script + ["--space", "nb201", "--method", method, "--dataset", args.dataset,
                        "--seed", str(seed), "--save", str(run_dir.parent), "--name",
                        run_dir.name, "--no-progress", "--no-tensorboard"]
    if args.data:
        command += ["--data", args.data]
    if args.benchmark:
        command += ["--benchmark", args.benchmark]
    if args.protocol != "benchmark" and method not in NO_ALPHAS:
        flags = flags[:len(SMALL)] + FIRST_ORDER + flags[len(SMALL):]
    return command + flags + per_method.get(method, []) + extra


def is_complete(run_dir: Path) -> bool:
    try:
        return bool(json.loads((run_dir / "metrics.json").read_text()).get("complete"))
    except (OSError, ValueError):
        return False


def first_epoch_with(skips: list[int], count: int) -> int | None:
    """The first epoch (1-based) whose derived cell has at least `count` skips, or None."""
    return next((i + 1 for i, s in enumerate(skips) if s >= count), None)


def read_run(run_dir: Path) -> dict:
    """One grid row from a run directory's metrics.json and config.json."""
    entry, _, seed = run_dir.name.rpartition("-s")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    history = metrics["history"]
    skips = [h["skip_connect"] for h in history]
    scores = [h["benchmark"].get("cifar10_test") if isinstance(h.get("benchmark"), dict)
              else None for h in history]
    row = {"method": entry, "seed": int(seed), "arch": metrics["genotype"],
           "skip_connect": skips[-1] if skips else None, "skips_per_epoch": skips,
           "first_epoch_with": {str(c): first_epoch_with(skips, c) for c in COLLAPSE},
           "archs_per_epoch": [h["genotype"] for h in history],
           "scores_per_epoch": scores, "epochs_done": metrics["epochs_done"],
           "epochs": metrics.get("epochs"), "complete": bool(metrics.get("complete")),
           "search_time_s": metrics["search_time_s"]}
    if isinstance(metrics.get("benchmark"), dict):
        row["benchmark"] = metrics["benchmark"]
    extra = run_dir / "grid.json"  # what the runner adds: the command and the code's commit
    if extra.exists():
        row.update(json.loads(extra.read_text()))
    return row


def commit() -> str:
    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                         text=True)
    return out.stdout.strip() or "unknown"


def run_one(entry: str, seed: int, args, runs: Path) -> tuple[bool, str]:
    """Runs (or resumes) one (entry, seed) to the end; returns whether it finished, and a line
    for the log."""
    run_dir = runs / f"{entry}-s{seed}"
    command = command_of(entry, seed, args, run_dir)
    record = run_dir / "grid.json"  # the run's command, and each segment's code and wall time
    resumed = "--resume" in command
    done = json.loads(record.read_text()) if resumed and record.exists() else {"segments": []}
    if not resumed:
        done["command"] = " ".join(command[1:])
        write_json(record, done)
    start = time.perf_counter()
    out = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if out.returncode != 0:
        return False, f"{entry} seed {seed}: failed: {out.stderr.strip()[-400:]}"
    done["segments"].append({"commit": commit(), "wall_s": round(wall, 1), "resumed": resumed})
    write_json(record, done)
    row = read_run(run_dir)
    return True, (f"{entry} seed {seed}: {row['arch'].get('arch')} skips {row['skip_connect']} "
                  f"{row['search_time_s']:.0f}s")


def write_json(path: Path, data) -> None:
    """`data` as JSON at `path`, replaced whole (never a half-written file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def collect(runs: Path, args) -> list[dict]:
    """Every run in `runs` with a metrics.json, in the order of --methods, then the others."""
    order = {m: i for i, m in enumerate(args.methods.split(","))}
    rows = [read_run(d) for d in sorted(runs.glob("*-s*")) if (d / "metrics.json").exists()]
    return sorted(rows, key=lambda r: (order.get(r["method"], len(order)), r["method"], r["seed"]))


def save(runs: Path, args) -> None:
    """Writes --json (and --markdown, --figure) from the runs in `runs`, or from the grid JSON
    --from_json; with --score_with, every epoch's cell scored by that table instead."""
    if args.from_json:
        grid = read_grid(args.from_json)
    else:
        grid = {"protocol": args.protocol, "dataset": args.dataset, "data": args.data,
                "benchmark": args.benchmark, "note": args.note, "published": PUBLISHED,
                "protocol_flags": PROTOCOLS[args.protocol][0],
                "per_method_flags": PROTOCOLS[args.protocol][1], "variants": VARIANTS,
                "runs": collect(runs, args)}
    table = grid.get("benchmark") or ""
    if args.score_with:
        grid["runs"] = rescore(grid["runs"], args.score_with)
        grid["scored_with"] = table = args.score_with
    write_json(Path(args.json), grid)
    rows, name = grid["runs"], Path(table).name or "the table"
    if args.markdown:
        Path(args.markdown).write_text(markdown(rows, name) + "\n")
    if args.figure:
        flags = " ".join(grid.get("protocol_flags", []))
        figure(rows, args.figure, name,
               f"NAS-Bench-201's space, protocol {grid.get('protocol')} ({flags}); thick: the "
               f"mean over seeds, thin: each seed")


def read_grid(path: str) -> dict:
    """A grid JSON that this script wrote; anything else is one message naming the file."""
    try:
        grid = json.loads(Path(path).read_text())
    except OSError as e:
        sys.exit(f"collapse_nb201.py: --from_json {path}: cannot read it ({e.strerror})")
    except ValueError:
        sys.exit(f"collapse_nb201.py: --from_json {path}: not JSON")
    if not isinstance(grid, dict) or not isinstance(grid.get("runs"), list):
        sys.exit(f"collapse_nb201.py: --from_json {path}: not a grid of this script (it has "
                 "no 'runs' list); give the JSON that --json wrote")
    return grid


def rescore(rows: list[dict], path: str) -> list[dict]:
    """`rows` with every epoch's derived cell and the last one scored by the NAS-Bench-201 CSV
    table at `path` (e.g. the official table, converted) instead of the table of the runs;
    the runs themselves are not touched. A cell the table lacks scores None."""
    from darts.benchmarks.nb201 import BenchmarkTable, finite_or_none
    from darts.errors import UserError
    from darts.spaces import nb201

    try:
        table = BenchmarkTable.load(path, flag="--score_with")
    except UserError as e:
        sys.exit(f"collapse_nb201.py: {e}")
    if "cifar10_test" not in table.metrics:
        sys.exit(f"collapse_nb201.py: --score_with {path}: no cifar10_test column (the column "
                 "the grid reports); convert the official table with `python -m "
                 "darts.benchmarks.nb201 convert`")
    scored = []
    for row in rows:
        if "error" in row or "archs_per_epoch" not in row:
            scored.append(row)
            continue
        found = [table.lookup(a["arch"]) for a in row["archs_per_epoch"]]
        scored.append(dict(row, scores_per_epoch=[
            None if f is None else finite_or_none(f.get("cifar10_test")) for f in found],
            benchmark=table.score(nb201.parse(arch_text(row)))))
    return scored


def parse(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", default=",".join(METHODS),
                        help="presets and variants (" + ", ".join(VARIANTS) + "), comma-separated; "
                             "NAME:K runs that entry's first K seeds only")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--dataset", default="cifar10")
    parser.add_argument("--data", default="")
    parser.add_argument("--benchmark", default="", help="a NAS-Bench-201 CSV table")
    parser.add_argument("--protocol", choices=tuple(PROTOCOLS), default="reduced")
    parser.add_argument("--runs", default="",
                        help="folder of the run directories (default: runs/collapse-PROTOCOL)")
    parser.add_argument("--jobs", type=int, default=1,
                        help="runs side by side (cpu50: one thread each, so one per core)")
    parser.add_argument("--json", required=True)
    parser.add_argument("--note", default="",
                        help="a line kept in the JSON, e.g. what the table is (synthetic or the "
                             "benchmark's)")
    parser.add_argument("--keep", action="store_true",
                        help="reuse the finished runs in --runs, resume the unfinished ones, run "
                             "the missing ones (without it an existing run directory is an error)")
    parser.add_argument("--markdown", default="",
                        help="also write the per-method tables (mean over seeds) as Markdown")
    parser.add_argument("--figure", default="",
                        help="also draw skips (and table score) against epochs, a line per method")
    parser.add_argument("--report", action="store_true",
                        help="run nothing: rewrite --json, --markdown and --figure from --runs")
    parser.add_argument("--from_json", default="",
                        help="run nothing: take the rows from a grid JSON written earlier (e.g. "
                             "the one in benchmarks/results) instead of --runs")
    parser.add_argument("--score_with", default="",
                        help="score every epoch's cell with this NAS-Bench-201 CSV table (e.g. "
                             "the official one, converted) instead of the runs' --benchmark")
    args = parser.parse_args(argv)
    if args.from_json and Path(args.from_json).resolve() == Path(args.json).resolve():
        parser.error("--json is the file --from_json reads; write the new grid to another file")
    args.seeds_of = {}
    for spec in args.methods.split(","):
        entry, _, seeds = spec.partition(":")
        if entry not in METHODS and entry not in VARIANTS:
            parser.error(f"--methods: unknown entry {entry!r}; choose from "
                         f"{', '.join(METHODS + tuple(VARIANTS))}")
        if seeds and not seeds.isdigit():
            parser.error(f"--methods: {spec!r}: after the colon, a number of seeds")
        args.seeds_of[entry] = int(seeds) if seeds else args.seeds
    args.methods = ",".join(args.seeds_of)
    return args


def main(argv=None) -> int:
    args = parse(argv)
    runs = Path(args.runs or ROOT / "runs" / f"collapse-{args.protocol}")
    if args.from_json:
        save(runs, args)
        return 0
    todo = []
    for seed in range(max(args.seeds_of.values())):  # seed 0 of every entry first
        for entry in [e for e, k in args.seeds_of.items() if seed < k]:
            run_dir = runs / f"{entry}-s{seed}"
            if run_dir.exists() and not args.keep:
                sys.exit(f"collapse_nb201.py: {run_dir} exists; --keep reuses or resumes it, or "
                         "choose another --runs")
            if not args.report and not is_complete(run_dir):
                todo.append((entry, seed))
    lock = threading.Lock()
    failed = []

    def work(job):
        ok, line = run_one(*job, args, runs)
        with lock:
            print(line, flush=True)
            if not ok:
                failed.append(f"{job[0]}-s{job[1]}")
            save(runs, args)

    runs.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(max(1, args.jobs)) as pool:
        list(pool.map(work, todo))
    save(runs, args)
    if failed:  # the others ran and are recorded; these are named, with where to look
        print(f"collapse_nb201.py: {len(failed)} run(s) failed: {', '.join(failed)} (each one's "
              f"log.txt in {runs}; --keep resumes or reruns them)", file=sys.stderr)
        return 1
    return 0


def arch_text(row: dict) -> str:
    """A row's derived cell as its arch string (metrics.json keeps {"arch": ...})."""
    return row["arch"]["arch"]


def _per_seed(values) -> str:
    return ", ".join("—" if v is None else str(v) for v in values)


def markdown(rows: list[dict], table: str = "the table") -> str:
    """Three tables: per method, the skips at the end and the first epoch with 4, 5 and 6
    skips (per seed), the mean search time and the score in `table` (mean ± sd); the papers'
    figures (published_table); every seed's derived cell."""
    lines = ["| method | skips, last epoch (per seed) | first epoch with 4 / 5 / 6 skips (per "
             "seed) | most skips in an epoch | search time (min, mean) | cifar10_test in "
             f"{table} (mean ± sd) |", "|---|---|---|---|---|---|"]
    cells = ["| method | seed | derived cell, last epoch |", "|---|---|---|"]
    methods = list(dict.fromkeys(r["method"] for r in rows))
    for method in methods:
        ran = [r for r in rows if r["method"] == method and "error" not in r]
        if not ran:
            lines.append(f"| {method} | refused: see its error in the JSON | | | | |")
            continue
        # the summary is of the finished runs; an unfinished one is only named
        partial = [r for r in ran if r.get("complete") is False]
        done = [r for r in ran if r.get("complete") is not False]
        skips = _per_seed(r["skip_connect"] for r in done) or "—"
        if partial:
            skips += " (unfinished: " + ", ".join(
                f"s{r['seed']} at epoch {r['epochs_done']}/{r['epochs']}" for r in partial) + ")"
        if not done:
            lines.append(f"| {method} | {skips} | | | | |")
            continue
        firsts = "; ".join(" / ".join("—" if r.get("first_epoch_with", {}).get(str(c)) is None
                                      else str(r["first_epoch_with"][str(c)]) for c in COLLAPSE)
                           for r in done)
        most = _per_seed(max(r["skips_per_epoch"], default=None) for r in done)
        minutes = statistics.mean(r["search_time_s"] for r in done) / 60
        scores = [r["benchmark"]["cifar10_test"] for r in done
                  if isinstance(r.get("benchmark"), dict) and "cifar10_test" in r["benchmark"]]
        score = "—"
        if scores:
            spread = statistics.stdev(scores) if len(scores) > 1 else 0.0
            score = f"{statistics.mean(scores):.2f} ± {spread:.2f}"
        lines.append(f"| {method} | {skips} | {firsts} | {most} | {minutes:.1f} | {score} |")
        for r in done:
            cells.append(f"| {method} | {r['seed']} | `" + arch_text(r).replace("|", "\\|") + "` |")
    return "\n".join(lines) + "\n\n" + published_table(methods) + "\n\n" + "\n".join(cells)


def published_table(methods: list[str]) -> str:
    """The papers' NAS-Bench-201 figures of `methods`, with their sources. A table apart: they
    are the real benchmark's, after the full protocol, so never a column beside a score of
    another table (a synthetic one) or another protocol."""
    lines = ["| method | published NAS-Bench-201 CIFAR-10 test (%) | source |", "|---|---|---|"]
    for method in methods:
        value, source = PUBLISHED.get(method, (None, ""))
        if value is not None:
            lines.append(f"| {method} | {value:.2f} | {source} |")
    return "\n".join(lines)


def _mean_series(series: list[list]) -> list[float]:
    """The epoch-wise mean over seeds (a seed without a value at an epoch is left out)."""
    mean = []
    for e in range(max((len(s) for s in series), default=0)):
        values = [s[e] for s in series if e < len(s) and s[e] is not None]
        mean.append(statistics.mean(values) if values else float("nan"))
    return mean


def figure_columns(methods: list[str]) -> list[tuple[str, list[str]]]:
    """The figure's columns for `methods`: GROUPS in order with the methods present (an empty
    group is left out), then one column of the methods in no group."""
    columns = [(name, [m for m in members if m in methods]) for name, members in GROUPS]
    columns = [c for c in columns if c[1]]
    grouped = {m for _, members in GROUPS for m in members}
    others = [m for m in methods if m not in grouped]
    return columns + ([("other entries", others)] if others else [])


def figure(rows: list[dict], path: str, table: str = "the table", title: str = "") -> None:
    """Skips of the derived cell against epochs (and, below, the table's score where the rows
    have one), a column per group of methods (GROUPS): a thick line per method (the mean over
    its seeds), its seeds as thin lines, plain DARTS's mean dashed grey in the other columns."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in rows if r.get("complete") is not False]  # the finished runs
    scored = any(s is not None for r in rows for s in r.get("scores_per_epoch", []))
    panels = [("skips_per_epoch", "skip_connect edges in the derived cell (of 6)")]
    if scored:
        panels.append(("scores_per_epoch", f"derived cell's cifar10_test in {table}"))
    methods = list(dict.fromkeys(r["method"] for r in rows))
    columns = figure_columns(methods)
    fig, axes = plt.subplots(len(panels), len(columns), figsize=(5.6 * len(columns),
                             3.9 * len(panels)), squeeze=False, sharex=True, sharey="row")
    colors = plt.get_cmap("tab10").colors
    series_of = {(m, key): [list(r.get(key, [])) for r in rows if r["method"] == m]
                 for m in methods for key, _ in panels}
    for row, (key, label) in enumerate(panels):
        for col, (name, members) in enumerate(columns):
            ax = axes[row][col]
            if "darts" in methods and "darts" not in members:
                ref = _mean_series(series_of["darts", key])
                ax.plot(range(1, len(ref) + 1), ref, color="0.55", linestyle="--",
                        linewidth=1.4, label="darts (mean)")
            for i, method in enumerate(members):
                color = colors[i % len(colors)]
                series = series_of[method, key]
                for s in series:
                    ax.plot(range(1, len(s) + 1), [float("nan") if v is None else v for v in s],
                            color=color, linewidth=0.7, alpha=0.4)
                mean = _mean_series(series)
                ax.plot(range(1, len(mean) + 1), mean, color=color, linewidth=2.2,
                        label=f"{method} ({len(series)} seed{'s' if len(series) > 1 else ''})")
            ax.grid(alpha=0.3)
            if row == 0:
                ax.set_title(name, fontsize=10)
                ax.legend(fontsize=8, loc="upper left")
            if row == len(panels) - 1:
                ax.set_xlabel("epoch")
            if col == 0:
                ax.set_ylabel(label, fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
