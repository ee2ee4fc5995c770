"""The `oneshot` evaluator: every candidate scored in the weights of one shared supernet.

Random search with weight sharing (Li & Talwalkar 2019) and Single Path One-Shot (SPOS, Guo
et al. 2020) separate training from search. The supernet is trained once: each SGD step
draws one candidate uniformly from the space (`space.sample`) and runs only that candidate's
ops (one op per edge, `forward_path`), so a step moves only the weights on that path, plus
the stem, the reductions and the classifier that every path shares. Afterwards a candidate
costs two short passes in the shared weights, again running only its ops:

1. BatchNorm recalibration (SPOS): the running statistics of every BatchNorm are reset, then
   `bn_batches` fixed training batches go through the candidate in training mode, without
   gradients, with momentum None. Each BatchNorm then holds the plain average of its batch
   means and of its batch variances for this candidate, not the statistics of the mixture
   of paths that training left behind.
2. Scoring: top-1 accuracy in % on `valid_batches` fixed held-out batches in eval mode.

The score is also what `reported` holds: the one-shot model has no separate test figure. The
`cost` is the wall time of those two passes. Training the supernet is not in it;
`train_seconds` holds that time. Every candidate sees the same batches, and the score is a
function of the trained weights and the candidate alone, so scoring one again, or after a
resume, gives the same number.

Defaults follow the papers' code for each space (its `ONESHOT_DEFAULTS`). For NAS-Bench-201 that
is its random search with parameter sharing (AutoDL-Projects: configs/nas-benchmark/algos/
RANDOM.config, exps/algos/RANDOM-NAS.py): 250 epochs, batch 64, SGD 0.025 cosine to 0.001,
momentum 0.9, Nesterov, weight decay 5e-4, gradient clip 5, C = 16, N = 5. For the DARTS cell
it is Li & Talwalkar's released code (liamcli/randomNAS_release): the DARTS search recipe (8
cells of 16 channels, batch 64, SGD 0.025 cosine to 0.001, momentum 0.9, weight decay 3e-4)
for 100 epochs (the default of random_weight_share.py), with DARTS's gradient clip 5 (their
stage-1 script passes `--grad_clip 1`). Both train on one half of the training set and score
on the other. Li & Talwalkar score a candidate on 10 validation batches (`valid_batches=10`).
SPOS recalibrates BatchNorm on 20,000 ImageNet images; the default here is 100 batches (6,400
images at batch 64). `init_channels`, `layers` and `epochs` make the supernet small enough
for a CPU.

The trained supernet is written to `path` after every epoch (atomically, with its optimizer
and schedule). A new evaluator with the same settings loads it and trains only the epochs
that are missing, so a resumed search never trains twice. A file written with other settings
is refused, with one message naming it.
"""

from __future__ import annotations

import copy
import itertools
import logging
import math
import random
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
import torch.nn as nn
from torch.utils.data import Dataset, Subset

from darts.errors import UserError
from darts.evaluators.base import Evaluation
from darts.train.data import SplitLoader, build_datasets, pass_seed, search_split
from darts.train.engine import channels_last_on, evaluate, pick_device, to_device, train_one_epoch
from darts.train.files import atomic_open
from darts.train.tb import format_duration

# The random streams of a run (darts.train.data.pass_seed): training batches, the candidates
# drawn in training, and the fixed recalibration and validation batches.
_TRAIN_STREAM, _CANDIDATE_STREAM, _BN_STREAM, _VALID_STREAM = 0, 1, 2, 3
_KIND = "oneshot"


class _SinglePath(nn.Module):
    """One candidate of a supernet as a network of its own (what `evaluate` runs)."""

    def __init__(self, supernet: nn.Module, candidate: Any):
        super().__init__()
        self.supernet, self.candidate = supernet, candidate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.supernet.forward_path(x, self.candidate)


