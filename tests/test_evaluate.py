"""End-to-end evaluate on the tiny MRBench-Synth with the built-in encoders."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import mrbench
from mrbench.encoders.base import EncoderMeta
from mrbench.errors import EncoderError, MrbenchError, OutputExistsError, UnknownNameError

TINY = "mrbench-synth-tiny"


def test_oracle_is_perfect_everywhere():
    res = mrbench.evaluate(TINY, "oracle")
    for task, s in res.scores["tasks"].items():
        assert s["hit@1"] == 1.0 and s["mrr@10"] == 1.0, task
        assert s["ndcg@10"] == pytest.approx(1.0, abs=1e-9), task
        assert s["n_dropped"] == 0
    assert res.scores["macro"]["hit@5"] == 1.0
    assert set(res.scores["tasks"]) == {"t2i", "i2t", "i2i", "it2i"}
    # grain sensitivity: the oracle reads every grain, so dropping one always moves the embedding
    sens = res.scores["grain_sensitivity"]
    assert set(sens) == {"t2i", "it2i"}
    for v in sens.values():
        assert v["mask_distance"] > 0.01 and v["n"] > 0


def test_constant_encoder_exposes_pessimistic_ties():
    res = mrbench.evaluate(TINY, "constant")
    bench = mrbench.load_benchmark(TINY)
    pq = res.per_query
    for task in bench.tasks:
        n = len(task.candidates)
        rows = pq[pq.task == task.name]
        for _, r in rows.iterrows():
            n_rel = len(task.relevant(r.qid))
            # every candidate ties: all non-relevant candidates come first
            assert r.first_rank == n - n_rel + 1
            assert r.ties == n - n_rel  # every non-relevant candidate ties with it
        assert res.scores["tasks"][task.name]["hit@1"] == 0.0
        assert res.scores["tasks"][task.name]["queries_with_ties"] == len(task.queries)
    # no grain moves a constant embedding
    for v in res.scores["grain_sensitivity"].values():
        assert v["mask_distance"] == pytest.approx(0.0, abs=1e-6) and v["rank_change"] == 0


def test_random_is_deterministic_and_outputs_are_complete(tmp_path):
    out = tmp_path / "res"
    a = mrbench.evaluate(TINY, "random", output=out)
    b = mrbench.evaluate(TINY, "random", cache=False)
    assert a.scores == b.scores
    data = json.loads((out / "results.json").read_text())
    assert data["schema_version"] == 1 and data["benchmark"]["fingerprint"].startswith("sha256:")
    assert data["encoder"]["name"] == "random" and data["encoder"]["spec"] == "random"
    assert data["settings"]["ks"] == [1, 5, 10] and data["settings"]["tie_policy"] == "pessimistic"
    for key in ("load", "encoder_init", "imports", "encode", "retrieve", "score", "total", "input_wait", "input_read",
                "input_stage", "input_tokenize", "encode_startup"):
        assert data["timings"][key] >= 0
    assert data["hardware"]["torch"]
    for task, rel in data["files"]["runs"].items():
        lines = (out / rel).read_text().splitlines()
        first = lines[0].split()
        assert len(first) == 6 and first[1] == "Q0" and first[3] == "1" and first[5] == "random"
    assert (out / "grains.png").stat().st_size > 5000
    import pandas as pd

    pq = pd.read_parquet(out / "per_query.parquet")
    assert len(pq) == mrbench.load_benchmark(TINY).n_queries
    assert {"hit@5", "recall@5", "mrr@5", "ndcg@5", "first_rank", "n_grains", "ties"} <= set(pq.columns)
    # the run files agree with the per-query ranks (hit@1 recomputed from rank-1 lines)
    bench = mrbench.load_benchmark(TINY)
    for task in bench.tasks:
        top1 = {}
        for line in (out / "runs" / f"{task.name}.trec").read_text().splitlines():
            qid, _, did, rank, _, _ = line.split()
            if rank == "1":
                top1[qid] = did
        rows = pq[pq.task == task.name].set_index("qid")
        for qid, did in top1.items():
            assert (did in task.relevant(qid)) == (rows.loc[qid, "hit@1"] == 1.0)


def test_pandas_views():
    res = mrbench.evaluate(TINY, "random", grain_sensitivity=False)
    assert list(res.to_pandas("task").index) == ["t2i", "i2t", "i2i", "it2i"]
    gc = res.to_pandas("grain_count")
    assert {"2", "3", "4", "5+"} <= {b for _, b in gc.index}
    assert "hit@5" in res.to_pandas("grain_type").columns
    assert res.to_pandas("sensitivity") is None
    with pytest.raises(ValueError):
        res.to_pandas("nope")


def test_warm_run_encodes_nothing(tmp_path):
    cold = mrbench.evaluate(TINY, "random", cache_dir=tmp_path / "c")
    warm = mrbench.evaluate(TINY, "random", cache_dir=tmp_path / "c")
    assert cold.data["cache"]["encoded"] > 0
    assert warm.data["cache"]["encoded"] == 0 and warm.data["cache"]["hits"] == warm.data["cache"]["items"]
    assert warm.scores == cold.scores


class Flaky:
    """Random-like encoder that fails on a chosen call, to simulate an interrupted run."""

    def __init__(self, fail_on: int = -1):
        self.meta = EncoderMeta(name="flaky", revision="1", dim=16, needs_pixels=False, batch_size=8)
        self.calls = 0
        self.fail_on = fail_on

    def encode(self, items, *, role, task):
        self.calls += 1
        if self.calls == self.fail_on:
            raise KeyboardInterrupt
        out = []
        for it in items:
            rng = np.random.default_rng(int(it.content_hash[:8], 16))
            out.append(rng.standard_normal(16))
        return np.asarray(out, np.float32)


def test_interrupted_run_resumes_from_cache(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        mrbench.evaluate(TINY, Flaky(fail_on=4), cache_dir=tmp_path / "c", grain_sensitivity=False)
    resumed = mrbench.evaluate(TINY, Flaky(), cache_dir=tmp_path / "c", grain_sensitivity=False)
    full = mrbench.evaluate(TINY, Flaky(), cache=False, grain_sensitivity=False)
    assert 0 < resumed.data["cache"]["hits"] < resumed.data["cache"]["items"]
    assert resumed.scores == full.scores


def test_output_refused_unless_overwrite(tmp_path):
    out = tmp_path / "r"
    mrbench.evaluate(TINY, "random", output=out, grain_sensitivity=False)
    before = (out / "results.json").read_bytes()
    with pytest.raises(OutputExistsError, match="--overwrite"):
        mrbench.evaluate(TINY, "random", output=out)
    assert (out / "results.json").read_bytes() == before
    mrbench.evaluate(TINY, "random", output=out, overwrite=True, ks="1,3")
    assert json.loads((out / "results.json").read_text())["settings"]["ks"] == [1, 3]


class Broken:
    def __init__(self, mode: str):
        self.mode = mode
        self.meta = EncoderMeta(name=f"broken-{mode}", dim=None, needs_pixels=False)

    def encode(self, items, *, role, task):
        n = len(items)
        if self.mode == "nan":
            x = np.ones((n, 4), np.float32)
            x[0, 0] = np.nan
            return x
        if self.mode == "shape":
            return np.ones((n + 1, 4), np.float32)
        if self.mode == "dims":
            return np.ones((n, 4 if role == "query" else 5), np.float32)
        raise AssertionError


@pytest.mark.parametrize("mode, pattern", [("nan", "NaN"), ("shape", "shape"), ("dims", "dimension|differ")])
def test_broken_encoders_fail_with_one_line(mode, pattern):
    with pytest.raises(EncoderError, match=pattern) as ei:
        mrbench.evaluate(TINY, Broken(mode), cache=False)
    assert "\n" not in str(ei.value)


def test_bad_arguments():
    with pytest.raises(UnknownNameError, match="did you mean 'random'"):
        mrbench.evaluate(TINY, "randm")
    with pytest.raises(UnknownNameError, match="no task 't2x'.*did you mean 't2i'"):
        mrbench.evaluate(TINY, "random", tasks=["t2x"])
    with pytest.raises(MrbenchError, match="--k"):
        mrbench.evaluate(TINY, "random", ks="1,x")
    with pytest.raises(MrbenchError, match="--depth"):
        mrbench.evaluate(TINY, "random", ks=(1, 50), depth=10)


def test_an_unknown_backend_or_unusable_cache_dir_is_refused_before_anything_is_encoded(tmp_path):
    calls = []

    class Counting:
        meta = EncoderMeta(name="counting", revision="r1", dim=4, modalities=("text", "image"))

        def encode(self, items, *, role, task):
            calls.append(len(items))
            return np.ones((len(items), 4), np.float32)

    with pytest.raises(UnknownNameError, match=r"unknown search backend 'faiss-gpu' \(did you mean 'faiss'\?\)") as ei:
        mrbench.evaluate(TINY, Counting(), backend="faiss-gpu", output=tmp_path / "out", cache=False)
    assert calls == [] and "\n" not in str(ei.value)
    assert not (tmp_path / "out").exists()

    # an embedding cache directory that cannot be one: refused before encoding, not when first written
    (tmp_path / "file").write_text("x")
    for where, what in ((tmp_path / "file", "a file is there"), (tmp_path / "file" / "sub", "")):
        with pytest.raises(MrbenchError, match="cannot hold the embedding cache") as ei:
            mrbench.evaluate(TINY, Counting(), cache_dir=where, grain_sensitivity=False)
        assert calls == [] and "\n" not in str(ei.value) and what in str(ei.value) and str(where) in str(ei.value)


def test_backends_agree():
    a = mrbench.evaluate(TINY, "random", backend="torch", grain_sensitivity=False)
    b = mrbench.evaluate(TINY, "random", backend="faiss", grain_sensitivity=False)
    c = mrbench.evaluate(TINY, "constant", backend="torch", grain_sensitivity=False)
    d = mrbench.evaluate(TINY, "constant", backend="faiss", grain_sensitivity=False)
    assert a.scores == b.scores and c.scores == d.scores


def test_results_load_back(tmp_path):
    from mrbench.report.results import EvaluationResult

    mrbench.evaluate(TINY, "random", output=tmp_path / "r", grain_sensitivity=False)
    back = EvaluationResult.load(tmp_path / "r")
    assert back.data["encoder"]["name"] == "random" and len(back.per_query) > 0
    with pytest.raises(MrbenchError, match="no results file"):
        EvaluationResult.load(tmp_path / "nothing")


def test_stream_pool_gives_identical_results_and_big_pools_need_it(tmp_path, monkeypatch):
    """--stream-pool encodes the pool into a memmap in slices and streams it through exact search:
    the same per-query table and sensitivity; a pool too big for memory is refused naming the flag."""
    import mrbench.pipeline as pl
    from mrbench.builders.synth import build_synth
    from mrbench.errors import MrbenchError

    bench = build_synth(tmp_path / "b", size=10, image_size=32)
    ref = pl.evaluate(bench, "random", cache=False)
    monkeypatch.setattr(pl, "POOL_SLICE", 7)
    got = pl.evaluate(bench, "random", cache=False, stream_pool=True)
    assert got.per_query.equals(ref.per_query)
    assert got.sensitivity.equals(ref.sensitivity)
    assert got.data["settings"]["stream_pool"] is True and got.data["settings"]["backend"] == "torch"
    from mrbench.data.registry import mrbench_home

    assert not list((mrbench_home() / "tmp").glob("pool-*"))  # the memmapped pools are removed
    monkeypatch.setattr(pl, "available_memory", lambda: 1000)
    with pytest.raises(MrbenchError, match=r"task t2i: .* candidates x 64 dims need \d+\.\d MiB .* half of the 0\.0 MiB "
                                           r".* pass --stream-pool"):
        pl.evaluate(bench, "random", cache=False)
    with pytest.raises(MrbenchError, match="--stream-pool and --approx"):
        pl.evaluate(bench, "random", cache=False, stream_pool=True, approx={"index": "ivf"})
    with pytest.raises(MrbenchError, match="--stream-pool needs --backend torch"):
        pl.evaluate(bench, "random", cache=False, stream_pool=True, backend="faiss")


def test_sensitivity_first_rank_from_best_scoring_candidates():
    """_best_scoring keeps, per query, only the judged candidates with its top canonical score; the
    first relevant rank exact_search gives from them equals the one from every judged candidate,
    with planted exact ties (duplicated candidates of different grades) and a constant encoder."""
    from mrbench.pipeline import _best_scoring
    from mrbench.retrieval.search import exact_search

    rng = np.random.default_rng(3)
    c = rng.standard_normal((300, 16)).astype(np.float32)
    c[50:60] = c[40]  # ten exact copies: tied scores
    q = rng.standard_normal((40, 16)).astype(np.float32)
    q[:5] = c[40]
    judged = [{int(x): int(rng.integers(1, 4)) for x in rng.choice(300, 25, replace=False)} for _ in range(40)]
    for j in judged[:8]:
        j.update({40: 3, 51: 1, 55: 2})
    for qq, cc in ((q, c), (np.ones_like(q), np.ones_like(c))):
        best = _best_scoring(qq, cc, judged)
        assert all(set(b) <= set(j) and b for b, j in zip(best, judged))
        full = exact_search(qq, cc, judged, depth=1, backend="torch")
        red = exact_search(qq, cc, best, depth=1, backend="torch")
        assert [min(r.values()) for r in full.judged_ranks] == [min(r.values()) for r in red.judged_ranks]
    assert _best_scoring(q, c, [{} for _ in range(40)]) == [{} for _ in range(40)]


def test_best_scoring_reads_only_the_judged_rows_of_a_memory_mapped_pool(tmp_path, monkeypatch):
    """With --stream-pool the pool is a memmap that may not fit in memory: _best_scoring gathers the
    judged rows only (it used to copy the whole pool, so streamed runs skipped it) and gives the
    same candidates as on an in-memory pool."""
    from mrbench.pipeline import _best_scoring

    rng = np.random.default_rng(5)
    c = rng.standard_normal((500, 8)).astype(np.float32)
    q = rng.standard_normal((30, 8)).astype(np.float32)
    judged = [{int(x): int(rng.integers(1, 4)) for x in rng.choice(500, 6, replace=False)} for _ in range(30)]
    path = tmp_path / "pool.npy"
    np.save(path, c)
    mm = np.load(path, mmap_mode="r")
    seen = []
    real = np.ascontiguousarray

    def watched(a, *args, **kw):
        seen.append(len(a))
        return real(a, *args, **kw)

    monkeypatch.setattr(np, "ascontiguousarray", watched)
    got = _best_scoring(q, mm, judged)
    monkeypatch.undo()
    assert got == _best_scoring(q, c, judged)
    assert max(seen) <= 30 * 6  # the queries and the judged rows, never the 500-row pool


def test_each_encode_call_is_started_while_the_one_before_runs(monkeypatch):
    """A task's candidates are set up while its queries are encoded, the next task's queries while
    its candidates are; the scores are those of calls run one after the other."""
    from mrbench.encoders import harness

    events: list[tuple[str, str, str]] = []
    real = harness.start_encode

    def spy(enc, items, *, role, task, **kw):
        events.append(("start", task.name, role))
        pending = real(enc, items, role=role, task=task, **kw)
        result = pending.result

        def logged(**kw2):
            events.append(("result", task.name, role))
            return result(**kw2)

        pending.result = logged
        return pending

    import mrbench.pipeline as pl

    ref = mrbench.evaluate(TINY, Flaky(), cache=False, grain_sensitivity=False)
    monkeypatch.setattr(pl, "ENCODE_AHEAD", True)  # as for an encoder on a GPU
    monkeypatch.setattr(harness, "start_encode", spy)
    res = mrbench.evaluate(TINY, Flaky(), cache=False, grain_sensitivity=False)
    assert res.scores == ref.scores
    names = list(res.scores["tasks"])
    want = []
    for i, t in enumerate(names):
        if i == 0:
            want.append(("start", t, "query"))
        want += [("start", t, "candidate"), ("result", t, "query")]
        if i + 1 < len(names):
            want.append(("start", names[i + 1], "query"))
        want.append(("result", t, "candidate"))
    assert events == want


def test_a_failure_discards_the_calls_started_ahead(tmp_path, monkeypatch):
    import threading
    import time

    import mrbench.pipeline as pl

    monkeypatch.setattr(pl, "ENCODE_AHEAD", True)

    import gc

    with pytest.raises(KeyboardInterrupt):
        mrbench.evaluate(TINY, Flaky(fail_on=3), cache_dir=tmp_path / "c", grain_sensitivity=False)
    assert gc.get_freeze_count() == 0  # the objects evaluate froze are handed back to the collector
    for _ in range(100):
        if not [t for t in threading.enumerate() if t.name.startswith(("mrbench-encode-ahead", "mrbench-prepare"))]:
            break
        time.sleep(0.02)
    else:
        raise AssertionError("threads of a discarded call are still running")


def test_grain_sensitivity_calls_started_ahead_give_the_same_results(monkeypatch):
    """The reduced queries' call is started after the task's candidates (and the next task's queries
    after it); every score, table and sensitivity row equals the one-call-at-a-time run's."""
    import mrbench.pipeline as pl
    from mrbench.encoders import harness

    events: list[tuple[str, str, int]] = []
    real = harness.start_encode

    def spy(enc, items, *, role, task, **kw):
        events.append((task.name, role, len(items)))
        return real(enc, items, role=role, task=task, **kw)

    monkeypatch.setattr(harness, "start_encode", spy)
    monkeypatch.setattr(pl, "ENCODE_AHEAD", True)
    got = mrbench.evaluate(TINY, Flaky(), cache=False)
    monkeypatch.setattr(pl, "ENCODE_AHEAD", False)
    ref = mrbench.evaluate(TINY, Flaky(), cache=False)
    assert got.scores == ref.scores
    assert got.per_query.equals(ref.per_query) and got.sensitivity.equals(ref.sensitivity)
    bench = mrbench.load_benchmark(TINY)
    ahead_calls = events[: len(events) - len(bench.tasks)]  # the second run starts only its queries' calls
    for t in bench.tasks:
        sens = [e for e in ahead_calls if e[0] == t.name and e[1] == "query" and e[2] != len(t.queries)]
        assert len(sens) == (1 if t.query_modality != "image" else 0), t.name
        if sens:  # started right after the task's candidates
            k = ahead_calls.index(sens[0])
            assert ahead_calls[k - 1] == (t.name, "candidate", len(t.candidates))


