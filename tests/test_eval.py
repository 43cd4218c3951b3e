"""`datasel eval`: same numbers for the same seed, resume after a kill, packing, the random
baseline matched in tokens, fine-tuning masks, and bad input as one line each. Tiny runs:
a one-layer GPT-2 from a config file, 16 steps of 4 x 64 tokens."""

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

import datasel
from datasel.cli import app
from datasel.errors import DataselError
from datasel.eval import data, run, train
from datasel.stages.score import ScorePpl
from tests.conftest import write_jsonl
from tests.lm_fixtures import make_tiny_lm, tiny_corpus

pytest.importorskip("torch")
pytest.importorskip("tokenizers")
runner = CliRunner()
FAST = {"tokens": 4096, "batch_size": 4, "eval_tokens": 512, "checkpoints": 2, "quiet": True}
TINIER = {"model_type": "gpt2", "n_layer": 1, "n_head": 2, "n_embd": 32, "n_positions": 64}


@pytest.fixture
def no_probe(monkeypatch):
    """Skip the timing probe (a training step before the runs, for the estimate)."""
    monkeypatch.setattr(run, "_time_step", lambda *a: 0.1)


def rows(texts):
    return [{"id": f"d{i}", "text": t} for i, t in enumerate(texts)]


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    d = tmp_path_factory.mktemp("sets")
    shouted = [t.upper() + " " + t.upper() for t in tiny_corpus(300, seed=2)]
    (d / "model.json").write_text(json.dumps(TINIER))
    return {
        "model": str(d / "model.json"),
        "plain": str(write_jsonl(d / "plain.jsonl", rows(tiny_corpus(300, seed=1)))),
        "shout": str(write_jsonl(d / "shout.jsonl", rows(shouted))),
        "pool": str(write_jsonl(d / "pool.jsonl", rows(tiny_corpus(600, seed=3) + shouted))),
        "heldout": str(write_jsonl(d / "heldout.jsonl", rows(tiny_corpus(200, seed=9)))),
    }


@pytest.fixture
def fast(sets, no_probe):
    """Options of a fast run: the config-file model, 16 steps, no timing probe."""
    return FAST | {"model_name": sets["model"]}


def curves(result):
    """Every run's numbers, without its timings."""
    return [
        (r["arm"], r["seed"], [(c["train_loss"], c["eval"]) for c in r["curve"]])
        for r in result["runs"]
    ]


def arms(sets):
    return {"plain": sets["plain"], "shout": sets["shout"]}


def test_same_seed_same_numbers_and_seeds_differ(tmp_path, sets, fast):
    held = {"held": sets["heldout"]}
    a = datasel.evaluate(tmp_path / "a", arms(sets), held, **fast)
    b = datasel.evaluate(tmp_path / "b", arms(sets), held, **fast)
    assert curves(a) == curves(b)
    (p0, p1) = [r for r in a["runs"] if r["arm"] == "plain"]
    assert p0["curve"][-1]["eval"] != p1["curve"][-1]["eval"]  # seed 1 is another run
    s = a["summary"]["plain"]["held"]["bpb"]
    assert s["mean"] == pytest.approx(np.mean(s["values"])) and s["spread"] > 0
    # the arm trained on plain text predicts plain held-out text better than the shouted arm
    assert (
        a["summary"]["plain"]["held"]["bpb"]["mean"] < a["summary"]["shout"]["held"]["bpb"]["mean"]
    )
    saved = json.loads((tmp_path / "a" / "eval.json").read_text())
    assert [len(r["curve"]) for r in saved["runs"]] == [2, 2, 2, 2]
    assert (tmp_path / "a" / "report.html").read_text().count("<img") == 4


