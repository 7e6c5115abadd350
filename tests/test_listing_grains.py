"""``mrbench info`` shows the "<2" grain bucket (the one evaluate reports) when a task has such queries."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from mrbench.cli.app import app
from mrbench.data.schema import Benchmark, Candidate, Grain, Query, Task

runner = CliRunner()


def _bench(tmp_path: Path, grain_counts: list[int]) -> Path:
    from mrbench.data.io import save_benchmark

    queries = [Query(id=f"q{i}", text=f"query {i}", grains=[Grain(text=f"g{j}", type="entity") for j in range(n)])
               for i, n in enumerate(grain_counts)]
    cands = [Candidate(id=f"c{i}", text=f"cand {i}") for i in range(len(grain_counts))]
    task = Task(name="t2t", query_modality="text", candidate_modality="text", queries=queries, candidates=cands,
                qrels={f"q{i}": {f"c{i}": 1} for i in range(len(grain_counts))})
    bench = Benchmark(name="lowg", version="1", tasks=[task], root=tmp_path, split="test")
    out = tmp_path / "b"
    save_benchmark(bench, out)
    return out


def _row(output: str, name: str) -> list[str]:
    head = next(line for line in output.splitlines() if "grains" in line)
    row = next(line for line in output.splitlines() if name in line)
    cols = [c.strip() for c in row.strip("│┃ ").split("│")]
    hcols = [c.strip() for c in head.strip("│┃ ").split("┃")]
    return [hcols[cols.index(c)] + "=" + c for c in cols if "/" in c]


def test_info_shows_low_grain_bucket(tmp_path: Path) -> None:
    out = _bench(tmp_path, [0, 1, 1, 3, 6])
    r = runner.invoke(app, ["info", str(out)], env={"COLUMNS": "200"})
    assert r.exit_code == 0, r.output
    assert _row(r.stdout, "t2t") == ["grains <2/2/3/4/5+=3/0/1/0/1"]


def test_info_without_low_grain_queries_keeps_four_buckets(tmp_path: Path) -> None:
    out = _bench(tmp_path, [2, 3, 4, 5, 9])
    r = runner.invoke(app, ["info", str(out)], env={"COLUMNS": "200"})
    assert r.exit_code == 0, r.output
    assert _row(r.stdout, "t2t") == ["grains 2/3/4/5+=1/1/1/2"]


def test_labels_match_evaluate_buckets() -> None:
    from mrbench.metrics.aggregate import grain_bucket_labels

    assert grain_bucket_labels((2, 3, 4, 5)) == ["<2", "2", "3", "4", "5+"]
