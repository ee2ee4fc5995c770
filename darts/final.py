"""Final training: retrain a genotype from scratch with the paper's recipe (Section 3.3).

CIFAR (Liu et al. 2019, Section A.2): 36 channels, 20 cells, batch 96, SGD lr 0.025 with
cosine annealing, momentum 0.9, weight decay 3e-4, 600 epochs, auxiliary towers of weight
0.4, cutout 16, path dropout 0.2 ramped linearly, gradient norm clipped at 5.
ImageNet mobile setting (Section 3.4): 48 channels, 14 cells, batch 128, lr 0.1 decayed by
0.97 every epoch, label smoothing 0.1, weight decay 3e-5, 250 epochs, auxiliary weight 0.4.

A field left at None takes the recipe of the network family the dataset uses: CIFAR-10/100
and small `folder`/`synthetic` images use the CIFAR recipe, ImageNet and large images the
ImageNet one. `config.json` records the resolved values.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from darts.checkpoint import (
    load_checkpoint,
    new_run_dir,
    rng_state,
    run_dir_of,
    save_checkpoint,
    seed_everything,
    set_rng_state,
)
from darts.config import config_from_dict, to_dict
from darts.data import DATASETS, build_datasets, make_loader, network_family
from darts.engine import evaluate, pick_device, train_one_epoch
from darts.errors import UserError
from darts.files import save_json
from darts.genotype import Genotype, genotype_from_dict, resolve_genotype, save_genotype
from darts.network import NetworkCIFAR, NetworkImageNet, count_multiply_adds, count_parameters
from darts.tb import EpochTimer, RunLogger, draw_cells, format_duration

CIFAR_RECIPE: dict[str, Any] = dict(
    init_channels=36, layers=20, batch_size=96, learning_rate=0.025, lr_schedule="cosine",
    momentum=0.9, weight_decay=3e-4, epochs=600, auxiliary=True, auxiliary_weight=0.4,
    cutout=True, cutout_length=16, drop_path_prob=0.2, grad_clip=5.0, label_smooth=0.0,
    lr_gamma=0.97,
)
IMAGENET_RECIPE: dict[str, Any] = dict(
    init_channels=48, layers=14, batch_size=128, learning_rate=0.1, lr_schedule="step",
    momentum=0.9, weight_decay=3e-5, epochs=250, auxiliary=True, auxiliary_weight=0.4,
    cutout=False, cutout_length=16, drop_path_prob=0.0, grad_clip=5.0, label_smooth=0.1,
    lr_gamma=0.97,
)
RECIPES = {"cifar": CIFAR_RECIPE, "imagenet": IMAGENET_RECIPE}


def _f(help: str, **meta: Any) -> dict[str, Any]:
    return {"help": help, **meta}


@dataclass
class FinalConfig:
    genotype: str = field(default="darts_v2", metadata=_f(
        "a genotype JSON file or a published name from genotypes/ (e.g. darts_v2, pdarts)"))
    dataset: str = field(default="cifar10", metadata=_f("dataset", choices=DATASETS))
    data: str = field(default="data", metadata=_f(
        "dataset root: CIFAR is read from (or downloaded into) it; imagenet/folder: a folder with train/ and val/ (or test/)"))
    # The recipe: None means the paper's value for the dataset's network family.
    batch_size: int | None = field(default=None, metadata=_f("batch size (CIFAR 96, ImageNet 128)"))
    learning_rate: float | None = field(default=None, metadata=_f("initial learning rate (CIFAR 0.025, ImageNet 0.1)"))
    lr_schedule: str | None = field(default=None, metadata=_f(
        "cosine (to 0 over the epochs; CIFAR) or step (x lr_gamma per epoch; ImageNet)", choices=("cosine", "step")))
    lr_gamma: float | None = field(default=None, metadata=_f("per-epoch decay of the step schedule (0.97)"))
    momentum: float | None = field(default=None, metadata=_f("SGD momentum (0.9)"))
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
    # Run options.
    seed: int = field(default=0, metadata=_f("random seed"))
    save: str = field(default="runs", metadata=_f("parent folder of the run directory"))
    name: str | None = field(default=None, metadata=_f("run directory name (default: final-<dataset>-<genotype>-<time>)"))
    device: str = field(default="auto", metadata=_f("cpu, cuda, cuda:N or auto"))
    progress: bool = field(default=True, metadata=_f("progress bar per epoch (when stdout is a terminal)"))
    tensorboard: bool = field(default=True, metadata=_f("TensorBoard event files in the run directory"))

    def resolved(self, network: str) -> FinalConfig:
        """A copy whose recipe fields left at None take the paper's values for `network`."""
        recipe = RECIPES[network]
        values = {k: (recipe[k] if getattr(self, k) is None else getattr(self, k)) for k in recipe}
        return dataclasses.replace(self, **values)


