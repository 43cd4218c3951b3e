"""`datasel inspect`: what a dataset holds, at a glance."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
from rich.console import Console
from rich.table import Table

from datasel.io import Columns, plan_units, read_unit
from datasel.progress import summary_table


def show(path: str, rows: int = 3) -> None:
    console = Console()
    units = plan_units(path)
    total = 0
    schema = None
    for u in units:
        if u.fmt == "parquet":
            meta = pq.ParquetFile(u.path).metadata
            schema = schema or meta.schema.to_arrow_schema()
            total += sum(meta.row_group(g).num_rows for g in range(u.start, u.stop))
        else:
            total = -1
    files = sorted({u.path for u in units})
    console.print(
        f"[bold]{path}[/]: {len(files)} file(s), {len(units)} shard(s), "
        + (f"{total:,} rows" if total >= 0 else "rows unknown until read")
    )
    first = next(iter(read_unit(units[0], _any_columns(units[0]))), None)
    if first is not None:
        schema = first.schema
        console.print("columns: " + ", ".join(f"{f.name} ({f.type})" for f in schema))
        table = Table(show_lines=True)
        for name in schema.names[:6]:
            table.add_column(name, overflow="fold", max_width=60)
        for row in first.slice(0, rows).to_pylist():
            table.add_row(*[_short(row[n]) for n in schema.names[:6]])
        console.print(table)
    manifest = Path(path) / "_manifest.json"
    if manifest.exists():
        m = json.loads(manifest.read_text())
        console.print(summary_table(m))
        console.print(f"parameters: {json.dumps(m['params'])}")
        if m.get("stats"):
            console.print(f"statistics: {json.dumps(m['stats'])}")


def _any_columns(unit) -> Columns:
    """Read without requiring a particular text column: use the first string column."""
    import pyarrow as pa

    if unit.fmt == "parquet":
        schema = pq.ParquetFile(unit.path).schema_arrow
        text = next(
            (
                f.name
                for f in schema
                if pa.types.is_string(f.type) or pa.types.is_large_string(f.type)
            ),
            "text",
        )
        return Columns(text=text)
    return Columns()


def _short(value, width: int = 200) -> str:
    text = str(value)
    return text if len(text) <= width else text[:width] + f"… ({len(text):,} chars)"
