"""k-means for `datasel diversify`: ours (faiss fit on a sample + batched assign) vs scikit-learn.

Data: ``--n`` unit vectors of width 384 (MiniLM's) from a mixture of 2,000 Gaussian
components, float32. Ours: ``fit_kmeans`` on a random ``--sample`` rows (k=1,000, 20
iterations), then ``assign`` every row. Peer: scikit-learn ``MiniBatchKMeans(n_clusters=k)``
with its defaults (k-means++ init, batch 1,024, early stopping), fitted on all rows as its
docs suggest for large data, then ``predict`` on all rows. Both are timed end to end and
scored by the mean cosine distance of every row to its nearest centroid (lower is better).

    python benchmarks/kmeans_speed.py            # 1,000,000 x 384, k=1,000 (a few minutes)
    python benchmarks/kmeans_speed.py --n 200000 --k 200
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.dirname(__file__))

from memory import peak_rss_mb  # noqa: E402

from datasel.ops.kmeans import assign, fit_kmeans  # noqa: E402


def make_data(n: int, dim: int, components: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((components, dim), dtype=np.float32)
    sizes = rng.dirichlet(np.ones(components)) * n  # unequal components, like real topics
    comp = np.repeat(
        np.arange(components), np.diff(np.round(np.cumsum(sizes)), prepend=0).astype(int)
    )
    comp = np.resize(comp, n)
    x = rng.standard_normal((n, dim), dtype=np.float32)
    x *= 0.8
    for i in range(0, n, 100_000):  # x += centers[comp] without a second n x dim temporary
        x[i : i + 100_000] += centers[comp[i : i + 100_000]]
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def mean_cos_dist(x: np.ndarray, centroids: np.ndarray) -> float:
    """Mean ``1 - cos(row, nearest centroid)``: fair to spherical and Euclidean centroids."""
    c = centroids / np.linalg.norm(centroids, axis=1, keepdims=True)
    return float(assign(x, c)[1].mean() / 2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000, help="rows")
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--k", type=int, default=1000, help="clusters")
    ap.add_argument("--sample", type=int, default=100_000, help="rows ours fits on")
    ap.add_argument("--niter", type=int, default=20)
    ap.add_argument("--skip-sklearn", action="store_true")
    args = ap.parse_args()

    t = time.perf_counter()
    x = make_data(args.n, args.dim, components=2 * args.k)
    print(
        f"data: {args.n:,} x {args.dim} float32 in {time.perf_counter() - t:.1f} s; "
        f"cores: {os.cpu_count()}; peak RSS {peak_rss_mb():,.0f} MB"
    )

    rows = []
    t0 = time.perf_counter()
    sample = x[np.random.default_rng(1).choice(args.n, min(args.sample, args.n), replace=False)]
    c = fit_kmeans(sample, args.k, niter=args.niter, seed=0)
    t1 = time.perf_counter()
    labels, _ = assign(x, c)
    t2 = time.perf_counter()
    rows.append(("datasel (faiss, sample)", t1 - t0, t2 - t1, t2 - t0, mean_cos_dist(x, c)))
    print(
        f"ours done: fit {t1 - t0:.1f} s, assign {t2 - t1:.1f} s; peak RSS {peak_rss_mb():,.0f} MB"
    )

    if not args.skip_sklearn:
        from sklearn.cluster import MiniBatchKMeans

        t0 = time.perf_counter()
        mbk = MiniBatchKMeans(n_clusters=args.k, random_state=0).fit(x)
        t1 = time.perf_counter()
        mbk.predict(x)
        t2 = time.perf_counter()
        c2 = mbk.cluster_centers_.astype(np.float32)
        rows.append(
            ("sklearn MiniBatchKMeans (all)", t1 - t0, t2 - t1, t2 - t0, mean_cos_dist(x, c2))
        )

    print()
    print(
        f"{'method':32s} {'fit s':>8s} {'assign s':>9s} {'total s':>8s} {'rows/s':>10s} {'1-cos':>8s}"
    )
    for name, fit_s, asg_s, tot, d2 in rows:
        print(f"{name:32s} {fit_s:8.1f} {asg_s:9.1f} {tot:8.1f} {args.n / tot:10,.0f} {d2:8.4f}")
    if len(rows) == 2:
        print(
            f"\nspeed-up vs MiniBatchKMeans: {rows[1][3] / rows[0][3]:.1f}x; "
            f"1-cos ratio (ours / sklearn): {rows[0][4] / rows[1][4]:.3f}"
        )
    print(f"peak RSS {peak_rss_mb():,.0f} MB")


if __name__ == "__main__":
    main()