def test_calls_are_started_ahead_by_default_only_for_an_encoder_on_a_gpu(monkeypatch):
    from mrbench.encoders import harness

    started: list[str] = []
    real = harness.start_encode

    def spy(enc, items, *, role, task, **kw):
        started.append(task.name)
        return real(enc, items, role=role, task=task, **kw)

    monkeypatch.setattr(harness, "start_encode", spy)
    n_tasks = len(mrbench.load_benchmark(TINY).tasks)
    mrbench.evaluate(TINY, Flaky(), cache=False, grain_sensitivity=False)
    assert len(started) == n_tasks  # on the CPU: each task's queries, then its candidates as before
    started.clear()
    monkeypatch.setattr(harness, "_gpu_decode_device", lambda encoder: "cuda")  # as if it were on a GPU
    mrbench.evaluate(TINY, Flaky(), cache=False, grain_sensitivity=False)
    assert len(started) == 2 * n_tasks  # queries and candidates, each started ahead


def test_evaluate_some_tasks_reads_only_theirs_same_scores(small_bench, monkeypatch):
    from mrbench.data import io

    whole = mrbench.evaluate(small_bench.root, "random", cache=False)  # verifies the benchmark (stamp)
    read: list[str] = []
    real = io._read_jsonl
    monkeypatch.setattr(io, "_read_jsonl", lambda p: read.append(p.parent.name) or real(p))
    part = mrbench.evaluate(small_bench.root, "random", tasks=["i2t"], cache=False)
    assert set(read) == {"i2t"}
    assert list(part.scores["tasks"]) == ["i2t"]
    assert part.scores["tasks"]["i2t"] == whole.scores["tasks"]["i2t"]
    assert part.data["benchmark"]["fingerprint"] == whole.data["benchmark"]["fingerprint"]


