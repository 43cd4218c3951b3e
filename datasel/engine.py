"""Run one stage over a dataset, shard in, shard out, resumably.

Layout of a step's output folder:
    part-00000.parquet ...        kept rows, one shard per input unit
    _removed/part-00000.parquet   removed rows with a `reason` column
    _manifest.json                written last: the step is finished when it exists
    _work/                        scratch while running (plan, staged shards, done markers)

Every write is atomic, and every finished unit leaves a marker, so a killed run resumes
where it stopped and produces exactly the output of an uninterrupted run.
"""

from __future__ import annotations

import errno
import json
import multiprocessing as mp
import os
import pickle
import shutil
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from datasel.bad_rows import check_mode, skipped_table
from datasel.bad_rows import count as count_skipped
from datasel.errors import DataselError
from datasel.io import (
    Columns,
    ShardWriter,
    Unit,
    cut_rows,
    digest,
    find_files,
    fingerprint,
    has_rows,
    input_bytes,
    one_type_per_column,
    plan_units,
    read_table,
    read_unit,
    shard_name,
    unit_dict,
    write_json,
    write_table,
)
from datasel.lock import FolderLock
from datasel.preflight import check_steps
from datasel.progress import Progress, unit_meter
from datasel.stage import Context, Decision, MapResult, Stage, Staged, count_texts
from datasel.version import __version__

MANIFEST = "_manifest.json"
CACHE = "_cache"
REMOVED = "_removed"
SKIPPED = "_skipped"  # input lines that could not be rows, with --on-bad-rows skip
WORK = "_work"
LOCK = "_lock"  # held by the run writing the folder
_FULL_OR_READ_ONLY = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM)


@dataclass(kw_only=True)
class RunOptions:
    """How to run a stage; none of these change which rows are kept (except the columns)."""

    text_column: str = "text"
    id_column: str = "id"
    workers: int = field(default_factory=lambda: os.cpu_count() or 1)
    overwrite: bool = False
    quiet: bool = False
    shard_bytes: int = 128 << 20
    shard_rows: int = 250_000
    batch_rows: int = 8192
    engine: str = "local"  # local | ray
    on_bad_rows: str = "error"  # error | skip: malformed, non-UTF-8 or type-changed JSONL lines
    unit_seconds: float = 30.0  # model stages: seconds of work per unit, the most a kill loses

    def __post_init__(self):
        try:
            check_mode(self.on_bad_rows)
        except ValueError as e:
            raise DataselError(str(e)) from None


def run(
    stage: Stage,
    src: str | os.PathLike,
    dst: str | os.PathLike,
    options: RunOptions | None = None,
    **kw,
) -> dict:
    """Run `stage` on the dataset at `src`, writing shards, removed rows and a manifest to `dst`.

    Returns the manifest. Rerunning with the same stage, parameters and inputs is a no-op.

    Examples
    --------
    >>> import datasel
    >>> from datasel.stages.dedup import Dedup
    >>> m = datasel.run(Dedup(), datasel.SAMPLE, tmp / "deduped", quiet=True)
    >>> m["rows_in"] == m["kept"] + m["removed_total"]
    True
    """
    options = options or RunOptions(**kw)
    dst = Path(dst)
    _check_output_place(src, dst)
    find_files(src)  # a bad input fails before the output folder is made
    check_steps(src, [(stage, stage_columns(stage, options), "")], options.engine)
    dst.mkdir(parents=True, exist_ok=True)
    with FolderLock(dst / LOCK):
        try:
            return _run(stage, src, dst, options)
        except OSError as e:
            if e.errno not in _FULL_OR_READ_ONLY:
                raise
            raise DataselError(  # the file is named when the error comes with one
                f"{e.filename or dst}: {e.strerror}; finished shards are kept: free space or fix "
                "permissions, then run the same command again"
            ) from None


def stage_columns(stage: Stage, options: RunOptions) -> Columns:
    return Columns(
        options.text_column if stage.needs_text else None, options.id_column, options.on_bad_rows
    )


