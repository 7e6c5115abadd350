"""Reader for the M-BEIR directory layout (UniIR, ``huggingface.co/datasets/TIGER-Lab/M-BEIR``).

This module only *reads and validates* M-BEIR files into small typed records; converting them to
:mod:`mrbench.data.schema` is a separate step.

Layout and conventions
----------------------
Paths are relative to the M-BEIR root (``mbeir_dir``); ``<name>`` is ``<dataset>_task<N>`` (e.g.
``mscoco_task0``) and ``<split>`` is ``test``, ``val`` or ``train``.

* Queries: ``query/<split>/mbeir_<name>_<split>.jsonl``; one JSON object per line with ``qid``
  (``"<dataset_id>:<n>"``), ``query_txt``, ``query_img_path``, ``query_modality``,
  ``query_src_content``, ``pos_cand_list``, ``neg_cand_list``, ``task_id``.
* Local candidate pool, looked up in this order (the first that exists wins):

  1. ``cand_pool/local/mbeir_<name>_<split>_cand_pool.jsonl``
  2. ``cand_pool/local/mbeir_<name>_cand_pool.jsonl`` (naming used by some releases)

  Each line has ``did``, ``txt``, ``img_path``, ``modality``, ``src_content``.
* Qrels: ``qrels/<split>/mbeir_<name>_<split>_qrels.txt``; whitespace-separated
  ``qid 0 did relevance [task_id]`` (M-BEIR writes the fifth column; plain 4-column TREC is accepted).
* Instructions: ``instructions/query_instructions.tsv`` (see :func:`read_instructions`).
* Modalities keep M-BEIR's spelling: ``"text"``, ``"image"``, ``"image,text"`` (``"text,image"``
  and ``"image+text"`` are read as ``"image,text"``).
* Dataset ids are read from the files (the part of ``qid`` / ``did`` before ``":"``), never
  assumed. :data:`MBEIR_DATASET_IDS` lists UniIR's ids for reference only.
* Empty lines are skipped in every file. Unknown JSON fields are ignored.
* Image paths stay as written in the files (relative); :meth:`MBeirTask.image_path` resolves
  them against ``image_root`` (default: the M-BEIR root).
"""

from __future__ import annotations

import csv
import functools
import itertools
import json
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from mrbench.errors import BenchmarkError, did_you_mean

__all__ = [
    "MBEIR_DATASET_IDS",
    "MBEIR_TASK_MODALITIES",
    "ChosenInstruction",
    "InstructionTable",
    "MBeirCandidate",
    "MBeirQuery",
    "MBeirTask",
    "MBeirTaskFiles",
    "choose_instruction",
    "find_task_files",
    "image_decode_error",
    "iter_candidates",
    "iter_queries",
    "normalize_modality",
    "read_instructions",
    "read_jsonl_records",
    "read_qrels",
    "read_task",
    "undecodable_images",
]

MBEIR_DATASET_IDS: dict[str, int] = {
    "visualnews": 0, "fashion200k": 1, "webqa": 2, "edis": 3, "nights": 4,
    "oven": 5, "infoseek": 6, "fashioniq": 7, "cirr": 8, "mscoco": 9,
}
"""UniIR's dataset ids (``src/data/preprocessing/utils.py``: ``DATASET_IDS``). Reference only."""

MBEIR_TASK_MODALITIES: dict[int, tuple[str, str]] = {
    0: ("text", "image"), 1: ("text", "text"), 2: ("text", "image,text"), 3: ("image", "text"),
    4: ("image", "image"), 6: ("image,text", "text"), 7: ("image,text", "image"),
    8: ("image,text", "image,text"),
}
"""UniIR's task ids → (query modality, candidate modality) (``MBEIR_TASK``). Reference only."""

DOWNLOAD_HINT = "download it from huggingface.co/datasets/TIGER-Lab/M-BEIR"
_NAME_RE = re.compile(r"^[a-z0-9]+_task\d+$")
_ID_RE = re.compile(r"^[^:\s]+:[^:\s]+$")
_MODALITY_ALIASES = {
    "text": "text", "image": "image", "image,text": "image,text", "text,image": "image,text",
    "image+text": "image,text", "text+image": "image,text",
}
_N_EXAMPLES = 5