def test_a_task_given_twice_is_refused():
    """tasks=["t2i", "t2i"] was evaluated twice (doubled per-query rows, results verify refused)."""
    with pytest.raises(MrbenchError, match=r"'t2i' given twice; give each task once"):
        mrbench.evaluate(TINY, "random", tasks=["t2i", "t2i"], cache=False)


def test_encoder_kwargs_with_an_instance_are_refused():
    """They were ignored, yet recorded in results.json and in the cache key."""
    calls = []

    class Inst:
        meta = EncoderMeta(name="inst", revision="r1", dim=4, needs_pixels=False)

        def encode(self, items, *, role, task):
            calls.append(len(items))
            return np.ones((len(items), 4), np.float32)

    with pytest.raises(EncoderError, match=r"encoder_kwargs \['dim'\] given with an encoder instance.*"
                                           r"apply to a name or file spec") as ei:
        mrbench.evaluate(TINY, Inst(), encoder_kwargs={"dim": 8}, cache=False)
    assert "\n" not in str(ei.value) and calls == []
    res = mrbench.evaluate(TINY, Inst(), encoder_kwargs={}, tasks=["t2i"], cache=False, grain_sensitivity=False)
    assert res.data["encoder"]["kwargs"] == {}  # an empty dict is no kwargs


