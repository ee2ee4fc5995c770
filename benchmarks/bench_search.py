"""Time and memory of one DARTS search step (architect step + weight step, data included).

    python benchmarks/bench_search.py --preset standard --order 1 --device cpu --steps 5 --json out.json
    python benchmarks/bench_search.py --preset standard --order 2 --hessian fd --device cuda \\
        --steps 20 --compare --json out.json
    python benchmarks/bench_search.py --preset small --order 1 --methods darts,gdas,sdarts-rs \\
        --json methods.json     # each method's step, side by side, ratios to the first

The step measured is the search's own, `darts.search.search_step` (the alpha step with the
method's pieces, then the weight step), so `--method` or `--sampler` measure a published
method's step. The standard preset is the paper's search configuration (16 channels, 8 cells, 4 nodes,
batch 64, 32x32, 10 classes); `small` is a quick one. Data are CIFAR-shaped synthetic
images held in memory (no download). `--compare` measures the plain path (float32, eager,
contiguous tensors, torchvision DataLoader) and the fast path side by side in one process
and prints their ratio; the fast path is the flags given (defaults: the device-resident
loader, float32, channels_last, edge batching and CUDA graphs on a GPU).
"""

from __future__ import annotations

import argparse
import functools
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

from darts import plugins
from darts.accel.cuda_graph import cuda_graphs_enabled
from darts.methods import pieces as collapse
from darts.methods import presets, schedule
from darts.methods.mixing import build_mixing
from darts.methods.presets import PRESETS as METHODS
from darts.search import (
    Iteration,
    SearchConfig,
    _loaders,
    build_architect,
    build_supernet,
    cell_kind,
    search_step,
)
from darts.train.data import build_datasets, search_split
from darts.train.distributed import Dist
from darts.train.engine import MetricSum, Precision, SideStep, train_one_epoch

PRESETS = {
    "standard": {"init_channels": 16, "layers": 8, "nodes": 4, "batch_size": 64, "image_size": 32},
    "small": {"init_channels": 8, "layers": 5, "nodes": 4, "batch_size": 16, "image_size": 16},
}


def measure(args, path: dict, device: torch.device, method: str | None = None) -> dict:
    """The search's own iteration (`darts.search.search_step`: the pieces' alpha step, then
    the weight step) of `method` (a --method preset; None: `args.method`), timed per step."""
    preset = PRESETS[args.preset]
    total = args.warmup + args.steps + 2
    method = args.method if method is None else method
    cfg = SearchConfig(dataset="synthetic", synthetic_size=2 * preset["batch_size"] * total,
                       order=args.order, hessian=args.hessian, device=str(device),
                       workers=args.workers, loader=path["loader"], amp=path["amp"],
                       channels_last=path["channels_last"], compile=path["compile"],
                       partial_channels=path.get("partial_channels", 1),
                       checkpoint_cells=path.get("checkpoint_cells", False),
                       batch_edges=path.get("batch_edges", "off"),
                       cuda_graphs=path["cuda_graphs"], progress=False, method=method,
                       mixing=args.mixing, pieces=tuple(args.pieces or ()), **preset)
    # the step's size is the benchmark preset's (a method's --batch_size would outrun the data)
    explicit = {"order", "hessian", "partial_channels", "batch_size"} | (
        {"mixing"} if args.mixing != "softmax" else set())
    cfg = presets.apply(cfg, explicit=explicit)
    collapse.validate(cfg)
    torch.manual_seed(0)
    train_set, _, info = build_datasets("synthetic", "", image_size=cfg.image_size,
                                        synthetic_size=cfg.synthetic_size)
    weight_idx, alpha_idx = search_split(len(train_set), 0.5, 0)
    weight_data, alpha_stream, _, on_device = _loaders(cfg, info, train_set, weight_idx,
                                                       alpha_idx, device, Dist())
    pieces = collapse.Pieces(cfg)
    model = build_supernet(cfg, info.num_classes, device, pieces)
    pieces.attach(model, cell_kind(cfg))
    if cfg.compile:
        model.compile()
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(model.network_parameters(), 0.025, momentum=0.9, weight_decay=3e-4)
    precision = Precision.from_flag(cfg.amp, device)
    graphs = cuda_graphs_enabled(cfg.cuda_graphs, device, distributed=False, amp=cfg.amp,
                                 compile=cfg.compile)
    rule = build_mixing(cfg)
    graphs = graphs and (rule is None or rule.cuda_graphs)
    architect, scheduled = build_architect(cfg, model, pieces, optimizer, criterion, precision,
                                           Dist(), graphs)
    epoch = min(cfg.warmup_epochs, cfg.epochs - 1)  # a step that updates the alphas
    schedule.set_epoch(scheduled, epoch, cfg.epochs)
    pieces.start_epoch(epoch)
    it = Iteration(model, architect, pieces, optimizer, criterion, precision, 0.025, 5.0,
                   lambda: None)

    clock = StepClock(weight_data.epoch(0), args.warmup, args.steps, device)
    reset_peak_memory(device)
    train_one_epoch(model, clock, optimizer, criterion, device,
                    side_step=SideStep(alpha_stream, None, MetricSum(device)),
                    step=functools.partial(search_step, it), precision=precision,
                    channels_last=cfg.channels_last, cuda_graph=graphs, log=print)
    peak = peak_memory_mib(device)
    flops = None
    if not args.no_flops:
        fmt = torch.channels_last if cfg.channels_last else torch.contiguous_format
        (x, y), (xv, yv) = next(iter(weight_data.epoch(1))), next(alpha_stream)
        flops = count_flops(lambda: search_step(
            it, x.to(device, memory_format=fmt), y.to(device),
            xv.to(device, memory_format=fmt), yv.to(device)))
    return summary(clock.times, cfg.batch_size, flops, peak, path=path, method=method or "darts",
                   mixing=cfg.mixing, pieces=list(cfg.pieces), loader_on_device=on_device, **peak_reserved(device))


