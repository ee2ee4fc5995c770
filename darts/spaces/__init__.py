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

    nb201   NAS-Bench-201's cell (darts.spaces.nb201)
    darts   the DARTS cell pair, a genotype (darts.spaces.darts_cells)
    cnn     a plain chain of conv layers trained from scratch (darts.spaces.cnn)
"""
