"""`elva-train` under adverse conditions: a kill while last/ is replaced, a full disk, signals, bad
arguments to plot."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

pytest.importorskip("torch")
pytest.importorskip("open_clip")

from fixtures.elva import TINY  # noqa: E402  (tests/ is on sys.path under pytest)
from fixtures.procs import sigterm_when  # noqa: E402


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _cli(*args: str):
    from elva_baseline.cli import app

    return CliRunner().invoke(app, list(args))


def _sets(*extra: str) -> list[str]:
    return [a for s in TINY + list(extra) for a in ("--set", s)]


@pytest.fixture(scope="module")
def interrupted_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A warmup-only run stopped after 5 of 8 updates (last/ holds step 3), never modified: copy it."""
    from elva_baseline.config import TrainConfig
    from elva_baseline.trainer import Trainer

    out = tmp_path_factory.mktemp("interrupted") / "run"
    cfg = TrainConfig().with_overrides(TINY + ['stages=["warmup"]'])
    assert not Trainer(cfg, out, progress=False, stop_after=5).run()["final"]
    return out


def _copy_run(src: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "run"
    shutil.copytree(src, dst)
    return dst


# --------------------------------------------------------------------------------------------------
# 1. a kill between the two renames of a checkpoint swap


def test_resume_recovers_last_from_a_swap_cut_short(interrupted_run: Path, tmp_path: Path) -> None:
    """Killed between `last → .last.old-*` and `.last.staging-* → last`: --resume restores last/ from
    the complete staging directory (one line), removes the leftovers and finishes the run."""
    out = _copy_run(interrupted_run, tmp_path)
    shutil.copytree(out / "last", out / ".last.old-0000aaaa")
    os.replace(out / "last", out / ".last.staging-1111bbbb")
    half = out / ".last.staging-2222cccc"  # a save killed midway: no config.json yet (newest, but not complete)
    shutil.copytree(out / ".last.staging-1111bbbb", half)
    (half / "config.json").unlink()
    res = _cli("run", "-q", "-o", str(out), "--resume")
    assert res.exit_code == 0, res.output
    assert f"{out / 'last'} was missing" in res.output and "restored it from .last.staging-1111bbbb" in res.output
    assert "warmup: 8 updates" in res.output
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == []


def test_recover_checkpoint_dir_prefers_a_complete_staging_then_an_old_one(interrupted_run: Path, tmp_path: Path) -> None:
    from elva_baseline.checkpoint import is_complete_resume_point, recover_checkpoint_dir

    out = _copy_run(interrupted_run, tmp_path)
    last = out / "last"
    assert is_complete_resume_point(last)
    assert recover_checkpoint_dir(last) is None  # nothing to do
    # only an old one is complete (the staging's weights were cut short): the old one comes back
    shutil.copytree(last, out / ".last.staging-0000aaaa")
    with open(out / ".last.staging-0000aaaa" / "model.safetensors", "r+b") as f:
        f.truncate(1000)
    os.replace(last, out / ".last.old-1111bbbb")
    assert not is_complete_resume_point(out / ".last.staging-0000aaaa")
    assert recover_checkpoint_dir(last) == out / ".last.old-1111bbbb"
    assert is_complete_resume_point(last)
    assert not list(out.glob(".last.*"))
    # nothing complete: nothing is recovered, nothing is removed
    os.replace(last, out / ".last.staging-2222cccc")
    (out / ".last.staging-2222cccc" / "trainer_state.json").unlink()
    assert recover_checkpoint_dir(last) is None and not last.exists()
    assert (out / ".last.staging-2222cccc").is_dir()
    # last/ in place: leftovers of completed swaps are removed, other names are left alone
    shutil.copytree(interrupted_run / "last", last)
    (out / ".final.old-3333dddd").mkdir()
    assert recover_checkpoint_dir(last) is None
    assert [p.name for p in out.glob(".*")] == [".final.old-3333dddd"]


# --------------------------------------------------------------------------------------------------
# 2. a full disk during a save


def _disk_full(*a, **k):
    from safetensors import SafetensorError

    raise SafetensorError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space left '
                          'on device" })')


def test_a_full_disk_during_a_checkpoint_save_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import safetensors.torch

    monkeypatch.setattr(safetensors.torch, "save_file", _disk_full)
    out = tmp_path / "run"
    res = _cli("run", "-q", "-o", str(out), "--stages", "warmup", *_sets())
    assert res.exit_code == 2, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in res.output, res.output
    assert lines[0] == (f"error: cannot write checkpoint {out / 'last'} (Error while serializing: IoError(Os {{ code: 28, "
                        'kind: StorageFull, message: "No space left on device" })); free disk space, then re-run with '
                        "--resume to continue from the last complete checkpoint")
    assert not list(out.glob(".last.*"))  # the staging directory is gone


