"""``mrbench submit``, ``mrbench verify`` and ``mrbench leaderboard show|render|add-benchmark``."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Optional

import typer

from mrbench.cli.common import READ_ONLY_HINT, err, handle_errors, parse_names, stdout_console

_LB_WRITE_HINT = "the leaderboard file is replaced whole or not at all; re-run the same command"
"""Ctrl-C hint of the commands that write the leaderboard (it is written atomically, under a lock)."""

_LB_HELP = "Leaderboard JSON file (default: leaderboard/leaderboard.json in the working directory)."
_BENCH_HELP = ("The benchmark the results were computed on (a built-in name or a directory), when the path "
               "recorded in results.json is not on this machine. Its fingerprint must match.")
leaderboard_app = typer.Typer(help="Show, render and maintain the leaderboard file.", no_args_is_help=True)


def _lb_path(path: Optional[Path]) -> Path:
    """``--leaderboard``, or the default; a directory is refused with one line (it is no leaderboard
    file, and ``add-benchmark`` cannot create one there)."""
    from mrbench.errors import MrbenchError
    from mrbench.leaderboard.store import DEFAULT_LEADERBOARD

    path = path if path is not None else DEFAULT_LEADERBOARD
    if path.is_dir():
        raise MrbenchError(f"--leaderboard {path}: is a directory, not a leaderboard file; pass the JSON file, "
                           f"e.g. --leaderboard {path / 'leaderboard.json'}")
    return path


_PAGE_SUFFIXES = {"--html": (".html", ".htm"), "--markdown": (".md", ".markdown")}
"""The suffixes ``leaderboard render`` writes each page under: any other target (a results.json, the
leaderboard itself, a directory's name) is refused rather than replaced."""


def _check_page(option: str, path: Path) -> None:
    """Refuse, before anything is written, a page path without its suffix (:data:`_PAGE_SUFFIXES`),
    or one that is a directory: one line naming ``option`` and ``path``."""
    from mrbench.errors import MrbenchError

    suffixes = _PAGE_SUFFIXES[option]
    if path.suffix.lower() not in suffixes:
        raise MrbenchError(f"{option} {path}: the page is written only to a file ending in {' or '.join(suffixes)} "
                           f"(so that no other file is replaced); name one, e.g. {path.with_suffix(suffixes[0])}")
    if path.is_dir():
        raise MrbenchError(f"{option} {path}: is a directory; name the file to write, e.g. "
                           f"{path / ('leaderboard' + suffixes[0])}")


def _write_page(option: str, path: Path, text: str) -> None:
    """Write a rendered page atomically (:func:`~mrbench.data.io.atomic_write_text`); a failure is one
    line naming ``option`` and ``path``, not the temporary file beside it."""
    from mrbench.data.io import atomic_write_text
    from mrbench.errors import MrbenchError, write_failure

    try:
        atomic_write_text(path, text)
    except OSError as e:
        why = write_failure(e)
        raise MrbenchError(f"{option} {path}: cannot write the page ({why}); choose another path") from None
    print(f"wrote {path}")


@contextmanager
def _names(where: object) -> Iterator[None]:
    """An unknown benchmark, task or column name (:class:`~mrbench.leaderboard.render.UnknownViewName`)
    becomes a one-line error that starts with ``where`` (the leaderboard file or the option)."""
    from mrbench.leaderboard.render import UnknownViewName

    try:
        yield
    except UnknownViewName as e:
        raise UnknownViewName(f"{where}: {e}") from None


@handle_errors(interrupted=_LB_WRITE_HINT)
def submit(
    result_dir: Annotated[Path, typer.Argument(help="Directory written by 'mrbench evaluate --output' (results.json + runs/).")],
    leaderboard: Annotated[Optional[Path], typer.Option("--leaderboard", "-l", help=_LB_HELP)] = None,
    benchmark: Annotated[Optional[str], typer.Option("--benchmark", "-b", help=_BENCH_HELP)] = None,
    replace: Annotated[bool, typer.Option("--replace", help="Overwrite an existing entry of the same encoder, revision and benchmark.")] = False,
    self_reported: Annotated[bool, typer.Option("--self-reported", help="Add the scores without recomputing them from run files (status 'self-reported').")] = False,
    parameters: Annotated[Optional[int], typer.Option("--parameters", help="Number of model parameters, if known.")] = None,
    training: Annotated[str, typer.Option("--training", help="zero-shot, train-split (trained on the benchmark's train split) or unknown.")] = "unknown",
    command: Annotated[Optional[str], typer.Option("--command", help="The command that reproduces the results (shown on the leaderboard).")] = None,
    url: Annotated[Optional[str], typer.Option("--url", help="Link to the model or paper.")] = None,
    notes: Annotated[Optional[str], typer.Option("--notes", help="A short note shown with the entry.")] = None,
) -> None:
    """Verify a results directory and add it to the leaderboard.

    Checks results.json against the schema, checks that its benchmark fingerprint is one the
    leaderboard lists and that the results cover all of its tasks (a run made with --tasks is
    refused), refuses encoders that read the ground truth (oracle), recomputes every hit@k /
    recall@k / MRR@k / nDCG@k (per task, grain count and grain type) from the run files against
    the benchmark's qrels (a mismatch rejects the submission and names the score), refuses a
    duplicate unless --replace, and writes the leaderboard atomically under a file lock.
    """
    from mrbench.leaderboard.store import submit as do_submit

    out = do_submit(result_dir, _lb_path(leaderboard), benchmark=benchmark, replace=replace, self_reported=self_reported,
                    parameters=parameters, training=training, command=command, url=url, notes=notes)
    e = out.entry
    how = (f"verified: {out.verification.compared} values of {len(out.verification.verified_metrics)} metrics recomputed "
           "from the run files" if out.verification else "self-reported: nothing recomputed")
    macro = e["scores"]["macro"]
    print(f"{'replaced' if out.replaced else 'added'} {e['id']} ({how}); macro hit@5 "
          f"{macro.get('hit@5', float('nan')):.4f} -> {_lb_path(leaderboard)}")


@handle_errors(interrupted="verify writes nothing; re-run the same command")
def verify(
    result_dir: Annotated[Path, typer.Argument(help="Directory written by 'mrbench evaluate --output'.")],
    benchmark: Annotated[Optional[str], typer.Option("--benchmark", "-b", help=_BENCH_HELP)] = None,
    show: Annotated[int, typer.Option("--show", help="How many mismatches to list.")] = 20,
) -> None:
    """Recompute every score of a results directory from its run files (for reviewers; writes nothing).

    Exit code 0 when every recomputable score matches, 1 when one differs (each listed as
    'score path: submitted X, recomputed Y'), 2 when the directory, its run files or the benchmark
    cannot be checked (one 'error:' line). mean/median rank, tie counts and grain sensitivity
    cannot be recomputed from a run file and are not checked.
    """
    from mrbench.leaderboard.verify import verify_results

    v = verify_results(result_dir, benchmark=benchmark)
    if v.ok:
        print(f"ok: {v.compared} values of {len(v.verified_metrics)} metrics ({', '.join(v.verified_metrics)}) "
              f"recomputed from {len(v.run_sha256)} run files match {result_dir / 'results.json'}")
        return
    print(f"MISMATCH: {len(v.mismatches)} of {v.compared} recomputed values differ from {result_dir / 'results.json'}")
    for line in v.mismatches[:show]:
        print(f"  {line}")
    if len(v.mismatches) > show:
        print(f"  ... and {len(v.mismatches) - show} more (--show N)")
    raise typer.Exit(code=1)


@leaderboard_app.command("show")
@handle_errors(interrupted=READ_ONLY_HINT)
def show(
    leaderboard: Annotated[Optional[Path], typer.Option("--leaderboard", "-l", help=_LB_HELP)] = None,
    benchmark: Annotated[Optional[str], typer.Option("--benchmark", "-b", help="Only this benchmark (name or fingerprint prefix).")] = None,
    task: Annotated[Optional[str], typer.Option("--task", "-t", help="Scores of this task instead of the macro average.")] = None,
    sort: Annotated[str, typer.Option("--sort", "-s", help="Column to sort by (any metric or column shown).")] = "hit@5",
    ascending: Annotated[bool, typer.Option("--ascending", help="Sort ascending (default: descending).")] = False,
    columns: Annotated[Optional[str], typer.Option("--columns", "-c", help="Comma-separated columns to show.")] = None,
    markdown: Annotated[bool, typer.Option("--markdown", help="Print a Markdown table instead of the terminal table.")] = False,
) -> None:
    """Print the leaderboard as a table (sortable by any column, filtered by benchmark and task)."""
    from mrbench.leaderboard import render
    from mrbench.leaderboard.store import load_leaderboard

    path = _lb_path(leaderboard)
    lb = load_leaderboard(path)
    with _names(path):
        groups = render.rows_by_benchmark(lb, benchmark=benchmark, task=task)
    if not groups:
        err(f"no entries{' for benchmark ' + repr(benchmark) if benchmark else ''}{' with task ' + repr(task) if task else ''}")
        raise typer.Exit(code=1)
    cols = parse_names(columns, "--columns", "model,hit@5,g2")
    console = stdout_console()
    if not console.is_terminal:  # piped: no terminal width to respect
        console.width = max(console.width, 160)
    for gi, (label, rows) in enumerate(groups):  # one ranking per benchmark
        with _names("--sort"):
            rows = render.sort_rows(rows, sort, descending=not ascending)
        with _names("--columns"):
            if markdown:
                text = render.to_markdown(rows, cols, notes=True)  # what g2..g5+ and drop mean, under the table
                if len(groups) > 1:
                    text = f"### {label}\n\n{text}" + ("\n" if gi + 1 < len(groups) else "")
                print(text)
                continue
            on = f" on {label}" if len(groups) > 1 else ""
            title = f"MRBench leaderboard{on}: {task or 'macro average'}, sorted by {sort}"
            shown = cols or [c for c in render.TERMINAL_COLUMNS if c in rows[0]]
            table = render.rich_table(rows, shown, title=title, caption="\n".join(render.column_notes(shown)) or None)
        console.print(table)


@leaderboard_app.command("render")
@handle_errors(interrupted="each page is written whole or not at all; re-run the same command")
def render_cmd(
    leaderboard: Annotated[Optional[Path], typer.Option("--leaderboard", "-l", help=_LB_HELP)] = None,
    html: Annotated[Optional[Path], typer.Option("--html", help="Write the self-contained HTML page to this .html (or .htm) file.")] = None,
    markdown: Annotated[Optional[Path], typer.Option("--markdown", help="Write a Markdown table (macro scores) to this .md (or .markdown) file.")] = None,
    benchmark: Annotated[Optional[str], typer.Option("--benchmark", "-b", help="Only this benchmark.")] = None,
) -> None:
    """Render the leaderboard as a static HTML page (sortable table, per-grain and coarse→fine charts) and/or Markdown."""
    from mrbench.errors import MrbenchError
    from mrbench.leaderboard import render
    from mrbench.leaderboard.store import load_leaderboard

    if html is None and markdown is None:
        raise MrbenchError("nothing to render: pass --html PAGE.html and/or --markdown TABLE.md")
    path = _lb_path(leaderboard)
    lb = load_leaderboard(path)
    with _names(path):  # an unknown --benchmark: nothing is written
        page = render.to_html(lb, benchmark=benchmark) if html is not None else ""
        groups = render.rows_by_benchmark(lb, benchmark=benchmark) if markdown is not None else []
    for option, page_path in (("--html", html), ("--markdown", markdown)):  # both, before either is written
        if page_path is not None:
            _check_page(option, page_path)
    if html is not None:
        _write_page("--html", html, page)
    if markdown is not None:  # one table per benchmark (a heading each when there are several)
        tables = ([render.to_markdown(render.sort_rows(rows, "hit@5"), notes=True) for _, rows in groups]
                  or [render.to_markdown([])])
        if len(groups) > 1:
            tables = [f"### {label}\n\n{t}" for (label, _), t in zip(groups, tables)]
        _write_page("--markdown", markdown, "\n\n".join(tables) + "\n")


@leaderboard_app.command("add-benchmark")
@handle_errors(interrupted=_LB_WRITE_HINT)
def add_benchmark_cmd(
    benchmark: Annotated[str, typer.Argument(help="Built-in benchmark name or benchmark directory to accept submissions for.")],
    leaderboard: Annotated[Optional[Path], typer.Option("--leaderboard", "-l", help=_LB_HELP)] = None,
) -> None:
    """Register a benchmark (by its fingerprint) so results on it can be submitted; creates the file if missing."""
    from mrbench.leaderboard.store import add_benchmark

    rec, added = add_benchmark(_lb_path(leaderboard), benchmark)
    state = "added" if added else "already listed:"
    print(f"{state} {rec['name']} v{rec['version']} ({rec['fingerprint']}) in {_lb_path(leaderboard)}")
