"""`apply`: a stage run in memory, on an Arrow table or a Hugging Face `datasets.Dataset`."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from datasel.engine.step import run
from datasel.io import read_table
from datasel.stage import Stage
from datasel.step_folder import StepFolder


def apply(stage: Stage, data, *, removed: bool = False, **options):
    """Run a stage in memory on an Arrow table or a Hugging Face `datasets.Dataset` (small data).

    Returns the kept rows as the same type (and the removed rows too with `removed=True`).
    The rows pass through a temporary folder, so the result is exactly what `run` writes.

    Examples
    --------
    >>> import pyarrow as pa, datasel
    >>> table = pa.table({"text": ["a b c", "A  b c", "d e f"]})
    >>> datasel.apply(datasel.Dedup(), table).column("text").to_pylist()
    ['a b c', 'd e f']
    """
    table, back = _to_arrow(data)
    with tempfile.TemporaryDirectory(prefix="datasel-") as tmp:
        src, out = Path(tmp) / "input.parquet", StepFolder(Path(tmp) / "output")
        pq.write_table(table, src)
        run(stage, src, out.path, **{"quiet": True, **options})
        kept = _read_parts(out.shards())
        gone = _read_parts(out.removed_shards())
    return (back(kept), back(gone)) if removed else back(kept)


def _read_parts(files: list[Path]) -> pa.Table | None:
    tables = [read_table(f) for f in files]
    return pa.concat_tables(tables, promote_options="default") if tables else None


def _to_arrow(data):
    if isinstance(data, pa.Table):
        return data, lambda t: t
    if hasattr(data, "with_format") and hasattr(data, "data"):  # datasets.Dataset
        import datasets

        return data.with_format("arrow")[:], lambda t: None if t is None else datasets.Dataset(t)
    raise TypeError(f"apply takes a pyarrow.Table or a datasets.Dataset, not {type(data).__name__}")
