"""Views of a leaderboard (``leaderboard.json``, schema_version 1): flat rows, sorting, a rich table,
a GitHub Markdown table and one self-contained HTML page.

Conventions shared by every view:

* A *row* is a flat ``dict`` for one leaderboard entry (see :func:`entry_rows` for its keys). All rows
  returned by one :func:`entry_rows` call have the same keys in the same order; a value that is missing,
  ``null`` or NaN in the leaderboard is ``None``.
* Metric values are fractions in [0, 1] (``hit@k``, ``recall@k``, ``mrr@k``, ``ndcg@k``), shown with three
  decimals; ``mean_rank``/``median_rank`` are ranks (>= 1). ``None`` is shown as ``—``.
* The grain columns are computed from hit@5: ``g2``, ``g3``, ``g4``, ``g5+`` are hit@5 on the queries with
  2, 3, 4 and 5 or more grains (``scores.grain_count["all"]`` for the macro view, ``grain_count[task]`` for
  one task) and ``drop = g2 − g5+`` (or, when 5+ is missing, ``g2`` minus the largest grain-count bucket
  present): the coarse → fine drop; larger means the encoder loses more as queries get finer.
* ``status`` is ``"verified"`` (metrics recomputed from the submitted run files) or ``"self-reported"``;
  tables show ``✓ verified`` / ``self-reported``.

A benchmark, task or column name that the leaderboard does not have raises :class:`UnknownViewName` (a
:class:`~mrbench.errors.MrbenchError`, so the CLI prints one line, and a ``ValueError``) naming the close
matches and the known names.

Only the standard library (and :mod:`mrbench.errors`) is imported at module level; :func:`rich_table`
imports rich when called.
"""

from __future__ import annotations

import html
import math
import re
from typing import TYPE_CHECKING, Any

from mrbench.errors import UnknownNameError, did_you_mean

if TYPE_CHECKING:  # pragma: no cover
    from rich.table import Table

__all__ = [
    "DEFAULT_COLUMNS",
    "TERMINAL_COLUMNS",
    "UnknownViewName",
    "column_notes",
    "GRAIN_COLUMNS",
    "INFO_COLUMNS",
    "entry_rows",
    "rich_table",
    "sort_rows",
    "to_html",
    "to_markdown",
]

#: Descriptive row keys, in row order (``id`` is the entry's unique id).
INFO_COLUMNS: tuple[str, ...] = ("model", "revision", "status", "training", "parameters", "benchmark", "date", "id")
#: hit@5 by grain count and the coarse → fine drop, always the last row keys.
GRAIN_COLUMNS: tuple[str, ...] = ("g2", "g3", "g4", "g5+", "drop")
#: Columns for a terminal (``mrbench leaderboard show``), narrow enough for 100 characters.
TERMINAL_COLUMNS: tuple[str, ...] = ("model", "status", "training", "hit@1", "hit@5", "hit@10", "mrr@10", "ndcg@10", *GRAIN_COLUMNS)
#: Columns shown by :func:`rich_table` / :func:`to_markdown` when none are given (those present in the rows).
DEFAULT_COLUMNS: tuple[str, ...] = (
    "model",
    "status",
    "training",
    "parameters",
    "hit@1",
    "hit@5",
    "hit@10",
    "mrr@10",
    "ndcg@10",
    "recall@10",
    *GRAIN_COLUMNS,
)

_FAMILIES = ("hit", "recall", "mrr", "ndcg")
_RANK_METRICS = ("mean_rank", "median_rank")
_METRIC_RE = re.compile(r"^([A-Za-z_]+)@(\d+)$")
_GRAIN_BUCKETS = {"g2": "2", "g3": "3", "g4": "4", "g5+": "5+"}
_GRAIN_TYPES = ("entity", "attribute", "action_or_state", "relation", "scene")
_GRAIN_TYPE_LABELS = {"action_or_state": "action / state"}
_STATUS_LABELS = {"verified": "✓ verified", "self-reported": "self-reported"}
#: Okabe–Ito colours (colour-blind safe), yellow last: it is the hardest to see on white.
_PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#D55E00", "#56B4E9", "#000000", "#F0E442")
_DASHES = ("", "6 3", "2 3", "8 3 2 3")


class UnknownViewName(UnknownNameError, ValueError):
    """A benchmark, task or column name that the leaderboard does not have (the message lists the known ones)."""


# --------------------------------------------------------------------------------------------- helpers


