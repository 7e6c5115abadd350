"""On-disk format, validation, fingerprint, Parquet and HF datasets round trips."""

from __future__ import annotations

import json
import shutil

import pytest

from mrbench.data.fingerprint import fingerprint
from mrbench.data.io import atomic_dir, load_benchmark_dir, read_qrels, save_benchmark
from mrbench.errors import BenchmarkError, FingerprintMismatch, OutputExistsError


def test_round_trip_keeps_content_and_fingerprint(small_bench):
    b = load_benchmark_dir(small_bench.root)
    assert b.fingerprint == small_bench.fingerprint == fingerprint(b)
    assert b.task_names == ["t2i", "i2t"]
    t = b.task("t2i")
    assert t.query_instruction == "Find the image."
    assert t.queries[0].n_grains == 3 and t.queries[0].grain_types == ["attribute", "entity", "relation"]
    assert t.qrels == {"q1": {"c_red": 1}, "q2": {"c_blue": 2, "c_green": 1}}
    assert b.metadata == {"note": "test"}
    # files other tools read
    lines = (small_bench.root / "tasks/t2i/qrels.txt").read_text().splitlines()
    assert lines == ["q1 0 c_red 1", "q2 0 c_blue 2", "q2 0 c_green 1"]
    rows = [json.loads(x) for x in (small_bench.root / "tasks/t2i/queries.jsonl").read_text().splitlines()]
    assert rows[0]["grains"][0] == {"text": "red", "type": "attribute"}


def test_fingerprint_depends_on_content_not_paths_or_labels(small_bench, tmp_path):
    b = load_benchmark_dir(small_bench.root)
    fp = b.fingerprint
    b.name, b.version, b.description = "other", "9", "x"
    assert fingerprint(b) == fp
    # moving an image to another path with the same bytes keeps the fingerprint
    root2 = tmp_path / "moved"
    shutil.copytree(small_bench.root, root2)
    shutil.copyfile(root2 / "images/red.png", root2 / "images/red2.png")
    b2 = load_benchmark_dir(root2, verify=False)
    for t in b2.tasks:
        for it in [*t.queries, *t.candidates]:
            if it.image == "images/red.png":
                it.image = "images/red2.png"
    assert fingerprint(b2) == fp
    # any content change moves it
    b2.tasks[0].queries[0].text += "!"
    assert fingerprint(b2) != fp


def test_tampered_image_gives_fingerprint_mismatch(small_bench):
    from PIL import Image

    Image.new("RGB", (16, 16), (0, 0, 0)).save(small_bench.root / "images/red.png")
    with pytest.raises(FingerprintMismatch, match="fingerprint mismatch.*--no-verify"):
        load_benchmark_dir(small_bench.root)
    assert load_benchmark_dir(small_bench.root, verify=False).name == "small"


@pytest.mark.parametrize(
    "mutate, pattern",
    [
        (lambda r: (r / "manifest.json").unlink(), r"manifest.json: file missing"),
        (lambda r: (r / "manifest.json").write_text("{not json"), r"manifest.json: not valid JSON"),
        (lambda r: (r / "tasks/t2i/queries.jsonl").write_text('{"id": "q1"}\n{oops\n'), r"queries.jsonl:2: not valid JSON"),
        (lambda r: (r / "tasks/t2i/candidates.jsonl").unlink(), r"candidates.jsonl: file missing"),
        (lambda r: (r / "images/blue.png").unlink(), r"blue.png: image of candidate 'c_blue'.*missing"),
        (lambda r: (r / "tasks/t2i/qrels.txt").write_text("q1 0 nope 1\n"), r"unknown candidate id 'nope'"),
        (lambda r: (r / "tasks/t2i/qrels.txt").write_text("qX 0 c_red 1\n"), r"unknown query id 'qX'"),
        (lambda r: (r / "tasks/t2i/qrels.txt").write_text("q1 0 c_red 1\nq1 0 c_red 1\n"), r"qrels.txt:2: duplicate"),
        (lambda r: (r / "tasks/t2i/qrels.txt").write_text("q1 0 c_red\n"), r"qrels.txt:1: expected 4 fields"),
        (lambda r: (r / "tasks/t2i/qrels.txt").write_text("q1 0 c_red x\n"), r"grade 'x' is not an integer"),
        (lambda r: (r / "tasks/t2i/candidates.jsonl").write_text(
            '{"id": "c_red", "image": "images/red.png"}\n{"id": "c_red", "image": "images/blue.png"}\n'),
         r"duplicate candidate id 'c_red'"),
        (lambda r: (r / "tasks/t2i/candidates.jsonl").write_text(""), r"empty candidate pool"),
        (lambda r: (r / "tasks/i2t/queries.jsonl").write_text(""), r"task 'i2t': no queries"),
    ],
)
def test_broken_directories_fail_with_one_line_naming_the_culprit(small_bench, mutate, pattern):
    mutate(small_bench.root)
    with pytest.raises(BenchmarkError, match=pattern) as ei:
        load_benchmark_dir(small_bench.root, verify=False)
    assert "\n" not in str(ei.value)


