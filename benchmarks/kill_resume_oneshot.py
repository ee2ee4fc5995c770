#!/usr/bin/env python
"""kill -9 at random moments of a one-shot multi-trial run, then --resume: the same history.

    python benchmarks/kill_resume_oneshot.py --kills 5 --seed 0 --json kill_resume.json

Runs one uninterrupted `train_search.py --strategy random --evaluator oneshot` search, then the
same search killed with SIGKILL after random delays (drawn from `--seed`: the start-up time plus
a uniform share of 1/kills of the uninterrupted run's work, so that the kills spread over the
supernet's training and the scoring), resumed each time, then run to its end. The histories are compared
record by record (candidate, score, reported; not the wall-clock cost and time fields). Writes
the kill moments, what the run directory held at each, and the verdict as JSON. Exit 1 if the
resumed history differs.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ARGS = ["--strategy", "random", "--space", "nb201", "--evaluator", "oneshot",
        "--dataset", "synthetic", "--synthetic_size", "512", "--image_size", "8", "--layers", "1",
        "--init_channels", "8", "--oneshot_epochs", "12", "--bn_batches", "4", "--valid_batches",
        "8", "--batch_size", "16", "--budget", "150", "--workers", "0", "--device", "cpu",
        "--no-progress", "--no-tensorboard", "--threads", "1"]


def records(run_dir: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k not in ("time", "cost")}
            for line in (run_dir / "history.jsonl").read_text().splitlines()]


def state(run_dir: Path) -> dict:
    history = run_dir / "history.jsonl"
    return {"supernet": (run_dir / "supernet.pt").exists(),
            "history_lines": len(history.read_text().splitlines()) if history.exists() else 0}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    script = [sys.executable, str(ROOT / "train_search.py")]
    save = Path(tempfile.mkdtemp(prefix="kill-resume-"))
    try:
        t0 = time.perf_counter()
        subprocess.run([*script, *ARGS, "--save", str(save), "--name", "whole"], env=env,
                       check=True, capture_output=True)
        whole_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        subprocess.run([*script, "--help"], env=env, check=True, capture_output=True)
        start_s = time.perf_counter() - t0  # the start-up (imports) before any work
        rng = random.Random(args.seed)
        killed, kills = save / "killed", []
        command = [*script, *ARGS, "--save", str(save), "--name", "killed"]
        for _ in range(args.kills):
            # after the start-up, somewhere in the next 1/kills of the work: the kills
            # spread over the supernet's training and the scoring
            delay = start_s + rng.uniform(0.0, (whole_s - start_s) / args.kills)
            proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL)
            time.sleep(delay)
            finished = proc.poll() is not None
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            kills.append({"after_s": round(delay, 2), "had_finished": finished,
                          **(state(killed) if killed.exists() else {"directory": False})})
            print(f"kill after {delay:.1f}s: {kills[-1]}", flush=True)
            if killed.exists():
                command = [*script, "--resume", str(killed)]
        subprocess.run(command, env=env, check=True, capture_output=True)
        same = records(killed) == records(save / "whole")
        result = {"kills": kills, "uninterrupted_s": round(whole_s, 1),
                  "start_up_s": round(start_s, 1),
                  "evaluations": len(records(killed)), "history_equal": same,
                  "command": "python benchmarks/kill_resume_oneshot.py "
                             f"--kills {args.kills} --seed {args.seed}"}
        print(json.dumps(result, indent=2))
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
        return 0 if same else 1
    finally:
        shutil.rmtree(save, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
