"""Peak memory of a benchmark process."""

from __future__ import annotations

import resource
from pathlib import Path


def peak_rss_mb() -> float:
    """Peak RSS in MB of this process or of any child it waited for (forked workers).

    This process's own peak is read as VmHWM: ru_maxrss keeps the peak of the process it was
    forked from, so a child of a benchmark holding a corpus would report the benchmark's size.
    """
    try:
        status = Path("/proc/self/status").read_text()
        own = int(status.split("VmHWM:")[1].split()[0]) / 1024
    except (OSError, IndexError):  # not Linux
        own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return max(own, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)
