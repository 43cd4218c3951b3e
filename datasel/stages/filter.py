"""Keep rows by thresholds and top-k rules on any numeric column."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from datasel.errors import DataselError
from datasel.io import Columns, read_table
from datasel.stage import Context, Decision, MapResult, Stage, Staged, param, register, rows_of

RANKED = ("top", "top_fraction", "top_chars", "bottom", "bottom_fraction", "bottom_chars")
RULES = ("min", "max", *RANKED)  # --within applies to the ranking rules
TOP_GROUPS = 50  # per-group thresholds kept in the manifest for the largest groups only
REPORTED_GROUPS = 6  # ... and drawn on the report's histogram


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
    --top-fraction, --top-chars, then the --bottom rules (the same, lowest first). Rows whose
    rule column is missing (null/NaN) are removed. --top-chars keeps the highest-scored rows
    that together hold a fraction of all characters, as PreSelect selects (Shum et al.,
    "Predictive Data Selection", 2025).

    --within COLUMN applies the ranking rules inside each group of rows sharing a value of
    COLUMN (a domain, a language, a `cluster` from `diversify`), as CCNet cuts perplexity at
    quantiles per language (Wenzek et al. 2019): a global cut keeps what the scorer finds easy,
    whole domains at a time (a general LM's perplexity drops verse and code first). Rows
    whose COLUMN is null go to _removed/ as `filter:COLUMN missing`.
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
    bottom: list[str] = param([], help="keep the N lowest rows by COLUMN (COLUMN=N)")
    bottom_fraction: list[str] = param(
        [], help="keep the lowest fraction F of rows by COLUMN (COLUMN=F)"
    )
    bottom_chars: list[str] = param(
        [], help="keep the lowest rows by COLUMN holding a fraction F of all characters (COLUMN=F)"
    )
    within: str | None = param(
        None, help="apply the top/bottom rules inside each group of equal values of this column"
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
                "filter needs at least one rule: --min, --max, --top, --top-fraction, "
                "--top-chars or a --bottom rule"
            )
        for kind, col, v in self.rules:
            flag = "--" + kind.replace("_", "-")
            if kind.endswith(("_fraction", "_chars")) and not 0 < v <= 1:
                raise ValueError(f"{flag} {col}={v}: the fraction must be in (0, 1]")
            if kind in ("top", "bottom") and (v < 0 or v != int(v)):
                raise ValueError(f"{flag} {col}={v}: N must be a whole number >= 0")
        if self.within is not None and not any(kind in RANKED for kind, _, _ in self.rules):
            raise ValueError("--within applies to the --top and --bottom rules: give one")

    def params(self) -> dict:
        return {kind: getattr(self, kind) for kind in RULES} | {"within": self.within}

    def reads(self, columns: Columns) -> dict[str, str]:
        rules = {col: kind.replace("_", "-") for kind, col, _ in reversed(self.rules)}
        return super().reads(columns) | rules | ({self.within: "within"} if self.within else {})

    def numeric_reads(self) -> set[str]:
        return {col for _, col, _ in self.rules}

    def narrow_columns(self, ctx: Context) -> list[str]:
        return sorted({col for _, col, _ in self.rules} | ({self.within} if self.within else set()))

    def map(self, batch: pa.RecordBatch, ctx: Context) -> MapResult:
        for col in self.narrow_columns(ctx):
            if col not in batch.schema.names:
                have = ", ".join(batch.schema.names)
                raise DataselError(f"filter: no column '{col}'; columns are: {have}")
        chars = pc.utf8_length(pc.fill_null(batch.column(ctx.columns.text), ""))
        return MapResult(batch, arrays={"chars": chars.to_numpy().astype(np.int64)})

    def select(self, staged: Staged, ctx: Context) -> Decision:
        # Shard by shard: the driver holds a keep flag and a reason a row, never a whole column
        # (the top rules find their cut by streaming passes, see ops.topk.grouped_cut).
        n = staged.total
        alive = np.ones(n, dtype=bool)
        reason = np.full(n, None, dtype=object)
        shards = [
            (i, slice(int(staged.offsets[i]), int(staged.offsets[i + 1])))
            for i, rows in enumerate(staged.rows)
            if rows
        ]
        stats = {}
        groups = names = None
        if self.within is not None:
            groups, names = _group_ids(staged, self.within)
            missing = groups < 0
            reason[missing] = f"filter:{self.within} missing"
            alive &= ~missing
            stats["within"] = {"column": self.within, "groups": len(names)}
            group_rows = np.bincount(groups[~missing], minlength=len(names))
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
            if kind in RANKED:
                cut = _top(kind, v, staged, shards, values, alive, reason, col, groups)
                flag, sign = kind.replace("_", "-"), "≤" if kind.startswith("bottom") else "≥"
                if isinstance(cut, dict):  # --within: the cut of each of the largest groups
                    largest = sorted(cut, key=lambda grp: -group_rows[grp])[:TOP_GROUPS]
                    stats[f"{kind}:{col}:threshold"] = {str(names[g]): cut[g] for g in largest}
                    for g in largest[:REPORTED_GROUPS]:
                        where = f"{self.within}={names[g]}"
                        ctx.cutoff(col, cut[g], f"{flag} {v:g} in {where}: {sign} {cut[g]:.4g}")
                elif cut is not None:
                    stats[f"{kind}:{col}:threshold"] = cut
                    ctx.cutoff(col, cut, f"{flag} {v:g}: {sign} {cut:.4g}")
        ctx.stats.update(stats)
        return Decision(keep=alive, reason=reason)


def _top(kind, v, staged, shards, values, alive, reason, col, groups=None):
    """Keep the highest (--top rules) or lowest (--bottom) alive rows by `col`, ties by
    position, inside each group of `groups` (row -> group index; all one group when None),
    removing the other alive rows. Returns the value of each group's last row kept: a float (or
    None when none is) without groups, else {group index: value}."""
    from datasel.ops.topk import grouped_cut, order_keys, take_tied

    rule, _, unit = kind.partition("_")
    sign = -1.0 if rule == "bottom" else 1.0
    weighted = unit == "chars"
    n_groups = 1 if groups is None else int(groups.max(initial=-1)) + 1

    def group_of(rows, live):
        return np.zeros(int(live.sum()), np.intp) if groups is None else groups[rows][live]

    def weights(i, live):
        return np.asarray(staged.array("chars", i))[live].astype(np.int64) if weighted else None

    rows_in = np.zeros(n_groups, np.int64)
    chars_in = np.zeros(n_groups, np.float64)
    for i, rows in shards:
        live = alive[rows]
        g = group_of(rows, live)
        rows_in += np.bincount(g, minlength=n_groups)
        if weighted:
            chars_in += np.bincount(g, weights=weights(i, live), minlength=n_groups)
    if unit == "fraction":
        target = np.minimum(rows_of(v, rows_in), rows_in).astype(np.float64)
    elif weighted:
        target = v * chars_in
    else:  # --top N over the rows left keeps them all
        target = np.minimum(int(v), rows_in).astype(np.float64)
    ranked = (rows_in > 0) & (weighted | (target > 0))  # the groups that keep rows
    slot = np.full(n_groups, -1, np.intp)
    slot[ranked] = np.arange(int(ranked.sum()))
    target = target[ranked]

    def parts():
        for i, rows in shards:
            live = alive[rows]
            g = slot[group_of(rows, live)]
            on = g >= 0
            w = weights(i, live)
            yield order_keys(sign * values(i)[live][on]), (w[on] if weighted else None), g[on]

    cut, running = grouped_cut(parts, target, weighted) if ranked.any() else ((), ())
    reached = np.zeros(len(target), bool)
    last = np.full(len(target), np.nan)
    label = f"filter:{kind.replace('_', '-')}:{col}={v:g}"
    for i, rows in shards:
        live = alive[rows]
        at = np.flatnonzero(live)
        x = values(i)[live]
        g = slot[group_of(rows, live)]
        keep = np.zeros(len(x), bool)
        if len(target):
            on = g >= 0
            keys = order_keys(sign * x)
            cut_of = np.asarray(cut)[np.where(on, g, 0)]
            keep = on & (keys > cut_of)
            tied = np.flatnonzero(on & (keys == cut_of))
            for r in np.unique(g[tied]):
                if reached[r]:
                    continue
                idx = tied[g[tied] == r]
                w = weights(i, live)[idx] if weighted else np.ones(len(idx), np.int64)
                taken, running[r], reached[r] = take_tied(w, running[r], target[r])
                keep[idx[:taken]] = True
                if reached[r]:
                    last[r] = float(x[idx[taken - 1]])
        out = at[~keep]
        reason[rows][out] = label
        live[out] = False
    kept = zip(np.flatnonzero(ranked), last, strict=True)  # a group's slot is its rank here
    cuts = {int(grp): float(value) for grp, value in kept if not np.isnan(value)}
    return cuts.get(0) if groups is None else cuts


def _group_ids(staged: Staged, col: str) -> tuple[np.ndarray, list]:
    """Every row's group under --within: an index into the distinct values of `col` (-1 where
    it is null), and those values."""
    ids = np.full(staged.total, -1, np.int32)
    index: dict = {}
    for i, rows in enumerate(staged.rows):
        if not rows:
            continue
        column = read_table(staged.shard(i), columns=[col]).column(0)
        try:
            encoded = pc.dictionary_encode(column.combine_chunks())
        except pa.ArrowNotImplementedError:
            raise DataselError(
                f"filter --within: column '{col}' holds {column.type}: no groups of equal values"
            ) from None
        local = [index.setdefault(value, len(index)) for value in encoded.dictionary.to_pylist()]
        codes = pc.fill_null(encoded.indices, -1).to_numpy(zero_copy_only=False)
        start = int(staged.offsets[i])
        ids[start : start + rows] = np.asarray(local + [-1], np.int32)[codes]
    return ids, list(index)


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
    numbers = pa.types.is_integer(typ) or pa.types.is_floating(typ) or pa.types.is_boolean(typ)
    if not (numbers or pa.types.is_null(typ)):  # null everywhere: every row's value is missing
        raise DataselError(f"filter: column '{col}' holds {typ}, not numbers")

    def read(i: int) -> np.ndarray:
        arr = read_table(staged.shard(i), columns=[col]).column(0)
        # unchecked: an int64 beyond 2**53 (a time in ns, a hash) rounds to the nearest double
        return arr.cast(pa.float64(), safe=False).to_numpy(zero_copy_only=False).astype(np.float64)

    return read
