"""Shared CLI plumbing: one-line errors instead of tracebacks, JSON options, consoles."""

from __future__ import annotations

import functools
import inspect
import json
import re
import sys
from typing import Any, Callable

import typer


def err(message: str) -> None:
    """Print one line to stderr (no markup interpretation)."""
    print(message, file=sys.stderr, flush=True)


def handle_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn :class:`MrbenchError` into ``error: <message>`` and a non-zero exit; Ctrl-C into a hint."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from mrbench.errors import MrbenchError

        try:
            return fn(*args, **kwargs)
        except MrbenchError as e:
            err(f"error: {e}")
            raise typer.Exit(code=e.exit_code) from None
        except KeyboardInterrupt:
            err("interrupted: finished batches are in the embedding cache; re-run the same command to resume")
            raise typer.Exit(code=130) from None

    return wrapper


def reflow(text: str) -> str:
    """Help text with the hard line breaks inside each paragraph removed, so the terminal wraps it.

    Typer's rich help keeps single newlines of a docstring, which leaves ragged lines on any terminal
    narrower than the source (80 columns). Paragraphs (separated by a blank line) stay apart; a
    paragraph whose lines are indented or start with ``-``, ``*`` or ``\\b`` is kept as written.
    """
    paragraphs = re.split(r"\n\s*\n", inspect.cleandoc(text))
    out = []
    for para in paragraphs:
        lines = para.splitlines()
        if any(ln.startswith((" ", "\t", "-", "*", "\b")) for ln in lines):
            out.append(para)
        else:
            out.append(" ".join(ln.strip() for ln in lines))
    return "\n\n".join(out)


def reflow_help(app: typer.Typer) -> typer.Typer:
    """Apply :func:`reflow` to the help of every command and sub-group of ``app`` (recursively)."""
    for cmd in app.registered_commands:
        doc = cmd.help or inspect.getdoc(cmd.callback)
        if doc:
            cmd.help = reflow(doc)
    for group in app.registered_groups:
        if group.typer_instance is not None:
            reflow_help(group.typer_instance)
    return app


def parse_json_kwargs(value: str | None, option: str = "--encoder-kwargs",
                      example: str = "'{\"dim\": 128}'") -> dict[str, Any]:
    """A JSON-object option value as a dict (``{}`` when empty); one-line errors naming ``option``."""
    from mrbench.errors import MrbenchError

    if not value:
        return {}
    try:
        obj = json.loads(value)
    except json.JSONDecodeError as e:
        raise MrbenchError(f"{option} {value!r}: not valid JSON ({e.msg}); example: {example}") from None
    if not isinstance(obj, dict):
        raise MrbenchError(f"{option} {value!r}: expected a JSON object such as {example}")
    return obj


def parse_names(value: str | None, option: str = "--tasks", example: str = "t2i,i2t") -> list[str] | None:
    """A comma-separated option value as a list of names (spaces and empty entries dropped), or
    ``None`` when not given (all); one-line error naming ``option`` when it holds no name."""
    from mrbench.errors import MrbenchError

    if value is None:
        return None
    names = [n.strip() for n in value.split(",") if n.strip()]
    if not names:
        raise MrbenchError(f"{option} {value!r}: no name in it; pass comma-separated names such as {example}")
    return names


def stdout_console():
    from rich.console import Console

    return Console()