def test_killed_eval_resumes_with_only_the_unfinished_runs(tmp_path, sets, monkeypatch, fast):
    held, one = {"held": sets["heldout"]}, fast | {"seeds": 1}
    clean = datasel.evaluate(tmp_path / "clean", arms(sets), held, **one)
    real, trained = train.train, []

    def killed_after_one(net, *a, **k):
        if trained:
            raise KeyboardInterrupt  # as a kill during the second run
        trained.append(1)
        return real(net, *a, **k)

    monkeypatch.setattr(train, "train", killed_after_one)
    with pytest.raises(KeyboardInterrupt):
        datasel.evaluate(tmp_path / "out", arms(sets), held, **one)
    assert [p.name for p in (tmp_path / "out" / "runs").glob("*.json")] == ["plain.seed0.json"]

    done = []
    monkeypatch.setattr(train, "train", lambda net, *a, **k: done.append(1) or real(net, *a, **k))
    resumed = datasel.evaluate(tmp_path / "out", arms(sets), held, **one)
    assert len(done) == 1
    assert curves(resumed) == curves(clean)
    datasel.evaluate(tmp_path / "out", arms(sets), held, **one)
    assert len(done) == 1  # all finished: nothing retrained
    datasel.evaluate(tmp_path / "out", arms(sets), held, **one | {"checkpoints": 1})
    assert len(done) == 3  # another setting: every run again


def test_saved_models_score_with_score_ppl_and_count_for_resume(tmp_path, sets, fast, monkeypatch):
    one, held = fast | {"seeds": 1}, {"held": sets["heldout"]}
    datasel.evaluate(tmp_path / "o", arms(sets), held, **one)
    assert not (tmp_path / "o" / "models").exists()  # only when asked
    real, trained = train.train, []
    monkeypatch.setattr(train, "train", lambda *a, **k: trained.append(1) or real(*a, **k))
    datasel.evaluate(tmp_path / "o", arms(sets), held, **one | {"save_models": True})
    assert len(trained) == 2  # finished, but without their models: trained again
    datasel.evaluate(tmp_path / "o", arms(sets), held, **one | {"save_models": True})
    assert len(trained) == 2
    folder = tmp_path / "o" / "models" / "plain.seed0"
    assert sorted(p.name for p in (tmp_path / "o" / "models").iterdir()) == [
        "plain.seed0", "shout.seed0"]  # fmt: skip
    # a reference LM for `score ppl`: the plain arm's model finds plain text likelier
    pool = sets["pool"]
    datasel.run(ScorePpl(model=str(folder), column="ref"), pool, tmp_path / "s", quiet=True)
    t = pq.read_table(tmp_path / "s", columns=["text", "ref_bpb"]).to_pylist()
    shouted = [r["ref_bpb"] for r in t if r["text"].isupper()]
    plain = [r["ref_bpb"] for r in t if not r["text"].isupper()]
    assert len(shouted) == 300 and np.mean(plain) < np.mean(shouted)


def test_random_baseline_is_matched_in_tokens(tmp_path, sets, fast):
    result = datasel.evaluate(
        tmp_path / "o", {"plain": sets["plain"]}, {"held": sets["heldout"]},
        baseline={"random": sets["pool"]}, seeds=2, **fast,
    )  # fmt: skip
    target = result["settings"]["match_tokens"]
    assert target == result["arms"]["plain"]["tokens"]
    tok = datasel.eval.tokenizer.load_or_train(
        tmp_path / "o" / "tokenizer", {}, vocab_size=0, given=None
    )
    pool = data.read_docs("random", sets["pool"], text_column="text", prompt_column=None)
    picks = []
    for seed in (0, 1):
        idx = data.take_tokens(pool, tok, target, np.random.default_rng([seed, 1]))
        sizes = [len(ids) for ids, _ in pool.tokens(tok, idx)]
        assert sum(sizes) >= target > sum(sizes) - sizes[-1]
        picks.append(set(idx.tolist()))
    assert picks[0] != picks[1]  # drawn anew per seed
    assert [r["docs"] for r in result["runs"] if r["arm"] == "random"] == [len(p) for p in picks]
    assert result["reference"] == "random" and "plain" in result["vs_reference"]


