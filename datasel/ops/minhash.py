"""MinHash signatures of word n-gram shingles, and LSH band keys.

One-permutation hashing (Li, Owen & Zhang, NeurIPS 2012) with optimal densification
(Shrivastava, ICML 2017): each shingle is hashed once; its hash picks one of `num_perm` bins
and the bin keeps the minimum. Empty bins borrow the value of another bin chosen by a fixed
pseudo-random probe sequence, so every signature has `num_perm` values and
P[sig_a[k] == sig_b[k]] = Jaccard(a, b), as with `num_perm` independent permutations, at
1/num_perm of the hashing cost.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from datasel.ops.words import mix64

EMPTY = np.uint32(0xFFFFFFFF)
_PROBES = 4096


def shingle_hashes(
    words: np.ndarray, docs: np.ndarray, n_docs: int, ngram: int = 5
) -> tuple[np.ndarray, np.ndarray]:
    """Hash each run of `ngram` consecutive words of a document (one shingle for shorter documents).

    `words`, `docs`: word hashes and their document index, in reading order.
    Returns (shingle hashes uint64, document index int64).
    """
    coef = mix64(np.arange(1, ngram + 1, dtype=np.uint64))
    counts = np.bincount(docs, minlength=n_docs)
    first = np.concatenate([[0], np.cumsum(counts)[:-1]])
    w = len(words)
    parts_h, parts_d = [], []
    if w >= ngram:
        m = w - ngram + 1
        acc = words[:m] * coef[0]
        for j in range(1, ngram):
            acc = acc + words[j : j + m] * coef[j]
        valid = docs[:m] == docs[ngram - 1 : ngram - 1 + m]
        parts_h.append(acc[valid])
        parts_d.append(docs[:m][valid])
    short = np.flatnonzero((counts > 0) & (counts < ngram))
    if short.size:
        # documents with fewer words than a shingle: one shingle of all their words
        sel = np.concatenate([np.arange(first[d], first[d] + counts[d]) for d in short])
        pos = sel - np.repeat(first[short], counts[short])
        contrib = words[sel] * coef[pos]
        parts_h.append(
            np.add.reduceat(contrib, np.concatenate([[0], np.cumsum(counts[short])[:-1]]))
        )
        parts_d.append(short)
    if not parts_h:
        return np.zeros(0, np.uint64), np.zeros(0, np.int64)
    if len(parts_h) == 1:  # already in reading order
        return mix64(parts_h[0]), parts_d[0]
    h, d = np.concatenate(parts_h), np.concatenate(parts_d)
    order = np.argsort(d, kind="stable")
    return mix64(h[order]), d[order]


@lru_cache(maxsize=8)
def _probe_table(num_perm: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed ^ 0x5EED)
    return rng.integers(0, num_perm, size=(_PROBES, num_perm), dtype=np.int64)


def signatures(
    shingles: np.ndarray, docs: np.ndarray, n_docs: int, num_perm: int = 256, seed: int = 0
) -> np.ndarray:
    """MinHash signatures, shape (n_docs, num_perm) uint32. A document without shingles gets
    a row of EMPTY values; callers should treat it as having no near duplicates."""
    h = mix64(shingles ^ mix64(np.uint64(seed) + np.uint64(0x9E3779B97F4A7C15)))
    bins = ((h >> np.uint64(32)) * np.uint64(num_perm)) >> np.uint64(32)
    values = (h & np.uint64(0xFFFFFFFF)).astype(np.uint32)
    sig = np.full(n_docs * num_perm, EMPTY, dtype=np.uint32)
    np.minimum.at(sig, docs * num_perm + bins.astype(np.int64), values)
    sig = sig.reshape(n_docs, num_perm)
    has = np.zeros(n_docs, dtype=bool)
    has[docs] = True
    empty = sig == EMPTY
    empty[~has] = False
    todo = np.flatnonzero(empty.any(axis=1))
    if todo.size:
        sig[todo] = _densify(sig[todo], empty[todo], _probe_table(num_perm, seed))
    return sig


# Probes tried for every bin of every document at once (whole-row gathers, cheap per probe);
# after that few bins are still empty, and those go one by one through the rest of their sequence.
DENSE_PROBES = 8


def _densify(sig: np.ndarray, empty: np.ndarray, probes: np.ndarray) -> np.ndarray:
    """`sig` with each empty bin given the value of the first non-empty bin of its row in the
    bin's probe sequence (`probes[:, bin]`)."""
    out = sig.copy()
    empty = empty.copy()
    for k in range(min(DENSE_PROBES, len(probes))):
        value = np.take(sig, probes[k], axis=1)
        hit = empty & (value != EMPTY)
        np.copyto(out, value, where=hit)
        empty &= ~hit
    rows, cols = np.nonzero(empty)
    if rows.size:
        out[rows, cols] = _probe_rest(sig, rows, cols, probes, DENSE_PROBES)
    return out


def _probe_rest(
    sig: np.ndarray, rows: np.ndarray, cols: np.ndarray, probes: np.ndarray, start: int
) -> np.ndarray:
    """The value of each empty bin (rows, cols) from its probe sequence, from probe `start` on.
    Probes are tried in rounds of doubling width, so a document needs a dozen rounds at most,
    whatever its number of empty bins."""
    fill = np.zeros(len(rows), dtype=np.uint32)
    flat = sig.reshape(-1)
    base = rows * sig.shape[1]
    todo = np.arange(len(rows))
    width = 2
    while todo.size and start < len(probes):
        stop = min(len(probes), start + width)
        cand = flat.take(base[todo, None] + probes[start:stop].T[cols[todo]])
        ok = cand != EMPTY
        first = ok.argmax(axis=1)
        hit = ok[np.arange(len(todo)), first]
        fill[todo[hit]] = cand[hit, first[hit]]
        todo = todo[~hit]
        start, width = stop, width * 2
    if todo.size:  # ~1e-7 per bin for a one-shingle document: use its only value
        r = rows[todo]
        fill[todo] = np.where(sig[r] == EMPTY, 0, sig[r]).max(axis=1)
    return fill


def band_keys(sig: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """Hash each band of `rows` signature values to one uint64, shape (n_docs, bands)."""
    n = sig.shape[0]
    coef = mix64(np.arange(101, 101 + rows, dtype=np.uint64))
    x = sig[:, : bands * rows].reshape(n, bands, rows).astype(np.uint64)
    acc = np.zeros((n, bands), dtype=np.uint64)
    for j in range(rows):
        acc += (x[:, :, j] + np.uint64(1)) * coef[j]
    return mix64(acc + np.arange(bands, dtype=np.uint64))


def lsh_params(threshold: float, num_perm: int, fn_weight: float = 0.5) -> tuple[int, int]:
    """Bands and rows per band (bands * rows <= num_perm) minimising the weighted area of
    false positives (Jaccard below `threshold` yet a candidate) and false negatives (above it,
    missed), as datasketch's MinHashLSH does."""

    pairs = np.array(
        [(b, r) for b in range(1, num_perm + 1) for r in range(1, num_perm // b + 1)],
        dtype=np.float64,
    )
    b, r = pairs[:, :1], pairs[:, 1:]
    lo = np.linspace(0.0, threshold, 200)[None, :]
    hi = np.linspace(threshold, 1.0, 200)[None, :]
    fp = np.trapezoid(1 - (1 - lo**r) ** b, lo, axis=1)
    fn = np.trapezoid((1 - hi**r) ** b, hi, axis=1)
    best = pairs[np.argmin((1 - fn_weight) * fp + fn_weight * fn)]
    return int(best[0]), int(best[1])