def _num(v: Any) -> float | int | None:
    """A finite number (bool excluded) or None."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def _get(d: Any, *keys: str) -> Any:
    for k in keys:
        if not isinstance(d, dict):
            return None
        d = d.get(k)
    return d


def _metric_key(name: str) -> tuple[int, str, int]:
    m = _METRIC_RE.match(name)
    if m:
        fam, k = m.group(1), int(m.group(2))
        return (_FAMILIES.index(fam) if fam in _FAMILIES else len(_FAMILIES), fam, k)
    return (len(_FAMILIES) + 1 + _RANK_METRICS.index(name), name, 0)


def _is_metric(name: str) -> bool:
    return bool(_METRIC_RE.match(name)) or name in _RANK_METRICS


def _bucket_key(bucket: str) -> tuple[int, int]:
    digits = bucket.rstrip("+")
    return (int(digits) if digits.isdigit() else 10**6, 1 if bucket.endswith("+") else 0)


def _short_fp(fp: Any, n: int = 12) -> str:
    s = str(fp or "")
    return s.split(":", 1)[-1][:n] if s else ""


def _bench_of(entry: dict[str, Any]) -> dict[str, Any]:
    b = entry.get("benchmark")
    return b if isinstance(b, dict) else {}


def _bench_matches(bm: dict[str, Any], sel: str) -> bool:
    """``sel`` is a benchmark name or a prefix of its fingerprint (with or without ``sha256:``)."""
    if not sel:
        return False
    if sel == bm.get("name"):
        return True
    fp = str(bm.get("fingerprint") or "")
    return bool(fp) and (fp.startswith(sel) or fp.split(":", 1)[-1].startswith(sel))


def _same_bench(a: dict[str, Any], b: dict[str, Any]) -> bool:
    if a.get("fingerprint") and b.get("fingerprint"):
        return a.get("fingerprint") == b.get("fingerprint")
    return a.get("name") == b.get("name") and str(a.get("version")) == str(b.get("version"))


def _benchmarks(lb: dict[str, Any], sel: str | None) -> list[dict[str, Any]]:
    """The benchmarks of ``lb`` (its ``benchmarks`` list, then any only named by entries), filtered by ``sel``.

    Raises :class:`UnknownViewName` when ``sel`` matches none of them.
    """
    out: list[dict[str, Any]] = [b for b in lb.get("benchmarks") or [] if isinstance(b, dict)]
    for e in lb.get("entries") or []:
        eb = _bench_of(e)
        if eb and not any(_same_bench(eb, b) for b in out):
            out.append(dict(eb))
    if sel is None:
        return out
    chosen = [b for b in out if _bench_matches(b, sel)]
    if not chosen:
        known = ", ".join(f"{b.get('name')} ({_short_fp(b.get('fingerprint'))})" for b in out) or "none"
        names = [str(b.get("name")) for b in out if b.get("name")]
        raise UnknownViewName(f"no benchmark matches {sel!r}{did_you_mean(sel, names)}; pass a benchmark name or "
                              f"fingerprint prefix; known benchmarks: {known}")
    return chosen


def _entries_of(lb: dict[str, Any], bench: dict[str, Any]) -> list[dict[str, Any]]:
    return [e for e in lb.get("entries") or [] if isinstance(e, dict) and _same_bench(_bench_of(e), bench)]


def _grain_values(gc: Any) -> dict[str, float | int | None]:
    """g2..g5+ and drop from one grain_count level ``{"2": {...}, "3": {...}, ...}``."""
    gc = gc if isinstance(gc, dict) else {}
    out: dict[str, float | int | None] = {col: _num(_get(gc, b, "hit@5")) for col, b in _GRAIN_BUCKETS.items()}
    coarse = out["g2"]
    fine = None
    for b in sorted((b for b in gc if b != "2"), key=_bucket_key, reverse=True):
        fine = _num(_get(gc, b, "hit@5"))
        if fine is not None:
            break
    out["drop"] = None if coarse is None or fine is None else coarse - fine
    return out


def _entry_row(entry: dict[str, Any], task: str | None) -> dict[str, Any] | None:
    scores = entry.get("scores") if isinstance(entry.get("scores"), dict) else {}
    metrics = scores.get("macro") if task is None else _get(scores, "tasks", task)
    if not isinstance(metrics, dict):
        return None
    enc = entry.get("encoder") if isinstance(entry.get("encoder"), dict) else {}
    row: dict[str, Any] = {
        "model": enc.get("name"),
        "revision": enc.get("revision"),
        "status": entry.get("status"),
        "training": enc.get("training"),
        "parameters": _num(enc.get("parameters")),
        "benchmark": _bench_of(entry).get("name"),
        "date": entry.get("date"),
        "id": entry.get("id"),
    }
    for k in sorted((k for k in metrics if _is_metric(k)), key=_metric_key):
        row[k] = _num(metrics[k])
    row.update(_grain_values(_get(scores, "grain_count", "all" if task is None else task)))
    return row


def _normalise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Give all rows the same keys: info columns, the union of metric columns (sorted), grain columns."""
    metrics = sorted({k for r in rows for k in r if _is_metric(k)}, key=_metric_key)
    keys = [*INFO_COLUMNS, *metrics, *GRAIN_COLUMNS]
    return [{k: r.get(k) for k in keys} for r in rows]


# --------------------------------------------------------------------------------------------- rows


def entry_rows(lb: dict[str, Any], *, benchmark: str | None = None, task: str | None = None) -> list[dict[str, Any]]:
    """One flat row per leaderboard entry, in the leaderboard's order.

    ``benchmark``: keep only entries on the benchmark with that name, or whose fingerprint starts with that
    prefix (``"sha256:b2f2"`` or ``"b2f2"``); None keeps every benchmark. :class:`UnknownViewName` if nothing
    matches.
    ``task``: None gives the macro scores (``scores.macro``, grain columns from ``grain_count["all"]``);
    a task name gives that task's scores (``scores.tasks[task]``, ``grain_count[task]``) and drops entries
    without that task. :class:`UnknownViewName` if no selected benchmark or entry knows the task.

    Row keys, in order: ``model`` (encoder name), ``revision``, ``status``, ``training``, ``parameters``
    (int or None), ``benchmark`` (name), ``date``, ``id``; then every metric present in any row
    (``hit@k``, ``recall@k``, ``mrr@k``, ``ndcg@k`` by family and k, then ``mean_rank``, ``median_rank``);
    then ``g2``, ``g3``, ``g4``, ``g5+`` (hit@5 on queries with that many grains) and ``drop``
    (``g2`` − ``g5+``, or ``g2`` minus the largest grain-count bucket present). Missing values are None.
    """
    benches = _benchmarks(lb, benchmark)
    entries = [e for b in benches for e in _entries_of(lb, b)] if benchmark is not None else [
        e for e in lb.get("entries") or [] if isinstance(e, dict)
    ]
    if task is not None:
        known = {t for b in benches for t in b.get("tasks") or []}
        known |= {t for e in entries for t in (_get(e, "scores", "tasks") or {})}
        if task not in known:
            raise UnknownViewName(f"unknown task {task!r}{did_you_mean(task, sorted(known))}; "
                                  f"known tasks: {', '.join(sorted(known)) or 'none'}")
    rows = [r for r in (_entry_row(e, task) for e in entries) if r is not None]
    return _normalise(rows)


def rows_by_benchmark(lb: dict[str, Any], *, benchmark: str | None = None, task: str | None = None
                      ) -> list[tuple[str, list[dict[str, Any]]]]:
    """:func:`entry_rows` split by benchmark: ``(label, rows)`` per benchmark with rows, in the
    leaderboard's order of benchmarks; ``label`` is ``"name (fingerprint prefix)"``. Entries on
    different benchmarks are never ranked against each other. Same arguments and errors as
    :func:`entry_rows`."""
    entry_rows(lb, benchmark=benchmark, task=task)  # the same checks: an unknown benchmark or task raises
    out = []
    for b in _benchmarks(lb, benchmark):
        rows = [r for r in (_entry_row(e, task) for e in _entries_of(lb, b)) if r is not None]
        if rows:
            out.append((f"{b.get('name')} ({_short_fp(b.get('fingerprint'))})", _normalise(rows)))
    return out


