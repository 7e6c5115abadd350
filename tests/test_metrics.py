"""Per-query metrics (hand-computed examples) and aggregation by task / grain count / grain type."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from mrbench.errors import MrbenchError
from mrbench.metrics.aggregate import (
    ALL_TASKS,
    AggregationError,
    by_grain_count,
    by_grain_type,
    by_task,
    grain_bucket_labels,
    macro,
    metric_columns,
)
from mrbench.metrics.ranking import (
    MetricInputError,
    first_rank,
    hit_at_k,
    judged_matrix,
    mrr_at_k,
    n_relevant,
    ndcg_at_k,
    recall_at_k,
    score_queries,
)

L2 = math.log2

# Query A: grades {a:1 at rank 3, b:2 at rank 7, c:1 never ranked}
# Query B (relevance_level 2 matters): {x:1 at rank 1, y:2 at rank 2}
# Query C: only a grade-1 candidate -> dropped at relevance_level 2
RANKS = [{"a": 3, "b": 7, "zz": 1}, {"x": 1, "y": 2}, {"u": 1}, {}]
GRADES = [{"a": 1, "b": 2, "c": 1, "n": 0}, {"x": 1, "y": 2}, {"u": 1}, {}]


def mats():
    return judged_matrix(RANKS, GRADES)


def test_judged_matrix_padding_and_ignored_entries():
    r, g = mats()
    assert r.shape == g.shape == (4, 3)
    # grade-0 'n' dropped, ungraded 'zz' ignored, unranked 'c' -> inf; padding inf / 0
    assert r[0].tolist() == [3.0, 7.0, math.inf] and g[0].tolist() == [1.0, 2.0, 1.0]
    assert r[2].tolist() == [1.0, math.inf, math.inf] and g[2].tolist() == [1.0, 0.0, 0.0]
    assert g[3].tolist() == [0.0, 0.0, 0.0]


def test_hit_at_k_hand():
    r, g = mats()
    np.testing.assert_array_equal(hit_at_k(r, g, 1), [0.0, 1.0, 1.0, np.nan])
    np.testing.assert_array_equal(hit_at_k(r, g, 3), [1.0, 1.0, 1.0, np.nan])
    # relevance level 2: only grade-2 candidates are relevant
    np.testing.assert_array_equal(hit_at_k(r, g, 1, relevance_level=2), [0.0, 0.0, np.nan, np.nan])
    np.testing.assert_array_equal(hit_at_k(r, g, 2, relevance_level=2), [0.0, 1.0, np.nan, np.nan])
    np.testing.assert_array_equal(hit_at_k(r, g, 7, relevance_level=2), [1.0, 1.0, np.nan, np.nan])


def test_recall_at_k_hand():
    r, g = mats()
    np.testing.assert_allclose(recall_at_k(r, g, 5), [1 / 3, 1.0, 1.0, np.nan])
    np.testing.assert_allclose(recall_at_k(r, g, 10), [2 / 3, 1.0, 1.0, np.nan])  # 'c' unranked still counts
    np.testing.assert_allclose(recall_at_k(r, g, 5, relevance_level=2), [0.0, 1.0, np.nan, np.nan])


def test_mrr_at_k_hand():
    r, g = mats()
    np.testing.assert_allclose(mrr_at_k(r, g, 1), [0.0, 1.0, 1.0, np.nan])
    np.testing.assert_allclose(mrr_at_k(r, g, 5), [1 / 3, 1.0, 1.0, np.nan])
    np.testing.assert_allclose(mrr_at_k(r, g, 5, relevance_level=2), [0.0, 0.5, np.nan, np.nan])
    np.testing.assert_allclose(mrr_at_k(r, g, 10, relevance_level=2), [1 / 7, 0.5, np.nan, np.nan])


def test_ndcg_at_k_hand():
    r, g = mats()
    idcg_a = 2 / L2(2) + 1 / L2(3) + 1 / L2(4)
    idcg_b2 = 2 / L2(2) + 1 / L2(3)
    expected5 = [(1 / L2(4)) / idcg_a, (1 / L2(2) + 2 / L2(3)) / idcg_b2, 1.0, np.nan]
    np.testing.assert_allclose(ndcg_at_k(r, g, 5), expected5)
    expected10 = [(1 / L2(4) + 2 / L2(8)) / idcg_a, expected5[1], 1.0, np.nan]
    np.testing.assert_allclose(ndcg_at_k(r, g, 10), expected10)
    # k=1: query B ranks the grade-1 candidate first; IDCG@1 uses the grade-2 one
    np.testing.assert_allclose(ndcg_at_k(r, g, 1), [0.0, 0.5, 1.0, np.nan])
    # relevance level only drops queries; gains below it still count (trec_eval convention)
    np.testing.assert_allclose(ndcg_at_k(r, g, 5, relevance_level=2), [expected5[0], expected5[1], np.nan, np.nan])


def test_first_rank_and_n_relevant_hand():
    r, g = mats()
    np.testing.assert_array_equal(first_rank(r, g), [3.0, 1.0, 1.0, np.nan])
    np.testing.assert_array_equal(first_rank(r, g, relevance_level=2), [7.0, 2.0, np.nan, np.nan])
    np.testing.assert_array_equal(n_relevant(r, g), [3, 2, 1, 0])
    np.testing.assert_array_equal(n_relevant(r, g, relevance_level=2), [1, 1, 0, 0])
    # relevant candidates that were never ranked: first_rank inf, metrics 0 (not dropped)
    r2, g2 = judged_matrix([{}], [{"a": 1}])
    assert first_rank(r2, g2)[0] == math.inf
    assert hit_at_k(r2, g2, 10)[0] == 0.0 and mrr_at_k(r2, g2, 10)[0] == 0.0 and ndcg_at_k(r2, g2, 10)[0] == 0.0


def test_score_queries_columns_and_values():
    df = score_queries(RANKS, GRADES, ks=(1, 5), relevance_level=2, query_ids=["A", "B", "C", "D"])
    assert list(df.columns) == [
        "hit@1", "hit@5", "recall@1", "recall@5", "mrr@1", "mrr@5", "ndcg@1", "ndcg@5",
        "first_rank", "n_relevant", "dropped",
    ]  # fmt: skip
    assert df.index.name == "qid" and list(df.index) == ["A", "B", "C", "D"]
    assert df["dropped"].tolist() == [False, False, True, True]
    assert df.loc[["C", "D"], metric_columns(df)].isna().all().all()
    assert df.loc["B", "hit@5"] == 1.0 and df.loc["B", "mrr@5"] == 0.5 and df.loc["B", "hit@1"] == 0.0
    assert df.loc["A", "first_rank"] == 7.0 and df.loc["A", "n_relevant"] == 1
    assert df["n_relevant"].dtype == np.int64 and df["dropped"].dtype == bool
    default = score_queries(RANKS, GRADES)
    assert isinstance(default.index, pd.RangeIndex)
    assert [c for c in default.columns if c.startswith("ndcg")] == ["ndcg@1", "ndcg@5", "ndcg@10"]


def test_score_queries_from_exact_search():
    from mrbench.retrieval.search import exact_search

    c = np.array([[0.5], [0.9], [0.5], [0.5], [0.1]], dtype=np.float32)
    q = np.array([[1.0]], dtype=np.float32)
    grades = [{2: 1, 4: 2}]
    res = exact_search(q, c, grades, depth=5, backend="torch", device="cpu")
    df = score_queries(res.judged_ranks, grades, ks=(1, 4, 5))
    # rank of row 2 is 4 (two non-relevant ties go first), row 4 is 5
    assert df.loc[0, "first_rank"] == 4.0
    assert df.loc[0, "hit@1"] == 0.0 and df.loc[0, "hit@4"] == 1.0
    assert df.loc[0, "recall@4"] == 0.5 and df.loc[0, "recall@5"] == 1.0
    assert df.loc[0, "mrr@4"] == 0.25


@pytest.mark.parametrize(
    "call, fragment",
    [
        (lambda: judged_matrix([{}], [{}, {}]), "one mapping per query"),
        (lambda: judged_matrix([{}], [{"a": -1}]), "negative grade"),
        (lambda: judged_matrix([{"a": 0}], [{"a": 1}]), "1-based"),
        (lambda: score_queries([{}], [{}], ks=()), "ks is empty"),
        (lambda: score_queries([{}], [{}], ks=(0,)), "positive integer"),
        (lambda: score_queries([{}], [{}], ks=(5, 5)), "duplicates"),
        (lambda: score_queries([{}], [{}], relevance_level=0), "relevance_level"),
        (lambda: score_queries([{}], [{}], query_ids=["a", "b"]), "query ids"),
        (lambda: hit_at_k(np.ones((2, 2)), np.ones((2, 3)), 1), "aligned"),
        (lambda: hit_at_k(np.ones((2, 2)), np.ones((2, 2)), 0), "cutoff"),
    ],
)
def test_metric_input_errors(call, fragment):
    with pytest.raises(MetricInputError) as exc:
        call()
    assert fragment in str(exc.value)
    assert issubclass(MetricInputError, MrbenchError)


# ------------------------------------------------------------------------------------------------
# aggregation
# ------------------------------------------------------------------------------------------------


def per_query_table() -> pd.DataFrame:
    """Two tasks, hand-made metrics. t2 has one dropped query."""
    rows = [
        # task, qid, n_grains, grain_types, ties, hit@1, ndcg@1, first_rank, dropped
        ("t1", "a", 2, ["entity", "attribute"], 0, 1.0, 1.0, 1.0, False),
        ("t1", "b", 3, ["entity", "entity", "relation"], 2, 0.0, 0.5, 3.0, False),
        ("t1", "c", 6, ["scene"], 0, 0.0, 0.0, 10.0, False),
        ("t2", "d", 2, ["entity", "attribute"], 1, 1.0, 1.0, 1.0, False),
        ("t2", "e", 1, ["entity"], 0, np.nan, np.nan, np.nan, True),
    ]
    cols = ["task", "qid", "n_grains", "grain_types", "ties", "hit@1", "ndcg@1", "first_rank", "dropped"]
    return pd.DataFrame(rows, columns=cols)


def test_by_task_hand():
    out = by_task(per_query_table()).set_index("task")
    assert list(out.columns) == [
        "n_queries", "n_dropped", "hit@1", "ndcg@1", "mean_rank", "median_rank", "queries_with_ties", "ties",
    ]  # fmt: skip
    assert out.loc["t1", "n_queries"] == 3 and out.loc["t1", "n_dropped"] == 0
    assert out.loc["t1", "hit@1"] == pytest.approx(1 / 3)
    assert out.loc["t1", "ndcg@1"] == pytest.approx(0.5)
    assert out.loc["t1", "mean_rank"] == pytest.approx(14 / 3) and out.loc["t1", "median_rank"] == 3.0
    assert out.loc["t1", "queries_with_ties"] == 1 and out.loc["t1", "ties"] == 2
    assert out.loc["t2", "n_queries"] == 1 and out.loc["t2", "n_dropped"] == 1
    assert out.loc["t2", "hit@1"] == 1.0 and out.loc["t2", "mean_rank"] == 1.0
    assert out.loc["t2", "ties"] == 1


def test_by_grain_count_hand():
    out = by_grain_count(per_query_table())
    assert grain_bucket_labels((2, 3, 4, 5)) == ["<2", "2", "3", "4", "5+"]
    got = {(t, str(b)): (n, d, h) for t, b, n, d, h in out[["task", "grain_count", "n_queries", "n_dropped", "hit@1"]].itertuples(index=False)}
    assert got[("t1", "2")] == (1, 0, 1.0)
    assert got[("t1", "3")] == (1, 0, 0.0)
    assert got[("t1", "5+")] == (1, 0, 0.0)  # 6 grains lands in the open bucket
    assert got[("t2", "2")] == (1, 0, 1.0)
    assert got[("t2", "<2")][:2] == (0, 1) and math.isnan(got[("t2", "<2")][2])
    # pooled rows: micro average over the queries of every task
    assert got[(ALL_TASKS, "2")] == (2, 0, 1.0)
    assert got[(ALL_TASKS, "3")] == (1, 0, 0.0)
    assert out["task"].tolist()[-1] == ALL_TASKS and out["task"].tolist()[0] == "t1"
    assert ("t1", "4") not in got  # empty buckets are not listed
    # wider buckets get range labels
    assert grain_bucket_labels((1, 3, 6)) == ["<1", "1-2", "3-5", "6+"]
    wide = by_grain_count(per_query_table(), buckets=(1, 3, 6))
    assert set(wide.loc[wide.task == "t1", "grain_count"].astype(str)) == {"1-2", "3-5", "6+"}


def test_by_grain_type_hand():
    out = by_grain_type(per_query_table())
    got = {(t, g): (n, d, h) for t, g, n, d, h in out[["task", "grain_type", "n_queries", "n_dropped", "hit@1"]].itertuples(index=False)}
    # query b has entity twice: counts once under entity
    assert got[("t1", "entity")] == (2, 0, 0.5)
    assert got[("t1", "attribute")] == (1, 0, 1.0)
    assert got[("t1", "relation")] == (1, 0, 0.0)
    assert got[("t1", "scene")] == (1, 0, 0.0)
    assert got[("t2", "entity")][:2] == (1, 1)
    assert got[(ALL_TASKS, "entity")] == (3, 1, pytest.approx(2 / 3))
    assert got[(ALL_TASKS, "attribute")] == (2, 0, 1.0)


def test_macro_weighs_tasks_equally():
    per_task = by_task(per_query_table())
    m = macro(per_task)
    assert len(m) == 1 and m.loc[0, "task"] == "macro"
    assert m.loc[0, "n_tasks"] == 2 and m.loc[0, "n_queries"] == 4 and m.loc[0, "n_dropped"] == 1
    assert m.loc[0, "hit@1"] == pytest.approx((1 / 3 + 1.0) / 2)  # micro would be 2/4
    assert m.loc[0, "median_rank"] == pytest.approx((3.0 + 1.0) / 2)
    assert m.loc[0, "ties"] == 3 and m.loc[0, "queries_with_ties"] == 2
    # a task where every query was dropped does not pull the average
    allgone = pd.concat([per_query_table(), per_query_table().assign(task="t3", dropped=True)], ignore_index=True)
    m3 = macro(by_task(allgone))
    assert m3.loc[0, "n_tasks"] == 2 and m3.loc[0, "hit@1"] == pytest.approx((1 / 3 + 1.0) / 2)
    assert m3.loc[0, "n_dropped"] == 1 + 5


def test_aggregation_from_score_queries_end_to_end():
    df = score_queries(RANKS, GRADES, ks=(1, 5), query_ids=["A", "B", "C", "D"]).reset_index()
    df["task"] = "t"
    df["n_grains"] = [2, 3, 4, 0]
    df["grain_types"] = [["entity"], ["attribute"], [], []]
    df["ties"] = [0, 0, 0, 0]
    out = by_task(df)
    assert out.loc[0, "n_queries"] == 3 and out.loc[0, "n_dropped"] == 1
    assert out.loc[0, "hit@1"] == pytest.approx(2 / 3)
    gt = by_grain_type(df)
    assert set(gt["grain_type"]) == {"entity", "attribute"}


def test_aggregation_errors():
    with pytest.raises(AggregationError, match="lacks column"):
        by_task(per_query_table().drop(columns=["ties"]))
    with pytest.raises(AggregationError, match="reserved"):
        by_task(per_query_table().assign(task="all"))
    with pytest.raises(AggregationError, match="strictly increasing"):
        by_grain_count(per_query_table(), buckets=(3, 2))


def test_score_queries_equals_direct_formulas_on_random_matrices():
    """score_queries shares intermediates between its columns (one sort, one scan of the entries within
    the largest cutoff); each column must equal the metric's definition computed on its own."""
    rng = np.random.default_rng(7)
    q, m = 60, 40
    r = rng.permutation(np.arange(1, q * m + 1)).reshape(q, m).astype(np.float64) % 25 + 1
    r[rng.random((q, m)) < 0.3] = np.inf  # unranked
    g = rng.integers(0, 4, (q, m)).astype(np.float64)
    g[:5] = np.minimum(g[:5], 1)  # at relevance level 2: dropped
    for level in (1, 2):
        rel = g >= level
        kept = rel.any(axis=1)
        first = np.where(rel, r, np.inf).min(axis=1)
        ranks_l = [{j: r[i, j] for j in range(m) if np.isfinite(r[i, j])} for i in range(q)]
        grades_l = [{j: int(g[i, j]) for j in range(m) if g[i, j] > 0} for i in range(q)]
        df = score_queries(ranks_l, grades_l, ks=(10, 1, 3, 50), relevance_level=level)
        for k in (10, 1, 3, 50):
            want = {
                "hit": (rel & (r <= k)).any(axis=1).astype(float),
                "recall": (rel & (r <= k)).sum(axis=1) / np.maximum(rel.sum(axis=1), 1),
                "mrr": np.where(first <= k, 1.0 / first, 0.0),
            }
            gains = np.where(g > 0, g, 0.0)
            dcg = np.array([sum(gains[i, j] / math.log2(r[i, j] + 1) for j in np.argsort(r[i]) if r[i, j] <= k)
                            for i in range(q)])
            ideal = -np.sort(-gains, axis=1)[:, : min(k, m)]
            idcg = (ideal / np.log2(np.arange(2, ideal.shape[1] + 2))).sum(axis=1)
            want["ndcg"] = np.where(idcg > 0, dcg / np.where(idcg > 0, idcg, 1), 0.0)
            for name, w in want.items():
                got = df[f"{name}@{k}"].to_numpy()
                np.testing.assert_allclose(got[kept], w[kept], rtol=1e-12, err_msg=f"{name}@{k} level {level}")
                assert np.isnan(got[~kept]).all()
                single = {"hit": hit_at_k, "recall": recall_at_k, "mrr": mrr_at_k, "ndcg": ndcg_at_k}[name]
                mr, mg = judged_matrix(ranks_l, grades_l)
                np.testing.assert_array_equal(single(mr, mg, k, relevance_level=level), got)
        np.testing.assert_array_equal(df["first_rank"].to_numpy()[kept], first[kept])
        assert df["n_relevant"].tolist() == rel.sum(axis=1).tolist()


