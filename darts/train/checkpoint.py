"""One checkpoint format for search and final training: atomic writes, safe reads.

A checkpoint is a dict of tensors, state dicts and plain Python values. It is written to a
temporary file in the same directory and renamed into place, so a run killed mid-write
keeps its previous checkpoint. It is read with `torch.load(weights_only=True)`: a checkpoint
file can never execute code.
"""

from __future__ import annotations

import math
import os
import pickle
import random
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

from darts.errors import UserError
from darts.train.files import atomic_open

T = TypeVar("T")


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike) -> None:
    try:
        with atomic_open(path) as f:
            torch.save(state, f)
    except UserError as e:  # the disk refused it: the previous checkpoint is still whole
        raise UserError(f"{e}; then continue with --resume {Path(path).parent}") from None


def load_checkpoint(path: str | os.PathLike, kind: str | None = None, keys: tuple[str, ...] = (),
                    map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """The checkpoint of a `kind` run ("search", "final"; None: either) at `path` (a run
    directory or its checkpoint.pt), holding at least `keys`; anything else is one UserError.

    It is read with `weights_only=True`: a file holding anything but tensors and plain values
    is refused without running any of it.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "checkpoint.pt"
    if not path.is_file():
        raise UserError(f"--resume: no checkpoint at {path} (give a run directory or its checkpoint.pt)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        raise UserError(f"--resume: {path} is not a checkpoint of this project and was not loaded "
                        "(it holds objects other than tensors and plain values)") from None
    except Exception as e:  # truncated, corrupt, not a torch file at all
        reason = " ".join(str(e).split())[:120] or type(e).__name__
        raise UserError(f"--resume: {path} is not a readable checkpoint: it is truncated or "
                        f"corrupt ({reason})") from None
    script = {"search": "train_search.py", "final": "train_final.py"}.get(kind, "darts")
    if not isinstance(state, dict) or state.get("kind") not in ((kind,) if kind else ("search", "final")):
        raise UserError(f"--resume: {path} is not a {script} checkpoint")
    missing = [k for k in keys if k not in state]
    if missing:
        raise UserError(f"--resume: {path} is an incomplete {script} checkpoint (no "
                        f"{', '.join(missing)})")
    return state


def restore(path: str | os.PathLike, load: Callable[[], T]) -> T:
    """Runs `load` (loading a checkpoint's parts into a run's objects); a checkpoint whose parts
    do not fit them (other shapes, other types, other keys) is one UserError naming `path`."""
    try:
        return load()
    except UserError:
        raise
    except (KeyError, TypeError, ValueError, RuntimeError, IndexError, AttributeError) as e:
        reason = " ".join(str(e).split())[:160] or type(e).__name__
        raise UserError(f"--resume: {path} does not fit this run's network or optimizer "
                        f"({type(e).__name__}: {reason})") from None


def epoch_history(ckpt: dict[str, Any]) -> tuple[int, list[dict[str, Any]]]:
    """A checkpoint's (epochs done, per-epoch records), checked to agree: one record (a dict)
    per epoch done."""
    epoch, history = int(ckpt["epoch"]), ckpt["history"]
    if (not isinstance(history, list) or len(history) != epoch or epoch < 1
            or not all(isinstance(r, dict) for r in history)):
        raise ValueError(f"its history is not one record per epoch done ({epoch})")
    return epoch, history


def diverged(epoch: int, losses: dict[str, float], run_dir: Path, fix: str) -> None:
    """Stops a run whose epoch `epoch` (0-based) ended with a NaN or infinite loss, before
    anything of that epoch is written: the checkpoint of the epoch before stays the last."""
    bad = {k: v for k, v in losses.items() if not math.isfinite(v)}
    if not bad:
        return
    what = ", ".join(f"{k} {v}" for k, v in bad.items())
    kept = (f"the checkpoint of epoch {epoch} in {run_dir} is kept" if epoch
            else "no epoch finished, so nothing is kept")
    raise UserError(f"the run diverged in epoch {epoch + 1} ({what}); it stopped, and {kept}; "
                    f"{fix}")


def change_base_lr(optimizer: torch.optim.Optimizer, scheduler: Any, lr: float) -> None:
    """A restored schedule continued from a new base learning rate `lr` (`--resume` with
    `--learning_rate`): the rate at the epoch reached is the one the schedule gives that
    epoch from `lr` (cosine: eta_min + (lr - eta_min)(1 + cos(pi t / T)) / 2; a step
    schedule: scaled by lr / the old base), and the schedule goes on from there."""
    old = scheduler.base_lrs[0]
    scheduler.base_lrs = [lr for _ in scheduler.base_lrs]
    cosine = isinstance(scheduler, torch.optim.lr_scheduler.CosineAnnealingLR)
    for group in optimizer.param_groups:
        group["initial_lr"] = lr
        if cosine:
            eta = scheduler.eta_min
            group["lr"] = eta + (lr - eta) * (
                1 + math.cos(math.pi * scheduler.last_epoch / scheduler.T_max)) / 2
        else:
            group["lr"] = group["lr"] * lr / old
    scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]


def resume_changes(saved: Any, changes: dict[str, Any] | None, allowed: tuple[str, ...]
                   ) -> dict[str, Any]:
    """The flags of `changes` that differ from the `saved` config; a flag outside `allowed`
    is refused (the rest of a run's config is what its checkpoint was made with).

    `epochs` may be given, but only as the run's own: the epochs fix the run's schedules (the
    cosine learning rate reaches its minimum at the last epoch; drop path, and the search's
    ramped pieces, reach their final values there), so a finished run is not extended and
    a running one is not stretched: a longer run is a new run."""
    changes = dict(changes or {})
    epochs = changes.pop("epochs", None)
    if epochs is not None and epochs != getattr(saved, "epochs", epochs):
        raise UserError(f"--epochs {epochs} with --resume: a run's epochs fix its schedule (the "
                        f"learning rate and the ramps end at its last epoch, {saved.epochs}), so "
                        f"it cannot be extended; start a new run with --epochs {epochs}, or leave --epochs "
                        f"out to continue this one")
    refused = sorted(set(changes) - set(allowed))
    if refused:
        raise UserError(f"--resume continues with the run's saved config; only "
                        f"{', '.join('--' + k for k in allowed)} may change, not "
                        f"{', '.join('--' + k for k in refused)}")
    return {k: v for k, v in changes.items() if getattr(saved, k) != v}


def run_dir_of(resume: str | os.PathLike) -> Path:
    """The run directory that `--resume` names (the directory itself or its checkpoint.pt)."""
    path = Path(resume)
    return path if path.is_dir() else path.parent


def rng_state() -> dict[str, Any]:
    """Every random generator a run draws from, in a weights_only-loadable form."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"],
                         n["has_gauss"], n["cached_gaussian"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
