"""VLM2Vec (TIGER-Lab): an instruction-following MLLM embedder — last-token pooling, L2-normalised.

Backbones: **Qwen2-VL / Qwen2.5-VL** (``TIGER-Lab/VLM2Vec-Qwen2VL-2B``/``-7B``, ``VLM2Vec/VLM2Vec-V2.0``)
and **Phi-3.5-V** (``TIGER-Lab/VLM2Vec-Full``; its modelling code lives in the checkpoint, so it is
loaded with ``trust_remote_code=True``). ``backbone="auto"`` reads ``model_type`` from ``config.json``.

Input format — as VLM2Vec's evaluation code builds it (``src/model/processor.py:process_input_text``
and the MMEB image eval parsers ``src/data/eval_dataset/image_t2i_eval.py`` / ``image_i2t_eval.py``,
which keep the v1 ``EvalDataset`` text: the instruction, then the text after one space, a trailing
newline, the image token in front followed by a newline), raw text without a chat template and
without an added EOS (the pooled token is the last one, the trailing ``"\\n"``)::

    image + text:   "{IMG}\\n{instruction} {text}\\n"      e.g. CIRR queries, WebQA candidates
    image:          "{IMG}\\n{instruction}\\n"             e.g. "Represent the given image."
    text:           "{instruction} {text}\\n"             e.g. MSCOCO_t2i queries
    text, no instruction:  "{text}"                       e.g. MSCOCO_i2t candidates (raw caption)

``{IMG}`` is ``<|image_pad|>`` for Qwen2-VL (expanded by the processor to one token per merged patch;
VLM2Vec adds no ``<|vision_start|>``/``<|vision_end|>``) and ``<|image_1|>`` for Phi-3.5-V. An image
item without an instruction becomes ``"{IMG}\\n{text}\\n"`` (``"{IMG}\\n"`` without text). The
instruction is the task's (``EncodeInput.instruction``), never sampled; the templates are recorded
in ``meta.extra["prompts"]`` and the instructions seen per task and role in
``meta.extra["instructions"]``. Like VLM2Vec's Qwen2-VL path, images smaller than 28 px on a side are
resized to 56×56; ``image_resolution="high"|"mid"|"low"`` resizes every image to 1344²/672²/128²
as VLM2Vec's MMEB-V2 eval does, and ``min_pixels``/``max_pixels`` bound the Qwen2-VL processor.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from mrbench.encoders.base import EncodeInput, EncoderMeta, Role
from mrbench.encoders.qwen2vl import (
    IMAGE_PAD,
    QWEN2VL_MODEL_TYPES,
    PromptParts,
    encode_prompts,
    forward_hidden,
    last_token_hidden,
    load_qwen2vl,
    merge_lora_adapter,
    read_model_type,
)
from mrbench.encoders.runtime import check_tokenizer, resolve_model_dir
from mrbench.encoders.torch_base import TorchEncoder
from mrbench.errors import EncoderError

if TYPE_CHECKING:
    import torch
    from PIL.Image import Image

    from mrbench.data.schema import TaskInfo

log = logging.getLogger("mrbench.encoders")

BACKBONES = ("qwen2_vl", "phi3_v")
VLM2VEC_IMAGE_TOKENS = {"qwen2_vl": IMAGE_PAD, "phi3_v": "<|image_1|>"}
"""Image placeholder per backbone (VLM2Vec's ``VLM_IMAGE_TOKENS``)."""
RESOLUTIONS = {"high": (1344, 1344), "mid": (672, 672), "low": (128, 128)}
"""VLM2Vec MMEB-V2 eval ``RESOLUTION_MAPPING``."""
MIN_SIDE = 28


def vlm2vec_prompt_parts(instruction: str | None, text: str | None, has_image: bool, backbone: str = "qwen2_vl") -> tuple[str, str, str]:
    """``(prefix, text, suffix)`` of one VLM2Vec input (see the module docstring); ``prefix + text +
    suffix`` is the prompt, and only ``text`` is ever truncated."""
    if backbone not in VLM2VEC_IMAGE_TOKENS:
        raise ValueError(f"unknown VLM2Vec backbone {backbone!r}; known: {', '.join(BACKBONES)}")
    img = VLM2VEC_IMAGE_TOKENS[backbone]
    inst = (instruction or "").strip()
    body_text = text or ""
    lead = (inst + " ") if (inst and body_text) else inst
    if has_image:
        if not inst and not body_text:
            return f"{img}\n", "", ""
        return f"{img}\n{lead}", body_text, "\n"
    if inst:
        return lead, body_text, "\n"
    return "", body_text, ""


def vlm2vec_prompt(instruction: str | None, text: str | None, has_image: bool, backbone: str = "qwen2_vl") -> str:
    """The full VLM2Vec input string of one item (see :func:`vlm2vec_prompt_parts`)."""
    return "".join(vlm2vec_prompt_parts(instruction, text, has_image, backbone))


def prompt_templates(backbone: str) -> dict[str, Any]:
    """The templates recorded in ``meta.extra["prompts"]`` (placeholders ``{instruction}``, ``{text}``)."""
    per_role = {
        "text": vlm2vec_prompt("{instruction}", "{text}", False, backbone),
        "image": vlm2vec_prompt("{instruction}", None, True, backbone),
        "image+text": vlm2vec_prompt("{instruction}", "{text}", True, backbone),
    }
    return {
        "query": dict(per_role),
        "candidate": dict(per_role),
        "without_instruction": {
            "text": vlm2vec_prompt(None, "{text}", False, backbone),
            "image": vlm2vec_prompt(None, None, True, backbone),
            "image+text": vlm2vec_prompt(None, "{text}", True, backbone),
        },
    }


def _prepare_image(image: Image, resolution: str | None, *, min_side_fix: bool) -> Image:
    if resolution is not None:
        return image.resize(RESOLUTIONS[resolution])
    if min_side_fix and (image.size[0] < MIN_SIDE or image.size[1] < MIN_SIDE):
        return image.resize((2 * MIN_SIDE, 2 * MIN_SIDE))
    return image


class VLM2VecEncoder(TorchEncoder):
    """VLM2Vec through mrbench's harness (registered as the ``vlm2vec`` family: ``vlm2vec:<dir or hub id>``).

    Args:
        spec: local checkpoint directory (``local-dir:`` prefix accepted) or hub id.
        backbone: ``"auto"`` (from ``config.json``), ``"qwen2_vl"`` (also Qwen2.5-VL) or ``"phi3_v"``.
        device, precision, batch_size: see :class:`~mrbench.encoders.torch_base.TorchEncoder`.
        max_length: token limit of one input, image tokens included; longer texts are cut (counted in
            ``meta.extra["truncated_texts"]``).
        image_resolution: ``None`` (the processor's own resizing) or ``"high"``/``"mid"``/``"low"``.
        min_pixels, max_pixels: Qwen2-VL image-processor bounds (pixels per image).
        adapter: a peft LoRA adapter directory merged into the weights (Qwen2-VL backbone).
        processor_dir: load the processor from there when the checkpoint lacks it (e.g. the base model).
        num_crops: Phi-3.5-V image crops (VLM2Vec's demo uses 4).
    """

    def __init__(
        self,
        spec: str,
        *,
        backbone: str = "auto",
        device: str | None = "auto",
        precision: str | None = "auto",
        batch_size: int = 8,
        max_length: int = 2048,
        image_resolution: str | None = None,
        min_pixels: int | None = None,
        max_pixels: int | None = None,
        adapter: str | None = None,
        processor_dir: str | None = None,
        num_crops: int = 4,
    ) -> None:
        super().__init__(device=device, precision=precision, batch_size=batch_size)
        self.spec = spec
        self.label = f"vlm2vec:{spec}"
        if backbone not in ("auto", *BACKBONES):
            raise EncoderError(f"encoder {self.label!r}: backbone {backbone!r} is not one of auto, {', '.join(BACKBONES)}")
        if image_resolution is not None and image_resolution not in RESOLUTIONS:
            raise EncoderError(
                f"encoder {self.label!r}: image_resolution {image_resolution!r} is not one of {', '.join(RESOLUTIONS)} or None"
            )
        if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 8:
            raise EncoderError(f"encoder {self.label!r}: max_length must be an integer >= 8, got {max_length!r}")
        self.max_length = max_length
        self.image_resolution = image_resolution
        self._instructions: dict[str, dict[str, list[str]]] = {}

        model_dir, revision = resolve_model_dir(spec, label=self.label, example="/path/to/VLM2Vec-Qwen2VL-2B")
        model_type = read_model_type(model_dir, label=self.label)
        if backbone == "auto":
            if model_type in QWEN2VL_MODEL_TYPES:
                backbone = "qwen2_vl"
            elif model_type == "phi3_v":
                backbone = "phi3_v"
            else:
                raise EncoderError(
                    f"encoder {self.label!r}: {str(model_dir)!r} holds a {model_type!r} model; VLM2Vec backbones are "
                    f"Qwen2-VL ({', '.join(QWEN2VL_MODEL_TYPES)}) and Phi-3.5-V (phi3_v)"
                )
        self.backbone = backbone
        adapter_rev = None
        if backbone == "qwen2_vl":
            vl = load_qwen2vl(spec, label=self.label, device=self.device, dtype=self.dtype, min_pixels=min_pixels,
                              max_pixels=max_pixels, processor_dir=processor_dir, example="/path/to/VLM2Vec-Qwen2VL-2B")
            self.model, self.processor = vl.model, vl.processor
            if adapter is not None:
                self.model, adapter_rev = merge_lora_adapter(self.model, adapter, label=self.label)
            dim = vl.hidden_size
            model_type = vl.model_type
        else:
            if adapter is not None:
                raise EncoderError(f"encoder {self.label!r}: adapter= is supported for the Qwen2-VL backbone only; "
                                   "merge the Phi-3.5-V LoRA into a full checkpoint first")
            self.model, self.processor = _load_phi3v(model_dir, processor_dir, label=self.label, device=self.device,
                                                     dtype=self.dtype, num_crops=num_crops)
            dim = int(self.model.config.hidden_size)
        self.meta = EncoderMeta(
            name=self.label,
            revision=revision if adapter_rev is None else f"{revision}+{adapter_rev}",
            modalities=("text", "image"),
            similarity="cosine",
            dim=dim,
            native_image_text=True,
            needs_pixels=True,
            batch_size=self.batch_size,
            extra={
                "family": "vlm2vec",
                "backbone": backbone,
                "model_type": model_type,
                "model_dir": str(model_dir),
                "pooling": "last",
                "normalize": True,
                "prompts": prompt_templates(backbone),
                "instructions": self._instructions,
                "max_length": max_length,
                "image_resolution": image_resolution,
                "min_pixels": min_pixels,
                "max_pixels": max_pixels,
                "num_crops": num_crops if backbone == "phi3_v" else None,
                "adapter": None if adapter is None else str(adapter),
                "adapter_revision": adapter_rev,
                **self.runtime_extra(),
            },
        )

    # -- helpers ----------------------------------------------------------------------------------
    def _image_prep(self) -> Any:
        from functools import partial

        from mrbench.encoders.qwen2vl import QwenImagePrep

        return QwenImagePrep(self.processor.image_processor,
                             partial(_prepare_image, resolution=self.image_resolution, min_side_fix=True))

    def prepare_image(self, image: Image) -> Any:
        """Qwen2-VL backbones: resize rule + image processor for one image, run by the harness in its
        decode threads. Phi-3.5-V processes images with the prompt (no hook)."""
        if self.backbone != "qwen2_vl":
            raise NotImplementedError
        return self._image_prep()(image)

    def pixel_transform(self) -> Any:
        """The same as :meth:`prepare_image`, picklable, for decode worker processes (Qwen2-VL only)."""
        from mrbench.encoders.qwen2vl import QwenImagePrep

        if self.backbone != "qwen2_vl" or not QwenImagePrep.available(self.processor.image_processor):
            return None
        return self._image_prep()

    def _image(self, it: EncodeInput) -> Any:
        from mrbench.encoders.qwen2vl import PreparedImage

        if isinstance(it.pixels, PreparedImage):
            return it.pixels
        if it.image_path is None and it.image is None:
            return None
        im = it.image
        if im is None:
            from mrbench.encoders.harness import load_rgb

            im = load_rgb(it.image_path, it.id)  # type: ignore[arg-type]
        return _prepare_image(im, self.image_resolution, min_side_fix=self.backbone == "qwen2_vl")

    def _record(self, task: TaskInfo, role: str, items: Sequence[EncodeInput]) -> None:
        seen = self._instructions.setdefault(task.name, {})
        lst = seen.setdefault(role, [])
        for it in items:
            inst = it.instruction or ""
            if inst not in lst:
                lst.append(inst)

    # -- forward ----------------------------------------------------------------------------------
    def _forward(self, items: Sequence[EncodeInput], *, role: Role, task: TaskInfo) -> torch.Tensor:
        import torch.nn.functional as F

        self._record(task, role, items)
        images = [self._image(it) for it in items]
        if self.backbone == "phi3_v":
            emb = self._forward_phi(items, images)
        else:
            parts = [PromptParts(*vlm2vec_prompt_parts(it.instruction, it.text, im is not None), image=im)
                     for it, im in zip(items, images)]
            batch = encode_prompts(self.processor, parts, max_length=self.max_length, padding_side="right",
                                   label=self.label)
            self.count_truncated(batch.n_truncated)
            inputs = batch.to(self.device).inputs
            emb = last_token_hidden(forward_hidden(self.model, inputs), inputs["attention_mask"])
        return F.normalize(emb.float(), dim=-1)

    def _forward_phi(self, items: Sequence[EncodeInput], images: list[Image | None]) -> torch.Tensor:
        """Phi-3.5-V: the checkpoint's processor item by item, right padding, last-token pooling (as
        VLM2Vec's ``Phi3V_process_fn`` + ``MMEBModel._pooling``)."""
        import torch

        from mrbench.encoders.qwen2vl import pad_rows

        tok = self.processor.tokenizer
        rows, pixels, sizes = [], [], []
        for it, im in zip(items, images):
            prefix, text, suffix = vlm2vec_prompt_parts(it.instruction, it.text, im is not None, "phi3_v")
            enc = self._phi_one(prefix, text, suffix, im)
            rows.append(enc["input_ids"][0].tolist())
            if im is not None:
                pixels.append(enc["pixel_values"])
                sizes.append(enc["image_sizes"])
        pad = tok.pad_token_id if tok.pad_token_id is not None else 0
        ids, mask = pad_rows(rows, pad, "right")
        kwargs: dict[str, Any] = {"input_ids": ids.to(self.device), "attention_mask": mask.to(self.device)}
        if pixels:
            kwargs["pixel_values"] = torch.cat(pixels).to(self.device, self.dtype)
            kwargs["image_sizes"] = torch.cat(sizes).to(self.device)
        out = self.model(**kwargs, output_hidden_states=True, return_dict=True)
        return last_token_hidden(out.hidden_states[-1], kwargs["attention_mask"])

    def _phi_one(self, prefix: str, text: str, suffix: str, image: Image | None) -> Any:
        imgs = [image] if image is not None else None
        enc = self.processor(prefix + text + suffix, imgs, return_tensors="pt")
        n = enc["input_ids"].shape[1]
        if n <= self.max_length:
            return enc
        ids = self.processor.tokenizer(text, add_special_tokens=False)["input_ids"]
        keep = len(ids)
        for _ in range(8):
            keep = max(0, keep - (n - self.max_length))
            cut = self.processor.tokenizer.decode(ids[:keep])
            enc = self.processor(prefix + cut + suffix, imgs, return_tensors="pt")
            n = enc["input_ids"].shape[1]
            if n <= self.max_length:
                self.count_truncated(1)
                return enc
            if keep == 0:
                break
        raise EncoderError(f"encoder {self.label!r}: the image and template alone exceed max_length={self.max_length}")


def _load_phi3v(model_dir: Any, processor_dir: str | None, *, label: str, device: str, dtype: Any, num_crops: int) -> tuple[Any, Any]:
    """Phi-3.5-V from a local directory holding its remote code (``trust_remote_code=True``)."""
    from transformers import AutoModelForCausalLM, AutoProcessor

    proc_path = model_dir
    if processor_dir is not None:
        proc_path, _ = resolve_model_dir(processor_dir, label=label)
    try:
        processor = AutoProcessor.from_pretrained(str(proc_path), trust_remote_code=True, num_crops=num_crops)
    except Exception as e:
        raise EncoderError(
            f"encoder {label!r}: cannot load the Phi-3.5-V processor from {str(proc_path)!r} ({type(e).__name__}: "
            f"{str(e).strip().splitlines()[0] if str(e).strip() else ''}); pass processor_dir=<microsoft/Phi-3.5-vision-instruct dir>"
        ) from None
    check_tokenizer(processor.tokenizer, label=label, source=str(proc_path))
    processor.tokenizer.padding_side = "right"
    try:
        model = AutoModelForCausalLM.from_pretrained(
            str(model_dir), trust_remote_code=True, dtype=dtype, _attn_implementation="eager"
        )
    except Exception as e:
        raise EncoderError(
            f"encoder {label!r}: cannot load the Phi-3.5-V model in {str(model_dir)!r} ({type(e).__name__}: "
            f"{str(e).strip().splitlines()[0] if str(e).strip() else ''})"
        ) from None
    return model.to(device).eval(), processor
