"""``mrbench encode``: sharded (torchrun, gloo on CPU) and single-process encoding into the embedding
cache, after which ``evaluate`` encodes nothing and scores exactly as an uncached evaluate does."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from mrbench.cli.encode import encode as encode_cmd
from mrbench.encoders.cache import EmbeddingCache, cache_namespace
from mrbench.encoders.distributed import (
    CollectiveTimeoutError,
    DistContext,
    PeerStoppedError,
    encode_benchmark,
    sensitivity_queries,
    shard,
    work_units,
)
from mrbench.errors import MrbenchError
from mrbench.encoders.registry import get_encoder
from mrbench.pipeline import evaluate

DIST_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
            "GROUP_RANK", "ROLE_RANK", "TORCHELASTIC_RUN_ID")
ENCODERS = ("random", "contrastive-tiny")


@pytest.fixture(scope="module")
def bench_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from mrbench.builders.synth import build_synth

    d = tmp_path_factory.mktemp("bench") / "b"
    build_synth(d, size=8, image_size=32)
    return d


@pytest.fixture(autouse=True)
def _single_process(monkeypatch: pytest.MonkeyPatch) -> None:
    for v in DIST_ENV:
        monkeypatch.delenv(v, raising=False)


def _shard_keys(cache_path: Path) -> dict[str, set[str]]:
    out = {}
    for p in sorted(cache_path.glob("shard-*.npz")):
        with np.load(p, allow_pickle=False) as z:
            out[p.name] = set(z["keys"].tolist())
    return out


def _unit_keys(bench_dir: Path, store: EmbeddingCache) -> tuple[set[str], set[str]]:
    """The cache keys of every work item, and those shared by several items (identical content)."""
    from collections import Counter

    from mrbench.data.registry import load_benchmark
    from mrbench.encoders.harness import instruction_for, item_content_hash

    bench = load_benchmark(bench_dir)
    n = Counter(
        store.key(u.role, instruction_for(bench.tasks[u.task], u.role),
                  item_content_hash(u.item.text, bench.image_path(u.item.image) if u.item.image else None))
        for u in work_units(bench, bench.tasks)
    )
    return set(n), {k for k, c in n.items() if c > 1}


def _same(a, b, path="scores") -> None:
    """Equal, except ``mask_distance`` (1 − cos of embeddings computed in other batch compositions:
    the last float32 bits may differ) within 1e-6."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), path
        for k in a:
            _same(a[k], b[k], f"{path}.{k}")
    elif path.endswith("mask_distance"):
        assert a == pytest.approx(b, abs=1e-6), path
    else:
        assert a == b, path


def _assert_same_scores(warm, cold) -> None:
    """Every retrieval score and rank identical; the drop-one-grain distances equal to 1e-6."""
    _same(warm.scores, cold.scores)
    cols = [c for c in cold.per_query.columns if c != "grain_types"]
    assert warm.per_query[cols].equals(cold.per_query[cols])
    ws, cs = warm.to_pandas("sensitivity"), cold.to_pandas("sensitivity")
    assert ws[["qid", "grain_index", "rank_reduced"]].equals(cs[["qid", "grain_index", "rank_reduced"]])
    np.testing.assert_allclose(ws["mask_distance"], cs["mask_distance"], atol=1e-6)


# ----------------------------------------------------------------------------------------------------
# the work list and its shards


def test_work_units_match_evaluate_and_shards_partition_them(bench_dir):
    from mrbench.data.registry import load_benchmark

    bench = load_benchmark(bench_dir)
    units = work_units(bench, bench.tasks)
    res = evaluate(bench, "random", cache=False)
    assert len(units) == res.data["cache"]["items"]  # no pool shared here: every item is its own entry
    n_sens = sum(len(sensitivity_queries(t)) for t in bench.tasks if t.query_modality != "image")
    assert n_sens == len(res.to_pandas("sensitivity")) > 0
    assert len(work_units(bench, bench.tasks, grain_sensitivity=False)) == len(units) - n_sens
    ids = [id(u) for u in units]
    for world in (1, 2, 3, 5):
        parts = [shard(units, r, world) for r in range(world)]
        got = [id(u) for p in parts for u in p]
        assert sorted(got) == sorted(ids) and len(set(got)) == len(got)  # disjoint, complete
        assert max(map(len, parts)) - min(map(len, parts)) <= 1
        assert [id(u) for u in shard(units, world - 1, world)] == [id(u) for u in parts[-1]]  # deterministic
    # a task listed twice (a shared pool) is encoded once
    assert len(work_units(bench, [bench.tasks[0], bench.tasks[0]])) == len(work_units(bench, [bench.tasks[0]]))
    with pytest.raises(ValueError):
        shard(units, 2, 2)


