import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

import datasel
from datasel.errors import DataselError
from datasel.stages.embed import Embed
from tests.conftest import read_dataset, read_removed, sample_rows, write_jsonl


def make_input(tmp_path, n_files=3):
    rows = sample_rows(600)
    rows = rows + [dict(r, id=r["id"] + "-copy") for r in rows[:40]]  # exact duplicates
    for i in range(n_files):
        write_jsonl(tmp_path / "in" / f"f{i}.jsonl", rows[i::n_files])
    return tmp_path / "in"


def test_counts_and_rerun_is_noop(tmp_path, capsys):
    src = make_input(tmp_path)
    m = datasel.run(datasel.Dedup(), src, tmp_path / "out", workers=2, quiet=True)
    assert m["rows_in"] == 640 == m["kept"] + m["removed_total"]
    assert m["removed"].get("exact", 0) >= 40
    assert read_dataset(tmp_path / "out").num_rows == m["kept"]
    assert read_removed(tmp_path / "out").num_rows == m["removed_total"]
    assert not (tmp_path / "out" / "_work").exists()
    before = (tmp_path / "out" / "part-00000.parquet").stat().st_mtime_ns
    again = datasel.run(datasel.Dedup(), src, tmp_path / "out")
    assert "already done" in capsys.readouterr().err
    assert again["key"] == m["key"]
    assert (tmp_path / "out" / "part-00000.parquet").stat().st_mtime_ns == before


def test_refuses_another_runs_output(tmp_path):
    src = make_input(tmp_path)
    datasel.run(datasel.Dedup(), src, tmp_path / "out", quiet=True)
    with pytest.raises(DataselError, match="another run"):
        datasel.run(datasel.Dedup(threshold=0.7), src, tmp_path / "out", quiet=True)
    m = datasel.run(datasel.Dedup(threshold=0.7), src, tmp_path / "out", quiet=True, overwrite=True)
    assert m["params"]["threshold"] == 0.7
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(DataselError, match="not empty"):
        datasel.run(datasel.Dedup(), src, tmp_path / "other", quiet=True)


@pytest.mark.parametrize("content", ["", "\n\n"])
def test_empty_input_gives_an_empty_step(tmp_path, content):
    (tmp_path / "e.jsonl").write_text(content)
    m = datasel.run(datasel.Dedup(), tmp_path / "e.jsonl", tmp_path / "out", quiet=True)
    assert (m["rows_in"], m["kept"], m["removed_total"]) == (0, 0, 0)
    assert m["warnings"] == [f"no rows in {tmp_path / 'e.jsonl'}: the step is empty"]
    assert read_dataset(tmp_path / "out").num_rows == 0  # a valid, readable shard
    again = datasel.run(datasel.Dedup(), tmp_path / "out", tmp_path / "next", quiet=True)
    assert again["rows_in"] == 0 and (tmp_path / "next" / "part-00000.parquet").exists()


BAD = {  # a bad line for every 11th line: (line, reason)
    0: (b'{"text": "cut off', "malformed_json"),
    1: (b'{"text": "caf\xe9 au lait", "len": 3}', "invalid_utf8"),
    2: (b'{"text": "a string length", "len": "long"}', "type_change"),
    3: (b"[1, 2, 3]", "not_an_object"),
}