def _known_columns(rows: list[dict[str, Any]]) -> list[str]:
    seen: dict[str, None] = {}
    for r in rows:
        seen.update(dict.fromkeys(r))
    return list(seen)


def _check_columns(rows: list[dict[str, Any]], columns: list[str]) -> None:
    known = _known_columns(rows)
    for c in columns:
        if c not in known:
            raise UnknownViewName(f"unknown column {c!r}{did_you_mean(c, known)}; known columns: {', '.join(known)}")


def sort_rows(rows: list[dict[str, Any]], by: str, descending: bool = True) -> list[dict[str, Any]]:
    """A new list of ``rows`` sorted by column ``by``; stable (equal values keep their order), None last in
    both directions, strings compared case-insensitively. An empty ``rows`` is returned as is; a column
    that no row has raises :class:`UnknownViewName` naming the known columns."""
    if not rows:
        return []
    _check_columns(rows, [by])

    def key(r: dict[str, Any]) -> tuple[int, Any]:
        v = r.get(by)
        if isinstance(v, str):
            return (1, v.casefold())
        return (0, v)

    present = [r for r in rows if r.get(by) is not None]
    missing = [r for r in rows if r.get(by) is None]
    return sorted(present, key=key, reverse=descending) + missing


# --------------------------------------------------------------------------------------------- formatting


def _default_columns(rows: list[dict[str, Any]]) -> list[str]:
    known = set(_known_columns(rows))
    return [c for c in DEFAULT_COLUMNS if c in known]


def _is_numeric_column(col: str) -> bool:
    return _is_metric(col) or col in GRAIN_COLUMNS or col == "parameters"


def _fmt_params(n: float) -> str:
    n = float(n)
    for div, unit in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= div:
            return f"{n / div:.3g}{unit}"
    return f"{n:.0f}"


def _fmt(col: str, v: Any) -> str:
    """Display text of one cell: None → ``—``, floats to 3 decimals (ranks to 1), parameters as 150M / 1.3B."""
    if v is None:
        return "—"
    if col == "status":
        return _STATUS_LABELS.get(str(v), str(v))
    if col == "parameters" and _num(v) is not None:
        return _fmt_params(v)
    if isinstance(v, float):
        return f"{v:.1f}" if col in _RANK_METRICS else f"{v:.3f}"
    return str(v)


def column_notes(columns: list[str] | tuple[str, ...]) -> list[str]:
    """One line per shown column that needs explaining (the grain columns; none for the others), for a
    caption under a terminal table or a line under a Markdown table."""
    grains = [c for c in columns if c in ("g2", "g3", "g4", "g5+")]
    notes = []
    if grains:
        notes.append(f"{', '.join(grains)}: hit@5 on the queries with that many grains (5+: five or more)")
    if "drop" in columns:
        notes.append("drop: hit@5 at 2 grains minus hit@5 at 5+ grains (g2 - g5+, or the finest bucket present): "
                     "how much the model loses as queries get finer; lower is better")
    return notes


def rich_table(rows: list[dict[str, Any]], columns: list[str] | None = None, title: str | None = None,
               caption: str | None = None) -> Table:
    """A :class:`rich.table.Table` of ``rows`` (``columns`` default: :data:`DEFAULT_COLUMNS` present in the
    rows). Numbers are right-aligned with three decimals, None is ``—``, verified entries are green.
    ``caption``: text under the table (e.g. ``"\n".join(column_notes(columns))``)."""
    from rich.table import Table

    cols = list(columns) if columns is not None else _default_columns(rows)
    if rows:
        _check_columns(rows, cols)
    table = Table(title=title, caption=caption, caption_justify="left", header_style="bold")
    widest = max((len(str(r.get("model") or "")) for r in rows), default=5)
    for c in cols:
        table.add_column(c, justify="right" if _is_numeric_column(c) else "left", no_wrap=True,
                         min_width=min(widest, 40) if c == "model" else None)
    for r in rows:
        cells = []
        for c in cols:
            text = _fmt(c, r.get(c))
            if c == "status":
                style = "green" if r.get(c) == "verified" else "yellow"
                text = f"[{style}]{_rich_escape(text)}[/{style}]"
            else:
                text = _rich_escape(text)
            cells.append(text)
        table.add_row(*cells)
    return table


def _rich_escape(s: str) -> str:
    from rich.markup import escape

    return escape(s)


_MD_SPECIAL = re.compile(r"([\\|<>`*\[\]])")


def _md_escape(s: str) -> str:
    return _MD_SPECIAL.sub(r"\\\1", " ".join(s.splitlines()))


def to_markdown(rows: list[dict[str, Any]], columns: list[str] | None = None, notes: bool = False) -> str:
    """A GitHub Markdown table of ``rows`` (header, alignment row, one line per row; no trailing newline).

    ``columns`` default: :data:`DEFAULT_COLUMNS` present in the rows. Floats have three decimals, None is
    ``—``, status is ``✓ verified`` / ``self-reported``, numeric columns are right-aligned, and Markdown
    specials in text (``| \\ < > ` * [ ]``) are backslash-escaped. ``notes``: after the table, a blank
    line and :func:`column_notes` of the shown columns (one paragraph each), when there are any."""
    cols = list(columns) if columns is not None else _default_columns(rows)
    if rows:
        _check_columns(rows, cols)
    lines = [
        "| " + " | ".join(_md_escape(c) for c in cols) + " |",
        "|" + "|".join("---:" if _is_numeric_column(c) else "---" for c in cols) + "|",
    ]
    for r in rows:
        lines.append("| " + " | ".join(_md_escape(_fmt(c, r.get(c))) for c in cols) + " |")
    text = "\n".join(lines)
    explained = column_notes(cols) if notes else []
    return text + "".join(f"\n\n{_md_escape(n)}" for n in explained)


# --------------------------------------------------------------------------------------------- HTML


def _e(v: Any) -> str:
    return html.escape("" if v is None else str(v), quote=True)


def _slug(name: Any, used: set[str]) -> str:
    base = re.sub(r"[^A-Za-z0-9_.-]+", "-", str(name or "")).strip("-") or "benchmark"
    slug, i = base, 2
    while slug in used:
        slug, i = f"{base}-{i}", i + 1
    used.add(slug)
    return slug


