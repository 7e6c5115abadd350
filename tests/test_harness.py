"""Encoding harness: content hashes, instructions, image decoding, batching and output validation."""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import numpy as np
import pytest

from mrbench.data.schema import Benchmark, Candidate, Query, Task
from mrbench.encoders.harness import (
    EncodeStats,
    check_dims,
    encode_items,
    item_content_hash,
    task_info,
    validate_embeddings,
)
from mrbench.errors import BenchmarkError, EncoderError

FIXTURES = Path(__file__).parent / "fixtures"


from fixtures import encbench as eb  # noqa: E402  (tests/ is on sys.path under pytest)


def _enc(fn, **kw):
    return eb.ScriptedEncoder(fn, **kw)


def _run(enc, n=10, role="query", **kw):
    bench = eb.text_bench(n)
    task = bench.tasks[0]
    items = task.queries if role == "query" else task.candidates
    return encode_items(enc, items, role=role, task=task, bench=bench, **kw)


# ---------------------------------------------------------------------------------------------------
# content hashes, instructions, task info


def test_item_content_hash_definition_is_pinned(tmp_path):
    """Embedding-cache keys depend on it: sha256 over the version, the text's UTF-8 length and bytes,
    and the image file's hex digest (written out here independently of the implementation)."""
    import hashlib

    img = tmp_path / "a.bin"
    img.write_bytes(b"\x89PNG pixels")
    d = hashlib.sha256(img.read_bytes()).hexdigest()
    for text in (None, "", "a red dog", "caf\u00e9 \u2603"):
        for path, digest in ((None, None), (img, d)):
            t = b"\x00T-" if text is None else b"\x00T%d:" % len(text.encode()) + text.encode()
            i = b"\x00I-" if digest is None else b"\x00I" + digest.encode()
            assert item_content_hash(text, path) == hashlib.sha256(b"mrbench-item-v1" + t + i).hexdigest()


def test_item_content_hash(tmp_path):
    a, b = tmp_path / "a.png", tmp_path / "sub" / "b.png"
    b.parent.mkdir()
    a.write_bytes(b"same bytes")
    b.write_bytes(b"same bytes")
    assert item_content_hash("x", a) == item_content_hash("x", b)  # bytes, not paths
    assert item_content_hash(None, None) != item_content_hash("", None)
    assert item_content_hash("x", None) != item_content_hash("x", a)
    assert item_content_hash("ab", None) != item_content_hash("a", None)
    before = item_content_hash(None, a)
    a.write_bytes(b"other bytes, longer")
    os.utime(a, ns=(1, 1))
    assert item_content_hash(None, a) != before  # memo keyed by mtime and size
    with pytest.raises(BenchmarkError, match="cannot read image"):
        item_content_hash(None, tmp_path / "missing.png")


def test_hash_warmer_and_chunked_hashing(tmp_path, monkeypatch):
    """HashWarmer memoises file digests in the background (skipping unreadable files); _hash_items
    gives the same hashes with a pool (files hashed in chunks) as inline, and names a missing file."""
    from concurrent.futures import ThreadPoolExecutor

    import mrbench.encoders.harness as harness

    files = []
    for i in range(150):
        f = tmp_path / f"im{i}.png"
        f.write_bytes(b"bytes %d" % i)
        files.append(f)
    monkeypatch.setattr(harness, "_FILE_HASHES", {})
    warmer = harness.HashWarmer([*files, tmp_path / "missing.png", files[0]])
    warmer.join()
    assert len(harness._FILE_HASHES) == 150
    items = [Candidate(id=f"c{i}", image=f.name, text="t" if i % 2 else None) for i, f in enumerate(files)]
    with ThreadPoolExecutor(3) as pool:
        pooled = harness._hash_items(items, files, pool)
        monkeypatch.setattr(harness, "_FILE_HASHES", {})  # nothing memoised: every file read in a chunk
        digests: dict[int, str] = {}
        fresh = harness._hash_items(items, files, pool, file_digests=digests)
        assert pooled == fresh == [item_content_hash(it.text, f) for it, f in zip(items, files)]
        assert len(digests) == 150
        files[120].unlink()
        monkeypatch.setattr(harness, "_FILE_HASHES", {})
        with pytest.raises(BenchmarkError, match=r"im120.png: cannot read image of item 'c120'"):
            harness._hash_items(items, files, pool)
    endless = harness.HashWarmer(itertools.repeat(files[0]))  # consumed lazily, stopped on request
    endless.stop()
    assert not endless._thread.is_alive() and endless.hashed >= 0


def test_instructions_per_role_and_task_info():
    bench = eb.text_bench(3, query_instruction="Q: find", candidate_instruction="C: represent")
    bench.metadata["fact_vocabulary"] = ["a", "b"]
    task = bench.tasks[0]
    task.metadata["extra"] = 1
    enc = _enc(lambda items, role, k: eb.hashed(items))
    encode_items(enc, task.queries, role="query", task=task, bench=bench)
    encode_items(enc, task.candidates, role="candidate", task=task, bench=bench)
    assert enc.instructions == ["Q: find"] * 3 + ["C: represent"] * 3
    info = enc.tasks[0]
    assert info.name == "t2t" and info.metadata == {"fact_vocabulary": ["a", "b"], "extra": 1}
    task.metadata["fact_vocabulary"] = ["own"]
    assert task_info(task, bench).metadata["fact_vocabulary"] == ["own"]  # the task's entry wins
    with pytest.raises(ValueError, match="role"):
        encode_items(enc, task.queries, role="document", task=task, bench=bench)


# ---------------------------------------------------------------------------------------------------
# batching, progress, stats


def test_batch_splitting_progress_stats():
    enc = _enc(lambda items, role, k: eb.hashed(items), batch_size=4)
    stats, seen = EncodeStats(), []
    out = _run(enc, 10, stats=stats, progress=seen.append)
    assert [len(c) for c in enc.calls] == [4, 4, 2] and seen == [4, 4, 2]
    assert out.shape == (10, 8) and out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-6)  # cosine → normalised
    assert (stats.items, stats.encoded, stats.cache_hits, stats.batches) == (10, 10, 0, 3)
    assert stats.total_seconds >= stats.encode_seconds >= 0 and stats.overhead_seconds >= 0
    enc2 = _enc(lambda items, role, k: eb.hashed(items))
    _run(enc2, 10, batch_size=3, stats=stats)
    assert [len(c) for c in enc2.calls] == [3, 3, 3, 1] and stats.items == 20
    empty = _run(_enc(lambda items, role, k: eb.hashed(items), dim=8), 0)
    assert empty.shape == (0, 8)
    with pytest.raises(EncoderError, match="batch size"):
        _run(enc, 3, batch_size=0)


