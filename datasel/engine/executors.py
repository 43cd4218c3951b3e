"""Executors: where the units of a phase (and work that `select` spreads) run.

Every executor does two things, in any order, yielding (position, result) as each finishes:
    run_units(phase, todo)       `do_unit(phase, i)` for each unit `i` in `todo`
    map_unordered(fn, calls)     `fn(*call)` for each call (a stage's own parallel work)
`LocalExecutor` runs them in a pool of processes, `ThreadExecutor` in threads of this process,
`RayExecutor` (engine/ray.py) as Ray tasks, or on actors for a stage that loads a model.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import pickle
import sys
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Protocol

from datasel.engine.units import Phase, do_unit
from datasel.errors import DataselError


class Executor(Protocol):
    workers: int

    def run_units(self, phase: Phase, todo: Sequence[int]) -> Iterator[tuple[int, dict]]:
        """Yield (position in `todo`, counts) as each unit finishes."""
        ...

    def map_unordered(self, fn: Callable, calls: Sequence[tuple]) -> Iterator[tuple[int, Any]]:
        """Yield (position in `calls`, result) as each call `fn(*call)` finishes."""
        ...

    def __enter__(self) -> Executor: ...

    def __exit__(self, *exc) -> None: ...


def make_executor(engine: str, workers: int) -> Executor:
    if engine == "local":
        return LocalExecutor(workers)
    if engine == "ray":
        from datasel.engine.ray import RayExecutor

        return RayExecutor(workers)
    raise DataselError(f"--engine {engine!r}: choose local or ray")


class LocalExecutor:
    """Runs calls in this process, or in a pool of `workers` processes forked once per step
    (after `fit`, so workers inherit what it learned and warmed up)."""

    def __init__(self, workers: int):
        self.workers = workers
        self.pool: ProcessPoolExecutor | None = None

    def run_units(self, phase: Phase, todo: Sequence[int]) -> Iterator[tuple[int, dict]]:
        # each process keeps what the stage loaded (its model) from one unit to the next
        calls = [(phase, i) for i in todo]
        return self._map(do_unit, calls, f"stage {phase.stage.name}")

    def map_unordered(self, fn: Callable, calls: Sequence[tuple]) -> Iterator[tuple[int, Any]]:
        return self._map(fn, calls, fn.__name__)

    def _map(self, fn: Callable, calls: Sequence[tuple], what: str) -> Iterator[tuple[int, Any]]:
        if self.workers <= 1 or len(calls) <= 1:
            for k, call in enumerate(calls):
                yield k, fn(*call)
            return
        _check_picklable(fn, calls[0], what)
        if self.pool is None:
            self.pool = ProcessPoolExecutor(
                max_workers=self.workers,
                mp_context=_mp_context(),
                initializer=_die_with_parent,
                initargs=(os.getpid(),),
            )
        futures = {self.pool.submit(fn, *call): k for k, call in enumerate(calls)}
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

    def __enter__(self) -> LocalExecutor:
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


class ThreadExecutor:
    """Runs calls over threads of this process: for numpy work that releases the GIL and is
    too short to be worth shipping to worker processes."""

    def __init__(self, workers: int):
        self.workers = workers

    def run_units(self, phase: Phase, todo: Sequence[int]) -> Iterator[tuple[int, dict]]:
        return self.map_unordered(do_unit, [(phase, i) for i in todo])

    def map_unordered(self, fn: Callable, calls: Sequence[tuple]) -> Iterator[tuple[int, Any]]:
        if self.workers <= 1 or len(calls) <= 1:
            yield from ((k, fn(*call)) for k, call in enumerate(calls))
            return
        with ThreadPoolExecutor(self.workers) as pool:
            yield from enumerate(pool.map(lambda call: fn(*call), calls))

    def __enter__(self) -> ThreadExecutor:
        return self

    def __exit__(self, *exc) -> None:
        pass


def _check_picklable(fn: Callable, call: tuple, what: str) -> None:
    """Fail in one line where a task cannot go to a worker: CPython's process pool then waits
    forever for a task its feeder thread could not send."""
    try:
        pickle.dumps((fn, call))
    except Exception as e:  # pickling can fail in any way, from any object
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


def _mp_context():
    # fork: fast, and workers inherit the fitted stage. Stages whose map runs torch are
    # single_process (torch's thread pool does not survive a fork), so workers never touch it.
    return mp.get_context("fork")
