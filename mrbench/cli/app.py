"""The ``mrbench`` command line. Each command lives in its own module and imports heavy libraries
(torch, faiss, pandas) inside its body, so ``mrbench --help`` stays fast."""

from __future__ import annotations

import typer

from mrbench.cli import build as _build
from mrbench.cli import audit as _audit
from mrbench.cli import build_hf as _build_hf
from mrbench.cli import encode as _encode
from mrbench.cli import evaluate as _evaluate
from mrbench.cli import leaderboard as _leaderboard
from mrbench.cli import listing as _listing
from mrbench.cli.common import reflow_help

app = typer.Typer(
    name="mrbench",
    help=(
        "Multi-grain multimodal retrieval benchmark.\n\n"
        "Evaluate any encoder on MRBench-style query sets and see, next to the standard Recall@K, how it "
        "does per grain (entity, attribute, action/state, relation) and how much its embedding moves "
        "when one grain is dropped.\n\n"
        "Start with:  mrbench evaluate --encoder random --encoder oracle --output results/first-look"
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
    rich_markup_mode="rich",
)

build_app = typer.Typer(help="Build a benchmark directory.", no_args_is_help=True)
build_app.command("synth")(_build.synth)
build_app.command("mbeir")(_build.mbeir)
build_app.command("hf")(_build_hf.hf)
app.add_typer(build_app, name="build")
app.command("evaluate")(_evaluate.evaluate)
app.command("encode")(_encode.encode)
app.command("export")(_build.export)
app.command("audit")(_audit.audit_cmd)
app.command("submit")(_leaderboard.submit)
app.command("verify")(_leaderboard.verify)
app.add_typer(_leaderboard.leaderboard_app, name="leaderboard")
app.command("check-encoder")(_listing.check_encoder)
app.command("encoders")(_listing.encoders)
app.command("benchmarks")(_listing.benchmarks)
app.command("info")(_listing.info)


@app.command("version")
def version() -> None:
    """Print the mrbench version."""
    import mrbench

    print(mrbench.__version__)


reflow_help(app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
