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
    nodes, inverse = np.unique(np.concatenate([u, v]), return_inverse=True)
    a, b = inverse[: len(u)], inverse[len(u) :]
    parent = np.arange(len(nodes))
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
