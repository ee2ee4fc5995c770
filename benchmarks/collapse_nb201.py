"""DARTS and its published collapse fixes on NAS-Bench-201's space: the derived cell, its skip
connections and its table score, per method and seed.

    python benchmarks/collapse_nb201.py --benchmark nb201.csv --data ../shared/data/cifar10-5k \\
        --dataset folder --seeds 3 --json benchmarks/results/cpu-amd-epyc/collapse_nb201.json

Each (method, seed) is one `train_search.py --space nb201 --method M` run; the rows are read
back from its metrics.json (the derived cell and its skip connections after every epoch). The
benchmark's protocol is 50 epochs on CIFAR-10 with C = 16, N = 5 (`--protocol benchmark`).
`--protocol reduced` is what 2 CPU cores can run: C = 8, N = 1, 16-pixel images, 10 epochs,
batch 64, first order for every method; warm-up epochs scaled by 10/50 of the method's own;
P-DARTS's epochs, batch size, final learning rate and alpha learning rate, and PC-DARTS's batch
size, learning rate and alpha learning rate, left at DARTS's, so that every method sees the
same data and steps. A reduced run shows whether a method collapses in this setting, not its
published number.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

METHODS = ("darts", "gdas", "drnas", "fairdarts", "beta-darts", "sdarts-rs", "sdarts-adv",
           "darts-minus", "pdarts", "pc-darts")

# Published CIFAR-10 test accuracy (%) of each method's cell on NAS-Bench-201 (mean of runs),
# with the source. DARTS's collapsed cell is the all-skip cell.
PUBLISHED = {
    "darts": (54.30, "Dong & Yang, ICLR 2020 (NAS-Bench-201), DARTS's all-skip cell"),
    "gdas": (93.61, "Dong & Yang, ICLR 2020 (NAS-Bench-201)"),
    "drnas": (94.36, "Chen et al., ICLR 2021 (DrNAS)"),
    "beta-darts": (94.36, "Ye et al., CVPR 2022 (beta-DARTS)"),
    "fairdarts": (None, ""),
    "sdarts-rs": (None, ""),
    "sdarts-adv": (None, ""),
    "darts-minus": (93.80, "Chu et al., ICLR 2021 (DARTS-)"),
    "pdarts": (None, ""),
    "pc-darts": (None, ""),
}

REDUCED = ["--layers", "1", "--init_channels", "8", "--image_size", "16", "--epochs", "10",
           "--batch_size", "64", "--order", "1"]
REDUCED_PER_METHOD = {
    "pdarts": ["--warmup_epochs", "2", "--learning_rate_min", "0.001", "--arch_learning_rate",
               "3e-4"],
    "pc-darts": ["--warmup_epochs", "3", "--learning_rate", "0.025", "--arch_learning_rate",
                 "3e-4"],
}


def run_one(method: str, seed: int, args, save: Path) -> dict:
    name = f"{method}-s{seed}"
    command = [sys.executable, str(ROOT / "train_search.py"), "--space", "nb201",
               "--method", method, "--dataset", args.dataset, "--seed", str(seed),
               "--save", str(save), "--name", name, "--no-progress", "--no-tensorboard"]
    if args.data:
        command += ["--data", args.data]
    if args.benchmark:
        command += ["--benchmark", args.benchmark]
    if args.protocol == "reduced":
        command += REDUCED + REDUCED_PER_METHOD.get(method, [])
    start = time.perf_counter()
    out = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if out.returncode != 0:
        return {"method": method, "seed": seed, "error": out.stderr.strip()[-500:]}
    metrics = json.loads((save / name / "metrics.json").read_text())
    history = metrics["history"]
    row = {"method": method, "seed": seed, "arch": metrics["genotype"],
           "skip_connect": history[-1]["skip_connect"],
           "skips_per_epoch": [h["skip_connect"] for h in history],
           "archs_per_epoch": [h["genotype"] for h in history],
           "epochs_done": metrics["epochs_done"], "search_time_s": metrics["search_time_s"],
           "wall_s": wall, "command": " ".join(command[1:])}
    if "benchmark" in metrics:
        row["benchmark"] = metrics["benchmark"]
    return row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--dataset", default="cifar10")
    parser.add_argument("--data", default="")
    parser.add_argument("--benchmark", default="", help="a NAS-Bench-201 CSV table")
    parser.add_argument("--protocol", choices=("reduced", "benchmark"), default="reduced")
    parser.add_argument("--json", required=True)
    parser.add_argument("--note", default="",
                        help="a line kept in the JSON, e.g. what the table is (synthetic or the "
                             "benchmark's)")
    parser.add_argument("--keep", action="store_true",
                        help="reuse the rows of --json that ran with the same protocol, data and "
                             "table; run only the missing (method, seed) pairs")
    parser.add_argument("--markdown", default="",
                        help="also write the per-method table (mean over seeds) as Markdown")
    args = parser.parse_args(argv)
    kept = {}
    if args.keep and Path(args.json).exists():
        old = json.loads(Path(args.json).read_text())
        if all(old.get(k) == getattr(args, k) for k in ("protocol", "dataset", "data", "benchmark")):
            kept = {(r["method"], r["seed"]): r for r in old["runs"] if "error" not in r}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for method in args.methods.split(","):
            for seed in range(args.seeds):
                if (method, seed) in kept:
                    rows.append(kept[(method, seed)])
                    continue
                row = run_one(method, seed, args, Path(tmp))
                rows.append(row)
                shown = row.get("error") or (f"{arch_text(row)} skips {row['skip_connect']} "
                                             f"{row['search_time_s']:.0f}s")
                print(f"{method} seed {seed}: {shown}", flush=True)
                Path(args.json).parent.mkdir(parents=True, exist_ok=True)
                Path(args.json).write_text(json.dumps(
                    {"protocol": args.protocol, "dataset": args.dataset, "data": args.data,
                     "benchmark": args.benchmark, "note": args.note, "published": PUBLISHED,
                     "runs": rows},
                    indent=2) + "\n")
    if args.markdown:
        Path(args.markdown).write_text(markdown(rows) + "\n")
    return 0


def arch_text(row: dict) -> str:
    """A row's derived cell as its arch string (metrics.json keeps {"arch": ...})."""
    return row["arch"]["arch"]


