"""The ELVA trainer: contrastive (InfoNCE) warmup, then GRPO with rule rewards. This module runs the
dual-encoder regime; ``regime = "generative"`` hands over to :mod:`elva_baseline.generative_trainer`.

Stages (``cfg.stages``, in this order):

* **warmup** — InfoNCE over in-batch negatives (false negatives masked: two queries sharing a
  positive are not each other's negatives), temperature ``warmup.tau``, AdamW.
* **rl** — GRPO. The frozen warmup model is the reference. Negatives per training query come
  from the balanced sampler (:mod:`elva_baseline.sampling`: filtered hard + random) scored by the
  warmup model. Each update takes ``rl.queries_per_step`` queries of one task; the policy is the
  Gaussian head around the query's deterministic embedding (:class:`~elva_baseline.model.GaussianHead`):
  G = ``rl.group_size`` sampled embeddings per query, scored by cosine against the positive and its
  negatives, rewarded by :func:`~elva_baseline.rewards.total_reward`, advantages normalised within
  the group, clipped-ratio objective (:func:`~elva_baseline.losses.grpo_loss`). The KL penalty to
  the reference is the *analytic* KL of the two Gaussians, ``‖μ − μ_ref‖² / 2σ²`` per query, times
  ``rl.beta`` (the sampled k3 estimate of the same quantity explodes when σ is small).
  The candidates' deterministic embeddings are the environment (the policy samples only the query
  side): re-embedded with the current model every ``rl.refresh_every`` updates, or at every update
  with ``rl.fresh_candidates``. The candidate tower still learns, through the shared weights.

Outputs in ``output/``: ``train_log.jsonl`` (one record per update and per evaluation),
``config.json`` (the resolved configuration, every ``reward`` / ``sampling`` constant included),
checkpoints ``warmup/`` and ``rl/`` at each stage's end,
``last/`` every ``checkpoint.every`` updates (with the optimizer and RNG state, for ``resume``) and
``final/`` = the last stage's model. Each checkpoint loads as an mrbench encoder: ``elva:output/final``.

Resume (``--resume``) continues from ``last/``: the log is first cut back to that checkpoint's step
(:func:`~elva_baseline.trainlog.rewind_log`, atomically), since the updates logged after it are redone,
so every step is logged once. The redone updates are those an uninterrupted run makes: warmup goes on
with the batch it would have taken next, and the RL stage restores its samplers from the checkpoint,
and, for a checkpoint at a step that is not a multiple of ``rl.refresh_every``, the candidate pools'
embeddings of the last refresh (stored with the checkpoint's trainer state).
"""

from __future__ import annotations

import copy
import json
import math
import os
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from elva_baseline.config import TrainConfig
from mrbench.errors import MrbenchError


class TrainingError(MrbenchError):
    """Training cannot go on (NaN loss, missing resume state, a stage that cannot run)."""


@dataclass
class StageResult:
    stage: str
    steps: int
    seconds: float
    checkpoint: Path | None
    eval: dict[str, float]


def _rng_state() -> dict[str, Any]:
    """What a resumed run reseeds from (the stage RNGs are seeded from the config seed and the step)."""
    import torch

    return {"torch_initial_seed": int(torch.initial_seed())}


def _rng_states(gen: Any, rng: random.Random) -> dict[str, Any]:
    """The RL stage's samplers (the rollout ``torch.Generator``, the batch ``random.Random``), JSON-able,
    for a checkpoint to resume them from."""
    import base64

    version, internal, gauss = rng.getstate()
    return {"torch": base64.b64encode(bytes(gen.get_state().tolist())).decode("ascii"),
            "python": [version, list(internal), gauss]}


POOL_TENSOR_PREFIX = "rl_pool/"
"""Names of the RL candidate pools' embeddings among a checkpoint's trainer tensors."""


