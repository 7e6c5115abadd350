"""ELVA's balanced negative sampling for the RL stage: hard negatives + random negatives per query.

Input: a warmup model's scores ``[Nq, Nc]`` (query × candidate; higher = more similar; finite) and each
query's relevant candidates. Output: :class:`NegativeSample`, candidate indices ``[Nq, n]`` padded with
``-1``, with per-query counts so that a pool too small for the request is reported, never hidden.

Modes (:class:`SamplingConfig`)
-------------------------------
``"balanced"`` (default, the paper's strategy)
    ``n_hard`` hard negatives — the top-scoring candidates that are not relevant and not *filtered*
    (see thresholds) — then ``n_random`` random negatives drawn uniformly, without replacement, from
    the rest (not relevant, not filtered, not already taken as hard). Defaults 50 + 50.
``"no_random"`` (ablation)
    Only the ``n_hard`` hard negatives (filtered the same way); ``n = n_hard``.
``"hard_only"`` (ablation)
    The top ``n_hard + n_random`` (default 100) non-relevant candidates, no threshold filter, no
    random ones.

Thresholds (false-negative filter)
----------------------------------
A candidate is *filtered* (dropped from both the hard and the random pool, and counted in
``n_filtered``) when it is not relevant and its score is **strictly above** the threshold:
``threshold_mode="absolute"``: ``threshold``; ``"relative"``: ``threshold * s_pos`` where ``s_pos`` is
the query's best relevant score (queries without a relevant candidate are an error in this mode).
``"none"`` (default) filters nothing: only the known relevant candidates are excluded. The
feasibility study found that with exact relevance labels (as in mrbench's synthetic benchmarks) a
``0.95 * s_pos`` filter threw away 150–180 *true* hard negatives per query, so filtering is opt-in —
use it for noisy labels, where unlabeled positives hide among the top scorers.

Order and determinism
---------------------
Each row lists its hard negatives by score descending (ties by candidate index ascending, never by
whatever order a sort kernel returns), then its random negatives in draw order, then ``-1`` padding.
Random draws come from a ``torch.Generator`` seeded with ``cfg.seed``: the same scores, relevance and
config always give the same sample (a query's draw depends on its row position too).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from elva_baseline.rewards import ElvaInputError

__all__ = ["NegativeSample", "SamplingConfig", "sample_negatives"]

SamplingMode = Literal["balanced", "hard_only", "no_random"]
ThresholdMode = Literal["none", "absolute", "relative"]

_MODES = ("balanced", "hard_only", "no_random")
_THRESHOLD_MODES = ("none", "absolute", "relative")
_CHUNK_ROWS = 256  # queries processed at once (memory); fixed, so results never depend on it


@dataclass(frozen=True)
class SamplingConfig:
    """How many negatives of which kind (see the module docstring).

    Attributes:
        n_hard: hard negatives per query (``>= 0``). Default 50.
        n_random: random negatives per query (``>= 0``). Default 50. In ``"hard_only"`` mode the
            total ``n_hard + n_random`` hard negatives are taken instead.
        threshold_mode: ``"none"`` (default: exclude only the relevant), ``"absolute"`` or ``"relative"``.
        threshold: the absolute score, or the ratio applied to ``s_pos``; required unless
            ``threshold_mode == "none"``, where it must be ``None``.
        mode: ``"balanced"`` (default), ``"hard_only"`` or ``"no_random"``.
        seed: seed of the random draws. Default 0.

    Raises:
        ElvaInputError: (a ``ValueError``) naming the offending field.
    """

    n_hard: int = 50
    n_random: int = 50
    threshold_mode: ThresholdMode = "none"
    threshold: float | None = None
    mode: SamplingMode = "balanced"
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("n_hard", "n_random", "seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or (name != "seed" and value < 0):
                bound = "" if name == "seed" else " >= 0"
                raise ElvaInputError(f"SamplingConfig.{name} must be an integer{bound}, got {value!r}")
        if self.mode not in _MODES:
            raise ElvaInputError(f"SamplingConfig.mode must be one of {_MODES}, got {self.mode!r}")
        if self.threshold_mode not in _THRESHOLD_MODES:
            raise ElvaInputError(
                f"SamplingConfig.threshold_mode must be one of {_THRESHOLD_MODES}, got {self.threshold_mode!r}"
            )
        if self.threshold_mode == "none":
            if self.threshold is not None:
                raise ElvaInputError("SamplingConfig.threshold must be None when threshold_mode is 'none'")
        else:
            t = self.threshold
            if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t):
                raise ElvaInputError(
                    f"SamplingConfig.threshold must be a finite number with threshold_mode={self.threshold_mode!r}, "
                    f"got {t!r}"
                )
            if self.mode == "hard_only":
                raise ElvaInputError(
                    "SamplingConfig.threshold_mode must be 'none' with mode='hard_only' (that ablation filters nothing)"
                )
        if self.width == 0:
            raise ElvaInputError(f"SamplingConfig.n_hard/n_random: mode {self.mode!r} would sample no negative")

    @property
    def hard_requested(self) -> int:
        """Hard negatives asked for per query (``n_hard + n_random`` in ``"hard_only"`` mode)."""
        return self.n_hard + self.n_random if self.mode == "hard_only" else self.n_hard

    @property
    def random_requested(self) -> int:
        """Random negatives asked for per query (0 unless ``"balanced"``)."""
        return self.n_random if self.mode == "balanced" else 0

    @property
    def width(self) -> int:
        """Columns of :attr:`NegativeSample.indices`: negatives requested per query."""
        return self.hard_requested + self.random_requested


@dataclass(frozen=True)
class NegativeSample:
    """The sampled negatives and a per-query report of what each pool could give.

    Attributes:
        indices: int64 ``[Nq, n]`` candidate indices (hard, then random, then ``-1`` padding);
            ``n = cfg.width``.
        n_hard: int64 ``[Nq]`` hard negatives actually taken.
        n_random: int64 ``[Nq]`` random negatives actually taken.
        n_filtered: int64 ``[Nq]`` non-relevant candidates dropped by the threshold filter.
        requested: negatives asked for per query (``n``).
    """

    indices: Tensor
    n_hard: Tensor
    n_random: Tensor
    n_filtered: Tensor
    requested: int

    @property
    def n_short(self) -> Tensor:
        """int64 ``[Nq]``: negatives missing per query because its pool was too small."""
        return self.requested - self.n_hard - self.n_random

    @property
    def mask(self) -> Tensor:
        """bool ``[Nq, n]``: ``True`` where :attr:`indices` holds a candidate (not padding)."""
        return self.indices >= 0

    def summary(self) -> dict[str, float]:
        """Aggregate report: queries, requested, short queries, mean hard/random/filtered counts."""
        nq = int(self.indices.shape[0])
        if nq == 0:
            return {"queries": 0, "requested": self.requested, "queries_short": 0, "missing": 0}
        return {
            "queries": nq,
            "requested": self.requested,
            "queries_short": int((self.n_short > 0).sum()),
            "missing": int(self.n_short.sum()),
            "mean_hard": float(self.n_hard.double().mean()),
            "mean_random": float(self.n_random.double().mean()),
            "mean_filtered": float(self.n_filtered.double().mean()),
        }


def _relevant_rows(relevant: Tensor | Sequence[Iterable[int]], start: int, stop: int, n_cand: int) -> Tensor:
    if isinstance(relevant, Tensor):
        return relevant[start:stop]
    rows = torch.zeros((stop - start, n_cand), dtype=torch.bool)
    for i in range(start, stop):
        idx = [int(j) for j in relevant[i]]
        if idx:
            t = torch.tensor(idx, dtype=torch.long)
            if int(t.min()) < 0 or int(t.max()) >= n_cand:
                raise ElvaInputError(f"relevant[{i}] holds a candidate index outside 0..{n_cand - 1}")
            rows[i - start, t] = True
    return rows


def _take(keys: Tensor, eligible: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Top-``k`` eligible columns by ``keys``, ordered by key descending then column ascending.

    Exact under ties: ``topk`` picks the candidates, but where a tie straddles the cut (so ``topk``
    may pick any of the tied columns) the row falls back to a stable full sort, which takes the
    lowest columns. Returns ``(picked [rows, k] with -1 where too few, count [rows])``.
    """
    rows, cols = keys.shape
    k_eff = min(k, cols)
    count = torch.count_nonzero(eligible, dim=-1).clamp_max(k_eff)
    if k_eff == 0:
        return keys.new_full((rows, k), -1, dtype=torch.long), count
    masked = keys.masked_fill(~eligible, float("-inf"))
    kth, idx = torch.topk(masked, k_eff, dim=-1)
    ambiguous = torch.count_nonzero(masked >= kth[:, -1:], dim=-1) > k_eff
    if bool(ambiguous.any()):
        redo = ambiguous.nonzero().squeeze(1)
        idx[redo] = torch.sort(masked[redo], dim=-1, descending=True, stable=True).indices[:, :k_eff]
    idx = torch.sort(idx, dim=-1).values  # column ascending ...
    order = torch.sort(masked.gather(-1, idx), dim=-1, descending=True, stable=True).indices
    idx = idx.gather(-1, order)  # ... then key descending
    slot = torch.arange(k_eff, device=keys.device)
    picked = torch.where(slot < count.unsqueeze(-1), idx, torch.full_like(idx, -1))
    if k_eff < k:
        picked = torch.cat([picked, picked.new_full((rows, k - k_eff), -1)], dim=-1)
    return picked, count


