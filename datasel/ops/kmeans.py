"""k-means for `datasel diversify` (Yu et al. 2024, "Diversify and Conquer", kMQ/kIDS).

Fit centroids with faiss on a sample, then assign every row in bounded-memory batches. For
balancing unequal domains, clusters are grouped by spectral clustering of their topology graph
(Martinetz & Schulten 1994, "Topology representing networks"): see :func:`cluster_graph` and
:func:`spectral_groups`.
"""

from __future__ import annotations

import numpy as np

from datasel.errors import MissingExtra

__all__ = ["fit_kmeans", "assign", "cluster_graph", "spectral_groups"]


def _as_f32(x: np.ndarray, name: str) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array (rows, dim); got shape {x.shape}")
    return x


def fit_kmeans(
    x: np.ndarray,
    k: int,
    *,
    niter: int = 20,
    seed: int = 0,
    spherical: bool = True,
    nredo: int = 1,
    max_points_per_centroid: int = 256,
) -> np.ndarray:
    """Fit ``k`` centroids to the rows of ``x`` with faiss k-means.

    Parameters
    ----------
    x : float array ``(n, dim)``; for ``spherical=True`` rows should be L2-normalised
        (embedders return them so).
    k : number of clusters, ``1 <= k <= n``.
    niter : Lloyd iterations (20 is faiss' own default, enough for selection).
    seed : seed of faiss' initial centroids and of its subsampling.
    spherical : re-normalise centroids after each iteration (cosine k-means).
    nredo : runs from different random initial centroids; the one with the lowest objective
        is kept (faiss initialises at random rows, not k-means++).
    max_points_per_centroid : faiss trains on at most ``k`` times this many rows, drawn at
        random; fit on a sample anyway and assign the rest with :func:`assign`.

    Returns
    -------
    float32 array ``(k, dim)`` of centroids.

    Examples
    --------
    >>> x = np.random.default_rng(0).standard_normal((500, 8)).astype(np.float32)
    >>> fit_kmeans(x, 4, spherical=False).shape
    (4, 8)
    """
    x = _as_f32(x, "x")
    n, dim = x.shape
    if not 1 <= k <= n:
        raise ValueError(f"k={k} is larger than the number of rows ({n})" if k > n else f"k={k}")
    try:
        import faiss
    except ImportError:  # a core dependency: only a broken install gets here
        raise MissingExtra("k-means needs faiss, not installed: pip install faiss-cpu") from None
    km = faiss.Kmeans(
        dim,
        k,
        niter=niter,
        seed=seed,
        spherical=spherical,
        nredo=nredo,
        max_points_per_centroid=max_points_per_centroid,
        min_points_per_centroid=1,  # silences faiss' stderr warning for small samples
        verbose=False,
    )
    km.train(x)
    return np.ascontiguousarray(km.centroids, dtype=np.float32)


def assign(
    x: np.ndarray, centroids: np.ndarray, *, batch: int = 4096, second: bool = False
) -> tuple[np.ndarray, ...]:
    """Nearest centroid of every row of ``x``, ``batch`` rows at a time.

    Memory stays at ``batch * k`` float32 (16 MB for the default batch and k=1,000) whatever
    the number of rows; 1M x 384 rows against 1,000 centroids take ~20-30 s on 2 cores.
    Ties go to the lowest centroid index.

    Returns
    -------
    labels : int64 array ``(n,)``.
    dist : float32 array ``(n,)``, squared Euclidean distance to that centroid (for unit rows
        and unit centroids, ``2 - 2 * cosine``).
    second : int64 array ``(n,)`` of second-nearest centroids, only with ``second=True``
        (the row's own label when there is a single centroid).

    Examples
    --------
    >>> c = np.array([[0.0, 0.0], [10.0, 10.0]], np.float32)
    >>> assign(np.array([[9.0, 9.0], [1.0, 0.0]], np.float32), c)[0]
    array([1, 0])
    """
    x = _as_f32(x, "x")
    centroids = _as_f32(centroids, "centroids")
    if x.shape[1] != centroids.shape[1]:
        raise ValueError(f"x has dim {x.shape[1]} but centroids have dim {centroids.shape[1]}")
    if batch < 1:
        raise ValueError(f"batch={batch}: expected a positive integer")
    n = x.shape[0]
    labels = np.empty(n, np.int64)
    runner_up = np.empty(n if second else 0, np.int64)
    dist = np.empty(n, np.float32)
    neg2_ct = np.ascontiguousarray(-2 * centroids.T)
    c_sq = np.einsum("ij,ij->i", centroids, centroids)
    for i in range(0, n, batch):
        xb = x[i : i + batch]
        d = xb @ neg2_ct  # one sgemm per batch: nearly all the cost
        d += c_sq  # |x - c|^2 - |x|^2
        lab = d.argmin(axis=1)
        labels[i : i + batch] = lab
        best = np.take_along_axis(d, lab[:, None], axis=1)[:, 0]
        dist[i : i + batch] = np.maximum(best + np.einsum("ij,ij->i", xb, xb), 0)
        if second and d.shape[1] > 1:
            np.put_along_axis(d, lab[:, None], np.inf, axis=1)
            runner_up[i : i + batch] = d.argmin(axis=1)
        elif second:
            runner_up[i : i + batch] = lab
    return (labels, dist, runner_up) if second else (labels, dist)


