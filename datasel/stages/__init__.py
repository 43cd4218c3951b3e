"""The stages. Importing this package registers every stage in `STAGES`."""

from datasel.stage import STAGES
from datasel.stages import dedup, diversify, embed, filter, pick, score, shift  # noqa: F401

__all__ = ["STAGES"]
