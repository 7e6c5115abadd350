"""What the leaderboard refuses although it verifies: partial runs (``--tasks``), encoders that read the
ground truth (``oracle``), and a parent directory of several results directories (pointed at its children)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mrbench.leaderboard.store import add_benchmark, submit
from mrbench.leaderboard.verify import SubmissionError, verify_results


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A small MRBench-Synth, a leaderboard that knows it, and results of `random` (all tasks and t2i only)
    and `oracle` (all tasks), the two full runs side by side under one parent directory."""
    from mrbench import evaluate
    from mrbench.builders.synth import build_synth

    root = tmp_path_factory.mktemp("submitrules")
    build_synth(root / "bench", size=12, image_size=32)
    out = {"bench": root / "bench", "lb": root / "lb.json", "parent": root / "results"}
    for name, enc, tasks in (("random", "random", None), ("oracle", "oracle", None), ("partial", "random", ["t2i"])):
        d = out["parent"] / name if tasks is None else root / name
        evaluate(out["bench"], enc, tasks=tasks, output=d, cache=False, grain_sensitivity=False)
        out[name] = d
    add_benchmark(out["lb"], out["bench"])
    return out


def _app():
    from mrbench.cli.app import app

    return app


def _one_error_line(output: str) -> str:
    lines = output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in output, output
    return lines[0]


# ------------------------------------------------------------------------------------------ partial runs
def test_partial_results_verify_but_are_not_ranked(world: dict[str, Path], lb: Path) -> None:
    assert verify_results(world["partial"], benchmark=world["bench"]).ok  # verification is fine
    before = lb.read_bytes()
    for self_reported in (False, True):
        with pytest.raises(SubmissionError, match=r"partial/results.json: results cover 1 of the 4 tasks of mrbench-synth "
                                                  r"\(missing: i2t, i2i, it2i\).*evaluate without --tasks"):
            submit(world["partial"], lb, benchmark=world["bench"], self_reported=self_reported)
    assert lb.read_bytes() == before
    r = CliRunner().invoke(_app(), ["submit", str(world["partial"]), "-l", str(lb), "-b", str(world["bench"]),
                                    "--training", "train-split"])
    assert r.exit_code == 2 and "missing: i2t, i2i, it2i" in _one_error_line(r.output)
    assert lb.read_bytes() == before
    r = CliRunner().invoke(_app(), ["verify", str(world["partial"]), "-b", str(world["bench"])])
    assert r.exit_code == 0 and r.output.startswith("ok: ")


def test_full_results_are_still_ranked(world: dict[str, Path], lb: Path) -> None:
    e = submit(world["random"], lb, benchmark=world["bench"]).entry
    assert e["status"] == "verified" and set(e["scores"]["tasks"]) == {"t2i", "i2t", "i2i", "it2i"}


# ---------------------------------------------------------------------------------- ground-truth readers
def test_oracle_records_that_it_reads_the_ground_truth(world: dict[str, Path]) -> None:
    from mrbench.encoders.builtin import OracleEncoder
    from mrbench.leaderboard.store import reads_ground_truth

    assert OracleEncoder().meta.extra == {"reads_ground_truth": True}
    enc = json.loads((world["oracle"] / "results.json").read_text())["encoder"]
    assert enc["extra"]["reads_ground_truth"] is True and reads_ground_truth(enc)


@pytest.mark.parametrize("edit", ["as written", "before the flag", "spec as a class path", "renamed spec"])
def test_ground_truth_results_verify_but_are_refused(world: dict[str, Path], lb: Path, tmp_path: Path, edit: str) -> None:
    d = tmp_path / "oracle"
    shutil.copytree(world["oracle"], d)
    data = json.loads((d / "results.json").read_text())
    if edit != "as written":
        data["encoder"]["extra"] = {}  # results written before the flag: the spec or name@revision tells
    if edit == "spec as a class path":
        data["encoder"]["spec"] = "mrbench.encoders.builtin:OracleEncoder"
    if edit == "renamed spec":  # the flag alone tells
        data["encoder"].update(spec="my-oracle", name="my-oracle", extra={"reads_ground_truth": True})
    (d / "results.json").write_text(json.dumps(data))
    assert verify_results(d, benchmark=world["bench"]).ok
    before = lb.read_bytes()
    with pytest.raises(SubmissionError, match=r"oracle/results.json: encoder '(my-)?oracle' reads the benchmark's "
                                              r"ground truth.*does not rank it"):
        submit(d, lb, benchmark=world["bench"], training="zero-shot")
    assert lb.read_bytes() == before
    r = CliRunner().invoke(_app(), ["submit", str(d), "-l", str(lb), "-b", str(world["bench"]), "--training", "zero-shot"])
    assert r.exit_code == 2 and "ground truth" in _one_error_line(r.output)
    assert lb.read_bytes() == before


def test_ordinary_encoders_do_not_read_the_ground_truth(world: dict[str, Path]) -> None:
    from mrbench.leaderboard.store import reads_ground_truth

    enc = json.loads((world["random"] / "results.json").read_text())["encoder"]
    assert not reads_ground_truth(enc)
    assert not reads_ground_truth({"name": "oracle-clip", "revision": "v1", "spec": "hf:acme/oracle-clip", "extra": {}})
    assert not reads_ground_truth({"name": "x", "revision": "v1", "extra": {"reads_ground_truth": False}})


def test_results_schema_still_validates_ground_truth_results(world: dict[str, Path]) -> None:
    from mrbench.leaderboard.verify import load_results

    assert load_results(world["oracle"])["encoder"]["extra"] == {"reads_ground_truth": True}


# ------------------------------------------------------------------------------------ parent directories
def test_parent_of_results_directories_names_them(world: dict[str, Path], lb: Path, tmp_path: Path) -> None:
    parent = world["parent"]
    with pytest.raises(SubmissionError, match=r"results: holds no results.json, but its subdirectories oracle, random do; "
                                              r"pass one of them, e.g. mrbench verify .*results/oracle$"):
        verify_results(parent, benchmark=world["bench"])
    before = lb.read_bytes()
    with pytest.raises(SubmissionError, match=r"subdirectories oracle, random do; .*e.g. mrbench submit .*results/oracle$"):
        submit(parent, lb, benchmark=world["bench"])
    assert lb.read_bytes() == before
    for cmd in ("verify", "submit"):
        r = CliRunner().invoke(_app(), [cmd, str(parent), "-b", str(world["bench"])])
        line = _one_error_line(r.output)
        assert r.exit_code == 2 and "results file not found" not in line and f"mrbench {cmd} {parent / 'oracle'}" in line


def test_many_subdirectories_are_abridged_and_an_empty_directory_says_not_found(world: dict[str, Path],
                                                                               tmp_path: Path) -> None:
    many = tmp_path / "many"
    for i in range(7):
        (many / f"run{i}").mkdir(parents=True)
        (many / f"run{i}" / "results.json").write_text("{}")
    (many / "notes").mkdir()  # no results.json: not listed
    with pytest.raises(SubmissionError, match=r"subdirectories run0, run1, run2, run3, run4 and 2 more do;"):
        verify_results(many)
    (tmp_path / "empty").mkdir()
    with pytest.raises(SubmissionError, match=r"empty/results.json: results file not found"):
        verify_results(tmp_path / "empty")
