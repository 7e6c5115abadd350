"""ELVA rewards (elva_baseline.rewards) against hand-computed values; group-relative advantages."""

from __future__ import annotations

import math

import pytest
import torch

from elva_baseline.rewards import (
    ElvaInputError,
    RewardConfig,
    group_advantages,
    margin_reward,
    positive_rank,
    ranking_reward,
    total_reward,
)

LN2 = math.log(2.0)
LN3 = math.log(3.0)


def t(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


# ---------------------------------------------------------------- ranks and ties


def test_positive_rank_is_pessimistic_on_ties() -> None:
    s_pos = t(0.5, 0.5, 0.5)
    s_neg = torch.tensor([[0.6, 0.5, 0.1], [0.4, 0.3, 0.2], [0.5, 0.5, 0.5]], dtype=torch.float64)
    # a negative tied with the positive ranks above it
    assert positive_rank(s_pos, s_neg).tolist() == [3, 1, 4]


def test_positive_rank_ignores_padding() -> None:
    s_neg = torch.tensor([[0.9, 0.8, 0.1]], dtype=torch.float64)
    mask = torch.tensor([[True, False, True]])
    assert positive_rank(t(0.5), s_neg, neg_mask=mask).tolist() == [2]


# ---------------------------------------------------------------- margin reward


def test_margin_reward_hand_values() -> None:
    s_pos = t(0.9, 0.5, 0.5, 0.2)
    s_neg = torch.tensor([[0.3, 0.6], [0.5, 0.1], [0.6, 0.1], [0.1, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(margin_reward(s_pos, s_neg), t(0.3, 0.0, 0.0, 0.1))  # tie -> 0
    torch.testing.assert_close(margin_reward(s_pos, s_neg, 0.05), t(0.25, 0.0, 0.0, 0.05))
    torch.testing.assert_close(margin_reward(s_pos, s_neg, delta=0.2), t(0.1, 0.0, 0.0, 0.0))


def test_margin_reward_mask_and_errors() -> None:
    s_neg = torch.tensor([[0.95, 0.3]], dtype=torch.float64)
    mask = torch.tensor([[False, True]])
    torch.testing.assert_close(margin_reward(t(0.9), s_neg, neg_mask=mask), t(0.6))
    with pytest.raises(ElvaInputError, match="valid negative"):
        margin_reward(t(0.9), s_neg, neg_mask=torch.tensor([[False, False]]))
    with pytest.raises(ElvaInputError, match="delta"):
        margin_reward(t(0.9), s_neg, -0.1)
    with pytest.raises(ValueError, match="shape"):
        margin_reward(t(0.9, 0.1), s_neg)


# ---------------------------------------------------------------- ranking reward


def test_ranking_reward_literal_formula_with_tie() -> None:
    # s_pos 0.5 ties with a negative -> r = 3; negatives at ranks 1 (0.6), 2 (0.5), 4 (0.1)
    s_pos, s_neg = t(0.5), torch.tensor([[0.6, 0.5, 0.1]], dtype=torch.float64)
    head = 0.5 / (1 + LN3)
    term = 0.6 * (0 - 1) + 0.5 * (LN2 - 1) + 0.1 * (math.log(4) - 1)
    got = ranking_reward(s_pos, s_neg, gamma=0.1, clamp_neg_weights=False)
    torch.testing.assert_close(got, t(head - 0.1 * term))
    # clamped (default): ranks 1 and 2 weigh 0
    got = ranking_reward(s_pos, s_neg, gamma=0.1)
    torch.testing.assert_close(got, t(head - 0.1 * 0.1 * (math.log(4) - 1)))


def test_natural_log_weights_are_negative_at_ranks_1_and_2() -> None:
    gamma = 0.5
    # k = 1: a negative ranked above the positive (r = 2) RAISES the literal reward
    s_pos, low, high = t(0.4), torch.tensor([[0.8]], dtype=torch.float64), torch.tensor([[0.9]], dtype=torch.float64)
    head = 0.4 / (1 + LN2)
    lit_low = ranking_reward(s_pos, low, gamma=gamma, clamp_neg_weights=False)
    lit_high = ranking_reward(s_pos, high, gamma=gamma, clamp_neg_weights=False)
    torch.testing.assert_close(lit_low, t(head + gamma * 0.8))  # weight ln 1 - 1 = -1
    assert lit_high.item() > lit_low.item() > head
    # clamped: no negative can raise the reward
    torch.testing.assert_close(ranking_reward(s_pos, low, gamma=gamma), t(head))
    torch.testing.assert_close(ranking_reward(s_pos, high, gamma=gamma), t(head))
    # k = 2: positive first, negative second, weight ln 2 - 1 ≈ -0.307 < 0
    lit = ranking_reward(t(0.9), torch.tensor([[0.5]], dtype=torch.float64), gamma=gamma, clamp_neg_weights=False)
    torch.testing.assert_close(lit, t(0.9 - gamma * 0.5 * (LN2 - 1)))
    assert lit.item() > 0.9


def test_clamped_reward_never_increases_with_a_negative_score() -> None:
    torch.manual_seed(0)
    s_pos = torch.rand(64, dtype=torch.float64)
    s_neg = torch.rand(64, 30, dtype=torch.float64).requires_grad_(True)
    ranking_reward(s_pos, s_neg, gamma=0.01).sum().backward()
    assert (s_neg.grad <= 0).all()
    s_neg.grad = None
    ranking_reward(s_pos, s_neg, gamma=0.01, clamp_neg_weights=False).sum().backward()
    assert (s_neg.grad > 0).any()  # the literal formula rewards some negatives (ranks 1, 2)


def test_log_base_2() -> None:
    # positive first; negatives at ranks 2..5 -> log2 k - 1 = 0, log2(3)-1, 1, log2(5)-1
    s_pos = t(0.9)
    s_neg = torch.tensor([[0.1, 0.4, 0.3, 0.2]], dtype=torch.float64)  # any order
    term = 0.4 * 0 + 0.3 * (math.log2(3) - 1) + 0.2 * 1 + 0.1 * (math.log2(5) - 1)
    got = ranking_reward(s_pos, s_neg, gamma=0.1, log_base=2)
    torch.testing.assert_close(got, t(0.9 - 0.1 * term))
    # positive at rank 4 (three negatives above): head = s / (1 + log2 4) = s / 3
    got = ranking_reward(t(0.3), torch.tensor([[0.9, 0.8, 0.7]], dtype=torch.float64), gamma=0.0, log_base=2)
    torch.testing.assert_close(got, t(0.1))


def test_log_base_10() -> None:
    # positive at rank 10: head = s / (1 + 1); with 9 negatives all weights log10 k - 1 <= 0
    s_neg = torch.linspace(0.9, 0.5, 9, dtype=torch.float64).unsqueeze(0)
    got = ranking_reward(t(0.4), s_neg, gamma=0.3, log_base=10)
    torch.testing.assert_close(got, t(0.2))  # clamped: every weight is 0
    lit = ranking_reward(t(0.4), s_neg, gamma=0.3, log_base=10, clamp_neg_weights=False)
    term = sum(float(s) * (math.log10(k) - 1) for k, s in zip(range(1, 10), s_neg[0]))
    torch.testing.assert_close(lit, t(0.2 - 0.3 * term))
    with pytest.raises(ElvaInputError, match="log_base"):
        ranking_reward(t(0.4), s_neg, log_base=3)  # type: ignore[arg-type]


def test_only_above() -> None:
    s_pos = t(0.5)
    s_neg = torch.tensor([[0.1, 0.9, 0.7, 0.8, 0.6]], dtype=torch.float64)  # r = 5, one negative below (rank 6)
    w = {k: math.log(k) - 1 for k in range(1, 7)}
    head = 0.5 / (1 + math.log(5))
    above_clamped = 0.7 * w[3] + 0.6 * w[4]  # ranks 1, 2 clamp to 0
    below = 0.1 * w[6]
    got = ranking_reward(s_pos, s_neg, gamma=0.2, only_above=True)
    torch.testing.assert_close(got, t(head - 0.2 * above_clamped))
    torch.testing.assert_close(ranking_reward(s_pos, s_neg, gamma=0.2), t(head - 0.2 * (above_clamped + below)))
    lit_above = 0.9 * w[1] + 0.8 * w[2] + 0.7 * w[3] + 0.6 * w[4]
    got = ranking_reward(s_pos, s_neg, gamma=0.2, only_above=True, clamp_neg_weights=False)
    torch.testing.assert_close(got, t(head - 0.2 * lit_above))
    # positive first: nothing above, only_above leaves the head alone
    torch.testing.assert_close(ranking_reward(t(0.95), s_neg, gamma=0.2, only_above=True), t(0.95))


def test_use_neg_order_off_and_gamma_zero_give_the_head() -> None:
    s_pos, s_neg = t(0.5), torch.tensor([[0.6, 0.5, 0.1]], dtype=torch.float64)
    head = t(0.5 / (1 + LN3))
    torch.testing.assert_close(ranking_reward(s_pos, s_neg, gamma=0.5, use_neg_order=False), head)
    torch.testing.assert_close(ranking_reward(s_pos, s_neg, gamma=0.0, clamp_neg_weights=False), head)


def test_normalize_neg_weights_gives_weighted_mean() -> None:
    s_neg = torch.tensor([[0.1, 0.4, 0.3, 0.2]], dtype=torch.float64)
    w = [0.0, math.log(3) - 1, math.log(4) - 1, math.log(5) - 1]  # clamped, ranks 2..5 for 0.4, 0.3, 0.2, 0.1
    mean = (0.4 * w[0] + 0.3 * w[1] + 0.2 * w[2] + 0.1 * w[3]) / sum(w)
    got = ranking_reward(t(0.9), s_neg, gamma=0.5, normalize_neg_weights=True)
    torch.testing.assert_close(got, t(0.9 - 0.5 * mean))
    # independent of N when all negatives share one score
    for n in (5, 50, 500):
        r = ranking_reward(t(0.9), torch.full((1, n), 0.3, dtype=torch.float64), gamma=0.5, normalize_neg_weights=True)
        torch.testing.assert_close(r, t(0.9 - 0.5 * 0.3))
    # all weights zero (positive first, only_above) -> term 0, no NaN
    r = ranking_reward(t(0.9), s_neg, gamma=0.5, normalize_neg_weights=True, only_above=True)
    torch.testing.assert_close(r, t(0.9))


def test_padding_equals_dropping_columns() -> None:
    torch.manual_seed(1)
    s_pos = torch.rand(4, 3)
    s_neg = torch.rand(4, 3, 12)
    mask = torch.rand(4, 3, 12) > 0.3
    mask[..., 0] = True
    for only_above in (False, True):
        got = ranking_reward(s_pos, s_neg, gamma=0.1, clamp_neg_weights=False, only_above=only_above, neg_mask=mask)
        for b in range(4):
            for g in range(3):
                keep = s_neg[b, g][mask[b, g]].unsqueeze(0)
                want = ranking_reward(s_pos[b, g : g + 1], keep, gamma=0.1, clamp_neg_weights=False, only_above=only_above)
                torch.testing.assert_close(got[b, g : g + 1], want)


def test_vectorised_over_batch_and_group() -> None:
    torch.manual_seed(2)
    s_pos, s_neg = torch.rand(3, 5), torch.rand(3, 5, 7)
    cfg = RewardConfig(gamma=0.01, clamp_neg_weights=False)
    got = total_reward(s_pos, s_neg, cfg)
    assert got.shape == (3, 5)
    for b in range(3):
        for g in range(5):
            torch.testing.assert_close(got[b, g], total_reward(s_pos[b, g], s_neg[b, g], cfg))


# ---------------------------------------------------------------- total reward and config


def test_total_reward_default_config_by_hand() -> None:
    s_pos, s_neg = t(0.8), torch.tensor([[0.5, 0.3, 0.6]], dtype=torch.float64)
    # r = 1; negatives at ranks 2 (0.6), 3 (0.5), 4 (0.3); clamp; gamma 1e-3; delta 0
    r_m = 0.8 - 0.6
    r_r = 0.8 - 1e-3 * (0.5 * (LN3 - 1) + 0.3 * (math.log(4) - 1))
    torch.testing.assert_close(total_reward(s_pos, s_neg), t(0.4 * r_m + 0.6 * r_r))
    head_only = 0.6 * 0.8 + 0.4 * r_m
    torch.testing.assert_close(total_reward(s_pos, s_neg, RewardConfig(use_neg_order=False)), t(head_only))
    torch.testing.assert_close(total_reward(s_pos, s_neg, RewardConfig(use_margin=False)), t(0.6 * r_r))
    torch.testing.assert_close(total_reward(s_pos, s_neg, RewardConfig(use_ranking=False)), t(0.4 * r_m))
    cfg = RewardConfig(alpha=1.0, epsilon=2.0, delta=0.1, gamma=0.0)
    torch.testing.assert_close(total_reward(s_pos, s_neg, cfg), t(1.0 * (r_m - 0.1) + 2.0 * 0.8))


def test_total_reward_passes_options_through() -> None:
    s_pos, s_neg = t(0.4), torch.tensor([[0.8, 0.1]], dtype=torch.float64)
    cfg = RewardConfig(use_margin=False, epsilon=1.0, gamma=0.5, clamp_neg_weights=False, log_base=2, only_above=True)
    want = ranking_reward(s_pos, s_neg, gamma=0.5, clamp_neg_weights=False, log_base=2, only_above=True)
    torch.testing.assert_close(total_reward(s_pos, s_neg, cfg), want)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"delta": -0.1}, "delta"),
        ({"gamma": -1e-3}, "gamma"),
        ({"gamma": float("nan")}, "gamma"),
        ({"alpha": -1.0}, "alpha"),
        ({"epsilon": -0.5}, "epsilon"),
        ({"alpha": 0.0, "epsilon": 0.0}, "alpha"),
        ({"log_base": 3}, "log_base"),
        ({"log_base": "10"}, "log_base"),
        ({"log_base": True}, "log_base"),
        ({"clamp_neg_weights": 1}, "clamp_neg_weights"),
        ({"use_margin": False, "use_ranking": False}, "use_margin"),
        ({"use_margin": False, "epsilon": 0.0}, "use_margin"),
    ],
)
def test_reward_config_validation(kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=f"RewardConfig.{field}") as exc:
        RewardConfig(**kwargs)
    assert "\n" not in str(exc.value)


