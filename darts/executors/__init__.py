"""Where a multi-trial search's evaluations run (`--executor`): the strategy's ask/tell loop
stays in this process (`darts.strategies.base.run_async`); an executor runs evaluations.

    local   here, or in `--max_pending` spawned processes on this machine (an evaluator with
            `remote_call`: the train evaluator); the default, with no extra dependency
    ray     as Ray tasks (Moritz et al., OSDI 2018), on this machine or a cluster
            (`--ray_address`), each with `--eval_cpus` / `--eval_gpus` and `--max_retries`

An executor is built as `EXECUTORS[name](evaluator, max_pending=, address=, cpus=, gpus=,
max_retries=, log=)` (taking the keywords it uses) and has `submit(candidate) -> token`,
`wait() -> (token, Evaluation)` (one finished evaluation) and `close()`. Only the
candidate and the evaluator's settings travel (`evaluator.remote_call()`: a module-level
function and its arguments, called with the candidate); each worker reads the data itself
from `--data`. A plugin adds one with `register_executor(name, cls)`.
"""

from __future__ import annotations

from darts.executors.local import LocalExecutor
from darts.executors.ray_tasks import RayExecutor
from darts.registry import Registry

EXECUTORS = Registry("executor", "--executor", {
    "local": LocalExecutor,
    "ray": RayExecutor,
}.items())
register_executor = EXECUTORS.register

__all__ = ["EXECUTORS", "LocalExecutor", "RayExecutor", "register_executor"]
