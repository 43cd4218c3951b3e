"""Distribution-shift selection: pick the pool documents that move it toward a target set."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar

import numpy as np
import pyarrow as pa

from datasel.errors import DataselError, require
from datasel.io import Columns, find_files, plan_units, read_unit
from datasel.stage import (
    Context,
    Decision,
    MapResult,
    Needs,
    Stage,
    Staged,
    blank_texts,
    budget,
    check_budget,
    count_texts,
    param,
    register,
)
from datasel.stages.embed import has_vector, neural


def row_texts(
    batch: pa.RecordBatch | pa.Table, text_column: str | None, template: str | None
) -> list[str | None]:
    """The text of each row: the text column (None where null), or `template` filled from
    several columns (e.g. "{instruction}\\n{response}" for instruction data)."""
    if template is None:
        return batch.column(text_column).to_pylist()
    import string

    names = [f for _, f, _, _ in string.Formatter().parse(template) if f]
    missing = [n for n in names if n not in batch.schema.names]
    if missing:
        raise DataselError(
            f"--template needs column '{missing[0]}'; columns are: {', '.join(batch.schema.names)}"
        )
    cols = {n: batch.column(n).to_pylist() for n in names}
    return [
        template.format(**{n: ("" if cols[n][i] is None else cols[n][i]) for n in names})
        for i in range(batch.num_rows)
    ]


def read_texts(
    src, text_column: str | None, template: str | None, what: str
) -> tuple[list[str], int]:
    """The texts of a (target) dataset, and how many of its rows were left out for having no
    text (null, empty or only whitespace)."""
    texts, blank = [], 0
    for unit in plan_units(src):
        for batch in read_unit(unit, Columns(text=text_column if template is None else None)):
            part = row_texts(batch, text_column, template)
            empty = blank_texts(part)
            blank += int(empty.sum())
            texts += [t for t, b in zip(part, empty, strict=True) if not b]
    if not texts:
        raise DataselError(f"{what} {src}: holds no rows with text")
    return texts, blank


@dataclass(kw_only=True)
class _Shift(Stage):
    """Shared by DSIR and GOT-D: a target set, a budget, a text template."""

    map_adds_columns = False
    reason_prefix: ClassVar[str] = ""  # of its reasons: `<prefix>:not_selected`, ...

    target: str = param(
        help="the target set: documents the selection should resemble (any input format; "
        "datasel:target-python-docs is a bundled one)"
    )
    size: int | None = param(None, help="documents to select")
    fraction: float | None = param(None, help="share of the pool to select (instead of --size)")
    template: str | None = param(
        None, help="text from several columns, e.g. '{instruction}\\n{response}'"
    )
    seed: int = param(0, help="seed for sampling")

    def __post_init__(self):
        check_budget(self.size, self.fraction)

    @property
    def needs(self) -> Needs:
        return Needs(text=self.template is None)  # a template names its own columns

    def budget(self, n: int, ctx: Context) -> int:
        return budget(n, self.size, self.fraction, ctx, self.name.replace("-", " "))

    def check(self) -> None:
        try:
            find_files(self.target)
        except DataselError as e:
            raise DataselError(f"--target {e}") from None

    def reads(self, columns: Columns) -> dict[str, str]:
        if self.template is None:
            return super().reads(columns)
        import string

        fields = [f for _, f, _, _ in string.Formatter().parse(self.template) if f]
        return {f: "template" for f in fields}

    def texts(self, batch, ctx: Context) -> list[str | None]:
        return row_texts(batch, ctx.columns.text, self.template)

    def texts_and_blanks(self, batch, ctx: Context) -> tuple[list[str], np.ndarray, dict]:
        """Each row's text ("" where null), where it has none (null, empty or whitespace:
        `select` removes those as `<prefix>:empty_text`), and their counts for the manifest."""
        texts = self.texts(batch, ctx)
        blank = blank_texts(texts)
        return [t or "" for t in texts], blank, count_texts(texts)

    # `shift_blank`, the side array of each row: it has a text (0), none (1: null, empty or only
    # whitespace), or a text without a vector (2, GOT-D: null in the `embedding` column, or zero,
    # the embedder having found nothing in it)
    NO_VECTOR: ClassVar[int] = 2

    def live(self, staged: Staged) -> np.ndarray:
        """Positions of the staged rows that have a text: the only ones that may be selected."""
        return np.flatnonzero(staged.concat("shift_blank", bool) == 0)

    def decision(
        self, n: int, live: np.ndarray, chosen: np.ndarray, column: str, values, no_vector=None
    ):
        """Keep `chosen` (positions among all `n` rows), remove the other live rows as not
        selected, the rows of `no_vector` (a mask) as no_vector and the rest as empty_text;
        `values` of the live rows become `column`."""
        keep = np.zeros(n, dtype=bool)
        keep[chosen] = True
        reason = np.full(n, None, dtype=object)
        reason[:] = f"{self.reason_prefix}:empty_text"  # np.full would copy the str n times
        if no_vector is not None:
            reason[no_vector] = f"{self.reason_prefix}:no_vector"
        reason[live] = f"{self.reason_prefix}:not_selected"
        reason[keep] = None
        full = np.zeros(n)
        full[live] = values
        mask = np.ones(n, dtype=bool)
        mask[live] = False
        array = pa.array(full, pa.float64(), mask=mask)
        return Decision(
            keep=keep, reason=reason, kept_columns={column: array}, removed_columns={column: array}
        )

    def target_texts(self, ctx: Context) -> list[str]:
        texts, blank = read_texts(self.target, ctx.columns.text, self.template, "--target")
        self.target_without_text = blank
        return texts


EMBEDDING = "embedding"  # the column `datasel embed` writes

# DSIR's bucket count is chosen per run among these (smoothing: PSEUDO_COUNTS spread over the
# buckets, add-one at 10,000; it beat add-one at 100,000 buckets and the reference's bare 1e-8
# floor on benchmarks/shift_quality.py's 100k-passage pools). Few target documents need few
# buckets, many target documents many (docs/benchmarks.md, "Shift": on 8 domains x 8 pool
# shapes each fixed count lost up to 0.3 precision somewhere; the cross-validated one <= 0.01).
BUCKET_CHOICES = (10_000, 30_000, 100_000, 300_000)
HASH_BUCKETS = 300_000  # every choice divides it, so one hashing serves them all
PSEUDO_COUNTS = 10_000.0
KL_BUCKETS = 10_000  # of the KL diagnostic
# pool rows that place each candidate's cut in the cross-validation, and at most this many of
# their n-grams (4 bytes each), so that long documents do not make the sample large
CV_POOL_ROWS = 20_000
CV_POOL_NGRAMS = 20_000_000


@register
@dataclass(kw_only=True)
class ShiftDsir(_Shift):
    """Select toward a target by importance resampling on hashed word uni+bigrams (DSIR).

    Xie et al., "Data Selection for Language Models via Importance Resampling" (NeurIPS 2023).
    Adds `dsir_logw` = log p_target(x) / q_pool(x) under bag-of-hashed-n-gram models; selects
    without replacement by Gumbel top-k on it (or plain top-k with --deterministic). Each shard's
    n-gram buckets are found in parallel and cached with the output; the pool's distribution is
    then counted over the whole pool (no sample), so a rerun with another --size or --target (and
    --overwrite) only redoes the sums. Two departures from the paper's fixed 10,000 buckets, both
    for pools and targets far smaller than the Pile: each pool document is weighed against the
    pool's distribution without itself (leave-one-out; its own rare n-grams would otherwise count
    against it), and the bucket count is chosen per run by leave-one-out
    cross-validation on the target: the count under which most target documents, each weighed by
    a target distribution fit without it, rank inside the selected share of the pool
    (`--buckets N` fixes N). Both distributions are smoothed with 10,000 pseudo-counts spread
    over the buckets.
    """

    name = "shift-dsir"
    reason_prefix = "dsir"
    example = "datasel shift dsir pool/ picked/ --target python-docs.jsonl --fraction 0.05"
    map_params = ("template", "buckets")

    buckets: int | None = param(
        None,
        help="hash buckets for word unigrams and bigrams (default: chosen by cross-validation "
        "on the target among 10k, 30k, 100k, 300k)",
    )
    deterministic: bool = param(
        False, help="plain top-k on the weights instead of Gumbel top-k sampling"
    )

    def __post_init__(self):
        super().__post_init__()
        if self.buckets is not None and self.buckets < 1:
            raise DataselError(f"--buckets must be >= 1, got {self.buckets}")

    def outputs(self, names: set[str], columns: Columns) -> set[str]:
        return names | {"dsir_logw"}

    @property
    def hash_buckets(self) -> int:
        return self.buckets or HASH_BUCKETS

    def fit(self, ctx: Context) -> None:
        from datasel.ops.ngrams import hashed_ngram_features

        self.target_features, self.target_nnz = hashed_ngram_features(
            self.target_texts(ctx), self.hash_buckets
        )

    def map(self, batch: pa.RecordBatch, ctx: Context) -> MapResult:
        from datasel.ops.ngrams import hashed_ngram_features

        texts, blank, counts = self.texts_and_blanks(batch, ctx)
        features, nnz = hashed_ngram_features(texts, self.hash_buckets)
        arrays = {"dsir_features": features, "dsir_nnz": nnz.astype(np.int32), "shift_blank": blank}
        return MapResult(batch, arrays=arrays, texts=counts)

    def choose_buckets(
        self, staged: Staged, units, target: np.ndarray, pool: np.ndarray, k: int, n_live: int
    ):
        """The bucket count under which the most target documents (each left out of the target's
        distribution) weigh at least the pool's k-th weight, that estimated on a sample of
        CV_POOL_ROWS pool rows (CV_POOL_NGRAMS n-grams at most); ties go to fewer buckets.
        `target` and `pool` are their bucket totals at `hash_buckets`. Returns the count and
        each count's recall."""
        from datasel.ops.ngrams import doc_log_ratios, fold_buckets

        if self.buckets or k in (0, n_live):
            return self.hash_buckets if self.buckets else BUCKET_CHOICES[0], {}
        share = min(1.0, CV_POOL_ROWS / staged.total, CV_POOL_NGRAMS / max(pool.sum(), 1))
        feats, nnz = _sample_features(staged, units, share, self.seed)
        if not len(nnz):
            return BUCKET_CHOICES[0], {}
        recall = {}
        for b in BUCKET_CHOICES:
            p, q, a = fold_buckets(target, b), fold_buckets(pool, b), PSEUDO_COUNTS / b
            w = doc_log_ratios(feats % b, nnz, p, q, a, counted_in="q")
            cut = np.sort(w)[max(len(w) - int(np.ceil(k / n_live * len(w))), 0)]
            t = self.target_features % b
            recall[b] = float(
                np.mean(doc_log_ratios(t, self.target_nnz, p, q, a, counted_in="p") >= cut)
            )
        return max(BUCKET_CHOICES, key=lambda b: (recall[b], -b)), recall

    def select(self, staged: Staged, ctx: Context) -> Decision:
        from datasel.ops.ngrams import doc_log_ratios, fold_buckets, hashed_kl
        from datasel.ops.topk import order_keys, streaming_top

        units = [i for i, n in enumerate(staged.rows) if n]
        pool = sum(
            (np.bincount(staged.array("dsir_features", i), minlength=self.hash_buckets)
             for i in units),
            np.zeros(self.hash_buckets),
        )  # fmt: skip
        target = np.bincount(self.target_features, minlength=self.hash_buckets)
        has_text = staged.concat("shift_blank", bool) == 0
        n_live = int(has_text.sum())
        k = self.budget(n_live, ctx)
        buckets, recall = self.choose_buckets(staged, units, target, pool, k, n_live)
        smoothing = PSEUDO_COUNTS / buckets
        p = fold_buckets(target, buckets)
        q = fold_buckets(pool, buckets)
        spans = [(i, slice(int(staged.offsets[i]), int(staged.offsets[i + 1]))) for i in units]
        weights = []  # per unit, of its rows with text: 8 bytes a row, computed once
        for i, rows in spans:
            feats, nnz = _unit_features(staged, i, buckets)
            w = doc_log_ratios(feats, nnz, p, q, smoothing, counted_in="q")
            weights.append(w[has_text[rows]])

        def ranked():  # (unit, its rows with text, their log-weights, their ranking keys)
            draws = np.random.default_rng(self.seed)  # one stream, drawn unit after unit
            for (i, rows), logw in zip(spans, weights, strict=True):
                key = logw if self.deterministic else logw + draws.gumbel(size=logw.shape)
                # as topk and gumbel_topk: NaN ranks with -inf, below every number
                yield i, rows, logw, order_keys(np.where(np.isnan(key), -np.inf, key))

        # Gumbel top-k (or top-k) in bounded memory, as topk takes them (ties by position)
        picked = np.zeros(staged.total, dtype=bool)
        values, low = [], np.inf
        for (_, rows, logw, _), take in streaming_top(ranked, k):
            values.append(logw)
            picked[rows][has_text[rows]] = take
            if take.any():
                low = np.minimum(low, logw[take].min())
        values = np.concatenate(values) if values else np.zeros(0)
        decision = self.decision(staged.total, has_text, picked, "dsir_logw", values)
        if self.deterministic and k:  # Gumbel top-k draws: no single cut-off on the weight
            ctx.cutoff("dsir_logw", low, f"top {k:,}: ≥ {low:.4g}")
        # the KL diagnostic at 10,000 buckets with add-one whatever the model, so that runs compare
        kl = KL_BUCKETS if self.hash_buckets % KL_BUCKETS == 0 else buckets
        chosen = _chosen_totals(staged, units, decision.keep, kl)
        smooth = lambda c: (c + 1) / (c.sum() + len(c))  # noqa: E731
        target = smooth(fold_buckets(p, kl))
        ctx.stats.update(
            {
                "selected": int(k),
                "buckets": buckets,
                "cv_recall": {f"{b:,}": round(r, 4) for b, r in recall.items()},
                "kl_buckets": kl,
                "kl_before": round(hashed_kl(target, smooth(fold_buckets(q, kl))), 5),
                "kl_after": round(hashed_kl(target, smooth(chosen)), 5),
                "target_rows_without_text": getattr(self, "target_without_text", 0),
            }
        )
        return decision


