"""The leaderboard file: reading it strictly, adding benchmarks and entries safely.

``leaderboard.json`` (``schema_version`` 1; JSON Schema ``leaderboard.schema.json`` beside this
module and in the repository's ``leaderboard/`` folder) holds ``benchmarks`` (the fingerprints it
accepts) and ``entries``. An entry's ``id`` is ``"<encoder name>@<revision>/<benchmark name>@<first
12 hex digits of the fingerprint>"``: one entry per encoder, revision and benchmark. ``status`` is
``"verified"`` (scores recomputed from the submitted run files, :mod:`mrbench.leaderboard.verify`;
``verified_metrics`` lists which) or ``"self-reported"`` (``--self-reported``: nothing recomputed).

Writes: every change happens under an exclusive lock (``filelock``, ``<file>.lock`` beside it), on a
fresh read of the file, and replaces the file atomically (temporary file + rename), so concurrent
submissions never lose an entry and a reader never sees half a file. A leaderboard that fails its
schema or its consistency checks (unique ids, every entry's benchmark listed, every entry's
required scores present: :func:`missing_score`) is never read or written over: the error names the
field and the file stays byte-identical.
"""

from __future__ import annotations

import datetime as _dt
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mrbench.leaderboard.verify import (
    _RANK_METRIC,
    SubmissionError,
    Verification,
    load_results,
    load_submission_benchmark,
    read_json_strict,
    require_results_dir,
    schema_errors,
    verify_results,
)

DEFAULT_LEADERBOARD = Path("leaderboard") / "leaderboard.json"
"""Default ``--leaderboard``: the repository's leaderboard, relative to the working directory."""
TRAINING = ("zero-shot", "train-split", "unknown")
HEADLINE_METRIC = "hit@5"
"""The score the leaderboard ranks by (``mrbench leaderboard show``, the page); its grain columns are hit@5 too."""
LOCK_TIMEOUT_S = 120.0


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def empty_leaderboard(name: str = "MRBench leaderboard") -> dict[str, Any]:
    """A valid leaderboard with no benchmark and no entry."""
    return {"schema_version": 1, "name": name, "updated": None, "benchmarks": [], "entries": []}


def short_fingerprint(fp: str) -> str:
    """The first 12 characters of the fingerprint's digest (after any ``"sha256:"``-style prefix)."""
    return fp.split(":")[-1][:12]


def entry_id(encoder_name: str, revision: str, benchmark_name: str, fingerprint: str) -> str:
    """The id that makes an entry unique (see the module docstring)."""
    return f"{encoder_name}@{revision}/{benchmark_name}@{short_fingerprint(fingerprint)}"


def missing_score(scores: dict[str, Any], verified_metrics: list[str] | tuple[str, ...] = ()) -> str | None:
    """The first required score that ``scores`` lacks, as ``"scores.macro.hit@5 is missing (why)"``, or None.

    Required: :data:`HEADLINE_METRIC` in ``scores.macro`` and in every ``scores.tasks`` item, and every
    metric of ``verified_metrics`` (a verified entry's) in ``scores.macro``, its hit/recall/mrr/ndcg@k
    in every task too. A score that is present but ``null`` (no query to average) is not missing."""
    per_task = [HEADLINE_METRIC, *(m for m in verified_metrics if _RANK_METRIC.match(m))]
    levels = [("macro", scores["macro"], [HEADLINE_METRIC, *verified_metrics])]
    levels += [(f"tasks.{t}", metrics, per_task) for t, metrics in scores["tasks"].items()]
    for level, metrics, need in levels:
        for m in need:
            if m not in metrics:
                why = "the score the leaderboard ranks by" if m == HEADLINE_METRIC else "listed in verified_metrics"
                return f"scores.{level}.{m} is missing ({why})"
    return None