def test_ndcg_with_many_distinct_gains_sorts_them():
    """Non-integer gains (more distinct values than the per-grade counting handles) take the sorting
    route of the ideal DCG; both equal the definition."""
    rng = np.random.default_rng(11)
    r = rng.integers(1, 30, (20, 50)).astype(np.float64)
    g = np.round(rng.random((20, 50)) * 4, 3)
    g[g < 1] = 0.0
    for k in (1, 5, 40, 60):
        gains = np.where(g > 0, g, 0.0)
        dcg = np.array([sum(gains[i, j] / math.log2(r[i, j] + 1) for j in range(50) if r[i, j] <= k) for i in range(20)])
        ideal = -np.sort(-gains, axis=1)[:, : min(k, 50)]
        idcg = (ideal / np.log2(np.arange(2, ideal.shape[1] + 2))).sum(axis=1)
        np.testing.assert_allclose(ndcg_at_k(r, g, k), dcg / idcg, rtol=1e-12)


def test_score_queries_does_not_pad_to_the_longest_query():
    """One query judging 200k candidates next to 2,000 short ones: the scores come from the judged
    pairs themselves, not from a [2001, 200k] matrix (6.4 GB for ranks and grades)."""
    import tracemalloc

    from mrbench.data.csr import CsrMappings

    lens = np.r_[200_000, np.full(2000, 3)]
    ptr = np.r_[0, np.cumsum(lens)]
    keys = np.concatenate([np.arange(n) for n in lens])
    grades = CsrMappings(ptr, keys, np.ones(keys.size, dtype=np.int64))
    ranks = grades.with_values(np.concatenate([np.arange(1, n + 1) for n in lens]))
    tracemalloc.start()
    try:
        df = score_queries(ranks, grades, ks=(1, 10))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert df["recall@10"].iloc[0] == 10 / 200_000 and df["recall@10"].iloc[1] == 1.0
    assert df["ndcg@10"].tolist() == [1.0] * 2001
    assert peak < 64 << 20, peak