def _unit_features(staged: Staged, i: int, buckets: int) -> tuple[np.ndarray, np.ndarray]:
    """A staged unit's n-gram buckets (refolded into `buckets`) and counts per row."""
    feats = np.asarray(staged.array("dsir_features", i))
    return feats % feats.dtype.type(buckets), np.asarray(staged.array("dsir_nnz", i))


def _sample_features(staged: Staged, units, share: float, seed: int):
    """The n-gram buckets and counts per row of a uniform `share` of the pool rows with text."""
    draws = np.random.default_rng(seed + 1)
    feats, nnz = [], []
    for i in units:
        has_text = np.asarray(staged.array("shift_blank", i)) == 0
        take = has_text & (draws.random(staged.rows[i]) < share if share < 1 else True)
        counts = np.asarray(staged.array("dsir_nnz", i))
        feats.append(np.asarray(staged.array("dsir_features", i))[np.repeat(take, counts)])
        nnz.append(counts[take])
    return np.concatenate(feats), np.concatenate(nnz)


def _chosen_totals(staged: Staged, units: list[int], keep: np.ndarray, buckets: int) -> np.ndarray:
    """Bucket totals of the selected documents (features refolded into `buckets`)."""
    chosen = np.zeros(buckets)
    for i in units:
        n = staged.rows[i]
        feats, nnz = _unit_features(staged, i, buckets)
        sel = np.repeat(keep[staged.offsets[i] : staged.offsets[i] + n], nnz)
        chosen += np.bincount(feats[sel], minlength=buckets)
    return chosen


