"""The evaluation pipeline: load → encode → retrieve → score → report.

:func:`evaluate` is the Python API behind ``mrbench evaluate``. Per task it encodes queries and the
candidate pool through the harness (batched, validated, cached on disk), runs exact retrieval,
ranks every judged candidate with pessimistic ties, computes per-query metrics, measures grain
sensitivity (one grain dropped at a time), and aggregates per task, per grain count and per grain
type. With ``output`` it writes the results JSON, one TREC run file per task, the per-query table,
the grain-sensitivity table and a per-grain chart.
"""

from __future__ import annotations

import errno
import itertools
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mrbench.data.csr import CsrMappings
from mrbench.data.io import RESULTS_MARKER, check_replaceable, check_writable_path, gc_frozen, gc_paused, output_target
from mrbench.data.schema import Benchmark, Task
from mrbench.errors import MrbenchError, OutputExistsError
from mrbench.memory import available_memory
from mrbench.pool_dir import PoolDir, remove_stale_pools
from mrbench.report.progress import NullReporter
from mrbench.report.results import EvaluationResult

_log = logging.getLogger("mrbench")


def _parse_ks(ks: Sequence[int] | int | str) -> tuple[int, ...]:
    """``ks`` (a list, one int, or ``"1,5,10"``) as sorted distinct positive ints; one line otherwise."""
    import numbers

    if isinstance(ks, str):
        try:
            vals = [int(x) for x in ks.replace(" ", "").split(",") if x]
        except ValueError:
            raise MrbenchError(f"--k {ks!r}: expected comma-separated positive integers such as 1,5,10") from None
    elif isinstance(ks, numbers.Integral) and not isinstance(ks, bool):
        vals = [int(ks)]
    else:
        try:
            vals = [int(x) for x in ks]
        except (TypeError, ValueError):
            raise MrbenchError(f"ks {ks!r}: expected positive integers such as 5, (1, 5, 10) or '1,5,10'") from None
    if not vals or any(k < 1 for k in vals):
        raise MrbenchError(f"--k {ks!r}: expected comma-separated positive integers such as 1,5,10")
    return tuple(sorted(set(vals)))


def _parse_tasks(tasks: Sequence[str] | str | None) -> list[str] | None:
    """``tasks`` as a list of names: a list as given, one name, or comma-separated names (``"t2i,i2t"``,
    as ``--tasks`` takes them); ``None`` (all) as is."""
    if not isinstance(tasks, str):
        return None if tasks is None else list(tasks)
    names = [n.strip() for n in tasks.split(",") if n.strip()]
    if not names:
        raise MrbenchError(f"tasks {tasks!r}: no task name in it; pass a name, comma-separated names such as 't2i,i2t', "
                           "a list, or None for all tasks")
    return names


def _check_output(output: Path | None, overwrite: bool, replaced: bool = True) -> None:
    """Refuse an ``--output`` that cannot take results, before any work: a file, a non-empty directory
    without ``overwrite``, and (``replaced``: the results replace the directory, rather than go into
    subdirectories of it) what :func:`~mrbench.data.io.check_replaceable` refuses — a directory that
    holds other files than results, the current directory."""
    if output is None:
        return
    shown = Path(output)
    output = output_target(shown)  # (through a symbolic link; a dangling one is refused)
    if output.exists() and not output.is_dir():
        raise OutputExistsError(f"{shown}: exists and is not a directory; choose another --output")
    if output.is_dir() and any(output.iterdir()) and not overwrite:
        if (output / RESULTS_MARKER).is_file() or not replaced:
            raise OutputExistsError(f"{shown}: already holds results; pass --overwrite (overwrite=True in Python) to "
                                    "replace them or choose another --output")
        raise OutputExistsError(f"{shown}: is not empty (it holds files, but no {RESULTS_MARKER}); choose another "
                                "--output")
    if not replaced and (output / RESULTS_MARKER).is_file():
        raise OutputExistsError(f"--output {shown}: holds the results of one encoder; with several encoders each gets "
                                "a subdirectory of --output: choose another --output")
    if overwrite and replaced:
        if output.is_dir() and not (output / RESULTS_MARKER).is_file() and any(
                (d / RESULTS_MARKER).is_file() for d in output.iterdir() if d.is_dir()):
            raise OutputExistsError(f"--output {shown}: holds the results of several encoders (a subdirectory each), "
                                    "which one encoder's results would replace; choose another --output")
        check_replaceable(shown, marker=RESULTS_MARKER, what="evaluation results")
    # the results are written into a staging directory beside it and renamed into place: its nearest existing
    # parent must be a writable directory (checked now, not once everything is computed)
    check_writable_path(output, "--output")


