"""Hashed n-gram features for DSIR (Xie et al., 2023, "Data Selection for Language Models via
Importance Resampling", arXiv:2302.03169).

Documents are lower-cased and split like the reference's nltk ``WordPunctTokenizer``
(``\\w+|[^\\w\\s]+``); word unigrams and bigrams are hashed into ``buckets``. The reference hashes
every n-gram string with sha256 in a Python loop. Here (``hashing="fast"``) the tokens are found
and hashed in numpy over the batch's bytes: a class per byte (word, punctuation, space), runs of
one class are tokens, each token's hash is two lookups in polynomial prefix hashes, and bigram
hashes are mixed from their two token hashes. A character's class is what Python's ``re`` says
(``\\w``, ``\\s`` or neither), looked up once per distinct character of a batch, so the tokens
are exactly the reference's. ``hashing="sha256"`` also reproduces the reference's buckets, with
stdlib ``re`` semantics as nltk had them before 3.10 (nltk 3.10 compiles with the ``regex``
module, whose ``\\w`` also matches combining marks: 3 of 2,000 dev-corpus documents tokenise
differently).
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import re
from collections.abc import Iterable
from typing import TYPE_CHECKING, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from datasel.ops.words import (
    byte_chunks,
    mix64,
    prefix_hashes,
    run_hashes,
    spaced_buffer,
    utf8_lengths,
)

TOKEN_RE = re.compile(r"\w+|[^\w\s]+")
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
SPACE, WORD, PUNCT = 0, 1, 2

if TYPE_CHECKING:  # scipy is imported only where a sparse matrix is built (~0.15 s)
    import scipy.sparse as sp

    CountsLike = sp.spmatrix | sp.sparray | np.ndarray | tuple[np.ndarray, np.ndarray, np.ndarray]


def tokenize(text: str) -> list[str]:
    """Lower-case and split into word and punctuation runs (nltk ``WordPunctTokenizer``)."""
    return TOKEN_RE.findall(text.lower())


@functools.cache
def _char_class(cp: int) -> int:
    ch = chr(cp)
    return WORD if re.fullmatch(r"\w", ch) else SPACE if re.fullmatch(r"\s", ch) else PUNCT


_BYTE_CLASS = np.array([_char_class(b) for b in range(128)] + [WORD] * 128, np.uint8)


def _byte_classes(data: np.ndarray) -> np.ndarray:
    """The class of each byte: of its character, as Python's re classes it (\\w, \\s, other)."""
    cls = _BYTE_CLASS[data]
    lead = np.flatnonzero(data >= 0xC0)  # first bytes of non-ASCII characters
    if not lead.size:
        return cls
    b0 = data[lead].astype(np.int64)
    size = 2 + (b0 >= 0xE0) + (b0 >= 0xF0)
    cp = b0 & np.where(size == 2, 0x1F, np.where(size == 3, 0x0F, 0x07))
    for k in (1, 2, 3):
        more = size > k
        cp[more] = (cp[more] << 6) | (data[lead[more] + k] & 0x3F)
    chars, inverse = np.unique(cp, return_inverse=True)
    char_cls = np.array([_char_class(int(c)) for c in chars], np.uint8)[inverse]
    for k in range(4):
        more = size > k
        cls[lead[more] + k] = char_cls[more]
    return cls


