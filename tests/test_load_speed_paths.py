"""The fast paths of loading a benchmark (mrbench.data.io) give what the reference paths give:
the same objects, the same one-line errors, the same change detection."""

from __future__ import annotations

import dataclasses
import gc
import hashlib
import os

import pytest

import mrbench.data.io as io
from mrbench.data.io import load_benchmark_dir
from mrbench.data.schema import Candidate, Query
from mrbench.errors import BenchmarkError


def _load(root, arrow: bool, monkeypatch, **kw):
    with monkeypatch.context() as m:
        m.setattr(io, "_FAST_QRELS_BYTES", 0 if arrow else 1 << 62)
        return load_benchmark_dir(root, **kw)


@pytest.mark.parametrize("qrels, pattern", [
    ("q1 0 c_red 1\nq2 0 nope 1\n", r"task 't2i': qrels of query 'q2' refer to unknown candidate id 'nope'"),
    ("q1 0 c_red 1\nqX 0 c_red 1\n", r"task 't2i': qrels refer to unknown query id 'qX'"),
    ("q1 0 c_red -1\nq2 0 c_blue 2\n", r"task 't2i': qrels grade -1 for \(q1, c_red\) is not a non-negative integer"),
    ("q2 0 c_blue 2\nq1 0 c_red 1\nq2 0 c_green -3\n", r"grade -3 for \(q2, c_green\)"),
])
def test_arrow_qrels_errors_are_those_of_the_line_path(small_bench, monkeypatch, qrels, pattern):
    """Arrow's qrels path lets validation skip the pair by pair scans only where they would find
    nothing: bad ids and grades are named exactly as after the line by line reader."""
    (small_bench.root / "tasks/t2i/qrels.txt").write_text(qrels)
    messages = []
    for arrow in (False, True):
        with pytest.raises(BenchmarkError, match=pattern) as ei:
            _load(small_bench.root, arrow, monkeypatch, verify=False)
        messages.append(str(ei.value))
    assert messages[0] == messages[1] and "\n" not in messages[0]


def test_arrow_qrels_load_equals_line_load(small_bench, monkeypatch):
    (small_bench.root / "tasks/t2i/qrels.txt").write_text("q2 0 c_green 0\nq1 0 c_red 1\nq2 0 c_blue 2\n")
    used = []
    real = io._read_qrels_arrow
    monkeypatch.setattr(io, "_read_qrels_arrow", lambda p: used.append(p) or real(p))
    slow = _load(small_bench.root, False, monkeypatch, verify=False)
    fast = _load(small_bench.root, True, monkeypatch, verify=False)
    assert used and fast == slow
    assert [list(t.qrels.items()) for t in fast.tasks] == [list(t.qrels.items()) for t in slow.tasks]


def test_qrels_facts_only_for_the_dict_they_describe(small_bench, monkeypatch):
    """Facts that describe another dict than the one returned (a wrapper, a test double) do not
    spare the full checks."""
    (small_bench.root / "tasks/t2i/qrels.txt").write_text("q1 0 c_red 1\nq2 0 c_blue 2\n")
    real = io._read_qrels

    def changed(p):
        qrels, facts = real(p)
        return {**qrels, "q2": {"nope": 1}}, facts

    monkeypatch.setattr(io, "_read_qrels", changed)
    with pytest.raises(BenchmarkError, match=r"unknown candidate id 'nope'"):
        _load(small_bench.root, True, monkeypatch, verify=False)


@pytest.mark.parametrize("text", [
    "q1 0 c1 1\nq1 0 c2 2\nq2 0 c1 0\nq1 0 c3 5\n",  # a query in two runs
    "q1 x c1 1\nq1 y c2 2\n",  # any iter token
    "q\u00e9 0 c\u00fc 3\n",  # non-ASCII ids
])
def test_arrow_qrels_equal_line_qrels(tmp_path, monkeypatch, text):
    p = tmp_path / "qrels.txt"
    p.write_text(text, encoding="utf-8")
    fast, facts = io._read_qrels_arrow(p)
    assert facts.qrels is fast
    monkeypatch.setattr(io, "_FAST_QRELS_BYTES", 1 << 62)
    slow = io.read_qrels(p)
    assert fast == slow and list(fast) == list(slow)


