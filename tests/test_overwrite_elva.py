"""What `elva-train run --overwrite` may delete, and what `elva-train plot -o` may write over (audit).

Offline and fast: the refusals come before any input is checked, and the one replacement that goes
through stops before training (the input check is stubbed).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from elva_baseline.config import TrainConfig
from elva_baseline.trainer import Trainer, TrainingError
from elva_baseline.trainlog import TrainLog


def _cli(*args: str):
    from elva_baseline.cli import app

    return CliRunner().invoke(app, list(args))


def _one_error_line(res, *needles: str) -> None:
    lines = res.output.strip().splitlines()
    assert res.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: "), res.output
    assert "Traceback" not in res.output and ".tmp" not in res.output, res.output
    for n in needles:
        assert n in lines[0], res.output


def _run_dir(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "config.json").write_text("{}")
    (path / "train_log.jsonl").write_text('{"stage": "warmup", "step": 1, "global_step": 1, "time": 0.1, "loss": 1.0}\n')
    (path / "last").mkdir()
    return path


def test_overwrite_refuses_a_model_or_checkpoint_folder(tmp_path: Path) -> None:
    """A folder holding a config.json but no train_log.jsonl (a Hugging Face model folder, a checkpoint
    such as RUN/final) is no run: --overwrite refuses it with one line naming it, and deletes nothing."""
    model = tmp_path / "hf-model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    (model / "model.safetensors").write_bytes(b"weights")
    final = _run_dir(tmp_path / "run") / "final"
    final.mkdir()
    (final / "config.json").write_text("{}")
    (final / "model.safetensors").write_bytes(b"weights")
    log_only = tmp_path / "logs"  # a train_log.jsonl without the run's config.json: no run either
    log_only.mkdir()
    (log_only / "train_log.jsonl").write_text("{}\n")
    (log_only / "notes.txt").write_text("mine")
    for folder, missing in ((model, "no train_log.jsonl"), (final, "no train_log.jsonl"), (log_only, "no config.json")):
        before = sorted(p.name for p in folder.iterdir())
        res = _cli("run", "-q", "-o", str(folder), "--overwrite", "--set", "data.benchmark=nope")
        _one_error_line(res, f"--output {folder}:", missing, "not a training run")
        assert sorted(p.name for p in folder.iterdir()) == before
        with pytest.raises(TrainingError, match="not a training run"):
            Trainer(TrainConfig(), folder, progress=False, overwrite=True)
    assert (model / "model.safetensors").read_bytes() == b"weights"


def test_overwrite_refuses_a_file_a_dangling_link_and_the_current_directory(tmp_path: Path, monkeypatch) -> None:
    f = tmp_path / "notes.txt"
    f.write_text("mine")
    _one_error_line(_cli("run", "-q", "-o", str(f), "--overwrite"), f"--output {f}: is a file")
    assert f.read_text() == "mine"
    dangling = tmp_path / "gone"
    dangling.symlink_to(tmp_path / "nothing")
    _one_error_line(_cli("run", "-q", "-o", str(dangling), "--overwrite"), f"--output {dangling}: is a symbolic link")
    run = _run_dir(tmp_path / "run")
    monkeypatch.chdir(run)
    _one_error_line(_cli("run", "-q", "-o", ".", "--overwrite"), "--output .: is the current directory")
    assert (run / "last").is_dir()


def test_overwrite_replaces_a_run_through_a_symbolic_link(tmp_path: Path, monkeypatch) -> None:
    """A link to a run directory: the run at its target is checked and replaced and the link kept (before,
    rmtree refused the link with a message that named no path); a link to a model folder is refused."""
    monkeypatch.setattr(Trainer, "_check_inputs", lambda self: None)
    run = _run_dir(tmp_path / "runs" / "2024")
    link = tmp_path / "latest"
    link.symlink_to(run)
    Trainer(TrainConfig(), link, progress=False, overwrite=True)
    assert link.is_symlink() and Path(os.readlink(link)) == run and run.is_dir() and not any(run.iterdir())
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    (model / "model.safetensors").write_bytes(b"w")
    to_model = tmp_path / "to-model"
    to_model.symlink_to(model)
    with pytest.raises(TrainingError, match=f"--output {to_model} \\(a link to {model}\\): holds files that are not"):
        Trainer(TrainConfig(), to_model, progress=False, overwrite=True)
    assert (model / "model.safetensors").is_file()
    # a plain run directory, and what a run that failed before its first update leaves, are replaced
    plain = _run_dir(tmp_path / "plain")
    Trainer(TrainConfig(), plain, progress=False, overwrite=True)
    assert plain.is_dir() and not any(plain.iterdir())
    leftover = tmp_path / "leftover"
    leftover.mkdir()
    (leftover / "config.json").write_text(json.dumps(TrainConfig().resolved_dict()))  # (the run's own config)
    Trainer(TrainConfig(), leftover, progress=False, overwrite=True)
    assert not any(leftover.iterdir())


def _log(run: Path) -> Path:
    run.mkdir()
    with TrainLog(run / "train_log.jsonl") as w:
        for i in range(1, 4):
            w.write({"stage": "warmup", "step": i, "global_step": i, "time": 0.1 * i, "loss": 1.0 / i})
    return run / "train_log.jsonl"


def test_plot_format_follows_the_suffix_and_other_files_are_never_replaced(tmp_path: Path) -> None:
    """`plot -o`: the suffix picks the format (a .pdf is a PDF, not PNG bytes); a suffix that is no image
    format (the training log itself, a .json, none) is refused with one line and the file left as it was."""
    log = _log(tmp_path / "run")
    text = log.read_bytes()
    for name, magic in (("c.png", b"\x89PNG"), ("c.pdf", b"%PDF"), ("c.SVG", b"<?xml"), ("c.jpg", b"\xff\xd8")):
        res = _cli("plot", str(log.parent), "-o", str(tmp_path / name))
        assert res.exit_code == 0, res.output
        assert (tmp_path / name).read_bytes().startswith(magic), name
    summary = tmp_path / "run" / "summary.json"
    summary.write_text("{}")
    for target in (log, summary, tmp_path / "notes.txt", tmp_path / "noext", tmp_path / "x.pgf"):
        res = _cli("plot", str(log.parent), "-o", str(target))
        _one_error_line(res, f"--output {target}:", ".png", ".pdf", ".svg")
    assert log.read_bytes() == text and summary.read_text() == "{}"
    assert not (tmp_path / "notes.txt").exists() and not (tmp_path / "noext").exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no temporary file left


def test_plot_errors_name_the_users_path(tmp_path: Path) -> None:
    """An existing directory as -o, or a path under a file: one line naming -o's path, not a temporary
    file beside it (before: 'realdir.tmp.png: is a directory')."""
    log = _log(tmp_path / "run")
    d = tmp_path / "realdir"
    d.mkdir()
    _one_error_line(_cli("plot", str(log), "-o", str(d)), f"--output {d}: is a directory")
    d_png = tmp_path / "dir.png"
    d_png.mkdir()
    _one_error_line(_cli("plot", str(log), "-o", str(d_png)), f"--output {d_png}: is a directory")
    under = log / "x.png"
    _one_error_line(_cli("plot", str(log), "-o", str(under)), f"--output {under}: cannot write the plot",
                    "a part of the path is a file")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir.png", "realdir", "run"]
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["train_log.jsonl"]


def test_a_folder_with_only_a_config_json_is_not_taken_for_a_failed_start(tmp_path: Path) -> None:
    """A model folder reduced to its config.json is not what a run that failed before its first update
    leaves (a config.json and an empty train_log.jsonl): a new run refuses it instead of writing its own
    config.json over it; the leftover of a failed start is still started over."""
    from elva_baseline.trainer import holds_run

    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text('{"architectures": ["CLIPModel"]}')
    with pytest.raises(TrainingError, match="holds files that are not a training run"):
        Trainer(TrainConfig(), model)
    assert (model / "config.json").read_text() == '{"architectures": ["CLIPModel"]}'
    failed = tmp_path / "failed"
    failed.mkdir()
    (failed / "config.json").write_text(json.dumps(TrainConfig().resolved_dict()))
    assert not holds_run(failed) and holds_run(model)
    (failed / "train_log.jsonl").write_text("")
    assert not holds_run(failed)
