"""Exact search (both backends, chunking, pessimistic ties) and TREC run files."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mrbench.errors import MrbenchError, UnknownNameError
from mrbench.retrieval.runfile import RunFileError, read_trec_run, write_trec_run
from mrbench.retrieval.search import (
    RetrievalResult,
    SearchError,
    canonical_scores,
    exact_search,
    score_bound,
)

torch = pytest.importorskip("torch")

HAS_FAISS = importlib.util.find_spec("faiss") is not None
HAS_CUDA = torch.cuda.is_available()

BACKENDS = [
    pytest.param(("torch", "cpu"), id="torch-cpu"),
    # the reduced-precision fast filters (the GPU default is float16): results must not change
    pytest.param(("torch", "cpu", "float16"), id="torch-cpu-fp16"),
    pytest.param(("torch", "cpu", "bfloat16"), id="torch-cpu-bf16"),
    # the pool streamed in small blocks (as for pools larger than GPU memory)
    pytest.param(("torch", "cpu", "float32", "stream"), id="torch-cpu-stream"),
    pytest.param(("torch", "cpu", "float16", "stream"), id="torch-cpu-fp16-stream"),
    pytest.param(("faiss", None), id="faiss", marks=pytest.mark.skipif(not HAS_FAISS, reason="faiss not installed")),
    pytest.param(("torch", "cuda"), id="torch-cuda", marks=pytest.mark.skipif(not HAS_CUDA, reason="no CUDA")),
    pytest.param(("torch", "cuda", "float32"), id="torch-cuda-fp32", marks=pytest.mark.skipif(not HAS_CUDA, reason="no CUDA")),
    pytest.param(("torch", "cuda", "float16", "stream"), id="torch-cuda-stream", marks=pytest.mark.skipif(not HAS_CUDA, reason="no CUDA")),
]
ALL_RUNNERS = ([("torch", "cpu"), ("torch", "cpu", "float16"), ("torch", "cpu", "bfloat16"),
                ("torch", "cpu", "float32", "stream"), ("torch", "cpu", "float16", "stream")]
               + ([("faiss", None)] if HAS_FAISS else [])
               + ([("torch", "cuda"), ("torch", "cuda", "float32"), ("torch", "cuda", "float16", "stream")] if HAS_CUDA else []))


# ------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------


def naive_search(q: np.ndarray, c: np.ndarray, judged, depth: int, relevance_level: int = 1):
    """Reference: full python sort of every candidate by (-score, grade, row) on canonical scores."""
    qt, ct = torch.from_numpy(q), torch.from_numpy(c)
    n = c.shape[0]
    ranks, tops, ties, scores = [], [], [], []
    for i in range(q.shape[0]):
        s = canonical_scores(qt, ct, np.full(n, i), np.arange(n))
        grade = [judged[i].get(j, 0) for j in range(n)]
        order = sorted(range(n), key=lambda j: (-float(s[j]), grade[j], j))
        pos = {j: p + 1 for p, j in enumerate(order)}
        ranks.append({j: pos[j] for j, g in judged[i].items() if g > 0})
        scores.append({j: float(s[j]) for j, g in judged[i].items() if g > 0})
        tops.append(order[: min(depth, n)])
        rel = [j for j, g in judged[i].items() if g >= relevance_level]
        if rel:
            best = min(rel, key=lambda j: pos[j])
            # GUIDE §3 formula for the first relevant candidate
            nonrel_tied = sum(1 for j in range(n) if s[j] == s[best] and grade[j] < relevance_level)
            assert pos[best] == 1 + int((s > s[best]).sum()) + nonrel_tied
            ties.append(nonrel_tied)
        else:
            ties.append(0)
    return ranks, tops, ties, scores


def assert_same_result(a: RetrievalResult, b: RetrievalResult) -> None:
    assert a.topk_indices.dtype == np.int64 and a.topk_scores.dtype == np.float32
    np.testing.assert_array_equal(a.topk_indices, b.topk_indices)
    # bitwise equality of every score
    np.testing.assert_array_equal(a.topk_scores.view(np.int32), b.topk_scores.view(np.int32))
    assert a.judged_ranks == b.judged_ranks
    assert a.judged_scores == b.judged_scores
    np.testing.assert_array_equal(a.n_ties, b.n_ties)


def random_judged(rng: np.random.Generator, n_q: int, n: int, max_judged: int = 5):
    out = []
    for _ in range(n_q):
        m = int(rng.integers(0, min(n, max_judged) + 1))
        rows = rng.choice(n, size=m, replace=False)
        out.append({int(r): int(rng.integers(1, 4)) for r in rows})
    return out


def make_data(kind: str, rng: np.random.Generator, n_q: int, n: int, d: int):
    if kind == "random":
        c = rng.standard_normal((n, d)).astype(np.float32)
        q = rng.standard_normal((n_q, d)).astype(np.float32)
    elif kind == "unit":  # normalised, queries near candidates (relevant near the top)
        c = rng.standard_normal((n, d)).astype(np.float32)
        c /= np.linalg.norm(c, axis=1, keepdims=True)
        q = c[rng.integers(0, n, n_q)] + 0.2 * rng.standard_normal((n_q, d)).astype(np.float32)
        q /= np.linalg.norm(q, axis=1, keepdims=True)
    elif kind == "identical":  # constant encoder: every score ties
        c = np.repeat(rng.standard_normal((1, d)).astype(np.float32), n, axis=0)
        q = rng.standard_normal((n_q, d)).astype(np.float32)
    elif kind == "duplicated":  # a few distinct rows, each repeated many times
        base = rng.standard_normal((4, d)).astype(np.float32)
        c = base[rng.integers(0, 4, n)]
        q = rng.standard_normal((n_q, d)).astype(np.float32)
    elif kind == "quantised":  # exact small dot products: ties everywhere
        c = (rng.integers(-2, 3, (n, d)) / 4).astype(np.float32)
        q = (rng.integers(-2, 3, (n_q, d)) / 4).astype(np.float32)
    elif kind == "zero":  # zero queries: every score is exactly 0
        c = rng.standard_normal((n, d)).astype(np.float32)
        q = np.zeros((n_q, d), dtype=np.float32)
    else:  # pragma: no cover
        raise ValueError(kind)
    return np.ascontiguousarray(q), np.ascontiguousarray(c)


def run(runner, q, c, judged, **kw) -> RetrievalResult:
    backend, device, *fast = runner
    if fast:
        kw["fast_dtype"] = fast[0]
    if len(fast) > 1 and fast[1] == "stream":
        kw.update(stream=True, stream_block_rows=97)
    return exact_search(q, c, judged, backend=backend, device=device, **kw)


KINDS = ["random", "unit", "identical", "duplicated", "quantised", "zero"]


# ------------------------------------------------------------------------------------------------
# correctness against the naive reference
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("runner", BACKENDS)
@pytest.mark.parametrize("kind", KINDS)
def test_matches_naive_reference_small(runner, kind):
    rng = np.random.default_rng(100 + KINDS.index(kind))
    for trial in range(12):
        n_q, n, d = int(rng.integers(1, 6)), int(rng.integers(1, 70)), int(rng.integers(1, 9))
        q, c = make_data(kind, rng, n_q, n, d)
        judged = random_judged(rng, n_q, n)
        depth = int(rng.integers(1, 80))
        rl = int(rng.integers(1, 3))
        ref_ranks, ref_tops, ref_ties, ref_scores = naive_search(q, c, judged, depth, rl)
        res = run(runner, q, c, judged, depth=depth, relevance_level=rl)
        assert res.judged_ranks == ref_ranks, (kind, trial)
        assert res.judged_scores == ref_scores
        assert res.topk_indices.tolist() == ref_tops
        assert res.n_ties.tolist() == ref_ties


@pytest.mark.parametrize("sort_pairs", [0, 1 << 30], ids=["sorted-blocks", "pair-comparisons"])
@pytest.mark.parametrize("kind", KINDS)
def test_streamed_dense_rows_count_by_sorting_or_comparing_alike(kind, sort_pairs, monkeypatch):
    """Queries with many judged candidates take the whole-row route; streamed, their judged counts
    come from sorted blocks and binary searches (many judged per query) or from comparing every pair
    with the block (few): both give the naive reference's ranks, ties and top lists exactly."""
    import mrbench.retrieval.search as S

    monkeypatch.setattr(S, "_STREAM_SORT_PAIRS", sort_pairs)
    rng = np.random.default_rng(300 + KINDS.index(kind))
    for trial in range(4):
        n_q, n, d = int(rng.integers(1, 9)), int(rng.integers(40, 400)), int(rng.integers(1, 12))
        q, c = make_data(kind, rng, n_q, n, d)
        judged = random_judged(rng, n_q, n, max_judged=n // 3)
        depth = int(rng.integers(1, 60))
        ref_ranks, ref_tops, ref_ties, ref_scores = naive_search(q, c, judged, depth)
        res = exact_search(q, c, judged, depth=depth, backend="torch", device="cpu", stream=True,
                           stream_block_rows=int(rng.integers(depth, depth + 120)))
        assert res.judged_ranks == ref_ranks, (kind, trial)
        assert res.judged_scores == ref_scores
        assert res.topk_indices.tolist() == ref_tops
        assert res.n_ties.tolist() == ref_ties


@pytest.mark.parametrize("runner", BACKENDS)
@pytest.mark.parametrize("kind", ["random", "unit", "duplicated", "quantised"])
def test_matches_naive_reference_beyond_top_list(runner, kind):
    """N well above depth + margin: judged candidates below the list and boundary ties."""
    rng = np.random.default_rng(7 + len(kind))
    n_q, n, d = 6, 1500, 16
    q, c = make_data(kind, rng, n_q, n, d)
    judged = random_judged(rng, n_q, n, max_judged=6)
    depth = 10
    ref_ranks, ref_tops, ref_ties, _ = naive_search(q, c, judged, depth)
    res = run(runner, q, c, judged, depth=depth)
    assert res.judged_ranks == ref_ranks
    assert res.topk_indices.tolist() == ref_tops
    assert res.n_ties.tolist() == ref_ties


@pytest.mark.skipif(not HAS_FAISS, reason="faiss not installed")
@pytest.mark.parametrize("kind", KINDS)
def test_faiss_tiled_counts_match_naive_reference(kind, monkeypatch):
    """The faiss backend counts few judged candidates below its lists tile by tile
    (_counts_by_tiles): with tiny tiles and passes (many of both, windows crossing tiles, huge
    windows turning queries dense) the results equal the naive reference and the torch backend."""
    import mrbench.retrieval.search as search_mod

    monkeypatch.setattr(search_mod, "_TILED_SCAN_MIN_TILE", 16)
    monkeypatch.setattr(search_mod, "_TILED_SCAN_QUERIES", 3)
    monkeypatch.setattr(search_mod, "_TILED_SCAN_MIN_BYTES", 4 * 3 * 37)  # 37 candidates per tile
    calls = []
    real = search_mod._counts_by_tiles
    monkeypatch.setattr(search_mod, "_counts_by_tiles", lambda *a: calls.append(1) or real(*a))
    rng = np.random.default_rng(11 + KINDS.index(kind))
    n_q, n, d = 9, 700, 12
    q, c = make_data(kind, rng, n_q, n, d)
    judged = random_judged(rng, n_q, n, max_judged=4)
    depth = 5
    ref_ranks, ref_tops, ref_ties, ref_scores = naive_search(q, c, judged, depth)
    res = exact_search(q, c, judged, depth=depth, backend="faiss", max_chunk_bytes=1 << 12)
    assert res.judged_ranks == ref_ranks
    assert res.judged_scores == ref_scores
    assert res.topk_indices.tolist() == ref_tops
    assert res.n_ties.tolist() == ref_ties
    assert_same_result(res, exact_search(q, c, judged, depth=depth, backend="torch", device="cpu"))
    if kind in ("random", "unit"):
        assert calls  # the tiled path ran


@pytest.mark.skipif(not HAS_FAISS, reason="faiss not installed")
def test_faiss_small_query_batches_use_blas_and_setting_is_restored(monkeypatch):
    """FAISS scores < 250 queries (D = 512) pair by pair unless told otherwise, ~10x slower on big
    pools: exact_search lowers faiss's BLAS threshold for its calls only (results unchanged) and
    restores it afterwards, after an error too, and only when the last concurrent block exits."""
    import faiss

    from mrbench.retrieval.search import faiss_blas_products

    before = int(faiss.cvar.distance_compute_blas_threshold)
    rng = np.random.default_rng(5)
    n_q, n, d = 7, 400, 16
    q = rng.standard_normal((n_q, d), dtype=np.float32)
    c = rng.standard_normal((n, d), dtype=np.float32)
    judged = random_judged(rng, n_q, n, max_judged=3)
    seen = []
    real_knn = faiss.knn

    def spy(x, *a, **k):
        seen.append(int(faiss.cvar.distance_compute_blas_threshold))
        return real_knn(x, *a, **k)

    monkeypatch.setattr(faiss, "knn", spy)
    res = exact_search(q, c, judged, depth=10, backend="faiss")
    assert seen and all(n_q * d >= t for t in seen) and 2 * d < min(seen)  # BLAS for 7 queries, not for 2
    assert int(faiss.cvar.distance_compute_blas_threshold) == before
    assert_same_result(res, exact_search(q, c, judged, depth=10, backend="torch", device="cpu"))

    monkeypatch.setattr(faiss, "knn", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("boom")))
    with pytest.raises(RuntimeError, match="boom"):
        exact_search(q, c, judged, depth=10, backend="faiss")
    assert int(faiss.cvar.distance_compute_blas_threshold) == before

    outer, inner = faiss_blas_products(512), faiss_blas_products(16)
    with outer:
        with inner:
            assert int(faiss.cvar.distance_compute_blas_threshold) == 2 * 16 + 1  # the lowest wins
        assert int(faiss.cvar.distance_compute_blas_threshold) < before  # still inside one block
    assert int(faiss.cvar.distance_compute_blas_threshold) == before


