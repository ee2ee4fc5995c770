"""Scoring many candidates with zero-cost proxies, into a CSV written as it goes.

`score_to_csv` scores a list of candidates of one space, in order, and appends one row per
candidate to the CSV: the candidate's text, one column per proxy (named as the flag), the
seconds it took. Every row is flushed to disk as it is written, so a killed run keeps its rows;
run again with the same settings it checks the rows already there (the header, and each row's
candidate against the list) and goes on after the last whole one (a half-written last line is
dropped). Each candidate's networks are freed after scoring, so memory stays flat however
long the list is; `workers` > 1 scores in that many spawned processes, rows still in order.

Determinism: the batch is a seeded draw of `batch_size` images of the training set, without
augmentation; a candidate's initial weights come from `candidate_seed(seed, text)`, so its
scores do not depend on the other candidates or their order.
"""

from __future__ import annotations

import csv
import io
import math
import multiprocessing
import os
import random
import resource
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from darts.errors import UserError
from darts.evaluators.training import candidate_seed, candidate_text
from darts.proxies import score_candidate
from darts.train.data import build_datasets, pass_seed
from darts.train.engine import available_cpus
from darts.train.tb import format_duration

_BATCH_STREAM = 7002  # pass_seed's stream of the proxies' batch


@dataclass(frozen=True)
class ScoreSettings:
    """What a worker needs to score as the main process does (picklable)."""

    space: str
    plugins: str
    proxies: tuple[str, ...]
    dataset: str
    data: str
    batch_size: int
    image_size: int | None
    num_classes: int | None
    synthetic_size: int
    channels: int | None
    layers: int | None
    seed: int
    threads: int
    channels_last: bool = True  # on the CPU, 2-2.6x faster convolutions (the same function)


def network_size(space: Any, channels: int | None, layers: int | None) -> tuple[Any, Any]:
    """The network's (channels, layers): the space's default where not given."""
    sizes = getattr(space, "NETWORK_SIZES", None)
    if sizes is None:
        return None, None
    return (sizes[0] if channels is None else channels, sizes[1] if layers is None else layers)


def load_batch(s: ScoreSettings) -> tuple[torch.Tensor, torch.Tensor, Any]:
    """(images, labels, dataset info): `batch_size` images of the training set drawn by the
    seed, with the test transform."""
    train, _, info = build_datasets(s.dataset, s.data, image_size=s.image_size,
                                    num_classes=s.num_classes, synthetic_size=s.synthetic_size,
                                    seed=s.seed, train_augment=False)
    if len(train) < s.batch_size:
        raise UserError(f"--batch_size {s.batch_size}: the {s.dataset} training set has only "
                        f"{len(train)} images")
    g = torch.Generator().manual_seed(pass_seed(s.seed, _BATCH_STREAM, 0))
    idx = torch.randperm(len(train), generator=g)[:s.batch_size].tolist()
    items = [train[i] for i in idx]
    x = torch.stack([im for im, _ in items])
    y = torch.tensor([int(label) for _, label in items])
    return x, y, info


class Scorer:
    """Scores candidates here: the batch loaded once, the network size resolved."""

    def __init__(self, s: ScoreSettings):
        from darts import plugins
        from darts.spaces import get_space

        plugins.load(s.plugins)
        self.settings, self.space = s, get_space(s.space)
        self.x, self.y, self.info = load_batch(s)
        self.channels, self.layers = network_size(self.space, s.channels, s.layers)

    def __call__(self, candidate: Any) -> tuple[str, dict[str, float], dict[str, float]]:
        s = self.settings
        text = candidate_text(self.space, candidate)
        threads = torch.get_num_threads()
        torch.set_num_threads(max(1, s.threads))
        try:
            scores, seconds = self._score(candidate, text)
        finally:
            torch.set_num_threads(threads)  # the caller's, as it was
        return text, scores, seconds

    def _score(self, candidate: Any, text: str):
        s = self.settings
        return score_candidate(
            self.space, candidate, list(s.proxies), self.x, self.y,
            num_classes=self.info.num_classes, channels=self.channels, layers=self.layers,
            family=self.info.network, seed=candidate_seed(s.seed, text),
            channels_last=s.channels_last)


_worker: Scorer | None = None


def _start_worker(settings: dict[str, Any]) -> None:
    global _worker
    _worker = Scorer(ScoreSettings(**settings))


def _score_in_worker(text: str):
    return _worker(_worker.space.parse(text) if hasattr(_worker.space, "parse") else text)


# -- the CSV ---------------------------------------------------------------------------------
def header(proxies: Sequence[str]) -> list[str]:
    return ["arch", *proxies, "seconds"]


def _row_text(values: list[Any]) -> str:
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerow(values)
    return out.getvalue()


def rows_done(path: Path, columns: list[str], texts: Sequence[str]) -> int:
    """The rows of an earlier run of the same scoring already in `path` (0: none, a new file),
    checked against `columns` and the candidates' `texts`; a half-written last line is cut
    off the file."""
    if not path.exists() or path.stat().st_size == 0:
        return 0
    raw = path.read_bytes()
    if not raw.endswith(b"\n"):  # killed mid-row: keep the whole lines
        raw = raw[:raw.rfind(b"\n") + 1]
        with open(path, "r+b") as f:
            f.truncate(len(raw))
    lines = raw.decode("utf-8").splitlines()
    if not lines:
        return 0
    found = next(csv.reader([lines[0]]))
    if found != columns:
        raise UserError(f"{path}: its columns are {', '.join(found)}, not this run's "
                        f"{', '.join(columns)}; give another --out or the same --proxies")
    done = 0
    for n, line in enumerate(lines[1:], 2):
        cells = next(csv.reader([line]))
        if done >= len(texts) or cells[0] != texts[done]:
            raise UserError(f"{path}, line {n}: {cells[0][:60]!r} is not candidate {done + 1} "
                            f"of this run's list; give another --out or the same candidates")
        done += 1
    return done


