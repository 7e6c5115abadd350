"""``elva-train`` for the generative ``[RET]`` regime (``regime = "generative"``): a Qwen2-VL-family
model with a LoRA adapter (:class:`~elva_baseline.generative_policy.GenerativePolicy`).

* **warmup** — :meth:`GenerativePolicy.info_nce_step` on greedy ``[RET]`` embeddings (summaries fixed,
  gradient through the ``[RET]`` forward), batches of ``warmup.batch_size`` queries of one task with
  one positive each (queries sharing a positive are not each other's negatives).
* **rl** — negatives mined once with the warmup policy's greedy embeddings (balanced sampler), then
  :meth:`GenerativePolicy.grpo_step`: G sampled summaries per query, the same rule rewards, GRPO
  ratio and k3 KL on the summary tokens against the adapter-free model.

Checkpoints are adapter directories (``warmup/``, ``rl/``, ``final/``) that load as
``mrbench evaluate -e ret:BASE --encoder-kwargs '{"adapter": "OUT/final"}'``. ``last/`` (every
``checkpoint.every`` updates and at each stage end, written atomically) adds the optimizer state and
``trainer_state.json`` (stage, step, the data-order RNG); the RL stage's mined negatives are kept in
``rl_negatives/<task>.npy``. ``--resume`` restarts from ``last/``: the adapter, the optimizer, the step
and the batch order (each update's batch is drawn from a seed of its own) continue where they stopped,
and the rollout sampler is reseeded from the seed and the step. The log is cut back to the checkpoint
first (each process's own), so the updates redone are logged once. The log, evaluation and NaN guard
match the dual regime.

Multi-GPU: launched with ``accelerate launch`` (or ``torchrun``; ``WORLD_SIZE`` > 1), the run is data
parallel through ``accelerate``: every process draws its own batches and rollouts, gradients are
averaged (:meth:`GenerativePolicy.prepare`), and only the main process evaluates, logs and writes
checkpoints.
"""

from __future__ import annotations

import os
import random
import time
from typing import Any

from elva_baseline.config import TrainConfig


def _items(task: Any, bench: Any, which: str) -> list[Any]:
    from elva_baseline.generative_policy import RetItem

    inst = task.query_instruction if which == "query" else task.candidate_instruction
    rows = task.queries if which == "query" else task.candidates
    return [RetItem(text=r.text, image=bench.image_path(r.image) if r.image else None, instruction=inst) for r in rows]


