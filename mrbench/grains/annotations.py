"""Grains supplied by hand (or by another tool) in a JSONL file.

File format: UTF-8, one JSON object per line (blank lines are skipped)::

    {"id": "q1", "text": "a dog on a bench", "grains": [{"text": "dog", "type": "entity"},
                                                         {"text": "on a bench", "type": "relation",
                                                          "key": "relation:on|bench"}]}

``text`` (string) and ``grains`` (list) are required, ``id`` is optional (string or integer, stored
as a string). Each grain needs a non-empty string ``text`` and a ``type`` among
:data:`~mrbench.data.schema.GRAIN_TYPES`; ``key`` is optional (string or null). Lookup is by exact
text (:meth:`AnnotationsExtractor.extract`) or by id (:meth:`AnnotationsExtractor.for_id`). When a
text occurs on several lines, the last line wins; a repeated id is an error.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from mrbench.data.schema import GRAIN_TYPES, Grain
from mrbench.errors import MrbenchError


class AnnotationsExtractor:
    """Grain "extractor" that looks texts up in a JSONL annotation file (format in the module doc)."""

    name: str = "annotations"

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._by_text: dict[str, list[Grain]] = {}
        self._by_id: dict[str, list[Grain]] = {}
        self._load()

    def _err(self, lineno: int, what: str) -> MrbenchError:
        return MrbenchError(f"{self.path}:{lineno}: {what}")

    def _load(self) -> None:
        if not self.path.is_file():
            raise MrbenchError(f"{self.path}: grain annotation file not found; pass the path of a JSONL file")
        with self.path.open(encoding="utf-8") as f:
            for lineno, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    raise self._err(lineno, f"malformed JSON ({e.msg}); write one JSON object per line") from None
                if not isinstance(obj, dict):
                    raise self._err(lineno, "expected a JSON object with 'text' and 'grains'")
                text = obj.get("text")
                if not isinstance(text, str):
                    raise self._err(lineno, "missing or non-string field 'text'; add the query text")
                raw = obj.get("grains")
                if not isinstance(raw, list):
                    raise self._err(lineno, "missing or non-list field 'grains'; add a list of grain objects")
                grains = [self._grain(lineno, k, g) for k, g in enumerate(raw)]
                self._by_text[text] = grains
                if "id" in obj and obj["id"] is not None:
                    if not isinstance(obj["id"], (str, int)) or isinstance(obj["id"], bool):
                        raise self._err(lineno, "field 'id' must be a string or an integer")
                    qid = str(obj["id"])
                    if qid in self._by_id:
                        raise self._err(lineno, f"duplicate id {qid!r}; make ids unique")
                    self._by_id[qid] = grains

    def _grain(self, lineno: int, k: int, g: object) -> Grain:
        where = f"grains[{k}]"
        if not isinstance(g, dict):
            raise self._err(lineno, f"{where} is not an object; write {{\"text\": ..., \"type\": ...}}")
        text, typ, key = g.get("text"), g.get("type"), g.get("key")
        if not isinstance(text, str) or not text.strip():
            raise self._err(lineno, f"{where}: missing or empty field 'text'; give the grain's span")
        if not isinstance(typ, str):
            raise self._err(lineno, f"{where}: missing field 'type'; use one of {', '.join(GRAIN_TYPES)}")
        if typ not in GRAIN_TYPES:
            raise self._err(lineno, f"{where}: unknown grain type {typ!r}; use one of {', '.join(GRAIN_TYPES)}")
        if key is not None and not isinstance(key, str):
            raise self._err(lineno, f"{where}: field 'key' must be a string or null")
        return Grain(text=text, type=typ, key=key)

    def __len__(self) -> int:
        return len(self._by_text)

    def texts(self) -> list[str]:
        """The annotated texts, in file order."""
        return list(self._by_text)

    def extract(self, texts: Sequence[str]) -> list[list[Grain]]:
        """Return the annotated grains of each text (exact match); a missing text is an error."""
        if isinstance(texts, str):
            raise TypeError("extract() takes a sequence of texts, not a single string")
        out: list[list[Grain]] = []
        for t in texts:
            if t not in self._by_text:
                raise MrbenchError(
                    f"text {t[:60]!r} has no grain annotations in {self.path}; add a line for it to the file"
                )
            out.append(list(self._by_text[t]))
        return out

    def has_text(self, text: str) -> bool:
        """Whether a line with exactly this ``text`` exists."""
        return text in self._by_text

    def has_id(self, id: str | int) -> bool:
        """Whether a line with this ``id`` (compared as a string) exists."""
        return str(id) in self._by_id

    def for_id(self, id: str | int) -> list[Grain]:
        """Return the annotated grains of the line whose ``id`` is ``id`` (compared as a string)."""
        qid = str(id)
        if qid not in self._by_id:
            raise MrbenchError(f"id {qid!r} has no grain annotations in {self.path}; add a line with that id")
        return list(self._by_id[qid])
