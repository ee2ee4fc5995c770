"""NAS-Bench-201 tables: convert the official files once, then read and query a plain CSV.

    python -m darts.benchmarks.nb201 convert --from NATS-tss-v1_0-3ffb9-simple --out nb201.csv
    python -m darts.benchmarks.nb201 query --benchmark nb201.csv '|nor_conv_3x3~0|+|...|'
    python -m darts.benchmarks.nb201 synthetic --out synthetic.csv     # made-up numbers, the table's shape

The official NATS-Bench topology files (a pickled archive, downloaded by the user) are read
through the maintained `nats_bench` package (`pip install nats_bench`), only by `convert`. The
table it writes is CSV with a header: `arch` (the benchmark's string), `index` (the official
0..15624), and one column per metric, accuracies in percent, named `<dataset>_<split>`:

    cifar10_valid      CIFAR-10 validation accuracy, trained on the train split (cifar10-valid)
    cifar10_test       CIFAR-10 test accuracy, trained on train + valid (the papers' column)
    cifar100_valid, cifar100_test, ImageNet16-120_valid, ImageNet16-120_test
    cifar10_params_m, cifar10_flops_m, cifar10_train_s   cost: parameters and FLOPs (millions),
                       training time of the cifar10-valid run (seconds)

all from the 200-epoch schedule (`hp="200"`), averaged over the benchmark's seeds. Any table
with an `arch` column and numeric metric columns loads (e.g. a subset, or one generated for
tests); it loads in milliseconds and holds no pickle. An empty cell (or `nan`) is a missing
value: a column may have gaps, but a run refuses a table with a gap in a column it uses (its
`--metric`, `--report`, and the training times of a `--budget_seconds` budget), naming the
row's line; what is reported of a gap (JSON) is null, never NaN.

The official files are pickles; `convert` reads them with an unpickler that admits only the
containers and arrays they hold, so a crafted file that names anything else (a function to
call) is refused and nothing of it runs.
"""

from __future__ import annotations

import bz2
import csv
import io
import json
import math
import os
import pickle
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from darts.errors import UserError
from darts.spaces.nb201 import ArchStringError, NB201Arch
from darts.train.cli import Parser, command, report
from darts.train.files import atomic_open

# column -> (nats_bench dataset, key of get_more_info's dict)
ACCURACIES: dict[str, tuple[str, str]] = {
    "cifar10_valid": ("cifar10-valid", "valid-accuracy"),
    "cifar10_test": ("cifar10", "test-accuracy"),
    "cifar100_valid": ("cifar100", "valid-accuracy"),
    "cifar100_test": ("cifar100", "test-accuracy"),
    "ImageNet16-120_valid": ("ImageNet16-120", "valid-accuracy"),
    "ImageNet16-120_test": ("ImageNet16-120", "test-accuracy"),
}
MAX_TABLE_BYTES = 256 << 20  # NAS-Bench-201's full table is about 2 MiB, NAS-Bench-101's 90


def finite_or_none(value: float | None) -> float | None:
    """`value`, or None where it is missing (None, NaN or infinite): what JSON can hold."""
    return value if value is not None and math.isfinite(value) else None


def _nb201_row_key(record: dict[str, str], where: str) -> str:
    """A NAS-Bench-201 row's key: its arch string, as the space writes it."""
    try:
        return NB201Arch.from_string(record["arch"], where="arch").to_string()
    except ArchStringError as e:
        raise UserError(f"{where}: {e}") from None