@pytest.mark.parametrize("text", [
    "q1 0\u00a0x c1 1\n",  # a non-ASCII space inside the iter token: 5 fields for str.split()
    "q1\u2003 0 c1 1\n",  # ... at the end of a query id
    "q1 0 c1\x1c 1\n",  # an ASCII separator that str.split() takes as whitespace
    "q1 0 c1 1\nq1 0 c1 2\n",  # a duplicate pair
    "q1 0 c1 1\nq2 0 c2 1\nq1 0 c1 2\n",  # a duplicate pair in another run of the query
])
def test_arrow_qrels_refuses_what_the_line_reader_decides(tmp_path, text):
    p = tmp_path / "qrels.txt"
    p.write_text(text, encoding="utf-8")
    assert io._read_qrels_arrow(p) is None


_ROWS = [
    {"id": "a", "text": "x", "image": None, "grains": [{"text": "red", "type": "attribute", "key": "k"}], "meta": {"m": [1, 2.5]}},
    {"id": 7, "grains": [{"text": 3, "type": "entity"}], "meta": {}},
    {"id": "b", "image": "images/b.png", "meta": [["k", "v"]]},  # pairs: from_dict makes a dict of them
    {"id": "c", "grains": None, "meta": None, "other": 1},
]


def test_fast_row_parsing_equals_from_dict():
    assert io._parse_rows(Query, _ROWS, "f", "query") == [Query.from_dict(r) for r in _ROWS]
    assert io._parse_rows(Candidate, _ROWS, "f", "candidate") == [Candidate.from_dict(r) for r in _ROWS]
    assert io._queries(_ROWS) == [Query.from_dict(r) for r in _ROWS]
    assert io._candidates(_ROWS) == [Candidate.from_dict(r) for r in _ROWS]
    q = io._queries(_ROWS)
    assert type(q[1].id) is str and type(q[1].grains[0].text) is str and type(q[2].meta) is dict


@pytest.mark.parametrize("bad, pattern", [
    ({"text": "x"}, r"query None \(record 2\): lacks field 'id'"),
    ({"id": "q", "grains": [{"text": "t"}]}, r"query 'q' \(record 2\): grain #1 lacks field 'type'"),
    ({"id": "q", "meta": 5}, r"query 'q' \(record 2\): field 'meta' must be an object"),
])
def test_fast_row_parsing_errors_are_those_of_from_dict(bad, pattern):
    with pytest.raises(BenchmarkError, match=pattern):
        io._parse_rows(Query, [_ROWS[0], bad], "f.jsonl", "query")


def _reference_signature(bench, paths):
    h = hashlib.sha256()
    for rel in sorted(paths):
        st = os.stat(bench.image_path(rel))
        h.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def test_stat_signature_is_the_reference_one_and_sees_changes(small_bench):
    b = load_benchmark_dir(small_bench.root)
    paths = {io.MANIFEST}.union(*(io._task_files(t) for t in b.tasks))
    sig = io._stat_signature(b)
    assert sig == _reference_signature(b, paths)
    lines: dict[str, str] = {}
    assert io._stat_signature(b, lines) == sig and set(lines) == paths
    p = small_bench.root / "images/blue.png"
    st = p.stat()
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns + 1))
    assert io._stat_signature(b) != sig and io._stat_signature(b) == _reference_signature(b, paths)
    # an odd reference that the plain string path cannot stat is resolved through image_path
    b.tasks[0].candidates[0].image += "/"
    odd = {io.MANIFEST}.union(*(io._task_files(t) for t in b.tasks))
    assert io._stat_signature(b) == _reference_signature(b, odd)
    # an absolute reference is used as it is
    b.tasks[0].candidates[0].image = str(p)
    absolute = {io.MANIFEST}.union(*(io._task_files(t) for t in b.tasks))
    assert io._stat_signature(b) == _reference_signature(b, absolute)
    p.unlink()
    with pytest.raises(FileNotFoundError):
        io._stat_signature(b)


