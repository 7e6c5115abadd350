"""``mrbench build hf``: a multi-grain benchmark from an image–caption dataset (Hugging Face ``datasets``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mrbench.cli.build import BUILD_REPORT_HINT
from mrbench.cli.common import handle_errors


@handle_errors(interrupted=BUILD_REPORT_HINT)
def hf(
    dataset: Annotated[str, typer.Option("--dataset", help="Imagefolder directory (images + metadata.jsonl/csv), Parquet "
                                         "file or directory, or a hub id (online only).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Directory to write the benchmark to.")],
    image_column: Annotated[str, typer.Option(help="Column holding the images (Image feature, file paths or bytes).")] = "image",
    caption_column: Annotated[str, typer.Option(help="Column holding a caption or a list of captions per image.")] = "caption",
    split: Annotated[str, typer.Option(help="Split of the source dataset to read.")] = "train",
    config: Annotated[str | None, typer.Option(help="Dataset configuration name (hub datasets).")] = None,
    per_task: Annotated[int, typer.Option(help="Queries kept per task (drawn from the eligible ones).")] = 250,
    min_grains: Annotated[int, typer.Option(help="A query is eligible with at least this many grains.")] = 2,
    extractor: Annotated[str, typer.Option(help="Grain extractor for captions: lexicon (offline rules), mllm (a local "
                                           "vision-language model, --extractor-model) or annotations (--annotations).")] = "lexicon",
    extractor_model: Annotated[str | None, typer.Option(help="Model directory for --extractor mllm (Qwen2-VL / Qwen2.5-VL).")] = None,
    annotations: Annotated[Path | None, typer.Option(help="JSONL of grains by caption ({\"text\": caption, \"grains\": [...]} "
                                                     "per line); overrides the extractor for the captions it lists.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the draws; the same inputs and seed give the same fingerprint.")] = 0,
    heldout: Annotated[float, typer.Option(help="Fraction of the images held out as a train benchmark at <output>-train "
                                           "(0: none).")] = 0.0,
    max_images: Annotated[int | None, typer.Option(help="Read at most this many rows (the first ones).")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace existing benchmark directories (ones holding manifest.json; never a folder of other files).")] = False,
) -> None:
    """Build a two-task benchmark (t2i: caption → image, i2t: image → caption) from any image–caption dataset: queries with at least --min-grains grains, --per-task of them, all images / captions as the pools, a fingerprint and build_report.json; --heldout writes a disjoint train part."""
    from mrbench.builders.hf import build_hf

    bench, report = build_hf(dataset, output, image_column=image_column, caption_column=caption_column, split=split,
                             config=config, per_task=per_task, min_grains=min_grains, extractor=extractor, extractor_model=extractor_model,
                             annotations=annotations, seed=seed,
                             heldout=heldout, max_images=max_images, overwrite=overwrite)
    print(f"read {report['rows_read']} rows: {report['images']} images, {report['captions']} captions")
    for name, r in report["tasks"].items():
        print(f"{name}: {r['kept']} of {r['eligible']} eligible queries, {r['candidates']} candidates; "
              f"by grain count {r['by_grain_count']}")
    ho = report.get("heldout")
    if ho:
        print(f"held out {ho['train_images']} images ({ho['train_captions']} captions) as a train benchmark at "
              f"{ho['output']}; fingerprint {ho['train_fingerprint']}")
    print(f"wrote {output}; fingerprint {bench.fingerprint}")
