"""Removing one grain from a query (the grain-sensitivity diagnostic).

A builder that can regenerate the text without a grain stores the results in
``query.meta["drop_one_text"]`` (one entry per grain, ``None`` where the grain cannot be dropped);
otherwise the grain's span is cut out of the query text (first case-insensitive whole-word match),
and dangling commas, conjunctions and double spaces are tidied.
"""

from __future__ import annotations

import re

from mrbench.data.schema import Query


def drop_grain_text(query: Query, index: int) -> str | None:
    """Return the query text without grain ``index``, or ``None`` if it cannot be removed."""
    if not query.text or not (0 <= index < len(query.grains)):
        return None
    variants = query.meta.get("drop_one_text")
    if isinstance(variants, list) and len(variants) == len(query.grains):
        v = variants[index]
        return v if isinstance(v, str) and v.strip() and v != query.text else None
    span = query.grains[index].text.strip()
    if not span:
        return None
    pat = re.compile(r"(?<!\w)" + re.escape(span) + r"(?!\w)", re.IGNORECASE)
    text, n = pat.subn("", query.text, count=1)
    if n == 0:
        return None
    text = re.sub(r"\s+", " ", text)
    text = re.sub(r",\s*(?:and|with)\b\s*", ", ", text)
    text = re.sub(r"\b(?:and|with)\s*(?=,|\band\b|\bwith\b)", "", text)
    text = re.sub(r"\s+([,.;])", r"\1", text)
    text = re.sub(r"^\s*(?:and|with)\b|\b(?:and|with)\s*$", "", text.strip())
    text = re.sub(r"^\s*[,;]\s*|[,;]\s*$", "", text).strip()
    text = re.sub(r",\s*,", ",", text)
    return text if text and text != query.text else None
