"""The speed issue's goals, one entry each: run the benchmark behind every figure, print a table.

Each entry runs an existing benchmark script as a subprocess (with a timeout; its JSON goes to a
temporary directory), reads the figure from that JSON and judges it against the goal. An entry that
fails is recorded (status ``error``) and the others still run.

==========  =============================================================================  ================
id (--only) goal                                                                           source
==========  =============================================================================  ================
overhead    harness overhead <= 5 % of a cold ``evaluate`` (tiny torch encoder)             bench_evaluate.py
search      CPU exact search >= 0.9x raw faiss ``IndexFlatIP`` (its ``search`` call alone)  bench_search.py
gpu_search  GPU: 1M x 512 x 10k queries, top-100, within 2x of raw matmul + topk            gpu_check.py
encode      GPU encoding >= 80 % of the raw forward rate (ViT-B/32-sized), as the toolkit   bench_encode.py (GPU),
            runs it on a GPU (calls started ahead, one call, texts), over 32,768 images    bench_feed.py (CPU)
            (MRBench-Synth's pool cycled) and 65,536 texts; its own 4,096 reported
memory      peak memory: embeddings + one chunk (extra RSS during the call <= 256 MiB)      bench_search.py
identity    identical results on the CPU and GPU backends                                   gpu_check.py
==========  =============================================================================  ================

On a machine without a GPU (or with ``--device cpu``), ``gpu_search`` is skipped; ``encode`` measures how
much of a simulated ViT-B/32-on-H100 forward the host's input pipeline sustains (``bench_feed.py``)
and ``identity`` compares the faiss and torch backends and a streamed run on the CPU
(``--identity-check``, :func:`mrbench.retrieval.search.exact_search` on a small problem with planted
ties). These CPU stand-ins do not measure the GPU goal: their ``met`` is ``null`` and their own
verdict is ``proxy_met``. With ``--quick`` (smoke sizes, where the goals do not apply) nothing is
judged: every ``met`` is ``null`` and the verdict at those sizes is ``quick_met``.

    python benchmarks/goals.py --out benchmarks/results/goals_cpu.json          # ~2 min on 2 cores
    python benchmarks/goals.py --quick --only search,identity                   # seconds
    PYTHONPATH=. python benchmarks/goals.py --device cuda --out $OUT/goals_gpu.json
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

CHUNK_BUDGET_MIB = 256.0  # exact_search's default max_chunk_bytes on the CPU (bench_search --max-chunk-mib)


class Skipped(Exception):
    """The entry cannot run here (e.g. it needs a GPU); ``command`` is what would run where it can."""

    def __init__(self, reason: str, command: str | None = None) -> None:
        super().__init__(reason)
        self.command = command


@dataclass
class Ctx:
    args: argparse.Namespace
    tmp: Path
    device: str

    @property
    def cuda(self) -> bool:
        return self.device.startswith("cuda")


@dataclass
class Entry:
    id: str
    goal: str
    target: str
    fn: Callable[[Ctx], dict[str, Any]]


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def _show(cmd: list[str], tmp: Path) -> str:
    """The command as a user would type it from the repository root (temp dir shown as $TMP)."""
    parts = ["python" if c == sys.executable else c.replace(str(REPO) + os.sep, "") for c in cmd]
    return shlex.join(parts).replace(str(tmp), "$TMP")


def _run(cmd: list[str], ctx: Ctx, timeout: float, out: Path | None) -> dict[str, Any]:
    """Run ``cmd`` from the repository root; return its JSON output (``out``) or raise with its stderr."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    if not ctx.cuda:
        env["CUDA_VISIBLE_DEVICES"] = ""  # --device cpu: no script may pick up a GPU on its own
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as e:
        raise RuntimeError(f"timed out after {timeout:.0f} s: {_show(cmd, ctx.tmp)}") from e
    if ctx.args.verbose:
        print(proc.stdout[-4000:], proc.stderr[-4000:], sep="\n", file=sys.stderr)
    if proc.returncode != 0:
        raise RuntimeError(f"exit status {proc.returncode} after {time.perf_counter() - t0:.0f} s: "
                           f"{(proc.stderr or proc.stdout)[-1500:]}")
    if out is None:
        return {}
    if not out.exists():
        raise RuntimeError(f"no JSON written to {out}; stdout tail: {proc.stdout[-800:]}")
    return json.loads(out.read_text())


def _script(name: str) -> str:
    return str(HERE / name)


