"""Extending without editing the library: the README's "Extending" section run as written
(at a smaller size), and the extension points it uses, each against an independent reference."""

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time

import pytest
import torch
import torch.nn as nn
from conftest import ROOT

from darts import plugins, visualize
from darts.architect import Architect
from darts.cell_topology import SearchSpace
from darts.errors import UserError
from darts.methods.mixing import MIXINGS, build_mixing, register_mixing
from darts.methods.regularizers import REGULARIZERS, build_regularizer, register_regularizer
from darts.search_config import SearchConfig
from darts.supernet import SearchNetwork
from darts.train.checkpoint import load_checkpoint

# What the README's commands become here: the same flags at a size that runs in seconds.
SMALLER = {"--epochs": "3", "--layers": "3", "--init_channels": "4", "--image_size": "8",
           "--synthetic_size": "64", "--batch_size": "16"}


def readme_section(title: str) -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index(f"## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end]


def code_blocks(section: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", section, flags=re.S)


def smaller(argv: list[str]) -> list[str]:
    out = list(argv)
    for i, arg in enumerate(out[:-1]):
        if arg in SMALLER:
            out[i + 1] = SMALLER[arg]
    return out


def as_run_here(line: str) -> list[str]:
    """A README command line as argv: the scripts from the checkout, sizes made smaller."""
    argv = shlex.split(line.split("#")[0])
    assert argv[0] == "python"
    argv[0] = sys.executable
    if argv[1].endswith(".py"):
        argv[1] = str(ROOT / argv[1])
    return smaller(argv)


def run(argv, cwd, **kw):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=300,
                          **kw)


def test_the_readme_extending_section_runs_as_written(tmp_path):
    section = readme_section("Extending")
    (plugin,) = code_blocks(section, "python")
    (commands,) = code_blocks(section, "bash")
    search, resume, draw = [line for line in commands.splitlines() if line.strip()]
    (tmp_path / "my_ops.py").write_text(plugin)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}

    # The search, killed (SIGKILL) as soon as its first epoch's checkpoint is written.
    run_dir = tmp_path / "runs" / "my-search"
    proc = subprocess.Popen(as_run_here(search) + ["--workers", "0"], cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while not (run_dir / "checkpoint.pt").exists():
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() < deadline
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    ckpt = load_checkpoint(run_dir / "checkpoint.pt")
    assert ckpt["epoch"] < 3, "the search finished before it was killed"
    config = json.loads((run_dir / "config.json").read_text())
    assert config["ops"] == "none,skip_connect,max_pool_3x3,sep_conv_3x3,conv_3x3"
    assert config["plugins"] == str(tmp_path / "my_ops.py")
    assert config["regularizer"] == "beta_decay" and config["pieces"] == ["skip_penalty:weight=2"]
    assert ckpt["model"]["alphas_normal"].shape == (14, 5)

    # --resume, in a fresh process: it imports my_ops.py again from the recorded path.
    done = run(as_run_here(resume), tmp_path)
    assert done.returncode == 0, done.stderr
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["complete"] and len(metrics["history"]) == 3
    assert [r["skip_penalty"] for r in metrics["history"]] == [0.0, 2 / 3, 4 / 3]  # weight * t / T
    genotype = json.loads((run_dir / "genotype.json").read_text())
    used = {op for op, _ in genotype["normal"] + genotype["reduce"]}
    assert used <= {"skip_connect", "max_pool_3x3", "sep_conv_3x3", "conv_3x3"}

    # The retrain command the search printed, as printed: a network of the search's size.
    log = (run_dir / "log.txt").read_text()
    printed = re.search(r"(.*); retrain it with:\n\s+(python train_final\.py .*)", log)
    assert printed and "smaller than the paper's" in printed.group(1)
    retrain = run(as_run_here(printed.group(2)), tmp_path)
    assert retrain.returncode == 0, retrain.stderr
    (final_dir,) = (tmp_path / "runs").glob("final-*")
    final = json.loads((final_dir / "metrics.json").read_text())
    assert final["complete"] and final["epochs_done"] == 3
    final_config = json.loads((final_dir / "config.json").read_text())
    assert (final_config["layers"], final_config["init_channels"]) == (3, 4)
    assert (final_config["batch_size"], final_config["cutout_length"]) == (16, 4)

    # The visualizer draws it with the plugin; without it, one line that names --plugins.
    if visualize.dot_available():
        drawn = run(as_run_here(draw), tmp_path)
        assert drawn.returncode == 0, drawn.stderr
        assert (run_dir / "normal.png").exists()
    argv = as_run_here(draw)
    refused = run(argv[:argv.index("--plugins")], tmp_path)
    if "conv_3x3" in json.dumps(genotype):
        assert refused.returncode == 2
        assert refused.stderr.count("\n") == 1 and "--plugins" in refused.stderr


def test_an_op_of_ones_own_without_its_plugin_is_one_line(tmp_path):
    argv = [sys.executable, str(ROOT / "train_search.py"), "--dataset", "synthetic",
            "--ops", "none,conv_3x3", "--save", str(tmp_path)]
    result = run(argv, tmp_path)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert "--ops: unknown op 'conv_3x3'" in result.stderr and "--plugins" in result.stderr
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("content, expected", [
    (None, "no such file"),
    ("x = 1\nraise RuntimeError('bad setting')\n", "RuntimeError at line 2: bad setting"),
    ("import not_a_module_anywhere\n", "No module named 'not_a_module_anywhere'"),
])
def test_a_plugin_that_cannot_load_is_one_user_error(tmp_path, content, expected):
    path = tmp_path / "plugin.py"
    if content is not None:
        path.write_text(content)
    with pytest.raises(UserError, match=re.escape(expected)) as info:
        plugins.load(str(path))
    assert "--plugins" in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(UserError, match="no module of that name"):
        plugins.load("not_a_module_anywhere_either")


def test_a_plugin_is_imported_once_and_recorded_by_its_absolute_path(tmp_path, monkeypatch):
    path = tmp_path / "counting.py"
    path.write_text("import builtins\nbuiltins.plugin_imports = getattr(builtins, 'plugin_imports', 0) + 1\n")
    import builtins
    try:
        first = plugins.load(str(path))
        second = plugins.load(f" {path} ,")
        assert first == second and builtins.plugin_imports == 1
        monkeypatch.chdir(tmp_path)
        assert plugins.absolute("counting.py, json") == f"{path.resolve()},json"
    finally:
        del builtins.plugin_imports


def test_a_mixing_rule_of_ones_own_is_used_by_forward_and_decoding():
    register_mixing("test_sigmoid", torch.sigmoid)
    try:
        torch.manual_seed(0)
        rule = build_mixing(SearchConfig(mixing="test_sigmoid"))
        model = SearchNetwork(4, 3, 3, SearchSpace(), sampler=rule).double()
        with torch.no_grad():
            for a in model.arch_parameters():
                a.normal_()
        x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
        a_n, a_r = model.alphas_normal, model.alphas_reduce
        # the reference: the plain forward at explicitly given sigmoid weights
        expected = model(x, (torch.sigmoid(a_n), torch.sigmoid(a_r)))
        torch.testing.assert_close(model(x), expected)
        w = model.mixing_weights()
        torch.testing.assert_close(w[0], 1 / (1 + torch.exp(-a_n)))
        genotype = model.genotype()
        want = model.space.decode(torch.sigmoid(a_n).detach(), torch.sigmoid(a_r).detach())
        assert genotype.normal == want.normal and genotype.reduce == want.reduce
        with pytest.raises(UserError, match="--mixing not_registered: unknown mixing rule"):
            build_mixing(SearchConfig(mixing="not_registered"))
    finally:
        del MIXINGS["test_sigmoid"]


def test_an_arch_loss_adds_its_own_gradient_to_the_alpha_gradient():
    torch.manual_seed(0)
    model = SearchNetwork(4, 3, 3, SearchSpace()).double()
    crit = nn.CrossEntropyLoss()
    opt = torch.optim.SGD(model.network_parameters(), 0.1, momentum=0.9)
    batch = (torch.randn(4, 3, 8, 8, dtype=torch.float64), torch.randint(0, 3, (4,)))
    c = 0.3

    def square(m):
        return c * sum((a ** 2).sum() for a in m.arch_parameters())

    register_regularizer("test_square", square)
    try:
        loss = build_regularizer("test_square")
        for order in (1, 2):
            plain = Architect(model, crit, opt, order=order).gradient(batch, batch, 0.1)[0]
            with_loss = Architect(model, crit, opt, order=order,
                                  arch_loss=loss).gradient(batch, batch, 0.1)[0]
            for a, g0, g1 in zip(model.arch_parameters(), plain, with_loss, strict=True):
                torch.testing.assert_close(g1 - g0, 2 * c * a.detach())  # d/da c a^2 = 2 c a
        with pytest.raises(ValueError, match="already registered"):
            register_regularizer("test_square", square)
    finally:
        del REGULARIZERS["test_square"]


# -- a space, a strategy and an evaluator from a plugin file alone ------------------------------
MY_NAS = ROOT / "tests" / "plugins" / "my_nas.py"


@pytest.fixture(autouse=True)
def _registries_restored():
    """What a test's plugins register is gone after it: other tests see the library's own."""
    from darts.evaluators import EVALUATORS
    from darts.spaces import SPACES
    from darts.strategies import STRATEGIES

    saved = [(r, dict(r)) for r in (SPACES, STRATEGIES, EVALUATORS)]
    loaded = dict(plugins._loaded)
    yield
    for registry, items in saved:
        registry.clear()
        registry.update(items)
    plugins._loaded.clear()
    plugins._loaded.update(loaded)


def test_a_plugin_space_is_searched_by_a_plugin_strategy_with_the_train_evaluator(tmp_path):
    """--space chain and --strategy hill exist only in the plugin: the command line accepts
    them, the train evaluator's spawned workers import the plugin to build its networks, and
    the run resumes with the plugin recorded in its config."""
    import train_search

    args = ["--plugins", str(MY_NAS), "--space", "chain", "--strategy", "hill",
            "--evaluator", "train", "--dataset", "synthetic", "--synthetic_size", "48",
            "--image_size", "8", "--eval_epochs", "1", "--batch_size", "16", "--budget", "4",
            "--workers", "2", "--threads", "1", "--device", "cpu", "--no-progress",
            "--no-tensorboard", "--save", str(tmp_path), "--name", "chain"]
    assert train_search.main(args) == 0
    run_dir = tmp_path / "chain"
    history = [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]
    assert len(history) == 4 and all(0 <= r["score"] <= 100 for r in history)
    kernels = [tuple(int(k) for k in r["candidate"].split("-")) for r in history]
    assert all(1 <= len(c) <= 3 and set(c) <= {3, 5} for c in kernels)
    # hill climbing: after the first, each candidate is one kernel away from the best before it
    for n in range(1, 4):
        best = max(history[:n], key=lambda r: r["score"])["candidate"].split("-")
        here = history[n]["candidate"].split("-")
        assert len(here) == len(best) and sum(a != b for a, b in zip(here, best, strict=True)) == 1
    result = json.loads((run_dir / "result.json").read_text())
    assert json.loads((run_dir / "chain.json").read_text()) == {"chain": result["best_arch"]}
    assert "--space chain --arch" in (run_dir / "log.txt").read_text()
    if visualize.dot_available():  # drawn by the plugin space's own `graphs`
        assert (run_dir / "chain.png").stat().st_size > 0
    assert train_search.main(["--resume", str(run_dir)]) == 0  # finished: nothing to do


def test_a_plugin_strategy_runs_in_darts_compare_beside_random(tmp_path):
    from darts import compare
    from darts.benchmarks.nb201 import synthetic_table

    table = synthetic_table(tmp_path / "t.csv", seed=0)
    out = tmp_path / "cmp"
    assert compare.main(["--plugins", str(MY_NAS), "--benchmark", str(table),
                         "--strategies", "random,hill", "--seeds", "2", "--budget", "15",
                         "--out", str(out)]) == 0
    rows = (out / "summary.csv").read_text().splitlines()
    assert sorted(r.split(",")[0] for r in rows[1:]) == ["hill", "hill", "random", "random"]


def test_a_plugin_evaluator_scores_a_plugin_space(tmp_path):
    from darts.search import SearchConfig
    from darts.search import run as search

    plugins.load(str(MY_NAS))
    result = search(SearchConfig(strategy="random", space="chain", evaluator="shallow",
                                 plugins=str(MY_NAS), budget=20, seed=0, save=str(tmp_path),
                                 name="s", progress=False, tensorboard=False))
    assert len(result["best_arch"].split("-")) == 1 and result["best_score"] == -1.0
    with pytest.raises(UserError, match="--evaluator shallow scores --space chain"):
        search(SearchConfig(strategy="random", space="nb201", evaluator="shallow", budget=2,
                            save=str(tmp_path), name="t", progress=False))


def test_an_unknown_space_strategy_or_evaluator_names_the_flag_and_the_choices(capsys):
    import train_search

    for flag in ("--space", "--strategy", "--evaluator"):
        with pytest.raises(SystemExit) as stop:
            train_search.main([flag, "nope"])
        err = capsys.readouterr().err
        assert stop.value.code == 2 and err.count("\n") == 1
        assert f"argument {flag}: invalid choice: 'nope'" in err
    # a plugin's names are choices once --plugins names it, on the same command line
    with pytest.raises(SystemExit) as stop:
        train_search.main(["--plugins", str(MY_NAS), "--space", "chain", "--strategy", "hill",
                           "--evaluator", "shallow", "--help"])
    assert stop.value.code == 0 and "chain" in capsys.readouterr().out


def test_a_plugin_mixing_rule_hears_every_epoch_and_resumes_with_its_schedule(tmp_path):
    """A temperature-annealed softmax from a plugin: its `set_epoch` runs before every epoch
    (also the first after a resume), its temperature is logged per epoch, and a stopped and
    resumed search equals an uninterrupted one."""
    from darts.search import SearchConfig
    from darts.search import run as search

    plugin = str(ROOT / "tests" / "plugins" / "annealed_softmax.py")
    rule = plugins.load(plugin)[0].RULE
    common = dict(dataset="synthetic", layers=3, nodes=2, init_channels=4, image_size=8,
                  synthetic_size=32, batch_size=8, workers=0, progress=False, epochs=3,
                  order=1, mixing="annealed_softmax", plugins=plugin, save=str(tmp_path),
                  device="cpu", tensorboard=False)
    whole = search(SearchConfig(name="whole", **common))
    assert rule.epochs_seen == [0, 1, 2]
    assert [r["temperature"] for r in whole["history"]] == [5.0, 3.0, 1.0]

    def stop_after_first(epoch, metrics):
        if epoch == 1:
            raise KeyboardInterrupt

    rule.epochs_seen.clear()
    with pytest.raises(KeyboardInterrupt):
        search(SearchConfig(name="split", **common), on_epoch_end=stop_after_first)
    resumed = search(None, resume=str(tmp_path / "split"))
    assert rule.epochs_seen == [0, 1, 2]
    drop = ("epoch_time_s",)
    assert ([{k: v for k, v in r.items() if k not in drop} for r in resumed["history"]]
            == [{k: v for k, v in r.items() if k not in drop} for r in whole["history"]])


def test_an_error_in_a_plugins_code_is_reported_as_that_plugins(tmp_path, capsys):
    import train_search
    from darts.benchmarks.nb201 import synthetic_table

    plugin = ROOT / "tests" / "plugins" / "broken_strategy.py"
    table = synthetic_table(tmp_path / "t.csv", seed=0)
    assert train_search.main(["--plugins", str(plugin), "--strategy", "broken", "--space", "nb201",
                              "--benchmark", str(table), "--budget", "5", "--save",
                              str(tmp_path), "--no-progress"]) == 2
    err = capsys.readouterr().err
    line = next(n for n, text in enumerate(plugin.read_text().splitlines(), 1) if "1 / 0" in text)
    assert err.count("\n") == 1 and err.startswith("error: ZeroDivisionError in ask() at line "
                                                   f"{line} of the plugin {plugin}")


def test_the_readme_section_on_spaces_and_strategies_runs_as_written(tmp_path):
    section = readme_section("Extending: spaces, strategies, evaluators")
    (plugin,) = code_blocks(section, "python")
    (commands,) = code_blocks(section, "bash")
    table, compare, chain = [line for line in commands.splitlines() if line.strip()]
    (tmp_path / "my_strategy.py").write_text(plugin)
    assert run(as_run_here(table), tmp_path).returncode == 0
    argv = as_run_here(compare)
    argv[argv.index("--seeds") + 1], argv[argv.index("--budget") + 1] = "2", "20"
    done = run(argv, tmp_path)
    assert done.returncode == 0, done.stderr
    strategies = {row.split(",")[0] for row in
                  (tmp_path / "compare-hill" / "summary.csv").read_text().splitlines()[1:]}
    assert strategies == {"random", "hill"}
    argv = [str(ROOT / a) if a.startswith("tests/") else a for a in as_run_here(chain)]
    argv[argv.index("--budget") + 1], argv[argv.index("--eval_epochs") + 1] = "3", "1"
    done = run(argv + ["--workers", "1", "--synthetic_size", "48", "--image_size", "8"], tmp_path)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "runs" / "chain" / "chain.json").exists()


