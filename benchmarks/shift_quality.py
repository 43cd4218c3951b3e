"""Shift quality: do DSIR and GOT-D find a target domain hidden in a large pool?

    python benchmarks/shift_quality.py [--corpus ../shared/data/dev-corpus.jsonl.gz] [--domain python_docs]
    python benchmarks/shift_quality.py --domain all      # every domain in turn, ~12 min

A real labelled mixture of >= 100,000 documents: every dev-corpus document is cut into passages
of ~60 words; the target domain's passages are thinned to 3% of the pool. The target set is 300
passages of held-out documents of that domain (no pool passage comes from them). Each method
selects as many passages as the pool holds of the domain; precision = the selected share from
that domain (random: ~0.03), and `text` the domain's share of the selected text (what a model
trained on the selection at equal tokens sees). Also the methods' own shift statistics: DSIR's
hashed n-gram KL to the target before/after, GOT-D's OT cost before/after.

`gotd-<M>` (e.g. `gotd-10000`) is GOT-D with --ot-sample M: the transport solved on M pool
passages drawn at random, every passage's gradient from that solution (a pool of ~100k is solved
whole by default); each prints its overlap with `gotd`'s selection when that runs first. They
reuse the embeddings `gotd` staged.

`gotd-raw` is GOT-D with --no-whiten (raw cosines, as in the paper), on `gotd`'s embeddings.

`oracle` (and `oracle-100k`) is a ceiling for DSIR's model, not a method: ShiftDsir with plain
top-k whose target is every pool passage of the domain (the true labels, in sample) instead of
300 target passages. Selection by hashed n-gram importance weights at that bucket count does
not get much better than it on this pool.
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

import datasel
from datasel.stages.shift import ShiftDsir, ShiftGotd

DOMAINS = [
    "python_docs",
    "man_pages",
    "bible_kjv",
    "literature_shakespeare",
    "movie_reviews",
    "abc_news_rural",
    "abc_news_science",
    "math_word_problems",
    "us_speeches",
]


def passages(text: str, words: int = 60) -> list[str]:
    w = text.split()
    return [" ".join(w[i : i + words]) for i in range(0, max(len(w) - words // 2, 1), words)]


def build(
    corpus: Path,
    domain: str,
    share: float,
    seed: int,
    tmp: Path,
    unit: str = "passage",
    targets: int = 300,
    pool_size: int | None = None,
) -> tuple[Path, Path, int, int]:
    rng = random.Random(seed)
    docs = [json.loads(line) for line in gzip.open(corpus, "rt")]
    in_domain = [d for d in docs if d["domain"] == domain]
    rng.shuffle(in_domain)
    cut = passages if unit == "passage" else (lambda text: [text])
    held = 200 if unit == "passage" else targets
    held_out, kept_domain = in_domain[:held], in_domain[held:]
    target = [p for d in held_out for p in cut(d["text"])]
    target = rng.sample(target, min(targets, len(target)))
    other = [
        {"text": p, "domain": d["domain"]}
        for d in docs
        if d["domain"] != domain
        for p in cut(d["text"])
    ]
    if pool_size:
        other = rng.sample(other, min(len(other), int(pool_size * (1 - share))))
    ours = [{"text": p, "domain": domain} for d in kept_domain for p in cut(d["text"])]
    n_domain = int(share * len(other) / (1 - share))
    pool = other + rng.sample(ours, min(n_domain, len(ours)))
    rng.shuffle(pool)
    for i, row in enumerate(pool):
        row["id"] = f"p{i}"
    (tmp / "pool").mkdir()
    table = pa.Table.from_pylist(pool)
    shards = 8
    for k in range(shards):
        lo, hi = k * len(pool) // shards, (k + 1) * len(pool) // shards
        pq.write_table(table.slice(lo, hi - lo), tmp / "pool" / f"part-{k}.parquet")
    pq.write_table(pa.table({"text": target}), tmp / "target.parquet")
    return tmp / "pool", tmp / "target.parquet", len(pool), sum(r["domain"] == domain for r in pool)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--corpus",
        type=Path,
        default=Path(__file__).parents[1] / "../shared/data/dev-corpus.jsonl.gz",
    )
    ap.add_argument(
        "--domain", default="python_docs", help="target domain(s), comma-separated, or 'all'"
    )
    ap.add_argument("--share", type=float, default=0.03)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--methods",
        default="dsir,dsir-10k,dsir-100k,gotd",
        help="dsir-<N>k: DSIR with N thousand buckets (dsir: the bucket count cross-validated); "
        "also: oracle, oracle-100k (see above)",
    )
    ap.add_argument(
        "--unit",
        choices=["passage", "doc"],
        default="passage",
        help="pool items: 60-word passages (>= 100k) or whole documents",
    )
    ap.add_argument("--targets", type=int, default=300, help="target documents or passages")
    ap.add_argument("--pool-size", type=int, default=None, help="pool items (default: all)")
    args = ap.parse_args()
    domains = DOMAINS if args.domain == "all" else args.domain.split(",")
    methods = args.methods.split(",")
    table = []
    for domain in domains:
        with tempfile.TemporaryDirectory() as tmp:
            row = run_domain(args, domain, methods, Path(tmp))
            if row:
                table.append(row)
    if len(table) > 1:
        for title, col in (("precision", 3), ("in-domain share of the selected text", 4)):
            print(f"\n{title} by target domain ({args.unit} pools, {args.share:.0%} target):")
            print(
                f"{'domain':<24} {'pool':>8} {'random':>7} " + " ".join(f"{m:>9}" for m in methods)
            )
            for row in table:
                domain, n, k, values = row[0], row[1], row[2], row[col]
                # random's share of the text is not measured
                share = f"{k / n:7.3f}" if col == 3 else f"{'':>7}"
                print(f"{domain:<24} {n:>8,} {share} " + " ".join(f"{x:9.3f}" for x in values))
            means = [sum(r[col][i] for r in table) / len(table) for i in range(len(methods))]
            print(f"{'mean':<24} {'':>8} {'':>7} " + " ".join(f"{x:9.3f}" for x in means))
            worst = [min(r[col][i] for r in table) for i in range(len(methods))]
            print(f"{'worst':<24} {'':>8} {'':>7} " + " ".join(f"{x:9.3f}" for x in worst))


def run_domain(args, domain: str, methods: list[str], tmp: Path):
    pool, target, n, k = build(
        args.corpus, domain, args.share, args.seed, tmp, args.unit, args.targets, args.pool_size
    )
    if k < min(300, args.share * n / 2):
        print(f"{domain}: only {k} pool items from the domain; skipped")
        return None
    print(
        f"pool {n:,} {args.unit}s, {k:,} ({k / n:.1%}) from {domain}; target {args.targets} "
        f"held-out {args.unit}s; select {k:,}"
    )
    print(f"{'method':<10} {'precision':>9} {'text':>6} {'seconds':>8}  shift")
    print(f"{'random':<10} {k / n:9.3f} {'':>6} {'':>8}")
    stages = {
        "dsir": ShiftDsir(target=str(target), size=k),
        "gotd": ShiftGotd(target=str(target), size=k),
    }
    for name in methods:  # dsir-10k, dsir-100k, ...: a fixed bucket count
        if name.startswith("dsir-"):
            stages[name] = ShiftDsir(target=str(target), size=k, buckets=int(name[5:-1]) * 1000)
    if any(m.startswith("oracle") for m in methods):
        # the target counted over the pool's own passages of the domain: DSIR's ceiling
        truth = tmp / "oracle-target.parquet"
        pq.write_table(pq.read_table(pool, filters=[("domain", "=", domain)]), truth)
        for name, buckets in (("oracle", 10_000), ("oracle-100k", 100_000)):
            stages[name] = ShiftDsir(target=str(truth), size=k, buckets=buckets, deterministic=True)
    for name in methods:
        if name == "gotd-raw":
            stages[name] = ShiftGotd(target=str(target), size=k, whiten=False)
        elif name.startswith("gotd-"):
            stages[name] = ShiftGotd(target=str(target), size=k, ot_sample=int(name[5:]))
    precisions, texts, picked = [], [], {}
    for name in methods:
        t0 = time.perf_counter()
        out = tmp / ("gotd" if name.startswith("gotd") else name)  # gotd-*: gotd's embeddings
        m = datasel.run(stages[name], pool, out, quiet=True, overwrite=True)
        sec = time.perf_counter() - t0
        selected = pq.read_table(out, columns=["id", "domain", "text"])
        dom = selected.column("domain").to_pylist()
        chars = [len(t) for t in selected.column("text").to_pylist()]
        picked[name] = set(selected.column("id").to_pylist())
        s = m["stats"]
        shift = (
            f"KL {s['kl_before']:.3f} -> {s['kl_after']:.3f}; {s['buckets']:,} buckets"
            if name.startswith(("dsir", "oracle"))
            else f"OT cost {s['ot_before']:.3f} -> {s['ot_after']:.3f}"
        )
        if name.startswith("gotd-") and "gotd" in picked:
            shared = len(picked[name] & picked["gotd"]) / k
            shift += f"; solved on {s['ot_rows']:,}; overlap with gotd {shared:.3f}"
        precisions.append(sum(d == domain for d in dom) / len(dom))
        texts.append(
            sum(c for c, d in zip(chars, dom, strict=True) if d == domain) / max(sum(chars), 1)
        )
        print(f"{name:<10} {precisions[-1]:9.3f} {texts[-1]:6.3f} {sec:8.1f}  {shift}", flush=True)
    return domain, n, k, precisions, texts


if __name__ == "__main__":
    main()