@pytest.mark.parametrize("meta, what", [
    ({"name": "metadict", "dim": 4}, "'meta' is a dict, not mrbench.encoders.base.EncoderMeta"),
    ("simple", "'meta' is a SimpleNamespace, not mrbench.encoders.base.EncoderMeta"),
    (None, "no 'meta' attribute"),
])
def test_an_instance_whose_meta_is_not_an_encoder_meta_fails_with_one_line(meta, what):
    """A dict or SimpleNamespace meta crashed with a raw AttributeError (meta.dim, meta.name)."""
    from types import SimpleNamespace

    class Odd:
        def encode(self, items, *, role, task):
            return np.ones((len(items), 4), np.float32)

    enc = Odd()
    if meta == "simple":
        enc.meta = SimpleNamespace(dim=4, similarity="cosine")
    elif meta is not None:
        enc.meta = meta
    with pytest.raises(EncoderError, match="does not implement the Encoder protocol") as ei:
        mrbench.evaluate(TINY, enc, cache=False, grain_sensitivity=False)
    msg = str(ei.value)
    assert what in msg and "EncoderMeta(name=" in msg and "\n" not in msg


def test_ks_may_be_one_int_and_tasks_one_name_or_comma_separated_names():
    """ks=5 raised TypeError; tasks="t2i" was iterated character by character."""
    one = mrbench.evaluate(TINY, "random", ks=5, depth=10, tasks="t2i", cache=False, grain_sensitivity=False)
    assert one.data["settings"]["ks"] == [5] and list(one.scores["tasks"]) == ["t2i"]
    listed = mrbench.evaluate(TINY, "random", ks=[5], depth=10, tasks=["t2i"], cache=False, grain_sensitivity=False)
    assert one.scores == listed.scores
    two = mrbench.evaluate(TINY, "random", ks=(1, 5), tasks=" t2i, i2t ", cache=False, grain_sensitivity=False)
    assert list(two.scores["tasks"]) == ["t2i", "i2t"]
    for bad_tasks in ("", " , "):
        with pytest.raises(MrbenchError, match="no task name in it") as ei:
            mrbench.evaluate(TINY, "random", tasks=bad_tasks, cache=False)
        assert "\n" not in str(ei.value)
    with pytest.raises(MrbenchError, match="'t2i' given twice"):
        mrbench.evaluate(TINY, "random", tasks="t2i,t2i", cache=False)
    for bad_ks in (0, -1, 2.5, None, True):
        with pytest.raises(MrbenchError, match="positive integers") as ei:
            mrbench.evaluate(TINY, "random", ks=bad_ks, cache=False)
        assert "\n" not in str(ei.value)