def add_step_arguments(p) -> None:
    """Which search step: the configuration preset and the alpha gradient's order."""
    p.add_argument("--preset", choices=sorted(PRESETS), default="standard")
    p.add_argument("--order", type=int, choices=(1, 2), default=1)
    p.add_argument("--hessian", choices=("fd", "exact"), default="fd")
    p.add_argument("--plugins", default="",
                   help="Python files registering pieces, mixing rules, ... (train_search.py's)")
    p.add_argument("--method", default="",
                   help="a published method's pieces and mixing rule (train_search.py --method)")
    p.add_argument("--mixing", "--sampler", default="softmax",
                   help="the mixing rule (gdas, drnas, ...) when no --method sets it")
    p.add_argument("--pieces", "--piece", action="append", metavar="PIECE",
                   help="a collapse piece NAME[:KEY=VALUE,...] (train_search.py --pieces); "
                        "repeatable")
    p.add_argument("--methods", default="",
                   help="instead: several methods, comma-separated ('darts' for plain DARTS), "
                        "each on the fast path in this one process; ratios to the first")


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

    def measure_methods(args, path, device):
        """`measure`, or with --methods each method in turn, on one path, in this process."""
        plugins.load(args.plugins)  # their pieces, rules and presets, before any is named
        names = [m.strip() for m in args.methods.split(",") if m.strip()]
        if not names:
            return measure(args, path, device)
        unknown = [m for m in names if m != "darts" and m not in METHODS]
        if unknown:
            p.error(f"--methods: unknown {unknown[0]!r}; choose darts or {', '.join(METHODS)}")
        each = {m: measure(args, path, device, method="" if m == "darts" else m) for m in names}
        base = each[names[0]]["median_step_s"]
        for m in names:
            print(f"{m}: {each[m]['median_step_s']:.3f} s per step, "
                  f"{each[m]['median_step_s'] / base:.2f}x {names[0]}'s", file=sys.stderr)
        return {**each[names[0]], "methods": each,
                "step_time_ratio": {m: each[m]["median_step_s"] / base for m in names}}

    return run(p, argv, header, measure_methods, memory_flags)


if __name__ == "__main__":
    sys.exit(main())