def make_bad_input(tmp_path):
    """Two files (plain and gzip) of real documents with a bad line every 11 lines."""
    import gzip

    rows = [{"text": r["text"], "len": len(r["text"])} for r in sample_rows(440)]
    rows += [dict(r, len=r["len"] + 1) for r in rows[:30]]  # exact duplicates for dedup
    expected = Counter()
    for k, name in enumerate(["a.jsonl", "b.jsonl.gz"]):
        lines = []
        for i, r in enumerate(rows[k::2]):
            if i % 11 == 5:
                bad, reason = BAD[(i // 11) % 4]
                lines.append(bad)
                expected[reason] += 1
            lines.append(json.dumps(r).encode())
        data = b"\n".join(lines) + b"\n"
        (tmp_path / "in").mkdir(exist_ok=True)
        (tmp_path / "in" / name).write_bytes(gzip.compress(data) if k else data)
    return tmp_path / "in", len(rows), expected


@pytest.mark.parametrize(
    "stage",
    [datasel.Dedup(), datasel.Filter(min=["len=300"]), Embed(model="hashing", dim=16)],
    ids=["dedup", "filter", "embed"],
)
def test_skipped_bad_rows_are_counted_and_kept_with_a_reason(tmp_path, stage):
    """Every input line is kept, removed or skipped; each skip has its file, line, reason and
    raw bytes. Covers a select stage, one that re-reads its input, and a map-only stage."""
    src, good, expected = make_bad_input(tmp_path)
    with pytest.raises(DataselError, match=r"/[ab]\.jsonl(\.gz)?:6: malformed JSON"):
        datasel.run(stage, src, tmp_path / "strict", quiet=True)
    m = datasel.run(stage, src, tmp_path / "out", quiet=True, workers=2, on_bad_rows="skip")
    assert m["rows_in"] == good + sum(expected.values())
    assert m["rows_in"] == m["kept"] + m["removed_total"] + m["skipped_total"]
    assert m["skipped"] == dict(expected) and m["on_bad_rows"] == "skip"
    skipped = pa.concat_tables(
        pq.read_table(p) for p in sorted((tmp_path / "out" / "_skipped").glob("*.parquet"))
    )
    assert skipped.num_rows == m["skipped_total"]
    assert Counter(skipped.column("reason").to_pylist()) == expected
    raws = {bad for bad, _ in BAD.values()}
    assert set(skipped.column("raw").to_pylist()) == raws
    first = skipped.filter(pc.equal(skipped.column("file"), str(src / "a.jsonl"))).slice(0, 1)
    assert first.column("line").to_pylist() == [6]  # 1-based line in its file
    kept = read_dataset(tmp_path / "out")
    removed = read_removed(tmp_path / "out")
    seen = kept.num_rows + (removed.num_rows if removed is not None else 0)
    assert seen == good and kept.schema.field("len").type == pa.int64()
    from datasel.report import build_report

    page = build_report(tmp_path / "out").read_text()
    assert f"skipped type_change: {expected['type_change']}" in page


@pytest.mark.parametrize("point", ["stage:1", "apply:0"])
def test_skipping_resumes_to_identical_output(tmp_path, point):
    src, _, _ = make_bad_input(tmp_path)
    code = (
        "import sys, datasel; datasel.run(datasel.Dedup(), sys.argv[1], sys.argv[2], "
        "workers=1, quiet=True, on_bad_rows='skip')"
    )
    subprocess.run([sys.executable, "-c", code, src, tmp_path / "ref"], check=True)
    env = dict(os.environ, DATASEL_KILL_AT=point)
    killed = subprocess.run([sys.executable, "-c", code, src, tmp_path / "out"], env=env)
    assert killed.returncode == -9
    env.pop("DATASEL_KILL_AT")
    subprocess.run([sys.executable, "-c", code, src, tmp_path / "out"], env=env, check=True)
    assert output_bytes(tmp_path / "out") == output_bytes(tmp_path / "ref")
    assert any("_skipped" in name for name in output_bytes(tmp_path / "ref"))
    ref, out = (json.loads((tmp_path / d / "_manifest.json").read_text()) for d in ("ref", "out"))
    assert (out["skipped"], out["kept"]) == (ref["skipped"], ref["kept"])


def output_bytes(path):
    files = sorted(p for p in path.rglob("*.parquet"))
    return {str(p.relative_to(path)): p.read_bytes() for p in files}


@pytest.mark.parametrize("point", ["stage:0", "stage:1", "decide:1", "select", "apply:1"])
def test_sigkill_then_resume_gives_identical_output(tmp_path, point):
    src = make_input(tmp_path)
    datasel.run(datasel.Dedup(), src, tmp_path / "ref", workers=1, quiet=True)
    code = f"import datasel; datasel.run(datasel.Dedup(), {str(src)!r}, {str(tmp_path / 'out')!r}, workers=1, quiet=True)"
    env = dict(os.environ, DATASEL_KILL_AT=point)
    killed = subprocess.run([sys.executable, "-c", code], env=env)
    assert killed.returncode == -9
    assert not (tmp_path / "out" / "_manifest.json").exists()
    env.pop("DATASEL_KILL_AT")
    subprocess.run([sys.executable, "-c", code], env=env, check=True)
    assert output_bytes(tmp_path / "out") == output_bytes(tmp_path / "ref")
    m = json.loads((tmp_path / "out" / "_manifest.json").read_text())
    assert m["rows_in"] == m["kept"] + m["removed_total"]


def _processes_running(marker: str, wait: float = 5.0) -> list[int]:
    """Pids whose command line holds `marker`, after waiting up to `wait` s for them to end."""
    deadline = time.time() + wait
    while True:
        pids = []
        for proc in Path("/proc").glob("[0-9]*"):
            try:
                if marker in (proc / "cmdline").read_bytes().decode(errors="replace"):
                    pids.append(int(proc.name))
            except OSError:
                continue
        if not pids or time.time() > deadline:
            return pids
        time.sleep(0.1)


def test_units_cut_for_workers_and_resume_keeps_the_first_plan(tmp_path):
    """With several workers, files are cut into more units than files (balance); a run killed
    with 2 workers and resumed with 1 keeps the first plan, and the rows are those of 1 worker."""
    src = make_input(tmp_path, n_files=2)
    ref = datasel.run(datasel.Dedup(), src, tmp_path / "ref", workers=1, quiet=True)
    code = (
        "import sys, datasel, datasel.engine.plan as plan; plan.MIN_UNIT_BYTES = 20_000; "
        f"datasel.run(datasel.Dedup(), {str(src)!r}, {str(tmp_path / 'out')!r}, "
        "workers=int(sys.argv[1]), quiet=True)"
    )
    env = dict(os.environ, DATASEL_KILL_AT="stage:2")
    assert subprocess.run([sys.executable, "-c", code, "2"], env=env).returncode == -9
    assert not _processes_running(str(tmp_path / "out"))  # its workers died with it
    env.pop("DATASEL_KILL_AT")
    subprocess.run([sys.executable, "-c", code, "1"], env=env, check=True)
    m = json.loads((tmp_path / "out" / "_manifest.json").read_text())
    assert len(list((tmp_path / "out").glob("part-*.parquet"))) > 2
    assert m["kept"] == ref["kept"] and m["removed"] == ref["removed"]
    kept = sorted(read_dataset(tmp_path / "out").column("id").to_pylist())
    assert kept == sorted(read_dataset(tmp_path / "ref").column("id").to_pylist())


def test_ctrl_c_stops_the_workers_and_a_rerun_resumes(tmp_path):
    src = make_input(tmp_path, n_files=2)
    ref = datasel.run(datasel.Dedup(), src, tmp_path / "ref", workers=1, quiet=True)
    code = (
        "import sys, datasel, datasel.engine.plan as plan; plan.MIN_UNIT_BYTES = 20_000; "
        f"datasel.run(datasel.Dedup(), {str(src)!r}, {str(tmp_path / 'out')!r}, workers=2)"
    )
    env = dict(os.environ, DATASEL_KILL_AT="stage:1", DATASEL_KILL_SIGNAL="SIGINT")
    # before: the interrupted run waited forever for its idle workers at exit
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, timeout=60)
    assert run.returncode != 0 and b"run the same command again to resume" in run.stderr
    assert not _processes_running(str(tmp_path / "out"))
    env.pop("DATASEL_KILL_AT")
    subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True)
    m = json.loads((tmp_path / "out" / "_manifest.json").read_text())
    assert m["kept"] == ref["kept"] and m["removed"] == ref["removed"]


