"""The engine: runs a stage over a dataset, shard in, shard out, resumably.

step.py        run one step: plan, resume, cache key, select, manifest (`run`, `RunOptions`)
plan.py        how the input is cut into units, once
units.py       the work of one unit in each phase (map, stage, apply): one batch loop
executors.py   where units run: local processes, threads (`ray.py`: Ray tasks and actors)
memory.py      `apply`: a stage run in memory on a table
"""

from datasel.engine.executors import Executor, LocalExecutor, ThreadExecutor, make_executor
from datasel.engine.memory import apply
from datasel.engine.step import run, stage_columns
from datasel.options import RunOptions

__all__ = [
    "Executor",
    "LocalExecutor",
    "RunOptions",
    "ThreadExecutor",
    "apply",
    "make_executor",
    "run",
    "stage_columns",
]
