"""The one interface every encoder implements.

An encoder turns a batch of items into a float32 array ``[N, D]``. It is told the role (``"query"`` or
``"candidate"``) and the task (:class:`~mrbench.data.schema.TaskInfo`) as keyword-only arguments.
The harness (:mod:`mrbench.encoders.harness`) owns batching, image decoding, instructions, output
validation (shape, dtype, NaN/Inf, normalisation for cosine) and caching — not the encoder.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

from mrbench.errors import EncoderError

if TYPE_CHECKING:
    import numpy as np
    from PIL.Image import Image

    from mrbench.data.schema import TaskInfo

Role = Literal["query", "candidate"]
ROLES: tuple[str, ...] = ("query", "candidate")
SIMILARITIES: tuple[str, ...] = ("cosine", "dot")
"""The values :attr:`EncoderMeta.similarity` accepts."""
MODALITIES: tuple[str, ...] = ("text", "image")
"""The names :attr:`EncoderMeta.modalities` is a non-empty subset of."""


@dataclass(frozen=True)
class EncodeInput:
    """One item as an encoder sees it.

    ``image`` is a decoded RGB ``PIL.Image`` when the encoder's metadata says ``needs_pixels`` and the
    item has an image, else ``None`` (``image_path`` is still set). ``instruction`` is the resolved
    instruction for this role and task (``None`` when there is none). ``content_hash`` is a sha256 hex
    over the item's text and image bytes (not its id), stable across machines. ``meta`` is the item's
    builder metadata (read-only by convention). ``pixels`` is the image already run through the
    encoder's own ``prepare_image(image)`` hook when the encoder defines one (the harness calls it in
    its decode threads, so transforms run in parallel with the model), else ``None``; for an encoder
    whose ``pixels_on_device`` is true and which runs on CUDA, the harness hands it already on that
    device (a view into the batch's staged tensor). ``tokens`` is the item's text already run
    through the encoder's ``text_transform()`` (one row of token ids) when the encoder defines one,
    else ``None``: the harness tokenises the next batch ahead of the model.
    """

    id: str
    text: str | None
    image: "Image | None"
    image_path: Path | None
    instruction: str | None
    content_hash: str
    meta: Mapping[str, Any] = field(default_factory=dict)
    pixels: Any = None
    tokens: Any = None

    @property
    def modality(self) -> str:
        has_t, has_i = self.text is not None, self.image_path is not None
        return "image+text" if has_t and has_i else ("image" if has_i else "text")


@dataclass(frozen=True)
class EncoderMeta:
    """Data-only description of an encoder, recorded in every result.

    similarity: ``"cosine"`` (the harness L2-normalises outputs) or ``"dot"`` (raw inner product).
    modalities: which of ``"text"``, ``"image"`` the encoder reads; an item carrying a modality the
    encoder does not read is encoded from what it can read (the *blind baseline* case).
    native_image_text: whether image+text items are fused by the model itself (else by the
    encoder's documented fallback).
    needs_pixels: whether the harness must decode images for it.
    cacheable: whether embeddings depend only on content (+ role, instruction, name, revision,
    kwargs) and may be cached on disk; ``False`` for encoders that read more (like the oracle).
    extra: family-specific facts recorded in the results (device, precision, prompts, truncations…).

    Invalid values raise a one-line :class:`~mrbench.errors.EncoderError` naming the field, the value
    and the accepted values (a similarity other than ``"cosine"``/``"dot"``, modalities that are not a
    non-empty subset of ``("text", "image")``, a ``dim`` that is not a positive integer or ``None``, a
    ``batch_size`` that is not a positive integer, an empty ``name``, a ``revision`` that is not a
    string). ``modalities`` given as a list becomes a tuple; integer-like ``dim``/``batch_size`` (numpy
    integers) become ``int``.
    """

    name: str
    revision: str = "none"
    modalities: tuple[str, ...] = ("text", "image")
    similarity: Literal["cosine", "dot"] = "cosine"
    dim: int | None = None
    native_image_text: bool = False
    needs_pixels: bool = True
    batch_size: int = 64
    cacheable: bool = True
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        def bad(field_name: str, accepted: str) -> EncoderError:
            value = getattr(self, field_name)
            who = f"EncoderMeta(name={self.name!r})" if isinstance(self.name, str) and self.name else "EncoderMeta"
            err = EncoderError(f"{who}: {field_name} {value!r} is not valid; accepted: {accepted}")
            err.meta_field = field_name  # type: ignore[attr-defined]  (the registry adds the encoder's label)
            return err

        if not isinstance(self.name, str) or not self.name.strip():
            raise bad("name", "a non-empty string")
        if not isinstance(self.revision, str):
            raise bad("revision", "a string (e.g. a checkpoint hash)")
        if self.similarity not in SIMILARITIES:
            raise bad("similarity", ", ".join(map(repr, SIMILARITIES)))
        mods = self.modalities
        if (
            isinstance(mods, (str, bytes))
            or not isinstance(mods, (tuple, list))
            or not mods
            or not all(isinstance(m, str) and m in MODALITIES for m in mods)
        ):
            raise bad("modalities", f"a non-empty tuple of {', '.join(map(repr, MODALITIES))}")
        if isinstance(mods, list):
            object.__setattr__(self, "modalities", tuple(mods))
        for name, optional in (("dim", True), ("batch_size", False)):
            value = getattr(self, name)
            if value is None and optional:
                continue
            as_int = _positive_int(value)
            if as_int is None:
                raise bad(name, "a positive integer or None" if optional else "a positive integer")
            if type(value) is not int:
                object.__setattr__(self, name, as_int)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "revision": self.revision,
            "modalities": list(self.modalities),
            "similarity": self.similarity,
            "dim": self.dim,
            "native_image_text": self.native_image_text,
            "needs_pixels": self.needs_pixels,
            "batch_size": self.batch_size,
            "cacheable": self.cacheable,
            "extra": self.extra,
        }


def _positive_int(value: Any) -> int | None:
    """``value`` as an ``int`` when it is a positive integer (numpy integers too, never a bool)."""
    import operator

    if isinstance(value, bool):
        return None
    try:
        n = operator.index(value)
    except TypeError:
        return None
    return n if n > 0 else None


@runtime_checkable
class Encoder(Protocol):
    """What the harness needs from an encoder: a ``meta`` record and ``encode``.

    Optional: ``encode_async(items, *, role, task)`` returning a function that waits for and returns
    what ``encode`` would. The harness then queues the next batch before it waits for this one (an
    accelerator keeps working while the host checks a batch); it calls it only where ``encode`` is
    not overridden below the class that defines ``encode_async``. Every
    :class:`~mrbench.encoders.torch_base.TorchEncoder` has one.

    Threads: ``encode`` (and ``encode_async``) is only ever called from one thread at a time. The
    input hooks (``prepare_image``, ``pixel_transform()``, ``text_transform()`` and the transforms
    they return, ``text_of``) run in the harness's background threads, also while ``encode`` runs:
    for an encoder on a GPU, ``evaluate`` sets up each encode call, and prepares its first batches,
    while the call before it is being encoded (:func:`~mrbench.encoders.harness.start_encode`).
    """

    meta: EncoderMeta

    def encode(self, items: Sequence[EncodeInput], *, role: Role, task: "TaskInfo") -> "np.ndarray":
        """Return a float32 array ``[len(items), D]``; D is the same for every call."""
        ...
