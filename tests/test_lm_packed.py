"""Packed rows (scorers.varlen attention) give the scores of padded rows, on CPU.

CPU runs the per-sequence SDPA branch of `scorers.varlen.packed_attention`; the CUDA flash
branch is checked by benchmarks/gpu_ppl.py (packed vs padded, printed with the MFU).
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from scorers import lm as lmmod  # noqa: E402
from scorers import varlen  # noqa: E402
from scorers.lm import LM, bits_per_byte, load_lm, score_bpb, score_conditional, score_ids  # noqa: E402
from tests.lm_fixtures import make_tiny_llama, make_tiny_lm, tiny_corpus  # noqa: E402

RTOL = 1e-4
MAKERS = {"gpt2": make_tiny_lm, "llama": make_tiny_llama}


@pytest.fixture(scope="module", params=sorted(MAKERS))
def pair(request, tmp_path_factory):
    """(padded LM, packed LM) over the same weights, loaded twice from one folder."""
    torch.set_num_threads(2)
    path = str(MAKERS[request.param](tmp_path_factory.mktemp(request.param)))
    padded, packed = load_lm(path, device="cpu"), load_lm(path, device="cpu", packed=True)
    assert not padded.packed and packed.packed
    assert packed.model.config._attn_implementation == varlen.NAME
    return padded, packed


def _docs(n: int, seed: int) -> list[str]:
    """Empty, one-token, short and several-context (sliding-window) documents, shuffled."""
    rng = np.random.default_rng(seed)
    sents = tiny_corpus(600, seed=seed + 1)
    out = [" ".join(rng.choice(sents, size=int(rng.choice([1, 2, 3, 9, 20])))) for _ in range(n)]
    return out + ["", "A", "Ünïcödé — ✓ 🙂", ""]


def _close(a, b):
    np.testing.assert_allclose(a, b, rtol=RTOL, atol=1e-9)


def test_cpu_keeps_padded_rows_by_default(pair):
    assert not load_lm(pair[0].model.name_or_path, device="cpu").packed
    assert lmmod._packs_by_default("cuda", torch.bfloat16)
    assert lmmod._packs_by_default("cuda:1", torch.float16)
    assert not lmmod._packs_by_default("cuda", torch.float32)  # flash runs half precision only
    assert not lmmod._packs_by_default("cpu", torch.bfloat16)


def test_bits_per_byte_equal_padded(pair, monkeypatch):
    padded, packed = pair
    docs = _docs(40, seed=0)
    lens = [len(padded.tokenizer(d, add_special_tokens=False)["input_ids"]) for d in docs]
    assert max(lens) > 3 * padded.max_tokens and 1 in lens and 0 in lens
    ref_nll, ref_n = score_bpb(padded, docs, batch_tokens=512)
    pieces = []
    real = lmmod._prefetch
    monkeypatch.setattr(lmmod, "_prefetch", lambda g: (pieces.append(p) or p for p in real(g)))
    for budget in (16, 64, 512, 1 << 20):  # 16: windows alone in a row, or even over budget
        pieces.clear()
        nll, n = score_bpb(packed, docs, batch_tokens=budget)
        np.testing.assert_array_equal(n, ref_n)
        _close(nll, ref_nll)
        _close(bits_per_byte(docs, nll), bits_per_byte(docs, ref_nll))
        assert sum(len(p[1]) for p in pieces) == len(docs)
        assert budget > 64 or len(pieces) > 1  # small budgets: several tokenised pieces
    # narrower windows and strides: many windows per document
    for ctx, stride in ((16, 5), (24, 1)):
        ref_nll, _ = score_bpb(padded, docs, max_tokens=ctx, stride=stride)
        nll, _ = score_bpb(packed, docs, max_tokens=ctx, stride=stride, batch_tokens=100)
        _close(nll, ref_nll)


def test_pick_log_likelihoods_equal_padded(pair):
    padded, packed = pair
    rng = np.random.default_rng(4)
    sents = tiny_corpus(200, seed=5)
    prompts, responses = [], []
    for i in range(15):  # 15 instructions x 4 candidates, some beyond the context
        prompt = " ".join(rng.choice(sents, size=int(rng.integers(0, 4)))) + "\n"
        for _ in range(4):
            responses.append(" ".join(rng.choice(sents, size=int(rng.integers(1, 8)))))
            prompts.append(prompt if i % 5 else "")
    responses[3] = "A"
    ref, ref_n = score_conditional(padded, prompts, responses, batch_tokens=512)
    for budget, ctx in ((64, None), (4096, None), (200, 24)):
        if ctx:
            ref, ref_n = score_conditional(padded, prompts, responses, max_tokens=ctx, stride=5)
        lp, n = score_conditional(
            packed, prompts, responses, batch_tokens=budget, max_tokens=ctx, stride=ctx and 5
        )
        np.testing.assert_array_equal(n, ref_n)
        _close(lp, ref)


def test_no_attention_across_packed_documents(pair):
    """A document scores the same alone and packed behind another, where the same tokens as
    its context (the prompt of a conditional score) move its score 10x beyond the tolerance: a
    leak across the boundary would show. At the model level, the packed row without its boundaries is a plain
    causal row, and its second document's states change."""
    _, packed = pair
    a, b = "The quick dog reads a red book.", "Blue birds sleep near the old river today."
    alone, _ = score_bpb(packed, [a])
    both, _ = score_bpb(packed, [b, a], batch_tokens=1 << 20)
    _close(both[1], alone[0])
    after_b, _ = score_conditional(packed, [b], [a])
    assert abs(-after_b[0] - alone[0]) > 10 * RTOL * alone[0]

    ids = [np.array([packed.prefix_id] + packed.tokenizer(t)["input_ids"]) for t in (b, a)]
    plan = lmmod._Plan(ids, np.ones(2, dtype=np.int64), 64, 32, packed=True)
    batch = plan.batch(0, 2, pad_id=0)
    assert batch["ids"].shape == (1, len(ids[0]) + len(ids[1]))
    body = packed.model.base_model
    cut = len(ids[0])
    with torch.inference_mode():
        row = torch.from_numpy(batch["ids"])
        pos = torch.from_numpy(batch["pos"])
        cu = torch.from_numpy(batch["cu"])
        h = body(input_ids=row, position_ids=pos, cu_seq_lens_q=cu, max_length_q=len(ids[1]))
        leaky = body(input_ids=row, position_ids=pos)
        h_a = body(input_ids=torch.from_numpy(ids[1])[None]).last_hidden_state[0]
    torch.testing.assert_close(h.last_hidden_state[0, cut:], h_a, rtol=1e-5, atol=1e-5)
    assert (leaky.last_hidden_state[0, cut:] - h_a).abs().max() > 1e-2


