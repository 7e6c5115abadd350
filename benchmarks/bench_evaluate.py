"""Cold vs warm `evaluate` on MRBench-Synth, time per stage, and `mrbench --help` start-up.

cold: empty MRBENCH_HOME (the benchmark is built, every item encoded); warm: the same command again
(benchmark and embeddings cached); fresh: an empty embedding cache again, in the same interpreter
(every item encoded, but torch, pandas and faiss already imported: a session evaluating several
models). "harness" = everything but the encoder's own forward calls
(``wall - encoder_forward``).

Where the harness time goes (``breakdown`` in the JSON, one entry per run):

* the stages ``evaluate`` times itself: load, encoder_init (building the encoder, its imports
  included: torch for a torch encoder; the images are hashed in a background thread meanwhile),
  import_stage (``timings["imports"]``: the search and scoring modules, imported once before the first
  task), encode (forward included), retrieve, score, sensitivity
  (its forward included), aggregate (per-query tables joined, scores aggregated), report (writing
  the output directory, with ``--write-results``) and chart (drawing grains.png, part of report);
* ``other``: wall minus all of the above;
* ``imports``: seconds spent importing modules during the run, per top-level package (these
  seconds are inside the stages above, e.g. pandas inside score, torch inside encoder_init);
  ``imports_main_thread`` is the part the main thread waited for.

    python benchmarks/bench_evaluate.py --encoder random --out benchmarks/results/evaluate.json
    python benchmarks/bench_evaluate.py --encoder benchmarks/tiny_torch_encoder.py:TinyTorchEncoder --write-results
    python benchmarks/bench_evaluate.py --encoder benchmarks/tiny_torch_encoder.py:TinyTorchEncoder --encode-ahead on
    MRBENCH_PIXEL_CACHE=1 python benchmarks/bench_evaluate.py --encoder openclip:ViT-B-32 \
        --encoder-kwargs '{"random_init": true, "device": "cuda"}' --encode-ahead off     # on a GPU: auto = on
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
import threading
import time
from contextlib import contextmanager
from pathlib import Path

STAGES = ["load", "encoder_init", "import_stage", "encode", "retrieve", "score", "sensitivity", "aggregate", "report"]
"""Stages of ``evaluate`` that do not overlap; ``chart`` is part of ``report``, ``encoder_forward``
part of ``encode`` and ``sensitivity``."""


@contextmanager
def import_timer():
    """Seconds spent in imports while the block runs, per top-level package: the outermost import of
    each thread is timed (nested imports are inside it). Wraps ``importlib._bootstrap._find_and_load``,
    which the interpreter looks up on every import that is not already in ``sys.modules``."""
    import importlib._bootstrap as bootstrap

    orig = bootstrap._find_and_load
    local = threading.local()
    main = threading.main_thread()
    by_pkg: dict[str, float] = {}
    totals = {"main": 0.0, "other": 0.0}
    lock = threading.Lock()

    def timed(name, import_):
        if getattr(local, "depth", 0):
            return orig(name, import_)
        local.depth = 1
        t0 = time.perf_counter()
        try:
            return orig(name, import_)
        finally:
            dt = time.perf_counter() - t0
            local.depth = 0
            pkg = name.partition(".")[0]
            with lock:
                by_pkg[pkg] = by_pkg.get(pkg, 0.0) + dt
                totals["main" if threading.current_thread() is main else "other"] += dt

    out: dict = {}
    bootstrap._find_and_load = timed
    try:
        yield out
    finally:
        bootstrap._find_and_load = orig
        out["imports"] = totals["main"] + totals["other"]
        out["imports_main_thread"] = totals["main"]
        out["imports_by_package"] = {k: round(v, 4) for k, v in sorted(by_pkg.items(), key=lambda kv: -kv[1]) if v >= 0.001}


def run_once(benchmark: str, encoder: str, home: Path, output: Path | None, cache: str = "embeddings",
             encoder_kwargs: dict | None = None) -> dict:
    os.environ["MRBENCH_HOME"] = str(home)
    os.environ["MRBENCH_CACHE"] = str(home / cache)
    import mrbench

    with import_timer() as imp:
        t0 = time.perf_counter()
        res = mrbench.evaluate(benchmark, encoder, output=output, encoder_kwargs=encoder_kwargs)
        wall = time.perf_counter() - t0
    t = dict(res.timings)
    t["import_stage"] = t.pop("imports", 0.0)  # evaluate's own stage (search and scoring imports, done once)
    t["wall"] = wall
    t["harness"] = wall - t["encoder_forward"]
    breakdown = {k: t.get(k, 0.0) for k in STAGES}
    breakdown["chart"] = t.get("chart", 0.0)
    breakdown["other"] = wall - sum(t.get(k, 0.0) for k in STAGES)
    breakdown["imports"] = imp["imports"]
    breakdown["imports_main_thread"] = imp["imports_main_thread"]
    return {"timings": t, "breakdown": breakdown, "imports_by_package": imp["imports_by_package"],
            "cache": res.data["cache"], "hit@5": res.scores["macro"]["hit@5"]}


def help_time(repeats: int = 5) -> float:
    """Median wall time of ``mrbench --help``: the installed script, or ``python -m mrbench`` where the
    package is only on ``PYTHONPATH`` (a GPU host with no install)."""
    exe = Path(sys.executable).with_name("mrbench")
    cmd = [str(exe), "--help"] if exe.exists() else [sys.executable, "-m", "mrbench", "--help"]
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--benchmark", default="mrbench-synth")
    ap.add_argument("--encoder", default="random", help="random, or e.g. benchmarks/tiny_torch_encoder.py:TinyTorchEncoder")
    ap.add_argument("--write-results", action="store_true",
                    help="also write each run's output directory (results.json, runs, tables, chart), as "
                         "'mrbench evaluate --output' does; timed as report / chart")
    ap.add_argument("--encoder-kwargs", type=json.loads, default=None, metavar="JSON",
                    help='constructor arguments, e.g. \'{"random_init": true, "device": "cuda"}\' with '
                         '--encoder openclip:ViT-B-32')
    ap.add_argument("--encode-ahead", choices=("auto", "on", "off"), default="auto",
                    help="start each encode call while the one before it runs (mrbench.pipeline.ENCODE_AHEAD): "
                         "auto (evaluate's default: for encoders on a GPU), on, off")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    if args.encode_ahead != "auto":
        import mrbench.pipeline

        mrbench.pipeline.ENCODE_AHEAD = args.encode_ahead == "on"
    with tempfile.TemporaryDirectory() as d:
        home = Path(d)
        t0 = time.perf_counter()
        from mrbench.data.registry import load_benchmark

        os.environ["MRBENCH_HOME"] = str(home)
        load_benchmark(args.benchmark)
        build = time.perf_counter() - t0
        kw = args.encoder_kwargs
        cold = run_once(args.benchmark, args.encoder, home, home / "results-cold" if args.write_results else None,
                        encoder_kwargs=kw)
        warm = run_once(args.benchmark, args.encoder, home, home / "results-warm" if args.write_results else None,
                        encoder_kwargs=kw)
        # every item encoded again (an empty cache), in an interpreter that has imported everything
        fresh = run_once(args.benchmark, args.encoder, home, home / "results-fresh" if args.write_results else None,
                         cache="embeddings-fresh", encoder_kwargs=kw)
    out = {
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version(),
                    "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None},
        "benchmark": args.benchmark,
        "encoder": args.encoder,
        "encoder_kwargs": args.encoder_kwargs,
        "write_results": bool(args.write_results),
        "encode_ahead": args.encode_ahead,
        "build_seconds": build,
        "cold": cold,
        "warm": warm,
        "cold_cache_warm_interpreter": fresh,
        "warm_speedup": cold["timings"]["wall"] / warm["timings"]["wall"],
        "help_seconds": help_time(),
    }
    print(f"{'stage':<20}{'cold s':>10}{'warm s':>10}{'fresh s':>10}")
    rows = [("load", "timings"), ("encoder_init", "timings"), ("import_stage", "timings"), ("encode", "timings"), ("  encoder_forward", "timings"),
            ("retrieve", "timings"), ("score", "timings"), ("sensitivity", "timings"), ("aggregate", "timings"),
            ("report", "timings"), ("  chart", "timings"), ("other", "breakdown"), ("imports (in stages)", "breakdown"),
            ("harness", "timings"), ("wall", "timings")]
    for label, where in rows:
        key = label.strip().split(" ")[0]
        print(f"{label:<20}{cold[where].get(key, 0):>10.3f}{warm[where].get(key, 0):>10.3f}{fresh[where].get(key, 0):>10.3f}")
    top = ", ".join(f"{k} {v:.2f}" for k, v in list(cold["imports_by_package"].items())[:6])
    print(f"cold imports by package (s): {top}")
    print(f"build (first use) {build:.2f} s; warm speed-up {out['warm_speedup']:.1f}x; "
          f"harness share of cold {cold['timings']['harness'] / cold['timings']['wall']:.1%} "
          f"(of fresh, imports done: {fresh['timings']['harness'] / fresh['timings']['wall']:.1%}); "
          f"mrbench --help {out['help_seconds'] * 1000:.0f} ms")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
