"""Checkpoints of the ELVA reference trainer: one directory, written atomically.

Layout::

    config.json            format, format_version, model (architecture: arch, open_clip model_cfg,
                           preprocess_cfg, sigma, learn_sigma, seed, pretrained), training (the trainer's
                           config, verbatim), step, stage, versions (mrbench, elva_baseline, torch,
                           open_clip), weights (file name), weights_sha256
    model.safetensors      the DualTowerModel state dict (open_clip model under ``clip.``, the Gaussian
                           head's ``head.log_sigma``)
    optimizer.safetensors  (optional, for resume) the optimizer's tensors, keyed ``state/<param>/<name>``
    trainer_state.json     (optional, for resume) the optimizer's param groups and scalar state, the
                           sha256 of optimizer.safetensors and the trainer's ``extra`` (RNG states,
                           scheduler, data position…)

A *compact* checkpoint (:func:`export_compact`, used for the bundled ``contrastive-tiny`` and
``elva-tiny``) stores large embedding tables as the rows a vocabulary uses: ``<name>.rows`` (int64
``[k]``) and ``<name>.values`` (``[k, D]``) instead of ``<name>``, with ``sparse_rows`` in config.json
(``{name: {"shape": [V, D], "fill": 0.0}}``); every other row is ``fill`` when loaded. Tokens outside
the kept vocabulary then embed as ``fill`` (zero) vectors.

The directory is staged next to its destination and renamed into place
(:func:`mrbench.data.io.atomic_dir`), so an interrupted save never leaves a half-written checkpoint.
:func:`load_checkpoint` checks everything it reads and fails with one line naming the culprit: a
missing file, an unknown config key, a weights file whose sha256 differs from the one recorded, a
tensor whose shape differs from the architecture's.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mrbench.errors import EncoderError

if TYPE_CHECKING:
    import torch

    from elva_baseline.model import DualTowerModel

FORMAT = "elva-checkpoint"
FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
STATE_TENSORS_FILE = "trainer_tensors.safetensors"
"""The trainer's own tensors for resume (``extra_tensors``), beside ``trainer_state.json``."""
TRAINER_STATE_FILE = "trainer_state.json"

CONFIG_KEYS = frozenset({
    "format", "format_version", "model", "training", "step", "stage", "mrbench_version",
    "elva_baseline_version", "torch_version", "open_clip_version", "weights", "weights_sha256", "sparse_rows",
})
"""Keys config.json may hold (anything else is refused: a typo, or a newer format)."""
MODEL_KEYS = frozenset({"arch", "model_cfg", "preprocess_cfg", "sigma", "learn_sigma", "seed", "pretrained"})
REQUIRED_KEYS = ("format", "format_version", "model", "step", "stage", "weights_sha256")


class CheckpointError(EncoderError):
    """A checkpoint directory is missing, incomplete, tampered with or does not match its architecture."""


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _versions() -> dict[str, str]:
    import torch

    import elva_baseline
    import mrbench

    try:
        import open_clip

        oc = str(getattr(open_clip, "__version__", "?"))
    except ImportError:  # pragma: no cover
        oc = "?"
    return {
        "mrbench_version": mrbench.__version__,
        "elva_baseline_version": elva_baseline.__version__,
        "torch_version": str(torch.__version__),
        "open_clip_version": oc,
    }


def _is_checkpoint_dir(path: Path) -> bool:
    try:
        return json.loads((path / CONFIG_FILE).read_text(encoding="utf-8")).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


@contextlib.contextmanager
def _writing(out: Path) -> Iterator[None]:
    """Turn a failed write into one :class:`CheckpointError` naming the checkpoint ``out`` (safetensors
    raises its own ``SafetensorError``, e.g. on a full disk, which no command line would catch)."""
    from safetensors import SafetensorError

    try:
        yield
    except (SafetensorError, OSError) as e:
        if isinstance(e, CheckpointError):
            raise
        reason = (str(getattr(e, "strerror", None) or e).strip().splitlines() or [type(e).__name__])[0]
        full = getattr(e, "errno", None) == errno.ENOSPC or "no space left" in reason.lower()
        how = ("free disk space, then re-run with --resume to continue from the last complete checkpoint"
               if full else f"check that {out.parent} is writable, then re-run (with --resume to continue a training run)")
        raise CheckpointError(f"cannot write checkpoint {out} ({reason}); {how}") from e


