import gzip
import json

import pyarrow as pa
import pyarrow.ipc as ipc
import pytest
import zstandard

from datasel.errors import DataselError
from datasel.io import Columns, find_files, plan_units, read_unit
from tests.conftest import sample_rows, write_jsonl, write_parquet

ROWS = [{"text": f"document number {i}", "n": i} for i in range(50)]


def read_all(src, **kw):
    units = plan_units(src, **kw)
    batches = [b for u in units for b in read_unit(u, Columns())]
    return pa.Table.from_batches(batches)


def test_formats_read_alike(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", ROWS)
    with gzip.open(tmp_path / "b.jsonl.gz", "wt") as f:
        f.writelines(json.dumps(r) + "\n" for r in ROWS)
    (tmp_path / "c.jsonl.zst").write_bytes(
        zstandard.ZstdCompressor().compress((tmp_path / "a.jsonl").read_bytes())
    )
    write_parquet(tmp_path / "d.parquet", ROWS)
    for name in ["a.jsonl", "b.jsonl.gz", "c.jsonl.zst", "d.parquet"]:
        t = read_all(tmp_path / name)
        assert t.column("text").to_pylist() == [r["text"] for r in ROWS], name
        assert t.column("id").to_pylist()[:2] == [f"{name}:0", f"{name}:1"]
    assert read_all(tmp_path).num_rows == 4 * len(ROWS)
    assert read_all(str(tmp_path / "*.jsonl*")).num_rows == 3 * len(ROWS)


def test_hf_save_to_disk_folder(tmp_path):
    table = pa.Table.from_pylist(ROWS)
    with ipc.new_stream(tmp_path / "data-00000-of-00001.arrow", table.schema) as w:
        w.write_table(table)
    (tmp_path / "state.json").write_text(
        json.dumps({"_data_files": [{"filename": "data-00000-of-00001.arrow"}]})
    )
    (tmp_path / "dataset_info.json").write_text("{}")
    assert read_all(tmp_path).column("n").to_pylist() == list(range(50))


def test_jsonl_split_into_units_keeps_rows_and_ids(tmp_path):
    rows = sample_rows(300)
    write_jsonl(tmp_path / "big.jsonl", rows)
    whole = read_all(tmp_path / "big.jsonl")
    units = plan_units(tmp_path / "big.jsonl", shard_bytes=50_000)
    assert len(units) > 5
    split = read_all(tmp_path / "big.jsonl", shard_bytes=50_000)
    assert split.equals(whole)
    assert whole.column("id").to_pylist() == [r["id"] for r in rows]  # the input's own ids


@pytest.mark.parametrize(
    "content",
    [
        b'{"text":"a"}\n{"text":"b"}',
        b'{"text":"a"}\n{"text":"b"}\n',
        b'{"text":"a"}\r\n{"text":"b"}\r\n',
    ],
)
@pytest.mark.parametrize("shard_bytes", [1, 5, 100])
def test_jsonl_cut_at_any_size_keeps_every_line_once(tmp_path, content, shard_bytes):
    (tmp_path / "x.jsonl").write_bytes(content)
    units = plan_units(tmp_path / "x.jsonl", shard_bytes=shard_bytes)
    assert sum(u.rows for u in units) == 2
    assert [u.first_row for u in units] == ([0, 1] if shard_bytes < 12 else [0])
    assert read_all(tmp_path / "x.jsonl", shard_bytes=shard_bytes).column("text").to_pylist() == [
        "a",
        "b",
    ]


def test_parquet_split_by_row_groups(tmp_path):
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(ROWS), tmp_path / "x.parquet", row_group_size=10)
    assert len(plan_units(tmp_path / "x.parquet", shard_rows=20)) == 3
    assert read_all(tmp_path / "x.parquet", shard_rows=20).column("n").to_pylist() == list(
        range(50)
    )


@pytest.mark.parametrize("own_ids", [True, False])
def test_big_parquet_row_groups_cut_into_row_ranges(tmp_path, monkeypatch, own_ids):
    import pyarrow.parquet as pq

    import datasel.io

    monkeypatch.setattr(datasel.io, "PARQUET_BATCH_ROWS", 7)  # ranges start and end mid-batch
    table = pa.Table.from_pylist(sample_rows(120))
    if not own_ids:  # ids derived from the row number: each range must count its rows right
        table = table.drop_columns(["id"])
    pq.write_table(table, tmp_path / "x.parquet", row_group_size=50)
    whole = read_all(tmp_path / "x.parquet")
    units = plan_units(tmp_path / "x.parquet", shard_bytes=5_000)
    assert len(units) > 6 and sum(u.rows for u in units) == 120
    assert [u.first_row for u in units] == sorted({u.first_row for u in units})
    split = read_all(tmp_path / "x.parquet", shard_bytes=5_000)
    assert split.equals(whole)
    assert split.column("id").to_pylist() == (
        table.column("id").to_pylist() if own_ids else [f"x.parquet:{i}" for i in range(120)]
    )


