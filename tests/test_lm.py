"""scorers.lm against plain unbatched float32 references, on a tiny GPT-2 (64-token context)."""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from scorers import lm as lmmod  # noqa: E402
from scorers.lm import bits_per_byte, load_lm, score_bpb, score_conditional  # noqa: E402
from tests.lm_fixtures import make_tiny_lm, tiny_corpus  # noqa: E402

RTOL = 1e-4


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    torch.set_num_threads(2)
    path = make_tiny_lm(tmp_path_factory.mktemp("tiny-gpt2"))
    return load_lm(str(path), device="cpu")


def _ids(lm, text: str) -> list[int]:
    return lm.tokenizer(text, add_special_tokens=False)["input_ids"]


def _logprobs(model, ids: list[int]) -> torch.Tensor:
    """Full-vocabulary fp32 log-softmax of one unpadded sequence: (len(ids), vocab)."""
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].float()
    return torch.log_softmax(logits, dim=-1)


def naive_score_bpb(lm, texts, *, max_tokens=None, stride=None):
    """One document at a time, no padding: the HF sliding-window recipe with the last
    window pulled back to a full context. Returns (nll, n_tokens) like `score_bpb`."""
    ctx = max_tokens or lm.max_tokens
    stride = stride or ctx // 2
    nll, ntok = [], []
    for text in texts:
        ids = [lm.prefix_id] + _ids(lm, text)
        n = len(ids)
        windows = [(0, min(n, ctx), 1)]  # (start, end, first scored target)
        end = min(n, ctx)
        while end < n:
            new = min(n, end + stride)
            windows.append((new - ctx, new, end))
            end = new
        total = 0.0
        for a, b, f in windows:
            lp = _logprobs(lm.model, ids[a:b])
            total -= sum(float(lp[p - 1 - a, ids[p]]) for p in range(f, b))
        nll.append(total)
        ntok.append(n - 1)
    return np.array(nll), np.array(ntok)


def per_token_reference(lm, prefix: list[int], tail: list[int], ctx: int) -> float:
    """Sum of log p(tail token) where each token sees the previous min(p, ctx - 1) ids.

    Independent of any window bookkeeping: with stride=1 `scorers.lm` must give this.
    """
    ids = prefix + tail
    total = 0.0
    for p in range(len(prefix), len(ids)):
        a = max(0, p + 1 - ctx)
        lp = _logprobs(lm.model, ids[a : p + 1])
        total += float(lp[-2, ids[p]])
    return total


def _docs(n: int, seed: int) -> list[str]:
    """Mixed lengths: from one word to ~4x the 64-token context."""
    rng = np.random.default_rng(seed)
    sents = tiny_corpus(600, seed=seed + 1)
    out = []
    for _ in range(n):
        k = int(rng.choice([1, 1, 2, 3, 5, 9, 14, 20]))
        out.append(" ".join(rng.choice(sents, size=k)))
    out[0] = "A"
    out[1] = "Ünïcödé — ✓ bytes 🙂"
    return out


def _close(a, b, rtol=RTOL):
    np.testing.assert_allclose(a, b, rtol=rtol, atol=0)


def test_load_lm_defaults(lm):
    assert lm.device == "cpu"
    assert lm.dtype == torch.float32
    assert lm.max_tokens == 64
    assert lm.prefix_id == lm.tokenizer.bos_token_id
    assert not lm.model.training


def test_missing_path_message(tmp_path):
    missing = tmp_path / "no-such-model"
    with pytest.raises(FileNotFoundError, match="no-such-model"):
        load_lm(str(missing))
    with pytest.raises(FileNotFoundError, match="x.gguf"):
        load_lm("models/x.gguf")
    with pytest.raises(ValueError, match=str(tmp_path)):
        load_lm(str(tmp_path))  # exists but holds no model


def test_batch_independence_vs_naive(lm):
    docs = _docs(40, seed=0)
    lens = [len(_ids(lm, d)) for d in docs]
    assert min(lens) < 8 and max(lens) > 3 * lm.max_tokens  # short and sliding-window docs
    ref_nll, ref_n = naive_score_bpb(lm, docs)
    for budget in (64, 512, 1 << 20):
        nll, n = score_bpb(lm, docs, batch_tokens=budget)
        assert nll.dtype == np.float64 and n.dtype == np.int64
        np.testing.assert_array_equal(n, lens)
        np.testing.assert_array_equal(n, ref_n)
        _close(nll, ref_nll)
    # order and neighbours do not matter
    perm = np.random.default_rng(1).permutation(len(docs))
    nll_p, _ = score_bpb(lm, [docs[i] for i in perm], batch_tokens=512)
    _close(nll_p, ref_nll[perm])


def test_vocab_blocks_and_token_chunks_change_nothing(lm, monkeypatch):
    """The CPU head runs over vocabulary blocks and token chunks; uneven ones give the same."""
    docs = _docs(12, seed=3)
    ref_nll, _ = naive_score_bpb(lm, docs)
    monkeypatch.setattr(lmmod, "_VOCAB_BLOCK", 128)  # 600 = 4 full blocks + 88
    monkeypatch.setattr(lmmod, "_TOKEN_CHUNK", 7)
    nll, _ = score_bpb(lm, docs, batch_tokens=256)
    _close(nll, ref_nll)


