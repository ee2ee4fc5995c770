"""Time and memory of one retraining step (forward, backward, optimizer step, data included).

    python benchmarks/bench_final.py --preset standard --device cuda --steps 20 --compare --json out.json

The standard preset is the paper's CIFAR-10 retraining (DARTS_V2 cell, 36 channels, 20
cells, auxiliary head, drop-path 0.2, batch 96, 32x32, cutout 16); `small` is a quick one.
Data are CIFAR-shaped synthetic images in memory. `--compare` runs the plain path (float32,
eager, contiguous tensors, torchvision DataLoader) and the fast path side by side in one
process and prints their ratio; the fast path is the flags given (defaults: the
device-resident loader and channels_last, plus bf16 autocast on a GPU).
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

from darts.data import build_datasets
from darts.distributed import Dist
from darts.engine import Precision, pick_device, train_one_epoch
from darts.final import FinalConfig, _loaders, build_network
from darts.genotype import resolve_genotype

PRESETS = {
    "standard": {"init_channels": 36, "layers": 20, "batch_size": 96, "image_size": 32},
    "small": {"init_channels": 16, "layers": 8, "batch_size": 32, "image_size": 16},
}


@dataclasses.dataclass
class Path_:
    name: str
    loader: str
    amp: str
    channels_last: bool
    compile: bool = False


def measure(args, path: Path_, device: torch.device) -> dict:
    preset = PRESETS[args.preset]
    total = args.warmup + args.steps + 2
    cfg = FinalConfig(dataset="synthetic", synthetic_size=preset["batch_size"] * total,
                      device=str(device), workers=args.workers, loader=path.loader,
                      amp=path.amp, channels_last=path.channels_last, compile=path.compile,
                      progress=False, **preset).resolved("cifar")
    torch.manual_seed(0)
    train_set, test_set, info = build_datasets("synthetic", "", image_size=cfg.image_size,
                                               synthetic_size=cfg.synthetic_size,
                                               cutout_length=cfg.cutout_length)
    train_loader, _, on_device = _loaders(cfg, info, train_set, test_set, device, Dist())
    model = build_network(resolve_genotype(args.genotype), cfg, info.num_classes, "cifar").to(device)
    model.drop_path_prob = cfg.drop_path_prob
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if cfg.compile:
        model.compile()
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(model.parameters(), cfg.learning_rate, momentum=0.9, weight_decay=3e-4)
    precision = Precision.from_flag(cfg.amp, device)
    clock = StepClock(train_loader.epoch(0), args.warmup, args.steps, device)
    reset_peak_memory(device)
    train_one_epoch(model, clock, optimizer, criterion, device, aux_weight=cfg.auxiliary_weight,
                    grad_clip=cfg.grad_clip, precision=precision, channels_last=cfg.channels_last)
    peak = peak_memory_mib(device)
    flops = None
    if not args.no_flops:
        x, y = next(iter(train_loader.epoch(1)))
        fmt = torch.channels_last if cfg.channels_last else torch.contiguous_format
        x, y = x.to(device, memory_format=fmt), y.to(device)

        def one_step():
            optimizer.zero_grad()
            with precision.autocast():
                logits, aux = model(x)
                loss = criterion(logits, y) + cfg.auxiliary_weight * criterion(aux, y)
            loss.backward()
            optimizer.step()

        flops = count_flops(one_step)
    return summary(clock.times, cfg.batch_size, flops, peak, path=dataclasses.asdict(path),
                   loader_on_device=on_device)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--preset", choices=sorted(PRESETS), default="standard")
    p.add_argument("--genotype", default="darts_v2")
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
    fast = Path_("fast", args.loader, amp, args.channels_last, args.compile)
    result = {"benchmark": "final_step", "preset": args.preset, "genotype": args.genotype,
              **PRESETS[args.preset], "device": str(device), "environment": environment(device)}
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
