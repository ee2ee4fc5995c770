"""The Ray executor: each evaluation a Ray task, on this machine or a cluster.

`ray.init(address=...)` joins the cluster at `--ray_address` (`auto`: the one `ray start`
began on this machine; `ray://host:port`: a remote one), or starts a Ray of its own here when
it is empty. A task takes `--eval_cpus` CPUs and `--eval_gpus` GPUs (fractions allowed), and is
run again `--max_retries` times when its worker dies or it raises; after that, the search stops
with one line naming the candidate and the error (`history.jsonl` keeps every finished
evaluation, so `--resume` goes on from there). The workers import this package (a Ray of its
own gets it on PYTHONPATH; on a cluster, install it on every node) and read the data from
`--data` themselves: it must be there on every node.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

from darts.errors import UserError
from darts.executors.local import call

ROOT = str(Path(__file__).resolve().parents[2])


class RayExecutor:
    def __init__(self, evaluator: Any, *, address: str = "", cpus: float = 1.0,
                 gpus: float = 0.0, max_retries: int = 3, log=None, **_: Any):
        try:
            import ray
        except ImportError:
            raise UserError("--executor ray needs Ray: pip install 'ray>=2.9'") from None
        remote = getattr(evaluator, "remote_call", None)
        if remote is None:
            raise UserError(f"--executor ray: the {type(evaluator).__name__} scores candidates "
                            f"here (a table, a supernet in this process); use --executor local")
        if cpus <= 0 or gpus < 0 or max_retries < 0:
            raise UserError(f"--eval_cpus {cpus} must be > 0, --eval_gpus {gpus} and "
                            f"--max_retries {max_retries} >= 0")
        self.ray = ray
        if not ray.is_initialized():
            try:
                ray.init(address=address or None, include_dashboard=False,
                         logging_level="warning", log_to_driver=False,
                         runtime_env={"env_vars": {"PYTHONPATH": ROOT}})
            except (ConnectionError, ValueError, RuntimeError) as e:
                raise UserError(f"--ray_address {address or '(none)'}: Ray did not start or "
                                f"connect ({type(e).__name__}: {e})") from None
            self.started = True
        else:
            self.started = False
        if log is not None:
            resources = ray.cluster_resources()
            log(f"Ray: {resources.get('CPU', 0):g} CPUs, {resources.get('GPU', 0):g} GPUs in "
                f"the cluster; {cpus:g} CPU(s) and {gpus:g} GPU(s) per evaluation, "
                f"{max_retries} retries")
        self.function, self.args = remote()
        self.max_retries = max_retries
        self.slots = max(1, int(ray.cluster_resources().get("CPU", 1) // cpus))
        self.task = ray.remote(call).options(num_cpus=cpus, num_gpus=gpus,
                                              max_retries=max_retries, retry_exceptions=True)
        self.tokens = itertools.count()
        self.refs: dict[Any, tuple[int, Any]] = {}

    def submit(self, candidate: Any) -> int:
        token = next(self.tokens)
        self.refs[self.task.remote(self.function, self.args, candidate)] = (token, candidate)
        return token

    def wait(self) -> tuple[int, Any]:
        ready, _ = self.ray.wait(list(self.refs), num_returns=1)
        token, candidate = self.refs.pop(ready[0])
        try:
            return token, self.ray.get(ready[0])
        except self.ray.exceptions.RayError as e:
            cause = getattr(e, "cause", None) or e
            what = " ".join(str(cause).split())[:200]
            raise UserError(f"the evaluation of {candidate} failed {self.max_retries + 1} "
                            f"time(s) on Ray: {type(cause).__name__}: {what}") from None

    def close(self) -> None:
        for ref in list(self.refs):
            self.ray.cancel(ref, force=True)
        self.refs.clear()
        if self.started:
            self.ray.shutdown()
