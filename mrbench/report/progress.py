"""Progress reporting: a rich progress bar per stage, or nothing.

The pipeline talks to a :class:`Reporter`; the CLI passes a :class:`RichReporter`, the Python API
uses one when ``progress=True`` and :class:`NullReporter` otherwise.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator


class NullReporter:
    """Reports nothing."""

    @contextlib.contextmanager
    def stage(self, description: str, total: int | None) -> Iterator[Callable[[int], None]]:
        yield lambda n=1: None

    def log(self, message: str) -> None:  # noqa: D102
        pass

    def builder_callback(self) -> Callable[[str, int, int], None] | None:
        return None


class RichReporter(NullReporter):
    """One rich progress bar per stage (items/s and ETA), on stderr so stdout stays parseable."""

    def __init__(self, console=None) -> None:
        from rich.console import Console

        self.console = console or Console(stderr=True)

    @contextlib.contextmanager
    def stage(self, description: str, total: int | None) -> Iterator[Callable[[int], None]]:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            SpinnerColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        with Progress(
            SpinnerColumn(),
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=self.console,
            transient=False,
        ) as prog:
            tid = prog.add_task(description, total=total)
            yield lambda n=1: prog.advance(tid, n)
            if total is not None:
                prog.update(tid, completed=total)

    def log(self, message: str) -> None:
        self.console.print(message)

    def builder_callback(self) -> Callable[[str, int, int], None]:
        """A ``progress(stage, done, total)`` callback for builders, printing a line per stage."""
        last: dict[str, int] = {}

        def cb(stage: str, done: int, total: int) -> None:
            if stage not in last:
                self.console.print(f"[dim]building: {stage} ({total})[/dim]")
            last[stage] = done

        return cb