def test_dot_similarity_not_normalised_zero_allowed():
    out = _run(_enc(lambda items, role, k: np.zeros((len(items), 3)) + 2.0 * k, similarity="dot"), 4,
               batch_size=2)
    np.testing.assert_array_equal(out, [[0, 0, 0], [0, 0, 0], [2, 2, 2], [2, 2, 2]])


# ---------------------------------------------------------------------------------------------------
# validation


def test_wrong_shape_message():
    enc = _enc(lambda items, role, k: np.ones((len(items) - 1, 5)), name="enc-x")
    with pytest.raises(EncoderError) as e:
        _run(enc, 4, role="candidate")
    assert str(e.value) == (
        "encoder 'enc-x' returned shape (3, 5) for a batch of 4 items in task 't2t' (role candidate); expected (4, D)"
    )
    with pytest.raises(EncoderError, match=r"shape \(4,\)"):
        _run(_enc(lambda items, role, k: np.ones(len(items))), 4)
    with pytest.raises(EncoderError, match="returned None"):
        _run(_enc(lambda items, role, k: None), 2)
    with pytest.raises(EncoderError, match="dtype"):
        _run(_enc(lambda items, role, k: np.array([["a"]] * len(items))), 2)


@pytest.mark.parametrize("bad, word", [(np.nan, "NaN"), (np.inf, "Inf"), (-np.inf, "Inf")])
def test_non_finite_names_item(bad, word):
    def fn(items, role, k):
        x = eb.hashed(items)
        if k == 1:
            x[1, 3] = bad
        return x

    with pytest.raises(EncoderError, match=rf"returned {word} for item 'q5' in task 't2t' \(role query\)"):
        _run(_enc(fn, batch_size=4), 10)


def test_float64_overflow_is_named():
    with pytest.raises(EncoderError, match=r"Inf \(float32 overflow\) for item 'q0'"):
        _run(_enc(lambda items, role, k: np.full((len(items), 2), 1e300)), 2)


def test_dimension_change_between_batches_and_meta_dim():
    with pytest.raises(EncoderError, match="returned dimension 9 .* but 8 was expected"):
        _run(_enc(lambda items, role, k: eb.hashed(items, 8 + k), batch_size=3), 6)
    with pytest.raises(EncoderError, match="but 16 was expected"):
        _run(_enc(lambda items, role, k: eb.hashed(items, 8), dim=16), 3)


def test_zero_vector_cosine():
    def fn(items, role, k):
        x = eb.hashed(items)
        x[2] = 0
        return x

    with pytest.raises(EncoderError, match="zero vector for item 'c2'"):
        _run(_enc(fn), 4, role="candidate")


def test_torch_and_list_outputs():
    import torch

    out_t = _run(_enc(lambda items, role, k: torch.from_numpy(eb.hashed(items)).requires_grad_()), 4)
    out_bf = _run(_enc(lambda items, role, k: torch.from_numpy(eb.hashed(items)).to(torch.bfloat16)), 4)
    out_l = _run(_enc(lambda items, role, k: eb.hashed(items).tolist()), 4)
    out_n = _run(_enc(lambda items, role, k: eb.hashed(items)), 4)
    np.testing.assert_allclose(out_t, out_n, rtol=1e-6)
    np.testing.assert_allclose(out_l, out_n, rtol=1e-6)
    np.testing.assert_allclose(out_bf, out_n, atol=2e-2)
    assert out_t.dtype == out_bf.dtype == np.float32


def test_validate_embeddings_direct():
    x = validate_embeddings(np.array([[3.0, 4.0]]), ids=["a"], encoder_name="e", task_name="t", role="query",
                            normalise=True)
    np.testing.assert_allclose(x, [[0.6, 0.8]])
    assert x.dtype == np.float32 and x.flags.c_contiguous


def test_check_dims():
    check_dims(np.zeros((2, 4)), np.zeros((3, 4)), "e", "t")
    with pytest.raises(EncoderError, match="queries have dimension 4 but candidates 5"):
        check_dims(np.zeros((2, 4)), np.zeros((3, 5)), "e", "t")


# ---------------------------------------------------------------------------------------------------
# images


def _pixel_encoder(needs_pixels=True):
    def fn(items, role, k):
        x = np.zeros((len(items), 4), np.float32)
        for i, it in enumerate(items):
            if it.image is not None:
                assert it.image.mode == "RGB"
                x[i, :3] = np.asarray(it.image, dtype=np.float32).mean(axis=(0, 1)) + 1
                x[i, 3] = it.image.size[0]
            else:
                x[i, 3] = 1
        return x

    return _enc(fn, needs_pixels=needs_pixels, batch_size=2, similarity="dot")


@pytest.mark.parametrize("workers", [0, 1, 3])
def test_image_decoding_workers(tmp_path, workers):
    bench = eb.image_bench(tmp_path, n=7)
    task = bench.tasks[0]
    enc = _pixel_encoder()
    out = encode_items(enc, task.candidates, role="candidate", task=task, bench=bench, num_workers=workers)
    assert [len(c) for c in enc.calls] == [2, 2, 2, 1]
    ref = encode_items(_pixel_encoder(), task.candidates, role="candidate", task=task, bench=bench, num_workers=0)
    np.testing.assert_array_equal(out, ref)
    assert out[:, 3].tolist() == [8 + i for i in range(7)]  # every image decoded, in order


def test_no_pixels_no_decoding(tmp_path):
    bench = eb.image_bench(tmp_path, n=3)
    task = bench.tasks[0]
    (tmp_path / "images" / "c1.png").write_bytes(b"corrupt but never decoded")
    enc = _enc(lambda items, role, k: (np.array([[it.image is None, 1.0] for it in items])), needs_pixels=False)
    out = encode_items(enc, task.candidates, role="candidate", task=task, bench=bench)
    assert out.shape == (3, 2)


def test_unreadable_and_missing_image(tmp_path):
    bench = eb.image_bench(tmp_path, n=4)
    task = bench.tasks[0]
    bad = tmp_path / "images" / "c2.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(BenchmarkError) as e:
        encode_items(_pixel_encoder(), task.candidates, role="candidate", task=task, bench=bench, num_workers=2)
    msg = str(e.value)
    assert str(bad) in msg and "'c2'" in msg and "\n" not in msg
    bad.unlink()
    with pytest.raises(BenchmarkError, match=r"c2.png: cannot read image of item 'c2'"):
        encode_items(_pixel_encoder(), task.candidates, role="candidate", task=task, bench=bench)