def test_a_failed_trainer_state_write_names_the_checkpoint_not_its_staging_dir(tmp_path: Path, monkeypatch) -> None:
    import safetensors.torch
    import torch

    from elva_baseline.checkpoint import CheckpointError, write_trainer_state

    monkeypatch.setattr(safetensors.torch, "save_file", _disk_full)
    staging = tmp_path / ".last.staging-0123abcd"
    staging.mkdir()
    p = torch.nn.Parameter(torch.ones(2))
    opt = torch.optim.AdamW([p])
    p.grad = torch.ones(2)
    opt.step()
    with pytest.raises(CheckpointError, match=f"cannot write checkpoint {tmp_path / 'last'} .*free disk space"):
        write_trainer_state(staging, opt, step=1, stage="rl")
    monkeypatch.undo()
    (tmp_path / "ro").mkdir()
    with pytest.raises(CheckpointError, match="check that .* is writable"):
        write_trainer_state(tmp_path / "ro" / "missing", None, step=1, stage="rl")


# --------------------------------------------------------------------------------------------------
# 3. file permissions


def test_checkpoint_files_get_the_usual_permissions(interrupted_run: Path, tmp_path: Path) -> None:
    """model.safetensors (safetensors writes it 0600) and optimizer.safetensors get 0o666 & ~umask,
    like config.json and trainer_state.json — under two umasks."""
    import torch

    from elva_baseline.checkpoint import load_checkpoint, save_checkpoint

    model, cfg = load_checkpoint(interrupted_run / "last", trainable=True)
    opt = torch.optim.AdamW(model.parameters())
    for umask in (0o022, 0o002):
        old = os.umask(umask)
        try:
            out = save_checkpoint(tmp_path / f"ck{umask:o}", model, {}, step=1, stage="warmup", optimizer=opt)
        finally:
            os.umask(old)
        modes = {f.name: f.stat().st_mode & 0o777 for f in out.iterdir()}
        assert modes == {n: 0o666 & ~umask for n in ("config.json", "model.safetensors", "optimizer.safetensors",
                                                     "trainer_state.json")}


# --------------------------------------------------------------------------------------------------
# 4. plot given something that is not a training log


def test_plot_of_a_file_that_is_not_a_log_says_what_to_pass(interrupted_run: Path, tmp_path: Path) -> None:
    import json

    run = _copy_run(interrupted_run, tmp_path)
    (run / "summary.json").write_text(json.dumps({"updates": 5, "stages": []}))  # one line, but not a record
    (run / "curves.bin").write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe")
    (run / "empty").mkdir()
    want = f"; pass an elva-train run directory or its train_log.jsonl ({run} or {run / 'train_log.jsonl'})"
    for arg, what in [(run / "config.json", "a JSON file, not a log of one JSON record per line"),
                      (run / "summary.json", "a JSON file, not a log of one JSON record per line"),
                      (run / "curves.bin", "not a text file"),
                      (run / "last", "a directory that holds no train_log.jsonl"),
                      (run / "empty", "a directory that holds no train_log.jsonl")]:
        res = _cli("plot", str(arg))
        assert res.exit_code == 2, res.output
        assert res.output.strip() == f"error: {arg} is not a training log ({what}){want}", res.output
    assert not (run / "curves.png").exists()
    res = _cli("plot", str(run))
    assert res.exit_code == 0 and (run / "curves.png").is_file(), res.output


# --------------------------------------------------------------------------------------------------
# 5. SIGTERM


def test_sigterm_during_run_says_where_to_resume_from(tmp_path: Path) -> None:
    """`kill` (SIGTERM) of `elva-train run` acts as Ctrl-C: one line naming the checkpoint to resume
    from, exit code 130 (not a silent 143)."""
    import subprocess
    import sys

    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "elva_baseline.cli", "run", "-q", "--threads", "1", "-o", str(out), "--stages", "warmup",
           *_sets("warmup.steps=100000", "eval.every=100000")]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output, _ = sigterm_when(proc, (out / "last" / "trainer_state.json").is_file)
    assert proc.returncode == 130, output
    assert output.strip() == f"interrupted: the last checkpoint is in {out / 'last'}; re-run with --resume to continue"


# --------------------------------------------------------------------------------------------------
# 6. --threads 0, --stages rl from a random init


@pytest.mark.parametrize("command", ["run", "bundle"])
def test_threads_below_one_are_refused(tmp_path: Path, command: str) -> None:
    out = tmp_path / "run"
    args = ["run", "-q", "-o", str(out), *_sets()] if command == "run" else ["bundle", "-q", "--out", str(out)]
    for n in ("0", "-2"):
        res = _cli(*args, "--threads", n)
        assert res.exit_code == 2, res.output
        assert res.output.strip() == f"error: --threads {n}: must be at least 1; leave it out for torch's default"
        assert not out.exists()


