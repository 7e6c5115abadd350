"""Benchmarks as Parquet and as Hugging Face ``datasets``, both ways.

Parquet export layout::

    manifest.json                   the benchmark manifest with ``"format": "parquet"``
    tasks/<task>/queries.parquet    id, text, image (original relative path), image_bytes, grains
                                    (list of {text, type, key}), meta (JSON string)
    tasks/<task>/candidates.parquet id, text, image, image_bytes, meta
    tasks/<task>/qrels.parquet      qid, did, grade

Images travel inside the files, so one directory (or a hub dataset repo) holds everything. Any of
these files loads with ``datasets.load_dataset("parquet", data_files=...)`` or ``pandas.read_parquet``.
Importing writes a regular benchmark directory whose fingerprint equals the original's: the
fingerprint hashes image bytes, not paths.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mrbench.data.io import (
    MANIFEST,
    atomic_dir,
    atomic_write_text,
    benchmark_manifest,
    read_json,
    task_manifest,
    validate,
    write_benchmark_files,
)
from mrbench.data.jsonenc import dumps_function, loads_many
from mrbench.data.schema import Benchmark, Candidate, Grain, Query, Task
from mrbench.errors import BenchmarkError, FingerprintMismatch

PARQUET_FORMAT = "parquet"


def _image_bytes(bench: Benchmark, rel: str | None) -> bytes | None:
    if not rel:
        return None
    p = bench.image_path(rel)
    try:
        return p.read_bytes()
    except OSError as e:
        raise BenchmarkError(f"{p}: cannot read image ({e.strerror or e})") from None


def _task_frames(bench: Benchmark, task: Task) -> dict[str, Any]:
    import pandas as pd

    meta_json = dumps_function(sort_keys=True)  # json.dumps(meta, sort_keys=True), one encoder for all rows

    q = pd.DataFrame(
        {
            "id": [x.id for x in task.queries],
            "text": [x.text for x in task.queries],
            "image": [x.image for x in task.queries],
            "image_bytes": [_image_bytes(bench, x.image) for x in task.queries],
            "grains": [[{"text": g.text, "type": g.type, "key": g.key} for g in x.grains] for x in task.queries],
            "meta": [meta_json(x.meta) for x in task.queries],
        }
    )
    c = pd.DataFrame(
        {
            "id": [x.id for x in task.candidates],
            "text": [x.text for x in task.candidates],
            "image": [x.image for x in task.candidates],
            "image_bytes": [_image_bytes(bench, x.image) for x in task.candidates],
            "meta": [meta_json(x.meta) for x in task.candidates],
        }
    )
    rows = [(qid, did, int(g)) for qid, d in sorted(task.qrels.items()) for did, g in sorted(d.items())]
    r = pd.DataFrame(rows, columns=["qid", "did", "grade"])
    return {"queries": q, "candidates": c, "qrels": r}


def export_parquet(bench: Benchmark, out: Path, overwrite: bool = False) -> Path:
    """Write ``bench`` as a self-contained Parquet directory (atomically)."""
    from mrbench.data.fingerprint import fingerprint

    validate(bench)
    fp = bench.fingerprint or fingerprint(bench)
    with atomic_dir(Path(out), overwrite=overwrite, marker=MANIFEST, what="a Parquet export") as st:
        tasks_meta = []
        for t in bench.tasks:
            tdir = st / "tasks" / t.name
            tdir.mkdir(parents=True)
            files = {}
            for kind, df in _task_frames(bench, t).items():
                df.to_parquet(tdir / f"{kind}.parquet", index=False)
                files[kind] = f"tasks/{t.name}/{kind}.parquet"
            tasks_meta.append(task_manifest(t, files))
        manifest = benchmark_manifest(bench, tasks_meta, fp, PARQUET_FORMAT)
        atomic_write_text(st / MANIFEST, json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
    return Path(out)


def _column(df: Any, name: str) -> list[Any]:
    """A DataFrame column as a list (``None`` for every row when the column is absent)."""
    return df[name].tolist() if name in df.columns else [None] * len(df)


def _metas(col: list[Any]) -> list[dict[str, Any]]:
    """The ``meta`` column's JSON objects (``{}`` where missing), parsed in one ``json.loads`` call
    (one call per row where that does not give one value per row)."""
    vals = [m if isinstance(m, str) and m else None for m in col]
    strs = [m for m in vals if m is not None]
    parsed = loads_many(strs)
    if parsed is None:  # pragma: no cover - not written by export_parquet: each parsed, the bad one raises
        parsed = [json.loads(m) for m in strs]
    it = iter(parsed)
    return [next(it) if m is not None else {} for m in vals]


def _ids(df: Any) -> list[str]:
    return [str(i) for i in df["id"].tolist()]


def _materialise(header: dict[str, Any], frames: dict[str, dict[str, Any]], out: Path, overwrite: bool, where: str) -> Benchmark:
    """Write a benchmark directory from per-task query/candidate/qrels tables (pandas DataFrames)."""
    with atomic_dir(out, overwrite=overwrite, marker=MANIFEST, what="a benchmark") as st:
        tasks = []
        for tm in header["tasks"]:
            name = tm["name"]
            fr = frames[name]
            used: set[str] = set()

            def place(kind: str, item_id: str, rel: Any, data: Any) -> str | None:
                if data is None or (isinstance(data, float)):
                    return None
                rel = str(rel) if isinstance(rel, str) and rel else f"images/{name}/{kind}/{item_id}.img"
                if Path(rel).is_absolute() or ".." in Path(rel).parts:
                    raise BenchmarkError(f"{where}: task {name!r} {kind} {item_id!r} has an unsafe image path {rel!r}")
                dst = st / rel
                if rel not in used:
                    dst.parent.mkdir(parents=True, exist_ok=True)
                    dst.write_bytes(bytes(data))
                    used.add(rel)
                return rel

            def none(v: Any) -> Any:
                return None if v is None or (isinstance(v, float) and v != v) else v

            # whole columns as lists (a dict per row from pandas cost ~5 s per million rows)
            qf = fr["queries"]
            queries = [
                Query(
                    id=i,
                    text=none(text),
                    image=place("queries", i, rel, data),
                    grains=[Grain(text=g["text"], type=g["type"], key=none(g.get("key"))) for g in (grains if grains is not None else [])],
                    meta=meta,
                )
                for i, text, rel, data, grains, meta in zip(
                    _ids(qf), _column(qf, "text"), _column(qf, "image"), _column(qf, "image_bytes"), _column(qf, "grains"),
                    _metas(_column(qf, "meta")))
            ]
            cf = fr["candidates"]
            cands = [
                Candidate(
                    id=i,
                    text=none(text),
                    image=place("candidates", i, rel, data) if data is not None else None,
                    meta=meta,
                )
                for i, text, rel, data, meta in zip(
                    _ids(cf), _column(cf, "text"), _column(cf, "image"), _column(cf, "image_bytes"),
                    _metas(_column(cf, "meta")))
            ]
            qrels: dict[str, dict[str, int]] = {}
            rf = fr["qrels"]
            for qid, did, grade in zip(map(str, _column(rf, "qid")), map(str, _column(rf, "did")), _column(rf, "grade")):
                if did in qrels.setdefault(qid, {}):
                    raise BenchmarkError(f"{where}: task {name!r} has a duplicate qrels row ({qid}, {did}); keep one")
                qrels[qid][did] = int(grade)
            tasks.append(
                Task(
                    name=name, query_modality=tm["query_modality"], candidate_modality=tm["candidate_modality"],
                    queries=queries, candidates=cands, qrels=qrels,
                    query_instruction=tm.get("query_instruction"), candidate_instruction=tm.get("candidate_instruction"),
                    relevance_level=int(tm.get("relevance_level", 1)), description=tm.get("description", ""),
                    metadata=dict(tm.get("metadata") or {}),
                )
            )
        bench = Benchmark(
            name=header["name"], version=str(header["version"]), tasks=tasks, root=st,
            split=header.get("split", "test"), description=header.get("description", ""),
            metadata=dict(header.get("metadata") or {}),
        )
        try:
            fp = write_benchmark_files(bench, st)
        except BenchmarkError as e:  # name the export, not the staging directory being written
            raise type(e)(str(e).replace(str(st), where)) from None
        expected = header.get("fingerprint")
        if expected and expected != fp:
            raise FingerprintMismatch(f"{where}: content hashes to {fp} but the source records {expected}; the export was modified or is incomplete")
    bench.root = Path(out)
    bench.fingerprint = fp
    return bench


def import_parquet(src: Path, out: Path, overwrite: bool = False) -> Benchmark:
    """Turn a Parquet export into a regular benchmark directory at ``out``; checks the fingerprint."""
    import pandas as pd

    src = Path(src)
    man_path = src / MANIFEST
    header = read_json(man_path, missing="file missing; not a Parquet benchmark export", corrupt="export the benchmark again")
    frames = {}
    for tm in header.get("tasks", []):
        fr = {}
        for kind in ("queries", "candidates", "qrels"):
            p = src / tm["files"][kind]
            try:
                fr[kind] = pd.read_parquet(p)
            except FileNotFoundError:
                raise BenchmarkError(f"{p}: file missing; the export is incomplete") from None
            except Exception as e:  # pyarrow raises several types for corrupt files
                raise BenchmarkError(f"{p}: cannot read Parquet ({type(e).__name__}); the file is corrupt, export again") from None
        frames[tm["name"]] = fr
    return _materialise(header, frames, Path(out), overwrite, str(src))


def to_hf_datasets(bench: Benchmark) -> dict[str, Any]:
    """Return ``{task_name: datasets.DatasetDict(queries=…, candidates=…, qrels=…)}``; image columns
    use the ``datasets.Image`` feature (bytes embedded). Benchmark-level fields go in ``info``.
    """
    import datasets

    out: dict[str, Any] = {}
    for t in bench.tasks:
        fr = _task_frames(bench, t)
        dd = {}
        for kind in ("queries", "candidates"):
            df = fr[kind].copy()
            df["image_data"] = [None if b is None else {"bytes": b, "path": p} for b, p in zip(df["image_bytes"], df["image"])]
            df = df.drop(columns=["image_bytes"])
            ds = datasets.Dataset.from_pandas(df, preserve_index=False)
            ds = ds.cast_column("image_data", datasets.Image(decode=False))
            dd[kind] = ds
        dd["qrels"] = datasets.Dataset.from_pandas(fr["qrels"], preserve_index=False)
        ddict = datasets.DatasetDict(dd)
        out[t.name] = ddict
    return out


def hf_header(bench: Benchmark) -> dict[str, Any]:
    """The manifest fields needed to rebuild ``bench`` from :func:`to_hf_datasets` output."""
    from mrbench.data.fingerprint import fingerprint

    return benchmark_manifest(bench, [task_manifest(t, {}) for t in bench.tasks], bench.fingerprint or fingerprint(bench), PARQUET_FORMAT)


def from_hf_datasets(datasets_by_task: dict[str, Any], header: dict[str, Any], out: Path, overwrite: bool = False) -> Benchmark:
    """Write a benchmark directory from ``{task: DatasetDict}`` (as made by :func:`to_hf_datasets`)."""
    frames = {}
    for tm in header["tasks"]:
        dd = datasets_by_task[tm["name"]]
        fr = {}
        for kind in ("queries", "candidates"):
            df = dd[kind].to_pandas()
            df["image_bytes"] = [None if v is None else v.get("bytes") for v in df["image_data"]]
            fr[kind] = df
        fr["qrels"] = dd["qrels"].to_pandas()
        frames[tm["name"]] = fr
    return _materialise(header, frames, Path(out), overwrite, "datasets")
