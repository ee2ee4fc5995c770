"""The `train` evaluator: a candidate's score is its accuracy after a short training from scratch.

Each candidate (a NAS-Bench-201 cell, a plain CNN or a DARTS genotype) is built as the network
`train_final.py` would build (`darts.final.build_network`) and trained with the same engine
(`darts.train.engine.train_one_epoch` / `evaluate`, the seeded `SplitLoader`) for a few epochs:

- the default recipe is NAS-Bench-201's over 12 epochs, the schedule NATS-Bench trains every
  cell with for its cheap 12-epoch results (AutoDL-Projects
  configs/nas-benchmark/hyper-opts/12E.config): SGD lr 0.1, Nesterov momentum 0.9, weight
  decay 5e-4, cosine to 0 over the epochs (stepped per epoch, as train_final.py), batch 256,
  random crop and flip, no cutout, no auxiliary head, no drop path, no gradient clipping. A
  multi-trial run (`from_search_config`) passes its own weight recipe and `--eval_epochs`;
- the training set is split once, by the run's seed, into a part that trains and a held-out
  part that scores (`valid_portion` 0.5: NAS-Bench-201's cifar10-valid split, half and half);
  `train_images` first keeps a seeded random subset of the training set (a cheap proxy);
- the score is the top-1 accuracy in percent on the held-out part after the last epoch;
  `reported` is the top-1 accuracy on the data set's test split (`report="test"`, the
  benchmark evaluator's convention: a search selects on validation, reports test), or the
  score again (`report="valid"`, no extra pass);
- the network size: a plain CNN's is its spec's; a NAS-Bench-201 cell sits in the benchmark's
  network (`channels` 16, `layers` 5 cells per stage, as NATS-Bench's 12-epoch results); a
  DARTS genotype in the network DARTS searches with (16 channels, 8 cells; Liu et al. 2019,
  Section 3.1), without the auxiliary head. Smaller `channels`/`layers` make it cheaper.

Inherited weights (network morphism, darts.strategies.morphism): a candidate with a lineage
(`parent`, `parent_spec`, `edits`, `key`: a `Child`) starts from its parent's trained weights,
read from `weights_dir/<parent>.pt`, morphed by the space's `morph` edit by edit (function-
preserving; a deeper layer's BatchNorm calibrated on the candidate's first training batch),
then trains `epochs` epochs with a fresh cosine schedule. A parent not yet trained (the start
network) is trained from scratch first and kept; that training is in no evaluation's cost.
Every candidate with a `key` keeps its trained weights there (`weights_dir` None: nothing
inherited, nothing kept).

A candidate whose training diverges (a non-finite loss) scores 0 on both. `cost` is the
wall-clock seconds of building, training and scoring the candidate (data loading, done once per
process, is not in it).

Determinism: a candidate's training (initial weights, batch order, augmentation) is seeded by
`candidate_seed(seed, text)` alone, `text` being the candidate's canonical text (`str`, or the
space's `to_text`: what the run's history records), so the same candidate gets the same score
in any order, in any worker. On the CPU that is bit for bit when the torch threads per
evaluation are the same (`threads`; another thread count splits the convolutions' sums
differently, which can change the last digits and, rarely, a prediction). With `workers` > 1,
`evaluate_many` runs the candidates in that many spawned processes, each with `threads` torch
threads (default: the CPUs this process may use divided among the workers, at least 1); a
single call `evaluator(candidate)` runs here with the same thread count, so both give the same
scores. On a GPU, cuDNN's and atomic-add kernels may differ in the last digits from run to run.
The caller's random state is left as it was.
"""

from __future__ import annotations

import hashlib
import math
import multiprocessing
import time
import weakref
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
import torch.nn as nn
from torch.utils.data import Subset

from darts.errors import UserError
from darts.evaluators.base import Evaluation
from darts.train.data import DATASETS, SplitLoader, build_datasets, make_loader, pass_seed
from darts.train.engine import (
    available_cpus,
    channels_last_on,
    evaluate,
    pick_device,
    train_one_epoch,
    tune_malloc,
)
from darts.train.files import atomic_open

