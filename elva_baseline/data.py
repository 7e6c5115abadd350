"""Training data of the ELVA reference trainer: a benchmark's *train* split as in-memory model inputs.

:meth:`TrainData.from_benchmark` reads every task of a train split (``mrbench-synth-train``,
``mrbench-synth-tiny-train`` or a directory whose manifest says ``split: train``), tokenises every text
and decodes every image **once** into ``uint8 [3, H, W]`` tensors kept in memory (MRBench-Synth's
train split at 64 px: 1,000 queries, 5,450 candidates, 58.5 MiB, decoded in about 4 s on 2 cores). Then:

* :meth:`TrainData.batches` — an epoch of InfoNCE batches (one task per batch, so in-batch negatives
  share the task's candidate modality): query inputs, one positive candidate per query and the mask of
  in-batch false negatives;
* :meth:`TrainData.pool` — a task's whole candidate pool, for scoring all candidates (hard-negative
  mining); :meth:`TaskData.grade_matrix` says which of them are relevant, so mining filters only what
  is relevant (the study note: a similarity-threshold filter drops true hard negatives);
* :meth:`TrainData.holdout` — a deterministic split of validation queries (same pools).

Relevance conventions (qrels are graded): a candidate is *relevant* to a query when its grade is
``> 0`` (any entry of the qrels, partial matches included); the query's *positives* are its relevant
candidates with the query's maximum grade (MRBench-Synth: the full matches, grade 100). Queries
without a relevant candidate are dropped (counted in :attr:`TrainData.skipped`).
"""

from __future__ import annotations

import hashlib
import os
import random
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from elva_baseline.model import DEFAULT_TINY_CONFIG, Items
from mrbench.errors import BenchmarkError

if TYPE_CHECKING:
    from elva_baseline.model import DualTowerModel
    from mrbench.data.schema import Benchmark, Task

DEFAULT_IMAGE_SIZE = int(DEFAULT_TINY_CONFIG["vision_cfg"]["image_size"])
DEFAULT_CONTEXT_LENGTH = int(DEFAULT_TINY_CONFIG["text_cfg"]["context_length"])


class NotTrainSplitError(BenchmarkError, ValueError):
    """The benchmark given to the trainer is not a train split (a ``ValueError`` and an mrbench error)."""


@dataclass
class TaskData:
    """One task's queries and candidate pool as model inputs, with their relevance.

    ``relevant[i]`` / ``grades[i]``: the candidate indices (into ``candidates``) with grade > 0 for query
    ``i`` and their grades (sorted by index); ``positives[i]``: those with query ``i``'s maximum grade.
    ``query_ids``: the original query ids (``queries.ids``).
    """

    name: str
    query_modality: str
    candidate_modality: str
    queries: Items
    candidates: Items
    relevant: list[torch.Tensor]
    grades: list[torch.Tensor]
    positives: list[torch.Tensor]
    relevance_level: int = 1

    def __len__(self) -> int:
        return len(self.queries)

    @property
    def query_ids(self) -> list[str]:
        return self.queries.ids

    def grade_matrix(self) -> torch.Tensor:
        """``int32 [Q, C]``: the grade of every query–candidate pair (0 when absent from the qrels)."""
        g = torch.zeros((len(self.queries), len(self.candidates)), dtype=torch.int32)
        for i, (idx, gr) in enumerate(zip(self.relevant, self.grades)):
            g[i, idx] = gr.to(torch.int32)
        return g

    def positive_mask(self) -> torch.Tensor:
        """``bool [Q, C]``: the positives of every query."""
        m = torch.zeros((len(self.queries), len(self.candidates)), dtype=torch.bool)
        for i, idx in enumerate(self.positives):
            m[i, idx] = True
        return m

    def subset(self, index: Sequence[int]) -> TaskData:
        """The queries ``index`` (in that order) with the same candidate pool (not copied)."""
        idx = list(index)
        return replace(
            self,
            queries=self.queries.select(idx),
            relevant=[self.relevant[i] for i in idx],
            grades=[self.grades[i] for i in idx],
            positives=[self.positives[i] for i in idx],
        )

    @property
    def nbytes(self) -> int:
        return self.queries.nbytes + self.candidates.nbytes


