"""Per-cluster quotas and sampling (Yu et al. 2024, "Diversify and Conquer", kMQ and kIDS).

kMQ splits the budget equally across k-means clusters and samples within each cluster
(uniformly or by a quality score). kIDS, the iterative variant, trains on a round's picks,
scores each cluster by the mean feedback of its picks, turns those means into cluster weights
with a softmax, and allocates the next round's budget by the weights.

Round 1 then round 2, in a stage::

    q = allocate(np.bincount(labels, minlength=k), budget)
    picked = sample_within(labels, q, rng, scores=quality)
    ... train, get feedback for the picked rows ...
    mask = np.zeros(len(labels), bool); mask[picked] = True
    w = kids_weights(labels, feedback, mask, k, temperature=1.0)
    avail = np.bincount(labels[~mask], minlength=k)
    picked2 = sample_within(labels, allocate(avail, budget2, w), rng, exclude=picked)
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "allocate",
    "allocate_nested",
    "text_weights",
    "sample_within",
    "sample_distinct",
    "kids_weights",
]


def allocate(sizes: np.ndarray, budget: int, weights: np.ndarray | None = None) -> np.ndarray:
    """Integer per-cluster quotas that sum to ``min(budget, sizes.sum())``.

    The budget is split equally (kMQ) or in proportion to ``weights``; a cluster with fewer
    rows than its share takes all its rows and its leftover is re-split among the others by
    the same rule, until no share exceeds its cluster (water-filling). Fractional shares are
    rounded by largest remainder (ties to the lower cluster index).

    Examples
    --------
    >>> allocate(np.array([2, 50, 50]), 30)
    array([ 2, 14, 14])
    >>> allocate(np.array([100, 100]), 10, weights=np.array([3.0, 1.0]))
    array([8, 2])
    """
    sizes = np.asarray(sizes)
    if sizes.ndim != 1 or (sizes.size and sizes.min() < 0):
        raise ValueError("sizes must be a 1-D array of non-negative cluster sizes")
    sizes = sizes.astype(np.int64)
    if budget < 0:
        raise ValueError(f"budget={budget}: expected a non-negative integer")
    if weights is None:
        w = np.ones(sizes.size)
    else:
        w = np.asarray(weights, dtype=np.float64)
        if w.shape != sizes.shape:
            raise ValueError(f"weights has shape {w.shape} but sizes has shape {sizes.shape}")
        if not np.isfinite(w).all() or (w < 0).any():
            raise ValueError("weights must be finite and non-negative")
    total = min(int(budget), int(sizes.sum()))
    if total == 0:
        return np.zeros(sizes.size, np.int64)
    share = np.zeros(sizes.size)
    capped = sizes == 0
    while True:  # at most k rounds; each caps at least one more cluster
        free = ~capped
        if not free.any():
            break
        left = total - share[capped].sum()
        wf = np.where(free, w, 0.0)
        if wf.sum() <= 0:  # only zero-weight clusters have room left: split equally among them
            wf = free.astype(np.float64)
        share = np.where(capped, share, left * wf / wf.sum())
        over = free & (share >= sizes)
        if not over.any():
            break
        share[over] = sizes[over]
        capped |= over
    quota = np.floor(share).astype(np.int64)
    quota = np.minimum(quota, sizes)
    short = total - int(quota.sum())
    if short > 0:  # largest remainders, among clusters with room
        rem = np.where(quota < sizes, share - quota, -np.inf)
        quota[np.argsort(-rem, kind="stable")[:short]] += 1
    return quota


def allocate_nested(
    sizes: np.ndarray,
    groups: np.ndarray,
    budget: int,
    group_power: float = 0.0,
    cluster_power: float = 0.0,
    row_bytes: np.ndarray | None = None,
) -> np.ndarray:
    """Row quotas per group of clusters, then per cluster inside each group.

    A group's share of the budget is proportional to ``group size ** group_power``, a
    cluster's share of its group's quota to ``cluster size ** cluster_power``: power 0 splits
    equally (the balanced sampling of hierarchical clusters of Vo et al. 2024, "Automatic Data
    Curation for Self-Supervised Learning: A Clustering-Based Approach"), 1 follows the sizes
    (a random sample's shares), 0.5 is in between (temperature sampling of domains, as
    multilingual LMs sample languages). Both levels water-fill as :func:`allocate`: a group
    with fewer rows than its share gives its leftover to the other groups, a cluster to the
    other clusters of its group.

    ``row_bytes`` (mean text bytes of a row of each cluster) measures sizes and shares in
    text rather than rows: a unit's share *of the selected text* is then ``bytes ** power``,
    so power 0 gives every group the same amount of text, capped at all it has (UniMax:
    Chung et al. 2023, "UniMax: Fairer and more effective language sampling for large-scale
    multilingual pretraining"), whatever the length of its documents. Quotas stay in rows:
    each unit's row weight is its text share divided by its mean row bytes.

    Examples
    --------
    >>> allocate_nested(np.array([50, 50, 50, 50]), np.array([0, 0, 0, 1]), 40)
    array([ 7,  7,  6, 20])
    >>> allocate_nested(np.array([50, 50, 50, 50]), np.array([0, 0, 0, 1]), 40, 0.5, 1.0)
    array([ 9,  8,  8, 15])
    >>> allocate_nested(np.array([90, 10]), np.array([0, 1]), 20, 0.0, 1.0, np.array([1, 9]))
    array([18,  2])
    """
    sizes = np.asarray(sizes, np.int64)
    groups = np.asarray(groups, np.int64)
    if groups.shape != sizes.shape or (groups.size and groups.min() < 0):
        raise ValueError("groups must give a non-negative group label to every cluster")
    n_groups = int(groups.max()) + 1 if groups.size else 0
    group_sizes = np.bincount(groups, weights=sizes, minlength=n_groups).astype(np.int64)
    if row_bytes is None:
        group_w, cluster_w = _powered(group_sizes, group_power), _powered(sizes, cluster_power)
    else:
        mass = sizes * np.asarray(row_bytes, np.float64)
        group_mass = np.bincount(groups, weights=mass, minlength=n_groups)
        group_w = text_weights(group_sizes, group_mass, group_power)
        cluster_w = text_weights(sizes, mass, cluster_power)
    per_group = allocate(group_sizes, budget, group_w)
    quota = np.zeros(sizes.size, np.int64)
    order = np.argsort(groups, kind="stable")
    bounds = np.searchsorted(groups[order], np.arange(n_groups + 1))
    for g in range(n_groups):
        members = order[bounds[g] : bounds[g + 1]]
        w = None if cluster_w is None else cluster_w[members]
        quota[members] = allocate(sizes[members], int(per_group[g]), w)
    return quota


def text_weights(rows: np.ndarray, mass: np.ndarray, power: float) -> np.ndarray:
    """Row weights giving each unit a share of the selected text ``~ mass ** power``: the
    share over the unit's mean bytes per row, ``rows * mass ** (power - 1)``; 0 for empty units."""
    rows = np.asarray(rows, np.float64)
    mass = np.asarray(mass, np.float64)
    live = (rows > 0) & (mass > 0)
    out = np.zeros(rows.size)
    out[live] = rows[live] * mass[live] ** (power - 1.0)
    return out


def _powered(sizes: np.ndarray, power: float) -> np.ndarray | None:
    """``sizes ** power`` as :func:`allocate` weights; None (equal shares) for power 0."""
    return None if power == 0 else sizes.astype(np.float64) ** power


def sample_within(
    labels: np.ndarray,
    quotas: np.ndarray,
    rng: np.random.Generator | int | None,
    scores: np.ndarray | None = None,
    temperature: float = 1.0,
    exclude: np.ndarray | None = None,
) -> np.ndarray:
    """Draw ``quotas[c]`` rows from each cluster ``c``, without replacement.

    Uniformly when ``scores`` is None, else with probability proportional to
    ``exp(score / temperature)`` (successive draws without replacement, as Gumbel top-k: one
    Gumbel key per row plus ``score / temperature``, the top ``quota`` keys per cluster).
    Rows in ``exclude`` (indices picked in earlier rounds) and rows with a negative label are
    never drawn; a cluster with fewer eligible rows than its quota gives all of them.

    Returns
    -------
    int64 array of row indices, ascending.

    Examples
    --------
    >>> labels = np.array([0, 0, 0, 1, 1])
    >>> sample_within(labels, np.array([1, 2]), 0, exclude=np.array([0])).size
    3
    """
    labels = np.asarray(labels)
    quotas = np.asarray(quotas, dtype=np.int64)
    n = labels.size
    if labels.ndim != 1:
        raise ValueError("labels must be a 1-D array")
    if n and labels.max() >= quotas.size:
        raise ValueError(f"labels go up to {labels.max()} but there are {quotas.size} quotas")
    if temperature <= 0:
        raise ValueError(f"temperature={temperature}: expected > 0")
    rng = np.random.default_rng(rng)
    key = rng.gumbel(size=n)
    if scores is not None:
        scores = np.asarray(scores, dtype=np.float64)
        if scores.shape != (n,):
            raise ValueError(f"scores has shape {scores.shape}, expected ({n},)")
        if np.isnan(scores).any():
            raise ValueError("scores contain NaN")
        key += scores / temperature
    eligible = labels >= 0
    if exclude is not None:
        eligible[np.asarray(exclude, dtype=np.int64)] = False
    rows = np.flatnonzero(eligible)
    lab = labels[rows]
    order = np.lexsort((-key[rows], lab))  # by cluster, then best key first
    lab_sorted = lab[order]
    group_start = np.searchsorted(lab_sorted, lab_sorted, side="left")
    rank = np.arange(order.size) - group_start
    take = rank < quotas[lab_sorted]
    return np.sort(rows[order[take]])


def sample_distinct(
    labels: np.ndarray,
    rule,
    rng: np.random.Generator | int | None,
    vectors,
    max_similarity: float,
    scores: np.ndarray | None = None,
    temperature: float = 1.0,
    exclude: np.ndarray | None = None,
    k: int | None = None,
) -> np.ndarray:
    """As :func:`sample_within`, but no two rows of one cluster with cosine >= ``max_similarity``.

    Inside each cluster, rows are visited in the order of their sampling keys (a Gumbel key,
    plus ``score / temperature``) and a row is taken unless it is a near duplicate of a row
    already taken from that cluster (or excluded from it: picked in an earlier round), as
    SemDeDup removes them (Abbas et al. 2023, "SemDeDup: Data-efficient learning at web-scale
    through semantic deduplication"). A cluster that runs out of distinct rows keeps what it
    has, and the quotas are recomputed with its size capped there, so its leftover goes to the
    other clusters by the same ``rule``, until the budget is met or every cluster is exhausted.

    Parameters
    ----------
    rule : ``rule(sizes) -> quotas``, e.g. ``lambda s: allocate(s, budget)``.
    vectors : ``vectors(rows) -> float32 (len(rows), dim)`` unit vectors of those rows.
    max_similarity : cosine at and above which two rows are near duplicates (1.0: off).
    k : clusters, as many as ``rule`` gives quotas for (default: the largest label + 1; give it
        when the last clusters may hold no row).

    Returns
    -------
    int64 array of row indices, ascending.
    """
    labels = np.asarray(labels)
    n = labels.size
    rng = np.random.default_rng(rng)
    key = rng.gumbel(size=n)
    if scores is not None:
        scores = np.asarray(scores, dtype=np.float64)
        if np.isnan(scores).any():
            raise ValueError("scores contain NaN")
        key += scores / temperature
    eligible = labels >= 0
    seeds_mask = np.zeros(n, bool)
    if exclude is not None:
        eligible[np.asarray(exclude, dtype=np.int64)] = False
        seeds_mask[np.asarray(exclude, dtype=np.int64)] = True
    seeds_mask &= labels >= 0
    if k is None:
        k = int(labels.max()) + 1 if n else 0
    rows = np.flatnonzero(eligible)
    order = rows[np.lexsort((-key[rows], labels[rows]))]  # by cluster, best key first
    bounds = np.searchsorted(labels[order], np.arange(k + 1))
    seed_rows = np.flatnonzero(seeds_mask)
    seed_rows = seed_rows[np.argsort(labels[seed_rows], kind="stable")]
    seed_bounds = np.searchsorted(labels[seed_rows], np.arange(k + 1))

    sizes = np.diff(bounds).astype(np.int64)  # capped when a cluster runs out of distinct rows
    taken: list[list[int]] = [[] for _ in range(k)]
    cursor = np.zeros(k, np.int64)
    kept_vecs: dict[int, np.ndarray] = {}
    while True:
        quotas = np.asarray(rule(sizes), np.int64)
        exhausted = False
        for c in np.flatnonzero(quotas != np.array([len(t) for t in taken])):
            if len(taken[c]) > quotas[c]:  # rounding moved a unit elsewhere: drop the last
                del taken[c][quotas[c] :]
                kept_vecs.pop(c, None)
                continue
            if c not in kept_vecs:
                mine = seed_rows[seed_bounds[c] : seed_bounds[c + 1]].tolist() + taken[c]
                kept_vecs[c] = vectors(np.array(mine, np.int64)) if mine else None
            cand = order[bounds[c] : bounds[c + 1]]
            while len(taken[c]) < quotas[c] and cursor[c] < cand.size:
                need = quotas[c] - len(taken[c])
                chunk = cand[cursor[c] : cursor[c] + max(16, 2 * need)]
                cursor[c] += chunk.size
                v = vectors(chunk)
                ok = np.ones(chunk.size, bool)
                if kept_vecs[c] is not None:
                    ok = (v @ kept_vecs[c].T).max(axis=1) < max_similarity
                sim = v @ v.T
                accepted: list[int] = []
                for j in np.flatnonzero(ok):
                    if accepted and sim[j, accepted].max() >= max_similarity:
                        continue
                    accepted.append(j)
                    if len(accepted) == need:
                        cursor[c] -= chunk.size - 1 - j  # unvisited rows stay candidates
                        break
                taken[c] += chunk[accepted].tolist()
                new = v[accepted]
                kept_vecs[c] = new if kept_vecs[c] is None else np.vstack([kept_vecs[c], new])
            if len(taken[c]) < quotas[c]:
                sizes[c] = len(taken[c])
                exhausted = True
        if not exhausted:
            break
    out = np.array([r for t in taken for r in t], np.int64)
    return np.sort(out)


def kids_weights(
    labels: np.ndarray,
    feedback: np.ndarray,
    selected_mask: np.ndarray,
    k: int,
    temperature: float,
) -> np.ndarray:
    """kIDS cluster weights: ``softmax(mean feedback of each cluster's selected rows / T)``.

    Higher feedback means a cluster earns more of the next round's budget (pass e.g. a reward,
    or the negated training loss). Only rows with ``selected_mask`` and finite feedback count.
    A cluster with no such rows gets the mean of the other clusters' means, so it keeps an
    average chance rather than none; if no cluster has any, the weights are uniform.

    Returns
    -------
    float64 array ``(k,)`` summing to 1; feed it to :func:`allocate` as ``weights``.

    Examples
    --------
    >>> kids_weights(np.array([0, 1]), np.array([1.0, 0.0]), np.array([True, True]), 2, 1.0)
    array([0.73105858, 0.26894142])
    """
    labels = np.asarray(labels)
    feedback = np.asarray(feedback, dtype=np.float64)
    mask = np.asarray(selected_mask, dtype=bool)
    if not labels.shape == feedback.shape == mask.shape:
        raise ValueError("labels, feedback and selected_mask must have the same shape")
    if temperature <= 0:
        raise ValueError(f"temperature={temperature}: expected > 0")
    if labels.size and labels.max() >= k:
        raise ValueError(f"labels go up to {labels.max()} but k={k}")
    use = mask & np.isfinite(feedback) & (labels >= 0)
    count = np.bincount(labels[use], minlength=k)[:k]
    total = np.bincount(labels[use], weights=feedback[use], minlength=k)[:k]
    seen = count > 0
    if not seen.any():
        return np.full(k, 1.0 / k)
    mean = np.where(seen, total / np.maximum(count, 1), 0.0)
    mean[~seen] = mean[seen].mean()
    z = mean / temperature
    z -= z.max()
    w = np.exp(z)
    return w / w.sum()