def validate(cfg: FinalConfig) -> None:
    checks = [
        ("epochs", cfg.epochs is not None and cfg.epochs >= 1, "at least 1"),
        ("batch_size", cfg.batch_size is not None and cfg.batch_size >= 1, "at least 1"),
        ("layers", cfg.layers is not None and cfg.layers >= 3, "at least 3 (two of them are reduction cells)"),
        ("init_channels", cfg.init_channels is not None and cfg.init_channels >= 2 and cfg.init_channels % 2 == 0,
         "an even number >= 2"),
        ("learning_rate", cfg.learning_rate is not None and cfg.learning_rate > 0, "positive"),
        ("drop_path_prob", cfg.drop_path_prob is not None and 0 <= cfg.drop_path_prob < 1, "in [0, 1)"),
        ("label_smooth", cfg.label_smooth is not None and 0 <= cfg.label_smooth < 1, "in [0, 1)"),
        ("workers", cfg.workers >= 0, "0 or more"),
        ("synthetic_size", cfg.synthetic_size >= 1, "at least 1"),
    ]
    for flag, ok, need in checks:
        if not ok:
            raise UserError(f"--{flag} {getattr(cfg, flag)}: must be {need}")


def build_network(genotype: Genotype, cfg: FinalConfig, num_classes: int, network: str) -> nn.Module:
    cls = NetworkCIFAR if network == "cifar" else NetworkImageNet
    return cls(cfg.init_channels, num_classes, cfg.layers, cfg.auxiliary, genotype)


