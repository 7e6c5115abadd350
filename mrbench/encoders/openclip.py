"""The ``openclip`` encoder family: any model `open_clip <https://github.com/mlfoundations/open_clip>`_ builds.

Spec forms (what follows ``openclip:``):

* ``ARCH/TAG`` — an architecture and pretrained tag open_clip knows (``open_clip.list_pretrained()``),
  e.g. ``ViT-B-32/laion2b_s34b_b79k``. The weights are taken from the local cache (Hugging Face hub
  cache, or ``~/.cache/clip`` for URL downloads) when present; otherwise they are downloaded — or,
  with ``HF_HUB_OFFLINE=1``, refused at once with the file to pass instead. The tag's preprocessing
  (mean/std, interpolation, resize mode) and QuickGELU flag are applied. ``pretrained="/path/file"``
  next to a tag loads that file with the tag's preprocessing (the offline route).
* ``ARCH/path/to/checkpoint.{safetensors,pt,pth,bin}`` or ``ARCH`` with ``pretrained="/path/file"``
  (or ``pretrained="TAG"``) — a local checkpoint (a state dict, optionally under ``"state_dict"``).
* ``local-dir:DIR`` — a directory holding ``open_clip_config.json`` (``model_cfg`` and optional
  ``preprocess_cfg``) and the weights (``open_clip_model.safetensors``, ``open_clip_pytorch_model.bin``…),
  as ``hf download org/name --local-dir DIR`` writes it.
* ``hf-hub:org/name`` — the same layout on the Hugging Face hub (cached copy first; offline and not
  cached → one-line error naming the ``local-dir:`` form).
* ``ARCH`` with ``random_init=True`` — random weights (seeded by ``seed``; revision
  ``random-init:<seed>``), for tests and timing only. Without weights and without ``random_init``
  the encoder refuses to build, so nobody evaluates random weights by accident.

``model_config`` (a dict or a JSON file: a model config with ``embed_dim``, ``vision_cfg``,
``text_cfg``, or an ``open_clip_config.json`` with ``model_cfg``/``preprocess_cfg``) builds a custom
architecture; ``ARCH`` is then only its label.

Texts go through the model's own tokenizer (texts longer than the context length are truncated by it
and counted in ``meta.extra["truncated_texts"]``), images through the model's own eval transform in
:meth:`OpenClipEncoder.prepare_image` (run by the harness in its decode threads). Image+text items
are encoded by score-level fusion (see :class:`~mrbench.encoders.torch_base.DualTowerEncoder`).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import os
import re
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mrbench.encoders.base import EncodeInput, EncoderMeta, Role
from mrbench.encoders.runtime import file_revision, hub_offline
from mrbench.encoders.torch_base import DualTowerEncoder
from mrbench.errors import EncoderError, UnknownNameError, did_you_mean

if TYPE_CHECKING:
    import torch
    from PIL.Image import Image

    from mrbench.data.schema import TaskInfo

log = logging.getLogger("mrbench.encoders.openclip")

FUSION = "score-sum of normalised image and text embeddings"
CHECKPOINT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".npz")
# the weight file names open_clip looks for in a model directory, most preferred first
DIR_WEIGHT_NAMES = (
    "open_clip_model.safetensors",
    "open_clip_pytorch_model.safetensors",
    "open_clip_pytorch_model.bin",
    "open_clip_pytorch_model.pth",
    "model.safetensors",
    "pytorch_model.bin",
    "pytorch_model.pth",
    "model.pth",
)
CONFIG_NAME = "open_clip_config.json"
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")
_COMMIT = re.compile(r"^[0-9a-f]{40}$")
# tensors open_clip resizes on load (a mismatch there is not by itself fatal)
_RESIZED_ON_LOAD = ("positional_embedding", "visual.positional_embedding", "text.positional_embedding")
_CUSTOM_CONFIGS: dict[str, str] = {}  # config digest -> name registered with open_clip


@dataclass
class _Source:
    """Where the architecture, the weights and the preprocessing come from (resolved, not loaded)."""

    kind: str  # "builtin" | "custom" | "local-dir" | "hf-hub"
    arch: str  # label recorded in the results
    model_name: str  # what open_clip.create_model / get_tokenizer are given
    tokenizer_name: str
    model_cfg: dict[str, Any]
    weights: Path | None = None
    revision: str = "none"
    pretrained: str | None = None  # tag or path as the user gave it
    tag: str | None = None
    preprocess: dict[str, Any] = field(default_factory=dict)  # overrides of the eval transform
    force_quick_gelu: bool = False
    config_digest: str | None = None  # of a config from outside open_clip (model_config, local-dir), for the revision
    info: dict[str, Any] = field(default_factory=dict)  # more facts for meta.extra


class OpenClipEncoder(DualTowerEncoder):
    """An open_clip dual encoder (CLIP, SigLIP, CoCa, EVA… — whatever ``open_clip.create_model`` builds).

    Args:
        spec: see the module docstring (``ARCH/TAG``, ``ARCH/path/ckpt``, ``local-dir:DIR``,
            ``hf-hub:org/name``, ``ARCH``).
        pretrained: a tag or a checkpoint file for a bare ``ARCH`` spec; a checkpoint file next to an
            ``ARCH/TAG`` spec (weights from the file, preprocessing from the tag).
        model_config: a custom architecture (dict or JSON file path).
        device, precision, batch_size: see :class:`~mrbench.encoders.torch_base.TorchEncoder`.
        use_instruction: prepend the task instruction to texts (off: CLIP was not trained with them).
        random_init: allow random weights (only without any weights given).
        seed: the seed of the random initialisation.
        cache_dir: Hugging Face hub cache (and URL download directory) to look in instead of the
            default ones.
        cuda_graphs: on a CUDA device, replay each tower's forward for full batches from a CUDA
            graph (one launch per batch instead of one per kernel; falls back to eager with one
            warning if a model cannot be captured). Ignored on the CPU.
    """

    def __init__(
        self,
        spec: str,
        *,
        pretrained: str | None = None,
        model_config: str | dict[str, Any] | None = None,
        device: str | None = "auto",
        precision: str | None = "auto",
        batch_size: int = 256,
        use_instruction: bool = False,
        random_init: bool = False,
        seed: int = 0,
        cache_dir: str | None = None,
        cuda_graphs: bool = True,
    ) -> None:
        label = f"openclip:{spec}"
        if not isinstance(spec, str) or not spec.strip():
            raise EncoderError(
                f"encoder {label!r}: empty spec; pass e.g. 'openclip:ViT-B-32/laion2b_s34b_b79k' or 'openclip:local-dir:DIR'"
            )
        for key, val, types, what in (
            ("pretrained", pretrained, (str, os.PathLike, type(None)), "a string (tag or file path)"),
            ("model_config", model_config, (str, dict, os.PathLike, type(None)), "a JSON file path or an object"),
            ("cache_dir", cache_dir, (str, os.PathLike, type(None)), "a directory path"),
        ):
            if not isinstance(val, types):
                raise EncoderError(f"encoder {label!r}: {key} must be {what} (or null), got {type(val).__name__}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise EncoderError(f"encoder {label!r}: batch_size must be a positive integer, got {batch_size!r}")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise EncoderError(f"encoder {label!r}: seed must be an integer, got {seed!r}")
        if not isinstance(cuda_graphs, bool):
            raise EncoderError(f"encoder {label!r}: cuda_graphs must be true or false, got {cuda_graphs!r}")
        super().__init__(device=device, precision=precision, batch_size=batch_size)
        self.cuda_graphs = cuda_graphs and self.device.startswith("cuda")
        self.spec = spec.strip()
        self.label = label
        self.use_instruction = bool(use_instruction)
        open_clip = _import_open_clip(label)
        cache = str(Path(cache_dir).expanduser()) if cache_dir else None

        src = _resolve(
            open_clip, self.spec, label=label, pretrained=None if pretrained is None else os.fspath(pretrained),
            model_config=model_config, random_init=bool(random_init), seed=seed, cache_dir=cache,
        )
        self.source = src
        model = _build_model(open_clip, src, label=label, seed=seed, cache_dir=cache)
        if src.weights is not None:
            _load_weights(open_clip, model, src.weights, label=label, arch=src.arch)
        model.requires_grad_(False)
        self.model = model.eval().to(self.device)

        self.tokenizer = _build_tokenizer(open_clip, src, label=label, cache_dir=cache)
        self.context_length = int(
            getattr(self.tokenizer, "context_length", 0)
            or open_clip.get_model_tokenize_cfg(model).get("context_length", 77)
        )
        pp = dict(open_clip.get_model_preprocess_cfg(model))
        self.preprocess = open_clip.image_transform(
            pp.get("size", 224),
            is_train=False,
            mean=pp.get("mean"),
            std=pp.get("std"),
            resize_mode=pp.get("resize_mode"),
            interpolation=pp.get("interpolation"),
            fill_color=pp.get("fill_color", 0),
        )
        self._pil_stage, self._norm = _split_transform(self.preprocess)
        if self._norm is not None:  # on the model's device once: a per-batch copy would wait for the GPU
            self._norm = (self._norm[0].to(self.device), self._norm[1].to(self.device))
        dim = int(src.model_cfg["embed_dim"])
        extra: dict[str, Any] = {
            "family": "openclip",
            "open_clip_version": str(getattr(open_clip, "__version__", "?")),
            "arch": src.arch,
            "source": src.kind,
            "pretrained": src.pretrained,
            "tag": src.tag,
            "weights": str(src.weights) if src.weights is not None else None,
            "random_init": src.weights is None,
            **({"seed": seed} if src.weights is None else {}),
            "quick_gelu": bool(src.model_cfg.get("quick_gelu", False) or src.force_quick_gelu),
            **src.info,
            "tokenizer": type(self.tokenizer).__name__,
            "context_length": self.context_length,
            "image_transform": {
                "size": list(_pair(pp.get("size", 224))),
                "resize_mode": pp.get("resize_mode"),
                "interpolation": pp.get("interpolation"),
                "mean": [float(x) for x in pp.get("mean", ())],
                "std": [float(x) for x in pp.get("std", ())],
            },
            "fusion": FUSION,
            "text_prompt": "raw text (no prompt template)",
            "use_instruction": self.use_instruction,
            "cuda_graphs": self.cuda_graphs,
            **self.runtime_extra(),
        }
        self.meta = EncoderMeta(
            name=label,
            revision=src.revision,
            modalities=("text", "image"),
            similarity="cosine",
            dim=dim,
            native_image_text=False,
            needs_pixels=True,
            batch_size=self.batch_size,
            extra=extra,
        )

    # -- DualTowerEncoder hooks -------------------------------------------------------------------
    def prepare_image(self, image: Image) -> torch.Tensor:
        """The model's own eval transform → ``[3, H, W]``.

        When the transform ends in ``ToTensor, Normalize`` (every open_clip eval transform), only its
        PIL part (resize, crop, mode) runs here and a ``uint8`` tensor is returned; the float
        conversion and normalisation run batched on the model's device in :meth:`encode_images`
        (the same arithmetic: ``x/255``, then ``(x - mean)/std``). Torch ops in many decode threads
        would each start their own intra-op thread pool and starve one another.
        """
        if self._norm is None:
            return self.preprocess(image)
        import torch

        return torch.from_numpy(PilToUint8(self._pil_stage)(image))

    def pixel_transform(self) -> PilToUint8 | None:
        """The PIL stages as a picklable function for decode worker processes (``None`` when the
        transform does not split; threads run :meth:`prepare_image` then)."""
        return PilToUint8(self._pil_stage) if self._norm is not None else None

    def encode_texts(self, texts: list[str]) -> torch.Tensor:
        tokens = self.tokenizer(list(texts))
        return self.model.encode_text(tokens.to(self.device))

    def text_transform(self) -> TokenizeToNumpy:
        """open_clip's tokenizer as a picklable ``texts → int64 [n, context_length + 1]`` function
        (the last column flags a text cut at the context length, see :class:`TokenizeToNumpy`)."""
        return TokenizeToNumpy(self.tokenizer, self.context_length)

    def encode_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.model.encode_text(tokens[:, : self.context_length].to(self.device))

    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        import torch

        if pixels.dtype == torch.uint8:
            assert self._norm is not None
            mean, std = self._norm
            if mean.device != pixels.device:
                mean, std = mean.to(pixels.device), std.to(pixels.device)
            pixels = pixels.float().div_(255.0).sub_(mean).div_(std)
        return self.model.encode_image(pixels)

    def encode_async(self, items: Sequence[EncodeInput], *, role: Role, task: TaskInfo) -> Callable[[], np.ndarray]:
        # counted once per call here, not per micro-batch (an out-of-memory retry would count twice)
        rows = [it.tokens for it in items if it.text]
        if rows and all(r is not None for r in rows):  # tokenised ahead: the flag column counts the cut ones
            self.count_truncated(int(sum(int(np.asarray(r)[-1]) for r in rows)))
        elif rows:
            self.count_truncated(self.count_too_long([self.text_of(it) for it in items if it.text]))
        return super().encode_async(items, role=role, task=task)

    # -- truncation -------------------------------------------------------------------------------
    def count_too_long(self, texts: list[str]) -> int:
        """How many of ``texts`` the tokenizer cuts at the model's context length."""
        try:
            return _count_too_long(self.tokenizer, texts, self.context_length)
        except Exception as e:  # counting must never break encoding
            log.debug("openclip: could not count truncated texts (%s)", e)
            return 0


