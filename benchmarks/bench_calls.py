"""Warm pixel-cache image encoding in the three call patterns, with where each call's time went.

open_clip ViT-B/32 (random weights) encodes the same MRBench-Synth images from a warm pixel cache
(filled, then read once per task, timed and reported on its own as this process's first read): in
per-task calls one after the other (``pertask``), in per-task calls each started while the one
before runs, as ``evaluate`` does for an encoder on a GPU (``ahead``), and in one call
(``onecall``); and ``--n-texts`` t2i query texts in one call (``texts``, against the bare text tower on
ready token ids, as ``bench_encode.py`` compares them). Every timed call runs as ``evaluate`` runs it,
with the objects alive before it frozen out of the cyclic collector's passes. Each run also records
the pinned host blocks torch's caching allocator had to create during it, and the time that took
(``torch.cuda.host_memory_stats``; zeros without CUDA). Each run prints its share of the bare forward's rate
(eager, the same batch replayed) and its :class:`~mrbench.encoders.harness.EncodeStats`: how long the
model waited for inputs, the preparing thread for reads, the staging, the encoder calls, and the
calls' start-up. ``--variant`` (repeatable) runs every pattern once per variant in each round,
interleaved, each a comma-separated list of settings of :mod:`mrbench.encoders.harness` constants
(``CACHE_READ_SLICE``, the fewest cached images a reader task reads; ``EARLY_BATCHES``, the
batches a call prepares before hashing the rest of its items; ``IN_FLIGHT``, the batches queued on
the device before the oldest is waited for; ``DEFER_FULL_COLLECTIONS``, 0 to let the collector's full
passes run during encode loops); ``--n-images`` past the pool's 4,205 cycles it (a rate over seconds); ``--slices`` is short for variants of
``CACHE_READ_SLICE`` alone; ``--sync-after-fill`` writes the filled cache back to disk before the
first read (is that read slow because of the fill's write-back?). A summary of each variant's median share per pattern ends the output.
Meant for a GPU host (on a CPU the forward dominates).

    PYTHONPATH=. python benchmarks/bench_calls.py --device cuda --rounds 3 --out $OUT/calls.json
    PYTHONPATH=. python benchmarks/bench_calls.py --device cuda --slices 64,32,16
    PYTHONPATH=. python benchmarks/bench_calls.py --device cuda --variant EARLY_BATCHES=0 --variant EARLY_BATCHES=2
    PYTHONPATH=. python benchmarks/bench_calls.py --device cuda --n-images 32768 --n-texts 65536 --modes onecall,texts \
        --variant DEFER_FULL_COLLECTIONS=0 --variant DEFER_FULL_COLLECTIONS=1
"""

from __future__ import annotations

import argparse
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

MODES = ("pertask", "ahead", "onecall", "texts")


def host_allocs() -> tuple[int, float]:
    """``(pinned blocks created, ms spent creating them)`` so far by torch's caching host allocator
    (zeros where it keeps no such statistics)."""
    import torch

    try:
        st = torch.cuda.host_memory_stats()
    except Exception:  # no CUDA, or a torch without these statistics
        return 0, 0.0
    return int(st.get("num_host_alloc", 0)), float(st.get("host_alloc_time.total", 0)) / 1e3


TUNABLE = ("CACHE_READ_SLICE", "EARLY_BATCHES", "IN_FLIGHT", "DEFER_FULL_COLLECTIONS")


