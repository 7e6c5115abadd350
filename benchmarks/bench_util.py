"""Helpers shared by the GPU input-path benchmarks (bench_calls, bench_hf_texts, bench_hf_images)."""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path
from typing import Any, Callable


def hf_parser(doc: str | None, items: str, default: int) -> argparse.ArgumentParser:
    """The options of the ``hf`` CLIP benchmarks: ``--device --model --<items> --batch --rounds
    --workers --out`` (``items``: e.g. ``n-texts``)."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default=None, help="default: cuda if available")
    ap.add_argument("--model", default=None, help="an hf CLIP model directory (default: random ViT-B/32-sized)")
    ap.add_argument(f"--{items}", type=int, default=default)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--workers", type=int, default=None, help="default: every core up to 16")
    ap.add_argument("--out", type=Path)
    return ap


def device_setup(device: str | None, workers: int | None = None) -> tuple[str, int, Callable[[], None], str]:
    """``(device, workers, sync, device name)``: ``device`` defaults to CUDA where there is one,
    ``workers`` to every core up to 16; ``sync`` waits for the device (a no-op on the CPU)."""
    import torch

    dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
    cuda = dev.startswith("cuda")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    name = torch.cuda.get_device_name() if cuda else platform.processor() or "cpu"
    return dev, workers or min(16, os.cpu_count() or 1), sync, name


def bare_rate(forward: Callable[[Any], Any], x: Any, items: int, calls: int, enc: Any, sync: Callable[[], None]) -> float:
    """Items per second of ``forward(x)`` (``items`` per call) called ``calls`` times after one
    warm-up call, under the encoder's inference mode and autocast: the rate the harness is compared with."""
    import torch

    from mrbench.encoders.runtime import autocast

    with torch.inference_mode(), autocast(enc.device, enc.dtype):
        forward(x)
        sync()
        t0 = time.perf_counter()
        for _ in range(calls):
            forward(x)
        sync()
        return calls * items / (time.perf_counter() - t0)
