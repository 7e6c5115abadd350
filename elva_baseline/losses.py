"""Training objectives of the ELVA trainer: InfoNCE (contrastive warmup) and the GRPO surrogate.

InfoNCE
-------
:func:`info_nce` is the in-batch contrastive loss: row ``i`` of ``query`` is paired with row ``i``
of ``candidate``; every other candidate of the batch (plus optional per-query hard negatives) is a
negative. Logits are ``sim / temperature`` with ``sim`` the cosine similarity (``normalize=True``,
default) or the raw inner product. It is cross-entropy over those logits, averaged over the batch
(``F.cross_entropy``); ``symmetric=True`` averages it with the candidate→query direction.

GRPO
----
:func:`grpo_loss` is the clipped policy-ratio surrogate of PPO with GRPO's group-relative
advantages and a KL penalty to a frozen reference policy (DeepSeekMath, arXiv 2402.03300):

    objective = min(rho * A, clip(rho, 1 - clip_eps, 1 + clip_eps) * A) - beta * KL_k3
    rho = exp(logp_new - logp_old),   KL_k3 = exp(logp_ref - logp_new) - (logp_ref - logp_new) - 1

``KL_k3`` is Schulman's unbiased, always non-negative estimator of ``KL(new || ref)`` (0 exactly
when ``logp_new == logp_ref``). The loss is ``-objective`` averaged: per rollout for log-probs
``[B, G]``; per token for ``[B, G, T]``, first the mean over each sequence's valid tokens, then the
mean over sequences (GRPO's ``1/G Σ_i 1/|o_i| Σ_t``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from elva_baseline.rewards import ElvaInputError

__all__ = ["grpo_loss", "info_nce", "shared_positive_mask"]


def _finite_positive(name: str, value: object, *, allow_zero: bool = False) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ElvaInputError(f"{name} must be a finite number {bound}, got {value!r}")
    return float(value)


def _check_bool_mask(name: str, mask: object, shape: tuple[int, ...], dims: str) -> Tensor:
    if not isinstance(mask, Tensor) or mask.dtype != torch.bool or tuple(mask.shape) != tuple(shape):
        raise ElvaInputError(f"{name} must be a bool tensor {dims} = {list(shape)}")
    return mask


def shared_positive_mask(positive_ids: Tensor) -> Tensor:
    """False-negative mask for :func:`info_nce` from each query's positive-candidate id.

    Args:
        positive_ids: int ``[B]``, an id of each row's positive candidate (any integer id space).

    Returns:
        bool ``[B, B]``: ``True`` at ``(i, j)``, ``i != j``, when rows ``i`` and ``j`` share their positive
        (so candidate ``j`` is also a positive of query ``i`` and must not be its negative).
    """
    if not isinstance(positive_ids, Tensor) or positive_ids.dim() != 1:
        raise ElvaInputError("positive_ids must be a 1-D tensor [B]")
    same = positive_ids.unsqueeze(0) == positive_ids.unsqueeze(1)
    return same & ~torch.eye(positive_ids.shape[0], dtype=torch.bool, device=positive_ids.device)


def info_nce(
    query: Tensor,
    candidate: Tensor,
    *,
    temperature: float = 0.05,
    symmetric: bool = True,
    hard_negatives: Tensor | None = None,
    hard_negative_mask: Tensor | None = None,
    false_negative_mask: Tensor | None = None,
    normalize: bool = True,
) -> Tensor:
    """In-batch InfoNCE with optional hard negatives and a false-negative mask.

    Query ``i``'s logits are ``[sim(q_i, c_1..c_B), sim(q_i, h_i1..h_iH)] / temperature`` and its target is
    ``c_i``. With ``symmetric=True`` the loss is ``0.5 * (L_q→c + L_c→q)`` where candidate ``j``'s
    logits are ``sim(c_j, q_1..q_B) / temperature`` (hard negatives belong to the queries and enter
    only the query→candidate direction).

    Args:
        query: float ``[B, D]``.
        candidate: float ``[B, D]``, row ``i`` is query ``i``'s positive.
        temperature: ``> 0``. Default 0.05.
        symmetric: average with the candidate→query direction (default) or query→candidate only.
        hard_negatives: optional float ``[B, H, D]``: extra negatives of each query.
        hard_negative_mask: optional bool ``[B, H]``: ``False`` drops a hard-negative slot (padding, or a
            known positive). Needs ``hard_negatives``.
        false_negative_mask: optional bool ``[B, B]``: ``True`` at ``(i, j)`` removes candidate ``j`` from
            query ``i``'s negatives (and query ``i`` from candidate ``j``'s, in the symmetric direction) —
            e.g. two queries sharing a positive (:func:`shared_positive_mask`). The diagonal is ignored:
            the positive always stays.
        normalize: L2-normalise every embedding first (cosine similarity). Default ``True``.

    Returns:
        Scalar loss (mean over the batch).
    """
    temperature = _finite_positive("temperature", temperature)
    if not isinstance(query, Tensor) or not isinstance(candidate, Tensor):
        raise ElvaInputError("query and candidate must be torch tensors")
    if query.dim() != 2 or query.shape != candidate.shape or query.shape[0] == 0:
        raise ElvaInputError(
            "query and candidate must both be [B, D] with B >= 1, "
            f"got {tuple(query.shape)} and {tuple(candidate.shape)}"
        )
    batch, dim = query.shape
    if normalize:
        query = F.normalize(query, dim=-1)
        candidate = F.normalize(candidate, dim=-1)
    logits = query @ candidate.T / temperature  # [B, B], row = query
    if false_negative_mask is not None:
        _check_bool_mask("false_negative_mask", false_negative_mask, (batch, batch), "[B, B]")
        drop = false_negative_mask & ~torch.eye(batch, dtype=torch.bool, device=false_negative_mask.device)
        logits = logits.masked_fill(drop, float("-inf"))
    q2c_logits = logits
    if hard_negatives is not None:
        if (
            not isinstance(hard_negatives, Tensor)
            or hard_negatives.dim() != 3
            or hard_negatives.shape[0] != batch
            or hard_negatives.shape[2] != dim
        ):
            raise ElvaInputError(f"hard_negatives must be a tensor [B, H, D] = [{batch}, H, {dim}]")
        if normalize:
            hard_negatives = F.normalize(hard_negatives, dim=-1)
        hard_logits = torch.einsum("bd,bhd->bh", query, hard_negatives) / temperature
        if hard_negative_mask is not None:
            _check_bool_mask("hard_negative_mask", hard_negative_mask, tuple(hard_logits.shape), "[B, H]")
            hard_logits = hard_logits.masked_fill(~hard_negative_mask, float("-inf"))
        q2c_logits = torch.cat([logits, hard_logits], dim=1)
    elif hard_negative_mask is not None:
        raise ElvaInputError("hard_negative_mask given without hard_negatives")
    target = torch.arange(batch, device=query.device)
    loss = F.cross_entropy(q2c_logits, target)
    if symmetric:
        loss = 0.5 * (loss + F.cross_entropy(logits.T, target))
    return loss


def grpo_loss(
    logp_new: Tensor,
    logp_old: Tensor,
    logp_ref: Tensor | None,
    advantages: Tensor,
    *,
    clip_eps: float = 0.2,
    beta: float = 0.2,
    mask: Tensor | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """GRPO's clipped surrogate with a k3 KL penalty (see the module docstring for the formula).

    Args:
        logp_new: float ``[B, G]`` (one log-prob per rollout, e.g. a Gaussian policy's) or
            ``[B, G, T]`` (per token); carries the gradient.
        logp_old: same shape: log-probs under the policy that sampled the rollouts (detached here).
        logp_ref: same shape, log-probs under the frozen reference (detached here); ``None`` only
            with ``beta == 0`` (no KL anchor; the ``"kl"`` stat is then NaN).
        advantages: float ``[B, G]`` (see :func:`elva_baseline.rewards.group_advantages`); shared by
            all tokens of a rollout; detached here.
        clip_eps: ``> 0``, the ratio is clipped to ``[1 - clip_eps, 1 + clip_eps]``. Default 0.2.
        beta: ``>= 0``, weight of the KL penalty. Default 0.2.
        mask: optional, shaped like ``logp_new`` (bool or 0/1 float): which tokens (or rollouts) count.
            Token-level: each sequence is averaged over its valid tokens; sequences without any valid
            token are left out of the mean over sequences. At least one element must be valid.

    Returns:
        ``(loss, stats)``: the scalar loss to minimise (``-objective``), and floats aggregated the same
        way as the loss: ``"ratio_mean"`` (mean ``rho``), ``"clip_frac"`` (fraction of elements whose
        gradient the clip removes: ``rho > 1 + clip_eps`` with ``A > 0`` or ``rho < 1 - clip_eps`` with
        ``A < 0``), ``"kl"`` (mean ``KL_k3``, ``>= 0``), ``"adv_mean"`` (mean advantage) and
        ``"policy_objective"`` (mean clipped surrogate, before the KL penalty).
    """
    clip_eps = _finite_positive("clip_eps", clip_eps)
    beta = _finite_positive("beta", beta, allow_zero=True)
    for name, t in (("logp_new", logp_new), ("logp_old", logp_old), ("advantages", advantages)):
        if not isinstance(t, Tensor) or not t.is_floating_point():
            raise ElvaInputError(f"{name} must be a floating-point tensor")
    if logp_new.dim() not in (2, 3):
        raise ElvaInputError(f"logp_new must be [B, G] or [B, G, T], got shape {tuple(logp_new.shape)}")
    if logp_old.shape != logp_new.shape:
        raise ElvaInputError(
            f"logp_old must be shaped like logp_new {tuple(logp_new.shape)}, got {tuple(logp_old.shape)}"
        )
    if logp_ref is None:
        if beta != 0:
            raise ElvaInputError("logp_ref is None but beta > 0: pass the reference log-probs or set beta=0")
    elif not isinstance(logp_ref, Tensor) or logp_ref.shape != logp_new.shape:
        raise ElvaInputError(f"logp_ref must be a tensor shaped like logp_new {tuple(logp_new.shape)}")
    if advantages.shape != logp_new.shape[:2]:
        raise ElvaInputError(f"advantages must be [B, G] = {list(logp_new.shape[:2])}, got {tuple(advantages.shape)}")
    if mask is None:
        weight = torch.ones_like(logp_new)
    else:
        if not isinstance(mask, Tensor) or mask.shape != logp_new.shape:
            raise ElvaInputError(f"mask must be shaped like logp_new {tuple(logp_new.shape)}")
        valid = mask if mask.dtype == torch.bool else mask != 0
        weight = valid.to(logp_new.dtype)
        # Zero the masked slots first: padding may hold -inf/NaN log-probs, and inf * 0 (or a NaN
        # gradient behind a where) must not leak into the loss or its gradient.
        zero = torch.zeros((), dtype=logp_new.dtype, device=logp_new.device)
        logp_new = torch.where(valid, logp_new, zero)
        logp_old = torch.where(valid, logp_old, zero)
        if logp_ref is not None:
            logp_ref = torch.where(valid, logp_ref, zero)

    adv = advantages.detach()
    if logp_new.dim() == 3:
        adv = adv.unsqueeze(-1).expand_as(logp_new)
    ratio = torch.exp(logp_new - logp_old.detach())
    clipped = torch.clamp(ratio, 1.0 - clip_eps, 1.0 + clip_eps)
    surrogate = torch.minimum(ratio * adv, clipped * adv)
    if logp_ref is not None:
        log_ref_over_new = logp_ref.detach() - logp_new
        kl = torch.exp(log_ref_over_new) - log_ref_over_new - 1.0
    else:
        kl = torch.zeros_like(logp_new)
    objective = surrogate - beta * kl if beta > 0 else surrogate

    # Aggregation: per-sequence mean over valid tokens, then mean over sequences that have any.
    if logp_new.dim() == 3:
        n_tok = weight.sum(dim=-1)  # [B, G]
        seq_ok = n_tok > 0

        def reduce(x: Tensor) -> Tensor:
            per_seq = (x * weight).sum(dim=-1) / n_tok.clamp_min(1.0)
            return per_seq[seq_ok].mean()

    else:
        seq_ok = weight > 0

        def reduce(x: Tensor) -> Tensor:
            return (x * weight).sum() / weight.sum()

    if not bool(seq_ok.any()):
        raise ElvaInputError("mask leaves no valid token or rollout")
    loss = -reduce(objective)
    with torch.no_grad():
        clip_hit = ((ratio > 1.0 + clip_eps) & (adv > 0)) | ((ratio < 1.0 - clip_eps) & (adv < 0))
        stats = {
            "ratio_mean": float(reduce(ratio)),
            "clip_frac": float(reduce(clip_hit.to(logp_new.dtype))),
            "kl": float(reduce(kl)) if logp_ref is not None else float("nan"),
            "adv_mean": float(advantages.detach()[seq_ok].mean()),
            "policy_objective": float(reduce(surrogate)),
        }
    return loss, stats


def gaussian_kl(mean: Tensor, ref_mean: Tensor, sigma: Tensor, ref_sigma: float | Tensor) -> Tensor:
    """Mean over rows of KL(N(mean, σ²I) || N(ref_mean, σ_ref²I)) for ``[B, D]`` means (nats):
    ``‖Δμ‖² / 2σ_ref² + D/2 · (σ²/σ_ref² − 1 − log(σ²/σ_ref²))``.

    With ``sigma`` equal to ``ref_sigma`` (the default, σ fixed) the second term is 0 and this is
    ``‖Δμ‖² / 2σ²``; with a learnable σ it anchors σ to the reference's too (its gradient in σ is 0 at
    σ = σ_ref), where ``‖Δμ‖² / 2σ²`` alone would reward any growth of σ.
    """
    ref_sigma = torch.as_tensor(ref_sigma, dtype=mean.dtype, device=mean.device)
    d = int(mean.shape[-1])
    ratio2 = (sigma / ref_sigma) ** 2
    return ((mean - ref_mean) ** 2).sum(-1).mean() / (2 * ref_sigma ** 2) + 0.5 * d * (ratio2 - 1 - torch.log(ratio2))