@pytest.mark.parametrize(
    "rows, pattern",
    [
        ('{"id": "c red", "image": "images/red.png"}\n', r"candidate id 'c red' is empty or contains whitespace"),
        ('{"id": "c\\tred", "image": "images/red.png"}\n', r"candidate id 'c\\tred' is empty or contains whitespace"),
        ('{"id": "", "image": "images/red.png"}\n', r"candidate id '' is empty"),
        ('{"id": "c_red", "image": "images/red.png"}\n{"id": "c_blue"}\n', r"candidate 'c_blue' has no image"),
    ],
)
def test_whole_list_checks_still_name_the_culprit(small_bench, rows, pattern):
    (small_bench.root / "tasks/t2i/candidates.jsonl").write_text(rows)
    with pytest.raises(BenchmarkError, match=pattern):
        load_benchmark_dir(small_bench.root, verify=False)


def test_query_without_text_is_named(small_bench):
    p = small_bench.root / "tasks/t2i/queries.jsonl"
    rows = [json.loads(x) for x in p.read_text().splitlines()]
    rows[1]["text"] = ""
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(BenchmarkError, match=rf"query {rows[1]['id']!r} has no text"):
        load_benchmark_dir(small_bench.root, verify=False)


@pytest.mark.parametrize("chunk_bytes", [1, 64, 1 << 20])
def test_read_jsonl_in_chunks_equals_line_by_line(tmp_path, monkeypatch, chunk_bytes):
    from mrbench.data import io

    monkeypatch.setattr(io, "_JSONL_CHUNK_BYTES", chunk_bytes)
    rows = [{"id": f"c{i}", "text": "a, b] {c}" * (i % 3), "meta": {"k": [i, {"x": None}]}} for i in range(50)]
    p = tmp_path / "c.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with open(p, encoding="utf-8") as f:
        assert io._read_jsonl(p) == io._jsonl_lines(f, p) == rows
    # blank lines and a missing final newline: the line-by-line reader decides, same rows
    p.write_text("\n" + "\n  \n".join(json.dumps(r) for r in rows))
    assert io._read_jsonl(p) == rows
    p.write_text("")
    assert io._read_jsonl(p) == []


@pytest.mark.parametrize(
    "text, match",
    [
        ('{"id": "a"}, {"id": "b"}\n', r"c.jsonl:1: not valid JSON"),  # two objects on one line
        ('{"id": "a"}\n{"id": "b",\n"text": "x"}\n', r"c.jsonl:2: not valid JSON"),  # one object over two lines
        ('{"id": "a"}\n[1, 2]\n', r"c.jsonl:2: expected a JSON object with an 'id' field"),
        ('{"id": "a"}\n{"text": "x"}\n', r"c.jsonl:2: expected a JSON object with an 'id' field"),
        ('{"id": "a"}\n3\n', r"c.jsonl:2: expected a JSON object"),
    ],
)
def test_read_jsonl_errors_name_the_line(tmp_path, text, match):
    from mrbench.data.io import _read_jsonl

    p = tmp_path / "c.jsonl"
    p.write_text(text)
    with pytest.raises(BenchmarkError, match=match) as ei:
        _read_jsonl(p)
    assert "\n" not in str(ei.value)


def test_missing_directory_says_how_to_build(tmp_path):
    with pytest.raises(BenchmarkError, match="mrbench build synth"):
        load_benchmark_dir(tmp_path / "nope")