# -- collapse pieces and presets from a plugin file ---------------------------------------------
PIECES_PLUGIN = ROOT / "tests" / "plugins" / "my_pieces.py"


def _tiny_search(tmp_path, **kw):
    from darts.search import SearchConfig

    common = dict(dataset="synthetic", layers=3, nodes=2, init_channels=4, image_size=8,
                  synthetic_size=32, batch_size=8, workers=0, progress=False, epochs=3,
                  order=1, plugins=str(PIECES_PLUGIN), save=str(tmp_path), device="cpu",
                  tensorboard=False)
    return SearchConfig(**{**common, **kw})


def test_every_hook_of_a_plugin_piece_is_called(tmp_path):
    """`trace` overrides every hook of darts.methods.pieces.Piece: each is called by a search
    that it stops after epoch 2, then resumed (a stopped search stays stopped)."""
    from darts.methods.pieces import Piece
    from darts.search import run as search

    mine = plugins.load(str(PIECES_PLUGIN))[0]
    mine.CALLS.clear()
    metrics = search(_tiny_search(tmp_path, name="trace", pieces=("trace:stop_at=2",)))
    assert len(metrics["history"]) == 2
    assert metrics["early_stop"]["reason"] == "trace stops after epoch 2"
    again = search(None, resume=str(tmp_path / "trace"))
    assert len(again["history"]) == 2
    hooks = {name for name, f in vars(Piece).items()
             if callable(f) and not name.startswith("_")} - {"from_config"}
    assert hooks == set(mine.CALLS), hooks ^ set(mine.CALLS)