@dataclass
class Batch:
    """One InfoNCE batch from one task.

    ``queries``: the query inputs ``[B]``; ``positives``: one positive candidate per query ``[B]``
    (drawn uniformly among the query's positives); ``false_negatives``: ``bool [B, B]``, True at
    ``[i, j]`` (``i != j``) when the candidate drawn for query ``j`` is also a positive of query ``i``
    (or the same candidate) — exclude those logits from query ``i``'s denominator (``.T`` for the
    candidate→query direction). The diagonal is False. ``query_index`` / ``positive_index`` index the
    task's queries and pool (:meth:`TrainData.pool`).

    Iterating unpacks ``(queries, positives, false_negatives)``.
    """

    task: str
    queries: Items
    positives: Items
    false_negatives: torch.Tensor
    query_index: torch.Tensor
    positive_index: torch.Tensor

    def __iter__(self) -> Iterator[Any]:
        return iter((self.queries, self.positives, self.false_negatives))

    def __len__(self) -> int:
        return len(self.queries)


def _default_tokenizer(context_length: int) -> Callable[[list[str]], torch.Tensor]:
    from open_clip.tokenizer import SimpleTokenizer

    tok = SimpleTokenizer(context_length=context_length)
    return lambda texts: tok(list(texts)).long()


def _default_transform(image_size: int) -> Callable[[Any], Any]:
    """The PIL stage of open_clip's default eval transform (bicubic resize of the shortest side, centre
    crop) -> ``uint8 [3, S, S]`` numpy; identical to :meth:`DualTowerModel.preprocess` of the tiny config."""
    from torchvision.transforms import CenterCrop, Compose, InterpolationMode, Resize

    from mrbench.encoders.openclip import PilToUint8

    return PilToUint8(Compose([Resize(image_size, interpolation=InterpolationMode.BICUBIC), CenterCrop(image_size)]))


def _check_train(bench: Benchmark) -> None:
    if bench.split != "train":
        where = f" ({bench.root})" if bench.root is not None else ""
        raise NotTrainSplitError(
            f"benchmark {bench.name!r}{where} is a {bench.split!r} split, not a train split; train on a train split, "
            "e.g. 'mrbench-synth-train' (or 'mrbench-synth-tiny-train' for a smoke run)"
        )


def holdout_split(query_ids: Sequence[str], fraction: float, seed: int, task: str) -> tuple[list[int], list[int]]:
    """``(train, validation)`` row indices: ``round(fraction * n)`` queries (at least 1 when
    ``fraction > 0``, never all) in sha256 order of ``(seed, task, query id)``; both lists sorted."""
    n = len(query_ids)
    n_val = min(max(round(fraction * n), 1 if fraction > 0 else 0), max(n - 1, 0))
    key = [hashlib.sha256(f"{seed}\x00{task}\x00{qid}".encode()).hexdigest() for qid in query_ids]
    val = sorted(sorted(range(n), key=lambda i: key[i])[:n_val])
    chosen = set(val)
    return [i for i in range(n) if i not in chosen], val


