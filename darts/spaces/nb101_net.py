"""The NAS-Bench-101 network (Ying et al., ICML 2019), as the benchmark's model builder makes it.

A cell ("module" in the paper) is a DAG of at most 7 vertices given by an upper-triangular 0/1
adjacency `matrix` and one op per vertex: vertex 0 is the cell's input, vertex n-1 its output,
and every interior vertex holds one of

    conv3x3-bn-relu, conv1x1-bn-relu, maxpool3x3

The spec must already be pruned (the benchmark's `ModelSpec` pruning: no vertex off a path from
input to output), which every record of the dataset is. Inside a cell (Section 2.1 of the paper,
`nasbench/lib/model_builder.py`):

- the cell's output channels are split evenly among the interior vertices that feed the output
  (the first ones get one channel more when the split is not even), and a vertex that feeds only
  other vertices takes the widest of them (`vertex_channels`);
- an interior vertex sums its inputs: the outputs of earlier interior vertices, truncated to its
  width (their first channels), and the cell input through a 1x1 projection (conv-BN-ReLU);
- the output concatenates the vertices that feed it, plus the projected input when the input is
  wired to the output directly (the projection alone when nothing else feeds it).

The macro network (the benchmark's CIFAR-10 defaults): a 3x3 conv-BN-ReLU stem of 128 channels,
3 stacks of 3 cells, a 2x2 max-pool and doubled channels before every stack but the first,
global average pooling and a dense layer. Its trainable parameter count equals the dataset's
`trainable_parameters` field. Convolutions have no bias; every BatchNorm is affine, with the
builder's momentum 0.997 (TensorFlow's convention; PyTorch's is one minus it) and eps 1e-5.
Weights are initialised as TensorFlow initialised the benchmark's (`init_like_tensorflow`).

TensorFlow's 'same' padding is rebuilt exactly: 3x3 convolutions and the 3x3 max-pool pad by 1
(the pool pads with -inf), the 2x2 stride-2 max-pool rounds the size up (`ceil_mode`), which
pads the bottom and right edges of an odd-sized map as TensorFlow does.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn as nn

from darts.errors import UserError

# tf.layers.batch_normalization(momentum=0.997) keeps 0.997 of the running average per step;
# torch's momentum is the weight of the new batch.
BN_MOMENTUM = 1.0 - 0.997
BN_EPSILON = 1e-5

INPUT, OUTPUT = "input", "output"


class NB101SpecError(UserError, ValueError):
    """A NAS-Bench-101 cell spec (matrix, ops) that the model builder cannot build."""


class ConvBnRelu(nn.Sequential):
    """Conv (no bias, 'same' padding, stride 1) -> BatchNorm -> ReLU: `base_ops.conv_bn_relu`."""

    def __init__(self, C_in: int, C_out: int, kernel_size: int, stride: int = 1):
        super().__init__(
            nn.Conv2d(C_in, C_out, kernel_size, stride=stride, padding=kernel_size // 2,
                      bias=False),
            nn.BatchNorm2d(C_out, eps=BN_EPSILON, momentum=BN_MOMENTUM, affine=True),
            nn.ReLU(inplace=False),
        )


# An interior vertex's op, built for its width (channels in = channels out).
NB101_OPS: dict[str, Callable[[int], nn.Module]] = {
    "conv3x3-bn-relu": lambda C: ConvBnRelu(C, C, 3),
    "conv1x1-bn-relu": lambda C: ConvBnRelu(C, C, 1),
    "maxpool3x3": lambda C: nn.MaxPool2d(3, stride=1, padding=1),
}


def _register_ops() -> None:
    """The benchmark's three ops in the library's op vocabulary (darts.primitives), so that
    `--ops` and the collapse pieces know them; stride 2 (a DARTS reduction edge) strides the
    conv or the pool."""
    from darts.primitives import OPS, register_op

    factories = {
        "conv3x3-bn-relu": lambda C, stride, affine: ConvBnRelu(C, C, 3, stride),
        "conv1x1-bn-relu": lambda C, stride, affine: ConvBnRelu(C, C, 1, stride),
        "maxpool3x3": lambda C, stride, affine: nn.MaxPool2d(3, stride=stride, padding=1),
    }
    for name, factory in factories.items():
        if name not in OPS:
            register_op(name, factory)


_register_ops()


def projection(C_in: int, C_out: int) -> nn.Module:
    """The 1x1 conv-BN-ReLU that carries the cell input to a vertex's width (as in ResNet)."""
    return ConvBnRelu(C_in, C_out, 1)


