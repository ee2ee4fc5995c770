"""The alpha heatmap: its layout, its fixed colour scale, and that it reaches TensorBoard."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from darts.train.tb import RunLogger, alpha_heatmap

OPS = ["none", "max_pool_3x3", "avg_pool_3x3", "skip_connect",
       "sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5"]


def edge_names(steps: int = 4) -> list[str]:
    names = []
    for node in range(steps):
        for src in range(node + 2):
            names.append({0: "c_{k-2}", 1: "c_{k-1}"}.get(src, str(src - 2)) + f"->{node}")
    return names


EDGES = edge_names()  # 14 edges, as in a DARTS cell


def softmax_weights(rows: int = 14, cols: int = 8, seed: int = 0) -> np.ndarray:
    logits = np.random.default_rng(seed).normal(size=(rows, cols))
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def diff_box(a: np.ndarray, b: np.ndarray) -> tuple[int, int, int, int]:
    """(y0, y1, x0, x1), inclusive: the bounding box of the pixels where two images differ."""
    ys, xs = np.nonzero((a != b).any(axis=-1))
    assert len(ys), "the images are identical"
    return ys.min(), ys.max(), xs.min(), xs.max()


def luma(rgb: np.ndarray) -> float:
    return float(0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2])


def test_output_is_uint8_hwc_rgb_and_grows_with_edges_and_ops():
    img = alpha_heatmap(softmax_weights(), EDGES, OPS)
    assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3
    h, w, _ = img.shape
    # At least one ~20-px-high row per edge and one ~36-px-wide column per op, plus labels.
    assert 14 * 20 < h < 1000 and 8 * 36 < w < 1000
    assert (img[0, 0] == 255).all() and (img[-1, -1] == 255).all()  # white margin

    fewer_rows = alpha_heatmap(softmax_weights(5, 8), EDGES[:5], OPS)
    fewer_cols = alpha_heatmap(softmax_weights(14, 3), EDGES, OPS[:3])
    assert fewer_rows.shape[0] < h and fewer_rows.shape[1] == w
    assert fewer_cols.shape[1] < w
    assert fewer_cols.shape[0] <= h  # shorter op names may only take less height


def test_title_adds_height():
    plain = alpha_heatmap(softmax_weights(), EDGES, OPS)
    titled = alpha_heatmap(softmax_weights(), EDGES, OPS, title="normal cell, epoch 3")
    assert titled.shape[0] > plain.shape[0]
    assert titled.shape[1] >= plain.shape[1]


def test_one_changed_value_changes_one_square_only():
    zeros = np.zeros((14, 8))
    one_hot = zeros.copy()
    one_hot[3, 5] = 1.0
    a, b = alpha_heatmap(zeros, EDGES, OPS), alpha_heatmap(one_hot, EDGES, OPS)
    assert a.shape == b.shape
    y0, y1, x0, x1 = diff_box(a, b)
    # The changed pixels are one square (its fill and its number), not the whole picture.
    assert 18 <= y1 - y0 + 1 <= 26 and 34 <= x1 - x0 + 1 <= 50

    # The same change on the next square lands one square to the right, on the same row.
    one_hot_next = zeros.copy()
    one_hot_next[3, 6] = 1.0
    ny0, ny1, nx0, nx1 = diff_box(a, alpha_heatmap(one_hot_next, EDGES, OPS))
    assert (ny0, ny1) == (y0, y1) and nx0 == x1 + 2  # a 1-pixel gap between squares
    # ...and one row down, on the same column.
    one_hot_down = zeros.copy()
    one_hot_down[4, 5] = 1.0
    dy0, _, dx0, dx1 = diff_box(a, alpha_heatmap(one_hot_down, EDGES, OPS))
    assert (dx0, dx1) == (x0, x1) and dy0 == y1 + 2

    # The square's corner (free of text) is bright for 1 and dark for 0.
    corner_one, corner_zero = b[y0 + 1, x0 + 1], a[y0 + 1, x0 + 1]
    assert luma(corner_one) > luma(corner_zero) + 100
    # The number inside is drawn in a contrasting colour: dark text on the bright square.
    square = b[y0:y1 + 1, x0:x1 + 1].reshape(-1, 3)
    assert min(luma(p) for p in square) < 60


def _fill_colour(value: float, others: float) -> np.ndarray:
    """The fill colour of square (0, 0) holding `value` while every other square holds `others`."""
    base = np.full((3, 2), others)
    marked = base.copy()
    marked[0, 0] = value
    probe = base.copy()
    probe[0, 0] = 1.0 if value < 0.5 else 0.0  # a far colour, so the whole square differs
    img = alpha_heatmap(marked, EDGES[:3], OPS[:2])
    y0, _, x0, _ = diff_box(img, alpha_heatmap(probe, EDGES[:3], OPS[:2]))
    return img[y0 + 1, x0 + 1]


def test_colour_scale_is_fixed_and_brightness_rises_with_value():
    # 0.5 gets the same colour whether the rest of the matrix is all 0 or all 1: no
    # per-image normalisation, so heatmaps from different epochs compare.
    assert (_fill_colour(0.5, 0.0) == _fill_colour(0.5, 1.0)).all()
    values = [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
    lumas = [luma(_fill_colour(v, 0.3)) for v in values]
    assert (np.diff(lumas) > 0).all(), lumas
    # Out-of-range values clip to the ends of the scale.
    assert (_fill_colour(1.7, 0.3) == _fill_colour(1.0, 0.3)).all()
    assert (_fill_colour(-0.4, 0.3) == _fill_colour(0.0, 0.3)).all()


def test_deterministic_and_torch_matches_numpy():
    w = softmax_weights(seed=1).astype(np.float32)
    first = alpha_heatmap(w, EDGES, OPS, title="t")
    assert first.tobytes() == alpha_heatmap(w.copy(), EDGES, OPS, title="t").tobytes()
    t = torch.from_numpy(w).requires_grad_(True)  # a live parameter: must be detached
    assert np.array_equal(alpha_heatmap(t, EDGES, OPS, title="t"), first)
    assert np.array_equal(alpha_heatmap(w.astype(np.float64), EDGES, OPS, title="t"), first)
    # bfloat16 has no numpy dtype; it still draws, like its float32 equivalent.
    bf = t.detach().to(torch.bfloat16)
    assert np.array_equal(alpha_heatmap(bf, EDGES, OPS), alpha_heatmap(bf.float(), EDGES, OPS))


def test_different_weights_give_different_images():
    a = alpha_heatmap(softmax_weights(seed=1), EDGES, OPS)
    b = alpha_heatmap(softmax_weights(seed=2), EDGES, OPS)
    assert a.shape == b.shape and not np.array_equal(a, b)


def test_nan_weights_draw_a_grey_square():
    # A diverged search must not crash its logging: the NaN square is drawn grey.
    w = softmax_weights()
    ok = alpha_heatmap(w, EDGES, OPS)
    w[2, 2] = np.nan
    img = alpha_heatmap(w, EDGES, OPS)
    assert img.dtype == np.uint8 and img.shape == ok.shape
    y0, y1, x0, x1 = diff_box(ok, img)
    assert 18 <= y1 - y0 + 1 <= 26 and 34 <= x1 - x0 + 1 <= 50
    r, g, b = (int(c) for c in img[y0 + 1, x0 + 1])
    assert r == g == b and 60 < r < 220


@pytest.mark.parametrize("shape, rows, cols", [
    ((14, 8), 13, 8),
    ((14, 8), 14, 7),
    ((14,), 14, 8),
    ((2, 14, 8), 14, 8),
])
def test_wrong_shapes_raise_value_error(shape, rows, cols):
    with pytest.raises(ValueError, match=r"shape"):
        alpha_heatmap(np.zeros(shape), EDGES[:rows], OPS[:cols])


def test_image_round_trips_through_tensorboard(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    img = alpha_heatmap(softmax_weights(), EDGES, OPS, title="normal")
    logger = RunLogger(tmp_path)
    logger.image("alphas/normal", img, 1)
    logger.close()

    acc = EventAccumulator(str(tmp_path), size_guidance={"images": 0})
    acc.Reload()
    events = acc.Images("alphas/normal")
    assert len(events) == 1
    assert events[0].step == 1
    assert (events[0].height, events[0].width) == img.shape[:2]
    assert events[0].encoded_image_string.startswith(b"\x89PNG")