def test_context_without_launcher_is_one_process():
    ctx = DistContext.from_env()
    assert (ctx.rank, ctx.world_size, ctx.distributed, ctx.is_main) == (0, 1, False, True)
    ctx.barrier()
    assert ctx.gather("x") == ["x"] and ctx.broadcast(3) == 3
    ctx.close()


# ----------------------------------------------------------------------------------------------------
# one process


@pytest.mark.parametrize("ahead", [False, True])
def test_single_process_encode_then_evaluate_encodes_nothing(bench_dir, tmp_path, monkeypatch, ahead):
    """Also with each group's call started while the one before runs (as for an encoder on a GPU)."""
    import mrbench.pipeline as pl

    monkeypatch.setattr(pl, "ENCODE_AHEAD", ahead)
    cache_dir = tmp_path / "cache"
    rep = encode_benchmark(bench_dir, "random", encoder_kwargs={"dim": 32}, cache_dir=cache_dir, batch_size=16)
    assert rep.world_size == 1 and rep.missing == 0 and rep.encoded == rep.units > 0 and rep.cache_hits == 0
    assert len(rep.ranks) == 1 and len(rep.ranks[0].shards) == 1  # the per-batch shards were merged
    assert [p.name for p in rep.cache_path.glob("shard-*.npz")] == rep.ranks[0].shards
    assert not list(rep.cache_path.glob(".*tmp"))

    warm = evaluate(bench_dir, "random", encoder_kwargs={"dim": 32}, cache=True, cache_dir=cache_dir)
    assert warm.data["cache"]["encoded"] == 0 and warm.data["cache"]["hits"] == warm.data["cache"]["items"]
    _assert_same_scores(warm, evaluate(bench_dir, "random", encoder_kwargs={"dim": 32}, cache=False))

    again = encode_benchmark(bench_dir, "random", encoder_kwargs={"dim": 32}, cache_dir=cache_dir)
    assert again.encoded == 0 and again.cache_hits == again.units and again.ranks[0].shards == []
    # other kwargs are another namespace: nothing cached there yet
    other = encode_benchmark(bench_dir, "random", cache_dir=cache_dir, tasks=["t2i"], grain_sensitivity=False,
                             merge=False, batch_size=8)
    assert other.encoded == other.units and len(other.ranks[0].shards) > 1


def test_encode_ahead_stores_what_one_call_after_the_other_stores(bench_dir, tmp_path, monkeypatch):
    """Calls started ahead (``ENCODE_AHEAD``) fill the cache with the same entries, progress and
    counts as calls one after the other; a group that fails closes the call started after it."""
    import threading

    import mrbench.pipeline as pl
    from mrbench.report.progress import NullReporter

    class Recorder(NullReporter):
        def __init__(self) -> None:
            self.done: dict[str, int] = {}

        def stage(self, label, total):
            import contextlib

            @contextlib.contextmanager
            def cm():
                self.done[label] = 0

                def adv(n: int = 1) -> None:
                    self.done[label] += n

                yield adv
            return cm()

    got = {}
    for ahead in (False, True):
        monkeypatch.setattr(pl, "ENCODE_AHEAD", ahead)
        rec = Recorder()
        rep = encode_benchmark(bench_dir, "contrastive-tiny", cache_dir=tmp_path / str(ahead), batch_size=8,
                               progress=rec)
        rows = {}
        for p in rep.cache_path.glob("shard-*.npz"):
            with np.load(p, allow_pickle=False) as z:
                rows.update(zip(z["keys"].tolist(), z["emb"].tolist()))
        got[ahead] = (rep.encoded, rep.cache_hits, rep.missing, rec.done, rows, rep.cache_path.name)
    assert got[True] == got[False] and got[True][0] >= len(got[True][4]) > 0 and got[True][2] == 0

    # a failure in one group: one error, the next group's started call closed (no thread left behind)
    import mrbench.encoders.harness as hz

    monkeypatch.setattr(pl, "ENCODE_AHEAD", True)
    real = hz.PendingEncode.result
    calls = []

    def failing(self, *a, **k):
        calls.append(1)
        if len(calls) == 2:  # (its own clean-up is result's; the call started after it is the caller's)
            self.close()
            raise RuntimeError("boom in group 2")
        return real(self, *a, **k)

    real_close = hz.PendingEncode.close
    consumed, closed_unconsumed = [], []  # the calls themselves (kept alive: an id could be reused)

    def result(self, *a, **k):
        consumed.append(self)
        return failing(self, *a, **k)

    def close(self):
        if not any(c is self for c in consumed):
            closed_unconsumed.append(self)
        return real_close(self)

    monkeypatch.setattr(hz.PendingEncode, "result", result)
    monkeypatch.setattr(hz.PendingEncode, "close", close)
    before = set(threading.enumerate())
    with pytest.raises(RuntimeError, match="boom in group 2"):
        encode_benchmark(bench_dir, "contrastive-tiny", cache_dir=tmp_path / "fail", batch_size=8)
    assert len(closed_unconsumed) == 1  # group 3's call, started while group 2 ran
    import time

    def left() -> list[str]:  # the calls' own threads still alive (pools shared by the process aside)
        return [t.name for t in set(threading.enumerate()) - before if t.name.startswith("mrbench-")]

    for _ in range(200):
        if not left():
            break
        time.sleep(0.05)
    assert not left()