# --------------------------------------------------------------------------------------------
# entries
# --------------------------------------------------------------------------------------------


def entry_overhead(ctx: Ctx) -> dict[str, Any]:
    out = ctx.tmp / "evaluate.json"
    cmd = [sys.executable, _script("bench_evaluate.py"), "--encoder", "benchmarks/tiny_torch_encoder.py:TinyTorchEncoder"]
    if ctx.args.quick:
        cmd += ["--benchmark", "mrbench-synth-tiny"]
    cmd += ["--out", str(out)]
    data = _run(cmd, ctx, 300, out)
    t = data["cold"]["timings"]
    share = t["harness"] / t["wall"]
    init = t.get("encoder_init", 0.0)  # building the encoder: mostly its own `import torch`
    rest = (t["harness"] - init) / max(1e-9, t["wall"] - init)
    return {
        "measured": f"{share:.1%} (harness {t['harness']:.2f} s of a {t['wall']:.2f} s cold wall; model "
                    f"{t['encoder_forward']:.2f} s); {rest:.1%} without building the encoder ({init:.2f} s)",
        "met": share <= 0.05,
        "value": share,
        "details": {"benchmark": data["benchmark"], "cold_timings_s": t, "warm_wall_s": data["warm"]["timings"]["wall"],
                    "warm_speedup": data["warm_speedup"], "build_s": data["build_seconds"],
                    "share_without_encoder_init": rest,
                    "items_encoded": data["cold"]["cache"].get("encoded")},
        "command": _show(cmd, ctx.tmp),
    }


def _search_sizes(ctx: Ctx, big: bool = False) -> list[str]:
    if ctx.args.quick:
        return ["--n", "5000", "--d", "64", "--q", "100", "--repeats", "1"]
    return ["--n", "1000000" if big else "100000", "--d", "512", "--q", "1000"]


def entry_search(ctx: Ctx) -> dict[str, Any]:
    out = ctx.tmp / "search.json"
    sizes = _search_sizes(ctx)
    if not ctx.args.quick:
        sizes += ["--repeats", "3"]
    cmd = [sys.executable, _script("bench_search.py"), *sizes, "--methods", "faiss-raw,exact-faiss", "--out", str(out)]
    data = _run(cmd, ctx, 300, out)
    rows = {r["method"]: r for r in data["results"]}
    ex, raw = rows["exact-faiss"], rows["faiss-raw"]
    r_search = ex["throughput_ratio_vs_raw_faiss_search_only"]
    r_add = ex["throughput_ratio_vs_raw_faiss"]
    cfg = data["config"]
    return {
        "measured": f"{r_search:.2f}x search alone; {r_add:.2f}x add+search "
                    f"({cfg['n']:,} x {cfg['d']}, {cfg['q']:,} queries)",
        "met": r_search >= 0.9,
        "value": r_search,
        "details": {"config": cfg, "exact_faiss_best_s": ex["best_s"], "raw_add_search_best_s": raw["best_s"],
                    "raw_search_only_best_s": raw["search_only_best_s"], "ratio_vs_search_only": r_search,
                    "ratio_vs_add_search": r_add, "exact_times_s": ex["times_s"], "raw_times_s": raw["times_s"],
                    "threads": {"faiss": ex.get("faiss_threads"), "torch": ex.get("torch_threads")}},
        "command": _show(cmd, ctx.tmp),
    }


def entry_gpu_search(ctx: Ctx) -> dict[str, Any]:
    out = ctx.tmp / "gpu_exact.json"
    cmd = [sys.executable, _script("gpu_check.py"), "--sections", "env,exact", "--device", "cuda"]
    cmd += ["--quick"] if ctx.args.quick else ["--budget-s", "400"]
    cmd += ["--out", str(out)]
    if not ctx.cuda:
        raise Skipped("no GPU" if not ctx.args.cuda_available else "--device cpu", _show(cmd, ctx.tmp))
    data = _run(cmd, ctx, 540, out)
    sec = data["sections"]["exact_vs_raw"]
    if sec.get("status") != "ok":
        raise RuntimeError(f"gpu_check exact_vs_raw: {sec.get('status')}: {sec.get('reason') or sec.get('error')}")
    s = sec["summary"]
    ratio = s["ratio_exact_over_raw_device"]
    gpu = data["sections"].get("env", {}).get("device_name")
    return {
        "measured": f"{ratio:.2f}x raw ({s['exact_s']:.3f} s vs {s['raw_device_s']:.3f} s; "
                    f"{sec['n']:,} x {sec['d']}, {sec['q']:,} queries, {gpu})",
        "met": ratio <= 2.0,
        "value": ratio,
        "details": {"gpu": gpu, "n": sec["n"], "d": sec["d"], "q": sec["q"], "summary": s,
                    "peak_extra_device_mib": sec.get("exact", {}).get("peak_extra_device_mib"),
                    "variants_identical": s.get("all_variants_identical")},
        "command": _show(cmd, ctx.tmp),
    }


