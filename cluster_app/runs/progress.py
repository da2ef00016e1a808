"""The progress bar over a run's rounds (``rich``), off when ``progress=False``."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

if TYPE_CHECKING:
    from cluster_app.runs.spec import RoundRecord, RunSpec

__all__ = ["RoundBar", "progress_bar"]


class RoundBar:
    """One bar: rounds done (of the run's total, unless it runs on a time budget), the last
    round's mean agent loss and how many agents trained it."""

    def __init__(self, progress: Progress, spec: RunSpec, first: int) -> None:
        self.progress = progress
        total = spec.rounds if spec.max_seconds is None else None
        self.task = progress.add_task(
            "training", total=total, completed=first, loss=float("nan"), agents=0
        )

    def advance(self, rec: RoundRecord) -> None:
        self.progress.update(self.task, advance=1, loss=rec.loss, agents=len(rec.workers))


@contextmanager
def progress_bar(enabled: bool, spec: RunSpec, first: int) -> Iterator[RoundBar]:
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.3f}"),
        TextColumn("agents {task.fields[agents]}"),
        TimeElapsedColumn(),
        disable=not enabled,
    ) as progress:
        yield RoundBar(progress, spec, first)
