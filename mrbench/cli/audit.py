"""``mrbench audit``: a blind (text-only) baseline against multimodal encoders."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from mrbench.cli.common import check_writable_file, handle_errors, parse_json_kwargs


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
    from mrbench.errors import MrbenchError
    from mrbench.report.progress import NullReporter, RichReporter

    kw = parse_json_kwargs(encoder_kwargs)
    if any(not isinstance(v, dict) for v in kw.values()):
        raise MrbenchError("--encoder-kwargs: expected {encoder name: {kwargs}}, e.g. '{\"contrastive-tiny\": {\"batch_size\": 64}}'")
    if output is not None and output.is_dir():
        raise MrbenchError(f"--output {output}: is a directory; give a JSON file path such as {output / 'audit.json'}")
    if output is not None:
        check_writable_file(output)  # before the audit's encoding, not after
    console = stdout_console()
    res = audit(benchmark, blind=blind, against=list(against), ks=k, threshold=threshold, cache=cache,
                progress=NullReporter() if quiet else RichReporter(), encoder_kwargs=kw)
    console.print(audit_table(res))
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


def audit_table(res: Any):
    """Rows: task × grain count (one "all" row for tasks whose queries have no text). Columns per k:
    blind R@k, each multimodal R@k, and blind / best. Flagged rows are yellow."""
    from rich.table import Table

    t = res.table
    ks = res.settings["ks"]
    labels = res.against_labels
    table = Table(
        title=f"blind audit of {res.benchmark['name']}: {res.blind['label']} (text only) vs {', '.join(labels)} — R@K = hit@k",
        caption=f"ratio = blind / best multimodal; yellow = blind ≥ {res.settings['threshold']:g} × best; "
        "n = scored queries",
    )
    table.add_column("task", style="bold")
    table.add_column("grains")
    table.add_column("n", justify="right")
    for kk in ks:
        table.add_column(f"blind R@{kk}", justify="right")
        for lb in labels:
            table.add_column(f"{lb} R@{kk}", justify="right")
        table.add_column(f"ratio@{kk}", justify="right")
    table.add_column("note")
    cells = t.drop_duplicates(["task", "grain_count"])[["task", "grain_count"]].itertuples(index=False)
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
        vals: list[str] = []
        for kk in ks:
            r = sub.loc[kk]
            vals.append(_fmt(r["blind"]))
            vals.extend(_fmt(r[lb]) for lb in labels)
            vals.append(_fmt(r["ratio"]))
        flagged = [int(kk) for kk in ks if bool(sub.loc[kk, "flag"])]
        if no_text:
            note = "blind model sees no query text"
        elif flagged:
            note = "close to multimodal at k=" + ",".join(map(str, flagged))
        else:
            note = ", ".join(sorted(s for s in statuses if s != "compared"))
        table.add_row(task, gc, str(int(sub["n_queries"].iloc[0])), *vals, note,
                      style="yellow" if flagged else ("dim" if no_text else None))
    return table
