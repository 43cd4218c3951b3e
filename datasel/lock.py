"""An exclusive lock on a folder, held while a run writes there."""

from __future__ import annotations

import os
from pathlib import Path

from datasel.errors import DataselError


class FolderLock:
    """An exclusive lock on the file `path`, so two runs never write the same folder at once
    (two cron runs of a pipeline, or two commands given the same output); with `wait`, the
    second waits its turn instead of failing. The kernel drops it when the process dies, so a
    killed run never leaves a stale lock behind."""

    def __init__(self, path: Path, wait: bool = False):
        self.path, self.wait = path, wait

    def __enter__(self):
        import fcntl

        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | (0 if self.wait else fcntl.LOCK_NB))
        except BlockingIOError:
            holder = os.read(self.fd, 64).decode(errors="replace").strip() or "?"
            os.close(self.fd)
            raise DataselError(
                f"{self.path.parent}: another run holds the lock (pid {holder}); try again later"
            ) from None
        os.ftruncate(self.fd, 0)
        os.write(self.fd, str(os.getpid()).encode())
        return self

    def __exit__(self, *exc):
        os.close(self.fd)
