"""Whole-step CUDA graphs (darts/accel/cuda_graph.py): when they are used, and that a replayed step
computes what the eager step computes. The replay tests need a GPU and skip without one."""

import contextlib

import pytest
import torch
import torch.nn as nn

from darts.accel import accelerate
from darts.accel.cuda_graph import StepGraph, cuda_graphs_enabled
from darts.architect import Architect
from darts.cell_topology import SearchSpace
from darts.errors import UserError
from darts.genotype import resolve_genotype
from darts.network import NetworkCIFAR
from darts.ops import drop_path
from darts.supernet import SearchNetwork
from darts.train.engine import MetricSum, Precision, SideStep, evaluate, train_one_epoch

CPU, GPU = torch.device("cpu"), torch.device("cuda")
needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_auto_uses_graphs_only_where_they_can_run():
    ok = dict(distributed=False, amp="off", compile=False)
    assert cuda_graphs_enabled("auto", GPU, **ok)
    assert cuda_graphs_enabled("auto", GPU, **{**ok, "amp": "bf16"})
    assert not cuda_graphs_enabled("auto", CPU, **ok)
    assert not cuda_graphs_enabled("auto", GPU, **{**ok, "distributed": True})
    assert not cuda_graphs_enabled("auto", GPU, **{**ok, "amp": "fp16"})
    assert not cuda_graphs_enabled("auto", GPU, **{**ok, "compile": True})
    assert not cuda_graphs_enabled("off", GPU, **ok)


@pytest.mark.parametrize("where,overrides,reason", [
    (CPU, {}, "need a GPU"), (GPU, {"amp": "fp16"}, "--amp bf16"),
    (GPU, {"distributed": True}, "one process"), (GPU, {"compile": True}, "--compile")])
def test_on_where_graphs_cannot_run_says_why(where, overrides, reason):
    with pytest.raises(UserError, match=f"--cuda_graphs on: .*{reason}"):
        cuda_graphs_enabled("on", where, **{"distributed": False, "amp": "off", "compile": False,
                                            **overrides})
    with pytest.raises(UserError, match="--cuda_graphs maybe: choose one of auto, on, off"):
        cuda_graphs_enabled("maybe", GPU, distributed=False, amp="off", compile=False)


def test_disabled_step_graph_calls_the_function_every_time():
    calls = []
    graphed = StepGraph(lambda x: calls.append(x) or x * 2, enabled=False)
    assert graphed(torch.ones(2)).tolist() == [2.0, 2.0]
    assert graphed(torch.ones(3)).tolist() == [2.0, 2.0, 2.0]
    assert len(calls) == 2 and graphed.eager_calls == 2 and graphed.replays == 0


# -- on a GPU ---------------------------------------------------------------------------------

@needs_gpu
def test_replays_follow_new_inputs_and_state_and_other_shapes_run_eagerly():
    total = torch.zeros(3, device=GPU)

    def step(x, scale):
        total.add_(x.sum(0))  # state the graph updates in place
        return x * 2 + (0 if scale is None else scale)

    graphed = StepGraph(step, warmup=1)
    expected = torch.zeros(3, dtype=torch.float64)
    for i in range(5):
        x = torch.full((4, 3), float(i), device=GPU) + torch.arange(3, device=GPU)
        out = graphed(x, None)
        expected += x.double().sum(0).cpu()
        assert torch.equal(out, x * 2)
    odd = torch.ones(2, 3, device=GPU)
    assert torch.equal(graphed(odd, None), odd * 2)  # another shape: eager, correct
    expected += 2
    torch.testing.assert_close(total.double().cpu(), expected)
    assert (graphed.eager_calls, graphed.replays) == (2, 4)


@needs_gpu
def test_random_numbers_are_fresh_on_every_replay():
    graphed = StepGraph(lambda x: drop_path(x, 0.5), warmup=1)
    x = torch.ones(4096, 1, 1, 1, device=GPU)
    outs = [graphed(x).clone() for _ in range(4)]
    assert graphed.replays == 3
    for out in outs[1:]:
        kept = out.ne(0).float().mean().item()
        assert 0.45 < kept < 0.55 and set(out.unique().tolist()) <= {0.0, 2.0}
    assert not torch.equal(outs[2], outs[3])


@contextlib.contextmanager
def exact_kernels():
    """Deterministic float32 kernels (no TF32), so that eager and replayed steps can only
    differ where the graph computes something else."""
    matmul = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        with torch.backends.cudnn.flags(enabled=True, benchmark=False, deterministic=True,
                                        allow_tf32=False):
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = matmul