@pytest.mark.parametrize("device_counts", [False, True], ids=["cpu-counts", "gpu-counts-on-cpu"])
@pytest.mark.parametrize("kind", KINDS)
def test_streamed_judged_counts_match_naive_reference(kind, device_counts, monkeypatch):
    """The streamed pass counts each block's judged pairs from the block's top list when their window
    lies above it, else over whole rows (NumPy row by row on the CPU; on a GPU the j-th pair of every
    row at once, in place for slots most rows have, on copied rows otherwise; rescoring gathered rows
    in slices). With many judged
    candidates per query (several slots, dense and sparse), tiny blocks and both routes, the results
    equal the naive reference."""
    import mrbench.retrieval.search as search_mod

    monkeypatch.setattr(search_mod, "_DEVICE_STREAM_ON_CPU", device_counts)
    rng = np.random.default_rng(41 + KINDS.index(kind))
    n_q, n, d = 12, 600, 10
    q, c = make_data(kind, rng, n_q, n, d)
    judged = random_judged(rng, n_q, n, max_judged=7)
    judged[0] = {int(r): 1 for r in rng.choice(n, 9, replace=False)}  # one row with many pairs: sparse slots
    for depth in (3, 40):
        ref_ranks, ref_tops, ref_ties, ref_scores = naive_search(q, c, judged, depth)
        res = exact_search(q, c, judged, depth=depth, backend="torch", device="cpu", stream=True, stream_block_rows=53)
        assert res.judged_ranks == ref_ranks
        assert res.judged_scores == ref_scores
        assert res.topk_indices.tolist() == ref_tops
        assert res.n_ties.tolist() == ref_ties


@pytest.mark.parametrize("cap", [None, 3], ids=["pool-pass", "pools-spill-to-exact-rows"])
@pytest.mark.parametrize("kind", ["duplicated", "quantised", "identical", "zero"])
def test_streamed_pools_past_the_list(kind, cap, monkeypatch):
    """Ties at the depth-th score make a query's pool (every candidate that may belong to its top
    list) reach past the streamed fast list. One more fast pass collects those pools and rescores
    them (before, every such query took the exact second pass: canonical scores of the whole pool,
    26-46 s instead of 10 s at 1M candidates with a tie-heavy encoder); a pool above
    _STREAM_POOL_CAP members still goes to that exact pass. Both equal the naive reference."""
    import mrbench.retrieval.search as S

    calls = {"pool": 0, "exact": 0}
    pool_fn, exact_fn = S._stream_pool_rows, S._stream_exact_rows

    def pool(*a, **k):
        calls["pool"] += 1
        return pool_fn(*a, **k)

    def exact(*a, **k):
        calls["exact"] += 1
        return exact_fn(*a, **k)

    monkeypatch.setattr(S, "_stream_pool_rows", pool)
    monkeypatch.setattr(S, "_stream_exact_rows", exact)
    if cap is not None:
        monkeypatch.setattr(S, "_STREAM_POOL_CAP", cap)
    rng = np.random.default_rng(77 + len(kind))
    n_q, n, d = 6, 3000, 8
    if kind == "duplicated":  # 60 distinct rows, each ~50 times: a tie group longer than the fast list
        c = rng.standard_normal((60, d)).astype(np.float32)[rng.integers(0, 60, n)]
        q = rng.standard_normal((n_q, d)).astype(np.float32)
    else:  # (quantised in 2 dimensions: a handful of distinct scores)
        q, c = make_data(kind, rng, n_q, n, 2 if kind == "quantised" else d)
    judged = random_judged(rng, n_q, n, max_judged=4)
    for depth in (5, 20):
        ref_ranks, ref_tops, ref_ties, ref_scores = naive_search(q, c, judged, depth)
        res = exact_search(q, c, judged, depth=depth, backend="torch", device="cpu", stream=True, stream_block_rows=97)
        assert res.judged_ranks == ref_ranks, (kind, depth)
        assert res.judged_scores == ref_scores
        assert res.topk_indices.tolist() == ref_tops
        assert res.n_ties.tolist() == ref_ties
    assert calls["pool"] > 0
    assert (calls["exact"] == 0) if cap is None else (calls["exact"] > 0)