def test_an_arm_with_seed_in_its_path_trains_each_seed_on_its_own_selection(tmp_path, sets, fast):
    held = {"held": sets["heldout"]}
    for seed, name in enumerate(("plain", "shout")):  # seed 0 plain text, seed 1 shouted
        (tmp_path / f"sel-{seed}.jsonl").write_bytes(open(sets[name], "rb").read())
    per_seed = {"mixed": str(tmp_path / "sel-{seed}.jsonl")}
    got = datasel.evaluate(tmp_path / "o", per_seed, held, seeds=2, **fast)
    alone = datasel.evaluate(tmp_path / "a", arms(sets), held, seeds=2, **fast)
    by = {(r["arm"], r["seed"]): r["curve"][-1]["eval"]["held"]["bpb"] for r in alone["runs"]}
    mixed = got["summary"]["mixed"]["held"]["bpb"]["values"]
    # each seed trained on its own file: seed 0 on plain text, seed 1 on shouted text (the
    # tokenizers differ, so the numbers are near, not equal, to the arms trained alone)
    assert mixed[0] < mixed[1]
    assert mixed[0] == pytest.approx(by[("plain", 0)], rel=0.05)
    assert mixed[1] == pytest.approx(by[("shout", 1)], rel=0.05)
    with pytest.raises(DataselError, match="sel-2.jsonl: no such file"):
        datasel.evaluate(tmp_path / "x", per_seed, held, seeds=3, **fast)


