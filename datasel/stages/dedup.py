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
from datasel.stage import Context, Decision, MapResult, Stage, Staged, param, register

COMPACT_PAIRS = 1 << 20  # band pairs gathered before their repeats are dropped
PARALLEL_BANDS_FROM = 200_000  # documents (indexed + new) from which select sends bands to
# worker processes; below it, to threads


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

    def __post_init__(self):
        if not 0.0 < self.threshold <= 1.0:
            raise ValueError(f"threshold must be in (0, 1], got {self.threshold}")
        if self.keep not in ("first", "longest") and not self.keep.startswith("max:"):
            raise ValueError(f"keep must be first, longest or max:<column>, got {self.keep!r}")
        if self.num_perm < 16:
            raise ValueError(f"num_perm must be at least 16, got {self.num_perm}")
        if self.ngram < 1:
            raise ValueError(f"ngram must be at least 1, got {self.ngram}")

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
    def select(self, staged: Staged, ctx: Context) -> Decision:
        if not self.index:
            return self._select(staged, ctx, None)
        root = Path(self.index)
        root.mkdir(parents=True, exist_ok=True)
        # runs that share an index take turns here, so each sees the keepers the other added
        with FolderLock(root / "_lock", wait=True):
            return self._select(staged, ctx, DedupIndex(root, self))

    def _select(self, staged: Staged, ctx: Context, index: DedupIndex | None) -> Decision:
        old = index.segments(exclude=ctx.key) if index else []
        store = _Store(old, staged, with_sig=not self.exact_only, bands_rows=self.bands_rows)
        n_old, n_all = store.n_old, store.total
        hashes = store.concat("hash")
        edges = [_group_edges(hashes, n_old)]
        if not self.exact_only:
            # a band of a small corpus takes less time than shipping it to a worker and back:
            # threads then (its sorts and gathers release the GIL)
            big = n_all >= PARALLEL_BANDS_FROM
            executor = ctx.executor if big and ctx.executor else ctx.threads
            edges.append(_near_edges(store, self.bands_rows[0], self.accept, executor))
        u = np.concatenate([e[0] for e in edges])
        v = np.concatenate([e[1] for e in edges])
        nodes, label = components(u, v)
        rank = self._rank(store, staged, ctx, n_old, n_all)
        dup_of, jacc = self._assign(store, nodes, label, rank, hashes, n_old)
        keep = dup_of[n_old:] < 0
        reason = np.full(staged.total, None, dtype=object)
        removed = np.flatnonzero(~keep)
        keeper = dup_of[n_old:][removed]
        exact = hashes[keeper] == hashes[n_old + removed]
        reason[removed] = np.where(exact, "exact", "near")
        dup_ids = np.full(staged.total, None, dtype=object)
        dup_ids[removed] = store.ids(keeper)
        jac = np.full(staged.total, np.nan)
        jac[removed] = np.where(exact, 1.0, jacc[n_old:][removed])
        ctx.stats.update(
            {
                "bands": self.bands_rows[0],
                "rows_per_band": self.bands_rows[1],
                "accept_estimated_jaccard": round(self.accept, 4),
                "index_documents_before": n_old,
                "clusters": int(len(np.unique(label))),
                "candidate_edges": int(len(u)),
            }
        )
        if not self.exact_only:  # near duplicates: estimated Jaccard to their keeper
            ctx.cutoff("dedup_jaccard", self.threshold, f"threshold {self.threshold:g}")
        if index:
            index.append(ctx.key, store, np.flatnonzero(keep))
            ctx.stats["index_documents_after"] = n_old + int(keep.sum())
        return Decision(
            keep=keep,
            reason=reason,
            removed_columns={
                "duplicate_of": pa.array(dup_ids, pa.string()),
                "dedup_jaccard": pa.array(jac, pa.float32(), from_pandas=True),
            },
        )

    def _rank(
        self, store: _Store, staged: Staged, ctx: Context, n_old: int, n_all: int
    ) -> np.ndarray:
        """Position of each document in keep-priority order: indexed documents first."""
        if self.keep == "first":
            return np.arange(n_all)
        if self.keep == "longest":
            value = store.concat("len", new_only=True).astype(np.float64)
        else:
            col = self.keep[4:]
            try:
                value = staged.column(col).to_numpy(zero_copy_only=False).astype(np.float64)
            except (KeyError, pa.ArrowInvalid, ValueError, TypeError):
                raise DataselError(
                    f"--keep {self.keep}: no numeric column '{col}' in the input"
                ) from None
            value = np.nan_to_num(value, nan=-np.inf)
        order = np.lexsort((np.arange(len(value)), -value))
        rank = np.empty(n_all, dtype=np.int64)
        rank[:n_old] = np.arange(n_old)
        rank[n_old + order] = n_old + np.arange(len(value))
        return rank

    def _assign(self, store, nodes, label, rank, hashes, n_old):
        """Greedy keepers inside each cluster: the best-ranked document is kept, every other
        member that is similar enough *to it* is removed; repeat with those left. So each
        removed document is a duplicate of the kept one it names, never only of a chain."""
        dup_of = np.full(store.total, -1, dtype=np.int64)
        jacc = np.zeros(store.total, dtype=np.float32)
        active = np.ones(len(nodes), dtype=bool)
        _, comp = np.unique(label, return_inverse=True)
        while True:
            idx = np.flatnonzero(active)
            counts = np.bincount(comp[idx], minlength=comp.max() + 1 if len(comp) else 0)
            idx = idx[counts[comp[idx]] >= 2]
            if not idx.size:
                break
            order = idx[np.lexsort((rank[nodes[idx]], comp[idx]))]
            first = np.ones(len(order), dtype=bool)
            first[1:] = comp[order[1:]] != comp[order[:-1]]
            keepers = order[first]
            keeper_of = np.full(comp.max() + 1, -1, dtype=np.int64)
            keeper_of[comp[keepers]] = keepers
            others = order[~first]
            a, k = nodes[others], nodes[keeper_of[comp[others]]]
            same = hashes[a] == hashes[k]
            sim = np.ones(len(a), dtype=np.float32)
            if (~same).any():
                sim[~same] = store.jaccard(a[~same], k[~same])
            gone = (same | (sim >= self.accept)) & (a >= n_old)
            dup_of[a[gone]] = k[gone]
            jacc[a[gone]] = sim[gone]
            active[others[gone]] = False
            active[keepers] = False
        return dup_of, jacc


