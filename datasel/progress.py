"""Progress bars for long steps and the one-table summary each step ends with.

Rows are counted inside units as they are mapped, not only when a unit ends: the process that
maps unit `i` writes the rows (and model tokens) done in it to slot `i` of a `Tally`, an array in
shared memory that forked workers inherit, and the parent's bar reads the tally a few times a
second. A model's batch loop reports how far it is into the current batch with `batch_done`.
"""

from __future__ import annotations

import multiprocessing as mp
import sys
import threading
import time
from contextlib import contextmanager

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
from rich.text import Text

console = Console(stderr=True)


POLL_SECONDS = 0.25  # how often the bar reads the tally
LOG_SECONDS = 60.0  # without a terminal: one progress line this often (cron logs)


class Tally:
    """Rows and tokens done per unit, in shared memory: each unit's slot is written only by the
    process mapping it (plain stores, no lock) and summed by the parent."""

    def __init__(self, units: int):
        self.array = mp.get_context("fork").RawArray("d", 2 * max(1, units))

    def set(self, i: int, rows: float, tokens: float | None = None) -> None:
        self.array[2 * i] = rows
        if tokens is not None:
            self.array[2 * i + 1] = tokens

    def totals(self) -> tuple[float, float]:
        a = self.array[:]  # one copy; a slot being written is read old or new, never torn
        return sum(a[0::2]), sum(a[1::2])


_tally: Tally | None = None  # the tally this process writes to (parent, or a forked worker)
_meter: _Meter | None = None  # the unit this process is mapping now


def use_tally(tally: Tally | None) -> None:
    """Make units mapped in this process report to `tally`; worker processes forked after this
    (the engine's pool is forked inside the step's `Progress`) inherit it."""
    global _tally
    _tally = tally


class _Meter:
    def __init__(self, tally: Tally, i: int):
        self.tally, self.i = tally, i
        self.rows = self.batch = 0  # rows of finished batches; rows in the current one
        self.tokens = 0

    def start_batch(self, rows: int) -> None:
        self.batch = rows

    def step(self, fraction: float, tokens: int) -> None:
        self.tokens += tokens
        self.tally.set(self.i, self.rows + self.batch * min(1.0, fraction), self.tokens)

    def end_batch(self) -> None:
        self.rows, self.batch = self.rows + self.batch, 0
        self.tally.set(self.i, self.rows, self.tokens)


@contextmanager
def unit_meter(i: int):
    """Count the rows of unit `i` into this process's tally while mapping it (a no-op meter
    where there is none, as on a Ray worker)."""
    global _meter
    _meter = _Meter(_tally, i) if _tally is not None else None
    try:
        yield _meter or _NO_METER
    finally:
        _meter = None


class _NoMeter:
    def start_batch(self, rows: int) -> None:
        pass

    def end_batch(self) -> None:
        pass


_NO_METER = _NoMeter()


def batch_done(fraction: float, tokens: int = 0) -> None:
    """Called by a model's batch loop after each forward pass: `fraction` of the texts of the
    current `map` call are done, and `tokens` more tokens were read. Costs a few stores; does
    nothing outside a run."""
    if _meter is not None:
        _meter.step(fraction, tokens)


class Progress:
    """Rows done / total with rows/s (and tokens/s for models) and ETA, moving while units run;
    silent with `quiet`; when stderr is no terminal (cron), a line every LOG_SECONDS instead."""

    def __init__(self, label: str, total: int | None, quiet: bool = False, units: int = 1):
        self.label, self.total, self.quiet = label, total, quiet
        self.live = not quiet and sys.stderr.isatty()
        self.bar = None
        self.tally = Tally(units)
        self.base = 0.0  # rows done before this run (resumed units)
        self.t0 = time.monotonic()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

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
        if not self.quiet:
            self._thread = threading.Thread(target=self._poll, daemon=True)
            self._thread.start()
        use_tally(self.tally)  # units mapped in this process
        return self

    def done(self, i: int, rows: int) -> None:
        """Unit `i` finished with `rows` rows (exact, whatever its meter last said)."""
        self.tally.set(i, rows)
        self.update()

    def resumed(self) -> None:
        """The finished units of an earlier attempt are counted: rates start from here."""
        self.base, self.t0 = self.tally.totals()[0], time.monotonic()
        if self.bar is not None:
            self.bar.reset(self.task, completed=self.base)

    def rates(self) -> tuple[float, float, float]:
        """(rows done, rows/s, tokens/s) of this run."""
        rows, tokens = self.tally.totals()
        dt = max(time.monotonic() - self.t0, 1e-9)
        return rows, (rows - self.base) / dt, tokens / dt

    def line(self) -> str:
        rows, per_s, tok_s = self.rates()
        done = f"{rows:,.0f}" + (
            f"/{self.total:,} rows ({100 * rows / max(1, self.total):.0f}%)"
            if self.total
            else " rows"
        )
        rate = f"{_rate(per_s)} rows/s" + (f", {tok_s:,.0f} tokens/s" if tok_s else "")
        eta = ""
        if self.total and per_s > 0:
            eta = f", ETA {hms((self.total - rows) / per_s)}"
        return f"{self.label}: {done}, {rate}{eta}"

    def update(self) -> None:
        if self.bar is None:
            return
        rows, per_s, tok_s = self.rates()
        rate = f"{_rate(per_s)} rows/s" + (f" {tok_s:,.0f} tok/s" if tok_s else "")
        self.bar.update(self.task, completed=rows, rate=rate)

    def _poll(self) -> None:
        logged = time.monotonic()
        while not self._stop.wait(POLL_SECONDS):
            self.update()
            if self.bar is None and time.monotonic() - logged >= LOG_SECONDS:
                console.print(self.line(), highlight=False)
                logged = time.monotonic()

    def status(self, what: str) -> None:
        if self.bar is not None:
            self.bar.update(self.task, description=f"{self.label}: {what}")

    def __exit__(self, *exc):
        use_tally(None)
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self.bar is not None:
            self.bar.__exit__(*exc)


def hms(seconds: float) -> str:
    """An ETA as hh:mm:ss; hours past a day keep counting (strftime's %H would wrap to 0)."""
    m, s = divmod(int(round(seconds)), 60)
    return f"{m // 60:02d}:{m % 60:02d}:{s:02d}"


def _rate(per_s: float) -> str:
    return f"{per_s:.1f}" if per_s < 10 else f"{per_s:,.0f}"


def summary_table(manifest: dict) -> Table:
    from datasel.report import headline

    table = Table(
        title=f"{manifest['stage']}: {manifest['seconds']:.1f} s",
        title_justify="left",
        caption=Text(headline(manifest)) or None,  # Text: no markup, no :emoji: codes
        caption_justify="left",
    )
    table.add_column("rows")
    table.add_column("count", justify="right")
    table.add_column("share", justify="right")
    n = max(1, manifest["rows_in"])
    table.add_row("in", f"{manifest['rows_in']:,}", "100.0%")
    table.add_row("kept", f"{manifest['kept']:,}", f"{100 * manifest['kept'] / n:.1f}%")
    for reason, count in manifest["removed"].items():
        # Text, not markup: "filter:top:s=1" would show rich's :top: emoji, "[x]" would vanish
        table.add_row(Text(f"removed: {reason}"), f"{count:,}", f"{100 * count / n:.1f}%")
    for reason, count in (manifest.get("skipped") or {}).items():
        table.add_row(Text(f"skipped: {reason}"), f"{count:,}", f"{100 * count / n:.1f}%")
    return table


def print_summary(manifest: dict) -> None:
    console.print(summary_table(manifest))
