"""Leaderboard views (mrbench.leaderboard.render): rows, sorting, rich/Markdown tables, the HTML page.

Offline and fast. The headless-browser tests run only where a ``chromium`` binary is on PATH.
"""

from __future__ import annotations

import copy
import json
import math
import os
import re
import shutil
import signal
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from mrbench.leaderboard import render as R

DATA = Path(__file__).parent / "data" / "leaderboard_sample.json"
GRAIN_TYPES = ("entity", "attribute", "action_or_state", "relation", "scene")
BUCKETS = ("2", "3", "4", "5+")
EVIL = "<script>alert(1)</script>"


@pytest.fixture(scope="module")
def sample() -> dict[str, Any]:
    return json.loads(DATA.read_text(encoding="utf-8"))


@pytest.fixture
def lb(sample: dict[str, Any]) -> dict[str, Any]:
    """A fresh copy per test, free to modify."""
    return copy.deepcopy(sample)


def _entry(lb: dict[str, Any], name: str) -> dict[str, Any]:
    return next(e for e in lb["entries"] if e["encoder"]["name"] == name)


def _add_second_benchmark(lb: dict[str, Any]) -> None:
    """Copy the random entry onto a made-up second benchmark."""
    fp = "sha256:" + "ab" * 32
    lb["benchmarks"].append(
        {"name": "other-bench", "version": "2", "split": "test", "fingerprint": fp, "tasks": ["t2i"],
         "n_queries": {"t2i": 10}}
    )
    e = copy.deepcopy(_entry(lb, "random"))
    e["benchmark"] = {"name": "other-bench", "version": "2", "fingerprint": fp}
    e["id"] = "random@sha256-normal-v1/other-bench@" + "ab" * 6
    lb["entries"].append(e)


# ----------------------------------------------------------------------------------------- sample data


def test_sample_is_valid_per_format(sample: dict[str, Any]) -> None:
    from mrbench.leaderboard.store import check_leaderboard, entry_id

    check_leaderboard(sample, "tests/data/leaderboard_sample.json")  # the JSON Schema and the consistency rules
    assert sample["schema_version"] == 1
    benches = {(b["name"], b["version"], b["fingerprint"]) for b in sample["benchmarks"]}
    assert len(benches) == 1
    ids = [e["id"] for e in sample["entries"]]
    assert len(ids) == len(set(ids)) == 4
    statuses = {e["status"] for e in sample["entries"]}
    assert statuses == {"verified", "self-reported"}

    def check_metrics(m: dict[str, Any]) -> None:
        for k, v in m.items():
            if re.fullmatch(r"(hit|recall|mrr|ndcg)@\d+", k):
                assert v is None or (isinstance(v, float | int) and 0.0 <= v <= 1.0), (k, v)
            elif k in ("mean_rank", "median_rank"):
                assert v is None or v >= 1, (k, v)
            elif k.startswith("n_"):
                assert isinstance(v, int) and v >= 0, (k, v)

    for e in sample["entries"]:
        enc, b = e["encoder"], e["benchmark"]
        assert e["id"] == entry_id(enc["name"], enc["revision"], b["name"], b["fingerprint"])
        assert (b["name"], b["version"], b["fingerprint"]) in benches
        assert e["status"] in ("verified", "self-reported")
        assert enc["training"] in ("zero-shot", "train-split", "unknown")
        assert enc["parameters"] is None or isinstance(enc["parameters"], int)
        assert set(enc) >= {"name", "revision", "spec", "parameters", "training", "url", "notes"}
        assert set(e["settings"]) == {"ks", "depth", "tie_policy"}
        assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", e["date"])
        s = e["scores"]
        assert set(s) == {"macro", "tasks", "grain_count", "grain_type", "grain_sensitivity"}
        check_metrics(s["macro"])
        for t, m in s["tasks"].items():
            check_metrics(m)
            assert set(s["grain_count"][t]) == set(BUCKETS)
            assert set(s["grain_type"][t]) == set(GRAIN_TYPES)
        assert set(s["grain_count"]["all"]) == set(BUCKETS)
        for level in s["grain_count"].values():
            for m in level.values():
                check_metrics(m)
        if e["status"] == "verified":
            assert e["verified_metrics"] and set(e["run_sha256"]) == set(s["tasks"])
            assert all(re.fullmatch(r"[0-9a-f]{64}", h) for h in e["run_sha256"].values())
        else:
            assert e["verified_metrics"] == [] and e["run_sha256"] == {}


