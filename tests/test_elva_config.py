"""The trainer's configuration record and its training log."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from elva_baseline.config import ConfigError, TrainConfig
from elva_baseline.trainlog import TrainLog, plot_log, read_log, rewind_log


def test_defaults_are_the_paper_constants() -> None:
    cfg = TrainConfig()
    cfg.validate()
    assert cfg.rl.group_size == 8 and cfg.rl.beta == 0.2
    r = cfg.reward_config()
    assert (r.alpha, r.epsilon) == (0.4, 0.6)
    s = cfg.sampling_config()
    assert (s.n_hard, s.n_random) == (50, 50)


def test_reward_and_sampling_are_resolved_and_compared_resolved() -> None:
    """The saved form holds every reward / sampling constant; a default given explicitly is no change."""
    cfg = TrainConfig()
    data = cfg.resolved_dict()
    assert data["reward"]["alpha"] == 0.4 and data["sampling"]["n_hard"] == 50 and cfg.reward == {}
    assert TrainConfig.from_dict(data).resolved_dict() == data  # round-trips
    assert cfg.first_difference(cfg.with_overrides(["reward.alpha=0.4", "sampling.n_random=50"])) is None
    assert cfg.first_difference(cfg.with_overrides(["reward.alpha=0.5"])) == ("reward.alpha", 0.4, 0.5)


def test_the_random_negatives_follow_the_run_seed() -> None:
    """sampling.seed defaults to the run's seed (seed 0: the sampling seed 0 as before); set, it wins."""
    assert TrainConfig().sampling_config().seed == 0
    assert TrainConfig().with_overrides(["seed=3"]).sampling_config().seed == 3
    assert TrainConfig().with_overrides(["seed=3", "sampling.seed=5"]).sampling_config().seed == 5
    assert TrainConfig().with_overrides(["seed=3", "sampling.seed=0"]).sampling_config().seed == 0


def test_file_and_overrides(tmp_path: Path) -> None:
    p = tmp_path / "c.json"
    p.write_text(json.dumps({"seed": 3, "rl": {"steps": 7, "beta": 0.1}, "reward": {"delta": 0.05}}))
    cfg = TrainConfig.from_file(p)
    assert cfg.seed == 3 and cfg.rl.steps == 7 and cfg.rl.beta == 0.1 and cfg.reward_config().delta == 0.05
    cfg2 = cfg.with_overrides(["rl.group_size=4", "data.benchmark=mrbench-synth-tiny-train", "stages=[\"warmup\"]"])
    assert cfg2.rl.group_size == 4 and cfg2.data.benchmark == "mrbench-synth-tiny-train" and cfg2.stages == ["warmup"]
    t = tmp_path / "c.toml"
    t.write_text('seed = 1\n[warmup]\nsteps = 5\n')
    assert TrainConfig.from_file(t).warmup.steps == 5


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        ({"rl": {"stepz": 3}}, "rl.stepz"),
        ({"bogus": 1}, "bogus"),
        ({"rl": {"group_size": 1}}, "rl.group_size"),
        ({"rl": {"beta": -1.0}}, "rl.beta"),
        ({"rl": {"clip_eps": 1.5}}, "rl.clip_eps"),
        ({"warmup": {"tau": 0}}, "warmup.tau"),
        ({"warmup": {"steps": "many"}}, "warmup.steps"),
        ({"reward": {"gamma": -0.1}}, "gamma"),
        ({"reward": {"delta": -0.1}}, "delta"),
        ({"reward": {"alpha": -1.0}}, "alpha"),
        ({"reward": {"nope": 1}}, "reward.nope"),
        ({"sampling": {"n_hard": -1}}, "n_hard"),
        ({"stages": ["warmup", "finetune"]}, "stages"),
        ({"regime": "triple"}, "regime"),
        ({"rl": {"objective": "ppo"}}, "rl.objective"),
        ({"rl": {"tau": 0}}, "rl.tau"),
        ({"regime": "generative", "rl": {"objective": "surrogate"}}, "rl.objective"),
        ({"reward": {"rank_only": "yes"}}, "rank_only"),
        ({"model": {"init": 3}}, "model.init"),
        ({"warmup": {"weight_decay": -1}}, "warmup.weight_decay"),
        ({"rl": {"sigma": float("inf")}}, "rl.sigma"),
        ({"rl": {"sigma": float("nan")}}, "rl.sigma"),
        ({"rl": {"lr": float("inf")}}, "rl.lr"),
        ({"rl": {"lr": 1e30}}, "rl.lr"),
        ({"warmup": {"lr": float("nan")}}, "warmup.lr"),
        ({"rl": {"beta": float("inf")}}, "rl.beta"),
        ({"data": {"holdout": float("nan")}}, "data.holdout"),
        ({"generative": {"lora_dropout": 1.5}}, "generative.lora_dropout"),
        ({"generative": {"lora_alpha": float("inf")}}, "generative.lora_alpha"),
        ({"generative": {"temperature": float("inf")}}, "generative.temperature"),
    ],
)
def test_bad_values_name_the_key(data: dict, needle: str) -> None:
    with pytest.raises(ConfigError) as e:
        TrainConfig.from_dict(data)
    assert needle in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("assignment", ["warmup.weight_decay=-1", "rl.sigma=Infinity", "rl.sigma=NaN",
                                        "rl.lr=Infinity", "rl.lr=1e30", "rl.tau=-Infinity"])
def test_bad_numbers_on_the_command_line_name_the_key(assignment: str) -> None:
    with pytest.raises(ConfigError) as e:
        TrainConfig().with_overrides([assignment])
    assert assignment.split("=")[0] in str(e.value) and "\n" not in str(e.value)


