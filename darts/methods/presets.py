"""`--method NAME`: a published method as the pieces and settings its paper and code use.

A preset is a list of configured pieces with the search's settings: the published pieces are
configured by their flags (`--skip_dropout 0.7` is P-DARTS's dropout at 0.7), the mixing rule
and regularizer by `--mixing` and `--regularizer`, any other piece by `pieces` (the
`--pieces` specs). A preset sets those flags; a flag given explicitly overrides it. Each value
carries its source. `register_preset(name, settings)` adds one (a plugin's: its own pieces
and settings). A preset naming a flag the config lacks (a config other than
train_search.py's) is refused with a message naming the flags.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from darts.errors import UserError
from darts.registry import Registry

# name -> {field: (value, source)}
PUBLISHED: dict[str, dict[str, tuple[Any, str]]] = {
    "darts": {
        "order": (2, "Liu et al. 2019, Table 1: second order is DARTS's best CIFAR-10 cell"),
    },
    "pdarts": {
        "skip_dropout": (0.7, "chenxin061/pdarts README: --dropout_rate 0.1/0.4/0.7 per stage; "
                              "one stage here takes the last stage's, which decides the cell"),
        "warmup_epochs": (10, "chenxin061/pdarts train_search.py: eps_no_archs = [10, 10, 10]"),
        "max_skip": (2, "P-DARTS Section 3.3 and train_search.py: 2 skip-connections kept"),
        "epochs": (25, "chenxin061/pdarts train_search.py: --epochs 25 per stage"),
        "batch_size": (96, "chenxin061/pdarts train_search.py: --batch_size 96"),
        "learning_rate_min": (0.0, "chenxin061/pdarts train_search.py: --learning_rate_min 0.0"),
        "arch_learning_rate": (6e-4, "chenxin061/pdarts train_search.py: --arch_learning_rate 6e-4"),
        "order": (1, "chenxin061/pdarts train_search.py: a first-order alpha step"),
    },
    "pc-darts": {
        "partial_channels": (4, "Xu et al. 2020, Section 4.2; yuhuixu1993/PC-DARTS model_search.py: k = 4"),
        "warmup_epochs": (15, "yuhuixu1993/PC-DARTS train_search.py: `if epoch >= 15: architect.step`"),
        "batch_size": (256, "yuhuixu1993/PC-DARTS train_search.py: --batch_size 256"),
        "learning_rate": (0.1, "yuhuixu1993/PC-DARTS train_search.py: --learning_rate 0.1"),
        "arch_learning_rate": (6e-4, "yuhuixu1993/PC-DARTS train_search.py: --arch_learning_rate 6e-4"),
        "order": (1, "yuhuixu1993/PC-DARTS train_search.py: --unrolled off"),
    },
    "sdarts-rs": {
        "perturb": ("random", "Chen & Hsieh 2020, SDARTS-RS"),
        "perturb_epsilon": (0.3, "xiangning-chen/SmoothDARTS sota/cnn/train_search.py: --epsilon_alpha 0.3"),
        "order": (1, "xiangning-chen/SmoothDARTS sota/cnn/train_search.py: --unrolled off"),
    },
    "sdarts-adv": {
        "perturb": ("adversarial", "Chen & Hsieh 2020, SDARTS-ADV"),
        "perturb_epsilon": (0.3, "xiangning-chen/SmoothDARTS sota/cnn/train_search.py: --epsilon_alpha 0.3"),
        "order": (1, "xiangning-chen/SmoothDARTS sota/cnn/train_search.py: --unrolled off"),
    },
    "darts-minus": {
        "aux_skip": (1.0, "Meituan-AutoML/DARTS- scripts/run_darts_minus.sh: --auxiliary_skip --skip_beta 1 --decay linear"),
        "order": (1, "Meituan-AutoML/DARTS- src/search/args.py: --unrolled off"),
    },
    # Methods that change how the mixing weights are made or what the alphas minimise.
    "gdas": {
        "mixing": ("gdas", "Dong & Yang, CVPR 2019: Gumbel-softmax sampling of one op per edge"),
        "order": (1, "D-X-Y/AutoDL-Projects exps/NAS-Bench-201-algos/GDAS.py: a first-order "
                     "alpha step"),
    },
    "drnas": {
        "mixing": ("drnas", "Chen et al., ICLR 2021: Dirichlet mixing weights; their code's "
                             "default regulariser (--reg_type l2) is Adam's weight decay 1e-3 "
                             "on the alphas, DARTS's own"),
    },
    "fairdarts": {
        "mixing": ("fairdarts", "Chu et al., ECCV 2020: a sigmoid per op"),
        "regularizer": ("zero-one", "Chu et al., ECCV 2020: the zero-one loss, weight 10"),
    },
    "beta-darts": {
        "regularizer": ("beta", "Ye et al., CVPR 2022: the beta-decay regularisation"),
    },
    # ENAS as NAS-Bench-201's baseline runs it (the strategy's own defaults are the paper's).
    "enas": {
        "strategy": ("enas", "Pham et al., ICML 2018: a controller and shared weights in turn"),
        "learning_rate": (0.05, "D-X-Y/AutoDL-Projects configs/nas-benchmark/algos/ENAS.config: LR 0.05"),
        "learning_rate_min": (0.0005, "AutoDL-Projects ENAS.config: eta_min 0.0005"),
        "weight_decay": (2.5e-4, "AutoDL-Projects ENAS.config: decay 0.00025"),
        "nesterov": (True, "AutoDL-Projects ENAS.config: nesterov 1"),
        "batch_size": (128, "AutoDL-Projects ENAS.config: batch_size 128"),
        "controller_lr": (0.001, "AutoDL-Projects ENAS.config: controller_lr 0.001"),
        "controller_hidden": (32, "AutoDL-Projects search_model_enas_utils.py: lstm_size 32"),
        "controller_layers": (2, "AutoDL-Projects search_model_enas_utils.py: lstm_num_layers 2"),
        "controller_steps": (50, "AutoDL-Projects scripts-search/algos/ENAS.sh: "
                                 "--controller_train_steps 50"),
        "controller_aggregate": (20, "AutoDL-Projects ENAS.sh: --controller_num_aggregate 20"),
    },
}

PRESETS = Registry("method", "--method")


def register_preset(name: str, settings: dict[str, tuple[Any, str]], *,
                    overwrite: bool = False) -> dict[str, tuple[Any, str]]:
    """Adds `--method name`: `settings` maps each flag (a config field: a piece's flag, or
    `pieces` with a tuple of `--pieces` specs) to (value, its source)."""
    bad = [k for k, v in settings.items()
           if not (isinstance(k, str) and isinstance(v, tuple) and len(v) == 2
                   and isinstance(v[1], str))]
    if bad:
        raise ValueError(f"preset {name!r}: each setting is flag -> (value, source); "
                         f"{bad[0]!r} is not")
    return PRESETS.register(name, dict(settings), overwrite=overwrite)


for _name, _settings in PUBLISHED.items():
    register_preset(_name, _settings)


def _fields(cfg: Any) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cfg)}


def apply(cfg: Any, explicit: set[str] | None = None) -> Any:
    """`cfg` with its `method`'s preset values, except for the fields in `explicit` (the
    flags the user gave); `explicit` None: the fields still at their defaults take the
    preset. A preset naming a field this config lacks is a UserError."""
    if not getattr(cfg, "method", ""):
        return cfg
    preset = PRESETS.lookup(cfg.method)
    fields = _fields(cfg)
    missing = [k for k in preset if k not in fields]
    if missing:
        raise UserError(f"--method {cfg.method} sets {', '.join('--' + k for k in missing)}, "
                        f"which this command does not have (they are train_search.py's: "
                        f"docs/collapse-pieces.md)")
    if explicit is None:
        explicit = {k for k in preset if getattr(cfg, k) != fields[k].default}
    values = {k: v for k, (v, _) in preset.items() if k not in explicit or k == "pieces"}
    if "pieces" in values:  # --pieces adds to the preset's pieces, before them
        values["pieces"] = (*cfg.pieces, *values["pieces"])
    return dataclasses.replace(cfg, **values)


def describe(cfg: Any) -> list[str]:
    """One line per value of `cfg.method`'s preset: the value, its source, and whether an
    explicit flag overrode it."""
    lines = []
    for k, (v, source) in PRESETS.get(cfg.method, {}).items():
        now = getattr(cfg, k, None)
        if k == "pieces":  # --pieces adds to them
            how = "set" if set(v) <= set(now or ()) else f"overridden by --{k} {now}"
        else:
            how = "set" if now == v else f"overridden by --{k} {now}"
        lines.append(f"--method {cfg.method}: --{k} {v} {how} ({source})")
    return lines
