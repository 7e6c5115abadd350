"""ELVA's generative ``[RET]`` regime: a Qwen2-VL-family policy with LoRA that writes a summary and is read at ``[RET]``.

The model is the one :class:`mrbench.encoders.generative.RetEncoder` evaluates: the prompt asks for a
summary of the input, the model writes it, ``[RET]`` is appended and the last-layer hidden state at
``[RET]`` is the embedding. Everything about prompts, generation, log-probabilities and the embedding
goes through the public functions of :mod:`mrbench.encoders.generative` (``build_ret_prompts`` →
``prepare_ret_batch`` → ``generate_summaries`` → ``summary_logprobs`` / ``ret_embeddings``), so the
trainer and the evaluator extract the embedding in exactly one place, and a saved policy
(:meth:`GenerativePolicy.save`) loads back as ``RetEncoder(base, adapter=dir)`` with the same greedy
embeddings.

The RL step (:meth:`GenerativePolicy.grpo_step`), what gets gradients and why
--------------------------------------------------------------------------------
1. **Rollouts.** Each of the ``B`` queries' prompt is repeated ``G`` times and ``G`` summaries are
   *sampled* (``temperature``, ``top_p``, ``top_k``; default temperature 0.7: close to greedy, as the
   token-space feasibility study recommends, yet diverse enough that a group's rewards differ). The
   summary tokens' log-probabilities under the sampling policy are kept (no grad; ``old`` log-probs).
2. **Scores.** For rollout ``(b, g)`` the query embedding is the ``[RET]`` state after that summary;
   the candidates (one positive, ``N`` negatives per query) are embedded *greedily* by the current
   policy, without gradient — they are the environment (pass embedding tensors to cache them).
   Cosine scores ``s_pos [B, G]`` and ``s_neg [B, G, N]`` feed the rule reward
   (:func:`elva_baseline.rewards.total_reward` by default), then GRPO's group-relative advantages
   (:func:`elva_baseline.rewards.group_advantages`).
3. **Policy loss.** :func:`elva_baseline.losses.grpo_loss` on the summary tokens' log-probabilities:
   ``logp_new`` from one differentiable forward over ``prompt + summary``, ``logp_old`` the
   rollouts' (with ``epochs_per_batch = 1`` exactly ``logp_new.detach()``: the update is on-policy,
   the ratio is 1 and clipping idle, as in TRL), ``logp_ref`` from the *same* model with its adapters
   disabled (``peft``'s ``disable_adapter()``: the frozen base model, or the warmup model when the
   warmup adapter was merged into the base). The KL is grpo_loss's ``k3`` estimator
   ``exp(ref - new) - (ref - new) - 1`` per summary token, averaged per sequence then over
   sequences, all log-probabilities at the sampling temperature (``logits / T``; the ``top_p`` /
   ``top_k`` truncation is not in the log-probabilities, as in TRL and veRL).

   Structural tokens (``<|image_pad|>``, ``<|video_pad|>``, ``<|vision_start|>``, ``<|vision_end|>``,
   ``<|im_start|>``: :data:`SUPPRESS_TOKENS`) are masked out of the logits while sampling *and* in
   every log-probability of the rollouts (current, old, reference), so the policy is the renormalised
   distribution over the remaining tokens: a sampled ``<|image_pad|>`` would otherwise break the next
   forward (one more image placeholder than image features). Greedy summaries mask only the two
   placeholders (on which ``RetEncoder`` itself would fail), so they stay equal to ``RetEncoder``'s.

   Only the *summary tokens* are scored: ``generate_summaries`` drops the stop token that ended a
   summary and does not say which one it was, so the stop decision (the summary's length) gets no
   direct gradient. See the report/README for the change that would add it.
4. **Optional embedding-path gradient** (``embedding_loss_weight > 0``; default 0 = pure GRPO, the
   paper's estimator). The reward depends on the parameters twice: through *which* summary is
   written (the score-function term GRPO estimates) and through the ``[RET]`` hidden state *given*
   the summary (a pathwise term GRPO ignores, although LoRA moves that state at every update).
   ``embedding_loss="reward"`` adds ``-weight * mean(reward(s_pos, s_neg))`` with gradient through
   the rollouts' ``[RET]`` forward (the exact pathwise term when the reward is differentiable in the
   scores; its rank parts are piecewise constant and contribute nothing); ``"infonce"`` adds a
   per-rollout InfoNCE over the same positive and negatives (temperature ``embedding_tau``; the
   ``G`` rollouts of a query never serve as each other's negatives). Candidates stay gradient-free.
   The feasibility study found a differentiable surrogate as good as GRPO at tiny scale, so this is
   the knob for the "does RL add anything" comparison, not a default.

The warmup (:meth:`GenerativePolicy.info_nce_step`) is InfoNCE on greedy ``[RET]`` embeddings: the
greedy summaries are generated without gradient (they are fixed), the ``[RET]`` forward over
``prompt + summary + [RET]`` carries the gradient, for queries and (by default) candidates.

What is trained
---------------
A peft LoRA on the language model's attention projections (``q/k/v/o_proj``; the vision tower is not
adapted) plus, by default, the ``[RET]`` row of the input embedding (peft ``trainable_token_indices``;
also the ``lm_head`` row when the embeddings are untied and ``[RET]`` was added here). Every base
weight is frozen. Saving the ``[RET]`` row(s) with the adapter is what makes the round trip exact:
``RetEncoder`` re-adds ``[RET]`` with the saved tokenizer, the adapter then overwrites the row.

Multi-GPU
---------
There is no distributed engine here. The steps accept an ``accelerate.Accelerator``: its ``backward``
(loss scaling, gradient accumulation bookkeeping), ``autocast``, ``clip_grad_norm_`` and, with more
than one process, an all-reduce (mean) of the trainable parameters' gradients done here — call
:meth:`GenerativePolicy.prepare` (moves the model to ``accelerator.device`` and prepares the
optimizer) and do **not** ``accelerator.prepare`` the model: the shared mrbench functions call the
inner model directly, which a DDP / FSDP / DeepSpeed wrapper's forward would not see. Each process
samples its own rollouts (a ``cfg.seed`` is offset by ``accelerator.process_index``; without one, seed
torch per process, e.g. ``accelerate.utils.set_seed(seed, device_specific=True)``) on its own queries:
plain data parallelism for LoRA-sized gradients. FSDP / ZeRO-3 sharding is not supported.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from elva_baseline.rewards import ElvaInputError
from mrbench.encoders.generative import (
    DEFAULT_RET_TEMPLATE,
    DEFAULT_SYSTEM_PROMPT,
    RET_POSITIONS,
    build_ret_prompts,
    check_template,
    generate_summaries,
    prepare_ret_batch,
    ret_embeddings,
    stop_token_ids,
    summary_logprobs,
)
from mrbench.encoders.qwen2vl import (
    IM_START,
    IMAGE_PAD,
    VISION_END,
    VISION_START,
    PreparedImage,
    PromptBatch,
    PromptParts,
    ensure_token,
    has_tokenizer_files,
    load_qwen2vl,
    unwrap,
)
from mrbench.encoders.qwen2vl import prepare_image as prepare_qwen_image

if TYPE_CHECKING:
    import torch

__all__ = [
    "CONFIG_NAME",
    "DEFAULT_TARGET_MODULES",
    "GenerativePolicy",
    "GenerativeRLConfig",
    "InfoNCEStepConfig",
    "LoraSettings",
    "RetItem",
    "Rollouts",
]

log = logging.getLogger("elva_baseline")

CONFIG_NAME = "elva_generative.json"
"""The JSON record :meth:`GenerativePolicy.save` writes next to the adapter."""
CONFIG_FORMAT = "elva-generative-ret/1"
DEFAULT_TARGET_MODULES = r"^(?!.*visual).*\.(q_proj|k_proj|v_proj|o_proj)$"
"""peft ``target_modules`` regex: the language model's attention projections, not the vision tower's."""
EMBEDDING_LOSSES = ("infonce", "reward")
PLACEHOLDER_TOKENS = (IMAGE_PAD, "<|video_pad|>")
"""Never generated in any summary: one more placeholder than the batch has images breaks the next forward."""
SUPPRESS_TOKENS = (IMAGE_PAD, "<|video_pad|>", VISION_START, VISION_END, IM_START)
"""Structural tokens a *sampled* summary may not contain (masked in the logits for sampling and for
every log-probability of the rollouts, so the policy is the renormalised distribution over the rest)."""


# ----------------------------------------------------------------------------------------------------
# configuration records


def _num(name: str, value: object, *, lo: float | None = None, hi: float | None = None, lo_open: bool = False,
         integer: bool = False) -> None:
    ok = isinstance(value, int if integer else (int, float)) and not isinstance(value, bool)
    ok = ok and math.isfinite(float(value))  # type: ignore[arg-type]
    if ok and lo is not None:
        ok = float(value) > lo if lo_open else float(value) >= lo  # type: ignore[arg-type]
    if ok and hi is not None:
        ok = float(value) <= hi  # type: ignore[arg-type]
    if not ok:
        bound = []
        if lo is not None:
            bound.append(f"{'>' if lo_open else '>='} {lo:g}")
        if hi is not None:
            bound.append(f"<= {hi:g}")
        kind = "an integer" if integer else "a finite number"
        raise ElvaInputError(f"{name} must be {kind}{' ' + ' and '.join(bound) if bound else ''}, got {value!r}")


@dataclass(frozen=True)
class LoraSettings:
    """The LoRA attached to the policy (peft ``LoraConfig``).

    Attributes:
        r, alpha, dropout: LoRA rank, scaling numerator (``alpha / r``) and dropout on the LoRA input.
        target_modules: peft ``target_modules`` (a regex string matched against full module names, or a
            list of name suffixes). Default: the language model's ``q/k/v/o_proj`` only.
        train_ret_embedding: also train (and save) the ``[RET]`` row of the input embedding (plus the
            ``lm_head`` row when untied and ``[RET]`` was added here) with peft ``trainable_token_indices``.
    """

    r: int = 16
    alpha: float = 32.0
    dropout: float = 0.05
    target_modules: str | tuple[str, ...] = DEFAULT_TARGET_MODULES
    train_ret_embedding: bool = True

    def __post_init__(self) -> None:
        _num("LoraSettings.r", self.r, lo=1, integer=True)
        _num("LoraSettings.alpha", self.alpha, lo=0, lo_open=True)
        _num("LoraSettings.dropout", self.dropout, lo=0, hi=0.999)
        if isinstance(self.target_modules, list):
            object.__setattr__(self, "target_modules", tuple(self.target_modules))
        if not self.target_modules or not (isinstance(self.target_modules, str) or all(
                isinstance(t, str) and t for t in self.target_modules)):
            raise ElvaInputError("LoraSettings.target_modules must be a regex string or a non-empty list of module names")


@dataclass(frozen=True)
class GenerativeRLConfig:
    """One GRPO update of the generative regime (:meth:`GenerativePolicy.grpo_step`).

    Attributes:
        group_size: ``G`` rollouts (sampled summaries) per query; ``>= 2``.
        temperature, top_p, top_k: rollout sampling (``top_k = 0``: off). Log-probabilities use the same
            temperature. Default 0.7, 1.0, 0: near greedy, as the feasibility study advises.
        max_summary_tokens: summary cap for rollouts and candidates (``None``: the policy's).
        clip_eps: PPO ratio clip. beta: weight of the k3 KL to the adapter-free reference (``>= 0``; the
            study: always keep an anchor).
        epochs_per_batch: updates per batch of rollouts (1: on-policy, ratio 1).
        embedding_loss_weight, embedding_loss, embedding_tau: the optional embedding-path term (module
            docstring): ``"reward"`` (pathwise gradient of the same reward) or ``"infonce"`` (per-rollout
            InfoNCE over the same candidates at temperature ``embedding_tau``). Weight 0: pure GRPO.
        max_grad_norm: gradient clipping (``None``: off).
        seed: rollout seed (``None``: torch's global generator, so consecutive steps differ). A fixed seed
            makes every step's sampling noise the same — pass ``seed + step`` from the loop instead.
    """

    group_size: int = 8
    temperature: float = 0.7
    top_p: float = 1.0
    top_k: int = 0
    max_summary_tokens: int | None = None
    clip_eps: float = 0.2
    beta: float = 0.2
    epochs_per_batch: int = 1
    embedding_loss_weight: float = 0.0
    embedding_loss: str = "reward"
    embedding_tau: float = 0.05
    max_grad_norm: float | None = 1.0
    seed: int | None = None

    def __post_init__(self) -> None:
        _num("group_size", self.group_size, lo=2, integer=True)
        _num("temperature", self.temperature, lo=0, lo_open=True)
        _num("top_p", self.top_p, lo=0, hi=1, lo_open=True)
        _num("top_k", self.top_k, lo=0, integer=True)
        if self.max_summary_tokens is not None:
            _num("max_summary_tokens", self.max_summary_tokens, lo=1, integer=True)
        _num("clip_eps", self.clip_eps, lo=0, hi=1, lo_open=True)
        _num("beta", self.beta, lo=0)
        _num("epochs_per_batch", self.epochs_per_batch, lo=1, integer=True)
        _num("embedding_loss_weight", self.embedding_loss_weight, lo=0)
        if self.embedding_loss not in EMBEDDING_LOSSES:
            raise ElvaInputError(f"embedding_loss must be one of {', '.join(EMBEDDING_LOSSES)}, got {self.embedding_loss!r}")
        _num("embedding_tau", self.embedding_tau, lo=0, lo_open=True)
        if self.max_grad_norm is not None:
            _num("max_grad_norm", self.max_grad_norm, lo=0, lo_open=True)
        if self.seed is not None:
            _num("seed", self.seed, integer=True)

    @classmethod
    def from_rl_config(cls, rl: Any, **overrides: Any) -> GenerativeRLConfig:
        """From :class:`elva_baseline.config.RLConfig` (``group_size``, ``clip_eps``, ``beta``,
        ``epochs_per_batch``) plus keyword overrides for the generative-only fields."""
        kw = {k: getattr(rl, k) for k in ("group_size", "clip_eps", "beta", "epochs_per_batch") if hasattr(rl, k)}
        kw.update(overrides)
        return cls(**kw)


@dataclass(frozen=True)
class InfoNCEStepConfig:
    """The contrastive warmup step (:meth:`GenerativePolicy.info_nce_step`).

    Attributes:
        tau: InfoNCE temperature. symmetric: average with the candidate→query direction.
        candidate_grad: also differentiate the candidates' ``[RET]`` forward (default; off: candidates
            are embedded without gradient, half the backward cost).
        max_summary_tokens: greedy summary cap (``None``: the policy's). max_grad_norm: clipping.
    """

    tau: float = 0.05
    symmetric: bool = True
    candidate_grad: bool = True
    max_summary_tokens: int | None = None
    max_grad_norm: float | None = 1.0

    def __post_init__(self) -> None:
        _num("tau", self.tau, lo=0, lo_open=True)
        if self.max_summary_tokens is not None:
            _num("max_summary_tokens", self.max_summary_tokens, lo=0, integer=True)
        if self.max_grad_norm is not None:
            _num("max_grad_norm", self.max_grad_norm, lo=0, lo_open=True)

    @classmethod
    def from_warmup_config(cls, warmup: Any, **overrides: Any) -> InfoNCEStepConfig:
        """From :class:`elva_baseline.config.WarmupConfig` (``tau``, ``symmetric``) plus overrides."""
        kw = {k: getattr(warmup, k) for k in ("tau", "symmetric") if hasattr(warmup, k)}
        kw.update(overrides)
        return cls(**kw)


# ----------------------------------------------------------------------------------------------------
# items and rollouts


@dataclass(frozen=True)
class RetItem:
    """One input: ``text`` and/or ``image`` (a PIL image, a :class:`PreparedImage` or a path) and the
    ``instruction`` for its role. Anything with these attributes (``EncodeInput`` included), a
    mapping with these keys, or a plain string (text only) is accepted where items are expected."""

    text: str | None = None
    image: Any = None
    instruction: str | None = None


def _fields(x: Any) -> tuple[str | None, Any, str | None]:
    if isinstance(x, str):
        return x, None, None
    if isinstance(x, Mapping):
        get = x.get
    else:
        def get(k: str, d: Any = None) -> Any:
            return getattr(x, k, d)
    text, image, inst = get("text"), get("image"), get("instruction")
    pixels = get("pixels")
    if isinstance(pixels, PreparedImage):
        image = pixels
    if image is None and get("image_path") is not None:
        image = get("image_path")
    if text is not None and not isinstance(text, str):
        raise ElvaInputError(f"an item's text must be a string or None, got {type(text).__name__}")
    if text is None and image is None:
        raise ElvaInputError("an item has neither text nor image")
    return text, image, inst


@dataclass
class Rollouts:
    """``G`` sampled summaries for each of ``B`` items (row ``b * G + g`` of the flat lists / batch).

    Attributes:
        batch: the left-padded prompt batch, each item's prompt repeated ``G`` times.
        summary_ids: ``B * G`` sampled summaries (token ids, stop token excluded).
        texts, finished: decoded summaries; whether a stop token ended each (else the length cap).
        tokens: long ``[B, G, T]`` the summary ids right-padded with the pad id (``T`` the longest).
        mask: bool ``[B, G, T]`` the real summary tokens.
        old_logp: float ``[B, G, T]`` their log-probabilities under the sampling policy (no grad; 0 at padding).
        temperature, top_p, top_k: the sampling settings (the log-probabilities use ``temperature``).
    """

    batch: PromptBatch
    summary_ids: list[list[int]]
    texts: list[str]
    finished: list[bool]
    tokens: torch.Tensor
    mask: torch.Tensor
    old_logp: torch.Tensor
    n_items: int
    group_size: int
    temperature: float
    top_p: float
    top_k: int

    @property
    def lengths(self) -> torch.Tensor:
        """long ``[B, G]`` summary lengths."""
        return self.mask.sum(-1)

    def group_texts(self, b: int) -> list[str]:
        """The ``G`` summaries of item ``b``."""
        return self.texts[b * self.group_size:(b + 1) * self.group_size]


# ----------------------------------------------------------------------------------------------------
# the policy


class GenerativePolicy:
    """A Qwen2-VL-family model with ``[RET]`` and a trainable LoRA, read like :class:`RetEncoder`.

    Args:
        base: checkpoint directory (``local-dir:`` accepted) or hub id, or an already loaded
            ``Qwen2VLForConditionalGeneration`` / ``Qwen2_5_VL…`` (then ``processor`` is required and
            ``base_dir`` should name its directory so that :meth:`save` can record it).
        processor: the Qwen2-VL processor when ``base`` is a model.
        lora: the LoRA to attach (ignored when ``adapter`` is given).
        adapter: resume from a directory :meth:`save` wrote (its tokenizer and LoRA, trainable).
        ret_token, prompt_template, system_prompt, ret_position, max_summary_tokens, max_length,
        min_pixels, max_pixels, processor_dir: as :class:`mrbench.encoders.generative.RetEncoder`
            (keep them equal to the evaluator's; :meth:`encoder_kwargs` gives them back).
        device, precision: ``"auto"`` / ``"cpu"`` / ``"cuda"…``; ``"auto"`` / ``"fp32"`` / ``"bf16"`` / ``"fp16"``.
        batch_size: chunk size of gradient-free candidate embedding.
        base_dir: the base checkpoint's directory when ``base`` is a loaded model.
    """

    def __init__(
        self,
        base: Any,
        processor: Any = None,
        *,
        lora: LoraSettings | None = None,
        adapter: str | Path | None = None,
        ret_token: str = "[RET]",
        prompt_template: str = DEFAULT_RET_TEMPLATE,
        system_prompt: str | None = DEFAULT_SYSTEM_PROMPT,
        ret_position: str = "at",
        max_summary_tokens: int = 32,
        max_length: int = 1024,
        min_pixels: int | None = None,
        max_pixels: int | None = None,
        processor_dir: str | None = None,
        device: str | None = "auto",
        precision: str | None = "auto",
        batch_size: int = 8,
        base_dir: str | Path | None = None,
        suppress_tokens: Sequence[str] = SUPPRESS_TOKENS,
    ) -> None:
        import torch

        from mrbench.encoders.runtime import resolve_device, resolve_dtype

        if ret_position not in RET_POSITIONS:
            raise ElvaInputError(f"ret_position must be one of {', '.join(RET_POSITIONS)}, got {ret_position!r}")
        _num("max_summary_tokens", max_summary_tokens, lo=1, integer=True)
        _num("max_length", max_length, lo=max_summary_tokens + 8, integer=True)
        _num("batch_size", batch_size, lo=1, integer=True)
        try:
            check_template(prompt_template)
        except ValueError as e:
            raise ElvaInputError(str(e)) from None
        self.lora = lora if lora is not None else LoraSettings()
        self.ret_token = ret_token
        self.prompt_template = prompt_template
        self.system_prompt = system_prompt
        self.ret_position = ret_position
        self.max_summary_tokens = int(max_summary_tokens)
        self.max_length = int(max_length)
        self.min_pixels, self.max_pixels = min_pixels, max_pixels
        self.batch_size = int(batch_size)
        self.label = "elva-generative"

        adapter_path = None if adapter is None else Path(str(adapter).removeprefix("local-dir:")).expanduser()
        if adapter_path is not None and not (adapter_path / "adapter_config.json").is_file():
            raise ElvaInputError(f"adapter {str(adapter)!r} is not a saved policy (no adapter_config.json)")
        if isinstance(base, (str, Path)):
            self.device = resolve_device(device)
            self.dtype = resolve_dtype(self.device, precision)
            tok_dir = adapter_path if adapter_path is not None and has_tokenizer_files(adapter_path) else None
            vl = load_qwen2vl(str(base), label=self.label, device=self.device, dtype=self.dtype, min_pixels=min_pixels,
                              max_pixels=max_pixels, processor_dir=processor_dir, tokenizer_dir=tok_dir)
            model, self.processor = vl.model, vl.processor
            self.base_dir, self.base_revision, self.model_type = str(vl.model_dir), vl.revision, vl.model_type
        else:
            if processor is None:
                raise ElvaInputError("GenerativePolicy(model, processor): a loaded model needs its processor")
            model, self.processor = base, processor
            p = next(model.parameters())
            self.device, self.dtype = str(p.device), p.dtype
            self.base_dir = str(base_dir) if base_dir is not None else str(getattr(model, "name_or_path", "") or "")
            self.base_revision = "unknown"
            self.model_type = str(getattr(model.config, "model_type", "unknown"))
        tok = self.processor.tokenizer
        rows_before = model.get_input_embeddings().weight.shape[0]
        self.ret_token_id, self.ret_token_added = ensure_token(tok, model, ret_token, label=self.label)
        self._resized = model.get_input_embeddings().weight.shape[0] != rows_before
        self.pad_token_id = int(tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id or 0)
        self.stop_ids = stop_token_ids(tok, self.ret_token_id)
        vocab = tok.get_vocab()
        self.suppress_ids = sorted({int(vocab[t]) for t in suppress_tokens if t in vocab} - set(self.stop_ids))
        self.greedy_suppress_ids = sorted({int(vocab[t]) for t in PLACEHOLDER_TOKENS if t in vocab})

        from peft import LoraConfig, PeftModel, get_peft_model

        for p in model.parameters():
            p.requires_grad_(False)
        if adapter_path is not None:
            self.model = PeftModel.from_pretrained(model, str(adapter_path), is_trainable=True)
            cfg_file = adapter_path / CONFIG_NAME
            if cfg_file.is_file():
                lora_rec = json.loads(cfg_file.read_text()).get("lora")
                if isinstance(lora_rec, dict):
                    self.lora = LoraSettings(**lora_rec)
        else:
            tokens = None
            if self.lora.train_ret_embedding:
                tokens = {"embed_tokens": [self.ret_token_id]}
                tied = bool(getattr(model.config, "tie_word_embeddings", False))
                if self._resized and not tied and model.get_output_embeddings() is not None:
                    tokens["lm_head"] = [self.ret_token_id]
            tm = self.lora.target_modules
            cfg = LoraConfig(r=self.lora.r, lora_alpha=self.lora.alpha, lora_dropout=self.lora.dropout,
                             target_modules=tm if isinstance(tm, str) else list(tm), trainable_token_indices=tokens,
                             bias="none")
            self.model = get_peft_model(model, cfg)
        self.model.to(self.device)
        self.model.eval()
        self.hidden_size = int(getattr(getattr(model.config, "text_config", None), "hidden_size", None)
                               or model.config.hidden_size)
        self._torch = torch

    # -- parameters, modes -----------------------------------------------------------------------------
    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        """The LoRA factors (and the ``[RET]`` embedding row(s)); every base weight is frozen."""
        return [p for p in self.model.parameters() if p.requires_grad]

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """Copies of the trainable tensors by name (for tests and change tracking)."""
        return {n: p.detach().clone() for n, p in self.model.named_parameters() if p.requires_grad}

    @contextlib.contextmanager
    def _mode(self, training: bool) -> Iterator[None]:
        was = self.model.training
        self.model.train(training)
        try:
            yield
        finally:
            self.model.train(was)

    def prepare(self, accelerator: Any, optimizer: Any = None) -> Any:
        """Put the model on ``accelerator.device`` and return ``accelerator.prepare_optimizer(optimizer)``
        (the model is deliberately not wrapped; see the module docstring)."""
        self.device = str(accelerator.device)
        self.model.to(accelerator.device)
        return None if optimizer is None else accelerator.prepare_optimizer(optimizer)

    # -- prompts ---------------------------------------------------------------------------------------
    def _parts(self, items: Sequence[Any]) -> list[PromptParts]:
        texts, images, insts = [], [], []
        for it in items:
            text, image, inst = _fields(it)
            if isinstance(image, (str, Path)):
                from mrbench.encoders.harness import load_rgb

                image = load_rgb(Path(image), str(getattr(it, "id", image)))
            if image is not None and not isinstance(image, PreparedImage):
                image = prepare_qwen_image(self.processor, image)  # once per item, not once per rollout
            texts.append(text)
            images.append(image)
            insts.append(inst)
        return build_ret_prompts(texts, images, insts, template=self.prompt_template, system_prompt=self.system_prompt)

    def _batch(self, parts: Sequence[PromptParts], max_summary_tokens: int) -> PromptBatch:
        batch = prepare_ret_batch(self.processor, parts, max_length=self.max_length,
                                  max_summary_tokens=max_summary_tokens, label=self.label)
        return batch.to(self.device, self.dtype)

    def _cap(self, n: int | None) -> int:
        return self.max_summary_tokens if n is None else int(n)

    @contextlib.contextmanager
    def _suppress(self, ids: Sequence[int]) -> Iterator[None]:
        """Mask ``ids`` out of the LM head's logits (``-inf``) while active: a forward hook, so
        ``generate`` and ``summary_logprobs`` see the same restricted distribution."""
        if not ids:
            yield
            return
        head = unwrap(self.model).get_output_embeddings()
        index = self._torch.as_tensor(list(ids), dtype=self._torch.long)

        def hook(_module: Any, _inputs: Any, output: Any) -> Any:
            return output.index_fill(-1, index.to(output.device), float("-inf"))

        handle = head.register_forward_hook(hook)
        try:
            yield
        finally:
            handle.remove()

    @contextlib.contextmanager
    def _seeded(self, seed: int | None) -> Iterator[None]:
        torch = self._torch
        if seed is None:
            yield
            return
        dev = torch.device(self.device)
        if dev.type == "cuda":
            idx = dev.index if dev.index is not None else torch.cuda.current_device()
            ctx = torch.random.fork_rng(devices=[idx], device_type="cuda")
        else:
            ctx = torch.random.fork_rng(devices=[])
        with ctx:
            torch.manual_seed(int(seed))
            yield

    # -- rollouts and log-probabilities ----------------------------------------------------------------
    def rollouts(
        self,
        items: Sequence[Any],
        G: int,
        *,
        temperature: float = 0.7,
        top_p: float = 1.0,
        top_k: int = 0,
        max_summary_tokens: int | None = None,
        seed: int | None = None,
    ) -> Rollouts:
        """Sample ``G`` summaries per item (no grad, eval mode) and their old log-probabilities.

        ``seed``: sample under a forked torch generator seeded with it (reproducible; the global
        generator is left untouched); ``None`` uses the global generator. (``generate`` takes no
        ``torch.Generator``, so a seed is the way to pin the samples.)
        """
        torch = self._torch
        _num("G", G, lo=1, integer=True)
        if not items:
            raise ElvaInputError("rollouts: no items")
        cap = self._cap(max_summary_tokens)
        _num("max_summary_tokens", cap, lo=1, integer=True)
        parts = self._parts(items)
        batch = self._batch([p for p in parts for _ in range(G)], cap)
        with torch.no_grad(), self._mode(False), self._suppress(self.suppress_ids):
            with self._seeded(seed):
                out = generate_summaries(self.model, self.processor, batch, cap, do_sample=True,
                                         temperature=temperature, top_p=top_p, top_k=top_k, stop_ids=self.stop_ids)
            lp, mask = summary_logprobs(self.model, batch, out.summary_ids, temperature=temperature,
                                        pad_token_id=self.pad_token_id)
        b = len(items)
        width = lp.shape[1]
        tokens = torch.full((b * G, width), self.pad_token_id, dtype=torch.long, device=lp.device)
        for i, s in enumerate(out.summary_ids):
            if s:
                tokens[i, :len(s)] = torch.as_tensor(s, device=lp.device)
        return Rollouts(batch=batch, summary_ids=out.summary_ids, texts=out.texts, finished=out.finished,
                        tokens=tokens.view(b, G, width), mask=mask.view(b, G, width),
                        old_logp=lp.float().view(b, G, width), n_items=b, group_size=int(G),
                        temperature=float(temperature), top_p=float(top_p), top_k=int(top_k))

    def logprobs(self, rollouts: Rollouts) -> tuple[torch.Tensor, torch.Tensor]:
        """``(logp [B, G, T], mask)`` of the rollouts' summary tokens under the current policy, with
        gradient (in the model's current train/eval mode)."""
        with self._suppress(self.suppress_ids):
            lp, mask = summary_logprobs(self.model, rollouts.batch, rollouts.summary_ids,
                                        temperature=rollouts.temperature, pad_token_id=self.pad_token_id)
        shape = rollouts.mask.shape
        return lp.float().view(shape), mask.view(shape)

    def ref_logprobs(self, rollouts: Rollouts) -> torch.Tensor:
        """``[B, G, T]`` log-probabilities under the reference policy: this model with its adapters
        (LoRA and the trained ``[RET]`` row) disabled, no grad, eval mode."""
        torch = self._torch
        with torch.no_grad(), self._mode(False), self.model.disable_adapter(), self._suppress(self.suppress_ids):
            lp, _ = summary_logprobs(self.model, rollouts.batch, rollouts.summary_ids,
                                     temperature=rollouts.temperature, pad_token_id=self.pad_token_id)
        return lp.float().view(rollouts.mask.shape)

    # -- embeddings ------------------------------------------------------------------------------------
    def _ret(self, batch: PromptBatch, summary_ids: Sequence[Sequence[int]]) -> torch.Tensor:
        emb = ret_embeddings(self.model, batch, summary_ids, ret_token_id=self.ret_token_id,
                             pad_token_id=self.pad_token_id, position=self.ret_position)
        return self._torch.nn.functional.normalize(emb.float(), dim=-1)

    def query_embeddings(self, rollouts: Rollouts, grad: bool = False) -> torch.Tensor:
        """``[B, G, H]`` L2-normalised ``[RET]`` states after each rollout's summary (with gradient
        when ``grad``, in the model's current mode; else no grad)."""
        ctx = contextlib.nullcontext() if grad else self._torch.no_grad()
        with ctx:
            emb = self._ret(rollouts.batch, rollouts.summary_ids)
        return emb.view(rollouts.n_items, rollouts.group_size, -1)

    def greedy_summaries(self, items: Sequence[Any], max_summary_tokens: int | None = None) -> list[list[int]]:
        """Greedy summary ids of ``items`` (no grad, eval mode) — what ``RetEncoder`` writes."""
        torch = self._torch
        cap = self._cap(max_summary_tokens)
        out: list[list[int]] = []
        with torch.no_grad(), self._mode(False), self._suppress(self.greedy_suppress_ids):
            for i in range(0, len(items), self.batch_size):
                batch = self._batch(self._parts(items[i:i + self.batch_size]), cap)
                out += generate_summaries(self.model, self.processor, batch, cap, stop_ids=self.stop_ids).summary_ids
        return out

    def embed(
        self,
        items: Sequence[Any],
        *,
        grad: bool = False,
        summaries: Sequence[Sequence[int]] | None = None,
        max_summary_tokens: int | None = None,
    ) -> torch.Tensor:
        """``[N, H]`` L2-normalised ``[RET]`` embeddings after greedy summaries (generated here without
        gradient unless given). ``grad``: one differentiable ``[RET]`` forward over all items in the
        model's current mode; else chunked by ``batch_size``, no grad, eval mode."""
        torch = self._torch
        if not items:
            return torch.zeros((0, self.hidden_size), device=self.device)
        cap = self._cap(max_summary_tokens)
        if summaries is None:
            summaries = self.greedy_summaries(items, cap)
        if len(summaries) != len(items):
            raise ElvaInputError(f"embed: {len(summaries)} summaries for {len(items)} items")
        if grad:
            return self._ret(self._batch(self._parts(items), cap), summaries)
        chunks = []
        with torch.no_grad(), self._mode(False):
            for i in range(0, len(items), self.batch_size):
                batch = self._batch(self._parts(items[i:i + self.batch_size]), cap)
                chunks.append(self._ret(batch, summaries[i:i + self.batch_size]))
        return torch.cat(chunks)

    def candidate_embeddings(self, items: Sequence[Any], max_summary_tokens: int | None = None) -> torch.Tensor:
        """``[N, H]`` greedy, gradient-free, L2-normalised embeddings (equal to ``RetEncoder``'s, normalised)."""
        return self.embed(items, grad=False, max_summary_tokens=max_summary_tokens)

    # -- candidates of a step --------------------------------------------------------------------------
    def _candidates(
        self, positives: Any, negatives: Any, neg_mask: Any, n_items: int, cap: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """``(pos [B, H], neg [B, N, H], neg_mask [B, N] or None, positive ids [B])``; items are embedded
        once each (shared objects once in all), tensors used as given (normalised)."""
        torch = self._torch
        F = torch.nn.functional
        pos_t = positives if isinstance(positives, torch.Tensor) else None
        neg_t = negatives if isinstance(negatives, torch.Tensor) else None
        uniq: dict[int, int] = {}
        todo: list[Any] = []

        def slot(it: Any) -> int:
            k = id(it)
            if k not in uniq:
                uniq[k] = len(todo)
                todo.append(it)
            return uniq[k]

        if pos_t is None:
            if len(positives) != n_items:
                raise ElvaInputError(f"{len(positives)} positives for {n_items} queries")
            pos_idx = [slot(p) for p in positives]
        if neg_t is None:
            if len(negatives) != n_items:
                raise ElvaInputError(f"{len(negatives)} negative lists for {n_items} queries")
            neg_idx = [[slot(n) for n in row] for row in negatives]
            if not any(neg_idx):
                raise ElvaInputError("every query needs at least one negative")
        emb = self.candidate_embeddings(todo, cap) if todo else None
        if pos_t is None:
            pos = emb[torch.as_tensor(pos_idx, device=emb.device)]
            pos_ids = torch.as_tensor(pos_idx)
        else:
            if pos_t.dim() != 2 or pos_t.shape[0] != n_items:
                raise ElvaInputError(f"positive embeddings must be [B, H] with B = {n_items}, got {tuple(pos_t.shape)}")
            pos = F.normalize(pos_t.detach().float().to(self.device), dim=-1)
            pos_ids = _row_ids(pos)
        if neg_t is None:
            width = max(len(r) for r in neg_idx)
            idx = torch.zeros((n_items, width), dtype=torch.long)
            valid = torch.zeros((n_items, width), dtype=torch.bool)
            for i, row in enumerate(neg_idx):
                idx[i, :len(row)] = torch.as_tensor(row, dtype=torch.long)
                valid[i, :len(row)] = True
            neg = emb[idx.to(emb.device)] * valid.to(emb.device)[..., None]
            mask = None if bool(valid.all()) else valid.to(self.device)
            if neg_mask is not None:
                raise ElvaInputError("neg_mask goes with negative embeddings; item lists are padded here")
        else:
            if neg_t.dim() != 3 or neg_t.shape[0] != n_items:
                raise ElvaInputError(f"negative embeddings must be [B, N, H] with B = {n_items}, got {tuple(neg_t.shape)}")
            neg = F.normalize(neg_t.detach().float().to(self.device), dim=-1)
            mask = None if neg_mask is None else neg_mask.to(self.device).bool()
        return pos, neg, mask, pos_ids

    # -- one GRPO update -------------------------------------------------------------------------------
    def grpo_step(
        self,
        queries: Sequence[Any],
        positives: Sequence[Any] | torch.Tensor,
        negatives: Sequence[Sequence[Any]] | torch.Tensor,
        reward_fn: Any,
        optimizer: Any,
        cfg: GenerativeRLConfig | None = None,
        *,
        neg_mask: torch.Tensor | None = None,
        accelerator: Any = None,
        extra_reward_fn: Callable[[Rollouts], torch.Tensor] | None = None,
        advantage_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
        loss_fn: Callable[..., tuple[torch.Tensor, dict[str, float]]] | None = None,
    ) -> dict[str, float]:
        """One full GRPO update; returns its statistics.

        Args:
            queries: ``B`` query items. positives: ``B`` items or embeddings ``[B, H]``. negatives:
                ``B`` lists of items (ragged lists are padded and masked) or embeddings ``[B, N, H]``
                (with an optional ``neg_mask [B, N]``). Item candidates are embedded greedily by the
                current policy without gradient; pass tensors to use cached embeddings.
            reward_fn: a :class:`~elva_baseline.rewards.RewardConfig` (or ``None``: the default one)
                for :func:`~elva_baseline.rewards.total_reward`, or a callable
                ``reward_fn(s_pos [B, G], s_neg [B, G, N], neg_mask=...) -> [B, G]``.
            optimizer: over :meth:`trainable_parameters` (``optimizer.step()`` / ``zero_grad()``).
            cfg: :class:`GenerativeRLConfig`.
            accelerator: optional ``accelerate.Accelerator`` (module docstring).
            extra_reward_fn: optional ``f(rollouts) -> [B, G]`` added to the reward (a format or length
                term; tests use it for a known-answer reward).
            advantage_fn, loss_fn: override :func:`~elva_baseline.rewards.group_advantages` /
                :func:`~elva_baseline.losses.grpo_loss` (same signatures).

        Returns:
            floats: ``reward_mean``, ``reward_std`` (over all rollouts), ``reward_group_std`` (mean
            within-group std), ``zero_adv_groups`` (fraction of groups with equal rewards: no signal),
            ``s_pos_mean``, ``pos_rank_mean``, ``hit1`` (positive ranked first, ties against it),
            ``loss``, ``policy_loss``, ``embedding_loss``, ``kl``, ``clip_frac``, ``ratio_mean``,
            ``summary_len``, ``finished_frac``, ``distinct_per_group`` (distinct summaries per group /
            G), ``grad_norm``, ``skipped`` (1.0 when no summary token was sampled at all), ``time_s``.
        """
        torch = self._torch
        from elva_baseline.rewards import RewardConfig, positive_rank, total_reward

        cfg = cfg if cfg is not None else GenerativeRLConfig()
        if advantage_fn is None:
            from elva_baseline.rewards import group_advantages as advantage_fn
        if loss_fn is None:
            from elva_baseline.losses import grpo_loss as loss_fn
        if reward_fn is None or isinstance(reward_fn, RewardConfig):
            rcfg = reward_fn

            def reward_fn(s_pos: torch.Tensor, s_neg: torch.Tensor, neg_mask: torch.Tensor | None = None) -> torch.Tensor:
                return total_reward(s_pos, s_neg, rcfg, neg_mask=neg_mask)

        t0 = time.perf_counter()
        n = len(queries)
        if n == 0:
            raise ElvaInputError("grpo_step: no queries")
        cap = self._cap(cfg.max_summary_tokens)
        G = cfg.group_size
        seed = cfg.seed
        if seed is not None and accelerator is not None:
            seed = int(seed) + int(accelerator.process_index)

        ro = self.rollouts(queries, G, temperature=cfg.temperature, top_p=cfg.top_p, top_k=cfg.top_k,
                           max_summary_tokens=cap, seed=seed)
        pos, neg, mask_n, pos_ids = self._candidates(positives, negatives, neg_mask, n, cap)
        with self._mode(False):
            q = self.query_embeddings(ro, grad=False)
        s_pos = torch.einsum("bgh,bh->bg", q, pos)
        s_neg = torch.einsum("bgh,bnh->bgn", q, neg)
        mask_g = None if mask_n is None else mask_n[:, None, :].expand(s_neg.shape)  # [B, G, N]
        with torch.no_grad():
            rewards = reward_fn(s_pos, s_neg, neg_mask=mask_g).float()
            if extra_reward_fn is not None:
                rewards = rewards + extra_reward_fn(ro).to(rewards.device).float()
            if rewards.shape != (n, G):
                raise ElvaInputError(f"the reward must be [B, G] = [{n}, {G}], got {tuple(rewards.shape)}")
            adv = advantage_fn(rewards)
        ref = self.ref_logprobs(ro) if cfg.beta > 0 else None
        has_tokens = bool(ro.mask.any())
        use_emb = cfg.embedding_loss_weight > 0

        params = self.trainable_parameters()
        stats_loss: dict[str, float] = {}
        total = policy_l = emb_l = torch.zeros(())
        grad_norm = float("nan")
        skipped = not has_tokens and not use_emb
        if not skipped:
            for epoch in range(cfg.epochs_per_batch):
                with self._mode(True), _autocast(accelerator):
                    loss = torch.zeros((), device=q.device)
                    if has_tokens:
                        lp, mask = self.logprobs(ro)
                        old = lp.detach() if cfg.epochs_per_batch == 1 else ro.old_logp
                        policy_l, stats_loss = loss_fn(lp, old, ref, adv, clip_eps=cfg.clip_eps, beta=cfg.beta, mask=mask)
                        loss = loss + policy_l
                    if use_emb:
                        emb_l = self._embedding_loss(ro, pos, neg, mask_n, pos_ids, reward_fn, cfg)
                        loss = loss + cfg.embedding_loss_weight * emb_l
                grad_norm = self._update(loss, params, optimizer, accelerator, cfg.max_grad_norm)
                total = loss.detach()

        with torch.no_grad():
            rank = positive_rank(s_pos, s_neg, neg_mask=mask_g)
            distinct = [len({tuple(s) for s in ro.summary_ids[b * G:(b + 1) * G]}) / G for b in range(n)]
            group_std = rewards.std(dim=-1, correction=0)
        out = {
            "reward_mean": float(rewards.mean()),
            "reward_std": float(rewards.std(correction=0)),
            "reward_group_std": float(group_std.mean()),
            "zero_adv_groups": float((group_std == 0).float().mean()),
            "s_pos_mean": float(s_pos.mean()),
            "pos_rank_mean": float(rank.float().mean()),
            "hit1": float((rank == 1).float().mean()),
            "loss": float(total),
            "policy_loss": float(policy_l.detach()) if has_tokens and not skipped else float("nan"),
            "embedding_loss": float(emb_l.detach()) if use_emb else float("nan"),
            "kl": float(stats_loss.get("kl", float("nan"))),
            "clip_frac": float(stats_loss.get("clip_frac", float("nan"))),
            "ratio_mean": float(stats_loss.get("ratio_mean", float("nan"))),
            "summary_len": float(ro.lengths.float().mean()),
            "finished_frac": sum(ro.finished) / len(ro.finished),
            "distinct_per_group": sum(distinct) / n,
            "grad_norm": grad_norm,
            "skipped": float(skipped),
            "time_s": time.perf_counter() - t0,
        }
        return out

    def _embedding_loss(self, ro: Rollouts, pos: torch.Tensor, neg: torch.Tensor, mask_n: torch.Tensor | None,
                        pos_ids: torch.Tensor, reward_fn: Any, cfg: GenerativeRLConfig) -> torch.Tensor:
        """The optional embedding-path term, with gradient through the rollouts' ``[RET]`` forward."""
        torch = self._torch
        qg = self.query_embeddings(ro, grad=True)  # [B, G, H]
        if cfg.embedding_loss == "reward":
            sp = torch.einsum("bgh,bh->bg", qg, pos)
            sn = torch.einsum("bgh,bnh->bgn", qg, neg)
            mask_g = None if mask_n is None else mask_n[:, None, :].expand(sn.shape)
            return -reward_fn(sp, sn, neg_mask=mask_g).float().mean()
        from elva_baseline.losses import info_nce, shared_positive_mask

        b, g, h = qg.shape
        rows = qg.reshape(b * g, h)
        rep = torch.arange(b, device=rows.device).repeat_interleave(g)
        hn_mask = None if mask_n is None else mask_n[rep]
        same = shared_positive_mask(pos_ids.to(rows.device)[rep])
        return info_nce(rows, pos[rep], temperature=cfg.embedding_tau, symmetric=False, hard_negatives=neg[rep],
                        hard_negative_mask=hn_mask, false_negative_mask=same)

    def _update(self, loss: torch.Tensor, params: list[Any], optimizer: Any, accelerator: Any,
                max_grad_norm: float | None) -> float:
        torch = self._torch
        if accelerator is not None:
            accelerator.backward(loss)
            _allreduce_grads(params, accelerator)
        else:
            loss.backward()
        if max_grad_norm is not None:
            if accelerator is not None:
                norm = accelerator.clip_grad_norm_(params, max_grad_norm)
            else:
                norm = torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
        else:
            grads = [p.grad.detach().float().norm() for p in params if p.grad is not None]
            norm = torch.stack(grads).norm() if grads else torch.zeros(())
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return float(norm)

    # -- the contrastive warmup ------------------------------------------------------------------------
    def info_nce_step(
        self,
        queries: Sequence[Any],
        positives: Sequence[Any],
        optimizer: Any,
        cfg: InfoNCEStepConfig | None = None,
        *,
        hard_negatives: Sequence[Sequence[Any]] | None = None,
        positive_ids: Sequence[Any] | None = None,
        accelerator: Any = None,
    ) -> dict[str, float]:
        """One InfoNCE update on greedy ``[RET]`` embeddings (summaries fixed, gradient through the
        ``[RET]`` forward); in-batch negatives, optional per-query ``hard_negatives`` (ragged lists are
        masked) and ``positive_ids`` (equal ids are not each other's negatives).

        Returns floats ``loss``, ``acc`` (query→candidate top-1 in the batch), ``pos_sim``, ``neg_sim``
        (mean in-batch off-diagonal), ``summary_len``, ``grad_norm``, ``time_s``.
        """
        torch = self._torch
        from elva_baseline.losses import info_nce, shared_positive_mask

        cfg = cfg if cfg is not None else InfoNCEStepConfig()
        t0 = time.perf_counter()
        if len(queries) != len(positives) or len(queries) < 1:
            raise ElvaInputError(f"info_nce_step: {len(queries)} queries for {len(positives)} positives")
        cap = self._cap(cfg.max_summary_tokens)
        q_sum = self.greedy_summaries(queries, cap)
        c_sum = self.greedy_summaries(positives, cap)
        flat_neg: list[Any] = []
        if hard_negatives is not None:
            if len(hard_negatives) != len(queries):
                raise ElvaInputError(f"info_nce_step: {len(hard_negatives)} hard-negative lists for {len(queries)} queries")
            flat_neg = [x for row in hard_negatives for x in row]
        n_sum = self.greedy_summaries(flat_neg, cap) if flat_neg else []
        false_neg = None
        if positive_ids is not None:
            codes = {k: i for i, k in enumerate(dict.fromkeys(positive_ids))}
            false_neg = shared_positive_mask(torch.as_tensor([codes[k] for k in positive_ids], device=self.device))
        params = self.trainable_parameters()
        with self._mode(True), _autocast(accelerator):
            q = self.embed(queries, grad=True, summaries=q_sum, max_summary_tokens=cap)
            c = self.embed(positives, grad=cfg.candidate_grad, summaries=c_sum, max_summary_tokens=cap)
            hn = hn_mask = None
            if flat_neg:
                e = self.embed(flat_neg, grad=cfg.candidate_grad, summaries=n_sum, max_summary_tokens=cap)
                width = max(len(r) for r in hard_negatives)  # type: ignore[union-attr]
                idx = torch.zeros((len(queries), width), dtype=torch.long)
                hn_mask = torch.zeros((len(queries), width), dtype=torch.bool)
                k = 0
                for i, row in enumerate(hard_negatives):  # type: ignore[arg-type]
                    idx[i, :len(row)] = torch.arange(k, k + len(row))
                    hn_mask[i, :len(row)] = True
                    k += len(row)
                hn = e[idx.to(e.device)]
                hn_mask = hn_mask.to(e.device)
            loss = info_nce(q, c, temperature=cfg.tau, symmetric=cfg.symmetric, hard_negatives=hn,
                            hard_negative_mask=hn_mask, false_negative_mask=false_neg)
        grad_norm = self._update(loss, params, optimizer, accelerator, cfg.max_grad_norm)
        with torch.no_grad():
            sim = q.detach() @ c.detach().T
            b = sim.shape[0]
            off = sim[~torch.eye(b, dtype=torch.bool, device=sim.device)]
        return {
            "loss": float(loss.detach()),
            "acc": float((sim.argmax(dim=1) == torch.arange(b, device=sim.device)).float().mean()),
            "pos_sim": float(sim.diagonal().mean()),
            "neg_sim": float(off.mean()) if off.numel() else float("nan"),
            "summary_len": sum(len(s) for s in q_sum) / len(q_sum),
            "grad_norm": grad_norm,
            "time_s": time.perf_counter() - t0,
        }

    # -- saving ----------------------------------------------------------------------------------------
    def encoder_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of ``RetEncoder(base_dir, adapter=dir, **kwargs)`` that read this policy as it was trained."""
        return {
            "max_summary_tokens": self.max_summary_tokens,
            "ret_token": self.ret_token,
            "prompt_template": self.prompt_template,
            "system_prompt": self.system_prompt,
            "ret_position": self.ret_position,
            "max_length": self.max_length,
            "min_pixels": self.min_pixels,
            "max_pixels": self.max_pixels,
        }

    def save(self, directory: str | Path, *, extra: Mapping[str, Any] | None = None,
             final_path: str | Path | None = None) -> Path:
        """Write the peft adapter (LoRA + the ``[RET]`` row), the tokenizer with ``[RET]`` and
        :data:`CONFIG_NAME` (base model, ``[RET]``, prompt settings, LoRA, ``extra``) to ``directory``.

        ``RetEncoder(base_dir, adapter=directory, **config["encoder_kwargs"])`` then gives this policy's
        greedy embeddings. ``final_path``: the path the record names (when ``directory`` is a staging
        directory renamed into place afterwards)."""
        from elva_baseline import __version__

        out = Path(directory)
        named = Path(final_path) if final_path is not None else out
        out.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(str(out))
        self.processor.tokenizer.save_pretrained(str(out))
        record = {
            "format": CONFIG_FORMAT,
            "elva_baseline_version": __version__,
            "base_model": self.base_dir,
            "base_revision": self.base_revision,
            "model_type": self.model_type,
            "encoder": f"ret:{self.base_dir}",
            "encoder_kwargs": {"adapter": str(named), **self.encoder_kwargs()},
            "ret_token": self.ret_token,
            "ret_token_id": self.ret_token_id,
            "ret_token_added": self.ret_token_added,
            "hidden_size": self.hidden_size,
            "lora": {**dataclasses.asdict(self.lora), "target_modules": (
                self.lora.target_modules if isinstance(self.lora.target_modules, str) else list(self.lora.target_modules))},
            "extra": dict(extra or {}),
        }
        (out / CONFIG_NAME).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
        return out


# ----------------------------------------------------------------------------------------------------
# helpers


def _row_ids(x: torch.Tensor) -> torch.Tensor:
    """An id per row of ``x``, equal for identical rows (positives shared by several queries)."""
    import torch

    keys = [tuple(r) for r in x.detach().cpu().tolist()]
    codes = {k: i for i, k in enumerate(dict.fromkeys(keys))}
    return torch.as_tensor([codes[k] for k in keys])


def _autocast(accelerator: Any) -> Any:
    return accelerator.autocast() if accelerator is not None else contextlib.nullcontext()


def _allreduce_grads(params: Sequence[Any], accelerator: Any) -> None:
    """Average the trainable gradients over processes (one flat all-reduce; missing grads count as 0)."""
    if int(getattr(accelerator, "num_processes", 1)) <= 1:
        return
    import torch

    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    flat = accelerator.reduce(flat, reduction="mean")
    k = 0
    for p, g in zip(params, grads):
        n = g.numel()
        p.grad = flat[k:k + n].view_as(p).to(p.dtype)
        k += n

