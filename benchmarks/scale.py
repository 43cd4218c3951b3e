"""Dedup at scale: N documents made of real paragraphs plus near-duplicate copies.

    python benchmarks/scale.py --n 1000000 [--memory 1GB] [--workers 2] [--keep-data]
        [--corpus ../shared/data/dev-corpus.jsonl.gz] [--json r1m.json] [--compare r.json]

Builds N documents, each 2-4 paragraphs (of 20+ words) drawn from ../shared/data/dev-corpus, of
which ~10% are copies of a document of the same shard with 0-3% of their words dropped (near
duplicates; a few exact), written as Parquet shards of 100k documents to a scratch folder
(--scratch, default a temporary folder under /tmp, deleted afterwards). Then runs
`datasel dedup` on it in a child process and prints docs/s, MB/s, the peak RSS of every process
(the driver and each worker: its VmHWM, read from /proc every 0.2 s), the scratch bytes per
document (the output folder's work files at their largest, polled every 2 s), kept/removed;
then the same per phase (hash/map, scatter, group, verify, union-find, keeper ids, decide,
apply; their times from the manifest's `phases`, each process's peak RSS sampled every 0.2 s
and reset after each sample), and a projection for 1B documents on a Ray cluster from the
per-core rate of each phase. `--json` saves the per-phase figures; `--compare` a smaller run's
saved figures prints, per phase, how much each process's peak grew per added document.
With `--scratch DIR --keep-data` the built documents are kept and reused by the next run.
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


def peak_rss_mb(pid: int, reset: bool = False) -> float:
    """The process's peak RSS (VmHWM) in MB since it started, or since the last `reset` (which
    writes 5 to /proc/PID/clear_refs, Linux's reset of the peak); 0 once it has gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        mb = int(status.split("VmHWM:")[1].split()[0]) / 1024
        if reset:
            Path(f"/proc/{pid}/clear_refs").write_text("5")
        return mb
    except (OSError, IndexError):
        return 0.0


def run_dedup(src: Path, out: Path, workers: int, memory: str | None) -> dict:
    """Run `datasel dedup` in a child process, sampling every 0.2 s each process's peak RSS
    over the last interval (reset after each read) and every 2 s the scratch bytes."""
    run = "import sys; from datasel.cli import main; sys.argv[0] = 'datasel'; main()"
    cmd = [sys.executable, "-c", run, "dedup", str(src), str(out), "--quiet"]
    cmd += ["--workers", str(workers)]
    if memory:
        cmd += ["--memory", memory]
    t0 = time.time()
    proc = subprocess.Popen(cmd)
    peaks: dict[int, tuple[str, float]] = {}  # pid -> (role, peak RSS MB)
    samples: list[tuple[float, float, str, float]] = []  # (from, to, role, peak MB in between)
    disk: list[tuple[float, int]] = []  # (time, scratch bytes)
    root = psutil.Process(proc.pid)
    last, last_disk = time.time(), 0.0
    while proc.poll() is None:
        try:
            procs = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            procs = []
        now = time.time()
        for p in procs:
            role = "driver" if p.pid == proc.pid else "worker"
            mb = peak_rss_mb(p.pid, reset=True)
            samples.append((last, now, role, mb))
            peaks[p.pid] = (role, max(mb, peaks.get(p.pid, (role, 0.0))[1]))
        last = now
        if now - last_disk > 2.0:
            disk.append((now, scratch_bytes(out)))
            last_disk = now
        time.sleep(0.2)
    seconds = time.time() - t0
    if proc.returncode:
        raise SystemExit(f"dedup failed with exit code {proc.returncode}")
    manifest = json.loads((out / "_manifest.json").read_text())
    return {
        "seconds": seconds,
        "peaks": peaks,
        "samples": samples,
        "disk": disk,
        "scratch_bytes": max([b for _, b in disk], default=0),
        "manifest": manifest,
    }


