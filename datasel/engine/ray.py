"""The Ray engine: the same unit work as the local pool, as Ray tasks or on Ray actors.

`RayExecutor` connects to the cluster named by `RAY_ADDRESS` (or one `ray.init` already opened
in this process), else starts a quiet local cluster and shuts it down afterwards. Units and
calls become Ray tasks; the units of a stage that needs a model (`stage.needs.model`) run on one
actor per worker that holds the stage, so its model is loaded once per actor (with `needs.gpus`
GPUs each on a cluster that has GPUs).

Every worker reads its input and writes its shard itself: on a multi-node cluster the input and
output folders must be on storage that every node sees (NFS, a shared or FUSE-mounted disk).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from datasel.engine.units import Phase, do_unit
from datasel.errors import DataselError

# Local clusters only; a cluster started with `ray start` keeps its own settings.
OBJECT_STORE_MAX = 4 << 30  # the default is 30% of RAM; tasks here pass kilobytes
OBJECT_STORE_MIN = 256 << 20
TEMP_PREFIX = "datasel-ray-"  # one folder per local cluster, removed at shutdown


class RayExecutor:
    """Runs units and calls as Ray tasks, or the units of a model stage on a pool of actors.

    Parameters
    ----------
    workers : int
        CPUs of the local cluster this starts when no cluster is given. On an existing cluster
        Ray's own resources bound how many calls run at once.

    Examples
    --------
    >>> with RayExecutor(2) as ex:  # doctest: +SKIP
    ...     sorted(ex.map_unordered(pow, [(2, 3), (3, 2)]))
    [(0, 8), (1, 9)]
    """

    def __init__(self, workers: int):
        try:
            import ray
        except ImportError:
            raise DataselError("--engine ray needs Ray: pip install 'datasel[ray]'") from None
        self.ray = ray
        self.workers = max(1, int(workers))
        self.started = False  # True when this executor started the cluster (and must stop it)
        self.temp_dir: Path | None = None
        self._task = None

    # ------------------------------------------------------------------ cluster
    def start(self) -> RayExecutor:
        """Connect, or start a local cluster; does nothing when already connected."""
        ray = self.ray
        if ray.is_initialized():
            return self
        address = os.environ.get("RAY_ADDRESS")
        if address:
            try:
                _check_reachable(address)  # Ray itself retries an unreachable address forever
                ray.init(address=address, include_dashboard=False)
            except (ConnectionError, RuntimeError, ValueError, OSError) as e:
                first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                raise DataselError(
                    f"RAY_ADDRESS={address}: cannot connect ({first}); is the cluster up, and if it "
                    "uses token authentication, are RAY_AUTH_MODE=token and its token set?"
                ) from None
            return self
        self.temp_dir = _fresh_temp_dir()
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no network calls from a laptop
        ray.init(
            num_cpus=self.workers,
            num_gpus=_local_gpus(),
            object_store_memory=_object_store_bytes(),
            include_dashboard=False,
            log_to_driver=False,
            logging_level="ERROR",
            _temp_dir=str(self.temp_dir),
            # workers start at nice 15 otherwise, and lose the CPU to anything else running
            runtime_env={"env_vars": {"RAY_worker_niceness": "0"}},
        )
        self.started = True
        return self

    def close(self) -> None:
        """Shut down the cluster if this executor started it; leave any other one running."""
        if self.started:
            self.ray.shutdown()
            self.started = False
        if self.temp_dir is not None:
            shutil.rmtree(self.temp_dir, ignore_errors=True)
            self.temp_dir = None

    def __enter__(self) -> RayExecutor:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ work
    def run_units(self, phase: Phase, todo: Sequence[int]) -> Iterator[tuple[int, dict]]:
        """Yield (position in `todo`, counts) as each unit of `phase` finishes.

        The map of a stage that needs a model (`stage.needs.model`) runs on actors that each
        hold one copy of the phase (its stage's model loaded once per actor); otherwise each unit
        is a task.
        """
        if not todo:
            return
        self.start()
        stage = phase.stage
        if phase.maps and stage.needs.model:
            gpus = float(stage.needs.gpus_on(self.ray.cluster_resources().get("GPU", 0)))
            yield from self._on_actors(phase, todo, gpus)
        else:
            yield from self._as_tasks(do_unit, self._share([(phase, i) for i in todo]))

    def map_unordered(self, fn: Callable, calls: Sequence[tuple]) -> Iterator[tuple[int, Any]]:
        """Yield (position, result) as each call `fn(*calls[position])` finishes, as Ray
        tasks. An exception raised in a call is raised here with its own type and message."""
        if not calls:
            return
        self.start()
        yield from self._as_tasks(fn, self._share(calls))

    def _share(self, calls: Sequence[tuple]) -> list[tuple]:
        """Put objects passed to several calls (the phase, the stage's data) in the object
        store once; Ray hands each task the value, not the reference."""
        seen: dict[int, int] = {}
        for call in calls:
            for x in call:
                if not _is_small(x):
                    seen[id(x)] = seen.get(id(x), 0) + 1
        refs: dict[int, Any] = {}
        out = []
        for call in calls:
            row = []
            for x in call:
                if seen.get(id(x), 0) > 1:
                    if id(x) not in refs:
                        refs[id(x)] = self.ray.put(x)
                    x = refs[id(x)]
                row.append(x)
            out.append(tuple(row))
        return out

    def _as_tasks(self, fn: Callable, calls: list[tuple]) -> Iterator[tuple[int, Any]]:
        ray = self.ray
        if self._task is None:
            # SPREAD: short tasks otherwise queue on the first node's leased worker and leave
            # the rest of the cluster idle (seen on an idle two-node cluster)
            self._task = ray.remote(num_cpus=1, scheduling_strategy="SPREAD")(_call)
        pending = {self._task.remote(fn, *call): k for k, call in enumerate(calls)}
        try:
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                for ref in done:
                    k = pending.pop(ref)
                    yield k, self._get(ref)
        finally:
            for ref in pending:
                ray.cancel(ref, force=True)
            self._discard(list(pending))

    def _on_actors(
        self, phase: Phase, todo: Sequence[int], gpus: float
    ) -> Iterator[tuple[int, dict]]:
        ray = self.ray
        n = min(len(todo), self._actor_slots(gpus, phase.stage.name or "stage"))
        holder = ray.remote(num_cpus=1, num_gpus=gpus, max_restarts=1, max_task_retries=1)(
            _PhaseActor
        )
        # by value: an actor whose constructor arguments sit in the object store cannot restart;
        # the actor's own copy of the stage keeps a model it caches on itself between units
        actors = [holder.remote(phase) for _ in range(n)]
        idle = list(actors)
        pending: dict[Any, tuple[int, Any]] = {}
        next_unit = iter(enumerate(todo))
        try:
            while True:
                while idle:
                    nxt = next(next_unit, None)
                    if nxt is None:
                        break
                    k, i = nxt
                    actor = idle.pop()
                    pending[actor.do_unit.remote(i)] = (k, actor)
                if not pending:
                    break
                done, _ = ray.wait(list(pending), num_returns=1)
                for ref in done:
                    k, actor = pending.pop(ref)
                    idle.append(actor)
                    yield k, self._get(ref)
        finally:
            for actor in actors:
                ray.kill(actor)
            self._discard(list(pending))

    def _actor_slots(self, gpus: float, name: str) -> int:
        """How many actors fit: one CPU stays free for tasks (a pool holding every CPU starves
        them and the run hangs without an error), and each needs `gpus` GPUs."""
        res = self.ray.cluster_resources()
        n = max(1, int(res.get("CPU", 1)) - 1)
        if gpus > 0:
            have = float(res.get("GPU", 0))
            if have < gpus:
                raise DataselError(
                    f"{name}: needs {gpus:g} GPU per worker but the Ray cluster has {have:g}"
                )
            n = min(n, int(have // gpus))
        return n

    def _discard(self, refs: list, wait_s: float = 10.0) -> None:
        """Collect the calls left behind by an error, so that Ray does not log each of their
        errors as unhandled."""
        if not refs:
            return
        done, _ = self.ray.wait(refs, num_returns=len(refs), timeout=wait_s)
        for ref in done:
            try:
                self.ray.get(ref)
            except Exception:  # the first error is the one raised
                pass

    def _get(self, ref: Any) -> Any:
        """The result of a call, or its exception with the original type and message."""
        ray = self.ray
        try:
            return ray.get(ref)
        except ray.exceptions.RayTaskError as e:
            cause = getattr(e, "cause", None)
            if isinstance(cause, DataselError):
                raise DataselError(str(cause)) from None  # one line, as the CLI prints it
            if isinstance(cause, BaseException):
                if hasattr(cause, "add_note"):
                    cause.add_note(f"raised in a Ray worker:\n{e}")
                raise cause from None
            raise e.as_instanceof_cause() from None


def _call(fn: Callable, *args):
    return fn(*args)


class _PhaseActor:
    """Holds one phase (and so one copy of its stage) for its whole life and does its units."""

    def __init__(self, phase: Phase):
        self.phase = phase

    def do_unit(self, i: int) -> dict:
        return do_unit(self.phase, i)


def _is_small(x: Any) -> bool:
    return x is None or isinstance(x, bool | int | float | str | bytes | Path)


def _check_reachable(address: str, timeout_s: float = 10.0) -> None:
    """Open and close a TCP connection to a `host:port` address ("auto" and ray:// are left to
    Ray)."""
    import socket

    host, sep, port = address.rpartition(":")
    if not sep or "://" in address or not port.isdigit():
        return
    with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s):
        pass


def _object_store_bytes() -> int:
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 1 << 30
    return int(min(OBJECT_STORE_MAX, max(OBJECT_STORE_MIN, ram // 10)))


def _local_gpus() -> int | None:
    """Let Ray detect GPUs itself unless CUDA_VISIBLE_DEVICES hides them all."""
    return 0 if os.environ.get("CUDA_VISIBLE_DEVICES", None) == "" else None


def _fresh_temp_dir() -> Path:
    """A new folder for this cluster's sockets, logs and spill files, after removing those of
    local clusters whose process is gone (Ray's /tmp/ray keeps one folder per session)."""
    root = Path(tempfile.gettempdir())
    for old in root.glob(TEMP_PREFIX + "*"):
        try:
            pid = int((old / "owner.pid").read_text())
        except (OSError, ValueError):
            continue
        if not _alive(pid):
            _stop_orphans(old)
            shutil.rmtree(old, ignore_errors=True)
    path = Path(tempfile.mkdtemp(prefix=TEMP_PREFIX, dir=root))
    (path / "owner.pid").write_text(str(os.getpid()))
    return path


def _stop_orphans(folder: Path) -> None:
    """Stop what a killed cluster left running: when its driver is SIGKILLed, Ray's dashboard
    and runtime-env agents (~200 MB together) stay up. They are found by the log files they
    hold open in this cluster's own folder (Linux /proc; elsewhere nothing is done)."""
    import signal

    prefix = str(folder) + os.sep
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if any(os.readlink(fd).startswith(prefix) for fd in (proc / "fd").iterdir()):
                os.kill(int(proc.name), signal.SIGTERM)
        except OSError:
            continue


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