# ----------------------------------------------------------------------------------------------------
# resolution of the spec (no model is built here)


def _import_open_clip(label: str) -> Any:
    try:
        import open_clip
    except ImportError as e:
        raise EncoderError(
            f"encoder {label!r}: open_clip is not installed ({e}); install it with: pip install 'mrbench[clip]'"
        ) from None
    version = str(getattr(open_clip, "__version__", "0"))
    major = re.match(r"\d+", version)
    if major is None or int(major.group()) < 3:
        raise EncoderError(
            f"encoder {label!r}: open_clip {version} is too old (the local-dir: schema and create_model's "
            "load_weights/pretrained_text arguments came with 3.0); upgrade: pip install 'open_clip_torch>=3.0'"
        )
    return open_clip


def _resolve(
    open_clip: Any,
    spec: str,
    *,
    label: str,
    pretrained: str | None,
    model_config: str | dict[str, Any] | None,
    random_init: bool,
    seed: int,
    cache_dir: str | None,
) -> _Source:
    if spec.startswith(("local-dir:", "hf-hub:")):
        schema = spec.split(":", 1)[0]
        for key, val in (("pretrained", pretrained), ("model_config", model_config)):
            if val is not None:
                raise EncoderError(
                    f"encoder {label!r}: {key} is not used with a '{schema}:' spec (the directory holds the config "
                    f"and weights); drop it, or use 'openclip:ARCH/path/to/checkpoint' with {key}"
                )
        if schema == "local-dir":
            src = _local_dir(spec[len("local-dir:"):], label=label)
        else:
            src = _hf_hub(open_clip, spec[len("hf-hub:"):], label=label, cache_dir=cache_dir)
        return _check_random(src, label=label, random_init=random_init, seed=seed)

    arch, _, rest = spec.partition("/")
    if not arch:
        raise UnknownNameError(
            f"encoder {label!r}: the spec must start with an architecture, e.g. 'openclip:ViT-B-32/laion2b_s34b_b79k'"
        )
    if rest and pretrained is not None and not (_is_tag_like(rest) and _is_path_like(pretrained)):
        raise EncoderError(
            f"encoder {label!r}: weights given twice ({rest!r} in the spec and pretrained={pretrained!r}); "
            "give one (pretrained may only add a checkpoint file to an 'ARCH/TAG' spec)"
        )
    weights_arg = rest or pretrained
    tag: str | None = None
    file_arg: str | None = None
    if rest and pretrained is not None:  # ARCH/TAG + a local file: the tag's preprocessing, the file's weights
        tag, file_arg = rest, pretrained
    elif weights_arg:
        if _is_path_like(weights_arg):
            file_arg = weights_arg
        else:
            tag = weights_arg

    if model_config is not None:
        if tag is not None:
            raise EncoderError(
                f"encoder {label!r}: {tag!r} looks like a pretrained tag, but a custom model_config has no tags; "
                f"pass a checkpoint file ('openclip:{arch}/path/to/checkpoint.safetensors' or pretrained='/path/file')"
            )
        src = _custom(open_clip, arch, model_config, label=label)
    else:
        src = _builtin(open_clip, arch, label=label)

    if tag is not None:
        _apply_tag(open_clip, src, tag, label=label, cache_dir=cache_dir, with_file=file_arg is not None)
    if file_arg is not None:
        path = _checkpoint_file(file_arg, label=label)
        src.weights, src.revision = path, _file_or_commit_revision(path)
        src.pretrained = file_arg if tag is None else f"{tag} + {file_arg}"
    if src.weights is None and not random_init:
        tags = open_clip.list_pretrained_tags_by_model(arch) if src.kind == "builtin" else []
        shown = ", ".join(tags[:6]) + (f", … {len(tags) - 6} more" if len(tags) > 6 else "")
        example = f"'openclip:{arch}/{tags[0]}' (tags: {shown}), " if tags else ""
        raise EncoderError(
            f"encoder {label!r}: no weights given; pass a pretrained tag {example}a checkpoint "
            f"('openclip:{arch}/path/to/checkpoint.safetensors' or --encoder-kwargs '{{\"pretrained\": \"/path/file\"}}'), "
            "or random_init=True for random weights (tests and timing only)"
        )
    return _check_random(src, label=label, random_init=random_init, seed=seed)


