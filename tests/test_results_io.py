"""EvaluationResult.load → save: the saved directory is the one evaluate wrote (offline, tiny synth)."""

from __future__ import annotations

import json
import warnings

import pandas as pd
import pytest

import mrbench
from mrbench.report.results import EvaluationResult, aggregate_scores

TINY = "mrbench-synth-tiny"


@pytest.fixture
def saved(tmp_path):
    res = mrbench.evaluate(TINY, "random", ks=(1, 5), cache=False, output=tmp_path / "a")
    return res, tmp_path / "a"


def test_load_gives_the_in_memory_shape_of_a_fresh_result(saved):
    fresh, src = saved
    back = EvaluationResult.load(src)
    assert back.per_query["grain_types"].tolist() == fresh.per_query["grain_types"].tolist()
    assert all(isinstance(v, list) for v in back.per_query["grain_types"])
    assert back.sensitivity is not None and len(back.sensitivity) == len(fresh.sensitivity)
    tasks = back.data["settings"]["tasks"]
    rescored = json.loads(json.dumps(aggregate_scores(back.per_query, tasks, back.sensitivity)))
    assert rescored == back.data["scores"]


def test_load_then_save_round_trips_into_a_directory_verify_accepts(saved, tmp_path):
    from mrbench.leaderboard.verify import verify_results

    _, src = saved
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        EvaluationResult.load(src).save(tmp_path / "b")
    dst = tmp_path / "b"
    for name in ("per_query.parquet", "sensitivity.parquet"):
        a, b = pd.read_parquet(src / name), pd.read_parquet(dst / name)
        assert a.equals(b) and a.dtypes.equals(b.dtypes), name
    assert pd.read_parquet(dst / "per_query.parquet")["grain_types"].str.contains("entity").any()
    assert json.loads((src / "results.json").read_text()) == json.loads((dst / "results.json").read_text())
    runs = sorted(p.name for p in (src / "runs").iterdir())
    assert runs and sorted(p.name for p in (dst / "runs").iterdir()) == runs
    for r in runs:
        assert (src / "runs" / r).read_bytes() == (dst / "runs" / r).read_bytes()
    assert verify_results(dst).ok
    # twice more: a re-loaded re-saved result, into its own directory too
    EvaluationResult.load(dst).save(dst, overwrite=True)
    assert pd.read_parquet(src / "per_query.parquet").equals(pd.read_parquet(dst / "per_query.parquet"))
    assert verify_results(dst).ok


def test_saving_without_run_files_warns_in_one_line(saved, tmp_path):
    import shutil

    _, src = saved
    shutil.rmtree(src / "runs")
    with pytest.warns(UserWarning, match="without run files for t2i") as rec:
        EvaluationResult.load(src).save(tmp_path / "b")
    assert "\n" not in str(rec[0].message) and "verify" in str(rec[0].message)


def test_info_on_a_results_directory_says_what_it_is(saved):
    from typer.testing import CliRunner

    from mrbench.cli.app import app

    _, src = saved
    for arg in (src, src / "results.json"):
        r = CliRunner().invoke(app, ["info", str(arg)], env={"COLUMNS": "400"})
        assert r.exit_code == 0, r.output
        assert "incomplete" not in r.output and "is a results directory" in r.stdout, r.output
        assert f"mrbench verify {src}" in r.stdout and "encoder random on mrbench-synth-tiny" in r.stdout
        assert f"mrbench info {TINY}" in r.stdout and "hit@1" in r.stdout
