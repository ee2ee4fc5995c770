"""Where the time of one DARTS search step goes: the top operators and kernels by self time.

    python benchmarks/profile_search.py --preset standard --order 1 --device cuda --channels_last
    python benchmarks/profile_search.py --preset small --device cpu --json profile.json

One search step (alpha step + weight step on a fixed batch, eager: a CUDA graph replays the
same kernels, but the profiler sees one graph launch) is run `--warmup` times, then profiled
`--steps` times with `torch.profiler`. Prints a table and writes JSON: per entry its name,
calls per step and self time per step (device time on a GPU, CPU time on the CPU), and the
step's total and kernel count.
"""

from __future__ import annotations

import argparse
import sys

import torch
import torch.nn as nn
from bench_search import PRESETS, add_step_arguments
from common import add_malloc_argument, apply_malloc, environment, write_json
from torch.profiler import ProfilerActivity, profile

from darts.architect import Architect
from darts.search import SearchConfig, build_supernet
from darts.train.engine import Precision, pick_device


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_step_arguments(p)
    add_malloc_argument(p)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--amp", choices=("off", "bf16", "fp16"), default="off")
    p.add_argument("--channels_last", action="store_true")
    p.add_argument("--batch_edges", choices=("auto", "on", "off"), default="auto")
    p.add_argument("--partial_channels", type=int, default=1, help="PC-DARTS's K")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--rows", type=int, default=25, help="entries in the table and the JSON")
    p.add_argument("--json", help="write the result here")
    args = p.parse_args(argv)
    device = pick_device(args.device)
    malloc = apply_malloc(args, device)
    preset = PRESETS[args.preset]
    cfg = SearchConfig(dataset="synthetic", order=args.order, hessian=args.hessian,
                       device=str(device), amp=args.amp, channels_last=args.channels_last,
                       batch_edges=args.batch_edges, partial_channels=args.partial_channels,
                       progress=False, **preset)
    torch.manual_seed(0)
    model = build_supernet(cfg, 10, device)
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(model.network_parameters(), 0.025, momentum=0.9, weight_decay=3e-4)
    precision = Precision.from_flag(args.amp, device)
    architect = Architect(model, criterion, optimizer, order=args.order, hessian=args.hessian,
                          precision=precision)
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    size, n = preset["image_size"], preset["batch_size"]
    x = torch.randn(n, 3, size, size, device=device).to(memory_format=fmt)
    y = torch.randint(0, 10, (n,), device=device)

    def step():
        architect.step((x, y), (x, y), xi=0.025)
        optimizer.zero_grad(set_to_none=True)
        with precision.autocast():
            loss = criterion(model(x, model.mixing_weights(detach=True)), y)
        precision.backward(loss)
        precision.unscale(optimizer)
        nn.utils.clip_grad_norm_(model.network_parameters(), 5.0)
        precision.step(optimizer)

    for _ in range(args.warmup):
        step()
    gpu = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if gpu else [])
    with profile(activities=activities) as prof:
        for _ in range(args.steps):
            step()
        if gpu:
            torch.cuda.synchronize(device)
    events = prof.key_averages()
    if gpu:  # kernels only: operator rows would count their kernels' time a second time
        kernels = [e for e in events if e.device_type.name == "CUDA"]
        time_of = lambda e: e.self_device_time_total  # noqa: E731
    else:
        kernels = list(events)
        time_of = lambda e: e.self_cpu_time_total  # noqa: E731
    total = sum(time_of(e) for e in kernels) / args.steps / 1e6
    top = sorted(kernels, key=time_of, reverse=True)[:args.rows]
    entries = [{"name": e.key, "calls_per_step": e.count / args.steps,
                "self_s_per_step": time_of(e) / args.steps / 1e6,
                "share": time_of(e) / args.steps / 1e6 / total if total else 0.0} for e in top]
    what = "GPU kernels" if gpu else "CPU operators"
    print(f"{what}: {total:.4f} s per step, {sum(e.count for e in kernels) / args.steps:.0f} "
          f"calls per step", file=sys.stderr)
    for e in entries:
        print(f"{e['share']:6.1%} {e['self_s_per_step']:8.4f} s {e['calls_per_step']:7.0f}x  "
              f"{e['name'][:100]}", file=sys.stderr)
    result = {"benchmark": "search_step_profile", "preset": args.preset, **preset,
              "order": args.order, "hessian": args.hessian if args.order == 2 else None,
              "amp": args.amp, "channels_last": args.channels_last,
              "batch_edges": args.batch_edges,
              "partial_channels": args.partial_channels, "malloc": malloc, "device": str(device),
              "environment": environment(device), "what": what, "total_s_per_step": total,
              "calls_per_step": sum(e.count for e in kernels) / args.steps, "top": entries}
    write_json(result, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