def _check_random(src: _Source, *, label: str, random_init: bool, seed: int) -> _Source:
    if random_init and src.weights is not None:
        raise EncoderError(
            f"encoder {label!r}: random_init=True but weights were given ({src.weights}); drop one of them"
        )
    if src.weights is None:
        if not random_init:
            raise EncoderError(
                f"encoder {label!r}: no weights found for {src.arch}; pass weights, or random_init=True for random "
                "weights (tests and timing only)"
            )
        src.revision = f"random-init:{seed}"
    if src.config_digest and not _COMMIT.match(src.revision):
        # the architecture and preprocessing come from a config outside open_clip: a changed config with the
        # same weights must not reuse cached embeddings
        src.revision = f"{src.revision}+config:{src.config_digest}"
    return src


def _is_path_like(s: str) -> bool:
    return (
        s.lower().endswith(CHECKPOINT_SUFFIXES)
        or "/" in s
        or os.sep in s
        or s.startswith(("~", "."))
    )


def _is_tag_like(s: str) -> bool:
    return not _is_path_like(s)


def _builtin(open_clip: Any, arch: str, *, label: str) -> _Source:
    models = open_clip.list_models()
    if arch not in models:
        if ":" in arch and arch.split(":", 1)[0] in models:
            a, t = arch.split(":", 1)
            raise UnknownNameError(
                f"encoder {label!r}: write the pretrained tag after a '/', as in 'openclip:{a}/{t}'"
            )
        lower = {m.lower(): m for m in models}
        hint = f" (did you mean {lower[arch.lower()]!r}?)" if arch.lower() in lower else did_you_mean(arch, models)
        raise UnknownNameError(
            f"encoder {label!r}: unknown open_clip architecture {arch!r}{hint}; open_clip.list_models() lists the "
            f"{len(models)} known ones (or pass model_config for a custom one, 'local-dir:DIR' or 'hf-hub:org/name')"
        )
    return _Source(
        kind="builtin", arch=arch, model_name=arch, tokenizer_name=arch, model_cfg=open_clip.get_model_config(arch)
    )


