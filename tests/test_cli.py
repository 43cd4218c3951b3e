import json

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
    m = json.loads((tmp_path / "qs" / "01-dedup" / "_manifest.json").read_text())
    assert m["rows_in"] == 2250 and m["kept"] + m["removed_total"] == 2250
