"""Run one stage over a dataset, shard in, shard out, resumably: plan the units (or take the
saved plan of a killed run), fit, map every unit (in parallel), select, write, and the manifest.
The step folder's layout is `StepFolder`'s; the work of one unit is in `units.py`.
"""

from __future__ import annotations

import errno
import json
import os
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from datasel.engine.executors import Executor, ThreadExecutor, make_executor
from datasel.engine.plan import step_units
from datasel.engine.units import Phase, kill_point, save_decision, save_unit_decision
from datasel.errors import DataselError
from datasel.io import (
    Columns,
    Unit,
    added_columns,
    digest,
    find_files,
    fingerprint,
    has_rows,
    unit_dict,
    write_json,
    write_table,
)
from datasel.lock import FolderLock
from datasel.options import RunOptions
from datasel.preflight import check_steps
from datasel.progress import Progress, print_summary
from datasel.stage import Context, Decider, Decision, Stage, Staged
from datasel.step_folder import StepFolder
from datasel.version import __version__

_FULL_OR_READ_ONLY = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM)


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
    folder = StepFolder(dst)
    with FolderLock(folder.lock):
        try:
            return _run(stage, src, folder, options)
        except OSError as e:
            if e.errno not in _FULL_OR_READ_ONLY:
                raise
            raise DataselError(  # the file is named when the error comes with one
                f"{e.filename or dst}: {e.strerror}; finished shards are kept: free space or fix "
                "permissions, then run the same command again"
            ) from None


def stage_columns(stage: Stage, options: RunOptions) -> Columns:
    return Columns(
        options.text_column if stage.needs.text else None, options.id_column, options.on_bad_rows
    )


def _run(stage: Stage, src, folder: StepFolder, options: RunOptions) -> dict:
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
    done = _prepare_output(folder, plan, key, options.overwrite)
    if done is not None:
        say(
            f"[dim]{folder.path}: already done ({stage.name}, same parameters and inputs); "
            "nothing to do[/]"
        )
        return done
    units, sample_units = step_units(stage, src, folder, {**plan, "key": key}, options, columns)
    ctx = Context(
        columns=columns,
        work=folder.work,
        key=key,
        staging=folder.staging(_cache_key(stage, plan, options, units)),
        workers=options.workers,
        units=units,
        sample_units=sample_units,
        quiet=options.quiet,
        threads=ThreadExecutor(options.workers),
    )
    # no rows: nothing to learn or choose from, and every unit writes an empty shard
    empty = _fits_or_selects(stage) and not any(has_rows(u, columns) for u in units)
    if not empty:
        stage.fit(ctx)
    workers = 1 if stage.needs.single_process else max(1, min(options.workers, len(units)))
    executor = ctx.executor = make_executor(options.engine, workers)
    progress = Progress(
        f"{stage.name}", total=_known_rows(units), quiet=options.quiet, units=len(units)
    )
    with _resume_hint(say), progress, executor:
        if stage.has_select() and not empty:
            counts = _map_select_write(stage, ctx, folder, options.batch_rows, executor, progress)
        else:
            mapping = Phase(
                "map", Stage() if empty else stage, ctx, folder, units, options.batch_rows
            )
            with ctx.phase("map"):
                counts = _run_phase(mapping, executor, progress)
    if all(c["rows_in"] == sum(c.get("skipped", {}).values()) for c in counts):
        ctx.warn(f"no rows in {src}: the step is empty")
    kept, removed = folder.shards(), folder.removed_shards()
    for shards in (kept, removed):
        _schema_to_empty_shards(shards)
    outputs = kept + removed
    manifest = _manifest(plan, key, units, counts, ctx, time.time() - t0, outputs)
    folder.finish(manifest)
    if not options.quiet:
        print_summary(manifest)
    return manifest


def _schema_to_empty_shards(shards: list[Path]) -> None:
    """A unit without rows writes a shard of `id` only; readers that take a folder's columns
    from its first file (pyarrow.dataset, pandas, DuckDB, HF datasets) would then drop every
    other column. Such shards are rewritten, still empty, with the columns of the first shard
    that has rows."""
    import pyarrow.parquet as pq

    rows = [pq.read_metadata(p).num_rows for p in shards]
    full = next((pq.read_schema(p) for p, n in zip(shards, rows, strict=True) if n), None)
    if full is None:
        return
    for path, n in zip(shards, rows, strict=True):
        if not n and not pq.read_schema(path).equals(full, check_metadata=False):
            write_table(full.empty_table(), path)


def _cache_key(stage: Stage, plan: dict, options: RunOptions, units: list[Unit]) -> str | None:
    """For a stage whose map output depends only on its `map_params`: a key of them, under which
    that output is kept across runs, so that changing only the selection (a size, a threshold)
    redoes only the cheap global choice."""
    if not (stage.has_select() and stage.map_params is not None):
        return None
    return digest(
        {
            "stage": stage.name,
            "map": {p: plan["params"][p] for p in stage.map_params},
            "columns": plan["columns"],
            "on_bad_rows": options.on_bad_rows,
            "inputs": plan["inputs"],
            "units": [unit_dict(u) for u in units],
        }
    )