# ----------------------------------------------------------------------------------------- rows


def test_entry_rows_macro(lb: dict[str, Any]) -> None:
    rows = R.entry_rows(lb)
    assert [r["model"] for r in rows] == [e["encoder"]["name"] for e in lb["entries"]]
    keys = list(rows[0])
    assert keys[:7] == ["model", "revision", "status", "training", "parameters", "benchmark", "date"]
    assert keys[-5:] == ["g2", "g3", "g4", "g5+", "drop"]
    assert {"hit@1", "hit@5", "hit@10", "mrr@10", "ndcg@10", "recall@10"} <= set(keys)
    assert all(list(r) == keys for r in rows)
    assert keys.index("hit@1") < keys.index("hit@5") < keys.index("hit@10") < keys.index("recall@10")

    random_row = rows[0]
    e = _entry(lb, "random")
    gc = e["scores"]["grain_count"]["all"]
    assert random_row["status"] == "verified" and random_row["benchmark"] == "mrbench-synth"
    assert random_row["hit@5"] == e["scores"]["macro"]["hit@5"]
    assert [random_row[c] for c in ("g2", "g3", "g4", "g5+")] == [gc[b]["hit@5"] for b in BUCKETS]
    assert random_row["drop"] == pytest.approx(gc["2"]["hit@5"] - gc["5+"]["hit@5"])

    acme = next(r for r in rows if r["model"] == "acme-embed-v2")
    assert acme["status"] == "self-reported"
    assert acme["recall@10"] is None and acme["mean_rank"] is None
    assert acme["parameters"] == 1_300_000_000


def test_entry_rows_task(lb: dict[str, Any]) -> None:
    rows = R.entry_rows(lb, task="it2i")
    assert [r["model"] for r in rows] == ["random", "constant", "finegrain-clip-b16"]  # acme has no it2i
    e = _entry(lb, "finegrain-clip-b16")
    r = rows[2]
    assert r["hit@5"] == e["scores"]["tasks"]["it2i"]["hit@5"]
    assert r["g5+"] == e["scores"]["grain_count"]["it2i"]["5+"]["hit@5"]
    assert len(R.entry_rows(lb, task="t2i")) == 4
    with pytest.raises(ValueError, match="unknown task 'nope'.*t2i"):
        R.entry_rows(lb, task="nope")


def test_entry_rows_benchmark_filter(lb: dict[str, Any]) -> None:
    _add_second_benchmark(lb)
    assert len(R.entry_rows(lb)) == 5
    assert len(R.entry_rows(lb, benchmark="mrbench-synth")) == 4
    fp = lb["benchmarks"][0]["fingerprint"]
    assert len(R.entry_rows(lb, benchmark=fp[:15])) == 4  # "sha256:" + hex prefix
    assert len(R.entry_rows(lb, benchmark=fp.split(":")[1][:8])) == 4  # bare hex prefix
    other = R.entry_rows(lb, benchmark="other-bench")
    assert [r["benchmark"] for r in other] == ["other-bench"]
    assert R.entry_rows(lb, benchmark="abab") == other
    with pytest.raises(ValueError, match="no benchmark matches 'nope'.*mrbench-synth"):
        R.entry_rows(lb, benchmark="nope")


def test_drop_uses_largest_bucket_present_and_nan_is_none(lb: dict[str, Any]) -> None:
    e = _entry(lb, "random")
    gc = e["scores"]["grain_count"]["all"]
    del gc["5+"]
    e["scores"]["macro"]["hit@1"] = float("nan")
    row = R.entry_rows(lb)[0]
    assert row["g5+"] is None
    assert row["drop"] == pytest.approx(gc["2"]["hit@5"] - gc["4"]["hit@5"])
    assert row["hit@1"] is None
    del gc["2"]
    assert R.entry_rows(lb)[0]["drop"] is None


# ----------------------------------------------------------------------------------------- sorting


