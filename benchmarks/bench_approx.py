"""Approximate indexes (:mod:`mrbench.retrieval.approx`) against exact search on a large pool.

Not a test. ``N`` unit-norm candidates of dimension ``D`` drawn from a mixture of ``--clusters``
Gaussians (centre on the unit sphere plus isotropic noise of norm ``--noise``, then normalised;
queries are drawn the same way), so that IVF cells mean something. Times

* ``exact``: ``exact_search(backend="faiss")`` (exhaustive, canonical scores, pessimistic ties);
* ``ivf``: one ``build_index(index="ivf", nlist=...)`` (k-means on ``--train-size`` vectors + add),
  then ``search`` at each ``--nprobe``;
* ``hnsw``: one ``build_index(index="hnsw", M=..., ef_construction=...)`` (single-threaded, see the
  module docs), then ``search`` at each ``--ef-search``;

and reports, per setting, the index search time alone (``index s``), the whole search call including
the exact re-scoring of the shortlist (``search s``), queries per second of the whole call, and
recall@10 / recall@depth against the exact top lists (:func:`recall_against_exact`). HNSW searches run
with ``max(ef_search, shortlist)``; the table shows that effective beam.

Usage::

    python benchmarks/bench_approx.py --n 200000 --d 256 --q 1000 --out benchmarks/results/approx_cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from typing import Any

import numpy as np


def make_data(n: int, d: int, q: int, clusters: int, noise: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, d), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)

    def draw(m: int) -> np.ndarray:
        out = np.empty((m, d), dtype=np.float32)
        for s in range(0, m, 65536):  # bounded temporaries
            e = min(m, s + 65536)
            x = centres[rng.integers(0, clusters, e - s)]
            x += np.float32(noise / np.sqrt(d)) * rng.standard_normal((e - s, d), dtype=np.float32)
            x /= np.linalg.norm(x, axis=1, keepdims=True)
            out[s:e] = x
        return out

    cand = draw(n)
    return draw(q), cand


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=200_000)
    ap.add_argument("--d", type=int, default=256)
    ap.add_argument("--q", type=int, default=1000)
    ap.add_argument("--depth", type=int, default=100)
    ap.add_argument("--clusters", type=int, default=1000)
    ap.add_argument("--noise", type=float, default=2.0, help="noise norm relative to the unit centre")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--nlist", type=int, default=1024)
    ap.add_argument("--train-size", type=int, default=65536)
    ap.add_argument("--nprobe", default="1,4,16,64,256")
    ap.add_argument("--M", type=int, default=16)
    ap.add_argument("--ef-construction", type=int, default=64)
    ap.add_argument("--ef-search", default="128,256,512")
    ap.add_argument("--skip-hnsw", action="store_true")
    ap.add_argument("--threads", type=int, default=None,
                    help="threads for FAISS and PyTorch (default: their own). On a small shared machine, 1 gives "
                    "stable timings: FAISS and PyTorch each bring an OpenMP pool, and short parallel regions wait "
                    "for a descheduled thread")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    if args.threads:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)

    import faiss
    import torch

    if args.threads:
        faiss.omp_set_num_threads(args.threads)
        torch.set_num_threads(args.threads)

    from mrbench.retrieval.approx import build_index, recall_against_exact
    from mrbench.retrieval.search import exact_search

    t0 = time.perf_counter()
    q, c = make_data(args.n, args.d, args.q, args.clusters, args.noise, args.seed)
    gen_s = time.perf_counter() - t0
    print(f"data: N={args.n} D={args.d} Q={args.q} clusters={args.clusters} noise={args.noise} ({gen_s:.1f} s)", flush=True)
    empty = [{}] * args.q
    k_small = min(10, args.depth)

    rows: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    ex = exact_search(q, c, empty, depth=args.depth, backend="faiss")
    exact_s = time.perf_counter() - t0
    rows.append({"method": "exact", "setting": "faiss", "build_s": 0.0, "index_s": None, "search_s": exact_s,
                 "qps": args.q / exact_s, "recall@10": 1.0, f"recall@{args.depth}": 1.0})
    print(f"exact: {exact_s:.2f} s", flush=True)

    def record(method: str, setting: str, build_s: float, res: Any, total_s: float) -> None:
        row = {"method": method, "setting": setting, "build_s": build_s, "index_s": res.search_seconds,
               "search_s": total_s, "qps": args.q / total_s,
               "recall@10": recall_against_exact(res, ex, k_small),
               f"recall@{args.depth}": recall_against_exact(res, ex, res.depth),
               "n_refilled": res.n_refilled, "params": res.params}
        rows.append(row)
        print(f"{method} {setting}: search {total_s:.2f} s (index {res.search_seconds:.2f} s), "
              f"recall@10 {row['recall@10']:.4f}, recall@{args.depth} {row[f'recall@{args.depth}']:.4f}", flush=True)

    t0 = time.perf_counter()
    ivf = build_index(c, index="ivf", params={"nlist": args.nlist, "train_size": min(args.train_size, args.n)}, seed=args.seed)
    ivf_build = time.perf_counter() - t0
    print(f"ivf build (nlist={args.nlist}, train_size={min(args.train_size, args.n)}): {ivf_build:.1f} s", flush=True)
    for p in [int(x) for x in args.nprobe.split(",") if x]:
        t0 = time.perf_counter()
        res = ivf.search(q, judged=empty, depth=args.depth, nprobe=p)
        record("ivf", f"nlist={args.nlist} nprobe={p}", ivf_build, res, time.perf_counter() - t0)
    del ivf

    if not args.skip_hnsw:
        t0 = time.perf_counter()
        hnsw = build_index(c, index="hnsw", params={"M": args.M, "ef_construction": args.ef_construction}, seed=args.seed)
        hnsw_build = time.perf_counter() - t0
        print(f"hnsw build (M={args.M}, ef_construction={args.ef_construction}): {hnsw_build:.1f} s", flush=True)
        for ef in [int(x) for x in args.ef_search.split(",") if x]:
            t0 = time.perf_counter()
            res = hnsw.search(q, judged=empty, depth=args.depth, ef_search=ef)
            eff = max(ef, res.params["shortlist"])
            record("hnsw", f"M={args.M} efC={args.ef_construction} ef={eff}", hnsw_build, res, time.perf_counter() - t0)

    dk = f"recall@{args.depth}"
    print()
    print(f"| method | setting | build s | index search s | search s | queries/s | recall@10 | {dk} |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        idx = "–" if r["index_s"] is None else f"{r['index_s']:.2f}"
        print(f"| {r['method']} | {r['setting']} | {r['build_s']:.1f} | {idx} | {r['search_s']:.2f} | {r['qps']:.0f} | "
              f"{r['recall@10']:.4f} | {r[dk]:.4f} |")
    out = {
        "config": {k: v for k, v in vars(args).items() if k != "out"},
        "hardware": {"platform": platform.platform(), "python": platform.python_version(), "cpu_count": os.cpu_count(),
                     "faiss": faiss.__version__, "faiss_threads": faiss.omp_get_max_threads(), "torch": torch.__version__,
                     "torch_threads": torch.get_num_threads()},
        "data_seconds": gen_s,
        "rows": rows,
    }
    if args.out:
        os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
        with open(args.out, "w", encoding="utf-8") as fh:
            json.dump(out, fh, indent=2)
            fh.write("\n")
        print(f"written {args.out}")
    return out


if __name__ == "__main__":
    main(sys.argv[1:])