def _pool_state(pools: dict[str, Any], step: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """The RL candidate pools' embeddings (float32, exact) and the step they were computed at, for a
    checkpoint between two refreshes to resume them from: ``(JSON-able part, trainer tensors)``."""
    import torch

    return ({"step": int(step), "tasks": sorted(pools)},
            {POOL_TENSOR_PREFIX + name: t.detach().to("cpu", dtype=torch.float32) for name, t in pools.items()})


def _load_pool_state(saved: dict[str, Any], tensors: dict[str, Any]) -> tuple[dict[str, Any], int]:
    """Restore what :func:`_pool_state` saved: ``(pools, refresh step)``."""
    try:
        pools = {name: tensors[POOL_TENSOR_PREFIX + name].clone() for name in saved["tasks"]}
        return pools, int(saved["step"])
    except (KeyError, TypeError, ValueError) as e:
        raise TrainingError(f"the checkpoint's RL candidate pools are damaged ({e}); start the run again with --overwrite") from None


def _set_rng_states(gen: Any, rng: random.Random, saved: dict[str, Any]) -> None:
    """Restore what :func:`_rng_states` saved."""
    import base64

    import torch

    try:
        gen.set_state(torch.tensor(list(base64.b64decode(saved["torch"])), dtype=torch.uint8))
        version, internal, gauss = saved["python"]
        rng.setstate((version, tuple(internal), gauss))
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise TrainingError(f"the checkpoint's RL sampler state is damaged ({e}); start the run again with --overwrite") from None


class Trainer:
    """Run the configured stages; ``run()`` returns a summary dict (also written to ``summary.json``).

    Args:
        cfg: the validated configuration.
        output: the run directory (created once the inputs are checked; one that holds a run, see
            :func:`holds_run`, needs ``resume`` or ``overwrite``).
        resume: continue from ``output/last`` (stage, step, model, optimizer, RNG); ``cfg`` must equal
            the run's ``output/config.json`` (:func:`saved_config`), which is not rewritten. The log is
            cut back to that checkpoint first (the updates after it are redone).
        progress: rich progress bars with the current loss/reward.
        threads: torch CPU threads (``None``: torch's default).
        stop_after: stop (as if interrupted) after this many updates in total — for tests of resume.
    """

    def __init__(self, cfg: TrainConfig, output: str | Path, *, resume: bool = False, overwrite: bool = False,
                 progress: bool = True, threads: int | None = None, stop_after: int | None = None) -> None:
        cfg.validate()
        if resume and overwrite:
            raise TrainingError(f"{output}: --resume continues the run there and --overwrite deletes it to start "
                                "over; pass only one of them")
        self.cfg = cfg
        self.out = Path(output)
        self.resume = resume
        self.progress = progress
        self.stop_after = stop_after
        self.threads = threads
        self.main_process = int(os.environ.get("RANK", "0")) == 0  # `accelerate launch` / torchrun set RANK
        self.updates = 0
        self.all_data: Any = None  # the training data before the hold-out split (set by run)
        if not self.main_process:  # the main process checks and prepares the output directory
            self.out.mkdir(parents=True, exist_ok=True)
            return
        if resume:
            self._check_resumable()
        elif holds_run(self.out) and not overwrite:
            if not (self.out / "train_log.jsonl").is_file():
                raise TrainingError(f"{self.out}: holds files that are not a training run (no train_log.jsonl); choose "
                                    "another --output")
            if not (self.out / "last" / "trainer_state.json").is_file():
                raise TrainingError(f"{self.out}: already holds a run without a checkpoint to resume from; pass "
                                    "--overwrite to start over")
            raise TrainingError(f"{self.out}: already holds a run; pass --resume to continue it or --overwrite to start over")
        replaced = self._replaceable() if overwrite and not resume else None  # a run, never a folder of other files
        self._check_inputs()  # nothing is written (nor an old run deleted) before the inputs are known good
        if replaced is not None and replaced.is_dir():
            import shutil

            shutil.rmtree(replaced)
            replaced.mkdir()  # through a link: its target again, so that the link (self.out) still leads to the run
        self.out.mkdir(parents=True, exist_ok=True)

    def _replaceable(self) -> Path:
        """``overwrite``: the directory to delete and start over in — ``output``, or the target of a
        symbolic link ``output`` (the run is replaced there and the link kept, as mrbench's outputs are
        written through a link; deleting the link instead would leave its target's old run in place).
        Refuses, before any work, with one line naming ``output``: a link to nothing, a file, the current
        directory or one above it, and a non-empty directory that is not a run directory, i.e. one
        without both :data:`RUN_FILES` (a model folder, or a checkpoint such as ``RUN/final``, holds a
        ``config.json`` but no ``train_log.jsonl``). A directory that :func:`holds_run` calls no run
        (empty, or what a run that failed before its first update leaves) is started over as well."""
        from mrbench.data.io import check_replaceable, output_target

        out = self.out
        try:  # (a dangling link, a non-UTF-8 name, the current directory: as mrbench's own outputs)
            target = output_target(out)
            check_replaceable(out, marker=None, what="a training run")
        except MrbenchError as e:
            msg = str(e)
            raise TrainingError(msg if msg.startswith("--output") else f"--output {msg}") from None
        if target.exists() and not target.is_dir():
            raise TrainingError(f"--output {out}: is a file, not a run directory; --overwrite only replaces a training "
                                "run: choose another --output")
        missing = [f for f in RUN_FILES if not (target / f).is_file()]
        if holds_run(target) and missing:
            via = f" (a link to {target})" if out.is_symlink() else ""
            raise TrainingError(f"--output {out}{via}: holds files that are not a training run (no {' or '.join(missing)}), "
                                f"and --overwrite only replaces a run directory (one holding {' and '.join(RUN_FILES)}); "
                                "choose another --output, or empty that directory yourself")
        return target

    def _check_resumable(self) -> None:
        """``resume``: the run in ``output`` is unfinished, has a checkpoint to continue from and was
        started with this configuration (its ``config.json``); else one line saying what to do."""
        final, last = self.out / "final", self.out / "last"
        if final.is_dir():
            how = (f"mrbench evaluate -e ret:{self.cfg.generative.base} --encoder-kwargs '{{\"adapter\": \"{final}\"}}'"
                   if self.cfg.regime == "generative" else f"mrbench evaluate -e elva:{final}")
            raise TrainingError(f"{self.out}: the run is already complete (all stages done, {final} exists); evaluate "
                                f"it with `{how}`, or pass --overwrite instead of --resume to train again")
        if not (last / "trainer_state.json").is_file():
            redo = "start again with --overwrite" if holds_run(self.out) else "start without --resume"
            raise TrainingError(f"{last}: no trainer state to resume from; {redo}")
        saved_path = self.out / "config.json"
        saved = saved_config(self.out)
        diff = saved.first_difference(self.cfg)
        if diff is not None:
            key, was, given = diff
            raise TrainingError(
                f"{saved_path}: the run was started with {key}={json.dumps(was)} but this command gives "
                f"{key}={json.dumps(given)}; --resume continues the run as it was started: drop that option, or "
                "start a new run with --overwrite"
            )

    def _check_inputs(self) -> None:
        """What can be checked before anything is written: the benchmark (known, a train split, the
        tasks it has), the ``model.init`` checkpoint, the generative base. Keeps the benchmark."""
        from elva_baseline.data import _check_train
        from mrbench.data.registry import load_benchmark

        cfg = self.cfg
        if cfg.regime == "generative" and not cfg.generative.base:
            raise TrainingError("regime 'generative' needs generative.base: a Qwen2-VL model directory (or hub id)")
        self.bench = load_benchmark(cfg.data.benchmark)
        _check_train(self.bench)
        for name in cfg.data.tasks or []:
            self.bench.task(name)
        if cfg.regime == "dual" and cfg.model.init and not self.resume:
            from elva_baseline.checkpoint import read_config

            read_config(cfg.model.init)

    # ---------------------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        import torch

        from elva_baseline.checkpoint import load_checkpoint, load_trainer_state
        from elva_baseline.data import TrainData
        from elva_baseline.model import DualTowerModel
        from elva_baseline.trainlog import TrainLog
        from mrbench.data.registry import load_benchmark

        cfg = self.cfg
        if self.threads:
            torch.set_num_threads(int(self.threads))
        t_run = time.perf_counter()
        from mrbench.data.io import atomic_write_text

        if self.main_process and not (self.resume and (self.out / "config.json").is_file()):
            atomic_write_text(self.out / "config.json", json.dumps(cfg.resolved_dict(), indent=2))
        if cfg.regime == "generative":
            from elva_baseline.generative_trainer import train_generative

            summary = train_generative(self)
            if self.main_process:
                atomic_write_text(self.out / "summary.json", json.dumps(summary, indent=2))
            return summary

        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise TrainingError("the dual regime trains in one process; run elva-train without accelerate launch / "
                                "torchrun (multi-GPU is for regime 'generative')")
        start_stage, start_step, state = cfg.stages[0], 0, None
        last = self.out / "last"
        if self.resume:
            model, _ = load_checkpoint(last, trainable=True)
            state = load_trainer_state(last)
            start_stage, start_step = state["stage"], int(state["step"])
            self.updates = int((state.get("extra") or {}).get("updates", 0))
        elif cfg.model.init:
            from elva_baseline.model import GaussianHead

            torch.manual_seed(cfg.seed)
            model, _ = load_checkpoint(cfg.model.init, trainable=True)
            model.head = GaussianHead(cfg.rl.sigma, learnable=cfg.rl.learnable_sigma)
        else:
            torch.manual_seed(cfg.seed)
            model = DualTowerModel(
                None if cfg.model.arch == "tiny" else cfg.model.arch,
                pretrained=cfg.model.pretrained,
                sigma=cfg.rl.sigma,
                learn_sigma=cfg.rl.learnable_sigma,
                seed=cfg.seed,
            )
        if getattr(self, "bench", None) is None:
            self.bench = load_benchmark(cfg.data.benchmark)
        data = TrainData.from_benchmark(self.bench, tasks=cfg.data.tasks, model=model)
        self.all_data = data
        self.train_data, self.val_data = data.holdout(cfg.data.holdout, seed=cfg.seed)
        self.n_grains = {q.id: q.n_grains for t in self.bench.tasks for q in t.queries}

        results: list[StageResult] = []
        if self.resume:  # the updates after the checkpoint are redone: their records go
            self.rewind_log(self.out / "train_log.jsonl", start_stage, start_step)
        with TrainLog(self.out / "train_log.jsonl") as log:
            self.log = log
            self.t0 = time.perf_counter() - float((state or {}).get("extra", {}).get("time", 0.0) if state else 0.0)
            for stage in cfg.stages[cfg.stages.index(start_stage):]:
                step0 = start_step if stage == start_stage else 0
                if stage == "warmup":
                    res = self._warmup(model, step0, last if self.resume and stage == start_stage else None)
                else:
                    res = self._rl(model, step0, last if self.resume and stage == start_stage else None)
                results.append(res)
                if res is None or (self.stop_after is not None and self.updates >= self.stop_after
                                   and res.steps < self._stage_steps(stage)):
                    break
        stages = [{"stage": r.stage, "steps": r.steps, "seconds": round(r.seconds, 2),
                   "checkpoint": str(r.checkpoint) if r.checkpoint else None, "eval": r.eval}
                  for r in results if r is not None]
        if self.resume:  # the whole run, not only what this process did
            stages = self._whole_run_stages(stages, start_stage)
        summary = {
            "stages": stages,
            "updates": self.updates,
            "seconds": round(time.perf_counter() - (self.t0 if self.resume else t_run), 2),
            "final": str(self.out / "final") if (self.out / "final").is_dir() else None,
        }
        atomic_write_text(self.out / "summary.json", json.dumps(summary, indent=2))
        return summary

    def _whole_run_stages(self, stages: list[dict[str, Any]], start_stage: str) -> list[dict[str, Any]]:
        """The summary's stages of a resumed run, merged with what the earlier processes did: a stage
        finished before keeps its entry in the previous ``summary.json`` (else it is rebuilt from the log
        and its checkpoint); the resumed stage's seconds and evaluation cover the whole stage (from the
        log's clock, which a resume continues)."""
        from elva_baseline.trainlog import read_log

        try:
            prev = {e["stage"]: e for e in json.loads((self.out / "summary.json").read_text()).get("stages", [])
                    if isinstance(e, dict) and "stage" in e}
        except (OSError, ValueError, AttributeError, TypeError):
            prev = {}
        try:
            log = read_log(self.out / "train_log.jsonl")
        except (OSError, ValueError):
            log = []
        ends: dict[str, float] = {}  # the clock at each stage's last record
        evals: dict[str, dict[str, float]] = {}
        for r in log:
            if isinstance(r.get("time"), (int, float)):
                ends[r.get("stage")] = float(r["time"])
            if isinstance(r.get("eval"), dict):
                evals[r.get("stage")] = r["eval"]
        order = self.cfg.stages
        mine = {e["stage"]: e for e in stages}
        out = []
        for stage in order[:order.index(start_stage)] + [s for s in order if s in mine]:
            before = max((ends[s] for s in order[:order.index(stage)] if s in ends), default=0.0)
            from_log = round(ends[stage] - before, 2) if stage in ends else None
            if stage in mine:
                e = dict(mine[stage])
                if stage == start_stage:
                    e["seconds"] = from_log if from_log is not None else e["seconds"]
                    e["eval"] = e["eval"] or evals.get(stage, {})
            elif stage in prev and prev[stage].get("steps") == self._stage_steps(stage):
                e = prev[stage]
            else:
                ck = self.out / stage
                e = {"stage": stage, "steps": self._stage_steps(stage), "seconds": from_log,
                     "checkpoint": str(ck) if ck.is_dir() else None, "eval": evals.get(stage, {})}
            out.append(e)
        return out

    def rewind_log(self, path: Path, stage: str, step: int) -> None:
        """Cut the log at ``path`` back to the checkpoint a resumed run starts from (``stage``,
        ``step``; :func:`~elva_baseline.trainlog.rewind_log`), so that the updates logged after it
        and redone now are logged once; one-line :class:`TrainingError` for a damaged log."""
        from elva_baseline.trainlog import rewind_log

        try:
            rewind_log(path, self.cfg.stages, stage, step)
        except ValueError as e:
            raise TrainingError(f"{e}; repair or remove that line, then resume again") from None

    def _stage_steps(self, stage: str) -> int:
        return self.cfg.warmup.steps if stage == "warmup" else self.cfg.rl.steps

    # ---------------------------------------------------------------------------------------------
    def _bar(self, stage: str, total: int, done: int) -> Any:
        if not self.progress:
            return None
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        p = Progress(TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                     TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[info]}"))
        p.start()
        p.add_task(stage, total=total, completed=done, info="")
        return p

    def _tick(self, bar: Any, info: str) -> None:
        if bar is not None:
            bar.update(bar.task_ids[0], advance=1, info=info)

    def _record(self, stage: str, step: int, values: dict[str, Any]) -> None:
        self.log.write({"stage": stage, "step": step, "global_step": self.updates,
                        "time": round(time.perf_counter() - self.t0, 3), **values})

    def _check_finite(self, loss: Any, stage: str, step: int) -> None:
        if not math.isfinite(float(loss)):
            self._record(stage, step, {"loss": float(loss), "error": "non-finite loss"})
            self._diverged(stage, step, f"the loss is {float(loss)}")

    def _check_weights(self, model: Any, stage: str, step: int) -> None:
        """Stop as the non-finite-loss guard does when a parameter holds NaN or ±inf."""
        import torch

        with torch.no_grad():
            bad = next((n for n, p in model.named_parameters() if not bool(torch.isfinite(p).all())), None)
        if bad is not None:
            self._record(stage, step, {"error": "non-finite weights", "parameter": bad})
            self._diverged(stage, step, f"the model's weights are no longer finite ({bad})")

    def _diverged(self, stage: str, step: int, what: str) -> None:
        good = self.out / "last"
        where = f"the last good checkpoint is {good}" if good.is_dir() else "no checkpoint was written yet"
        raise TrainingError(f"{stage} step {step}: {what}; training stopped, {where}; lower the learning rate")

    def _save(self, model: Any, stage: str, step: int, optimizer: Any, name: str,
              extra: dict[str, Any] | None = None, tensors: dict[str, Any] | None = None) -> Path:
        from elva_baseline.checkpoint import save_checkpoint

        self._check_weights(model, stage, step)  # a checkpoint to resume from is never a diverged model
        return save_checkpoint(self.out / name, model, self.cfg.resolved_dict(), step=step, stage=stage,
                               optimizer=optimizer,
                               extra={"updates": self.updates, "time": time.perf_counter() - self.t0,
                                      "rng": _rng_state(), **(extra or {})},
                               extra_tensors=tensors, overwrite=True)

    def _should_stop(self) -> bool:
        return self.stop_after is not None and self.updates >= self.stop_after

    # ---------------------------------------------------------------------------------------------
    def evaluate(self, model: Any) -> dict[str, float]:
        """hit@k on the held-out training queries against their task's full pool (exact search,
        pessimistic ties), averaged over queries of all tasks; also hit@k for queries with ≥ 3 grains."""
        import torch

        parts = []
        model.eval()
        with torch.no_grad():
            for name in self.val_data.task_names:
                t = self.val_data.task(name)
                if len(t) == 0:
                    continue
                judged = [{int(i): int(g) for i, g in zip(rel.tolist(), gr.tolist()) if g > 0}
                          for rel, gr in zip(t.relevant, t.grades)]
                parts.append((_embed_chunks(model, t.queries).numpy(), _embed_chunks(model, self.val_data.pool(name)).numpy(),
                              judged, t.relevance_level, t.query_ids))
        model.train()
        return heldout_metrics(parts, self.n_grains, tuple(self.cfg.eval.ks))

    def _maybe_eval(self, model: Any, stage: str, step: int, final: bool) -> dict[str, float]:
        every = self.cfg.eval.every
        if final or (every and step % every == 0):
            self._check_weights(model, stage, step)
            ev = self.evaluate(model)
            self._record(stage, step, {"eval": ev})
            return ev
        return {}

    # ---------------------------------------------------------------------------------------------
    def _warmup(self, model: Any, step0: int, resume_dir: Path | None) -> StageResult:
        import torch

        from elva_baseline.checkpoint import load_trainer_state
        from elva_baseline.losses import info_nce

        cfg = self.cfg.warmup
        params = [p for n, p in model.named_parameters() if p.requires_grad and not n.startswith("head.")]
        opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        if resume_dir is not None:
            load_trainer_state(resume_dir, opt)
        t_stage = time.perf_counter()
        per_epoch = self.train_data.n_batches(cfg.batch_size)
        if per_epoch == 0 and step0 < cfg.steps:
            holdout = self.cfg.data.holdout
            if holdout > 0 and self.all_data is not None and self.all_data.n_batches(cfg.batch_size) > 0:
                n = sum(len(self.train_data.task(t)) for t in self.train_data.task_names)
                raise TrainingError(
                    f"warmup: data.holdout={holdout} leaves {n} training queries in {self.cfg.data.benchmark}, too few "
                    "for a batch of size >= 2 of one task; lower data.holdout"
                )
            raise TrainingError(
                f"warmup: no batch of size >= 2 in {self.cfg.data.benchmark}; lower warmup.batch_size or use more data"
            )
        # epochs reshuffle by seed + epoch; a resumed run goes on with the batch an uninterrupted one would take
        step, (epoch, skip) = step0, divmod(step0, per_epoch or 1)
        bar = self._bar("warmup (InfoNCE)", cfg.steps, step0)
        ev: dict[str, float] = {}
        model.train()
        try:
            while step < cfg.steps and not self._should_stop():
                for batch in self.train_data.batches(cfg.batch_size, seed=self.cfg.seed * 100_003 + epoch, start=skip):
                    q = model.embed(batch.queries)
                    p = model.embed(batch.positives)
                    loss = info_nce(q, p, temperature=cfg.tau, symmetric=cfg.symmetric,
                                    false_negative_mask=batch.false_negatives)
                    self._check_finite(loss.detach(), "warmup", step + 1)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    step += 1
                    self.updates += 1
                    self._record("warmup", step, {"loss": round(float(loss.detach()), 5), "task": batch.task})
                    self._tick(bar, f"loss {float(loss.detach()):.3f}")
                    final = step >= cfg.steps
                    ev = self._maybe_eval(model, "warmup", step, final) or ev
                    if self.cfg.checkpoint.every and step % self.cfg.checkpoint.every == 0 and not final:
                        self._save(model, "warmup", step, opt, "last")
                    if final or self._should_stop():
                        break
                epoch, skip = epoch + 1, 0
        finally:
            if bar is not None:
                bar.stop()
        if step < cfg.steps:  # interrupted
            self._save(model, "warmup", step, opt, "last")
            return StageResult("warmup", step, time.perf_counter() - t_stage, self.out / "last", ev)
        ck = self._save(model, "warmup", step, None, "warmup")
        if self.cfg.stages[-1] == "warmup":
            self._save(model, "warmup", step, None, "final")
        if "rl" in self.cfg.stages:  # where a resume starts the RL stage
            self._save(model, "rl", 0, None, "last")
        else:  # the trained model, at its real step
            self._save(model, "warmup", step, None, "last")
        return StageResult("warmup", step, time.perf_counter() - t_stage, ck, ev)

    # ---------------------------------------------------------------------------------------------
    def _mine(self, ref: Any) -> dict[str, Any]:
        """Balanced negatives per training query, scored by the reference (warmup) model."""
        import torch

        from elva_baseline.sampling import sample_negatives

        scfg = self.cfg.sampling_config()
        out = {}
        with torch.no_grad():
            for name in self.train_data.task_names:
                t = self.train_data.task(name)
                if len(t) == 0:
                    continue
                q = _embed_chunks(ref, t.queries)
                c = _embed_chunks(ref, self.train_data.pool(name))
                out[name] = sample_negatives(q @ c.T, [r.tolist() for r in t.relevant], scfg)
        short = {n: s.summary() for n, s in out.items() if s.summary()["queries_short"]}
        if short:  # said once per stage start, in one line
            import logging

            per_task = "; ".join(
                f"{n}: {r['queries_short']} of {r['queries']} queries short, {r['missing']} missing "
                f"(mean hard {r['mean_hard']:.1f}, random {r['mean_random']:.1f})" for n, r in short.items())
            logging.getLogger("elva_baseline.trainer").warning(
                "rl: fewer negatives than the %d requested (sampling.n_hard/n_random) for some training queries, their "
                "candidate pools being too small — %s", scfg.width, per_task)
        return out

    def _rl_loss(self, model: Any, q_mean: Any, q_ref: Any, c: Any, valid: Any, gen: Any, rcfg: Any,
                 epoch: int, st: dict[str, Any]) -> tuple[Any, Any, Any, dict[str, Any]]:
        """One RL-stage loss for queries ``q_mean [B, D]`` against candidates ``c [B, 1 + N, D]``
        (positive first; ``valid`` masks padding): ``(loss, kl, rewards [B, G], stats)``.

        ``grpo`` samples G embeddings (detached actions), scores them, turns the rule rewards into
        group-normalised advantages and takes the clipped-ratio policy gradient; ``surrogate``
        differentiates the same sampled rewards through reparameterised samples; both add
        ``beta`` × the analytic Gaussian KL to the reference. ``hardneg`` is InfoNCE at ``rl.tau`` over
        the same candidates (its logged rewards are those of the deterministic embedding, G = 1).
        On epochs > 0 of ``grpo`` the rollouts of epoch 0 (``st``) are reused: the ratio moves off 1.
        """
        import torch
        import torch.nn.functional as F

        from elva_baseline.losses import grpo_loss
        from elva_baseline.rewards import group_advantages, total_reward

        cfg = self.cfg.rl
        head = model.head
        neg_mask = valid[:, None, 1:]

        def rewards_of(q: Any) -> Any:  # q [B, G, D] (normalised) -> rule rewards [B, G]
            scores = torch.einsum("bgd,bnd->bgn", q, c)
            return total_reward(scores[..., 0], scores[..., 1:], rcfg, neg_mask=neg_mask.expand_as(scores[..., 1:]))

        if head.learnable:  # σ moves: the full Gaussian KL anchors it to the reference's σ (rl.sigma)
            from elva_baseline.losses import gaussian_kl

            sigma_ref = torch.tensor(math.log(cfg.sigma), dtype=torch.float32).exp()  # the head's σ at the start
            kl = gaussian_kl(q_mean, q_ref, head.sigma, sigma_ref)
        else:  # σ = σ_ref: the KL is the means' term alone
            kl = ((q_mean - q_ref) ** 2).sum(-1).mean() / (2 * head.sigma ** 2)
        if cfg.objective == "hardneg":
            logits = torch.einsum("bd,bnd->bn", q_mean, c).masked_fill(~valid, float("-inf")) / cfg.tau
            loss = F.cross_entropy(logits, torch.zeros(len(logits), dtype=torch.long))
            with torch.no_grad():
                rewards = rewards_of(q_mean[:, None, :])
            return loss, kl.detach(), rewards, {}
        if cfg.objective == "surrogate":
            rewards = rewards_of(head.normalize(head.sample(q_mean, cfg.group_size, generator=gen, reparameterize=True)))
            return -rewards.mean() + cfg.beta * kl, kl.detach(), rewards.detach(), {}
        if epoch == 0:
            samples = head.sample(q_mean.detach(), cfg.group_size, generator=gen)  # [B, G, D]
            with torch.no_grad():
                rewards = rewards_of(head.normalize(samples))
            st = {"samples": samples, "rewards": rewards, "adv": group_advantages(rewards),
                  "logp_old": head.log_prob(samples, q_mean).detach()}
        logp_new = head.log_prob(st["samples"], q_mean)
        loss_pg, stats = grpo_loss(logp_new, st["logp_old"], None, st["adv"], clip_eps=cfg.clip_eps, beta=0.0)
        st.update(stats)
        return loss_pg + cfg.beta * kl, kl.detach(), st["rewards"], st

    def _rl(self, model: Any, step0: int, resume_dir: Path | None) -> StageResult:
        import torch
        import torch.nn.functional as F

        from elva_baseline.checkpoint import load_checkpoint, load_trainer_state
        from elva_baseline.rewards import positive_rank

        cfg = self.cfg.rl
        rcfg = self.cfg.reward_config()
        if (self.out / "warmup").is_dir():
            ref, _ = load_checkpoint(self.out / "warmup")
        else:  # RL without a warmup stage in this run: the starting model is the reference
            ref = copy.deepcopy(model)
        ref.eval().requires_grad_(False)
        t_stage = time.perf_counter()
        negs = self._mine(ref)
        with_negs = rl_queries({n: s.indices for n, s in negs.items()}, self.cfg.data.benchmark)
        tasks = [n for n in self.train_data.task_names if n in with_negs]
        if not tasks:
            raise TrainingError(f"rl: no training queries in {self.cfg.data.benchmark}")
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
        saved, saved_pools, saved_tensors = None, None, {}
        if resume_dir is not None and step0 > 0:
            trainer_state = load_trainer_state(resume_dir, opt)
            extra, saved_tensors = trainer_state.get("extra") or {}, trainer_state.get("tensors") or {}
            saved, saved_pools = extra.get("rl_rng"), extra.get("rl_pools")
        gen = torch.Generator().manual_seed(self.cfg.seed * 7919 + step0)
        rng = random.Random(self.cfg.seed * 31 + step0)
        if saved:  # where the uninterrupted run's samplers stood (checkpoints of older versions: reseeded)
            _set_rng_states(gen, rng, saved)
        pools: dict[str, Any] = {}
        pools_step = 0
        if saved_pools and not cfg.fresh_candidates:  # the pools of the last refresh before the checkpoint
            pools, pools_step = _load_pool_state(saved_pools, saved_tensors)

        def resume_state() -> tuple[dict[str, Any], dict[str, Any]]:
            """(JSON-able extra, trainer tensors) of an RL checkpoint."""
            state: dict[str, Any] = {"rl_rng": _rng_states(gen, rng)}
            tensors: dict[str, Any] = {}
            if pools and step % cfg.refresh_every != 0:  # at a refresh step, a resume re-embeds them anyway
                state["rl_pools"], tensors = _pool_state(pools, pools_step)
            return state, tensors

        st: dict[str, Any] = {}
        if step0 == 0 and self.cfg.eval.every:  # where the stage starts, for the held-out curve
            self._check_weights(model, "rl", 0)
            self._record("rl", 0, {"eval": self.evaluate(model)})
        bar = self._bar(f"rl ({cfg.objective})", cfg.steps, step0)
        ev: dict[str, float] = {}
        step = step0
        model.train()
        try:
            while step < cfg.steps and not self._should_stop():
                if not cfg.fresh_candidates and (step % cfg.refresh_every == 0 or not pools):
                    with torch.no_grad():
                        pools = {n: _embed_chunks(model, self.train_data.pool(n)) for n in tasks}
                    pools_step = step
                name = tasks[step % len(tasks)]
                t = self.train_data.task(name)
                sample = negs[name]
                b_idx = rng.sample(with_negs[name], min(cfg.queries_per_step, len(with_negs[name])))
                pos = torch.tensor([int(t.positives[i][rng.randrange(len(t.positives[i]))]) for i in b_idx])
                neg = sample.indices[b_idx]  # [B, n] with -1 padding
                cand = torch.cat([pos[:, None], neg], dim=1)
                valid = cand >= 0
                q_items = t.queries.select(b_idx)
                q_mean = model.embed(q_items)
                if cfg.fresh_candidates:
                    uniq, inv = torch.unique(cand.clamp(min=0), return_inverse=True)
                    with torch.no_grad():
                        c = model.embed(self.train_data.pool(name).select(uniq))[inv]
                else:
                    c = pools[name][cand.clamp(min=0)]
                with torch.no_grad():
                    q_ref = ref.embed(q_items)
                for epoch in range(cfg.epochs_per_batch if cfg.objective == "grpo" else 1):
                    if epoch:
                        q_mean = model.embed(q_items)
                    loss, kl, rewards, st = self._rl_loss(model, q_mean, q_ref, c, valid, gen, rcfg, epoch, st)
                    self._check_finite(loss.detach(), "rl", step + 1)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                step += 1
                self.updates += 1
                with torch.no_grad():
                    det = F.normalize(q_mean.detach(), dim=-1)
                    det_scores = torch.einsum("bd,bnd->bn", det, c.detach())
                    rank = positive_rank(det_scores[:, 0], det_scores[:, 1:], neg_mask=valid[:, 1:]).float().mean()
                rec = {"loss": round(float(loss.detach()), 6), "kl": round(float(kl.detach()), 6), "task": name,
                       "reward_mean": round(float(rewards.mean()), 5),
                       "reward_std": round(float(rewards.std(dim=1).mean()), 5) if rewards.shape[1] > 1 else 0.0,
                       "clip_frac": st.get("clip_frac"), "rank_pos_greedy": round(float(rank), 3),
                       "sigma": round(float(model.head.sigma.detach()), 5)}
                self._record("rl", step, rec)
                self._tick(bar, f"reward {rec['reward_mean']:.3f} kl {rec['kl']:.3f}")
                final = step >= cfg.steps
                ev = self._maybe_eval(model, "rl", step, final) or ev
                if self.cfg.checkpoint.every and step % self.cfg.checkpoint.every == 0 and not final:
                    self._save(model, "rl", step, opt, "last", *resume_state())
        finally:
            if bar is not None:
                bar.stop()
        if step < cfg.steps:
            self._save(model, "rl", step, opt, "last", *resume_state())
            return StageResult("rl", step, time.perf_counter() - t_stage, self.out / "last", ev)
        ck = self._save(model, "rl", step, None, "rl")
        self._save(model, "rl", step, None, "final")
        self._save(model, "rl", step, None, "last")
        return StageResult("rl", step, time.perf_counter() - t_stage, ck, ev)


def heldout_metrics(parts: list[tuple[Any, Any, list[dict[int, int]], int, list[str]]], n_grains: dict[str, int],
                    ks: tuple[int, ...]) -> dict[str, float]:
    """hit@k over held-out queries from ``(query emb [n, D], pool emb [m, D], judged, relevance level,
    query ids)`` per task (exact search, pessimistic ties); ``hit@k_3plus`` on queries with ≥ 3 grains."""
    import pandas as pd

    from mrbench.metrics.ranking import score_queries
    from mrbench.retrieval.search import exact_search

    rows = []
    for q, c, judged, level, qids in parts:
        res = exact_search(q, c, judged, depth=max(ks), relevance_level=level, backend="torch")
        df = score_queries(res.judged_ranks, judged, ks=ks, relevance_level=level, query_ids=qids)
        df["n_grains"] = [n_grains.get(i, 0) for i in df.index]
        rows.append(df)
    if not rows:
        return {}
    df = pd.concat(rows)
    out = {f"hit@{k}": float(df[f"hit@{k}"].mean()) for k in ks}
    many = df[df["n_grains"] >= 3]
    if len(many):
        out.update({f"hit@{k}_3plus": float(many[f"hit@{k}"].mean()) for k in ks})
    out["n_queries"] = float(len(df))
    return {k: round(v, 4) for k, v in out.items()}


def rl_queries(negatives: dict[str, Any], benchmark: str) -> dict[str, Sequence[int]]:
    """The training queries the RL stage draws from, per task: those with at least one mined negative
    (:func:`~elva_baseline.sampling.queries_with_negatives` of each task's ``[Nq, n]`` indices), tasks
    with none dropped. A query whose pool holds nothing but relevant (or threshold-filtered)
    candidates gets no rule reward: the queries left out are said in one warning line, and none left
    at all is a :class:`TrainingError`."""
    from elva_baseline.sampling import queries_with_negatives

    rows = {n: queries_with_negatives(ix) for n, ix in negatives.items()}
    parts = [f"{n}: {len(ix) - len(rows[n])} of {len(ix)}" for n, ix in negatives.items() if len(rows[n]) < len(ix)]
    if parts:
        import logging

        logging.getLogger("elva_baseline.trainer").warning(
            "rl: training queries with no negative candidate at all (every other candidate of their pool is relevant "
            "or filtered out by sampling.threshold) are left out of the RL stage — %s", "; ".join(parts))
    kept = {n: r for n, r in rows.items() if len(r)}
    if negatives and not kept:
        raise TrainingError(f"rl: no training query of {benchmark} has a negative candidate (every other candidate of "
                            "its pool is relevant or filtered out by sampling.threshold); lower the threshold or train "
                            "on a benchmark with larger pools")
    return kept


def _embed_chunks(model: Any, items: Any, chunk: int = 512) -> Any:
    import torch

    n = len(items.ids)
    parts = [model.embed(items.select(torch.arange(i, min(n, i + chunk)))) for i in range(0, n, chunk)]
    return torch.cat(parts) if parts else torch.zeros(0, model.embed_dim)


RUN_FILES = ("config.json", "train_log.jsonl")
"""What a run writes before its first update: a directory holding only these (the log empty) is no run."""


def holds_run(output: str | Path) -> bool:
    """Whether ``output`` holds a run (or anything else) that a new run must not silently replace:
    a non-empty directory, unless all it holds is a run's ``config.json`` (:func:`_is_run_config`: a
    model folder's is not) and an empty ``train_log.jsonl`` (what a run that failed before its first
    update leaves behind, the log not always made yet)."""
    out = Path(output)
    if not out.is_dir():
        return False  # nothing there, or a file (creating the directory then fails with one line)
    for entry in out.iterdir():
        if entry.name not in RUN_FILES or not entry.is_file():
            return True
        if entry.name == "train_log.jsonl" and entry.stat().st_size > 0:
            return True
        if entry.name == "config.json" and not _is_run_config(entry):
            return True
    return False


def _is_run_config(path: Path) -> bool:
    """Whether ``path`` holds a configuration this trainer wrote (a JSON object with the sections of
    :meth:`TrainConfig.resolved_dict`), not another program's ``config.json``."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(doc, dict) and {"data", "model", "stages", "warmup", "rl"} <= doc.keys()


def saved_config(output: str | Path) -> TrainConfig:
    """The configuration the run in ``output`` was started with (its ``config.json``): what
    ``--resume`` continues with. One-line :class:`TrainingError` when it is missing or unreadable."""
    from elva_baseline.config import ConfigError

    path = Path(output) / "config.json"
    if not path.is_file():
        raise TrainingError(f"{path}: not found, so the configuration of the run in {output} is unknown; restore it, "
                            "or start a new run with --overwrite")
    try:
        cfg = TrainConfig.from_file(path)
    except ConfigError as e:
        raise TrainingError(f"{e}; this is the run's saved configuration: fix it, or start a new run with --overwrite") from None
    sampling = json.loads(path.read_text()).get("sampling")
    if isinstance(sampling, dict) and "seed" not in sampling:
        # written before config.json held the resolved sampling table, when the sampling seed was always 0
        # (it now defaults to the run's seed)
        cfg.sampling = {**cfg.sampling, "seed": 0}
    return cfg


def train(cfg: TrainConfig, output: str | Path, **kwargs: Any) -> dict[str, Any]:
    """Run :class:`Trainer` (see its arguments) and return the run summary."""
    return Trainer(cfg, output, **kwargs).run()