REPORTS = ("test", "valid")
# The stream of the run-level split of the training set (pass_seed's second word).
_SPLIT_STREAM = 7001


def candidate_text(space: ModuleType, candidate: Any) -> str:
    """The candidate's canonical text: the space's `to_text` where it has one (the darts
    space's), else `str`; what a run's history records."""
    return getattr(space, "to_text", str)(candidate)


def candidate_seed(seed: int, text: str) -> int:
    """The 63-bit training seed of the candidate whose text is `text` in a run seeded `seed`
    (sha256, not Python's `hash`, which differs between processes)."""
    digest = hashlib.sha256(f"{seed}\n{text}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


@dataclass(frozen=True)
class TrainSettings:
    """Everything a worker process needs to evaluate as this process does (picklable)."""

    space: str  # the space's registered name (darts.spaces.SPACES)
    plugins: str  # the --plugins a worker imports first (they may register the space, its ops)
    dataset: str
    data: str
    epochs: int
    batch_size: int
    learning_rate: float
    learning_rate_min: float
    momentum: float
    nesterov: bool
    weight_decay: float
    grad_clip: float
    valid_portion: float
    train_images: int | None
    image_size: int | None
    num_classes: int | None
    synthetic_size: int
    channels: int | None
    layers: int | None
    report: str
    seed: int
    threads: int
    device: str
    channels_last: bool | None
    weights_dir: str | None = None


class TrainEvaluator:
    """Scores candidates of `space` by training each from scratch (see the module's text).

        evaluator = TrainEvaluator(cnn, dataset="synthetic", epochs=2, workers=2)
        evaluator(candidate)                  # -> Evaluation(score, reported, cost)
        evaluator.evaluate_many(candidates)   # the same Evaluations, in parallel
        evaluator.close()                     # the worker processes (or `with TrainEvaluator(...)`)
    """

    def __init__(self, space: ModuleType, *, dataset: str = "cifar10", data: str = "data",
                 epochs: int = 12, batch_size: int = 256, learning_rate: float = 0.1,
                 learning_rate_min: float = 0.0, momentum: float = 0.9, nesterov: bool = True,
                 weight_decay: float = 5e-4, grad_clip: float = 0.0,
                 valid_portion: float = 0.5, train_images: int | None = None,
                 image_size: int | None = None, num_classes: int | None = None,
                 synthetic_size: int = 5000, channels: int | None = None,
                 layers: int | None = None, report: str = "test", seed: int = 0,
                 workers: int = 1, threads: int = 0, device: str = "auto",
                 channels_last: bool | None = None, plugins: str = "",
                 weights_dir: str | None = None):
        name = getattr(space, "NAME", None)
        if not hasattr(space, "network"):
            raise UserError(f"--space {name or space!r}: the train evaluator builds a space's "
                            f"networks with its `network(...)`, and this space has none")
        checks = [
            ("epochs", epochs, epochs >= 1, "at least 1"),
            ("batch_size", batch_size, batch_size >= 1, "at least 1"),
            ("learning_rate", learning_rate, learning_rate > 0, "positive"),
            ("learning_rate_min", learning_rate_min, 0 <= learning_rate_min <= learning_rate,
             f"in [0, --learning_rate {learning_rate}]"),
            ("momentum", momentum, 0 <= momentum < 1, "in [0, 1)"),
            ("weight_decay", weight_decay, weight_decay >= 0, "0 or more"),
            ("grad_clip", grad_clip, grad_clip >= 0, "0 (off) or more"),
            ("valid_portion", valid_portion, 0 < valid_portion < 1, "strictly between 0 and 1"),
            ("train_images", train_images, train_images is None or train_images >= 2,
             "at least 2 (one to train on, one to score)"),
            ("synthetic_size", synthetic_size, synthetic_size >= 2, "at least 2"),
            ("workers", workers, workers >= 1, "at least 1"),
            ("threads", threads, threads >= 0, "0 (the CPUs divided among the workers) or more"),
        ]
        for flag, value, ok, need in checks:
            if not ok:
                raise UserError(f"--{flag} {value}: must be {need}")
        for flag, value in (("learning_rate", learning_rate), ("momentum", momentum),
                            ("learning_rate_min", learning_rate_min),
                            ("weight_decay", weight_decay), ("grad_clip", grad_clip),
                            ("valid_portion", valid_portion)):
            if not math.isfinite(value):
                raise UserError(f"--{flag} {value}: must be a finite number")
        if nesterov and not momentum:
            raise UserError("--nesterov needs a momentum: give --momentum > 0 or --no-nesterov")
        if dataset not in DATASETS:
            raise UserError(f"--dataset {dataset}: choose one of {', '.join(DATASETS)}")
        if report not in REPORTS:
            raise UserError(f"--report {report}: choose one of {', '.join(REPORTS)} (the test "
                            f"split's accuracy, or the score again)")
        sizes = getattr(space, "NETWORK_SIZES", None)
        if sizes is None:
            for flag, value in (("channels", channels), ("layers", layers)):
                if value is not None:
                    raise UserError(f"--{flag}: a {name} candidate fixes its own widths and "
                                    f"depth; leave --{flag} out with --space {name}")
        else:
            channels = sizes[0] if channels is None else channels
            layers = sizes[1] if layers is None else layers
            if channels < 2 or channels % 2:
                raise UserError(f"--channels {channels}: must be an even number >= 2")
            least = getattr(space, "MIN_LAYERS", 1)
            if layers < least:
                raise UserError(f"--layers {layers}: must be at least {least} "
                                f"{getattr(space, 'LAYERS_NOUN', 'layers')}")
        pick_device(device)  # a device this machine lacks is refused now, not in a worker
        self.space, self.workers = space, workers
        threads = threads or max(1, available_cpus() // workers)
        self.settings = TrainSettings(
            name, plugins, dataset, data, epochs, batch_size, learning_rate,
            learning_rate_min, momentum, bool(nesterov), weight_decay, grad_clip, valid_portion,
            train_images, image_size, num_classes, synthetic_size, channels, layers, report, seed,
            threads, device, channels_last, None if weights_dir is None else str(weights_dir))
        self._loaded: dict[str, Any] | None = None
        self._pool = None
        self._finalizer: weakref.finalize | None = None

    # -- the public calls ---------------------------------------------------------------------
    def __call__(self, candidate: Any) -> Evaluation:
        """Trains `candidate` here, with the evaluator's thread count, and scores it."""
        with _torch_threads(self.settings.threads):
            return self._evaluate(candidate)

    def evaluate_many(self, candidates: list[Any]) -> list[Evaluation]:
        """The Evaluations of `candidates`, in their order: in `workers` processes when there
        are more than one and more than one candidate, else one after the other here."""
        candidates = list(candidates)
        if self.workers == 1 or len(candidates) <= 1:
            return [self(c) for c in candidates]
        self._data()  # a data set's download and its user errors happen once, here
        for c in candidates:  # a parent that several children need is trained once, here
            with _torch_threads(self.settings.threads):
                _ensure_parent(c, self.space, self.settings, self._data(),
                               pick_device(self.settings.device))
        return self._worker_pool().map(_evaluate_in_worker, candidates, chunksize=1)

    def remote_call(self) -> tuple[Any, tuple]:
        """(function, args): `function(*args, candidate)` evaluates a candidate as this
        evaluator does, in another process or on another machine (darts.executors)."""
        return evaluate_with, (asdict(self.settings),)

    def close(self) -> None:
        """Stops the worker processes (a later evaluate_many starts new ones)."""
        if self._finalizer is not None:
            self._finalizer()
        self._pool = self._finalizer = None

    def describe(self) -> str:
        """One line for a run's log: the recipe, the split, the network, the processes."""
        s = self.settings
        noun = getattr(self.space, "LAYERS_NOUN", "layers").split(" (")[0]
        size = ("the candidate's own widths" if s.channels is None else
                f"{s.channels} channels, {s.layers} {noun}")
        return (f"train evaluator: {s.epochs} epochs from scratch on {s.dataset}, batch "
                f"{s.batch_size}, SGD lr {s.learning_rate:g} cosine to {s.learning_rate_min:g}, "
                f"momentum {s.momentum:g}{' Nesterov' if s.nesterov else ''}, weight decay "
                f"{s.weight_decay:g}, grad clip {s.grad_clip:g}; score: top-1 on "
                f"{s.valid_portion:.0%} of the training images held out"
                f"{'' if s.train_images is None else f' (of {s.train_images})'}, reported: "
                f"{s.report} top-1; network: {size}; {self.workers} process(es) of {s.threads} "
                f"thread(s)")

    def __enter__(self) -> TrainEvaluator:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- the work -----------------------------------------------------------------------------
    def _worker_pool(self):
        if self._pool is None:
            context = multiprocessing.get_context("spawn")
            self._pool = context.Pool(self.workers, initializer=_start_worker,
                                      initargs=(asdict(self.settings),))
            self._finalizer = weakref.finalize(self, _stop, self._pool)
        return self._pool

    def _data(self) -> dict[str, Any]:
        """The data sets and the run's split of the training set, loaded once per process."""
        if self._loaded is None:
            self._loaded = _load_data(self.settings, download=True)
        return self._loaded

    def _evaluate(self, candidate: Any) -> Evaluation:
        s = self.settings
        data = self._data()
        device = pick_device(s.device)
        seed = candidate_seed(s.seed, _identity(self.space, candidate))
        _ensure_parent(candidate, self.space, s, data, device)  # a start network: not in the cost
        start = time.perf_counter()
        devices = [device.index or 0] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            score, test = _train_and_score(candidate, s, data, device, seed, self.space)
        reported = test if s.report == "test" else score
        return Evaluation(score, reported, time.perf_counter() - start)


def from_search_config(cfg: Any, space: ModuleType, logger: Any = None,
                       run_dir: Any = None) -> TrainEvaluator:
    """The evaluator of a multi-trial run (`train_search.py --evaluator train`): the run's data
    set, seed, device and weight recipe (batch size, learning rates, momentum, weight decay,
    Nesterov, gradient clip), `--eval_epochs` epochs, the part of the training set that
    `--train_portion` leaves held out, `--init_channels`/`--layers` as the network size of
    nb201 and darts candidates (a plain CNN's is its spec's), `--workers` processes of
    `--threads` threads, inherited weights kept in `run_dir/weights`. A setting the config
    leaves at None takes the evaluator's default."""
    options = dict(
        dataset=cfg.dataset, data=cfg.data, epochs=getattr(cfg, "eval_epochs", None),
        batch_size=cfg.batch_size, learning_rate=cfg.learning_rate,
        learning_rate_min=cfg.learning_rate_min, momentum=cfg.momentum,
        weight_decay=cfg.weight_decay, nesterov=cfg.nesterov, grad_clip=cfg.grad_clip,
        valid_portion=1 - cfg.train_portion, image_size=cfg.image_size,
        num_classes=cfg.num_classes, synthetic_size=cfg.synthetic_size, seed=cfg.seed,
        workers=max(1, cfg.workers), threads=cfg.threads, device=cfg.device,
        channels_last=cfg.channels_last,
        weights_dir=None if run_dir is None else str(Path(run_dir) / "weights"))
    if getattr(space, "NETWORK_SIZES", None) is not None:
        options.update(channels=cfg.init_channels, layers=cfg.layers)
    options["plugins"] = getattr(cfg, "plugins", "")
    evaluator = TrainEvaluator(space, **{k: v for k, v in options.items() if v is not None})
    if logger is not None:
        logger.info(evaluator.describe())
    return evaluator


def _load_data(s: TrainSettings, download: bool) -> dict[str, Any]:
    train_set, test_set, info = build_datasets(
        s.dataset, s.data, image_size=s.image_size, num_classes=s.num_classes,
        synthetic_size=s.synthetic_size, seed=s.seed, download=download)
    # The held-out part is scored without augmentation: the training set with the test transform.
    valid_view, _, _ = build_datasets(
        s.dataset, s.data, image_size=s.image_size, num_classes=s.num_classes,
        synthetic_size=s.synthetic_size, seed=s.seed, download=False, train_augment=False)
    n = len(train_set)
    g = torch.Generator().manual_seed(pass_seed(s.seed, _SPLIT_STREAM, 0))
    order = torch.randperm(n, generator=g)
    if s.train_images is not None:
        order = order[:s.train_images]
    n_valid = int(round(s.valid_portion * len(order)))
    train_idx, valid_idx = order[n_valid:].sort().values, order[:n_valid].sort().values
    if len(train_idx) == 0 or len(valid_idx) == 0:
        raise UserError(f"--valid_portion {s.valid_portion} splits {len(order)} training images "
                        f"into {len(train_idx)} to train on and {len(valid_idx)} to score; both "
                        f"need at least one (more images or another --valid_portion)")
    if len(train_idx) % s.batch_size == 1 and len(train_idx) > 1:
        # A last batch of one image: BatchNorm cannot train on one value per channel (a plain
        # CNN pooled to 1x1). That image sits out.
        train_idx = train_idx[:-1]
    return {"train": train_set, "valid": Subset(valid_view, valid_idx.tolist()),
            "test": test_set, "info": info, "train_idx": train_idx}


def _network(candidate: Any, s: TrainSettings, info) -> nn.Module:
    """The candidate's network, built as train_final.py builds it (without an auxiliary
    head)."""
    from darts.accel import accelerate
    from darts.spaces import get_space

    return accelerate(get_space(s.space).network(candidate, info.num_classes, s.channels,
                                                 s.layers, family=info.network))


def _identity(space: ModuleType, candidate: Any) -> str:
    """What seeds a candidate's training: its text, and its lineage's key where it has one."""
    key = getattr(candidate, "key", None)
    text = candidate_text(space, getattr(candidate, "spec", candidate))
    return text if key is None else f"{text}#{key}"


def _weights_path(s: TrainSettings, key: str) -> Path:
    return Path(s.weights_dir) / f"{key}.pt"


def _ensure_parent(candidate: Any, space: ModuleType, s: TrainSettings,
                   data: dict[str, Any], device: torch.device) -> Path | None:
    """The file of `candidate`'s parent's trained weights, the parent trained from scratch
    first where it is not kept yet (the start network); None for a candidate without one, or
    without `weights_dir`."""
    parent = getattr(candidate, "parent", None)
    if parent is None or s.weights_dir is None or not hasattr(space, "morph"):
        return None
    path = _weights_path(s, parent)
    if not path.exists():
        from darts.lineage import Child

        start = Child(candidate.parent_spec, key=parent)
        seed = candidate_seed(s.seed, _identity(space, start))
        with torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []):
            torch.manual_seed(seed)
            _train_and_score(start, s, data, device, seed, space)
    return path


def _model(candidate: Any, space: ModuleType, s: TrainSettings, data: dict[str, Any],
           device: torch.device, train: SplitLoader, seed: int) -> nn.Module:
    """The candidate's network: built new, or its parent's morphed by its edits."""
    spec = getattr(candidate, "spec", candidate)
    path = _ensure_parent(candidate, space, s, data, device)
    if path is None:
        return _network(spec, s, data["info"]).to(device)
    net = _network(candidate.parent_spec, s, data["info"])
    net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True)["model"])
    net = net.to(device)
    x, _ = next(iter(train.epoch(0)))
    generator = torch.Generator().manual_seed(seed)
    for edit in candidate.edits:
        net = space.morph(net, edit, generator, x.to(device))
    if str(net.arch) != str(spec):
        raise RuntimeError(f"the edits {candidate.edits} of {candidate.parent_spec} give "
                           f"{net.arch}, not {spec}")
    return net


