"""Query selection shared by the builders that draw from real data (:mod:`mrbench.builders.mbeir`,
:mod:`mrbench.builders.hf`): the deterministic per-task draw, the richest-caption rule for image
queries, and the grain-count summary of a build report."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence

from mrbench.data.schema import Grain, Query


def select_ids(eligible: Sequence[str], per_task: int | None, seed: int, task: str) -> list[str]:
    """The ids a task keeps: ``eligible`` sorted, shuffled with ``random.Random(f"{seed}/{task}")``, the
    first ``per_task`` (all with ``None``), returned sorted — the same inputs and seed give the same ids."""
    order = sorted(eligible)
    random.Random(f"{seed}/{task}").shuffle(order)
    return sorted(order if per_task is None else order[:per_task])


def richest(grain_lists: Sequence[Sequence[Grain]]) -> int:
    """Index of the list with the most grains (ties: the first) — the caption an image query takes its
    grains from."""
    return max(range(len(grain_lists)), key=lambda i: (len(grain_lists[i]), -i))


def by_grain_count(queries: Sequence[Query]) -> dict[str, int]:
    """Queries per grain count, ``"2"``, ``"3"``, ``"4"``, ``"5+"`` (keys in order)."""
    counts = Counter(min(q.n_grains, 5) for q in queries)
    return {(f"{k}+" if k == 5 else str(k)): counts[k] for k in sorted(counts)}
