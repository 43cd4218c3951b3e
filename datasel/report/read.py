"""Reading a run or one step for the report: manifests, shards and removed rows, narrowly.

Every file name of a step's output is `StepFolder`'s. What a step added and where it cut come from the facts its manifest
records (`added_columns`, written by the engine; `cutoffs`, by the stage's selection), never from
column or parameter names. A manifest from before those keys still reads: its added columns are
those of its shards that its input lacked, and it has no cut-offs.

Cost stays small on a big run: a column is read alone, from row groups spread over the shards (at
most `MAX_VALUES` values per column and side), and text only for the example rows.
"""

from __future__ import annotations

import math
import os
from collections import Counter
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from datasel.errors import DataselError
from datasel.io import Columns, FileList, added_columns, new_columns, plan_units
from datasel.step_folder import MANIFEST, StepFolder

MAX_VALUES = 200_000  # per column and side (kept / removed): 1.6 MB of float64
MAX_CLUSTER_ROWS = 2_000_000  # group ids read per side to count group sizes
MAX_REASONS = 10  # more distinct reasons are grouped by their part before "="


@dataclass
class Step:
    """One finished step folder: its manifest and its shards."""

    dir: Path
    manifest: dict
    kept: list[Path] = field(init=False)
    removed: list[Path] = field(init=False)
    previous: Step | None = None  # the step whose output this one read, in a pipeline

    def __post_init__(self):
        self.kept = StepFolder(self.dir).shards()
        self.removed = StepFolder(self.dir).removed_shards()

    @property
    def name(self) -> str:
        return self.dir.name

    @property
    def rows_in(self) -> int:
        """Rows into the step: the previous step's rows out when it read them (a step may count
        other units: pick counts candidates, several to a row), else its own count."""
        return self.previous.manifest["kept"] if self.previous else self.manifest["rows_in"]

    @property
    def rows_in_text(self) -> str:
        counted = self.manifest["rows_in"]
        if counted == self.rows_in:
            return f"{counted:,}"
        unit = "candidates" if self.manifest.get("stage") == "pick" else "counted by the step"
        return f"{self.rows_in:,} ({counted:,} {unit})"

    @property
    def text_column(self) -> str:
        return (self.manifest.get("columns") or {}).get("text", "text")

    @property
    def removed_counts(self) -> dict[str, int]:
        return self.manifest.get("removed") or {}

    @cached_property
    def reasons(self) -> dict[str, int]:
        """Removed rows per reason group, most first (see `grouper`)."""
        return grouped(self.removed_counts)

    @cached_property
    def fields(self) -> dict[str, pa.Field]:
        """The columns of the kept and removed rows (the kept rows' type where both have one)."""
        return {f.name: f for s in (schema(self.removed), schema(self.kept)) if s for f in s}

    @cached_property
    def added(self) -> list[pa.Field]:
        """The columns the step added, with their types, in the order it wrote them."""
        names = self.manifest.get("added_columns")
        if names is None:  # a manifest from before the engine recorded them
            names = self._added_by_schema()
        return [self.fields[n] for n in names if n in self.fields]

    def _added_by_schema(self) -> list[str]:
        """The columns of the step's shards that its input lacked: the previous step's shards,
        or the input files the manifest names while they are still there ([] when neither)."""
        outputs = [*self.kept, *self.removed]
        if self.previous is not None:
            before = schema(self.previous.kept)
            return new_columns(before.names, outputs) if before is not None else []
        paths = [p for i in self.manifest.get("inputs") or [] if (p := Path(i["path"])).is_file()]
        ids = (self.manifest.get("columns") or {}).get("id", "id")
        try:
            units = (u for p in paths for u in plan_units(FileList((str(p),), str(p.parent))))
            return added_columns(units, Columns(text=None, id=ids), outputs)
        except (DataselError, OSError, pa.ArrowException):
            return []

    @cached_property
    def cutoffs(self) -> dict[str, list[tuple[float, str]]]:
        """Column -> (value, label) of each numeric cut-off the step's selection applied."""
        return {
            col: [(c["value"], c["label"]) for c in cuts if _number(c["value"]) is not None]
            for col, cuts in (self.manifest.get("cutoffs") or {}).items()
        }

    @cached_property
    def quotas(self) -> dict[str, dict[str, int]]:
        """Group column -> {group value (as text): rows allowed} of a quota per group."""
        return {
            col: {str(k): v for k, v in c["value"].items()}
            for col, cuts in (self.manifest.get("cutoffs") or {}).items()
            for c in cuts
            if isinstance(c["value"], dict)
        }

    def values(self, column: str) -> tuple[tuple, tuple]:
        """(values, rows) of `column` in the kept and in the removed rows, as float64 sampled up
        to `MAX_VALUES` per side (see `sample`)."""
        return sample(self.kept, column, MAX_VALUES), sample(self.removed, column, MAX_VALUES)

    def groups(self, column: str) -> tuple[tuple, tuple]:
        """As `values`, for a group column (e.g. cluster ids): Arrow arrays, up to
        `MAX_CLUSTER_ROWS` per side."""
        cap = MAX_CLUSTER_ROWS
        return sample(self.kept, column, cap, False), sample(self.removed, column, cap, False)

    def first_rows(self, k: int, columns: list[str]) -> list[dict]:
        """The first `k` kept rows, with those of `columns` their shards have."""
        rows: list[dict] = []
        for f in self.kept:
            pf = pq.ParquetFile(f)
            cols = [c for c in dict.fromkeys(columns) if c in pf.schema_arrow.names]
            for batch in pf.iter_batches(batch_size=k, columns=cols):
                rows += batch.to_pylist()[: k - len(rows)]
                break
            if len(rows) >= k:
                break
        return rows

    def removed_examples(self, k: int, columns: list[str]) -> dict[str, list[dict]]:
        """The first `k` removed rows of each reason group: the `reason` column is scanned alone,
        then only the row groups holding the chosen rows are read with their text."""
        group_of = grouper(self.removed_counts)
        want = {g: k for g in self.reasons}
        chosen: dict[str, list[dict]] = {g: [] for g in self.reasons}
        for f in self.removed:
            if not any(want.values()):
                break
            pf = pq.ParquetFile(f)
            if "reason" not in pf.schema_arrow.names:
                continue
            picks: dict[int, list[tuple[int, str]]] = {}  # row group -> (row in it, group)
            for g in range(pf.metadata.num_row_groups):
                if not any(want.values()):
                    break
                reasons = pf.read_row_group(g, columns=["reason"]).column(0).to_pylist()
                for i, r in enumerate(reasons):
                    grp = group_of(str(r))
                    if want.get(grp, 0) > 0:
                        want[grp] -= 1
                        picks.setdefault(g, []).append((i, grp))
            cols = [c for c in dict.fromkeys(columns) if c in pf.schema_arrow.names]
            for g, items in picks.items():
                table = pf.read_row_group(g, columns=cols).take([i for i, _ in items])
                for row, (_, grp) in zip(table.to_pylist(), items, strict=True):
                    chosen[grp].append(row)
        return chosen


