"""Throughput of :func:`mrbench.retrieval.search.exact_search` against raw FAISS ``IndexFlatIP``.

Not a test. For ``N`` candidates, ``Q`` queries of dimension ``D`` (unit vectors) and top-``depth``
lists, times

* ``faiss-raw``: ``IndexFlatIP(D)`` + ``add`` + ``search(Q, depth)`` (what a user would write, with
  no ranks for judged candidates and no tie handling);
* ``torch-raw``: the same with PyTorch on ``--device``: copy to the device, query-chunked
  ``Qc @ C.T`` + ``topk(depth)`` with the same chunk size as ``exact_search`` (the GPU baseline,
  where FAISS is not installed);
* ``exact-faiss``: ``exact_search(backend="faiss")``;
* ``exact-torch``: ``exact_search(backend="torch")`` (on the GPU when there is one);
* ``exact-stream``: ``exact_search(backend="torch", stream=True)``: the pool passed through the
  device in blocks, as ``mrbench evaluate --stream-pool`` runs pools larger than memory (here the
  pool is in RAM, so no disk reads are timed);
* ``exact-auto``: ``exact_search(backend="auto")``, what ``mrbench evaluate`` runs (on the CPU: faiss,
  or the streamed pass over the pool in memory when a sample shows most judged candidates below the
  lists; the backend that ran is noted).

Ratios are throughput relative to a baseline (>1 = faster): ``vs faiss`` against ``faiss-raw``
including ``add`` (the copy into the index), ``vs search`` against its ``search`` call alone,
``vs torch`` against ``torch-raw``.

Each method runs in its own subprocess; its peak RSS is the kernel's VmHWM, reset after the data
were generated (``/proc/self/clear_refs``), so it covers the timed call only; ``+MiB`` is that peak
minus the RSS before the call (inputs included in neither). Queries are noisy copies of a target candidate (the judged,
relevant candidate), so most targets rank near the top like a reasonable model's;
``--outside-frac`` makes that fraction of queries judge a random candidate instead, which usually
lies below the top list and forces an exact row scan (the cost of ranking every judged candidate);
``--extra-judged K`` adds K random judged candidates per query (graded, mostly far below the list),
like an evaluation qrels file with many judged candidates per query.

Usage::

    python benchmarks/bench_search.py --n 100000 --d 512 --q 1000 --out bench.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from typing import Any

import numpy as np

METHODS = ("faiss-raw", "torch-raw", "exact-faiss", "exact-torch", "exact-stream", "exact-auto")


def make_data(
    n: int, d: int, q: int, seed: int, noise: float, outside_frac: float, extra_judged: int = 0
) -> tuple[np.ndarray, np.ndarray, list[dict[int, int]]]:
    """Unit-norm candidates, noisy-copy queries and one judged (grade 1) candidate per query.

    ``extra_judged`` adds that many random judged candidates per query (grades 1-3; most lie far
    below the top list), the workload where ranking every judged candidate dominates.
    """
    rng = np.random.default_rng(seed)
    cand = rng.standard_normal((n, d), dtype=np.float32)
    cand /= np.linalg.norm(cand, axis=1, keepdims=True)
    target = rng.integers(0, n, q)
    qry = cand[target] + float(noise / np.sqrt(d)) * rng.standard_normal((q, d), dtype=np.float32)
    qry /= np.linalg.norm(qry, axis=1, keepdims=True)
    judged_rows = np.where(rng.random(q) < outside_frac, rng.integers(0, n, q), target)
    judged = [{int(r): 1} for r in judged_rows]
    if extra_judged:
        extra = rng.integers(0, n, (q, extra_judged))
        grades = rng.integers(1, 4, (q, extra_judged))
        for i in range(q):  # the target stays first (and grade 1)
            t = int(judged_rows[i])
            judged[i] = {t: 1, **{r: g for r, g in zip(extra[i].tolist(), grades[i].tolist()) if r != t}}
    return np.ascontiguousarray(qry), np.ascontiguousarray(cand), judged


def make_data_torch(
    n: int, d: int, q: int, seed: int, noise: float, outside_frac: float, extra_judged: int = 0, device: Any = "cpu"
) -> tuple[Any, Any, list[dict[int, int]]]:
    """:func:`make_data` generated with PyTorch on ``device`` (same recipe, different random numbers).

    Returns float32 tensors ``(queries, candidates)`` on ``device`` and the judged list. On a GPU
    this takes milliseconds where NumPy needs ~15 s for 1M x 512 (~45 s for 1M x 1536); copy the
    tensors to the host (``.cpu().numpy()``) where a NumPy array is needed.
    """
    import torch

    dev = torch.device(device)
    g = torch.Generator(device=dev).manual_seed(int(seed))
    cand = torch.randn((n, d), generator=g, device=dev, dtype=torch.float32)
    cand /= torch.linalg.vector_norm(cand, dim=1, keepdim=True)
    target = torch.randint(0, n, (q,), generator=g, device=dev)
    qry = cand[target] + float(noise / np.sqrt(d)) * torch.randn((q, d), generator=g, device=dev, dtype=torch.float32)
    qry /= torch.linalg.vector_norm(qry, dim=1, keepdim=True)
    outside = torch.rand(q, generator=g, device=dev) < outside_frac
    judged_rows = torch.where(outside, torch.randint(0, n, (q,), generator=g, device=dev), target).tolist()
    judged = [{int(r): 1} for r in judged_rows]
    if extra_judged:
        extra = torch.randint(0, n, (q, extra_judged), generator=g, device=dev).tolist()
        grades = torch.randint(1, 4, (q, extra_judged), generator=g, device=dev).tolist()
        for i in range(q):  # the target stays first (and grade 1)
            t = int(judged_rows[i])
            judged[i] = {t: 1, **{r: gr for r, gr in zip(extra[i], grades[i]) if r != t}}
    return qry.contiguous(), cand, judged


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter (VmHWM) of this process (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _peak_rss_mib() -> float:
    """VmHWM (peak RSS since the last reset) in MiB; ru_maxrss when /proc is unavailable."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _rss_mib() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _exact_backend(method: str) -> tuple[str, bool | None]:
    """``(backend, stream)`` of an ``exact-*`` method."""
    name = method.split("-", 1)[1]
    return ("torch", True) if name == "stream" else (name, None)