def test_image_text_items_and_relative_paths(tmp_path):
    from PIL import Image

    (tmp_path / "img").mkdir()
    Image.new("RGB", (5, 5), (10, 20, 30)).save(tmp_path / "img" / "a.png")
    Image.new("RGB", (5, 5), (10, 20, 30)).save(tmp_path / "img" / "b.png")  # same pixels, same bytes
    qs = [Query(id="q0", text="make it red", image="img/a.png"), Query(id="q1", text="make it red", image="img/b.png")]
    t = Task(name="it2i", query_modality="image+text", candidate_modality="image", queries=qs,
             candidates=[Candidate(id="c0", image="img/a.png")], qrels={"q0": {"c0": 1}})
    bench = Benchmark(name="b", version="1", tasks=[t], root=tmp_path)
    seen = []

    def fn(items, role, k):
        seen.extend((it.modality, it.image_path, it.content_hash) for it in items)
        return eb.hashed(items)

    out = encode_items(_enc(fn, needs_pixels=True), qs, role="query", task=t, bench=bench)
    assert seen[0][0] == "image+text" and seen[0][1] == tmp_path / "img" / "a.png"
    assert seen[0][2] == seen[1][2]  # identical content → identical hash
    np.testing.assert_array_equal(out[0], out[1])


def test_the_inputs_an_encoder_is_handed_are_those_build_inputs_gives(tmp_path):
    import dataclasses

    from mrbench.encoders import harness
    from mrbench.encoders.base import EncodeInput
    from mrbench.encoders.harness import build_inputs

    # the harness builds each EncodeInput without its __init__: every field must be given
    assert harness._ENCODE_INPUT_FIELDS == tuple(f.name for f in dataclasses.fields(EncodeInput))
    bench = eb.image_bench(tmp_path, n=5)
    task = bench.tasks[0]
    seen: list[EncodeInput] = []
    enc = _enc(lambda items, role, k: seen.extend(items) or eb.hashed(items), needs_pixels=False, batch_size=2)
    for role, items in (("query", task.queries), ("candidate", task.candidates)):
        seen.clear()
        encode_items(enc, items, role=role, task=task, bench=bench)
        want, _ = build_inputs(enc, items, role=role, task=task, bench=bench)
        assert seen == want and len(seen) == len(items)
        assert all(type(x) is EncodeInput for x in seen)
        with pytest.raises(dataclasses.FrozenInstanceError):
            seen[0].text = "changed"  # type: ignore[misc]

    class Tokenising(eb.ScriptedEncoder):  # texts tokenised ahead by the harness (in the preparing thread here)
        def text_of(self, it):
            return it.text

        def text_transform(self):
            return lambda texts: np.array([[len(t), t.count(" ")] for t in texts])

    tok = Tokenising(lambda items, role, k: seen.extend(items) or eb.hashed(items), batch_size=2)
    seen.clear()
    encode_items(tok, task.queries, role="query", task=task, bench=bench, num_workers=0)
    want, _ = build_inputs(tok, task.queries, role="query", task=task, bench=bench)
    assert [dataclasses.replace(x, tokens=None) for x in seen] == want
    assert [x.tokens.tolist() for x in seen] == [[len(w.text), w.text.count(" ")] for w in want]


def test_text_batches_are_tokenised_one_ahead_in_the_workers(tmp_path, monkeypatch):
    from mrbench.encoders import harness
    from mrbench.encoders.harness import _Tokenizer, build_inputs

    monkeypatch.setattr(harness, "TEXT_PROCESS_MIN", 1)
    monkeypatch.setattr(harness, "_gpu_decode_device", lambda enc: "cuda")  # processes serve a GPU encoder
    monkeypatch.setattr(harness.os, "cpu_count", lambda: 16)  # a GPU host's cores: sent ahead

    class Tokenising(eb.ScriptedEncoder):
        def text_of(self, it):
            return it.text

        def text_transform(self):
            return lambda texts: np.array([[len(t), t.count(" ")] for t in texts])

    events: list[tuple[str, tuple[str, ...]]] = []
    real_submit = _Tokenizer.submit

    def submit(self, inputs):
        events.append(("submit", tuple(it.id for it in inputs)))
        finish = real_submit(self, inputs)

        def logged(got):
            events.append(("finish", tuple(it.id for it in got)))
            return finish(got)

        return logged

    monkeypatch.setattr(_Tokenizer, "submit", submit)
    bench = eb.text_bench(20)
    task = bench.tasks[0]
    seen = []
    enc = Tokenising(lambda items, role, k: seen.extend(items) or eb.hashed(items), batch_size=4)
    encode_items(enc, task.queries, role="query", task=task, bench=bench, num_workers=2)
    batches = [tuple(q.id for q in task.queries[k : k + 4]) for k in range(0, 20, 4)]
    assert [e for e in events if e[0] == "finish"] == [("finish", b) for b in batches]
    for k in range(len(batches) - 1):  # batch k + 1 went to the workers before batch k was collected
        assert events.index(("submit", batches[k + 1])) < events.index(("finish", batches[k]))
    want, _ = build_inputs(enc, task.queries, role="query", task=task, bench=bench)
    assert [x.tokens.tolist() for x in seen] == [[len(w.text), w.text.count(" ")] for w in want]

    # without cores to spare (the workers would take them from the model's thread), one batch at a time
    monkeypatch.setattr(harness.os, "cpu_count", lambda: 4)
    events.clear()
    encode_items(enc, task.queries, role="query", task=task, bench=bench, num_workers=2)
    assert events == [(kind, b) for b in batches for kind in ("submit", "finish")]

    # rows submitted for other items are not used for these: they are tokenised afresh
    import dataclasses

    tok = _Tokenizer(enc, enc.text_transform(), n_texts=4, num_workers=0)
    first = [dataclasses.replace(want[0], text="a b c"), dataclasses.replace(want[1], text="de")]
    finish = real_submit(tok, first)
    assert [x.tokens.tolist() for x in finish(first)] == [[5, 2], [2, 0]]
    for other in ([dataclasses.replace(want[0], text="fgh"), first[1]], want[2:4]):  # other texts, other ids
        assert [x.tokens.tolist() for x in finish(other)] == [[len(w.text), w.text.count(" ")] for w in other]


