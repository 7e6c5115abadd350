"""`hf` CLIP texts: the harness with texts tokenised ahead vs tokenised in the forward, against the
bare text tower on ready tokens.

A ViT-B/32-sized ``transformers`` ``CLIPModel`` (``CLIPConfig()`` defaults, random init; or a real
model directory with ``--model``) encodes MRBench-Synth's t2i captions through
:func:`mrbench.encoders.harness.encode_items`, alternating two modes per round: ``ahead`` (the
encoder's ``text_transform()``: :class:`~mrbench.encoders.hf_clip.HFTokenRows` run by the harness,
in worker processes when feeding a GPU) and ``inline`` (``text_transform`` switched off: the
tokenizer runs in the forward, on the model's thread). ``share`` = harness rate / bare rate. The
random model uses the test suite's offline character-level CLIP tokenizer (more tokens per caption
than the real BPE). Meant for a GPU host; on a CPU the forward dominates both modes.

    PYTHONPATH=. python benchmarks/bench_hf_texts.py --device cuda --out $OUT/hf_texts.json
"""

from __future__ import annotations

import json
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def _random_clip(d: Path) -> Path:
    """A ViT-B/32-sized random CLIPModel saved like a checkpoint, with an offline tokenizer."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    sys.path.insert(0, str(ROOT / "tests"))
    from fixtures import tiny_hf

    torch.manual_seed(0)
    CLIPModel(CLIPConfig()).save_pretrained(d)
    tiny_hf.clip_tokenizer().save_pretrained(d)
    CLIPImageProcessor(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224}).save_pretrained(d)
    return d


def main() -> None:
    from bench_util import hf_parser

    args = hf_parser(__doc__, "n-texts", 16384).parse_args()

    import numpy as np
    import torch

    import mrbench
    from mrbench.encoders.harness import EncodeStats, encode_items
    from mrbench.encoders.hf_clip import HFClipEncoder
    from bench_util import bare_rate, device_setup

    device, workers, sync, name = device_setup(args.device, args.workers)
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or str(_random_clip(Path(tmp) / "clip"))
        enc = HFClipEncoder(model, device=device, precision="bf16" if device.startswith("cuda") else "fp32",
                            batch_size=args.batch)
    bench = mrbench.load_benchmark("mrbench-synth")
    task = bench.task("t2i")
    n = args.n_texts
    qs = (task.queries * (1 + n // len(task.queries)))[:n]
    rows = enc.token_rows([q.text for q in qs])
    batches = [enc._token_batch(list(rows[i : i + args.batch])) for i in range(0, n, args.batch)]
    raw = bare_rate(lambda bs: [enc.encode_tokens(b) for b in bs], batches, n, 1, enc, sync)
    print(f"{name}: bare text tower on ready tokens {raw:,.0f} texts/s (mean {rows[:, -2].mean():.1f} tokens)", flush=True)
    real = enc.text_transform
    runs = []
    for r in range(args.rounds + 1):  # round 0 warms up (tokenising workers forked, kernels)
        for mode in ("ahead", "inline"):
            enc.text_transform = real if mode == "ahead" else (lambda: None)  # type: ignore[method-assign]
            st = EncodeStats()
            sync()
            t0 = time.perf_counter()
            encode_items(enc, qs, role="query", task=task, bench=bench, num_workers=workers, stats=st)
            sync()
            wall = time.perf_counter() - t0
            if r == 0:
                continue
            row = {"mode": mode, "round": r, "wall_s": round(wall, 3), "share": round(n / wall / raw, 3),
                   "input_wait_s": round(st.input_wait_seconds, 3), "tokenize_s": round(st.tokenize_seconds, 3),
                   "encoder_s": round(st.encode_seconds, 3)}
            runs.append(row)
            print(f"{mode:<7} wall {wall:.3f} s  share {row['share']:.3f}  model waited {row['input_wait_s']:.3f} s, "
                  f"encoder calls {row['encoder_s']:.3f} s", flush=True)
    if args.out:
        out = {"device": name, "raw_per_s": round(raw, 1), "texts": n, "batch": args.batch, "workers": workers,
               "mean_tokens": round(float(np.mean(rows[:, -2])), 1),
               "machine": {"platform": platform.platform(), "torch": torch.__version__}, "runs": runs}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
