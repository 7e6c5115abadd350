"""On-disk embedding cache: round trip, keys, corrupt shards, dimension conflicts, resume after interrupt."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from mrbench.encoders.cache import (
    EmbeddingCache,
    cache_key,
    cache_namespace,
    default_cache_root,
    kwargs_digest,
)
from mrbench.encoders.harness import EncodeStats, encode_items
from mrbench.errors import EncoderError

FIXTURES = Path(__file__).parent / "fixtures"


from fixtures import encbench as eb  # noqa: E402  (tests/ is on sys.path under pytest)


def _keys(n: int, tag: str = "x") -> list[str]:
    return [cache_key("ns", "query", None, f"{tag}{i}") for i in range(n)]


def test_round_trip_and_stats(tmp_path):
    c = EmbeddingCache(tmp_path, "enc@r1")
    keys = _keys(5)
    emb = np.arange(20, dtype=np.float32).reshape(5, 4)
    mask, got = c.get_many(keys)
    assert not mask.any() and got is None and c.stats.misses == 5
    shard = c.put_many(keys[:3], emb[:3])
    assert shard is not None and shard.suffix == ".npz" and not list(c.path.glob(".*tmp"))
    with np.load(shard, allow_pickle=False) as z:
        assert z["keys"].dtype.kind == "U" and z["emb"].dtype == np.float32

    fresh = EmbeddingCache(tmp_path, "enc@r1")  # index rebuilt from disk
    mask, got = fresh.get_many(keys)
    assert mask.tolist() == [True, True, True, False, False]
    np.testing.assert_array_equal(got[:3], emb[:3])
    assert np.all(got[3:] == 0)
    assert (fresh.stats.hits, fresh.stats.misses) == (3, 2)
    assert fresh.dim == 4 and len(fresh) == 3 and keys[0] in fresh
    fresh.put_many(keys[3:], emb[3:])  # one new shard per call
    assert len(list(fresh.path.glob("shard-*.npz"))) == 2
    mask, got = EmbeddingCache(tmp_path, "enc@r1").get_many(keys[::-1])
    assert mask.all()
    np.testing.assert_array_equal(got, emb[::-1])
    assert fresh.put_many([], np.zeros((0, 4), np.float32)) is None


def test_namespace_directory_is_slugged(tmp_path):
    c = EmbeddingCache(tmp_path, "openclip:ViT-B-32/laion2b@abc#123")
    assert c.path.parent == tmp_path and "/" not in c.path.name and ":" not in c.path.name
    other = EmbeddingCache(tmp_path, "openclip:ViT-B-32_laion2b@abc#123")
    assert other.path != c.path  # a lossy slug gets a hash of the raw namespace


def test_keys_depend_on_role_instruction_namespace_content():
    base = cache_key("m@r1", "query", None, "h")
    assert cache_key("m@r1", "query", "", "h") == base  # no instruction == empty instruction
    variants = {
        cache_key("m@r2", "query", None, "h"),
        cache_key("m@r1", "candidate", None, "h"),
        cache_key("m@r1", "query", "Find it", "h"),
        cache_key("m@r1", "query", None, "h2"),
    }
    assert base not in variants and len(variants) == 4
    assert len(base) == 64
    assert cache_namespace("random", "v1") == "random@v1"
    assert cache_namespace("random", "v1", {"dim": 8}) != cache_namespace("random", "v1", {"dim": 16})
    assert kwargs_digest({"a": 1, "b": 2}) == kwargs_digest({"b": 2, "a": 1}) and kwargs_digest({}) == ""


def test_keys_of_many_items_equal_one_by_one(tmp_path):
    c = EmbeddingCache(tmp_path, "enc:é@r1#ab")
    hashes = ["h", "", "ü" * 3, "a" * 64]
    for role, instruction in (("query", None), ("candidate", ""), ("query", "Finde das Bild — schnell")):
        assert c.keys(role, instruction, hashes) == [c.key(role, instruction, h) for h in hashes]
    assert c.keys("query", None, []) == []


def test_revision_change_misses(tmp_path):
    bench = eb.text_bench(4)
    task = bench.tasks[0]
    ns1, ns2 = cache_namespace("scripted", "r1"), cache_namespace("scripted", "r2")
    enc = eb.ScriptedEncoder(lambda items, role, k: eb.hashed(items))
    encode_items(enc, task.queries, role="query", task=task, bench=bench, cache=EmbeddingCache(tmp_path, ns1))
    c2 = EmbeddingCache(tmp_path, ns2)
    encode_items(enc, task.queries, role="query", task=task, bench=bench, cache=c2)
    assert c2.stats.hits == 0 and len(enc.calls) == 2
    c1 = EmbeddingCache(tmp_path, ns1)
    encode_items(enc, task.queries, role="query", task=task, bench=bench, cache=c1)
    assert c1.stats.hits == 4 and len(enc.calls) == 2
    encode_items(enc, task.queries, role="candidate", task=task, bench=bench, cache=c1)  # other role
    assert len(enc.calls) == 3


def test_instruction_change_misses(tmp_path):
    enc = eb.ScriptedEncoder(lambda items, role, k: eb.hashed(items))
    cache = EmbeddingCache(tmp_path, "scripted@r1")
    for instr, expect_calls in ((None, 1), ("Find it", 2), (None, 2), ("Find it", 2)):
        bench = eb.text_bench(3, query_instruction=instr)
        task = bench.tasks[0]
        encode_items(enc, task.queries, role="query", task=task, bench=bench, cache=cache)
        assert len(enc.calls) == expect_calls


def test_corrupt_shard_skipped_with_one_warning(tmp_path, caplog):
    c = EmbeddingCache(tmp_path, "enc@r1")
    keys = _keys(4)
    emb = np.ones((4, 3), np.float32)
    c.put_many(keys[:2], emb[:2])
    good2 = c.put_many(keys[2:], emb[2:])
    (c.path / "shard-00000000000000000000-garbage.npz").write_bytes(b"not a zip file at all")
    # a truncated copy of a real shard: the header may parse, the data not
    data = good2.read_bytes()
    (c.path / "shard-99999999999999999999-trunc.npz").write_bytes(data[: len(data) // 2])
    with caplog.at_level(logging.WARNING, logger="mrbench.encoders.cache"):
        fresh = EmbeddingCache(tmp_path, "enc@r1")
        mask, got = fresh.get_many(keys)
    assert mask.all()
    np.testing.assert_array_equal(got, emb)
    msgs = [r.getMessage() for r in caplog.records]
    assert len(msgs) == 2 and all("skipping corrupt shard" in m and "\n" not in m for m in msgs)


def test_corrupt_shard_data_found_late(tmp_path, caplog):
    """A shard whose header is fine but whose data is broken is dropped when first read: its keys miss."""
    c = EmbeddingCache(tmp_path, "enc@r1")
    keys = _keys(3)
    shard = c.put_many(keys, np.ones((3, 2), np.float32))
    with np.load(shard) as z:
        k = z["keys"]
    bad = np.ones((3, 2), np.float32)
    bad[1, 1] = np.nan
    with open(shard, "wb") as f:
        np.savez(f, keys=k, emb=bad)
    with caplog.at_level(logging.WARNING, logger="mrbench.encoders.cache"):
        fresh = EmbeddingCache(tmp_path, "enc@r1")
        mask, got = fresh.get_many(keys)
    assert not mask.any() and got is None and len(caplog.records) == 1 and len(fresh) == 0


def test_flipped_data_byte_fails_the_crc(tmp_path, caplog):
    """Embeddings are read through a memory map, not through zipfile: a changed data byte that still
    makes a finite float is caught by the member's CRC-32, as zipfile's own read caught it."""
    c = EmbeddingCache(tmp_path, "enc@r1")
    keys = _keys(64)
    emb = np.full((64, 64), 0.25, np.float32)  # 16 KiB: past what the key index's header read takes in
    shard = c.put_many(keys, emb)
    data = bytearray(shard.read_bytes())
    at = bytes(data).index(emb.tobytes())  # the member's data (stored, uncompressed)
    data[at + 8193] ^= 0x01  # 0.25 with a low mantissa bit flipped: still finite
    shard.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, logger="mrbench.encoders.cache"):
        fresh = EmbeddingCache(tmp_path, "enc@r1")
        mask, got = fresh.get_many(keys[:1])  # a row other than the damaged one: the whole shard is checked
    assert not mask.any() and got is None and len(fresh) == 0
    assert [r.getMessage() for r in caplog.records] == [f"embedding cache: skipping corrupt shard {shard} ('emb' fails "
                                                        "its CRC-32 check); delete it to silence this"]


def test_compressed_shard_is_read(tmp_path):
    """A shard another tool wrote with ``np.savez_compressed`` cannot be mapped: it is read whole."""
    c = EmbeddingCache(tmp_path, "enc@r1")
    keys = _keys(3)
    emb = np.arange(6, dtype=np.float32).reshape(3, 2)
    c.path.mkdir(parents=True)
    with open(c.path / "shard-00000000000000000001-z.npz", "wb") as f:
        np.savez_compressed(f, keys=np.asarray(keys, dtype="<U64"), emb=emb)
    mask, got = EmbeddingCache(tmp_path, "enc@r1").get_many(keys[::-1])
    assert mask.all()
    np.testing.assert_array_equal(got, emb[::-1])


def test_cache_holds_no_embeddings_between_calls(tmp_path):
    """The cache keeps its key index only: what it writes or reads stays on disk (read through
    memory maps), so a pool larger than memory can stream through it (``--stream-pool``). Traced
    (NumPy) memory: nothing kept after put_many or get_many, and a lookup's peak is its result plus
    a bounded check buffer, not the shards it reads."""
    import tracemalloc

    d, rows = 1024, 1024  # 4 MiB per shard, ~0.2 MiB of key index
    c = EmbeddingCache(tmp_path, "enc@r1")
    rng = np.random.default_rng(0)
    all_keys, all_emb = [], []
    for s in range(6):
        keys = _keys(rows, f"s{s}-")
        emb = rng.standard_normal((rows, d), dtype=np.float32)
        all_keys += keys
        all_emb.append(emb)
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        for s in range(6):
            c.put_many(all_keys[s * rows : (s + 1) * rows], all_emb[s])
        kept_after_put = tracemalloc.get_traced_memory()[0] - base
        want = [k for i, k in enumerate(all_keys) if i % 3 == 0]  # a third of every shard
        tracemalloc.reset_peak()
        before = tracemalloc.get_traced_memory()[0]
        mask, got = c.get_many(want)
        now, peak = tracemalloc.get_traced_memory()
        result = got.nbytes + mask.nbytes
        kept_after_get = now - before - result
        del got
    finally:
        tracemalloc.stop()
    shard_bytes = rows * d * 4
    assert kept_after_put < 6 * shard_bytes // 8  # the key index, no copy of the shards
    assert kept_after_get < shard_bytes // 8
    assert peak - before < result + shard_bytes  # no shard read whole (on top of its gathered rows)
    np.testing.assert_array_equal(EmbeddingCache(tmp_path, "enc@r1").get_many(want)[1],
                                  np.concatenate(all_emb)[::3])


def test_lookup_over_many_shards_within_the_descriptor_limit(tmp_path, caplog):
    """A lookup maps one shard at a time: over more shards than the process may open files (an
    unmerged namespace cuts a shard per 4,096 rows: ~250 per million items) every key is still found."""
    import os
    import resource

    c = EmbeddingCache(tmp_path, "enc@r1")
    keys = _keys(600)
    emb = np.arange(600 * 2, dtype=np.float32).reshape(600, 2)
    for i in range(0, 600, 2):
        c.put_many(keys[i : i + 2], emb[i : i + 2])
    fresh = EmbeddingCache(tmp_path, "enc@r1")
    len(fresh)  # the index is built (every shard's keys read) before the limit is lowered
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    open_now = len(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else 64
    resource.setrlimit(resource.RLIMIT_NOFILE, (open_now + 40, hard))  # far fewer than the 300 shards
    try:
        with caplog.at_level(logging.WARNING, logger="mrbench.encoders.cache"):
            for _ in range(2):
                mask, got = fresh.get_many(keys)
                assert mask.all()
                np.testing.assert_array_equal(got, emb)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert not caplog.records


def _one_shard_read_once(tmp_path, n: int, d: int):
    """``(keys, emb, shard, instance)``: one shard of ``n`` rows of 0.5 written, then read (so checked)
    once through a second instance."""
    keys = _keys(n)
    emb = np.full((n, d), 0.5, np.float32)
    shard = EmbeddingCache(tmp_path, "enc@r1").put_many(keys, emb)
    fresh = EmbeddingCache(tmp_path, "enc@r1")
    assert fresh.get_many(keys)[0].all()
    return keys, emb, shard, fresh


def test_shard_changed_after_its_check_is_checked_again(tmp_path, caplog):
    """A shard is checked in full once per instance, and again when its file changes: a flipped
    data byte written after the first lookup is caught by the CRC on the next one."""
    import os

    keys, emb, shard, fresh = _one_shard_read_once(tmp_path, 64, 64)
    data = bytearray(shard.read_bytes())
    data[bytes(data).index(emb.tobytes()) + 4097] ^= 0x01  # still finite
    st = os.stat(shard)
    shard.write_bytes(bytes(data))
    os.utime(shard, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # (a later write: a timestamp tick on)
    with caplog.at_level(logging.WARNING, logger="mrbench.encoders.cache"):
        mask, got = fresh.get_many(keys)
    assert not mask.any() and got is None
    assert [r.getMessage() for r in caplog.records] == [f"embedding cache: skipping corrupt shard {shard} ('emb' fails "
                                                        "its CRC-32 check); delete it to silence this"]


def test_nan_written_within_a_timestamp_tick_is_caught(tmp_path, caplog):
    """A shard rewritten in place without a visible change (same inode, size and modification time:
    a write within one timestamp tick of the check) is not checked again, but the rows a lookup
    gathers are: a NaN is one warning line and misses, never an embedding."""
    import os

    keys, emb, shard, fresh = _one_shard_read_once(tmp_path, 8, 4)
    st = os.stat(shard)
    bad = emb.copy()
    bad[3, 1] = np.nan
    data = shard.read_bytes().replace(emb.tobytes(), bad.tobytes())
    with open(shard, "r+b") as f:  # in place: the same inode
        f.write(data)
    os.utime(shard, ns=(st.st_atime_ns, st.st_mtime_ns))
    with caplog.at_level(logging.WARNING, logger="mrbench.encoders.cache"):
        mask, got = fresh.get_many(keys)
    assert not mask.any() and got is None and len(fresh) == 0
    assert len(caplog.records) == 1 and "'emb' holds NaN/Inf" in caplog.records[0].getMessage()


def test_dimension_conflict(tmp_path):
    c = EmbeddingCache(tmp_path, "enc@r1")
    c.put_many(_keys(2), np.ones((2, 4), np.float32))
    with pytest.raises(EncoderError, match="the batch being written holds dimension 8 but a batch written earlier holds 4"):
        c.put_many(_keys(2, "y"), np.ones((2, 8), np.float32))
    # two shards on disk that disagree: fatal when the index is built
    with open(c.path / "shard-99999999999999999999-other.npz", "wb") as f:
        np.savez(f, keys=np.asarray(_keys(1, "z"), dtype="<U64"), emb=np.ones((1, 8), np.float32))
    with pytest.raises(EncoderError, match=r"mixes encoders .* delete"):
        EmbeddingCache(tmp_path, "enc@r1").get_many(_keys(1))


def test_default_root(monkeypatch, tmp_path):
    monkeypatch.setenv("MRBENCH_CACHE", str(tmp_path / "c"))
    assert default_cache_root() == tmp_path / "c"
    monkeypatch.delenv("MRBENCH_CACHE")
    monkeypatch.setenv("MRBENCH_HOME", str(tmp_path / "home"))
    assert default_cache_root() == tmp_path / "home" / "embeddings"
    monkeypatch.delenv("MRBENCH_HOME")
    assert default_cache_root() == Path.home() / ".cache" / "mrbench" / "embeddings"


def test_resume_after_interrupt(tmp_path):
    """An encoder dies on its 3rd batch; the re-run encodes only what the first run did not store."""
    bench = eb.text_bench(10)
    task = bench.tasks[0]

    def dies_on_third(items, role, k):
        if k == 2:
            raise KeyboardInterrupt  # simulated Ctrl-C in the middle of a run
        return eb.hashed(items)

    cache = EmbeddingCache(tmp_path, "scripted@r1")
    first = eb.ScriptedEncoder(dies_on_third, batch_size=3)
    with pytest.raises(KeyboardInterrupt):
        encode_items(first, task.queries, role="query", task=task, bench=bench, cache=cache)
    assert [len(c) for c in first.calls] == [3, 3, 3]
    assert not list(cache.path.glob(".*tmp"))

    second = eb.ScriptedEncoder(lambda items, role, k: eb.hashed(items), batch_size=3)
    stats = EncodeStats()
    seen: list[int] = []
    resumed = encode_items(second, task.queries, role="query", task=task, bench=bench,
                           cache=EmbeddingCache(tmp_path, "scripted@r1"), stats=stats, progress=seen.append)
    assert second.calls == [["q6", "q7", "q8"], ["q9"]]
    assert (stats.items, stats.cache_hits, stats.encoded, stats.batches) == (10, 6, 4, 2)
    assert seen == [6, 3, 1]

    plain = encode_items(eb.ScriptedEncoder(lambda items, role, k: eb.hashed(items)), task.queries,
                         role="query", task=task, bench=bench)
    np.testing.assert_array_equal(resumed, plain)


def test_cache_dim_vs_meta_dim(tmp_path):
    bench = eb.text_bench(3)
    task = bench.tasks[0]
    cache = EmbeddingCache(tmp_path, "scripted@r1")
    encode_items(eb.ScriptedEncoder(lambda items, role, k: eb.hashed(items, 8)), task.queries, role="query",
                 task=task, bench=bench, cache=cache)
    with pytest.raises(EncoderError, match="meta.dim is 16"):
        encode_items(eb.ScriptedEncoder(lambda items, role, k: eb.hashed(items, 16), dim=16), task.queries,
                     role="query", task=task, bench=bench, cache=EmbeddingCache(tmp_path, "scripted@r1"))


def test_encoded_batches_are_written_in_few_shards(tmp_path, monkeypatch, caplog):
    """encode_items collects batches and writes one shard per CACHE_FLUSH_ROWS rows (and at the end);
    when a batch fails, what came before it is still written, and the batch's own error is raised
    even if that last write fails."""
    import mrbench.encoders.harness as harness

    bench = eb.text_bench(10)
    task = bench.tasks[0]
    cache = EmbeddingCache(tmp_path, "scripted@r1")
    encode_items(eb.ScriptedEncoder(lambda items, role, k: eb.hashed(items), batch_size=3), task.queries,
                 role="query", task=task, bench=bench, cache=cache)
    assert len(list(cache.path.glob("shard-*.npz"))) == 1  # 4 batches, one shard

    monkeypatch.setattr(harness, "CACHE_FLUSH_ROWS", 4)
    other = EmbeddingCache(tmp_path, "scripted@r2")
    encode_items(eb.ScriptedEncoder(lambda items, role, k: eb.hashed(items), batch_size=3), task.queries,
                 role="query", task=task, bench=bench, cache=other)
    shards = sorted(other.path.glob("shard-*.npz"))
    assert [len(np.load(p)["keys"]) for p in shards] == [6, 4]

    def dies_on_second(items, role, k):
        if k == 1:
            raise RuntimeError("model exploded")
        return eb.hashed(items)

    third = EmbeddingCache(tmp_path, "scripted@r3")
    with pytest.raises(EncoderError, match="model exploded") as e:  # the encoder's own error, named in one line
        encode_items(eb.ScriptedEncoder(dies_on_second, batch_size=3), task.queries, role="query", task=task,
                     bench=bench, cache=third)
    assert isinstance(e.value.__cause__, RuntimeError)
    assert [len(np.load(p)["keys"]) for p in third.path.glob("shard-*.npz")] == [3]

    def refuse(*a, **k):
        raise OSError("disk full")

    fourth = EmbeddingCache(tmp_path, "scripted@r4")
    monkeypatch.setattr(fourth, "put_many", refuse)
    with caplog.at_level(logging.WARNING), pytest.raises(EncoderError, match="model exploded"):
        encode_items(eb.ScriptedEncoder(dies_on_second, batch_size=3), task.queries, role="query", task=task,
                     bench=bench, cache=fourth)
    assert any("could not write 3 encoded embeddings to the cache: disk full" in r.getMessage() for r in caplog.records)


def test_background_cache_write_errors_are_raised(tmp_path, monkeypatch):
    """Shards are written by a background thread; a write that fails there fails encode_items (no
    silent loss), and every shard is on disk when encode_items returns."""
    import mrbench.encoders.harness as harness

    monkeypatch.setattr(harness, "CACHE_FLUSH_ROWS", 3)
    bench = eb.text_bench(10)
    task = bench.tasks[0]
    ok = EmbeddingCache(tmp_path, "scripted@ok")
    encode_items(eb.ScriptedEncoder(lambda items, role, k: eb.hashed(items), batch_size=3), task.queries,
                 role="query", task=task, bench=bench, cache=ok)
    assert sorted(len(np.load(p)["keys"]) for p in ok.path.glob("shard-*.npz")) == [1, 3, 3, 3]
    assert EmbeddingCache(tmp_path, "scripted@ok").get_many([ok.key("query", None, "nothing")])[0].tolist() == [False]

    bad = EmbeddingCache(tmp_path, "scripted@bad")
    calls = []

    def fails_second(keys, emb):
        calls.append(len(keys))
        if len(calls) == 2:
            raise OSError("disk full")
        return EmbeddingCache.put_many(bad, keys, emb)

    monkeypatch.setattr(bad, "put_many", fails_second)
    with pytest.raises(OSError, match="disk full"):
        encode_items(eb.ScriptedEncoder(lambda items, role, k: eb.hashed(items), batch_size=3), task.queries,
                     role="query", task=task, bench=bench, cache=bad)


class _Seeded:
    """An encoder instance whose output depends on a constructor seed its meta does not show."""

    def __init__(self, seed: int, revision: str | None = None):
        from mrbench.encoders.base import EncoderMeta

        extra = {"revision": revision} if revision is not None else {}
        self.meta = EncoderMeta(name="seeded", dim=8, needs_pixels=False, **extra)
        self.seed = seed
        self.calls = 0

    def encode(self, items, *, role, task):
        self.calls += 1
        rng = np.random.default_rng([self.seed, len(items)])
        return rng.standard_normal((len(items), 8)).astype(np.float32)


def test_an_instance_with_the_default_revision_is_not_cached(tmp_path, caplog):
    """Two instances of the same name and revision "none" shared the cache: the second was served the
    first one's embeddings. Now such an instance reads and writes no cache, with one warning line."""
    import mrbench

    cache_dir = tmp_path / "emb"
    kw = dict(tasks=["t2i"], grain_sensitivity=False, cache_dir=cache_dir)
    with caplog.at_level(logging.WARNING, logger="mrbench"):
        a = mrbench.evaluate("mrbench-synth-tiny", _Seeded(1), **kw)
    warned = [r.getMessage() for r in caplog.records if "meta.revision" in r.getMessage()]
    assert len(warned) == 1 and "\n" not in warned[0] and "'seeded'" in warned[0] and "not cached" in warned[0]
    assert not any(p.is_file() for p in cache_dir.rglob("*"))  # nothing written
    assert a.data["cache"]["hits"] == 0 and a.data["settings"]["cache"] is False
    second = _Seeded(2)
    b = mrbench.evaluate("mrbench-synth-tiny", second, **kw)
    assert b.data["cache"]["hits"] == 0 and second.calls > 0
    assert not np.array_equal(a.per_query["first_rank"].to_numpy(), b.per_query["first_rank"].to_numpy())

    # an explicit revision keeps caching, keyed by name and revision
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="mrbench"):
        c = mrbench.evaluate("mrbench-synth-tiny", _Seeded(1, revision="s1"), **kw)
    assert not [r for r in caplog.records if "meta.revision" in r.getMessage()]
    assert c.data["settings"]["cache"] is True and c.data["cache"]["encoded"] > 0
    again = _Seeded(1, revision="s1")
    d = mrbench.evaluate("mrbench-synth-tiny", again, **kw)
    assert d.data["cache"]["hits"] == d.data["cache"]["items"] and again.calls == 0
    assert c.scores == d.scores
