"""The stage protocol: a keyword-only dataclass with up to three phases.

    fit(ctx)          global, optional   learn what the stage needs (index, centroids, distributions)
    map(batch, ctx)   per Arrow batch    add columns; may set aside rows with a reason
    select(staged)    global, optional   read back narrow columns and decide which rows to keep

The dataclass fields are the stage's parameters. The CLI command, the Python call and the YAML
step are all generated from them (see `cli.py` and `pipeline.py`).
"""

from __future__ import annotations

import dataclasses
import time
import typing
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from datasel.errors import DataselError
from datasel.io import Columns, read_table
from datasel.step_folder import Staging

STAGES: dict[str, type[Stage]] = {}


def register(cls: type[Stage]) -> type[Stage]:
    """Make a stage available to the CLI, to configs and to `datasel.run`."""
    STAGES[cls.name] = cls
    return cls


def param(default: Any = dataclasses.MISSING, *, help: str, **extra) -> Any:
    """A stage parameter with its help text (shown by `--help` and in config errors)."""
    meta = {"help": help, **extra}
    if isinstance(default, list | dict):
        return field(default_factory=lambda d=default: type(d)(d), metadata=meta)
    return field(default=default, metadata=meta)


def check_budget(size: int | None, fraction: float | None) -> None:
    """Validate a selection budget given as --size or --fraction (exactly one)."""
    if (size is None) == (fraction is None):
        raise ValueError("give exactly one of --size and --fraction")
    if fraction is not None and not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    if size is not None and size < 0:
        raise ValueError(f"size must be >= 0, got {size}")


def rows_of(fraction, rows):
    """Rows that `fraction` of `rows` keeps, half rounding up (0.5 of 1 row or of 5 rows keeps
    1 or 3, as a user reads it; numpy's and Python's round would keep 0 and 2). Scalars or
    arrays."""
    return np.floor(np.multiply(fraction, rows) + 0.5).astype(np.int64)


def budget(
    available: int,
    size: int | None,
    fraction: float | None,
    ctx: Context,
    stage: str,
    total: int | None = None,
) -> int:
    """Rows to select out of `available`: --size, or --fraction of `total` (default: all of
    them). A budget over the rows there are is clamped to them, with a warning: a small day's
    input is not an error."""
    of = available if total is None else total
    want = size if size is not None else int(rows_of(fraction, of))
    if want == 0 and size is None and of:
        ctx.warn(f"{stage}: --fraction {fraction:g} of {of:,} rows rounds to 0 rows: none selected")
    if want <= available:
        return want
    asked = f"--size {size:,}" if size is not None else f"--fraction {fraction:g} ({want:,} rows)"
    ctx.warn(f"{stage}: {asked} is more than the {available:,} rows available: using {available:,}")
    return available


@dataclass(frozen=True)
class Needs:
    """What a stage needs from the engine that runs it: the one record the engines read.

    A stage declares it as a class attribute (`needs = Needs(model=True, ...)`), or as a
    property where it depends on the parameters or on what `fit` chose (a torch model or
    hashing, a template or a text column).
    """

    text: bool = True  # the input must have a text column (--text-column)
    # map holds a model, loaded once per worker: on Ray each worker is an actor holding the stage
    model: bool = False
    # GPUs each model worker asks for, on a Ray cluster that has GPUs (on one without, none:
    # the model runs on CPU there)
    gpus: float = 0
    # map runs in one process: a torch model on one device, torch's threads use the cores (and
    # torch's thread pool does not survive the fork of a process pool)
    single_process: bool = False
    # map takes seconds a batch: units are cut into row ranges of about --unit-seconds of work,
    # estimated from `Stage.model_size`, so that a kill loses about that much
    cut_by_model_size: bool = False

    def gpus_on(self, cluster_gpus: float) -> float:
        """GPUs a model worker requests on a cluster that has `cluster_gpus` in all."""
        return self.gpus if cluster_gpus > 0 else 0