def test_short_switch_interval_nests_and_restores():
    import sys

    from mrbench.encoders import harness

    before = sys.getswitchinterval()
    with harness._short_switch_interval(True):
        assert sys.getswitchinterval() == pytest.approx(min(before, harness.GPU_SWITCH_INTERVAL_S))
        with harness._short_switch_interval(True):
            pass
        assert sys.getswitchinterval() == pytest.approx(min(before, harness.GPU_SWITCH_INTERVAL_S))  # still in the outer one
        with harness._short_switch_interval(False):
            assert sys.getswitchinterval() == pytest.approx(min(before, harness.GPU_SWITCH_INTERVAL_S))
    assert sys.getswitchinterval() == before


def test_device_stager_leaves_what_it_cannot_stack_alone():
    """Pixels the stager cannot stack into one pinned block (bfloat16, mixed shapes, non-arrays, none)
    are handed over untouched; these checks run before any CUDA call."""
    import torch

    from mrbench.encoders import harness

    stager = object.__new__(harness._DeviceStager)
    cases = [
        [(None, torch.zeros(3, 4, 4, dtype=torch.bfloat16)), (None, torch.zeros(3, 4, 4, dtype=torch.bfloat16))],
        [(None, np.zeros((3, 4, 4), np.uint8)), (None, np.zeros((3, 5, 5), np.uint8))],
        [(None, np.zeros((3, 4, 4), np.uint8)), (None, np.zeros((3, 4, 4), np.float32))],
        [(None, {"pixel_values": np.zeros(3)})],
        [(None, None), (None, None)],
    ]
    for loaded in cases:
        out, ready = stager.stage(loaded)
        assert out is loaded and ready is None


# ---------------------------------------------------------------------------------------------------
# asynchronous encoders: batch b is checked once batch b + IN_FLIGHT is queued


class AsyncScripted(eb.ScriptedEncoder):
    """``encode_async`` that records when each call is launched and when its result is collected."""

    def __init__(self, fn, **kw):
        super().__init__(fn, **kw)
        self.events: list[tuple[str, int]] = []

    def encode_async(self, items, *, role, task):
        k = len(self.calls)
        out = self.encode(items, role=role, task=task)  # a failing call fails at launch
        self.events.append(("launch", k))

        def finish():
            self.events.append(("finish", k))
            return out

        return finish


@pytest.mark.parametrize("in_flight", [1, 2])
def test_async_encoder_results_collected_in_flight_batches_behind(monkeypatch, in_flight):
    from mrbench.encoders import harness

    monkeypatch.setattr(harness, "IN_FLIGHT", in_flight)
    enc = AsyncScripted(lambda items, role, k: eb.hashed(items), batch_size=3)
    stats, seen = EncodeStats(), []
    got = _run(enc, n=10, stats=stats, progress=seen.append)
    assert enc.events == {
        1: [("launch", 0), ("launch", 1), ("finish", 0), ("launch", 2), ("finish", 1), ("launch", 3), ("finish", 2),
            ("finish", 3)],
        2: [("launch", 0), ("launch", 1), ("launch", 2), ("finish", 0), ("launch", 3), ("finish", 1), ("finish", 2),
            ("finish", 3)],
    }[in_flight]
    assert seen == [3, 3, 3, 1] and (stats.encoded, stats.batches) == (10, 4)
    np.testing.assert_array_equal(got, _run(_enc(lambda items, role, k: eb.hashed(items), batch_size=3), n=10))


def test_async_launch_failure_still_stores_the_batch_in_flight(tmp_path):
    from mrbench.encoders.cache import EmbeddingCache

    def dies_on_third(items, role, k):
        if k == 2:
            raise KeyboardInterrupt
        return eb.hashed(items)

    bench = eb.text_bench(10)
    task = bench.tasks[0]
    first = AsyncScripted(dies_on_third, batch_size=3)  # (two batches in flight when the third fails)
    with pytest.raises(KeyboardInterrupt):
        encode_items(first, task.queries, role="query", task=task, bench=bench, cache=EmbeddingCache(tmp_path, "s@1"))
    assert first.events == [("launch", 0), ("launch", 1), ("finish", 0), ("finish", 1)]
    second = _enc(lambda items, role, k: eb.hashed(items), batch_size=3)
    encode_items(second, task.queries, role="query", task=task, bench=bench, cache=EmbeddingCache(tmp_path, "s@1"))
    assert second.calls == [["q6", "q7", "q8"], ["q9"]]


def test_async_encode_used_only_where_it_cannot_bypass_encode():
    from mrbench.encoders.harness import async_encode_of

    fn = lambda items, role, k: eb.hashed(items)  # noqa: E731
    assert async_encode_of(_enc(fn)) is None  # no encode_async
    enc = AsyncScripted(fn)
    assert async_encode_of(enc) == enc.encode_async

    class OwnEncode(AsyncScripted):  # encode overridden below the class that defines encode_async
        def encode(self, items, *, role, task):
            return super().encode(items, role=role, task=task) * 2

    assert async_encode_of(OwnEncode(fn)) is None
    patched = AsyncScripted(fn)
    patched.encode = lambda items, *, role, task: eb.hashed(items)
    assert async_encode_of(patched) is None
    per_instance = _enc(fn)
    per_instance.encode_async = lambda items, *, role, task: (lambda: eb.hashed(items))
    assert async_encode_of(per_instance) is per_instance.encode_async


def test_device_stager_copies_a_whole_batch_buffer_without_row_checks(monkeypatch):
    """stage(loaded, whole=buf): the alloc() buffer the batch was read into is copied as it is and
    its rows become the items' pixels (the logic, on the CPU: torch.cuda's stream and event are
    stood in for; the copy is the one the per-row path makes, timed on a GPU)."""
    import contextlib
    import threading

    import torch

    from mrbench.encoders import harness

    class Event:
        def record(self, stream):
            pass

    monkeypatch.setattr(torch.cuda, "stream", lambda s: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "Event", Event)
    st = object.__new__(harness._DeviceStager)
    st.device, st.stream, st._lock, st._buffers = torch.device("cpu"), None, threading.Lock(), {}
    host = torch.arange(24, dtype=torch.uint8).reshape(4, 3, 2)
    buf = host.numpy()
    st._buffers[buf.ctypes.data] = host
    loaded = [(None, torch.from_numpy(buf[j])) for j in range(4)]
    out, ready = st.stage(loaded, whole=buf)
    assert callable(ready) and not st._buffers  # taken as the batch's block
    assert [o[0] for o in out] == [None] * 4
    for j in range(4):
        assert torch.equal(out[j][1], host[j])


