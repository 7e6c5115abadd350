"""The trainer's configuration: one typed, validated record, read from JSON or TOML and overridden
from the command line (``--set rl.steps=50``).

Sections mirror the pipeline: ``data`` (benchmark and tasks), ``model`` (dual-encoder towers),
``generative`` (the ``[RET]`` regime's base model, LoRA and sampling),
``warmup`` (InfoNCE), ``rl`` (GRPO), ``reward`` (ELVA's rule rewards), ``sampling`` (RL negatives),
``eval`` and ``checkpoint``. Every constant of the paper is a field here. Unknown keys and
out-of-range values (every number must be finite) are refused with one line naming the key.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

STAGES = ("warmup", "rl")
REGIMES = ("dual", "generative")
OBJECTIVES = ("grpo", "surrogate", "hardneg")
"""What the ``rl`` stage optimises (dual regime): ``grpo`` (ELVA), and two attribution baselines that see the
same mined negatives for the same number of updates — ``surrogate`` (the same expected reward, pathwise
gradient) and ``hardneg`` (InfoNCE over the positive and the mined negatives)."""


MAX_LR = 1.0
"""The largest learning rate accepted (AdamW steps of that size already wreck the model)."""


class ConfigError(ValueError):
    """A configuration key is unknown or a value is out of range (the message names it)."""


@dataclass
class DataConfig:
    benchmark: str = "mrbench-synth-train"
    """A benchmark whose split is ``train`` (built-in name or directory)."""
    tasks: list[str] | None = None
    """Task subset (default: all)."""
    holdout: float = 0.1
    """Fraction of training queries held out for periodic evaluation (deterministic from the seed)."""


@dataclass
class ModelConfig:
    arch: str = "tiny"
    """``"tiny"`` (a small ViT + text transformer) or any open_clip architecture name."""
    pretrained: str | None = None
    """A weights file for ``arch`` (fine-tuning a real open_clip model), else random init."""
    init: str | None = None
    """Start from this trainer checkpoint directory (e.g. another run's ``warmup/``) instead of a fresh
    model; ``arch`` and ``pretrained`` are then ignored and the exploration σ comes from ``rl.sigma``."""


@dataclass
class WarmupConfig:
    steps: int = 300
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.01
    tau: float = 0.05
    """InfoNCE temperature."""
    symmetric: bool = True


@dataclass
class RLConfig:
    steps: int = 100
    objective: str = "grpo"
    """``grpo`` (ELVA: policy gradient on the rule reward), ``surrogate`` (maximise the same expected
    reward by its pathwise gradient: reparameterised Gaussian samples, same KL) or ``hardneg`` (InfoNCE
    at ``rl.tau`` over the positive and the same mined negatives, no KL). Same negatives, same updates."""
    tau: float = 0.05
    """Temperature of the ``hardneg`` objective."""
    queries_per_step: int = 16
    group_size: int = 8
    """G: rollouts per query."""
    lr: float = 1e-4
    clip_eps: float = 0.2
    beta: float = 0.2
    """KL penalty to the frozen warmup model."""
    sigma: float = 0.02
    """Std of the Gaussian exploration around the deterministic embedding (dual regime)."""
    learnable_sigma: bool = False
    epochs_per_batch: int = 1
    """Policy updates per batch of rollouts (1: the ratio is 1 and clipping inactive, as in on-policy GRPO)."""
    fresh_candidates: bool = False
    """Embed each update's candidates with the current model (else: the pools are re-embedded every
    ``refresh_every`` updates). The policy samples the query side only; the paper also samples the
    candidates' embeddings — not done here (about 100× the cost per update on a CPU)."""
    refresh_every: int = 10
    """Re-embed the candidate pools with the current model every this many RL updates."""


@dataclass
class GenerativeConfig:
    """The generative ``[RET]`` regime (``regime = "generative"``)."""

    base: str | None = None
    """Qwen2-VL / Qwen2.5-VL model directory (or hub id when online)."""
    lora_r: int = 16
    lora_alpha: float = 32.0
    lora_dropout: float = 0.05
    temperature: float = 0.7
    """Rollout sampling temperature (close to greedy: evaluation is greedy)."""
    top_p: float = 1.0
    max_summary_tokens: int = 16
    device: str = "auto"
    precision: str = "auto"
    batch_size: int = 8
    min_pixels: int | None = None
    max_pixels: int | None = None