def _apply_tag(open_clip: Any, src: _Source, tag: str, *, label: str, cache_dir: str | None, with_file: bool) -> None:
    arch = src.arch
    tags = list(open_clip.list_pretrained_tags_by_model(arch))
    if not open_clip.is_pretrained_cfg(arch, tag):
        if not tags:
            raise UnknownNameError(
                f"encoder {label!r}: open_clip has no pretrained tags for {arch!r} (so {tag!r} is unknown); "
                f"pass a checkpoint file: 'openclip:{arch}/path/to/checkpoint.safetensors'"
            )
        raise UnknownNameError(
            f"encoder {label!r}: unknown pretrained tag {tag!r} for {arch}{did_you_mean(tag, tags)}; "
            f"known tags for {arch}: {', '.join(tags)}"
        )
    pcfg = dict(open_clip.get_pretrained_cfg(arch, tag))
    src.tag = tag
    src.pretrained = tag
    src.preprocess = {k: pcfg[k] for k in ("mean", "std", "interpolation", "resize_mode") if pcfg.get(k) is not None}
    if pcfg.get("quick_gelu") and not src.model_cfg.get("quick_gelu"):
        src.force_quick_gelu = True  # the tag was trained with QuickGELU (open_clip only warns about it)
    repo, fname = _tag_hub_file(pcfg)
    fname = fname or os.path.basename(str(pcfg.get("url") or "")) or None
    if repo:
        src.info["hub_repo"] = repo
    if with_file:
        return
    cached = _cached_tag_weights(pcfg, cache_dir)
    if cached is None:
        where = f"hub repo {repo}" if repo else str(pcfg.get("url") or "?")
        if hub_offline():
            get = f"`hf download {repo} --local-dir DIR`" if repo else f"download {pcfg.get('url')} into DIR"
            raise EncoderError(
                f"encoder {label!r}: the weights of tag {tag!r} ({where}) are not in the local cache and the hub is "
                f"offline (HF_HUB_OFFLINE=1); fetch them where you are online ({get}) and pass the weights file: "
                f"--encoder-kwargs '{{\"pretrained\": \"DIR/{fname or 'weights.pt'}\"}}' (keeps the tag's preprocessing)"
            )
        try:
            with _quiet_open_clip():
                path = open_clip.download_pretrained(pcfg, cache_dir=cache_dir)
        except Exception as e:
            raise EncoderError(
                f"encoder {label!r}: could not download the weights of tag {tag!r} from {where} ({_first_line(e)}); "
                "pass a local checkpoint file with pretrained='/path/file'"
            ) from None
        if not path:
            raise EncoderError(f"encoder {label!r}: open_clip has no download location for tag {tag!r}")
        cached = Path(path)
    src.weights = cached
    src.revision = _file_or_commit_revision(cached)


