"""The dual-regime trainer end to end on the tiny synthetic train split: stages, log, checkpoints
that load as mrbench encoders, resume after an interruption, the NaN guard, bad input, the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from elva_baseline.config import TrainConfig
from elva_baseline.trainer import Trainer, TrainingError, train
from elva_baseline.trainlog import read_log

from fixtures.elva import TINY  # noqa: E402  (tests/ is on sys.path under pytest)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _cfg(*extra: str) -> TrainConfig:
    return TrainConfig().with_overrides(TINY + list(extra))


def test_two_stages_end_to_end(tmp_path: Path) -> None:
    import mrbench

    out = tmp_path / "run"
    summary = train(_cfg(), out, progress=False)
    assert [s["stage"] for s in summary["stages"]] == ["warmup", "rl"]
    assert summary["updates"] == 12 and summary["final"]
    for d in ("warmup", "rl", "final", "last"):
        assert (out / d / "model.safetensors").is_file()
    recs = read_log(out / "train_log.jsonl")
    train_recs = [r for r in recs if "eval" not in r]
    assert [r["global_step"] for r in train_recs] == list(range(1, 13))
    rl = [r for r in train_recs if r["stage"] == "rl"]
    assert all({"reward_mean", "reward_std", "kl", "rank_pos_greedy"} <= set(r) for r in rl)
    assert rl[0]["kl"] == pytest.approx(0.0, abs=1e-6)  # the policy starts at the reference
    evals = [r for r in recs if "eval" in r]
    assert evals and {"hit@1", "hit@5"} <= set(evals[-1]["eval"])
    res = mrbench.evaluate("mrbench-synth-tiny", f"elva:{out / 'final'}", tasks=["t2i"], grain_sensitivity=False)
    assert res.data["encoder"]["extra"]["stage"] == "rl"
    assert json.loads((out / "summary.json").read_text())["updates"] == 12
    saved = json.loads((out / "config.json").read_text())  # the effective constants, defaults included
    assert saved["reward"]["alpha"] == 0.4 and saved["sampling"]["n_hard"] == 8 and saved["sampling"]["mode"] == "balanced"


def test_resume_after_interruption_continues_the_run(tmp_path: Path) -> None:
    out = tmp_path / "run"
    first = Trainer(_cfg(), out, progress=False, stop_after=5).run()
    assert first["updates"] == 5 and not first["final"]
    with pytest.raises(TrainingError, match="--resume"):
        Trainer(_cfg(), out, progress=False)
    done = Trainer(_cfg(), out, progress=False, resume=True).run()
    assert done["updates"] == 12 and done["final"]
    steps = [r["global_step"] for r in read_log(out / "train_log.jsonl") if "eval" not in r]
    assert steps == list(range(1, 13))  # at most the progress since the last checkpoint is redone: none here


RESUME = ["rl.steps=6", "rl.refresh_every=3"]  # RL checkpoints at step 3 = a pool refresh: exact resume


@pytest.fixture(scope="module")
def uninterrupted_log(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    out = tmp_path_factory.mktemp("uninterrupted") / "run"
    train(_cfg(*RESUME), out, progress=False)
    return read_log(out / "train_log.jsonl")


@pytest.mark.parametrize("loss, at, where", [("info_nce", 5, ("warmup", 3)), ("grpo_loss", 1, ("rl", 0)),
                                             ("grpo_loss", 5, ("rl", 3))])
def test_resume_after_a_crash_logs_each_step_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  uninterrupted_log: list[dict], loss: str, at: int,
                                                  where: tuple[str, int]) -> None:
    """A crash (Ctrl-C) after a checkpoint and more logged updates: --resume redoes the updates since the
    checkpoint, and the log ends as an uninterrupted run's (apart from the clock), each record once."""
    from elva_baseline import losses

    real = getattr(losses, loss)
    calls = {"n": 0}

    def crashing(*a, **k):
        calls["n"] += 1
        if calls["n"] == at:
            raise KeyboardInterrupt
        return real(*a, **k)

    out = tmp_path / "run"
    with monkeypatch.context() as m:
        m.setattr(losses, loss, crashing)
        with pytest.raises(KeyboardInterrupt):
            train(_cfg(*RESUME), out, progress=False)
    state = json.loads((out / "last" / "trainer_state.json").read_text())
    assert (state["stage"], state["step"]) == where
    before = read_log(out / "train_log.jsonl")
    assert before[-1]["stage"] == where[0] and before[-1]["step"] >= where[1]  # logged past the checkpoint
    summary = Trainer(_cfg(*RESUME), out, progress=False, resume=True).run()
    assert summary["final"] and summary["updates"] == 14
    assert json.loads((out / "summary.json").read_text()) == summary  # the whole run, whatever this process did
    assert [(s["stage"], s["steps"]) for s in summary["stages"]] == [("warmup", 8), ("rl", 6)]
    last_eval = {st: [r["eval"] for r in uninterrupted_log if r["stage"] == st and "eval" in r][-1] for st in ("warmup", "rl")}
    assert [s["eval"] for s in summary["stages"]] == [last_eval["warmup"], last_eval["rl"]]
    assert all(s["seconds"] > 0 for s in summary["stages"]) and summary["stages"][0]["checkpoint"] == str(out / "warmup")

    def untimed(log: list[dict]) -> list[dict]:
        return [{k: v for k, v in r.items() if k != "time"} for r in log]

    log = read_log(out / "train_log.jsonl")
    keys = [(r["stage"], r["step"], "eval" in r) for r in log]
    assert len(keys) == len(set(keys)), keys
    assert untimed(log) == untimed(uninterrupted_log)
    assert [r["global_step"] for r in log if "eval" not in r] == list(range(1, 15))
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # no temporary file left