def test_device_stager_copies_a_batch_read_into_its_own_buffer_as_it_is():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    from mrbench.encoders import harness

    st = harness._DeviceStager("cuda")
    buf = st.alloc(3, (2, 2), np.dtype(np.uint8))
    buf[:] = np.arange(12, dtype=np.uint8).reshape(3, 2, 2)
    out, ready = st.stage([(None, buf[j]) for j in range(3)])
    ready()
    assert not st._buffers  # taken as the batch's pinned block
    for j in range(3):
        np.testing.assert_array_equal(out[j][1].cpu().numpy(), buf[j])
    whole = st.alloc(3, (2, 2), np.dtype(np.uint8))  # the same, handed over as its buffer
    whole[:] = buf
    out, ready = st.stage([(None, whole[j]) for j in range(3)], whole=whole)
    ready()
    assert not st._buffers and [o[1].cpu().tolist() for o in out] == buf.tolist()
    other = st.alloc(2, (2,), np.dtype(np.uint8))
    other[:] = [[1, 2], [3, 4]]
    out, ready = st.stage([(None, other[1]), (None, other[0])])  # rows out of order: stacked anew
    ready()
    assert [o[1].cpu().tolist() for o in out] == [[3, 4], [1, 2]]


# ---------------------------------------------------------------------------------------------------
# calls started ahead (start_encode)


def _prepare_threads() -> list:
    import threading
    import time

    for _ in range(100):  # a discarded call's workers stop once its setup thread has ended
        alive = [t for t in threading.enumerate() if t.name.startswith(("mrbench-prepare", "mrbench-encode-ahead"))]
        if not alive:
            return []
        time.sleep(0.02)
    return alive


def test_a_call_started_ahead_gives_what_encode_items_gives(tmp_path):
    from mrbench.encoders.cache import EmbeddingCache
    from mrbench.encoders.harness import start_encode

    bench = eb.image_bench(tmp_path, n=7)
    task = bench.tasks[0]
    ref_stats = EncodeStats()
    ref = encode_items(_pixel_encoder(), task.candidates, role="candidate", task=task, bench=bench, num_workers=2,
                       stats=ref_stats)
    cache = EmbeddingCache(tmp_path / "cache", "ns")
    enc = _pixel_encoder()
    pending = start_encode(enc, task.candidates, role="candidate", task=task, bench=bench, num_workers=2, cache=cache)
    done: list[int] = []
    stats = EncodeStats()
    out = pending.result(progress=done.append, stats=stats)
    np.testing.assert_array_equal(out, ref)
    assert sum(done) == 7 and [len(c) for c in enc.calls] == [2, 2, 2, 1]
    assert (stats.items, stats.encoded, stats.batches) == (ref_stats.items, ref_stats.encoded, ref_stats.batches)
    pending.close()  # after result(): nothing left to do
    # the same call again: every embedding from the cache, none encoded
    again = start_encode(enc, task.candidates, role="candidate", task=task, bench=bench, num_workers=2, cache=cache)
    done.clear()
    np.testing.assert_array_equal(again.result(progress=done.append, stats=stats), ref)
    assert done == [7] and stats.cache_hits == 7 and len(enc.calls) == 4
    assert _prepare_threads() == []


def test_a_call_started_ahead_raises_its_setup_error_when_its_result_is_asked_for(tmp_path):
    from mrbench.encoders.harness import start_encode

    bench = eb.image_bench(tmp_path, n=4)
    task = bench.tasks[0]
    (tmp_path / "images" / "c2.png").unlink()
    pending = start_encode(_pixel_encoder(), task.candidates, role="candidate", task=task, bench=bench, num_workers=2)
    with pytest.raises(BenchmarkError, match=r"c2.png: cannot read image of item 'c2'"):
        pending.result()
    assert _prepare_threads() == []


def test_a_discarded_call_encodes_nothing_and_stops_its_workers(tmp_path):
    from mrbench.encoders.harness import start_encode

    bench = eb.image_bench(tmp_path, n=9)
    task = bench.tasks[0]
    enc = _pixel_encoder()
    pending = start_encode(enc, task.candidates, role="candidate", task=task, bench=bench, num_workers=2)
    pending.close()
    assert _prepare_threads() == [] and enc.calls == []


