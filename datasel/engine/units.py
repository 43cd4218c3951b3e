"""The work of one unit: input unit `i` becomes output shard `i`, in one of three phases.

    map     a stage without `select`: map every batch, write the final shards
    stage   a stage with `select`: map every batch into a staged shard and side arrays
    apply   after `select`: split the staged shard into kept and removed rows by its decision

Each phase streams batches through one loop (`_write_parts`) and ends by writing the unit's
counts as its marker: a unit whose marker exists is done, and a resumed run skips it.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from datasel.bad_rows import count as count_skipped
from datasel.bad_rows import skipped_table
from datasel.errors import DataselError
from datasel.io import ShardWriter, Unit, read_table, read_unit, write_json, write_table
from datasel.progress import unit_meter
from datasel.stage import Context, Decider, Decision, MapResult, Stage, Staged, count_texts
from datasel.step_folder import StepFolder

PhaseKind = Literal["map", "stage", "apply"]


@dataclass(frozen=True)
class Phase:
    """One phase of a step, done unit by unit: what a worker needs for any of its units."""

    kind: PhaseKind
    stage: Stage
    ctx: Context
    folder: StepFolder
    units: list[Unit]
    batch_rows: int

    @property
    def maps(self) -> bool:
        """Whether its units run `stage.map` (and so may load the stage's model)."""
        return self.kind != "apply"

    def marker(self, i: int) -> Path:
        """Unit `i`'s counts: written last, so the unit is done when it exists."""
        return self.ctx.staging.marker(i) if self.kind == "stage" else self.folder.done(i)

    def rows_read(self, i: int, counts: dict) -> int:
        """Input rows of a finished unit (pick counts candidates in `rows_in`)."""
        unit = self.units[i]
        return unit.rows if unit.rows >= 0 else counts["rows_in"]


def do_unit(phase: Phase, i: int) -> dict:
    """Do unit `i` of `phase`, write its marker and return its counts."""
    work = {"map": _map, "stage": _stage, "apply": _apply}[phase.kind]
    counts = work(phase, i)
    write_json(counts, phase.marker(i))
    return counts


def kill_point(name: str) -> None:
    """Tests set DATASEL_KILL_AT to SIGKILL a real run at a chosen point, then resume it
    (DATASEL_KILL_SIGNAL=SIGINT for a Ctrl-C instead)."""
    if os.environ.get("DATASEL_KILL_AT") == name:
        import signal

        os.kill(os.getpid(), getattr(signal, os.environ.get("DATASEL_KILL_SIGNAL", "SIGKILL")))


# ---------------------------------------------------------------------------- the phases
def _map(phase: Phase, i: int) -> dict:
    """Map every batch and write the final shards directly."""
    folder, mapped = phase.folder, _Mapped(phase, i)
    n_kept, reasons = _write_parts(
        mapped.parts(), ShardWriter(folder.shard(i)), ShardWriter(folder.removed_shard(i))
    )
    mapped.write_skipped(folder.skipped_shard(i))
    return {
        "rows_in": mapped.rows_in + len(mapped.skipped),
        "kept": n_kept,
        "removed": dict(reasons),
        "skipped": count_skipped(mapped.skipped),
        "texts": dict(mapped.texts),
    }


def _stage(phase: Phase, i: int) -> dict:
    """Map every batch into a staged shard plus side arrays, for `select`."""
    staging, mapped = phase.ctx.staging, _Mapped(phase, i)
    n, reasons = _write_parts(
        mapped.parts(narrow=not phase.stage.map_adds_columns),
        ShardWriter(staging.shard(i), compression="lz4"),
        ShardWriter(staging.removed(i), compression="lz4"),
    )
    for name, parts in mapped.arrays.items():
        _save_npy(np.concatenate(parts), staging.array(name, i))
    mapped.write_skipped(staging.skipped(i))
    return {
        "rows_in": n,
        "map_rows_in": mapped.rows_in + len(mapped.skipped),
        "map_removed": dict(reasons),
        "skipped": count_skipped(mapped.skipped),
        "texts": dict(mapped.texts),
    }


def _apply(phase: Phase, i: int) -> dict:
    """Split one staged shard into kept and removed rows by the saved decision, streaming."""
    folder, staging = phase.folder, phase.ctx.staging
    if phase.stage.map_adds_columns:
        batches = pq.ParquetFile(staging.shard(i)).iter_batches(phase.batch_rows)
    else:  # the staged shard is narrow: take the rows from the input again
        batches = read_unit(phase.units[i], phase.ctx.columns, phase.batch_rows)
    removed_out = ShardWriter(folder.removed_shard(i))
    if staging.removed(i).exists():  # rows that map set aside come first
        removed_out.write(read_table(staging.removed(i)))
    staged = staging.counts(i)
    if staging.skipped(i).exists():
        write_table(read_table(staging.skipped(i)), folder.skipped_shard(i))
    n_kept, reasons = _write_parts(
        _decided(batches, read_table(folder.decision(i)), i),
        ShardWriter(folder.shard(i)),
        removed_out,
    )
    return {
        "rows_in": staged["map_rows_in"],
        "kept": n_kept,
        "removed": dict(Counter(staged["map_removed"]) + reasons),
        "skipped": staged.get("skipped", {}),
        "texts": staged.get("texts", {}),
    }


# ---------------------------------------------------------------------------- the one loop
Part = tuple[pa.Table | pa.RecordBatch, pa.Table | None]  # kept rows, removed rows or None


def _write_parts(
    parts: Iterable[Part], kept_out: ShardWriter, removed_out: ShardWriter
) -> tuple[int, Counter]:
    """Stream each part's kept and removed rows into their shards; return the rows kept and
    the removed rows by reason. A unit with no kept rows still gets its (empty) shard."""
    reasons, schema = Counter(), None
    for kept, removed in parts:
        schema = kept.schema
        if kept.num_rows:
            kept_out.write(kept)
        if removed is not None and removed.num_rows:
            removed_out.write(removed)
            reasons.update(removed.column("reason").to_pylist())
    n_kept = kept_out.close(schema)
    if removed_out.writer is not None:
        removed_out.close()
    return n_kept, reasons


class _Mapped:
    """A unit's batches through `stage.map`, counting what was read on the way."""

    def __init__(self, phase: Phase, i: int):
        self.phase, self.i = phase, i
        self.rows_in, self.texts, self.skipped = 0, Counter(), []
        self.arrays: dict[str, list[np.ndarray]] = {}

    def parts(self, narrow: bool = False) -> Iterator[Part]:
        """(kept, removed) per batch; `narrow`: kept holds only what `select` reads back."""
        stage, ctx = self.phase.stage, self.phase.ctx
        for batch in self._metered():
            result = self._map_batch(batch)
            result = result if isinstance(result, MapResult) else MapResult(result)
            self.rows_in += batch.num_rows if result.rows_in is None else result.rows_in
            self.texts.update(_texts_read(batch, result, ctx))
            for name, arr in (result.arrays or {}).items():
                self.arrays.setdefault(name, []).append(arr)
            kept = result.kept
            if narrow:  # apply re-reads the input
                kept = kept.select(["id", *stage.narrow_columns(ctx)])
            yield kept, result.removed

    def _map_batch(self, batch: pa.RecordBatch) -> MapResult | pa.RecordBatch:
        """`stage.map` of one batch; its one-line errors name the input file (the stage sees
        only rows: a column missing from a later file, a bad value in one)."""
        try:
            return self.phase.stage.map(batch, self.phase.ctx)
        except DataselError as e:
            path = str(self.phase.units[self.i].path)
            if type(e) is not DataselError or path in str(e):  # a missing extra names no file
                raise
            raise DataselError(f"{path}: {e}") from None

    def _metered(self) -> Iterator[pa.RecordBatch]:
        """The unit's batches, each counted into the progress tally once the loop body (the
        map) has run on it; a test can kill the run after a unit's first batch (`batch:<i>`)."""
        phase, i = self.phase, self.i
        batches = read_unit(phase.units[i], phase.ctx.columns, phase.batch_rows, self.skipped)
        with unit_meter(i) as meter:
            for k, batch in enumerate(batches):
                meter.start_batch(batch.num_rows)
                yield batch
                meter.end_batch()
                if k == 0:
                    kill_point(f"batch:{i}")

    def write_skipped(self, path: Path) -> None:
        """The unit's skipped input lines, in line order."""
        if self.skipped:
            write_table(skipped_table(self.phase.units[self.i].path, self.skipped), path)


def _texts_read(batch: pa.RecordBatch, result: MapResult, ctx: Context) -> dict[str, int]:
    """Null and empty texts of one batch, as the stage counted them or in the text column."""
    if result.texts is not None:
        return result.texts
    if ctx.columns.text and ctx.columns.text in batch.schema.names:
        return count_texts(batch.column(ctx.columns.text))
    return {}


def _save_npy(arr: np.ndarray, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp.npy")
    np.save(tmp, arr)
    os.replace(tmp, path)


# ---------------------------------------------------------------------------- select's decision
def save_decision(decision: Decision, staged: Staged, folder: StepFolder) -> None:
    """Select's decision, cut into one file per unit for `apply`."""
    n = staged.total
    if len(decision.keep) != n or len(decision.reason) != n:
        raise RuntimeError(f"select returned {len(decision.keep)} decisions for {n} rows")
    for i in range(len(staged.rows)):  # one unit at a time: no Arrow copy of every row's reason
        lo, hi = int(staged.offsets[i]), int(staged.offsets[i + 1])
        write_table(_decision_table(decision, lo, hi), folder.decision(i))


def save_unit_decision(decider: Decider, rows: int, folder: StepFolder, i: int) -> None:
    """Unit `i`'s decision, made by `decider` in this (worker) process and saved for `apply`."""
    decision = decider.decide(i, rows)
    if len(decision.keep) != rows or len(decision.reason) != rows:
        raise RuntimeError(f"select decided {len(decision.keep)} rows of unit {i}, not {rows}")
    write_table(_decision_table(decision, 0, rows), folder.decision(i))
    kill_point(f"decide:{i}")


def _decision_table(decision: Decision, lo: int, hi: int) -> pa.Table:
    """Rows [lo, hi) of a decision as the table `apply` reads."""
    cols = {
        "keep": pa.array(decision.keep[lo:hi], pa.bool_()),
        "reason": pa.array(decision.reason[lo:hi], pa.string()),
    }
    for name, arr in decision.removed_columns.items():
        cols["removed:" + name] = arr.slice(lo, hi - lo)
    for name, arr in decision.kept_columns.items():
        cols["kept:" + name] = arr.slice(lo, hi - lo)
    return pa.table(cols)


def _decided(batches: Iterable[pa.RecordBatch], decision: pa.Table, i: int) -> Iterator[Part]:
    """(kept, removed) per staged batch by its rows of the decision, with the decision's
    columns for each side added (a removed row gets its reason)."""
    offset = 0
    for batch in batches:
        table = pa.Table.from_batches([batch])
        table = table.drop_columns([c for c in table.column_names if c.startswith("_")])
        d = decision.slice(offset, batch.num_rows)
        offset += batch.num_rows
        keep = d.column("keep")
        every = pc.all(keep).as_py()  # the common case: no copy of the rows
        kept = _with_decision_columns(
            table if every else table.filter(keep), d if every else d.filter(keep), "kept:"
        )
        drop = pc.invert(keep)
        removed = None
        if pc.any(drop).as_py():
            gone = d.filter(drop)
            removed = table.filter(drop).append_column("reason", gone.column("reason"))
            removed = _with_decision_columns(removed, gone, "removed:")
        yield kept, removed
    if offset != decision.num_rows:
        raise RuntimeError(f"shard {i}: {offset} rows read back, {decision.num_rows} decided")


def _with_decision_columns(table: pa.Table, decision: pa.Table, prefix: str) -> pa.Table:
    for name in decision.column_names:
        if name.startswith(prefix):
            table = table.append_column(name[len(prefix) :], decision.column(name))
    return table
