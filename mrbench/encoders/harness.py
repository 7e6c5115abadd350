"""The encoding harness: everything between a task's items and a validated ``float32 [N, D]`` array.

The harness — not the encoder — owns:

* **instructions**: role ``"query"`` gets ``task.query_instruction``, ``"candidate"`` gets
  ``task.candidate_instruction`` (``None`` when unset);
* **task info**: the encoder sees :class:`TaskInfo` whose ``metadata`` is
  ``{"fact_vocabulary": bench.metadata["fact_vocabulary"]}`` (when the benchmark has one) updated
  with ``task.metadata`` (a task's own entries win);
* **content hashes**: sha256 over the item's text and image *bytes* (never ids or paths);
* **image decoding**: only when ``encoder.meta.needs_pixels`` and the encoder reads images —
  Pillow in a thread pool (or forked processes, or ``torchvision.io.decode_jpeg`` on the GPU with
  ``workers="gpu"``), ``.convert("RGB")``, the next batches prepared in a background thread while
  the current one is encoded (a bounded queue: :data:`PREFETCH_BATCHES` prepared and one decoding
  behind them, so memory stays flat on any pool size); optionally an on-disk cache of preprocessed pixels
  (:mod:`mrbench.encoders.pixel_cache`, off by default);
* **caching**: only cache misses are encoded; each batch is validated, and the embeddings are written
  to the cache by a background thread, one shard per :data:`CACHE_FLUSH_ROWS` rows or
  :data:`CACHE_FLUSH_SECONDS` seconds and whatever is left when the call ends or fails, so an
  interrupted run resumes where it stopped. Encoders whose ``meta.cacheable`` is
  ``False`` (their output depends on more than content, like the oracle) bypass the cache;
* **keeping the device busy**: with an encoder whose ``encode_async`` may stand in for ``encode``
  (:func:`async_encode_of`; every :class:`~mrbench.encoders.torch_base.TorchEncoder`), batches up to
  b + :data:`IN_FLIGHT` are queued before batch b's embeddings are waited for and checked; a call
  with images hashes and looks up only its first :data:`EARLY_BATCHES` batches' items before it
  starts preparing them, and the rest once the first is on the device; a call can be started before
  the one in front of it ends (:func:`start_encode`, :func:`encode_groups`: set up and its first
  batches prepared once that call's last batch is), so its start-up does not leave the model idle;
* **validation** of every batch: array-like (numpy, torch tensors, nested lists) convertible to
  float32, shape ``[len(batch), D]``, the same ``D`` in every batch and equal to ``meta.dim`` when set,
  no NaN/Inf; for ``similarity="cosine"`` rows are L2-normalised (a zero row is an error).

Every failure is one line naming the encoder, task, role and the offending item or file.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import numpy as np

from mrbench.encoders.base import ROLES, EncodeInput, Encoder
from mrbench.errors import BenchmarkError, EncoderError, MrbenchError

if TYPE_CHECKING:
    from PIL.Image import Image

    from mrbench.data.schema import Benchmark, Candidate, Query, Task, TaskInfo
    from mrbench.encoders.cache import EmbeddingCache
    from mrbench.encoders.pixel_cache import PixelCache

log = logging.getLogger(__name__)

ITEM_HASH_VERSION = b"mrbench-item-v1"

# ----------------------------------------------------------------------------------------------------
# content hashes

_FILE_HASHES: dict[tuple[str, int, int], str] = {}
_FILE_HASHES_LOCK = threading.Lock()
_FILE_HASHES_MAX = 1_000_000
_FILE_HASHES_COMPUTED = [0]  # files hashed by this process (read by mrbench.encoders.hash_store)


def _memo_key(path: str) -> tuple[str, int, int]:
    """The memo key of ``path``: (absolute path, mtime_ns, size), from one ``stat``."""
    st = os.stat(path)
    return (path if os.path.isabs(path) else os.path.abspath(path), st.st_mtime_ns, st.st_size)


def _memoised_hash(path: Path) -> tuple[str | None, tuple[str, int, int]]:
    """``(digest or None, memo key)`` of ``path`` from the per-process memo (one ``stat``)."""
    memo_key = _memo_key(os.fspath(path))
    with _FILE_HASHES_LOCK:
        return _FILE_HASHES.get(memo_key), memo_key


def _memoised_many(paths: Sequence[Path]) -> list[str | None]:
    """The memoised digests of ``paths`` (``None``: not memoised, or the file cannot be stat'ed),
    each checked by one ``stat`` as :func:`file_content_hash` does, under one lock for all."""
    keys: list[tuple[str, int, int] | None] = []
    for p in paths:
        try:
            keys.append(_memo_key(os.fspath(p)))
        except OSError:
            keys.append(None)
    with _FILE_HASHES_LOCK:
        get = _FILE_HASHES.get
        return [None if k is None else get(k) for k in keys]


def file_content_hash(path: Path) -> str:
    """sha256 hex of a file's bytes, memoised per process by (absolute path, mtime_ns, size).

    Raises :class:`OSError` when the file cannot be read.
    """
    hit, memo_key = _memoised_hash(path)
    if hit is not None:
        return hit
    from mrbench.data.fingerprint import file_sha256

    digest = file_sha256(path)
    with _FILE_HASHES_LOCK:
        if len(_FILE_HASHES) >= _FILE_HASHES_MAX:
            _FILE_HASHES.clear()
        _FILE_HASHES[memo_key] = digest
        _FILE_HASHES_COMPUTED[0] += 1
    return digest


class HashWarmer:
    """Hash image files into the per-process memo (:func:`file_content_hash`) in a background thread.

    ``evaluate`` runs one over the benchmark's images while the encoder is being built and stops it
    once the encoder is ready: file reads and sha256 release the GIL, so this hashing hides behind
    the encoder's imports (torch's alone takes 1.5-2 s; MRBench-Synth's ~5k images take ~0.1 s),
    and :func:`encode_items` finds those digests memoised (it hashes whatever is left with its
    worker pool). ``paths`` is consumed lazily; unreadable files are skipped (``encode_items``
    reports them with its own message).
    """

    def __init__(self, paths: Iterable[Path]) -> None:
        self._paths = iter(paths)
        self._stop = threading.Event()
        self.hashed = 0
        self._thread = threading.Thread(target=self._run, name="mrbench-hash-warmer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        for p in self._paths:
            if self._stop.is_set():
                return
            try:
                file_content_hash(p)
                self.hashed += 1
            except OSError:
                pass

    def join(self) -> None:
        """Wait until every path is hashed."""
        self._thread.join()

    def stop(self) -> None:
        """Stop after the file being hashed (returns once the thread has ended)."""
        self._stop.set()
        self._thread.join()


_ITEM_HASH_START = hashlib.sha256(ITEM_HASH_VERSION)  # copied per item: the version prefix hashed once


def _combine_hash(text: str | None, image_digest: str | None) -> str:
    h = _ITEM_HASH_START.copy()
    if text is None:
        t = b"\x00T-"
    else:
        b = text.encode("utf-8")
        t = b"\x00T%d:" % len(b) + b
    h.update(t + (b"\x00I-" if image_digest is None else b"\x00I" + image_digest.encode()))
    return h.hexdigest()


def item_content_hash(text: str | None, image_path: Path | None) -> str:
    """sha256 hex identifying an item's content: its text (UTF-8) and its image file's bytes.

    ``None`` and ``""`` texts differ; ids and paths do not enter, so the same content gets the same
    hash anywhere. Image hashes are memoised by path, mtime and size.
    """
    digest = None
    if image_path is not None:
        try:
            digest = file_content_hash(Path(image_path))
        except OSError as e:
            raise BenchmarkError(
                f"{image_path}: cannot read image ({e.strerror or e}); restore the file or rebuild the benchmark"
            ) from None
    return _combine_hash(text, digest)


# ----------------------------------------------------------------------------------------------------
# task info, instructions, images


def task_info(task: "Task", bench: "Benchmark | None" = None) -> "TaskInfo":
    """The :class:`TaskInfo` an encoder sees: ``task.info()`` with the benchmark's fact vocabulary
    merged under the task's own metadata."""
    from dataclasses import replace

    info = task.info()
    meta: dict[str, Any] = {}
    if bench is not None and "fact_vocabulary" in (bench.metadata or {}):
        meta["fact_vocabulary"] = bench.metadata["fact_vocabulary"]
    meta.update(task.metadata or {})
    return replace(info, metadata=meta)


def instruction_for(task: "Task", role: str) -> str | None:
    """``task.query_instruction`` for role ``"query"``, ``task.candidate_instruction`` for ``"candidate"``."""
    _check_role(role)
    return task.query_instruction if role == "query" else task.candidate_instruction


def _check_role(role: str) -> None:
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}, got {role!r}")


_WIDE_GRAY_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N", "I"})


def _wide_gray_to_l(im: "Image") -> "Image":
    """An 8-bit ``L`` image from a 16- or 32-bit integer grayscale one (Pillow modes ``I;16``,
    ``I;16B``, ``I;16L``, ``I;16N``, ``I``), scaled, not clipped: Pillow's own ``convert("RGB")`` clips
    such values at 255, so a 16-bit PNG came out almost white.

    * ``I;16*``: ``value >> 8`` (0–65535 → 0–255);
    * ``I`` (signed 32-bit; older Pillow and some formats decode 16-bit PNGs to it): negative values
      count as 0; when every value fits in 16 bits it is scaled as 16-bit (``>> 8``), else as
      unsigned 32-bit (``>> 24``).
    """
    import numpy as np
    from PIL import Image

    a = np.asarray(im)
    if im.mode == "I":
        a = np.clip(a.astype(np.int64), 0, None)
        shift = 8 if a.size == 0 or int(a.max()) <= 0xFFFF else 24
    else:
        shift = 8
    return Image.fromarray((a.astype(np.uint32) >> shift).astype(np.uint8), mode="L")


