"""Leaderboard figures: verification and submission time for a 1,000-query run, and N concurrent
submissions as separate ``mrbench submit`` processes.

Not a test. Uses the default MRBench-Synth (1,000 queries over four tasks) and the ``random``
encoder's results (evaluated once, outside the timings). Then:

* ``verify``: :func:`mrbench.leaderboard.verify.verify_results` (read results.json, load the benchmark,
  read and check 4 run files of 25,000 lines, recompute and compare every score), best of ``--repeats``;
* ``submit``: :func:`mrbench.leaderboard.store.submit` into a fresh leaderboard (the same, plus the
  lock and the atomic write), best of ``--repeats``;
* ``concurrent``: ``--procs`` copies of the results with distinct encoder revisions, each submitted by
  its own ``mrbench submit`` process, all started at once against one leaderboard file; reports the
  wall time, whether every entry is present and whether the file is still valid.

Usage::

    python benchmarks/bench_leaderboard.py --out benchmarks/results/leaderboard.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--procs", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)

    from mrbench import evaluate
    from mrbench.leaderboard.store import add_benchmark, load_leaderboard, submit
    from mrbench.leaderboard.verify import verify_results

    work = Path(tempfile.mkdtemp(prefix="bench-lb-"))
    res_dir = work / "random"
    evaluate("mrbench-synth", "random", output=res_dir)
    n_queries = json.loads((res_dir / "results.json").read_text())["scores"]["macro"]["n_queries"]
    lb0 = work / "lb0.json"
    add_benchmark(lb0, "mrbench-synth")

    t_verify, t_submit = [], []
    for i in range(args.repeats):
        t0 = time.perf_counter()
        v = verify_results(res_dir)
        t_verify.append(time.perf_counter() - t0)
        assert v.ok
        lb = work / f"lb-s{i}.json"
        shutil.copy(lb0, lb)
        t0 = time.perf_counter()
        submit(res_dir, lb)
        t_submit.append(time.perf_counter() - t0)

    lb = work / "lb-conc.json"
    shutil.copy(lb0, lb)
    dirs = []
    for i in range(args.procs):
        d = work / f"r{i:02d}"
        shutil.copytree(res_dir, d)
        p = d / "results.json"
        data = json.loads(p.read_text())
        data["encoder"]["revision"] = f"rev-{i:02d}"
        p.write_text(json.dumps(data))
        dirs.append(d)
    exe = [sys.executable, "-m", "mrbench"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    t0 = time.perf_counter()
    procs = [subprocess.Popen([*exe, "submit", str(d), "-l", str(lb)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, env=env) for d in dirs]
    outs = [p.communicate()[0] for p in procs]
    t_conc = time.perf_counter() - t0
    rcs = [p.returncode for p in procs]
    doc = load_leaderboard(lb)  # raises if the file is invalid
    ids = {e["id"] for e in doc["entries"]}
    all_present = len(ids) == args.procs and all(rc == 0 for rc in rcs)

    result = {
        "machine": {"cpu_count": os.cpu_count(), "python": sys.version.split()[0]},
        "n_queries": n_queries,
        "verify_s": {"best": min(t_verify), "all": t_verify},
        "submit_s": {"best": min(t_submit), "all": t_submit},
        "concurrent": {"procs": args.procs, "wall_s": t_conc, "entries": len(ids), "all_present": all_present,
                       "file_valid": True, "failed_outputs": [o for o, rc in zip(outs, rcs) if rc != 0][:3]},
    }
    print(f"{n_queries}-query run: verify {min(t_verify):.2f} s, submit (verify + lock + write) {min(t_submit):.2f} s "
          f"(best of {args.repeats})")
    print(f"{args.procs} concurrent `mrbench submit` processes: {t_conc:.1f} s wall, {len(ids)}/{args.procs} entries, "
          f"file valid, all exit 0: {all(rc == 0 for rc in rcs)}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    shutil.rmtree(work, ignore_errors=True)
    return 0 if all_present else 1


if __name__ == "__main__":
    raise SystemExit(main())
