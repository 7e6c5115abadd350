"""Generative ``[RET]`` encoders (LamRA / ELVA style) on a Qwen2-VL-family MLLM.

The model first *writes* a short summary of the input (greedy decoding, batched ``generate`` with
left padding, at most ``max_summary_tokens`` tokens, stopping at ``<|im_end|>``, ``<|endoftext|>``
or ``[RET]``); then ``[RET]`` is appended after the summary and one forward pass over
``prompt + summary + [RET]`` gives the embedding: the last-layer hidden state at the ``[RET]``
position (``ret_position="at"``, the ELVA convention) or at the position just before it
(``"before"``: LamRA-Ret's ``get_embed_feature`` takes ``hidden[<emb> index - 1]``). The harness
L2-normalises it.

Prompt (the Qwen2-VL chat format, exactly what its chat template renders for one user turn with the
default system prompt; the image first, as LamRA's messages put it)::

    <|im_start|>system\\n{system_prompt}<|im_end|>\\n
    <|im_start|>user\\n[<|vision_start|><|image_pad|><|vision_end|>]{user}<|im_end|>\\n
    <|im_start|>assistant\\n{summary}[RET]

``{user}`` is ``prompt_template`` (default :data:`DEFAULT_RET_TEMPLATE`, LamRA's
``construct_messages`` wording with "in a few words" for its "in one word") filled with
``{instruction}``, ``{text}``, ``{body}`` (``"{instruction} {text}"`` without empty parts, as LamRA's
``f"{query_prompt} {query_txt}"``) and ``{subject}`` (``"image and sentence"`` / ``"sentence"`` /
``"image"``, as LamRA picks it). Only the item text is ever truncated.

The public functions are the one place the embedding is extracted, shared with the ELVA trainer's
generative regime: :func:`build_ret_prompts` → :func:`prepare_ret_batch` →
:func:`generate_summaries` (greedy or sampled; the summary token ids) → :func:`ret_embeddings`;
:func:`summary_logprobs` recomputes the summary tokens' log-probabilities (with gradients) for a
policy-gradient update.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mrbench.encoders.base import EncodeInput, EncoderMeta, Role
from mrbench.encoders.qwen2vl import (
    ENDOFTEXT,
    IM_END,
    IM_START,
    IMAGE_PAD,
    VISION_END,
    VISION_START,
    PreparedImage,
    PromptBatch,
    PromptParts,
    QwenImagePrep,
    encode_prompts,
    ensure_token,
    extend_batch,
    forward_hidden,
    has_tokenizer_files,
    load_qwen2vl,
    merge_lora_adapter,
    unwrap,
)
from mrbench.encoders.qwen2vl import prepare_image as prepare_qwen_image
from mrbench.encoders.torch_base import TorchEncoder
from mrbench.errors import EncoderError

if TYPE_CHECKING:
    import torch
    from PIL.Image import Image

    from mrbench.data.schema import TaskInfo

log = logging.getLogger("mrbench.encoders")

DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant."
DEFAULT_RET_TEMPLATE = "{body}\nSummarize above {subject} in a few words: "
CHAT_FORMAT = (
    IM_START + "system\n{system}" + IM_END + "\n" + IM_START + "user\n{vision}{user}" + IM_END + "\n"
    + IM_START + "assistant\n"
)
"""One Qwen2-VL chat turn up to the assistant header (``{system}`` block dropped when empty)."""
VISION = VISION_START + IMAGE_PAD + VISION_END
RET_POSITIONS = ("at", "before")
_SENTINEL = "\x00mrbench-text\x00"
_FIELDS = ("instruction", "text", "body", "subject")


# ----------------------------------------------------------------------------------------------------
# prompts


def check_template(template: str) -> None:
    """Raise :class:`ValueError` unless ``template`` uses only known fields and ``{text}``/``{body}`` exactly once."""
    import string

    fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    unknown = sorted({f for f in fields if f not in _FIELDS})
    if unknown:
        raise ValueError(f"prompt_template has unknown field(s) {unknown}; allowed: {', '.join(_FIELDS)}")
    n = sum(f in ("text", "body") for f in fields)
    if n != 1:
        raise ValueError(f"prompt_template must contain exactly one {{text}} or {{body}}, found {n}")


def _subject(has_image: bool, has_body: bool) -> str:
    if has_image and has_body:
        return "image and sentence"
    return "image" if has_image else "sentence"


def build_ret_prompt(
    text: str | None,
    image: Image | None,
    instruction: str | None = None,
    *,
    template: str = DEFAULT_RET_TEMPLATE,
    system_prompt: str | None = DEFAULT_SYSTEM_PROMPT,
) -> PromptParts:
    """One item's prompt (see the module docstring) as :class:`PromptParts` (the item text truncatable)."""
    inst = (instruction or "").strip()
    txt = text or ""
    has_body = bool(inst or txt)
    system = system_prompt or ""
    head = CHAT_FORMAT if system else CHAT_FORMAT.replace(IM_START + "system\n{system}" + IM_END + "\n", "")
    marker = _SENTINEL if txt else ""
    body = " ".join(p for p in (inst, marker) if p)
    user = template.format(instruction=inst, text=marker, body=body, subject=_subject(image is not None, has_body))
    full = head.format(system=system, vision=VISION if image is not None else "", user=user)
    if not txt:
        return PromptParts(full, "", "", image)
    prefix, suffix = full.split(_SENTINEL)
    return PromptParts(prefix, txt, suffix, image)


