"""One progress display for all workers of a model: done / total, rate, ETA, failures (stderr)."""

from __future__ import annotations

import time
from dataclasses import dataclass

from egoqa.store.db import Database
from egoqa.store.read import job_states


@dataclass
class Counts:
    done: int
    failed: int
    total: int

    @property
    def finished(self) -> int:
        return self.done + self.failed


def counts(db: Database, engine: str | None) -> Counts:
    """Jobs of the engine now: the total grows while a run works (recursive turns add jobs)."""
    rows = job_states(db, engine)
    done, failed = rows.get("done", 0), rows.get("failed", 0)
    return Counts(done, failed, sum(rows.values()))


class ProgressView:
    """Polls the database; draws a rich progress bar on a terminal, a line every 10 s otherwise
    (and the final count as the display closes)."""

    def __init__(self, db: Database, engine: str | None, label: str | None, console) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )

        self.db, self.engine, self.console = db, engine, console
        self.start = time.time()
        first = counts(db, engine)
        self.base = first.finished
        self.last_line = 0.0
        self.last_text = ""
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"),
            TimeRemainingColumn(),
            TextColumn("{task.fields[failed]}"),
            console=console,
            transient=False,
            disable=not console.is_terminal,
        )
        self.task = self.progress.add_task(
            label or "jobs", total=first.total, completed=first.finished, rate="", failed=""
        )
        self.progress.start()

    def tick(self, final: bool = False) -> Counts:
        c = counts(self.db, self.engine)
        elapsed = max(1e-6, time.time() - self.start)
        rate = (c.finished - self.base) / elapsed
        failed = f"[red]{c.failed} failed" if c.failed else ""
        self.progress.update(
            self.task, total=c.total, completed=c.finished, rate=f"{rate:.2f} jobs/s", failed=failed
        )
        text = f"{c.finished}/{c.total} jobs ({c.failed} failed)"
        due = time.time() - self.last_line > 10 or (final and text != self.last_text)
        if not self.console.is_terminal and due:
            self.last_line, self.last_text = time.time(), text
            self.console.print(f"{text}, {rate:.2f} jobs/s")
        return c

    def close(self) -> Counts:
        """The last count, shown (in a log too, where the count changed since its last line)."""
        c = self.tick(final=True)
        self.progress.stop()
        return c
