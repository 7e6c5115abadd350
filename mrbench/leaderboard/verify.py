"""Recompute a submission's scores from its run files against the benchmark's qrels.

What *verified* means here: every metric listed in :attr:`Verification.verified_metrics` was
recomputed from the submitted TREC run files (``runs/<task>.trec``) and the benchmark's own qrels
and grains, through the same per-query scoring and aggregation code as ``mrbench evaluate``
(:func:`mrbench.pipeline.task_frame`, :func:`mrbench.report.results.aggregate_scores`), and matched
the submitted value within ``tol`` (absolute) at every level: the macro average, each task, each
task × grain count (and the pooled ``all``), each task × grain type. It says the scores follow from
the ranking; it cannot say the ranking came from the model (that needs the model).

Recomputable from a run file of depth ``d``: ``hit@k``, ``recall@k``, ``mrr@k``, ``ndcg@k`` for
``k <= d``, ``n_queries``, ``n_dropped`` and ``n_tasks``. Not recomputable, so never listed as
verified: ``mean_rank`` / ``median_rank`` (a relevant candidate below the run's depth has no rank
in the file), ``ties`` / ``queries_with_ties`` (they need the scores of unlisted candidates) and the
grain-sensitivity block (it needs the embeddings).

A run file is rejected (one line naming the file, and the line or query) when it is not a valid
TREC run (:func:`mrbench.retrieval.runfile.read_trec_run`: 6 fields, integer ranks, finite scores,
no duplicate candidate or rank in a query, only the task's query and candidate ids), when it lacks
queries of the task, when a query's ranks are not exactly ``1..min(depth, pool size)``, when
scores increase down a query's ranking, or when candidates with equal scores are not listed lower
grade first (the pessimistic tie policy ``mrbench evaluate`` ranks by: a tie never helps the
model). What the file cannot show is not checked: whether candidates left out below the depth tie
with the last one listed.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mrbench.errors import MrbenchError, UnknownNameError

RESULTS_FILE = "results.json"
_SCHEMAS = Path(__file__).resolve().parent
_RANK_METRIC = re.compile(r"^(hit|recall|mrr|ndcg)@([1-9][0-9]*)$")
_COUNTS = ("n_queries", "n_dropped", "n_tasks")


class SubmissionError(MrbenchError):
    """A results directory, run file or leaderboard is malformed or inconsistent (the message says where)."""


@dataclass
class Verification:
    """Outcome of :func:`verify_results`. ``ok``: no mismatch. ``mismatches``: one line each,
    ``"<score path>: submitted X, recomputed Y"``. ``compared``: how many values were checked."""

    ok: bool
    mismatches: list[str]
    verified_metrics: list[str]
    compared: int
    run_sha256: dict[str, str]
    recomputed: dict[str, Any] = field(repr=False)
    benchmark_path: str | None = None


# ------------------------------------------------------------------------------------------ reading
def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed in JSON (use null for a missing score)")


def read_json_strict(path: Path, what: str) -> Any:
    """Parse ``path`` as strict JSON (``NaN`` and ``Infinity`` are rejected); one-line errors."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SubmissionError(f"{path}: {what} not found; check the path") from None
    except (OSError, UnicodeDecodeError) as e:
        raise SubmissionError(f"{path}: cannot read the {what} ({e}); check the file") from None
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as e:
        raise SubmissionError(f"{path}: the {what} is not valid JSON ({e.msg} at line {e.lineno}, column {e.colno}); "
                              "fix or regenerate it") from None
    except ValueError as e:
        raise SubmissionError(f"{path}: the {what} is not valid JSON ({e}); fix or regenerate it") from None


def load_schema(name: str) -> dict[str, Any]:
    """A bundled JSON Schema: ``"results"`` or ``"leaderboard"``."""
    return json.loads((_SCHEMAS / f"{name}.schema.json").read_text(encoding="utf-8"))


