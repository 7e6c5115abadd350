"""The README's Metrics and Benchmark format sections say what the code does."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def _section(title: str) -> str:
    text = README.read_text(encoding="utf-8")
    m = re.search(rf"^## {re.escape(title)}.*?$(.*?)(?=^## )", text, flags=re.M | re.S)
    assert m, title
    return " ".join(m.group(1).split())


def test_fingerprint_paragraph_names_png_pixels_and_the_algorithm():
    from mrbench.data.fingerprint import FINGERPRINT_ALGO

    s = _section("Benchmark format")
    assert FINGERPRINT_ALGO in s and "decoded pixels" in s
    assert "qrels and image *bytes*" not in s


def test_metrics_section_says_trec_eval_breaks_run_file_ties_by_docid():
    s = _section("Metrics")
    assert "breaks score ties by docid" in s and "`mrbench verify` reads the rank column" in s


def test_metrics_section_documents_every_column_of_the_output_tables(tmp_path):
    import pandas as pd

    import mrbench

    mrbench.evaluate("mrbench-synth-tiny", "random", ks=(1, 5), cache=False, output=tmp_path / "r")
    s = _section("Metrics")
    for name in ("per_query.parquet", "sensitivity.parquet"):
        cols = list(pd.read_parquet(tmp_path / "r" / name).columns)
        assert f"**`{name}`**" in s
        para = s[s.index(f"**`{name}`**"):]
        for c in dict.fromkeys(re.sub(r"@\d+$", "@k", c) for c in cols):
            assert f"`{c}`" in para, (name, c)
    assert "comma-joined on disk" in s and "a list in memory" in s
