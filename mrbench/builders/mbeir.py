"""``mrbench build mbeir``: rebuild an MRBench-style multi-grain benchmark from a local M-BEIR copy.

For each M-BEIR task (default: COCO text→image, COCO image→text, NIGHTS image→image, CIRR
(image+text)→image, the paper's four), read its test queries, *local* candidate pool, qrels and
instruction (:mod:`mrbench.builders.mbeir_reader`), give every query its grains, keep the queries with
at least ``min_grains`` grains, draw ``per_task`` of them, and write a benchmark in mrbench's format
with the task's whole local pool and the chosen queries' qrels.

Where a query's grains come from (documented, deterministic):

* a query with text (text→image, image+text→image): the extractor on the query text;
* an image-only query (image→text, image→image): the extractor on the *query image's own text*,
  which M-BEIR holds as the texts of its relevant candidates when those are captions (COCO
  image→text): the relevant caption with the most grains (ties: the smallest candidate id) — its text
  is stored in ``meta["grain_source_text"]``. Image→image tasks (NIGHTS) have no such text: with an
  extractor that reads images (``mllm``: :meth:`~mrbench.grains.mllm.MLLMExtractor.extract_images`)
  the grains come from the query image itself (``meta["grain_source"] = "image"``); otherwise give
  grains by query id with ``annotations``, or the task has no eligible query and the build stops,
  naming it.
* ``annotations`` (a JSONL, :mod:`mrbench.grains.annotations`, ``id`` = the M-BEIR ``qid``) overrides
  the extractor for every query it lists; ``extractor="annotations"`` uses it alone.

Selection (:func:`mrbench.builders.selection.select_ids`, shared with ``build hf``): the eligible
``qid``s are shuffled with a generator seeded by ``(seed, task)``, the first ``per_task`` are kept and
written in ``qid`` order, so the same inputs and seed give byte-identical
files and the same fingerprint. Instructions are never random (the first prompt of the task's row).
The build report (counts per task and grain count, how many queries were eligible, what the reader
dropped) goes to ``build_report.json`` and the manifest's metadata.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from mrbench.builders.selection import by_grain_count, richest, select_ids
from mrbench.data.schema import Benchmark, Candidate, Grain, Query, Task
from mrbench.errors import BenchmarkError

DEFAULT_TASKS: tuple[str, ...] = ("mscoco_task0", "mscoco_task3", "nights_task4", "cirr_task7")
TASK_NAMES: dict[str, str] = {
    "mscoco_task0": "coco_t2i", "mscoco_task3": "coco_i2t", "nights_task4": "nights_i2i", "cirr_task7": "cirr_it2i",
}
"""Task names in the written benchmark (other M-BEIR tasks keep their M-BEIR name)."""
REPORT_FILE = "build_report.json"
IMAGE_SOURCE = "<image>"
"""Marks a query whose grains were read off its own image."""
_MODALITY = {"text": "text", "image": "image", "image,text": "image+text"}


def _modality(m: str) -> str:
    return _MODALITY.get(m, m)


def _grains_for(task: Any, extractor: Any, annotations: Any,
                root: Path) -> tuple[list[list[Grain]], list[str | None]]:
    """Grains of every query of an :class:`~mrbench.builders.mbeir_reader.MBeirTask`, and where they
    came from: the text they were extracted from, ``IMAGE_SOURCE`` for the query image, ``None``
    for annotations or no source.

    ``annotations`` (an :class:`~mrbench.grains.annotations.AnnotationsExtractor`) wins for every query
    whose ``qid`` it lists; ``extractor`` ``None`` means annotations only (a missing id is an error).
    ``root`` resolves query image paths for an extractor with ``extract_images``."""
    grains: list[list[Grain] | None] = []
    sources: list[str | None] = []
    cand_text = {c.did: c.text for c in task.candidates}
    reads_images = hasattr(extractor, "extract_images")
    image_todo: list[int] = []
    for q in task.queries:
        if annotations is not None and (extractor is None or annotations.has_id(q.qid)):
            grains.append(annotations.for_id(q.qid))
            sources.append(None)
        elif q.text:
            grains.append(None)  # extracted below, in one batch
            sources.append(q.text)
        else:
            texts = [t for _, t in sorted((d, cand_text.get(d)) for d, g in task.qrels.get(q.qid, {}).items() if g > 0) if t]
            if not texts and reads_images and q.image:
                image_todo.append(len(grains))
                grains.append([])
                sources.append(IMAGE_SOURCE)
                continue
            found = extractor.extract(texts) if texts else []
            best = richest(found) if found else None
            grains.append(found[best] if best is not None else [])
            sources.append(texts[best] if best is not None else None)
    if image_todo:
        for i, g in zip(image_todo, extractor.extract_images([root / task.queries[i].image for i in image_todo])):
            grains[i] = g
    todo = [s for g, s in zip(grains, sources) if g is None]
    extracted = iter(extractor.extract(todo)) if todo else iter(())
    return [g if g is not None else next(extracted) for g in grains], sources


def build_mbeir(
    mbeir_dir: str | Path,
    output: str | Path,
    *,
    tasks: Sequence[str] = DEFAULT_TASKS,
    per_task: int = 250,
    min_grains: int = 2,
    extractor: str = "lexicon",
    extractor_model: str | None = None,
    extractor_kwargs: dict[str, Any] | None = None,
    annotations: str | Path | None = None,
    seed: int = 0,
    split: str = "test",
    image_root: str | Path | None = None,
    skip_missing: bool = False,
    overwrite: bool = False,
    name: str = "mrbench-mbeir",
    progress: Callable[[str], None] | None = None,
) -> tuple[Benchmark, dict[str, Any]]:
    """Build the benchmark into ``output`` (atomically) and return ``(benchmark, report)``.

    Raises :class:`~mrbench.errors.BenchmarkError` (one line) for a missing or malformed M-BEIR file
    (file and line), missing images (count and first paths; ``skip_missing`` drops them and counts),
    and a task without any eligible query (it names the task and what to do).

    Every image of every query and candidate read is opened and fully decoded with Pillow, once per
    file (on up to 8 threads), before any grain is extracted: an image that does not decode (zero
    bytes, truncated, not an image) is handled like a missing one, never copied into the benchmark —
    an error naming the *input* file, the M-BEIR id that uses it and the reason, or, with
    ``skip_missing``, its queries and candidates are dropped and counted in ``build_report.json``
    (each task's ``reader``: ``undecodable_images``, ``undecodable_image_examples``,
    ``dropped_*_missing_image``).
    """
    from mrbench.builders.mbeir_reader import read_task
    from mrbench.data.io import MANIFEST, atomic_write_text, check_output_dir, save_benchmark
    from mrbench.grains.extract import get_extractor

    if per_task < 1:
        raise BenchmarkError(f"--per-task {per_task}: must be at least 1")
    if min_grains < 0:
        raise BenchmarkError(f"--min-grains {min_grains}: must be >= 0")
    check_output_dir(output, overwrite, marker=MANIFEST, what="a benchmark")  # now, not once every task is read
    if extractor == "annotations" and annotations is None:
        raise BenchmarkError("--extractor annotations needs --annotations FILE (a JSONL with the M-BEIR qid as 'id')")
    ann = get_extractor("annotations", path=annotations) if annotations is not None else None
    if extractor == "mllm" and not extractor_model:
        raise BenchmarkError("--extractor mllm needs --extractor-model DIR (a local Qwen2-VL / Qwen2.5-VL directory)")
    ex = None if extractor == "annotations" else get_extractor(
        extractor, **({"model": extractor_model} if extractor == "mllm" else {}), **(extractor_kwargs or {}))
    root = Path(image_root) if image_root is not None else Path(mbeir_dir)
    out_tasks: list[Task] = []
    report: dict[str, Any] = {"source": "M-BEIR", "split": split, "per_task": per_task, "min_grains": min_grains,
                              "extractor": extractor, "extractor_model": extractor_model, "annotations": str(annotations) if annotations else None,
                              "seed": seed, "tasks": {}}
    for mname in tasks:
        if progress:
            progress(f"reading {mname}")
        mt = read_task(mbeir_dir, mname, split, image_root=image_root, skip_missing=skip_missing, decode_images=True)
        grains, sources = _grains_for(mt, ex, ann, root)
        eligible = [i for i, g in enumerate(grains) if len(g) >= min_grains]
        tname = TASK_NAMES.get(mname, mname)
        if not eligible:
            if not any(sources) and ann is not None and not any(ann.has_id(q.qid) for q in mt.queries):
                hint = (f"its queries are images without text and none of the ids in --annotations {annotations} is "
                        f"a query id of {mname} (expected M-BEIR qids such as {mt.queries[0].qid!r}, from "
                        f"{mt.files.queries.name}): key the file's lines by those qids")
            elif not any(sources):
                hint = ("its queries are images without text: give their grains by query id with --annotations FILE "
                        "(JSONL lines {\"id\": qid, \"text\": ..., \"grains\": [...]})")
            else:
                hint = "lower --min-grains or use another extractor"
            raise BenchmarkError(f"M-BEIR task {mname}: none of its {len(mt.queries)} queries has >= {min_grains} grains "
                                 f"({extractor} extractor); {hint}")
        keep = set(select_ids([mt.queries[i].qid for i in eligible], per_task, seed, mname))
        chosen = sorted((i for i in eligible if mt.queries[i].qid in keep), key=lambda i: mt.queries[i].qid)
        queries = []
        for i in chosen:
            q = mt.queries[i]
            meta: dict[str, Any] = {"mbeir_task": mname, "mbeir_qid": q.qid}
            if sources[i] == IMAGE_SOURCE:
                meta["grain_source"] = "image"
            elif sources[i] and sources[i] != q.text:
                meta["grain_source_text"] = sources[i]
            queries.append(Query(id=q.qid, text=q.text, image=q.image, grains=list(grains[i]), meta=meta))
        qids = {q.id for q in queries}
        inst = mt.instruction
        out_tasks.append(Task(
            name=tname,
            query_modality=_modality(mt.query_modality),
            candidate_modality=_modality(mt.cand_modality),
            queries=queries,
            candidates=[Candidate(id=c.did, text=c.text, image=c.image) for c in mt.candidates],
            qrels={qid: rel for qid, rel in mt.qrels.items() if qid in qids},
            query_instruction=inst.text if inst else None,
            description=f"M-BEIR {mname} ({split}), queries with >= {min_grains} grains",
            metadata={"mbeir_task": mname, "dataset_id": mt.dataset_id, "task_id": mt.task_id,
                      "instruction": {"index": inst.index, "key": list(inst.key) if isinstance(inst.key, tuple) else inst.key,
                                      "available": inst.n_available} if inst else None},
        ))
        report["tasks"][tname] = {
            "mbeir_task": mname, "queries_read": mt.report.get("queries_read"), "eligible": len(eligible),
            "kept": len(queries), "candidates": len(mt.candidates),
            "grains_from_images": sum(s == IMAGE_SOURCE for s in sources),
            "by_grain_count": by_grain_count(queries),
            "reader": {k: v for k, v in mt.report.items() if k != "missing_image_examples"},
        }
        if len(queries) < per_task:
            report["tasks"][tname]["short_by"] = per_task - len(queries)
    bench = Benchmark(name=name, version="1", tasks=out_tasks, root=root, split=split,
                      description=f"multi-grain queries (>= {min_grains} grains) from M-BEIR {split}",
                      metadata={"build": report})
    if progress:
        progress("writing")
    bench = save_benchmark(bench, Path(output), overwrite=overwrite)
    report["fingerprint"] = bench.fingerprint
    atomic_write_text(Path(output) / REPORT_FILE, json.dumps(report, indent=2) + "\n")
    return bench, report