class Loaded:
    """The models a stage loaded, by name, kept for the life of this process.

    Pickled, it keeps only the models loaded with `travels=True` (fitted ones, which cannot be
    loaded again): a stage sent to a worker process or a Ray actor loads its own copy of each
    other model there, once, on that worker's device. See `Stage.loaded`.
    """

    def __init__(self):
        self.models: dict[str, Any] = {}
        self.travelling: set[str] = set()

    def get(self, name: str, load: Callable[[], Any], travels: bool) -> Any:
        if self.models.get(name) is None:
            self.models[name] = load()
            (self.travelling.add if travels else self.travelling.discard)(name)
        return self.models[name]

    def __getstate__(self) -> dict:
        kept = {k: v for k, v in self.models.items() if k in self.travelling}
        return {"models": kept, "travelling": set(self.travelling)}


@dataclass
class MapResult:
    """What `map` returns for one batch.

    `kept` carries the input columns plus the stage's new ones; `removed` holds rows set aside
    with a `reason` column; `arrays` are narrow per-row arrays (aligned with `kept`) that only
    `select` reads, stored beside the shard as .npy files rather than in it.
    """

    kept: pa.RecordBatch | pa.Table
    removed: pa.Table | None = None
    arrays: dict[str, np.ndarray] | None = None
    rows_in: int | None = None  # units counted in, when a row is not the unit (pick: candidates)
    # null and empty texts among those map read ({"null": n, "empty": m}); by default the engine
    # counts them in the text column
    texts: dict[str, int] | None = None


@dataclass
class Decision:
    """What `select` returns: a keep flag and a reason for every staged row, in shard order."""

    keep: np.ndarray
    reason: np.ndarray  # object array of str (None where kept)
    removed_columns: dict[str, pa.Array] = field(default_factory=dict)
    kept_columns: dict[str, pa.Array] = field(default_factory=dict)


class Decider:
    """What `select` returns instead of a `Decision` when each unit can be decided on its own
    from what select found for the whole input (dedup: the removed documents, written by unit
    to its scratch folder). It is small and picklable: the workers call `decide` unit by unit
    and save each unit's decision, so no process holds anything per row of the whole input."""

    def decide(self, i: int, rows: int) -> Decision:
        """The decision for the `rows` staged rows of unit `i`, in their order."""
        raise NotImplementedError