def find_steps(path: str | os.PathLike) -> list[Step]:
    """The finished steps under `path`: the folder itself if it holds a manifest, else its
    sub-folders that do (`01-dedup`, `02-filter`, ...), in name order."""
    path = Path(path)
    if StepFolder(path).finished():
        dirs = [path]
    elif path.is_dir():
        dirs = sorted(p for p in path.iterdir() if StepFolder(p).finished())
    else:
        raise DataselError(f"{path}: no such folder")
    if not dirs:
        raise DataselError(
            f"{path}: no {MANIFEST} here or in its sub-folders; is it a datasel output?"
        )
    steps = [Step(d, StepFolder(d).read_manifest()) for d in dirs]
    for before, step in zip(steps, steps[1:], strict=False):
        inputs = [Path(f["path"]).parent for f in step.manifest.get("inputs") or []]
        if inputs and all(p == before.dir.resolve() for p in inputs):
            step.previous = before
    return steps


def schema(files: list[Path]) -> pa.Schema | None:
    """The schema of the first readable of `files`."""
    for f in files:
        try:
            return pq.read_schema(f)
        except (OSError, pa.ArrowException):
            continue
    return None


def sample(files: list[Path], column: str, cap: int, numeric: bool = True):
    """Values of one column from row groups spread evenly over the shards (all of them when
    they hold at most `cap` rows), as float64 numpy (`numeric`) or an Arrow chunked array;
    returned with the number of rows the shards hold."""
    groups = []
    for f in files:
        meta = pq.read_metadata(f)
        if column in meta.schema.to_arrow_schema().names:
            groups += [(f, g, meta.row_group(g).num_rows) for g in range(meta.num_row_groups)]
    total = sum(n for *_, n in groups)
    if total > cap:
        k = max(1, math.ceil(len(groups) * cap / total))
        picks = np.unique(np.linspace(0, len(groups) - 1, k).round().astype(int))
        groups = [groups[i] for i in picks]
    parts, pf, path = [], None, None
    for f, g, _ in groups:
        if path != f:  # one file open at a time
            pf, path = pq.ParquetFile(f), f
        parts += pf.read_row_group(g, columns=[column]).column(0).chunks
    if numeric:
        values = [p.cast(pa.float64()).to_numpy(zero_copy_only=False) for p in parts]
        return (np.concatenate(values) if values else np.zeros(0)), total
    return pa.chunked_array(parts, parts[0].type if parts else pa.null()), total


def is_number(f: pa.Field) -> bool:
    return pa.types.is_floating(f.type) or pa.types.is_integer(f.type)


# ---------------------------------------------------------------- manifest helpers


def grouper(removed: dict[str, int]):
    """Map a reason to its display group: itself when there are few distinct reasons, else the
    part before "=" (`dedup:near_dup_of=<id>` -> `dedup:near_dup_of`), the rarest as "other"."""
    if len(removed) <= MAX_REASONS:
        return lambda r: r
    cut = Counter()
    for r, n in removed.items():
        cut[r.split("=", 1)[0]] += n
    top = {r for r, _ in cut.most_common(MAX_REASONS - 1)} if len(cut) > MAX_REASONS else set(cut)
    return lambda r: r.split("=", 1)[0] if r.split("=", 1)[0] in top else "other"


def grouped(removed: dict[str, int]) -> dict[str, int]:
    group_of, out = grouper(removed), Counter()
    for r, n in removed.items():
        out[group_of(r)] += n
    return dict(out.most_common())


def flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v and len(v) <= 20:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def before_after(stats: dict) -> list[tuple[str, float, float]]:
    """Numeric pairs like `kl_before` / `kl_after` (or `before_kl` / `after_kl`)."""
    pairs = []
    for key, before in stats.items():
        after = stats.get(key.replace("before", "after", 1))
        if "before" in key and _number(before) is not None and _number(after) is not None:
            name = key.replace("before", "", 1).replace("__", "_").replace("_.", ".").strip("_.")
            pairs.append((name or key, float(before), float(after)))
    return pairs


def _number(v) -> float | None:
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        return None
    return float(v)


def pct(n: float, total: float) -> str:
    return f"{100 * n / total:.1f}%" if total else "–"


def change(before: float, after: float) -> str:
    return f"{100 * (after - before) / before:+.0f}%" if before else f"{after - before:+.3g}"
