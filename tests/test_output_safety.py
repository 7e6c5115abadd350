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
    (out / "sensitivity.parquet").write_text("x")  # (an entry results hold, which this run does not write: it goes)
    assert invoke("evaluate", "-b", TINY, "-e", "random", "-o", str(out), "-q", "--overwrite",
                  "--no-sensitivity").exit_code == 0
    assert (out / "results.json").is_file() and not (out / "sensitivity.parquet").exists()


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


def test_overwrite_refuses_a_results_directory_holding_other_things(tmp_path: Path):
    """A cache or other results put inside a results directory would go with it."""
    out = tmp_path / "res"
    assert invoke("evaluate", "-b", TINY, "-e", "random", "-o", str(out), "-q", "--no-sensitivity").exit_code == 0
    (out / "mine").mkdir()
    one_line_error(invoke("evaluate", "-b", TINY, "-e", "random", "-o", str(out), "-q", "--overwrite",
                          "--no-sensitivity"), "holds mine beside evaluation results", "move it out first")
    assert (out / "mine").is_dir()


def test_build_overwrite_refuses_a_benchmark_holding_results(tmp_path: Path):
    bench = tmp_path / "bench"
    assert invoke("build", "synth", "--size", "tiny", "-o", str(bench)).exit_code == 0
    assert invoke("evaluate", "-b", str(bench), "-e", "random", "-o", str(bench / "results"), "-q",
                  "--no-sensitivity").exit_code == 0
    one_line_error(invoke("build", "synth", "--size", "tiny", "-o", str(bench), "--overwrite"),
                   "holds results beside a benchmark")
    one_line_error(invoke("export", str(bench), "-o", str(bench), "--overwrite"), "holds results beside")
    assert (bench / "results" / "results.json").is_file()


def test_cache_inside_the_output_is_refused_up_front(tmp_path: Path):
    out = tmp_path / "res"
    one_line_error(invoke("evaluate", "-b", TINY, "-e", "random", "-o", str(out), "--cache-dir", str(out / "cache"),
                          "-q"), "lies inside --output", "keep the cache elsewhere")
    assert not out.exists()


def test_several_encoders_into_one_encoders_results_are_refused(tmp_path: Path):
    out = tmp_path / "res"
    assert invoke("evaluate", "-b", TINY, "-e", "random", "-o", str(out), "-q", "--no-sensitivity").exit_code == 0
    one_line_error(invoke("evaluate", "-b", TINY, "-e", "random", "-e", "constant", "-o", str(out), "-q",
                          "--overwrite"), "holds the results of one encoder")


def test_output_through_a_symbolic_link_writes_its_target(tmp_path: Path):
    target = tmp_path / "real"
    link = tmp_path / "link"
    assert invoke("evaluate", "-b", TINY, "-e", "random", "-o", str(target), "-q", "--no-sensitivity").exit_code == 0
    link.symlink_to(target, target_is_directory=True)
    before = (target / "results.json").stat().st_mtime_ns
    assert invoke("evaluate", "-b", TINY, "-e", "constant", "-o", str(link), "-q", "--overwrite",
                  "--no-sensitivity").exit_code == 0
    assert link.is_symlink() and (target / "results.json").stat().st_mtime_ns != before
    assert '"constant"' in (target / "results.json").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link", "real"]  # no staging or .old-* left


def test_dangling_link_as_output_is_refused_up_front(tmp_path: Path):
    link = tmp_path / "dangling"
    link.symlink_to(tmp_path / "nowhere")
    one_line_error(invoke("evaluate", "-b", TINY, "-e", "random", "-o", str(link), "-q"),
                   "is a symbolic link to", "which does not exist")
    one_line_error(invoke("build", "synth", "--size", "tiny", "-o", str(link)), "is a symbolic link to")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dangling"]


def test_non_utf8_output_name_is_one_line(tmp_path: Path):
    bad = os.fsdecode(os.fsencode(str(tmp_path)) + b"/bad\xffname")
    one_line_error(invoke("evaluate", "-b", TINY, "-e", "random", "-o", bad, "-q"), "not valid UTF-8")
    one_line_error(invoke("build", "synth", "--size", "tiny", "-o", bad), "not valid UTF-8")
    assert list(tmp_path.iterdir()) == []


def test_leaderboard_file_through_a_symbolic_link_is_updated_in_place(tmp_path: Path):
    from mrbench.data.io import atomic_write_text

    real = tmp_path / "lb.json"
    real.write_text("{}")
    link = tmp_path / "lblink.json"
    link.symlink_to(real)
    atomic_write_text(link, '{"a": 1}')
    assert link.is_symlink() and real.read_text() == '{"a": 1}'


def test_sigterm_during_a_build_removes_its_staging(tmp_path: Path):
    """Every command handles SIGTERM as Ctrl-C (not only evaluate and elva-train): a killed build
    leaves no staging directory."""
    import subprocess
    import sys

    from fixtures.procs import sigterm_when

    out = tmp_path / "b"
    p = subprocess.Popen([sys.executable, "-m", "mrbench", "build", "synth", "--size", "200", "-o", str(out)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env={**os.environ, "MRBENCH_HOME": str(tmp_path / "home")})
    out_, err = sigterm_when(p, lambda: any(tmp_path.glob(".b.staging-*/images/*/*")), settle=0.2)
    assert p.returncode == 130, (p.returncode, err)
    assert err.strip().splitlines()[-1].startswith("interrupted: "), err
    assert sorted(x.name for x in tmp_path.iterdir()) == ["home"] or sorted(x.name for x in tmp_path.iterdir()) == []


def test_one_encoder_over_several_encoders_results_says_so(tmp_path: Path):
    out = tmp_path / "res"
    assert invoke("evaluate", "-b", TINY, "-e", "random", "-e", "constant", "-o", str(out), "-q",
                  "--no-sensitivity").exit_code == 0
    one_line_error(invoke("evaluate", "-b", TINY, "-e", "random", "-o", str(out), "-q", "--overwrite"),
                   "holds the results of several encoders")
    assert (out / "random" / "results.json").is_file() and (out / "constant" / "results.json").is_file()


def test_long_output_names_get_short_enough_staging_names(tmp_path: Path):
    """A 250-byte name is legal; its staging and temporary siblings must not push it past 255."""
    from mrbench.data.io import atomic_dir, atomic_write_text

    name = "r" * 250
    with atomic_dir(tmp_path / name) as st:
        (st / "f").write_text("x")
    assert (tmp_path / name / "f").read_text() == "x"
    with atomic_dir(tmp_path / name, overwrite=True) as st:
        (st / "g").write_text("y")
    assert [p.name for p in (tmp_path / name).iterdir()] == ["g"]
    atomic_write_text(tmp_path / ("j" * 250), "z")
    assert (tmp_path / ("j" * 250)).read_text() == "z"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["j" * 250, name]
