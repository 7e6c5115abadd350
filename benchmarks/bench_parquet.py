"""Parquet export and import (``mrbench export``, loading an export) of a generated text benchmark.

Generates a text-only benchmark of ``--candidates`` candidates (``bench_load.generated``), loads it, then
times :func:`mrbench.data.parquet.export_parquet` and :func:`~mrbench.data.parquet.import_parquet`
(which writes the benchmark directory back and checks its fingerprint), ``--rounds`` times each.

    python benchmarks/bench_parquet.py --candidates 1000000 --out benchmarks/results/parquet_1m.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--candidates", type=int, default=1_000_000)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    from bench_load import generated

    from mrbench.data.io import load_benchmark_dir
    from mrbench.data.parquet import export_parquet, import_parquet

    times: dict[str, list[float]] = {"export": [], "import": []}
    with tempfile.TemporaryDirectory() as d:
        os.environ["MRBENCH_HOME"] = str(Path(d) / "home")
        bench = load_benchmark_dir(generated(Path(d) / "bench", args.candidates, args.queries), verify=True)
        for _ in range(args.rounds):
            shutil.rmtree(Path(d) / "pq", ignore_errors=True)
            t0 = time.perf_counter()
            export_parquet(bench, Path(d) / "pq")
            times["export"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            back = import_parquet(Path(d) / "pq", Path(d) / "back", overwrite=True)
            times["import"].append(time.perf_counter() - t0)
            assert back.fingerprint == bench.fingerprint
    rows = {k: {"best_s": round(min(v), 3), "median_s": round(statistics.median(v), 3)} for k, v in times.items()}
    for k, r in rows.items():
        print(f"{args.candidates:,} candidates: {k:<6} best {r['best_s']:.2f} s  median {r['median_s']:.2f} s")
    if args.out:
        out = {"machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "python": platform.python_version()},
               "candidates": args.candidates, "queries": args.queries, "rounds": args.rounds, "times": rows}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
