"""Encode a benchmark into the embedding cache with one process per GPU, on one node or many.

``mrbench encode`` (:func:`encode_benchmark`) runs the encoding stage of ``mrbench evaluate`` ahead
of time, under ``torchrun`` / ``accelerate launch`` or as a single process, so that the ``evaluate``
that follows (same encoder spec, same ``--encoder-kwargs``, same cache root) finds every embedding
cached and only retrieves and scores:

1. **Work list** — every rank builds the same ordered list of what ``evaluate`` encodes for the
   selected tasks: per task its queries (role ``query``), its candidates (role ``candidate``) and,
   with ``grain_sensitivity``, the drop-one-grain variants of its text-bearing queries
   (:func:`sensitivity_queries`, the exact items :func:`mrbench.pipeline.evaluate` builds).
   Items that would share a cache entry (same role, instruction, text and image file) are listed
   once (:func:`work_units`); a pool shared by several tasks is encoded once.
2. **Shards** — rank ``r`` of ``W`` takes units ``r, r + W, r + 2W, …`` (:func:`shard`): disjoint,
   together complete, deterministic, and an even mix of images and texts per rank.
3. **Encoding** — each rank pins its GPU (``torch.cuda.set_device(LOCAL_RANK)``, so an encoder built
   with ``device="auto"`` lands on ``cuda:LOCAL_RANK``; CPU without CUDA) and encodes its share with
   the harness (:func:`~mrbench.encoders.harness.encode_items`: cache hits skipped, batches
   validated) into the shared cache, one call per (task, role) group; on a GPU each group's call is
   started while the one before it runs, as ``evaluate`` does (``mrbench.pipeline.ENCODE_AHEAD``), so
   a group's start-up does not leave the device idle. Shard file names carry time, pid and a random
   token, and no index file is shared, so concurrent ranks never clobber each other.
4. **Merge** — each rank rewrites the shards it wrote as one shard
   (:meth:`~mrbench.encoders.cache.EmbeddingCache.merge_shards`), so the namespace ends with about
   one file per rank.
5. **Validate** — after a barrier, every rank sends its keys to rank 0, which rescans the cache
   directory and checks that every key is there (with several nodes the cache must live on a
   filesystem they all share); the outcome is broadcast so that every rank exits alike.

The process group is ``torch.distributed`` set up from the launcher's ``RANK`` / ``WORLD_SIZE`` /
``LOCAL_RANK`` / ``MASTER_ADDR`` / ``MASTER_PORT``; it only carries barriers and small Python objects
(never tensors), so it is gloo on CPU and GPU nodes alike (see :class:`DistContext`). Without ``WORLD_SIZE`` (or with ``WORLD_SIZE=1``) the
same code runs as one process with no process group.

**When a rank stops or hangs.** A rank's own error is its own one line (``error: rank 1: …``); the
ranks waiting for it at a barrier or exchange then fail with a :class:`PeerStoppedError` (one line:
another rank stopped, re-run to resume: the batches every rank finished are in the cache) instead of
torch's transport traceback. A rank that hangs keeps the others waiting for at most
``$MRBENCH_DIST_TIMEOUT`` seconds (default :data:`DEFAULT_TIMEOUT_S`, 24 h: it must exceed the
longest wait of a fast rank for the slowest one, loading included); then they fail with a
:class:`CollectiveTimeoutError` naming the collective and the variable.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from mrbench.errors import EncoderError, MrbenchError

if TYPE_CHECKING:
    from mrbench.data.schema import Benchmark, Query, Task
    from mrbench.encoders.cache import EmbeddingCache

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 24 * 3600
"""Barrier timeout: ranks that finish early wait for the slowest one, so this must exceed the
imbalance of a whole run (a rank that *dies* still ends the job at once: the launcher stops the rest).
``$MRBENCH_DIST_TIMEOUT`` (seconds) replaces it."""

TIMEOUT_ENV = "MRBENCH_DIST_TIMEOUT"
"""Environment variable: the process group's timeout in seconds (default :data:`DEFAULT_TIMEOUT_S`)."""