def test_packed_batches_fill_the_budget_in_document_order(pair):
    _, packed = pair
    seqs = [np.arange(n) for n in (5, 30, 64, 3, 200, 7)]
    plan = lmmod._Plan(seqs, np.ones(6, dtype=np.int64), 64, 32, packed=True, offset=10)
    assert (np.diff(plan.doc) >= 0).all()  # not sorted by length
    lo, sizes = 0, []
    while lo < len(plan):
        hi = plan.stop(lo, 100)
        b = plan.batch(lo, hi, pad_id=0)
        sizes.append(b["ids"].shape[1])
        assert b["ids"].shape[1] == plan.cost(lo, hi) <= 100
        assert b["cu"][0] == 0 and b["cu"][-1] == b["ids"].shape[1]
        assert b["max_len"] == np.diff(b["cu"]).max()
        assert (b["pos"][0, b["cu"][:-1]] == 0).all()  # positions restart in every window
        assert (b["doc"] >= 10).all()
        lo = hi
    assert sum(sizes) == plan.cum[-1] and max(sizes) > 64  # windows share rows


@pytest.mark.parametrize("layout", ["padded", "packed"])
def test_oom_halves_the_batch(pair, layout, monkeypatch):
    lm = pair[layout == "packed"]
    docs = _docs(20, seed=7)
    ref, _ = score_bpb(lm, docs, batch_tokens=1 << 20)
    real = lmmod._score_batch
    sizes: list[tuple[int, bool]] = []  # (tokens in the batch, padding included; succeeded)

    def flaky(lm_, b, totals):
        ok = b["ids"].size <= 256
        sizes.append((b["ids"].size, ok))
        if not ok:
            raise torch.OutOfMemoryError("fake OOM")
        return real(lm_, b, totals)

    monkeypatch.setattr(lmmod, "_score_batch", flaky)
    nll, _ = score_bpb(lm, docs, batch_tokens=1 << 20)
    assert not sizes[0][1]  # the first, largest batch failed, then halving recovered
    assert sum(ok for _, ok in sizes) > 1
    _close(nll, ref)  # no batch counted twice


def test_prefetch_encodes_the_next_piece_while_the_current_one_runs():
    started = [threading.Event() for _ in range(3)]
    main = threading.get_ident()

    def gen():
        for i in range(3):
            started[i].set()
            yield i, threading.get_ident()

    got = []
    for i, tid in lmmod._prefetch(gen()):
        assert tid != main
        if i < 2:  # item i + 1 is under way before the caller is done with item i
            assert started[i + 1].wait(timeout=10)
        got.append(i)
    assert got == [0, 1, 2]


def test_models_the_kernel_does_not_cover_stay_padded(tmp_path):
    from transformers import MistralConfig, MistralForCausalLM

    cfg = MistralConfig(
        vocab_size=64,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        sliding_window=8,
    )
    net = MistralForCausalLM(cfg).eval()
    lm = LM(
        model=net, tokenizer=None, device="cpu", dtype=torch.float32, max_tokens=32, packed=True
    )
    assert not lm.packed and net.config._attn_implementation != varlen.NAME


def test_score_ids_is_score_bpb_after_tokenisation(pair):
    docs = _docs(10, seed=9)
    for lm in pair:
        ids = [
            [lm.prefix_id] + lm.tokenizer(d, add_special_tokens=False)["input_ids"] for d in docs
        ]
        nll, n = score_ids(lm, ids, batch_tokens=128)
        ref, ref_n = score_bpb(lm, docs, batch_tokens=128)
        np.testing.assert_array_equal(n, ref_n)
        _close(nll, ref)
