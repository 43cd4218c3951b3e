"""`datasel inspect`: what a dataset holds, at a glance."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from rich.console import Console
from rich.table import Table

from datasel.errors import DataselError
from datasel.io import Columns, plan_units, read_unit
from datasel.progress import summary_table
from datasel.step_folder import StepFolder

WIDE = 6  # columns shown side by side (and by default); more are shown one row at a time


def show(path: str, rows: int = 3, columns: str | None = None) -> None:
    """Print the row count, the columns, `rows` example rows and the manifest of a dataset.

    `columns`: None (the first 6), "all", or a comma list of names (e.g. "id,reason,duplicate_of").
    Any dataset works: no text column is needed.
    """
    console = Console()
    units = plan_units(path)
    total = 0
    for u in units:
        if u.fmt == "parquet":
            meta = pq.ParquetFile(u.path).metadata
            total += sum(meta.row_group(g).num_rows for g in range(u.start, u.stop))
        else:
            total = -1
    files = sorted({u.path for u in units})
    console.print(
        f"[bold]{path}[/]: {len(files)} file(s), {len(units)} shard(s), "
        + (f"{total:,} rows" if total >= 0 else "rows unknown until read")
    )
    first = _first_batch(units)
    if first is not None:
        schema = first.schema
        console.print("columns: " + ", ".join(f"{f.name} ({f.type})" for f in schema))
        names = _pick_columns(schema.names, columns)
        if len(names) < len(schema.names):
            console.print(
                f"[dim]showing {len(names)} of {len(schema.names)} columns; "
                "--columns all shows every one[/]"
            )
        examples = first.select(names).slice(0, rows).to_pylist()
        if len(names) <= WIDE:
            table = Table(show_lines=True)
            for name in names:
                table.add_column(name, overflow="fold", max_width=60)
            for row in examples:
                table.add_row(*[_short(row[n]) for n in names])
            console.print(table)
        else:
            for i, row in enumerate(examples):
                table = Table(title=f"row {i}", title_justify="left", show_header=False)
                table.add_column("column", style="bold")
                table.add_column("value", overflow="fold")
                for name in names:
                    table.add_row(name, _short(row[name]))
                console.print(table)
    _show_manifest(console, Path(path))


def _first_batch(units) -> pa.RecordBatch | None:
    """The first rows of the first unit that has any, read as they are (no text column needed)."""
    for unit in units:
        for batch in read_unit(unit, Columns(text=None)):
            return batch
    return None


def _pick_columns(names: list[str], columns: str | None) -> list[str]:
    if columns is None:
        return names[:WIDE]
    if columns.strip() == "all":
        return names
    wanted = [c.strip() for c in columns.split(",") if c.strip()]
    missing = [c for c in wanted if c not in names]
    if missing or not wanted:
        raise DataselError(
            f"--columns: no column '{missing[0] if missing else columns}'; "
            f"columns are: {', '.join(names)} (or: all)"
        )
    return wanted


def _show_manifest(console: Console, path: Path) -> None:
    """The manifest of a step folder; for its `_removed/` folder, the step's."""
    step = StepFolder(path)
    if not step.finished() and StepFolder(path.parent).removed == path:
        step = StepFolder(path.parent)
        if step.finished():
            console.print(f"[dim]the rows removed by step {path.parent}:[/]")
    if not step.finished():
        return
    m = step.read_manifest()
    console.print(summary_table(m))
    console.print(f"parameters: {json.dumps(m['params'])}")
    if m.get("stats"):
        console.print(f"statistics: {json.dumps(m['stats'])}")


def _short(value, width: int = 200) -> str:
    text = str(value)
    return text if len(text) <= width else text[:width] + f"… ({len(text):,} chars)"
