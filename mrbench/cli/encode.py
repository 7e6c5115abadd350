"""``mrbench encode``: fill the embedding cache ahead of ``mrbench evaluate``, on one GPU or many."""

from __future__ import annotations

import os
import shlex
from pathlib import Path
from typing import Annotated, Optional

import typer

from mrbench.cli.common import handle_errors, parse_json_kwargs, parse_names


@handle_errors
def encode(
    encoder: Annotated[
        list[str],
        typer.Option("--encoder", "-e", help="Encoder name (see 'mrbench encoders'), 'pkg.module:Class', "
                     "'path/file.py:Class' or 'family:spec' — exactly as you will pass it to evaluate. Repeat for several."),
    ] = ["random"],
    benchmark: Annotated[
        str, typer.Option("--benchmark", "-b", help="Built-in benchmark name (see 'mrbench benchmarks') or a benchmark directory.")
    ] = "mrbench-synth",
    tasks: Annotated[Optional[str], typer.Option("--tasks", help="Comma-separated task names (default: all).")] = None,
    encoder_kwargs: Annotated[
        Optional[str], typer.Option("--encoder-kwargs", help="JSON object passed to the encoder's constructor, e.g. '{\"dim\": 128}' "
                                    "(part of the cache namespace: give evaluate the same).")
    ] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="Items per encoder call on each rank (default: the encoder's own).")] = None,
    workers: Annotated[Optional[int], typer.Option(help="Image decode + preprocessing workers per rank (default: the node's "
                                                   "cores divided by its ranks, at most 8; capped at one process per usable core, 4 threads per core "
                                                   "(8 to 64)).")] = None,
    decode: Annotated[str, typer.Option(help="Decode workers: thread, process, auto (processes from 4 workers) or gpu "
                                        "(JPEGs decoded on each rank's CUDA device; falls back to auto with one warning), "
                                        "as for evaluate.")] = "auto",
    cache_dir: Annotated[Optional[Path], typer.Option(help="Embedding cache root (default $MRBENCH_CACHE, else $MRBENCH_HOME/embeddings, else ~/.cache/mrbench/embeddings); "
                                                      "with several nodes, a directory every node shares.")] = None,
    sensitivity: Annotated[bool, typer.Option("--sensitivity/--no-sensitivity", help="Also encode the drop-one-grain "
                                              "query variants evaluate's grain-sensitivity diagnostic needs.")] = True,
    merge: Annotated[bool, typer.Option("--merge/--no-merge", help="Each rank merges the per-batch shards it wrote into one file.")] = True,
    validate: Annotated[bool, typer.Option("--validate/--no-validate", help="Rank 0 checks at the end that every item is cached.")] = True,
    verify: Annotated[bool, typer.Option("--verify/--no-verify", help="Check the benchmark fingerprint on load.")] = True,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
) -> None:
    """Encode a benchmark into the embedding cache, one process per GPU, so that 'mrbench evaluate' with the same encoder and cache only retrieves and scores.

    Every process (rank) takes a disjoint, deterministic share of the queries, candidates and
    drop-one-grain query variants of every task, encodes it on its own GPU (cuda:LOCAL_RANK; the CPU
    without CUDA), writes its own cache shards and merges them into one file; rank 0 then checks that
    every item is cached. Without a launcher it runs as one process. Progress is shown by rank 0.

    One node, 8 GPUs, then the usual evaluate (same -e, --encoder-kwargs and cache):

    torchrun --nproc-per-node 8 -m mrbench encode -b mrbench-synth -e openclip:ViT-B-32/laion2b_s34b_b79k

    mrbench evaluate -b mrbench-synth -e openclip:ViT-B-32/laion2b_s34b_b79k -o results/

    Two nodes (run on each, --node-rank 0 and 1; the cache on a filesystem both see):

    torchrun --nnodes 2 --node-rank 0 --nproc-per-node 8 --master-addr node0 --master-port 29500 -m mrbench encode -b mrbench-synth -e openclip:ViT-B-32/laion2b_s34b_b79k --cache-dir /shared/mrbench-cache

    accelerate launch works the same way: accelerate launch --multi_gpu --num_processes 8 -m mrbench encode ...
    """
    from mrbench.errors import MrbenchError

    rank = os.environ.get("RANK", "0")
    try:
        _run(encoder, benchmark, tasks, encoder_kwargs, batch_size, workers, decode, cache_dir, sensitivity, merge,
             validate, verify, quiet)
    except MrbenchError as e:
        if rank not in ("", "0"):  # every rank prints; say which
            err = MrbenchError(f"rank {rank}: {e}")
            err.exit_code = e.exit_code
            raise err from None
        raise


