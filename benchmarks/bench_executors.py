"""Evaluations per minute on this machine: the local process pool against Ray tasks.

    python benchmarks/bench_executors.py --json benchmarks/results/cpu-amd-epyc/executors.json

Two measurements, side by side in one process:
1. the train evaluator at tiny settings (plain CNNs of the `cnn` space on the synthetic data,
   one epoch on 256 images at 16 px, one thread per evaluation), `--evaluations` candidates
   run through the asynchronous loop with 1 and 2 pending evaluations, on `--executor local`
   (spawned processes) and `ray` (a Ray started here, one CPU per task): evaluations per
   minute, the worker start-up included;
2. the overhead per task: an evaluation that returns at once, `--tasks` times, on each
   executor with 2 pending (the candidate and the settings shipped, the result returned).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from darts.evaluators.base import Evaluation  # noqa: E402


def instant(candidate) -> Evaluation:
    return Evaluation(0.0, 0.0, 0.0)


class Instant:
    def remote_call(self):
        return instant, ()

    def __call__(self, candidate) -> Evaluation:
        return instant(candidate)


def _run(executor, strategy_seed: int, n: int, pending: int) -> float:
    from darts.spaces import cnn
    from darts.strategies import RandomSearch, run_async

    t0 = time.perf_counter()
    run_async(RandomSearch(cnn, seed=strategy_seed), executor, n, max_pending=pending)
    seconds = time.perf_counter() - t0
    executor.close()  # not timed: the processes are stopped after the last result
    return seconds


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--evaluations", type=int, default=12)
    p.add_argument("--tasks", type=int, default=200)
    p.add_argument("--json", default="executors.json")
    args = p.parse_args()
    import ray

    from darts.evaluators.training import TrainEvaluator
    from darts.executors import LocalExecutor, RayExecutor

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="error",
             runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}})
    rows = []

    def train_evaluator():
        return TrainEvaluator(cnn_space(), dataset="synthetic", synthetic_size=256,
                              image_size=16, epochs=1, batch_size=64, threads=1, device="cpu")

    for pending in (1, 2):
        for name in ("local", "ray"):
            evaluator = train_evaluator()
            executor = (LocalExecutor(evaluator, max_pending=pending) if name == "local"
                        else RayExecutor(evaluator, cpus=1))
            if name == "local" and pending == 1:  # in this process: pay the data once
                evaluator._data()
            seconds = _run(executor, 0, args.evaluations, pending)
            rows.append({"measure": "train evaluator", "executor": name, "pending": pending,
                         "evaluations": args.evaluations, "seconds": seconds,
                         "evaluations_per_minute": 60 * args.evaluations / seconds})
            print(rows[-1], flush=True)
    for name in ("local", "ray"):
        executor = (LocalExecutor(Instant(), max_pending=2) if name == "local"
                    else RayExecutor(Instant(), cpus=1))
        for k in range(4):  # warm: the workers started
            executor.submit(f"warm {k}")
        for _ in range(4):
            executor.wait()
        seconds = _run(executor, 2, args.tasks, 2)
        rows.append({"measure": "overhead per task", "executor": name, "pending": 2,
                     "tasks": args.tasks, "ms_per_task": 1000 * seconds / args.tasks})
        print(rows[-1], flush=True)
    ray.shutdown()
    out = {"benchmark": "executors", "machine": platform.processor() or platform.machine(),
           "python": platform.python_version(), "ray": ray.__version__, "rows": rows,
           "note": "a shared 2-core machine; evaluations per minute include each executor's "
                   "worker start-up (spawned processes read the data once each)"}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
    return 0


def cnn_space():
    from darts.spaces import cnn
    return cnn


if __name__ == "__main__":
    sys.exit(main())
