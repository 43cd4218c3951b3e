"""Find inputs, read any supported format into Arrow batches, write shards atomically.

Inputs are planned into *units*: a plain JSONL file is cut at line boundaries every
`shard_bytes`, a Parquet file at row-group boundaries every `shard_rows` rows or `shard_bytes`
(a row group bigger than `cut_bytes` is cut into row ranges), and a compressed JSONL or Arrow
file is one unit. Stages that run a model cut them further into row ranges (`cut_rows`).
Unit `i` becomes output shard `i` (named by `step_folder.py`).
"""

from __future__ import annotations

import glob
import gzip
import io
import json
import mmap
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.ipc as ipc
import pyarrow.json as pa_json
import pyarrow.parquet as pq
import xxhash

from datasel.bad_rows import (
    INVALID_UTF8,
    NOT_AN_OBJECT,
    TYPE_CHANGE,
    BadLine,
    arrow_message,
    arrow_row,
    find_bad_lines,
    hint,
    is_good_line,
)
from datasel.errors import DataselError

JSONL_SUFFIXES = (".jsonl", ".json", ".ndjson", ".jsonl.gz", ".json.gz", ".jsonl.zst", ".json.zst")
PARQUET_SUFFIXES = (".parquet",)
ARROW_SUFFIXES = (".arrow",)
BLOCK_BYTES = 32 << 20  # JSONL is parsed in blocks of ~32 MB
PARQUET_BATCH_ROWS = 8192


@dataclass(frozen=True)
class Unit:
    """A slice of one input file that becomes one output shard."""

    path: str
    source: str  # file name relative to the input root, used in derived ids
    fmt: str  # jsonl | parquet | arrow
    start: int = 0  # byte offset (jsonl) or first row group (parquet)
    stop: int = -1  # byte offset or row group after the last; -1 = to the end
    first_row: int = 0  # line or row number of the first row in the file
    rows: int = -1  # -1 when unknown before reading (compressed JSONL)
    nbytes: int = -1  # bytes to read (uncompressed Parquet, on disk otherwise): the larger go first


def _suffix_kind(name: str) -> str | None:
    low = name.lower()
    if low.endswith(JSONL_SUFFIXES):
        return "jsonl"
    if low.endswith(PARQUET_SUFFIXES):
        return "parquet"
    if low.endswith(ARROW_SUFFIXES):
        return "arrow"
    return None


@dataclass(frozen=True)
class FileList:
    """Some files of an input folder (e.g. the new ones of a cron run); ids stay relative to `root`."""

    files: tuple[str, ...]
    root: str

    def __str__(self) -> str:
        return f"{self.root} ({len(self.files)} new file(s))"


BUNDLED = Path(__file__).parent / "data"  # files shipped with the package, named `datasel:NAME`


def resolve_input(src: str | os.PathLike) -> str:
    """`datasel:NAME` names a bundled file, datasel/data/NAME.parquet (`datasel:sample`, the
    sample; `datasel:target-python-docs`, the quickstart's target); anything else is a path or
    glob."""
    name = str(src).removeprefix("datasel:")
    if name == str(src):
        return name
    path = BUNDLED / f"{name}.parquet"
    if not path.is_file():
        bundled = ", ".join(sorted(f"datasel:{p.stem}" for p in BUNDLED.glob("*.parquet")))
        raise DataselError(f"{src}: no such bundled file; bundled: {bundled}")
    return str(path)


def find_files(src: str | os.PathLike | FileList) -> tuple[list[Path], Path]:
    """List the data files of an input (file, folder, glob or HF `save_to_disk` folder).

    Returns the files in a stable order and the root that derived ids are relative to.
    Names starting with `_` or `.` (our `_removed/`, `_manifest.json`) are skipped in folders.
    """
    if isinstance(src, FileList):
        return [Path(f) for f in src.files], Path(src.root)
    text = resolve_input(src)
    if any(ch in text for ch in "*?["):
        files = sorted(Path(p) for p in glob.glob(text, recursive=True) if Path(p).is_file())
        files = [p for p in files if _suffix_kind(p.name)]
        if not files:
            raise DataselError(f"{text}: the pattern matches no .jsonl/.parquet/.arrow file")
        return files, Path(os.path.commonpath([str(p.parent) for p in files]))
    path = Path(text)
    if not path.exists():
        raise DataselError(f"{path}: no such file or folder")
    if path.is_file():
        if not _suffix_kind(path.name):
            raise DataselError(
                f"{path}: unsupported format (use .jsonl, .jsonl.gz, .jsonl.zst, .parquet or .arrow)"
            )
        return [path], path.parent
    state = path / "state.json"
    if state.exists() and (path / "dataset_info.json").exists():
        names = [f["filename"] for f in json.loads(state.read_text())["_data_files"]]
        return [path / n for n in names], path
    if (path / "dataset_dict.json").exists():
        splits = json.loads((path / "dataset_dict.json").read_text())["splits"]
        raise DataselError(f"{path}: a DatasetDict; point at one split folder: {', '.join(splits)}")
    files = []
    for dirpath, dirnames, filenames in os.walk(path):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(("_", ".")))
        for name in sorted(filenames):
            if not name.startswith(("_", ".")) and _suffix_kind(name):
                files.append(Path(dirpath) / name)
    if not files:
        raise DataselError(f"{path}: the folder holds no .jsonl/.parquet/.arrow file")
    return files, path


