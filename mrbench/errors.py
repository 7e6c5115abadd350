"""Typed exceptions. Every message is one line that names the culprit and says what to do.

The CLI turns any :class:`MrbenchError` into that single line on stderr and a non-zero exit code,
never a traceback.
"""

from __future__ import annotations


class MrbenchError(Exception):
    """Base class of every error mrbench raises on bad input or bad configuration."""

    exit_code: int = 2


class BenchmarkError(MrbenchError):
    """A benchmark directory or file is missing, corrupt or inconsistent."""


class FingerprintMismatch(BenchmarkError):
    """The content of a benchmark does not hash to the fingerprint its manifest records."""


class UnknownNameError(MrbenchError):
    """An encoder, benchmark or task name is not known."""


class EncoderError(MrbenchError):
    """An encoder is misconfigured or returned invalid embeddings."""


class OutputExistsError(MrbenchError):
    """An output directory already holds results."""


def did_you_mean(name: str, choices: list[str] | tuple[str, ...], n: int = 3) -> str:
    """Return ``" (did you mean 'a', 'b'?)"`` for close matches of ``name``, or ``""``; case is
    ignored in the matching (``'IVF'`` suggests ``'ivf'``), a case-only difference first."""
    import difflib

    choices = list(choices)
    by_lower: dict[str, list[str]] = {}
    for c in choices:
        by_lower.setdefault(c.lower(), []).append(c)
    same = by_lower.get(name.lower(), [])
    near = [c for low in difflib.get_close_matches(name.lower(), list(by_lower), n=n, cutoff=0.5) for c in by_lower[low]]
    close = list(dict.fromkeys(same + near))[:n]
    if not close:
        return ""
    return " (did you mean " + ", ".join(repr(c) for c in close) + "?)"


def write_failure(e: OSError) -> str:
    """Why writing a file failed, for a one-line message naming the user's path (not the temporary
    file the error carries): "a part of the path is a file, not a directory" where the path runs
    through a file, else the system's reason."""
    if isinstance(e, (FileExistsError, NotADirectoryError)):
        return "a part of the path is a file, not a directory"
    return e.strerror or str(e)