class OneShotEvaluator:
    """Scores candidates of `space` (a space module) in a supernet trained once by uniform
    single-path sampling on `train_data`; `evaluator(candidate)` returns an `Evaluation`.

    `train_data` trains the supernet's weights (with its augmentation); `valid_data`
    scores candidates; `bn_data` (default: `train_data`; `from_dataset` passes the training
    half without augmentation) recalibrates BatchNorm. `supernet` is the space's (its `supernet(...)`,
    built with `num_classes`, `init_channels` and `layers`, accelerated like the search's)
    unless one is given: any module with `forward_path(x, candidate)` and
    `network_parameters()`. Arguments left at None take the space's defaults
    (its `ONESHOT_DEFAULTS`). `valid_batches=None` scores on the whole of `valid_data`;
    `bn_batches=0` keeps the running statistics of training (as Li & Talwalkar score).
    `path`: where the trained supernet is kept (see the module docstring). `log` hears one
    line per epoch (default: the `darts.oneshot` logger).
    """

    def __init__(self, space: ModuleType, train_data: Dataset, valid_data: Dataset, *,
                 num_classes: int | None = None, supernet: nn.Module | None = None,
                 bn_data: Dataset | None = None, init_channels: int = 16,
                 layers: int | None = None, epochs: int | None = None, batch_size: int = 64,
                 learning_rate: float = 0.025, learning_rate_min: float = 0.001,
                 momentum: float = 0.9, weight_decay: float | None = None,
                 nesterov: bool | None = None, grad_clip: float = 5.0,
                 bn_batches: int = 100, valid_batches: int | None = 10, seed: int = 0,
                 device: str | torch.device = "auto", path: str | Path | None = None,
                 workers: int = 0, channels_last: bool | None = None, progress: bool = True,
                 log: Callable[[str], None] | None = None):
        name = getattr(space, "NAME", None)
        defaults = getattr(space, "ONESHOT_DEFAULTS", {})
        if supernet is None and not hasattr(space, "supernet"):
            raise UserError(f"the oneshot evaluator scores candidates in a supernet, and space "
                            f"{name!r} has none (a space's `supernet(num_classes, channels, "
                            f"layers)`)")

        def pick(value: Any, key: str, fallback: Any) -> Any:
            return value if value is not None else defaults.get(key, fallback)

        self.space = space
        self.epochs = pick(epochs, "epochs", 50)
        self.batch_size = batch_size
        self.learning_rate, self.learning_rate_min = learning_rate, learning_rate_min
        self.momentum = momentum
        self.weight_decay = pick(weight_decay, "weight_decay", 3e-4)
        self.nesterov = pick(nesterov, "nesterov", False)
        self.grad_clip = grad_clip
        self.bn_batches, self.valid_batches = bn_batches, valid_batches
        self.seed = seed
        self.path = Path(path) if path is not None else None
        self.workers, self.progress = workers, progress
        self.log = log or logging.getLogger("darts.oneshot").info
        checks = [("epochs", self.epochs, self.epochs >= 0, "0 or more"),
                  ("batch_size", batch_size, batch_size >= 1, "at least 1"),
                  ("learning_rate", learning_rate, learning_rate > 0, "positive"),
                  ("learning_rate_min", learning_rate_min,
                   0 <= learning_rate_min <= learning_rate, "in [0, learning_rate]"),
                  ("momentum", momentum, 0 <= momentum < 1, "in [0, 1)"),
                  ("weight_decay", self.weight_decay, self.weight_decay >= 0, "0 or more"),
                  ("grad_clip", self.grad_clip, self.grad_clip >= 0, "0 (off) or more"),
                  ("bn_batches", bn_batches, bn_batches >= 0, "0 (no recalibration) or more"),
                  ("valid_batches", valid_batches, valid_batches is None or valid_batches >= 1,
                   "at least 1 (or None: all)"),
                  ("train_data", f"{len(train_data)} images", len(train_data) >= 1, "non-empty"),
                  ("valid_data", f"{len(valid_data)} images", len(valid_data) >= 1, "non-empty")]
        for what, value, ok, need in checks:
            if not ok:
                raise UserError(f"oneshot evaluator: {what} ({value}) must be {need}")
        if self.nesterov and momentum == 0:
            raise UserError("oneshot evaluator: Nesterov momentum needs momentum > 0")
        self.train_data, self.valid_data = train_data, valid_data
        self.bn_data = bn_data if bn_data is not None else train_data

        self.device = pick_device(device) if isinstance(device, str) else device
        self.channels_last = channels_last_on(channels_last, self.device)
        if supernet is None:
            if num_classes is None:
                raise ValueError("num_classes is needed to build the supernet")
            from darts.accel import accelerate
            # Its initial weights are a function of the seed alone, as in every other run.
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                supernet = accelerate(space.supernet(num_classes, init_channels,
                                                     pick(layers, "layers", 8)))
        self.supernet = supernet.to(self.device)
        if self.channels_last:
            self.supernet = self.supernet.to(memory_format=torch.channels_last)
        self.criterion = nn.CrossEntropyLoss()
        self.optimizer = torch.optim.SGD(self.supernet.network_parameters(), learning_rate,
                                         momentum=momentum, weight_decay=self.weight_decay,
                                         nesterov=self.nesterov)
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
            self.optimizer, float(max(self.epochs, 1)), eta_min=learning_rate_min)
        self.history: list[dict[str, Any]] = []  # one record per epoch of supernet training
        self.train_seconds = 0.0
        self.trained = False
        self._bn_cache: list[torch.Tensor] | None = None
        self._valid_cache: list[tuple[torch.Tensor, torch.Tensor]] | None = None

    @classmethod
    def from_dataset(cls, space: ModuleType, dataset: str = "cifar10", data: str = "data", *,
                     train_portion: float = 0.5, image_size: int | None = None,
                     num_classes: int | None = None, synthetic_size: int = 5000, seed: int = 0,
                     **options: Any) -> OneShotEvaluator:
        """The evaluator of a named data set (as `darts.train.data.build_datasets` reads it),
        split as the search splits it (`search_split`): `train_portion` of the training
        images train the supernet (augmented) and recalibrate BatchNorm (not augmented), the
        rest score candidates (not augmented). The test set is never seen. `options` go to
        the constructor."""
        train_set, test_set, info = build_datasets(dataset, data, image_size=image_size,
                                                   num_classes=num_classes,
                                                   synthetic_size=synthetic_size, seed=seed)
        plain = copy.copy(train_set)  # the same images, with the test set's transform
        plain.transform = test_set.transform
        train_idx, held_idx = search_split(len(train_set), train_portion, seed)
        return cls(space, Subset(train_set, train_idx.tolist()), Subset(plain, held_idx.tolist()),
                   bn_data=Subset(plain, train_idx.tolist()), num_classes=info.num_classes,
                   seed=seed, **options)

    # -- training ------------------------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        """What the trained weights depend on: a saved supernet is used only where it matches."""
        return {"space": getattr(self.space, "NAME", None),
                "supernet": type(self.supernet).__name__,
                "weights": sum(p.numel() for p in self.supernet.network_parameters()),
                "epochs": self.epochs, "batch_size": self.batch_size,
                "learning_rate": self.learning_rate, "learning_rate_min": self.learning_rate_min,
                "momentum": self.momentum, "weight_decay": self.weight_decay,
                "nesterov": self.nesterov, "grad_clip": self.grad_clip, "seed": self.seed,
                "train_images": len(self.train_data)}

    def train(self) -> list[dict[str, Any]]:
        """Trains the supernet (or loads it from `path`, training any epochs missing there);
        returns the per-epoch history. Runs once; `__call__` calls it first."""
        if self.trained:
            return self.history
        start = self._load()
        model = self.supernet
        if start < self.epochs:
            n = sum(p.numel() for p in model.network_parameters())
            self.log(f"oneshot: training {type(model).__name__} ({n / 1e6:.3f}M weights) on "
                     f"{len(self.train_data)} images, epochs {start + 1}-{self.epochs} of "
                     f"{self.epochs}, one uniformly sampled candidate per step")
        loader = SplitLoader(self.train_data, torch.arange(len(self.train_data)),
                             self.batch_size, seed=self.seed, stream=_TRAIN_STREAM,
                             workers=self.workers, pin_memory=self.device.type == "cuda")
        for epoch in range(start, self.epochs):
            t0 = time.perf_counter()
            # The candidates of an epoch come from its own seed: a resumed run draws the same.
            rng = random.Random(pass_seed(self.seed, _CANDIDATE_STREAM, epoch))
            lr = self.scheduler.get_last_lr()[0]
            metrics = train_one_epoch(
                model, loader.epoch(epoch), self.optimizer, self.criterion, self.device,
                grad_clip=self.grad_clip,
                forward=lambda x, rng=rng: model.forward_path(x, self.space.sample(rng)),
                channels_last=self.channels_last, log=self.log, progress=self.progress,
                desc=f"supernet epoch {epoch + 1}/{self.epochs}")
            self.scheduler.step()
            if not math.isfinite(metrics.loss):
                raise UserError(f"oneshot: the supernet's training diverged at epoch "
                                f"{epoch + 1} (loss {metrics.loss}); lower the learning rate")
            dt = time.perf_counter() - t0
            self.train_seconds += dt
            self.history.append({"epoch": epoch + 1, "lr": lr, "train_loss": metrics.loss,
                                 "train_top1": metrics.top1, "epoch_time_s": dt})
            self._save(epoch + 1)
            eta = dt * (self.epochs - epoch - 1)
            self.log(f"oneshot supernet epoch {epoch + 1}/{self.epochs} train_loss "
                     f"{metrics.loss:.4f} train_top1 {metrics.top1:.2f} lr {lr:.5f} "
                     f"time {dt:.1f}s eta {format_duration(eta)}")
        self.trained = True
        return self.history

    def _save(self, epoch: int) -> None:
        if self.path is None:
            return
        state = {"kind": _KIND, "config": self.config(), "epoch": epoch,
                 "model": self.supernet.state_dict(), "optimizer": self.optimizer.state_dict(),
                 "scheduler": self.scheduler.state_dict(), "history": self.history,
                 "train_seconds": self.train_seconds}
        with atomic_open(self.path) as f:
            torch.save(state, f)

    def _load(self) -> int:
        """Restores a supernet saved at `path`; returns the epochs it has been trained."""
        if self.path is None or not self.path.exists():
            return 0
        where = f"oneshot supernet {self.path}"
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                state = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as e:  # truncated, corrupt, not a torch file, or not plain data
            reason = " ".join(str(e).split())[:120] or type(e).__name__
            raise UserError(f"{where}: not a readable supernet file ({type(e).__name__}: "
                            f"{reason}); nothing of it was run or loaded; delete it to train "
                            f"the supernet anew") from None
        if not isinstance(state, dict) or state.get("kind") != _KIND:
            raise UserError(f"{where}: not a oneshot supernet file; delete it or choose another")
        mine = self.config()
        theirs = state.get("config")
        if theirs != mine:
            diff = sorted(k for k in mine if not isinstance(theirs, dict) or theirs.get(k) != mine[k])
            shown = ", ".join(f"{k} {theirs.get(k) if isinstance(theirs, dict) else None!r} "
                              f"(now {mine[k]!r})" for k in diff)
            raise UserError(f"{where}: trained with other settings ({shown}); use the same "
                            f"settings, or delete the file to train the supernet anew")
        try:
            self.supernet.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            epoch = int(state["epoch"])
            self.history = list(state["history"])
            self.train_seconds = float(state["train_seconds"])
        except (KeyError, TypeError, ValueError, RuntimeError) as e:
            reason = " ".join(str(e).split())[:160] or type(e).__name__
            raise UserError(f"{where}: does not fit this supernet ({type(e).__name__}: "
                            f"{reason}); delete it to train the supernet anew") from None
        if epoch >= self.epochs:
            self.log(f"oneshot: loaded the supernet trained for {epoch} epochs from {self.path}")
        else:
            self.log(f"oneshot: resuming the supernet's training at epoch {epoch + 1}/"
                     f"{self.epochs} from {self.path}")
        return epoch

    # -- scoring -------------------------------------------------------------------------------
    def _fixed_batches(self, data: Dataset, batches: int | None, stream: int) -> list:
        """The first `batches` batches (all where None) of one seeded order of `data`, on the
        device: the same for every candidate."""
        loader = SplitLoader(data, torch.arange(len(data)), self.batch_size, seed=self.seed,
                             stream=stream, workers=self.workers).epoch(0)
        return [to_device(x, y, self.device, self.channels_last)
                for x, y in itertools.islice(loader, batches)]

    def recalibration_batches(self) -> list[torch.Tensor]:
        """The inputs that recompute a candidate's BatchNorm statistics (cached)."""
        if self._bn_cache is None:
            batches = self._fixed_batches(self.bn_data, self.bn_batches, _BN_STREAM)
            # Each batch counts once in the average: a last, smaller one would count too much.
            if len(batches) > 1 and len(batches[-1][1]) < self.batch_size:
                batches.pop()
            self._bn_cache = [x for x, _ in batches] if self.bn_batches else []
        return self._bn_cache

    def validation_batches(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The (images, labels) batches that score a candidate (cached)."""
        if self._valid_cache is None:
            self._valid_cache = self._fixed_batches(self.valid_data, self.valid_batches,
                                                    _VALID_STREAM)
        return self._valid_cache

    @torch.no_grad()
    def recalibrate(self, candidate: Any) -> None:
        """Every BatchNorm's running statistics recomputed for `candidate` alone: reset, then
        the cumulative average (momentum None) over the recalibration batches, run through
        the candidate's ops in training mode. BatchNorms off its path keep the reset values."""
        if not self.bn_batches:
            return
        norms = [m for m in self.supernet.modules()
                 if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
        momenta = [m.momentum for m in norms]
        for m in norms:
            m.reset_running_stats()
            m.momentum = None
        self.supernet.train()
        try:
            for x in self.recalibration_batches():
                self.supernet.forward_path(x, candidate)
        finally:
            for m, momentum in zip(norms, momenta, strict=True):
                m.momentum = momentum
            self.supernet.eval()

    def __call__(self, candidate: Any) -> Evaluation:
        """The candidate's top-1 validation accuracy (%) in the shared weights, after its
        BatchNorm recalibration; `reported` is the same number; `cost` the seconds of the
        recalibration and scoring (the supernet's training, on the first call, excluded)."""
        self.train()
        self.recalibration_batches()
        valid = self.validation_batches()
        t0 = time.perf_counter()
        self.recalibrate(candidate)
        metrics = evaluate(_SinglePath(self.supernet, candidate), valid, self.criterion,
                           self.device, channels_last=self.channels_last)
        cost = time.perf_counter() - t0
        return Evaluation(score=metrics.top1, reported=metrics.top1, cost=cost)


def from_search_config(cfg: Any, space: ModuleType, run_dir: str | Path,
                       logger: Any = None) -> OneShotEvaluator:
    """The evaluator of a multi-trial run (`train_search.py --evaluator oneshot`): the run's
    data set and split, its weight recipe (batch size, learning rates, momentum, weight decay,
    Nesterov, gradient clip, channels, cells, seed, device), the supernet kept as
    `run_dir/supernet.pt`. The supernet's epochs are `cfg.oneshot_epochs` where the config has
    them (None: the space's default), as are `bn_batches` and `valid_batches`."""
    options = {k: getattr(cfg, k) for k in ("bn_batches", "valid_batches") if hasattr(cfg, k)}
    return OneShotEvaluator.from_dataset(
        space, cfg.dataset, cfg.data, train_portion=cfg.train_portion,
        image_size=cfg.image_size, num_classes=cfg.num_classes,
        synthetic_size=cfg.synthetic_size, seed=cfg.seed,
        epochs=getattr(cfg, "oneshot_epochs", None), batch_size=cfg.batch_size,
        learning_rate=cfg.learning_rate, learning_rate_min=cfg.learning_rate_min,
        momentum=cfg.momentum, weight_decay=cfg.weight_decay, nesterov=cfg.nesterov,
        grad_clip=cfg.grad_clip, init_channels=cfg.init_channels, layers=cfg.layers,
        device=cfg.device, workers=cfg.workers, channels_last=cfg.channels_last,
        progress=cfg.progress, path=Path(run_dir) / "supernet.pt",
        log=logger.info if logger is not None else None, **options)
