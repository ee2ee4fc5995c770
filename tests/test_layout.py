"""The house rules that the code's shape can be checked for: no import cycle in darts/, no
space named outside darts/spaces/, no function outside darts/accel/ much longer than a
screen. Static checks of the source (ast), no imports."""

import ast
import re
from pathlib import Path

from conftest import ROOT

DARTS = ROOT / "darts"


def _modules() -> dict[str, Path]:
    mods = {}
    for path in DARTS.rglob("*.py"):
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        mods[name.removesuffix(".__init__")] = path
    return mods


def _imports(path: Path, mods: dict[str, Path]) -> set[str]:
    """The darts modules `path` imports, at any depth (a function's imports too); `from pkg
    import sub` of a submodule imports that submodule."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("darts"):
            subs = [f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in mods]
            out.update(subs if len(subs) == len(node.names) else [*subs, node.module])
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("darts"))
    return {m for m in out if m in mods}


def test_darts_has_no_import_cycle():
    mods = _modules()
    graph = {m: _imports(p, mods) - {m} for m, p in mods.items()}
    state: dict[str, int] = {}
    cycles = []

    def visit(m, path):
        state[m] = 1
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                cycles.append(" -> ".join(path[path.index(n):] + [n]))
            elif n not in state:
                visit(n, path + [n])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert not cycles, cycles


def test_no_space_is_named_outside_the_spaces():
    literal = re.compile(r"[\"'](nb201|nb101|cnn)[\"']")
    hits = [f"{p.relative_to(ROOT)}:{n}" for p in DARTS.rglob("*.py")
            if "spaces" not in p.relative_to(DARTS).parts
            for n, line in enumerate(p.read_text().splitlines(), 1) if literal.search(line)]
    assert len(hits) <= 4, hits


def test_no_function_outside_accel_is_much_longer_than_a_screen():
    long = []
    for path in DARTS.rglob("*.py"):
        if "accel" in path.relative_to(DARTS).parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > 100:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({length})")
    assert not long, long