SEQUENTIAL_ROW = "images (warm pixel cache)"
"""bench_encode's row of the per-task calls one after the other (not judged, see entry_encode)."""
JUDGED_ENCODE_ROWS = ("images (warm pixel cache, ahead)", "images (warm pixel cache, one call)", "texts")
"""bench_encode's rows the GPU encoding goal judges (see entry_encode); a missing one fails the goal."""


LARGE_POOL = (32768, 65536)
"""(images, texts) of the run the GPU encoding goal judges: MRBench-Synth's 4,205 candidate images cycled
(bench_encode.pool_of_images) and its t2i texts repeated, ~1.7 s and ~2.6 s of ViT-B/32 forward on an
H100, so the rate is timed over seconds rather than over each call's start-up."""
SMALL_POOL = (4096, 16384)
"""(images, texts) of the run reported beside it: MRBench-Synth's own pool, ~0.2 s of forward, whose
share is bound by each call's fixed start-up (see entry_encode)."""


def entry_encode(ctx: Ctx) -> dict[str, Any]:
    if not ctx.cuda:
        return _encode_feed_proxy(ctx)
    runs: dict[str, tuple[dict[str, Any], list[str], int]] = {}
    small_error = None
    for name, (n_img, n_txt), decode in (("large", LARGE_POOL, "cache"), ("small", SMALL_POOL, "auto,cache")):
        if ctx.args.quick:
            n_img, n_txt = n_img // 8, n_txt // 8
        out = ctx.tmp / f"encode_{name}.json"
        cmd = [sys.executable, _script("bench_encode.py"), "--device", ctx.device, "--families", "openclip",
               "--decode", decode, "--one-call", "--n-images", str(n_img), "--n-texts", str(n_txt),
               "--batch", "128" if ctx.args.quick else "256", "--workers", str(min(16, os.cpu_count() or 1)),
               "--out", str(out)]
        try:
            runs[name] = (_run(cmd, ctx, 540, out), cmd, n_img)
        except RuntimeError as e:
            if name == "large":
                raise
            small_error = str(e)  # (reported only: its failure is shown, the judged run stands)
            runs[name] = ({"rows": []}, cmd, n_img)
    (data, cmd, n_large), (small, small_cmd, n_small) = runs["large"], runs["small"]
    rows = data["rows"]
    shares = {r["items"]: r["ratio"] for r in rows}
    # judged: the paths that can reach the model's rate, as the toolkit runs them on a GPU — texts, and
    # images from a warm pixel cache with each call started ahead (evaluate, mrbench encode) or in one
    # call — over a pool large enough that the rate, not each call's fixed start-up, is timed. Reported
    # only: the same paths on MRBench-Synth's own 4,096 images (~0.2 s of forward: tens of ms of
    # start-up per call, the process's first read of the cache, weigh a quarter or more), a first
    # (cold) pass over images, bound by JPEG/PNG decoding on the host, and the calls one after the
    # other, a pattern no GPU path of the toolkit uses (each call's start-up leaves the device idle)
    judged = {k: shares[k] for k in JUDGED_ENCODE_ROWS if k in shares}
    missing = [k for k in JUDGED_ENCODE_ROWS if k not in shares]
    worst = min(judged.values()) if judged else 0.0
    steady = {r["items"]: r["steady_ratio"] for r in rows if "steady_ratio" in r}

    def listed(rows_: list[dict[str, Any]], judge: bool) -> str:
        return "; ".join(f"{r['items'].replace(' decode', '')} {r['ratio']:.2f}"
                         + ("" if judge and r["items"] in judged else " (not judged)")
                         + (f" [{steady[r['items']]:.2f} after start-up]"
                            if judge and r["items"] in judged and r["items"] in steady else "")
                         for r in rows_)

    measured = f"{n_large:,} images: {listed(rows, True)}"
    if missing:
        measured += f"; missing rows: {', '.join(missing)}"
    measured += f" | {n_small:,} images, reported: " + (listed(small["rows"], False) if small_error is None
                                                          else "failed (details.small_pool_error)")
    return {
        "value": worst,
        "measured": f"{measured} ({data['machine'].get('gpu')})",
        "met": worst >= 0.8 and not missing,
        "details": {"rows": rows, "small_pool_rows": small["rows"], "small_pool_error": small_error,
                    "machine": data.get("machine"),
                    "judged": sorted(judged), "pools": {"judged": n_large, "reported": n_small},
                    "note_pools": "judged over MRBench-Synth's candidate images cycled to the larger pool (a rate "
                                  "over seconds of forward; the same 4,205 cached images re-read, 0.6 GB where "
                                  "distinct ones would be 4.9 GB); the same paths over its own pool are reported: "
                                  "~0.2 s of forward, so each call's fixed start-up and the process's first read "
                                  "of the cache weigh in",
                    "note_cold_decode": "images decoded on this pass are bound by host decoding (Pillow about "
                                        "150 images/s per core); reported, not judged",
                    "note_sequential": f"{SEQUENTIAL_ROW}: the per-task calls one after the other, a pattern "
                                       "no GPU path of the toolkit uses (evaluate and mrbench encode start each "
                                       "call while the one before runs); reported, not judged",
                    "note_steady": "[x after start-up]: the rate with each call's start-up (hashes, cache "
                                   "lookups, first batch read and copied) left out; informative, not judged"},
        "command": f"{_show(cmd, ctx.tmp)}; reported: {_show(small_cmd, ctx.tmp)}",
    }