def _run(stage: Stage, src, dst: Path, options: RunOptions) -> dict:
    t0 = time.time()
    columns = stage_columns(stage, options)
    plan = {
        "stage": stage.name,
        "params": stage.params(),
        "columns": {"text": columns.text, "id": columns.id},
        "inputs": fingerprint(find_files(src)[0]),
        "shard_bytes": options.shard_bytes,
        "shard_rows": options.shard_rows,
    }
    if options.on_bad_rows != "error":  # keeps the key of runs from before the option
        plan["on_bad_rows"] = options.on_bad_rows
    key = digest(plan)
    say = (lambda *a: None) if options.quiet else _say
    done = _prepare_output(dst, plan, key, options.overwrite)
    if done is not None:
        say(
            f"[dim]{dst}: already done ({stage.name}, same parameters and inputs); nothing to do[/]"
        )
        return done
    work = dst / WORK
    # resuming: the units of the first attempt, whatever --workers says now
    saved = json.loads((work / "plan.json").read_text()) if (work / "plan.json").exists() else {}
    if saved:
        units = [Unit(**u) for u in saved["units"]]
    else:
        shard_bytes, cut_bytes = _unit_bytes(src, stage, options)
        units = plan_units(
            src, shard_bytes=shard_bytes, shard_rows=options.shard_rows, cut_bytes=cut_bytes
        )
    work.mkdir(parents=True, exist_ok=True)
    _save_plan(work, {**saved, **plan, "key": key}, units)  # saved: what a resume must keep
    # the units of a model stage are cut once, from its model's size, before any work
    if stage.cut_by_speed and "unit_bytes" not in saved:
        probe = Context(columns=columns, work=work, key=key, units=units, quiet=options.quiet)
        unit_bytes = _unit_bytes_of_work(_bytes_per_second(stage, probe), options.unit_seconds)
        saved = {"sample_units": [unit_dict(u) for u in units], "unit_bytes": unit_bytes}
        units = cut_rows(units, unit_bytes)
        _save_plan(work, {**saved, **plan, "key": key}, units)
    sample_units = [Unit(**u) for u in saved.get("sample_units", [])] or None

    staging = work
    if stage.has_select() and stage.map_params is not None:
        # map output depends only on these parameters: keep it across runs, so that changing
        # only the selection (a size, a threshold) redoes only the cheap global choice
        map_key = digest(
            {
                "stage": stage.name,
                "map": {p: plan["params"][p] for p in stage.map_params},
                "columns": plan["columns"],
                "on_bad_rows": options.on_bad_rows,
                "inputs": plan["inputs"],
                "units": [unit_dict(u) for u in units],
            }
        )
        staging = dst / CACHE / map_key
        for old in (dst / CACHE).glob("*"):
            if old.name != map_key:
                shutil.rmtree(old, ignore_errors=True)
        staging.mkdir(parents=True, exist_ok=True)
    ctx = Context(
        columns=columns,
        work=work,
        key=key,
        staging=staging,
        workers=options.workers,
        units=units,
        sample_units=sample_units,
        quiet=options.quiet,
    )
    # no rows: nothing to learn or choose from, and every unit writes an empty shard
    empty = _fits_or_selects(stage) and not any(has_rows(u, columns) for u in units)
    if not empty:
        stage.fit(ctx)
    workers = 1 if stage.single_process else max(1, min(options.workers, len(units)))
    executor = ctx.executor = make_executor(options.engine, workers)
    progress = Progress(
        f"{stage.name}", total=_known_rows(units), quiet=options.quiet, units=len(units)
    )
    with _resume_hint(say), progress, executor:
        if stage.has_select() and not empty:
            counts = _parallel(
                _stage_unit,
                [(stage, u, i, ctx, options.batch_rows) for i, u in enumerate(units)],
                executor,
                progress,
                lambda i: staging / f"staged-{i:05d}.json",
                stage,
            )
            staged = Staged(staging, [c["rows_in"] for c in counts])
            if not (work / "select.json").exists():
                progress.status("select")
                decision = stage.select(staged, ctx) if staged.total else _keep_all(0)
                _save_decision(decision, staged, work)
                write_json({"stats": ctx.stats, "warnings": ctx.warnings}, work / "select.json")
                _kill_point("select")
            selected = json.loads((work / "select.json").read_text())
            ctx.stats, ctx.warnings = selected["stats"], selected.get("warnings", [])
            progress.status("write")
            counts = _parallel(
                _apply_unit,
                [(dst, i, stage, u, ctx, options.batch_rows) for i, u in enumerate(units)],
                executor,
                None,
                lambda i: work / f"done-{i:05d}.json",
            )
        else:
            counts = _parallel(
                _map_unit,
                [
                    (Stage() if empty else stage, u, i, ctx, dst, options.batch_rows)
                    for i, u in enumerate(units)
                ],
                executor,
                progress,
                lambda i: work / f"done-{i:05d}.json",
                stage,
            )
    if all(c["rows_in"] == sum(c.get("skipped", {}).values()) for c in counts):
        ctx.warn(f"no rows in {src}: the step is empty")
    manifest = _finish(dst, plan, key, units, counts, ctx, time.time() - t0)
    if not options.quiet:
        from datasel.progress import print_summary

        print_summary(manifest)
    return manifest


