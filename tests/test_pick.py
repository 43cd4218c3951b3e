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
            [{"id": "a", "instruction": "x", "responses": "not a list"}],
            [],
            "not a list of candidates",
        ),
        (
            [{"id": "a", "instruction": "x", "response": "y"}],
            ["--group-by", "qid"],
            "no column 'qid'",
        ),
        (
            [{"id": "a", "instruction": "x", "responses": [{"text": 1}, {"text": 2}]}],
            [],
            "the candidates' 'text' field holds int64, not text",
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


def test_empty_and_short_candidates_are_never_picked_and_none_is_lost(tmp_path, tiny_lm):
    """An empty response scores 0.0 over 0 tokens: under mean and sum it beat every real one."""
    texts = tiny_corpus(8, seed=3)
    rows = [
        {
            "id": "q0",
            "instruction": texts[0],
            "responses": [
                {"text": "", "model": "empty"},
                {"text": texts[1], "model": "a"},
                {"text": " \n\t ", "model": "blank"},
                {"text": None, "model": "null"},
                {"text": texts[2], "model": "b"},
            ],
        },
        {  # no valid candidate: removed whole, with its own reason
            "id": "q1",
            "instruction": texts[3],
            "responses": [{"text": "", "model": "empty"}, {"text": "  ", "model": "blank"}],
        },
        {
            "id": "q2",
            "instruction": texts[4],
            "responses": [{"text": texts[5], "model": "a"}, {"text": "   ", "model": "blank"}],
        },
    ]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "in.parquet")
    for normalize in ("mean", "sum"):
        out = tmp_path / normalize
        m = datasel.run(
            Pick(model=str(tiny_lm), normalize=normalize), tmp_path / "in.parquet", out, quiet=True
        )
        assert m["rows_in"] == 9 == m["kept"] + m["removed_total"]
        kept = {r["id"]: r for r in read_dataset(out).to_pylist()}
        assert sorted(kept) == ["q0", "q2"]
        assert kept["q0"]["pick_source"] in ("a", "b") and kept["q2"]["pick_source"] == "a"
        assert kept["q0"]["pick_scores"][0] is None and kept["q0"]["pick_scores"][1] is not None
        gone = read_removed(out).to_pylist()
        reasons = sorted((r["id"], r["pick_source"], r["reason"]) for r in gone)
        assert reasons == [
            ("q0", "a" if kept["q0"]["pick_source"] == "b" else "b", "pick:rank=2"),
            ("q0", "blank", "pick:empty"),
            ("q0", "empty", "pick:empty"),
            ("q0", "null", "pick:empty"),
            ("q1", "blank", "pick:no_valid_candidate"),
            ("q1", "empty", "pick:no_valid_candidate"),
            ("q2", "blank", "pick:empty"),
        ]
        assert all(
            r["pick_logprob"] is None and r["pick_rank"] is None
            for r in gone
            if r["reason"] != "pick:rank=2"
        )
        assert m["removed"] == {"pick:empty": 4, "pick:no_valid_candidate": 2, "pick:rank=2": 1}
        assert m["texts"] == {"null": 1, "empty": 5}
        assert m["stats"]["instructions_without_valid_candidate"] == 1
        assert m["stats"]["empty_candidates"] == 6


def test_min_response_tokens(tmp_path, tiny_lm):
    from scorers.lm import _tokenize, load_lm

    texts = tiny_corpus(6, seed=5)
    lm = load_lm(str(tiny_lm), device="cpu")
    short, long = "ok", texts[1]
    n_short = len(_tokenize(lm, [short])[0])
    assert n_short < len(_tokenize(lm, [long])[0])
    rows = [
        {"id": "q0", "instruction": texts[0], "responses": [short, long]},
        {"id": "q1", "instruction": texts[2], "responses": [short]},
    ]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "in.parquet")
    m = datasel.run(
        Pick(model=str(tiny_lm), min_response_tokens=n_short + 1),
        tmp_path / "in.parquet",
        tmp_path / "out",
        quiet=True,
    )
    assert [r["response"] for r in read_dataset(tmp_path / "out").to_pylist()] == [long]
    assert m["removed"] == {
        f"pick:response_tokens<{n_short + 1}": 1,
        "pick:no_valid_candidate": 1,
    }
    assert m["stats"]["short_candidates"] == 2