def peak_rss_mib() -> float:
    """This process's peak resident memory (and its finished children's), MiB."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, kids) / 1024.0


def score_to_csv(settings: ScoreSettings, candidates: Sequence[Any], out: str | os.PathLike, *,
                 workers: int = 1, progress: bool = True,
                 log=lambda line: print(line, file=sys.stderr)) -> dict[str, Any]:
    """Scores `candidates` into `out` (see the module's text); returns the summary that is
    also written beside it as `<out>.json`: per proxy the mean seconds per candidate, the
    peak memory, the counts."""
    from darts.spaces import get_space

    space = get_space(settings.space)
    texts = [candidate_text(space, c) for c in candidates]
    path = Path(out)
    columns = header(settings.proxies)
    done = rows_done(path, columns, texts)
    if done:
        log(f"{path}: {done} of {len(texts)} candidates already scored; going on")
    scorer = Scorer(settings) if workers == 1 else None
    if done == 0:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(_row_text(columns))
    todo = list(candidates[done:])
    seconds: dict[str, float] = {p: 0.0 for p in settings.proxies}
    start = time.perf_counter()
    if workers > 1:
        context = multiprocessing.get_context("spawn")
        pool = context.Pool(workers, initializer=_start_worker, initargs=(asdict(settings),))
        results: Iterable = pool.imap(_score_in_worker, texts[done:], chunksize=4)
    else:
        pool = None
        results = map(scorer, todo)
    bar = tqdm(results, total=len(todo), disable=not progress, unit="arch", file=sys.stderr)
    try:
        with open(path, "a", encoding="utf-8") as f:
            for k, (text, scores, took) in enumerate(bar, 1):
                f.write(_row_text([text, *(_cell(scores[p]) for p in settings.proxies),
                                   f"{sum(took.values()):.4f}"]))
                f.flush()
                for p in settings.proxies:
                    seconds[p] += took[p]
                if not progress and (k % 100 == 0 or k == len(todo)):
                    eta = (time.perf_counter() - start) / k * (len(todo) - k)
                    log(f"{done + k}/{len(texts)} scored, eta {format_duration(eta)}")
    finally:
        if pool is not None:
            pool.terminate()
    n = max(1, len(todo))
    summary = {"space": settings.space, "candidates": len(texts), "scored_now": len(todo),
               "proxies": list(settings.proxies), "settings": asdict(settings),
               "workers": workers, "wall_s": time.perf_counter() - start,
               "mean_s_per_candidate": {p: seconds[p] / n for p in settings.proxies},
               "peak_rss_mib": peak_rss_mib()}
    from darts.train.files import save_json

    save_json(summary, path.with_name(path.name + ".json"))
    return summary


def _cell(value: float) -> str:
    return repr(float(value)) if math.isfinite(value) else str(float(value))


def read_scores(path: str | os.PathLike) -> tuple[list[str], dict[str, list[float]]]:
    """(candidate texts, {proxy: scores}) of a scores CSV; one UserError for a bad file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise UserError(f"{path}: cannot read it ({e.strerror or type(e).__name__})") from None
    rows = list(csv.reader(text.splitlines()))
    if len(rows) < 2 or rows[0][:1] != ["arch"] or rows[0][-1] != "seconds":
        raise UserError(f"{path}: not a scores file of `python -m darts.proxies score` "
                        f"(a header arch,...,seconds and at least one row)")
    names = rows[0][1:-1]
    archs, columns = [], {n: [] for n in names}
    for n, row in enumerate(rows[1:], 2):
        if len(row) != len(rows[0]):
            raise UserError(f"{path}, line {n}: {len(row)} cells, the header has {len(rows[0])}")
        archs.append(row[0])
        for name, cell in zip(names, row[1:-1], strict=True):
            try:
                columns[name].append(float(cell))
            except ValueError:
                raise UserError(f"{path}, line {n}: {name} is {cell!r}, not a number") from None
    return archs, columns


def summary_line(summary: dict[str, Any]) -> str:
    per = ", ".join(f"{p} {s:.3f}" for p, s in summary["mean_s_per_candidate"].items())
    return (f"{summary['scored_now']} candidates scored in {format_duration(summary['wall_s'])} "
            f"({per} s per candidate); peak memory {summary['peak_rss_mib']:.0f} MiB")


def default_threads(workers: int) -> int:
    return max(1, available_cpus() // max(1, workers))


def sample_candidates(space: Any, n: int, seed: int, stream: str = "") -> list[Any]:
    """`n` different candidates drawn by `seed` (as a strategy seeded so draws them); with
    `stream`, from a random stream of their own (a warm start's sample is then not the
    strategy's first draws)."""
    from darts.spaces import to_text

    rng = random.Random(f"{stream}:{seed}" if stream else seed)
    seen, out = set(), []
    for _ in range(100 * n + 1000):
        c = space.sample(rng)
        text = to_text(space, c)
        if text not in seen:
            seen.add(text)
            out.append(c)
            if len(out) == n:
                return out
    raise UserError(f"--sample {n}: the space gave only {len(out)} different candidates")
