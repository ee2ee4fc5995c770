"""A user's own Python modules, imported before anything is built (`--plugins`).

A plugin is a Python file (or an importable module name) whose top level registers what the
library should know by name:

- spaces: `darts.spaces.register_space(name, space)`, chosen with `--space name`;
- strategies: `darts.strategies.register_strategy(name, cls)`, `--strategy name`;
- evaluators: `darts.evaluators.register_evaluator(name, kind)`, `--evaluator name`;
- ops: `darts.primitives.register_op(name, factory)`, then `--ops ...,name` searches over it
  and genotypes may use it;
- mixing rules: `darts.methods.mixing.register_mixing(name, rule)`, chosen with `--mixing
  name` (how an edge's alpha row becomes the weights of its ops; softmax in DARTS);
- regularizers: `darts.methods.regularizers.register_regularizer(name, loss)`, chosen with
  `--regularizer name` (a term added to the validation loss that the alphas minimise);
- collapse pieces: `darts.methods.pieces.register_piece(name, cls)`, switched on with
  `--pieces name[:key=value,...]` (hooks of the gradient search);
- presets: `darts.methods.presets.register_preset(name, settings)`, `--method name`.

The search, the retraining, `--resume` and `python -m darts.visualize` all take `--plugins`;
a run records the plugins' absolute paths in config.json, so its resume and the printed
retrain command import them again. A plugin is code: it runs with the user's rights, as any
script they start does.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import traceback
from pathlib import Path
from types import ModuleType

from darts.errors import UserError

_loaded: dict[str, ModuleType] = {}


def split(spec: str) -> list[str]:
    """The entries of a comma-separated `--plugins` value, blanks dropped."""
    return [s.strip() for s in spec.split(",") if s.strip()]


def _is_path(entry: str) -> bool:
    return entry.endswith(".py") or "/" in entry or "\\" in entry


def absolute(spec: str) -> str:
    """`spec` with each file made absolute (a module name stays a name), for the config: a
    resume from another working directory finds the same files."""
    return ",".join(str(Path(e).resolve()) if _is_path(e) else e for e in split(spec))


def _where(error: BaseException, path: str | None) -> str:
    """The plugin's own line that raised `error` (file:line), if it is in the traceback."""
    frames = traceback.extract_tb(error.__traceback__)
    own = [f for f in frames if path is not None and Path(f.filename) == Path(path)]
    frame = (own or frames or [None])[-1]
    return f" at line {frame.lineno}" if frame is not None and own else ""


def blame(error: BaseException) -> str | None:
    """One line naming the plugin whose code raised `error` (its file, line and function), or
    None where no loaded plugin's code is in the traceback: a plugin's bug is reported as the
    plugin's, not as the library's."""
    files = {Path(m.__file__).resolve(): key for key, m in _loaded.items()
             if getattr(m, "__file__", None)}
    seen, frames = 0, []
    while error is not None and seen < 8:  # the error and what it was raised from
        frames = traceback.extract_tb(error.__traceback__) + frames
        error, seen = error.__cause__ or error.__context__, seen + 1
    for frame in reversed(frames):
        key = files.get(Path(frame.filename).resolve())
        if key is not None:
            return f"in {frame.name}() at line {frame.lineno} of the plugin {key}"
    return None


def load_saved(config: object, where: str) -> None:
    """Imports the plugins a saved config (a run's config.json or checkpoint) names, before
    the config is checked: its flags may name what they register."""
    spec = config.get("plugins") if isinstance(config, dict) else None
    if isinstance(spec, str) and spec:
        load(spec, flag=f"{where}: plugins")


def preload(argv: list[str] | None) -> None:
    """Imports the `--plugins` of a command line before the command line is parsed, so that
    `--space`, `--strategy` and the other flags whose choices a registry holds accept the
    names the plugins register."""
    import argparse

    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    pre.add_argument("--plugins", default="")
    known, _ = pre.parse_known_args(argv)
    if known.plugins:
        load(known.plugins)


def load(spec: str, flag: str = "--plugins") -> list[ModuleType]:
    """Imports every plugin of `spec` once (a second call with the same file is a no-op, so a
    resume in the same process does not register its ops twice). A missing file or a plugin
    that raises is a UserError naming the plugin and the flag."""
    modules = []
    for entry in split(spec):
        key = str(Path(entry).resolve()) if _is_path(entry) else entry
        if key in _loaded:
            modules.append(_loaded[key])
            continue
        try:
            if _is_path(entry):
                path = Path(key)
                if not path.is_file():
                    raise UserError(f"{flag} {entry}: no such file (give the path of a Python "
                                    f"file, or an importable module name)")
                name = f"darts_plugin_{len(_loaded)}_{path.stem}"
                module_spec = importlib.util.spec_from_file_location(name, path)
                if module_spec is None or module_spec.loader is None:
                    raise UserError(f"{flag} {entry}: not a Python file")
                module = importlib.util.module_from_spec(module_spec)
                sys.modules[name] = module  # pickling (DataLoader workers) finds its classes
                try:
                    module_spec.loader.exec_module(module)
                except BaseException:
                    del sys.modules[name]
                    raise
            else:
                module = importlib.import_module(entry)
        except UserError:
            raise
        except ModuleNotFoundError as e:
            if _is_path(entry) or e.name != entry:
                raise UserError(f"{flag} {entry}: {type(e).__name__}: {e}") from e
            raise UserError(f"{flag} {entry}: no module of that name (give the path of a "
                            f"Python file, or an importable module name)") from e
        except Exception as e:  # the plugin's own code failed: say where, in one line
            detail = " ".join(str(e).split()) or "(no message)"
            raise UserError(f"{flag} {entry}: the plugin raised {type(e).__name__}"
                            f"{_where(e, key if _is_path(entry) else None)}: {detail}") from e
        _loaded[key] = module
        modules.append(module)
    return modules
