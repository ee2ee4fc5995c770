"""The DARTS search run (Liu et al. 2019, Algorithm 1 and Section 3.1).

The training set is split in two halves: one trains the network weights w, the other the
architecture alphas. Each step the architect updates the alphas on a batch of the alpha
half (first or second order), then the weights take an SGD step on a batch of the weight
half. Each epoch the alphas are decoded into a genotype, logged (scalars, alpha heatmaps,
cell diagrams) and written to `genotypes/epoch_NNN.json`, and a checkpoint is written. At the
end the run directory holds `genotype.json`, `normal.png` and `reduce.png`.

Defaults are the paper's (Section 3.1.1, Appendix A.1.1): 8 cells of 16 initial channels,
batch 64, 50 epochs, SGD lr 0.025 cosine-annealed to 0.001, momentum 0.9, weight decay 3e-4,
gradient norm clipped at 5; Adam on the alphas with lr 3e-4, betas (0.5, 0.999), weight
decay 1e-3; second order with the finite-difference Hessian-vector product (eq. 8).
"""

from __future__ import annotations

import dataclasses
import functools
import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from torch.utils.data import Subset

from darts import plugins
from darts.accel import accelerate, edges_batched
from darts.accel.cuda_graph import cuda_graphs_enabled
from darts.accel.device_data import (
    DeviceEvalLoader,
    DeviceImages,
    DeviceSplitLoader,
    use_device_loader,
)
from darts.architect import Architect
from darts.benchmarks.nb201 import BenchmarkTable, score_line
from darts.errors import UserError
from darts.methods import pieces as collapse
from darts.methods import presets, schedule
from darts.methods.mixing import build_mixing
from darts.methods.regularizers import build_regularizer, check_flags, combine
from darts.primitives import OPS
from darts.search_config import (  # the settings (re-exported: darts.search.SearchConfig)
    SEARCH_DATASETS,
    SearchConfig,
    data_args,
    resolved,
)
from darts.spaces import SPACES, darts_cells, get_space
from darts.spaces.darts_cells import op_list
from darts.train import cli, distributed
from darts.train.checkpoint import (
    change_base_lr,
    diverged,
    epoch_history,
    load_checkpoint,
    restore,
    resume_changes,
    rng_state,
    run_dir_of,
    save_checkpoint,
    seed_everything,
    set_rng_state,
)
from darts.train.config import config_from_dict, to_dict
from darts.train.data import SplitLoader, build_datasets, make_loader, search_split
from darts.train.distributed import Dist
from darts.train.engine import (
    AMP_DTYPES,
    MetricSum,
    Precision,
    SideStep,
    channels_last_on,
    compile_model,
    configure_cpu_threads,
    evaluate,
    pick_device,
    split_output,
    train_one_epoch,
    tune_malloc,
)
from darts.train.files import save_json
from darts.train.rundir import RunClaim, claim_run_dir
from darts.train.tb import EpochTimer, RunLogger, alpha_heatmap, draw_cells, format_duration

CHECKPOINT_KEYS = ("epoch", "config", "model", "optimizer", "arch_optimizer", "scheduler", "split",
                   "alpha_stream", "history", "rng")


