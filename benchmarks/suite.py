"""Every measurement of docs/performance.md's speed and memory tables, in one command.

    python benchmarks/suite.py --device cuda --out results-h100
    python benchmarks/suite.py --device cpu --out results-cpu --only search_order1_fast memory
    python benchmarks/suite.py --device cpu --quick --out /tmp/smoke     # small preset, 1 step

Each entry runs one benchmark script (bench_search.py, bench_final.py, bench_memory.py,
bench_kernels.py, profile_search.py) in a process of its own, so that each peak memory is its
own, and writes OUT/<entry>.json. A failing or timed-out entry is recorded and the suite goes on. At the end
OUT/summary.json holds, per entry, its command, status, wall time and headline figures, plus
the derived ratios (the bf16 peak against float32's, the
fast path against the plain one); the same is printed as a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

# (name, script, arguments) per device; --preset, --device, --json are added by the suite.
STEP = {"cuda": ["--steps", "12", "--warmup", "3"], "cpu": ["--steps", "3", "--warmup", "1"]}
STEP2 = {"cuda": ["--steps", "6", "--warmup", "3"], "cpu": ["--steps", "2", "--warmup", "1"]}
ENTRIES: dict[str, list[tuple[str, str, list[str]]]] = {
    "cuda": [
        ("search_order1_compare", "bench_search.py", ["--order", "1", "--compare", "--no_flops"]),
        ("search_order2fd_compare", "bench_search.py",
         ["--order", "2", "--hessian", "fd", "--compare", "--no_flops", *STEP2["cuda"]]),
        ("final_compare", "bench_final.py", ["--compare", "--no_flops", "--steps", "15"]),
        ("search_order1_fast", "bench_search.py", ["--order", "1", "--no_flops"]),
        ("search_order1_bf16", "bench_search.py", ["--order", "1", "--no_flops", "--amp", "bf16"]),
        ("search_order1_bf16_contiguous", "bench_search.py",
         ["--order", "1", "--no_flops", "--amp", "bf16", "--no-channels_last"]),
        ("search_order1_per_edge", "bench_search.py",
         ["--order", "1", "--no_flops", "--batch_edges", "off"]),
        ("search_order1_per_edge_bf16", "bench_search.py",
         ["--order", "1", "--no_flops", "--batch_edges", "off", "--amp", "bf16"]),
        ("search_order1_graphs_off", "bench_search.py",
         ["--order", "1", "--no_flops", "--cuda_graphs", "off"]),
        ("search_order1_cudnn_benchmark", "bench_search.py",
         ["--order", "1", "--no_flops", "--cudnn_benchmark"]),
        ("final_cudnn_benchmark", "bench_final.py",
         ["--no_flops", "--cudnn_benchmark", "--steps", "15"]),
        ("search_order2fd_bf16", "bench_search.py",
         ["--order", "2", "--hessian", "fd", "--no_flops", "--amp", "bf16", *STEP2["cuda"]]),
        ("final_bf16", "bench_final.py", ["--no_flops", "--amp", "bf16", "--steps", "15"]),
        ("profile_order1", "profile_search.py", ["--order", "1", "--channels_last"]),
    ],
    "cpu": [
        ("search_order1_compare", "bench_search.py", ["--order", "1", "--compare"]),
        ("search_order1_fast", "bench_search.py", ["--order", "1", "--no_flops"]),
        ("search_order1_ckpt", "bench_search.py",
         ["--order", "1", "--no_flops", "--checkpoint_cells", *STEP2["cpu"]]),
        ("search_order1_pc4", "bench_search.py",
         ["--order", "1", "--no_flops", "--partial_channels", "4", *STEP2["cpu"]]),
        ("search_order2fd_fast", "bench_search.py",
         ["--order", "2", "--hessian", "fd", "--no_flops", *STEP2["cpu"]]),
        ("final_compare", "bench_final.py", ["--compare"]),
        ("memory", "bench_memory.py", ["--pool_saves_input"]),
        ("memory_pool_indices", "bench_memory.py", []),
        ("kernels", "bench_kernels.py", []),
        ("profile_order1", "profile_search.py", ["--order", "1", "--channels_last",
                                                 "--warmup", "1", "--steps", "1"]),
    ],
}
TIMED = ("bench_search.py", "bench_final.py")


def command(script: str, args: list[str], device: str, quick: bool, out: Path) -> list[str]:
    """The entry's command line. `quick`: the small preset and one step after no warm-up
    (profile: one of each), for a smoke run of the whole suite."""
    cmd = [sys.executable, str(HERE / script), "--preset", "small" if quick else "standard",
           "--device", device, *args, "--json", str(out)]
    if script in TIMED:
        if quick:
            cmd += ["--steps", "1", "--warmup", "0"]
        elif "--steps" not in args:
            cmd += STEP["cuda" if device.startswith("cuda") else "cpu"]
    elif script == "profile_search.py" and quick and "--steps" not in args:
        cmd += ["--warmup", "1", "--steps", "1"]
    return cmd


def headline(result: dict) -> dict:
    """The figures of one entry's JSON that the summary shows."""
    if "plain" in result and "fast" in result:
        figures = {"plain_step_s": result["plain"]["median_step_s"],
                   "fast_step_s": result["fast"]["median_step_s"],
                   "plain_peak_mib": result["plain"]["peak_mem_mib"],
                   "fast_peak_mib": result["fast"]["peak_mem_mib"],
                   "speedup": result["speedup"]}
        steal = [result[p].get("cpu_steal_s") for p in ("plain", "fast")]
        if None not in steal:
            figures["cpu_steal_s"] = sum(steal)
        return figures
    if "median_step_s" in result:
        return {k: result[k] for k in ("median_step_s", "images_per_s", "peak_mem_mib",
                                       "cpu_steal_s") if k in result}
    if "cases" in result:  # bench_kernels: each kernel's median speedup over its shapes
        names = dict.fromkeys(c["name"] for c in result["cases"])
        return {f"{n}_speedup": statistics.median(c["speedup"] for c in result["cases"]
                                                  if c["name"] == n) for n in names}
    if "per_edge" in result:
        return {f"{k}_{m}": result[k][m] for k in ("per_edge", "batched")
                for m in ("float32_mib", "bf16_mib", "ratio")}
    if "top" in result:
        top = result["top"][0] if result["top"] else {}
        return {"total_s_per_step": result["total_s_per_step"], "top": top.get("name"),
                "top_share": top.get("share")}
    return {}