def test_data_tasks_is_a_list_of_task_names() -> None:
    """A single name is a one-element list; anything but a non-empty list of strings is refused in one line."""
    assert TrainConfig().with_overrides(['data.tasks="t2i"']).data.tasks == ["t2i"]
    assert TrainConfig().with_overrides(['data.tasks=["t2i", "it2i"]']).data.tasks == ["t2i", "it2i"]
    assert TrainConfig().with_overrides(["data.tasks=null"]).data.tasks is None
    for bad in ["data.tasks=3", "data.tasks=[1]", "data.tasks=[]", 'data.tasks={"a": 1}', "data.tasks=[true]"]:
        with pytest.raises(ConfigError) as e:
            TrainConfig().with_overrides([bad])
        assert "data.tasks" in str(e.value) and "\n" not in str(e.value), bad


def test_bad_files(tmp_path: Path) -> None:
    p = tmp_path / "c.json"
    p.write_text("{not json")
    with pytest.raises(ConfigError, match="c.json: not valid JSON"):
        TrainConfig.from_file(p)
    with pytest.raises(ConfigError, match="cannot read"):
        TrainConfig.from_file(tmp_path / "missing.json")
    with pytest.raises(ConfigError, match="expected section.key=value"):
        TrainConfig().with_overrides(["rl.steps"])


def test_log_round_trip_and_plot(tmp_path: Path) -> None:
    log = tmp_path / "train_log.jsonl"
    with TrainLog(log) as w:
        for i in range(1, 6):
            w.write({"stage": "warmup", "step": i, "global_step": i, "time": i * 0.1, "loss": 2.0 / i})
        for i in range(1, 4):
            w.write({"stage": "rl", "step": i, "global_step": 5 + i, "time": 1.0 + i, "loss": 0.1, "kl": 0.01 * i,
                     "reward_mean": 0.1 * i, "reward_std": 0.05})
        w.write({"stage": "rl", "step": 3, "global_step": 8, "time": 4.0, "eval": {"hit@5": 0.5, "hit@1": 0.2}})
        w.write({"stage": "rl", "step": 4, "global_step": 9, "time": 4.1, "loss": float("nan")})
    with log.open("a") as f:
        f.write('{"stage": "rl", "st')  # a crash mid-write
    recs = read_log(log)
    assert len(recs) == 10 and recs[-1]["loss"] == "nan"
    png = plot_log(log, tmp_path / "curves.png")
    assert png.stat().st_size > 10_000
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"a": 1}\nnot json\n{"b": 2}\n')
    with pytest.raises(ValueError, match="bad.jsonl:2"):
        read_log(bad)


def _log(path: Path, keys: list[tuple[str, int, bool]], tail: str = "") -> None:
    with TrainLog(path) as w:
        for stage, step, ev in keys:
            w.write({"stage": stage, "step": step, "global_step": step, "time": 0.0,
                     **({"eval": {"hit@1": 0.5}} if ev else {"loss": float(step)})})
    with path.open("a") as f:
        f.write(tail)


def _keys(path: Path) -> list[tuple[str, int, bool]]:
    return [(r["stage"], r["step"], "eval" in r) for r in read_log(path)]


def test_rewind_log_cuts_back_to_the_checkpoint(tmp_path: Path) -> None:
    """What a resume keeps of the log: the records up to the checkpoint (its own step's training and
    evaluation records included), never a stage's step-0 evaluation when resuming at that stage's start;
    a record cut short by a crash goes; the log is replaced by a rename (no temporary file is left)."""
    stages = ["warmup", "rl"]
    log = tmp_path / "train_log.jsonl"
    run = [("warmup", 1, False), ("warmup", 2, False), ("warmup", 2, True), ("warmup", 3, False),
           ("warmup", 4, False), ("warmup", 4, True), ("rl", 0, True), ("rl", 1, False), ("rl", 2, False)]
    for (stage, step), want in [(("warmup", 2), run[:3]), (("warmup", 3), run[:4]), (("rl", 0), run[:6]),
                                (("rl", 1), run[:8]), (("warmup", 0), [])]:
        _log(log, run, tail='{"stage": "rl", "st')
        assert rewind_log(log, stages, stage, step) == len(run) + 1 - len(want)
        assert _keys(log) == want and (not want or log.read_text().endswith("\n"))
        log.unlink()
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    _log(log, run)
    before = log.stat()
    assert rewind_log(log, stages, "rl", 2) == 0 and log.stat().st_mtime_ns == before.st_mtime_ns  # not rewritten
    # a log that an earlier version doubled on resume (3, 4 logged, crash, 3, 4, 5 logged again): the
    # later records supersede the earlier ones
    log.unlink()
    _log(log, [("warmup", 1, False), ("warmup", 2, False), ("warmup", 3, False), ("warmup", 4, False),
               ("warmup", 3, False), ("warmup", 4, False), ("warmup", 4, True), ("warmup", 5, False)])
    lines = log.read_text().splitlines()
    assert rewind_log(log, stages, "warmup", 4) == 3
    assert log.read_text().splitlines() == lines[:2] + lines[4:7]  # the kept lines verbatim
    assert rewind_log(tmp_path / "none.jsonl", stages, "rl", 1) == 0 and not (tmp_path / "none.jsonl").exists()
    log.write_text('{"stage": "warmup", "step": 1}\nnot json\n{"stage": "warmup", "step": 2}\n')
    with pytest.raises(ValueError, match=":2: not a JSON object"):
        rewind_log(log, stages, "warmup", 1)
