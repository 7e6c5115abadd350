"""Per-query mappings as CSR arrays: the list-of-dicts behaviour, and the array paths of judged
grades, exact search, judged matrices and the grain-sensitivity ranks against the dict paths."""

from __future__ import annotations

import numpy as np
import pytest

from mrbench.data.csr import CsrMappings
from mrbench.metrics.ranking import judged_matrix, score_queries
from mrbench.retrieval.search import SearchError, exact_search

DICTS = [{3: 1, 0: 2}, {}, {7: 5}, {1: 1, 2: 1, 4: 3}]


def test_reads_as_a_list_of_dicts():
    m = CsrMappings.from_mappings(DICTS, dtype=np.int64)
    assert len(m) == 4 and m[0] == {3: 1, 0: 2} and m[-1] == DICTS[-1] and m[1] == {}
    assert m[1:3] == DICTS[1:3] and list(m) == DICTS and m == DICTS and DICTS == m
    assert m != DICTS[:3] and m != [{3: 1, 0: 9}, {}, {7: 5}, {1: 1, 2: 1, 4: 3}]
    assert all(type(k) is int and type(v) is int for d in m for k, v in d.items())
    with pytest.raises(IndexError):
        m[4]
    assert "4 queries, 6 pairs" in repr(m)
    assert m.lengths.tolist() == [2, 0, 1, 3] and m.query_of().tolist() == [0, 0, 2, 3, 3, 3]
    assert m.select(m.values >= 2) == [{0: 2}, {}, {7: 5}, {4: 3}]
    assert m.take(np.array([3, 0, 3])) == [DICTS[3], DICTS[0], DICTS[3]]
    assert m.take(np.array([], dtype=np.int64)) == []
    assert m.max_values().tolist() == [2.0, -np.inf, 5.0, 3.0]
    assert m.with_values(np.arange(6)) == [{3: 0, 0: 1}, {}, {7: 2}, {1: 3, 2: 4, 4: 5}]
    f = CsrMappings(m.ptr, m.keys, m.values.astype(np.float32) / 2)
    assert f[0] == {3: 0.5, 0: 1.0} and type(f[0][3]) is float
    for ptr in ([1, 2], [0, 3, 2], [0, 5]):
        with pytest.raises(ValueError):
            CsrMappings(np.array(ptr), np.zeros(2, np.int64), np.zeros(2))
    with pytest.raises(ValueError, match="integer ptr and keys"):
        CsrMappings(np.array([0, 1]), np.array([1.7]), np.array([1]))
    assert CsrMappings(np.array([0]), np.array([]), np.array([])) == [] and CsrMappings([0, 0], [], []) == [{}]


def _task_like(seed: int = 0):
    """A benchmark task with graded qrels in arbitrary order, some grade-0 entries and a query without qrels."""
    from mrbench.data.schema import Candidate, Query, Task

    rng = np.random.default_rng(seed)
    cands = [Candidate(id=f"c{i}", text=f"t{i}") for i in range(50)]
    queries = [Query(id=f"q{i}", text=f"q{i}") for i in range(12)]
    qrels = {}
    for q in queries[:-1]:
        picked = rng.choice(50, int(rng.integers(1, 15)), replace=False)
        qrels[q.id] = {f"c{int(c)}": int(rng.integers(0, 4)) for c in picked}
    qrels["q0"]["c1"] = 2
    return Task(name="t", query_modality="text", candidate_modality="text", queries=queries, candidates=cands,
                qrels=qrels)


def test_judged_grades_matches_the_dict_definition():
    from mrbench.pipeline import judged_grades

    task = _task_like()
    index = task.candidate_index()
    want = [{index[d]: g for d, g in task.qrels.get(q.id, {}).items() if g > 0} for q in task.queries]
    got = judged_grades(task)
    assert isinstance(got, CsrMappings) and got == want
    for a, b in zip(got.ptr[:-1], got.ptr[1:]):
        assert (np.diff(got.keys[a:b]) > 0).all()  # ascending within a query: exact_search's layout


def test_candidate_index_of_some_ids_is_the_whole_map_restricted():
    """``candidate_index(ids)`` (what judged_grades asks for: the judged ids only) equals the whole
    map restricted to ``ids``: a repeated id maps to its last row, an id that is no candidate is absent."""
    task = _task_like()
    task.candidates.append(type(task.candidates[0])(id="c3", text="again"))  # c3 twice: its last row
    full = task.candidate_index()
    for ids in (["c3", "c7", "nope"], {"c0"}, frozenset(), (c.id for c in task.candidates[::7])):
        ids = list(ids) if not isinstance(ids, (set, frozenset)) else ids
        assert task.candidate_index(ids) == {k: full[k] for k in ids if k in full}
    assert task.candidate_index(["c3"]) == {"c3": len(task.candidates) - 1}


def _data(seed: int = 1, n: int = 400, q: int = 30, d: int = 8):
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((n, d)).astype(np.float32)
    c[10:20] = c[5]  # exact ties
    qq = rng.standard_normal((q, d)).astype(np.float32)
    judged = []
    for i in range(q):
        rows = rng.choice(n, int(rng.integers(0, 60)), replace=False)
        judged.append({int(r): int(rng.integers(0, 4)) for r in rows})  # unsorted keys, some grade 0
    judged[0].update({5: 1, 12: 2, 15: 0})
    return qq, c, judged


