"""How fast `evaluate`'s input pipeline can feed a GPU, measured without one.

The encoder here does no work on the host: each ``encode`` call sleeps for as long as a GPU would
take for the batch at ``--forward-rate`` items/s (default 19,300 images/s: open_clip ViT-B/32 in
bf16 on an H100, measured by ``bench_encode.py``) and returns constant embeddings. Everything else
is :func:`mrbench.encoders.harness.encode_items` as ``evaluate`` runs it on MRBench-Synth's images —
hashing, decoding with the model-like transform (resize 224 + centre crop, uint8), or reading a warm
pixel cache, batching, validation (and, in the last row, writing the embedding cache as ``evaluate``
does). The images are encoded in one call per task, one after the other, and ("ahead") with each
call started while the one before it runs, as ``evaluate`` does
(:func:`~mrbench.encoders.harness.start_encode`); the "staged" rows read warm batches into staging
buffers, as ``encode_items`` does for an encoder on a GPU (:class:`HostStager` stands in for the
pinned buffers, without the copy to a device). ``share`` = harness rate / forward rate: the
fraction of the GPU's rate the pipeline sustains on this machine's cores (the speed goal asks
>= 0.8 on a GPU).

    python benchmarks/bench_feed.py --out benchmarks/results/feed_cpu.json
    python benchmarks/bench_feed.py --workers 16 --n-images 4096        # on a 16-core GPU host
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


class SimulatedGPUEncoder:
    """Sleeps ``len(items) / rate`` seconds per call (a GPU forward the host waits for)."""

    def __init__(self, rate: float, batch_size: int, size: int = 224, text_rate: float = 25200.0) -> None:
        from torchvision.transforms import CenterCrop, Compose, InterpolationMode, Resize

        from mrbench.encoders.base import EncoderMeta

        self.rate, self.text_rate, self.size = float(rate), float(text_rate), size
        self._stage = Compose([Resize(size, interpolation=InterpolationMode.BICUBIC), CenterCrop(size)])
        self.transform_id = f"simulated-gpu-{size}"
        self._tokenizer = None
        self.meta = EncoderMeta(name="simulated-gpu", revision="1", dim=512, batch_size=batch_size,
                                modalities=("text", "image"))

    def pixel_transform(self):
        from mrbench.encoders.openclip import PilToUint8

        return PilToUint8(self._stage)

    def prepare_image(self, image):
        return self.pixel_transform()(image)

    def text_transform(self):
        """open_clip's CLIP tokenizer (context 77), as open_clip ViT-B/32 tokenises; built once, as
        the real encoder holds its tokenizer."""
        import open_clip

        from mrbench.encoders.openclip import TokenizeToNumpy

        if self._tokenizer is None:
            self._tokenizer = open_clip.get_tokenizer("ViT-B-32")
        return TokenizeToNumpy(self._tokenizer, 77)

    def text_of(self, it) -> str:
        return it.text or ""

    def encode(self, items, *, role, task):
        rate = self.text_rate if all(it.image_path is None for it in items) else self.rate
        time.sleep(len(items) / rate)
        return np.ones((len(items), 512), dtype=np.float32)  # ViT-B/32 embeds in 512 dims


class HostStager:
    """The device stager's host side, for a machine without a GPU: a batch found whole in the
    pixel cache is read into a staging buffer as it is for an encoder on a GPU (its items ordered
    by where their pixels lie in the shards, read in runs), from a ring of reused buffers as CUDA's
    caching host allocator hands them out; ``stage`` hands the batch on without the per-row checks
    and the copy to a device that :class:`~mrbench.encoders.harness._DeviceStager` adds."""

    RING = 8  # more than the batches alive at once, two calls overlapping: encoded, prepared (2), being read
    _buffers: dict[tuple, list[np.ndarray]] = {}  # shared by every call, as the caching allocator is
    _next: dict[tuple, int] = {}

    def __init__(self, device: str) -> None:
        pass

    def alloc(self, n: int, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        key = (n, tuple(shape), np.dtype(dtype).str)
        ring = self._buffers.setdefault(key, [])
        k = self._next.get(key, 0)
        self._next[key] = (k + 1) % self.RING
        if k == len(ring):
            ring.append(np.zeros((n, *shape), dtype))
        return ring[k]

    def stage(self, loaded, whole=None):
        return loaded, None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--forward-rate", type=float, default=19300.0, help="simulated model rate, items/s")
    ap.add_argument("--text-rate", type=float, default=25200.0,
                    help="simulated text-tower rate on ready token ids, texts/s (ViT-B/32's, H100)")
    ap.add_argument("--n-images", type=int, default=4096)
    ap.add_argument("--n-texts", type=int, default=16384)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--workers", type=int, default=None, help="decode workers (default: every core up to 16)")
    ap.add_argument("--evaluate", type=int, default=0, metavar="N",
                    help="also time N whole `evaluate` runs of MRBench-Synth with the simulated encoder (warm pixel "
                         "cache, no embedding cache) with the encode calls started ahead and N one after the other, "
                         "alternating; reports the medians")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    import mrbench
    from mrbench.encoders.harness import EncodeStats, _short_switch_interval, encode_groups
    from mrbench.encoders.pixel_cache import PixelCache

    workers = args.workers if args.workers is not None else min(16, os.cpu_count() or 1)
    bench = mrbench.load_benchmark("mrbench-synth")
    cands = [(t, c) for t in bench.tasks if t.candidate_modality == "image" for c in t.candidates][: args.n_images]
    by_task: dict[str, list] = {}
    for t, c in cands:
        by_task.setdefault(t.name, []).append(c)
    enc = SimulatedGPUEncoder(args.forward_rate, args.batch, text_rate=args.text_rate)
    t2i = bench.task("t2i")
    texts = (t2i.queries * (1 + args.n_texts // max(1, len(t2i.queries))))[: args.n_texts]
    rows = []

    def run(groups: list[tuple[str, list]], role: str, pixel_cache, cache=None, ahead: bool = False
            ) -> tuple[float, EncodeStats]:
        stats = EncodeStats()
        t0 = time.perf_counter()
        # the short thread switch interval encode_items uses when it feeds a CUDA encoder
        with _short_switch_interval(True):
            encode_groups(enc, [(bench.task(name), items) for name, items in groups], role=role, bench=bench,
                          ahead=ahead, stats=stats, batch_size=args.batch, num_workers=workers,
                          pixel_cache=pixel_cache, cache=cache)
        return time.perf_counter() - t0, stats

    def row(label: str, n: int, rate: float, wall: float, stats: EncodeStats) -> dict:
        fwd = n / rate
        return {"path": label, "items": n, "wall_s": round(wall, 3), "harness_per_s": round(n / wall, 1),
                "forward_s": round(fwd, 3), "share": round(fwd / wall, 3),
                "input_wait_s": round(stats.input_wait_seconds, 3), "pixel_cache_hits": stats.pixel_cache_hits}

    images = list(by_task.items())
    from mrbench.encoders import harness

    with tempfile.TemporaryDirectory() as d:
        cache = PixelCache(d)
        run(images, "candidate", False)  # warm-up: file hashes memoised, process pool started (as in a long evaluate)
        for label, pc in (("decode (Pillow workers)", False), ("pixel cache, filling", cache),
                          ("pixel cache, warm", cache)):
            rows.append(row(label, len(cands), args.forward_rate, *run(images, "candidate", pc)))
        # as evaluate runs its calls: each started (set up, first batches prepared) during the one before
        rows.append(row("pixel cache, warm, ahead", len(cands), args.forward_rate,
                        *run(images, "candidate", cache, ahead=True)))
        # the path of an encoder on a GPU: batches read into staging buffers (HostStager stands in)
        real_stager, real_device = harness._DeviceStager, harness._gpu_decode_device
        harness._DeviceStager, harness._gpu_decode_device = HostStager, lambda encoder: "cuda"
        enc.pixels_on_device, enc.device = True, "cuda"
        try:
            run(images, "candidate", cache)  # learns the pixel layout (the first batch of a fingerprint)
            rows.append(row("pixel cache, warm, staged", len(cands), args.forward_rate,
                            *run(images, "candidate", cache)))
            rows.append(row("pixel cache, warm, staged, ahead", len(cands), args.forward_rate,
                            *run(images, "candidate", cache, ahead=True)))
        finally:
            harness._DeviceStager, harness._gpu_decode_device = real_stager, real_device
            enc.pixels_on_device = False
    # texts: tokenised ahead in worker processes, as for an encoder on a GPU (the harness only forks
    # tokenising workers to feed one, so it is told the simulated encoder is on one)
    from mrbench.encoders import harness

    real = harness._gpu_decode_device
    harness._gpu_decode_device = lambda encoder: "cuda"
    try:
        run([("t2i", texts[: 2 * args.batch])], "query", None)
        rows.append(row("texts, tokenised ahead", len(texts), args.text_rate, *run([("t2i", texts)], "query", None)))
        # as evaluate runs it: the embeddings also written to an (empty) embedding cache
        from mrbench.encoders.cache import EmbeddingCache

        with tempfile.TemporaryDirectory() as d:
            rows.append(row("texts, + embedding cache", len(texts), args.text_rate,
                            *run([("t2i", texts)], "query", None, EmbeddingCache(d, "simulated-gpu@1"))))
        evaluate_rows = _evaluate_ab(enc, args.evaluate, workers) if args.evaluate else []
    finally:
        harness._gpu_decode_device = real
    out = {"machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "workers": workers,
                       "python": platform.python_version()},
           "forward_rate": args.forward_rate, "text_rate": args.text_rate, "batch": args.batch, "rows": rows}
    if evaluate_rows:
        out["evaluate"] = evaluate_rows
        for r in evaluate_rows:
            print(f"evaluate, calls {r['calls']:<10} wall {r['wall_s']:.3f} s (median of {r['runs']}); encode "
                  f"{r['encode_s']:.3f}, retrieve {r['retrieve_s']:.3f}, sensitivity {r['sensitivity_s']:.3f}; "
                  f"calls' start-up {r['encode_startup_s']:.3f}, model waiting for inputs {r['input_wait_s']:.3f}")
    for r in rows:
        rate = args.text_rate if r["path"].startswith("texts") else args.forward_rate
        print(f"{r['path']:<33} {r['harness_per_s']:>9.0f} items/s  share of a {rate:,.0f}/s forward "
              f"{r['share']:.2f}  (model waited {r['input_wait_s']:.2f} s for inputs)")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(out, indent=2) + "\n")


def _evaluate_ab(enc, n: int, workers: int) -> list[dict]:
    """Medians of ``n`` MRBench-Synth evaluations with the encode calls started ahead and ``n`` one after
    the other (``mrbench.pipeline.ENCODE_AHEAD``), alternating; the pixel cache warm (filled by an untimed
    first run), no embedding cache."""
    import statistics

    import mrbench
    import mrbench.pipeline as pl

    keys = ("encode", "retrieve", "score", "sensitivity", "encode_startup", "input_wait")
    runs: dict[bool, list[dict]] = {True: [], False: []}
    with tempfile.TemporaryDirectory() as d:
        kw = dict(cache=False, num_workers=workers)
        saved_env, saved_flag = os.environ.get("MRBENCH_PIXEL_CACHE"), pl.ENCODE_AHEAD
        os.environ["MRBENCH_PIXEL_CACHE"] = d
        try:
            mrbench.evaluate("mrbench-synth", enc, **kw)
            for _ in range(n):
                for flag in (True, False):
                    pl.ENCODE_AHEAD = flag
                    t0 = time.perf_counter()
                    res = mrbench.evaluate("mrbench-synth", enc, **kw)
                    runs[flag].append({"wall": time.perf_counter() - t0, **{k: res.timings[k] for k in keys}})
        finally:
            pl.ENCODE_AHEAD = saved_flag
            if saved_env is None:
                os.environ.pop("MRBENCH_PIXEL_CACHE", None)
            else:
                os.environ["MRBENCH_PIXEL_CACHE"] = saved_env
    return [{"calls": "ahead" if flag else "sequential", "runs": n,
             **{f"{k}_s": round(statistics.median(r[k] for r in rows), 3) for k in ("wall", *keys)}}
            for flag, rows in runs.items()]


if __name__ == "__main__":
    main()
