"""Search spaces for the multi-trial strategies, one module each, all with the same functions.

A space module gives what strategies and evaluators need of it; a candidate is an immutable,
hashable value with a canonical one-line text (what `history.jsonl` records):

    NAME                        the `--space` name
    sample(rng)                 a candidate drawn uniformly (`rng`: a random.Random)
    mutate(c, rng, rate=None)   one decision changed (rate=None), or each with probability `rate`
    crossover(a, b, rng)        a child whose decisions come from either parent
    decisions()                 the choices of every decision, in order (a controller's steps)
    to_decisions(c) / from_decisions(choices)   a candidate <-> the index of each choice
    encode(c)                   a fixed-length vector of floats (a surrogate model's input)
    to_text(c)                  the candidate's text (`str(c)` where a module has no to_text)
    parse(text)                 the candidate that text names; a UserError naming what is wrong
    save(c, path)               a file `train_final.py --arch` takes

and what the runs need of it:

    RESULT_FILE                 the file name a search's best candidate is saved as
    retrain_flags(path)         the train_final.py flags that retrain the file at `path`
    SCORED_BY_TABLE             whether a benchmark table scores it (`--evaluator benchmark`);
                                then optionally table_key(c), row_key(record, where) and
                                TABLE_TEXT_COLUMNS (darts.benchmarks.nb201.BenchmarkTable)
    for_config(cfg)             optional: the space as the run's flags shape it (the darts
                                space over `--ops`)
    NETWORK_SIZES               (channels, layers) of its network by default; None where a
                                candidate fixes its own (then MIN_LAYERS, LAYERS_NOUN are unused)
    network(c, num_classes, channels, layers, family=, auxiliary=)   the discrete network
    supernet(num_classes, channels, layers), ONESHOT_DEFAULTS        optional: a weight-sharing
                                supernet with `forward_path(x, c)` (`--evaluator oneshot`)
    graphs(c)                   optional: {kind: graphviz.Digraph}, the candidate's pictures
                                (the library's own spaces are drawn by darts.visualize)
    all_candidates()            optional: every candidate, for a space small enough to list
                                (`python -m darts.proxies score --all`)
    from_json(obj, where)       optional: the candidate of a JSON object (the darts space's
                                genotype.json form), for candidate files
    gradient                    optional: DARTS's gradient search of the space (its supernet,
                                decoding, checks, defaults; darts.spaces.darts_cells.GradientSearch)

Each is registered by name in `SPACES`; a plugin adds its own with `register_space(name,
space)`, where `space` is any object with those attributes (a module of its own, a class
instance), and `--space name` then searches it.

    nb201   NAS-Bench-201's cell (darts.spaces.nb201)
    nb101   NAS-Bench-101's cell (darts.spaces.nb101)
    darts   the DARTS cell pair, a genotype (darts.spaces.darts_cells)
    cnn     a plain chain of conv layers trained from scratch (darts.spaces.cnn)
"""

from __future__ import annotations

from typing import Any

from darts.registry import Registry
from darts.spaces import cnn, darts_cells, nb101, nb201

SPACES = Registry("space", "--space",
                  [(s.NAME, s) for s in (darts_cells.SPACE, nb201, nb101, cnn)])


def register_space(name: str, space: Any, *, overwrite: bool = False) -> Any:
    """Adds a search space (see the module's text for what it must provide)."""
    missing = [a for a in ("sample", "mutate", "crossover", "decisions", "to_decisions",
                           "from_decisions", "encode", "parse", "save", "RESULT_FILE",
                           "retrain_flags", "network")
               if not hasattr(space, a)]
    if missing:
        raise ValueError(f"space {name!r} lacks {', '.join(missing)} (see darts.spaces)")
    if getattr(space, "NAME", None) is None:
        space.NAME = name
    return SPACES.register(name, space, overwrite=overwrite)


def get_space(name: str) -> Any:
    """The space registered as `name`; an unknown name is one UserError listing the spaces."""
    return SPACES.lookup(name)


def to_text(space: Any, candidate: Any) -> str:
    """A candidate's canonical text: the space's `to_text`, else `str`."""
    return getattr(space, "to_text", str)(candidate)
