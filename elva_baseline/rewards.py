"""ELVA's rule-based rewards and GRPO's group-relative advantages (arXiv 2606.20280).

One rollout of the policy is one query embedding scored against its candidate list: one positive
and ``N`` negatives. Every function here is vectorised over any number of leading dimensions
(typically ``[B, G]``: ``B`` queries × ``G`` rollouts per query) and works on ``torch`` tensors:

``s_pos``
    float ``[...]``: the positive's score in each rollout.
``s_neg``
    float ``[..., N]``: the negatives' scores, in any order (the functions sort them).
``neg_mask``
    optional bool ``[..., N]``: ``True`` for a real negative, ``False`` for padding (for example the
    ``-1`` slots of :class:`elva_baseline.sampling.NegativeSample`). Padding is ignored everywhere:
    it takes no rank and adds nothing.

Scores must be finite (cosine similarities in practice, but nothing assumes a range).

Conventions
-----------
* **Ranking** (as everywhere in mrbench, GUIDE §3): the candidate list is sorted by score
  descending and a tie is broken *against the model* — a negative whose score equals the
  positive's ranks above it. The positive's 1-based rank is therefore
  ``r = 1 + #{n : s_n >= s_pos}`` (:func:`positive_rank`). Ties among negatives do not matter: tied
  negatives have equal scores, so every sum below is the same in any order.
* **Margin reward** ``R_M = max(0, s_pos - max_n s_n - delta)``.
* **Ranking reward** ``R_R = s_(r) / (1 + log r) - gamma * sum_{k != r} w_k * s_(k)`` with
  ``s_(k)`` the score at rank ``k``, ``k`` running over the negatives' ranks and, literally,
  ``w_k = log k - 1``. The log base is an option (``"e"``, ``2`` or ``10``; default ``"e"``).
* **Total reward** ``R = alpha * R_M + epsilon * R_R`` with ablation switches (:class:`RewardConfig`).

The sign of ``log k - 1`` and the size of gamma (defaults, and why)
-------------------------------------------------------------------
With the natural log, ``ln k - 1`` is **negative for k = 1 and 2** (``-1`` and ``ln 2 - 1 ≈ -0.307``):
taken literally, a negative ranked *first*, i.e. above the positive, *raises* the reward by
``gamma * s_(1)``. The feasibility study (``shared/notes/elva-tiny-findings.md``) saw exactly that
pathology, so the default is ``clamp_neg_weights=True``: ``w_k = max(0, log k - 1)``, under which no
negative can ever raise the reward (the term is non-increasing in every negative's score). Set it
to ``False`` for the literal formula. ``only_above=True`` penalises only the negatives ranked above
the positive (``k < r``); note that combined with the clamp and the natural log it penalises
nothing while ``r <= 3`` (the weights of ranks 1 and 2 are 0), so it is off by default.

The weights grow like ``log k``: summed over the 100 negatives of the default sampler (ranks 2..101,
natural log) they total ≈ 268 (≈ 269 clamped; the study quotes ≈ 267). With cosine scores around 0.3 the sum
``sum_k w_k s_(k)`` is ≈ 80, against a first term ``s_(r) / (1 + ln r) <= 1``. The default
``gamma = 1e-3`` makes the negative-order term ≈ 0.08 there — about a tenth of the first term:
large enough to move advantages, too small to drown the positive's rank (the study found a
literal gamma must be ≲ 1e-3 or the term dominates). Because the literal sum grows with ``N``,
``normalize_neg_weights=True`` divides the weights by ``sum_k |w_k|`` (over the negatives actually
penalised), turning the term into ``gamma`` × a weighted *mean* negative score; with it, gamma of
order 0.1 is the comparable value, whatever ``N``.

The default margin ``delta`` is 0: the study found ``R_M ≈ 0`` almost always (the positive rarely
leads the best hard negative by any margin), so a positive default would silence the term; a
``delta > 0`` demands a minimum lead before any margin reward is paid.

Gradients flow through the scores (piecewise: ranks are integers), so the same functions can serve
as a direct differentiable surrogate of the reward; GRPO only needs their values.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from mrbench.errors import MrbenchError

__all__ = [
    "ElvaInputError",
    "LogBase",
    "RewardConfig",
    "group_advantages",
    "margin_reward",
    "positive_rank",
    "ranking_reward",
    "total_reward",
]

LogBase = Literal["e", 2, 10]
"""Base of the logarithms in the ranking reward: ``"e"`` (natural), ``2`` or ``10``."""

_LOG_BASES: tuple[object, ...] = ("e", 2, 10)

DEFAULT_GAMMA = 1e-3
DEFAULT_LOG_BASE: LogBase = "e"


class ElvaInputError(MrbenchError, ValueError):
    """Bad configuration or inconsistent input to an elva_baseline function (a ``ValueError``)."""


def _is_real(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _check_log_base(log_base: object) -> None:
    if isinstance(log_base, bool) or log_base not in _LOG_BASES:
        raise ElvaInputError(f"log_base must be 'e', 2 or 10, got {log_base!r}")


@dataclass(frozen=True)
class RewardConfig:
    """Every constant of the ELVA reward (``R = alpha * R_M + epsilon * R_R``); see the module docs.

    Attributes:
        delta: margin of ``R_M = max(0, s_pos - max_n s_n - delta)``; ``>= 0``. Default 0.
        gamma: weight of the negative-order term of ``R_R``; ``>= 0``. Default ``1e-3`` (sized for
            ~100 negatives with the literal, un-normalised weights).
        alpha: weight of ``R_M`` in the total; ``>= 0``. Default 0.4 (the paper's).
        epsilon: weight of ``R_R`` in the total; ``>= 0``. Default 0.6 (the paper's).
        log_base: ``"e"``, ``2`` or ``10``. Default ``"e"``.
        clamp_neg_weights: use ``max(0, log k - 1)`` so no negative can raise the reward. Default on.
        only_above: penalise only negatives ranked above the positive. Default off.
        normalize_neg_weights: divide the weights by their absolute sum (term = gamma × weighted
            mean negative score, independent of ``N``). Default off (the literal formula).
        use_margin: ablation switch for ``R_M``.
        use_ranking: ablation switch for ``R_R`` (both of its terms).
        use_neg_order: ablation switch for the negative-order term ``gamma * sum_k w_k s_(k)`` alone.
        rank_only: replace the first term ``s_(r) / (1 + log r)`` by ``1 / (1 + log r)``: the positive is
            rewarded for its rank only, not for its raw similarity (which pulls embeddings together).
            Default off (the paper's formula).

    Raises:
        ElvaInputError: (a ``ValueError``) on a value out of range, naming the field; also when the
            configuration makes the reward identically zero (no enabled term with a positive weight).
    """

    delta: float = 0.0
    gamma: float = DEFAULT_GAMMA
    alpha: float = 0.4
    epsilon: float = 0.6
    log_base: LogBase = DEFAULT_LOG_BASE
    clamp_neg_weights: bool = True
    only_above: bool = False
    normalize_neg_weights: bool = False
    use_margin: bool = True
    use_ranking: bool = True
    use_neg_order: bool = True
    rank_only: bool = False

    def __post_init__(self) -> None:
        for name in ("delta", "gamma", "alpha", "epsilon"):
            value = getattr(self, name)
            if not _is_real(value) or value < 0:
                raise ElvaInputError(f"RewardConfig.{name} must be a finite number >= 0, got {value!r}")
        if isinstance(self.log_base, bool) or self.log_base not in _LOG_BASES:
            raise ElvaInputError(f"RewardConfig.log_base must be 'e', 2 or 10, got {self.log_base!r}")
        switches = ("clamp_neg_weights", "only_above", "normalize_neg_weights", "use_margin", "use_ranking", "use_neg_order",
                    "rank_only")
        for name in switches:
            if not isinstance(getattr(self, name), bool):
                raise ElvaInputError(f"RewardConfig.{name} must be a bool, got {getattr(self, name)!r}")
        if self.alpha == 0 and self.epsilon == 0:
            raise ElvaInputError("RewardConfig.alpha and RewardConfig.epsilon are both 0: give one a positive weight")
        if not ((self.use_margin and self.alpha > 0) or (self.use_ranking and self.epsilon > 0)):
            raise ElvaInputError(
                "RewardConfig.use_margin/use_ranking: no enabled term has a positive weight (alpha, epsilon); "
                "the reward would be identically 0"
            )


def _check_scores(s_pos: Tensor, s_neg: Tensor, neg_mask: Tensor | None) -> Tensor:
    """Validate shapes/dtypes and return the bool validity mask ``[..., N]``."""
    if not isinstance(s_pos, Tensor) or not isinstance(s_neg, Tensor):
        raise ElvaInputError("s_pos and s_neg must be torch tensors")
    if not s_pos.is_floating_point() or not s_neg.is_floating_point():
        raise ElvaInputError(f"s_pos and s_neg must be floating point, got {s_pos.dtype} and {s_neg.dtype}")
    if s_neg.dim() < 1 or tuple(s_neg.shape[:-1]) != tuple(s_pos.shape):
        raise ElvaInputError(
            f"s_neg must have shape [*s_pos.shape, N]; got s_pos {tuple(s_pos.shape)} and s_neg {tuple(s_neg.shape)}"
        )
    if neg_mask is None:
        return torch.ones(s_neg.shape, dtype=torch.bool, device=s_neg.device)
    if not isinstance(neg_mask, Tensor) or neg_mask.dtype != torch.bool or neg_mask.shape != s_neg.shape:
        raise ElvaInputError(f"neg_mask must be a bool tensor shaped like s_neg {tuple(s_neg.shape)}")
    return neg_mask


def positive_rank(s_pos: Tensor, s_neg: Tensor, *, neg_mask: Tensor | None = None) -> Tensor:
    """The positive's 1-based rank among itself and the negatives, ties broken against the model.

    ``r = 1 + #{valid n : s_n >= s_pos}`` — a negative tied with the positive ranks above it.

    Args:
        s_pos: float ``[...]``.
        s_neg: float ``[..., N]``.
        neg_mask: optional bool ``[..., N]``, ``False`` marks padding (never counted).

    Returns:
        int64 ``[...]`` ranks in ``1..N+1``.
    """
    valid = _check_scores(s_pos, s_neg, neg_mask)
    return 1 + ((s_neg >= s_pos.unsqueeze(-1)) & valid).sum(dim=-1)


def margin_reward(s_pos: Tensor, s_neg: Tensor, delta: float = 0.0, *, neg_mask: Tensor | None = None) -> Tensor:
    """ELVA's margin reward ``R_M = max(0, s_pos - max_n s_n - delta)``.

    Args:
        s_pos: float ``[...]``, the positive's score per rollout.
        s_neg: float ``[..., N]``, the negatives' scores.
        delta: required lead (``>= 0``); only the lead beyond it is rewarded.
        neg_mask: optional bool ``[..., N]``, ``False`` marks padding.

    Returns:
        float ``[...]``, ``>= 0``. A tie with the best negative gives 0.

    Raises:
        ElvaInputError: on shape/dtype mismatch, ``delta < 0``, or a row without any valid negative.
    """
    valid = _check_scores(s_pos, s_neg, neg_mask)
    if not _is_real(delta) or delta < 0:
        raise ElvaInputError(f"delta must be a finite number >= 0, got {delta!r}")
    if s_neg.shape[-1] == 0 or not bool(valid.any(dim=-1).all()):
        raise ElvaInputError("margin_reward needs at least one valid negative per rollout")
    best_neg = s_neg.masked_fill(~valid, float("-inf")).amax(dim=-1)
    return torch.relu(s_pos - best_neg - delta)


def _log(x: Tensor, log_base: LogBase) -> Tensor:
    if log_base == "e":
        return torch.log(x)
    if log_base == 2:
        return torch.log2(x)
    return torch.log10(x)


def ranking_reward(
    s_pos: Tensor,
    s_neg: Tensor,
    *,
    gamma: float = DEFAULT_GAMMA,
    log_base: LogBase = DEFAULT_LOG_BASE,
    clamp_neg_weights: bool = True,
    only_above: bool = False,
    use_neg_order: bool = True,
    normalize_neg_weights: bool = False,
    rank_only: bool = False,
    neg_mask: Tensor | None = None,
) -> Tensor:
    """ELVA's ranking reward ``R_R = s_(r) / (1 + log r) - gamma * sum_{k != r} w_k * s_(k)``.

    The list (positive + valid negatives) is sorted by score descending, ties against the model
    (:func:`positive_rank`); ``r`` is the positive's rank, so ``s_(r) = s_pos``; ``k`` runs over the
    negatives' ranks (``1..r-1`` above the positive, ``r+1..N+1`` below it) and ``s_(k)`` is the
    score at rank ``k``. Weights, in this order:

    1. ``w_k = log_b k - 1`` (``b`` = ``log_base``; with ``"e"`` this is ``-1`` at k = 1 and
       ``≈ -0.307`` at k = 2, i.e. *negative*, so a negative ranked there raises the reward);
    2. ``clamp_neg_weights``: ``w_k = max(0, w_k)``;
    3. ``only_above``: ``w_k = 0`` for ``k > r``;
    4. ``normalize_neg_weights``: ``w_k /= sum_k |w_k|`` (all-zero weights stay 0).

    See the module docstring for the defaults and why.

    Args:
        s_pos: float ``[...]``; s_neg: float ``[..., N]``; neg_mask: optional bool ``[..., N]``.
        gamma: ``>= 0``, weight of the negative-order term.
        log_base: ``"e"``, ``2`` or ``10`` (both logs use it).
        clamp_neg_weights, only_above, normalize_neg_weights: see above.
        use_neg_order: ``False`` drops the negative-order term (ablation), leaving ``s_pos / (1 + log r)``.
        rank_only: the first term is ``1 / (1 + log r)`` (rank alone, no raw-similarity pull).

    Returns:
        float ``[...]``.
    """
    valid = _check_scores(s_pos, s_neg, neg_mask)
    _check_log_base(log_base)
    if not _is_real(gamma) or gamma < 0:
        raise ElvaInputError(f"gamma must be a finite number >= 0, got {gamma!r}")
    rank = positive_rank(s_pos, s_neg, neg_mask=valid)
    head = (torch.ones_like(s_pos) if rank_only else s_pos) / (1.0 + _log(rank.to(s_pos.dtype), log_base))
    if not use_neg_order or s_neg.shape[-1] == 0:
        return head

    # Valid negatives sorted descending; padding (-inf) sorts last. The first r-1 sorted entries
    # are exactly the valid negatives with s >= s_pos, i.e. those ranked above the positive.
    sorted_s, order = torch.sort(s_neg.masked_fill(~valid, float("-inf")), dim=-1, descending=True)
    sorted_valid = valid.gather(-1, order)
    pos_in_sorted = torch.arange(s_neg.shape[-1], device=s_neg.device)
    above = pos_in_sorted < (rank - 1).unsqueeze(-1)  # [..., N]
    neg_rank = pos_in_sorted + 1 + (~above).to(pos_in_sorted.dtype)  # skip the positive's slot
    weights = _log(neg_rank.to(s_neg.dtype), log_base) - 1.0
    if clamp_neg_weights:
        weights = weights.clamp_min(0.0)
    if only_above:
        weights = weights * above
    weights = weights * sorted_valid
    if normalize_neg_weights:
        total = weights.abs().sum(dim=-1, keepdim=True)
        weights = torch.where(total > 0, weights / total.clamp_min(torch.finfo(weights.dtype).tiny), weights)
    neg_term = (torch.where(sorted_valid, sorted_s, torch.zeros_like(sorted_s)) * weights).sum(dim=-1)
    return head - gamma * neg_term


def total_reward(
    s_pos: Tensor,
    s_neg: Tensor,
    cfg: RewardConfig | None = None,
    *,
    neg_mask: Tensor | None = None,
) -> Tensor:
    """ELVA's total reward ``R = alpha * R_M + epsilon * R_R`` under ``cfg`` (default :class:`RewardConfig`).

    ``use_margin=False`` drops ``alpha * R_M``; ``use_ranking=False`` drops ``epsilon * R_R``;
    ``use_neg_order=False`` keeps ``R_R``'s first term only.

    Args:
        s_pos: float ``[...]``; s_neg: float ``[..., N]``; neg_mask: optional bool ``[..., N]``.

    Returns:
        float ``[...]``, one reward per rollout.
    """
    cfg = RewardConfig() if cfg is None else cfg
    valid = _check_scores(s_pos, s_neg, neg_mask)
    reward = torch.zeros_like(s_pos)
    if cfg.use_margin:
        reward = reward + cfg.alpha * margin_reward(s_pos, s_neg, cfg.delta, neg_mask=valid)
    if cfg.use_ranking:
        reward = reward + cfg.epsilon * ranking_reward(
            s_pos,
            s_neg,
            gamma=cfg.gamma,
            log_base=cfg.log_base,
            clamp_neg_weights=cfg.clamp_neg_weights,
            only_above=cfg.only_above,
            use_neg_order=cfg.use_neg_order,
            normalize_neg_weights=cfg.normalize_neg_weights,
            rank_only=cfg.rank_only,
            neg_mask=valid,
        )
    return reward


def group_advantages(rewards: Tensor, eps: float = 1e-6, *, unbiased: bool = False) -> Tensor:
    """GRPO's group-relative advantages ``(R - mean_g R) / (std_g R + eps)`` over the last dimension.

    Args:
        rewards: float ``[..., G]`` (typically ``[B, G]``: ``G`` rollouts of each of ``B`` queries).
        eps: ``> 0``, added to the standard deviation.
        unbiased: ``False`` (default) uses the population std (divide by ``G``), so a group's
            advantages have mean 0 and std ``std / (std + eps) ≈ 1``; ``True`` divides by ``G - 1``
            (what TRL does).

    Returns:
        float ``[..., G]``. A group whose rewards are all exactly equal (including ``G = 1``) gets
        advantage 0 everywhere — never NaN, and never rounding noise amplified by ``1 / eps``.
        Nearly-equal groups are still normalised (that is GRPO: noise within a group is scaled up).
    """
    if not isinstance(rewards, Tensor) or not rewards.is_floating_point() or rewards.dim() < 1:
        raise ElvaInputError("rewards must be a floating-point tensor [..., G]")
    if not _is_real(eps) or eps <= 0:
        raise ElvaInputError(f"eps must be a finite number > 0, got {eps!r}")
    mean = rewards.mean(dim=-1, keepdim=True)
    if rewards.shape[-1] > 1:
        std = rewards.std(dim=-1, keepdim=True, correction=1 if unbiased else 0)
    else:
        std = torch.zeros_like(mean)
    adv = (rewards - mean) / (std + eps)
    constant = rewards.amax(dim=-1, keepdim=True) == rewards.amin(dim=-1, keepdim=True)
    return torch.where(constant, torch.zeros_like(adv), adv)