def _train_and_score(candidate: Any, s: TrainSettings, data: dict[str, Any],
                     device: torch.device, seed: int, space: ModuleType | None = None
                     ) -> tuple[float, float]:
    """(held-out top-1, test top-1) after `s.epochs` epochs; (0, 0) if training diverges."""
    from darts.spaces import get_space

    space = space or get_space(s.space)
    channels_last = channels_last_on(s.channels_last, device)
    pin = device.type == "cuda"
    train = SplitLoader(data["train"], data["train_idx"], s.batch_size, seed=seed, stream=0,
                        workers=0, pin_memory=pin)
    model = _model(candidate, space, s, data, device, train, seed)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), s.learning_rate, momentum=s.momentum,
                                weight_decay=s.weight_decay, nesterov=s.nesterov)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, float(s.epochs),
                                                           eta_min=s.learning_rate_min)
    criterion = nn.CrossEntropyLoss().to(device)
    for epoch in range(s.epochs):
        metrics = train_one_epoch(model, train.epoch(epoch), optimizer, criterion, device,
                                  grad_clip=s.grad_clip, channels_last=channels_last)
        scheduler.step()
        if not math.isfinite(metrics.loss):
            return 0.0, 0.0
    key = getattr(candidate, "key", None)
    if key is not None and s.weights_dir is not None:
        Path(s.weights_dir).mkdir(parents=True, exist_ok=True)
        with atomic_open(_weights_path(s, key)) as f:
            torch.save({"spec": str(getattr(candidate, "spec", candidate)),
                        "model": {k: v.cpu() for k, v in model.state_dict().items()}}, f)
    valid = evaluate(model, make_loader(data["valid"], s.batch_size, shuffle=False,
                                        pin_memory=pin), criterion, device,
                     channels_last=channels_last)
    if s.report != "test":
        return valid.top1, valid.top1
    test = evaluate(model, make_loader(data["test"], s.batch_size, shuffle=False,
                                       pin_memory=pin), criterion, device,
                    channels_last=channels_last)
    return valid.top1, test.top1