# A model stage's units hold about `unit_seconds` of work by a cost model, not a measured speed,
# so that the same input is cut into the same units on every run, whatever the load: a forward
# pass costs ~2 FLOPs per parameter per token, at ~0.3 tokens per input byte (BPE on prose), on
# a device that sustains about this many FLOP/s (conservative: a kill loses less, not more).
SUSTAINED_FLOPS = {"cpu": 5e10, "cuda": 2e14}
TOKENS_PER_BYTE = 0.3


def _bytes_per_second(stage: Stage, ctx: Context) -> float:
    """Input bytes (Arrow) per second that `stage.map` is estimated to process."""
    parameters, device = stage.model_size(ctx)
    flops = SUSTAINED_FLOPS["cuda" if device.startswith("cuda") else "cpu"]
    return flops / (2 * max(parameters, 1) * TOKENS_PER_BYTE)


def _save_plan(work: Path, head: dict, units: list[Unit]) -> None:
    write_json({**head, "units": [unit_dict(u) for u in units]}, work / "plan.json")


def _unit_bytes_of_work(bytes_per_second: float, seconds: float) -> int:
    work = max(1, int(bytes_per_second * seconds))
    return 1 << (work.bit_length() - 1)


# With several workers, units are cut to about a quarter of each worker's share of the input, so
# that uneven files keep every worker busy to the end, but not below this (each unit costs ~10 ms
# and a shard). A Parquet row group is cut only past a whole worker's share: a unit that starts
# inside a row group decodes the rows before it (dedup with 2 workers ran ~10% faster so).
MIN_UNIT_BYTES = 8 << 20