def _map_select_write(
    stage: Stage,
    ctx: Context,
    folder: StepFolder,
    batch_rows: int,
    executor: Executor,
    progress: Progress,
) -> list[dict]:
    """Map every unit into staged shards, select over them once, then write every unit."""
    mapping = Phase("stage", stage, ctx, folder, ctx.units, batch_rows)
    with ctx.phase("map"):
        counts = _run_phase(mapping, executor, progress)
    staged = Staged(ctx.staging, [c["rows_in"] for c in counts])
    if not folder.selected.exists():
        progress.status("select")
        with ctx.phase("select"):
            decision = stage.select(staged, ctx) if staged.total else _keep_all(0)
        with ctx.phase("decide"):
            if isinstance(decision, Decider):  # each unit decided and saved by a worker
                calls = [(decision, rows, folder, i) for i, rows in enumerate(staged.rows)]
                list(executor.map_unordered(save_unit_decision, calls))
            else:
                save_decision(decision, staged, folder)
        del decision
        write_json(
            {"stats": ctx.stats, "warnings": ctx.warnings, "cutoffs": ctx.cutoffs},
            folder.selected,
        )
        kill_point("select")
    selected = json.loads(folder.selected.read_text())
    ctx.stats, ctx.warnings = selected["stats"], selected.get("warnings", [])
    ctx.cutoffs = selected.get("cutoffs", {})
    progress.status("write")
    with ctx.phase("apply"):
        return _run_phase(Phase("apply", stage, ctx, folder, ctx.units, batch_rows), executor, None)


def _run_phase(phase: Phase, executor: Executor, progress: Progress | None) -> list[dict]:
    """Do the units of `phase` whose marker is missing; return every unit's counts."""
    results: dict[int, dict] = {}
    todo = []
    for i in range(len(phase.units)):
        if phase.marker(i).exists():
            results[i] = json.loads(phase.marker(i).read_text())
            if progress:
                progress.done(i, phase.rows_read(i, results[i]))
        else:
            todo.append(i)
    if progress:
        progress.resumed()
    # largest units first (longest-processing-time order), so the last to finish are small
    todo.sort(key=lambda i: -phase.units[i].nbytes)
    for k, result in executor.run_units(phase, todo):
        i = todo[k]
        results[i] = result
        if progress:
            progress.done(i, phase.rows_read(i, result))
        kill_point(f"{phase.kind}:{i}")
    return [results[i] for i in range(len(phase.units))]


@contextmanager
def _resume_hint(say: Callable) -> Iterator[None]:
    try:
        yield
    except KeyboardInterrupt:
        say(
            "[yellow]interrupted[/]: finished shards are kept; run the same command again to resume"
        )
        raise


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


def _prepare_output(folder: StepFolder, plan: dict, key: str, overwrite: bool) -> dict | None:
    """Return the manifest if this exact run already finished; refuse to mix runs, saying what
    differs. An unfinished run that wrote no shard yet (it failed on its input or options) is
    replaced without --overwrite: there is nothing of it to keep."""
    dst = folder.path
    if folder.finished():
        old = folder.read_manifest()
        if old.get("key") == key:
            return old
        if not overwrite:
            raise DataselError(
                f"{dst}: holds the output of another run ({_differences(old, plan)}); "
                "use --overwrite or another folder"
            )
    elif folder.plan.exists():
        old = folder.read_plan()
        if old.get("key") == key:
            return None  # resume
        if not overwrite and folder.wrote_shards():
            raise DataselError(
                f"{dst}: holds an unfinished run ({_differences(old, plan)}); run that again to "
                "resume it, or use --overwrite"
            )
        overwrite = True
    elif folder.holds_other_files() and not overwrite:
        raise DataselError(
            f"{dst}: the folder is not empty and is not a datasel output; use another"
        )
    if overwrite and dst.exists():
        folder.clear()
    return None


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


def _manifest(
    plan: dict,
    key: str,
    units: list[Unit],
    counts: list[dict],
    ctx: Context,
    seconds: float,
    outputs: list[Path],
) -> dict:
    """The step's manifest: what ran on what, and every row in counted kept, removed (by
    reason) or skipped."""
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
    return {
        "stage": plan["stage"],
        "params": plan["params"],
        "columns": plan["columns"],
        "added_columns": added_columns(units, ctx.columns, outputs),  # the report plots these
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
        "cutoffs": ctx.cutoffs,  # column -> what select kept on one side of (Context.cutoff)
        "phases": ctx.timeline,  # what this invocation ran, when (Context.phase)
        **({"warnings": ctx.warnings} if ctx.warnings else {}),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
