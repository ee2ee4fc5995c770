"""train_search.py's settings, one dataclass per concern, and what only they decide.

`SearchConfig` is every flag of the gradient and the multi-trial search: `RunConfig` (what
every run shares), `DataConfig`, `GradientConfig` (DARTS's search), `PiecesConfig` (its
collapse pieces), `StrategyConfig` and `EvaluatorConfig` (a multi-trial search). The command
line and `config.json` stay flat (one flag per field); a module reads the concern it needs.
`resolved` fills the space's defaults, `data_args` gives the data flags a retraining needs.
Both runs import this module; neither imports the other's.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar

from darts.accel.cuda_graph import CUDA_GRAPH_FLAGS
from darts.accel.device_data import LOADERS
from darts.evaluators import EVALUATORS
from darts.executors import EXECUTORS
from darts.methods.mixing import MIXINGS
from darts.methods.perturb import PERTURBATIONS
from darts.methods.presets import PRESETS
from darts.methods.regularizers import REGULARIZERS
from darts.primitives import PRIMITIVES
from darts.registry import Choices
from darts.spaces import SPACES, darts_cells
from darts.strategies import STRATEGIES
from darts.strategies.controller import CONTROLLERS
from darts.train.engine import AMP_DTYPES

SEARCH_DATASETS = ("cifar10", "cifar100", "ImageNet16-120", "folder", "synthetic")


def _f(help: str, **meta: Any) -> dict[str, Any]:
    return {"help": help, **meta}


@dataclass
class RunConfig:
    """What every run shares: the space, the plugins, the seed, where it is written, the device and threads."""

    space: str = field(default="darts", metadata=_f(
        "the search space: darts (the paper's cell: 2 inputs, --nodes nodes, --ops), nb201 "
        "(NAS-Bench-201's cell: 4 nodes, 6 edges, 5 ops; its benchmark's network and recipe) "
        "or, for the multi-trial strategies only, cnn (a plain chain of conv layers)",
        choices=SPACES))
    plugins: str = field(default="", metadata=_f(
        "comma-separated Python files (or module names) imported first, before the flags are "
        "read: the spaces, strategies, evaluators, ops, mixing rules, regularizers, collapse "
        "pieces, presets and proxies they register are then choices of --space, --strategy, "
        "--evaluator, --ops, --mixing, --regularizer, --pieces, --method and --proxy; "
        "recorded, so --resume and the printed retrain command import them again"))
    # Run options.
    seed: int = field(default=0, metadata=_f("random seed"))
    save: str = field(default="runs", metadata=_f("parent folder of the run directory"))
    name: str | None = field(default=None, metadata=_f("run directory name (default: search-<dataset>-<time>)"))
    device: str = field(default="auto", metadata=_f("cpu, cuda, cuda:N or auto"))
    threads: int = field(default=0, metadata=_f(
        "CPU threads of the training process; 0: the CPUs it may use (its affinity mask and "
        "CPU quota), or OMP_NUM_THREADS where set"))
    adapt_threads: bool = field(default=False, metadata=_f(
        "on the CPU, follow the machine's load: every 10 s the threads become the CPUs other "
        "processes leave free (at least 1, at most --threads). Robust on a shared machine, but "
        "the thread count changes how sums are split, so the run is not bit-reproducible"))
    tune_malloc: bool = field(default=True, metadata=_f(
        "on the CPU with glibc: keep freed tensor memory in the process (one malloc arena, no trimming) instead of faulting fresh pages in for every tensor; --no-tune_malloc for glibc's defaults"))
    progress: bool = field(default=True, metadata=_f("progress bar per epoch (when stdout is a terminal)"))
    tensorboard: bool = field(default=True, metadata=_f("TensorBoard event files in the run directory"))


@dataclass
class DataConfig:
    """The data: the set, its split between weights and alphas, augmentation, loading."""

    dataset: str = field(default="cifar10", metadata=_f("dataset", choices=SEARCH_DATASETS))
    data: str = field(default="data", metadata=_f(
        "dataset root: CIFAR is read from (or downloaded into) it; folder: a folder with train/ and test/ (or val/)"))
    train_portion: float = field(default=0.5, metadata=_f(
        "fraction of the training set that trains the weights; the rest trains the alphas"))
    # The search recipe (Section 3.1.1, Appendix A.1.1).
    batch_size: int = field(default=64, metadata=_f("batch size of both the weight and the alpha steps"))
    cutout: bool = field(default=False, metadata=_f("cutout augmentation during the search (off)"))
    cutout_length: int = field(default=16, metadata=_f("cutout square side"))
    # Data options.
    image_size: int | None = field(default=None, metadata=_f("input resolution for folder/synthetic data (default 32)"))
    num_classes: int | None = field(default=None, metadata=_f("classes of the synthetic dataset (10)"))
    synthetic_size: int = field(default=5000, metadata=_f("training images of the synthetic dataset"))
    workers: int = field(default=2, metadata=_f("data-loading worker processes"))
    # Speed and memory (none changes the search's mathematics except --amp and
    # --partial_channels; see docs/options.md and docs/performance.md).
    loader: str = field(default="auto", metadata=_f(
        "auto: the device-resident pipeline on a GPU for in-memory data sets (CIFAR, synthetic), "
        "else the DataLoader; device; torch (DataLoader)", choices=LOADERS))


@dataclass
class GradientConfig:
    """DARTS's gradient search: the weights' SGD, the alphas' Adam and order, the supernet, its speed."""

    epochs: int = field(default=50, metadata=_f("search epochs"))
    learning_rate: float = field(default=0.025, metadata=_f("initial weight learning rate"))
    learning_rate_min: float = field(default=0.001, metadata=_f("final weight learning rate (cosine)"))
    momentum: float = field(default=0.9, metadata=_f("SGD momentum of the weights"))
    weight_decay: float | None = field(default=None, metadata=_f(
        "weight decay of the weights (darts 3e-4; nb201 5e-4, its benchmark's DARTS runs)"))
    nesterov: bool | None = field(default=None, metadata=_f(
        "Nesterov momentum of the weights (darts off; nb201 on, as its benchmark's DARTS runs)"))
    grad_clip: float = field(default=5.0, metadata=_f("gradient norm clip of the weights, 0 = off"))
    init_channels: int = field(default=16, metadata=_f("channels of the first cell"))
    layers: int | None = field(default=None, metadata=_f(
        "darts: cells of the supernet (8); nb201: cells per stage (5, three stages)"))
    nodes: int = field(default=4, metadata=_f("intermediate nodes per cell"))
    subspace: int | None = field(default=None, metadata=_f(
        "the sub-space a space's gradient search runs in, where it has several: NAS-Bench-101's "
        "are NAS-Bench-1Shot1's search spaces 1, 2, 3 (default 3)"))
    ops: str = field(default=",".join(PRIMITIVES), metadata=_f(
        "comma-separated ops of every edge (the DARTS 8 by default); an op of your own: "
        "register_op in a --plugins file"))
    arch_learning_rate: float = field(default=3e-4, metadata=_f("Adam learning rate of the alphas"))
    arch_weight_decay: float = field(default=1e-3, metadata=_f("Adam weight decay of the alphas"))
    order: int = field(default=2, metadata=_f(
        "1: first-order alpha gradient (xi = 0); 2: second order through a virtual weight step (eq. 7)",
        choices=(1, 2)))
    hessian: str = field(default="fd", metadata=_f(
        "second-order Hessian-vector product: fd (central difference, eq. 8) or exact (double backprop)",
        choices=("fd", "exact")))
    fd_epsilon: float = field(default=0.01, metadata=_f(
        "norm of the weight perturbation of the finite difference (eq. 8: eps = 0.01 / ||v||)"))
    amp: str = field(default="off", metadata=_f(
        "mixed precision of the forward passes: off (float32, the paper), bf16, fp16 (with loss "
        "scaling); the Hessian-vector product stays float32", choices=tuple(AMP_DTYPES)))
    channels_last: bool | None = field(default=None, metadata=_f(
        "channels-last (NHWC) memory format; default: on on the CPU (where the C kernels need it), off elsewhere; --no-channels_last to turn it off"))
    compile: bool = field(default=False, metadata=_f("torch.compile the supernet (eager where it cannot)"))
    partial_channels: int = field(default=1, metadata=_f(
        "PC-DARTS: 1/K of the channels pass through each mixed op, with edge normalization; 1 = DARTS"))
    checkpoint_cells: bool = field(default=False, metadata=_f(
        "recompute each cell in the backward pass instead of storing its activations"))
    cuda_graphs: str = field(default="auto", metadata=_f(
        "capture each whole search step (alpha step and weight step) in a CUDA graph and replay "
        "it: the same kernels, one launch; auto: on a GPU, one process, amp off or bf16, no "
        "--compile", choices=CUDA_GRAPH_FLAGS))
    batch_edges: str = field(default="auto", metadata=_f(
        "compute the edges that leave one state together (the same function in fewer, larger "
        "kernels): on, off (edge by edge), auto (on on a GPU, where it is faster)",
        choices=("auto", "on", "off")))