@pytest.mark.parametrize("workers", [2, 3, 4])
def test_one_big_row_group_makes_one_unit_per_worker_read_in_full_batches(
    tmp_path, monkeypatch, workers
):
    import pyarrow.parquet as pq

    import datasel.engine.plan as plan
    from datasel.engine import RunOptions
    from datasel.stages.dedup import Dedup

    monkeypatch.setattr(plan, "MIN_UNIT_BYTES", 1)
    rows = [{"text": "word " * (1 + i % 17)} for i in range(3001)]  # an odd number of bytes
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "x.parquet")  # one row group
    shard, cut = plan.unit_bytes(tmp_path / "x.parquet", Dedup(), RunOptions(workers=workers))
    units = plan_units(tmp_path / "x.parquet", shard_bytes=shard, cut_bytes=cut)
    assert len(units) == workers  # not workers + 1, which leaves one worker two units
    sizes = [b.num_rows for b in read_unit(units[0], Columns(), batch_rows=500)]
    assert sizes[0] == 500  # not the small decoding steps of a partial row group


@pytest.mark.parametrize(
    "content, message",
    [
        (b'{"text": "ok"}\n{"text": "broken"\n', "bad.jsonl:2: malformed JSON"),
        (b'{"text": "ok"}\n{"text": "caf\xe9"}\n', "bad.jsonl:2: column 'text' is not valid UTF-8"),
        (b'{"text": "ok"}\n[1, 2]\n', "bad.jsonl:2: each line must be a JSON object"),
        (b'{"body": "no text here", "x": 1}\n', "no text column 'text'; columns are: body, x"),
    ],
)
def test_bad_input_gives_one_line_error(tmp_path, content, message):
    (tmp_path / "bad.jsonl").write_bytes(content)
    with pytest.raises(DataselError) as err:
        read_all(tmp_path / "bad.jsonl")
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_missing_and_empty_inputs(tmp_path):
    with pytest.raises(DataselError, match="no such file"):
        find_files(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataselError, match="holds no"):
        find_files(tmp_path / "empty")


def test_string_view_text_is_read_as_string(tmp_path):
    import pyarrow.parquet as pq

    table = pa.Table.from_pylist(ROWS)
    table = table.set_column(0, "text", table.column("text").cast(pa.string_view()))
    pq.write_table(table, tmp_path / "v.parquet")
    got = read_all(tmp_path / "v.parquet")
    assert got.schema.field("text").type == pa.string()
    assert got.column("text").to_pylist() == [r["text"] for r in ROWS]


@pytest.mark.parametrize(
    "name, content",
    [
        ("cut.jsonl.gz", gzip.compress(b'{"text": "a"}\n' * 1000)[:-20]),  # truncated
        ("plain.jsonl.gz", b'{"text": "not gzip"}\n'),
        ("plain.jsonl.zst", b'{"text": "not zstd"}\n'),
    ],
)
def test_corrupt_compressed_jsonl_gives_one_line_error(tmp_path, name, content):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(DataselError, match=f"{name}: cannot read it"):
        read_all(tmp_path / name)


