"""Base classes for model-backed encoders (every real family builds on these).

:class:`TorchEncoder` owns the run-time plumbing: device and precision (recorded in
``meta.extra``), ``torch.inference_mode`` + autocast, out-of-memory back-off (halve and retry,
logged), float32 output, and the truncation counter.

:class:`DualTowerEncoder` is the CLIP-style split: a text tower and an image tower. Items are
routed by modality; an **image+text** item is encoded by *score-level fusion* — the sum of the
L2-normalised image and text embeddings (UniIR's CLIP-SF / BLIP-SF recipe), which the harness then
re-normalises for cosine. A text-only tower (``modalities=("text",)``) is the *blind baseline*: it
reads only the text of an item and encodes an item without text as the empty string (so every
image-only candidate ties).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from mrbench.encoders.base import EncodeInput, EncoderMeta, Role
from mrbench.encoders.runtime import (
    GraphedCall,
    autocast,
    dtype_name,
    resolve_device,
    resolve_dtype,
    run_with_backoff,
    to_device,
)

if TYPE_CHECKING:
    import torch
    from PIL.Image import Image

    from mrbench.data.schema import TaskInfo


class TorchEncoder:
    """Shared run-time behaviour; subclasses implement :meth:`_forward` and set ``self.meta``.

    Args:
        device: ``"auto"`` (CUDA when present), ``"cpu"``, ``"cuda"``, ``"cuda:N"``.
        precision: ``"auto"`` (bf16/fp16 on CUDA, fp32 on CPU), ``"fp32"``, ``"bf16"``, ``"fp16"``.
        batch_size: items per forward; halved on out-of-memory and kept at the smaller size.
    """

    meta: EncoderMeta

    def __init__(self, *, device: str | None = "auto", precision: str | None = "auto", batch_size: int = 64) -> None:
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(self.device, precision)
        self.batch_size = int(batch_size)
        self.truncated_texts = 0

    # -- subclasses -------------------------------------------------------------------------------
    def _forward(self, items: Sequence[EncodeInput], *, role: Role, task: TaskInfo) -> torch.Tensor:
        """Embeddings ``[len(items), D]`` for one micro-batch (any float dtype, any device)."""
        raise NotImplementedError

    # -- shared -----------------------------------------------------------------------------------
    def runtime_extra(self) -> dict[str, Any]:
        """Fields every family records in ``meta.extra``."""
        return {"device": self.device, "precision": dtype_name(self.dtype), "truncated_texts": self.truncated_texts}

    def count_truncated(self, n: int) -> None:
        """Record ``n`` more texts cut at the model's context length (reported in the results)."""
        if n:
            self.truncated_texts += int(n)
            if hasattr(self, "meta"):
                self.meta.extra["truncated_texts"] = self.truncated_texts

    def _shrink(self, bs: int) -> None:
        self.batch_size = bs
        for graphed in getattr(self, "_graphed", {}).values():
            graphed.clear()  # captured for the old size: their memory goes back to the allocator
        if hasattr(self, "meta"):
            self.meta.extra["batch_size_after_oom"] = bs

    def encode(self, items: Sequence[EncodeInput], *, role: Role, task: TaskInfo) -> np.ndarray:
        return self.encode_async(items, role=role, task=task)()

    def encode_async(self, items: Sequence[EncodeInput], *, role: Role, task: TaskInfo) -> Callable[[], np.ndarray]:
        """Start encoding ``items``; the returned function waits and gives float32 ``[len(items), D]``.

        On a CUDA device the micro-batches' forwards are queued, each output is copied to pinned
        host memory without waiting, and the function waits on an event recorded after the copies:
        the caller can queue the next batch before it waits for this one, so the GPU does not idle
        while the host checks a batch (the harness does this, see
        :func:`mrbench.encoders.harness.encode_items`). Elsewhere the work is done before this returns.
        Subclasses that add work to every call override this method (:meth:`encode` calls it).
        """
        import torch

        on_cuda = torch.device(self.device).type == "cuda"

        def run(chunk: Sequence[EncodeInput]) -> torch.Tensor:
            with torch.inference_mode(), autocast(self.device, self.dtype):
                out = self._forward(chunk, role=role, task=task)
            out = out.detach().float()
            if on_cuda and out.is_cuda:
                host = torch.empty(out.shape, dtype=torch.float32, pin_memory=True)
                return host.copy_(out, non_blocking=True)
            return out.cpu()

        parts = run_with_backoff(run, list(items), self.batch_size, label=self.meta.name, on_shrink=self._shrink)
        if not parts:
            empty = np.zeros((0, self.meta.dim or 0), dtype=np.float32)
            return lambda: empty
        done = None
        if on_cuda:
            done = torch.cuda.Event()
            done.record(torch.cuda.current_stream(self.device))

        def finish() -> np.ndarray:
            if done is not None:
                done.synchronize()
            return (parts[0] if len(parts) == 1 else torch.cat(parts)).numpy()

        return finish