def _encode_feed_proxy(ctx: Ctx) -> dict[str, Any]:
    """Without a GPU: how much of a simulated ViT-B/32-on-H100 forward (19.3k images/s) this host's
    input pipeline sustains (bench_feed.py), judged on the warm pixel cache read into staging
    buffers as for an encoder on a GPU, with the calls started ahead as ``evaluate`` runs them."""
    out = ctx.tmp / "feed.json"
    cmd = [sys.executable, _script("bench_feed.py"), "--n-images", "512" if ctx.args.quick else "4096",
           "--out", str(out)]
    data = _run(cmd, ctx, 540, out)
    rows = {r["path"]: r for r in data["rows"]}
    warm = rows["pixel cache, warm, staged, ahead"]["share"]
    measured = "; ".join(f"{k} {r['share']:.2f}" for k, r in rows.items())
    return {
        "value": warm,
        "measured": f"{measured} of a simulated {data['forward_rate']:,.0f} images/s forward "
                    f"({data['machine']['cpu_count']} cores; goal is defined on a GPU)",
        "met": None, "proxy_met": warm >= 0.8, "status": "cpu-proxy",
        "details": {"rows": data["rows"], "machine": data["machine"],
                    "note": "no GPU: the encoder sleeps as long as ViT-B/32 on an H100 would take; the share is "
                            "what the host's input pipeline sustains (met: null, see proxy_met)"},
        "command": _show(cmd, ctx.tmp),
    }


def entry_memory(ctx: Ctx) -> dict[str, Any]:
    out = ctx.tmp / "memory.json"
    big = ctx.args.big and not ctx.args.quick
    sizes = _search_sizes(ctx, big=big)
    if not ctx.args.quick:
        sizes += ["--repeats", "1"]
    cmd = [sys.executable, _script("bench_search.py"), *sizes, "--methods", "exact-faiss,exact-torch",
           "--max-chunk-mib", f"{CHUNK_BUDGET_MIB:g}", "--device", ctx.device, "--out", str(out)]
    data = _run(cmd, ctx, 900 if big else 300, out)
    rows = {r["method"]: r for r in data["results"]}
    extra = {m: r["extra_peak_mib"] for m, r in rows.items()}
    cfg = data["config"]
    pool_mib = cfg["n"] * cfg["d"] * 4 / 2**20
    where = {m: r.get("device", "cpu") for m, r in rows.items()}
    measured = ", ".join(f"{m.split('-')[1]} ({where[m]}) +{v:.0f} MiB" for m, v in extra.items())
    return {
        "measured": f"{measured} ({cfg['n']:,} x {cfg['d']}, pool {pool_mib:.0f} MiB)",
        "met": all(v <= CHUNK_BUDGET_MIB for v in extra.values()),
        "value": max(extra.values()),
        "details": {"config": cfg, "chunk_budget_mib": CHUNK_BUDGET_MIB, "pool_mib": pool_mib,
                    "extra_peak_mib": extra, "peak_rss_mib": {m: r["peak_rss_mib"] for m, r in rows.items()},
                    "data_rss_mib": {m: r["data_rss_mib"] for m, r in rows.items()},
                    "over_budget_mib": {m: round(v - CHUNK_BUDGET_MIB, 1) for m, v in extra.items() if v > CHUNK_BUDGET_MIB},
                    "device": where,
                    "note": "host RSS (VmHWM) during the call minus RSS before it, inputs excluded; "
                            "on a GPU the torch backend's chunk lives in device memory, not measured here"},
        "command": _show(cmd, ctx.tmp),
    }