def test_load_leaves_the_collector_as_it_found_it(small_bench):
    """Loading hands the benchmark's objects to the oldest generation (or to the caller's frozen
    ones) without a collection; the collector is on, or off, as before, and a caller's freeze stays."""
    load_benchmark_dir(small_bench.root)
    assert gc.isenabled() and gc.get_freeze_count() == 0
    b = load_benchmark_dir(small_bench.root)
    assert gc.isenabled() and gc.get_freeze_count() == 0 and gc.get_count()[0] < 700
    gc.disable()
    try:
        load_benchmark_dir(small_bench.root)
        assert not gc.isenabled()
    finally:
        gc.enable()
    gc.freeze()
    try:
        frozen = gc.get_freeze_count()
        b2 = load_benchmark_dir(small_bench.root)
        assert gc.get_freeze_count() > frozen and gc.isenabled()
    finally:
        gc.unfreeze()
    assert dataclasses.asdict(b) == dataclasses.asdict(b2)


@pytest.mark.parametrize("chunk_bytes", [1, 7, 64, 1 << 20])
@pytest.mark.parametrize("text", [
    '{"id": "a"},{"id": "b"\n"text": "x"}\n',  # a value cut over two lines: joined as an array it read as 2 rows
    '{"id": "a"}\n{"id": "b",\n"text": "x"}\n',  # one object over two lines
    '{"id": "a"} {"id": "b"}\n',  # two values on a line
    '{"id": "a"}\n {"id": "b"}\n\n{"id": "c"} \n{"id": "d"}',  # whitespace, blank lines, no final newline
    '{"id": "a"}\r\n{"id": "b", "t": "\\u2028 \u2028 \u00e9"}\r\n',  # CRLF, a raw U+2028 inside a string
    '{"id": "a", "n": [1, 2.5, -0.0, 1e400, NaN, true, null, {"x": {}}]}\n[1]\n',
    '{"id": "a"}\n{"text": "x"}\n',
    '{"id": "a"}\n{oops\n',
    '',
    '\n',
])
def test_read_jsonl_is_json_loads_of_each_line(tmp_path, monkeypatch, text, chunk_bytes):
    """The chunked reader gives the line-by-line reader's rows, or its one-line error, whatever the
    chunk size (lines cut between chunks)."""
    monkeypatch.setattr(io, "_JSONL_CHUNK_BYTES", chunk_bytes)
    p = tmp_path / "c.jsonl"
    p.write_text(text, encoding="utf-8", newline="")
    try:
        with open(p, encoding="utf-8") as f:
            expected = io._jsonl_lines(f, p)
    except BenchmarkError as e:
        with pytest.raises(BenchmarkError) as ei:
            io._read_jsonl(p)
        assert str(ei.value) == str(e)
    else:
        got = io._read_jsonl(p)
        assert got == expected and repr(got) == repr(expected)


def test_loads_many_is_json_loads_of_each_text_or_none():
    import json

    from mrbench.data.jsonenc import loads_many

    texts = ['{"a": [1, 2]}\n', ' "x, y"', "3", "null", "\t{}\r\n", '"\\ud800 \u2028"', "-0", "1e400"]
    assert repr(loads_many(texts)) == repr([json.loads(t) for t in texts])
    for bad in (['{"a": 1},{"b": 2', '"c": 3}'],  # a value cut over two texts: joined, it read as two values
                ["\ufeff1"], [""], ["1 2"], ['{"a": 1}', "]"]):
        assert loads_many(bad) is None
