"""``build mbeir`` decodes every image it keeps: a zero-byte or truncated input image is refused (one line
naming the input file and its M-BEIR id) or, with ``skip_missing``, dropped and counted."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fixtures.mbeir_fixture import write_mbeir_fixture
from mrbench.builders.mbeir import REPORT_FILE, build_mbeir
from mrbench.builders.mbeir_reader import read_task
from mrbench.errors import BenchmarkError

COCO = "mbeir_images/mscoco_images/val2014/COCO_val2014_000000010004.jpg"  # candidate 9:10004 of mscoco_task0


def _first_png(root: Path) -> Path:
    return sorted((root / "mbeir_images/nights_images").rglob("*.png"))[0]


@pytest.fixture
def mbeir(tmp_path: Path) -> Path:
    return write_mbeir_fixture(tmp_path / "mbeir", n_queries=6, n_pool=12)


def test_zero_byte_jpeg_is_refused_naming_input_file_and_id(mbeir: Path, tmp_path: Path) -> None:
    (mbeir / COCO).write_bytes(b"")
    with pytest.raises(BenchmarkError) as e:
        build_mbeir(mbeir, tmp_path / "out", tasks=["mscoco_task0"], per_task=3)
    msg = str(e.value)
    assert str(mbeir / COCO) in msg and "id 9:10004" in msg and "empty file" in msg
    assert "--skip-missing" in msg and "\n" not in msg and "staging" not in msg
    assert not (tmp_path / "out").exists()


def test_truncated_png_is_refused_before_staging(mbeir: Path, tmp_path: Path) -> None:
    png = _first_png(mbeir)
    data = png.read_bytes()
    png.write_bytes(data[: len(data) * 2 // 3])
    ann = tmp_path / "ann.jsonl"
    rows = [json.loads(x) for x in (mbeir / "query/test/mbeir_nights_task4_test.jsonl").read_text().splitlines()]
    ann.write_text("".join(json.dumps({"id": q["qid"], "text": "x", "grains": [{"text": "dog", "type": "entity"},
                                       {"text": "red", "type": "attribute"}]}) + "\n" for q in rows))
    with pytest.raises(BenchmarkError, match=r"cannot be decoded \(first: " + str(png).replace(".", r"\.") + r", id 4:"):
        build_mbeir(mbeir, tmp_path / "out", tasks=["nights_task4"], per_task=3, annotations=ann)
    assert not (tmp_path / "out").exists()


def test_skip_missing_drops_undecodable_and_counts(mbeir: Path, tmp_path: Path) -> None:
    (mbeir / COCO).write_bytes(b"")
    bench, rep = build_mbeir(mbeir, tmp_path / "out", tasks=["mscoco_task0"], per_task=6, skip_missing=True)
    reader = json.loads((tmp_path / "out" / REPORT_FILE).read_text())["tasks"]["coco_t2i"]["reader"]
    assert reader["undecodable_images"] == 1 and reader["dropped_candidates_missing_image"] == 1
    assert reader["undecodable_image_examples"][0].startswith(f"{mbeir / COCO} (id 9:10004")
    t = bench.task("coco_t2i")
    assert "9:10004" not in {c.id for c in t.candidates} and len(t.candidates) == 11
    assert reader["dropped_queries_positive_not_in_pool"] == 1  # query 4 lost its only positive


def test_reader_checks_existence_only_unless_asked(mbeir: Path) -> None:
    (mbeir / COCO).write_bytes(b"")
    assert len(read_task(mbeir, "mscoco_task0").candidates) == 12  # default: existence, as before
    with pytest.raises(BenchmarkError, match="cannot be decoded"):
        read_task(mbeir, "mscoco_task0", decode_images=True)
