"""An ELVA trainer checkpoint as an mrbench encoder.

``ElvaEncoder("runs/elva-tiny/final")`` loads a checkpoint directory written by
:func:`elva_baseline.checkpoint.save_checkpoint` and encodes exactly as the trainer embedded:
texts through the model's own tokenizer, images through the PIL part of its eval transform
(:meth:`ElvaEncoder.prepare_image`, run by the harness in its decode threads or, via
:meth:`ElvaEncoder.pixel_transform`, in decode processes) with the normalisation batched on the
model's device, image+text items by score-level fusion (the sum of the normalised text and image
embeddings). Embeddings are deterministic: the Gaussian exploration head is never sampled.

From Python: ``mrbench.evaluate("mrbench-synth", ElvaEncoder(DIR))`` or
``mrbench.get_encoder("elva_baseline.encoder:ElvaEncoder", spec=DIR)``; once an ``elva`` family is
registered in mrbench's encoder registry, ``mrbench evaluate -e elva:DIR``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mrbench.encoders.base import EncodeInput, EncoderMeta, Role
from mrbench.encoders.torch_base import DualTowerEncoder
from mrbench.errors import EncoderError

if TYPE_CHECKING:
    import torch
    from PIL.Image import Image

    from mrbench.data.schema import TaskInfo

log = logging.getLogger("elva_baseline.encoder")

FUSION = "score-sum of normalised image and text embeddings"
_SUMMARY_TYPES = (str, int, float, bool, type(None))


def training_summary(training: Any) -> dict[str, Any]:
    """The scalar entries of a training config (nested objects and long lists left out)."""
    if not isinstance(training, dict):
        return {}
    out: dict[str, Any] = {}
    for k, v in training.items():
        if isinstance(v, _SUMMARY_TYPES):
            out[k] = v
        elif isinstance(v, (list, tuple)) and len(v) <= 8 and all(isinstance(x, _SUMMARY_TYPES) for x in v):
            out[k] = list(v)
    return out


class ElvaEncoder(DualTowerEncoder):
    """A checkpoint of the ELVA reference trainer (``spec``: the checkpoint directory).

    Args:
        spec: a directory holding ``config.json`` and ``model.safetensors``.
        device, precision, batch_size: see :class:`~mrbench.encoders.torch_base.TorchEncoder`.
        use_instruction: prepend the task instruction to texts (off: the trainer does not use them).

    ``meta``: name ``elva:<spec>``, revision ``sha256:<16 hex>`` of the weights file, dim, and in
    ``extra`` the stage, step, architecture, a summary of the training config and the run-time facts.
    """

    def __init__(
        self,
        spec: str | os.PathLike[str],
        *,
        device: str | None = "auto",
        precision: str | None = "auto",
        batch_size: int = 256,
        use_instruction: bool = False,
    ) -> None:
        from elva_baseline.checkpoint import load_checkpoint

        raw = os.fspath(spec) if isinstance(spec, (str, os.PathLike)) else spec
        label = f"elva:{raw}"
        if not isinstance(raw, str) or not raw.strip():
            raise EncoderError(f"encoder {label!r}: pass a checkpoint directory, e.g. 'elva:runs/elva-tiny/final'")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise EncoderError(f"encoder {label!r}: batch_size must be a positive integer, got {batch_size!r}")
        super().__init__(device=device, precision=precision, batch_size=batch_size)
        self.spec = raw.strip()
        self.label = label
        self.use_instruction = bool(use_instruction)
        self.directory = Path(self.spec).expanduser()
        model, cfg = load_checkpoint(self.directory, device=self.device)
        self.model = model
        self.config = cfg
        sha = str(cfg["weights_sha256"])
        mcfg = cfg["model"]
        extra: dict[str, Any] = {
            "family": "elva",
            "checkpoint": str(self.directory.resolve()),
            "stage": cfg["stage"],
            "step": cfg["step"],
            "arch": model.arch,
            "weights_sha256": sha,
            "pretrained": mcfg.get("pretrained"),
            "training": training_summary(cfg.get("training")),
            "trained_with": {k: cfg.get(k) for k in ("mrbench_version", "elva_baseline_version", "torch_version", "open_clip_version")},
            "context_length": model.context_length,
            "image_transform": {
                "size": list(model.image_size),
                "resize_mode": model.preprocess_cfg.get("resize_mode"),
                "interpolation": model.preprocess_cfg.get("interpolation"),
                "mean": [float(x) for x in model.preprocess_cfg.get("mean", ())],
                "std": [float(x) for x in model.preprocess_cfg.get("std", ())],
            },
            "fusion": FUSION,
            "gaussian_head": "not used (deterministic embeddings)",
            "text_prompt": "raw text (no prompt template)",
            "use_instruction": self.use_instruction,
            **self.runtime_extra(),
        }
        self.meta = EncoderMeta(
            name=label,
            revision=f"sha256:{sha[:16]}",
            modalities=("text", "image"),
            similarity="cosine",
            dim=model.embed_dim,
            native_image_text=False,
            needs_pixels=True,
            batch_size=self.batch_size,
            extra=extra,
        )

    # -- DualTowerEncoder hooks -------------------------------------------------------------------
    def prepare_image(self, image: Image) -> torch.Tensor:
        """The PIL part of the model's eval transform -> ``uint8 [3, H, W]`` (normalised on the device
        in :meth:`encode_images`)."""
        return self.model.preprocess(image)

    def pixel_transform(self) -> Any:
        """The same as a picklable function (numpy out) for decode worker processes."""
        return self.model.pixel_transform

    def encode_texts(self, texts: list[str]) -> torch.Tensor:
        return self.model.encode_text(self.model.tokenize(texts))

    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(pixels)

    def encode(self, items: Sequence[EncodeInput], *, role: Role, task: TaskInfo) -> np.ndarray:
        texts = [self.text_of(it) for it in items if it.text]
        if texts:
            self.count_truncated(self._count_too_long(texts))
        return super().encode(items, role=role, task=task)

    def _count_too_long(self, texts: list[str]) -> int:
        try:
            from mrbench.encoders.openclip import _count_too_long

            return _count_too_long(self.model.tokenizer, texts, self.model.context_length)
        except Exception as e:  # counting must never break encoding
            log.debug("elva: could not count truncated texts (%s)", e)
            return 0