def _run(encoder: list[str], benchmark: str, tasks: Optional[str], encoder_kwargs: Optional[str],
         batch_size: Optional[int], workers: Optional[int], decode: str, cache_dir: Optional[Path],
         sensitivity: bool, merge: bool, validate: bool, verify: bool, quiet: bool) -> None:
    from mrbench.encoders.distributed import DistContext, encode_benchmark
    from mrbench.encoders.harness import check_worker_kind, check_workers
    from mrbench.errors import MrbenchError

    kwargs = parse_json_kwargs(encoder_kwargs)
    encoders = list(dict.fromkeys(encoder))
    if len(encoders) != len(encoder):
        raise MrbenchError("--encoder: the same encoder is given twice; give each once")
    if batch_size is not None and batch_size < 1:
        raise MrbenchError(f"--batch-size {batch_size}: expected a positive integer")
    check_workers(workers)
    check_worker_kind(decode)
    task_names = parse_names(tasks)

    with DistContext.from_env() as ctx:
        from mrbench.data.registry import load_benchmark

        console = None
        if ctx.is_main:
            from mrbench.cli.common import stdout_console

            console = stdout_console()
        reporter = None
        if ctx.is_main and not quiet:
            from mrbench.report.progress import RichReporter

            reporter = RichReporter()
        bench = load_benchmark(benchmark, verify=verify, progress=reporter.builder_callback() if reporter else None,
                               log=reporter.log if reporter else None, tasks=task_names or None)
        for name in task_names or []:
            bench.task(name)  # unknown task: one line, before any encoder is loaded
        for enc in encoders:
            rep = encode_benchmark(
                bench, enc, encoder_kwargs=kwargs, tasks=task_names, cache_dir=cache_dir, batch_size=batch_size,
                num_workers=workers, decode=decode, grain_sensitivity=sensitivity, merge=merge, validate=validate,
                progress=reporter if reporter is not None else False, dist=ctx,
            )
            if console is None:
                continue
            console.print(rep.summary(), markup=False, highlight=False, soft_wrap=True)
            if ctx.distributed:
                for r in rep.ranks:
                    console.print(
                        f"  rank {r.rank} ({r.host}, {r.device}): {r.assigned} items, encoded {r.encoded}, "
                        f"cached before {r.cache_hits}, {r.seconds:.1f} s, {len(r.shards)} shard file(s)",
                        markup=False, highlight=False, soft_wrap=True,
                    )
        if console is not None:
            cmd = ["mrbench", "evaluate", "-b", benchmark]
            for enc in encoders:
                cmd += ["-e", enc]
            if encoder_kwargs:
                cmd += ["--encoder-kwargs", encoder_kwargs]
            if tasks:
                cmd += ["--tasks", tasks]
            if cache_dir is not None:
                cmd += ["--cache-dir", str(cache_dir)]
            if not sensitivity:
                cmd += ["--no-sensitivity"]
            console.print("next (finds every embedding cached): " + shlex.join(cmd), markup=False, highlight=False, soft_wrap=True)


if __name__ == "__main__":  # python -m mrbench.cli.encode ... (the same command without the app)
    typer.run(encode)
