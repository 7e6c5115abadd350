"""Per-grain charts (PNG, matplotlib's Agg backend; imported only when a chart is drawn).

The figure is built with :class:`matplotlib.figure.Figure` directly, not through ``pyplot``: no
global figure manager or backend switch (a caller's interactive backend is left alone), and the
``pyplot`` import (about a third of a second) is skipped. The PNG is the same as drawing the same
figure through ``pyplot`` with the Agg backend.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def headline_k(ks: list[int]) -> int:
    """The k shown in charts and compact tables: 5 (the paper's R@5) when evaluated, else the largest."""
    return 5 if 5 in ks else max(ks)


def grain_chart(result: Any, path: Path) -> Path:
    """Draw hit@k by grain count, hit@k by grain type and grain sensitivity, one colour per task."""
    import numpy as np
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    data = result.data
    k = headline_k(data["settings"]["ks"])
    metric = f"hit@{k}"
    tasks = [t for t in data["settings"]["tasks"] if t in data["scores"]["grain_count"]]
    sens = data["scores"].get("grain_sensitivity") or {}
    n_panels = 3 if sens else 2
    fig = Figure(figsize=(5.2 * n_panels, 4.2), constrained_layout=True)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, n_panels)
    palette = colormaps["tab10"].colors
    color = {t: palette[i % 10] for i, t in enumerate(tasks)}

    def grouped(ax, table: dict[str, dict[str, dict[str, Any]]], value: str, order: list[str], title: str, ylabel: str):
        shown = [t for t in tasks if t in table]
        width = 0.8 / max(1, len(shown))
        x = np.arange(len(order))
        for i, t in enumerate(shown):
            vals = [((table.get(t) or {}).get(o) or {}).get(value) for o in order]
            vals = [np.nan if v is None else v for v in vals]
            ax.bar(x + (i - (len(shown) - 1) / 2) * width, vals, width, label=t, color=color[t])
        ax.set_xticks(x, [o.replace("_", " ") for o in order], rotation=0 if len(order) < 6 else 30)
        ax.set_title(title)
        ax.set_ylabel(ylabel)
        ax.grid(axis="y", alpha=0.3)

    gc = data["scores"]["grain_count"]
    buckets = sorted({b for t in tasks for b in gc.get(t, {})}, key=lambda s: (len(s), s))
    grouped(axes[0], gc, metric, buckets, f"{metric} (R@{k}) by number of grains", metric)
    axes[0].set_xlabel("grains in the query")
    axes[0].set_ylim(0, 1.05)
    gt = data["scores"]["grain_type"]
    types = sorted({g for t in tasks for g in gt.get(t, {})})
    grouped(axes[1], gt, metric, types, f"{metric} by grain type", metric)
    axes[1].set_ylim(0, 1.05)
    if sens:
        st = {t: d.get("by_type", {}) for t, d in sens.items()}
        stypes = sorted({g for d in st.values() for g in d})
        grouped(axes[2], st, "mask_distance", stypes, "grain sensitivity: 1 − cos(full, one grain dropped)", "mean cosine distance")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=len(tasks), fontsize=9, frameon=False)
    enc = data["encoder"]["name"]
    fig.suptitle(f"{enc} on {data['benchmark']['name']} ({data['benchmark']['split']})", fontsize=11)
    fig.savefig(path, dpi=110)
    return Path(path)
