"""Per-query ranking metrics, one function per metric.

Inputs
------
Every metric function takes two aligned ``[Q, M]`` arrays (build them with
:func:`judged_matrix`):

``ranks``
    1-based rank of each judged candidate of each query in the pessimistic order of
    :mod:`mrbench.retrieval.search` (exact ties broken against the model). ``inf`` marks a judged
    candidate that was not ranked (never inside any cutoff) and padding.
``grades``
    Its qrels grade (``> 0``); padding is 0.

Conventions (GUIDE §3)
----------------------
* **Relevant** means ``grade >= relevance_level`` (binary metrics and ranks).
* **Queries with no relevant candidate are dropped**: every metric is ``NaN`` for them (never 0,
  never 1); :func:`score_queries` flags them in ``dropped`` and aggregation counts them.
* ``hit@k``: 1 if any relevant candidate has rank ``<= k``, else 0 (what CLIP_benchmark, UniIR
  and the ELVA paper call "Recall@K"; trec_eval's ``success_k``).
* ``recall@k``: relevant candidates with rank ``<= k`` / relevant candidates in the qrels
  (trec_eval's ``recall_k``; relevant candidates missing from the pool still count in the
  denominator).
* ``mrr@k``: ``1 / first_rank`` if ``first_rank <= k`` else 0 (trec_eval's ``recip_rank`` on a run
  cut at ``k``).
* ``ndcg@k``: ``DCG@k / IDCG@k``, linear gain = raw grade of every judged candidate (grade > 0,
  *including* grades below ``relevance_level``), discount ``1 / log2(rank + 1)``; IDCG from the
  query's qrels grades sorted descending, cut at ``k`` (trec_eval's ``ndcg_cut_k``, which ignores
  the relevance level).
* ``first_rank``: rank of the best-ranked relevant candidate (``inf`` when none was ranked).
* ``n_relevant``: number of relevant candidates in the qrels.

Because ties are broken against the model (lower grades first within a tie), every metric is
the worst value over all orderings of tied candidates.
"""

from __future__ import annotations

from typing import Hashable, Mapping, Sequence

import numpy as np

from mrbench.errors import MrbenchError

__all__ = [
    "METRIC_NAMES",
    "MetricInputError",
    "first_rank",
    "hit_at_k",
    "judged_matrix",
    "mrr_at_k",
    "n_relevant",
    "ndcg_at_k",
    "recall_at_k",
    "score_queries",
]

METRIC_NAMES: tuple[str, ...] = ("hit", "recall", "mrr", "ndcg")
"""Cutoff metrics produced by :func:`score_queries`, as ``f"{name}@{k}"`` columns."""


class MetricInputError(MrbenchError):
    """Inconsistent input to a metric function (shapes, cutoffs, grades)."""


