import json
import random
import subprocess
import sys

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

import datasel
from datasel.cli import app, register_stages
from datasel.lock import FolderLock
from tests.conftest import read_dataset, sample_rows, write_jsonl

register_stages()
runner = CliRunner()


def make_dumps(tmp_path):
    rng = random.Random(0)
    docs = [r for r in sample_rows() if len(r["text"].split()) > 80][:300]
    a = [{"text": r["text"]} for r in docs[:200]]
    b = [{"text": r["text"]} for r in docs[200:]]
    b += [{"text": rng.choice(docs[:200])["text"].upper()} for _ in range(20)]  # repeats of dump A
    b += [{"text": docs[250]["text"]}]  # a repeat inside dump B
    write_jsonl(tmp_path / "dumps" / "2026-11-25" / "part-0.jsonl", a)
    return b


DEDUP_CONFIG = "input: x\noutput: y\nsteps:\n  - stage: dedup\n    threshold: 0.8\n"


def dedup_config(tmp_path) -> str:
    (tmp_path / "dedup.yaml").write_text(DEDUP_CONFIG)
    return str(tmp_path / "dedup.yaml")


def cron(tmp_path, *extra):
    return runner.invoke(
        app,
        [
            "run",
            dedup_config(tmp_path),
            "--input",
            str(tmp_path / "dumps"),
            "--output",
            str(tmp_path / "out"),
            "--since",
            str(tmp_path / "state"),
            "--quiet",
            *extra,
        ],
    )


def test_cron_runs_equal_one_run_over_everything(tmp_path):
    b = make_dumps(tmp_path)
    assert cron(tmp_path).exit_code == 0
    write_jsonl(tmp_path / "dumps" / "2026-11-26" / "part-0.jsonl", b)
    result = cron(tmp_path, "--log-json")
    record = json.loads(result.output.strip().splitlines()[-1])
    assert record["files"] == [str(tmp_path / "dumps" / "2026-11-26" / "part-0.jsonl")]
    assert record["rows_in"] == len(b) and record["kept"] == 100
    incremental = set(pq.read_table(tmp_path / "out" / "selected").column("id").to_pylist())
    datasel.Pipeline([datasel.Dedup()]).run(tmp_path / "dumps", tmp_path / "once", quiet=True)
    once = set(read_dataset(tmp_path / "once" / "01-dedup").column("id").to_pylist())
    assert incremental == once and len(once) == 300
    result = cron(tmp_path, "--log-json")  # nothing new: a no-op
    assert json.loads(result.output.strip())["run"] is None
    assert len(list((tmp_path / "out" / "selected").glob("*.parquet"))) == 2


def test_second_run_on_a_locked_state_exits_with_a_message(tmp_path):
    make_dumps(tmp_path)
    (tmp_path / "state").mkdir()
    with FolderLock(tmp_path / "state" / "lock"):
        code = (
            f"import sys; from datasel.cli import main; sys.argv = ['datasel', 'run', {dedup_config(tmp_path)!r}, "
            f"'--input', {str(tmp_path / 'dumps')!r}, '--output', {str(tmp_path / 'out')!r}, '--since', {str(tmp_path / 'state')!r}]; main()"
        )
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "another run holds the lock" in proc.stderr and "Traceback" not in proc.stderr
    assert cron(tmp_path).exit_code == 0  # released


def test_pipeline_resumes_and_reruns_changed_steps(tmp_path):
    rows = [{"text": r["text"], "len": len(r["text"])} for r in sample_rows(400)]
    write_jsonl(tmp_path / "in.jsonl", rows)
    from datasel.stages.filter import Filter

    p = datasel.Pipeline([datasel.Dedup(), Filter(top=["len=100"])])
    first = p.run(tmp_path / "in.jsonl", tmp_path / "out", quiet=True)
    assert first[-1]["kept"] == 100
    again = p.run(tmp_path / "in.jsonl", tmp_path / "out", quiet=True)
    assert [m["finished_at"] for m in again] == [m["finished_at"] for m in first]  # both skipped
    p2 = datasel.Pipeline([datasel.Dedup(), Filter(top=["len=50"])])
    with pytest.raises(datasel.DataselError, match="another run"):
        p2.run(tmp_path / "in.jsonl", tmp_path / "out", quiet=True)
    third = p2.run(tmp_path / "in.jsonl", tmp_path / "out", quiet=True, overwrite=True)
    assert third[0]["finished_at"] == first[0]["finished_at"] and third[-1]["kept"] == 50


