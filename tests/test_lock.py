import multiprocessing
import os

import pytest

import datasel
from datasel.errors import DataselError
from datasel.lock import FolderLock
from tests.conftest import sample_rows, write_jsonl


def test_no_lock_file_is_left_after_a_run_a_pipeline_or_a_dedup_index(tmp_path):
    write_jsonl(tmp_path / "in" / "a.jsonl", [{"text": r["text"]} for r in sample_rows(50)])
    datasel.run(datasel.Dedup(), tmp_path / "in", tmp_path / "one", quiet=True)
    assert not (tmp_path / "one" / "_lock").exists()
    pipeline = datasel.Pipeline([datasel.Dedup()])
    pipeline.run_incremental(tmp_path / "in", tmp_path / "cron", tmp_path / "state", quiet=True)
    assert sorted(p.name for p in (tmp_path / "state").iterdir()) == ["dedup-index", "seen.json"]
    assert not list(tmp_path.rglob("*lock"))


def test_a_stale_lock_file_of_a_killed_run_is_taken_over_and_removed(tmp_path):
    (tmp_path / "_lock").write_text("12345")  # a run killed with SIGKILL leaves only the file
    with FolderLock(tmp_path / "_lock"):
        assert (tmp_path / "_lock").read_text() == str(os.getpid())
    assert not (tmp_path / "_lock").exists()


def test_the_lock_is_held_while_its_file_exists(tmp_path):
    with FolderLock(tmp_path / "_lock"):
        with pytest.raises(
            DataselError, match=f"another run holds the lock \\(pid {os.getpid()}\\)"
        ):
            with FolderLock(tmp_path / "_lock"):
                pass
    with FolderLock(tmp_path / "_lock"):  # released and removed: free again
        pass


def _contend(path: str, inside: str, rounds: int, errors) -> None:
    for _ in range(rounds):
        with FolderLock(path, wait=True):
            try:  # exactly one process may be here: the marker must not exist yet
                fd = os.open(inside, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                errors.value += 1
                continue
            os.close(fd)
            os.unlink(inside)


def test_removing_the_file_on_release_never_lets_two_processes_hold_it(tmp_path):
    """Processes that opened the file before its holder removed it must not hold a lock on
    the removed file while another holds the new one."""
    ctx = multiprocessing.get_context("fork")
    errors = ctx.Value("i", 0)
    path, inside = str(tmp_path / "_lock"), str(tmp_path / "inside")
    procs = [ctx.Process(target=_contend, args=(path, inside, 200, errors)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert all(p.exitcode == 0 for p in procs)
    assert errors.value == 0
    assert not os.path.exists(path)