@dataclass
class Context:
    """What a stage sees at run time besides its batch."""

    columns: Columns
    work: Path  # the step's scratch folder, removed when the step finishes
    key: str = ""  # digest of stage, parameters and input fingerprints: names this run
    staging: Staging | None = None  # where map writes staged shards and side arrays (default: work)
    workers: int = 1
    units: list = field(default_factory=list)
    # the units before a model stage cut them by its model size: what `sample` reads, so that a
    # sample never depends on the model size (default: `units`)
    sample_units: list | None = None
    stats: dict = field(default_factory=dict)  # stage statistics, copied into the manifest
    quiet: bool = False
    executor: Any = None  # the engine's: map_unordered(fn, args) for work that select can spread
    threads: Any = None  # the same over threads of this process (numpy work that frees the GIL)
    warnings: list[str] = field(default_factory=list)  # one line each, copied into the manifest
    # column -> the cut-offs `select` applied to it, copied into the manifest (see `cutoff`)
    cutoffs: dict[str, list[dict]] = field(default_factory=dict)
    # what ran when, each {"phase", "start" (epoch seconds), "seconds"}: copied into the
    # manifest, where benchmarks read each phase's time and memory (see `phase`)
    timeline: list[dict] = field(default_factory=list)

    def __post_init__(self):
        if self.staging is None:
            self.staging = Staging(self.work)

    def warn(self, message: str) -> None:
        """Say something the user should know about the result, and keep it in the manifest."""
        if message not in self.warnings:
            self.warnings.append(message)
            if not self.quiet:
                from datasel.progress import console

                console.print(f"[yellow]warning[/]: {message}", highlight=False)

    def cutoff(self, column: str, value: float | dict, label: str) -> None:
        """Record a cut-off that `select` applied to `column`, for the manifest and the report:
        a number the kept rows lie on one side of, or {value of the column: rows allowed} for a
        quota per group (e.g. per cluster). Call it from `select`, which runs in this process."""
        if not isinstance(value, dict):
            value = float(value)
        self.cutoffs.setdefault(column, []).append({"value": value, "label": label})

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Time a phase of the step (the engine's map, select, apply; a stage's own parts of
        select) into `timeline`."""
        start = time.time()
        try:
            yield
        finally:
            self.timeline.append(
                {"phase": name, "start": round(start, 3), "seconds": round(time.time() - start, 3)}
            )

    def __getstate__(self):  # workers get everything but the engine itself
        return {**self.__dict__, "executor": None, "threads": None}

    def texts(self, batch: pa.RecordBatch | pa.Table) -> list[str]:
        """The text column of `batch` as Python strings, "" where null."""
        return batch.column(self.columns.text).fill_null("").to_pylist()

    def sample(self, n: int, columns: list[str] | None = None) -> pa.Table:
        """Up to `n` rows spread evenly over the input (deterministic), in input order.

        Rows are taken at even steps through each unit, from at most SAMPLE_UNITS units spread
        over the input, so files sorted by source, domain or date are sampled through, not
        only at their heads; those units are read whole.
        """
        units = self.sample_units or self.units
        if len(units) > SAMPLE_UNITS:
            units = [units[i] for i in np.linspace(0, len(units) - 1, SAMPLE_UNITS).astype(int)]
        per_unit = max(1, -(-n // max(1, len(units))))
        parts = [_unit_sample(unit, self.columns, per_unit, columns) for unit in units]
        parts = [t for t in parts if t.num_rows]
        if not parts:
            raise DataselError("empty input: no rows to learn from")
        return spread_rows(pa.concat_tables(parts, promote_options="permissive"), n)

    def first_rows(self, n: int = 1) -> pa.Table:
        """The first `n` rows of the first unit that has any: a cheap look at the columns."""
        from datasel.io import read_unit

        for unit in self.sample_units or self.units:
            for batch in read_unit(unit, self.columns):
                return pa.Table.from_batches([batch.slice(0, n)])
        raise DataselError("empty input: no rows to learn from")


def blank_texts(texts: pa.Array | pa.ChunkedArray | list) -> np.ndarray:
    """True where a text is null, empty or only whitespace: nothing there to score, embed or
    pick. Such rows get null scores and vectors, and selection stages remove them
    (`<stage>:empty_text`) instead of ranking a score of nothing."""
    arr = texts if isinstance(texts, pa.Array | pa.ChunkedArray) else pa.array(texts, pa.string())
    blank = pc.or_kleene(pc.equal(pc.binary_length(arr), 0), pc.utf8_is_space(arr))
    return np.asarray(blank.fill_null(True).to_numpy(zero_copy_only=False), dtype=bool)


def count_texts(texts: pa.Array | pa.ChunkedArray | list) -> dict[str, int]:
    """{"null": rows without a text, "empty": rows whose text is empty or only whitespace}."""
    arr = texts if isinstance(texts, pa.Array | pa.ChunkedArray) else pa.array(texts, pa.string())
    blank = int(blank_texts(arr).sum())
    return {"null": arr.null_count, "empty": blank - arr.null_count}


def set_aside_blank(
    batch: pa.RecordBatch, blank: np.ndarray, stage: str
) -> tuple[pa.RecordBatch, pa.Table | None]:
    """Split a batch of a selection stage into the rows with text and those without, the latter
    with reason `<stage>:empty_text` (a vector or weight of nothing must not be selected)."""
    if not blank.any():
        return batch, None
    gone = pa.Table.from_batches([batch.filter(pa.array(blank))])
    gone = gone.append_column("reason", pa.array([f"{stage}:empty_text"] * gone.num_rows))
    return batch.filter(pa.array(~blank)), gone


SAMPLE_UNITS = 64  # units read for a sample: bounds its cost on a large input


def spread_rows(table: pa.Table, n: int) -> pa.Table:
    """`n` rows at even steps through `table`, first and last included (all of it when it has
    no more)."""
    if table.num_rows <= n:
        return table
    return table.take(np.linspace(0, table.num_rows - 1, n).round().astype(np.int64))


def _unit_sample(unit, columns, n: int, names: list[str] | None) -> pa.Table:
    """`n` rows at even steps through one unit, whose length need not be known beforehand:
    keep every `stride`-th row, doubling the stride (and halving what is kept) whenever more
    than 2n are kept, so memory stays O(n)."""
    from datasel.io import read_unit

    kept: list[pa.Table] = []
    count, stride, pos = 0, 1, 0
    for batch in read_unit(unit, columns):
        if names:
            batch = batch.select(names)
        first = (-pos) % stride
        kept.append(pa.Table.from_batches([batch]).take(np.arange(first, batch.num_rows, stride)))
        count += kept[-1].num_rows
        pos += batch.num_rows
        while count > 2 * n:
            table = pa.concat_tables(kept)
            kept = [table.take(np.arange(0, table.num_rows, 2))]
            count, stride = kept[0].num_rows, stride * 2
    if not kept:
        return pa.table({})
    return spread_rows(pa.concat_tables(kept), n)


class Staged:
    """The mapped shards as `select` sees them: narrow columns and side arrays, in shard order."""

    def __init__(self, staging: Staging, rows: list[int]):
        self.staging, self.rows = staging, rows
        self.offsets = np.concatenate([[0], np.cumsum(rows)]).astype(np.int64)

    @property
    def total(self) -> int:
        return int(self.offsets[-1])

    def shard(self, i: int) -> Path:
        return self.staging.shard(i)

    def column(self, name: str) -> pa.ChunkedArray:
        """One column of every shard, concatenated (read by projection: only that column)."""
        # a unit with no rows is staged as an id-only empty shard: it has no column to read
        chunks = [
            read_table(self.shard(i), columns=[name]).column(0)
            for i, rows in enumerate(self.rows)
            if rows
        ]
        if not chunks:
            return pa.chunked_array([], pa.null())
        # a shard whose rows all had the column null holds it as null: nulls of the others' type
        types = {c.type for c in chunks if not pa.types.is_null(c.type)} or {chunks[0].type}
        if len(types) > 1:
            raise DataselError(
                f"column '{name}' holds {' and '.join(sorted(map(str, types)))} in different "
                "parts of the input"
            )
        (typ,) = types
        return pa.chunked_array([c for ch in chunks for c in ch.cast(typ).chunks], type=typ)

    def array(self, name: str, i: int, mmap: bool = True) -> np.ndarray:
        return np.load(self.array_path(name, i), mmap_mode="r" if mmap else None)

    def array_path(self, name: str, i: int) -> Path:
        return self.staging.array(name, i)

    def concat(self, name: str, empty_dtype=np.float64) -> np.ndarray:
        """One side array of every non-empty shard, concatenated in shard order."""
        parts = [np.asarray(self.array(name, i)) for i, n in enumerate(self.rows) if n]
        return np.concatenate(parts) if parts else np.zeros(0, empty_dtype)


@dataclass(kw_only=True)
class Stage:
    """Base class. Subclasses set `name`, write a docstring (first line = CLI help) and
    `example` (shown in `--help`), declare what they need (`needs`), and implement `map` and
    optionally `fit` / `select`.

    `fit` and `select` run in the driver; `map` may run in worker processes (or Ray actors) on
    copies of the stage and its Context. `select` returns a `Decision` for every row, or, to
    keep nothing per row in the driver, a `Decider` that the workers call unit by unit. So only `fit` and `select` report statistics
    (`ctx.stats`, copied into the manifest): what `map` learns per row travels back in its
    `MapResult` (rows in, null and empty texts, removed rows with their reasons, side arrays
    for `select`), never in `ctx.stats`, which a worker's copy would lose.
    """

    name: ClassVar[str] = ""
    example: ClassVar[str] = ""
    needs: ClassVar[Needs] = Needs()
    # False for stages whose map only computes side arrays for select: the staged shard then
    # holds just `id` and `narrow_columns()`, and the final write re-reads the input
    map_adds_columns: ClassVar[bool] = True
    # names of the parameters that `fit` and `map` depend on; when set, the staged shards are
    # cached in <output>/_cache/ so a rerun that changes only other (selection) parameters
    # with --overwrite skips fit's map work and redoes only `select`
    map_params: ClassVar[tuple[str, ...] | None] = None

    def fit(self, ctx: Context) -> None:  # noqa: B027 - optional hook
        """Learn global state before `map` (optional)."""

    def loaded(self, name: str, load: Callable[[], Any], travels: bool = False) -> Any:
        """The model `name`: what `load()` returns, loaded on first use and kept for the life of
        this process. It is left out when the stage is pickled (unless `travels`, for a fitted
        model that cannot be loaded again), so each worker loads its own copy (see `Loaded`)."""
        return self.__dict__.setdefault("_loaded", Loaded()).get(name, load, travels)

    def unload(self) -> None:
        """Forget the models loaded so far: the next `loaded` loads (or fits) them anew."""
        self.__dict__.pop("_loaded", None)

    def map(self, batch: pa.RecordBatch, ctx: Context) -> MapResult:
        return MapResult(batch)

    def model_size(self, ctx: Context) -> tuple[int, str]:
        """(parameters, device) of the model `map` runs: stages whose needs say cut_by_model_size."""
        raise NotImplementedError(f"{self.name} sets cut_by_model_size but has no model_size")

    def select(self, staged: Staged, ctx: Context) -> Decision | Decider:
        raise NotImplementedError

    def narrow_columns(self, ctx: Context) -> list[str]:
        """Input columns that `select` reads back (when `map_adds_columns` is False)."""
        return []

    # ------------------------------------------------------------------ checks before work
    # (see datasel/preflight.py: run for every step of a pipeline before step 1 writes)

    def check(self) -> None:  # noqa: B027 - optional hook
        """Cheap checks of what the parameters name: extras installed, files and models found.
        Raise DataselError naming the option."""

    def reads(self, columns: Columns) -> dict[str, str]:
        """Input columns this stage needs, each with the option that names it."""
        return {columns.text: "text-column"} if self.needs.text and columns.text else {}

    def numeric_reads(self) -> set[str]:
        """The columns of `reads` that must hold numbers."""
        return set()

    def outputs(self, names: set[str], columns: Columns) -> set[str]:
        """The columns of the kept rows, given the input's: the next step may read these."""
        return names

    def incremental(self, state: Path) -> Stage:
        """This stage in a cron run that keeps its state in `state` (`datasel run --since`): a
        stage that remembers what earlier runs kept returns a copy that remembers it there."""
        return self

    @classmethod
    def has_select(cls) -> bool:
        return cls.select is not Stage.select

    def params(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_params(cls, params: dict, where: str = "") -> Stage:
        """Build from a config mapping, with one-line errors for unknown or missing keys and bad
        types; a single value where a list is expected is a list of one."""
        fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
        prefix = f"{where}: " if where else ""
        for key in params:
            if key not in fields:
                allowed = ", ".join(sorted(fields))
                raise DataselError(
                    f"{prefix}unknown key '{key}' for stage {cls.name}; allowed: {allowed}"
                )
        for f in fields.values():
            required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
            if required and f.name not in params:
                raise DataselError(
                    f"{prefix}missing required key '{f.name}': {f.metadata.get('help', '')}"
                )
        hints = typing.get_type_hints(cls)
        values = {k: coerce(k, hints[k], v, prefix) for k, v in params.items()}
        try:
            return cls(**values)
        except (TypeError, ValueError) as e:
            raise DataselError(f"{prefix}{e}") from None


def coerce(name: str, hint: Any, value: Any, prefix: str) -> Any:
    """`value` checked against the field's type: ints pass as floats, a scalar as a list."""
    args = typing.get_args(hint)
    if type(None) in args:  # X | None
        if value is None:
            return None
        (hint,) = [a for a in args if a is not type(None)]
    if typing.get_origin(hint) is list:
        (item,) = typing.get_args(hint) or (Any,)
        items = value if isinstance(value, list) else [] if value is None else [value]
        return [coerce(name, item, v, prefix) for v in items]
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint in (int, float, str, bool) and (
        value is None or isinstance(value, bool) != (hint is bool) or not isinstance(value, hint)
    ):
        raise DataselError(f"{prefix}key '{name}' must be {hint.__name__}, got {value!r}")
    return value
