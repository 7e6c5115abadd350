"""What the Qwen2-VL-family encoders share (``vlm2vec`` with a Qwen2-VL backbone, ``ret``).

* **loading** (:func:`load_qwen2vl`): a local directory or a hub id (offline fail-fast through
  :func:`~mrbench.encoders.runtime.resolve_model_dir`), ``config.json``'s ``model_type`` checked
  (``qwen2_vl`` or ``qwen2_5_vl``; anything else is a one-line error naming it), the model in the
  encoder's dtype on its device, the checkpoint's own processor (tokenizer + Qwen2-VL image
  processor), the tokenizer sanity-checked; optional ``min_pixels`` / ``max_pixels`` override the
  image processor's resize bounds. :func:`merge_lora_adapter` applies a peft LoRA adapter and
  merges it into the weights.
* **batches** (:func:`encode_prompts`): each item is a :class:`PromptParts` — ``prefix + text +
  suffix`` with at most one ``<|image_pad|>`` placeholder and its image. The *processor* expands
  the placeholder to one token per merged image patch and returns ``mm_token_type_ids`` (1 at image
  tokens). Before that, the expanded length of every prompt is computed from the image sizes; an item
  longer than ``max_length`` has its ``text`` (never the template or the image) cut at the token level
  and is counted. Padding is ``"left"`` (for generation) or ``"right"``.
* **forward** (:func:`forward_hidden`): the multimodal base model (no LM head) with explicit 3-D
  M-RoPE position ids computed from the attention mask, so a row's hidden states do not depend on
  how much padding its batch needed, on either padding side. :func:`last_token_hidden` is *the*
  last-(non-pad)-position pooling; :func:`extend_batch` appends tokens to every row of a batch
  (summaries, ``[RET]``) keeping images and masks consistent.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mrbench.encoders.runtime import (
    check_loading_info,
    check_tokenizer,
    dir_revision,
    quiet_transformers,
    resolve_model_dir,
)
from mrbench.errors import EncoderError

if TYPE_CHECKING:
    import torch
    from PIL.Image import Image

log = logging.getLogger("mrbench.encoders")

QWEN2VL_MODEL_TYPES: tuple[str, ...] = ("qwen2_vl", "qwen2_5_vl")
"""``config.json`` model types this module loads."""

IMAGE_PAD = "<|image_pad|>"
VISION_START = "<|vision_start|>"
VISION_END = "<|vision_end|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
ENDOFTEXT = "<|endoftext|>"

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")


# ----------------------------------------------------------------------------------------------------
# loading


def read_model_type(model_dir: Path, *, label: str) -> str:
    """``model_type`` from ``model_dir/config.json`` (one-line :class:`EncoderError` when unreadable)."""
    cfg = model_dir / "config.json"
    try:
        data = json.loads(cfg.read_text())
    except FileNotFoundError:
        raise EncoderError(
            f"encoder {label!r}: {str(model_dir)!r} has no config.json; pass the directory of a full model checkpoint"
        ) from None
    except (OSError, ValueError) as e:
        raise EncoderError(f"encoder {label!r}: cannot read {str(cfg)!r} ({_first_line(e)})") from None
    mt = data.get("model_type") if isinstance(data, dict) else None
    return str(mt) if mt else "unknown"


def has_tokenizer_files(path: Path) -> bool:
    """Whether ``path`` holds tokenizer files (used to prefer an adapter's own tokenizer)."""
    return any((path / f).is_file() for f in _TOKENIZER_FILES)


@dataclass
class QwenVL:
    """A loaded Qwen2-VL-family checkpoint."""

    model: Any
    processor: Any
    model_dir: Path
    revision: str
    model_type: str
    processor_source: str

    @property
    def tokenizer(self) -> Any:
        return self.processor.tokenizer

    @property
    def hidden_size(self) -> int:
        cfg = self.model.config
        text = getattr(cfg, "text_config", None)
        return int(getattr(text, "hidden_size", None) or cfg.hidden_size)


def load_qwen2vl(
    spec: str,
    *,
    label: str,
    device: str,
    dtype: torch.dtype,
    min_pixels: int | None = None,
    max_pixels: int | None = None,
    processor_dir: str | None = None,
    tokenizer_dir: str | Path | None = None,
    example: str = "/path/to/Qwen2-VL-checkpoint",
) -> QwenVL:
    """Load a Qwen2-VL / Qwen2.5-VL checkpoint and its processor (see the module docstring).

    ``processor_dir``: take the processor (tokenizer + image processor) from another directory, e.g.
    the base checkpoint when a fine-tuned one lacks them. ``tokenizer_dir``: take only the tokenizer
    from there (e.g. a LoRA adapter directory that saved an extended tokenizer).
    """
    model_dir, revision = resolve_model_dir(spec, label=label, example=example)
    model_type = read_model_type(model_dir, label=label)
    if model_type not in QWEN2VL_MODEL_TYPES:
        raise EncoderError(
            f"encoder {label!r}: {str(model_dir)!r} holds a {model_type!r} model, not a Qwen2-VL-family one "
            f"(model_type {' or '.join(repr(t) for t in QWEN2VL_MODEL_TYPES)}); pass a Qwen2-VL checkpoint"
        )
    proc_path = model_dir
    if processor_dir is not None:
        proc_path, _ = resolve_model_dir(processor_dir, label=label, example=example)
    processor = _load_processor(proc_path, label=label)
    source = str(proc_path)
    if tokenizer_dir is not None:
        from transformers import AutoTokenizer

        try:
            tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
        except Exception as e:
            raise EncoderError(f"encoder {label!r}: cannot load the tokenizer in {str(tokenizer_dir)!r} ({_first_line(e)})") from None
        processor = _with_tokenizer(processor, tok)
        source = str(tokenizer_dir)
    check_tokenizer(processor.tokenizer, label=label, source=source)
    if min_pixels is not None or max_pixels is not None:
        set_pixel_bounds(processor, min_pixels=min_pixels, max_pixels=max_pixels, label=label)
    model = _load_model(model_dir, model_type, label=label, device=device, dtype=dtype)
    return QwenVL(model=model, processor=processor, model_dir=model_dir, revision=revision, model_type=model_type,
                  processor_source=source)


def _load_processor(path: Path, *, label: str) -> Any:
    from transformers import AutoProcessor

    try:
        proc = AutoProcessor.from_pretrained(str(path))
    except Exception as e:
        raise EncoderError(
            f"encoder {label!r}: cannot load the Qwen2-VL processor from {str(path)!r} ({_first_line(e)}); the "
            "tokenizer / preprocessor files are missing there — pass processor_dir=<the base Qwen2-VL checkpoint>"
        ) from None
    if not hasattr(proc, "tokenizer") or not hasattr(proc, "image_processor"):
        raise EncoderError(
            f"encoder {label!r}: {str(path)!r} holds a {type(proc).__name__}, not a Qwen2-VL processor (tokenizer + "
            "image processor); pass processor_dir=<the base Qwen2-VL checkpoint>"
        )
    return proc


def _with_tokenizer(processor: Any, tokenizer: Any) -> Any:
    """A copy of ``processor`` with another tokenizer (same image/video processors and chat template)."""
    kwargs: dict[str, Any] = {"image_processor": processor.image_processor, "tokenizer": tokenizer}
    if getattr(processor, "video_processor", None) is not None:
        kwargs["video_processor"] = processor.video_processor
    if getattr(processor, "chat_template", None) is not None:
        kwargs["chat_template"] = processor.chat_template
    return type(processor)(**kwargs)


def set_pixel_bounds(processor: Any, *, min_pixels: int | None, max_pixels: int | None, label: str) -> None:
    """Override the image processor's resize bounds (pixels per image, before patching)."""
    from transformers.image_processing_utils import SizeDict

    ip = processor.image_processor
    size = ip.size
    lo = int(min_pixels) if min_pixels is not None else int(size["shortest_edge"])
    hi = int(max_pixels) if max_pixels is not None else int(size["longest_edge"])
    if lo < 1 or hi < lo:
        raise EncoderError(f"encoder {label!r}: need 1 <= min_pixels <= max_pixels, got {lo} and {hi}")
    ip.size = SizeDict(shortest_edge=lo, longest_edge=hi)


def _load_model(model_dir: Path, model_type: str, *, label: str, device: str, dtype: torch.dtype) -> Any:
    import transformers

    cls_name = {"qwen2_vl": "Qwen2VLForConditionalGeneration", "qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration"}
    cls = getattr(transformers, cls_name.get(model_type, ""), None) or transformers.AutoModelForImageTextToText
    try:
        with quiet_transformers():
            model, info = cls.from_pretrained(str(model_dir), dtype=dtype, output_loading_info=True,
                                              ignore_mismatched_sizes=True)
    except Exception as e:
        raise EncoderError(
            f"encoder {label!r}: cannot load the {model_type} weights in {str(model_dir)!r} "
            f"({type(e).__name__}: {_first_line(e)})"
        ) from None
    check_loading_info(info, model, model_dir, label=label)
    return model.to(device).eval()


def merge_lora_adapter(model: Any, adapter_dir: str | Path, *, label: str) -> tuple[Any, str]:
    """Load the peft LoRA adapter in ``adapter_dir`` onto ``model``, merge it into the weights and return
    ``(merged model, adapter revision)``. The model's embedding matrix must already match the
    tokenizer the adapter was trained with (see :func:`ensure_token`)."""
    path = Path(str(adapter_dir).removeprefix("local-dir:")).expanduser()
    if not (path / "adapter_config.json").is_file():
        raise EncoderError(
            f"encoder {label!r}: adapter {str(adapter_dir)!r} is not a peft adapter directory (no adapter_config.json)"
        )
    try:
        from peft import PeftModel
    except ImportError:
        raise EncoderError(f"encoder {label!r}: loading an adapter needs peft; install it with: pip install 'mrbench[mllm]'") from None
    try:
        peft_model = PeftModel.from_pretrained(model, str(path), is_trainable=False)
        merged = peft_model.merge_and_unload()
    except Exception as e:
        raise EncoderError(f"encoder {label!r}: cannot apply adapter {str(path)!r} ({type(e).__name__}: {_first_line(e)})") from None
    return merged.eval(), dir_revision(path)


def ensure_token(tokenizer: Any, model: Any | None, token: str, *, label: str) -> tuple[int, bool]:
    """Return ``(id of token, added)``: add ``token`` as a special token when the tokenizer lacks it
    and grow the model's embeddings when the new id does not fit (logged as a warning: an untrained
    token embedding carries no meaning)."""
    vocab = tokenizer.get_vocab()
    if token in vocab:
        tid = int(vocab[token])
        added = False
    else:
        from tokenizers import AddedToken

        tokenizer.add_tokens([AddedToken(token, special=True, normalized=False)], special_tokens=True)
        tid = int(tokenizer.convert_tokens_to_ids(token))
        added = True
        log.warning(
            "encoder %s: the tokenizer has no %r token; added it (id %d) with an untrained embedding — "
            "embeddings taken there are meaningless unless the model was trained with it", label, token, tid,
        )
    if model is not None:
        rows = model.get_input_embeddings().weight.shape[0]
        if tid >= rows:
            model.resize_token_embeddings(len(tokenizer))
    return tid, added


# ----------------------------------------------------------------------------------------------------
# prompts and batches


@dataclass(frozen=True)
class PromptParts:
    """One prompt: ``prefix + text + suffix``. The placeholder ``<|image_pad|>`` (at most once, in
    ``prefix`` or ``suffix``) stands for ``image``; only ``text`` is ever truncated."""

    prefix: str
    text: str
    suffix: str
    image: Image | PreparedImage | None = None

    def render(self, text: str | None = None) -> str:
        return self.prefix + (self.text if text is None else text) + self.suffix


@dataclass
class PromptBatch:
    """A padded model batch (``inputs``: input_ids, attention_mask, mm_token_type_ids and, when any
    row has an image, pixel_values and image_grid_thw), the rendered prompts and the number of
    truncated texts."""

    inputs: dict[str, Any]
    prompts: list[str]
    n_truncated: int = 0
    padding_side: str = "right"
    rows: list[list[int]] = field(default_factory=list)  # unpadded input ids per row

    def to(self, device: str, dtype: torch.dtype | None = None) -> PromptBatch:
        out = {}
        for k, v in self.inputs.items():
            if hasattr(v, "to"):
                v = v.to(device)
                if dtype is not None and k == "pixel_values":
                    v = v.to(dtype)
            out[k] = v
        return PromptBatch(out, self.prompts, self.n_truncated, self.padding_side, self.rows)


@dataclass(frozen=True)
class PreparedImage:
    """One image already run through the processor's image processor (done in the harness's decode
    threads or processes by the encoders' ``prepare_image`` / ``pixel_transform`` hooks):
    ``pixel_values`` ``[patches, C·T·P·P]`` and ``grid_thw`` ``[1, 3]`` (torch tensors or numpy
    arrays). Batches built from prepared images equal batches built from the PIL images by the
    processor (tested)."""

    pixel_values: Any
    grid_thw: Any


class QwenImagePrep:
    """Picklable ``PIL image → PreparedImage`` (numpy arrays, for decode worker processes): an
    optional resize rule (``resize(image)``, a module-level function) then the image processor."""

    def __init__(self, image_processor: Any, resize: Any = None) -> None:
        self.image_processor = image_processor
        self.resize = resize

    def __call__(self, image: Image) -> PreparedImage:
        if self.resize is not None:
            image = self.resize(image)
        out = self.image_processor(images=[image], return_tensors="np")
        return PreparedImage(np.asarray(out["pixel_values"]), np.asarray(out["image_grid_thw"]))

    @staticmethod
    def available(image_processor: Any) -> bool:
        """Whether the image processor can run in a forked worker (it must be picklable)."""
        import pickle

        try:
            pickle.dumps(image_processor)
        except Exception:
            return False
        return True


def prepare_image(processor: Any, image: Image) -> PreparedImage:
    """Run the processor's image processor on one image (:class:`QwenImagePrep` without a resize rule)."""
    return QwenImagePrep(processor.image_processor)(image)


def image_token_counts(processor: Any, images: Sequence[Image | PreparedImage | None]) -> list[int]:
    """Placeholder tokens each image expands to (0 for ``None``), from its size and the processor's bounds."""
    ip = processor.image_processor
    merge = int(getattr(ip, "merge_size", 2))
    out = []
    for im in images:
        if im is None:
            out.append(0)
        elif isinstance(im, PreparedImage):
            out.append(int(np.prod(np.asarray(im.grid_thw))) // (merge * merge))
        else:
            w, h = im.size
            out.append(int(ip.get_number_of_image_patches(h, w, {})) // (merge * merge))
    return out


def _call_processor(
    processor: Any, prompts: list[str], images: list[Any], n_img: list[int], *, padding_side: str,
    add_special_tokens: bool,
) -> dict[str, Any]:
    """``processor(text=prompts, images=images)`` — or, when any image is a :class:`PreparedImage`,
    the same thing assembled by hand: each prompt's placeholder expanded to its image's token count,
    the tokenizer on the expanded texts, the prepared pixel values concatenated in order."""
    if not any(isinstance(im, PreparedImage) for im in images):
        enc = processor(text=prompts, images=images or None, padding=True, padding_side=padding_side,
                        add_special_tokens=add_special_tokens, return_tensors="pt")
        return {k: v for k, v in enc.items()}
    import torch

    tok = processor.tokenizer
    image_token = getattr(processor, "image_token", IMAGE_PAD)
    prepared = [im if isinstance(im, PreparedImage) else prepare_image(processor, im) for im in images]
    counts = iter([k for k in n_img if k])
    expanded = [p.replace(image_token, image_token * next(counts), 1) if image_token in p else p for p in prompts]
    enc = tok(expanded, padding=True, padding_side=padding_side, add_special_tokens=add_special_tokens,
              return_tensors="pt")
    inputs = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
    image_id = tok.convert_tokens_to_ids(image_token)
    inputs["mm_token_type_ids"] = (inputs["input_ids"] == image_id).long()
    inputs["pixel_values"] = torch.cat([torch.as_tensor(p.pixel_values) for p in prepared])
    inputs["image_grid_thw"] = torch.cat([torch.as_tensor(p.grid_thw) for p in prepared])
    return inputs


def encode_prompts(
    processor: Any,
    parts: Sequence[PromptParts],
    *,
    max_length: int | None,
    padding_side: str = "right",
    reserve: int = 0,
    label: str = "qwen2vl",
    add_special_tokens: bool = True,
) -> PromptBatch:
    """Tokenise ``parts`` into one padded batch with the processor (see the module docstring).

    ``reserve`` tokens are kept free below ``max_length`` (for tokens generated later). Texts cut to
    fit are counted in ``n_truncated``.
    """
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', not {padding_side!r}")
    tok = processor.tokenizer
    image_token = getattr(processor, "image_token", IMAGE_PAD)
    for p in parts:
        n_ph = p.render().count(image_token)
        if n_ph != (1 if p.image is not None else 0):
            raise ValueError(f"prompt {p.render()!r} has {n_ph} image placeholders for {int(p.image is not None)} image(s)")
    n_img = image_token_counts(processor, [p.image for p in parts])
    limit = None if max_length is None else int(max_length) - int(reserve)
    prompts: list[str] = []
    n_trunc = 0
    for p, k in zip(parts, n_img):
        text = p.text
        if limit is not None:
            length = _length(tok, p.render(text), k, add_special_tokens)
            if length > limit:
                text = _truncate(tok, p, k, limit, add_special_tokens, label=label)
                n_trunc += 1
        prompts.append(p.render(text))
    images = [p.image for p in parts if p.image is not None]
    inputs = _call_processor(processor, prompts, images, n_img, padding_side=padding_side,
                             add_special_tokens=add_special_tokens)
    if "mm_token_type_ids" not in inputs:  # older processors: mark image tokens ourselves
        image_id = tok.convert_tokens_to_ids(image_token)
        inputs["mm_token_type_ids"] = (inputs["input_ids"] == image_id).long()
    mask = inputs["attention_mask"].bool()
    rows = [inputs["input_ids"][i][mask[i]].tolist() for i in range(mask.shape[0])]
    if limit is not None:
        too_long = [len(r) for r in rows if len(r) > limit]
        if too_long:  # the processor disagreed with the predicted image-token count
            raise EncoderError(
                f"encoder {label!r}: a prompt has {too_long[0]} tokens after image expansion, over the limit of {limit}; "
                "lower max_pixels or raise max_length"
            )
    if any(t in ("pixel_values", "image_grid_thw") for t in inputs) and not images:
        inputs.pop("pixel_values", None)
        inputs.pop("image_grid_thw", None)
    return PromptBatch(inputs=inputs, prompts=prompts, n_truncated=n_trunc, padding_side=padding_side, rows=rows)


def _n_tokens(tok: Any, s: str, add_special_tokens: bool) -> int:
    return len(tok(s, add_special_tokens=add_special_tokens)["input_ids"])


def _length(tok: Any, prompt: str, n_image_tokens: int, add_special_tokens: bool) -> int:
    """Tokens of ``prompt`` once its (single) image placeholder is expanded to ``n_image_tokens``."""
    return _n_tokens(tok, prompt, add_special_tokens) + (n_image_tokens - 1 if n_image_tokens else 0)


def _truncate(tok: Any, p: PromptParts, n_image_tokens: int, limit: int, add_special_tokens: bool, *, label: str) -> str:
    """The longest token prefix of ``p.text`` whose rendered prompt fits in ``limit`` tokens."""
    ids = tok(p.text, add_special_tokens=False)["input_ids"]
    keep = len(ids)
    for _ in range(8):  # joint tokenisation may differ from the text's own by a token or two at the seams
        over = _length(tok, p.render(tok.decode(ids[:keep])), n_image_tokens, add_special_tokens) - limit
        if over <= 0:
            return tok.decode(ids[:keep])
        if keep == 0:
            break
        keep = max(0, keep - over)
    raise EncoderError(
        f"encoder {label!r}: the prompt template and image alone take more than {limit} tokens; "
        "raise max_length or lower max_pixels"
    )


def pad_rows(rows: Sequence[Sequence[int]], pad_id: int, side: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ids [B, L], attention_mask [B, L])`` from unpadded rows, padded on ``side``."""
    import torch

    width = max((len(r) for r in rows), default=0)
    ids = torch.full((len(rows), width), int(pad_id), dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        n = len(r)
        if n == 0:
            continue
        sl = slice(width - n, width) if side == "left" else slice(0, n)
        ids[i, sl] = torch.as_tensor(list(r), dtype=torch.long)
        mask[i, sl] = 1
    return ids, mask


def extend_batch(batch: PromptBatch, extra: Sequence[Sequence[int]], *, pad_id: int, padding_side: str = "right") -> PromptBatch:
    """A new batch whose row ``i`` is ``batch.rows[i] + extra[i]`` (text tokens), images unchanged."""
    if len(extra) != len(batch.rows):
        raise ValueError(f"extend_batch: {len(extra)} extensions for {len(batch.rows)} rows")
    device = batch.inputs["input_ids"].device
    old_mask = batch.inputs["attention_mask"].bool()
    old_types = batch.inputs["mm_token_type_ids"]
    rows = [list(r) + [int(t) for t in e] for r, e in zip(batch.rows, extra)]
    type_rows = [old_types[i][old_mask[i]].tolist() + [0] * len(e) for i, e in enumerate(extra)]
    ids, mask = pad_rows(rows, pad_id, padding_side)
    types, _ = pad_rows(type_rows, 0, padding_side)
    inputs = dict(batch.inputs)
    inputs.update(input_ids=ids.to(device), attention_mask=mask.to(device), mm_token_type_ids=types.to(device))
    return PromptBatch(inputs=inputs, prompts=batch.prompts, n_truncated=batch.n_truncated,
                       padding_side=padding_side, rows=rows)


# ----------------------------------------------------------------------------------------------------
# forward and pooling


def unwrap(model: Any) -> Any:
    """The ``*ForConditionalGeneration`` under a peft wrapper (LoRA layers stay injected)."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def position_ids(model: Any, inputs: Mapping[str, Any]) -> torch.Tensor:
    """M-RoPE position ids ``[3, B, L]`` from the attention mask (real tokens start at 0 in every row)."""
    base = unwrap(model).model
    pos, _ = base.get_rope_index(
        inputs["input_ids"],
        mm_token_type_ids=inputs["mm_token_type_ids"],
        image_grid_thw=inputs.get("image_grid_thw"),
        attention_mask=inputs["attention_mask"],
    )
    return pos


def forward_hidden(model: Any, inputs: Mapping[str, Any]) -> torch.Tensor:
    """Last-layer hidden states ``[B, L, H]`` (after the final norm: ``hidden_states[-1]``), no LM head."""
    base = unwrap(model).model
    kwargs = {k: inputs[k] for k in ("pixel_values", "image_grid_thw") if inputs.get(k) is not None}
    out = base(
        input_ids=inputs["input_ids"],
        attention_mask=inputs["attention_mask"],
        mm_token_type_ids=inputs["mm_token_type_ids"],
        position_ids=position_ids(model, inputs),
        use_cache=False,
        **kwargs,
    )
    return out.last_hidden_state


def last_token_hidden(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Hidden state at the last non-pad position of every row ``[B, H]`` (left or right padding)."""
    import torch

    mask = attention_mask.bool()
    width = mask.shape[1]
    last = width - 1 - mask.flip(1).int().argmax(dim=1)
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last.to(hidden.device)]


def _first_line(e: BaseException) -> str:
    s = str(e).strip().splitlines()
    return s[0] if s else type(e).__name__
