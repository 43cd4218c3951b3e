"""Score stages: add a column per document from a classifier or a language model."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from datasel.errors import DataselError, require
from datasel.io import Columns
from datasel.stage import Context, MapResult, Needs, Stage, blank_texts, param, register
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
        return self.loaded("classifier", self._load_classifier)

    def _load_classifier(self):
        from scorers.fasttext import FastTextScorer

        try:
            return FastTextScorer(*self.model_and_label())
        except (FileNotFoundError, ValueError) as e:
            raise DataselError(str(e).splitlines()[0]) from None

    def check(self) -> None:
        require("fasttext", self.name.replace("-", " "))
        self.model_and_label()

    def outputs(self, names: set[str], columns: Columns) -> set[str]:
        return names | {self.out_column}

    def fit(self, ctx: Context) -> None:
        self.classifier()  # fail early, in the driver, on a bad model or label

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


def load_causal_lm(model: str, device: str, max_tokens: int | None = None):
    """`scorers.lm.load_lm`, without its progress bars, with one-line errors naming --model."""
    from transformers.utils import logging

    from scorers.lm import load_lm

    logging.disable_progress_bar()  # our own progress bar is enough
    try:
        return load_lm(model, device=device, max_tokens=max_tokens)
    except (FileNotFoundError, ValueError, ImportError) as e:
        raise DataselError(f"--model {model}: {str(e).splitlines()[0]}") from None


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
    needs = Needs(model=True, gpus=1, single_process=True, cut_by_model_size=True)

    model: str = param(
        help="local Hugging Face model folder, a .gguf file, or a hub name (needs network)"
    )
    column: str = param("ppl", help="column prefix: adds <column>_bpb and <column>_tokens")
    batch_tokens: int | None = param(
        None, help="tokens per forward pass, padding included (default: 16384 on GPU, 2048 on CPU)"
    )
    max_tokens: int | None = param(
        None, help="context window for long documents (default: the model's)"
    )
    stride: int | None = param(
        None, help="tokens scored per sliding window after the first (default: max_tokens/2)"
    )
    device: str = param("auto", help="auto (CUDA when present) | cpu | cuda")

    def lm(self):
        return self.loaded("lm", lambda: load_causal_lm(self.model, self.device, self.max_tokens))

    def check(self) -> None:
        check_lm(self.model, "score ppl")

    def model_size(self, ctx: Context) -> tuple[int, str]:
        return model_size(self.lm().model, self.lm().device)

    def outputs(self, names: set[str], columns: Columns) -> set[str]:
        return names | {f"{self.column}_bpb", f"{self.column}_tokens"}

    def fit(self, ctx: Context) -> None:
        self.lm()  # fail early on a bad model path

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