def fingerprint(files: list[Path]) -> list[dict]:
    """Cheap identity of each input file (name, size, mtime), as `make` uses."""
    out = []
    for p in files:
        st = p.stat()
        out.append({"path": str(p.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns})
    return out


def digest(obj) -> str:
    """Stable short hash of a JSON-serialisable object."""
    return xxhash.xxh3_64_hexdigest(json.dumps(obj, sort_keys=True, default=str).encode())


def plan_units(
    src, *, shard_bytes: int = 128 << 20, shard_rows: int = 250_000, cut_bytes: int | None = None
) -> list[Unit]:
    """Units of work over the files at `src`: up to `shard_bytes` / `shard_rows` each. A Parquet
    row group is cut into row ranges only when it is bigger than `cut_bytes` (default
    `shard_bytes`): a range decodes the rows before it in its group all the same."""
    files, root = find_files(src)
    units: list[Unit] = []
    for path in files:
        source = path.relative_to(root).as_posix() if path.is_relative_to(root) else path.name
        kind = _suffix_kind(path.name)
        low = path.name.lower()
        if kind == "parquet":
            units += _parquet_units(path, source, shard_rows, shard_bytes, cut_bytes or shard_bytes)
        elif kind == "jsonl" and not low.endswith((".gz", ".zst")):
            units += _jsonl_units(path, source, shard_bytes)
        else:
            units.append(Unit(str(path), source, kind, nbytes=path.stat().st_size))
    return units


def _parquet_metadata(path: Path) -> pq.FileMetaData:
    try:
        return pq.ParquetFile(path).metadata
    except pa.ArrowException as e:
        raise DataselError(f"{path}: not a readable Parquet file ({e})") from None


def _parquet_units(
    path: Path, source: str, shard_rows: int, shard_bytes: int, cut_bytes: int
) -> list[Unit]:
    """Whole row groups up to `shard_rows` rows or `shard_bytes` (uncompressed) per unit; a row
    group bigger than `cut_bytes` is cut into row ranges, so a few big files still spread
    over all workers."""
    meta = _parquet_metadata(path)
    units: list[Unit] = []
    pending: list[tuple[int, int, int]] = []  # (row group, rows, bytes) not yet in a unit
    row = 0

    def flush():
        if pending:
            g0, rows, size = pending[0][0], sum(p[1] for p in pending), sum(p[2] for p in pending)
            units.append(
                Unit(str(path), source, "parquet", g0, pending[-1][0] + 1, row - rows, rows, size)
            )
            pending.clear()

    for g in range(meta.num_row_groups):
        n, size = meta.row_group(g).num_rows, meta.row_group(g).total_byte_size
        if size > cut_bytes and n > 1:
            flush()
            cuts = np.linspace(0, n, -(-size // cut_bytes) + 1).round().astype(np.int64)
            for lo, hi in zip(cuts[:-1].tolist(), cuts[1:].tolist(), strict=True):
                rows = hi - lo
                units.append(
                    Unit(str(path), source, "parquet", g, g + 1, row + lo, rows, size * rows // n)
                )
            row += n
            continue
        pending.append((g, n, size))
        row += n
        if sum(p[1] for p in pending) >= shard_rows or sum(p[2] for p in pending) >= shard_bytes:
            flush()
    flush()
    return units or [Unit(str(path), source, "parquet", 0, 0, 0, 0, 0)]


def cut_rows(units: list[Unit], unit_bytes: int) -> list[Unit]:
    """The units cut further into pieces of whole rows, about `unit_bytes` each (at the unit's
    mean bytes per row) and as equal as can be, for a stage whose every row is costly (a
    model): a kill then loses one small unit. A compressed JSONL or an Arrow file is counted
    first (read through once); its pieces are row windows, each read from the file's start
    (such files cannot seek to a row)."""
    out: list[Unit] = []
    for unit in units:
        unit = unit if unit.rows >= 0 else _counted(unit)
        rows_per_unit = max(1, unit_bytes * unit.rows // max(1, unit.nbytes))
        if unit.rows <= rows_per_unit:
            out.append(unit)
            continue
        k = -(-unit.rows // rows_per_unit)
        cuts = np.linspace(0, unit.rows, k + 1).round().astype(np.int64).tolist()
        out += _pieces(unit, cuts)
    return out


def _counted(unit: Unit) -> Unit:
    """A whole compressed JSONL or Arrow file as a row window over all its rows (lines), with
    its bytes uncompressed."""
    rows, size = 0, 0
    if unit.fmt == "jsonl":
        last = b"\n"
        with _open_text_stream(unit.path) as f:
            while chunk := _read(f, BLOCK_BYTES, unit.path):
                rows, size, last = rows + chunk.count(b"\n"), size + len(chunk), chunk[-1:]
        rows += last != b"\n"
    else:
        for table, _ in _read_arrow(unit):
            rows, size = rows + table.num_rows, size + table.nbytes
    return Unit(unit.path, unit.source, unit.fmt, 0, -1, 0, rows, size)


def _pieces(unit: Unit, cuts: list[int]) -> list[Unit]:
    """`unit` cut at these row offsets (0 and unit.rows included)."""
    spans = list(zip(cuts[:-1], cuts[1:], strict=True))
    size = [max(1, unit.nbytes) * (hi - lo) // unit.rows for lo, hi in spans]
    if unit.fmt == "parquet":
        meta = _parquet_metadata(Path(unit.path))
        ends = np.cumsum([meta.row_group(g).num_rows for g in range(meta.num_row_groups)])
        out = []
        for (lo, hi), n in zip(spans, size, strict=True):
            first, last = unit.first_row + lo, unit.first_row + hi - 1
            g0, g1 = (
                int(np.searchsorted(ends, first, "right")),
                int(np.searchsorted(ends, last, "right")),
            )
            out.append(Unit(unit.path, unit.source, "parquet", g0, g1 + 1, first, hi - lo, n))
        return out
    if unit.stop >= 0:  # plain JSONL: cut at the line starts
        with open(unit.path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            data = np.frombuffer(mm, np.uint8, count=unit.stop - unit.start, offset=unit.start)
            ends = (np.flatnonzero(data == 0x0A) + 1 + unit.start).tolist()
            del data
        starts = [unit.start] + ends
        return [
            Unit(
                unit.path,
                unit.source,
                "jsonl",
                starts[lo],
                unit.stop if hi == unit.rows else starts[hi],
                unit.first_row + lo,
                hi - lo,
                n,
            )
            for (lo, hi), n in zip(spans, size, strict=True)
        ]
    return [
        Unit(unit.path, unit.source, unit.fmt, 0, -1, unit.first_row + lo, hi - lo, n)
        for (lo, hi), n in zip(spans, size, strict=True)
    ]


def input_bytes(src) -> int:
    """Bytes of text to read: uncompressed Parquet data, other files' sizes on disk."""
    total = 0
    for path in find_files(src)[0]:
        if _suffix_kind(path.name) == "parquet":
            meta = _parquet_metadata(path)
            total += sum(meta.row_group(g).total_byte_size for g in range(meta.num_row_groups))
        else:
            total += path.stat().st_size
    return total


def _jsonl_units(path: Path, source: str, shard_bytes: int) -> list[Unit]:
    """Cut a plain JSONL file at line starts every ~shard_bytes, counting its lines."""
    size = path.stat().st_size
    if size == 0:
        return [Unit(str(path), source, "jsonl", 0, 0, 0, 0, 0)]
    units, start, first = [], 0, 0
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        while start < size:
            # the unit ends with the line that holds byte start + shard_bytes
            end = start + shard_bytes
            stop = size if size <= end else mm.find(b"\n", end, size) + 1
            stop = stop or size
            rows = _count_lines(mm, start, stop) + (stop == size and mm[size - 1] != 0x0A)
            units.append(Unit(str(path), source, "jsonl", start, stop, first, rows, stop - start))
            start, first = stop, first + rows
    return units


def _count_lines(mm: mmap.mmap, start: int, stop: int, block: int = 1 << 20) -> int:
    """Newlines in mm[start:stop], counted by numpy over 1 MB blocks of the mapped file (no
    copy; ~4x faster than reading the file and counting with bytes.count)."""
    data = np.frombuffer(mm, dtype=np.uint8, count=stop - start, offset=start)
    n = sum(int(np.count_nonzero(data[i : i + block] == 0x0A)) for i in range(0, len(data), block))
    del data  # the map cannot close while an array still views it
    return n


def _open_text_stream(path: str):
    low = path.lower()
    if low.endswith(".gz"):
        return gzip.open(path, "rb")
    if low.endswith(".zst"):
        import zstandard

        return zstandard.ZstdDecompressor().stream_reader(open(path, "rb"))
    return open(path, "rb")


def _jsonl_blocks(unit: Unit, block_bytes: int | None = None) -> Iterator[tuple[bytes, int]]:
    """Yield (block of whole lines, line number of its first line)."""
    block_bytes = block_bytes or BLOCK_BYTES
    if unit.stop >= 0 or unit.rows < 0:
        yield from _jsonl_file_blocks(unit, unit.first_row, block_bytes)
        return
    # a row window of a compressed file: read from the start, keep lines [lo, hi)
    lo, hi = unit.first_row, unit.first_row + unit.rows
    for block, line in _jsonl_file_blocks(unit, 0, block_bytes):
        if line >= hi:
            return
        ends = np.flatnonzero(np.frombuffer(block, np.uint8) == 0x0A) + 1
        if block[-1:] != b"\n":  # the file's last line, without a newline
            ends = np.append(ends, len(block))
        if line + len(ends) <= lo:
            continue
        a, b = max(lo - line, 0), min(hi - line, len(ends))
        yield block[int(ends[a - 1]) if a else 0 : int(ends[b - 1])], line + a


def _jsonl_file_blocks(unit: Unit, line: int, block_bytes: int) -> Iterator[tuple[bytes, int]]:
    with _open_text_stream(unit.path) as f:
        if unit.start:
            f.seek(unit.start)
        left = (unit.stop - unit.start) if unit.stop >= 0 else None
        carry = b""
        while True:
            want = block_bytes if left is None else min(block_bytes, left)
            chunk = _read(f, want, unit.path) if want > 0 else b""
            if left is not None:
                left -= len(chunk)
            if not chunk:
                if carry.strip():
                    yield carry, line
                return
            data = carry + chunk
            cut = data.rfind(b"\n") + 1
            if cut == 0:
                carry = data
                continue
            block, carry = data[:cut], data[cut:]
            yield block, line
            line += block.count(b"\n")


def _read(f, n: int, path: str) -> bytes:
    try:
        return f.read(n)
    except Exception as e:  # a truncated or corrupt .gz / .zst fails in any of several ways
        raise _unreadable(path, e) from None


def _unreadable(path: str, e: Exception) -> DataselError:
    msg = (str(e).splitlines() or [""])[0] or type(e).__name__
    return DataselError(f"{path}: cannot read it ({msg}); is the file whole?")


def _arrow_json(block: bytes) -> pa.Table:
    opts = pa_json.ReadOptions(block_size=len(block) + 1, use_threads=False)
    return pa_json.read_json(io.BytesIO(block), read_options=opts)


_FIRST_LINE_NULL = re.compile(rb"\s*null[ \t\r]*(?:\n|\Z)")
Rows = int | list[int]  # line number (from 0) of a table's first row, or of each of its rows


def _read_jsonl(
    unit: Unit, on_bad: str, skipped: list[BadLine] | None
) -> Iterator[tuple[pa.Table, Rows]]:
    """The unit's blocks as tables, without their bad lines: they raise a one-line error, or
    with --on-bad-rows skip go to `skipped`. Types are kept from the unit's first rows on."""
    skipped = [] if skipped is None else skipped
    schema = None  # the types of the unit's earlier rows
    for block, first_line in _jsonl_blocks(unit):
        try:
            if _FIRST_LINE_NULL.match(block):  # pyarrow 26's JSON reader crashes on it
                raise pa.ArrowInvalid("the first line is null")
            table = _arrow_json(block)
        except pa.ArrowInvalid as e:
            table, rows = _parse_bad_block(unit.path, block, first_line, e, on_bad, skipped)
        else:
            if b"\n\n" in block or block.startswith(b"\n"):
                lines = [i for i, raw in enumerate(block.split(b"\n")) if raw.strip()]
                rows = [first_line + i for i in lines]
            else:
                rows = first_line
        bad = _bad_utf8_rows(table)
        bad.update(_null_lines(table, block, first_line, rows))
        if schema is not None and table.num_rows:
            schema = _promoted(schema, table.schema)
            bad.update(_type_changes(table, schema, set(bad)))
        if bad:
            table, rows = _drop_rows(
                unit.path, block, first_line, table, rows, bad, on_bad, skipped
            )
        if schema is not None and table.num_rows:
            table = _cast_like(table, schema)
        elif table.num_rows:
            schema = table.schema
        yield table, rows


def _parse_bad_block(
    path: str, block: bytes, first_line: int, err: Exception, on_bad: str, skipped: list
) -> tuple[pa.Table, Rows]:
    """A block Arrow refused: raise on its first bad line, or parse it without its bad lines."""
    lines = [(first_line + i + 1, raw) for i, raw in enumerate(block.split(b"\n")) if raw.strip()]
    bad = find_bad_lines(lines)
    parsed = list(range(len(lines)))  # the lines of the attempt that raised `err`
    while True:
        k = arrow_row(err)
        if k is not None and k < len(parsed) and parsed[k] not in bad:
            i = parsed[k]  # Arrow saw something the check above did not
            bad[i] = BadLine(lines[i][0], TYPE_CHANGE, arrow_message(err), lines[i][1])
        elif not bad or len(parsed) < len(lines):  # nothing more to leave out
            span = f"{lines[0][0]}-{lines[-1][0]}" if lines else str(first_line + 1)
            raise DataselError(f"{path}:{span}: {arrow_message(err)}")
        if on_bad == "error":
            raise DataselError(hint(path, bad[min(bad)]))
        parsed = [i for i in range(len(lines)) if i not in bad]
        try:
            table = _arrow_json(b"\n".join(lines[i][1] for i in parsed) + b"\n")
            break
        except pa.ArrowInvalid as e:
            err = e
    skipped.extend(bad.values())
    return table, [lines[i][0] - 1 for i in parsed]


def _bad_utf8_rows(table: pa.Table) -> dict[int, tuple[str, str]]:
    """Rows with bytes that are not UTF-8 inside a string (Arrow's JSON reader lets them
    through): {row: (reason, detail)}."""
    bad = {}
    for name in table.column_names:
        col = table.column(name)
        try:
            col.validate(full=True)
        except pa.ArrowInvalid:
            for i, value in enumerate(col):
                try:
                    value.as_py()
                except UnicodeDecodeError:
                    bad.setdefault(i, (INVALID_UTF8, f"column '{name}' is not valid UTF-8"))
    return bad


def _null_lines(table: pa.Table, block: bytes, first_line: int, rows: Rows) -> dict:
    """Lines `null`, which Arrow's JSON reader takes for a row of nulls: not an object."""
    empty = np.ones(table.num_rows, dtype=bool)
    for col in table.columns:
        empty &= pc.is_null(col).to_numpy()
    if not empty.any():
        return {}
    numbers, raw = _line_numbers(rows, table.num_rows), block.split(b"\n")
    return {
        int(i): (NOT_AN_OBJECT, "each line must be a JSON object, got NoneType")
        for i in np.flatnonzero(empty)
        if raw[numbers[i] - first_line].strip() == b"null"
    }


def _line_numbers(rows: Rows, n: int) -> list[int]:
    return rows if isinstance(rows, list) else list(range(rows, rows + n))


def _type_changes(table: pa.Table, schema: pa.Schema, known: set[int]) -> dict:
    """Rows of a later block whose value does not fit a column's type in the unit's earlier
    rows (Arrow found the types of each block on its own)."""
    bad = {}
    for field in schema:
        if field.name not in table.column_names or pa.types.is_null(field.type):
            continue
        col = table.column(field.name)
        if col.type == field.type or _casts(col, field.type):
            continue
        for i in range(table.num_rows):
            if i not in known and not _casts(col.slice(i, 1), field.type):
                bad.setdefault(
                    i,
                    (
                        TYPE_CHANGE,
                        f"type change: '{field.name}' holds {col.type} here, "
                        f"{field.type} in earlier rows",
                    ),
                )
    return bad


def _promoted(schema: pa.Schema, later: pa.Schema) -> pa.Schema:
    """`schema` with the columns that held only nulls so far (Arrow types them null, or a list
    of null) given their type in `later` rows: the earlier nulls are nulls of that type."""
    for i, field in enumerate(schema):
        j = later.get_field_index(field.name)
        if j >= 0 and field.type != later.field(j).type and _fills(field.type, later.field(j).type):
            schema = schema.set(i, field.with_type(later.field(j).type))
    return schema


def one_type_per_column(files: list[Path]) -> None:
    """Shards of one output where a column is null throughout some (a unit whose rows all had
    it null) get its type from the others, so that the folder reads as one table."""
    schemas = [pq.read_schema(f) for f in files]
    merged = pa.schema([])
    for schema in schemas:
        merged = _promoted(merged, schema)
        for field in schema:
            if merged.get_field_index(field.name) < 0:
                merged = merged.append(field)
    for f, schema in zip(files, schemas, strict=True):
        if (target := _promoted(schema, merged)) != schema:
            write_table(read_table(f).cast(target), f)


def added_columns(units: Iterable[Unit], columns: Columns, outputs: list[Path]) -> list[str]:
    """The columns of the `outputs` shards (kept and removed rows) that the rows read from
    `units` lack, but `reason`: what a step added, in output order ([] when no unit has rows)."""
    for unit in units:
        for batch in read_unit(unit, columns):
            return new_columns(batch.schema.names, outputs)
    return []


def new_columns(before: list[str], files: list[Path]) -> list[str]:
    """The columns of the Parquet `files` (in their order) that `before` lacks, but `reason`."""
    names = dict.fromkeys(n for f in files for n in pq.read_schema(f).names)
    return [n for n in names if n not in before and n != "reason"]


def _fills(old: pa.DataType, new: pa.DataType) -> bool:
    """Whether `new` is `old` with its null types made concrete (and nothing else changed)."""
    t = pa.types
    if t.is_null(old):
        return True
    if (t.is_list(old) and t.is_list(new)) or (t.is_large_list(old) and t.is_large_list(new)):
        return _fills(old.value_type, new.value_type)
    if t.is_struct(old) and t.is_struct(new):
        return [f.name for f in old] == [f.name for f in new] and all(
            _fills(a.type, b.type) for a, b in zip(old, new, strict=True)
        )
    return old == new


def _casts(col, typ: pa.DataType) -> bool:
    try:
        col.cast(typ)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
        return False
    return True


def _cast_like(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """A later block with the column types of the earlier rows, where those are known."""
    for field in schema:
        if field.name in table.column_names and not pa.types.is_null(field.type):
            i = table.column_names.index(field.name)
            if table.schema.field(i).type != field.type:
                table = table.set_column(i, field, table.column(i).cast(field.type))
    return table


def _drop_rows(
    path: str,
    block: bytes,
    first_line: int,
    table: pa.Table,
    rows: Rows,
    bad: dict[int, tuple[str, str]],
    on_bad: str,
    skipped: list,
) -> tuple[pa.Table, Rows]:
    numbers, raw = _line_numbers(rows, table.num_rows), block.split(b"\n")
    found = [BadLine(numbers[i] + 1, *bad[i], raw[numbers[i] - first_line]) for i in sorted(bad)]
    if on_bad == "error":
        raise DataselError(hint(path, found[0]))
    skipped.extend(found)
    keep = np.ones(table.num_rows, dtype=bool)
    keep[sorted(bad)] = False
    return table.filter(pa.array(keep)), [n for i, n in enumerate(numbers) if keep[i]]


def has_rows(unit: Unit, columns: Columns) -> bool:
    """Whether a unit has a row, read no further than its first one (JSONL in 64 KB steps)."""
    if unit.fmt == "jsonl":
        for block, _ in _jsonl_blocks(unit, 1 << 16):
            for raw in block.split(b"\n"):
                if raw.strip() and (columns.on_bad_rows == "error" or is_good_line(raw)):
                    return True
        return False
    if unit.rows >= 0:
        return unit.rows > 0
    return next(read_unit(unit, columns), None) is not None


TEXT_COLUMN = "text"  # the text column when none is named (--text-column)


@dataclass(frozen=True)
class Columns:
    text: str | None = TEXT_COLUMN  # None: the stage needs no text column
    id: str = "id"
    on_bad_rows: str = "error"  # JSONL lines that cannot be rows: error | skip (see bad_rows.py)


def read_unit(
    unit: Unit,
    columns: Columns = Columns(),
    batch_rows: int = 8192,
    skipped: list[BadLine] | None = None,
) -> Iterator[pa.RecordBatch]:
    """Stream one unit as record batches that carry a string `id` column and the text column.
    Bad JSONL lines left out under `columns.on_bad_rows == "skip"` are added to `skipped`."""
    if unit.fmt == "jsonl":
        tables = _read_jsonl(unit, columns.on_bad_rows, skipped)
    elif unit.fmt == "parquet":
        tables = _read_parquet(unit)
    else:
        tables = _read_arrow(unit)
    for table, rows in tables:
        if table.num_rows == 0:
            continue
        table = _check_columns(table, unit, columns)
        table = _with_id(table, unit, columns, rows)
        for batch in table.to_batches(max_chunksize=batch_rows):
            if batch.num_rows:
                yield batch


def _read_parquet(unit: Unit) -> Iterator[tuple[pa.Table, int]]:
    f = pq.ParquetFile(unit.path)
    if unit.stop <= unit.start:
        return
    row = sum(f.metadata.row_group(g).num_rows for g in range(unit.start))  # next row decoded
    begin, end = unit.first_row, unit.first_row + unit.rows
    # Batch by batch, without threads (parallel workers do not fight over pyarrow's thread
    # pool). A unit that is part of a row group decodes in small steps, so that it stops soon
    # after its own rows instead of decoding the whole group (the rows before it are decoded
    # all the same: Parquet readers cannot seek to a row); its rows are yielded in full batches.
    part = unit.rows < f.metadata.row_group(unit.start).num_rows
    step = min(PARQUET_BATCH_ROWS, max(256, unit.rows // 8)) if part else PARQUET_BATCH_ROWS
    groups = list(range(unit.start, unit.stop))
    pending: list[pa.RecordBatch] = []
    held = 0  # rows in `pending`
    batches = f.iter_batches(batch_size=step, row_groups=groups, use_threads=False)
    for batch in _checked(batches, unit.path):
        lo, hi = max(begin, row), min(end, row + batch.num_rows)
        if lo < hi:
            pending.append(batch.slice(lo - row, hi - lo))
            held += hi - lo
        row += batch.num_rows
        if held and (row >= end or held >= PARQUET_BATCH_ROWS):
            yield _joined(pending), begin
            begin, pending, held = begin + held, [], 0
        if row >= end:
            return
    if pending:
        yield _joined(pending), begin


def _joined(batches: list[pa.RecordBatch]) -> pa.Table:
    """The small steps of a partial row group as one chunk, so that a stage maps full batches
    (a copy of ~10 ms per 50 MB; mapping 1,417-row pieces was ~1.3x slower)."""
    table = pa.Table.from_batches(batches)
    return table.combine_chunks() if len(batches) > 1 else table


def _checked(batches: Iterator[pa.RecordBatch], path: str) -> Iterator[pa.RecordBatch]:
    """The batches, where corrupt pages (bad checksum or compressed data) are one line."""
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            return
        except (OSError, pa.ArrowException) as e:
            raise _unreadable(path, e) from None
        yield batch


def _read_arrow(unit: Unit) -> Iterator[tuple[pa.Table, int]]:
    with pa.memory_map(unit.path) as source:
        try:
            reader = ipc.open_stream(source)
        except pa.ArrowInvalid:
            try:
                reader = ipc.open_file(source)
            except (OSError, pa.ArrowException) as e:
                raise _unreadable(unit.path, e) from None
            batches = (reader.get_batch(i) for i in range(reader.num_record_batches))
        else:
            batches = iter(reader)
        row = 0
        lo, hi = (unit.first_row, unit.first_row + unit.rows) if unit.rows >= 0 else (0, None)
        for batch in _checked(batches, unit.path):
            a, b = max(lo - row, 0), batch.num_rows if hi is None else min(hi - row, batch.num_rows)
            if a < b:
                yield pa.Table.from_batches([batch.slice(a, b - a)]), row + a
            row += batch.num_rows
            if hi is not None and row >= hi:
                return


def _check_columns(table: pa.Table, unit: Unit, columns: Columns) -> pa.Table:
    """The table, its text column checked (a string_view one is read as string)."""
    if columns.text is None:  # a stage that reads other columns (pick)
        return table
    if columns.text not in table.column_names:
        have = ", ".join(table.column_names)
        raise DataselError(
            f"{unit.path}: no text column '{columns.text}'; columns are: {have} (use --text-column)"
        )
    typ = table.schema.field(columns.text).type
    if pa.types.is_string_view(typ):
        i = table.column_names.index(columns.text)
        return table.set_column(i, columns.text, table.column(i).cast(pa.string()))
    if not (pa.types.is_string(typ) or pa.types.is_large_string(typ)):
        raise DataselError(f"{unit.path}: text column '{columns.text}' holds {typ}, not strings")
    return table


def _with_id(table: pa.Table, unit: Unit, columns: Columns, rows) -> pa.Table:
    if columns.id in table.column_names:
        ids = table.column(columns.id)
        if ids.null_count:
            raise DataselError(f"{unit.path}: id column '{columns.id}' has missing values")
        ids = ids.cast(pa.string())
        if columns.id == "id":
            return table.set_column(table.column_names.index("id"), "id", ids)
        if "id" in table.column_names:
            raise DataselError(f"{unit.path}: has both 'id' and --id-column '{columns.id}'")
        return table.add_column(0, "id", ids)
    if "id" in table.column_names:
        raise DataselError(f"{unit.path}: has a column 'id' but ids were asked from '{columns.id}'")
    numbers = rows if isinstance(rows, list) else range(rows, rows + table.num_rows)
    ids = pa.array([f"{unit.source}:{n}" for n in numbers], pa.string())
    return table.add_column(0, "id", ids)


def read_table(path: Path, columns: list[str] | None = None) -> pa.Table:
    """One Parquet file, whole or some columns. `pq.read_table` would import pyarrow.dataset,
    ~40 ms the first time in each process: that was on every worker's critical path."""
    return pq.ParquetFile(path).read(columns=columns)


# --------------------------------------------------------------------------- writing


# Strings longer than this on average are written without a dictionary.
SHORT_STRING = 64


def write_table(table: pa.Table, path: Path) -> None:
    """Write a Parquet file atomically: a temp file in the same folder, then rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(
        table,
        tmp,
        compression="zstd",
        row_group_size=64 * 1024,
        **_column_options(table),
    )
    os.replace(tmp, path)


def _column_options(table: pa.Table) -> dict:
    """Min/max statistics and dictionary encoding only where they pay: no statistics for strings
    (a text column's min and max help no reader, and computing them took ~15% of writing a
    shard), no dictionary for long strings (texts rarely repeat, and trying took ~25%)."""
    stats, dictionary = [], []
    for field, column in zip(table.schema, table.columns, strict=True):
        if _is_string(field.type):
            if (pc.sum(pc.binary_length(column)).as_py() or 0) <= SHORT_STRING * len(column):
                dictionary.append(field.name)  # labels, sources, ids: short and often repeated
        else:
            dictionary.append(field.name)
            if not pa.types.is_nested(field.type):
                stats.append(field.name)
    return {"write_statistics": stats, "use_dictionary": dictionary}


def _is_string(type_: pa.DataType) -> bool:
    t = pa.types
    return (
        t.is_string(type_)
        or t.is_large_string(type_)
        or t.is_binary(type_)
        or t.is_large_binary(type_)
    )


class ShardWriter:
    """Stream batches into one Parquet shard; the file appears only when complete."""

    def __init__(self, path: Path, compression: str = "zstd"):
        self.path, self.compression = path, compression
        self.tmp = path.with_name(path.name + ".tmp")
        self.writer: pq.ParquetWriter | None = None
        self.rows = 0

    def write(self, table: pa.Table | pa.RecordBatch) -> None:
        if isinstance(table, pa.RecordBatch):
            table = pa.Table.from_batches([table])
        if self.writer is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.writer = pq.ParquetWriter(
                self.tmp,
                table.schema,
                compression=self.compression,
                **_column_options(table),
            )
        elif table.schema != self.writer.schema:
            schema = _promoted(self.writer.schema, table.schema)
            if schema != self.writer.schema:
                self._promote(schema, table)
            table = _conform(table, self.writer.schema, self.path)
        self.writer.write_table(table)
        self.rows += table.num_rows

    def _promote(self, schema: pa.Schema, table: pa.Table) -> None:
        """Columns null in the rows written so far have a type now: rewrite those rows with it
        (once per such column and shard)."""
        self.writer.close()
        done = pq.ParquetFile(self.tmp).read().cast(schema)
        self.writer = pq.ParquetWriter(
            self.tmp,
            schema,
            compression=self.compression,
            **_column_options(_conform(table, schema, self.path)),
        )
        self.writer.write_table(done)

    def close(self, empty_schema: pa.Schema | None = None) -> int:
        if self.writer is None:
            schema = empty_schema if empty_schema is not None else pa.schema([("id", pa.string())])
            write_table(schema.empty_table(), self.path)
            return 0
        self.writer.close()
        os.replace(self.tmp, self.path)
        return self.rows


def _conform(table: pa.Table, schema: pa.Schema, where: Path) -> pa.Table:
    if set(table.column_names) != set(schema.names):
        missing = set(schema.names) - set(table.column_names)
        extra = set(table.column_names) - set(schema.names)
        for name in missing:
            table = table.append_column(name, pa.nulls(table.num_rows, schema.field(name).type))
        if extra:
            raise DataselError(
                f"{where}: rows have columns {sorted(extra)} that earlier rows did not"
            )
    try:
        return table.select(schema.names).cast(schema)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
        raise DataselError(f"{where}: a column changes type between rows ({e})") from None


def write_json(obj, path: Path) -> None:
    """Write JSON atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")
    os.replace(tmp, path)


def unit_dict(unit: Unit) -> dict:
    return asdict(unit)
