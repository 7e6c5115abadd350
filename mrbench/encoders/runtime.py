"""What every model-backed encoder family shares: device and precision, the hub (offline fail-fast),
revisions, tokenizer sanity, and out-of-memory back-off.

Conventions:

* **device** ``"auto"`` is CUDA when ``torch.cuda.is_available()``, else CPU; ``"cuda:1"`` etc. pass
  through. **precision** ``"auto"`` is bf16 on a CUDA device that supports it (fp16 otherwise) and
  fp32 on the CPU; ``"fp32"``, ``"bf16"``, ``"fp16"`` force one. Models run under
  :func:`autocast` with that dtype; outputs are returned as float32.
* **offline**: with ``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) set, a hub id that is not in the
  local Hugging Face cache fails at once with one line saying which local path to pass — no network
  lookup, no minute-long hang.
* **revision**: a hub snapshot's commit hash when the model comes from the Hugging Face cache, else
  ``"sha256:<first 16 hex>"`` over the weight files' bytes (memoised per file by path, size and
  mtime in ``$MRBENCH_HOME/revisions.json``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from mrbench.errors import EncoderError

if TYPE_CHECKING:
    import torch

log = logging.getLogger("mrbench.encoders")

T = TypeVar("T")

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")


# ----------------------------------------------------------------------------------------------------
# device and precision


def resolve_device(device: str | None = "auto") -> str:
    """``"auto"``/``None`` → ``"cuda"`` when available, else ``"cpu"``; a CUDA request without CUDA is an error."""
    import torch

    if device in (None, "", "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    dev = str(device)
    if dev.startswith("cuda") and not torch.cuda.is_available():
        raise EncoderError(f"device {dev!r} was requested but CUDA is not available here; pass device='cpu' or 'auto'")
    try:
        torch.device(dev)
    except (RuntimeError, ValueError):
        raise EncoderError(f"device {dev!r} is not a torch device; pass 'auto', 'cpu', 'cuda' or 'cuda:N'") from None
    return dev


def resolve_dtype(device: str, precision: str | None = "auto") -> torch.dtype:
    """The compute dtype for ``precision`` on ``device`` (see the module docstring)."""
    import torch

    p = precision or "auto"
    if p not in PRECISIONS:
        raise EncoderError(f"precision {p!r} is not one of {', '.join(PRECISIONS)}")
    if p == "fp32":
        return torch.float32
    if p == "bf16":
        return torch.bfloat16
    if p == "fp16":
        return torch.float16
    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def dtype_name(dtype: torch.dtype) -> str:
    return {"torch.float32": "fp32", "torch.bfloat16": "bf16", "torch.float16": "fp16"}.get(str(dtype), str(dtype))


@contextlib.contextmanager
def autocast(device: str, dtype: torch.dtype) -> Iterator[None]:
    """``torch.autocast`` for reduced precision on ``device``; a no-op for fp32."""
    import torch

    if dtype == torch.float32:
        yield
        return
    with torch.autocast(device_type=device.split(":")[0], dtype=dtype):
        yield


def to_device(t: torch.Tensor, device: str) -> torch.Tensor:
    """``t`` (a CPU tensor) on ``device``; to a CUDA device it is pinned first and copied without
    waiting (from pageable memory the copy would wait for the GPU to finish its queued work)."""
    if str(device).startswith("cuda"):
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


class GraphedCall:
    """``fn(x)`` replayed from a captured CUDA graph, one per input (shape, dtype, device, autocast
    state); ``fn`` runs eagerly on the CPU, with autograd on, for inputs ``eligible`` rejects, past
    ``max_graphs`` captures, and for good once a capture has failed (one warning line naming
    ``label``).

    A replay launches the whole forward at once, so the host thread that drives the GPU needs the
    GIL once per batch instead of once per kernel: with decode and cache-reading threads busy, a
    ViT-B/32 forward's few hundred launches each waited for the GIL. ``fn`` must be capturable:
    fixed shapes, no host synchronisation, no data-dependent control flow (open_clip's towers are).
    The first input of a key runs ``fn`` twice eagerly (warm-up) before the capture; replays give
    what the eager forward gives (checked bitwise on an H100 for open_clip ViT-B/32, see
    ``benchmarks/README.md``). The output is a fresh tensor (a clone of the graph's), so callers may
    keep it across replays. Each graph holds its own memory pool until :meth:`clear`.
    """

    def __init__(self, fn: Callable[[Any], Any], *, label: str, max_graphs: int = 4,
                 eligible: Callable[[Any], bool] | None = None) -> None:
        self.fn, self.label, self.max_graphs, self.eligible = fn, label, int(max_graphs), eligible
        self.graphs: dict[tuple[Any, ...], tuple[Any, Any, Any]] = {}
        self.failed = False

    def clear(self) -> None:
        """Drop the captured graphs (and their memory pools)."""
        self.graphs.clear()

    def __call__(self, x: Any) -> Any:
        import torch

        if self.failed or not isinstance(x, torch.Tensor) or not x.is_cuda or torch.is_grad_enabled():
            return self.fn(x)
        if self.eligible is not None and not self.eligible(x):
            return self.fn(x)
        dev = x.device.type
        key = (tuple(x.shape), x.dtype, x.device, torch.is_autocast_enabled(dev), torch.get_autocast_dtype(dev))
        entry = self.graphs.get(key)
        if entry is None:
            if len(self.graphs) >= self.max_graphs:
                return self.fn(x)
            try:
                entry = self._capture(x)
            except Exception as e:  # an op that cannot be captured: eager from now on
                if is_oom(e):  # the caller's back-off halves the batch; a smaller one may be captured
                    raise
                self.failed = True
                self.graphs.clear()
                log.warning("encoder %s: CUDA graph capture failed (%s); running the model eagerly",
                            self.label, _first_line(e))
                return self.fn(x)
            self.graphs[key] = entry
        graph, static_in, static_out = entry
        static_in.copy_(x)
        graph.replay()
        return static_out.clone()

    def _capture(self, x: Any) -> tuple[Any, Any, Any]:
        import torch

        static_in = x.clone()
        current = torch.cuda.current_stream(x.device)
        side = torch.cuda.Stream(device=x.device)
        side.wait_stream(current)
        with torch.cuda.stream(side):  # warm-up off the current stream, as torch.cuda.graphs asks
            for _ in range(2):
                self.fn(static_in)
        current.wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        cached = torch.is_autocast_cache_enabled()
        torch.set_autocast_cache_enabled(False)  # autocast's cast cache cannot live across a capture
        try:
            # thread_local: decode/staging threads keep allocating pinned memory during the capture
            with torch.cuda.graph(graph, capture_error_mode="thread_local"):
                static_out = self.fn(static_in)
        finally:
            torch.set_autocast_cache_enabled(cached)
        # the warm-up's activations sit cached in the general pool; the graph has its own from now on
        torch.cuda.empty_cache()
        return graph, static_in, static_out


# ----------------------------------------------------------------------------------------------------
# hub, local paths, revisions


def hub_offline() -> bool:
    """Whether the Hugging Face hub-offline variables are set (``1``/``true``/``yes``/``on``)."""
    return any(
        os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")
        for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def looks_like_hub_id(spec: str) -> bool:
    """``"org/name"`` (one slash, hub-legal characters) that is not an existing local path."""
    return bool(_HUB_ID.match(spec)) and not Path(spec).expanduser().exists()


def resolve_model_dir(spec: str, *, label: str, example: str = "/path/to/model") -> tuple[Path, str]:
    """Turn a local directory or a hub id into ``(local directory, revision)``.

    * an existing directory (``~`` expanded; a ``local-dir:`` prefix is accepted and stripped) is used
      as is; its revision is the snapshot commit when it sits in a Hugging Face cache, else a hash
      of its weight files;
    * a hub id is looked up in the local cache first; offline and absent → :class:`EncoderError`
      at once, naming the path to pass; online and absent → downloaded with ``huggingface_hub``.
    """
    raw = spec.removeprefix("local-dir:")
    path = Path(raw).expanduser()
    if path.is_dir():
        return path, dir_revision(path)
    if path.exists():
        raise EncoderError(f"encoder {label!r}: {raw!r} is a file; pass the model's directory (with config.json)")
    if not looks_like_hub_id(raw):
        missing = path
        while missing.parent != missing and not missing.parent.exists():
            missing = missing.parent
        raise EncoderError(
            f"encoder {label!r}: {raw!r} is neither a local directory nor a hub id ('org/name'): {str(missing)!r} does "
            "not exist; check the path (the model's directory, holding config.json)"
        )
    from huggingface_hub import snapshot_download

    try:
        local = snapshot_download(raw, local_files_only=True)
        return Path(local), _snapshot_commit(Path(local)) or dir_revision(Path(local))
    except Exception:
        pass
    if hub_offline():
        raise EncoderError(
            f"encoder {label!r}: {raw!r} is not on disk and the hub is offline (HF_HUB_OFFLINE=1); download it where "
            f"you are online (`hf download {raw} --local-dir DIR`) and pass that directory instead, e.g. {example}"
        )
    try:
        local = snapshot_download(raw)
    except Exception as e:
        raise EncoderError(
            f"encoder {label!r}: could not download {raw!r} from the hub ({_first_line(e)}); pass a local directory instead"
        ) from None
    return Path(local), _snapshot_commit(Path(local)) or dir_revision(Path(local))


def _snapshot_commit(path: Path) -> str | None:
    """The commit hash when ``path`` is ``…/snapshots/<40 hex>`` in a Hugging Face cache."""
    p = path.resolve() if not path.name else path
    if p.parent.name == "snapshots" and re.fullmatch(r"[0-9a-f]{40}", p.name):
        return p.name
    return None


def dir_revision(path: Path) -> str:
    """Revision of a local model directory: snapshot commit, else the hash of its weight files (sorted)."""
    commit = _snapshot_commit(path)
    if commit:
        return commit
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in WEIGHT_SUFFIXES)
    if not files:
        files = sorted(p for p in path.rglob("*") if p.is_file())
    h = hashlib.sha256()
    for f in files:
        h.update(f.relative_to(path).as_posix().encode() + b"\x00" + file_revision(f).encode() + b"\x00")
    return "sha256:" + h.hexdigest()[:16]


def file_revision(path: str | Path) -> str:
    """``"sha256:<16 hex>"`` of one file's bytes, memoised by (absolute path, size, mtime)."""
    p = Path(path)
    st = p.stat()
    key = f"{p.resolve()}|{st.st_size}|{st.st_mtime_ns}"
    memo = _revision_memo()
    if key in memo:
        return memo[key]
    from mrbench.data.fingerprint import file_sha256

    rev = "sha256:" + file_sha256(p)[:16]
    memo[key] = rev
    _save_revision_memo(memo)
    return rev


def _memo_path() -> Path:
    from mrbench.data.registry import mrbench_home

    return mrbench_home() / "revisions.json"


def _revision_memo() -> dict[str, str]:
    try:
        data = json.loads(_memo_path().read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _save_revision_memo(memo: dict[str, str]) -> None:
    try:
        from mrbench.data.io import atomic_write_text

        path = _memo_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(memo, indent=0, sort_keys=True))
    except OSError:  # a read-only home only costs a re-hash next time
        pass


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence transformers' load report (mrbench raises its own one-line errors instead)."""
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:  # pragma: no cover
        yield
        return
    old = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(old)
        if bars:
            hf_logging.enable_progress_bar()


def checkpoint_shape_mismatch(model_dir: Any, model_class: Any = None) -> tuple[str, list[int], list[int]] | None:
    """The first tensor of ``model_dir``'s safetensors checkpoint whose shape differs from what its
    ``config.json`` builds, as ``(name, checkpoint shape, config shape)``; ``None`` when all match or
    when that cannot be told (no config, no safetensors, an architecture that does not build).

    Reads only the safetensors headers and builds the model (``model_class``, default
    ``transformers.AutoModel``) on the ``meta`` device (no memory).
    """
    from pathlib import Path

    d = Path(model_dir)
    files = sorted(d.glob("*.safetensors"))
    if not (d / "config.json").is_file() or not files:
        return None
    try:
        import torch
        from safetensors import safe_open
        from transformers import AutoConfig, AutoModel

        with quiet_transformers():
            config = AutoConfig.from_pretrained(str(d))
            with torch.device("meta"):
                model = model_class._from_config(config) if model_class is not None else AutoModel.from_config(config)
        expected = {k: list(v.shape) for k, v in model.state_dict().items()}
        prefix = str(getattr(model, "base_model_prefix", "") or "")
        for f in files:
            with safe_open(str(f), framework="pt") as g:
                for key in sorted(g.keys()):
                    name = key
                    if name not in expected and prefix and name.startswith(prefix + "."):
                        name = name[len(prefix) + 1 :]
                    if name in expected:
                        shape = list(g.get_slice(key).get_shape())
                        if shape != expected[name]:
                            return key, shape, expected[name]
    except Exception:
        return None
    return None


def check_loading_info(info: dict[str, Any], model: Any, path: Any, *, label: str) -> None:
    """Refuse a checkpoint whose tensors do not match its config, from transformers'
    ``output_loading_info`` (load with ``ignore_mismatched_sizes=True`` so the report is data, not an
    exception): one line naming the first mismatching tensor and both shapes, or the first model
    parameter the checkpoint lacks (it would be left randomly initialised)."""
    mismatched = sorted(info.get("mismatched_keys") or [], key=lambda m: str(m[0]) if isinstance(m, tuple) else str(m))
    if mismatched:
        first = mismatched[0]
        if isinstance(first, tuple) and len(first) >= 3:
            what = f"tensor {first[0]!r} has shape {list(first[1])} in the checkpoint but {list(first[2])} in config.json"
        else:
            what = f"tensor {first!r} does not match config.json"
        more = f" (and {len(mismatched) - 1} more)" if len(mismatched) > 1 else ""
        raise EncoderError(
            f"encoder {label!r}: checkpoint in {path} does not match its config: {what}{more}; "
            "the weights and config.json come from different models — re-download the model"
        )
    params = {n for n, _ in model.named_parameters()}
    missing = sorted(k for k in (info.get("missing_keys") or []) if k in params)
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise EncoderError(
            f"encoder {label!r}: checkpoint in {path} lacks tensor {missing[0]!r}{more}, which would be "
            "left randomly initialised; re-download the model"
        )


# ----------------------------------------------------------------------------------------------------
# tokenizers


def check_tokenizer(tokenizer: Any, *, label: str, source: str) -> int:
    """Reject an empty or broken tokenizer (transformers can return one offline without an error).

    Returns the vocabulary size. The tokenizer must have at least 2 entries and turn a probe
    sentence into at least one id that is not the unknown token.
    """
    try:
        size = len(tokenizer)
    except TypeError:
        size = int(getattr(tokenizer, "vocab_size", 0) or 0)
    ids: list[int] = []
    try:
        enc = tokenizer("a photo of a dog", add_special_tokens=False)
        ids = list(enc["input_ids"])
    except Exception:
        pass
    unk = getattr(tokenizer, "unk_token_id", None)
    if size < 2 or not ids or all(i == unk for i in ids):
        raise EncoderError(
            f"encoder {label!r}: the tokenizer loaded from {source} is empty or broken (vocabulary size {size}); "
            "the tokenizer files are missing or incomplete there — pass a directory holding the full model"
        )
    return size


# ----------------------------------------------------------------------------------------------------
# out-of-memory back-off


def is_oom(e: BaseException) -> bool:
    """Whether ``e`` is a CUDA (or other accelerator) out-of-memory error."""
    import torch

    if isinstance(e, torch.cuda.OutOfMemoryError):
        return True
    return isinstance(e, RuntimeError) and "out of memory" in str(e).lower()


def run_with_backoff(
    fn: Callable[[Sequence[Any]], T],
    items: Sequence[Any],
    batch_size: int,
    *,
    label: str,
    on_shrink: Callable[[int], None] | None = None,
) -> list[T]:
    """Call ``fn`` on consecutive slices of at most ``batch_size`` items; on out-of-memory halve the
    slice size and retry that slice (logged as a warning). ``on_shrink`` receives each new size so the
    caller can start from it next time. At size 1 the error is re-raised as :class:`EncoderError`."""
    out: list[T] = []
    bs = max(1, int(batch_size))
    i = 0
    while i < len(items):
        chunk = items[i : i + bs]
        try:
            out.append(fn(chunk))
        except Exception as e:
            if not is_oom(e):
                raise
            _free_accelerator_memory()
            if bs == 1:
                raise EncoderError(
                    f"encoder {label!r}: out of memory on a single item ({_first_line(e)}); "
                    "use a smaller model, a lower precision or device='cpu'"
                ) from None
            bs = max(1, bs // 2)
            log.warning("encoder %s: out of memory; batch size halved to %d and retried", label, bs)
            if on_shrink is not None:
                on_shrink(bs)
            continue
        i += len(chunk)
    return out


def _free_accelerator_memory() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _first_line(e: BaseException) -> str:
    s = str(e).strip().splitlines()
    return s[0] if s else type(e).__name__
