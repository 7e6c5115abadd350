"""TREC run files: ``qid Q0 docid rank score run_name``, one line per retrieved candidate.

Conventions
-----------
* Lines are written in the pessimistic order of :mod:`mrbench.retrieval.search` and the **rank
  column is authoritative**: :func:`read_trec_run` returns each query's list sorted by rank.
* Scores are written with ``%.9g``, which round-trips every float32 exactly.
* Exact ties keep equal scores in the file. ``trec_eval`` ignores the rank column and breaks score
  ties by docid (descending), so evaluating a run file with ``trec_eval`` can differ from mrbench's
  pessimistic metrics exactly where scores tie; mrbench's own scores come from the ranks.
* Files are written atomically (temporary file in the same directory + ``os.replace``): a reader
  never sees a half-written run.
"""

from __future__ import annotations

import math
import os
import re
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Collection, Sequence

import numpy as np

from mrbench.errors import MrbenchError

if TYPE_CHECKING:  # pragma: no cover
    from mrbench.retrieval.search import RetrievalResult

__all__ = ["RunFileError", "read_trec_run", "write_trec_run"]


class RunFileError(MrbenchError):
    """A TREC run file cannot be written or is malformed."""


_WS = re.compile(r"\s")


def _check_token(value: str, what: str) -> str:
    s = str(value)
    if not s or _WS.search(s):
        raise RunFileError(f"{what} {s!r} is empty or contains whitespace; TREC run files need whitespace-free ids")
    return s


def write_trec_run(
    path: str | os.PathLike[str],
    query_ids: Sequence[str],
    candidate_ids: Sequence[str],
    result: "RetrievalResult",
    run_name: str,
) -> Path:
    """Write ``result``'s top lists as a TREC run file at ``path`` (atomically); return the path.

    ``query_ids[q]`` names row ``q`` of ``result``; ``candidate_ids[i]`` names candidate row ``i``.
    Ranks are 1-based positions in the pessimistic order; scores are the canonical float32 scores.
    """
    run_name = _check_token(run_name, "run_name")
    n_q = result.topk_indices.shape[0]
    if len(query_ids) != n_q:
        raise RunFileError(f"{len(query_ids)} query ids for {n_q} result rows; pass one id per query, in row order")
    qids = [_check_token(q, "query id") for q in query_ids]
    dids = [str(d) for d in candidate_ids]
    if result.topk_indices.size and int(result.topk_indices.max()) >= len(dids):
        raise RunFileError(
            f"result refers to candidate row {int(result.topk_indices.max())} but only {len(dids)} candidate ids "
            "were given; pass the ids of every candidate row"
        )
    for i in np.unique(result.topk_indices).tolist():  # only the ids that are written
        _check_token(dids[i], "candidate id")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # open(..., "x") creates the file with 0o666 & ~umask, like every other output (mkstemp gives 0600)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "x", encoding="utf-8", newline="\n") as fh:
            idx = result.topk_indices.tolist()
            scores = result.topk_scores.tolist()
            for q, qid in enumerate(qids):
                fh.writelines(
                    f"{qid} Q0 {dids[i]} {r} {s:.9g} {run_name}\n"
                    for r, (i, s) in enumerate(zip(idx[q], scores[q]), start=1)
                )
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def read_trec_run(
    path: str | os.PathLike[str],
    known_qids: Collection[str] | None = None,
    known_dids: Collection[str] | None = None,
) -> dict[str, list[tuple[str, int, float]]]:
    """Read a TREC run file into ``{qid: [(docid, rank, score), ...]}`` sorted by rank.

    Validates every line: exactly 6 whitespace-separated fields, an integer rank, a finite score,
    no duplicate ``(qid, docid)`` and no duplicate rank within a query, and — when
    ``known_qids`` / ``known_dids`` are given — only known ids. Blank lines are skipped. Any
    violation raises :class:`RunFileError` naming ``file:line``.
    """
    path = Path(path)
    qset = set(known_qids) if known_qids is not None else None
    dset = set(known_dids) if known_dids is not None else None
    out: dict[str, list[tuple[str, int, float]]] = {}
    seen: dict[str, set[str]] = {}
    ranks_seen: dict[str, set[int]] = {}
    try:
        fh = open(path, encoding="utf-8")
    except OSError as exc:
        raise RunFileError(f"cannot read run file {path}: {exc.strerror}; check the path") from None
    with fh:
        for lineno, line in enumerate(fh, start=1):
            where = f"{path}:{lineno}"
            fields = line.split()
            if not fields:
                continue
            if len(fields) != 6:
                raise RunFileError(
                    f"{where}: expected 6 fields 'qid Q0 docid rank score run_name', got {len(fields)}; fix the line"
                )
            qid, _q0, did, rank_s, score_s, _name = fields
            try:
                rank = int(rank_s)
            except ValueError:
                raise RunFileError(f"{where}: rank {rank_s!r} is not an integer; write integer ranks") from None
            try:
                score = float(score_s)
            except ValueError:
                raise RunFileError(f"{where}: score {score_s!r} is not a number; write numeric scores") from None
            if not math.isfinite(score):
                raise RunFileError(f"{where}: score {score_s!r} is not finite; write finite scores")
            if qset is not None and qid not in qset:
                raise RunFileError(f"{where}: unknown query id {qid!r}; the run does not match this task's queries")
            if dset is not None and did not in dset:
                raise RunFileError(f"{where}: unknown candidate id {did!r}; the run does not match this task's candidates")
            docs = seen.setdefault(qid, set())
            if did in docs:
                raise RunFileError(f"{where}: duplicate (query {qid!r}, candidate {did!r}); each candidate may appear once per query")
            docs.add(did)
            rks = ranks_seen.setdefault(qid, set())
            if rank in rks:
                raise RunFileError(f"{where}: duplicate rank {rank} for query {qid!r}; ranks must be unique within a query")
            rks.add(rank)
            out.setdefault(qid, []).append((did, rank, score))
    for lst in out.values():
        lst.sort(key=lambda t: t[1])
    return out
