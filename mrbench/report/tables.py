"""Rich tables for the terminal: tasks × K, grain counts × K, grain sensitivity, encoder comparison."""

from __future__ import annotations

from typing import Any


def new_table(title: str, caption: str | None = None) -> Any:
    """A compact table (a rule under the header, no vertical borders) so that rows of scores fit an
    80-column terminal; add score columns with :func:`score_column`, labels with :func:`label_column`."""
    from rich import box

    return _table_class()(title=title, caption=caption, box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False,
                          collapse_padding=True)


def _table_class() -> type:
    """A rich ``Table`` that widens each :func:`score_column` to its longest value when drawn."""
    global _FittedTable
    if _FittedTable is None:
        from rich.table import Table

        class FittedTable(Table):
            def __rich_console__(self, console: Any, options: Any) -> Any:
                for col in self.columns:
                    if getattr(col, "fit_numbers", False):
                        col.width = max([col.width or 0, *(len(str(c)) for c in col._cells)])
                return super().__rich_console__(console, options)

        _FittedTable = FittedTable
    return _FittedTable


_FittedTable: type | None = None


def score_column(table: Any, header: str, width: int = 5, max_header: int = 12) -> None:
    """A right-aligned number column at least ``width`` wide (``0.123``) or as wide as the header's
    longest word up to ``max_header`` (the header wraps at spaces, a longer word folds), widened to
    its longest value when the table is drawn (a :func:`new_table`), so numbers are never cut."""
    words = [min(len(w), max_header) for w in header.split()]
    table.add_column(header, justify="right", width=max([width, *words]), overflow="fold")
    table.columns[-1].fit_numbers = True


def label_column(table: Any, header: str, labels: Any = (), max_width: int = 20, **kw: Any) -> None:
    """A text column as wide as its longest label up to ``max_width`` (longer ones fold)."""
    width = max([len(header), *(len(str(x)) for x in labels)])
    table.add_column(header, overflow="fold", min_width=min(width, max_width), **kw)


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        out = f"{v:.{digits}f}"
        return out[1:] if out.startswith("-") and not out.strip("-0.") else out  # -0.000 -> 0.000
    return str(v)


def task_table(result: Any):
    """Rows: tasks and the macro average. Columns: hit@k for every k, recall, MRR, nDCG at the largest k,
    mean rank of the first relevant candidate, queries with ties, queries (dropped)."""
    d = result.data
    ks = d["settings"]["ks"]
    kmax = max(ks)
    t = new_table(
        f"{d['encoder']['name']} on {d['benchmark']['name']} — R@K = hit@k (any relevant in top k)",
        "rec = recall@k; rank = mean rank of the first relevant; tied = queries whose first relevant ties "
        "with others (ranked pessimistically); n = queries scored",
    )
    label_column(t, "task", [*d["scores"]["tasks"], "macro"], style="bold")
    for k in ks:
        score_column(t, f"R@{k}")
    for name in (f"rec@{kmax}", f"MRR@{kmax}", f"nDCG@{kmax}", "rank", "tied"):
        score_column(t, name)
    label_column(t, "n", justify="right")  # (with "(k dropped)" where queries were dropped)
    rows = list(d["scores"]["tasks"].items()) + [("macro", d["scores"]["macro"])]
    for name, s in rows:
        if name == "macro":
            t.add_section()
        q = s.get("n_queries")
        dropped = s.get("n_dropped") or 0
        t.add_row(
            name,
            *[_fmt(s.get(f"hit@{k}")) for k in ks],
            _fmt(s.get(f"recall@{kmax}")),
            _fmt(s.get(f"mrr@{kmax}")),
            _fmt(s.get(f"ndcg@{kmax}")),
            _fmt(s.get("mean_rank"), 1),
            _fmt(s.get("queries_with_ties")),
            "–" if q is None else (f"{q}" + (f" ({dropped} dropped)" if dropped else "")),
        )
    return t