def test_save_refuses_existing_output_and_leaves_nothing_half_written(small_bench, tmp_path):
    b = load_benchmark_dir(small_bench.root)
    with pytest.raises(OutputExistsError, match="--overwrite"):
        save_benchmark(b, small_bench.root)
    # a failing save leaves neither the target nor a staging directory behind
    b.tasks[0].candidates[0].image = "images/does-not-exist.png"
    out = tmp_path / "out"
    with pytest.raises(BenchmarkError):
        save_benchmark(b, out)
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def test_atomic_dir_keeps_old_content_on_failure(tmp_path):
    out = tmp_path / "d"
    out.mkdir()
    (out / "keep.txt").write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_dir(out, overwrite=True) as st:
            (st / "new.txt").write_text("new")
            raise RuntimeError("boom")
    assert (out / "keep.txt").read_text() == "old" and not (out / "new.txt").exists()
    with atomic_dir(out, overwrite=True) as st:
        (st / "new.txt").write_text("new")
    assert sorted(p.name for p in out.iterdir()) == ["new.txt"]


def test_read_qrels_accepts_trec_whitespace(tmp_path):
    p = tmp_path / "q.txt"
    p.write_text("a\t0\tb\t3\n\nc 0 d 0\n")
    assert read_qrels(p) == {"a": {"b": 3}, "c": {"d": 0}}


def _line_parse(path, monkeypatch):
    import mrbench.data.io as io

    with monkeypatch.context() as m:
        m.setattr(io, "_FAST_QRELS_BYTES", 1 << 62)
        return read_qrels(path)


def test_read_qrels_arrow_path_equals_line_path(tmp_path, monkeypatch):
    """Large qrels go through Arrow's CSV reader: the same dict as the line parser (a query in two
    separate runs, ids with quotes and non-ASCII, negative and large grades), with candidate ids
    shared between queries."""
    import mrbench.data.io as io

    lines = [f"q{i % 7} 0 c{j + 100 * (i // 7)}\"é {(i * 31 + j) % 5 - 1}" for i in range(40) for j in range(i % 3, 60, 3 + i % 4)]
    lines.append("q9 0 big 12345678901")
    p = tmp_path / "qrels.txt"
    p.write_text("\n".join(lines) + "\n", encoding="utf-8")
    used = []
    real = io._read_qrels_arrow
    monkeypatch.setattr(io, "_read_qrels_arrow", lambda path: used.append(1) or real(path))
    monkeypatch.setattr(io, "_FAST_QRELS_BYTES", 0)
    fast = read_qrels(p)
    assert used and real(p) is not None
    slow = _line_parse(p, monkeypatch)
    assert fast == slow and list(fast) == list(slow)
    ids = {id(d) for docs in fast.values() for d in docs}
    assert len(ids) == len({d for docs in fast.values() for d in docs})  # one object per distinct id


@pytest.mark.parametrize("text, match", [
    ("a 0 b 1\nc 0 d 2\na 0 b 3\n", r"q.txt:3: duplicate qrels line for \(a, b\)"),
    ("a 0 b 1\na 0 b 3\n", r"q.txt:2: duplicate qrels line for \(a, b\)"),
    ("a 0 b x\n", r"q.txt:1: grade 'x' is not an integer"),
    ("a 0 b\n", r"q.txt:1: expected 4 fields"),
    ("a 0 b 1 2\n", r"q.txt:1: expected 4 fields"),
    ("a 0 b 1.5\n", r"q.txt:1: grade '1.5' is not an integer"),
    ("a 0 b\u00a0c 1\n", r"q.txt:1: expected 4 fields"),  # a non-ASCII space splits a token, as str.split() does
])
def test_read_qrels_large_file_errors_name_the_line(tmp_path, monkeypatch, text, match):
    """A large file that Arrow's path cannot take as is (duplicates, bad grades, wrong field
    counts) is read line by line, whose error names the file and line."""
    import mrbench.data.io as io

    monkeypatch.setattr(io, "_FAST_QRELS_BYTES", 0)
    p = tmp_path / "q.txt"
    p.write_text(text, encoding="utf-8")
    with pytest.raises(BenchmarkError, match=match):
        read_qrels(p)


