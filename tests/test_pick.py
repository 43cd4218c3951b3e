import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

import datasel
from datasel.cli import app, register_stages
from datasel.stages.pick import Pick
from tests.conftest import read_dataset, read_removed
from tests.lm_fixtures import make_tiny_lm, tiny_corpus

torch = pytest.importorskip("torch")
register_stages()
runner = CliRunner()


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory):
    path = tmp_path_factory.mktemp("lm") / "tiny"
    make_tiny_lm(path, n_positions=512)  # the naive reference scores whole sequences
    return path


def naive_logprob(model_dir, prompt: str, response: str) -> tuple[float, int]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    bos = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
    p = tok(prompt, add_special_tokens=False)["input_ids"]
    r = tok(response, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([[bos, *p, *r]])
    with torch.no_grad():
        logp = torch.log_softmax(model(ids).logits[0, :-1].float(), -1)
    tgt = ids[0, 1:]
    lp = logp[torch.arange(len(tgt)), tgt][len(p) :]
    return float(lp.sum()), len(r)


def instructions(n=12, k=5):
    texts = tiny_corpus(n * (k + 1), seed=7)
    rows = []
    for i in range(n):
        cands = [{"text": texts[n + i * k + j] * (1 + j % 3), "model": f"m{j}"} for j in range(k)]
        rows.append(
            {
                "id": f"q{i}",
                "instruction": texts[i],
                "input": "" if i % 2 else "some input",
                "responses": cands,
            }
        )
    return rows


def test_picks_equal_naive_reference_and_nothing_is_lost(tmp_path, tiny_lm):
    rows = instructions()
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "in.parquet")
    stage = Pick(model=str(tiny_lm), batch_tokens=96)  # small batches: many mixed-length packs
    m = datasel.run(stage, tmp_path / "in.parquet", tmp_path / "out", quiet=True)
    assert m["rows_in"] == 60 == m["kept"] + m["removed_total"] and m["kept"] == 12
    kept = {r["id"]: r for r in read_dataset(tmp_path / "out").to_pylist()}
    removed = read_removed(tmp_path / "out").to_pylist()
    assert len(removed) == 48 and all(r["reason"].startswith("pick:rank=") for r in removed)
    for row in rows:
        prompt = stage.prompt(row["instruction"], row["input"])
        naive = []
        for c in row["responses"]:
            lp, n = naive_logprob(tiny_lm, prompt, c["text"])
            naive.append(lp / n)
        best = int(np.argmax(naive))
        got = kept[row["id"]]
        assert got["pick_candidate"] == best and got["pick_source"] == f"m{best}"
        np.testing.assert_allclose(got["pick_scores"], naive, rtol=1e-4)
        np.testing.assert_allclose(got["pick_logprob"], naive[best], rtol=1e-4)
    assert m["stats"]["instructions"] == 12


def test_group_by_shape_and_top_k(tmp_path, tiny_lm):
    rows = [
        {
            "id": f"{r['id']}-{j}",
            "qid": r["id"],
            "instruction": r["instruction"],
            "response": c["text"],
        }
        for r in instructions(6, 4)
        for j, c in enumerate(r["responses"])
    ]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "in.parquet")
    m = datasel.run(
        Pick(model=str(tiny_lm), group_by="qid", top_k=2, input_column=None),
        tmp_path / "in.parquet",
        tmp_path / "out",
        quiet=True,
    )
    assert m["rows_in"] == 24 and m["kept"] == 12 and m["removed_total"] == 12
    kept = read_dataset(tmp_path / "out").to_pylist()
    assert sorted({r["pick_rank"] for r in kept}) == [1, 2]


@pytest.mark.parametrize(
    "rows, args, message",
    [
        (
            [{"id": "a", "instruction": "x", "responses": []}],
            [],
            "instruction 'a' has no candidate responses",
        ),
        (
            [{"id": "a", "instruction": "x", "responses": "not a list"}],
            [],
            "not a list of candidates",
        ),
        (
            [{"id": "a", "instruction": "x", "response": "y"}],
            ["--group-by", "qid"],
            "no column 'qid'",
        ),
    ],
)
def test_pick_errors(tmp_path, tiny_lm, rows, args, message):
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = runner.invoke(
        app,
        ["pick", str(tmp_path / "in.jsonl"), str(tmp_path / "out"), "--model", str(tiny_lm), *args],
    )
    assert result.exit_code == 2 and message in result.output, result.output