def _pooled_grain_types(entry: dict[str, Any], metric: str = "hit@5") -> dict[str, float | None]:
    """Per grain type: the mean over tasks of ``grain_type[task][type][metric]`` (values present only);
    ``grain_type["all"]`` is used only when no task has the type."""
    gt = _get(entry, "scores", "grain_type")
    gt = gt if isinstance(gt, dict) else {}
    types = {g for t in gt.values() if isinstance(t, dict) for g in t}
    out: dict[str, float | None] = {}
    for g in types:
        vals = [_num(_get(gt, t, g, metric)) for t in gt if t != "all"]
        present = [float(v) for v in vals if v is not None]
        if present:
            out[g] = sum(present) / len(present)
        else:
            v = _num(_get(gt, "all", g, metric))
            out[g] = None if v is None else float(v)
    return out


def _style(i: int) -> tuple[str, str]:
    return _PALETTE[i % len(_PALETTE)], _DASHES[(i // len(_PALETTE)) % len(_DASHES)]


def _legend_label(name: str, n: int = 21) -> str:
    return name if len(name) <= n else name[: n - 1] + "…"


def _bar_paint(i: int) -> str:
    """Fill of model ``i``'s bars: solid for the first round of colours, then lighter with an outline."""
    color = _PALETTE[i % len(_PALETTE)]
    if i < len(_PALETTE):
        return f'fill="{color}"'
    return f'fill="{color}" fill-opacity="{0.45 if i < 2 * len(_PALETTE) else 0.15}" stroke="{color}"'


def _svg_legend(models: list[str], x: float, y: float, kind: str) -> list[str]:
    """Legend: a bar swatch (``kind="bar"``) or a line with its marker (``kind="line"``) per model."""
    out = [f'<g class="legend" transform="translate({x:.0f},{y:.0f})">']
    for i, m in enumerate(models):
        color, dash = _style(i)
        yy = i * 20
        dash_attr = f' stroke-dasharray="{dash}"' if dash else ""
        if kind == "bar":
            key = f'<rect x="2" y="{yy}" width="14" height="12" rx="2" {_bar_paint(i)}/>'
        else:
            key = (
                f'<line x1="0" y1="{yy + 6}" x2="18" y2="{yy + 6}" stroke="{color}" stroke-width="3"{dash_attr}/>'
                f"{_marker(i, 9, yy + 6, color)}"
            )
        out.append(f'<g><title>{_e(m)}</title>{key}<text x="26" y="{yy + 10}">{_e(_legend_label(m))}</text></g>')
    out.append("</g>")
    return out


def _marker(i: int, cx: float, cy: float, color: str, title: str | None = None) -> str:
    """A marker whose shape also tells models apart (circle, square, triangle, diamond)."""
    shape = i % 4
    t = f"<title>{_e(title)}</title>" if title else ""
    attrs = f'fill="{color}" stroke="#fff" stroke-width="1"'
    if shape == 0:
        return f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="4.5" {attrs}>{t}</circle>'
    if shape == 1:
        return f'<rect x="{cx - 4:.1f}" y="{cy - 4:.1f}" width="8" height="8" {attrs}>{t}</rect>'
    if shape == 2:
        pts = f"{cx:.1f},{cy - 5:.1f} {cx + 5:.1f},{cy + 4:.1f} {cx - 5:.1f},{cy + 4:.1f}"
        return f'<polygon points="{pts}" {attrs}>{t}</polygon>'
    pts = f"{cx:.1f},{cy - 5.5:.1f} {cx + 5.5:.1f},{cy:.1f} {cx:.1f},{cy + 5.5:.1f} {cx - 5.5:.1f},{cy:.1f}"
    return f'<polygon points="{pts}" {attrs}>{t}</polygon>'


def _svg_frame(
    cls: str, label: str, w: int, h: int, left: int, top: int, right: float, bottom: float, xlabel: str
) -> list[str]:
    """SVG start, y gridlines 0..1 with ticks, axis labels."""
    out = [
        (
            f'<svg class="chart {cls}" viewBox="0 0 {w} {h}" '
            f'width="{w}" height="{h}" role="img" aria-label="{_e(label)}">'
        ),
        f"<title>{_e(label)}</title>",
    ]
    for t in (0.0, 0.25, 0.5, 0.75, 1.0):
        y = bottom - t * (bottom - top)
        out.append(
            f'<line class="grid" x1="{left}" y1="{y:.1f}" x2="{right:.1f}" y2="{y:.1f}"/>'
            f'<text class="tick" x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{t:.2f}</text>'
        )
    out.append(f'<line class="axis" x1="{left}" y1="{bottom:.1f}" x2="{right:.1f}" y2="{bottom:.1f}"/>')
    out.append(f'<line class="axis" x1="{left}" y1="{top}" x2="{left}" y2="{bottom:.1f}"/>')
    mid_y = (top + bottom) / 2
    out.append(
        f'<text class="axis-label" x="14" y="{mid_y:.1f}" text-anchor="middle" '
        f'transform="rotate(-90 14 {mid_y:.1f})">hit@5</text>'
    )
    out.append(
        f'<text class="axis-label" x="{(left + right) / 2:.1f}" y="{h - 8}" text-anchor="middle">{_e(xlabel)}</text>'
    )
    return out


def _chart_size(n_models: int) -> tuple[int, int, int, int]:
    w, legend_w = 600, 190
    h = max(320, 70 + 20 * n_models)
    return w, h, legend_w, 20


def _grain_chart(models: list[str], entries: list[dict[str, Any]]) -> str:
    pooled = [_pooled_grain_types(e) for e in entries]
    extra = sorted({g for p in pooled for g in p} - set(_GRAIN_TYPES))
    types = [g for g in _GRAIN_TYPES if any(g in p for p in pooled)] + extra or list(_GRAIN_TYPES)
    w, h, legend_w, top = _chart_size(len(models))
    left, bottom = 52, h - 58
    right = w - legend_w
    out = _svg_frame(
        "grain-chart", "hit@5 per grain type (mean over tasks), one bar per model", w, h, left, top, right, bottom,
        "grain type",
    )
    group_w = (right - left) / len(types)
    n = max(1, len(models))
    bar_w = group_w * 0.8 / n
    for gi, g in enumerate(types):
        gx = left + gi * group_w + group_w * 0.1
        label = _GRAIN_TYPE_LABELS.get(g, g.replace("_", " "))
        out.append(
            f'<text class="xtick" x="{left + (gi + 0.5) * group_w:.1f}" y="{bottom + 18:.1f}" '
            f'text-anchor="middle">{_e(label)}</text>'
        )
        for mi, (m, p) in enumerate(zip(models, pooled)):
            v = p.get(g)
            if v is None:
                continue
            bh = max(1.5, v * (bottom - top))
            x = gx + mi * bar_w
            out.append(
                f'<rect class="bar" x="{x + 0.5:.1f}" y="{bottom - bh:.1f}" width="{max(1.0, bar_w - 1):.1f}" '
                f'height="{bh:.1f}" {_bar_paint(mi)}><title>{_e(m)} · {_e(label)}: hit@5 {v:.3f}</title></rect>'
            )
    out += _svg_legend(models, right + 18, top + 4, "bar")
    out.append("</svg>")
    return "".join(out)


def _drop_chart(models: list[str], entries: list[dict[str, Any]]) -> str:
    series = []
    for e in entries:
        gc = _get(e, "scores", "grain_count", "all")
        gc = gc if isinstance(gc, dict) else {}
        series.append({b: _num(_get(gc, b, "hit@5")) for b in gc})
    buckets = sorted({b for s in series for b in s} | set(_GRAIN_BUCKETS.values()), key=_bucket_key)
    w, h, legend_w, top = _chart_size(len(models))
    left, bottom = 52, h - 58
    right = w - legend_w
    out = _svg_frame(
        "drop-chart", "coarse to fine: hit@5 by grains per query, one line per model", w, h, left, top, right, bottom,
        "grains per query (coarse → fine)",
    )
    step = (right - left) / len(buckets)

    def xpos(i: int) -> float:
        return left + (i + 0.5) * step

    for bi, b in enumerate(buckets):
        out.append(f'<text class="xtick" x="{xpos(bi):.1f}" y="{bottom + 18:.1f}" text-anchor="middle">{_e(b)}</text>')
    for mi, (m, s) in enumerate(zip(models, series)):
        color, dash = _style(mi)
        pts = [(xpos(bi), s.get(b), b) for bi, b in enumerate(buckets)]
        # break the line where a bucket is missing
        seg: list[str] = []
        segments: list[list[str]] = []
        for x, v, _b in pts:
            if v is None:
                if seg:
                    segments.append(seg)
                seg = []
                continue
            seg.append(f"{x:.1f},{bottom - float(v) * (bottom - top):.1f}")
        if seg:
            segments.append(seg)
        dash_attr = f' stroke-dasharray="{dash}"' if dash else ""
        out.append(f'<g class="series"><title>{_e(m)}</title>')
        for sg in segments:
            if len(sg) > 1:
                out.append(
                    f'<polyline points="{" ".join(sg)}" fill="none" stroke="{color}" stroke-width="2.5" '
                    f'stroke-linejoin="round"{dash_attr}/>'
                )
        for x, v, b in pts:
            if v is not None:
                y = bottom - float(v) * (bottom - top)
                out.append(_marker(mi, x, y, color, f"{m} · {b} grains: hit@5 {float(v):.3f}"))
        out.append("</g>")
    out += _svg_legend(models, right + 18, top + 4, "line")
    out.append("</svg>")
    return "".join(out)


# HTML table columns: (key, header, tooltip, first click descending?)
_HTML_COLUMNS: tuple[tuple[str, str, str, bool], ...] = (
    ("rank", "#", "rank by macro hit@5 (ties share a rank)", False),
    ("model", "model", "encoder name and revision", False),
    ("status", "status", "verified: recomputed from the submitted run files; self-reported: as submitted", False),
    ("training", "training", "zero-shot, trained on the benchmark's train split, or unknown", False),
    ("parameters", "params", "number of parameters, if known", True),
    ("hit@1", "hit@1", "share of queries with a relevant item at rank 1 (macro over tasks)", True),
    ("hit@5", "hit@5", "share of queries with a relevant item in the top 5 (macro over tasks)", True),
    ("hit@10", "hit@10", "share of queries with a relevant item in the top 10 (macro over tasks)", True),
    ("mrr@10", "mrr@10", "mean reciprocal rank, cut at 10", True),
    ("ndcg@10", "ndcg@10", "normalised discounted cumulative gain at 10", True),
    ("recall@10", "recall@10", "share of all relevant items found in the top 10", True),
    ("g2", "2", "hit@5 on queries with 2 grains", True),
    ("g3", "3", "hit@5 on queries with 3 grains", True),
    ("g4", "4", "hit@5 on queries with 4 grains", True),
    ("g5+", "5+", "hit@5 on queries with 5 or more grains", True),
    ("drop", "drop", "coarse → fine drop: hit@5 with 2 grains minus hit@5 with 5+ grains (lower is better)", False),
)
_BEST_MAX = {"hit@1", "hit@5", "hit@10", "mrr@10", "ndcg@10", "recall@10", "g2", "g3", "g4", "g5+"}


def _ranks(rows: list[dict[str, Any]], by: str = "hit@5") -> list[int | None]:
    ranks: list[int | None] = []
    prev, rank = None, 0
    for i, r in enumerate(rows):
        v = r.get(by)
        if v is None:
            ranks.append(None)
            continue
        if v != prev:
            rank, prev = i + 1, v
        ranks.append(rank)
    return ranks


def _entry_tooltip(e: dict[str, Any]) -> str:
    enc = e.get("encoder") if isinstance(e.get("encoder"), dict) else {}
    parts = [f"id: {e.get('id')}"]
    for label, v in (
        ("spec", enc.get("spec")),
        ("url", enc.get("url")),
        ("notes", enc.get("notes")),
        ("results date", e.get("date")),
        ("submitted", e.get("submitted")),
        ("mrbench", e.get("mrbench_version")),
        ("reproduce", e.get("command")),
    ):
        if v:
            parts.append(f"{label}: {v}")
    return "\n".join(parts)


def _html_table(slug: str, rows: list[dict[str, Any]], entries: list[dict[str, Any]], colors: dict[str, str]) -> str:
    cols = [c for c in _HTML_COLUMNS if c[0] in rows[0] or c[0] == "rank"]
    best: dict[str, float] = {}
    for key, *_ in cols:
        if key in _BEST_MAX:
            vals = [r[key] for r in rows if r.get(key) is not None]
            if vals:
                best[key] = max(vals)
    out = [f'<div class="table-wrap"><table class="lb" id="lb-{_e(slug)}">', "<thead>"]
    # group header row
    n_info = sum(1 for c in cols if c[0] in ("rank", "model", "status", "training", "parameters"))
    n_macro = sum(1 for c in cols if _is_metric(c[0]))
    n_grain = sum(1 for c in cols if c[0] in GRAIN_COLUMNS)
    n_rest = len(cols) - n_info - n_macro - n_grain
    out.append('<tr class="groups">')
    out.append(f'<th colspan="{n_info}"></th>')
    if n_macro:
        out.append(f'<th colspan="{n_macro}" class="group sep">macro over tasks</th>')
    if n_grain:
        out.append(f'<th colspan="{n_grain}" class="group sep">hit@5 by grains per query</th>')
    if n_rest:
        out.append(f'<th colspan="{n_rest}"></th>')
    out.append("</tr><tr>")
    sep = {next((c[0] for c in cols if _is_metric(c[0])), ""), next((c[0] for c in cols if c[0] in GRAIN_COLUMNS), "")}
    for key, header, tip, first_desc in cols:
        num = key == "rank" or _is_numeric_column(key)
        out.append(
            f'<th data-col="{_e(key)}" data-type="{"num" if num else "text"}" '
            f'data-first="{"desc" if first_desc else "asc"}" class="{"num" if num else "text"}{" sep" * (key in sep)}" '
            f'aria-sort="none" title="{_e(tip)}"><button type="button">{_e(header)}'
            f'<span class="arrow" aria-hidden="true"></span></button></th>'
        )
    out.append("</tr></thead><tbody>")
    by_id = {id(r): e for r, e in zip(rows, entries)}
    ranks = _ranks(rows)
    for r, rank in zip(rows, ranks):
        e = by_id[id(r)]
        status = str(r.get("status") or "")
        verified = status == "verified"
        out.append(
            f'<tr data-model="{_e(r.get("model"))}" data-id="{_e(r.get("id"))}" '
            f'class="{"verified" if verified else "unverified"}">'
        )
        for key, *_ in cols:
            v = rank if key == "rank" else r.get(key)
            if key == "model":
                color = colors.get(str(r.get("id")), "#999")
                rev = r.get("revision")
                out.append(
                    f'<td data-col="model" data-value="{_e(str(v or "").casefold())}" class="model" '
                    f'title="{_e(_entry_tooltip(e))}"><span class="swatch" style="background:{color}"></span>'
                    f'<span class="name">{_e(v if v is not None else "—")}</span>'
                    + (f'<span class="rev">{_e(rev)}</span>' if rev else "")
                    + "</td>"
                )
            elif key == "status":
                n_ver = len(e.get("verified_metrics") or [])
                tip = (
                    f"{n_ver} metrics recomputed from {len(e.get('run_sha256') or {})} run files"
                    if verified
                    else "scores as submitted, not recomputed"
                )
                out.append(
                    f'<td data-col="status" data-value="{_e(status.casefold())}" class="text">'
                    f'<span class="badge {"verified" if verified else "self"}" title="{_e(tip)}">'
                    f"{_e(_fmt('status', status or None))}</span></td>"
                )
            elif key == "rank" or _is_numeric_column(key):
                cls = "num" + (" na" if v is None else "") + (" best" if key in best and v == best[key] else "")
                cls += " sep" * (key in sep)
                dv = "" if v is None else repr(v)
                out.append(f'<td data-col="{_e(key)}" data-value="{_e(dv)}" class="{cls}">{_e(_fmt(key, v))}</td>')
            else:
                out.append(
                    f'<td data-col="{_e(key)}" data-value="{_e("" if v is None else str(v).casefold())}" '
                    f'class="text{" na" if v is None else ""}">{_e(_fmt(key, v))}</td>'
                )
        out.append("</tr>")
    out.append("</tbody></table></div>")
    return "".join(out)


def _task_table(bench: dict[str, Any], entries: list[dict[str, Any]], models: list[str]) -> str:
    tasks = list(bench.get("tasks") or []) or sorted(
        {t for e in entries for t in (_get(e, "scores", "tasks") or {})}
    )
    if not tasks:
        return ""
    out = [
        '<details class="per-task"><summary>hit@5 per task</summary><table class="tasks"><thead><tr><th>model</th>',
        *(f'<th class="num">{_e(t)}</th>' for t in tasks),
        "</tr></thead><tbody>",
    ]
    for m, e in zip(models, entries):
        out.append(f"<tr><td>{_e(m)}</td>")
        for t in tasks:
            v = _num(_get(e, "scores", "tasks", t, "hit@5"))
            out.append(f'<td class="num{" na" if v is None else ""}">{_e(_fmt("hit@5", v))}</td>')
        out.append("</tr>")
    out.append("</tbody></table></details>")
    return "".join(out)


def _bench_section(lb: dict[str, Any], bench: dict[str, Any], used: set[str]) -> str:
    slug = _slug(bench.get("name"), used)
    entries = _entries_of(lb, bench)
    pairs = [(r, e) for e in entries if (r := _entry_row(e, None)) is not None]
    rows = _normalise([r for r, _ in pairs])
    for r, (_, e) in zip(rows, pairs):
        r["_entry"] = e  # temporary link, removed below
    rows = sort_rows(rows, "hit@5") if rows and "hit@5" in rows[0] else rows
    ordered_entries = [r.pop("_entry") for r in rows]
    models = [str(r.get("model") if r.get("model") is not None else r.get("id")) for r in rows]
    colors = {str(r.get("id")): _style(i)[0] for i, r in enumerate(rows)}

    fp = str(bench.get("fingerprint") or "")
    head = [f'<section class="benchmark" id="bench-{_e(slug)}">', "<h2>", _e(bench.get("name") or "benchmark")]
    if bench.get("version") is not None:
        head.append(f' <span class="ver">v{_e(bench.get("version"))}</span>')
    if fp:
        head.append(f' <code class="fp" title="{_e(fp)}">{_e(_short_fp(fp))}</code>')
    head.append("</h2>")
    if bench.get("description"):
        head.append(f'<p class="desc">{_e(bench["description"])}</p>')
    nq = bench.get("n_queries") if isinstance(bench.get("n_queries"), dict) else {}
    tasks = bench.get("tasks") or []
    facts = []
    if bench.get("split"):
        facts.append(f"split <b>{_e(bench['split'])}</b>")
    if tasks:
        facts.append(
            "tasks "
            + ", ".join(f"<b>{_e(t)}</b>" + (f" ({_e(nq[t])} queries)" if t in nq else "") for t in tasks)
        )
    facts.append(f"{len(rows)} entr{'y' if len(rows) == 1 else 'ies'}")
    head.append(f'<p class="facts">{" · ".join(facts)}</p>')
    if not rows:
        head.append('<p class="empty">No entries yet.</p></section>')
        return "".join(head)
    body = [
        _html_table(slug, rows, ordered_entries, colors),
        (
            '<p class="note">Click a column header to sort (click again to reverse). '
            "<b>2 … 5+</b>: hit@5 on the queries with that many grains (all tasks pooled); "
            "<b>drop</b>: hit@5 at 2 grains minus hit@5 at 5+ grains — how much the encoder loses as queries get "
            "finer. Best value per column in bold. Hover a model for its id, spec and how to reproduce it.</p>"
        ),
        '<div class="charts">',
        '<figure><figcaption>hit@5 per grain type <span>(mean over tasks)</span></figcaption>',
        _grain_chart(models, ordered_entries),
        "</figure>",
        '<figure><figcaption>Coarse → fine <span>(hit@5 by grains per query, all tasks)</span></figcaption>',
        _drop_chart(models, ordered_entries),
        "</figure>",
        "</div>",
        _task_table(bench, ordered_entries, models),
        "</section>",
    ]
    return "".join(head) + "".join(body)


_CSS = """
:root{--fg:#1f2328;--muted:#59636e;--border:#d1d9e0;--soft:#f6f8fa;--accent:#0072B2}
*{box-sizing:border-box}
body{margin:0;color:var(--fg);background:#fff;
 font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif}
header.page{padding:22px 32px 14px;border-bottom:1px solid var(--border);background:var(--soft)}
header.page h1{margin:0 0 4px;font-size:24px}
header.page p{margin:0;color:var(--muted)}
main{max-width:1240px;margin:0 auto;padding:8px 24px 24px}
section.benchmark{margin-top:18px}
h2{font-size:19px;margin:12px 0 4px;display:flex;align-items:baseline;gap:10px;flex-wrap:wrap}
h2 .ver{font-size:14px;color:var(--muted);font-weight:500}
h2 code.fp{font-size:12px;font-weight:400;background:var(--soft);border:1px solid var(--border);
 border-radius:4px;padding:1px 6px;color:var(--muted)}
p.desc{margin:2px 0;color:var(--fg)}
p.facts,p.note{margin:4px 0 10px;color:var(--muted);font-size:13px}
.table-wrap{overflow-x:auto;border:1px solid var(--border);border-radius:8px}
table.lb{border-collapse:collapse;width:100%;font-variant-numeric:tabular-nums;font-size:13px}
table.lb th,table.lb td{padding:6px 6px;border-bottom:1px solid var(--border);white-space:nowrap}
table.lb tbody tr:last-child td{border-bottom:0}
table.lb thead th{background:var(--soft);font-weight:600;font-size:12.5px}
table.lb tr.groups th{font-size:11.5px;font-weight:500;color:var(--muted);text-transform:uppercase;
 letter-spacing:.04em;border-bottom:0;padding-bottom:0}
table.lb tr.groups th.group{border-bottom:2px solid var(--border)}
table.lb th button{all:unset;cursor:pointer;display:inline-flex;gap:2px;align-items:center}
table.lb th button:focus-visible{outline:2px solid var(--accent);outline-offset:2px}
table.lb th .arrow{font-size:9px;color:var(--accent)}
table.lb th[aria-sort="ascending"] .arrow::after{content:"\\25B2"}
table.lb th[aria-sort="descending"] .arrow::after{content:"\\25BC"}
table.lb th.num,table.lb td.num{text-align:right}
table.lb th.num button{flex-direction:row-reverse}
table.lb th.text{text-align:left}
table.lb tbody tr:nth-child(even){background:#fafbfc}
table.lb tbody tr:hover{background:#eef5fb}
table.lb td.na{color:#8c959f}
table.lb td.best{font-weight:700}
table.lb td.model{min-width:150px;max-width:280px;white-space:normal;overflow-wrap:anywhere}
table.lb .sep{border-left:1px solid var(--border)}
table.lb td.model .name{font-weight:600}
table.lb td.model .rev{display:block;font-size:11.5px;color:var(--muted);margin-left:18px}
.swatch{display:inline-block;width:11px;height:11px;border-radius:2px;margin-right:7px;vertical-align:-1px}
.badge{display:inline-block;font-size:12px;padding:1px 8px;border-radius:10px;border:1px solid}
.badge.verified{background:#dafbe1;color:#116329;border-color:#8ddb9f}
.badge.self{background:#fff8c5;color:#7d4e00;border-color:#e3c26b}
tr.unverified td.model .name{font-style:italic}
.charts{display:grid;grid-template-columns:repeat(auto-fit,minmax(460px,1fr));gap:18px;margin-top:14px}
figure{margin:0;border:1px solid var(--border);border-radius:8px;padding:10px 12px 6px}
figcaption{font-weight:600;margin-bottom:4px}
figcaption span{font-weight:400;color:var(--muted)}
svg.chart{display:block;width:100%;height:auto;font-family:inherit}
svg.chart text{font-size:12px;fill:#3d444d}
svg.chart .axis-label{font-size:12.5px;fill:#1f2328;font-weight:600}
svg.chart .grid{stroke:#e6e9ed;stroke-width:1}
svg.chart .axis{stroke:#8c959f;stroke-width:1}
svg.chart .legend text{font-size:12.5px;fill:#1f2328}
svg.chart rect.bar:hover{opacity:.8}
details.per-task{margin-top:12px}
details.per-task summary{cursor:pointer;color:var(--accent)}
table.tasks{border-collapse:collapse;margin-top:6px;font-variant-numeric:tabular-nums}
table.tasks th,table.tasks td{padding:4px 10px;border-bottom:1px solid var(--border)}
table.tasks th{text-align:left}
table.tasks td.num,table.tasks th.num{text-align:right}
footer{max-width:1240px;margin:10px auto 30px;padding:12px 24px 0;border-top:1px solid var(--border);
 color:var(--muted);font-size:13px}
footer p{margin:6px 0}
"""

# Sorting: click a header (again to reverse); "#sort=<column>&desc=0|1" in the URL sorts on load.
_JS = r"""
(function () {
  "use strict";
  function cellKey(tr, col, numeric) {
    var td = tr.querySelector('td[data-col="' + col.replace(/"/g, '\\"') + '"]');
    if (!td) return null;
    var v = td.getAttribute("data-value");
    if (v === null || v === "") return null;
    if (numeric) { var x = parseFloat(v); return isNaN(x) ? null : x; }
    return v;
  }
  function sortTable(table, col, desc) {
    var th = table.querySelector('thead th[data-col="' + col.replace(/"/g, '\\"') + '"]');
    if (!th) return false;
    var numeric = th.getAttribute("data-type") === "num";
    var body = table.tBodies[0];
    var items = Array.prototype.map.call(body.rows, function (tr, i) {
      return {tr: tr, i: i, v: cellKey(tr, col, numeric)};
    });
    items.sort(function (a, b) {
      if (a.v === null || b.v === null) {
        if (a.v === null && b.v === null) return a.i - b.i;
        return a.v === null ? 1 : -1;
      }
      var c = a.v < b.v ? -1 : (a.v > b.v ? 1 : 0);
      if (desc) c = -c;
      return c || a.i - b.i;
    });
    items.forEach(function (it) { body.appendChild(it.tr); });
    Array.prototype.forEach.call(table.querySelectorAll("thead th[data-col]"), function (h) {
      h.setAttribute("aria-sort", "none");
    });
    th.setAttribute("aria-sort", desc ? "descending" : "ascending");
    table.setAttribute("data-sort", col);
    table.setAttribute("data-desc", desc ? "1" : "0");
    return true;
  }
  function fromHash() {
    var h = window.location.hash.replace(/^#/, "");
    if (!h) return;
    var col = null, desc = true, only = null;
    h.split("&").forEach(function (kv) {
      var i = kv.indexOf("="), k = i < 0 ? kv : kv.slice(0, i), v = i < 0 ? "" : kv.slice(i + 1);
      try { v = decodeURIComponent(v); } catch (e) {}
      if (k === "sort") col = v;
      else if (k === "desc") desc = !(v === "0" || v === "false");
      else if (k === "table") only = v;
    });
    if (!col) return;
    Array.prototype.forEach.call(document.querySelectorAll("table.lb"), function (t) {
      if (!only || t.id === only) sortTable(t, col, desc);
    });
  }
  Array.prototype.forEach.call(document.querySelectorAll("table.lb"), function (table) {
    Array.prototype.forEach.call(table.querySelectorAll("thead th[data-col]"), function (th) {
      th.querySelector("button").addEventListener("click", function () {
        var col = th.getAttribute("data-col");
        var desc = table.getAttribute("data-sort") === col
          ? table.getAttribute("data-desc") !== "1"
          : th.getAttribute("data-first") === "desc";
        sortTable(table, col, desc);
        try {
          history.replaceState(null, "", "#sort=" + encodeURIComponent(col) + "&desc=" + (desc ? "1" : "0") +
            "&table=" + encodeURIComponent(table.id));
        } catch (e) {}
      });
    });
    var th5 = table.querySelector('thead th[data-col="hit@5"]');
    if (th5) {
      th5.setAttribute("aria-sort", "descending");
      table.setAttribute("data-sort", "hit@5");
      table.setAttribute("data-desc", "1");
    }
  });
  fromHash();
  window.addEventListener("hashchange", fromHash);
})();
"""

_FOOTER = (
    "<p><b>How entries are verified.</b> A <span class=\"badge verified\">✓ verified</span> entry was submitted "
    "with its TREC run files: the maintainers recomputed the metrics listed in the entry "
    "(<code>verified_metrics</code>) from those runs with mrbench's scorer (pessimistic ties: a tie never helps "
    "the model) against the benchmark whose fingerprint is shown, and recorded each run file's SHA-256. "
    "A <span class=\"badge self\">self-reported</span> entry lists the scores as submitted; they were not "
    "recomputed. Hover a model name for the command that reproduces it.</p>"
)


def to_html(lb: dict[str, Any], *, benchmark: str | None = None, title: str = "MRBench leaderboard") -> str:
    """One self-contained HTML page (inline CSS, vanilla JS, inline SVG; no external URL) for ``lb``.

    Per benchmark (``benchmark``: a name or fingerprint prefix keeps one, see :func:`entry_rows`): a heading
    with name, version and short fingerprint; a sortable table ``<table class="lb" id="lb-<benchmark name>">``
    (one ``<tr data-model="<encoder name>" data-id="<entry id>">`` per entry, ranked by macro hit@5; click a
    header to sort, again to reverse; a URL hash ``#sort=<column>&desc=0|1[&table=<table id>]`` sorts on
    load); ``<svg class="chart grain-chart">``: hit@5 per grain type, each the mean of the per-task values
    present, grouped bars per model; ``<svg class="chart drop-chart">``: hit@5 against grains per query
    (``grain_count["all"]``), one line per model; a collapsed per-task hit@5 table; and a footer on how
    entries are verified. Colours are Okabe–Ito (colour-blind safe) and markers/dashes also differ per model.
    Every string from the leaderboard is HTML-escaped.
    """
    benches = _benchmarks(lb, benchmark)
    used: set[str] = set()
    sections = [_bench_section(lb, b, used) for b in benches]
    n_entries = sum(len(_entries_of(lb, b)) for b in benches)
    meta = []
    if lb.get("updated"):
        meta.append(f"updated {_e(lb['updated'])}")
    n_b = len(benches)
    meta.append(f"{n_entries} entr{'y' if n_entries == 1 else 'ies'} on {n_b} benchmark{'' if n_b == 1 else 's'}")
    if lb.get("schema_version") is not None:
        meta.append(f"schema v{_e(lb['schema_version'])}")
    return "".join(
        [
            "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">",
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>",
            f'<header class="page"><h1>{_e(title)}</h1><p>{" · ".join(meta)}</p></header>',
            "<main>",
            *(sections or ['<p class="empty">No benchmarks yet.</p>']),
            "</main>",
            f"<footer>{_FOOTER}<p>Generated by mrbench from <code>leaderboard.json</code>"
            + (f" ({_e(lb.get('name'))})" if lb.get("name") else "")
            + ".</p></footer>",
            f"<script>{_JS}</script>",
            "</body></html>\n",
        ]
    )
