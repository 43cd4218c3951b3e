"""Dedup speed: datasel (1 and 2 workers) against datasketch and datatrove on the same corpus.

    python benchmarks/dedup_speed.py [--corpus ../shared/data/dev-corpus.jsonl.gz] [--docs N]
    python benchmarks/dedup_speed.py --copies 4 --peers none   # a 4x bigger corpus, datasel only

Times are the best of --repeats interleaved runs (3; datatrove 1). Every tool does the same work
end to end: read the corpus, normalise, word 5-gram shingles, MinHash with 256 permutations, LSH
for Jaccard 0.8, cluster, and (datasel, datatrove) write the kept documents. The corpus is written
as 4 Parquet shards and as 4 JSONL shards: datasel runs on both (1 and 2 workers), datasketch reads
the Parquet, datatrove the JSONL, and each peer is compared with datasel on the same format.
Each run is a separate process; peak memory is that of its largest process (main or worker).
--copies K appends K-1 re-crawled copies of the corpus (each drops ~5% of the words, so they are
near duplicates of the original, as in a dump that repeats pages), for timings at a larger size.
Needs the `bench` extra for the peers (datasketch; datatrove[processing]).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import unicodedata
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

NUM_PERM, THRESHOLD, NGRAM = 256, 0.8, 5
WORD = re.compile(r"[0-9a-z\x80-\U0010ffff]+")


def prepare(
    corpus: Path, docs: int | None, shards: int, tmp: Path, copies: int = 1
) -> tuple[Path, Path, int, float]:
    rows = [json.loads(line) for line in gzip.open(corpus, "rt")]
    rows = rows[:docs] if docs else rows
    rows = [{"id": r["id"], "text": r["text"]} for r in rows]
    rng = random.Random(0)
    rows += [
        {
            "id": f"{r['id']}-copy{c}",
            "text": " ".join(w for w in r["text"].split(" ") if rng.random() > 0.05),
        }
        for c in range(1, copies)
        for r in rows
    ]
    table = pa.Table.from_pylist(rows)
    pq_dir, jl_dir = tmp / "parquet", tmp / "jsonl"
    pq_dir.mkdir()
    jl_dir.mkdir()
    n = len(rows)
    for i in range(shards):
        lo, hi = i * n // shards, (i + 1) * n // shards
        pq.write_table(table.slice(lo, hi - lo), pq_dir / f"shard-{i}.parquet")
        with open(jl_dir / f"shard-{i}.jsonl", "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows[lo:hi])
    mb = sum(len(r["text"].encode()) for r in rows) / 1e6
    return pq_dir, jl_dir, n, mb


def run_datasel(src: Path, out: Path, workers: int) -> None:
    import datasel

    datasel.run(
        datasel.Dedup(threshold=THRESHOLD, num_perm=NUM_PERM), src, out, workers=workers, quiet=True
    )


def shingles(text: str) -> list[bytes]:
    words = WORD.findall(unicodedata.normalize("NFKC", text).lower())
    if len(words) < NGRAM:
        return [" ".join(words).encode()] if words else []
    return [" ".join(words[i : i + NGRAM]).encode() for i in range(len(words) - NGRAM + 1)]


def run_datasketch(src: Path, out: Path, workers: int) -> None:
    from datasketch import MinHash, MinHashLSH

    lsh = MinHashLSH(threshold=THRESHOLD, num_perm=NUM_PERM)
    keep = []
    for path in sorted(src.glob("*.parquet")):
        table = pq.read_table(path)
        for doc_id, text in zip(
            table.column("id").to_pylist(), table.column("text").to_pylist(), strict=True
        ):
            m = MinHash(num_perm=NUM_PERM)
            m.update_batch(shingles(text))
            if lsh.query(m):
                continue
            lsh.insert(doc_id, m)
            keep.append(doc_id)
    out.mkdir(parents=True, exist_ok=True)
    (out / "kept.txt").write_text("\n".join(keep))


def run_datatrove(src: Path, out: Path, workers: int) -> None:
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup.minhash import (
        MinhashConfig,
        MinhashDedupBuckets,
        MinhashDedupCluster,
        MinhashDedupFilter,
        MinhashDedupSignature,
    )
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.writers import JsonlWriter
    from datatrove.utils.hashing import HashConfig

    cfg = MinhashConfig(
        hash_config=HashConfig(precision=64),
        n_grams=NGRAM,
        num_buckets=32,
        hashes_per_bucket=8,  # 32 x 8 = 256 permutations, as datasel's choice for 0.8
    )
    tasks = len(list(src.glob("*.jsonl")))
    sig, buckets, clusters = out / "sig", out / "buckets", out / "clusters"
    common = {"logging_dir": str(out / "logs"), "skip_completed": False}
    LocalPipelineExecutor(
        [JsonlReader(str(src)), MinhashDedupSignature(output_folder=str(sig), config=cfg)],
        tasks=tasks,
        workers=workers,
        **common,
    ).run()
    LocalPipelineExecutor(
        [MinhashDedupBuckets(input_folder=str(sig), output_folder=str(buckets), config=cfg)],
        tasks=cfg.num_buckets,
        workers=workers,
        **common,
    ).run()
    LocalPipelineExecutor(
        [MinhashDedupCluster(input_folder=str(buckets), output_folder=str(clusters), config=cfg)],
        tasks=1,
        **common,
    ).run()
    LocalPipelineExecutor(
        [
            JsonlReader(str(src)),
            MinhashDedupFilter(input_folder=str(clusters)),
            JsonlWriter(str(out / "kept")),
        ],
        tasks=tasks,
        workers=workers,
        **common,
    ).run()


WARM = {
    "datasel": "datasel",
    "datasketch": "datasketch",
    "datatrove": "datatrove.pipeline.dedup.minhash",
}


def measure(tool: str, src: Path, out: Path, workers: int) -> tuple[float, float]:
    """Run one tool in a child process; return (seconds of its work, peak RSS MB of its largest
    process: the main one or a worker, which share the pages they were forked with).

    The seconds are timed inside the child around the tool's work (read to write), so the
    interpreter's start and imports (~0.3 s, the same for every tool) are not counted."""
    code = (
        f"import sys, time; sys.path.insert(0, {str(Path(__file__).parent)!r}); import dedup_speed as b, memory; "
        f"import {WARM[tool]}; t0 = time.perf_counter(); b.run_{tool}(b.Path({str(src)!r}), b.Path({str(out)!r}), {workers}); "
        f"print(time.perf_counter() - t0, memory.peak_rss_mb())"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{tool} failed:\n{proc.stderr[-2000:]}")
    seconds, peak = proc.stdout.split()[-2:]
    return float(seconds), float(peak)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--corpus",
        type=Path,
        default=Path(__file__).parents[1] / "../shared/data/dev-corpus.jsonl.gz",
    )
    ap.add_argument("--docs", type=int, default=None, help="first N documents only")
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--copies", type=int, default=1, help="the corpus and K-1 near-copies of it")
    ap.add_argument("--peers", default="datasketch,datatrove", help="comma-separated, or none")
    ap.add_argument(
        "--repeats", type=int, default=3, help="best of N runs (datatrove: 1, it is slow)"
    )
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="dedup-bench-"))
    try:
        pq_dir, jl_dir, n, mb = prepare(args.corpus, args.docs, args.shards, tmp, args.copies)
        print(
            f"corpus: {n:,} documents, {mb:.1f} MB of text, {args.shards} shards; {os.cpu_count()} cores"
        )
        src = {"parquet": pq_dir, "jsonl": jl_dir}
        runs = [("datasel", fmt, w) for fmt in ("parquet", "jsonl") for w in (1, 2)]
        peers = [] if args.peers == "none" else list(filter(None, args.peers.split(",")))
        runs += [(peer, "jsonl" if peer == "datatrove" else "parquet", 1) for peer in peers]
        # repeats are interleaved (each configuration once, then again), so that a slow spell
        # of a shared machine does not land on one configuration only
        best: dict[tuple[str, str, int], tuple[float, float]] = {}
        skipped: set[tuple[str, str, int]] = set()
        for r in range(args.repeats):
            for run in runs:
                tool, fmt, workers = run
                if run in skipped or (tool == "datatrove" and run in best):
                    continue
                try:
                    sec, rss = measure(
                        tool, src[fmt], tmp / f"out-{tool}-{fmt}-{workers}-{r}", workers
                    )
                except (SystemExit, ImportError) as e:
                    print(f"{tool}: skipped ({str(e).splitlines()[-1] if str(e) else e})")
                    skipped.add(run)
                    continue
                best[run] = min(best.get(run, (sec, rss)), (sec, rss))
        for (tool, fmt, workers), (sec, rss) in best.items():
            print(
                f"{tool:<11} {fmt:<8} workers={workers}  {sec:7.2f} s  {n / sec:9,.0f} docs/s  {mb / sec:6.1f} MB/s  peak {rss:6.0f} MB"
            )
        for fmt in src:
            one, two = best.get(("datasel", fmt, 1)), best.get(("datasel", fmt, 2))
            if one and two:
                print(f"datasel on {fmt}: 2 workers vs 1: {one[0] / two[0]:.2f}x faster")
        for (tool, fmt, _), (sec, _) in best.items():
            base = best.get(("datasel", fmt, 1))
            if base and tool != "datasel":
                print(f"datasel vs {tool} (both on {fmt}, 1 worker): {sec / base[0]:.2f}x faster")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