def schema_errors(doc: Any, schema_name: str, limit: int = 1) -> list[str]:
    """Up to ``limit`` schema violations of ``doc`` as ``"<field path>: <message>"`` (most relevant first)."""
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import relevance

    validator = Draft202012Validator(load_schema(schema_name))
    errors = sorted(validator.iter_errors(doc), key=relevance)
    out = []
    for e in errors[:limit]:
        where = ".".join(str(p) for p in e.absolute_path) or "(top level)"
        msg = e.message if len(e.message) <= 160 else e.message[:157] + "..."
        out.append(f"{where}: {msg}")
    return out


def require_results_dir(result_dir: str | Path, command: str = "mrbench verify") -> Path:
    """``result_dir`` as a :class:`~pathlib.Path` when it is a directory holding ``results.json``.

    Otherwise a one-line :class:`SubmissionError`: not a directory; or a directory without
    ``results.json`` whose subdirectories hold one (``mrbench evaluate -o DIR`` with several encoders
    writes one subdirectory each), naming up to five of them and ``command`` run on the first; or
    neither (the results file is missing)."""
    d = Path(result_dir)
    if not d.is_dir():
        raise SubmissionError(f"{d}: not a results directory; pass the directory mrbench evaluate --output wrote")
    if (d / RESULTS_FILE).exists():
        return d
    try:
        subs = sorted(p.name for p in d.iterdir() if p.is_dir() and (p / RESULTS_FILE).is_file())
    except OSError:
        subs = []
    if subs:
        shown = ", ".join(subs[:5]) + (f" and {len(subs) - 5} more" if len(subs) > 5 else "")
        raise SubmissionError(f"{d}: holds no {RESULTS_FILE}, but its subdirectories {shown} do; pass one "
                              f"of them, e.g. {command} {d / subs[0]}")
    raise SubmissionError(f"{d / RESULTS_FILE}: results file not found; pass the directory mrbench evaluate --output wrote")


def load_results(result_dir: str | Path) -> dict[str, Any]:
    """``results.json`` of ``result_dir``, strictly parsed and validated against ``results.schema.json``."""
    path = Path(result_dir)
    if path.is_dir():
        path = path / RESULTS_FILE
    data = read_json_strict(path, "results file")
    errs = schema_errors(data, "results")
    if errs:
        raise SubmissionError(f"{path}: {errs[0]}; submit the results.json that mrbench evaluate wrote")
    missing = [t for t in data["settings"]["tasks"] if t not in data["scores"]["tasks"]]
    if missing:
        raise SubmissionError(f"{path}: scores.tasks has no entry for task {missing[0]!r} listed in settings.tasks; "
                              "submit the results.json that mrbench evaluate wrote")
    return data


def load_submission_benchmark(data: dict[str, Any], benchmark: str | Path | None = None, where: str = "results"):
    """The benchmark the results were computed on: ``benchmark`` (a name or directory) if given,
    else the directory recorded in the results if it exists, else the results' benchmark name.
    Raises :class:`SubmissionError` when its fingerprint differs from the results'."""
    from mrbench.data.registry import load_benchmark

    want = data["benchmark"]["fingerprint"]
    source: str | Path
    if benchmark is not None:
        source = benchmark
    elif data["benchmark"].get("path") and Path(data["benchmark"]["path"]).is_dir():
        source = Path(data["benchmark"]["path"])
    else:
        source = data["benchmark"]["name"]
    tasks = (data.get("settings") or {}).get("tasks")
    only = list(tasks) if isinstance(tasks, list) and tasks and all(isinstance(t, str) for t in tasks) else None
    try:
        bench = load_benchmark(source, tasks=only)  # the results' tasks only (their files alone are read)
    except UnknownNameError as e:
        raise SubmissionError(f"{where}: settings.tasks: {e}") from None
    if bench.fingerprint != want:
        raise SubmissionError(f"{where}: the results were computed on benchmark fingerprint {want}, but {source} has "
                              f"{bench.fingerprint}; pass --benchmark with the benchmark the run used")
    return bench


