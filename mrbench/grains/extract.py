"""The grain-extractor protocol and its name registry.

A grain extractor turns query texts into :class:`~mrbench.data.schema.Grain` lists, batched: one
list per input text, in input order, each list in order of appearance in its text. Built-in names:

* ``"lexicon"`` — :class:`~mrbench.grains.lexicon.LexiconExtractor`, offline rules over built-in
  vocabularies (the default; conventions in :mod:`mrbench.grains.lexicon`).
* ``"annotations"`` — :class:`~mrbench.grains.annotations.AnnotationsExtractor`, grains read from a
  JSONL file (``get_extractor("annotations", path=...)``).
* ``"mllm"`` — :class:`~mrbench.grains.mllm.MLLMExtractor`, a local Qwen2-VL-family model prompted
  for JSON grains, with a disk cache (``get_extractor("mllm", model=...)``).

An extractor that can also read images has ``extract_images(paths) -> list[list[Grain]]`` (``mllm``
does); builders use it for image-only queries that have no text of their own.

Implementations are imported only when resolved, so importing this module stays light.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

from mrbench.data.schema import Grain
from mrbench.errors import UnknownNameError, did_you_mean


@runtime_checkable
class GrainExtractor(Protocol):
    """Anything with a ``name`` and a batched ``extract(texts) -> list[list[Grain]]``."""

    name: str

    def extract(self, texts: Sequence[str]) -> list[list[Grain]]:
        """Return one list of grains per text, in order; grains in order of appearance."""
        ...


def _lexicon(**kwargs: Any) -> GrainExtractor:
    from mrbench.grains.lexicon import LexiconExtractor

    return LexiconExtractor(**kwargs)


def _annotations(**kwargs: Any) -> GrainExtractor:
    from mrbench.grains.annotations import AnnotationsExtractor

    return AnnotationsExtractor(**kwargs)


def _mllm(**kwargs: Any) -> GrainExtractor:
    from mrbench.grains.mllm import MLLMExtractor

    return MLLMExtractor(**kwargs)


_REGISTRY: dict[str, Callable[..., GrainExtractor]] = {"lexicon": _lexicon, "annotations": _annotations, "mllm": _mllm}

EXTRACTOR_NAMES: tuple[str, ...] = tuple(_REGISTRY)
"""Names :func:`get_extractor` resolves."""


def get_extractor(name: str, **kwargs: Any) -> GrainExtractor:
    """Build the grain extractor registered as ``name``; ``kwargs`` go to its constructor.

    Raises :class:`~mrbench.errors.UnknownNameError` (a :class:`~mrbench.errors.MrbenchError`)
    listing the known names when ``name`` is not registered.
    """
    factory = _REGISTRY.get(name.strip().lower() if isinstance(name, str) else name)
    if factory is None:
        raise UnknownNameError(
            f"unknown grain extractor {name!r}{did_you_mean(str(name), EXTRACTOR_NAMES)}; "
            f"use one of: {', '.join(EXTRACTOR_NAMES)}"
        )
    return factory(**kwargs)
