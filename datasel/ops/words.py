"""Vectorised text normalisation and word hashing over whole Arrow string arrays.

Words are maximal runs of ASCII letters/digits or non-ASCII bytes in the normalised text, so
punctuation separates words and is dropped. Each word is hashed with a polynomial hash
computed from prefix sums over the batch's single byte buffer (no Python loop per word), then
mixed with splitmix64. All arithmetic is mod 2**64, which numpy's uint64 gives for free.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

_BASE = np.uint64(0x100000001B3)  # odd, so invertible mod 2**64
_BASE_INV = np.uint64(pow(int(_BASE), -1, 1 << 64))
_WORD_BYTE = np.zeros(256, dtype=bool)
_WORD_BYTE[ord("0") : ord("9") + 1] = True
_WORD_BYTE[ord("a") : ord("z") + 1] = True
_WORD_BYTE[ord("A") : ord("Z") + 1] = True
_WORD_BYTE[0x80:] = True
_SPACE_BYTE = np.zeros(256, dtype=bool)
_SPACE_BYTE[[9, 10, 11, 12, 13, 32]] = True
_powers = np.ones(1, dtype=np.uint64)
_inv_powers = np.ones(1, dtype=np.uint64)


def normalize(texts: pa.Array | pa.ChunkedArray) -> pa.Array:
    """Unicode NFKC and lower case (whitespace is collapsed later, by tokenising)."""
    if isinstance(texts, pa.ChunkedArray):
        texts = texts.combine_chunks()
    return pc.utf8_lower(pc.utf8_normalize(pc.fill_null(texts, ""), "NFKC"))


def mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser: a bijection on uint64 that spreads every input bit."""
    with np.errstate(over="ignore"):  # wrap-around is the point
        x = x ^ (x >> np.uint64(30))
        x = x * np.uint64(0xBF58476D1CE4E5B9)
        x = x ^ (x >> np.uint64(27))
        x = x * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def string_buffer(arr: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """The UTF-8 bytes of a string array as one uint8 array, and int64 offsets (len n+1)."""
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    arr = pc.fill_null(arr, "")
    large = pa.types.is_large_string(arr.type)
    _, offsets_buf, data_buf = arr.buffers()
    offsets = np.frombuffer(offsets_buf, dtype=np.int64 if large else np.int32)
    offsets = offsets[arr.offset : arr.offset + len(arr) + 1].astype(np.int64)
    data = (
        np.frombuffer(data_buf, dtype=np.uint8) if data_buf is not None else np.zeros(0, np.uint8)
    )
    data = data[offsets[0] : offsets[-1]]
    return data, offsets - offsets[0]


def _grow_powers(n: int) -> None:
    global _powers, _inv_powers
    if len(_powers) > n:
        return
    size = max(n + 1, 2 * len(_powers))
    for name, base in (("_powers", _BASE), ("_inv_powers", _BASE_INV)):
        p = np.full(size, base, dtype=np.uint64)
        p[0] = 1
        globals()[name] = np.cumprod(p, dtype=np.uint64)


def _runs(mask: np.ndarray, offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Starts and ends of maximal runs of True bytes, cut at document boundaries."""
    n = len(mask)
    before = np.empty(n, dtype=bool)
    before[0] = False
    before[1:] = mask[:-1]
    after = np.empty(n, dtype=bool)
    after[-1] = False
    after[:-1] = mask[1:]
    doc_starts, doc_ends = offsets[:-1], offsets[1:] - 1
    before[doc_starts[doc_starts < n]] = False
    after[doc_ends[doc_ends >= 0]] = False
    return np.flatnonzero(mask & ~before), np.flatnonzero(mask & ~after) + 1


def hash_texts(texts: pa.Array) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Hash every text and every word of every text, in one pass over the bytes.

    `texts` must be normalised (see `normalize`). Returns
    (text hashes uint64 per document, word hashes uint64, document index of each word int64).
    The text hash is of the whitespace-separated tokens in order, so it equals the hash of the
    text with runs of whitespace collapsed and trimmed.
    """
    data, offsets = string_buffer(texts)
    n_docs, n = len(offsets) - 1, len(data)
    if n == 0:
        return np.full(n_docs, mix64(np.uint64(0))), np.zeros(0, np.uint64), np.zeros(0, np.int64)
    _grow_powers(n)
    prefix = np.zeros(n + 1, dtype=np.int64)  # int64 accumulates 3x faster; same bits mod 2**64
    np.add.accumulate((data.astype(np.uint64) * _powers[:n]).view(np.int64), out=prefix[1:])
    prefix = prefix.view(np.uint64)

    def run_hashes(mask):
        starts, ends = _runs(mask, offsets)
        return mix64((prefix[ends] - prefix[starts]) * _inv_powers[starts]), starts

    words, starts = run_hashes(_WORD_BYTE[data])
    docs = np.searchsorted(offsets, starts, side="right") - 1
    tokens, tstarts = run_hashes(~_SPACE_BYTE[data])
    tdocs = np.searchsorted(offsets, tstarts, side="right") - 1
    counts = np.bincount(tdocs, minlength=n_docs)
    pos = np.arange(len(tokens)) - np.repeat(np.cumsum(counts) - counts, counts)
    text = np.zeros(n_docs, dtype=np.uint64)
    np.add.at(text, tdocs, mix64(tokens ^ mix64(pos.astype(np.uint64) + np.uint64(1))))
    return mix64(text + counts.astype(np.uint64)), words, docs
