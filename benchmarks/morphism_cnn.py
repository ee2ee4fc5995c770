"""Network morphism against random search and regularized evolution on the plain-CNN space,
with the same `train` evaluator and the same number of training epochs in total.

    python benchmarks/morphism_cnn.py --dataset folder --data ../shared/data/cifar10-5k \\
        --seeds 2 --json benchmarks/results/cpu-amd-epyc/morphism_cnn.json

Each (strategy, seed) is one `train_search.py --space cnn --evaluator train` run in `--runs`
(`<strategy>-s<seed>`, resumed where it stopped). Morphism's children train `--eval_epochs`
epochs from their parent's weights, and its start network `--eval_epochs` from scratch, so it
gets `--budget` children and the others `--budget + 1` candidates trained from scratch: the same
epochs. The JSON holds per run the best candidate, its held-out score and test accuracy (of
that short training), the wall time and the epochs trained; the Markdown table the means.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STRATEGIES = {"morphism": [], "random": [], "evolution": ["--population", "5"]}


def command(strategy: str, seed: int, args, run_dir: Path) -> list[str]:
    script = [sys.executable, str(ROOT / "train_search.py")]
    if (run_dir / "config.json").exists():
        return script + ["--resume", str(run_dir)]
    budget = args.budget if strategy == "morphism" else args.budget + 1
    return script + ["--strategy", strategy, "--space", "cnn", "--evaluator", "train",
                     "--dataset", args.dataset, "--data", args.data, "--image_size",
                     str(args.image_size), "--batch_size", "64", "--eval_epochs",
                     str(args.eval_epochs), "--budget", str(budget), "--seed", str(seed),
                     "--threads", "1", "--workers", "1", "--no-progress", "--no-tensorboard",
                     "--save", str(run_dir.parent), "--name", run_dir.name,
                     *STRATEGIES[strategy]]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dataset", default="synthetic")
    p.add_argument("--data", default="data")
    p.add_argument("--image_size", type=int, default=16)
    p.add_argument("--eval_epochs", type=int, default=2)
    p.add_argument("--budget", type=int, default=16, help="morphism's children (8 per step)")
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--runs", default="runs/morphism-cnn")
    p.add_argument("--json", default="morphism_cnn.json")
    p.add_argument("--markdown", default="")
    p.add_argument("--report", action="store_true", help="only read the runs and write")
    args = p.parse_args()
    runs = Path(args.runs)
    runs.mkdir(parents=True, exist_ok=True)
    rows = []
    for seed in range(args.seeds):
        for strategy in STRATEGIES:
            run_dir = runs / f"{strategy}-s{seed}"
            wall_file = run_dir / "wall_s.json"
            result_file = run_dir / "result.json"
            done = result_file.exists() and json.loads(result_file.read_text()).get("complete")
            if not args.report and not done:
                t0 = time.perf_counter()
                subprocess.run(command(strategy, seed, args, run_dir), check=True)
                spent = time.perf_counter() - t0
                before = json.loads(wall_file.read_text()) if wall_file.exists() else 0.0
                wall_file.write_text(json.dumps(before + spent))
            if not (run_dir / "result.json").exists():
                continue
            result = json.loads((run_dir / "result.json").read_text())
            evaluations = result["evaluations"] + (strategy == "morphism")
            rows.append({"strategy": strategy, "seed": seed, "best": result["best_arch"],
                         "best_score": result["best_score"],
                         "best_test": result["best_reported"],
                         "epochs_trained": evaluations * args.eval_epochs,
                         "wall_s": json.loads(wall_file.read_text()) if wall_file.exists()
                         else None, "complete": result["complete"]})
    out = {"benchmark": "morphism_cnn", "settings": vars(args), "runs": rows,
           "note": "short trainings (--eval_epochs) of reduced networks on a CPU: a comparison "
                   "of the strategies in one setting, not the papers' numbers"}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
    if args.markdown:
        lines = ["| strategy | best held-out top-1 (per seed) | its test top-1 (per seed) | "
                 "epochs trained | wall time (mean) |", "|---|---|---|---|---|"]
        for strategy in STRATEGIES:
            mine = [r for r in rows if r["strategy"] == strategy]
            if not mine:
                continue
            walls = [r["wall_s"] for r in mine if r["wall_s"]]
            scores = ", ".join(f"{r['best_score']:.1f}" for r in mine)
            tests = ", ".join(f"{r['best_test']:.1f}" for r in mine)
            wall = f"{sum(walls) / len(walls) / 60:.1f} min" if walls else "-"
            lines.append(f"| {strategy} | {scores} | {tests} | {mine[0]['epochs_trained']} | "
                         f"{wall} |")
        Path(args.markdown).write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
