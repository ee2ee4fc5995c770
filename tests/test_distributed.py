"""Two CPU processes (gloo) against one: gradient and alpha averaging, data shards, rank-0 writes."""

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn as nn

from darts.architect import Architect
from darts.cell_topology import SearchSpace
from darts.search import SearchConfig, run
from darts.supernet import SearchNetwork
from darts.train import distributed
from darts.train.checkpoint import load_checkpoint

WORLD = 2
STEPS = 3


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _join(rank: int, port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD))
    torch.set_num_threads(1)


class ShardedSearchNetwork(SearchNetwork):
    """One process computing what WORLD processes compute: each shard of the global batch
    through the network on its own (BatchNorm statistics per shard, as per rank)."""

    def forward(self, x, weights=None):
        return torch.cat([super(ShardedSearchNetwork, self).forward(c, weights)
                          for c in x.chunk(WORLD)])


def _batches():
    g = torch.Generator().manual_seed(3)
    return [(torch.randn(8, 3, 8, 8, generator=g, dtype=torch.float64),
             torch.randint(0, 3, (8,), generator=g)) for _ in range(2 * STEPS)]


def _search_steps(model, order, d, shard):
    """STEPS search steps (architect step, then weight step with clipping) on the batches."""
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(model.network_parameters(), 0.05, momentum=0.9, weight_decay=3e-4)
    architect = Architect(model, criterion, optimizer, order=order, hessian="fd", lr=0.01, dist=d)
    batches = _batches()
    for s in range(STEPS):
        train, val = shard(batches[2 * s]), shard(batches[2 * s + 1])
        architect.step(train, val, xi=0.05)
        optimizer.zero_grad()
        criterion(model(train[0], model.mixing_weights(detach=True)), train[1]).backward()
        distributed.average_grads(model.network_parameters(), d)
        nn.utils.clip_grad_norm_(model.network_parameters(), 0.5)
        optimizer.step()
    return {k: v for k, v in model.state_dict().items() if "running" not in k and "num_batches" not in k}


def _model(cls=SearchNetwork):
    torch.manual_seed(0)
    return cls(4, 3, 3, SearchSpace(steps=2, multiplier=2)).double()


def _steps_worker(rank, port, order, out):
    _join(rank, port)
    d, _ = distributed.setup(torch.device("cpu"))
    model = _model()
    # Each rank starts from different weights: the broadcast makes them rank 0's.
    with torch.no_grad():
        for p in model.network_parameters():
            p.add_(rank)
    distributed.broadcast_state(model, d)
    state = _search_steps(model, order, d, lambda b: (b[0].chunk(WORLD)[rank], b[1].chunk(WORLD)[rank]))
    torch.save(state, os.path.join(out, f"rank{rank}.pt"))
    distributed.teardown(d)


@pytest.mark.parametrize("order", [1, 2])
def test_two_ranks_stay_identical_and_match_one_process_on_the_global_batch(tmp_path, order):
    mp.spawn(_steps_worker, args=(_free_port(), order, str(tmp_path)), nprocs=WORLD)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    single = _search_steps(_model(ShardedSearchNetwork), order, distributed.Dist(), lambda b: b)
    start = {k: v for k, v in _model().state_dict().items() if k in single}
    assert ranks[0].keys() == single.keys()
    for name, value in single.items():
        assert torch.equal(ranks[0][name], ranks[1][name]), f"{name} differs between the ranks"
        torch.testing.assert_close(ranks[0][name], value, rtol=1e-9, atol=1e-12, msg=name)
    # The steps moved the alphas and the weights (the comparison is not of two untouched models).
    assert not torch.allclose(single["alphas_normal"], start["alphas_normal"])
    assert not torch.allclose(single["cells.0.preprocess1.1.weight"], start["cells.0.preprocess1.1.weight"])


class Interrupt(Exception):
    pass


def _run_worker(rank, port, save, resume, loader):
    _join(rank, port)
    cfg = SearchConfig(dataset="synthetic", layers=3, nodes=2, init_channels=4, image_size=16,
                       synthetic_size=48, batch_size=6, workers=0, progress=False, epochs=2,
                       save=save, name="ddp", device="cpu", order=2, loader=loader)

    def crash(epoch, metrics):
        if epoch == 1 and resume is None:
            raise Interrupt

    try:
        run(cfg, resume=resume, on_epoch_end=crash)
    except Interrupt:
        pass


@pytest.mark.parametrize("loader", ["torch", "device"])
def test_torchrun_style_search_writes_once_and_resumes_with_two_ranks(tmp_path, loader):
    mp.spawn(_run_worker, args=(_free_port(), str(tmp_path), None, loader), nprocs=WORLD)
    run_dir = tmp_path / "ddp"
    first = load_checkpoint(run_dir / "checkpoint.pt")
    assert first["epoch"] == 1
    mp.spawn(_run_worker, args=(_free_port(), str(tmp_path), str(run_dir), loader), nprocs=WORLD)
    ckpt = load_checkpoint(run_dir / "checkpoint.pt")
    assert ckpt["epoch"] == 2 and len(ckpt["history"]) == 2
    # One writer: a single TensorBoard event file per run directory and each log line once.
    events = sorted(p.name for p in run_dir.glob("events.out.tfevents.*"))
    assert len(events) == 2, events  # the first run's writer and the resumed run's, rank 0 only
    log = (run_dir / "log.txt").read_text().splitlines()
    assert sum("epoch 1/2 train_loss" in line for line in log) == 1
    assert sum("resumed" in line for line in log) == 1
    assert (run_dir / "genotype.json").exists()
    assert sorted(p.name for p in (run_dir / "genotypes").iterdir()) == ["epoch_001.json", "epoch_002.json"]
    # 48 images, half for the weights: 24 / 2 ranks / batch 6 = 2 steps per epoch and rank.
    assert ckpt["alpha_stream"] == {"pass": 1, "taken": 2}