@dataclass
class PiecesConfig:
    """The collapse pieces of the gradient search (darts.methods) and the presets of --method."""

    # docs/collapse-pieces.md: every piece, its source, what it refuses
    method: str = field(default="", metadata=_f(
        "a published method's flag values (an explicit flag overrides them; the log lists "
        "them with their sources): darts, pdarts, pc-darts, sdarts-rs, sdarts-adv, "
        "darts-minus, gdas, drnas, fairdarts, beta-darts, or one registered with register_preset "
        "in a --plugins file", choices=Choices(("",), PRESETS)))
    # How mixing weights are made, what the alpha loss adds
    mixing: str = field(default="softmax", metadata=_f(
        "the mixing rule, how an edge's alphas become its ops' weights: softmax (DARTS, eq. "
        "2), gdas (a hard Gumbel-softmax sample, one op per edge), drnas (a Dirichlet sample), "
        "fairdarts (sigmoid), or a rule registered with register_mixing in a --plugins file",
        choices=MIXINGS, aliases=("--sampler",)))
    tau_max: float = field(default=10.0, metadata=_f(
        "gdas: Gumbel-softmax temperature at the first epoch, falling linearly to --tau_min"))
    tau_min: float = field(default=0.1, metadata=_f("gdas: temperature at the last epoch"))
    op_threshold: float = field(default=0.85, metadata=_f(
        "fairdarts: decoding keeps an op whose sigmoid reaches this; an edge with none kept is "
        "`none` (xiaomi-automl/FairDARTS utils.py: op_threshold 0.85)"))
    regularizer: str = field(default="none", metadata=_f(
        "a term added to the loss the alphas minimise: none, beta (beta-DARTS, weight rising "
        "linearly), zero-one (FairDARTS), drnas-kl, drnas-l2 (DrNAS), or one registered with "
        "register_regularizer in a --plugins file", choices=REGULARIZERS,
        aliases=("--arch_loss",)))
    reg_weight: float | None = field(default=None, metadata=_f(
        "the regularizer's weight (beta 50, reached linearly; zero-one 10; drnas-kl and "
        "drnas-l2 1e-3)"))
    perturb: str = field(default="none", metadata=_f(
        "SDARTS: what perturbs the mixing weights of the weight step: none, random (SDARTS-RS, "
        "uniform in [-eps, eps]) or adversarial (SDARTS-ADV, 7 steps of L-inf PGD); the "
        "alphas are not changed", choices=PERTURBATIONS))
    perturb_epsilon: float = field(default=0.3, metadata=_f(
        "SDARTS: the largest eps, reached at the end of the linear ramp from 0.03 (their 0.3)"))
    aux_skip: float = field(default=0.0, metadata=_f(
        "DARTS-: beta0 of the auxiliary skip beta * x on every stride-1 edge, decaying "
        "linearly to 0 over the search (theirs 1.0); 0 = off"))
    skip_dropout: float = field(default=0.0, metadata=_f(
        "P-DARTS: initial dropout rate on the skip-connections' outputs, decayed per epoch "
        "as theirs (the pdarts preset: 0.7); 0 = off"))
    warmup_epochs: int = field(default=0, metadata=_f(
        "the alphas are not updated in the first N epochs (PC-DARTS 15, P-DARTS 10)"))
    max_skip: int | None = field(default=None, metadata=_f(
        "P-DARTS: at most K skip-connections in the decoded normal cell, the weakest skip "
        "edges taking their next-best op (theirs 2); default: no cap"))
    pieces: tuple[str, ...] = field(default=(), metadata=_f(
        "more collapse pieces, each NAME or NAME:KEY=VALUE,... (repeat the flag for several): "
        "a piece registered with register_piece in a --plugins file, or a published one by "
        "its registry name", action="append", metavar="PIECE", aliases=("--piece",)))
    select: str = field(default="argmax", metadata=_f(
        "how the cell is chosen at the end: argmax (DARTS's decoding) or pt (DARTS-PT's "
        "perturbation-based projection, edge by edge on the validation accuracy)",
        choices=("argmax", "pt")))
    pt_interval: int = field(default=5, metadata=_f(
        "DARTS-PT: epochs of tuning between two projections (their scripts' 5); 0 = none"))
    early_stop_skips: int | None = field(default=None, metadata=_f(
        "DARTS+: stop once the decoded normal cell has K or more skip-connections (theirs 2 "
        "on CIFAR); default: never"))
    early_stop_stable: int | None = field(default=None, metadata=_f(
        "DARTS+'s second criterion: stop once the ranking of the learnable ops' alphas on "
        "every edge has been the same for N epochs (theirs 10); default: never"))


