"""The fast paths compute what the float32 eager path computes: AMP, channels_last,
torch.compile, the device loader and PC-DARTS, through the search and final-training runs."""

import json

import pytest
import torch
import torch.nn as nn

from darts.accel import accelerate
from darts.architect import Architect
from darts.cell_topology import SearchSpace
from darts.final import FinalConfig
from darts.final import run as run_final
from darts.genotype import load_genotype
from darts.ops import DilConv, SepConv
from darts.search import SearchConfig
from darts.search import run as run_search
from darts.supernet import SearchNetwork
from darts.train.engine import (
    MetricSum,
    Precision,
    SideStep,
    compile_model,
    split_output,
    train_one_epoch,
)

CPU = torch.device("cpu")


def _batches(n, size=8, classes=3, batch=8, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(batch, 3, size, size, generator=g), torch.randint(0, classes, (batch,), generator=g))
            for _ in range(n)]


def _search_losses(amp, channels_last=False, steps=3, hessian="fd"):
    """Weight-step losses and final alphas of `steps` second-order search steps."""
    torch.manual_seed(0)
    model = accelerate(SearchNetwork(8, 3, 3, SearchSpace(steps=2, multiplier=2)))
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    precision = Precision.from_flag(amp, CPU)
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(model.network_parameters(), 0.05, momentum=0.9)
    architect = Architect(model, criterion, optimizer, order=2, hessian=hessian, lr=0.01,
                          precision=precision)
    batches = _batches(2 * steps)
    alpha_step = SideStep(iter(batches[steps:]), lambda b, v: architect.step(b, v, xi=0.05),
                          MetricSum(CPU))
    losses = []

    class Recorder(nn.Module):
        def forward(self, logits, y):
            loss = criterion(logits, y)
            losses.append(loss.item())
            return loss

    train_one_epoch(model, batches[:steps], optimizer, Recorder(), CPU, grad_clip=5.0,
                    side_step=alpha_step, precision=precision, channels_last=channels_last,
                    forward=lambda x: model(x, model.mixing_weights(detach=True)))
    return losses, [a.detach().clone() for a in model.arch_parameters()]


@pytest.mark.parametrize("amp,tol", [("bf16", 0.03), ("fp16", 0.01)])
def test_amp_search_steps_follow_float32(amp, tol):
    ref_losses, _ = _search_losses("off")
    losses, alphas = _search_losses(amp)
    assert len(losses) == 3 and all(torch.isfinite(a).all() for a in alphas)
    for a, b in zip(losses, ref_losses, strict=True):
        assert abs(a - b) <= tol * abs(b), (losses, ref_losses)


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_amp_alpha_gradient_points_where_the_float32_one_does(amp):
    # Adam's update is the gradient's sign pattern at first, which rounding flips for tiny
    # entries: compare the gradients themselves.
    grads = {}
    for mode in ("off", amp):
        torch.manual_seed(0)
        model = accelerate(SearchNetwork(8, 3, 3, SearchSpace(steps=2, multiplier=2)))
        optimizer = torch.optim.SGD(model.network_parameters(), 0.05, momentum=0.9)
        architect = Architect(model, nn.CrossEntropyLoss(), optimizer, order=2,
                              precision=Precision.from_flag(mode, CPU))
        train, val = _batches(2)
        g, _ = architect.unrolled_gradient(train, val, xi=0.05)
        grads[mode] = torch.cat([t.reshape(-1).float() for t in g])
    cosine = torch.nn.functional.cosine_similarity(grads[amp], grads["off"], dim=0)
    # bf16/fp16 keep ~3 significant digits of the tiny early alpha gradients: aligned, not equal.
    assert cosine > 0.8, cosine


def test_channels_last_search_steps_equal_contiguous():
    # The exact Hessian-vector product: the finite difference's w +- eps v lands, for this
    # data, within 1e-4 eps of a ReLU's kink (measured in float64: the alpha gradient jumps
    # by 3e-6 there), so which side two float32 paths fall on decides the product.
    ref_losses, ref_alphas = _search_losses("off", hessian="exact")
    losses, alphas = _search_losses("off", channels_last=True, hessian="exact")
    # float32 both; on the CPU the channels-last path runs the C kernels (darts/accel/kernels.py),
    # which sum in another order: alphas of up to 3e-2 after the steps agree to about 2e-7.
    torch.testing.assert_close(torch.tensor(losses), torch.tensor(ref_losses), rtol=1e-4, atol=1e-5)
    for a, b in zip(alphas, ref_alphas, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("batch_edges,partial_channels", [(False, 1), (True, 1), (False, 2)])
def test_bf16_autocast_keeps_the_supernets_activations_in_bf16(batch_edges, partial_channels):
    # The float32 mixing weights must not promote the mixed sums (and so every node state,
    # and every activation saved downstream) to float32: that halves what bf16 saves.
    model = accelerate(SearchNetwork(8, 3, 4, SearchSpace(steps=3, multiplier=3),
                                     partial_channels=partial_channels), batch_edges=batch_edges)
    x = torch.randn(4, 3, 16, 16)
    saved = []

    def pack(t):
        if t.numel() >= 1000 and t.is_floating_point():  # activations, not BN parameters
            saved.append(t.dtype)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(x)
    assert out.dtype == torch.bfloat16
    assert len(saved) > 50 and set(saved) == {torch.bfloat16}, sorted(map(str, set(saved)))


def test_hessian_vector_product_stays_float32_under_amp():
    torch.manual_seed(0)
    model = accelerate(SearchNetwork(8, 3, 3, SearchSpace(steps=2, multiplier=2)))
    optimizer = torch.optim.SGD(model.network_parameters(), 0.05, momentum=0.9)
    batch = _batches(1)[0]
    v = [torch.randn_like(w) for w in model.network_parameters()]
    hvp = {}
    for amp in ("off", "bf16"):
        architect = Architect(model, nn.CrossEntropyLoss(), optimizer, order=2,
                              precision=Precision.from_flag(amp, CPU))
        hvp[amp] = architect.hessian_vector_product(v, batch)
    for a, b in zip(hvp["bf16"], hvp["off"], strict=True):
        assert a.dtype == torch.float32
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def _final_losses(compile_it, steps=3):
    # A cell's ops and a classifier: a graph small enough to compile in seconds on 2 cores.
    torch.manual_seed(0)
    model = accelerate(nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False), SepConv(8, 8, 3, 1, 1),
        DilConv(8, 8, 3, 2, 2, 2), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3)))
    compile_model(model, compile_it, lambda msg: None)
    optimizer = torch.optim.SGD(model.parameters(), 0.05, momentum=0.9)
    criterion = nn.CrossEntropyLoss()
    losses = []
    for x, y in _batches(steps):
        optimizer.zero_grad()
        loss = criterion(split_output(model(x))[0], y)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def test_compiled_network_trains_like_eager():
    eager = _final_losses(False)
    compiled = _final_losses(True)
    torch.testing.assert_close(torch.tensor(compiled), torch.tensor(eager), rtol=1e-4, atol=1e-5)
    assert eager[0] != eager[-1]