def _tag_hub_file(pcfg: dict[str, Any]) -> tuple[str | None, str | None]:
    """``(repo, file name)`` of a tag's hub weights (file name defaulted like open_clip does)."""
    hub = pcfg.get("hf_hub") or ""
    if not hub:
        return None, None
    from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME

    repo, fname = os.path.split(hub)
    fname = fname or HF_WEIGHTS_NAME
    if fname == HF_WEIGHTS_NAME:
        fname = HF_SAFE_WEIGHTS_NAME  # what open_clip fetches first
    return repo, fname


def _hub_candidates(fname: str) -> list[str]:
    from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME

    out = []
    if fname in (HF_WEIGHTS_NAME, HF_SAFE_WEIGHTS_NAME):
        out = [HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME]
    elif fname.endswith((".bin", ".pth")):
        out = [fname[:-4] + ".safetensors", fname]
    else:
        out = [fname]
    return out


def _from_hub_cache(repo: str, filename: str, cache_dir: str | None) -> Path | None:
    try:
        from huggingface_hub import try_to_load_from_cache

        hit = try_to_load_from_cache(repo, filename, cache_dir=cache_dir)
    except Exception:
        return None
    return Path(hit) if isinstance(hit, str) and os.path.isfile(hit) else None


def _cached_tag_weights(pcfg: dict[str, Any], cache_dir: str | None) -> Path | None:
    if pcfg.get("file") and os.path.isfile(pcfg["file"]):
        return Path(pcfg["file"])
    hub = pcfg.get("hf_hub") or ""
    if hub:
        repo, fname = os.path.split(hub)
        from open_clip.constants import HF_WEIGHTS_NAME

        for name in _hub_candidates(fname or HF_WEIGHTS_NAME):
            hit = _from_hub_cache(repo, name, cache_dir)
            if hit is not None:
                return hit
    url = pcfg.get("url") or ""
    if url:
        p = Path(cache_dir or "~/.cache/clip").expanduser() / os.path.basename(url)
        if p.is_file():
            return p
    return None


def _checkpoint_file(raw: str, *, label: str) -> Path:
    path = Path(raw).expanduser()
    if path.is_dir():
        raise EncoderError(
            f"encoder {label!r}: {raw!r} is a directory; pass the weights file inside it, or "
            f"'openclip:local-dir:{raw}' for a directory with {CONFIG_NAME}"
        )
    if not path.is_file():
        raise EncoderError(
            f"encoder {label!r}: checkpoint file {str(path)!r} not found; pass an existing "
            ".safetensors/.pt/.pth/.bin file (absolute paths: 'openclip:ARCH//abs/path' or pretrained='/abs/path')"
        )
    return path


def _snapshot_commit(path: Path) -> str | None:
    """The commit when ``path`` (a file) sits in ``…/snapshots/<40 hex>/`` of a Hugging Face cache."""
    parent = path.parent
    if parent.parent.name == "snapshots" and _COMMIT.match(parent.name):
        return parent.name
    return None


def _file_or_commit_revision(path: Path) -> str:
    return _snapshot_commit(path) or file_revision(path)


def _load_config_arg(model_config: Any, *, label: str) -> tuple[dict[str, Any], dict[str, Any], str]:
    """``(model_cfg, preprocess_cfg, source)`` of a ``model_config`` kwarg."""
    if isinstance(model_config, dict):
        data, where = model_config, "dict"
    else:
        p = Path(model_config).expanduser()
        if not p.is_file():
            raise EncoderError(f"encoder {label!r}: model_config file {str(p)!r} not found; pass a JSON file or a dict")
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise EncoderError(f"encoder {label!r}: model_config {str(p)!r} is not valid JSON ({_first_line(e)})") from None
        where = str(p)
    if not isinstance(data, dict):
        raise EncoderError(f"encoder {label!r}: model_config must be a JSON object, got {type(data).__name__}")
    pp: dict[str, Any] = {}
    if "model_cfg" in data:
        pp = dict(data.get("preprocess_cfg") or {})
        data = data["model_cfg"]
    missing = [k for k in ("embed_dim", "vision_cfg", "text_cfg") if not isinstance(data, dict) or k not in data]
    if missing:
        raise EncoderError(
            f"encoder {label!r}: model_config ({where}) lacks {', '.join(missing)}; an open_clip model config needs "
            "embed_dim, vision_cfg and text_cfg (like the files in open_clip/model_configs/)"
        )
    return copy.deepcopy(data), pp, where