class BenchmarkTable:
    """Rows of a benchmark table, by candidate; `metrics` are the numeric columns (a missing
    cell is NaN); `lines` the CSV line of each row, for messages. A row's key is what the
    space's `row_key(record, where)` makes of it and a candidate's its `table_key(c)` (a
    NAS-Bench-101 cell's hash); NAS-Bench-201's (the default, `space` None) is the arch
    string."""

    def __init__(self, rows: dict[str, dict[str, float]], metrics: list[str],
                 indices: dict[str, int], path: str = "table",
                 lines: dict[str, int] | None = None, space: Any = None,
                 flag: str = "--benchmark"):
        self.rows, self.metrics, self.indices, self.path = rows, metrics, indices, path
        self.flag = flag  # the option that gave the file, named in messages
        self.lines = lines if lines is not None else {}
        self.space = space
        self.texts: dict[str, str] = {}  # key -> the row's arch text, where the key is not it

    def key(self, candidate: Any) -> str:
        """The row key of a candidate, or of its text (NAS-Bench-201's arch string is its key;
        a NAS-Bench-101 text is read and hashed)."""
        table_key = getattr(self.space, "table_key", None)
        if isinstance(candidate, str):
            return candidate if table_key is None else table_key(self.space.parse(candidate))
        return table_key(candidate) if table_key is not None else candidate.to_string()

    def __len__(self) -> int:
        return len(self.rows)

    @classmethod
    def load(cls, path: str | Path, space: Any = None,
             flag: str = "--benchmark") -> BenchmarkTable:
        """Reads a CSV table of `space` (NAS-Bench-201's where None); a malformed one is one
        UserError naming `flag`, the file and the line."""
        path = Path(path)
        try:
            if path.stat().st_size > MAX_TABLE_BYTES:
                raise UserError(f"{flag} {path}: {path.stat().st_size} bytes is not a "
                                f"NAS-Bench-201 table (at most {MAX_TABLE_BYTES >> 20} MiB)")
            data = path.read_bytes()
        except FileNotFoundError:
            raise UserError(f"{flag} {path}: no such file (make one with `python -m "
                            f"darts.benchmarks.nb201 convert --from NATS_FILES --out {path}`)") from None
        except IsADirectoryError:
            raise UserError(f"{flag} {path}: a folder; give the CSV table (the official "
                            f"files convert with `python -m darts.benchmarks.nb201 convert`)") from None
        except OSError as e:
            raise UserError(f"{flag} {path}: cannot read it ({e.strerror})") from None
        try:
            text = data.decode("utf-8-sig")  # a byte-order mark is not part of the header
        except UnicodeDecodeError:
            raise UserError(f"{flag} {path}: not a CSV text file (the official pickled "
                            f"files convert with `python -m darts.benchmarks.nb201 convert`)") from None
        try:
            return cls._parse(text, path, space, flag)
        except csv.Error as e:
            raise UserError(f"{flag} {path}: not a CSV table ({e})") from None

    @classmethod
    def _parse(cls, text: str, path: Path, space: Any = None,
               flag: str = "--benchmark") -> BenchmarkTable:
        reader = csv.reader(io.StringIO(text, newline=""))
        header = next(reader, None)
        if not header or "arch" not in header:
            raise UserError(f"{flag} {path}: the first line must be a header with an "
                            f"'arch' column and metric columns, e.g. arch,cifar10_test")
        if len(set(header)) != len(header):
            raise UserError(f"{flag} {path}: a column is named twice in the header")
        row_key = getattr(space, "row_key", None) or _nb201_row_key
        text_columns = ("arch", "index", *getattr(space, "TABLE_TEXT_COLUMNS", ()))
        metrics = [h for h in header if h not in text_columns]
        rows: dict[str, dict[str, float]] = {}
        indices: dict[str, int] = {}
        lines: dict[str, int] = {}
        texts: dict[str, str] = {}
        for line, fields in enumerate(reader, start=2):
            if not fields:
                continue
            if len(fields) != len(header):
                raise UserError(f"{flag} {path}, line {line}: {len(fields)} fields, the "
                                f"header has {len(header)}")
            record = dict(zip(header, fields, strict=True))
            arch = row_key(record, f"{flag} {path}, line {line}")
            if arch in rows:
                raise UserError(f"{flag} {path}, line {line}: {arch} is listed twice")
            values = {}
            for m in metrics:
                try:
                    v = float(record[m]) if record[m] != "" else math.nan
                except ValueError:
                    raise UserError(f"{flag} {path}, line {line}: {m} is "
                                    f"{record[m][:40]!r}, not a number") from None
                values[m] = v
            if "index" in record and record["index"] != "":
                try:
                    indices[arch] = int(record["index"])
                except ValueError:
                    raise UserError(f"{flag} {path}, line {line}: index is "
                                    f"{record['index'][:40]!r}, not an integer") from None
            rows[arch] = values
            lines[arch] = line
            if arch != record["arch"]:
                texts[arch] = record["arch"]
        if not rows:
            raise UserError(f"{flag} {path}: the table has no rows")
        table = cls(rows, metrics, indices, str(path), lines, space, flag)
        table.texts = texts
        return table

    def gap(self, column: str, positive: bool = False) -> tuple[str, float] | None:
        """The first row (arch, value) whose `column` is missing (empty, NaN or infinite), or
        with `positive` is not above 0; None where every row has a value."""
        for arch, row in self.rows.items():
            value = row.get(column, math.nan)
            if not math.isfinite(value) or (positive and value <= 0):
                return arch, value
        return None

    def require(self, column: str, flag: str) -> None:
        """Refuses (one UserError naming the row's line, its arch and the fix) a table with a
        gap in `column`, which the run's `flag` uses: a run must never meet a missing score."""
        found = self.gap(column)
        if found is not None:
            arch, value = found
            raise UserError(f"{self._where(arch)}: {arch} has no {column} value "
                            f"({'empty or NaN' if math.isnan(value) else value}), and {flag} uses "
                            f"that column: fill or remove the row, or choose another "
                            f"--metric/--report")

    def require_times(self, column: str) -> None:
        """Refuses a table whose training-time `column` has a missing, zero or negative time:
        a `--budget_seconds` budget adds these up, and would never be spent."""
        found = self.gap(column, positive=True)
        if found is not None:
            arch, value = found
            shown = "empty or NaN" if math.isnan(value) else f"{value:g}"
            raise UserError(f"{self._where(arch)}: {arch} has a training time {column} of "
                            f"{shown}, and --budget_seconds adds up these times (a run would "
                            f"never end): fill the column with times above 0, or give --budget "
                            f"instead")

    def _where(self, arch: str) -> str:
        line = self.lines.get(arch)
        return f"{self.flag} {self.path}" + (f", line {line}" if line is not None else "")

    def lookup(self, arch: Any) -> dict[str, float] | None:
        """The row of `arch` (a metric -> value dict), or None where the table lacks it."""
        return self.rows.get(self.key(arch))

    def rank(self, arch: Any, metric: str) -> int | None:
        """1 + the number of cells strictly better than `arch` by `metric` (higher is better
        for accuracies); None where the table lacks the cell or the value."""
        row = self.lookup(arch)
        if row is None or not math.isfinite(row.get(metric, math.nan)):
            return None
        value = row[metric]
        return 1 + sum(r[metric] > value for r in self.rows.values() if math.isfinite(r[metric]))

    def score(self, arch: Any) -> dict[str, Any]:
        """What a search records of its decoded cell: its string, the official index where the
        table has one, every metric, and the rank by each accuracy column. A gap in the table
        is None (JSON's null), never NaN."""
        out: dict[str, Any] = {"arch": arch.to_string()}
        row = self.lookup(arch)
        if row is None:
            out["in_table"] = False
            return out
        if self.key(arch) in self.indices:
            out["index"] = self.indices[self.key(arch)]
        if self.space is not None and self.key(arch) != out["arch"]:
            out["key"] = self.key(arch)
        out.update({m: finite_or_none(v) for m, v in row.items()})
        for m in self.metrics:
            if m.endswith(("_valid", "_test")):
                out[f"rank_{m}"] = self.rank(arch, m)
        out["cells"] = len(self)
        return out


