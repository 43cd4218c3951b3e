"""The stages. Importing this package registers every stage in `STAGES`."""

from datasel.stage import STAGES
from datasel.stages import (  # noqa: F401
    dedup,
    diversify,
    embed,
    filter,
    heuristics,
    pick,
    score,
    shift,
)

__all__ = ["STAGES"]