def test_reward_config_accepts_each_log_base() -> None:
    for base in ("e", 2, 10):
        assert RewardConfig(log_base=base).log_base == base


# ---------------------------------------------------------------- group advantages


def test_group_advantages_mean_zero_std_one() -> None:
    torch.manual_seed(3)
    rewards = torch.rand(6, 8, dtype=torch.float64) * 5
    adv = group_advantages(rewards, eps=1e-12)
    torch.testing.assert_close(adv.mean(dim=1), torch.zeros(6, dtype=torch.float64))
    torch.testing.assert_close(adv.std(dim=1, correction=0), torch.ones(6, dtype=torch.float64))
    adv_u = group_advantages(rewards, eps=1e-12, unbiased=True)
    torch.testing.assert_close(adv_u.std(dim=1), torch.ones(6, dtype=torch.float64))


def test_group_advantages_hand_values_and_order() -> None:
    adv = group_advantages(torch.tensor([[1.0, 2.0, 3.0]]), eps=1e-9)
    s = math.sqrt(2 / 3)
    torch.testing.assert_close(adv, torch.tensor([[-1 / s, 0.0, 1 / s]]))


def test_constant_group_gets_zero_advantage() -> None:
    rewards = torch.tensor([[0.1, 0.1, 0.1], [0.7, 0.7, 0.7], [0.0, 1.0, 0.0]], dtype=torch.float32)
    adv = group_advantages(rewards)
    assert torch.isfinite(adv).all()
    assert (adv[:2] == 0).all()  # exactly 0 even though mean(0.1, 0.1, 0.1) != 0.1 in float32
    assert (adv[2] != 0).all()
    assert (group_advantages(torch.tensor([[0.3], [0.2]])) == 0).all()  # G = 1
    with pytest.raises(ValueError, match="eps"):
        group_advantages(rewards, eps=0.0)


def test_rank_only_rewards_the_rank_not_the_raw_similarity() -> None:
    s_neg = torch.tensor([[0.1, 0.9, 0.7, 0.8, 0.6]], dtype=torch.float64)  # s_pos 0.5 -> r = 5
    got = ranking_reward(t(0.5), s_neg, gamma=0.0, rank_only=True)
    torch.testing.assert_close(got, t(1 / (1 + math.log(5))))
    # shifting every score by the same amount changes nothing under rank_only (it does in the paper's form)
    torch.testing.assert_close(ranking_reward(t(0.6), s_neg + 0.1, gamma=0.0, rank_only=True), got)
    assert not torch.allclose(ranking_reward(t(0.6), s_neg + 0.1, gamma=0.0), ranking_reward(t(0.5), s_neg, gamma=0.0))
    cfg = RewardConfig(rank_only=True, use_margin=False, use_neg_order=False, epsilon=1.0)
    torch.testing.assert_close(total_reward(t(0.5), s_neg, cfg), got)
    with pytest.raises(ElvaInputError, match="rank_only"):
        RewardConfig(rank_only=1)  # type: ignore[arg-type]