def train_generative(trainer: Any) -> dict[str, Any]:
    """Run the generative regime for a :class:`~elva_baseline.trainer.Trainer` (its config, output,
    log and progress settings); returns the run summary."""
    import torch

    from elva_baseline.data import holdout_split
    from elva_baseline.generative_policy import GenerativePolicy, GenerativeRLConfig, InfoNCEStepConfig, LoraSettings
    from elva_baseline.trainer import StageResult, TrainingError, heldout_metrics, rl_queries
    from elva_baseline.trainlog import TrainLog
    from mrbench.data.registry import load_benchmark

    import numpy as np

    from elva_baseline.checkpoint import load_trainer_state, write_trainer_state
    from mrbench.data.io import atomic_dir

    cfg: TrainConfig = trainer.cfg
    g = cfg.generative
    last = trainer.out / "last"
    state: dict[str, Any] | None = None
    if trainer.resume:
        if not (last / "trainer_state.json").is_file():
            raise TrainingError(f"{last}: no trainer state to resume from; start without --resume")
        state = load_trainer_state(last)
    if not g.base:
        raise TrainingError("regime 'generative' needs generative.base: a Qwen2-VL model directory (or hub id)")
    bench = getattr(trainer, "bench", None)
    if bench is None:  # checked by the main process's Trainer; loaded here by the others
        bench = load_benchmark(cfg.data.benchmark)
    if bench.split != "train":
        from elva_baseline.data import NotTrainSplitError

        raise NotTrainSplitError(f"benchmark {bench.name!r} is its {bench.split!r} split; train on a train split, "
                                 "e.g. --set data.benchmark=mrbench-synth-train")
    start_stage, start_step = (state["stage"], int(state["step"])) if state else (cfg.stages[0], 0)
    torch.manual_seed(cfg.seed + 1_000_003 * start_step + (7 if start_stage == "rl" else 0))
    policy = GenerativePolicy(g.base, lora=LoraSettings(r=g.lora_r, alpha=g.lora_alpha, dropout=g.lora_dropout),
                              adapter=last if state else None,
                              max_summary_tokens=g.max_summary_tokens, device=g.device, precision=g.precision,
                              batch_size=g.batch_size, min_pixels=g.min_pixels, max_pixels=g.max_pixels)
    tasks = [t for t in bench.tasks if not cfg.data.tasks or t.name in cfg.data.tasks]
    data = {}
    for t in tasks:
        index = t.candidate_index()
        tr, val = holdout_split([q.id for q in t.queries], cfg.data.holdout, cfg.seed, t.name)
        rel = [{index[d]: gr for d, gr in t.qrels.get(q.id, {}).items() if gr > 0} for q in t.queries]
        data[t.name] = {"task": t, "queries": _items(t, bench, "query"), "pool": _items(t, bench, "candidate"),
                        "rel": rel, "val": val, "train": [i for i in tr if rel[i]]}
    n_grains = {q.id: q.n_grains for t in tasks for q in t.queries}

    def evaluate() -> dict[str, float]:
        parts = []
        for d in data.values():
            if not d["val"]:
                continue
            q = policy.candidate_embeddings([d["queries"][i] for i in d["val"]]).float().cpu().numpy()
            c = policy.candidate_embeddings(d["pool"]).float().cpu().numpy()
            parts.append((q, c, [d["rel"][i] for i in d["val"]], d["task"].relevance_level,
                          [d["task"].queries[i].id for i in d["val"]]))
        return heldout_metrics(parts, n_grains, tuple(cfg.eval.ks))

    opt = torch.optim.AdamW(policy.trainable_parameters(), lr=cfg.warmup.lr if "warmup" in cfg.stages else cfg.rl.lr)
    if state:
        load_trainer_state(last, opt)
        trainer.updates = int((state.get("extra") or {}).get("updates", 0))
    acc = None
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # launched by `accelerate launch` / torchrun: data parallel
        from accelerate import Accelerator

        acc = Accelerator(cpu=str(policy.device) == "cpu")
        opt = policy.prepare(acc, opt)
    rank = acc.process_index if acc is not None else 0
    main = rank == 0

    def batch_rng(stage: str, step: int) -> random.Random:
        """The batch sampler of one update: a function of (seed, rank, stage, step), so a resumed run
        draws exactly the batches it would have drawn, and every process draws its own."""
        return random.Random(f"{cfg.seed}/{rank}/{stage}/{step}")
    results = []
    t_run = time.perf_counter()
    names = [n for n in data if data[n]["train"]]
    if not names:
        raise TrainingError(f"no training query with a relevant candidate in {cfg.data.benchmark}")
    log_path = trainer.out / ("train_log.jsonl" if main else f".train_log.rank{rank}.jsonl")
    if state:  # every process cuts its own log back to the checkpoint: the updates after it are redone
        trainer.rewind_log(log_path, start_stage, start_step)
    with TrainLog(log_path) as log:
        trainer.log = log
        trainer.t0 = time.perf_counter() - float(((state or {}).get("extra") or {}).get("time", 0.0))

        def save_last(stage: str, step: int) -> None:
            if not main:
                return
            with atomic_dir(last, overwrite=True) as tmp:
                policy.save(tmp, extra={"stage": stage, "step": step}, final_path=last)
                write_trainer_state(tmp, opt, step=step, stage=stage, extra={
                    "updates": trainer.updates, "time": time.perf_counter() - trainer.t0})

        def periodic(stage: str, step: int, total: int) -> bool:
            """Checkpoint ``last/`` when due; True when the run must stop here (``stop_after``)."""
            stop = trainer._should_stop() and step < total
            if stop or (cfg.checkpoint.every and step % cfg.checkpoint.every == 0 and step < total):
                save_last(stage, step)
            return stop

        def finish(stage: str, step: int, t0: float) -> None:
            if not main:
                results.append(StageResult(stage, step, time.perf_counter() - t0, None, {}))
                return
            ev = evaluate()
            trainer._record(stage, step, {"eval": ev})
            ck = policy.save(trainer.out / stage, extra={"stage": stage, "step": step})
            if stage == cfg.stages[-1]:
                policy.save(trainer.out / "final", extra={"stage": stage, "step": step})
            results.append(StageResult(stage, step, time.perf_counter() - t0, ck, ev))
            nxt = cfg.stages[cfg.stages.index(stage) + 1] if stage != cfg.stages[-1] else stage
            save_last(nxt, 0 if nxt != stage else step)

        stopped = False
        if "warmup" in cfg.stages and start_stage == "warmup":
            t0 = time.perf_counter()
            ncfg = InfoNCEStepConfig(tau=cfg.warmup.tau, symmetric=cfg.warmup.symmetric)
            for step in range(start_step + 1, cfg.warmup.steps + 1):
                d = data[names[step % len(names)]]
                rng = batch_rng("warmup", step)
                idx = rng.sample(d["train"], min(cfg.warmup.batch_size, len(d["train"])))
                pos = [max(d["rel"][i], key=lambda c: (d["rel"][i][c], -c)) for i in idx]
                st = policy.info_nce_step([d["queries"][i] for i in idx], [d["pool"][c] for c in pos], opt, ncfg,
                                          positive_ids=pos, accelerator=acc)
                trainer.updates += 1
                trainer._check_finite(st["loss"], "warmup", step)
                trainer._record("warmup", step, {"loss": round(st["loss"], 5), "task": d["task"].name})
                if periodic("warmup", step, cfg.warmup.steps):
                    stopped = True
                    break
            else:
                finish("warmup", cfg.warmup.steps, t0)
        if "rl" in cfg.stages and not stopped:
            from elva_baseline.sampling import sample_negatives

            t0 = time.perf_counter()
            rl_step0 = start_step if start_stage == "rl" else 0
            scfg, rcfg = cfg.sampling_config(), cfg.reward_config()
            neg_dir = trainer.out / "rl_negatives"
            negs = {}
            if rl_step0 == 0:
                for group in opt.param_groups:
                    group["lr"] = cfg.rl.lr
                for n in names:  # every process mines the same (greedy embeddings, identical weights)
                    d = data[n]
                    q = policy.candidate_embeddings([d["queries"][i] for i in d["train"]]).float().cpu()
                    c = policy.candidate_embeddings(d["pool"]).float().cpu()
                    negs[n] = sample_negatives(q @ c.T, [list(d["rel"][i]) for i in d["train"]], scfg).indices
                if main:
                    with atomic_dir(neg_dir, overwrite=True) as tmp:
                        for n in names:
                            np.save(tmp / f"{n}.npy", negs[n].numpy())
            else:
                for n in names:
                    path = neg_dir / f"{n}.npy"
                    if not path.is_file():
                        raise TrainingError(f"{path}: the mined negatives of the interrupted RL stage are missing; "
                                            "start the run again without --resume")
                    negs[n] = torch.from_numpy(np.load(path, allow_pickle=False))
            gcfg = GenerativeRLConfig.from_rl_config(cfg.rl, temperature=g.temperature, top_p=g.top_p)
            with_negs = rl_queries({n: negs[n] for n in names}, cfg.data.benchmark)  # (queries with a negative)
            rl_names = [n for n in names if n in with_negs]
            for step in range(rl_step0 + 1, cfg.rl.steps + 1):
                n = rl_names[step % len(rl_names)]
                d = data[n]
                rng = batch_rng("rl", step)
                rows = rng.sample(with_negs[n], min(cfg.rl.queries_per_step, len(with_negs[n])))
                qi = [d["train"][r] for r in rows]
                pos = [max(d["rel"][i], key=lambda c: (d["rel"][i][c], -c)) for i in qi]
                neg = [[d["pool"][int(j)] for j in negs[n][r].tolist() if j >= 0] for r in rows]
                st = policy.grpo_step([d["queries"][i] for i in qi], [d["pool"][c] for c in pos], neg, rcfg, opt, gcfg,
                                      accelerator=acc)
                trainer.updates += 1
                trainer._check_finite(st.get("loss", 0.0), "rl", step)
                trainer._record("rl", step, {k: (round(v, 6) if isinstance(v, float) else v) for k, v in st.items()}
                                | {"task": n})
                if periodic("rl", step, cfg.rl.steps):
                    break
            else:
                finish("rl", cfg.rl.steps, t0)
    if acc is not None:  # every process done before any leaves: one that exits with the group alive can abort another
        import torch.distributed as dist

        acc.wait_for_everyone()
        if dist.is_initialized():
            dist.destroy_process_group()
    return {
        "stages": [{"stage": r.stage, "steps": r.steps, "seconds": round(r.seconds, 2), "checkpoint": str(r.checkpoint),
                    "eval": r.eval} for r in results],
        "updates": trainer.updates,
        "seconds": round(time.perf_counter() - t_run, 2),
        "final": str(trainer.out / "final") if (trainer.out / "final").is_dir() else None,
        "base": g.base,
    }