def test_streamed_pool_pass_stops_at_the_cap(monkeypatch):
    """A pool past _STREAM_POOL_CAP is counted before it is listed: its row collects nothing more,
    and the pool pass ends as soon as every row is past the cap (a huge group of identical
    candidates at the top, e.g. blank images, would otherwise be listed whole for every query, tens
    of GB for a chunk of thousands of queries at 1M candidates). Results equal the in-memory ones."""
    import mrbench.retrieval.search as S

    rng = np.random.default_rng(5)
    n, dup, n_q, d = 6000, 3000, 16, 4
    v = np.array([1, 0, 0, 0], np.float32)
    c = (rng.standard_normal((n, d)) * 0.1).astype(np.float32)
    c[rng.choice(n, dup, replace=False)] = v
    q = (v + 0.05 * rng.standard_normal((n_q, d))).astype(np.float32)
    q[:, 0] = np.abs(q[:, 0]) + 0.5  # every query ranks the identical group first
    judged = [{int(j): 1} for j in rng.choice(np.flatnonzero((c != v).any(axis=1)), n_q)]
    blocks = {"pool": 0}
    inside = [False]
    fast_blocks, pool_rows = S._fast_blocks, S._stream_pool_rows

    def counted_blocks(*a, **k):
        for blk in fast_blocks(*a, **k):
            blocks["pool"] += inside[0]
            yield blk

    def pool(*a, **k):
        inside[0] = True
        try:
            return pool_rows(*a, **k)
        finally:
            inside[0] = False

    monkeypatch.setattr(S, "_fast_blocks", counted_blocks)
    monkeypatch.setattr(S, "_stream_pool_rows", pool)
    monkeypatch.setattr(S, "_STREAM_POOL_CAP", 100)
    res = exact_search(q, c, judged, depth=10, backend="torch", device="cpu", stream=True, stream_block_rows=500)
    assert blocks["pool"] == 1  # the whole group is tied at the top: every row is past the cap in block 1
    assert_same_result(res, exact_search(q, c, judged, depth=10, backend="torch", device="cpu"))


def test_scan_windows_per_entry_allowance():
    """_scan_windows flags a window larger than its own entry's allowance (as _counts_by_tiles uses
    it: what is left of max_amb after earlier tiles) and keeps the others' columns."""
    from mrbench.retrieval.search import _scan_windows

    fast = torch.tensor([[0.0, 1.0, 1.0, 1.0, 2.0], [1.0, 1.0, 3.0, 0.0, 0.0]])
    pos = np.array([0, 0, 1])
    lo = np.array([1.0, 1.0, 1.0], dtype=np.float32)
    hi = np.array([1.0, 1.0, 1.0], dtype=np.float32)
    above, big, kk, cc = _scan_windows(fast, pos, lo, hi, 1, np.array([3, 2, 2]))
    assert above.tolist() == [1, 1, 1] and big.tolist() == [False, True, False]
    assert kk.tolist() == [0, 0, 0, 2, 2] and cc.tolist() == [1, 2, 3, 0, 1]
    assert _scan_windows(fast, pos, lo, hi, 1, 2)[1].tolist() == [True, True, False]


def test_hand_example_pessimistic_ties():
    # one-dimensional embeddings make the scores obvious: score = candidate value
    c = np.array([[0.5], [0.9], [0.5], [0.5], [0.1]], dtype=np.float32)
    q = np.array([[1.0]], dtype=np.float32)
    res = exact_search(q, c, [{2: 1}], depth=5, backend="torch", device="cpu")
    # 0.9 is strictly higher; rows 0 and 3 are non-relevant ties and go first
    assert res.judged_ranks == [{2: 4}]
    assert res.n_ties.tolist() == [2]
    assert res.topk_indices.tolist() == [[1, 0, 3, 2, 4]]
    np.testing.assert_array_equal(res.topk_scores, np.array([[0.9, 0.5, 0.5, 0.5, 0.1]], dtype=np.float32))
    # graded ties: grade-1 row 3 (below relevance level 2) precedes grade-2 row 0; both after row 2 (grade 0)
    res = exact_search(q, c, [{0: 2, 3: 1}], depth=5, relevance_level=2, backend="torch", device="cpu")
    assert res.judged_ranks == [{0: 4, 3: 3}]
    assert res.n_ties.tolist() == [2]
    # relevant candidates tied with each other take consecutive ranks (lower grade, then lower row)
    res = exact_search(q, c, [{0: 1, 2: 3, 3: 1}], depth=5, backend="torch", device="cpu")
    assert res.judged_ranks == [{0: 2, 3: 3, 2: 4}]
    assert res.n_ties.tolist() == [0]  # only relevant candidates share its score


@pytest.mark.parametrize("runner", BACKENDS)
def test_one_ulp_apart_is_not_a_tie(runner):
    one = np.float32(1.0)
    up = np.nextafter(one, np.float32(2))
    c = np.array([[one, 0], [up, 0], [one, 0]], dtype=np.float32)
    q = np.array([[1, 0]], dtype=np.float32)
    res = run(runner, q, c, [{0: 1, 1: 1}], depth=3)
    # row 1 is one ulp higher: rank 1, no tie; row 0 ties with the unjudged row 2, which goes first
    assert res.judged_ranks == [{1: 1, 0: 3}]
    assert res.n_ties.tolist() == [0]
    assert res.topk_indices.tolist() == [[1, 2, 0]]
    assert res.topk_scores[0, 0] == up


def test_topk_cutoff_inside_a_tie_gives_slots_to_lower_grades():
    c = np.ones((6, 2), dtype=np.float32)  # every score ties
    q = np.ones((1, 2), dtype=np.float32)
    judged = [{0: 3, 1: 1, 4: 2}]
    res = exact_search(q, c, judged, depth=4, backend="torch", device="cpu")
    # unjudged rows 2, 3, 5 first (grade 0), then grade 1 (row 1); grade 2 and 3 fall off
    assert res.topk_indices.tolist() == [[2, 3, 5, 1]]
    assert res.judged_ranks == [{0: 6, 1: 4, 4: 5}]
    assert res.n_ties.tolist() == [3]  # the unjudged rows 2, 3, 5


def test_topk_positions_agree_with_judged_ranks():
    rng = np.random.default_rng(3)
    q, c = make_data("quantised", rng, 20, 300, 4)
    judged = random_judged(rng, 20, 300, max_judged=8)
    res = exact_search(q, c, judged, depth=50, backend="torch", device="cpu")
    for i in range(20):
        pos = {int(r): p + 1 for p, r in enumerate(res.topk_indices[i])}
        for row, rank in res.judged_ranks[i].items():
            if rank <= 50:
                assert pos[row] == rank
            else:
                assert row not in pos
        assert np.all(np.diff(res.topk_scores[i].astype(np.float64)) <= 0)


# ------------------------------------------------------------------------------------------------
# backend equality, chunking, shapes
# ------------------------------------------------------------------------------------------------


@pytest.mark.skipif(len(ALL_RUNNERS) < 2, reason="needs two backends")
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("shape", [(40, 3000, 32, 20), (1, 500, 8, 100), (7, 1, 4, 10), (5, 30, 6, 100)], ids=["big", "Q1", "N1", "depth>N"])
def test_backends_identical(kind, shape):
    n_q, n, d, depth = shape
    rng = np.random.default_rng(11)
    q, c = make_data(kind, rng, n_q, n, d)
    judged = random_judged(rng, n_q, n, max_judged=6)
    results = [run(r, q, c, judged, depth=depth) for r in ALL_RUNNERS]
    assert results[0].depth == min(depth, n)
    for other in results[1:]:
        assert_same_result(results[0], other)


@pytest.mark.parametrize("runner", BACKENDS)
@pytest.mark.parametrize("kind", ["unit", "random", "quantised", "identical"])
def test_tiny_chunks_identical(runner, kind):
    rng = np.random.default_rng(5)
    n_q, n, d = 23, 800, 16
    q, c = make_data(kind, rng, n_q, n, d)
    judged = random_judged(rng, n_q, n)
    big = run(runner, q, c, judged, depth=25)
    steps: list[int] = []
    small = run(runner, q, c, judged, depth=25, max_chunk_bytes=4 * n * 3, progress=steps.append)
    assert_same_result(big, small)
    assert sum(steps) == n_q
    one = run(runner, q, c, judged, depth=25, max_chunk_bytes=1)  # one row per chunk
    assert_same_result(big, one)