def score_line(score: dict[str, Any]) -> str:
    """The log's summary of a table score: each metric, with its rank among the cells."""
    if score.get("in_table") is False:
        return "the cell is not in the table"
    parts = []
    for k, v in score.items():
        if k in ("arch", "index", "cells") or k.startswith("rank_") or not isinstance(v, float):
            continue
        rank = score.get(f"rank_{k}")
        parts.append(f"{k} {v:.2f}" + (f" (rank {rank}/{score['cells']})" if rank else ""))
    return ", ".join(parts)


@contextmanager
def _csv_file(out: str | Path) -> Iterator[Any]:
    """A csv writer whose rows replace `out` when the block ends without an exception."""
    with atomic_open(out) as binary:
        text = io.TextIOWrapper(binary, encoding="utf-8", newline="")
        yield csv.writer(text)
        text.flush()
        text.detach()  # atomic_open syncs and closes the file


def _official(source: str, query: Callable[..., Any], index: int, dataset: str,
              **kwargs: Any) -> Any:
    """`query(index, dataset, hp="200")` of the official API; what nats_bench raises on a file
    that lacks the record is one UserError naming the file and what is missing."""
    try:
        return query(index, dataset, hp="200", **kwargs)
    except UserError:
        raise
    except KeyError as e:
        missing = e.args[0] if e.args else None
        if missing in (dataset, "200"):
            what = (f"the data set {dataset}" if missing == dataset
                    else "the 200-epoch schedule (hp=200)")
            raise UserError(f"{source}: architecture {index} has no results for {what}; convert "
                            f"needs the complete topology benchmark (cifar10-valid, cifar10, "
                            f"cifar100, ImageNet16-120, 200 epochs), e.g. the official "
                            f"NATS-tss-v1_0-3ffb9-simple; nothing was written") from None
        error: Exception = e
    except Exception as e:  # nats_bench's own errors on a record it cannot read
        error = e
    raise UserError(f"{source}: nats_bench cannot read architecture {index}'s {dataset} "
                    f"results ({type(error).__name__}: {' '.join(str(error).split())[:160]}); "
                    f"nothing was written") from None


