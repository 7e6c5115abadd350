"""A new process's ``evaluate`` with every embedding cached, with and without the stored image digests.

The embedding cache is keyed by each image file's sha256 (:mod:`mrbench.encoders.hash_store`). This
generates a text→image benchmark of ``--images`` files of ``--kb`` KB (random bytes: the ``random``
encoder never decodes them), runs ``evaluate --encoder random`` once to fill the embedding cache and the
digest store, then alternates new processes with the store kept and with it deleted, and reports the
wall time and ``timings.encode`` of each. The files stay in the page cache, so what is saved here is
hashing; reading them from disk would add to the runs without the store.

    python benchmarks/bench_hash_store.py --images 20000 --kb 100 --out benchmarks/results/hash_store_cpu.json
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RUN = """
import json, sys, time
t0 = time.perf_counter()
import mrbench
r = mrbench.evaluate(sys.argv[1], "random", grain_sensitivity=False)
print(json.dumps({"wall_s": time.perf_counter() - t0, "encode_s": r.timings["encode"], "total_s": r.timings["total"]}))
"""


def build(root: Path, n: int, kb: int) -> Path:
    import numpy as np

    from mrbench.data.io import save_benchmark
    from mrbench.data.schema import Benchmark, Candidate, Query, Task

    src = root / "src"
    (src / "images").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        (src / "images" / f"{i}.jpg").write_bytes(rng.bytes(kb * 1024))
    words = np.array(["red", "blue", "dog", "cat", "large", "small"])
    queries = [Query(id=f"q{i}", text=" ".join(rng.choice(words, 4))) for i in range(200)]
    task = Task(name="t2i", query_modality="text", candidate_modality="image", queries=queries,
                candidates=[Candidate(id=f"c{i}", image=f"images/{i}.jpg") for i in range(n)],
                qrels={q.id: {f"c{int(rng.integers(0, n))}": 1} for q in queries})
    out = root / "bench"
    save_benchmark(Benchmark(name="generated-images", version="1", tasks=[task], root=src), out)
    return out


def run(bench: Path, home: Path) -> dict[str, float]:
    env = dict(os.environ, MRBENCH_HOME=str(home), PYTHONPATH=str(ROOT))
    env.pop("MRBENCH_CACHE", None)
    out = subprocess.run([sys.executable, "-c", RUN, str(bench)], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=20000)
    ap.add_argument("--kb", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    from mrbench.encoders import hash_store

    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        bench = build(Path(d), args.images, args.kb)
        home = Path(d) / "home"
        print(f"generated {args.images:,} images of {args.kb} KB in {time.perf_counter() - t0:.1f} s")
        first = run(bench, home)  # fills the embedding cache and the digest store
        os.environ["MRBENCH_HOME"] = str(home)
        store = hash_store.store_path(bench)
        saved = store.read_bytes()
        runs: dict[str, list[dict[str, float]]] = {"digests stored": [], "no store": []}
        for _ in range(args.rounds):
            for what in runs:
                if what == "no store":
                    store.unlink()
                runs[what].append(run(bench, home))
                store.write_bytes(saved)  # (the run without it wrote a new one; the next starts from the same)
    rows = {w: {k: round(statistics.median(r[k] for r in v), 3) for k in ("wall_s", "encode_s")} for w, v in runs.items()}
    print(f"first run (everything encoded): {first['wall_s']:.2f} s")
    for w, r in rows.items():
        print(f"{w:<15} wall {r['wall_s']:.2f} s  encode {r['encode_s']:.2f} s  (medians of {args.rounds})")
    if args.out:
        out = {"machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "python": platform.python_version()},
               "images": args.images, "kb": args.kb, "rounds": args.rounds, "first_run": first, "medians": rows,
               "runs": runs}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
