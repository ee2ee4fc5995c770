"""The CPU kernels of darts/accel/kernels.py against PyTorch's, side by side, at the supernet's sizes.

    python benchmarks/bench_kernels.py --json benchmarks/results/cpu-amd-epyc/kernels.json

For every layer shape of the standard search configuration (batch 64; 16 channels at 32x32,
32 at 16x16, 64 at 8x8) it times, alternating the two implementations within each round:
the depthwise weight gradient of the search space's kernels (3x3, 5x5, dilated 3x3 and 5x5;
stride 1 and 2) and BatchNorm's training forward and backward (channels-last float32). Then
the fusions, each against the same work unfused (the "torch" side: our BatchNorm, then
PyTorch's addition or ReLU; addcmul per term and edge), forward and backward together:
BatchNorm adding onto a running sum, BatchNorm with ReLU, the shared terms of a state's
four edges (three terms), a node's sum of 8 mixed-op BatchNorms (each BatchNorm adding onto
the running sum in turn, against `node_batch_norm`), and the first depthwise convs of relu(state) on four edges (16
convs: 3x3, 5x5, dilated 3x3 and 5x5 each, stride 1 and 2; the ReLU, each conv, and in the
backward x's gradient: each transposed conv, autograd's sum and ReLU's backward, against
`fused.relu_depthwise`), and four FactorizedReduce ops' convolutions on one state (the
module's relu, shifted copy and 1x1 stride-2 convs, against `fused.factorized_reduce_convs`;
with the weight gradients, as the weight step, and `_dx` without, as the alpha step), and a
state's max and average pooling with their BatchNorms (PyTorch's pooling, then our BatchNorm,
against `kernels.pool_batch_norm`; stride 1 and 2). The JSON has each case's median and minimum milliseconds (PyTorch
or unfused, ours), the ratio of the minima, and the CPU time the host stole meanwhile (see
common.steal_s).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from common import environment, steal_s, write_json

from darts.accel import kernels
from darts.accel.fused import Conv2d, factorized_reduce_convs, relu_depthwise
from darts.ops import FactorizedReduce

SHAPES = [(64, 16, 32), (64, 32, 16), (64, 64, 8)]
DEPTHWISE = [(3, 1), (5, 1), (3, 2), (5, 2)]  # (kernel, dilation): sep and dil convs


def alternate(a, b, rounds: int) -> tuple[list[float], list[float]]:
    """Times in ms of a() and b(), run alternately (so that a noisy moment hits both)."""
    a(), b()
    ta, tb = [], []
    for _ in range(rounds):
        for f, out in ((a, ta), (b, tb)):
            t = time.perf_counter()
            f()
            out.append((time.perf_counter() - t) * 1e3)
    return ta, tb


def case(name: str, times: tuple[list[float], list[float]], **shape) -> dict:
    """Medians and minima; the speedup is the ratio of the minima (a virtual machine's host
    only ever adds time, so the least disturbed run of each is the fairest comparison)."""
    theirs, ours = times
    out = {"name": name, **shape, "torch_ms": statistics.median(theirs),
           "ours_ms": statistics.median(ours), "torch_min_ms": min(theirs),
           "ours_min_ms": min(ours), "speedup": min(theirs) / min(ours)}
    print(f"{name:24s} {str(shape):60s} torch {out['torch_min_ms']:7.3f} ms  ours "
          f"{out['ours_min_ms']:7.3f} ms (minima)  {out['speedup']:5.2f}x", flush=True)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", choices=("standard", "small"), default="standard",
                   help="small: the first-stage shape only, 3 rounds (a smoke run)")
    p.add_argument("--device", default="cpu", help="cpu only: the kernels are CPU kernels")
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: as is)")
    p.add_argument("--json", help="write the result here")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device != "cpu":
        p.error(f"--device {args.device}: the C kernels are CPU kernels; use --device cpu")
    shapes, rounds = (SHAPES, args.rounds) if args.preset == "standard" else (SHAPES[:1], 3)
    if kernels.library() is None:
        p.error("the C kernels could not be built here (see the warning above)")
    torch.manual_seed(0)
    cases = []
    before = steal_s()
    cl = torch.channels_last
    for n, c, h in shapes:
        for k, d in DEPTHWISE:
            for s in (1, 2):
                pad = d * (k - 1) // 2
                x = torch.randn(n, c, h, h).contiguous(memory_format=cl)
                w = torch.randn(c, 1, k, k)
                g = torch.randn_like(F.conv2d(x, w, None, s, pad, d, c)).contiguous(memory_format=cl)

                def theirs(g=g, x=x, w=w, s=s, pad=pad, d=d, c=c):
                    torch.ops.aten.convolution_backward(g, x, w, None, [s, s], [pad, pad], [d, d],
                                                        False, [0, 0], c, [False, True, False])

                def ours(g=g, x=x, k=k, s=s, pad=pad, d=d):
                    kernels.depthwise_weight_grad(g, x, k, s, pad, d)

                cases.append(case("depthwise_weight_grad", alternate(theirs, ours, rounds),
                                  batch=n, channels=c, size=h, kernel=k, dilation=d, stride=s))
        x = torch.randn(n, c, h, h).contiguous(memory_format=cl).requires_grad_()
        weight = torch.rand(c).requires_grad_()
        dy = torch.randn_like(x)
        ref = F.batch_norm(x, None, None, weight, None, True, 0.0, 1e-5)
        out = kernels.batch_norm_train(x, weight, None, 1e-5)[0]
        cases.append(case("batch_norm_forward", alternate(
            lambda x=x, weight=weight: F.batch_norm(x, None, None, weight, None, True, 0.0, 1e-5),
            lambda x=x, weight=weight: kernels.batch_norm_train(x, weight, None, 1e-5),
            rounds), batch=n, channels=c, size=h))
        cases.append(case("batch_norm_backward", alternate(
            lambda ref=ref, x=x, weight=weight, dy=dy: torch.autograd.grad(
                ref, (x, weight), dy, retain_graph=True),
            lambda out=out, x=x, weight=weight, dy=dy: torch.autograd.grad(
                out, (x, weight), dy, retain_graph=True),
            rounds), batch=n, channels=c, size=h))
        xd = x.detach()
        # torch.var_mean against ours, which also writes the normalised output
        cases.append(case("batch_statistics", alternate(
            lambda xd=xd: torch.var_mean(xd, dim=(0, 2, 3), correction=1),
            lambda xd=xd: kernels.batch_norm_train(xd, None, None, 1e-5),
            rounds), batch=n, channels=c, size=h))
        for name, fused in (("batch_norm_add", "acc"), ("batch_norm_relu", "relu")):
            acc = torch.randn_like(xd).requires_grad_() if fused == "acc" else None

            def unfused(x=x, weight=weight, dy=dy, acc=acc):
                y = kernels.batch_norm_train(x, weight, None, 1e-5)[0]
                y = y + acc if acc is not None else F.relu(y)
                torch.autograd.grad(y, (x, weight), dy)

            def one_pass(x=x, weight=weight, dy=dy, acc=acc):
                y = kernels.batch_norm_train(x, weight, None, 1e-5, acc=acc,
                                             relu=acc is None)[0]
                torch.autograd.grad(y, (x, weight), dy)

            cases.append(case(name, alternate(unfused, one_pass, rounds), batch=n, channels=c,
                              size=h))
        ys = [torch.randn_like(xd).requires_grad_() for _ in range(3)]
        accs = [None] + [torch.randn_like(xd) for _ in range(3)]
        w = torch.rand(4, 3).requires_grad_()
        gs = [torch.randn_like(xd) for _ in range(4)]

        def addcmuls(ys=ys, accs=accs, w=w, gs=gs):
            outs = []
            for e, out in enumerate(accs):
                for k, y in enumerate(ys):
                    out = w[e, k] * y if out is None else torch.addcmul(out, w[e, k], y)
                outs.append(out)
            torch.autograd.grad(outs, (*ys, w), gs)

        def shared(ys=ys, accs=accs, w=w, gs=gs):
            torch.autograd.grad(kernels.add_shared_terms(w, accs, ys), (*ys, w), gs)

        cases.append(case("shared_terms", alternate(addcmuls, shared, rounds), batch=n,
                          channels=c, size=h, edges=4, terms=3))
        xs = [torch.randn_like(xd).requires_grad_() for _ in range(8)]
        scales = torch.rand(8).requires_grad_()

        def one_by_one_bn(xs=xs, scales=scales, dy=dy, c=c):
            out = None
            for k, x in enumerate(xs):
                weight = scales[k].expand(c).contiguous()
                out = kernels.batch_norm_train(x, weight, None, 1e-5, acc=out)[0]
            torch.autograd.grad(out, (*xs, scales), dy)

        def node_bn(xs=xs, scales=scales, dy=dy):
            out = kernels.node_batch_norm(None, xs, scales, [1e-5] * len(xs))[0]
            torch.autograd.grad(out, (*xs, scales), dy)

        cases.append(case("node_batch_norm", alternate(one_by_one_bn, node_bn, rounds),
                          batch=n, channels=c, size=h, terms=len(xs)))
        for s in (1, 2):
            convs = [Conv2d(c, c, k, stride=s, padding=d * (k - 1) // 2, dilation=d, groups=c,
                            bias=False) for _ in range(4) for k, d in DEPTHWISE]
            xs = xd.clone().requires_grad_()
            gs = [torch.randn_like(conv(xd)).contiguous(memory_format=cl) for conv in convs]

            def one_by_one(xs=xs, convs=convs, gs=gs):
                r = F.relu(xs)
                torch.autograd.grad([conv(r) for conv in convs], xs, gs)

            def as_one(xs=xs, convs=convs, gs=gs):
                torch.autograd.grad(relu_depthwise(xs, convs), xs, gs)

            cases.append(case("relu_depthwise", alternate(one_by_one, as_one, rounds), batch=n,
                              channels=c, size=h, stride=s, convs=len(convs)))
        frs = [FactorizedReduce(c, c, affine=False) for _ in range(4)]
        params = [p for fr in frs for p in (fr.conv_1.weight, fr.conv_2.weight)]
        xs = xd.clone().requires_grad_()
        gs = [torch.randn(n, c, (h + 1) // 2, (h + 1) // 2).contiguous(memory_format=cl)
              for _ in frs]
        for name, inputs in (("factorized_reduce", [xs, *params]),
                             ("factorized_reduce_dx", [xs])):

            def module_convs(xs=xs, frs=frs, gs=gs, inputs=inputs):
                outs = []
                for fr in frs:  # FactorizedReduce's forward before its BatchNorm
                    r = fr.relu(xs)
                    shifted = F.pad(r[:, :, 1:, 1:], (0, 1, 0, 1))
                    outs.append(torch.cat([fr.conv_1(r), fr.conv_2(shifted)], dim=1))
                torch.autograd.grad(outs, inputs, gs)

            def matrix_products(xs=xs, frs=frs, gs=gs, inputs=inputs):
                torch.autograd.grad(factorized_reduce_convs(frs, xs), inputs, gs)

            cases.append(case(name, alternate(module_convs, matrix_products, rounds), batch=n,
                              channels=c, size=h, edges=len(frs)))
        for s in (1, 2):
            xs = xd.clone().requires_grad_()
            gs = [torch.randn_like(F.max_pool2d(xd, 3, s, 1)).contiguous(memory_format=cl)
                  for _ in range(2)]

            def pool_then_bn(xs=xs, gs=gs, s=s):
                pooled = (F.max_pool2d(xs, 3, s, 1),
                          F.avg_pool2d(xs, 3, s, 1, count_include_pad=False))
                ys = [kernels.batch_norm_train(p, None, None, 1e-5)[0] for p in pooled]
                torch.autograd.grad(ys, xs, gs)

            def pool_bn(xs=xs, gs=gs, s=s):
                torch.autograd.grad(kernels.pool_batch_norm(xs, 3, s, 1, 1e-5, 1e-5)[:2], xs, gs)

            cases.append(case("pool_batch_norm", alternate(pool_then_bn, pool_bn, rounds),
                              batch=n, channels=c, size=h, stride=s))
    after = steal_s()
    result = {"benchmark": "cpu_kernels", "device": "cpu",
              "environment": environment(torch.device("cpu")), "rounds": rounds,
              "cases": cases}
    if before is not None and after is not None:
        result["cpu_steal_s"] = round(after - before, 2)
    write_json(result, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