def test_ties_go_to_the_earlier_candidate(tmp_path, tiny_lm):
    """Identical responses to one prompt are scored once, so they tie exactly; the earlier wins,
    with one row per instruction and with --group-by, in whichever order they come."""
    texts = tiny_corpus(6, seed=11)
    same, other = texts[1], texts[2]
    rows = [
        {
            "id": "q0",
            "instruction": texts[0],
            "responses": [{"text": same, "model": "first"}, {"text": same, "model": "second"}],
        },
        {
            "id": "q1",
            "instruction": texts[0],
            "responses": [{"text": same, "model": "second"}, {"text": same, "model": "first"}],
        },
        {
            "id": "q2",
            "instruction": texts[3],
            "responses": [
                {"text": other, "model": "x"},
                {"text": same, "model": "first"},
                {"text": same, "model": "second"},
            ],
        },
    ]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "in.parquet")
    datasel.run(
        Pick(model=str(tiny_lm), top_k=3), tmp_path / "in.parquet", tmp_path / "out", quiet=True
    )
    kept = read_dataset(tmp_path / "out").to_pylist()
    by = {(r["id"], r["pick_candidate"]): r for r in kept}
    for q, a, b in (("q0", 0, 1), ("q1", 0, 1), ("q2", 1, 2)):
        assert by[q, a]["pick_logprob"] == by[q, b]["pick_logprob"]
        assert by[q, a]["pick_rank"] + 1 == by[q, b]["pick_rank"]
    flat = [
        {
            "id": f"{r['id']}-{j}",
            "qid": r["id"],
            "instruction": r["instruction"],
            "response": c["text"],
            "model": c["model"],
        }
        for r in rows
        for j, c in enumerate(r["responses"])
    ]
    pq.write_table(pa.Table.from_pylist(flat), tmp_path / "flat.parquet")
    datasel.run(
        Pick(model=str(tiny_lm), group_by="qid", source_column="model", input_column=None),
        tmp_path / "flat.parquet",
        tmp_path / "flat",
        quiet=True,
    )
    picked = {r["qid"]: r["id"] for r in read_dataset(tmp_path / "flat").to_pylist()}
    assert picked["q0"] == "q0-0" and picked["q1"] == "q1-0"


def test_an_instruction_without_candidates_is_removed_with_its_reason(tmp_path, tiny_lm):
    rows = [
        {"id": "a", "instruction": "Name a colour.", "responses": ["Blue.", "Red, I think."]},
        {"id": "b", "instruction": "Say hi.", "responses": []},
        {"id": "c", "instruction": "Count to two.", "responses": None},
    ]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    m = datasel.run(Pick(model=str(tiny_lm)), tmp_path / "in.jsonl", tmp_path / "out", quiet=True)
    assert m["rows_in"] == 4 and m["kept"] == 1  # 2 candidates + one stand-in per empty list
    assert m["removed"] == {"pick:rank=2": 1, "pick:no_candidates": 2}
    assert m["stats"]["candidates"] == 2 and m["stats"]["instructions_without_candidates"] == 2
    removed = read_removed(tmp_path / "out").to_pylist()
    gone = {r["id"]: r for r in removed if r["reason"] == "pick:no_candidates"}
    assert set(gone) == {"b", "c"} and all(r["response"] is None for r in gone.values())
    assert read_dataset(tmp_path / "out").column("id").to_pylist() == ["a"]