def read_matrix(matrix: Sequence[Sequence[int]], where: str = "NAS-Bench-101 spec",
                max_vertices: int | None = None) -> list[list[int]]:
    """`matrix` as a list of int rows, checked: square, at least 2x2 (at most `max_vertices`),
    strictly upper-triangular (edges run from a lower to a higher vertex) and 0/1; one
    NB101SpecError naming `where` otherwise."""
    try:
        rows = [[int(v) for v in row] for row in matrix]
    except (TypeError, ValueError):
        raise NB101SpecError(f"{where}: the matrix must be rows of 0/1 integers") from None
    n = len(rows)
    most = max_vertices or n
    if not 2 <= n <= most or any(len(row) != n for row in rows):
        raise NB101SpecError(f"{where}: the matrix must be square with 2 to {most} rows (input "
                             f"and output at least), got row lengths {[len(r) for r in rows]}")
    if any(v not in (0, 1) for row in rows for v in row):
        raise NB101SpecError(f"{where}: the matrix holds only 0 and 1, got {rows}")
    if any(rows[i][j] for i in range(n) for j in range(i + 1)):
        raise NB101SpecError(f"{where}: the matrix must be upper-triangular with a zero diagonal "
                             f"(an edge i -> j needs i < j), got {rows}")
    return rows


def read_ops(ops: Sequence[str], n: int, where: str = "NAS-Bench-101 spec") -> list[str]:
    """`ops` checked against a matrix of `n` vertices: 'input', n-2 known ops, 'output'."""
    ops = [ops] if isinstance(ops, str) else list(ops)
    if len(ops) != n:
        raise NB101SpecError(f"{where}: {len(ops)} ops for {n} vertices; a cell of {n} vertices "
                             f"needs {n} ops: {ops}")
    if ops[0] != INPUT or ops[-1] != OUTPUT:
        raise NB101SpecError(f"{where}: the ops must start with {INPUT!r} and end with "
                             f"{OUTPUT!r}, got {ops}")
    for op in ops[1:-1]:
        if op not in NB101_OPS:
            raise NB101SpecError(f"{where}: unknown op {op!r}; the ops are "
                                 f"{', '.join(NB101_OPS)}")
    return ops


def vertex_channels(in_channels: int, out_channels: int,
                    matrix: Sequence[Sequence[int]]) -> list[int]:
    """The width of every vertex of a cell (`compute_vertex_channels` of the model builder).

    The output's channels are split among the interior vertices that feed it, the remainder
    going one channel each to the first of them; a vertex that feeds only interior vertices
    takes the widest of those, filled in from the last vertex back.
    """
    rows = read_matrix(matrix)
    n = len(rows)
    channels = [0] * n
    channels[0], channels[-1] = in_channels, out_channels
    if n == 2:
        return channels
    feeds_output = [v for v in range(1, n - 1) if rows[v][n - 1]]
    if not feeds_output:
        raise NB101SpecError(f"no interior vertex feeds the output; prune the spec first: {rows}")
    interior, correction = divmod(out_channels, len(feeds_output))
    for i, v in enumerate(feeds_output):
        channels[v] = interior + (1 if i < correction else 0)
    for v in range(n - 3, 0, -1):
        if not rows[v][n - 1]:
            channels[v] = max((channels[dst] for dst in range(v + 1, n - 1) if rows[v][dst]),
                              default=0)
    if any(c <= 0 for c in channels[1:-1]):
        raise NB101SpecError(f"vertex widths {channels} of a cell of {out_channels} output "
                             f"channels: every interior vertex needs at least one channel "
                             f"(a pruned spec whose output is at least as wide as its fan-in)")
    return channels


def truncate(x: torch.Tensor, channels: int) -> torch.Tensor:
    """The first `channels` channels of `x`, which has that many or one more (the builder's
    `truncate`: uneven splits of the output differ by one channel)."""
    return x if x.shape[1] == channels else x[:, :channels]


