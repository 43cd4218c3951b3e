"""Rebuild datasel/data/sample.parquet and target-python-docs.parquet (the quickstart's target for
`shift dsir`: Python documentation pages not in the sample) from ../shared/data/dev-corpus.jsonl.gz
(permissive licences only)."""

import gzip
import json
import random
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

QUOTA = {  # domain -> documents; only public-domain, PSF-2.0, MIT and CC-BY-4.0 sources
    "python_docs": 600,
    "math_word_problems": 600,
    "movie_reviews": 300,
    "literature_shakespeare": 300,
    "bible_kjv": 250,
    "literature_milton": 100,
    "us_speeches": 100,
}
TARGET = "python_docs"  # domain of the quickstart's target set

src = Path(sys.argv[1] if len(sys.argv) > 1 else "../shared/data/dev-corpus.jsonl.gz")
rows = [json.loads(line) for line in gzip.open(src, "rt")]
rng = random.Random(0)
picked = []
for domain, n in QUOTA.items():
    docs = [r for r in rows if r["domain"] == domain]
    picked += rng.sample(docs, min(n, len(docs)))
picked.sort(key=lambda r: r["id"])
in_sample = {r["id"] for r in picked}
target = rng.sample([r for r in rows if r["domain"] == TARGET and r["id"] not in in_sample], 40)
target.sort(key=lambda r: r["id"])
data = Path(__file__).resolve().parents[1] / "datasel" / "data"
for name, docs in (("sample", picked), (f"target-{TARGET.replace('_', '-')}", target)):
    table = pa.Table.from_pylist(docs).select(
        ["id", "domain", "subdomain", "source", "license", "text"]
    )
    out = data / f"{name}.parquet"
    pq.write_table(table, out, compression="zstd", row_group_size=1000)
    print(f"{out}: {table.num_rows} rows, {out.stat().st_size / 1e6:.2f} MB")