@pytest.mark.parametrize("big", [False, True], ids=["lines", "arrow"])
def test_read_qrels_not_utf8_is_one_line_error(tmp_path, monkeypatch, big):
    import mrbench.data.io as io

    monkeypatch.setattr(io, "_FAST_QRELS_BYTES", 0 if big else 1 << 62)
    p = tmp_path / "q.txt"
    p.write_bytes(b"a 0 b 1\nc 0 \xff\xfe 2\n")
    with pytest.raises(BenchmarkError, match=r"q.txt: not UTF-8 text"):
        read_qrels(p)


@pytest.mark.parametrize("text", ["a\t0\tb\t3\n\nc 0 d 0\n", "a 0 b 3\r\nc 0 d 0\r\n", "a  0 b 3\nc 0 d 0\n",
                                  "a 0 b 3\n   \nc 0 d 0", "a 0 b 3\n\nc 0 d 0\n"])
def test_read_qrels_large_file_other_whitespace(tmp_path, monkeypatch, text):
    """Tabs, CRLF, runs of spaces, blank or space-only lines: the same result on both paths."""
    import mrbench.data.io as io

    monkeypatch.setattr(io, "_FAST_QRELS_BYTES", 0)
    p = tmp_path / "q.txt"
    p.write_text(text, newline="")
    assert read_qrels(p) == {"a": {"b": 3}, "c": {"d": 0}}


@pytest.mark.parametrize(
    "obj",
    [
        {"id": "c1", "text": "a dog", "image": None, "kind": "candidate"},
        {"z": 1, "a": [1.5, -0.0, 1e300, 10**30, True, False, None], "m": {"é": "ü\n\t\"\\", "b": {"y": [], "x": {}}}},
        ["qrel", "q1", "c2", 3],
        "plain \u2603 string",
        {"grains": [{"text": "red", "type": "attribute", "key": None}], "id": "q"},
    ],
)
@pytest.mark.parametrize(
    "options",
    [
        dict(sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False),  # the fingerprint's
        dict(sort_keys=True, ensure_ascii=False),  # benchmark JSON lines
        {},
    ],
)
def test_dumps_function_is_json_dumps_byte_for_byte(obj, options):
    from mrbench.data.fingerprint import canonical_json
    from mrbench.data.jsonenc import dumps_function

    assert dumps_function(**options)(obj) == json.dumps(obj, **options)
    if options.get("allow_nan") is False:
        assert canonical_json(obj) == json.dumps(obj, **options).encode()
    with pytest.raises(ValueError if options.get("allow_nan") is False else TypeError):
        dumps_function(**options)({"x": float("nan") if options.get("allow_nan") is False else object()})


def test_written_json_lines_are_those_of_json_dumps(tmp_path):
    from mrbench.data.io import _write_jsonl

    rows = [{"id": f"c{i}", "text": "caf\u00e9 \"x\"" * (i % 2), "meta": {"b": 1, "a": [i, None]}} for i in range(5)]
    _write_jsonl(tmp_path / "c.jsonl", rows)
    want = "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in rows)
    assert (tmp_path / "c.jsonl").read_text(encoding="utf-8") == want


def test_fingerprint_qrels_lines_are_canonical_json():
    """The fingerprint's fast qrels serialisation is byte for byte canonical_json of each record."""
    from mrbench.data.fingerprint import _qrels_lines, canonical_json
    from mrbench.data.schema import Task

    qrels = {"q\"1": {"c\\x": 2, "ç\u2028": 0, "d\x01": 7}, "q0": {"é": 1}}
    t = Task(name="t", query_modality="text", candidate_modality="text", queries=[], candidates=[], qrels=qrels)
    want = b"".join(canonical_json(["qrel", q, d, qrels[q][d]]) + b"\n" for q in sorted(qrels) for d in sorted(qrels[q]))
    assert b"".join(_qrels_lines(t)) == want


