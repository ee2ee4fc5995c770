"""How the alphas become the weights that mix each edge's ops: the mixing rule, `--mixing`
(also spelled `--sampler`). One registry, `MIXINGS`, holds every rule, deterministic or drawn.

DARTS (eq. 2) mixes by softmax(alpha); the default, `softmax`, is that exact code path (the
supernet is built without a rule object). The others:

- `gdas` (Dong & Yang, CVPR 2019, "Searching for a robust neural architecture in four GPU
  hours"; AutoDL-Projects' GDAS code): a hard Gumbel-softmax sample per forward. With Gumbel
  noise g, soft = softmax((log_softmax(alpha) + g) / tau); the weights are
  one_hot(argmax soft) - soft.detach() + soft: one-hot in value, the soft sample's gradient
  (straight-through). Only the sampled op of each edge runs; as in GDAS's code, the other
  ops' weights are added as scalars (value 0), through which their straight-through
  gradient flows (`MixedOp.forward_sampled`). tau falls linearly from `--tau_max` 10 to
  `--tau_min` 0.1 over the search, tau_max - (tau_max - tau_min) * epoch / (epochs - 1)
  (GDAS.py of NAS-Bench-201's algorithms). In evaluation the supernet runs the argmax path
  (one op per edge, the decoded cell); decoding ranks by softmax(alpha), as GDAS's code.
- `drnas` (Chen et al., ICLR 2021, "DrNAS: Dirichlet neural architecture search"; code
  xiangning-chen/DrNAS): each edge's weights are a reparameterised sample of
  Dirichlet(elu(alpha) + 1) (their concentration; `rsample`'s implicit gradient). Their code
  samples in evaluation too; here evaluation and decoding use the Dirichlet mean
  (concentration / its sum, whose per-edge argmax is alpha's, as their decoder's).
- `fairdarts` (Chu et al., ECCV 2020, "Fair DARTS"): sigmoid(alpha), every op weighted
  independently (no competition between an edge's ops); its regulariser is the zero-one
  loss (`--regularizer zero-one`, darts.methods.regularizers). `none` gets no alpha; an op is
  kept where its sigmoid reaches `--op_threshold` 0.85, an edge with none kept is `none`
  (`Sigmoid`).
- a plugin's rule: `register_mixing(name, rule)` with `rule(alphas)` -> weights of the same
  shape (a function or an object; its `set_epoch(epoch, epochs)` and `scalars()`, where it
  has them, hear each epoch), or a `Sampler` subclass or object for a rule that draws.

A sampler draws in training mode with gradients on (the alpha step and the weight step) and
is deterministic otherwise (evaluation, decoding, heatmaps, statistics, all under no_grad or
in eval mode). Each forward draws afresh, except inside `one_sample(model)`: the architect's
second-order step runs its passes there (the virtual step, L_val at w', and the two
finite-difference passes of eq. 8), so all of them see one sample and the finite difference
differentiates one function. The exact Hessian (`--hessian exact`) works too.

Speed: the fast cell executors take mixing weights, so `drnas` and `fairdarts` run on them;
a GDAS sample runs the plain cell definition, one op per edge (the executors decline).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.distributions.dirichlet import _Dirichlet_backward

from darts.registry import Registry

Weights = tuple[torch.Tensor, ...]


class HardSample(tuple):
    """Mixing weights whose rows are one-hot in value (a GDAS sample or its argmax path):
    `columns[m][e]` is the op (alpha column) chosen on edge e of weight matrix m; the supernet
    runs only those ops (`forward_sampled`)."""

    columns: tuple[tuple[int, ...], ...]

    def __new__(cls, weights: Sequence[torch.Tensor], columns: Sequence[Sequence[int]]):
        self = super().__new__(cls, weights)
        self.columns = tuple(tuple(c) for c in columns)
        return self


class Sampler:
    """The base of every mixing rule other than DARTS's softmax: a rule drawn per forward.
    Subclasses give `noise` (the randomness, independent of the alphas' graph), `draw`
    (weights of the alphas at that noise) and `probabilities` (the deterministic weights for
    decoding and evaluation); a deterministic rule overrides `sample` (see `Rule`)."""

    name = ""
    single_path = False  # a sample runs one op per edge (HardSample)
    cuda_graphs = False  # a captured step would replay one Python-side choice
    # The decoding rule: None, each edge's strongest op (`none` among them where the space
    # selects it); a number, the method's threshold rule (FairDARTS: see `Sigmoid`).
    threshold: float | None = None

    @classmethod
    def from_config(cls, cfg: Any) -> Sampler:
        """The rule of a run's settings (`cfg`: a darts.search_config.SearchConfig)."""
        return cls()

    def __init__(self) -> None:
        self._fixed: dict[int, torch.Tensor] | None = None

    # -- what a subclass gives -------------------------------------------------------------
    def noise(self, alphas: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def draw(self, alphas: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def probabilities(self, alphas: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def eval_weights(self, alphas: Sequence[torch.Tensor]) -> Weights:
        """What the supernet runs in evaluation (default: the probabilities)."""
        return tuple(self.probabilities(a) for a in alphas)

    def bind(self, ops: Sequence[str]) -> None:
        """Hears the supernet's ops (the alpha columns, in order) when it is built."""

    # -- the epoch hook (darts.methods.schedule) --------------------------------------------
    def set_epoch(self, epoch: int, epochs: int) -> None:
        pass

    def scalars(self) -> dict[str, float]:
        return {}

    # -- use ----------------------------------------------------------------------------------
    def __call__(self, alphas: Sequence[torch.Tensor], *, sample: bool,
                 forward: bool = False) -> Weights:
        """The weights of each alpha matrix: a sample if `sample`, else for a forward the
        evaluation weights and otherwise the probabilities."""
        if sample:
            return self.sample(alphas)
        return self.eval_weights(alphas) if forward else tuple(self.probabilities(a) for a in alphas)

    def sample(self, alphas: Sequence[torch.Tensor]) -> Weights:
        return tuple(self.draw(a, self._noise(i, a)) for i, a in enumerate(alphas))

    def _noise(self, key: int, alphas: torch.Tensor) -> torch.Tensor:
        if self._fixed is not None and key in self._fixed:
            return self._fixed[key]
        with torch.no_grad():
            noise = self.noise(alphas.detach())
        if self._fixed is not None:
            self._fixed[key] = noise
        return noise

    @contextlib.contextmanager
    def one_sample(self) -> Iterator[None]:
        """Every forward inside draws the same sample (of unchanged alphas)."""
        outer, self._fixed = self._fixed, {} if self._fixed is None else self._fixed
        try:
            yield
        finally:
            self._fixed = outer


class GumbelHard(Sampler):
    """GDAS: a hard Gumbel-softmax sample, straight-through, one op per edge."""

    name = "gdas"
    single_path = True

    def __init__(self, tau_max: float = 10.0, tau_min: float = 0.1):
        super().__init__()
        self.tau_max, self.tau_min = tau_max, tau_min
        self.tau = tau_max

    @classmethod
    def from_config(cls, cfg: Any) -> GumbelHard:
        return cls(cfg.tau_max, cfg.tau_min)

    def set_epoch(self, epoch: int, epochs: int) -> None:
        """tau_max at the first epoch, tau_min at the last, linear between (GDAS.py)."""
        frac = epoch / (epochs - 1) if epochs > 1 else 0.0
        self.tau = self.tau_max - (self.tau_max - self.tau_min) * frac

    def scalars(self) -> dict[str, float]:
        return {"tau": self.tau}

    def noise(self, alphas: torch.Tensor) -> torch.Tensor:
        while True:  # -log(Exp(1)) is Gumbel(0, 1); an exponential draw of 0 is redrawn
            g = -torch.empty_like(alphas).exponential_().log()
            if bool(torch.isfinite(g).all()):
                return g

    def soft(self, alphas: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """The Gumbel-softmax sample at temperature tau."""
        return F.softmax((F.log_softmax(alphas, dim=-1) + noise) / self.tau, dim=-1)

    def draw(self, alphas: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        soft = self.soft(alphas, noise)
        hard = torch.zeros_like(soft).scatter_(-1, soft.argmax(-1, keepdim=True), 1.0)
        return hard - soft.detach() + soft

    def sample(self, alphas: Sequence[torch.Tensor]) -> Weights:
        weights = super().sample(alphas)
        return HardSample(weights, [w.detach().argmax(-1).tolist() for w in weights])

    def probabilities(self, alphas: torch.Tensor) -> torch.Tensor:
        return F.softmax(alphas, dim=-1)

    def eval_weights(self, alphas: Sequence[torch.Tensor]) -> Weights:
        """The argmax path: each edge's most probable op alone."""
        columns = [a.detach().argmax(-1) for a in alphas]
        weights = [torch.zeros_like(a).scatter_(-1, c.unsqueeze(-1), 1.0)
                   for a, c in zip(alphas, columns, strict=True)]
        return HardSample(weights, [c.tolist() for c in columns])


def dirichlet_concentration(alphas: torch.Tensor) -> torch.Tensor:
    """DrNAS's concentration: elu(alpha) + 1 > 0 (their code, process_step_vector)."""
    return F.elu(alphas) + 1


class _GivenDirichlet(torch.autograd.Function):
    """A Dirichlet sample x of `concentration`, drawn before: x in value, and the implicit
    reparameterisation gradient of torch's `Dirichlet.rsample` (the same backward), so a
    sample can be reused by several forwards."""

    @staticmethod
    def forward(ctx, concentration, x):
        ctx.save_for_backward(x, concentration)
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        x, concentration = ctx.saved_tensors
        return _Dirichlet_backward(x, concentration, grad), None


class Dirichlet(Sampler):
    """DrNAS: reparameterised Dirichlet(elu(alpha) + 1) samples; the mean otherwise."""

    name = "drnas"

    def noise(self, alphas: torch.Tensor) -> torch.Tensor:
        return torch.distributions.Dirichlet(dirichlet_concentration(alphas)).sample()

    def draw(self, alphas: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return _GivenDirichlet.apply(dirichlet_concentration(alphas), noise)

    def probabilities(self, alphas: torch.Tensor) -> torch.Tensor:
        c = dirichlet_concentration(alphas)
        return c / c.sum(-1, keepdim=True)


class Sigmoid(Sampler):
    """FairDARTS: sigmoid(alpha), each op independent; deterministic.

    FairDARTS's space has no `none` op (xiaomi-automl/FairDARTS, fairdarts/genotypes.py:
    PRIMITIVES): an edge is cut by its threshold rule instead. So on a space whose ops include
    `none`, `none` gets no alpha here: its column of the alpha matrix is held out (weight 0,
    no gradient from any loss; the zero-one loss leaves it out too), and decoding keeps an op
    only where its sigmoid reaches `threshold` (`>=`, 0.85: fairdarts/utils.py parse_genotype,
    `op_threshold=0.85`, `parse_method='threshold_sparse'`); of the kept ops the strongest
    wins; an edge with none kept is `none`."""

    name = "fairdarts"
    cuda_graphs = True

    def __init__(self, threshold: float = 0.85) -> None:
        super().__init__()
        self.threshold = threshold
        self.none_column: int | None = None

    @classmethod
    def from_config(cls, cfg: Any) -> Sigmoid:
        return cls(getattr(cfg, "op_threshold", 0.85))

    def bind(self, ops: Sequence[str]) -> None:
        self.none_column = list(ops).index("none") if "none" in ops else None

    def probabilities(self, alphas: torch.Tensor) -> torch.Tensor:
        weights = torch.sigmoid(alphas)
        k = self.none_column
        if k is None:
            return weights
        return torch.cat([weights[..., :k], torch.zeros_like(weights[..., k:k + 1]),
                          weights[..., k + 1:]], dim=-1)

    def sample(self, alphas: Sequence[torch.Tensor]) -> Weights:
        return tuple(self.probabilities(a) for a in alphas)


class Rule(Sampler):
    """A deterministic rule of a plugin: `fn(alphas)` -> mixing weights of the same shape, the
    same in training and evaluation. `fn`'s `set_epoch` and `scalars`, where it has them, are
    the rule's; `fn.cuda_graphs = True` says a captured step may replay it (its state lives in
    tensors, not in Python numbers)."""

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], name: str = ""):
        super().__init__()
        self.fn, self.name = fn, name
        self.cuda_graphs = bool(getattr(fn, "cuda_graphs", False))

    def probabilities(self, alphas: torch.Tensor) -> torch.Tensor:
        return self.fn(alphas)

    def sample(self, alphas: Sequence[torch.Tensor]) -> Weights:
        return tuple(self.fn(a) for a in alphas)

    def set_epoch(self, epoch: int, epochs: int) -> None:
        hook = getattr(self.fn, "set_epoch", None)
        if callable(hook):
            hook(epoch, epochs)

    def scalars(self) -> dict[str, float]:
        values = getattr(self.fn, "scalars", None)
        return values() if callable(values) else {}


# name -> a function of the run's settings giving the rule (None: DARTS's softmax path)
MIXINGS = Registry("mixing rule", "--mixing", [
    ("softmax", lambda cfg: None),
    ("gdas", GumbelHard.from_config),
    ("drnas", Dirichlet.from_config),
    ("fairdarts", Sigmoid.from_config),
])


def register_mixing(name: str, rule: Any, *, overwrite: bool = False) -> Any:
    """Adds a mixing rule, chosen with `--mixing name`: a function (or callable object) of an
    (edges, ops) alpha matrix giving mixing weights of the same shape, differentiable where
    the alphas learn through it; or a `Sampler` subclass (made per run with `from_config`) or
    object, for a rule that draws. The supernet multiplies each op's output by its weight and
    sums (eq. 2); the decoder ranks ops and edges by the rule's deterministic weights. Every
    fast path runs any rule: they take the weights, not the rule."""
    if isinstance(rule, type) and issubclass(rule, Sampler):
        make = rule.from_config
    elif isinstance(rule, Sampler):
        def make(cfg: Any) -> Sampler:
            return rule
    elif callable(rule):
        wrapped = Rule(rule, name)

        def make(cfg: Any) -> Sampler:
            return wrapped
    else:
        raise ValueError(f"mixing rule {name!r}: give a function of the alphas or a Sampler, "
                         f"not {type(rule).__name__}")
    MIXINGS.register(name, make, overwrite=overwrite)
    return rule


def build_mixing(cfg: Any) -> Sampler | None:
    """The mixing rule of `cfg.mixing` (a darts.search_config.SearchConfig, or any object with
    `mixing` and the rule's settings); None for softmax (DARTS's own code path)."""
    return MIXINGS.lookup(cfg.mixing)(cfg)


def build_sampler(name: str, *, tau_max: float = 10.0, tau_min: float = 0.1,
                  op_threshold: float = 0.85) -> Sampler | None:
    """The built-in rule `name` at these temperatures (GDAS's) and threshold (FairDARTS's);
    None for softmax."""
    from types import SimpleNamespace

    return build_mixing(SimpleNamespace(mixing=name, tau_max=tau_max, tau_min=tau_min,
                                        op_threshold=op_threshold))


def one_sample(model: nn.Module) -> contextlib.AbstractContextManager[Any]:
    """A context in which every forward of `model` draws the same sample (its sampler's
    `one_sample`); a model without a sampler: nothing."""
    sampler = getattr(model, "sampler", None)
    return sampler.one_sample() if sampler is not None else contextlib.nullcontext()