def test_sort_rows(lb: dict[str, Any]) -> None:
    rows = R.entry_rows(lb)
    by5 = R.sort_rows(rows, "hit@5")
    assert [r["model"] for r in by5] == ["finegrain-clip-b16", "acme-embed-v2", "random", "constant"]
    assert [r["model"] for r in R.sort_rows(rows, "hit@5", descending=False)] == [r["model"] for r in by5][::-1]
    assert rows[0]["model"] == "random"  # input untouched
    # None last in both directions
    assert R.sort_rows(rows, "recall@10")[-1]["model"] == "acme-embed-v2"
    assert R.sort_rows(rows, "recall@10", descending=False)[-1]["model"] == "acme-embed-v2"
    assert R.sort_rows(rows, "parameters", descending=False)[-2:] == [rows[0], rows[1]]
    # stable for ties, both directions
    zero_shot = [r["model"] for r in rows if r["training"] == "zero-shot"]
    assert len(zero_shot) == 3
    assert [r["model"] for r in R.sort_rows(rows, "training", descending=False)][1:] == zero_shot  # unknown first
    assert [r["model"] for r in R.sort_rows(rows, "training")][:3] == zero_shot
    # strings case-insensitively
    rows[1]["model"] = "Beta"
    by_model = [r["model"] for r in R.sort_rows(rows, "model", descending=False)]
    assert by_model[:3] == ["acme-embed-v2", "Beta", "finegrain-clip-b16"]
    assert R.sort_rows([], "anything") == []


def test_sort_rows_unknown_column(lb: dict[str, Any]) -> None:
    rows = R.entry_rows(lb)
    with pytest.raises(ValueError) as exc:
        R.sort_rows(rows, "hit@50")
    msg = str(exc.value)
    assert "\n" not in msg
    assert "'hit@50'" in msg and "known columns" in msg and "hit@5" in msg and "drop" in msg


def test_unknown_names_are_mrbench_errors_with_suggestions(lb: dict[str, Any]) -> None:
    """Unknown benchmark, task and column names raise a one-line MrbenchError (still a ValueError) with close matches."""
    from mrbench.errors import MrbenchError

    rows = R.entry_rows(lb)
    for call, want in [
        (lambda: R.entry_rows(lb, benchmark="mrbench-synt"), "no benchmark matches 'mrbench-synt' (did you mean 'mrbench-synth'?)"),
        (lambda: R.entry_rows(lb, task="i2"), "unknown task 'i2' (did you mean "),
        (lambda: R.sort_rows(rows, "ndcg10"), "unknown column 'ndcg10' (did you mean 'ndcg@10'"),
        (lambda: R.to_markdown(rows, ["model", "hit5"]), "unknown column 'hit5' (did you mean 'hit@5'"),
        (lambda: R.rich_table(rows, ["model", "g6"]), "unknown column 'g6' (did you mean "),
        (lambda: R.to_html(lb, benchmark="nope"), "no benchmark matches 'nope'; pass a benchmark name"),
    ]:
        with pytest.raises(MrbenchError) as exc:
            call()
        assert isinstance(exc.value, ValueError) and str(exc.value).startswith(want) and "\n" not in str(exc.value)


# ----------------------------------------------------------------------------------------- tables


def _md_cells(line: str) -> list[str]:
    assert line.startswith(("| ", "|-", "|:")), line
    return re.split(r"(?<!\\)\|", line.strip())[1:-1]


def test_markdown(lb: dict[str, Any]) -> None:
    rows = R.sort_rows(R.entry_rows(lb), "hit@5")
    md = R.to_markdown(rows)
    lines = md.splitlines()
    assert len(lines) == 2 + len(rows)
    header = [c.strip() for c in _md_cells(lines[0])]
    assert header == [c for c in R.DEFAULT_COLUMNS]
    assert all(len(_md_cells(line)) == len(header) for line in lines)
    aligns = [c.strip() for c in _md_cells(lines[1])]
    assert aligns[header.index("model")] == "---" and aligns[header.index("hit@5")] == "---:"
    first = [c.strip() for c in _md_cells(lines[2])]
    assert first[0] == "finegrain-clip-b16" and first[1] == "✓ verified"
    assert first[header.index("hit@5")] == f"{rows[0]['hit@5']:.3f}"
    assert first[header.index("parameters")] == "150M"
    acme = [c.strip() for c in _md_cells(lines[3])]
    assert acme[1] == "self-reported" and acme[header.index("recall@10")] == "—"
    assert all(re.fullmatch(r"\d\.\d{3}", acme[header.index(c)]) for c in ("hit@1", "g2", "drop"))
    # custom columns, escaping, unknown column
    rows[0]["model"] = "a|b <x>"
    md = R.to_markdown(rows, columns=["model", "hit@5"])
    assert md.splitlines()[2] == f"| a\\|b \\<x\\> | {rows[0]['hit@5']:.3f} |"
    with pytest.raises(ValueError, match="unknown column 'nope'"):
        R.to_markdown(rows, columns=["model", "nope"])