class TrainData:
    """Every task of a train split, decoded once. Build with :meth:`from_benchmark`.

    Attributes: ``tasks`` (name -> :class:`TaskData`, in benchmark order), ``benchmark`` (name),
    ``fingerprint``, ``image_size``, ``context_length``, ``skipped`` (task -> queries without any
    relevant candidate, left out).
    """

    def __init__(
        self,
        tasks: Sequence[TaskData],
        *,
        benchmark: str,
        fingerprint: str | None = None,
        image_size: tuple[int, int] = (DEFAULT_IMAGE_SIZE, DEFAULT_IMAGE_SIZE),
        context_length: int = DEFAULT_CONTEXT_LENGTH,
        skipped: dict[str, int] | None = None,
    ) -> None:
        self.tasks: dict[str, TaskData] = {t.name: t for t in tasks}
        self.benchmark = benchmark
        self.fingerprint = fingerprint
        self.image_size = image_size
        self.context_length = context_length
        self.skipped = dict(skipped or {})

    # -- construction -----------------------------------------------------------------------------
    @classmethod
    def from_benchmark(
        cls,
        bench: Benchmark | str | os.PathLike[str],
        tasks: Sequence[str] | None = None,
        *,
        image_size: int | None = None,
        max_items: int | None = None,
        model: DualTowerModel | None = None,
        tokenizer: Callable[[list[str]], torch.Tensor] | None = None,
        transform: Callable[[Any], Any] | None = None,
        num_workers: int | None = None,
    ) -> TrainData:
        """Decode the train split ``bench`` (a loaded benchmark, a built-in name or a directory).

        Args:
            tasks: task names (default: all).
            image_size: square size the images are decoded to (default: the model's, else 64).
            max_items: keep at most this many queries per task (the first ones, in task order; the
                candidate pools stay whole) — for smoke runs.
            model: take the tokenizer and the image transform from this :class:`DualTowerModel`
                (recommended: the inputs then match the model exactly).
            tokenizer, transform: explicit ``texts -> int64 [N, L]`` and ``PIL -> uint8 [3, H, W]``
                (default: open_clip's BPE tokenizer at context 32; bicubic shortest-side resize +
                centre crop to ``image_size``).
            num_workers: image decode threads (default: all cores, at most 8).

        Raises:
            NotTrainSplitError (a ``ValueError``): the benchmark is not a train split.
        """
        from mrbench.data.registry import load_benchmark
        from mrbench.encoders.harness import load_rgb

        if not hasattr(bench, "tasks"):
            bench = load_benchmark(bench)  # type: ignore[arg-type]
        _check_train(bench)  # type: ignore[arg-type]
        if max_items is not None and (isinstance(max_items, bool) or not isinstance(max_items, int) or max_items < 1):
            raise ValueError(f"max_items must be a positive integer or None, got {max_items!r}")
        if model is not None:
            if image_size is not None and (image_size, image_size) != tuple(model.image_size):
                raise ValueError(
                    f"image_size={image_size} but the model takes {model.image_size[0]}x{model.image_size[1]} images; "
                    "drop image_size when passing model"
                )
            tokenizer = tokenizer or model.tokenize
            transform = transform or model.pixel_transform
            size = tuple(model.image_size)
            ctx = model.context_length
        else:
            s = int(image_size or DEFAULT_IMAGE_SIZE)
            size = (s, s)
            ctx = DEFAULT_CONTEXT_LENGTH
            tokenizer = tokenizer or _default_tokenizer(ctx)
            transform = transform or _default_transform(s)

        selected: list[Task] = list(bench.tasks) if tasks is None else [bench.task(n) for n in tasks]  # type: ignore[union-attr]
        workers = num_workers or max(1, min(8, os.cpu_count() or 1))
        decoded: dict[Path, torch.Tensor] = {}

        def decode(job: tuple[Path, str]) -> tuple[Path, torch.Tensor]:
            path, item_id = job
            arr = transform(load_rgb(path, item_id))
            t = torch.as_tensor(arr)
            if t.dtype != torch.uint8 or t.ndim != 3 or tuple(t.shape[1:]) != tuple(size):
                raise ValueError(
                    f"the image transform returned {t.dtype} {tuple(t.shape)} for {path}; expected uint8 [3, {size[0]}, {size[1]}]"
                )
            return path, t

        # collect every image once (shared files are decoded once), then decode in threads
        jobs: dict[Path, str] = {}
        plan: list[tuple[Task, list[Any]]] = []
        for task in selected:
            queries = task.queries[:max_items] if max_items is not None else task.queries
            plan.append((task, queries))
            for it in list(queries) + list(task.candidates):
                if it.image:
                    jobs.setdefault(bench.image_path(it.image), it.id)  # type: ignore[union-attr]
        if jobs:
            with ThreadPoolExecutor(max_workers=workers) as ex:
                for path, t in ex.map(decode, list(jobs.items())):
                    decoded[path] = t

        def items(rows: Sequence[Any]) -> Items:
            n = len(rows)
            has_image = torch.tensor([bool(r.image) for r in rows], dtype=torch.bool)
            has_text = torch.tensor([r.text is not None or not r.image for r in rows], dtype=torch.bool)
            tokens = tokenizer([r.text or "" for r in rows]).long() if n and bool(has_text.any()) else None
            pixels = None
            if bool(has_image.any()):
                pixels = torch.zeros((n, 3, *size), dtype=torch.uint8)
                for i, r in enumerate(rows):
                    if r.image:
                        pixels[i] = decoded[bench.image_path(r.image)]  # type: ignore[union-attr]
            return Items(ids=[r.id for r in rows], tokens=tokens, pixels=pixels, has_text=has_text, has_image=has_image)

        out: list[TaskData] = []
        skipped: dict[str, int] = {}
        for task, queries in plan:
            cidx = task.candidate_index()
            keep, rel, grd, pos = [], [], [], []
            for q in queries:
                pairs = sorted((cidx[d], int(g)) for d, g in task.qrels.get(q.id, {}).items() if g > 0 and d in cidx)
                if not pairs:
                    continue
                idx = torch.tensor([p[0] for p in pairs], dtype=torch.long)
                g = torch.tensor([p[1] for p in pairs], dtype=torch.int32)
                keep.append(q)
                rel.append(idx)
                grd.append(g)
                pos.append(idx[g == g.max()])
            skipped[task.name] = len(queries) - len(keep)
            out.append(
                TaskData(
                    name=task.name,
                    query_modality=task.query_modality,
                    candidate_modality=task.candidate_modality,
                    queries=items(keep),
                    candidates=items(task.candidates),
                    relevant=rel,
                    grades=grd,
                    positives=pos,
                    relevance_level=task.relevance_level,
                )
            )
        return cls(
            out,
            benchmark=bench.name,  # type: ignore[union-attr]
            fingerprint=getattr(bench, "fingerprint", None),
            image_size=size,  # type: ignore[arg-type]
            context_length=ctx,
            skipped=skipped,
        )

    # -- access -----------------------------------------------------------------------------------
    @property
    def task_names(self) -> list[str]:
        return list(self.tasks)

    def task(self, name: str | TaskData) -> TaskData:
        if isinstance(name, TaskData):
            return name
        try:
            return self.tasks[name]
        except KeyError:
            from mrbench.errors import UnknownNameError, did_you_mean

            raise UnknownNameError(
                f"train data has no task {name!r}{did_you_mean(name, self.task_names)}; tasks: {', '.join(self.task_names)}"
            ) from None

    def pool(self, task: str | TaskData) -> Items:
        """The whole candidate pool of ``task`` (score all of it for hard-negative mining; which of them
        are relevant: :meth:`TaskData.grade_matrix`)."""
        return self.task(task).candidates

    @property
    def n_queries(self) -> int:
        return sum(len(t) for t in self.tasks.values())

    @property
    def nbytes(self) -> int:
        """Bytes held by the decoded inputs (pools shared between :meth:`holdout` halves count in each)."""
        return sum(t.nbytes for t in self.tasks.values())

    def summary(self) -> dict[str, Any]:
        """Counts and memory, per task and in total (JSON-able)."""
        return {
            "benchmark": self.benchmark,
            "fingerprint": self.fingerprint,
            "image_size": list(self.image_size),
            "context_length": self.context_length,
            "n_queries": self.n_queries,
            "n_candidates": sum(len(t.candidates) for t in self.tasks.values()),
            "bytes": self.nbytes,
            "skipped": dict(self.skipped),
            "tasks": {
                n: {
                    "queries": len(t),
                    "candidates": len(t.candidates),
                    "positives": sum(len(p) for p in t.positives),
                    "relevant": sum(len(r) for r in t.relevant),
                    "bytes": t.nbytes,
                }
                for n, t in self.tasks.items()
            },
        }

    def __repr__(self) -> str:
        return (
            f"TrainData({self.benchmark!r}, tasks={self.task_names}, queries={self.n_queries}, "
            f"{self.nbytes / 2**20:.1f} MiB)"
        )

    # -- batches ----------------------------------------------------------------------------------
    def n_batches(self, batch_size: int, *, tasks: Sequence[str] | None = None, drop_last: bool = False) -> int:
        """How many batches one epoch of :meth:`batches` yields (the same for every seed)."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        n = 0
        for name in tasks if tasks is not None else self.task_names:
            size = len(self.task(name))
            for s in range(0, size, batch_size):
                b = min(batch_size, size - s)
                n += not (b < 2 or (drop_last and b < batch_size))
        return n

    def batches(
        self,
        batch_size: int,
        seed: int = 0,
        *,
        tasks: Sequence[str] | None = None,
        drop_last: bool = False,
        start: int = 0,
    ) -> Iterator[Batch]:
        """One epoch of InfoNCE batches: every query of every task once, in batches of ``batch_size``
        queries of one task, the batches of all tasks shuffled together. Deterministic in ``seed``
        (pass ``seed + epoch`` for the next epoch). ``drop_last`` drops each task's last short batch;
        a batch of one query (no in-batch negative) is never yielded. ``start`` skips the epoch's first
        ``start`` batches: the others are those the full epoch yields (what a resumed run continues with).
        Every epoch has :meth:`n_batches` batches, whatever the seed."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        rng = random.Random(f"elva-batches:{seed}")
        plan: list[tuple[str, list[int]]] = []
        for name in tasks if tasks is not None else self.task_names:
            t = self.task(name)
            order = list(range(len(t)))
            rng.shuffle(order)
            for s in range(0, len(order), batch_size):
                chunk = order[s:s + batch_size]
                if len(chunk) < 2 or (drop_last and len(chunk) < batch_size):
                    continue
                plan.append((name, chunk))
        rng.shuffle(plan)
        for k, (name, chunk) in enumerate(plan):
            t = self.tasks[name]
            pos = [t.positives[i][rng.randrange(len(t.positives[i]))].item() for i in chunk]
            if k < start:  # skipped, its positives drawn all the same: the batches after it are unchanged
                continue
            pos_sets = [set(t.positives[i].tolist()) for i in chunk]
            b = len(chunk)
            fn = torch.tensor([[i != j and pos[j] in pos_sets[i] for j in range(b)] for i in range(b)], dtype=torch.bool)
            yield Batch(
                task=name,
                queries=t.queries.select(chunk),
                positives=t.candidates.select(pos),
                false_negatives=fn,
                query_index=torch.tensor(chunk, dtype=torch.long),
                positive_index=torch.tensor(pos, dtype=torch.long),
            )

    # -- validation split -------------------------------------------------------------------------
    def holdout(self, fraction: float, seed: int = 0) -> tuple[TrainData, TrainData]:
        """``(train, validation)``: per task, ``round(fraction * n)`` queries (at least 1 when
        ``fraction > 0``, never all) go to validation. The choice depends only on ``seed``, the task name
        and the query ids (sha256 order), not on load order. Both halves share the candidate pools."""
        if not isinstance(fraction, (int, float)) or isinstance(fraction, bool) or not 0 <= fraction < 1:
            raise ValueError(f"holdout fraction must be in [0, 1), got {fraction!r}")
        train, val = [], []
        for name, t in self.tasks.items():
            tr, v = holdout_split(t.query_ids, fraction, seed, name)
            train.append(t.subset(tr))
            val.append(t.subset(v))
        common: dict[str, Any] = {
            "benchmark": self.benchmark, "fingerprint": self.fingerprint, "image_size": self.image_size,
            "context_length": self.context_length,
        }
        return (
            TrainData(train, skipped=self.skipped, **common),
            TrainData(val, **common),
        )