def convert(api: Any, out: str | Path, source: str | None = None) -> int:
    """Writes the CSV table of a nats_bench topology API object (`nats_bench.create(path,
    'tss', fast_mode=True)`); returns the number of rows. Atomic: a failed conversion leaves
    no partial table; a record the files lack is one UserError naming `source` (the --from
    files)."""
    source = f"--from {source}" if source else "the official files"
    header = ["index", "arch", *ACCURACIES, "cifar10_params_m", "cifar10_flops_m",
              "cifar10_train_s"]
    n = len(api)
    with _csv_file(out) as writer:
        writer.writerow(header)
        for index in range(n):
            arch = NB201Arch.from_string(api.arch(index), where=f"index {index}").to_string()
            row: list[Any] = [index, arch]
            infos: dict[str, dict] = {}
            for dataset, key in ACCURACIES.values():
                if dataset not in infos:
                    infos[dataset] = _official(source, api.get_more_info, index, dataset,
                                               is_random=False)
                row.append(infos[dataset].get(key))
            cost = _official(source, api.get_cost_info, index, "cifar10")
            row += [cost.get("params"), cost.get("flops"), infos["cifar10-valid"].get("train-all-time")]
            writer.writerow(["" if v is None else v for v in row])
    return n


def synthetic_table(out: str | Path, seed: int = 0) -> Path:
    """Writes a made-up table of the whole space, for trying `--benchmark` and for tests: NOT
    NAS-Bench-201's numbers, but its shape. A cell whose output does not reach its input is
    at chance (10 %); a cell without a convolution on a path from input to output is poor
    (the all-skip cell 54.3 %, near DARTS's collapsed cell on the real table); the others rise
    with the convolutions on those paths (3x3 more than 1x1), so most are mediocre and few
    good, with a little seeded noise; `cifar10_train_s` (a 200-epoch training's seconds) rises
    with the ops' cost, for time budgets. The best cell is `arch` of the row with the highest
    `cifar10_test`; `index` is the enumeration order of `all_archs`, not the official one."""
    import random

    from darts.spaces.nb201 import EDGES, all_archs

    rng = random.Random(seed)
    value = {"nor_conv_3x3": 1.0, "nor_conv_1x1": 0.55, "avg_pool_3x3": 0.05,
             "skip_connect": 0.0, "none": 0.0}
    seconds = {"nor_conv_3x3": 1450.0, "nor_conv_1x1": 450.0, "avg_pool_3x3": 120.0,
               "skip_connect": 20.0, "none": 0.0}  # made-up training times, by the ops' cost
    with _csv_file(out) as writer:
        writer.writerow(["index", "arch", "cifar10_valid", "cifar10_test", "cifar100_test",
                         "ImageNet16-120_test", "cifar10_train_s"])
        for index, arch in enumerate(all_archs()):
            # nodes reachable from the input, and edges on an input-to-output path
            reach = {0}
            for (i, j), op in zip(EDGES, arch.ops, strict=True):
                if op != "none" and j in reach:
                    reach.add(i)
            leads = {3}
            for (i, j), op in reversed(list(zip(EDGES, arch.ops, strict=True))):
                if op != "none" and i in leads:
                    leads.add(j)
            on_path = [op for (i, j), op in zip(EDGES, arch.ops, strict=True)
                       if op != "none" and j in reach and i in leads]
            strength = sum(value[op] for op in on_path)
            if 3 not in reach:
                acc = 10.0
            elif strength < 0.5:
                acc = 54.3 - 8.0 * arch.ops.count("avg_pool_3x3") / 6 + rng.uniform(-0.5, 0.5)
            else:
                acc = 94.0 - 22.0 * math.exp(-0.55 * strength) - 1.2 * on_path.count(
                    "skip_connect") / 3 + rng.gauss(0.0, 0.3)
            writer.writerow([index, arch.to_string(), f"{acc + 0.3 * rng.gauss(0, 1):.3f}",
                             f"{acc:.3f}", f"{max(1.0, acc - 21.0 + rng.gauss(0, 0.5)):.3f}",
                             f"{max(0.8, acc - 48.0 + rng.gauss(0, 0.5)):.3f}",
                             f"{2800.0 + 3 * sum(seconds[op] for op in arch.ops):.1f}"])
    return Path(out)


