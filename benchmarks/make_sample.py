"""Rebuild datasel/data/sample.parquet from ../shared/data/dev-corpus.jsonl.gz (permissive licences only)."""

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

src = Path(sys.argv[1] if len(sys.argv) > 1 else "../shared/data/dev-corpus.jsonl.gz")
rows = [json.loads(line) for line in gzip.open(src, "rt")]
rng = random.Random(0)
picked = []
for domain, n in QUOTA.items():
    docs = [r for r in rows if r["domain"] == domain]
    picked += rng.sample(docs, min(n, len(docs)))
picked.sort(key=lambda r: r["id"])
table = pa.Table.from_pylist(picked).select(
    ["id", "domain", "subdomain", "source", "license", "text"]
)
out = Path(__file__).resolve().parents[1] / "datasel" / "data" / "sample.parquet"
pq.write_table(table, out, compression="zstd", row_group_size=1000)
print(f"{out}: {table.num_rows} rows, {out.stat().st_size / 1e6:.1f} MB")
