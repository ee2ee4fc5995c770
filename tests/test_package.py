"""The package that `pip install .` installs: the wheel, built offline from a copy of the tree,
holds every module of darts/, the C source and the published genotypes; its console scripts
name functions that exist and answer --help; its requirements match requirements.txt; every
module it lists imports; and darts/ never imports the root scripts."""

from __future__ import annotations

import ast
import configparser
import email.parser
import importlib
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "darts"
SCRIPTS = {"darts-search": "darts.search:main", "darts-final": "darts.final:main",
           "darts-compare": "darts.compare:main", "darts-nb201": "darts.benchmarks.nb201:main",
           "darts-nb101": "darts.benchmarks.nb101:main",
           "darts-visualize": "darts.visualize:main", "darts-proxies": "darts.proxies.__main__:main"}
EXTRAS = {"bo", "compare", "nb201", "proxies", "all", "ray"}
_SKIP = shutil.ignore_patterns("__pycache__", "*.pyc", "build", "dist", "*.egg-info")


def _in_checkout(pattern: str) -> set[str]:
    return {p.relative_to(ROOT).as_posix() for p in PACKAGE.rglob(pattern)
            if "__pycache__" not in p.parts}


def _leftovers() -> set[str]:
    return {p.name for p in ROOT.iterdir() if p.name in ("build", "dist")
            or p.name.endswith(".egg-info")}


def _backend_missing() -> str | None:
    """Why the wheel cannot be built offline here, or None."""
    if importlib.util.find_spec("setuptools") is None:
        return "setuptools is not installed"
    if (importlib.util.find_spec("setuptools.command.bdist_wheel") is None
            and importlib.util.find_spec("wheel") is None):
        return "neither setuptools >= 70.1 nor wheel is installed"
    return None


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> zipfile.ZipFile:
    """The wheel of a copy of the tree (pyproject.toml, README.md, darts/): the build's
    build/ and darts_nas.egg-info land in the copy, never in the checkout."""
    missing = _backend_missing()
    if missing:
        pytest.skip(f"cannot build a wheel offline: {missing}")
    tmp = tmp_path_factory.mktemp("wheel")
    src, out = tmp / "src", tmp / "out"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    shutil.copytree(PACKAGE, src / "darts", ignore=_SKIP)
    before = _leftovers()
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1"}
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps",
                           "--no-build-isolation", "--no-index", "-q", "-w", str(out)],
                          cwd=tmp, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert _leftovers() == before, "building the wheel left files in the checkout"
    wheels = list(out.glob("darts_nas-*.whl"))
    assert len(wheels) == 1, wheels
    with zipfile.ZipFile(wheels[0]) as z:
        yield z


def _dist_info(z: zipfile.ZipFile, name: str) -> str:
    [path] = [n for n in z.namelist() if n.endswith(f".dist-info/{name}")]
    return z.read(path).decode()


def test_wheel_holds_every_module_the_c_source_and_the_genotypes(wheel):
    names = set(wheel.namelist())
    modules = _in_checkout("*.py")
    assert "darts/search.py" in modules and "darts/spaces/__init__.py" in modules
    assert modules - names == set(), "modules of darts/ missing from the wheel"
    assert {n for n in names if n.endswith(".py")} == modules
    c_source = _in_checkout("*.c")
    assert "darts/accel/kernels.c" in c_source and c_source <= names
    genotypes = _in_checkout("genotypes/*.json")
    assert "darts/genotypes/darts_v2.json" in genotypes and len(genotypes) >= 10
    assert {n for n in names if n.endswith(".json")} == genotypes
    assert not any(n.startswith(("tests/", "benchmarks/", "train_")) for n in names)


def test_console_scripts_name_functions_that_answer_help(wheel, capsys):
    entry_points = configparser.ConfigParser(delimiters=("=",))
    entry_points.read_string(_dist_info(wheel, "entry_points.txt"))
    scripts = dict(entry_points["console_scripts"])
    assert scripts == SCRIPTS
    for script, target in scripts.items():
        module, function = target.split(":")
        main = getattr(importlib.import_module(module), function)
        with pytest.raises(SystemExit) as exit_:
            main(["--help"])
        assert exit_.value.code == 0, script
        assert "usage:" in capsys.readouterr().out, script


def _requirement(line: str) -> tuple[str, frozenset[str]]:
    """('torch', {'>=2.4', '<=2.14.1'}) from `torch>=2.4,<=2.14.1` or `torch<=2.14.1,>=2.4`."""
    name, spec = re.fullmatch(r"\s*([A-Za-z0-9_.\-]+)\s*(.*?)\s*", line).groups()
    return (re.sub(r"[-_.]+", "-", name).lower(),
            frozenset(s.replace(" ", "") for s in spec.split(",") if s.strip()))


def test_requirements_match_requirements_txt(wheel):
    metadata = email.parser.Parser().parsestr(_dist_info(wheel, "METADATA"))
    assert set(metadata.get_all("Provides-Extra")) == EXTRAS
    required, optional = set(), {}
    for line in metadata.get_all("Requires-Dist"):
        spec, _, marker = line.partition(";")
        if marker:
            extra = re.search(r"extra\s*==\s*['\"]([^'\"]+)['\"]", marker).group(1)
            optional.setdefault(extra, set()).add(_requirement(spec))
        else:
            required.add(_requirement(spec))
    assert {name for name, _ in required} == {"torch", "torchvision", "numpy", "tensorboard",
                                              "graphviz", "tqdm", "pillow"}
    assert optional["all"] == set().union(*(v for k, v in optional.items() if k != "all"))
    txt = {_requirement(line) for line in (ROOT / "requirements.txt").read_text().splitlines()
           if line.strip() and not line.lstrip().startswith("#")}
    assert required | optional["all"] <= txt, "pyproject.toml and requirements.txt disagree"


def test_every_module_of_the_wheel_imports(wheel):
    for name in sorted(n for n in wheel.namelist() if n.endswith(".py")):
        module = name[:-3].replace("/", ".").removesuffix(".__init__")
        imported = importlib.import_module(module)
        assert Path(imported.__file__).resolve() == (ROOT / name).resolve()


def test_the_package_never_imports_the_root_scripts():
    scripts = {p.stem for p in ROOT.glob("*.py")}
    assert {"train_search", "train_final"} <= scripts
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            else:
                continue
            assert not {n.split(".")[0] for n in names} & scripts, f"{path} imports a script"