def test_streamed_progress_moves_per_block():
    """A streamed pass reports progress after every candidate block (integers adding up to the
    queries), not only when a whole chunk of queries is done."""
    rng = np.random.default_rng(6)
    q, c = make_data("unit", rng, 40, 1000, 8)
    judged = random_judged(rng, 40, 1000)
    steps: list[int] = []
    exact_search(q, c, judged, depth=10, backend="torch", device="cpu", stream=True, stream_block_rows=100,
                 progress=steps.append)
    assert sum(steps) == 40 and all(isinstance(s, int) and s > 0 for s in steps)
    assert len(steps) == 10  # one chunk of 40 queries, 10 blocks


# ------------------------------------------------------------------------------------------------
# the finaliser's routes (dense rows, list windows, comparison scans, sorted scans, escalation)
# ------------------------------------------------------------------------------------------------

ROUTES = {
    "default": {},
    # never score whole rows: list windows and row scans only
    "sparse": dict(_DENSE_JUDGED=0, _DENSE_AMBIGUOUS=1),
    "compare": dict(_DENSE_JUDGED=0, _DENSE_AMBIGUOUS=1, _few_pairs=lambda n: 10**9),
    "sort": dict(_DENSE_JUDGED=0, _DENSE_AMBIGUOUS=1, _few_pairs=lambda n: 0),
    # every query with a judged candidate is scored in full
    "dense": dict(_DENSE_JUDGED=10**9),
    # every query that needs a row scan is escalated to a full canonical row
    "escalate": dict(_DENSE_JUDGED=0, _DENSE_AMBIGUOUS=10**9),
}


def many_judged(rng: np.random.Generator, n_q: int, n: int, max_judged: int) -> list[dict[int, int]]:
    """Up to ``max_judged`` judged candidates per query (some queries none), grades 1-3."""
    out = []
    for i in range(n_q):
        m = 0 if i % 5 == 4 else int(rng.integers(1, min(n, max_judged) + 1))
        rows = rng.choice(n, size=m, replace=False)
        out.append({int(r): int(rng.integers(1, 4)) for r in rows})
    return out


@pytest.mark.parametrize("runner", BACKENDS)
@pytest.mark.parametrize("route", list(ROUTES))
@pytest.mark.parametrize("kind", ["unit", "random", "duplicated", "quantised", "identical"])
def test_every_route_matches_naive_reference(runner, route, kind, monkeypatch):
    """Many judged candidates per query (below the list, tied, near-tied) on every route."""
    import mrbench.retrieval.search as search

    for name, value in ROUTES[route].items():
        monkeypatch.setattr(search, name, value)
    rng = np.random.default_rng(21 + KINDS.index(kind))
    n_q, n, d = 10, 400, 8
    q, c = make_data(kind, rng, n_q, n, d)
    judged = many_judged(rng, n_q, n, max_judged=60)
    ref_ranks, ref_tops, ref_ties, ref_scores = naive_search(q, c, judged, 10, 2)
    res = run(runner, q, c, judged, depth=10, relevance_level=2)
    assert res.judged_ranks == ref_ranks
    assert res.judged_scores == ref_scores
    assert res.topk_indices.tolist() == ref_tops
    assert res.n_ties.tolist() == ref_ties
    # and with one query per chunk (rows scanned one at a time)
    assert_same_result(res, run(runner, q, c, judged, depth=10, relevance_level=2, max_chunk_bytes=1))


@pytest.mark.parametrize("runner", BACKENDS)
def test_huge_grades_break_ties_like_small_ones(runner):
    """Grades too wide for the packed integer sort key take the lexicographic fallback."""
    rng = np.random.default_rng(4)
    q, c = make_data("quantised", rng, 6, 300, 3)
    judged = many_judged(rng, 6, 300, max_judged=80)
    huge = [{r: g * 10**15 for r, g in j.items()} for j in judged]
    ref_ranks, ref_tops, ref_ties, _ = naive_search(q, c, huge, 40, 10**15)
    res = run(runner, q, c, huge, depth=40, relevance_level=10**15)
    assert res.judged_ranks == ref_ranks
    assert res.topk_indices.tolist() == ref_tops
    assert res.n_ties.tolist() == ref_ties


@pytest.mark.parametrize("kind", ["unit", "quantised", "duplicated"])
def test_many_judged_per_query_identical_across_backends_and_chunks(kind):
    """The evaluation workload: pools of ~1.5k, hundreds of judged candidates per query."""
    rng = np.random.default_rng(8)
    n_q, n, d = 30, 1500, 16
    q, c = make_data(kind, rng, n_q, n, d)
    judged = many_judged(rng, n_q, n, max_judged=300)
    results = [run(r, q, c, judged, depth=100) for r in ALL_RUNNERS]
    results.append(run(("torch", "cpu"), q, c, judged, depth=100, max_chunk_bytes=4 * n * 7))
    for other in results[1:]:
        assert_same_result(results[0], other)
    ref_ranks, ref_tops, ref_ties, _ = naive_search(q[:4], c, judged[:4], 100)
    assert results[0].judged_ranks[:4] == ref_ranks
    assert results[0].topk_indices[:4].tolist() == ref_tops
    assert results[0].n_ties[:4].tolist() == ref_ties


@pytest.mark.parametrize("runner", BACKENDS)
def test_result_shapes_and_metadata(runner):
    rng = np.random.default_rng(0)
    q, c = make_data("random", rng, 4, 9, 3)
    res = run(runner, q, c, [{}, {1: 1}, {}, {2: 2, 3: 1}], depth=100)
    assert res.topk_indices.shape == (4, 9) and res.topk_scores.shape == (4, 9)
    assert res.n_ties.dtype == np.int64 and res.n_ties.shape == (4,)
    assert res.judged_ranks[0] == {} and set(res.judged_ranks[3]) == {2, 3}
    assert res.backend == runner[0]
    assert res.device.startswith("cuda" if runner[1] == "cuda" else "cpu")
    assert sorted(res.topk_indices[0].tolist()) == list(range(9))


def test_zero_queries_and_zero_grade_entries():
    c = np.eye(3, dtype=np.float32)
    res = exact_search(np.zeros((0, 3), np.float32), c, [], depth=2, backend="torch", device="cpu")
    assert res.topk_indices.shape == (0, 2) and res.judged_ranks == []
    res = exact_search(c[:1], c, [{1: 0, 0: 1}], depth=2, backend="torch", device="cpu")
    assert res.judged_ranks == [{0: 1}]  # grade-0 entries are unjudged


def test_auto_backend_resolves(monkeypatch):
    import mrbench.retrieval.search as search_mod

    c = np.eye(3, dtype=np.float32)
    res = exact_search(c, c, [{i: 1} for i in range(3)], depth=1)
    assert res.backend == "torch"  # small: torch, whatever the device (no faiss import)
    assert res.judged_ranks == [{0: 1}, {1: 1}, {2: 1}]
    monkeypatch.setattr(search_mod, "_SMALL_SEARCH", 8)
    res = exact_search(c, c, [{i: 1} for i in range(3)], depth=1)
    assert res.backend == ("torch" if HAS_CUDA else ("faiss" if HAS_FAISS else "torch"))


# ------------------------------------------------------------------------------------------------
# canonical scores and the error bound
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("d", [1, 3, 7, 16, 33, 100, 512, 513, 1024])
def test_canonical_scores_do_not_depend_on_batching(d):
    rng = np.random.default_rng(d)
    q = torch.from_numpy(rng.standard_normal((5, d)).astype(np.float32))
    c = torch.from_numpy(rng.standard_normal((300, d)).astype(np.float32))
    qi = rng.integers(0, 5, 700)
    ci = rng.integers(0, 300, 700)
    batch = canonical_scores(q, c, qi, ci)
    single = np.array([canonical_scores(q, c, qi[p : p + 1], ci[p : p + 1])[0] for p in range(0, 700, 7)])
    np.testing.assert_array_equal(batch[::7].view(np.int32), single.view(np.int32))
    # misaligned storage (offset views) gives the same values
    q_off = torch.from_numpy(np.ascontiguousarray(np.pad(q.numpy(), ((0, 0), (1, 0)))[:, 1:]))
    np.testing.assert_array_equal(canonical_scores(q_off, c, qi, ci).view(np.int32), batch.view(np.int32))
    # the rectangular (broadcast) path used for top lists agrees with the pair path
    from mrbench.retrieval.search import _canonical_grid

    grid = _canonical_grid(q, c, np.arange(5), ci[:100].reshape(5, 20))
    pairs = canonical_scores(q, c, np.repeat(np.arange(5), 20), ci[:100])
    np.testing.assert_array_equal(grid.reshape(-1).view(np.int32), pairs.view(np.int32))


