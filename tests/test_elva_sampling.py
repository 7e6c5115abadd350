"""Balanced negative sampling (elva_baseline.sampling): counts, thresholds, determinism, small pools."""

from __future__ import annotations

import pytest
import torch

from elva_baseline.sampling import NegativeSample, SamplingConfig, sample_negatives


def _scores(nq: int, nc: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(nq, nc, generator=g)


def _relevant(nq: int, nc: int) -> list[list[int]]:
    return [[q % nc, (3 * q + 1) % nc] for q in range(nq)]


def _check_invariants(sample: NegativeSample, relevant: list[list[int]]) -> None:
    for q, row in enumerate(sample.indices.tolist()):
        got = [i for i in row if i >= 0]
        assert len(got) == len(set(got)), "no duplicates"
        assert not set(got) & set(relevant[q]), "relevant never sampled"
        n = int(sample.n_hard[q] + sample.n_random[q])
        assert len(got) == n
        assert all(i >= 0 for i in row[:n]) and all(i == -1 for i in row[n:]), "padding at the end"


def test_default_counts_and_hard_are_top_scoring() -> None:
    scores, rel = _scores(4, 300), _relevant(4, 300)
    sample = sample_negatives(scores, rel)
    assert sample.indices.shape == (4, 100) and sample.indices.dtype == torch.long
    assert sample.requested == 100
    assert sample.n_hard.tolist() == [50] * 4 and sample.n_random.tolist() == [50] * 4
    assert sample.n_filtered.tolist() == [0] * 4 and sample.n_short.tolist() == [0] * 4
    _check_invariants(sample, rel)
    for q in range(4):
        s = scores[q].clone()
        s[rel[q]] = -1.0
        top = torch.argsort(s, descending=True)[:50].tolist()
        assert sample.indices[q, :50].tolist() == top  # score descending
        hard_min = scores[q, sample.indices[q, :50]].min()
        rand = sample.indices[q, 50:]
        assert (scores[q, rand] <= hard_min).all()


def test_relevant_as_bool_tensor_gives_same_sample() -> None:
    scores, rel = _scores(5, 120), _relevant(5, 120)
    mask = torch.zeros(5, 120, dtype=torch.bool)
    for q, idx in enumerate(rel):
        mask[q, idx] = True
    cfg = SamplingConfig(n_hard=10, n_random=20, seed=7)
    a, b = sample_negatives(scores, rel, cfg), sample_negatives(scores, mask, cfg)
    assert torch.equal(a.indices, b.indices)


def test_relevant_top_scorers_are_excluded() -> None:
    scores = torch.arange(20, dtype=torch.float32).flip(0).unsqueeze(0)  # candidate 0 scores highest
    sample = sample_negatives(scores, [[0, 1, 5]], SamplingConfig(n_hard=4, n_random=0, mode="no_random"))
    assert sample.indices.tolist() == [[2, 3, 4, 6]]


def test_determinism_from_seed() -> None:
    scores, rel = _scores(6, 200), _relevant(6, 200)
    a = sample_negatives(scores, rel, SamplingConfig(seed=3))
    b = sample_negatives(scores, rel, SamplingConfig(seed=3))
    c = sample_negatives(scores, rel, SamplingConfig(seed=4))
    assert torch.equal(a.indices, b.indices)
    assert torch.equal(a.indices[:, :50], c.indices[:, :50])  # hard part does not depend on the seed
    assert not torch.equal(a.indices[:, 50:], c.indices[:, 50:])


def test_random_negatives_cover_the_rest_uniformly() -> None:
    # 1 query, 10 candidates, 1 relevant, 2 hard: the 7 others should all be drawn over many seeds
    scores = torch.linspace(1.0, 0.0, 10).unsqueeze(0)
    seen: set[int] = set()
    for seed in range(30):
        s = sample_negatives(scores, [[0]], SamplingConfig(n_hard=2, n_random=2, seed=seed))
        assert s.indices[0, :2].tolist() == [1, 2]
        seen.update(s.indices[0, 2:].tolist())
    assert seen == set(range(3, 10))


def test_absolute_threshold() -> None:
    scores = torch.tensor([[0.99, 0.97, 0.95, 0.9, 0.8, 0.7, 0.6, 0.5]])
    cfg = SamplingConfig(n_hard=2, n_random=3, threshold_mode="absolute", threshold=0.95, seed=0)
    sample = sample_negatives(scores, [[0]], cfg)
    assert sample.n_filtered.tolist() == [1]  # 0.97 (> 0.95); 0.95 itself is kept; 0.99 is relevant
    assert sample.indices[0, :2].tolist() == [2, 3]
    assert set(sample.indices[0, 2:].tolist()) < {4, 5, 6, 7}
    assert 1 not in sample.indices[0].tolist()  # filtered never sampled, not even at random
    assert sample.n_random.tolist() == [3]


def test_relative_threshold_uses_best_positive() -> None:
    scores = torch.tensor([[0.5, 1.0, 0.97, 0.96, 0.9, 0.8], [0.5, 0.4, 0.45, 0.3, 0.2, 0.1]])
    cfg = SamplingConfig(n_hard=2, n_random=0, mode="no_random", threshold_mode="relative", threshold=0.95)
    sample = sample_negatives(scores, [[0, 1], [0]], cfg)
    # query 0: s_pos = max(0.5, 1.0) = 1.0 -> drop > 0.95: 0.97 and 0.96
    assert sample.n_filtered.tolist() == [2, 0]
    assert sample.indices.tolist() == [[4, 5], [2, 1]]
    with pytest.raises(ValueError, match="query 1 has no relevant"):
        sample_negatives(scores, [[0], []], cfg)


def test_default_filters_only_relevant() -> None:
    scores = torch.tensor([[1.0, 0.999, 0.998, 0.1]])
    sample = sample_negatives(scores, [[0]], SamplingConfig(n_hard=2, n_random=1))
    assert sample.indices.tolist() == [[1, 2, 3]] and sample.n_filtered.tolist() == [0]


def test_small_pools_are_reported() -> None:
    scores = _scores(3, 10)
    rel = [[0, 1], list(range(10)), list(range(7))]
    sample = sample_negatives(scores, rel, SamplingConfig(n_hard=5, n_random=5))
    assert sample.indices.shape == (3, 10)
    assert sample.n_hard.tolist() == [5, 0, 3]
    assert sample.n_random.tolist() == [3, 0, 0]
    assert sample.n_short.tolist() == [2, 10, 7]
    assert sample.indices[1].tolist() == [-1] * 10
    assert sample.mask.sum(dim=1).tolist() == [8, 0, 3]
    summary = sample.summary()
    assert summary["queries_short"] == 3 and summary["missing"] == 19
    _check_invariants(sample, rel)


def test_hard_only_and_no_random() -> None:
    scores, rel = _scores(3, 150), _relevant(3, 150)
    hard_only = sample_negatives(scores, rel, SamplingConfig(mode="hard_only"))
    assert hard_only.indices.shape == (3, 100)
    assert hard_only.n_hard.tolist() == [100] * 3 and hard_only.n_random.tolist() == [0] * 3
    for q in range(3):
        s = scores[q].clone()
        s[rel[q]] = -1.0
        assert hard_only.indices[q].tolist() == torch.argsort(s, descending=True)[:100].tolist()
    no_random = sample_negatives(scores, rel, SamplingConfig(mode="no_random"))
    assert no_random.indices.shape == (3, 50)
    assert torch.equal(no_random.indices, hard_only.indices[:, :50])
    assert no_random.n_random.tolist() == [0] * 3


def test_ties_break_by_candidate_index() -> None:
    scores = torch.full((2, 12), 0.5)
    sample = sample_negatives(scores, [[0], [3]], SamplingConfig(n_hard=4, n_random=0, mode="no_random"))
    assert sample.indices.tolist() == [[1, 2, 3, 4], [0, 1, 2, 4]]


def test_hard_part_matches_a_full_sort_reference_with_many_ties() -> None:
    g = torch.Generator().manual_seed(9)
    scores = torch.randint(0, 6, (40, 30), generator=g).float() / 5  # heavy ties everywhere
    rel = _relevant(40, 30)
    sample = sample_negatives(scores, rel, SamplingConfig(n_hard=7, n_random=0, mode="no_random"))
    for q in range(40):
        pool = [j for j in range(30) if j not in rel[q]]
        want = sorted(pool, key=lambda j: (-scores[q, j].item(), j))[:7]
        assert sample.indices[q].tolist() == want
    partial = sample_negatives(torch.tensor([[0.9, 0.5, 0.5, 0.5, 0.1]]), [[4]], SamplingConfig(n_hard=2, n_random=0))
    assert partial.indices.tolist() == [[0, 1]]


def test_many_queries_span_several_chunks() -> None:
    nq, nc = 600, 40
    scores, rel = _scores(nq, nc, seed=5), _relevant(nq, nc)
    cfg = SamplingConfig(n_hard=5, n_random=10, seed=1)
    sample = sample_negatives(scores, rel, cfg)
    assert sample.n_hard.eq(5).all() and sample.n_random.eq(10).all()
    _check_invariants(sample, rel)
    assert torch.equal(sample.indices, sample_negatives(scores, rel, cfg).indices)


def test_zero_queries() -> None:
    sample = sample_negatives(torch.zeros(0, 5), [], SamplingConfig(n_hard=2, n_random=1))
    assert sample.indices.shape == (0, 3) and sample.summary()["queries"] == 0


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"n_hard": -1}, "n_hard"),
        ({"n_random": 1.5}, "n_random"),
        ({"mode": "hard"}, "mode"),
        ({"threshold_mode": "ratio", "threshold": 0.9}, "threshold_mode"),
        ({"threshold": 0.9}, "threshold"),
        ({"threshold_mode": "relative"}, "threshold"),
        ({"threshold_mode": "absolute", "threshold": float("inf")}, "threshold"),
        ({"mode": "hard_only", "threshold_mode": "absolute", "threshold": 0.5}, "threshold_mode"),
        ({"n_hard": 0, "mode": "no_random"}, "n_hard"),
        ({"seed": "1"}, "seed"),
    ],
)
def test_config_validation(kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=f"SamplingConfig.{field}"):
        SamplingConfig(**kwargs)


def test_input_validation() -> None:
    with pytest.raises(ValueError, match="finite"):
        sample_negatives(torch.tensor([[0.1, float("nan")]]), [[0]])
    with pytest.raises(ValueError, match=r"\[Nq, Nc\]"):
        sample_negatives(torch.zeros(3), [[0]])
    with pytest.raises(ValueError, match="outside"):
        sample_negatives(torch.zeros(1, 4), [[4]])
    with pytest.raises(ValueError, match="one set of indices per query"):
        sample_negatives(torch.zeros(2, 4), [[0]])
    with pytest.raises(ValueError, match="bool"):
        sample_negatives(torch.zeros(2, 4), torch.zeros(2, 4))
