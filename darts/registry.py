"""One small registry for every extension point: a name -> object map that a plugin fills.

    STRATEGIES = Registry("strategy", "--strategy")
    STRATEGIES.register("hill", HillClimbing)      # or @STRATEGIES.register("hill") on a class
    STRATEGIES.lookup("hill")                       # the object, or one UserError naming the flag
    "--strategy" choices                            # the registry itself: argparse and the
                                                    # config checks see what is registered now

A Registry is a dict (so `name in REGISTRY`, `REGISTRY[name]` and iteration work as on any
map), with `register`, which refuses a name taken twice unless asked to overwrite, and
`lookup`, whose error lists the registered names. Anchor: timm's `register_model`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

from darts.errors import UserError

T = TypeVar("T")


class Registry(dict):
    def __init__(self, kind: str, flag: str, items: Iterable[tuple[str, Any]] = ()):
        super().__init__(items)
        self.kind, self.flag = kind, flag

    def register(self, name: str, obj: Any = None, *, overwrite: bool = False) -> Any:
        """Registers `obj` as `name`; without `obj`, a decorator that registers what it
        decorates. Returns `obj`."""
        if not isinstance(name, str) or not name or "," in name or name != name.strip():
            raise ValueError(f"a {self.kind} name must be a non-empty word, got {name!r}")

        def add(value: T) -> T:
            if name in self and not overwrite:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self[name] = value
            return value

        return add if obj is None else add(obj)

    def lookup(self, name: str) -> Any:
        """The object registered as `name`; an unknown name is one UserError naming the flag
        and the choices (a plugin's names among them once `--plugins` loaded it)."""
        try:
            return self[name]
        except KeyError:
            raise UserError(f"{self.flag} {name}: unknown {self.kind}; choose one of "
                            f"{', '.join(self)} (a plugin file given with --plugins can "
                            f"register more)") from None


class Choices:
    """The choices of a flag: some fixed names before a registry's live names (e.g. the
    gradient search's `darts` before the multi-trial strategies)."""

    def __init__(self, fixed: Iterable[str], registry: Registry,
                 keep: Callable[[str], bool] = lambda name: True):
        self.fixed, self.registry, self.keep = tuple(fixed), registry, keep

    def __iter__(self) -> Iterator[str]:
        yield from self.fixed
        yield from (name for name in self.registry if name not in self.fixed and self.keep(name))

    def __contains__(self, name: object) -> bool:
        return name in self.fixed or (name in self.registry and self.keep(name))  # type: ignore[operator]

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def __repr__(self) -> str:
        return repr(tuple(self))