def test_context_waits_for_every_rank_before_destroying_its_group_on_success(monkeypatch):
    """A rank that leaves while another still has a collective in flight on the group can make that
    one abort at exit: on success the group is destroyed after a barrier; after an error (a peer may be
    gone) at once; a failing barrier is ignored."""
    import torch.distributed as tdist

    calls: list[str] = []
    monkeypatch.setattr(tdist, "is_initialized", lambda: True)
    monkeypatch.setattr(tdist, "destroy_process_group", lambda *a, **k: calls.append("destroy"))

    fail = []

    def barrier(self, what="a barrier"):
        calls.append("barrier")
        if fail:
            raise RuntimeError("peer gone")

    monkeypatch.setattr(DistContext, "barrier", barrier)
    with DistContext(world_size=2, owns_group=True):
        pass
    assert calls == ["barrier", "destroy"]
    calls.clear()
    with pytest.raises(ValueError), DistContext(world_size=2, owns_group=True):
        raise ValueError("a rank's own error")
    assert calls == ["destroy"]
    calls.clear()
    fail.append(1)
    DistContext(world_size=2, owns_group=True).close(wait=True)
    assert calls == ["barrier", "destroy"]
    calls.clear()
    DistContext(world_size=2, owns_group=False).close(wait=True)  # a caller's group: left alone
    assert calls == []


def test_encode_refuses_uncacheable_encoders_and_bad_input(bench_dir, tmp_path):
    app = typer.Typer()
    app.command()(encode_cmd)
    run = CliRunner().invoke
    for args, pattern in [
        (["-b", str(bench_dir), "-e", "oracle"], "not cacheable"),
        (["-b", str(bench_dir), "--tasks", "nope"], "nope"),
        (["-b", str(tmp_path / "missing")], "missing"),
        (["-b", str(bench_dir), "-e", "no-such-encoder"], "no-such-encoder"),
        (["-b", str(bench_dir), "--encoder-kwargs", "{bad"], "not valid JSON"),
        (["-b", str(bench_dir), "--decode", "fork"], "--decode"),
        (["-b", str(bench_dir), "-e", "random", "-e", "random"], "twice"),
    ]:
        r = run(app, [*args, "--cache-dir", str(tmp_path / "c")])
        assert r.exit_code != 0, (args, r.output)
        # a first load of the benchmark in this MRBENCH_HOME says (wrapped) it checks the fingerprint first
        err = r.stderr.strip()
        if err.startswith("checking the fingerprint") and "\nerror: " in err:
            err = err[err.index("\nerror: ") + 1 :]
        assert err.startswith("error: ") and "\n" not in err and pattern in err, (args, err)
    r = run(app, ["--help"])
    assert r.exit_code == 0 and "torchrun" in r.stdout and "--nnodes" in r.stdout