def test_parquet_round_trip_same_fingerprint_and_readable_by_datasets(small_bench, tmp_path):
    import datasets
    import pandas as pd

    from mrbench.data.parquet import export_parquet, import_parquet
    from mrbench.data.registry import load_benchmark

    exp = export_parquet(load_benchmark_dir(small_bench.root), tmp_path / "pq")
    q = pd.read_parquet(exp / "tasks/t2i/queries.parquet")
    assert list(q["id"]) == ["q1", "q2"] and list(q["grains"][0][0].keys()) == ["text", "type", "key"]
    ds = datasets.load_dataset("parquet", data_files=str(exp / "tasks/t2i/candidates.parquet"), split="train")
    assert ds.num_rows == 3 and ds[0]["image_bytes"][:4] == b"\x89PNG"
    back = import_parquet(exp, tmp_path / "back")
    assert back.fingerprint == small_bench.fingerprint
    assert load_benchmark_dir(tmp_path / "back").task("t2i").qrels == small_bench.task("t2i").qrels
    # load_benchmark accepts the export directory directly
    assert load_benchmark(exp).fingerprint == small_bench.fingerprint


def test_parquet_import_detects_tampering(small_bench, tmp_path):
    import pandas as pd

    from mrbench.data.parquet import export_parquet, import_parquet

    exp = export_parquet(load_benchmark_dir(small_bench.root), tmp_path / "pq")
    p = exp / "tasks/t2i/qrels.parquet"
    df = pd.read_parquet(p)
    df.loc[0, "grade"] = 5
    df.to_parquet(p, index=False)
    with pytest.raises(FingerprintMismatch):
        import_parquet(exp, tmp_path / "back")
    assert not (tmp_path / "back").exists()