# the phases of a dedup run, in order, as its manifest names them (Context.phase); "select"
# holds dedup's own parts, its remainder (reading the plan, sizes) is shown as "select, rest"
PHASES = [
    ("map", "hash/map: MinHash signatures, band keys (workers)"),
    ("dedup:scatter", "scatter: (key, doc) records into key-range runs (workers)"),
    ("dedup:group", "group: candidate pairs per key range (workers)"),
    ("dedup:verify", "verify: merge pair runs, Jaccard of each pair once (workers)"),
    ("dedup:union-find", "union-find over the verified edges (driver)"),
    ("dedup:keepers", "keepers per cluster, re-verified against them (workers)"),
    ("dedup:keeper-ids", "removed rows by unit, keepers' ids (workers)"),
    ("decide", "each unit's decision (workers)"),
    ("apply", "apply: write kept and removed shards (workers)"),
]


def phase_table(r: dict, n: int) -> list[dict]:
    """Per phase: wall seconds, docs/s, the peak RSS of the driver and of any worker over the
    phase (0.2 s samples; a sample spanning two phases counts in both) and the scratch bytes
    per document at their largest during it."""
    spans = {p["phase"]: (p["start"], p["start"] + p["seconds"]) for p in r["manifest"]["phases"]}
    rows = []
    for name, what in PHASES:
        if name not in spans:
            continue
        lo, hi = spans[name]
        seen = [(role, mb) for a, b, role, mb in r["samples"] if b >= lo and a <= hi]
        disk = [b for t, b in r["disk"] if lo <= t <= hi + 2.0]
        rows.append(
            {
                "phase": name,
                "what": what,
                "seconds": hi - lo,
                "driver_mb": max([mb for role, mb in seen if role == "driver"], default=0.0),
                "worker_mb": max([mb for role, mb in seen if role == "worker"], default=0.0),
                "scratch_per_doc": max(disk, default=0) / n,
            }
        )
    if "select" in spans:
        inner = sum(row["seconds"] for row in rows if row["phase"].startswith("dedup:"))
        rest = spans["select"][1] - spans["select"][0] - inner
        rows.append({"phase": "select, rest", "what": "plan, sizes (driver)", "seconds": rest})
    return rows


def print_phases(rows: list[dict], n: int) -> None:
    print("  per phase (seconds, docs/s, peak RSS driver / largest worker, scratch B/doc):")
    for row in rows:
        rate = n / row["seconds"] if row["seconds"] > 0 else float("inf")
        mem = (
            f"{row['driver_mb']:6,.0f} / {row['worker_mb']:6,.0f} MB"
            f"  {row['scratch_per_doc']:7,.0f}"
            if "driver_mb" in row
            else ""
        )
        print(f"    {row['phase']:18s} {row['seconds']:8.1f} s {rate:12,.0f} /s  {mem}")


def compare(rows: list[dict], n: int, seconds: float, other: dict) -> None:
    """Per phase, what grows with the documents between `other` (a smaller run's --json) and
    this run: peak RSS in bytes per added document, for the driver and the largest worker
    (about 0 where a phase holds a bounded slice), and the ratio of docs/s."""
    m = other["n"]
    before = {row["phase"]: row for row in other["phases"]}
    print(
        f"  against {m:,} documents: docs/s {n / seconds:,.0f} vs {m / other['seconds']:,.0f} "
        f"({n / seconds / (m / other['seconds']):.2f} x); per phase, peak RSS growth in bytes "
        "per added document (driver, largest worker) and docs/s ratio:"
    )
    for row in rows:
        old = before.get(row["phase"])
        if not old or "driver_mb" not in row:
            continue
        grow = [(row[k] - old[k]) * 2**20 / (n - m) for k in ("driver_mb", "worker_mb")]
        ratio = (n / row["seconds"]) / (m / old["seconds"]) if old["seconds"] > 0 else 0
        print(f"    {row['phase']:18s} {grow[0]:7.1f} B {grow[1]:7.1f} B   {ratio:5.2f} x")


