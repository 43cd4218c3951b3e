"""Speed of the `datasel shift` kernels: DSIR featurisation and GOT-D's Sinkhorn.

(a) DSIR, one process, same documents: pool = ``--dsir-docs`` random non-python_docs documents
    of ../shared/data/dev-corpus.jsonl.gz, target = 300 python_docs documents. datasel:
    ``hashed_ngram_counts`` (batches of 2,000) + ``log_importance``. Peer: the reference package
    ``data-selection`` (pip install data-selection==1.0.3, pulls nltk), whose
    ``HashedNgramDSIR.importance_estimator`` is ``get_ngram_counts`` (nltk wordpunct tokens, one
    sha256 per n-gram) + ``np.inner`` per document. Also checks that ``hashing="sha256"``
    reproduces the reference's counts exactly.
(b) GOT-D: blocked log-domain Sinkhorn + calibrated gradient on synthetic unit vectors (256 dims,
    a mixture of 50 clusters) against a 300-point target drawn from 5 of them, pool sizes 10k,
    100k, 1M (up to ``--max-pool``); then a 30,000-point target summarised by k-means to 300
    centroids with their masses. Peer: POT's dense ``ot.sinkhorn(method="sinkhorn_log")``
    (same eps, torch backend, same device) where its n x m matrices fit.

Columns: ``s`` is Sinkhorn + gradient + top-k end to end, ``ms/iter`` that divided by the
iterations (the final cost pass included); ``peak MiB`` is the GPU allocator's peak for that row on
CUDA, and the process's peak RSS so far on CPU (monotone: only its growth is informative).

Measured on one H100 (eps 0.05, tol 1e-4, 15 iterations): pool 10k / 100k / 1M against 300
points took 0.01 / 0.05 / 0.42 s with 124 / 581 / 1,590 MiB GPU peak (POT dense: 0.12 / 0.03 /
0.24 s, 112 / 705 / 5,857 MiB); against the unsummarised 30k target 0.25 / 2.4 / 23.7 s with
586 / 780 / 2,713 MiB, where a dense 1M x 30k cost matrix alone would take 120 GB.

    python benchmarks/shift_speed.py                    # CPU: pools up to 100k, a few minutes
    python benchmarks/shift_speed.py --max-pool 1000000 --skip-dsir   # on a GPU
    python benchmarks/shift_speed.py --skip-dsir --skip-gotd --stage-path  # 1M x 384 vs 10k, CPU
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

from datasel.ops.ngrams import fit_distribution, hashed_ngram_counts, log_importance  # noqa: E402
from datasel.ops.sinkhorn import gotd_gradient, sinkhorn  # noqa: E402
from datasel.ops.topk import topk  # noqa: E402

DATA = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "dev-corpus.jsonl.gz")


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ---------------------------------------------------------------- DSIR
def bench_dsir(path: str, n_docs: int, seed: int = 0) -> None:
    docs = [json.loads(line) for line in gzip.open(path, "rt")]
    rng = np.random.default_rng(seed)
    py = [d["text"] for d in docs if d["domain"] == "python_docs"]
    rest = [d["text"] for d in docs if d["domain"] != "python_docs"]
    target = [py[i] for i in rng.choice(len(py), 300, replace=False)]
    pool = [rest[i] for i in rng.choice(len(rest), min(n_docs, len(rest)), replace=False)]
    mb = sum(len(t.encode()) for t in pool) / 1e6
    b = 10_000
    print(f"DSIR: {len(pool):,} pool docs ({mb:.1f} MB), 300 target docs, {b:,} buckets, 1 process")

    def ours(hashing: str) -> tuple[float, np.ndarray]:
        p = fit_distribution([hashed_ngram_counts(target, b, hashing=hashing)], b, smoothing=0)
        q = fit_distribution([hashed_ngram_counts(pool, b, hashing=hashing)], b, smoothing=0)
        t0 = time.perf_counter()
        w = np.concatenate(
            [
                log_importance(
                    hashed_ngram_counts(pool[i : i + 2000], b, hashing=hashing),
                    np.log(p),
                    np.log(q),
                )  # fmt: skip
                for i in range(0, len(pool), 2000)
            ]
        )
        return time.perf_counter() - t0, w

    rows = []
    t_x, w_x = ours("fast")
    rows.append(("datasel hashed_ngram_counts (fast)", t_x))
    t_s, w_s = ours("sha256")
    rows.append(("datasel hashed_ngram_counts (sha256)", t_s))
    try:
        from data_selection.hashed_ngram_dsir import get_ngram_counts, wpt
    except ImportError:
        print("  peer not installed: pip install data-selection==1.0.3")
        get_ngram_counts = None
    if get_ngram_counts is not None:
        # Fit as the reference does (counts / total, log(p + 1e-8)), timing only the per-doc pass.
        def ref_counts(texts):
            return sum(get_ngram_counts(t, num_buckets=b, tokenizer=wpt.tokenize) for t in texts)

        p = ref_counts(target) / ref_counts(target).sum()
        qc = ref_counts(pool)
        log_diff = np.log(p + 1e-8) - np.log(qc / qc.sum() + 1e-8)
        t0 = time.perf_counter()
        w_ref = np.array(
            [np.inner(get_ngram_counts(t, tokenizer=wpt.tokenize), log_diff) for t in pool]
        )
        t_ref = time.perf_counter() - t0
        rows.append(("reference data-selection 1.0.3", t_ref))
        # Same log_diff for both, so that only per-document featurisation is compared.
        w_same = log_importance(hashed_ngram_counts(pool, b, hashing="sha256"), log_diff, 0.0)
        same = np.isclose(w_same, w_ref, rtol=1e-9, atol=1e-6)
        # nltk >= 3.10 tokenises with the `regex` module, whose \w also matches combining marks
        # ("İ".lower() = "i" + U+0307); datasel follows stdlib `re`, as nltk did before.
        print(f"  sha256 mode reproduces the reference's log-weights on {same.mean():.2%} of docs")
        print(f"  rank correlation fast vs reference: {np.corrcoef(np.argsort(np.argsort(w_x)), np.argsort(np.argsort(w_ref)))[0, 1]:.4f}")  # fmt: skip
    print(f"  {'implementation':<40} {'docs/s':>9} {'MB/s':>6} {'vs ref':>7}")
    t_ref = dict(rows).get("reference data-selection 1.0.3")
    for name, t in rows:
        ratio = f"{t_ref / t:6.1f}x" if t_ref else "    n/a"
        print(f"  {name:<40} {len(pool) / t:>9,.0f} {mb / t:>6.2f} {ratio}")
    print(f"  peak RSS {rss_mib():.0f} MiB\n")


def bench_dsir_end_to_end(path: str, n_docs: int, repeats: int = 3, seed: int = 0) -> None:
    """Both tools end to end on the same JSONL files, one process each: read, fit, weigh, pick
    the top k, write. The pool holds 3% python_docs documents (none of them in the target), and
    each tool keeps as many documents: the share of them it finds is its precision."""
    import tempfile
    from pathlib import Path

    import pyarrow.parquet as pq

    import datasel
    from datasel.stages.shift import ShiftDsir

    docs = [json.loads(line) for line in gzip.open(path, "rt")]
    rng = np.random.default_rng(seed)
    py = [d for d in docs if d["domain"] == "python_docs"]
    rest = [d for d in docs if d["domain"] != "python_docs"]
    order = rng.permutation(len(py))
    target = [py[i]["text"] for i in order[:300]]
    k = int(0.03 * n_docs)
    pool = [py[i] for i in order[300 : 300 + k]]
    pool += [rest[i] for i in rng.choice(len(rest), n_docs - k, replace=False)]
    pool = [pool[i] for i in rng.permutation(len(pool))]
    mb = sum(len(d["text"].encode()) for d in pool) / 1e6
    tmp = Path(tempfile.mkdtemp(prefix="dsir-e2e-"))
    with open(tmp / "pool.jsonl", "w") as f:
        f.writelines(json.dumps({"id": d["id"], "domain": d["domain"], "text": d["text"]}) + "\n" for d in pool)  # fmt: skip
    with open(tmp / "target.jsonl", "w") as f:
        f.writelines(json.dumps({"text": t}) + "\n" for t in target)
    print(f"DSIR end to end: {len(pool):,} pool docs ({mb:.1f} MB JSONL text, {k} python_docs), 300 target docs, keep {k}, top-k")  # fmt: skip
    rows = []
    for workers in (1, 2):
        best = float("inf")
        for r in range(repeats):
            out = tmp / f"datasel-{workers}-{r}"
            t0 = time.perf_counter()
            datasel.run(
                ShiftDsir(target=str(tmp / "target.jsonl"), size=k, deterministic=True),
                tmp / "pool.jsonl", out, workers=workers, quiet=True,
            )  # fmt: skip
            best = min(best, time.perf_counter() - t0)
        domains = pq.read_table(out, columns=["domain"]).column(0).to_pylist()
        precision = sum(d == "python_docs" for d in domains) / len(domains)
        rows.append((f"datasel shift dsir, {workers} worker{'s' * (workers > 1)}", best, precision))
    try:
        from data_selection import HashedNgramDSIR
    except ImportError:
        HashedNgramDSIR = None
        print("  peer not installed: pip install data-selection==1.0.3")
    if HashedNgramDSIR is not None:
        t0 = time.perf_counter()
        ref = HashedNgramDSIR(
            [str(tmp / "pool.jsonl")],
            [str(tmp / "target.jsonl")],
            str(tmp / "ref-cache"),
            num_proc=1,
        )
        ref.fit_importance_estimator(num_tokens_to_fit="auto")
        ref.compute_importance_weights()
        ref.resample(out_dir=str(tmp / "ref-out"), num_to_sample=k, top_k=True)
        t_ref = time.perf_counter() - t0
        picked = [json.loads(line) for f in (tmp / "ref-out").glob("*.jsonl") for line in open(f)]
        precision = sum(d["domain"] == "python_docs" for d in picked) / max(len(picked), 1)
        rows.append(("reference data-selection 1.0.3, 1 process", t_ref, precision))
    print(f"  {'tool':<44} {'seconds':>8} {'docs/s':>8} {'MB/s':>6} {'precision':>9} {'vs ref':>7}")
    t_ref = rows[-1][1] if HashedNgramDSIR is not None else None
    for name, t, precision in rows:
        ratio = f"{t_ref / t:6.1f}x" if t_ref else "    n/a"
        print(f"  {name:<44} {t:8.2f} {len(pool) / t:8,.0f} {mb / t:6.2f} {precision:9.3f} {ratio}")
    print(f"  datasel: best of {repeats} runs; the reference: 1 run\n")
    import shutil

    shutil.rmtree(tmp, ignore_errors=True)


# ---------------------------------------------------------------- GOT-D
def synth(n: int, centers: np.ndarray, clusters: np.ndarray, rng) -> tuple[np.ndarray, np.ndarray]:
    lab = rng.choice(clusters, size=n)
    x = np.empty((n, centers.shape[1]), dtype=np.float32)
    for i0 in range(0, n, 100_000):  # keep float64 temporaries small at 1M
        lb = lab[i0 : i0 + 100_000]
        noise = rng.standard_normal((len(lb), centers.shape[1]), dtype=np.float32)
        z = centers[lb] + (1.2 / np.sqrt(centers.shape[1])) * noise
        x[i0 : i0 + len(lb)] = z / np.linalg.norm(z, axis=1, keepdims=True)
    return x, lab


def kmeans_torch(y: np.ndarray, k: int, iters: int, device, seed: int = 0):
    """Plain Lloyd k-means (torch); returns centroids and their masses (cluster sizes)."""
    import torch

    yt = torch.from_numpy(y).to(device)
    g = torch.Generator().manual_seed(seed)
    c = yt[torch.randperm(len(yt), generator=g)[:k].to(device)].clone()
    for _ in range(iters):
        lab = torch.cdist(yt, c).argmin(1)
        sums = torch.zeros_like(c).index_add_(0, lab, yt)
        cnt = torch.bincount(lab, minlength=k).to(yt.dtype)
        keep = cnt > 0
        c[keep] = sums[keep] / cnt[keep, None]
    lab = torch.cdist(yt, c).argmin(1)
    cnt = torch.bincount(lab, minlength=k)
    return c.cpu().numpy(), cnt.cpu().numpy().astype(np.float64)


def bench_gotd(args) -> None:
    import torch

    from datasel.device import pick_device

    dev = torch.device(pick_device(args.device, "the GOT-D benchmark", "embed"))
    cuda = dev.type == "cuda"
    name = torch.cuda.get_device_name(dev) if cuda else f"CPU, {torch.get_num_threads()} threads"
    print(f"GOT-D: device {name}, dim {args.dim}, eps {args.eps}, tol {args.tol}, sqeuclidean cost on unit vectors")  # fmt: skip
    rng = np.random.default_rng(0)
    centers = rng.standard_normal((50, args.dim)).astype(np.float32) / np.sqrt(args.dim)
    centers *= 2.0
    tclust = np.arange(5)
    target, _ = synth(300, centers, tclust, rng)
    big_target, _ = synth(30_000, centers, tclust, rng)
    try:
        import ot
    except ImportError:
        ot = None

    def peak_reset():
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats(dev)

    def peak() -> str:
        if cuda:
            return f"{torch.cuda.max_memory_allocated(dev) / 2**20:>8,.0f} GPU"
        return f"{rss_mib():>8,.0f} RSS"

    sinkhorn(target, target, device=dev, max_iter=3)  # warm-up: CUDA context, kernels
    hdr = f"  {'pool':>9} {'target':>16} {'impl':<16} {'iters':>5} {'s':>7} {'ms/iter':>8} {'peak MiB':>12} {'prec':>5} {'vs ours':>7}"  # fmt: skip
    print(hdr)
    sizes = [s for s in (10_000, 100_000, 1_000_000) if s <= args.max_pool]
    for n in sizes:
        pool, lab = synth(n, centers, np.arange(50), rng)
        is_t = np.isin(lab, tclust)
        k = int(is_t.sum())
        configs = [("300 points", target, None)]
        t0 = time.perf_counter()
        cent, mass = kmeans_torch(big_target, 300, 10, dev)
        t_km = time.perf_counter() - t0
        configs.append(("30k->300 kmeans", cent, mass))
        for tname, y, b in configs:
            peak_reset()
            t0 = time.perf_counter()
            res = sinkhorn(pool, y, b=b, eps=args.eps, tol=args.tol, device=dev)
            grad = gotd_gradient(res.f)
            sel = topk(grad, k, largest=False)
            if cuda:
                torch.cuda.synchronize()
            t = time.perf_counter() - t0
            extra = f"  (+{t_km:.1f}s k-means)" if b is not None else ""
            print(f"  {n:>9,} {tname:>16} {'datasel':<16} {res.n_iter:>5} {t:>7.2f} {1000 * t / res.n_iter:>8.1f} {peak()} {is_t[sel].mean():>5.2f} {'1.0x':>7}{extra}")  # fmt: skip
            # POT dense peer: n x m float matrices; skip where they would not fit comfortably.
            if ot is not None and n * len(y) * 8 * 6 < args.peer_mem:
                peak_reset()
                t0 = time.perf_counter()
                xs = torch.from_numpy(pool).to(dev)
                ys = torch.from_numpy(y).to(dev)
                a_ = torch.full((n,), 1.0 / n, device=dev, dtype=torch.float32)
                b_ = torch.from_numpy((b if b is not None else np.ones(len(y))) / (b.sum() if b is not None else len(y))).to(dev, torch.float32)  # fmt: skip
                M = ot.dist(xs, ys)
                _, log = ot.sinkhorn(a_, b_, M, args.eps, method="sinkhorn_log", numItermax=1000,
                                     stopThr=args.tol, log=True)  # fmt: skip
                f_pot = (args.eps * log["log_u"]).double().cpu().numpy()
                sel_p = topk(gotd_gradient(f_pot), k, largest=False)
                if cuda:
                    torch.cuda.synchronize()
                tp = time.perf_counter() - t0
                it = int(log.get("niter", 0)) or -1
                agree = len(np.intersect1d(sel, sel_p)) / k
                print(f"  {n:>9,} {tname:>16} {'POT dense':<16} {it:>5} {tp:>7.2f} {1000 * tp / max(it, 1):>8.1f} {peak()} {is_t[sel_p].mean():>5.2f} {tp / t:>6.1f}x  (top-k overlap with ours {agree:.3f})")  # fmt: skip
                del xs, ys, M, log
        # Full 30k target, where affordable: how much does k-means summarising change the pick?
        if n * len(big_target) <= args.full_target_budget:
            peak_reset()
            t0 = time.perf_counter()
            res = sinkhorn(pool, big_target, eps=args.eps, tol=args.tol, device=dev)
            sel_full = topk(gotd_gradient(res.f), k, largest=False)
            t = time.perf_counter() - t0
            print(f"  {n:>9,} {'30k full':>16} {'datasel':<16} {res.n_iter:>5} {t:>7.2f} {1000 * t / res.n_iter:>8.1f} {peak()} {is_t[sel_full].mean():>5.2f}  (top-k overlap with k-means target {len(np.intersect1d(sel, sel_full)) / k:.3f})")  # fmt: skip
        del pool, lab
    print(f"  process peak RSS {rss_mib():,.0f} MiB")


def bench_gotd_stage_path(args) -> None:
    """The issue's scale on this machine: a 1,000,000 x 384 pool against a 10,000-point target,
    through the stage's own path (target summary sized for the device, Sinkhorn, gradient,
    top-k), with time and peak memory; and, at 100k, how far the summary moves the pick."""
    from datasel.stages.shift import summarise, target_points

    rng = np.random.default_rng(1)
    dim = 384
    centers = 2.0 * rng.standard_normal((50, dim)).astype(np.float32) / np.sqrt(dim)
    tclust = np.arange(5)
    target, _ = synth(10_000, centers, tclust, rng)
    print(f"GOT-D stage path: 384 dims, 10,000-point target, eps {args.gotd_eps}, cosine cost")
    for n in (100_000, args.stage_pool):
        pool, lab = synth(n, centers, np.arange(50), rng)
        is_t = np.isin(lab, tclust)
        k = int(is_t.sum())
        t0 = time.perf_counter()
        m = target_points(n, 5_000, args.device)
        points, mass = summarise(target, m, seed=0)
        t_sum = time.perf_counter() - t0
        res = sinkhorn(pool, points, b=mass, eps=args.gotd_eps, cost="cosine", device=args.device)
        sel = topk(gotd_gradient(res.f), k, largest=False)
        t = time.perf_counter() - t0
        print(f"  pool {n:>9,}: target summarised to {len(points):,} points in {t_sum:.1f} s; "
              f"{res.n_iter} iterations; {t:.1f} s in all; precision {is_t[sel].mean():.3f}; "
              f"peak RSS {rss_mib():,.0f} MiB")  # fmt: skip
        if n == 100_000:  # the unsummarised target, for comparison
            full = sinkhorn(pool, target, eps=args.gotd_eps, cost="cosine", device=args.device)
            sel_full = topk(gotd_gradient(full.f), k, largest=False)
            print(f"  pool {n:>9,}: full 10,000-point target: precision {is_t[sel_full].mean():.3f}, "
                  f"top-k overlap with the summarised pick {len(np.intersect1d(sel, sel_full)) / k:.3f}")  # fmt: skip
        del pool, lab


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data", default=DATA)
    ap.add_argument("--dsir-docs", type=int, default=4000)
    ap.add_argument("--max-pool", type=int, default=None, help="largest pool (default 100k on CPU, 1M on CUDA)")  # fmt: skip
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--eps", type=float, default=0.05)
    ap.add_argument("--tol", type=float, default=1e-4)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--stage-path", action="store_true", help="also: 1M x 384 vs a 10k target through the stage's path")  # fmt: skip
    ap.add_argument("--stage-pool", type=int, default=1_000_000)
    ap.add_argument("--gotd-eps", type=float, default=0.1, help="eps of the stage-path run (the stage's default)")  # fmt: skip
    ap.add_argument("--peer-mem", type=float, default=4e9, help="bytes the dense POT peer may use")  # fmt: skip
    ap.add_argument("--full-target-budget", type=float, default=None, help="largest n*m for the unsummarised 30k target (default 0 on CPU, 3e10 on CUDA)")  # fmt: skip
    ap.add_argument("--skip-dsir", action="store_true")
    ap.add_argument("--skip-gotd", action="store_true")
    args = ap.parse_args()
    if not args.skip_dsir:
        if os.path.exists(args.data):
            bench_dsir(args.data, args.dsir_docs)
            bench_dsir_end_to_end(args.data, args.dsir_docs)
        else:
            print(f"DSIR: {args.data} not found, skipped\n")
    if not args.skip_gotd:
        import torch

        cuda = torch.cuda.is_available() and args.device in ("auto", "cuda")
        if args.max_pool is None:
            args.max_pool = 1_000_000 if cuda else 100_000
        if args.full_target_budget is None:
            args.full_target_budget = 3e10 if cuda else 0
        bench_gotd(args)
    if args.stage_path:
        bench_gotd_stage_path(args)


if __name__ == "__main__":
    main()
