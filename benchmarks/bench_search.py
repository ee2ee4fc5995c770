"""Time and memory of one DARTS search step (architect step + weight step, data included).

    python benchmarks/bench_search.py --preset standard --order 1 --device cpu --steps 5 --json out.json
    python benchmarks/bench_search.py --preset standard --order 2 --hessian fd --device cuda \\
        --steps 20 --compare --json out.json

The standard preset is the paper's search configuration (16 channels, 8 cells, 4 nodes,
batch 64, 32x32, 10 classes); `small` is a quick one. Data are CIFAR-shaped synthetic
images held in memory (no download). `--compare` measures the plain path (float32, eager,
contiguous tensors, torchvision DataLoader) and the fast path side by side in one process
and prints their ratio; the fast path is the flags given (defaults: the device-resident
loader and channels_last, plus bf16 autocast on a GPU).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

import torch
import torch.nn as nn
from common import (
    StepClock,
    compare,
    count_flops,
    environment,
    peak_memory_mib,
    reset_peak_memory,
    summary,
    write_json,
)

from darts.architect import Architect
from darts.data import build_datasets, search_split
from darts.distributed import Dist
from darts.engine import Precision, pick_device, train_one_epoch
from darts.search import SearchConfig, _loaders
from darts.space import SearchSpace
from darts.supernet import SearchNetwork

PRESETS = {
    "standard": {"init_channels": 16, "layers": 8, "nodes": 4, "batch_size": 64, "image_size": 32},
    "small": {"init_channels": 8, "layers": 5, "nodes": 4, "batch_size": 16, "image_size": 16},
}


@dataclasses.dataclass
class Path_:
    name: str
    loader: str
    amp: str
    channels_last: bool
    compile: bool = False
    partial_channels: int = 1
    checkpoint_cells: bool = False


def measure(args, path: Path_, device: torch.device) -> dict:
    preset = PRESETS[args.preset]
    total = args.warmup + args.steps + 2
    cfg = SearchConfig(dataset="synthetic", synthetic_size=2 * preset["batch_size"] * total,
                       order=args.order, hessian=args.hessian, device=str(device),
                       workers=args.workers, loader=path.loader, amp=path.amp,
                       channels_last=path.channels_last, compile=path.compile,
                       partial_channels=path.partial_channels,
                       checkpoint_cells=path.checkpoint_cells, progress=False, **preset)
    torch.manual_seed(0)
    train_set, _, info = build_datasets("synthetic", "", image_size=cfg.image_size,
                                        synthetic_size=cfg.synthetic_size)
    weight_idx, alpha_idx = search_split(len(train_set), 0.5, 0)
    weight_data, alpha_stream, _, on_device = _loaders(cfg, info, train_set, weight_idx,
                                                       alpha_idx, device, Dist())
    space = SearchSpace(steps=cfg.nodes, multiplier=cfg.nodes)
    model = SearchNetwork(cfg.init_channels, info.num_classes, cfg.layers, space,
                          partial_channels=cfg.partial_channels,
                          checkpoint_cells=cfg.checkpoint_cells).to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if cfg.compile:
        model.compile()
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(model.network_parameters(), 0.025, momentum=0.9, weight_decay=3e-4)
    precision = Precision.from_flag(cfg.amp, device)
    architect = Architect(model, criterion, optimizer, order=cfg.order, hessian=cfg.hessian,
                          precision=precision)
    fmt = torch.channels_last if cfg.channels_last else torch.contiguous_format

    def alpha_step(_, batch):
        x, y = next(alpha_stream)
        architect.step(batch, (x.to(device, memory_format=fmt), y.to(device)), xi=0.025)

    clock = StepClock(weight_data.epoch(0), args.warmup, args.steps, device)
    reset_peak_memory(device)
    train_one_epoch(model, clock, optimizer, criterion, device, grad_clip=5.0,
                    before_step=alpha_step, precision=precision,
                    channels_last=cfg.channels_last,
                    forward=lambda x: model(x, model.mixing_weights(detach=True)))
    peak = peak_memory_mib(device)
    flops = None
    if not args.no_flops:
        x, y = next(iter(weight_data.epoch(1)))
        batch = (x.to(device, memory_format=fmt), y.to(device))

        def one_step():
            alpha_step(0, batch)
            optimizer.zero_grad()
            with precision.autocast():
                loss = criterion(model(batch[0], model.mixing_weights(detach=True)), batch[1])
            loss.backward()
            optimizer.step()

        flops = count_flops(one_step)
    return summary(clock.times, cfg.batch_size, flops, peak, path=dataclasses.asdict(path),
                   loader_on_device=on_device)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--preset", choices=sorted(PRESETS), default="standard")
    p.add_argument("--order", type=int, choices=(1, 2), default=1)
    p.add_argument("--hessian", choices=("fd", "exact"), default="fd")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--steps", type=int, default=10, help="measured steps (the median is reported)")
    p.add_argument("--warmup", type=int, default=2, help="unmeasured steps first")
    p.add_argument("--json", help="write the result here")
    p.add_argument("--compare", action="store_true", help="plain path and fast path, and their ratio")
    p.add_argument("--loader", choices=("device", "torch"), default="device", help="fast path's loader")
    p.add_argument("--amp", choices=("off", "bf16", "fp16"), default=None,
                   help="fast path's precision (default bf16 on CUDA, off on the CPU)")
    p.add_argument("--channels_last", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--compile", action="store_true")
    p.add_argument("--partial_channels", type=int, default=1)
    p.add_argument("--checkpoint_cells", action="store_true")
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers of the torch loader")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (torch.set_num_threads)")
    p.add_argument("--no_flops", action="store_true", help="skip counting FLOPs")
    args = p.parse_args(argv)
    if args.steps < 1 or args.warmup < 0:
        p.error("--steps must be >= 1 and --warmup >= 0")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    amp = args.amp or ("bf16" if device.type == "cuda" else "off")
    fast = Path_("fast", args.loader, amp, args.channels_last, args.compile,
                 args.partial_channels, args.checkpoint_cells)
    result = {"benchmark": "search_step", "preset": args.preset, **PRESETS[args.preset],
              "order": args.order, "hessian": args.hessian if args.order == 2 else None,
              "device": str(device), "environment": environment(device)}
    if args.compare:
        plain = measure(args, Path_("plain", "torch", "off", False), device)
        measured = measure(args, fast, device)
        result.update(measured)
        result["plain"], result["fast"] = plain, measured
        result.update(compare(plain, measured))
    else:
        result.update(measure(args, fast, device))
    write_json(result, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
