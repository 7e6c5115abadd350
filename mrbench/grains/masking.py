"""Removing one grain from a query (the grain-sensitivity diagnostic).

A builder that can regenerate the text without a grain stores the results in
``query.meta["drop_one_text"]`` (one entry per grain, ``None`` where the grain cannot be dropped);
otherwise the grain's span is cut out of the query text (first case-insensitive whole-word match),
and dangling commas, conjunctions and double spaces are tidied.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

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


def drop_one_variants(task: Any, judged: Sequence[Mapping[int, int]]) -> tuple[list[Any], list[tuple[int, int, str, str]]]:
    """The drop-one-grain variants of ``task``'s queries that have a relevant candidate in ``judged``
    (one mapping per query): for each droppable grain, a copy of the query with that grain's text
    removed (:func:`drop_grain_text`), id ``"<query id>~<grain index>"``, and the grain's fact dropped
    from ``meta["asserts"]``. Returns ``(queries, owners)`` with ``owners[i] = (query index, grain
    index, grain type, grain text)``. Used by ``evaluate``'s diagnostic and by ``mrbench encode``."""
    from dataclasses import replace

    from mrbench.data.csr import CsrMappings

    level = task.relevance_level
    if isinstance(judged, CsrMappings):  # millions of judged pairs: no dict per query
        has_relevant = (judged.max_values() >= level).tolist()
    else:
        has_relevant = [any(g >= level for g in m.values()) for m in judged]
    reduced, owners = [], []
    for qi, q in enumerate(task.queries):
        if not has_relevant[qi]:
            continue
        for gi, grain in enumerate(q.grains):
            text = drop_grain_text(q, gi)
            if text is None:
                continue
            meta = dict(q.meta)
            if isinstance(meta.get("asserts"), list) and grain.key in meta["asserts"]:
                meta["asserts"] = [a for a in meta["asserts"] if a != grain.key]
            meta.pop("drop_one_text", None)
            reduced.append(replace(q, id=f"{q.id}~{gi}", text=text, meta=meta))
            owners.append((qi, gi, grain.type, grain.text))
    return reduced, owners
