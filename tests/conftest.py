import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

import datasel

SAMPLE_TEXTS = None


def sample_rows(n: int | None = None) -> list[dict]:
    """Real documents from the bundled sample."""
    global SAMPLE_TEXTS
    if SAMPLE_TEXTS is None:
        SAMPLE_TEXTS = pq.read_table(datasel.SAMPLE).to_pylist()
    return SAMPLE_TEXTS[:n] if n else SAMPLE_TEXTS


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def write_parquet(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def read_dataset(path: Path) -> pa.Table:
    files = sorted(Path(path).glob("part-*.parquet"))
    return pa.concat_tables([pq.read_table(f) for f in files])


def read_removed(path: Path) -> pa.Table:
    files = sorted((Path(path) / "_removed").glob("part-*.parquet"))
    return pa.concat_tables([pq.read_table(f) for f in files]) if files else None
