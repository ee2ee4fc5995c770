"""ENAS: the LSTM controller's numerics by hand, the alternation, single paths, resume."""

from __future__ import annotations

import json
import math

import pytest
import torch

from darts import enas
from darts.errors import UserError
from darts.search import SearchConfig
from darts.search import run as search_run
from darts.spaces import get_space, nb201
from darts.strategies import ENAS, Reinforce
from darts.strategies.controller import LSTMPolicy


class TwoDecisions:
    """A space of two decisions (3 and 2 choices): a candidate is its choice tuple."""

    @staticmethod
    def decisions():
        return [("a", "b", "c"), ("x", "y")]

    @staticmethod
    def from_decisions(choices):
        return tuple(choices)

    @staticmethod
    def to_decisions(candidate):
        return list(candidate)


def _lstm_by_hand(policy: LSTMPolicy, choices: list[int]) -> torch.Tensor:
    """log pi(choices), the LSTM's gates written out (i, f, g, o: torch's order)."""
    cell = policy.cells[0]
    x, h, c = policy.start[0], torch.zeros(policy.hidden, dtype=torch.float64), None
    c = torch.zeros_like(h)
    total = torch.zeros((), dtype=torch.float64)
    for d, choice in enumerate(choices):
        z = cell.weight_ih @ x + cell.bias_ih + cell.weight_hh @ h + cell.bias_hh
        i, f, g, o = z.chunk(4)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        u = policy.heads[d].weight @ h + policy.heads[d].bias
        logits = policy.tanh_constant * torch.tanh(u / policy.temperature)
        total = total + logits[choice] - torch.logsumexp(logits, 0)
        if d + 1 < len(choices):
            x = policy.embeddings[d].weight[choice]
    return total