def judged_grades(task: Task) -> CsrMappings:
    """Per query (in task order), its graded candidates as ``{candidate index: grade > 0}``.

    A :class:`~mrbench.data.csr.CsrMappings` (a read-only list of dicts backed by arrays), with the
    candidate indices ascending within each query: the layout
    :func:`~mrbench.retrieval.search.exact_search` returns its ranks in, so scoring reads both as
    aligned arrays.
    """
    from itertools import chain

    from mrbench.retrieval.search import _flatten_judged

    empty: dict[str, int] = {}
    per_q = [task.qrels.get(q.id, empty) for q in task.queries]
    index = task.candidate_index(set(chain.from_iterable(per_q)))  # the judged ids only
    lens = np.fromiter(map(len, per_q), dtype=np.int64, count=len(per_q))
    total = int(lens.sum())
    rows = np.fromiter(chain.from_iterable(map(index.__getitem__, m) for m in per_q), dtype=np.int64, count=total)
    grades = np.fromiter(chain.from_iterable(m.values() for m in per_q), dtype=np.int64, count=total)
    qrels = CsrMappings(np.r_[0, np.cumsum(lens)], rows, grades)
    # exact_search's own normalisation: grade-0 entries dropped, rows ascending within each query
    return CsrMappings(*_flatten_judged(qrels, len(per_q), max(1, len(task.candidates))))


def _import_stage_modules(backend: str, approx: bool, task_list: Sequence[Task]) -> None:
    """Import what the retrieve and score stages would import on their first call in this process
    (torch for the search: ~1.5 s cold; pandas for the per-query tables; faiss where the search or the
    approximate index will use it), so that ``timings["imports"]`` holds that one-time cost and
    ``retrieve`` / ``score`` the work alone. Kept out of the CLI's start-up (``mrbench --help``)."""
    import pandas  # noqa: F401
    import torch

    from mrbench.retrieval.search import _SMALL_SEARCH

    faiss_needed = approx or backend == "faiss" or (
        backend == "auto" and not torch.cuda.is_available()
        and any(len(t.queries) * len(t.candidates) > _SMALL_SEARCH for t in task_list))
    if faiss_needed:
        try:
            import faiss  # noqa: F401
        except ImportError:  # (the search says what to install, where it needs it)
            pass


def _hardware(device: str) -> dict[str, Any]:
    import os
    import platform

    import torch

    hw: dict[str, Any] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "device": device,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    hw["faiss"] = _faiss_version()
    return hw


def _faiss_version() -> str | None:
    """faiss's version without importing it (0.1-0.2 s) when no search needed it; ``None`` if absent."""
    import sys

    mod = sys.modules.get("faiss")
    if mod is not None:
        return getattr(mod, "__version__", None)
    from importlib.metadata import PackageNotFoundError, version

    for dist in ("faiss-cpu", "faiss-gpu", "faiss-gpu-cu12", "faiss"):
        try:
            return version(dist)
        except PackageNotFoundError:
            continue
    return None


def task_frame(task: Task, judged_ranks: Sequence[Any], judged: Sequence[dict[int, int]], ks: Sequence[int],
               ties: Sequence[int] | None = None):
    """Per-query rows of one task (:func:`~mrbench.metrics.ranking.score_queries` columns plus ``task``,
    ``qid``, ``n_grains``, ``grain_types`` and ``ties``; ``ties`` ``None`` → 0), the input of
    :func:`~mrbench.report.results.aggregate_scores`."""
    from mrbench.metrics.ranking import score_queries

    df = score_queries(judged_ranks, judged, ks=ks, relevance_level=task.relevance_level,
                       query_ids=[q.id for q in task.queries])
    df = df.reset_index(names="qid")
    df.insert(0, "task", task.name)
    df["n_grains"] = [q.n_grains for q in task.queries]
    df["grain_types"] = [sorted(set(q.grain_types)) for q in task.queries]
    df["ties"] = np.asarray(ties if ties is not None else np.zeros(len(task.queries)), dtype=np.int64)
    return df


def resolve_encoder(encoder: Any, encoder_kwargs: dict[str, Any] | None = None) -> tuple[Any, str]:
    """``(encoder object, spec)`` from a registry name (built with ``encoder_kwargs``) or an object
    implementing the Encoder protocol (its spec is its metadata name); one-line
    :class:`~mrbench.errors.EncoderError` for anything else."""
    from mrbench.encoders.registry import get_encoder, protocol_problem
    from mrbench.errors import EncoderError

    if isinstance(encoder, str):
        return get_encoder(encoder, **(encoder_kwargs or {})), encoder
    problem = protocol_problem(encoder)  # the check a name or file spec's object gets (a dict meta: no raw AttributeError)
    if problem is not None:
        raise EncoderError(f"{type(encoder).__name__}: does not implement the Encoder protocol: {problem}; give it "
                           ".meta = EncoderMeta(name=..., ...) (mrbench.encoders.base) and .encode(items, *, role, task)")
    spec = encoder.meta.name
    if encoder_kwargs:  # the instance is already built: they would be recorded (and key the cache) unused
        raise EncoderError(
            f"encoder_kwargs {sorted(encoder_kwargs)} given with an encoder instance ({type(encoder).__name__}); "
            "encoder_kwargs apply to a name or file spec (e.g. 'random', 'my_encoder.py:MyEncoder'): pass the "
            "arguments to the instance's constructor instead, or drop encoder_kwargs")
    return encoder, spec


