import numpy as np
import pyarrow as pa

from datasel.ops.minhash import shingle_hashes, signatures
from datasel.ops.unionfind import components
from datasel.ops.words import hash_texts, normalize


def jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b)


def shingles(text: str, n: int = 5) -> set:
    import re

    words = re.findall(r"[0-9a-z\x80-\U0010ffff]+", text.lower())
    return {tuple(words[i : i + n]) for i in range(max(1, len(words) - n + 1))}


def test_text_hash_ignores_case_and_whitespace_but_not_words():
    texts = [
        "Hello  World\n\tfoo",
        "hello world foo",
        " HELLO WORLD FOO ",
        "hello world bar",
        "ｈｅｌｌｏ world foo",
    ]
    h, _, _ = hash_texts(normalize(pa.array(texts)))
    assert h[0] == h[1] == h[2] == h[4]  # NFKC folds full-width letters
    assert h[3] != h[0]


def test_word_hashes_match_words():
    texts = ["The cat, the HAT.", "", "a-b c", "naïve café"]
    _, words, docs = hash_texts(normalize(pa.array(texts)))
    assert docs.tolist() == [0, 0, 0, 0, 2, 2, 2, 3, 3]
    assert words[0] == words[2]  # "the" == "The"
    assert len(set(words.tolist())) == 8


def test_minhash_estimates_jaccard():
    rng = np.random.default_rng(0)
    vocab = [f"w{i}" for i in range(3000)]
    base = list(rng.choice(vocab, 400))
    texts, truth = [], []
    for frac in [0.0, 0.02, 0.05, 0.1, 0.2, 0.4]:
        other = list(base)
        for i in rng.choice(len(other), int(frac * len(other)), replace=False):
            other[i] = "zz" + str(i)
        texts.append(" ".join(other))
        truth.append(jaccard(shingles(" ".join(base)), shingles(texts[-1])))
    texts.append(" ".join(base))
    _, w, d = hash_texts(normalize(pa.array(texts)))
    sh, sd = shingle_hashes(w, d, len(texts))
    sig = signatures(sh, sd, len(texts), num_perm=256)
    est = (sig[:-1] == sig[-1]).mean(axis=1)
    assert np.abs(est - np.array(truth)).max() < 0.08, (est, truth)


def test_short_documents_get_full_signatures():
    texts = ["one", "one two three", "one two three", "", "!!!"]
    _, w, d = hash_texts(normalize(pa.array(texts)))
    sh, sd = shingle_hashes(w, d, len(texts))
    sig = signatures(sh, sd, len(texts), num_perm=64)
    assert (sig[1] == sig[2]).all()
    assert (sig[0] != 0xFFFFFFFF).all()
    assert (sig[3] == 0xFFFFFFFF).all() and (sig[4] == 0xFFFFFFFF).all()


def test_components_match_naive():
    rng = np.random.default_rng(1)
    u = rng.integers(0, 300, 200)
    v = rng.integers(0, 300, 200)
    nodes, label = components(u, v)
    parent = {}

    def find(x):
        while parent.get(x, x) != x:
            x = parent[x]
        return x

    for a, b in zip(u, v, strict=False):
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    assert [find(x) for x in nodes] == label.tolist()
