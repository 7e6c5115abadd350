"""Aggregation of per-query metrics by task, grain count and grain type.

Input
-----
A per-query :class:`pandas.DataFrame` with the columns

``task`` (str), ``qid``, ``n_grains`` (int), ``grain_types`` (list of str per query),
``ties`` (int: non-relevant candidates tied exactly with the query's best-ranked relevant candidate),
``dropped`` (bool), ``first_rank`` (float) and any number of metric columns named ``name@k``
(``hit@5``, ``recall@5``, ``mrr@5``, ``ndcg@5``, ... as made by
:func:`mrbench.metrics.ranking.score_queries`).

Statistics of a group (every function below returns one row per group)
-----------------------------------------------------------------------
``n_queries``
    queries that were scored (not dropped) — the denominator of every mean;
``n_dropped``
    queries dropped because they have no relevant candidate (never scored as 0 or 1);
``<metric>@k``
    mean over the scored queries (NaN when a group has none);
``mean_rank`` / ``median_rank``
    of ``first_rank`` over the scored queries;
``queries_with_ties``
    scored queries whose best-ranked relevant candidate ties with at least one non-relevant candidate;
``ties``
    sum of ``ties`` over the scored queries.

Every average here is a **micro** average over queries within its group. :func:`macro` averages
the per-task rows instead, giving each task the same weight.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Sequence

import numpy as np

from mrbench.errors import MrbenchError

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

__all__ = [
    "ALL_TASKS",
    "AggregationError",
    "STAT_COLUMNS",
    "by_grain_count",
    "by_grain_type",
    "by_task",
    "grain_bucket_labels",
    "macro",
    "metric_columns",
]

ALL_TASKS = "all"
"""Task label of the pooled rows of :func:`by_grain_count` / :func:`by_grain_type`."""

STAT_COLUMNS: tuple[str, ...] = ("mean_rank", "median_rank", "queries_with_ties", "ties")
"""Non-metric statistics in every aggregated row (after ``n_queries``, ``n_dropped`` and the metrics)."""

_METRIC_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*@\d+$")
_REQUIRED = ("task", "dropped", "first_rank", "ties")


class AggregationError(MrbenchError):
    """The per-query table lacks columns or holds inconsistent values."""


def metric_columns(df: "pd.DataFrame") -> list[str]:
    """Metric columns of ``df`` (names like ``hit@5``), in column order."""
    return [c for c in df.columns if isinstance(c, str) and _METRIC_RE.match(c)]


def _require(df: "pd.DataFrame", cols: Sequence[str]) -> None:
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise AggregationError(
            f"per-query table lacks column(s) {', '.join(missing)}; build it with score_queries() and add "
            "task, qid, n_grains, grain_types and ties"
        )
    if (df["task"].astype(str) == ALL_TASKS).any():
        raise AggregationError(f"a task is named {ALL_TASKS!r}, which is reserved for pooled rows; rename the task")


def _group_stats(df: "pd.DataFrame", keys: list[str]) -> "pd.DataFrame":
    """The statistics of the module docstring for each group of ``keys`` (vectorised)."""
    import pandas as pd

    metrics = metric_columns(df)
    scored = ~df["dropped"].astype(bool)
    work = pd.DataFrame({k: df[k] for k in keys})
    work["n_queries"] = scored.astype(np.int64)
    work["n_dropped"] = (~scored).astype(np.int64)
    for m in metrics:
        work[m] = df[m].astype(np.float64).where(scored)
    work["_rank"] = df["first_rank"].astype(np.float64).where(scored)
    ties = df["ties"].fillna(0).astype(np.int64).where(scored, 0)
    work["queries_with_ties"] = (ties > 0).astype(np.int64)
    work["ties"] = ties
    g = work.groupby(keys, sort=True, observed=True, dropna=True)
    out = g[["n_queries", "n_dropped"]].sum()
    if metrics:
        out = out.join(g[metrics].mean())
    out["mean_rank"] = g["_rank"].mean()
    out["median_rank"] = g["_rank"].median()
    out = out.join(g[["queries_with_ties", "ties"]].sum())
    return out.reset_index()


def by_task(df: "pd.DataFrame") -> "pd.DataFrame":
    """One row per task: means of every metric over scored queries and the group statistics."""
    _require(df, _REQUIRED)
    return _group_stats(df, ["task"])


def grain_bucket_labels(buckets: Sequence[int]) -> list[str]:
    """Labels of the grain-count buckets: ``(2, 3, 4, 5)`` → ``["2", "3", "4", "5+"]``.

    Bucket ``i`` holds ``buckets[i] <= n_grains < buckets[i + 1]`` (labelled ``"a"`` when it holds
    one value, ``"a-b"`` otherwise); the last bucket is open (``"5+"``). Queries with fewer grains
    than ``buckets[0]`` form a leading ``"<2"`` bucket.
    """
    b = [int(x) for x in buckets]
    if not b or any(x < 0 for x in b) or any(y <= x for x, y in zip(b, b[1:])):
        raise AggregationError(f"buckets {tuple(buckets)} must be non-empty, non-negative and strictly increasing")
    labels = [f"<{b[0]}"]
    for i, lo in enumerate(b):
        if i == len(b) - 1:
            labels.append(f"{lo}+")
        elif b[i + 1] - lo == 1:
            labels.append(f"{lo}")
        else:
            labels.append(f"{lo}-{b[i + 1] - 1}")
    return labels


def _with_pooled(df: "pd.DataFrame") -> "pd.DataFrame":
    import pandas as pd

    pooled = df.copy()
    pooled["task"] = ALL_TASKS
    return pd.concat([df, pooled], ignore_index=True)


def by_grain_count(df: "pd.DataFrame", buckets: Sequence[int] = (2, 3, 4, 5)) -> "pd.DataFrame":
    """One row per (task, grain-count bucket), plus pooled rows with ``task == "all"``.

    Column ``grain_count`` holds the bucket label (see :func:`grain_bucket_labels`; an ordered
    categorical, so sorting follows the buckets). The ``"all"`` rows pool the queries of every
    task (a micro average across tasks: larger tasks weigh more), e.g. for the paper's
    "performance vs number of grains" curve. Only buckets that hold queries appear.
    """
    import pandas as pd

    _require(df, (*_REQUIRED, "n_grains"))
    labels = grain_bucket_labels(buckets)
    b = np.asarray([int(x) for x in buckets])
    n = df["n_grains"].astype(np.int64).to_numpy()
    pos = np.searchsorted(b, n, side="right")  # 0 = below the first bucket
    work = df.copy()
    work["grain_count"] = pd.Categorical.from_codes(pos, categories=labels, ordered=True)
    work = _with_pooled(work)
    work["task"] = pd.Categorical(work["task"].astype(str), categories=_task_order(df), ordered=True)
    out = _group_stats(work, ["task", "grain_count"])
    out["task"] = out["task"].astype(str)
    return out


def by_grain_type(df: "pd.DataFrame") -> "pd.DataFrame":
    """One row per (task, grain type), plus pooled rows with ``task == "all"``.

    A query counts once in each grain type it contains (a query with two attribute grains and one
    entity grain counts once under ``attribute`` and once under ``entity``), so the groups of a task
    overlap and their ``n_queries`` may add up to more than the task's. Queries without grains
    appear in no group.
    """
    import pandas as pd

    _require(df, (*_REQUIRED, "grain_types"))
    work = df.copy()
    work["grain_type"] = work["grain_types"].map(lambda ts: sorted({str(t) for t in ts}) if ts is not None and len(ts) else [])
    work = work.explode("grain_type", ignore_index=True)
    work = work[work["grain_type"].notna()]
    work = _with_pooled(work)
    work["task"] = pd.Categorical(work["task"].astype(str), categories=_task_order(df), ordered=True)
    out = _group_stats(work, ["task", "grain_type"])
    out["task"] = out["task"].astype(str)
    return out


def _task_order(df: "pd.DataFrame") -> list[str]:
    tasks = sorted(df["task"].astype(str).unique().tolist())
    return [*tasks, ALL_TASKS]


def macro(df_by_task: "pd.DataFrame") -> "pd.DataFrame":
    """Macro average over tasks of a :func:`by_task` table: each task weighs the same.

    Returns one row with ``task == "macro"``: ``n_tasks``; ``n_queries``, ``n_dropped``,
    ``queries_with_ties`` and ``ties`` summed; every metric, ``mean_rank`` and ``median_rank``
    averaged over the tasks that scored at least one query (so ``median_rank`` is the mean of the
    per-task medians, not a median over queries). Tasks where every query was dropped do not
    count in the averages (their metrics are undefined) but their ``n_dropped`` is summed.
    """
    import pandas as pd

    _require(df_by_task, ("task", "n_queries", "n_dropped", *STAT_COLUMNS))
    metrics = metric_columns(df_by_task)
    scored = df_by_task[df_by_task["n_queries"] > 0]
    row: dict[str, object] = {
        "task": "macro",
        "n_tasks": int(len(scored)),
        "n_queries": int(df_by_task["n_queries"].sum()),
        "n_dropped": int(df_by_task["n_dropped"].sum()),
    }
    for m in (*metrics, "mean_rank", "median_rank"):
        row[m] = float(scored[m].astype(np.float64).mean()) if len(scored) else float("nan")
    row["queries_with_ties"] = int(df_by_task["queries_with_ties"].sum())
    row["ties"] = int(df_by_task["ties"].sum())
    return pd.DataFrame([row])
