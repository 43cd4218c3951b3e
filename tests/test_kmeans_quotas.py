import numpy as np
import pytest

from datasel.ops.kmeans import assign, fit_kmeans
from datasel.ops.quotas import allocate, allocate_nested, kids_weights, sample_within


def blobs(n_per=200, k=5, dim=16, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((k, dim)) * 10
    x = np.repeat(centers, n_per, axis=0) + rng.standard_normal((k * n_per, dim))
    return x.astype(np.float32), np.repeat(np.arange(k), n_per)


# --- k-means ---------------------------------------------------------------------------------


def test_fit_kmeans_recovers_separated_blobs():
    pytest.importorskip("faiss")
    x, truth = blobs()
    c = fit_kmeans(x, 5, spherical=False, seed=1, nredo=8)
    labels, _ = assign(x, c)
    # each true blob maps to exactly one cluster and vice versa
    pairs = set(zip(truth.tolist(), labels.tolist(), strict=True))
    assert len(pairs) == 5 and len({p[1] for p in pairs}) == 5


def test_fit_kmeans_spherical_unit_centroids_and_seeded():
    pytest.importorskip("faiss")
    x, _ = blobs()
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    c1 = fit_kmeans(x, 5, seed=3)
    np.testing.assert_allclose(np.linalg.norm(c1, axis=1), 1, atol=1e-5)
    np.testing.assert_array_equal(c1, fit_kmeans(x, 5, seed=3))


def test_fit_kmeans_k_too_large():
    x, _ = blobs(n_per=2, k=3)
    with pytest.raises(ValueError, match="k=7 is larger than the number of rows"):
        fit_kmeans(x, 7)


def test_assign_matches_brute_force_across_batches():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((103, 9)).astype(np.float32)
    c = rng.standard_normal((6, 9)).astype(np.float32)
    ref = ((x[:, None, :].astype(np.float64) - c[None]) ** 2).sum(-1)
    labels, dist = assign(x, c, batch=10)
    np.testing.assert_array_equal(labels, ref.argmin(1))
    np.testing.assert_allclose(dist, ref.min(1), rtol=1e-4, atol=1e-4)
    assert labels.dtype == np.int64 and dist.dtype == np.float32


# --- allocate --------------------------------------------------------------------------------


def waterfill_reference(sizes, budget, weights):
    """quota_c = min(size_c, lam * w_c), lam found by bisection (real-valued)."""
    total = min(budget, sizes.sum())
    lo, hi = 0.0, 1e12
    for _ in range(200):
        lam = (lo + hi) / 2
        if np.minimum(sizes, lam * weights).sum() < total:
            lo = lam
        else:
            hi = lam
    return np.minimum(sizes, hi * weights)


def test_allocate_equal_split_water_filling():
    q = allocate(np.array([1, 2, 100, 100]), 40)
    # 10 each; the first two give 9 + 8 back, re-split over the last two: 18.5 each
    assert q.sum() == 40 and q[:2].tolist() == [1, 2] and sorted(q[2:].tolist()) == [18, 19]


@pytest.mark.parametrize("seed", range(30))
def test_allocate_matches_real_valued_water_filling(seed):
    rng = np.random.default_rng(seed)
    k = rng.integers(1, 40)
    sizes = rng.integers(0, 60, k)
    sizes[rng.random(k) < 0.3] = rng.integers(0, 4)  # plenty of small clusters
    budget = int(rng.integers(0, sizes.sum() + 20))
    weights = None if seed % 2 else rng.random(k) + 0.01
    q = allocate(sizes, budget, weights)
    ref = waterfill_reference(sizes, budget, np.ones(k) if weights is None else weights)
    assert q.dtype == np.int64
    assert q.sum() == min(budget, sizes.sum())
    assert (q >= 0).all() and (q <= sizes).all()
    assert np.abs(q - ref).max() < 1 + 1e-6


def test_allocate_budget_above_total_takes_everything():
    sizes = np.array([3, 0, 5])
    np.testing.assert_array_equal(allocate(sizes, 100), sizes)
    np.testing.assert_array_equal(allocate(sizes, 0), [0, 0, 0])


def test_allocate_proportional_and_zero_weights():
    np.testing.assert_array_equal(allocate(np.array([100, 100, 100]), 60, [1, 2, 3]), [10, 20, 30])
    # zero-weight clusters only get rows once the weighted ones are full
    np.testing.assert_array_equal(allocate(np.array([5, 50]), 20, [1, 0]), [5, 15])
    with pytest.raises(ValueError, match="non-negative"):
        allocate(np.array([1, 2]), 2, [-1, 1])


# --- sample_within ---------------------------------------------------------------------------


def test_allocate_nested_powers():
    # group 0: three clusters of 100, 100, 10 rows; group 1: one cluster of 90 rows
    sizes, groups = np.array([100, 100, 10, 90]), np.array([0, 0, 0, 1])
    eq = allocate_nested(sizes, groups, 60)  # equal over groups, then over clusters
    assert eq.tolist() == [10, 10, 10, 30]
    prop = allocate_nested(sizes, groups, 60, 1.0, 1.0)  # a random sample's expected shares
    assert prop.tolist() == [20, 20, 2, 18]
    # sqrt over groups (210 vs 90 rows: 60 * sqrt(210) / (sqrt(210) + sqrt(90)) = 36.1),
    # then proportional inside group 0 (100:100:10)
    mixed = allocate_nested(sizes, groups, 60, 0.5, 1.0)
    assert mixed.tolist() == [17, 17, 2, 24]
    # a group smaller than its share is taken whole and gives the rest to the others
    small = allocate_nested(np.array([100, 5]), np.array([0, 1]), 60, 0.5, 1.0)
    assert small.tolist() == [55, 5] and small.sum() == 60


def test_sample_within_quotas_determinism_and_exclusion():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 8, 5000)
    labels[:50] = -1  # unassigned rows are never drawn
    exclude = rng.choice(5000, 1500, replace=False)
    avail = np.bincount(np.delete(labels, exclude)[np.delete(labels, exclude) >= 0], minlength=8)
    quotas = allocate(avail, 2000)
    a = sample_within(labels, quotas, 42, exclude=exclude)
    np.testing.assert_array_equal(a, sample_within(labels, quotas, 42, exclude=exclude))
    assert not np.array_equal(a, sample_within(labels, quotas, 43, exclude=exclude))
    assert a.dtype == np.int64 and np.all(np.diff(a) > 0)
    assert not np.isin(a, exclude).any() and (labels[a] >= 0).all()
    np.testing.assert_array_equal(np.bincount(labels[a], minlength=8), quotas)
    # quota above what is left: all eligible rows of that cluster
    big = sample_within(labels, np.full(8, 10**6), 0, exclude=exclude)
    assert big.size == avail.sum()