@dataclass
class EvalConfig:
    every: int = 100
    """Evaluate on the held-out queries every this many steps (0: only at stage ends)."""
    ks: list[int] = field(default_factory=lambda: [1, 5])


@dataclass
class CheckpointConfig:
    every: int = 100
    """Checkpoint every this many steps (and at every stage end)."""


@dataclass
class TrainConfig:
    regime: str = "dual"
    seed: int = 0
    stages: list[str] = field(default_factory=lambda: list(STAGES))
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    warmup: WarmupConfig = field(default_factory=WarmupConfig)
    rl: RLConfig = field(default_factory=RLConfig)
    generative: GenerativeConfig = field(default_factory=GenerativeConfig)
    reward: dict[str, Any] = field(default_factory=dict)
    """Fields of :class:`elva_baseline.rewards.RewardConfig` (α, ε, δ, γ, log base, ablations)."""
    sampling: dict[str, Any] = field(default_factory=dict)
    """Fields of :class:`elva_baseline.sampling.SamplingConfig` (hard/random counts, threshold, mode, seed);
    ``seed`` (of the random negatives) defaults to the run's ``seed``."""
    eval: EvalConfig = field(default_factory=EvalConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)

    # -- construction -------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: dict[str, Any], *, where: str = "config") -> TrainConfig:
        cfg = _build(cls, data, where)
        cfg.validate()
        return cfg

    @classmethod
    def from_file(cls, path: str | Path) -> TrainConfig:
        p = Path(path)
        try:
            text = p.read_text()
        except OSError as e:
            raise ConfigError(f"{p}: cannot read the config ({e.strerror or e})") from None
        try:
            if p.suffix == ".toml":
                import tomllib

                data = tomllib.loads(text)
            else:
                data = json.loads(text)
        except ValueError as e:
            raise ConfigError(f"{p}: not valid {'TOML' if p.suffix == '.toml' else 'JSON'} ({e})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{p}: the config must be an object of sections")
        return cls.from_dict(data, where=str(p))

    def to_dict(self) -> dict[str, Any]:
        """The configuration as given (``reward`` / ``sampling`` hold only the keys set)."""
        return dataclasses.asdict(self)

    def resolved_dict(self) -> dict[str, Any]:
        """:meth:`to_dict` with the ``reward`` and ``sampling`` tables resolved to every field of their
        records (defaults filled in): what a run saves in ``config.json``, the constants it trained with."""
        data = self.to_dict()
        data["reward"] = dataclasses.asdict(self.reward_config())
        data["sampling"] = dataclasses.asdict(self.sampling_config())
        return data

    def with_overrides(self, assignments: list[str]) -> TrainConfig:
        """Apply ``section.key=value`` assignments (values parsed as JSON, else kept as strings)."""
        data = self.to_dict()
        for a in assignments:
            if "=" not in a:
                raise ConfigError(f"--set {a!r}: expected section.key=value, e.g. rl.steps=50")
            key, raw = a.split("=", 1)
            try:
                value: Any = json.loads(raw)
            except ValueError:
                value = raw
            node = data
            parts = key.strip().split(".")
            for part in parts[:-1]:
                if not isinstance(node.get(part), dict):
                    raise ConfigError(f"--set {a!r}: {part!r} is not a config section")
                node = node[part]
            node[parts[-1]] = value
        return TrainConfig.from_dict(data, where="--set")

    def first_difference(self, other: TrainConfig) -> tuple[str, Any, Any] | None:
        """``(dotted key, self's value, other's value)`` of the first key (in field order, sections
        and the ``reward`` / ``sampling`` tables descended into) whose values differ, or ``None`` when
        both configurations are equal. The tables are compared resolved (:meth:`resolved_dict`): a key
        left out equals its default given explicitly. A key absent on one side has the value :data:`UNSET`."""
        return _first_difference(self.resolved_dict(), other.resolved_dict(), "")

    # -- validation ---------------------------------------------------------------------------------
    def validate(self) -> None:
        def need(ok: bool, key: str, what: str) -> None:
            if not ok:
                raise ConfigError(f"config {key}: {what}")

        need(self.regime in REGIMES, "regime", f"must be one of {', '.join(REGIMES)}, got {self.regime!r}")
        need(bool(self.stages) and all(s in STAGES for s in self.stages), "stages",
             f"must be a non-empty subset of {', '.join(STAGES)}, got {self.stages!r}")
        need(0.0 <= self.data.holdout < 1.0, "data.holdout", f"must be in [0, 1), got {self.data.holdout}")
        for sec in ("warmup", "rl"):
            s = getattr(self, sec)
            need(s.steps >= 0, f"{sec}.steps", f"must be >= 0, got {s.steps}")
            need(0 < s.lr <= MAX_LR, f"{sec}.lr", f"must be in (0, {MAX_LR:g}], got {s.lr}")
        need(self.warmup.batch_size >= 2, "warmup.batch_size", f"must be >= 2 (in-batch negatives), got {self.warmup.batch_size}")
        need(self.warmup.tau > 0, "warmup.tau", f"must be > 0, got {self.warmup.tau}")
        need(self.warmup.weight_decay >= 0, "warmup.weight_decay", f"must be >= 0, got {self.warmup.weight_decay}")
        need(self.rl.group_size >= 2, "rl.group_size", f"G must be >= 2 (group-relative advantages), got {self.rl.group_size}")
        need(self.rl.queries_per_step >= 1, "rl.queries_per_step", f"must be >= 1, got {self.rl.queries_per_step}")
        need(0 < self.rl.clip_eps < 1, "rl.clip_eps", f"must be in (0, 1), got {self.rl.clip_eps}")
        need(self.rl.objective in OBJECTIVES, "rl.objective",
             f"must be one of {', '.join(OBJECTIVES)}, got {self.rl.objective!r}")
        need(self.rl.tau > 0, "rl.tau", f"must be > 0, got {self.rl.tau}")
        need(self.rl.objective == "grpo" or self.regime == "dual", "rl.objective",
             "the generative regime supports only grpo")
        need(self.rl.beta >= 0, "rl.beta", f"must be >= 0, got {self.rl.beta}")
        need(self.rl.sigma > 0, "rl.sigma", f"must be > 0, got {self.rl.sigma}")
        need(self.rl.refresh_every >= 1, "rl.refresh_every", f"must be >= 1, got {self.rl.refresh_every}")
        need(self.rl.epochs_per_batch >= 1, "rl.epochs_per_batch", f"must be >= 1, got {self.rl.epochs_per_batch}")
        need(self.generative.lora_r >= 1, "generative.lora_r", f"must be >= 1, got {self.generative.lora_r}")
        need(self.generative.lora_alpha > 0, "generative.lora_alpha", f"must be > 0, got {self.generative.lora_alpha}")
        need(0 <= self.generative.lora_dropout < 1, "generative.lora_dropout",
             f"must be in [0, 1), got {self.generative.lora_dropout}")
        need(self.generative.temperature > 0, "generative.temperature", f"must be > 0, got {self.generative.temperature}")
        need(0 < self.generative.top_p <= 1, "generative.top_p", f"must be in (0, 1], got {self.generative.top_p}")
        need(self.generative.max_summary_tokens >= 1, "generative.max_summary_tokens",
             f"must be >= 1 (rollouts sample the summary), got {self.generative.max_summary_tokens}")
        need(self.eval.every >= 0, "eval.every", f"must be >= 0, got {self.eval.every}")
        need(bool(self.eval.ks) and all(isinstance(k, int) and k >= 1 for k in self.eval.ks), "eval.ks",
             f"must be positive integers, got {self.eval.ks}")
        need(self.checkpoint.every >= 0, "checkpoint.every", f"must be >= 0, got {self.checkpoint.every}")
        # the reward and sampling sections are validated by their own records
        self.reward_config()
        self.sampling_config()

    def reward_config(self) -> Any:
        from elva_baseline.rewards import RewardConfig

        return _sub_record(RewardConfig, self.reward, "reward")

    def sampling_config(self) -> Any:
        from elva_baseline.sampling import SamplingConfig

        return _sub_record(SamplingConfig, {"seed": self.seed, **self.sampling}, "sampling")


