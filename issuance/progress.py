"""A progress bar for batch personalisation (issue #5): a ``progress(done, total, label)`` callback on rich."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

ProgressCallback = Callable[[int, int, str], None]


@contextmanager
def progress_bar(total: int, description: str, console: Console | None = None) -> Iterator[ProgressCallback]:
    """A bar of ``total`` steps on stderr (or ``console``); yields the callback the batch services call."""
    bar = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[label]}"),
        TimeRemainingColumn(),
        console=console or Console(stderr=True),
        transient=False,
    )
    task = bar.add_task(description, total=total, label="")

    def advance(done: int, of: int, label: str) -> None:
        bar.update(task, completed=done, total=of, label=label)

    with bar:
        yield advance