def normalize_modality(value: str) -> str:
    """Return M-BEIR's spelling of a modality (``text``, ``image``, ``image,text``).

    Case and spaces are ignored; ``text,image`` and ``image+text`` map to ``image,text``.
    Raises ``KeyError`` for anything else (callers turn it into a located error).
    """
    return _MODALITY_ALIASES[value.strip().lower().replace(" ", "")]


# --------------------------------------------------------------------------------------------
# Records
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MBeirQuery:
    """One M-BEIR query line. ``image`` is the path as written (relative to the M-BEIR root)."""

    qid: str
    text: str | None
    image: str | None
    modality: str
    pos: tuple[str, ...]
    neg: tuple[str, ...] = ()
    task_id: int | None = None
    src_content: str | None = None

    @property
    def dataset_id(self) -> str:
        """The part of ``qid`` before ``":"``."""
        return self.qid.split(":", 1)[0]


@dataclass(frozen=True, slots=True)
class MBeirCandidate:
    """One candidate-pool line. ``image`` is the path as written (relative to the M-BEIR root)."""

    did: str
    text: str | None
    image: str | None
    modality: str
    src_content: str | None = None

    @property
    def dataset_id(self) -> str:
        """The part of ``did`` before ``":"``."""
        return self.did.split(":", 1)[0]


@dataclass(frozen=True)
class MBeirTaskFiles:
    """Resolved paths of one task's files. ``instructions`` is ``None`` when not requested."""

    name: str
    split: str
    root: Path
    queries: Path
    pool: Path
    qrels: Path
    instructions: Path | None


@dataclass(frozen=True)
class ChosenInstruction:
    """The instruction picked for a task: ``text`` is ``prompts[index]``; never random."""

    text: str
    index: int
    key: str
    n_available: int


@dataclass
class MBeirTask:
    """One M-BEIR task after reading, validation and dropping.

    * ``qrels[qid][did] = grade`` from the qrels file (authoritative; ``MBeirQuery.pos`` is kept
      as written), restricted to kept queries and to candidates in the (kept) pool.
    * ``dataset_id`` / ``query_modality`` / ``cand_modality`` come from the first kept query and
      the modality of its first relevant candidate (the key UniIR uses for instructions).
    * ``report`` counts what was read and dropped; keys are documented in :func:`read_task`.
    """

    name: str
    split: str
    task_id: int
    dataset_id: str
    query_modality: str
    cand_modality: str
    queries: list[MBeirQuery]
    candidates: list[MBeirCandidate]
    qrels: dict[str, dict[str, int]]
    instruction: ChosenInstruction | None
    files: MBeirTaskFiles
    image_root: Path
    report: dict[str, Any] = field(default_factory=dict)

    def image_path(self, rel: str | None) -> Path | None:
        """Resolve an image path as written in the files against ``image_root``."""
        return None if rel is None else self.image_root / rel


# --------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------


def find_task_files(mbeir_dir: str | Path, name: str, split: str = "test", *,
                    need_instructions: bool = True) -> MBeirTaskFiles:
    """Locate one task's query / pool / qrels (and instructions) files under the M-BEIR root.

    ``name`` is ``<dataset>_task<N>``, e.g. ``"mscoco_task0"``. The pool lookup order is in the
    module docstring. Raises :class:`BenchmarkError` naming every expected path that is missing.
    """
    root = Path(mbeir_dir)
    if not _NAME_RE.match(name):
        raise BenchmarkError(f"M-BEIR task name {name!r} is not of the form '<dataset>_task<N>' (e.g. 'mscoco_task0')")
    if not root.is_dir():
        raise BenchmarkError(f"{root}: M-BEIR directory not found; {DOWNLOAD_HINT} and pass its root directory")
    queries = root / "query" / split / f"mbeir_{name}_{split}.jsonl"
    pools = [root / "cand_pool" / "local" / f"mbeir_{name}_{split}_cand_pool.jsonl",
             root / "cand_pool" / "local" / f"mbeir_{name}_cand_pool.jsonl"]
    qrels = root / "qrels" / split / f"mbeir_{name}_{split}_qrels.txt"
    instructions = root / "instructions" / "query_instructions.tsv"
    missing: list[str] = []
    if not queries.is_file():
        missing.append(str(queries))
    pool = next((p for p in pools if p.is_file()), None)
    if pool is None:
        missing.append(" or ".join(str(p) for p in pools))
    if not qrels.is_file():
        missing.append(str(qrels))
    if need_instructions and not instructions.is_file():
        missing.append(str(instructions))
    if missing:
        raise BenchmarkError(f"M-BEIR task {name} ({split}): missing {'; '.join(missing)}; "
                             f"{DOWNLOAD_HINT} (query/, cand_pool/local/, qrels/, instructions/) into {root}")
    assert pool is not None
    return MBeirTaskFiles(name=name, split=split, root=root, queries=queries, pool=pool, qrels=qrels,
                          instructions=instructions if need_instructions else None)