UNSET = "<unset>"
"""The value :meth:`TrainConfig.first_difference` reports for a key one side does not have."""


def _first_difference(a: dict[str, Any], b: dict[str, Any], prefix: str) -> tuple[str, Any, Any] | None:
    for key in list(a) + [k for k in b if k not in a]:
        va, vb = a.get(key, UNSET), b.get(key, UNSET)
        if isinstance(va, dict) and isinstance(vb, dict):
            found = _first_difference(va, vb, f"{prefix}{key}.")
            if found is not None:
                return found
        elif va != vb:
            return f"{prefix}{key}", va, vb
    return None


def _sub_record(cls: Any, values: dict[str, Any], section: str) -> Any:
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ConfigError(f"config {section}.{unknown[0]}: unknown key; known: {', '.join(sorted(names))}")
    try:
        return cls(**values)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"config {section}: {e}") from None


def _build(cls: Any, data: Any, where: str, prefix: str = "") -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: {prefix.rstrip('.') or 'config'} must be an object, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        from mrbench.errors import did_you_mean

        raise ConfigError(f"{where}: unknown key {prefix + unknown[0]!r}{did_you_mean(unknown[0], list(fields))}")
    kwargs: dict[str, Any] = {}
    hints = _field_types(cls)
    for name, value in data.items():
        sub = hints.get(name)
        if dataclasses.is_dataclass(sub):
            kwargs[name] = _build(sub, value, where, f"{prefix}{name}.")
        else:
            kwargs[name] = _coerce(value, fields[name], f"{prefix}{name}", where)
            kwargs[name] = _check_optional(kwargs[name], sub, f"{prefix}{name}", where)
    return cls(**kwargs)


