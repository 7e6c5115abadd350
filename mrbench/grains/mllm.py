"""Grains written by a local Qwen2-VL-family vision-language model, prompted for JSON.

:class:`MLLMExtractor` (registry name ``"mllm"``) asks the model, once per caption and greedily
(batched ``generate``), for a JSON list of ``{"text": span, "type": type}`` objects, the types being
:data:`~mrbench.data.schema.GRAIN_TYPES` (see :data:`PROMPT_TEMPLATE`; one short example follows
the conventions of :mod:`mrbench.grains.lexicon`). Prompts are built with the generative encoders'
chat-format helpers (:func:`~mrbench.encoders.generative.build_ret_prompt`,
:func:`~mrbench.encoders.generative.prepare_ret_batch`, :func:`~mrbench.encoders.generative.generate_summaries`).

Parsing and validation (:func:`parse_grains`): code fences are ignored; the *first* JSON array in
the reply is taken (prose around it is allowed). Every item must be an object with a non-empty string
``text`` and a ``type`` in ``GRAIN_TYPES`` (compared after ``strip().lower()``); ``key`` is optional
(string or null). One bad item makes the whole reply invalid. An empty list is a valid answer.
An invalid reply is retried ``retries`` times with a stricter prompt (:data:`STRICT_PREFIX`); a text
still invalid after that is *skipped*: its grains are ``[]``. :attr:`MLLMExtractor.stats` counts
``calls`` (prompts sent to the model, retries included), ``invalid`` (invalid replies, every attempt),
``retried`` (retry prompts) and ``skipped`` (texts given up), plus ``cached`` (texts answered from the
cache); one warning line is logged per batch that had invalid replies.

Disk cache: JSONL at ``cache_dir/<model dir name>-<revision>.jsonl`` (default ``cache_dir``:
``$MRBENCH_HOME/grain_cache``), one object per line ``{"key", "text", "ok", "grains"}`` where
``key`` is ``sha256(PROMPT_VERSION + "\\0" + text)``; lines are appended whole (one ``write`` each) and
a partially written last line is ignored when reading. Skipped texts are cached too (``"ok": false``,
``"grains": []``) so they are not regenerated; delete the file (or bump :data:`PROMPT_VERSION`) to
redo them. The model is loaded on the first text that is not in the cache.

Images (:meth:`MLLMExtractor.extract_images`, for image-only queries with no text of their own, such as
NIGHTS image→image): the same model sees the image with :data:`IMAGE_PROMPT_TEMPLATE` (no caption;
spans name what is visible), with the same validation, retry, skip and cache rules. An image's cache
key is ``sha256(IMAGE_PROMPT_VERSION + "\\0image\\0" + sha256 of the image file's bytes)``, so a moved or
renamed image is not asked again and an edited one is; its record's ``text`` is ``"image:<path>"``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mrbench.data.schema import GRAIN_TYPES, Grain

log = logging.getLogger("mrbench.grains")

PROMPT_VERSION = "mllm-grains-v2"
"""Part of every text's cache key: change it whenever the text prompts change (v2: absent or
taken-away things left out)."""

IMAGE_PROMPT_VERSION = "mllm-grains-v1"
"""Part of every image's cache key: change it whenever the image prompt changes."""

_TYPES = ", ".join(GRAIN_TYPES)
PROMPT_TEMPLATE = (
    "Split the image caption below into its grains: entities (things), attributes (colours, sizes, "
    "counts, materials), actions or states, relations (a preposition with its object) and scenes "
    "(places, settings, weather, time of day). Answer with a JSON list of objects "
    '{{"text": span, "type": type}} where span is copied from the caption and type is one of: '
    + _TYPES + ". Leave out what the caption says is absent or taken away (after no, without, "
    "remove, replace ... with, instead of): list only what the described image shows.\n"
    "Example caption: two brown dogs sleeping next to a bench in a park\n"
    'Example answer: [{{"text": "two", "type": "attribute"}}, {{"text": "brown", "type": "attribute"}}, '
    '{{"text": "dogs", "type": "entity"}}, {{"text": "sleeping", "type": "action_or_state"}}, '
    '{{"text": "next to a bench", "type": "relation"}}, {{"text": "bench", "type": "entity"}}, '
    '{{"text": "park", "type": "scene"}}]\n'
    "Caption: {text}\n"
    "Answer:"
)
"""The user turn (``{text}`` is the caption; doubled braces are literal)."""

IMAGE_PROMPT_TEMPLATE = (
    "{body}List the grains of the image above: the main entities (things), their attributes (colours, sizes, "
    "counts, materials), actions or states, relations (a preposition with its object) and the scene (place, "
    "setting, weather, time of day). Answer with a JSON list of objects "
    '{{"text": span, "type": type}} where span is a short phrase for what you see and type is one of: '
    + _TYPES + ".\n"
    'Example answer: [{{"text": "two", "type": "attribute"}}, {{"text": "brown", "type": "attribute"}}, '
    '{{"text": "dogs", "type": "entity"}}, {{"text": "sleeping", "type": "action_or_state"}}, '
    '{{"text": "next to a bench", "type": "relation"}}, {{"text": "bench", "type": "entity"}}, '
    '{{"text": "park", "type": "scene"}}]\n'
    "Answer:"
)
"""The user turn for an image (``{body}`` is empty: the image comes before it in the chat turn)."""