@dataclass
class StrategyConfig:
    """A multi-trial search: the strategy, its budget, each strategy's options."""

    # Multi-trial search (docs/strategies.md): another strategy than DARTS's gradients.
    strategy: str = field(default="darts", metadata=_f(
        "darts (the gradient-based search) or a multi-trial strategy: random, evolution "
        "(regularized), ga (genetic algorithm), anneal (simulated annealing), reinforce "
        "(policy gradient), enas (ENAS: an LSTM controller and the weights it shares, in "
        "turn), bo (Bayesian optimisation, Optuna), bananas (a predictor-guided search: "
        "BANANAS), morphism (NASH's hill climbing by function-preserving edits, children "
        "inheriting their parent's weights)",
        choices=Choices(("darts",), STRATEGIES)))
    budget: int = field(default=100, metadata=_f("multi-trial: the number of evaluations"))
    budget_seconds: float = field(default=0.0, metadata=_f(
        "multi-trial: also stop once the evaluations' cost adds up to this many seconds (the "
        "benchmark evaluator: the table's training times, simulated as NAS-Bench-201's paper "
        "does); 0 = off"))
    population: int | None = field(default=None, metadata=_f(
        "evolution: population (10, NAS-Bench-201's REA); ga: population (20)"))
    sample_size: int = field(default=3, metadata=_f(
        "evolution: candidates sampled per tournament (3); ga: tournament size"))
    crossover_rate: float = field(default=0.7, metadata=_f("ga: probability of crossover"))
    mutation_rate: float = field(default=0.1, metadata=_f("ga: per-decision mutation probability"))
    selection: str = field(default="tournament", metadata=_f(
        "ga: parent selection", choices=("tournament", "roulette")))
    elites: int = field(default=1, metadata=_f("ga: best members kept unchanged per generation"))
    temperature: float = field(default=1.0, metadata=_f("anneal: initial temperature (score units)"))
    cooling: float = field(default=0.99, metadata=_f("anneal: temperature factor per evaluation"))
    controller: str | None = field(default=None, metadata=_f(
        "reinforce, enas: the policy, lstm (ENAS's LSTM controller; enas's default) or "
        "factorised (one categorical per decision; reinforce's default)",
        choices=CONTROLLERS))
    controller_lr: float | None = field(default=None, metadata=_f(
        "reinforce, enas: Adam learning rate of the policy (reinforce 0.001; enas 3.5e-4)"))
    baseline_momentum: float | None = field(default=None, metadata=_f(
        "reinforce, enas: moving-average baseline momentum (reinforce 0.9; enas 0.99)"))
    entropy_weight: float | None = field(default=None, metadata=_f(
        "reinforce, enas: weight of the entropy bonus (reinforce 0; enas 1e-4, in the reward)"))
    controller_aggregate: int | None = field(default=None, metadata=_f(
        "reinforce, enas: samples whose gradients one Adam step of the policy averages "
        "(reinforce 1; enas 10)"))
    controller_hidden: int = field(default=100, metadata=_f("lstm controller: hidden units (ENAS: 100)"))
    controller_layers: int = field(default=1, metadata=_f("lstm controller: stacked LSTM layers"))
    controller_temperature: float = field(default=5.0, metadata=_f(
        "lstm controller: logits = tanh_constant * tanh(z / temperature) (ENAS: 5)"))
    controller_tanh: float = field(default=2.5, metadata=_f(
        "lstm controller: the tanh constant of the logits (ENAS: 2.5)"))
    controller_steps: int = field(default=30, metadata=_f(
        "enas: controller steps per epoch, each of --controller_aggregate sampled children "
        "(ENAS's CIFAR-10 search: 30 steps of 10)"))
    derive_samples: int = field(default=100, metadata=_f(
        "enas: children sampled after each epoch, each scored on one validation batch; the "
        "best is the epoch's derived cell (NAS-Bench-201's ENAS: 100)"))
    morph_children: int = field(default=8, metadata=_f(
        "morphism: children per hill-climbing step (NASH: 8)"))
    morph_edits: int = field(default=5, metadata=_f(
        "morphism: at most this many edits per child, 1 to it drawn uniformly (NASH: 5)"))
    morph_start: str = field(default="", metadata=_f(
        "morphism: the start network's spec (default conv3x3-16-max|conv3x3-32-max), trained "
        "from scratch once"))
    bo_sampler: str = field(default="tpe", metadata=_f(
        "bo: Optuna's sampler, tpe (multivariate) or gp", choices=("tpe", "gp")))
    bo_startup: int = field(default=10, metadata=_f(
        "bo, bananas: random candidates before the model proposes"))
    predictor: str = field(default="mlp", metadata=_f(
        "bananas: the predictor, mlp (BANANAS's ensemble of 5 MLPs) or gbt (5 scikit-learn "
        "gradient-boosted tree models)", choices=("mlp", "gbt")))
    acquisition: str = field(default="its", metadata=_f(
        "bananas: independent Thompson sampling (its) or mean + 2 std (ucb)",
        choices=("its", "ucb")))
    predictor_proxies: str = field(default="", metadata=_f(
        "bananas: zero-cost proxies (e.g. synflow,nwot) of each candidate as extra predictor "
        "features; empty: the encoding alone"))
    warm_start: int = field(default=0, metadata=_f(
        "evolution, bo: score this many random candidates by --proxy first, and start from the "
        "best of them (the initial population; the first trials) instead of random ones "
        "(Abdelfattah et al., ICLR 2021); 0 = off"))