def _check_optional(value: Any, hint: Any, key: str, where: str) -> Any:
    """``X | None`` fields (default None): a given value must be an ``X``; for ``list[str] | None``
    a non-empty list of strings, a single string being taken as a one-element list. Returns the value."""
    import types
    import typing

    if value is None or typing.get_origin(hint) not in (typing.Union, types.UnionType):
        return value
    lists = [a for a in typing.get_args(hint) if typing.get_origin(a) is list]
    if lists:
        item = (typing.get_args(lists[0]) or (object,))[0]
        if item is str and isinstance(value, str):
            return [value]
        if not isinstance(value, list) or not value or not all(isinstance(v, item) and not isinstance(v, bool)
                                                               for v in value):
            what = "strings" if item is str else f"{getattr(item, '__name__', item)} values"
            raise ConfigError(f"{where}: {key} must be a non-empty list of {what} (or null), got {value!r}")
        return value
    plain = tuple(a for a in typing.get_args(hint) if a is not type(None) and isinstance(a, type))
    if plain == (int,) and isinstance(value, bool) or plain and not isinstance(value, plain):
        names = " or ".join("a string" if a is str else f"a {a.__name__}" for a in plain)
        raise ConfigError(f"{where}: {key} must be {names} (or null), got {value!r}")
    return value


def _field_types(cls: Any) -> dict[str, Any]:
    import typing

    return typing.get_type_hints(cls)


def _coerce(value: Any, f: dataclasses.Field, key: str, where: str) -> Any:
    default = f.default if f.default is not dataclasses.MISSING else (
        f.default_factory() if f.default_factory is not dataclasses.MISSING else None  # type: ignore[misc]
    )
    if default is None or value is None:
        return value
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: {key} must be true or false, got {value!r}")
        return value
    if isinstance(default, int) and not isinstance(default, bool):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: {key} must be an integer, got {value!r}")
        return value
    if isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: {key} must be a number, got {value!r}")
        if not math.isfinite(float(value)):
            raise ConfigError(f"{where}: {key} must be a finite number, got {value!r}")
        return float(value)
    if isinstance(default, str) and not isinstance(value, str):
        raise ConfigError(f"{where}: {key} must be a string, got {value!r}")
    if isinstance(default, (list, dict)) and not isinstance(value, type(default)):
        raise ConfigError(f"{where}: {key} must be a {type(default).__name__}, got {value!r}")
    return value
