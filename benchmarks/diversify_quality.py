"""Does `datasel diversify` balance unequal domains? Domain entropy of a 10% selection of dev-corpus.

dev-corpus has 10 labelled domains of very unequal size (39% math word problems, 1% Milton).
Runs the real stages: `embed` (hashing backend, no model) once per --reduce, then `diversify`
for each method and seed, and compares the entropy (nats) of the selected rows' domain
distribution with uniformly random 10% samples (the bar: at least 0.3 nats above random; the
maximum, uniform over 10 domains, is ln 10 = 2.303). It also counts duplicate pairs inside each
selection: pairs of documents that `datasel dedup` puts in one cluster (exact or MinHash near
duplicates at --dup-threshold), and the number expected from a random sample of the same size.

Methods, all with quotas in rows (`--quota-by rows`): kMQ (`--levels 1 --quota equal`: equal
quotas per k-means cluster, Yu et al. 2024) and `--levels 2 --quota equal --cluster-quota equal`
(equal quotas per group of clusters, groups by spectral clustering of the clusters' topology
graph, then equal per cluster).

    python benchmarks/diversify_quality.py                      # ~5 min on 2 cores
    python benchmarks/diversify_quality.py --reduce random svd --k 100 300 --seeds 2

Entropy is a stand-in. --heldout measures what a selection is for: `datasel eval` trains the
same tiny GPT-2 on each arm (same tokenizer, same --tokens, same order, --seeds seeds) and
scores bits per byte on documents of each domain held out of the pool; seed s trains on its own
random draw and its own diversify selection (`--seed s`), so the spread includes the draw (one
draw can train 0.03 better than the next). Arms (--arms, ARMS):
diversify with the defaults and other quota rules, and a random selection of the same number
of rows; per arm it prints the mean over domains (± the seeds' spread), how many domains are
worse than random and the worst, and per domain the bpb and the domain's share of the selected
text. Corpora, all built from dev-corpus: mix7 (7 domains, skewed as web mixtures are), loo9
(the 9 domains other than python_docs, natural sizes), skew (one domain 84% of the rows), pass7
(120-word passages, 7 domains) and tail7 (other domains: short news 58% of the rows, a long tail);
added in session 17, after the defaults were chosen: bal7 (7 domains, 700 rows each), prose6
(movie reviews 62% of the rows) and passpy6 (passages, python_docs 71%).

    python benchmarks/diversify_quality.py --heldout mix7 tail7 skew --arms defaults sqrt-rows \
        --seeds 2 --workdir /tmp/divq   # 1M tokens: ~90 s an arm and seed, idle 2-core CPU
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
from datasel.stage import rows_of  # noqa: E402
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
    ap.add_argument("--heldout", nargs="+", choices=sorted(CORPORA), help="held-out loss instead")
    ap.add_argument("--tokens", type=int, default=1_000_000, help="--heldout: training tokens")
    ap.add_argument("--arms", nargs="+", default=["defaults", "sqrt-rows"], choices=sorted(ARMS))
    ap.add_argument(
        "--workdir", help="--heldout: folder for pools, selections and the eval (resumable)"
    )
    args = ap.parse_args()
    if args.heldout:
        return heldout(args)

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
                # equal row quotas: kMQ, and the --levels 2 default before the held-out-loss
                # measure (--heldout) made it equal text per group, proportional inside
                stage = Diversify(
                    k=k,
                    fraction=args.frac,
                    levels=levels,
                    seed=seed,
                    quota="equal",
                    cluster_quota="equal",
                    quota_by="rows",
                )
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


EVAL_DOCS = 25  # held-out documents per domain, never in a pool
CORPORA = {  # name -> ({domain: documents in the pool}, passages)
    "mix7": ({"math_word_problems": 5000, "python_docs": 2500, "abc_news_rural": 1500,
              "movie_reviews": 900, "man_pages": 500, "bible_kjv": 300, "us_speeches": 150}, False),
    "loo9": ({"math_word_problems": 10**9, "abc_news_rural": 10**9, "movie_reviews": 10**9,
              "man_pages": 10**9, "literature_shakespeare": 10**9, "bible_kjv": 10**9,
              "abc_news_science": 10**9, "us_speeches": 10**9, "literature_milton": 10**9}, False),
    "skew": ({"python_docs": 4000, "literature_shakespeare": 250, "abc_news_science": 200,
              "man_pages": 150, "movie_reviews": 100, "literature_milton": 80}, False),
    "pass7": ({"abc_news_rural": 2000, "man_pages": 1000, "movie_reviews": 600, "bible_kjv": 400,
               "literature_shakespeare": 300, "abc_news_science": 200, "literature_milton": 100},
              True),
    "tail7": ({"abc_news_rural": 2300, "literature_shakespeare": 700, "math_word_problems": 400,
               "abc_news_science": 250, "python_docs": 150, "literature_milton": 100,
               "man_pages": 60}, False),
    "bal7": ({"movie_reviews": 700, "bible_kjv": 700, "man_pages": 700, "abc_news_science": 700,
              "literature_shakespeare": 700, "python_docs": 700, "math_word_problems": 700}, False),
    "prose6": ({"movie_reviews": 1900, "bible_kjv": 300, "abc_news_science": 300, "us_speeches": 200,
                "man_pages": 200, "literature_milton": 150}, False),
    "passpy6": ({"python_docs": 3000, "bible_kjv": 300, "movie_reviews": 300, "us_speeches": 200,
                 "abc_news_science": 200, "man_pages": 200}, True),
}  # fmt: skip


def passages(texts: list[str], words: int = 120) -> list[str]:
    out = []
    for text in texts:
        w = text.split(" ")
        out += [p for i in range(0, len(w), words) if (p := " ".join(w[i : i + words]).strip())]
    return out


def split_docs() -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """dev-corpus texts by domain: EVAL_DOCS held out of each domain, the rest the pool side."""
    import gzip
    import json

    docs = [json.loads(line) for line in gzip.open(DATA, "rt")]
    np.random.default_rng(123).shuffle(docs)
    held, pool = {}, {}
    for d in docs:
        side = held if len(held.setdefault(d["domain"], [])) < EVAL_DOCS else pool
        side.setdefault(d["domain"], []).append(d["text"])
    return held, pool


def build(name: str, folder: Path, held: dict, pool: dict):
    """Corpus `name` as a shuffled pool table (id, domain, text), written to folder/pool.parquet,
    and its held-out eval files, one per domain."""
    import pyarrow as pa

    sizes, cut = CORPORA[name]
    texts, domains, evals = [], [], {}
    folder.mkdir(parents=True, exist_ok=True)
    for dom, n in sizes.items():
        src = passages(pool[dom]) if cut else pool[dom]
        texts += src[:n]
        domains += [dom] * len(src[:n])
        evals[dom] = folder / f"heldout-{dom}.parquet"
        eval_texts = [t[:3000] for t in (passages(held[dom]) if cut else held[dom])]
        pq.write_table(pa.table({"text": eval_texts}), evals[dom])
    order = np.random.default_rng(7).permutation(len(texts))
    table = pa.table(
        {
            "id": [f"{name}-{i}" for i in order],
            "domain": [domains[i] for i in order],
            "text": [texts[i] for i in order],
        }
    )
    pq.write_table(table, folder / "pool.parquet")
    return table, evals


ARMS = {  # --heldout arms besides random: diversify's parameters
    "defaults": {},
    "sqrt-rows": {"quota": "sqrt", "cluster_quota": "proportional", "quota_by": "rows"},  # before
    "equal-rows": {"quota": "equal", "cluster_quota": "equal", "quota_by": "rows"},  # before that
    "sqrt-bytes": {"quota": "sqrt", "cluster_quota": "proportional", "quota_by": "bytes"},
    "equal-bytes": {"quota": "equal", "cluster_quota": "proportional", "quota_by": "bytes"},
    "sqrt2-bytes": {"quota": "sqrt", "cluster_quota": "sqrt", "quota_by": "bytes"},
}


def heldout(args) -> None:
    """Held-out bits per byte of a tiny LM trained on diversify's selections vs random's."""
    held, pool = split_docs()
    tmp = Path(args.workdir or tempfile.mkdtemp(prefix="diversify-heldout-"))
    run = dict(quiet=True, workers=args.workers, overwrite=True)
    for name in args.heldout:
        sizes, _ = CORPORA[name]
        table, evals = build(name, tmp / name, held, pool)
        src = tmp / name / "pool.parquet"
        ids = np.array(table["id"].to_pylist())
        domains = np.array(table["domain"].to_pylist())
        nbytes = np.array([len(t.encode()) for t in table["text"].to_pylist()])
        budget = int(rows_of(args.frac, table.num_rows))  # as diversify's --fraction rounds
        (tmp / name / "random").mkdir(exist_ok=True)
        arms = {"random": str(tmp / name / "random" / "seed{seed}.parquet")}
        arms |= {arm: str(tmp / name / arm / "seed{seed}") for arm in args.arms}
        picked = {arm: [] for arm in arms}  # each seed its own selection, random's and each arm's
        for seed in range(args.seeds):
            rows = np.random.default_rng(seed).choice(table.num_rows, budget, replace=False)
            pq.write_table(table.take(np.sort(rows)), arms["random"].format(seed=seed))
            picked["random"].append(rows)
            for arm in args.arms:
                out = Path(arms[arm].format(seed=seed))
                datasel.run(Diversify(fraction=args.frac, seed=seed, **ARMS[arm]), src, out, **run)
                picked[arm].append(np.flatnonzero(np.isin(ids, read(out, ["id"])["id"])))
        result = datasel.evaluate(
            tmp / name / "eval",
            arms,
            {k: str(v) for k, v in evals.items()},
            model_name="tiny",
            tokens=args.tokens,
            seeds=args.seeds,
            eval_tokens=20_000,
            checkpoints=1,
            quiet=True,
        )
        head = f"{name}: {table.num_rows:,} rows, select {budget:,}, {args.tokens:,} tokens"
        report(head, evals, arms, picked, domains, nbytes, result)


def report(head, evals, arms, picked, domains, nbytes, result) -> None:
    """Mean bpb over the domains (± the seeds' spread), the domain worsened most against random,
    and per domain: bpb and the domain's share of the selected text (not of its rows)."""
    doms = list(evals)
    bpb = {a: {d: result["summary"][a][d]["bpb"]["mean"] for d in doms} for a in arms}
    print(f"== {head}, {len({r['seed'] for r in result['runs']})} seeds")
    print(
        f"   {'arm':12s} {'text MB':>7s} {'mean bpb':>16s} {'worse than random':>24s} "
        f"{'entropy':>7s} | " + " ".join(f"{d[:11]:>17s}" for d in doms)
    )
    for arm in arms:
        per_seed = [
            np.mean([r["curve"][-1]["eval"][d]["bpb"] for d in doms])
            for r in result["runs"]
            if r["arm"] == arm
        ]
        masks = np.zeros((len(picked[arm]), len(domains)), bool)
        for mask, rows in zip(masks, picked[arm], strict=True):
            mask[rows] = True
        text = np.array([nbytes[m].sum() for m in masks])
        share = {d: np.mean([nbytes[m & (domains == d)].sum() for m in masks] / text) for d in doms}
        spread = np.mean([entropy(np.unique(domains[m], return_inverse=True)[1]) for m in masks])
        delta = {d: bpb[arm][d] - bpb["random"][d] for d in doms}
        worst = max(delta, key=delta.get)
        worse = f"{sum(v > 0 for v in delta.values())}/{len(doms)}, {worst[:9]} {delta[worst]:+.3f}"
        cells = " ".join(f"{bpb[arm][d]:.3f} {share[d]:6.1%}" for d in doms)
        print(
            f"   {arm:12s} {text.mean() / 1e6:7.2f} {np.mean(per_seed):8.4f} "
            f"±{np.std(per_seed, ddof=1):.4f} {worse:>24s} {spread:7.3f} | {cells}"
        )
    sys.stdout.flush()


if __name__ == "__main__":
    main()