def cluster_graph(labels: np.ndarray, second: np.ndarray, k: int):
    """The topology graph of ``k`` clusters: ``w[a, b]`` = rows whose nearest centroid is ``a``
    and second-nearest ``b``, plus the reverse (the competitive Hebbian rule of Martinetz &
    Schulten 1994, "Topology representing networks").

    Two clusters are linked in proportion to the data lying between them, so clusters that
    tile one dense region (one domain) are strongly connected whatever the region's spread,
    and separate regions are nearly disconnected.

    Returns
    -------
    symmetric ``scipy.sparse.csr_matrix`` ``(k, k)`` of float64 weights, zero diagonal.

    Examples
    --------
    >>> g = cluster_graph(np.array([0, 0, 1]), np.array([1, 1, 0]), 3)
    >>> g.toarray()[0].tolist()
    [0.0, 3.0, 0.0]
    """
    import scipy.sparse as sp

    labels = np.asarray(labels, np.int64)
    second = np.asarray(second, np.int64)
    if labels.shape != second.shape:
        raise ValueError("labels and second must have the same shape")
    off = labels != second
    w = sp.coo_matrix((np.ones(int(off.sum())), (labels[off], second[off])), shape=(k, k)).tocsr()
    w.sum_duplicates()
    return (w + w.T).tocsr()


SEPARATED = 0.25  # the largest Laplacian eigenvalue of a count of groups taken as separated


def spectral_groups(
    adjacency, n_groups: int | None = None, *, max_groups: int = 50, separated: float = SEPARATED
) -> np.ndarray:
    """Partition the nodes of a weighted graph into groups by normalised spectral clustering.

    The eigenvectors of the smallest eigenvalues of the normalised Laplacian
    ``I - D^-1/2 W D^-1/2`` (Shi & Malik 2000; von Luxburg 2007, "A tutorial on spectral
    clustering"), rescaled by ``D^-1/2``, are turned into labels by column-pivoted QR (Damle,
    Minden & Ying 2019, "Simple, direct and efficient multi-way spectral clustering"):
    deterministic, no k-means restarts. Nodes without edges form one extra group of their own.

    ``n_groups=None`` picks the count G by the largest eigengap ``lam[G] - lam[G-1]`` among the
    counts 2 .. ``max_groups`` whose G smallest eigenvalues are all <= ``separated``: G nearly
    disconnected groups (a group's conductance, the share of its links that leave it, is at
    least ``lam[G-1] / 2``: Cheeger's inequality, Lee, Oveis Gharan & Trevisan 2014). Without
    that condition the largest gap can lie among eigenvalues of weakly separated parts and split
    one domain into several groups, which equal quotas per group then over-weight. No count
    qualifying means no group structure: one group.

    Returns
    -------
    int64 array of group labels ``0 .. G-1``, one per node.

    Examples
    --------
    >>> w = np.kron(np.eye(2), np.ones((3, 3))) + 0.01  # two blocks of 3, weakly linked
    >>> spectral_groups(w - np.diag(np.diag(w))).tolist()
    [0, 0, 0, 1, 1, 1]
    """
    import scipy.linalg
    import scipy.sparse as sp

    w = sp.csr_matrix(adjacency, dtype=np.float64)
    n = w.shape[0]
    deg = np.asarray(w.sum(axis=1)).ravel()
    live = np.flatnonzero(deg > 0)
    out = np.zeros(n, np.int64)
    if live.size <= 2 or n_groups == 1:
        out[deg == 0] = 1 if live.size else 0
        return _relabel(out)
    w = w[live][:, live]
    inv_sqrt = 1 / np.sqrt(deg[live])
    m = sp.diags(inv_sqrt) @ w @ sp.diags(inv_sqrt)  # eigenvalues 1 - lambda(Laplacian)
    top = min(live.size - 1, (max_groups if n_groups is None else n_groups) + 1)
    if live.size <= 3000:
        vals, vecs = np.linalg.eigh(m.toarray())
        vals, vecs = vals[::-1][:top], vecs[:, ::-1][:, :top]
    else:
        from scipy.sparse.linalg import eigsh

        vals, vecs = eigsh(m, k=top, which="LA", v0=np.ones(live.size))
        order = np.argsort(-vals)
        vals, vecs = vals[order], vecs[:, order]
    lam = 1 - vals  # Laplacian eigenvalues, ascending
    if n_groups is None:
        gaps = np.diff(lam)[1:]  # gap after 2, 3, ... groups
        gaps[lam[1:-1] > separated] = -np.inf  # lam[G-1] above the bar: not G separated groups
        n_groups = int(np.argmax(gaps)) + 2 if gaps.size and gaps.max() > -np.inf else 1
    n_groups = max(1, min(n_groups, vecs.shape[1]))
    emb = vecs[:, :n_groups] * inv_sqrt[:, None]
    piv = scipy.linalg.qr(emb.T, pivoting=True)[2]
    u, _, vt = np.linalg.svd(emb[piv[:n_groups]].T)
    labels = np.abs(emb @ (u @ vt)).argmax(axis=1)
    out[live] = labels
    out[deg == 0] = n_groups  # isolated nodes (empty clusters): a group of their own
    return _relabel(out)


def _relabel(labels: np.ndarray) -> np.ndarray:
    """Consecutive labels 0..G-1 in order of first appearance."""
    _, first, inv = np.unique(labels, return_index=True, return_inverse=True)
    rank = np.empty(first.size, np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(first.size)
    return rank[inv]