def _state_tensors(sd: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Contiguous CPU copies (safetensors refuses shared or strided storage)."""
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in sd.items()}


def save_checkpoint(
    directory: str | os.PathLike[str],
    model: DualTowerModel,
    config: dict[str, Any],
    *,
    step: int,
    stage: str,
    optimizer: torch.optim.Optimizer | None = None,
    extra: dict[str, Any] | None = None,
    extra_tensors: dict[str, torch.Tensor] | None = None,
    overwrite: bool = False,
    sparse_rows: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write ``model`` (and optionally the optimizer and trainer state) to ``directory``; return it.

    Args:
        config: the training configuration (JSON-able), stored verbatim under ``"training"``.
        step, stage: where training stands (``stage`` e.g. ``"contrastive"`` or ``"grpo"``).
        optimizer: also write ``optimizer.safetensors`` + ``trainer_state.json`` (for resume).
        extra: JSON-able trainer state for resume (RNG states, scheduler, epoch…), in trainer_state.json.
        extra_tensors: the trainer's tensors for resume (e.g. embedded candidate pools), in
            ``trainer_tensors.safetensors`` (its sha256 in trainer_state.json).
        overwrite: replace an existing checkpoint at ``directory`` (never a directory that holds
            anything but a checkpoint).
        sparse_rows: ``{tensor name: row indices}``: store only these rows of these 2-D tensors
            (compact format, see the module docs); the others load as zeros.
    """
    from safetensors.torch import save_file

    from mrbench.data.io import atomic_dir

    out = Path(directory)
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise CheckpointError(f"save_checkpoint: step must be a non-negative integer, got {step!r}")
    if not isinstance(stage, str) or not stage:
        raise CheckpointError(f"save_checkpoint: stage must be a non-empty string, got {stage!r}")
    if not isinstance(config, dict):
        raise CheckpointError(f"save_checkpoint: config must be a dict, got {type(config).__name__}")
    try:
        training = json.loads(json.dumps(config))
        extra_json = json.loads(json.dumps(extra)) if extra is not None else None
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"save_checkpoint: config and extra must be JSON-serialisable ({e})") from None
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise CheckpointError(f"{out}: directory exists and is not empty; pass overwrite=True or choose another path")
        if not _is_checkpoint_dir(out):
            raise CheckpointError(
                f"{out}: directory holds something other than an elva checkpoint; refusing to replace it"
            )
    tensors = _state_tensors(model.state_dict())
    sparse: dict[str, Any] = {}
    for name, rows in (sparse_rows or {}).items():
        import torch

        if name not in tensors or tensors[name].dim() != 2:
            raise CheckpointError(f"save_checkpoint: sparse_rows names {name!r}, which is not a 2-D tensor of the model")
        full = tensors.pop(name)
        idx = torch.unique(torch.as_tensor(rows, dtype=torch.int64))
        if len(idx) and (idx.min() < 0 or idx.max() >= full.shape[0]):
            raise CheckpointError(f"save_checkpoint: sparse_rows[{name!r}] has a row outside 0..{full.shape[0] - 1}")
        tensors[f"{name}.rows"] = idx.contiguous()
        tensors[f"{name}.values"] = full[idx].contiguous()
        sparse[name] = {"shape": list(full.shape), "fill": 0.0}
    with _writing(out), atomic_dir(out, overwrite=True) as tmp:
        save_file(tensors, str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
        cfg = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "model": model.config_dict(),
            "training": training,
            "step": int(step),
            "stage": stage,
            **_versions(),
            "weights": WEIGHTS_FILE,
            "weights_sha256": file_sha256(tmp / WEIGHTS_FILE),
            **({"sparse_rows": sparse} if sparse else {}),
        }
        if optimizer is not None or extra_json is not None or extra_tensors:
            write_trainer_state(tmp, optimizer, step=step, stage=stage, extra=extra_json, extra_tensors=extra_tensors)
        (tmp / CONFIG_FILE).write_text(json.dumps(cfg, indent=1, sort_keys=True), encoding="utf-8")
        _usual_mode(tmp, tmp / CONFIG_FILE)
    return out