def test_the_lstm_controllers_log_probability_and_policy_gradient_are_the_hand_computed_ones():
    strategy = Reinforce(TwoDecisions, seed=3, controller="lstm", hidden=4, temperature=5.0,
                         tanh_constant=2.5)
    policy = strategy.policy
    for p in policy.parameters():  # ENAS's initialisation: uniform in [-0.1, 0.1]
        assert p.abs().max() <= 0.1 and p.dtype == torch.float64
    choices = [2, 1]
    log_prob, entropy = policy.log_prob(choices)
    torch.testing.assert_close(log_prob, _lstm_by_hand(policy, choices))
    # the probabilities of all six candidates add up to 1
    total = sum(math.exp(float(policy.log_prob([a, b])[0].detach())) for a in range(3) for b in range(2))
    assert abs(total - 1) < 1e-12

    # The policy gradient -(R - b) grad log pi(a), in the last head's bias, by hand:
    # logits = c tanh(u / T), so d log pi(a) / d u_k = (onehot_k - p_k) c / T (1 - tanh^2).
    advantage = 0.7
    policy.zero_grad()
    strategy.loss(choices, advantage).backward()
    with torch.no_grad():
        h = None
        x, state = policy.start, None
        for d in range(2):
            h, state = policy._step(x, state)
            if d == 0:
                x = policy.embeddings[0](torch.tensor([choices[0]]))
        u = policy.heads[1](h)[0]
        t = torch.tanh(u / policy.temperature)
        p = torch.softmax(policy.tanh_constant * t, 0)
        onehot = torch.nn.functional.one_hot(torch.tensor(1), 2).double()
        expected = -advantage * (onehot - p) * policy.tanh_constant / policy.temperature * (1 - t ** 2)
    torch.testing.assert_close(policy.heads[1].bias.grad, expected)
    # and every parameter's gradient against central finite differences in float64
    params = list(policy.parameters())
    grads = [torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in params]
    eps = 1e-6
    torch.set_grad_enabled(False)
    for p, g in zip(params, grads, strict=True):
        flat = p.data.view(-1)
        for k in range(0, flat.numel(), max(1, flat.numel() // 5)):
            old = float(flat[k])
            flat[k] = old + eps
            up = float(strategy.loss(choices, advantage))
            flat[k] = old - eps
            down = float(strategy.loss(choices, advantage))
            flat[k] = old
            assert abs((up - down) / (2 * eps) - float(g.view(-1)[k])) < 1e-7
    torch.set_grad_enabled(True)


def test_enas_puts_the_entropy_in_the_reward_and_averages_aggregate_samples():
    strategy = ENAS(TwoDecisions, seed=0, aggregate=2, hidden=4)
    before = [p.detach().clone() for p in strategy.policy.parameters()]
    a = strategy.ask()
    strategy.tell(a, 0.5)
    entropy = float(strategy.policy.log_prob(list(a))[1].detach())
    assert strategy.last["reward"] == pytest.approx(0.5 + 1e-4 * entropy)
    assert strategy.baseline == strategy.last["reward"]  # the first reward is the baseline
    # one sample of two: no step yet
    assert all(torch.equal(p, q) for p, q in zip(before, strategy.policy.parameters(), strict=True))
    strategy.tell(strategy.ask(), 0.9)
    assert not all(torch.equal(p, q) for p, q in zip(before, strategy.policy.parameters(), strict=True))
    assert strategy.optimizer.defaults["betas"] == (0.0, 0.999)


def test_the_lstm_controller_learns_to_prefer_the_rewarded_choice():
    strategy = Reinforce(TwoDecisions, seed=0, controller="lstm", hidden=8, lr=0.05)
    for _ in range(300):
        a = strategy.ask()
        strategy.tell(a, float(a == (2, 0)))
    assert strategy.greedy() == (2, 0)
    assert float(strategy.policy.log_prob([2, 0])[0].detach().exp()) > 0.8


def _cfg(tmp_path, **changes) -> SearchConfig:
    values = dict(strategy="enas", space="nb201", dataset="synthetic", synthetic_size=128,
                  image_size=8, batch_size=32, epochs=2, layers=1, init_channels=4,
                  controller_steps=2, controller_aggregate=2, controller_hidden=8,
                  derive_samples=3, workers=0, progress=False, tensorboard=False,
                  save=str(tmp_path), name="run", threads=1)
    values.update(changes)
    return SearchConfig(**values)


def test_enas_trains_only_the_sampled_childs_ops(tmp_path, monkeypatch):
    fixed = nb201.NB201Arch.from_string(
        "|nor_conv_3x3~0|+|none~0|skip_connect~1|+|none~0|none~1|avg_pool_3x3~2|")
    seen = {}

    def build(*args, **kwargs):
        r = original(*args, **kwargs)
        r.strategy.ask = lambda: fixed  # every child of the weight pass is this one
        seen["before"] = {k: v.clone() for k, v in r.model.state_dict().items()}
        seen["run"] = r
        return r

    original = enas._build
    monkeypatch.setattr(enas, "_build", build)
    search_run(_cfg(tmp_path, epochs=1))
    model = seen["run"].model
    after = model.state_dict()
    moved = {k for k, v in seen["before"].items() if not torch.equal(v, after[k])}
    conv1x1 = nb201.NB201_OPS.index("nor_conv_1x1")
    cell = next(m for m in model.modules() if isinstance(m, nb201.NB201SearchCell))
    # the 1x1 convolution is in no edge of the child: its weights never moved
    for edge in cell.edges:
        for p in edge.ops[edge.columns.index(conv1x1)].parameters():
            full = next(k for k, v in model.named_parameters() if v is p)
            assert full not in moved, full
    # the child's 3x3 convolution (edge 0) did train
    conv3x3 = cell.edges[0].columns.index(nb201.NB201_OPS.index("nor_conv_3x3"))
    for p in cell.edges[0].ops[conv3x3].parameters():
        full = next(k for k, v in model.named_parameters() if v is p)
        assert full in moved


def test_an_enas_run_killed_after_an_epoch_resumes_to_the_same_end(tmp_path, monkeypatch):
    whole = search_run(_cfg(tmp_path, name="whole", benchmark=""))
    original = enas._epoch

    def killed(r, epoch):
        if epoch == 1:
            raise KeyboardInterrupt
        return original(r, epoch)

    monkeypatch.setattr(enas, "_epoch", killed)
    with pytest.raises(KeyboardInterrupt):
        search_run(_cfg(tmp_path, name="cut"))
    monkeypatch.setattr(enas, "_epoch", original)
    resumed = search_run(SearchConfig(), resume=str(tmp_path / "cut"))

    def strip(history):
        return [{k: v for k, v in h.items() if k != "epoch_time_s"} for h in history]

    assert strip(resumed["history"]) == strip(whole["history"])
    a = torch.load(tmp_path / "whole" / "checkpoint.pt", weights_only=True)
    b = torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=True)
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k
    for k, v in a["controller"]["policy"].items():
        assert torch.equal(v, b["controller"]["policy"][k]), k
    metrics = json.loads((tmp_path / "cut" / "metrics.json").read_text())
    assert metrics["complete"] and len(metrics["history"]) == 2
    assert nb201.parse(metrics["arch"]) == nb201.parse(json.loads(
        (tmp_path / "cut" / "arch.json").read_text())["arch"])
    record = metrics["history"][-1]
    assert record["skip_connect"] == nb201.parse(record["arch"]).to_string().count("skip_connect")
    assert len(record["probabilities"]) == 6


def test_enas_refuses_a_space_without_a_supernet_and_the_gradient_searchs_flags(tmp_path):
    with pytest.raises(UserError, match="cnn space has no supernet"):
        search_run(_cfg(tmp_path, space="cnn"))
    with pytest.raises(UserError, match="--order"):
        search_run(_cfg(tmp_path, order=1))
    assert not (tmp_path / "run").exists()


def test_enas_searches_the_darts_cell_in_its_supernet(tmp_path):
    metrics = search_run(_cfg(tmp_path, space="darts", epochs=1, layers=2, name="cell"))
    genotype = json.loads((tmp_path / "cell" / "genotype.json").read_text())
    assert len(genotype["normal"]) == 8 and len(genotype["reduce"]) == 8
    assert metrics["history"][0]["skip_connect_normal"] >= 0
    assert len(metrics["history"][0]["probabilities"]) == len(get_space("darts").decisions())
