"""Dedup at scale: N documents made of real paragraphs plus near-duplicate copies.

    python benchmarks/scale.py --n 1000000 [--memory 1GB] [--workers 2] [--keep-data]
        [--corpus ../shared/data/dev-corpus.jsonl.gz]

Builds N documents, each 2-4 paragraphs (of 20+ words) drawn from ../shared/data/dev-corpus, of
which ~10% are copies of a document of the same shard with 0-3% of their words dropped (near
duplicates; a few exact), written as Parquet shards of 100k documents to a scratch folder
(--scratch, default a temporary folder under /tmp, deleted afterwards). Then runs
`datasel dedup` on it in a child process and prints docs/s, MB/s, the peak RSS of every process
(the driver and each worker: its VmHWM, read from /proc every 0.2 s), the scratch bytes per
document (the output folder's work files at their largest, polled every 2 s), kept/removed,
and a projection for 1B documents on a cluster.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

CORPUS = Path(__file__).parents[1] / "../shared/data/dev-corpus.jsonl.gz"
SHARD_DOCS = 100_000
COPY_SHARE = 0.10


def paragraphs(corpus: Path) -> pa.Array:
    out = []
    with gzip.open(corpus, "rt") as f:
        for line in f:
            for par in json.loads(line)["text"].split("\n\n"):
                par = " ".join(par.split())
                if len(par.split(" ")) >= 20:
                    out.append(par)
    return pa.array(out, pa.string())


def make_shard(pars: pa.Array, n: int, first_id: int, rng: np.random.Generator) -> pa.Table:
    """`n` documents: originals of 2-4 random paragraphs, then ~10% copies of them with some
    words dropped, shuffled together."""
    n_copy = int(n * COPY_SHARE)
    n_orig = n - n_copy
    k = rng.integers(2, 5, size=n_orig)
    offsets = np.concatenate([[0], np.cumsum(k)]).astype(np.int32)
    picks = pars.take(pa.array(rng.integers(0, len(pars), size=int(offsets[-1]))))
    orig = pc.binary_join(pa.ListArray.from_arrays(pa.array(offsets), picks), "\n\n")
    src = orig.take(pa.array(rng.integers(0, n_orig, size=n_copy)))
    words = pc.split_pattern(src, " ")
    flat = words.flatten()
    doc = np.repeat(np.arange(n_copy), np.diff(words.offsets.to_numpy()))
    rate = rng.uniform(0.0, 0.03, size=n_copy)
    rate[rng.random(n_copy) < 0.05] = 0.0  # exact copies
    keep = rng.random(len(flat)) >= rate[doc]
    counts = np.bincount(doc[keep], minlength=n_copy)
    new_offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
    copies = pc.binary_join(
        pa.ListArray.from_arrays(pa.array(new_offsets), flat.filter(pa.array(keep))), " "
    )
    texts = pa.concat_arrays([orig, copies]).take(pa.array(rng.permutation(n)))
    ids = pa.array([f"d{first_id + i:09d}" for i in range(n)], pa.string())
    return pa.table({"id": ids, "text": texts})


def build(n: int, folder: Path, corpus: Path, seed: int = 0) -> tuple[int, int]:
    pars = paragraphs(corpus)
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    text_bytes = 0
    for s, lo in enumerate(range(0, n, SHARD_DOCS)):
        table = make_shard(pars, min(SHARD_DOCS, n - lo), lo, rng)
        text_bytes += pc.sum(pc.binary_length(table.column("text"))).as_py()
        pq.write_table(table, folder / f"part-{s:05d}.parquet", row_group_size=20_000)
    return n, text_bytes


def scratch_bytes(out: Path) -> int:
    """Bytes under `out` but for the output itself (its shards and `_removed/`)."""
    total = 0
    for root, _, files in os.walk(out):
        if Path(root) in (out, out / "_removed"):
            continue
        for f in files:
            try:
                total += os.stat(os.path.join(root, f)).st_size
            except FileNotFoundError:
                pass
    return total


def peak_rss_mb(pid: int) -> float:
    """The process's own peak RSS (VmHWM) so far, in MB; 0 once it has gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        return int(status.split("VmHWM:")[1].split()[0]) / 1024
    except (OSError, IndexError):
        return 0.0


