"""``mrbench build …``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mrbench.cli.common import handle_errors, parse_names

NOTHING_WRITTEN_HINT = "nothing was written (the unfinished output is removed); re-run the same command"
"""Ctrl-C hint of ``build synth`` and ``export``: the output directory is staged and renamed only when complete."""
BUILD_REPORT_HINT = ("an unfinished output is removed; re-run the same command, adding --overwrite if it says "
                     "the output exists")
"""Ctrl-C hint of ``build mbeir`` / ``build hf``: the benchmark is staged, but build_report.json (and a
``--heldout`` train part) are written after it: a build stopped in between leaves a finished directory."""


@handle_errors(interrupted=NOTHING_WRITTEN_HINT)
def synth(
    output: Annotated[Path, typer.Option("--output", "-o", help="Directory to write the benchmark to.")],
    size: Annotated[str, typer.Option(help="'default' (~250 queries per task, ~1k in all), 'tiny', or queries per task (at most 5000).")] = "default",
    seed: Annotated[int, typer.Option(help="Random seed; the same seed gives byte-identical files.")] = 0,
    split: Annotated[str, typer.Option(help="'test' or 'train' (disjoint scenes).")] = "test",
    image_size: Annotated[int, typer.Option(help="Rendered image side in pixels (32 to 1024).")] = 128,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing benchmark directory (one holding manifest.json; never a folder of other files).")] = False,
) -> None:
    """Build MRBench-Synth: procedural scenes with exact, scene-graph relevance over four tasks
    (text→image, image→text, image→image, image+text→image) and grain-contrast distractors."""
    from mrbench.builders.synth import MAX_QUERIES_PER_TASK, build_synth, check_image_size
    from mrbench.errors import MrbenchError
    from mrbench.report.progress import RichReporter

    sz: str | int = size
    if size not in ("default", "tiny"):
        try:
            sz = int(size)
        except ValueError:
            raise MrbenchError(f"--size {size!r}: use 'default', 'tiny' or a number of queries per task") from None
        if not 1 <= sz <= MAX_QUERIES_PER_TASK:
            raise MrbenchError(f"--size {size}: out of range; use 'default', 'tiny' or 1 to {MAX_QUERIES_PER_TASK} "
                               "queries per task")
    check_image_size(image_size, "--image-size")
    if split not in ("test", "train"):
        raise MrbenchError(f"--split {split!r}: use 'test' or 'train'")
    rep = RichReporter()
    bench = build_synth(output, size=sz, seed=seed, split=split, image_size=image_size, overwrite=overwrite,
                        progress=rep.builder_callback())
    counts = ", ".join(f"{t.name} {len(t.queries)} q / {len(t.candidates)} c" for t in bench.tasks)
    print(f"wrote {output}: {counts}; fingerprint {bench.fingerprint}")


@handle_errors(interrupted=BUILD_REPORT_HINT)
def mbeir(
    mbeir_dir: Annotated[Path, typer.Option("--mbeir-dir", help="Local M-BEIR copy (query/, cand_pool/local/, qrels/, instructions/, mbeir_images/).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Directory to write the benchmark to.")],
    per_task: Annotated[int, typer.Option(help="Queries kept per task (drawn from the eligible ones).")] = 250,
    min_grains: Annotated[int, typer.Option(help="A query is eligible with at least this many grains.")] = 2,
    extractor: Annotated[str, typer.Option(help="Grain extractor: lexicon (offline rules, texts only), mllm (a local vision-language model, --extractor-model; also reads the images of image-only queries such as NIGHTS) or annotations.")] = "lexicon",
    extractor_model: Annotated[str | None, typer.Option(help="Model directory for --extractor mllm (Qwen2-VL / Qwen2.5-VL).")] = None,
    annotations: Annotated[Path | None, typer.Option(help="JSONL of grains by M-BEIR qid (overrides the extractor for the queries it lists; needed for image→image tasks unless --extractor mllm).")] = None,
    tasks: Annotated[str, typer.Option(help="Comma-separated M-BEIR tasks.")] = "mscoco_task0,mscoco_task3,nights_task4,cirr_task7",
    seed: Annotated[int, typer.Option(help="Seed of the per-task draw; the same inputs and seed give the same fingerprint.")] = 0,
    split: Annotated[str, typer.Option(help="M-BEIR split to read.")] = "test",
    image_root: Annotated[Path | None, typer.Option(help="Where image paths resolve (default: --mbeir-dir).")] = None,
    skip_missing: Annotated[bool, typer.Option(help="Drop queries and candidates whose image file is missing or cannot be decoded (counted in the report).")] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing benchmark directory (one holding manifest.json; never a folder of other files).")] = False,
) -> None:
    """Build an MRBench-style benchmark from a local M-BEIR copy: per task, the test queries with at
    least --min-grains grains, --per-task of them, the task's local pool and qrels, the grains stored
    with each query, a fingerprint and build_report.json."""
    from mrbench.builders.mbeir import build_mbeir

    bench, report = build_mbeir(mbeir_dir, output, tasks=parse_names(tasks, "--tasks", "mscoco_task0,cirr_task7"),
                                per_task=per_task, min_grains=min_grains, extractor=extractor,
                                extractor_model=extractor_model, annotations=annotations,
                                seed=seed, split=split, image_root=image_root, skip_missing=skip_missing,
                                overwrite=overwrite)
    for name, r in report["tasks"].items():
        print(f"{name}: {r['kept']} of {r['eligible']} eligible queries (of {r['queries_read']} read), "
              f"{r['candidates']} candidates; by grain count {r['by_grain_count']}")
    print(f"wrote {output}; fingerprint {bench.fingerprint}")


@handle_errors(interrupted=NOTHING_WRITTEN_HINT)
def export(
    benchmark: Annotated[str, typer.Argument(help="Built-in name or benchmark directory.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Directory to write.")],
    format: Annotated[str, typer.Option("--format", "-f", help="'parquet' (self-contained, images inside; loads with "
                                        "datasets.load_dataset('parquet', ...)) or 'dir' (the plain benchmark directory).")] = "parquet",
    overwrite: Annotated[bool, typer.Option(help="Replace an existing benchmark directory (one holding manifest.json; never a folder of other files).")] = False,
) -> None:
    """Export a benchmark as Parquet (for the Hugging Face hub or any dataframe tool) or as a plain
    directory. 'mrbench evaluate -b <export>' reads either; the fingerprint is the same."""
    from mrbench.data.io import save_benchmark
    from mrbench.data.parquet import export_parquet
    from mrbench.data.registry import load_benchmark
    from mrbench.errors import MrbenchError

    if format not in ("parquet", "dir"):
        raise MrbenchError(f"--format {format!r}: use 'parquet' or 'dir'")
    bench = load_benchmark(benchmark)
    fp = bench.fingerprint
    if format == "parquet":
        export_parquet(bench, output, overwrite=overwrite)
    else:
        save_benchmark(bench, output, overwrite=overwrite)
    print(f"wrote {output} ({format}); fingerprint {fp}")
