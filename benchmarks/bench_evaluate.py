"""Cold vs warm `evaluate` on MRBench-Synth, time per stage, and `mrbench --help` start-up.

cold: empty MRBENCH_HOME (the benchmark is built, every item encoded); warm: the same command again
(benchmark and embeddings cached). "harness" = everything but the encoder's own forward calls.

    python benchmarks/bench_evaluate.py --encoder random --out benchmarks/results/evaluate.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run_once(benchmark: str, encoder: str, home: Path) -> dict:
    os.environ["MRBENCH_HOME"] = str(home)
    os.environ["MRBENCH_CACHE"] = str(home / "embeddings")
    import mrbench

    t0 = time.perf_counter()
    res = mrbench.evaluate(benchmark, encoder)
    wall = time.perf_counter() - t0
    t = dict(res.timings)
    t["wall"] = wall
    t["harness"] = wall - t["encoder_forward"]
    return {"timings": t, "cache": res.data["cache"], "hit@5": res.scores["macro"]["hit@5"]}


def help_time(repeats: int = 5) -> float:
    exe = Path(sys.executable).with_name("mrbench")
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        subprocess.run([str(exe), "--help"], check=True, capture_output=True)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--benchmark", default="mrbench-synth")
    ap.add_argument("--encoder", default="random", help="random, or e.g. benchmarks/tiny_torch_encoder.py:TinyTorchEncoder")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        home = Path(d)
        t0 = time.perf_counter()
        from mrbench.data.registry import load_benchmark

        os.environ["MRBENCH_HOME"] = str(home)
        load_benchmark(args.benchmark)
        build = time.perf_counter() - t0
        cold = run_once(args.benchmark, args.encoder, home)
        warm = run_once(args.benchmark, args.encoder, home)
    out = {
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()},
        "benchmark": args.benchmark,
        "encoder": args.encoder,
        "build_seconds": build,
        "cold": cold,
        "warm": warm,
        "warm_speedup": cold["timings"]["wall"] / warm["timings"]["wall"],
        "help_seconds": help_time(),
    }
    rows = ["load", "encode", "encoder_forward", "retrieve", "score", "sensitivity", "harness", "wall"]
    print(f"{'stage':<16}{'cold s':>10}{'warm s':>10}")
    for r in rows:
        print(f"{r:<16}{cold['timings'].get(r, 0):>10.3f}{warm['timings'].get(r, 0):>10.3f}")
    print(f"build (first use) {build:.2f} s; warm speed-up {out['warm_speedup']:.1f}x; "
          f"harness share of cold {cold['timings']['harness'] / cold['timings']['wall']:.1%}; "
          f"mrbench --help {out['help_seconds'] * 1000:.0f} ms")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
