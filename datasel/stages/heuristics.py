"""Model-free quality signals: the document-level rules of Gopher's quality filter."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from datasel.io import Columns
from datasel.stage import Context, MapResult, Stage, param, register

STOP_WORDS = ("the", "be", "to", "of", "and", "that", "have", "with")
# RE2's \s is ASCII only: \p{Z} adds the Unicode spaces (no-break, ideographic, ...)
BULLET = r"^[\s\p{Z}]*[-*•‣◦⁃●▪·]"
ELLIPSIS = r"(\.\.\.|…)[\s\p{Z}]*$"
# a whole word: RE2's \b is ASCII only, so it found "the" in "éthe" and in "the\u0301" (thé)
WORD = r"(?:^|[^\pL\pM\pN_]){}(?:[^\pL\pM\pN_]|$)"
STATISTICS = (  # the keys of gopher_statistics, in its order
    "words",
    "mean_word_length",
    "symbol_ratio",
    "bullet_lines",
    "ellipsis_lines",
    "alpha_words",
    "stop_words",
)

# The paper's thresholds, as `datasel filter` rules on the default columns (as the quickstart)
GOPHER_MIN = [
    "gopher_words=50",
    "gopher_mean_word_length=3",
    "gopher_alpha_words=0.8",
    "gopher_stop_words=2",
]
GOPHER_MAX = [
    "gopher_words=100000",
    "gopher_mean_word_length=10",
    "gopher_symbol_ratio=0.1",
    "gopher_bullet_lines=0.9",
    "gopher_ellipsis_lines=0.3",
]


@register
@dataclass(kw_only=True)
class ScoreHeuristics(Stage):
    """Add the document statistics of Gopher's quality rules as columns; no model needed.

    Rae et al., "Scaling Language Models: Methods, Analysis & Insights from Training Gopher"
    (2021), appendix A.1.1. Adds, with prefix <column>_:

    - words: whitespace-separated words (paper: keep 50 to 100,000)
    - mean_word_length: mean characters per word (keep 3 to 10)
    - symbol_ratio: the larger of '#' per word and '...' (or '…') per word (keep <= 0.1)
    - bullet_lines: share of non-blank lines that start with a bullet (keep <= 0.9)
    - ellipsis_lines: share of non-blank lines that end with an ellipsis (keep <= 0.3)
    - alpha_words: share of words holding a letter (keep >= 0.8)
    - stop_words: how many of the, be, to, of, and, that, have, with occur (keep >= 2)

    A document with no words (empty or null text) has words 0 and stop_words 0; its ratios are
    null, as are the line shares of one with no non-blank line: `datasel filter` removes a row
    whose rule column is null with its own reason. Follow with a filter holding the paper's
    thresholds, as configs/quickstart.yaml does; the repetition rules are not computed here.
    """

    name = "score-heuristics"
    example = (
        "datasel score heuristics docs/ scored/ && datasel filter scored/ kept/ "
        "--min gopher_words=50 --min gopher_stop_words=2 --max gopher_symbol_ratio=0.1"
    )

    column: str = param("gopher", help="column prefix: adds <column>_words, <column>_... ")

    def map(self, batch: pa.RecordBatch, ctx: Context) -> MapResult:
        for name, values in gopher_statistics(batch.column(ctx.columns.text)).items():
            name = f"{self.column}_{name}"
            if name in batch.schema.names:
                batch = batch.drop_columns([name])
            batch = batch.append_column(name, values)
        return MapResult(batch)

    def outputs(self, names: set[str], columns: Columns) -> set[str]:
        return names | {f"{self.column}_{s}" for s in STATISTICS}


def gopher_statistics(texts: pa.Array) -> dict[str, pa.Array]:
    """The Gopher rule statistics of each text (null counts as empty), vectorised over Arrow.

    >>> s = gopher_statistics(pa.array(["The cat sat on the mat... #tag", "", None]))
    >>> s["words"].to_pylist(), s["stop_words"].to_pylist()
    ([7, 0, 0], [1, 0, 0])
    >>> tuple(s) == STATISTICS
    True
    >>> s["mean_word_length"].to_pylist()[1:], round(s["symbol_ratio"][0].as_py(), 3)
    ([None, None], 0.143)
    """
    texts = pc.fill_null(pc.cast(texts, pa.large_string()), "")
    words = pc.utf8_split_whitespace(texts)  # "" and leading blanks give empty words
    flat, owner = pc.list_flatten(words), pc.list_parent_indices(words).to_numpy()
    n = len(texts)

    def per_doc(values) -> np.ndarray:  # sum of a per-word value over each document's words
        return np.bincount(owner, weights=np.asarray(values, np.float64), minlength=n)

    lengths = pc.utf8_length(flat).to_numpy(zero_copy_only=False)
    n_words = per_doc(lengths > 0).astype(np.int64)
    chars = per_doc(lengths)
    alpha = per_doc(pc.match_substring_regex(flat, r"\pL").to_numpy(zero_copy_only=False))
    hashes = pc.count_substring(texts, "#").to_numpy(zero_copy_only=False)
    dots = pc.count_substring_regex(texts, r"\.\.\.|…").to_numpy(zero_copy_only=False)
    lower = pc.utf8_lower(texts)
    stop = sum(
        (pc.count_substring_regex(lower, WORD.format(w)).to_numpy(zero_copy_only=False) > 0)
        for w in STOP_WORDS
    )
    lines = pc.split_pattern(texts, "\n")
    flat_lines, line_owner = pc.list_flatten(lines), pc.list_parent_indices(lines).to_numpy()

    def per_doc_line(mask) -> np.ndarray:
        values = np.asarray(mask.to_numpy(zero_copy_only=False), np.float64)
        return np.bincount(line_owner, weights=values, minlength=n)

    blank_line = pc.or_(pc.equal(flat_lines, ""), pc.utf8_is_space(flat_lines))
    filled = per_doc_line(pc.invert(blank_line))
    bullets = per_doc_line(pc.match_substring_regex(flat_lines, BULLET))
    ellipses = per_doc_line(pc.match_substring_regex(flat_lines, ELLIPSIS))

    def ratio(num, den) -> pa.Array:  # null where there is nothing to divide by
        den = np.asarray(den, np.float64)
        out = np.divide(num, den, out=np.zeros(n), where=den > 0)
        return pa.array(out, pa.float64(), mask=den == 0)

    return {
        "words": pa.array(n_words, pa.int64()),
        "mean_word_length": ratio(chars, n_words),
        "symbol_ratio": ratio(np.maximum(hashes, dots), n_words),
        "bullet_lines": ratio(bullets, filled),
        "ellipsis_lines": ratio(ellipses, filled),
        "alpha_words": ratio(alpha, n_words),
        "stop_words": pa.array(np.asarray(stop, np.int64).reshape(n), pa.int64()),
    }
