"""Keep rows by thresholds and top-k rules on any numeric column."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from datasel.errors import DataselError
from datasel.io import Columns
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
        n = staged.total
        alive = np.ones(n, dtype=bool)
        reason = np.full(n, None, dtype=object)
        chars = staged.concat("chars", np.int64)
        stats = {}
        for kind, col, v in self.rules:
            values = _numeric(staged, col)
            missing = np.isnan(values) & alive
            reason[missing] = f"filter:{col} missing"
            alive &= ~missing
            if kind == "min":
                out, label = alive & (values < v), f"filter:{col}<{v:g}"
                ctx.cutoff(col, v, f"min {v:g}")
            elif kind == "max":
                out, label = alive & (values > v), f"filter:{col}>{v:g}"
                ctx.cutoff(col, v, f"max {v:g}")
            else:
                idx = np.flatnonzero(alive)
                order = idx[np.lexsort((idx, -values[idx]))]  # highest first, ties by position
                if kind == "top":
                    k = int(v)
                elif kind == "top_fraction":
                    k = int(round(v * len(idx)))
                else:
                    cum = np.cumsum(chars[order])
                    k = int(np.searchsorted(cum, v * (cum[-1] if len(cum) else 0), side="left")) + 1
                k = min(k, len(order))  # --top N over the rows left keeps them all
                keep = np.zeros(n, dtype=bool)
                keep[order[:k]] = True
                out, label = alive & ~keep, f"filter:{kind.replace('_', '-')}:{col}={v:g}"
                if k:
                    cut = float(values[order[k - 1]])
                    stats[f"{kind}:{col}:threshold"] = cut
                    ctx.cutoff(col, cut, f"{kind.replace('_', '-')} {v:g}: ≥ {cut:.4g}")
            reason[out] = label
            alive &= ~out
        ctx.stats.update(stats)
        return Decision(keep=alive, reason=reason)


def _numeric(staged: Staged, col: str) -> np.ndarray:
    arr = staged.column(col)
    if not (
        pa.types.is_integer(arr.type)
        or pa.types.is_floating(arr.type)
        or pa.types.is_boolean(arr.type)
    ):
        raise DataselError(f"filter: column '{col}' holds {arr.type}, not numbers")
    return arr.cast(pa.float64()).to_numpy(zero_copy_only=False).astype(np.float64)
