"""Encoding throughput: `mrbench evaluate`'s encoding stage vs the raw model forward on the same batch.

Two encoders with random weights (no download; sizes of the real models):

* ``openclip``: open_clip ViT-B/32 (``openclip:ViT-B-32`` with ``random_init``) on MRBench-Synth's
  images (t2i/i2i/it2i candidate pools) and the t2i query texts;
* ``ret``: a generative ``[RET]`` encoder with Qwen2-VL-2B's shapes (28 layers, hidden 1536, vision
  depth 32 / width 1280), images resized to 448² (256 visual tokens), greedy summary of
  ``--summary-tokens`` tokens then the ``[RET]`` forward, on it2i queries (image + edit text).

"harness" = :func:`mrbench.encoders.harness.encode_items` exactly as ``evaluate`` calls it (hashing,
threaded decode + the model's transform, batching, validation; no embedding cache; the objects alive
before each timed call kept out of the cyclic collector's passes, as ``evaluate`` keeps them with
:func:`mrbench.data.io.gc_frozen`: on a GPU host, full passes over torch's objects cost 0.2 s of a
16k-text call without it). "raw" = the same
model on one already-prepared batch on the device, repeated to the same item count. The ratio
raw-time / harness-time is the fraction of the raw rate the harness keeps (goal ≥ 0.8).

    python benchmarks/bench_encode.py --out benchmarks/results/encode_cpu.json            # CPU, small
    python benchmarks/bench_encode.py --device cuda --n-images 4096 --decode auto,cache --out $OUT/encode_gpu.json
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


_REFREEZE: list = [lambda: None]  # gc_frozen's refreeze while main() runs


def _timed(fn, device: str, repeats: int = 1) -> float:
    _REFREEZE[0]()
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    _sync(device)
    return time.perf_counter() - t0


def pool_of_images(bench, n: int) -> list[tuple]:
    """``(task, candidate)`` for the first ``n`` image candidates of ``bench``'s image-candidate tasks,
    the pool cycled when ``n`` is larger: more items to encode (none is deduplicated within a call),
    but the same files — the pixel cache holds each image once, so a warm pass re-reads those
    entries (MRBench-Synth: 0.6 GB of uint8 pixels, where 32k distinct images would be 4.9 GB)."""
    import itertools

    cands = [(t, c) for t in bench.tasks if t.candidate_modality == "image" for c in t.candidates]
    return list(itertools.islice(itertools.cycle(cands), n))


def bench_openclip(bench, device: str, n_images: int, batch: int, workers: int,
                   kinds: tuple[str, ...] = ("auto",), n_texts: int = 8192, one_call: bool = False,
                   graphs: bool = True) -> list[dict]:
    """Rows for open_clip ViT-B/32. Image kinds: decode worker kinds (``auto``, ``thread``,
    ``process``, ``gpu``) and ``cache`` (a warm pixel cache: filled by one untimed pass, then timed).
    Texts: the raw baseline is the text tower on token ids already on the device (tokenisation is
    harness work, done ahead in worker processes); ``raw_incl_tokenize_per_s`` adds it back."""
    import torch

    from mrbench.encoders.harness import EncodeStats, encode_groups, encode_items
    from mrbench.encoders.pixel_cache import PixelCache
    from mrbench.encoders.registry import get_encoder
    from mrbench.encoders.runtime import autocast

    enc = get_encoder("openclip:ViT-B-32", random_init=True, device=device, batch_size=batch, cuda_graphs=graphs)
    rows = []
    # images: candidate pools of the image-candidate tasks
    cands = pool_of_images(bench, n_images)
    by_task: dict[str, list] = {}
    for t, c in cands:
        by_task.setdefault(t.name, []).append(c)
    first = next(iter(by_task))
    harness: dict[str, float] = {}
    stats: dict[str, EncodeStats] = {}
    with tempfile.TemporaryDirectory() as pix_dir:
        for kind in kinds:
            decode = "auto" if kind == "cache" else kind
            pcache = PixelCache(pix_dir) if kind == "cache" else False

            def harness_images(decode: str = decode, pcache=pcache, st: EncodeStats | None = None,
                               ahead: bool = False) -> None:
                encode_groups(enc, [(bench.task(name), items) for name, items in by_task.items()], role="candidate",
                              bench=bench, ahead=ahead, stats=st, batch_size=batch, num_workers=workers,
                              workers=decode, pixel_cache=pcache)

            encode_items(enc, by_task[first][:batch], role="candidate", task=bench.task(first), bench=bench,
                         batch_size=batch, num_workers=workers, workers=decode)  # warm-up (kernels, allocator, pool)
            if kind == "cache":
                harness_images()  # fills the pixel cache (untimed)
                # each task's call started while the one before it runs, as evaluate and mrbench encode run
                # them on a GPU: timed first, so it is this process's first read of the cache
                stats["cache, ahead"] = EncodeStats()
                harness["cache, ahead"] = _timed(lambda: harness_images(st=stats["cache, ahead"], ahead=True), device)
            stats[kind] = EncodeStats()
            harness[kind] = _timed(lambda: harness_images(st=stats[kind]), device)
            if kind == "cache" and one_call:  # the same images in one call: the pipeline's steady rate
                every = [c for items in by_task.values() for c in items]
                stats["cache, one call"] = EncodeStats()
                harness["cache, one call"] = _timed(lambda: encode_items(
                    enc, every, role="candidate", task=bench.task(first), bench=bench, batch_size=batch,
                    num_workers=workers, pixel_cache=pcache, stats=stats["cache, one call"]), device)
    from mrbench.encoders.harness import load_rgb

    sample = [c for c in by_task[first][:batch]]
    pix = torch.stack([enc.prepare_image(load_rgb(bench.image_path(c.image), c.id)) for c in sample]).to(device)
    reps = max(1, len(cands) // len(sample))

    def raw_images() -> None:
        with torch.inference_mode(), autocast(enc.device, enc.dtype):
            enc.encode_images(pix)

    raw_images()
    t_r = _timed(raw_images, device, reps)
    n_raw = reps * len(sample)
    t_rg = None
    if device.startswith("cuda"):  # the same forward replayed from a CUDA graph (what cuda_graphs=True runs)
        from mrbench.encoders.runtime import GraphedCall

        graphed = GraphedCall(enc.encode_images, label="raw")

        def raw_graphed() -> None:
            with torch.inference_mode(), autocast(enc.device, enc.dtype):
                graphed(pix)

        raw_graphed()
        t_rg = _timed(raw_graphed, device, reps)
        del graphed
    for kind, t_h in harness.items():
        label = f"images (warm pixel {kind})" if kind.startswith("cache") else f"images ({kind} decode)"
        rows.append(_row("openclip ViT-B/32", label, len(cands), t_h, n_raw, t_r, enc, stats[kind]))
        if kind == "cache, ahead" and len({id(c) for _, c in cands}) == len(cands):
            rows[-1]["first_read"] = True  # the process's first read of the just-filled pixel cache
            # (not with a cycled pool: the fill itself re-reads the entries it has just written)
        if t_rg is not None:
            rows[-1]["raw_graphed_per_s"] = round(n_raw / t_rg, 1)

    t2i = bench.task("t2i")
    texts = t2i.queries
    texts = (texts * (1 + n_texts // max(1, len(texts))))[:n_texts]
    encode_items(enc, texts[: 2 * batch], role="query", task=t2i, bench=bench, batch_size=batch, num_workers=workers)
    st = EncodeStats()
    t_h = _timed(lambda: encode_items(enc, texts, role="query", task=t2i, bench=bench, batch_size=batch,
                                      num_workers=workers, stats=st), device)
    batch_texts = [q.text for q in texts[:batch]]
    tokens = enc.tokenizer(batch_texts).to(device)

    def raw_tokens() -> None:
        with torch.inference_mode(), autocast(enc.device, enc.dtype):
            enc.encode_tokens(tokens)

    def raw_texts() -> None:
        with torch.inference_mode(), autocast(enc.device, enc.dtype):
            enc.encode_texts(batch_texts)

    raw_tokens()
    raw_texts()
    reps = max(1, len(texts) // batch)
    t_r = _timed(raw_tokens, device, reps)
    t_rt = _timed(raw_texts, device, reps)
    row = _row("openclip ViT-B/32", "texts", len(texts), t_h, reps * batch, t_r, enc, st)
    row["raw_incl_tokenize_per_s"] = round(reps * batch / t_rt, 1)
    row["ratio_vs_raw_incl_tokenize"] = round((len(texts) / t_h) / (reps * batch / t_rt), 3)
    rows.append(row)
    return rows


def _qwen2vl_2b_dir(path: Path, device: str, size: str) -> Path:
    """A Qwen2-VL checkpoint with random weights: Qwen2-VL-2B's shapes (``size="2b"``) or tiny."""
    import torch
    import transformers

    from tests.fixtures.tiny_qwen2vl import SPECIAL_TOKENS, build_tiny_qwen2vl, build_tokenizer

    if size == "tiny":
        return build_tiny_qwen2vl(path, with_ret=True)
    tok = build_tokenizer(with_ret=True)
    ids = {t: tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    cfg = transformers.Qwen2VLConfig(
        text_config=dict(vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                         num_attention_heads=12, num_key_value_heads=2, max_position_embeddings=32768,
                         tie_word_embeddings=True,
                         rope_scaling={"type": "mrope", "mrope_section": [16, 24, 24]}, rope_theta=1e6,
                         bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"],
                         pad_token_id=ids["<|endoftext|>"]),
        vision_config=dict(depth=32, embed_dim=1280, hidden_size=1536, num_heads=16, mlp_ratio=4, patch_size=14,
                           spatial_merge_size=2, temporal_patch_size=2),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
    )
    with torch.device(device):
        model = transformers.Qwen2VLForConditionalGeneration._from_config(cfg, dtype=torch.bfloat16)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    del model
    px = 448 * 448
    ip = transformers.Qwen2VLImageProcessor(min_pixels=px, max_pixels=px)
    proc = transformers.Qwen2VLProcessor(image_processor=ip, tokenizer=tok,
                                         video_processor=transformers.Qwen2VLVideoProcessor())
    proc.save_pretrained(path)
    return path


def bench_ret(bench, device: str, n_queries: int, batch: int, workers: int, size: str, summary: int,
              kinds: tuple[str, ...] = ("auto",)) -> list[dict]:
    import torch

    from mrbench.encoders.generative import RetEncoder, generate_summaries, ret_embeddings
    from mrbench.encoders.harness import encode_items

    with tempfile.TemporaryDirectory() as d:
        model_dir = _qwen2vl_2b_dir(Path(d) / "qwen2vl", device, size)
        enc = RetEncoder(str(model_dir), device=device, batch_size=batch, max_summary_tokens=summary,
                         precision="bf16" if device.startswith("cuda") else "fp32")
    task = bench.task("it2i")
    items = task.queries[:n_queries]
    harness: dict[str, float] = {}
    for kind in kinds:
        encode_items(enc, items[:batch], role="query", task=task, bench=bench, batch_size=batch, num_workers=workers,
                     workers=kind)
        harness[kind] = _timed(lambda: encode_items(enc, items, role="query", task=task, bench=bench,
                                                    batch_size=batch, num_workers=workers, workers=kind), device)

    from mrbench.encoders.generative import build_ret_prompts, prepare_ret_batch
    from mrbench.encoders.harness import load_rgb
    from mrbench.encoders.runtime import autocast

    batches = []
    for i in range(0, len(items), batch):  # the harness's own batches, prepared up front on the device
        chunk = items[i : i + batch]
        prompts = build_ret_prompts([q.text for q in chunk],
                                    [load_rgb(bench.image_path(q.image), q.id) for q in chunk],
                                    [task.query_instruction] * len(chunk), template=enc.prompt_template,
                                    system_prompt=enc.system_prompt)
        batches.append(prepare_ret_batch(enc.processor, prompts, max_length=enc.max_length,
                                         max_summary_tokens=summary).to(device))

    def raw() -> None:
        with torch.inference_mode(), autocast(enc.device, enc.dtype):
            for pb in batches:
                s = generate_summaries(enc.model, enc.processor, pb, summary, do_sample=False, stop_ids=enc.stop_ids)
                ret_embeddings(enc.model, pb, s.summary_ids, ret_token_id=enc.ret_token_id,
                               pad_token_id=enc.pad_token_id)

    t_r = _timed(raw, device)
    label = "ret Qwen2-VL-2B-shaped" if size == "2b" else "ret tiny Qwen2-VL"
    return [_row(label, f"image+text queries ({kind} decode)", len(items), t_h, len(items), t_r, enc)
            for kind, t_h in harness.items()]


def _row(model: str, what: str, n_h: int, t_h: float, n_r: int, t_r: float, enc, stats=None) -> dict:
    h, r = n_h / t_h, n_r / t_r
    row = {"model": model, "items": what, "harness_items": n_h, "harness_s": round(t_h, 3),
           "harness_per_s": round(h, 1), "raw_items": n_r, "raw_s": round(t_r, 3), "raw_per_s": round(r, 1),
           "ratio": round(h / r, 3), "device": enc.device, "precision": enc.meta.extra.get("precision"),
           "batch_size": enc.batch_size}
    if stats is not None:  # where the harness's wall went: waiting for inputs, and in (or waiting on) the encoder
        row |= {"input_wait_s": round(stats.input_wait_seconds, 3), "encoder_s": round(stats.encode_seconds, 3),
                "read_wait_s": round(stats.read_wait_seconds, 3), "stage_s": round(stats.stage_seconds, 3),
                "tokenize_s": round(stats.tokenize_seconds, 3), "startup_s": round(stats.startup_seconds, 3),
                "gc_s": round(stats.gc_seconds, 3)}
        # the rate once each call has started (its start-up, a fixed latency per call, left out): informative
        if t_h > stats.startup_seconds:
            row["steady_ratio"] = round(n_h / (t_h - stats.startup_seconds) / r, 3)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--families", default="openclip,ret")
    ap.add_argument("--n-images", type=int, default=512, help="candidate images to encode; beyond MRBench-Synth's "
                    "4,205 the pool is cycled (each image a further item), so a rate can be timed over seconds")
    ap.add_argument("--n-queries", type=int, default=32)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--ret-batch", type=int, default=16)
    ap.add_argument("--ret-size", default="tiny", choices=["tiny", "2b"])
    ap.add_argument("--summary-tokens", type=int, default=32)
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--decode", default="auto", help="comma-separated image paths to time: auto,thread,process,gpu "
                    "(decode worker kinds) and cache (a warm pixel cache)")
    ap.add_argument("--n-texts", type=int, default=8192)
    ap.add_argument("--one-call", action="store_true", help="with cache in --decode: also time every image in one "
                    "encode_items call (the pipeline's steady rate, without the per-task start and drain)")
    ap.add_argument("--eager", action="store_true", help="A/B: open_clip without CUDA graphs (cuda_graphs=False)")
    ap.add_argument("--sync", action="store_true", help="A/B: the harness calls encode() and waits for each batch "
                    "instead of queueing the next one first (encode_async)")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    import mrbench
    import torch

    workers = args.workers if args.workers is not None else min(16, os.cpu_count() or 1)
    if args.sync:
        from mrbench.encoders import harness

        harness.async_encode_of = lambda encoder: None
    bench = mrbench.load_benchmark("mrbench-synth")
    rows: list[dict] = []
    fams = args.families.split(",")
    from mrbench.data.io import gc_frozen

    # as evaluate runs its encode calls: the objects alive before them (torch's, the encoder's, the
    # benchmark's) kept out of the cyclic collector's passes, refrozen before each timed call (see _timed)
    with gc_frozen() as refreeze:
        _REFREEZE[0] = refreeze
        if "openclip" in fams:
            rows += bench_openclip(bench, args.device, args.n_images, args.batch, workers,
                                   tuple(args.decode.split(",")), n_texts=args.n_texts, one_call=args.one_call,
                                   graphs=not args.eager)
        if "ret" in fams:
            rows += bench_ret(bench, args.device, args.n_queries, args.ret_batch, workers, args.ret_size,
                              args.summary_tokens, tuple(args.decode.split(",")))
    machine = {"platform": platform.platform(), "cpu_count": os.cpu_count(), "torch": torch.__version__,
               "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None, "workers": workers}
    for r in rows:
        print(f"{r['model']:<26} {r['items']:<34} harness {r['harness_per_s']:>9.1f}/s  raw {r['raw_per_s']:>9.1f}/s  "
              f"ratio {r['ratio']:.2f}  ({r['device']}, {r['precision']}, batch {r['batch_size']})")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"machine": machine, "args": vars(args) | {"out": str(args.out)}, "rows": rows},
                                       indent=2))


if __name__ == "__main__":
    main()
