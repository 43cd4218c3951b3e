import numpy as np

from datasel.ops.whiten import Whitening


def test_whitening_many_rows_gives_unit_covariance_and_little_shrinkage():
    rng = np.random.default_rng(0)
    rotation = np.linalg.qr(rng.normal(size=(8, 8)))[0]
    x = (rng.normal(size=(20_000, 8)) * [5, 4, 3, 2, 1, 1, 0.5, 0.5] @ rotation).astype(np.float32)
    w = Whitening.fit(x)
    z = (x - w.mean) @ w.matrix
    assert w.shrink < 0.01
    assert np.allclose(np.cov(z, rowvar=False), np.eye(8), atol=0.05)


def test_whitening_few_rows_in_many_dimensions_shrinks_toward_the_identity():
    """300 rows in 256 dimensions: the sample covariance is singular and its small eigenvalues
    are noise, so the estimate is shrunk (the more, the fewer rows); no direction blows up."""
    rng = np.random.default_rng(0)
    scales = np.linspace(3, 0.1, 256)
    shrink = {n: Whitening.fit(rng.normal(size=(n, 256)) * scales).shrink for n in (300, 3000)}
    assert shrink[300] > shrink[3000] > 0
    w = Whitening.fit(rng.normal(size=(300, 256)) * scales)
    assert np.isfinite(w.matrix).all() and np.abs(w.matrix).max() < 100


def test_whitening_degenerate_pools_give_finite_unit_or_zero_rows():
    """One row, or identical rows: nothing to whiten; rows at the mean map to 0, not NaN."""
    for x in (np.ones((1, 4)), np.ones((5, 4)), np.zeros((0, 4))):
        w = Whitening.fit(x)
        z = w(np.vstack([x, np.eye(4)]))
        assert np.isfinite(z).all()
        assert np.allclose(np.linalg.norm(z[-4:], axis=1), 1)


def test_whitening_in_place_equals_a_copy():
    rng = np.random.default_rng(1)
    x = (rng.normal(size=(100_000, 4)) * [5, 1, 1, 0.2]).astype(np.float32)
    w = Whitening.fit(x)
    copy = w(x)
    assert w(x, out=x) is x and np.array_equal(x, copy)
