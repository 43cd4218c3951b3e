import numpy as np
import pytest
from scipy.special import logsumexp

torch = pytest.importorskip("torch")

from datasel.ops.sinkhorn import gotd_gradient, sinkhorn  # noqa: E402
from datasel.ops.topk import topk  # noqa: E402


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # These problems are tiny: a second OpenMP thread only adds barrier waits, which cost
    # milliseconds per product when other processes share the cores.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _cost(x, y, kind):
    if kind == "cosine":
        xn = x / np.linalg.norm(x, axis=1, keepdims=True)
        yn = y / np.linalg.norm(y, axis=1, keepdims=True)
        return 1 - xn @ yn.T
    return ((x[:, None, :] - y[None, :, :]) ** 2).sum(-1)


def _dense_sinkhorn(C, a, b, eps, iters=20_000):
    """Plain dense log-domain Sinkhorn in numpy: the reference."""
    f, g = np.zeros(len(a)), np.zeros(len(b))
    for _ in range(iters):
        f = -eps * logsumexp(np.log(b)[None, :] + (g[None, :] - C) / eps, axis=1)
        g_new = -eps * logsumexp(np.log(a)[:, None] + (f[:, None] - C) / eps, axis=0)
        if np.abs(g_new - g).max() < 1e-13:
            g = g_new
            break
        g = g_new
    P = np.exp(np.log(a)[:, None] + np.log(b)[None, :] + (f[:, None] + g[None, :] - C) / eps)
    return f, g, P


def _plan(res, C, a, b, eps):
    return np.exp(
        np.log(a)[:, None] + np.log(b)[None, :] + (res.f[:, None] + res.g[None, :] - C) / eps
    )


@pytest.fixture(scope="module")
def problem():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 6))
    y = rng.normal(size=(40, 6)) + 0.7
    b = rng.random(40) + 0.1
    return x, y, np.full(50, 1 / 50), b / b.sum()


def _centered(v):
    return v - v.mean()


@pytest.mark.parametrize("kind,eps", [("sqeuclidean", 0.5), ("cosine", 0.1)])
def test_matches_dense_reference(problem, kind, eps):
    x, y, a, b = problem
    C = _cost(x, y, kind)
    f_ref, g_ref, P_ref = _dense_sinkhorn(C, a, b, eps)
    res = sinkhorn(x, y, b=b, eps=eps, cost=kind, tol=1e-12, max_iter=20_000, dtype="float64",
                   block_size=16, device="cpu")  # fmt: skip
    # potentials are defined up to (f + c, g - c)
    np.testing.assert_allclose(_centered(res.f), _centered(f_ref), atol=1e-5)
    np.testing.assert_allclose(_centered(res.g), _centered(g_ref), atol=1e-5)
    assert res.cost == pytest.approx(float((P_ref * C).sum()), abs=1e-5)
    P = _plan(res, C, a, b, eps)
    np.testing.assert_allclose(P.sum(1), a, atol=1e-8)
    np.testing.assert_allclose(P.sum(0), b, atol=1e-8)
    assert res.marginal_err < 1e-8
    kl = float((P * np.log(P / (a[:, None] * b[None, :]))).sum())
    assert res.dual == pytest.approx(res.cost + eps * kl, abs=1e-6)


def test_matches_pot(problem):
    ot = pytest.importorskip("ot")
    x, y, a, b = problem
    C = _cost(x, y, "sqeuclidean")
    eps = 0.3
    _, log = ot.sinkhorn(a, b, C, eps, method="sinkhorn_log", log=True, stopThr=1e-13,
                         numItermax=100_000)  # fmt: skip
    res = sinkhorn(x, y, b=b, eps=eps, tol=1e-12, max_iter=100_000, dtype="float64", device="cpu")
    np.testing.assert_allclose(_centered(res.f), _centered(eps * log["log_u"]), atol=1e-5)
    assert res.cost == pytest.approx(ot.sinkhorn2(a, b, C, eps, method="sinkhorn_log",
                                                  stopThr=1e-13, numItermax=100_000), abs=1e-5)  # fmt: skip


def test_block_size_does_not_change_result(problem):
    x, y, a, b = problem
    runs = [
        sinkhorn(x, y, b=b, eps=1.0, tol=1e-10, dtype="float64", block_size=bs, device="cpu")
        for bs in (1, 7, 50, None)
    ]
    for r in runs[1:]:
        assert r.n_iter == runs[0].n_iter
        np.testing.assert_allclose(r.f, runs[0].f, rtol=0, atol=1e-10)
        np.testing.assert_allclose(r.g, runs[0].g, rtol=0, atol=1e-10)
        assert r.cost == pytest.approx(runs[0].cost, abs=1e-12)


