"""Diversity sampling over k-means clusters: kMQ and kIDS of Yu et al. 2024, "Diversify and
Conquer: Diversity-Centric Data Selection with Iterative Refinement", with two-level quotas over
groups of clusters (Vo et al. 2024, "Automatic Data Curation for Self-Supervised Learning")."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from datasel.errors import DataselError
from datasel.io import Columns
from datasel.stage import (
    Context,
    Decision,
    MapResult,
    Needs,
    Staged,
    blank_texts,
    check_budget,
    param,
    register,
)
from datasel.stage import budget as select_budget
from datasel.stages.embed import (
    EmbeddingStage,
    check_backend,
    check_model,
    has_vector,
    neural,
    read_vectors,
)

# a unit's share of the budget ~ its size ** power: equal (kMQ), sqrt (temperature sampling),
# proportional (as a random sample)
QUOTAS = {"equal": 0.0, "sqrt": 0.5, "proportional": 1.0}
TOP_CLUSTERS = 50  # per-cluster statistics kept in the manifest for the largest clusters only
HASHING_FIT = 10_000  # rows the hashing embedder is fitted on (idf + SVD), out of --fit-sample


@register
@dataclass(kw_only=True)
class Diversify(EmbeddingStage):
    """Select a diverse subset: k-means clusters, a quota per cluster, sampling inside each.

    Adds `cluster` (int32) and `cluster_dist` (float32, squared distance to the centroid,
    2 - 2 cos for unit vectors) to every row. Vectors come from the `embedding` column when the
    input has one (`datasel embed`), else from --model, computed on the fly and not kept.
    k-means (faiss, spherical) is fitted on --fit-sample rows; every row is then assigned.
    Rows whose text is null, empty or only whitespace have no meaning to cluster: they go to
    _removed/ as `diversify:empty_text`, and rows without a vector (null in the column, or a text
    in which the hashing embedder finds no word: punctuation only) as `diversify:no_vector`;
    --size / --fraction count the other rows.

    Quotas: a unit's share of the budget follows its size ** p: --quota equal (p = 0) splits the
    budget equally, a unit smaller than its share giving its leftover to the others (kMQ); sqrt
    (p = 0.5) flattens unequal sizes without equalising them; proportional (p = 1) keeps the
    sizes. --quota-by bytes (default) measures sizes and shares in text bytes: a unit's share of
    the selected *text* follows its text ** p (rows per unit = its text share over its mean row
    bytes), so a domain of short documents is not starved by one of long ones; rows counts rows,
    as kMQ. With --levels 1 the units are the clusters. With --levels 2 (default) the clusters
    are first grouped, by spectral clustering of their topology graph (two clusters are linked
    by the rows that have one as nearest and the other as second-nearest centroid: Martinetz &
    Schulten 1994); --quota splits the budget across groups, then --cluster-quota across the
    clusters of each group (equal and equal: the balanced hierarchical sampling of Vo et al.
    2024). A large domain gets many clusters from k-means (about in proportion to its size and
    spread) but few groups, so groups stand for domains; the count of groups is the largest
    eigengap among counts whose groups are nearly disconnected (`ops.kmeans.spectral_groups`),
    so a domain of loosely linked parts stays one group rather than earning a quota per part.
    The defaults, equal text per group and proportional inside (a uniform sample of each group:
    UniMax, Chung et al. 2023, with groups for languages), were chosen by the held-out loss of a
    model trained on the selection, mean over domains (docs/methods.md, "diversify"): equal
    quotas per cluster over-sample a domain's rare clusters, and row quotas give long-document
    domains the text. Inside a cluster rows are drawn uniformly, or with probability
    proportional to exp(score / --temperature) by --weight-by, skipping rows whose cosine with a
    row already taken from the cluster is >= --max-similarity (near duplicates, as SemDeDup:
    Abbas et al. 2023); a cluster short of distinct rows gives its leftover to the others.

    kIDS (--feedback COLUMN): a per-row reward computed beforehand, higher = the cluster earns
    more of the next budget. Each cluster's weight is the softmax over clusters of the mean
    feedback of its already selected rows / --feedback-temperature; the next round's budget is
    allocated by those weights (times the quota rule's own shares), never re-picking a selected
    row. Previously selected rows are those with a true/non-zero --selected-column; they are
    kept, new picks are added (`diversify_round`: 0 = selected before, 1.. = this run's rounds).
    With --rounds R, R rounds run inside one selection, each weighting clusters by the feedback
    of all rows selected so far. In the paper the feedback is the model's per-sample loss after
    training on the previous round; a fixed column here (a quality score, a reference model's
    negated loss) makes --rounds an approximation without retraining. For the real loop, run
    one round per call: train, score the selected rows, and call again with --selected-column.
    """

    name = "diversify"
    example = "datasel diversify embedded/ diverse/ --k 100 --fraction 0.1"
    map_params = (
        "k",
        "model",
        "embedding_column",
        "dim",
        "reduce",
        "fit_sample",
        "niter",
        "seed",
        "device",
        "batch_size",
        "max_similarity",
    )

    k: int = param(100, help="k-means clusters")
    size: int | None = param(None, help="rows to select")
    fraction: float | None = param(
        None, help="share of the rows with text to select (instead of --size)"
    )
    levels: int = param(
        2, help="2: quotas per group of clusters (~ domains), then per cluster; 1: per cluster"
    )
    groups: int = param(
        0, help="--levels 2: number of groups (0: by the largest eigengap of separated groups)"
    )
    quota: str = param(
        "equal",
        help="budget across groups (--levels 2) or clusters (1), by size ** p: equal (p=0, kMQ) "
        "| sqrt (0.5) | proportional (1)",
    )
    cluster_quota: str = param(
        "proportional", help="--levels 2: a group's quota across its clusters, as --quota"
    )
    quota_by: str = param(
        "bytes",
        help="what the quotas share out: bytes (the selected text; sizes in text bytes) | rows",
    )
    max_similarity: float = param(
        0.95,
        help="skip a row whose cosine with a row already picked from its cluster is at least "
        "this (near duplicates, as SemDeDup; 1: off)",
    )
    weight_by: str | None = param(
        None, help="score column: sample within a cluster with probability ~ exp(score/T)"
    )
    temperature: float = param(1.0, help="T of --weight-by")
    feedback: str | None = param(
        None, help="kIDS: per-row reward column; clusters get budget by softmax of its mean"
    )
    selected_column: str = param(
        "selected", help="kIDS: boolean/int column marking rows selected in earlier rounds"
    )
    feedback_temperature: float = param(1.0, help="kIDS: softmax temperature of the feedback")
    rounds: int = param(1, help="kIDS: selection rounds inside this run (needs --feedback)")
    model: str = param(
        "auto",
        help="auto (the embedding column if present, else hashing) | column | hashing | "
        "minilm | saved hashing .npz | local model folder",
    )
    embedding_column: str = param("embedding", help="column of precomputed vectors")
    dim: int = param(256, help="hashing backend: vector width")
    reduce: str = param("svd", help="hashing backend: svd (LSA) | random (projection)")
    fit_sample: int = param(100_000, help="rows k-means is fitted on (hashing: the first 10,000)")
    niter: int = param(20, help="k-means iterations")
    seed: int = param(0, help="seed of k-means, the hashing backend and the sampling")
    device: str = param("auto", help="neural models: auto | cpu | cuda")
    batch_size: int = param(64, help="neural models: texts per forward pass")

    def __post_init__(self):
        check_budget(self.size, self.fraction)
        if self.k < 1:
            raise ValueError(f"k must be at least 1, got {self.k}")
        for name in ("quota", "cluster_quota"):
            if getattr(self, name) not in QUOTAS:
                raise ValueError(
                    f"{name} must be equal, sqrt or proportional, got {getattr(self, name)!r}"
                )
        if self.quota_by not in ("bytes", "rows"):
            raise ValueError(f"quota_by must be bytes or rows, got {self.quota_by!r}")
        if self.levels not in (1, 2):
            raise ValueError(f"levels must be 1 or 2, got {self.levels}")
        if self.groups < 0:
            raise ValueError(f"groups must be >= 0 (0: automatic), got {self.groups}")
        for name in ("temperature", "feedback_temperature"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if not 0 < self.max_similarity <= 1:
            raise ValueError(f"max_similarity must be in (0, 1], got {self.max_similarity}")
        if self.rounds < 1:
            raise ValueError(f"rounds must be at least 1, got {self.rounds}")
        if self.rounds > 1 and self.feedback is None:
            raise ValueError("rounds > 1 needs --feedback (the rounds differ only by it)")
        if self.fit_sample < 1 or self.niter < 1:
            raise ValueError("fit_sample and niter must be at least 1")
        if self.model not in ("auto", "column"):
            check_backend(self.model, self.reduce, self.dim, self.device)

    # ---------------------------------------------------------------------------- fit + map

    def _use_torch(self) -> bool:  # known once fit has chosen the backend
        return neural(getattr(self, "_backend", "column"))

    @property
    def needs(self) -> Needs:
        torch = self._use_torch()  # a torch model: one model on one device
        return Needs(model=True, gpus=int(torch), single_process=torch)

    def check(self) -> None:
        check_model(self.model, "diversify")

    def reads(self, columns: Columns) -> dict[str, str]:
        named = {"weight-by": self.weight_by, "feedback": self.feedback}
        if self.model == "column" or self.embedding_column != type(self).embedding_column:
            named["embedding-column"] = self.embedding_column
        return super().reads(columns) | {col: key for key, col in named.items() if col}

    def numeric_reads(self) -> set[str]:
        return {col for col in (self.weight_by, self.feedback) if col}

    def outputs(self, names: set[str], columns: Columns) -> set[str]:
        added = {"cluster", "cluster_dist"} | ({"diversify_round"} if self.feedback else set())
        return names | added

    def fit(self, ctx: Context) -> None:
        if _all_staged(ctx):  # map output cached from a run with the same map_params
            self._check_columns(ctx.first_rows().schema.names)
            self._k = self._clamped_k(_staged_rows(ctx), ctx)
            return
        sample = ctx.sample(self.fit_sample)
        sample = sample.filter(pa.array(~blank_texts(sample.column(ctx.columns.text))))
        if not sample.num_rows:
            raise DataselError("no row of the input has a text: nothing to cluster")
        names = sample.schema.names
        self._check_columns(names)
        self._backend = self._choose_backend(names)
        if self._backend == "column":
            column = self.embedding_column
            x = read_vectors(sample.column(column), column, sample.column("id"))
        else:
            self.unload()  # fit anew on this input's sample
            x = self.embedder(ctx, sample).encode(ctx.texts(sample))
        x = x[has_vector(x)]  # a row without a vector is removed in map (no_vector)
        if not len(x):
            raise DataselError("no row of the input has a vector: nothing to cluster")
        if self.k > len(x) >= self.fit_sample:
            raise DataselError(
                f"--k {self.k} is larger than the number of rows of --fit-sample "
                f"{self.fit_sample} ({len(x)})"
            )
        self._k = self._clamped_k(len(x), ctx)
        from datasel.ops.kmeans import fit_kmeans

        self._dim = x.shape[1]
        self.centroids = fit_kmeans(_unit(x), self._k, niter=self.niter, seed=self.seed)

    def _clamped_k(self, rows: int, ctx: Context) -> int:
        """--k, or the number of rows when there are fewer (one row a cluster), with a warning."""
        if self.k <= rows:
            return self.k
        ctx.warn(
            f"diversify: --k {self.k} is larger than the number of rows ({rows}): using k={rows}"
        )
        return rows

    def _check_columns(self, names: list[str]) -> None:
        for flag, col in (("--weight-by", self.weight_by), ("--feedback", self.feedback)):
            if col is not None and col not in names:
                raise DataselError(f"{flag}: no column '{col}'; columns are: {', '.join(names)}")
        if self.feedback is not None and self.rounds == 1 and self.selected_column not in names:
            raise DataselError(
                f"--feedback needs a previous selection (no column '{self.selected_column}'; "
                "set --selected-column) or --rounds >= 2"
            )

    def _choose_backend(self, names: list[str]) -> str:
        # a column named on purpose must exist: a typo would silently embed the texts instead
        named = self.embedding_column != type(self).embedding_column
        if self.model == "column" or (
            self.model == "auto" and (named or self.embedding_column in names)
        ):
            if self.embedding_column not in names:
                raise DataselError(
                    f"no column '{self.embedding_column}': run `datasel embed` first, or give "
                    "--model hashing"
                )
            return "column"
        return "hashing" if self.model == "auto" else self.model

    def vectors(self, batch: pa.RecordBatch, ctx: Context) -> np.ndarray:
        """Unit vectors of the rows of `batch`; zero where a row has none (null in the column,
        or a text without a word for the hashing embedder)."""
        if self._backend == "column":
            if self.embedding_column not in batch.schema.names:
                raise DataselError(f"no column '{self.embedding_column}' in every input file")
            column = self.embedding_column
            x = read_vectors(batch.column(column), column, batch.column("id"), self._dim)
        else:
            x = self.embedder(ctx).encode(ctx.texts(batch))
        if x.shape[1] != self._dim:
            raise DataselError(
                f"column '{self.embedding_column}' mixes vectors of dimensions {self._dim} "
                f"and {x.shape[1]}"
            )
        return _unit(x)

    def _model_spec(self) -> tuple[str, int]:
        return self._backend, HASHING_FIT

    def map(self, batch: pa.RecordBatch, ctx: Context) -> MapResult:
        from datasel.ops.kmeans import assign

        blank = blank_texts(batch.column(ctx.columns.text))
        x = np.zeros((batch.num_rows, self._dim), np.float32)
        if not blank.all():
            x[~blank] = self.vectors(batch.filter(pa.array(~blank)), ctx)
        # no vector (null, or zero: the hashing embedder found no word in the text) would join
        # whichever centroid is shortest and be sampled there: set aside, as blank texts are
        none = ~blank & ~has_vector(x)
        batch, gone = _set_aside(batch, blank, none)
        if not batch.num_rows:
            return MapResult(batch, removed=gone)
        x = x[~(blank | none)]
        labels, dist, second = assign(x, self.centroids, second=True)
        labels, second = labels.astype(np.int32), second.astype(np.int32)
        arrays = {"cluster": labels, "cluster2": second}
        if self.max_similarity < 1:  # for near-duplicate checks in select: 2 bytes a dimension
            arrays["vec"] = x.astype(np.float16)
        for name, values in (("cluster", labels), ("cluster_dist", dist)):
            if name in batch.schema.names:
                batch = batch.drop_columns([name])
            batch = batch.append_column(name, pa.array(values))
        return MapResult(batch, removed=gone, arrays=arrays)

    # ------------------------------------------------------------------------------ select

    def select(self, staged: Staged, ctx: Context) -> Decision:
        from datasel.ops.kmeans import cluster_graph, spectral_groups
        from datasel.ops.quotas import kids_weights, sample_distinct, sample_within

        labels = staged.concat("cluster", np.int32)
        n, k = len(labels), self._k
        scores = _floats(staged, self.weight_by, fill="min") if self.weight_by else None
        feedback = _floats(staged, self.feedback, fill="nan") if self.feedback else None
        picked = np.zeros(n, bool)
        if self.feedback is not None and self.selected_column in staged_names(staged):
            picked = _floats(staged, self.selected_column, fill="zero") != 0
        rounds_of = np.where(picked, 0, -1).astype(np.int32)
        avail = n - int(picked.sum())
        budget = select_budget(avail, self.size, self.fraction, ctx, "diversify", total=n)

        nbytes = _text_bytes(staged, ctx.columns.text)
        row_bytes = None  # mean text bytes of a row, per cluster
        if self.quota_by == "bytes":
            total = np.bincount(labels, weights=nbytes, minlength=k)
            row_bytes = total / np.maximum(np.bincount(labels, minlength=k), 1)
        groups = np.zeros(k, np.int64)
        if self.levels == 2:
            graph = cluster_graph(labels, staged.concat("cluster2", np.int32), k)
            groups = spectral_groups(graph, self.groups or None)
        rng = np.random.default_rng(self.seed)
        vectors = _Vectors(staged) if self.max_similarity < 1 else None
        per_round = np.full(self.rounds, budget // self.rounds)
        per_round[: budget % self.rounds] += 1
        history, quotas = [], np.zeros(k, np.int64)
        for r, b in enumerate(per_round, start=1):
            sizes = np.bincount(labels[~picked], minlength=k)
            weights = None
            if feedback is not None and picked.any():
                weights = kids_weights(labels, feedback, picked, k, self.feedback_temperature)

            def rule(sizes, b=int(b), weights=weights):
                return self._quotas(sizes, groups, b, weights, row_bytes)

            quota = rule(sizes)
            quotas += quota  # as allotted before any cluster fell short of distinct rows
            done = np.flatnonzero(picked)
            if self.max_similarity < 1:
                new = sample_distinct(
                    labels,
                    rule,
                    rng,
                    vectors,
                    self.max_similarity,
                    scores,
                    self.temperature,
                    done,
                    k=k,
                )
            else:
                new = sample_within(labels, quota, rng, scores, self.temperature, done)
            picked[new] = True
            rounds_of[new] = r
            if weights is not None:
                top = np.argsort(-weights, kind="stable")[:10]
                history.append(
                    {
                        "round": r,
                        "picked": int(new.size),
                        "top_clusters": top.tolist(),
                        "top_weights": np.round(weights[top], 4).tolist(),
                    }
                )
            else:
                history.append({"round": r, "picked": int(new.size)})

        reason = np.where(picked, None, "diversify:not_sampled").astype(object)
        ctx.stats.update(self._stats(labels, groups, picked, scores, history, nbytes))
        ctx.cutoff("cluster", {c: int(quotas[c]) for c in np.unique(labels).tolist()}, "quota")
        kept = {}
        if self.feedback is not None:
            kept["diversify_round"] = pa.array(rounds_of)
        return Decision(keep=picked, reason=reason, kept_columns=kept)

    def _quotas(self, sizes, groups, budget, weights, row_bytes) -> np.ndarray:
        """The quota rule's integer quotas; with kIDS weights, its shares times the weights."""
        from datasel.ops.quotas import allocate, allocate_nested, text_weights

        p, pc = QUOTAS[self.quota], QUOTAS[self.cluster_quota]
        if weights is None and self.levels == 2:
            return allocate_nested(sizes, groups, budget, p, pc, row_bytes)
        live = sizes > 0
        size = sizes.astype(np.float64)
        mass = size if row_bytes is None else size * row_bytes
        if self.levels == 2:  # group share x the cluster's share of its group, by the rules
            group_rows = np.bincount(groups, weights=size, minlength=groups.max() + 1)
            group_mass = np.bincount(groups, weights=mass, minlength=group_rows.size)
            group_w = text_weights(group_rows, group_mass, p)
            inside = np.where(live, text_weights(size, mass, pc), 0.0)
            inside_sum = np.bincount(groups, weights=inside, minlength=group_w.size)
            base = group_w[groups] / group_w.sum() * inside / np.maximum(inside_sum[groups], 1e-300)
        else:
            base = np.where(live, text_weights(size, mass, p), 0.0)
        return allocate(sizes, budget, base if weights is None else base * weights)

    def _stats(self, labels, groups, picked, scores, history, nbytes) -> dict:
        k = self._k
        size = np.bincount(labels, minlength=k)
        got = np.bincount(labels[picked], minlength=k)
        top = np.argsort(-size, kind="stable")[:TOP_CLUSTERS]
        stats = {
            "k": k,
            "nonempty_clusters": int((size > 0).sum()),
            "cluster_size": _summary(size[size > 0]),
            "picked_per_cluster": _summary(got[size > 0]),
            "clusters_picked": int((got > 0).sum()),
            # nats; ln(nonempty clusters) when every cluster holds the same share
            "cluster_entropy_before": _entropy(size),
            "cluster_entropy_after": _entropy(got),
            "cluster_entropy_max": round(float(np.log(max(1, (size > 0).sum()))), 4),
            # text: a domain of long documents gets far more of it per row than one of short
            "text_bytes": {"all": int(nbytes.sum()), "picked": int(nbytes[picked].sum())},
            "largest_clusters": {
                "cluster": top.tolist(),
                "size": size[top].tolist(),
                "picked": got[top].tolist(),
            },
        }
        if scores is not None:
            total = np.bincount(labels[picked], weights=scores[picked], minlength=k)
            mean = np.where(got > 0, total / np.maximum(got, 1), np.nan)
            stats["largest_clusters"]["mean_score"] = [
                None if np.isnan(v) else round(float(v), 4) for v in mean[top]
            ]
            stats["mean_score"] = {
                "picked": round(float(scores[picked].mean()), 4) if picked.any() else None,
                "all": round(float(scores.mean()), 4),
            }
        if self.levels == 2:
            group_size = np.bincount(groups, weights=size).astype(np.int64)
            group_got = np.bincount(groups, weights=got).astype(np.int64)
            n_groups = int(groups.max()) + 1
            text = np.bincount(groups[labels], weights=nbytes, minlength=n_groups)
            text_got = np.bincount(
                groups[labels[picked]], weights=nbytes[picked], minlength=n_groups
            )
            order = np.argsort(-group_size, kind="stable")[:TOP_CLUSTERS]
            stats["groups"] = {
                "count": n_groups,
                "clusters": np.bincount(groups)[order].tolist(),
                "size": group_size[order].tolist(),
                "picked": group_got[order].tolist(),
                "text_bytes": text[order].astype(np.int64).tolist(),
                "picked_text_bytes": text_got[order].astype(np.int64).tolist(),
            }
        stats["rounds"] = history
        return stats


class _Vectors:
    """Rows' unit vectors from the staged float16 side arrays, by global row index."""

    def __init__(self, staged: Staged):
        self.offsets = staged.offsets
        self.parts = [
            staged.array("vec", i) if staged.rows[i] else None for i in range(len(staged.rows))
        ]

    def __call__(self, rows: np.ndarray) -> np.ndarray:
        rows = np.asarray(rows, np.int64)
        shard = np.searchsorted(self.offsets, rows, side="right") - 1
        out = None
        for i in np.unique(shard):
            sel = shard == i
            part = np.asarray(self.parts[i][rows[sel] - self.offsets[i]], np.float32)
            if out is None:
                out = np.empty((rows.size, part.shape[1]), np.float32)
            out[sel] = part
        if out is None:
            return np.zeros((0, 1), np.float32)
        return _unit(out)  # float16 rounding: renormalise


def staged_names(staged: Staged) -> list[str]:
    """Columns of the staged rows: of the first shard that has any (an empty input file
    leaves a shard of `id` only)."""
    import pyarrow.parquet as pq

    first = next((i for i, n in enumerate(staged.rows) if n), 0)
    return pq.read_schema(staged.shard(first)).names


def _set_aside(batch: pa.RecordBatch, blank: np.ndarray, none: np.ndarray):
    """Split off the rows without text (`diversify:empty_text`) or without a vector
    (`diversify:no_vector`), with null `cluster` and `cluster_dist`: the rows select leaves
    out have them, and both kinds go to one _removed/ shard."""
    out = blank | none
    if not out.any():
        return batch, None
    gone = pa.Table.from_batches([batch.filter(pa.array(out))])
    for name, typ in (("cluster", pa.int32()), ("cluster_dist", pa.float32())):
        if name in gone.column_names:
            gone = gone.drop_columns([name])
        gone = gone.append_column(name, pa.nulls(gone.num_rows, typ))
    reason = np.where(blank[out], "diversify:empty_text", "diversify:no_vector")
    gone = gone.append_column("reason", pa.array(reason.tolist(), pa.string()))
    return batch.filter(pa.array(~out)), gone


def _all_staged(ctx: Context) -> bool:
    """True when every unit's map output is already in the cache (the staged markers), so
    `fit`'s k-means would only be recomputed to be thrown away."""
    return bool(ctx.units) and all(ctx.staging.marker(i).exists() for i in range(len(ctx.units)))


def _staged_rows(ctx: Context) -> int:
    """Rows of the cached map output (the staged markers)."""
    return sum(ctx.staging.counts(i)["rows_in"] for i in range(len(ctx.units)))


def _text_bytes(staged: Staged, text: str) -> np.ndarray:
    """UTF-8 bytes of every staged row's text, read one shard at a time."""
    import pyarrow.compute as pc

    from datasel.io import read_table

    parts = [
        pc.binary_length(read_table(staged.shard(i), columns=[text]).column(0))
        .to_numpy(zero_copy_only=False)
        .astype(np.float64)
        for i, n in enumerate(staged.rows)
        if n
    ]
    return np.concatenate(parts) if parts else np.zeros(0)


def _unit(x: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, norm, out=np.zeros_like(x), where=norm > 0)


def _floats(staged: Staged, col: str, fill: str) -> np.ndarray:
    """A numeric (or boolean) column as float64; nulls/NaN become the minimum, NaN or zero."""
    arr = staged.column(col)
    if not (
        pa.types.is_integer(arr.type)
        or pa.types.is_floating(arr.type)
        or pa.types.is_boolean(arr.type)
    ):
        raise DataselError(f"diversify: column '{col}' holds {arr.type}, not numbers")
    values = arr.cast(pa.float64()).to_numpy(zero_copy_only=False).astype(np.float64)
    bad = ~np.isfinite(values)
    if bad.any():
        ok = values[~bad]
        values[bad] = {"min": ok.min() if ok.size else 0.0, "nan": np.nan, "zero": 0.0}[fill]
    return values


def _entropy(counts: np.ndarray) -> float | None:
    """Entropy (nats) of the distribution of rows over clusters; None for no rows."""
    total = counts.sum()
    if total == 0:
        return None
    p = counts[counts > 0] / total
    return round(float(-(p * np.log(p)).sum()), 4)


def _summary(v: np.ndarray) -> dict:
    if v.size == 0:
        return {}
    return {"min": int(v.min()), "median": float(np.median(v)), "max": int(v.max())}