def run_dedup(src: Path, out: Path, workers: int, memory: str | None) -> dict:
    run = "import sys; from datasel.cli import main; sys.argv[0] = 'datasel'; main()"
    cmd = [sys.executable, "-c", run, "dedup", str(src), str(out), "--quiet"]
    cmd += ["--workers", str(workers)]
    if memory:
        cmd += ["--memory", memory]
    t0 = time.time()
    proc = subprocess.Popen(cmd)
    peaks: dict[int, tuple[str, float]] = {}  # pid -> (role, peak RSS MB)
    peak_disk, last_disk = 0, 0.0
    root = psutil.Process(proc.pid)
    while proc.poll() is None:
        try:
            procs = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            procs = []
        for p in procs:
            role = "driver" if p.pid == proc.pid else "worker"
            peaks[p.pid] = (role, max(peak_rss_mb(p.pid), peaks.get(p.pid, (role, 0.0))[1]))
        if time.time() - last_disk > 2.0:
            peak_disk, last_disk = max(peak_disk, scratch_bytes(out)), time.time()
        time.sleep(0.2)
    seconds = time.time() - t0
    if proc.returncode:
        raise SystemExit(f"dedup failed with exit code {proc.returncode}")
    manifest = json.loads((out / "_manifest.json").read_text())
    return {
        "seconds": seconds,
        "peaks": peaks,
        "scratch_bytes": peak_disk,
        "manifest": manifest,
    }


# what the incremental index keeps per kept document: text hash, band keys, signature, id
INDEX_BYTES_PER_DOC = 8 + 32 * 8 + 256 * 4 + 16


def project(per_core: float, scratch_per_doc: float, kept_share: float) -> None:
    """A projection (not a measurement) for 1B documents on 32 nodes x 32 cores, assuming
    this machine's per-core rate and linear scaling of every phase."""
    docs, cores = 1e9, 32 * 32
    minutes = docs / (per_core * cores) / 60
    print("  projection for 1B documents on 32 nodes x 32 cores (from the per-core rate here):")
    print(f"    {minutes:.0f} min at {per_core:,.0f} docs/s per core")
    print(f"    scratch (map output + key runs): {docs * scratch_per_doc / 1e12:.1f} TB in all")
    print(
        f"    index of the kept documents: {docs * kept_share * INDEX_BYTES_PER_DOC / 1e12:.1f} TB"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=1_000_000, help="documents")
    ap.add_argument("--corpus", type=Path, default=CORPUS)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--memory", default=None, help="dedup --memory (default: dedup's)")
    ap.add_argument("--scratch", type=Path, default=None, help="folder for data and output")
    ap.add_argument("--keep-data", action="store_true", help="keep the scratch folder")
    args = ap.parse_args()
    scratch = args.scratch or Path(tempfile.mkdtemp(prefix="datasel-scale-"))
    scratch.mkdir(parents=True, exist_ok=True)
    try:
        t0 = time.time()
        n, text_bytes = build(args.n, scratch / "data", args.corpus)
        print(
            f"built {n:,} documents, {text_bytes / 1e9:.2f} GB of text in {time.time() - t0:.0f} s"
        )
        r = run_dedup(scratch / "data", scratch / "out", args.workers, args.memory)
        m = r["manifest"]
        rows = {k: m.get(k) for k in ("rows_in", "kept", "removed_total", "removed")}
        s = r["seconds"]
        print(f"dedup of {n:,} documents ({args.workers} workers): {s:.1f} s")
        print(f"  {n / s:,.0f} docs/s, {text_bytes / 1e6 / s:.1f} MB/s")
        drivers = [mb for role, mb in r["peaks"].values() if role == "driver"]
        workers = sorted((mb for role, mb in r["peaks"].values() if role == "worker"), reverse=True)
        print(f"  peak RSS driver: {max(drivers):,.0f} MB")
        print(
            f"  peak RSS workers ({len(workers)} processes): "
            + ", ".join(f"{mb:,.0f}" for mb in workers[:8])
            + " MB"
        )
        print(f"  scratch at its peak: {r['scratch_bytes'] / n:,.0f} bytes per document")
        print(f"  rows: {json.dumps(rows)}")
        project(n / s / args.workers, r["scratch_bytes"] / n, m["kept"] / n)
    finally:
        if not args.keep_data:
            shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
