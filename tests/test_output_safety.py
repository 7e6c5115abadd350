"""--overwrite replaces only what mrbench wrote: a directory of other files, the current directory or
one above it is refused (one line, before any work, nothing deleted); `-o .` is no traceback; a
results directory or a folder of images passed as a benchmark gets a message saying what it is."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mrbench.cli.app import app

TINY = "mrbench-synth-tiny"
runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, list(args))


def one_line_error(res, *needles: str) -> str:
    assert res.exit_code != 0, res.output
    lines = [ln for ln in res.output.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), res.output
    for n in needles:
        assert n in lines[0], res.output
    return lines[0]


@pytest.fixture()
def user_dir(tmp_path: Path) -> Path:
    d = tmp_path / "mine"
    d.mkdir()
    (d / "important.txt").write_text("keep me")
    return d


def test_evaluate_overwrite_keeps_a_folder_of_other_files(user_dir: Path):
    one_line_error(invoke("evaluate", "-b", TINY, "-e", "random", "-o", str(user_dir), "-q"),
                   "no results.json", "choose another --output")
    one_line_error(invoke("evaluate", "-b", TINY, "-e", "random", "-o", str(user_dir), "-q", "--overwrite"),
                   "holds files that are not evaluation results", "no results.json")
    assert sorted(p.name for p in user_dir.iterdir()) == ["important.txt"]


def test_evaluate_overwrite_still_replaces_results(tmp_path: Path):
    out = tmp_path / "res"
    assert invoke("evaluate", "-b", TINY, "-e", "random", "-o", str(out), "-q", "--no-sensitivity").exit_code == 0
    (out / "extra.txt").write_text("x")  # results (with results.json), whatever else sits there
    assert invoke("evaluate", "-b", TINY, "-e", "random", "-o", str(out), "-q", "--overwrite",
                  "--no-sensitivity").exit_code == 0
    assert (out / "results.json").is_file() and not (out / "extra.txt").exists()


def test_several_encoders_go_into_subdirectories_of_any_folder(user_dir: Path):
    res = invoke("evaluate", "-b", TINY, "-e", "random", "-e", "constant", "-o", str(user_dir), "-q", "--overwrite",
                 "--no-sensitivity")
    assert res.exit_code == 0, res.output
    assert (user_dir / "important.txt").read_text() == "keep me"
    assert (user_dir / "random" / "results.json").is_file()


def test_output_dot_is_refused_up_front(tmp_path: Path, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    one_line_error(invoke("evaluate", "-b", TINY, "-e", "random", "-o", ".", "-q", "--overwrite"),
                   "is the current directory")
    one_line_error(invoke("evaluate", "-b", TINY, "-e", "random", "-o", "..", "-q", "--overwrite"),
                   "is the current directory or holds it")
    one_line_error(invoke("build", "synth", "--size", "tiny", "-o", ".", "--overwrite"), "is the current directory")
    assert os.getcwd() == str(work) and work.is_dir()


def test_output_dot_without_overwrite_in_an_empty_directory_works(tmp_path: Path, monkeypatch):
    """An empty current directory takes the results (nothing is replaced, the staging has a name)."""
    from mrbench.data.io import atomic_dir

    work = tmp_path / "empty"
    work.mkdir()
    monkeypatch.chdir(work)
    with atomic_dir(Path("sub/..")) as st:  # ('.'-like paths are made absolute before staging beside them)
        (st / "f").write_text("x")
    assert (tmp_path / "empty" / "f").read_text() == "x"


def test_build_and_export_overwrite_keep_a_folder_of_other_files(user_dir: Path, tmp_path: Path):
    one_line_error(invoke("build", "synth", "--size", "tiny", "-o", str(user_dir), "--overwrite"),
                   "holds files that are not a benchmark", "no manifest.json")
    one_line_error(invoke("export", TINY, "-o", str(user_dir), "--overwrite"),
                   "holds files that are not a Parquet export")
    assert sorted(p.name for p in user_dir.iterdir()) == ["important.txt"]
    out = tmp_path / "bench"
    assert invoke("build", "synth", "--size", "tiny", "-o", str(out)).exit_code == 0
    assert invoke("build", "synth", "--size", "tiny", "-o", str(out), "--overwrite").exit_code == 0  # a benchmark: replaced


def test_mbeir_build_refuses_a_taken_output_before_reading(user_dir: Path, tmp_path: Path):
    """(The M-BEIR directory does not exist: the output is checked first.)"""
    one_line_error(invoke("build", "mbeir", "--mbeir-dir", str(tmp_path / "none"), "-o", str(user_dir)),
                   "not empty")
    one_line_error(invoke("build", "mbeir", "--mbeir-dir", str(tmp_path / "none"), "-o", str(user_dir), "--overwrite"),
                   "holds files that are not a benchmark")


def test_trainer_overwrite_keeps_a_folder_of_other_files(user_dir: Path):
    from elva_baseline.config import TrainConfig
    from elva_baseline.trainer import Trainer, TrainingError

    with pytest.raises(TrainingError, match="holds files that are not a training run"):
        Trainer(TrainConfig(), user_dir, overwrite=True)
    assert sorted(p.name for p in user_dir.iterdir()) == ["important.txt"]


def test_results_or_image_folder_as_benchmark_says_what_it_is(tmp_path: Path):
    out = tmp_path / "res"
    assert invoke("evaluate", "-b", TINY, "-e", "random", "-o", str(out), "-q", "--no-sensitivity").exit_code == 0
    one_line_error(invoke("evaluate", "-b", str(out), "-e", "random"), "is a results directory")
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "a.jpg").write_bytes(b"\xff\xd8")
    one_line_error(invoke("evaluate", "-b", str(photos), "-e", "random"), "not a benchmark directory",
                   "mrbench build hf --dataset")
