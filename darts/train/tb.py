"""The run's logging helper: log.txt, the console, TensorBoard and the run directory.

Search and final training log through one `RunLogger`. Only the process that owns the run
directory (rank 0 under torchrun) writes; on other ranks every method is a no-op.
`alpha_heatmap` draws the architecture weights as an image for `RunLogger.image`.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from darts.train.files import write_error


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
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            file_handler = logging.FileHandler(self.run_dir / "log.txt")
        except OSError as e:  # a read-only or full --save folder: one line, not a traceback
            raise write_error(self.run_dir / "log.txt", e) from None
        fmt = logging.Formatter("%(asctime)s %(message)s", datefmt="%Y-%m-%d %H:%M:%S")
        for handler in (file_handler, logging.StreamHandler(sys.stdout)):
            handler.setFormatter(fmt)
            self.log.addHandler(handler)
            self._handlers.append(handler)
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            try:
                self.writer = SummaryWriter(log_dir=str(self.run_dir))
            except OSError as e:
                self.close()
                raise write_error(self.run_dir, e) from None

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


# Viridis sampled at 0, 1/8, ..., 1: perceptually ordered and its brightness rises with the
# value, so the picture still reads in greyscale. Linear interpolation between these is close
# enough to the real map for a heatmap and needs no matplotlib.
_VIRIDIS = np.array([
    (68, 1, 84), (71, 44, 122), (59, 81, 139), (44, 113, 142), (33, 144, 141),
    (39, 173, 129), (92, 200, 99), (170, 220, 50), (253, 231, 37),
], dtype=np.float64)
_NAN_RGB = (160, 160, 160)  # a diverged run's NaN weights still draw, in grey

_CELL_W, _CELL_H = 40, 22  # one square per (edge, op); wide enough for "0.00"
_MARGIN = 6
_PAD = 4  # between labels and the grid
_FONT_SIZE, _TITLE_SIZE = 11, 13


def _colormap(values: np.ndarray) -> np.ndarray:
    """RGB uint8 for each value, on the fixed scale 0..1 (clipped) so epochs compare.

    NaN maps to the colour of 0 here; `alpha_heatmap` paints those squares grey instead.
    """
    v = np.clip(np.nan_to_num(values, nan=0.0), 0.0, 1.0)
    stops = np.linspace(0.0, 1.0, len(_VIRIDIS))
    rgb = np.stack([np.interp(v, stops, _VIRIDIS[:, c]) for c in range(3)], axis=-1)
    return np.rint(rgb).astype(np.uint8)


@cache
def _font(size: int) -> Any:
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # pillow < 10.1: only the fixed-size bitmap font
        return ImageFont.load_default()


def _ink_box(draw: Any, text: str, font: Any) -> tuple[int, int, int, int]:
    """(dx, dy, w, h): the offset of the drawn text from its anchor point, and its size.

    Text is placed by its ink box rather than by anchors, which bitmap fonts do not support.
    """
    x0, y0, x1, y1 = draw.textbbox((0, 0), text, font=font)
    return x0, y0, x1 - x0, y1 - y0


def alpha_heatmap(weights: Any, row_labels: Sequence[str], col_labels: Sequence[str],
                  title: str = "") -> np.ndarray:
    """The (E, K) mixing weights of a cell as an RGB heatmap, uint8 (H, W, 3) for TensorBoard.

    One row per edge (`row_labels`, on the left), one column per op (`col_labels`, on top,
    rotated to read bottom-up), each square coloured on a fixed 0..1 viridis scale and showing
    its value to 2 decimals. Drawn with PIL only; the same input gives the same bytes.
    """
    from PIL import Image, ImageDraw

    if hasattr(weights, "detach"):  # a torch tensor, on any device and of any float dtype
        # float64 holds every float16/bfloat16/float32 value exactly (and numpy has no
        # bfloat16), so a tensor and the equal numpy array draw the same picture.
        weights = weights.detach().cpu().double()
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim != 2:
        raise ValueError(f"alpha_heatmap: weights must be 2-D (edges, ops), got shape {w.shape}")
    n_rows, n_cols = w.shape
    if len(row_labels) != n_rows or len(col_labels) != n_cols:
        raise ValueError(
            f"alpha_heatmap: weights have shape {w.shape} but there are {len(row_labels)} row "
            f"labels and {len(col_labels)} column labels (expected {n_rows} and {n_cols})")

    font, title_font = _font(_FONT_SIZE), _font(_TITLE_SIZE)
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    texts = [[f"{x:.2f}" for x in row] for row in w]
    cell_w = max([_CELL_W] + [_ink_box(measure, t, font)[2] + 8 for row in texts for t in row])
    row_w = max((_ink_box(measure, str(s), font)[2] for s in row_labels), default=0)
    col_boxes = [_ink_box(measure, str(s), font) for s in col_labels]
    col_h = max((b[2] for b in col_boxes), default=0)  # label width becomes height when rotated
    title_box = _ink_box(measure, title, title_font) if title else (0, 0, 0, 0)
    title_h = title_box[3] + 2 * _PAD if title else 0

    grid_x = _MARGIN + row_w + _PAD
    grid_y = _MARGIN + title_h + col_h + _PAD
    width = max(grid_x + n_cols * cell_w, _MARGIN + title_box[2]) + _MARGIN
    height = grid_y + n_rows * _CELL_H + _MARGIN
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)

    if title:
        draw.text((_MARGIN - title_box[0], _MARGIN - title_box[1]), title, fill="black",
                  font=title_font)
    for j, (label, (dx, dy, tw, th)) in enumerate(zip(col_labels, col_boxes, strict=True)):
        # Op names are long: draw each one flat on its own patch, then turn it upright so that
        # it ends just above its column and columns stay one square wide.
        patch = Image.new("RGB", (max(tw, 1), max(th, 1)), "white")
        ImageDraw.Draw(patch).text((-dx, -dy), str(label), fill="black", font=font)
        patch = patch.rotate(90, expand=True)
        x = grid_x + j * cell_w + (cell_w - patch.width) // 2
        img.paste(patch, (x, grid_y - _PAD - patch.height))
    for i, label in enumerate(row_labels):
        dx, dy, tw, th = _ink_box(draw, str(label), font)
        y = grid_y + i * _CELL_H + (_CELL_H - th) // 2
        draw.text((grid_x - _PAD - tw - dx, y - dy), str(label), fill="black", font=font)

    colours = _colormap(w)
    for i in range(n_rows):
        for j in range(n_cols):
            x0, y0 = grid_x + j * cell_w, grid_y + i * _CELL_H
            nan = np.isnan(w[i, j])
            rgb = _NAN_RGB if nan else tuple(int(c) for c in colours[i, j])
            # A 1-pixel white gap keeps neighbouring squares of close colours apart.
            draw.rectangle((x0, y0, x0 + cell_w - 2, y0 + _CELL_H - 2), fill=rgb)
            # Rec. 601 luma: dark text on the bright yellow-green end, white on the dark end.
            luma = 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]
            dx, dy, tw, th = _ink_box(draw, texts[i][j], font)
            tx = x0 + (cell_w - 1 - tw) // 2 - dx
            ty = y0 + (_CELL_H - 1 - th) // 2 - dy
            draw.text((tx, ty), texts[i][j], fill="black" if luma >= 140 else "white", font=font)
    return np.asarray(img, dtype=np.uint8).copy()


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


def draw_cells(genotype: Any, logger: RunLogger, step: int, out_dir: Path | None = None,
               graphs: Any = None) -> bool:
    """The candidate's pictures into TensorBoard (`cells/<kind>`: a DARTS genotype's normal
    and reduce cells, a NAS-Bench-201 cell, a plain CNN) and, with `out_dir`, as <kind>.png
    there. `graphs(candidate) -> {kind: graphviz.Digraph}` draws a space's own candidates (a
    plugin space's `graphs`). Pictures are never worth a crashed run: without graphviz (the
    `dot` program or the Python package), or when drawing fails, this warns once per logger
    and returns False."""
    try:
        from darts import visualize
    except ImportError as e:
        return _skip_pictures(logger, f"{e}; install graphviz for them")
    if not visualize.dot_available():
        return _skip_pictures(logger, "graphviz's `dot` is not installed; install graphviz "
                                      "for them")
    try:
        pictures = (graphs or visualize.graphs_of)(genotype)
        for kind, graph in pictures.items():
            logger.image(f"cells/{kind}", visualize.image_array(graph), step)
        if out_dir is not None:
            for path in visualize.render_graphs(pictures, out_dir).values():
                logger.info("cell diagram: %s", path)
        return True
    except Exception as e:  # noqa: BLE001 (a picture that cannot be drawn: say why, go on)
        what = type(genotype).__name__
        return _skip_pictures(logger, f"drawing a {what} failed: {type(e).__name__}: {e}"
                                      + ("" if graphs else " (a space of one's own draws its "
                                                           "candidates with `graphs`)"))


def _skip_pictures(logger: RunLogger, why: str) -> bool:
    if not getattr(logger, "_warned_cells", False):
        logger.warning("cell diagrams skipped: %s", why)
        logger._warned_cells = True
    return False
