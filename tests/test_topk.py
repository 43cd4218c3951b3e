import numpy as np
import pytest

from datasel.ops.topk import gumbel_topk, topk


def _brute(scores, k, largest=True):
    s = np.where(np.isnan(scores), -np.inf if largest else np.inf, scores)
    key = -s if largest else s
    return np.lexsort((np.arange(len(s)), key))[:k]


@pytest.mark.parametrize("largest", [True, False])
def test_topk_matches_stable_sort_with_ties(largest):
    rng = np.random.default_rng(0)
    for n, k in [(1000, 10), (1000, 999), (50, 50), (50, 0), (7, 100)]:
        s = rng.integers(0, 5, size=n).astype(float)  # heavy ties
        s[rng.random(n) < 0.05] = np.nan
        np.testing.assert_array_equal(topk(s, k, largest=largest), _brute(s, k, largest))


def test_topk_examples_and_errors():
    assert topk(np.array([1.0, 3.0, 3.0, 2.0]), 2).tolist() == [1, 2]
    assert topk(np.array([1.0, 3.0, 3.0, 2.0]), 2, largest=False).tolist() == [0, 3]
    assert topk(np.array([np.nan, 1.0]), 1).tolist() == [1]
    assert topk(np.array([np.nan, 1.0]), 1, largest=False).tolist() == [1]
    with pytest.raises(ValueError, match="k must be"):
        topk(np.ones(3), -1)


def test_gumbel_topk_deterministic_and_without_replacement():
    logw = np.random.default_rng(0).normal(size=10_000)
    a = gumbel_topk(logw, 500, seed=7)
    assert np.array_equal(a, gumbel_topk(logw, 500, seed=7))
    assert not np.array_equal(a, gumbel_topk(logw, 500, seed=8))
    assert len(np.unique(a)) == 500
    full = gumbel_topk(logw[:100], 1000, seed=1)
    assert sorted(full.tolist()) == list(range(100))
    # a prefix of a larger sample is the smaller sample (same noise, keys in draw order)
    assert np.array_equal(gumbel_topk(logw, 100, seed=7), a[:100])


def test_gumbel_topk_skips_zero_weights():
    logw = np.array([0.0, -np.inf, 1.0, np.nan, -np.inf, 2.0])
    for seed in range(20):
        assert set(gumbel_topk(logw, 3, seed=seed).tolist()) == {0, 2, 5}


def test_gumbel_topk_first_draw_follows_softmax():
    w = np.array([0.5, 0.3, 0.15, 0.05])
    firsts = np.array([gumbel_topk(np.log(w), 1, seed=s)[0] for s in range(8000)])
    freq = np.bincount(firsts, minlength=4) / len(firsts)
    np.testing.assert_allclose(freq, w, atol=0.02)
    # inclusion in a size-2 sample: P(i) = w_i + sum_j w_j w_i / (1 - w_j)
    incl = np.zeros(4)
    for s in range(8000):
        incl[gumbel_topk(np.log(w), 2, seed=s)] += 1
    expected = w + np.array(
        [sum(w[j] * w[i] / (1 - w[j]) for j in range(4) if j != i) for i in range(4)]
    )
    np.testing.assert_allclose(incl / 8000, expected, atol=0.02)


def _stream_top(scores, weights, target, weighted, parts):
    """Rows taken by streaming_cut + take_tied over `parts` splits, as one index array."""
    from datasel.ops.topk import order_keys, streaming_cut, take_tied

    bounds = np.linspace(0, len(scores), parts + 1).astype(int)
    chunks = list(zip(bounds[:-1], bounds[1:], strict=True))

    def gen():
        for lo, hi in chunks:
            yield order_keys(scores[lo:hi]), (weights[lo:hi] if weighted else None)

    key, running = streaming_cut(gen, target, weighted)
    taken, reached = [], False
    for lo, hi in chunks:
        keys = order_keys(scores[lo:hi])
        taken += (lo + np.flatnonzero(keys > key)).tolist()
        if not reached:
            tied = np.flatnonzero(keys == key)
            w = weights[lo:hi][tied] if weighted else np.ones(len(tied), dtype=np.int64)
            n, running, reached = take_tied(w, running, target)
            taken += (lo + tied[:n]).tolist()
    return np.sort(taken)


@pytest.mark.parametrize("parts", [1, 3, 17])
def test_streaming_cut_takes_the_rows_a_stable_sort_takes(parts):
    rng = np.random.default_rng(1)
    for n in (1, 50, 3000):
        s = rng.integers(-3, 4, size=n).astype(float) / 2  # heavy exact ties
        s[rng.random(n) < 0.1] = -0.0  # ties with 0.0
        s[rng.random(n) < 0.02] = np.inf
        s[rng.random(n) < 0.02] = -np.inf
        w = rng.integers(0, 50, size=n)
        w[rng.random(n) < 0.2] = 0  # rows without characters
        order = np.lexsort((np.arange(n), -s))  # highest first, ties by position
        for k in sorted({1, 2, n // 3, n // 2, n} & set(range(1, n + 1))):
            np.testing.assert_array_equal(_stream_top(s, w, k, False, parts), np.sort(order[:k]))
        for f in (0.001, 0.3, 0.5, 1.0):
            cum = np.cumsum(w[order])
            target = f * cum[-1]
            k = int(np.searchsorted(cum, target, side="left")) + 1
            np.testing.assert_array_equal(
                _stream_top(s, w, target, True, parts), np.sort(order[:k])
            )


@pytest.mark.parametrize("seed", range(4))
def test_streaming_top_takes_what_topk_takes(seed):
    """Few distinct values (many ties) over parts of random sizes, some empty: the mask of each
    part is the rows topk keeps, ties to the earlier row."""
    from datasel.ops.topk import order_keys, streaming_top

    rng = np.random.default_rng(seed)
    x = rng.integers(-3, 4, size=500).astype(np.float64)
    cuts = np.sort(rng.integers(0, 501, size=6))
    keys = np.split(order_keys(x), cuts)
    for k in (0, 1, 37, 250, 499, 500):
        masks = [t for _, t in streaming_top(lambda: [(p,) for p in keys], k)]
        assert np.flatnonzero(np.concatenate(masks)).tolist() == sorted(topk(x, k).tolist())
