"""``build mbeir --annotations FILE`` whose ids match none of an image-only task's qids says so."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fixtures.mbeir_fixture import write_mbeir_fixture
from mrbench.builders.mbeir import build_mbeir
from mrbench.errors import BenchmarkError


def test_annotations_with_no_matching_qid_are_named(tmp_path: Path) -> None:
    root = write_mbeir_fixture(tmp_path / "mbeir", n_queries=4, n_pool=8)
    first_qid = json.loads((root / "query/test/mbeir_nights_task4_test.jsonl").read_text().splitlines()[0])["qid"]
    ann = tmp_path / "wrong.jsonl"
    grains = [{"text": "sky", "type": "scene"}, {"text": "red circle", "type": "entity"}]
    ann.write_text("".join(json.dumps({"id": f"nights:{i}", "text": "", "grains": grains}) + "\n" for i in range(4)))
    with pytest.raises(BenchmarkError) as e:
        build_mbeir(root, tmp_path / "out", tasks=["nights_task4"], per_task=2, annotations=ann)
    msg = str(e.value)
    assert f"none of the ids in --annotations {ann} is a query id of nights_task4" in msg
    assert repr(first_qid) in msg and "\n" not in msg
    assert "give their grains by query id with --annotations FILE" not in msg  # the user did
    assert not (tmp_path / "out").exists()


def test_without_annotations_the_hint_still_asks_for_them(tmp_path: Path) -> None:
    root = write_mbeir_fixture(tmp_path / "mbeir", n_queries=4, n_pool=8)
    with pytest.raises(BenchmarkError, match=r"nights_task4.*give their grains by query id with --annotations FILE"):
        build_mbeir(root, tmp_path / "out", tasks=["nights_task4"], per_task=2)
