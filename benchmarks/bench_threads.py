"""CPU threads on a shared machine: search steps alone and beside a competing process.

    python benchmarks/bench_threads.py --json threads.json

Each configuration runs in a fresh process (OpenMP reads its settings when torch loads):
`threads` intra-op threads, OpenMP's wait policy (libgomp's default, which spins before it
sleeps, or `OMP_WAIT_POLICY=PASSIVE`), and darts's own choice (`auto`: what the scripts
do by default). The workload is a few first-order and second-order (finite-difference) search
steps of a small supernet on random data, timed after one warm-up step. "Loaded" runs the
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
from darts.engine import configure_cpu_threads
if {threads!r} == "auto":
    configure_cpu_threads()
else:
    torch.set_num_threads(int({threads!r}))
from darts.architect import Architect
from darts.space import SearchSpace
from darts.supernet import SearchNetwork

torch.manual_seed(0)
model = SearchNetwork(8, 10, 5, SearchSpace()).to(memory_format=torch.channels_last)
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
        train, val = batch(), batch()
        arch.step(train, val, xi=0.025)
        loss = crit(model(train[0]), train[1])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if i:
            times.append(time.perf_counter() - t)
    out[f"order{{order}}_step_s"] = sorted(times)[len(times) // 2]
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


def measure(threads: str, passive: bool, loaded: bool, args) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS")}
    env["OMP_WAIT_POLICY"] = "PASSIVE" if passive else "ACTIVE_DEFAULT"  # unknown: libgomp's default
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
    p.add_argument("--configs", default="2:spin,2:passive,1:spin,auto:passive")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    cpus = len(os.sched_getaffinity(0))
    rows = []
    for config in args.configs.split(","):
        threads, policy = config.split(":")
        row = {"threads": threads, "wait_policy": policy}
        for loaded in (False, True):
            r = measure(threads, policy == "passive", loaded, args)
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