def test_in_memory_api_on_arrow_and_stage_call(tmp_path):
    import pyarrow as pa

    table = pa.table({"text": ["a b c", "A  b c", "d e f"], "n": [1, 2, 3]})
    kept, removed = datasel.apply(datasel.Dedup(), table, removed=True)
    assert kept.column("n").to_pylist() == [1, 3]
    assert removed.column("reason").to_pylist() == ["exact"]
    assert datasel.Dedup()(table).num_rows == 2
    write_jsonl(tmp_path / "in.jsonl", table.to_pylist())
    m = datasel.Dedup()(str(tmp_path / "in.jsonl"), tmp_path / "out", quiet=True)
    assert m["kept"] == 2


def test_shipped_configs_load():
    from pathlib import Path

    from datasel.pipeline import load_config

    for path in sorted(Path("configs").glob("*.yaml")):
        pipeline, config = load_config(path)
        assert pipeline.steps and config["input"] and config["output"], path


@pytest.mark.parametrize("point", ["stage:1", "select", "apply:0"])
def test_killed_pipeline_resumes_to_identical_output(tmp_path, point):
    import os

    rows = [{"text": r["text"], "len": len(r["text"])} for r in sample_rows(600)]
    for k in range(3):
        write_jsonl(tmp_path / "in" / f"f{k}.jsonl", rows[k::3])
    (tmp_path / "p.yaml").write_text(
        "input: in\noutput: out\nsteps:\n  - stage: dedup\n  - stage: filter\n    top_fraction: ['len=0.5']\n"
    )
    code = "import sys; from datasel.cli import main; sys.argv = ['datasel', 'run', 'p.yaml', '--quiet', '--workers', '1', '--output', sys.argv[1]]; main()"
    subprocess.run([sys.executable, "-c", code, "ref"], cwd=tmp_path, check=True)
    env = dict(os.environ, DATASEL_KILL_AT=point)
    assert (
        subprocess.run([sys.executable, "-c", code, "out"], cwd=tmp_path, env=env).returncode == -9
    )
    env.pop("DATASEL_KILL_AT")
    subprocess.run([sys.executable, "-c", code, "out"], cwd=tmp_path, env=env, check=True)
    for step in ("01-dedup", "02-filter"):
        ref = sorted((tmp_path / "ref" / step).rglob("*.parquet"))
        out = sorted((tmp_path / "out" / step).rglob("*.parquet"))
        assert [p.relative_to(tmp_path / "ref") for p in ref] == [
            p.relative_to(tmp_path / "out") for p in out
        ]
        assert all(a.read_bytes() == b.read_bytes() for a, b in zip(ref, out, strict=True))


def test_bundled_names_resolve_and_a_wrong_one_lists_them():
    from datasel.io import resolve_input

    assert resolve_input("datasel:sample") == str(datasel.SAMPLE)
    assert pq.read_table(resolve_input("datasel:target-python-docs")).num_rows == 40
    assert resolve_input("data/x.jsonl") == "data/x.jsonl"
    with pytest.raises(datasel.DataselError, match="datasel:sample, datasel:target-python-docs"):
        resolve_input("datasel:smaple")


EMPTY_DAY = """input: in
output: out
steps:
  - stage: filter
    min: [len=1000000]        # removes every row
  - stage: dedup
  - stage: diversify
    k: 4
    fraction: 0.5
  - stage: shift-dsir
    target: {target}
    fraction: 0.5
  - stage: shift-gotd
    target: {target}
    size: 1
  - stage: filter
    top: [len=10]
  - stage: embed
"""


