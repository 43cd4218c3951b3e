"""Score stages: add a column per document from a classifier or a language model."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from datasel.errors import DataselError
from datasel.stage import Context, MapResult, Stage, param, register


def _add_column(batch: pa.RecordBatch, name: str, values) -> pa.RecordBatch:
    if name in batch.schema.names:
        batch = batch.drop_columns([name])
    return batch.append_column(name, pa.array(values))


class _FastTextColumn(Stage):
    """Shared by the fastText-backed stages: a scorer loaded once per process, one column out."""

    def model_and_label(self) -> tuple[str, str]:
        raise NotImplementedError

    def classifier(self):
        if getattr(self, "_scorer", None) is None:
            from scorers.fasttext import FastTextScorer

            try:
                self._scorer = FastTextScorer(*self.model_and_label())
            except (FileNotFoundError, ValueError) as e:
                raise DataselError(str(e).splitlines()[0]) from None
        return self._scorer

    def fit(self, ctx: Context) -> None:
        self.classifier()  # fail early, in the driver, on a bad model or label

    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if k != "_scorer"}

    def map(self, batch: pa.RecordBatch, ctx: Context) -> MapResult:
        texts = batch.column(ctx.columns.text).fill_null("").to_pylist()
        return MapResult(_add_column(batch, self.out_column, self.classifier().score(texts)))


@register
@dataclass(kw_only=True)
class ScoreFastText(_FastTextColumn):
    """Add the probability of one label of a fastText classifier as a column.

    fastText: Joulin et al., "Bag of Tricks for Efficient Text Classification" (2017).
    """

    name = "score-fasttext"
    example = "datasel score fasttext docs/ scored/ --model quality.bin --label __label__hq"

    model: str = param(help="fastText model file (.bin)")
    label: str = param(help="label whose probability becomes the column, e.g. __label__hq")
    column: str | None = param(None, help="name of the new column (default: fasttext_<label>)")

    def __post_init__(self):
        if not Path(self.model).is_file():
            raise ValueError(f"{self.model}: no such fastText model file")

    @property
    def out_column(self) -> str:
        return self.column or "fasttext_" + self.label.removeprefix("__label__")

    def model_and_label(self) -> tuple[str, str]:
        return self.model, self.label


@register
@dataclass(kw_only=True)
class ScorePreselect(_FastTextColumn):
    """Add `preselect_score`: a fitted PreSelect scorer's probability that a document is predictive.

    Shum et al., "Predictive Data Selection: The Data That Predicts Is the Data That Teaches" (2025).
    """

    name = "score-preselect"
    example = "datasel score preselect docs/ scored/ --scorer scorers/preselect-v1"

    scorer: str = param(help="folder written by `datasel preselect fit` (model.bin + card.json)")
    column: str = param("preselect_score", help="name of the new column")

    def __post_init__(self):
        card = Path(self.scorer) / "card.json"
        if not card.is_file():
            raise ValueError(
                f"{self.scorer}: not a PreSelect scorer (no card.json); fit one with `datasel preselect fit`"
            )
        self.card = json.loads(card.read_text())

    @property
    def out_column(self) -> str:
        return self.column

    def model_and_label(self) -> tuple[str, str]:
        return str(Path(self.scorer) / self.card["model_file"]), self.card["score_label"]


def read_columns_and_texts(
    src, columns: list[str], text_column: str = "text"
) -> tuple[list[str], np.ndarray]:
    """Texts and float columns of a whole (small) dataset, with one-line errors."""
    from datasel.io import Columns, plan_units, read_unit

    texts, values = [], []
    for unit in plan_units(src):
        for batch in read_unit(unit, Columns(text=text_column)):
            missing = [c for c in columns if c not in batch.schema.names]
            if missing:
                raise DataselError(
                    f"{unit.path}: no column '{missing[0]}'; columns are: {', '.join(batch.schema.names)}"
                )
            texts += batch.column(text_column).fill_null("").to_pylist()
            values.append(
                np.column_stack(
                    [
                        batch.column(c).cast(pa.float64()).to_numpy(zero_copy_only=False)
                        for c in columns
                    ]
                )
            )
    if not texts:
        raise DataselError(f"empty input: no rows in {src}")
    return texts, np.concatenate(values)


def preselect_fit(
    src,
    out: Path,
    *,
    loss_columns: list[str],
    benchmark_scores: list[float],
    text_column: str = "text",
    fraction: float = 0.1,
    epoch: int = 3,
    lr: float = 0.1,
    word_ngrams: int = 2,
    dim: int = 100,
    seed: int = 0,
) -> dict:
    """Fit a PreSelect scorer from per-document losses under several models and their benchmark scores."""
    from scorers.preselect import fit_preselect

    if len(loss_columns) != len(benchmark_scores):
        raise DataselError(
            f"{len(loss_columns)} loss columns but {len(benchmark_scores)} benchmark scores; give one score per column"
        )
    if len(loss_columns) < 2:
        raise DataselError(
            "PreSelect needs losses under at least 2 models (--loss-columns a,b,...)"
        )
    texts, losses = read_columns_and_texts(src, loss_columns, text_column)
    try:
        return fit_preselect(
            texts,
            losses,
            np.asarray(benchmark_scores, float),
            out,
            model_names=loss_columns,
            fraction=fraction,
            epoch=epoch,
            lr=lr,
            word_ngrams=word_ngrams,
            dim=dim,
            seed=seed,
        )
    except ValueError as e:
        raise DataselError(str(e).splitlines()[0]) from None