def _open_text(path: Path):
    try:
        return open(path, encoding="utf-8", newline="")
    except FileNotFoundError:
        raise BenchmarkError(f"{path}: file missing; {DOWNLOAD_HINT}") from None


_KIND_FIELDS: dict[str, dict[str, str]] = {
    # field → "id" (required "<a>:<b>" string) | "modality" | "str?" (string or null, optional)
    #         | "ids" (required list of strings) | "ids?" (optional list) | "int?" | "any?"
    "query": {"qid": "id", "query_modality": "modality", "query_txt": "str?", "query_img_path": "str?",
              "pos_cand_list": "ids", "neg_cand_list": "ids?", "task_id": "int?", "query_src_content": "any?"},
    "candidate": {"did": "id", "modality": "modality", "txt": "str?", "img_path": "str?", "src_content": "any?"},
}


def read_jsonl_records(path: str | Path, kind: Literal["query", "candidate"]) -> Iterator[tuple[int, dict[str, Any]]]:
    """Stream ``(line_number, record)`` from an M-BEIR query or candidate-pool JSONL file.

    Each record is validated for ``kind`` (fields listed in the module docstring); ``modality`` /
    ``query_modality`` are normalised (:func:`normalize_modality`) and the text/image the modality
    names must be present. Line numbers are 1-based; empty lines are skipped. A bad line raises
    :class:`BenchmarkError` ``"FILE:LINE: ..."`` naming the field.
    """
    if kind not in _KIND_FIELDS:
        raise ValueError(f"kind must be 'query' or 'candidate', not {kind!r}")
    spec = _KIND_FIELDS[kind]
    txt_key, img_key, mod_key = (("query_txt", "query_img_path", "query_modality") if kind == "query"
                                 else ("txt", "img_path", "modality"))
    path = Path(path)
    with _open_text(path) as f:
        lineno = 0
        try:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                where = f"{path}:{lineno}"
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    raise BenchmarkError(f"{where}: not valid JSON ({e.msg} at column {e.colno}); "
                                         f"fix the line or {DOWNLOAD_HINT} again") from None
                if not isinstance(obj, dict):
                    raise BenchmarkError(f"{where}: expected a JSON object, got {type(obj).__name__}")
                for name, rule in spec.items():
                    _check_field(obj, name, rule, where, kind)
                for key, tok in ((txt_key, "text"), (img_key, "image")):
                    if tok in obj[mod_key].split(",") and not obj.get(key):
                        raise BenchmarkError(f"{where}: {mod_key} is {obj[mod_key]!r} but '{key}' is empty or null; "
                                             f"fix the line or {DOWNLOAD_HINT} again")
                yield lineno, obj
        except UnicodeDecodeError:
            raise BenchmarkError(f"{path}: not UTF-8 text (somewhere after line {lineno}); "
                                 f"{DOWNLOAD_HINT} again") from None


