"""InfoNCE and the GRPO objective (elva_baseline.losses), plus a toy GRPO run on ELVA's reward."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from elva_baseline.losses import gaussian_kl, grpo_loss, info_nce, shared_positive_mask
from elva_baseline.rewards import RewardConfig, group_advantages, total_reward

# ---------------------------------------------------------------- InfoNCE


def _embeddings(b: int = 6, d: int = 5, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, d, generator=g, dtype=torch.float64), torch.randn(b, d, generator=g, dtype=torch.float64)


def test_info_nce_two_by_two_by_hand() -> None:
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    c = torch.tensor([[1.0, 0.0], [1.0, 1.0]], dtype=torch.float64)
    tau = 0.5
    # cosines: q0·c0 = 1, q0·c1 = 1/√2, q1·c0 = 0, q1·c1 = 1/√2
    r = 1 / math.sqrt(2)
    l_q0 = -math.log(math.exp(1 / tau) / (math.exp(1 / tau) + math.exp(r / tau)))
    l_q1 = -math.log(math.exp(r / tau) / (math.exp(0) + math.exp(r / tau)))
    got = info_nce(q, c, temperature=tau, symmetric=False)
    assert got.item() == pytest.approx((l_q0 + l_q1) / 2, rel=1e-12)
    # candidate -> query: c0 vs (q0: 1, q1: 0); c1 vs (q0: r, q1: r)
    l_c0 = -math.log(math.exp(1 / tau) / (math.exp(1 / tau) + 1.0))
    l_c1 = math.log(2.0)
    got = info_nce(q, c, temperature=tau)
    assert got.item() == pytest.approx(0.5 * ((l_q0 + l_q1) / 2 + (l_c0 + l_c1) / 2), rel=1e-12)


def test_info_nce_matches_cross_entropy() -> None:
    q, c = _embeddings()
    tau = 0.07
    logits = F.normalize(q, dim=-1) @ F.normalize(c, dim=-1).T / tau
    target = torch.arange(6)
    one_way = F.cross_entropy(logits, target)
    torch.testing.assert_close(info_nce(q, c, temperature=tau, symmetric=False), one_way)
    torch.testing.assert_close(info_nce(q, c, temperature=tau), 0.5 * (one_way + F.cross_entropy(logits.T, target)))
    raw = F.cross_entropy(q @ c.T / tau, target)
    torch.testing.assert_close(info_nce(q, c, temperature=tau, symmetric=False, normalize=False), raw)


def test_info_nce_hard_negatives_and_their_mask() -> None:
    q, c = _embeddings()
    g = torch.Generator().manual_seed(1)
    h = torch.randn(6, 3, 5, generator=g, dtype=torch.float64)
    tau = 0.1
    qn, cn, hn = F.normalize(q, dim=-1), F.normalize(c, dim=-1), F.normalize(h, dim=-1)
    logits = torch.cat([qn @ cn.T, torch.einsum("bd,bhd->bh", qn, hn)], dim=1) / tau
    target = torch.arange(6)
    want = F.cross_entropy(logits, target)
    torch.testing.assert_close(info_nce(q, c, temperature=tau, symmetric=False, hard_negatives=h), want)
    # symmetric: hard negatives only enter the query -> candidate direction
    back = F.cross_entropy((qn @ cn.T / tau).T, target)
    torch.testing.assert_close(info_nce(q, c, temperature=tau, hard_negatives=h), 0.5 * (want + back))
    # masking slot 2 equals dropping it
    mask = torch.ones(6, 3, dtype=torch.bool)
    mask[:, 2] = False
    dropped = info_nce(q, c, temperature=tau, symmetric=False, hard_negatives=h[:, :2])
    torch.testing.assert_close(info_nce(q, c, temperature=tau, symmetric=False, hard_negatives=h, hard_negative_mask=mask), dropped)


def test_info_nce_false_negative_mask() -> None:
    q, _ = _embeddings(4, 5)
    g = torch.Generator().manual_seed(2)
    pos = torch.randn(3, 5, generator=g, dtype=torch.float64)
    c = pos[[0, 1, 1, 2]]  # queries 1 and 2 share their positive
    fn = shared_positive_mask(torch.tensor([10, 11, 11, 12]))
    assert fn.tolist() == [
        [False, False, False, False],
        [False, False, True, False],
        [False, True, False, False],
        [False, False, False, False],
    ]
    tau = 0.2
    logits = F.normalize(q, dim=-1) @ F.normalize(c, dim=-1).T / tau
    # by hand: drop column 2 for query 1 and column 1 for query 2
    rows = []
    for i in range(4):
        keep = [j for j in range(4) if not fn[i, j]]
        rows.append(-torch.log_softmax(logits[i, keep], dim=0)[keep.index(i)])
    want_q2c = torch.stack(rows).mean()
    got = info_nce(q, c, temperature=tau, symmetric=False, false_negative_mask=fn)
    torch.testing.assert_close(got, want_q2c)
    unmasked = info_nce(q, c, temperature=tau, symmetric=False)
    assert got.item() < unmasked.item()  # the shared positive no longer counts against either query
    # symmetric with the mask; gradients stay finite despite -inf logits
    qq = q.clone().requires_grad_(True)
    loss = info_nce(qq, c, temperature=tau, false_negative_mask=fn)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(qq.grad).all()
    # the diagonal of the mask is ignored: the positive always stays
    diag = fn | torch.eye(4, dtype=torch.bool)
    torch.testing.assert_close(info_nce(q, c, temperature=tau, symmetric=False, false_negative_mask=diag), got)


def test_info_nce_validation() -> None:
    q, c = _embeddings()
    with pytest.raises(ValueError, match="temperature"):
        info_nce(q, c, temperature=0.0)
    with pytest.raises(ValueError, match=r"\[B, D\]"):
        info_nce(q, c[:5])
    with pytest.raises(ValueError, match="hard_negatives"):
        info_nce(q, c, hard_negatives=torch.zeros(6, 5, dtype=torch.float64))
    with pytest.raises(ValueError, match="false_negative_mask"):
        info_nce(q, c, false_negative_mask=torch.zeros(6, 6))
    with pytest.raises(ValueError, match="without hard_negatives"):
        info_nce(q, c, hard_negative_mask=torch.ones(6, 2, dtype=torch.bool))


# ---------------------------------------------------------------- GRPO


def _logps(shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    return -torch.rand(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 3


def test_grpo_ratio_one_gives_minus_mean_advantage() -> None:
    logp = _logps((3, 4))
    adv = torch.randn(3, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    loss, stats = grpo_loss(logp, logp.clone(), logp.clone(), adv, beta=0.2)
    torch.testing.assert_close(loss, -adv.mean())
    assert stats["ratio_mean"] == pytest.approx(1.0)
    assert stats["clip_frac"] == 0.0 and stats["kl"] == pytest.approx(0.0)
    assert stats["adv_mean"] == pytest.approx(adv.mean().item())
    assert set(stats) == {"ratio_mean", "clip_frac", "kl", "adv_mean", "policy_objective"}


def test_grpo_gradient_at_ratio_one_is_policy_gradient() -> None:
    logp = _logps((2, 3)).requires_grad_(True)
    adv = torch.tensor([[1.0, -1.0, 0.5], [0.0, 2.0, -2.0]], dtype=torch.float64)
    loss, _ = grpo_loss(logp, logp.detach(), logp.detach(), adv)
    loss.backward()
    torch.testing.assert_close(logp.grad, -adv / adv.numel())  # d/dlogp of -mean(rho * A) at rho = 1


@pytest.mark.parametrize(
    ("ratio", "adv", "objective", "has_grad"),
    [
        (1.5, 1.0, 1.2, False),  # clipped from above: no gradient
        (1.5, -1.0, -1.5, True),  # min picks the unclipped, worse term
        (0.5, -1.0, -0.8, False),  # clipped from below
        (0.5, 1.0, 0.5, True),
        (1.1, 1.0, 1.1, True),  # inside the trust region
    ],
)
def test_grpo_clipping(ratio: float, adv: float, objective: float, has_grad: bool) -> None:
    old = torch.zeros(1, 1, dtype=torch.float64)
    new = torch.full((1, 1), math.log(ratio), dtype=torch.float64, requires_grad=True)
    loss, stats = grpo_loss(new, old, None, torch.full((1, 1), adv, dtype=torch.float64), clip_eps=0.2, beta=0.0)
    assert loss.item() == pytest.approx(-objective)
    loss.backward()
    assert (new.grad.abs().item() > 0) == has_grad
    assert stats["clip_frac"] == (0.0 if has_grad else 1.0)
    assert stats["ratio_mean"] == pytest.approx(ratio)
    assert math.isnan(stats["kl"])


def test_grpo_kl_k3() -> None:
    new, ref = _logps((4, 5), seed=2), _logps((4, 5), seed=3)
    adv = torch.zeros(4, 5, dtype=torch.float64)
    d = ref - new
    k3 = torch.exp(d) - d - 1
    assert (k3 >= 0).all()
    loss, stats = grpo_loss(new, new.clone(), ref, adv, beta=0.2)
    torch.testing.assert_close(loss, 0.2 * k3.mean())
    assert stats["kl"] == pytest.approx(k3.mean().item()) and stats["kl"] > 0
    loss0, _ = grpo_loss(new, new.clone(), ref, adv, beta=0.0)
    assert loss0.item() == 0.0
    # KL pulls new toward ref: the gradient step reduces it
    p = new.clone().requires_grad_(True)
    grpo_loss(p, new, ref, adv, beta=1.0)[0].backward()
    with torch.no_grad():
        stepped = p - 0.1 * p.grad
    assert grpo_loss(stepped, new, ref, adv)[1]["kl"] < stats["kl"]


def test_grpo_token_level_mask() -> None:
    b, g, tt = 2, 3, 4
    new, old, ref = _logps((b, g, tt), 4), _logps((b, g, tt), 5), _logps((b, g, tt), 6)
    adv = torch.randn(b, g, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    mask = torch.ones(b, g, tt, dtype=torch.bool)
    mask[0, 0, 2:] = False
    mask[1, 2, :] = False  # an empty sequence: left out of the mean
    # garbage in padded slots must not leak
    new_g = new.clone()
    new_g[~mask] = float("-inf")
    old_g = old.clone()
    old_g[~mask] = float("nan")
    p = new_g.clone().requires_grad_(True)
    loss, stats = grpo_loss(p, old_g, ref, adv, clip_eps=0.2, beta=0.1, mask=mask)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(p.grad).all()
    assert (p.grad[~mask] == 0).all()
    # by hand
    ratio = torch.exp(new - old)
    a = adv.unsqueeze(-1)
    surr = torch.minimum(ratio * a, ratio.clamp(0.8, 1.2) * a)
    kl = torch.exp(ref - new) - (ref - new) - 1
    obj = surr - 0.1 * kl
    per_seq = []
    for i in range(b):
        for j in range(g):
            m = mask[i, j]
            if m.any():
                per_seq.append(obj[i, j][m].mean())
    torch.testing.assert_close(loss, -torch.stack(per_seq).mean())
    assert stats["adv_mean"] == pytest.approx(adv[mask.any(-1)].mean().item())
    # float 0/1 mask behaves like the bool mask
    loss_f, _ = grpo_loss(new_g, old_g, ref, adv, clip_eps=0.2, beta=0.1, mask=mask.double())
    torch.testing.assert_close(loss_f, loss.detach())


def test_grpo_token_level_with_one_token_equals_sequence_level() -> None:
    new, old, ref = _logps((3, 4), 8), _logps((3, 4), 9), _logps((3, 4), 10)
    adv = torch.randn(3, 4, generator=torch.Generator().manual_seed(11), dtype=torch.float64)
    seq, _ = grpo_loss(new, old, ref, adv)
    tok, _ = grpo_loss(new.unsqueeze(-1), old.unsqueeze(-1), ref.unsqueeze(-1), adv)
    torch.testing.assert_close(seq, tok)


def test_grpo_validation() -> None:
    x = _logps((2, 3))
    with pytest.raises(ValueError, match="logp_ref is None but beta"):
        grpo_loss(x, x, None, x)
    with pytest.raises(ValueError, match="clip_eps"):
        grpo_loss(x, x, x, x, clip_eps=0.0)
    with pytest.raises(ValueError, match="beta"):
        grpo_loss(x, x, x, x, beta=-1.0)
    with pytest.raises(ValueError, match="advantages"):
        grpo_loss(x, x, x, x[:, :2])
    with pytest.raises(ValueError, match="no valid"):
        grpo_loss(x, x, x, x, mask=torch.zeros(2, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"\[B, G\] or \[B, G, T\]"):
        grpo_loss(x[0], x[0], x[0], x[0])


# ---------------------------------------------------------------- a toy GRPO run


def test_grpo_on_gaussian_policy_increases_reward() -> None:
    """A few GRPO steps on a Gaussian-perturbed query embedding raise ELVA's mean reward.

    Tiny fixed problem: B queries, each with a positive and N negative candidate vectors (unit, D-dim);
    the policy's parameter is each query's embedding theta; a rollout is ``theta + sigma * xi``, scored by
    cosine against its candidates; log-prob of a rollout is the Gaussian's (up to a constant).
    """
    gen = torch.Generator().manual_seed(0)
    b, n, d, g, sigma = 4, 20, 8, 16, 0.3
    cands = F.normalize(torch.randn(b, n + 1, d, generator=gen, dtype=torch.float64), dim=-1)  # column 0 = positive
    theta = torch.randn(b, d, generator=gen, dtype=torch.float64).requires_grad_(True)
    theta_ref = theta.detach().clone()
    cfg = RewardConfig()
    opt = torch.optim.Adam([theta], lr=0.05)

    def reward(e: torch.Tensor) -> torch.Tensor:  # e: [B, G, D] -> [B, G]
        s = torch.einsum("bgd,bnd->bgn", F.normalize(e, dim=-1), cands)
        return total_reward(s[..., 0], s[..., 1:], cfg)

    def logp(e: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
        return -((e - mean.unsqueeze(1)) ** 2).sum(-1) / (2 * sigma**2)

    with torch.no_grad():
        start = reward(theta.unsqueeze(1)).mean().item()
    for _ in range(40):
        with torch.no_grad():
            rollouts = theta.unsqueeze(1) + sigma * torch.randn(b, g, d, generator=gen, dtype=torch.float64)
            adv = group_advantages(reward(rollouts))
            lp_old = logp(rollouts, theta)
            lp_ref = logp(rollouts, theta_ref)
        for _inner in range(2):  # two updates per batch: the second sees ratio != 1
            loss, stats = grpo_loss(logp(rollouts, theta), lp_old, lp_ref, adv, clip_eps=0.2, beta=0.01)
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        end = reward(theta.unsqueeze(1)).mean().item()
    assert end > start + 0.3, (start, end)
    assert math.isfinite(stats["kl"]) and stats["kl"] >= 0


# ---------------------------------------------------------------- KL to the reference policy


def test_gaussian_kl_is_torchs_kl_and_anchors_a_learnable_sigma() -> None:
    """KL(N(μ, σ²I) || N(μ_ref, σ_ref²I)) averaged over rows: torch.distributions' value; at σ = σ_ref
    the means' term alone (what a fixed σ uses); with a learnable σ its gradient pulls σ back to σ_ref
    (‖Δμ‖²/2σ² alone, the trainer's formula before, pushed σ up whatever it was)."""
    from torch.distributions import Normal, kl_divergence

    g = torch.Generator().manual_seed(0)
    mu, ref = torch.randn(4, 16, generator=g, dtype=torch.float64), torch.randn(4, 16, generator=g, dtype=torch.float64)
    for s, s_ref in [(0.02, 0.02), (0.05, 0.02), (0.01, 0.3)]:
        want = kl_divergence(Normal(mu, s), Normal(ref, s_ref)).sum(-1).mean()
        got = gaussian_kl(mu, ref, torch.tensor(s, dtype=torch.float64), s_ref)
        assert float(got) == pytest.approx(float(want), rel=1e-12)
    same = gaussian_kl(mu, ref, torch.tensor(0.02, dtype=torch.float64), 0.02)
    assert float(same) == pytest.approx(float(((mu - ref) ** 2).sum(-1).mean() / (2 * 0.02 ** 2)), rel=1e-12)
    for start, sign in [(0.05, 1.0), (0.01, -1.0), (0.02, 0.0)]:  # d KL / d log σ: > 0 above σ_ref, < 0 below
        log_s = torch.tensor(math.log(start), dtype=torch.float64, requires_grad=True)
        gaussian_kl(ref, ref, log_s.exp(), 0.02).backward()
        assert (float(log_s.grad) > 1e-9) if sign > 0 else (float(log_s.grad) < -1e-9) if sign < 0 else \
            abs(float(log_s.grad)) < 1e-9
