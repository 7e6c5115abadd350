"""Exact (brute-force) inner-product retrieval with pessimistic tie handling.

Ranking convention (pessimistic ties)
-------------------------------------
Within one query, candidates are ordered by score descending. Candidates whose scores are *exactly*
equal are ordered **against the model**: lower qrels grade first (candidates absent from the qrels
have grade 0), then candidate row index ascending. A candidate's rank is its 1-based position in
this order. Consequences, all deliberate:

* the first relevant candidate's rank is ``1 + (candidates scoring strictly higher) + (non-relevant
  candidates with exactly the same score)`` -- GUIDE §3's definition; relevant candidates tied with
  each other take consecutive ranks (lower grade first);
* every metric (hit@k, recall@k, MRR, nDCG with graded gains) is the *worst* value over all the
  orderings of the tied candidates, so a degenerate model (e.g. a constant encoder, whose scores all
  tie) can never score well by luck of the sort order, and the result never depends on the order in
  which ``argsort``, ``topk`` or FAISS happen to return equal scores;
* the top-``depth`` lists follow the same order, including at the cutoff: when the depth-th score
  is shared by several candidates, the lower-grade ones take the remaining slots first.

How scores are made comparable (the canonical score)
----------------------------------------------------
Float32 matrix products are not reproducible across kernels: FAISS, MKL, cuBLAS, a 1-row product
and a 600-row product round the same dot product differently in the last bits (on this project's
CPU machine FAISS and PyTorch disagree on ~80 % of the entries of a random score matrix). Ranks,
ties and every reported score must therefore not come from whichever kernel happened to run. Every
score this module reports or compares is the **canonical score** of a (query, candidate) pair:
the ``D`` float32 products ``q_d * c_d`` added by a fixed pairwise-halving tree of float32 adds
(:func:`canonical_scores`). Each step is a correctly rounded IEEE-754 operation, so the value
depends only on the two vectors — never on batch shape, chunking, backend, device (CPU or CUDA),
thread count or machine — and both backends, every chunk size and the GPU give bitwise-identical
results.

The fast kernel (a chunked ``Q @ C.T`` in PyTorch, or FAISS ``IndexFlatIP``) is used only as a
*filter*. Its error and the canonical score's error are both bounded by
``gamma_D * |q| * |c|`` (``gamma_D = D u / (1 - D u)``, ``u = 2**-24``, the standard bound for a
float32 dot product in any summation order), so with ``B_q = 2 gamma_D |q| max|c|`` (plus slack and,
when TF32/bf16 matmuls are enabled, the input rounding) a fast score ``f`` tells us:
``f > s + B`` → canonical score certainly ``> s``; ``f < s - B`` → certainly ``< s``; otherwise the
candidate is *ambiguous* and is rescored canonically. For typical data only a handful of
candidates per query are ever rescored beyond the top-``depth`` list itself.

Backends
--------
``"torch"``
    Query-chunked ``S = Qc @ C.T`` (chunk rows chosen so ``S`` stays under ``max_chunk_bytes``;
    the full Q×N matrix is never held), ``topk`` of ``depth + margin``, then exact counts for each
    judged candidate: from the top list when the candidate's score window lies inside it,
    otherwise by scanning the same ``S`` row. Runs on ``device`` (default: CUDA if available).
``"faiss"``
    FAISS ``IndexFlatIP`` top-``(depth + margin)`` lists (CPU; the same exhaustive kernel is called
    through ``faiss.knn``, which skips copying the candidates into an index). Judged candidates whose score
    window lies inside the list get their ranks from the list. For queries where a judged
    candidate lies below the list, or where a tie (or near-tie) touches the list boundary, the
    fast score row is recomputed with a PyTorch matmul for that query (the "exact row scan") and
    handled exactly as the torch backend does.
``"auto"``
    torch on a GPU if one is available, else faiss if importable, else torch on the CPU.

Both backends return identical :class:`RetrievalResult` objects (ranks, every score, top lists).

How the exact results are assembled (both backends)
---------------------------------------------------
The fast kernel returns, per query, a list of ``kp = depth + max(32, depth // 4)`` candidates
sorted by fast score, such that every candidate outside the list scores ``<=`` its last entry.

* *Top list*: with ``t`` the depth-th fast score, only candidates with ``f >= t - 2B`` can be in
  the exact top-``depth`` (at least ``depth`` candidates have canonical score ``>= t - B``). When
  that pool lies inside the list (the usual case) it is rescored canonically and sorted by
  ``(-score, grade, row)``; otherwise (a tie or near-tie touching the list boundary) the pool is
  read from the full fast score row.
* *Judged candidate* with canonical score ``s``: its rank needs the number of candidates with
  canonical score ``> s`` and ``== s``. Candidates with ``f > s + B`` count as higher, those in
  ``[s - B, s + B]`` are rescored; when ``s - B`` lies above the list's last fast score, all of
  this comes from the list, otherwise from the full fast score row.

Cost: one fast kernel pass plus ``Q * (depth + a few)`` canonical rescorings; a full-row scan only
for queries with a judged candidate below the list. Degenerate data where *every* score ties (a
constant encoder) makes every candidate ambiguous and is rescored in full: correct, but about as
costly as a second pass over the candidates per query.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import numpy as np

from mrbench.errors import MrbenchError, UnknownNameError, did_you_mean

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = [
    "BACKENDS",
    "RetrievalResult",
    "SearchError",
    "canonical_scores",
    "exact_search",
    "score_bound",
]

BACKENDS: tuple[str, ...] = ("auto", "torch", "faiss")
"""Accepted values of ``exact_search(backend=...)``."""

_U32 = 2.0**-24  # unit roundoff of float32
_MAX_PAIRS_PER_BLOCK = 1 << 22  # bound on the (query, candidate) pairs materialised at once


class SearchError(MrbenchError):
    """Invalid input to :func:`exact_search` (shape, dtype, NaN, judged rows, options)."""


@dataclass
class RetrievalResult:
    """Exact retrieval output for ``Q`` queries against ``N`` candidates.

    Attributes
    ----------
    topk_indices
        int64 ``[Q, depth]``: candidate row indices in the pessimistic order (see module docs);
        ``depth`` is the requested depth clipped to ``N``.
    topk_scores
        float32 ``[Q, depth]``: canonical scores of ``topk_indices`` (non-increasing along a row).
    judged_ranks
        Per query: candidate row → 1-based pessimistic rank, for every judged candidate
        (grade > 0, including grades below ``relevance_level``).
    judged_scores
        Per query: candidate row → canonical score, same keys as ``judged_ranks``.
    n_ties
        int64 ``[Q]``: number of *other* candidates whose score equals exactly the score of the
        query's best-ranked relevant candidate (0 when the query has no relevant candidate).
    backend
        ``"torch"`` or ``"faiss"`` (``"auto"`` resolved).
    device
        Device the fast kernel ran on, e.g. ``"cpu"`` or ``"cuda:0"``.
    """

    topk_indices: np.ndarray
    topk_scores: np.ndarray
    judged_ranks: list[dict[int, int]]
    judged_scores: list[dict[int, float]]
    n_ties: np.ndarray
    backend: str
    device: str

    @property
    def depth(self) -> int:
        """Length of the top lists (requested depth clipped to the number of candidates)."""
        return int(self.topk_indices.shape[1])


# --------------------------------------------------------------------------------------------
# canonical scores and the error bound
# --------------------------------------------------------------------------------------------


def canonical_scores(
    queries: "torch.Tensor", candidates: "torch.Tensor", qi: np.ndarray, ci: np.ndarray
) -> np.ndarray:
    """Canonical float32 scores of the pairs ``(queries[qi[p]], candidates[ci[p]])``.

    The canonical score of a pair is defined by a fixed sequence of IEEE-754 float32 operations:
    the ``D`` products ``q_d * c_d``, then a pairwise-halving tree (:func:`_tree_sum`) that adds
    column ``w - h + j`` into column ``j`` (``h = w // 2``) until one column is left. Every step is
    one correctly rounded elementwise operation, so the value depends only on the two vectors —
    not on batch shape, chunking, memory alignment, thread count, backend, device (CPU or CUDA)
    or machine. This is the only score :func:`exact_search` reports or compares.

    ``queries`` / ``candidates`` are float32 tensors ``[*, D]`` on one device (CPU or CUDA);
    ``qi`` / ``ci`` int64 arrays. Returns a float32 numpy array.
    """
    import torch

    qi = np.asarray(qi, dtype=np.int64).reshape(-1)
    ci = np.asarray(ci, dtype=np.int64).reshape(-1)
    n = qi.shape[0]
    out = np.empty(n, dtype=np.float32)
    if n == 0:
        return out
    dev = candidates.device
    block = max(1, min(n, _block_elements(dev) // max(1, int(candidates.shape[1]))))
    qi_t = torch.from_numpy(qi).to(dev)
    ci_t = torch.from_numpy(ci).to(dev)
    for s in range(0, n, block):
        e = min(n, s + block)
        prod = candidates.index_select(0, ci_t[s:e])
        prod.mul_(queries.index_select(0, qi_t[s:e]))
        out[s:e] = _tree_sum(prod).cpu().numpy()
    return out


def _block_elements(dev: "torch.device") -> int:
    """Products materialised per canonical-score block: cache-sized on the CPU, large on a GPU."""
    return 1 << 19 if dev.type == "cpu" else 1 << 26


def _tree_sum(prod: "torch.Tensor") -> "torch.Tensor":
    """Row sums of a ``[rows, D]`` float32 tensor by a fixed pairwise-halving tree (in place).

    With ``w`` live columns and ``h = w // 2``: ``x[:, :h] += x[:, w-h:w]``, then ``w -= h`` (an odd
    middle column is carried). Each step is an elementwise IEEE add, so every row's result is a
    fixed function of that row alone, identical on every device.
    """
    w = int(prod.shape[1])
    if w == 0:
        return prod.new_zeros(prod.shape[0])
    while w > 1:
        h = w // 2
        prod[:, :h].add_(prod[:, w - h : w])
        w -= h
    return prod[:, 0]


def _canonical_grid(queries: "torch.Tensor", candidates: "torch.Tensor", qrows: np.ndarray, cidx: np.ndarray) -> np.ndarray:
    """Canonical scores of ``(queries[qrows[i]], candidates[cidx[i, j]])`` as a ``[r, m]`` array.

    Same values as :func:`canonical_scores` on the flattened pairs (the same IEEE products,
    broadcast instead of gathered, and the same :func:`_tree_sum`), only faster for top lists.
    """
    import torch

    r, m = cidx.shape
    out = np.empty((r, m), dtype=np.float32)
    if r == 0 or m == 0:
        return out
    dev = candidates.device
    d = int(candidates.shape[1])
    rows_per_block = max(1, _block_elements(dev) // max(1, d * m))
    cidx_t = torch.from_numpy(np.ascontiguousarray(cidx, dtype=np.int64)).to(dev)
    qrows_t = torch.from_numpy(np.asarray(qrows, dtype=np.int64)).to(dev)
    for s in range(0, r, rows_per_block):
        e = min(r, s + rows_per_block)
        prod = candidates.index_select(0, cidx_t[s:e].reshape(-1)).view(e - s, m, d)
        prod.mul_(queries.index_select(0, qrows_t[s:e])[:, None, :])
        out[s:e] = _tree_sum(prod.view((e - s) * m, d)).cpu().numpy().reshape(e - s, m)
    return out


def score_bound(dim: int, query_norms: np.ndarray, max_candidate_norm: float, input_rounding: float = 0.0) -> np.ndarray:
    """Per-query bound ``B_q`` on ``|fast score - canonical score|`` for any candidate.

    ``2 * gamma_D * |q| * max|c|`` covers the float32 rounding of both the fast kernel and the
    canonical reduction in any summation order (``|sum q_i c_i|`` error is at most
    ``gamma_D * sum |q_i c_i| <= gamma_D |q| |c|``); ``2 * input_rounding`` covers kernels that
    round their inputs (TF32: 2**-11, bf16: 2**-8); the absolute term covers flushed subnormal
    products. Norms are inflated by 0.1 % to absorb their own rounding.
    """
    d = max(1, int(dim))
    if d * _U32 >= 0.5:
        raise SearchError(f"embedding dimension {d} is too large for float32 exact search; reduce it below 8,000,000")
    gamma = d * _U32 / (1.0 - d * _U32)
    coef = (2.0 * gamma + 2.0 * float(input_rounding) + 4.0 * _U32) * 1.001
    qn = np.asarray(query_norms, dtype=np.float64) * 1.001
    return coef * qn * (float(max_candidate_norm) * 1.001) + 4.0 * d * 2.0**-126


def _f32_down(x: np.ndarray) -> np.ndarray:
    """Largest float32 values ``<= x`` (float64 input), so that thresholds stay conservative."""
    y = np.asarray(x, dtype=np.float64).astype(np.float32)
    return np.where(y.astype(np.float64) > x, np.nextafter(y, np.float32(-np.inf)), y).astype(np.float32)


def _f32_up(x: np.ndarray) -> np.ndarray:
    """Smallest float32 values ``>= x`` (float64 input)."""
    y = np.asarray(x, dtype=np.float64).astype(np.float32)
    return np.where(y.astype(np.float64) < x, np.nextafter(y, np.float32(np.inf)), y).astype(np.float32)


def _input_rounding(torch: Any, device: "torch.device") -> float:
    """Unit roundoff of the inputs of a float32 matmul under the current PyTorch settings.

    0 for true float32 ("highest" precision); 2**-7 (covers TF32 and bf16 passes) otherwise.
    """
    reduced = False
    try:
        reduced = torch.get_float32_matmul_precision() != "highest"
    except Exception:  # pragma: no cover - API drift
        pass
    try:
        if device.type == "cuda":
            mm = torch.backends.cuda.matmul
            reduced = reduced or bool(getattr(mm, "allow_tf32", False))
            reduced = reduced or getattr(mm, "fp32_precision", "ieee") not in ("ieee", "none")
        else:
            mk = getattr(torch.backends.mkldnn, "matmul", None)
            if mk is not None:
                reduced = reduced or getattr(mk, "fp32_precision", "ieee") not in ("ieee", "none")
    except Exception:  # pragma: no cover - API drift
        pass
    return 2.0**-7 if reduced else 0.0


# --------------------------------------------------------------------------------------------
# input validation
# --------------------------------------------------------------------------------------------


def _check_matrix(x: Any, name: str) -> np.ndarray:
    if not isinstance(x, np.ndarray):
        raise SearchError(
            f"{name} must be a numpy float32 array [rows, dim], got {type(x).__name__}; "
            "convert torch tensors with .detach().cpu().numpy()"
        )
    if x.ndim != 2:
        raise SearchError(f"{name} must be 2-D [rows, dim], got shape {x.shape}; reshape it to [rows, dim]")
    if x.dtype != np.float32:
        raise SearchError(f"{name} must be float32, got {x.dtype}; convert it with .astype(np.float32)")
    return np.ascontiguousarray(x)


def _norms(t: "torch.Tensor", name: str) -> np.ndarray:
    """Row L2 norms in float64; raises on NaN / inf / values too large for float32 scores."""
    import torch

    if t.shape[0] == 0:
        return np.zeros(0, dtype=np.float64)
    n = torch.linalg.vector_norm(t, dim=1).cpu().numpy().astype(np.float64)
    if not np.isfinite(n).all():
        bad = int(np.flatnonzero(~np.isfinite(n))[0])
        row = t[bad].cpu().numpy()
        if np.isnan(row).any() or np.isinf(row).any():
            what = "NaN" if np.isnan(row).any() else "inf"
            raise SearchError(f"{name} row {bad} contains {what}; fix or drop the embeddings (check the encoder output)")
        raise SearchError(f"{name} row {bad} has a norm too large for float32 scores; L2-normalise the embeddings")
    return n


def _int_array(values: list[Any], what: str) -> np.ndarray:
    """``values`` as int64, refusing floats, strings and other non-integers."""
    if not values:
        return np.zeros(0, dtype=np.int64)
    arr = np.asarray(values)
    if arr.ndim != 1 or arr.dtype.kind not in "iub":
        raise SearchError(f"judged must map integer candidate rows to integer grades; found non-integer {what}")
    return arr.astype(np.int64)


def _flatten_judged(judged: Sequence[Mapping[int, int]], n_queries: int, n_candidates: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """CSR form of ``judged``: ``(ptr [Q+1], rows [P], grades [P])``, rows sorted within a query.

    Entries with grade 0 are dropped (they are equivalent to unjudged candidates).
    """
    if isinstance(judged, (str, bytes)) or not hasattr(judged, "__len__"):
        raise SearchError("judged must be a sequence with one {candidate_row: grade} mapping per query")
    if len(judged) != n_queries:
        raise SearchError(
            f"judged has {len(judged)} entries but there are {n_queries} queries; pass one "
            "{candidate_row: grade} mapping per query (an empty dict for unjudged queries)"
        )
    counts = np.zeros(n_queries, dtype=np.int64)
    keys: list[Any] = []
    vals: list[Any] = []
    for q, m in enumerate(judged):
        if type(m) is not dict and not isinstance(m, Mapping):  # fast path for plain dicts
            raise SearchError(f"judged[{q}] must be a mapping candidate_row -> grade, got {type(m).__name__}")
        counts[q] = len(m)
        keys.extend(m.keys())
        vals.extend(m.values())
    rows = _int_array(keys, "candidate rows")
    grades = _int_array(vals, "grades")
    qidx = np.repeat(np.arange(n_queries, dtype=np.int64), counts)
    bad = np.flatnonzero((rows < 0) | (rows >= n_candidates))
    if bad.size:
        raise SearchError(
            f"judged[{int(qidx[bad[0]])}] refers to candidate row {int(rows[bad[0]])}, outside 0..{n_candidates - 1}; "
            "map candidate ids to row indices of the candidate matrix"
        )
    bad = np.flatnonzero(grades < 0)
    if bad.size:
        raise SearchError(
            f"judged[{int(qidx[bad[0]])}] has a negative grade {int(grades[bad[0]])}; qrels grades must be >= 0"
        )
    keep = grades > 0
    rows, grades, qidx = rows[keep], grades[keep], qidx[keep]
    order = np.lexsort((rows, qidx))
    rows, grades, qidx = rows[order], grades[order], qidx[order]
    ptr = np.zeros(n_queries + 1, dtype=np.int64)
    np.cumsum(np.bincount(qidx, minlength=n_queries), out=ptr[1:])
    return ptr, rows, grades


def _resolve_backend(backend: str, device: str | None) -> tuple[str, str]:
    """Return ``(backend, device)`` with ``"auto"`` and the default device resolved."""
    if backend not in BACKENDS:
        raise UnknownNameError(
            f"unknown search backend {backend!r}{did_you_mean(str(backend), BACKENDS)}; choose one of: {', '.join(BACKENDS)}"
        )
    import torch

    if device is not None:
        try:
            dev = torch.device(device)
        except (RuntimeError, TypeError) as exc:
            raise SearchError(f"invalid device {device!r} ({exc}); pass e.g. 'cpu' or 'cuda:0'") from None
        if backend == "faiss" and dev.type != "cpu":
            raise SearchError(
                f"the faiss backend runs on the CPU only, got device={device!r}; "
                "use backend='torch' for GPU search or pass device='cpu'"
            )
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise SearchError(f"device {device!r} requested but CUDA is not available; pass device='cpu'")
    if backend == "auto":
        if (device is None and torch.cuda.is_available()) or (device is not None and torch.device(device).type != "cpu"):
            backend = "torch"
        else:
            try:
                import faiss  # noqa: F401

                backend = "faiss"
            except ImportError:
                backend = "torch"
    if backend == "faiss":
        try:
            import faiss  # noqa: F401
        except ImportError:
            raise SearchError("backend 'faiss' needs the faiss-cpu package; pip install faiss-cpu or use backend='torch'") from None
        return "faiss", "cpu"
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    return "torch", str(dev)


# --------------------------------------------------------------------------------------------
# the shared exact finaliser
# --------------------------------------------------------------------------------------------


@dataclass
class _Ctx:
    """Everything the finaliser needs about the whole search, plus its output arrays."""

    qt: "torch.Tensor"  # CPU float32 [Q, D] (shares memory with the numpy input)
    ct: "torch.Tensor"  # CPU float32 [N, D]
    sq: "torch.Tensor"  # queries on the scoring device (canonical scores are device-independent)
    sc: "torch.Tensor"  # candidates on the scoring device
    n: int
    depth: int
    kp: int  # length of the fast top list (depth + margin, <= n)
    bound: np.ndarray  # float64 [Q]
    ptr: np.ndarray  # int64 [Q+1]
    rows: np.ndarray  # int64 [P]
    grades: np.ndarray  # int64 [P]
    keys: np.ndarray  # int64 [P]: q * n + row (sorted)
    relevance_level: int
    scan_rows: int  # rows per fast-score scan batch
    # outputs
    topk_idx: np.ndarray
    topk_scores: np.ndarray
    pair_rank: np.ndarray  # int64 [P]
    pair_score: np.ndarray  # float32 [P]
    n_ties: np.ndarray  # int64 [Q]

    def grade_of(self, q: np.ndarray, c: np.ndarray) -> np.ndarray:
        """Grades of candidates ``c`` for (global) queries ``q`` (broadcast), 0 when unjudged."""
        if self.keys.shape[0] == 0:
            return np.zeros(np.broadcast(q, c).shape, dtype=np.int64)
        key = np.asarray(q, dtype=np.int64) * self.n + np.asarray(c, dtype=np.int64)
        pos = np.searchsorted(self.keys, key)
        pos = np.minimum(pos, self.keys.shape[0] - 1)
        return np.where(self.keys[pos] == key, self.grades[pos], 0)

    def canon(self, q: np.ndarray, c: np.ndarray) -> np.ndarray:
        return canonical_scores(self.sq, self.sc, q, c)


def _segment_sum(values: np.ndarray, seg: np.ndarray, n_seg: int) -> np.ndarray:
    return np.bincount(seg, weights=values.astype(np.float64), minlength=n_seg).astype(np.int64)


class _Rows:
    """Counting and extraction over full fast-score rows (numpy on the CPU, torch on a GPU).

    Thresholds are float32 values rounded conservatively by the caller, so every comparison is
    exact in float32.
    """

    def __init__(self, rows: "torch.Tensor", row_map: np.ndarray) -> None:
        self.t = rows  # fast scores; row ``row_map[i]`` holds the i-th requested row
        self.row_map = np.asarray(row_map, dtype=np.int64)
        self.np = rows.numpy() if rows.device.type == "cpu" else None

    def at_least(self, i: int, thr: np.float32) -> np.ndarray:
        """Columns of row ``i`` with fast score ``>= thr``."""
        i = int(self.row_map[i])
        if self.np is not None:
            return np.flatnonzero(self.np[i] >= thr).astype(np.int64)
        import torch

        t = torch.tensor(float(thr), dtype=torch.float32, device=self.t.device)
        return torch.nonzero(self.t[i] >= t, as_tuple=False)[:, 0].cpu().numpy().astype(np.int64)

    def window(
        self, pos: np.ndarray, lo: np.ndarray, hi: np.ndarray
    ) -> tuple[np.ndarray, list[tuple[int, int, np.ndarray, np.ndarray]]]:
        """For rows ``pos``: counts of fast scores ``> hi`` and the ambiguous ``[lo, hi]`` entries.

        Returns ``(above [len(pos)], groups)``; each group ``(g0, g1, row, col)`` lists the
        ambiguous entries of rows ``pos[g0:g1]`` (``row`` relative to ``g0``), in groups of at most
        ``_MAX_PAIRS_PER_BLOCK`` entries (a single row may exceed it).
        """
        pos = self.row_map[pos]
        if self.np is not None:
            f = self.np if pos.size == self.np.shape[0] and (pos == np.arange(pos.size)).all() else self.np[pos]
            gtm = f > hi[:, None]
            above = np.count_nonzero(gtm, axis=1).astype(np.int64)
            amb = f >= lo[:, None]
            np.logical_xor(amb, gtm, out=amb)  # hi >= lo, so "> hi" is a subset of ">= lo"
            del gtm
            cnt = np.count_nonzero(amb, axis=1)

            def nz(g0: int, g1: int) -> tuple[np.ndarray, np.ndarray]:
                r, c = np.nonzero(amb[g0:g1])
                return r.astype(np.int64), c.astype(np.int64)

        else:
            import torch

            dev = self.t.device
            pos_t = torch.from_numpy(pos).to(dev)
            f_t = self.t.index_select(0, pos_t)
            gtm_t = f_t > torch.from_numpy(hi).to(dev)[:, None]
            above = gtm_t.sum(dim=1).cpu().numpy().astype(np.int64)
            amb_t = (f_t >= torch.from_numpy(lo).to(dev)[:, None]) & ~gtm_t
            del gtm_t, f_t
            cnt = amb_t.sum(dim=1).cpu().numpy()

            def nz(g0: int, g1: int) -> tuple[np.ndarray, np.ndarray]:
                idx = torch.nonzero(amb_t[g0:g1], as_tuple=False).cpu().numpy().astype(np.int64)
                return idx[:, 0], idx[:, 1]

        groups = []
        csum = np.cumsum(cnt)
        g0 = 0
        while g0 < pos.size:
            base = int(csum[g0 - 1]) if g0 else 0
            g1 = max(g0 + 1, int(np.searchsorted(csum, base + _MAX_PAIRS_PER_BLOCK, side="right")))
            r, c = nz(g0, g1)
            groups.append((g0, g1, r, c))
            g0 = g1
        return above, groups


def _top_from_pool(ctx: _Ctx, q: int, cand: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Top-``depth`` of one query from an explicit pool of candidate rows (pessimistic order)."""
    sc = ctx.canon(np.full(cand.shape[0], q, dtype=np.int64), cand)
    gr = ctx.grade_of(q, cand)
    order = np.lexsort((cand, gr, -sc.astype(np.float64)))[: ctx.depth]
    return cand[order], sc[order]