def test_embedding_cache_is_consistent_under_concurrent_lookups_and_writes(tmp_path):
    import threading

    from mrbench.encoders.cache import EmbeddingCache

    writer = EmbeddingCache(tmp_path, "ns")
    rng = np.random.default_rng(0)
    shards = [(([f"k{s}-{r}" for r in range(50)]), rng.standard_normal((50, 4)).astype(np.float32)) for s in range(12)]
    for keys, emb in shards:
        writer.put_many(keys, emb)
    cache = EmbeddingCache(tmp_path, "ns")  # a fresh object: its index is built by whichever thread comes first
    barrier = threading.Barrier(6)
    errors: list[BaseException] = []

    def look(s: int) -> None:
        try:
            barrier.wait()
            keys, emb = shards[s]
            mask, got = cache.get_many(keys)
            assert mask.all()
            np.testing.assert_array_equal(got, emb)
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    def write() -> None:
        try:
            barrier.wait()
            for j in range(5):
                cache.put_many([f"new{j}"], np.full((1, 4), j, np.float32))
        except BaseException as e:  # pragma: no cover
            errors.append(e)

    threads = [threading.Thread(target=look, args=(s,)) for s in range(5)] + [threading.Thread(target=write)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    for keys, emb in shards:
        np.testing.assert_array_equal(cache.get_many(keys)[1], emb)
    assert len(cache) == 12 * 50 + 5


def test_encode_groups_ahead_or_not_gives_the_same_arrays_and_discards_on_error(tmp_path):
    from mrbench.encoders.harness import encode_groups

    bench = eb.image_bench(tmp_path, n=7)
    task = bench.tasks[0]
    groups = [(task, task.candidates[:3]), (task, task.candidates[3:5]), (task, task.candidates[5:])]
    one_by_one = encode_groups(_pixel_encoder(), groups, role="candidate", bench=bench, ahead=False, num_workers=2)
    stats = EncodeStats()
    ahead = encode_groups(_pixel_encoder(), groups, role="candidate", bench=bench, stats=stats, num_workers=2)
    assert [a.shape for a in ahead] == [(3, 4), (2, 4), (2, 4)] and stats.encoded == 7
    for a, b in zip(ahead, one_by_one):
        np.testing.assert_array_equal(a, b)
    (tmp_path / "images" / "c4.png").unlink()  # the second group fails; the third, started ahead, is discarded
    enc = _pixel_encoder()
    with pytest.raises(BenchmarkError, match="c4.png"):
        encode_groups(enc, groups, role="candidate", bench=bench, num_workers=2)
    assert [len(c) for c in enc.calls] == [2, 1] and _prepare_threads() == []


def test_a_call_started_after_another_waits_for_that_calls_inputs(tmp_path):
    import time

    from mrbench.encoders.harness import start_encode

    bench = eb.image_bench(tmp_path, n=7)
    task = bench.tasks[0]
    enc = _pixel_encoder()
    # 4 batches of 2: the first two are prepared ahead, the last two only as the call runs
    first = start_encode(enc, task.candidates, role="candidate", task=task, bench=bench, num_workers=2)
    second = start_encode(enc, task.candidates[4:], role="candidate", task=task, bench=bench, num_workers=2,
                          after=first)
    time.sleep(0.2)
    assert not second._call.ready_ahead  # not set up while the first call's batches are still to come
    a = first.result()
    b = second.result()
    ref = encode_items(_pixel_encoder(), task.candidates, role="candidate", task=task, bench=bench, num_workers=0)
    np.testing.assert_array_equal(a, ref)
    np.testing.assert_array_equal(b, ref[4:])
    # a discarded first call releases the one waiting for it, which can still be discarded in turn
    first = start_encode(enc, task.candidates[:4], role="candidate", task=task, bench=bench, num_workers=2)
    second = start_encode(enc, task.candidates[4:], role="candidate", task=task, bench=bench, num_workers=2,
                          after=first)
    first.close()
    np.testing.assert_array_equal(second.result(), ref[4:])
    third = start_encode(enc, task.candidates, role="candidate", task=task, bench=bench, num_workers=2, after=second)
    fourth = start_encode(enc, task.candidates, role="candidate", task=task, bench=bench, num_workers=2, after=third)
    fourth.close()
    third.close()
    assert _prepare_threads() == []


def test_a_call_interrupted_while_waiting_for_its_setup_is_given_up(tmp_path):
    from mrbench.encoders.harness import start_encode

    bench = eb.image_bench(tmp_path, n=9)
    task = bench.tasks[0]
    enc = _pixel_encoder()
    pending = start_encode(enc, task.candidates, role="candidate", task=task, bench=bench, num_workers=2)
    pending._thread.join()

    class Interrupted:
        def join(self):
            raise KeyboardInterrupt

    pending._thread = Interrupted()  # Ctrl-C while result() waits
    with pytest.raises(KeyboardInterrupt):
        pending.result()
    assert pending._call.closed and enc.calls == [] and _prepare_threads() == []


@pytest.mark.parametrize("command", ["encode", "evaluate"])
def test_decode_help_lists_every_accepted_kind(command):
    """``--decode``'s help of both commands names every kind check_worker_kind accepts."""
    import re

    from typer.testing import CliRunner

    from mrbench.cli.app import app
    from mrbench.encoders.harness import WORKER_KINDS

    r = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "400", "NO_COLOR": "1"})
    assert r.exit_code == 0, r.output
    line = next(ln for ln in r.output.splitlines() if "--decode" in ln)
    text = " ".join(ln.strip(" │") for ln in r.output.splitlines()[r.output.splitlines().index(line):][:6])
    help_text = text.split("Decode workers:", 1)[1].split("[default", 1)[0]
    for kind in WORKER_KINDS:
        assert re.search(rf"\b{kind}\b", help_text), (kind, help_text)


# ---------------------------------------------------------------------------------------------------
# a call's first batches prepared while the rest of its items are hashed


def _batches_seen(bench, cache=None, **kw):
    task = bench.tasks[0]
    enc = _pixel_encoder()
    out = encode_items(enc, task.candidates, role="candidate", task=task, bench=bench, cache=cache, **kw)
    return out, [[int(i[1:]) for i in batch] for batch in enc.calls]


