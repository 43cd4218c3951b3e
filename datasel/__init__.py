"""datasel: turn a raw text corpus into a smaller, better LLM training set."""

from datasel.io import BUNDLED
from datasel.version import __version__

SAMPLE = BUNDLED / "sample.parquet"
"""A bundled sample of real text (see datasel/data/LICENSES.md) for the quickstart and examples."""

from datasel.engine import apply, run  # noqa: E402
from datasel.errors import DataselError  # noqa: E402
from datasel.eval import evaluate  # noqa: E402
from datasel.options import RunOptions  # noqa: E402
from datasel.pipeline import Pipeline  # noqa: E402
from datasel.stages import STAGES  # noqa: E402
from datasel.stages.dedup import Dedup  # noqa: E402
from datasel.stages.filter import Filter  # noqa: E402

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