@lru_cache(maxsize=32)
def _lsh_params(threshold: float, num_perm: int) -> tuple[int, int]:
    # Balanced at 0.2 below the threshold: candidates are verified afterwards, so the bands aim
    # at recall (32 bands x 8 rows for 0.8: pairs at 0.8 become candidates 99.7% of the time,
    # pairs at 0.5 12% of the time).
    return lsh_params(max(0.05, threshold - 0.2), num_perm)


def _group_edges(keys: np.ndarray, n_old: int, skip: np.ndarray | None = None):
    """Edges from the first document of each group of equal keys to the others in the group
    (star edges), leaving out edges between two already-indexed documents."""
    idx = np.arange(len(keys)) if skip is None else np.flatnonzero(~skip)
    # Most keys are unique: sort only those whose low bits they share with another key (a
    # counting pass over a table of ~4 slots per key, at most 4M), 3x faster than sorting all.
    size = 1 << min(22, max(10, (4 * len(idx)).bit_length()))
    low = (keys[idx] & np.uint64(size - 1)).astype(np.intp)
    idx = idx[np.bincount(low, minlength=size)[low] > 1]
    order = idx[np.argsort(keys[idx], kind="stable")]
    k = keys[order]
    new_group = np.ones(len(k), dtype=bool)
    new_group[1:] = k[1:] != k[:-1]
    head = order[np.maximum.accumulate(np.where(new_group, np.arange(len(k)), 0))]
    member = ~new_group
    u, v = head[member], order[member]
    fresh = v >= n_old
    return u[fresh], v[fresh]


