"""The benchmarks' command-line contract: the flags other tools pass and the JSON keys they read."""

import json
import math
import platform
import subprocess
import sys

import pytest
import torch
from conftest import ROOT


@pytest.mark.parametrize("script,flags", [
    ("bench_search.py", ["--order", "1"]),
    ("bench_final.py", ["--compare", "--no-tune_malloc"]),
])
def test_benchmark_writes_the_contract_json(tmp_path, script, flags):
    out = tmp_path / "result.json"
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), "--preset", "small",
                    "--device", "cpu", "--steps", "1", "--warmup", "0", "--json", str(out),
                    "--threads", "1", *flags], check=True, capture_output=True, timeout=300)
    result = json.loads(out.read_text())
    assert result["steps"] == 1 and result["device"] == "cpu"
    for key in ("median_step_s", "images_per_s", "peak_mem_mib", "achieved_gflop_s"):
        assert result[key] > 0, key
    assert result["images_per_s"] == pytest.approx(result["batch_size"] / result["median_step_s"])
    glibc = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"
    assert result["malloc"] == ("tuned" if glibc and "--no-tune_malloc" not in flags else "system")
    if "--compare" in flags:
        assert result["plain"]["path"]["loader"] == "torch" and result["fast"]["path"]["loader"] == "device"
        # the plain path is PyTorch's kernels; the fast one ours where they can be built
        from darts.accel import kernels
        assert result["plain"]["path"]["cpu_kernels"] is False
        assert result["fast"]["path"]["cpu_kernels"] is (kernels.library() is not None)
        assert result["speedup"] == pytest.approx(
            result["plain"]["median_step_s"] / result["fast"]["median_step_s"])


def test_the_search_benchmark_times_a_plugins_piece_and_a_mixing_rule(tmp_path):
    out = tmp_path / "result.json"
    plugin = ROOT / "tests" / "plugins" / "my_pieces.py"
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_search.py"), "--preset",
                    "small", "--device", "cpu", "--steps", "1", "--warmup", "0", "--json",
                    str(out), "--threads", "1", "--order", "1", "--plugins", str(plugin),
                    "--pieces", "trace", "--mixing", "fairdarts", "--no_flops"],
                   check=True, capture_output=True, timeout=300)
    result = json.loads(out.read_text())
    assert result["pieces"] == ["trace"] and result["mixing"] == "fairdarts"
    assert result["median_step_s"] > 0


def test_memory_benchmark_finds_bf16_halving_the_saved_activations(tmp_path):
    out = tmp_path / "memory.json"
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_memory.py"), "--preset",
                    "small", "--device", "cpu", "--pool_saves_input", "--json", str(out)],
                   check=True, capture_output=True, timeout=300)
    result = json.loads(out.read_text())
    for name in ("per_edge", "batched"):
        r = result[name]
        assert r["ratio"] == pytest.approx(r["float32_mib"] / r["bf16_mib"])
        # Every saved activation is bf16 under autocast (a few float32 statistics aside).
        assert 1.95 < r["ratio"] <= 2.0, r
    # The CPU's fast path keeps less where the C kernels run.
    fast = result["cpu_fast"]
    if fast["cpu_kernels"]:
        assert fast["float32_mib"] < 0.95 * result["per_edge"]["float32_mib"], result


def test_kernel_benchmark_times_ours_against_pytorchs(tmp_path):
    from darts.accel import kernels
    if kernels.library() is None:
        pytest.skip("no C compiler: the C kernels cannot be built")
    out = tmp_path / "kernels.json"
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_kernels.py"), "--preset",
                    "small", "--device", "cpu", "--json", str(out)],
                   check=True, capture_output=True, timeout=300)
    result = json.loads(out.read_text())
    names = [c["name"] for c in result["cases"]]
    # 4 depthwise kernels x 2 strides, then BatchNorm's three, the fusions' six,
    # FactorizedReduce's two and the pooling's two, at the first-stage shape
    assert names == ["depthwise_weight_grad"] * 8 + [
        "batch_norm_forward", "batch_norm_backward", "batch_statistics", "batch_norm_add",
        "batch_norm_relu", "shared_terms", "node_batch_norm", "relu_depthwise", "relu_depthwise",
        "factorized_reduce", "factorized_reduce_dx", "pool_batch_norm", "pool_batch_norm"]
    for c in result["cases"]:
        assert 0 < c["torch_min_ms"] <= c["torch_ms"] and 0 < c["ours_min_ms"] <= c["ours_ms"]
        assert c["speedup"] == pytest.approx(c["torch_min_ms"] / c["ours_min_ms"])
    bad = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_kernels.py"),
                          "--device", "cuda"], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "--device cpu" in bad.stderr


