"""Blind-baseline audit: can a benchmark be solved without looking at images? (the SugarCrepe lesson)

:func:`audit` evaluates a **text-only (blind) encoder** — by default ``minilm``, which encodes an item
without text as the empty string — and one or more **multimodal encoders** on the same benchmark,
then compares their ``hit@k`` (the paper's "R@K": any relevant candidate in the top k) per task and
per grain count. Where the blind model gets close to the best multimodal one, the queries can be
answered from text priors alone and the benchmark cell measures little about vision.

Conventions
-----------
* **Encoders.** ``blind`` and every entry of ``against`` are registry names (as ``mrbench evaluate
  -e``), Encoder objects, or directories written by ``mrbench evaluate --output`` (or their
  ``results.json``). A saved result must be on the same benchmark (same fingerprint) and hold the
  per-query table with ``hit@k`` for every requested k; it is used as is, not re-run. A saved
  result may cover only some tasks (``mrbench evaluate --tasks``): a task that the blind result, or
  every multimodal one, lacks is not audited (no rows); a multimodal result lacking a task others
  cover leaves its cells there blank; either way one line in ``notes`` names the tasks and results.
  ``encoder_kwargs`` maps an encoder *name* to its constructor kwargs
  (``{"contrastive-tiny": {"batch_size": 64}}``). Each encoder is labelled by its metadata name
  (``result.data["encoder"]["name"]``); two encoders with the same label are refused.
* **Cells.** One cell per (task, grain-count bucket) plus one ``"all"`` cell per task. Buckets are
  those of :func:`mrbench.metrics.aggregate.by_grain_count`: ``"2"``, ``"3"``, ``"4"``, ``"5+"`` (and
  ``"<2"`` when queries with fewer than two grains exist); only buckets holding queries appear.
  Tasks follow the benchmark's order; buckets their natural order; then ``"all"``.
* **Scores.** ``hit@k`` is the mean over the cell's *scored* queries (queries with no relevant
  candidate are dropped, as everywhere in mrbench). Ranks use pessimistic ties, so a blind model
  that gives every image-only candidate the same vector gets no credit from ties.
* **Comparison.** ``best`` = the highest multimodal ``hit@k`` in the cell (ties → the first encoder
  in ``against`` order), ``ratio`` = blind / best.
* **Status** of a cell (one of :data:`STATUSES`):
  ``"compared"``; ``"no query text"`` when none of the cell's queries has text (image-only tasks
  such as i2t / i2i: the blind model sees no query text, so its score is chance and is not
  compared); ``"multimodal scores 0"`` when ``best == 0`` (ratio undefined). Cells without a
  scored query do not appear (``"no scored queries"`` is kept only as a defensive status).
  ``ratio`` is ``None`` / NaN unless the status is ``"compared"``.
* **Candidate prior.** In a ``"no query text"`` task every query is encoded as ``""``, so the blind
  model ranks the pool in one query-independent order. Where that order still reaches
  ``threshold × best`` (task's ``"all"`` row), a line is added to ``notes`` (not to ``warnings``): the
  pool's candidates are relevant to many queries regardless of the query.
* **Flag.** A compared cell is flagged when ``blind >= threshold * best`` (``best > 0`` always
  holds there). Each flagged (task, grain count, k) gives one warning line naming the task, the
  grain count, k, the blind score and the best multimodal score, in table order.
* Deterministic: the same encoders on the same benchmark give the same table, warnings and JSON
  (the JSON holds no timestamps or timings).

``AuditResult.to_dict()`` (``schema_version`` 1): ``benchmark`` (name, version, split, fingerprint),
``blind`` / ``against`` (label, spec, modalities, source ``"evaluated"`` or the results path),
``settings`` (ks, threshold, grain buckets), ``rows`` (the table as records; NaN → null),
``warnings``, ``notes`` and ``summary`` (cells compared, cells flagged, warnings).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mrbench.errors import MrbenchError

AUDIT_SCHEMA_VERSION = 1
GRAIN_BUCKETS: tuple[int, ...] = (2, 3, 4, 5)
ALL_GRAINS = "all"
STATUSES: tuple[str, ...] = ("compared", "no query text", "multimodal scores 0", "no scored queries")
BASE_COLUMNS: tuple[str, ...] = ("task", "grain_count", "k", "n_queries", "status", "blind")
TAIL_COLUMNS: tuple[str, ...] = ("best", "best_encoder", "ratio", "flag")


def _json_safe(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    if isinstance(x, np.bool_):
        return bool(x)
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, (np.floating, float)):
        f = float(x)
        return None if math.isnan(f) or math.isinf(f) else f
    return x


@dataclass
class AuditResult:
    """What :func:`audit` returns.

    ``table``: a pandas DataFrame, one row per (task, grain_count, k), columns ``task``,
    ``grain_count``, ``k``, ``n_queries``, ``status``, ``blind`` (its hit@k), one column per
    multimodal encoder label (its hit@k), ``best``, ``best_encoder``, ``ratio``, ``flag``.
    ``warnings``: one line per flagged row.
    """

    table: Any
    warnings: list[str]
    blind: dict[str, Any]
    against: list[dict[str, Any]]
    benchmark: dict[str, Any]
    settings: dict[str, Any]
    notes: list[str] = field(default_factory=list)

    @property
    def against_labels(self) -> list[str]:
        return [a["label"] for a in self.against]

    def summary(self) -> dict[str, Any]:
        t = self.table
        cells = t.drop_duplicates(["task", "grain_count"])
        compared = t[t["status"] == "compared"].drop_duplicates(["task", "grain_count"])
        flagged = t[t["flag"]].drop_duplicates(["task", "grain_count"])
        return {
            "cells": int(len(cells)),
            "cells_compared": int(len(compared)),
            "cells_flagged": int(len(flagged)),
            "warnings": len(self.warnings),
            "tasks_without_query_text": sorted(
                set(t.loc[(t["grain_count"] == ALL_GRAINS) & (t["status"] == "no query text"), "task"]),
                key=list(dict.fromkeys(t["task"])).index,
            ),
        }

    def summary_line(self) -> str:
        s = self.summary()
        vs = ", ".join(self.against_labels)
        line = (
            f"audit of {self.benchmark['name']}: blind {self.blind['label']} vs {vs} — "
            f"{s['cells_flagged']} of {s['cells_compared']} compared cells flagged "
            f"({s['warnings']} warning(s), threshold {self.settings['threshold']:g})"
        )
        if s["tasks_without_query_text"]:
            line += f"; no query text: {', '.join(s['tasks_without_query_text'])}"
        if self.notes:
            line += f"; {len(self.notes)} note(s)"
        return line

    def to_dict(self) -> dict[str, Any]:
        rows = [_json_safe(r) for r in self.table.to_dict(orient="records")]
        return _json_safe({
            "schema_version": AUDIT_SCHEMA_VERSION,
            "benchmark": self.benchmark,
            "blind": self.blind,
            "against": self.against,
            "settings": self.settings,
            "columns": list(self.table.columns),
            "rows": rows,
            "warnings": list(self.warnings),
            "notes": list(self.notes),
            "summary": self.summary(),
        })

    def save(self, path: str | Path) -> Path:
        """Write :meth:`to_dict` as JSON to ``path`` atomically (temporary file, then rename)."""
        from mrbench.data.io import atomic_write_text

        path = Path(path)
        if path.is_dir():
            raise MrbenchError(f"{path}: is a directory; give a file path such as {path / 'audit.json'}")
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n")
        return path

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "AuditResult":
        import pandas as pd

        if data.get("schema_version") != AUDIT_SCHEMA_VERSION:
            raise MrbenchError(f"audit schema_version {data.get('schema_version')!r} is not supported (expected {AUDIT_SCHEMA_VERSION})")
        table = pd.DataFrame(list(data["rows"]), columns=list(data["columns"]))
        table = _typed(table, [a["label"] for a in data["against"]])
        return cls(table=table, warnings=list(data["warnings"]), blind=dict(data["blind"]),
                   against=[dict(a) for a in data["against"]], benchmark=dict(data["benchmark"]),
                   settings=dict(data["settings"]), notes=list(data.get("notes", [])))

    @classmethod
    def load(cls, path: str | Path) -> "AuditResult":
        from mrbench.data.io import read_json

        data = read_json(Path(path), error=MrbenchError, missing="no audit file; write one with 'mrbench audit --output'",
                         corrupt="the audit file is damaged; re-run the audit")
        return cls.from_dict(data)


def _typed(table: Any, labels: Sequence[str]) -> Any:
    """Fix dtypes (floats with NaN for missing scores, bool flag, int k / n_queries)."""
    for c in ("blind", *labels, "best", "ratio"):
        table[c] = table[c].astype(np.float64)
    table["k"] = table["k"].astype(np.int64)
    table["n_queries"] = table["n_queries"].astype(np.int64)
    table["flag"] = table["flag"].astype(bool)
    table["grain_count"] = table["grain_count"].astype(str)
    table["task"] = table["task"].astype(str)
    return table


# ---------------------------------------------------------------------------------------- evaluation
def _is_results_path(x: Any) -> bool:
    if not isinstance(x, (str, Path)):
        return False
    p = Path(x)
    return (p.is_dir() and (p / "results.json").is_file()) or (p.is_file() and p.name.endswith(".json"))


def _get(spec: Any, bench: Any, ks: tuple[int, ...], *, cache: bool, cache_dir: Any, progress: Any,
         encoder_kwargs: Mapping[str, Any]) -> tuple[Any, dict[str, Any]]:
    """Evaluate (or load) one encoder → (per-query DataFrame, description)."""
    if _is_results_path(spec):
        from mrbench.report.results import EvaluationResult

        res = EvaluationResult.load(Path(spec))
        fp = (res.data.get("benchmark") or {}).get("fingerprint")
        if fp != bench.fingerprint:
            raise MrbenchError(f"{spec}: results are for benchmark fingerprint {fp!r}, not {bench.name}'s "
                               f"{bench.fingerprint!r}; re-run 'mrbench evaluate' on this benchmark")
        if res.per_query is None:
            raise MrbenchError(f"{spec}: no per_query.parquet next to results.json; re-run 'mrbench evaluate --output'")
        missing = [f"hit@{k}" for k in ks if f"hit@{k}" not in res.per_query.columns]
        if missing:
            raise MrbenchError(f"{spec}: saved results lack {', '.join(missing)}; choose --k among the saved cutoffs "
                               f"{res.data.get('settings', {}).get('ks')} or re-run the evaluation")
        enc = res.data["encoder"]
        source = str(spec)
    else:
        from mrbench.pipeline import evaluate

        kw = dict(encoder_kwargs.get(spec, {})) if isinstance(spec, str) else {}
        res = evaluate(bench, spec, encoder_kwargs=kw, ks=ks, cache=cache, cache_dir=cache_dir,
                       grain_sensitivity=False, progress=progress)
        enc = res.data["encoder"]
        source = "evaluated"
    desc = {"label": str(enc.get("name")), "spec": enc.get("spec"), "modalities": list(enc.get("modalities") or []),
            "source": source}
    return res.per_query, desc


def _cells(per_query: Any, has_text: Mapping[tuple[str, str], bool], ks: Sequence[int]) -> Any:
    """Per (task, grain_count) cell: scored query count, any query text, mean hit@k."""
    import pandas as pd

    from mrbench.metrics.aggregate import grain_bucket_labels

    df = per_query[~per_query["dropped"].astype(bool)].copy()
    labels = grain_bucket_labels(GRAIN_BUCKETS)
    pos = np.searchsorted(np.asarray(GRAIN_BUCKETS), df["n_grains"].astype(np.int64).to_numpy(), side="right")
    df["grain_count"] = [labels[i] for i in pos]
    df["task"] = df["task"].astype(str)
    df["has_text"] = [bool(has_text.get((t, str(q)), False)) for t, q in zip(df["task"], df["qid"])]
    both = pd.concat([df, df.assign(grain_count=ALL_GRAINS)], ignore_index=True)
    agg = {"n_queries": ("qid", "size"), "has_text": ("has_text", "any")}
    agg.update({f"hit@{k}": (f"hit@{k}", "mean") for k in ks})
    return both.groupby(["task", "grain_count"], sort=False).agg(**agg)


def audit(
    benchmark: Any = "mrbench-synth",
    *,
    blind: Any = "minilm",
    against: Sequence[Any] | str = ("contrastive-tiny",),
    ks: Sequence[int] | str = (1, 5),
    threshold: float = 0.8,
    cache: bool = True,
    cache_dir: str | Path | None = None,
    progress: Any = False,
    encoder_kwargs: Mapping[str, Mapping[str, Any]] | None = None,
) -> AuditResult:
    """Compare a blind (text-only) encoder with multimodal encoders on ``benchmark``.

    Args:
        benchmark: a built-in name, a benchmark directory or a loaded :class:`Benchmark`.
        blind: the text-only encoder (registry name, Encoder object, or saved results directory).
        against: multimodal encoders to compare with (same forms as ``blind``); a single string is
            one encoder.
        ks: cutoffs for hit@k (list or ``"1,5"``).
        threshold: flag a cell when blind hit@k ≥ ``threshold`` × the best multimodal hit@k
            (must be > 0).
        cache: reuse and fill the embedding cache (``cache_dir`` or ``$MRBENCH_CACHE``).
        progress: as for :func:`mrbench.evaluate`.
        encoder_kwargs: ``{encoder name: {constructor kwargs}}``.

    See the module docstring for the table, the statuses and the warnings.
    """
    import pandas as pd

    from mrbench.data.registry import load_benchmark
    from mrbench.data.schema import Benchmark
    from mrbench.pipeline import _parse_ks

    ks_t = _parse_ks(ks)
    try:
        thr = float(threshold)
    except (TypeError, ValueError):
        raise MrbenchError(f"--threshold {threshold!r}: expected a positive number such as 0.8") from None
    if not math.isfinite(thr) or thr <= 0:
        raise MrbenchError(f"--threshold {threshold!r}: expected a positive number such as 0.8")
    against_l = [against] if isinstance(against, (str, Path)) else list(against)
    if not against_l:
        raise MrbenchError("--against: give at least one multimodal encoder to compare the blind model with")
    if encoder_kwargs is not None and not isinstance(encoder_kwargs, Mapping):
        raise MrbenchError("encoder_kwargs: expected a mapping {encoder name: {kwargs}}")
    ekw = encoder_kwargs or {}

    bench = benchmark if isinstance(benchmark, Benchmark) else load_benchmark(benchmark)
    _check_names([blind, *against_l], ["--blind", *["--against"] * len(against_l)])
    has_text = {(t.name, q.id): bool(q.text) for t in bench.tasks for q in t.queries}

    run = dict(bench=bench, ks=ks_t, cache=cache, cache_dir=cache_dir, progress=progress, encoder_kwargs=ekw)
    blind_pq, blind_desc = _get(blind, **run)
    mm = [_get(a, **run) for a in against_l]
    labels = [d["label"] for _, d in mm]
    if len(set(labels)) != len(labels) or blind_desc["label"] in labels:
        raise MrbenchError(f"--against: encoders must differ from each other and from the blind one (labels: "
                           f"blind {blind_desc['label']}, against {', '.join(labels)}); give each once")
    reserved = set(BASE_COLUMNS) | set(TAIL_COLUMNS)
    clash = [lb for lb in labels if lb in reserved]
    if clash:
        raise MrbenchError(f"encoder label(s) {', '.join(clash)} clash with audit table columns; rename the encoder")

    notes = []
    if "image" in blind_desc["modalities"]:
        notes.append(f"blind encoder {blind_desc['label']} declares image input (modalities "
                     f"{blind_desc['modalities']}); the audit assumes a text-only model")
    for _, d in mm:
        if "image" not in d["modalities"]:
            notes.append(f"encoder {d['label']} does not declare image input (modalities {d['modalities']}); "
                         "it is not a multimodal reference")

    b_cells = _cells(blind_pq, has_text, ks_t)
    m_cells = [_cells(pq, has_text, ks_t) for pq, _ in mm]

    task_order = [t.name for t in bench.tasks]
    skipped = _coverage_note(task_order, blind_pq, blind_desc, mm, notes)
    bucket_order = [*_bucket_labels(), ALL_GRAINS]
    keys = sorted((tk for tk in b_cells.index if tk[0] not in skipped),
                  key=lambda tk: (task_order.index(tk[0]) if tk[0] in task_order else len(task_order),
                                  bucket_order.index(tk[1])))
    rows: list[dict[str, Any]] = []
    warnings: list[str] = []
    for task, gc in keys:
        bc = b_cells.loc[(task, gc)]
        n = int(bc["n_queries"])
        for k in ks_t:
            col = f"hit@{k}"
            bv = float(bc[col])
            vals = []
            for cells in m_cells:
                vals.append(float(cells.loc[(task, gc), col]) if (task, gc) in cells.index else float("nan"))
            finite = [(v, i) for i, v in enumerate(vals) if not math.isnan(v)]
            best, bi = max(finite, key=lambda vi: (vi[0], -vi[1])) if finite else (float("nan"), None)
            if n == 0 or math.isnan(bv):
                status = "no scored queries"
            elif not bool(bc["has_text"]):
                status = "no query text"
            elif not finite or best <= 0:
                status = "multimodal scores 0"
            else:
                status = "compared"
            ratio = bv / best if status == "compared" else float("nan")
            flag = status == "compared" and bv >= thr * best
            row = {"task": task, "grain_count": gc, "k": k, "n_queries": n, "status": status, "blind": bv}
            row.update({lb: v for lb, v in zip(labels, vals)})
            row.update(best=best, best_encoder=labels[bi] if bi is not None else None, ratio=ratio, flag=flag)
            rows.append(row)
            if flag:
                where = "all grain counts" if gc == ALL_GRAINS else f"{gc} grains"
                warnings.append(
                    f"{task}, {where}: blind {blind_desc['label']} hit@{k} = {bv:.3f} vs best multimodal "
                    f"{labels[bi]} {best:.3f} (ratio {ratio:.2f} ≥ {thr:g}; n = {n})"
                )
    for r in rows:
        if (r["status"] == "no query text" and r["grain_count"] == ALL_GRAINS and r["best"] > 0
                and r["blind"] >= thr * r["best"]):
            notes.append(
                f"{r['task']}: the blind model sees no query text, yet its query-independent ranking scores "
                f"hit@{r['k']} = {r['blind']:.3f} vs best multimodal {r['best_encoder']} {r['best']:.3f}: "
                "the candidate pool carries a prior that needs no query"
            )
    table = pd.DataFrame(rows, columns=[*BASE_COLUMNS, *labels, *TAIL_COLUMNS])
    table = _typed(table, labels)
    return AuditResult(
        table=table,
        warnings=warnings,
        blind=blind_desc,
        against=[d for _, d in mm],
        benchmark={"name": bench.name, "version": bench.version, "split": bench.split, "fingerprint": bench.fingerprint},
        settings={"ks": list(ks_t), "threshold": thr, "grain_buckets": list(GRAIN_BUCKETS)},
        notes=notes,
    )


def _coverage_note(task_order: Sequence[str], blind_pq: Any, blind_desc: Mapping[str, Any],
                   mm: Sequence[tuple[Any, Mapping[str, Any]]], notes: list[str]) -> set[str]:
    """Tasks of the benchmark that a saved result lacks. A task is skipped (no rows) when the blind
    result or every multimodal one lacks it; one line in ``notes`` names the skipped tasks and which
    saved results lack which tasks. Returns the skipped tasks."""
    def covered(pq: Any) -> set[str]:
        return set(pq["task"].astype(str))

    lacks = []
    for pq, d in [(blind_pq, blind_desc), *mm]:
        missing = [t for t in task_order if t not in covered(pq)]
        if missing:
            lacks.append(f"{d['label']} ({d['source']}) lacks {', '.join(missing)}")
    if not lacks:
        return set()
    b = covered(blind_pq)
    m = set().union(*(covered(pq) for pq, _ in mm))
    skipped = [t for t in task_order if t not in b or t not in m]
    if skipped:
        notes.append(f"task(s) {', '.join(skipped)} not audited: the saved results do not cover them ({'; '.join(lacks)})")
    else:
        notes.append(f"saved results cover only some tasks ({'; '.join(lacks)}); their cells there are blank (–)")
    return set(skipped)


def _check_names(specs: Sequence[Any], options: Sequence[str] | None = None) -> None:
    """Fail fast (before any encoding) on a bare encoder name that is not registered: resolving an
    unknown name raises the registry's "did you mean" error without loading anything. A path-like
    value (a ``Path``, an existing file or directory that is not a registered name, or a string with
    a path separator and no ``:``) that is not a results directory gets a one-line error saying so;
    ``options`` names each spec's option (``--blind``, ``--against``) in that error."""
    import os

    from mrbench.encoders.registry import get_encoder, list_encoders

    known = {s.name for s in list_encoders()}
    for i, spec in enumerate(specs):
        if not isinstance(spec, (str, Path)) or _is_results_path(spec):
            continue
        s = str(spec)
        seps = {"/", os.sep, *([os.altsep] if os.altsep else [])}
        path_like = isinstance(spec, Path) or (":" not in s and s not in known
                                               and (any(c in s for c in seps) or Path(s).exists()))
        if path_like:
            p = Path(s)
            pre = f"{options[i]}: " if options is not None else ""
            if p.is_dir():
                raise MrbenchError(f"{pre}{s} has no results.json; pass a directory written by "
                                   "'mrbench evaluate --output', or an encoder name (see 'mrbench encoders')")
            if p.exists():
                raise MrbenchError(f"{pre}{s} is not a results directory or a results .json file; pass a directory written "
                                   "by 'mrbench evaluate --output', or an encoder name (see 'mrbench encoders')")
            raise MrbenchError(f"{pre}no results directory at {s}; pass a directory written by "
                               "'mrbench evaluate --output', or an encoder name (see 'mrbench encoders')")
        if ":" not in s and s not in known:
            get_encoder(s)


def _bucket_labels() -> list[str]:
    from mrbench.metrics.aggregate import grain_bucket_labels

    return grain_bucket_labels(GRAIN_BUCKETS)