def _usual_mode(directory: Path, reference: Path) -> None:
    """Give the ``*.safetensors`` files in ``directory`` the permissions of ``reference`` (a file
    created with ``open``: ``0o666 & ~umask``, like every other output); safetensors writes through a
    temporary file created 0600, which would leave the weights unreadable to the group and others."""
    mode = reference.stat().st_mode & 0o777
    for f in directory.glob("*.safetensors"):
        if f.is_file() and not f.is_symlink() and f.stat().st_mode & 0o777 != mode:
            os.chmod(f, mode)


def write_trainer_state(directory: str | os.PathLike[str], optimizer: torch.optim.Optimizer | None, *, step: int,
                        stage: str, extra: dict[str, Any] | None = None,
                        extra_tensors: dict[str, torch.Tensor] | None = None) -> None:
    """Write ``trainer_state.json`` (step, stage, JSON-able ``extra``), with an optimizer
    ``optimizer.safetensors``, and with ``extra_tensors`` ``trainer_tensors.safetensors`` into
    ``directory`` (what :func:`load_trainer_state` reads back)."""
    from safetensors.torch import save_file

    d = Path(directory)
    state: dict[str, Any] = {"step": int(step), "stage": stage, "extra": extra}
    with _writing(_destination(d)):
        if optimizer is not None:
            tensors, meta = _flatten_optimizer(optimizer)
            save_file(tensors, str(d / OPTIMIZER_FILE), metadata={"format": "pt"})
            state["optimizer"] = meta
            state["optimizer_sha256"] = file_sha256(d / OPTIMIZER_FILE)
        if extra_tensors:
            save_file({k: t.detach().contiguous() for k, t in extra_tensors.items()}, str(d / STATE_TENSORS_FILE),
                      metadata={"format": "pt"})
            state["tensors_sha256"] = file_sha256(d / STATE_TENSORS_FILE)
        (d / TRAINER_STATE_FILE).write_text(json.dumps(state, indent=1, sort_keys=True), encoding="utf-8")
        _usual_mode(d, d / TRAINER_STATE_FILE)


def _destination(d: Path) -> Path:
    """The checkpoint a staging directory of :func:`mrbench.data.io.atomic_dir` (``.NAME.staging-*``)
    becomes; any other directory is itself."""
    import re

    m = re.fullmatch(r"\.(.+)\.staging-[0-9a-f]+", d.name)
    return d.with_name(m.group(1)) if m else d


def _flatten_optimizer(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    import torch

    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for pid, st in sd["state"].items():
        for name, val in st.items():
            if isinstance(val, torch.Tensor):
                tensors[f"state/{pid}/{name}"] = val.detach().to("cpu").contiguous().clone()
            else:
                scalars.setdefault(str(pid), {})[name] = val
    groups = []
    for g in sd["param_groups"]:
        groups.append({k: (v.item() if isinstance(v, torch.Tensor) and v.numel() == 1 else v) for k, v in g.items()})
    try:
        json.dumps(groups)
        json.dumps(scalars)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"save_checkpoint: optimizer state is not JSON-serialisable ({e})") from None
    return tensors, {"type": type(optimizer).__name__, "param_groups": groups, "scalars": scalars}


# --------------------------------------------------------------------------------------------------
# loading


def _need(path: Path, what: str) -> Path:
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path.parent)!r}: {path.name} is missing ({what}); pass a directory "
                              "written by elva_baseline.checkpoint.save_checkpoint")
    return path


RUN_CHECKPOINTS = ("final", "last", "rl", "warmup")
"""The checkpoint subdirectories of an ``elva-train`` run directory, the one to evaluate first."""