def worker(args: argparse.Namespace) -> dict[str, Any]:
    """Run one method ``args.repeats`` times in this process; return timings and memory."""
    import torch

    try:
        import faiss  # noqa: F401  (import cost outside the timed region)
    except ImportError:
        faiss = None

    from mrbench.retrieval.search import exact_search

    qry, cand, judged = make_data(args.n, args.d, args.q, args.seed, args.noise, args.outside_frac, args.extra_judged)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    chunk_bytes = int(args.max_chunk_mib * 2**20)
    if device.startswith("cuda"):  # warm up CUDA outside the timed region
        (torch.ones(8, 8, device=device) @ torch.ones(8, 8, device=device)).sum().item()
    # warm-up on a tiny problem: first-call costs (lazy imports, thread pools) stay untimed
    wq, wc, wj = make_data(64, args.d, 8, args.seed + 1, args.noise, 0.0)
    if args.worker == "faiss-raw" and faiss is not None:
        wi = faiss.IndexFlatIP(args.d)
        wi.add(wc)
        wi.search(wq, 4)
    elif args.worker == "torch-raw":
        torch.topk(torch.from_numpy(wq).to(device) @ torch.from_numpy(wc).to(device).T, 4, dim=1)[0].cpu()
    elif args.worker.startswith("exact-"):
        wb, stream = _exact_backend(args.worker)
        exact_search(wq, wc, wj, depth=4, backend=wb, device=device if wb == "torch" else None, stream=stream)
    base_rss = _rss_mib()
    peak_reset = _reset_peak_rss()  # so that the peak below covers the timed calls only
    times: list[float] = []
    extra: dict[str, Any] = {}
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        if args.worker == "faiss-raw":
            index = faiss.IndexFlatIP(args.d)
            index.add(cand)
            t1 = time.perf_counter()
            index.search(qry, args.depth)
            extra.setdefault("search_only_s", []).append(time.perf_counter() - t1)
            del index
        elif args.worker == "torch-raw":
            with torch.inference_mode():
                c_dev = torch.from_numpy(cand).to(device)
                q_dev = torch.from_numpy(qry).to(device)
                rows = max(1, chunk_bytes // (4 * args.n))
                for s in range(0, args.q, rows):
                    vals, idx = torch.topk(q_dev[s : s + rows] @ c_dev.T, args.depth, dim=1)
                    vals.cpu(), idx.cpu()
                del c_dev, q_dev
            extra["device"] = device
        else:
            backend, stream = _exact_backend(args.worker)
            prof = None
            if args.profile:
                import cProfile

                prof = cProfile.Profile()
                prof.enable()
            res = exact_search(
                qry, cand, judged, depth=args.depth, backend=backend,
                device=device if backend == "torch" else None, max_chunk_bytes=chunk_bytes, stream=stream,
            )
            if prof is not None:
                import io
                import pstats

                prof.disable()
                buf = io.StringIO()
                pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(12)
                print(buf.getvalue(), file=sys.stderr)
            extra["device"] = res.device
            extra["backend"] = res.backend
            ranks = np.array([r[next(iter(j))] for r, j in zip(res.judged_ranks, judged)])  # the targets
            extra["judged_in_top_depth"] = float((ranks <= args.depth).mean())
            extra["judged_rank1"] = float((ranks == 1).mean())
        times.append(time.perf_counter() - t0)
    peak = _peak_rss_mib()
    out: dict[str, Any] = {
        "method": args.worker,
        "times_s": times,
        "best_s": min(times),
        "queries_per_s": args.q / min(times),
        "peak_rss_mib": peak,
        "data_rss_mib": base_rss,
        "extra_peak_mib": peak - base_rss,
        "peak_covers_timed_calls_only": peak_reset,
        "torch_threads": torch.get_num_threads(),
        "faiss_threads": faiss.omp_get_max_threads() if faiss is not None else None,
        "gpu": torch.cuda.get_device_name(0) if device.startswith("cuda") else None,
    }
    if "search_only_s" in extra:
        extra["search_only_best_s"] = min(extra.pop("search_only_s"))
    out.update(extra)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=100_000, help="number of candidates")
    ap.add_argument("--d", type=int, default=512, help="embedding dimension")
    ap.add_argument("--q", type=int, default=1000, help="number of queries")
    ap.add_argument("--depth", type=int, default=100, help="top-k depth")
    ap.add_argument("--repeats", type=int, default=5, help="interleaved rounds (best is reported)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--noise", type=float, default=1.0, help="query noise relative to a unit vector")
    ap.add_argument("--outside-frac", type=float, default=0.0, help="fraction of queries judging a random candidate")
    ap.add_argument("--extra-judged", type=int, default=0, help="random judged candidates added per query")
    ap.add_argument("--methods", default="faiss-raw,exact-faiss,exact-torch", help=f"comma-separated subset of {METHODS}")
    ap.add_argument("--device", default=None, help="device of torch-raw / exact-torch (default: cuda if available)")
    ap.add_argument("--max-chunk-mib", type=float, default=256.0, help="max_chunk_bytes of exact_search, in MiB")
    ap.add_argument("--profile", action="store_true", help="print a cProfile summary of each exact_search call")
    ap.add_argument("--out", default=None, help="write the results as JSON to this path")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.worker:
        print(json.dumps(worker(args)))
        return 0

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    for m in methods:
        if m not in METHODS:
            ap.error(f"unknown method {m!r}; choose from {', '.join(METHODS)}")
    passthru = [a for a in (argv if argv is not None else sys.argv[1:])]
    # rounds interleave the methods (one fresh subprocess each, one timed call) so that load from
    # other processes on the machine affects all methods alike; the best round is reported
    runs: dict[str, list[dict[str, Any]]] = {m: [] for m in methods}
    for _ in range(args.repeats):
        for m in methods:
            cmd = [sys.executable, os.path.abspath(__file__), *passthru, "--worker", m, "--repeats", "1"]
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if args.profile and proc.stderr:
                print(f"--- profile of {m}:\n{proc.stderr}", file=sys.stderr)
            if proc.returncode != 0:
                print(proc.stderr, file=sys.stderr)
                return proc.returncode
            runs[m].append(json.loads(proc.stdout.strip().splitlines()[-1]))
    rows = []
    for m in methods:
        best = min(runs[m], key=lambda r: r["best_s"])
        best = dict(best)
        best["times_s"] = [r["best_s"] for r in runs[m]]
        best["peak_rss_mib"] = max(r["peak_rss_mib"] for r in runs[m])
        best["extra_peak_mib"] = max(r["extra_peak_mib"] for r in runs[m])
        if "search_only_best_s" in best:
            best["search_only_best_s"] = min(r["search_only_best_s"] for r in runs[m])
        rows.append(best)

    raw_faiss = next((r for r in rows if r["method"] == "faiss-raw"), None)
    raw_torch = next((r for r in rows if r["method"] == "torch-raw"), None)
    for r in rows:
        r["throughput_ratio_vs_raw_faiss"] = (raw_faiss["best_s"] / r["best_s"]) if raw_faiss else None
        r["throughput_ratio_vs_raw_faiss_search_only"] = (
            (raw_faiss["search_only_best_s"] / r["best_s"]) if raw_faiss else None
        )
        r["throughput_ratio_vs_raw_torch"] = (raw_torch["best_s"] / r["best_s"]) if raw_torch else None
    hdr = (
        f"{'method':<12} {'best s':>8} {'q/s':>9} {'vs faiss':>8} {'vs search':>9} {'vs torch':>8} "
        f"{'peak RSS MiB':>13} {'+MiB':>7}  notes"
    )
    print(
        f"N={args.n} D={args.d} Q={args.q} depth={args.depth} noise={args.noise} outside_frac={args.outside_frac} "
        f"extra_judged={args.extra_judged}"
    )
    print(hdr)
    print("-" * len(hdr))
    for r in rows:
        notes = []
        if "search_only_best_s" in r:
            notes.append(f"search only {r['search_only_best_s']:.3f}s")
        if "device" in r:
            notes.append(f"device {r['device']}")
        if r.get("backend") and r["method"] == "exact-auto":
            notes.append(f"ran {r['backend']}")
        if "judged_in_top_depth" in r:
            notes.append(f"judged in top-{args.depth}: {r['judged_in_top_depth']:.0%}")
        rf, rt = r["throughput_ratio_vs_raw_faiss"], r["throughput_ratio_vs_raw_torch"]
        rs = r["throughput_ratio_vs_raw_faiss_search_only"]
        print(
            f"{r['method']:<12} {r['best_s']:>8.3f} {r['queries_per_s']:>9.0f} "
            f"{(f'{rf:.2f}' if rf else '-'):>8} {(f'{rs:.2f}' if rs else '-'):>9} {(f'{rt:.2f}' if rt else '-'):>8} "
            f"{r['peak_rss_mib']:>13.0f} {r['extra_peak_mib']:>7.0f}  {'; '.join(notes)}"
        )
    if args.out:
        payload = {"config": {k: v for k, v in vars(args).items() if k not in ("worker", "out")}, "results": rows}
        tmp = args.out + ".tmp"
        with open(tmp, "w") as fh:
            json.dump(payload, fh, indent=2)
        os.replace(tmp, args.out)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