@pytest.mark.parametrize("d", [0, 1, 5, 64, 364, 513])
def test_canonical_rows_match_pair_scores(d, monkeypatch):
    """Whole canonical rows (broadcast, transposed tree) equal the pair path bit for bit."""
    import mrbench.retrieval.search as search

    rng = np.random.default_rng(d)
    q = torch.from_numpy(rng.standard_normal((9, d)).astype(np.float32))
    c = torch.from_numpy(rng.standard_normal((700, d)).astype(np.float32))
    rows = np.array([4, 0, 8, 8, 2])
    pairs = canonical_scores(q, c, np.repeat(rows, 700), np.tile(np.arange(700), rows.size)).reshape(rows.size, 700)
    for block in (search._ROW_BLOCK_ELEMENTS, 1000, 1):  # one block; candidate blocks; one row per block
        monkeypatch.setattr(search, "_ROW_BLOCK_ELEMENTS", block)
        got = search._canonical_rows(q, c, rows).numpy()
        np.testing.assert_array_equal(got.view(np.int32), pairs.view(np.int32))
    if HAS_CUDA:
        got = search._canonical_rows(q.cuda(), c.cuda(), rows).cpu().numpy()
        np.testing.assert_array_equal(got.view(np.int32), pairs.view(np.int32))


def test_score_keys_order_like_float_tuples():
    from mrbench.retrieval.search import _score_key

    rng = np.random.default_rng(0)
    tiny = np.float32(1e-45)  # the smallest subnormal
    special = np.array([0.0, -0.0, tiny, -tiny, 1.0, -1.0, 3e38, -3e38], dtype=np.float32)
    vals = np.concatenate([special, rng.standard_normal(500).astype(np.float32), special])
    groups = rng.integers(0, 4, vals.size)
    keys = _score_key(groups, vals)
    order = np.argsort(keys, kind="stable")
    assert [(groups[i], float(vals[i])) for i in order] == sorted(zip(groups.tolist(), vals.astype(float).tolist()))
    same = (groups[:, None] == groups[None, :]) & (vals[:, None] == vals[None, :])  # -0.0 == 0.0
    np.testing.assert_array_equal(keys[:, None] == keys[None, :], same)


def test_canonical_scores_exact_on_small_integers_and_identical_across_devices():
    rng = np.random.default_rng(0)
    q = rng.integers(-8, 9, (3, 37)).astype(np.float32)
    c = rng.integers(-8, 9, (50, 37)).astype(np.float32)
    qi, ci = np.repeat(np.arange(3), 50), np.tile(np.arange(50), 3)
    got = canonical_scores(torch.from_numpy(q), torch.from_numpy(c), qi, ci)
    np.testing.assert_array_equal(got, (q.astype(np.int64) @ c.T.astype(np.int64)).reshape(-1).astype(np.float32))
    if HAS_CUDA:
        qf = rng.standard_normal((7, 300)).astype(np.float32)
        cf = rng.standard_normal((400, 300)).astype(np.float32)
        qi, ci = rng.integers(0, 7, 5000), rng.integers(0, 400, 5000)
        cpu = canonical_scores(torch.from_numpy(qf), torch.from_numpy(cf), qi, ci)
        gpu = canonical_scores(torch.from_numpy(qf).cuda(), torch.from_numpy(cf).cuda(), qi, ci)
        np.testing.assert_array_equal(cpu.view(np.int32), gpu.view(np.int32))


@pytest.mark.parametrize("backend,device", [("torch", "cpu"), ("faiss", None)] + ([("torch", "cuda")] if HAS_CUDA else []))
def test_reduced_precision_matmul_setting_keeps_results_exact(backend, device, monkeypatch):
    """With TF32/bf16 matmuls enabled the bound widens (also for faiss on the CPU, whose row scans
    recompute fast rows with torch); results stay identical."""
    import mrbench.retrieval.search as search_mod

    if backend == "faiss" and not HAS_FAISS:
        pytest.skip("faiss not installed")
    rng = np.random.default_rng(2)
    q, c = make_data("unit", rng, 30, 2000, 64)
    judged = random_judged(rng, 30, 2000)
    ref = exact_search(q, c, judged, depth=20, backend="torch", device="cpu")
    seen = []
    real = search_mod.score_bound
    monkeypatch.setattr(search_mod, "score_bound", lambda *a: seen.append(a[3] if len(a) > 3 else 0.0) or real(*a))
    old = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("medium")
        got = exact_search(q, c, judged, depth=20, backend=backend, device=device)
    finally:
        torch.set_float32_matmul_precision(old)
    assert_same_result(ref, got)
    assert seen and seen[0] == 2.0**-7  # the input rounding of a reduced-precision matmul is covered


@pytest.mark.parametrize("d", [4, 64, 512])
def test_fast_kernels_stay_within_bound(d):
    rng = np.random.default_rng(d)
    q = rng.standard_normal((50, d)).astype(np.float32)
    c = rng.standard_normal((2000, d)).astype(np.float32) * 3
    qt, ct = torch.from_numpy(q), torch.from_numpy(c)
    canon = canonical_scores(qt, ct, np.repeat(np.arange(50), 2000), np.tile(np.arange(2000), 50)).reshape(50, 2000)
    bound = score_bound(d, np.linalg.norm(q, axis=1), float(np.linalg.norm(c, axis=1).max()))
    fast = [(qt @ ct.T).numpy(), np.stack([(qt[i : i + 1] @ ct.T).numpy()[0] for i in range(50)])]
    if HAS_CUDA:
        fast.append((qt.cuda() @ ct.cuda().T).cpu().numpy())
    if HAS_FAISS:
        import faiss

        index = faiss.IndexFlatIP(d)
        index.add(c)
        dist, idx = index.search(q, 2000)
        f = np.empty_like(dist)
        np.put_along_axis(f, idx, dist, axis=1)
        fast.append(f)
    for f in fast:
        err = np.abs(f.astype(np.float64) - canon.astype(np.float64))
        assert (err <= bound[:, None]).all()


# ------------------------------------------------------------------------------------------------
# property test
# ------------------------------------------------------------------------------------------------

try:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st
    from hypothesis.extra.numpy import arrays
except ImportError:  # pragma: no cover - hypothesis is a dev extra
    st = None

if st is not None:
    _tied_problem_strategy = st.composite(lambda draw: _draw_tied_problem(draw))


def _draw_tied_problem(draw):
    n_q = draw(st.integers(1, 4))
    n = draw(st.integers(1, 60))
    d = draw(st.integers(1, 4))
    vals = st.sampled_from([-1.0, -0.5, 0.0, 0.5, 1.0])
    q = draw(arrays(np.float32, (n_q, d), elements=vals))
    c = draw(arrays(np.float32, (n, d), elements=vals))
    judged = [
        draw(st.dictionaries(st.integers(0, n - 1), st.integers(0, 3), max_size=min(n, 6))) for _ in range(n_q)
    ]
    depth = draw(st.integers(1, 70))
    rl = draw(st.integers(1, 3))
    return q, c, judged, depth, rl


def _property_check(problem):
    q, c, judged, depth, rl = problem
    ref_ranks, ref_tops, ref_ties, _ = naive_search(q, c, judged, depth, rl)
    first = None
    for r in ALL_RUNNERS:
        res = run(r, q, c, judged, depth=depth, relevance_level=rl)
        assert res.judged_ranks == ref_ranks
        assert res.topk_indices.tolist() == ref_tops
        assert res.n_ties.tolist() == ref_ties
        if first is None:
            first = res
        else:
            assert_same_result(first, res)


if st is not None:

    @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(_tied_problem_strategy())
    def test_property_tied_data_matches_reference_on_every_backend(problem):
        _property_check(problem)

else:  # pragma: no cover

    def test_property_tied_data_matches_reference_on_every_backend():
        pytest.skip("hypothesis not installed")


# ------------------------------------------------------------------------------------------------
# errors
# ------------------------------------------------------------------------------------------------