def test_sample_spreads_through_sorted_files(tmp_path):
    """A file sorted by source is sampled through, not at its head, whatever its format."""
    import gzip

    from datasel.io import Columns, plan_units
    from datasel.stage import Context

    rows = [
        {"id": f"{s}{i}", "text": f"{s} text {i}", "src": s} for s in "abc" for i in range(1000)
    ]
    write_jsonl(tmp_path / "sorted.jsonl", rows)
    with gzip.open(tmp_path / "sorted.jsonl.gz", "wt") as f:  # length unknown until read
        f.writelines(json.dumps(r) + "\n" for r in rows)
    for name in ("sorted.jsonl", "sorted.jsonl.gz"):
        ctx = Context(columns=Columns("text"), work=tmp_path, units=plan_units(tmp_path / name))
        sample = ctx.sample(300)
        assert sample.num_rows == 300
        counts = {s: sample.column("src").to_pylist().count(s) for s in "abc"}
        assert counts == {"a": 100, "b": 100, "c": 100}, name
        assert sample.equals(ctx.sample(300))  # deterministic
        assert ctx.first_rows().column("id").to_pylist() == ["a0"]


def test_a_task_that_cannot_reach_a_worker_fails_in_one_line():
    from datasel.engine import LocalExecutor

    with LocalExecutor(2) as ex, pytest.raises(DataselError, match="use --workers 1"):
        list(ex.map_unordered(lambda x: x, [(1,), (2,)]))  # a lambda cannot be pickled