@dataclass
class EvaluatorConfig:
    """How a multi-trial search scores its candidates: the evaluator and its options."""

    evaluator: str = field(default="", metadata=_f(
        "how a multi-trial strategy's candidates are scored: benchmark (a NAS-Bench-201 "
        "--benchmark table, free), oneshot (a weight-sharing supernet trained once by uniform "
        "single paths), train (each trained from scratch for --eval_epochs), proxy (zero-cost "
        "proxies of the untrained network, --proxy); default: benchmark with --benchmark, else "
        "train", choices=Choices(("",), EVALUATORS)))
    benchmark: str = field(default="", metadata=_f(
        "nb201: a NAS-Bench-201 CSV table (python -m darts.benchmarks.nb201 convert); the decoded cell "
        "is looked up after every epoch (log, TensorBoard benchmark/*, metrics.json)"))
    metric: str = field(default="cifar10_valid", metadata=_f(
        "benchmark evaluator: the table column a strategy maximises"))
    report: str = field(default="cifar10_test", metadata=_f(
        "benchmark evaluator: the table column reported for each candidate"))
    eval_epochs: int = field(default=12, metadata=_f(
        "train evaluator: epochs each candidate trains from scratch (NATS-Bench's 12-epoch "
        "proxy)"))
    oneshot_epochs: int | None = field(default=None, metadata=_f(
        "oneshot evaluator: epochs of the supernet's uniform single-path training (nb201 250, "
        "NAS-Bench-201's RSPS; darts 100, Li & Talwalkar's code)"))
    bn_batches: int = field(default=100, metadata=_f(
        "oneshot evaluator: training batches that recompute a candidate's BatchNorm statistics"))
    valid_batches: int = field(default=10, metadata=_f(
        "oneshot evaluator: held-out batches that score a candidate"))
    proxy: str = field(default="nwot", metadata=_f(
        "proxy evaluator and --warm_start: a zero-cost proxy (synflow, jacov, nwot, snip, "
        "grasp, grad_norm, fisher, l2_norm, plain, epe_nas, zen, params, flops), or a weighted "
        "vote of several, e.g. synflow,jacov,nwot or synflow:2,nwot:1 (docs/proxies.md)"))
    proxy_reference: int = field(default=100, metadata=_f(
        "proxy evaluator: the reference candidates a vote of several proxies ranks against"))


