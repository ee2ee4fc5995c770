"""Final training: retrain a genotype from scratch with the paper's recipe (Section 3.3).

CIFAR (Liu et al. 2019, Section A.2): 36 channels, 20 cells, batch 96, SGD lr 0.025 with
cosine annealing, momentum 0.9, weight decay 3e-4, 600 epochs, auxiliary towers of weight
0.4, cutout 16, path dropout 0.2 ramped linearly, gradient norm clipped at 5.
ImageNet mobile setting (Section 3.4): 48 channels, 14 cells, batch 128, lr 0.1 decayed by
0.97 every epoch, label smoothing 0.1, weight decay 3e-5, 250 epochs, auxiliary weight 0.4.

A field left at None takes the recipe of the network family the dataset uses: CIFAR-10/100
and small `folder`/`synthetic` images use the CIFAR recipe, ImageNet and large images the
ImageNet one. `config.json` records the resolved values.

`--space nb201` trains a NAS-Bench-201 cell with the benchmark's 200-epoch recipe;
`--space cnn` a plain CNN (darts.spaces.cnn), for which no paper has a recipe: this project
trains it with NATS-Bench's 90-epoch schedule (its size space's, whose candidates are plain
stacks of channel widths; AutoDL-Projects configs/nas-benchmark/hyper-opts/90E.config):
NAS-Bench-201's optimizer, schedule and augmentation, 90 epochs.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn as nn
from torch.utils.data import Subset

from darts import plugins
from darts.accel import accelerate
from darts.accel.cuda_graph import CUDA_GRAPH_FLAGS, cuda_graphs_enabled
from darts.accel.device_data import (
    LOADERS,
    DeviceEvalLoader,
    DeviceImages,
    DeviceSplitLoader,
    use_device_loader,
)
from darts.errors import UserError
from darts.network import count_multiply_adds, count_parameters
from darts.spaces import SPACES, get_space
from darts.spaces.nb201 import read_arch_json
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
from darts.train.data import DATASETS, SplitLoader, build_datasets, make_loader, network_family
from darts.train.distributed import Dist
from darts.train.engine import (
    AMP_DTYPES,
    Precision,
    channels_last_on,
    compile_model,
    configure_cpu_threads,
    evaluate,
    pick_device,
    train_one_epoch,
    tune_malloc,
)
from darts.train.files import save_json
from darts.train.rundir import RunClaim, claim_run_dir
from darts.train.tb import EpochTimer, RunLogger, draw_cells, format_duration

DEFAULT_GENOTYPE = "darts_v2"
CHECKPOINT_KEYS = ("epoch", "config", "genotype", "model", "optimizer", "scheduler", "history",
                   "best", "rng")


def _f(help: str, **meta: Any) -> dict[str, Any]:
    return {"help": help, **meta}


@dataclass
class FinalConfig:
    # What `--resume RUN_DIR` may change: a run that diverged goes on from its last good
    # checkpoint with a smaller step (darts.train.checkpoint.change_base_lr).
    RESUMABLE: ClassVar[tuple[str, ...]] = ("learning_rate", "grad_clip")

    genotype: str = field(default=DEFAULT_GENOTYPE, metadata=_f(
        "a genotype JSON file, a published name from darts/genotypes/ (e.g. darts_v2, pdarts), an "
        "NB201 arch string, a search's arch.json or cnn.json, or a search's run directory "
        "(its result file is read; the space follows the candidate)"))
    arch: str | None = field(default=None, metadata=_f(
        "the candidate to train, in place of --genotype: its text (e.g. "
        "conv3x3-32-max|conv5x5-64), the JSON file a search saved (arch.json, cnn.json, "
        "genotype.json) or the search's run directory"))
    space: str | None = field(default=None, metadata=_f(
        "darts (the DARTS network and the paper's recipe), nb201 (NAS-Bench-201's network "
        "and the benchmark's 200-epoch recipe), nb101 (NAS-Bench-101's, 108 epochs) or cnn (a plain CNN spec, NB201's recipe over "
        "90 epochs: this project's choice); default: the candidate's, read from its file "
        "(genotype.json, arch.json, cnn.json) or its run directory's config.json, else darts",
        choices=SPACES))
    dataset: str = field(default="cifar10", metadata=_f("dataset", choices=DATASETS))
    data: str = field(default="data", metadata=_f(
        "dataset root: CIFAR is read from (or downloaded into) it; imagenet/folder: a folder with train/ and val/ (or test/)"))
    # The recipe: None means the paper's value for the dataset's network family.
    batch_size: int | None = field(default=None, metadata=_f("batch size (CIFAR 96, ImageNet 128)"))
    learning_rate: float | None = field(default=None, metadata=_f("initial learning rate (CIFAR 0.025, ImageNet 0.1)"))
    lr_schedule: str | None = field(default=None, metadata=_f(
        "cosine (to 0 over the epochs; CIFAR) or step (x lr_gamma per epoch; ImageNet)", choices=("cosine", "step")))
    lr_gamma: float | None = field(default=None, metadata=_f("per-epoch decay of the step schedule (0.97)"))
    optimizer: str | None = field(default=None, metadata=_f(
        "sgd, or rmsprop (NAS-Bench-101's: decay 0.9, epsilon 1.0); default: the space's recipe",
        choices=("sgd", "rmsprop")))
    momentum: float | None = field(default=None, metadata=_f("SGD momentum (0.9)"))
    nesterov: bool | None = field(default=None, metadata=_f("Nesterov momentum (off; nb201 on)"))
    weight_decay: float | None = field(default=None, metadata=_f("weight decay (CIFAR 3e-4, ImageNet 3e-5)"))
    epochs: int | None = field(default=None, metadata=_f("epochs (CIFAR 600, ImageNet 250)"))
    init_channels: int | None = field(default=None, metadata=_f("channels of the first cell (CIFAR 36, ImageNet 48)"))
    layers: int | None = field(default=None, metadata=_f("number of cells (CIFAR 20, ImageNet 14)"))
    auxiliary: bool | None = field(default=None, metadata=_f("auxiliary head after the second reduction (on)"))
    auxiliary_weight: float | None = field(default=None, metadata=_f("weight of the auxiliary loss (0.4)"))
    cutout: bool | None = field(default=None, metadata=_f("cutout augmentation (CIFAR on, ImageNet off)"))
    cutout_length: int | None = field(default=None, metadata=_f("cutout square side (16)"))
    drop_path_prob: float | None = field(default=None, metadata=_f(
        "final drop-path probability, ramped linearly from 0 (CIFAR 0.2, ImageNet 0)"))
    grad_clip: float | None = field(default=None, metadata=_f("gradient norm clip, 0 = off (5)"))
    label_smooth: float | None = field(default=None, metadata=_f("label smoothing (CIFAR 0, ImageNet 0.1)"))
    # Data options.
    image_size: int | None = field(default=None, metadata=_f(
        "input resolution for folder/synthetic data (default 32; imagenet 224)"))
    num_classes: int | None = field(default=None, metadata=_f("classes of the synthetic dataset (10)"))
    synthetic_size: int = field(default=5000, metadata=_f("training images of the synthetic dataset"))
    workers: int = field(default=2, metadata=_f("data-loading worker processes"))
    threads: int = field(default=0, metadata=_f(
        "CPU threads of the training process; 0: the CPUs it may use (its affinity mask and "
        "CPU quota), or OMP_NUM_THREADS where set"))
    adapt_threads: bool = field(default=False, metadata=_f(
        "on the CPU, follow the machine's load: every 10 s the threads become the CPUs other "
        "processes leave free (at least 1, at most --threads). Robust on a shared machine, but "
        "the thread count changes how sums are split, so the run is not bit-reproducible"))
    loader: str = field(default="auto", metadata=_f(
        "auto: the device-resident pipeline on a GPU for in-memory data sets (CIFAR, synthetic), "
        "else the DataLoader; device; torch (DataLoader)", choices=LOADERS))
    amp: str = field(default="off", metadata=_f(
        "mixed precision: off (float32, the paper), bf16, fp16 (with loss scaling)",
        choices=tuple(AMP_DTYPES)))
    channels_last: bool | None = field(default=None, metadata=_f(
        "channels-last (NHWC) memory format; default: on on the CPU (where the C kernels need it), off elsewhere; --no-channels_last to turn it off"))
    tune_malloc: bool = field(default=True, metadata=_f(
        "on the CPU with glibc: keep freed tensor memory in the process (one malloc arena, no trimming) instead of faulting fresh pages in for every tensor; --no-tune_malloc for glibc's defaults"))
    compile: bool = field(default=False, metadata=_f("torch.compile the network (eager where it cannot)"))
    cuda_graphs: str = field(default="auto", metadata=_f(
        "capture each whole training step in a CUDA graph and replay it: the same kernels, one "
        "launch; auto: on a GPU, one process, amp off or bf16, no --compile",
        choices=CUDA_GRAPH_FLAGS))
    plugins: str = field(default="", metadata=_f(
        "comma-separated Python files (or module names) imported first: ops the genotype uses "
        "that register_op calls there add; recorded, so --resume imports them again"))
    # Run options.
    seed: int = field(default=0, metadata=_f("random seed"))
    save: str = field(default="runs", metadata=_f("parent folder of the run directory"))
    name: str | None = field(default=None, metadata=_f("run directory name (default: final-<dataset>-<genotype>-<time>)"))
    device: str = field(default="auto", metadata=_f("cpu, cuda, cuda:N or auto"))
    progress: bool = field(default=True, metadata=_f("progress bar per epoch (when stdout is a terminal)"))
    tensorboard: bool = field(default=True, metadata=_f("TensorBoard event files in the run directory"))

    def resolved(self, network: str) -> FinalConfig:
        """A copy whose recipe fields left at None take the values of the space's recipe for
        the network family `network` (cifar, imagenet) of the data."""
        recipe = get_space(self.space or "darts").final.recipe(network)
        values = {k: (recipe[k] if getattr(self, k) is None else getattr(self, k)) for k in recipe}
        return dataclasses.replace(self, **values)


def validate(cfg: FinalConfig) -> None:
    space = get_space(cfg.space)
    space.final.check(cfg)  # the space's own refusals first
    sized = getattr(space, "NETWORK_SIZES", None) is not None
    least = getattr(space, "MIN_LAYERS", 1)
    checks = [
        ("epochs", cfg.epochs is not None and cfg.epochs >= 1, "at least 1"),
        ("batch_size", cfg.batch_size is not None and cfg.batch_size >= 1, "at least 1"),
        ("layers", not sized or cfg.layers is not None and cfg.layers >= least,
         f"at least {least} {getattr(space, 'LAYERS_NOUN', 'layers')}"),
        ("init_channels", not sized or cfg.init_channels is not None
         and cfg.init_channels >= 2 and cfg.init_channels % 2 == 0, "an even number >= 2"),
        ("learning_rate", cfg.learning_rate is not None and cfg.learning_rate > 0, "positive"),
        ("momentum", cfg.momentum is not None and 0 <= cfg.momentum < 1, "in [0, 1)"),
        ("weight_decay", cfg.weight_decay is not None and cfg.weight_decay >= 0, "0 or more"),
        ("grad_clip", cfg.grad_clip is not None and cfg.grad_clip >= 0, "0 (off) or more"),
        ("lr_gamma", cfg.lr_gamma is not None and 0 < cfg.lr_gamma <= 1, "in (0, 1]"),
        ("auxiliary_weight", cfg.auxiliary_weight is not None and cfg.auxiliary_weight >= 0, "0 or more"),
        ("cutout_length", cfg.cutout_length is not None and cfg.cutout_length >= 0, "0 or more"),
        ("drop_path_prob", cfg.drop_path_prob is not None and 0 <= cfg.drop_path_prob < 1, "in [0, 1)"),
        ("label_smooth", cfg.label_smooth is not None and 0 <= cfg.label_smooth < 1, "in [0, 1)"),
        ("workers", cfg.workers >= 0, "0 or more"),
        ("threads", cfg.threads >= 0, "0 (automatic) or more"),
        ("synthetic_size", cfg.synthetic_size >= 1, "at least 1"),
    ]
    for flag, ok, need in checks:
        if not ok:
            raise UserError(f"--{flag} {getattr(cfg, flag)}: must be {need}")
    if cfg.nesterov and not cfg.momentum:
        raise UserError("--nesterov needs a momentum: give --momentum > 0 or --no-nesterov")


def build_network(genotype: Any, cfg: FinalConfig, num_classes: int, network: str) -> nn.Module:
    """The candidate's network (its space's), accelerated; `network` the family of the data."""
    return accelerate(get_space(cfg.space or "darts").network(
        genotype, num_classes, cfg.init_channels, cfg.layers, family=network,
        auxiliary=cfg.auxiliary))


def run(cfg: FinalConfig, *, resume: str | None = None,
        on_epoch_end: Callable[[int, dict[str, Any]], None] | None = None,
        changes: dict[str, Any] | None = None) -> dict[str, Any]:
    """Trains the genotype; returns the metrics written to metrics.json.

    `resume` is a run directory (or its checkpoint.pt): the run continues there with the
    config it was started with. `on_epoch_end(epoch, metrics)` is called after each
    epoch's checkpoint is written.
    """
    ckpt, changed = None, {}
    if resume is not None:
        ckpt = load_checkpoint(resume, "final", CHECKPOINT_KEYS)
        plugins.load_saved(ckpt["config"], str(resume))
        cfg = config_from_dict(FinalConfig, ckpt["config"], where=str(resume))
        changed = resume_changes(cfg, changes, FinalConfig.RESUMABLE)
        cfg = dataclasses.replace(cfg, **changed)
    # The plugins first: the genotype may use the ops they register.
    cfg = dataclasses.replace(cfg, plugins=plugins.absolute(cfg.plugins))
    plugins.load(cfg.plugins)
    if ckpt is None:
        cfg = with_candidate_space(cfg)
    spec, where = (cfg.genotype, "--genotype") if cfg.arch is None else (cfg.arch, "--arch")
    final = get_space(cfg.space).final
    genotype = (final.load(ckpt["genotype"], f"{resume} (the trained candidate)")
                if ckpt is not None else final.load(spec, where))
    if ckpt is not None:
        run_dir = run_dir_of(resume)

    d, device = distributed.setup(pick_device(cfg.device))
    try:
        seed_everything(cfg.seed)
        cfg = cfg.resolved(network_family(cfg.dataset, cfg.image_size))
        cfg = dataclasses.replace(cfg, channels_last=channels_last_on(cfg.channels_last, device))
        if cfg.tune_malloc:
            tune_malloc(device)
        validate(cfg)
        # Checked before the run directory is made: a flag that cannot work leaves nothing.
        graphs = cuda_graphs_enabled(cfg.cuda_graphs, device, distributed=d.enabled,
                                     amp=cfg.amp, compile=cfg.compile)
        train_set, test_set, info = build_datasets(
            cfg.dataset, cfg.data, cutout_length=cfg.cutout_length if cfg.cutout else 0,
            image_size=cfg.image_size, num_classes=cfg.num_classes,
            synthetic_size=cfg.synthetic_size, seed=cfg.seed)

        stamp = time.strftime("%Y%m%d-%H%M%S")
        name = cfg.name or f"final-{cfg.dataset}-{final.label(spec, genotype)}-{stamp}"
        claim = claim_run_dir(d, None if ckpt is None else run_dir, cfg.save, name,
                              numbered=not cfg.name)
        run_dir = claim.path
        with claim.held():
            logger = RunLogger(run_dir, enabled=d.is_main, tensorboard=cfg.tensorboard, name="final")
            try:
                return _train(cfg, genotype, info, train_set, test_set, device, run_dir, logger,
                              ckpt, on_epoch_end, d, graphs, claim, changed)
            finally:
                logger.close()
    finally:
        distributed.teardown(d)


def with_candidate_space(cfg: FinalConfig) -> FinalConfig:
    """`cfg` with the space of its candidate (--genotype or --arch): the one its text or JSON
    file reads as (a genotype's keys; an NB201 arch string; a plain CNN spec), else the one
    the config.json of a run directory given in its place names; a run directory becomes
    its result file. An explicit --space that the candidate contradicts is one UserError."""
    key = "genotype" if cfg.arch is None else "arch"
    spec = getattr(cfg, key)
    where, from_run = f"--{key} {spec}", None
    try:
        is_dir = Path(spec).is_dir()
    except (OSError, ValueError):  # a name too long, a NUL: the loader says what is wrong
        is_dir = False
    if is_dir:
        spec, from_run = _run_result(Path(spec), where)
    found, sure = _space_of(spec)
    if not sure and from_run is not None:
        found, sure = from_run, True
    if cfg.space is not None and sure and found != cfg.space:
        raise UserError(f"--space {cfg.space}: {where} is {SPACES[found].final.noun}, not "
                        f"{SPACES[cfg.space].final.noun}; leave --space out (it is taken from "
                        f"the candidate) or give --space {found}")
    return dataclasses.replace(cfg, space=cfg.space or found or "darts", **{key: spec})


def _run_result(run_dir: Path, where: str) -> tuple[str, str | None]:
    """(the candidate file of a run directory, the space its config.json names, if any)."""
    try:
        space = json.loads((run_dir / "config.json").read_text(encoding="utf-8")).get("space")
    except (OSError, ValueError, AttributeError):
        space = None
    files = {name: s.final.result_files for name, s in SPACES.items() if hasattr(s, "final")}
    space = space if isinstance(space, str) and space in files else None
    names = files[space] if space else tuple(
        dict.fromkeys(name for names in files.values() for name in names))
    for name in names:
        if (run_dir / name).is_file():
            return str(run_dir / name), space
    raise UserError(f"{where}: a folder without {' or '.join(names)}; a search writes its "
                    f"result there when it ends (an unfinished one: --resume it, or give one "
                    f"of the cells it saves each epoch, genotypes/ or archs/epoch_NNN.json)")


def _space_of(spec: str) -> tuple[str | None, bool]:
    """(the space whose candidate `spec` is, whether it reads as one): by a JSON file's
    content or by the text itself. An arch file whose text neither space reads is guessed
    (NAS-Bench-201's strings have '~' marks), for that space's loader to say what is wrong."""
    data: Any = spec
    if spec.endswith(".json"):
        try:
            data = read_arch_json(spec, "--genotype")
        except UserError:  # unreadable: the loader names the file and the problem
            return None, False
    finals = [(name, s.final) for name, s in SPACES.items() if hasattr(s, "final")]
    for name, final in finals:
        if final.reads(data):
            return name, True
    for name, final in finals:
        if final.claims(data):
            return name, False
    return None, False


def _auxiliary_note(model: nn.Module, cfg: FinalConfig, params: int) -> str:
    """What the parameter count of the log leaves out: the auxiliary head, which the paper
    does not count, and whether this run trains one."""
    if not get_space(cfg.space).final.has_auxiliary:
        return ""  # this space's networks have no auxiliary head
    if not cfg.auxiliary:
        return " (auxiliary head off)"
    head = count_parameters(model, exclude_auxiliary=False) - params
    return (f" without the auxiliary head, as the paper counts them (the head is on, weight "
            f"{cfg.auxiliary_weight:g}: {head / 1e6:.3f}M more in training)")


def _loaders(cfg, info, train_set, test_set, device, d: Dist):
    """(training batches per epoch, test loader, on device?); every rank its shard of both."""
    cutout = cfg.cutout_length if cfg.cutout else 0
    shards = {"rank": d.rank, "world_size": d.world_size}
    everything = torch.arange(len(train_set))
    if use_device_loader(cfg.loader, train_set, device):
        stats = {"mean": info.mean, "std": info.std, "device": device}
        train = DeviceSplitLoader(DeviceImages.from_dataset(train_set, **stats), everything,
                                  cfg.batch_size, seed=cfg.seed, stream=0, augment=True,
                                  cutout_length=cutout, channels_last=cfg.channels_last, **shards)
        test = DeviceEvalLoader(DeviceImages.from_dataset(test_set, **stats), cfg.batch_size,
                                channels_last=cfg.channels_last, **shards)
        return train, test, True
    pin = device.type == "cuda"
    train = SplitLoader(train_set, everything, cfg.batch_size, seed=cfg.seed, stream=0,
                        workers=cfg.workers, pin_memory=pin, **shards)
    if d.enabled:
        test_set = Subset(test_set, list(range(d.rank, len(test_set), d.world_size)))
    test = make_loader(test_set, cfg.batch_size, shuffle=False, workers=cfg.workers, pin_memory=pin)
    return train, test, False


def _optimizer(cfg, model: nn.Module):
    """The weights' SGD (or NAS-Bench-101's RMSProp) and its learning-rate schedule (cosine,
    or the ImageNet step decay)."""
    if cfg.optimizer == "rmsprop":  # nasbench model_builder: RMSProp, decay 0.9, epsilon 1.0
        optimizer = torch.optim.RMSprop(model.parameters(), cfg.learning_rate, alpha=0.9,
                                        eps=1.0, momentum=cfg.momentum,
                                        weight_decay=cfg.weight_decay)
    else:
        optimizer = torch.optim.SGD(model.parameters(), cfg.learning_rate, momentum=cfg.momentum,
                                    weight_decay=cfg.weight_decay, nesterov=cfg.nesterov)
    if cfg.lr_schedule == "cosine":
        return optimizer, torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, float(cfg.epochs))
    return optimizer, torch.optim.lr_scheduler.StepLR(optimizer, 1, gamma=cfg.lr_gamma)


def _describe(logger, cfg, model, info, params, madds, device, d: Dist, on_device: bool,
              graphs: bool) -> None:
    """The log line of what is trained, how, on what."""
    logger.info("%s on %s (%d classes, %dpx): %.3fM parameters%s, "
                "%.1fM multiply-adds per image, device %s%s; %s loader, amp %s%s%s%s",
                type(model).__name__, cfg.dataset, info.num_classes, info.image_size,
                params / 1e6, _auxiliary_note(model, cfg, params), madds / 1e6, device,
                f" x {d.world_size} processes (batch {cfg.batch_size} each)" if d.enabled else "",
                "device-resident" if on_device else "DataLoader", cfg.amp,
                ", channels_last" if cfg.channels_last else "", ", compiled" if cfg.compile else "",
                ", CUDA graphs" if graphs else "")


def _train(cfg, genotype, info, train_set, test_set, device, run_dir, logger, ckpt, on_epoch_end,
           d: Dist, graphs: bool, claim: RunClaim, changed: dict[str, Any]):
    configure_cpu_threads(cfg.threads, logger.warning if device.type == "cpu" else None,
                          logger.info, adapt=cfg.adapt_threads)
    model = build_network(genotype, cfg, info.num_classes, info.network).to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    params = count_parameters(model)
    madds = count_multiply_adds(model, info.image_size)
    precision = Precision.from_flag(cfg.amp, device)
    optimizer, scheduler = _optimizer(cfg, model)
    criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smooth).to(device)
    eval_criterion = nn.CrossEntropyLoss().to(device)

    train_loader, test_loader, on_device = _loaders(cfg, info, train_set, test_set, device, d)

    start_epoch, history, best = _restore(cfg, genotype, run_dir, logger, ckpt, changed, d,
                                          model, optimizer, scheduler)
    _describe(logger, cfg, model, info, params, madds, device, d, on_device, graphs)
    net = model  # the module itself: drop-path probability, state dict
    compile_model(model, cfg.compile, logger.warning)
    if d.enabled:
        distributed.broadcast_state(model, d)
        model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)

    if start_epoch >= cfg.epochs:
        logger.info("%s already finished its %d epochs", run_dir, cfg.epochs)
        return json.loads((run_dir / "metrics.json").read_text())
    timer = EpochTimer(cfg.epochs, start_epoch)
    metrics: dict[str, Any] = {}
    for epoch in range(start_epoch, cfg.epochs):
        timer.start()
        lr = scheduler.get_last_lr()[0]
        net.drop_path_prob = cfg.drop_path_prob * epoch / cfg.epochs
        train = train_one_epoch(
            model, train_loader.epoch(epoch), optimizer, criterion, device,
            aux_weight=cfg.auxiliary_weight if cfg.auxiliary else 0.0, grad_clip=cfg.grad_clip,
            precision=precision, channels_last=cfg.channels_last,
            reduce=lambda m: distributed.reduce_meter(m, d), cuda_graph=graphs,
            log=logger.warning,
            progress=cfg.progress and d.is_main, desc=f"epoch {epoch + 1}/{cfg.epochs}")
        valid = evaluate(model, test_loader, eval_criterion, device, precision=precision,
                         channels_last=cfg.channels_last,
                         reduce=lambda m: distributed.reduce_meter(m, d), cuda_graph=graphs,
                         log=logger.warning, progress=cfg.progress and d.is_main)
        scheduler.step()
        dt = timer.stop()
        diverged(epoch, {"train_loss": train.loss, "valid_loss": valid.loss}, run_dir,
                 "lower --learning_rate, or keep --grad_clip on")
        if valid.top1 > best["top1"]:
            best = {"top1": valid.top1, "top5": valid.top5, "epoch": epoch + 1}
        record = {"epoch": epoch + 1, "lr": lr, "drop_path_prob": net.drop_path_prob,
                  "train_loss": train.loss, "train_top1": train.top1, "train_top5": train.top5,
                  "valid_loss": valid.loss, "valid_top1": valid.top1, "valid_top5": valid.top5,
                  "epoch_time_s": dt}
        history.append(record)
        logger.scalars({**train.as_dict("train"), **valid.as_dict("valid"), "lr": lr,
                        "drop_path_prob": net.drop_path_prob}, epoch + 1)
        logger.info("epoch %d/%d train_loss %.4f train_top1 %.2f valid_loss %.4f valid_top1 %.2f "
                    "valid_top5 %.2f lr %.5f time %.1fs eta %s", epoch + 1, cfg.epochs, train.loss,
                    train.top1, valid.loss, valid.top1, valid.top5, lr, dt,
                    format_duration(timer.eta()))
        state = {
            "kind": "final", "epoch": epoch + 1, "config": to_dict(cfg),
            "genotype": genotype.to_dict(), "model": net.state_dict(),
            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "history": history, "best": best, "rng": rng_state(),
        }
        metrics = _final_metrics(cfg, info, epoch, valid, best, params, madds, history)
        if d.is_main:
            claim.check()
            save_checkpoint(state, run_dir / "checkpoint.pt")
            save_json(metrics, run_dir / "metrics.json")
            logger.flush()
        distributed.barrier(d)
        if on_epoch_end is not None:
            on_epoch_end(epoch + 1, metrics)
    logger.info("done: final top1 %.2f, best top1 %.2f (epoch %d); %s",
                metrics.get("final", {}).get("top1", float("nan")), best["top1"], best["epoch"],
                run_dir / "metrics.json")
    return metrics


def _restore(cfg, genotype, run_dir, logger, ckpt, changed, d: Dist, model, optimizer,
             scheduler) -> tuple[int, list, dict]:
    """(epochs done, records, best) from the checkpoint; a new run writes its config, its
    candidate's file and picture instead."""
    if ckpt is None:
        if d.is_main:
            save_json(to_dict(cfg), run_dir / "config.json")
            logger.config(to_dict(cfg))
            space = get_space(cfg.space)
            space.save(genotype, run_dir / space.final.saved_as)
            logger.info("%s %s: %s", space.final.noun,
                        cfg.genotype if cfg.arch is None else cfg.arch, genotype)
            logger.info("run directory %s", run_dir)
            draw_cells(genotype, logger, 0, run_dir, graphs=getattr(space, "graphs", None))
        return 0, [], {"top1": -1.0, "epoch": -1}

    def load() -> tuple[int, list, dict]:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        set_rng_state(ckpt["rng"])
        return (*epoch_history(ckpt), dict(ckpt["best"]))

    start_epoch, history, best = restore(run_dir, load)
    logger.info("resumed %s at epoch %d/%d", run_dir, start_epoch, cfg.epochs)
    if "learning_rate" in changed:
        change_base_lr(optimizer, scheduler, cfg.learning_rate)
    for k, v in changed.items():
        logger.info("resumed with --%s %s (was %s)", k, v, ckpt["config"].get(k))
    if changed and d.is_main:
        save_json(to_dict(cfg), run_dir / "config.json")
    return start_epoch, history, best


def _final_metrics(cfg, info, epoch: int, valid, best: dict, params: int, madds: float,
                   history: list) -> dict[str, Any]:
    """metrics.json after epoch `epoch` (0-based)."""
    return {
        "complete": epoch + 1 == cfg.epochs, "dataset": cfg.dataset,
        "genotype": cfg.genotype if cfg.arch is None else cfg.arch,
        "epochs_done": epoch + 1, "epochs": cfg.epochs,
        "final": {"top1": valid.top1, "top5": valid.top5, "loss": valid.loss},
        "best": best, "params": params, "params_M": round(params / 1e6, 6),
        "multiply_adds": madds, "multiply_adds_M": round(madds / 1e6, 3),
        "image_size": info.image_size, "train_time_s": sum(r["epoch_time_s"] for r in history),
    }


def main(argv: list[str] | None = None) -> int:
    """`train_final.py` and `darts-final`: flags -> FinalConfig -> `run`; the exit status."""
    return cli.main(FinalConfig, run,
                    "Retrain a DARTS genotype from scratch (the paper's recipe by default).",
                    "run", argv)
