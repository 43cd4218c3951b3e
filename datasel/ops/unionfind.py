"""Connected components of a graph given as an edge list (union-find, vectorised)."""

from __future__ import annotations

import numpy as np


def components(u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Group the nodes that edges (u[i], v[i]) connect.

    Returns (nodes, label): the distinct nodes that appear in an edge, sorted, and for each the
    smallest node of its component. Memory is proportional to the edges, not to the largest id.
    """
    if len(u) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    ends = np.concatenate([u, v])
    ends.sort()  # np.unique without its inverse hashes, ~20x slower on a few million ids
    nodes = ends[np.concatenate([[True], ends[1:] != ends[:-1]])]
    del ends
    # positions among the nodes, 4 bytes each while they fit: the driver holds these for every
    # verified edge of a corpus (np.unique's inverse would take 8, and more while it sorts)
    index = np.int32 if len(nodes) < 2**31 else np.int64
    a = np.searchsorted(nodes, u).astype(index)
    b = np.searchsorted(nodes, v).astype(index)
    parent = np.arange(len(nodes), dtype=index)
    # hook every root to the smallest label it touches, then pointer-jump, until stable
    while True:
        before = parent.copy()
        low = np.minimum(parent[a], parent[b])
        np.minimum.at(parent, parent[a], low)
        np.minimum.at(parent, parent[b], low)
        parent = parent[parent]
        if np.array_equal(before, parent):
            break
    while not np.array_equal(parent, parent[parent]):
        parent = parent[parent]
    return nodes, nodes[parent]