def _unit_bytes(src, stage: Stage, options: RunOptions) -> tuple[int, int]:
    """(unit bytes, bytes above which a Parquet row group is cut into row ranges)."""
    if stage.single_process or options.workers <= 1:
        return options.shard_bytes, options.shard_bytes
    total = input_bytes(src)
    quarter = min(options.shard_bytes, max(MIN_UNIT_BYTES, total // (4 * options.workers)))
    # rounded up: a file that is all the input must make `workers` pieces, not one more
    share = min(options.shard_bytes, max(MIN_UNIT_BYTES, -(-total // options.workers)))
    return quarter, share


@contextmanager
def _resume_hint(say: Callable) -> Iterator[None]:
    try:
        yield
    except KeyboardInterrupt:
        say(
            "[yellow]interrupted[/]: finished shards are kept; run the same command again to resume"
        )
        raise


def _kill_point(name: str) -> None:
    """Tests set DATASEL_KILL_AT to SIGKILL a real run at a chosen point, then resume it
    (DATASEL_KILL_SIGNAL=SIGINT for a Ctrl-C instead)."""
    if os.environ.get("DATASEL_KILL_AT") == name:
        import signal

        os.kill(os.getpid(), getattr(signal, os.environ.get("DATASEL_KILL_SIGNAL", "SIGKILL")))


def _say(msg: str) -> None:
    from rich.console import Console

    Console(stderr=True).print(msg)


def _known_rows(units: list[Unit]) -> int | None:
    return None if any(u.rows < 0 for u in units) else sum(u.rows for u in units)


def _fits_or_selects(stage: Stage) -> bool:
    return stage.has_select() or type(stage).fit is not Stage.fit


def _keep_all(n: int) -> Decision:
    return Decision(keep=np.ones(n, dtype=bool), reason=np.full(n, None, dtype=object))


def _check_output_place(src, dst: Path) -> None:
    if dst.exists() and not dst.is_dir():
        raise DataselError(f"{dst}: is a file; the output is a folder")
    if not (isinstance(src, (str, os.PathLike)) and Path(src).is_dir()):
        return
    root, out = Path(src).resolve(), dst.resolve()
    # folders named _* or .* are not read as input (see io.find_files)
    if out.is_relative_to(root) and not any(
        part.startswith(("_", ".")) for part in out.relative_to(root).parts
    ):
        raise DataselError(
            f"{dst}: inside the input folder {src}, so a rerun would read its shards as "
            "input; write it elsewhere"
        )


def _prepare_output(dst: Path, plan: dict, key: str, overwrite: bool) -> dict | None:
    """Return the manifest if this exact run already finished; refuse to mix runs, saying what
    differs. An unfinished run that wrote no shard yet (it failed on its input or options) is
    replaced without --overwrite: there is nothing of it to keep."""
    manifest, plan_path = dst / MANIFEST, dst / WORK / "plan.json"
    if manifest.exists():
        old = json.loads(manifest.read_text())
        if old.get("key") == key:
            return old
        if not overwrite:
            raise DataselError(
                f"{dst}: holds the output of another run ({_differences(old, plan)}); "
                "use --overwrite or another folder"
            )
    elif plan_path.exists():
        old = json.loads(plan_path.read_text())
        if old.get("key") == key:
            return None  # resume
        if not overwrite and _wrote_shards(dst):
            raise DataselError(
                f"{dst}: holds an unfinished run ({_differences(old, plan)}); run that again to "
                "resume it, or use --overwrite"
            )
        overwrite = True
    elif dst.exists() and any(p.name not in (CACHE, LOCK) for p in dst.iterdir()) and not overwrite:
        raise DataselError(
            f"{dst}: the folder is not empty and is not a datasel output; use another"
        )
    if overwrite and dst.exists():
        _clear(dst)
    return None


def _wrote_shards(dst: Path) -> bool:
    """Whether an unfinished run got as far as writing a unit of work."""
    work = dst / WORK
    done = [*work.glob("done-*.json"), *work.glob("staged-*.json"), work / "select.json"]
    return any(p.exists() for p in done) or any(dst.glob("part-*.parquet*"))


def _differences(old: dict, new: dict) -> str:
    """What differs between an earlier run's plan (or manifest) and this one's, in words."""
    if old.get("stage") != new["stage"]:
        return f"stage {old.get('stage')}, now {new['stage']}"
    new = json.loads(json.dumps(new, default=str))  # as the old one was read back
    said = []
    for group, prefix in (("params", "--"), ("columns", "column ")):
        was, now = old.get(group) or {}, new.get(group) or {}
        for k in sorted(set(was) | set(now)):
            if was.get(k) != now.get(k):
                said.append(f"{prefix}{k.replace('_', '-')} was {was.get(k)!r}, now {now.get(k)!r}")
    was = {f["path"]: f for f in old.get("inputs", [])}
    now = {f["path"]: f for f in new["inputs"]}
    said += [f"input {p} is new" for p in sorted(set(now) - set(was))]
    said += [f"input {p} is gone" for p in sorted(set(was) - set(now))]
    said += [f"input {p} changed" for p in sorted(set(was) & set(now)) if was[p] != now[p]]
    if not said:
        return f"{new['stage']}, other run options"
    more = f" and {len(said) - 3} more differences" if len(said) > 3 else ""
    return f"{new['stage']}: " + "; ".join(said[:3]) + more


def _clear(dst: Path) -> None:
    """Remove what a datasel step wrote, and nothing else."""
    for p in dst.glob("part-*.parquet*"):
        p.unlink()
    for name in (REMOVED, SKIPPED, WORK):
        shutil.rmtree(dst / name, ignore_errors=True)
    (dst / MANIFEST).unlink(missing_ok=True)


class LocalExecutor:
    """Runs functions over argument tuples: in this process, or in a pool of `workers` processes
    forked once per step (after `fit`, so workers inherit what it learned and warmed up)."""

    def __init__(self, workers: int):
        self.workers = workers
        self.pool: ProcessPoolExecutor | None = None

    def map_unordered(self, fn: Callable, args: list[tuple], stage: Stage | None = None):
        """Yield (position, result) as each call finishes. `stage` names the stage whose model
        the calls load (an engine may keep one per worker); the local pool relies on each
        process caching what it loaded."""
        if self.workers <= 1 or len(args) <= 1:
            for k, a in enumerate(args):
                yield k, fn(*a)
            return
        _check_picklable(fn, args[0], stage)
        if self.pool is None:
            self.pool = ProcessPoolExecutor(
                max_workers=self.workers,
                mp_context=_mp_context(),
                initializer=_die_with_parent,
                initargs=(os.getpid(),),
            )
        futures = {self.pool.submit(fn, *a): k for k, a in enumerate(args)}
        try:
            for fut in as_completed(futures):
                yield futures[fut], fut.result()
        except BrokenProcessPool:
            raise DataselError(
                "a worker process died (killed from outside, often by the system for lack of "
                "memory); finished shards are kept: run the same command again to resume, "
                "with fewer --workers if memory is short"
            ) from None
        finally:
            for fut in futures:
                fut.cancel()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if self.pool is not None:
            if exc_type is not None:
                # interrupted (Ctrl-C) or failed: stop the workers now. Left alone, idle ones
                # wait for tasks that never come and the interpreter's exit waits for them;
                # whatever they were writing is a temp file, which a rerun redoes.
                for proc in list(getattr(self.pool, "_processes", {}).values()):
                    proc.terminate()
            self.pool.shutdown(cancel_futures=True)
            self.pool = None


def _check_picklable(fn: Callable, args: tuple, stage: Stage | None) -> None:
    """Fail in one line where a task cannot go to a worker: CPython's process pool then waits
    forever for a task its feeder thread could not send."""
    try:
        pickle.dumps((fn, args))
    except Exception as e:  # pickling can fail in any way, from any object
        what = f"stage {stage.name}" if stage is not None else fn.__name__
        raise DataselError(
            f"{what} cannot be sent to worker processes ({type(e).__name__}: {e}); use --workers 1"
        ) from None


def _die_with_parent(parent: int) -> None:
    """Worker initializer: a worker outlives a SIGKILLed run otherwise, waiting for tasks
    forever (Linux: the kernel kills it with its parent)."""
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the parent died before the line above
        os._exit(1)


class ThreadExecutor:
    """`map_unordered` over threads of this process: for numpy work that releases the GIL
    and is too short to be worth shipping to worker processes."""

    def __init__(self, workers: int):
        self.workers = workers

    def map_unordered(self, fn: Callable, args: list[tuple], stage: Stage | None = None):
        if self.workers <= 1 or len(args) <= 1:
            yield from ((k, fn(*a)) for k, a in enumerate(args))
            return
        with ThreadPoolExecutor(self.workers) as pool:
            yield from enumerate(pool.map(lambda a: fn(*a), args))


def make_executor(engine: str, workers: int):
    if engine == "local":
        return LocalExecutor(workers)
    if engine == "ray":
        from datasel.ray_engine import RayExecutor

        return RayExecutor(workers)
    raise DataselError(f"--engine {engine!r}: choose local or ray")


def _parallel(
    fn: Callable,
    tasks: list[tuple],
    executor,
    progress,
    marker: Callable[[int], Path],
    stage: Stage | None = None,
) -> list[dict]:
    """Run `fn` over units, skipping those whose marker exists; return each unit's counts."""
    results: dict[int, dict] = {}
    todo = []
    for i in range(len(tasks)):
        if marker(i).exists():
            results[i] = json.loads(marker(i).read_text())
            if progress:
                progress.done(i, _unit_rows_read(tasks[i], results[i]))
        else:
            todo.append(i)
    if progress:
        progress.resumed()
    # largest units first (longest-processing-time order), so the last to finish are small
    todo.sort(key=lambda i: -max((a.nbytes for a in tasks[i] if isinstance(a, Unit)), default=0))
    for k, result in executor.map_unordered(fn, [tasks[i] for i in todo], stage):
        i = todo[k]
        results[i] = result
        if progress:
            progress.done(i, _unit_rows_read(tasks[i], result))
        _kill_point(f"{fn.__name__}:{i}")
    return [results[i] for i in range(len(tasks))]


def _unit_rows_read(task: tuple, counts: dict) -> int:
    """Input rows of a finished unit (pick counts candidates in `rows_in`)."""
    unit = next(a for a in task if isinstance(a, Unit))
    return unit.rows if unit.rows >= 0 else counts["rows_in"]


def _mp_context():
    # fork: fast, and workers inherit the fitted stage. Stages whose map runs torch are
    # single_process (torch's thread pool does not survive a fork), so workers never touch it.
    return mp.get_context("fork")


def _map_unit(stage: Stage, unit: Unit, i: int, ctx: Context, dst: Path, batch_rows: int) -> dict:
    """A stage without `select`: map every batch and write the final shard directly."""
    kept = ShardWriter(dst / shard_name(i))
    removed = ShardWriter(dst / REMOVED / shard_name(i))
    rows_in, reasons, skipped, texts = 0, Counter(), [], Counter()
    schema = None
    for batch in _metered(unit, i, ctx, batch_rows, skipped):
        result = _as_result(stage.map(batch, ctx))
        rows_in += batch.num_rows if result.rows_in is None else result.rows_in
        texts.update(_texts_read(batch, result, ctx))
        schema = result.kept.schema
        if result.kept.num_rows:
            kept.write(result.kept)
        if result.removed is not None and result.removed.num_rows:
            removed.write(result.removed)
            reasons.update(result.removed.column("reason").to_pylist())
    n_kept = kept.close(schema)
    if removed.writer is not None:
        removed.close()
    _write_skipped(unit, skipped, dst / SKIPPED / shard_name(i))
    counts = {
        "rows_in": rows_in + len(skipped),
        "kept": n_kept,
        "removed": dict(reasons),
        "skipped": count_skipped(skipped),
        "texts": dict(texts),
    }
    write_json(counts, ctx.work / f"done-{i:05d}.json")
    return counts


def _metered(unit: Unit, i: int, ctx: Context, batch_rows: int, skipped: list):
    """The unit's batches, each counted into the progress tally once the loop body (the map)
    has run on it; a test can kill the run after a unit's first batch (`batch:<i>`)."""
    with unit_meter(i) as meter:
        for k, batch in enumerate(read_unit(unit, ctx.columns, batch_rows, skipped)):
            meter.start_batch(batch.num_rows)
            yield batch
            meter.end_batch()
            if k == 0:
                _kill_point(f"batch:{i}")


def _stage_unit(stage: Stage, unit: Unit, i: int, ctx: Context, batch_rows: int) -> dict:
    """A stage with `select`: map every batch into a staged shard plus side arrays."""
    work = ctx.staging
    staged = ShardWriter(work / f"staged-{i:05d}.parquet", compression="lz4")
    removed = ShardWriter(work / f"removed-{i:05d}.parquet", compression="lz4")
    arrays: dict[str, list[np.ndarray]] = {}
    rows_in, reasons, texts, schema, skipped = 0, Counter(), Counter(), None, []
    for batch in _metered(unit, i, ctx, batch_rows, skipped):
        result = _as_result(stage.map(batch, ctx))
        rows_in += batch.num_rows if result.rows_in is None else result.rows_in
        texts.update(_texts_read(batch, result, ctx))
        kept = result.kept
        if not stage.map_adds_columns:  # only what select reads; apply re-reads the input
            kept = kept.select(["id", *stage.narrow_columns(ctx)])
        schema = kept.schema
        if kept.num_rows:
            staged.write(kept)
        if result.removed is not None and result.removed.num_rows:
            removed.write(result.removed)
            reasons.update(result.removed.column("reason").to_pylist())
        for name, arr in (result.arrays or {}).items():
            arrays.setdefault(name, []).append(arr)
    n = staged.close(schema)
    if removed.writer is not None:
        removed.close()
    for name, parts in arrays.items():
        _save_npy(np.concatenate(parts), work / f"{name}-{i:05d}.npy")
    _write_skipped(unit, skipped, work / f"skipped-{i:05d}.parquet")
    counts = {
        "rows_in": n,
        "map_rows_in": rows_in + len(skipped),
        "map_removed": dict(reasons),
        "skipped": count_skipped(skipped),
        "texts": dict(texts),
    }
    write_json(counts, work / f"staged-{i:05d}.json")
    return counts


def _write_skipped(unit: Unit, skipped: list, path: Path) -> None:
    """A unit's skipped input lines, in line order, as `_skipped/part-<i>.parquet`."""
    if skipped:
        write_table(skipped_table(unit.path, skipped), path)


def _texts_read(batch: pa.RecordBatch, result: MapResult, ctx: Context) -> dict[str, int]:
    """Null and empty texts of one batch, as the stage counted them or in the text column."""
    if result.texts is not None:
        return result.texts
    if ctx.columns.text and ctx.columns.text in batch.schema.names:
        return count_texts(batch.column(ctx.columns.text))
    return {}


def _save_npy(arr: np.ndarray, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp.npy")
    np.save(tmp, arr)
    os.replace(tmp, path)


def _as_result(result) -> MapResult:
    return result if isinstance(result, MapResult) else MapResult(result)


def _save_decision(decision: Decision, staged: Staged, work: Path) -> None:
    n = staged.total
    if len(decision.keep) != n or len(decision.reason) != n:
        raise RuntimeError(f"select returned {len(decision.keep)} decisions for {n} rows")
    cols = {
        "keep": pa.array(decision.keep, pa.bool_()),
        "reason": pa.array(decision.reason, pa.string()),
    }
    for name, arr in decision.removed_columns.items():
        cols["removed:" + name] = arr
    for name, arr in decision.kept_columns.items():
        cols["kept:" + name] = arr
    table = pa.table(cols)
    for i in range(len(staged.rows)):
        lo, hi = staged.offsets[i], staged.offsets[i + 1]
        write_table(table.slice(lo, hi - lo), work / f"decision-{i:05d}.parquet")


def _apply_unit(dst: Path, i: int, stage: Stage, unit: Unit, ctx: Context, batch_rows: int) -> dict:
    """Split one staged shard into kept and removed rows by the saved decision, streaming."""
    work = dst / WORK
    decision = read_table(work / f"decision-{i:05d}.parquet")
    staging = ctx.staging
    if stage.map_adds_columns:
        batches = pq.ParquetFile(staging / f"staged-{i:05d}.parquet").iter_batches(batch_rows)
    else:  # the staged shard is narrow: take the rows from the input again
        batches = read_unit(unit, ctx.columns, batch_rows)
    kept_out = ShardWriter(dst / shard_name(i))
    removed_out = ShardWriter(dst / REMOVED / shard_name(i))
    earlier = staging / f"removed-{i:05d}.parquet"
    if earlier.exists():
        removed_out.write(read_table(earlier))
    staged = json.loads((staging / f"staged-{i:05d}.json").read_text())
    reasons = Counter(staged["map_removed"])
    if (staging / f"skipped-{i:05d}.parquet").exists():
        write_table(read_table(staging / f"skipped-{i:05d}.parquet"), dst / SKIPPED / shard_name(i))
    offset, schema = 0, None
    for batch in batches:
        table = pa.Table.from_batches([batch])
        table = table.drop_columns([c for c in table.column_names if c.startswith("_")])
        d = decision.slice(offset, batch.num_rows)
        offset += batch.num_rows
        keep = d.column("keep")
        every = pa.compute.all(keep).as_py()  # the common case: no copy of the rows
        kept = _with_decision_columns(
            table if every else table.filter(keep), d if every else d.filter(keep), "kept:"
        )
        schema = kept.schema
        if kept.num_rows:
            kept_out.write(kept)
        drop = pa.compute.invert(keep)
        if pa.compute.any(drop).as_py():
            gone = d.filter(drop)
            removed = table.filter(drop).append_column("reason", gone.column("reason"))
            removed_out.write(_with_decision_columns(removed, gone, "removed:"))
            reasons.update(gone.column("reason").to_pylist())
    if offset != decision.num_rows:
        raise RuntimeError(f"shard {i}: {offset} rows read back, {decision.num_rows} decided")
    counts = {
        "rows_in": staged["map_rows_in"],
        "kept": kept_out.close(schema),
        "removed": dict(reasons),
        "skipped": staged.get("skipped", {}),
        "texts": staged.get("texts", {}),
    }
    if removed_out.writer is not None:
        removed_out.close()
    write_json(counts, work / f"done-{i:05d}.json")
    return counts


def _with_decision_columns(table: pa.Table, decision: pa.Table, prefix: str) -> pa.Table:
    for name in decision.column_names:
        if name.startswith(prefix):
            table = table.append_column(name[len(prefix) :], decision.column(name))
    return table


def _finish(
    dst: Path,
    plan: dict,
    key: str,
    units: list[Unit],
    counts: list[dict],
    ctx: Context,
    seconds: float,
) -> dict:
    rows_in = sum(c["rows_in"] for c in counts)
    kept = sum(c["kept"] for c in counts)
    removed, skipped, texts = Counter(), Counter(), Counter({"null": 0, "empty": 0})
    for c in counts:
        removed.update(c["removed"])
        skipped.update(c.get("skipped", {}))
        texts.update(c.get("texts", {}))
    if rows_in != kept + sum(removed.values()) + sum(skipped.values()):
        raise RuntimeError(
            f"row accounting broken: {rows_in} in, {kept} kept, {sum(removed.values())} removed, "
            f"{sum(skipped.values())} skipped"
        )
    if "on_bad_rows" in plan:  # input lines that could not be rows, by reason
        skipped_keys = {
            "on_bad_rows": plan["on_bad_rows"],
            "skipped_total": sum(skipped.values()),
            "skipped": dict(sorted(skipped.items(), key=lambda kv: -kv[1])),
        }
    else:
        skipped_keys = {}
    manifest = {
        "stage": plan["stage"],
        "params": plan["params"],
        "columns": plan["columns"],
        "version": __version__,
        "key": key,
        "inputs": plan["inputs"],
        "rows_in": rows_in,
        "kept": kept,
        "removed_total": sum(removed.values()),
        "removed": dict(sorted(removed.items(), key=lambda kv: -kv[1])),
        **skipped_keys,
        # null / empty (or whitespace-only) texts the stage read: each got a null score or vector,
        # or was removed with a reason saying so
        "texts": dict(texts),
        "shards": len(units),
        "seconds": round(seconds, 3),
        "stats": ctx.stats,
        **({"warnings": ctx.warnings} if ctx.warnings else {}),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    for folder in (dst, dst / REMOVED):
        one_type_per_column(sorted(folder.glob("part-*.parquet")))
    write_json(manifest, dst / MANIFEST)
    shutil.rmtree(dst / WORK, ignore_errors=True)
    return manifest


def apply(stage: Stage, data, *, removed: bool = False, **options):
    """Run a stage in memory on an Arrow table or a Hugging Face `datasets.Dataset` (small data).

    Returns the kept rows as the same type (and the removed rows too with `removed=True`).
    The rows pass through a temporary folder, so the result is exactly what `run` writes.

    Examples
    --------
    >>> import pyarrow as pa, datasel
    >>> table = pa.table({"text": ["a b c", "A  b c", "d e f"]})
    >>> datasel.apply(datasel.Dedup(), table).column("text").to_pylist()
    ['a b c', 'd e f']
    """
    import tempfile

    table, back = _to_arrow(data)
    with tempfile.TemporaryDirectory(prefix="datasel-") as tmp:
        src, dst = Path(tmp) / "input.parquet", Path(tmp) / "output"
        pq.write_table(table, src)
        run(stage, src, dst, **{"quiet": True, **options})
        kept = _read_parts(sorted(dst.glob("part-*.parquet")))
        gone = _read_parts(sorted((dst / REMOVED).glob("part-*.parquet")))
    return (back(kept), back(gone)) if removed else back(kept)


def _read_parts(files: list[Path]) -> pa.Table | None:
    tables = [read_table(f) for f in files]
    return pa.concat_tables(tables, promote_options="default") if tables else None


def _to_arrow(data):
    if isinstance(data, pa.Table):
        return data, lambda t: t
    if hasattr(data, "with_format") and hasattr(data, "data"):  # datasets.Dataset
        import datasets

        return data.with_format("arrow")[:], lambda t: None if t is None else datasets.Dataset(t)
    raise TypeError(f"apply takes a pyarrow.Table or a datasets.Dataset, not {type(data).__name__}")