def build_ret_prompts(
    texts: Sequence[str | None],
    images: Sequence[Image | None],
    instructions: Sequence[str | None] | str | None = None,
    *,
    template: str = DEFAULT_RET_TEMPLATE,
    system_prompt: str | None = DEFAULT_SYSTEM_PROMPT,
) -> list[PromptParts]:
    """Prompts of a batch: ``texts[i]`` and ``images[i]`` (either may be ``None``) with ``instructions``
    (one per item, or one for all)."""
    check_template(template)
    if len(texts) != len(images):
        raise ValueError(f"build_ret_prompts: {len(texts)} texts for {len(images)} images")
    if instructions is None or isinstance(instructions, str):
        instructions = [instructions] * len(texts)
    return [
        build_ret_prompt(t, im, ins, template=template, system_prompt=system_prompt)
        for t, im, ins in zip(texts, images, instructions)
    ]


def prepare_ret_batch(
    processor: Any,
    prompts: Sequence[PromptParts],
    *,
    max_length: int | None = 1024,
    max_summary_tokens: int = 32,
    label: str = "ret",
) -> PromptBatch:
    """Left-padded batch for :func:`generate_summaries`; ``max_summary_tokens + 1`` tokens are kept free
    under ``max_length`` for the summary and ``[RET]`` (texts cut to fit are counted)."""
    return encode_prompts(processor, prompts, max_length=max_length, padding_side="left",
                          reserve=int(max_summary_tokens) + 1, label=label, add_special_tokens=False)


# ----------------------------------------------------------------------------------------------------
# generation, log-probabilities, embeddings


@dataclass
class SummaryOutput:
    """``summary_ids[i]``: the generated tokens of row ``i`` without the stop token; ``finished[i]``:
    whether a stop token ended it (else it hit ``max_new_tokens``); ``texts``: decoded summaries."""

    summary_ids: list[list[int]]
    texts: list[str]
    finished: list[bool]


def stop_token_ids(tokenizer: Any, ret_token_id: int | None = None) -> list[int]:
    """Tokens that end a summary: ``<|im_end|>``, ``<|endoftext|>``, the eos token and ``[RET]``."""
    vocab = tokenizer.get_vocab()
    ids = [vocab[t] for t in (IM_END, ENDOFTEXT) if t in vocab]
    if tokenizer.eos_token_id is not None:
        ids.append(int(tokenizer.eos_token_id))
    if ret_token_id is not None:
        ids.append(int(ret_token_id))
    return sorted({int(i) for i in ids})


def placeholder_token_ids(tokenizer: Any) -> list[int]:
    """Ids of ``<|image_pad|>`` and ``<|video_pad|>`` (those the tokenizer knows): a summary that
    contained one would be taken for an image slot by the model's forward."""
    out = []
    for t in (IMAGE_PAD, "<|video_pad|>"):
        tid = tokenizer.convert_tokens_to_ids(t)
        if isinstance(tid, int) and tid != getattr(tokenizer, "unk_token_id", None) and tid >= 0:
            out.append(tid)
    return out