_T = TypeVar("_T")

SETTLE_S = 30.0
"""How long rank 0 keeps rescanning the cache for shards another node wrote but its filesystem does
not list yet (NFS attribute caching) before it reports them missing."""


# ----------------------------------------------------------------------------------------------------
# process group


class DistributedError(MrbenchError):
    """A collective (barrier, gather, broadcast) failed on this rank because of another rank; the
    torch error is the ``__cause__``. ``rank``: this rank; ``what``: the collective, in words."""

    def __init__(self, message: str, *, rank: int, what: str) -> None:
        super().__init__(message)
        self.rank = rank
        self.what = what


class PeerStoppedError(DistributedError):
    """Another rank stopped (error, crash, killed) while this one waited for it in a collective."""


class CollectiveTimeoutError(DistributedError):
    """A collective did not complete within the process group's timeout: another rank hangs or is
    slower than the limit (``$MRBENCH_DIST_TIMEOUT``)."""


_TRANSPORT_MARKERS = ("gloo/transport", "connection", "peer", "broken pipe", "socket")
"""Lower-case fragments of the RuntimeErrors gloo raises when the other end of a pair goes away
(``Connection closed by peer``, ``Read error …: Connection reset by peer``, ``Broken pipe``)."""


def _comm_failure(e: BaseException) -> str | None:
    """``"timeout"`` or ``"peer"`` when ``e`` (raised by a collective) is a communication failure,
    ``None`` for anything else (a local bug, e.g. an object that does not pickle: left as it is)."""
    if not isinstance(e, RuntimeError):
        return None
    low = str(e).lower()
    if "timed out" in low or "timeout" in low:
        return "timeout"
    try:
        from torch.distributed import DistError
    except ImportError:  # pragma: no cover - torch without torch.distributed
        DistError = ()  # type: ignore[assignment,misc]
    if isinstance(e, DistError) or any(m in low for m in _TRANSPORT_MARKERS):
        return "peer"
    return None


def _fmt_s(seconds: float) -> str:
    return f"{seconds:g} s"


def timeout_from_env() -> float:
    """``$MRBENCH_DIST_TIMEOUT`` in seconds (a positive number), else :data:`DEFAULT_TIMEOUT_S`;
    a bad value is a one-line :class:`MrbenchError` naming the variable."""
    raw = os.environ.get(TIMEOUT_ENV)
    if raw is None or raw.strip() == "":
        return float(DEFAULT_TIMEOUT_S)
    try:
        value = float(raw)
        ok = math.isfinite(value) and value > 0
        if ok:
            timedelta(seconds=value)
    except (ValueError, OverflowError):
        ok = False
    if not ok:
        raise MrbenchError(
            f"environment variable {TIMEOUT_ENV}={raw!r} is not a positive number of seconds; set it to how long "
            f"a rank may wait for the others, e.g. {TIMEOUT_ENV}=3600, or unset it for {DEFAULT_TIMEOUT_S} (24 h)"
        )
    return value


