"""What the Ray engine costs on one machine: dedup with `--engine local` against `--engine ray`.

    python benchmarks/ray_overhead.py [--corpus ../shared/data/dev-corpus.jsonl.gz] [--shards 8]

The corpus is split into Parquet shards; each engine runs in its own process with the same
worker count. The Ray process first starts a local cluster (timed apart), then runs dedup 1 + `--repeat`
times into new folders: the first run while Ray still starts its worker processes, the best
later one on a warm cluster. The local process runs as often, so that its later runs too have
warm imports and page cache. On a shared machine, compare the best later runs.
A third process starts a Ray cluster and then runs the *local* engine: on a VM shared with other
load we saw any CPU work, even a pure-Python loop in a forked pool, run up to 2x faster in a
process that had started a Ray cluster, so compare Ray's later runs with that row.
Peak memory is the largest summed RSS of the run's whole process tree (driver, Ray's daemons and
workers, or the pool's processes), sampled every 0.2 s; shared pages count once per process.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

HERE = Path(__file__).resolve().parent
DEFAULT_CORPUS = HERE.parent.parent / "shared" / "data" / "dev-corpus.jsonl.gz"


def prepare(corpus: Path, shards: int, tmp: Path) -> tuple[Path, int, float]:
    rows = [json.loads(line) for line in gzip.open(corpus, "rt")]
    table = pa.Table.from_pylist([{"id": r["id"], "text": r["text"]} for r in rows])
    src = tmp / "in"
    src.mkdir()
    n = table.num_rows
    for i in range(shards):
        lo, hi = i * n // shards, (i + 1) * n // shards
        pq.write_table(table.slice(lo, hi - lo), src / f"shard-{i}.parquet")
    mb = sum(len(r["text"].encode()) for r in rows) / 1e6
    return src, n, mb


def child(engine: str, src: str, out: str, workers: int, repeat: int) -> None:
    """Runs in its own process; prints one JSON line of timings."""
    import datasel

    times = {}
    under_ray = engine == "local-beside-ray"  # see the module docstring
    if engine == "ray" or under_ray:
        from datasel.engine.ray import RayExecutor

        t = time.perf_counter()
        cluster = RayExecutor(workers).start()
        times["start"] = time.perf_counter() - t
        engine = "ray" if not under_ray else "local"
    seconds = []
    for k in range(1 + repeat):
        t = time.perf_counter()
        m = datasel.run(
            datasel.Dedup(), src, f"{out}-{k}", engine=engine, workers=workers, quiet=True
        )
        seconds.append(time.perf_counter() - t)
    times["cold"], times["warm"] = seconds[0], min(seconds[1:] or seconds)
    if engine == "ray" or under_ray:
        t = time.perf_counter()
        cluster.close()
        times["stop"] = time.perf_counter() - t
    times["kept"] = m["kept"]
    print(json.dumps(times))


def _tree_rss(root: int) -> int:
    """Summed RSS in bytes of `root` and all its descendants, from /proc."""
    parent: dict[int, int] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    parent[int(d)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                pass
    tree, frontier = {root}, [root]
    while frontier:
        p = frontier.pop()
        for c, pp in parent.items():
            if pp == p and c not in tree:
                tree.add(c)
                frontier.append(c)
    total = 0
    for p in tree:
        try:
            with open(f"/proc/{p}/statm") as f:
                total += int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, IndexError, ValueError):
            pass
    return total


def measure(engine: str, src: Path, out: Path, workers: int, repeat: int) -> tuple[dict, float]:
    cmd = [
        sys.executable,
        __file__,
        "--child",
        engine,
        str(src),
        str(out),
        str(workers),
        str(repeat),
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    peak, stop = [0], threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], _tree_rss(proc.pid))
            stop.wait(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    stdout, _ = proc.communicate()
    stop.set()
    sampler.join()
    if proc.returncode:
        raise SystemExit(f"{engine} run failed ({proc.returncode})")
    return json.loads(stdout.strip().splitlines()[-1]), peak[0] / 2**20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    ap.add_argument("--shards", type=int, default=8)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--repeat", type=int, default=3, help="runs after the first; best is shown")
    ap.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        engine, src, out, workers, repeat = args.child
        child(engine, src, out, int(workers), int(repeat))
        return
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        src, n, mb = prepare(args.corpus, args.shards, tmp)
        print(
            f"dedup of {n:,} documents ({mb:.0f} MB of text) in {args.shards} Parquet shards, "
            f"{args.workers} workers, {os.cpu_count()} cores"
        )
        local, local_mb = measure("local", src, tmp / "local", args.workers, args.repeat)
        ray_t, ray_mb = measure("ray", src, tmp / "ray", args.workers, args.repeat)
        beside, _ = measure("local-beside-ray", src, tmp / "beside", args.workers, args.repeat)
    assert local["kept"] == ray_t["kept"], (local["kept"], ray_t["kept"])
    total = ray_t["start"] + ray_t["cold"]
    rows = [  # name, seconds, seconds of the local run it compares with, peak MB
        ("local: dedup, first run", local["cold"], None, local_mb),
        ("local: dedup, best later run", local["warm"], None, None),
        ("ray: start local cluster", ray_t["start"], None, None),
        ("ray: dedup, first run", ray_t["cold"], local["cold"], None),
        ("ray: dedup, best later run", ray_t["warm"], local["warm"], None),
        ("local beside a Ray cluster", beside["warm"], None, None),
        ("ray: best later / that", ray_t["warm"], beside["warm"], None),
        ("ray: start + first run", total, local["cold"], ray_mb),
        ("ray: shut down", ray_t["stop"], None, None),
    ]
    print(f"{'':<30}{'seconds':>9}{'docs/s':>10}{'peak MB':>9}{'ray/local':>11}")
    for name, sec, peer, mem in rows:
        rate = f"{n / sec:>10,.0f}" if "start l" not in name and "shut" not in name else f"{'':>10}"
        mem_s = f"{mem:>9,.0f}" if mem else f"{'':>9}"
        ratio = f"{sec / peer:>10.2f}x" if peer else f"{'':>11}"
        print(f"{name:<30}{sec:>9.2f}{rate}{mem_s}{ratio}")
    print(
        f"kept {local['kept']:,} documents with both engines; peak MB: the whole run's process tree"
    )


if __name__ == "__main__":
    main()
