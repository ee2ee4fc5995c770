"""One checkpoint format for search and final training: atomic writes, safe reads.

A checkpoint is a dict of tensors, state dicts and plain Python values. It is written to a
temporary file in the same directory and renamed into place, so a run killed mid-write
keeps its previous checkpoint. It is read with `torch.load(weights_only=True)`: a checkpoint
file can never execute code.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from darts.errors import UserError
from darts.files import atomic_open


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike) -> None:
    with atomic_open(path) as f:
        torch.save(state, f)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(path)
    if path.is_dir():
        path = path / "checkpoint.pt"
    if not path.is_file():
        raise UserError(f"--resume: no checkpoint at {path} (give a run directory or its checkpoint.pt)")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # a truncated or foreign file: say which, not a pickle traceback
        raise UserError(f"--resume: {path} is not a readable checkpoint ({type(e).__name__}: {e})") from None


def run_dir_of(resume: str | os.PathLike) -> Path:
    """The run directory that `--resume` names (the directory itself or its checkpoint.pt)."""
    path = Path(resume)
    return path if path.is_dir() else path.parent


def new_run_dir(save: str | os.PathLike, name: str) -> Path:
    """`save/name` for a new run; refuses a directory that already holds one."""
    run_dir = Path(save) / name
    if (run_dir / "checkpoint.pt").exists():
        raise UserError(f"{run_dir} already holds a run: pass --resume {run_dir} or another --name")
    return run_dir


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
