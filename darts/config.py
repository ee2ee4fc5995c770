"""Configs as dataclasses, their command-line flags, and their JSON form.

A config class is the single source of a run's settings: each field's default is the
paper's value and its `help` metadata is the flag's help text. `add_arguments` turns the
fields into argparse flags of the same name (the reference code's flag names), so the two
never drift apart.
"""

from __future__ import annotations

import argparse
import dataclasses
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
        parser.add_argument(f"--{f.name}", type=tp, default=argparse.SUPPRESS,
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


def config_from_dict(cls: type, data: dict[str, Any], where: str):
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise UserError(f"{where}: unknown config key(s) {', '.join(unknown)}")
    return cls(**data)
