"""Does `datasel diversify` balance unequal domains? Domain entropy of a 10% selection of dev-corpus.

dev-corpus has 10 labelled domains of very unequal size (39% math word problems, 1% Milton).
Runs the real stages: `embed` (hashing backend, no model) once per --reduce, then `diversify`
for each method and seed, and compares the entropy (nats) of the selected rows' domain
distribution with uniformly random 10% samples (the bar: at least 0.3 nats above random; the
maximum, uniform over 10 domains, is ln 10 = 2.303). It also counts duplicate pairs inside each
selection: pairs of documents that `datasel dedup` puts in one cluster (exact or MinHash near
duplicates at --dup-threshold), and the number expected from a random sample of the same size.

Methods: kMQ (`--levels 1`: equal quotas per k-means cluster, Yu et al. 2024) and the default
`--levels 2` (equal quotas per group of clusters, groups by spectral clustering of the clusters'
topology graph, then equal per cluster).

    python benchmarks/diversify_quality.py                      # ~5 min on 2 cores
    python benchmarks/diversify_quality.py --reduce random svd --k 100 300 --seeds 2
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import datasel  # noqa: E402
from datasel.stages.dedup import Dedup  # noqa: E402
from datasel.stages.diversify import Diversify  # noqa: E402
from datasel.stages.embed import Embed  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "dev-corpus.jsonl.gz"
if not DATA.exists():
    DATA = Path("/work/shared/data/dev-corpus.jsonl.gz")


def entropy(labels: np.ndarray) -> float:
    p = np.bincount(labels) / labels.size
    p = p[p > 0]
    return float(-(p * np.log(p)).sum())


def read(folder: Path, columns: list[str], removed: bool = False):
    files = sorted((folder / "_removed" if removed else folder).glob("part-*.parquet"))
    tables = [pq.read_table(f, columns=columns) for f in files]
    return {c: sum((t.column(c).to_pylist() for t in tables), []) for c in columns}


def dup_pairs(ids: list[str], cluster_of: dict[str, str]) -> int:
    """Pairs of selected documents in one duplicate cluster."""
    sizes = Counter(cluster_of[i] for i in ids if i in cluster_of)
    return sum(m * (m - 1) // 2 for m in sizes.values())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--frac", type=float, default=0.10)
    ap.add_argument("--k", type=int, nargs="+", default=[100, 300, 1000])
    ap.add_argument("--kmq-k", type=int, nargs="+", default=[100, 300], help="k for --levels 1")
    ap.add_argument("--reduce", nargs="+", default=["svd"], choices=["random", "svd"])
    ap.add_argument("--seeds", type=int, default=3, help="seeds (k-means and sampling) per method")
    ap.add_argument("--dup-threshold", type=float, default=0.5)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="diversify-quality-"))
    run = dict(quiet=True, workers=args.workers, overwrite=True)
    t = time.perf_counter()
    datasel.run(Dedup(threshold=args.dup_threshold), DATA, tmp / "dedup", **run)
    gone = read(tmp / "dedup", ["id", "duplicate_of"], removed=True)
    cluster_of = {d: d for d in gone["duplicate_of"]} | dict(
        zip(gone["id"], gone["duplicate_of"], strict=True)
    )
    all_ids = read(tmp / "dedup", ["id"])["id"] + gone["id"]
    n = len(all_ids)
    total_pairs = dup_pairs(all_ids, cluster_of)
    print(
        f"{DATA.name}: {n:,} docs; {total_pairs} duplicate pairs at Jaccard >= "
        f"{args.dup_threshold} (dedup {time.perf_counter() - t:.1f} s)"
    )

    rows = read(tmp / "dedup", ["id", "domain"])
    rows = {k: rows[k] + read(tmp / "dedup", ["id", "domain"], removed=True)[k] for k in rows}
    names, domain = np.unique(rows["domain"], return_inverse=True)
    domain_of = dict(zip(rows["id"], domain, strict=True))
    budget = int(round(args.frac * n))
    expected_pairs = total_pairs * (budget / n) * ((budget - 1) / (n - 1))
    rand = []
    for s in range(max(args.seeds, 5)):
        rand.append(entropy(domain[np.random.default_rng(s).choice(n, budget, replace=False)]))
    h_rand = float(np.mean(rand))
    print(
        f"corpus entropy {entropy(domain):.3f} nats; budget {budget:,} ({args.frac:.0%}); "
        f"bar: random + 0.3 = {h_rand + 0.3:.3f}\n"
    )
    head = f"{'method':34s} {'entropy':>8s} {'sd':>6s} {'vs random':>10s} {'min':>7s}"
    print(f"{head} {'dup pairs':>10s} {'s/run':>7s} {'docs/s':>8s}")
    print(
        f"{'uniform random 10%':34s} {h_rand:8.3f} {np.std(rand):6.3f} {0:+10.3f} "
        f"{min(rand) - h_rand:+7.3f} {expected_pairs:10.2f} {'':>7s} {'':>8s}"
    )

    shares = {}
    for reduce in args.reduce:
        t = time.perf_counter()
        emb = tmp / f"embed-{reduce}"
        datasel.run(Embed(reduce=reduce), DATA, emb, **run)
        t_embed = time.perf_counter() - t
        print(
            f"-- embed --model hashing --reduce {reduce}: {t_embed:.1f} s, {n / t_embed:,.0f} docs/s"
        )
        methods = [(1, k) for k in args.kmq_k] + [(2, k) for k in args.k]
        for levels, k in methods:
            hs, pairs, secs = [], [], []
            for seed in range(args.seeds):
                out = tmp / f"div-{reduce}-{levels}-{k}-{seed}"
                t = time.perf_counter()
                stage = Diversify(k=k, fraction=args.frac, levels=levels, seed=seed)
                datasel.run(stage, emb, out, **run)
                secs.append(time.perf_counter() - t)
                ids = read(out, ["id"])["id"]
                assert len(ids) == budget, (len(ids), budget)
                picked = np.array([domain_of[i] for i in ids])
                hs.append(entropy(picked))
                pairs.append(dup_pairs(ids, cluster_of))
            h = float(np.mean(hs))
            label = f"{'kMQ' if levels == 1 else 'L2'} k={k} {reduce}"
            shares[label] = np.bincount(picked, minlength=len(names)) / picked.size
            print(
                f"{label:34s} {h:8.3f} {np.std(hs):6.3f} {h - h_rand:+10.3f} "
                f"{min(hs) - h_rand:+7.3f} {np.mean(pairs):10.2f} {np.mean(secs):7.1f} "
                f"{n / np.mean(secs):8,.0f}"
            )

    corpus = np.bincount(domain, minlength=len(names)) / n
    print("\ndomain shares: corpus, then each method's last seed")
    print(f"  {'domain':24s} {'corpus':>7s} " + " ".join(f"{m[:14]:>14s}" for m in shares))
    for i, name in enumerate(names):
        cells = " ".join(f"{s[i]:14.1%}" for s in shares.values())
        print(f"  {name:24s} {corpus[i]:7.1%} {cells}")
    print(
        f"\npeak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:,.0f} MB (driver)"
    )


if __name__ == "__main__":
    main()
