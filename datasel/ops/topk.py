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