# what the incremental index keeps per kept document: text hash, band keys, signature, id
INDEX_BYTES_PER_DOC = 8 + 32 * 8 + 256 * 4 + 16
# what scatter writes per document with words: a (key, doc) record, 8 + 4 bytes (a uint32
# document number up to 4.29B documents) for the text hash and for each of the 32 bands
SHUFFLE_BYTES_PER_DOC = (8 + 4) * (1 + 32)


def project(rows: list[dict], n: int, workers: int, kept_share: float, removed: int) -> None:
    """A projection (not a measurement) for 1B documents on 32 nodes x 32 cores: each worker
    phase at this machine's per-core rate, spread over every core; the driver's phases (union-
    find over the verified edges, the rest of select) at their rate here, on one core, scaled
    by the documents (union-find by the duplicates, a share assumed the same as here)."""
    docs, cores = 1e9, 32 * 32
    scale = docs / n
    total = 0.0
    print("  projection for 1B documents on 32 nodes x 32 cores (from the rates measured here):")
    for row in rows:
        on_driver = row["phase"] in ("dedup:union-find", "select, rest")
        seconds = row["seconds"] * scale * (1 if on_driver else workers / cores)
        total += seconds
        per_core = n / (row["seconds"] * (1 if on_driver else workers))
        where = "driver, 1 core" if on_driver else f"{cores} cores"
        print(
            f"    {row['phase']:18s} {seconds / 60:7.1f} min  ({per_core:,.0f} docs/s per core, "
            f"{where})"
        )
    print(f"    total {total / 60:.0f} min")
    uf = next((row for row in rows if row["phase"] == "dedup:union-find"), None)
    if uf and removed:
        # the driver's peak before select (its imports, the plan) is what does not grow
        base = next(row["driver_mb"] for row in rows if row["phase"] == "map")
        per_doc = max(0.0, uf["driver_mb"] - base) * 2**20 / removed
        print(
            f"    driver at union-find: {uf['driver_mb']:,.0f} MB here, {per_doc:,.0f} B per "
            f"removed document over its {base:,.0f} MB before select -> "
            f"{base / 1e3 + per_doc * removed * scale / 1e9:,.1f} GB for the "
            f"{removed * scale / 1e6:,.0f}M removed at 1B (the same share removed)"
        )
    print(
        f"    shuffle (scatter's key records): {docs * SHUFFLE_BYTES_PER_DOC / 1e12:.2f} TB "
        "through shared storage"
    )
    staged = max((row.get("scratch_per_doc", 0) for row in rows), default=0)
    print(f"    scratch at its peak: {docs * staged / 1e12:.1f} TB")
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
    ap.add_argument("--json", type=Path, default=None, help="write the per-phase figures here")
    ap.add_argument(
        "--compare", type=Path, default=None, help="a smaller run's --json: growth per document"
    )
    args = ap.parse_args()
    scratch = args.scratch or Path(tempfile.mkdtemp(prefix="datasel-scale-"))
    scratch.mkdir(parents=True, exist_ok=True)
    try:
        t0 = time.time()
        built = scratch / "data.json"  # a kept folder's data is reused
        if built.exists() and json.loads(built.read_text())["n"] == args.n:
            n, text_bytes = args.n, json.loads(built.read_text())["text_bytes"]
        else:
            shutil.rmtree(scratch / "data", ignore_errors=True)
            n, text_bytes = build(args.n, scratch / "data", args.corpus)
            built.write_text(json.dumps({"n": n, "text_bytes": text_bytes}))
        print(
            f"built {n:,} documents, {text_bytes / 1e9:.2f} GB of text in {time.time() - t0:.0f} s"
        )
        shutil.rmtree(scratch / "out", ignore_errors=True)
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
        phases = phase_table(r, n)
        print_phases(phases, n)
        project(phases, n, args.workers, m["kept"] / n, m["removed_total"])
        if args.compare:
            compare(phases, n, s, json.loads(args.compare.read_text()))
        if args.json:
            args.json.write_text(json.dumps({"n": n, "seconds": s, "phases": phases}, indent=1))
    finally:
        if not args.keep_data:
            shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