def _custom(open_clip: Any, arch: str, model_config: Any, *, label: str) -> _Source:
    cfg, pp, where = _load_config_arg(model_config, label=label)
    digest = _digest(cfg)
    name = _register_config(open_clip, cfg, digest, label=label)
    return _Source(
        kind="custom",
        arch=arch,
        model_name=name,
        tokenizer_name=name,
        model_cfg=cfg,
        preprocess=pp,
        config_digest=_digest({"model_cfg": cfg, "preprocess_cfg": pp}),
        info={"model_config": where, "model_config_sha256": digest},
    )


def _digest(obj: Any) -> str:
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def _register_config(open_clip: Any, cfg: dict[str, Any], digest: str, *, label: str) -> str:
    """Register ``cfg`` with open_clip under a name no built-in can have (once per process)."""
    name = _CUSTOM_CONFIGS.get(digest)
    if name is not None and name in open_clip.list_models():
        return name
    name = f"mrbench-custom-{digest}"
    with tempfile.TemporaryDirectory(prefix="mrbench-openclip-") as tmp:
        path = Path(tmp) / f"{name}.json"
        path.write_text(json.dumps(cfg), encoding="utf-8")
        try:
            open_clip.add_model_config(path)  # the registry keeps the parsed config after the file is gone
        except Exception as e:
            raise EncoderError(f"encoder {label!r}: open_clip rejected model_config ({_first_line(e)})") from None
    if name not in open_clip.list_models():
        raise EncoderError(f"encoder {label!r}: open_clip did not accept model_config (needs embed_dim, vision_cfg, text_cfg)")
    _CUSTOM_CONFIGS[digest] = name
    return name


def _read_dir_config(directory: Path, *, label: str) -> dict[str, Any]:
    cfg_path = directory / CONFIG_NAME
    if not cfg_path.is_file():
        raise EncoderError(
            f"encoder {label!r}: {str(directory)!r} holds no {CONFIG_NAME}; a 'local-dir:' model needs it (with "
            "'model_cfg'), or pass a single checkpoint as 'openclip:ARCH/path/to/checkpoint'"
        )
    try:
        data = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise EncoderError(f"encoder {label!r}: {cfg_path} is not valid JSON ({_first_line(e)})") from None
    if not isinstance(data, dict) or not isinstance(data.get("model_cfg"), dict):
        raise EncoderError(f"encoder {label!r}: {cfg_path} has no 'model_cfg' object (open_clip's config layout)")
    if "embed_dim" not in data["model_cfg"]:
        raise EncoderError(f"encoder {label!r}: {cfg_path}: model_cfg lacks embed_dim")
    return data


def _find_weights(directory: Path) -> Path | None:
    for name in DIR_WEIGHT_NAMES:
        if (directory / name).is_file():
            return directory / name
    found = sorted(p for p in directory.iterdir() if p.is_file() and p.suffix in (".safetensors", ".bin", ".pth", ".pt"))
    found.sort(key=lambda p: p.suffix != ".safetensors")
    if len(found) > 1:
        log.warning("openclip: several weight files in %s; using %s", directory, found[0].name)
    return found[0] if found else None


def _local_dir(raw: str, *, label: str) -> _Source:
    if not raw:
        raise EncoderError(f"encoder {label!r}: empty path after 'local-dir:'")
    directory = Path(raw).expanduser()
    if not directory.is_dir():
        raise EncoderError(
            f"encoder {label!r}: directory {str(directory)!r} not found"
            + ("; for a single checkpoint file use 'openclip:ARCH/path/to/checkpoint'" if directory.is_file() else "")
        )
    data = _read_dir_config(directory, label=label)
    weights = _find_weights(directory)
    src = _Source(
        kind="local-dir",
        arch=str(data.get("model_name") or data["model_cfg"].get("model_name") or f"local-dir:{raw}"),
        model_name=f"local-dir:{directory}",
        tokenizer_name=f"local-dir:{directory}",
        model_cfg=copy.deepcopy(data["model_cfg"]),
        weights=weights,
        pretrained=str(directory),
        config_digest=_digest({"model_cfg": data["model_cfg"], "preprocess_cfg": data.get("preprocess_cfg") or {}}),
    )
    if weights is not None:
        src.revision = _file_or_commit_revision(weights)
    return src