def _finalise_chunk(
    ctx: _Ctx,
    q0: int,
    lf: np.ndarray,
    li: np.ndarray,
    fast_rows: Callable[[np.ndarray], tuple["torch.Tensor", np.ndarray]],
    scan_rows: int | None = None,
) -> None:
    """Exact results for queries ``q0 .. q0+len(lf)`` from their fast top lists.

    ``lf`` / ``li``: float32 / int64 ``[c, kp]`` fast scores and candidate rows, sorted by fast
    score descending, such that every candidate not in a row's list has a fast score ``<=`` the
    row's last value. ``fast_rows(local_rows)`` returns ``(tensor, row_map)``: full fast score
    rows ``[*, N]`` (a torch tensor on any device) where ``tensor[row_map[i]]`` is the row of
    ``local_rows[i]``, for an exact scan.
    """
    c, kp = lf.shape
    n, depth = ctx.n, ctx.depth
    qs = np.arange(q0, q0 + c, dtype=np.int64)
    bnd = ctx.bound[q0 : q0 + c]
    lf64 = lf.astype(np.float64)
    full = kp >= n
    floor = np.full(c, -np.inf) if full else lf64[:, -1]
    pool_thr = lf64[:, depth - 1] - 2.0 * bnd
    pool_ok = np.ones(c, dtype=bool) if full else floor < pool_thr
    pool_mask = (lf64 >= pool_thr[:, None]) & pool_ok[:, None]

    # judged pairs of the chunk
    p0, p1 = int(ctx.ptr[q0]), int(ctx.ptr[q0 + c])
    counts = np.diff(ctx.ptr[q0 : q0 + c + 1])
    jq = np.repeat(np.arange(c, dtype=np.int64), counts)  # local query of each pair
    jr = ctx.rows[p0:p1]
    jg = ctx.grades[p0:p1]
    npairs = p1 - p0
    js = ctx.canon(q0 + jq, jr)
    js64 = js.astype(np.float64)
    lo = js64 - bnd[jq]
    hi = js64 + bnd[jq]
    pair_ok = np.ones(npairs, dtype=bool) if full else lo > floor[jq]
    gt = np.zeros(npairs, dtype=np.int64)  # candidates with canonical score > s
    eq = np.zeros(npairs, dtype=np.int64)  # candidates with canonical score == s (incl. itself)

    # --- pairs whose ambiguity window lies inside the list: counts from the list -------------
    okp = np.flatnonzero(pair_ok)
    need = pool_mask.copy()
    if okp.size:
        lrows = lf64[jq[okp]]
        higher = lrows > hi[okp, None]
        above = higher.sum(axis=1)
        amb = (lrows >= lo[okp, None]) & ~higher
        np.logical_or.at(need, jq[okp], amb)
    # canonical scores: the pool is a prefix of each list (rectangular, broadcast), the rest of
    # the needed entries (ambiguity windows further down) pair by pair
    cv = np.full((c, kp), np.nan, dtype=np.float32)
    rows_ok = np.flatnonzero(pool_ok)
    m = int(pool_mask.sum(axis=1).max()) if rows_ok.size else 0
    if m:
        cv[rows_ok, :m] = _canonical_grid(ctx.sq, ctx.sc, q0 + rows_ok, li[rows_ok, :m])
        need[rows_ok, :m] = False
    rr, cc = np.nonzero(need)
    cv[rr, cc] = ctx.canon(q0 + rr, li[rr, cc])
    if okp.size:
        cvp = cv[jq[okp]]
        sp = js[okp, None]
        gt[okp] = above + (amb & (cvp > sp)).sum(axis=1)
        eq[okp] = (amb & (cvp == sp)).sum(axis=1)

    # --- top lists of rows whose pool lies inside the list ------------------------------------
    if rows_ok.size:
        li_ok = li[rows_ok]
        pm = pool_mask[rows_ok]
        g_ok = ctx.grade_of(qs[rows_ok, None], li_ok)
        negs = np.where(pm, -cv[rows_ok].astype(np.float64), 0.0)
        order = np.lexsort((li_ok, g_ok, negs, ~pm), axis=-1)[:, :depth]
        ctx.topk_idx[q0 + rows_ok] = np.take_along_axis(li_ok, order, axis=1)
        ctx.topk_scores[q0 + rows_ok] = np.take_along_axis(cv[rows_ok], order, axis=1)

    # --- exact row scans (pool touching the list boundary, judged below the list) -------------
    bad_pairs = np.flatnonzero(~pair_ok)
    scan = np.unique(np.concatenate([np.flatnonzero(~pool_ok), jq[bad_pairs]]))
    step = max(1, scan_rows if scan_rows is not None else ctx.scan_rows)
    for s in range(0, scan.size, step):
        sub = scan[s : s + step]
        rows = _Rows(*fast_rows(sub))  # fast scores of the rows ``sub``
        pos_of = {int(r): i for i, r in enumerate(sub)}
        # pools: every candidate whose fast score reaches the pool threshold
        for r in sub[~pool_ok[sub]]:
            cand = rows.at_least(pos_of[int(r)], _f32_down(pool_thr[r : r + 1])[0])
            top_i, top_s = _top_from_pool(ctx, int(q0 + r), cand)
            ctx.topk_idx[q0 + r] = top_i
            ctx.topk_scores[q0 + r] = top_s
        # judged pairs, one "slot" (k-th bad pair of a row) at a time so rows are unique
        sel = bad_pairs[np.isin(jq[bad_pairs], sub)]
        if sel.size == 0:
            continue
        first = np.r_[True, jq[sel][1:] != jq[sel][:-1]]
        run_start = np.maximum.accumulate(np.where(first, np.arange(sel.size), 0))
        slot = np.arange(sel.size) - run_start
        for t in range(int(slot.max()) + 1):
            pt = sel[slot == t]
            pos = np.array([pos_of[int(r)] for r in jq[pt]], dtype=np.int64)
            above, amb_groups = rows.window(pos, _f32_down(lo[pt]), _f32_up(hi[pt]))
            gt[pt] = above
            for g0, g1, rr_, cc_ in amb_groups:
                which = pt[g0:g1][rr_]
                sc = ctx.canon(q0 + jq[which], cc_)
                s_ref = js[which]
                gt[pt[g0:g1]] += _segment_sum(sc > s_ref, rr_, g1 - g0)
                eq[pt[g0:g1]] = _segment_sum(sc == s_ref, rr_, g1 - g0)
        del rows

    # --- ranks: 1 + higher + unjudged ties + judged ties that precede (lower grade, lower row) -
    if npairs:
        order = np.lexsort((jr, jg, js64, jq))
        oq, os_ = jq[order], js64[order]
        new_grp = np.r_[True, (oq[1:] != oq[:-1]) | (os_[1:] != os_[:-1])]
        grp_start = np.maximum.accumulate(np.where(new_grp, np.arange(npairs), 0))
        grp_id = np.cumsum(new_grp) - 1
        grp_size = np.bincount(grp_id)[grp_id]
        before = np.empty(npairs, dtype=np.int64)
        n_judged_eq = np.empty(npairs, dtype=np.int64)
        before[order] = np.arange(npairs) - grp_start
        n_judged_eq[order] = grp_size
        rank = 1 + gt + (eq - n_judged_eq) + before
        ctx.pair_rank[p0:p1] = rank
        ctx.pair_score[p0:p1] = js
        # ties of the best-ranked relevant candidate
        rel = np.flatnonzero(jg >= ctx.relevance_level)
        if rel.size:
            o = np.lexsort((rank[rel], jq[rel]))
            rel = rel[o]
            firsts = rel[np.r_[True, jq[rel][1:] != jq[rel][:-1]]]
            ctx.n_ties[q0 + jq[firsts]] = eq[firsts] - 1