@dataclass
class DistContext:
    """Rank, world size and GPU of this process, and the process group (none for one process).

    Build it with :meth:`from_env`; use it as a context manager (or call :meth:`close`) to tear down
    a process group it created. A group that already existed (a caller's, e.g. accelerate's) is
    reused and left alone.

    The group only carries barriers and a few small Python objects, never tensors, so it is gloo
    (TCP) on CPU and GPU nodes alike; when the existing default group is NCCL a gloo group is
    created beside it for these collectives.

    A collective that fails because another rank stopped raises :class:`PeerStoppedError`, one that
    times out :class:`CollectiveTimeoutError` (both one-line :class:`MrbenchError`, the torch error
    chained); any other error of a collective propagates unchanged. The timeout (``timeout_s``) is
    ``$MRBENCH_DIST_TIMEOUT`` unless the caller passes one; a reused gloo group keeps its own.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    device: str = "cpu"
    backend: str | None = None
    owns_group: bool = False
    group: Any = None  # the group the collectives use (None: the default group)
    timeout_s: float | None = None  # that group's timeout when this context set it (None: a caller's group)
    timeout_hint: str = f"raise the limit with {TIMEOUT_ENV}=<seconds>"  # how (depends on who set it)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @classmethod
    def from_env(cls, *, backend: str | None = None, timeout_s: float | None = None) -> "DistContext":
        """Read the launcher's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
        ``LOCAL_WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``), pin this rank's GPU
        (``cuda:LOCAL_RANK`` modulo the visible devices) and join the process group (``backend``,
        default gloo; see the class docstring) with ``timeout_s`` (default ``$MRBENCH_DIST_TIMEOUT``,
        else :data:`DEFAULT_TIMEOUT_S`; the variable is checked even for one process)."""
        import torch

        if timeout_s is None:
            timeout_s = timeout_from_env()
            hint = f"raise the limit with {TIMEOUT_ENV}=<seconds>"
        else:
            hint = "pass a larger timeout_s"

        dist = torch.distributed if torch.distributed.is_available() else None
        existing = dist is not None and dist.is_initialized()
        if existing:
            assert dist is not None
            rank, world = dist.get_rank(), dist.get_world_size()
        else:
            rank = _env_int("RANK", 0)
            world = _env_int("WORLD_SIZE", 1)
        if world < 1 or not 0 <= rank < world:
            raise MrbenchError(f"RANK={rank} and WORLD_SIZE={world} are inconsistent; launch with torchrun or accelerate launch")
        local_rank = _env_int("LOCAL_RANK", 0)
        local_world = _env_int("LOCAL_WORLD_SIZE", world)
        device = "cpu"
        if torch.cuda.is_available():
            idx = local_rank % torch.cuda.device_count()
            torch.cuda.set_device(idx)  # "cuda" (what device="auto" resolves to) now means this GPU
            device = f"cuda:{idx}"
        ctx = cls(rank=rank, world_size=world, local_rank=local_rank, local_world_size=max(1, local_world),
                  device=device)
        if world == 1 and not existing:
            return ctx
        if dist is None:
            raise MrbenchError(f"WORLD_SIZE={world} but this torch build has no torch.distributed; run one process")
        timeout = timedelta(seconds=timeout_s)
        ctx.timeout_s, ctx.timeout_hint = timeout_s, hint
        if not existing:
            for var in ("MASTER_ADDR", "MASTER_PORT"):
                if var not in os.environ:
                    raise MrbenchError(f"WORLD_SIZE={world} but {var} is not set; launch with torchrun or accelerate launch")
            where = f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}"
            ctx._collective(f"the start of the process group at {where}", lambda: dist.init_process_group(
                backend=backend or "gloo", timeout=timeout), peer=False)
            ctx.owns_group = True
        ctx.backend = str(dist.get_backend())
        if ctx.backend != "gloo":
            ctx.group = dist.new_group(backend="gloo", timeout=timeout)
        elif existing:  # the caller's gloo group, with the caller's timeout
            ctx.timeout_s, ctx.timeout_hint = None, "raise the timeout of the process group your script creates"
        return ctx

    # -- collectives (no-ops for one process) ---------------------------------------------------
    def _collective(self, what: str, fn: Callable[[], _T], *, peer: bool = True) -> _T:
        """``fn()``, its communication failures as one-line errors (see the class docstring);
        ``peer=False``: only timeouts are converted."""
        try:
            return fn()
        except RuntimeError as e:
            kind = _comm_failure(e)
            if kind == "timeout":
                limit = f" after {_fmt_s(self.timeout_s)}" if self.timeout_s is not None else ""
                raise CollectiveTimeoutError(
                    f"timed out{limit} on rank {self.rank} at {what}: another rank did not get there in time "
                    f"(it hangs, or is slower than the limit); if it is only slow, {self.timeout_hint}, then "
                    f"re-run the same command (it resumes from the embedding cache)", rank=self.rank, what=what,
                ) from e
            if kind == "peer" and peer:
                raise PeerStoppedError(
                    f"another rank stopped while rank {self.rank} waited at {what} (see its error, or the launcher's "
                    f"report of how it exited); fix that and re-run the same command: the batches every "
                    f"rank finished are in the embedding cache and are not encoded again",
                    rank=self.rank, what=what,
                ) from e
            raise

    def barrier(self, what: str = "a barrier") -> None:
        """Wait for every rank; ``what`` names this barrier in the errors."""
        if self.distributed:
            import torch.distributed as dist

            self._collective(what, lambda: dist.barrier(group=self.group))

    def gather(self, obj: Any, what: str = "a gather to rank 0") -> list[Any] | None:
        """Every rank's ``obj`` on rank 0 (in rank order); ``None`` elsewhere."""
        if not self.distributed:
            return [obj]
        import torch.distributed as dist

        out: list[Any] | None = [None] * self.world_size if self.is_main else None
        self._collective(what, lambda: dist.gather_object(obj, out, dst=0, group=self.group))
        return out

    def broadcast(self, obj: Any, what: str = "a broadcast from rank 0") -> Any:
        """Rank 0's ``obj`` on every rank."""
        if not self.distributed:
            return obj
        import torch.distributed as dist

        box = [obj if self.is_main else None]
        self._collective(what, lambda: dist.broadcast_object_list(box, src=0, group=self.group))
        return box[0]

    def close(self, wait: bool = False) -> None:
        """Destroy the process group this context created (a no-op otherwise). ``wait``: after a
        barrier, so that no rank tears the group down while another still has a collective on it in
        flight (a rank leaving early with the group alive can make another abort at exit); pass it
        only on success, when every rank gets there (a failed barrier is ignored)."""
        if self.owns_group:
            import torch.distributed as dist

            if dist.is_initialized():
                if wait and self.distributed:
                    with contextlib.suppress(Exception):
                        self.barrier("the barrier before leaving")
                dist.destroy_process_group()
            self.owns_group = False

    def __enter__(self) -> "DistContext":
        return self

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        self.close(wait=exc_type is None)


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise MrbenchError(f"environment variable {name}={raw!r} is not an integer; launch with torchrun or accelerate launch") from None


