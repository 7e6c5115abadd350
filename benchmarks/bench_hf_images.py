"""`hf` CLIP images from a warm pixel cache: uint8 pixels normalised on the model's device vs the
image processor's float32 output, against the bare image tower.

A ViT-B/32-sized ``transformers`` ``CLIPModel`` (``CLIPConfig()`` defaults, random init, a 224-px
torchvision-backend ``CLIPImageProcessor``; or a real model directory with ``--model``) encodes
MRBench-Synth's image candidates through :func:`mrbench.encoders.harness.encode_items` in one call,
from a pixel cache filled beforehand (untimed), alternating two modes per round: ``uint8`` (the
processor resizes and crops in the workers; its own ``rescale_and_normalize`` runs batched on the
device, see :class:`~mrbench.encoders.hf_clip.HFImagePrep`) and ``float32`` (the processor's whole
output is cached and copied, ``HFImagePrep(uint8=False)``). ``share`` = harness rate / the bare
image tower's rate on one prepared batch already on the device. Also reported: bytes per cached
image. Meant for a GPU host; on a CPU the forward dominates both modes (use a few images).

    PYTHONPATH=. python benchmarks/bench_hf_images.py --device cuda --out $OUT/hf_images.json
    python benchmarks/bench_hf_images.py --device cpu --n-images 64 --batch 32 --rounds 1
"""

from __future__ import annotations

import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

MODES = ("uint8", "float32")


def main() -> None:
    from bench_util import hf_parser

    args = hf_parser(__doc__, "n-images", 4096).parse_args()

    import torch

    import mrbench
    from bench_hf_texts import _random_clip
    from mrbench.encoders.harness import EncodeStats, encode_items, load_rgb
    from mrbench.encoders.hf_clip import HFClipEncoder, HFImagePrep
    from mrbench.encoders.pixel_cache import PixelCache
    from bench_util import bare_rate, device_setup

    device, workers, sync, name = device_setup(args.device, args.workers)
    bench = mrbench.load_benchmark("mrbench-synth")
    task = bench.task("t2i")
    cands = [c for t in bench.tasks if t.candidate_modality == "image" for c in t.candidates][: args.n_images]
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or str(_random_clip(Path(tmp) / "clip"))
        enc = HFClipEncoder(model, device=device, precision="bf16" if device.startswith("cuda") else "fp32",
                            batch_size=args.batch)
        preps = {"uint8": enc.image_prep, "float32": HFImagePrep(enc.image_processor, naflex=False, uint8=False)}
        if preps["uint8"].split is None:
            raise SystemExit(f"{type(enc.image_processor).__name__}: no uint8 split for this processor; nothing to compare")

        # the bare image tower on one prepared float32 batch already on the device
        sample = cands[: args.batch]
        pix = torch.stack([torch.from_numpy(preps["float32"](load_rgb(bench.image_path(c.image), c.id)))
                           for c in sample]).to(device)
        raw = bare_rate(enc.encode_images, pix, len(sample), max(1, len(cands) // len(sample)), enc, sync)
        print(f"{name}: bare image tower {raw:,.0f} images/s (batch {len(sample)})", flush=True)

        cache = PixelCache(Path(tmp) / "pixels")
        entry_bytes = {}
        for mode, prep in preps.items():  # fill the pixel cache (untimed)
            enc.image_prep = prep
            encode_items(enc, cands, role="candidate", task=task, bench=bench, num_workers=workers, pixel_cache=cache)
            entry_bytes[mode] = int(prep(load_rgb(bench.image_path(cands[0].image), cands[0].id)).nbytes)
        runs = []
        for r in range(args.rounds + 1):  # round 0 warms up (readers, allocator, kernels)
            for mode in MODES if r % 2 == 0 else MODES[::-1]:
                enc.image_prep = preps[mode]
                st = EncodeStats()
                sync()
                t0 = time.perf_counter()
                encode_items(enc, cands, role="candidate", task=task, bench=bench, num_workers=workers,
                             pixel_cache=cache, stats=st)
                sync()
                wall = time.perf_counter() - t0
                if r == 0:
                    continue
                row = {"mode": mode, "round": r, "wall_s": round(wall, 3), "share": round(len(cands) / wall / raw, 3),
                       "input_wait_s": round(st.input_wait_seconds, 3), "read_wait_s": round(st.read_wait_seconds, 3),
                       "stage_s": round(st.stage_seconds, 3), "encoder_s": round(st.encode_seconds, 3),
                       "pixel_cache_hits": st.pixel_cache_hits}
                runs.append(row)
                print(f"{mode:<8} wall {wall:.3f} s  share {row['share']:.3f}  model waited {row['input_wait_s']:.3f} s, "
                      f"reads {row['read_wait_s']:.3f} s, staging {row['stage_s']:.3f} s", flush=True)
        enc.image_prep = preps["uint8"]
    print("bytes per cached image: " + ", ".join(f"{m} {b:,}" for m, b in entry_bytes.items()))
    if args.out:
        out = {"device": name, "raw_per_s": round(raw, 1), "images": len(cands), "batch": args.batch,
               "workers": workers, "bytes_per_cached_image": entry_bytes,
               "machine": {"platform": platform.platform(), "torch": torch.__version__, "cpus": os.cpu_count()},
               "runs": runs}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