def test_a_step_that_removes_everything_leaves_valid_empty_steps_after_it(tmp_path):
    rows = [{"text": r["text"], "len": len(r["text"])} for r in sample_rows(200)]
    write_jsonl(tmp_path / "in" / "day.jsonl", rows)
    write_jsonl(tmp_path / "target.jsonl", rows[:20])
    (tmp_path / "p.yaml").write_text(EMPTY_DAY.format(target=tmp_path / "target.jsonl"))
    args = ["run", str(tmp_path / "p.yaml"), "--input", str(tmp_path / "in")]
    result = runner.invoke(app, [*args, "--output", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    steps = sorted((tmp_path / "out").glob("0*"))
    assert len(steps) == 7
    manifests = [json.loads((s / "_manifest.json").read_text()) for s in steps]
    assert manifests[0]["rows_in"] == 200 and manifests[0]["removed_total"] == 200
    for step, m in zip(steps[1:], manifests[1:], strict=True):
        assert (m["rows_in"], m["kept"], m["removed_total"]) == (0, 0, 0), step
        assert "the step is empty" in m["warnings"][0]
        assert pq.read_table(step / "part-00000.parquet").num_rows == 0
    assert (tmp_path / "out" / "report.html").exists()
    # a rerun is a no-op, and a good day after it runs every step
    assert runner.invoke(app, [*args, "--output", str(tmp_path / "out")]).exit_code == 0


def test_cron_survives_a_day_whose_rows_are_all_removed(tmp_path):
    (tmp_path / "p.yaml").write_text(
        "steps:\n  - stage: filter\n    min: [len=400]\n  - stage: dedup\n"
        "  - stage: diversify\n    k: 4\n    fraction: 0.5\n"
    )
    rows = [{"text": r["text"], "len": len(r["text"])} for r in sample_rows(600)]
    long, short = [r for r in rows if r["len"] >= 400], [r for r in rows if r["len"] < 400]
    args = ["run", str(tmp_path / "p.yaml"), "--input", str(tmp_path / "dumps"), "--quiet"]
    args += ["--output", str(tmp_path / "out"), "--since", str(tmp_path / "state")]
    days = [long[:100], short[:50], [], long[100:200]]  # a bad day, then an empty file
    kept = []
    for day, docs in enumerate(days):
        write_jsonl(tmp_path / "dumps" / f"day{day}" / "part-0.jsonl", docs)
        result = runner.invoke(app, [*args, "--log-json"])
        assert result.exit_code == 0, result.output
        record = json.loads(result.output.strip().splitlines()[-1])
        assert record["rows_in"] == len(docs)
        kept.append(record["kept"])
    assert kept[1] == kept[2] == 0 and kept[0] > 40 and kept[3] > 40
    selected = sorted((tmp_path / "out" / "selected").glob("*.parquet"))
    assert len(selected) == 2  # the empty days added no shard
    assert pq.read_table(tmp_path / "out" / "selected").num_rows == kept[0] + kept[3]


def test_on_bad_rows_from_the_config_or_the_command_line(tmp_path):
    lines = [json.dumps({"text": r["text"]}) for r in sample_rows(50)]
    lines[10] = '{"text": "cut'
    (tmp_path / "in.jsonl").write_text("\n".join(lines) + "\n")
    config = "input: in.jsonl\noutput: out\nsteps:\n  - stage: dedup\n"
    (tmp_path / "p.yaml").write_text(config)
    args = ["run", str(tmp_path / "p.yaml"), "--input", str(tmp_path / "in.jsonl"), "--quiet"]
    result = runner.invoke(app, [*args, "--output", str(tmp_path / "a")])
    assert result.exit_code == 2 and "in.jsonl:11: malformed JSON" in result.output
    result = runner.invoke(app, [*args, "--output", str(tmp_path / "s"), "--on-bad-rows", "skip"])
    assert result.exit_code == 0, result.output
    m = json.loads((tmp_path / "s" / "01-dedup" / "_manifest.json").read_text())
    assert m["skipped"] == {"malformed_json": 1} and m["rows_in"] == 50
    (tmp_path / "p.yaml").write_text("on_bad_rows: skip\n" + config)
    result = runner.invoke(app, [*args, "--output", str(tmp_path / "b")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "b" / "01-dedup" / "_skipped" / "part-00000.parquet").exists()
    (tmp_path / "p.yaml").write_text("on_bad_rows: drop\n" + config)
    result = runner.invoke(app, [*args, "--output", str(tmp_path / "c")])
    assert result.exit_code == 2
    assert "p.yaml: on_bad_rows must be error or skip, got 'drop'" in result.output
    result = runner.invoke(
        app, ["dedup", str(tmp_path / "in.jsonl"), str(tmp_path / "d")] + ["--on-bad-rows", "drop"]
    )
    assert result.exit_code == 2 and "on_bad_rows must be error or skip" in result.output