# ----------------------------------------------------------------------------------------------------
# the work list


@dataclass(frozen=True)
class WorkUnit:
    """One item to encode: the task it is encoded for (instruction, task info), its role, the item."""

    task: int  # index into the task list
    role: str
    item: Any  # Query | Candidate


def sensitivity_queries(task: "Task", judged: Sequence[dict[int, int]] | None = None) -> list["Query"]:
    """The drop-one-grain variants of ``task``'s queries that ``evaluate``'s grain-sensitivity
    diagnostic encodes (role ``query``; :func:`mrbench.grains.masking.drop_one_variants`, the same
    function ``evaluate`` uses). ``evaluate`` skips tasks whose queries are images only; so does
    :func:`work_units`."""
    from mrbench.grains.masking import drop_one_variants
    from mrbench.pipeline import judged_grades

    return drop_one_variants(task, judged if judged is not None else judged_grades(task))[0]


def work_units(bench: "Benchmark", tasks: Sequence["Task"], *, grain_sensitivity: bool = True) -> list[WorkUnit]:
    """Everything ``evaluate`` encodes for ``tasks``, in a fixed order (task, then queries,
    candidates, drop-one-grain queries), each cache entry once.

    Two items share a cache entry when role, instruction, text and image file agree (the cache key
    hashes the image *bytes*, so identical images under different paths are still listed twice;
    they map to one entry, written by whichever rank encodes it last).
    """
    from mrbench.encoders.harness import instruction_for

    seen: set[tuple[str, str, str | None, str | None]] = set()
    units: list[WorkUnit] = []
    for ti, task in enumerate(tasks):
        groups: list[tuple[str, Sequence[Any]]] = [("query", task.queries), ("candidate", task.candidates)]
        if grain_sensitivity and task.query_modality != "image":
            groups.append(("query", sensitivity_queries(task)))
        for role, items in groups:
            instruction = instruction_for(task, role) or ""
            for it in items:
                ident = (role, instruction, it.text, str(bench.image_path(it.image)) if it.image else None)
                if ident in seen:
                    continue
                seen.add(ident)
                units.append(WorkUnit(ti, role, it))
    return units