@dataclass
class ExecutorConfig:
    """Where a multi-trial search's evaluations run, and how many at once."""

    executor: str = field(default="local", metadata=_f(
        "where evaluations run: local (this machine: here, or --max_pending processes) or ray "
        "(Ray tasks, on this machine or the cluster at --ray_address; docs/distributed.md)",
        choices=EXECUTORS))
    max_pending: int | None = field(default=None, metadata=_f(
        "evaluations running at once, the strategy asked for a new candidate as soon as one "
        "finishes (asynchronous search); default: batches of --workers as before with "
        "--executor local, the cluster's CPUs / --eval_cpus with ray"))
    ray_address: str = field(default="", metadata=_f(
        "ray: the cluster to join (auto, ray://host:port); empty: a Ray started here"))
    eval_cpus: float = field(default=1.0, metadata=_f("ray: CPUs per evaluation (fractions allowed)"))
    eval_gpus: float = field(default=0.0, metadata=_f("ray: GPUs per evaluation (fractions allowed)"))
    max_retries: int = field(default=3, metadata=_f(
        "ray: times an evaluation runs again when its worker dies or it raises"))


@dataclass
class SearchConfig(ExecutorConfig, EvaluatorConfig, StrategyConfig, PiecesConfig, GradientConfig, DataConfig,
                   RunConfig):
    """Every flag of train_search.py, one concern per base class (the command line and
    config.json stay flat); a module takes the concern it reads."""

    # What `--resume RUN_DIR` may change: a run that diverged goes on from its last good
    # checkpoint with a smaller step (darts.train.checkpoint.change_base_lr).
    RESUMABLE: ClassVar[tuple[str, ...]] = ("learning_rate", "arch_learning_rate", "grad_clip")
    # Keys of older config.json files, each merged into the field that holds its notion now:
    # old key -> (field, the value that meant "not set").
    MERGED: ClassVar[dict[str, tuple[str, Any]]] = {"sampler": ("mixing", "softmax"),
                                                    "arch_loss": ("regularizer", "none")}

    def __post_init__(self) -> None:
        self.pieces = tuple(self.pieces)  # a list from the command line or config.json


def resolved(cfg: SearchConfig) -> SearchConfig:
    """`cfg` with the fields left at None set to its space's defaults."""
    search = getattr(SPACES.get(cfg.space), "gradient", None)
    values = getattr(search, "defaults", darts_cells.gradient.defaults)
    return dataclasses.replace(cfg, **{k: v for k, v in values.items()
                                       if getattr(cfg, k) is None})


def data_args(cfg: SearchConfig) -> list[str]:
    """The data flags (beside --dataset) that make train_final.py read the search's data."""
    args = []
    if cfg.dataset != "synthetic" and cfg.data != "data":
        args += ["--data", cfg.data]
    for flag in ("image_size", "num_classes"):
        if getattr(cfg, flag) is not None:
            args += [f"--{flag}", str(getattr(cfg, flag))]
    if cfg.dataset == "synthetic" and cfg.synthetic_size != 5000:
        args += ["--synthetic_size", str(cfg.synthetic_size)]
    return args