def _default_revision(meta: Any) -> bool:
    """Whether ``meta.revision`` is :class:`~mrbench.encoders.base.EncoderMeta`'s default (``"none"``):
    nothing then tells two instances of the same name apart, so an instance's embeddings are not cached."""
    import dataclasses

    from mrbench.encoders.base import EncoderMeta

    default = {f.name: f.default for f in dataclasses.fields(EncoderMeta)}["revision"]
    return getattr(meta, "revision", default) == default


def open_cache(spec: str, revision: str, encoder_kwargs: dict[str, Any] | None, cache_dir: str | Path | None):
    """The embedding cache of an encoder (``cache_dir`` or the default root; namespace from spec,
    revision and constructor kwargs — and, for a ``file.py:Class`` encoder, the file's content, see
    :func:`~mrbench.encoders.registry.source_digest`), shared by ``evaluate`` and ``mrbench encode``."""
    from mrbench.encoders.cache import EmbeddingCache, cache_namespace, default_cache_root
    from mrbench.encoders.registry import source_digest

    src = source_digest(spec)
    if src is not None:
        revision = f"{revision}+src.{src}"

    root = Path(cache_dir).expanduser() if cache_dir else default_cache_root()
    try:  # checked before anything is encoded: a write that fails later would lose the embeddings
        root.mkdir(parents=True, exist_ok=True)
        if not os.access(root, os.W_OK | os.X_OK):
            raise PermissionError(errno.EACCES, "not writable")
    except OSError as e:
        what = "a file is there" if root.exists() and not root.is_dir() else (e.strerror or str(e))
        raise MrbenchError(
            f"{root}: cannot hold the embedding cache ({what}); pass --cache-dir DIR (or set $MRBENCH_CACHE) "
            "to a writable directory"
        ) from None
    return EmbeddingCache(root, cache_namespace(spec, revision, encoder_kwargs or {}))


