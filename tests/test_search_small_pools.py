"""exact_search's routes on small CPU pools agree bitwise — dense canonical rows, the list and
row-scan routes, tiny blocks — and match a brute-force sort of every canonical score, with exact
ties (duplicated, quantised, constant, near-degenerate embeddings) and judged counts on both sides of
the dense boundary."""

from __future__ import annotations

import numpy as np
import pytest

from mrbench.retrieval import search
from mrbench.retrieval.search import canonical_scores, exact_search

torch = pytest.importorskip("torch")


def assert_same(a, b) -> None:
    np.testing.assert_array_equal(a.topk_indices, b.topk_indices)
    np.testing.assert_array_equal(a.topk_scores.view(np.int32), b.topk_scores.view(np.int32))
    for f in ("judged_ranks", "judged_scores"):
        x, y = getattr(a, f), getattr(b, f)
        np.testing.assert_array_equal(x.ptr, y.ptr)
        np.testing.assert_array_equal(x.keys, y.keys)
        assert x.values.dtype == y.values.dtype
        if x.values.dtype == np.float32:
            np.testing.assert_array_equal(x.values.view(np.int32), y.values.view(np.int32))
        else:
            np.testing.assert_array_equal(x.values, y.values)
    np.testing.assert_array_equal(a.n_ties, b.n_ties)


def data(kind: str, rng: np.random.Generator, n_q: int, n: int, d: int) -> tuple[np.ndarray, np.ndarray]:
    c = rng.standard_normal((n, d)).astype(np.float32)
    q = rng.standard_normal((n_q, d)).astype(np.float32)
    if kind == "concentrated":  # a near-degenerate encoder: every score within ~1e-3 (MRBench-Synth's tiny model)
        c = (1.0 + 1e-3 * c).astype(np.float32)
        q = (1.0 + 1e-3 * q).astype(np.float32)
    elif kind == "duplicated":  # exact ties: candidates repeated
        c = c[rng.integers(0, max(1, n // 8), n)]
    elif kind == "quantised":  # many exact ties from coarse values
        c = np.round(c * 2) / 2
        q = np.round(q * 2) / 2
    elif kind == "identical":  # constant encoder
        c = np.repeat(c[:1], n, axis=0)
    c /= np.maximum(np.linalg.norm(c, axis=1, keepdims=True), 1e-30)
    q /= np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-30)
    return np.ascontiguousarray(q, dtype=np.float32), np.ascontiguousarray(c, dtype=np.float32)


def judged_of(rng: np.random.Generator, n_q: int, n: int, counts: np.ndarray) -> list[dict[int, int]]:
    return [{int(r): int(rng.integers(1, 4)) for r in rng.choice(n, size=int(m), replace=False)} for m in counts]


@pytest.mark.parametrize("kind", ["random", "concentrated", "duplicated", "quantised", "identical"])
@pytest.mark.parametrize("n,depth", [(97, 10), (400, 100), (333, 333)])
def test_dense_and_other_routes_agree(kind, n, depth, monkeypatch):
    rng = np.random.default_rng(hash((kind, n)) % 2**32)
    n_q = 23
    q, c = data(kind, rng, n_q, n, 16)
    # judged counts on both sides of the dense boundary (N / _DENSE_JUDGED), and empty queries
    edge = -(-n // search._DENSE_JUDGED)
    counts = np.array([0, 1, edge - 1, edge, edge + 1, n // 2, n] * 4)[:n_q]
    judged = judged_of(rng, n_q, n, counts)
    kw = dict(depth=depth, relevance_level=2, backend="torch", device="cpu")
    fast = exact_search(q, c, judged, **kw)
    # tiny chunks
    assert_same(fast, exact_search(q, c, judged, max_chunk_bytes=1 << 16, **kw))
    # no query dense by its judged count: list and row-scan routes (dense only for huge ties)
    monkeypatch.setattr(search, "_DENSE_JUDGED", 10**9)
    assert_same(fast, exact_search(q, c, judged, **kw))
    # every query dense
    monkeypatch.setattr(search, "_DENSE_JUDGED", 1)
    assert_same(fast, exact_search(q, c, judged, **kw))


def test_dense_cpu_matches_brute_force():
    """Ranks and top lists of dense queries against a direct sort of every canonical score."""
    rng = np.random.default_rng(7)
    n_q, n, depth = 9, 120, 15
    q, c = data("quantised", rng, n_q, n, 8)
    judged = judged_of(rng, n_q, n, np.full(n_q, n // 3))
    res = exact_search(q, c, judged, depth=depth, relevance_level=2, backend="torch", device="cpu")
    qt, ct = torch.from_numpy(q), torch.from_numpy(c)
    for i in range(n_q):
        s = canonical_scores(qt, ct, np.full(n, i), np.arange(n))
        grade = np.array([judged[i].get(j, 0) for j in range(n)])
        order = sorted(range(n), key=lambda j: (-float(s[j]), grade[j], j))
        assert res.topk_indices[i].tolist() == order[:depth]
        np.testing.assert_array_equal(res.topk_scores[i].view(np.int32), s[order[:depth]].view(np.int32))
        pos = {j: p + 1 for p, j in enumerate(order)}
        assert res.judged_ranks[i] == {j: pos[j] for j in judged[i]}
        rel = [j for j, g in judged[i].items() if g >= 2]
        best = min(rel, key=lambda j: pos[j]) if rel else None
        ties = 0 if best is None else int(((s == s[best]) & (grade < 2)).sum())
        assert res.n_ties[i] == ties


def test_small_search_restores_threads():
    before = torch.get_num_threads()
    rng = np.random.default_rng(3)
    q, c = data("random", rng, 5, 50, 8)
    exact_search(q, c, judged_of(rng, 5, 50, np.full(5, 20)), depth=5, backend="torch", device="cpu")
    assert torch.get_num_threads() == before