STRICT_PREFIX = (
    "Your answer must be ONLY a JSON list, with no other words and no code fences. Every object needs "
    '"text" (a non-empty string from the caption) and "type" (exactly one of: ' + _TYPES + ").\n"
)
"""Prepended to :data:`PROMPT_TEMPLATE` when a reply was invalid."""

_FENCE = re.compile(r"```[A-Za-z0-9_-]*")


class GrainParseError(ValueError):
    """A model reply that is not a valid grain list (the message says why)."""


def parse_grains(reply: str) -> list[Grain]:
    """Grains from a model reply (rules in the module docstring); :class:`GrainParseError` if invalid."""
    s = _FENCE.sub(" ", reply or "")
    dec = json.JSONDecoder()
    found: Any = None
    for m in re.finditer(r"\[", s):
        try:
            obj, _ = dec.raw_decode(s, m.start())
        except json.JSONDecodeError:
            continue
        if isinstance(obj, list):
            found = obj
            break
    if found is None:
        raise GrainParseError("no JSON array in the reply")
    grains = []
    for i, it in enumerate(found):
        if not isinstance(it, dict):
            raise GrainParseError(f"item {i} is not an object")
        text, typ, key = it.get("text"), it.get("type"), it.get("key")
        if not isinstance(text, str) or not text.strip():
            raise GrainParseError(f"item {i} has no non-empty string 'text'")
        if not isinstance(typ, str) or typ.strip().lower() not in GRAIN_TYPES:
            raise GrainParseError(f"item {i} has unknown type {typ!r}")
        if key is not None and not isinstance(key, str):
            raise GrainParseError(f"item {i} has a non-string 'key'")
        grains.append(Grain(text.strip(), typ.strip().lower(), key))
    return grains


def cache_key(text: str) -> str:
    """Cache key of ``text``: sha256 of the prompt version and the text."""
    return hashlib.sha256((PROMPT_VERSION + "\x00" + text).encode("utf-8")).hexdigest()


def image_cache_key(path: str | Path) -> str:
    """Cache key of an image file: sha256 of the image prompt's version and the file's content hash."""
    from mrbench.data.fingerprint import file_sha256

    return hashlib.sha256((IMAGE_PROMPT_VERSION + "\x00image\x00" + file_sha256(Path(path))).encode("utf-8")).hexdigest()


def _default_cache_dir() -> Path:
    from mrbench.data.registry import mrbench_home

    return mrbench_home() / "grain_cache"


