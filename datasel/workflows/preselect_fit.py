"""`datasel preselect fit`: a PreSelect scorer from per-document losses under several models.

A workflow, not a stage: it may first run `score ppl` once per model (a pipeline), then fits a
fastText classifier on the whole (small) scored dataset.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from datasel.errors import DataselError, require
from datasel.io import TEXT_COLUMN, Columns, plan_units, read_unit, write_json
from datasel.options import RunOptions
from datasel.pipeline import Pipeline
from datasel.stage import blank_texts
from datasel.stages.score import ScorePpl


def read_columns_and_texts(
    src, columns: list[str], text_column: str = TEXT_COLUMN
) -> tuple[list[str], np.ndarray, int]:
    """Texts and float columns of a whole (small) dataset, with one-line errors, and the number
    of rows left out for having no text (null, empty or only whitespace: no loss to learn from)."""
    texts, values, blank = [], [], 0
    for unit in plan_units(src):
        for batch in read_unit(unit, Columns(text=text_column)):
            missing = [c for c in columns if c not in batch.schema.names]
            if missing:
                raise DataselError(
                    f"{unit.path}: no column '{missing[0]}'; columns are: {', '.join(batch.schema.names)}"
                )
            empty = blank_texts(batch.column(text_column))
            blank += int(empty.sum())
            batch = batch.filter(pa.array(~empty))
            texts += batch.column(text_column).to_pylist()
            values.append(np.column_stack([_losses(batch, c, unit.path) for c in columns]))
    if not texts:
        raise DataselError(f"empty input: no rows with text in {src}")
    return texts, np.concatenate(values), blank


def _losses(batch: pa.RecordBatch, column: str, path: str) -> np.ndarray:
    """`column` of `batch` as float64; a one-line error naming the file and the row's id where
    it holds no number (a loss must be there for every row with text)."""
    arr = batch.column(column)
    typ = arr.type
    if not (pa.types.is_integer(typ) or pa.types.is_floating(typ) or pa.types.is_null(typ)):
        raise DataselError(f"{path}: loss column '{column}' holds {typ}, not numbers")
    x = arr.cast(pa.float64(), safe=False).to_numpy(zero_copy_only=False).astype(np.float64)
    bad = np.flatnonzero(np.isnan(x))
    if len(bad):
        row = batch.column("id")[int(bad[0])].as_py()
        raise DataselError(
            f"{path}: the row with id {row!r} has text but no loss in '{column}' (null or NaN): "
            "score it or leave the row out"
        )
    return x


def preselect_fit(
    src,
    out: Path,
    *,
    benchmark_scores: list[float],
    loss_columns: list[str] = (),
    models: list[str] = (),
    text_column: str = TEXT_COLUMN,
    fraction: float = 0.1,
    epoch: int = 3,
    lr: float = 0.1,
    word_ngrams: int = 2,
    dim: int = 100,
    seed: int = 0,
) -> dict:
    """Fit a PreSelect scorer from per-document losses under several models and their benchmark scores.

    Give the loss columns (from `score ppl`), or the models themselves: each then scores the
    input first (`score ppl`, into `<out>/_scored/`), one after another.
    """
    from scorers.preselect import fit_preselect

    require("fasttext", "preselect fit")
    if bool(loss_columns) == bool(models):
        raise DataselError(
            "give either --loss-columns (already scored) or --model for each model (scored now)"
        )
    if models:
        steps = [ScorePpl(model=m, column=f"model{k}") for k, m in enumerate(models)]
        Pipeline(steps, RunOptions(text_column=text_column)).run(src, Path(out) / "_scored")
        src = Pipeline(steps).step_dirs(Path(out) / "_scored")[-1]
        loss_columns = [f"model{k}_bpb" for k in range(len(models))]
    if len(loss_columns) != len(benchmark_scores):
        raise DataselError(
            f"{len(loss_columns)} loss columns but {len(benchmark_scores)} benchmark scores; give one score per column"
        )
    if len(loss_columns) < 2:
        raise DataselError("PreSelect needs losses under at least 2 models")
    texts, losses, blank = read_columns_and_texts(src, list(loss_columns), text_column)
    try:
        card = fit_preselect(
            texts,
            losses,
            np.asarray(benchmark_scores, float),
            out,
            model_names=[f"model{k}={m}" for k, m in enumerate(models)] or list(loss_columns),
            fraction=fraction,
            epoch=epoch,
            lr=lr,
            word_ngrams=word_ngrams,
            dim=dim,
            seed=seed,
        )
    except ValueError as e:
        raise DataselError(str(e).splitlines()[0]) from None
    card["rows_without_text"] = blank  # left out of the fit: they have no losses
    write_json(card, Path(out) / "card.json")
    return card
