"""Top-k selection: deterministic top-k and Gumbel top-k sampling without replacement.

Adding i.i.d. Gumbel(0, 1) noise to log-weights and keeping the k largest draws k items without
replacement with probabilities proportional to ``exp(logw)`` (the Gumbel-max trick, as in DSIR's
resampling step, Xie et al., 2023, arXiv:2302.03169). ``np.argpartition`` makes both O(n).
"""

from __future__ import annotations

import numpy as np


def topk(scores: np.ndarray, k: int, *, largest: bool = True) -> np.ndarray:
    """Indices of the ``k`` best scores, best first; ties go to the smaller index.

    Parameters
    ----------
    scores : np.ndarray
        1-D scores. NaN ranks below every number (it is never preferred over a real score).
    k : int
        Number to keep; clipped to ``len(scores)``.
    largest : bool
        Keep the largest (default) or the smallest scores.

    Returns
    -------
    np.ndarray
        int64 indices, ordered by score (best first), then by index.

    Examples
    --------
    >>> topk(np.array([1.0, 3.0, 3.0, 2.0]), 2).tolist()
    [1, 2]
    """
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    n = len(s)
    k = min(k, n)
    if k == 0:
        return np.empty(0, dtype=np.int64)
    # Work on "smaller is better" keys so that one code path serves both directions.
    key = -s if largest else s.copy()
    key[np.isnan(key)] = np.inf
    if k < n:
        kth = np.partition(key, k - 1)[k - 1]
        better = np.flatnonzero(key < kth)
        tied = np.flatnonzero(key == kth)[: k - len(better)]  # flatnonzero is index-ordered
        idx = np.concatenate([better, tied])
    else:
        idx = np.arange(n)
    order = np.lexsort((idx, key[idx]))
    return idx[order].astype(np.int64, copy=False)