@pytest.mark.parametrize("early", [1, 2, 3])
@pytest.mark.parametrize("cached", [(), (5,), (3, 5), (0, 5), (2, 3, 4, 5, 6), (4, 5, 6), tuple(range(7))])
def test_early_batches_encode_what_hashing_everything_first_encodes(tmp_path, monkeypatch, cached, early):
    """With the first batches started before the rest is hashed, the batches, embeddings, cache use
    and counters are those of hashing every item first, whatever part the embedding cache holds:
    none, some past the early batches, one in them (the call then hashes everything first), all
    past them (which are then the only ones), or all."""
    from mrbench.encoders import harness
    from mrbench.encoders.cache import EmbeddingCache

    bench = eb.image_bench(tmp_path, n=7)
    task = bench.tasks[0]
    results = {}
    for k in (0, early):
        monkeypatch.setattr(harness, "EARLY_BATCHES", k)
        cache = EmbeddingCache(tmp_path / f"cache{k}", "ns")
        if cached:
            part = [task.candidates[i] for i in cached]
            encode_items(_pixel_encoder(), part, role="candidate", task=task, bench=bench, cache=cache)
        stats = EncodeStats()
        out, batches = _batches_seen(bench, cache=cache, num_workers=2, stats=stats)
        results[k] = (out, batches, (stats.items, stats.cache_hits, stats.encoded, stats.batches))
    np.testing.assert_array_equal(results[early][0], results[0][0])
    assert results[early][1:] == results[0][1:]
    expected = [i for i in range(7) if i not in cached]
    assert [i for b in results[early][1] for i in b] == expected
    assert results[early][2] == (7, len(cached), len(expected), -(-len(expected) // 2))


def test_the_first_batches_are_being_read_while_the_rest_is_hashed(tmp_path, monkeypatch):
    """The rest of the call's items are hashed only once the early batches' decoding has started
    (hashing the rest here waits for the second's, so a call that hashed everything first would fail)."""
    import threading

    from mrbench.encoders import harness

    bench = eb.image_bench(tmp_path, n=7)
    started = threading.Event()
    real_submit, real_hash = harness._Decoder.submit, harness._hash_items
    hashed: list[int] = []

    def submit(self, batch):
        if batch == [2, 3]:
            started.set()
        return real_submit(self, batch)

    def hash_items(items, paths, *a, **k):
        hashed.append(len(items))
        if len(hashed) == 2:
            assert started.wait(10), "the second batch was not started before the rest was hashed"
        return real_hash(items, paths, *a, **k)

    monkeypatch.setattr(harness._Decoder, "submit", submit)
    monkeypatch.setattr(harness, "_hash_items", hash_items)
    monkeypatch.setattr(harness, "EARLY_BATCHES", 2)
    out, batches = _batches_seen(bench, num_workers=2)
    assert hashed == [4, 3] and batches == [[0, 1], [2, 3], [4, 5], [6]]
    monkeypatch.setattr(harness, "_hash_items", real_hash)
    np.testing.assert_array_equal(out, _batches_seen(bench, num_workers=0)[0])


def test_a_broken_image_past_the_early_batches_ends_the_call_with_one_line(tmp_path):
    """A file missing from the rest, found while the early batches are being prepared: one line
    naming it, and no preparing thread is left behind."""
    bench = eb.image_bench(tmp_path, n=7)
    (tmp_path / "images" / "c5.png").unlink()
    for workers in (0, 2):
        with pytest.raises(BenchmarkError, match=r"c5.png: cannot read image of item 'c5'"):
            _batches_seen(bench, num_workers=workers)
        assert _prepare_threads() == []


def test_early_batches_that_turn_out_the_only_ones_mark_the_inputs_done(tmp_path, monkeypatch):
    """When the rest of the call is all in the embedding cache, the last early batch, prepared before
    that was known, is the last: a call started after this one may start once it is prepared."""
    from mrbench.encoders import harness
    from mrbench.encoders.cache import EmbeddingCache

    bench = eb.image_bench(tmp_path, n=7)
    task = bench.tasks[0]
    cache = EmbeddingCache(tmp_path / "cache", "ns")
    encode_items(_pixel_encoder(), task.candidates[4:], role="candidate", task=task, bench=bench, cache=cache)
    monkeypatch.setattr(harness, "EARLY_BATCHES", 2)
    call = harness._EncodeCall(_pixel_encoder(), task.candidates, role="candidate", task=task, bench=bench, cache=cache,
                               batch_size=None, num_workers=2, workers="auto", pixel_cache=None)
    try:
        call.setup()  # hashes the early batches and starts preparing them
        assert call.batches == [[0, 1], [2, 3]] and not call.inputs_done.is_set()
        call._setup_rest()  # (what the encode loop does once the first batch is with the model)
        assert call.batches == [[0, 1], [2, 3]] and call.inputs_done.wait(10)
        call.ready_ahead = True
        stats = EncodeStats()
        out = call.result(stats=stats)
    finally:
        call.close()
    assert (stats.items, stats.cache_hits, stats.encoded) == (7, 3, 4)
    np.testing.assert_array_equal(out, _batches_seen(bench)[0])




def test_the_encode_loop_counts_the_collectors_passes():
    import gc

    def fn(items, role, k):
        gc.collect()  # a pass the loop must count
        return eb.hashed(items)

    stats = EncodeStats()
    _run(_enc(fn, batch_size=4), 10, stats=stats)
    assert stats.gc_seconds > 0 and stats.to_dict()["gc_seconds"] == stats.gc_seconds
    quiet = EncodeStats()
    _run(_enc(lambda items, role, k: eb.hashed(items), batch_size=4), 10, stats=quiet)
    assert quiet.gc_seconds < stats.gc_seconds


def _third_threshold_counts() -> bool:
    """Whether this interpreter's collector keeps a third threshold (generational, not incremental)."""
    import gc

    before = gc.get_threshold()
    try:
        gc.set_threshold(before[0], before[1], 12345)
        return gc.get_threshold()[2] == 12345
    finally:
        gc.set_threshold(*before)


needs_generational_gc = pytest.mark.skipif(not _third_threshold_counts(),
                                           reason="an incremental collector ignores the third threshold")


def _full_passes_during_a_call(monkeypatch, defer: int) -> tuple[int, int, tuple]:
    """(full passes, young passes) the collector ran on its own while the encoder ran, and the
    thresholds it saw, for an encoder that keeps what it allocates (as a call's bookkeeping lives)."""
    import gc

    from mrbench.encoders import harness

    monkeypatch.setattr(harness, "DEFER_FULL_COLLECTIONS", defer)
    passes = {0: 0, 1: 0, 2: 0}
    seen: list[tuple] = []
    kept: list = []

    def count(phase, info):
        if phase == "start":
            passes[info["generation"]] += 1

    def fn(items, role, k):
        seen.append(gc.get_threshold())
        kept.extend([i] for i in range(30_000))  # survivors: promoted to the oldest generation
        return eb.hashed(items)

    from mrbench.data.io import gc_frozen

    # as evaluate runs: what lives now frozen out of the passes, so the call's survivors soon weigh
    # enough (a quarter of the oldest generation) for a full pass to be due; CPython 3.10-3.12's
    # thresholds set (3.13's first is 2000: too few young passes here for a full one)
    before = gc.get_threshold()
    gc.set_threshold(700, 10, 10)
    try:
        with gc_frozen():
            gc.collect()
            gc.callbacks.append(count)
            try:
                _run(_enc(fn, batch_size=2), 12)  # 6 batches: ~180k survivors, 250+ young passes
            finally:
                gc.callbacks.remove(count)
        assert gc.get_threshold() == (700, 10, 10)
    finally:
        gc.set_threshold(*before)
    return passes[2], passes[0], seen[0]


@needs_generational_gc
def test_encode_loops_hold_the_collectors_full_passes_off(monkeypatch):
    """During an encode loop the collector's young passes run and its full ones do not (by the third
    threshold, restored after the call); with DEFER_FULL_COLLECTIONS = 0 the full passes happen."""
    full, young, seen = _full_passes_during_a_call(monkeypatch, 1)
    assert full == 0 and young > 0
    assert seen[:2] == (700, 10) and seen[2] >= 1 << 30
    full, young, seen = _full_passes_during_a_call(monkeypatch, 0)
    assert full > 0 and seen == (700, 10, 10)


@needs_generational_gc
def test_full_passes_held_off_until_the_last_overlapping_loop_ends():
    """Overlapping loops (threads) share one hold: the thresholds come back when the last one ends,
    also when it fails; thresholds someone set meanwhile, or automatic collection off, are left alone."""
    import gc

    from mrbench.data.io import gc_full_passes_held

    before = gc.get_threshold()
    try:
        with gc_full_passes_held():
            held = gc.get_threshold()
            assert held[2] >= 1 << 30
            with pytest.raises(RuntimeError):
                with gc_full_passes_held():
                    raise RuntimeError("an encoder failed")
            assert gc.get_threshold() == held  # the outer loop still runs
        assert gc.get_threshold() == before
        with gc_full_passes_held():
            gc.set_threshold(500, 5, 5)  # the user's own, mid-call
        assert gc.get_threshold() == (500, 5, 5)
        gc.set_threshold(0, before[1], before[2])  # automatic collection off: nothing to hold
        with gc_full_passes_held():
            assert gc.get_threshold() == (0, before[1], before[2])
    finally:
        gc.set_threshold(*before)


@needs_generational_gc
def test_full_passes_held_off_across_threads_and_not_in_forked_children():
    """Two loops in two threads: the hold lasts until the later one ends, whichever started first;
    a child forked during a hold (a decode or tokenising worker) gets the saved thresholds back."""
    import gc
    import threading

    from mrbench.data.io import gc_full_passes_held

    before = gc.get_threshold()
    a_in, b_in, a_go, b_go = (threading.Event() for _ in range(4))
    seen: dict[str, tuple] = {}

    def loop(name, entered, go):
        with gc_full_passes_held():
            entered.set()
            go.wait(10)
        seen[name] = gc.get_threshold()

    ta = threading.Thread(target=loop, args=("a", a_in, a_go))
    tb = threading.Thread(target=loop, args=("b", b_in, b_go))
    ta.start()
    assert a_in.wait(10)
    tb.start()
    assert b_in.wait(10)
    if hasattr(os, "fork"):
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: report its thresholds, leave at once
            os.write(w, repr(gc.get_threshold()).encode())
            os._exit(0)
        os.close(w)
        child = os.read(r, 200).decode()
        os.close(r)
        os.waitpid(pid, 0)
        assert child == repr(before)
    a_go.set()  # the first loop ends first: still held for the second
    ta.join(10)
    assert seen["a"][2] >= 1 << 30
    b_go.set()
    tb.join(10)
    assert seen["b"] == before == gc.get_threshold()


class _AsyncPixels(eb.ScriptedEncoder):
    def encode_async(self, items, *, role, task):
        out = self.encode(items, role=role, task=task)
        return lambda: out


def _stored(cache_dir, role, hashes) -> int:
    from mrbench.encoders.cache import EmbeddingCache

    c = EmbeddingCache(cache_dir, "ns")
    return int(c.get_many(c.keys(role, None, hashes))[0].sum())


@pytest.mark.parametrize("in_flight", [1, 2])
def test_a_batch_that_cannot_be_prepared_keeps_every_batch_already_launched(tmp_path, monkeypatch, in_flight):
    """An undecodable image in the fourth batch: the three batches launched before it are checked
    and cached (with two in flight, failing outside the launch used to drop them)."""
    from mrbench.encoders import harness
    from mrbench.encoders.cache import EmbeddingCache
    from mrbench.encoders.harness import item_content_hash

    monkeypatch.setattr(harness, "IN_FLIGHT", in_flight)
    bench = eb.image_bench(tmp_path, n=9)
    task = bench.tasks[0]
    (tmp_path / "images" / "c7.png").write_bytes(b"not an image")  # batch 3 = [c6, c7]
    enc = _AsyncPixels(lambda items, role, k: np.ones((len(items), 2), np.float32), needs_pixels=True, batch_size=2,
                       similarity="dot")
    stats = EncodeStats()
    with pytest.raises(BenchmarkError, match="c7"):
        encode_items(enc, task.candidates, role="candidate", task=task, bench=bench, num_workers=2, stats=stats,
                     cache=EmbeddingCache(tmp_path / "cache", "ns"))
    assert len(enc.calls) == 3 and stats.encoded == 6
    hashes = [item_content_hash(None, bench.image_path(c.image)) for c in task.candidates[:6]]
    assert _stored(tmp_path / "cache", "candidate", hashes) == 6


def test_a_batch_that_fails_its_check_does_not_drop_the_one_after_it(tmp_path, monkeypatch):
    """The launch of the third batch fails with two in flight; the first's embeddings are invalid:
    the second is still checked and cached."""
    from mrbench.encoders import harness
    from mrbench.encoders.cache import EmbeddingCache
    from mrbench.encoders.harness import item_content_hash

    monkeypatch.setattr(harness, "IN_FLIGHT", 2)

    def fn(items, role, k):
        if k == 2:
            raise KeyboardInterrupt
        x = eb.hashed(items)
        if k == 0:
            x[0, 0] = np.nan
        return x

    bench = eb.text_bench(10)
    task = bench.tasks[0]
    with pytest.raises(KeyboardInterrupt):
        encode_items(_AsyncPixels(fn, batch_size=3), task.queries, role="query", task=task, bench=bench,
                     cache=EmbeddingCache(tmp_path, "ns"))
    hashes = [item_content_hash(q.text, None) for q in task.queries]
    assert _stored(tmp_path, "query", hashes[3:6]) == 3 and _stored(tmp_path, "query", hashes[:3]) == 0


@pytest.mark.parametrize("early", [0, 2])
def test_a_call_that_fails_on_its_first_batch_still_counts_its_items(tmp_path, monkeypatch, early):
    from mrbench.encoders import harness

    monkeypatch.setattr(harness, "EARLY_BATCHES", early)
    bench = eb.image_bench(tmp_path, n=7)
    task = bench.tasks[0]

    def boom(items, role, k):
        raise RuntimeError("boom")

    stats = EncodeStats()
    with pytest.raises(EncoderError, match="boom"):
        encode_items(eb.ScriptedEncoder(boom, needs_pixels=True, batch_size=2), task.candidates, role="candidate",
                     task=task, bench=bench, stats=stats, num_workers=2)
    assert stats.items == 7 and stats.encoded == 0


def test_a_call_without_image_files_hashes_everything_first(monkeypatch):
    """Only calls with image files to stat take the early path (an image-reading encoder's text queries do not)."""
    from mrbench.encoders import harness

    sizes: list[int] = []
    real = harness._hash_items
    monkeypatch.setattr(harness, "_hash_items", lambda items, *a, **k: sizes.append(len(items)) or real(items, *a, **k))
    _run(_pixel_encoder(), n=10)
    assert sizes == [10]