def sample_negatives(
    scores: Tensor,
    relevant: Tensor | Sequence[Iterable[int]],
    cfg: SamplingConfig | None = None,
) -> NegativeSample:
    """Sample each query's hard and random negatives from a warmup model's scores.

    Args:
        scores: float ``[Nq, Nc]``, finite; higher = more similar.
        relevant: each query's relevant candidates: a bool tensor ``[Nq, Nc]`` or a sequence of ``Nq``
            iterables of candidate indices. Relevant candidates are never sampled.
        cfg: :class:`SamplingConfig` (default: balanced 50 + 50, no threshold filter, seed 0).

    Returns:
        :class:`NegativeSample`. A pool too small for the request yields what exists; the counts
        (``n_hard``, ``n_random``, ``n_short``) say how much.

    Raises:
        ElvaInputError: on bad shapes, non-finite scores, out-of-range indices, or a query without a
            relevant candidate under ``threshold_mode="relative"``.
    """
    cfg = SamplingConfig() if cfg is None else cfg
    scores = torch.as_tensor(scores)
    if scores.dim() != 2 or not scores.is_floating_point():
        raise ElvaInputError(f"scores must be a float tensor [Nq, Nc], got {scores.dtype} {tuple(scores.shape)}")
    if not bool(torch.isfinite(scores).all()):
        raise ElvaInputError("scores must be finite (no NaN or inf)")
    n_q, n_c = scores.shape
    if isinstance(relevant, Tensor):
        if relevant.dtype != torch.bool or relevant.shape != scores.shape:
            raise ElvaInputError(f"relevant as a tensor must be bool [Nq, Nc] = {list(scores.shape)}")
        relevant = relevant.to(scores.device)
    elif len(relevant) != n_q:
        raise ElvaInputError(f"relevant must list one set of indices per query: {len(relevant)} for {n_q} queries")

    generator = torch.Generator(device="cpu").manual_seed(cfg.seed)
    n_hard_req, n_rand_req = cfg.hard_requested, cfg.random_requested
    out_idx, out_hard, out_rand, out_filt = [], [], [], []
    for start in range(0, n_q, _CHUNK_ROWS):
        stop = min(n_q, start + _CHUNK_ROWS)
        s = scores[start:stop]
        rel = _relevant_rows(relevant, start, stop, n_c).to(s.device)
        if cfg.threshold_mode == "none":
            filtered = torch.zeros_like(rel)
        else:
            if cfg.threshold_mode == "absolute":
                thr = torch.full((stop - start, 1), float(cfg.threshold), dtype=s.dtype, device=s.device)
            else:
                has_pos = rel.any(dim=-1)
                if not bool(has_pos.all()):
                    first = start + int((~has_pos).nonzero()[0])
                    raise ElvaInputError(
                        f"query {first} has no relevant candidate: threshold_mode='relative' needs a positive score"
                    )
                s_pos = s.masked_fill(~rel, float("-inf")).amax(dim=-1, keepdim=True)
                thr = float(cfg.threshold) * s_pos
            filtered = ~rel & (s > thr)
        eligible = ~rel & ~filtered
        hard, n_hard = _take(s, eligible, n_hard_req)
        parts = [hard]
        n_rand = torch.zeros_like(n_hard)
        if n_rand_req > 0:
            rest = eligible.clone()
            rows = torch.arange(stop - start, device=s.device).unsqueeze(-1).expand_as(hard)
            taken = hard >= 0
            rest[rows[taken], hard[taken]] = False
            keys = torch.rand((stop - start, n_c), generator=generator, dtype=torch.float64).to(s.device)
            rand, n_rand = _take(keys, rest, n_rand_req)
            parts.append(rand)
        block = torch.cat(parts, dim=-1)
        # Move the -1 padding of the hard part behind the random negatives (stable: order kept).
        block = torch.gather(block, -1, torch.sort((block < 0).to(torch.int8), dim=-1, stable=True).indices)
        out_idx.append(block)
        out_hard.append(n_hard)
        out_rand.append(n_rand)
        out_filt.append(torch.count_nonzero(filtered, dim=-1))
    if n_q == 0:
        empty = torch.zeros(0, dtype=torch.long, device=scores.device)
        no_rows = torch.zeros((0, cfg.width), dtype=torch.long, device=scores.device)
        return NegativeSample(no_rows, empty, empty, empty, cfg.width)
    return NegativeSample(
        indices=torch.cat(out_idx).long(),
        n_hard=torch.cat(out_hard).long(),
        n_random=torch.cat(out_rand).long(),
        n_filtered=torch.cat(out_filt).long(),
        requested=cfg.width,
    )


def queries_with_negatives(indices: Tensor) -> Sequence[int]:
    """The rows of a :attr:`NegativeSample.indices` ``[Nq, n]`` (``-1`` padding) holding at least one
    negative: ``range(Nq)`` when every row does (a sampler drawing from it then draws exactly as
    from every query), else the list of those rows. A query whose pool holds nothing but relevant
    (or threshold-filtered) candidates has none, and no rule reward can be computed for it."""
    n_q = int(indices.shape[0])
    has = (indices >= 0).any(dim=1) if indices.dim() == 2 and indices.shape[1] else torch.zeros(n_q, dtype=torch.bool)
    if bool(has.all()):
        return range(n_q)
    return torch.nonzero(has).flatten().tolist()