def _hf_hub(open_clip: Any, repo: str, *, label: str, cache_dir: str | None) -> _Source:
    if not _HUB_ID.match(repo):
        raise EncoderError(f"encoder {label!r}: {repo!r} is not a hub id ('org/name')")
    from open_clip.constants import HF_WEIGHTS_NAME

    cfg_path = _from_hub_cache(repo, CONFIG_NAME, cache_dir)
    weights = None
    if cfg_path is not None:
        for name in _hub_candidates(HF_WEIGHTS_NAME):
            # the weights of the same snapshot as the config
            cand = cfg_path.parent / name
            if cand.is_file():
                weights = cand
                break
    if cfg_path is None or weights is None:
        if hub_offline():
            raise EncoderError(
                f"encoder {label!r}: {repo!r} is not in the local Hugging Face cache and the hub is offline "
                f"(HF_HUB_OFFLINE=1); download it where you are online (`hf download {repo} --local-dir DIR`) "
                "and pass 'openclip:local-dir:DIR'"
            )
        try:
            from open_clip.pretrained import download_pretrained_from_hf

            with _quiet_open_clip():
                cfg_path = Path(download_pretrained_from_hf(repo, filename=CONFIG_NAME, cache_dir=cache_dir))
                weights = Path(download_pretrained_from_hf(repo, cache_dir=cache_dir))
        except Exception as e:
            raise EncoderError(
                f"encoder {label!r}: could not fetch {repo!r} from the hub ({_first_line(e)}); download it "
                "(`hf download ORG/NAME --local-dir DIR`) and pass 'openclip:local-dir:DIR'"
            ) from None
    data = _read_dir_config(cfg_path.parent, label=label)
    return _Source(
        kind="hf-hub",
        arch=f"hf-hub:{repo}",
        model_name=f"local-dir:{cfg_path.parent}",
        tokenizer_name=f"hf-hub:{repo}",
        model_cfg=copy.deepcopy(data["model_cfg"]),
        weights=weights,
        revision=_file_or_commit_revision(weights),
        pretrained=f"hf-hub:{repo}",
        info={"hub_repo": repo},
    )


# ----------------------------------------------------------------------------------------------------
# building and loading


@contextlib.contextmanager
def _quiet_open_clip() -> Iterator[None]:
    """Route open_clip's root-logger messages (e.g. 'Model initialized randomly' before we load the
    weights ourselves) to this module's debug log, without letting ``logging.warning`` install a
    root handler as a side effect."""
    root = logging.getLogger()

    def keep(record: logging.LogRecord) -> bool:
        if "open_clip" in record.pathname.replace("\\", "/"):
            log.debug("open_clip: %s", record.getMessage())
            return False
        return True

    null = logging.NullHandler() if not root.handlers else None
    if null is not None:
        root.addHandler(null)
    root.addFilter(keep)
    try:
        yield
    finally:
        root.removeFilter(keep)
        if null is not None:
            root.removeHandler(null)


def _build_model(open_clip: Any, src: _Source, *, label: str, seed: int, cache_dir: str | None) -> Any:
    import torch

    try:
        with _quiet_open_clip(), torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = open_clip.create_model(
                src.model_name,
                pretrained=None,
                load_weights=False,
                precision="fp32",
                device="cpu",
                force_quick_gelu=src.force_quick_gelu,
                force_preprocess_cfg=src.preprocess or None,
                pretrained_image=False,
                pretrained_text=False,
                cache_dir=cache_dir,
            )
    except Exception as e:
        raise EncoderError(
            f"encoder {label!r}: open_clip could not build the architecture {src.arch!r} "
            f"({type(e).__name__}: {_first_line(e)})"
        ) from None
    if not hasattr(model, "encode_text") or not hasattr(model, "encode_image"):
        raise EncoderError(f"encoder {label!r}: {type(model).__name__} has no encode_text/encode_image")
    return model


def _load_weights(open_clip: Any, model: Any, path: Path, *, label: str, arch: str) -> None:
    try:
        with _quiet_open_clip():
            open_clip.load_checkpoint(model, str(path), strict=True, weights_only=True)
    except Exception as e:
        raise EncoderError(_diagnose_checkpoint(model, path, e, label=label, arch=arch)) from None


def _diagnose_checkpoint(model: Any, path: Path, err: BaseException, *, label: str, arch: str) -> str:
    """One line saying why ``path`` does not load into ``model`` (open_clip's own error is long)."""
    head = f"encoder {label!r}: checkpoint {str(path)!r}"
    try:
        from open_clip.factory import load_state_dict

        raw = load_state_dict(str(path), device="cpu", weights_only=True)
        if not isinstance(raw, dict):
            raise TypeError(f"holds a {type(raw).__name__}, not a state dict")
    except Exception as e:
        return (
            f"{head} cannot be read as a state dict ({type(e).__name__}: {_first_line(e)}); pass a .safetensors "
            "or torch .pt/.bin file holding the model's state dict"
        )
    want = model.state_dict()
    have = {k: v for k, v in raw.items() if hasattr(v, "shape")}
    mismatched = [k for k, t in want.items() if k in have and tuple(have[k].shape) != tuple(t.shape)]
    fatal = [k for k in mismatched if k not in _RESIZED_ON_LOAD] or mismatched
    fix = "pass the architecture the checkpoint was trained with (or the matching model_config)"
    if fatal:
        k = fatal[0]
        more = f" (1 of {len(mismatched)} mismatching tensors)" if len(mismatched) > 1 else ""
        return (
            f"{head} does not match architecture {arch!r}: tensor {k!r} has shape {tuple(have[k].shape)} in the "
            f"checkpoint but {tuple(want[k].shape)} in the model{more}; {fix}"
        )
    missing = [k for k in want if k not in have]
    unexpected = [k for k in have if k not in want]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"lacks {len(missing)} of the model's {len(want)} tensors (first {missing[0]!r})")
        if unexpected:
            parts.append(f"has {len(unexpected)} tensors the model does not (first {unexpected[0]!r})")
        return f"{head} does not match architecture {arch!r}: it {' and '.join(parts)}; {fix}"
    return f"{head} does not load into {arch!r} ({type(err).__name__}: {_first_line(err)})"


