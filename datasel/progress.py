"""Progress bars for long steps and the one-table summary each step ends with."""

from __future__ import annotations

import sys

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.progress import Progress as RichProgress
from rich.table import Table

console = Console(stderr=True)


class Progress:
    """Rows done / total with rows/s and ETA; silent with `quiet` or when stderr is no terminal
    (cron), where a single line per step is printed instead."""

    def __init__(self, label: str, total: int | None, quiet: bool = False):
        self.label, self.total, self.quiet = label, total, quiet
        self.live = not quiet and sys.stderr.isatty()
        self.bar = None

    def __enter__(self):
        if self.live:
            self.bar = RichProgress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TaskProgressColumn(),
                TextColumn("{task.fields[rate]}"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=console,
                transient=True,
            )
            self.bar.__enter__()
            self.task = self.bar.add_task(self.label, total=self.total, rate="")
        return self

    def advance(self, rows: int) -> None:
        if self.bar is not None:
            self.bar.advance(self.task, rows)
            t = self.bar.tasks[0]
            if t.elapsed:
                self.bar.update(self.task, rate=f"{t.completed / t.elapsed:,.0f} rows/s")

    def status(self, what: str) -> None:
        if self.bar is not None:
            self.bar.update(self.task, description=f"{self.label}: {what}")

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.__exit__(*exc)


def summary_table(manifest: dict) -> Table:
    from datasel.report import headline

    table = Table(
        title=f"{manifest['stage']}: {manifest['seconds']:.1f} s",
        title_justify="left",
        caption=headline(manifest) or None,
        caption_justify="left",
    )
    table.add_column("rows")
    table.add_column("count", justify="right")
    table.add_column("share", justify="right")
    n = max(1, manifest["rows_in"])
    table.add_row("in", f"{manifest['rows_in']:,}", "100.0%")
    table.add_row("kept", f"{manifest['kept']:,}", f"{100 * manifest['kept'] / n:.1f}%")
    for reason, count in manifest["removed"].items():
        table.add_row(f"removed: {reason}", f"{count:,}", f"{100 * count / n:.1f}%")
    for reason, count in (manifest.get("skipped") or {}).items():
        table.add_row(f"skipped: {reason}", f"{count:,}", f"{100 * count / n:.1f}%")
    return table


def print_summary(manifest: dict) -> None:
    console.print(summary_table(manifest))