# Pool rows GOT-D's transport is solved on (see ShiftGotd.ot_sample): 200,000 x 384 float32 is
# 307 MB.
OT_SAMPLE = 200_000


@register
@dataclass(kw_only=True)
class ShiftGotd(_Shift):
    """Select the documents whose optimal-transport gradient pulls the pool toward a target (GOT-D).

    Kang et al., "Get more for less: Principled Data Selection for Warming Up Fine-Tuning in LLMs"
    (ICLR 2024). Entropic OT between the pool's and the target's embeddings, whitened on the
    pool's covariance (log-domain Sinkhorn, blocked so no full cost matrix is held; torch, on
    GPU when present); the pool-side dual potential, calibrated as f_i minus the mean of the
    others, is the gradient of the OT distance with respect to each candidate's mass; the most
    negative are selected. Adds `gotd_grad`. Rows without text go to _removed/ as
    `gotd:empty_text`, rows with text but no vector (null in the `embedding` column, or zero:
    nothing the embedder could read) as `gotd:no_vector`.
    """

    name = "shift-gotd"
    reason_prefix = "gotd"
    example = "datasel shift gotd pool/ picked/ --target python-docs.jsonl --size 4000"
    map_params = ("target", "template", "model", "dim", "fit_sample", "seed")

    model: str = param(
        "auto",
        help="embeddings: auto (the `embedding` columns of pool and target when the pool has one, else hashing) | column | hashing (word and punctuation uni+bigram TF-IDF + SVD, no model) | minilm | a local model folder",
    )
    dim: int = param(256, help="embedding size for the hashing backend")
    fit_sample: int = param(
        20_000, help="pool documents (plus the target) to fit the hashing embedder on"
    )
    eps: float = param(0.1, help="entropic regularisation of the OT (in cosine-cost units)")
    whiten: bool = param(
        True,
        help="whiten the embeddings on the pool's covariance before the transport (Su et al. 2021), so that near domains separate; --no-whiten: raw cosines, as in the paper",
    )
    max_target: int = param(
        5_000,
        help="a larger target is summarised by this many k-means centroids with their masses (on CPU fewer, to keep pool x target under 1e9 pairs, at least 300)",
    )
    ot_sample: int = param(
        OT_SAMPLE,
        help="pool rows (with text) the transport is solved on, drawn uniformly with --seed from a larger pool; every row's gradient then comes from that solution (its soft c-transform), so memory stays bounded; a pool of at most this many is solved whole",
    )
    device: str = param("auto", help="auto | cpu | cuda")

    @property
    def needs(self) -> Needs:
        torch = neural(self.model)  # a torch model: one model on one device
        return replace(super().needs, model=torch, gpus=int(torch), single_process=torch)

    def __post_init__(self):
        super().__post_init__()
        if self.ot_sample < 1:
            raise ValueError(f"ot_sample must be >= 1, got {self.ot_sample}")

    def check(self) -> None:
        from datasel.stages.embed import check_model

        require("embed", "shift gotd", ("torch",))  # Sinkhorn (faiss, for a big target, is core)
        check_model(self.model, "shift gotd")
        super().check()

    def reads(self, columns: Columns) -> dict[str, str]:
        column = {EMBEDDING: "model column"} if self.model == "column" else {}
        return super().reads(columns) | column

    def outputs(self, names: set[str], columns: Columns) -> set[str]:
        return names | {"gotd_grad"}

    def fit(self, ctx: Context) -> None:
        has_column = EMBEDDING in ctx.first_rows().column_names
        self.use_column = self.model == "column" or (self.model == "auto" and has_column)
        if self.use_column:
            if not has_column:
                raise DataselError(
                    f"--model column: the pool has no `{EMBEDDING}` column; run `datasel embed` first"
                )
            self.target_emb = self._target_embeddings()
            return
        target = self.target_texts(ctx)
        self.unload()  # hashing: fit anew on this input's sample and target
        self.target_emb = self.embedder(ctx, target).encode(target).astype(np.float32)

    def _target_embeddings(self) -> np.ndarray:
        from datasel.stages.embed import read_vectors

        parts, self.target_without_text = [], 0
        for unit in plan_units(self.target):
            for batch in read_unit(unit, Columns(text=None)):
                if EMBEDDING not in batch.schema.names:
                    raise DataselError(
                        f"--target {self.target}: no `{EMBEDDING}` column, while the pool has "
                        "one; embed the target with the pool's model, or give --model hashing"
                    )
                # `datasel embed` leaves rows without text (or without a word) with a null vector
                vectors = read_vectors(batch.column(EMBEDDING), EMBEDDING, batch.column("id"))
                some = has_vector(vectors)
                self.target_without_text += len(vectors) - int(some.sum())
                parts.append(vectors[some])
        if not parts:
            raise DataselError(f"--target {self.target}: holds no rows")
        if not sum(map(len, parts)):
            raise DataselError(f"--target {self.target}: holds no rows with a vector")
        return np.concatenate(parts)

    def embedder(self, ctx: Context | None = None, target: list[str] | None = None):
        """This process's embedder: hashing, fitted in `fit` on a sample of the pool and the
        target (it travels with the stage), or a torch model, loaded again where map runs."""
        return self.loaded(
            "embedder", lambda: self._load_embedder(ctx, target), travels=not neural(self.model)
        )

    def _load_embedder(self, ctx, target):
        from datasel.stages.embed import fit_hashing
        from scorers.embed import load_embedder

        if self.model in ("hashing", "auto"):
            sample = self.texts(ctx.sample(self.fit_sample), ctx)
            texts = [t for t, b in zip(sample, blank_texts(sample), strict=True) if not b] + target
            return fit_hashing(texts, dim=self.dim, reduce="svd", seed=self.seed, punct=True)
        try:
            return load_embedder(self.model, device=self.device)
        except (FileNotFoundError, ValueError, ImportError) as e:
            raise DataselError(f"--model {self.model}: {str(e).splitlines()[0]}") from None

    def map(self, batch: pa.RecordBatch, ctx: Context) -> MapResult:
        texts, blank, counts = self.texts_and_blanks(batch, ctx)
        x = np.zeros((batch.num_rows, self.target_emb.shape[1]), np.float32)  # blank rows: 0
        if not self.use_column:
            x[~blank] = self.embedder(ctx).encode(
                [t for t, b in zip(texts, blank, strict=False) if not b]
            )
        else:
            from datasel.stages.embed import read_vectors

            if EMBEDDING not in batch.schema.names:
                raise DataselError(f"no column '{EMBEDDING}' in every input file")
            texts = pa.array(~blank)
            column, ids = batch.column(EMBEDDING).filter(texts), batch.column("id").filter(texts)
            vectors = read_vectors(column, EMBEDDING, ids, x.shape[1])
            if vectors.shape[1] != x.shape[1]:
                raise DataselError(
                    f"the pool's embeddings have {vectors.shape[1]} dimensions and the "
                    f"target's {x.shape[1]}: embed both with the same model"
                )
            x[~blank] = vectors
        # a row with text but no vector (null, or zero: nothing the embedder could read) would be
        # whitened to minus the pool's mean and ranked there: removed as no_vector instead
        status = np.where(blank, 1, np.where(has_vector(x), 0, self.NO_VECTOR))
        arrays = {"gotd_emb": x, "shift_blank": status.astype(np.uint8)}
        return MapResult(batch, arrays=arrays, texts=counts)

    def select(self, staged: Staged, ctx: Context) -> Decision:
        from datasel.ops.sinkhorn import sinkhorn
        from datasel.ops.topk import order_keys, streaming_top
        from datasel.ops.whiten import Whitening

        status = staged.concat("shift_blank", np.uint8)
        no_vector = status == self.NO_VECTOR
        live = np.flatnonzero(status == 0)
        if not len(live):  # nothing to transport: every row goes as empty_text or no_vector
            ctx.stats.update({"selected": 0, "ot_rows": 0})
            return self.decision(staged.total, live, live, "gotd_grad", np.zeros(0), no_vector)
        draws = np.random.default_rng(self.seed)
        solved = sample_rows(live, self.ot_sample, draws)
        x = gather_rows(staged, "gotd_emb", solved)
        space = Whitening.fit(x) if self.whiten else (lambda v, out=None: v)
        x = space(x, out=x)  # the solve's rows, mapped in place
        points, mass = summarise(
            space(self.target_emb),
            target_points(len(solved), self.max_target, self.device),
            self.seed,
        )

        def solve(x):  # the OT between pool vectors `x` (mapped by `space`) and the target
            return sinkhorn(x, points, b=mass, eps=self.eps, cost="cosine", device=self.device)

        ot = solve(x)
        del x
        gradients = self.gradients(
            staged, ctx, ot, points, mass, live, space, exact=len(solved) == len(live)
        )

        def ranked():  # (positions of a unit's rows with text, their gradients, ranking keys)
            for at, grad in gradients():
                # the lowest gradient first; NaN last, as topk(largest=False) ranks it
                yield at, grad, order_keys(np.where(np.isnan(grad), -np.inf, -grad))

        k = self.budget(len(live), ctx)
        picked = np.zeros(staged.total, dtype=bool)
        values, cut = [], -np.inf
        for (at, grad, _), take in streaming_top(ranked, k):
            values.append(grad)
            picked[at[take]] = True
            if take.any():
                cut = max(cut, float(grad[take].max()))
        chosen = np.flatnonzero(picked)
        after = ot
        if k:
            after = solve(space_rows(staged, sample_rows(chosen, self.ot_sample, draws), space))
            ctx.cutoff("gotd_grad", cut, f"lowest {k:,}: ≤ {cut:.4g}")
        ctx.stats.update(
            {
                "selected": int(k),
                "ot_before": round(float(ot.cost), 5),
                "ot_after": round(float(after.cost), 5),
                "sinkhorn_iterations": int(ot.n_iter),
                "target_points": int(len(points)),
                # pool rows the transport was solved on; the others' potentials are its soft
                # c-transform (all of them when the pool has no more than --ot-sample)
                "ot_rows": int(len(solved)),
                "ot_after_rows": int(min(k, self.ot_sample)),
                "target_rows_without_text": getattr(self, "target_without_text", 0),
            }
        )
        values = np.concatenate(values) if values else np.zeros(0)
        return self.decision(staged.total, live, chosen, "gotd_grad", values, no_vector)

    def gradients(
        self, staged: Staged, ctx: Context, ot, points, mass, live, space, *, exact: bool
    ):
        """A callable whose every call yields, unit by unit, the positions of the rows with text
        and their calibrated OT gradients (the pool's vectors mapped by `space`, as solved).
        Solved on the whole pool (`exact`): from the solve's potentials. Solved on a sample: each
        row's potential is the soft c-transform of the target's potential, computed once in a
        pass over the units, a block of rows at a time, and kept on disk, so no more than a block
        of vectors and a unit's potentials are held."""
        from datasel.ops.sinkhorn import gotd_gradient, soft_c_transform

        bounds = np.searchsorted(live, staged.offsets)  # unit i's: live[bounds[i] : bounds[i+1]]
        units = [(i, slice(bounds[i], bounds[i + 1])) for i in range(len(staged.rows))]
        units = [(i, rows) for i, rows in units if rows.stop > rows.start]
        if exact:
            grad = gotd_gradient(ot.f)
            return lambda: ((live[rows], grad[rows]) for _, rows in units)
        folder = ctx.work / "gotd-select"
        folder.mkdir(parents=True, exist_ok=True)
        total = 0.0
        for i, rows in units:
            at = live[rows]
            f = [
                soft_c_transform(
                    space_rows(staged, at[j : j + BLOCK_ROWS], space),
                    points,
                    ot.g,
                    b=mass,
                    eps=self.eps,
                    cost="cosine",
                    device=self.device,
                )
                for j in range(0, len(at), BLOCK_ROWS)
            ]
            f = np.concatenate(f)
            total += f.sum()
            np.save(folder / f"f-{i}.npy", f)
        n = len(live)
        return lambda: (
            (live[rows], gotd_gradient(np.load(folder / f"f-{i}.npy"), total, n))
            for i, rows in units
        )


