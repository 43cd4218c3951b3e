"""An exclusive lock on a folder, held while a run writes there."""

from __future__ import annotations

import os
from pathlib import Path

from datasel.errors import DataselError


class FolderLock:
    """An exclusive lock on the file `path`, so two runs never write the same folder at once
    (two cron runs of a pipeline, or two commands given the same output); with `wait`, the
    second waits its turn instead of failing. The kernel drops it when the process dies, so a
    killed run never leaves a held lock behind (only the file, which the next run takes over).

    The holder removes the file on release, while still holding it. Whoever locked the file
    meanwhile through a name opened before the removal then holds a file no longer at `path`,
    so it checks, after locking, that `path` still names the file it locked, and otherwise
    starts again on the file now there: only a lock on the file at `path` counts, and only
    one process holds that at a time.
    """

    def __init__(self, path: Path, wait: bool = False):
        self.path, self.wait = Path(path), wait

    def __enter__(self):
        import fcntl

        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if self.wait else fcntl.LOCK_NB))
            except BlockingIOError:
                holder = os.read(fd, 64).decode(errors="replace").strip() or "?"
                os.close(fd)
                raise DataselError(
                    f"{self.path.parent}: another run holds the lock (pid {holder}); "
                    "try again later"
                ) from None
            if _same_file(fd, self.path):
                break
            os.close(fd)  # removed (and maybe created anew) by its last holder: start again
        self.fd = fd
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        return self

    def __exit__(self, *exc):
        try:
            if _same_file(self.fd, self.path):
                self.path.unlink()
        finally:
            os.close(self.fd)


def _same_file(fd: int, path: Path) -> bool:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    own = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (own.st_dev, own.st_ino)