def test_a_plugin_piece_with_state_is_used_and_resumed(tmp_path):
    """`entropy`: an alpha-loss term whose weight follows the epoch and a count of alpha steps
    kept in its state. It changes the alphas; a search stopped after its first epoch and
    resumed equals an uninterrupted one, the count included (restored from the checkpoint)."""
    from darts.search import run as search

    plugins.load(str(PIECES_PLUGIN))
    whole = search(_tiny_search(tmp_path, name="whole", pieces=("entropy:weight=2",)))
    assert [r["entropy_weight"] for r in whole["history"]] == [0.0, 1.0, 2.0]
    assert [r["entropy_steps"] for r in whole["history"]] == [2, 4, 6]  # 16 images, batch 8
    search(_tiny_search(tmp_path, name="plain"))
    alphas = [load_checkpoint(tmp_path / n / "checkpoint.pt")["model"]["alphas_normal"]
              for n in ("whole", "plain")]
    assert not torch.equal(*alphas)

    def stop_after_first(epoch, metrics):
        if epoch == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        search(_tiny_search(tmp_path, name="split", pieces=("entropy:weight=2",)),
               on_epoch_end=stop_after_first)
    resumed = search(None, resume=str(tmp_path / "split"))
    drop = ("epoch_time_s",)
    assert ([{k: v for k, v in r.items() if k not in drop} for r in resumed["history"]]
            == [{k: v for k, v in r.items() if k not in drop} for r in whole["history"]])


