"""Checks before any work: every step of a run, before the first one writes anything.

Each stage checks what its parameters name (`Stage.check`: extras, files, models); then the
columns each step reads (`Stage.reads`) are looked up in the input's first rows, or, for a later
step, in what the steps before it leave (`Stage.outputs`). A mistake in step 3 of a pipeline
thus fails in a second, naming the step and the option, instead of after step 1's hour of work.
"""

from __future__ import annotations

from collections.abc import Sequence

import pyarrow as pa

from datasel.errors import DataselError, require
from datasel.io import Columns, FileList, find_files, plan_units, read_unit
from datasel.stage import Stage


def check_steps(src, steps: Sequence[tuple[Stage, Columns, str]], engine: str = "local") -> None:
    """Raise a one-line DataselError for the first mistake of any step.

    `steps`: (stage, its columns, its label in messages, e.g. "run.yaml step 2 (dedup)").
    """
    if engine == "ray":
        require("ray", "--engine ray")
    types, before = input_columns(src)
    for i, (stage, columns, where) in enumerate(steps, 1):
        prefix = f"{where}: " if where else ""
        try:
            stage.check()
            if types is not None:
                _check_columns(stage, columns, types, before)
        except DataselError as e:
            raise type(e)(f"{prefix}{e}") from None
        if types is not None:  # a column a step adds has a type not known yet: None
            types = {name: types.get(name) for name in stage.outputs(set(types), columns)}
        before = f"the output of step {i} ({stage.name})"


def _check_columns(stage: Stage, columns: Columns, types: dict, before: str) -> None:
    numeric = stage.numeric_reads()
    for column, option in stage.reads(columns).items():
        if column not in types:
            what = "text column" if option == "text-column" else "column"
            raise DataselError(
                f"--{option}: no {what} '{column}' in {before}; columns are: "
                f"{', '.join(sorted(types))}"
            )
        typ = types[column]
        if column in numeric and typ is not None and not _is_numeric(typ):
            raise DataselError(f"--{option}: column '{column}' holds {typ}, not numbers")


def _is_numeric(typ: pa.DataType) -> bool:
    """Numbers, or nulls only (in the first rows: the column may hold numbers later)."""
    return any(
        f(typ)
        for f in (pa.types.is_integer, pa.types.is_floating, pa.types.is_boolean, pa.types.is_null)
    )


def input_columns(src) -> tuple[dict[str, pa.DataType] | None, str]:
    """The columns (and their types) of the input's first rows and the file they are from
    (None when there are no rows to look at, or they cannot be read: the run itself then says
    why, under its --on-bad-rows policy)."""
    try:
        files, root = find_files(src)
        for path in files:  # only the first file with rows is opened
            for unit in plan_units(FileList((str(path),), str(root))):
                for batch in read_unit(unit, Columns(text=None)):
                    return dict(zip(batch.schema.names, batch.schema.types, strict=True)), unit.path
    except DataselError:
        pass
    return None, str(src)