def evaluate(
    benchmark: str | Path | Benchmark = "mrbench-synth",
    encoder: Any = "random",
    *,
    encoder_kwargs: dict[str, Any] | None = None,
    tasks: Sequence[str] | str | None = None,
    ks: Sequence[int] | int | str = (1, 5, 10),
    depth: int = 100,
    output: str | Path | None = None,
    overwrite: bool = False,
    cache: bool = True,
    cache_dir: str | Path | None = None,
    batch_size: int | None = None,
    num_workers: int | None = None,
    decode: str = "auto",
    backend: str = "auto",
    grain_sensitivity: bool = True,
    verify: bool = True,
    progress: Any = False,
    approx: dict[str, Any] | None = None,
    stream_pool: bool = False,
) -> EvaluationResult:
    """Evaluate ``encoder`` on ``benchmark`` and return an :class:`EvaluationResult`.

    Args:
        benchmark: a built-in name (``mrbench benchmarks``), a benchmark directory, or a loaded
            :class:`Benchmark`.
        encoder: a registry name (``"random"``, ``"oracle"``, ``"pkg.mod:Class"``,
            ``"file.py:Class"``, ``"family:spec"``) or an object implementing the Encoder protocol.
        encoder_kwargs: keyword arguments for the encoder's constructor (recorded in the results).
        tasks: subset of task names (default: all): a list, one name or ``"t2i,i2t"``.
        ks: cutoffs for hit@k, recall@k, mrr@k, ndcg@k (list, one int or ``"1,5,10"``).
        depth: length of the ranked lists written to the run files (≥ max k).
        output: directory for results.json, runs/, per_query.parquet, sensitivity.parquet (with
            ``grain_sensitivity``) and grains.png; refused if it already holds files unless
            ``overwrite``. Written atomically.
        cache: reuse and fill the on-disk embedding cache (``cache_dir`` or ``$MRBENCH_CACHE``). An
            encoder *instance* (keyed by its ``meta.name`` and ``meta.revision``) is cached only when
            its revision is set: with the default ``"none"`` it is not (one warning line).
        num_workers: image decode workers (default: all cores up to 8).
        decode: ``"thread"``, ``"process"`` or ``"auto"`` (processes from 4 workers on, for encoders
            with a picklable ``pixel_transform``); see :func:`mrbench.encoders.harness.encode_items`.
        backend: exact-search backend: ``"auto"``, ``"torch"`` or ``"faiss"``.
        grain_sensitivity: also run the drop-one-grain diagnostic on text-bearing queries.
        verify: check the benchmark's fingerprint when loading it from disk.
        progress: ``True`` for rich progress bars, ``False`` for silence, or a Reporter.
        stream_pool: keep each task's candidate embeddings in a memory-mapped file (under
            ``$MRBENCH_HOME/tmp/pool-<host>-<pid>-*``, deleted afterwards; one left by a run that was
            killed is deleted by the next streamed run, see :class:`PoolDir`), encoded in slices of
            :data:`POOL_SLICE` candidates, and stream them through exact search
            (``exact_search(stream=True)``, torch backend). Without it, a pool whose float32
            embeddings would need more than half of the available memory
            (:func:`available_memory`: the system's, the cgroup's or ``RLIMIT_AS``'s, the
            smallest) is refused with a one-line error naming this option, for every task once
            the encoder is built (its ``meta.dim``), before anything is encoded. Results are
            identical either way.
        approx: approximate search for the run files and metrics, e.g. ``{"index": "ivf",
            "nlist": 1024, "nprobe": 16}`` or ``{"index": "hnsw", "M": 32, "ef_search": 128}``
            (keys, ranges and conventions: :mod:`mrbench.retrieval.approx`). Judged candidates
            outside an approximate top list count as not retrieved within ``depth``. Exact search
            still runs (``backend``) to measure the index's recall against it, written to
            ``settings["approx"]`` and ``scores["approx_recall"][task]`` (``recall@k`` for every k
            and for ``depth``); grain sensitivity stays exact. ``None`` (default): exact search only.
    """
    from mrbench.data.registry import load_benchmark
    from mrbench.encoders.harness import EncodeStats, HashWarmer, _gpu_decode_device, check_dims, start_encode
    from mrbench.encoders.hash_store import load_file_hashes, save_file_hashes
    from mrbench.grains.masking import drop_one_variants
    from mrbench.retrieval.search import exact_search

    if progress is True:
        from mrbench.report.progress import RichReporter

        reporter = RichReporter()
    elif progress in (False, None):
        reporter = NullReporter()
    else:
        reporter = progress

    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    ks_t = _parse_ks(ks)
    tasks = _parse_tasks(tasks)  # (a string was iterated character by character)
    from mrbench.encoders.harness import check_worker_kind, check_workers

    check_worker_kind(decode)
    check_workers(num_workers)
    from mrbench.retrieval.search import check_backend  # (search's torch import stays lazy)

    check_backend(backend)
    if tasks is not None:
        twice = sorted({n for n in tasks if list(tasks).count(n) > 1})
        if twice:
            raise MrbenchError(f"tasks: {', '.join(map(repr, twice))} given twice; give each task once")
    if depth < max(ks_t):
        raise MrbenchError(f"--depth {depth} is smaller than the largest k ({max(ks_t)}); raise --depth")
    approx_spec = None
    if approx is not None:
        from mrbench.retrieval.approx import check_approx_spec, with_device_fallback

        approx_spec = check_approx_spec(approx)  # fail on bad parameters before encoding anything (and on
        # values a task's pool size rules out once the benchmark is loaded: _check_approx_pools)
        approx_spec = {**with_device_fallback(approx_spec), "device_requested": approx_spec["device"]}
    if stream_pool:
        if approx is not None:
            raise MrbenchError("--stream-pool and --approx cannot be combined yet: approximate indexes need the pool in memory")
        if backend == "faiss":
            raise MrbenchError("--stream-pool needs --backend torch or auto (the faiss backend holds the whole pool in memory)")
        backend = "torch"
    approx_recall: dict[str, dict[str, Any]] = {}
    approx_used: dict[str, dict[str, Any]] = {}
    out_path = Path(output) if output is not None else None
    _check_output(out_path, overwrite)
    from mrbench.encoders.pixel_cache import check_pixel_cache_env

    check_pixel_cache_env()  # (else only checked by the first call that needs pixels)
    if out_path is not None and cache:
        from mrbench.encoders.cache import default_cache_root

        root = Path(cache_dir).expanduser() if cache_dir else default_cache_root()
        if Path(os.path.realpath(root)).is_relative_to(output_target(out_path)):
            raise MrbenchError(f"the embedding cache {root} lies inside --output {out_path}, which the results replace; "
                               "keep the cache elsewhere (--cache-dir, $MRBENCH_CACHE)")

    # the collector leaves the objects alive now (the caller's), and those alive after loading and after
    # building the encoder (torch's, the benchmark), alone until evaluate returns: see gc_frozen
    with gc_frozen() as refreeze:
        t0 = time.perf_counter()
        bench = benchmark if isinstance(benchmark, Benchmark) else load_benchmark(
            benchmark, verify=verify, progress=reporter.builder_callback(), log=reporter.log, tasks=tasks or None
        )  # with tasks, only theirs are read
        task_list = [bench.task(n) for n in tasks] if tasks else list(bench.tasks)
        if approx_spec is not None:  # the pool-size bounds of every task, before the encoder is built
            _check_approx_pools(approx_spec, task_list)
        timings["load"] = time.perf_counter() - t0
        refreeze()

        t0 = time.perf_counter()
        load_file_hashes(bench.root)  # the image digests of earlier runs (see mrbench.encoders.hash_store)
        # image content hashes (cache keys) are computed while the encoder is built (see HashWarmer)
        warmer = HashWarmer(bench.image_path(it.image) for t in task_list
                            for it in itertools.chain(t.queries, t.candidates) if it.image)
        try:
            enc, spec = resolve_encoder(encoder, encoder_kwargs)
            meta = enc.meta
            if not stream_pool and meta.dim:  # every task's pool against memory, before anything is encoded
                for task in task_list:
                    _check_pool_fits(task, int(meta.dim))
            uncached = bool(cache) and not isinstance(encoder, str) and _default_revision(meta)
            if uncached:  # keyed by its name alone, another instance's embeddings would be served
                _log.warning("encoder instance %r has the default meta.revision %r, so its embeddings are not cached "
                             "(another instance of the same name could differ); set meta.revision to something that "
                             "changes whenever its weights or code change (e.g. a checkpoint hash) to cache them",
                             spec, meta.revision)
            store = open_cache(spec, meta.revision, encoder_kwargs, cache_dir) if cache and not uncached else None
        finally:
            warmer.stop()
        timings["encoder_init"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        _import_stage_modules(backend, approx_spec is not None, task_list)
        timings["imports"] = time.perf_counter() - t0  # (were counted in the first task's retrieve and score)
        refreeze()
        stats = EncodeStats()
        frames = []
        runs: dict[str, tuple[Task, Any]] = {}
        sens_frames = []
        timings.update(encode=0.0, retrieve=0.0, score=0.0, sensitivity=0.0)
        device = "cpu"
        pool_tmp = None
        if stream_pool:
            from mrbench.data.registry import mrbench_home

            tmp_root = mrbench_home() / "tmp"
            tmp_root.mkdir(parents=True, exist_ok=True)
            gone = remove_stale_pools(tmp_root)  # left by runs killed (SIGKILL, OOM) before they could clean up
            if gone:
                reporter.log(f"removed {len(gone)} memory-mapped pool director{'y' if len(gone) == 1 else 'ies'} "
                             f"left in {tmp_root} by runs that ended without cleaning up")
            pool_tmp = PoolDir(tmp_root)
        # removed at the end, on an exception (below) or, failing that, by the next streamed run
        pool_dir = pool_tmp.path if pool_tmp is not None else None
        # for an encoder on a GPU (see ENCODE_AHEAD), each encode call is started (hashes, cache lookups,
        # its first batches prepared) once the call before it has prepared its last batch: a task's
        # candidates after its queries, its reduced queries (grain sensitivity) after them, the next task's
        # queries after those (see start_encode); a streamed pool is encoded slice by slice instead
        call_kw = dict(cache=store, batch_size=batch_size, num_workers=num_workers, workers=decode)
        ahead: dict[tuple[str, str], Any] = {}
        last: list[Any] = []  # the call started last: the next one waits for its inputs (start_encode's after)
        overlap = ENCODE_AHEAD if ENCODE_AHEAD is not None else _gpu_decode_device(enc) is not None

        def start(task: Task, what: str, now: bool = False, items: Sequence[Any] | None = None) -> None:
            """Start the call ``what`` ("query", "candidate" or "sensitivity": the reduced queries)."""
            if overlap or now:
                if items is None:
                    items = task.queries if what == "query" else task.candidates
                role = "candidate" if what == "candidate" else "query"
                after = last[0] if last and overlap else None
                ahead[(task.name, what)] = start_encode(enc, items, role=role, task=task, bench=bench, after=after,
                                                        **call_kw)
                last[:] = [ahead[(task.name, what)]]

        try:
            for ti, task in enumerate(task_list):
                refreeze()  # what earlier tasks left (their tables, pandas once imported) is long-lived too
                t0 = time.perf_counter()
                if (task.name, "query") not in ahead:
                    start(task, "query", now=True)
                if not stream_pool and meta.dim and _pool_fits(task, int(meta.dim)):
                    start(task, "candidate")
                t_j = time.perf_counter()
                judged = judged_grades(task)
                timings["retrieve"] += time.perf_counter() - t_j
                variants = None
                if grain_sensitivity and task.query_modality != "image":
                    t_s = time.perf_counter()
                    variants = drop_one_variants(task, judged)  # (reduced queries, their owners)
                    if variants[0] and not stream_pool:
                        start(task, "sensitivity", items=variants[0])
                    timings["sensitivity"] += time.perf_counter() - t_s
                with reporter.stage(f"{task.name}: encode queries", len(task.queries)) as adv:
                    q_emb = ahead.pop((task.name, "query")).result(progress=adv, stats=stats)
                if ti + 1 < len(task_list):
                    start(task_list[ti + 1], "query")
                with reporter.stage(f"{task.name}: encode candidates", len(task.candidates)) as adv:
                    c_call = ahead.pop((task.name, "candidate"), None)
                    if c_call is not None and _pool_fits(task, int(q_emb.shape[1])):
                        c_emb = c_call.result(progress=adv, stats=stats)
                    else:
                        if c_call is not None:
                            c_call.close()
                        c_emb = _encode_pool(enc, task, bench, int(q_emb.shape[1]), stream_pool, pool_dir,
                                             dict(call_kw, progress=adv, stats=stats))
                check_dims(q_emb, c_emb, meta.name, task.name)
                timings["encode"] += time.perf_counter() - t0

                with gc_paused():  # our own bounded, acyclic allocations (see gc_paused)
                    t0 = time.perf_counter()
                    with reporter.stage(f"{task.name}: retrieve", len(task.queries)) as adv:
                        res = exact_search(q_emb, c_emb, judged, depth=depth, relevance_level=task.relevance_level,
                                           backend=backend, progress=adv, stream=True if stream_pool else None)
                    device = res.device
                    run_res = res
                    if approx_spec is not None:
                        run_res = _approx_task(task, q_emb, c_emb, judged, depth, ks_t, approx_spec, res, reporter,
                                               approx_recall, approx_used)
                    runs[task.name] = (task, run_res)
                    timings["retrieve"] += time.perf_counter() - t0

                    t0 = time.perf_counter()
                    frames.append(task_frame(task, run_res.judged_ranks, judged, ks_t, run_res.n_ties))
                    timings["score"] += time.perf_counter() - t0

                if variants is not None:
                    t0 = time.perf_counter()
                    sf = _grain_sensitivity(enc, task, bench, q_emb, c_emb, judged, res, store, stats, batch_size,
                                            num_workers, backend, reporter, decode, stream=True if stream_pool else None,
                                            variants=variants, pending=ahead.pop((task.name, "sensitivity"), None))
                    if sf is not None:
                        sens_frames.append(sf)
                    timings["sensitivity"] += time.perf_counter() - t0

        finally:
            for call in ahead.values():  # started but not reached: an earlier step failed
                call.close()
            if pool_tmp is not None:
                pool_tmp.cleanup()

        save_file_hashes(bench.root)  # (only when this process hashed files)

        t_agg = time.perf_counter()
        import pandas as pd

        with gc_paused():
            per_query = pd.concat(frames, ignore_index=True)
            sensitivity = pd.concat(sens_frames, ignore_index=True) if sens_frames else None
            timings["encoder_forward"] = stats.encode_seconds
            timings["input_wait"] = stats.input_wait_seconds  # the model waiting for its next batch's inputs
            # where preparing the inputs went (summed over batches, in the background) and the calls' starts
            timings["input_read"] = stats.read_wait_seconds
            timings["input_stage"] = stats.stage_seconds
            timings["input_tokenize"] = stats.tokenize_seconds
            timings["encode_startup"] = stats.startup_seconds
            timings["total"] = time.perf_counter() - t_start
            result = EvaluationResult.build(
                bench=bench,
                tasks=[t.name for t in task_list],
                encoder_meta=meta,
                encoder_spec=spec,
                encoder_kwargs=encoder_kwargs or {},
                settings={
                    "ks": list(ks_t),
                    "depth": depth,
                    "backend": backend,
                    "device": device,
                    "tie_policy": "pessimistic",
                    "batch_size": batch_size or meta.batch_size,
                    "decode_workers": num_workers,
                    "decode": decode,
                    "cache": store is not None,
                    "grain_sensitivity": bool(grain_sensitivity),
                    "verify_fingerprint": bool(verify),
                    **({"stream_pool": True} if stream_pool else {}),
                    **({"approx": {**approx_spec, "tasks": approx_used}} if approx_spec is not None else {}),
                },
                hardware=_hardware(device),
                timings=timings,
                cache_stats={"items": stats.items, "hits": stats.cache_hits, "encoded": stats.encoded,
                             **{k: getattr(stats, k) for k in ("pixel_cache_hits", "pixel_cache_misses", "gpu_decoded")
                                if getattr(stats, k, 0)}},
                per_query=per_query,
                sensitivity=sensitivity,
                runs=runs,
            )
            if approx_spec is not None:
                from mrbench.report.results import _clean

                result.data["scores"]["approx_recall"] = _clean(approx_recall)
        # per-query tables joined, hardware recorded, scores aggregated (written to results.json; "total"
        # above stops before it, as it always has)
        result.timings["aggregate"] = time.perf_counter() - t_agg
        if out_path is not None:
            t0 = time.perf_counter()
            try:
                result.save(out_path, overwrite=overwrite)
            except OSError as e:  # (the error names the staging directory beside it, not the --output asked for)
                raise MrbenchError(f"--output {out_path}: cannot write the results ({e.strerror or type(e).__name__}); "
                                   "choose another --output") from e
            # after results.json is written: the writing itself, and the chart drawn during it
            result.timings["report"] = time.perf_counter() - t0
            result.timings.update(result.save_timings)
        return result


ENCODE_AHEAD: bool | None = None
"""Start each encode call while the one before it runs (see :func:`evaluate`): ``None`` (default)
for encoders on a CUDA device, ``True`` always, ``False`` never (one call after the other).

On the CPU the model's own threads use every core: started ahead, a call's set-up only competes with
them and with the retrieval that runs meanwhile (MRBench-Synth, 2 cores: the tiny torch encoder's
wall unchanged; a simulated GPU encoder with CPU retrieval 2.58 vs 2.46 s,
``benchmarks/bench_feed.py --evaluate``), so CPU encoders keep one call after the other."""

POOL_SLICE = 65_536
"""Candidates encoded per slice when ``stream_pool`` writes a task's pool to a memory-mapped file."""


def _pool_fits(task: Task, dim: int) -> bool:
    """Whether a task's float32 candidate embeddings of ``dim`` dims fit in half of the available
    memory (``True`` when that is unknown)."""
    avail = available_memory()
    return avail is None or len(task.candidates) * max(1, dim) * 4 <= avail // 2


def _size(nbytes: int) -> str:
    """``nbytes`` for a message: GiB from 1 GiB on, else MiB (one decimal)."""
    return f"{nbytes / 2**30:.1f} GiB" if nbytes >= 2**30 else f"{nbytes / 2**20:.1f} MiB"


def _check_pool_fits(task: Task, dim: int) -> None:
    """Refuse, naming ``--stream-pool``, an in-memory pool that would need more than half of the
    available memory."""
    if not _pool_fits(task, dim):
        n = len(task.candidates)
        avail = available_memory() or 0
        raise MrbenchError(
            f"task {task.name}: {n:,} candidates x {dim} dims need {_size(n * max(1, dim) * 4)} of float32 "
            f"embeddings, more than half of the {_size(avail)} of memory available to this process; pass "
            "--stream-pool (evaluate(stream_pool=True)) to keep them in a memory-mapped file and stream them through "
            "the search")


def _encode_pool(enc, task: Task, bench: Benchmark, dim: int, stream_pool: bool, pool_dir: Path | None,
                 kw: dict[str, Any]) -> np.ndarray:
    """A task's candidate embeddings: in memory, or (``stream_pool``) in a memory-mapped ``.npy``
    file under ``pool_dir`` encoded slice by slice. Refuses, naming ``--stream-pool``, an in-memory
    pool that would need more than half of the available memory."""
    from mrbench.encoders.harness import encode_items

    n = len(task.candidates)
    if not stream_pool:
        _check_pool_fits(task, dim)  # (evaluate checks every task once the encoder's meta.dim is known; this
        # catches an encoder without one, or whose embeddings turned out wider)
        return encode_items(enc, task.candidates, role="candidate", task=task, bench=bench, **kw)
    from numpy.lib.format import open_memmap

    assert pool_dir is not None
    path = pool_dir / f"{task.name}-candidates.npy"
    mm = None
    for s in range(0, max(n, 1), POOL_SLICE):
        part = encode_items(enc, task.candidates[s : s + POOL_SLICE], role="candidate", task=task, bench=bench, **kw)
        if mm is None:
            mm = open_memmap(path, mode="w+", dtype=np.float32, shape=(n, int(part.shape[1])))
        mm[s : s + len(part)] = part
        del part
    assert mm is not None
    mm.flush()
    del mm
    return np.load(path, mmap_mode="r")


def _check_approx_pools(spec: dict[str, Any], task_list: Sequence[Task]) -> None:
    """Check ``spec``'s parameters against every task's pool size (as the search will), so that a
    value one task's pool cannot take fails before anything is encoded: one line naming the task,
    its pool size and the parameter."""
    from mrbench.retrieval.approx import ApproxError, resolve_params

    for task in task_list:
        n = len(task.candidates)
        if n == 0:  # (an empty pool is refused by the search itself)
            continue
        try:
            resolve_params(spec["index"], spec["params"], n)
        except ApproxError as e:
            raise ApproxError(f"task {task.name} ({n} candidates): {e}") from None


def _approx_task(task, q_emb, c_emb, judged, depth, ks, spec, exact, reporter, recall_out, used_out):
    """Approximate retrieval of one task (:func:`mrbench.retrieval.approx.approx_search`); records its
    recall against the exact result ``exact`` at every k and at ``depth`` in ``recall_out[task]`` and
    the parameters it used in ``used_out[task]``; returns the approximate result."""
    from mrbench.retrieval.approx import ApproxError, approx_search, recall_against_exact

    with reporter.stage(f"{task.name}: approximate retrieval ({spec['index']})", len(task.queries)) as adv:
        try:
            ares = approx_search(q_emb, c_emb, judged=judged, depth=depth, index=spec["index"], params=spec["params"],
                                 device=spec["device"], seed=spec["seed"], relevance_level=task.relevance_level)
        except ApproxError as e:
            raise ApproxError(f"task {task.name} ({len(task.candidates)} candidates): {e}") from None
        adv(len(task.queries))
    width = ares.depth
    recall_out[task.name] = {
        f"recall@{k}": recall_against_exact(ares, exact, min(k, width)) if len(task.queries) else None
        for k in sorted({*ks, depth})
    }
    used_out[task.name] = {**ares.params, "device": ares.device, "build_s": ares.build_seconds,
                           "search_s": ares.search_seconds, "n_refilled": ares.n_refilled}
    return ares


def _grain_sensitivity(enc, task, bench, q_emb, c_emb, judged, res, store, stats, batch_size, num_workers,
                       backend, reporter, decode="auto", stream=None, variants=None, pending=None):
    """Drop one grain at a time from every text-bearing query, re-encode and re-rank.

    ``variants``: :func:`~mrbench.grains.masking.drop_one_variants` of the task, when already made;
    ``pending``: the reduced queries' encode call, when already started (``evaluate``).

    Returns one row per (query, dropped grain) with ``mask_distance`` = 1 − cos(full, reduced)
    (computed on L2-normalised embeddings whatever the encoder's similarity) and ``rank_change`` =
    first relevant rank under the reduced query − under the full query, the relevant set being the
    full query's (positive: the target fell). Queries with no relevant candidate are skipped.
    """

    from mrbench.encoders.harness import encode_items
    from mrbench.grains.masking import drop_one_variants

    reduced, owners = variants if variants is not None else drop_one_variants(task, judged)
    if not reduced:
        return None
    with reporter.stage(f"{task.name}: grain sensitivity", len(reduced)) as adv:
        if pending is not None:
            r_emb = pending.result(progress=adv, stats=stats)
        else:
            r_emb = encode_items(enc, reduced, role="query", task=task, bench=bench, cache=store, batch_size=batch_size,
                                 num_workers=num_workers, workers=decode, progress=adv, stats=stats)
    with gc_paused():
        return _sensitivity_frame(task, q_emb, c_emb, r_emb, judged, res, owners, backend, stream)


def _sensitivity_frame(task, q_emb, c_emb, r_emb, judged, res, owners, backend, stream):
    """The rows of :func:`_grain_sensitivity` once the reduced queries are encoded."""
    import pandas as pd

    from mrbench.retrieval.search import exact_search

    qi_arr = np.array([o[0] for o in owners])

    def unit(x: np.ndarray) -> np.ndarray:
        n = np.linalg.norm(x, axis=1, keepdims=True)
        return x / np.where(n == 0, 1, n)

    cos = np.sum(unit(q_emb[qi_arr]) * unit(r_emb), axis=1)
    level = task.relevance_level
    judged = judged if isinstance(judged, CsrMappings) else CsrMappings.from_mappings(judged, dtype=np.int64)
    # only the first relevant rank matters here; partial grades rank like non-relevant ones in ties
    r_judged = _best_scoring(r_emb, c_emb, judged.select(judged.values >= level).take(qi_arr))
    r_res = exact_search(r_emb, c_emb, r_judged, depth=1, relevance_level=level, backend=backend, stream=stream)
    full_rank = _first_relevant_ranks(res.judged_ranks, judged, level, np.unique(qi_arr))
    full_rank = full_rank[np.searchsorted(np.unique(qi_arr), qi_arr)]
    red_rank = _first_relevant_ranks(r_res.judged_ranks, r_judged, level, np.arange(len(owners)))
    return pd.DataFrame(
        {
            "task": task.name,
            "qid": [task.queries[o[0]].id for o in owners],
            "grain_index": [o[1] for o in owners],
            "grain_type": [o[2] for o in owners],
            "grain_text": [o[3] for o in owners],
            "mask_distance": (1.0 - cos).astype(np.float64),
            "rank_full": full_rank,
            "rank_reduced": red_rank,
            "rank_change": red_rank - full_rank,
        }
    )


def _first_relevant_ranks(ranks: CsrMappings, grades: CsrMappings, level: int, queries: np.ndarray) -> np.ndarray:
    """int64 ``[len(queries)]``: the best rank among each of ``queries``' candidates with
    ``grade >= level`` (each must have one), from ``exact_search``'s ranks for these ``grades``."""
    queries = np.asarray(queries, dtype=np.int64)
    if not ranks.same_layout(grades):  # grades not in exact_search's layout (keys unsorted, zeros)
        out = []
        for i in queries.tolist():
            g = grades[i]
            out.append(min(r for d, r in ranks[i].items() if g.get(d, 0) >= level))
        return np.array(out, dtype=np.int64)
    big = np.iinfo(np.int64).max
    best = ranks.reduce(np.minimum, np.where(grades.values >= level, ranks.values, big), empty=big, dtype=np.int64)
    out = best[queries]
    if (out == big).any():
        raise ValueError("a query without a relevant candidate has no first relevant rank")
    return out


def _best_scoring(queries: np.ndarray, candidates: np.ndarray, judged: Sequence[dict[int, int]]) -> CsrMappings:
    """Per query, only the judged candidates with its highest canonical score (ties all kept), in
    ``exact_search``'s layout (rows ascending within a query).

    The first rank among ``judged`` is that of one of these (a lower-scoring candidate ranks below
    them whatever its grade, and the tied ones keep their grades, which order them), so
    :func:`~mrbench.retrieval.search.exact_search` returns the same first rank from them while
    placing a few candidates per query instead of every relevant one.
    """
    import torch

    from mrbench.retrieval.search import _flatten_judged, canonical_scores

    ptr, ci, grades = _flatten_judged(judged, len(judged), len(candidates))  # grade-0 entries dropped, as search does
    flat = CsrMappings(ptr, ci, grades)
    qi = flat.query_of()
    if qi.size == 0:
        return flat
    # only the judged rows of the pool are read (a memory-mapped pool, --stream-pool, stays on disk)
    rows, local = np.unique(ci, return_inverse=True)
    scores = canonical_scores(torch.from_numpy(np.ascontiguousarray(queries, dtype=np.float32)),
                              torch.from_numpy(np.ascontiguousarray(candidates[rows], dtype=np.float32)), qi,
                              local.reshape(-1))
    best = flat.reduce(np.maximum, scores, empty=-np.inf)
    return flat.select(scores == best[qi])