def test_a_worker_that_dies_is_a_one_line_error():
    from datasel.engine import LocalExecutor

    with LocalExecutor(2) as ex, pytest.raises(DataselError, match="a worker process died"):
        list(ex.map_unordered(os._exit, [(1,), (1,)]))  # as the OOM killer would end it


def test_output_that_is_a_file_or_inside_the_input_is_refused(tmp_path):
    src = make_input(tmp_path, n_files=2)
    (tmp_path / "file").write_text("x")
    with pytest.raises(DataselError, match="is a file"):
        datasel.run(datasel.Dedup(), src, tmp_path / "file", quiet=True)
    with pytest.raises(DataselError, match="inside the input folder"):
        datasel.run(datasel.Dedup(), src, src / "out", quiet=True)
    # an _-folder is never read as input: allowed, and a rerun is a no-op
    first = datasel.run(datasel.Dedup(), src, src / "_out", quiet=True)
    assert datasel.run(datasel.Dedup(), src, src / "_out", quiet=True) == first


def test_two_runs_never_write_one_folder_at_once(tmp_path):
    from datasel.lock import FolderLock

    src = make_input(tmp_path, n_files=2)
    (tmp_path / "out").mkdir()
    with FolderLock(tmp_path / "out" / "_lock"):  # as another process running there would
        with pytest.raises(DataselError, match="another run holds the lock"):
            datasel.run(datasel.Dedup(), src, tmp_path / "out", quiet=True)
    m = datasel.run(datasel.Dedup(), src, tmp_path / "out", quiet=True)  # released: it runs
    assert m["rows_in"] == m["kept"] + m["removed_total"]


def test_a_full_disk_is_a_one_line_error_and_the_run_resumes(tmp_path, monkeypatch):
    import errno

    import datasel.io

    src = make_input(tmp_path, n_files=2)
    write = datasel.io.ShardWriter.write

    def full(self, table):
        if "part-" in self.path.name:
            raise OSError(errno.ENOSPC, "No space left on device")
        return write(self, table)

    monkeypatch.setattr(datasel.io.ShardWriter, "write", full)
    with pytest.raises(DataselError, match="No space left on device.*run the same command again"):
        datasel.run(datasel.Dedup(), src, tmp_path / "out", workers=1, quiet=True)
    monkeypatch.setattr(datasel.io.ShardWriter, "write", write)
    ref = datasel.run(datasel.Dedup(), src, tmp_path / "ref", workers=1, quiet=True)
    m = datasel.run(datasel.Dedup(), src, tmp_path / "out", workers=1, quiet=True)
    assert (m["kept"], m["removed"]) == (ref["kept"], ref["removed"])


@pytest.mark.parametrize("stage", ["filter", "dedup"])
def test_an_empty_input_file_leaves_an_empty_shard_with_every_column(tmp_path, stage):
    """Readers that take a folder's columns from its first file (pyarrow.dataset, pandas,
    DuckDB) dropped every column but `id` when the first input file had no rows."""
    from datasel.stages.dedup import Dedup
    from datasel.stages.filter import Filter

    (tmp_path / "in").mkdir()
    schema = pa.schema([("text", pa.string()), ("s", pa.float64())])
    pq.write_table(schema.empty_table(), tmp_path / "in" / "a.parquet")
    rows = {"text": ["one two", "three four", "one two"], "s": [1.0, 2.0, 3.0]}
    pq.write_table(pa.table(rows, schema), tmp_path / "in" / "b.parquet")
    step = Filter(min="s=1.5") if stage == "filter" else Dedup()
    m = datasel.run(step, tmp_path / "in", tmp_path / "out", quiet=True)
    assert m["kept"] == 2 and m["removed_total"] == 1
    assert pq.read_metadata(tmp_path / "out" / "part-00000.parquet").num_rows == 0
    kept = pq.read_table(tmp_path / "out")
    assert {"id", "text", "s"} <= set(kept.column_names) and kept.num_rows == 2
    assert "reason" in pq.read_table(tmp_path / "out" / "_removed").column_names
