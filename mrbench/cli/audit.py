"""``mrbench audit``: a blind (text-only) baseline against multimodal encoders."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from mrbench.cli.common import check_writable_file, handle_errors, parse_json_kwargs, resume_hint


@handle_errors
def audit_cmd(
    benchmark: Annotated[
        str, typer.Option("--benchmark", "-b", help="Built-in benchmark name (see 'mrbench benchmarks') or a benchmark directory.")
    ] = "mrbench-synth",
    blind: Annotated[
        str, typer.Option("--blind", help="Text-only encoder used as the blind baseline (it encodes an item without text as \"\"), "
                          "or a results directory from 'mrbench evaluate --output'.")
    ] = "minilm",
    against: Annotated[
        list[str], typer.Option("--against", help="Multimodal encoder name or results directory to compare with. Repeat for several.")
    ] = ["contrastive-tiny"],
    k: Annotated[str, typer.Option("--k", help="Cutoffs for hit@k (R@K).")] = "1,5",
    threshold: Annotated[
        float, typer.Option("--threshold", help="Warn where blind hit@k ≥ threshold × the best multimodal hit@k.")
    ] = 0.8,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Write the audit as JSON to this file.")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing --output file.")] = False,
    encoder_kwargs: Annotated[
        Optional[str], typer.Option("--encoder-kwargs", help="JSON object {encoder name: {constructor kwargs}}, "
                                    "e.g. '{\"contrastive-tiny\": {\"batch_size\": 64}}'.")
    ] = None,
    cache: Annotated[bool, typer.Option("--cache/--no-cache", help="Reuse and fill the on-disk embedding cache.")] = True,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
) -> None:
    """Audit a benchmark for blind solvability: compare a text-only encoder with multimodal ones per task and grain count.

    If a model that never looks at images scores close to the multimodal models, those queries can
    be answered from text alone and measure little about vision (the SugarCrepe lesson); such cells
    are printed as warnings.
    """
    from mrbench.audit import audit
    from mrbench.cli.common import stdout_console
    from mrbench.errors import MrbenchError, OutputExistsError
    from mrbench.report.progress import NullReporter, RichReporter

    kw = parse_json_kwargs(encoder_kwargs)
    if any(not isinstance(v, dict) for v in kw.values()):
        raise MrbenchError("--encoder-kwargs: expected {encoder name: {kwargs}}, e.g. '{\"contrastive-tiny\": {\"batch_size\": 64}}'")
    if output is not None and output.is_dir():
        raise MrbenchError(f"--output {output}: is a directory; give a JSON file path such as {output / 'audit.json'}")
    if output is not None and output.exists() and not overwrite:
        raise OutputExistsError(f"--output {output}: already exists; pass --overwrite to replace it or choose another path")
    if output is not None:
        check_writable_file(output)  # before the audit's encoding, not after
    console = stdout_console()
    try:
        res = audit(benchmark, blind=blind, against=list(against), ks=k, threshold=threshold, cache=cache,
                    progress=NullReporter() if quiet else RichReporter(), encoder_kwargs=kw)
    except KeyboardInterrupt:  # the default hint (embedding cache) holds only with --cache; --output is written last
        raise KeyboardInterrupt(resume_hint(cache, written=False)) from None
    for table in audit_tables(res):
        console.print(table)
    for note in res.notes:
        console.print(f"note: {note}", highlight=False, markup=False)
    for w in res.warnings:
        console.print(f"warning: {w}", style="yellow", highlight=False, markup=False)
    if output is not None:
        res.save(output)
        console.print(f"audit written to [bold]{output}[/bold]")
    console.print(res.summary_line(), style="bold", highlight=False, markup=False)


def _fmt(v: Any) -> str:
    import math

    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return f"{v:.3f}"


def audit_tables(res: Any) -> list[Any]:
    """One table per k. Rows: task × grain count (one "all" row for tasks whose queries have no
    text). Columns: blind R@k, each multimodal encoder's R@k, and blind / best. Flagged rows are
    yellow."""
    from mrbench.report.tables import label_column, new_table, score_column

    t = res.table
    ks = res.settings["ks"]
    labels = res.against_labels
    cells = [(task, gc) for task, gc in t.drop_duplicates(["task", "grain_count"])[["task", "grain_count"]]
             .itertuples(index=False)]
    tables = []
    for i, kk in enumerate(ks):
        last = i == len(ks) - 1
        table = new_table(
            f"blind audit of {res.benchmark['name']}: {res.blind['label']} (text only) vs {', '.join(labels)} "
            f"— R@{kk} = hit@{kk}",
            f"ratio = blind / best multimodal; yellow = blind ≥ {res.settings['threshold']:g} × best; "
            "n = scored queries" if last else None,
        )
        label_column(table, "task", sorted(set(t["task"])), style="bold")
        label_column(table, "grains")
        score_column(table, "n", max(1, len(str(int(t["n_queries"].max())))) if len(t) else 1)
        score_column(table, f"blind R@{kk}")
        for lb in labels:
            score_column(table, f"{lb} R@{kk}")
        score_column(table, "ratio")
        label_column(table, "note", max_width=12)
        prev = None
        for task, gc in cells:
            sub = t[(t["task"] == task) & (t["grain_count"] == gc)].set_index("k")
            statuses = set(sub["status"])
            no_text = statuses == {"no query text"}
            if no_text and gc != "all":
                continue
            if prev is not None and task != prev:
                table.add_section()
            prev = task
            r = sub.loc[kk]
            flagged = bool(r["flag"])
            if no_text:
                note = "blind model sees no query text"
            elif flagged:
                note = f"close to multimodal at k={kk}"
            else:
                note = "" if r["status"] == "compared" else str(r["status"])
            table.add_row(task, gc, str(int(sub["n_queries"].iloc[0])), _fmt(r["blind"]),
                          *[_fmt(r[lb]) for lb in labels], _fmt(r["ratio"]), note,
                          style="yellow" if flagged else ("dim" if no_text else None))
        tables.append(table)
    return tables
