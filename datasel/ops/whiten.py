"""Whitening of embeddings: centre them and give every direction of the pool unit variance."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Directions whose variance is below this share of the largest are dropped: a pool of fewer
# rows than dimensions has no spread along them, and dividing by ~0 would only amplify noise.
MIN_VARIANCE_SHARE = 1e-6


@dataclass(frozen=True)
class Whitening:
    """``x -> normalise((x - mean) @ W)`` with ``W = U diag(1/sqrt(lambda))`` from the pool's
    covariance (Su et al., "Whitening Sentence Representations for Better Semantics and Faster
    Retrieval", 2021).

    Why: in raw embeddings the few directions that separate a pool's big domains dominate every
    cosine, so two near domains (two news registers) look alike; after whitening each direction
    of the pool's spread counts the same.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> x = rng.normal(size=(2000, 3)) * [10, 1, 0.5]
    >>> w = Whitening.fit(x)
    >>> x.std(axis=0).round(1), ((x - w.mean) @ w.matrix).std(axis=0).round(1)
    (array([10.1,  1. ,  0.5]), array([0.9, 1. , 1. ]))
    >>> bool(np.allclose(np.linalg.norm(w(x), axis=1), 1))
    True
    """

    mean: np.ndarray  # (d,)
    matrix: np.ndarray  # (d, d): a zero column for each direction dropped
    shrink: float = 0.0  # the weight of the identity in the shrunk covariance

    @classmethod
    def fit(cls, x: np.ndarray) -> Whitening:
        """Fit on rows ``x`` (n, d), read a block at a time. The covariance is shrunk toward a
        multiple of the identity as much as its estimate is noisy (Ledoit & Wolf, "A
        well-conditioned estimator for large-dimensional covariance matrices", 2004): from a
        few hundred rows in 256 dimensions, plain whitening would blow up noise directions."""
        n, d = x.shape
        mean = x.mean(axis=0, dtype=np.float64) if n else np.zeros(d)
        cov, fourth = np.zeros((d, d)), 0.0
        for i in range(0, n, BLOCK_ROWS):
            centred = x[i : i + BLOCK_ROWS].astype(np.float64) - mean
            cov += centred.T @ centred
            fourth += float((np.einsum("ij,ij->i", centred, centred) ** 2).sum())
        cov /= max(n, 1)
        scale = np.trace(cov) / d
        spread = ((cov - scale * np.eye(d)) ** 2).sum()  # how far the estimate is from scale * I
        noise = (fourth / max(n, 1) - (cov**2).sum()) / max(n, 1)  # how noisy it is
        shrink = min(noise, spread) / spread if spread > 0 else 1.0
        variance, directions = np.linalg.eigh(cov)
        variance = (1 - shrink) * variance + shrink * scale
        keep = variance > variance.max(initial=0.0) * MIN_VARIANCE_SHARE
        if not keep.any():
            return cls(mean.astype(np.float32), np.eye(d, dtype=np.float32), shrink)
        matrix = np.zeros((d, d))
        matrix[:, keep] = directions[:, keep] / np.sqrt(variance[keep])
        return cls(mean.astype(np.float32), matrix.astype(np.float32), shrink)

    def __call__(self, x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Rows ``x`` whitened and scaled to unit length (float32; a row at the mean stays 0),
        into `out` (which may be `x` itself), a block of rows at a time."""
        out = np.empty(x.shape, np.float32) if out is None else out
        for i in range(0, len(x), BLOCK_ROWS):
            z = (np.asarray(x[i : i + BLOCK_ROWS], dtype=np.float32) - self.mean) @ self.matrix
            out[i : i + BLOCK_ROWS] = z / np.maximum(
                np.linalg.norm(z, axis=1, keepdims=True), 1e-12
            )
        return out


BLOCK_ROWS = 32_768
