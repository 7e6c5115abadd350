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
