"""CPU threads on a shared machine: search steps alone and beside a competing process.

    python benchmarks/bench_threads.py --json threads.json

Each configuration runs in a fresh process (OpenMP reads its settings when torch loads):
`threads` intra-op threads (a number; `auto`: what the scripts do by default, the CPUs the
process may use; `adapt`: `--adapt_threads`, the CPUs other processes leave free) and
OpenMP's wait policy (`spin`: libgomp's default, which spins before it sleeps; `passive`:
`OMP_WAIT_POLICY=PASSIVE`; `spincount=N`: `GOMP_SPINCOUNT=N`, a shorter spin). The workload
is a few first-order and second-order (finite-difference) search steps of a small supernet on
random data, timed after one warm-up step. "Loaded" runs the
same beside a competing process that keeps `--load_threads` threads busy with matrix
products, as another training job on the same workstation does. Both cases of one
configuration are measured in this one invocation, so the ratios compare like with like.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

WORKLOAD = r"""
import json, os, sys, time
sys.path.insert(0, {root!r})
import torch
import torch.nn as nn
from darts.train.engine import configure_cpu_threads, watch_threads
if {threads!r} == "auto":
    configure_cpu_threads()
elif {threads!r} == "adapt":
    configure_cpu_threads(0, warn=lambda m: None, note=lambda m: print(m, file=sys.stderr),
                          adapt=True)
else:
    torch.set_num_threads(int({threads!r}))
from darts.accel import accelerate
from darts.architect import Architect
from darts.cell_topology import SearchSpace
from darts.supernet import SearchNetwork

torch.manual_seed(0)
model = accelerate(SearchNetwork(8, 10, 5, SearchSpace())).to(memory_format=torch.channels_last)
crit = nn.CrossEntropyLoss()
opt = torch.optim.SGD(model.network_parameters(), 0.025, momentum=0.9)
batch = lambda: (torch.randn(32, 3, 16, 16).contiguous(memory_format=torch.channels_last),
                 torch.randint(0, 10, (32,)))
out = {{"threads": torch.get_num_threads()}}
for order in (1, 2):
    arch = Architect(model, crit, opt, order=order)
    times = []
    for i in range({steps} + 1):
        t = time.perf_counter()
        watch_threads()
        train, val = batch(), batch()
        arch.step(train, val, xi=0.025)
        loss = crit(model(train[0]), train[1])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if i:
            times.append(time.perf_counter() - t)
    out[f"order{{order}}_step_s"] = sorted(times)[len(times) // 2]
    out[f"order{{order}}_threads"] = torch.get_num_threads()
print(json.dumps(out))
"""

LOAD = r"""
import time, torch
torch.set_num_threads({threads})
a = torch.randn(512, 512)
end = time.time() + {seconds}
while time.time() < end:
    a = torch.tanh(a @ a)
"""


def measure(threads: str, policy: str, loaded: bool, args) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "GOMP_SPINCOUNT")}
    if policy == "passive":
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    elif policy.startswith("spincount="):
        env["GOMP_SPINCOUNT"] = policy.split("=", 1)[1]
    elif policy != "spin":
        raise SystemExit(f"unknown wait policy {policy!r}: spin, passive or spincount=N")
    load = None
    if loaded:
        load = subprocess.Popen([sys.executable, "-c", LOAD.format(threads=args.load_threads,
                                                                    seconds=args.timeout)])
        time.sleep(2.0)  # let it spin up
    try:
        code = WORKLOAD.format(root=str(ROOT), threads=threads, steps=args.steps)
        proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                              text=True, timeout=args.timeout)
    finally:
        if load is not None:
            load.kill()
            load.wait()
    if proc.returncode != 0:
        raise SystemExit(proc.stderr[-2000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--load_threads", type=int, default=2)
    p.add_argument("--timeout", type=float, default=900.0)
    p.add_argument("--configs", default="auto:spin,auto:passive,auto:spincount=10000,1:spin,adapt:spin")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    cpus = len(os.sched_getaffinity(0))
    rows = []
    for config in args.configs.split(","):
        threads, policy = config.split(":")
        row = {"threads": threads, "wait_policy": policy}
        for loaded in (False, True):
            r = measure(threads, policy, loaded, args)
            row["loaded" if loaded else "alone"] = r
            print(config, "loaded" if loaded else "alone", r, flush=True)
        for key in ("order1_step_s", "order2_step_s"):
            row[f"{key}_slowdown_loaded"] = row["loaded"][key] / row["alone"][key]
        rows.append(row)
    result = {"cpus": cpus, "load_threads": args.load_threads, "steps": args.steps,
              "torch": __import__("torch").__version__, "rows": rows}
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")


if __name__ == "__main__":
    main()
