"""Rich tables for the terminal: tasks × K, grain counts × K, grain sensitivity, encoder comparison."""

from __future__ import annotations

from typing import Any


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def task_table(result: Any):
    """Rows: tasks and the macro average. Columns: hit@k for every k, recall, MRR, nDCG at the largest k,
    mean rank of the first relevant candidate, queries with ties, queries (dropped)."""
    from rich.table import Table

    d = result.data
    ks = d["settings"]["ks"]
    kmax = max(ks)
    t = Table(
        title=f"{d['encoder']['name']} on {d['benchmark']['name']} — R@K = hit@k (any relevant in top k)",
        caption="rec = recall@k; rank = mean rank of the first relevant; tied = queries whose first relevant ties "
        "with others (ranked pessimistically); n = queries scored",
    )
    t.add_column("task", style="bold")
    for k in ks:
        t.add_column(f"R@{k}", justify="right")
    for name in (f"rec@{kmax}", f"MRR@{kmax}", f"nDCG@{kmax}", "rank", "tied", "n"):
        t.add_column(name, justify="right")
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
    from rich.table import Table

    from mrbench.report.charts import headline_k

    d = result.data
    ks = d["settings"]["ks"]
    hk = headline_k(ks)
    gc = d["scores"]["grain_count"]
    tasks = [t for t in d["settings"]["tasks"] if t in gc]
    t = Table(title="by number of grains (all = pooled over tasks)")
    t.add_column("grains", style="bold")
    for k in ks:
        t.add_column(f"all R@{k}", justify="right")
    for task in tasks:
        t.add_column(f"{task} R@{hk}", justify="right")
    t.add_column("n", justify="right")
    pooled = gc.get("all", {})
    buckets = sorted({b for v in gc.values() for b in v}, key=lambda s: (len(s), s))
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
    from rich.table import Table

    sens = result.data["scores"].get("grain_sensitivity") or {}
    if not sens:
        return None
    types = sorted({g for v in sens.values() for g in v.get("by_type", {})})
    t = Table(
        title="grain sensitivity: drop one grain (a grain-blind encoder scores ≈ 0)",
        caption="1−cos = mean cosine distance full vs reduced query (then per grain type); Δrank = mean change of "
        "the target's rank; worse = share of drops that pushed the target down",
    )
    t.add_column("task", style="bold")
    t.add_column("1−cos", justify="right")
    t.add_column("Δrank", justify="right")
    t.add_column("worse", justify="right")
    short = {"action_or_state": "act/state", "attribute": "attr", "relation": "rel", "entity": "entity", "scene": "scene"}
    for g in types:
        t.add_column(short.get(g, g), justify="right")
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
    from rich.table import Table

    from mrbench.report.charts import headline_k

    ks = results[0].data["settings"]["ks"]
    hk = headline_k(ks)
    tasks = results[0].data["settings"]["tasks"]
    t = Table(title="comparison (macro over tasks)")
    t.add_column("encoder", style="bold", no_wrap=True, min_width=min(40, max(len(r.data["encoder"]["name"]) for r in results)))
    for k in ks:
        t.add_column(f"R@{k}", justify="right")
    for task in tasks:
        t.add_column(f"{task} R@{hk}", justify="right")
    t.add_column("1−cos (drop)", justify="right")
    for r in results:
        s = r.data["scores"]
        sens = s.get("grain_sensitivity") or {}
        md = [v["mask_distance"] for v in sens.values()]
        t.add_row(
            r.data["encoder"]["name"],
            *[_fmt(s["macro"].get(f"hit@{k}")) for k in ks],
            *[_fmt((s["tasks"].get(task) or {}).get(f"hit@{hk}")) for task in tasks],
            _fmt(sum(md) / len(md)) if md else "–",
        )
    return t


def print_result(result: Any, console) -> None:
    console.print(task_table(result))
    console.print(grain_count_table(result))
    st = sensitivity_table(result)
    if st is not None:
        console.print(st)