def _check_field(obj: dict[str, Any], name: str, rule: str, where: str, kind: str) -> None:
    optional = rule.endswith("?")
    value = obj.get(name)
    if value is None:
        if optional:
            return
        state = "missing" if name not in obj else "null"
        raise BenchmarkError(f"{where}: {kind} field '{name}' is {state}; every {kind} line needs it")
    bad = None
    if rule == "id":
        if not isinstance(value, str) or not _ID_RE.match(value):
            bad = "a string '<dataset_id>:<n>'"
    elif rule == "modality":
        try:
            obj[name] = normalize_modality(value) if isinstance(value, str) else None
        except KeyError:
            obj[name] = None
        if obj[name] is None:
            bad = "one of 'text', 'image', 'image,text'"
    elif rule == "str?":
        if not isinstance(value, str):
            bad = "a string or null"
    elif rule in ("ids", "ids?"):
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            bad = "a list of id strings"
    elif rule == "int?":
        if isinstance(value, str) and value.strip().isdigit():
            obj[name] = int(value)
        elif not isinstance(value, int) or isinstance(value, bool):
            bad = "an integer"
    if bad is not None:
        raise BenchmarkError(f"{where}: {kind} field '{name}' = {_short(value)} is invalid, expected {bad}")


def _short(value: Any, n: int = 40) -> str:
    s = json.dumps(value, ensure_ascii=False)
    return s if len(s) <= n else s[: n - 3] + "..."


def _src(value: Any) -> str | None:
    return value if value is None or isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def iter_queries(path: str | Path) -> Iterator[MBeirQuery]:
    """Stream :class:`MBeirQuery` records from a query JSONL file (validated by :func:`read_jsonl_records`)."""
    for _, o in read_jsonl_records(path, "query"):
        yield MBeirQuery(qid=o["qid"], text=o.get("query_txt"), image=o.get("query_img_path"),
                         modality=o["query_modality"], pos=tuple(o["pos_cand_list"]),
                         neg=tuple(o.get("neg_cand_list") or ()), task_id=o.get("task_id"),
                         src_content=_src(o.get("query_src_content")))


def iter_candidates(path: str | Path) -> Iterator[MBeirCandidate]:
    """Stream :class:`MBeirCandidate` records from a candidate-pool JSONL file."""
    for _, o in read_jsonl_records(path, "candidate"):
        yield MBeirCandidate(did=o["did"], text=o.get("txt"), image=o.get("img_path"), modality=o["modality"],
                             src_content=_src(o.get("src_content")))


def read_qrels(path: str | Path) -> dict[str, dict[str, int]]:
    """Read M-BEIR qrels: ``qid 0 did relevance [task_id]`` per line, whitespace separated.

    Returns ``qrels[qid][did] = relevance`` (non-negative int; the optional fifth column must be an
    integer and is otherwise ignored). Empty lines are skipped; a malformed line, a negative grade
    or a duplicate ``(qid, did)`` pair raises :class:`BenchmarkError` ``"FILE:LINE: ..."``.
    """
    path = Path(path)
    qrels: dict[str, dict[str, int]] = {}
    with _open_text(path) as f:
        for lineno, line in enumerate(f, 1):
            parts = line.split()
            if not parts:
                continue
            where = f"{path}:{lineno}"
            if len(parts) not in (4, 5):
                raise BenchmarkError(f"{where}: expected 'qid 0 did relevance [task_id]' (4 or 5 fields), "
                                     f"got {len(parts)}; fix the line or {DOWNLOAD_HINT} again")
            qid, _, did, grade = parts[:4]
            if not (grade.isdigit() or (grade.startswith("-") and grade[1:].isdigit())):
                raise BenchmarkError(f"{where}: relevance {grade!r} is not an integer")
            if int(grade) < 0:
                raise BenchmarkError(f"{where}: relevance {grade} is negative; grades must be >= 0")
            if len(parts) == 5 and not parts[4].isdigit():
                raise BenchmarkError(f"{where}: task_id {parts[4]!r} (fifth field) is not an integer")
            per_q = qrels.setdefault(qid, {})
            if did in per_q:
                raise BenchmarkError(f"{where}: duplicate qrels line for ({qid}, {did}); keep one")
            per_q[did] = int(grade)
    return qrels


# --------------------------------------------------------------------------------------------
# Instructions
# --------------------------------------------------------------------------------------------

