"""Loading a benchmark from disk, with Python's cyclic garbage collector paused (as
:func:`mrbench.data.io.load_benchmark_dir` does) and running, next to torch and pandas in memory.

Each round loads the benchmark once per mode (alternating), the two previous loads still alive, as in
a session that evaluates several models; best and median of the rounds are reported.

    python benchmarks/bench_load.py --out benchmarks/results/load_cpu.json            # MRBench-Synth
    python benchmarks/bench_load.py --candidates 1000000 --out load_1m.json           # generated, text only
    python benchmarks/bench_load.py --candidates 10000 --queries 2000 --judged 2500   # dense graded qrels (5M pairs)

Also reported: the first load of the benchmark directory with its fingerprint checked (``verify=True``
with no verification stamp yet: every image and qrels line hashed), as ``mrbench evaluate`` does the
first time it sees a benchmark; and later loads as ``evaluate`` does them (checked against the
verification stamp, collector paused), of every task and of the first task only (``--tasks``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def generated(root: Path, n_candidates: int, n_queries: int, judged: int = 3) -> Path:
    """A text-only benchmark directory: ``n_candidates`` six-word candidates; per query ``judged``
    judged candidates (3: all relevant, grade 1; more: graded 0-100 like MRBench-Synth's partial matches)."""
    import numpy as np

    from mrbench.data.io import write_benchmark_files
    from mrbench.data.schema import Benchmark, Candidate, Query, Task

    rng = np.random.default_rng(0)
    words = np.array(["red", "blue", "dog", "cat", "large", "small", "left", "right", "standing", "lying", "car", "tree"])
    cands = [Candidate(id=f"c{i}", text=" ".join(rng.choice(words, 6))) for i in range(n_candidates)]
    queries = [Query(id=f"q{i}", text=" ".join(rng.choice(words, 4))) for i in range(n_queries)]
    if judged <= 3:
        qrels = {q.id: {f"c{int(j)}": 1 for j in rng.integers(0, n_candidates, judged)} for q in queries}
    else:
        qrels = {q.id: {f"c{int(j)}": int(g) for j, g in zip(rng.choice(n_candidates, judged, replace=False),
                                                              rng.integers(0, 101, judged))} for q in queries}
    task = Task(name="t2t", query_modality="text", candidate_modality="text", queries=queries, candidates=cands,
                qrels=qrels)
    root.mkdir(parents=True, exist_ok=True)
    write_benchmark_files(Benchmark(name="generated", version="1", tasks=[task], root=None), root)
    return root


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--candidates", type=int, default=0, help="generate a text-only benchmark of this many candidates "
                                                                  "(default: load the built-in MRBench-Synth)")
    ap.add_argument("--queries", type=int, default=20000)
    ap.add_argument("--judged", type=int, default=3, help="judged candidates per query of the generated benchmark")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    import pandas  # noqa: F401  (a realistic heap: what evaluate has imported when a second model runs)
    import torch  # noqa: F401

    import mrbench.data.io as io

    with tempfile.TemporaryDirectory() as d:
        if args.candidates:
            root = generated(Path(d) / "bench", args.candidates, args.queries, args.judged)
            label = f"generated, {args.candidates:,} candidates, {args.queries:,} queries, {args.judged:,} judged each"
        else:
            from mrbench.data.registry import load_benchmark

            root = Path(load_benchmark("mrbench-synth").root)
            label = "mrbench-synth"
        t0 = time.perf_counter()
        io.load_benchmark_dir(root, verify=True)
        first_verified = time.perf_counter() - t0
        print(f"{label}: first load, fingerprint checked {first_verified:.3f} s")
        paused = io.gc_paused
        times: dict[str, list[float]] = {"paused": [], "running": []}
        alive = []
        for _ in range(args.rounds):
            for mode in ("paused", "running"):
                io.gc_paused = paused if mode == "paused" else contextlib.nullcontext
                t0 = time.perf_counter()
                alive.append(io.load_benchmark_dir(root, verify=False))
                times[mode].append(time.perf_counter() - t0)
                alive = alive[-2:]
        io.gc_paused = paused
        # as evaluate loads (checked against the verification stamp): every task, or the first one only
        names = [t.name for t in alive[-1].tasks]
        checked: dict[str, list[float]] = {"all tasks": []}
        if len(names) > 1:
            checked[f"task {names[0]} only"] = []
        for _ in range(args.rounds):
            for what in checked:
                t0 = time.perf_counter()
                alive.append(io.load_benchmark_dir(root, verify=True, tasks=None if what == "all tasks" else names[:1]))
                checked[what].append(time.perf_counter() - t0)
                alive = alive[-2:]
    rows = {m: {"best_s": round(min(v), 3), "median_s": round(statistics.median(v), 3)} for m, v in times.items()}
    for m, r in rows.items():
        print(f"{label}: collector {m:<8} best {r['best_s']:.3f} s  median {r['median_s']:.3f} s")
    tasks_rows = {w: {"best_s": round(min(v), 3), "median_s": round(statistics.median(v), 3)} for w, v in checked.items()}
    for w, r in tasks_rows.items():
        print(f"{label}: stamp-checked, {w:<16} best {r['best_s']:.3f} s  median {r['median_s']:.3f} s")
    if args.out:
        out = {"machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "python": platform.python_version()},
               "benchmark": label, "rounds": args.rounds, "load": rows, "first_verified_s": round(first_verified, 3),
               "stamp_checked": tasks_rows}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