def test_rl_without_warmup_or_init_warns_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import elva_baseline.trainer

    monkeypatch.setattr(elva_baseline.trainer, "train", lambda *a, **k: {"stages": []})
    warning = ("warning: the rl stage without warmup starts from a random initialisation, which is also its KL "
               "reference; pass --set model.init=RUN/warmup (a warmup checkpoint) to start from a trained model")
    base = ["run", "-q", "-o", str(tmp_path / "run"), *_sets()]
    res = _cli(*base, "--stages", "rl")
    assert res.exit_code == 0 and res.output.strip() == warning, res.output
    for extra in (["--stages", "warmup,rl"], ["--stages", "warmup"], [],
                  ["--stages", "rl", "--set", f"model.init={tmp_path / 'w'}"]):
        res = _cli(*base, *extra)
        assert res.exit_code == 0 and "warning" not in res.output, (extra, res.output)


# --------------------------------------------------------------------------------------------------
# 7. documentation and the curves


def test_readme_config_table_names_every_key_and_run_commands_have_an_output() -> None:
    import dataclasses
    import re

    from elva_baseline.config import TrainConfig
    from elva_baseline.rewards import RewardConfig
    from elva_baseline.sampling import SamplingConfig

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    sections = {name: list(TrainConfig().to_dict()[name]) for name in ("warmup", "rl", "model")}
    sections["reward"] = [f.name for f in dataclasses.fields(RewardConfig)]
    sections["sampling"] = [f.name for f in dataclasses.fields(SamplingConfig)]
    for name, keys in sections.items():
        rows = [ln for ln in readme.splitlines() if ln.startswith(f"| `{name}` |")]
        assert len(rows) == 1, name
        missing = [k for k in keys if f"`{k}`" not in rows[0]]
        assert not missing, f"README config table, {name}: {missing}"
    runs = re.findall(r"elva-train run\s[^`\n]*", readme)  # commands, not prose naming `elva-train run`
    assert runs and all(re.search(r"\s(-o|--output)\s", r) for r in runs), [r for r in runs if " -o " not in r]


def test_curves_tell_the_rl_loss_from_the_kl(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The RL loss is about β·KL: on twin axes the two curves coincide, so they differ in style and the
    legend says why."""
    import matplotlib.pyplot as plt

    from elva_baseline.trainlog import TrainLog, plot_log

    log = tmp_path / "train_log.jsonl"
    with TrainLog(log) as w:
        for i in range(1, 6):
            w.write({"stage": "rl", "step": i, "global_step": i, "time": i, "loss": 0.2 * 0.01 * i, "kl": 0.01 * i,
                     "reward_mean": 0.1, "reward_std": 0.01})
    figs = []
    real_close = plt.close
    monkeypatch.setattr(plt, "close", lambda fig=None: figs.append(fig))
    plot_log(log, tmp_path / "curves.png")
    fig = figs[0]
    (loss,) = [ln for a in fig.axes for ln in a.get_lines() if ln.get_label().startswith("RL loss")]
    (kl,) = [ln for a in fig.axes for ln in a.get_lines() if ln.get_label().startswith("KL")]
    assert (loss.get_linestyle(), loss.get_color(), loss.get_linewidth()) != (kl.get_linestyle(), kl.get_color(),
                                                                             kl.get_linewidth())
    assert loss.get_linestyle() != kl.get_linestyle() and loss.get_linewidth() > kl.get_linewidth()
    assert "β·KL" in loss.get_label()
    real_close(fig)


# --------------------------------------------------------------------------------------------------
# 1b. the swap window met by Ctrl-C / SIGTERM, or by a run without --resume


def test_an_interrupt_between_the_renames_restores_last_and_says_resume(interrupted_run: Path, tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    import elva_baseline.trainer

    out = _copy_run(interrupted_run, tmp_path)

    def interrupted_in_the_window(*a, **k):
        shutil.copytree(out / "last", out / ".last.staging-1111bbbb")
        os.replace(out / "last", out / ".last.old-0000aaaa")
        raise KeyboardInterrupt

    monkeypatch.setattr(elva_baseline.trainer, "train", interrupted_in_the_window)
    res = _cli("run", "-q", "-o", str(out), "--resume")
    assert res.exit_code == 130, res.output
    assert res.output.strip().splitlines() == [
        f"{out / 'last'} was missing (a checkpoint save was cut short while replacing it); restored it from "
        ".last.staging-1111bbbb",
        f"interrupted: the last checkpoint is in {out / 'last'}; re-run with --resume to continue"]
    assert not list(out.glob(".last.*"))


def test_a_run_without_resume_recovers_last_and_says_to_resume(interrupted_run: Path, tmp_path: Path) -> None:
    out = _copy_run(interrupted_run, tmp_path)
    shutil.copytree(out / "last", out / ".last.old-0000aaaa")
    os.replace(out / "last", out / ".last.staging-1111bbbb")
    res = _cli("run", "-q", "-o", str(out), *_sets())
    assert res.exit_code == 2, res.output
    assert "restored it from .last.staging-1111bbbb" in res.output and "pass --resume to continue it" in res.output
    assert (out / "last").is_dir() and (out / ".last.old-0000aaaa").is_dir()  # only --resume cleans up
