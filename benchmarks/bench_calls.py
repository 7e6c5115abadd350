"""Warm pixel-cache image encoding in the three call patterns, with where each call's time went.

open_clip ViT-B/32 (random weights) encodes the same MRBench-Synth images from a warm pixel cache
(filled, then read once, untimed): in per-task calls one after the other (``pertask``), in per-task
calls each started while the one before runs, as ``evaluate`` does for an encoder on a GPU
(``ahead``), and in one call (``onecall``). Each run prints its share of the bare forward's rate
(eager, the same batch replayed) and its :class:`~mrbench.encoders.harness.EncodeStats`: how long the
model waited for inputs, the preparing thread for reads, the staging, the encoder calls, and the
calls' start-up. ``--slices`` repeats every pattern with other values of
:data:`~mrbench.encoders.harness.CACHE_READ_SLICE` (the fewest cached images a reader task reads),
interleaved within each round. Meant for a GPU host (on a CPU the forward dominates).

    PYTHONPATH=. python benchmarks/bench_calls.py --device cuda --rounds 3 --out $OUT/calls.json
    PYTHONPATH=. python benchmarks/bench_calls.py --device cuda --slices 64,32,16
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MODES = ("pertask", "ahead", "onecall")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default=None, help="default: cuda if available")
    ap.add_argument("--n-images", type=int, default=4096)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--workers", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--modes", default=",".join(MODES), help=f"comma-separated subset of {MODES}")
    ap.add_argument("--slices", default="", help="CACHE_READ_SLICE values to compare (default: the harness's)")
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
    from bench_util import bare_rate, device_setup

    device, _, sync, gpu = device_setup(args.device)
    slices = [int(x) for x in args.slices.split(",") if x] or [harness.CACHE_READ_SLICE]
    bench = mrbench.load_benchmark("mrbench-synth")
    enc = get_encoder("openclip:ViT-B-32", random_init=True, device=device, batch_size=args.batch)
    cands = [(t, c) for t in bench.tasks if t.candidate_modality == "image" for c in t.candidates][: args.n_images]
    by_task: dict[str, list] = {}
    for t, c in cands:
        by_task.setdefault(t.name, []).append(c)
    groups = [(bench.task(name), items) for name, items in by_task.items()]
    every = [c for _, c in cands]

    sample = every[: args.batch]
    pix = torch.stack([enc.prepare_image(load_rgb(bench.image_path(c.image), c.id)) for c in sample]).to(device)
    raw_rate = bare_rate(enc.encode_images, pix, len(sample), max(1, len(every) // len(sample)), enc, sync)
    print(f"{gpu}: bare forward {raw_rate:,.0f} images/s", flush=True)

    runs = []
    saved = harness.CACHE_READ_SLICE
    with tempfile.TemporaryDirectory() as d:
        kw = dict(batch_size=args.batch, num_workers=args.workers, pixel_cache=PixelCache(d))
        for _ in range(2):  # fill the cache, then read it once (shard headers, layouts, graphs, pools)
            encode_groups(enc, groups, role="candidate", bench=bench, ahead=False, **kw)
        try:
            for r in range(args.rounds):
                for size in slices:
                    harness.CACHE_READ_SLICE = size
                    for mode in modes:
                        st = EncodeStats()
                        sync()
                        t0 = time.perf_counter()
                        if mode == "onecall":
                            encode_items(enc, every, role="candidate", task=groups[0][0], bench=bench, stats=st, **kw)
                        else:
                            encode_groups(enc, groups, role="candidate", bench=bench, ahead=mode == "ahead",
                                          stats=st, **kw)
                        sync()
                        wall = time.perf_counter() - t0
                        row = {"round": r, "slice": size, "mode": mode, "wall_s": round(wall, 4),
                               "share": round(len(every) / wall / raw_rate, 3),
                               **{k: round(v, 4) if isinstance(v, float) else v for k, v in st.to_dict().items()}}
                        runs.append(row)
                        print(f"slice {size:<4} {mode:<8} wall {wall * 1e3:6.0f} ms  share {row['share']:.3f}  "
                              f"model waited {st.input_wait_seconds:.3f} s, reads {st.read_wait_seconds:.3f} s, "
                              f"staging {st.stage_seconds:.3f} s, encoder calls {st.encode_seconds:.3f} s, "
                              f"start-up {st.startup_seconds:.3f} s", flush=True)
        finally:
            harness.CACHE_READ_SLICE = saved
    if args.out:
        out = {"device": gpu, "raw_per_s": round(raw_rate, 1), "images": len(every), "batch": args.batch,
               "workers": args.workers, "machine": {"platform": platform.platform(), "torch": torch.__version__},
               "runs": runs}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