def test_module_entry_point():
    """`python -m mrbench encode` once app.py registers the command (else the module's own entry)."""
    from mrbench.cli.app import app

    names = {c.name for c in app.registered_commands}
    args = ["-m", "mrbench", "encode"] if "encode" in names else ["-m", "mrbench.cli.encode"]
    r = subprocess.run([sys.executable, *args, "--help"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "torchrun" in r.stdout, r.stderr


# ----------------------------------------------------------------------------------------------------
# two ranks under torchrun (gloo, CPU)


@pytest.fixture(scope="module")
def torchrun_cache(bench_dir, tmp_path_factory) -> Path:
    from mrbench.cli.app import app

    tmp = tmp_path_factory.mktemp("torchrun")
    cache_dir = tmp / "cache"
    env = {k: v for k, v in os.environ.items() if k not in DIST_ENV}
    env.update(MRBENCH_HOME=str(tmp / "home"), MRBENCH_CACHE=str(tmp / "default-cache"), HF_HUB_OFFLINE="1",
               HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1")
    module = ["-m", "mrbench", "encode"] if "encode" in {c.name for c in app.registered_commands} \
        else ["-m", "mrbench.cli.encode"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", *module,
           "-b", str(bench_dir), "--cache-dir", str(cache_dir), "--batch-size", "16", "-q"]
    for e in ENCODERS:
        cmd += ["-e", e]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout
    for e in ENCODERS:
        assert f"{e}: " in out and "on 2 rank(s)" in out and "all cached" in out, out
    assert "rank 0 (" in out and "rank 1 (" in out and "next (finds every embedding cached): mrbench evaluate" in out
    assert out.count("rank 1 (") == len(ENCODERS)  # one summary per encoder, printed by rank 0 only
    assert "error" not in r.stderr.lower(), r.stderr
    return cache_dir


@pytest.mark.parametrize("encoder", ENCODERS)
def test_torchrun_two_ranks_fill_the_cache(torchrun_cache, bench_dir, encoder):
    enc = get_encoder(encoder)
    store = EmbeddingCache(torchrun_cache, cache_namespace(encoder, enc.meta.revision, {}))
    shards = _shard_keys(store.path)
    # each rank merged its batches into one shard: two files, written by two processes
    assert len(shards) == 2, sorted(shards)
    assert len({name.split("-")[2] for name in shards}) == 2  # shard-<time>-<pid>-<token>.npz
    a, b = shards.values()
    # every work item's key is there; the ranks' keys are disjoint except for content duplicates
    # (synth renders some identical images under two names: one key, listed as two items)
    keys, dups = _unit_keys(bench_dir, store)
    assert a | b == keys and a and b
    assert dups and a & b <= dups

    warm = evaluate(bench_dir, encoder, cache=True, cache_dir=torchrun_cache)
    assert warm.data["cache"]["encoded"] == 0
    assert warm.data["cache"]["hits"] == warm.data["cache"]["items"] > len(keys)
    _assert_same_scores(warm, evaluate(bench_dir, enc, cache=False))


# ----------------------------------------------------------------------------------------------------
# a rank that fails or hangs: the others end with one line, not torch's traceback

STALLING_ENCODER = """
import os, time
import numpy as np
from mrbench.encoders.base import EncoderMeta

class Stalling:
    \"\"\"Rank 1 raises (STALL=raise) or hangs (STALL=hang) on its first batch; rank 0 encodes.\"\"\"

    def __init__(self):
        self.meta = EncoderMeta(name="stalling", revision="v1", dim=8)

    def encode(self, items, *, role, task):
        if os.environ.get("RANK") == "1":
            if os.environ.get("STALL") == "raise":
                raise RuntimeError("injected failure")
            time.sleep(300)
        return np.random.default_rng(len(items)).standard_normal((len(items), 8)).astype(np.float32)
"""


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _two_ranks(bench_dir: Path, tmp_path: Path, env_by_rank: list[dict[str, str]], *, rank0_after: float = 0.0,
               timeout: float = 120, rank1_wait: float = 10) -> tuple[int | None, str, int | None, str]:
    """``python -m mrbench encode`` as ranks 0 and 1 of a gloo group, launched by hand (no torchrun,
    whose agent would kill the survivor as soon as the other rank exits) with the stalling encoder;
    rank 1 starts first and rank 0 ``rank0_after`` seconds later. Returns rank 0's exit code and
    stderr, then rank 1's (rank 1 still running ``rank1_wait`` s after rank 0 ended is killed: code
    ``None``)."""
    import time

    from mrbench.cli.app import app

    enc = tmp_path / "stalling.py"
    enc.write_text(STALLING_ENCODER)
    module = ["-m", "mrbench", "encode"] if "encode" in {c.name for c in app.registered_commands} \
        else ["-m", "mrbench.cli.encode"]
    cmd = [sys.executable, *module, "-b", str(bench_dir), "-e", f"{enc}:Stalling", "--cache-dir",
           str(tmp_path / "cache"), "--no-verify", "--no-sensitivity", "-q"]
    base = {k: v for k, v in os.environ.items() if k not in DIST_ENV and k != "MRBENCH_DIST_TIMEOUT"}
    base.update(MRBENCH_HOME=str(tmp_path / "home"), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", WORLD_SIZE="2",
                LOCAL_WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()))
    procs: dict[int, subprocess.Popen] = {}
    try:
        for rank in (1, 0):
            if rank == 0 and rank0_after:
                time.sleep(rank0_after)
            procs[rank] = subprocess.Popen(cmd, env={**base, **env_by_rank[rank], "RANK": str(rank), "LOCAL_RANK": str(rank)},
                                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        _, err0 = procs[0].communicate(timeout=timeout)
        try:
            _, err1 = procs[1].communicate(timeout=rank1_wait)
        except subprocess.TimeoutExpired:
            procs[1].kill()
            _, err1 = procs[1].communicate()
            return procs[0].returncode, err0, None, err1
        return procs[0].returncode, err0, procs[1].returncode, err1
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
                p.communicate()


def _one_error_line(stderr: str) -> str:
    assert "Traceback" not in stderr and "╭" not in stderr, stderr
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error: ")]
    assert len(errors) == 1 and not [ln for ln in lines if ln not in errors and "error" in ln.lower()], stderr
    return errors[0]


def test_rank_failure_ends_the_other_rank_with_one_line(bench_dir, tmp_path):
    code0, err0, code1, err1 = _two_ranks(bench_dir, tmp_path, [{"STALL": "raise"}] * 2)
    line1 = _one_error_line(err1)  # the failing rank's own error, as it was
    assert code1 == 2 and line1.startswith("error: rank 1: encoder ") and "injected failure" in line1, err1
    line0 = _one_error_line(err0)  # the survivor: one line, no gloo traceback
    assert code0 == 2, err0
    assert line0.startswith("error: another rank stopped while rank 0 waited at the ") and "re-run" in line0, err0


def test_dist_timeout_env_is_checked(bench_dir, tmp_path, monkeypatch):
    app = typer.Typer()
    app.command()(encode_cmd)
    for bad in ("soon", "0", "-5", "nan", "inf", "1e300"):
        monkeypatch.setenv("MRBENCH_DIST_TIMEOUT", bad)
        r = CliRunner().invoke(app, ["-b", str(bench_dir), "--cache-dir", str(tmp_path / "c"), "--no-verify", "-q"])
        err = r.stderr.strip()
        assert r.exit_code == 2 and err.startswith("error: environment variable MRBENCH_DIST_TIMEOUT=") \
            and "\n" not in err and repr(bad) in err, (bad, r.output)
        assert not (tmp_path / "c").exists()  # refused before any work
    monkeypatch.setenv("MRBENCH_DIST_TIMEOUT", " 90.5 ")
    with DistContext.from_env() as ctx:  # one process: checked, no group
        assert ctx.world_size == 1
    monkeypatch.setenv("MRBENCH_DIST_TIMEOUT", "x")
    with pytest.raises(MrbenchError, match="MRBENCH_DIST_TIMEOUT"):
        encode_benchmark(bench_dir, "random", cache_dir=tmp_path / "c")
    encode_benchmark(bench_dir, "random", cache_dir=tmp_path / "c", tasks=["i2t"], timeout_s=60)  # given: env unread


def test_hanging_rank_times_out_in_one_line(bench_dir, tmp_path):
    # rank 0 (tiny timeout) starts a second after rank 1, so it never waits for rank 1's start-up
    code0, err0, code1, _ = _two_ranks(bench_dir, tmp_path, [{"MRBENCH_DIST_TIMEOUT": "3"}, {"STALL": "hang"}],
                                       rank0_after=1.0, timeout=90, rank1_wait=0.5)
    line0 = _one_error_line(err0)
    assert code0 == 2 and code1 is None, err0  # rank 1 still hung: killed by the test
    assert line0.startswith("error: timed out after 3 s on rank 0 at the barrier after encoding: "), err0
    assert "MRBENCH_DIST_TIMEOUT=<seconds>" in line0, err0


def test_collective_errors_peer_and_timeout_wrapped_local_bugs_kept():
    """A communication failure of a collective becomes a one-line MrbenchError with torch's error as
    its cause; anything else (a local bug) propagates as it is."""
    ctx = DistContext(rank=3, world_size=4, timeout_s=5.0)

    def fail(e):
        def f():
            raise e
        return f

    gone = RuntimeError("[third_party/gloo/gloo/transport/tcp/pair.cc:561] Connection closed by peer [127.0.0.1]:1")
    with pytest.raises(PeerStoppedError, match="another rank stopped while rank 3 waited at the X") as ei:
        ctx._collective("the X", fail(gone))
    assert ei.value.__cause__ is gone and isinstance(ei.value, MrbenchError) and "\n" not in str(ei.value)
    late = RuntimeError("[gloo/transport/tcp/unbound_buffer.cc:78] Timed out waiting 5000ms for recv operation")
    with pytest.raises(CollectiveTimeoutError, match="timed out after 5 s on rank 3 at the X") as ei:
        ctx._collective("the X", fail(late))
    assert ei.value.__cause__ is late and "MRBENCH_DIST_TIMEOUT" in str(ei.value)
    for bug in (TypeError("cannot pickle '_thread.lock' object"), RuntimeError("expected a tensor"),
                ValueError("bad rank")):
        with pytest.raises(type(bug)) as ei:
            ctx._collective("the X", fail(bug))
        assert ei.value is bug
    assert ctx._collective("the X", lambda: 7) == 7


# ----------------------------------------------------------------------------------------------------
# EmbeddingCache.merge_shards


def test_merge_shards_compacts_and_keeps_the_last_row(tmp_path):
    from mrbench.encoders.cache import cache_key

    keys = [cache_key("ns", "query", None, str(i)) for i in range(6)]
    c = EmbeddingCache(tmp_path, "enc@r1")
    other = c.put_many(keys[5:], np.full((1, 4), 5, np.float32))  # another writer's: left alone
    p1 = c.put_many(keys[:3], np.arange(12, dtype=np.float32).reshape(3, 4))
    p2 = c.put_many(keys[2:5], np.ones((3, 4), np.float32) * 7)  # keys[2] again: this row wins
    assert c.merge_shards([p1]) == [p1] and c.merge_shards([]) == []
    written = c.stats.written
    new = c.merge_shards([p1, p2])
    assert len(new) == 1 and not p1.exists() and not p2.exists() and other.exists()
    assert c.stats.written == written
    for cache in (c, EmbeddingCache(tmp_path, "enc@r1")):  # this instance's index and a fresh one
        mask, emb = cache.get_many(keys)
        assert mask.all()
        np.testing.assert_array_equal(emb[:2], np.arange(8, dtype=np.float32).reshape(2, 4))
        assert (emb[2:5] == 7).all() and (emb[5] == 5).all()
    assert len(list(c.path.glob("shard-*.npz"))) == 2
    q1 = c.put_many(keys[:2], np.zeros((2, 4), np.float32))
    q2 = c.put_many(keys[2:5], np.zeros((3, 4), np.float32))
    assert [len(np.load(p)["keys"]) for p in c.merge_shards([q1, q2], max_rows=2)] == [2, 2, 1]
    with pytest.raises(ValueError):
        c.merge_shards([tmp_path / "elsewhere.npz", q1])
    with pytest.raises(ValueError):
        c.merge_shards([q1], max_rows=0)


def test_merge_shards_streams_rows(tmp_path, monkeypatch):
    """A merge reads its shards through memory maps and writes the new shard part by part: its
    traced (NumPy) memory stays near one part plus the keys, not the rows merged (a single-process
    ``mrbench encode`` of M-BEIR's 5.6M-candidate pool at D = 768 would otherwise hold 17 GB).
    Rows, keys and the last-occurrence rule are those of the shards."""
    import tracemalloc

    from mrbench.encoders import cache as cache_mod
    from mrbench.encoders.cache import cache_key

    monkeypatch.setattr(cache_mod, "_CHECK_BYTES", 1 << 20)  # 1 MiB parts
    d, rows, n_shards = 1024, 1024, 6  # 4 MiB per shard
    c = EmbeddingCache(tmp_path, "enc@r1")
    rng = np.random.default_rng(0)
    keys = [cache_key("ns", "query", None, str(i)) for i in range(rows * n_shards)]
    emb = rng.standard_normal((rows * n_shards, d), dtype=np.float32)
    paths = [c.put_many(keys[i * rows : (i + 1) * rows], emb[i * rows : (i + 1) * rows]) for i in range(n_shards)]
    again = c.put_many(keys[:3], emb[:3] * 2)  # the same keys again, later: these rows win
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        new = c.merge_shards([*paths, again], max_rows=rows * 4)
        peak = tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()
    assert peak < 2 * rows * d * 4  # two shards' worth at most (the keys, their index, a 1 MiB part)
    assert [len(np.load(p)["keys"]) for p in new] == [rows * 4, rows * 2]
    want = emb.copy()
    want[:3] *= 2
    for cache in (c, EmbeddingCache(tmp_path, "enc@r1")):
        mask, got = cache.get_many(keys)
        assert mask.all()
        np.testing.assert_array_equal(got, want)


def test_merge_of_many_shards_within_the_descriptor_limit(tmp_path, caplog):
    """A merge maps one source shard at a time: merging more shards than the process may open files
    (a rank of a large `mrbench encode` writes one per 4,096 rows) merges them all, with no warning."""
    import logging
    import os
    import resource

    from mrbench.encoders.cache import cache_key

    c = EmbeddingCache(tmp_path, "enc@r1")
    keys = [cache_key("ns", "query", None, str(i)) for i in range(600)]
    emb = np.arange(600 * 3, dtype=np.float32).reshape(600, 3)
    paths = [c.put_many(keys[i : i + 2], emb[i : i + 2]) for i in range(0, 600, 2)]
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    open_now = len(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else 64
    resource.setrlimit(resource.RLIMIT_NOFILE, (open_now + 40, hard))  # far fewer than the 300 shards
    try:
        with caplog.at_level(logging.WARNING, logger="mrbench.encoders.cache"):
            new = c.merge_shards(paths)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert not caplog.records and len(new) == 1 and not any(p.exists() for p in paths)
    mask, got = EmbeddingCache(tmp_path, "enc@r1").get_many(keys)
    assert mask.all()
    np.testing.assert_array_equal(got, emb)


def test_context_reuses_an_existing_process_group(bench_dir, tmp_path):
    """Called from a script that already set up torch.distributed (accelerate, torchrun): that group
    is reused and left alone."""
    import socket

    import torch.distributed as dist

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    try:
        with DistContext.from_env() as ctx:
            assert (ctx.world_size, ctx.backend, ctx.owns_group) == (1, "gloo", False)
            rep = encode_benchmark(bench_dir, "random", cache_dir=tmp_path / "c", tasks=["i2t"], dist=ctx)
            assert rep.missing == 0 and rep.encoded == rep.units
        assert dist.is_initialized()
    finally:
        dist.destroy_process_group()


def test_encode_refuses_an_instance_with_the_default_revision(bench_dir, tmp_path):
    """evaluate does not cache an instance whose meta.revision is the default, so encoding it ahead is refused;
    an explicit revision is encoded, and evaluate then finds it all cached."""
    import dataclasses

    from mrbench.encoders.registry import get_encoder
    from mrbench.errors import EncoderError

    enc = get_encoder("random", dim=16)
    enc.meta = dataclasses.replace(enc.meta, name="mine", revision="none")
    with pytest.raises(EncoderError, match="default meta.revision 'none'.*set meta.revision"):
        encode_benchmark(bench_dir, enc, cache_dir=tmp_path / "c", tasks=["t2i"], grain_sensitivity=False)
    assert not (tmp_path / "c").exists() or not any((tmp_path / "c").rglob("shard-*"))
    enc.meta = dataclasses.replace(enc.meta, revision="v1")
    rep = encode_benchmark(bench_dir, enc, cache_dir=tmp_path / "c", tasks=["t2i"], grain_sensitivity=False)
    assert rep.encoded == rep.units > 0
    warm = evaluate(bench_dir, enc, tasks=["t2i"], cache=True, cache_dir=tmp_path / "c", grain_sensitivity=False)
    assert warm.data["cache"]["encoded"] == 0