def test_rich_table(lb: dict[str, Any]) -> None:
    from rich.console import Console

    rows = R.entry_rows(lb)
    rows[0]["model"] = "[bold]markup[/bold]"
    table = R.rich_table(rows, title="MRBench")
    assert [c.header for c in table.columns] == list(R.DEFAULT_COLUMNS)
    assert table.row_count == 4
    console = Console(record=True, width=220, color_system=None)
    console.print(table)
    text = console.export_text()
    assert "MRBench" in text and "[bold]markup[/bold]" in text
    assert "✓ verified" in text and "self-reported" in text and "—" in text
    assert R.rich_table(rows, columns=["model", "drop"]).columns[1].header == "drop"


# ----------------------------------------------------------------------------------------- HTML


class _TableRows(HTMLParser):
    """(data-model, {data-col: data-value}) for each row of the table with the given id, in document order."""

    def __init__(self, table_id: str) -> None:
        super().__init__()
        self.table_id, self.depth, self.rows = table_id, 0, []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "table":
            if self.depth or a.get("id") == self.table_id:
                self.depth += 1
        elif self.depth and tag == "tr" and "data-model" in a:
            self.rows.append((a["data-model"], {}))
        elif self.depth and tag == "td" and self.rows and "data-col" in a:
            self.rows[-1][1][a["data-col"]] = a.get("data-value")

    def handle_endtag(self, tag: str) -> None:
        if tag == "table" and self.depth:
            self.depth -= 1


def _rows_of(doc: str, table_id: str = "lb-mrbench-synth") -> list[tuple[str, dict[str, str | None]]]:
    p = _TableRows(table_id)
    p.feed(doc)
    return p.rows


def test_html_structure(lb: dict[str, Any]) -> None:
    doc = R.to_html(lb)
    assert doc.startswith("<!DOCTYPE html>") and doc.rstrip().endswith("</html>")
    # self-contained: no external resources or links at all
    assert not re.search(r"""(?:src|href|action|xlink:href)\s*=\s*["']?\s*(?:https?:)?//""", doc, re.IGNORECASE)
    assert "<link" not in doc and "@import" not in doc and not re.search(r"url\(\s*['\"]?(?:https?:)?//", doc)
    assert doc.count("<script>") == 1 and doc.count("<style>") == 1
    # one row per entry, ranked by hit@5 by default (without JS)
    assert doc.count("<tr data-model=") == len(lb["entries"])
    rows = _rows_of(doc)
    assert [m for m, _ in rows] == ["finegrain-clip-b16", "acme-embed-v2", "random", "constant"]
    assert rows[1][1]["recall@10"] == ""  # None
    # heading, charts, badges, footer
    fp = lb["benchmarks"][0]["fingerprint"]
    assert 'id="lb-mrbench-synth"' in doc and fp.split(":")[1][:12] in doc and "v1.0" in doc
    assert doc.count('<svg class="chart grain-chart"') == 1 and doc.count('<svg class="chart drop-chart"') == 1
    assert doc.count('class="badge verified"') >= 3 and 'class="badge self"' in doc
    assert "How entries are verified" in doc
    # grain chart: one bar per (model, grain type); each the mean of the per-task values
    assert doc.count('<rect class="bar"') == 4 * len(GRAIN_TYPES)
    e = _entry(lb, "finegrain-clip-b16")
    gt = e["scores"]["grain_type"]
    want = sum(gt[t]["relation"]["hit@5"] for t in e["scores"]["tasks"]) / len(e["scores"]["tasks"])
    assert f"finegrain-clip-b16 · relation: hit@5 {want:.3f}" in doc
    # drop chart: one line per model, a point per grain-count bucket
    drop_svg = doc[doc.index('<svg class="chart drop-chart"') :]
    drop_svg = drop_svg[: drop_svg.index("</svg>")]
    assert drop_svg.count("<polyline") == 4
    for b in BUCKETS:
        assert f"random · {b} grains: hit@5" in drop_svg
    assert "grains per query" in drop_svg and "hit@5" in drop_svg


