"""Approximate inner-product retrieval (FAISS IVF-Flat and HNSW-Flat) for very large pools.

:func:`exact_search` scans every candidate for every query. For pools of millions of candidates an
approximate index answers each query from a fraction of the pool; this module builds one, searches
it, and measures how much of the exact answer it finds (:func:`recall_against_exact`).

Indexes and parameters
----------------------
``"ivf"`` (FAISS ``IndexIVFFlat``, inner-product metric)
    The candidates are split into ``nlist`` cells by spherical k-means; a query scans the
    ``nprobe`` cells whose centroids score highest.

    * ``nlist``: integer in ``1..N`` (``N`` = candidates). Default ``round(4 * sqrt(N))``, at most
      ``N // 39`` (FAISS wants ~39 training points per cell), at least 1.
    * ``nprobe``: integer in ``1..nlist``. Default ``min(nlist, max(8, nlist // 16))``.
      ``nprobe == nlist`` scans every cell: the search is then exhaustive.
    * ``train_size``: k-means training vectors, integer in ``nlist..N``. Default
      ``min(N, 256 * nlist)``. The sample is drawn with ``numpy.random.default_rng(seed)`` and the
      k-means initialisation uses ``seed`` too.

``"hnsw"`` (FAISS ``IndexHNSWFlat``, inner-product metric)
    A hierarchical navigable small-world graph.

    * ``M``: graph degree, integer in ``4..128``. Default 32.
    * ``ef_construction``: build-time beam width, integer in ``M..65536``. Default ``max(80, M)``.
    * ``ef_search``: search-time beam width, integer in ``1..65536``. Default 128. The search
      runs with ``max(ef_search, shortlist)`` (see below): a beam narrower than the list it must
      fill would return short lists.

    The graph is built on one thread: FAISS's parallel insertion makes the graph depend on thread
    scheduling, a single thread makes it a fixed function of the data and ``seed`` (which seeds
    the level assignment). (On this project's 2-core build machine it was also faster than
    FAISS's 2-thread build.)

Common options: ``seed`` (integer ``>= 0``, default 0) and ``device`` (``"cpu"`` or ``"cuda"``).
``device="cuda"`` runs the IVF search on FAISS's GPU implementation when ``faiss-gpu`` is installed
and a GPU is visible (k-means training stays on the CPU, so the cells are the CPU ones); otherwise
— no GPU build of faiss, no GPU, HNSW (FAISS has no GPU HNSW), or a shortlist / ``nprobe`` above
FAISS-GPU's limit of 2048 — it logs exactly one warning line (logger ``mrbench.retrieval``) and runs
on the CPU. :attr:`ApproxResult.device` says where it ran. :func:`with_device_fallback` makes that
decision once for callers that search many pools (``mrbench evaluate`` warns once per run).

Building once, searching many times: :func:`build_index` returns an :class:`ApproxIndex` whose
:meth:`~ApproxIndex.search` takes ``nprobe`` / ``ef_search`` per call; :func:`approx_search` is
``build_index(...).search(...)``.

Out-of-range values raise :class:`ApproxError` (a :class:`~mrbench.retrieval.search.SearchError`)
with one line naming the parameter and its allowed range; :func:`check_approx_spec` validates
everything that does not depend on the pool size, so callers can fail before encoding.

What an approximate result contains (conventions)
-------------------------------------------------
* **Shortlist and exact re-scoring.** The index returns, per query, a shortlist of
  ``min(N, depth + max(32, depth // 4))`` candidates (the same margin :func:`exact_search` uses).
  Every shortlisted candidate is re-scored with :func:`~mrbench.retrieval.search.canonical_scores`
  and the shortlist is ordered by the pessimistic rule of :mod:`mrbench.retrieval.search`
  (score descending; exact ties: lower qrels grade first, then candidate row); its first ``depth``
  entries are the top list. Scores are therefore comparable, bit for bit, with exact search, and
  an exhaustive search (IVF with ``nprobe == nlist``) returns exactly the exact top lists (up to
  float near-ties straddling the shortlist's end, which random test data never produces).
* **Ranks are known only inside the list.** :attr:`ApproxResult.judged_ranks` maps a judged
  candidate to its 1-based position in the approximate top list; a judged candidate *not in the
  list* has no entry (its true rank is unknown). :func:`mrbench.metrics.ranking.score_queries`
  gives a missing rank ``inf``, so every metric treats it as "not retrieved within depth"; for
  ``k <= depth`` hit@k, recall@k, MRR@k and nDCG@k are exactly those of the approximate list (what
  its TREC run file says), and ``mean_rank`` becomes unknown (``null``) when any query's first
  relevant candidate was missed. ``judged_scores`` holds the canonical score of *every* judged
  candidate, in the list or not.
* **Ties** (``n_ties``): the non-relevant candidates placed before the query's first relevant
  candidate *in the approximate list* with exactly its score; 0 when that candidate was missed.
* **Short lists.** A query whose probed cells (or graph walk) hold fewer candidates than the
  shortlist is searched again with ``nprobe`` (IVF) or ``ef_search`` (HNSW) doubled until the
  list is full; IVF always fills by ``nprobe == nlist``; an HNSW query still short at
  ``ef_search >= N`` takes its shortlist from an exhaustive scan. Such queries are counted in
  :attr:`ApproxResult.n_refilled`. Top lists are therefore always ``[Q, min(depth, N)]``.

Determinism: for the same inputs, parameters and ``seed``, results are identical from run to run
on one machine, FAISS build and thread setting (IVF training and HNSW construction are seeded, HNSW
is built single-threaded, and searches are per query; k-means runs through BLAS, whose rounding may
depend on the thread count, so other machines may train slightly different cells).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from mrbench.errors import UnknownNameError, did_you_mean
from mrbench.retrieval.search import RetrievalResult, SearchError

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = [
    "APPROX_INDEXES",
    "ApproxError",
    "ApproxResult",
    "ApproxIndex",
    "approx_search",
    "build_index",
    "check_approx_spec",
    "gpu_unavailable",
    "recall_against_exact",
    "resolve_params",
    "with_device_fallback",
]

log = logging.getLogger("mrbench.retrieval")

APPROX_INDEXES: tuple[str, ...] = ("ivf", "hnsw")
"""Accepted values of ``approx_search(index=...)``."""
APPROX_DEVICES: tuple[str, ...] = ("cpu", "cuda")
_PARAMS: dict[str, tuple[str, ...]] = {
    "ivf": ("nlist", "nprobe", "train_size"),
    "hnsw": ("M", "ef_construction", "ef_search"),
}
_SPEC_KEYS: tuple[str, ...] = ("index", "seed", "device")
_EF_MAX = 65536
_M_RANGE = (4, 128)
_GPU_MAX_K = 2048  # FAISS-GPU's limit on k and nprobe
_HNSW_DEFAULTS = {"M": 32, "ef_construction": 80, "ef_search": 128}


class ApproxError(SearchError):
    """Invalid input to :func:`approx_search` (an index parameter out of range, bad options)."""


@dataclass
class ApproxResult(RetrievalResult):
    """:class:`~mrbench.retrieval.search.RetrievalResult` of an approximate search.

    Same fields with the conventions of the module docstring (``judged_ranks`` only for judged
    candidates inside the top list; ``n_ties`` within the list), plus:

    Attributes
    ----------
    index
        ``"ivf"`` or ``"hnsw"``.
    params
        The parameters actually used, defaults filled in (plus ``seed`` and ``shortlist``).
    build_seconds, search_seconds
        Wall time to train and fill the index, and to search it (shortlists only, without the
        canonical re-scoring).
    n_refilled
        Queries whose shortlist had to be re-searched because it came back short.
    """

    index: str = "ivf"
    params: dict[str, Any] = field(default_factory=dict)
    build_seconds: float = 0.0
    search_seconds: float = 0.0
    n_refilled: int = 0


# --------------------------------------------------------------------------------------------
# parameter validation
# --------------------------------------------------------------------------------------------


def _is_int(v: Any) -> bool:
    return not isinstance(v, bool) and isinstance(v, (int, np.integer))


def _check_int(name: str, value: Any, lo: int, hi: int | None, why: str = "") -> int:
    """``value`` as an int in ``lo..hi`` (``hi`` None: unbounded) or a one-line :class:`ApproxError`."""
    rng = f"in {lo}..{hi}" if hi is not None else f">= {lo}"
    if not _is_int(value):
        raise ApproxError(f"approximate index parameter {name}={value!r} has the wrong type ({type(value).__name__}): "
                          f"must be an integer {rng}{why}")
    if int(value) < lo or (hi is not None and int(value) > hi):
        raise ApproxError(f"approximate index parameter {name}={value!r} is out of range: must be an integer {rng}{why}")
    return int(value)


def check_approx_spec(spec: Mapping[str, Any] | None, n_candidates: int | None = None) -> dict[str, Any]:
    """Validate an approximate-search specification and return it normalised.

    ``spec`` is a mapping such as ``{"index": "ivf", "nlist": 1024, "nprobe": 16}``: ``index``
    (default ``"ivf"``), that index's parameters (see the module docstring), ``seed`` and
    ``device``. Everything that does not depend on the candidate pool is checked here (names,
    types, ``M``, ``ef_*``, ``nprobe <= nlist`` when both are given); with ``n_candidates`` also
    the pool-size bounds, as :func:`resolve_params` does. Returns ``{"index", "params", "seed",
    "device"}``.
    """
    if spec is None:
        spec = {}
    if not isinstance(spec, Mapping):
        raise ApproxError(f"the approximate search specification must be a mapping such as {{'index': 'ivf'}}, got {type(spec).__name__}")
    index = spec.get("index", "ivf")
    if index not in APPROX_INDEXES:
        raise UnknownNameError(
            f"unknown approximate index {index!r}{did_you_mean(str(index), APPROX_INDEXES)}; choose one of: {', '.join(APPROX_INDEXES)}"
        )
    allowed = _PARAMS[index]
    params: dict[str, Any] = {}
    for key, value in spec.items():
        if key in _SPEC_KEYS:
            continue
        if key not in allowed:
            others = [i for i, ps in _PARAMS.items() if key in ps]
            hint = f" (it belongs to index {others[0]!r})" if others else did_you_mean(str(key), allowed + _SPEC_KEYS)
            raise ApproxError(
                f"unknown parameter {key!r} for approximate index {index!r}{hint}; "
                f"allowed: {', '.join(allowed + _SPEC_KEYS)}"
            )
        params[key] = value
    seed = _check_int("seed", spec.get("seed", 0), 0, 2**31 - 1)
    device = spec.get("device", "cpu")
    if device not in APPROX_DEVICES:
        raise ApproxError(f"approximate search device {device!r} is not supported: choose one of {', '.join(APPROX_DEVICES)}")
    if index == "ivf":
        n = None if n_candidates is None else int(n_candidates)
        pool = " (N = the number of candidates)" if n is not None else ""
        if "nlist" in params:
            params["nlist"] = _check_int("nlist", params["nlist"], 1, n, pool)
        if "nprobe" in params:
            params["nprobe"] = _check_int("nprobe", params["nprobe"], 1, params.get("nlist"),
                                          " (1..nlist)" if "nlist" in params else "")
        if "train_size" in params:
            lo = params.get("nlist", 1)
            if "nlist" not in params:
                why = pool
            elif n is not None:
                why = " (nlist..N, N = the number of candidates)"
            else:
                why = f" (at least nlist={lo})"
            params["train_size"] = _check_int("train_size", params["train_size"], lo, n, why)
    else:
        if "M" in params:
            params["M"] = _check_int("M", params["M"], *_M_RANGE)
        m = params.get("M", _HNSW_DEFAULTS["M"])
        if "ef_construction" in params:
            params["ef_construction"] = _check_int("ef_construction", params["ef_construction"], m, _EF_MAX, " (M..65536)")
        if "ef_search" in params:
            params["ef_search"] = _check_int("ef_search", params["ef_search"], 1, _EF_MAX)
    return {"index": index, "params": params, "seed": seed, "device": device}


def shortlist_size(depth: int, n_candidates: int) -> int:
    """Candidates fetched from the index per query before exact re-scoring."""
    return int(min(n_candidates, depth + max(32, depth // 4)))


def resolve_params(index: str, params: Mapping[str, Any], n_candidates: int) -> dict[str, int]:
    """``params`` with defaults filled in and every value checked against a pool of ``n_candidates``."""
    n = int(n_candidates)
    spec = check_approx_spec({"index": index, **params}, n)
    p = dict(spec["params"])
    if index == "ivf":
        if "nlist" not in p:
            p["nlist"] = int(max(1, min(n // 39, round(4 * math.sqrt(n)))))
        nlist = p["nlist"]
        dflt = "" if "nlist" in spec["params"] else f"; nlist defaults to {nlist} for {n} candidates"
        if "nprobe" in p:
            p["nprobe"] = _check_int("nprobe", p["nprobe"], 1, nlist, f" (1..nlist{dflt})")
        else:
            p["nprobe"] = int(min(nlist, max(8, nlist // 16)))
        if "train_size" in p:
            p["train_size"] = _check_int("train_size", p["train_size"], nlist, n,
                                         f" (nlist..N, N = the number of candidates{dflt})")
        else:
            p["train_size"] = int(min(n, 256 * nlist))
        return {k: p[k] for k in _PARAMS["ivf"]}
    out = {**_HNSW_DEFAULTS, **p}
    if "ef_construction" not in p:
        out["ef_construction"] = max(out["ef_construction"], out["M"])
    return {k: int(out[k]) for k in _PARAMS["hnsw"]}


# --------------------------------------------------------------------------------------------
# search
# --------------------------------------------------------------------------------------------


def gpu_unavailable(index: str) -> str | None:
    """Why ``device="cuda"`` cannot run ``index`` on FAISS-GPU here (``None``: it can, as far as
    the pool-independent checks go; the GPU's limit of 2048 on ``nprobe`` and the shortlist is
    checked per search)."""
    import faiss

    if index == "hnsw":
        return "faiss has no GPU HNSW index"
    if not hasattr(faiss, "StandardGpuResources") or not hasattr(faiss, "index_cpu_to_gpu"):
        return "the installed faiss has no GPU support (pip install --force-reinstall --no-deps 'faiss-gpu-cu12>=1.8')"
    try:
        n_gpu = int(faiss.get_num_gpus())
    except Exception:  # pragma: no cover - driver trouble
        n_gpu = 0
    if n_gpu < 1:
        return "faiss sees no GPU"
    return None


def with_device_fallback(spec: dict[str, Any]) -> dict[str, Any]:
    """``spec`` (from :func:`check_approx_spec`) with ``device`` switched to ``"cpu"`` when a
    ``"cuda"`` request cannot be served, logging the one warning line; for callers that search
    many pools with one specification and want the warning once, not once per search."""
    if spec.get("device") != "cuda":
        return spec
    why = gpu_unavailable(spec["index"])
    if why is None:
        return spec
    log.warning("approximate search: device 'cuda' requested but %s; running on the CPU", why)
    return {**spec, "device": "cpu"}


class _OneThread:
    """Run FAISS single-threaded inside the block (restores the previous setting)."""

    def __enter__(self) -> None:
        import faiss

        self.prev = int(faiss.omp_get_max_threads())
        faiss.omp_set_num_threads(1)

    def __exit__(self, *exc: object) -> None:
        import faiss

        faiss.omp_set_num_threads(self.prev)


class ApproxIndex:
    """A built approximate index over one candidate matrix, searched with :meth:`search`.

    Build it with :func:`build_index`; :func:`approx_search` is ``build_index(...).search(...)``.
    Building once and searching several times (different queries, depths, or ``nprobe`` /
    ``ef_search``, which are search-time settings) skips the training / graph construction.

    Attributes: ``index`` (``"ivf"`` / ``"hnsw"``), ``params`` (resolved build and default search
    parameters, plus ``seed``), ``device`` (where searches run), ``build_seconds``.
    """

    def __init__(self, index: str, params: dict[str, int], seed: int, device: str, faiss_index: Any,
                 gpu_resources: Any, candidates: "torch.Tensor", max_norm: float, build_seconds: float) -> None:
        self.index = index
        self.params = {**params, "seed": seed}
        self.device = device
        self.build_seconds = build_seconds
        self._ix = faiss_index
        self._res = gpu_resources  # keeps the GPU memory alive as long as the index
        self._ct = candidates
        self._c_np = candidates.numpy()
        self._c_max = max_norm

    @property
    def n_candidates(self) -> int:
        return int(self._ct.shape[0])

    def _to_cpu(self, why: str) -> None:
        import faiss

        log.warning("approximate search: device 'cuda' requested but %s; running on the CPU", why)
        self._ix = faiss.index_gpu_to_cpu(self._ix)
        self._res = None
        self.device = "cpu"

    def _set_breadth(self, value: int) -> None:
        if self.index == "ivf":
            self._ix.nprobe = int(value)
        else:
            self._ix.hnsw.efSearch = int(value)

    def _fill_short(self, q: np.ndarray, kp: int, breadth: int, dist: np.ndarray, ids: np.ndarray) -> int:
        """Re-search the queries whose shortlist came back short (``-1`` ids); returns how many."""
        import faiss

        short = np.flatnonzero((ids < 0).any(axis=1))
        todo = short
        limit = self.params["nlist"] if self.index == "ivf" else self.n_candidates
        while todo.size and breadth < limit:
            breadth = min(limit, 2 * breadth)
            self._set_breadth(breadth)
            d2, i2 = self._ix.search(np.ascontiguousarray(q[todo]), kp)
            dist[todo], ids[todo] = d2, i2
            todo = todo[(i2 < 0).any(axis=1)]
        if todo.size:  # HNSW only: a graph walk that cannot reach kp candidates; scan exhaustively
            from mrbench.retrieval.search import faiss_blas_products

            with faiss_blas_products(q.shape[1]):
                d2, i2 = faiss.knn(np.ascontiguousarray(q[todo]), self._c_np, kp, metric=faiss.METRIC_INNER_PRODUCT)
            dist[todo], ids[todo] = d2, i2
        return int(short.size)

    def search(
        self,
        queries: "np.ndarray | torch.Tensor",
        *,
        judged: Sequence[Mapping[int, int]] | None = None,
        depth: int = 100,
        relevance_level: int = 1,
        nprobe: int | None = None,
        ef_search: int | None = None,
    ) -> ApproxResult:
        """Search the index (see :func:`approx_search` for ``judged``, ``depth``,
        ``relevance_level`` and the result). ``nprobe`` (IVF, ``1..nlist``) and ``ef_search``
        (HNSW, ``1..65536``) override the built defaults for this search."""
        from mrbench.retrieval.search import _check_matrix, _flatten_judged, _norms, canonical_scores

        q_t = _check_matrix(queries, "queries")
        if q_t.shape[1] != self._ct.shape[1]:
            raise SearchError(
                f"queries have dimension {q_t.shape[1]} but candidates have {self._ct.shape[1]}; "
                "encode both sides with the same model (or project them to the same dimension)"
            )
        n_q, n_c = int(q_t.shape[0]), self.n_candidates
        if not _is_int(depth) or depth < 1:
            raise SearchError(f"depth must be a positive integer, got {depth!r}")
        if not _is_int(relevance_level) or relevance_level < 1:
            raise SearchError(f"relevance_level must be an integer >= 1, got {relevance_level!r}")
        p = dict(self.params)
        if nprobe is not None:
            if self.index != "ivf":
                raise ApproxError("nprobe is an IVF parameter; an HNSW index takes ef_search")
            p["nprobe"] = _check_int("nprobe", nprobe, 1, p["nlist"], " (1..nlist)")
        if ef_search is not None:
            if self.index != "hnsw":
                raise ApproxError("ef_search is an HNSW parameter; an IVF index takes nprobe")
            p["ef_search"] = _check_int("ef_search", ef_search, 1, _EF_MAX)
        q_norm = _norms(q_t, "queries")
        if n_q and float(q_norm.max()) * self._c_max > 1e36:
            raise SearchError("embedding norms are too large for float32 scores; L2-normalise queries and candidates")
        ptr, rows, grades = _flatten_judged(judged if judged is not None else [{}] * n_q, n_q, n_c)
        depth = int(min(int(depth), n_c))
        kp = shortlist_size(depth, n_c)
        breadth = p["nprobe"] if self.index == "ivf" else max(p["ef_search"], kp)
        if self.device != "cpu" and max(breadth, kp) > _GPU_MAX_K:
            self._to_cpu(f"faiss-gpu searches at most {_GPU_MAX_K} lists and results (nprobe={breadth}, shortlist={kp})")
        qt = q_t.cpu()
        q_np = np.ascontiguousarray(qt.numpy())

        t0 = time.perf_counter()
        if n_q:
            self._set_breadth(breadth)
            dist, ids = self._ix.search(q_np, kp)
            ids = ids.astype(np.int64, copy=False)
            n_refilled = self._fill_short(q_np, kp, breadth, dist, ids)
        else:
            ids = np.zeros((0, kp), dtype=np.int64)
            n_refilled = 0
        search_s = time.perf_counter() - t0

        # exact canonical re-scoring of the shortlist, then the pessimistic order
        ct = self._ct
        qi = np.repeat(np.arange(n_q, dtype=np.int64), kp)
        scores = canonical_scores(qt, ct, qi, ids.reshape(-1)).reshape(n_q, kp)
        g_mat = np.zeros((n_q, kp), dtype=np.int64)
        jq = np.repeat(np.arange(n_q, dtype=np.int64), np.diff(ptr))
        if rows.size:
            jkey = jq * n_c + rows  # sorted (CSR order)
            skey = qi * n_c + ids.reshape(-1)
            pos = np.minimum(np.searchsorted(jkey, skey), jkey.size - 1)
            hit = jkey[pos] == skey
            g_mat.reshape(-1)[hit] = grades[pos[hit]]
        order = np.lexsort((ids, g_mat, -scores.astype(np.float64)), axis=-1)[:, :depth]
        top_idx = np.take_along_axis(ids, order, axis=1)
        top_sc = np.take_along_axis(scores, order, axis=1)
        top_g = np.take_along_axis(g_mat, order, axis=1)

        # judged ranks (positions in the list), canonical scores of every judged candidate, ties
        js = canonical_scores(qt, ct, jq, rows)
        judged_ranks: list[dict[int, int]] = []
        judged_scores: list[dict[int, float]] = []
        n_ties = np.zeros(n_q, dtype=np.int64)
        rows_l, js_l = rows.tolist(), js.astype(np.float64).tolist()
        for q in range(n_q):
            a, b = int(ptr[q]), int(ptr[q + 1])
            judged_scores.append(dict(zip(rows_l[a:b], js_l[a:b])))
            if a == b:
                judged_ranks.append({})
                continue
            in_list = np.flatnonzero(top_g[q] > 0)
            judged_ranks.append({int(top_idx[q, j]): int(j) + 1 for j in in_list})
            rel = in_list[top_g[q, in_list] >= relevance_level]
            if rel.size:
                f = int(rel[0])
                n_ties[q] = int(np.count_nonzero(top_sc[q, :f] == top_sc[q, f]))
        return ApproxResult(
            topk_indices=np.ascontiguousarray(top_idx),
            topk_scores=np.ascontiguousarray(top_sc, dtype=np.float32),
            judged_ranks=judged_ranks,
            judged_scores=judged_scores,
            n_ties=n_ties,
            backend=f"faiss-{self.index}",
            device=self.device,
            index=self.index,
            params={**p, "shortlist": kp},
            build_seconds=self.build_seconds,
            search_seconds=search_s,
            n_refilled=n_refilled,
        )


def build_index(
    candidates: "np.ndarray | torch.Tensor",
    *,
    index: str = "ivf",
    params: Mapping[str, Any] | None = None,
    device: str = "cpu",
    seed: int = 0,
) -> ApproxIndex:
    """Train and fill an approximate index over ``candidates`` (float32 ``[N, D]`` numpy array or
    torch tensor on any device; kept as a CPU copy for the exact re-scoring). Parameters, device
    and seed as in :func:`approx_search`."""
    import faiss

    from mrbench.retrieval.search import _check_matrix, _norms

    params = dict(params or {})
    for key in _SPEC_KEYS:
        if key in params:
            raise ApproxError(f"params holds {key!r}; pass {key} as its own argument")
    c_t = _check_matrix(candidates, "candidates").cpu()
    n, d = int(c_t.shape[0]), int(c_t.shape[1])
    if n == 0:
        raise SearchError("the candidate matrix is empty; a task needs at least one candidate")
    spec = check_approx_spec({"index": index, **params, "seed": seed, "device": device}, n)
    p = resolve_params(spec["index"], spec["params"], n)
    c_max = float(_norms(c_t, "candidates").max())
    c = c_t.numpy()  # shares memory with c_t (contiguous float32)
    dev = "cpu"
    if spec["device"] == "cuda":
        why = gpu_unavailable(spec["index"])
        if why is None:
            dev = "cuda:0"
        else:
            log.warning("approximate search: device 'cuda' requested but %s; running on the CPU", why)
    seed = spec["seed"]

    t0 = time.perf_counter()
    res = None
    if spec["index"] == "ivf":
        quantizer = faiss.IndexFlatIP(d)
        ix = faiss.IndexIVFFlat(quantizer, d, p["nlist"], faiss.METRIC_INNER_PRODUCT)
        ix.cp.seed = int(seed)
        ix.cp.min_points_per_centroid = 1  # sizes are validated above; no stderr warnings from FAISS
        ix.cp.max_points_per_centroid = int(math.ceil(p["train_size"] / p["nlist"])) + 1  # no resampling
        if p["train_size"] < n:
            rows = np.sort(np.random.default_rng(seed).choice(n, p["train_size"], replace=False))
            sample = np.ascontiguousarray(c[rows])
        else:
            sample = c
        ix.train(sample)  # (faiss's Python wrapper keeps the quantizer alive with the index)
        if dev != "cpu":
            res = faiss.StandardGpuResources()
            ix = faiss.index_cpu_to_gpu(res, 0, ix)
        ix.add(c)
    else:
        ix = faiss.IndexHNSWFlat(d, p["M"], faiss.METRIC_INNER_PRODUCT)
        ix.hnsw.rng = faiss.RandomGenerator(int(seed))
        ix.hnsw.efConstruction = p["ef_construction"]
        with _OneThread():
            ix.add(c)
    build_s = time.perf_counter() - t0
    return ApproxIndex(spec["index"], p, seed, dev, ix, res, c_t, c_max, build_s)


def approx_search(
    queries: "np.ndarray | torch.Tensor",
    candidates: "np.ndarray | torch.Tensor",
    *,
    judged: Sequence[Mapping[int, int]] | None = None,
    depth: int = 100,
    index: str = "ivf",
    params: Mapping[str, Any] | None = None,
    device: str = "cpu",
    seed: int = 0,
    relevance_level: int = 1,
) -> ApproxResult:
    """Approximate inner-product search through a FAISS IVF-Flat or HNSW-Flat index.

    ``build_index(candidates, index=..., params=..., device=..., seed=...).search(queries, ...)``.

    Parameters
    ----------
    queries, candidates
        float32 ``[Q, D]`` and ``[N, D]`` numpy arrays or torch tensors (any device; the index is
        built from a CPU copy). Must be finite.
    judged
        Optional, one mapping per query: candidate row → qrels grade (as for
        :func:`~mrbench.retrieval.search.exact_search`). Grades order exact ties inside the list
        and fill ``judged_ranks`` / ``judged_scores`` / ``n_ties``; ``None``: no judged candidates.
    depth
        Length of the top lists; clipped to ``N``.
    index, params
        ``"ivf"`` (``nlist``, ``nprobe``, ``train_size``) or ``"hnsw"`` (``M``,
        ``ef_construction``, ``ef_search``); missing parameters take the defaults of the module
        docstring.
    device
        ``"cpu"``, or ``"cuda"`` for FAISS-GPU (falls back to the CPU with one warning line).
    seed
        Seeds the IVF training sample and k-means initialisation, and the HNSW level assignment.
    relevance_level
        Minimum grade of a relevant candidate (only used for ``n_ties``).

    Raises
    ------
    ApproxError
        A parameter out of range (one line naming it and its range), bad options.
    SearchError
        Bad shapes, dtypes, NaN/inf, judged rows out of range.
    UnknownNameError
        An unknown index name.
    """
    from mrbench.retrieval.search import _check_matrix

    q_t = _check_matrix(queries, "queries")
    c_t = _check_matrix(candidates, "candidates")
    if q_t.shape[1] != c_t.shape[1]:  # before the (possibly long) build
        raise SearchError(
            f"queries have dimension {q_t.shape[1]} but candidates have {c_t.shape[1]}; "
            "encode both sides with the same model (or project them to the same dimension)"
        )
    if not _is_int(depth) or depth < 1:
        raise SearchError(f"depth must be a positive integer, got {depth!r}")
    ix = build_index(c_t, index=index, params=params, device=device, seed=seed)
    return ix.search(q_t, judged=judged, depth=depth, relevance_level=relevance_level)


# --------------------------------------------------------------------------------------------
# recall against exact search
# --------------------------------------------------------------------------------------------


def recall_against_exact(approx_topk: Any, exact_topk: Any, k: int) -> float:
    """Mean over queries of ``|approx top-k ∩ exact top-k| / k``.

    ``approx_topk`` / ``exact_topk``: ``[Q, depth]`` integer arrays of candidate rows, or results
    with a ``topk_indices`` attribute (:class:`ApproxResult`, :class:`RetrievalResult`). ``k`` must
    be an integer in ``1..depth`` of both (with ``depth = N``, i.e. lists holding the whole pool,
    the recall is 1 by definition).

    Ties at the cutoff: exact top lists are in the pessimistic order (exact ties: lower grade
    first, then row), so when several candidates share the exact k-th score, only those that the
    pessimistic order places within the first k count as the exact top-k; an approximate list
    holding one of the other, equally-scored candidates instead counts it as a miss. When the
    approximate list comes from :func:`approx_search` with the same ``judged`` it is ordered by the
    same rule from the same canonical scores, so a search that found the whole tie group ranks it
    exactly as exact search does and loses nothing; only an index that found part of a tie group
    can lose recall to the tie rule.
    """
    a = np.asarray(getattr(approx_topk, "topk_indices", approx_topk))
    e = np.asarray(getattr(exact_topk, "topk_indices", exact_topk))
    if a.ndim != 2 or e.ndim != 2:
        raise ApproxError(f"top lists must be 2-D [queries, depth], got shapes {a.shape} and {e.shape}")
    if a.shape[0] != e.shape[0]:
        raise ApproxError(f"approximate lists cover {a.shape[0]} queries but exact lists {e.shape[0]}; pass the same queries")
    width = min(a.shape[1], e.shape[1])
    k = _check_int("k", k, 1, max(1, width), " (1..depth of both lists)")
    if a.shape[0] == 0:
        return float("nan")
    ak = np.sort(a[:, :k], axis=1)
    ek = np.sort(e[:, :k], axis=1)
    # per row intersection size of two sorted id sets: offset the rows so one searchsorted does all
    span = int(max(ak.max(initial=0), ek.max(initial=0))) + 1
    off = np.arange(a.shape[0], dtype=np.int64)[:, None] * span
    af, ef = (ak + off).ravel(), (ek + off).ravel()
    pos = np.searchsorted(ef, af)
    found = (pos < ef.size) & (ef[np.minimum(pos, ef.size - 1)] == af)
    return float(found.reshape(a.shape[0], k).sum(axis=1).mean() / k)