# --------------------------------------------------------------------------------------------
# public entry point
# --------------------------------------------------------------------------------------------


def exact_search(
    queries: np.ndarray,
    candidates: np.ndarray,
    judged: Sequence[Mapping[int, int]],
    *,
    depth: int = 100,
    relevance_level: int = 1,
    backend: str = "auto",
    device: str | None = None,
    max_chunk_bytes: int = 256 << 20,
    progress: Callable[[int], None] | None = None,
) -> RetrievalResult:
    """Exact inner-product search with pessimistic tie handling (see the module docstring).

    Parameters
    ----------
    queries, candidates
        float32 ``[Q, D]`` and ``[N, D]`` numpy arrays; scores are inner products (normalise the
        rows beforehand for cosine similarity). Must be finite.
    judged
        One mapping per query: candidate row → qrels grade. Grades must be ``>= 0``; grade-0
        entries are ignored (same as unjudged). Grades order exact ties (lower first) and select
        the relevant candidates (``grade >= relevance_level``) for ``n_ties``.
    depth
        Length of the top lists; clipped to ``N``.
    relevance_level
        Minimum grade of a relevant candidate (only used for ``n_ties``).
    backend
        ``"auto"``, ``"torch"`` or ``"faiss"``.
    device
        Device of the torch backend (default: CUDA if available, else CPU). The faiss backend
        runs on the CPU.
    max_chunk_bytes
        Bound on the fast score matrix of one query chunk (``rows * N * 4`` bytes; at least one
        row is always processed).
    progress
        Called with the number of queries finished after each chunk.

    Raises
    ------
    SearchError
        On bad shapes, dtypes, NaN/inf, judged rows out of range, negative grades, bad options.
    UnknownNameError
        On an unknown backend.
    """
    qn_arr = _check_matrix(queries, "queries")
    cn_arr = _check_matrix(candidates, "candidates")
    if qn_arr.shape[1] != cn_arr.shape[1]:
        raise SearchError(
            f"queries have dimension {qn_arr.shape[1]} but candidates have {cn_arr.shape[1]}; "
            "encode both sides with the same model (or project them to the same dimension)"
        )
    n_q, dim = qn_arr.shape
    n_c = cn_arr.shape[0]
    if n_c == 0:
        raise SearchError("the candidate matrix is empty; a task needs at least one candidate")
    if isinstance(depth, bool) or not isinstance(depth, (int, np.integer)) or depth < 1:
        raise SearchError(f"depth must be a positive integer, got {depth!r}")
    if isinstance(relevance_level, bool) or not isinstance(relevance_level, (int, np.integer)) or relevance_level < 1:
        raise SearchError(f"relevance_level must be an integer >= 1, got {relevance_level!r}")
    if not isinstance(max_chunk_bytes, (int, np.integer)) or max_chunk_bytes < 1:
        raise SearchError(f"max_chunk_bytes must be a positive integer, got {max_chunk_bytes!r}")
    backend, dev_str = _resolve_backend(backend, device)
    ptr, rows, grades = _flatten_judged(judged, n_q, n_c)

    import torch

    dev = torch.device(dev_str)
    qt = torch.from_numpy(qn_arr)
    ct = torch.from_numpy(cn_arr)
    # the torch backend scores on its device (canonical scores are device-independent)
    sq = qt.to(dev) if backend == "torch" else qt
    sc = ct.to(dev) if backend == "torch" else ct
    q_norm = _norms(sq, "queries")
    c_norm = _norms(sc, "candidates")
    c_max = float(c_norm.max()) if c_norm.size else 0.0
    if n_q and float(q_norm.max()) * c_max > 1e36:
        raise SearchError("embedding norms are too large for float32 scores; L2-normalise queries and candidates")
    depth = int(min(int(depth), n_c))
    kp = int(min(n_c, depth + max(32, depth // 4)))
    chunk_rows = int(max(1, min(max(n_q, 1), int(max_chunk_bytes) // (4 * n_c))))
    in_round = _input_rounding(torch, dev) if backend == "torch" else 0.0
    ctx = _Ctx(
        qt=qt,
        ct=ct,
        sq=sq,
        sc=sc,
        n=n_c,
        depth=depth,
        kp=kp,
        bound=score_bound(dim, q_norm, c_max, in_round),
        ptr=ptr,
        rows=rows,
        grades=grades,
        keys=np.repeat(np.arange(n_q, dtype=np.int64), np.diff(ptr)) * n_c + rows,
        relevance_level=int(relevance_level),
        scan_rows=chunk_rows,
        topk_idx=np.zeros((n_q, depth), dtype=np.int64),
        topk_scores=np.zeros((n_q, depth), dtype=np.float32),
        pair_rank=np.zeros(rows.shape[0], dtype=np.int64),
        pair_score=np.zeros(rows.shape[0], dtype=np.float32),
        n_ties=np.zeros(n_q, dtype=np.int64),
    )

    if n_q:
        if backend == "torch":
            _run_torch(ctx, dev, chunk_rows, progress)
        else:
            _run_faiss(ctx, chunk_rows, progress)

    judged_ranks: list[dict[int, int]] = []
    judged_scores: list[dict[int, float]] = []
    rows_l = rows.tolist()
    rank_l = ctx.pair_rank.tolist()
    score_l = ctx.pair_score.astype(np.float64).tolist()
    for q in range(n_q):
        a, b = int(ptr[q]), int(ptr[q + 1])
        judged_ranks.append(dict(zip(rows_l[a:b], rank_l[a:b])))
        judged_scores.append(dict(zip(rows_l[a:b], score_l[a:b])))
    return RetrievalResult(
        topk_indices=ctx.topk_idx,
        topk_scores=ctx.topk_scores,
        judged_ranks=judged_ranks,
        judged_scores=judged_scores,
        n_ties=ctx.n_ties,
        backend=backend,
        device=dev_str,
    )


def _run_torch(ctx: _Ctx, dev: "torch.device", chunk_rows: int, progress: Callable[[int], None] | None) -> None:
    import torch

    n_q = ctx.qt.shape[0]
    on_cpu = dev.type == "cpu"
    c_dev = ctx.sc
    q_dev = ctx.sq
    # one reused output buffer on the CPU avoids page-faulting a fresh matrix for every chunk
    buf = torch.empty((min(chunk_rows, n_q), ctx.n), dtype=torch.float32) if on_cpu else None
    with torch.inference_mode():
        for q0 in range(0, n_q, chunk_rows):
            q1 = min(n_q, q0 + chunk_rows)
            if on_cpu:
                s_mat = torch.mm(q_dev[q0:q1], c_dev.T, out=buf[: q1 - q0])
            else:
                s_mat = q_dev[q0:q1] @ c_dev.T
            vals, idx = torch.topk(s_mat, ctx.kp, dim=1, largest=True, sorted=True)
            lf = vals.cpu().numpy()
            li = idx.cpu().numpy().astype(np.int64, copy=False)

            def fast_rows(local: np.ndarray, s_mat: "torch.Tensor" = s_mat) -> tuple["torch.Tensor", np.ndarray]:
                return s_mat, local  # the chunk's own score rows: no copy

            _finalise_chunk(ctx, q0, lf, li, fast_rows, scan_rows=q1 - q0)
            del s_mat, vals, idx
            if progress is not None:
                progress(q1 - q0)


def _run_faiss(ctx: _Ctx, chunk_rows: int, progress: Callable[[int], None] | None) -> None:
    import faiss
    import torch

    n_q, dim = ctx.qt.shape
    c_np = ctx.ct.numpy()
    q_np = ctx.qt.numpy()
    knn = getattr(faiss, "knn", None)
    if knn is None:  # pragma: no cover - faiss < 1.7.3
        index = faiss.IndexFlatIP(int(dim))
        index.add(c_np)

        def search(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
            return index.search(x, k)

    else:
        # faiss.knn runs IndexFlatIP's exhaustive inner-product kernel on the arrays as they are,
        # without copying the candidates into an index first (same lists, bit for bit)
        def search(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
            return knn(x, c_np, k, metric=faiss.METRIC_INNER_PRODUCT)

    # FAISS tiles its own score matrix (4096 queries x 1024 candidates); our chunk only bounds the
    # result lists, so use FAISS's query block (fallback scans are still bounded by chunk_rows)
    faiss_rows = max(4096, chunk_rows)
    with torch.inference_mode():
        for q0 in range(0, n_q, faiss_rows):
            q1 = min(n_q, q0 + faiss_rows)
            lf, li = search(q_np[q0:q1], ctx.kp)
            li = li.astype(np.int64, copy=False)

            def fast_rows(local: np.ndarray, q0: int = q0) -> tuple["torch.Tensor", np.ndarray]:
                sel = torch.from_numpy(np.asarray(local, dtype=np.int64) + q0)
                return torch.mm(ctx.qt.index_select(0, sel), ctx.ct.T), np.arange(len(local))

            _finalise_chunk(ctx, q0, lf, li, fast_rows)
            if progress is not None:
                progress(q1 - q0)
