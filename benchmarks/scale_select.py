"""Global selections at scale: `filter` top rules and `shift dsir --size` on N rows, peak RSS of
every process (issue 17's bar: none above 2 GB at 10M rows).

    python benchmarks/scale_select.py --n 10000000 [--workers 2] [--only top,fraction,chars,dsir]

Builds N rows as Parquet shards of 100k (id; text: up to 200 characters of a random paragraph
of ../shared/data/dev-corpus, 40-200, so --top-chars differs from --top; `score` uniform in
[0, 1) rounded to 3 decimals, so ties are many) and a DSIR target (300 python_docs documents) in
a scratch folder (--scratch, default a temporary folder, deleted afterwards). Then runs, each in a child
process watched as scale_gotd.py does (VmHWM every 0.2 s):

    filter --top score=N*0.3 | --top-fraction score=0.3 | --top-chars score=0.3
    shift dsir --target T --size N/100

and prints per run the wall time, docs/s, the peak RSS of the driver and of the largest worker,
kept / removed, and whether every process stayed under 2,048 MB.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from scale import CORPUS, SHARD_DOCS, paragraphs
from scale_gotd import run_watched

BAR_MB = 2048


def build(n: int, folder: Path, corpus: Path, seed: int = 0) -> Path:
    """The pool's shards under `folder`/pool and a DSIR target file; returns the target's path."""
    texts = pc.utf8_slice_codeunits(paragraphs(corpus), 0, 200)
    rng = np.random.default_rng(seed)
    (folder / "pool").mkdir(parents=True, exist_ok=True)
    for s, lo in enumerate(range(0, n, SHARD_DOCS)):
        k = min(SHARD_DOCS, n - lo)
        table = pa.table(
            {
                "id": pa.array([f"r{lo + i:09d}" for i in range(k)], pa.string()),
                "text": texts.take(pa.array(rng.integers(0, len(texts), size=k))),
                "score": pa.array(np.round(rng.random(k), 3)),
            }
        )
        pq.write_table(table, folder / "pool" / f"part-{s:05d}.parquet", row_group_size=20_000)
    target = folder / "target.jsonl"
    with gzip.open(corpus, "rt") as f, open(target, "w") as out:
        docs = (json.loads(line) for line in f)
        python = [d["text"] for d in docs if d.get("domain") == "python_docs"][:300]
        for text in python:
            out.write(json.dumps({"text": text}) + "\n")
    return target


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=1_000_000, help="pool rows")
    ap.add_argument("--corpus", type=Path, default=CORPUS)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--only", default="top,fraction,chars,dsir", help="runs, comma-separated")
    ap.add_argument("--scratch", type=Path, default=None, help="folder for data and output")
    ap.add_argument("--keep-data", action="store_true", help="keep the scratch folder")
    args = ap.parse_args()
    scratch = args.scratch or Path(tempfile.mkdtemp(prefix="datasel-scale-select-"))
    scratch.mkdir(parents=True, exist_ok=True)
    pool, out = str(scratch / "pool"), str(scratch / "out")
    runs = {
        "top": ["filter", pool, out, "--top", f"score={int(args.n * 0.3)}"],
        "fraction": ["filter", pool, out, "--top-fraction", "score=0.3"],
        "chars": ["filter", pool, out, "--top-chars", "score=0.3"],
        "dsir": ["shift", "dsir", pool, out, "--size", str(max(1, args.n // 100))],
    }
    unknown = set(args.only.split(",")) - set(runs)
    if unknown:
        ap.error(f"unknown runs {sorted(unknown)}; choose from {sorted(runs)}")
    try:
        t0 = time.time()
        target = scratch / "target.jsonl"
        if not (scratch / "pool").exists():
            target = build(args.n, scratch, args.corpus)
            print(f"built {args.n:,} rows in {time.time() - t0:.0f} s")
        runs["dsir"] += ["--target", str(target)]
        print(
            f"{'run':10s} {'wall s':>8s} {'docs/s':>9s} {'driver MB':>10s} {'worker MB':>10s} "
            f"{'kept':>11s} {'removed':>11s}  ≤ {BAR_MB:,} MB"
        )
        for name in args.only.split(","):
            cmd = runs[name] + ["--workers", str(args.workers), "--quiet", "--overwrite"]
            seconds, peaks = run_watched(cmd, scratch / "out")
            m = json.loads((scratch / "out" / "_manifest.json").read_text())
            driver = max(mb for role, mb in peaks.values() if role == "driver")
            worker = max((mb for role, mb in peaks.values() if role == "worker"), default=0.0)
            ok = "yes" if max(driver, worker) <= BAR_MB else "NO"
            print(
                f"{name:10s} {seconds:8.1f} {args.n / seconds:9,.0f} {driver:10,.0f} "
                f"{worker:10,.0f} {m['kept']:11,d} {m['removed_total']:11,d}  {ok}",
                flush=True,
            )
    finally:
        if not args.keep_data:
            shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