def generate_summaries(
    model: Any,
    processor: Any,
    batch: PromptBatch,
    max_new_tokens: int,
    do_sample: bool = False,
    *,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int = 0,
    stop_ids: Sequence[int] | None = None,
    suppress_ids: Sequence[int] | None = None,
) -> SummaryOutput:
    """Batched ``generate`` on a left-padded ``batch`` (greedy unless ``do_sample``; seed torch for
    reproducible samples). The checkpoint's own generation defaults are ignored: the decoding is
    exactly what the arguments say. ``suppress_ids`` are never generated (``None``: the image and
    video placeholders, which would break the ``[RET]`` forward; ``[]``: nothing suppressed)."""
    from transformers import GenerationConfig

    if batch.padding_side != "left":
        raise ValueError("generate_summaries needs a left-padded batch (prepare_ret_batch)")
    tok = processor.tokenizer
    n = len(batch.rows)
    if max_new_tokens <= 0:
        return SummaryOutput([[] for _ in range(n)], ["" for _ in range(n)], [False] * n)
    stops = list(stop_ids) if stop_ids is not None else stop_token_ids(tok)
    pad = tok.pad_token_id if tok.pad_token_id is not None else stops[0]
    params: dict[str, Any] = {"do_sample": bool(do_sample)}
    if do_sample:
        params.update(temperature=float(temperature), top_p=float(top_p), top_k=int(top_k))
    else:
        params.update(temperature=None, top_p=None, top_k=None)
    if suppress_ids is None:
        suppress_ids = placeholder_token_ids(tok)
    if suppress_ids:
        params["suppress_tokens"] = [int(t) for t in suppress_ids]
    cfg = GenerationConfig(max_new_tokens=int(max_new_tokens), eos_token_id=stops, pad_token_id=pad,
                           num_beams=1, **params)
    inputs = batch.inputs
    out = unwrap(model).generate(**inputs, generation_config=cfg)
    new = out[:, inputs["input_ids"].shape[1]:].tolist()
    stop_set = set(stops)
    summaries, finished = [], []
    for row in new:
        cut = next((j for j, t in enumerate(row) if t in stop_set), None)
        summaries.append(row if cut is None else row[:cut])
        finished.append(cut is not None)
    texts = tok.batch_decode(summaries, skip_special_tokens=True)
    return SummaryOutput(summaries, texts, finished)