def check_leaderboard(doc: Any, where: str) -> None:
    """Raise :class:`SubmissionError` naming the first problem: schema violation, duplicate entry id,
    an entry whose benchmark fingerprint is not in ``benchmarks``, or an entry without a score it
    needs (:func:`missing_score`)."""
    errs = schema_errors(doc, "leaderboard")
    if errs:
        raise SubmissionError(f"{where}: {errs[0]}; the file was not changed: fix it by hand or restore it from git")
    fps: dict[str, dict[str, Any]] = {}
    for i, b in enumerate(doc["benchmarks"]):
        if b["fingerprint"] in fps:
            raise SubmissionError(f"{where}: benchmarks.{i}: fingerprint {b['fingerprint']} is listed twice; remove one")
        fps[b["fingerprint"]] = b
    seen: set[str] = set()
    for i, e in enumerate(doc["entries"]):
        if e["id"] in seen:
            raise SubmissionError(f"{where}: entries.{i}: id {e['id']!r} appears twice; remove one")
        seen.add(e["id"])
        b = fps.get(e["benchmark"]["fingerprint"])
        if b is None:
            raise SubmissionError(f"{where}: entries.{i} ({e['id']}): benchmark fingerprint {e['benchmark']['fingerprint']} "
                                  "is not in benchmarks; add the benchmark or remove the entry")
        want = entry_id(e["encoder"]["name"], e["encoder"]["revision"], e["benchmark"]["name"], e["benchmark"]["fingerprint"])
        if e["id"] != want:
            raise SubmissionError(f"{where}: entries.{i}: id {e['id']!r} should be {want!r} (encoder name@revision/benchmark@fingerprint)")
        if e["status"] == "verified" and (not e["verified_metrics"] or not e["run_sha256"]):
            raise SubmissionError(f"{where}: entries.{i} ({e['id']}): status 'verified' without verified_metrics and "
                                  "run_sha256; re-submit it or mark it 'self-reported'")
        gap = missing_score(e["scores"], e["verified_metrics"] if e["status"] == "verified" else ())
        if gap:
            raise SubmissionError(f"{where}: entries.{i} ({e['id']}): {gap}; restore it (e.g. from git), or remove "
                                  "the entry and re-submit its results")


def load_leaderboard(path: str | Path = DEFAULT_LEADERBOARD) -> dict[str, Any]:
    """Read and check ``path`` (:func:`check_leaderboard`); one-line :class:`SubmissionError` otherwise."""
    path = Path(path)
    if not path.is_file():
        raise SubmissionError(f"{path}: no leaderboard file; pass --leaderboard PATH, or create one with "
                              "`mrbench leaderboard add-benchmark BENCHMARK --leaderboard PATH`")
    doc = read_json_strict(path, "leaderboard")
    check_leaderboard(doc, str(path))
    return doc


def dumps_leaderboard(doc: dict[str, Any]) -> str:
    """The file's text: 2-space indented JSON with a final newline (stable, diff-friendly)."""
    return json.dumps(doc, indent=2, ensure_ascii=False, allow_nan=False) + "\n"


class _Locked:
    """``with _Locked(path) as doc:`` read ``path`` fresh under its lock; assign ``self.doc`` and call
    :meth:`commit` to write it back atomically (after checking it)."""

    def __init__(self, path: Path, create: bool = False, timeout: float = LOCK_TIMEOUT_S) -> None:
        from filelock import FileLock

        self.path = path
        self.create = create
        self.lock = FileLock(str(path) + ".lock", timeout=timeout)
        self.doc: dict[str, Any] = {}

    def __enter__(self) -> "_Locked":
        from filelock import Timeout

        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.lock.acquire()
        except Timeout:
            raise SubmissionError(f"{self.path}: another submission has held the lock "
                                  f"({self.path}.lock) for {self.lock.timeout:.0f} s; try again") from None
        try:
            self.doc = empty_leaderboard() if self.create and not self.path.exists() else load_leaderboard(self.path)
        except BaseException:
            self.lock.release()
            raise
        return self

    def commit(self) -> None:
        from mrbench.data.io import atomic_write_text

        self.doc["updated"] = _now()
        check_leaderboard(self.doc, f"{self.path} (after the change, not written)")
        atomic_write_text(self.path, dumps_leaderboard(self.doc))

    def __exit__(self, *exc: Any) -> None:
        self.lock.release()


# ------------------------------------------------------------------------------------- benchmarks
def benchmark_record(bench: Any) -> dict[str, Any]:
    """The ``benchmarks`` item for a loaded :class:`~mrbench.data.schema.Benchmark`."""
    return {"name": bench.name, "version": str(bench.version), "split": bench.split, "fingerprint": bench.fingerprint,
            "tasks": [t.name for t in bench.tasks], "n_queries": {t.name: len(t.queries) for t in bench.tasks},
            "description": bench.description or None}