def _fast_tokens(texts: list[str] | pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """Hash of every token in reading order, and the number of tokens of each document."""
    arr = texts if isinstance(texts, pa.Array) else pa.array(texts, pa.string())
    parts = [_chunk_tokens(arr.slice(lo, hi - lo)) for lo, hi in byte_chunks(utf8_lengths(arr))]
    if not parts:
        return np.zeros(0, np.uint64), np.zeros(0, np.int64)
    return np.concatenate([h for h, _ in parts]), np.concatenate([n for _, n in parts])


def _chunk_tokens(arr: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    arr = pc.fill_null(arr, "")
    other = pc.invert(pc.string_is_ascii(arr))
    ascii_only = not pc.any(other).as_py()
    lowered = pc.ascii_lower(arr)
    if not ascii_only:  # Python's lower(), as the reference ("İ" is "i̇" there, "i" in Arrow)
        python = pa.array([t.lower() for t in arr.filter(other).to_pylist()], pa.string())
        lowered = pc.replace_with_mask(lowered, other, python)
    data, offsets = spaced_buffer(lowered)
    cls = _BYTE_CLASS[data] if ascii_only else _byte_classes(data)
    # a token starts where a word or punctuation run starts, and ends before the class changes
    # (every text ends with a space, so every run ends inside the buffer)
    change = np.empty(len(cls), dtype=bool)
    change[0] = True
    np.not_equal(cls[1:], cls[:-1], out=change[1:])
    edges = np.flatnonzero(change)
    starts = edges[cls[edges] != SPACE]
    ends = np.append(edges[1:], len(cls))[cls[edges] != SPACE]
    return run_hashes(prefix_hashes(data), offsets, starts, ends)


def _sha256_bucket(s: str, buckets: int) -> int:
    return int(hashlib.sha256(s.encode("utf-8")).hexdigest(), 16) % buckets


def hashed_ngram_counts(
    texts: list[str] | pa.Array,
    buckets: int = 10_000,
    *,
    hashing: Literal["fast", "sha256"] = "fast",
    canonical: bool = True,
) -> sp.csr_matrix:
    """Hashed unigram + bigram counts per document.

    Parameters
    ----------
    texts : list of str, or an Arrow string array
        One batch of documents.
    buckets : int
        Number of hash buckets (columns).
    hashing : {"fast", "sha256"}
        ``"fast"`` (default): tokens found in numpy (see the module's docstring), unigram bucket
        ``splitmix64(poly(token bytes)) % buckets``, bigram bucket
        ``splitmix64(h(a) * 0x9E3779B97F4A7C15 + h(b)) % buckets``. ``"sha256"``: exactly the
        reference's tokens and ``int(sha256(ngram).hexdigest(), 16) % buckets`` (bigram string
        ``"a b"``), ~10x slower.
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
    import scipy.sparse as sp

    features, nnz = hashed_ngram_features(texts, buckets, hashing=hashing)
    indptr = np.zeros(len(nnz) + 1, dtype=np.int64)
    np.cumsum(nnz, out=indptr[1:])
    data = np.ones(len(features), dtype=np.int32)
    out = sp.csr_matrix((data, features.astype(np.int32), indptr), shape=(len(nnz), buckets))
    if canonical:
        out.sum_duplicates()
    return out


def hashed_ngram_features(
    texts: list[str] | pa.Array,
    buckets: int = 10_000,
    *,
    hashing: Literal["fast", "sha256"] = "fast",
) -> tuple[np.ndarray, np.ndarray]:
    """The bucket of every unigram and bigram, document after document (each document's
    unigrams, then its bigrams), and the number of them per document (``2 * n_i - 1``).
    Buckets are uint16 when they fit, else int32: an unsorted list is smaller than
    (bucket, count) pairs and needs no sort. See `hashed_ngram_counts` for the parameters."""
    if buckets < 1:
        raise ValueError(f"buckets must be >= 1, got {buckets}")
    if hashing not in ("fast", "sha256"):
        raise ValueError(f"hashing must be 'fast' or 'sha256', got {hashing!r}")
    if hashing == "fast":
        h, lens = _fast_tokens(texts)
        pos = _bigram_starts(lens)
        uni = h % np.uint64(buckets)
        bi = mix64(h[pos] * _GOLDEN + h[pos + 1]) % np.uint64(buckets)
    else:
        uni, bi, lens = _sha256_features(
            texts.to_pylist() if isinstance(texts, pa.Array) else texts, buckets
        )
        pos = _bigram_starts(lens)
    return _doc_layout(uni, bi, pos, lens, np.uint16 if buckets <= 1 << 16 else np.int32)


def _bigram_starts(lens: np.ndarray) -> np.ndarray:
    """Token positions p such that (p, p+1) is a bigram: all but each document's last token."""
    n_tok = int(lens.sum())
    valid = np.ones(max(n_tok - 1, 0), dtype=bool)
    ends = np.cumsum(lens)[lens > 0] - 1
    valid[ends[ends < n_tok - 1]] = False
    return np.flatnonzero(valid)


def _sha256_features(texts: list[str], buckets: int):
    """The reference's unigram and bigram buckets, each distinct n-gram hashed once."""
    toks = [TOKEN_RE.findall(t.lower()) for t in texts]
    lens = np.fromiter(map(len, toks), dtype=np.int64, count=len(texts))
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
    pos = _bigram_starts(lens)
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
    return uni, ub[inv], lens


def _doc_layout(uni, bi, pos, lens, dtype) -> tuple[np.ndarray, np.ndarray]:
    """Features laid out doc by doc: doc i holds its n_i unigrams, then its n_i - 1 bigrams."""
    n_docs, n_tok = len(lens), int(lens.sum())
    off = np.zeros(n_docs + 1, dtype=np.int64)
    np.cumsum(lens, out=off[1:])
    nnz = lens + np.maximum(lens - 1, 0)
    start = np.cumsum(nnz) - nnz
    doc_of_tok = np.repeat(np.arange(n_docs), lens)
    shift = start - off[:-1]  # output start minus token start, per doc
    out = np.empty(int(nnz.sum()), dtype=dtype)
    out[np.arange(n_tok) + shift[doc_of_tok]] = uni
    out[pos + shift[doc_of_tok[pos]] + lens[doc_of_tok[pos]]] = bi
    return out, nnz


def _as_csr(counts: CountsLike, buckets: int | None = None) -> sp.csr_matrix | np.ndarray:
    if isinstance(counts, tuple):
        import scipy.sparse as sp

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
        if not isinstance(c, np.ndarray):  # sparse
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


def doc_log_ratios(
    features: np.ndarray,
    nnz: np.ndarray,
    p_totals: np.ndarray,
    q_totals: np.ndarray,
    smoothing: float,
    *,
    counted_in: Literal["p", "q"],
    chunk: int = 1 << 22,
) -> np.ndarray:
    """Per-document ``sum over its n-grams of log p(x) / q(x)``, p and q the add-`smoothing`
    bucket distributions of `p_totals` and `q_totals`, each document left out of the totals it
    was counted in (`counted_in`): a pool document's own rare n-grams would otherwise make it
    look typical of the pool, the more so the more buckets and the smaller the pool. Documents
    are taken about `chunk` n-grams at a time (memory: ~40 bytes an n-gram of a chunk)."""
    buckets = len(p_totals)
    p_total, q_total = float(p_totals.sum()), float(q_totals.sum())

    def log_prob(totals, total, bucket, own, size, leave_out: bool) -> np.ndarray:
        if leave_out:
            return np.log((totals[bucket] - own + smoothing) / (total - size + smoothing * buckets))
        return np.log((totals[bucket] + smoothing) / (total + smoothing * buckets))

    out = np.zeros(len(nnz))
    ends = np.cumsum(nnz)
    max_docs = max((1 << 32) // buckets, 1)  # so that the sort keys fit uint32: 5x faster
    key_type = np.uint32 if buckets <= 1 << 31 else np.uint64
    lo = 0
    while lo < len(nnz):
        start = int(ends[lo] - nnz[lo])
        hi = max(int(np.searchsorted(ends, start + chunk, side="right")), lo + 1)
        hi = min(hi, lo + max_docs)
        n = nnz[lo:hi]
        # each distinct (document, bucket) once, with its count in the document: a sort, no scatter
        doc = np.repeat(np.arange(hi - lo, dtype=key_type), n)
        key = np.sort(
            doc * key_type(buckets) + features[start : int(ends[hi - 1])].astype(key_type)
        )
        first = np.flatnonzero(np.r_[True, key[1:] != key[:-1]]) if len(key) else key
        own = np.diff(np.r_[first, len(key)]).astype(np.float64)
        doc, bucket = np.divmod(key[first], key_type(buckets))
        size = n[doc].astype(np.float64)
        diff = log_prob(p_totals, p_total, bucket, own, size, counted_in == "p")
        diff -= log_prob(q_totals, q_total, bucket, own, size, counted_in == "q")
        out[lo:hi] = np.bincount(doc, weights=own * diff, minlength=hi - lo)
        lo = hi
    return out


def fold_buckets(totals: np.ndarray, buckets: int) -> np.ndarray:
    """Bucket totals hashed into ``len(totals)`` buckets, refolded into `buckets` (a divisor):
    bucket ``h % len(totals)`` lands in ``h % buckets``, as hashing into `buckets` would."""
    return np.asarray(totals, dtype=np.float64).reshape(-1, buckets).sum(axis=0)