def _identity_sizes(quick: bool) -> list[str]:
    return ["--id-n", "5000", "--id-d", "32", "--id-q", "200"] if quick else ["--id-n", "50000", "--id-d", "128", "--id-q", "1000"]


def entry_identity(ctx: Ctx) -> dict[str, Any]:
    if ctx.cuda:
        out = ctx.tmp / "gpu_identity.json"
        cmd = [sys.executable, _script("gpu_check.py"), "--sections", "env,identity", "--device", ctx.device]
        cmd += ["--quick"] if ctx.args.quick else []
        cmd += ["--out", str(out)]
        data = _run(cmd, ctx, 400, out)
        sec = data["sections"]["cpu_gpu_identity"]
        comps = sec.get("comparisons", {})
        ran = {k: v for k, v in comps.items() if v.get("status") == "ok"}
        if sec.get("status") not in ("ok", "error") or (sec.get("status") == "error" and not ran):
            raise RuntimeError(f"gpu_check cpu_gpu_identity: {sec.get('status')}: {sec.get('reason') or sec.get('error')}")
        mism = {k: v["mismatches"]["total"] for k, v in ran.items()}
        ok = bool(sec.get("cuda_compared")) and all(v == 0 for v in mism.values()) and sec.get("status") == "ok"
        return {
            "measured": ("identical" if ok else "DIFFERENT") + " vs the CPU reference: "
                        + ", ".join(f"{k} {v} mismatching queries" for k, v in mism.items())
                        + f" ({sec['n']:,} x {sec['d']}, {sec['q']:,} queries, planted ties)",
            "met": ok,
            "details": {"n": sec["n"], "d": sec["d"], "q": sec["q"], "planted": sec.get("planted"),
                        "reference": sec.get("reference"), "comparisons": comps, "cuda_compared": sec.get("cuda_compared"),
                        "gpu": data["sections"].get("env", {}).get("device_name")},
            "command": _show(cmd, ctx.tmp),
        }
    out = ctx.tmp / "cpu_identity.json"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--identity-check", *_identity_sizes(ctx.args.quick),
           "--out", str(out)]
    data = _run(cmd, ctx, 300, out)
    comps = data["comparisons"]
    ok = all(v["mismatches"]["total"] == 0 for v in comps.values())
    ref = data["reference"]
    return {
        "measured": ("identical" if ok else "DIFFERENT") + " on the CPU: "
                    + ", ".join(f"{k} {v['mismatches']['total']}" for k, v in comps.items())
                    + f" mismatches vs torch ({data['n']:,} x {data['d']}, {data['q']:,} queries, "
                    f"{ref['queries_with_ties']} with ties); CPU vs GPU needs a GPU",
        "met": None,
        "proxy_met": ok,
        "status": "cpu-proxy",
        "details": {**data, "note": "CPU stand-in (faiss vs torch vs streamed torch); the goal compares CPU and GPU "
                                    "backends (met: null, see proxy_met)"},
        "command": _show(cmd, ctx.tmp),
    }