def add_benchmark(path: str | Path, benchmark: str | Path) -> tuple[dict[str, Any], bool]:
    """Register ``benchmark`` (a name or directory) in the leaderboard at ``path`` (created if missing).
    Returns ``(record, added)``; ``added`` is false when the fingerprint was already there."""
    from mrbench.data.registry import load_benchmark

    rec = benchmark_record(load_benchmark(benchmark))
    with _Locked(Path(path), create=True) as lk:
        if any(b["fingerprint"] == rec["fingerprint"] for b in lk.doc["benchmarks"]):
            return rec, False
        lk.doc["benchmarks"].append(rec)
        lk.commit()
    return rec, True


# ---------------------------------------------------------------------------------------- entries
def make_entry(data: dict[str, Any], verification: Verification | None, *, parameters: int | None = None,
               training: str = "unknown", command: str | None = None, url: str | None = None,
               notes: str | None = None, submitted: str | None = None) -> dict[str, Any]:
    """A leaderboard entry from a results document and its verification (``None``: self-reported)."""
    if training not in TRAINING:
        raise SubmissionError(f"--training {training!r}: use one of {', '.join(TRAINING)}")
    if parameters is not None and parameters < 0:
        raise SubmissionError(f"--parameters {parameters}: must be >= 0")
    enc, b = data["encoder"], data["benchmark"]
    return {
        "id": entry_id(enc["name"], enc["revision"], b["name"], b["fingerprint"]),
        "status": "verified" if verification is not None else "self-reported",
        "encoder": {"name": enc["name"], "revision": enc["revision"], "spec": enc.get("spec"), "parameters": parameters,
                    "training": training, "url": url, "notes": notes},
        "benchmark": {"name": b["name"], "version": str(b["version"]), "fingerprint": b["fingerprint"]},
        "settings": {"ks": list(data["settings"]["ks"]), "depth": int(data["settings"]["depth"]),
                     "tie_policy": data["settings"]["tie_policy"]},
        "scores": data["scores"],
        "verified_metrics": list(verification.verified_metrics) if verification is not None else [],
        "run_sha256": dict(verification.run_sha256) if verification is not None else {},
        "mrbench_version": data["mrbench_version"],
        "date": str(data["created"])[:10],
        "submitted": submitted or _now(),
        "command": command,
    }


GROUND_TRUTH_FLAG = "reads_ground_truth"
"""``encoder.extra[GROUND_TRUTH_FLAG] is True`` in results.json marks an encoder that reads the benchmark's
ground truth (the built-in ``oracle`` reads the synthetic scene graph); the leaderboard refuses its results."""
_GROUND_TRUTH_ENCODERS = {("oracle", "scene-graph-v1")}
"""``(name, revision)`` of built-in encoders that read the ground truth, for results written before the flag."""


def reads_ground_truth(encoder: dict[str, Any]) -> bool:
    """Whether the ``encoder`` block of a results document (or an entry) is an encoder that reads the ground
    truth: the :data:`GROUND_TRUTH_FLAG` in its ``extra``, the spec ``"oracle"`` (the built-in name), or the
    oracle's name and revision (results written before the flag)."""
    extra = encoder.get("extra")
    if isinstance(extra, dict) and extra.get(GROUND_TRUTH_FLAG) is True:
        return True
    return encoder.get("spec") == "oracle" or (encoder.get("name"), encoder.get("revision")) in _GROUND_TRUTH_ENCODERS


def missing_tasks(data: dict[str, Any], bench_record: dict[str, Any]) -> list[str]:
    """The tasks of the leaderboard's benchmark record that the results have no scores for, in the
    benchmark's order (``mrbench evaluate --tasks`` runs a subset; the leaderboard ranks full runs only)."""
    have = set(data["scores"]["tasks"]) & set(data["settings"]["tasks"])
    return [t for t in bench_record.get("tasks") or [] if t not in have]


@dataclass
class SubmitOutcome:
    """What :func:`submit` did: the entry written, whether it replaced an older one, the verification."""

    entry: dict[str, Any]
    replaced: bool
    verification: Verification | None


