"""``elva-train``: the ELVA reference trainer's command line (the trainer lives in ``elva_baseline``,
which imports mrbench, never the reverse — hence its own script rather than ``mrbench train``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from mrbench.cli.common import handle_errors, reflow_help
from mrbench.cli.common import sigterm_as_ctrl_c

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Train ELVA-style retrievers (InfoNCE warmup → GRPO with rule rewards) and plot training logs.")


def interrupted_hint(output: Path) -> str:
    """What ``elva-train run`` prints after ``interrupted:`` on Ctrl-C: how to go on from what the
    run in ``output`` holds (a checkpoint to resume from, a run without one, nothing yet)."""
    from elva_baseline.trainer import holds_run

    last = output / "last"
    if (last / "trainer_state.json").is_file():
        return f"the last checkpoint is in {last}; re-run with --resume to continue"
    if holds_run(output):
        return f"no checkpoint to resume from was written to {output}; re-run with --overwrite to start over"
    return "nothing was trained yet; re-run the same command"


def _recover_last(output: Path, *, clean: bool) -> None:
    """Put back ``output/last`` when a kill or interrupt between the two renames of its replacement
    left it beside its place (one line saying so); ``clean``: remove leftovers of earlier swaps."""
    from elva_baseline.checkpoint import recover_checkpoint_dir

    last = output / "last"
    src = recover_checkpoint_dir(last, clean=clean)
    if src is not None:
        typer.echo(f"{last} was missing (a checkpoint save was cut short while replacing it); restored it from "
                   f"{src.name}", err=True)


@app.command("run")
@handle_errors(interrupted="nothing was trained yet; re-run the same command")
@sigterm_as_ctrl_c  # a scheduler's or kill's SIGTERM says where to resume from, as Ctrl-C does
def run(
    output: Annotated[Path, typer.Option("--output", "-o", help="Run directory: log, checkpoints (warmup/, rl/, last/, final/).")],
    config: Annotated[Optional[Path], typer.Option("--config", "-c", help="JSON or TOML config (see elva_baseline/config.py).")] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="Override a key, e.g. --set rl.steps=50 (repeatable).")] = None,
    stages: Annotated[Optional[str], typer.Option(help="Comma-separated stages to run: warmup, rl.")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Seed (overrides the config).")] = None,
    resume: Annotated[bool, typer.Option(help="Continue the run in --output from its last checkpoint.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Delete the run in --output and start over: a run directory (holding config.json and train_log.jsonl), never a model, checkpoint or other folder; through a symbolic link, its target is replaced and the link kept.")] = False,
    threads: Annotated[Optional[int], typer.Option(help="torch CPU threads, at least 1 (default: torch's).")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
) -> None:
    """Train. Writes train_log.jsonl (plot it with `elva-train plot`), checkpoints loadable as
    `mrbench evaluate -e elva:OUTPUT/final`, and summary.json. With --resume the run's saved
    config.json is the configuration: options that would change it are refused."""
    import json

    from elva_baseline.config import ConfigError, TrainConfig
    from elva_baseline.trainer import saved_config, train
    from mrbench.errors import MrbenchError

    try:
        if config:
            cfg = TrainConfig.from_file(config)
        elif resume and (output / "config.json").is_file():
            cfg = saved_config(output)  # options given below are checked against it by the trainer
        else:
            cfg = TrainConfig()
        sets = list(set_ or [])
        if stages:
            sets.append("stages=" + json.dumps([s.strip() for s in stages.split(",") if s.strip()]))
        if seed is not None:
            sets.append(f"seed={seed}")
        if sets:
            cfg = cfg.with_overrides(sets)
    except ConfigError as e:
        raise MrbenchError(str(e)) from None
    _check_threads(threads)
    import os

    main = os.environ.get("RANK", "0") == "0"  # under torchrun / accelerate launch only the main process reports
    if (main and not resume and cfg.regime == "dual" and "rl" in cfg.stages and "warmup" not in cfg.stages
            and not cfg.model.init and not cfg.model.pretrained):
        typer.echo("warning: the rl stage without warmup starts from a random initialisation, which is also its KL "
                   "reference; pass --set model.init=RUN/warmup (a warmup checkpoint) to start from a trained model",
                   err=True)
    if main and output.is_dir():  # without --resume only recover, so that the refusal says to --resume
        _recover_last(output, clean=resume)
    try:
        summary = train(cfg, output, resume=resume, overwrite=overwrite, progress=not quiet and main, threads=threads)
    except KeyboardInterrupt:  # handle_errors prints the hint that fits what the run left
        if main:  # interrupted between the two renames of a checkpoint swap: put last/ back first
            _recover_last(output, clean=True)
        raise KeyboardInterrupt(interrupted_hint(output)) from None
    if not main:
        return
    for st in summary["stages"]:
        ev = ", ".join(f"{k} {v:.3f}" for k, v in st["eval"].items() if k != "n_queries")
        typer.echo(f"{st['stage']}: {st['steps']} updates in {st['seconds']:.1f} s; held-out {ev or '–'}")
    if summary.get("final") and summary.get("base"):
        typer.echo(f"final adapter: {summary['final']}  (mrbench evaluate -e ret:{summary['base']} "
                   f"--encoder-kwargs '{{\"adapter\": \"{summary['final']}\"}}')")
    elif summary.get("final"):
        typer.echo(f"final model: {summary['final']}  (mrbench evaluate -e elva:{summary['final']})")


def _check_threads(threads: int | None) -> None:
    from mrbench.errors import MrbenchError

    if threads is not None and threads < 1:
        raise MrbenchError(f"--threads {threads}: must be at least 1; leave it out for torch's default")


@app.command("plot")
@handle_errors(interrupted="nothing was written; re-run the same command")
def plot(
    log: Annotated[Path, typer.Argument(help="A train_log.jsonl (or the run directory holding it).")],
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Image file to write; its suffix picks the format: .png, .pdf, .svg, .eps, .jpg, … (default: curves.png next to the log).")] = None,
) -> None:
    """Reward, loss, KL and held-out hit@k curves of a training log, as an image (PNG, PDF, SVG, …)."""
    from elva_baseline.trainlog import LOG_FILE, plot_log
    from mrbench.errors import MrbenchError

    path = log / LOG_FILE if (log / LOG_FILE).is_file() else log  # a directory without a log: read_log says so
    try:
        out = plot_log(path, output or path.with_name("curves.png"))
    except ValueError as e:
        raise MrbenchError(str(e)) from None
    typer.echo(f"wrote {out}")


@app.command("bundle")
@handle_errors(interrupted="bundle does not resume; re-run the same command to rebuild both encoders")
def bundle(
    out: Annotated[Optional[Path], typer.Option("--out", help="Where the checkpoints and recipes.json go (default: the installed elva_baseline/bundled, which the registered encoders load).")] = None,
    warmup: Annotated[int, typer.Option(help="InfoNCE updates shared by both.")] = 300,
    rl: Annotated[int, typer.Option(help="Further updates: InfoNCE for contrastive-tiny, GRPO for elva-tiny.")] = 100,
    seed: Annotated[int, typer.Option(help="Seed of both runs.")] = 0,
    threads: Annotated[Optional[int], typer.Option(help="torch CPU threads, at least 1 (default: torch's).")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
) -> None:
    """Rebuild the bundled `contrastive-tiny` and `elva-tiny` encoders: train both on mrbench-synth-train with equal updates, store them compact, score them on MRBench-Synth test, write recipes.json."""
    from elva_baseline.bundled import BUNDLE_DIR, build_bundled

    _check_threads(threads)
    out = out or BUNDLE_DIR
    payload = build_bundled(out, warmup=warmup, rl=rl, seed=seed, progress=not quiet, threads=threads)
    for name, rec in payload["encoders"].items():
        sc = rec["test_scores"]
        typer.echo(f"{name}: trained in {rec['train_seconds']:.0f} s; MRBench-Synth test hit@5 {sc['hit@5']:.3f}, "
                   f"hit@5 (>=3 grains) {sc['hit@5_3plus']:.3f}, drop-one-grain 1-cos {sc['drop_distance']:.4f}")
    typer.echo(f"wrote {Path(out) / 'recipes.json'}")


reflow_help(app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
