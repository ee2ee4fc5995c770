"""The benchmarks' command-line contract: the flags other tools pass and the JSON keys they read."""

import json
import subprocess
import sys

import pytest
from conftest import ROOT


@pytest.mark.parametrize("script,flags", [
    ("bench_search.py", ["--order", "1"]),
    ("bench_final.py", ["--compare"]),
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
    if "--compare" in flags:
        assert result["plain"]["path"]["loader"] == "torch" and result["fast"]["path"]["loader"] == "device"
        assert result["speedup"] == pytest.approx(
            result["plain"]["median_step_s"] / result["fast"]["median_step_s"])
