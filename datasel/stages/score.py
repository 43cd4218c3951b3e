"""Score stages: add a column per document from a classifier or a language model."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from datasel.errors import DataselError, require
from datasel.io import Columns, write_json
from datasel.stage import Context, MapResult, Stage, blank_texts, param, register
from scorers.models import model_size


def _add_column(batch: pa.RecordBatch, name: str, values, mask=None) -> pa.RecordBatch:
    """Add (or replace) a column; rows where `mask` is true are null."""
    if name in batch.schema.names:
        batch = batch.drop_columns([name])
    return batch.append_column(name, pa.array(np.asarray(values), mask=mask))


def _texts_to_score(batch: pa.RecordBatch, column: str) -> tuple[list[str], np.ndarray]:
    """The texts with something in them, and the mask of the rows without (null, empty or only
    whitespace): those get a null score, never a number computed over nothing."""
    texts = batch.column(column)
    blank = blank_texts(texts)
    return texts.filter(pa.array(~blank)).to_pylist(), blank


def _spread(values: np.ndarray, blank: np.ndarray) -> np.ndarray:
    """`values` of the non-blank rows, placed back among all rows (blank rows are masked)."""
    out = np.zeros(len(blank), dtype=values.dtype)
    out[~blank] = values
    return out


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

    def check(self) -> None:
        require("fasttext", self.name.replace("-", " "))
        self.model_and_label()

    def outputs(self, names: set[str], columns: Columns) -> set[str]:
        return names | {self.out_column}

    def fit(self, ctx: Context) -> None:
        self.classifier()  # fail early, in the driver, on a bad model or label

    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if k != "_scorer"}

    def map(self, batch: pa.RecordBatch, ctx: Context) -> MapResult:
        texts, blank = _texts_to_score(batch, ctx.columns.text)
        scores = self.classifier().score(texts) if texts else np.zeros(0, np.float32)
        return MapResult(_add_column(batch, self.out_column, _spread(scores, blank), mask=blank))


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

    @property
    def out_column(self) -> str:
        return self.column or "fasttext_" + self.label.removeprefix("__label__")

    def model_and_label(self) -> tuple[str, str]:
        if not Path(self.model).is_file():
            raise DataselError(f"{self.model}: no such fastText model file")
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

    @property
    def out_column(self) -> str:
        return self.column

    def model_and_label(self) -> tuple[str, str]:
        card = Path(self.scorer) / "card.json"
        if not card.is_file():
            raise DataselError(
                f"{self.scorer}: not a PreSelect scorer (no card.json); fit one with `datasel preselect fit`"
            )
        try:
            meta = json.loads(card.read_text())
            return str(Path(self.scorer) / meta["model_file"]), meta["score_label"]
        except (ValueError, KeyError, TypeError) as e:
            raise DataselError(f"{card}: not a PreSelect scorer card ({e!r})") from None


def read_columns_and_texts(
    src, columns: list[str], text_column: str = "text"
) -> tuple[list[str], np.ndarray, int]:
    """Texts and float columns of a whole (small) dataset, with one-line errors, and the number
    of rows left out for having no text (null, empty or only whitespace: no loss to learn from)."""
    from datasel.io import Columns, plan_units, read_unit

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
            values.append(
                np.column_stack(
                    [
                        batch.column(c).cast(pa.float64()).to_numpy(zero_copy_only=False)
                        for c in columns
                    ]
                )
            )
    if not texts:
        raise DataselError(f"empty input: no rows with text in {src}")
    return texts, np.concatenate(values), blank


def preselect_fit(
    src,
    out: Path,
    *,
    benchmark_scores: list[float],
    loss_columns: list[str] = (),
    models: list[str] = (),
    text_column: str = "text",
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
        from datasel.pipeline import Pipeline

        steps = [ScorePpl(model=m, column=f"model{k}") for k, m in enumerate(models)]
        Pipeline(steps).run(src, Path(out) / "_scored", text_column=text_column)
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


def check_lm(model: str, what: str) -> None:
    """Before any work: the `lm` extra is installed, and `model` is a local path or a Hub name
    that is cached or reachable (one line at once, not transformers' minute of retries)."""
    from scorers.models import locate

    gguf = ("torch", "transformers", "gguf") if model.endswith(".gguf") else None
    require("lm", what, gguf)
    try:
        locate(model)
    except FileNotFoundError as e:
        raise DataselError(f"--model {e}") from None


@register
@dataclass(kw_only=True)
class ScorePpl(Stage):
    """Add `<column>_bpb` (bits per UTF-8 byte) and `<column>_tokens` under a causal language model.

    Bits per byte = summed token negative log-likelihood in nats / (UTF-8 bytes x ln 2), so models
    with different tokenizers compare; batched by length through torch (GPU when present).
    """

    name = "score-ppl"
    example = "datasel score ppl docs/ scored/ --model models/smollm2-135m --column smol"
    single_process = True  # one model per device; torch uses the cores
    loads_model = True
    cut_by_speed = True

    model: str = param(
        help="local Hugging Face model folder, a .gguf file, or a hub name (needs network)"
    )
    column: str = param("ppl", help="column prefix: adds <column>_bpb and <column>_tokens")
    batch_tokens: int | None = param(
        None, help="padded tokens per forward pass (default: 16384 on GPU, 2048 on CPU)"
    )
    max_tokens: int | None = param(
        None, help="context window for long documents (default: the model's)"
    )
    stride: int | None = param(
        None, help="tokens scored per sliding window after the first (default: max_tokens/2)"
    )
    device: str = param("auto", help="auto (CUDA when present) | cpu | cuda")

    def lm(self):
        if getattr(self, "_lm", None) is None:
            from transformers.utils import logging

            from scorers.lm import load_lm

            logging.disable_progress_bar()  # our own progress bar is enough

            try:
                self._lm = load_lm(self.model, device=self.device, max_tokens=self.max_tokens)
            except (FileNotFoundError, ValueError, ImportError) as e:
                raise DataselError(f"--model {self.model}: {str(e).splitlines()[0]}") from None
        return self._lm

    def check(self) -> None:
        check_lm(self.model, "score ppl")

    def model_size(self, ctx: Context) -> tuple[int, str]:
        return model_size(self.lm().model, self.lm().device)

    def outputs(self, names: set[str], columns: Columns) -> set[str]:
        return names | {f"{self.column}_bpb", f"{self.column}_tokens"}

    def fit(self, ctx: Context) -> None:
        self.lm()  # fail early on a bad model path

    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if k != "_lm"}

    def map(self, batch: pa.RecordBatch, ctx: Context) -> MapResult:
        from scorers.lm import bits_per_byte, score_bpb

        texts, blank = _texts_to_score(batch, ctx.columns.text)
        bpb, tokens = np.zeros(0), np.zeros(0, np.int64)
        if texts:
            nll, tokens = score_bpb(
                self.lm(),
                texts,
                batch_tokens=self.batch_tokens,
                max_tokens=self.max_tokens,
                stride=self.stride,
            )
            bpb = bits_per_byte(texts, nll)
            # a text the tokenizer makes nothing of would score 0 bits: no score either
            bpb[np.asarray(tokens) == 0] = np.nan
        bpb = _spread(bpb, blank)
        batch = _add_column(batch, f"{self.column}_bpb", bpb, mask=blank | np.isnan(bpb))
        tokens = _spread(np.asarray(tokens, np.int64), blank)
        return MapResult(_add_column(batch, f"{self.column}_tokens", tokens, mask=blank))
