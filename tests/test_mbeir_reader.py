"""M-BEIR reader: fixture round trip, every bad-input case, and a 100k-line pool timing print."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from fixtures import mbeir_fixture as mf
from PIL import Image

from mrbench.builders.mbeir_reader import (
    choose_instruction,
    find_task_files,
    iter_candidates,
    iter_queries,
    read_instructions,
    read_jsonl_records,
    read_qrels,
    read_task,
)
from mrbench.errors import MrbenchError

TASK_NAMES = [t.name for t in mf.TASKS]


@pytest.fixture(scope="module")
def mbeir_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return mf.write_mbeir_fixture(tmp_path_factory.mktemp("mbeir"), n_queries=4, n_pool=10, seed=3)


@pytest.fixture
def root_copy(mbeir_root: Path, tmp_path: Path) -> Path:
    """A writable copy of the fixture for tests that corrupt files."""
    return Path(shutil.copytree(mbeir_root, tmp_path / "m"))


def _lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


# ------------------------------------------------------------------------------ round trip


@pytest.mark.parametrize("t", mf.TASKS, ids=TASK_NAMES)
def test_round_trip(mbeir_root: Path, t: mf.FixtureTask) -> None:
    task = read_task(mbeir_root, t.name)
    files = task.files
    raw_q = [json.loads(x) for x in _lines(files.queries)]
    raw_c = [json.loads(x) for x in _lines(files.pool)]
    assert len(task.queries) == len(raw_q) == 4 and len(task.candidates) == len(raw_c) == 10
    assert (task.task_id, task.dataset_id) == (t.task_id, str(t.dataset_id))
    assert (task.query_modality, task.cand_modality) == (t.query_modality, t.cand_modality)
    for q, r in zip(task.queries, raw_q):
        assert (q.qid, q.text, q.image, q.modality, q.task_id) == (
            r["qid"], r["query_txt"], r["query_img_path"], r["query_modality"], r["task_id"])
        assert list(q.pos) == r["pos_cand_list"] and list(q.neg) == r["neg_cand_list"]
        assert task.qrels[q.qid] == {d: 1 for d in r["pos_cand_list"]}
        assert q.dataset_id == str(t.dataset_id)
    for c, r in zip(task.candidates, raw_c):
        assert (c.did, c.text, c.image, c.modality) == (r["did"], r["txt"], r["img_path"], r["modality"])
    # image paths resolve to real, readable images (the first query image is a scikit-image photo)
    photo = mf._photo(mf.PHOTOS[mf.TASKS.index(t) % len(mf.PHOTOS)])
    for item in [*task.queries, *task.candidates]:
        p = task.image_path(item.image)
        if item.image is not None:
            assert p is not None and p.is_file()
            with Image.open(p) as im:
                real = item is task.queries[0] and photo is not None
                assert im.size == (photo.size if real else (48, 32))
                if real:  # a photo, not a flat drawing: many distinct colours
                    assert len(np.unique(np.asarray(im.convert("RGB")).reshape(-1, 3), axis=0)) > 500
        else:
            assert p is None
    if t.name == "mscoco_task3":
        assert all(len(v) == 2 for v in task.qrels.values())
    # instruction: first prompt of the matching row, identical on a second read
    row = next(r for r in mf.INSTRUCTION_ROWS if r[3] == str(t.dataset_id) and r[0] == t.query_modality
               and r[1] == t.cand_modality)
    assert task.instruction is not None and task.instruction.text == row[4] and task.instruction.index == 0
    assert task.instruction.n_available == len([p for p in row[4:] if p])
    assert read_task(mbeir_root, t.name).instruction == task.instruction
    assert task.report["queries"] == 4 and task.report["missing_images"] == 0
    assert all(v == 0 for k, v in task.report.items() if k.startswith("dropped"))


def test_fixture_is_deterministic(tmp_path: Path) -> None:
    a = mf.write_mbeir_fixture(tmp_path / "a", n_queries=3, n_pool=6, seed=7, with_images=False)
    b = mf.write_mbeir_fixture(tmp_path / "b", n_queries=3, n_pool=6, seed=7, with_images=False)
    for f in sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file()):
        assert (a / f).read_bytes() == (b / f).read_bytes(), f
    caption = json.loads(_lines(a / "query/test/mbeir_mscoco_task0_test.jsonl")[0])["query_txt"]
    assert caption.startswith("a ") and " next to a " in caption


def test_without_instruction_and_without_image_check(tmp_path: Path) -> None:
    root = mf.write_mbeir_fixture(tmp_path, n_queries=2, n_pool=4, with_images=False)
    (root / "instructions" / "query_instructions.tsv").unlink()
    task = read_task(root, "cirr_task7", check_images=False, with_instruction=False)
    assert task.instruction is None and len(task.queries) == 2 and task.files.instructions is None


def test_image_root_override(mbeir_root: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "imgs"
    shutil.copytree(mbeir_root / "mbeir_images", elsewhere / "mbeir_images")
    data = tmp_path / "data"
    shutil.copytree(mbeir_root, data, ignore=shutil.ignore_patterns("mbeir_images"))
    with pytest.raises(MrbenchError, match="missing"):
        read_task(data, "nights_task4")
    task = read_task(data, "nights_task4", image_root=elsewhere)
    assert task.image_path(task.queries[0].image).is_file()


# ------------------------------------------------------------------------------ file lookup


def test_missing_files_are_named(root_copy: Path) -> None:
    (root_copy / "qrels/test/mbeir_cirr_task7_test_qrels.txt").unlink()
    (root_copy / "cand_pool/local/mbeir_cirr_task7_test_cand_pool.jsonl").unlink()
    with pytest.raises(MrbenchError) as e:
        find_task_files(root_copy, "cirr_task7")
    msg = str(e.value)
    assert "\n" not in msg
    assert str(root_copy / "qrels/test/mbeir_cirr_task7_test_qrels.txt") in msg
    assert "mbeir_cirr_task7_test_cand_pool.jsonl" in msg and "mbeir_cirr_task7_cand_pool.jsonl" in msg
    assert "huggingface.co/datasets/TIGER-Lab/M-BEIR" in msg
    with pytest.raises(MrbenchError, match="mbeir_cirr_task7_val.jsonl"):
        find_task_files(root_copy, "cirr_task7", split="val")
    with pytest.raises(MrbenchError, match="not of the form"):
        find_task_files(root_copy, "COCO t2i")
    with pytest.raises(MrbenchError, match="M-BEIR directory not found"):
        find_task_files(root_copy / "nope", "cirr_task7")


def test_pool_name_lookup_order(root_copy: Path) -> None:
    local = root_copy / "cand_pool/local"
    with_split, no_split = local / "mbeir_nights_task4_test_cand_pool.jsonl", local / "mbeir_nights_task4_cand_pool.jsonl"
    with_split.rename(no_split)
    assert find_task_files(root_copy, "nights_task4").pool == no_split
    assert len(read_task(root_copy, "nights_task4").candidates) == 10
    shutil.copy(no_split, with_split)
    assert find_task_files(root_copy, "nights_task4").pool == with_split  # split-specific name wins


# ------------------------------------------------------------------------------ JSONL errors


def _rewrite(path: Path, lineno: int, new: str | None) -> None:
    lines = _lines(path)
    if new is None:
        del lines[lineno - 1]
    else:
        lines[lineno - 1] = new
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def test_malformed_json_line(root_copy: Path) -> None:
    pool = root_copy / "cand_pool/local/mbeir_mscoco_task0_test_cand_pool.jsonl"
    _rewrite(pool, 3, '{"did": "9:10002", "txt": null,')
    with pytest.raises(MrbenchError, match=rf"^{pool}:3: not valid JSON"):
        read_task(root_copy, "mscoco_task0")
    _rewrite(pool, 3, "[1, 2]")
    with pytest.raises(MrbenchError, match=rf"^{pool}:3: expected a JSON object"):
        list(iter_candidates(pool))


@pytest.mark.parametrize(("field", "value", "match"), [
    ("qid", None, "field 'qid' is missing"),
    ("qid", 12, "field 'qid' = 12 is invalid"),
    ("pos_cand_list", None, "field 'pos_cand_list' is missing"),
    ("pos_cand_list", "9:10001", "field 'pos_cand_list' = \"9:10001\" is invalid, expected a list"),
    ("query_modality", "video", "field 'query_modality' = \"video\" is invalid"),
    ("task_id", "zero", "field 'task_id' = \"zero\" is invalid, expected an integer"),
    ("query_txt", None, "query_modality is 'text' but 'query_txt' is empty or null"),
])
def test_query_field_errors(root_copy: Path, field: str, value: object, match: str) -> None:
    path = root_copy / "query/test/mbeir_mscoco_task0_test.jsonl"
    rec = json.loads(_lines(path)[1])
    if value is None and field != "query_txt":
        del rec[field]
    else:
        rec[field] = value
    _rewrite(path, 2, json.dumps(rec))
    with pytest.raises(MrbenchError) as e:
        list(iter_queries(path))
    assert str(e.value).startswith(f"{path}:2: ") and match in str(e.value)


def test_candidate_field_errors(root_copy: Path) -> None:
    path = root_copy / "cand_pool/local/mbeir_cirr_task7_test_cand_pool.jsonl"
    rec = json.loads(_lines(path)[4])
    del rec["did"]
    _rewrite(path, 5, json.dumps(rec))
    with pytest.raises(MrbenchError, match=rf"^{path}:5: candidate field 'did' is missing"):
        list(read_jsonl_records(path, "candidate"))
    rec["did"], rec["img_path"] = "8:1", None
    _rewrite(path, 5, json.dumps(rec))
    with pytest.raises(MrbenchError, match=rf"^{path}:5: modality is 'image' but 'img_path' is empty"):
        list(iter_candidates(path))


def test_duplicate_ids(root_copy: Path) -> None:
    pool = root_copy / "cand_pool/local/mbeir_nights_task4_test_cand_pool.jsonl"
    lines = _lines(pool)
    _rewrite(pool, 2, lines[0])
    with pytest.raises(MrbenchError, match=rf"^{pool}:2: duplicate did '4:50000'"):
        read_task(root_copy, "nights_task4")


def test_empty_lines_skipped_and_modality_normalised(root_copy: Path) -> None:
    path = root_copy / "query/test/mbeir_cirr_task7_test.jsonl"
    recs = [json.loads(x) for x in _lines(path)]
    recs[0]["query_modality"] = "text,image"
    path.write_text("\n" + "\n\n".join(json.dumps(r) for r in recs) + "\n   \n", encoding="utf-8")
    out = list(read_jsonl_records(path, "query"))
    assert [n for n, _ in out] == [2, 4, 6, 8]
    assert out[0][1]["query_modality"] == "image,text"
    assert len(read_task(root_copy, "cirr_task7").queries) == 4


# ------------------------------------------------------------------------------ qrels


@pytest.mark.parametrize(("line", "match"), [
    ("9:0 0 9:10000", "expected 'qid 0 did relevance [task_id]' (4 or 5 fields), got 3"),
    ("9:0 0 9:10000 yes 0", "relevance 'yes' is not an integer"),
    ("9:0 0 9:10000 -1", "relevance -1 is negative"),
    ("9:0 0 9:10000 1 t0", "task_id 't0' (fifth field) is not an integer"),
])
def test_bad_qrels_line(tmp_path: Path, line: str, match: str) -> None:
    path = tmp_path / "q.txt"
    path.write_text(f"9:1 0 9:10001 1 0\n\n{line}\n")
    with pytest.raises(MrbenchError) as e:
        read_qrels(path)
    assert str(e.value).startswith(f"{path}:3: ") and match in str(e.value)


def test_qrels_formats_and_duplicates(tmp_path: Path) -> None:
    path = tmp_path / "q.txt"
    path.write_text("9:1 0 9:5 1 0\n9:1 0 9:6 2\n9:2 0 9:5 0 0\n")
    assert read_qrels(path) == {"9:1": {"9:5": 1, "9:6": 2}, "9:2": {"9:5": 0}}
    path.write_text("9:1 0 9:5 1 0\n9:1 0 9:5 2 0\n")
    with pytest.raises(MrbenchError, match=rf"^{path}:2: duplicate qrels line"):
        read_qrels(path)
    with pytest.raises(MrbenchError, match="file missing"):
        read_qrels(tmp_path / "absent.txt")


# ------------------------------------------------------------------------------ images & dropping


def test_missing_images_reported_then_skipped(root_copy: Path) -> None:
    img_dir = root_copy / "mbeir_images/mscoco_images/val2014"
    gone = [img_dir / f"COCO_val2014_{10_000 + j:012d}.jpg" for j in (0, 5, 6)]  # 1 positive, 2 distractors
    for p in gone:
        p.unlink()
    with pytest.raises(MrbenchError) as e:
        read_task(root_copy, "mscoco_task0")
    msg = str(e.value)
    assert "3 image file(s) missing" in msg and str(gone[0]) in msg and "--skip-missing" in msg and "\n" not in msg
    task = read_task(root_copy, "mscoco_task0", skip_missing=True)
    r = task.report
    assert r["missing_images"] == 3 and r["dropped_candidates_missing_image"] == 3
    assert r["missing_image_examples"][0] == str(gone[0])
    assert r["dropped_queries_positive_not_in_pool"] == 1  # query 0 lost its only positive
    assert len(task.queries) == 3 and len(task.candidates) == 7
    assert all(d in {c.did for c in task.candidates} for q in task.qrels.values() for d in q)
    # a missing query image drops the query
    (root_copy / "mbeir_images/mscoco_images/val2014/COCO_val2014_000000003001.jpg").unlink()
    t3 = read_task(root_copy, "mscoco_task3", skip_missing=True)
    assert t3.report["dropped_queries_missing_image"] == 1 and len(t3.queries) == 3


def test_positives_not_in_pool_and_no_qrels(root_copy: Path) -> None:
    qrels = root_copy / "qrels/test/mbeir_nights_task4_test_qrels.txt"
    lines = _lines(qrels)
    lines[0] = lines[0].replace("4:50000", "4:99999")  # query 0: positive not in pool
    del lines[1]  # query 1: no qrels at all
    lines.append("4:123 0 4:50003 1 4")  # qrels for a query not in the query file
    qrels.write_text("\n".join(lines) + "\n")
    task = read_task(root_copy, "nights_task4")
    r = task.report
    assert (r["dropped_queries_positive_not_in_pool"], r["dropped_queries_no_qrels"],
            r["qrels_queries_not_in_query_file"]) == (1, 1, 1)
    assert [q.qid for q in task.queries] == ["4:4002", "4:4003"]
    qrels.write_text("4:1 0 4:1 1 4\n")
    with pytest.raises(MrbenchError, match="no query left to evaluate"):
        read_task(root_copy, "nights_task4")


# ------------------------------------------------------------------------------ instructions


def test_instruction_header_variants(tmp_path: Path) -> None:
    header = ["Query Modality", "candidate-modality", "dataset", "Dataset ID", "Prompt 1", "prompt2", "instruction_3"]
    rows = [["text", "image", "MSCOCO", "9", "Find it.", "", "Or this."],
            ["image, text", "image", "CIRR", "8", "Modify it.", "Change it.", ""]]
    table = read_instructions(mf.write_instructions(tmp_path / "i.tsv", header, rows))
    assert table.lookup(9, "text", "image") == ["Find it.", "Or this."]
    assert table.lookup("mscoco", "text", "image") == table.lookup("9", "text", "image")
    assert table.lookup("CIRR", "text,image", "image") == ["Modify it.", "Change it."]
    with pytest.raises(MrbenchError, match=r"no instruction for dataset 9, image -> text \(rows for dataset 9: text->image\)"):
        table.lookup(9, "image", "text")
    with pytest.raises(MrbenchError, match="did you mean 'mscoco'"):
        table.lookup("mscoc", "text", "image")


def test_instruction_file_errors(tmp_path: Path) -> None:
    p = mf.write_instructions(tmp_path / "a.tsv", ["query_modality", "cand_modality", "dataset_name", "prompt_1"],
                              [["text", "image", "MSCOCO", "Find it."]])
    with pytest.raises(MrbenchError, match=r"a\.tsv:1: header .* has no 'dataset_id' column"):
        read_instructions(p)
    p = mf.write_instructions(tmp_path / "b.tsv", rows=[*mf.INSTRUCTION_ROWS, ["video", "image", "X", "99", "p", "", "", ""]])
    with pytest.raises(MrbenchError, match=rf"b\.tsv:{len(mf.INSTRUCTION_ROWS) + 2}: modality 'video'"):
        read_instructions(p)
    p = mf.write_instructions(tmp_path / "c.tsv", rows=[*mf.INSTRUCTION_ROWS, mf.INSTRUCTION_ROWS[1]])
    with pytest.raises(MrbenchError, match="duplicate row for dataset 9, text -> image"):
        read_instructions(p)
    p = mf.write_instructions(tmp_path / "d.tsv", rows=[["text", "image", "MSCOCO", "9", "", "", "", ""]])
    with pytest.raises(MrbenchError, match="has no prompt"):
        read_instructions(p)


def test_choose_instruction_is_first_and_stable() -> None:
    prompts = ["first", "second", "third"]
    a, b = choose_instruction(prompts, "9, text -> image"), choose_instruction(list(prompts), "9, text -> image")
    assert a == b and (a.text, a.index, a.n_available, a.key) == ("first", 0, 3, "9, text -> image")
    with pytest.raises(MrbenchError, match="no instruction prompts"):
        choose_instruction([], "k")


def test_missing_instruction_row_is_an_error(root_copy: Path) -> None:
    mf.write_instructions(root_copy / "instructions/query_instructions.tsv", rows=mf.INSTRUCTION_ROWS[:2])
    with pytest.raises(MrbenchError, match="no instruction for dataset '4', image -> image"):
        read_task(root_copy, "nights_task4")
    assert read_task(root_copy, "nights_task4", with_instruction=False).instruction is None


# ------------------------------------------------------------------------------ timing


def test_large_pool_timing(tmp_path: Path) -> None:
    path = mf.write_large_pool(tmp_path / "cand_pool/local/mbeir_big_task1_test_cand_pool.jsonl", n=100_000)
    t0 = time.perf_counter()
    n = sum(1 for _ in iter_candidates(path))
    dt = time.perf_counter() - t0
    print(f"\nread 100k-line M-BEIR pool in {dt:.2f} s ({n / dt:,.0f} lines/s)")
    assert n == 100_000