GOOD_Q = np.ones((2, 3), dtype=np.float32)
GOOD_C = np.ones((4, 3), dtype=np.float32)


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        (dict(queries=np.ones(3, np.float32)), "2-D"),
        (dict(queries=np.ones((2, 3), np.float64)), "astype(np.float32)"),
        (dict(candidates=np.ones((4, 3), np.float16)), "float32"),
        (dict(candidates=np.ones((4, 5), np.float32)), "dimension"),
        (dict(candidates=np.zeros((0, 3), np.float32)), "empty"),
        (dict(queries=np.array([[1, np.nan, 0], [0, 0, 0]], np.float32)), "NaN"),
        (dict(candidates=np.array([[1, 0, 0]] * 3 + [[np.inf, 0, 0]], np.float32)), "row 3"),
        (dict(candidates=np.full((4, 3), 1e20, np.float32)), "normalise"),
        (dict(queries=[[1.0, 0.0, 0.0]]), "numpy array or torch tensor"),
        (dict(judged=[{0: 1}]), "2 queries"),
        (dict(judged=[{0: 1}, {4: 1}]), "row 4"),
        (dict(judged=[{0: 1}, {1: -1}]), "negative"),
        (dict(judged=[{0: 1.5}, {}]), "integer"),
        (dict(judged=[{"a": 1}, {}]), "integer"),
        (dict(judged=[[0], {}]), "mapping"),
        (dict(depth=0), "depth"),
        (dict(relevance_level=0), "relevance_level"),
        (dict(max_chunk_bytes=0), "max_chunk_bytes"),
    ],
)
def test_bad_input_raises_one_line_mrbench_error(kwargs, fragment):
    args = dict(queries=GOOD_Q, candidates=GOOD_C, judged=[{}, {}])
    args.update(kwargs)
    q, c, j = args.pop("queries"), args.pop("candidates"), args.pop("judged")
    if args.get("backend") == "faiss" and not HAS_FAISS:
        pytest.skip("faiss not installed")
    args.setdefault("backend", "torch")
    args.setdefault("device", "cpu") if args["backend"] == "torch" else None
    with pytest.raises(MrbenchError) as exc:
        exact_search(q, c, j, **args)
    msg = str(exc.value)
    assert fragment in msg
    assert "\n" not in msg


def test_unknown_backend_lists_choices():
    with pytest.raises(UnknownNameError) as exc:
        exact_search(GOOD_Q, GOOD_C, [{}, {}], backend="fiass")
    msg = str(exc.value)
    assert "'faiss'" in msg and "auto" in msg and "torch" in msg


def test_search_error_is_mrbench_error():
    assert issubclass(SearchError, MrbenchError)


def test_module_imports_stay_cheap():
    code = (
        "import sys; import mrbench.retrieval.search, mrbench.retrieval.runfile, "
        "mrbench.metrics.ranking, mrbench.metrics.aggregate; "
        "heavy = [m for m in ('torch', 'faiss', 'pandas') if m in sys.modules]; "
        "assert not heavy, heavy"
    )
    env = dict(os.environ)
    subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=Path(__file__).resolve().parents[1])


# ------------------------------------------------------------------------------------------------
# run files
# ------------------------------------------------------------------------------------------------


def _small_result():
    rng = np.random.default_rng(1)
    q, c = make_data("quantised", rng, 3, 12, 3)
    judged = random_judged(rng, 3, 12)
    return exact_search(q, c, judged, depth=8, backend="torch", device="cpu")


def test_run_file_round_trip(tmp_path):
    res = _small_result()
    qids = ["q1", "q2", "q3"]
    dids = [f"doc{i}" for i in range(12)]
    out = write_trec_run(tmp_path / "sub" / "run.trec", qids, dids, res, "mrbench-test")
    assert out.exists()
    assert [p.name for p in out.parent.iterdir()] == ["run.trec"]  # no temporary left behind
    lines = out.read_text().splitlines()
    assert len(lines) == 3 * 8
    assert lines[0].split()[1] == "Q0" and lines[0].split()[5] == "mrbench-test"
    back = read_trec_run(out, known_qids=qids, known_dids=dids)
    assert list(back) == qids
    for q, qid in enumerate(qids):
        assert [d for d, _, _ in back[qid]] == [dids[i] for i in res.topk_indices[q]]
        assert [r for _, r, _ in back[qid]] == list(range(1, 9))
        scores = np.array([s for _, _, s in back[qid]], dtype=np.float32)
        np.testing.assert_array_equal(scores.view(np.int32), res.topk_scores[q].view(np.int32))


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_run_file_mode_follows_umask_like_other_outputs(tmp_path, umask):
    """A run file gets the permissions of every other output (0o666 & ~umask), not mkstemp's 0600."""
    from mrbench.data.io import atomic_write_text

    res = _small_result()
    old = os.umask(umask)
    try:
        run = write_trec_run(tmp_path / "run.trec", ["q1", "q2", "q3"], [f"d{i}" for i in range(12)], res, "x")
        atomic_write_text(tmp_path / "results.json", "{}")
    finally:
        os.umask(old)
    mode = run.stat().st_mode & 0o777
    assert mode == 0o666 & ~umask
    assert mode == (tmp_path / "results.json").stat().st_mode & 0o777


def test_run_file_float32_round_trip_of_awkward_values(tmp_path):
    vals = np.array([[np.float32(1) / 3, np.nextafter(np.float32(0.1), np.float32(1)), np.float32(-1e-30)]], np.float32)
    res = RetrievalResult(
        topk_indices=np.array([[0, 1, 2]]),
        topk_scores=vals,
        judged_ranks=[{}],
        judged_scores=[{}],
        n_ties=np.zeros(1, np.int64),
        backend="torch",
        device="cpu",
    )
    p = write_trec_run(tmp_path / "r.txt", ["q"], ["a", "b", "c"], res, "x")
    back = read_trec_run(p)
    np.testing.assert_array_equal(np.array([s for _, _, s in back["q"]], np.float32).view(np.int32), vals[0].view(np.int32))


def test_run_file_sorted_by_rank_column(tmp_path):
    p = tmp_path / "r.txt"
    p.write_text("q1 Q0 b 2 0.5 r\nq1 Q0 a 1 0.5 r\n\nq2 Q0 a 1 1 r\n")
    assert read_trec_run(p) == {"q1": [("a", 1, 0.5), ("b", 2, 0.5)], "q2": [("a", 1, 1.0)]}


@pytest.mark.parametrize(
    "text, fragment, line",
    [
        ("q1 Q0 a 1 0.5\n", "6 fields", 1),
        ("q1 Q0 a 1 0.5 r\nq1 Q0 b x 0.5 r\n", "not an integer", 2),
        ("q1 Q0 a 1.5 0.5 r\n", "not an integer", 1),
        ("q1 Q0 a 1 nan r\n", "not finite", 1),
        ("q1 Q0 a 1 inf r\n", "not finite", 1),
        ("q1 Q0 a 1 abc r\n", "not a number", 1),
        ("q1 Q0 a 1 0.5 r\nq1 Q0 a 2 0.4 r\n", "duplicate (query", 2),
        ("q1 Q0 a 1 0.5 r\nq1 Q0 b 1 0.4 r\n", "duplicate rank", 2),
        ("qX Q0 a 1 0.5 r\n", "unknown query id", 1),
        ("q1 Q0 zz 1 0.5 r\n", "unknown candidate id", 1),
    ],
)
def test_run_file_validation(tmp_path, text, fragment, line):
    p = tmp_path / "bad.trec"
    p.write_text(text)
    with pytest.raises(RunFileError) as exc:
        read_trec_run(p, known_qids={"q1"}, known_dids={"a", "b"})
    msg = str(exc.value)
    assert fragment in msg and f"bad.trec:{line}" in msg and "\n" not in msg


def test_run_file_write_errors(tmp_path):
    res = _small_result()
    dids = [f"d{i}" for i in range(12)]
    with pytest.raises(RunFileError, match="whitespace"):
        write_trec_run(tmp_path / "r", ["a b", "c", "d"], dids, res, "x")
    bad_dids = list(dids)
    bad_dids[int(res.topk_indices[0, 0])] = "has space"
    with pytest.raises(RunFileError, match="candidate id 'has space'"):
        write_trec_run(tmp_path / "r", ["a", "b", "c"], bad_dids, res, "x")
    with pytest.raises(RunFileError, match="query ids"):
        write_trec_run(tmp_path / "r", ["a"], dids, res, "x")
    with pytest.raises(RunFileError, match="candidate ids"):
        write_trec_run(tmp_path / "r", ["a", "b", "c"], dids[:3], res, "x")
    with pytest.raises(RunFileError, match="run_name"):
        write_trec_run(tmp_path / "r", ["a", "b", "c"], dids, res, "my run")
    with pytest.raises(RunFileError, match="cannot read"):
        read_trec_run(tmp_path / "missing")
    assert not (tmp_path / "r").exists()