def grain_count_table(result: Any):
    """Rows: grain-count buckets (pooled over tasks). Columns: R@k for every k, then R@5 (or the
    headline k) per task."""
    from mrbench.report.charts import headline_k

    d = result.data
    ks = d["settings"]["ks"]
    hk = headline_k(ks)
    gc = d["scores"]["grain_count"]
    tasks = [t for t in d["settings"]["tasks"] if t in gc]
    t = new_table("by number of grains (all = pooled over tasks)")
    label_column(t, "grains", style="bold")
    for k in ks:
        score_column(t, f"all R@{k}")
    for task in tasks:
        score_column(t, f"{task} R@{hk}")
    pooled = gc.get("all", {})
    buckets = sorted({b for v in gc.values() for b in v}, key=lambda s: (len(s), s))
    score_column(t, "n", max([1, *(len(_fmt((pooled.get(b) or {}).get("n_queries"))) for b in buckets)]))
    for b in buckets:
        p = pooled.get(b, {})
        t.add_row(
            b,
            *[_fmt(p.get(f"hit@{k}")) for k in ks],
            *[_fmt((gc.get(task, {}).get(b) or {}).get(f"hit@{hk}")) for task in tasks],
            _fmt(p.get("n_queries")),
        )
    return t


def sensitivity_table(result: Any):
    """Rows: tasks with text queries. Columns: mean cosine distance when one grain is dropped, mean
    change of the target's rank, share of drops that worsened it, and the distance per grain type."""
    sens = result.data["scores"].get("grain_sensitivity") or {}
    if not sens:
        return None
    types = sorted({g for v in sens.values() for g in v.get("by_type", {})})
    t = new_table(
        "grain sensitivity: drop one grain (a grain-blind encoder scores ≈ 0)",
        "1−cos = mean cosine distance full vs reduced query (then per grain type); Δrank = mean change of "
        "the target's rank; worse = share of drops that pushed the target down",
    )
    label_column(t, "task", list(sens), style="bold")
    for name in ("1−cos", "Δrank", "worse"):
        score_column(t, name)
    short = {"action_or_state": "act/state", "attribute": "attr", "relation": "rel", "entity": "entity", "scene": "scene"}
    for g in types:
        score_column(t, short.get(g, g))
    for task, v in sens.items():
        t.add_row(
            task,
            _fmt(v["mask_distance"]),
            _fmt(v["rank_change"], 2),
            _fmt(v["worsened"], 2),
            *[_fmt((v["by_type"].get(g) or {}).get("mask_distance")) for g in types],
        )
    return t


def comparison_table(results: list[Any]):
    """One row per encoder: macro R@k and per-task R@(headline k)."""
    from mrbench.report.charts import headline_k

    ks = results[0].data["settings"]["ks"]
    hk = headline_k(ks)
    tasks = results[0].data["settings"]["tasks"]
    t = new_table("comparison (macro over tasks)",
                  "1−cos (drop) = mean cosine distance between full and one-grain-dropped queries, over all "
                  "drops of all tasks")
    label_column(t, "encoder", [r.data["encoder"]["name"] for r in results], style="bold")
    for k in ks:
        score_column(t, f"R@{k}")
    for task in tasks:
        score_column(t, f"{task} R@{hk}")
    score_column(t, "1−cos (drop)")
    for r in results:
        s = r.data["scores"]
        sens = s.get("grain_sensitivity") or {}
        t.add_row(
            r.data["encoder"]["name"],
            *[_fmt(s["macro"].get(f"hit@{k}")) for k in ks],
            *[_fmt((s["tasks"].get(task) or {}).get(f"hit@{hk}")) for task in tasks],
            _fmt(pooled_drop_distance(sens)),
        )
    return t


def pooled_drop_distance(sens: dict[str, Any]) -> float | None:
    """Mean ``1 − cos`` over every drop of every task, from the per-task ``grain_sensitivity`` summaries
    (each task's mean weighted by its number of drops ``n``; the plain mean of the task means for
    summaries without ``n``); ``None`` without drops."""
    if not sens or any(v.get("mask_distance") is None for v in sens.values()):
        return None
    if all(isinstance(v.get("n"), int) for v in sens.values()):
        total = sum(v["n"] for v in sens.values())
        return sum(v["mask_distance"] * v["n"] for v in sens.values()) / total if total else None
    return sum(v["mask_distance"] for v in sens.values()) / len(sens)


def print_result(result: Any, console) -> None:
    console.print(task_table(result))
    console.print(grain_count_table(result))
    st = sensitivity_table(result)
    if st is not None:
        console.print(st)