def summary_logprobs(
    model: Any, batch: PromptBatch, summary_ids: Sequence[Sequence[int]], *, temperature: float = 1.0, pad_token_id: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probabilities of each summary token given the prompt and the tokens before it, from one
    forward pass (differentiable: call it without ``no_grad`` to train). Returns ``(logp [B, T], mask
    [B, T])`` with ``T`` the longest summary; ``logits / temperature`` as when sampling."""
    import torch

    ext = extend_batch(batch, summary_ids, pad_id=pad_token_id, padding_side="right")
    hidden = forward_hidden(model, ext.inputs)
    width = max((len(s) for s in summary_ids), default=0)
    b = len(summary_ids)
    device = hidden.device
    pos = torch.zeros((b, max(width, 1)), dtype=torch.long, device=device)
    tgt = torch.zeros_like(pos)
    mask = torch.zeros_like(pos, dtype=torch.bool)
    for i, (row, s) in enumerate(zip(batch.rows, summary_ids)):
        if s:
            k = len(s)
            pos[i, :k] = torch.arange(len(row) - 1, len(row) - 1 + k, device=device)
            tgt[i, :k] = torch.as_tensor(list(s), device=device)
            mask[i, :k] = True
    h = hidden[torch.arange(b, device=device)[:, None], pos]
    logits = unwrap(model).lm_head(h).float() / float(temperature)
    logp = torch.log_softmax(logits, dim=-1).gather(-1, tgt[..., None])[..., 0]
    logp = logp.masked_fill(~mask, 0.0)
    return logp[:, :width], mask[:, :width]


def ret_sequences(batch: PromptBatch, summary_ids: Sequence[Sequence[int]], ret_token_id: int) -> list[list[int]]:
    """The token rows :func:`ret_embeddings` reads: ``prompt + summary + [RET]``."""
    return [list(r) + list(s) + [int(ret_token_id)] for r, s in zip(batch.rows, summary_ids)]


def ret_embeddings(
    model: Any,
    batch: PromptBatch,
    summary_ids: Sequence[Sequence[int]],
    *,
    ret_token_id: int,
    pad_token_id: int = 0,
    position: str = "at",
) -> torch.Tensor:
    """``[B, H]`` last-layer hidden states at ``[RET]`` (``position="at"``) or just before it
    (``"before"``), from one forward pass over ``prompt + summary + [RET]`` (right padding)."""
    import torch

    if position not in RET_POSITIONS:
        raise ValueError(f"position must be one of {RET_POSITIONS}, not {position!r}")
    extra = [list(s) + [int(ret_token_id)] for s in summary_ids]
    ext = extend_batch(batch, extra, pad_id=pad_token_id, padding_side="right")
    hidden = forward_hidden(model, ext.inputs)
    idx = torch.as_tensor([len(r) - 1 for r in ext.rows], device=hidden.device)  # the appended [RET]
    if position == "before":
        idx = idx - 1
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), idx]


# ----------------------------------------------------------------------------------------------------
# the encoder


class RetEncoder(TorchEncoder):
    """Generative ``[RET]`` encoder (registered as the ``ret`` family: ``ret:<dir or hub id>``).

    Args:
        spec: Qwen2-VL / Qwen2.5-VL checkpoint directory (``local-dir:`` accepted) or hub id.
        adapter: peft LoRA adapter directory, merged into the weights; its tokenizer is used when it
            saved one (e.g. with ``[RET]`` added during training).
        max_summary_tokens: summary length cap (0: no summary, ``[RET]`` right after the prompt).
        ret_token: the retrieval token; added (with a warning, untrained) when the tokenizer lacks it.
        prompt_template: user-turn template (fields ``{instruction}``, ``{text}``, ``{body}``, ``{subject}``).
        system_prompt: system turn (``""``/``None`` drops it).
        ret_position: ``"at"`` (hidden state at ``[RET]``) or ``"before"`` (LamRA's position).
        max_length: token limit of prompt + summary + ``[RET]``; longer item texts are cut (counted).
        min_pixels, max_pixels: Qwen2-VL image-processor bounds.
        processor_dir: load the processor from there when the checkpoint lacks it.
        device, precision, batch_size: see :class:`~mrbench.encoders.torch_base.TorchEncoder`.
    """

    def __init__(
        self,
        spec: str,
        *,
        adapter: str | None = None,
        max_summary_tokens: int = 32,
        ret_token: str = "[RET]",
        prompt_template: str = DEFAULT_RET_TEMPLATE,
        system_prompt: str | None = DEFAULT_SYSTEM_PROMPT,
        ret_position: str = "at",
        max_length: int = 1024,
        min_pixels: int | None = None,
        max_pixels: int | None = None,
        processor_dir: str | None = None,
        device: str | None = "auto",
        precision: str | None = "auto",
        batch_size: int = 8,
    ) -> None:
        super().__init__(device=device, precision=precision, batch_size=batch_size)
        self.spec = spec
        self.label = f"ret:{spec}"
        if isinstance(max_summary_tokens, bool) or not isinstance(max_summary_tokens, int) or max_summary_tokens < 0:
            raise EncoderError(f"encoder {self.label!r}: max_summary_tokens must be an integer >= 0, got {max_summary_tokens!r}")
        if ret_position not in RET_POSITIONS:
            raise EncoderError(f"encoder {self.label!r}: ret_position must be one of {', '.join(RET_POSITIONS)}, got {ret_position!r}")
        if not isinstance(ret_token, str) or not ret_token.strip():
            raise EncoderError(f"encoder {self.label!r}: ret_token must be a non-empty string")
        if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < max_summary_tokens + 8:
            raise EncoderError(f"encoder {self.label!r}: max_length must be an integer >= max_summary_tokens + 8, got {max_length!r}")
        try:
            check_template(prompt_template)
        except ValueError as e:
            raise EncoderError(f"encoder {self.label!r}: {e}") from None
        self.max_summary_tokens = max_summary_tokens
        self.prompt_template = prompt_template
        self.system_prompt = system_prompt
        self.ret_position = ret_position
        self.max_length = max_length
        self.summary_examples: list[dict[str, str]] = []

        tokenizer_dir = None
        if adapter is not None:
            apath = Path(str(adapter).removeprefix("local-dir:")).expanduser()
            if not apath.is_dir():
                raise EncoderError(f"encoder {self.label!r}: adapter directory {str(adapter)!r} not found")
            if has_tokenizer_files(apath):
                tokenizer_dir = apath
        vl = load_qwen2vl(spec, label=self.label, device=self.device, dtype=self.dtype, min_pixels=min_pixels,
                          max_pixels=max_pixels, processor_dir=processor_dir, tokenizer_dir=tokenizer_dir,
                          example="/path/to/Qwen2-VL-2B-Instruct")
        self.processor = vl.processor
        tok = vl.tokenizer
        self.ret_token_id, ret_added = ensure_token(tok, vl.model, ret_token, label=self.label)
        model = vl.model
        adapter_rev = None
        if adapter is not None:
            model, adapter_rev = merge_lora_adapter(model, adapter, label=self.label)
        self.model = model
        self.pad_token_id = int(tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id or 0)
        self.stop_ids = stop_token_ids(tok, self.ret_token_id)
        self.meta = EncoderMeta(
            name=self.label,
            revision=vl.revision if adapter_rev is None else f"{vl.revision}+{adapter_rev}",
            modalities=("text", "image"),
            similarity="cosine",
            dim=vl.hidden_size,
            native_image_text=True,
            needs_pixels=True,
            batch_size=self.batch_size,
            extra={
                "family": "ret",
                "model_type": vl.model_type,
                "model_dir": str(vl.model_dir),
                "base_revision": vl.revision,
                "adapter": None if adapter is None else str(adapter),
                "adapter_revision": adapter_rev,
                "tokenizer_source": vl.processor_source,
                "prompt_template": prompt_template,
                "system_prompt": system_prompt,
                "chat_format": CHAT_FORMAT,
                "prompts": self._prompt_examples(),
                "max_summary_tokens": max_summary_tokens,
                "decoding": "greedy",
                "ret_token": ret_token,
                "ret_token_id": self.ret_token_id,
                "ret_token_added": ret_added,
                "ret_position": ret_position,
                "max_length": max_length,
                "min_pixels": min_pixels,
                "max_pixels": max_pixels,
                "summary_examples": self.summary_examples,
                **self.runtime_extra(),
            },
        )

    def _prompt_examples(self) -> dict[str, str]:
        def show(text: str | None, image: bool, inst: str | None) -> str:
            p = build_ret_prompt(text, _Placeholder() if image else None, inst,  # type: ignore[arg-type]
                                 template=self.prompt_template, system_prompt=self.system_prompt)
            return p.render() + "{summary}" + "[RET]"

        return {
            "text": show("{text}", False, "{instruction}"),
            "image": show(None, True, "{instruction}"),
            "image+text": show("{text}", True, "{instruction}"),
            "image, no instruction": show(None, True, None),
            "text, no instruction": show("{text}", False, None),
        }

    def prepare_image(self, image: Image) -> PreparedImage:
        """The image processor's work for one image, run by the harness in its decode threads."""
        return prepare_qwen_image(self.processor, image)

    def pixel_transform(self) -> QwenImagePrep | None:
        """The same as :meth:`prepare_image`, picklable, for decode worker processes (``None`` for a
        torch-based image processor: threads then)."""
        ip = self.processor.image_processor
        return QwenImagePrep(ip) if QwenImagePrep.available(ip) else None

    def _image(self, it: EncodeInput) -> Image | PreparedImage | None:
        if isinstance(it.pixels, PreparedImage):
            return it.pixels
        if it.image is not None:
            return it.image
        if it.image_path is None:
            return None
        from mrbench.encoders.harness import load_rgb

        return load_rgb(it.image_path, it.id)

    def _forward(self, items: Sequence[EncodeInput], *, role: Role, task: TaskInfo) -> torch.Tensor:
        prompts = build_ret_prompts([it.text for it in items], [self._image(it) for it in items],
                                    [it.instruction for it in items], template=self.prompt_template,
                                    system_prompt=self.system_prompt)
        batch = prepare_ret_batch(self.processor, prompts, max_length=self.max_length,
                                  max_summary_tokens=self.max_summary_tokens, label=self.label)
        self.count_truncated(batch.n_truncated)
        batch = batch.to(self.device)
        summ = generate_summaries(self.model, self.processor, batch, self.max_summary_tokens, do_sample=False,
                                  stop_ids=self.stop_ids)
        if len(self.summary_examples) < 6:
            for it, text in zip(items, summ.texts):
                if len(self.summary_examples) < 6:
                    self.summary_examples.append({"task": task.name, "role": role, "id": it.id, "summary": text})
        return ret_embeddings(self.model, batch, summ.summary_ids, ret_token_id=self.ret_token_id,
                              pad_token_id=self.pad_token_id, position=self.ret_position)


class _Placeholder:
    """Stands for an image when rendering the recorded prompt examples."""

    size = (0, 0)
