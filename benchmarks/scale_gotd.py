"""GOT-D at scale: `shift gotd --size` on N rows of precomputed vectors, peak RSS of every process.

    python benchmarks/scale_gotd.py --n 10000000 [--dim 16] [--workers 2] [--ot-sample 200000]

Builds N rows as Parquet shards of 100k (id; text: the first 80 characters of a random
paragraph of ../shared/data/dev-corpus; `embedding`: `dim` float32 around one of 20 random
centres, 3% of rows around the target's) and a target of 300 vectors around that centre, in a
scratch folder (--scratch, default a temporary folder, deleted afterwards). Then runs
`datasel shift gotd --model column --size N/100` in a child process and prints the wall time,
the peak RSS of the driver and of each worker (VmHWM from /proc every 0.2 s, as scale.py), the
share of the selection from the target's cluster, and the step's stats. Vectors from the column
keep 10M rows feasible on 2 cores; select's memory depends on the rows and --ot-sample, not on
where the vectors came from.
"""

from __future__ import annotations

import argparse
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
from scale import CORPUS, SHARD_DOCS, paragraphs, peak_rss_mb

CENTRES = 20
TARGET_SHARE = 0.03


def vectors(rng: np.random.Generator, centres: np.ndarray, n: int, near: float):
    """`n` vectors, a `near` share around centre 0 (the target's), the rest around the others;
    and whether each is around centre 0."""
    which = np.where(rng.random(n) < near, 0, rng.integers(1, len(centres), size=n))
    v = centres[which] + 0.5 * rng.normal(size=(n, centres.shape[1]))
    return v.astype(np.float32), which == 0


def embedding(v: np.ndarray) -> pa.FixedSizeListArray:
    return pa.FixedSizeListArray.from_arrays(pa.array(v.reshape(-1)), v.shape[1])


def build(n: int, dim: int, folder: Path, corpus: Path, seed: int = 0) -> Path:
    """The pool's shards under `folder`/pool and the target's file; returns the target's path."""
    texts = pc.utf8_slice_codeunits(paragraphs(corpus), 0, 80)
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(CENTRES, dim)) * 2
    (folder / "pool").mkdir(parents=True, exist_ok=True)
    for s, lo in enumerate(range(0, n, SHARD_DOCS)):
        k = min(SHARD_DOCS, n - lo)
        v, near = vectors(rng, centres, k, TARGET_SHARE)
        table = pa.table(
            {
                "id": pa.array([f"r{lo + i:09d}" for i in range(k)], pa.string()),
                "text": texts.take(pa.array(rng.integers(0, len(texts), size=k))),
                "embedding": embedding(v),
                "near": pa.array(near),
            }
        )
        pq.write_table(table, folder / "pool" / f"part-{s:05d}.parquet", row_group_size=20_000)
    target = folder / "target.parquet"
    pq.write_table(pa.table({"embedding": embedding(vectors(rng, centres, 300, 1.0)[0])}), target)
    return target


def run_watched(args: list[str], out: Path) -> tuple[float, dict[int, tuple[str, float]]]:
    """Run `datasel ARGS` in a child process; (seconds, pid -> (role, peak RSS MB))."""
    run = "import sys; from datasel.cli import main; sys.argv[0] = 'datasel'; main()"
    t0 = time.time()
    proc = subprocess.Popen([sys.executable, "-c", run, *args])
    peaks: dict[int, tuple[str, float]] = {}
    root = psutil.Process(proc.pid)
    while proc.poll() is None:
        try:
            procs = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            procs = []
        for p in procs:
            role = "driver" if p.pid == proc.pid else "worker"
            peaks[p.pid] = (role, max(peak_rss_mb(p.pid), peaks.get(p.pid, (role, 0.0))[1]))
        time.sleep(0.2)
    if proc.returncode:
        raise SystemExit(f"datasel {' '.join(args)} failed with exit code {proc.returncode}")
    return time.time() - t0, peaks


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=1_000_000, help="pool rows")
    ap.add_argument("--dim", type=int, default=16, help="vector dimensions")
    ap.add_argument("--corpus", type=Path, default=CORPUS)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--ot-sample", type=int, default=None, help="shift gotd --ot-sample")
    ap.add_argument("--scratch", type=Path, default=None, help="folder for data and output")
    ap.add_argument("--keep-data", action="store_true", help="keep the scratch folder")
    args = ap.parse_args()
    scratch = args.scratch or Path(tempfile.mkdtemp(prefix="datasel-scale-gotd-"))
    scratch.mkdir(parents=True, exist_ok=True)
    try:
        t0 = time.time()
        target = scratch / "target.parquet"
        if not (scratch / "pool").exists():
            target = build(args.n, args.dim, scratch, args.corpus)
            print(f"built {args.n:,} rows x {args.dim} dims in {time.time() - t0:.0f} s")
        size = max(1, args.n // 100)
        cmd = ["shift", "gotd", str(scratch / "pool"), str(scratch / "out"), "--target"]
        cmd += [str(target), "--size", str(size), "--model", "column", "--quiet", "--overwrite"]
        cmd += ["--workers", str(args.workers)]
        if args.ot_sample:
            cmd += ["--ot-sample", str(args.ot_sample)]
        seconds, peaks = run_watched(cmd, scratch / "out")
        m = json.loads((scratch / "out" / "_manifest.json").read_text())
        near = pq.read_table(scratch / "out", columns=["near"]).column("near")
        print(
            f"shift gotd --size {size:,} of {args.n:,} rows ({args.workers} workers): {seconds:.1f} s"
        )
        drivers = [mb for role, mb in peaks.values() if role == "driver"]
        workers = sorted((mb for role, mb in peaks.values() if role == "worker"), reverse=True)
        print(f"  peak RSS driver: {max(drivers):,.0f} MB")
        print(
            f"  peak RSS workers ({len(workers)} processes): "
            + ", ".join(f"{mb:,.0f}" for mb in workers[:8])
            + " MB"
        )
        print(f"  selected from the target's cluster: {pc.sum(near).as_py() / len(near):.3f}")
        print(f"  rows: {json.dumps({k: m[k] for k in ('rows_in', 'kept', 'removed')})}")
        print(f"  stats: {json.dumps(m['stats'])}")
    finally:
        if not args.keep_data:
            shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