def test_packing_separates_documents_and_repeats_small_arms(sets):
    tok = datasel.eval.tokenizer.train_bpe(tiny_corpus(300), 300)
    docs = data.read_docs("plain", sets["plain"], text_column="text", prompt_column=None)
    total = docs.count_tokens(tok)
    blocks, mask, epochs = data.training_blocks(docs, tok, blocks=8, context=total // 4, seed=0)
    assert mask is None and blocks.shape == (8, total // 4)
    assert epochs == pytest.approx(2.0, abs=0.05)  # twice the arm's tokens
    assert (blocks == tok.eos_token_id).sum() == pytest.approx(2 * len(docs), abs=3)
    again, _, _ = data.training_blocks(docs, tok, blocks=8, context=total // 4, seed=0)
    other, _, _ = data.training_blocks(docs, tok, blocks=8, context=total // 4, seed=1)
    assert (again == blocks).all() and not (other == blocks).all()


def test_finetuning_masks_prompts_and_runs(tmp_path, no_probe):
    lm = make_tiny_lm(tmp_path / "lm", n_positions=256)
    texts = tiny_corpus(240, seed=4)
    pairs = [{"instruction": texts[i], "response": texts[i + 1]} for i in range(0, 240, 2)]
    arm = write_jsonl(tmp_path / "sft.jsonl", pairs[:100])
    held = write_jsonl(tmp_path / "held.jsonl", pairs[100:])
    docs = data.read_docs("sft", str(arm), text_column="response", prompt_column="instruction")
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(lm)
    ((ids, mask),) = docs.tokens(tok, [0])
    n_resp = len(tok(pairs[0]["response"], add_special_tokens=False)["input_ids"])
    assert mask.sum() == n_resp + 1 and mask[-n_resp - 1 :].all()  # response + EOS only
    assert ids[-1] == tok.eos_token_id
    result = datasel.evaluate(
        tmp_path / "o", {"sft": str(arm)}, {"held": str(held)}, finetune=str(lm), seeds=1,
        **FAST | {"eval_tokens": 300},
    )  # fmt: skip
    final = result["summary"]["sft"]["held"]
    assert 0 < final["loss"]["mean"] < 20 and final["bpb"]["spread"] is None


def test_cli_writes_results_and_table(tmp_path, sets):
    res = runner.invoke(
        app,
        ["eval", str(tmp_path / "o"), "--train", f"plain={sets['plain']}", "--train",
         f"shout={sets['shout']}", "--eval", f"held={sets['heldout']}", "--tokens", "2048",
         "--batch-size", "4", "--eval-tokens", "512", "--seeds", "2", "--checkpoints", "1",
         "--model", sets["model"]],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "estimated time" in res.output and "vs plain" in res.output
    assert (tmp_path / "o" / "eval.json").is_file()


def one_line_error(tmp_path, sets, *args):
    base = ["eval", str(tmp_path / "o"), "--tokens", "1024", "--batch-size", "4", "--quiet"]
    res = runner.invoke(app, base + list(args))
    assert res.exit_code == 2, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), res.output
    return lines[0]


def test_bad_input_one_line_each(tmp_path, sets):
    empty = write_jsonl(tmp_path / "empty.jsonl", [])
    tiny = write_jsonl(tmp_path / "tiny.jsonl", rows(["A short one."]))
    held = f"held={sets['heldout']}"
    msg = one_line_error(tmp_path, sets, "--train", f"e={empty}", "--eval", held)
    assert "empty.jsonl" in msg and "no rows" in msg
    msg = one_line_error(tmp_path, sets, "--train", f"p={sets['plain']}", "--eval", f"t={tiny}")
    assert "tiny.jsonl" in msg and "fewer than one context window" in msg
    msg = one_line_error(
        tmp_path, sets, "--train", f"p={sets['plain']}", "--eval", held, "--model", "huge"
    )
    assert "--model huge" in msg and "tiny" in msg
    msg = one_line_error(
        tmp_path,
        sets,
        "--train",
        f"p={sets['plain']}",
        "--eval",
        held,
        "--finetune",
        str(tmp_path / "nope"),
    )
    assert "nope" in msg and "does not exist" in msg
    lm = make_tiny_lm(tmp_path / "lm")
    msg = one_line_error(
        tmp_path, sets, "--train", f"p={sets['plain']}", "--eval", held, "--finetune", str(lm)
    )
    assert "plain.jsonl" in msg and "no column 'instruction'" in msg
    msg = one_line_error(tmp_path, sets, "--train", "p", "--eval", held)
    assert "NAME=PATH" in msg


def test_missing_extra_names_it(tmp_path, sets, monkeypatch):
    import builtins

    real = builtins.__import__

    def no_tokenizers(name, *a, **k):
        if name == "tokenizers":
            raise ImportError("no tokenizers", name="tokenizers")
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_tokenizers)
    with pytest.raises(DataselError, match=r"pip install 'datasel\[lm\]'"):
        run.evaluate(tmp_path / "o", {"p": sets["plain"]}, {"h": sets["heldout"]})


def test_a_difference_must_exceed_the_noise_pooled_over_arms():
    """Two seeds of one arm can agree by chance: an arm whose seeds happen to sit close does
    not make a small difference real when the other arms' runs spread wider."""
    from datasel.eval.report import difference, pooled_spread, seed_stats

    lucky = seed_stats([2.700, 2.701])  # sd 0.0007
    random_arm = seed_stats([2.749, 2.751])
    noisy = [seed_stats([2.70, 2.80]), seed_stats([2.65, 2.75]), lucky, random_arm]
    pooled = pooled_spread(noisy)
    variances = [0.005, 0.005, 5e-7, 2e-6]  # one degree of freedom each
    assert pooled == pytest.approx((sum(variances) / 4) ** 0.5, rel=1e-4)
    assert difference(lucky, random_arm)["exceeds_spread"] is True  # the sum of two sds alone
    assert difference(lucky, random_arm, pooled)["exceeds_spread"] is False
    assert difference(seed_stats([2.50, 2.51]), random_arm, pooled)["exceeds_spread"] is True
    assert pooled_spread([seed_stats([2.7])]) is None
    assert difference(seed_stats([2.7]), random_arm, pooled)["exceeds_spread"] is None
    # seed by seed: seed 0 lower than random's seed 0, seed 1 higher than random's seed 1
    assert difference(seed_stats([2.70, 2.76]), random_arm)["lower_in_seeds"] == 1


def test_table_puts_eval_sets_in_rows_when_they_outnumber_the_arms():
    from datasel.eval.report import summarize, table

    def run(arm, seed, bpb):
        evals = {s: {"bpb": bpb + k / 10, "loss": 2 * bpb} for k, s in enumerate("abc")}
        return {"arm": arm, "seed": seed, "key": "", "curve": [{"eval": evals}]}

    runs = [run("random", 0, 3.0), run("dsir", 0, 2.9), run("random", 1, 3.1), run("dsir", 1, 3.0)]
    result = summarize(runs=runs, arms={"random": {}, "dsir": {}}, sets=dict.fromkeys("abc"),
                       settings={"seeds": 2})  # fmt: skip
    t = table(result)
    assert [c.header for c in t.columns] == ["eval set", "random", "dsir", "vs random"]
    assert list(t.columns[0].cells) == ["a", "b", "c"]
    assert list(t.columns[3].cells) == ["-0.1000 (2/2 lower)"] * 3
    narrow = summarize(runs=runs, arms={"random": {}, "dsir": {}}, sets={"a": None},
                       settings={"seeds": 2})  # fmt: skip
    assert [c.header for c in table(narrow).columns] == ["arm", "a", "vs random"]


def test_a_step_split_into_passes_makes_the_same_update(monkeypatch):
    """Gradients summed over passes of 2 blocks (one of them prompt tokens only) = one pass."""
    import torch
    from transformers import AutoModelForCausalLM, GPT2Config

    cfg = GPT2Config(vocab_size=50, n_layer=1, n_head=2, n_embd=16, n_positions=32, resid_pdrop=0,
                     embd_pdrop=0, attn_pdrop=0)  # fmt: skip
    rng = np.random.default_rng(0)
    blocks = rng.integers(0, 50, size=(12, 32))
    mask = rng.random((12, 32)) < 0.5
    mask[[0, 1, 6]] = False  # a pass of prompt tokens only, and a part-prompt pass
    recipe = train.Recipe(lr=1e-2, batch_size=6, checkpoints=2, device="cpu")

    def run_with(per_pass):
        monkeypatch.setattr(train, "blocks_per_pass", lambda *a: per_pass)
        torch.manual_seed(0)
        net = AutoModelForCausalLM.from_config(cfg)
        curve = train.train(net, blocks, mask, recipe, evaluate=dict)
        return [c["train_loss"] for c in curve], next(net.parameters()).detach().clone()

    (one, w_one), (split, w_split) = run_with(6), run_with(2)
    assert one == pytest.approx(split, abs=1e-5)
    assert torch.allclose(w_one, w_split, atol=1e-5)


def test_blocks_per_pass_fits_half_the_free_memory(monkeypatch):
    from transformers import AutoModelForCausalLM, GPT2Config

    net = AutoModelForCausalLM.from_config(
        GPT2Config(vocab_size=1000, n_layer=2, n_head=2, n_embd=64, n_positions=128)
    )
    monkeypatch.setattr(train, "free_memory", lambda device: 1e12)
    assert train.blocks_per_pass(net, 128, 16, "cpu") == 16  # fits: one pass, as before
    monkeypatch.setattr(train, "free_memory", lambda device: 40e6)
    assert 1 <= train.blocks_per_pass(net, 128, 16, "cpu") < 16
    monkeypatch.setattr(train, "free_memory", lambda device: 0.0)
    assert train.blocks_per_pass(net, 128, 16, "cpu") == 1  # never less than one block


def test_without_a_terminal_progress_is_a_line_with_an_eta(monkeypatch, capsys):
    from datasel.eval import report

    monkeypatch.setattr(report, "LOG_SECONDS", 0.0)
    with report.Bar(3, quiet=False) as bar:
        bar.describe("pick seed 1")
        for _ in range(3):
            bar.advance()
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 3 and lines[-1].startswith("eval: pick seed 1: step 3/3 (100%), ETA ")
    with report.Bar(3, quiet=True) as bar:
        bar.advance()
    assert capsys.readouterr().err == ""
