"""Cross-check of our ranks + metrics against trec_eval (pytrec_eval) on random tied runs.

How the comparison is set up (pytrec-eval-terrier 0.5.x quirks, found empirically):

* trec_eval ignores the rank column and sorts by score, breaking score ties by docid
  (descending). We therefore hand it our pessimistic order with scores made strictly decreasing by
  position (``N - position``), so it cannot reorder anything.
* ``relevance_level`` is honoured by ``success``, ``recall`` and ``recip_rank`` but **not** by
  ``ndcg_cut``, which always uses every positive grade as gain — our ``ndcg@k`` convention too.
* ``recip_rank`` accepts no cutoff (``recip_rank.5`` is silently computed uncut), so ``mrr@k``
  is compared with ``recip_rank`` on the run truncated to its first ``k`` documents.
* ``recall`` needs explicit cutoffs (``recall.1,5,10``; the default list starts at 5).
* A query with judgements but no relevant document is scored 0 by trec_eval (and counts in its
  averages); we drop such queries (NaN + ``dropped``), so they are compared only for that.
* Queries absent from the qrels are not evaluated at all by trec_eval.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from mrbench.metrics.ranking import score_queries
from mrbench.retrieval.search import exact_search

pytrec_eval = pytest.importorskip("pytrec_eval")

KS = (1, 5, 10)
N_RUNS = 1200
BACKENDS = ("torch", "faiss") if importlib.util.find_spec("faiss") else ("torch",)
MEASURES = {"success.1,5,10", "recall.1,5,10", "ndcg_cut.1,5,10", "recip_rank"}


def _random_run(rng: np.random.Generator):
    """Quantised vectors (many exact ties) and graded qrels with grades below the relevance level."""
    n_q = int(rng.integers(1, 9))
    n = int(rng.integers(1, 40))
    d = int(rng.integers(1, 4))
    levels = np.array([-1.0, -0.5, 0.0, 0.5, 1.0], dtype=np.float32)
    q = levels[rng.integers(0, 5, (n_q, d))]
    c = levels[rng.integers(0, 5, (n, d))]
    rl = int(rng.integers(1, 3))
    judged = []
    for _ in range(n_q):
        m = int(rng.integers(0, min(n, 8) + 1))
        rows = rng.choice(n, size=m, replace=False)
        judged.append({int(r): int(rng.integers(1, 4)) for r in rows})
    return q, c, judged, rl


def _qrels_and_ids(judged, n):
    dids = [f"d{i:03d}" for i in range(n)]
    qrels = {f"q{i}": {dids[r]: g for r, g in j.items()} for i, j in enumerate(judged) if j}
    return dids, qrels


def test_metrics_match_trec_eval_on_random_tied_runs():
    rng = np.random.default_rng(20240607)
    n_compared = n_dropped = 0
    for run_no in range(N_RUNS):
        q, c, judged, rl = _random_run(rng)
        n = c.shape[0]
        backend = BACKENDS[run_no % len(BACKENDS)]
        res = exact_search(q, c, judged, depth=n, relevance_level=rl, backend=backend, device="cpu")
        ours = score_queries(res.judged_ranks, judged, ks=KS, relevance_level=rl, query_ids=[f"q{i}" for i in range(len(judged))])
        dids, qrels = _qrels_and_ids(judged, n)
        if not qrels:
            assert ours["dropped"].all()
            continue
        # our pessimistic order, scores strictly decreasing by position
        run = {f"q{i}": {dids[r]: float(n - p) for p, r in enumerate(res.topk_indices[i])} for i in range(len(judged))}
        trec = pytrec_eval.RelevanceEvaluator(qrels, MEASURES, relevance_level=rl).evaluate(run)
        cut = {k: {qid: dict(list(docs.items())[:k]) for qid, docs in run.items()} for k in KS}
        rr_cut = {k: pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"}, relevance_level=rl).evaluate(cut[k]) for k in KS}
        for qid, t in trec.items():
            row = ours.loc[qid]
            if row["dropped"]:
                # trec_eval scores a query without relevant documents 0; we drop it
                n_dropped += 1
                assert t["recip_rank"] == 0.0 and t["success_10"] == 0.0
                assert np.isnan(row["hit@1"]) and np.isnan(row["ndcg@10"])
                continue
            n_compared += 1
            for k in KS:
                ctx = (run_no, qid, k)
                assert row[f"hit@{k}"] == t[f"success_{k}"], ctx
                assert row[f"recall@{k}"] == pytest.approx(t[f"recall_{k}"], abs=1e-12), ctx
                assert row[f"ndcg@{k}"] == pytest.approx(t[f"ndcg_cut_{k}"], abs=1e-12), ctx
                assert row[f"mrr@{k}"] == pytest.approx(rr_cut[k][qid]["recip_rank"], abs=1e-12), ctx
            assert 1.0 / row["first_rank"] == pytest.approx(t["recip_rank"], abs=1e-12)
        # queries trec_eval did not evaluate are exactly those without judgements
        assert set(trec) == set(qrels)
    assert n_compared > 3000 and n_dropped > 100  # the random runs exercise both paths


def test_pessimistic_metrics_never_exceed_trec_eval_on_raw_tied_scores():
    """trec_eval on the raw (tied) scores picks one tie order; ours is the worst one."""
    rng = np.random.default_rng(7)
    strictly_lower = 0
    for _ in range(300):
        q, c, judged, rl = _random_run(rng)
        n = c.shape[0]
        res = exact_search(q, c, judged, depth=n, relevance_level=rl, backend="torch", device="cpu")
        ours = score_queries(res.judged_ranks, judged, ks=KS, relevance_level=rl, query_ids=[f"q{i}" for i in range(len(judged))])
        dids, qrels = _qrels_and_ids(judged, n)
        if not qrels:
            continue
        run = {
            f"q{i}": {dids[r]: float(s) for r, s in zip(res.topk_indices[i], res.topk_scores[i])} for i in range(len(judged))
        }
        trec = pytrec_eval.RelevanceEvaluator(qrels, MEASURES, relevance_level=rl).evaluate(run)
        for qid, t in trec.items():
            row = ours.loc[qid]
            if row["dropped"]:
                continue
            for k in KS:
                assert row[f"hit@{k}"] <= t[f"success_{k}"]
                assert row[f"recall@{k}"] <= t[f"recall_{k}"] + 1e-12
                assert row[f"ndcg@{k}"] <= t[f"ndcg_cut_{k}"] + 1e-12
            assert 1.0 / row["first_rank"] <= t["recip_rank"] + 1e-12
            strictly_lower += int(row["hit@1"] < t["success_1"])
    assert strictly_lower > 0  # ties really do change the outcome in these runs