def _stop(pool) -> None:
    pool.terminate()
    pool.join()


@contextmanager
def _torch_threads(threads: int):
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


# -- the worker processes ----------------------------------------------------------------------
_worker: TrainEvaluator | None = None


_worker_error: BaseException | None = None


def _worker_evaluator(settings: dict[str, Any]) -> TrainEvaluator:
    """An evaluator of `settings` in a fresh process (a pool's or an executor's worker),
    `threads` torch threads, its data read here."""
    s = TrainSettings(**settings)
    torch.set_num_threads(s.threads)
    tune_malloc(pick_device(s.device))  # a fresh process: every run on the CPU does this
    evaluator = TrainEvaluator.__new__(TrainEvaluator)
    from darts import plugins
    from darts.spaces import get_space

    plugins.load(s.plugins)  # spawned: nothing the main process imported is here
    evaluator.space = get_space(s.space)
    evaluator.workers, evaluator.settings = 1, s
    evaluator._pool = evaluator._finalizer = None
    evaluator._loaded = _load_data(s, download=False)  # the main process downloaded it
    return evaluator


def _start_worker(settings: dict[str, Any]) -> None:
    """A spawned worker of the pool: its own evaluator of the same settings. An error here is
    kept for the first evaluation to raise: a Pool whose initializer raises starts new workers
    forever."""
    global _worker, _worker_error
    try:
        _worker = _worker_evaluator(settings)
    except Exception as e:  # noqa: BLE001 - raised again by _evaluate_in_worker
        _worker_error = e


_evaluators: dict[str, TrainEvaluator] = {}


def evaluate_with(settings: dict[str, Any], candidate: Any) -> Evaluation:
    """The Evaluation of `candidate` by an evaluator of `settings`, made once per process (an
    executor's worker: its data are read once)."""
    import json

    key = json.dumps(settings, sort_keys=True)
    if key not in _evaluators:
        _evaluators[key] = _worker_evaluator(settings)
    evaluator = _evaluators[key]
    with _torch_threads(evaluator.settings.threads):
        return evaluator._evaluate(candidate)


def _evaluate_in_worker(candidate: Any) -> Evaluation:
    if _worker is None:
        raise _worker_error or RuntimeError("the train evaluator's worker did not start")
    return _worker._evaluate(candidate)
