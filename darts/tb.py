"""The run's logging helper: log.txt, the console, TensorBoard and the run directory.

Search and final training log through one `RunLogger`. Only the process that owns the run
directory (rank 0 under torchrun) writes; on other ranks every method is a no-op.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np


def format_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}"


class RunLogger:
    def __init__(self, run_dir: str | Path, enabled: bool = True, tensorboard: bool = True,
                 name: str = "darts"):
        self.run_dir = Path(run_dir)
        self.enabled = enabled
        self.log = logging.getLogger(f"{name}.{self.run_dir}")
        self.log.propagate = False
        self.log.setLevel(logging.INFO)
        self._handlers: list[logging.Handler] = []
        self.writer = None
        if not enabled:
            self.log.addHandler(logging.NullHandler())
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        fmt = logging.Formatter("%(asctime)s %(message)s", datefmt="%Y-%m-%d %H:%M:%S")
        for handler in (logging.FileHandler(self.run_dir / "log.txt"),
                        logging.StreamHandler(sys.stdout)):
            handler.setFormatter(fmt)
            self.log.addHandler(handler)
            self._handlers.append(handler)
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(self.run_dir))

    def info(self, msg: str, *args: Any) -> None:
        self.log.info(msg, *args)

    def warning(self, msg: str, *args: Any) -> None:
        self.log.warning("warning: " + msg, *args)

    def scalars(self, values: dict[str, float], step: int) -> None:
        if self.writer is not None:
            for tag, value in values.items():
                self.writer.add_scalar(tag, value, step)

    def text(self, tag: str, text: str, step: int = 0) -> None:
        if self.writer is not None:
            self.writer.add_text(tag, text, step)

    def config(self, cfg: dict[str, Any]) -> None:
        """Shows the config in TensorBoard's text tab, as a JSON code block."""
        self.text("config", "```\n" + json.dumps(cfg, indent=2) + "\n```")

    def image(self, tag: str, image_hwc: np.ndarray, step: int) -> None:
        if self.writer is not None:
            self.writer.add_image(tag, image_hwc, step, dataformats="HWC")

    def flush(self) -> None:
        if self.writer is not None:
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
        for handler in self._handlers:
            handler.close()
            self.log.removeHandler(handler)
        self._handlers.clear()


class EpochTimer:
    """Wall time per epoch and the ETA of the epochs left, from the mean epoch time."""

    def __init__(self, total_epochs: int, start_epoch: int = 0):
        self.total = total_epochs
        self.done = 0
        self.start_epoch = start_epoch
        self.elapsed = 0.0
        self._t0 = time.perf_counter()

    def start(self) -> None:
        self._t0 = time.perf_counter()

    def stop(self) -> float:
        dt = time.perf_counter() - self._t0
        self.elapsed += dt
        self.done += 1
        return dt

    def eta(self) -> float:
        left = self.total - self.start_epoch - self.done
        return self.elapsed / max(self.done, 1) * left