def test_html_escapes_user_strings(lb: dict[str, Any]) -> None:
    e = lb["entries"][0]
    e["encoder"]["name"] = EVIL
    e["encoder"]["revision"] = '"><img src=x onerror=alert(2)>'
    e["encoder"]["notes"] = "</title><script>alert(3)</script>"
    e["command"] = "x' onmouseover='alert(4)"
    lb["benchmarks"][0]["description"] = "<b>bold</b> & <i>co</i>"
    doc = R.to_html(lb, title="<Leaderboard> & co")
    assert EVIL not in doc and "<img" not in doc and "alert(3)</script>" not in doc
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in doc
    assert doc.count("<script>") == 1  # only the page's own
    assert "<b>bold</b>" not in doc and "&lt;b&gt;bold&lt;/b&gt; &amp; &lt;i&gt;co&lt;/i&gt;" in doc
    assert "<title>&lt;Leaderboard&gt; &amp; co</title>" in doc
    assert "onmouseover='alert" not in doc
    rows = _rows_of(doc)
    assert EVIL in [m for m, _ in rows]  # the attribute round-trips to the original name
    assert doc.count("<tr data-model=") == len(lb["entries"])


def test_html_benchmarks(lb: dict[str, Any]) -> None:
    _add_second_benchmark(lb)
    doc = R.to_html(lb)
    assert 'id="lb-mrbench-synth"' in doc and 'id="lb-other-bench"' in doc
    assert doc.count('<svg class="chart grain-chart"') == 2
    assert len(_rows_of(doc, "lb-other-bench")) == 1
    only = R.to_html(lb, benchmark="other-bench")
    assert 'id="lb-mrbench-synth"' not in only and only.count("<tr data-model=") == 1
    with pytest.raises(ValueError, match="no benchmark matches"):
        R.to_html(lb, benchmark="nope")
    empty = R.to_html({"schema_version": 1, "benchmarks": [], "entries": []})
    assert "No benchmarks yet" in empty


# ----------------------------------------------------------------------------------------- headless browser

CHROMIUM = shutil.which("chromium")
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH: headless-browser checks skipped")


