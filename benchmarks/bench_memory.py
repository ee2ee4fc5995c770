"""Activation memory of the search supernet: the bytes one training forward keeps for its
backward, float32 against bf16 autocast, edge by edge and edge-batched, side by side.

    python benchmarks/bench_memory.py --preset standard --device cpu --json out.json

Counted with `darts.supernet.saved_activation_bytes` (every tensor saved for backward, each
storage once; parameters left out), so it needs no GPU: the count is the same on any
device for the same dtypes, but for max pooling, which saves PyTorch's int64 indices on the
CPU (faster there) and its input elsewhere; `--pool_saves_input` counts the CPU as a GPU. It is the part of the peak that bf16 can halve; weights,
gradients, optimizer states and allocator workspaces come on top (`bench_search.py`
measures the peak itself). On the CPU it also counts the CPU's fast path (channels-last,
float32, edge by edge), where darts's C kernels keep less than PyTorch's ops.
"""

from __future__ import annotations

import argparse
import sys

import torch
import torch.nn.functional as F
from common import environment, write_json

from darts.accel import accelerate, kernels
from darts.accel.fused import MaxPool2d
from darts.cell_topology import SearchSpace
from darts.supernet import SearchNetwork, saved_activation_bytes
from darts.train.engine import pick_device

PRESETS = {
    "standard": {"init_channels": 16, "layers": 8, "nodes": 4, "batch_size": 64, "image_size": 32},
    "small": {"init_channels": 8, "layers": 5, "nodes": 4, "batch_size": 16, "image_size": 16},
}


def saved_mib(preset: dict, device: torch.device, amp: bool, batch_edges: bool,
              partial_channels: int, channels_last: bool = False) -> float:
    torch.manual_seed(0)
    space = SearchSpace(steps=preset["nodes"], multiplier=preset["nodes"])
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = SearchNetwork(preset["init_channels"], 10, preset["layers"], space,
                          partial_channels=partial_channels)
    model = accelerate(model, batch_edges=batch_edges).to(device, memory_format=fmt)
    size, n = preset["image_size"], preset["batch_size"]
    x = torch.randn(n, 3, size, size, device=device).contiguous(memory_format=fmt)
    y = torch.randint(0, 10, (n,), device=device)

    def forward():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            return F.cross_entropy(model(x, model.mixing_weights(detach=True)), y)

    return saved_activation_bytes(forward) / 2**20


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--preset", choices=sorted(PRESETS), default="standard")
    p.add_argument("--device", default="cpu")
    p.add_argument("--partial_channels", type=int, default=1)
    p.add_argument("--pool_saves_input", action="store_true",
                   help="max pooling saves its input on the CPU too, as on a GPU")
    p.add_argument("--json", help="write the result here")
    args = p.parse_args(argv)
    MaxPool2d.save_input_on_cpu = args.pool_saves_input
    device = pick_device(args.device)
    preset = PRESETS[args.preset]
    result = {"benchmark": "saved_activations", "preset": args.preset, **preset,
              "partial_channels": args.partial_channels, "device": str(device),
              "pool_saves_input": args.pool_saves_input or device.type != "cpu",
              "environment": environment(device)}
    for name, batched in (("per_edge", False), ("batched", True)):
        fp32 = saved_mib(preset, device, False, batched, args.partial_channels)
        bf16 = saved_mib(preset, device, True, batched, args.partial_channels)
        result[name] = {"float32_mib": fp32, "bf16_mib": bf16, "ratio": fp32 / bf16}
        print(f"{name}: float32 {fp32:.0f} MiB, bf16 {bf16:.0f} MiB ({fp32 / bf16:.2f}x lower)",
              file=sys.stderr)
    if device.type == "cpu":
        # The CPU's fast path: channels-last float32, where darts's C kernels run (they keep
        # less: e.g. a sep_conv's relu(BN(x)) is computed again in the backward).
        fast = saved_mib(preset, device, False, False, args.partial_channels, channels_last=True)
        result["cpu_fast"] = {"float32_mib": fast, "cpu_kernels": kernels.library() is not None}
        print(f"cpu fast path (channels-last, C kernels): float32 {fast:.0f} MiB",
              file=sys.stderr)
    write_json(result, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