@pytest.mark.parametrize("backend", ["torch", "faiss"])
def test_exact_search_reads_csr_judged_like_dicts(backend):
    q, c, judged = _data()
    ref = exact_search(q, c, judged, depth=20, backend=backend)
    csr = CsrMappings.from_mappings(judged, dtype=np.int64)  # keys unsorted, grade-0 entries kept
    got = exact_search(q, c, csr, depth=20, backend=backend)
    assert got.judged_ranks == ref.judged_ranks and got.judged_scores == ref.judged_scores
    assert np.array_equal(got.topk_indices, ref.topk_indices) and np.array_equal(got.n_ties, ref.n_ties)
    assert [dict(r) for r in ref.judged_ranks] == [{k: v for k, v in sorted(r.items())} for r in ref.judged_ranks]
    want = [{k: v for k, v in j.items() if v > 0} for j in judged]
    assert [set(r) for r in ref.judged_ranks] == [set(j) for j in want]


def test_csr_judged_errors_name_the_query():
    q, c, _ = _data()
    bad_row = CsrMappings(np.array([0, 1] + [1] * 29), np.array([400]), np.array([1]))
    with pytest.raises(SearchError, match=r"judged\[0\] refers to candidate row 400"):
        exact_search(q, c, bad_row)
    dup = CsrMappings(np.array([0, 0, 2] + [2] * 28), np.array([7, 7]), np.array([1, 2]))
    with pytest.raises(SearchError, match=r"judged\[1\] lists candidate row 7 twice"):
        exact_search(q, c, dup)
    floats = CsrMappings(np.array([0, 1] + [1] * 29), np.array([3]), np.array([1.5]))
    with pytest.raises(SearchError, match="non-integer grades"):
        exact_search(q, c, floats)
    neg = CsrMappings(np.array([0, 0, 0, 1] + [1] * 27), np.array([3]), np.array([-1]))
    with pytest.raises(SearchError, match=r"judged\[2\] has a negative grade"):
        exact_search(q, c, neg)


def test_judged_matrix_and_scores_from_arrays_equal_the_dict_path():
    from mrbench.metrics import ranking

    q, c, judged = _data(2)
    csr = CsrMappings.from_mappings(judged, dtype=np.int64)
    res = exact_search(q, c, csr, depth=10)
    grades = csr.select(csr.values > 0)
    order = np.lexsort((grades.keys, grades.query_of()))  # exact_search's layout: rows ascending
    grades = CsrMappings(grades.ptr, grades.keys[order], grades.values[order])
    assert ranking._judged_flat_csr(res.judged_ranks, grades) is not None  # the array path is taken
    assert ranking._judged_flat_csr(res.judged_ranks, csr) is None  # zeros dropped, but keys unsorted
    r_arr, g_arr = judged_matrix(res.judged_ranks, grades)
    r_ref, g_ref = judged_matrix(list(res.judged_ranks), list(grades))
    assert np.array_equal(r_arr, r_ref) and np.array_equal(g_arr, g_ref)
    df = score_queries(res.judged_ranks, grades, ks=(1, 5, 10), relevance_level=2)
    ref = score_queries(list(res.judged_ranks), judged, ks=(1, 5, 10), relevance_level=2)
    assert df.equals(ref)


def test_first_relevant_ranks_array_and_dict_paths():
    from mrbench.pipeline import _first_relevant_ranks

    q, c, judged = _data(3)
    csr = CsrMappings.from_mappings(judged, dtype=np.int64)
    res = exact_search(q, c, csr, depth=5)
    level = 2
    want_q = [i for i, j in enumerate(judged) if any(g >= level for g in j.values())]
    want = [min(r for d, r in res.judged_ranks[i].items() if judged[i][d] >= level) for i in want_q]
    sorted_grades = res.judged_ranks.with_values(np.array([judged[i][k] for i, k in zip(
        res.judged_ranks.query_of().tolist(), res.judged_ranks.keys.tolist())]))
    for grades in (sorted_grades, csr):  # same layout as the ranks (arrays) / not (dicts)
        assert _first_relevant_ranks(res.judged_ranks, grades, level, np.array(want_q)).tolist() == want


def test_drop_one_variants_reads_csr_like_dicts():
    from mrbench.data.registry import load_benchmark
    from mrbench.grains.masking import drop_one_variants
    from mrbench.pipeline import judged_grades

    task = load_benchmark("mrbench-synth-tiny").task("t2i")
    judged = judged_grades(task)
    judged = judged.select(~((judged.query_of() < 2) & (judged.values >= task.relevance_level)))
    assert (judged.max_values() < task.relevance_level).tolist()[:3] == [True, True, False]  # 2 skipped
    a, oa = drop_one_variants(task, judged)
    b, ob = drop_one_variants(task, list(judged))
    assert oa == ob and [q.id for q in a] == [q.id for q in b] and oa