def test_short_docs_match_hf_loss(lm):
    docs = [d for d in _docs(30, seed=2) if len(_ids(lm, d)) < lm.max_tokens][:10]
    nll, n = score_bpb(lm, docs, batch_tokens=256)
    for d, x, k in zip(docs, nll, n, strict=True):
        ids = torch.tensor([[lm.prefix_id] + _ids(lm, d)])
        with torch.no_grad():
            loss = lm.model(ids, labels=ids).loss.item()
        assert k == ids.shape[1] - 1
        assert math.isclose(x, loss * k, rel_tol=RTOL)


@pytest.mark.parametrize("ctx,stride", [(16, 1), (64, 1), (16, 5)])
def test_sliding_window_context(lm, ctx, stride):
    docs = [d for d in _docs(12, seed=3) if ctx + 8 < len(_ids(lm, d)) < 220][:3]
    assert docs
    nll, n = score_bpb(lm, docs, max_tokens=ctx, stride=stride, batch_tokens=300)
    np.testing.assert_array_equal(n, [len(_ids(lm, d)) for d in docs])
    if stride == 1:  # every token sees exactly min(p, ctx - 1) previous ids
        ref = [-per_token_reference(lm, [lm.prefix_id], _ids(lm, d), ctx) for d in docs]
    else:
        ref, _ = naive_score_bpb(lm, docs, max_tokens=ctx, stride=stride)
    _close(nll, ref)


def test_bad_window_arguments(lm):
    with pytest.raises(ValueError, match="stride"):
        score_bpb(lm, ["a b"], max_tokens=16, stride=16)
    with pytest.raises(ValueError, match="max_tokens"):
        score_bpb(lm, ["a b"], max_tokens=1)


def test_empty_and_bits_per_byte(lm):
    texts = ["", "The cat runs.", "Ünï ✓"]
    nll, n = score_bpb(lm, texts)
    assert n[0] == 0 and nll[0] == 0.0 and (nll[1:] > 0).all()
    bpb = bits_per_byte(texts, nll)
    assert np.isnan(bpb[0])
    assert math.isclose(bpb[2], nll[2] / (len("Ünï ✓".encode()) * math.log(2)))
    assert score_bpb(lm, [])[0].shape == (0,)


def naive_conditional(lm, prompts, responses):
    out = []
    for p, r in zip(prompts, responses, strict=True):
        pre, rid = [lm.prefix_id] + _ids(lm, p), _ids(lm, r)
        ids = pre + rid
        lp = _logprobs(lm.model, ids)
        out.append(sum(float(lp[q - 1, ids[q]]) for q in range(len(pre), len(ids))))
    return np.array(out)


def test_conditional_vs_naive(lm):
    rng = np.random.default_rng(4)
    sents = tiny_corpus(200, seed=5)
    prompts, responses = [], []
    for _ in range(12):  # 12 instructions x 4 candidates of mixed lengths
        words = str(rng.choice(sents)).split()
        prompt = " ".join(words[: int(rng.integers(0, len(words)))]) + "\n"
        for _ in range(4):
            words = str(rng.choice(sents)).split()
            responses.append(" ".join(words[: int(rng.integers(1, len(words) + 1))]))
            prompts.append(prompt)
    assert all(
        len(_ids(lm, p + r)) + 1 <= lm.max_tokens for p, r in zip(prompts, responses, strict=True)
    )
    ref = naive_conditional(lm, prompts, responses)
    for budget in (64, 4096):
        lp, n = score_conditional(lm, prompts, responses, batch_tokens=budget)
        np.testing.assert_array_equal(n, [len(_ids(lm, r)) for r in responses])
        assert (lp < 0).all()
        _close(lp, ref)


def test_conditional_masks_prompt(lm):
    r = "The dog sleeps under the tree."
    # empty prompt: the response is scored exactly like a document
    lp, n = score_conditional(lm, [""], [r])
    nll, m = score_bpb(lm, [r])
    assert n[0] == m[0]
    assert math.isclose(-lp[0], nll[0], rel_tol=RTOL)
    # a prompt changes the conditioning, not the number of scored tokens
    lp2, n2 = score_conditional(lm, ["Red green blue yellow. "], [r])
    assert n2[0] == n[0] and not math.isclose(lp2[0], lp[0], rel_tol=1e-3)


def test_conditional_long_sequences(lm):
    """Prompt + response beyond the context: stride 1 gives each response token the
    longest context the window allows."""
    sents = tiny_corpus(50, seed=6)
    prompts = [" ".join(sents[:6]), " ".join(sents[6:8]), ""]
    responses = [" ".join(sents[10:13]), " ".join(sents[13:20]), " ".join(sents[20:24])]
    ctx = 24
    lp, n = score_conditional(lm, prompts, responses, max_tokens=ctx, stride=1)
    ref = [
        per_token_reference(lm, [lm.prefix_id] + _ids(lm, p), _ids(lm, r), ctx)
        for p, r in zip(prompts, responses, strict=True)
    ]
    np.testing.assert_array_equal(n, [len(_ids(lm, r)) for r in responses])
    _close(lp, ref)


