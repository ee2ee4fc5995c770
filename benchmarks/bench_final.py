"""Time and memory of one retraining step (forward, backward, optimizer step, data included).

    python benchmarks/bench_final.py --preset standard --device cuda --steps 20 --compare --json out.json

The standard preset is the paper's CIFAR-10 retraining (DARTS_V2 cell, 36 channels, 20
cells, auxiliary head, drop-path 0.2, batch 96, 32x32, cutout 16); `small` is a quick one.
Data are CIFAR-shaped synthetic images in memory. `--compare` runs the plain path (float32,
eager, contiguous tensors, torchvision DataLoader) and the fast path side by side in one
process and prints their ratio; the fast path is the flags given (defaults: the
device-resident loader, float32, channels_last on the CPU only).
"""

from __future__ import annotations

import argparse
import sys

import torch
import torch.nn as nn
from common import (
    StepClock,
    add_arguments,
    count_flops,
    peak_memory_mib,
    peak_reserved,
    reset_peak_memory,
    run,
    summary,
)

from darts.accel.cuda_graph import cuda_graphs_enabled
from darts.final import FinalConfig, _loaders, build_network
from darts.genotype import resolve_genotype
from darts.train.data import build_datasets
from darts.train.distributed import Dist
from darts.train.engine import Precision, train_one_epoch

PRESETS = {
    "standard": {"init_channels": 36, "layers": 20, "batch_size": 96, "image_size": 32},
    "small": {"init_channels": 16, "layers": 8, "batch_size": 32, "image_size": 16},
}


def measure(args, path: dict, device: torch.device) -> dict:
    preset = PRESETS[args.preset]
    total = args.warmup + args.steps + 2
    cfg = FinalConfig(dataset="synthetic", synthetic_size=preset["batch_size"] * total,
                      device=str(device), workers=args.workers, loader=path["loader"],
                      amp=path["amp"], channels_last=path["channels_last"], compile=path["compile"],
                      cuda_graphs=path["cuda_graphs"],
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
    graphs = cuda_graphs_enabled(cfg.cuda_graphs, device, distributed=False, amp=cfg.amp,
                                 compile=cfg.compile)
    clock = StepClock(train_loader.epoch(0), args.warmup, args.steps, device)
    reset_peak_memory(device)
    train_one_epoch(model, clock, optimizer, criterion, device, aux_weight=cfg.auxiliary_weight,
                    grad_clip=cfg.grad_clip, precision=precision, channels_last=cfg.channels_last,
                    cuda_graph=graphs, log=print)
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
    return summary(clock.times, cfg.batch_size, flops, peak, path=path,
                   loader_on_device=on_device, **peak_reserved(device))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--preset", choices=sorted(PRESETS), default="standard")
    p.add_argument("--genotype", default="darts_v2")
    add_arguments(p)

    def header(args, device):
        return {"benchmark": "final_step", "preset": args.preset, "genotype": args.genotype,
                **PRESETS[args.preset]}

    return run(p, argv, header, measure)


if __name__ == "__main__":
    sys.exit(main())