def test_rows_sharing_an_id_an_empty_shard_and_a_null_group(tmp_path, tiny_lm):
    """Ids that repeat (two files numbered from 0) are two instructions, not one: each keeps a
    pick. A shard with no rows among others is no error. With --group-by, a candidate whose
    group is null is no candidate of any instruction (nor of one named "None")."""
    schema = pa.schema(
        [("id", pa.string()), ("instruction", pa.string()), ("responses", pa.list_(pa.string()))]
    )
    first = {"id": "0", "instruction": "Say hi.", "responses": ["hi", "hello"]}
    second = {"id": "0", "instruction": "Name a colour.", "responses": ["red", "blue"]}
    (tmp_path / "in").mkdir()
    for i, rows in enumerate([[first], [], [second]]):
        pq.write_table(pa.Table.from_pylist(rows, schema), tmp_path / "in" / f"p{i}.parquet")
    m = datasel.run(Pick(model=str(tiny_lm)), tmp_path / "in", tmp_path / "out", quiet=True)
    assert m["rows_in"] == 4 and m["kept"] == 2 and m["removed"] == {"pick:rank=2": 2}
    assert m["stats"]["instructions"] == 2
    kept = pq.read_table(tmp_path / "out" / "part-00000.parquet").to_pylist()
    kept += pq.read_table(tmp_path / "out" / "part-00002.parquet").to_pylist()
    assert kept[0]["response"] in first["responses"]
    assert kept[1]["response"] in second["responses"]
    assert [len(r["pick_scores"]) for r in kept] == [2, 2]

    flat = [
        {"id": "r0", "q": "q1", "instruction": "Say hi.", "response": "hi"},
        {"id": "r1", "q": "q1", "instruction": "Say hi.", "response": "hello"},
        {"id": "r2", "q": None, "instruction": "Name a dog.", "response": "Rex"},
        {"id": "r3", "q": None, "instruction": "Count.", "response": "one two"},
        {"id": "r4", "q": "None", "instruction": "Say yes.", "response": "yes"},
    ]
    pq.write_table(pa.Table.from_pylist(flat), tmp_path / "flat.parquet")
    m = datasel.run(
        Pick(model=str(tiny_lm), group_by="q", input_column=None),
        tmp_path / "flat.parquet",
        tmp_path / "flat",
        quiet=True,
    )
    assert m["rows_in"] == 5 == m["kept"] + m["removed_total"]
    assert m["removed"] == {"pick:rank=2": 1, "pick:q missing": 2}
    assert m["stats"]["instructions"] == 2
    picked = read_dataset(tmp_path / "flat").column("id").to_pylist()
    assert "r4" in picked and len(picked) == 2
    gone = {r["id"]: r for r in read_removed(tmp_path / "flat").to_pylist()}
    assert gone["r2"]["reason"] == gone["r3"]["reason"] == "pick:q missing"
    assert gone["r2"]["pick_rank"] is None


def test_a_source_that_is_a_number_is_named_by_it(tmp_path, tiny_lm):
    rows = [{"id": "a", "instruction": "x", "responses": [{"text": "one", "model": 7}]}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "in.parquet")
    m = datasel.run(Pick(model=str(tiny_lm)), tmp_path / "in.parquet", tmp_path / "o", quiet=True)
    assert m["stats"]["picked_by_source"] == {"7": 1}
    assert read_dataset(tmp_path / "o").column("pick_source").to_pylist() == ["7"]


def test_an_instruction_without_text_is_not_scored(tmp_path, tiny_lm):
    """No instruction and no input: nothing to condition on, so its candidates are not ranked
    (under an empty prompt they would be picked by style alone) but removed by name."""
    rows = [
        {"id": "a", "instruction": "Say hi.", "input": None, "responses": ["hi", "hello"]},
        {"id": "b", "instruction": "  ", "input": None, "responses": ["red", "blue"]},
        {"id": "c", "instruction": None, "input": "2 + 2", "responses": ["4", "5"]},
    ]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "in.parquet")
    m = datasel.run(Pick(model=str(tiny_lm)), tmp_path / "in.parquet", tmp_path / "out", quiet=True)
    assert m["rows_in"] == 6 and m["kept"] == 2
    assert m["removed"] == {"pick:rank=2": 2, "pick:empty_instruction": 2}
    assert m["stats"]["instructions_empty"] == 1 and m["stats"]["empty_candidates"] == 0
    assert sorted(read_dataset(tmp_path / "out").column("id").to_pylist()) == ["a", "c"]
    gone = [r for r in read_removed(tmp_path / "out").to_pylist() if r["id"] == "b"]
    assert [r["pick_logprob"] for r in gone] == [None, None]
