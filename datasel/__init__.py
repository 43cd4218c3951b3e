"""datasel: turn a raw text corpus into a smaller, better LLM training set."""

from pathlib import Path

from datasel.io import BUNDLED
from datasel.version import __version__

SAMPLE = BUNDLED / "sample.parquet"
"""A bundled sample of real text (see datasel/data/LICENSES.md) for the quickstart and examples."""

from datasel.engine import apply, run  # noqa: E402
from datasel.errors import DataselError  # noqa: E402
from datasel.eval import evaluate  # noqa: E402
from datasel.options import RunOptions  # noqa: E402
from datasel.pipeline import Pipeline  # noqa: E402
from datasel.stage import Stage  # noqa: E402
from datasel.stages import STAGES  # noqa: E402
from datasel.stages.dedup import Dedup  # noqa: E402
from datasel.stages.filter import Filter  # noqa: E402


def _call_stage(self: Stage, data, dst=None, **options):
    """Run this stage: on a path (writes `dst`, returns the manifest), or in memory on an
    Arrow table or HF Dataset (returns the kept rows, same type). See `datasel.run`/`apply`."""
    if isinstance(data, str | Path):
        if dst is None:
            raise TypeError("a stage run on a path needs an output folder: stage(src, dst)")
        return run(self, data, dst, **options)
    return apply(self, data, **options)


# every stage is callable; set here, above the engine, so that stage.py never imports it
Stage.__call__ = _call_stage

__all__ = [
    "SAMPLE",
    "STAGES",
    "DataselError",
    "Dedup",
    "Filter",
    "Pipeline",
    "RunOptions",
    "apply",
    "evaluate",
    "run",
    "__version__",
]
