"""Hashed n-gram features for DSIR (Xie et al., 2023, "Data Selection for Language Models via
Importance Resampling", arXiv:2302.03169).

Documents are lower-cased and split like the reference's nltk ``WordPunctTokenizer``
(``\\w+|[^\\w\\s]+``); word unigrams and bigrams are hashed into ``buckets``. The reference hashes
every n-gram string with sha256 in a Python loop; here each distinct token of a batch is hashed once
(xxh3-64) and bigram hashes are mixed from their two token hashes in numpy, so the per-token Python
work is only the regex and one dict lookup (6-9x the reference's docs/s on one core, see
benchmarks/shift_speed.py). ``hashing="sha256"`` reproduces the reference's buckets exactly, with
stdlib ``re`` semantics as nltk had them before 3.10 (nltk 3.10 compiles with the ``regex`` module,
whose ``\\w`` also matches combining marks: 3 of 2,000 dev-corpus documents tokenise differently).
"""

from __future__ import annotations

import hashlib
import itertools
import re
from collections.abc import Iterable
from typing import Literal

import numpy as np
import scipy.sparse as sp

from datasel.ops.words import mix64

TOKEN_RE = re.compile(r"\w+|[^\w\s]+")
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)

CountsLike = sp.spmatrix | sp.sparray | np.ndarray | tuple[np.ndarray, np.ndarray, np.ndarray]


def tokenize(text: str) -> list[str]:
    """Lower-case and split into word and punctuation runs (nltk ``WordPunctTokenizer``)."""
    return TOKEN_RE.findall(text.lower())


def _token_hashes(vocab: Iterable[str]) -> np.ndarray:
    import xxhash

    h = xxhash.xxh3_64_intdigest
    return np.fromiter((h(w.encode("utf-8")) for w in vocab), dtype=np.uint64)


def _sha256_bucket(s: str, buckets: int) -> int:
    return int(hashlib.sha256(s.encode("utf-8")).hexdigest(), 16) % buckets


def hashed_ngram_counts(
    texts: list[str],
    buckets: int = 10_000,
    *,
    hashing: Literal["xxh3", "sha256"] = "xxh3",
    canonical: bool = True,
) -> sp.csr_matrix:
    """Hashed unigram + bigram counts per document.

    Parameters
    ----------
    texts : list of str
        One batch of documents.
    buckets : int
        Number of hash buckets (columns).
    hashing : {"xxh3", "sha256"}
        ``"xxh3"`` (default, fast): unigram bucket ``xxh3_64(token) % buckets``; bigram bucket
        ``splitmix64(h(a) * 0x9E3779B97F4A7C15 + h(b)) % buckets``. ``"sha256"``: exactly the
        reference's ``int(sha256(ngram).hexdigest(), 16) % buckets`` (bigram string ``"a b"``),
        ~3x slower.
    canonical : bool
        Merge repeated buckets within a row (sorted, unique column indices). ``False`` skips that
        sort; such a matrix still gives correct products, sums and ``toarray()``.

    Returns
    -------
    scipy.sparse.csr_matrix
        Shape ``(len(texts), buckets)``, int32 counts. Row ``i`` sums to ``2 * n_i - 1`` for a
        document of ``n_i >= 1`` tokens.

    Examples
    --------
    >>> c = hashed_ngram_counts(["Hello, world!"], buckets=16)
    >>> int(c.sum())  # 4 tokens ("hello", ",", "world", "!") + 3 bigrams
    7
    """
    if buckets < 1:
        raise ValueError(f"buckets must be >= 1, got {buckets}")
    if hashing not in ("xxh3", "sha256"):
        raise ValueError(f"hashing must be 'xxh3' or 'sha256', got {hashing!r}")
    n_docs = len(texts)
    toks = [TOKEN_RE.findall(t.lower()) for t in texts]
    lens = np.fromiter(map(len, toks), dtype=np.int64, count=n_docs)
    n_tok = int(lens.sum())
    # Token id = position of the token's first occurrence in the batch: one C-level dict lookup per
    # token, no Python-level counter.
    vocab: dict[str, int] = {}
    ids = np.fromiter(
        map(vocab.setdefault, itertools.chain.from_iterable(toks), itertools.count()),
        dtype=np.int64,
        count=n_tok,
    )
    del toks
    first = np.fromiter(vocab.values(), dtype=np.int64, count=len(vocab))

    off = np.zeros(n_docs + 1, dtype=np.int64)
    np.cumsum(lens, out=off[1:])
    # Bigram (p, p+1) is valid unless p is the last token of its document.
    valid = np.ones(max(n_tok - 1, 0), dtype=bool)
    ends = off[1:][lens > 0] - 1
    valid[ends[ends < n_tok - 1]] = False
    pos = np.flatnonzero(valid)

    if hashing == "xxh3":
        table = np.zeros(max(n_tok, 1), dtype=np.uint64)
        table[first] = _token_hashes(vocab)
        h = table[ids]
        uni = h % np.uint64(buckets)
        bi = mix64(h[pos] * _GOLDEN + h[pos + 1]) % np.uint64(buckets)
    else:
        table = np.zeros(max(n_tok, 1), dtype=np.int64)
        table[first] = [_sha256_bucket(w, buckets) for w in vocab]
        uni = table[ids]
        words = np.empty(max(n_tok, 1), dtype=object)
        words[first] = list(vocab)
        key = ids[pos] * np.int64(max(n_tok, 1)) + ids[pos + 1]
        ukey, inv = np.unique(key, return_inverse=True)
        a, b = np.divmod(ukey, max(n_tok, 1))
        ub = np.fromiter(
            (_sha256_bucket(f"{x} {y}", buckets) for x, y in zip(words[a], words[b], strict=True)),
            dtype=np.int64,
            count=len(ukey),
        )
        bi = ub[inv]

    # Lay features out doc-contiguously: doc i holds its n_i unigrams, then its n_i - 1 bigrams.
    n_feat = lens + np.maximum(lens - 1, 0)
    indptr = np.zeros(n_docs + 1, dtype=np.int64)
    np.cumsum(n_feat, out=indptr[1:])
    doc_of_tok = np.repeat(np.arange(n_docs), lens)
    shift = indptr[:-1] - off[:-1]  # output start minus token start, per doc
    indices = np.empty(int(indptr[-1]), dtype=np.int32)
    indices[np.arange(n_tok) + shift[doc_of_tok]] = uni
    indices[pos + shift[doc_of_tok[pos]] + lens[doc_of_tok[pos]]] = bi
    data = np.ones(len(indices), dtype=np.int32)
    out = sp.csr_matrix((data, indices, indptr), shape=(n_docs, buckets))
    if canonical:
        out.sum_duplicates()
    return out