def test_ndcg_of_an_ideal_ranking_is_exactly_one():
    """DCG and ideal DCG are added term by term in the same order, so an ideal ranking (any grades,
    ties between grades, gains beyond the cutoff) scores 1.0 exactly, not 1 +- 1 ulp."""
    rng = np.random.default_rng(5)
    ranks_l, grades_l = [], []
    for _ in range(300):
        n = int(rng.integers(1, 40))
        g = np.sort(rng.integers(1, 5, n))[::-1]
        cands = rng.permutation(1000)[:n]
        grades_l.append({int(c): int(x) for c, x in zip(cands[::-1], g[::-1])})  # stored in any order
        ranks_l.append({int(c): i + 1 for i, c in enumerate(cands)})  # best gains first
    df = score_queries(ranks_l, grades_l, ks=(1, 3, 10, 50))
    for k in (1, 3, 10, 50):
        assert (df[f"ndcg@{k}"] == 1.0).all(), k
    # non-integer gains (the sorting route), ideal order, ties among them
    g = np.round(rng.random((50, 30)) * 4 + 1, 2)
    g[:, 10:12] = g[:, 9:10]
    g = -np.sort(-g, axis=1)
    r = np.tile(np.arange(1, 31, dtype=np.float64), (50, 1))
    for k in (1, 5, 30):
        assert (ndcg_at_k(r, g, k) == 1.0).all(), k