class DualTowerEncoder(TorchEncoder):
    """CLIP-style encoder: subclasses implement :meth:`encode_texts`, :meth:`encode_images` and
    :meth:`prepare_image` (run by the harness in its decode threads, so the transform does not
    starve the model).

    ``use_instruction``: prepend the task's instruction (``"<instruction> <text>"``) to texts; off
    by default because CLIP-style models were not trained with instructions.

    Two optional fast paths the harness uses when a subclass supports them:

    * ``pixels_on_device`` (true here): on a CUDA encoder the harness stacks the next batch's
      prepared pixels into pinned memory and copies them to :attr:`device` on a side stream while
      the current batch runs, so :meth:`encode_images` receives device tensors;
    * :meth:`text_transform` + :meth:`encode_tokens`: the harness tokenises the next batch's texts
      (:meth:`text_of`) in worker processes ahead of the model and hands the rows as
      ``EncodeInput.tokens``; without them :meth:`encode_texts` tokenises in the forward.
    """

    use_instruction: bool = False
    pixels_on_device: bool = True
    cuda_graphs: bool = False
    """Replay the towers' forwards (:meth:`encode_images`, :meth:`encode_tokens`) from CUDA graphs for
    full batches on a CUDA device (:class:`~mrbench.encoders.runtime.GraphedCall`)."""

    def encode_texts(self, texts: list[str]) -> torch.Tensor:
        """``[len(texts), D]`` text-tower embeddings (not necessarily normalised)."""
        raise NotImplementedError

    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """``[B, D]`` image-tower embeddings from a stacked batch of prepared images."""
        raise NotImplementedError

    def prepare_image(self, image: Image) -> torch.Tensor:
        """One decoded RGB image → the model's input tensor ``[3, H, W]`` (its own transform)."""
        raise NotImplementedError

    def text_transform(self) -> Any:
        """A picklable ``list[str] → int64 [n, L]`` token-id function whose rows :meth:`encode_tokens`
        accepts, or ``None`` (the default) when :meth:`encode_texts` tokenises by itself."""
        return None

    def encode_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """``[B, D]`` text-tower embeddings from a :meth:`_token_batch` of :meth:`text_transform` rows."""
        raise NotImplementedError

    def _token_batch(self, rows: list[Any]) -> torch.Tensor:
        """One batch's :meth:`text_transform` rows as the tensor :meth:`encode_tokens` takes, on
        :attr:`device` (here: stacked as they are)."""
        import torch

        return to_device(torch.as_tensor(np.stack([np.asarray(r) for r in rows])), self.device)

    def text_of(self, it: EncodeInput) -> str:
        """The text the tower reads for ``it`` (instruction prepended when ``use_instruction``)."""
        text = it.text or ""
        if self.use_instruction and it.instruction:
            return f"{it.instruction} {text}".strip()
        return text

    def _pixels_of(self, it: EncodeInput) -> torch.Tensor:
        if isinstance(it.pixels, np.ndarray):  # from a decode worker process
            import torch

            return torch.from_numpy(it.pixels)
        if it.pixels is not None:
            return it.pixels
        if it.image is not None:
            return self.prepare_image(it.image)
        from mrbench.encoders.harness import load_rgb

        assert it.image_path is not None
        return self.prepare_image(load_rgb(it.image_path, it.id))

    def _tower(self, name: str, x: torch.Tensor) -> torch.Tensor:
        """``getattr(self, name)(x)``, through a CUDA graph when :attr:`cuda_graphs` is on."""
        if not self.cuda_graphs:
            return getattr(self, name)(x)
        graphed = self.__dict__.setdefault("_graphed", {})
        if name not in graphed:
            graphed[name] = GraphedCall(lambda t: getattr(self, name)(t), label=self.meta.name,
                                        eligible=lambda t: t.shape[0] == self.batch_size)
        return graphed[name](x)

    def _forward(self, items: Sequence[EncodeInput], *, role: Role, task: TaskInfo) -> torch.Tensor:
        import torch
        import torch.nn.functional as F

        reads_images = "image" in self.meta.modalities
        has_img = [reads_images and it.image_path is not None for it in items]
        # a text-reading tower also encodes text-less items when it cannot see their image (blind baseline)
        has_txt = [it.text is not None or not img for it, img in zip(items, has_img)]
        out: torch.Tensor | None = None
        t_idx = [i for i, h in enumerate(has_txt) if h]
        i_idx = [i for i, h in enumerate(has_img) if h]
        t_emb = None
        if t_idx:
            rows = [items[i].tokens for i in t_idx]
            if all(r is not None for r in rows):  # tokenised ahead by the harness
                t_raw = self._tower("encode_tokens", self._token_batch(rows))
            else:
                t_raw = self.encode_texts([self.text_of(items[i]) for i in t_idx])
            t_emb = F.normalize(t_raw.float(), dim=-1)
        i_emb = None
        if i_idx:
            pix = torch.stack([self._pixels_of(items[i]) for i in i_idx]).to(self.device, non_blocking=True)
            i_emb = F.normalize(self._tower("encode_images", pix).float(), dim=-1)
        if i_emb is None and len(t_idx) == len(items):  # one modality: no scatter (and no device sync)
            return t_emb  # type: ignore[return-value]
        if t_emb is None and len(i_idx) == len(items):
            return i_emb  # type: ignore[return-value]
        d = (t_emb if t_emb is not None else i_emb).shape[1]  # type: ignore[union-attr]
        out = torch.zeros((len(items), d), dtype=torch.float32, device=self.device)
        if t_emb is not None:
            out[t_idx] += t_emb
        if i_emb is not None:
            out[i_idx] += i_emb
        return out