def _search(graphs: bool, order: int, checkpoint_cells: bool = False, steps: int = 5,
            batch_edges: bool = True):
    torch.manual_seed(0)
    model = SearchNetwork(8, 5, 5, SearchSpace(steps=3, multiplier=3),
                          checkpoint_cells=checkpoint_cells)
    model = accelerate(model, batch_edges=batch_edges).to(GPU)
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(model.network_parameters(), 0.05, momentum=0.9, weight_decay=3e-4)
    # Capturable Adam in both runs (its bias correction is computed on the device, rounded
    # differently from the host's): the runs then differ only in being replayed or not.
    architect = Architect(model, criterion, optimizer, order=order, hessian="fd", lr=0.01,
                          capturable=True)
    g = torch.Generator(device=GPU).manual_seed(1)
    data = [(torch.randn(16, 3, 16, 16, device=GPU, generator=g),
             torch.randint(0, 5, (16,), device=GPU, generator=g)) for _ in range(2 * steps)]
    side = SideStep(iter(data[steps:]), lambda b, v: architect.step(b, v, xi=0.05), MetricSum(GPU))
    train = train_one_epoch(model, data[:steps], optimizer, criterion, GPU, grad_clip=5.0,
                            side_step=side, cuda_graph=graphs,
                            forward=lambda x: model(x, model.mixing_weights(detach=True)))
    valid = evaluate(model, data, criterion, GPU, cuda_graph=graphs)
    return train, valid, side.meter.result().loss, model


@needs_gpu
@pytest.mark.parametrize("order,checkpoint_cells", [(1, False), (2, False), (1, True)])
def test_graphed_search_steps_equal_eager_steps(order, checkpoint_cells, monkeypatch):
    replays = []
    replay = torch.cuda.CUDAGraph.replay
    monkeypatch.setattr(torch.cuda.CUDAGraph, "replay", lambda self: replays.append(1) or replay(self))
    with exact_kernels():
        eager, eager_valid, eager_arch, eager_model = _search(False, order, checkpoint_cells)
        assert not replays
        graphed, graphed_valid, graphed_arch, graphed_model = _search(True, order, checkpoint_cells)
    # 5 weight steps: one warm-up, one capture (then replayed), three more; 10 evaluation
    # batches: one warm-up, nine replays.
    assert len(replays) == 4 + 9
    assert graphed.loss == pytest.approx(eager.loss, rel=1e-5)
    assert graphed_valid.loss == pytest.approx(eager_valid.loss, rel=1e-5)
    assert graphed_arch == pytest.approx(eager_arch, rel=1e-5)
    for a, b in zip(graphed_model.arch_parameters(), eager_model.arch_parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    for (name, a), b in zip(graphed_model.state_dict().items(), eager_model.state_dict().values(),
                            strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)


@needs_gpu
def test_graphed_evaluation_and_final_training_equal_eager():
    genotype = resolve_genotype("darts_v2")
    results = []
    with exact_kernels():
        for graphs in (False, True):
            torch.manual_seed(0)
            net = accelerate(NetworkCIFAR(8, 5, 5, True, genotype)).to(GPU)
            net.drop_path_prob = 0.0
            optimizer = torch.optim.SGD(net.parameters(), 0.05, momentum=0.9, weight_decay=3e-4)
            g = torch.Generator(device=GPU).manual_seed(1)
            data = [(torch.randn(16, 3, 16, 16, device=GPU, generator=g),
                     torch.randint(0, 5, (16,), device=GPU, generator=g)) for _ in range(4)]
            data.append((data[0][0][:5], data[0][1][:5]))  # a short last batch: eager
            train = train_one_epoch(net, data, optimizer, nn.CrossEntropyLoss(), GPU, aux_weight=0.4,
                                    grad_clip=5.0, cuda_graph=graphs,
                                    precision=Precision.from_flag("off", GPU))
            valid = evaluate(net, data, nn.CrossEntropyLoss(), GPU, cuda_graph=graphs)
            results.append((train, valid, [p.detach().clone() for p in net.parameters()]))
    (t0, v0, p0), (t1, v1, p1) = results
    assert t1.loss == pytest.approx(t0.loss, rel=1e-5) and t1.top1 == t0.top1
    assert v1.loss == pytest.approx(v0.loss, rel=1e-5) and v1.top1 == v0.top1
    for a, b in zip(p1, p0, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@needs_gpu
def test_capturable_architect_resumes_from_a_state_saved_without_graphs():
    torch.manual_seed(0)
    model = accelerate(SearchNetwork(8, 5, 4, SearchSpace(steps=2, multiplier=2))).to(GPU)
    optimizer = torch.optim.SGD(model.network_parameters(), 0.05, momentum=0.9)
    plain = Architect(model, nn.CrossEntropyLoss(), optimizer, order=1)
    x, y = torch.randn(8, 3, 16, 16, device=GPU), torch.randint(0, 5, (8,), device=GPU)
    plain.step((x, y), (x, y), xi=0.05)
    state = plain.state_dict()
    assert next(iter(state["state"].values()))["step"].device.type == "cpu"
    resumed = Architect(model, nn.CrossEntropyLoss(), optimizer, order=1, capturable=True)
    resumed.load_state_dict(state)
    assert resumed.optimizer.param_groups[0]["capturable"]
    assert all(s["step"].device.type == "cuda" for s in resumed.optimizer.state.values())
    graphed = StepGraph(lambda a, b: resumed.step((a, b), (a, b), xi=0.05), warmup=0)
    graphed(x, y)
    graphed(x, y)
    assert graphed.replays == 2
    assert all(float(s["step"]) == 3 for s in resumed.optimizer.state.values())