def test_resume_between_two_pool_refreshes_equals_the_uninterrupted_run(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """An RL checkpoint at step 3 with pools refreshed every 2 updates: the resumed run scores candidates
    with the step-2 pool embeddings (saved with the checkpoint), as the uninterrupted run does."""
    from elva_baseline import losses

    cfg = ["rl.steps=5", "rl.refresh_every=2", "eval.every=0"]
    train(_cfg(*cfg), tmp_path / "whole", progress=False)
    real, calls = losses.grpo_loss, {"n": 0}

    def crashing(*a, **k):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return real(*a, **k)

    out = tmp_path / "run"
    with monkeypatch.context() as m:
        m.setattr(losses, "grpo_loss", crashing)
        with pytest.raises(KeyboardInterrupt):
            train(_cfg(*cfg), out, progress=False)
    state = json.loads((out / "last" / "trainer_state.json").read_text())
    assert (state["stage"], state["step"]) == ("rl", 3) and state["extra"]["rl_pools"]["step"] == 2
    assert state["tensors_sha256"] and (out / "last" / "trainer_tensors.safetensors").is_file()  # not in the JSON
    Trainer(_cfg(*cfg), out, progress=False, resume=True).run()

    def untimed(d: Path) -> list[dict]:
        return [{k: v for k, v in r.items() if k != "time"} for r in read_log(d / "train_log.jsonl")]

    assert untimed(out) == untimed(tmp_path / "whole")
    assert (out / "final" / "model.safetensors").read_bytes() == (tmp_path / "whole" / "final" / "model.safetensors").read_bytes()


def test_nan_loss_stops_and_names_the_step(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    import elva_baseline.losses as losses

    real = losses.info_nce
    calls = {"n": 0}

    def flaky(*a, **k):
        calls["n"] += 1
        out = real(*a, **k)
        return out * float("nan") if calls["n"] == 5 else out

    monkeypatch.setattr(losses, "info_nce", flaky)
    out = tmp_path / "run"
    with pytest.raises(TrainingError) as e:
        train(_cfg(), out, progress=False)
    msg = str(e.value)
    assert "warmup step 5" in msg and "nan" in msg and str(out / "last") in msg
    assert (out / "last" / "model.safetensors").is_file()  # the step-3 checkpoint survives
    assert torch.isfinite(torch.tensor(0.0))


def test_non_finite_weights_stop_before_the_evaluation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Weights that became NaN (the loss still finite) stop the run as a NaN loss does, naming the step,
    before the held-out evaluation or a checkpoint; the step-3 checkpoint survives."""
    import torch

    real, calls = torch.optim.AdamW.step, {"n": 0}

    def corrupting(self, *a, **k):
        out = real(self, *a, **k)
        calls["n"] += 1
        if calls["n"] == 4:  # the update before the step-4 evaluation
            with torch.no_grad():
                self.param_groups[0]["params"][0].fill_(float("nan"))
        return out

    monkeypatch.setattr(torch.optim.AdamW, "step", corrupting)
    out = tmp_path / "run"
    with pytest.raises(TrainingError) as e:
        train(_cfg(), out, progress=False)
    msg = str(e.value)
    assert "warmup step 4" in msg and "lower the learning rate" in msg and str(out / "last") in msg, msg
    assert json.loads((out / "last" / "trainer_state.json").read_text())["step"] == 3


def test_too_few_candidates_for_the_negatives_requested_is_said_once(tmp_path: Path,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    cfg = _cfg('stages=["rl"]', "rl.steps=1", "eval.every=0", "checkpoint.every=0", "sampling.n_hard=30",
               "sampling.n_random=30")  # 60 asked for, from pools of 44-46 candidates
    with caplog.at_level("WARNING", logger="elva_baseline.trainer"):
        train(cfg, tmp_path / "run", progress=False)
    lines = [r.getMessage() for r in caplog.records if "negatives" in r.getMessage()]
    assert len(lines) == 1 and "\n" not in lines[0], lines
    assert "fewer negatives than the 60 requested" in lines[0] and "t2i: " in lines[0] and "missing" in lines[0]
    caplog.clear()
    with caplog.at_level("WARNING", logger="elva_baseline.trainer"):
        train(_cfg('stages=["rl"]', "rl.steps=1", "eval.every=0", "checkpoint.every=0", "sampling.n_hard=4",
                   "sampling.n_random=4"), tmp_path / "ok", progress=False)
    assert not [r for r in caplog.records if "negatives" in r.getMessage()]


def test_learnable_sigma_trains_with_the_full_gaussian_kl(tmp_path: Path) -> None:
    """rl.learnable_sigma: σ gets gradients, and the KL logged is the full Gaussian one (>= 0, finite)."""
    out = tmp_path / "run"
    train(_cfg('stages=["rl"]', "rl.steps=4", "rl.learnable_sigma=true", "eval.every=0", "checkpoint.every=0"), out,
          progress=False)
    kls = [r["kl"] for r in read_log(out / "train_log.jsonl") if r.get("stage") == "rl" and "kl" in r]
    assert len(kls) == 4 and all(k >= 0 and k == k and k != float("inf") for k in kls), kls


def test_queries_without_any_negative_are_left_out_of_rl(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    """A query whose pool holds only relevant candidates has no negative, so no rule reward: it is left
    out with one warning line (it crashed the update that drew it); none left is one error line."""
    import elva_baseline.sampling as sampling

    real = sampling.sample_negatives

    def all_relevant_for_query_0(scores, relevant, cfg=None):
        rel = [list(r) for r in relevant]
        rel[0] = list(range(scores.shape[1]))  # query 0 of every task: every candidate relevant
        return real(scores, rel, cfg)

    monkeypatch.setattr(sampling, "sample_negatives", all_relevant_for_query_0)
    with caplog.at_level("WARNING", logger="elva_baseline.trainer"):
        train(_cfg('stages=["rl"]', "rl.steps=8", "eval.every=0", "checkpoint.every=0"), tmp_path / "run",
              progress=False)
    lines = [r.getMessage() for r in caplog.records if "no negative candidate" in r.getMessage()]
    assert len(lines) == 1 and "\n" not in lines[0] and "t2i: 1 of " in lines[0], lines

    monkeypatch.setattr(sampling, "sample_negatives",
                        lambda scores, relevant, cfg=None: real(scores, [list(range(scores.shape[1]))] * len(relevant), cfg))
    with pytest.raises(TrainingError, match="no training query .* has a negative candidate") as e:
        train(_cfg('stages=["rl"]', "rl.steps=1", "eval.every=0", "checkpoint.every=0"), tmp_path / "none",
              progress=False)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("objective", ["surrogate", "hardneg"])
def test_attribution_baselines_start_from_a_checkpoint(tmp_path: Path, objective: str) -> None:
    """rl.objective surrogate / hardneg run the RL stage from model.init with the same negatives."""
    import torch

    from elva_baseline.checkpoint import load_checkpoint

    warm = tmp_path / "warm"
    train(_cfg('stages=["warmup"]'), warm, progress=False)
    last = json.loads((warm / "last" / "config.json").read_text())
    assert (last["stage"], last["step"]) == ("warmup", 8)  # a warmup-only run's last/ is its trained model
    out = tmp_path / objective
    summary = train(_cfg('stages=["rl"]', f"model.init={json.dumps(str(warm / 'final'))}", f"rl.objective={objective}",
                         "rl.sigma=0.05"), out, progress=False)
    assert summary["updates"] == 4
    rl = [r for r in read_log(out / "train_log.jsonl") if r.get("stage") == "rl" and "eval" not in r]
    assert len(rl) == 4 and all(r["reward_mean"] == r["reward_mean"] for r in rl)
    start, _ = load_checkpoint(warm / "final")
    end, cfg = load_checkpoint(out / "final")
    assert float(end.head.sigma) == pytest.approx(0.05)  # σ from rl.sigma, not the init checkpoint
    moved = [not torch.equal(a, b) for (n, a), (_, b) in zip(start.state_dict().items(), end.state_dict().items())
             if n.startswith("clip.")]
    assert any(moved)  # the RL stage trained the init model
    assert cfg["training"]["rl"]["objective"] == objective


def test_bad_input(tmp_path: Path) -> None:
    from elva_baseline.data import NotTrainSplitError

    with pytest.raises(NotTrainSplitError, match="mrbench-synth-train"):
        train(_cfg("data.benchmark=mrbench-synth-tiny"), tmp_path / "a", progress=False)
    with pytest.raises(TrainingError, match="no trainer state"):
        Trainer(_cfg(), tmp_path / "b", progress=False, resume=True).run()
    with pytest.raises(TrainingError, match="generative.base"):
        Trainer(_cfg("regime=generative"), tmp_path / "c", progress=False).run()
    with pytest.raises(TrainingError, match=r"data.holdout=0.99 leaves 4 training queries .*; lower data.holdout"):
        train(_cfg("data.holdout=0.99"), tmp_path / "d", progress=False)


def test_cli_run_and_plot(tmp_path: Path) -> None:
    from elva_baseline.cli import app

    out = tmp_path / "run"
    args = ["run", "-o", str(out), "-q", "--stages", "warmup", "--seed", "1"] + [a for s in TINY for a in ("--set", s)]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "warmup: 8 updates" in res.output and "elva:" in res.output
    res = CliRunner().invoke(app, ["plot", str(out)])
    assert res.exit_code == 0 and (out / "curves.png").stat().st_size > 10_000
    bad = CliRunner().invoke(app, ["run", "-o", str(tmp_path / "x"), "--set", "rl.group_size=1"])
    assert bad.exit_code == 2 and "rl.group_size" in bad.output


def test_generative_regime_end_to_end_on_a_tiny_qwen2vl(tmp_path: Path) -> None:
    """warmup + RL on a tiny random Qwen2-VL for a few updates; the final adapter loads in RetEncoder."""
    import mrbench
    from fixtures.tiny_qwen2vl import build_tiny_qwen2vl

    base = build_tiny_qwen2vl(tmp_path / "qwen")
    cfg = _cfg("regime=generative", f"generative.base={base}", "generative.device=cpu", "generative.max_summary_tokens=3",
               "generative.lora_r=4", "warmup.steps=2", "warmup.batch_size=3", "rl.steps=2", "rl.queries_per_step=2",
               "rl.group_size=2", "sampling.n_hard=2", "sampling.n_random=2", 'data.tasks=["t2i", "it2i"]')
    out = tmp_path / "run"
    summary = train(cfg, out, progress=False)
    assert [s["stage"] for s in summary["stages"]] == ["warmup", "rl"] and summary["updates"] == 4
    recs = read_log(out / "train_log.jsonl")
    assert {r["stage"] for r in recs} == {"warmup", "rl"} and any("eval" in r for r in recs)
    assert any("reward_mean" in r for r in recs if r["stage"] == "rl")
    res = mrbench.evaluate("mrbench-synth-tiny", f"ret:{base}", encoder_kwargs={"adapter": str(out / "final"),
                           "max_summary_tokens": 3, "device": "cpu"}, tasks=["t2i"], grain_sensitivity=False, cache=False)
    assert res.data["encoder"]["extra"]["adapter"] == str(out / "final")


def test_generative_regime_resumes_after_an_interruption(tmp_path: Path) -> None:
    """Stopped inside the RL stage, the run continues from last/ (adapter, optimizer, step, negatives)."""
    from fixtures.tiny_qwen2vl import build_tiny_qwen2vl

    base = build_tiny_qwen2vl(tmp_path / "qwen")
    cfg = _cfg("regime=generative", f"generative.base={base}", "generative.device=cpu", "generative.max_summary_tokens=2",
               "generative.lora_r=4", "warmup.steps=2", "warmup.batch_size=3", "rl.steps=3", "rl.queries_per_step=2",
               "rl.group_size=2", "sampling.n_hard=2", "sampling.n_random=2", 'data.tasks=["t2i"]', "checkpoint.every=1")
    out = tmp_path / "run"
    first = Trainer(cfg, out, progress=False, stop_after=3).run()
    assert first["updates"] == 3 and not first["final"]
    state = json.loads((out / "last" / "trainer_state.json").read_text())
    assert (state["stage"], state["step"]) == ("rl", 1) and (out / "last" / "optimizer.safetensors").is_file()
    assert (out / "rl_negatives" / "t2i.npy").is_file()
    with (out / "train_log.jsonl").open("a") as f:  # as if step 2 was logged, then a crash cut a record short
        f.write(json.dumps({"stage": "rl", "step": 2, "global_step": 4, "time": 1.0, "loss": 0.5}) + '\n{"stage": "r')
    done = Trainer(cfg, out, progress=False, resume=True).run()
    assert done["updates"] == 5 and done["final"]
    steps = [(r["stage"], r["step"]) for r in read_log(out / "train_log.jsonl") if "eval" not in r]
    assert steps == [("warmup", 1), ("warmup", 2), ("rl", 1), ("rl", 2), ("rl", 3)]


def test_generative_regime_is_data_parallel_under_torchrun(tmp_path: Path) -> None:
    """Two CPU processes (gloo): each draws its own batches, gradients are averaged (equal grad norms
    on both ranks after the all-reduce), only rank 0 writes the log and the checkpoints."""
    import os
    import shutil
    import subprocess
    import sys

    from fixtures.tiny_qwen2vl import build_tiny_qwen2vl

    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    script = shutil.which("elva-train", path=str(Path(sys.executable).parent))
    if not torchrun or not script:
        pytest.skip("torchrun / elva-train not installed next to this interpreter")
    base = build_tiny_qwen2vl(tmp_path / "qwen")
    sets = ["regime=generative", f"generative.base={base}", "generative.device=cpu", "generative.max_summary_tokens=2",
            "generative.lora_r=4", "warmup.steps=2", "warmup.batch_size=3", "rl.steps=2", "rl.queries_per_step=2",
            "rl.group_size=2", "sampling.n_hard=2", "sampling.n_random=2", 'data.tasks=["t2i"]',
            "data.benchmark=mrbench-synth-tiny-train"]
    out = tmp_path / "run"
    cmd = [torchrun, "--standalone", "--nproc_per_node", "2", script, "run", "-o", str(out), "-q"]
    cmd += [a for s in sets for a in ("--set", s)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.count("final adapter:") == 1  # rank 0 reports
    logs = [read_log(out / "train_log.jsonl"), read_log(out / ".train_log.rank1.jsonl")]
    norms = [[r["grad_norm"] for r in log if r.get("stage") == "rl" and "grad_norm" in r] for log in logs]
    assert len(norms[0]) == 2 and norms[0] == pytest.approx(norms[1], rel=1e-5)
    assert (out / "final" / "adapter_config.json").is_file()


def test_equal_update_baselines_share_their_warmup_bit_for_bit(tmp_path: Path) -> None:
    """contrastive-tiny's first W updates are elva-tiny's warmup (same seed, same batches), and an RL
    stage started from a saved warmup (model.init) is the same run as warmup + RL in one go."""
    import torch

    from elva_baseline.checkpoint import load_checkpoint

    both = train(_cfg(), tmp_path / "both", progress=False)  # warmup 8 + rl 4
    Trainer(_cfg('stages=["warmup"]', "warmup.steps=12", "checkpoint.every=0"), tmp_path / "long", progress=False,
            stop_after=8).run()
    split = train(_cfg('stages=["rl"]', f"model.init={json.dumps(str(tmp_path / 'both' / 'warmup'))}"),
                  tmp_path / "split", progress=False)
    assert both["updates"] == 12 and split["updates"] == 4

    def weights(d: Path) -> dict:
        return {k: v for k, v in load_checkpoint(d)[0].state_dict().items() if k.startswith("clip.")}

    warm, long8 = weights(tmp_path / "both" / "warmup"), weights(tmp_path / "long" / "last")
    assert all(torch.equal(warm[k], long8[k]) for k in warm)
    fin, fin2 = weights(tmp_path / "both" / "final"), weights(tmp_path / "split" / "final")
    assert all(torch.equal(fin[k], fin2[k]) for k in fin)


def _cli(*args: str):
    from elva_baseline.cli import app

    return CliRunner().invoke(app, list(args))


def _sets(*extra: str) -> list[str]:
    return [a for s in TINY + list(extra) for a in ("--set", s)]


def test_cli_resume_keeps_the_saved_configuration(tmp_path: Path) -> None:
    """--resume continues with the run's config.json; options that would change it are refused with
    one line naming the key, config.json is never rewritten."""
    out = tmp_path / "int3"
    first = Trainer(_cfg('stages=["warmup"]', "warmup.steps=10"), out, progress=False, stop_after=5).run()
    assert first["updates"] == 5 and not first["final"]
    saved = (out / "config.json").read_bytes()
    for args, needle in [(["--set", "warmup.steps=300"], "warmup.steps=10 but this command gives warmup.steps=300"),
                         (["--stages", "warmup,rl"], 'stages=["warmup"] but this command gives stages=["warmup", "rl"]'),
                         (["--seed", "4"], "seed=0 but this command gives seed=4")]:
        res = _cli("run", "-q", "-o", str(out), "--resume", *args)
        assert res.exit_code == 2 and needle in res.output and "--overwrite" in res.output, res.output
        assert len(res.output.strip().splitlines()) == 1
        assert (out / "config.json").read_bytes() == saved
    res = _cli("run", "-q", "-o", str(out), "--resume", "--stages", "warmup", "--set", "warmup.steps=10")  # same values
    assert res.exit_code == 0 and "warmup: 10 updates" in res.output, res.output
    assert (out / "config.json").read_bytes() == saved
    assert json.loads((out / "summary.json").read_text())["updates"] == 10


def test_cli_failed_run_writes_nothing_and_does_not_block_a_rerun(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from elva_baseline.data import TrainData

    for bad, needle in [("data.benchmark=nope", "unknown benchmark 'nope'"),
                        ("model.init=/no/such", "'/no/such' not found"),
                        ('data.tasks=["t2x"]', "no task 't2x'")]:
        out = tmp_path / bad.split("=")[0]
        res = _cli("run", "-q", "-o", str(out), *_sets(bad))
        assert res.exit_code == 2 and needle in res.output, res.output
        assert not out.exists()
    keep = tmp_path / "old"  # --overwrite with a bad input leaves the old run alone
    (keep / "last").mkdir(parents=True)
    (keep / "config.json").write_text("{}")
    (keep / "train_log.jsonl").write_text('{"stage": "warmup", "step": 1}\n')
    res = _cli("run", "-q", "-o", str(keep), "--overwrite", *_sets("data.benchmark=nope"))
    assert res.exit_code == 2 and "unknown benchmark 'nope'" in res.output and (keep / "last").is_dir()
    # a failure after config.json was written, before the first update: the re-run is not refused
    out = tmp_path / "x6"
    args = ["run", "-q", "-o", str(out), "--stages", "warmup", *_sets("warmup.steps=2")]
    with monkeypatch.context() as m:
        m.setattr(TrainData, "from_benchmark", classmethod(lambda *a, **k: (_ for _ in ()).throw(TrainingError("boom"))))
        res = _cli(*args)
    assert res.exit_code == 2 and "boom" in res.output
    assert sorted(p.name for p in out.iterdir()) == ["config.json"]
    res = _cli(*args)
    assert res.exit_code == 0 and "warmup: 2 updates" in res.output, res.output


def test_resume_with_an_explicit_default_of_an_older_config_json(tmp_path: Path) -> None:
    """A config.json with the unresolved ``reward: {}`` (older versions): giving a default explicitly on
    --resume is no change; another value is refused."""
    out = tmp_path / "old"
    (out / "last").mkdir(parents=True)
    (out / "last" / "trainer_state.json").write_text("{}")
    data = _cfg().to_dict()
    data["reward"] = {}
    (out / "config.json").write_text(json.dumps(data))
    Trainer(_cfg("reward.alpha=0.4"), out, progress=False, resume=True)
    with pytest.raises(TrainingError, match="reward.alpha=0.4 but this command gives reward.alpha=0.5"):
        Trainer(_cfg("reward.alpha=0.5"), out, progress=False, resume=True)


def test_an_older_run_resumes_with_the_sampling_seed_it_used(tmp_path: Path) -> None:
    """config.json without sampling.seed (older versions: the random negatives' seed was 0 whatever the
    run's seed) resumes with sampling seed 0; a new run's follows its seed."""
    from elva_baseline.trainer import saved_config

    (tmp_path / "config.json").write_text(json.dumps({**_cfg("seed=3").to_dict(), "sampling": {"n_hard": 8}}))
    assert saved_config(tmp_path).sampling_config().seed == 0
    (tmp_path / "config.json").write_text(json.dumps(_cfg("seed=3").resolved_dict()))
    assert saved_config(tmp_path).sampling_config().seed == 3


def test_resume_and_overwrite_together_are_refused(tmp_path: Path) -> None:
    out = tmp_path / "run"
    (out / "last").mkdir(parents=True)
    with pytest.raises(TrainingError, match="only one of them"):
        Trainer(_cfg(), out, progress=False, resume=True, overwrite=True)
    res = _cli("run", "-q", "-o", str(out), "--resume", "--overwrite")
    assert res.exit_code == 2 and len(res.output.strip().splitlines()) == 1 and "--overwrite" in res.output, res.output
    assert (out / "last").is_dir()  # nothing deleted


def test_resume_of_a_finished_run_says_it_is_complete(tmp_path: Path) -> None:
    out = tmp_path / "elva"
    assert train(_cfg("warmup.steps=2", "rl.steps=1"), out, progress=False)["final"]
    res = _cli("run", "-q", "-o", str(out), "--resume")
    assert res.exit_code == 2 and len(res.output.strip().splitlines()) == 1, res.output
    assert "already complete" in res.output and f"elva:{out / 'final'}" in res.output and "--overwrite" in res.output
    assert "optimizer" not in res.output


def test_cli_ctrl_c_says_how_to_go_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C in `elva-train run`: one line naming the checkpoint to --resume from (or --overwrite when
    none was written yet), exit code 130; not mrbench's embedding-cache hint."""
    from elva_baseline import losses

    real = losses.info_nce
    calls = {"n": 0, "at": 5}

    def interrupted(*a, **k):
        calls["n"] += 1
        if calls["n"] == calls["at"]:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(losses, "info_nce", interrupted)
    out = tmp_path / "run"
    args = ["run", "-q", "--stages", "warmup", *_sets()]
    res = _cli(*args, "-o", str(out))  # checkpoint.every=3: last/ holds step 3
    assert res.exit_code == 130
    assert res.output.strip() == f"interrupted: the last checkpoint is in {out / 'last'}; re-run with --resume to continue"
    calls.update(n=0, at=2)
    res = _cli(*args, "-o", str(tmp_path / "early"))
    assert res.exit_code == 130 and "re-run with --overwrite" in res.output and "embedding cache" not in res.output
    calls.update(n=0, at=0)
    res = _cli(*args, "-o", str(out), "--resume")
    assert res.exit_code == 0 and "warmup: 8 updates" in res.output, res.output