def test_prompt_tokenised_once(lm, monkeypatch):
    seen: list[str] = []
    real = lmmod._tokenize

    def spy(lm_, texts):
        seen.extend(texts)
        return real(lm_, texts)

    monkeypatch.setattr(lmmod, "_tokenize", spy)
    score_conditional(lm, ["Q1\n"] * 8 + ["Q2\n"] * 8, [f"answer {i}" for i in range(16)])
    assert seen.count("Q1\n") == 1 and seen.count("Q2\n") == 1


def test_longest_batch_first_and_padding_multiple(lm):
    docs = _docs(30, seed=8)
    seqs = [np.array([lm.prefix_id] + _ids(lm, d)) for d in docs]
    plan = lmmod._Plan(seqs, np.ones(len(seqs), dtype=np.int64), 64, 32)
    assert (np.diff(plan.length) <= 0).all()
    b = plan.batch(0, 5, pad_id=0)
    assert b["ids"].shape[1] % 8 == 0 and b["ids"].shape[1] >= plan.length[0]
    assert (b["pos"][:, 0] == 0).all()


def test_logits_far_above_the_target_fall_back_exactly(tmp_path, monkeypatch):
    """The CPU head sums exp(z - z_target); where that overflows (a logit > ~88 nats above the
    target's) the row is redone with a max-shifted log-sum-exp, and scores stay exact."""
    big = load_lm(str(make_tiny_lm(tmp_path / "big-logits")), device="cpu")
    with torch.no_grad():
        big.model.transformer.wte.weight.mul_(30.0)  # tied: the head's logits grow 30x
    calls = []
    exact = lmmod._nll_logsumexp
    monkeypatch.setattr(lmmod, "_nll_logsumexp", lambda x, *a: calls.append(len(x)) or exact(x, *a))
    docs = _docs(6, seed=4)
    ref_nll, _ = naive_score_bpb(big, docs)
    nll, _ = score_bpb(big, docs, batch_tokens=256)
    assert calls, "no row overflowed: the fallback was not exercised"
    _close(nll, ref_nll)


def test_fused_gelu_matches_the_plain_transformers_model(lm):
    from transformers import AutoModelForCausalLM

    plain = AutoModelForCausalLM.from_pretrained(lm.model.name_or_path).eval()
    assert not any(isinstance(m, torch.nn.GELU) for m in plain.modules())
    assert any(isinstance(m, torch.nn.GELU) for m in lm.model.modules())
    ids = torch.tensor([[lm.prefix_id] + _ids(lm, tiny_corpus()[0])[:60]])
    with torch.no_grad():
        torch.testing.assert_close(lm.model(ids).logits, plain(ids).logits, rtol=1e-5, atol=1e-5)


def test_head_with_a_bias(tmp_path):
    """Some LM heads carry a bias (added to every logit): the blocked CPU head adds it too."""
    biased = load_lm(str(make_tiny_lm(tmp_path / "biased")), device="cpu")
    head = biased.model.get_output_embeddings()
    with torch.no_grad():
        head.bias = torch.nn.Parameter(
            torch.randn(head.out_features, generator=torch.Generator().manual_seed(0))
        )
    docs = _docs(8, seed=5)
    ref_nll, _ = naive_score_bpb(biased, docs)
    nll, _ = score_bpb(biased, docs, batch_tokens=256)
    _close(nll, ref_nll)


def test_context_not_a_multiple_of_8(tmp_path):
    """Rows are padded to a multiple of 8 but never past the model's positions (GPT-2's are
    learned, 61 here): full 61-token windows score as the naive loop does."""
    odd = load_lm(str(make_tiny_lm(tmp_path / "ctx61", n_positions=61)), device="cpu")
    docs = [d for d in _docs(12, seed=6) if len(_ids(odd, d)) > 80][:3]
    assert docs
    ref_nll, _ = naive_score_bpb(odd, docs)
    nll, _ = score_bpb(odd, docs, batch_tokens=512)
    _close(nll, ref_nll)


def test_no_false_padding_warning(lm):
    """transformers' "passing in an attention_mask" warning is filtered: our right padding is
    never seen by a scored token (the batch-independence tests above prove it)."""
    import logging

    hf_log = logging.getLogger("transformers.modeling_utils")
    record = hf_log.makeRecord(
        hf_log.name, logging.WARNING, __file__, 0,
        "We strongly recommend passing in an `attention_mask` since your input_ids may be padded.",
        None, None,
    )  # fmt: skip
    assert not hf_log.filter(record)
    other = hf_log.makeRecord(hf_log.name, logging.WARNING, __file__, 0, "other", None, None)
    assert hf_log.filter(other)
