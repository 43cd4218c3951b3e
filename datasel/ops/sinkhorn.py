"""Blocked log-domain Sinkhorn and the calibrated OT gradient of GOT-D (Kang et al., 2024, "Get
more for less: Principled Data Selection for Warming Up Fine-Tuning in LLMs", arXiv:2405.02774).

Entropic OT between a pool ``x`` (n points, masses ``a``, uniform by default) and a target ``y``
(m points, masses ``b``: uniform, or e.g. k-means centroids with their cluster masses):

    min_P <P, C> + eps * KL(P || a b^T),   P 1 = a,  P^T 1 = b.

The dual potentials are updated in the log domain (logsumexp), so small ``eps`` never under- or
overflows. The pool is processed in strips of ``block_size`` rows x all m targets, recomputing the
cost of a strip from the embeddings inside each update: memory is O(block_size * m + (n + m) * d),
never n x m (1M x 300 fp32 would be 1.2 GB; a 55k-row strip is 64 MB). One matrix product per strip
and iteration serves both half-steps: a strip's new ``f`` is computed, then immediately folded into
the running column logsumexp that gives the next ``g``.

Needs torch (CPU or CUDA): ``pip install datasel[embed]``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from datasel.device import import_torch, pick_device

_BLOCK_ELEMS = 1 << 24  # cost entries per strip: 64 MB in fp32


@dataclass(frozen=True)
class OTResult:
    """Result of :func:`sinkhorn`.

    Attributes
    ----------
    f : np.ndarray
        Pool-side dual potential, shape (n,). Potentials are defined up to ``f + c, g - c``.
    g : np.ndarray
        Target-side dual potential, shape (m,).
    cost : float
        Transport cost ``<P, C>`` of the entropic plan (what POT's ``sinkhorn2`` returns).
    dual : float
        ``<a, f> + <b, g>``: the entropic OT value ``<P, C> + eps * KL(P || a b^T)`` at
        convergence.
    n_iter : int
        Sinkhorn iterations run.
    marginal_err : float
        L1 error of the plan's pool marginal (its target marginal is exact after each iteration).
    """

    f: np.ndarray
    g: np.ndarray
    cost: float
    dual: float
    n_iter: int
    marginal_err: float


WHAT = "GOT-D's Sinkhorn"  # who needs torch, in its error


def sinkhorn(
    x: Any,
    y: Any,
    *,
    a: Any = None,
    b: Any = None,
    eps: float = 0.05,
    cost: Literal["sqeuclidean", "cosine"] = "sqeuclidean",
    max_iter: int = 1000,
    tol: float = 1e-5,
    block_size: int | None = None,
    device: str | Any = "auto",
    dtype: Literal["float32", "float64"] = "float32",
) -> OTResult:
    """Entropic OT between a pool and a target by blocked log-domain Sinkhorn.

    Parameters
    ----------
    x : array (n, d)
        Pool embeddings (numpy or torch).
    y : array (m, d)
        Target embeddings.
    a, b : array (n,) / (m,), optional
        Masses of pool and target points (normalised to sum 1); uniform when omitted.
    eps : float
        Entropic regularisation, in cost units. Costs of unit-normalised embeddings lie in
        [0, 4] (sqeuclidean) or [0, 2] (cosine); 0.01-0.1 suits them. Smaller is sharper and
        needs more iterations.
    cost : {"sqeuclidean", "cosine"}
        ``|x - y|^2`` or ``1 - cos(x, y)``.
    max_iter : int
    tol : float
        Stop when the L1 error of the pool marginal falls below ``tol``. float32 bottoms out
        near 1e-6; ask float64 for tighter.
    block_size : int, optional
        Pool rows per strip; default ``2**24 // m`` (a 64 MB fp32 strip). Results do not depend
        on it beyond floating-point summation order.
    device : "auto", "cpu", "cuda", or a torch.device
        "auto" uses CUDA when available. On CUDA the pool is copied to the GPU once when it
        takes under half the free memory, else streamed strip by strip.
    dtype : {"float32", "float64"}
        Arithmetic precision; float32 matrix products never use TF32 here.

    Returns
    -------
    OTResult

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> res = sinkhorn(rng.normal(size=(100, 8)), rng.normal(size=(30, 8)), eps=0.5)
    >>> res.f.shape, res.g.shape
    ((100,), (30,))
    """
    torch = import_torch(WHAT, "embed")
    if cost not in ("sqeuclidean", "cosine"):
        raise ValueError(f"cost must be 'sqeuclidean' or 'cosine', got {cost!r}")
    if dtype not in ("float32", "float64"):
        raise ValueError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
    if eps <= 0:
        raise ValueError(f"eps must be > 0, got {eps}")
    dev = torch.device(pick_device(device, WHAT, "embed"))
    tdt = getattr(torch, dtype)

    def as_tensor(v: Any, where: Any) -> Any:
        t = v if isinstance(v, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(v))
        return t.to(device=where, dtype=tdt)

    n, d = x.shape
    m = y.shape[0]
    if y.shape[1] != d:
        raise ValueError(f"x has {d} dims but y has {y.shape[1]}")
    if n == 0 or m == 0:
        raise ValueError("x and y must hold at least one point each")
    bs = max(1, min(n, block_size or _BLOCK_ELEMS // m))

    yt = as_tensor(y, dev)
    # Where the pool lives: on the device if it fits comfortably, else on the host (streamed).
    host = x if isinstance(x, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(x))
    host = host.to(dtype=tdt)
    if dev.type == "cuda":
        free, _ = torch.cuda.mem_get_info(dev)
        if host.numel() * host.element_size() < free // 2:
            host = host.to(dev)
        elif not host.is_pinned():
            host = host.pin_memory()

    costs = _Cost(torch, yt, cost)
    xterm = torch.empty(n, device=dev, dtype=tdt)
    for i0 in range(0, n, bs):
        xterm[i0 : i0 + bs] = costs.xterm(host[i0 : i0 + bs].to(dev, non_blocking=True))
    cconst, yT, scale = costs.cconst, costs.yT, costs.scale

    def pool_rows(i0: int, i1: int) -> Any:
        return costs.rows(host[i0:i1].to(dev, non_blocking=True))

    def strip(i0: int, i1: int) -> Any:
        """Cost strip C[i0:i1, :] of shape (i1 - i0, m)."""
        c = torch.addmm(cconst.unsqueeze(0), pool_rows(i0, i1), yT, alpha=-scale)
        c += xterm[i0:i1].unsqueeze(1)
        return c.clamp_(min=0)

    def log_masses(w: Any, k: int, name: str) -> Any:
        if w is None:
            return torch.full((k,), -math.log(k), device=dev, dtype=torch.float64)
        w = as_tensor(w, dev).to(torch.float64)
        if w.shape != (k,) or bool((w < 0).any()) or float(w.sum()) <= 0:
            raise ValueError(f"{name} must be {k} non-negative masses with a positive sum")
        return torch.log(w / w.sum())

    log_a = log_masses(a, n, "a")
    log_b = log_masses(b, m, "b")

    f = torch.zeros(n, device=dev, dtype=torch.float64)
    g = torch.zeros(m, device=dev, dtype=torch.float64)
    la = log_a.to(tdt)
    lb = log_b.to(tdt)
    cconst64 = cconst.to(torch.float64)
    err = math.inf
    it = 0
    with torch.inference_mode():
        for it in range(1, max_iter + 1):
            # T_ij = (g_j - C_ij + xterm_i) / eps + log b_j, so
            #   f_i = xterm_i - eps * LSE_j T_ij,
            #   g_j = -eps * LSE_i((f_i - C_ij) / eps + log a_i)
            #       = g_j + eps * log b_j - eps * LSE_i(T_ij + r_i),  r_i = (f_i - xterm_i) / eps + log a_i
            row_const = ((g - cconst64) / eps + log_b).to(tdt).unsqueeze(0)
            acc = torch.full((m,), -math.inf, device=dev, dtype=tdt)
            err_acc = torch.zeros((), device=dev, dtype=torch.float64)
            for i0 in range(0, n, bs):
                i1 = min(n, i0 + bs)
                t = torch.addmm(row_const, pool_rows(i0, i1), yT, alpha=scale / eps)
                xt = xterm[i0:i1].to(torch.float64)
                f_new = xt - eps * torch.logsumexp(t, dim=1).to(torch.float64)
                if it > 1:
                    # pool marginal of the plan (f_old, g): a_i * exp((f_old - f_new) / eps)
                    ratio = torch.exp((f[i0:i1] - f_new) / eps)
                    err_acc += (torch.exp(log_a[i0:i1]) * (ratio - 1).abs()).sum()
                f[i0:i1] = f_new
                t += (((f_new - xt) / eps) + log_a[i0:i1]).to(tdt).unsqueeze(1)
                acc = torch.logaddexp(acc, torch.logsumexp(t, dim=0))
            g = g + eps * log_b - eps * acc.to(torch.float64)
            if it > 1:
                err = float(err_acc)
                if err < tol:
                    break

        # Final pass: transport cost and the exact pool-marginal error of the returned (f, g).
        total = torch.zeros((), device=dev, dtype=torch.float64)
        err_acc = torch.zeros((), device=dev, dtype=torch.float64)
        gs = (g / eps).to(tdt)
        for i0 in range(0, n, bs):
            i1 = min(n, i0 + bs)
            c = strip(i0, i1)
            logp = (gs + lb) - c / eps + ((f[i0:i1] / eps).to(tdt) + la[i0:i1]).unsqueeze(1)
            p = torch.exp(logp)
            total += (p * c).sum(dtype=torch.float64)
            err_acc += (p.sum(1, dtype=torch.float64) - torch.exp(log_a[i0:i1])).abs().sum()
        err = float(err_acc)
        dual = float((torch.exp(log_a) * f).sum() + (torch.exp(log_b) * g).sum())
    return OTResult(
        f=f.cpu().numpy(),
        g=g.cpu().numpy(),
        cost=float(total),
        dual=dual,
        n_iter=it,
        marginal_err=err,
    )


class _Cost:
    """The cost between pool rows and the target, written C_ij = xterm_i + cconst_j - scale *
    <rows(x)_i, yT_j>, so that one addmm per strip gives the whole log-kernel and the per-row
    term leaves the logsumexp."""

    def __init__(self, torch: Any, yt: Any, cost: str):
        self.torch, self.cost = torch, cost
        if cost == "sqeuclidean":
            # |x - y|^2 = |x - mu|^2 + |y - mu|^2 + 2 mu.(y - mu) - 2 x.(y - mu) with mu the
            # target mean: centred norms lose less to fp32 cancellation, and the pool is never
            # copied.
            self.mu = yt.mean(0)
            yc = yt - self.mu
            self.cconst = (yc * yc).sum(1) + 2 * (yc @ self.mu)
            self.yT = yc.T.contiguous()
            self.scale = 2.0
        else:
            self.cconst = torch.ones(yt.shape[0], device=yt.device, dtype=yt.dtype)
            self.yT = torch.nn.functional.normalize(yt, dim=1).T.contiguous()
            self.scale = 1.0

    def rows(self, xb: Any) -> Any:
        """Pool rows as they enter the product."""
        return xb if self.cost == "sqeuclidean" else self.torch.nn.functional.normalize(xb, dim=1)

    def xterm(self, xb: Any) -> Any:
        if self.cost == "sqeuclidean":
            return ((xb - self.mu) ** 2).sum(1)
        return self.torch.zeros(xb.shape[0], device=xb.device, dtype=xb.dtype)


def soft_c_transform(
    x: Any,
    y: Any,
    g: np.ndarray,
    *,
    b: Any = None,
    eps: float = 0.05,
    cost: Literal["sqeuclidean", "cosine"] = "sqeuclidean",
    block_size: int | None = None,
    device: str | Any = "auto",
    dtype: Literal["float32", "float64"] = "float32",
) -> np.ndarray:
    """The pool-side potential of any points ``x`` given the target-side potential ``g``:

        f(x) = -eps * log sum_j b_j exp((g_j - C(x, y_j)) / eps),

    the same update as a Sinkhorn iteration's, so it extends a solution found on a sample of the
    pool to every pool point (the entropic potentials' out-of-sample extension; Pooladian &
    Niles-Weed 2021, arXiv:2109.12004). Applied to the pool the solve ran on, with the ``g`` of
    :func:`sinkhorn`, it gives back its ``f`` up to the tolerance of the solve. Memory: one strip
    of ``block_size`` rows x m, as :func:`sinkhorn`.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> x, y = rng.normal(size=(100, 8)), rng.normal(size=(30, 8))
    >>> res = sinkhorn(x, y, eps=0.5, tol=1e-7, dtype="float64")
    >>> f = soft_c_transform(x, y, res.g, eps=0.5, dtype="float64")
    >>> bool(np.abs(f - res.f).max() < 1e-5)
    True
    """
    torch = import_torch(WHAT, "embed")
    dev = torch.device(pick_device(device, WHAT, "embed"))
    tdt = getattr(torch, dtype)
    n, m = x.shape[0], y.shape[0]
    yt = torch.from_numpy(np.ascontiguousarray(y)).to(device=dev, dtype=tdt)
    c = _Cost(torch, yt, cost)
    if b is None:
        log_b = torch.full((m,), -math.log(m), device=dev, dtype=torch.float64)
    else:  # as sinkhorn reads them: in the working precision, then normalised in float64
        w = torch.from_numpy(np.asarray(b)).to(device=dev, dtype=tdt).to(torch.float64)
        log_b = torch.log(w / w.sum())
    g = torch.from_numpy(np.asarray(g, dtype=np.float64)).to(dev)
    row_const = ((g - c.cconst.to(torch.float64)) / eps + log_b).to(tdt).unsqueeze(0)
    f = np.empty(n, dtype=np.float64)
    bs = max(1, block_size or _BLOCK_ELEMS // m)
    with torch.inference_mode():
        for i0 in range(0, n, bs):
            xb = torch.from_numpy(np.ascontiguousarray(x[i0 : i0 + bs])).to(device=dev, dtype=tdt)
            t = torch.addmm(row_const, c.rows(xb), c.yT, alpha=c.scale / eps)
            lse = torch.logsumexp(t, dim=1).to(torch.float64)
            f[i0 : i0 + bs] = (c.xterm(xb).to(torch.float64) - eps * lse).cpu().numpy()
    return f


def gotd_gradient(f: np.ndarray, total: float | None = None, n: int | None = None) -> np.ndarray:
    """Calibrated gradient of the OT distance w.r.t. each pool point's mass (GOT-D / LAVA).

    Masses sum to one, so moving mass onto point i takes it from the others:
    ``grad_i = f_i - (sum_j f_j - f_i) / (n - 1)``. Invariant to the constant shift of the
    potentials. The most negative gradients mark the pool points whose up-weighting moves the pool
    closest to the target: select them with ``topk(grad, k, largest=False)``. For a part of a
    pool streamed part by part, give the `total` of all `n` potentials of the pool.
    """
    f = np.asarray(f, dtype=np.float64).reshape(-1)
    if total is None:
        total, n = f.sum(), len(f)
    if n < 2:
        return np.zeros(len(f))
    return f - (total - f) / (n - 1)