def _as_csr(counts: CountsLike, buckets: int | None = None) -> sp.csr_matrix | np.ndarray:
    if isinstance(counts, tuple):
        indptr, indices, data = counts
        return sp.csr_matrix((data, indices, indptr), shape=(len(indptr) - 1, buckets))
    return counts


def fit_distribution(
    count_batches: Iterable[CountsLike], buckets: int, *, smoothing: float = 1.0
) -> np.ndarray:
    """Bucket probabilities of a corpus from its per-batch counts.

    Parameters
    ----------
    count_batches : iterable of csr_matrix, dense (docs, buckets) arrays, 1-D bucket totals, or
        ``(indptr, indices, counts)`` tuples
    buckets : int
    smoothing : float
        Add-``smoothing`` (Laplace) pseudo-count per bucket; 1.0 = add-one. ``0`` reproduces the
        reference: ``counts / total + 1e-8`` (the reference's ``log(p + 1e-8)``).

    Returns
    -------
    np.ndarray
        float64, shape ``(buckets,)``.
    """
    total = np.zeros(buckets, dtype=np.float64)
    for batch in count_batches:
        c = _as_csr(batch, buckets)
        if sp.issparse(c):
            total += np.bincount(c.indices, weights=c.data, minlength=buckets)[:buckets]
        else:
            c = np.asarray(c, dtype=np.float64)
            total += c if c.ndim == 1 else c.sum(axis=0)
    if smoothing > 0:
        return (total + smoothing) / (total.sum() + smoothing * buckets)
    return total / max(total.sum(), 1.0) + 1e-8


def log_importance(
    counts: CountsLike, log_p_target: np.ndarray, log_q_pool: np.ndarray
) -> np.ndarray:
    """Per-document log importance weight ``sum_k c_k (log p_k - log q_k)`` (float64)."""
    log_diff = np.asarray(log_p_target, dtype=np.float64) - np.asarray(log_q_pool, np.float64)
    c = _as_csr(counts, len(log_diff))
    return np.asarray(c @ log_diff, dtype=np.float64).reshape(-1)


def hashed_kl(p: np.ndarray, q: np.ndarray) -> float:
    """``KL(p || q)`` in nats between two bucket distributions (each renormalised to sum 1).

    DSIR reports the KL reduction ``KL(target || pool) - KL(target || selected)``; pass a smoothed
    ``q`` (``fit_distribution`` with ``smoothing > 0``) so that empty buckets stay finite.
    """
    p = np.asarray(p, dtype=np.float64)
    q = np.asarray(q, dtype=np.float64)
    p = p / p.sum()
    q = q / q.sum()
    m = p > 0
    with np.errstate(divide="ignore"):
        return float(np.sum(p[m] * (np.log(p[m]) - np.log(q[m]))))
