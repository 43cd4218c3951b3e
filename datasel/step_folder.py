"""The one owner of a step's on-disk layout: every file name of a step's output folder.

    part-00000.parquet ...        kept rows, one shard per input unit
    _removed/part-00000.parquet   removed rows with a `reason` column
    _skipped/part-00000.parquet   input lines that could not be rows (--on-bad-rows skip)
    _manifest.json                written last: the step is finished when it exists
    _lock                         held by the run writing the folder
    _work/                        scratch while running: plan, select's decision, done markers
    _cache/<key>/                 a selecting stage's map output, kept across runs (`Staging`)

Every write is atomic, and every finished unit leaves a marker, so a killed run resumes
where it stopped and produces exactly the output of an uninterrupted run.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from datasel.io import one_type_per_column, write_json

MANIFEST = "_manifest.json"
REMOVED = "_removed"
SKIPPED = "_skipped"
LOCK = "_lock"
WORK = "_work"
CACHE = "_cache"
SHARDS = "part-*.parquet"


def shard_name(i: int) -> str:
    return f"part-{i:05d}.parquet"


class StepFolder:
    """A step's output folder, finished or being written."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"StepFolder({str(self.path)!r})"

    # ------------------------------------------------------------------ the output
    def shard(self, i: int) -> Path:
        return self.path / shard_name(i)

    def shards(self) -> list[Path]:
        return sorted(self.path.glob(SHARDS))

    @property
    def removed(self) -> Path:
        return self.path / REMOVED

    def removed_shard(self, i: int) -> Path:
        return self.removed / shard_name(i)

    def removed_shards(self) -> list[Path]:
        return sorted(self.removed.glob(SHARDS))

    def skipped_shard(self, i: int) -> Path:
        return self.path / SKIPPED / shard_name(i)

    @property
    def manifest(self) -> Path:
        return self.path / MANIFEST

    def finished(self) -> bool:
        return self.manifest.exists()

    def read_manifest(self) -> dict:
        return json.loads(self.manifest.read_text())

    def finish(self, manifest: dict) -> None:
        """Give each column one type across the shards, write the manifest (the step is then
        finished) and remove the scratch folder."""
        for shards in (self.shards(), self.removed_shards()):
            one_type_per_column(shards)
        write_json(manifest, self.manifest)
        shutil.rmtree(self.work, ignore_errors=True)

    @property
    def lock(self) -> Path:
        return self.path / LOCK

    # ------------------------------------------------------------------ while running
    @property
    def work(self) -> Path:
        return self.path / WORK

    @property
    def plan(self) -> Path:
        """The units and parameters of the first attempt, which a resumed run keeps."""
        return self.work / "plan.json"

    def read_plan(self) -> dict:
        return json.loads(self.plan.read_text()) if self.plan.exists() else {}

    @property
    def selected(self) -> Path:
        """Written once `select` has decided (its statistics and warnings)."""
        return self.work / "select.json"

    def decision(self, i: int) -> Path:
        """Select's keep flags and reasons for the rows of unit `i`."""
        return self.work / f"decision-{i:05d}.parquet"

    def done(self, i: int) -> Path:
        """Unit `i`'s counts, written once its final shards are."""
        return self.work / f"done-{i:05d}.json"

    def staging(self, cache_key: str | None = None) -> Staging:
        """Where map output waits for `select`: the scratch folder, or with a `cache_key` the
        cache of map output that outlives the run (any other key's cache is removed)."""
        path = self.work if cache_key is None else self.path / CACHE / cache_key
        if cache_key is not None:
            for old in (self.path / CACHE).glob("*"):
                if old.name != cache_key:
                    shutil.rmtree(old, ignore_errors=True)
        path.mkdir(parents=True, exist_ok=True)
        return Staging(path)

    def wrote_shards(self) -> bool:
        """Whether an unfinished run got as far as writing a unit of work."""
        work = self.work
        done = [*work.glob("done-*.json"), *work.glob("staged-*.json"), self.selected]
        return any(p.exists() for p in done) or any(self.path.glob(SHARDS + "*"))

    def holds_other_files(self) -> bool:
        """Whether the folder holds anything but a cache and a lock (a run's or another's)."""
        return self.path.exists() and any(p.name not in (CACHE, LOCK) for p in self.path.iterdir())

    def clear(self) -> None:
        """Remove what a datasel step wrote, and nothing else (the cache stays)."""
        for p in self.path.glob(SHARDS + "*"):
            p.unlink()
        for name in (REMOVED, SKIPPED, WORK):
            shutil.rmtree(self.path / name, ignore_errors=True)
        self.manifest.unlink(missing_ok=True)


class Staging:
    """A selecting stage's map output for `select`, per unit `i`: the staged shard (narrow
    columns), side arrays, rows set aside by map, skipped input lines, and a marker (the
    unit's counts) written last."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"Staging({str(self.path)!r})"

    def shard(self, i: int) -> Path:
        return self.path / f"staged-{i:05d}.parquet"

    def array(self, name: str, i: int) -> Path:
        return self.path / f"{name}-{i:05d}.npy"

    def removed(self, i: int) -> Path:
        return self.path / f"removed-{i:05d}.parquet"

    def skipped(self, i: int) -> Path:
        return self.path / f"skipped-{i:05d}.parquet"

    def marker(self, i: int) -> Path:
        return self.path / f"staged-{i:05d}.json"

    def counts(self, i: int) -> dict:
        """What unit `i`'s map counted (`rows_in`: the staged rows)."""
        return json.loads(self.marker(i).read_text())
