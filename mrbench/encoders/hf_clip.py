"""Hugging Face ``transformers`` dual encoders: CLIP, SigLIP and SigLIP 2 (family ``hf``).

``hf:<spec>`` where ``spec`` is a hub id (``openai/clip-vit-base-patch32``,
``google/siglip-base-patch16-224``; read from the local Hugging Face cache, downloaded only when the
hub is online) or a local model directory (``hf:/models/clip`` or ``hf:local-dir:/models/clip``).
Model, tokenizer and image processor all come from that one place.

Embeddings are the model's own projected/pooled features — ``get_text_features`` /
``get_image_features`` (a tensor in transformers 4.x, an output object whose ``pooler_output`` is the
projected embedding in 5.x). At load time a one-text/one-image probe checks them against the
``text_embeds``/``image_embeds`` of the model's own ``forward``; a model whose features do not
match is refused rather than scored wrongly.

Text: CLIP pads to the longest text in the batch and truncates at the model's context
(``max_position_embeddings``, 77 for CLIP); SigLIP/SigLIP 2 pad every text to the context length
(64) with ``padding="max_length"``, as SigLIP was trained (its text tower pools the last position),
and pass exactly the inputs its tokenizer returns (SigLIP's: ``input_ids`` only, no attention mask).
Truncated texts are counted in ``meta.extra["truncated_texts"]``. The tokenising is a function of its
own (:class:`HFTokenRows`, ``text_transform()``), which the harness runs ahead of the model (in worker
processes when feeding a GPU); the in-forward path runs the same function, so both give the tower the
same tensors.

Images: the model's image processor (:class:`HFImagePrep`, ``prepare_image`` / ``pixel_transform()``),
run by the harness in decode threads or worker processes; its output can be kept in the pixel cache,
keyed by the processor's class and configuration. For a torchvision-backend processor (transformers
5's default) that output is the resized and cropped uint8 image, and the processor's own rescale and
normalisation run batched on the model's device — used only where a probe image shows this gives the
processor's float32 output bit for bit; otherwise (Pillow backend, NaFlex patches) the float32 output.

Similarity: CLIP scores with ``logit_scale·cos``; SigLIP with ``sigmoid(logit_scale·cos + bias)``.
Both are strictly increasing in the cosine, so ranking by cosine (``similarity="cosine"``) gives
exactly the model's ranking; ``logit_scale``/``logit_bias`` are recorded in ``meta.extra``.

Image+text items: score-level fusion (sum of the L2-normalised image and text embeddings), see
:class:`~mrbench.encoders.torch_base.DualTowerEncoder`.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from mrbench.encoders.base import EncodeInput, EncoderMeta, Role
from mrbench.encoders.runtime import (
    _first_line,
    check_loading_info,
    check_tokenizer,
    quiet_transformers,
    resolve_model_dir,
    to_device,
)
from mrbench.encoders.torch_base import DualTowerEncoder
from mrbench.errors import EncoderError

if TYPE_CHECKING:
    import torch
    from PIL.Image import Image

    from mrbench.data.schema import TaskInfo

log = logging.getLogger(__name__)

#: model types verified by the test suite; others with get_text_features/get_image_features load
#: only when the load-time probe confirms their features equal the model's own embeddings.
TESTED_MODEL_TYPES = ("clip", "siglip", "siglip2")
#: model types whose text tower was trained on texts padded to the full context length.
PAD_TO_MAX_LENGTH = ("siglip", "siglip2")

FUSION_NOTE = (
    "image+text items: sum of the L2-normalised image and text embeddings (score-level fusion, "
    "UniIR CLIP-SF recipe), re-normalised; the model does not fuse them natively"
)
SIGLIP_NOTE = (
    "SigLIP scores a pair as sigmoid(logit_scale*cos + logit_bias), strictly increasing in cos, so "
    "ranking by cosine is exactly the model's ranking"
)
CLIP_NOTE = "CLIP scores a pair as logit_scale*cos with logit_scale > 0, so ranking by cosine is exactly the model's ranking"


def _features(out: Any, kind: str) -> torch.Tensor:
    """The embedding tensor from ``get_text_features``/``get_image_features`` in any transformers version."""
    import torch

    if isinstance(out, torch.Tensor):  # transformers 4.x
        return out
    for attr in ("pooler_output", f"{kind}_embeds"):
        val = getattr(out, attr, None)
        if isinstance(val, torch.Tensor):
            return val
    if isinstance(out, (tuple, list)) and len(out) > 1 and isinstance(out[1], torch.Tensor):
        return out[1]
    raise EncoderError(f"get_{kind}_features returned a {type(out).__name__} without a pooled embedding")


class HFClipEncoder(DualTowerEncoder):
    """A CLIP-style dual encoder loaded with ``transformers.AutoModel``.

    Args:
        spec: hub id or local directory (``local-dir:`` prefix accepted).
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"``.
        precision: ``"auto"``, ``"fp32"``, ``"bf16"``, ``"fp16"`` (autocast; weights stay fp32).
        batch_size: items per forward (halved on out-of-memory).
        use_instruction: prepend the task instruction to texts (off: CLIP/SigLIP never saw instructions).
        max_length: truncate texts at this many tokens (default and upper bound: the model's context).
            SigLIP texts are still padded to the full context, as in training.
    """

    def __init__(
        self,
        spec: str,
        *,
        device: str | None = "auto",
        precision: str | None = "auto",
        batch_size: int = 128,
        use_instruction: bool = False,
        max_length: int | None = None,
    ) -> None:
        label = f"hf:{spec}"
        self.label = label
        # resolve first: an uncached hub id offline fails here, before transformers is imported
        path, revision = resolve_model_dir(spec, label=label, example="/models/clip-vit-base-patch32")
        super().__init__(device=device, precision=precision, batch_size=batch_size)
        self.use_instruction = bool(use_instruction)
        self.path = path

        import torch
        import transformers
        from transformers import (
            AutoConfig,
            AutoImageProcessor,
            AutoModel,
            AutoTokenizer,
        )

        if not (path / "config.json").is_file():
            raise EncoderError(f"encoder {label!r}: {path} has no config.json; pass the directory of a transformers model")
        try:
            config = AutoConfig.from_pretrained(str(path))
        except Exception as e:
            raise EncoderError(f"encoder {label!r}: cannot read the config in {path} ({_first_line(e)})") from None
        self.model_type = str(getattr(config, "model_type", "?"))
        self.is_siglip = self.model_type in PAD_TO_MAX_LENGTH
        self.is_naflex = self.model_type == "siglip2"

        dtype_kw = "dtype" if int(transformers.__version__.split(".")[0]) >= 5 else "torch_dtype"
        try:
            with quiet_transformers():
                model, info = AutoModel.from_pretrained(
                    str(path), output_loading_info=True, ignore_mismatched_sizes=True, **{dtype_kw: torch.float32}
                )
        except Exception as e:
            raise EncoderError(
                f"encoder {label!r}: cannot load the {self.model_type!r} model in {path} "
                f"({type(e).__name__}: {_first_line(e)})"
            ) from None
        if not (callable(getattr(model, "get_text_features", None)) and callable(getattr(model, "get_image_features", None))):
            raise EncoderError(
                f"encoder {label!r}: {path} holds a {self.model_type!r} model ({type(model).__name__}) without "
                f"get_text_features/get_image_features; 'hf:' supports CLIP-style dual encoders "
                f"({', '.join(TESTED_MODEL_TYPES)}); for a text embedding model use 'st:<dir>'"
            )
        check_loading_info(info, model, path, label=self.label)
        self.model = model.eval().to(self.device)

        try:
            with quiet_transformers():
                self.tokenizer = AutoTokenizer.from_pretrained(str(path))
        except Exception as e:
            raise EncoderError(
                f"encoder {label!r}: cannot load the tokenizer in {path} ({type(e).__name__}: {_first_line(e)}); "
                "pass a directory holding the full model (tokenizer files included)"
            ) from None
        check_tokenizer(self.tokenizer, label=label, source=str(path))
        try:
            with quiet_transformers():
                self.image_processor = AutoImageProcessor.from_pretrained(str(path))
        except Exception as e:
            why = "no preprocessor_config.json there" if isinstance(e, OSError) else f"{type(e).__name__}: {_first_line(e)}"
            raise EncoderError(
                f"encoder {label!r}: cannot load the image processor in {path} ({why}); "
                "pass a directory holding the full model (preprocessor_config.json included)"
            ) from None

        text_cfg = getattr(config, "text_config", None) or config
        ctx = getattr(text_cfg, "max_position_embeddings", None)
        tok_max = getattr(self.tokenizer, "model_max_length", None)
        limits = [int(x) for x in (ctx, tok_max) if isinstance(x, int) and 0 < x < 100_000]
        self.context_length = min(limits) if limits else 77
        if max_length is not None:
            if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 2:
                raise EncoderError(f"encoder {label!r}: max_length must be an integer >= 2, got {max_length!r}")
            if max_length > self.context_length:
                raise EncoderError(
                    f"encoder {label!r}: max_length {max_length} exceeds the model's text context of "
                    f"{self.context_length} tokens; pass at most {self.context_length}"
                )
        self.max_length = int(max_length) if max_length is not None else self.context_length
        self.image_prep = HFImagePrep(self.image_processor, naflex=self.is_naflex)
        try:
            self.token_rows = HFTokenRows(self.tokenizer, max_length=self.max_length,
                                          width=self.context_length if self.is_siglip else self.max_length,
                                          trim=not self.is_siglip)
        except Exception as e:
            raise EncoderError(
                f"encoder {label!r}: the tokenizer in {path} cannot pad and cut texts "
                f"({type(e).__name__}: {_first_line(e)}); pass a directory holding a working tokenizer"
            ) from None

        dim, verified = self._probe()
        if not verified and self.model_type not in TESTED_MODEL_TYPES:
            raise EncoderError(
                f"encoder {label!r}: {type(self.model).__name__} ({self.model_type!r}) is not a tested model type and its "
                "forward returns no text_embeds/image_embeds to verify its features against; "
                f"supported: {', '.join(TESTED_MODEL_TYPES)}"
            )
        extra: dict[str, Any] = {
            "model_type": self.model_type,
            "model_class": type(self.model).__name__,
            "source": str(path),
            "transformers": transformers.__version__,
            "fusion": FUSION_NOTE,
            "use_instruction": self.use_instruction,
            "instruction_note": "task instruction prepended to texts as '<instruction> <text>'"
            if self.use_instruction
            else "task instructions ignored (CLIP/SigLIP were not trained with instructions)",
            "prompt": None,
            "text_max_length": self.max_length,
            "text_padding": f"max_length ({self.context_length})" if self.is_siglip else "longest",
            "text_inputs": list(getattr(self.tokenizer, "model_input_names", ["input_ids"])),
            "features_match_forward": verified,
        }
        scale = getattr(self.model, "logit_scale", None)
        bias = getattr(self.model, "logit_bias", None)
        if isinstance(scale, torch.Tensor) and scale.numel() == 1:
            extra["logit_scale"] = float(math.exp(float(scale.detach().float().cpu())))
        if isinstance(bias, torch.Tensor) and bias.numel() == 1:
            extra["logit_bias"] = float(bias.detach().float().cpu())
        extra["similarity_note"] = SIGLIP_NOTE if self.is_siglip else CLIP_NOTE
        if self.model_type not in TESTED_MODEL_TYPES:
            extra["support_note"] = f"model type {self.model_type!r} is not in the tested set; features verified by the load-time probe"
        extra.update(self.runtime_extra())
        self.meta = EncoderMeta(
            name=label,
            revision=revision,
            modalities=("text", "image"),
            similarity="cosine",
            dim=dim,
            native_image_text=False,
            needs_pixels=True,
            batch_size=self.batch_size,
            extra=extra,
        )

    # -- loading checks -------------------------------------------------------------------------------
    def _probe(self) -> tuple[int, bool]:
        """Encode one text and one image both ways (features vs. the model's forward); return (dim, verified)."""
        import torch
        import torch.nn.functional as F
        from PIL import Image

        from mrbench.encoders.runtime import autocast

        img = Image.new("RGB", (48, 40), (128, 96, 64))
        text = ["a photo of a dog"]
        try:
            with torch.inference_mode(), autocast(self.device, self.dtype):
                t = F.normalize(self.encode_texts(text, count=False).float(), dim=-1)
                pix = self.prepare_image(img).unsqueeze(0).to(self.device)
                i = F.normalize(self.encode_images(pix).float(), dim=-1)
                inputs = dict(self._tokenize(text)[0])
                inputs.update(self._image_inputs(pix))
                out = self.model(**inputs)
        except EncoderError:
            raise
        except Exception as e:
            raise EncoderError(
                f"encoder {self.label!r}: a probe forward of the {self.model_type!r} model failed "
                f"({type(e).__name__}: {_first_line(e)})"
            ) from None
        if t.ndim != 2 or i.ndim != 2 or t.shape[1] != i.shape[1]:
            raise EncoderError(
                f"encoder {self.label!r}: text and image embeddings differ in shape ({tuple(t.shape)} vs {tuple(i.shape)}); "
                "not a dual encoder with a shared embedding space"
            )
        ref_t, ref_i = getattr(out, "text_embeds", None), getattr(out, "image_embeds", None)
        if not (isinstance(ref_t, torch.Tensor) and isinstance(ref_i, torch.Tensor)):
            return int(t.shape[1]), False
        tol = 1e-3 if self.dtype == torch.float32 else 3e-2
        for mine, ref, kind in ((t, ref_t, "text"), (i, ref_i, "image")):
            ref = F.normalize(ref.float(), dim=-1)
            if mine.shape != ref.shape or float((mine - ref).abs().max()) > tol:
                raise EncoderError(
                    f"encoder {self.label!r}: get_{kind}_features of {type(self.model).__name__} does not reproduce the "
                    f"model's own {kind}_embeds (transformers {__import__('transformers').__version__}); "
                    "this model/transformers combination is not supported"
                )
        return int(t.shape[1]), True

    # -- towers ---------------------------------------------------------------------------------------
    def text_transform(self) -> HFTokenRows:
        """The tokenising as a ``texts → int64 rows`` function (:class:`HFTokenRows`): the harness
        runs it ahead of the model (in worker processes for many texts, on a GPU) and hands the rows
        to :meth:`encode_tokens`; :meth:`encode_texts` goes through the same rows."""
        return self.token_rows

    def _token_batch(self, rows: list[Any]) -> torch.Tensor:
        import torch

        return to_device(torch.from_numpy(self.token_rows.batch(np.stack([np.asarray(r) for r in rows]))), self.device)

    def encode_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """Text embeddings from a :meth:`HFTokenRows.batch` tensor (the tokenizer outputs side by side)."""
        return _features(self.model.get_text_features(**self.token_rows.inputs(tokens)), "text")

    def _tokenize(self, texts: list[str]) -> tuple[dict[str, Any], int]:
        """Tokenizer outputs (on the device) for ``texts`` and how many were truncated."""
        rows = self.token_rows(texts)
        batch = self._token_batch(list(rows))
        return self.token_rows.inputs(batch), int(rows[:, -1].sum())

    def encode_texts(self, texts: list[str], count: bool = True) -> torch.Tensor:
        inputs, n_trunc = self._tokenize(texts)
        if count:
            self.count_truncated(n_trunc)
        return _features(self.model.get_text_features(**inputs), "text")

    def encode_async(self, items: Sequence[EncodeInput], *, role: Role, task: TaskInfo) -> Callable[[], np.ndarray]:
        # texts tokenised ahead: their rows' last column flags the cut ones (else encode_texts counts)
        rows = [it.tokens for it in items if it.text is not None]
        if rows and all(r is not None for r in rows):
            self.count_truncated(int(sum(int(np.asarray(r)[-1]) for r in rows)))
        return super().encode_async(items, role=role, task=task)

    def _image_inputs(self, pixels: torch.Tensor) -> dict[str, torch.Tensor]:
        if not self.is_naflex:
            import torch

            if pixels.dtype == torch.uint8:  # resized and cropped by the processor: rescaled and normalised here
                pixels = self.image_prep.normalise(pixels)
            return {"pixel_values": pixels}
        # unpack [B, P+1, D+1]: patches, their mask in the last column, spatial shape in the last row
        d = pixels.shape[-1] - 1
        return {
            "pixel_values": pixels[:, :-1, :d],
            "pixel_attention_mask": pixels[:, :-1, d].round().long(),
            "spatial_shapes": pixels[:, -1, :2].round().long(),
        }

    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        return _features(self.model.get_image_features(**self._image_inputs(pixels)), "image")

    def prepare_image(self, image: Image) -> torch.Tensor:
        """The model's own image processor on one image → ``[3, H, W]`` (SigLIP 2: packed NaFlex
        patches); uint8 where the processor's rescale and normalisation can run later on the model's
        device, float32 otherwise (see :class:`HFImagePrep`)."""
        import torch

        return torch.from_numpy(self.image_prep(image))

    def pixel_transform(self) -> HFImagePrep | None:
        """:meth:`prepare_image` as a picklable function for decode worker processes and the pixel
        cache (``None`` when the image processor cannot be pickled: images are then prepared in threads)."""
        return self.image_prep if self.image_prep.picklable() else None


_TEXT_KEYS = ("input_ids", "attention_mask", "position_ids", "token_type_ids")
"""Tokenizer outputs passed to the text tower (in this order), where the tokenizer gives them."""


class HFTokenRows:
    """The ``hf`` family's tokenising as ``list[str] → int64 [n, K·W + 2]`` rows, one per text.

    Columns: the ``K`` tokenizer outputs the text tower takes (:attr:`keys`, from
    :data:`_TEXT_KEYS`), each ``W`` wide — every text cut at ``max_length`` tokens and padded to
    ``width`` (CLIP: ``max_length``; SigLIP: its full context, as it was trained) — then the
    text's length in tokens (``W`` where rows are not trimmed) and a flag that is 1 where the text
    was cut. :meth:`batch` turns
    stacked rows into the tower's input, :meth:`inputs` that into keyword arguments: CLIP's rows
    cut to the batch's longest text, which is what ``padding=True`` gives, SigLIP's as they are.
    The harness runs this function ahead of the model (in forked worker processes, never pickled)
    and :meth:`HFClipEncoder.encode_texts` runs it too, so both paths feed the tower the same
    tensors.
    """

    def __init__(self, tokenizer: Any, *, max_length: int, width: int, trim: bool) -> None:
        self.tokenizer, self.max_length, self.width, self.trim = tokenizer, int(max_length), int(width), bool(trim)
        probe = tokenizer(["a"], padding="max_length", max_length=self.max_length, truncation=True)
        self.keys = tuple(k for k in _TEXT_KEYS if k in probe)
        pad = tokenizer.pad_token_id
        self.fills = {k: (pad if pad is not None else 0) if k == "input_ids" else 0 for k in self.keys}
        self.left = getattr(tokenizer, "padding_side", "right") == "left"

    def __eq__(self, other: object) -> bool:  # the same tokenizer object and settings: the same rows
        return (isinstance(other, HFTokenRows) and other.tokenizer is self.tokenizer
                and (other.max_length, other.width, other.trim) == (self.max_length, self.width, self.trim))

    def __hash__(self) -> int:
        return hash((id(self.tokenizer), self.max_length, self.width, self.trim))

    def __call__(self, texts: list[str]) -> np.ndarray:
        texts = list(texts)
        n, w = len(texts), self.width
        out = np.empty((n, len(self.keys) * w + 2), dtype=np.int64)
        if n == 0:
            return out
        enc = self.tokenizer(texts, padding="max_length", max_length=self.max_length, truncation=True)
        m = self.max_length
        for j, k in enumerate(self.keys):
            block = out[:, j * w : (j + 1) * w]
            block[:, :m] = np.asarray(enc[k], dtype=np.int64).reshape(n, m)
            block[:, m:] = self.fills[k]  # SigLIP cut shorter than its context: padded to the context
        encodings = getattr(enc, "encodings", None)
        if not self.trim:  # the rows are used whole: their length is the width
            out[:, -2] = w
        elif "attention_mask" in enc:
            out[:, -2] = np.asarray(enc["attention_mask"], dtype=np.int64).reshape(n, m).sum(axis=1)
        elif encodings:
            out[:, -2] = [sum(e.attention_mask) for e in encodings]
        else:
            out[:, -2] = [len(ids) for ids in self.tokenizer(texts, truncation=True, max_length=m)["input_ids"]]
        if encodings:
            out[:, -1] = [1 if e.overflowing else 0 for e in encodings]
        else:
            full = self.tokenizer(texts, truncation=False, verbose=False)["input_ids"]
            out[:, -1] = [1 if len(ids) > m else 0 for ids in full]
        return out

    def batch(self, rows: np.ndarray) -> np.ndarray:
        """Stacked rows ``[B, K·W + 2]`` → the tower's input ``[B, K·L]``: each output ``L`` wide
        (``L``: the longest text of the batch where rows are trimmed, else ``W``)."""
        k, w = len(self.keys), self.width
        parts = rows[:, : k * w].reshape(len(rows), k, w)
        if self.trim and len(rows):
            size = max(1, int(rows[:, -2].max()))
            parts = parts[:, :, w - size :] if self.left else parts[:, :, :size]
        return np.ascontiguousarray(parts).reshape(len(rows), -1)

    def inputs(self, batch: torch.Tensor) -> dict[str, torch.Tensor]:
        """The tower's keyword arguments from a :meth:`batch` tensor (on any device)."""
        import torch

        size = batch.shape[1] // len(self.keys)
        return {k: batch[:, j * size : (j + 1) * size].contiguous().to(torch.long) for j, k in enumerate(self.keys)}


class HFImagePrep:
    """``PIL image → numpy`` through the model's image processor: ``[3, H, W]``, or for SigLIP 2 the
    NaFlex patches ``[P, D]`` packed with their mask as a last column and the spatial shape as a last
    row (``[P + 1, D + 1]``, float32). What :meth:`HFClipEncoder.prepare_image` returns; picklable
    (module level) for decode worker processes. Its :attr:`transform_id` keys the pixel cache: the
    processor's class and full configuration, and the output kind.

    ``[3, H, W]`` images come as **uint8** where the processor allows it (:attr:`split` is set): the
    processor runs without its rescale and normalisation (resize and crop only), and
    :meth:`normalise` applies them later, batched on the model's device, by calling the processor's
    own ``rescale_and_normalize`` with the arguments the processor passes it. That split is used only
    when, on a probe image, it reproduces the processor's float32 output bit for bit (a torchvision
    backend processor, whose last step is that elementwise call); otherwise (Pillow backend, a
    processor that does more after it, NaFlex patches) the output is the processor's float32
    output. uint8 keeps pixel-cache entries and host-to-device copies four times smaller.
    """

    def __init__(self, image_processor: Any, *, naflex: bool, uint8: bool = True) -> None:
        self.image_processor, self.naflex = image_processor, bool(naflex)
        self._picklable: bool | None = None
        #: ``(args, kwargs)`` of the processor's own ``rescale_and_normalize`` call (after the images);
        #: ``None``: float32 output (NaFlex, no bit-for-bit split, or ``uint8=False``)
        self.split: tuple[tuple[Any, ...], dict[str, Any]] | None = (
            _normalise_split(image_processor) if uint8 and not naflex else None)
        config = image_processor.to_json_string() if hasattr(image_processor, "to_json_string") else repr(image_processor)
        digest = hashlib.sha256(config.encode()).hexdigest()[:16]
        kind = "uint8" if self.split is not None else "float32"
        self.transform_id = f"hf-image-processor:{type(image_processor).__name__}:{digest}:naflex={self.naflex}:{kind}"

    def picklable(self) -> bool:
        """Whether the image processor can travel to a decode worker process (checked once)."""
        if self._picklable is None:
            import pickle

            try:
                pickle.dumps(self.image_processor)
                self._picklable = True
            except Exception:
                self._picklable = False
        return self._picklable

    def __call__(self, image: Image) -> np.ndarray:
        if self.split is not None:
            out = self.image_processor(images=[image], return_tensors="np", do_rescale=False, do_normalize=False)
            return np.ascontiguousarray(out["pixel_values"][0])
        out = self.image_processor(images=[image], return_tensors="np")
        pix = np.asarray(out["pixel_values"][0], dtype=np.float32)
        if not self.naflex:
            return np.ascontiguousarray(pix)
        p, d = pix.shape
        packed = np.zeros((p + 1, d + 1), dtype=np.float32)
        packed[:p, :d] = pix
        packed[:p, d] = np.asarray(out["pixel_attention_mask"][0], dtype=np.float32)
        packed[p, :2] = np.asarray(out["spatial_shapes"][0], dtype=np.float32)
        return packed

    def normalise(self, pixels: torch.Tensor) -> torch.Tensor:
        """A batch ``[B, 3, H, W]`` of this function's uint8 images (on any device) → the processor's
        float32 ``pixel_values``, bit for bit (elementwise IEEE operations, the same on every device)."""
        assert self.split is not None, "normalise() applies only to uint8 (split) output"
        args, kwargs = self.split
        return self.image_processor.rescale_and_normalize(pixels, *args, **kwargs)


def _probe_image() -> Image:
    """A small RGB image of odd size whose pixels take most byte values (for :func:`_normalise_split`)."""
    from PIL import Image

    w, h = 37, 29
    arr = (np.arange(w * h * 3, dtype=np.int64).reshape(h, w, 3) * 97 % 256).astype(np.uint8)
    return Image.fromarray(arr, "RGB")


def _normalise_split(processor: Any) -> tuple[tuple[Any, ...], dict[str, Any]] | None:
    """``(args, kwargs)`` after the images of the one ``rescale_and_normalize`` call the processor
    makes, when its output equals, bit for bit, that call applied to its uint8 output without rescale
    and normalisation (checked on :func:`_probe_image`); ``None`` when it does not, or for any
    processor that is not a transformers torchvision-backend one."""
    try:
        import torch
        from transformers.image_processing_backends import TorchvisionBackend
    except ImportError:  # transformers 4.x: no backends; the float32 output is kept
        return None
    if not isinstance(processor, TorchvisionBackend):
        return None
    import copy

    try:
        spy = copy.deepcopy(processor)
        calls: list[tuple[tuple[Any, ...], dict[str, Any]]] = []
        own = spy.rescale_and_normalize

        def record(images: Any, *args: Any, **kwargs: Any) -> Any:
            calls.append((args, kwargs))
            return own(images, *args, **kwargs)

        spy.rescale_and_normalize = record
        img = _probe_image()
        full = spy(images=[img], return_tensors="pt")["pixel_values"]
        raw = processor(images=[img], return_tensors="pt", do_rescale=False, do_normalize=False)["pixel_values"]
        if len(calls) != 1 or not isinstance(full, torch.Tensor) or not isinstance(raw, torch.Tensor):
            return None
        if raw.dtype != torch.uint8 or full.dtype != torch.float32 or raw.shape != full.shape or raw.ndim != 4:
            return None
        args, kwargs = calls[0]
        again = processor.rescale_and_normalize(raw, *args, **kwargs)
        if not (isinstance(again, torch.Tensor) and again.dtype == full.dtype and torch.equal(again, full)):
            return None
        return args, dict(kwargs)
    except Exception as e:  # a processor this check cannot run: keep its float32 output
        log.debug("hf: no uint8 split for %s (%s)", type(processor).__name__, e)
        return None