def _chromium(args: list[str], tmp_path: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run headless Chromium; retry once when it exits non-zero with no output (a flaky start)."""
    assert CHROMIUM is not None
    proc: subprocess.CompletedProcess[str] | None = None
    for attempt in range(2):
        cmd = [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            f"--user-data-dir={tmp_path / f'chromium-profile-{attempt}'}",
            *args,
        ]
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
        try:
            out, err = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            out, err = p.communicate()
            pytest.fail(f"chromium timed out after {timeout} s: {err[-2000:]}")
        proc = subprocess.CompletedProcess(cmd, p.returncode, out, err)
        if proc.returncode == 0 or out.strip():
            break
    assert proc is not None
    return proc


def _write_page(lb: dict[str, Any], tmp_path: Path) -> Path:
    page = tmp_path / "leaderboard.html"
    page.write_text(R.to_html(lb), encoding="utf-8")
    return page


@needs_chromium
@pytest.mark.timeout(240)
def test_browser_sorts_from_url_hash(lb: dict[str, Any], tmp_path: Path) -> None:
    page = _write_page(lb, tmp_path)
    models = {e["encoder"]["name"] for e in lb["entries"]}

    def dom(fragment: str) -> list[tuple[str, dict[str, str | None]]]:
        proc = _chromium(["--virtual-time-budget=2000", "--dump-dom", page.as_uri() + fragment], tmp_path)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert "</html>" in proc.stdout, proc.stderr[-2000:]
        return _rows_of(proc.stdout)

    rows = dom("#sort=hit@5&desc=0")
    assert {m for m, _ in rows} == models and len(rows) == len(models)
    values = [float(v["hit@5"] or "nan") for _, v in rows]
    assert values == sorted(values) and not any(math.isnan(v) for v in values)
    assert rows[0][0] == "constant" and rows[-1][0] == "finegrain-clip-b16"

    rows = dom("#sort=recall@10&desc=0")  # the self-reported entry has no recall@10: last
    assert [m for m, _ in rows] == ["constant", "random", "finegrain-clip-b16", "acme-embed-v2"]


@needs_chromium
@pytest.mark.timeout(240)
def test_browser_screenshot(lb: dict[str, Any], tmp_path: Path) -> None:
    Image = pytest.importorskip("PIL.Image")
    np = pytest.importorskip("numpy")
    page = _write_page(lb, tmp_path)
    png = tmp_path / "page.png"
    proc = _chromium([f"--screenshot={png}", "--window-size=1280,2000", page.as_uri()], tmp_path)
    assert proc.returncode == 0 and png.is_file(), proc.stderr[-2000:]
    with Image.open(png) as im:
        assert im.size == (1280, 2000)
        rgb = im.convert("RGB")
    colors = rgb.getcolors(maxcolors=1 << 24)
    assert colors is not None and len(colors) > 50  # text, badges, bars, lines: not a blank page
    px = np.asarray(rgb, dtype=np.int16)
    assert (px < 250).any(axis=2).mean() > 0.03  # a fair share of non-white pixels

    # the charts: pixels of the first two palette colours (Okabe-Ito blue and orange bars and lines)
    for ref in ((0x00, 0x72, 0xB2), (0xE6, 0x9F, 0x00)):
        ys, _xs = np.nonzero((np.abs(px - np.array(ref)) <= 12).all(axis=2))
        assert len(ys) > 500, ref
        assert ys.max() - ys.min() > 100, ref  # spread over a chart, not one swatch


def test_rows_by_benchmark_never_ranks_across_benchmarks(lb: dict[str, Any]) -> None:
    _add_second_benchmark(lb)
    groups = R.rows_by_benchmark(lb)
    assert [label.split(" ")[0] for label, _ in groups] == ["mrbench-synth", "other-bench"]
    assert groups[1][0] == "other-bench (abababababab)"
    assert [len(rows) for _, rows in groups] == [4, 1]
    assert {r["benchmark"] for r in groups[0][1]} == {"mrbench-synth"}
    assert R.rows_by_benchmark(lb, benchmark="other-bench") == [groups[1]]
    assert [label for label, _ in R.rows_by_benchmark(lb, task="t2i")] == [g[0] for g in groups]
    with pytest.raises(ValueError, match="unknown task 'nope'"):
        R.rows_by_benchmark(lb, task="nope")
    with pytest.raises(ValueError, match="no benchmark matches 'nope'"):
        R.rows_by_benchmark(lb, benchmark="nope")


def test_cli_show_and_render_one_table_per_benchmark(lb: dict[str, Any], tmp_path: Path) -> None:
    """`leaderboard show` (terminal and --markdown) and `render --markdown` rank each benchmark on its own;
    with one benchmark the output keeps its single untitled table."""
    from typer.testing import CliRunner

    from mrbench.cli.app import app

    one = tmp_path / "one.json"
    one.write_text(json.dumps(lb), encoding="utf-8")
    _add_second_benchmark(lb)
    two = tmp_path / "two.json"
    two.write_text(json.dumps(lb), encoding="utf-8")
    run = CliRunner().invoke
    r = run(app, ["leaderboard", "show", "-l", str(two)])
    assert r.exit_code == 0, r.output
    assert "on mrbench-synth (" in r.output and "on other-bench (abababababab)" in r.output
    r = run(app, ["leaderboard", "show", "-l", str(two), "--markdown"])
    assert r.exit_code == 0, r.output
    assert r.output.count("### ") == 2 and r.output.index("### mrbench-synth") < r.output.index("### other-bench")
    r = run(app, ["leaderboard", "show", "-l", str(one), "--markdown"])
    assert r.exit_code == 0 and "###" not in r.output and r.output.startswith("|")
    r = run(app, ["leaderboard", "show", "-l", str(two), "-b", "other-bench"])
    assert r.exit_code == 0 and "on other-bench" not in r.output and "MRBench leaderboard:" in r.output
    md = tmp_path / "t.md"
    r = run(app, ["leaderboard", "render", "-l", str(two), "--markdown", str(md)])
    assert r.exit_code == 0, r.output
    text = md.read_text(encoding="utf-8")
    assert text.count("### ") == 2 and text.count("| random") == 2


def test_cli_tables_explain_the_grain_columns(lb: dict[str, Any], tmp_path: Path) -> None:
    """`drop` (hit@5 at 2 grains minus at 5+) and g2..g5+ are explained under the terminal table, under
    `show --markdown` and under `render --markdown`; a table without them carries no note."""
    from typer.testing import CliRunner

    from mrbench.cli.app import app

    drop_note = "drop: hit@5 at 2 grains minus hit@5 at 5+ grains"
    path = tmp_path / "lb.json"
    path.write_text(json.dumps(lb), encoding="utf-8")
    run = CliRunner().invoke
    r = run(app, ["leaderboard", "show", "-l", str(path)])
    assert r.exit_code == 0, r.output
    flat = " ".join(r.output.split())  # the caption wraps at the table's width
    assert drop_note in flat and "g2, g3, g4, g5+: hit@5 on the queries with that many grains" in flat
    assert r.output.index("drop:") > r.output.index("constant")  # under the table
    r = run(app, ["leaderboard", "show", "-l", str(path), "--columns", "model,hit@5"])
    assert r.exit_code == 0 and "drop:" not in r.output and "grains" not in r.output
    r = run(app, ["leaderboard", "show", "-l", str(path), "--markdown", "--columns", "model,hit@5,drop"])
    assert r.exit_code == 0, r.output
    table, _, notes = r.output.rstrip("\n").partition("\n\n")
    assert all(line.startswith("|") for line in table.splitlines()) and len(table.splitlines()) == 2 + len(lb["entries"])
    assert notes.startswith(drop_note) and "g2, g3" not in notes
    md = tmp_path / "t.md"
    r = run(app, ["leaderboard", "render", "-l", str(path), "--markdown", str(md)])
    assert r.exit_code == 0, r.output
    table, _, notes = md.read_text(encoding="utf-8").partition("\n\n")
    assert all(line.startswith("|") for line in table.splitlines())
    assert drop_note in notes and notes.endswith("lower is better\n")
    assert R.to_markdown(R.sort_rows(R.entry_rows(lb), "hit@5")) == table  # the library's table alone is unchanged


def test_cli_render_writes_only_page_files_and_names_the_users_path(lb: dict[str, Any], tmp_path: Path) -> None:
    """`render --html/--markdown` write only a file with the page's suffix (.html/.htm, .md/.markdown):
    a results.json, the leaderboard itself or a bare name is refused with one line and left as it was;
    a directory or an unwritable path is named as given, not as the temporary file beside it; and a
    --leaderboard that is a directory says so (audit)."""
    from typer.testing import CliRunner

    from mrbench.cli.app import app

    path = tmp_path / "lb.json"
    path.write_text(json.dumps(lb), encoding="utf-8")
    results = tmp_path / "px1" / "results.json"
    results.parent.mkdir()
    results.write_text('{"a": 1}')
    realdir = tmp_path / "realdir"
    realdir.mkdir()
    page_dir = tmp_path / "page.html"
    page_dir.mkdir()
    run = CliRunner().invoke

    def one_line(args: list[str], *needles: str) -> None:
        r = run(app, ["leaderboard", "render", *args])
        lines = r.output.strip().splitlines()
        assert r.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: "), r.output
        assert ".tmp" not in r.output and "wrote" not in r.output, r.output
        for n in needles:
            assert n in lines[0], r.output

    one_line(["-l", str(path), "--markdown", str(results)], f"--markdown {results}:", ".md or .markdown")
    one_line(["-l", str(path), "--html", str(path)], f"--html {path}:", ".html or .htm")
    one_line(["-l", str(path), "--html", str(tmp_path / "ok.html"), "--markdown", str(tmp_path / "t.txt")], "--markdown")
    one_line(["-l", str(path), "--html", str(realdir)], f"--html {realdir}:", ".html")
    one_line(["-l", str(path), "--html", str(page_dir)], f"--html {page_dir}: is a directory")
    one_line(["-l", str(path), "--markdown", str(results / "t.md")], f"--markdown {results / 't.md'}: cannot write")
    one_line(["-l", str(realdir), "--html", str(tmp_path / "ok.html")], f"--leaderboard {realdir}: is a directory")
    assert results.read_text() == '{"a": 1}' and json.loads(path.read_text(encoding="utf-8")) == lb
    assert not (tmp_path / "ok.html").exists() and not any(realdir.iterdir()) and not any(page_dir.iterdir())
    r = run(app, ["leaderboard", "show", "-l", str(realdir)])
    assert r.exit_code == 2 and f"--leaderboard {realdir}: is a directory" in r.output, r.output
    for html, md in (("a.HTML", "a.markdown"), ("b.htm", "b.MD")):
        r = run(app, ["leaderboard", "render", "-l", str(path), "--html", str(tmp_path / html), "--markdown", str(tmp_path / md)])
        assert r.exit_code == 0, r.output
        assert (tmp_path / html).read_text(encoding="utf-8").startswith("<!") and (tmp_path / md).read_text().startswith("|")
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