def validate(cfg: SearchConfig) -> None:
    if cfg.strategy != "darts":
        raise UserError(f"--strategy {cfg.strategy}: this is a DARTS search's checkpoint; a "
                        f"multi-trial run resumes from its history.jsonl")
    space = get_space(cfg.space)
    if getattr(space, "gradient", None) is None:
        raise UserError(f"--space {cfg.space}: the {cfg.space} space has no supernet for the "
                        f"gradient search; it is searched by the multi-trial strategies: add "
                        f"e.g. --strategy evolution")
    if cfg.dataset not in SEARCH_DATASETS:
        raise UserError(f"--dataset {cfg.dataset}: the search runs on {', '.join(SEARCH_DATASETS)} "
                        f"(the paper searches on CIFAR-10 and transfers the cell to ImageNet)")
    checks = [
        ("epochs", cfg.epochs >= 1, "at least 1"),
        ("batch_size", cfg.batch_size >= 1, "at least 1"),
        ("layers", cfg.layers >= getattr(space, "MIN_LAYERS", 1),
         f"at least {getattr(space, 'MIN_LAYERS', 1)} {getattr(space, 'LAYERS_NOUN', 'layers')}"),
        ("nodes", cfg.nodes >= 2, "at least 2"),
        ("init_channels", cfg.init_channels >= 2 and cfg.init_channels % 2 == 0, "an even number >= 2"),
        ("learning_rate", cfg.learning_rate > 0, "positive"),
        ("learning_rate_min", 0 <= cfg.learning_rate_min <= cfg.learning_rate, "in [0, --learning_rate]"),
        ("momentum", 0 <= cfg.momentum < 1, "in [0, 1)"),
        ("weight_decay", cfg.weight_decay >= 0, "0 or more"),
        ("grad_clip", cfg.grad_clip >= 0, "0 (off) or more"),
        ("arch_learning_rate", cfg.arch_learning_rate > 0, "positive"),
        ("arch_weight_decay", cfg.arch_weight_decay >= 0, "0 or more"),
        ("cutout_length", cfg.cutout_length >= 0, "0 or more"),
        ("train_portion", 0 < cfg.train_portion < 1, "strictly between 0 and 1"),
        ("fd_epsilon", cfg.fd_epsilon > 0, "positive"),
        ("workers", cfg.workers >= 0, "0 or more"),
        ("threads", cfg.threads >= 0, "0 (automatic) or more"),
        ("synthetic_size", cfg.synthetic_size >= 2, "at least 2"),
        ("partial_channels", cfg.partial_channels >= 1 and cfg.init_channels % cfg.partial_channels == 0,
         f"at least 1 and divide --init_channels {cfg.init_channels}"),
    ]
    for flag, ok, need in checks:
        if not ok:
            raise UserError(f"--{flag} {getattr(cfg, flag)}: must be {need}")
    if cfg.amp not in AMP_DTYPES:
        raise UserError(f"--amp {cfg.amp}: choose one of {', '.join(AMP_DTYPES)}")
    ops = op_list(cfg.ops)
    unknown = [op for op in ops if op not in OPS]
    if unknown:
        raise UserError(f"--ops: unknown op {unknown[0]!r}; known ops: {', '.join(sorted(OPS))} "
                        f"(an op of your own: register_op in a file given to --plugins)")
    if len(set(ops)) != len(ops):
        raise UserError(f"--ops {cfg.ops}: an op is listed twice")
    if not [op for op in ops if op != "none"]:
        raise UserError(f"--ops {cfg.ops}: give at least one op other than none")
    if cfg.nesterov and cfg.momentum == 0:
        raise UserError("--nesterov needs a momentum: give --momentum > 0 or --no-nesterov")
    if cfg.subspace is not None and not getattr(space.gradient, "subspaces", ()):
        raise UserError(f"--subspace {cfg.subspace}: the {cfg.space} space has no sub-spaces; "
                        f"leave --subspace out")
    space.gradient.check(cfg)
    if cfg.benchmark and not getattr(space, "SCORED_BY_TABLE", False):
        scored = " or ".join(f"--space {n}" for n, s in SPACES.items()
                             if getattr(s, "SCORED_BY_TABLE", False))
        raise UserError(f"--benchmark: no benchmark table scores --space {cfg.space} "
                        f"searches; add {scored}")
    check_flags(cfg)  # --mixing, --regularizer (darts.methods)
    collapse.validate(cfg)


def arch_statistics(model: nn.Module, genotype: Any, cells: Any = None) -> dict[str, float]:
    """What the search's collapse shows in: skip-connections in the decoded normal cell
    (`skip_connect_normal`; NAS-Bench-201's one cell: `skip_connect`) and the mean entropy of
    the mixing weights' rows (log(ops) at the start, 0 for one-hot choices)."""
    cells = cells or darts_cells.gradient
    stats: dict[str, float] = {f"arch/{cells.skips}": cells.skip_connects(genotype)}
    with torch.no_grad():
        for kind, w in zip(cells.kinds, model.mixing_weights(), strict=False):
            w = w / w.sum(-1, keepdim=True)  # a rule other than softmax: its rows normalised
            entropy = -(w * w.clamp_min(1e-30).log()).sum(-1).mean()
            stats[f"arch/entropy_{kind}"] = entropy.item()
    stats["arch/entropy"] = sum(stats[f"arch/entropy_{k}"] for k in cells.kinds) / len(cells.kinds)
    return stats


def paper_scale(cfg: SearchConfig) -> bool:
    """Whether the search is at least the paper's (a real data set, 8 cells of 16 channels,
    50 epochs; NB201: 5 cells per stage): its cell is then worth the paper's retraining."""
    cfg = resolved(cfg)
    return (cfg.dataset != "synthetic" and cfg.layers >= cell_kind(cfg).paper_layers
            and cfg.init_channels >= 16 and cfg.epochs >= 50)


