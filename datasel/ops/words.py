"""Vectorised text normalisation and word hashing over whole Arrow string arrays.

Words are maximal runs of ASCII letters/digits or non-ASCII bytes in the normalised text, so
punctuation separates words and is dropped. Each word is hashed with a polynomial hash
computed from prefix sums over the batch's single byte buffer (no Python loop per word), then
mixed with splitmix64. All arithmetic is mod 2**64, which numpy's uint64 gives for free.
"""

from __future__ import annotations

import unicodedata

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

_BASE = np.uint64(0x100000001B3)  # odd, so invertible mod 2**64
_BASE_INV = np.uint64(pow(int(_BASE), -1, 1 << 64))
_powers = np.ones(1, dtype=np.uint64)
_inv_powers = np.ones(1, dtype=np.uint64)


def normalize(texts: pa.Array | pa.ChunkedArray) -> pa.Array:
    """Unicode NFKC and lower case (whitespace is collapsed later, by tokenising)."""
    if isinstance(texts, pa.ChunkedArray):
        texts = texts.combine_chunks()
    texts = pc.fill_null(texts, "")
    if pa.types.is_large_string(texts.type):  # as Polars writes
        texts = _small_string(texts)
    other = pc.invert(pc.string_is_ascii(texts))
    lowered = pc.ascii_lower(texts)  # NFKC leaves ASCII as it is; 5x faster than utf8 kernels
    if not pc.any(other).as_py():
        return lowered
    # Python's NFKC returns a text that is already normal after a quick check: 3-5x faster
    # than Arrow's utf8_normalize on real text (typographic quotes in otherwise plain prose)
    nfkc = [unicodedata.normalize("NFKC", t) for t in texts.filter(other).to_pylist()]
    return pc.replace_with_mask(lowered, other, pc.utf8_lower(pa.array(nfkc, pa.string())))


def _small_string(texts: pa.Array) -> pa.Array:
    """A large_string array (no nulls) as a string array whose offsets start at 0. Arrow's cast
    keeps a slice's first offset, and ascii_lower then returned zeros (pyarrow 26)."""
    data, offsets = string_buffer(texts)
    if len(data) >= 1 << 31:
        raise ValueError("a batch holds over 2 GB of text; use a smaller batch")
    return pa.StringArray.from_buffers(
        len(texts), pa.py_buffer(offsets.astype(np.int32)), pa.py_buffer(data)
    )


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


def grow_powers(n: int) -> None:
    """Precompute the hash powers for a batch of up to `n` bytes (shared by forked workers)."""
    global _powers, _inv_powers
    if len(_powers) > n:
        return
    size = max(n + 1, 2 * len(_powers))
    for name, base in (("_powers", _BASE), ("_inv_powers", _BASE_INV)):
        # by doubling, p[k:2k] = p[:k] * base**k: whole-array products, ~10x faster than the
        # element-by-element cumprod, and the same values mod 2**64
        p = np.empty(size, dtype=np.uint64)
        p[0], k = 1, 1
        with np.errstate(over="ignore"):
            while k < size:
                m = min(k, size - k)
                np.multiply(p[:m], p[k - 1] * base, out=p[k : k + m])
                k += m
        globals()[name] = p


def _runs(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Starts and ends of the maximal runs of True in `mask` (which must end with False)."""
    change = np.empty(len(mask), dtype=bool)
    change[0] = mask[0]
    np.not_equal(mask[1:], mask[:-1], out=change[1:])
    edges = np.flatnonzero(change)
    return edges[0::2], edges[1::2]


def _word_bytes(data: np.ndarray) -> np.ndarray:
    """ASCII letters and digits, and every byte of a non-ASCII character (5x faster than a
    lookup table, as plain comparisons vectorise)."""
    letter = (data | np.uint8(0x20)) - np.uint8(ord("a")) < 26
    digit = data - np.uint8(ord("0")) < 10
    return (data >= 0x80) | letter | digit


def _space_bytes(data: np.ndarray) -> np.ndarray:
    return (data == 32) | (data - np.uint8(9) < 5)  # space, \t \n \v \f \r


def utf8_lengths(texts: pa.Array) -> np.ndarray:
    return pc.binary_length(pc.fill_null(texts, "")).to_numpy().astype(np.int64)


def byte_chunks(lengths: np.ndarray, target: int = 256 << 10) -> list[tuple[int, int]]:
    """Row ranges of ~256 KB of text: the hashing arrays (8 bytes per text byte) then stay in
    cache, which here made hashing 2x faster than whole 16 MB batches, and two workers slow
    each other less than with 512 KB (they share the memory bus)."""
    ends = np.cumsum(lengths)
    cuts = np.searchsorted(
        ends, np.arange(target, ends[-1] if len(ends) else 0, target), side="right"
    )
    bounds = np.concatenate([[0], cuts, [len(lengths)]])
    bounds = bounds[np.flatnonzero(np.diff(bounds, prepend=-1))]  # sorted: drop repeats
    return list(zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True))


def spaced_buffer(texts: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """The bytes of the texts with a space after each (so that no run of non-space bytes goes
    across two documents), and the offsets of the texts in it."""
    return string_buffer(pc.binary_join_element_wise(texts, "", " "))


def prefix_hashes(data: np.ndarray) -> np.ndarray:
    """Polynomial hashes of every prefix of `data`: a run's hash is then two lookups."""
    n = len(data)
    grow_powers(n)
    prefix = np.zeros(n + 1, dtype=np.uint64)
    x = prefix[1:]
    x[:] = data
    np.multiply(x, _powers[:n], out=x)
    np.add.accumulate(x.view(np.int64), out=x.view(np.int64))  # int64 is ~3x faster, same bits
    return prefix


def run_hashes(
    prefix: np.ndarray, offsets: np.ndarray, starts: np.ndarray, ends: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Hashes of the byte runs [starts, ends), and how many runs each document holds."""
    h = mix64((prefix[ends] - prefix[starts]) * _inv_powers[starts])
    return h, np.diff(np.searchsorted(starts, offsets))


def doc_sums(values: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Per-document sums of `values` laid out document after document, `counts[i]` of them for
    document i (0 for a document without any), in the values' dtype (uint64 wraps mod 2**64)."""
    out = np.zeros(len(counts), dtype=values.dtype)
    some = counts > 0
    if some.any():
        out[some] = np.add.reduceat(values, (np.cumsum(counts) - counts)[some])
    return out


def hash_texts(texts: pa.Array) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Hash every text and every word of every text, in one pass over the bytes.

    `texts` must be normalised (see `normalize`). Returns
    (text hashes uint64 per document, word hashes uint64, document index of each word int64).
    The text hash is of the whitespace-separated tokens in order, so it equals the hash of the
    text with runs of whitespace collapsed and trimmed.
    """
    data, offsets = spaced_buffer(texts)
    n_docs = len(offsets) - 1
    prefix = prefix_hashes(data)
    words, word_counts = run_hashes(prefix, offsets, *_runs(_word_bytes(data)))
    tokens, counts = run_hashes(prefix, offsets, *_runs(~_space_bytes(data)))
    first = np.cumsum(counts) - counts
    pos = np.arange(len(tokens), dtype=np.uint64) - np.repeat(first, counts).astype(np.uint64)
    text = doc_sums(mix64(tokens ^ mix64(pos + np.uint64(1))), counts)
    docs = np.repeat(np.arange(n_docs), word_counts)
    return mix64(text + counts.astype(np.uint64)), words, docs
