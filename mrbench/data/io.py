"""Reading and writing benchmarks on disk.

Layout of a benchmark directory (``schema_version`` 1)::

    manifest.json                  name, version, split, fingerprint, tasks (modalities, instructions,
                                   relevance level, file names, counts), metadata
    tasks/<task>/queries.jsonl     one JSON object per line: id, text, image, grains[{text,type,key}], meta
    tasks/<task>/candidates.jsonl  id, text, image, meta
    tasks/<task>/qrels.txt         TREC qrels: "<qid> 0 <did> <grade>" per line
    images/...                     image files referenced by relative path

Every file is readable by other tools (jq, pandas.read_json(lines=True), trec_eval). Writing goes
to a temporary sibling directory that is renamed into place, so a failed or interrupted write never
leaves a half-written benchmark.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import os
import re
import shutil
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from operator import attrgetter
from pathlib import Path
from typing import Any

from mrbench.data.jsonenc import dumps_function
from mrbench.data.schema import MODALITIES, Benchmark, Candidate, Grain, Query, Task
from mrbench.errors import BenchmarkError, FingerprintMismatch, MrbenchError, OutputExistsError, UnknownNameError, did_you_mean

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"


# --------------------------------------------------------------------------- atomic writes
def check_writable_path(path: str | Path, option: str = "--output") -> None:
    """Refuse, before any work, an output path that cannot be created: a part of its directory is a
    file, or its nearest existing directory is not writable (no permission, a read-only file system).
    One-line :class:`~mrbench.errors.MrbenchError` naming ``option`` and ``path``."""
    from mrbench.errors import MrbenchError

    parent = Path(os.path.abspath(path)).parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise MrbenchError(f"{option} {path}: {parent} is a file, not a directory; choose another {option}")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise MrbenchError(f"{option} {path}: cannot write in {parent} (no write permission, or a read-only file "
                           f"system); choose another {option}")


def sibling_path(path: Path, tail: str) -> Path:
    """A hidden sibling of ``path`` named ``.NAME.<tail>``, ``{hex}`` in ``tail`` replaced by 8 random
    hex digits (``staging-{hex}``, ``{hex}.tmp``), NAME cut so that the whole stays within 255 bytes (a
    long but legal output name must not fail on its staging name)."""
    suffix = "." + tail.format(hex=uuid.uuid4().hex[:8])
    name = path.name
    room = 255 - 1 - len(suffix.encode())
    while len(os.fsencode(name)) > room:
        name = name[:-1]
    return path.with_name(f".{name}{suffix}")


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same directory and rename (through a
    symbolic link: its target is replaced, the link kept)."""
    path = Path(path)
    if path.is_symlink():
        path = Path(os.path.realpath(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = sibling_path(path, "{hex}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


RESULTS_MARKER = "results.json"
"""The file every results directory of ``mrbench evaluate`` holds (what ``--overwrite`` may replace)."""

OUTPUT_ENTRIES: dict[str, frozenset[str]] = {
    RESULTS_MARKER: frozenset({RESULTS_MARKER, "runs", "per_query.parquet", "sensitivity.parquet", "grains.png"}),
    MANIFEST: frozenset({MANIFEST, "tasks", "images", "build_report.json"}),
}
"""Per marker file, every top-level entry mrbench writes in a directory of that kind (results; a
benchmark or a Parquet export): ``--overwrite`` refuses a directory holding anything else."""


def output_target(out: str | Path) -> Path:
    """``out`` made absolute, through a symbolic link to its target (the output is written there, the
    link kept). A link to nothing, and a name that is not valid UTF-8 (the results' files record it),
    are refused with one line."""
    path = Path(os.path.abspath(out))
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError:
        raise MrbenchError(f"{str(out)!r}: the name is not valid UTF-8; choose a UTF-8 name") from None
    if path.is_symlink():
        target = Path(os.path.realpath(path))
        if not target.exists():
            raise OutputExistsError(f"{out}: is a symbolic link to {target}, which does not exist; remove the link or "
                                    "choose another path")
        return target
    return path


def check_replaceable(out: str | Path, *, marker: str | None, what: str, option: str = "--output") -> None:
    """Refuse, before any work, to replace ``out`` with new output when that would delete what this
    output kind did not write: ``out`` is the current directory or one above it, or it is a non-empty
    directory without ``marker`` (``results.json`` for results, ``manifest.json`` for a benchmark;
    ``None``: no such check) or with entries a directory of that kind never holds
    (:data:`OUTPUT_ENTRIES`: a cache or other results put inside it, say). What ``--overwrite`` may
    replace is a directory mrbench wrote — never a folder of the user's files. One-line
    :class:`~mrbench.errors.OutputExistsError` naming ``option``."""
    path = output_target(out)
    head = f"{option} {out}" if option else str(out)
    other = f"another {option}" if option else "another path"
    if Path.cwd().is_relative_to(path):
        raise OutputExistsError(f"{head}: is the current directory or holds it, which would be replaced; "
                                f"choose a new directory for {what}")
    if marker is None or not path.is_dir():
        return
    entries = sorted(e.name for e in path.iterdir())
    if entries and marker not in entries:
        raise OutputExistsError(f"{head}: holds files that are not {what} (no {marker}), and --overwrite only "
                                f"replaces {what} that mrbench wrote; choose {other}, or empty that directory yourself")
    foreign = [e for e in entries if e not in OUTPUT_ENTRIES.get(marker, entries)]
    if foreign:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise OutputExistsError(f"{head}: holds {shown} beside {what}, which --overwrite would delete with it; move "
                                f"{'them' if len(foreign) > 1 else 'it'} out first, or choose {other}")


def check_output_dir(out: str | Path, overwrite: bool, *, marker: str | None, what: str, option: str = "") -> None:
    """Refuse, before any work, an existing non-empty ``out`` unless ``overwrite``, and with
    ``overwrite`` what :func:`check_replaceable` refuses (the checks :func:`atomic_dir` makes on entry)."""
    path = output_target(out)
    if path.exists() and any(path.iterdir()) and not overwrite:
        head = f"{option} {out}" if option else str(out)
        raise OutputExistsError(f"{head}: directory exists and is not empty; pass --overwrite or choose another path")
    if overwrite:
        check_replaceable(out, marker=marker, what=what, option=option)


@contextlib.contextmanager
def atomic_dir(out: Path, overwrite: bool = False, *, marker: str | None = None, what: str = "output") -> Iterator[Path]:
    """Yield a staging directory that replaces ``out`` only if the block finishes without error.

    Refuses an existing non-empty ``out`` unless ``overwrite``; with ``overwrite``, still refuses
    what :func:`check_replaceable` refuses (``marker``/``what``: the file this output kind always
    holds, and its name in the message). ``out`` is made absolute first (``.`` has no name to stage
    beside); a symbolic link to a directory is written through (:func:`output_target`).
    """
    shown = out
    out = output_target(out)
    check_output_dir(out, overwrite, marker=marker, what=what)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = sibling_path(out, "staging-{hex}")
    staging.mkdir()
    try:
        yield staging
        old = None
        if out.exists():
            old = sibling_path(out, "old-{hex}")
            os.replace(out, old)
        try:
            os.replace(staging, out)
        except OSError as e:
            if old is not None:
                os.replace(old, out)
            raise OSError(e.errno, e.strerror, str(shown)) from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    dumps = dumps_function(ensure_ascii=False, sort_keys=True)  # json.dumps(r, ensure_ascii=False, sort_keys=True)
    with open(path, "w", encoding="utf-8") as f:
        for s in range(0, len(rows), 1 << 16):
            f.write("".join([dumps(r) + "\n" for r in rows[s : s + (1 << 16)]]))


def write_qrels(path: Path, qrels: dict[str, dict[str, int]]) -> None:
    """Write TREC qrels (``qid 0 did grade``), sorted by qid then did."""
    with open(path, "w", encoding="utf-8") as f:
        for qid in sorted(qrels):
            for did in sorted(qrels[qid]):
                f.write(f"{qid} 0 {did} {int(qrels[qid][did])}\n")


def _check_id(kind: str, id_: str, where: str) -> None:
    if not id_ or any(ch.isspace() for ch in id_):
        raise BenchmarkError(f"{where}: {kind} id {id_!r} is empty or contains whitespace; ids must be single tokens")


def write_benchmark_files(bench: Benchmark, root: Path, image_hash: Callable[[str], str] | None = None) -> str:
    """Write manifest and task files of ``bench`` into ``root`` (images must already be there).

    Validates the benchmark first and returns the fingerprint written to the manifest. ``image_hash``
    (an image reference → its content hash, see :func:`mrbench.data.fingerprint.fingerprint`) spares
    reading back images whose hashes the caller already has.
    """
    from mrbench.data.fingerprint import fingerprint

    root = Path(root)
    validate(bench, where=str(root))
    old_root = bench.root
    bench.root = root
    try:
        fp = fingerprint(bench, image_hash)
    finally:
        bench.root = old_root
    tasks_meta = []
    for t in bench.tasks:
        tdir = root / "tasks" / t.name
        tdir.mkdir(parents=True, exist_ok=True)
        _write_jsonl(tdir / "queries.jsonl", [q.to_dict() for q in t.queries])
        _write_jsonl(tdir / "candidates.jsonl", [c.to_dict() for c in t.candidates])
        write_qrels(tdir / "qrels.txt", t.qrels)
        files = {kind: f"tasks/{t.name}/{fn}" for kind, fn in
                 (("queries", "queries.jsonl"), ("candidates", "candidates.jsonl"), ("qrels", "qrels.txt"))}
        tasks_meta.append(task_manifest(t, files))
    manifest = benchmark_manifest(bench, tasks_meta, fp)
    atomic_write_text(root / MANIFEST, json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
    return fp


def task_manifest(t: Task, files: dict[str, str]) -> dict[str, Any]:
    """The manifest entry of one task (``files`` maps queries/candidates/qrels to relative paths)."""
    return {
        "name": t.name,
        "description": t.description,
        "query_modality": t.query_modality,
        "candidate_modality": t.candidate_modality,
        "query_instruction": t.query_instruction,
        "candidate_instruction": t.candidate_instruction,
        "relevance_level": t.relevance_level,
        "num_queries": len(t.queries),
        "num_candidates": len(t.candidates),
        "files": files,
        "metadata": t.metadata,
    }


def benchmark_manifest(bench: Benchmark, tasks_meta: list[dict[str, Any]], fp: str, fmt: str | None = None) -> dict[str, Any]:
    """The manifest document (``fmt`` = ``"parquet"`` marks a Parquet export)."""
    from mrbench.data.fingerprint import FINGERPRINT_ALGO

    m: dict[str, Any] = {"schema_version": SCHEMA_VERSION}
    if fmt:
        m["format"] = fmt
    m.update(
        name=bench.name, version=bench.version, split=bench.split, description=bench.description,
        fingerprint=fp, fingerprint_algorithm=FINGERPRINT_ALGO, tasks=tasks_meta, metadata=bench.metadata,
    )
    return m


def save_benchmark(bench: Benchmark, out: Path, overwrite: bool = False) -> Benchmark:
    """Save ``bench`` as a benchmark directory at ``out`` (atomically), copying its images.

    Returns the benchmark re-pointed at ``out`` with its fingerprint set.
    """
    out = Path(out)
    with atomic_dir(out, overwrite=overwrite, marker=MANIFEST, what="a benchmark") as staging:
        seen: set[str] = set()
        for t in bench.tasks:
            for item in [*t.queries, *t.candidates]:
                rel = item.image
                if not rel or rel in seen:
                    continue
                seen.add(rel)
                if Path(rel).is_absolute():
                    raise BenchmarkError(f"item {item.id}: image path {rel!r} is absolute; use a path relative to the benchmark root")
                src = bench.image_path(rel)
                dst = staging / rel
                dst.parent.mkdir(parents=True, exist_ok=True)
                try:
                    shutil.copyfile(src, dst)
                except OSError as e:
                    raise BenchmarkError(f"{src}: cannot copy image of item {item.id} ({e.strerror or e})") from None
        fp = write_benchmark_files(bench, staging)
    bench.root = out
    bench.fingerprint = fp
    return bench


# --------------------------------------------------------------------------- validation
_WHITESPACE = re.compile(r"\s")


def _items_ok(items: list[Any], ids: list[Any], id_set: set[Any], mod: str) -> bool:
    """Whole-list checks of :func:`validate` (C-level: no Python step per item): ids are non-empty
    strings without whitespace and unique, and every item carries what ``mod`` needs. ``False``
    means the item-by-item checks must find and name the culprit."""
    if len(id_set) != len(ids) or "" in id_set or not all(type(i) is str for i in ids):
        return False
    if _WHITESPACE.search("\x00".join(ids)):  # NUL is no whitespace: it cannot join two ids into a false hit
        return False
    if "text" in mod and mod != "image" and not all(map(attrgetter("text"), items)):
        return False
    return not ("image" in mod and not all(map(attrgetter("image"), items)))


def validate(bench: Benchmark, where: str = "", check_images: bool = True) -> None:
    """Raise :class:`BenchmarkError` on the first structural problem found.

    Checks: at least one task; unique task names; known modalities; non-empty queries and pool;
    unique query and candidate ids; qrels refer to known ids with non-negative integer grades;
    items carry what their modality needs; referenced images exist (when ``check_images``).
    """
    _validate(bench, where, check_images)


def _validate(bench: Benchmark, where: str = "", check_images: bool = True,
              qrels_facts: dict[str, _QrelsFacts] | None = None) -> None:
    """:func:`validate`; ``qrels_facts`` (task name → what the qrels reader saw of that task's qrels
    dict, see :class:`_QrelsFacts`) spares the scans over every graded pair where they say all is
    well (otherwise the pair by pair checks run and name the culprit, as without them)."""
    w = f"{where}: " if where else ""
    if not bench.tasks:
        raise BenchmarkError(f"{w}benchmark {bench.name!r} has no tasks")
    names = [t.name for t in bench.tasks]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise BenchmarkError(f"{w}duplicate task name {sorted(dup)[0]!r}; task names must be unique")
    for t in bench.tasks:
        tw = f"{w}task {t.name!r}"
        for side, mod in (("query_modality", t.query_modality), ("candidate_modality", t.candidate_modality)):
            if mod not in MODALITIES:
                raise BenchmarkError(f"{tw}: {side} {mod!r} is not one of {', '.join(MODALITIES)}")
        if not t.queries:
            raise BenchmarkError(f"{tw}: no queries; a task needs at least one query")
        if not t.candidates:
            raise BenchmarkError(f"{tw}: empty candidate pool; a task needs at least one candidate")
        id_sets = []
        for kind, items, mod in (("query", t.queries, t.query_modality), ("candidate", t.candidates, t.candidate_modality)):
            ids = [it.id for it in items]
            id_set = set(ids)
            id_sets.append(id_set)
            if not _items_ok(items, ids, id_set, mod):  # the item by item checks name the first culprit
                seen: set[str] = set()
                for it in items:
                    _check_id(kind, it.id, tw)
                    if it.id in seen:
                        raise BenchmarkError(f"{tw}: duplicate {kind} id {it.id!r}; ids must be unique within a task")
                    seen.add(it.id)
                    if "text" in mod and mod != "image" and not it.text:
                        raise BenchmarkError(f"{tw}: {kind} {it.id!r} has no text but the {kind} modality is {mod!r}")
                    if "image" in mod and not it.image:
                        raise BenchmarkError(f"{tw}: {kind} {it.id!r} has no image but the {kind} modality is {mod!r}")
        if check_images:
            _check_task_images(bench, t)
        qids, dids = id_sets
        facts = qrels_facts.get(t.name) if qrels_facts else None
        if facts is not None and facts.qrels is t.qrels and facts.min_grade >= 0 and t.qrels.keys() <= qids \
                and dids.issuperset(facts.dids):
            continue
        for qid, docs in t.qrels.items():
            if qid not in qids:
                raise BenchmarkError(f"{tw}: qrels refer to unknown query id {qid!r}; fix or remove that line")
            # set operations and C-level scans first (millions of graded pairs); the loop names the culprit
            if docs.keys() <= dids and set(map(type, docs.values())) <= {int} and (not docs or min(docs.values()) >= 0):
                continue
            for did, grade in docs.items():
                if did not in dids:
                    raise BenchmarkError(f"{tw}: qrels of query {qid!r} refer to unknown candidate id {did!r}; fix or remove that line")
                if not isinstance(grade, int) or isinstance(grade, bool) or grade < 0:
                    raise BenchmarkError(f"{tw}: qrels grade {grade!r} for ({qid}, {did}) is not a non-negative integer")


def _check_task_images(bench: Benchmark, t: Task) -> None:
    """Raise :class:`BenchmarkError` naming the first image file of ``t``'s items that is missing."""
    if bench.root is None:
        return
    root_s = os.fspath(bench.root)
    for kind, items in (("query", t.queries), ("candidate", t.candidates)):
        for it in items:
            # os.path first (a tenth of the cost of pathlib per image); the pathlib check decides
            if it.image and not os.path.isfile(os.path.join(root_s, it.image)):
                p = bench.image_path(it.image)
                if not p.is_file():
                    raise BenchmarkError(f"{p}: image of {kind} {it.id!r} in task {t.name!r} is missing; "
                                         "restore it or rebuild the benchmark")


# --------------------------------------------------------------------------- loading
@dataclasses.dataclass(frozen=True)
class _QrelsFacts:
    """What :func:`_read_qrels_arrow` knows of a qrels dict it returned: every candidate id in it is
    one of ``dids``, every grade an ``int`` (from Arrow's int64 column) of at least ``min_grade``."""

    qrels: dict[str, dict[str, int]]
    dids: list[str]
    min_grade: int


def read_json(
    path: Path,
    *,
    error: type[Exception] = BenchmarkError,
    missing: str = "file missing; the benchmark directory is incomplete, rebuild it",
    corrupt: str = "the file is corrupt, rebuild the benchmark",
) -> Any:
    """Parse a JSON file; a missing or malformed file raises ``error`` with one line naming it."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise error(f"{path}: {missing}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise error(f"{path}: not valid JSON ({e}); {corrupt}") from None


_JSONL_CHUNK_BYTES = 16 << 20
"""Bytes of JSON lines parsed by one ``json.loads`` call in :func:`_read_jsonl`."""


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The JSON objects of a JSON-lines file, one per non-blank line; each needs an ``"id"`` field.

    Read ``_JSONL_CHUNK_BYTES`` characters at a time, each line parsed in place by the C scanner (no
    ``json.loads`` call, nor a string, per line: as fast as one parse of the lines joined into a JSON
    array, half the time of a ``json.loads`` call per line at 1M lines). A line that is not
    plainly one object with an id (a blank line, a syntax error, anything else) sends the whole file
    to the line-by-line reader, which names the culprit.
    """
    try:
        with open(path, encoding="utf-8") as f:
            rows = _jsonl_chunks(f)
        if rows is None:
            with open(path, encoding="utf-8") as f:
                rows = _jsonl_lines(f, path)
        return rows
    except FileNotFoundError:
        raise BenchmarkError(f"{path}: file missing; the benchmark directory is incomplete, rebuild it") from None
    except UnicodeDecodeError:
        raise BenchmarkError(f"{path}: not UTF-8 text; the file is corrupt, rebuild the benchmark") from None


def _jsonl_chunks(f: Any) -> list[dict[str, Any]] | None:
    """The rows of an open JSON-lines file, a chunk at a time, or ``None`` where a line is not plainly
    one object with an id (a blank line, surrounding whitespace, a syntax error, a value spanning
    lines, two values on a line...): the line-by-line reader then decides.

    Each line is parsed where it lies in the chunk by the C scanner that ``json.loads`` uses, which
    must end exactly at the line's end: exactly what ``json.loads`` of each line gives, at the cost
    of one C call per line (joining the lines into one JSON array, as before, could take a value cut
    over two lines, ``{"id": 1}, {"id": 2`` then ``"x": 3}``, for two rows).
    """
    scan = json.JSONDecoder().scan_once
    rows: list[dict[str, Any]] = []
    append = rows.append
    rest = ""
    while True:
        chunk = f.read(_JSONL_CHUNK_BYTES)
        text = rest + chunk if rest else chunk
        stop = text.rfind("\n") + 1 if chunk else len(text)  # complete lines only, but for the last one
        pos = 0
        while pos < stop:
            nl = text.find("\n", pos, stop)
            if nl < 0:
                nl = stop
            try:
                obj, end = scan(text, pos)
            except (StopIteration, json.JSONDecodeError):
                return None
            if end != nl or type(obj) is not dict or "id" not in obj:
                return None
            append(obj)
            pos = nl + 1
        if not chunk:
            return rows
        rest = text[stop:]


def _jsonl_lines(f: Any, path: Path) -> list[dict[str, Any]]:
    """The rows of an open JSON-lines file line by line (blank lines skipped); the first bad line is named."""
    rows = []
    for lineno, line in enumerate(f, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise BenchmarkError(f"{path}:{lineno}: not valid JSON ({e.msg}); the file is corrupt, rebuild the benchmark") from None
        if not isinstance(obj, dict) or "id" not in obj:
            raise BenchmarkError(f"{path}:{lineno}: expected a JSON object with an 'id' field")
        rows.append(obj)
    return rows


def _parse_rows(cls: Any, rows: list[dict[str, Any]], path: Path, kind: str) -> list[Any]:
    """``cls.from_dict`` of every row; a row that does not parse is named (file, id, record number,
    field) in a :class:`BenchmarkError`."""
    try:
        fast = _FROM_ROWS.get(cls)
        return fast(rows) if fast is not None else [cls.from_dict(r) for r in rows]
    except (KeyError, TypeError, ValueError, AttributeError):
        pass
    for k, r in enumerate(rows):
        try:
            cls.from_dict(r)
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise BenchmarkError(
                f"{path}: {kind} {r.get('id')!r} (record {k + 1}): {_row_problem(r, e)}; fix that line or rebuild the benchmark"
            ) from None
    raise AssertionError("unreachable: a row failed to parse once but not again")  # pragma: no cover


def _meta(m: Any) -> dict[str, Any]:
    """``dict(m) if m else {}`` (what ``from_dict`` keeps of a row's meta) without copying a dict that
    the parsed row alone holds."""
    return m if type(m) is dict else (dict(m) if m else {})


def _candidates(rows: list[dict[str, Any]]) -> list[Candidate]:
    """``[Candidate.from_dict(r) for r in rows]`` for rows just parsed (nothing else holds them),
    without a method call per row; it raises where ``from_dict`` does."""
    return [Candidate(i if type(i := r["id"]) is str else str(i), r.get("text"), r.get("image"), _meta(r.get("meta")))
            for r in rows]


def _queries(rows: list[dict[str, Any]]) -> list[Query]:
    """``[Query.from_dict(r) for r in rows]`` as :func:`_candidates` does it for candidates."""
    return [Query(i if type(i := r["id"]) is str else str(i), r.get("text"), r.get("image"),
                  [Grain(str(g["text"]), str(g["type"]), g.get("key")) for g in r.get("grains") or []],
                  _meta(r.get("meta")))
            for r in rows]


_FROM_ROWS: dict[type, Callable[[list[dict[str, Any]]], list[Any]]] = {Candidate: _candidates, Query: _queries}


def _row_problem(row: dict[str, Any], e: BaseException) -> str:
    """What is wrong with a query/candidate row that ``from_dict`` refused (``e``)."""
    grains = row.get("grains")
    if grains is not None and not isinstance(grains, list):
        return "field 'grains' must be a list of objects with 'text' and 'type'"
    for j, g in enumerate(grains or []):
        if not isinstance(g, dict):
            return f"grain #{j + 1} must be an object with 'text' and 'type', not {type(g).__name__}"
        for key in ("text", "type"):
            if key not in g:
                return f"grain #{j + 1} lacks field {key!r}"
    meta = row.get("meta")
    if meta and not isinstance(meta, dict):
        return "field 'meta' must be an object"
    if isinstance(e, KeyError):
        return f"lacks field {e.args[0]!r}"
    return f"a malformed field ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"


_FAST_QRELS_BYTES = 1 << 20
"""qrels files from this size on are parsed by Arrow's CSV reader first (:func:`_read_qrels_arrow`):
MRBench-Synth's four (1.2-2 MB, 254k lines) in 49-59 ms instead of 130-134 ms. Below it the line
loop wins over importing pyarrow (~0.13 s, which ``evaluate`` and ``verify`` pay anyway for pandas)."""


def read_qrels(path: Path) -> dict[str, dict[str, int]]:
    """Read TREC qrels (``qid iter did grade``; whitespace separated). Duplicate pairs are an error.

    Large files (``_FAST_QRELS_BYTES`` and up) go through Arrow's CSV reader when they are in the
    canonical form (single spaces, no blank lines); anything else, errors included, is read line by
    line, which names the offending line. Both give equal dicts.
    """
    return _read_qrels(path)[0]


def _read_qrels(path: Path) -> tuple[dict[str, dict[str, int]], _QrelsFacts | None]:
    """:func:`read_qrels`, and what Arrow's reader learnt of the dict when it read the file (``None``
    from the line reader)."""
    try:
        big = os.path.getsize(path) >= _FAST_QRELS_BYTES
    except OSError:
        big = False
    if big:
        fast = _read_qrels_arrow(Path(path))
        if fast is not None:
            return fast
    qrels: dict[str, dict[str, int]] = {}
    try:
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                parts = line.split()
                if not parts:
                    continue
                if len(parts) != 4:
                    raise BenchmarkError(f"{path}:{lineno}: expected 4 fields 'qid 0 did grade', got {len(parts)}")
                qid, _, did, grade = parts
                try:
                    g = int(grade)
                except ValueError:
                    raise BenchmarkError(f"{path}:{lineno}: grade {grade!r} is not an integer") from None
                if did in qrels.setdefault(qid, {}):
                    raise BenchmarkError(f"{path}:{lineno}: duplicate qrels line for ({qid}, {did}); keep one")
                qrels[qid][did] = g
    except FileNotFoundError:
        raise BenchmarkError(f"{path}: file missing; the benchmark directory is incomplete, rebuild it") from None
    except UnicodeDecodeError:
        raise BenchmarkError(f"{path}: not UTF-8 text; the file is corrupt, rebuild the benchmark") from None
    return qrels, None


def _read_qrels_arrow(path: Path) -> tuple[dict[str, dict[str, int]], _QrelsFacts] | None:
    """:func:`read_qrels` for a canonical file by Arrow's CSV reader, with what it saw of the dict (the
    candidate ids, the least grade: :class:`_QrelsFacts`), or ``None`` when the file is not plainly
    ``qid iter did grade`` lines with single spaces, unique pairs and integer grades (the caller then
    reads it line by line, which reports the problem).

    The tokens are checked through the distinct values of each column (the query ids at the start of
    each run of equal ids, which stand for the whole run); the pairs go into each query's dict
    straight from one iterator over them. Candidate ids are shared string objects (one per distinct
    id), not one string per line.
    """
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.csv as pcsv

    cols = ["qid", "iter", "did", "grade"]
    try:
        tbl = pcsv.read_csv(
            path,
            read_options=pcsv.ReadOptions(column_names=cols),
            parse_options=pcsv.ParseOptions(delimiter=" ", quote_char=False, escape_char=False, ignore_empty_lines=False),
            convert_options=pcsv.ConvertOptions(
                column_types={"qid": pa.string(), "iter": pa.string(), "did": pa.string(), "grade": pa.int64()},
                strings_can_be_null=False, quoted_strings_can_be_null=False),
        )
    except (pa.ArrowException, OSError, ValueError):
        return None
    n = tbl.num_rows
    if n == 0 or tbl["grade"].null_count:
        return None
    q = tbl["qid"].combine_chunks()
    starts = np.flatnonzero(pc.not_equal(q.slice(1), q.slice(0, n - 1)).to_numpy(zero_copy_only=False)) + 1
    qnames = q.take(np.concatenate(([0], starts))).to_pylist()
    enc = pc.dictionary_encode(tbl["did"]).combine_chunks()
    dnames = enc.dictionary.to_pylist()
    for values in (qnames, dnames, pc.unique(tbl["iter"]).to_pylist()):
        # a token that is empty or holds other whitespace, as str.split() sees it
        if not all(values) or _WHITESPACE.search("".join(values)):
            return None
    dl = np.array(dnames, dtype=object)[enc.indices.to_numpy()].tolist()  # one string object per distinct id
    grades = tbl["grade"].to_numpy()
    gl = grades.tolist()
    pairs = zip(dl, gl)
    out: dict[str, dict[str, int]] = {}
    for qid, k in zip(qnames, np.diff(starts, prepend=0, append=n).tolist()):
        docs = dict(itertools.islice(pairs, k))
        if len(docs) != k:
            return None  # a duplicate pair
        prev = out.get(qid)
        if prev is None:
            out[qid] = docs
        elif prev.keys() & docs.keys():
            return None
        else:
            prev.update(docs)
    return out, _QrelsFacts(out, dnames, int(grades.min()))


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Pause Python's cyclic garbage collector in the block (restored after, if it was on).

    Parsing a benchmark creates hundreds of thousands of acyclic objects (dicts, strings); each
    collection the allocations trigger walks the young objects, and the full ones every object of
    the process (torch's and pandas' included). ``benchmarks/bench_load.py``, with torch, pandas
    and two earlier loads in memory: MRBench-Synth 0.23 s paused vs 0.42 s (medians), a generated
    1M-candidate benchmark 1.74 s vs 3.25 s. Use only around bounded work that creates no reference
    cycles worth collecting.
    """
    import gc

    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


@contextlib.contextmanager
def gc_frozen() -> Iterator[Callable[[], None]]:
    """Leave the objects alive now out of the cyclic collector's passes until the block ends
    (:func:`gc.freeze`, then :func:`gc.unfreeze`); the block gets a function that freezes what is
    alive when it is called, too. A no-op (and so is that function) when objects are already frozen
    (by the caller's own ``gc.freeze``).

    The collector still runs, over the objects made since, so cyclic garbage of the block (an
    encoder's included) is collected as usual; only the long-lived objects (torch's, pandas', the
    benchmark) are not walked again at every full collection. ``evaluate`` (frozen from its start,
    refrozen after loading, after building the encoder and at each task) with the tiny torch encoder:
    collections took 0.15 s of a cold run instead of 0.33 s (0.05 s instead of 0.20 s in full ones,
    mostly during the encoder's ``import torch``), and 0.05 s instead of 0.26 s in an interpreter that
    has imported everything.
    """
    import gc

    global _freezing
    if objects_frozen():
        yield lambda: None
        return
    gc.freeze()
    _freezing = True
    try:
        yield gc.freeze
    finally:
        _freezing = False
        gc.unfreeze()


_freezing = False
"""Whether a :func:`gc_frozen` block has frozen objects now."""


def objects_frozen() -> bool:
    """Whether objects are frozen now (by :func:`gc_frozen` or the caller's own :func:`gc.freeze`).

    A :func:`gc_frozen` block is known without asking :func:`gc.get_freeze_count`, which walks every
    frozen object: 18 ms with torch and pandas imported, once per benchmark load in ``evaluate``
    (~5 % of a warm run). Otherwise it is asked; the walk is short when little is frozen.
    """
    import gc

    return _freezing or gc.get_freeze_count() > 0


_GC_HOLD_LOCK = threading.Lock()
_gc_hold: list[Any] = [0, None, None]  # blocks holding full passes off, thresholds saved, thresholds set


def _gc_hold_after_fork() -> None:
    """In a forked child (decode and tokenising workers, forked while a block may hold full passes
    off): the parent's thresholds back, and no hold, since the blocks holding it are not in the child."""
    import gc

    global _GC_HOLD_LOCK
    _GC_HOLD_LOCK = threading.Lock()  # (another thread may have held it at the fork)
    if _gc_hold[0] > 0 and gc.get_threshold() == _gc_hold[2]:
        gc.set_threshold(*_gc_hold[1])
    _gc_hold[:] = [0, None, None]


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_gc_hold_after_fork)


@contextlib.contextmanager
def gc_full_passes_held() -> Iterator[None]:
    """Hold off the cyclic collector's automatic full passes (its oldest generation) in the block;
    the young generations are still collected, so short-lived cycles go as usual. Used around the
    encoding harness's loops (:data:`mrbench.encoders.harness.DEFER_FULL_COLLECTIONS`).

    A full pass walks every tracked object that has lived through two young passes and is not frozen
    (:func:`gc_frozen`): during an encode loop these are its own bookkeeping (item lists, paths,
    futures), never garbage, and a pass holds every thread up. Cycles that reach the oldest
    generation in the block wait for the next full pass after it.

    Implemented by raising the third threshold of :func:`gc.set_threshold` (the count of young passes
    between full ones) for as long as any such block runs (blocks may overlap, in threads); the first
    saves the thresholds and the last one restores them, unless they were changed meanwhile.
    Forked children (the decode and tokenising workers) get the saved thresholds back at the fork.
    Nothing is changed when the first threshold is 0 (automatic collection off that way; after
    ``gc.disable()`` the threshold is raised, to no effect). A collector that ignores the third
    threshold (CPython's incremental one) is not affected.
    """
    import gc

    entered = False
    try:
        with _GC_HOLD_LOCK:
            if _gc_hold[0] == 0:
                saved = gc.get_threshold()
                held = (saved[0], saved[1], max(saved[2], 1 << 30)) if saved[0] > 0 else saved
                gc.set_threshold(*held)
                _gc_hold[1:] = [saved, held]
            entered = True
            _gc_hold[0] += 1
        yield
    finally:
        if entered:
            with _GC_HOLD_LOCK:
                _gc_hold[0] = max(0, _gc_hold[0] - 1)
                if _gc_hold[0] == 0 and _gc_hold[1] is not None:
                    saved, held = _gc_hold[1], _gc_hold[2]
                    if gc.get_threshold() == held:  # (unless someone set their own meanwhile)
                        gc.set_threshold(*saved)
                    _gc_hold[1:] = [None, None]


def load_benchmark_dir(root: Path, verify: bool = True, log: Callable[[str], None] | None = None,
                       tasks: Sequence[str] | None = None) -> Benchmark:
    """Load a benchmark directory, validate it, and (when ``verify``) check its fingerprint.

    ``log(message)`` gets one line before the fingerprint is computed (skipped while the files are
    unchanged since the last check, see the verification stamps below).

    ``tasks``: load only these tasks (names from the manifest; an unknown name is an
    :class:`~mrbench.errors.UnknownNameError`); the other tasks' files are not read. The returned
    benchmark holds just those tasks, in the manifest's order; its ``fingerprint`` is still the whole
    benchmark's. With ``verify``, they are trusted while their own files and the manifest are unchanged
    since the whole benchmark was last verified (the stamp keeps one signature per task); otherwise
    the whole benchmark is loaded and its fingerprint checked first, as without ``tasks``.
    """
    import gc

    with gc_paused():
        bench = _load_benchmark_dir(Path(root), verify, log, tasks)
        # The benchmark's objects (~60k containers for MRBench-Synth) live as long as the benchmark and
        # form no reference cycles: they go to the collector's oldest generation at once (or, where the
        # caller keeps objects frozen, as evaluate does, join the frozen ones, as evaluate's refreeze
        # right after loading would), instead of the young-generation pass that re-enabling the
        # collector triggers at the next allocation: 38 ms of a 0.19 s warm MRBench-Synth load, for
        # nothing collected.
        frozen = objects_frozen()
        gc.freeze()
        if not frozen:
            gc.unfreeze()  # (every object alive now lands in the oldest generation, the caller's too)
        return bench


def _load_benchmark_dir(root: Path, verify: bool, log: Callable[[str], None] | None = None,
                        only: Sequence[str] | None = None) -> Benchmark:
    from mrbench.data.fingerprint import fingerprint

    if not root.is_dir():
        raise BenchmarkError(f"{root}: no such benchmark directory; build one with 'mrbench build synth --output {root}'")
    man_path = root / MANIFEST
    if not man_path.exists() and not (root / "tasks").is_dir():  # not a benchmark at all, rather than a damaged one
        if (root / RESULTS_MARKER).is_file():
            raise BenchmarkError(f"{root}: is a results directory of mrbench evaluate, not a benchmark; pass a benchmark "
                                 "name (mrbench benchmarks lists them) or a benchmark directory")
        raise BenchmarkError(f"{root}: holds no {MANIFEST}, so it is not a benchmark directory; build one from it with "
                             f"'mrbench build hf --dataset {root} --output DIR' (images with a metadata.jsonl of captions), or pass a "
                             "benchmark name "
                             "(mrbench benchmarks lists them)")
    man = read_json(man_path)
    if not isinstance(man, dict):
        raise BenchmarkError(f"{man_path}: expected a JSON object")
    sv = man.get("schema_version")
    if sv != SCHEMA_VERSION:
        raise BenchmarkError(f"{man_path}: schema_version {sv!r} is not supported (expected {SCHEMA_VERSION}); rebuild with this mrbench version")
    for key in ("name", "version", "tasks"):
        if key not in man:
            raise BenchmarkError(f"{man_path}: field {key!r} is missing; the manifest is corrupt, rebuild the benchmark")
    wanted = _wanted_tasks(man, man_path, only)
    tasks = []
    qrels_facts: dict[str, _QrelsFacts] = {}
    for i, tm in enumerate(man["tasks"]):
        try:
            files = tm["files"]
            name = tm["name"]
            if wanted is not None and name not in wanted:
                continue
            qrows = _read_jsonl(root / files["queries"])
            crows = _read_jsonl(root / files["candidates"])
            qrels, facts = _read_qrels(root / files["qrels"])
            if facts is not None:
                qrels_facts[name] = facts
            tasks.append(
                Task(
                    name=name,
                    query_modality=tm["query_modality"],
                    candidate_modality=tm["candidate_modality"],
                    queries=_parse_rows(Query, qrows, root / files["queries"], "query"),
                    candidates=_parse_rows(Candidate, crows, root / files["candidates"], "candidate"),
                    qrels=qrels,
                    query_instruction=tm.get("query_instruction"),
                    candidate_instruction=tm.get("candidate_instruction"),
                    relevance_level=int(tm.get("relevance_level", 1)),
                    description=tm.get("description", ""),
                    metadata=dict(tm.get("metadata") or {}),
                )
            )
        except KeyError as e:
            raise BenchmarkError(f"{man_path}: task #{i} lacks field {e.args[0]!r}; the manifest is corrupt, rebuild the benchmark") from None
    bench = Benchmark(
        name=man["name"],
        version=str(man["version"]),
        tasks=tasks,
        root=root,
        split=man.get("split", "test"),
        description=man.get("description", ""),
        fingerprint=man.get("fingerprint"),
        metadata=dict(man.get("metadata") or {}),
    )
    # the image files are looked for only where no valid stamp has just stat'ed them all (one stat each)
    _validate(bench, where=str(root), check_images=False, qrels_facts=qrels_facts)
    if verify:
        if _task_stamps_ok(bench) if wanted is not None else _stamp_ok(bench):
            return bench
        if wanted is not None:
            whole = _load_benchmark_dir(root, verify, log)  # verified as a whole first
            _write_stamp(whole)  # with the per-task signatures (a stamp from an older version has none)
            return dataclasses.replace(whole, tasks=[t for t in whole.tasks if t.name in wanted])
    for t in bench.tasks:
        _check_task_images(bench, t)
    if verify:
        if log is not None:
            n_img = len({it.image for t in bench.tasks for it in (*t.queries, *t.candidates) if it.image})
            n_pairs = sum(len(d) for t in bench.tasks for d in t.qrels.values())
            log(f"checking the fingerprint of {root} ({n_img:,} images, {n_pairs:,} qrels pairs; "
                "once, until its files change; --no-verify skips it)")
        actual = fingerprint(bench)
        if bench.fingerprint != actual:
            raise FingerprintMismatch(
                f"{root}: fingerprint mismatch (manifest {bench.fingerprint}, content {actual}); "
                "the files were changed after the build: rebuild the benchmark, or pass --no-verify to use it as is"
            )
        _write_stamp(bench)
    return bench


def _wanted_tasks(man: dict[str, Any], man_path: Path, only: Sequence[str] | None) -> set[str] | None:
    """The task names to load (``None``: all of them); unknown names are refused."""
    if only is None:
        return None
    try:
        names = [tm["name"] for tm in man["tasks"]]
    except (KeyError, TypeError):
        raise BenchmarkError(f"{man_path}: a task lacks its name; the manifest is corrupt, rebuild the benchmark") from None
    for n in only:
        if n not in names:
            raise UnknownNameError(f"benchmark {man.get('name')!r} has no task {n!r}{did_you_mean(n, names)}; "
                                   f"tasks: {', '.join(names)}")
    return None if set(names) <= set(only) else set(only)


# --------------------------------------------------------------------------- verification stamps
# Hashing every image on every load would dominate a warm evaluate. After a successful check we
# record the (path, size, mtime) of every file the benchmark uses; while none of them changes, the
# next load trusts the recorded fingerprint (the same rule make and git use for their indexes).
# A stamp also keeps one such signature per task (its three files and its images) and one of the
# manifest, so that loading some tasks only (``tasks=``) checks those tasks' files alone.
def _task_files(t: Task) -> set[str]:
    paths = {f"tasks/{t.name}/queries.jsonl", f"tasks/{t.name}/candidates.jsonl", f"tasks/{t.name}/qrels.txt"}
    paths.update(it.image for it in itertools.chain(t.queries, t.candidates) if it.image)
    return paths


def _signature(bench: Benchmark, paths: set[str], lines: dict[str, str] | None = None) -> str:
    """sha256 over ``path NUL size NUL mtime_ns`` lines of ``paths`` in sorted order; ``lines`` keeps
    each file's line, so that several signatures stat a file once."""
    import hashlib

    assert bench.root is not None
    root_s = os.path.join(os.fspath(bench.root), "")
    out = []
    for rel in sorted(paths):
        line = lines.get(rel) if lines is not None else None
        if line is None:
            try:  # the plain string first (a third of the cost of image_path per file); pathlib decides on failure
                st = os.stat(rel if rel.startswith("/") else root_s + rel)
            except OSError:
                st = os.stat(bench.image_path(rel))
            line = f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n"
            if lines is not None:
                lines[rel] = line
        out.append(line)
    return hashlib.sha256("".join(out).encode()).hexdigest()


def _stat_signature(bench: Benchmark, lines: dict[str, str] | None = None) -> str:
    paths = {MANIFEST}
    for t in bench.tasks:
        paths.update(_task_files(t))
    return _signature(bench, paths, lines)


def _stamp_path(bench: Benchmark) -> Path:
    import hashlib

    from mrbench.data.registry import mrbench_home

    key = hashlib.sha256(str(Path(bench.root).resolve()).encode()).hexdigest()[:24]
    return mrbench_home() / "verified" / f"{key}.json"


def _stamp_ok(bench: Benchmark) -> bool:
    try:
        rec = json.loads(_stamp_path(bench).read_text(encoding="utf-8"))
        return rec.get("fingerprint") == bench.fingerprint and rec.get("stat") == _stat_signature(bench)
    except (OSError, ValueError, AttributeError):
        return False


def _task_stamps_ok(bench: Benchmark) -> bool:
    """Whether the stamp vouches for the tasks ``bench`` holds: same fingerprint, and the manifest's
    and each of these tasks' signatures unchanged since the whole benchmark was verified."""
    try:
        rec = json.loads(_stamp_path(bench).read_text(encoding="utf-8"))
        per_task = rec.get("tasks") or {}
        return (rec.get("fingerprint") == bench.fingerprint and bench.fingerprint is not None
                and rec.get("manifest") == _signature(bench, {MANIFEST})
                and all(per_task.get(t.name) == _signature(bench, _task_files(t)) for t in bench.tasks))
    except (OSError, ValueError, AttributeError):
        return False


def record_verified(bench: Benchmark) -> None:
    """Record that the files under ``bench.root`` (as they are now) have ``bench.fingerprint``, so
    that loading them skips recomputing it until a file changes. For a builder that has just
    written the directory from the content it fingerprinted."""
    if bench.root is not None and bench.fingerprint:
        _write_stamp(bench)


def _write_stamp(bench: Benchmark) -> None:
    try:
        lines: dict[str, str] = {}
        rec = {"root": str(Path(bench.root).resolve()), "fingerprint": bench.fingerprint,
               "stat": _stat_signature(bench, lines), "manifest": _signature(bench, {MANIFEST}, lines),
               "tasks": {t.name: _signature(bench, _task_files(t), lines) for t in bench.tasks}}
        atomic_write_text(_stamp_path(bench), json.dumps(rec))
    except OSError:  # a read-only home only costs speed
        pass
