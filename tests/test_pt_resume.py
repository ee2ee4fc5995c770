"""DARTS-PT's projection is checkpointed step by step: a run killed mid-projection resumes at
the next undone step and ends bit-identical to an uninterrupted run."""

import pytest
import torch

from darts.methods import select
from darts.search import SearchConfig, run
from darts.train.checkpoint import load_checkpoint

ORIGINAL = {name: getattr(select, name) for name in ("project_op", "project_edges")}


class Killed(Exception):
    """The run killed mid-projection."""


def tiny_cfg(tmp_path, space, name, **pieces):
    cfg = dict(dataset="synthetic", space=space, init_channels=4, image_size=8, synthetic_size=16,
               batch_size=8, workers=0, progress=False, epochs=1, save=str(tmp_path),
               device="cpu", tensorboard=False, threads=1, order=1, select="pt",
               pt_interval=1, name=name, **pieces)
    # four ops on the DARTS cell (`none` included, which DARTS-PT never chooses): quicker
    cfg.update(dict(layers=3, nodes=2, ops="none,max_pool_3x3,skip_connect,sep_conv_3x3")
               if space == "darts" else dict(layers=1))
    return SearchConfig(**cfg)


def count_decisions(monkeypatch, kill_at=None):
    """Counts the projection's decisions (each edge's op, each node's edges); with `kill_at`,
    the run dies as decision `kill_at` starts (after the checkpoint of the one before)."""
    calls = []
    for name, original in ORIGINAL.items():
        def counted(*args, original=original, **kwargs):
            if len(calls) + 1 == kill_at:
                raise Killed
            calls.append(args[2:4])  # (matrix, edge or node)
            return original(*args, **kwargs)
        monkeypatch.setattr(select, name, counted)
    return calls


def plain(value):
    """`value` without what differs between two runs of the same search: the times, and the
    run's name in the genotypes."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()
                if k not in ("search_time_s", "epoch_time_s", "name", "source")}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


# DARTS cell (2 nodes, 5 edges): 14 steps; killed at a node's step, between the normal and the
# reduction cell's decisions. NAS-Bench-201: 6 steps, killed with tuning epochs done, with
# pieces whose schedules the tuning keeps from the last epoch (SDARTS's epsilon, P-DARTS's
# skip dropout): a resumed run sets them again.
@pytest.mark.parametrize("space, steps, kill_at, pieces", [
    ("darts", 14, 12, {}),
    ("nb201", 6, 4, dict(perturb="random", skip_dropout=0.3)),
])
def test_a_projection_killed_midway_resumes_at_the_next_step_bit_identical(
        tmp_path, monkeypatch, space, steps, kill_at, pieces):
    calls = count_decisions(monkeypatch)
    full = run(tiny_cfg(tmp_path, space, "full", **pieces))
    assert len(calls) == steps

    calls = count_decisions(monkeypatch, kill_at=kill_at)
    with pytest.raises(Killed):
        run(tiny_cfg(tmp_path, space, "killed", **pieces))
    done = kill_at - 1
    ckpt = load_checkpoint(tmp_path / "killed", "search")  # weights_only=True
    assert ckpt["projection"]["done"] == done and "selection" not in ckpt["history"][-1]
    assert len(ckpt["projection"]["projection"]["log"]) == done

    calls = count_decisions(monkeypatch)
    resumed = run(SearchConfig(), resume=str(tmp_path / "killed"))
    assert len(calls) == steps - done  # the steps done before the kill are not redone
    log = (tmp_path / "killed" / "log.txt").read_text()
    assert f"resuming after projection step {done}/{steps}" in log
    assert f"projection step {steps}/{steps}" in log

    assert plain(resumed["genotype"]) == plain(full["genotype"])
    assert plain(resumed["selection"]) == plain(full["selection"])
    assert plain(resumed) == plain(full)  # every record, the tuning epochs' too
    a, b = load_checkpoint(tmp_path / "full"), load_checkpoint(tmp_path / "killed")
    assert plain(a["history"]) == plain(b["history"])
    assert a["model"].keys() == b["model"].keys()
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])

    calls = count_decisions(monkeypatch)  # a finished projection is never redone
    again = run(SearchConfig(), resume=str(tmp_path / "killed"))
    assert not calls and plain(again) == plain(full)