_QMOD_COLS = ("query_modality",)
_CMOD_COLS = ("cand_modality", "candidate_modality")
_NAME_COLS = ("dataset_name", "dataset", "name")
_ID_COLS = ("dataset_id",)
_PROMPT_RE = re.compile(r"^(prompt|instruction)s?_?\d*$")


def _cell(row: list[str], i: int | None) -> str:
    return row[i].strip() if i is not None and i < len(row) else ""


def _norm_col(name: str) -> str:
    return re.sub(r"[\s\-]+", "_", name.strip().lower())


@dataclass
class InstructionTable:
    """Query instructions keyed by ``(dataset_id, query_modality, cand_modality)``.

    ``prompts`` maps that key (modalities in M-BEIR spelling) to the non-empty prompts of the row,
    in column order; ``names`` maps a lower-cased dataset name to its id (when the file has names).
    """

    path: Path
    prompts: dict[tuple[str, str, str], list[str]]
    names: dict[str, str]

    def lookup(self, dataset: str | int, query_modality: str, cand_modality: str) -> list[str]:
        """Prompts for a dataset (id like ``9``/``"9"`` or name like ``"MSCOCO"``, case-insensitive)
        and a modality pair. Raises :class:`BenchmarkError` when the table has no such row."""
        ds = str(dataset).strip()
        ds_id = ds if ds in {k[0] for k in self.prompts} else self.names.get(ds.lower(), ds)
        try:
            key = (ds_id, normalize_modality(query_modality), normalize_modality(cand_modality))
        except KeyError:
            raise BenchmarkError(f"{self.path}: modality pair ({query_modality!r}, {cand_modality!r}) is not "
                                 "one of 'text', 'image', 'image,text'") from None
        if key not in self.prompts:
            have = sorted(f"{q}->{c}" for d, q, c in self.prompts if d == ds_id)
            hint = (f"rows for dataset {ds_id}: {', '.join(have)}" if have else
                    f"no row for dataset {dataset!r}" + did_you_mean(ds.lower(), list(self.names)))
            raise BenchmarkError(f"{self.path}: no instruction for dataset {dataset!r}, {key[1]} -> {key[2]} "
                                 f"({hint}); check the instructions file or read the task without instructions")
        return list(self.prompts[key])


def read_instructions(path: str | Path) -> InstructionTable:
    """Read M-BEIR's ``instructions/query_instructions.tsv``.

    Tab-separated with one header line. M-BEIR's header is
    ``query_modality  cand_modality  dataset_name  dataset_id  prompt_1 … prompt_4`` (UniIR reads the
    same columns by position). Column names are matched after lower-casing and turning spaces and
    hyphens into ``_`` (so ``"Query Modality"`` works); accepted names: query modality
    ``query_modality``; candidate modality ``cand_modality`` / ``candidate_modality``; dataset id
    ``dataset_id``; dataset name (optional) ``dataset_name`` / ``dataset`` / ``name``; prompts: every
    column named ``prompt``/``instruction`` with an optional ``s``/``_``/number (``prompt_1``,
    ``Prompt 2``, ``instruction3``), in file order. Empty prompt cells are dropped; prompts are
    stripped but otherwise kept verbatim. A duplicate key or a row without prompts is an error.
    """
    path = Path(path)
    with _open_text(path) as f:
        rows = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(rows, None)
        if header is None:
            raise BenchmarkError(f"{path}: empty file, expected a header line; {DOWNLOAD_HINT} again")
        cols = [_norm_col(h) for h in header]

        def col(names: tuple[str, ...], required: bool = True) -> int | None:
            for n in names:
                if n in cols:
                    return cols.index(n)
            if required:
                raise BenchmarkError(f"{path}:1: header {header!r} has no {names[0]!r} column "
                                     f"(accepted: {', '.join(names)}); {DOWNLOAD_HINT} again")
            return None

        i_q, i_c, i_id = col(_QMOD_COLS), col(_CMOD_COLS), col(_ID_COLS)
        i_name = col(_NAME_COLS, required=False)
        i_prompts = [i for i, c in enumerate(cols) if _PROMPT_RE.match(c)]
        if not i_prompts:
            raise BenchmarkError(f"{path}:1: header {header!r} has no prompt columns (expected prompt_1, prompt_2, ...)")
        prompts: dict[tuple[str, str, str], list[str]] = {}
        names: dict[str, str] = {}
        for row in rows:
            lineno = rows.line_num
            if not any(c.strip() for c in row):
                continue
            cell = functools.partial(_cell, row)
            where = f"{path}:{lineno}"
            try:
                qm, cm = normalize_modality(cell(i_q)), normalize_modality(cell(i_c))
            except KeyError:
                raise BenchmarkError(f"{where}: modality {cell(i_q)!r} -> {cell(i_c)!r} is not one of "
                                     "'text', 'image', 'image,text'") from None
            ds_id = cell(i_id)
            if not ds_id:
                raise BenchmarkError(f"{where}: empty 'dataset_id'")
            key = (ds_id, qm, cm)
            if key in prompts:
                raise BenchmarkError(f"{where}: duplicate row for dataset {ds_id}, {qm} -> {cm}; keep one")
            ps = [cell(i) for i in i_prompts if cell(i)]
            if not ps:
                raise BenchmarkError(f"{where}: row for dataset {ds_id}, {qm} -> {cm} has no prompt")
            prompts[key] = ps
            if i_name is not None and cell(i_name):
                names[cell(i_name).lower()] = ds_id
    return InstructionTable(path=path, prompts=prompts, names=names)