class NB101Module(nn.Module):
    """One NAS-Bench-101 cell, a "module" in the paper (`build_module`), from `C_in` to `C_out`
    channels."""

    def __init__(self, matrix: Sequence[Sequence[int]], ops: Sequence[str], C_in: int,
                 C_out: int):
        super().__init__()
        rows = read_matrix(matrix)
        n = len(rows)
        self.ops_names = read_ops(ops, n)
        self.channels = vertex_channels(C_in, C_out, rows)
        self.interior = range(1, n - 1)
        # For each interior vertex: the earlier interior vertices it sums, and whether it sums
        # the projected cell input too.
        self.sources = {t: [s for s in range(1, t) if rows[s][t]] for t in self.interior}
        self.from_input = {t: bool(rows[0][t]) for t in self.interior}
        self.to_output = [t for t in self.interior if rows[t][n - 1]]
        self._check_wiring(rows)
        self.projections = nn.ModuleDict({str(t): projection(C_in, self.channels[t])
                                          for t in self.interior if self.from_input[t]})
        self.vertex_ops = nn.ModuleList([NB101_OPS[self.ops_names[t]](self.channels[t])
                                         for t in self.interior])
        input_to_output = bool(rows[0][n - 1]) or not self.to_output
        self.output_projection = projection(C_in, C_out) if input_to_output else None

    def _check_wiring(self, rows: list[list[int]]) -> None:
        """Every interior vertex has an input, every edge between interior vertices narrows by
        at most the one channel `truncate` drops, and the output has an input."""
        n = len(rows)
        for t in self.interior:
            if not self.sources[t] and not self.from_input[t]:
                raise NB101SpecError(f"vertex {t} has no input; prune the spec first: {rows}")
            for s in self.sources[t]:
                if self.channels[s] - self.channels[t] not in (0, 1):
                    raise NB101SpecError(f"edge {s}->{t} joins widths {self.channels[s]} and "
                                         f"{self.channels[t]}; the builder truncates at most "
                                         f"one channel")
        if not self.to_output and not rows[0][n - 1]:
            raise NB101SpecError(f"the output vertex has no input: {rows}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tensors: dict[int, torch.Tensor] = {0: x}
        for t, op in zip(self.interior, self.vertex_ops, strict=True):
            width = self.channels[t]
            inputs = [truncate(tensors[s], width) for s in self.sources[t]]
            if self.from_input[t]:
                inputs.append(self.projections[str(t)](x))
            tensors[t] = op(inputs[0] if len(inputs) == 1 else sum(inputs))
        if not self.to_output:
            return self.output_projection(x)
        out = torch.cat([tensors[t] for t in self.to_output], dim=1)
        if self.output_projection is not None:
            out = out + self.output_projection(x)
        return out


class NB101Network(nn.Module):
    """The NAS-Bench-101 network of one cell (`build_model_fn`), returning logits."""

    def __init__(self, matrix: Sequence[Sequence[int]], ops: Sequence[str],
                 num_classes: int = 10, stem_channels: int = 128, stacks: int = 3,
                 cells_per_stack: int = 3, in_channels: int = 3):
        super().__init__()
        self.stem = ConvBnRelu(in_channels, stem_channels, 3)
        layers: list[nn.Module] = []
        C = stem_channels
        for stack in range(stacks):
            C_in = C
            if stack > 0:
                # TF max_pooling2d(2, 2, padding='same'): an odd size rounds up.
                layers.append(nn.MaxPool2d(2, stride=2, ceil_mode=True))
                C *= 2
            for _ in range(cells_per_stack):
                layers.append(NB101Module(matrix, ops, C_in, C))
                C_in = C
        self.cells = nn.Sequential(*layers)
        self.classifier = nn.Linear(C, num_classes)
        init_like_tensorflow(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.cells(self.stem(x))
        return self.classifier(x.mean(dim=(2, 3)))


# The standard deviation of a unit normal truncated at +-2: TF's variance_scaling divides by it
# so that the truncated draw keeps the variance scale / fan_in.
_TRUNCATED_NORMAL_STD = 0.87962566103423978


def init_like_tensorflow(module: nn.Module) -> None:
    """The benchmark's initial weights: convolutions `tf.variance_scaling_initializer()` (a
    normal truncated at two deviations, variance 1 / fan_in), the dense layer Glorot-uniform
    with a zero bias, BatchNorm gamma 1 and beta 0."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            fan_in = m.weight[0].numel()
            std = math.sqrt(1.0 / fan_in) / _TRUNCATED_NORMAL_STD
            nn.init.trunc_normal_(m.weight, 0.0, std, -2 * std, 2 * std)
        elif isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def count_parameters(module: nn.Module) -> int:
    """The number of trainable parameters of `module` (the dataset's `trainable_parameters`)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
