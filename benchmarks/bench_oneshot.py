"""What a one-shot evaluation costs: one candidate's single path against the whole supernet.

    python benchmarks/bench_oneshot.py --json benchmarks/results/cpu-amd-epyc/oneshot.json

For the NAS-Bench-201 and the DARTS supernets, at a small size and at the default size
(NAS-Bench-201: C = 16, N = 5; DARTS: 8 cells of 16 channels; batch 64, 32x32), in one
process, alternating the two sides within each round (so that a noisy moment hits both):

- evaluation: `OneShotEvaluator(candidate)`'s work, timed by its `cost`: BatchNorm
  recalibration (`--bn_batches` training-mode forwards, no gradient) and scoring
  (`--valid_batches` eval-mode forwards), running only the candidate's ops. Against it, the
  same passes through the whole supernet at its softmax weights (every op of every edge).
- forward: one eval-mode forward of a batch, single path against all ops mixed.
- train_step: one SGD step of the supernet's weights on a batch (forward, backward, step):
  the single path of a uniformly drawn candidate, as the evaluator trains, against the mixed
  supernet at detached weights, as DARTS's weight step.

Each round draws a new candidate (seeded). The supernet is built as the evaluator builds it
(`darts.accel.accelerate`, channels-last on the CPU); the weights are untrained, which does
not change the time. A case's speedup is the ratio of the minima (a virtual machine's host
only ever adds time), with the medians beside. As the training scripts do, glibc's malloc
keeps freed memory in the process (`--no-tune_malloc`: glibc's defaults). An evaluation's
cost grows linearly with bn_batches + valid_batches (100 + 10 by default), so its ratio
holds at the defaults.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

import torch
import torch.nn as nn
from common import add_malloc_argument, apply_malloc, environment, steal_s, sync, write_json
from torch.utils.data import TensorDataset

from darts.evaluators.oneshot import OneShotEvaluator
from darts.spaces import darts_cells, nb201
from darts.train.engine import pick_device

SPACES = {"nb201": nb201, "darts": darts_cells}
# (space, size) -> supernet size and batch.
SIZES = {
    ("nb201", "small"): {"init_channels": 8, "layers": 1, "image_size": 16, "batch_size": 32},
    ("nb201", "default"): {"init_channels": 16, "layers": 5, "image_size": 32, "batch_size": 64},
    ("darts", "small"): {"init_channels": 8, "layers": 5, "image_size": 16, "batch_size": 32},
    ("darts", "default"): {"init_channels": 16, "layers": 8, "image_size": 32, "batch_size": 64},
}


def timed(f, device: torch.device) -> float:
    sync(device)
    t = time.perf_counter()
    f()
    sync(device)
    return time.perf_counter() - t


@torch.no_grad()
def mixed_evaluation(evaluator: OneShotEvaluator) -> None:
    """The evaluator's two passes through the whole supernet at its softmax weights. (The
    running statistics are updated with the default momentum rather than momentum None: the
    same work; the accelerated cell's shared pooling BatchNorm takes a momentum fixed when
    it was built.)"""
    model = evaluator.supernet
    weights = model.mixing_weights(detach=True)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
    model.train()
    for x in evaluator.recalibration_batches():
        model(x, weights)
    model.eval()
    for x, y in evaluator.validation_batches():
        model(x, weights).argmax(1).eq(y).sum().item()


def step(model: nn.Module, optimizer: torch.optim.Optimizer, forward, x, y) -> None:
    model.train()
    loss = nn.functional.cross_entropy(forward(x), y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def measure(space_name: str, size: str, args, device: torch.device) -> dict:
    shape = SIZES[space_name, size]
    space, batch = SPACES[space_name], shape["batch_size"]
    n = batch * max(args.bn_batches, args.valid_batches, 1)
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(n, 3, shape["image_size"], shape["image_size"], generator=g),
                         torch.randint(0, 10, (n,), generator=g))
    torch.manual_seed(0)
    evaluator = OneShotEvaluator(space, data, data, num_classes=10,
                                 init_channels=shape["init_channels"], layers=shape["layers"],
                                 epochs=0, batch_size=batch, bn_batches=args.bn_batches,
                                 valid_batches=args.valid_batches, device=device, progress=False)
    model = evaluator.supernet
    x, y = evaluator.validation_batches()[0]
    weights = model.mixing_weights(detach=True)
    optimizer = torch.optim.SGD(model.network_parameters(), 1e-3, momentum=0.9)
    rng = random.Random(0)
    times: dict[str, list[float]] = {k: [] for k in (
        "evaluation_path", "evaluation_mixed", "forward_path", "forward_mixed",
        "train_step_path", "train_step_mixed")}
    evaluator(space.sample(rng))  # warm-up: caches the batches, first-call costs
    mixed_evaluation(evaluator)
    before = steal_s()
    for _ in range(args.rounds):
        c = space.sample(rng)
        sync(device)
        times["evaluation_path"].append(evaluator(c).cost)
        times["evaluation_mixed"].append(timed(lambda: mixed_evaluation(evaluator), device))
        model.eval()
        with torch.no_grad():
            times["forward_path"].append(timed(lambda c=c: model.forward_path(x, c), device))
            times["forward_mixed"].append(timed(lambda: model(x, weights), device))
        times["train_step_path"].append(timed(lambda c=c: step(
            model, optimizer, lambda x: model.forward_path(x, c), x, y), device))
        times["train_step_mixed"].append(timed(lambda: step(
            model, optimizer, lambda x: model(x, weights), x, y), device))
    after = steal_s()
    out = {"space": space_name, "size": size, **shape,
           "weights": sum(p.numel() for p in model.network_parameters()),
           "bn_batches": args.bn_batches, "valid_batches": args.valid_batches}
    for what in ("evaluation", "forward", "train_step"):
        path, mixed = times[f"{what}_path"], times[f"{what}_mixed"]
        out[what] = {"path_s": statistics.median(path), "mixed_s": statistics.median(mixed),
                     "path_min_s": min(path), "mixed_min_s": min(mixed),
                     "speedup": min(mixed) / min(path)}
    if before is not None and after is not None:
        out["cpu_steal_s"] = round(after - before, 2)
    print(f"{space_name:6s} {size:8s} " + "  ".join(
        f"{w} {out[w]['path_min_s'] * 1e3:8.1f} ms vs {out[w]['mixed_min_s'] * 1e3:8.1f} ms "
        f"({out[w]['speedup']:5.2f}x)" for w in ("evaluation", "forward", "train_step")),
        flush=True)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--sizes", default="small,default", help="comma-separated: small, default")
    p.add_argument("--spaces", default="nb201,darts", help="comma-separated: nb201, darts")
    p.add_argument("--rounds", type=int, default=5, help="candidates timed per case")
    p.add_argument("--bn_batches", type=int, default=10,
                   help="recalibration batches per evaluation (the evaluator's default: 100)")
    p.add_argument("--valid_batches", type=int, default=5,
                   help="scoring batches per evaluation (the evaluator's default: 10)")
    p.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: as is)")
    p.add_argument("--json", help="write the result here")
    add_malloc_argument(p)
    args = p.parse_args(argv)
    sizes, spaces = args.sizes.split(","), args.spaces.split(",")
    for name, chosen, known in (("--sizes", sizes, ("small", "default")),
                                ("--spaces", spaces, tuple(SPACES))):
        if not chosen or any(c not in known for c in chosen):
            p.error(f"{name}: choose from {', '.join(known)}")
    if args.rounds < 1 or args.bn_batches < 0 or args.valid_batches < 1:
        p.error("--rounds and --valid_batches must be >= 1, --bn_batches >= 0")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    malloc = apply_malloc(args, device)
    cases = [measure(space, size, args, device) for space in spaces for size in sizes]
    write_json({"benchmark": "oneshot_evaluation", "device": str(device),
                "environment": environment(device), "malloc": malloc, "rounds": args.rounds,
                "cases": cases},
               args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