def test_float32_close_to_float64(problem):
    x, y, a, b = problem
    r64 = sinkhorn(x, y, b=b, eps=0.2, tol=1e-9, dtype="float64", device="cpu")
    r32 = sinkhorn(x, y, b=b, eps=0.2, tol=1e-6, dtype="float32", device="cpu")
    np.testing.assert_allclose(_centered(r32.f), _centered(r64.f), atol=1e-4)
    assert r32.cost == pytest.approx(r64.cost, rel=1e-4)


def test_target_masses_equal_duplicated_points():
    # A weighted target (k-means centroids with masses) is the same measure as repeated points.
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(30, 4)), rng.normal(size=(5, 4))
    counts = np.array([1, 4, 2, 7, 1])
    w = sinkhorn(x, y, b=counts, eps=0.3, tol=1e-12, dtype="float64", device="cpu")
    d = sinkhorn(x, np.repeat(y, counts, axis=0), eps=0.3, tol=1e-12, dtype="float64",
                 device="cpu")  # fmt: skip
    np.testing.assert_allclose(_centered(w.f), _centered(d.f), atol=1e-8)
    assert w.cost == pytest.approx(d.cost, abs=1e-10)


def test_gotd_gradient_formula_and_shift_invariance():
    f = np.array([1.0, 2.0, 4.0, -1.0])
    expected = [f[i] - (f.sum() - f[i]) / 3 for i in range(4)]
    np.testing.assert_allclose(gotd_gradient(f), expected)
    np.testing.assert_allclose(gotd_gradient(f + 123.0), expected)
    assert gotd_gradient(np.array([5.0])).tolist() == [0.0]


def test_gradient_is_first_order_effect_of_mass():
    # Moving a little mass onto point i changes the entropic OT value by ~ t * grad_i.
    rng = np.random.default_rng(5)
    x, y = rng.normal(size=(20, 3)), rng.normal(size=(15, 3)) + 1.0
    kw = dict(eps=0.5, tol=1e-13, max_iter=50_000, dtype="float64", device="cpu")
    base = sinkhorn(x, y, **kw)
    grad = gotd_gradient(base.f)
    t = 1e-4
    for i in (0, 7, 13):
        a = np.full(20, (1 - (1 / 20 + t)) / 19)
        a[i] = 1 / 20 + t
        # a[i] gains t, the others lose t / 19 each
        moved = sinkhorn(x, y, a=a, **kw)
        assert (moved.dual - base.dual) / t == pytest.approx(grad[i], rel=1e-2)


@pytest.mark.parametrize("kind", ["sqeuclidean", "cosine"])
def test_most_negative_gradients_pick_target_blob(kind):
    rng = np.random.default_rng(0)
    d = 16
    ca, cb = np.zeros(d), np.zeros(d)
    ca[0], cb[1] = 3.0, 3.0
    pool = np.vstack([ca + rng.normal(size=(400, d)), cb + rng.normal(size=(600, d))])
    is_a = np.r_[np.ones(400, bool), np.zeros(600, bool)]
    target = ca + rng.normal(size=(150, d))
    eps = 1.0 if kind == "sqeuclidean" else 0.05
    res = sinkhorn(pool, target, eps=eps, cost=kind, device="cpu")
    chosen = topk(gotd_gradient(res.f), 400, largest=False)
    assert is_a[chosen].mean() >= 0.9


def test_validation():
    x = np.zeros((3, 2))
    with pytest.raises(ValueError, match="cost"):
        sinkhorn(x, x, cost="l1")
    with pytest.raises(ValueError, match="dims"):
        sinkhorn(x, np.zeros((3, 3)))
    with pytest.raises(ValueError, match="b must be"):
        sinkhorn(x, x, b=np.array([1.0, -1.0, 1.0]))
    with pytest.raises(ValueError, match="eps"):
        sinkhorn(x, x, eps=0)


@pytest.mark.parametrize("kind", ["sqeuclidean", "cosine"])
def test_soft_c_transform_gives_back_the_solved_potentials(problem, kind):
    """The pool-side potential GOT-D computes for rows outside its sample is the same update as
    a Sinkhorn half-step: on the solved pool it gives back the solve's f (to the tolerance of
    the solve), in any blocks, with the target's masses."""
    from datasel.ops.sinkhorn import soft_c_transform

    x, y, _, b = problem
    res = sinkhorn(x, y, b=b, eps=0.2, cost=kind, tol=1e-9, dtype="float64", max_iter=20_000)
    f = soft_c_transform(x, y, res.g, b=b, eps=0.2, cost=kind, dtype="float64", block_size=7)
    assert np.abs(f - res.f).max() < 1e-7
    f32 = soft_c_transform(x, y, res.g, b=b, eps=0.2, cost=kind)
    assert np.abs(f32 - res.f).max() < 1e-4
    # and the gradient of a streamed pool part equals the whole pool's
    grad = gotd_gradient(res.f)
    parts = [gotd_gradient(p, res.f.sum(), len(res.f)) for p in np.array_split(res.f, 3)]
    np.testing.assert_allclose(np.concatenate(parts), grad, rtol=0, atol=1e-12)