def _build_tokenizer(open_clip: Any, src: _Source, *, label: str, cache_dir: str | None) -> Any:
    try:
        with _quiet_open_clip():
            tok = open_clip.get_tokenizer(src.tokenizer_name, cache_dir=cache_dir)
        probe = tok(["a photo of a dog"])
    except Exception as e:
        hint = " (offline: the tokenizer files must be in the local cache or the model directory)" if hub_offline() else ""
        raise EncoderError(
            f"encoder {label!r}: cannot load the tokenizer of {src.arch!r} ({type(e).__name__}: {_first_line(e)}){hint}"
        ) from None
    if getattr(probe, "ndim", 0) != 2 or probe.shape[0] != 1 or int((probe != 0).sum()) < 2:
        raise EncoderError(f"encoder {label!r}: the tokenizer of {src.arch!r} is empty or broken")
    return tok


def _count_too_long(tok: Any, texts: list[str], ctx: int) -> int:
    """Texts longer than ``ctx`` tokens (special tokens included) for open_clip's tokenizers."""
    # a token covers at least one UTF-8 byte (special tokens aside): short texts cannot be cut
    texts = [t for t in texts if len(t.encode("utf-8")) + 4 > ctx - 3]
    if not texts:
        return 0
    inner = getattr(tok, "tokenizer", None)
    if inner is None:  # SimpleTokenizer (and reduction-mask variants): tokenise one slot longer
        ids = tok(texts, context_length=ctx + 1)
        return int((ids[:, ctx] != 0).sum())
    clean = getattr(tok, "clean_fn", None)
    if clean is None:  # SigLipTokenizer
        from open_clip.tokenizer import basic_clean, canonicalize_text

        def clean(t: str) -> str:
            return canonicalize_text(basic_clean(t))

    cleaned = [clean(t) for t in texts]
    clips = getattr(tok, "tokenizer_mode", "") == "clips"
    kwargs: dict[str, Any] = {"add_special_tokens": not clips, "truncation": False}
    try:
        enc = inner(cleaned, verbose=False, **kwargs)
    except TypeError:
        enc = inner(cleaned, **kwargs)
    limit = ctx - 3 if clips else ctx
    return sum(1 for ids in enc["input_ids"] if len(ids) > limit)


class TokenizeToNumpy:
    """``list[str] → int64 [n, ctx + 1]`` through an open_clip tokenizer (picklable: module level):
    columns ``:ctx`` are the token ids the tokenizer gives, column ``ctx`` is 1 where the text was
    cut at the context length (so truncations are counted where the tokenising runs)."""

    def __init__(self, tokenizer: Any, context_length: int) -> None:
        self.tokenizer, self.ctx = tokenizer, int(context_length)

    def __eq__(self, other: object) -> bool:  # the same tokenizer object and length: the same ids
        return isinstance(other, TokenizeToNumpy) and other.tokenizer is self.tokenizer and other.ctx == self.ctx

    def __hash__(self) -> int:
        return hash((id(self.tokenizer), self.ctx))

    def __call__(self, texts: list[str]) -> np.ndarray:
        texts = list(texts)
        ids = np.asarray(self.tokenizer(texts), dtype=np.int64)
        cut = np.zeros((len(texts), 1), dtype=np.int64)
        long = [k for k, t in enumerate(texts) if len(t.encode("utf-8")) + 4 > self.ctx - 3]
        for k in long:  # the rare long ones, one by one (same rule as OpenClipEncoder.count_too_long)
            cut[k, 0] = _count_too_long(self.tokenizer, [texts[k]], self.ctx)
        return np.concatenate([ids, cut], axis=1)


class PilToUint8:
    """``PIL image → uint8 [3, H, W]`` through a PIL-only transform (picklable: module level)."""

    def __init__(self, pil_stage: Any) -> None:
        self.pil_stage = pil_stage

    def __call__(self, image: Image) -> np.ndarray:
        arr = np.asarray(self.pil_stage(image), dtype=np.uint8)
        if arr.ndim == 2:
            arr = np.repeat(arr[:, :, None], 3, axis=2)
        return np.ascontiguousarray(arr.transpose(2, 0, 1))


def _split_transform(preprocess: Any) -> tuple[Any, tuple[torch.Tensor, torch.Tensor] | None]:
    """``(PIL-only part, (mean, std) as [3, 1, 1] tensors)`` when ``preprocess`` is a Compose ending
    in ``ToTensor`` (or open_clip's ``MaybeToTensor``) + ``Normalize``; else ``(preprocess, None)``."""
    import torch

    steps = list(getattr(preprocess, "transforms", []) or [])
    if len(steps) < 2:
        return preprocess, None
    to_tensor, norm = steps[-2], steps[-1]
    if type(to_tensor).__name__ not in ("ToTensor", "MaybeToTensor") or type(norm).__name__ != "Normalize":
        return preprocess, None
    if any(type(t).__module__.startswith("torch") and "Tensor" in type(t).__name__ for t in steps[:-2]):
        return preprocess, None
    from torchvision.transforms import Compose

    mean = torch.tensor([float(x) for x in norm.mean], dtype=torch.float32).view(-1, 1, 1)
    std = torch.tensor([float(x) for x in norm.std], dtype=torch.float32).view(-1, 1, 1)
    return Compose(steps[:-2]), (mean, std)


def _pair(size: Any) -> tuple[int, int]:
    if isinstance(size, (list, tuple)):
        return (int(size[0]), int(size[-1]))
    return (int(size), int(size))


def _first_line(e: BaseException) -> str:
    s = str(e).strip().splitlines()
    return s[0].strip() if s else type(e).__name__