@pytest.mark.parametrize("partial_channels,batch_edges", [(4, "off"), (1, "on")])
def test_search_run_with_every_fast_flag_decodes_valid_genotypes(tmp_path, partial_channels,
                                                                  batch_edges):
    cfg = SearchConfig(dataset="synthetic", layers=3, nodes=2, init_channels=8, image_size=16,
                       synthetic_size=32, batch_size=8, workers=0, progress=False, epochs=2,
                       save=str(tmp_path), name="fast", device="cpu", order=2, loader="device",
                       amp="bf16", channels_last=True, partial_channels=partial_channels,
                       checkpoint_cells=True, batch_edges=batch_edges)
    metrics = run_search(cfg)
    assert metrics["complete"] and len(metrics["history"]) == 2
    for f in sorted((tmp_path / "fast" / "genotypes").iterdir()) + [tmp_path / "fast" / "genotype.json"]:
        genotype = load_genotype(f)  # loading validates the structure
        for cell in (genotype.normal, genotype.reduce):
            assert len(cell) == 4 and all(op != "none" for op, _ in cell)
            assert all(j < 2 + i // 2 for i, (_, j) in enumerate(cell))
    config = json.loads((tmp_path / "fast" / "config.json").read_text())
    assert (config["partial_channels"], config["amp"], config["loader"], config["batch_edges"]) == (
        partial_channels, "bf16", "device", batch_edges)


def test_final_run_on_the_device_loader_with_amp(tmp_path):
    cfg = FinalConfig(dataset="synthetic", genotype="darts_v2", epochs=1, layers=3, init_channels=4,
                      image_size=16, synthetic_size=64, batch_size=16, workers=0, progress=False,
                      save=str(tmp_path), name="fast", device="cpu", loader="device", amp="bf16",
                      channels_last=True)
    metrics = run_final(cfg)
    assert metrics["complete"] and 0 <= metrics["final"]["top1"] <= 100


_CHURN = r"""
import resource, sys, threading
import torch
from darts.train.engine import tune_malloc
tuned = sys.argv[1] == "tuned" and tune_malloc(torch.device("cpu"))

def churn():
    # What a training step does: the forward keeps tensors of a few MiB one after another, the
    # backward frees them in reverse order.
    kept = []
    for _ in range(40):
        kept.append(torch.empty(1 << 20).fill_(1.0))
    while kept:
        kept.pop()

def faults(where):
    if where == "thread":  # a thread's own arena (OpenMP's, the C kernels' threads)
        t = threading.Thread(target=churn)
        t.start()
        t.join()
    else:
        churn()

faults(sys.argv[2])  # warm: the first tensors fault in whatever memory they get
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
faults(sys.argv[2])
print(int(tuned), resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(not __import__("sys").platform.startswith("linux")
                    or __import__("platform").libc_ver()[0] != "glibc",
                    reason="tune_malloc sets glibc's malloc")
@pytest.mark.parametrize("where", ["main", "thread"])
def test_tune_malloc_keeps_freed_tensor_memory_in_the_process(where):
    """Forty 4 MiB tensors made, then freed in reverse order, as a step's activations are:
    with glibc's defaults the heap is trimmed as they go and the next round faults every
    4 KiB page in again (40,960 pages); tuned, the second round reuses the first's memory."""
    import subprocess
    import sys

    def run(mode):
        out = subprocess.run([sys.executable, "-c", _CHURN, mode, where], capture_output=True,
                             text=True, check=True, timeout=120)
        tuned, faults = map(int, out.stdout.split())
        return bool(tuned), faults

    tuned_flag, tuned = run("tuned")
    untuned_flag, untuned = run("system")
    assert tuned_flag and not untuned_flag
    pages = 40 * (4 << 20) // 4096
    assert untuned > pages // 2, (untuned, pages)
    # tuned: a few 8 MiB blocks faulted in now and then (seen 12-6,144 pages), never most
    assert tuned < pages // 4, (tuned, pages)
