"""Shared CLI plumbing: one-line errors instead of tracebacks, JSON options, consoles."""

from __future__ import annotations

import functools
import json
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


def stdout_console():
    from rich.console import Console

    return Console()
