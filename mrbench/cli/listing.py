"""``mrbench encoders``, ``mrbench benchmarks``, ``mrbench info``, ``mrbench check-encoder``."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from mrbench.cli.common import READ_ONLY_HINT, handle_errors, parse_json_kwargs, stdout_console


@handle_errors(interrupted=READ_ONLY_HINT)
def encoders() -> None:
    """List the registered encoders and encoder families, the pip extra each needs and whether it is
    installed here. Any 'pkg.module:Class' or 'path/file.py:Class' works too (see the README)."""
    from rich.markup import escape
    from rich.table import Table

    from mrbench.encoders.registry import list_encoders, missing_modules

    t = Table(title="encoders ('family:spec' for families; any 'pkg.module:Class' or 'file.py:Class' works too)")
    for col in ("name", "kind", "needs", "installed", "description"):
        t.add_column(col)
    for s in list_encoders():
        missing = missing_modules(s.extra)
        t.add_row(s.name + (":<spec>" if s.family else ""), "family" if s.family else "encoder",
                  escape(f"pip install 'mrbench[{s.extra}]'") if s.extra else "–",
                  "[green]yes[/green]" if not missing else f"[red]no[/red] ({', '.join(missing)})", s.description)
    stdout_console().print(t)


@handle_errors(interrupted=READ_ONLY_HINT)
def benchmarks() -> None:
    """List the built-in benchmarks (built on first use, deterministically)."""
    from rich.table import Table

    from mrbench.data.registry import BUILTIN_BENCHMARKS, builtin_dir

    t = Table(title="built-in benchmarks (or pass any benchmark directory)")
    for col in ("name", "split", "built", "description"):
        t.add_column(col)
    for b in BUILTIN_BENCHMARKS.values():
        built = (builtin_dir(b.name) / "manifest.json").is_file()
        t.add_row(b.name, b.split, "yes" if built else "on first use", b.description)
    stdout_console().print(t)


@handle_errors(interrupted=READ_ONLY_HINT)
def info(
    benchmark: Annotated[str, typer.Argument(help="Built-in name or benchmark directory (a results directory from "
                                             "'mrbench evaluate --output' gets its summary).")] = "mrbench-synth",
    verify: Annotated[bool, typer.Option("--verify/--no-verify", help="Check the fingerprint.")] = True,
) -> None:
    """Describe a benchmark: tasks, modalities, pool sizes, grain counts and types. Given a results
    directory instead, say so and summarise it (encoder, benchmark, macro scores, what to run on it)."""
    from collections import Counter
    from pathlib import Path

    from rich.table import Table

    from mrbench.data.registry import load_benchmark

    p = Path(benchmark)
    if (p.is_dir() and (p / "results.json").is_file() and not (p / "manifest.json").exists()) or (
            p.is_file() and p.name == "results.json"):
        _results_info(p if p.is_dir() else p.parent)
        return
    from mrbench.metrics.aggregate import grain_bucket_labels

    b = load_benchmark(benchmark, verify=verify)
    c = stdout_console()
    c.print(f"[bold]{b.name}[/bold] v{b.version} ({b.split}) at {b.root}\nfingerprint {b.fingerprint}")
    # the grain-count buckets evaluate reports (by_grain_count's default): "<2" shown when a task has such queries
    buckets = (2, 3, 4, 5)
    labels = grain_bucket_labels(buckets)  # ["<2", "2", "3", "4", "5+"]
    counts = [Counter(labels[sum(q.n_grains >= x for x in buckets)] for q in task.queries) for task in b.tasks]
    shown = labels if any(n[labels[0]] for n in counts) else labels[1:]
    t = Table()
    for col in ("task", "query → candidate", "queries", "pool", "relevant/q", "grains " + "/".join(shown), "grain types"):
        t.add_column(col)
    for task, n in zip(b.tasks, counts):
        types = Counter(g.type for q in task.queries for g in q.grains)
        rel = sum(len(task.relevant(q.id)) for q in task.queries) / max(1, len(task.queries))
        t.add_row(task.name, f"{task.query_modality} → {task.candidate_modality}", str(len(task.queries)),
                  str(len(task.candidates)), f"{rel:.2f}", "/".join(str(n.get(k, 0)) for k in shown),
                  ", ".join(f"{k} {v}" for k, v in types.most_common()))
    c.print(t)


def _results_info(path) -> None:
    """``mrbench info`` on a results directory: what it is, its summary, and the commands for it."""
    from rich.markup import escape

    from mrbench.data.registry import BUILTIN_BENCHMARKS
    from mrbench.report.results import EvaluationResult

    d = EvaluationResult.load(path).data
    enc, bench, st = d.get("encoder") or {}, d.get("benchmark") or {}, d.get("settings") or {}
    macro = (d.get("scores") or {}).get("macro") or {}
    ks = st.get("ks") or []
    scores = ", ".join(f"hit@{k} {macro[f'hit@{k}']:.3f}" for k in ks if isinstance(macro.get(f"hit@{k}"), (int, float)))
    where = bench.get("name") if bench.get("name") in BUILTIN_BENCHMARKS else (bench.get("path") or bench.get("name"))
    c = stdout_console()
    c.print(f"[bold]{escape(str(path))}[/bold] is a results directory (written by 'mrbench evaluate --output'), "
            "not a benchmark", highlight=False)
    c.print(escape(f"encoder {enc.get('name')} on {bench.get('name')} v{bench.get('version')} ({bench.get('split')}), "
                   f"fingerprint {bench.get('fingerprint')}, created {d.get('created')}; tasks "
                   f"{', '.join(st.get('tasks') or [])}; {macro.get('n_queries')} scored queries"
                   + (f"; macro {scores}" if scores else "")), highlight=False)
    c.print(escape(f"check its scores against its run files: mrbench verify {path}; describe its benchmark: "
                   f"mrbench info {where}"), highlight=False)


@handle_errors(interrupted=READ_ONLY_HINT)
def check_encoder(
    name: Annotated[str, typer.Argument(help="Encoder name, 'pkg.module:Class', 'file.py:Class' or 'family:spec'.")],
    encoder_kwargs: Annotated[Optional[str], typer.Option("--encoder-kwargs", help="JSON object for the constructor.")] = None,
    n_items: Annotated[int, typer.Option(min=2, help="Items per modality in the probe task (at least 2).")] = 16,
) -> None:
    """Run an encoder through a tiny probe task and report what is wrong (shape, NaN, normalisation,
    determinism, dimension, speed). Exits non-zero when a check fails."""
    from rich.table import Table

    from mrbench.encoders.check import check_encoder as run_checks
    from mrbench.encoders.registry import get_encoder

    enc = get_encoder(name, **parse_json_kwargs(encoder_kwargs))
    results = run_checks(enc, n_items=n_items)
    t = Table(title=f"check-encoder {name}")
    for col in ("check", "result", "detail"):
        t.add_column(col)
    for r in results:
        verdict = "[red]FAIL[/red]" if not r.ok else ("[yellow]warn[/yellow]" if getattr(r, "warning", False) else "[green]ok[/green]")
        t.add_row(r.name, verdict, r.detail)
    stdout_console().print(t)
    if not all(r.ok for r in results):
        raise typer.Exit(code=1)