def gumbel_topk(logw: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Sample ``k`` indices without replacement, with probability proportional to ``exp(logw)``.

    Parameters
    ----------
    logw : np.ndarray
        1-D log-weights (unnormalised). ``-inf`` is never drawn while finite weights remain;
        NaN counts as ``-inf``.
    k : int
        Sample size; clipped to ``len(logw)``.
    seed : int
        Seed of ``np.random.default_rng``; the same (logw, k, seed) gives the same indices.

    Returns
    -------
    np.ndarray
        int64 indices in draw order (the first is a draw from the full softmax, the second from the
        rest, ...).

    Examples
    --------
    >>> gumbel_topk(np.log([0.7, 0.2, 0.1]), 3, seed=0).shape
    (3,)
    """
    lw = np.asarray(logw, dtype=np.float64).reshape(-1)
    g = np.random.default_rng(seed).gumbel(size=lw.shape)
    keys = lw + g
    keys[np.isnan(keys)] = -np.inf
    return topk(keys, k)


# ------------------------------------------------------------------ top-k in bounded memory

DIGIT_BITS = 16  # four passes over 64-bit keys, each with a 65,536-bucket histogram
_SIGN = np.uint64(1 << 63)


def order_keys(values: np.ndarray) -> np.ndarray:
    """uint64 keys that sort as the float64 `values` do; -0.0 gets the key of 0.0 (they tie
    in a sort). `values` hold no NaN.

    Examples
    --------
    >>> k = order_keys(np.array([-np.inf, -1.0, -0.0, 0.0, 2.5]))
    >>> bool((np.diff(k.astype(object)) >= 0).all()), bool(k[2] == k[3])
    (True, True)
    """
    bits = (np.asarray(values, dtype=np.float64) + 0.0).view(np.uint64)  # -0.0 + 0.0 is 0.0
    return np.where(bits & _SIGN, ~bits, bits | _SIGN)


def streaming_cut(parts, target: float, weighted: bool) -> tuple[int, float]:
    """Where a top-k over streamed parts ends, without holding all keys: radix selection.

    Rows are taken highest key first, ties in the order `parts()` yields them; the cut is at the
    first row where the running weight (1 a row unless `weighted`) reaches `target`. Each of four
    passes over `parts()` (a callable returning an iterable of `(keys, weights)` from
    `order_keys`) keeps a 65,536-bucket histogram of the next 16 bits of the keys inside the
    bucket found so far, so memory is one part plus the histogram, whatever the row count.

    Returns the cut row's key and the weight of the rows whose key is larger. The caller takes
    those rows, then the rows of that key in order while the running weight is below `target`,
    plus the one that reaches it. `target` must be reached by the total weight and, unless no row
    has weight, be > 0 (as in `topk`, k >= 1).
    """
    one = np.array([target], np.float64)
    cut, above = grouped_cut(lambda: ((k, w, None) for k, w in parts()), one, weighted)
    return int(cut[0]), (float(above[0]) if weighted else int(above[0]))


def take_tied(weights: np.ndarray, running: float, target: float) -> tuple[int, float, bool]:
    """Of the tied rows at the cut (in order, with their `weights`), how many to take, given the
    `running` weight before them: up to and including the one where it reaches `target`.
    Returns (taken, running weight after them, whether the target is reached)."""
    cum = running + np.cumsum(weights)
    j = int(np.searchsorted(cum, target, side="left"))  # the first that reaches it, as topk
    if j < len(cum):
        return j + 1, cum[j], True
    return len(cum), (cum[-1] if len(cum) else running), False


def streaming_top(parts, k: int):
    """Top-k of keys streamed part by part, in bounded memory: the cut from `streaming_cut`'s
    passes, then the rows above it and the first tied ones in order, as `topk` takes them.

    `parts()` returns an iterable of tuples whose last item is the `order_keys` of a part's rows
    (highest first; NaN must already be mapped to -inf). Yields `(part, taken)` for each tuple of
    a last pass over `parts()`, `taken` a bool mask of its rows; `k` must not exceed the rows.

    Examples
    --------
    >>> keys = order_keys(np.array([1.0, 3.0, 3.0, 2.0]))
    >>> [t.tolist() for _, t in streaming_top(lambda: [(keys[:2],), (keys[2:],)], 2)]
    [[False, True], [True, False]]
    """
    if k == 0:
        for part in parts():
            yield part, np.zeros(len(part[-1]), dtype=bool)
        return
    cut, running = streaming_cut(lambda: ((p[-1], None) for p in parts()), k, False)
    cut, reached = np.uint64(cut), False
    for part in parts():
        keys = part[-1]
        taken = keys > cut
        if not reached:
            tied = np.flatnonzero(keys == cut)
            n, running, reached = take_tied(np.ones(len(tied), np.int64), running, k)
            taken[tied[:n]] = True
        yield part, taken


def grouped_cut(parts, targets: np.ndarray, weighted: bool) -> tuple[np.ndarray, np.ndarray]:
    """`streaming_cut` for many groups at once, each with its own `target`, in one set of
    passes: `parts()` returns an iterable of `(keys, weights, groups)`, `groups` an int array
    of indices into `targets` (None: every row in the one group). Up to 16 groups: four passes of 65,536 buckets a group, as
    `streaming_cut`; more: eight passes of 256 buckets a group, so memory stays one part plus
    4 KB a group.

    Returns each group's cut key (uint64) and the weight of its rows whose key is larger.

    Examples
    --------
    >>> keys = order_keys(np.array([1.0, 3.0, 2.0, 5.0, 4.0]))
    >>> groups = np.array([0, 0, 0, 1, 1])
    >>> cut, above = grouped_cut(lambda: [(keys, None, groups)], np.array([2, 1]), False)
    >>> bool(cut[0] == keys[2]), bool(cut[1] == keys[3]), above.tolist()
    (True, True, [1.0, 0.0])
    """
    n_groups = len(targets)
    bits = DIGIT_BITS if n_groups <= 16 else 8
    size = 1 << bits
    prefix = np.zeros(n_groups, np.uint64)
    above = np.zeros(n_groups, np.float64)
    rows = np.arange(n_groups)
    for shift in range(64 - bits, -1, -bits):
        count = np.zeros(n_groups * size, np.int64)
        weight = np.zeros(n_groups * size, np.float64)
        for keys, weights, groups in parts():
            if shift < 64 - bits:
                bucket = prefix[0] if groups is None else prefix[groups]
                inside = (keys >> np.uint64(shift + bits)) == bucket
                keys = keys[inside]
                groups = None if groups is None else groups[inside]
                weights = weights[inside] if weighted else None
            digit = ((keys >> np.uint64(shift)) & np.uint64(size - 1)).astype(np.intp)
            at = digit if groups is None else groups.astype(np.intp) * size + digit
            count += np.bincount(at, minlength=n_groups * size)
            if weighted:
                weight += np.bincount(at, weights=weights, minlength=n_groups * size)
        c = count.reshape(n_groups, size)[:, ::-1]  # highest digit first
        w = (weight.reshape(n_groups, size) if weighted else c[:, ::-1]).astype(np.float64)
        tail = np.cumsum(w[:, ::-1], axis=1)  # weight of the digits >= each, highest first
        hit = (c > 0) & (above[:, None] + tail >= np.asarray(targets, np.float64)[:, None])
        if not hit.any(axis=1).all():
            short = np.asarray(targets)[~hit.any(axis=1)][0]
            raise ValueError(f"target {short} is more than the total weight")
        first = hit.argmax(axis=1)
        above += np.where(first > 0, tail[rows, np.maximum(first - 1, 0)], 0.0)
        prefix = (prefix << np.uint64(bits)) | (size - 1 - first).astype(np.uint64)
    return prefix, above
