"""Zero-cost proxies: a score of an untrained network from one minibatch (docs/proxies.md).

`PROXIES` maps each name (a choice of `--proxies`, `--proxy`) to a `Proxy`: the function of
(network, images, labels, loss) in `darts.proxies.measures`, and its source. A plugin adds its
own with `register_proxy(name, fn, source)`. `score_candidate` scores one candidate of any
space that builds a network (`space.network`): no proxy names a space.

    python -m darts.proxies score --space nb201 --all --proxies synflow,jacov,nwot --out s.csv
    python -m darts.proxies correlate s.csv --benchmark nb201.csv --metric cifar10_test
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from darts.proxies import measures
from darts.registry import Registry


@dataclass(frozen=True)
class Proxy:
    fn: Callable[..., float]
    source: str
    higher_is_better: bool = True


PROXIES = Registry("proxy", "--proxies", [
    ("synflow", Proxy(measures.synflow, "Tanaka et al., NeurIPS 2020; Abdelfattah et al., ICLR 2021")),
    ("jacov", Proxy(measures.jacov, "Mellor et al., arXiv 2006.04647v1")),
    ("nwot", Proxy(measures.nwot, "Mellor et al., ICML 2021 (NASWOT)")),
    ("snip", Proxy(measures.snip, "Lee et al., ICLR 2019")),
    ("grasp", Proxy(measures.grasp, "Wang et al., ICLR 2020")),
    ("grad_norm", Proxy(measures.grad_norm, "Abdelfattah et al., ICLR 2021")),
    ("fisher", Proxy(measures.fisher, "Theis et al. 2018; Turner et al., ICLR 2020")),
    ("l2_norm", Proxy(measures.l2_norm, "Abdelfattah et al., ICLR 2021")),
    ("plain", Proxy(measures.plain, "Abdelfattah et al., ICLR 2021")),
    ("epe_nas", Proxy(measures.epe_nas, "Lopes et al., ICANN 2021")),
    ("zen", Proxy(measures.zen, "Lin et al., ICCV 2021")),
    ("params", Proxy(measures.params, "the trainable parameters")),
    ("flops", Proxy(measures.flops, "multiply-adds of one image")),
])


def register_proxy(name: str, fn: Callable[..., float], source: str = "", *,
                   overwrite: bool = False) -> Proxy:
    """Adds a proxy: `fn(net, x, y, loss_fn)` -> a float, higher meaning better."""
    return PROXIES.register(name, Proxy(fn, source or name), overwrite=overwrite)


def proxy_names(text: str) -> list[str]:
    """The names of a comma-separated `--proxies` value, each checked (one UserError)."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        from darts.errors import UserError

        raise UserError(f"--proxies {text!r}: name at least one of {', '.join(PROXIES)}")
    for n in names:
        PROXIES.lookup(n)
    return names


def build_network(space: Any, candidate: Any, num_classes: int, channels: int | None,
                  layers: int | None, family: str, seed: int) -> nn.Module:
    """The candidate's network, its initial weights drawn from `seed`, in training mode."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = space.network(candidate, num_classes, channels, layers, family=family)
    return net.train()


def score_candidate(space: Any, candidate: Any, names: list[str], x: torch.Tensor,
                    y: torch.Tensor, *, num_classes: int, channels: int | None,
                    layers: int | None, family: str, seed: int,
                    device: torch.device | None = None, channels_last: bool = False
                    ) -> tuple[dict[str, float], dict[str, float]]:
    """({proxy: score}, {proxy: seconds}) of `candidate`: each proxy on a fresh network with the
    same initial weights (drawn from `seed`), on the batch (x, y); the networks are freed
    before returning. A proxy's random draws (Zen's Gaussian inputs) come from `seed` too.
    `channels_last`: the network and batch in that memory format (2-2.6x faster convolutions
    on a CPU; the same function, its sums in another order)."""
    loss_fn = nn.CrossEntropyLoss()
    scores, seconds = {}, {}
    fmt = torch.channels_last if channels_last and x.dim() == 4 else torch.contiguous_format
    x = x.contiguous(memory_format=fmt)
    for name in names:
        start = time.perf_counter()
        net = build_network(space, candidate, num_classes, channels, layers, family, seed)
        net = net.to(device or "cpu", memory_format=fmt)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            scores[name] = float(PROXIES[name].fn(net, x, y, loss_fn))
        del net
        seconds[name] = time.perf_counter() - start
    gc.collect()
    return scores, seconds
