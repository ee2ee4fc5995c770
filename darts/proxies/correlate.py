"""How well proxy scores rank candidates: rank correlations with a benchmark table's metric.

Per proxy, over the candidates of a scores CSV that the table lists (a non-finite score
ranks lowest):

- Spearman's rho and Kendall's tau-b (scipy.stats) between the score and the metric;
- top-10 % precision: of the 10 % of candidates the proxy ranks highest, the share that are
  among the 10 % best by the metric (Abdelfattah et al., ICLR 2021, Table 2's "top-10%/top-10%");
- a scatter plot per proxy: the metric against the proxy's rank (matplotlib).

Written beside the scores (or to `out`): `correlation.json` and `correlation.csv`, and
`<proxy>.png`.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from darts.errors import UserError


def top_fraction_precision(scores: np.ndarray, truth: np.ndarray, fraction: float = 0.1) -> float:
    """The share of the top `fraction` by `scores` that is in the top `fraction` by `truth`
    (at least one candidate each)."""
    k = max(1, int(round(fraction * len(scores))))
    top_scores = set(np.argsort(-scores, kind="stable")[:k].tolist())
    top_truth = set(np.argsort(-truth, kind="stable")[:k].tolist())
    return len(top_scores & top_truth) / k


def correlate(scores_path: str | os.PathLike, benchmark: str, metric: str, *,
              out: str | os.PathLike | None = None, plots: bool = True,
              space: Any = None) -> dict[str, Any]:
    from scipy import stats

    from darts.benchmarks.nb201 import BenchmarkTable
    from darts.proxies.score import read_scores
    from darts.train.files import save_json

    archs, columns = read_scores(scores_path)
    table = BenchmarkTable.load(benchmark, space)  # space None: NAS-Bench-201's
    if metric not in table.metrics:
        raise UserError(f"--metric {metric}: {table.path} has no such column; it has "
                        f"{', '.join(table.metrics)}")
    keep = [i for i, a in enumerate(archs)
            if (row := table.lookup(a)) is not None and math.isfinite(row[metric])]
    if len(keep) < 3:
        raise UserError(f"{scores_path}: only {len(keep)} of its {len(archs)} candidates are in "
                        f"{table.path} with a {metric} value; need at least 3")
    truth = np.array([table.lookup(archs[i])[metric] for i in keep])
    folder = Path(out) if out is not None else Path(scores_path).parent
    folder.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"scores": str(scores_path), "benchmark": str(table.path),
                              "metric": metric, "candidates": len(keep), "proxies": {}}
    for name, values in columns.items():
        x = np.array([values[i] for i in keep], dtype=np.float64)
        x = np.where(np.isfinite(x), x, -np.inf)  # a failed score ranks lowest
        ranked = stats.rankdata(x)
        rho = float(stats.spearmanr(ranked, truth).statistic)
        tau = float(stats.kendalltau(ranked, truth).statistic)
        result["proxies"][name] = {"spearman": rho, "kendall": tau,
                                   "top10_precision": top_fraction_precision(ranked, truth)}
        if plots:
            _scatter(folder / f"{name}.png", ranked, truth, name, metric, rho)
    save_json(result, folder / "correlation.json")
    lines = ["proxy,spearman,kendall,top10_precision"] + [
        f"{n},{r['spearman']:.4f},{r['kendall']:.4f},{r['top10_precision']:.4f}"
        for n, r in result["proxies"].items()]
    (folder / "correlation.csv").write_text("\n".join(lines) + "\n")
    result["folder"] = str(folder)
    return result


def _scatter(path: Path, ranked: np.ndarray, truth: np.ndarray, name: str, metric: str,
             rho: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4), dpi=100)
    ax.scatter(ranked, truth, s=4, alpha=0.5)
    ax.set_xlabel(f"{name} rank (1 = lowest score)")
    ax.set_ylabel(metric)
    ax.set_title(f"{name}: Spearman {rho:.3f}")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def format_table(result: dict[str, Any]) -> str:
    head = (f"{result['candidates']} candidates of {result['scores']} against "
            f"{result['metric']} of {result['benchmark']}")
    rows = [f"{'proxy':<10} {'spearman':>9} {'kendall':>9} {'top-10%':>8}"]
    rows += [f"{n:<10} {r['spearman']:>9.3f} {r['kendall']:>9.3f} {r['top10_precision']:>8.3f}"
             for n, r in result["proxies"].items()]
    return "\n".join([head, *rows, f"written to {result['folder']}"])