def _check(ranks: np.ndarray, grades: np.ndarray, k: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    r = np.asarray(ranks, dtype=np.float64)
    g = np.asarray(grades, dtype=np.float64)
    if r.ndim != 2 or r.shape != g.shape:
        raise MetricInputError(
            f"ranks and grades must be aligned [queries, judged] arrays, got shapes {r.shape} and {g.shape}; "
            "build them with judged_matrix()"
        )
    if k is not None and (isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1):
        raise MetricInputError(f"cutoff k must be a positive integer, got {k!r}")
    return r, g


def _relevant(g: np.ndarray, relevance_level: int) -> np.ndarray:
    if relevance_level < 1:
        raise MetricInputError(f"relevance_level must be >= 1, got {relevance_level}")
    return g >= relevance_level


class _Prepared:
    """The judged entries of ``n_q`` queries as flat arrays, and what the metrics share, each computed
    once, on first use.

    ``q`` (int64, non-decreasing), ``r``, ``g`` (float64): query, rank and grade of every entry with
    grade ``> 0`` (the only entries any metric reads; padding and grade-0 entries are left out).
    Every metric function builds one for its call; :func:`score_queries` builds one for all its
    columns from the judged pairs directly, so no ``[Q, M]`` matrix is padded out to the longest
    query (a benchmark with graded partial matches has millions of pairs, a few queries thousands).
    ``kmax``: the largest cutoff that will be asked for.
    """

    def __init__(self, q: np.ndarray, r: np.ndarray, g: np.ndarray, n_q: int, relevance_level: int,
                 kmax: int = 1) -> None:
        self.q, self.r, self.g, self.n_q, self.kmax = q, r, g, int(n_q), int(kmax)
        self.rel = _relevant(g, relevance_level)
        self.n_rel = np.bincount(q[self.rel], minlength=self.n_q)
        self.dropped = self.n_rel == 0
        self._first: np.ndarray | None = None
        self._within: tuple[np.ndarray, ...] | None = None
        self._grade_counts: list[tuple[float, np.ndarray]] | None = None

    @classmethod
    def from_matrix(cls, r: np.ndarray, g: np.ndarray, relevance_level: int, kmax: int = 1) -> "_Prepared":
        rows, cols = np.nonzero(g > 0)
        return cls(rows.astype(np.int64), r[rows, cols], g[rows, cols], r.shape[0], relevance_level, kmax)

    def nan_dropped(self, values: np.ndarray) -> np.ndarray:
        out = values.astype(np.float64)
        out[self.dropped] = np.nan
        return out

    @property
    def first(self) -> np.ndarray:
        """Best rank of a relevant entry per query (``inf``: none ranked or none relevant)."""
        if self._first is None:
            from mrbench.data.csr import reduce_segments, segment_ptr

            self._first = reduce_segments(np.minimum, self.r[self.rel], segment_ptr(self.q[self.rel], self.n_q),
                                          np.inf, np.float64)
        return self._first

    def within(self, k: int) -> tuple[np.ndarray, ...]:
        """``(query, rank, grade, relevant)`` of the entries ranked within ``kmax`` (at least ``k``),
        sorted by query, then rank."""
        if k > self.kmax:
            self.kmax, self._within = int(k), None
        if self._within is None:
            idx = np.flatnonzero(self.r <= self.kmax)
            idx = idx[np.lexsort((self.r[idx], self.q[idx]))]
            self._within = (self.q[idx], self.r[idx], self.g[idx], self.rel[idx])
        return self._within

    def idcg(self, kk: int) -> np.ndarray:
        """Per query, the DCG of its ``kk`` largest gains in descending order (the ideal ranking).

        Computed exactly as :meth:`ndcg` computes a DCG (one ``gain / log2(rank + 1)`` term per
        rank, added in rank order), so a ranking that is ideal scores exactly 1.0.
        """
        if self._grade_counts is None:
            values = np.unique(self.g)[::-1]
            if values.size <= 64:  # qrels grades: a few integers; count each per query once
                self._grade_counts = [(float(v), np.bincount(self.q[self.g == v], minlength=self.n_q))
                                      for v in values]
        if self._grade_counts is not None:
            # the ideal list holds each grade value, largest first, as often as the query has it
            vals = np.array([v for v, _ in self._grade_counts])
            cum = np.cumsum(np.array([c for _, c in self._grade_counts]), axis=0)  # [values, Q]
            n = np.minimum(cum[-1] if len(vals) else np.zeros(self.n_q, dtype=np.int64), kk)
            qs = np.repeat(np.arange(self.n_q, dtype=np.int64), n)
            rank = np.arange(qs.size, dtype=np.int64) - np.repeat(np.cumsum(n) - n, n) + 1
            gs = vals[(cum[:, qs] < rank[None, :]).sum(axis=0)] if qs.size else np.zeros(0)
        else:  # many distinct (non-integer) gains: sort them
            order = np.lexsort((-self.g, self.q))
            qs, gs = self.q[order], self.g[order]
            rank = np.arange(qs.size) - np.searchsorted(qs, qs) + 1  # 1-based position within its query
            top = rank <= kk
            qs, gs, rank = qs[top], gs[top], rank[top]
        return np.bincount(qs, weights=gs / np.log2(rank.astype(np.float64) + 1.0), minlength=self.n_q)

    # -- the metrics -----------------------------------------------------------------------------
    def hit(self, k: int) -> np.ndarray:
        return self.nan_dropped(self.first <= k)

    def recall(self, k: int) -> np.ndarray:
        rows, rk, _, rel = self.within(k)
        found = np.bincount(rows[rel & (rk <= k)], minlength=self.n_q)
        with np.errstate(invalid="ignore", divide="ignore"):
            return self.nan_dropped(found / np.maximum(self.n_rel, 1))

    def mrr(self, k: int) -> np.ndarray:
        first = self.first
        with np.errstate(divide="ignore"):
            return self.nan_dropped(np.where(first <= k, 1.0 / first, 0.0))

    def ndcg(self, k: int) -> np.ndarray:
        rows, rk, gk, _ = self.within(k)
        m = rk <= k  # each query's gains added in rank order, as trec_eval adds them
        dcg = np.bincount(rows[m], weights=gk[m] / np.log2(rk[m] + 1.0), minlength=self.n_q)
        idcg = self.idcg(int(k))
        with np.errstate(invalid="ignore", divide="ignore"):
            return self.nan_dropped(np.where(idcg > 0, dcg / np.where(idcg > 0, idcg, 1.0), 0.0))


def n_relevant(ranks: np.ndarray, grades: np.ndarray, *, relevance_level: int = 1) -> np.ndarray:
    """Number of relevant candidates (``grade >= relevance_level``) per query, int64 ``[Q]``."""
    _, g = _check(ranks, grades)
    return _relevant(g, relevance_level).sum(axis=1).astype(np.int64)


def first_rank(ranks: np.ndarray, grades: np.ndarray, *, relevance_level: int = 1) -> np.ndarray:
    """Rank of the best-ranked relevant candidate per query (``inf`` if none ranked, NaN if dropped)."""
    p = _Prepared.from_matrix(*_check(ranks, grades), relevance_level)
    return p.nan_dropped(p.first)


def hit_at_k(ranks: np.ndarray, grades: np.ndarray, k: int, *, relevance_level: int = 1) -> np.ndarray:
    """``hit@k``: 1.0 if a relevant candidate has rank ``<= k``, else 0.0; NaN for dropped queries."""
    return _Prepared.from_matrix(*_check(ranks, grades, k), relevance_level, k).hit(k)


def recall_at_k(ranks: np.ndarray, grades: np.ndarray, k: int, *, relevance_level: int = 1) -> np.ndarray:
    """``recall@k``: relevant candidates with rank ``<= k`` / all relevant; NaN for dropped queries."""
    return _Prepared.from_matrix(*_check(ranks, grades, k), relevance_level, k).recall(k)


def mrr_at_k(ranks: np.ndarray, grades: np.ndarray, k: int, *, relevance_level: int = 1) -> np.ndarray:
    """``mrr@k``: ``1 / first_rank`` if ``first_rank <= k`` else 0.0; NaN for dropped queries."""
    return _Prepared.from_matrix(*_check(ranks, grades, k), relevance_level, k).mrr(k)


def ndcg_at_k(ranks: np.ndarray, grades: np.ndarray, k: int, *, relevance_level: int = 1) -> np.ndarray:
    """``ndcg@k`` with linear gains = raw grades and IDCG from the qrels (trec_eval ``ndcg_cut``).

    All judged grades ``> 0`` are gains, including those below ``relevance_level``;
    ``relevance_level`` only decides which queries are dropped (no relevant candidate → NaN).
    """
    return _Prepared.from_matrix(*_check(ranks, grades, k), relevance_level, k).ndcg(k)


def judged_matrix(
    judged_ranks: Sequence[Mapping[int, int]], grades: Sequence[Mapping[int, int]]
) -> tuple[np.ndarray, np.ndarray]:
    """Aligned ``(ranks, grades)`` float64 ``[Q, M]`` arrays from per-query mappings.

    ``grades[q]`` maps a candidate to its qrels grade; entries with grade ``<= 0`` are ignored
    (negative grades raise). ``judged_ranks[q]`` maps a candidate to its rank; a graded candidate
    without a rank gets ``inf``; ranks of ungraded candidates are ignored. Padding: rank ``inf``,
    grade 0.
    """
    q, r, g, n_q = _judged_flat(judged_ranks, grades)
    counts = np.bincount(q, minlength=n_q)
    width = int(counts.max()) if n_q else 0
    ranks = np.full((n_q, width), np.inf)
    grd = np.zeros((n_q, width))
    col = np.arange(q.size, dtype=np.int64) - (np.cumsum(counts) - counts)[q]
    ranks[q, col] = r
    grd[q, col] = g
    return ranks, grd


def _judged_flat(
    judged_ranks: Sequence[Mapping[int, int]], grades: Sequence[Mapping[int, int]]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """``(query, rank, grade, Q)``: the entries of :func:`judged_matrix` without the padding, query by
    query (``query`` non-decreasing; int64, float64, float64)."""
    if len(judged_ranks) != len(grades):
        raise MetricInputError(
            f"judged_ranks has {len(judged_ranks)} queries but grades has {len(grades)}; pass one mapping per query for both"
        )
    try:
        fast = _judged_flat_csr(judged_ranks, grades)
        if fast is None:
            fast = _judged_flat_fast(judged_ranks, grades)
    except (TypeError, ValueError, OverflowError):
        fast = None
    if fast is not None:
        return fast
    # anything unusual (non-integer or negative grades, bad ranks, non-numeric values): the
    # reference loop, which also raises the error of the first offending entry
    per_q = [_judged_row(q, grades[q], judged_ranks[q]) for q in range(len(grades))]
    lens = [len(gs) for _, gs in per_q]
    return (np.repeat(np.arange(len(per_q), dtype=np.int64), lens),
            np.array([x for rs, _ in per_q for x in rs], dtype=np.float64),
            np.array([x for _, gs in per_q for x in gs], dtype=np.float64), len(per_q))


def _judged_row(q: int, gq: Mapping[int, int], rq: Mapping[int, int]) -> tuple[list[float], list[float]]:
    """Ranks and grades of query ``q``'s graded candidates (the reference of :func:`judged_matrix`)."""
    rs: list[float] = []
    gs: list[float] = []
    for cand, grade in gq.items():
        grade = int(grade)
        if grade < 0:
            raise MetricInputError(f"query {q}: candidate {cand!r} has negative grade {grade}; grades must be >= 0")
        if grade == 0:
            continue
        rank = rq.get(cand)
        if rank is None:
            rs.append(np.inf)
        else:
            rank = int(rank)
            if rank < 1:
                raise MetricInputError(f"query {q}: candidate {cand!r} has rank {rank}; ranks are 1-based")
            rs.append(float(rank))
        gs.append(float(grade))
    return rs, gs


def _judged_flat_csr(
    judged_ranks: Sequence[Mapping[int, int]], grades: Sequence[Mapping[int, int]]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int] | None:
    """:func:`_judged_flat` straight from the arrays when both inputs are
    :class:`~mrbench.data.csr.CsrMappings` whose ranks cover the grades' keys in the same order
    (``exact_search``'s ranks for ``judged_grades``' grades), else ``None``."""
    from mrbench.data.csr import CsrMappings

    if not (isinstance(judged_ranks, CsrMappings) and isinstance(grades, CsrMappings)):
        return None
    if grades.values.dtype.kind not in "iub":
        return None
    g = grades.values.astype(np.float64)
    if not (g >= 0).all():
        return None
    keep = g > 0
    if keep.all():
        sub = grades
    else:
        sub = grades.select(keep)
        g = g[keep]
    if not judged_ranks.same_layout(sub) or judged_ranks.values.dtype.kind not in "iu":
        return None
    r = judged_ranks.values.astype(np.float64)
    if r.size and not (r >= 1).all():
        return None
    return sub.query_of(), r, g, len(sub)


def _judged_flat_fast(
    judged_ranks: Sequence[Mapping[int, int]], grades: Sequence[Mapping[int, int]]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int] | None:
    """:func:`_judged_flat` with the per-entry work in numpy: the same arrays, or ``None`` when an
    entry needs the reference loop (a negative or non-integer grade, a rank that is not an integer
    ``>= 1``); raises ``TypeError`` / ``ValueError`` on non-numeric values."""
    from itertools import chain, repeat

    from mrbench.data.csr import CsrMappings

    if isinstance(grades, CsrMappings):  # read below three times: build its dicts once
        grades = list(grades)
    n_q = len(grades)
    lens = np.fromiter(map(len, grades), dtype=np.int64, count=n_q)
    total = int(lens.sum())
    g = np.fromiter(chain.from_iterable(gq.values() for gq in grades), dtype=np.float64, count=total)
    # a missing rank reads as NaN (a present NaN is an error, told apart below)
    r = np.fromiter(chain.from_iterable(map(rq.get, gq, repeat(np.nan)) for rq, gq in zip(judged_ranks, grades)),
                    dtype=np.float64, count=total)
    if not (g >= 0).all() or not (g == np.trunc(g)).all():
        return None
    keep = g > 0
    rk = r[keep]
    miss = np.isnan(rk)
    ok = miss | (np.isfinite(rk) & (rk >= 1) & (rk == np.trunc(rk)))
    if not ok.all():
        return None
    row = np.repeat(np.arange(n_q, dtype=np.int64), lens)[keep]
    if miss.any():
        # a NaN may be a missing rank (→ inf) or a stored NaN / None (an error): recheck those queries
        for q in np.unique(row[miss]).tolist():
            _judged_row(q, grades[q], judged_ranks[q])  # raises on a stored NaN / None
        rk = np.where(miss, np.inf, rk)
    return row, rk, g[keep], n_q


def score_queries(
    judged_ranks: Sequence[Mapping[int, int]],
    grades: Sequence[Mapping[int, int]],
    *,
    ks: Sequence[int] = (1, 5, 10),
    relevance_level: int = 1,
    query_ids: Sequence[Hashable] | None = None,
):
    """Per-query metrics as a :class:`pandas.DataFrame` (one row per query, index ``qid``).

    Columns: ``hit@k``, ``recall@k``, ``mrr@k``, ``ndcg@k`` for each ``k`` in ``ks`` (in that
    order), then ``first_rank`` (float), ``n_relevant`` (int) and ``dropped`` (bool). Dropped
    queries (no candidate with ``grade >= relevance_level``) keep their row with NaN metrics.
    ``judged_ranks`` is typically :attr:`RetrievalResult.judged_ranks` and ``grades`` the same
    queries' ``judged`` mappings.
    """
    import pandas as pd

    ks = tuple(ks)
    if not ks:
        raise MetricInputError("ks is empty; pass at least one cutoff, e.g. ks=(1, 5, 10)")
    for k in ks:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise MetricInputError(f"cutoff {k!r} in ks is not a positive integer")
    if len(set(ks)) != len(ks):
        raise MetricInputError(f"ks {ks} has duplicates; pass each cutoff once")
    if isinstance(relevance_level, bool) or not isinstance(relevance_level, (int, np.integer)) or relevance_level < 1:
        raise MetricInputError(f"relevance_level must be an integer >= 1, got {relevance_level!r}")
    q, r, g, n_q = _judged_flat(judged_ranks, grades)
    if query_ids is None:
        index = pd.RangeIndex(n_q, name="qid")
    else:
        if len(query_ids) != n_q:
            raise MetricInputError(f"{len(query_ids)} query ids for {n_q} queries; pass one id per query")
        index = pd.Index(list(query_ids), name="qid")
    p = _Prepared(q, r, g, n_q, relevance_level, max(int(k) for k in ks))  # shared by every column
    funcs = {"hit": p.hit, "recall": p.recall, "mrr": p.mrr, "ndcg": p.ndcg}
    cols: dict[str, np.ndarray] = {}
    for name in METRIC_NAMES:
        for k in ks:
            cols[f"{name}@{int(k)}"] = funcs[name](int(k))
    cols["first_rank"] = p.nan_dropped(p.first)
    nrel = p.n_rel.astype(np.int64)
    cols["n_relevant"] = nrel
    cols["dropped"] = nrel == 0
    return pd.DataFrame(cols, index=index)
