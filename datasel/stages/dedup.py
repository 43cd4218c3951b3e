"""Exact and near-duplicate removal, incremental across dumps through a persisted index.

Near duplicates follow Broder, "On the resemblance and containment of documents" (1997):
MinHash signatures of word 5-gram sets, LSH banding for candidates, candidates confirmed by
their estimated Jaccard, clusters by union-find, one document kept per cluster.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import shutil
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from datasel.errors import DataselError
from datasel.io import Columns, read_table
from datasel.lock import FolderLock
from datasel.ops.minhash import EMPTY, band_keys, lsh_params, shingle_hashes, signatures
from datasel.ops.unionfind import components
from datasel.ops.words import byte_chunks, grow_powers, hash_texts, normalize, utf8_lengths
from datasel.stage import (
    Context,
    Decider,
    Decision,
    MapResult,
    Stage,
    Staged,
    param,
    register,
)

PARALLEL_BANDS_FROM = 200_000  # documents (indexed + new) from which select sends its tasks
# to worker processes; below it, to threads


@register
@dataclass(kw_only=True)
class Dedup(Stage):
    """Remove exact duplicates (normalised text) and near duplicates (MinHash LSH).

    Removed rows carry `reason` (exact | near), `duplicate_of` (the kept id) and
    `dedup_jaccard` (the estimated Jaccard similarity with it).
    """

    name = "dedup"
    map_adds_columns = False
    example = "datasel dedup dump-2026-11/ deduped/ --threshold 0.8 --index state/dedup-index"

    threshold: float = param(
        0.8, help="word 5-gram Jaccard similarity at which two documents are near duplicates"
    )
    num_perm: int = param(
        256, help="MinHash permutations (signature length); bands and rows follow from --threshold"
    )
    ngram: int = param(5, help="words per shingle")
    keep: str = param(
        "first", help="which document of a cluster to keep: first | longest | max:<column>"
    )
    index: str | None = param(
        None,
        help="folder of a persisted index of kept documents, for cron runs over successive dumps",
    )
    exact_only: bool = param(False, help="remove exact duplicates only (no MinHash)")
    seed: int = param(0, help="hash seed (an index only matches runs with the same seed)")
    memory: str = param(
        "1GB",
        help="memory budget of each process of the global step: keys and candidate pairs are cut "
        "into partitions on disk that fit it (the result is the same whatever the budget)",
    )

    def __post_init__(self):
        if not 0.0 < self.threshold <= 1.0:
            raise ValueError(f"threshold must be in (0, 1], got {self.threshold}")
        if self.keep not in ("first", "longest") and not self.keep.startswith("max:"):
            raise ValueError(f"keep must be first, longest or max:<column>, got {self.keep!r}")
        if self.num_perm < 16:
            raise ValueError(f"num_perm must be at least 16, got {self.num_perm}")
        if self.ngram < 1:
            raise ValueError(f"ngram must be at least 1, got {self.ngram}")
        parse_bytes(self.memory)

    def params(self) -> dict:
        # the budget changes how select works, never its result: not part of the run's identity
        return {k: v for k, v in super().params().items() if k != "memory"}

    def incremental(self, state: Path) -> Dedup:
        """Without an `index` of its own, against everything earlier cron runs kept."""
        if self.index is not None:
            return self
        return dataclasses.replace(self, index=str(Path(state) / "dedup-index"))

    @property
    def bands_rows(self) -> tuple[int, int]:
        return _lsh_params(self.threshold, self.num_perm)

    @property
    def accept(self) -> float:
        """Estimated Jaccard a candidate pair needs: the threshold less 1.5 standard errors of the
        estimate, so that pairs right at the threshold are kept as duplicates ~93% of the time
        while pairs 0.1 below it almost never are (0.776 for 256 permutations at 0.8)."""
        t = self.threshold
        return t - 1.5 * math.sqrt(t * (1 - t) / self.num_perm)

    def narrow_columns(self, ctx: Context) -> list[str]:
        return [self.keep[4:]] if self.keep.startswith("max:") else []

    def reads(self, columns: Columns) -> dict[str, str]:
        return super().reads(columns) | {col: "keep" for col in self.narrow_columns(None)}

    def numeric_reads(self) -> set[str]:
        return set(self.narrow_columns(None))

    def fit(self, ctx: Context) -> None:
        # warm the per-process caches (LSH split, hash powers, probe table, lazy imports) before
        # workers fork, so that each inherits them
        grow_powers(1 << 20)
        warm = ["the lazy imports and caches of map (numpy.random, numpy.ma...), once, here"]
        self.map(pa.record_batch({ctx.columns.text: warm}), ctx)

    # ------------------------------------------------------------------ map
    def map(self, batch: pa.RecordBatch, ctx: Context) -> MapResult:
        texts = batch.column(ctx.columns.text)
        lengths = utf8_lengths(texts)
        parts = [self._hash_chunk(texts.slice(lo, hi - lo)) for lo, hi in byte_chunks(lengths)]
        arrays = {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}
        arrays["len"] = lengths
        return MapResult(batch, arrays=arrays)

    def _hash_chunk(self, texts: pa.Array) -> dict[str, np.ndarray]:
        text_hash, words, docs = hash_texts(normalize(texts))
        if self.exact_only:
            return {"hash": text_hash}
        n = len(texts)
        sig = signatures(*shingle_hashes(words, docs, n, self.ngram), n, self.num_perm, self.seed)
        return {"hash": text_hash, "sig": sig, "bands": band_keys(sig, *self.bands_rows)}

    # ------------------------------------------------------------------ select
    def select(self, staged: Staged, ctx: Context) -> _Removed:
        if not self.index:
            return self._select(staged, ctx, None)
        root = Path(self.index)
        root.mkdir(parents=True, exist_ok=True)
        # runs that share an index take turns here, so each sees the keepers the other added
        with FolderLock(root / "_lock", wait=True):
            return self._select(staged, ctx, DedupIndex(root, self))

    def _select(self, staged: Staged, ctx: Context, index: DedupIndex | None) -> _Removed:
        old = index.segments(exclude=ctx.key) if index else []
        # half the budget for a task's data, the other half for the process and its imports
        budget = max(1 << 14, parse_bytes(self.memory) // 2)
        store = _Store(old, staged, not self.exact_only, self.bands_rows, budget)
        n_old, n_all = store.n_old, store.total
        # a small corpus takes less time than shipping its tasks to workers and back: threads
        # then (sorts and gathers release the GIL)
        big = n_all >= PARALLEL_BANDS_FROM
        executor = ctx.executor if big and ctx.executor else ctx.threads
        folder = ctx.work / "dedup-select"
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        try:
            plan = _plan(store, folder, executor.workers)
            u, v = _candidate_edges(store, plan, self.accept, executor, ctx)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        with ctx.phase("dedup:union-find"):
            nodes, label = components(u, v)
            # each cluster's label is its smallest document, which is one of its nodes
            edges, clusters = len(u), int(np.count_nonzero(label == nodes))
            del u, v
            rank = self._rank(store, staged, nodes, n_old)
        with ctx.phase("dedup:keepers"):
            gone, keeper, sim, exact = self._assign(store, nodes, label, rank, n_old, executor)
            del nodes, label, rank
        with ctx.phase("dedup:keeper-ids"):
            folder = ctx.work / "dedup-decided"
            decided = _Removed.write(folder, store, gone, keeper, sim, exact, executor)
        ctx.stats.update(
            {
                "bands": self.bands_rows[0],
                "rows_per_band": self.bands_rows[1],
                "accept_estimated_jaccard": round(self.accept, 4),
                "index_documents_before": n_old,
                "clusters": clusters,
                "candidate_edges": edges,
            }
        )
        if not self.exact_only:  # near duplicates: estimated Jaccard to their keeper
            ctx.cutoff("dedup_jaccard", self.threshold, f"threshold {self.threshold:g}")
        if index:
            with ctx.phase("dedup:index"):
                index.append(ctx.key, store, gone - n_old)
            ctx.stats["index_documents_after"] = n_all - len(gone)
        return decided

    def _rank(self, store: _Store, staged: Staged, nodes: np.ndarray, n_old: int):
        """Keep priority of each node (smallest first): indexed documents first, by position,
        then this run's by --keep's value (highest first) and position; None for --keep first
        (the position itself). Only the nodes (documents with a duplicate) are read."""
        if self.keep == "first":
            return None
        new = nodes >= n_old
        value = np.zeros(len(nodes))
        if self.keep == "longest":
            value[new] = store.rows("len", nodes[new]).astype(np.float64)
        else:
            value[new] = np.nan_to_num(self._values(store, staged, nodes[new]), nan=-np.inf)
        order = np.lexsort((nodes, -value, new))
        rank = np.empty(len(nodes), dtype=np.int64)
        rank[order] = np.arange(len(nodes))
        return rank

    def _values(self, store: _Store, staged: Staged, docs: np.ndarray) -> np.ndarray:
        """The --keep max:<column> values of this run's documents at sorted global `docs`."""
        col = self.keep[4:]
        out = np.empty(len(docs))
        part = np.searchsorted(store.offsets, docs, side="right") - 1
        for p in np.unique(part):
            sel = np.flatnonzero(part == p)
            unit = store.parts[p][1]
            try:
                values = read_table(staged.shard(unit), columns=[col]).column(0)
                local = pa.array(docs[sel] - store.offsets[p])
                taken = values.take(local).to_numpy(zero_copy_only=False)
                out[sel] = taken.astype(np.float64)
            except (KeyError, pa.ArrowInvalid, ValueError, TypeError):
                raise DataselError(
                    f"--keep {self.keep}: no numeric column '{col}' in the input"
                ) from None
        return out

    def _assign(self, store, nodes, label, rank, n_old, executor):
        """Greedy keepers inside each cluster: the best-ranked document is kept, every other
        member that is similar enough *to it* is removed; repeat with those left. So each
        removed document is a duplicate of the kept one it names, never only of a chain.
        Clusters are independent: they are cut into tasks of about equal documents.
        Returns the removed documents (sorted), the kept one each duplicates, the estimated
        Jaccard with it (1 for an exact duplicate) and whether it is an exact duplicate."""
        _, comp = np.unique(label, return_inverse=True)
        by_comp = np.argsort(comp, kind="stable")
        comp = comp[by_comp]
        parts = -(-len(nodes) * BYTES_PER_NODE // store.budget)
        if len(nodes) > VERIFY_ALONE:  # enough work to share among the workers
            parts = max(parts, 2 * executor.workers)
        # cut at the first node of a cluster: each cluster in one task
        cuts = np.searchsorted(comp, comp[np.arange(1, parts) * len(comp) // max(1, parts)])
        bounds = sorted({0, *cuts.tolist(), len(comp)})
        node_rank = nodes if rank is None else rank
        calls = []
        for lo, hi in zip(bounds, bounds[1:], strict=False):
            mine = by_comp[lo:hi]
            calls.append((store, nodes[mine], comp[lo:hi], node_rank[mine], n_old, self.accept))
        del by_comp, comp, node_rank
        done = sorted(executor.map_unordered(_keepers, calls), key=lambda x: x[0])
        none = (
            np.zeros(0, np.int64),
            np.zeros(0, np.int64),
            np.zeros(0, np.float32),
            np.zeros(0, bool),
        )
        results = [none, *(r for _, r in done)]
        gone, keeper, sim, exact = (np.concatenate([r[j] for r in results]) for j in range(4))
        order = np.argsort(gone)
        return gone[order], keeper[order], sim[order], exact[order]


def _keepers(store, nodes, comp, node_rank, n_old: int, accept: float):
    """`Dedup._assign` over whole clusters: `nodes` (any order) with their cluster `comp` and
    keep priority `node_rank` (unique, smallest first). Returns (removed, keeper, estimated
    Jaccard, exact), unsorted."""
    removed, kept_by = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    sims, exacts = [np.zeros(0, np.float32)], [np.zeros(0, bool)]
    _, comp = np.unique(comp, return_inverse=True)  # 0..clusters-1 in this task
    node_hash = store.rows("hash", nodes)
    active = np.ones(len(nodes), dtype=bool)
    while True:
        idx = np.flatnonzero(active)
        counts = np.bincount(comp[idx], minlength=comp.max() + 1 if len(comp) else 0)
        idx = idx[counts[comp[idx]] >= 2]
        if not idx.size:
            break
        order = idx[np.lexsort((node_rank[idx], comp[idx]))]
        first = np.ones(len(order), dtype=bool)
        first[1:] = comp[order[1:]] != comp[order[:-1]]
        keepers = order[first]
        keeper_of = np.full(comp.max() + 1, -1, dtype=np.int64)
        keeper_of[comp[keepers]] = keepers
        others = order[~first]
        a, k = nodes[others], nodes[keeper_of[comp[others]]]
        same = node_hash[others] == node_hash[keeper_of[comp[others]]]
        sim = np.ones(len(a), dtype=np.float32)
        if (~same).any():
            sim[~same] = store.jaccard(a[~same], k[~same])
        gone = (same | (sim >= accept)) & (a >= n_old)
        removed.append(a[gone])
        kept_by.append(k[gone])
        sims.append(sim[gone])
        exacts.append(same[gone])
        active[others[gone]] = False
        active[keepers] = False
    return tuple(np.concatenate(x) for x in (removed, kept_by, sims, exacts))


@lru_cache(maxsize=32)
def _lsh_params(threshold: float, num_perm: int) -> tuple[int, int]:
    # Balanced at 0.2 below the threshold: candidates are verified afterwards, so the bands aim
    # at recall (32 bands x 8 rows for 0.8: pairs at 0.8 become candidates 99.7% of the time,
    # pairs at 0.5 12% of the time).
    return lsh_params(max(0.05, threshold - 0.2), num_perm)


def _group_edges(keys: np.ndarray, docs: np.ndarray, n_old: int):
    """Edges from the first document of each group of equal keys to the others in the group
    (star edges), leaving out edges between two already-indexed documents. `docs` (the global
    position of each key) must be increasing."""
    idx = np.arange(len(keys))
    # Most keys are unique: sort only those whose low bits they share with another key (a
    # counting pass over a table of ~4 slots per key, at most 4M), 3x faster than sorting all.
    size = 1 << min(22, max(10, (4 * len(idx)).bit_length()))
    low = (keys & np.uint64(size - 1)).astype(np.intp)
    idx = idx[np.bincount(low, minlength=size)[low] > 1]
    order = idx[np.argsort(keys[idx], kind="stable")]
    k = keys[order]
    new_group = np.ones(len(k), dtype=bool)
    new_group[1:] = k[1:] != k[:-1]
    head = order[np.maximum.accumulate(np.where(new_group, np.arange(len(k)), 0))]
    member = ~new_group
    u, v = docs[head[member]], docs[order[member]]
    fresh = v >= n_old
    return u[fresh], v[fresh]


# Bytes of a task's memory per item it holds, temporaries included (measured with tracemalloc):
# a (key, document) record being grouped, a candidate pair being merged and deduplicated.
BYTES_PER_RECORD = 80
BYTES_PER_PAIR = 48
BYTES_PER_NODE = 64  # a document of a cluster while its keepers are chosen
VERIFY_ALONE = 1 << 16  # candidate pairs (with repeats) that one task verifies faster alone


@dataclass
class _Plan:
    """How select's work is cut to fit `budget` bytes per task. Key set 0 is the text hash,
    key set 1 + b is band b; each is cut by the top `bits` of its keys (uniform: they are
    hashes) into 2**bits ranges, and every range is grouped by one task."""

    folder: Path
    budget: int
    key_sets: int
    bits: int
    groups: int  # scatter tasks, each over a run of consecutive parts
    doc_dtype: np.dtype

    @property
    def ranges(self) -> int:
        return 1 << self.bits

    @property
    def record(self) -> np.dtype:
        return np.dtype([("key", "<u8"), ("doc", self.doc_dtype)])

    def run_file(self, key_set: int, r: int, group: int) -> Path:
        return self.folder / f"keys-{key_set:03d}-{r:05d}-{group:03d}.bin"

    def block_rows(self, row_bytes: int) -> int:
        return max(256, self.budget // (8 * row_bytes))


def _plan(store: _Store, folder: Path, workers: int) -> _Plan:
    budget = store.budget
    key_sets = 1 + (store.bands_rows[0] if store.with_sig else 0)
    records = -(-store.total * BYTES_PER_RECORD // budget)
    doc = np.uint32 if store.total < 1 << 32 else np.int64
    groups = max(1, min(workers, len(store.parts)))
    return _Plan(folder, budget, key_sets, (records - 1).bit_length(), groups, np.dtype(doc))


def _candidate_edges(store: _Store, plan: _Plan, accept: float, executor, ctx: Context):
    """Exact edges (equal text hash) and verified near edges (a shared band key and enough
    agreeing signature values), found in bounded memory:
    1. scatter: each part's keys go, as (key, document) records in document order, to a run
       file per (key set, key range);
    2. group: one task per (key set, key range) reads its runs and groups equal keys; exact
       edges come back, band pairs are written as a sorted run per task;
    3. merge: the pair runs are cut by pair range into tasks that each read their slice of every
       run, drop repeats (near duplicates share most bands) and verify each pair once."""
    bounds = np.linspace(0, len(store.parts), plan.groups + 1).astype(int)
    scatter = [(store, plan, g, bounds[g], bounds[g + 1]) for g in range(plan.groups)]
    with ctx.phase("dedup:scatter"):
        list(executor.map_unordered(_scatter, scatter))
    tasks = [(store, plan, s, r) for s in range(plan.key_sets) for r in range(plan.ranges)]
    exact, runs = [], []
    with ctx.phase("dedup:group"):
        for _, (kind, result) in executor.map_unordered(_group, tasks):
            (exact if kind == "exact" else runs).append(result)
    with ctx.phase("dedup:verify"):
        near_u, near_v = _verified(store, plan, runs, accept, executor)
    u = np.concatenate([e[0] for e in exact] + near_u)
    v = np.concatenate([e[1] for e in exact] + near_v)
    return u, v


def _verified(store: _Store, plan: _Plan, runs, accept: float, executor):
    """The candidate pairs of the sorted `runs` that verify, each once, as lists of (u, v)
    arrays: tasks cut by pair range."""
    near_u, near_v = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    if runs:
        pairs = sum(n for _, n in runs)
        parts = -(-pairs * BYTES_PER_PAIR // plan.budget)
        if pairs > VERIFY_ALONE:  # enough work to share among the workers
            parts = max(parts, 2 * executor.workers)
        cuts = _pair_cuts(runs, max(1, parts), store.total)
        paths = [path for path, n in runs if n]
        merge = [
            (store, plan, paths, lo, hi, accept) for lo, hi in zip(cuts, cuts[1:], strict=False)
        ]
        for _, (u, v) in sorted(executor.map_unordered(_verify_pairs, merge), key=lambda x: x[0]):
            near_u.append(u)
            near_v.append(v)
    return near_u, near_v


def _pair_cuts(runs: list[tuple[Path, int]], parts: int, total: int) -> list[int]:
    """Bounds of about `parts` ranges of pairs (u * total + v) holding as many pairs each: the
    quantiles of a sample of every sorted run (pairs crowd at small u, the first documents of
    big groups), each sampled value weighing its run's pairs per sample."""
    if parts <= 1:
        return [0, total * total]
    values, weights = [np.zeros(0, np.int64)], [np.zeros(0)]
    for path, n in runs:
        if n:
            run = np.load(path, mmap_mode="r")
            k = min(n, 64 * parts)
            values.append(np.array(run[np.linspace(0, n - 1, k).astype(np.int64)]))
            weights.append(np.full(k, n / k))
            del run
    order = np.argsort(np.concatenate(values))
    value, weight = np.concatenate(values)[order], np.cumsum(np.concatenate(weights)[order])
    inner = value[np.searchsorted(weight, weight[-1] * np.arange(1, parts) / parts)]
    return sorted({0, *inner.tolist(), total * total})


def _scatter(store: _Store, plan: _Plan, group: int, first: int, stop: int) -> None:
    """Append the (key, document) records of parts [first, stop) to their run files."""
    shift = np.uint64(64 - plan.bits)
    pending: dict[tuple[int, int], list[np.ndarray]] = {}
    held = 0
    for p in range(first, stop):
        n = store.size(p)
        step = plan.block_rows(8 + (store.bands_rows[0] * 8 if store.with_sig else 0))
        for lo in range(0, n, step):
            hi = min(n, lo + step)
            docs = np.arange(store.offsets[p] + lo, store.offsets[p] + hi)
            keyed = [(0, store.part_file(p, "hash").read(lo, hi), docs)]
            if store.with_sig:
                bands = store.part_file(p, "bands").read(lo, hi)
                words = bands[:, 0] != store.empty_key
                keyed += [(1 + b, bands[words, b], docs[words]) for b in range(bands.shape[1])]
            for s, keys, kdocs in keyed:
                rec = np.empty(len(keys), plan.record)
                rec["key"], rec["doc"] = keys, kdocs
                if plan.bits:
                    r = (keys >> shift).astype(np.intp)
                    rec = rec[np.argsort(r, kind="stable")]
                    ends = np.cumsum(np.bincount(r, minlength=plan.ranges))
                else:
                    ends = [len(rec)]
                start = 0
                for r, end in enumerate(ends):
                    if end > start:
                        pending.setdefault((s, r), []).append(rec[start:end])
                    start = end
                held += rec.nbytes
            if held > plan.budget // 2:
                _flush(plan, group, pending)
                pending, held = {}, 0
    _flush(plan, group, pending)


def _flush(plan: _Plan, group: int, pending: dict) -> None:
    for (s, r), recs in pending.items():
        with open(plan.run_file(s, r, group), "ab") as f:
            for rec in recs:
                f.write(rec.tobytes())


def _group(store: _Store, plan: _Plan, key_set: int, r: int):
    """Group one key range of one key set: ("exact", (u, v)) for the text hash, else
    ("pairs", (path of the sorted run of pairs as u * total + v, its length))."""
    files = [plan.run_file(key_set, r, g) for g in range(plan.groups)]
    rec = np.concatenate(
        [np.fromfile(f, plan.record) for f in files if f.exists()] + [np.zeros(0, plan.record)]
    )
    for f in files:
        f.unlink(missing_ok=True)
    u, v = _group_edges(rec["key"], rec["doc"].astype(np.int64), store.n_old)
    del rec
    if key_set == 0:
        return "exact", (u, v)
    path = plan.folder / f"pairs-{key_set:03d}-{r:05d}.npy"
    pairs = np.unique(u * np.int64(store.total) + v)
    np.save(path, pairs)
    return "pairs", (path, len(pairs))


def _verify_pairs(store: _Store, plan: _Plan, paths: list[Path], lo: int, hi: int, accept):
    """The pairs in [lo, hi) of every run, each once, that the signatures confirm."""
    slices = [np.zeros(0, np.int64)]
    for path in paths:
        run = np.load(path, mmap_mode="r")
        a, b = np.searchsorted(run, [lo, hi])
        slices.append(np.array(run[a:b]))
        del run
    pairs = np.unique(np.concatenate(slices))
    del slices
    u, v = np.divmod(pairs, np.int64(store.total))
    del pairs
    ok = _similar(store, u, v, accept)
    return u[ok], v[ok]


def _similar(store: _Store, u: np.ndarray, v: np.ndarray, accept: float) -> np.ndarray:
    return store.jaccard(u, v) >= accept


class _NpyFile:
    """Rows of a .npy file that do not stay in the process: blocks are read with pread, and
    scattered rows gathered through a memory map dropped after every MAP_ROWS rows (a mapped
    page counts in RSS until unmapped; the kernel maps up to 16 cached pages around each page
    touched, so a gather maps at most MAP_ROWS * 64 KB)."""

    MAP_ROWS = 1024

    def __init__(self, path: Path):
        self.path = path
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read = (
                np.lib.format.read_array_header_1_0
                if version == (1, 0)
                else np.lib.format.read_array_header_2_0
            )
            self.shape, _, self.dtype = read(f)
            self.offset = f.tell()
        self.row_shape = self.shape[1:]
        self.row_bytes = self.dtype.itemsize * int(np.prod(self.row_shape, dtype=np.int64))

    def __len__(self) -> int:
        return self.shape[0]

    def read(self, lo: int, hi: int) -> np.ndarray:
        size = (hi - lo) * self.row_bytes
        with open(self.path, "rb") as f:
            data = os.pread(f.fileno(), size, self.offset + lo * self.row_bytes)
        if len(data) != size:
            raise DataselError(f"{self.path}: shorter than its header says")
        return np.frombuffer(data, self.dtype).reshape((hi - lo, *self.row_shape))

    def take(self, rows: np.ndarray) -> np.ndarray:
        """The rows at sorted positions `rows`."""
        out = np.empty((len(rows), *self.row_shape), self.dtype)
        for lo in range(0, len(rows), self.MAP_ROWS):
            mapped = np.load(self.path, mmap_mode="r")
            out[lo : lo + self.MAP_ROWS] = mapped[rows[lo : lo + self.MAP_ROWS]]
            del mapped
        return out


class _Store:
    """Narrow per-document arrays of the indexed documents then of this run's, in global order,
    read from their files a block or a few rows at a time."""

    def __init__(
        self,
        old: list[Path],
        staged: Staged,
        with_sig: bool,
        bands_rows: tuple[int, int],
        budget: int,
    ):
        self.old, self.staged = old, staged
        self.budget = budget  # bytes a task may hold
        self.bands_rows = bands_rows
        self.parts: list[tuple[str, int]] = []  # ("old", segment) or ("new", unit)
        sizes = []
        for i, seg in enumerate(old):
            self.parts.append(("old", i))
            sizes.append(len(_NpyFile(seg / "hash.npy")))
        for i, n in enumerate(staged.rows):
            self.parts.append(("new", i))
            sizes.append(n)
        self.offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        self.n_old = int(sum(sizes[: len(old)]))
        self.total = int(self.offsets[-1])
        self.with_sig = with_sig
        self.chunk = max(256, budget // (8 * self.sig_row_bytes))  # pairs verified at once
        self._files: dict[tuple[int, str], _NpyFile] = {}
        # an empty signature (no words) has a known first band key: such documents take part
        # in exact dedup only
        b, r = bands_rows
        self.empty_key = band_keys(np.full((1, b * r), EMPTY, dtype=np.uint32), b, r)[0, 0]

    def size(self, part: int) -> int:
        return int(self.offsets[part + 1] - self.offsets[part])

    def part_file(self, part: int, name: str) -> _NpyFile:
        key = (part, name)
        if key not in self._files:
            kind, i = self.parts[part]
            path = self.old[i] / f"{name}.npy" if kind == "old" else self.staged.array_path(name, i)
            self._files[key] = _NpyFile(path)
        return self._files[key]

    @property
    def sig_row_bytes(self) -> int:
        return 4 * self.bands_rows[0] * self.bands_rows[1] if self.with_sig else 8

    def concat(self, name: str, new_only: bool = False) -> np.ndarray:
        parts = range(len(self.old) if new_only else 0, len(self.parts))
        arrays = [self.part_file(p, name).read(0, self.size(p)) for p in parts if self.size(p)]
        return np.concatenate(arrays) if arrays else np.zeros(0)

    def rows(self, name: str, index: np.ndarray) -> np.ndarray:
        """Rows of an array at global positions, reading each part once, in order."""
        index = np.asarray(index, dtype=np.int64)
        part = np.searchsorted(self.offsets, index, side="right") - 1
        out = None
        for p in np.unique(part):
            sel = np.flatnonzero(part == p)
            local = index[sel] - self.offsets[p]
            order = np.argsort(local, kind="stable")
            got = self.part_file(int(p), name).take(local[order])
            if out is None:
                out = np.empty((len(index), *got.shape[1:]), dtype=got.dtype)
            out[sel[order]] = got
        return out if out is not None else np.zeros(0, np.uint64)

    def jaccard(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        """Share of equal signature values of each pair, read `chunk` pairs at a time."""
        out = np.empty(len(u), dtype=np.float32)
        for lo in range(0, len(u), self.chunk):
            a = self.rows("sig", u[lo : lo + self.chunk])
            b = self.rows("sig", v[lo : lo + self.chunk])
            out[lo : lo + self.chunk] = np.count_nonzero(a == b, axis=1) / a.shape[1]
        return out

    def id_column(self, part: int) -> pa.ChunkedArray:
        kind, i = self.parts[part]
        path = self.old[i] / "ids.parquet" if kind == "old" else self.staged.shard(i)
        return read_table(path, columns=["id"]).column(0)

    def ids(self, index: np.ndarray) -> list[str]:
        """Ids of documents at global positions."""
        out: list[str | None] = [None] * len(index)
        part = np.searchsorted(self.offsets, index, side="right") - 1
        for p in np.unique(part):
            sel = np.flatnonzero(part == p)
            local = index[sel] - self.offsets[p]
            col = self.id_column(int(p))
            for j, value in zip(sel, col.take(pa.array(local)).to_pylist(), strict=True):
                out[j] = value
        return out


REMOVED = np.dtype([("row", "<i8"), ("keeper", "<i8"), ("jaccard", "<f4"), ("exact", "?")])


@dataclass
class _Removed(Decider):
    """Select's result, on disk in `folder`: each unit's removed rows (with the document each
    duplicates, the estimated Jaccard with it and whether it is an exact copy), and the ids of
    the kept documents that removed ones name, so a worker decides a unit reading only these."""

    folder: Path

    @classmethod
    def write(cls, folder, store: _Store, gone, keeper, sim, exact, executor) -> _Removed:
        """Save the removed documents (sorted global positions `gone`) by unit, and look up the
        ids of their keepers, a task per part that holds some."""
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        rows = np.empty(len(gone), REMOVED)
        rows["keeper"], rows["jaccard"], rows["exact"] = keeper, sim, exact
        parts = np.searchsorted(store.offsets, gone, side="right") - 1
        rows["row"] = gone - store.offsets[parts]
        first = len(store.old)
        for p, lo, hi in _runs(parts):
            np.save(folder / f"removed-{p - first:05d}.npy", rows[lo:hi])
        del rows, parts
        keepers = np.unique(keeper)
        np.save(folder / "keepers.npy", keepers)
        parts = np.searchsorted(store.offsets, keepers, side="right") - 1
        calls = [
            (store, int(p), keepers[lo:hi] - store.offsets[p], folder / f"ids-{p:05d}.arrow")
            for p, lo, hi in _runs(parts)
        ]
        list(executor.map_unordered(_keeper_ids, calls))
        schema = pa.schema([("id", pa.string())])
        with pa.OSFile(str(folder / "keeper-ids.arrow"), "wb") as sink:
            with pa.ipc.new_file(sink, schema) as writer:
                for *_, path in calls:  # in part order: the keepers' order
                    with pa.memory_map(str(path)) as src:
                        writer.write_table(pa.ipc.open_file(src).read_all())
                    path.unlink()
        return cls(folder)

    def decide(self, i: int, rows: int) -> Decision:
        keep = np.ones(rows, dtype=bool)
        reason = np.full(rows, None, dtype=object)
        path = self.folder / f"removed-{i:05d}.npy"
        removed = np.load(path) if path.exists() else np.zeros(0, REMOVED)
        r = removed["row"]
        keep[r] = False
        reason[r] = np.where(removed["exact"], "exact", "near")
        at = np.full(rows, -1, dtype=np.int64)
        keepers = np.load(self.folder / "keepers.npy", mmap_mode="r")
        at[r] = np.searchsorted(keepers, removed["keeper"])
        del keepers
        with pa.memory_map(str(self.folder / "keeper-ids.arrow")) as src:
            ids = pa.ipc.open_file(src).read_all().column("id")
            dup_ids = ids.take(pa.array(at, mask=at < 0)).combine_chunks()
        jaccard = np.full(rows, np.nan, dtype=np.float32)
        jaccard[r] = removed["jaccard"]
        return Decision(
            keep=keep,
            reason=reason,
            removed_columns={
                "duplicate_of": dup_ids,
                "dedup_jaccard": pa.array(jaccard, pa.float32(), from_pandas=True),
            },
        )


def _runs(sorted_values: np.ndarray):
    """(value, start, stop) of each run of equal values in a sorted array."""
    if not len(sorted_values):
        return []
    starts = np.flatnonzero(np.diff(sorted_values)) + 1
    bounds = [0, *starts.tolist(), len(sorted_values)]
    return [(int(sorted_values[a]), a, b) for a, b in zip(bounds, bounds[1:], strict=False)]


def _keeper_ids(store: _Store, part: int, rows: np.ndarray, path: Path) -> None:
    """The ids at sorted local `rows` of one part, as an Arrow file."""
    ids = store.id_column(part).take(pa.array(rows, pa.int64())).cast(pa.string())
    table = pa.table({"id": ids})
    tmp = path.with_name(path.name + ".tmp")
    with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    os.replace(tmp, path)


class DedupIndex:
    """Kept documents of earlier runs: ids, text hashes, band keys and signatures, one segment
    (folder) per run, named by the run's key so that a replayed run neither dedups against
    itself nor appends twice."""

    def __init__(self, root: Path, stage: Dedup):
        self.root = root
        b, r = stage.bands_rows
        self.meta = {
            "format": 1,
            "num_perm": stage.num_perm,
            "bands": b,
            "rows": r,
            "ngram": stage.ngram,
            "seed": stage.seed,
            "exact_only": stage.exact_only,
        }
        meta_path = root / "meta.json"
        if meta_path.exists():
            have = json.loads(meta_path.read_text())
            if have != self.meta:
                diff = {k: (have.get(k), v) for k, v in self.meta.items() if have.get(k) != v}
                raise DataselError(
                    f"{root}: index was built with other settings {diff} (index, this run); use the same settings or a new index"
                )

    def segments(self, exclude: str = "") -> list[Path]:
        if not self.root.exists():
            return []
        return sorted(
            p
            for p in self.root.glob("seg-*")
            if p.is_dir() and p.name != f"seg-{exclude}" and (p / "ids.parquet").exists()
        )

    def append(self, key: str, store: _Store, removed: np.ndarray) -> None:
        """Add this run's kept documents (all but `removed`, sorted positions among this run's
        documents) as a segment, a block of rows at a time."""
        from datasel.io import write_json

        self.root.mkdir(parents=True, exist_ok=True)
        write_json(self.meta, self.root / "meta.json")
        final = self.root / f"seg-{key}"
        tmp = self.root / f".seg-{key}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        kept = []  # (part, its kept rows)
        for p in range(len(store.old), len(store.parts)):
            lo = store.offsets[p] - store.n_old
            a, b = np.searchsorted(removed, [lo, lo + store.size(p)])
            kept.append((p, np.delete(np.arange(store.size(p)), removed[a:b] - lo)))
        arrays = {"hash": (np.uint64, ())}
        if store.with_sig:
            arrays |= {
                "sig": (np.uint32, (self.meta["num_perm"],)),
                "bands": (np.uint64, (self.meta["bands"],)),
            }
        n = sum(len(rows) for _, rows in kept)
        for name, (dtype, row) in arrays.items():
            with open(tmp / f"{name}.npy", "wb") as f:
                header = {"descr": np.dtype(dtype).str, "fortran_order": False, "shape": (n, *row)}
                np.lib.format.write_array_header_1_0(f, header)
                for p, rows in kept:
                    for lo in range(0, len(rows), store.chunk):
                        block = store.part_file(p, name).take(rows[lo : lo + store.chunk])
                        f.write(np.ascontiguousarray(block, dtype).tobytes())
        schema = pa.schema([("id", pa.string())])
        with pq.ParquetWriter(tmp / "ids.parquet", schema) as writer:
            for p, rows in kept:
                ids = store.id_column(p).take(pa.array(rows, pa.int64()))
                writer.write_table(pa.table({"id": ids.cast(pa.string())}, schema=schema))
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)


def parse_bytes(text: str) -> int:
    """A size such as 512MB, 1.5GB or 100000 (bytes), in bytes (a KB is 1024 bytes)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)B?\s*", str(text), re.IGNORECASE)
    if not m:
        raise ValueError(f"memory must be a size such as 512MB or 2GB, got {text!r}")
    return int(float(m[1]) * 1024 ** "BKMGT".index(m[2].upper() or "B"))
