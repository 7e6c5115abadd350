"""Image decode + preprocessing throughput of the encoding harness, per decode path.

N synthetic JPEGs (Pillow, 256-512 px, smooth content + noise, quality 90) go through
:func:`mrbench.encoders.harness.encode_items` with a no-op encoder whose transform is CLIP's eval
transform (bicubic resize of the short side to 224, centre crop 224, uint8 ``[3, 224, 224]``: the
PIL stages of open_clip's ``ViT-B-32``), so the time is decode + transform + harness (hashing is
memoised by a warm-up run). Modes:

* ``pillow-1core``: a plain loop (``load_rgb`` + transform), no harness: the per-core rate;
* ``pillow-thread`` / ``pillow-process``: ``workers="thread"`` / ``"process"``;
* ``pixel-cache-cold`` / ``pixel-cache-warm``: ``workers="thread"`` with the pixel cache, first
  run (decode + transform + write) and second run (read only);
* ``torchvision-cpu``: the ``workers="gpu"`` code path with ``torchvision.io.decode_jpeg`` on the CPU
  (file reads in threads, decode + tensor transform in one thread);
* ``torchvision-gpu`` (``--device cuda``): ``workers="gpu"`` on the CUDA device.

``max|d|`` / ``mean|d|``: difference of the pixels (uint8 levels) from the Pillow path's.

    python benchmarks/bench_decode.py --n 512 --out benchmarks/results/decode_cpu.json
    python benchmarks/bench_decode.py --device cuda --n 4096 --out $OUT/decode_gpu.json
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

from mrbench.encoders.base import EncoderMeta  # noqa: E402

KEEP = 64  # items whose pixels are kept for the comparison with the Pillow path


def clip_pil_stages(size: int = 224):
    """CLIP's eval transform, PIL stages only → uint8 ``[3, 224, 224]`` (open_clip's PilToUint8; picklable)."""
    from torchvision.transforms import CenterCrop, Compose, InterpolationMode, Resize

    from mrbench.encoders.openclip import PilToUint8

    return PilToUint8(Compose([Resize(size, interpolation=InterpolationMode.BICUBIC), CenterCrop(size)]))


class NullEncoder:
    """Needs pixels, does nothing with them (keeps the first ``KEEP`` for comparisons)."""

    def __init__(self, device: str = "cpu") -> None:
        self.device = device
        self.tr = clip_pil_stages()
        self.kept: dict[str, np.ndarray] = {}
        self.meta = EncoderMeta(name="bench-null", revision="1", similarity="dot", dim=4, needs_pixels=True,
                                batch_size=64)

    def prepare_image(self, image):
        import torch

        return torch.from_numpy(self.tr(image))

    def pixel_transform(self):
        return self.tr

    def encode(self, items, *, role, task):
        for it in items:
            if len(self.kept) < KEEP and it.pixels is not None and it.id not in self.kept:
                p = it.pixels
                self.kept[it.id] = p.cpu().numpy() if hasattr(p, "cpu") else np.asarray(p)
        return np.ones((len(items), 4), np.float32)


def make_images(root: Path, n: int, seed: int = 0):
    """``n`` JPEGs (256-512 px a side) and a one-task benchmark over them."""
    from PIL import Image

    from mrbench.data.schema import Benchmark, Candidate, Query, Task

    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    cands, nbytes = [], 0
    for i in range(n):
        w, h = (int(x) for x in rng.integers(256, 513, 2))
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        c = rng.uniform(0, 255, 3)
        f = rng.uniform(0.005, 0.05, 3)
        img = np.stack([c[k] / 2 + 60 * np.sin(xx * f[k] + yy * f[(k + 1) % 3]) for k in range(3)], axis=-1)
        img += rng.normal(0, 12, img.shape)
        rel = f"images/{i:06d}.jpg"
        Image.fromarray(np.clip(img + 64, 0, 255).astype(np.uint8)).save(root / rel, quality=90)
        nbytes += (root / rel).stat().st_size
        cands.append(Candidate(id=f"c{i}", image=rel))
    t = Task(name="decode", query_modality="text", candidate_modality="image", queries=[Query(id="q", text="x")],
             candidates=cands, qrels={"q": {"c0": 1}})
    return Benchmark(name="bench-decode", version="1", tasks=[t], root=root), nbytes


def run_mode(mode: str, bench, workers: int, cache_dir: Path, device: str, repeats: int) -> dict:
    from mrbench.encoders import harness
    from mrbench.encoders.harness import EncodeStats, encode_items, load_rgb
    from mrbench.encoders.pixel_cache import PixelCache

    task = bench.tasks[0]
    items = task.candidates
    enc = NullEncoder(device="cuda" if mode == "torchvision-gpu" else "cpu")
    kw: dict = dict(role="candidate", task=task, bench=bench, num_workers=workers, pixel_cache=False)
    if mode == "pillow-1core":
        def once():
            for c in items:
                pix = enc.tr(load_rgb(bench.image_path(c.image), c.id))
                if len(enc.kept) < KEEP:
                    enc.kept[c.id] = pix
    else:
        if mode == "pillow-thread":
            kw["workers"] = "thread"
        elif mode == "pillow-process":
            kw["workers"] = "process"
        elif mode.startswith("pixel-cache"):
            kw["workers"] = "thread"
            kw["pixel_cache"] = PixelCache(cache_dir)
        elif mode == "torchvision-cpu":
            kw["workers"] = "gpu"
            harness._gpu_decode_device = lambda e: "cpu"  # type: ignore[assignment]
        elif mode == "torchvision-gpu":
            kw["workers"] = "gpu"
            harness._gpu_decode_device = _real_gpu_device
        stats = EncodeStats()

        def once():
            encode_items(enc, items, stats=stats, **kw)

    if mode == "pixel-cache-cold":
        repeats = 1  # a second run would be warm
    elif mode != "pillow-1core":
        encode_items(enc, items[:64], **kw)  # warm-up: pools, kernels, nvjpeg, hash memo of those files
    times = []
    for _ in range(repeats):
        if device.startswith("cuda"):
            import torch

            torch.cuda.synchronize()
        t0 = time.perf_counter()
        once()
        if device.startswith("cuda"):
            import torch

            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    t = min(times)
    row = {"mode": mode, "images": len(items), "seconds": round(t, 3), "images_per_s": round(len(items) / t, 1)}
    if mode != "pillow-1core":  # per run
        row.update(gpu_decoded=stats.gpu_decoded // repeats, pixel_cache_hits=stats.pixel_cache_hits // repeats)
    row["_kept"] = enc.kept
    return row


_real_gpu_device = None


def main() -> None:
    global _real_gpu_device
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=512, help="number of JPEG images")
    ap.add_argument("--workers", type=int, default=None, help="decode workers (default: all cores up to 8)")
    ap.add_argument("--device", default="cpu", help="cpu, or cuda to add the GPU decode row")
    ap.add_argument("--repeats", type=int, default=2, help="timed runs per mode (the best is reported)")
    ap.add_argument("--modes", default="pillow-1core,pillow-thread,pillow-process,pixel-cache-cold,"
                                       "pixel-cache-warm,torchvision-cpu")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    import torch
    import torchvision

    from mrbench.encoders import harness

    _real_gpu_device = harness._gpu_decode_device
    workers = args.workers if args.workers is not None else harness.default_workers()
    modes = args.modes.split(",")
    if args.device.startswith("cuda") and "torchvision-gpu" not in modes:
        modes.append("torchvision-gpu")
    rows = []
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        bench, nbytes = make_images(Path(d) / "bench", args.n)
        print(f"{args.n} JPEGs, {nbytes / args.n / 1024:.0f} KiB each on average, generated in "
              f"{time.perf_counter() - t0:.1f} s; {workers} decode workers", flush=True)
        for mode in modes:
            rows.append(run_mode(mode, bench, workers, Path(d) / "pixels", args.device, args.repeats))
            print(f"  {mode}: {rows[-1]['images_per_s']:.1f} images/s", flush=True)
    ref = next((r["_kept"] for r in rows if r["mode"] == "pillow-thread"), None)
    base = next((r["images_per_s"] for r in rows if r["mode"] == "pillow-thread"), None)
    for r in rows:
        kept = r.pop("_kept")
        if ref is not None and kept:
            common = [k for k in kept if k in ref]
            diffs = [np.abs(kept[k].astype(np.int16) - ref[k].astype(np.int16)) for k in common]
            r["max_abs_diff"] = int(max(int(x.max()) for x in diffs)) if diffs else None
            r["mean_abs_diff"] = round(float(np.mean([x.mean() for x in diffs])), 3) if diffs else None
        r["vs_pillow_thread"] = round(r["images_per_s"] / base, 2) if base else None
    print()
    print(f"{'mode':<18} {'images':>6} {'seconds':>8} {'images/s':>9} {'x thread':>8} {'max|d|':>6} {'mean|d|':>7}")
    for r in rows:
        print(f"{r['mode']:<18} {r['images']:>6} {r['seconds']:>8.3f} {r['images_per_s']:>9.1f} "
              f"{r['vs_pillow_thread'] or 0:>8.2f} {str(r.get('max_abs_diff', '-')):>6} "
              f"{str(r.get('mean_abs_diff', '-')):>7}")
    machine = {"platform": platform.platform(), "cpu_count": os.cpu_count(), "python": platform.python_version(),
               "torch": torch.__version__, "torchvision": torchvision.__version__,
               "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None, "workers": workers}
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"machine": machine, "args": vars(args) | {"out": str(args.out)},
                                        "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
