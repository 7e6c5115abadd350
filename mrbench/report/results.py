"""The evaluation result: a versioned JSON document plus tables, run files and a chart.

``results.json`` (``schema_version`` 1) fields:

* ``mrbench_version``, ``created`` (UTC ISO-8601)
* ``benchmark``: name, version, split, fingerprint, path
* ``encoder``: the encoder's metadata record, the spec it was created from and its kwargs
* ``settings``: ks, depth, backend, device, tie_policy, batch_size, cache, grain_sensitivity, tasks
* ``hardware``: platform, python, cpu_count, torch, faiss, device, cuda
* ``timings``: seconds per stage (load, encoder_init, imports (the one-time imports of search and scoring,
  before the first task), encode, encoder_forward, input_wait, retrieve, score, sensitivity, total, aggregate); ``EvaluationResult.timings`` adds ``report`` (writing the output directory) and
  ``chart`` (drawing grains.png, part of ``report``) after results.json is written. Diagnostics of the
  input pipeline (see :class:`~mrbench.encoders.harness.EncodeStats`), summed over batches on the
  background threads that prepare them: ``input_read`` (decoding or pixel-cache reads),
  ``input_stage`` (pinned staging for a GPU), ``input_tokenize``; ``encode_startup``: from each
  encode call's start to its first batch reaching the encoder
* ``cache``: items, hits, encoded
* ``scores``: ``macro`` (each task weighs the same), ``tasks`` (per task), ``grain_count`` (per task
  and pooled ``all``, buckets "2", "3", "4", "5+"), ``grain_type`` (per task; a query counts under
  every type it contains), ``grain_sensitivity`` (per task: mean mask_distance, mean rank_change,
  fraction of drops that worsened the target's rank, count, and the same by grain type)
* ``files``: relative paths of the run files, per-query table and chart

Metric names: ``hit@k`` (the paper's "R@K": any relevant in the top k), ``recall@k``, ``mrr@k``,
``ndcg@k``, ``mean_rank`` / ``median_rank`` of the first relevant candidate, ``ties``,
``queries_with_ties``, ``n_queries``, ``n_dropped``.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

RESULTS_SCHEMA_VERSION = 1
RESULTS_FILE = "results.json"


def _clean(x: Any) -> Any:
    """JSON-safe conversion: numpy scalars → Python, NaN → None."""
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.floating, float)):
        f = float(x)
        return None if math.isnan(f) or math.isinf(f) else f
    if isinstance(x, np.bool_):
        return bool(x)
    return x


def _records(df, key: str) -> dict[str, dict[str, Any]]:
    out = {}
    for _, row in df.iterrows():
        d = row.to_dict()
        k = str(d.pop(key))
        out[k] = _clean(d)
    return out


def _nested(df, k1: str, k2: str) -> dict[str, dict[str, dict[str, Any]]]:
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for _, row in df.iterrows():
        d = row.to_dict()
        a, b = str(d.pop(k1)), str(d.pop(k2))
        out.setdefault(a, {})[b] = _clean(d)
    return out


def sensitivity_summary(sens) -> dict[str, Any]:
    """Aggregate drop-one-grain rows per task and per task × grain type."""
    if sens is None or len(sens) == 0:
        return {}

    def agg(g) -> dict[str, Any]:
        return {
            "mask_distance": float(g["mask_distance"].mean()),
            "rank_change": float(g["rank_change"].mean()),
            "worsened": float((g["rank_change"] > 0).mean()),
            "n": int(len(g)),
        }

    out: dict[str, Any] = {}
    for task, g in sens.groupby("task", sort=False):
        d = agg(g)
        d["by_type"] = {t: agg(gg) for t, gg in g.groupby("grain_type")}
        out[str(task)] = d
    return out


def aggregate_scores(per_query, tasks, sensitivity=None) -> dict[str, Any]:
    """The ``scores`` block of ``results.json`` from per-query rows (columns as in
    :func:`mrbench.metrics.ranking.score_queries` plus ``task``, ``n_grains``, ``grain_types``,
    ``ties``); ``tasks`` gives the order of ``scores["tasks"]``. Used by evaluation and by
    :mod:`mrbench.leaderboard.verify`, so a recomputation aggregates exactly as the original did."""
    from mrbench.metrics.aggregate import by_grain_count, by_grain_type, by_task, macro

    bt = by_task(per_query)
    order = list(tasks)
    return _clean({
        "macro": _records(macro(bt), "task")["macro"],
        "tasks": {t: v for t, v in sorted(_records(bt, "task").items(), key=lambda kv: order.index(kv[0]))},
        "grain_count": _nested(by_grain_count(per_query), "task", "grain_count"),
        "grain_type": _nested(by_grain_type(per_query), "task", "grain_type"),
        "grain_sensitivity": sensitivity_summary(sensitivity),
    })


@dataclass
class EvaluationResult:
    """What :func:`mrbench.evaluate` returns. ``data`` is the results JSON document."""

    data: dict[str, Any]
    per_query: Any  # pandas.DataFrame, one row per query
    sensitivity: Any = None  # pandas.DataFrame, one row per (query, dropped grain), or None
    runs: dict[str, Any] = field(default_factory=dict, repr=False)  # task -> (Task, RetrievalResult)
    save_timings: dict[str, float] = field(default_factory=dict, repr=False, compare=False)  # set by save()
    # the results directory load() read: save() copies its run files when ``runs`` is empty
    source: Path | None = field(default=None, repr=False, compare=False)

    # ------------------------------------------------------------------ construction
    @classmethod
    def build(cls, *, bench, tasks, encoder_meta, encoder_spec, encoder_kwargs, settings, hardware, timings,
              cache_stats, per_query, sensitivity, runs) -> "EvaluationResult":
        import mrbench

        scores = aggregate_scores(per_query, tasks, sensitivity)
        data = {
            "schema_version": RESULTS_SCHEMA_VERSION,
            "mrbench_version": mrbench.__version__,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "benchmark": {
                "name": bench.name,
                "version": bench.version,
                "split": bench.split,
                "fingerprint": bench.fingerprint,
                "path": str(bench.root) if bench.root else None,
            },
            "encoder": {**encoder_meta.to_dict(), "spec": encoder_spec, "kwargs": encoder_kwargs},
            "settings": {**settings, "tasks": list(tasks)},
            "hardware": hardware,
            "timings": timings,
            "cache": cache_stats,
            "scores": scores,
            "files": {},
        }
        return cls(data=_clean(data), per_query=per_query, sensitivity=sensitivity, runs=runs)

    # ------------------------------------------------------------------ views
    @property
    def scores(self) -> dict[str, Any]:
        return self.data["scores"]

    @property
    def timings(self) -> dict[str, float]:
        return self.data["timings"]

    def to_pandas(self, level: str = "task"):
        """Scores as a DataFrame: ``level`` = ``"task"``, ``"grain_count"``, ``"grain_type"``,
        ``"query"`` (per-query rows) or ``"sensitivity"`` (per dropped grain)."""
        import pandas as pd

        if level == "query":
            return self.per_query
        if level == "sensitivity":
            return self.sensitivity
        if level == "task":
            return pd.DataFrame.from_dict(self.scores["tasks"], orient="index")
        if level in ("grain_count", "grain_type"):
            rows = [
                {"task": t, level: k, **v} for t, d in self.scores[level].items() for k, v in d.items()
            ]
            return pd.DataFrame(rows).set_index(["task", level])
        raise ValueError(f"level {level!r}: choose task, grain_count, grain_type, query or sensitivity")

    def to_dict(self) -> dict[str, Any]:
        return self.data

    # ------------------------------------------------------------------ persistence
    def save(self, out: Path, overwrite: bool = False) -> Path:
        """Write results.json, runs/<task>.trec, per_query.parquet, sensitivity.parquet, grains.png
        into ``out`` atomically (a staging directory renamed into place).

        A result from :meth:`load` holds no rankings: its run files are copied from the directory it
        was loaded from, so load → save gives a directory ``mrbench verify`` accepts. Where no run
        file can be written or copied, a one-line :class:`UserWarning` says so (verify will refuse it)."""
        import warnings

        from mrbench.data.io import RESULTS_MARKER, atomic_dir
        from mrbench.retrieval.runfile import write_trec_run

        out = Path(out)
        run_name = f"{self.data['encoder']['name']}".replace(" ", "_") or "run"
        carried = {} if self.runs else self._source_runs()
        with atomic_dir(out, overwrite=overwrite, marker=RESULTS_MARKER, what="evaluation results") as st:
            files: dict[str, Any] = {"runs": {}}
            (st / "runs").mkdir()
            for name, (task, res) in self.runs.items():
                rel = f"runs/{name}.trec"
                write_trec_run(st / rel, [q.id for q in task.queries], [c.id for c in task.candidates], res, run_name)
                files["runs"][name] = rel
            for name, (rel, src) in carried.items():
                (st / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src, st / rel)
                files["runs"][name] = rel
            lacking = [str(t) for t in (self.data.get("settings") or {}).get("tasks") or [] if str(t) not in files["runs"]]
            if lacking:
                warnings.warn(f"{out}: saved without run files for {', '.join(lacking)} (this result holds no rankings for "
                              "them and none were found where it was loaded from); 'mrbench verify' will refuse the directory",
                              UserWarning, stacklevel=2)
            pq = self.per_query.copy()
            pq["grain_types"] = pq["grain_types"].map(_join_types)
            pq.to_parquet(st / "per_query.parquet", index=False)
            files["per_query"] = "per_query.parquet"
            if self.sensitivity is not None:
                self.sensitivity.to_parquet(st / "sensitivity.parquet", index=False)
                files["sensitivity"] = "sensitivity.parquet"
            t0 = time.perf_counter()
            try:
                from mrbench.report.charts import grain_chart

                grain_chart(self, st / "grains.png")
                files["chart"] = "grains.png"
            except ImportError:  # matplotlib missing: results stay complete without the picture
                pass
            self.save_timings["chart"] = time.perf_counter() - t0
            self.data["files"] = files
            (st / RESULTS_FILE).write_text(json.dumps(self.data, indent=2) + "\n", encoding="utf-8")
        return out

    @classmethod
    def load(cls, path: Path) -> "EvaluationResult":
        """Load ``results.json`` (and per_query.parquet / sensitivity.parquet when present) from a results
        directory. ``per_query["grain_types"]`` is a list per query, as :func:`mrbench.evaluate` gives it
        (comma-joined on disk). The result holds no rankings (``runs`` is empty); :meth:`save` copies
        the run files from this directory."""
        import pandas as pd

        from mrbench.data.io import read_json
        from mrbench.errors import MrbenchError

        path = Path(path)
        f = path / RESULTS_FILE if path.is_dir() else path
        data = read_json(f, error=MrbenchError, missing="no results file; pass a directory written by 'mrbench evaluate --output'",
                         corrupt="the results file is damaged; re-run the evaluation")
        if data.get("schema_version") != RESULTS_SCHEMA_VERSION:
            raise MrbenchError(f"{f}: schema_version {data.get('schema_version')!r} is not supported (expected {RESULTS_SCHEMA_VERSION})")
        pq = f.parent / "per_query.parquet"
        per_query = pd.read_parquet(pq) if pq.is_file() else None
        if per_query is not None and "grain_types" in per_query.columns:
            per_query["grain_types"] = per_query["grain_types"].map(_split_types)  # a list per query, as evaluate gives
        sf = f.parent / ((data.get("files") or {}).get("sensitivity") or "sensitivity.parquet")
        sensitivity = pd.read_parquet(sf) if sf.is_file() else None
        return cls(data=data, per_query=per_query, sensitivity=sensitivity, source=f.parent)

    def _source_runs(self) -> dict[str, tuple[str, Path]]:
        """``{task: (relative path, file)}`` for the run files listed in ``files.runs`` that exist in
        :attr:`source` (the directory :meth:`load` read), paths outside it skipped."""
        if self.source is None:
            return {}
        root = Path(self.source).resolve()
        out = {}
        for name, rel in ((self.data.get("files") or {}).get("runs") or {}).items():
            if not isinstance(rel, str) or Path(rel).is_absolute() or ".." in Path(rel).parts:
                continue
            src = root / rel
            if src.is_file():
                out[str(name)] = (rel, src)
        return out


def _join_types(v: Any) -> str:
    """A query's grain types as stored in per_query.parquet: comma-joined (a string is kept as is)."""
    if v is None:
        return ""
    if isinstance(v, str):
        return v
    return ",".join(str(t) for t in v)


def _split_types(v: Any) -> list[str]:
    """per_query.parquet's comma-joined grain types back to the list :func:`mrbench.evaluate` gives."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return []
    if isinstance(v, str):
        return v.split(",") if v else []
    return [str(t) for t in v]