def _run_directory_hint(d: Path) -> str | None:
    """One line naming the checkpoints to pass when ``d`` is an ``elva-train`` run directory (its
    config.json is the trainer's configuration, not a checkpoint's, and/or it holds ``final/`` or
    ``last/``), else ``None``."""
    try:
        cfg = json.loads((d / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        cfg = None
    if isinstance(cfg, dict) and cfg.get("format") == FORMAT:
        return None  # a checkpoint (checked by the caller)
    run_config = isinstance(cfg, dict) and {"stages", "warmup", "rl"} <= set(cfg)
    if not (run_config or (d / "final").is_dir() or (d / "last").is_dir()):
        return None
    if run_config and cfg.get("regime") == "generative":
        base = (cfg.get("generative") or {}).get("base") or "BASE"
        return (f"{d} is an elva-train run directory of the generative regime, whose checkpoints are adapters; pass "
                f"-e ret:{base} --encoder-kwargs '{{\"adapter\": \"{d / 'final'}\"}}'")
    found = [d / n for n in RUN_CHECKPOINTS if _is_checkpoint_dir(d / n)]
    if not found:
        return f"{d} is an elva-train run directory that holds no checkpoint yet; pass a checkpoint such as a run's final/"
    if found[0].name == "final":
        return f"{d} is an elva-train run directory; pass {d / 'final'} (or {d / 'last'} for the last checkpoint)"
    return f"{d} is an elva-train run directory (unfinished: no final/ yet); pass {found[0]} for its latest checkpoint"


def read_config(directory: str | os.PathLike[str]) -> dict[str, Any]:
    """The checked config.json of a checkpoint directory (no weights read)."""
    d = Path(directory).expanduser()
    if not d.is_dir():
        raise CheckpointError(
            f"checkpoint directory {str(d)!r} not found"
            + (" (it is a file; pass the directory that holds config.json and model.safetensors)" if d.is_file() else "")
        )
    run_hint = _run_directory_hint(d)
    if run_hint:
        raise CheckpointError(run_hint)
    path = _need(d / CONFIG_FILE, "the architecture and training config")
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise CheckpointError(f"checkpoint {str(d)!r}: {CONFIG_FILE} is not valid JSON ({e})") from None
    if not isinstance(cfg, dict):
        raise CheckpointError(f"checkpoint {str(d)!r}: {CONFIG_FILE} must hold a JSON object")
    unknown = sorted(set(cfg) - CONFIG_KEYS)
    if unknown:
        raise CheckpointError(
            f"checkpoint {str(d)!r}: {CONFIG_FILE} has unknown key {unknown[0]!r}"
            + (f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else "")
            + f"; known keys: {', '.join(sorted(CONFIG_KEYS))} (a newer format? upgrade elva_baseline)"
        )
    missing = [k for k in REQUIRED_KEYS if k not in cfg]
    if missing:
        raise CheckpointError(f"checkpoint {str(d)!r}: {CONFIG_FILE} lacks {', '.join(missing)}")
    if cfg["format"] != FORMAT:
        raise CheckpointError(f"checkpoint {str(d)!r}: {CONFIG_FILE} has format {cfg['format']!r}, expected {FORMAT!r}")
    if cfg["format_version"] != FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {str(d)!r}: format_version {cfg['format_version']!r} is not supported (this elva_baseline "
            f"reads version {FORMAT_VERSION}); upgrade elva_baseline"
        )
    model = cfg["model"]
    if not isinstance(model, dict) or "model_cfg" not in model:
        raise CheckpointError(f"checkpoint {str(d)!r}: {CONFIG_FILE}: 'model' must be an object with 'model_cfg'")
    unknown = sorted(set(model) - MODEL_KEYS)
    if unknown:
        raise CheckpointError(
            f"checkpoint {str(d)!r}: {CONFIG_FILE} has unknown key 'model.{unknown[0]}'; known model keys: "
            f"{', '.join(sorted(MODEL_KEYS))}"
        )
    return cfg


def load_checkpoint(
    directory: str | os.PathLike[str], *, device: str | torch.device = "cpu", trainable: bool = False
) -> tuple[DualTowerModel, dict[str, Any]]:
    """``(model, config)`` of a checkpoint directory: the model rebuilt from config.json, its weights
    checked against the recorded sha256 and loaded strictly, on ``device``; frozen and in eval mode
    unless ``trainable`` (resume; then restore the optimizer with :func:`load_trainer_state`)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from elva_baseline.model import DualTowerModel

    d = Path(directory).expanduser()
    cfg = read_config(d)
    wpath = _need(d / str(cfg.get("weights") or WEIGHTS_FILE), "the model weights")
    digest = file_sha256(wpath)
    if digest != cfg["weights_sha256"]:
        raise CheckpointError(
            f"checkpoint {str(d)!r}: {wpath.name} has sha256 {digest[:16]}… but {CONFIG_FILE} records "
            f"{str(cfg['weights_sha256'])[:16]}…; the weights were modified or belong to another checkpoint"
        )
    m = cfg["model"]
    try:
        model = DualTowerModel(
            m["model_cfg"],
            preprocess_cfg=m.get("preprocess_cfg") or None,
            sigma=float(m.get("sigma", 0.02)),
            learn_sigma=bool(m.get("learn_sigma", False)),
            seed=int(m.get("seed", 0)),
            arch=m.get("arch"),
        )
    except CheckpointError:
        raise
    except Exception as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise CheckpointError(f"checkpoint {str(d)!r}: cannot build the architecture in {CONFIG_FILE} ({first})") from None
    model.pretrained = m.get("pretrained")
    try:
        state = load_file(str(wpath))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"checkpoint {str(d)!r}: {wpath.name} is not a readable safetensors file ({e})") from None
    state = _densify(d, wpath.name, state, cfg.get("sparse_rows") or {})
    want = model.state_dict()
    for k, t in want.items():
        if k not in state:
            raise CheckpointError(
                f"checkpoint {str(d)!r}: {wpath.name} lacks tensor {k!r} of the architecture in {CONFIG_FILE}"
            )
        if tuple(state[k].shape) != tuple(t.shape):
            raise CheckpointError(
                f"checkpoint {str(d)!r}: tensor {k!r} has shape {tuple(state[k].shape)} in {wpath.name} but "
                f"{tuple(t.shape)} in the architecture of {CONFIG_FILE}; the config does not match the weights"
            )
    extra_keys = sorted(set(state) - set(want))
    if extra_keys:
        raise CheckpointError(
            f"checkpoint {str(d)!r}: {wpath.name} has tensor {extra_keys[0]!r} the architecture in {CONFIG_FILE} "
            "does not have; the config does not match the weights"
        )
    model.load_state_dict(state, strict=True)
    if trainable:
        return model.train().to(device), cfg
    model.requires_grad_(False)
    return model.eval().to(device), cfg


def _densify(d: Path, wname: str, state: dict[str, Any], sparse: Any) -> dict[str, Any]:
    """Rebuild the dense tensors of a compact checkpoint (``sparse_rows`` in config.json)."""
    import torch

    if not isinstance(sparse, dict):
        raise CheckpointError(f"checkpoint {str(d)!r}: {CONFIG_FILE}: 'sparse_rows' must be an object")
    for name, spec in sparse.items():
        rows, values = state.pop(f"{name}.rows", None), state.pop(f"{name}.values", None)
        shape = spec.get("shape") if isinstance(spec, dict) else None
        if rows is None or values is None:
            raise CheckpointError(f"checkpoint {str(d)!r}: {wname} lacks {name}.rows or {name}.values, which "
                                  f"{CONFIG_FILE} announces under sparse_rows")
        if (not isinstance(shape, list) or len(shape) != 2 or rows.dim() != 1
                or tuple(values.shape) != (len(rows), shape[1]) or (len(rows) and int(rows.max()) >= shape[0])):
            raise CheckpointError(f"checkpoint {str(d)!r}: {name}.rows/.values in {wname} do not match the shape "
                                  f"{shape} recorded under sparse_rows in {CONFIG_FILE}")
        dense = torch.full(shape, float(spec.get("fill", 0.0)), dtype=values.dtype)
        dense[rows.long()] = values
        state[name] = dense
    return state


def export_compact(source: str | os.PathLike[str], destination: str | os.PathLike[str], texts: Any,
                   *, overwrite: bool = False) -> Path:
    """Write a compact copy of checkpoint ``source`` (no optimizer state) keeping only the rows of the
    token embedding that ``texts`` (an iterable of strings: the vocabulary the model will see) and the
    tokenizer's special tokens use. On those texts the compact model embeds exactly as ``source``."""
    import torch

    model, cfg = load_checkpoint(source)
    ids: set[int] = set()
    batch: list[str] = []

    def flush() -> None:
        if batch:
            ids.update(torch.unique(model.tokenize(batch)).tolist())
            batch.clear()

    for t in texts:
        batch.append(str(t))
        if len(batch) >= 4096:
            flush()
    flush()
    ids.update(int(i) for i in (getattr(model.tokenizer, "sot_token_id", None), getattr(model.tokenizer, "eot_token_id", None), 0)
               if i is not None)
    return save_checkpoint(destination, model, cfg.get("training") or {}, step=int(cfg["step"]), stage=str(cfg["stage"]),
                           overwrite=overwrite, sparse_rows={"clip.token_embedding.weight": sorted(ids)})


# --------------------------------------------------------------------------------------------------
# recovery of a checkpoint whose replacement was cut short


def _leftovers(dest: Path) -> tuple[list[Path], list[Path]]:
    """The ``.NAME.staging-*`` and ``.NAME.old-*`` directories :func:`mrbench.data.io.atomic_dir`
    leaves next to ``dest`` when it is killed, newest first."""
    def newest_first(pattern: str) -> list[Path]:
        found = [p for p in dest.parent.glob(pattern) if p.is_dir() and not p.is_symlink()]
        return sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)

    return newest_first(f".{dest.name}.staging-*"), newest_first(f".{dest.name}.old-*")


def is_complete_resume_point(directory: str | os.PathLike[str]) -> bool:
    """Whether ``directory`` holds a whole checkpoint to resume from: its ``trainer_state.json`` is
    valid JSON whose recorded ``optimizer.safetensors`` sha256 matches, and either an elva checkpoint
    (config.json checked by :func:`read_config`, weights matching their recorded sha256) or a
    generative-regime adapter (its ``elva_generative.json`` is valid JSON). What the save writes last
    (config.json, resp. trainer_state.json) is thus present: a save killed midway is not complete."""
    d = Path(directory)
    try:
        state = json.loads((d / TRAINER_STATE_FILE).read_text(encoding="utf-8"))
        if not isinstance(state, dict):
            return False
        if state.get("optimizer") is not None and file_sha256(d / OPTIMIZER_FILE) != state.get("optimizer_sha256"):
            return False
        if state.get("tensors_sha256") is not None and file_sha256(d / STATE_TENSORS_FILE) != state["tensors_sha256"]:
            return False
        if _is_checkpoint_dir(d):
            cfg = read_config(d)
            return file_sha256(d / str(cfg.get("weights") or WEIGHTS_FILE)) == cfg["weights_sha256"]
        from elva_baseline.generative_policy import CONFIG_NAME

        return isinstance(json.loads((d / CONFIG_NAME).read_text(encoding="utf-8")), dict)
    except (OSError, ValueError, CheckpointError):
        return False


def recover_checkpoint_dir(path: str | os.PathLike[str], *, clean: bool = True) -> Path | None:
    """Repair what a kill during a checkpoint's replacement left at ``path`` (e.g. a run's ``last/``).

    :func:`mrbench.data.io.atomic_dir` swaps a checkpoint in with two renames (``path`` →
    ``.NAME.old-*``, then ``.NAME.staging-*`` → ``path``); killed between them, ``path`` is missing
    although both checkpoints are on disk. When ``path`` is missing, the newest complete
    (:func:`is_complete_resume_point`) staging directory — else the newest complete old one — is
    renamed to ``path`` and returned. Once ``path`` exists, the leftover staging/old directories
    next to it (of completed swaps, or saves killed midway) are removed. Returns ``None`` when
    nothing was recovered; ``clean=False`` only recovers. Call it only while no save to ``path`` is
    under way (a removed staging directory would fail that save)."""
    import shutil

    dest = Path(path)
    staging, old = _leftovers(dest)
    recovered = None
    if not dest.exists():
        for cand in staging + old:
            if is_complete_resume_point(cand):
                os.replace(cand, dest)
                recovered = cand
                break
    if clean and dest.is_dir():
        for p in staging + old:
            if p != recovered:
                shutil.rmtree(p, ignore_errors=True)
    return recovered


def load_trainer_state(
    directory: str | os.PathLike[str], optimizer: torch.optim.Optimizer | None = None
) -> dict[str, Any]:
    """Resume: restore ``optimizer`` (built over the same parameters, in the same order) from the
    checkpoint and return ``{"step", "stage", "extra"}`` from trainer_state.json, and ``"tensors"``
    where ``extra_tensors`` were saved with it."""
    from safetensors.torch import load_file

    d = Path(directory).expanduser()
    path = _need(d / TRAINER_STATE_FILE, "the trainer state for resume; was it saved with optimizer= or extra=?")
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise CheckpointError(f"checkpoint {str(d)!r}: {TRAINER_STATE_FILE} is not valid JSON ({e})") from None
    if optimizer is not None:
        meta = state.get("optimizer")
        if meta is None:
            raise CheckpointError(f"checkpoint {str(d)!r}: saved without optimizer state; cannot restore the optimizer")
        opath = _need(d / OPTIMIZER_FILE, "the optimizer tensors")
        digest = file_sha256(opath)
        if digest != state.get("optimizer_sha256"):
            raise CheckpointError(
                f"checkpoint {str(d)!r}: {OPTIMIZER_FILE} has sha256 {digest[:16]}… but {TRAINER_STATE_FILE} records "
                f"{str(state.get('optimizer_sha256'))[:16]}…; the file was modified"
            )
        if meta.get("type") != type(optimizer).__name__:
            raise CheckpointError(
                f"checkpoint {str(d)!r}: optimizer state is for {meta.get('type')}, not {type(optimizer).__name__}"
            )
        tensors = load_file(str(opath))
        st: dict[int, dict[str, Any]] = {}
        for key, t in tensors.items():
            _, pid, name = key.split("/", 2)
            st.setdefault(int(pid), {})[name] = t
        for pid, vals in meta.get("scalars", {}).items():
            st.setdefault(int(pid), {}).update(vals)
        groups = meta["param_groups"]
        if len(groups) != len(optimizer.param_groups) or any(
            len(g["params"]) != len(o["params"]) for g, o in zip(groups, optimizer.param_groups)
        ):
            raise CheckpointError(
                f"checkpoint {str(d)!r}: the saved optimizer has {[len(g['params']) for g in groups]} parameters per "
                f"group, this one {[len(o['params']) for o in optimizer.param_groups]}; build it over the same model"
            )
        try:
            optimizer.load_state_dict({"state": st, "param_groups": groups})
        except (ValueError, RuntimeError, KeyError) as e:
            raise CheckpointError(f"checkpoint {str(d)!r}: cannot restore the optimizer ({e})") from None
    out = {"step": state.get("step"), "stage": state.get("stage"), "extra": state.get("extra")}
    if state.get("tensors_sha256") is not None:
        tpath = _need(d / STATE_TENSORS_FILE, "the trainer's tensors")
        digest = file_sha256(tpath)
        if digest != state["tensors_sha256"]:
            raise CheckpointError(
                f"checkpoint {str(d)!r}: {STATE_TENSORS_FILE} has sha256 {digest[:16]}… but {TRAINER_STATE_FILE} "
                f"records {str(state['tensors_sha256'])[:16]}…; the file was modified")
        out["tensors"] = load_file(str(tpath))
    return out