# ------------------------------------------------------------------------------------------- runs
def _run_path(result_dir: Path, data: dict[str, Any], task: str) -> Path:
    rel = (data.get("files") or {}).get("runs", {}).get(task)
    if rel is None:
        raise SubmissionError(f"{result_dir / RESULTS_FILE}: files.runs has no run file for task {task!r}; scores are "
                              f"recomputed from run files: use the whole directory mrbench evaluate wrote{_NO_RUNS}")
    p = Path(rel)
    if p.is_absolute() or ".." in p.parts:
        raise SubmissionError(f"{result_dir / RESULTS_FILE}: files.runs.{task} = {rel!r} must be a path inside the results directory")
    if not (result_dir / p).exists():
        raise SubmissionError(f"{result_dir / p}: the run file of task {task!r} (files.runs.{task}) is missing; "
                              f"use the whole directory mrbench evaluate wrote{_NO_RUNS}")
    return result_dir / p


_NO_RUNS = " (to submit scores without run files: mrbench submit --self-reported)"
"""How to submit without run files; right for ``mrbench verify`` (which has no such option) and ``submit``."""


def _judged_ranks_from_run(path: Path, task: Any, depth: int) -> list[dict[int, int]]:
    from mrbench.pipeline import judged_grades
    from mrbench.retrieval.runfile import RunFileError, read_trec_run

    qids = [q.id for q in task.queries]
    index = task.candidate_index()
    try:
        run = read_trec_run(path, known_qids=qids, known_dids=index)
    except RunFileError as e:
        raise SubmissionError(str(e)) from None
    missing = [q for q in qids if q not in run]
    if missing:
        raise SubmissionError(f"{path}: has {len(run)} of the {len(qids)} queries of task {task.name!r} "
                              f"(first missing: {missing[0]!r}); submit the complete run")
    want = min(depth, len(task.candidates))
    judged = judged_grades(task)
    out: list[dict[int, int]] = []
    for qi, qid in enumerate(qids):
        lst = run[qid]
        ranks = [r for _, r, _ in lst]
        if ranks != list(range(1, want + 1)):
            raise SubmissionError(f"{path}: query {qid!r} has ranks {_span(ranks)}, expected exactly 1..{want} "
                                  f"(depth {depth}); write the full top-{want} list")
        grades = judged[qi]
        for (d, r, s), (dp, _, prev) in zip(lst[1:], lst[:-1]):
            if s > prev:
                raise SubmissionError(f"{path}: query {qid!r}: rank {r} scores {s!r}, above rank {r - 1} ({prev!r}); "
                                      "ranks must follow scores")
            if s == prev and grades.get(index[dp], 0) > grades.get(index[d], 0):
                raise SubmissionError(
                    f"{path}: query {qid!r}: rank {r - 1} ({dp}, grade {grades.get(index[dp], 0)}) and rank {r} ({d}, "
                    f"grade {grades.get(index[d], 0)}) tie at score {s!r}, but the higher grade comes first; tied "
                    "candidates are ranked lower grade first (pessimistic ties: a tie never helps the model), as "
                    "mrbench evaluate writes them")
        pos = {index[d]: r for d, r, _ in lst}
        out.append({c: pos[c] for c in judged[qi] if c in pos})
    return out


def _span(ranks: list[int]) -> str:
    if not ranks:
        return "none"
    return f"{min(ranks)}..{max(ranks)} ({len(ranks)} lines)"


# ---------------------------------------------------------------------------------------- compare
def recompute_scores(result_dir: str | Path, data: dict[str, Any], bench: Any) -> tuple[dict[str, Any], dict[str, str]]:
    """``(scores, run_sha256)`` recomputed from the run files of ``result_dir`` (see the module docstring)."""
    import pandas as pd

    from mrbench.data.fingerprint import file_sha256
    from mrbench.pipeline import judged_grades, task_frame
    from mrbench.report.results import aggregate_scores

    result_dir = Path(result_dir)
    depth = int(data["settings"]["depth"])
    ks = [int(k) for k in data["settings"]["ks"]]
    if max(ks) > depth:
        raise SubmissionError(f"{result_dir / RESULTS_FILE}: settings.ks goes up to {max(ks)}, deeper than the runs' depth {depth}")
    frames, shas = [], {}
    for name in data["settings"]["tasks"]:
        try:
            task = bench.task(name)
        except MrbenchError as e:
            raise SubmissionError(f"{result_dir / RESULTS_FILE}: settings.tasks: {e}") from None
        path = _run_path(result_dir, data, name)
        judged_ranks = _judged_ranks_from_run(path, task, depth)
        frames.append(task_frame(task, judged_ranks, judged_grades(task), ks))
        shas[name] = file_sha256(path)
    scores = aggregate_scores(pd.concat(frames, ignore_index=True), data["settings"]["tasks"])
    return scores, shas


