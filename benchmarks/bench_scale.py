"""End to end at scale: ``mrbench evaluate`` and ``mrbench encode`` on a generated text benchmark with a
large pool, each run a fresh process, timed by stage with its peak memory.

The benchmark is :func:`bench_load.generated`: ``--candidates`` six-word candidates, ``--queries``
queries with 3 judged candidates each. Runs, in order (each names the embedding cache it uses):

* ``evaluate cold`` (cache A, empty): every item encoded, the pool in memory;
* ``evaluate warm`` (cache A): every embedding read from the cache;
* ``evaluate warm --stream-pool`` (cache A): the pool in a memory-mapped file, streamed through the search;
* ``evaluate cold --stream-pool`` (cache B, empty);
* ``encode`` (cache C, empty): ``mrbench encode`` as one process, its shards merged;
* ``evaluate warm --stream-pool after encode`` (cache C: one merged shard per million rows).

Memory: the peak of the process's anonymous resident memory (``RssAnon``: heap, arrays; what a
pool larger than memory must not fill; sampled from ``/proc`` every 50 ms, so a shorter spike can be
missed) and of its whole resident set (``VmHWM``, the kernel's own high-water mark, which also counts
the pages of memory-mapped files: the page cache, reclaimable). Each evaluate run records the
sha256 of its run files: equal digests, identical ranked lists. A warm run needs its cache filled
(its cold run in the same call, or in an earlier call with the same ``--data``); a failed run stops
the sequence, and what was measured is still written.

    python benchmarks/bench_scale.py --out benchmarks/results/scale_1m.json              # 1M x 256, random encoder
    python benchmarks/bench_scale.py --candidates 100000 --runs "evaluate cold,evaluate warm"
    python benchmarks/bench_scale.py --encoder benchmarks/tiny_torch_encoder.py:TinyTorchEncoder --encoder-kwargs '{}'
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

RUNS = [
    ("evaluate cold", "A", ["evaluate"], True),
    ("evaluate warm", "A", ["evaluate"], False),
    ("evaluate warm --stream-pool", "A", ["evaluate", "--stream-pool"], False),
    ("evaluate cold --stream-pool", "B", ["evaluate", "--stream-pool"], True),
    ("encode", "C", ["encode"], True),
    ("evaluate warm --stream-pool after encode", "C", ["evaluate", "--stream-pool"], False),
]
"""(name, embedding cache, command, whether that cache is emptied first)."""


def _status(pid: int) -> dict[str, int]:
    """``RssAnon`` and ``VmHWM`` of a process, in KiB (empty once it has gone)."""
    out: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key = line.split(":", 1)[0]
                if key in ("RssAnon", "VmHWM"):
                    out[key] = int(line.split()[1])
    except OSError:
        pass
    return out


def run(cmd: list[str], env: dict[str, str], log: Path) -> dict:
    """Run ``cmd``; its wall time and peak memory (MiB), polled from ``/proc`` every 50 ms."""
    peak = {"RssAnon": 0, "VmHWM": 0}
    t0 = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        done = threading.Event()

        def poll() -> None:
            while not done.is_set():
                for k, v in _status(proc.pid).items():
                    peak[k] = max(peak[k], v)
                done.wait(0.05)

        th = threading.Thread(target=poll, daemon=True)
        th.start()
        rc = proc.wait()
        done.set()
        th.join()
    wall = time.perf_counter() - t0
    row = {"wall_s": round(wall, 2), "peak_anon_mib": round(peak["RssAnon"] / 1024),
           "peak_rss_mib": round(peak["VmHWM"] / 1024)}
    if rc != 0:
        row["failed"] = f"exit status {rc}; see {log}: {log.read_text()[-600:]}"
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--candidates", type=int, default=1_000_000)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--encoder", default="random")
    ap.add_argument("--encoder-kwargs", default='{"dim": 256}', help="JSON for the encoder's constructor")
    ap.add_argument("--runs", default=",".join(r[0] for r in RUNS),
                    help="comma-separated run names (default: all, in order; a warm run needs its cold one before it)")
    ap.add_argument("--data", type=Path, help="keep the generated benchmark (and the runs' homes) here; reused "
                                              "when it already holds a benchmark of the same size")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    wanted = [w.strip() for w in args.runs.split(",") if w.strip()]
    unknown = [w for w in wanted if w not in {r[0] for r in RUNS}]
    if unknown:
        raise SystemExit(f"unknown run(s) {unknown}; choose from {[r[0] for r in RUNS]}")

    from bench_load import generated
    from goals import machine_info

    tmp = None
    if args.data is None:
        tmp = tempfile.TemporaryDirectory()
        args.data = Path(tmp.name)
    bench = args.data / f"bench-{args.candidates}-{args.queries}"
    if not (bench / "manifest.json").exists():
        t0 = time.perf_counter()
        generated(bench, args.candidates, args.queries)
        print(f"generated {bench} in {time.perf_counter() - t0:.1f} s", flush=True)
    home = args.data / "home"
    env = {**os.environ, "MRBENCH_HOME": str(home), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    exe = [sys.executable, "-m", "mrbench"]
    common = ["-b", str(bench), "-e", args.encoder, "--encoder-kwargs", args.encoder_kwargs]
    from mrbench.data.io import load_benchmark_dir  # the fingerprint is checked once, before the timed runs

    os.environ["MRBENCH_HOME"] = str(home)
    load_benchmark_dir(bench, verify=True)

    results = []
    emptied: set[str] = set()
    for name, cache, cmd, empty in RUNS:
        if name not in wanted:
            continue
        cache_dir = home / f"cache-{cache}"
        if empty:
            shutil.rmtree(cache_dir, ignore_errors=True)
            emptied.add(cache)
        elif cache not in emptied and not any(cache_dir.glob("*/shard-*.npz")):
            first = next(r[0] for r in RUNS if r[1] == cache and r[3])
            raise SystemExit(f"run {name!r} reads cache {cache}, which is empty: run {first!r} before it "
                             "(in this call, or in an earlier one with the same --data)")
        run_env = {**env, "MRBENCH_CACHE": str(cache_dir)}
        out_dir = home / "out"
        shutil.rmtree(out_dir, ignore_errors=True)
        full = [*exe, *cmd, *common, "-q"]
        if cmd[0] == "evaluate":
            full += ["-o", str(out_dir)]
        log = home / f"{name.replace(' ', '_').replace(',', '')}.log"
        row = {"run": name, "cache": cache, **run(full, run_env, log)}
        if cmd[0] == "evaluate" and "failed" not in row:
            data = json.loads((out_dir / "results.json").read_text())
            t = data["timings"]
            row["stages_s"] = {k: round(t[k], 2) for k in ("load", "encoder_init", "encode", "encoder_forward",
                                                              "retrieve", "score") if k in t}
            row["cache_hits"] = data["cache"].get("hits")
            # the runs' ranked lists: equal digests, identical results (in memory or streamed, before or after)
            row["run_files_sha256"] = {f.name: hashlib.sha256(f.read_bytes()).hexdigest()[:16]
                                       for f in sorted((out_dir / "runs").glob("*.trec"))}
        results.append(row)
        if "failed" in row:
            print(f"{name}: FAILED, {row['failed']}", file=sys.stderr)
            break
        stages = ", ".join(f"{k} {v:.2f}" for k, v in row.get("stages_s", {}).items())
        print(f"{name:<44} wall {row['wall_s']:7.2f} s  anon peak {row['peak_anon_mib']:6,} MiB  "
              f"rss peak {row['peak_rss_mib']:6,} MiB  {stages}", flush=True)
    out = {
        "machine": machine_info("cpu"),
        "benchmark": {"candidates": args.candidates, "queries": args.queries, "judged_per_query": 3},
        "encoder": args.encoder, "encoder_kwargs": json.loads(args.encoder_kwargs),
        "pool_mib": None,
        "runs": results,
    }
    dim = out["encoder_kwargs"].get("dim") if isinstance(out["encoder_kwargs"], dict) else None
    if dim:
        out["pool_mib"] = round(args.candidates * dim * 4 / 2**20)
    if args.out:  # (what was measured, also when a run failed)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(out, indent=2) + "\n")
    if tmp is not None:
        tmp.cleanup()
    if any("failed" in r for r in results):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
