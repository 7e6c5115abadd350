"""``mrbench evaluate``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from mrbench.cli.common import handle_errors, parse_json_kwargs, parse_names, resume_hint


@handle_errors
def evaluate(
    encoder: Annotated[
        list[str],
        typer.Option("--encoder", "-e", help="Encoder name (see 'mrbench encoders'), 'pkg.module:Class', "
                     "'path/file.py:Class' or 'family:spec'. Repeat to compare several."),
    ] = ["random"],
    benchmark: Annotated[
        str, typer.Option("--benchmark", "-b", help="Built-in benchmark name (see 'mrbench benchmarks') or a benchmark directory.")
    ] = "mrbench-synth",
    output: Annotated[
        Optional[Path], typer.Option("--output", "-o", help="Write results.json, runs/*.trec, per_query.parquet, sensitivity.parquet (grain sensitivity) and grains.png here "
                                     "(one sub-directory per encoder when several are given).")
    ] = None,
    k: Annotated[str, typer.Option("--k", help="Cutoffs for hit@k (R@K), recall@k, mrr@k, ndcg@k.")] = "1,5,10",
    tasks: Annotated[Optional[str], typer.Option("--tasks", help="Comma-separated task names (default: all); only their files are read.")] = None,
    encoder_kwargs: Annotated[
        Optional[str], typer.Option("--encoder-kwargs", help="JSON object passed to the encoder's constructor, e.g. '{\"dim\": 128}'; "
                                          "with several -e, to every one of them (run them separately to give each its own).")
    ] = None,
    depth: Annotated[int, typer.Option(help="Length of the ranked lists in the run files.")] = 100,
    batch_size: Annotated[Optional[int], typer.Option(help="Items per encoder call (default: the encoder's own).")] = None,
    workers: Annotated[Optional[int], typer.Option(help="Image decode + preprocessing workers (default: all cores, at most 8; a larger value is "
                                                                "cut to one process per usable core, or 4 threads per core up to 64, with a warning).")] = None,
    decode: Annotated[str, typer.Option(help="Decode workers: thread, process (outside the GIL; for encoders with a "
                                        "pixel_transform, e.g. openclip, hf, ret, vlm2vec), auto (processes from 4 workers) or gpu (JPEGs decoded "
                                        "on the encoder's CUDA device with torchvision; falls back to auto with one warning). "
                                        "Set MRBENCH_PIXEL_CACHE=1 to cache preprocessed pixels on disk.")] = "auto",
    backend: Annotated[str, typer.Option(help="Exact search backend: torch, faiss, or auto (torch on a GPU and for small problems, else faiss when installed; on large pools, when a sample shows a weak encoder, the torch backend's one-pass streamed route instead). Results are identical on every backend.")] = "auto",
    approx: Annotated[
        Optional[str], typer.Option("--approx", metavar="JSON", help=(
            "Approximate search (FAISS) for the run files and metrics, as a JSON object. "
            "IVF: '{\"index\": \"ivf\", \"nlist\": 1024, \"nprobe\": 16}' with nlist 1..N (N = the task's candidates; "
            "default round(4*sqrt(N)), at most N//39, at least 1), nprobe 1..nlist (default max(8, nlist//16), at most "
            "nlist), train_size nlist..N (default 256*nlist, at most N). HNSW: '{\"index\": \"hnsw\"}' with M 4..128 (default 32), "
            "ef_construction M..65536 (default max(80, M)), ef_search 1..65536 (default 128). Optional: seed (>= 0) and "
            "device (cpu, or cuda for faiss-gpu; falls back to the CPU with a warning). Judged candidates outside "
            "an approximate list count as not retrieved. Exact search still runs to report the index's recall "
            "against it (results.json: scores.approx_recall)."))
    ] = None,
    stream_pool: Annotated[bool, typer.Option("--stream-pool", help=(
        "Keep each task's candidate embeddings in a memory-mapped file and stream them through exact search "
        "(torch backend), for pools larger than memory; without it a pool needing more than half of the "
        "available memory is refused."))] = False,
    cache: Annotated[bool, typer.Option("--cache/--no-cache", help="Reuse and fill the on-disk embedding cache.")] = True,
    cache_dir: Annotated[Optional[Path], typer.Option(help="Embedding cache root (default $MRBENCH_CACHE, else $MRBENCH_HOME/embeddings, else ~/.cache/mrbench/embeddings).")] = None,
    sensitivity: Annotated[bool, typer.Option("--sensitivity/--no-sensitivity", help="Run the drop-one-grain diagnostic.")] = True,
    verify: Annotated[bool, typer.Option("--verify/--no-verify", help="Check the benchmark fingerprint on load.")] = True,
    overwrite: Annotated[bool, typer.Option(help="Replace the results in --output (a directory holding results.json; never a folder of other files).")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
) -> None:
    """Evaluate encoders on a benchmark: per-task R@K and per-grain tables, results JSON, TREC runs, chart.

    Ranks use pessimistic ties (a tie never helps the model); queries without a relevant candidate
    are dropped and counted. Embeddings are cached, so a re-run after an interruption or with other
    metrics does not encode again.
    """
    from mrbench.cli.common import stdout_console
    from mrbench.errors import MrbenchError
    from mrbench.encoders.registry import check_encoder_spec
    from mrbench.pipeline import _check_output, evaluate as run
    from mrbench.report.progress import NullReporter, RichReporter
    from mrbench.report.tables import comparison_table, print_result

    _refuse_launcher()
    if batch_size is not None and batch_size < 1:  # (the harness's own error would not name the option)
        raise MrbenchError(f"--batch-size {batch_size}: expected a positive integer (or leave it out for the encoder's own)")
    kwargs = parse_json_kwargs(encoder_kwargs)
    approx_spec = _parse_approx(approx) if approx is not None else None
    encoders = list(dict.fromkeys(encoder))
    if len(encoders) != len(encoder):
        raise MrbenchError("--encoder: the same encoder is given twice; give each once")
    outs: list[Optional[Path]] = [None] * len(encoders)
    if output is not None:
        if len(encoders) == 1:
            outs = [output]
        else:
            _check_output(output, overwrite, replaced=False)  # (each encoder's results go in a subdirectory)
            outs = [output / _slug(e) for e in encoders]
        for o in outs:
            _check_output(o, overwrite)
    for e in encoders:  # every -e resolved (name, extra, module or file import, kwargs) before the first one runs
        try:
            check_encoder_spec(e, kwargs)
        except MrbenchError as exc:
            if len(encoders) > 1 and kwargs and "kwargs" in str(exc):
                raise type(exc)(f"{exc} (--encoder-kwargs applies to every -e; run the encoders separately to give "
                                "each its own)") from None
            raise
    console = stdout_console()
    reporter = NullReporter() if quiet else RichReporter()
    task_names = parse_names(tasks)
    bench: object = benchmark
    if len(encoders) > 1:  # loaded (and checked) once for all of them
        from mrbench.data.registry import load_benchmark

        bench = load_benchmark(benchmark, verify=verify, progress=reporter.builder_callback(), log=reporter.log,
                               tasks=task_names or None)
    results = []
    try:
        for enc, out in zip(encoders, outs):
            res = run(
                bench, enc, encoder_kwargs=kwargs, tasks=task_names, ks=k, depth=depth,
                output=out, overwrite=overwrite, cache=cache, cache_dir=cache_dir, batch_size=batch_size,
                num_workers=workers, decode=decode, backend=backend, grain_sensitivity=sensitivity, verify=verify, progress=reporter,
                **({"approx": approx_spec} if approx_spec is not None else {}),
                **({"stream_pool": True} if stream_pool else {}),
            )
            print_result(res, console)
            t = res.timings
            console.print(
                f"[dim]{enc}: {t['total']:.2f} s total — encode {t['encode']:.2f} s (model {t['encoder_forward']:.2f} s), "
                f"retrieve {t['retrieve']:.2f} s, score {t['score']:.2f} s, grain sensitivity {t['sensitivity']:.2f} s; "
                f"cache hits {res.data['cache']['hits']}/{res.data['cache']['items']}[/dim]"
            )
            if approx_spec is not None:
                rec = res.data["scores"].get("approx_recall") or {}
                kmax = max(res.data["settings"]["ks"])
                parts = ", ".join(f"{t} {v.get(f'recall@{kmax}'):.3f}" for t, v in rec.items()
                                  if v.get(f"recall@{kmax}") is not None)
                console.print(f"[dim]approximate search ({res.data['settings']['approx']['index']}): recall@{kmax} "
                              f"against exact search — {parts or 'no queries'}[/dim]")
            if out is not None:
                files = res.data.get("files") or {}  # what save wrote (no sensitivity.parquet with --no-sensitivity)
                names = ["results.json", "runs/", *(files[k] for k in ("per_query", "sensitivity", "chart") if files.get(k))]
                console.print(f"results written to [bold]{out}[/bold] ({', '.join(names)})")
            results.append(res)
    except KeyboardInterrupt:  # what the re-run needs: --overwrite once an encoder's results are written
        raise KeyboardInterrupt(resume_hint(cache, written=bool(results) and output is not None)) from None
    if len(results) > 1:
        console.print(comparison_table(results))


def _refuse_launcher() -> None:
    """One line when started by torchrun / accelerate launch (``WORLD_SIZE`` > 1): every rank would run
    the whole evaluation and write the same output; the multi-GPU step is ``mrbench encode``."""
    import os

    from mrbench.errors import MrbenchError

    try:
        world = int(os.environ.get("WORLD_SIZE", "1").strip() or "1")
    except ValueError:
        return
    if world > 1:
        raise MrbenchError(
            f"WORLD_SIZE={world}: mrbench evaluate runs as one process (under torchrun or accelerate launch every rank "
            "would run the whole evaluation into the same output); encode on many GPUs first with 'torchrun "
            "--nproc-per-node N -m mrbench encode ...' (or 'accelerate launch ... -m mrbench encode ...', same -e, "
            "--encoder-kwargs and cache), then run 'mrbench evaluate' once, without a launcher")


def _parse_approx(value: str) -> dict:
    """``--approx`` JSON → dict, validated (one-line errors before anything is encoded)."""
    from mrbench.errors import MrbenchError
    from mrbench.retrieval.approx import check_approx_spec

    example = '\'{"index": "ivf", "nlist": 1024, "nprobe": 16}\' or \'{"index": "hnsw"}\''
    if not value.strip():  # parse_json_kwargs would read it as {}: IVF with every default, unasked
        raise MrbenchError(f"--approx {value!r}: empty; pass a JSON object such as {example}, or leave --approx out "
                           "for exact search only")
    obj = parse_json_kwargs(value, "--approx", example=example)
    try:
        check_approx_spec(obj)
    except MrbenchError as e:
        raise type(e)(f"--approx: {e}") from None
    return obj


def _slug(name: str) -> str:
    import re

    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "encoder"