def choose_instruction(prompts: list[str], key: str) -> ChosenInstruction:
    """Pick the instruction for a task: always the **first** prompt (index 0), never random.

    UniIR samples a random prompt per query at training time; for evaluation we fix the choice so
    two runs see the same text. ``key`` (e.g. ``"9, text -> image"``) is recorded for reports.
    """
    if not prompts:
        raise BenchmarkError(f"no instruction prompts for {key}; check the instructions file")
    return ChosenInstruction(text=prompts[0], index=0, key=key, n_available=len(prompts))


# --------------------------------------------------------------------------------------------
# Tasks
# --------------------------------------------------------------------------------------------


class _FileIndex:
    """Answers "is this a file?" by listing each directory once (fast for 100k-image pools)."""

    def __init__(self) -> None:
        self._dirs: dict[str, frozenset[str]] = {}

    def exists(self, path: str) -> bool:
        d, _, name = os.path.normpath(path).rpartition(os.sep)
        names = self._dirs.get(d)
        if names is None:
            try:
                with os.scandir(d or ".") as it:
                    names = frozenset(e.name for e in it if e.is_file())
            except OSError:
                names = frozenset()
            self._dirs[d] = names
        return name in names


def image_decode_error(path: str | Path) -> str | None:
    """``None`` when Pillow opens ``path`` and decodes all of its pixels (``Image.open(...).load()``,
    what the encoders' loader does), else the reason in one line (a zero-byte or truncated file, an
    unknown format, a decompression bomb, ...)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
    except UnidentifiedImageError:  # its message repeats the path
        return "empty file (0 bytes)" if os.path.getsize(path) == 0 else "not an image format Pillow reads"
    except Exception as e:  # OSError, UnidentifiedImageError, DecompressionBombError, SyntaxError, ...
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        return f"{type(e).__name__}: {msg}" if not isinstance(e, OSError) else msg
    return None


def undecodable_images(paths: Iterable[str], workers: int | None = None) -> dict[str, str]:
    """``{path: reason}`` for the files of ``paths`` that :func:`image_decode_error` refuses, each path
    decoded once, on up to 8 threads (Pillow releases the GIL while decoding)."""
    from concurrent.futures import ThreadPoolExecutor

    todo = list(dict.fromkeys(paths))
    n = workers if workers is not None else min(8, os.cpu_count() or 1)
    if n < 2 or len(todo) < 16:
        errors = map(image_decode_error, todo)
        return {p: e for p, e in zip(todo, errors) if e is not None}
    with ThreadPoolExecutor(n) as pool:
        return {p: e for p, e in zip(todo, pool.map(image_decode_error, todo, chunksize=16)) if e is not None}


def read_task(mbeir_dir: str | Path, name: str, split: str = "test", image_root: str | Path | None = None,
              check_images: bool = True, *, skip_missing: bool = False,
              with_instruction: bool = True, decode_images: bool = False) -> MBeirTask:
    """Read, validate and clean one M-BEIR task (e.g. ``"mscoco_task0"``).

    * Image paths are resolved against ``image_root`` (default: ``mbeir_dir``). With
      ``check_images``, a missing image raises :class:`BenchmarkError` with the count and the first
      paths (suggesting ``--skip-missing``); with ``skip_missing=True`` the queries / candidates
      whose image is missing are dropped instead and counted.
    * ``decode_images`` (with ``check_images``; what ``build mbeir`` asks for): every image present is
      also opened and fully decoded with Pillow (:func:`undecodable_images`), once per file. An image
      that does not decode (zero bytes, truncated, not an image) is treated like a missing one: an
      error naming the input file, the id of the first query / candidate that uses it and the reason;
      with ``skip_missing=True`` its queries / candidates are dropped and counted.
    * Relevance comes from the qrels file. A query with no relevant (grade > 0) candidate in the
      qrels is dropped; a query with **any** relevant candidate absent from the (kept) pool is
      dropped, because its scores would be wrong. Both are counted.
    * ``with_instruction``: the instruction is the first prompt of the row for
      (dataset id, query modality, candidate modality) (:func:`choose_instruction`).

    ``report`` keys (all ints, plus two lists): ``queries_read``, ``candidates_read``,
    ``missing_images`` (distinct files), ``missing_image_examples`` (first few paths),
    ``undecodable_images`` (distinct files), ``undecodable_image_examples`` (first few
    ``"path (id ...: reason)"``), ``dropped_candidates_missing_image``, ``dropped_queries_missing_image``
    (both count undecodable images too),
    ``dropped_queries_no_qrels``, ``dropped_queries_positive_not_in_pool``,
    ``qrels_queries_not_in_query_file``, ``queries``, ``candidates``.
    """
    files = find_task_files(mbeir_dir, name, split, need_instructions=with_instruction)
    root = files.root
    img_root = Path(image_root) if image_root is not None else root
    img_root_s = str(img_root)
    index = _FileIndex()
    missing: dict[str, None] = {}  # insertion-ordered set of missing image paths
    broken: dict[str, str] = {}  # undecodable image path → reason (filled before the filtering below)
    undecodable: dict[str, str] = {}  # insertion-ordered: path → "id ...: reason" of its first user

    def image_ok(rel: str | None, item_id: str) -> bool:
        if rel is None or not check_images:
            return True
        full = os.path.join(img_root_s, rel)
        if not index.exists(full):
            missing.setdefault(full, None)
            return False
        if full in broken:
            undecodable.setdefault(full, f"id {item_id}: {broken[full]}")
            return False
        return True

    report: dict[str, Any] = {k: 0 for k in (
        "queries_read", "candidates_read", "missing_images", "undecodable_images", "dropped_candidates_missing_image",
        "dropped_queries_missing_image", "dropped_queries_no_qrels", "dropped_queries_positive_not_in_pool",
        "qrels_queries_not_in_query_file", "queries", "candidates")}
    qrels_all = read_qrels(files.qrels)

    all_candidates: list[MBeirCandidate] = []
    dids: set[str] = set()
    for lineno, o in read_jsonl_records(files.pool, "candidate"):
        report["candidates_read"] += 1
        did = o["did"]
        if did in dids:
            raise BenchmarkError(f"{files.pool}:{lineno}: duplicate did {did!r}; each candidate must appear once")
        dids.add(did)
        all_candidates.append(MBeirCandidate(did=did, text=o.get("txt"), image=o.get("img_path"), modality=o["modality"],
                                             src_content=_src(o.get("src_content"))))
    del dids
    all_queries: list[MBeirQuery] = []
    seen: set[str] = set()
    for lineno, o in read_jsonl_records(files.queries, "query"):
        report["queries_read"] += 1
        qid = o["qid"]
        if qid in seen:
            raise BenchmarkError(f"{files.queries}:{lineno}: duplicate qid {qid!r}; each query must appear once")
        seen.add(qid)
        all_queries.append(MBeirQuery(qid=qid, text=o.get("query_txt"), image=o.get("query_img_path"),
                                      modality=o["query_modality"], pos=tuple(o["pos_cand_list"]),
                                      neg=tuple(o.get("neg_cand_list") or ()), task_id=o.get("task_id"),
                                      src_content=_src(o.get("query_src_content"))))
    del seen
    if check_images and decode_images:
        present = (os.path.join(img_root_s, it.image) for it in (*all_candidates, *all_queries) if it.image is not None)
        broken.update(undecodable_images(p for p in present if index.exists(p)))

    candidates: list[MBeirCandidate] = []
    pool: dict[str, str] = {}  # did → modality
    for c in all_candidates:
        if not image_ok(c.image, c.did) and skip_missing:
            report["dropped_candidates_missing_image"] += 1
            continue
        pool[c.did] = c.modality
        candidates.append(c)
    del all_candidates

    queries: list[MBeirQuery] = []
    qrels: dict[str, dict[str, int]] = {}
    for q in all_queries:
        judged = qrels_all.pop(q.qid, {})
        if not image_ok(q.image, q.qid) and skip_missing:
            report["dropped_queries_missing_image"] += 1
            continue
        relevant = [d for d, g in judged.items() if g > 0]
        if not relevant:
            report["dropped_queries_no_qrels"] += 1
            continue
        if any(d not in pool for d in relevant):
            report["dropped_queries_positive_not_in_pool"] += 1
            continue
        qrels[q.qid] = {d: g for d, g in judged.items() if d in pool}
        queries.append(q)
    del all_queries
    report["qrels_queries_not_in_query_file"] = len(qrels_all)
    del qrels_all

    report["missing_images"] = len(missing)
    report["missing_image_examples"] = list(missing)[:_N_EXAMPLES]
    report["undecodable_images"] = len(undecodable)
    report["undecodable_image_examples"] = [f"{p} ({why})" for p, why in itertools.islice(undecodable.items(), _N_EXAMPLES)]
    if missing and not skip_missing:
        raise BenchmarkError(
            f"M-BEIR task {name} ({split}): {len(missing)} image file(s) missing under {img_root} "
            f"(first: {', '.join(report['missing_image_examples'])}); download mbeir_images/ from "
            "huggingface.co/datasets/TIGER-Lab/M-BEIR, pass the right image_root, or rerun with "
            "--skip-missing (skip_missing=True) to drop those queries and candidates")
    if undecodable and not skip_missing:
        first, why = next(iter(undecodable.items()))
        raise BenchmarkError(
            f"M-BEIR task {name} ({split}): {len(undecodable)} image file(s) cannot be decoded (first: {first}, "
            f"{why}); replace them from huggingface.co/datasets/TIGER-Lab/M-BEIR mbeir_images/, or rerun with "
            "--skip-missing (skip_missing=True) to drop the queries and candidates that use them")
    if not queries:
        counts = ", ".join(f"{k}={v}" for k, v in report.items() if k.startswith("dropped") and v)
        raise BenchmarkError(f"M-BEIR task {name} ({split}): no query left to evaluate "
                             f"({report['queries_read']} read; {counts or 'query file empty'}); check {files.queries}")
    report["queries"], report["candidates"] = len(queries), len(candidates)

    first = queries[0]
    first_pos = next(d for d, g in qrels[first.qid].items() if g > 0)
    dataset_id, qmod, cmod = first.dataset_id, first.modality, pool[first_pos]
    instruction = None
    if with_instruction:
        assert files.instructions is not None
        table = read_instructions(files.instructions)
        instruction = choose_instruction(table.lookup(dataset_id, qmod, cmod), key=f"{dataset_id}, {qmod} -> {cmod}")
    return MBeirTask(name=name, split=split, task_id=int(name.rsplit("task", 1)[1]), dataset_id=dataset_id,
                     query_modality=qmod, cand_modality=cmod, queries=queries, candidates=candidates, qrels=qrels,
                     instruction=instruction, files=files, image_root=img_root, report=report)
