"""Keep rows by thresholds and top-k rules on any numeric column."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from datasel.errors import DataselError
from datasel.io import Columns, read_table
from datasel.stage import Context, Decision, MapResult, Stage, Staged, param, register

RULES = ("min", "max", "top", "top_fraction", "top_chars")


def _parse(rule: str, items: list[str]) -> list[tuple[str, float]]:
    out = []
    for item in items:
        col, sep, value = str(item).partition("=")
        try:
            if not sep or not col:
                raise ValueError
            out.append((col.strip(), float(value)))
        except ValueError:
            flag = "--" + rule.replace("_", "-")
            raise ValueError(
                f"{flag} {item!r}: expected COLUMN=NUMBER, e.g. {flag} ppl_bpb=1.5"
            ) from None
    return out


@register
@dataclass(kw_only=True)
class Filter(Stage):
    """Keep rows by rules on numeric columns; every removed row names the rule that removed it.

    Rules apply in this order, each to the rows the previous ones kept: --min, --max, --top,
    --top-fraction, --top-chars. Rows whose rule column is missing (null/NaN) are removed.
    --top-chars keeps the highest-scored rows that together hold a fraction of all characters,
    as PreSelect selects (Shum et al., "Predictive Data Selection", 2025).
    """

    name = "filter"
    map_adds_columns = False
    example = "datasel filter scored/ selected/ --max ppl_bpb=1.4 --top-chars preselect_score=0.1"

    min: list[str] = param([], help="keep rows with COLUMN >= VALUE (COLUMN=VALUE, repeatable)")
    max: list[str] = param([], help="keep rows with COLUMN <= VALUE (COLUMN=VALUE, repeatable)")
    top: list[str] = param([], help="keep the N highest rows by COLUMN (COLUMN=N)")
    top_fraction: list[str] = param(
        [], help="keep the highest fraction F of rows by COLUMN (COLUMN=F)"
    )
    top_chars: list[str] = param(
        [], help="keep the highest rows by COLUMN holding a fraction F of all characters (COLUMN=F)"
    )

    def __post_init__(self):
        for kind in RULES:  # Filter(max="ppl_bpb=2") is a rule, not a list of characters
            if isinstance(getattr(self, kind), str):
                setattr(self, kind, [getattr(self, kind)])
        self.rules = [
            (kind, col, v) for kind in RULES for col, v in _parse(kind, getattr(self, kind))
        ]
        if not self.rules:
            raise ValueError(
                "filter needs at least one rule: --min, --max, --top, --top-fraction or --top-chars"
            )
        for kind, col, v in self.rules:
            if kind in ("top_fraction", "top_chars") and not 0 < v <= 1:
                raise ValueError(
                    f"--{kind.replace('_', '-')} {col}={v}: the fraction must be in (0, 1]"
                )
            if kind == "top" and (v < 0 or v != int(v)):
                raise ValueError(f"--top {col}={v}: N must be a whole number >= 0")

    def params(self) -> dict:
        return {kind: getattr(self, kind) for kind in RULES}

    def reads(self, columns: Columns) -> dict[str, str]:
        rules = {col: kind.replace("_", "-") for kind, col, _ in reversed(self.rules)}
        return super().reads(columns) | rules

    def numeric_reads(self) -> set[str]:
        return {col for _, col, _ in self.rules}

    def narrow_columns(self, ctx: Context) -> list[str]:
        return sorted({col for _, col, _ in self.rules})

    def map(self, batch: pa.RecordBatch, ctx: Context) -> MapResult:
        for col in self.narrow_columns(ctx):
            if col not in batch.schema.names:
                have = ", ".join(batch.schema.names)
                raise DataselError(f"filter: no column '{col}'; columns are: {have}")
        chars = pc.utf8_length(pc.fill_null(batch.column(ctx.columns.text), ""))
        return MapResult(batch, arrays={"chars": chars.to_numpy().astype(np.int64)})

    def select(self, staged: Staged, ctx: Context) -> Decision:
        # Shard by shard: the driver holds a keep flag and a reason a row, never a whole column
        # (the top rules find their cut by streaming passes, see ops.topk.streaming_cut).
        n = staged.total
        alive = np.ones(n, dtype=bool)
        reason = np.full(n, None, dtype=object)
        shards = [
            (i, slice(int(staged.offsets[i]), int(staged.offsets[i + 1])))
            for i, rows in enumerate(staged.rows)
            if rows
        ]
        stats = {}
        for kind, col, v in self.rules:
            values = _numeric(staged, col)
            if kind == "min":
                label = f"filter:{col}<{v:g}"
                ctx.cutoff(col, v, f"min {v:g}")
            elif kind == "max":
                label = f"filter:{col}>{v:g}"
                ctx.cutoff(col, v, f"max {v:g}")
            for i, rows in shards:
                x, live = values(i), alive[rows]  # a view: updating `live` updates `alive`
                missing = np.isnan(x) & live
                reason[rows][missing] = f"filter:{col} missing"
                live &= ~missing
                if kind in ("min", "max"):
                    out = live & ((x < v) if kind == "min" else (x > v))
                    reason[rows][out] = label
                    live &= ~out
            if kind not in ("min", "max"):
                cut = _top(kind, v, staged, shards, values, alive, reason, col)
                if cut is not None:
                    stats[f"{kind}:{col}:threshold"] = cut
                    ctx.cutoff(col, cut, f"{kind.replace('_', '-')} {v:g}: ≥ {cut:.4g}")
        ctx.stats.update(stats)
        return Decision(keep=alive, reason=reason)


def _top(kind, v, staged, shards, values, alive, reason, col) -> float | None:
    """Keep the highest alive rows by `col` (ties by position) under a top rule, removing the
    other alive rows; return the value of the last row kept (None when none is)."""
    from datasel.ops.topk import order_keys, streaming_cut, take_tied

    weighted = kind == "top_chars"

    def weights(i, live):
        return np.asarray(staged.array("chars", i))[live].astype(np.int64) if weighted else None

    def parts():
        for i, rows in shards:
            live = alive[rows]
            yield order_keys(values(i)[live]), weights(i, live)

    n_live = int(alive.sum())
    if kind == "top":
        target = min(int(v), n_live)  # --top N over the rows left keeps them all
    elif kind == "top_fraction":
        target = min(int(round(v * n_live)), n_live)
    else:
        total = sum(int(np.asarray(staged.array("chars", i))[alive[r]].sum()) for i, r in shards)
        target = v * total
    label = f"filter:{kind.replace('_', '-')}:{col}={v:g}"
    if n_live == 0 or (not weighted and target == 0):
        reason[alive] = label
        alive[:] = False
        return None
    key, running = streaming_cut(parts, target, weighted)
    key, reached, cut = np.uint64(key), False, None
    for i, rows in shards:
        live = alive[rows]
        at = np.flatnonzero(live)
        x = values(i)[live]
        keys = order_keys(x)
        keep = keys > key
        if not reached:
            tied = np.flatnonzero(keys == key)
            w = weights(i, live)[tied] if weighted else np.ones(len(tied), dtype=np.int64)
            taken, running, reached = take_tied(w, running, target)
            keep[tied[:taken]] = True
            if reached:
                cut = float(x[tied[taken - 1]])
        out = at[~keep]
        reason[rows][out] = label
        live[out] = False
    return cut


def _numeric(staged: Staged, col: str):
    """A reader of `col` as float64 (NaN where null), one shard at a time."""
    import pyarrow.parquet as pq

    types = {
        pq.ParquetFile(staged.shard(i)).schema_arrow.field(col).type
        for i, rows in enumerate(staged.rows)
        if rows
    }
    known = {t for t in types if not pa.types.is_null(t)} or types
    if len(known) > 1:  # as Staged.column says it
        raise DataselError(
            f"column '{col}' holds {' and '.join(sorted(map(str, known)))} in different "
            "parts of the input"
        )
    (typ,) = known
    if not (pa.types.is_integer(typ) or pa.types.is_floating(typ) or pa.types.is_boolean(typ)):
        raise DataselError(f"filter: column '{col}' holds {typ}, not numbers")

    def read(i: int) -> np.ndarray:
        arr = read_table(staged.shard(i), columns=[col]).column(0)
        return arr.cast(pa.float64()).to_numpy(zero_copy_only=False).astype(np.float64)

    return read