def test_parquet_with_corrupt_pages_gives_one_line_error(tmp_path):
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(sample_rows(300)), tmp_path / "x.parquet")
    data = bytearray((tmp_path / "x.parquet").read_bytes())
    for i in range(len(data) // 3, len(data) // 3 + 2000):  # inside the data, footer intact
        data[i] ^= 0x5A
    (tmp_path / "x.parquet").write_bytes(bytes(data))
    with pytest.raises(DataselError, match="x.parquet: cannot read it"):
        read_all(tmp_path / "x.parquet")


@pytest.mark.parametrize("keep", [0.5, 0.0])  # cut in the middle; not Arrow at all
def test_broken_arrow_file_gives_one_line_error(tmp_path, keep):
    table = pa.Table.from_pylist(sample_rows(300))
    with ipc.new_stream(tmp_path / "x.arrow", table.schema) as w:
        w.write_table(table)
    data = (tmp_path / "x.arrow").read_bytes()
    (tmp_path / "x.arrow").write_bytes(data[: int(len(data) * keep)] or b"not arrow at all")
    with pytest.raises(DataselError, match="x.arrow: cannot read it"):
        read_all(tmp_path / "x.arrow")


# --------------------------------------------------------------------------- bad rows

GOOD = [{"text": f"line {i}", "score": i} for i in range(6)]
BAD_LINES = {  # a bad line, its reason, and what the error says about it
    "malformed": (b'{"text": "broken", "score": 7\n', "malformed_json", "malformed JSON"),
    "utf8": (b'{"text": "caf\xe9", "score": 7}\n', "invalid_utf8", "not valid UTF-8"),
    "type": (b'{"text": "typed", "score": "x"}\n', "type_change", "type change: 'score'"),
    "array": (b"[1, 2]\n", "not_an_object", "each line must be a JSON object"),
    "null": (b"null\n", "not_an_object", "each line must be a JSON object"),  # Arrow: a row
}


def write_with_bad_line(path, bad: bytes, at: int = 3) -> None:
    lines = [json.dumps(r).encode() + b"\n" for r in GOOD]
    lines.insert(at, bad)
    data = b"".join(lines)
    path.write_bytes(gzip.compress(data) if path.name.endswith(".gz") else data)


@pytest.mark.parametrize("kind", sorted(BAD_LINES))
@pytest.mark.parametrize("name", ["x.jsonl", "x.jsonl.gz"])
def test_bad_line_is_an_error_naming_its_line_or_is_skipped(tmp_path, kind, name):
    bad, reason, message = BAD_LINES[kind]
    write_with_bad_line(tmp_path / name, bad)
    with pytest.raises(DataselError) as err:
        read_all(tmp_path / name)
    assert f"{name}:4: " in str(err.value) and message in str(err.value)
    assert "\n" not in str(err.value)
    skipped = []
    units = plan_units(tmp_path / name)
    columns = Columns(on_bad_rows="skip")
    got = pa.Table.from_batches([b for u in units for b in read_unit(u, columns, skipped=skipped)])
    assert got.column("text").to_pylist() == [r["text"] for r in GOOD]
    # ids stay those of the lines: the skipped line does not shift the ones after it
    assert got.column("id").to_pylist()[2:4] == [f"{name}:2", f"{name}:4"]
    assert got.schema.field("score").type == pa.int64()
    assert [(b.line, b.reason, b.raw) for b in skipped] == [(4, reason, bad.rstrip(b"\n"))]
    assert message in skipped[0].detail


def test_a_file_that_starts_with_null_lines_is_read_not_crashed_on(tmp_path):
    """pyarrow 26's JSON reader segfaults on a block whose first line is `null`."""
    (tmp_path / "n.jsonl").write_bytes(b"\n null\nnull\n" + b'{"text": "a"}\n')
    with pytest.raises(DataselError, match=r"n\.jsonl:2: each line must be a JSON object"):
        read_all(tmp_path / "n.jsonl")
    skipped = []
    (unit,) = plan_units(tmp_path / "n.jsonl")
    got = list(read_unit(unit, Columns(on_bad_rows="skip"), skipped=skipped))
    assert [b.column("id").to_pylist() for b in got] == [["n.jsonl:3"]]
    assert [(b.line, b.reason) for b in skipped] == [(2, "not_an_object"), (3, "not_an_object")]


def test_type_change_far_into_a_file_names_its_absolute_line(tmp_path, monkeypatch):
    """In a later block of the same read, and across blocks (Arrow types each block alone)."""
    import datasel.io as dio

    monkeypatch.setattr(dio, "BLOCK_BYTES", 300)
    rows = [{"text": f"document {i}", "score": i} for i in range(200)]
    lines = [json.dumps(r) for r in rows]
    lines[150] = json.dumps({"text": "in a block", "score": "x"})  # after numbers in its block
    write_jsonl(tmp_path / "a.jsonl", [])
    (tmp_path / "a.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataselError, match=r"a\.jsonl:151: type change: 'score' holds a string"):
        read_all(tmp_path / "a.jsonl")
    # a whole block of strings after blocks of numbers: each line is named
    rows = [{"text": f"doc {i}", "score": i} for i in range(100)]
    rows += [{"text": f"late {i}", "score": f"s{i}"} for i in range(20)]
    for r in rows:  # every line 60 bytes: blocks of exactly 10 lines
        r["text"] += " " * (59 - len(json.dumps(r)))
    lines = [json.dumps(r) for r in rows]
    monkeypatch.setattr(dio, "BLOCK_BYTES", 10 * (len(lines[0]) + 1))
    (tmp_path / "b.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataselError, match=r"b\.jsonl:101: type change: 'score' holds string"):
        read_all(tmp_path / "b.jsonl")
    skipped = []
    (unit,) = plan_units(tmp_path / "b.jsonl")
    got = [b for b in read_unit(unit, Columns(on_bad_rows="skip"), skipped=skipped)]
    assert sum(b.num_rows for b in got) == 100
    assert [b.line for b in skipped] == list(range(101, 121))
    assert {b.reason for b in skipped} == {"type_change"}


def test_skipping_is_the_same_on_every_read(tmp_path):
    """A stage reads a unit more than once (sample, map, final write): each read leaves out
    the same lines, so ids and rows agree."""
    data = b"".join(
        json.dumps(r).encode() + b"\n" if i % 7 else b'{"text": oops}\n'
        for i, r in enumerate(sample_rows(300))
    )
    (tmp_path / "m.jsonl").write_bytes(data)
    columns = Columns(on_bad_rows="skip")
    reads = []
    for _ in range(2):
        units = plan_units(tmp_path / "m.jsonl", shard_bytes=20_000)
        reads.append([b for u in units for b in read_unit(u, columns, batch_rows=64)])
    ids = [pa.Table.from_batches(r).column("id").to_pylist() for r in reads]
    assert ids[0] == ids[1] and len(ids[0]) == 300 - 43


def test_a_column_null_in_the_first_block_takes_the_type_of_later_rows(tmp_path, monkeypatch):
    """`"score": null` throughout the first block, numbers later: the nulls are nulls of a
    number column, not a type change; a string after the numbers still is one, with its line."""
    import pyarrow.parquet as pq

    import datasel
    import datasel.io as dio
    from datasel.stages.dedup import Dedup

    rows = [{"text": f"document {i}", "score": None} for i in range(400)]
    rows += [{"text": f"document {i}", "score": i / 2} for i in range(400, 500)]
    write_jsonl(tmp_path / "a.jsonl", rows)
    monkeypatch.setattr(dio, "BLOCK_BYTES", 2000)  # ~50 lines a block
    m = datasel.run(Dedup(), tmp_path / "a.jsonl", tmp_path / "out", workers=1, quiet=True)
    assert m["rows_in"] == 500 == m["kept"] + m["removed_total"] and m["kept"] == 500
    got = pq.read_table(sorted((tmp_path / "out").glob("part-*.parquet")))
    assert got.schema.field("score").type == pa.float64()
    assert got.column("score").to_pylist() == [r["score"] for r in rows]
    # null throughout the first units (shards): the output still reads as one table, and a
    # select over the column sees numbers and missing values, not a type clash
    from datasel.stages.filter import Filter

    for stage, kept in ((Dedup(), 500), (Filter(min=["score=220"]), 60)):
        out = tmp_path / f"units-{stage.name}"
        m = datasel.run(stage, tmp_path / "a.jsonl", out, quiet=True, shard_bytes=5000)
        assert m["shards"] > 2 and m["kept"] == kept and m["rows_in"] == 500
        for folder in (out, out / "_removed"):
            if list(folder.glob("part-*.parquet")):
                assert pq.read_table(folder).schema.field("score").type == pa.float64()
    assert m["removed"] == {"filter:score missing": 400, "filter:score<220": 40}
    # a real type change after the promotion is named by its absolute line, or skipped
    rows[480]["score"] = "x"
    rows += [{"text": f"late {i}", "score": f"s{i}"} for i in range(100)]  # whole blocks
    write_jsonl(tmp_path / "b.jsonl", rows)
    with pytest.raises(DataselError, match=r"b\.jsonl:481: type change: 'score' holds"):
        datasel.run(Dedup(), tmp_path / "b.jsonl", tmp_path / "o2", workers=1, quiet=True)
    m = datasel.run(
        Dedup(), tmp_path / "b.jsonl", tmp_path / "o3", workers=1, quiet=True, on_bad_rows="skip"
    )
    assert m["kept"] == 499 and m["rows_in"] == 600
    assert m["skipped"] == {"type_change": 101}