class MLLMExtractor:
    """Grain extractor prompting a local Qwen2-VL / Qwen2.5-VL checkpoint (see the module docstring)."""

    name: str = "mllm"

    def __init__(
        self,
        model: str,
        *,
        device: str = "auto",
        precision: str = "auto",
        batch_size: int = 8,
        max_new_tokens: int = 256,
        cache_dir: str | Path | None = None,
        retries: int = 1,
        max_length: int | None = 1024,
    ) -> None:
        from mrbench.encoders.runtime import resolve_model_dir

        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model_spec = str(model)
        self.model_dir, self.revision = resolve_model_dir(self.model_spec, label=self.name,
                                                          example="/path/to/Qwen2-VL-2B-Instruct")
        self.device = device
        self.precision = precision
        self.batch_size = int(batch_size)
        self.max_new_tokens = int(max_new_tokens)
        self.retries = max(0, int(retries))
        self.max_length = max_length
        rev = re.sub(r"[^A-Za-z0-9._-]+", "_", self.revision)[:24]
        stem = re.sub(r"[^A-Za-z0-9._-]+", "_", self.model_dir.resolve().name) or "model"
        self.cache_path = Path(cache_dir) if cache_dir is not None else _default_cache_dir()
        self.cache_path = self.cache_path / f"{stem}-{rev}.jsonl"
        self.stats: dict[str, int] = {"calls": 0, "invalid": 0, "retried": 0, "skipped": 0, "cached": 0}
        self._cache: dict[str, list[Grain]] = self._read_cache()
        self._vl: Any = None

    # ------------------------------------------------------------------------------------------ cache
    def _read_cache(self) -> dict[str, list[Grain]]:
        out: dict[str, list[Grain]] = {}
        if not self.cache_path.is_file():
            return out
        with self.cache_path.open(encoding="utf-8") as f:
            for line in f:
                try:
                    obj = json.loads(line)
                    out[str(obj["key"])] = [Grain.from_dict(g) for g in obj["grains"]]
                except (ValueError, KeyError, TypeError):
                    continue  # a torn or foreign line
        return out

    def _append_cache(self, records: list[dict[str, Any]]) -> None:
        if not records:
            return
        self.cache_path.parent.mkdir(parents=True, exist_ok=True)
        with self.cache_path.open("a", encoding="utf-8") as f:
            for r in records:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")

    # ------------------------------------------------------------------------------------------ model
    def _load(self) -> Any:
        if self._vl is None:
            from mrbench.encoders.generative import stop_token_ids
            from mrbench.encoders.qwen2vl import load_qwen2vl
            from mrbench.encoders.runtime import resolve_device, resolve_dtype

            self.device = resolve_device(self.device)
            dtype = resolve_dtype(self.device, self.precision)
            self._vl = load_qwen2vl(str(self.model_dir), label=self.name, device=self.device, dtype=dtype,
                                    example="/path/to/Qwen2-VL-2B-Instruct")
            self._vl.model.eval()
            self._stop_ids = stop_token_ids(self._vl.tokenizer)
        return self._vl

    def _generate(self, items: Sequence[str | Path], *, strict: bool, image: bool = False) -> list[str]:
        """Greedy replies for ``items`` (captions, or image paths when ``image``; one batched ``generate``)."""
        import torch

        from mrbench.encoders.generative import (
            build_ret_prompt,
            generate_summaries,
            prepare_ret_batch,
        )

        vl = self._load()
        template = (STRICT_PREFIX if strict else "") + (IMAGE_PROMPT_TEMPLATE if image else PROMPT_TEMPLATE)
        if image:
            from mrbench.encoders.harness import load_rgb

            prompts = [build_ret_prompt(None, load_rgb(Path(p), str(p)), template=template) for p in items]
        else:
            prompts = [build_ret_prompt(str(t), None, template=template) for t in items]
        batch = prepare_ret_batch(vl.processor, prompts, max_length=self.max_length,
                                  max_summary_tokens=self.max_new_tokens, label=self.name).to(self.device)
        self.stats["calls"] += len(items)
        with torch.inference_mode():
            out = generate_summaries(vl.model, vl.processor, batch, self.max_new_tokens, do_sample=False,
                                     stop_ids=self._stop_ids)
        return out.texts

    # ---------------------------------------------------------------------------------------- extract
    def extract(self, texts: Sequence[str]) -> list[list[Grain]]:
        """One grain list per text, in order (``[]`` for texts the model never answered validly)."""
        texts = list(texts)
        return self._extract(texts, [cache_key(t) for t in texts], texts, image=False)

    def extract_images(self, images: Sequence[str | Path]) -> list[list[Grain]]:
        """One grain list per image file, in order (``[]`` for images never answered validly).

        Raises :class:`~mrbench.errors.BenchmarkError` (one line) for a missing or unreadable image."""
        from mrbench.errors import BenchmarkError

        paths = [Path(p) for p in images]
        for p in paths:
            if not p.is_file():
                raise BenchmarkError(f"{p}: image not found; restore it or pass the right --image-root")
        return self._extract(paths, [image_cache_key(p) for p in paths], [f"image:{p}" for p in paths], image=True)

    def _extract(self, items: list[Any], keys: list[str], labels: list[str], *, image: bool) -> list[list[Grain]]:
        todo: list[int] = []
        seen: set[str] = set()
        for i, k in enumerate(keys):
            if k in self._cache:
                self.stats["cached"] += 1
            elif k not in seen:
                seen.add(k)
                todo.append(i)
        for b in range(0, len(todo), self.batch_size):
            idx = todo[b:b + self.batch_size]
            self._run_batch([items[i] for i in idx], [keys[i] for i in idx], [labels[i] for i in idx], image=image)
        return [list(self._cache.get(k, [])) for k in keys]

    def _run_batch(self, items: list[Any], keys: list[str], labels: list[str], *, image: bool) -> None:
        results: dict[int, list[Grain]] = {}
        pending = list(range(len(items)))
        n_invalid = n_retried = 0
        for attempt in range(self.retries + 1):
            if not pending:
                break
            if attempt:
                n_retried += len(pending)
            replies = self._generate([items[i] for i in pending], strict=attempt > 0, image=image)
            still = []
            for i, reply in zip(pending, replies):
                try:
                    results[i] = parse_grains(reply)
                except GrainParseError:
                    still.append(i)
            n_invalid += len(still)
            pending = still
        self.stats["invalid"] += n_invalid
        self.stats["retried"] += n_retried
        self.stats["skipped"] += len(pending)
        if n_invalid:
            log.warning("mllm grains: %d invalid repl%s in a batch of %d (%d retried, %d skipped with no grains)",
                        n_invalid, "y" if n_invalid == 1 else "ies", len(items), n_retried, len(pending))
        records = []
        for i, (k, label) in enumerate(zip(keys, labels)):
            grains = results.get(i, [])
            self._cache[k] = grains
            records.append({"key": k, "text": label, "ok": i in results, "grains": [g.to_dict() for g in grains]})
        self._append_cache(records)
