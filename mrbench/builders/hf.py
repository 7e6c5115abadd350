"""``mrbench build hf``: a multi-grain benchmark from any image–caption dataset ``datasets`` can read.

Input: an imagefolder (images + ``metadata.jsonl``/``metadata.csv``), Parquet files (one file or a
directory of them), any other local directory ``datasets`` infers a builder for, or a hub id / builder
name (only when online: with ``HF_DATASETS_OFFLINE=1`` a hub id that is not cached fails with a message
saying to pass a local path). ``datasets`` is imported inside :func:`build_hf`; its progress bars are
off during the build (the previous setting restored after).

Output: a benchmark with two tasks over the same images and captions:

* ``t2i`` (text → image): a query is one caption; the candidates are all images.
* ``i2t`` (image → text): a query is one image; the candidates are all captions.

Conventions (documented, deterministic):

* **Images.** The image column may hold ``datasets`` ``Image`` values (read undecoded: the stored
  bytes, or the file they point to), file paths (relative ones resolve against the dataset directory)
  or raw bytes. PNG and JPEG bytes are written unchanged; other formats are re-encoded to PNG.
  Images with the same content are one image (its captions merged; counted as
  ``duplicate_images_merged``); content is what the benchmark fingerprint hashes
  (:mod:`mrbench.data.fingerprint`): decoded pixels for PNG (so a re-saved PNG copy is a duplicate),
  file bytes for JPEG. Every image is fully decoded at build, so a truncated or corrupt file fails
  there with one line naming its row and file (fix or drop that row), not later at evaluation.
  Image id = ``img<row>`` (zero padded) of the first row that holds it; file ``images/<id>.png|jpg``.
* **Captions.** The caption column may hold a string or a list of strings (COCO style). Blank
  captions and repeats within one image are dropped. Caption id = ``<image id>_c<j>`` (``j`` = its
  position among the image's kept captions). Rows without an image or without a caption are skipped
  and counted.
* **Relevance** (grade 1): a caption is relevant to the image it belongs to. Identical texts (after
  lower-casing and collapsing whitespace) under several images are relevant to all of them, so an
  encoder is never asked to separate two candidates it cannot tell apart.
* **Grains.** A ``t2i`` query's grains are the extractor's grains of its caption. An ``i2t`` query's
  grains are those of the image's caption with the most grains (ties: the first); that caption is
  stored in ``meta["grain_source_text"]``. A query is eligible with at least ``min_grains`` grains.
* **Selection** (as in :mod:`mrbench.builders.mbeir`): eligible queries are shuffled with
  ``random.Random(f"{seed}/{task}")``, the first ``per_task`` kept and written in id order, so the
  same inputs and seed give byte-identical files and the same fingerprint.
* **Held-out split.** ``heldout`` > 0 moves about ``heldout`` of the images (and their captions) to a
  second benchmark with split ``"train"`` written at ``<output>-train`` (a sibling directory). Images
  that share a caption (identical after lower-casing and collapsing whitespace, directly or through a
  chain of such captions) form one group and go to the same side, so no image *and no caption text*
  is in both parts. The groups (listed by their first image) are shuffled with
  ``random.Random(f"{seed}/heldout")`` and taken in that order while a group brings the train part
  closer to ``round(heldout * n_images)`` images: without shared captions exactly that many; with them
  approximately (the report gives the sizes, ``caption_groups`` and
  ``images_in_shared_caption_groups``). The train benchmark keeps *all* its eligible queries
  (``per_task`` sizes the test benchmark only); its pools are its own images and captions.

The build report (rows read, images, captions, eligible / kept per task, counts per grain count,
held-out sizes, fingerprints) is returned, stored in the manifest's metadata and written to
``build_report.json`` in each output directory. With ``heldout`` each part's report describes that
part: ``"part"`` (``"test"`` / ``"train"``), its own ``tasks`` and ``fingerprint``; both carry the
``heldout`` entry (sizes of both parts, the train part's tasks and fingerprint); rows, images and
captions count what was read. The two parts are written all or nothing: when the test part fails to
be written, the train part this run wrote is removed (and one it replaced with ``overwrite`` put back).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import random
import re
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mrbench.builders.selection import by_grain_count, richest, select_ids
from mrbench.data.schema import Benchmark, Candidate, Grain, Query, Task
from mrbench.errors import BenchmarkError

REPORT_FILE = "build_report.json"
TRAIN_SUFFIX = "-train"
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
_METADATA_FILES = ("metadata.jsonl", "metadata.csv")


def heldout_path(output: str | Path) -> Path:
    """Where the held-out (train) benchmark of ``output`` is written: ``<output>-train``."""
    p = Path(output)
    return p.with_name(p.name + TRAIN_SUFFIX)


@dataclass
class _Image:
    id: str
    rel: str
    captions: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- loading
def _looks_local(s: str) -> bool:
    """Whether ``s`` can only be a local path (a hub id is ``name`` or ``org/name``, no trailing slash)."""
    return (s.startswith(("/", "./", "../", "~", ".\\")) or s.endswith(("/", "\\")) or s.count("/") > 1
            or s.lower().endswith((".parquet", ".jsonl", ".csv", ".json", ".arrow")))


def _resolve_source(dataset: str, data_files: Any, split: str) -> tuple[str, dict[str, Any], Path | None]:
    """Return ``(path for load_dataset, extra kwargs, local directory for relative paths)``."""
    p = Path(dataset).expanduser()
    if p.exists():
        if p.is_file():
            if p.suffix.lower() == ".parquet":
                return "parquet", {"data_files": data_files or {split: str(p)}}, p.parent
            raise BenchmarkError(f"{p}: not a dataset this builder reads; pass a .parquet file, an imagefolder "
                                 "directory (images + metadata.jsonl) or a directory of Parquet files")
        files = [f for f in p.rglob("*") if f.is_file() and not any(part.startswith(".") for part in f.relative_to(p).parts)]
        has_meta = any(f.name in _METADATA_FILES for f in files)
        has_images = any(f.suffix.lower() in IMAGE_EXTENSIONS for f in files)
        if has_images and has_meta:
            kw: dict[str, Any] = {"data_files": data_files} if data_files else {"data_dir": str(p)}
            return "imagefolder", kw, p
        parquet = sorted(f for f in files if f.suffix.lower() == ".parquet")
        if parquet:
            if data_files:
                kw = {"data_files": data_files}
            elif all(f.suffix.lower() in (".parquet", ".md", ".json", ".txt") for f in files):
                kw = {"data_dir": str(p)}  # datasets infers the splits from the file names
            else:  # Parquet next to other files (images a path column points to): read the Parquet files only
                kw = {"data_files": {split: [str(f) for f in parquet]}}
            return "parquet", kw, p
        if not files:
            raise BenchmarkError(f"{p}: dataset directory is empty; pass an imagefolder (images + metadata.jsonl) or Parquet files")
        return str(p), ({"data_files": data_files} if data_files else {}), p
    if _looks_local(dataset):
        raise BenchmarkError(f"{dataset}: no such file or directory; pass an imagefolder directory, a Parquet file or a hub id")
    return dataset, ({"data_files": data_files} if data_files else {}), None


def _load(dataset: str, split: str, config: str | None, data_files: Any, cache_dir: str | Path | None) -> tuple[Any, str, Path | None]:
    import datasets

    path, kw, local = _resolve_source(str(dataset), data_files, split)
    if cache_dir is not None:
        kw["cache_dir"] = str(cache_dir)
    offline = bool(getattr(datasets.config, "HF_HUB_OFFLINE", False))
    try:
        dd = datasets.load_dataset(path, config, **kw)
    except BenchmarkError:
        raise
    except Exception as e:  # noqa: BLE001 - datasets raises many types (FileNotFoundError, DatasetNotFoundError, ConnectionError, ArrowInvalid ...)
        msg = " ".join(str(e).split())[:300]
        if local is None:
            hint = ("HF_DATASETS_OFFLINE is set, so hub datasets must already be cached; pass a local imagefolder or "
                    "Parquet path instead" if offline else "check the hub id (and --config), or pass a local path")
            hint += f" (no local file or directory {dataset!r} exists either)"
        else:
            hint = "check that it is an imagefolder (images + metadata.jsonl/csv) or Parquet files"
        raise BenchmarkError(f"{dataset}: cannot read dataset ({type(e).__name__}: {msg}); {hint}") from None
    if isinstance(dd, datasets.DatasetDict):
        if split not in dd:
            raise BenchmarkError(f"{dataset}: no split {split!r}; available splits: {', '.join(dd)}; pass --split")
        ds = dd[split]
    else:
        ds = dd
    return ds, path, local


# --------------------------------------------------------------------------- rows → images + captions
def _captions_of(value: Any, row: int, column: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) or v is None for v in value):
        raise BenchmarkError(f"row {row}, column {column!r}: holds {type(value).__name__}; expected a string or a list "
                             "of strings; pass the caption column with --caption-column")
    out: list[str] = []
    for v in value:
        t = " ".join((v or "").split())
        if t and t not in out:
            out.append(t)
    return out


def _source_of(value: Any) -> str | None:
    """The file an image cell came from, where the cell says (for messages)."""
    path = value.get("path") if isinstance(value, dict) else value if isinstance(value, str) else None
    return str(path) if path else None


def _image_bytes(value: Any, row: int, column: str, local: Path | None) -> bytes | None:
    """Raw bytes of one image cell (``None`` for an empty cell)."""
    if value is None:
        return None
    path = None
    if isinstance(value, dict):
        if value.get("bytes"):
            return bytes(value["bytes"])
        path = value.get("path")
    elif isinstance(value, (bytes, bytearray)):
        return bytes(value)
    elif isinstance(value, str):
        path = value
    elif hasattr(value, "save"):  # a decoded PIL image (should not happen: we read undecoded)
        buf = io.BytesIO()
        value.save(buf, format="PNG")
        return buf.getvalue()
    else:
        raise BenchmarkError(f"row {row}, column {column!r}: holds {type(value).__name__}; expected an image, a file "
                             "path or bytes; pass the image column with --image-column")
    if not path:
        return None
    p = Path(path)
    if not p.is_absolute() and local is not None:
        p = local / p
    try:
        return p.read_bytes()
    except OSError as e:
        raise BenchmarkError(f"row {row}, column {column!r}: cannot read image file {p} ({e.strerror or e})") from None


_EXIF_ORIENTATION = 0x0112


def _normalise_image(data: bytes, row: int, column: str, source: str | None = None) -> tuple[bytes, str, str]:
    """Return ``(bytes to write, extension, content hash)``: PNG/JPEG unchanged, anything else re-encoded
    to PNG; an image whose EXIF orientation tag says it is stored rotated or mirrored is turned upright
    (as viewers and ``datasets`` show it; the harness's loader reads pixels as stored) and written as
    PNG. The content hash is the benchmark fingerprint's hash of the file written
    (:mod:`mrbench.data.fingerprint`: decoded pixels for PNG, file bytes otherwise).
    ``source``: the file the bytes came from, named in the error for an unreadable image."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    from mrbench.data.fingerprint import png_pixels_sha256

    try:
        with Image.open(io.BytesIO(data)) as im:
            fmt = im.format
            if im.getexif().get(_EXIF_ORIENTATION, 1) not in (0, 1):
                im.load()
                up = ImageOps.exif_transpose(im)
                up = up.convert("RGBA" if "A" in up.getbands() else "RGB")
                buf = io.BytesIO()
                up.save(buf, format="PNG")
                return buf.getvalue(), ".png", png_pixels_sha256(up)
            if fmt == "PNG":
                im.load()
                return data, ".png", png_pixels_sha256(im)
            if fmt == "JPEG":
                im.load()  # decode it all: a truncated file fails here, naming its row, not at evaluation
                return data, ".jpg", hashlib.sha256(data).hexdigest()
            im.seek(0)
            im = im.convert("RGBA" if "A" in im.getbands() else "RGB")
            buf = io.BytesIO()
            im.save(buf, format="PNG")
            return buf.getvalue(), ".png", png_pixels_sha256(im)
    except (UnidentifiedImageError, OSError, ValueError) as e:
        why = re.sub(r"\s*<_io\.BytesIO object at 0x[0-9a-fA-F]+>", "", str(e)).strip() or type(e).__name__
        where = f" ({Path(source).name})" if source else ""
        raise BenchmarkError(f"row {row}, column {column!r}{where}: not a readable image ({why}); fix or drop that row") from None


def _read_rows(ds: Any, image_column: str, caption_column: str, local: Path | None, staging: Path,
               max_images: int | None) -> tuple[list[_Image], dict[str, int]]:
    import datasets

    n = len(ds) if max_images is None else min(len(ds), max_images)
    ds = ds.select(range(n)) if n < len(ds) else ds
    ds = ds.select_columns([image_column, caption_column])
    feat = ds.features[image_column]
    if isinstance(feat, datasets.Image) and feat.decode:
        ds = ds.cast_column(image_column, datasets.Image(decode=False))
    width = max(6, len(str(max(n - 1, 0))))
    images: list[_Image] = []
    by_hash: dict[str, _Image] = {}
    stats = {"rows_read": n, "rows_without_image": 0, "rows_without_caption": 0, "duplicate_images_merged": 0}
    (staging / "images").mkdir(parents=True, exist_ok=True)
    for row, rec in enumerate(ds):
        caps = _captions_of(rec[caption_column], row, caption_column)
        data = _image_bytes(rec[image_column], row, image_column, local)
        if data is None:
            stats["rows_without_image"] += 1
            continue
        if not caps:
            stats["rows_without_caption"] += 1
            continue
        out, ext, h = _normalise_image(data, row, image_column, _source_of(rec[image_column]))
        img = by_hash.get(h)
        if img is None:
            iid = f"img{row:0{width}d}"
            img = _Image(id=iid, rel=f"images/{iid}{ext}")
            (staging / img.rel).write_bytes(out)
            by_hash[h] = img
            images.append(img)
        else:
            stats["duplicate_images_merged"] += 1
        img.captions.extend(c for c in caps if c not in img.captions)
    return images, stats


# --------------------------------------------------------------------------- tasks
def _norm(text: str) -> str:
    return " ".join(text.lower().split())


def _tasks(images: list[_Image], grains: dict[tuple[str, int], list[Grain]], *, per_task: int | None, min_grains: int,
           seed: int, extractor: str, split_label: str) -> tuple[list[Task], dict[str, Any]]:
    """The t2i and i2t tasks over ``images`` (the images are the pool), and their report entries."""
    cap_ids: dict[tuple[str, int], str] = {(im.id, j): f"{im.id}_c{j}" for im in images for j in range(len(im.captions))}
    text_to_images: dict[str, list[str]] = {}
    text_to_caps: dict[str, list[str]] = {}
    for im in images:
        for j, c in enumerate(im.captions):
            key = _norm(c)
            if im.id not in text_to_images.setdefault(key, []):
                text_to_images[key].append(im.id)
            text_to_caps.setdefault(key, []).append(cap_ids[(im.id, j)])
    # t2i: one query per caption
    t2i_all: dict[str, Query] = {}
    for im in images:
        for j, c in enumerate(im.captions):
            g = grains[(im.id, j)]
            if len(g) >= min_grains:
                qid = cap_ids[(im.id, j)]
                t2i_all[qid] = Query(id=qid, text=c, grains=list(g), meta={"image_id": im.id})
    # i2t: one query per image, grains of its richest caption
    i2t_all: dict[str, Query] = {}
    for im in images:
        best = richest([grains[(im.id, j)] for j in range(len(im.captions))])
        g = grains[(im.id, best)]
        if len(g) >= min_grains:
            i2t_all[im.id] = Query(id=im.id, image=im.rel, grains=list(g),
                                   meta={"grain_source_text": im.captions[best], "grain_source_id": cap_ids[(im.id, best)]})
    report: dict[str, Any] = {}
    tasks: list[Task] = []
    image_cands = [Candidate(id=im.id, image=im.rel) for im in images]
    caption_cands = [Candidate(id=cap_ids[(im.id, j)], text=c, meta={"image_id": im.id})
                     for im in images for j, c in enumerate(im.captions)]
    for tname, pool, qmod, cmod, desc in (
        ("t2i", t2i_all, "text", "image", "caption → image"),
        ("i2t", i2t_all, "image", "text", "image → caption"),
    ):
        if not pool:
            raise BenchmarkError(f"task {tname} ({split_label}): no query has >= {min_grains} grains ({extractor} extractor, "
                                 f"{len(images)} images); lower --min-grains or check --caption-column")
        chosen = select_ids(list(pool), per_task, seed, tname)
        queries = [pool[q] for q in chosen]
        if tname == "t2i":
            qrels = {q.id: {iid: 1 for iid in text_to_images[_norm(q.text or "")]} for q in queries}
            cands = image_cands
        else:
            caps_of = {im.id: im.captions for im in images}
            qrels = {q.id: {cid: 1 for c in caps_of[q.id] for cid in text_to_caps[_norm(c)]} for q in queries}
            cands = caption_cands
        tasks.append(Task(name=tname, query_modality=qmod, candidate_modality=cmod, queries=queries, candidates=cands,
                          qrels=qrels, description=f"{desc}, queries with >= {min_grains} grains",
                          metadata={"source": "huggingface"}))
        report[tname] = {"eligible": len(pool), "kept": len(queries), "candidates": len(cands),
                         "by_grain_count": by_grain_count(queries)}
        if per_task is not None and len(queries) < per_task:
            report[tname]["short_by"] = per_task - len(queries)
    return tasks, report


def _caption_groups(images: list[_Image]) -> list[list[_Image]]:
    """The images joined by shared captions (union-find over normalised caption → images): two images
    are in one group when a chain of identical normalised captions links them. Groups are listed in the
    order of their first image, each group's images in input order."""
    parent = list(range(len(images)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first: dict[str, int] = {}
    for i, im in enumerate(images):
        for c in im.captions:
            j = first.setdefault(_norm(c), i)
            ri, rj = find(i), find(j)
            if ri != rj:
                parent[max(ri, rj)] = min(ri, rj)
    groups: dict[int, list[_Image]] = {}
    for i, im in enumerate(images):
        groups.setdefault(find(i), []).append(im)
    return list(groups.values())


def _heldout_split(images: list[_Image], heldout: float, seed: int) -> tuple[set[str], dict[str, Any]]:
    """The image ids of the held-out (train) part and the report entries of the split.

    Images sharing a caption (see :func:`_caption_groups`) go to the same side. The groups are shuffled
    with ``random.Random(f"{seed}/heldout")`` and taken in that order while a group brings the train
    part closer to ``round(heldout * n_images)`` images (with no shared captions: exactly the first
    ``round(heldout * n_images)`` shuffled images)."""
    groups = _caption_groups(images)
    random.Random(f"{seed}/heldout").shuffle(groups)
    target = round(heldout * len(images))
    train: set[str] = set()
    for g in groups:
        if len(train) >= target:
            break
        if abs(len(train) + len(g) - target) < abs(len(train) - target):
            train.update(im.id for im in g)
    if not train or len(train) >= len(images):
        biggest = max(len(g) for g in groups)
        raise BenchmarkError(
            f"--heldout {heldout}: holds out {len(train)} of {len(images)} images; both parts need at least one image "
            f"and images sharing a caption stay on one side ({len(groups)} groups, the largest {biggest} images); "
            "choose another fraction or read more rows")
    shared = [g for g in groups if len(g) > 1]
    return train, {"caption_groups": len(groups), "images_in_shared_caption_groups": sum(len(g) for g in shared)}


# --------------------------------------------------------------------------- entry point
def _extract(texts: list[str], extractor: Any, annotations: Any) -> list[list[Grain]]:
    """Grains of each caption: from ``annotations`` where it lists the caption, else from
    ``extractor`` (``None``: annotations only, a caption they lack is an error). Captions are
    whitespace-collapsed, so the file's texts are matched the same way: exactly, else after collapsing
    their whitespace (several lines collapsing to one text: the one listed last by the file wins)."""
    if annotations is None:
        return extractor.extract(texts)
    collapsed: dict[str, str] = {}
    for raw in annotations.texts():
        collapsed[" ".join(raw.split())] = raw

    def key(t: str) -> str | None:
        return t if annotations.has_text(t) else collapsed.get(" ".join(t.split()))

    keys = [key(t) for t in texts]
    if extractor is None:  # a caption missing from the file: the annotations' own one-line error
        return annotations.extract([k if k is not None else t for t, k in zip(texts, keys)])
    todo = [i for i, k in enumerate(keys) if k is None]
    out = [annotations.extract([k])[0] if k is not None else [] for k in keys]
    for i, g in zip(todo, extractor.extract([texts[i] for i in todo]) if todo else []):
        out[i] = g
    return out


def _save_pair(bench: Benchmark, output: Path, train_bench: Benchmark, train_out: Path, report: dict[str, Any],
               train_report: dict[str, Any], *, overwrite: bool) -> tuple[Benchmark, Benchmark]:
    """Write the held-out train part, then the test part, each with its own build report — all or
    nothing: when anything fails after the train part is written, the train part this run wrote is
    removed and a train part that was there before (``overwrite``) is put back."""
    from mrbench.data.io import atomic_write_text, output_target, save_benchmark, sibling_path

    target = output_target(train_out)
    aside = None
    if target.exists():  # an old train part (--overwrite, checked before): kept aside until both are written
        aside = sibling_path(target, "old-{hex}")
        os.replace(target, aside)
        target.mkdir()
    try:
        train_bench = save_benchmark(train_bench, train_out, overwrite=True)
        report["heldout"]["train_fingerprint"] = train_report["fingerprint"] = train_bench.fingerprint
        atomic_write_text(train_out / REPORT_FILE, json.dumps(train_report, indent=2) + "\n")
        bench = save_benchmark(bench, output, overwrite=overwrite)
        report["fingerprint"] = bench.fingerprint
        atomic_write_text(output / REPORT_FILE, json.dumps(report, indent=2) + "\n")
    except BaseException:
        shutil.rmtree(target, ignore_errors=True)
        if aside is not None:
            os.replace(aside, target)
        raise
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)
    return bench, train_bench


@contextlib.contextmanager
def _datasets_quiet() -> Iterator[None]:
    """``datasets``' progress bars off for the build (``datasets.disable_progress_bars``), the previous
    state restored after (``HF_DATASETS_DISABLE_PROGRESS_BARS=0`` keeps them on: it has priority)."""
    import datasets

    was_disabled = datasets.are_progress_bars_disabled()
    if not was_disabled:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            datasets.disable_progress_bars()
    try:
        yield
    finally:
        if not was_disabled and datasets.are_progress_bars_disabled():
            datasets.enable_progress_bars()


@_datasets_quiet()  # (a context manager made with contextlib.contextmanager also decorates)
def build_hf(
    dataset: str | Path,
    output: str | Path,
    *,
    image_column: str = "image",
    caption_column: str = "caption",
    split: str = "train",
    data_files: Any = None,
    config: str | None = None,
    per_task: int = 250,
    min_grains: int = 2,
    extractor: str = "lexicon",
    extractor_model: str | None = None,
    annotations: str | Path | None = None,
    seed: int = 0,
    heldout: float = 0.0,
    max_images: int | None = None,
    overwrite: bool = False,
    name: str | None = None,
    progress: Callable[[str], None] | None = None,
    cache_dir: str | Path | None = None,
) -> tuple[Benchmark, dict[str, Any]]:
    """Build the benchmark into ``output`` (and, with ``heldout`` > 0, its train part into
    ``<output>-train``) and return ``(test benchmark, report)``.

    ``split`` is the split of the *source* dataset to read; ``max_images`` caps the rows read (the
    first rows); ``cache_dir`` is passed to ``datasets.load_dataset``. Grains: ``extractor``
    (``lexicon``; ``mllm`` with ``extractor_model``, a local Qwen2-VL / Qwen2.5-VL directory; or
    ``annotations``); ``annotations``, a JSONL of ``{"text": caption, "grains": [...]}`` lines
    (:mod:`mrbench.grains.annotations`), gives the grains of the captions it lists and the extractor
    those of the others (with ``extractor="annotations"`` every caption must be listed). Raises
    :class:`~mrbench.errors.BenchmarkError` (one line) for an unreadable dataset, a missing column
    (listing the available ones), a bad cell (row and column), or a task without eligible queries.
    """
    from mrbench.data.io import MANIFEST, atomic_write_text, check_output_dir, save_benchmark
    from mrbench.grains.extract import get_extractor

    if per_task < 1:
        raise BenchmarkError(f"--per-task {per_task}: must be at least 1")
    if min_grains < 0:
        raise BenchmarkError(f"--min-grains {min_grains}: must be >= 0")
    if not 0.0 <= heldout < 1.0:
        raise BenchmarkError(f"--heldout {heldout}: must be a fraction in [0, 1), e.g. 0.2")
    if max_images is not None and max_images < 1:
        raise BenchmarkError(f"--max-images {max_images}: must be at least 1")
    kind = extractor.strip().lower() if isinstance(extractor, str) else extractor
    if kind == "annotations" and annotations is None:
        raise BenchmarkError("--extractor annotations needs --annotations FILE (a JSONL of {\"text\": caption, "
                             "\"grains\": [...]} lines)")
    if kind == "mllm" and not extractor_model:
        raise BenchmarkError("--extractor mllm needs --extractor-model DIR (a local Qwen2-VL / Qwen2.5-VL directory)")
    ann = get_extractor("annotations", path=annotations) if annotations is not None else None
    ex = None if kind == "annotations" else get_extractor(extractor, **({"model": extractor_model} if kind == "mllm" else {}))
    output = Path(output)
    train_out = heldout_path(output) if heldout > 0 else None
    for out in (output, train_out):
        if out is not None:
            check_output_dir(out, overwrite, marker=MANIFEST, what="a benchmark")

    if progress:
        progress(f"loading {dataset}")
    ds, builder, local = _load(str(dataset), split, config, data_files, cache_dir)
    columns = list(ds.column_names)
    for opt, col in (("--image-column", image_column), ("--caption-column", caption_column)):
        if col not in columns:
            raise BenchmarkError(f"{dataset}: column {col!r} not found (split {split!r}); available columns: "
                                 f"{', '.join(columns)}; pass {opt}")
    if name is None:
        stem = Path(str(dataset).rstrip("/\\")).name or "dataset"
        name = "mrbench-hf-" + (re.sub(r"[^A-Za-z0-9._-]+", "-", Path(stem).stem).strip("-") or "dataset")

    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.hf-images-", dir=output.parent))
    try:
        if progress:
            progress("reading images and captions")
        images, stats = _read_rows(ds, image_column, caption_column, local, staging, max_images)
        if not images:
            raise BenchmarkError(f"{dataset}: none of the {stats['rows_read']} rows read has both an image and a caption; "
                                 f"check --image-column {image_column!r} and --caption-column {caption_column!r}")
        if progress:
            progress(f"extracting grains from {sum(len(im.captions) for im in images)} captions")
        keys = [(im.id, j) for im in images for j in range(len(im.captions))]
        extracted = _extract([im.captions[j] for im in images for j in range(len(im.captions))], ex, ann)
        grains = dict(zip(keys, extracted))

        test_images, train_images = images, []
        split_info: dict[str, Any] = {}
        if heldout > 0:
            train_ids, split_info = _heldout_split(images, heldout, seed)
            test_images = [im for im in images if im.id not in train_ids]
            train_images = [im for im in images if im.id in train_ids]

        report: dict[str, Any] = {
            "source": "huggingface", "dataset": str(dataset), "builder": builder, "config": config, "split": split,
            "image_column": image_column, "caption_column": caption_column, "per_task": per_task,
            "min_grains": min_grains, "extractor": extractor, "extractor_model": extractor_model,
            "annotations": str(annotations) if annotations is not None else None, "seed": seed, "max_images": max_images,
            **stats, "images": len(images), "captions": len(keys),
        }
        tasks, task_report = _tasks(test_images, grains, per_task=per_task, min_grains=min_grains, seed=seed,
                                    extractor=extractor, split_label="test")
        report["tasks"] = task_report
        train_bench = None
        if train_out is not None:
            ttasks, ttask_report = _tasks(train_images, grains, per_task=None, min_grains=min_grains, seed=seed,
                                          extractor=extractor, split_label="held-out train")
            report["heldout"] = {
                "fraction": heldout, "output": str(train_out), **split_info,
                "test_images": len(test_images), "test_captions": sum(len(im.captions) for im in test_images),
                "train_images": len(train_images), "train_captions": sum(len(im.captions) for im in train_images),
                "train_tasks": ttask_report,
            }
            report["part"] = "test"
            train_report = {**{k: v for k, v in report.items() if k != "tasks"}, "part": "train", "tasks": ttask_report}
            train_bench = Benchmark(name=name, version="1", tasks=ttasks, root=staging, split="train",
                                    description=f"held-out train part of {dataset} (image–caption pairs)",
                                    metadata={"build": train_report})
        bench = Benchmark(name=name, version="1", tasks=tasks, root=staging, split="test",
                          description=f"multi-grain queries (>= {min_grains} grains) from {dataset} ({split})",
                          metadata={"build": report})
        if progress:
            progress("writing")
        # validate both before writing either, so a bad train part leaves nothing behind
        from mrbench.data.io import validate

        validate(bench, where=str(output))
        if train_bench is None:
            bench = save_benchmark(bench, output, overwrite=overwrite)
            report["fingerprint"] = bench.fingerprint
            atomic_write_text(output / REPORT_FILE, json.dumps(report, indent=2) + "\n")
        else:
            validate(train_bench, where=str(train_out))
            bench, train_bench = _save_pair(bench, output, train_bench, train_out, report, train_report,  # type: ignore[arg-type]
                                            overwrite=overwrite)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return bench, report