# ------------------------------------------------------------------------------------------------
# reduced-precision fast filters and tensor inputs
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fast", ["float16", "bfloat16"])
@pytest.mark.parametrize("d", [4, 64, 512])
def test_half_fast_scores_stay_within_their_bound(fast, d):
    """The half filter's scores (power-of-two scaling, half inputs, float32 accumulation, half output)
    never differ from the canonical score by more than the bound exact_search uses for them."""
    import math

    from mrbench.retrieval.search import _HALF_UNIT, _pow2_at_least

    rng = np.random.default_rng(d)
    q = (rng.standard_normal((40, d)) * rng.choice([1e-6, 1.0, 7.0], size=(40, 1))).astype(np.float32)
    c = (rng.standard_normal((1500, d)) * 3).astype(np.float32)
    c[:5] *= 1e-9  # tiny rows: half subnormals after scaling
    qt, ct = torch.from_numpy(q), torch.from_numpy(c)
    canon = canonical_scores(qt, ct, np.repeat(np.arange(40), 1500), np.tile(np.arange(1500), 40)).reshape(40, 1500)
    qn, cmax = np.linalg.norm(q, axis=1), float(np.linalg.norm(c, axis=1).max())
    sq, sc = _pow2_at_least(float(qn.max())), _pow2_at_least(cmax)
    bound = score_bound(d, qn, cmax, 1.6 * _HALF_UNIT[fast]) + (2.0**-23 * math.sqrt(d) + 2.0**-23) * sq * sc
    hdt = getattr(torch, fast)
    f = ((qt / sq).to(hdt) @ (ct / sc).to(hdt).T).float().numpy() * (sq * sc)
    err = np.abs(f.astype(np.float64) - canon.astype(np.float64))
    assert (err <= bound[:, None]).all()
    assert err.max() > 0  # the half filter really is inexact here


def test_half_filters_identical_to_float32_on_near_ties():
    """Many near-equal scores (unit vectors in 64-d, exact duplicates, many judged): every filter
    precision and chunking gives bitwise the same result."""
    rng = np.random.default_rng(5)
    c = rng.standard_normal((6000, 64)).astype(np.float32)
    c /= np.linalg.norm(c, axis=1, keepdims=True)
    c[1000:1200] = c[0]  # a block of exact duplicates
    q = (c[rng.integers(0, 6000, 80)] + 0.05 * rng.standard_normal((80, 64))).astype(np.float32)
    q[:10] = c[0]
    judged = [{int(j): int(rng.integers(0, 3)) for j in rng.integers(0, 6000, 12)} | {0: 1, 1100: 2} for _ in range(80)]
    ref = exact_search(q, c, judged, depth=50, backend="torch", device="cpu", fast_dtype="float32")
    for fast in ("float16", "bfloat16"):
        for chunk in (None, 3 * 6000 * 4):
            assert_same_result(ref, exact_search(q, c, judged, depth=50, backend="torch", device="cpu",
                                                 fast_dtype=fast, max_chunk_bytes=chunk))
    # streamed in blocks, with the pool read from a memmap (as for a pool larger than memory)
    assert_same_result(ref, exact_search(q, c, judged, depth=50, backend="torch", device="cpu", fast_dtype="float16",
                                         stream=True, stream_block_rows=1500))


def test_tensor_inputs_are_accepted():
    rng = np.random.default_rng(2)
    q, c = rng.standard_normal((20, 16)).astype(np.float32), rng.standard_normal((300, 16)).astype(np.float32)
    judged = random_judged(rng, 20, 300)
    ref = exact_search(q, c, judged, backend="torch", device="cpu")
    assert_same_result(ref, exact_search(torch.from_numpy(q), torch.from_numpy(c), judged, backend="torch", device="cpu"))
    if HAS_FAISS:
        assert_same_result(ref, exact_search(torch.from_numpy(q), c, judged, backend="faiss"))
    with pytest.raises(SearchError, match=r"float32, got torch.float64; convert it with .float\(\)"):
        exact_search(torch.from_numpy(q).double(), c, judged, backend="torch", device="cpu")


def test_fast_dtype_errors():
    with pytest.raises(SearchError, match="fast_dtype 'fp8'"):
        exact_search(GOOD_Q, GOOD_C, [{}, {}], backend="torch", device="cpu", fast_dtype="fp8")
    if HAS_FAISS:
        with pytest.raises(SearchError, match="needs backend='torch'"):
            exact_search(GOOD_Q, GOOD_C, [{}, {}], backend="faiss", fast_dtype="float16")


def test_streaming_from_a_memmap_matches(tmp_path):
    rng = np.random.default_rng(9)
    c = rng.standard_normal((3000, 32)).astype(np.float32)
    q = rng.standard_normal((40, 32)).astype(np.float32)
    judged = random_judged(rng, 40, 3000, max_judged=8)
    np.save(tmp_path / "c.npy", c)
    mm = np.load(tmp_path / "c.npy", mmap_mode="r")
    ref = exact_search(q, c, judged, depth=30, backend="torch", device="cpu")
    got = exact_search(q, mm, judged, depth=30, backend="torch", device="cpu", stream=True, stream_block_rows=700)
    assert_same_result(ref, got)
    with pytest.raises(SearchError, match="stream=True needs backend='torch'"):
        exact_search(q, c, judged, backend="faiss", stream=True) if HAS_FAISS else (_ for _ in ()).throw(SearchError("stream=True needs backend='torch'"))
    with pytest.raises(SearchError, match="stream_block_rows"):
        exact_search(q, c, judged, backend="torch", device="cpu", stream=True, stream_block_rows=0)


@pytest.mark.parametrize("kind", ["unit", "quantised", "duplicated", "identical"])
def test_device_top_list_selection_matches(kind, monkeypatch):
    """The GPU's top-list selection (torch topk on the device, ties sent back to the CPU path), run
    on the CPU: identical results."""
    import mrbench.retrieval.search as search_mod

    rng = np.random.default_rng(11)
    q, c = make_data(kind, rng, 30, 900, 16)
    judged = random_judged(rng, 30, 900, max_judged=6)
    refs = {depth: exact_search(q, c, judged, depth=depth, backend="torch", device="cpu") for depth in (40, 900)}
    monkeypatch.setattr(search_mod, "_DEVICE_TOP_LISTS_ON_CPU", True)
    for depth, want in refs.items():
        assert_same_result(want, exact_search(q, c, judged, depth=depth, backend="torch", device="cpu"))


@pytest.mark.skipif(not HAS_FAISS, reason="faiss not installed")
def test_faiss_gpu_request_without_gpu_falls_back_with_one_warning(caplog, monkeypatch):
    import logging

    import mrbench.retrieval.search as search_mod

    monkeypatch.setattr(search_mod, "_faiss_gpu_ready", lambda: False)
    rng = np.random.default_rng(4)
    q, c = rng.standard_normal((6, 8)).astype(np.float32), rng.standard_normal((50, 8)).astype(np.float32)
    judged = random_judged(rng, 6, 50)
    with caplog.at_level(logging.WARNING, logger="mrbench.retrieval"):
        res = exact_search(q, c, judged, backend="faiss", device="cuda")
    warns = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warns) == 1 and "running faiss on the CPU" in warns[0].getMessage()
    assert res.backend == "faiss" and res.device == "cpu"
    assert_same_result(res, exact_search(q, c, judged, backend="faiss"))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="mrbench.retrieval"):
        # a request that cannot run at all is refused before any fallback warning
        with pytest.raises(SearchError, match="stream=True needs backend='torch'"):
            exact_search(q, c, judged, backend="faiss", device="cuda", stream=True)
        # faiss has no device but the CPU and CUDA: a one-line error, not a "no CUDA" fallback
        with pytest.raises(SearchError, match=r"device 'meta': faiss runs on the CPU or on CUDA GPUs"):
            exact_search(q, c, judged, backend="faiss", device="meta")
    assert not [r for r in caplog.records if r.levelno == logging.WARNING]


@pytest.mark.parametrize("kind", ["unit", "quantised", "identical"])
def test_tiled_cpu_product_and_small_scratch_identical(kind, monkeypatch):
    """The CPU fast product in candidate tiles (``_MM_TILE``), and tiny scratch shares (one row
    sorted / scored densely at a time, tiny canonical-row blocks): identical results, and the
    torch thread setting is restored after the single-threaded rescoring."""
    import mrbench.retrieval.search as search_mod

    rng = np.random.default_rng(17)
    n_q, n, d = 25, 1000, 16
    q, c = make_data(kind, rng, n_q, n, d)
    judged = many_judged(rng, n_q, n, max_judged=120)
    runners = [("torch", "cpu")] + ([("faiss", None)] if HAS_FAISS else [])
    refs = [run(r, q, c, judged, depth=30) for r in runners]
    threads = torch.get_num_threads()
    monkeypatch.setattr(search_mod, "_MM_TILE", 96)  # 11 tiles, the last one partial
    monkeypatch.setattr(search_mod, "_TOPK_TILE", 96)  # top lists from 11 tiles' winners as well
    monkeypatch.setattr(search_mod, "_SCRATCH_SHARE", 1 << 20)  # scratch rows: 1 each
    for r, want in zip(runners, refs):
        for chunk in (None, 4 * n * 5, 1):
            assert_same_result(want, run(r, q, c, judged, depth=30, max_chunk_bytes=chunk))
    assert torch.get_num_threads() == threads