def test_loading_an_export_checks_its_files_each_time(small_bench, tmp_path, monkeypatch):
    """load_benchmark(export dir): an export edited after a first load is imported (and checked) again,
    not served from the earlier import; a manifest without a fingerprint is refused; a broken export's
    error names the export, not the internal staging directory."""
    import json
    import shutil

    import pandas as pd

    from mrbench.data.parquet import export_parquet
    from mrbench.data.registry import load_benchmark

    monkeypatch.setenv("MRBENCH_HOME", str(tmp_path / "home"))
    exp = export_parquet(load_benchmark_dir(small_bench.root), tmp_path / "pq")
    assert load_benchmark(exp).fingerprint == small_bench.fingerprint
    edited = tmp_path / "pq-edited"
    shutil.copytree(exp, edited)
    p = edited / "tasks/t2i/qrels.parquet"
    df = pd.read_parquet(p)
    df.iloc[:-1].to_parquet(p, index=False)  # one judgement dropped, the manifest left as it was
    with pytest.raises(FingerprintMismatch, match=r"pq-edited: content hashes to .* but the source records"):
        load_benchmark(edited)
    p = exp / "tasks/t2i/qrels.parquet"  # the very export loaded above, edited in place
    pd.read_parquet(p).iloc[:-1].to_parquet(p, index=False)
    with pytest.raises(FingerprintMismatch, match=r"pq: content hashes to .* but the source records"):
        load_benchmark(exp)
    nofp = tmp_path / "pq-nofp"
    shutil.copytree(exp, nofp)
    man = json.loads((nofp / "manifest.json").read_text())
    del man["fingerprint"]
    (nofp / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(BenchmarkError, match=r"pq-nofp/manifest.json: records no fingerprint"):
        load_benchmark(nofp)
    bad = tmp_path / "pq-bad"
    shutil.copytree(exp, bad)
    q = bad / "tasks/t2i/queries.parquet"
    pd.read_parquet(q).assign(text=None).to_parquet(q, index=False)
    with pytest.raises(BenchmarkError) as e:
        load_benchmark(bad)
    assert str(e.value).startswith(str(bad)) and "staging" not in str(e.value) and "\n" not in str(e.value)


def test_hf_datasets_round_trip(small_bench, tmp_path):
    import datasets

    from mrbench.data.parquet import from_hf_datasets, hf_header, to_hf_datasets

    b = load_benchmark_dir(small_bench.root)
    dsets = to_hf_datasets(b)
    assert isinstance(dsets["t2i"], datasets.DatasetDict)
    assert set(dsets["t2i"]) == {"queries", "candidates", "qrels"}
    assert isinstance(dsets["t2i"]["candidates"].features["image_data"], datasets.Image)
    # through the datasets on-disk format and back
    for name, dd in dsets.items():
        dd.save_to_disk(str(tmp_path / "hf" / name))
    loaded = {name: datasets.load_from_disk(str(tmp_path / "hf" / name)) for name in dsets}
    back = from_hf_datasets(loaded, hf_header(b), tmp_path / "back")
    assert back.fingerprint == b.fingerprint


def test_unknown_builtin_name_suggests(tmp_path):
    from mrbench.data.registry import load_benchmark
    from mrbench.errors import UnknownNameError

    with pytest.raises(UnknownNameError, match="did you mean 'mrbench-synth'"):
        load_benchmark("mrbench-synt")


def test_png_fingerprint_ignores_compression_but_not_pixels(small_bench):
    from PIL import Image

    from mrbench.data.fingerprint import image_sha256

    p = small_bench.root / "images/red.png"
    before = image_sha256(p)
    raw_before = p.read_bytes()
    with Image.open(p) as im:
        im.load()
        im.save(p, format="PNG", compress_level=0)
    assert p.read_bytes() != raw_before and image_sha256(p) == before
    assert load_benchmark_dir(small_bench.root).fingerprint == small_bench.fingerprint
    Image.new("RGB", (16, 16), (221, 30, 30)).save(p)
    assert image_sha256(p) != before


def test_verification_stamp_skips_rehash_until_a_file_changes(small_bench, monkeypatch):
    import os

    import mrbench.data.fingerprint as fpmod

    load_benchmark_dir(small_bench.root)  # verified, stamp written
    calls = []
    real = fpmod.fingerprint
    monkeypatch.setattr(fpmod, "fingerprint", lambda b, *a, **k: calls.append(1) or real(b, *a, **k))
    load_benchmark_dir(small_bench.root)
    assert calls == []
    p = small_bench.root / "images/blue.png"
    st = p.stat()
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    load_benchmark_dir(small_bench.root)
    assert calls == [1]


def test_fingerprint_check_is_logged_and_skipped_after_a_build(small_bench, tmp_path, monkeypatch):
    """A load that computes the fingerprint says so in one line (a large benchmark takes seconds);
    a freshly built synth directory carries its verification stamp, so its first load does not
    hash everything again."""
    import os

    import mrbench.data.fingerprint as fpmod
    from mrbench.builders.synth import build_synth

    calls = []
    real = fpmod.fingerprint
    monkeypatch.setattr(fpmod, "fingerprint", lambda b, *a, **k: calls.append(1) or real(b, *a, **k))
    lines: list[str] = []
    load_benchmark_dir(small_bench.root, log=lines.append)
    assert calls == [1] and len(lines) == 1
    assert "checking the fingerprint of" in lines[0] and "qrels pairs" in lines[0] and "--no-verify" in lines[0]
    load_benchmark_dir(small_bench.root, log=lines.append)  # stamped now: no hashing, no line
    assert calls == [1] and len(lines) == 1

    built = build_synth(tmp_path / "synth", size="tiny", seed=0)
    calls.clear()
    lines.clear()
    assert load_benchmark_dir(built.root, log=lines.append).fingerprint == built.fingerprint
    assert calls == [] and lines == []  # the first load after the build trusts the build's stamp
    p = built.root / "tasks/t2i/qrels.txt"
    st = p.stat()
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    load_benchmark_dir(built.root, log=lines.append)
    assert calls == [1] and len(lines) == 1


def test_builtin_is_built_once_and_rebuilt_when_damaged():
    from mrbench.data.registry import builtin_dir, load_benchmark

    b = load_benchmark("mrbench-synth-tiny")
    d = builtin_dir("mrbench-synth-tiny")
    assert b.root == d and b.split == "test"
    victim = next((d / "images").rglob("*.png"))
    victim.unlink()
    again = load_benchmark("mrbench-synth-tiny")
    assert victim.is_file() and again.fingerprint == b.fingerprint


def test_gc_paused_restores_the_collector():
    import gc

    from mrbench.data.io import gc_paused

    assert gc.isenabled()
    with gc_paused():
        assert not gc.isenabled()
        with gc_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()  # the inner block leaves it as it found it
    assert gc.isenabled()
    with pytest.raises(ZeroDivisionError), gc_paused():
        1 / 0
    assert gc.isenabled()
    gc.disable()
    try:
        with gc_paused():
            pass
        assert not gc.isenabled()  # was off: stays off
    finally:
        gc.enable()


def test_gc_frozen_freezes_then_unfreezes_and_leaves_a_callers_freeze_alone():
    import gc

    from mrbench.data.io import gc_frozen

    gc.unfreeze()  # whatever an earlier test left frozen
    with gc_frozen() as refreeze:
        n = gc.get_freeze_count()
        assert n > 0
        keep = [[] for _ in range(1000)]  # noqa: F841  (alive at the refreeze below)
        refreeze()
        assert gc.get_freeze_count() >= n + 1000
    assert gc.get_freeze_count() == 0
    gc.freeze()  # the caller's own
    try:
        before = gc.get_freeze_count()
        with gc_frozen() as refreeze:
            refreeze()
        # neither added to nor unfrozen (frozen objects freed meanwhile, by any thread, leave the count)
        assert before - 1000 < gc.get_freeze_count() <= before
    finally:
        gc.unfreeze()


def test_loading_inside_gc_frozen_does_not_walk_the_frozen_objects(small_bench, monkeypatch):
    """gc.get_freeze_count walks every frozen object (18 ms with torch imported): a load inside
    evaluate's gc_frozen block knows they are frozen without it, and still adds its own objects."""
    import gc

    import mrbench.data.io as iomod

    gc.unfreeze()
    with iomod.gc_frozen():
        before = gc.get_freeze_count()
        asked = []
        monkeypatch.setattr(gc, "get_freeze_count", lambda: asked.append(1) or 1)
        bench = iomod.load_benchmark_dir(small_bench.root)
        monkeypatch.undo()
        assert asked == [] and iomod.objects_frozen()
        assert gc.get_freeze_count() > before  # the benchmark's objects joined the frozen ones
    assert gc.get_freeze_count() == 0 and not iomod.objects_frozen()
    assert bench.tasks


def _count_fingerprints(monkeypatch) -> list[int]:
    import mrbench.data.fingerprint as fpmod

    calls: list[int] = []
    real = fpmod.fingerprint
    monkeypatch.setattr(fpmod, "fingerprint", lambda b, *a, **k: calls.append(1) or real(b, *a, **k))
    return calls


def test_loading_some_tasks_reads_only_their_files(small_bench, monkeypatch):
    from mrbench.data import io

    whole = load_benchmark_dir(small_bench.root)  # verified, stamp written
    read: list[str] = []
    real_jsonl, real_qrels = io._read_jsonl, io._read_qrels
    monkeypatch.setattr(io, "_read_jsonl", lambda p: read.append(p.parent.name) or real_jsonl(p))
    monkeypatch.setattr(io, "_read_qrels", lambda p: read.append(p.parent.name) or real_qrels(p))
    calls = _count_fingerprints(monkeypatch)
    part = load_benchmark_dir(small_bench.root, tasks=["i2t"])
    assert read == ["i2t"] * 3 and calls == []
    assert part.task_names == ["i2t"] and part.task("i2t") == whole.task("i2t")
    assert part.fingerprint == whole.fingerprint and part.name == whole.name and part.root == whole.root
    # every task asked for, in any order: the whole benchmark, checked as a whole
    assert load_benchmark_dir(small_bench.root, tasks=["i2t", "t2i"]).task_names == ["t2i", "i2t"]


def test_some_tasks_trusted_while_their_files_are_unchanged(small_bench, monkeypatch):

    load_benchmark_dir(small_bench.root)
    calls = _count_fingerprints(monkeypatch)
    # another task's files changing does not matter to i2t ...
    (small_bench.root / "tasks/t2i/candidates.jsonl").write_text('{"id": "broken"')
    assert load_benchmark_dir(small_bench.root, tasks=["i2t"]).task_names == ["i2t"] and calls == []
    # ... but loading t2i, or everything, reads (and here refuses) it
    with pytest.raises(BenchmarkError, match=r"t2i/candidates.jsonl:1: not valid JSON"):
        load_benchmark_dir(small_bench.root, tasks=["t2i"])
    with pytest.raises(BenchmarkError, match=r"t2i/candidates.jsonl:1: not valid JSON"):
        load_benchmark_dir(small_bench.root)


def test_some_tasks_whose_files_changed_are_verified_with_the_whole(small_bench, monkeypatch):
    import os

    load_benchmark_dir(small_bench.root)
    calls = _count_fingerprints(monkeypatch)
    p = small_bench.root / "images/red.png"  # i2t's query image (and a t2i candidate's)
    st = p.stat()
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert load_benchmark_dir(small_bench.root, tasks=["i2t"]).task_names == ["i2t"]
    assert calls == [1]  # the whole fingerprint, once; the stamp renewed
    load_benchmark_dir(small_bench.root, tasks=["i2t"])
    load_benchmark_dir(small_bench.root)
    assert calls == [1]


def test_some_tasks_tampered_are_refused(small_bench):
    load_benchmark_dir(small_bench.root)
    p = small_bench.root / "tasks/i2t/candidates.jsonl"
    p.write_text(p.read_text().replace("a red square", "a red circle"))
    with pytest.raises(FingerprintMismatch, match="fingerprint mismatch"):
        load_benchmark_dir(small_bench.root, tasks=["i2t"])
    assert load_benchmark_dir(small_bench.root, tasks=["i2t"], verify=False).task("i2t").candidates[0].text == "a red circle"


def test_some_tasks_with_a_stamp_of_an_older_version(small_bench, monkeypatch):
    """A stamp without per-task signatures is renewed by the first load of some tasks, without hashing."""
    from mrbench.data import io

    b = load_benchmark_dir(small_bench.root)
    stamp = io._stamp_path(b)
    rec = json.loads(stamp.read_text())
    stamp.write_text(json.dumps({k: rec[k] for k in ("root", "fingerprint", "stat")}))
    calls = _count_fingerprints(monkeypatch)
    assert load_benchmark_dir(small_bench.root, tasks=["t2i"]).task_names == ["t2i"]
    assert calls == [] and set(json.loads(stamp.read_text())["tasks"]) == {"t2i", "i2t"}


def test_unknown_task_names_one_line_with_suggestion(small_bench):
    from mrbench.errors import UnknownNameError

    with pytest.raises(UnknownNameError, match=r"has no task 'i2tt'.*did you mean 'i2t'.*tasks: t2i, i2t") as ei:
        load_benchmark_dir(small_bench.root, tasks=["i2tt"])
    assert "\n" not in str(ei.value)


@pytest.mark.parametrize("tasks", [None, ["i2t"]])
def test_missing_image_of_a_stamped_benchmark_is_named(small_bench, tasks):
    load_benchmark_dir(small_bench.root)  # verified, stamp written
    (small_bench.root / "images/red.png").unlink()
    with pytest.raises(BenchmarkError, match=r"red.png: image of (query|candidate) .* is missing") as ei:
        load_benchmark_dir(small_bench.root, tasks=tasks)
    assert "\n" not in str(ei.value)


def test_loads_many_is_one_parse_or_none():
    from mrbench.data.jsonenc import loads_many

    texts = ['{"a": [1, 2]}\n', '"x, y"', "3", "null"]
    assert loads_many(texts) == [json.loads(t) for t in texts] and loads_many([]) == []
    for bad in (['{"a": 1}', "  "], ['{"a": 1}, {"b": 2}'], ['{"a": 1', "}"], ["{oops"]):
        assert loads_many(bad) is None


@pytest.mark.parametrize(
    "change, pattern",
    [
        (lambda r: r.update(grains="dog"), r"field 'grains' must be a list"),
        (lambda r: r.update(grains=["dog"]), r"grain #1 must be an object with 'text' and 'type', not str"),
        (lambda r: r["grains"][0].pop("type"), r"grain #1 lacks field 'type'"),
        (lambda r: r.update(meta="x"), r"field 'meta' must be an object"),
    ],
)
def test_malformed_query_fields_name_file_query_and_field(small_bench, change, pattern):
    """A malformed field of one query names its file, the query id and the field, not the manifest."""
    p = small_bench.root / "tasks/t2i/queries.jsonl"
    rows = [json.loads(x) for x in p.read_text().splitlines()]
    assert rows[1]["grains"]
    change(rows[1])
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(BenchmarkError, match=rf"queries.jsonl: query {rows[1]['id']!r} \(record 2\): {pattern}") as ei:
        load_benchmark_dir(small_bench.root, verify=False)
    assert "\n" not in str(ei.value) and "manifest" not in str(ei.value)