def identity_check(args: argparse.Namespace) -> int:
    """``--identity-check``: exact_search on the CPU, torch reference vs faiss, small chunks, streamed."""
    sys.path.insert(0, str(HERE))
    import numpy as np
    from bench_search import make_data
    from gpu_check import _compare, _plant_ties

    from mrbench.retrieval.search import exact_search

    n, d, q, depth = args.id_n, args.id_d, args.id_q, 100
    qn, cn, judged = make_data(n, d, q, 1, 1.0, 0.1, extra_judged=4)
    planted = _plant_ties(qn, cn, judged, depth, 0)

    def run(**kw: Any) -> tuple[Any, float]:
        t0 = time.perf_counter()
        r = exact_search(qn, cn, judged, depth=depth, **kw)
        return r, time.perf_counter() - t0

    exact_search(qn[:4], cn[:256], [{0: 1}] * 4, depth=4, backend="torch", device="cpu")  # warm-up
    ref, t_ref = run(backend="torch", device="cpu")
    out: dict[str, Any] = {
        "n": n, "d": d, "q": q, "depth": depth, "planted": planted,
        "judged_pairs": sum(len(j) for j in judged),
        "reference": {"backend": "torch", "device": ref.device, "time_s": t_ref,
                      "queries_with_ties": int((ref.n_ties > 0).sum()), "max_n_ties": int(ref.n_ties.max()),
                      "top_lists_with_tied_scores": int((np.diff(ref.topk_scores, axis=1) == 0).any(axis=1).sum())},
        "comparisons": {},
    }
    variants: dict[str, dict[str, Any]] = {
        "faiss": {"backend": "faiss"},
        "torch_small_chunks": {"backend": "torch", "device": "cpu", "max_chunk_bytes": 4 * n * 7},  # 7 rows a chunk
        "torch_stream": {"backend": "torch", "device": "cpu", "stream": True, "stream_block_rows": max(depth, n // 8)},
    }
    for name, kw in variants.items():
        r, t = run(**kw)
        out["comparisons"][name] = {"options": dict(kw), "backend": r.backend, "device": r.device,
                                    "time_s": t, "mismatches": _compare(ref, r)}
    Path(args.out).write_text(json.dumps(out, indent=2, default=str) + "\n")
    print(json.dumps({k: v["mismatches"]["total"] for k, v in out["comparisons"].items()}))
    return 0


ENTRIES = [
    Entry("overhead", "harness overhead (all but the model forward) of a cold evaluate, tiny encoder",
          "<= 5 % of cold wall", entry_overhead),
    Entry("search", "exact search vs raw faiss IndexFlatIP on the CPU",
          ">= 0.9x its search call", entry_search),
    Entry("gpu_search", "GPU: 1M x 512, 10k queries, top-100 vs raw matmul + topk",
          "<= 2x raw time", entry_gpu_search),
    Entry("encode", "GPU encoding rate vs the raw forward, ViT-B/32",
          ">= 0.8 of raw rate (GPU)", entry_encode),
    Entry("memory", "peak memory of exact search: embeddings + one chunk",
          f"extra RSS <= {CHUNK_BUDGET_MIB:.0f} MiB chunk", entry_memory),
    Entry("identity", "identical results on the CPU and GPU backends",
          "bitwise identical", entry_identity),
]


# --------------------------------------------------------------------------------------------
# machine, table, main
# --------------------------------------------------------------------------------------------


def machine_info(device: str) -> dict[str, Any]:
    info: dict[str, Any] = {"cpu_model": None, "cores": os.cpu_count(), "memory_gib": None, "gpu": None,
                            "platform": platform.platform(), "python": platform.python_version()}
    try:
        with open("/proc/cpuinfo") as fh:
            info["cpu_model"] = next((ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")), None)
    except OSError:
        info["cpu_model"] = platform.processor() or None
    try:
        with open("/proc/meminfo") as fh:
            kb = next(int(ln.split()[1]) for ln in fh if ln.startswith("MemTotal:"))
        info["memory_gib"] = round(kb / 2**20, 1)
    except (OSError, StopIteration):
        pass
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            p = torch.cuda.get_device_properties(0)
            info["gpu"] = torch.cuda.get_device_name(0)
            info["gpu_memory_gib"] = round(p.total_memory / 2**30, 1)
            info["cuda"] = torch.version.cuda
    except ImportError:
        info["torch"] = None
    try:
        import faiss

        info["faiss"] = faiss.__version__
    except ImportError:
        info["faiss"] = None
    try:
        import numpy

        info["numpy"] = numpy.__version__
    except ImportError:
        pass
    info["device"] = device
    return info


def _met_text(e: dict[str, Any]) -> str:
    if e["status"] == "error":
        return "error"
    if e["status"] == "skipped":
        return "skipped"
    if "quick_met" in e:
        return "n/a (--quick)"
    if e["met"] is None:
        return "n/a (CPU proxy: " + ("yes" if e.get("proxy_met") else "no") + ")"
    return "yes" if e["met"] else "no"


def table(entries: list[dict[str, Any]]) -> str:
    lines = ["| goal | target | measured | met? | command |", "|---|---|---|---|---|"]
    for e in entries:
        cmd = f"`{e['command']}`" if e.get("command") else ""
        if not cmd and e["details"].get("command_on_a_gpu"):
            cmd = f"on a GPU: `{e['details']['command_on_a_gpu']}`"
        cells = [f"{e['id']}: {e['goal']}", e["target"], str(e["measured"]).replace("|", "/"), _met_text(e), cmd]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 epilog="entries: " + ", ".join(e.id for e in ENTRIES))
    ap.add_argument("--only", default=None, help="comma-separated entry ids to run (default: all)")
    ap.add_argument("--quick", action="store_true", help="smallest sizes (a smoke run, for the tests)")
    ap.add_argument("--big", action="store_true", help="run the memory entry at 1M candidates (default 100k)")
    ap.add_argument("--device", default=None, choices=["cpu", "cuda"], help="default: cuda if available")
    ap.add_argument("--out", default=None, help="write the results as JSON to this path")
    ap.add_argument("--verbose", action="store_true", help="print each script's output tail to stderr")
    ap.add_argument("--identity-check", action="store_true",
                    help="(used by the identity entry) run the CPU backend-identity check alone and write --out")
    ap.add_argument("--id-n", type=int, default=50_000)
    ap.add_argument("--id-d", type=int, default=128)
    ap.add_argument("--id-q", type=int, default=1000)
    args = ap.parse_args(argv)
    if args.identity_check:
        if not args.out:
            ap.error("--identity-check needs --out")
        return identity_check(args)

    ids = [e.id for e in ENTRIES]
    wanted = ids if not args.only else [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = [w for w in wanted if w not in ids]
    if unknown:
        ap.error(f"unknown entry id(s) {unknown}; choose from {', '.join(ids)}")
    try:
        import torch

        args.cuda_available = bool(torch.cuda.is_available())
    except ImportError:
        args.cuda_available = False
    device = args.device or ("cuda" if args.cuda_available else "cpu")
    if device == "cuda" and not args.cuda_available:
        ap.error("--device cuda, but CUDA is not available")

    t_all = time.perf_counter()
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="mrbench-goals-") as d:
        ctx = Ctx(args=args, tmp=Path(d), device=device)
        for e in ENTRIES:
            if e.id not in wanted:
                continue
            rec: dict[str, Any] = {"id": e.id, "goal": e.goal, "target": e.target, "measured": None, "met": None,
                                   "status": "ok", "details": {}, "command": None}
            print(f"[{time.perf_counter() - t_all:6.1f}s] {e.id} ...", file=sys.stderr, flush=True)
            t0 = time.perf_counter()
            try:
                rec.update(e.fn(ctx))
            except Skipped as s:
                rec.update(status="skipped", measured=f"skipped: {s}", met=None)
                rec["details"] = {"reason": str(s), "command_on_a_gpu": s.command}
            except Exception as exc:  # noqa: BLE001 - recorded; the other entries still run
                rec.update(status="error", measured=f"error: {type(exc).__name__}: {str(exc)[:300]}", met=None)
                rec["details"] = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()[-3000:]}
            if args.quick and rec["status"] == "ok":  # smoke sizes: the goals are about full sizes
                rec["quick_met"] = rec["met"] if rec["met"] is not None else rec.get("proxy_met")
                rec["met"] = None
            rec["elapsed_s"] = round(time.perf_counter() - t0, 2)
            verdict = "" if rec["status"] in ("skipped", "error") else f"{_met_text(rec)}: "
            print(f"[{time.perf_counter() - t_all:6.1f}s] {e.id} ({rec['elapsed_s']:.0f} s): {verdict}{rec['measured']}",
                  file=sys.stderr, flush=True)
            results.append(rec)
    elapsed = time.perf_counter() - t_all
    print(table(results))
    print(f"\n{len(results)} entries in {elapsed:.0f} s on {device}")
    if args.out:
        payload = {
            "machine": machine_info(device),
            "run": {"argv": sys.argv[1:] if argv is None else argv, "quick": args.quick, "big": args.big,
                    "device": device, "elapsed_s": round(elapsed, 1),
                    "date_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")},
            "entries": results,
        }
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_text(json.dumps(payload, indent=2, default=str) + "\n")
        os.replace(tmp, out)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
