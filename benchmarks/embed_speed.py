"""Embedding speed per backend on real documents (dev-corpus, ~2 KB each on average).

Each backend runs in its own process, so the peak RSS column is that backend's own;
docs/CPU-s (per second of CPU time) is the per-core rate, robust to other load on the cores.
The hashing backends use one process and one thread (the per-core figure); the peer is
scikit-learn's equivalent pipeline (HashingVectorizer word 1-2-grams into 2^18 buckets,
TfidfTransformer(sublinear_tf), the same dense Gaussian projection); MiniLM uses torch with
its default threads.

    python benchmarks/embed_speed.py                       # 10,000 docs hashing, 300 MiniLM
    python benchmarks/embed_speed.py --n 2000 --neural-n 100
    python benchmarks/embed_speed.py --gpu --skip-neural --n 17000 --neural-n 20000  # CUDA MiniLM:
        # packed rows (the default there) vs padded batches; docs/s of wall time, GPU peak memory
"""

from __future__ import annotations

import argparse
import gzip
import json
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from memory import peak_rss_mb  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data" / "dev-corpus.jsonl.gz"
if not DATA.exists():
    DATA = Path("/work/shared/data/dev-corpus.jsonl.gz")


def load_docs(n: int, seed: int = 0) -> list[str]:
    with gzip.open(DATA, "rt") as f:
        docs = [json.loads(line)["text"] for line in f]
    idx = np.random.default_rng(seed).permutation(len(docs))
    return [docs[i] for i in idx[: min(n, len(docs))]]