class _CountingEncoder:
    def __init__(self):
        self.meta = EncoderMeta(name="counting", revision="r1", dim=4, needs_pixels=False)
        self.calls = 0

    def encode(self, items, *, role, task):
        self.calls += 1
        return np.ones((len(items), 4), np.float32)


@pytest.mark.skipif(not hasattr(__import__("os"), "geteuid") or __import__("os").geteuid() == 0,
                    reason="root writes in a 0o555 directory (see the read-only test below)")
def test_an_output_in_a_read_only_directory_is_refused_before_anything_is_encoded(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    enc = _CountingEncoder()
    try:
        with pytest.raises(MrbenchError, match=r"--output .*ro/out: cannot write in .*ro") as ei:
            mrbench.evaluate(TINY, enc, output=ro / "out", cache=False)
    finally:
        ro.chmod(0o755)
    assert enc.calls == 0 and "\n" not in str(ei.value) and "choose another --output" in str(ei.value)


def test_an_unwritable_output_parent_is_refused_before_anything_is_encoded(tmp_path, monkeypatch):
    """A read-only mount or a directory without write permission was found only when saving, after all
    the work (and the message named the staging directory). Root ignores 0o555 modes, so the check's
    os.access answer is simulated here; a path below a file is real for everyone."""
    import os

    import mrbench.pipeline as pl

    blocker = tmp_path / "afile"
    blocker.write_text("x")
    enc = _CountingEncoder()
    with pytest.raises(MrbenchError, match=r"afile is a file, not a directory; choose another --output") as ei:
        mrbench.evaluate(TINY, enc, output=blocker / "sub" / "out", cache=False)
    assert enc.calls == 0 and "\n" not in str(ei.value)

    ro = tmp_path / "romnt"
    ro.mkdir()
    real = os.access
    monkeypatch.setattr(pl.os, "access", lambda p, mode, **k: False if Path(p) == ro else real(p, mode, **k))
    for out in (ro / "out", ro / "new" / "deeper"):
        with pytest.raises(MrbenchError, match="cannot write in .*romnt .*read-only file system") as ei:
            mrbench.evaluate(TINY, enc, output=out, cache=False)
        assert enc.calls == 0 and "\n" not in str(ei.value) and str(out) in str(ei.value)


def test_a_save_that_fails_names_the_output_not_the_staging_directory(tmp_path, monkeypatch):
    import errno

    from mrbench.report.results import EvaluationResult

    out = tmp_path / "out"

    def failing_save(self, path, overwrite=False):
        raise OSError(errno.EROFS, "Read-only file system", str(path.with_name(f".{path.name}.staging-abf13a0c")))

    monkeypatch.setattr(EvaluationResult, "save", failing_save)
    with pytest.raises(MrbenchError) as ei:
        mrbench.evaluate(TINY, "random", output=out, tasks=["t2i"], cache=False, grain_sensitivity=False)
    msg = str(ei.value)
    assert msg.startswith(f"--output {out}: cannot write the results (Read-only file system)")
    assert "staging" not in msg and "\n" not in msg


def test_the_one_time_imports_are_timed_apart_from_retrieve_and_score(tmp_path):
    """The first evaluate in a process counted torch's import (~1.5 s) in timings["retrieve"] and
    pandas' in timings["score"]; they are imported before the task loop, as timings["imports"]."""
    import os
    import subprocess
    import sys

    code = (
        "import json, sys, mrbench\n"
        "import mrbench.pipeline as pl, mrbench.retrieval.search as s\n"
        "seen = []\n"
        "def watch(f, label):\n"
        "    def g(*a, **k):\n"
        "        before = set(sys.modules); r = f(*a, **k)\n"
        "        seen.extend(f'{label}:{m}' for m in ('torch', 'pandas', 'faiss') if m in set(sys.modules) - before)\n"
        "        return r\n"
        "    return g\n"
        "s.exact_search = watch(s.exact_search, 'retrieve'); pl.task_frame = watch(pl.task_frame, 'score')\n"
        "r = mrbench.evaluate('mrbench-synth-tiny', 'random', cache=False)\n"
        "print(json.dumps({'seen': seen, 'timings': r.timings}))\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["seen"] == []  # nothing imported inside the retrieve or score stages
    t = got["timings"]
    assert t["imports"] > t["retrieve"] and t["imports"] > 0.1, t
