"""Progress inside units, and the small units of model stages (sized from their model)."""

import gzip
import json
import os
import subprocess
import sys
import threading
import time

import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq
import pytest

import datasel
import datasel.engine.plan as plan
import datasel.progress as progress
from datasel.engine import LocalExecutor
from datasel.io import Columns, cut_rows, plan_units, read_unit
from datasel.stages.score import ScorePpl
from tests.conftest import read_dataset, sample_rows, write_jsonl
from tests.lm_fixtures import make_tiny_lm

pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory):
    return make_tiny_lm(tmp_path_factory.mktemp("lm") / "tiny")


def docs(n):
    rows = sample_rows(n)
    return [{"id": r["id"], "text": r["text"][:300]} for r in rows]


def write_formats(folder, rows):
    """The same rows as plain JSONL (a blank line inside), JSONL.gz, Parquet in row groups of
    37, and Arrow IPC in batches of 50."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps(r) + "\n" for r in rows]
    (folder / "a.jsonl").write_text("".join(lines[:10]) + "\n" + "".join(lines[10:]))
    with gzip.open(folder / "b.jsonl.gz", "wt") as f:
        f.write("".join(lines).rstrip("\n"))  # no newline after the last line
    table = pa.Table.from_pylist(rows)
    pq.write_table(table, folder / "c.parquet", row_group_size=37)
    with ipc.new_file(folder / "d.arrow", table.schema) as w:
        for batch in table.to_batches(max_chunksize=50):
            w.write_batch(batch)
    return folder


def read_all(units):
    tables = [pa.Table.from_batches(list(read_unit(u, Columns()))) for u in units]
    return pa.concat_tables([t for t in tables if t.num_rows]).select(["id", "text"])


@pytest.mark.parametrize("name", ["a.jsonl", "b.jsonl.gz", "c.parquet", "d.arrow"])
def test_cut_rows_reads_every_row_once_in_every_format(tmp_path, name):
    src = write_formats(tmp_path / "in", docs(230)) / name
    whole = plan_units(src)
    counted = cut_rows(whole, 1 << 40)  # not cut; a compressed or Arrow file counted
    assert len(counted) == 1
    rows, size = counted[0].rows, counted[0].nbytes
    pieces = cut_rows(whole, 32 * size // rows)  # the bytes of ~32 rows
    assert 4 <= len(pieces) <= 10
    assert all(0 < p.rows <= 33 for p in pieces)
    assert read_all(pieces).equals(read_all(whole))  # same ids (line numbers), same order
    assert len(cut_rows(whole, 16 * size // rows)) > len(pieces)  # smaller units, more of them


def test_the_units_of_a_model_stage_grow_with_its_rows(tmp_path, tiny_lm, monkeypatch):
    monkeypatch.setattr(plan, "bytes_per_second", lambda stage, ctx: 9000.0)  # 8 KiB a unit
    shards = []
    for n in (100, 400):
        src = write_jsonl(tmp_path / f"in{n}.jsonl", docs(n))
        m = datasel.run(
            ScorePpl(model=str(tiny_lm)), src, tmp_path / f"out{n}", quiet=True, unit_seconds=1.0
        )
        assert m["rows_in"] == n == m["kept"]
        shards.append(m["shards"])
        assert abs(m["shards"] - src.stat().st_size / 8192) <= 1  # ~8 KiB of input each
    assert 2 < shards[0] < shards[1]
    # a stage without a model keeps its cut: one unit for the whole file
    m = datasel.run(datasel.Dedup(), tmp_path / "in400.jsonl", tmp_path / "dedup", quiet=True)
    assert m["shards"] == 1


def test_model_size_sets_the_unit_bytes_the_same_on_every_run(tmp_path, tiny_lm):
    """Units are sized by a cost model of the loaded model, never a measured (load-dependent)
    speed: two fresh runs cut the same units."""
    src = write_jsonl(tmp_path / "in.jsonl", docs(300))
    from datasel.stage import Context

    ctx = Context(columns=Columns(), work=tmp_path, units=plan_units(src))
    rates = {plan.bytes_per_second(ScorePpl(model=str(tiny_lm)), ctx) for _ in range(2)}
    assert len(rates) == 1
    (rate,) = rates
    parameters, device = ScorePpl(model=str(tiny_lm)).model_size(ctx)
    assert device == "cpu" and 10_000 < parameters < 1_000_000
    assert rate == pytest.approx(plan.SUSTAINED_FLOPS["cpu"] / (2 * parameters * 0.3))
    assert rate * 15 < plan.unit_bytes_of_work(rate, 30.0) <= rate * 30
    assert plan.unit_bytes_of_work(1000.0, 30.0) == 16384  # rounded down to a power of two


def test_progress_moves_before_the_unit_ends(tmp_path, tiny_lm, monkeypatch):
    """The tally counts rows and tokens after each forward pass of the model, long before the
    unit's marker is written (one unit here)."""
    import scorers.lm

    src = write_jsonl(tmp_path / "in.jsonl", docs(120))
    seen = []

    def spy(fraction, tokens=0):
        progress.batch_done(fraction, tokens)
        if progress._tally is None:  # the speed probe, before the run's units
            return
        rows, toks = progress._tally.totals()
        seen.append((rows, toks, (tmp_path / "out" / "_work" / "done-00000.json").exists()))

    monkeypatch.setattr(scorers.lm, "batch_done", spy)
    monkeypatch.setattr(plan, "bytes_per_second", lambda stage, ctx: 1e9)  # one unit
    m = datasel.run(
        ScorePpl(model=str(tiny_lm), batch_tokens=256), src, tmp_path / "out", quiet=True
    )
    assert m["shards"] == 1
    during = [(r, t) for r, t, done in seen if not done and r > 0]
    assert len(during) > 10  # many events, all before the unit ended
    assert any(0 < r < 120 for r, _ in during)
    assert [r for r, _ in during] == sorted(r for r, _ in during)
    assert during[-1][1] > during[0][1] > 0  # tokens too


