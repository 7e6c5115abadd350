"""Shared CLI plumbing: one-line errors instead of tracebacks, JSON options, consoles."""

from __future__ import annotations

import errno
import functools
import inspect
import json
import os
import re
import sys
from pathlib import Path
from typing import Any, Callable

import typer


def sigterm_as_ctrl_c(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Run ``fn`` with SIGTERM handled as Ctrl-C (``KeyboardInterrupt`` in the main thread), so that a
    job scheduler's or ``kill``'s stop cleans up (a --stream-pool run's memory-mapped pool) and says
    how to resume; only where SIGTERM still has its default action, restored afterwards. A process
    forked meanwhile (decode workers) keeps the default action."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        import signal
        import threading

        if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
            return fn(*args, **kwargs)
        owner = os.getpid()

        def on_sigterm(signum, frame):
            if os.getpid() != owner:  # a forked child: die as it would have
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                os.kill(os.getpid(), signal.SIGTERM)
                return
            raise KeyboardInterrupt()

        signal.signal(signal.SIGTERM, on_sigterm)
        try:
            return fn(*args, **kwargs)
        finally:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)

    return wrapper


def err(message: str) -> None:
    """Print one line to stderr (no markup interpretation)."""
    print(message, file=sys.stderr, flush=True)


INTERRUPTED_HINT = "finished batches are in the embedding cache; re-run the same command to resume"
"""What ``handle_errors`` prints after ``interrupted:`` on Ctrl-C unless a command says otherwise."""
READ_ONLY_HINT = "nothing was changed; re-run the same command"
"""Ctrl-C hint of the commands that only read."""


def resume_hint(cache: bool, *, written: bool) -> str:
    """Ctrl-C hint of a command that encodes through the embedding cache (``evaluate``, ``audit``):
    what was kept, and the re-run that resumes (``--overwrite`` once results are ``written``)."""
    again = "re-run the same command with --overwrite" if written else "re-run the same command"
    if not cache:
        return f"nothing was kept (--no-cache); {again} to start again"
    return f"finished batches are in the embedding cache; {again} to resume"

_OS_HINTS = {
    errno.EEXIST: "a file stands where a directory is needed; choose another path",
    errno.ENOTDIR: "a part of the path is a file, not a directory; choose another path",
    errno.EACCES: "permission denied; choose a path you can write to",
    errno.EPERM: "operation not permitted; choose a path you can write to",
    errno.EROFS: "read-only file system; choose a path you can write to",
    errno.ENOSPC: "no space left on the device; free some space or choose another path",
    errno.ENOENT: "no such file or directory; check the path",
    errno.EISDIR: "is a directory, not a file; name a file",
}


def os_error_line(e: OSError) -> str:
    """One line for a file-system error: the path, what went wrong, what to do."""
    hint = _OS_HINTS.get(e.errno) if e.errno is not None else None
    if hint is None:
        hint = f"{e.strerror or type(e).__name__}; check the path and free space"
    return f"{e.filename}: {hint}" if e.filename is not None else f"{e.strerror or e}; check the paths given"


def check_writable_file(path: Path, option: str = "--output") -> None:
    """Refuse, before any work, an output file path that cannot be created (see
    :func:`mrbench.data.io.check_writable_path`)."""
    from mrbench.data.io import check_writable_path

    check_writable_path(path, option)


BROKEN_PIPE_EXIT = 141
"""Exit status when stdout's reader went away (``mrbench info x | head -1``): what a process killed by
SIGPIPE reports in a shell, as ``cat`` or ``grep`` would; nothing is printed."""


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so that the interpreter's last flush of what is still buffered does
    not fail a second time (the recipe of Python's signal documentation)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass


def handle_errors(fn: Callable[..., Any] | None = None, *, interrupted: str = INTERRUPTED_HINT) -> Any:
    """Decorator: :class:`MrbenchError` and file-system errors (:class:`OSError`) become one
    ``error: <message>`` line and a non-zero exit; Ctrl-C, and SIGTERM (:func:`sigterm_as_ctrl_c`),
    print ``interrupted: <interrupted>`` (a staged output is removed on the way, as on Ctrl-C).

    Use as ``@handle_errors`` or ``@handle_errors(interrupted="...")`` (a command whose re-run does
    not resume from the embedding cache says what does); a command that knows better at run time
    re-raises ``KeyboardInterrupt("<hint>")``. With ``MRBENCH_TRACEBACK=1`` in the environment an
    :class:`MrbenchError` propagates with its traceback (and its cause) instead."""

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        run = sigterm_as_ctrl_c(fn)  # a scheduler's or kill's stop cleans up as Ctrl-C does

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            from mrbench.errors import MrbenchError

            try:
                out = run(*args, **kwargs)
                sys.stdout.flush()  # (a reader gone away is found here, not at exit)
                return out
            except MrbenchError as e:
                if os.environ.get("MRBENCH_TRACEBACK"):  # where it came from (an encoder's own error is its __cause__)
                    raise
                err(f"error: {e}")
                raise typer.Exit(code=e.exit_code) from None
            except KeyboardInterrupt as e:  # a command may re-raise it with the hint that fits the run
                hint = e.args[0] if e.args and isinstance(e.args[0], str) else interrupted
                err(f"interrupted: {hint}")
                raise typer.Exit(code=130) from None
            except BrokenPipeError:  # stdout piped into a reader that stopped early (| head): quiet, as cat does
                _silence_stdout()
                raise typer.Exit(code=BROKEN_PIPE_EXIT) from None
            except OSError as e:  # an output path that cannot be written, a disk that is full ...
                err(f"error: {os_error_line(e)}")
                raise typer.Exit(code=1) from None

        return wrapper

    return decorate(fn) if fn is not None else decorate


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
    ``None`` when not given (all); one-line error naming ``option`` when it holds no name or a name
    twice (a repeated task would be evaluated twice, a repeated column shown twice)."""
    from mrbench.errors import MrbenchError

    if value is None:
        return None
    names = [n.strip() for n in value.split(",") if n.strip()]
    if not names:
        raise MrbenchError(f"{option} {value!r}: no name in it; pass comma-separated names such as {example}")
    seen: set[str] = set()
    for n in names:
        if n in seen:
            raise MrbenchError(f"{option} {value!r}: {n!r} is given twice; give each once")
        seen.add(n)
    return names


def stdout_console():
    """A rich console on stdout whose reader going away (``| head``) ends the command as
    :func:`handle_errors` does for plain prints (quiet, exit :data:`BROKEN_PIPE_EXIT`; rich alone
    would exit 1)."""
    from rich.console import Console

    class _Console(Console):
        def on_broken_pipe(self) -> None:
            self.quiet = True
            _silence_stdout()
            raise SystemExit(BROKEN_PIPE_EXIT)

    return _Console()