# Pool rows whose vectors the c-transform pass reads at a time (50 MB at 384 dimensions)
BLOCK_ROWS = 32_768


def sample_rows(rows: np.ndarray, n: int, draws: np.random.Generator) -> np.ndarray:
    """`rows` when they are no more than `n`, else `n` of them drawn uniformly, in order."""
    if len(rows) <= n:
        return rows
    return np.sort(draws.choice(rows, n, replace=False))


def space_rows(staged: Staged, rows: np.ndarray, space) -> np.ndarray:
    """The embeddings of the rows at positions `rows`, mapped by `space` in place."""
    x = gather_rows(staged, "gotd_emb", rows)
    return space(x, out=x)


def gather_rows(staged: Staged, name: str, rows: np.ndarray) -> np.ndarray:
    """The rows at positions `rows` (sorted, among all staged rows) of a side array, read unit
    by unit through a memory map dropped after each unit: only those rows are held, once."""
    out = None
    bounds = np.searchsorted(rows, staged.offsets)
    for i in range(len(staged.rows)):
        at = slice(bounds[i], bounds[i + 1])
        if at.stop > at.start:
            vectors = staged.array(name, i)
            if out is None:
                out = np.empty((len(rows), *vectors.shape[1:]), vectors.dtype)
            out[at] = vectors[rows[at] - staged.offsets[i]]
            del vectors
    if out is None:
        raise ValueError("gather_rows: no rows to gather")
    return out


# Pool x target pairs one Sinkhorn iteration may cost on a CPU (~10 s at 1e9 on 2 cores, for
# 256-384 dims): a bigger target is summarised by fewer support points there.
CPU_PAIR_BUDGET = 1e9
MIN_TARGET_POINTS = 300


def target_points(n_pool: int, max_target: int, device: str) -> int:
    """How many support points the target may keep against a pool of `n_pool` documents."""
    from datasel.device import pick_device

    if pick_device(device, "shift gotd", "embed") != "cpu":
        return max_target
    return min(max_target, max(MIN_TARGET_POINTS, int(CPU_PAIR_BUDGET // max(1, n_pool))))


def summarise(y: np.ndarray, max_points: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The target as at most `max_points` weighted support points (k-means centroids + masses)."""
    if len(y) <= max_points:
        return y, np.full(len(y), 1.0 / len(y))
    from datasel.ops.kmeans import assign, fit_kmeans

    centroids = fit_kmeans(y, max_points, seed=seed)
    labels, _ = assign(y, centroids)
    mass = np.bincount(labels, minlength=max_points).astype(np.float64)
    used = mass > 0
    return centroids[used], mass[used] / mass.sum()