def test_profile_lists_where_the_step_time_goes(tmp_path):
    out = tmp_path / "profile.json"
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "profile_search.py"), "--preset",
                    "small", "--device", "cpu", "--warmup", "1", "--steps", "1", "--rows", "5",
                    "--json", str(out)], check=True, capture_output=True, timeout=300)
    result = json.loads(out.read_text())
    top = result["top"]
    assert len(top) == 5 and result["total_s_per_step"] > 0
    assert [e["self_s_per_step"] for e in top] == sorted((e["self_s_per_step"] for e in top),
                                                         reverse=True)
    assert 0 < sum(e["share"] for e in top) <= 1
    # The supernet's convolutions (forward and backward) run every step.
    assert any("convolution" in e["name"] for e in top)


@pytest.mark.parametrize("groups", [1, 4, 16])
def test_flop_count_of_a_convolution_backward_respects_groups(groups):
    """Forward 2*N*Co*Ho*Wo*(Ci/groups)*k*k by hand; its backward (input and weight
    gradients) twice that. torch's own formula counts a grouped backward as a dense one."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from common import count_flops

    conv = torch.nn.Conv2d(16, 16, 3, stride=2, padding=1, groups=groups, bias=False)
    x = torch.randn(2, 16, 8, 8, requires_grad=True)
    forward = 2 * 2 * 16 * 4 * 4 * (16 // groups) * 3 * 3
    assert count_flops(lambda: conv(x)) == forward
    assert count_flops(lambda: conv(x).sum().backward()) == 3 * forward
    x.requires_grad_(False)  # no input gradient: the weight's only
    assert count_flops(lambda: conv(x).sum().backward()) == 2 * forward


def test_suite_runs_its_entries_records_failures_and_derives_the_targets_ratios(tmp_path,
                                                                               monkeypatch):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import suite
    monkeypatch.setitem(suite.ENTRIES, "cpu", [
        ("memory", "bench_memory.py", ["--pool_saves_input"]),
        ("broken", "bench_search.py", ["--order", "3"]),  # argparse refuses it: exit 2
    ])
    assert suite.main(["--device", "cpu", "--quick", "--out", str(tmp_path)]) == 1
    summary = json.loads((tmp_path / "summary.json").read_text())
    memory, broken = summary["entries"]["memory"], summary["entries"]["broken"]
    assert memory["status"] == "ok" and broken["status"] == "exit 2"
    assert "--order" in broken["stderr_tail"]
    written = json.loads((tmp_path / "memory.json").read_text())
    assert memory["figures"]["per_edge_ratio"] == written["per_edge"]["ratio"]
    assert memory["command"].startswith("python benchmarks/bench_memory.py --preset small")
    # The targets' ratios, from hand-made figures: float32 peak over bf16 peak, and speedups.
    entries = {"search_order1_fast": {"figures": {"peak_mem_mib": 6000.0}},
               "search_order1_bf16": {"figures": {"peak_mem_mib": 2500.0}},
               "search_order1_per_edge": {"figures": {"peak_mem_mib": 5000.0}},
               "final_compare": {"figures": {"speedup": 3.0}}}
    assert suite.derived(entries) == {"bf16_peak_ratio": 2.4, "final_compare_speedup": 3.0}
    with pytest.raises(SystemExit):
        suite.main(["--device", "cpu", "--out", str(tmp_path), "--only", "nope"])


def test_the_collapse_table_averages_seeds_and_escapes_the_arch_strings():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import collapse_nb201

    def row(seed, arch, skips, score, complete=True):
        return {"method": "gdas", "seed": seed, "arch": {"arch": arch}, "skip_connect": skips[-1],
                "skips_per_epoch": skips, "search_time_s": 60.0 + 60 * seed,
                "first_epoch_with": {str(c): collapse_nb201.first_epoch_with(skips, c)
                                     for c in collapse_nb201.COLLAPSE},
                "complete": complete, "epochs_done": len(skips), "epochs": 3,
                "benchmark": {"cifar10_test": score}}

    rows = [row(0, "|skip_connect~0|", [0, 4, 6], 90.0), row(1, "|none~0|", [0, 5], 92.0, False),
            row(2, "|none~0|", [0, 2, 1], 92.0), {"method": "sdarts-rs", "seed": 0, "error": "refused"}]
    measured, published, cells = collapse_nb201.markdown(rows).split("\n\n")
    lines = measured.splitlines()
    assert len(lines) == 4 and lines[0].startswith("| method |")
    gdas = [c.strip() for c in lines[2].split(" | ")]
    assert gdas[1] == "6, 1 (unfinished: s1 at epoch 2/3)"  # named, left out of the summary
    assert gdas[2] == "2 / 3 / 3; — / — / —"  # first epochs with 4, 5, 6 skips, per seed
    assert gdas[3:6] == ["6, 2", "2.0", "91.00 ± 1.41 |"]  # minutes (1 and 3); sd: sqrt(2)
    assert "published" not in lines[0] and lines[3].startswith("| sdarts-rs | refused")
    # the papers' real figures: a table of their own, with their sources, never a column
    # beside a score of the (synthetic) table
    assert published.splitlines()[2] == "| gdas | 93.61 | Dong & Yang, ICLR 2020 (NAS-Bench-201) |"
    assert len(published.splitlines()) == 3  # sdarts-rs: no published NAS-Bench-201 figure
    assert cells.splitlines()[2] == r"| gdas | 0 | `\|skip_connect~0\|` |"  # a pipe would split


def test_the_collapse_grid_runs_records_and_keeps_a_finished_run(tmp_path, monkeypatch,
                                                                   capsys):
    """The runner end to end at a size of seconds: one run through train_search.py, its row in
    the JSON (every epoch's cell), the Markdown, and --keep reusing it rather than running it
    again; without --keep an existing run directory is refused; a failed run is named and the
    exit status is 1."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import collapse_nb201

    tiny = ["--layers", "1", "--init_channels", "4", "--image_size", "8", "--batch_size", "16",
            "--synthetic_size", "64", "--epochs", "2", "--threads", "1"]
    monkeypatch.setitem(collapse_nb201.PROTOCOLS, "cpu50", (tiny, {}))
    runs, grid = tmp_path / "runs", tmp_path / "grid.json"
    argv = ["--protocol", "cpu50", "--dataset", "synthetic", "--methods", "darts:1", "--runs",
            str(runs), "--json", str(grid), "--markdown", str(tmp_path / "grid.md"), "--keep"]
    assert collapse_nb201.main(argv) == 0
    [row] = json.loads(grid.read_text())["runs"]
    assert (row["method"], row["seed"], row["complete"], row["epochs_done"]) == ("darts", 0, True, 2)
    assert len(row["skips_per_epoch"]) == len(row["archs_per_epoch"]) == 2
    assert row["skip_connect"] == row["archs_per_epoch"][-1]["arch"].count("skip_connect")
    assert "--order 1" in row["command"] and "--seed 0" in row["command"]
    assert len(row["segments"]) == 1 and not row["segments"][0]["resumed"]
    assert (tmp_path / "grid.md").read_text().splitlines()[2].startswith("| darts | ")
    assert collapse_nb201.main(argv) == 0  # finished: reused, not run again
    assert len(json.loads(grid.read_text())["runs"][0]["segments"]) == 1
    with pytest.raises(SystemExit, match="--keep"):
        collapse_nb201.main([a for a in argv if a != "--keep"])
    # a run that fails is named and the grid exits non-zero; the finished one stays recorded
    monkeypatch.setitem(collapse_nb201.VARIANTS, "darts-o2", ("darts", ["--order", "7"]))
    argv[argv.index("darts:1")] = "darts:1,darts-o2:1"
    assert collapse_nb201.main(argv) == 1
    assert "darts-o2-s0" in capsys.readouterr().err
    assert [r["method"] for r in json.loads(grid.read_text())["runs"]] == ["darts"]


def test_a_saved_collapse_grid_is_scored_again_with_another_table(tmp_path):
    """Anyone with the official table scores a grid JSON (ours, in benchmarks/results) with one
    command: every epoch's cell looked up in the new table, the source file left as it was."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import collapse_nb201

    from darts.spaces import nb201

    # a table in the converted format whose score is known by hand: 10 per skip, plus 5
    lines = ["index,arch,cifar10_valid,cifar10_test"]
    for i, arch in enumerate(nb201.all_archs()):
        text = arch.to_string()
        lines.append(f"{i},{text},50.0,{10 * text.count('skip_connect') + 5}.0")
    (tmp_path / "official.csv").write_text("\n".join(lines) + "\n")
    skip3 = "|skip_connect~0|+|skip_connect~0|none~1|+|skip_connect~0|none~1|none~2|"
    skip1 = "|nor_conv_3x3~0|+|skip_connect~0|none~1|+|none~0|none~1|none~2|"
    source = {"protocol": "cpu50", "benchmark": "synthetic.csv", "protocol_flags": [],
              "runs": [{"method": "darts", "seed": 0, "arch": {"arch": skip3},
                        "skip_connect": 3, "skips_per_epoch": [1, 3],
                        "archs_per_epoch": [{"arch": skip1}, {"arch": skip3}],
                        "scores_per_epoch": [80.0, 70.0], "first_epoch_with": {},
                        "search_time_s": 60.0, "complete": True, "epochs_done": 2, "epochs": 2,
                        "benchmark": {"cifar10_test": 70.0}},
                       {"method": "pc-darts", "seed": 0, "error": "refused"}]}
    grid = tmp_path / "grid.json"
    grid.write_text(json.dumps(source))
    out = tmp_path / "scored.json"
    assert collapse_nb201.main(["--from_json", str(grid), "--score_with",
                                str(tmp_path / "official.csv"), "--json", str(out),
                                "--markdown", str(tmp_path / "scored.md")]) == 0
    scored = json.loads(out.read_text())
    row = scored["runs"][0]
    assert row["scores_per_epoch"] == [15.0, 35.0]
    assert row["benchmark"]["cifar10_test"] == 35.0 and row["benchmark"]["cells"] == 15625
    # rank: 1 + the cells with more than 3 skips (of 6 edges, 4 other ops each)
    assert row["benchmark"]["rank_cifar10_test"] == 1 + sum(
        math.comb(6, k) * 4 ** (6 - k) for k in (4, 5, 6))
    assert scored["scored_with"].endswith("official.csv") and scored["runs"][1]["error"]
    assert "35.00 ± 0.00" in (tmp_path / "scored.md").read_text()
    assert json.loads(grid.read_text()) == source  # the source grid is not rewritten
    with pytest.raises(SystemExit):  # the same file in and out would lose the source
        collapse_nb201.main(["--from_json", str(grid), "--json", str(grid)])
    (tmp_path / "bad.csv").write_text(f"index,arch,cifar100_test\n0,{skip3},1.0\n")
    with pytest.raises(SystemExit, match="--score_with .*bad.csv: no cifar10_test"):
        collapse_nb201.main(["--from_json", str(grid), "--score_with",
                             str(tmp_path / "bad.csv"), "--json", str(out)])


def test_the_collapse_figure_groups_methods_in_columns_and_keeps_unknown_entries():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import collapse_nb201

    columns = collapse_nb201.figure_columns(["pdarts", "darts", "mine", "gdas", "darts-o2"])
    assert [members for _, members in columns] == [["darts", "darts-o2"], ["gdas"], ["pdarts"],
                                                   ["mine"]]  # the groups' order, then the rest
    assert columns[-1][0] == "other entries"
    assert [m for _, ms in collapse_nb201.figure_columns(["beta-darts"]) for m in ms] == [
        "beta-darts"]  # empty groups are left out
    assert collapse_nb201._mean_series([[1, 3, None], [3, None, 2], [2]]) == [2, 3, 2]


def test_the_collapse_grid_builds_fresh_and_resumed_commands_and_refuses_unknown_entries(
        tmp_path):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import collapse_nb201

    assert collapse_nb201.first_epoch_with([0, 3, 4, 6, 2], 4) == 3
    assert collapse_nb201.first_epoch_with([0, 3], 4) is None
    args = collapse_nb201.parse(["--json", str(tmp_path / "g.json"), "--protocol", "cpu50",
                                 "--dataset", "synthetic", "--methods", "pdarts,darts-hvp:1"])
    assert args.methods == "pdarts,darts-hvp" and args.seeds_of == {"pdarts": 3, "darts-hvp": 1}
    flags = " ".join(collapse_nb201.command_of("pdarts", 2, args, tmp_path / "pdarts-s2"))
    assert "--method pdarts" in flags and "--seed 2" in flags and "--threads 1" in flags
    assert flags.count("--epochs") == 1 and "--epochs 50" in flags  # one 50-epoch stage
    assert "--warmup_epochs 10" in flags  # its code's, not scaled
    hvp = " ".join(collapse_nb201.command_of("darts-hvp", 0, args, tmp_path / "darts-hvp-s0"))
    assert hvp.endswith("--order 2 --hessian exact")  # after the protocol's --order 1: wins
    (tmp_path / "pdarts-s2").mkdir()
    (tmp_path / "pdarts-s2" / "checkpoint.pt").write_bytes(b"")
    resumed = collapse_nb201.command_of("pdarts", 2, args, tmp_path / "pdarts-s2")
    assert resumed[2:] == ["--resume", str(tmp_path / "pdarts-s2"), "--no-progress"]
    with pytest.raises(SystemExit):
        collapse_nb201.parse(["--json", "x", "--methods", "darts,nope"])
    with pytest.raises(SystemExit):
        collapse_nb201.parse(["--json", "x", "--methods", "darts:two"])