def _verifiable(metric: str, depth: int) -> bool:
    m = _RANK_METRIC.match(metric)
    return (m is not None and int(m.group(2)) <= depth) or metric in _COUNTS


def _groups(scores: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Flatten the comparable levels to ``{"tasks.t2i": metrics, "grain_count.all.3": metrics, ...}``."""
    out = {"macro": scores.get("macro") or {}}
    for t, m in (scores.get("tasks") or {}).items():
        out[f"tasks.{t}"] = m
    for level in ("grain_count", "grain_type"):
        for t, d in (scores.get(level) or {}).items():
            for g, m in (d or {}).items():
                out[f"{level}.{t}.{g}"] = m
    return out


def _same(a: Any, b: Any, tol: float) -> bool:
    if a is None or b is None:
        return a is None and b is None
    if isinstance(a, bool) or isinstance(b, bool) or not isinstance(a, (int, float)) or not isinstance(b, (int, float)):
        return False
    return math.isfinite(a) and math.isfinite(b) and abs(a - b) <= tol


def compare_scores(submitted: dict[str, Any], recomputed: dict[str, Any], depth: int,
                   tol: float = 1e-9) -> tuple[list[str], list[str], int]:
    """``(mismatches, verified metric names, values compared)`` between two ``scores`` blocks."""
    sub, rec = _groups(submitted), _groups(recomputed)
    mismatches: list[str] = []
    names: set[str] = set()
    compared = 0
    for g, rm in rec.items():
        sm = sub.get(g)
        if sm is None:
            mismatches.append(f"scores.{g}: missing from the submission (recomputed {len(rm)} metrics)")
            continue
        for metric, rv in rm.items():
            if not _verifiable(metric, depth):
                continue
            names.add(metric)
            compared += 1
            if metric not in sm:
                mismatches.append(f"scores.{g}.{metric}: missing from the submission, recomputed {rv!r}")
            elif not _same(sm[metric], rv, tol):
                mismatches.append(f"scores.{g}.{metric}: submitted {sm[metric]!r}, recomputed {rv!r}")
    for g in sub:
        if g not in rec:
            mismatches.append(f"scores.{g}: not a group of this benchmark's queries (recomputation has no such group)")
    return mismatches, sorted(names, key=_metric_order), compared


def _metric_order(name: str) -> tuple[int, str, int]:
    m = _RANK_METRIC.match(name)
    if m:
        return (0, m.group(1), int(m.group(2)))
    return (1, name, 0)


def verify_results(result_dir: str | Path, *, benchmark: str | Path | None = None, tol: float = 1e-9,
                   data: dict[str, Any] | None = None, bench: Any = None) -> Verification:
    """Recompute every score of ``result_dir`` from its run files (see the module docstring).

    ``benchmark``: the benchmark's name or directory when the one recorded in the results is not on
    this machine. Raises :class:`SubmissionError` for malformed input; score disagreements are
    returned in :attr:`Verification.mismatches` (``ok`` is then false)."""
    result_dir = require_results_dir(result_dir, "mrbench verify")
    data = data if data is not None else load_results(result_dir)
    bench = bench if bench is not None else load_submission_benchmark(data, benchmark, where=str(result_dir / RESULTS_FILE))
    scores, shas = recompute_scores(result_dir, data, bench)
    mismatches, names, compared = compare_scores(data["scores"], scores, int(data["settings"]["depth"]), tol)
    return Verification(ok=not mismatches, mismatches=mismatches, verified_metrics=names, compared=compared,
                        run_sha256=shas, recomputed=scores, benchmark_path=str(bench.root) if bench.root else None)
