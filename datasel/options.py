"""How a stage is run: the run options, declared once.

Each field of `RunOptions` is, generated from its declaration, a flag of every stage command
and of `datasel run` (`--text-column body`, help text from the field), a top-level key of a
pipeline config (`text_column: body`), and a keyword of `datasel.run` and `Pipeline.run`.
The fields marked `step` may also be set by one step of a config.
"""

from __future__ import annotations

import dataclasses
import os
import typing
from dataclasses import dataclass, field

from datasel.bad_rows import check_mode
from datasel.errors import DataselError
from datasel.io import TEXT_COLUMN
from datasel.stage import coerce, param

BAD_ROWS_HELP = (
    "JSONL lines that are malformed, not UTF-8 or change a field's type: error (stop, naming "
    "the line) or skip (leave them out, in OUTPUT/_skipped/ with a reason)"
)


def _cores() -> int:
    return os.cpu_count() or 1


@dataclass(kw_only=True)
class RunOptions:
    """How to run a stage; none of these change which rows are kept (except the columns)."""

    text_column: str = param(TEXT_COLUMN, help="name of the text column", step=True)
    id_column: str = param(
        "id", help="column with document ids (derived from file and row when absent)", step=True
    )
    workers: int = field(
        default_factory=_cores,
        # a default that depends on the machine is said in the help, not shown as a value
        metadata={"help": "worker processes (default: all cores)", "show_default": False},
    )
    overwrite: bool = param(False, help="replace the output of another run in OUTPUT")
    quiet: bool = param(False, help="no progress bar or summary (for cron)")
    shard_bytes: int = param(
        128 << 20, help="input bytes per unit of work, at most (each unit writes one output shard)"
    )
    shard_rows: int = param(250_000, help="Parquet input rows per unit of work, at most")
    batch_rows: int = param(8192, help="rows per batch that a stage maps at once")
    engine: str = param(
        "local", help="local (process pool) or ray (RAY_ADDRESS, else a local cluster)"
    )
    on_bad_rows: str = param("error", help=BAD_ROWS_HELP)
    unit_seconds: float = param(
        30.0, help="model stages: seconds of work per output shard, about the most a kill loses"
    )

    def __post_init__(self):
        try:
            check_mode(self.on_bad_rows)
        except ValueError as e:
            raise DataselError(str(e)) from None

    @classmethod
    def from_config(cls, config: dict, where: str) -> RunOptions:
        """The options among the top-level keys of a config (the others are not looked at)."""
        values = checked({k: v for k, v in config.items() if k in NAMES}, where)
        try:
            return cls(**values)
        except DataselError as e:
            raise DataselError(f"{where}: {e}") from None


NAMES: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(RunOptions))
STEP_NAMES: tuple[str, ...] = tuple(
    f.name for f in dataclasses.fields(RunOptions) if f.metadata.get("step")
)


def checked(values: dict, where: str) -> dict:
    """Option values from a config, each checked against its field's type ("where: key 'workers'
    must be int, got 'x'"); an int passes as a float."""
    hints = typing.get_type_hints(RunOptions)
    return {k: coerce(k, hints[k], v, f"{where}: ") for k, v in values.items()}
