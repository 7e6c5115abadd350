"""Content fingerprint of a benchmark.

sha256 over a canonical serialisation: tasks sorted by name; for each task its definition
(modalities, instructions, relevance level), its queries and candidates sorted by id, and its qrels
sorted by (qid, did). Each record is compact JSON with sorted keys (UTF-8), one per line. An item's
image enters as a hash of its content, never its path, so the same content stored as loose files or
inside Parquet gives the same fingerprint on any machine:

* PNG (lossless) images are hashed by their *decoded pixels* (mode, size, raw pixel bytes), because
  the compressed bytes depend on the deflate implementation (zlib, zlib-ng, Apple's zlib) of the
  machine that wrote them, while the pixels do not;
* every other format (JPEG above all, whose decoders may differ in the last bit between libjpeg
  versions) is hashed by its file bytes.

Benchmark name, version, description and split are labels, not content, and are left out.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from pathlib import Path
from typing import Any, Callable, Iterator

from mrbench.data.jsonenc import dumps_function
from mrbench.data.schema import Benchmark, Task

FINGERPRINT_ALGO = "sha256/canonical-jsonl-v1/png-pixels"


_dumps = dumps_function(sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
"""The canonical serialisation as text (one reused encoder: see :mod:`mrbench.data.jsonenc`)."""


def canonical_json(obj: Any) -> bytes:
    """Compact, key-sorted, UTF-8 JSON used for hashing."""
    return _dumps(obj).encode()


def image_sha256(path: Path) -> str:
    """Content hash of one image file, per the module docstring (pixels for PNG, bytes otherwise)."""
    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(8)
    if head == b"\x89PNG\r\n\x1a\n":
        from PIL import Image

        with Image.open(path) as im:
            im.load()
            return png_pixels_sha256(im)
    return file_sha256(path)


def png_pixels_sha256(im: Any) -> str:
    """The content hash of a PNG whose decoded image is ``im`` (a loaded PIL image): mode, size and raw
    pixel bytes. A builder that has just rendered ``im`` and writes it losslessly as PNG gets the hash
    of the file it writes without reading it back."""
    h = hashlib.sha256(f"png-pixels:{im.mode}:{im.size[0]}x{im.size[1]}:".encode())
    h.update(im.tobytes())
    return h.hexdigest()


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _task_records(task: Task, image_hash: Callable[[str], str]):
    yield {
        "task": task.name,
        "query_modality": task.query_modality,
        "candidate_modality": task.candidate_modality,
        "query_instruction": task.query_instruction,
        "candidate_instruction": task.candidate_instruction,
        "relevance_level": task.relevance_level,
    }
    for q in sorted(task.queries, key=lambda x: x.id):
        d = q.to_dict()
        d["image"] = image_hash(q.image) if q.image else None
        d["kind"] = "query"
        yield d
    for c in sorted(task.candidates, key=lambda x: x.id):
        d = c.to_dict()
        d["image"] = image_hash(c.image) if c.image else None
        d["kind"] = "candidate"
        yield d


def _qrels_lines(task: Task) -> Iterator[bytes]:
    """The task's qrels records, one query at a time: the lines ``canonical_json(["qrel", qid, did,
    grade]) + b"\n"`` sorted by ``(qid, did)``, byte for byte, built from each id's JSON string
    computed once (a synthetic benchmark with 15M graded pairs: 30 s of ``json.dumps`` calls before)."""
    enc: dict[str, str] = {}

    def js(s: str) -> str:
        e = enc.get(s)
        if e is None:
            e = enc[s] = json.dumps(s, ensure_ascii=False)
        return e

    for qid in sorted(task.qrels):
        docs = task.qrels[qid]
        head = '["qrel",' + js(qid) + ","
        yield "".join([f"{head}{js(did)},{int(docs[did])}]\n" for did in sorted(docs)]).encode()


def fingerprint(bench: Benchmark, image_hash: Callable[[str], str] | None = None) -> str:
    """Return ``"sha256:<hex>"`` for the benchmark's content.

    ``image_hash`` maps an item's image reference to the sha256 hex of its bytes; by default the
    file under ``bench.root`` is hashed (each distinct path once).
    """
    if image_hash is None:
        cache: dict[str, str] = {}

        def image_hash(rel: str) -> str:
            if rel not in cache:
                path = bench.image_path(rel)
                try:
                    cache[rel] = image_sha256(path)
                except OSError as e:
                    from mrbench.errors import BenchmarkError

                    raise BenchmarkError(
                        f"{path}: cannot read image ({e.strerror or e}); restore the file or rebuild the benchmark"
                    ) from None
            return cache[rel]

        _hash_images_ahead(bench, image_hash)

    h = hashlib.sha256()
    h.update(FINGERPRINT_ALGO.encode() + b"\n")
    for task in sorted(bench.tasks, key=lambda t: t.name):
        recs = _task_records(task, image_hash)
        while batch := list(itertools.islice(recs, 1 << 16)):  # canonical_json(rec) + b"\n" per record
            h.update(("\n".join(map(_dumps, batch)) + "\n").encode())
        for lines in _qrels_lines(task):
            h.update(lines)
    return "sha256:" + h.hexdigest()


def _hash_images_ahead(bench: Benchmark, image_hash: Callable[[str], str]) -> None:
    """Fill ``image_hash``'s cache for every image of ``bench`` on a thread pool (PNG decoding and
    sha256 release the GIL). The first error is raised here, as the serial pass would raise it."""
    import os
    from concurrent.futures import ThreadPoolExecutor

    rels = sorted({it.image for t in bench.tasks for it in (*t.queries, *t.candidates) if it.image})
    workers = min(8, os.cpu_count() or 1)
    if len(rels) < 64 or workers < 2:
        return
    with ThreadPoolExecutor(workers) as pool:
        for _ in pool.map(image_hash, rels, chunksize=64):
            pass
