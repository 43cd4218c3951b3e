"""`datasel report`: what a run did, as one self-contained HTML page and as terminal tables.

read.py      a run or one step: manifests, shards, removed rows, read narrowly
plots.py     the figures (matplotlib, the `report` extra)
html.py      the page: `build_report`
summary.py   the funnel table and one headline per step, for the terminal
"""

from datasel.report.html import build_report
from datasel.report.read import Step, find_steps
from datasel.report.summary import headline, headlines, summary_table

__all__ = ["Step", "build_report", "find_steps", "headline", "headlines", "summary_table"]