def run(cfg: FinalConfig, *, resume: str | None = None,
        on_epoch_end: Callable[[int, dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Trains the genotype; returns the metrics written to metrics.json.

    `resume` is a run directory (or its checkpoint.pt): the run continues there with the
    config it was started with. `on_epoch_end(epoch, metrics)` is called after each
    epoch's checkpoint is written.
    """
    ckpt = None
    if resume is not None:
        ckpt = load_checkpoint(resume)
        cfg = config_from_dict(FinalConfig, ckpt["config"], where=str(resume))
        genotype = genotype_from_dict(ckpt["genotype"], where=f"{resume} (genotype)")
        run_dir = run_dir_of(resume)
    else:
        genotype = resolve_genotype(cfg.genotype)

    device = pick_device(cfg.device)
    seed_everything(cfg.seed)
    cfg = cfg.resolved(network_family(cfg.dataset, cfg.image_size))
    validate(cfg)
    train_set, test_set, info = build_datasets(
        cfg.dataset, cfg.data, cutout_length=cfg.cutout_length if cfg.cutout else 0,
        image_size=cfg.image_size, num_classes=cfg.num_classes,
        synthetic_size=cfg.synthetic_size, seed=cfg.seed)

    if ckpt is None:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        gname = Path(cfg.genotype).stem if cfg.genotype.endswith(".json") else cfg.genotype
        run_dir = new_run_dir(cfg.save, cfg.name or f"final-{cfg.dataset}-{gname}-{stamp}")
    logger = RunLogger(run_dir, tensorboard=cfg.tensorboard, name="final")
    try:
        return _train(cfg, genotype, info, train_set, test_set, device, run_dir, logger, ckpt,
                      on_epoch_end)
    finally:
        logger.close()


def _train(cfg, genotype, info, train_set, test_set, device, run_dir, logger, ckpt, on_epoch_end):
    model = build_network(genotype, cfg, info.num_classes, info.network).to(device)
    params = count_parameters(model)
    madds = count_multiply_adds(model, info.image_size)
    optimizer = torch.optim.SGD(model.parameters(), cfg.learning_rate, momentum=cfg.momentum,
                                weight_decay=cfg.weight_decay)
    if cfg.lr_schedule == "cosine":
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, float(cfg.epochs))
    else:
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, 1, gamma=cfg.lr_gamma)
    criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smooth).to(device)
    eval_criterion = nn.CrossEntropyLoss().to(device)

    # The loader's own generator orders the epochs and seeds its workers; it is checkpointed.
    loader_rng = torch.Generator()
    loader_rng.manual_seed(cfg.seed)
    pin = device.type == "cuda"
    train_loader = make_loader(train_set, cfg.batch_size, shuffle=True, workers=cfg.workers,
                               generator=loader_rng, pin_memory=pin)
    test_loader = make_loader(test_set, cfg.batch_size, shuffle=False, workers=cfg.workers,
                              pin_memory=pin)

    start_epoch, history, best = 0, [], {"top1": -1.0, "epoch": -1}
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        start_epoch, history, best = ckpt["epoch"], ckpt["history"], ckpt["best"]
        loader_rng.set_state(ckpt["loader_rng"])
        set_rng_state(ckpt["rng"])
        logger.info("resumed %s at epoch %d/%d", run_dir, start_epoch, cfg.epochs)
    else:
        save_json(to_dict(cfg), run_dir / "config.json")
        save_genotype(genotype, run_dir / "genotype.json")
        logger.config(to_dict(cfg))
        logger.info("genotype %s: %s", cfg.genotype, genotype)
        logger.info("run directory %s", run_dir)
        draw_cells(genotype, logger, 0, run_dir)
    logger.info("%s on %s (%d classes, %dpx): %.3fM parameters (no auxiliary head), "
                "%.1fM multiply-adds per image, device %s", type(model).__name__,
                cfg.dataset, info.num_classes, info.image_size, params / 1e6,
                madds / 1e6, device)

    if start_epoch >= cfg.epochs:
        logger.info("%s already finished its %d epochs", run_dir, cfg.epochs)
        return json.loads((run_dir / "metrics.json").read_text())
    timer = EpochTimer(cfg.epochs, start_epoch)
    metrics: dict[str, Any] = {}
    for epoch in range(start_epoch, cfg.epochs):
        timer.start()
        lr = scheduler.get_last_lr()[0]
        model.drop_path_prob = cfg.drop_path_prob * epoch / cfg.epochs
        train = train_one_epoch(
            model, train_loader, optimizer, criterion, device,
            aux_weight=cfg.auxiliary_weight if cfg.auxiliary else 0.0, grad_clip=cfg.grad_clip,
            progress=cfg.progress, desc=f"epoch {epoch + 1}/{cfg.epochs}")
        valid = evaluate(model, test_loader, eval_criterion, device, progress=cfg.progress)
        scheduler.step()
        dt = timer.stop()
        if not math.isfinite(train.loss):
            raise UserError(f"training diverged at epoch {epoch + 1} (loss {train.loss}); "
                            f"lower --learning_rate or keep --grad_clip on")
        if valid.top1 > best["top1"]:
            best = {"top1": valid.top1, "top5": valid.top5, "epoch": epoch + 1}
        record = {"epoch": epoch + 1, "lr": lr, "drop_path_prob": model.drop_path_prob,
                  "train_loss": train.loss, "train_top1": train.top1, "train_top5": train.top5,
                  "valid_loss": valid.loss, "valid_top1": valid.top1, "valid_top5": valid.top5,
                  "epoch_time_s": dt}
        history.append(record)
        logger.scalars({**train.as_dict("train"), **valid.as_dict("valid"), "lr": lr,
                        "drop_path_prob": model.drop_path_prob}, epoch + 1)
        logger.info("epoch %d/%d train_loss %.4f train_top1 %.2f valid_loss %.4f valid_top1 %.2f "
                    "valid_top5 %.2f lr %.5f time %.1fs eta %s", epoch + 1, cfg.epochs, train.loss,
                    train.top1, valid.loss, valid.top1, valid.top5, lr, dt,
                    format_duration(timer.eta()))
        save_checkpoint({
            "kind": "final", "epoch": epoch + 1, "config": to_dict(cfg),
            "genotype": genotype.to_dict(), "model": model.state_dict(),
            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "history": history, "best": best, "rng": rng_state(),
            "loader_rng": loader_rng.get_state(),
        }, run_dir / "checkpoint.pt")
        metrics = {
            "complete": epoch + 1 == cfg.epochs, "dataset": cfg.dataset, "genotype": cfg.genotype,
            "epochs_done": epoch + 1, "epochs": cfg.epochs,
            "final": {"top1": valid.top1, "top5": valid.top5, "loss": valid.loss},
            "best": best, "params": params, "params_M": round(params / 1e6, 6),
            "multiply_adds": madds, "multiply_adds_M": round(madds / 1e6, 3),
            "image_size": info.image_size, "train_time_s": sum(r["epoch_time_s"] for r in history),
        }
        save_json(metrics, run_dir / "metrics.json")
        logger.flush()
        if on_epoch_end is not None:
            on_epoch_end(epoch + 1, metrics)
    logger.info("done: final top1 %.2f, best top1 %.2f (epoch %d); %s",
                metrics.get("final", {}).get("top1", float("nan")), best["top1"], best["epoch"],
                run_dir / "metrics.json")
    return metrics