def test_sample_within_uniform_inclusion_rate():
    labels = np.repeat(np.arange(2), [1000, 3000])
    hits = np.zeros(4000)
    for seed in range(40):
        hits[sample_within(labels, np.array([100, 300]), seed)] += 1
    # every row is drawn with probability 0.1: 4 hits expected in 40 draws
    assert abs(hits.mean() - 4) < 1e-9
    assert hits[:1000].std() < 3 and hits[1000:].std() < 3  # binomial sd ~1.9


def test_sample_within_scores_follow_softmax():
    # 20,000 clusters of the same 4 scores, quota 1: the picked position follows softmax(s/T)
    scores4 = np.array([0.0, 1.0, 2.0, -1.0])
    m, temp = 20000, 0.7
    labels = np.repeat(np.arange(m), 4)
    picked = sample_within(labels, np.ones(m, np.int64), 5, np.tile(scores4, m), temp)
    freq = np.bincount(picked % 4, minlength=4) / m
    expected = np.exp(scores4 / temp) / np.exp(scores4 / temp).sum()
    np.testing.assert_allclose(freq, expected, atol=0.012)  # ~4 binomial sd


# --- kIDS ------------------------------------------------------------------------------------


def test_kids_weights_values():
    labels = np.array([0, 0, 1, 1, 2, 3])
    fb = np.array([1.0, 3.0, 0.0, np.nan, 5.0, 9.0])
    sel = np.array([True, True, True, True, True, False])
    w = kids_weights(labels, fb, sel, 4, temperature=2.0)
    means = np.array([2.0, 0.0, 5.0, 7.0 / 3])  # NaN ignored; cluster 3 has no selected rows
    np.testing.assert_allclose(w, np.exp(means / 2) / np.exp(means / 2).sum())
    np.testing.assert_allclose(kids_weights(labels, fb, np.zeros(6, bool), 4, 1.0), 0.25)


def test_kids_next_round_shifts_toward_high_feedback_clusters():
    k, per, temp = 10, 2000, 0.5
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(k), per)
    group = labels < 3  # clusters 0-2 give high feedback
    feedback = np.where(group, 1.0, 0.0) + rng.normal(0, 0.05, labels.size)
    # round 1: kMQ, equal quotas
    first = sample_within(labels, allocate(np.bincount(labels), 1000), rng)
    assert abs(group[first].mean() - 0.3) < 1e-9
    mask = np.zeros(labels.size, bool)
    mask[first] = True
    w = kids_weights(labels, feedback, mask, k, temp)
    avail = np.bincount(labels[~mask], minlength=k)
    second = sample_within(labels, allocate(avail, 3000, w), rng, exclude=first)
    expected = 3 * np.exp(2) / (3 * np.exp(2) + 7)  # softmax of means ~1 vs ~0 at T=0.5: 0.76
    assert abs(w[:3].sum() - expected) < 0.01
    assert abs(group[second].mean() - expected) < 0.01
    assert not np.isin(second, first).any()