def _near_edges(
    store: _Store, bands: int, accept: float, executor
) -> tuple[np.ndarray, np.ndarray]:
    """Candidate pairs that share a band's key (the bands spread over `executor`), each pair
    verified once however many bands it shares, kept when the signatures agree enough."""
    store.empty()  # computed once here, shipped with the store
    found = executor.map_unordered(_band_pairs, [(store, band) for band in range(bands)])
    # near duplicates share most of their bands: verifying each band's pairs on its own read
    # the same signature rows again and again (4x the reads on re-crawled copies of a corpus).
    # Repeats are dropped as the bands come in, so memory stays near the distinct pairs.
    pairs, pending = np.zeros(0, np.int64), []
    for _, band_pairs in found:
        pending.append(band_pairs)
        if sum(map(len, pending)) > max(len(pairs), COMPACT_PAIRS):
            pairs, pending = np.unique(np.concatenate([pairs, *pending])), []
    pairs = np.unique(np.concatenate([pairs, *pending]))
    u, v = np.divmod(pairs, np.int64(max(store.total, 1)))
    step = max(1 << 16, -(-len(pairs) // (4 * max(1, executor.workers))))
    chunks = [
        (store, u[lo : lo + step], v[lo : lo + step], accept) for lo in range(0, len(u), step)
    ]
    verdicts = dict(executor.map_unordered(_similar, chunks))
    ok = np.concatenate([verdicts[k] for k in range(len(chunks))] + [np.zeros(0, bool)])
    return u[ok], v[ok]


def _band_pairs(store: _Store, band: int) -> np.ndarray:
    """The pairs (as u * total + v) that share this band's key."""
    u, v = _group_edges(store.concat_band(band), store.n_old, skip=store.empty())
    return u * np.int64(store.total) + v


def _similar(store: _Store, u: np.ndarray, v: np.ndarray, accept: float) -> np.ndarray:
    return store.jaccard(u, v) >= accept


class _Store:
    """Narrow per-document arrays of the indexed documents then of this run's, in global order."""

    def __init__(
        self, old: list[Path], staged: Staged, with_sig: bool, bands_rows: tuple[int, int]
    ):
        self.old, self.staged = old, staged
        self.bands_rows = bands_rows
        self.parts: list[tuple[str, int]] = []  # ("old", segment) or ("new", unit)
        sizes = []
        for i, seg in enumerate(old):
            self.parts.append(("old", i))
            sizes.append(len(np.load(seg / "hash.npy", mmap_mode="r")))
        for i, n in enumerate(staged.rows):
            self.parts.append(("new", i))
            sizes.append(n)
        self.offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        self.n_old = int(sum(sizes[: len(old)]))
        self.total = int(self.offsets[-1])
        self.with_sig = with_sig
        self._mmaps: dict[tuple[int, str], np.ndarray] = {}
        self._empty: np.ndarray | None = None

    def _array(self, part: int, name: str) -> np.ndarray:
        key = (part, name)
        if key not in self._mmaps:
            self._mmaps[key] = self._open(part, name)
        return self._mmaps[key]

    def _open(self, part: int, name: str) -> np.ndarray:
        kind, i = self.parts[part]
        if kind == "old":
            return np.load(self.old[i] / f"{name}.npy", mmap_mode="r")
        if self.staged.rows[i] == 0:
            return np.zeros((0,), np.uint64)
        return self.staged.array(name, i)

    def concat(self, name: str, new_only: bool = False) -> np.ndarray:
        parts = range(len(self.old) if new_only else 0, len(self.parts))
        arrays = [np.asarray(self._array(p, name)) for p in parts]
        return np.concatenate(arrays) if arrays else np.zeros(0)

    def concat_band(self, band: int) -> np.ndarray:
        out = np.empty(self.total, dtype=np.uint64)
        for p in range(len(self.parts)):
            lo, hi = self.offsets[p], self.offsets[p + 1]
            if hi > lo:
                out[lo:hi] = self._array(p, "bands")[:, band]
        return out

    def __getstate__(self):  # memory maps are reopened in each process
        return {**self.__dict__, "_mmaps": {}}

    def empty(self) -> np.ndarray:
        """Documents without shingles (no words): they take part in exact dedup only."""
        if self._empty is None:
            self._empty = self._concat_empty()
        return self._empty

    def _concat_empty(self) -> np.ndarray:
        # an empty signature has a known first band key: reading it touches 8 bytes per
        # document, where the signature's first value would map its whole 1 KB row in
        b, r = self.bands_rows
        empty_key = band_keys(np.full((1, b * r), EMPTY, dtype=np.uint32), b, r)[0, 0]
        return self.concat_band(0) == empty_key

    def rows(self, name: str, index: np.ndarray) -> np.ndarray:
        """Rows of a 2-D array at global positions, reading each part once."""
        part = np.searchsorted(self.offsets, index, side="right") - 1
        out = None
        for p in np.unique(part):
            sel = np.flatnonzero(part == p)
            local = index[sel] - self.offsets[p]
            order = np.argsort(local, kind="stable")  # sorted reads are kinder to a memory map
            arr = self._array(int(p), name)
            if out is None:
                out = np.empty((len(index),) + arr.shape[1:], dtype=arr.dtype)
            out[sel[order]] = arr[local[order]]
        return out

    def jaccard(self, u: np.ndarray, v: np.ndarray, chunk: int = 200_000) -> np.ndarray:
        out = np.empty(len(u), dtype=np.float32)
        for lo in range(0, len(u), chunk):
            a = self.rows("sig", u[lo : lo + chunk])
            b = self.rows("sig", v[lo : lo + chunk])
            out[lo : lo + chunk] = np.count_nonzero(a == b, axis=1) / a.shape[1]
        return out

    def ids(self, index: np.ndarray) -> list[str]:
        """Ids of documents at global positions."""
        out: list[str | None] = [None] * len(index)
        part = np.searchsorted(self.offsets, index, side="right") - 1
        for p in np.unique(part):
            sel = np.flatnonzero(part == p)
            local = index[sel] - self.offsets[p]
            kind, i = self.parts[int(p)]
            path = self.old[i] / "ids.parquet" if kind == "old" else self.staged.shard(i)
            col = read_table(path, columns=["id"]).column(0)
            for j, value in zip(sel, col.take(pa.array(local)).to_pylist(), strict=True):
                out[j] = value
        return out


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

    def append(self, key: str, store: _Store, keep_local: np.ndarray) -> None:
        from datasel.io import write_json

        self.root.mkdir(parents=True, exist_ok=True)
        write_json(self.meta, self.root / "meta.json")
        final = self.root / f"seg-{key}"
        tmp = self.root / f".seg-{key}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        glob_idx = store.n_old + keep_local
        np.save(tmp / "hash.npy", store.concat("hash", new_only=True)[keep_local])
        if store.with_sig:
            np.save(
                tmp / "sig.npy",
                store.rows("sig", glob_idx)
                if len(glob_idx)
                else np.zeros((0, self.meta["num_perm"]), np.uint32),
            )
            np.save(
                tmp / "bands.npy",
                store.rows("bands", glob_idx)
                if len(glob_idx)
                else np.zeros((0, self.meta["bands"]), np.uint64),
            )
        pq.write_table(
            pa.table({"id": pa.array(store.ids(glob_idx), pa.string())}), tmp / "ids.parquet"
        )
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