def shard(units: Sequence[WorkUnit], rank: int, world_size: int) -> list[WorkUnit]:
    """Rank ``rank``'s share: units ``rank, rank + world_size, …`` (disjoint, jointly complete)."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"shard: rank {rank} of world size {world_size}")
    return list(units[rank::world_size])


def _groups(units: Sequence[WorkUnit]) -> list[tuple[int, str, list[Any]]]:
    """Units grouped by (task, role), first-seen order: one harness call each."""
    out: dict[tuple[int, str], list[Any]] = {}
    for u in units:
        out.setdefault((u.task, u.role), []).append(u.item)
    return [(t, r, items) for (t, r), items in out.items()]


# ----------------------------------------------------------------------------------------------------
# encoding


@dataclass
class RankReport:
    """What one rank did."""

    rank: int
    host: str
    device: str
    assigned: int = 0
    cache_hits: int = 0
    encoded: int = 0
    encode_seconds: float = 0.0
    seconds: float = 0.0
    shards: list[str] = field(default_factory=list)  # shard files this rank left (names, after merging)


@dataclass
class EncodeReport:
    """Outcome of :func:`encode_benchmark`. ``ranks`` holds every rank's report on rank 0 and only
    this rank's elsewhere; ``missing`` is the number of work items rank 0 did not find in the cache
    after every rank finished (``None`` when not validated)."""

    encoder: str
    namespace: str
    cache_path: Path
    benchmark: str
    tasks: list[str]
    rank: int
    world_size: int
    units: int
    ranks: list[RankReport]
    missing: int | None
    seconds: float

    @property
    def encoded(self) -> int:
        return sum(r.encoded for r in self.ranks)

    @property
    def cache_hits(self) -> int:
        return sum(r.cache_hits for r in self.ranks)

    def summary(self) -> str:
        """One line for the terminal."""
        check = "" if self.missing is None else (", all cached" if self.missing == 0 else f", {self.missing} MISSING")
        return (f"{self.encoder}: {self.units} items over {len(self.tasks)} task(s) on {self.world_size} rank(s) "
                f"in {self.seconds:.1f} s — encoded {self.encoded}, already cached {self.cache_hits}{check}; "
                f"cache {self.cache_path}")


class _RecordingCache:
    """Wraps an :class:`EmbeddingCache` to remember the shard files this process writes."""

    def __init__(self, cache: "EmbeddingCache") -> None:
        self._cache = cache
        self.written: list[Path] = []

    def put_many(self, keys: Sequence[str], emb: Any) -> Path | None:
        p = self._cache.put_many(keys, emb)
        if p is not None:
            self.written.append(p)
        return p

    def __getattr__(self, name: str) -> Any:
        return getattr(self._cache, name)


def _default_workers(local_world_size: int) -> int:
    """Decode threads per rank: the node's cores split over its ranks, 1 to 8."""
    return max(1, min(8, (os.cpu_count() or 1) // max(1, local_world_size)))


def encode_benchmark(
    benchmark: "str | Path | Benchmark" = "mrbench-synth",
    encoder: Any = "random",
    *,
    encoder_kwargs: dict[str, Any] | None = None,
    tasks: Sequence[str] | None = None,
    cache_dir: str | Path | None = None,
    batch_size: int | None = None,
    num_workers: int | None = None,
    decode: str = "auto",
    grain_sensitivity: bool = True,
    verify: bool = True,
    merge: bool = True,
    validate: bool = True,
    progress: Any = False,
    dist: DistContext | None = None,
    timeout_s: float | None = None,
) -> EncodeReport:
    """Encode everything ``evaluate`` would encode for ``benchmark`` into the embedding cache, this
    process taking its rank's share (see the module docstring).

    Arguments mean what they mean for :func:`mrbench.pipeline.evaluate`; pass the same ``encoder``
    spec, ``encoder_kwargs`` and ``cache_dir`` (and the same ``grain_sensitivity``) to ``evaluate``
    afterwards and it encodes nothing. ``num_workers`` defaults to the node's cores divided by its
    ranks (at most 8). ``merge``: each rank compacts the shards it wrote into one. ``validate``: rank
    0 checks that every item is in the cache at the end and raises :class:`EncoderError` otherwise
    (on every rank). ``progress`` (``True``, ``False`` or a Reporter) is honoured on rank 0 only.
    ``dist``: a :class:`DistContext` to reuse (several encoders in one launch); by default one is
    built from the environment (``timeout_s``: its collectives' timeout, default
    ``$MRBENCH_DIST_TIMEOUT`` or 24 h) and torn down at the end. Under a launcher every rank must call
    this with the same arguments. When another rank stops or hangs, the ranks waiting for it raise
    :class:`PeerStoppedError` / :class:`CollectiveTimeoutError`.
    """
    from mrbench.data.registry import load_benchmark
    from mrbench.data.schema import Benchmark
    from mrbench.encoders.cache import EmbeddingCache
    from mrbench import pipeline
    from mrbench.encoders.harness import (
        EncodeStats,
        _gpu_decode_device,
        _hash_items,
        calls_in_turn,
        check_worker_kind,
        instruction_for,
    )
    from mrbench.encoders.hash_store import load_file_hashes, save_file_hashes
    from mrbench.pipeline import _default_revision, open_cache, resolve_encoder
    from mrbench.report.progress import NullReporter

    own = dist is None
    ctx = dist if dist is not None else DistContext.from_env(timeout_s=timeout_s)
    done = False
    try:
        t_start = time.perf_counter()
        if progress is True and ctx.is_main:
            from mrbench.report.progress import RichReporter

            reporter: Any = RichReporter()
        elif progress in (False, None, True) or not ctx.is_main:
            reporter = NullReporter()
        else:
            reporter = progress
        check_worker_kind(decode)
        if num_workers is None:
            num_workers = _default_workers(ctx.local_world_size)

        bench = benchmark if isinstance(benchmark, Benchmark) else load_benchmark(
            benchmark, verify=verify, progress=reporter.builder_callback(), tasks=tasks or None
        )
        task_list = [bench.task(n) for n in tasks] if tasks else list(bench.tasks)
        load_file_hashes(bench.root)  # image digests of earlier runs (see mrbench.encoders.hash_store)

        enc, spec = resolve_encoder(encoder, encoder_kwargs)
        meta = enc.meta
        if not meta.cacheable or meta.extra.get("cacheable", True) is False:
            raise EncoderError(
                f"encoder {spec!r} is not cacheable (its output depends on more than the content), so there is "
                "nothing to encode ahead of time; run 'mrbench evaluate' directly"
            )
        if not isinstance(encoder, str) and _default_revision(meta):  # evaluate would not read such a cache
            raise EncoderError(
                f"encoder instance {spec!r} has the default meta.revision {meta.revision!r}, so its embeddings are "
                "not cached (another instance of the same name could differ) and there is nothing to encode ahead; "
                "set meta.revision to something that changes with its weights or code (e.g. a checkpoint hash)"
            )
        store = open_cache(spec, meta.revision, encoder_kwargs, cache_dir)
        rec = _RecordingCache(store)
        # Every rank indexes the shards already on disk *before* any rank writes: a rank never lists
        # another's shards, which that rank deletes when it merges them (the shares are
        # disjoint, so no rank needs another's new entries).
        len(store)
        ctx.barrier("the barrier before encoding")

        units = work_units(bench, task_list, grain_sensitivity=grain_sensitivity)
        mine = shard(units, ctx.rank, ctx.world_size)
        device = str(getattr(enc, "device", None) or "cpu")  # encoders without a .device compute on the CPU
        me = RankReport(rank=ctx.rank, host=socket.gethostname(), device=ctx.device if device == "cuda" else device,
                        assigned=len(mine))
        if ctx.is_main:
            reporter.log(f"[dim]{spec}: {len(units)} items to cache over {len(task_list)} task(s); "
                         f"{ctx.world_size} rank(s), this one ({me.device}) takes {len(mine)}[/dim]")

        stats = EncodeStats()
        my_keys: list[str] = []
        share = f" (rank 0's share of {ctx.world_size})" if ctx.distributed else ""
        groups = _groups(mine)
        # as evaluate does for an encoder on a GPU (mrbench.pipeline.ENCODE_AHEAD): each group's call is
        # started while the one before it runs, so its start-up (hashes, cache lookups, first batches)
        # does not leave the device idle between groups; the groups hold distinct cache entries
        ahead = pipeline.ENCODE_AHEAD if pipeline.ENCODE_AHEAD is not None else _gpu_decode_device(enc) is not None
        turns = calls_in_turn(enc, [(task_list[ti], role, items) for ti, role, items in groups], bench=bench,
                              ahead=ahead, cache=rec, batch_size=batch_size, num_workers=num_workers, workers=decode)
        with contextlib.closing(turns):
            for (ti, role, items), finish in zip(groups, turns):
                task = task_list[ti]
                label = f"{task.name}: {'queries' if role == 'query' else 'candidates'}{share}"
                with reporter.stage(label, len(items)) as adv:
                    finish(progress=adv, stats=stats)
                if validate:  # keys for the final check (image hashes are memoised by encode_items: no re-read)
                    paths = [bench.image_path(it.image) if it.image else None for it in items]
                    instruction = instruction_for(task, role)
                    my_keys += store.keys(role, instruction, _hash_items(items, paths, None))
        me.cache_hits, me.encoded, me.encode_seconds = stats.cache_hits, stats.encoded, stats.encode_seconds
        if not ctx.distributed:  # a rank hashed its share only: one rank's store would drop the others'
            save_file_hashes(bench.root)
        if merge and len(rec.written) > 1:
            rec.written = store.merge_shards(rec.written)
        me.shards = [p.name for p in rec.written]
        me.seconds = time.perf_counter() - t_start

        # everyone done -> rank 0 checks the union of the keys against a fresh view of the directory
        ctx.barrier("the barrier after encoding")
        reports = ctx.gather(me, "the gather of the ranks' reports")
        key_blobs = ctx.gather(b"".join(bytes.fromhex(k) for k in my_keys),
                               "the gather of the ranks' cache keys") if validate else None
        missing: int | None = None
        problem: str | None = None
        if ctx.is_main and validate:
            assert key_blobs is not None
            want = {blob[i : i + 32].hex() for blob in key_blobs for i in range(0, len(blob), 32)}
            deadline = time.monotonic() + (SETTLE_S if ctx.distributed else 0.0)
            while True:
                fresh = EmbeddingCache(store.root, store.namespace)
                absent = [k for k in want if k not in fresh]
                if not absent or time.monotonic() >= deadline:
                    break
                time.sleep(2.0)
            missing = len(absent)
            if absent:
                problem = (f"encoder {spec!r}: {missing} of {len(want)} embeddings are missing from {store.path} after "
                           f"every rank finished; with several nodes --cache-dir must be on a filesystem all of them "
                           f"share — re-run the same command to fill the gaps")
        problem = ctx.broadcast(problem, "the broadcast of rank 0's check of the cache")
        if problem:
            raise EncoderError(problem)
        report = EncodeReport(
            encoder=spec, namespace=store.namespace, cache_path=store.path, benchmark=bench.name,
            tasks=[t.name for t in task_list], rank=ctx.rank, world_size=ctx.world_size, units=len(units),
            ranks=list(reports) if reports is not None else [me], missing=missing,
            seconds=time.perf_counter() - t_start,
        )
        done = True
        return report
    finally:
        if own:
            ctx.close(wait=done)