def test_tiled_topk_returns_the_top_scores(monkeypatch):
    import mrbench.retrieval.search as search_mod

    monkeypatch.setattr(search_mod, "_TOPK_TILE", 64)
    g = torch.Generator().manual_seed(3)
    for s in (torch.randn(5, 1000, generator=g), torch.randint(0, 4, (5, 1000), generator=g).float()):
        assert search_mod._topk_tiles(s.shape[1]) == 16
        want, _ = torch.topk(s, 70, dim=1)
        got, idx = search_mod._topk_cpu(s, 70)
        assert torch.equal(got, want) and torch.equal(torch.gather(s, 1, idx), got)
        assert all(len(set(r.tolist())) == 70 for r in idx)  # no candidate twice


def test_chunk_plan_fits_the_budget():
    """Score block, top lists, workspaces and scratch together stay within max_chunk_bytes."""
    import mrbench.retrieval.search as search_mod
    from mrbench.retrieval.search import _plan_chunks

    cpu = torch.device("cpu")
    n, d, kp, budget = 100_000, 512, 125, 256 << 20
    for backend, half in (("torch", False), ("torch", True), ("faiss", False)):
        p = _plan_chunks(budget, 1000, n, d, kp, cpu, backend, half, 2)
        assert p.rows >= 1 and p.sort_rows >= 1 and p.dense_rows >= 1 and p.scan_block >= 1
        block = p.rows * n * (2 if half else 4) + p.rows * 40 * kp
        fixed = 2 * n * 16 + 4 * search_mod._block_elements(cpu) + (0 if half else 4 * d * 4096 + (1 << 20))
        assert block + fixed + budget // 8 <= budget
        assert 16 * n * p.sort_rows <= budget // 8 and 64 * n * p.dense_rows <= budget // 8
        if half:  # float32 copies of half rows come out of the scratch share (float32: no copy)
            assert p.scan_rows * n * 4 <= budget // 16
        else:  # the chunk's own score rows (torch) or the rescanned rows (faiss)
            assert p.scan_rows == p.rows
    assert _plan_chunks(1, 5, n, d, kp, cpu, "torch", False, 2).rows == 1  # at least one row


@pytest.mark.skipif(HAS_CUDA or not HAS_FAISS, reason="the CPU's auto backend with faiss")
@pytest.mark.parametrize("where", ["below", "below-duplicates", "inside", "many-judged"])
def test_auto_backend_runs_the_fused_pass_when_a_sample_says_so(where, monkeypatch):
    """``backend="auto"`` on the CPU scores a sample of the queries against a sample of the pool;
    when most queries have a judged candidate below the fast list (and few judged candidates each),
    the search runs the streamed pass over the pool in memory instead of faiss. Identical results
    either way, to faiss alone and to the naive reference."""
    import mrbench.retrieval.search as search_mod

    monkeypatch.setattr(search_mod, "_SMALL_SEARCH", 0)
    monkeypatch.setattr(search_mod, "_FUSED_MIN_POOL", 1000)
    monkeypatch.setattr(search_mod, "_FUSED_MIN_DIM", 16)
    rng = np.random.default_rng(21)
    n_q, n, depth = 300, 1500, 10
    q, c = make_data("unit", rng, n_q, n, 16)
    if where == "below-duplicates":  # every item twice (a pool's duplicates tie in pairs: still the fused pass)
        c = np.repeat(c[: n // 2], 2, axis=0)
    s = q @ c.T
    if where == "inside":  # the nearest candidate of each query, in its list
        judged = [{int(np.argmax(s[i])): 1} for i in range(n_q)]
    else:  # low-scoring candidates: below the lists
        per = 40 if where == "many-judged" else 3
        judged = [{int(j): int(rng.integers(1, 3)) for j in np.argsort(s[i])[:per]} for i in range(n_q)]
    calls: list[int] = []
    real = search_mod._run_streaming
    monkeypatch.setattr(search_mod, "_run_streaming", lambda *a, **k: (calls.append(1), real(*a, **k))[1])
    done: list[int] = []
    got = exact_search(q, c, judged, depth=depth, progress=done.append)
    assert sum(done) == n_q
    if where.startswith("below"):
        assert calls == [1] and got.backend == "torch"
    else:
        assert calls == [] and got.backend == "faiss"
    assert_same_result(exact_search(q, c, judged, depth=depth, backend="faiss"), got)
    ranks, tops, ties, _ = naive_search(q[::37], c, judged[::37], depth)
    assert [got.judged_ranks[i] for i in range(0, n_q, 37)] == ranks
    np.testing.assert_array_equal(got.n_ties[::37], ties)


@pytest.mark.skipif(HAS_CUDA or not HAS_FAISS, reason="the CPU's auto backend with faiss")
def test_auto_backend_fused_pass_only_for_large_pools_of_many_dimensions(monkeypatch):
    import mrbench.retrieval.search as search_mod

    monkeypatch.setattr(search_mod, "_SMALL_SEARCH", 0)
    rng = np.random.default_rng(3)
    q, c = make_data("unit", rng, 40, 1500, 16)
    judged = [{int(np.argmin(row)): 1} for row in q @ c.T]  # below the lists
    monkeypatch.setattr(search_mod, "_FUSED_MIN_DIM", 16)
    monkeypatch.setattr(search_mod, "_FUSED_MIN_POOL", 1501)  # a smaller pool: faiss
    assert exact_search(q, c, judged, depth=10).backend == "faiss"
    monkeypatch.setattr(search_mod, "_FUSED_MIN_POOL", 1500)
    assert exact_search(q, c, judged, depth=10).backend == "torch"
    monkeypatch.setattr(search_mod, "_FUSED_MIN_DIM", 17)  # fewer dimensions: faiss
    assert exact_search(q, c, judged, depth=10).backend == "faiss"
    # explicit backends are kept
    monkeypatch.setattr(search_mod, "_FUSED_MIN_DIM", 16)
    assert exact_search(q, c, judged, depth=10, backend="faiss").backend == "faiss"


@pytest.mark.skipif(HAS_CUDA or not HAS_FAISS, reason="the CPU's auto backend with faiss")
def test_auto_backend_keeps_faiss_for_a_group_of_identical_rows(monkeypatch):
    """A group of identical candidates too small a share of the pool to count by itself, but larger
    than half of what the streamed pass collects before scoring a query's whole pool, keeps faiss
    (262k x 256: 4,150 identical rows made the streamed pass 6-10x slower)."""
    import mrbench.retrieval.search as search_mod

    monkeypatch.setattr(search_mod, "_SMALL_SEARCH", 0)
    monkeypatch.setattr(search_mod, "_FUSED_MIN_POOL", 1000)
    monkeypatch.setattr(search_mod, "_FUSED_MIN_DIM", 16)
    rng = np.random.default_rng(8)
    q, c = make_data("unit", rng, 300, 1500, 16)
    c[100:120] = c[100]  # 20 identical rows: 18 places of 1,500 in runs of 3+, under 1/64
    judged = [{100 + i % 20: 1} for i in range(300)]  # ranked about half way down: past the lists
    monkeypatch.setattr(search_mod, "_STREAM_POOL_CAP", 64)  # a group of 20: not over 32
    assert exact_search(q, c, judged, depth=10).backend == "torch"
    monkeypatch.setattr(search_mod, "_STREAM_POOL_CAP", 32)  # over 16: faiss
    got = exact_search(q, c, judged, depth=10)
    assert got.backend == "faiss"
    assert_same_result(exact_search(q, c, judged, depth=10, backend="torch", device="cpu"), got)


@pytest.mark.skipif(HAS_CUDA or not HAS_FAISS, reason="the CPU's auto backend with faiss")
@pytest.mark.parametrize("kind", ["identical", "zero", "quantised", "duplicated"])
def test_auto_backend_keeps_faiss_when_the_sample_finds_ties(kind, monkeypatch):
    """Judged candidates ranked past the lists only through ties (a constant encoder, zero queries,
    coarse scores) keep the search on faiss, which scores such rows densely: the fused pass would
    send every such query to an exact pass over the whole pool."""
    import mrbench.retrieval.search as search_mod

    monkeypatch.setattr(search_mod, "_SMALL_SEARCH", 0)
    monkeypatch.setattr(search_mod, "_FUSED_MIN_POOL", 1000)
    monkeypatch.setattr(search_mod, "_FUSED_MIN_DIM", 8)
    rng = np.random.default_rng(5)
    q, c = make_data(kind, rng, 300, 1200, 8)
    # the lowest-scoring candidates: past the lists (for "duplicated", 4 rows repeated: only ties
    # tell it from a weak encoder)
    judged = [{int(j): 1 for j in np.argsort(row, kind="stable")[:3]} for row in q @ c.T]
    got = exact_search(q, c, judged, depth=10)
    assert got.backend == "faiss"
    assert_same_result(exact_search(q, c, judged, depth=10, backend="torch", device="cpu"), got)