def markdown(rows: list[dict]) -> str:
    """One row per method: every seed's cell and skips, mean search time, mean ± sd score;
    then, in a table of their own, the papers' figures (published_table)."""
    lines = ["| method | derived cell (per seed) | skips, last epoch (per seed) | most skips in an "
             "epoch | search time (s, mean) | table score (mean ± sd) |",
             "|---|---|---|---|---|---|"]
    methods = list(dict.fromkeys(r["method"] for r in rows))
    for method in methods:
        done = [r for r in rows if r["method"] == method and "error" not in r]
        if not done:
            lines.append(f"| {method} | refused: see its error in the JSON | | | | |")
            continue
        cells = "<br>".join("`" + arch_text(r).replace("|", "\\|") + "`" for r in done)
        skips = ", ".join(str(r["skip_connect"]) for r in done)
        most = ", ".join(str(max(r["skips_per_epoch"])) for r in done)
        time_s = statistics.mean(r["search_time_s"] for r in done)
        scores = [r["benchmark"]["cifar10_test"] for r in done
                  if isinstance(r.get("benchmark"), dict) and "cifar10_test" in r["benchmark"]]
        score = "—"
        if scores:
            spread = statistics.stdev(scores) if len(scores) > 1 else 0.0
            score = f"{statistics.mean(scores):.2f} ± {spread:.2f}"
        lines.append(f"| {method} | {cells} | {skips} | {most} | {time_s:.0f} | {score} |")
    return "\n".join(lines) + "\n\n" + published_table(methods)


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


if __name__ == "__main__":
    sys.exit(main())