def submit(result_dir: str | Path, leaderboard: str | Path = DEFAULT_LEADERBOARD, *,
           benchmark: str | Path | None = None, replace: bool = False, self_reported: bool = False,
           parameters: int | None = None, training: str = "unknown", command: str | None = None,
           url: str | None = None, notes: str | None = None, tol: float = 1e-9) -> SubmitOutcome:
    """Validate, verify and add the results in ``result_dir`` to ``leaderboard``.

    Steps: the results JSON against ``results.schema.json``; results of an encoder that reads the ground
    truth (:func:`reads_ground_truth`, e.g. ``oracle``) are refused; its benchmark's fingerprint and name
    against the leaderboard's ``benchmarks`` (both must match one listed benchmark); the results must cover
    every task of that benchmark (:func:`missing_tasks`: a ``--tasks`` subset is refused, though
    :func:`~mrbench.leaderboard.verify.verify_results` checks it); every score recomputed from the run files (skipped with
    ``self_reported``), any mismatch rejects the submission naming the score; a duplicate (same
    encoder, revision and benchmark) is refused unless ``replace``; then the entry is written under
    the lock (module docstring). Every rejection is a one-line :class:`SubmissionError` and leaves the
    leaderboard file untouched."""
    result_dir, lb_path = require_results_dir(result_dir, "mrbench submit"), Path(leaderboard)
    data = load_results(result_dir)
    where = str(result_dir / "results.json")
    if reads_ground_truth(data["encoder"]):
        raise SubmissionError(f"{where}: encoder {data['encoder']['name']!r} reads the benchmark's ground truth "
                              "(the scene graph the relevance judgements come from), so its scores are a sanity "
                              "check, not a model's; the leaderboard does not rank it")
    if data["settings"].get("approx"):
        raise SubmissionError(f"{where}: these results come from an approximate search (--approx "
                              f"{data['settings']['approx'].get('index')}); the leaderboard takes exact search only: "
                              "re-run mrbench evaluate without --approx")
    gap = missing_score(data["scores"])
    if gap:
        raise SubmissionError(f"{where}: {gap}; submit results of mrbench evaluate with 5 among its --k cutoffs "
                              "(the default 1,5,10)")
    known = load_leaderboard(lb_path)
    fp = data["benchmark"]["fingerprint"]
    record = next((b for b in known["benchmarks"] if b["fingerprint"] == fp and b["name"] == data["benchmark"]["name"]), None)
    if record is None:
        names = ", ".join(f"{b['name']} ({short_fingerprint(b['fingerprint'])})" for b in known["benchmarks"]) or "none"
        raise SubmissionError(f"{where}: benchmark {data['benchmark']['name']!r} fingerprint {fp} is not one this "
                              f"leaderboard knows (known: {names}); evaluate on a listed benchmark")
    lacking = missing_tasks(data, record)
    if lacking:
        n = len(record["tasks"])
        raise SubmissionError(f"{where}: results cover {n - len(lacking)} of the {n} tasks of {record['name']} (missing: "
                              f"{', '.join(lacking)}); the leaderboard ranks runs over every task: re-run mrbench "
                              "evaluate without --tasks, then submit that directory")
    verification = None
    if not self_reported:
        bench = load_submission_benchmark(data, benchmark, where=where)
        verification = verify_results(result_dir, data=data, bench=bench, tol=tol)
        if not verification.ok:
            more = f" (and {len(verification.mismatches) - 1} more)" if len(verification.mismatches) > 1 else ""
            raise SubmissionError(f"{where}: rejected, a score does not follow from the run files: "
                                  f"{verification.mismatches[0]}{more}; `mrbench verify {result_dir}` lists them all")
    entry = make_entry(data, verification, parameters=parameters, training=training, command=command, url=url, notes=notes)
    with _Locked(lb_path) as lk:
        entries = lk.doc["entries"]
        at = next((i for i, e in enumerate(entries) if e["id"] == entry["id"]), None)
        if at is not None and not replace:
            raise SubmissionError(f"{lb_path}: an entry {entry['id']!r} (submitted {entries[at]['submitted']}) already "
                                  "exists; pass --replace to overwrite it")
        if at is None:
            entries.append(entry)
        else:
            entries[at] = entry
        lk.commit()
    return SubmitOutcome(entry=entry, replaced=at is not None, verification=verification)