def parse_variant(text: str) -> dict[str, int]:
    """``"A=1,B=2"`` -> ``{"A": 1, "B": 2}`` (names from :data:`TUNABLE`, integer values)."""
    out = {}
    for part in filter(None, text.split(",")):
        name, _, value = part.partition("=")
        if name not in TUNABLE or not value.lstrip("-").isdigit():
            raise SystemExit(f"--variant {text!r}: expected NAME=INT[,NAME=INT...] with NAME in {', '.join(TUNABLE)}")
        out[name] = int(value)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default=None, help="default: cuda if available")
    ap.add_argument("--n-images", type=int, default=4096)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--n-texts", type=int, default=16384)
    ap.add_argument("--workers", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--modes", default=",".join(MODES), help=f"comma-separated subset of {MODES}")
    ap.add_argument("--slices", default="", help="CACHE_READ_SLICE values to compare (default: the harness's)")
    ap.add_argument("--variant", action="append", default=[], metavar="NAME=INT[,NAME=INT...]",
                    help=f"harness settings to compare, interleaved (repeatable; names: {', '.join(TUNABLE)})")
    ap.add_argument("--sync-after-fill", action="store_true",
                    help="write the filled pixel cache back to disk (os.sync) before the first read: is that read "
                         "slower because the fill's dirty pages are still being written back?")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    modes = [m for m in args.modes.split(",") if m]
    if any(m not in MODES for m in modes):
        ap.error(f"--modes: expected a subset of {MODES}")

    import torch

    import mrbench
    from mrbench.encoders import harness
    from mrbench.encoders.harness import EncodeStats, encode_groups, encode_items, load_rgb
    from mrbench.encoders.pixel_cache import PixelCache
    from mrbench.encoders.registry import get_encoder
    from bench_encode import pool_of_images
    from bench_util import bare_rate, device_setup

    device, _, sync, gpu = device_setup(args.device)
    variants = [parse_variant(v) for v in args.variant]
    variants += [{"CACHE_READ_SLICE": int(x)} for x in args.slices.split(",") if x]
    variants = variants or [{}]
    bench = mrbench.load_benchmark("mrbench-synth")
    enc = get_encoder("openclip:ViT-B-32", random_init=True, device=device, batch_size=args.batch)
    cands = pool_of_images(bench, args.n_images)
    by_task: dict[str, list] = {}
    for t, c in cands:
        by_task.setdefault(t.name, []).append(c)
    groups = [(bench.task(name), items) for name, items in by_task.items()]
    every = [c for _, c in cands]

    sample = every[: args.batch]
    pix = torch.stack([enc.prepare_image(load_rgb(bench.image_path(c.image), c.id)) for c in sample]).to(device)
    raw_rate = bare_rate(enc.encode_images, pix, len(sample), max(1, len(every) // len(sample)), enc, sync)
    print(f"{gpu}: bare forward {raw_rate:,.0f} images/s", flush=True)
    t2i = bench.task("t2i")
    texts = (t2i.queries * (1 + args.n_texts // max(1, len(t2i.queries))))[: args.n_texts]
    text_rate = 0.0
    if "texts" in modes:
        tokens = enc.tokenizer([q.text for q in texts[: args.batch]]).to(device)
        text_rate = bare_rate(enc.encode_tokens, tokens, args.batch, max(1, len(texts) // args.batch), enc, sync)
        print(f"{gpu}: bare text tower {text_rate:,.0f} texts/s", flush=True)
        encode_items(enc, texts[: 2 * args.batch], role="query", task=t2i, bench=bench, batch_size=args.batch,
                     num_workers=args.workers)  # tokenising workers started

    runs = []
    saved = {name: getattr(harness, name) for name in TUNABLE}
    from mrbench.data.io import gc_frozen

    # as evaluate runs its encode calls: the objects alive before them kept out of the cyclic
    # collector's passes (refrozen before each timed call)
    with tempfile.TemporaryDirectory() as d, gc_frozen() as refreeze:
        kw = dict(batch_size=args.batch, num_workers=args.workers, pixel_cache=PixelCache(d))

        def timed(r: int, label: str, mode: str) -> None:
            """Run one call pattern (gc refrozen, the device synchronised), record and print its row."""
            refreeze()
            st = EncodeStats()
            sync()
            pinned0 = host_allocs()
            t0 = time.perf_counter()
            if mode == "texts":
                encode_items(enc, texts, role="query", task=t2i, bench=bench, batch_size=args.batch,
                             num_workers=args.workers, stats=st)
            elif mode == "onecall":
                encode_items(enc, every, role="candidate", task=groups[0][0], bench=bench, stats=st, **kw)
            else:
                encode_groups(enc, groups, role="candidate", bench=bench, ahead=mode == "ahead", stats=st, **kw)
            sync()
            wall = time.perf_counter() - t0
            pinned = [round(a - b, 3) for a, b in zip(host_allocs(), pinned0)]
            n_items, rate = (len(texts), text_rate) if mode == "texts" else (len(every), raw_rate)
            row = {"round": r, "variant": label, "slice": harness.CACHE_READ_SLICE, "mode": mode,
                   "wall_s": round(wall, 4), "share": round(n_items / wall / rate, 3),
                   "pinned_blocks_created": pinned[0], "pinned_create_ms": pinned[1],
                   **{k: round(v, 4) if isinstance(v, float) else v for k, v in st.to_dict().items()}}
            runs.append(row)
            print(f"{label} {mode:<8} wall {wall * 1e3:6.0f} ms  share {row['share']:.3f}  "
                  f"model waited {st.input_wait_seconds:.3f} s, reads {st.read_wait_seconds:.3f} s, "
                  f"staging {st.stage_seconds:.3f} s, encoder calls {st.encode_seconds:.3f} s, "
                  f"start-up {st.startup_seconds:.3f} s, gc {st.gc_seconds:.3f} s, "
                  f"pinned blocks created {pinned[0]} ({pinned[1]:.1f} ms)", flush=True)

        encode_groups(enc, groups, role="candidate", bench=bench, ahead=False, **kw)  # fills the cache
        sync_s = None
        if args.sync_after_fill:
            t0 = time.perf_counter()
            os.sync()
            sync_s = time.perf_counter() - t0
            print(f"os.sync after the fill: {sync_s:.2f} s", flush=True)
        # the first read in this process, per task (shard headers and layouts parsed, as in any new
        # process that reads a warm cache): reported as its own row (round -1), before the rounds
        timed(-1, "first read", "pertask")
        try:
            for r in range(args.rounds):
                for settings in variants:
                    for name, value in {**saved, **settings}.items():
                        setattr(harness, name, value)
                    label = ",".join(f"{k}={v}" for k, v in settings.items()) or "defaults"
                    for mode in modes:
                        timed(r, label, mode)
        finally:
            for name, value in saved.items():
                setattr(harness, name, value)
    print("median share of the bare forward (runs):")
    for label in dict.fromkeys(r["variant"] for r in runs if r["round"] >= 0):
        cells = []
        for mode in modes:
            got = [r for r in runs if r["variant"] == label and r["mode"] == mode and r["round"] >= 0]
            cells.append(f"{mode} {statistics.median(r['share'] for r in got):.3f} "
                         f"(start-up {statistics.median(r['startup_seconds'] for r in got) * 1e3:.0f} ms, {len(got)})")
        print(f"  {label}: " + "; ".join(cells))
    if args.out:
        out = {"device": gpu, "raw_per_s": round(raw_rate, 1), "raw_texts_per_s": round(text_rate, 1), "images": len(every),
               "texts": len(texts), "batch": args.batch, "sync_after_fill_s": sync_s,
               "workers": args.workers, "machine": {"platform": platform.platform(), "torch": torch.__version__},
               "runs": runs}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