def run_backend(name: str, fit_docs: list[str], docs: list[str], q: mp.Queue) -> None:
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    t_setup = time.perf_counter()
    if name.startswith("hashing"):
        from scorers.embed import HashingEmbedder

        emb = HashingEmbedder(reduce="svd" if name.endswith("svd") else "random").fit(fit_docs)
        emb.encode(docs[:10])  # builds the projection: part of setup, not of throughput
        fn = emb.encode
    elif name == "sklearn-peer":
        from sklearn.feature_extraction.text import HashingVectorizer, TfidfTransformer

        hv = HashingVectorizer(
            n_features=1 << 18, ngram_range=(1, 2), alternate_sign=False, norm=None
        )
        tfidf = TfidfTransformer(sublinear_tf=True).fit(hv.transform(fit_docs))
        proj = np.random.default_rng(0).standard_normal((1 << 18, 256), dtype=np.float32)

        def fn(texts):
            y = np.asarray(tfidf.transform(hv.transform(texts)).astype(np.float32) @ proj)
            return y / np.maximum(np.linalg.norm(y, axis=1, keepdims=True), 1e-12)

    elif name.startswith("minilm@cuda"):
        import torch

        from scorers.embed import SentenceTransformerEmbedder, minilm_path

        packed = not name.endswith("padded")
        path = os.environ.get("GPU_MODEL") or minilm_path()
        emb = SentenceTransformerEmbedder(path, device="cuda", batch_size=256, packed=packed)
        assert (emb.packer is not None) == packed, "packed attention did not switch on"
        emb.encode(docs[:256])
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()

        def fn(texts):
            y = emb.encode(texts)
            torch.cuda.synchronize()
            print(f"{name}: GPU peak {torch.cuda.max_memory_allocated() / 2**20:,.0f} MiB")
            return y

    else:
        from scorers.embed import load_embedder

        emb = load_embedder(name, device="cpu", batch_size=32)
        emb.encode(docs[:4])
        fn = emb.encode
    setup = time.perf_counter() - t_setup
    t, c = time.perf_counter(), time.process_time()
    y = fn(docs)
    secs, cpu = time.perf_counter() - t, time.process_time() - c
    assert y.shape[0] == len(docs)
    rss = peak_rss_mb()
    q.put((name, len(docs), secs, cpu, setup, rss, y.shape[1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--n", type=int, default=10_000, help="docs for the hashing backends")
    ap.add_argument("--fit-n", type=int, default=5_000, help="docs to fit idf / SVD on")
    ap.add_argument("--neural-n", type=int, default=300, help="docs for MiniLM")
    ap.add_argument("--skip-neural", action="store_true")
    ap.add_argument("--gpu", action="store_true", help="also MiniLM on CUDA, packed and padded")
    ap.add_argument("--gpu-model", default=None, help="--gpu: a MiniLM folder (default: the "
                    "package's; a GPU machine without it takes one saved by --save-bf16)")  # fmt: skip
    ap.add_argument("--save-bf16", type=Path, default=None,
                    help="write MiniLM with bf16 weights here (45 MB) and exit")  # fmt: skip
    args = ap.parse_args()
    if args.save_bf16:
        import shutil

        import torch
        from safetensors.torch import load_file, save_file

        sys.path.insert(0, str(ROOT))
        from scorers.embed import minilm_path

        shutil.copytree(minilm_path(), args.save_bf16, dirs_exist_ok=True)
        weights = args.save_bf16 / "model.safetensors"
        save_file({k: v.to(torch.bfloat16) for k, v in load_file(weights).items()}, weights)
        print(f"MiniLM, bf16 weights: {args.save_bf16}")
        return
    if args.gpu_model:
        os.environ["GPU_MODEL"] = str(args.gpu_model)

    docs = load_docs(args.n + args.fit_n)
    fit_docs, docs = docs[: args.fit_n], docs[args.fit_n :]
    mean_kb = np.mean([len(d.encode()) for d in docs]) / 1024
    print(f"{len(docs):,} docs from {DATA.name}, mean {mean_kb:.2f} KB; {os.cpu_count()} cores")

    plan = [("hashing", docs), ("hashing-svd", docs), ("sklearn-peer", docs)]
    if not args.skip_neural:
        plan.append(("minilm", docs[: args.neural_n]))
    if args.gpu:
        gpu_docs = (docs + fit_docs)[: args.neural_n]
        plan += [("minilm@cuda", gpu_docs), ("minilm@cuda-padded", gpu_docs)]
    ctx = mp.get_context("spawn")
    rows = []
    for name, texts in plan:
        q = ctx.Queue()
        env = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        if not name.startswith("minilm"):
            os.environ.update(env)
        else:
            for key in env:
                os.environ.pop(key, None)
        p = ctx.Process(target=run_backend, args=(name, fit_docs, texts, q))
        p.start()
        rows.append(q.get())
        p.join()

    print(
        f"\n{'backend':14s} {'dim':>4s} {'docs':>7s} {'docs/s':>9s} {'docs/CPU-s':>11s} "
        f"{'MB/CPU-s':>9s} {'setup s':>8s} {'peak RSS MB':>12s}"
    )
    rate = {}
    for name, n, secs, cpu, setup, rss, dim in rows:
        rate[name] = n / cpu
        print(
            f"{name:14s} {dim:4d} {n:7,d} {n / secs:9,.0f} {n / cpu:11,.0f} "
            f"{n / cpu * mean_kb / 1024:9.1f} {setup:8.1f} {rss:12,.0f}"
        )
    print("\ndocs/CPU-s: docs per second of CPU time (per core for the one-thread hashing rows);")
    print("wall docs/s drops when other processes share the cores. Ratios use docs/CPU-s.")
    if "sklearn-peer" in rate:
        print(f"hashing vs sklearn-peer: {rate['hashing'] / rate['sklearn-peer']:.1f}x")
    if "minilm" in rate:
        print(f"hashing vs minilm (CPU): {rate['hashing'] / rate['minilm']:.0f}x")
    wall = {name: n / secs for name, n, secs, *_ in rows}
    if "minilm@cuda" in wall:
        print(f"MiniLM on CUDA: packed {wall['minilm@cuda']:,.0f} docs/s, padded "
              f"{wall['minilm@cuda-padded']:,.0f} docs/s (wall; the bar: >= 20,000)")  # fmt: skip


if __name__ == "__main__":
    main()
