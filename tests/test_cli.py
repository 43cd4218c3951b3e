import json
import re
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from datasel.cli import app, register_stages
from datasel.stage import STAGES
from tests.conftest import write_jsonl

register_stages()
runner = CliRunner()


def test_every_command_has_help_with_an_example():
    for name in ["run", "inspect", *STAGES]:
        args = (
            name.split("-", 1) if name.split("-")[0] in ("score", "shift", "preselect") else [name]
        )
        result = runner.invoke(app, [*args, "--help"])
        assert result.exit_code == 0, (name, result.output)
        assert "Example" in result.output, name


def test_help_shows_flags_as_flags_and_the_workers_default_once():
    for args in (["run"], ["dedup"], ["shift", "dsir"], ["diversify"], ["inspect"]):
        result = runner.invoke(app, [*args, "--help"], env={"COLUMNS": "200"})
        assert result.exit_code == 0, result.output
        assert "<bool>" not in result.output and "--no-" not in result.output, args
        lines = [line for line in result.output.splitlines() if "--workers" in line]
        assert all(line.count("default") == 1 for line in lines), lines
    result = runner.invoke(app, ["shift", "dsir", "--help"], env={"COLUMNS": "200"})
    assert re.search(r"--deterministic\s+plain top-k", result.output)
    # a flag on by default can be turned off
    result = runner.invoke(app, ["shift", "gotd", "--help"], env={"COLUMNS": "200"})
    assert re.search(r"--whiten\s+--no-whiten\s+whiten the embeddings", result.output)
    result = runner.invoke(app, ["shift", "gotd", "nothere", "o", "--target", "t", "--no-whiten"])
    assert result.exit_code != 0 and "No such option" not in result.output
    for args in (["filter"], ["eval"]):  # repeatable options show the type of one value
        result = runner.invoke(app, [*args, "--help"], env={"COLUMNS": "200"})
        assert "list[" not in result.output and re.search(r"--(max|train)\s+<str>", result.output)


def test_dedup_command_and_inspect(tmp_path):
    write_jsonl(tmp_path / "in.jsonl", [{"text": t} for t in ["a b c", "A  b c", "d e f"]])
    result = runner.invoke(
        app, ["dedup", str(tmp_path / "in.jsonl"), str(tmp_path / "out"), "--quiet"]
    )
    assert result.exit_code == 0, result.output
    m = json.loads((tmp_path / "out" / "_manifest.json").read_text())
    assert (m["kept"], m["removed"]) == (2, {"exact": 1})
    result = runner.invoke(app, ["inspect", str(tmp_path / "out")])
    assert result.exit_code == 0 and "2 rows" in result.output


@pytest.mark.parametrize(
    "content, args, message",
    [
        ('{"text": "a"}\n{"text": \n', [], "in.jsonl:2: malformed JSON"),
        ('{"body": "a"}\n', [], "--text-column: no text column 'text' in"),
        ('{"text": "a"}\n', ["--threshold", "1.5"], "threshold must be in (0, 1]"),
        ('{"text": "a"}\n', ["--keep", "best"], "keep must be first, longest or max:<column>"),
    ],
)
def test_bad_input_is_one_line_exit_2(tmp_path, content, args, message):
    (tmp_path / "in.jsonl").write_text(content)
    result = runner.invoke(app, ["dedup", str(tmp_path / "in.jsonl"), str(tmp_path / "out"), *args])
    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_run_config_errors_name_step_and_key(tmp_path):
    (tmp_path / "c.yaml").write_text(
        "input: x\noutput: y\nsteps:\n  - stage: dedup\n    treshold: 0.8\n"
    )
    result = runner.invoke(app, ["run", str(tmp_path / "c.yaml")])
    assert result.exit_code == 2
    assert "step 1 (dedup): unknown key 'treshold'" in result.output
    assert "threshold" in result.output
    (tmp_path / "c.yaml").write_text("input: x\noutput: y\nsteps:\n  - stage: dedupe\n")
    result = runner.invoke(app, ["run", str(tmp_path / "c.yaml")])
    assert "unknown stage 'dedupe'" in result.output
    (tmp_path / "c.yaml").write_text(
        "input: x\noutput: y\nsteps:\n  - stage: dedup\n    threshold: high\n"
    )
    result = runner.invoke(app, ["run", str(tmp_path / "c.yaml")])
    assert "key 'threshold' must be float" in result.output


