"""The ``mllm`` grain extractor: reply parser/validator, and the extractor on a tiny random Qwen2-VL.

A random model writes garbage, which is exactly the invalid-reply path (retry, skip, cache).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from fixtures.tiny_qwen2vl import build_tiny_qwen2vl

from mrbench.data.schema import Grain
from mrbench.grains.extract import GrainExtractor, get_extractor
from mrbench.grains.mllm import (
    IMAGE_PROMPT_TEMPLATE,
    PROMPT_TEMPLATE,
    GrainParseError,
    MLLMExtractor,
    cache_key,
    image_cache_key,
    parse_grains,
)


# ------------------------------------------------------------------------------------------- parser
def test_parse_plain_array() -> None:
    r = '[{"text": "dog", "type": "entity"}, {"text": "on a bench", "type": "relation", "key": "relation:on|bench"}]'
    assert parse_grains(r) == [Grain("dog", "entity"), Grain("on a bench", "relation", "relation:on|bench")]


def test_parse_array_in_prose_and_fences() -> None:
    r = 'Sure! Here [are] the grains:\n```json\n[{"text": " red ", "type": "Attribute"}]\n```\nHope it helps [1].'
    assert parse_grains(r) == [Grain("red", "attribute")]
    assert parse_grains("Answer: []") == []


@pytest.mark.parametrize(
    "reply",
    [
        '[{"text": "dog", "type": "animal"}]',  # unknown type
        '[{"type": "entity"}]',  # missing text
        '[{"text": "", "type": "entity"}]',  # empty text
        '[{"text": 3, "type": "entity"}]',  # non-string text
        '[{"text": "dog", "type": "entity", "key": 1}]',  # bad key
        '["dog"]',  # item not an object
        '{"text": "dog", "type": "entity"}',  # not a list
        "dog, bench, park",  # no JSON at all
        '[{"text": "dog", "type": "entity"',  # truncated
        "",
    ],
)
def test_parse_rejects(reply: str) -> None:
    with pytest.raises(GrainParseError):
        parse_grains(reply)


def test_prompt_template_formats() -> None:
    s = PROMPT_TEMPLATE.format(text="a cat")
    assert "Caption: a cat\nAnswer:" in s and '{"text": "two", "type": "attribute"}' in s
    assert "taken away" in s  # edits and negations: only what the described image shows
    # the text prompt's version moved (v2), the image prompt's did not: cached image answers stay valid
    import hashlib

    from mrbench.grains import mllm

    assert mllm.PROMPT_VERSION != mllm.IMAGE_PROMPT_VERSION == "mllm-grains-v1"
    assert cache_key("a") == hashlib.sha256(b"mllm-grains-v2\x00a").hexdigest()
    assert cache_key("a cat") != cache_key("a cat ")


# ------------------------------------------------------------------------------------------- model
@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return build_tiny_qwen2vl(tmp_path_factory.mktemp("tiny-qwen2vl-mllm"), with_ret=False)


def _counting(ex: MLLMExtractor) -> list[int]:
    calls: list[int] = []
    orig = ex._generate

    def wrapped(texts, *, strict, image=False):
        calls.append(len(texts))
        return orig(texts, strict=strict, image=image)

    ex._generate = wrapped  # type: ignore[method-assign]
    return calls


def test_invalid_replies_are_retried_skipped_and_cached(tiny_dir: Path, tmp_path: Path, caplog) -> None:
    texts = ["a dog on a bench", "two red cars", "a dog on a bench", "a man surfing"]
    ex = MLLMExtractor(str(tiny_dir), device="cpu", batch_size=2, max_new_tokens=6, cache_dir=tmp_path)
    assert isinstance(ex, GrainExtractor) and ex.name == "mllm"
    calls = _counting(ex)
    with caplog.at_level(logging.WARNING, logger="mrbench.grains"):
        out = ex.extract(texts)
    assert out == [[], [], [], []]
    # 3 distinct texts in batches of 2: first tries [2, 1], retries [2, 1]
    assert sorted(calls) == [1, 1, 2, 2]
    assert ex.stats == {"calls": 6, "invalid": 6, "retried": 3, "skipped": 3, "cached": 0}
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2 and "invalid" in warnings[0].getMessage()

    lines = [json.loads(x) for x in ex.cache_path.read_text().splitlines()]
    assert ex.cache_path.parent == tmp_path and ex.cache_path.suffix == ".jsonl"
    assert {r["text"] for r in lines} == set(texts) and all(r["ok"] is False and r["grains"] == [] for r in lines)
    assert {r["key"] for r in lines} == {cache_key(t) for t in texts}

    # same extractor: all from memory, no model call
    assert ex.extract(texts) == out and len(calls) == 4 and ex.stats["cached"] == 4
    # a fresh extractor on the same cache file: no model loaded, no call
    ex2 = MLLMExtractor(str(tiny_dir), device="cpu", max_new_tokens=6, cache_dir=tmp_path)
    calls2 = _counting(ex2)
    assert ex2.extract(texts[:2]) == [[], []] and calls2 == [] and ex2._vl is None
    assert ex2.stats["calls"] == 0 and ex2.stats["cached"] == 2


def test_valid_reply_is_kept_and_cached(tiny_dir: Path, tmp_path: Path) -> None:
    ex = MLLMExtractor(str(tiny_dir), device="cpu", cache_dir=tmp_path, retries=0)
    replies = iter(['[{"text": "dog", "type": "entity"}]', "garbage"])
    ex._generate = lambda texts, *, strict, image=False: [next(replies) for _ in texts]  # type: ignore[method-assign]
    assert ex.extract(["a dog", "a cat"]) == [[Grain("dog", "entity")], []]
    assert ex.stats == {"calls": 0, "invalid": 1, "retried": 0, "skipped": 1, "cached": 0}
    ex2 = MLLMExtractor(str(tiny_dir), device="cpu", cache_dir=tmp_path)
    ex2._generate = None  # type: ignore[assignment]  # must not be called
    assert ex2.extract(["a dog", "a cat"]) == [[Grain("dog", "entity")], []]


def test_torn_cache_line_is_ignored(tiny_dir: Path, tmp_path: Path) -> None:
    ex = MLLMExtractor(str(tiny_dir), device="cpu", cache_dir=tmp_path)
    ex.cache_path.parent.mkdir(parents=True, exist_ok=True)
    good = {"key": cache_key("a dog"), "text": "a dog", "ok": True, "grains": [{"text": "dog", "type": "entity"}]}
    ex.cache_path.write_text(json.dumps(good) + "\n" + '{"key": "abc", "gra')
    ex2 = MLLMExtractor(str(tiny_dir), device="cpu", cache_dir=tmp_path)
    assert ex2.extract(["a dog"]) == [[Grain("dog", "entity")]]


def test_registry_and_default_cache_dir(tiny_dir: Path, monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MRBENCH_HOME", str(tmp_path / "home"))
    ex = get_extractor("mllm", model=str(tiny_dir), device="cpu", max_new_tokens=4)
    assert isinstance(ex, MLLMExtractor)
    assert ex.cache_path.parent == tmp_path / "home" / "grain_cache"
    assert ex.cache_path.name.startswith(tiny_dir.name + "-")


# ------------------------------------------------------------------------------------------- images
def _png(path: Path, colour: tuple[int, int, int]) -> Path:
    from PIL import Image

    Image.new("RGB", (40, 32), colour).save(path)
    return path


def test_image_prompt_has_no_caption_slot() -> None:
    s = IMAGE_PROMPT_TEMPLATE.format(body="", text="", instruction="", subject="image")
    assert s.startswith("List the grains of the image above") and "Caption:" not in s and s.endswith("Answer:")


def test_extract_images_on_tiny_model(tiny_dir: Path, tmp_path: Path) -> None:
    """Plumbing: the image goes through the processor and generate; garbage replies are skipped and cached."""
    a, b = _png(tmp_path / "a.png", (200, 30, 30)), _png(tmp_path / "b.png", (20, 30, 200))
    ex = MLLMExtractor(str(tiny_dir), device="cpu", batch_size=2, max_new_tokens=5, cache_dir=tmp_path / "c")
    seen: list[tuple[int, bool]] = []
    orig = ex._generate

    def wrapped(items, *, strict, image=False):
        seen.append((len(items), image))
        return orig(items, strict=strict, image=image)

    ex._generate = wrapped  # type: ignore[method-assign]
    assert ex.extract_images([a, b, a]) == [[], [], []]
    assert seen == [(2, True), (2, True)] and ex.stats["skipped"] == 2
    recs = [json.loads(x) for x in ex.cache_path.read_text().splitlines()]
    assert {r["key"] for r in recs} == {image_cache_key(a), image_cache_key(b)}
    assert {r["text"] for r in recs} == {f"image:{a}", f"image:{b}"}


def test_extract_images_valid_reply_and_content_keyed_cache(tiny_dir: Path, tmp_path: Path) -> None:
    a = _png(tmp_path / "a.png", (200, 30, 30))
    ex = MLLMExtractor(str(tiny_dir), device="cpu", cache_dir=tmp_path / "c", retries=1)
    replies = iter(["not json", '[{"text": "red square", "type": "entity"}]'])
    ex._generate = lambda items, *, strict, image=False: [next(replies) for _ in items]  # type: ignore[method-assign]
    assert ex.extract_images([a]) == [[Grain("red square", "entity")]]
    assert ex.stats["invalid"] == 1 and ex.stats["retried"] == 1 and ex.stats["skipped"] == 0
    # the same bytes under another name come from the cache; a text with the same label does not collide
    copy = tmp_path / "renamed.png"
    copy.write_bytes(a.read_bytes())
    ex2 = MLLMExtractor(str(tiny_dir), device="cpu", cache_dir=tmp_path / "c")
    ex2._generate = None  # type: ignore[assignment]  # must not be called
    assert ex2.extract_images([copy]) == [[Grain("red square", "entity")]]
    assert image_cache_key(a) != cache_key(f"image:{a}")


def test_extract_images_missing_file(tiny_dir: Path, tmp_path: Path) -> None:
    from mrbench.errors import BenchmarkError

    ex = MLLMExtractor(str(tiny_dir), device="cpu", cache_dir=tmp_path)
    with pytest.raises(BenchmarkError, match="nope.png: image not found"):
        ex.extract_images([tmp_path / "nope.png"])
