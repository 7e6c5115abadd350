"""``mrbench build mbeir``: the M-BEIR fixture → a multi-grain benchmark in mrbench's format."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

import mrbench
from fixtures.mbeir_fixture import write_mbeir_fixture
from mrbench.builders.mbeir import REPORT_FILE, build_mbeir
from mrbench.errors import BenchmarkError

TEXT_TASKS = ["mscoco_task0", "mscoco_task3", "cirr_task7"]


@pytest.fixture(scope="module")
def mbeir(tmp_path_factory) -> Path:
    return write_mbeir_fixture(tmp_path_factory.mktemp("mbeir"), n_queries=12, n_pool=30)


def _nights_annotations(root: Path, path: Path) -> Path:
    rows = [json.loads(line) for line in (root / "query/test/mbeir_nights_task4_test.jsonl").read_text().splitlines()]
    with path.open("w") as f:
        for i, q in enumerate(rows):
            grains = [{"text": "dog", "type": "entity"}, {"text": "brown", "type": "attribute"}][: 1 + i % 2]
            f.write(json.dumps({"id": q["qid"], "text": f"nights {q['qid']}", "grains": grains}) + "\n")
    return path


def test_build_is_deterministic_and_loads(mbeir: Path, tmp_path: Path) -> None:
    ann = _nights_annotations(mbeir, tmp_path / "nights.jsonl")
    a, rep = build_mbeir(mbeir, tmp_path / "a", per_task=5, min_grains=2, annotations=ann)
    b, _ = build_mbeir(mbeir, tmp_path / "b", per_task=5, min_grains=2, annotations=ann)
    assert a.fingerprint == b.fingerprint
    bench = mrbench.load_benchmark(str(tmp_path / "a"))
    assert [t.name for t in bench.tasks] == ["coco_t2i", "coco_i2t", "nights_i2i", "cirr_it2i"]
    for t in bench.tasks:
        assert len(t.queries) <= 5 and all(q.n_grains >= 2 for q in t.queries)
        assert len(t.candidates) == 30 and set(t.qrels) == {q.id for q in t.queries}
        assert t.query_instruction  # deterministic: the first prompt of the task's row
    i2t = bench.task("coco_i2t")
    assert i2t.query_modality == "image" and all(q.meta.get("grain_source_text") for q in i2t.queries)
    assert bench.task("cirr_it2i").query_modality == "image+text"
    on_disk = json.loads((tmp_path / "a" / REPORT_FILE).read_text())
    assert on_disk == rep and rep["fingerprint"] == a.fingerprint
    t2i = rep["tasks"]["coco_t2i"]
    assert t2i["kept"] == min(5, t2i["eligible"]) and sum(t2i["by_grain_count"].values()) == t2i["kept"]


def test_image_only_task_without_grains_is_named(mbeir: Path, tmp_path: Path) -> None:
    with pytest.raises(BenchmarkError, match=r"nights_task4.*--annotations"):
        build_mbeir(mbeir, tmp_path / "x", per_task=5)
    assert not (tmp_path / "x").exists()  # nothing half-written


def test_cli_build_mbeir(mbeir: Path, tmp_path: Path) -> None:
    from mrbench.cli.app import app

    out = tmp_path / "cli"
    res = CliRunner().invoke(app, ["build", "mbeir", "--mbeir-dir", str(mbeir), "--output", str(out), "--per-task", "4",
                                   "--tasks", ",".join(TEXT_TASKS)])
    assert res.exit_code == 0, res.output
    assert "coco_t2i" in res.output and "fingerprint" in res.output
    bad = CliRunner().invoke(app, ["build", "mbeir", "--mbeir-dir", str(tmp_path / "nope"), "--output", str(tmp_path / "y")])
    assert bad.exit_code != 0 and "nope" in bad.output and "Traceback" not in bad.output


def test_mllm_extractor_plumbing_on_a_tiny_random_qwen2vl(mbeir: Path, tmp_path: Path) -> None:
    """A random model answers garbage: every query gets no grains, the build names the task."""
    from fixtures.tiny_qwen2vl import build_tiny_qwen2vl

    with pytest.raises(BenchmarkError, match="extractor-model"):
        build_mbeir(mbeir, tmp_path / "x", extractor="mllm")
    model = build_tiny_qwen2vl(tmp_path / "qwen")
    with pytest.raises(BenchmarkError, match=r"mscoco_task0: none of its 12 queries has >= 2 grains \(mllm"):
        build_mbeir(mbeir, tmp_path / "y", tasks=["mscoco_task0"], extractor="mllm", extractor_model=str(model),
                    extractor_kwargs={"device": "cpu", "max_new_tokens": 4, "cache_dir": str(tmp_path / "cache")})


def test_nights_grains_from_the_query_images_with_mllm(mbeir: Path, tmp_path: Path, monkeypatch) -> None:
    """Image-only queries without captions (NIGHTS) get grains read off their own image by the mllm extractor."""
    from fixtures.tiny_qwen2vl import build_tiny_qwen2vl

    from mrbench.grains.mllm import MLLMExtractor

    asked: list[bool] = []

    def fake_generate(self, items, *, strict, image=False):
        asked.extend([image] * len(items))
        return ['[{"text": "red", "type": "attribute"}, {"text": "shape", "type": "entity"}]' for _ in items]

    monkeypatch.setattr(MLLMExtractor, "_generate", fake_generate)
    model = build_tiny_qwen2vl(tmp_path / "qwen")
    bench, report = build_mbeir(mbeir, tmp_path / "n", tasks=["nights_task4"], per_task=3, extractor="mllm",
                                extractor_model=str(model), extractor_kwargs={"device": "cpu", "cache_dir": str(tmp_path / "c")})
    task = bench.tasks[0]
    assert task.name == "nights_i2i" and len(task.queries) == 3 and asked and all(asked)
    assert all(q.meta.get("grain_source") == "image" and q.n_grains == 2 for q in task.queries)
    assert report["tasks"]["nights_i2i"]["grains_from_images"] == report["tasks"]["nights_i2i"]["queries_read"]
