"""Configs as dataclasses, their command-line flags, and their JSON form.

A config class is the single source of a run's settings: each field's default is the
paper's value and its `help` metadata is the flag's help text. `add_arguments` turns the
fields into argparse flags of the same name (the reference code's flag names), so the two
never drift apart.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import types
import typing
from typing import Any

from darts.errors import UserError


def _base_type(tp: Any) -> Any:
    """`int | None` -> int; `Literal[...]` is left to `choices`."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0] if len(args) == 1 else str
    return tp


def finite_float(text: str) -> float:
    """argparse type of every float flag: a finite number (`inf` and `nan` are refused)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def add_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.metadata.get("cli") is False:
            continue
        tp = _base_type(hints[f.name])
        kwargs: dict[str, Any] = {"help": f.metadata.get("help", ""), "dest": f.name}
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        if default is not None:
            kwargs["help"] += f" (default: {default})"
        if tp is bool:
            parser.add_argument(f"--{f.name}", action=argparse.BooleanOptionalAction,
                                default=argparse.SUPPRESS, **kwargs)
            continue
        if "choices" in f.metadata:
            kwargs["choices"] = f.metadata["choices"]
        if f.metadata.get("action") == "append":  # a list field: the flag repeated
            parser.add_argument(f"--{f.name}", *f.metadata.get("aliases", ()), action="append",
                                type=str, default=argparse.SUPPRESS,
                                metavar=f.metadata.get("metavar"), **kwargs)
            continue
        parser.add_argument(f"--{f.name}", *f.metadata.get("aliases", ()),
                            type=finite_float if tp is float else tp, default=argparse.SUPPRESS,
                            metavar=f.metadata.get("metavar"), **kwargs)


def from_arguments(cls: type, args: argparse.Namespace):
    """The config with the flags the user gave; fields not given keep their defaults."""
    names = {f.name for f in dataclasses.fields(cls)}
    given = {k: v for k, v in vars(args).items() if k in names}
    return cls(**given)


def given_flags(args: argparse.Namespace, cls: type) -> set[str]:
    names = {f.name for f in dataclasses.fields(cls)}
    return {k for k in vars(args) if k in names}


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def _allowed(tp: Any) -> tuple[tuple[type, ...], bool]:
    """(the JSON types a field of type `tp` takes, whether None is allowed)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        kinds: tuple[type, ...] = ()
        for a in args:
            if a is not type(None):
                kinds += _allowed(a)[0]
        return kinds, type(None) in args
    if tp is float:
        return (float, int), False
    if origin in (list, tuple):  # a JSON list, whichever of the two the field holds
        return (list, tuple), False
    return (origin or tp,), False


def _check_value(f: dataclasses.Field, tp: Any, value: Any, where: str) -> None:
    kinds, optional = _allowed(tp)
    if value is None and optional:
        return
    ok = isinstance(value, kinds) and not (isinstance(value, bool) and bool not in kinds)
    if not ok:
        names = " or ".join(k.__name__ for k in kinds) + (" or null" if optional else "")
        raise UserError(f"{where}: config key {f.name!r} must be {names}, not {value!r:.60}")
    if isinstance(value, float) and not math.isfinite(value):
        raise UserError(f"{where}: config key {f.name!r} must be a finite number, not {value}")
    choices = f.metadata.get("choices")
    if choices is not None and value not in choices:
        raise UserError(f"{where}: config key {f.name!r} is {value!r:.60}; choose one of "
                        f"{', '.join(map(str, choices))}")


def _merged(cls: type, data: dict[str, Any], where: str) -> dict[str, Any]:
    """`data` with the keys of an older config (`cls.MERGED`: old key -> (field, unset value))
    moved into the field that holds their notion now; both set to different values: one
    UserError."""
    data = dict(data)
    for old, (new, unset) in getattr(cls, "MERGED", {}).items():
        if old not in data:
            continue
        value = data.pop(old)
        if value == unset:
            continue
        if data.get(new, unset) not in (unset, value):
            raise UserError(f"{where}: the config sets both {old!r} ({value!r:.40}) and {new!r} "
                            f"({data[new]!r:.40}), one setting now (--{new}); keep one of them")
        data[new] = value
    return data


def config_from_dict(cls: type, data: Any, where: str):
    """The config `cls` of a JSON-like dict (a checkpoint's or a config.json's); every key
    known and every value of its field's type, else one UserError naming `where`."""
    if not isinstance(data, dict):
        raise UserError(f"{where}: the config is not a JSON object of settings")
    data = _merged(cls, data, where)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(map(str, set(data) - set(fields)))
    if unknown:
        raise UserError(f"{where}: unknown config key(s) {', '.join(unknown)[:200]}")
    hints = typing.get_type_hints(cls)
    for name, value in data.items():
        _check_value(fields[name], hints[name], value, where)
    return cls(**data)
