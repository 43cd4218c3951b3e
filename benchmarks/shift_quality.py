"""Can DSIR and GOT-D find a held-out domain? A quick check on the real dev corpus.

Target: ``--target`` (300) random python_docs documents. Pool: every other document of
../shared/data/dev-corpus.jsonl.gz (22,376, of which 3,935 are python_docs). Each method selects
as many documents as the pool holds python_docs; precision = the python_docs share of the
selection (a random pick gets ~0.18).

- DSIR: hashed unigram+bigram counts (10,000 buckets), add-one smoothed target and pool
  distributions, log importance weights, Gumbel top-k (seed 0). Also the KL reduction the DSIR
  paper reports: KL(target || pool) - KL(target || selection).
- GOT-D: quick embeddings made here from hashed uni+bigrams (2^16 buckets, sublinear TF-IDF,
  L2-normalised), reduced to 128 dims by LSA (truncated SVD fitted on 4,000 random documents) or,
  for contrast, by a Gaussian random projection to 256 dims; entropic OT (cosine cost,
  ``--eps`` 0.02) pool -> target; the most negative calibrated gradients. The kNN row (mean cosine
  to the 10 nearest target documents, same LSA embedding) shows what the embedding alone gives.

    python benchmarks/shift_quality.py
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import resource
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from datasel.ops.ngrams import (  # noqa: E402
    fit_distribution,
    hashed_kl,
    hashed_ngram_counts,
    log_importance,
)
from datasel.ops.sinkhorn import gotd_gradient, sinkhorn  # noqa: E402
from datasel.ops.topk import gumbel_topk, topk  # noqa: E402

DATA = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "dev-corpus.jsonl.gz")


def load_split(path: str, domain: str, n_target: int, seed: int):
    docs = [json.loads(line) for line in gzip.open(path, "rt")]
    texts = [d["text"] for d in docs]
    dom = np.array([d["domain"] for d in docs])
    rng = np.random.default_rng(seed)
    t_idx = rng.choice(np.flatnonzero(dom == domain), size=n_target, replace=False)
    is_t = np.zeros(len(docs), bool)
    is_t[t_idx] = True
    target = [texts[i] for i in t_idx]
    pool_idx = np.flatnonzero(~is_t)
    pool = [texts[i] for i in pool_idx]
    return target, pool, dom[pool_idx] == domain


def counts_in_batches(texts: list[str], buckets: int, batch: int = 2000):
    import scipy.sparse as sp

    return sp.vstack([hashed_ngram_counts(texts[i : i + batch], buckets) for i in range(0, len(texts), batch)]).tocsr()  # fmt: skip


def tfidf(counts):
    """Sublinear TF-IDF, rows L2-normalised (float32 csr)."""
    import scipy.sparse as sp

    c = counts.astype(np.float32)
    df = np.bincount(c.indices, minlength=c.shape[1])
    idf = np.log((1 + c.shape[0]) / (1 + df)).astype(np.float32) + 1
    c.data = np.log1p(c.data) * idf[c.indices]
    return (sp.diags(1 / np.sqrt(np.asarray(c.multiply(c).sum(1)).ravel() + 1e-12)) @ c).tocsr()


def _unit(z: np.ndarray) -> np.ndarray:
    return z / np.linalg.norm(z, axis=1, keepdims=True).clip(1e-12)


def embed_rp(x, dim: int = 256, seed: int = 0) -> np.ndarray:
    proj = np.random.default_rng(seed).standard_normal((x.shape[1], dim), dtype=np.float32)
    return _unit(np.asarray(x @ proj))


def embed_lsa(x, dim: int = 128, fit_rows: int = 4000, seed: int = 0) -> np.ndarray:
    from sklearn.decomposition import TruncatedSVD

    idx = np.random.default_rng(seed).choice(x.shape[0], min(fit_rows, x.shape[0]), replace=False)
    svd = TruncatedSVD(dim, algorithm="randomized", n_iter=3, random_state=seed).fit(x[idx])
    return _unit(np.asarray(x @ svd.components_.T.astype(np.float32)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data", default=DATA)
    ap.add_argument("--domain", default="python_docs")
    ap.add_argument("--target", type=int, default=300)
    ap.add_argument("--eps", type=float, default=0.02)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    target, pool, truth = load_split(args.data, args.domain, args.target, args.seed)
    k = int(truth.sum())
    print(f"pool {len(pool):,} docs ({k:,} {args.domain}), target {len(target)}, select k={k:,}")
    rows = []

    # DSIR
    t0 = time.perf_counter()
    b = 10_000
    ct, cp = counts_in_batches(target, b), counts_in_batches(pool, b)
    p, q = fit_distribution([ct], b), fit_distribution([cp], b)
    logw = log_importance(cp, np.log(p), np.log(q))
    chosen = gumbel_topk(logw, k, seed=args.seed)
    t_dsir = time.perf_counter() - t0
    sel = fit_distribution([cp[chosen]], b)
    rand = fit_distribution([cp[np.random.default_rng(1).choice(len(pool), k, replace=False)]], b)
    kl_pool, kl_sel, kl_rand = hashed_kl(p, q), hashed_kl(p, sel), hashed_kl(p, rand)
    rows.append(("DSIR (Gumbel top-k)", truth[chosen].mean(), t_dsir))
    det = topk(logw, k)
    rows.append(("DSIR (deterministic top-k)", truth[det].mean(), t_dsir))

    # GOT-D
    t0 = time.perf_counter()
    x = tfidf(counts_in_batches(target + pool, 1 << 16))
    t_feat = time.perf_counter() - t0
    nt = len(target)
    gotd = {}
    for name, fn in (("LSA 128d", embed_lsa), ("RP 256d", embed_rp)):
        t0 = time.perf_counter()
        z = fn(x)
        t_emb = time.perf_counter() - t0
        t0 = time.perf_counter()
        res = sinkhorn(z[nt:], z[:nt], eps=args.eps, cost="cosine")
        chosen_g = topk(gotd_gradient(res.f), k, largest=False)
        t_ot = time.perf_counter() - t0
        gotd[name] = (res, t_feat, t_emb, t_ot)
        rows.append(
            (
                f"GOT-D (TF-IDF+{name}, eps {args.eps})",
                truth[chosen_g].mean(),
                t_feat + t_emb + t_ot,
            )
        )
        if name.startswith("LSA"):
            sims = z[nt:] @ z[:nt].T
            knn = np.sort(sims, axis=1)[:, -10:].mean(1)
            rows.append(("kNN-10 cosine (same LSA embedding)", truth[topk(knn, k)].mean(), 0.0))
    rows.append(("random", truth.mean(), 0.0))

    print(f"\n{'method':<40} {'precision':>9} {'seconds':>8}")
    for name, prec, sec in rows:
        print(f"{name:<40} {prec:>9.3f} {sec:>8.1f}")
    print(
        f"\nDSIR hashed-ngram KL(target || .): pool {kl_pool:.3f}, random {kl_rand:.3f}, "
        f"selection {kl_sel:.3f}  -> KL reduction {kl_pool - kl_sel:.3f} nats"
    )
    for name, (res, t_feat, t_emb, t_ot) in gotd.items():
        print(
            f"GOT-D {name}: {res.n_iter} Sinkhorn iterations, OT cost {res.cost:.4f}, marginal "
            f"err {res.marginal_err:.1e}; features {t_feat:.1f}s, embedding {t_emb:.1f}s, "
            f"OT + gradient {t_ot:.1f}s"
        )
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