def test_quickstart_config(tmp_path):
    result = runner.invoke(
        app, ["run", "configs/quickstart.yaml", "--output", str(tmp_path / "qs"), "--quiet"]
    )
    assert result.exit_code == 0, result.output
    steps = sorted((tmp_path / "qs").glob("0*"))
    names = [d.name for d in steps]
    assert names == [
        "01-dedup",
        "02-score-heuristics",
        "03-filter",
        "04-shift-dsir",
        "05-diversify",
    ]
    manifests = [json.loads((d / "_manifest.json").read_text()) for d in steps]
    assert manifests[0]["rows_in"] == 2250
    for i, m in enumerate(manifests):
        assert m["kept"] + m["removed_total"] == m["rows_in"]
        assert i == 0 or m["rows_in"] == manifests[i - 1]["kept"]
    # at least three steps select (remove rows), each for its own reasons
    selecting = [m["stage"] for m in manifests if m["removed_total"] > 0]
    assert {"filter", "shift-dsir", "diversify"} <= set(selecting)
    assert any(r.startswith("filter:gopher_") for r in manifests[2]["removed"])
    assert manifests[3]["stats"]["kl_after"] < manifests[3]["stats"]["kl_before"]
    assert manifests[-1]["kept"] == 300
    div = manifests[-1]["stats"]
    assert (
        div["cluster_entropy_before"] < div["cluster_entropy_after"] <= div["cluster_entropy_max"]
    )
    from datasel.report import headlines

    lines = headlines(tmp_path / "qs")
    assert lines[0] == "01-dedup: 1 cluster of duplicates"
    assert any(line.startswith("04-shift-dsir: KL to the target 0.") for line in lines)
    assert any(line.startswith("05-diversify: cluster entropy ") for line in lines)
    report = (tmp_path / "qs" / "report.html").read_text()
    assert all(f'id="step-{name}"' in report for name in names)
    pytest.importorskip("matplotlib")
    assert "gopher_alpha_words histogram; thresholds: 0.8" in report  # the filter's rule columns


def test_a_stage_command_ends_with_its_headline(tmp_path, capsys):
    write_jsonl(tmp_path / "in.jsonl", [{"text": t} for t in ["a b c", "A  b c", "d e f"]])
    result = runner.invoke(app, ["dedup", str(tmp_path / "in.jsonl"), str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert "1 cluster of duplicates" in result.output + capsys.readouterr().err


def _main(monkeypatch, capsys, *args):
    from datasel.cli import main

    monkeypatch.setattr("sys.argv", ["datasel", *args])
    with pytest.raises(SystemExit) as exit_:
        main()
    out = capsys.readouterr()
    return exit_.value.code, out.out, out.err


@pytest.mark.parametrize(
    "args, names",
    [
        (["score", "ppl", "in.parquet", "out"], ["score ppl", "--model"]),
        (["dedup", "in", "out", "--bogus"], ["dedup", "--bogus"]),
        (["dedup", "in", "out", "--workers", "x"], ["dedup", "--workers"]),
        (["dedup", "in", "out", "--threshold", "abc"], ["dedup", "--threshold"]),
        (["filter", "in", "out", "--bogus"], ["filter", "--bogus"]),
        (["shift", "dsir", "in", "out", "--target", "t", "--size", "abc"], ["--size"]),
        (["dedup"], ["dedup", "input"]),
        (["dedup", "in", "out", "--workers"], ["--workers"]),
        (["score", "pxl"], ["pxl"]),
    ],
)
def test_a_usage_error_is_one_line(monkeypatch, capsys, args, names):
    code, out, err = _main(monkeypatch, capsys, *args)
    assert code == 2 and out == ""
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    assert all(name in err for name in names), err
    assert "Traceback" not in err and not set("╭╮╰╯│─") & set(err), err


def test_help_and_no_arguments_still_show_the_help(monkeypatch, capsys):
    code, out, _ = _main(monkeypatch, capsys, "dedup", "--help")
    assert code == 0 and "Usage" in out and "Example" in out
    code, out, err = _main(monkeypatch, capsys, "shift")
    assert code == 2 and "dsir" in out + err and "error" not in out + err


def test_ctrl_c_in_a_command_says_how_to_resume(tmp_path):
    import os
    import subprocess
    import sys

    write_jsonl(tmp_path / "in.jsonl", [{"text": f"row {i}"} for i in range(10)])
    code = "import sys; from datasel.cli import main; sys.argv[0] = 'datasel'; main()"
    args = ["dedup", str(tmp_path / "in.jsonl"), str(tmp_path / "out"), "--workers", "1"]
    env = dict(os.environ, DATASEL_KILL_AT="stage:0", DATASEL_KILL_SIGNAL="SIGINT")
    run = subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True)
    assert run.returncode == 130 and b"run the same command again to resume" in run.stderr
    assert b"Traceback" not in run.stderr


def test_help_into_a_closed_pipe_prints_no_traceback():
    """`datasel eval --help | head -3`: the reader goes away mid-help (it was a traceback)."""
    code = (
        "from datasel.cli import main; import sys; sys.argv = ['datasel', 'eval', '--help']; main()"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    proc.stdout.close()  # nobody reads the help
    err = proc.stderr.read().decode()
    proc.wait(timeout=60)
    assert "Traceback" not in err, err


def test_python_dash_m_runs_the_command_line():
    done = subprocess.run(
        [sys.executable, "-m", "datasel", "dedup", "--help"], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert "Example" in done.stdout or "example" in done.stdout
