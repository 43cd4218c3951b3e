"""Run options: one declaration (`RunOptions`) gives every stage command's and `datasel run`'s
flags and the config's keys, and each reaches the engine with its declared type."""

import dataclasses
import typing

import pytest
import yaml
from typer.testing import CliRunner

import datasel
from datasel.cli import app, register_stages
from datasel.errors import DataselError
from datasel.options import NAMES, RunOptions
from datasel.stage import STAGES
from tests.conftest import write_jsonl

register_stages()
runner = CliRunner()
HINTS = typing.get_type_hints(RunOptions)

# a value other than the default for every option (bools: their flag, True); `unit_seconds` is
# written as an int, which the config and the command line must turn into a float
VALUES = {
    "text_column": "body",
    "id_column": "key",
    "workers": 3,
    "overwrite": True,
    "quiet": True,
    "shard_bytes": 1 << 20,
    "shard_rows": 1000,
    "batch_rows": 64,
    "engine": "ray",
    "on_bad_rows": "skip",
    "unit_seconds": 5,
}


def test_the_values_cover_every_option_and_differ_from_its_default():
    assert set(VALUES) == set(NAMES)
    default = RunOptions()
    assert all(VALUES[n] != getattr(default, n) for n in NAMES)


def flags(values: dict) -> list[str]:
    out = []
    for name, value in values.items():
        flag = "--" + name.replace("_", "-")
        out += [flag] if value is True else [flag, str(value)]
    return out


@pytest.fixture
def engine_calls(monkeypatch):
    """The options each call of the engine's `run` gets; the call then stops the command."""
    calls = []

    def run(stage, src, dst, options=None, **kw):
        calls.append(options)
        raise DataselError("stopped before any work")

    monkeypatch.setattr("datasel.pipeline.run", run)
    monkeypatch.setattr("datasel.engine.run", run)
    return calls


def assert_reached(calls, expected: dict):
    assert len(calls) == 1
    options = calls[0]
    assert isinstance(options, RunOptions)
    for name in NAMES:
        value = getattr(options, name)
        assert type(value) is HINTS[name], (name, value)
        assert value == expected[name], name


def config(tmp_path, top: dict, step: dict | None = None):
    write_jsonl(tmp_path / "in.jsonl", [{"body": "a b c", "key": "k1"}])
    steps = [{"stage": "dedup", **(step or {})}]
    body = {"input": str(tmp_path / "in.jsonl"), "output": str(tmp_path / "out"), **top}
    (tmp_path / "p.yaml").write_text(yaml.safe_dump({**body, "steps": steps}))
    return str(tmp_path / "p.yaml")


def test_every_option_is_a_config_key(tmp_path, engine_calls):
    result = runner.invoke(app, ["run", config(tmp_path, VALUES)])
    assert "stopped before any work" in result.output, result.output
    assert_reached(engine_calls, VALUES)


def test_every_option_is_a_flag_of_run_and_replaces_the_configs_key(tmp_path, engine_calls):
    top = {"workers": 7, "text_column": "other", "on_bad_rows": "error", "quiet": False}
    result = runner.invoke(app, ["run", config(tmp_path, top), *flags(VALUES)])
    assert "stopped before any work" in result.output, result.output
    assert_reached(engine_calls, VALUES)


def test_a_flag_not_given_leaves_the_configs_key(tmp_path, engine_calls):
    result = runner.invoke(app, ["run", config(tmp_path, {"workers": 7}), "--text-column", "body"])
    assert "stopped before any work" in result.output, result.output
    assert (engine_calls[0].workers, engine_calls[0].text_column) == (7, "body")


def test_a_steps_own_column_wins_over_the_flag(tmp_path, engine_calls):
    path = config(tmp_path, {}, {"text_column": "body"})
    result = runner.invoke(app, ["run", path, "--text-column", "other"])
    assert "stopped before any work" in result.output, result.output
    assert engine_calls[0].text_column == "body"


@pytest.mark.parametrize("name", sorted(STAGES))
def test_every_option_is_a_flag_of_every_stage_command(tmp_path, engine_calls, name):
    group, _, sub = name.partition("-")
    command = [group, sub] if group in ("score", "shift") else [name]
    required = {  # the stage's own required parameters, for the command to parse
        "score-fasttext": ["--model", "m.bin", "--label", "x"],
        "score-preselect": ["--scorer", "s"],
        "score-ppl": ["--model", "m"],
        "pick": ["--model", "m"],
        "shift-dsir": ["--target", "t", "--size", "1"],
        "shift-gotd": ["--target", "t", "--size", "1"],
        "diversify": ["--size", "1"],
        "filter": ["--min", "n=1"],
    }.get(name, [])
    args = [*command, str(tmp_path / "in.jsonl"), str(tmp_path / "out"), *required]
    result = runner.invoke(app, [*args, *flags(VALUES)])
    assert "stopped before any work" in result.output, result.output
    assert_reached(engine_calls, VALUES)


def test_no_stage_parameter_shares_a_run_options_name():
    for cls in STAGES.values():
        assert not {f.name for f in dataclasses.fields(cls)} & set(NAMES), cls.name


@pytest.mark.parametrize(
    "top, step, message",
    [
        ({"worker": 2}, None, "p.yaml: unknown key 'worker'; allowed: batch_rows, description,"),
        ({"workers": "many"}, None, "p.yaml: key 'workers' must be int, got 'many'"),
        ({"quiet": "yes please"}, None, "p.yaml: key 'quiet' must be bool, got 'yes please'"),
        ({}, {"text_column": 5}, "step 1 (dedup): key 'text_column' must be str, got 5"),
        ({}, {"workers": 2}, "step 1 (dedup): unknown key 'workers' for stage dedup"),
        ({"on_bad_rows": "drop"}, None, "p.yaml: on_bad_rows must be error or skip, got 'drop'"),
    ],
)
def test_a_bad_option_in_a_config_is_one_line(tmp_path, top, step, message):
    result = runner.invoke(app, ["run", config(tmp_path, top, step)])
    assert result.exit_code == 2
    assert message in result.output and len(result.output.strip().splitlines()) == 1


def test_python_keywords_replace_the_pipelines_options(tmp_path, engine_calls):
    write_jsonl(tmp_path / "in.jsonl", [{"text": "a b c"}])
    pipeline = datasel.Pipeline([datasel.Dedup()], RunOptions(workers=2, quiet=True))
    with pytest.raises(DataselError):
        pipeline.run(tmp_path / "in.jsonl", tmp_path / "out", batch_rows=64)
    assert (engine_calls[0].workers, engine_calls[0].batch_rows) == (2, 64)
    with pytest.raises(TypeError):
        pipeline.run(tmp_path / "in.jsonl", tmp_path / "out", batch_row=64)


def test_a_cron_run_dedups_against_the_state_folder_unless_told_otherwise(tmp_path):
    assert datasel.Dedup().incremental(tmp_path).index == str(tmp_path / "dedup-index")
    assert datasel.Dedup(index="mine").incremental(tmp_path).index == "mine"
    assert datasel.Filter(min=["n=1"]).incremental(tmp_path) == datasel.Filter(min=["n=1"])
