import math

import numpy as np
import pytest
from typer.testing import CliRunner

import datasel
from datasel.cli import app, register_stages
from datasel.stages.score import ScorePpl
from tests.conftest import read_dataset, write_jsonl
from tests.lm_fixtures import make_tiny_lm

torch = pytest.importorskip("torch")
register_stages()
runner = CliRunner()


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory):
    path = tmp_path_factory.mktemp("lm") / "tiny"
    make_tiny_lm(path)
    return path


def naive_bpb(model_dir, text: str) -> float:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    prefix = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
    ids = torch.tensor([[prefix, *tok(text, add_special_tokens=False)["input_ids"]]])
    with torch.no_grad():
        logits = model(ids).logits[0, :-1]
    nll = torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="sum").item()
    return nll / (len(text.encode()) * math.log(2))


def test_score_ppl_stage_matches_naive_and_names_columns(tmp_path, tiny_lm):
    texts = ["the cat sees a dog.", "quick red car " * 3, "a", "rivers and mountains are far today"]
    write_jsonl(tmp_path / "in.jsonl", [{"text": t} for t in texts])
    m = datasel.run(
        ScorePpl(model=str(tiny_lm), column="tiny", batch_tokens=64),
        tmp_path / "in.jsonl",
        tmp_path / "out",
        quiet=True,
    )
    t = read_dataset(tmp_path / "out")
    assert m["kept"] == 4 and {"tiny_bpb", "tiny_tokens"} <= set(t.column_names)
    got = np.asarray(t.column("tiny_bpb"))
    want = np.array([naive_bpb(tiny_lm, x) for x in texts])
    np.testing.assert_allclose(got, want, rtol=1e-4)


def test_missing_model_is_one_line(tmp_path):
    write_jsonl(tmp_path / "in.jsonl", [{"text": "x"}])
    result = runner.invoke(
        app,
        [
            "score",
            "ppl",
            str(tmp_path / "in.jsonl"),
            str(tmp_path / "out"),
            "--model",
            str(tmp_path / "no-model"),
        ],
    )
    assert result.exit_code == 2
    assert "no-model" in result.output and len(result.output.strip().splitlines()) == 1


def test_preselect_fit_from_models_in_one_command(tmp_path, tiny_lm):
    from tests.lm_fixtures import tiny_corpus

    write_jsonl(tmp_path / "in.jsonl", [{"text": t} for t in tiny_corpus(120, seed=3)])
    result = runner.invoke(
        app,
        [
            "preselect",
            "fit",
            str(tmp_path / "in.jsonl"),
            str(tmp_path / "ps"),
            "--model",
            str(tiny_lm),
            "--model",
            str(tiny_lm),
            "--benchmark-scores",
            "1,2",
            "--fraction",
            "0.2",
        ],
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "ps" / "model.bin").exists() and (
        tmp_path / "ps" / "_scored" / "02-score-ppl" / "_manifest.json"
    ).exists()


def test_rows_without_text_get_null_scores_and_are_counted(tmp_path, tiny_lm):
    """bpb over zero bytes is no number: null (not NaN, not 0) for null, empty and blank texts."""
    rows = [
        {"text": "the cat sees a dog."},
        {"text": ""},
        {"text": " \n\t "},
        {"text": None},
        {"text": "rivers and mountains"},
    ]
    write_jsonl(tmp_path / "in.jsonl", rows)
    m = datasel.run(
        ScorePpl(model=str(tiny_lm)), tmp_path / "in.jsonl", tmp_path / "out", quiet=True
    )
    t = read_dataset(tmp_path / "out")
    assert m["kept"] == 5 and m["texts"] == {"null": 1, "empty": 2}
    bpb, tokens = t.column("ppl_bpb").to_pylist(), t.column("ppl_tokens").to_pylist()
    assert [b is None for b in bpb] == [False, True, True, True, False]
    assert tokens[1:4] == [None, None, None] and tokens[0] > 0
    np.testing.assert_allclose(bpb[4], naive_bpb(tiny_lm, "rivers and mountains"), rtol=1e-4)