def load_rgb(path: Path, item_id: str) -> "Image":
    """Decode ``path`` with Pillow into an RGB image; one-line :class:`BenchmarkError` when unreadable.

    16- and 32-bit integer grayscale images are scaled to 8 bits first (:func:`_wide_gray_to_l`)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            if im.mode in _WIDE_GRAY_MODES:
                im.load()
                rgb = _wide_gray_to_l(im).convert("RGB")
            else:
                rgb = im.convert("RGB")
            rgb.load()
        return rgb
    except FileNotFoundError:
        raise BenchmarkError(f"{path}: image of item {item_id!r} not found; restore it or rebuild the benchmark") from None
    except Exception as e:  # OSError, UnidentifiedImageError, DecompressionBombError, SyntaxError, ...
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise BenchmarkError(
            f"{path}: cannot decode image of item {item_id!r} ({msg}); replace the file or rebuild the benchmark"
        ) from None


WORKER_KINDS = ("auto", "thread", "process", "gpu")
DECODE_TIMEOUT_S = 300
_PROC_LOCK = threading.Lock()


def check_worker_kind(kind: str) -> None:
    """One-line error for a decode worker kind that is not ``auto``, ``thread``, ``process`` or ``gpu``."""
    if kind not in WORKER_KINDS:
        raise EncoderError(f"--decode {kind!r}: expected one of {', '.join(WORKER_KINDS)}")


def check_workers(n: int | None) -> None:
    """One-line error for a negative number of decode workers (``None``: the default)."""
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 0):
        raise EncoderError(f"--workers {n!r}: expected 0 or more (0: images decoded in the calling thread)")


def _process_transform(encoder: Encoder, num_workers: int, kind: str) -> Callable[[Any], Any] | None:
    """The encoder's ``pixel_transform()`` when decode worker processes are to be used, else ``None``
    (asked only then: building it may pickle a processor)."""
    import multiprocessing
    import sys

    check_worker_kind(kind)
    fn = getattr(encoder, "pixel_transform", None)
    wanted = kind == "process" or (kind == "auto" and num_workers >= 4)
    can_fork = sys.platform.startswith("linux") and "fork" in multiprocessing.get_all_start_methods()
    able = callable(fn) and num_workers > 0 and can_fork
    transform = fn() if wanted and able else None  # type: ignore[misc]
    if kind == "process" and transform is None:
        name = encoder.meta.name
        unmet = []  # what failed, in the Python API's and the CLI's spelling both
        if not callable(fn):
            unmet.append(f"an encoder with pixel_transform(), which {name!r} has not")
        elif able:
            unmet.append(f"an encoder with pixel_transform() giving a transform, but that of {name!r} returned None")
        if num_workers <= 0:
            unmet.append(f"num_workers (--workers) > 0, not {num_workers}")
        if not can_fork:
            unmet.append(f"Linux (the fork start method), not {sys.platform}")
        raise EncoderError(
            f"encoder {name!r}: decode processes (workers='process', --decode process) need {'; and '.join(unmet)}; "
            "use workers='thread' (--decode thread)"
        )
    return transform


def _same_key(a: Any, b: Any) -> bool:
    if a is b:
        return True
    try:
        return type(a) is type(b) and bool(a == b)
    except Exception:
        return False


class _ForkPool:
    """A persistent fork-based process pool (forking costs tens of milliseconds, more in a process
    holding a GPU context). :meth:`get` re-creates it when the workers asked for differ — their number,
    or a ``key`` (what the initializer hands them) that is not the same object nor ``==`` — or when it
    broke; the pool it replaces finishes the work already queued (a call may still be using it). Shut
    down at exit."""

    def __init__(self, initializer: Callable[..., None]) -> None:
        self.initializer = initializer
        self.pool: Any = None
        self.n = 0
        self.key: Any = None
        self._at_exit = False

    def get(self, n: int, key: Any = None, initargs: tuple[Any, ...] = (),
            prefork: tuple[str, str] | None = None, at_most: int | None = None) -> Any:
        """The pool of ``n`` workers for ``key``; ``prefork``: fork every worker now, from the calling
        thread (the what / fix of :func:`_result`'s error when that fails). ``at_most``: the pool kept
        from an earlier call also serves when it has between ``n`` and ``at_most`` workers (a call
        with fewer items to decode neither forks a smaller pool nor more workers than it needs)."""
        import atexit
        import multiprocessing
        import warnings
        from concurrent.futures import ProcessPoolExecutor

        with _PROC_LOCK:
            pool = self.pool
            fits = self.n == n or (at_most is not None and n <= self.n <= at_most)
            if pool is not None and not getattr(pool, "_broken", False) and fits and _same_key(self.key, key):
                return pool
            if pool is not None:
                pool.shutdown(wait=False)
            elif not self._at_exit:
                atexit.register(self.shutdown)
                self._at_exit = True
            self.pool = None
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)  # "process is multi-threaded" on 3.12+
                pool = ProcessPoolExecutor(max_workers=n, mp_context=multiprocessing.get_context("fork"),
                                           initializer=self.initializer, initargs=initargs)
            if prefork is not None:
                _result(pool.submit(int), *prefork)
            self.pool, self.n, self.key = pool, n, key
            return pool

    def shutdown(self) -> None:
        """Stop the pool (queued work cancelled); the next :meth:`get` forks a new one."""
        pool, self.pool = self.pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)


def _worker_init() -> None:
    """In each forked decode worker: torch single-threaded (as torch's DataLoader workers do), since
    an OpenMP thread pool inherited through fork deadlocks the child's first parallel region."""
    import sys

    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(1)


_DECODE_POOL = _ForkPool(_worker_init)
"""Decode workers: Pillow, numpy and single-threaded torch CPU ops (never CUDA)."""


def _decode_chunk(paths: list[Path], ids: list[str], task_name: str, encoder_name: str,
                  transform: Callable[[Any], Any]) -> list[Any]:
    """Worker-process side: decode each image and apply the encoder's pixel transform."""
    out = []
    for p, item_id in zip(paths, ids):
        img = load_rgb(p, item_id)
        try:
            out.append(transform(img))
        except Exception as e:
            raise _rejected(encoder_name, item_id, task_name, p, e) from None
    return out


def _rejected(encoder_name: str, item_id: str, task_name: str, path: Path, e: BaseException) -> EncoderError:
    first = (str(e).strip().splitlines() or [type(e).__name__])[0]
    return EncoderError(
        f"encoder {encoder_name!r} rejected the image of item {item_id!r} in task {task_name!r} ({path}): "
        f"{type(e).__name__}: {first}; replace or re-encode that image"
    )


def _result(fut: Future, what: str = "an image decode", fix: str = "lower --workers or pass workers='thread' (--decode thread)") -> Any:
    from concurrent.futures.process import BrokenProcessPool

    try:
        return fut.result(timeout=DECODE_TIMEOUT_S)
    except TimeoutError:  # a hung pool is not kept for the next call
        _DECODE_POOL.shutdown()
        _TEXT_POOL.shutdown()
        raise EncoderError(
            f"{what} worker process made no progress for {DECODE_TIMEOUT_S} s; {fix} and report the encoder"
        ) from None
    except BrokenProcessPool:
        raise EncoderError(f"{what} worker process died (out of memory?); {fix}") from None


def default_workers() -> int:
    """Decode threads used when none are given: every core up to 8 (decoding, not the model, is the
    ceiling for small vision towers at about 150 images/s per core)."""
    return max(1, min(8, os.cpu_count() or 1))


THREADS_PER_CORE = 4
"""Most decode threads per usable core: threads wait on file reads, and Pillow, torch and sha256
release the GIL, but beyond a few per core they only fight over the GIL (see
:data:`CACHE_READ_THREADS`)."""
MAX_THREADS = 64
"""Most decode threads on any machine (never below :func:`default_workers`' 8)."""


def usable_cores() -> int:
    """The cores this process may run on (``os.sched_getaffinity`` where available, else
    ``os.cpu_count()``)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def max_decode_threads() -> int:
    """The most decode threads a call starts: :data:`THREADS_PER_CORE` per usable core, at most
    :data:`MAX_THREADS`, at least 8 (so the default, :func:`default_workers`, is never cut)."""
    return max(8, min(MAX_THREADS, THREADS_PER_CORE * usable_cores()))


def max_decode_processes() -> int:
    """The most decode worker processes a call starts: one per usable core."""
    return usable_cores()


def _warn_workers_capped(requested: int, used: int, what: str) -> None:
    """The one warning line per process for a ``--workers`` above what this machine can use."""
    _warn_once(("workers-capped",), "--workers %d is more than this machine can use (%d usable cores): using %d "
               "decode %s", requested, usable_cores(), used, what)


def load_prepared(encoder: Encoder, path: Path, item_id: str, task_name: str = "?") -> tuple["Image", Any]:
    """Decode ``path`` and, when the encoder has a ``prepare_image(image)`` hook, run it too.

    Returns ``(image, pixels)`` (``pixels`` is ``None`` without a hook). A hook that rejects the
    image raises a one-line :class:`EncoderError` naming the item and file.
    """
    img = load_rgb(path, item_id)
    prep = getattr(encoder, "prepare_image", None)
    if not callable(prep):
        return img, None
    try:
        return img, prep(img)
    except NotImplementedError:
        return img, None
    except Exception as e:
        raise _rejected(encoder.meta.name, item_id, task_name, path, e) from None


# ----------------------------------------------------------------------------------------------------
# GPU decode (workers="gpu")

JPEG_MAGIC = b"\xff\xd8\xff"
GPU_DECODE_CHUNK = 32
"""JPEGs decoded per ``decode_jpeg`` call: bounds the full-resolution images alive on the device."""
GPU_DECODER = "torchvision.io.decode_jpeg"
_TENSOR_SAFE_STEPS = {("torchvision.transforms.transforms", "Resize"), ("torchvision.transforms.transforms", "CenterCrop")}
_WARNED: set[tuple[str, ...]] = set()
_WARNED_LOCK = threading.Lock()


def _warn_once(key: tuple[str, ...], msg: str, *args: Any) -> None:
    """``log.warning(msg, *args)`` the first time ``key`` is seen in this process."""
    with _WARNED_LOCK:
        if key in _WARNED:
            return
        _WARNED.add(key)
    log.warning(msg, *args)


class TensorStages:
    """Picklable ``uint8 [3, H, W] tensor → uint8 [3, h, w]`` through tensor-capable torchvision
    steps: the tensor counterpart of a PIL-only ``Compose`` (see :func:`tensor_transform_of`)."""

    def __init__(self, steps: Sequence[Any]) -> None:
        self.steps = list(steps)

    def __call__(self, x: Any) -> Any:
        for step in self.steps:
            x = step(x)
        return x

    def __repr__(self) -> str:
        return f"TensorStages({self.steps!r})"


def tensor_transform_of(encoder: Encoder) -> Callable[[Any], Any] | None:
    """The transform GPU decode applies to each decoded ``uint8 [3, H, W]`` tensor (on the device).

    * ``encoder.tensor_transform()`` when the encoder defines it (and it returns non-``None``): a
      function of such a tensor returning the same kind of pixels ``prepare_image`` returns;
    * else, derived from ``encoder.pixel_transform()`` when that is a PIL-stage wrapper (an object
      with ``pil_stage``, like open_clip's) whose stage is a torchvision ``Compose`` of only
      ``Resize``, ``CenterCrop`` and RGB conversions (identity on decoded RGB tensors): the same
      steps on tensors (antialiased; close to Pillow's resize, not bitwise equal);
    * else ``None`` (GPU decode is then not available for this encoder).
    """
    fn = getattr(encoder, "tensor_transform", None)
    if callable(fn):
        t = fn()
        if t is not None:
            return t
    pt = getattr(encoder, "pixel_transform", None)
    if not callable(pt):
        return None
    try:
        t = pt()
    except Exception:
        return None
    stage = getattr(t, "pil_stage", None)
    steps = getattr(stage, "transforms", None)
    if type(stage).__name__ != "Compose" or not type(stage).__module__.startswith("torchvision"):
        return None
    if not isinstance(steps, (list, tuple)):
        return None
    kept = []
    for step in steps:
        cls = type(step)
        if (cls.__module__, cls.__name__) in _TENSOR_SAFE_STEPS:
            kept.append(step)
        elif cls.__name__ == "MaybeConvertMode" and getattr(step, "mode", None) == "RGB":
            continue  # open_clip: converts PIL images only; decoded tensors are RGB already
        elif getattr(step, "__name__", None) == "_convert_to_rgb":
            continue  # older open_clip: image.convert("RGB")
        else:
            return None
    return TensorStages(kept)


def _gpu_decode_device(encoder: Encoder) -> str | None:
    """The device GPU decode runs on: the encoder's ``device`` when it is CUDA and CUDA is
    available, else ``None``. (Tests patch this to return ``"cpu"`` to run the path on a CPU.)"""
    dev = str(getattr(encoder, "device", "") or "")
    if not dev.startswith("cuda"):
        return None
    try:
        import torch
    except ImportError:
        return None
    return dev if torch.cuda.is_available() else None


def gpu_decode_plan(encoder: Encoder) -> tuple[str, Callable[[Any], Any]] | str:
    """``(device, tensor transform)`` when ``workers="gpu"`` can run for ``encoder``, else the
    reason it cannot (a phrase)."""
    try:
        from torchvision.io import decode_jpeg  # noqa: F401
    except Exception:
        return "torchvision.io.decode_jpeg is not importable"
    dev = _gpu_decode_device(encoder)
    if dev is None:
        return "the encoder does not run on an available CUDA device"
    t = tensor_transform_of(encoder)
    if t is None:
        return ("the encoder has no tensor-capable transform (tensor_transform(), or a pixel_transform() "
                "whose PIL stages are torchvision Resize/CenterCrop)")
    return dev, t


def decode_jpegs(datas: Sequence[bytes], device: str) -> list[Any]:
    """Decode JPEG file contents to ``uint8 [3, H, W]`` RGB tensors on ``device`` in one batched
    ``torchvision.io.decode_jpeg`` call (one by one when the batch fails); ``None`` for an image
    that does not decode."""
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg

    tensors = [torch.frombuffer(bytearray(d), dtype=torch.uint8) for d in datas]
    if not tensors:
        return []
    try:
        out = decode_jpeg(tensors, mode=ImageReadMode.RGB, device=device)
        return list(out)
    except Exception:
        pass
    res: list[Any] = []
    for t in tensors:
        try:
            res.append(decode_jpeg(t, mode=ImageReadMode.RGB, device=device))
        except Exception:
            res.append(None)
    return res


# ----------------------------------------------------------------------------------------------------
# validation


def as_array(raw: Any) -> np.ndarray:
    """numpy view of an encoder's output (torch tensors via ``.detach().cpu()``; bf16/fp16 upcast)."""
    if isinstance(raw, np.ndarray):
        return raw
    if hasattr(raw, "detach") and hasattr(raw, "cpu") and hasattr(raw, "numpy"):  # a torch tensor
        t = raw.detach().cpu()
        if str(getattr(t, "dtype", "")) in ("torch.bfloat16", "torch.float16"):
            t = t.float()
        return t.numpy()
    return np.asarray(raw)


def validate_embeddings(
    raw: Any,
    *,
    ids: Sequence[str],
    encoder_name: str,
    task_name: str,
    role: str,
    expected_dim: int | None = None,
    normalise: bool = False,
) -> np.ndarray:
    """Check one batch of encoder output and return it as C-contiguous float32 ``[len(ids), D]``.

    ``expected_dim`` is the dimension seen in earlier batches or declared in ``meta.dim``. With
    ``normalise`` rows are L2-normalised (for cosine encoders). Raises a one-line
    :class:`EncoderError` naming the encoder, task, role and first offending item.
    """
    n = len(ids)
    where = f"in task {task_name!r} (role {role})"
    want = f"({n}, {expected_dim if expected_dim is not None else 'D'})"
    if raw is None:
        raise EncoderError(f"encoder {encoder_name!r} returned None for a batch of {n} items {where}; expected an array {want}")
    try:
        arr = as_array(raw)
    except Exception as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise EncoderError(
            f"encoder {encoder_name!r} returned a {type(raw).__name__} that is not convertible to an array {where} ({first})"
        ) from None
    if arr.dtype.kind not in "fiu":
        raise EncoderError(
            f"encoder {encoder_name!r} returned dtype {arr.dtype} {where}; expected a float32 array {want}"
        )
    if arr.ndim != 2 or arr.shape[0] != n or arr.shape[1] < 1:
        raise EncoderError(
            f"encoder {encoder_name!r} returned shape {tuple(arr.shape)} for a batch of {n} items {where}; expected {want}"
        )
    d = arr.shape[1]
    if expected_dim is not None and d != expected_dim:
        raise EncoderError(
            f"encoder {encoder_name!r} returned dimension {d} {where} but {expected_dim} was expected "
            "(earlier batches or meta.dim); an encoder must return the same D for every call"
        )
    with np.errstate(over="ignore", invalid="ignore"):
        out = np.ascontiguousarray(arr, dtype=np.float32)
    finite = np.isfinite(out)
    if not finite.all():
        r, c = np.argwhere(~finite)[0]
        what = "NaN" if np.isnan(out[r, c]) else "Inf"
        extra = " (float32 overflow)" if np.isfinite(arr[r, c]) else ""
        raise EncoderError(f"encoder {encoder_name!r} returned {what}{extra} for item {ids[r]!r} {where}")
    if normalise:
        norms = np.linalg.norm(out.astype(np.float64), axis=1)
        bad = np.flatnonzero(~(norms > 0))
        if bad.size:
            raise EncoderError(
                f"encoder {encoder_name!r} returned a zero vector for item {ids[bad[0]]!r} {where}; "
                "a cosine encoder must return a non-zero vector for every item"
            )
        out = (out / norms[:, None]).astype(np.float32, copy=False)
    return out


def check_dims(q: np.ndarray, c: np.ndarray, encoder_name: str, task_name: str) -> None:
    """Raise a one-line :class:`EncoderError` when query and candidate embedding dimensions differ."""
    if q.ndim != 2 or c.ndim != 2:
        raise EncoderError(
            f"encoder {encoder_name!r} in task {task_name!r}: embeddings must be 2-d, got query {q.shape} and candidate {c.shape}"
        )
    if q.shape[1] != c.shape[1]:
        raise EncoderError(
            f"encoder {encoder_name!r} in task {task_name!r}: queries have dimension {q.shape[1]} but candidates "
            f"{c.shape[1]}; queries and candidates must share one embedding space"
        )


def build_inputs(
    encoder: Encoder,
    items: Sequence["Query | Candidate"],
    *,
    role: str,
    task: "Task",
    bench: "Benchmark",
) -> tuple[list[EncodeInput], "TaskInfo"]:
    """The exact ``EncodeInput`` list and ``TaskInfo`` :func:`encode_items` would hand the encoder,
    all at once (images decoded inline when the encoder needs pixels). For probes and debugging."""
    meta = encoder.meta
    instruction = instruction_for(task, role)
    paths = [bench.image_path(it.image) if it.image else None for it in items]
    hashes = _hash_items(items, paths, None)
    decode = bool(meta.needs_pixels) and "image" in meta.modalities
    inputs = [
        EncodeInput(
            id=it.id,
            text=it.text,
            image=load_rgb(p, it.id) if decode and p is not None else None,
            image_path=p,
            instruction=instruction,
            content_hash=h,
            meta=MappingProxyType(it.meta or {}),
        )
        for it, p, h in zip(items, paths, hashes)
    ]
    return inputs, task_info(task, bench)


# ----------------------------------------------------------------------------------------------------
# encoding


@dataclass
class EncodeStats:
    """Counters accumulated over :func:`encode_items` calls (pass the same object to several).

    ``encode_seconds`` is the time spent inside ``encoder.encode`` (or launching ``encode_async``
    and waiting for its result, see :func:`async_encode_of`); ``total_seconds`` the wall time
    of the harness calls (hashing, cache I/O, decoding not overlapped with encoding, validation
    included); their difference is the harness overhead. ``pixel_cache_hits`` / ``pixel_cache_misses``
    count images read from / decoded for the pixel cache (0 while it is off); ``gpu_decoded`` the
    images decoded by ``workers="gpu"`` on the device; ``input_wait_seconds`` the time the model
    waited for its next batch to be prepared (decoded, staged, tokenised): near 0 when the input
    pipeline keeps up. Where preparing went, summed over batches on the preparing thread:
    ``read_wait_seconds`` waiting for a batch's decoded images or pixel-cache reads,
    ``stage_seconds`` staging its pixels in pinned memory and queueing their copy to the device,
    ``tokenize_seconds`` tokenising its texts. ``startup_seconds``: from the start of each call to its
    first batch reaching the encoder (hashing, cache lookups, the first batch's preparation).
    ``gc_seconds``: the cyclic garbage collector's passes during the calls' encode loops (any thread;
    they hold every thread up; ``evaluate`` keeps its long-lived objects out of them, see
    :func:`mrbench.data.io.gc_frozen`, and the loops hold full passes off, see
    :data:`DEFER_FULL_COLLECTIONS`).
    """

    items: int = 0
    cache_hits: int = 0
    encoded: int = 0
    batches: int = 0
    encode_seconds: float = 0.0
    total_seconds: float = 0.0
    pixel_cache_hits: int = 0
    pixel_cache_misses: int = 0
    gpu_decoded: int = 0
    input_wait_seconds: float = 0.0
    read_wait_seconds: float = 0.0
    stage_seconds: float = 0.0
    tokenize_seconds: float = 0.0
    startup_seconds: float = 0.0
    gc_seconds: float = 0.0

    @property
    def overhead_seconds(self) -> float:
        return max(0.0, self.total_seconds - self.encode_seconds)

    def add(self, other: "EncodeStats") -> None:
        """Add ``other``'s counters and timings to these."""
        for k, v in other.to_dict().items():
            if k != "overhead_seconds":
                setattr(self, k, getattr(self, k) + v)

    def to_dict(self) -> dict[str, float | int]:
        return {
            "items": self.items,
            "cache_hits": self.cache_hits,
            "encoded": self.encoded,
            "batches": self.batches,
            "encode_seconds": self.encode_seconds,
            "total_seconds": self.total_seconds,
            "overhead_seconds": self.overhead_seconds,
            "pixel_cache_hits": self.pixel_cache_hits,
            "pixel_cache_misses": self.pixel_cache_misses,
            "gpu_decoded": self.gpu_decoded,
            "input_wait_seconds": self.input_wait_seconds,
            "read_wait_seconds": self.read_wait_seconds,
            "stage_seconds": self.stage_seconds,
            "tokenize_seconds": self.tokenize_seconds,
            "startup_seconds": self.startup_seconds,
            "gc_seconds": self.gc_seconds,
        }


def async_encode_of(encoder: Encoder) -> Callable[..., Callable[[], Any]] | None:
    """The encoder's ``encode_async`` when the harness may call it in place of ``encode``: it is
    defined (``encode_async(items, role=, task=)`` → a function returning what ``encode`` would)
    and ``encode`` is not overridden below the class that defines it (nor on the instance), so an
    ``encode`` a subclass or a test replaced is never bypassed. Else ``None``."""
    fn = getattr(encoder, "encode_async", None)
    own = getattr(encoder, "__dict__", {})
    if not callable(fn) or "encode" in own:
        return None
    if "encode_async" in own:
        return fn

    def owner(name: str) -> int:  # position in the MRO of the class that defines ``name``
        return next((k for k, c in enumerate(type(encoder).__mro__) if name in vars(c)), len(type(encoder).__mro__))

    return fn if owner("encode") >= owner("encode_async") else None


def _bounded_map(pool: ThreadPoolExecutor, fn: Callable[[Any], Any], seq: Iterable[Any], window: int) -> Iterator[Any]:
    """``pool.map(fn, seq)`` (results in order) with at most ``window`` tasks submitted and not yet
    consumed — ``Executor.map`` submits everything at once, a future per item of a huge pool."""
    q: deque[Future] = deque()
    for x in seq:
        q.append(pool.submit(fn, x))
        if len(q) >= window:
            yield q.popleft().result()
    while q:
        yield q.popleft().result()


HASH_CHUNK = 64
"""Image files hashed per worker task by :func:`_hash_items`."""


def _hash_items(
    items: Sequence["Query | Candidate"],
    paths: list[Path | None],
    pool: ThreadPoolExecutor | None,
    window: int = 64,
    file_digests: dict[int, str] | None = None,
) -> list[str]:
    """Content hashes of ``items`` (see :func:`item_content_hash`); fills ``file_digests`` (item
    index → sha256 of its image file) when given."""
    unique = list(dict.fromkeys(p for p in paths if p is not None))

    def one(p: Path) -> str:
        try:
            return file_content_hash(p)
        except OSError as e:
            owner = next(it.id for it, q in zip(items, paths) if q == p)
            raise BenchmarkError(
                f"{p}: cannot read image of item {owner!r} ({e.strerror or e}); restore the file or rebuild the benchmark"
            ) from None

    digests: dict[Path, str] = {}
    todo = unique
    if pool is not None and len(unique) > 8:  # memoised ones inline (a stat each), the rest in the pool
        todo = []
        for p, hit in zip(unique, _memoised_many(unique)):
            if hit is None:  # not hashed yet (or unreadable: reported by one() below)
                todo.append(p)
            else:
                digests[p] = hit
    if pool is not None and len(todo) > HASH_CHUNK:
        # a few dozen files per task: one future per file cost ~70 us each, more than hashing a
        # small image (reads and sha256 release the GIL, so the workers still overlap)
        chunks = [todo[i : i + HASH_CHUNK] for i in range(0, len(todo), HASH_CHUNK)]
        for chunk, got in zip(chunks, _bounded_map(pool, lambda ch: [one(p) for p in ch], chunks, max(2, window // HASH_CHUNK))):
            digests.update(zip(chunk, got))
    else:
        digests.update((p, one(p)) for p in todo)
    if file_digests is not None:
        file_digests.update((i, digests[p]) for i, p in enumerate(paths) if p is not None)
    return [_combine_hash(it.text, digests[p] if p is not None else None) for it, p in zip(items, paths)]


Loaded = tuple[Any, Any]  # (PIL image or None, pixels or None) of one item


class _WholeBatch(list):
    """A batch's loaded items whose pixels are, in order, the rows of ``whole`` (the staging buffer
    they were read into): the device stager copies it as it is, without checking each row."""

    whole: np.ndarray | None = None


CACHE_READ_SLICE = 64
"""Fewest pixel-cache hits read per worker task (each task opens the shards it reads; their parsed
headers are remembered by the cache)."""
CACHE_READ_THREADS = 16
"""Most workers reading one batch's pixel-cache hits (reads and checksums release the GIL). With
the default slice of 64, a batch of 256 is read by four; on an H200 host (16 cores) more readers in
flight — smaller slices, or several batches read ahead — made the whole pipeline slower, as
their Python work took the GIL from the thread launching the model."""
EARLY_BATCHES = 2
"""Batches a call hashes, looks up and starts preparing before hashing the rest of its items, which
it does once the first is with the model (see ``_EncodeCall.setup``; 0: every item first)."""
PREFETCH_BATCHES = 2
"""Batches prepared (decoded, staged, tokenised) ahead of the one being encoded."""
IN_FLIGHT = 2
"""Batches an asynchronous encoder (see :func:`async_encode_of`) has queued on its device before
the harness waits for the oldest: the device keeps that many forwards of work while the host checks
a batch and launches the next."""
DEFER_FULL_COLLECTIONS = 1
"""While encode loops run, hold off the cyclic collector's automatic passes over its oldest
generation (young passes still run; see :func:`mrbench.data.io.gc_full_passes_held`; 0: leave the
collector as it is). A full pass was 154 ms of a 0.83 s 16k-text call on an H100 host, where a call
without one took 0.69 s (``benchmarks/bench_calls.py``)."""
TEXT_PROCESS_MIN = 512
"""Texts below which tokenisation stays in the preparing thread (a process pool would cost more)."""
TEXT_PROCESSES = 4
"""Most tokenising worker processes: one tokenises ~12k CLIP texts/s, so four outrun ViT-B/32's text
tower on an H100 (25k texts/s) and leave the other cores to the thread that drives the GPU."""
TEXT_AHEAD_SPARE_CORES = 3
"""Cores beyond the tokenising workers a host needs for batches of texts to be sent to them one batch
ahead (the model's thread, the preparing thread, the rest)."""


CACHE_FLUSH_ROWS = 4096
"""Embeddings :func:`encode_items` collects before writing them to the cache as one shard."""
CACHE_FLUSH_SECONDS = 30.0
"""Longest time encoded embeddings wait in memory before being written to the cache."""


_ENCODE_INPUT_FIELDS = ("id", "text", "image", "image_path", "instruction", "content_hash", "meta", "pixels", "tokens")


def _encode_input(_from: EncodeInput | None = None, **fields: Any) -> EncodeInput:
    """``EncodeInput(**fields)`` with every field given (:data:`_ENCODE_INPUT_FIELDS`), or
    ``dataclasses.replace(_from, **fields)``, built without the frozen dataclass's ``__init__``, which
    sets each field through ``object.__setattr__``: 3x the cost, on the thread preparing batches for
    a GPU (0.36 against 0.12 ms per 256 items)."""
    x = object.__new__(EncodeInput)
    d = x.__dict__
    if _from is not None:
        d.update(_from.__dict__)
    d.update(fields)
    return x


class _CacheWriter:
    """Collects encoded batches and writes them to the embedding cache as one shard per
    :data:`CACHE_FLUSH_ROWS` rows or :data:`CACHE_FLUSH_SECONDS` seconds (a shard per batch cost
    ~2 ms each: an npz, an fsync, a rename), in a background thread: the npz, its CRCs, the write
    and the fsync release the GIL, so the model's thread goes on (4-7 us per row otherwise, a sixth
    of a text tower's time per text on an H100). At most two shards are in flight; an error of a
    background write is raised by the next :meth:`add` or by :meth:`flush`, which returns once
    everything collected is written."""

    def __init__(self, cache: "EmbeddingCache") -> None:
        self.cache = cache
        self.keys: list[str] = []
        self.parts: list[np.ndarray] = []
        self.since = time.monotonic()
        self._pool: ThreadPoolExecutor | None = None
        self._pending: deque[tuple[Future, int]] = deque()  # (write, rows)

    def add(self, keys: list[str], emb: np.ndarray) -> None:
        self.keys += keys
        self.parts.append(emb)
        while self._pending and self._pending[0][0].done():
            self._pending.popleft()[0].result()  # raises a failed write's error
        if len(self.keys) >= CACHE_FLUSH_ROWS or time.monotonic() - self.since >= CACHE_FLUSH_SECONDS:
            self._submit()

    def _submit(self) -> None:
        keys, parts = self.keys, self.parts
        self.keys, self.parts = [], []
        self.since = time.monotonic()
        if not keys:
            return
        emb = parts[0] if len(parts) == 1 else np.concatenate(parts)
        while len(self._pending) >= 2:
            self._pending.popleft()[0].result()
        if self._pool is None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="mrbench-cache-writer")
        self._pending.append((self._pool.submit(self.cache.put_many, keys, emb), len(keys)))

    @property
    def unwritten(self) -> int:
        """Rows collected or in flight (their write not yet confirmed)."""
        return len(self.keys) + sum(n for _, n in self._pending)

    def flush(self) -> None:
        """Write what is collected and wait for every write (raising the first error)."""
        self._submit()
        try:
            while self._pending:
                self._pending[0][0].result()
                self._pending.popleft()
        finally:
            for f, _ in self._pending:
                f.cancel()
            self._pending.clear()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None


class _DeviceStager:
    """Pinned-memory staging of a batch's prepared pixels and their copy to the encoder's CUDA
    device on a side stream, so the copy overlaps the current batch's forward."""

    def __init__(self, device: str) -> None:
        import torch

        self.device = torch.device(device)
        self.stream = torch.cuda.Stream(device=self.device)
        self._lock = threading.Lock()
        self._buffers: dict[int, Any] = {}  # address → pinned tensor handed out by alloc()

    def alloc(self, n: int, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        """A pinned ``[n, *shape]`` host buffer (numpy view) to read a batch into: when a batch's
        pixels are its rows, in order, :meth:`stage` copies it to the device as it is."""
        import torch

        host = torch.empty((n, *shape), dtype=torch.from_numpy(np.empty(0, dtype)).dtype, pin_memory=True)
        arr = host.numpy()
        with self._lock:
            self._buffers[arr.ctypes.data] = host
        return arr

    def _own_buffer(self, vals: list[np.ndarray]) -> Any:
        """The :meth:`alloc` buffer whose rows ``vals`` are, in order, else ``None``."""
        with self._lock:
            host = self._buffers.pop(vals[0].ctypes.data, None)
        if host is None or host.shape[0] != len(vals):
            return None
        row = vals[0].nbytes
        base = vals[0].ctypes.data
        if all(v.ctypes.data == base + j * row and v.nbytes == row for j, v in enumerate(vals)):
            return host
        return None

    def stage(self, loaded: list[Loaded], whole: np.ndarray | None = None
              ) -> tuple[list[Loaded], Callable[[], None] | None]:
        """``(loaded with device pixels, ready)``; ``ready()`` (on the consuming thread) makes the
        current stream wait for the copy. Mixed shapes, dtypes or non-array pixels stay as they are.
        ``whole``: an :meth:`alloc` buffer whose rows are, in order, the items' pixels (the harness
        read the batch into it); it is copied as it is, without checking each row."""
        import torch

        if whole is not None:
            with self._lock:
                host = self._buffers.pop(whole.ctypes.data, None)
            if host is not None and host.shape[0] == len(loaded):
                dev, ready = self._copy(host)
                return [(img, row) for (img, _), row in zip(loaded, dev.unbind(0))], ready
        idx = [k for k, (_, pix) in enumerate(loaded) if pix is not None]
        if not idx:
            return loaded, None
        vals = []
        for k in idx:
            v = loaded[k][1]
            if isinstance(v, torch.Tensor):
                if v.device.type != "cpu":
                    return loaded, None
                try:
                    v = v.numpy()
                except (TypeError, RuntimeError):  # bfloat16 and other dtypes numpy lacks: left as they are
                    return loaded, None
            if not isinstance(v, np.ndarray) or v.dtype.hasobject:
                return loaded, None
            vals.append(v)
        shape, dtype = vals[0].shape, vals[0].dtype
        if any(v.shape != shape or v.dtype != dtype for v in vals):
            return loaded, None
        host = self._own_buffer(vals) if vals[0].flags.c_contiguous else None
        if host is None:  # not read in place: stack into a pinned block
            host = torch.empty((len(vals), *shape), dtype=torch.from_numpy(vals[0][:0]).dtype, pin_memory=True)
            # torch's stack copies without the GIL (numpy's holds it ~10 ms a batch, blocking kernel launches)
            torch.stack([torch.from_numpy(v if v.flags.writeable else v.copy()) for v in vals], out=host)
        dev, ready = self._copy(host)
        out = list(loaded)
        for j, k in enumerate(idx):
            out[k] = (loaded[k][0], dev[j])
        return out, ready

    def _copy(self, host: Any) -> tuple[Any, Callable[[], None]]:
        """``(device copy of the pinned block, ready)``: the copy queued on the side stream."""
        import torch

        with torch.cuda.stream(self.stream):
            dev = host.to(self.device, non_blocking=True)
            event = torch.cuda.Event()
            event.record(self.stream)

        def ready() -> None:
            cur = torch.cuda.current_stream(self.device)
            cur.wait_event(event)
            dev.record_stream(cur)  # the allocator must not reuse it while the forward reads it

        return dev, ready


GPU_SWITCH_INTERVAL_S = 2e-4
"""Python's thread switch interval while the harness feeds a CUDA encoder from background threads
(the default is 5 ms). Every torch op releases the GIL and must take it back to launch the next
kernel; with preparing threads running Python, each take-back could wait the whole interval."""
_SWITCH_LOCK = threading.Lock()
_SWITCH_USERS = 0
_SWITCH_SAVED = 0.005


@contextlib.contextmanager
def _short_switch_interval(on: bool) -> Iterator[None]:
    """:data:`GPU_SWITCH_INTERVAL_S` as the interpreter's switch interval for the duration (nested
    and concurrent uses share it; the previous value is restored when the last one ends)."""
    global _SWITCH_USERS, _SWITCH_SAVED
    if not on:
        yield
        return
    import sys

    with _SWITCH_LOCK:
        if _SWITCH_USERS == 0:
            _SWITCH_SAVED = sys.getswitchinterval()
            sys.setswitchinterval(min(_SWITCH_SAVED, GPU_SWITCH_INTERVAL_S))
        _SWITCH_USERS += 1
    try:
        yield
    finally:
        with _SWITCH_LOCK:
            _SWITCH_USERS -= 1
            if _SWITCH_USERS == 0:
                sys.setswitchinterval(_SWITCH_SAVED)


_TEXT_FN: Callable[[list[str]], Any] | None = None
_TOKENIZE_FAILURE = ("a tokenising", "pass --workers 1 (texts are then tokenised in the preparing thread)")


def _text_worker_init(fn: Callable[[list[str]], Any]) -> None:
    global _TEXT_FN
    _worker_init()
    _TEXT_FN = fn


def _tokenize_chunk(texts: list[str]) -> np.ndarray:
    assert _TEXT_FN is not None
    return np.asarray(_TEXT_FN(texts))


_TEXT_POOL = _ForkPool(_text_worker_init)
"""Tokenising workers, holding the text transform they were forked with (it reaches them through
fork, never pickled): kept for later calls whose transform is the same object or ``==`` to it (as
:class:`~mrbench.encoders.openclip.TokenizeToNumpy` over the same tokenizer is)."""


class _Tokenizer:
    """The encoder's ``text_transform()`` run ahead of the model: in fork worker processes
    (:data:`_TEXT_POOL`, kept between calls) for many texts, else in the calling thread."""

    def __init__(self, encoder: Encoder, fn: Callable[[list[str]], Any], n_texts: int, num_workers: int) -> None:
        import multiprocessing
        import sys

        self.encoder, self.fn, self.procs = encoder, fn, None
        self.n = max(1, min(num_workers, TEXT_PROCESSES))
        fork = sys.platform.startswith("linux") and "fork" in multiprocessing.get_all_start_methods()
        # on the CPU the model's own threads use the cores; processes only pay off feeding a GPU
        if fork and num_workers >= 2 and n_texts >= TEXT_PROCESS_MIN and _gpu_decode_device(encoder):
            self.procs = _TEXT_POOL.get(self.n, key=fn, initargs=(fn,), prefork=_TOKENIZE_FAILURE)
        # batches sent to the workers ahead keep them busy while the model's thread works: only with
        # cores to spare for that thread and the preparing one (on 2 cores the model's thread, woken
        # from its wait, queued for a core: 0.55 instead of 0.72 of a simulated forward, bench_feed)
        self.send_ahead = self.procs is not None and (os.cpu_count() or 1) >= self.n + TEXT_AHEAD_SPARE_CORES

    def __call__(self, inputs: list[EncodeInput]) -> list[EncodeInput]:
        return self.submit(inputs)(inputs)

    def submit(self, inputs: list[EncodeInput]) -> Callable[[list[EncodeInput]], list[EncodeInput]]:
        """Start tokenising the texts of ``inputs`` (in the worker processes, when there are any);
        the returned function waits for the rows and gives its argument — ``inputs`` or items with
        the same ids and texts — with their tokens set (it tokenises them afresh if they differ)."""
        idx = [k for k, it in enumerate(inputs) if it.text is not None]
        if not idx:
            return lambda got: got
        texts = [self.encoder.text_of(inputs[k]) for k in idx]  # type: ignore[attr-defined]
        if self.procs is not None and len(texts) >= 2 * self.n:
            size = -(-len(texts) // self.n)
            futs = [self.procs.submit(_tokenize_chunk, texts[k : k + size]) for k in range(0, len(texts), size)]

            def rows_of() -> np.ndarray:
                return np.concatenate([_result(f, *_TOKENIZE_FAILURE) for f in futs])
        else:
            rows = np.asarray(self.fn(texts))

            def rows_of() -> np.ndarray:
                return rows

        ids = [it.id for it in inputs]

        def finish(got: list[EncodeInput]) -> list[EncodeInput]:
            if got is not inputs and ([it.id for it in got] != ids
                                      or [self.encoder.text_of(got[k]) for k in idx] != texts):  # type: ignore[attr-defined]
                return self(got)
            rows = rows_of()
            out = list(got)
            for j, k in enumerate(idx):
                out[k] = _encode_input(got[k], tokens=rows[j])
            return out

        return finish

    def close(self) -> None:
        self.procs = None  # the pool stays for the next call (_TEXT_POOL)


_LAYOUTS: dict[str, tuple[tuple[int, ...], np.dtype]] = {}
"""Pixel layout (shape, dtype) seen per pixel-cache fingerprint in this process (a hint: an entry of
another shape is read into an array of its own and its batch stacked as usual)."""


def _layout(loaded: list[Loaded]) -> tuple[tuple[int, ...], np.dtype] | None:
    """``(shape, dtype)`` shared by every pixel value of a batch when all are numpy arrays (or CPU
    tensors numpy can view), else ``None``."""
    seen = set()
    for _, v in loaded:
        if v is None:
            continue
        if not isinstance(v, np.ndarray):
            try:
                v = v.numpy()  # a CPU torch tensor; bfloat16, device tensors and others raise
            except Exception:
                return None
        if not isinstance(v, np.ndarray) or v.dtype.hasobject:
            return None
        seen.add((tuple(v.shape), v.dtype))
    return next(iter(seen)) if len(seen) == 1 else None


class _Decoder:
    """The decode side of :func:`encode_items`: ``submit(batch)`` starts decoding one batch (threads,
    processes or the GPU; cached pixels read from the pixel cache) and returns a function that waits
    for it and gives ``(image, pixels)`` per item. ``digests`` (item index → sha256 of its image file,
    from the content hashing) key the pixel cache. Cache writes run at most
    :attr:`MAX_PENDING_WRITES` behind."""

    MAX_PENDING_WRITES = 2

    def __init__(self, encoder: Encoder, items: Sequence["Query | Candidate"], paths: list[Path | None],
                 task_name: str, num_workers: int, workers: str, pool: ThreadPoolExecutor | None,
                 pixel_cache: "PixelCache | None", stats: EncodeStats, digests: dict[int, str] | None = None,
                 n_decode: int | None = None) -> None:
        self.encoder, self.items, self.paths, self.task_name = encoder, items, paths, task_name
        self.name = encoder.meta.name
        self.num_workers, self.pool, self.stats = num_workers, pool, stats
        self.gpu: tuple[str, Callable[[Any], Any]] | None = None
        cpu_kind = workers
        if workers == "gpu":
            plan = gpu_decode_plan(encoder)
            if isinstance(plan, str):
                _warn_once((self.name, "gpu", plan), "decode='gpu' is unavailable for encoder %r (%s); decoding "
                           "on the CPU with Pillow instead", self.name, plan)
                cpu_kind = "auto"
            else:
                self.gpu, cpu_kind = plan, "thread"
        self.transform = _process_transform(encoder, num_workers, cpu_kind)
        # worker processes: one per usable core at most, never more than the images to decode (an
        # earlier call's pool with more, within that cap, is kept); none when there is nothing to decode
        self.procs_cap = min(num_workers, max_decode_processes())
        if n_decode is None:
            n_decode = sum(p is not None for p in paths)
        self.n_procs = min(self.procs_cap, n_decode)
        self.procs = None
        if self.transform is not None and self.n_procs > 0:
            self.procs = _DECODE_POOL.get(self.n_procs, at_most=self.procs_cap)
            self.n_procs = getattr(self.procs, "_max_workers", self.n_procs)
        self.gpu_exec = ThreadPoolExecutor(1, thread_name_prefix="mrbench-gpu-decode") if self.gpu else None
        self.cache: PixelCache | None = None
        self.fp = ""
        self.writer: ThreadPoolExecutor | None = None
        self.writes: deque[Future] = deque()
        self.digests: dict[int, str] = digests if digests is not None else {}
        # with a device stager: a batch found whole in the pixel cache is read into its pinned buffer
        self.host_alloc: Callable[[int, tuple[int, ...], np.dtype], np.ndarray] | None = None
        self.layout: tuple[tuple[int, ...], np.dtype] | None = None  # of the pixels seen so far
        if pixel_cache is not None and any(p is not None for p in paths):
            self._open_cache(pixel_cache)

    # -- pixel cache ------------------------------------------------------------------------------
    def _open_cache(self, cache: "PixelCache") -> None:
        from mrbench.encoders.pixel_cache import transform_fingerprint

        if self.gpu is not None:
            transform, decoder = self.gpu[1], GPU_DECODER
        else:
            transform, decoder = self.transform, "pillow"
            fn = getattr(self.encoder, "pixel_transform", None)
            if transform is None and callable(fn):
                try:
                    transform = fn()
                except Exception as e:
                    log.debug("pixel cache: %r pixel_transform() failed (%s)", self.name, e)
        try:
            self.fp, desc = transform_fingerprint(self.encoder, transform, decoder=decoder)
        except ValueError:
            _warn_once((self.name, "pixel-cache-no-transform"), "pixel cache: encoder %r has neither "
                       "pixel_transform() nor transform_id, so its pixels cannot be fingerprinted; its images "
                       "are decoded as usual", self.name)
            return
        cache.describe_to(self.fp, desc, self.name)
        cache.refresh(self.fp)
        self.cache = cache
        self.layout = _LAYOUTS.get(self.fp)  # learnt by an earlier call: every batch can be read in place

    def _digest(self, i: int) -> str:
        d = self.digests.get(i)
        if d is None:
            d = self.digests[i] = file_content_hash(self.paths[i])  # type: ignore[arg-type]  # memoised
        return d

    def _store(self, idx: list[int], got: dict[int, Loaded]) -> None:
        from mrbench.encoders.pixel_cache import PixelCache

        assert self.cache is not None
        entries = {self._digest(i): got[i][1] for i in idx if got[i][1] is not None}
        if not entries:
            return
        tensors, meta = PixelCache.pack(entries)  # copies, here: the encoder may touch its pixels later
        if len(meta) < len(entries):
            bad = next(v for d, v in entries.items() if d not in meta)
            _warn_once((self.name, "pixel-cache-type"), "pixel cache: encoder %r returns pixels of type %s, which "
                       "the cache cannot store; those images are decoded on every run", self.name, type(bad).__name__)
        if not meta:
            return
        if self.writer is None:
            self.writer = ThreadPoolExecutor(1, thread_name_prefix="mrbench-pixel-cache")
        while len(self.writes) >= self.MAX_PENDING_WRITES:
            self._wait_write(self.writes.popleft())
        self.writes.append(self.writer.submit(self.cache.write, self.fp, tensors, meta))

    def _wait_write(self, fut: Future) -> None:
        try:
            fut.result()
        except Exception as e:  # disk full, read-only root, ...: the run goes on uncached
            assert self.cache is not None
            _warn_once((self.name, "pixel-cache-write"), "pixel cache: cannot write under %s (%s: %s); "
                       "continuing without storing pixels", self.cache.root, type(e).__name__, e)

    def finish(self) -> None:
        """Wait for the pending cache writes (a failed write is one warning, not an error)."""
        while self.writes:
            self._wait_write(self.writes.popleft())

    def close(self) -> None:
        self.finish()
        for ex in (self.gpu_exec, self.writer):
            if ex is not None:
                ex.shutdown(wait=True, cancel_futures=True)

    # -- decoding ---------------------------------------------------------------------------------
    def _load(self, i: int) -> Loaded:
        return load_prepared(self.encoder, self.paths[i], self.items[i].id, self.task_name)  # type: ignore[arg-type]

    def submit(self, batch: list[int]) -> Callable[[], list[Loaded]]:
        """Start loading ``batch``'s pixels (pixel-cache reads, decoding); the returned function
        waits for them, in batch order. A batch found whole in the pixel cache and read into the
        device stager's buffer is first reordered *in place* by its pixels' position in the shards."""
        hits: list[int] = []
        if self.cache is not None:
            with_path = [i for i in batch if self.paths[i] is not None]
            found = self.cache.contains(self.fp, [self._digest(i) for i in with_path], refresh=False)
            hits = [i for i, f in zip(with_path, found) if f]
        hit_set = set(hits)
        rest = [i for i in batch if i not in hit_set]
        rest_fn = self._submit_decode(rest) if rest else None
        hit_fn: Callable[[], list[Any]] | None = None
        whole: np.ndarray | None = None  # the staging buffer the whole batch is read into, row k = item k
        placed: list[int] = []  # entries read straight into their row (list.extend is atomic: slices share it)
        if hits:
            assert self.cache is not None
            digests = [self._digest(i) for i in hits]
            into: np.ndarray | None = None
            if self.host_alloc is not None and self.layout is not None and len(hits) == len(batch):
                # the batch's items in the order their pixels lie in the shards, so that each worker
                # reads a run of them with one readinto (embeddings are stored by item index)
                where = self.cache.locate(self.fp, digests)
                if all(w is not None for w in where):
                    order = sorted(range(len(batch)), key=where.__getitem__)
                    batch[:] = hits = [hits[j] for j in order]
                    digests = [digests[j] for j in order]
                into = whole = self.host_alloc(len(hits), *self.layout)
            if self.pool is not None:  # shard reads and checksums on a few workers (more fight over the GIL)
                size = max(CACHE_READ_SLICE, -(-len(digests) // max(1, min(CACHE_READ_THREADS, self.num_workers))))
                hit_futs = [self.pool.submit(self.cache.get_many, self.fp, digests[k : k + size],
                                             None if into is None else into[k : k + size], placed)
                            for k in range(0, len(digests), size)]

                def hit_fn() -> list[Any]:
                    return [v for f in hit_futs for v in f.result()]
            else:
                cache = self.cache

                def hit_fn() -> list[Any]:
                    return cache.get_many(self.fp, digests, into, placed)

        def collect() -> list[Loaded]:
            got: dict[int, Loaded] = {}
            if rest_fn is not None:
                got.update(zip(rest, rest_fn()))
            redo: list[int] = []
            if hit_fn is not None:
                for i, v in zip(hits, hit_fn()):
                    if v is None:  # its shard turned out corrupt (warned): decode it again
                        redo.append(i)
                    else:
                        got[i] = (None, v)
            if redo:
                got.update(zip(redo, self._submit_decode(redo)()))
            if self.cache is not None:
                fresh = [i for i in rest if self.paths[i] is not None] + redo
                self.stats.pixel_cache_hits += len(hits) - len(redo)
                self.stats.pixel_cache_misses += len(fresh)
                self._store(fresh, got)
            out: list[Loaded] = [got[i] for i in batch]
            if whole is not None and not redo and len(placed) == len(batch):
                out = _WholeBatch(out)
                out.whole = whole
            if self.host_alloc is not None and self.layout is None:
                self.layout = _layout(out)
                if self.layout is not None and self.cache is not None:
                    _LAYOUTS[self.fp] = self.layout
            return self._on_device(out) if self.gpu is not None else out

        return collect

    def _submit_decode(self, idx: list[int]) -> Callable[[], list[Loaded]]:
        paths, items, pool = self.paths, self.items, self.pool
        if self.gpu is not None:
            return self._submit_gpu(idx)
        if self.procs is not None:  # chunks of paths to worker processes; they return pixels only
            todo = [i for i in idx if paths[i] is not None]
            size = max(1, -(-len(todo) // (2 * self.n_procs)))
            chunks = [todo[k : k + size] for k in range(0, len(todo), size)]
            futs = [self.procs.submit(_decode_chunk, [paths[i] for i in c], [items[i].id for i in c], self.task_name,
                                      self.name, self.transform) for c in chunks]

            def collect() -> list[Loaded]:
                got: dict[int, Any] = {}
                for c, f in zip(chunks, futs):
                    got.update(zip(c, _result(f)))
                return [(None, got[i]) if i in got else (None, None) for i in idx]

            return collect
        futures = [pool.submit(self._load, i) if pool is not None and paths[i] is not None else None for i in idx]
        return lambda: [
            f.result() if f is not None else (self._load(i) if paths[i] is not None else (None, None))
            for f, i in zip(futures, idx)
        ]

    # -- GPU --------------------------------------------------------------------------------------
    def _read_or_cpu(self, i: int) -> tuple[str, Any]:
        """``("jpeg", bytes)`` for a JPEG file, else ``("cpu", (image, pixels))`` decoded by Pillow
        (which also raises the usual one-line error for a missing or broken file)."""
        try:
            with open(self.paths[i], "rb") as f:  # type: ignore[arg-type]
                data = f.read()
        except OSError:
            return "cpu", self._load(i)
        if data[:3] == JPEG_MAGIC:
            return "jpeg", data
        return "cpu", self._load(i)

    def _submit_gpu(self, idx: list[int]) -> Callable[[], list[Loaded]]:
        assert self.gpu_exec is not None
        todo = [i for i in idx if self.paths[i] is not None]
        reads = [self.pool.submit(self._read_or_cpu, i) if self.pool is not None else None for i in todo]
        fut = self.gpu_exec.submit(self._gpu_decode, todo, reads)

        def collect() -> list[Loaded]:
            got, n_gpu, n_cpu = fut.result()
            self.stats.gpu_decoded += n_gpu
            if n_cpu:
                _warn_once((self.name, "gpu-cpu-fallback"), "decode='gpu': %d of %d images in task %r are not JPEG "
                           "or did not decode on the device; decoded on the CPU with Pillow (further cases are "
                           "not reported)", n_cpu, len(todo), self.task_name)
            return [got.get(i, (None, None)) for i in idx]

        return collect

    def _gpu_decode(self, todo: list[int], reads: list[Future | None]) -> tuple[dict[int, Loaded], int, int]:
        import torch

        assert self.gpu is not None
        device, transform = self.gpu
        got: dict[int, Loaded] = {}
        jpeg: list[tuple[int, bytes]] = []
        for i, r in zip(todo, reads):
            kind, val = r.result() if r is not None else self._read_or_cpu(i)
            if kind == "jpeg":
                jpeg.append((i, val))
            else:
                got[i] = val
        n_cpu = len(todo) - len(jpeg)
        n_gpu = 0
        with torch.no_grad():
            for k in range(0, len(jpeg), GPU_DECODE_CHUNK):
                chunk = jpeg[k : k + GPU_DECODE_CHUNK]
                for (i, _), img in zip(chunk, decode_jpegs([d for _, d in chunk], device)):
                    if img is None:  # Pillow decodes it, or raises the usual one-line error
                        got[i] = self._load(i)
                        n_cpu += 1
                        continue
                    try:
                        got[i] = (None, transform(img))
                    except Exception as e:
                        raise _rejected(self.name, self.items[i].id, self.task_name, self.paths[i], e) from None  # type: ignore[arg-type]
                    n_gpu += 1
        return got, n_gpu, n_cpu

    def _on_device(self, loaded: list[Loaded]) -> list[Loaded]:
        """GPU decode: every array/tensor pixel value as a torch tensor on the decode device (Pillow
        fallbacks and cache hits come from the CPU; the encoder stacks them with device tensors)."""
        import torch

        assert self.gpu is not None
        device = torch.device(self.gpu[0])
        out = []
        for img, pix in loaded:
            if isinstance(pix, np.ndarray):
                pix = torch.from_numpy(pix)
            if isinstance(pix, torch.Tensor) and pix.device != device:
                pix = pix.to(device, non_blocking=True)
            out.append((img, pix))
        return out


def encode_items(
    encoder: Encoder,
    items: Sequence["Query | Candidate"],
    *,
    role: str,
    task: "Task",
    bench: "Benchmark",
    cache: "EmbeddingCache | None" = None,
    batch_size: int | None = None,
    num_workers: int | None = None,
    workers: str = "auto",
    progress: Callable[[int], None] | None = None,
    stats: EncodeStats | None = None,
    pixel_cache: "PixelCache | str | os.PathLike[str] | bool | None" = None,
) -> np.ndarray:
    """Encode ``items`` in ``role`` for ``task``; returns validated float32 ``[len(items), D]`` (row i = item i).

    Args:
        encoder: any :class:`Encoder`.
        items: queries or candidates of ``task`` (any objects with ``id``, ``text``, ``image``, ``meta``).
        role: ``"query"`` or ``"candidate"`` (selects the instruction and the cache key).
        task, bench: the task (instructions, metadata) and its benchmark (image root, vocabulary).
        cache: embedding cache; hits are reused, misses encoded and written as they come (see
            "caching" above); everything is written when the call returns or raises.
        batch_size: items per ``encode`` call (default ``encoder.meta.batch_size``).
        num_workers: threads decoding images, running the encoder's ``prepare_image`` hook and
            hashing files (Pillow and torch transforms release the GIL); 0 decodes inline; ``None``
            picks :func:`default_workers`. A call starts no more than it has image files, at most
            :func:`max_decode_threads` threads and :func:`max_decode_processes` processes (a larger
            value is cut to that, with one warning line per process).
        workers: ``"thread"``, ``"process"``, ``"auto"`` or ``"gpu"``. Processes decode and transform
            images outside the GIL; they need an encoder with a ``pixel_transform()`` method (a
            picklable ``PIL image → array`` function) and a fork-capable OS. ``"auto"`` uses them from
            4 workers on (with 16 threads the GIL held Pillow to about 900 images/s on a 16-core
            machine). ``"gpu"`` (opt-in) decodes JPEGs with ``torchvision.io.decode_jpeg`` on the
            encoder's CUDA device in batches and applies :func:`tensor_transform_of` there (file
            reads in the threads); other images go through Pillow in threads. The pixels are close
            to, not bitwise equal to, the Pillow path's. Without CUDA, torchvision or a
            tensor-capable transform it warns once and decodes as ``"auto"``.
        progress: called with the number of items completed, as they complete.
        stats: accumulates counters and timings (see :class:`EncodeStats`).
        pixel_cache: on-disk cache of preprocessed pixels keyed by (transform fingerprint, image
            hash), see :mod:`mrbench.encoders.pixel_cache`: ``None`` (default) follows
            ``$MRBENCH_PIXEL_CACHE`` (off when unset; the accepted values:
            :func:`~mrbench.encoders.pixel_cache.pixel_cache_from_env`), ``False`` off, ``True`` the default root, a
            path that root, or a :class:`~mrbench.encoders.pixel_cache.PixelCache`. Cached images
            are neither decoded nor transformed; the encoder gets ``image=None`` and the stored
            ``pixels`` (as from decode processes). Embeddings are identical with it on or off.
    """
    call = _EncodeCall(encoder, items, role=role, task=task, bench=bench, cache=cache, batch_size=batch_size,
                       num_workers=num_workers, workers=workers, pixel_cache=pixel_cache)
    return call.result(progress=progress, stats=stats)


def start_encode(
    encoder: Encoder,
    items: Sequence["Query | Candidate"],
    *,
    role: str,
    task: "Task",
    bench: "Benchmark",
    cache: "EmbeddingCache | None" = None,
    batch_size: int | None = None,
    num_workers: int | None = None,
    workers: str = "auto",
    pixel_cache: "PixelCache | str | os.PathLike[str] | bool | None" = None,
    after: "PendingEncode | None" = None,
) -> "PendingEncode":
    """Start an :func:`encode_items` call ahead of time; ``.result(progress=, stats=)`` finishes it.

    Its setup — content hashes, the embedding-cache lookup, the decoder, tokenizer and device
    stager — runs in a background thread, and so does the preparation of its first
    :data:`PREFETCH_BATCHES` batches (decoded or read from the pixel cache, staged, tokenised):
    from now on, or, with ``after`` (the call that will run before it), once that call's last batch
    is prepared, so the two calls' inputs never compete and the new call's are ready when the model
    finishes the old call's last batches. ``after`` must be consumed (``result()``) or closed before
    this call's ``result()``, which otherwise waits for it.
    ``evaluate`` does this for an encoder on a GPU (``mrbench.pipeline.ENCODE_AHEAD``), so a new
    call's start-up no longer leaves the model idle. Nothing reaches the encoder before ``result()``, which
    runs the encode loop on the calling thread and returns exactly what ``encode_items`` with the
    same arguments would (errors included, raised there). Call ``close()`` on a call that will not
    be consumed (after an earlier error); ``result()`` may be called once, ``close()`` after it is
    a no-op. The encoder's hooks (``text_transform``, ``pixel_transform``, ``prepare_image``) may
    thus run in a background thread while ``encode`` runs for the call before; nothing calls
    ``encode`` concurrently. Arguments: as :func:`encode_items`.
    """
    call = _EncodeCall(encoder, items, role=role, task=task, bench=bench, cache=cache, batch_size=batch_size,
                       num_workers=num_workers, workers=workers, pixel_cache=pixel_cache)
    return PendingEncode(call, after=after._call if after is not None else None)


def calls_in_turn(
    encoder: Encoder,
    groups: Sequence[tuple["Task", str, Sequence["Query | Candidate"]]],
    *,
    bench: "Benchmark",
    ahead: bool = True,
    **kwargs: Any,
) -> Iterator[Callable[..., np.ndarray]]:
    """One :func:`encode_items` call per ``(task, role, items)`` group, in order: yields, per group, a
    function ``finish(progress=None, stats=None)`` that runs the call and returns its array. With
    ``ahead`` each call is started (:func:`start_encode`) while the one before it runs, as
    ``evaluate`` does for an encoder on a GPU. Call each ``finish`` (once) before taking the next;
    close the generator (``contextlib.closing``) so that, after an error, the calls started but not
    finished are closed. ``kwargs``: the other arguments of :func:`start_encode`."""
    if not ahead:
        for task, role, items in groups:
            yield functools.partial(encode_items, encoder, items, role=role, task=task, bench=bench, **kwargs)
        return
    started: dict[int, PendingEncode] = {}
    try:
        for k, (task, role, items) in enumerate(groups):
            if k not in started:
                started[k] = start_encode(encoder, items, role=role, task=task, bench=bench, **kwargs)
            if k + 1 < len(groups):
                nt, nr, ni = groups[k + 1]
                started[k + 1] = start_encode(encoder, ni, role=nr, task=nt, bench=bench, after=started[k], **kwargs)
            yield started[k].result
            started.pop(k).close()  # (a no-op once its result was taken)
    finally:
        for call in started.values():
            call.close()


def encode_groups(
    encoder: Encoder,
    groups: Sequence[tuple["Task", Sequence["Query | Candidate"]]],
    *,
    role: str,
    bench: "Benchmark",
    ahead: bool = True,
    stats: EncodeStats | None = None,
    **kwargs: Any,
) -> list[np.ndarray]:
    """:func:`encode_items` over ``(task, items)`` groups in order, one array per group; with
    ``ahead`` each call is started (:func:`start_encode`) while the one before it runs, as
    ``evaluate`` does (see :func:`calls_in_turn`). ``kwargs``: the other arguments of :func:`start_encode`."""
    turns = calls_in_turn(encoder, [(task, role, items) for task, items in groups], bench=bench, ahead=ahead, **kwargs)
    with contextlib.closing(turns):
        return [finish(stats=stats) for finish in turns]


class PendingEncode:
    """An encode call started by :func:`start_encode` (see there)."""

    def __init__(self, call: "_EncodeCall", after: "_EncodeCall | None" = None) -> None:
        self._call, self._after = call, after
        self._lock = threading.Lock()
        self._setup_done = False
        self._discarded = False
        self._thread = threading.Thread(target=self._setup, name="mrbench-encode-ahead", daemon=True)
        self._thread.start()

    def _setup(self) -> None:
        if self._after is not None:
            self._after.inputs_done.wait()
        with self._lock:
            discarded = self._discarded
        if not discarded:  # (a call discarded while it waited is not set up at all)
            self._call.setup_safely()
        with self._lock:
            self._setup_done = True
            discard = self._discarded
        if discard:
            self._call.close()

    def result(self, *, progress: Callable[[int], None] | None = None, stats: EncodeStats | None = None) -> np.ndarray:
        """Wait for the setup, run the encode loop here; the embeddings ``float32 [len(items), D]``."""
        try:
            self._thread.join()
        except BaseException:  # interrupted while waiting (Ctrl-C): the call is given up
            self.close()
            raise
        return self._call.result(progress=progress, stats=stats)

    def close(self) -> None:
        """Discard the call (nothing is encoded). Returns at once: its workers are stopped here, or,
        while its setup (which cannot be interrupted) still runs, by the setup thread when it ends."""
        with self._lock:
            self._discarded = True
            done = self._setup_done
        if done:
            self._call.close()


@contextlib.contextmanager
def _gc_timed(stats: EncodeStats) -> Iterator[None]:
    """Add the time the cyclic garbage collector runs (in any thread) to ``stats.gc_seconds``."""
    import gc

    began: list[float] = []

    def timer(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            began.append(time.perf_counter())
        elif began:
            stats.gc_seconds += time.perf_counter() - began.pop()

    gc.callbacks.append(timer)
    try:
        yield
    finally:
        gc.callbacks.remove(timer)


@contextlib.contextmanager
def _encoder_failure(name: str, role: str, task: str, ids: Sequence[str]) -> Iterator[None]:
    """Turn an exception raised by the encoder's own code (not an :class:`MrbenchError`, not Ctrl-C)
    into a one-line :class:`EncoderError` naming the encoder, the batch and what to run; the original
    stays chained as ``__cause__`` (the CLI shows it with ``MRBENCH_TRACEBACK=1``)."""
    try:
        yield
    except MrbenchError:
        raise
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise EncoderError(
            f"encoder {name!r}: encode raised {type(e).__name__}{': ' + first[:200] if first else ''} on a batch of "
            f"{len(ids)} {role} item(s) of task {task!r} (first id {ids[0] if ids else None!r}); run "
            "'mrbench check-encoder' on it, or set MRBENCH_TRACEBACK=1 to see where"
        ) from e


class _EncodeCall:
    """One :func:`encode_items` call: :meth:`setup` (everything before the first batch reaches the
    encoder), then :meth:`result` (the encode loop), :meth:`close` (every resource released; safe
    to call at any point, more than once). The call's counters accumulate in its own
    :class:`EncodeStats`, added to the caller's when it ends (so a setup running in a background
    thread never races the caller's counters)."""

    def __init__(self, encoder: Encoder, items: Sequence["Query | Candidate"], *, role: str, task: "Task",
                 bench: "Benchmark", cache: "EmbeddingCache | None", batch_size: int | None,
                 num_workers: int | None, workers: str,
                 pixel_cache: "PixelCache | str | os.PathLike[str] | bool | None") -> None:
        self.t_start = time.perf_counter()
        _check_role(role)
        meta = encoder.meta
        bs = batch_size if batch_size is not None else meta.batch_size
        if isinstance(bs, bool) or not isinstance(bs, int) or bs < 1:
            raise EncoderError(f"batch size must be a positive integer, got {bs!r}")
        check_workers(num_workers)
        self.requested_workers = num_workers  # None: the default (never warned about)
        if num_workers is None:
            num_workers = default_workers()
        num_workers = min(num_workers, max_decode_threads())
        self.encoder, self.items, self.role, self.task, self.bench = encoder, items, role, task, bench
        self.meta, self.bs, self.num_workers, self.workers = meta, bs, num_workers, workers
        self.cache, self.pixel_cache = cache, pixel_cache
        self.stats = EncodeStats()
        self.n = len(items)
        self.instruction = instruction_for(task, role)
        self.info = task_info(task, bench)
        self.use_cache = cache is not None and meta.cacheable and meta.extra.get("cacheable", True) is not False
        self.ctx = dict(encoder_name=meta.name, task_name=task.name, role=role)
        self.pool: ThreadPoolExecutor | None = None
        self.decoder: _Decoder | None = None
        self.device_stager: _DeviceStager | None = None
        self.tokenizer: _Tokenizer | None = None
        self.stager: ThreadPoolExecutor | None = None
        self.ahead: deque[Future] = deque()
        self.decoding: dict[int, Callable[[], list[Loaded]]] = {}
        self.tokenizing: dict[int, Callable[[list[EncodeInput]], list[EncodeInput]]] = {}
        self.stack = contextlib.ExitStack()
        self.writer: _CacheWriter | None = None
        self.batches: list[list[int]] = []
        self.keys: list[str] = []
        self.dim = meta.dim
        self.out: np.ndarray | None = None
        self.n_hit = 0
        self.setup_error: BaseException | None = None
        self.ready_ahead = False  # setup done (its first batches are being prepared)
        self.closed = False
        self.inputs_done = threading.Event()  # every batch prepared (or the call ended): a next call may start
        self._rest_ready: threading.Event | None = None  # set once the batches past the early ones are known
        self._n_early = 0  # batches prepared before the rest of the items are hashed (see setup)
        self._last_early: Future | None = None  # the last early batch's preparation, until the rest is known
        self.file_digests: dict[int, str] = {}  # item index -> sha256 of its image file

    # -- before the first batch -------------------------------------------------------------------
    def setup(self) -> None:
        items, n = self.items, self.n
        self.stats.items += n
        self.paths = paths = [self.bench.image_path(it.image) if it.image else None for it in items]
        n_paths = sum(p is not None for p in paths)  # no more threads than files to hash or decode
        num_workers = self.num_workers
        self.pool = ThreadPoolExecutor(max_workers=min(num_workers, n_paths)) if num_workers > 0 and n_paths else None
        decode = bool(self.meta.needs_pixels) and "image" in self.meta.modalities
        # a call with image files to decode hashes (a stat per file) and looks up its first
        # EARLY_BATCHES batches' items alone: when those are all misses they are its first batches
        # whatever the rest holds, so they are prepared first, and the rest is hashed once the model
        # has the first (see _setup_rest)
        head = min(n, max(0, EARLY_BATCHES) * self.bs)
        early = decode and n_paths > 0 and 0 < head < n
        if not early:
            head = n
        self.hashes = self._hash(0, head)
        mask, cached = self._lookup(self.hashes)
        if early and not mask.any():
            self.batches = [list(range(i, min(i + self.bs, head))) for i in range(0, head, self.bs)]
            self._n_early = len(self.batches)
            self._rest_ready = threading.Event()
            self._start_inputs(decode, n_decode=n_paths, n_texts=sum(1 for it in items if it.text is not None))
            if self.stager is not None:
                self._fill_ahead(0)
            return
        if head < n:
            mask, cached = self._hash_more(head, mask, cached)
        self.out = cached
        self.batches = self._batches_of(mask)
        n_decode = sum(paths[i] is not None for b in self.batches for i in b)
        n_texts = sum(1 for b in self.batches for i in b if items[i].text is not None)
        self._start_inputs(decode, n_decode, n_texts)
        if self.stager is not None:
            self._fill_ahead(0)

    def _hash_more(self, begin: int, mask: np.ndarray, cached: np.ndarray | None
                   ) -> tuple[np.ndarray, np.ndarray | None]:
        """Hash and look up items ``begin:``, appending to :attr:`hashes`: the whole call's hit mask
        and cached embeddings from those of items ``:begin``."""
        part = self._hash(begin, self.n)
        part_mask, part_cached = self._lookup(part)
        self.hashes.extend(part)
        if part_cached is not None or cached is not None:
            assert self.dim is not None
            both = np.zeros((self.n, self.dim), dtype=np.float32)
            for got, at in ((cached, slice(0, begin)), (part_cached, slice(begin, self.n))):
                if got is not None:
                    both[at] = got
            cached = both
        return np.concatenate([mask, part_mask]), cached

    def _hash(self, begin: int, end: int) -> list[str]:
        """Content hashes of items ``begin:end``; their image files' digests go to :attr:`file_digests`."""
        got: dict[int, str] = {}
        hashes = _hash_items(self.items[begin:end], self.paths[begin:end], self.pool,
                             window=max(16, 4 * self.num_workers), file_digests=got)
        self.file_digests.update((i + begin, d) for i, d in got.items())
        return hashes

    def _setup_rest(self) -> None:
        """The rest of an early-started call's setup, once its first batch is with the model: hash
        and look up the items after its early batches, then complete :attr:`batches` (the early
        ones, being prepared, stay the same list objects: the decoder may have reordered them)."""
        assert self._rest_ready is not None
        try:
            k = self._n_early
            head = sum(len(b) for b in self.batches[:k])
            mask, self.out = self._hash_more(head, np.zeros(head, dtype=bool), None)
            rest = self._batches_of(mask)[k:]  # the early batches are items :head, all misses
            self.batches.extend(rest)
            if not rest and self._last_early is not None:  # the last early batch ends the call's inputs
                self._last_early.add_done_callback(lambda _: self.inputs_done.set())
        finally:
            self._last_early = None
            self._rest_ready.set()

    def _batches_of(self, mask: np.ndarray) -> list[list[int]]:
        """The batches of the items the embedding cache misses (``mask``: every item's hit); counts
        the hits."""
        self.n_hit = int(mask.sum())
        self.stats.cache_hits += self.n_hit
        miss = np.flatnonzero(~mask)
        batches = [miss[i : i + self.bs].tolist() for i in range(0, len(miss), self.bs)]
        if not batches:
            self.inputs_done.set()
        return batches

    def _lookup(self, hashes: list[str]) -> tuple[np.ndarray, np.ndarray | None]:
        """``(hit mask, cached embeddings or None)`` of items with content ``hashes`` (all misses
        without an embedding cache); their cache keys are appended to :attr:`keys`, the cache's
        dimension checked against ``meta.dim`` and kept in :attr:`dim`."""
        if not self.use_cache:
            return np.zeros(len(hashes), dtype=bool), None
        cache = self.cache
        assert cache is not None
        keys = cache.keys(self.role, self.instruction, hashes)
        self.keys.extend(keys)
        mask, cached = cache.get_many(keys)
        if cached is not None:
            if self.dim is not None and cached.shape[1] != self.dim:
                raise EncoderError(
                    f"encoder {self.meta.name!r}: the embedding cache {cache.path} holds dimension {cached.shape[1]} "
                    f"but meta.dim is {self.dim}; delete that directory and re-run"
                )
            self.dim = cached.shape[1]
        return mask, cached

    def _start_inputs(self, decode: bool, n_decode: int, n_texts: int) -> None:
        """Create what prepares :attr:`batches`: cache writer, decoder when ``decode``, stagers,
        tokenizer (``n_decode`` / ``n_texts``: images to decode and texts to tokenise, or bounds on
        them); :meth:`_fill_ahead` then starts preparing."""
        encoder, paths, batches = self.encoder, self.paths, self.batches
        if self.use_cache and batches:
            assert self.cache is not None
            self.writer = _CacheWriter(self.cache)
        if decode:
            from mrbench.encoders.pixel_cache import resolve_pixel_cache

            self.decoder = _Decoder(encoder, self.items, paths, self.task.name, self.num_workers, self.workers,
                                    self.pool, resolve_pixel_cache(self.pixel_cache) if batches else None, self.stats,
                                    self.file_digests, n_decode=n_decode)
            if (self.decoder.gpu is None and getattr(encoder, "pixels_on_device", False) and any(paths)
                    and _gpu_decode_device(encoder)):
                self.device_stager = _DeviceStager(str(getattr(encoder, "device")))
                self.decoder.host_alloc = self.device_stager.alloc
        requested = self.requested_workers
        if requested is not None and self.pool is not None:
            if self.decoder is not None and self.decoder.transform is not None:  # worker processes
                if requested > self.decoder.procs_cap:
                    _warn_workers_capped(requested, self.decoder.procs_cap, "processes (one per usable core)")
            elif requested > self.num_workers:
                _warn_workers_capped(requested, self.num_workers, f"threads ({THREADS_PER_CORE} per usable core, "
                                     f"at most {MAX_THREADS})")
        text_fn = getattr(encoder, "text_transform", None)
        if batches and n_texts and callable(text_fn) and callable(getattr(encoder, "text_of", None)):
            fn = text_fn()
            if fn is not None:
                self.tokenizer = _Tokenizer(encoder, fn, n_texts, self.num_workers)
        # a bounded queue: the batch being encoded and PREFETCH_BATCHES prepared in one background
        # thread (which also keeps the next batch decoding), never more, so memory stays flat
        if batches and (self.decoder is not None or self.tokenizer is not None):
            self.stager = ThreadPoolExecutor(1, thread_name_prefix="mrbench-prepare")
            self.stack.enter_context(_short_switch_interval(_gpu_decode_device(encoder) is not None))

    def setup_safely(self) -> None:
        """:meth:`setup` in a background thread: an error is kept for :meth:`result` to raise."""
        try:
            self.setup()
        except BaseException as e:
            self.setup_error = e
            self.inputs_done.set()
        self.ready_ahead = True

    def _fill_ahead(self, b: int) -> None:
        """Keep batches ``b .. b + PREFETCH_BATCHES - 1`` being prepared."""
        assert self.stager is not None
        while len(self.ahead) < PREFETCH_BATCHES and b + len(self.ahead) < self._n_known():
            k = b + len(self.ahead)
            self.ahead.append(self.stager.submit(self._prepare, k))
            if k == self._n_early - 1 and not self._all_known():
                self._last_early = self.ahead[-1]

    def _prepare(self, b: int) -> tuple[list[EncodeInput], Callable[[], None] | None]:
        """Batch ``b``'s inputs (decoded, staged, tokenised); starts decoding batch ``b + 1`` (once it
        is known: a first batch may be prepared while the rest of the call is being hashed)."""
        batches, decoder, stats = self.batches, self.decoder, self.stats
        batch, ready = batches[b], None
        if decoder is not None:
            decoding = self.decoding
            if b not in decoding:
                decoding[b] = decoder.submit(batch)
            t0 = time.perf_counter()
            if b == 0:  # the model is idle: the first batch gets every worker before the next is started
                loaded = decoding.pop(b)()
            nxt = self._next_known(b)
            if nxt is not None and nxt not in decoding:
                decoding[nxt] = decoder.submit(batches[nxt])
            if b != 0:
                loaded = decoding.pop(b)()
            t1 = time.perf_counter()
            stats.read_wait_seconds += t1 - t0
            if self.device_stager is not None:
                loaded, ready = self.device_stager.stage(loaded, whole=getattr(loaded, "whole", None))
                stats.stage_seconds += time.perf_counter() - t1
        else:
            loaded = [(None, None)] * len(batch)
        inputs = self._inputs(batch, loaded)
        tokenizer = self.tokenizer
        if tokenizer is not None:
            t0 = time.perf_counter()
            finish = self.tokenizing.pop(b, None) or tokenizer.submit(inputs)
            nxt = self._next_known(b)
            # a batch without images has its inputs already: its texts go to the workers now, so
            # they tokenise it while this one is collected (each batch's own wait was ~10 ms on a GPU host)
            if (tokenizer.send_ahead and nxt is not None
                    and all(self.paths[i] is None for i in batches[nxt])):
                self.tokenizing[nxt] = tokenizer.submit(self._inputs(batches[nxt], [(None, None)] * len(batches[nxt])))
            inputs = finish(inputs)
            stats.tokenize_seconds += time.perf_counter() - t0
        if self._all_known() and b == len(batches) - 1:
            self.inputs_done.set()
        return inputs, ready

    def _all_known(self) -> bool:
        """Whether :attr:`batches` is complete (see :meth:`setup`)."""
        return self._rest_ready is None or self._rest_ready.is_set()

    def _n_known(self) -> int:
        """How many of :attr:`batches` are known (the early ones alone while the rest is being hashed)."""
        return len(self.batches) if self._all_known() else self._n_early

    def _next_known(self, b: int) -> int | None:
        """``b + 1`` when that batch is known to exist, else ``None``."""
        return b + 1 if b + 1 < self._n_known() else None

    def _inputs(self, batch: list[int], loaded: Sequence[Loaded]) -> list[EncodeInput]:
        items, paths, hashes, instruction = self.items, self.paths, self.hashes, self.instruction
        inputs = []
        for i, (img, pix) in zip(batch, loaded):
            it = items[i]
            inputs.append(_encode_input(id=it.id, text=it.text, image=img, image_path=paths[i], instruction=instruction,
                                        content_hash=hashes[i], meta=MappingProxyType(it.meta or {}), pixels=pix,
                                        tokens=None))
        return inputs

    # -- the encode loop --------------------------------------------------------------------------
    def result(self, *, progress: Callable[[int], None] | None = None, stats: EncodeStats | None = None) -> np.ndarray:
        if self.closed:
            raise RuntimeError("this encode call was already consumed or closed")
        t_run = time.perf_counter()
        # a call set up in the background is timed from here, one set up now from its creation
        t_from = t_run if self.ready_ahead else self.t_start
        try:
            if self.setup_error is not None:
                raise self.setup_error
            if not self.ready_ahead:
                self.setup()
            from mrbench.data.io import gc_full_passes_held

            held = gc_full_passes_held() if DEFER_FULL_COLLECTIONS else contextlib.nullcontext()
            with _gc_timed(self.stats), held:
                out = self._run(progress, t_from)
        finally:
            self.close()
            self.stats.total_seconds += time.perf_counter() - t_from
            if stats is not None:
                stats.add(self.stats)
        return out

    def _run(self, progress: Callable[[int], None] | None, t_start: float) -> np.ndarray:
        encoder, meta, stats, role, info = self.encoder, self.meta, self.stats, self.role, self.info

        def report_hits() -> None:
            if progress is not None and self.n_hit:
                progress(self.n_hit)

        if self._rest_ready is None:
            report_hits()
        launch = async_encode_of(encoder)

        def complete(batch: list[int], ids: list[str], result: Callable[[], Any]) -> None:
            """Wait for one batch's embeddings, check them and store them (array, cache, progress)."""
            t0 = time.perf_counter()
            with _encoder_failure(meta.name, role, self.task.name, ids):
                raw = result()
            stats.encode_seconds += time.perf_counter() - t0
            emb = validate_embeddings(raw, ids=ids, expected_dim=self.dim, normalise=meta.similarity == "cosine",
                                      **self.ctx)
            self.dim = emb.shape[1]
            if self.out is None:
                self.out = np.zeros((self.n, self.dim), dtype=np.float32)
            self.out[batch] = emb
            if self.writer is not None:
                self.writer.add([self.keys[i] for i in batch], emb)
            stats.encoded += len(batch)
            stats.batches += 1
            if progress is not None:
                progress(len(batch))

        # with an asynchronous encoder, batch b is checked once batch b + IN_FLIGHT is queued on the device
        pending: deque[tuple[list[int], list[str], Callable[[], Any]]] = deque()
        in_flight = max(1, IN_FLIGHT) if launch is not None else 0
        try:
            b = -1
            while b + 1 < len(self.batches):  # (an early-started call's batches after the first are added)
                b += 1
                batch = self.batches[b]
                if self.stager is not None:
                    self._fill_ahead(b)
                    t_wait = time.perf_counter()
                    inputs, ready = self.ahead.popleft().result()
                    stats.input_wait_seconds += time.perf_counter() - t_wait
                    if ready is not None:
                        ready()
                else:
                    inputs, _ = self._prepare(b)
                ids = [it.id for it in inputs]
                t0 = time.perf_counter()
                if b == 0:
                    stats.startup_seconds += t0 - t_start
                with _encoder_failure(meta.name, role, self.task.name, ids):
                    if launch is not None:
                        result = launch(inputs, role=role, task=info)
                    else:
                        raw = encoder.encode(inputs, role=role, task=info)  # type: ignore[arg-type]
                        result = lambda raw=raw: raw  # noqa: E731
                stats.encode_seconds += time.perf_counter() - t0
                pending.append((batch, ids, result))
                if b == 0 and not self._all_known():  # while the first batch runs (checked after this)
                    self._setup_rest()
                    report_hits()
                while len(pending) > in_flight:  # (a synchronous encoder's batch is checked at once)
                    complete(*pending.popleft())
            while pending:
                complete(*pending.popleft())
        except BaseException:
            while pending:  # keep (and cache) the batches already on their way, each on its own
                with contextlib.suppress(Exception):
                    complete(*pending.popleft())
            raise
        if self.writer is not None:
            self.writer.flush()
        if self.out is None:  # no items
            self.out = np.zeros((0, self.dim or 0), dtype=np.float32)
        return self.out

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.inputs_done.set()
        for f in self.ahead:
            f.cancel()
        if self.stager is not None:
            self.stager.shutdown(wait=True, cancel_futures=True)
        self.stack.close()
        writer = self.writer
        if writer is not None:
            if writer.unwritten:  # a batch failed: keep what was encoded before it
                n_kept = writer.unwritten
                try:
                    writer.flush()
                except Exception as e:  # the batch's own error is the one to report
                    log.warning("could not write %d encoded embeddings to the cache: %s", n_kept, e)
            writer.close()
        self.tokenizing.clear()  # (a batch tokenised ahead for nothing: its workers just finish it)
        if self.tokenizer is not None:
            self.tokenizer.close()
        if self.decoder is not None:
            self.decoder.close()
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
