"""The trainable dual encoder of the ELVA reference trainer and its Gaussian exploration head.

:class:`DualTowerModel` wraps an `open_clip <https://github.com/mlfoundations/open_clip>`_ model
(a text tower and an image tower) built from an open_clip model config: by default
:data:`DEFAULT_TINY_CONFIG`, small enough to train on a laptop CPU; any open_clip architecture name
(``"ViT-B-32"``) or config dict/JSON file works too, optionally with pretrained weights from a
local file, so the same code fine-tunes a real model on a GPU.

Conventions (the same as mrbench's :class:`~mrbench.encoders.torch_base.DualTowerEncoder`, so that a
checkpoint evaluated by mrbench scores exactly what the trainer optimised):

* every embedding the model returns is L2-normalised;
* an **image+text** item is embedded by *score-level fusion*: the sum of the L2-normalised text and
  image embeddings, re-normalised (the harness does the same re-normalisation for cosine);
* an item with neither text nor image is embedded as the empty text;
* images enter as ``uint8 [B, 3, H, W]`` tensors made by :meth:`DualTowerModel.preprocess` (the PIL
  part of open_clip's eval transform: resize, crop, RGB); the float conversion and the mean/std
  normalisation run batched on the model's device inside :meth:`DualTowerModel.encode_image`.

:class:`GaussianHead` is the exploration policy of the RL stage: an isotropic Gaussian
``N(mean, σ² I)`` around the deterministic (normalised) embedding. Rollouts score with the
re-normalised samples; evaluation always uses the deterministic mean.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from PIL.Image import Image

log = logging.getLogger("elva_baseline.model")

DEFAULT_ARCH = "elva-tiny"
DEFAULT_TINY_CONFIG: dict[str, Any] = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 64, "layers": 3, "width": 64, "patch_size": 8, "head_width": 32, "mlp_ratio": 4.0},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 3, "mlp_ratio": 4.0},
}
"""The default tiny architecture: ViT (64 px, patch 8, width 64, 3 layers, 2 heads) + text transformer
(width 64, 3 layers, 2 heads, context 32 — the longest MRBench-Synth text is 20 tokens — open_clip's BPE
vocabulary) and a 64-d joint space; 3.5 M parameters, 3.2 M of them the token embedding."""

DEFAULT_SIGMA = 0.02
"""Default exploration σ (the feasibility study: σ 0.05 drowned the positive/hard-negative gap)."""

FUSION = "score-sum of normalised image and text embeddings"
_CONFIG_NAMES: dict[str, str] = {}  # config digest -> name registered with open_clip


def config_digest(cfg: Any) -> str:
    """A short sha256 of a JSON-able object (key order does not matter)."""
    blob = json.dumps(cfg, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


# --------------------------------------------------------------------------------------------------
# model inputs


@dataclass
class Items:
    """A batch of items as model inputs (queries or candidates, any mix of modalities).

    ``tokens``: ``int64 [N, L]`` (``None`` when no item reads text); rows of items without text are
    unused (or the empty text for items that have neither text nor image). ``pixels``: ``uint8
    [N, 3, H, W]`` (``None`` when no item has an image); rows of image-less items are zero and unused.
    ``has_text`` / ``has_image``: ``bool [N]``; an item with neither has ``has_text`` set (the empty
    text). ``ids``: the item ids, in row order.
    """

    ids: list[str]
    tokens: torch.Tensor | None
    pixels: torch.Tensor | None
    has_text: torch.Tensor
    has_image: torch.Tensor

    def __len__(self) -> int:
        return len(self.ids)

    def select(self, index: Sequence[int] | torch.Tensor) -> Items:
        """The rows ``index`` (in that order) as a new :class:`Items` (tensors are indexed copies)."""
        idx = torch.as_tensor(index, dtype=torch.long)
        if idx.ndim != 1:
            idx = idx.reshape(-1)
        ids = [self.ids[i] for i in idx.tolist()]
        return Items(
            ids=ids,
            tokens=None if self.tokens is None else self.tokens.index_select(0, idx),
            pixels=None if self.pixels is None else self.pixels.index_select(0, idx),
            has_text=self.has_text.index_select(0, idx),
            has_image=self.has_image.index_select(0, idx),
        )

    def to(self, device: str | torch.device, non_blocking: bool = False) -> Items:
        def mv(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.to(device, non_blocking=non_blocking)

        return Items(
            ids=self.ids, tokens=mv(self.tokens), pixels=mv(self.pixels),
            has_text=mv(self.has_text), has_image=mv(self.has_image),  # type: ignore[arg-type]
        )

    @property
    def nbytes(self) -> int:
        return sum(
            t.numel() * t.element_size()
            for t in (self.tokens, self.pixels, self.has_text, self.has_image)
            if t is not None
        )

    @staticmethod
    def cat(parts: Sequence[Items]) -> Items:
        """Concatenate item batches (they must agree on token length and image size)."""
        parts = [p for p in parts if len(p)]
        if not parts:
            raise ValueError("Items.cat: nothing to concatenate")
        n = [len(p) for p in parts]

        def join(name: str) -> torch.Tensor | None:
            ts = [getattr(p, name) for p in parts]
            if all(t is None for t in ts):
                return None
            ref = next(t for t in ts if t is not None)
            filled = [t if t is not None else torch.zeros((k, *ref.shape[1:]), dtype=ref.dtype) for t, k in zip(ts, n)]
            return torch.cat(filled)

        return Items(
            ids=[i for p in parts for i in p.ids],
            tokens=join("tokens"),
            pixels=join("pixels"),
            has_text=torch.cat([p.has_text for p in parts]),
            has_image=torch.cat([p.has_image for p in parts]),
        )


# --------------------------------------------------------------------------------------------------
# exploration head


class GaussianHead(nn.Module):
    """Isotropic Gaussian exploration policy ``N(mean, σ² I)`` around a deterministic embedding.

    Args:
        sigma: the standard deviation (per dimension). With unit-norm means in D dimensions the
            per-pair cosine noise is about ``σ√2``; keep it below the positive/hard-negative score gap.
        learnable: make ``log σ`` a parameter (gets gradients through :meth:`log_prob`); otherwise it is
            a buffer (saved with the model, never trained).

    Convention: :meth:`log_prob` is the log **density of the pre-normalisation sample** in ``R^D``,
    summed over the D dimensions::

        log p(x | μ, σ) = Σ_d [ -(x_d - μ_d)² / (2σ²) - log σ - ½ log 2π ]

    Rollouts *score* with the re-normalised samples (:meth:`normalize`), but the policy's action is
    the raw sample ``x``; the normalisation is a deterministic function of the action and does not
    enter the density (it is part of the environment, not of the policy). ``mean`` is the
    L2-normalised deterministic embedding; evaluation uses ``mean`` itself (no sampling).
    """

    def __init__(self, sigma: float = DEFAULT_SIGMA, learnable: bool = False) -> None:
        super().__init__()
        if not (isinstance(sigma, (int, float)) and math.isfinite(sigma) and sigma > 0):
            raise ValueError(f"GaussianHead: sigma must be a positive number, got {sigma!r}")
        self.learnable = bool(learnable)
        init = torch.tensor(math.log(float(sigma)), dtype=torch.float32)
        if self.learnable:
            self.log_sigma = nn.Parameter(init)
        else:
            self.register_buffer("log_sigma", init)

    @property
    def sigma(self) -> torch.Tensor:
        """σ as a 0-d tensor (differentiable when learnable)."""
        return self.log_sigma.exp()

    def sample(
        self,
        mean: torch.Tensor,
        group_size: int,
        generator: torch.Generator | None = None,
        *,
        reparameterize: bool = False,
    ) -> torch.Tensor:
        """``group_size`` samples per mean: ``[..., D] -> [..., G, D]``.

        Samples are detached (REINFORCE actions: the gradient flows through :meth:`log_prob`) unless
        ``reparameterize`` (then ``mean + σ ε`` keeps the graph). ``generator`` (on ``mean``'s device)
        makes the draw reproducible.
        """
        if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
            raise ValueError(f"GaussianHead.sample: group_size must be a positive integer, got {group_size!r}")
        shape = (*mean.shape[:-1], group_size, mean.shape[-1])
        eps = torch.randn(shape, generator=generator, device=mean.device, dtype=mean.dtype)
        sigma = self.sigma.to(mean.dtype)
        x = mean.unsqueeze(-2) + sigma * eps
        return x if reparameterize else x.detach()

    def log_prob(self, samples: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
        """``log N(samples | mean, σ² I)`` summed over D: ``samples [..., G, D]``, ``mean [..., D]`` -> ``[..., G]``."""
        if samples.shape[:-2] != mean.shape[:-1] or samples.shape[-1] != mean.shape[-1]:
            raise ValueError(
                f"GaussianHead.log_prob: samples {tuple(samples.shape)} do not match mean {tuple(mean.shape)} "
                "(expected samples [..., G, D] for mean [..., D])"
            )
        log_sigma = self.log_sigma.to(samples.dtype)
        z = (samples - mean.unsqueeze(-2)) / log_sigma.exp()
        d = samples.shape[-1]
        return -0.5 * (z * z).sum(-1) - d * log_sigma - 0.5 * d * math.log(2 * math.pi)

    @staticmethod
    def normalize(samples: torch.Tensor) -> torch.Tensor:
        """The re-normalised samples the rollouts score with (cosine)."""
        return F.normalize(samples, dim=-1)

    def extra_repr(self) -> str:
        return f"sigma={float(self.sigma.detach()):.4g}, learnable={self.learnable}"


# --------------------------------------------------------------------------------------------------
# the dual encoder


def _import_open_clip() -> Any:
    try:
        import open_clip
    except ImportError as e:  # pragma: no cover - depends on the install
        raise ImportError(f"elva_baseline needs open_clip ({e}); install it with: pip install 'mrbench[clip]'") from None
    return open_clip


def resolve_model_config(model_config: dict[str, Any] | str | os.PathLike[str] | None) -> tuple[str, dict[str, Any]]:
    """``(arch label, open_clip model config dict)`` of a config dict, an open_clip architecture name,
    a JSON file (a model config, or an ``open_clip_config.json`` with ``model_cfg``) or ``None`` (the
    default tiny config)."""
    label, cfg, _ = _resolve(model_config)
    return label, cfg


def _resolve(model_config: Any) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """``(label, model_cfg, preprocess_cfg found next to it)``."""
    if model_config is None:
        return DEFAULT_ARCH, copy.deepcopy(DEFAULT_TINY_CONFIG), {}
    pp: dict[str, Any] = {}
    if isinstance(model_config, dict):
        cfg = copy.deepcopy(model_config.get("model_cfg", model_config))
        if "model_cfg" in model_config:
            pp = dict(model_config.get("preprocess_cfg") or {})
        label = "custom"
    else:
        raw = os.fspath(model_config)
        open_clip = _import_open_clip()
        if raw in open_clip.list_models():
            return raw, copy.deepcopy(open_clip.get_model_config(raw)), {}
        p = Path(raw).expanduser()
        if not p.is_file():
            from mrbench.errors import did_you_mean

            raise ValueError(
                f"model config {raw!r} is neither an open_clip architecture{did_you_mean(raw, open_clip.list_models())} "
                "nor a JSON file; pass e.g. 'ViT-B-32', a config dict, or None for the default tiny config"
            )
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise ValueError(f"model config {str(p)!r} is not valid JSON ({e})") from None
        if not isinstance(data, dict):
            raise ValueError(f"model config {str(p)!r} must hold a JSON object")
        cfg = copy.deepcopy(data.get("model_cfg", data))
        if "model_cfg" in data:
            pp = dict(data.get("preprocess_cfg") or {})
        label = p.stem
    missing = [k for k in ("embed_dim", "vision_cfg", "text_cfg") if not isinstance(cfg, dict) or k not in cfg]
    if missing:
        raise ValueError(
            f"model config lacks {', '.join(missing)}; an open_clip model config needs embed_dim, vision_cfg and "
            "text_cfg (like the files in open_clip/model_configs/)"
        )
    return label, cfg, pp


def _register(open_clip: Any, cfg: dict[str, Any]) -> str:
    """Register ``cfg`` with open_clip under a name no built-in has (once per process); return it."""
    digest = config_digest(cfg)
    name = _CONFIG_NAMES.get(digest)
    if name is not None and name in open_clip.list_models():
        return name
    name = f"elva-{digest}"
    with tempfile.TemporaryDirectory(prefix="elva-openclip-") as tmp:
        path = Path(tmp) / f"{name}.json"
        path.write_text(json.dumps(cfg), encoding="utf-8")
        open_clip.add_model_config(path)  # the registry keeps the parsed config
    if name not in open_clip.list_models():
        raise ValueError("open_clip did not accept the model config (needs embed_dim, vision_cfg, text_cfg)")
    _CONFIG_NAMES[digest] = name
    return name


class DualTowerModel(nn.Module):
    """A trainable open_clip dual encoder with mrbench's embedding conventions and a Gaussian head.

    Args:
        model_config: ``None`` (:data:`DEFAULT_TINY_CONFIG`), an open_clip architecture name
            (``"ViT-B-32"``), a config dict (``embed_dim``, ``vision_cfg``, ``text_cfg``; or an
            ``open_clip_config.json``-style dict with ``model_cfg``), or a JSON file of either.
        pretrained: a local weights file (``.safetensors``/``.pt``/``.bin``, an open_clip state dict)
            loaded strictly into the open_clip model; ``None`` keeps the seeded random init.
        preprocess_cfg: overrides of the image transform (``mean``, ``std``, ``interpolation``,
            ``resize_mode``), e.g. a pretrained tag's values (merged over an ``open_clip_config.json``'s
            ``preprocess_cfg``).
        quick_gelu: force QuickGELU (for weights trained with it, like OpenAI's).
        sigma, learn_sigma: the :class:`GaussianHead` (``model.head``).
        seed: seed of the random initialisation (``torch`` RNG forked, the global state untouched).
        arch: a label recorded in checkpoints (default: the architecture name, ``"elva-tiny"`` or
            ``"custom"``).

    Attributes: ``clip`` (the open_clip model), ``head``, ``tokenizer``, ``context_length``,
    ``image_size`` (H, W), ``embed_dim``, ``arch``, ``model_cfg``, ``preprocess_cfg``.
    """

    def __init__(
        self,
        model_config: dict[str, Any] | str | os.PathLike[str] | None = None,
        *,
        pretrained: str | os.PathLike[str] | None = None,
        preprocess_cfg: dict[str, Any] | None = None,
        quick_gelu: bool = False,
        sigma: float = DEFAULT_SIGMA,
        learn_sigma: bool = False,
        seed: int = 0,
        arch: str | None = None,
    ) -> None:
        super().__init__()
        open_clip = _import_open_clip()
        label, cfg, found_pp = _resolve(model_config)
        preprocess_cfg = {**found_pp, **(preprocess_cfg or {})}
        if quick_gelu:
            cfg["quick_gelu"] = True
        self.arch = arch or label
        self.model_cfg = cfg
        self.embed_dim = int(cfg["embed_dim"])
        name = _register(open_clip, cfg)
        from mrbench.encoders.openclip import _quiet_open_clip

        with _quiet_open_clip(), torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seed))
            self.clip = open_clip.create_model(
                name,
                pretrained=None,
                load_weights=False,
                precision="fp32",
                device="cpu",
                force_preprocess_cfg=dict(preprocess_cfg) if preprocess_cfg else None,
                pretrained_image=False,
                pretrained_text=False,
            )
        if pretrained is not None:
            self.load_open_clip_weights(pretrained)
        self.head = GaussianHead(sigma, learnable=learn_sigma)
        self.seed = int(seed)
        self.pretrained = None if pretrained is None else os.fspath(pretrained)

        with _quiet_open_clip():
            self.tokenizer = open_clip.get_tokenizer(name)
        self.context_length = int(
            getattr(self.tokenizer, "context_length", 0) or open_clip.get_model_tokenize_cfg(self.clip).get("context_length", 77)
        )
        pp = dict(open_clip.get_model_preprocess_cfg(self.clip))
        self.preprocess_cfg = {
            k: (list(v) if isinstance(v, tuple) else v)
            for k, v in pp.items()
            if k in ("size", "mean", "std", "interpolation", "resize_mode", "fill_color")
        }
        transform = open_clip.image_transform(
            pp.get("size", 224),
            is_train=False,
            mean=pp.get("mean"),
            std=pp.get("std"),
            resize_mode=pp.get("resize_mode"),
            interpolation=pp.get("interpolation"),
            fill_color=pp.get("fill_color", 0),
        )
        from mrbench.encoders.openclip import PilToUint8, _split_transform

        pil_stage, norm = _split_transform(transform)
        if norm is None:
            raise ValueError(
                f"the eval transform of {self.arch!r} does not end in ToTensor + Normalize; elva_baseline needs the "
                "uint8 split (PIL stages, then normalisation on the device)"
            )
        self.pixel_transform = PilToUint8(pil_stage)
        """Picklable ``PIL image -> uint8 [3, H, W]`` (numpy): the PIL part of the eval transform."""
        self.register_buffer("pixel_mean", norm[0].clone(), persistent=False)
        self.register_buffer("pixel_std", norm[1].clone(), persistent=False)
        size = pp.get("size", 224)
        self.image_size = (int(size[0]), int(size[-1])) if isinstance(size, (list, tuple)) else (int(size), int(size))

    # -- weights ----------------------------------------------------------------------------------
    def load_open_clip_weights(self, path: str | os.PathLike[str]) -> None:
        """Load an open_clip state dict (a file) strictly into :attr:`clip`; one-line error otherwise."""
        from mrbench.encoders.openclip import _checkpoint_file, _load_weights

        label = f"elva:{self.arch}"
        p = _checkpoint_file(os.fspath(path), label=label)
        _load_weights(_import_open_clip(), self.clip, p, label=label, arch=self.arch)

    def config_dict(self) -> dict[str, Any]:
        """What rebuilds this architecture (recorded under ``"model"`` in a checkpoint's config.json)."""
        return {
            "arch": self.arch,
            "model_cfg": copy.deepcopy(self.model_cfg),
            "preprocess_cfg": copy.deepcopy(self.preprocess_cfg),
            "sigma": float(self.head.sigma.detach()),
            "learn_sigma": self.head.learnable,
            "seed": self.seed,
            "pretrained": self.pretrained,
        }

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    # -- inputs -----------------------------------------------------------------------------------
    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        """``int64 [N, context_length]`` token ids (texts longer than the context are truncated)."""
        return self.tokenizer(list(texts)).long()

    def preprocess(self, image: Image) -> torch.Tensor:
        """One decoded image -> ``uint8 [3, H, W]`` (resize, crop, RGB; normalisation happens in
        :meth:`encode_image`)."""
        return torch.from_numpy(self.pixel_transform(image.convert("RGB") if image.mode != "RGB" else image))

    def make_items(self, texts: Sequence[str | None], images: Sequence[Image | None], ids: Sequence[str] | None = None) -> Items:
        """:class:`Items` from parallel lists of texts and decoded images (``None`` where absent)."""
        if len(texts) != len(images):
            raise ValueError(f"make_items: {len(texts)} texts but {len(images)} images")
        n = len(texts)
        has_image = torch.tensor([im is not None for im in images], dtype=torch.bool)
        has_text = torch.tensor([t is not None or im is None for t, im in zip(texts, images)], dtype=torch.bool)
        tokens = self.tokenize([t or "" for t in texts]) if bool(has_text.any()) else None
        pixels = None
        if bool(has_image.any()):
            h, w = self.image_size
            pixels = torch.zeros((n, 3, h, w), dtype=torch.uint8)
            for i, im in enumerate(images):
                if im is not None:
                    pixels[i] = self.preprocess(im)
        return Items(ids=list(ids) if ids is not None else [str(i) for i in range(n)], tokens=tokens, pixels=pixels,
                     has_text=has_text, has_image=has_image)

    # -- towers -----------------------------------------------------------------------------------
    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """``int [B, L] -> [B, D]``, L2-normalised."""
        return F.normalize(self.clip.encode_text(tokens.to(self.device)).float(), dim=-1)

    def normalize_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """``uint8 [B, 3, H, W]`` (0–255) or float in ``[0, 1]`` (``ToTensor`` output) -> the tower's
        normalised float input, on the model's device."""
        pixels = pixels.to(self.device, non_blocking=True)
        x = pixels.float().div_(255.0) if pixels.dtype == torch.uint8 else pixels.float()
        return (x - self.pixel_mean) / self.pixel_std

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """``uint8 [B, 3, H, W]`` (or float in ``[0, 1]``) -> ``[B, D]``, L2-normalised. The float
        conversion and mean/std normalisation run here, on the model's device."""
        return F.normalize(self.clip.encode_image(self.normalize_pixels(pixels)).float(), dim=-1)

    def embed(self, batch: Items) -> torch.Tensor:
        """``[B, D]`` L2-normalised embeddings of a mixed batch: text items by the text tower, image items
        by the image tower, image+text items by the re-normalised sum of both normalised embeddings."""
        n = len(batch)
        out = torch.zeros((n, self.embed_dim), dtype=torch.float32, device=self.device)
        has_text = batch.has_text.to(self.device)
        has_image = batch.has_image.to(self.device)
        if bool(has_text.any()):
            if batch.tokens is None:
                raise ValueError("embed: the batch has text items but no tokens")
            t_idx = has_text.nonzero().squeeze(1)
            out = out.index_add(0, t_idx, self.encode_text(batch.tokens.to(self.device).index_select(0, t_idx)))
        if bool(has_image.any()):
            if batch.pixels is None:
                raise ValueError("embed: the batch has image items but no pixels")
            i_idx = has_image.nonzero().squeeze(1)
            out = out.index_add(0, i_idx, self.encode_image(batch.pixels.to(self.device).index_select(0, i_idx)))
        return F.normalize(out, dim=-1)

    def forward(self, batch: Items) -> torch.Tensor:
        return self.embed(batch)

    @property
    def logit_scale(self) -> torch.Tensor:
        """open_clip's learnable ``log(1/τ)`` (a trainer may use it or a fixed temperature)."""
        return self.clip.logit_scale
