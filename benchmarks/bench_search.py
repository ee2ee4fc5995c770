"""Time and memory of one DARTS search step (architect step + weight step, data included).

    python benchmarks/bench_search.py --preset standard --order 1 --device cpu --steps 5 --json out.json
    python benchmarks/bench_search.py --preset standard --order 2 --hessian fd --device cuda \\
        --steps 20 --compare --json out.json

The standard preset is the paper's search configuration (16 channels, 8 cells, 4 nodes,
batch 64, 32x32, 10 classes); `small` is a quick one. Data are CIFAR-shaped synthetic
images held in memory (no download). `--compare` measures the plain path (float32, eager,
contiguous tensors, torchvision DataLoader) and the fast path side by side in one process
and prints their ratio; the fast path is the flags given (defaults: the device-resident
loader, float32, channels_last, edge batching and CUDA graphs on a GPU).
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
from darts.architect import Architect
from darts.search import SearchConfig, _loaders, build_supernet
from darts.train.data import build_datasets, search_split
from darts.train.distributed import Dist
from darts.train.engine import MetricSum, Precision, SideStep, train_one_epoch

PRESETS = {
    "standard": {"init_channels": 16, "layers": 8, "nodes": 4, "batch_size": 64, "image_size": 32},
    "small": {"init_channels": 8, "layers": 5, "nodes": 4, "batch_size": 16, "image_size": 16},
}


def measure(args, path: dict, device: torch.device) -> dict:
    preset = PRESETS[args.preset]
    total = args.warmup + args.steps + 2
    cfg = SearchConfig(dataset="synthetic", synthetic_size=2 * preset["batch_size"] * total,
                       order=args.order, hessian=args.hessian, device=str(device),
                       workers=args.workers, loader=path["loader"], amp=path["amp"],
                       channels_last=path["channels_last"], compile=path["compile"],
                       partial_channels=path.get("partial_channels", 1),
                       checkpoint_cells=path.get("checkpoint_cells", False),
                       batch_edges=path.get("batch_edges", "off"),
                       cuda_graphs=path["cuda_graphs"], progress=False, **preset)
    torch.manual_seed(0)
    train_set, _, info = build_datasets("synthetic", "", image_size=cfg.image_size,
                                        synthetic_size=cfg.synthetic_size)
    weight_idx, alpha_idx = search_split(len(train_set), 0.5, 0)
    weight_data, alpha_stream, _, on_device = _loaders(cfg, info, train_set, weight_idx,
                                                       alpha_idx, device, Dist())
    model = build_supernet(cfg, info.num_classes, device)
    if cfg.compile:
        model.compile()
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(model.network_parameters(), 0.025, momentum=0.9, weight_decay=3e-4)
    precision = Precision.from_flag(cfg.amp, device)
    graphs = cuda_graphs_enabled(cfg.cuda_graphs, device, distributed=False, amp=cfg.amp,
                                 compile=cfg.compile)
    architect = Architect(model, criterion, optimizer, order=cfg.order, hessian=cfg.hessian,
                          precision=precision, capturable=graphs)
    fmt = torch.channels_last if cfg.channels_last else torch.contiguous_format
    side_step = SideStep(alpha_stream, lambda b, v: architect.step(b, v, xi=0.025),
                         MetricSum(device))

    clock = StepClock(weight_data.epoch(0), args.warmup, args.steps, device)
    reset_peak_memory(device)
    train_one_epoch(model, clock, optimizer, criterion, device, grad_clip=5.0,
                    side_step=side_step, precision=precision,
                    channels_last=cfg.channels_last, cuda_graph=graphs, log=print,
                    forward=lambda x: model(x, model.mixing_weights(detach=True)))
    peak = peak_memory_mib(device)
    flops = None
    if not args.no_flops:
        x, y = next(iter(weight_data.epoch(1)))
        batch = (x.to(device, memory_format=fmt), y.to(device))

        def one_step():
            x_val, y_val = next(alpha_stream)
            architect.step(batch, (x_val.to(device, memory_format=fmt), y_val.to(device)), xi=0.025)
            optimizer.zero_grad()
            with precision.autocast():
                loss = criterion(model(batch[0], model.mixing_weights(detach=True)), batch[1])
            loss.backward()
            optimizer.step()

        flops = count_flops(one_step)
    return summary(clock.times, cfg.batch_size, flops, peak, path=path,
                   loader_on_device=on_device, **peak_reserved(device))


def add_step_arguments(p) -> None:
    """Which search step: the configuration preset and the alpha gradient's order."""
    p.add_argument("--preset", choices=sorted(PRESETS), default="standard")
    p.add_argument("--order", type=int, choices=(1, 2), default=1)
    p.add_argument("--hessian", choices=("fd", "exact"), default="fd")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_step_arguments(p)
    add_arguments(p)
    p.add_argument("--partial_channels", type=int, default=1, help="fast path: PC-DARTS")
    p.add_argument("--checkpoint_cells", action="store_true", help="fast path: cell checkpointing")
    p.add_argument("--batch_edges", choices=("auto", "on", "off"), default="auto",
                   help="fast path: edges leaving one state computed together (auto: on a GPU)")

    def header(args, device):
        return {"benchmark": "search_step", "preset": args.preset, **PRESETS[args.preset],
                "order": args.order, "hessian": args.hessian if args.order == 2 else None}

    def memory_flags(args):
        return {"partial_channels": args.partial_channels, "checkpoint_cells": args.checkpoint_cells,
                "batch_edges": args.batch_edges}

    return run(p, argv, header, measure, memory_flags)


if __name__ == "__main__":
    sys.exit(main())