def retrain_command(run_dir: Path, cfg: SearchConfig) -> tuple[str, str]:
    """The train_final.py command that retrains this search's cell on the same data, and
    what it runs. After a search of the paper's size, the paper's recipe (DARTS: 600 epochs,
    20 cells of 36 channels; NB201: its benchmark's 200 epochs); after a smaller one, a
    network of the search's size for as many epochs as the search had, which finishes in
    minutes where the search did."""
    cfg = resolved(cfg)
    cells = cell_kind(cfg)
    args = [*cli.command("python train_final.py", "darts-final"), *cells.space_flags, "--genotype",
            str(run_dir / cells.result_file), "--dataset", cfg.dataset, *data_args(cfg)]
    if cfg.plugins:
        args += ["--plugins", cfg.plugins]
    if paper_scale(cfg):
        return shlex.join(args), (f"this search has the paper's size: the command below "
                                  f"retrains its cell with {cells.recipe} ({cells.recipe_size}; "
                                  f"{cells.recipe_cost})")
    args += ["--layers", str(cfg.layers), "--init_channels", str(cfg.init_channels),
             "--epochs", str(cfg.epochs), "--batch_size", str(cfg.batch_size)]
    # the paper's 16-pixel cutout would blank images this small (NB201's recipe has none)
    small_images = cells.cutout and cfg.image_size is not None and cfg.image_size < 32
    if small_images:
        args += ["--cutout_length", str(cfg.image_size // 2)]
    return shlex.join(args), (
        f"this search is smaller than the paper's: the command below trains a network of its "
        f"size ({cells.describe(cfg)} of {cfg.init_channels} channels, batch {cfg.batch_size}"
        f"{', cutout half the image' if small_images else ''}) for {cfg.epochs} epochs; "
        f"for {cells.recipe} ({cells.recipe_size}) leave out --layers, "
        f"--init_channels, --epochs, --batch_size{' and --cutout_length' if small_images else ''}")


def run(cfg: SearchConfig, *, resume: str | None = None,
        on_epoch_end: Callable[[int, dict[str, Any]], None] | None = None,
        changes: dict[str, Any] | None = None) -> dict[str, Any]:
    """Runs the search; returns the summary written to metrics.json.

    `resume` is a run directory (or its checkpoint.pt): the search continues there with the
    config it was started with, but for `changes` (flags of `SearchConfig.RESUMABLE`).
    `on_epoch_end(epoch, metrics)` runs after each checkpoint.
    """
    from darts import enas, multitrial

    if enas.is_enas_run(resume) if resume is not None else enas.shares_weights(cfg.strategy):
        if changes:
            raise UserError(f"--resume {resume}: an ENAS run continues with its saved config; "
                            f"leave out {', '.join('--' + k for k in changes)}")
        return enas.run(cfg, resume=resume)
    if (multitrial.is_multitrial_run(resume) if resume is not None
            else cfg.strategy != "darts"):
        if changes:
            raise UserError(f"--resume {resume}: a multi-trial run continues with its saved "
                            f"config; leave out {', '.join('--' + k for k in changes)}")
        return multitrial.run(cfg, resume=resume)
    ckpt, changed = None, {}
    if resume is not None:
        ckpt = load_checkpoint(resume, "search", CHECKPOINT_KEYS)
        plugins.load_saved(ckpt["config"], str(resume))
        cfg = config_from_dict(SearchConfig, ckpt["config"], where=str(resume))
        changed = resume_changes(cfg, changes, SearchConfig.RESUMABLE)
        cfg = dataclasses.replace(cfg, **changed)
        run_dir = run_dir_of(resume)
    # The plugins first: --ops, --mixing, --regularizer, --pieces may name what they register.
    cfg = resolved(dataclasses.replace(cfg, plugins=plugins.absolute(cfg.plugins)))
    plugins.load(cfg.plugins)
    validate(cfg)
    # Read before the run directory is made: a table that cannot be read leaves nothing.
    table = BenchmarkTable.load(cfg.benchmark, get_space(cfg.space)) if cfg.benchmark else None
    d, device = distributed.setup(pick_device(cfg.device))
    try:
        # The run's memory format, recorded resolved (config.json, the checkpoint).
        cfg = dataclasses.replace(cfg, channels_last=channels_last_on(cfg.channels_last, device))
        if cfg.tune_malloc:
            tune_malloc(device)
        if cfg.order == 2 and cfg.hessian == "exact" and d.enabled:
            raise UserError("--hessian exact runs on one process; use --hessian fd with torchrun")
        # Checked before the run directory is made: a flag that cannot work leaves nothing.
        graphs = cuda_graphs_enabled(cfg.cuda_graphs, device, distributed=d.enabled,
                                     amp=cfg.amp, compile=cfg.compile)
        rule = build_mixing(cfg)  # a rule that draws per step (or keeps Python-side state)
        graphs = graphs and (rule is None or rule.cuda_graphs)
        seed_everything(cfg.seed)
        train_set, _, info = build_datasets(
            cfg.dataset, cfg.data, cutout_length=cfg.cutout_length if cfg.cutout else 0,
            image_size=cfg.image_size, num_classes=cfg.num_classes,
            synthetic_size=cfg.synthetic_size, seed=cfg.seed)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        claim = claim_run_dir(d, None if ckpt is None else run_dir, cfg.save,
                              cfg.name or f"search-{cfg.dataset}-{stamp}", numbered=not cfg.name)
        run_dir = claim.path
        with claim.held():
            logger = RunLogger(run_dir, enabled=d.is_main, tensorboard=cfg.tensorboard,
                               name="search")
            try:
                return _search(cfg, info, train_set, device, run_dir, logger, ckpt, on_epoch_end,
                               d, graphs, table, claim, changed)
            finally:
                logger.close()
    finally:
        distributed.teardown(d)


def batch_edges(flag: str, device: torch.device) -> bool:
    """Whether `--batch_edges flag` batches the edges on `device` (auto: on a GPU)."""
    return flag == "on" or (flag == "auto" and device.type == "cuda")


def build_supernet(cfg: SearchConfig, num_classes: int, device: torch.device,
                   pieces: collapse.Pieces | None = None) -> nn.Module:
    """The supernet of `cfg` on `device`, in its memory format (not yet compiled), with what
    the collapse pieces (`cfg`'s unless given) build into it before acceleration."""
    cfg = resolved(cfg)
    model = cell_kind(cfg).supernet(cfg, num_classes, build_mixing(cfg))
    model = (pieces or collapse.Pieces(cfg)).prepare(model)
    model = accelerate(model, batch_edges=batch_edges(cfg.batch_edges, device)).to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def build_architect(cfg: SearchConfig, model: nn.Module, pieces: collapse.Pieces,
                    optimizer: torch.optim.Optimizer, criterion: nn.Module, precision: Precision,
                    d: Dist, graphs: bool) -> tuple[Architect, list]:
    """The alpha step's `Architect`, minimising L_val plus `--regularizer`'s and the pieces'
    terms, and what hears the epoch before it runs (the mixing rule: GDAS's temperature, a
    plugin's; the alpha losses)."""
    regularizer = build_regularizer(cfg.regularizer, cfg.reg_weight)
    # DrNAS's terms take the place of Adam's weight decay on the alphas (their architect).
    replaces = getattr(regularizer, "replaces_arch_weight_decay", False)
    architect = Architect(model, criterion, optimizer, order=cfg.order, hessian=cfg.hessian,
                          lr=cfg.arch_learning_rate,
                          weight_decay=0.0 if replaces else cfg.arch_weight_decay,
                          fd_epsilon=cfg.fd_epsilon, precision=precision, dist=d,
                          capturable=graphs,
                          arch_loss=combine(regularizer, pieces.arch_loss()))
    return architect, [getattr(model, "sampler", None), architect.arch_loss]


@dataclass
class Iteration:
    """What one search iteration works on: the supernet, its two optimizers (the weights' SGD,
    the architect's Adam on the alphas), the collapse pieces, the loss and its precision, the
    weights' learning rate of this epoch (xi of the second-order step), the gradient clip and
    the gradient average over ranks (torchrun)."""

    model: nn.Module
    architect: Architect
    pieces: Any  # darts.methods.pieces.Pieces
    optimizer: torch.optim.Optimizer
    criterion: nn.Module
    precision: Precision
    lr: float
    grad_clip: float
    average_grads: Callable[[], None]
    weights: list = field(init=False)  # what the gradient clip takes: the SGD's parameters

    def __post_init__(self) -> None:
        self.weights = [p for g in self.optimizer.param_groups for p in g["params"]]


def search_step(it: Iteration, x: torch.Tensor, y: torch.Tensor, x_val: torch.Tensor,
                y_val: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One iteration of DARTS's Algorithm 1 (Liu et al., ICLR 2019); returns the training
    loss, the training logits and the validation loss.

    1. Update the alphas by descending grad_alpha L_val(w - xi grad_w L_train(w, alpha), alpha)
       on a validation batch (xi = 0: first order; `Architect.step`). The collapse pieces hook
       in here: a warm-up leaves the alphas alone, an alpha loss (regularizer) is added to
       L_val, SDARTS perturbs the mixing weights the weight step will see.
    2. Update the weights by descending grad_w L_train(w, alpha) on a training batch, the
       supernet mixing its ops with the (detached) weights the pieces give: softmax(alpha),
       a mixing rule's draw (GDAS, DrNAS), or SDARTS's perturbed ones.
    """
    alpha_loss = it.pieces.alpha_step(it.architect, (x, y), (x_val, y_val), it.lr)  # step 1
    with it.precision.autocast():  # step 2
        logits, _ = split_output(it.model(x, it.pieces.weight_step_weights()))
        loss = it.criterion(logits, y)
    it.optimizer.zero_grad(set_to_none=True)
    it.precision.backward(loss)
    it.average_grads()
    if it.grad_clip > 0:
        it.precision.unscale(it.optimizer)
        nn.utils.clip_grad_norm_(it.weights, it.grad_clip)
    it.precision.step(it.optimizer)
    return loss.detach(), logits.detach(), alpha_loss.detach()


@dataclass
class _Search:
    """One gradient search: its settings, the objects it trains, its data and its records."""

    cfg: SearchConfig
    run_dir: Path
    logger: RunLogger
    d: Dist
    device: torch.device
    graphs: bool
    table: BenchmarkTable | None
    claim: RunClaim
    model: nn.Module
    cells: Any  # the space's gradient search (darts.spaces)
    pieces: Any  # darts.methods.pieces.Pieces
    criterion: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    precision: Precision
    architect: Architect
    scheduled: list  # what hears the epoch before it runs (darts.methods.schedule)
    split: tuple[torch.Tensor, torch.Tensor] = None  # (weight half, alpha half) of the images
    weight_data: Any = None
    alpha_stream: Any = None
    valid_loader: Any = None
    on_device: bool = False
    history: list = field(default_factory=list)
    meta: dict = field(default_factory=dict)

    def state(self, **extra: Any) -> dict[str, Any]:
        """The checkpoint after the last epoch, with `extra` (DARTS-PT's progress)."""
        return {"kind": "search", "epoch": len(self.history), "config": to_dict(self.cfg),
                "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "arch_optimizer": self.architect.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "split": {"weights": self.split[0], "alphas": self.split[1]},
                "alpha_stream": self.alpha_stream.state_dict(), "history": self.history,
                "pieces": self.pieces.state_dict(), "rng": rng_state(), **extra}

    def save(self, metrics: dict[str, Any] | None = None, **extra: Any) -> None:
        """The checkpoint (and metrics.json), written by rank 0 into a directory still its."""
        if self.d.is_main:
            self.claim.check()
            save_checkpoint(self.state(**extra), self.run_dir / "checkpoint.pt")
            if metrics is not None:
                save_json(metrics, self.run_dir / "metrics.json")
            self.logger.flush()


def _build(cfg, info, device, run_dir, logger, d: Dist, graphs: bool, table, claim) -> _Search:
    """The supernet, its optimizers and schedule, the architect and the collapse pieces."""
    if cfg.select == "pt" and d.enabled:
        raise UserError("--select pt runs on one process (each rank would measure its own "
                        "shard); leave out torchrun or --select pt")
    pieces = collapse.Pieces(cfg)  # the collapse pieces (darts.methods.pieces)
    model = build_supernet(cfg, info.num_classes, device, pieces)
    pieces.attach(model, cell_kind(cfg))
    criterion = nn.CrossEntropyLoss().to(device)
    optimizer = torch.optim.SGD(model.network_parameters(), cfg.learning_rate,
                                momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                                nesterov=cfg.nesterov)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, float(cfg.epochs),
                                                           eta_min=cfg.learning_rate_min)
    precision = Precision.from_flag(cfg.amp, device)
    architect, scheduled = build_architect(cfg, model, pieces, optimizer, criterion, precision,
                                           d, graphs)
    return _Search(cfg, run_dir, logger, d, device, graphs, table, claim, model, cell_kind(cfg),
                   pieces, criterion, optimizer, scheduler, precision, architect, scheduled,
                   meta={"name": run_dir.name, "source": f"train_search.py, run {run_dir}"})


def _split_data(s: _Search, info, train_set, ckpt) -> None:
    """The weight and alpha halves of the images (the checkpoint's on a resume), loaders."""
    cfg = s.cfg
    if ckpt is not None:
        weight_idx, alpha_idx = restore(s.run_dir, lambda: _split_of(ckpt["split"]))
        if int(max(weight_idx.max(), alpha_idx.max())) >= len(train_set):
            raise UserError(f"{s.run_dir}: the checkpoint's data split indexes "
                            f"{len(weight_idx) + len(alpha_idx)} images but the training set "
                            f"has {len(train_set)}; resume on the same data")
    else:
        weight_idx, alpha_idx = search_split(len(train_set), cfg.train_portion, cfg.seed)
    s.split = (weight_idx, alpha_idx)
    s.weight_data, s.alpha_stream, s.valid_loader, s.on_device = _loaders(
        cfg, info, train_set, weight_idx, alpha_idx, s.device, s.d)


def _restore(s: _Search, ckpt, changed: dict[str, Any]) -> int:
    """Everything from the checkpoint (a new run: its config written); the epochs done."""
    cfg, logger = s.cfg, s.logger
    if ckpt is None:
        if s.d.is_main:
            save_json(to_dict(cfg), s.run_dir / "config.json")
            logger.config(to_dict(cfg))
            logger.info("run directory %s", s.run_dir)
            for line in presets.describe(cfg):
                logger.info("%s", line)
        return 0

    def load() -> tuple[int, list]:
        s.model.load_state_dict(ckpt["model"])
        s.optimizer.load_state_dict(ckpt["optimizer"])
        s.architect.load_state_dict(ckpt["arch_optimizer"])
        s.scheduler.load_state_dict(ckpt["scheduler"])
        s.alpha_stream.load_state_dict(ckpt["alpha_stream"])
        s.pieces.load_state_dict(ckpt.get("pieces", {}))
        set_rng_state(ckpt["rng"])
        return epoch_history(ckpt)

    start_epoch, s.history = restore(s.run_dir, load)
    logger.info("resumed %s at epoch %d/%d", s.run_dir, start_epoch, cfg.epochs)
    if "learning_rate" in changed:
        change_base_lr(s.optimizer, s.scheduler, cfg.learning_rate)
    if "arch_learning_rate" in changed:
        for group in s.architect.optimizer.param_groups:
            group["lr"] = cfg.arch_learning_rate
    for k, v in changed.items():
        logger.info("resumed with --%s %s (was %s)", k, v, ckpt["config"].get(k))
    if changed and s.d.is_main:
        save_json(to_dict(cfg), s.run_dir / "config.json")
    return start_epoch


def _describe(s: _Search, info) -> None:
    """The log line of what is searched, how, on what."""
    cfg, model, cells = s.cfg, s.model, s.cells
    n_weights = sum(p.numel() for p in model.network_parameters())
    speed = [f"{'device-resident' if s.on_device else 'DataLoader'} loader", f"amp {cfg.amp}"]
    speed += [name for name, on in (
        ("channels_last", cfg.channels_last), ("compiled", cfg.compile),
        (f"partial channels 1/{cfg.partial_channels}", cfg.partial_channels > 1),
        ("cell checkpointing", cfg.checkpoint_cells), ("CUDA graphs", s.graphs),
        ("edges batched", edges_batched(model))) if on]
    s.logger.info(
        "%s on %s (%d classes, %dpx): %s of %d channels, %d nodes, %d ops; %.3fM weights; "
        "%d/%d images train the weights/alphas; order %d%s; device %s%s; %s",
        type(model).__name__, cfg.dataset, info.num_classes, info.image_size,
        cells.describe(cfg), cfg.init_channels, cells.nodes(cfg), len(cells.ops_of(model)),
        n_weights / 1e6, len(s.split[0]), len(s.split[1]), cfg.order,
        f" ({cfg.hessian} Hessian)" if cfg.order == 2 else "", s.device,
        f" x {s.d.world_size} processes (batch {cfg.batch_size} each)" if s.d.enabled else "",
        ", ".join(speed))


def _search(cfg, info, train_set, device, run_dir, logger, ckpt, on_epoch_end, d: Dist,
            graphs: bool, table: BenchmarkTable | None, claim: RunClaim,
            changed: dict[str, Any]):
    """The search in `run_dir`: build, restore, the epochs (each: `_epoch`, then `_record`
    and the checkpoint), DARTS-PT's projection, the result."""
    configure_cpu_threads(cfg.threads, logger.warning if device.type == "cpu" else None,
                          logger.info, adapt=cfg.adapt_threads)
    s = _build(cfg, info, device, run_dir, logger, d, graphs, table, claim)
    _split_data(s, info, train_set, ckpt)
    start_epoch = _restore(s, ckpt, changed)
    distributed.broadcast_state(s.model, d)  # identical replicas, whatever each rank drew
    compile_model(s.model, cfg.compile, logger.warning)
    _describe(s, info)
    projection = ckpt.get("projection") if ckpt is not None else None
    if start_epoch >= cfg.epochs or (s.history and s.history[-1].get("early_stop", False)):
        logger.info("%s already finished (%d epochs)", run_dir, len(s.history))
        _select_cell(s, projection)
        return _finish(cfg, run_dir, logger, s.history, d)
    timer = EpochTimer(cfg.epochs, start_epoch)
    for epoch in range(start_epoch, cfg.epochs):
        train, valid, arch_loss, lr, dt, epoch_values = _epoch(s, epoch, timer)
        why = _record(s, epoch, train, valid, arch_loss, lr, dt, timer, epoch_values)
        metrics = _metrics(cfg, s.history, complete=epoch + 1 == cfg.epochs or why is not None)
        s.save(metrics)
        distributed.barrier(d)
        if on_epoch_end is not None:
            on_epoch_end(epoch + 1, metrics)
        if why is not None:
            logger.info("early stop: %s: the search stops after epoch %d", why, epoch + 1)
            break
    _select_cell(s, projection)
    return _finish(cfg, run_dir, logger, s.history, d)


def _epoch(s: _Search, epoch: int, timer: EpochTimer):
    """One epoch: `search_step` over the weight half, then the alpha half's validation;
    (train metrics, valid metrics, alpha loss, learning rate, seconds, the pieces' values)."""
    cfg, d = s.cfg, s.d
    schedule.set_epoch(s.scheduled, epoch, cfg.epochs)
    timer.start()
    lr = s.scheduler.get_last_lr()[0]
    arch_meter = MetricSum(s.device)
    epoch_values = s.pieces.start_epoch(epoch)  # DARTS-'s beta, P-DARTS's dropout, SDARTS's eps
    weights = s.model.network_parameters()
    it = Iteration(s.model, s.architect, s.pieces, s.optimizer, s.criterion, s.precision, lr,
                   cfg.grad_clip, lambda: distributed.average_grads(weights, d))
    train = train_one_epoch(
        s.model, s.weight_data.epoch(epoch), s.optimizer, s.criterion, s.device,
        side_step=SideStep(s.alpha_stream, None, arch_meter),  # the alpha half's batches
        step=functools.partial(search_step, it),
        precision=s.precision, channels_last=cfg.channels_last,
        reduce=lambda m: distributed.reduce_meter(m, d), cuda_graph=s.graphs,
        log=s.logger.warning,
        progress=cfg.progress and d.is_main, desc=f"epoch {epoch + 1}/{cfg.epochs}")
    # BatchNorm statistics are per rank; rank 0's become everyone's once an epoch.
    distributed.broadcast_buffers(s.model, d)
    valid = evaluate(s.model, s.valid_loader, s.criterion, s.device, precision=s.precision,
                     channels_last=cfg.channels_last,
                     reduce=lambda m: distributed.reduce_meter(m, d), cuda_graph=s.graphs,
                     log=s.logger.warning, progress=cfg.progress and d.is_main)
    distributed.reduce_meter(arch_meter, d)
    s.scheduler.step()
    dt = timer.stop()
    arch_loss = arch_meter.result().loss
    diverged(epoch, {"train_loss": train.loss, "valid_loss": valid.loss,
                     "arch_loss": arch_loss}, s.run_dir,
             "lower --learning_rate or --arch_learning_rate, or keep --grad_clip on")
    return train, valid, arch_loss, lr, dt, epoch_values


def _record(s: _Search, epoch: int, train, valid, arch_loss: float, lr: float, dt: float,
            timer: EpochTimer, epoch_values: dict[str, float]) -> str | None:
    """The epoch's cell, record and log; why DARTS+ stops here (None: the search goes on)."""
    cfg, cells, pieces, logger = s.cfg, s.cells, s.pieces, s.logger
    genotype = pieces.decode(cells, s.meta)  # the same on every rank: the alphas are
    if s.d.is_main:
        cells.save(genotype, s.run_dir / cells.folder / f"epoch_{epoch + 1:03d}.json")
    stats = arch_statistics(s.model, genotype, cells)
    stats.update({f"arch/{k}": v for k, v in schedule.scalars(s.scheduled).items()})
    record = {"epoch": epoch + 1, "lr": lr, "train_loss": train.loss, "train_top1": train.top1,
              "valid_loss": valid.loss, "valid_top1": valid.top1, "valid_top5": valid.top5,
              "arch_loss": arch_loss, **{k.split("/")[1]: v for k, v in stats.items()},
              "epoch_time_s": dt, "genotype": genotype.to_dict(), **epoch_values}
    pieces.record(record)  # P-DARTS's uncapped skips, DARTS+'s ranking, a plugin's values
    why = pieces.stop([*s.history, record])  # DARTS+
    if why is not None:
        record["early_stop"] = why
    if s.table is not None:
        record["benchmark"] = s.table.score(genotype)
    s.history.append(record)
    if s.d.is_main:
        _log_epoch(logger, s.model, genotype, epoch + 1, train, valid, lr, arch_loss, stats,
                   cells, record.get("benchmark"))
    logger.info("epoch %d/%d train_loss %.4f train_top1 %.2f valid_loss %.4f valid_top1 %.2f "
                "arch_loss %.4f lr %.5f %s %d entropy %.3f time %.1fs eta %s",
                epoch + 1, cfg.epochs, train.loss, train.top1, valid.loss, valid.top1,
                arch_loss, lr, cells.skips, stats[f"arch/{cells.skips}"],
                stats["arch/entropy"], dt, format_duration(timer.eta()))
    logger.info("%s %s", cells.noun, genotype)
    if s.table is not None:
        logger.info("benchmark %s", score_line(record["benchmark"]))
    return why


def _select_cell(s: _Search, resume: dict | None) -> None:
    """DARTS-PT's projection after the last epoch (once: recorded in the last record),
    checkpointed after each projection step: a resumed run goes on at the next undone step,
    and the checkpoint written at its end holds the selection (never redone)."""
    if s.cfg.select != "pt" or "selection" in s.history[-1]:
        s.pieces.after_search()
        return
    last = s.history[-1]["epoch"] - 1  # the last epoch's schedules, also after a --resume
    schedule.set_epoch(s.scheduled, last, s.cfg.epochs)
    s.pieces.start_epoch(last)
    s.history[-1]["selection"] = collapse.pt_select(
        s.pieces, s.cells, architect=s.architect, criterion=s.criterion, device=s.device,
        valid_loader=s.valid_loader, weight_data=s.weight_data, alpha_stream=s.alpha_stream,
        precision=s.precision, meta=s.meta, log=s.logger.info, resume=resume,
        checkpoint=lambda progress: s.save(projection=progress))
    s.save(_metrics(s.cfg, s.history, complete=True))


def _split_of(split: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """A checkpoint's (weight indices, alpha indices), checked: two non-empty, disjoint sets
    of sample indices."""
    weights, alphas = split["weights"], split["alphas"]
    for part in (weights, alphas):
        if not (isinstance(part, torch.Tensor) and part.dtype == torch.long and part.dim() == 1
                and part.numel() > 0 and int(part.min()) >= 0):
            raise ValueError("the data split is not two lists of sample indices")
    return weights, alphas


def _loaders(cfg, info, train_set, weight_idx, alpha_idx, device, d: Dist):
    """(weight-half batches per epoch, endless alpha-half stream, valid loader, on device?).

    Every rank draws its own shard of each pass; the valid loader shards the alpha half.
    """
    cutout = cfg.cutout_length if cfg.cutout else 0
    shards = {"rank": d.rank, "world_size": d.world_size}
    if use_device_loader(cfg.loader, train_set, device):
        images = DeviceImages.from_dataset(train_set, mean=info.mean, std=info.std, device=device)
        common = {"augment": True, "cutout_length": cutout, "channels_last": cfg.channels_last, **shards}
        weight_data = DeviceSplitLoader(images, weight_idx, cfg.batch_size, seed=cfg.seed,
                                        stream=0, **common)
        alpha_stream = DeviceSplitLoader(images, alpha_idx, cfg.batch_size, seed=cfg.seed,
                                         stream=1, **common)
        held = DeviceImages(images.images[alpha_idx.to(device)].permute(0, 2, 3, 1),
                            images.labels[alpha_idx.to(device)], mean=info.mean, std=info.std,
                            device=device)
        valid = DeviceEvalLoader(held, cfg.batch_size, channels_last=cfg.channels_last, **shards)
        return weight_data, alpha_stream, valid, True
    pin = device.type == "cuda"
    weight_data = SplitLoader(train_set, weight_idx, cfg.batch_size, seed=cfg.seed, stream=0,
                              workers=cfg.workers, pin_memory=pin, **shards)
    alpha_stream = SplitLoader(train_set, alpha_idx, cfg.batch_size, seed=cfg.seed, stream=1,
                               workers=cfg.workers, pin_memory=pin, **shards)
    # The search's "valid" accuracy is on the alpha half, as in the reference code.
    mine = alpha_idx[d.rank::d.world_size]
    valid = make_loader(Subset(train_set, mine.tolist()), cfg.batch_size, shuffle=False,
                        workers=cfg.workers, pin_memory=pin)
    return weight_data, alpha_stream, valid, False


def _log_epoch(logger, model, genotype, step, train, valid, lr, arch_loss, stats, cells,
               score=None) -> None:
    scores = {f"benchmark/{k}": v for k, v in (score or {}).items()
              if isinstance(v, (int, float)) and k not in ("index", "cells")}
    logger.scalars({**train.as_dict("train"), **valid.as_dict("valid"), "lr": lr,
                    "arch/loss": arch_loss, **stats, **scores}, step)
    edges, ops = cells.edge_names(model), cells.ops_of(model)
    for kind, w in zip(cells.kinds, model.mixing_weights(detach=True), strict=False):
        logger.image(f"alphas/{kind}", alpha_heatmap(w, edges, ops, f"{kind} cell, epoch {step}"),
                     step)
    logger.text(cells.noun, f"`{genotype}`", step)
    draw_cells(genotype, logger, step, graphs=getattr(cells, "graphs", None))


def _metrics(cfg: SearchConfig, history: list[dict[str, Any]], complete: bool) -> dict[str, Any]:
    last, skips = history[-1], cell_kind(cfg).skips
    return {"complete": complete, "dataset": cfg.dataset, "epochs_done": last["epoch"],
            "epochs": cfg.epochs, "order": cfg.order, "hessian": cfg.hessian,
            "final": {k: last[k] for k in ("train_loss", "train_top1", "valid_loss", "valid_top1",
                                             "valid_top5", skips, "entropy")},
            "genotype": result_genotype(last), "search_time_s": sum(r["epoch_time_s"] for r in history),
            **({"early_stop": {"epoch": last["epoch"], skips: last[skips],
                               "reason": last["early_stop"]}}
               if last.get("early_stop") else {}),
            **({"selection": {k: v for k, v in last["selection"].items() if k != "tune"}}
               if "selection" in last else {}),
            **({"benchmark": last["benchmark"]} if "benchmark" in last else {}),
            # a genotype is in genotypes/epoch_NNN.json; a cell of one line stays in the record
            "history": [{k: v for k, v in r.items()
                         if k != "genotype" or cell_kind(cfg).inline_in_history}
                        for r in history]}


def result_genotype(record: dict[str, Any]) -> Any:
    """The search's cell in a history record: DARTS-PT's projection where it ran, else the
    epoch's decoded cell."""
    return record.get("selection", {}).get("genotype", record["genotype"])


def _finish(cfg, run_dir, logger, history, d: Dist) -> dict[str, Any]:
    cells = cell_kind(cfg)
    genotype = cells.from_dict(result_genotype(history[-1]), str(run_dir))
    if d.is_main:
        cells.save(genotype, run_dir / cells.result_file)
        draw_cells(genotype, logger, len(history), run_dir, graphs=getattr(cells, "graphs", None))
    metrics = _metrics(cfg, history, complete=len(history) >= cfg.epochs
                       or history[-1].get("early_stop", False))
    logger.info("done: %s %s written to %s", cells.noun, genotype, run_dir / cells.result_file)
    if "benchmark" in history[-1]:
        logger.info("its benchmark scores: %s", score_line(history[-1]["benchmark"]))
    command, what = retrain_command(run_dir, cfg)
    logger.info("%s; retrain it with:\n  %s", what, command)
    return metrics


def cell_kind(cfg: SearchConfig) -> Any:
    """The gradient search of `cfg`'s space (its `gradient`: see darts.spaces)."""
    return get_space(cfg.space).gradient


DESCRIPTION = "DARTS architecture search (the paper's settings by default)."


def main(argv: list[str] | None = None) -> int:
    """`train_search.py` and `darts-search`: flags -> SearchConfig -> `run`; the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)

    def run_method(cfg: SearchConfig, resume: str | None = None, **changes):
        """`--method NAME` sets its preset's flags, except those given explicitly."""
        if resume is None and cfg.method:
            given = cli.given_flags(cli.parse_args(SearchConfig, DESCRIPTION, "search", argv),
                                    SearchConfig)
            cfg = presets.apply(cfg, explicit=given - {"method"})
            try:
                return run(cfg, resume=resume)
            except UserError as e:  # a flag the preset set: say so
                flags = [k for k in presets.PRESETS[cfg.method]
                         if k not in given and f"--{k}" in str(e)]
                if flags:
                    raise UserError(f"{e} (--method {cfg.method} sets --{flags[0]}; an explicit "
                                    f"--{flags[0]} overrides it)") from None
                raise
        return run(cfg, resume=resume, **changes)

    return cli.main(SearchConfig, run_method, DESCRIPTION, "search", argv)
