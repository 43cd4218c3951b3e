"""Dedup quality: precision and recall on real text with injected duplicates of known similarity.

    python benchmarks/dedup_quality.py [--corpus ../shared/data/dev-corpus.jsonl.gz] [--inject 3000]

Injected copies of random documents: exact copies (re-cased, re-spaced), 1-3% of words changed,
and a paragraph added or removed. Each injected document's true word-5-gram Jaccard with its
source is computed exactly. Recall: the share of injected documents with true Jaccard >= 0.8
that datasel removes. Precision: the share of all removed documents whose true Jaccard with
their `duplicate_of` is >= 0.7 (the corpus's own natural duplicates count too).
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import re
import tempfile
import time
import unicodedata
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

import datasel

WORD = re.compile(r"[0-9a-z\x80-\U0010ffff]+")


def shingle_set(text: str, n: int = 5) -> set:
    w = WORD.findall(unicodedata.normalize("NFKC", text).lower())
    return {tuple(w[i : i + n]) for i in range(max(1, len(w) - n + 1))}


def jaccard(a: str, b: str) -> float:
    x, y = shingle_set(a), shingle_set(b)
    return len(x & y) / len(x | y) if x | y else 1.0


def edit_words(text: str, frac: float, rng: random.Random) -> str:
    words = text.split(" ")
    for i in rng.sample(range(len(words)), max(1, int(frac * len(words)))):
        words[i] = "zq" + str(rng.randrange(10**6))
    return " ".join(words)


def inject(rows: list[dict], n: int, rng: random.Random) -> tuple[list[dict], dict]:
    pool = [r for r in rows if len(r["text"].split()) >= 50]
    truth = {}
    out = list(rows)
    for j in range(n):
        src = rng.choice(pool)
        kind = ("exact", "edit", "paragraph")[j % 3]
        text = src["text"]
        if kind == "exact":
            text = "  ".join(text.upper().split(" ")) if j % 2 else text
        elif kind == "edit":
            text = edit_words(text, rng.uniform(0.01, 0.03), rng)
        else:
            paras = text.split("\n\n")
            if len(paras) > 2:
                del paras[rng.randrange(len(paras))]
                text = "\n\n".join(paras)
            else:
                text = text + "\n\n" + rng.choice(pool)["text"][:300]
        doc_id = f"injected-{j}"
        truth[doc_id] = (kind, src["id"], jaccard(src["text"], text))
        out.append(
            {"id": doc_id, "text": text}
        )  # after its source, so `--keep first` keeps the source
    return out, truth


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--corpus",
        type=Path,
        default=Path(__file__).parents[1] / "../shared/data/dev-corpus.jsonl.gz",
    )
    ap.add_argument("--inject", type=int, default=3000)
    ap.add_argument("--threshold", type=float, default=0.8)
    args = ap.parse_args()
    rng = random.Random(0)
    rows = [
        {"id": r["id"], "text": r["text"]} for r in map(json.loads, gzip.open(args.corpus, "rt"))
    ]
    data, truth = inject(rows, args.inject, rng)
    texts = {r["id"]: r["text"] for r in data}
    with tempfile.TemporaryDirectory() as tmp:
        pq.write_table(pa.Table.from_pylist(data), Path(tmp) / "in.parquet")
        t0 = time.perf_counter()
        m = datasel.run(
            datasel.Dedup(threshold=args.threshold),
            Path(tmp) / "in.parquet",
            Path(tmp) / "out",
            quiet=True,
        )
        seconds = time.perf_counter() - t0
        removed = pq.read_table(Path(tmp) / "out" / "_removed").to_pylist()
    gone = {r["id"] for r in removed}
    true_j = [jaccard(texts[r["id"]], texts[r["duplicate_of"]]) for r in removed]
    precision = float(np.mean([j >= 0.7 for j in true_j])) if removed else 1.0
    print(
        f"{len(data):,} documents ({args.inject:,} injected), threshold {args.threshold}: "
        f"{m['removed_total']:,} removed ({m['removed']}) in {seconds:.1f} s"
    )
    print(f"precision (removed docs with true Jaccard >= 0.7 to duplicate_of): {precision:.4f}")
    print(
        f"{'injected kind':<12} {'n':>6} {'J>=0.8':>7} {'recall':>7}   (recall of those with true J >= 0.8)"
    )
    for kind in ("exact", "edit", "paragraph", "all"):
        items = [(k, j) for k, (kd, _, j) in truth.items() if kind in (kd, "all")]
        eligible = [k for k, j in items if j >= 0.8]
        recall = np.mean([k in gone for k in eligible]) if eligible else float("nan")
        print(f"{kind:<12} {len(items):>6} {len(eligible):>7} {recall:>7.4f}")
    below = [k for k, (_, _, j) in truth.items() if j < 0.7]
    print(
        f"injected with true J < 0.7: {len(below)}, of which removed: {sum(k in gone for k in below)}"
    )


if __name__ == "__main__":
    main()