def derived(entries: dict[str, dict]) -> dict:
    """The targets' ratios, where both sides were measured: float32 peak / bf16 peak (fast
    path, edge-batched and edge by edge), and the fast paths' speedups."""
    def fig(name: str, key: str) -> float | None:
        return entries.get(name, {}).get("figures", {}).get(key)

    out = {}
    for label, fp32, bf16 in (("bf16_peak_ratio", "search_order1_fast", "search_order1_bf16"),
                              ("bf16_peak_ratio_per_edge", "search_order1_per_edge",
                               "search_order1_per_edge_bf16")):
        a, b = fig(fp32, "peak_mem_mib"), fig(bf16, "peak_mem_mib")
        if a and b:
            out[label] = a / b
    for name in ("search_order1_compare", "search_order2fd_compare", "final_compare"):
        if fig(name, "speedup"):
            out[f"{name}_speedup"] = fig(name, "speedup")
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--out", help="folder for the entries' JSON and summary.json (required)")
    p.add_argument("--only", nargs="+", metavar="ENTRY", help="run only these entries")
    p.add_argument("--quick", action="store_true", help="small preset, one step: a smoke run")
    p.add_argument("--timeout", type=float, default=900, help="seconds per entry")
    p.add_argument("--list", action="store_true", help="print the entries and exit")
    args = p.parse_args(argv)
    entries = ENTRIES[args.device]
    names = [name for name, _, _ in entries]
    if args.list:
        print("\n".join(names))
        return 0
    if not args.out:
        p.error("--out FOLDER is required: where the entries' JSON and summary.json go")
    if args.only:
        unknown = sorted(set(args.only) - set(names))
        if unknown:
            p.error(f"--only: unknown entries {', '.join(unknown)} for --device {args.device}; "
                    f"known: {', '.join(names)}")
        entries = [e for e in entries if e[0] in args.only]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    summary: dict[str, dict] = {}
    for name, script, extra in entries:
        path = out / f"{name}.json"
        cmd = command(script, extra, args.device, args.quick, path)
        print(f"[suite] {name}: {' '.join(cmd[1:])}", flush=True)
        start = time.perf_counter()
        record = {"command": " ".join(["python", *(str(Path(c).relative_to(HERE.parent))
                                                   if c.startswith(str(HERE)) else c
                                                   for c in cmd[1:])])}
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
            record["status"] = "ok" if done.returncode == 0 else f"exit {done.returncode}"
            if done.returncode:
                record["stderr_tail"] = done.stderr[-2000:]
        except subprocess.TimeoutExpired:
            record["status"] = "timeout"
        record["wall_s"] = time.perf_counter() - start
        if record["status"] == "ok":
            record["figures"] = headline(json.loads(path.read_text()))
        summary[name] = record
        print(f"[suite] {name}: {record['status']} in {record['wall_s']:.0f} s "
              f"{json.dumps(record.get('figures', {}))}", flush=True)
    result = {"device": args.device, "quick": args.quick, "entries": summary,
              "derived": derived(summary)}
    (out / "summary.json").write_text(json.dumps(result, indent=2) + "\n")
    print("\n| entry | status | figures |\n|---|---|---|")
    for name, record in summary.items():
        figures = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                            for k, v in record.get("figures", {}).items())
        print(f"| {name} | {record['status']} | {figures} |")
    for key, value in result["derived"].items():
        print(f"{key}: {value:.3f}")
    failed = [n for n, r in summary.items() if r["status"] != "ok"]
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