def _worker(i, gate):
    """A unit mapped in a worker process: reports half its 10 rows, then waits for the parent."""
    with progress.unit_meter(i) as meter:
        meter.start_batch(10)
        progress.batch_done(0.5, 7)
        deadline = time.time() + 30
        while not os.path.exists(gate) and time.time() < deadline:
            time.sleep(0.02)
        meter.end_batch()
    return {"rows_in": 10}


def test_progress_flows_from_worker_processes_to_the_parent(tmp_path):
    gate = str(tmp_path / "go")
    with progress.Progress("t", total=20, quiet=True, units=2) as bar:
        with LocalExecutor(2) as ex:
            results = []
            run = threading.Thread(
                target=lambda: results.extend(ex.map_unordered(_worker, [(0, gate), (1, gate)]))
            )
            run.start()
            deadline = time.time() + 30
            while bar.tally.totals() != (10.0, 14.0) and time.time() < deadline:
                time.sleep(0.02)
            assert bar.tally.totals() == (10.0, 14.0)  # half of each unit, while both run
            open(gate, "w").close()
            run.join()
            assert sorted(k for k, _ in results) == [0, 1]
        assert bar.tally.totals()[0] == 20.0


def test_a_line_with_rates_and_eta_without_a_terminal(capsys, monkeypatch):
    monkeypatch.setattr(progress, "LOG_SECONDS", 0.0)
    monkeypatch.setattr(progress, "POLL_SECONDS", 0.02)
    with progress.Progress("score-ppl", total=100, units=2) as bar:
        with progress.unit_meter(0) as meter:
            meter.start_batch(50)
            progress.batch_done(0.5, 1000)
            time.sleep(0.2)
        assert "25/100 rows (25%)" in bar.line()
    err = capsys.readouterr().err
    assert "score-ppl: 25/100 rows (25%)" in err and "rows/s" in err
    assert "tokens/s" in err and "ETA 00:00:" in err


def test_killed_inside_a_unit_resumes_identically_redoing_only_that_unit(tmp_path, tiny_lm):
    """SIGKILL after the first batch of unit 3 (of ~8 KB each): the units finished before it
    are kept as they were, unit 3 is redone, and the output is byte for byte that of an uninterrupted run."""
    src = write_jsonl(tmp_path / "in.jsonl", docs(200))
    code = (
        "import datasel, datasel.engine.plan as p; from datasel.stages.score import ScorePpl; "
        "p.bytes_per_second = lambda stage, ctx: 9000.0; "
        f"datasel.run(ScorePpl(model={str(tiny_lm)!r}), {str(src)!r}, "
        "__import__('sys').argv[1], quiet=True, unit_seconds=1.0, batch_rows=8)"
    )
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "ref")], check=True)
    env = dict(os.environ, DATASEL_KILL_AT="batch:3")
    out = tmp_path / "out"
    killed = subprocess.run([sys.executable, "-c", code, str(out)], env=env)
    assert killed.returncode == -9
    done = {p.name[5:10] for p in (out / "_work").glob("done-*.json")}
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("part-*.parquet")}
    assert done and "00003" not in done  # killed inside unit 3, after the units before it
    assert sorted(before) == sorted(f"part-{k}.parquet" for k in done)
    plan = json.loads((out / "_work" / "plan.json").read_text())
    later = max(set(range(len(plan["units"]))) - {int(k) for k in done} - {3})
    env["DATASEL_KILL_AT"] = f"batch:{later}"  # killed again: the cut stays the first attempt's
    assert subprocess.run([sys.executable, "-c", code, str(out)], env=env).returncode == -9
    assert json.loads((out / "_work" / "plan.json").read_text()) == plan
    env.pop("DATASEL_KILL_AT")
    subprocess.run([sys.executable, "-c", code, str(out)], env=env, check=True)
    assert {n: (out / n).stat().st_mtime_ns for n in before} == before  # not redone
    from tests.test_engine import output_bytes

    assert output_bytes(out) == output_bytes(tmp_path / "ref")
    m = json.loads((out / "_manifest.json").read_text())
    assert m["shards"] > 4 and m["rows_in"] == 200 == read_dataset(out).num_rows


def test_an_eta_past_a_day_keeps_counting_hours():
    assert progress.hms(0) == "00:00:00"
    assert progress.hms(3599.6) == "01:00:00"
    assert progress.hms(30 * 3600 + 61) == "30:01:01"  # strftime's %H would say 06:01:01