def test_a_plugin_preset_sets_its_pieces_and_explicit_pieces_add_to_them(tmp_path):
    import train_search

    argv = ["--plugins", str(PIECES_PLUGIN), "--method", "sharp-darts", "--pieces", "trace",
            "--dataset", "synthetic", "--layers", "3", "--nodes", "2", "--init_channels", "4",
            "--image_size", "8", "--synthetic_size", "32", "--batch_size", "8", "--workers",
            "0", "--epochs", "1", "--no-progress", "--no-tensorboard", "--save", str(tmp_path),
            "--name", "sharp"]
    assert train_search.main(argv) == 0
    config = json.loads((tmp_path / "sharp" / "config.json").read_text())
    assert config["pieces"] == ["trace", "entropy:weight=0.5"] and config["order"] == 1
    metrics = json.loads((tmp_path / "sharp" / "metrics.json").read_text())
    assert "entropy_weight" in metrics["history"][0]


@pytest.mark.parametrize("kw, message", [
    (dict(pieces=("nope",)), "--pieces nope: unknown collapse piece; choose one of"),
    (dict(pieces=("entropy:wieght=1",)), "--pieces entropy:wieght=1: entropy has no option "
                                         "'wieght' (it takes weight)"),
    (dict(pieces=("entropy:weight",)), "options are KEY=VALUE"),
    (dict(pieces=("entropy",), strategy="random", space="nb201"), "--pieces: a piece of the "
                                                                  "gradient search"),
])
def test_a_bad_piece_is_one_user_error(tmp_path, kw, message):
    from darts.search import run as search

    plugins.load(str(PIECES_PLUGIN))
    with pytest.raises(UserError, match=re.escape(message)):
        search(_tiny_search(tmp_path, name="bad", **kw))
    assert not (tmp_path / "bad").exists()


def test_an_old_config_with_sampler_and_arch_loss_reads_as_mixing_and_regularizer():
    from darts.search import SearchConfig
    from darts.train.config import config_from_dict, to_dict

    old = {k: v for k, v in to_dict(SearchConfig()).items()
           if k not in ("mixing", "regularizer", "pieces")}
    cfg = config_from_dict(SearchConfig, {**old, "sampler": "gdas", "mixing": "softmax",
                                          "arch_loss": "none", "regularizer": "beta"}, "old")
    assert (cfg.mixing, cfg.regularizer, cfg.pieces) == ("gdas", "beta", ())
    with pytest.raises(UserError, match="sets both 'sampler'"):
        config_from_dict(SearchConfig, {**old, "sampler": "gdas", "mixing": "drnas"}, "old")