def _storage_from_bytes(data: bytes) -> Any:
    """A tensor's storage in a pickle (torch's `_load_from_bytes`), read as weights only."""
    import torch

    return torch.load(io.BytesIO(data), weights_only=True)


class _Refused(pickle.UnpicklingError):
    """A global that no official file holds."""


class _OfficialUnpickler(pickle.Unpickler):
    """Unpickles what the official NATS-Bench files hold: plain containers, numbers, strings,
    OrderedDicts, numpy arrays and scalars, tensors (the full archive's weights, read as
    weights only). Any other global (a function to call, a class) is refused."""

    ALLOWED = {
        ("collections", "OrderedDict"),
        ("builtins", "set"), ("builtins", "frozenset"), ("__builtin__", "set"),
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"), ("numpy", "dtype"),
        ("torch._utils", "_rebuild_tensor_v2"), ("torch._utils", "_rebuild_tensor"),
        ("torch._utils", "_rebuild_parameter"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("torch.storage", "_load_from_bytes"):
            return _storage_from_bytes
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise _Refused(f"{module}.{name}")


def _safe_pickle_load(source: str) -> Callable[..., Any]:
    """nats_bench's `pickle_load(file_path, ext)` (a bz2-compressed pickle), through the
    restricted unpickler: a file naming a global it does not admit is one UserError."""

    def pickle_load(file_path: Any, ext: str = ".pbz2") -> Any:
        path = str(file_path) if os.path.isfile(str(file_path)) else str(file_path) + ext
        with bz2.BZ2File(path, "rb") as f:
            try:
                return _OfficialUnpickler(f).load()
            except _Refused as e:
                raise UserError(f"--from {source}: {path} names {e}, which no official "
                                f"NATS-Bench file holds (a crafted or corrupt file); it was not "
                                f"loaded: download the official files again") from None

    return pickle_load


@contextmanager
def _restricted_pickles(source: str) -> Iterator[None]:
    """While the block runs, nats_bench reads its pickles with the restricted unpickler:
    its `pickle_load` is replaced in every nats_bench module that holds it, then restored."""
    try:
        from nats_bench import api_utils
    except ImportError:  # _open_official says how to install it
        yield
        return
    original = api_utils.pickle_load
    modules = [m for name, m in list(sys.modules.items())
               if (name == "nats_bench" or name.startswith("nats_bench."))
               and getattr(m, "pickle_load", None) is original]
    safe = _safe_pickle_load(source)
    for module in modules:
        module.pickle_load = safe
    try:
        yield
    finally:
        for module in modules:
            module.pickle_load = original


def convert_official(source: str, out: str | Path) -> int:
    """`python -m darts.benchmarks.nb201 convert`: the official files at `source` -> the CSV table
    `out`, every pickle read with the restricted unpickler (fast mode reads them lazily)."""
    with _restricted_pickles(source):
        return convert(_open_official(source), out, source)


def _open_official(path: str) -> Any:
    try:
        import nats_bench
    except ImportError:
        raise UserError("convert reads the official files through the nats_bench package: "
                        "pip install nats_bench") from None
    if not Path(path).exists():
        raise UserError(f"--from {path}: no such file or folder (the NATS-Bench topology "
                        f"files, e.g. NATS-tss-v1_0-3ffb9-simple)")
    try:
        # the "-simple" archive is a folder read lazily (fast mode); the full one a file
        return nats_bench.create(path, "tss", fast_mode=Path(path).is_dir(), verbose=False)
    except UserError:
        raise
    except Exception as e:  # nats_bench's own errors on a file it cannot read
        raise UserError(f"--from {path}: nats_bench cannot read it as the topology (tss) "
                        f"benchmark: {type(e).__name__}: {' '.join(str(e).split())[:200]}") from None


def main(argv: list[str] | None = None) -> int:
    parser = Parser(prog=" ".join(command("python -m darts.benchmarks.nb201", "darts-nb201")),
                    description="NAS-Bench-201 tables: convert the official files, query a table.")
    sub = parser.add_subparsers(dest="command", required=True)
    conv = sub.add_parser("convert", help="official NATS-Bench topology files -> CSV table")
    conv.add_argument("--from", dest="source", required=True,
                      help="the NATS-Bench topology files (e.g. NATS-tss-v1_0-3ffb9-simple)")
    conv.add_argument("--out", required=True, help="the CSV table to write")
    query = sub.add_parser("query", help="print an architecture's row as JSON")
    query.add_argument("--benchmark", required=True, help="a CSV table")
    query.add_argument("arch", help="an architecture string, e.g. '|nor_conv_3x3~0|+|...'")
    synth = sub.add_parser("synthetic", help="write a made-up table of the space's shape "
                                             "(not the benchmark's numbers), for trying --benchmark")
    synth.add_argument("--out", required=True, help="the CSV table to write")
    synth.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        if args.command == "synthetic":
            synthetic_table(args.out, args.seed)
            print(f"a synthetic table (not NAS-Bench-201's numbers) written to {args.out}")
            return 0
        if args.command == "convert":
            n = convert_official(args.source, args.out)
            print(f"{n} architectures written to {args.out}")
            return 0
        table = BenchmarkTable.load(args.benchmark)
        try:
            arch = NB201Arch.from_string(args.arch)
        except ArchStringError as e:
            raise UserError(str(e)) from None
        result = table.score(arch)
        if result.get("in_table") is False:
            raise UserError(f"{arch} is not in {args.benchmark} ({len(table)} cells)")
        print(json.dumps(result, indent=2))
        return 0
    except UserError as e:
        return report(e)


if __name__ == "__main__":
    raise SystemExit(main())
