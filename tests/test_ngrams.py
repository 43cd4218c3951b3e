import hashlib
import os
import subprocess
import sys
from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from datasel.ops.ngrams import (
    fit_distribution,
    hashed_kl,
    hashed_ngram_counts,
    log_importance,
    tokenize,
)
from datasel.ops.topk import topk

DOCS = [
    "The quick brown fox -- jumps over the lazy dog.",
    "",
    "   \n\t ",
    "one",
    "Ünïcode façade: naïve café!! 3.14 -- x_y",
    "Hello, World",
    "a a a a b",
    "“Quoted” — dash… «x» 5×3÷2 µm ²³ a\u00a0b c\u2009d ©® ¡¿ ª x\u200by İstanbul ß ┌─┐ 😀ok €5",
]
MASK = (1 << 64) - 1


def _mix64(x: int) -> int:
    x ^= x >> 30
    x = (x * 0xBF58476D1CE4E5B9) & MASK
    x ^= x >> 27
    x = (x * 0x94D049BB133111EB) & MASK
    return x ^ (x >> 31)


def _poly(token: str) -> int:
    """The polynomial hash of a token's UTF-8 bytes (datasel.ops.words' prefix hashes)."""
    h, power = 0, 1
    for b in token.encode():
        h, power = (h + b * power) & MASK, (power * 0x100000001B3) & MASK
    return h


def _naive(texts, buckets, hashing):
    """Per-token Python loop, as the DSIR reference does it."""
    out = np.zeros((len(texts), buckets), dtype=np.int64)
    for i, t in enumerate(texts):
        w = tokenize(t)
        if hashing == "sha256":

            def bucket(s):
                return int(hashlib.sha256(s.encode()).hexdigest(), 16) % buckets

            feats = [bucket(x) for x in w] + [bucket(f"{x} {y}") for x, y in pairwise(w)]
        else:
            h = [_mix64(_poly(x)) for x in w]
            feats = [x % buckets for x in h]
            feats += [_mix64((x * 0x9E3779B97F4A7C15 + y) & MASK) % buckets for x, y in pairwise(h)]
        for f in feats:
            out[i, f] += 1
    return out


def test_tokenize_matches_wordpunct():
    assert tokenize("Don't stop-me now!! (x_1 += 2.5)") == [
        "don", "'", "t", "stop", "-", "me", "now", "!!", "(", "x_1", "+=", "2", ".", "5", ")",
    ]  # fmt: skip


@pytest.mark.parametrize("hashing", ["fast", "sha256"])
@pytest.mark.parametrize("canonical", [True, False])
def test_counts_match_naive_loop(hashing, canonical):
    c = hashed_ngram_counts(DOCS, buckets=97, hashing=hashing, canonical=canonical)
    assert sp.issparse(c) and c.shape == (len(DOCS), 97)
    np.testing.assert_array_equal(c.toarray(), _naive(DOCS, 97, hashing))
    if canonical:
        assert c.has_canonical_format


def test_row_sums_and_empty_docs():
    c = hashed_ngram_counts(DOCS, buckets=1000)
    n = np.array([len(tokenize(t)) for t in DOCS])
    np.testing.assert_array_equal(np.asarray(c.sum(1)).ravel(), np.maximum(2 * n - 1, 0))
    assert hashed_ngram_counts([], buckets=10).shape == (0, 10)


def test_fixed_bucket_values():
    c = hashed_ngram_counts(["Hello, World"], buckets=1_000_003, canonical=False)
    assert c.indices.tolist() == [57434, 599203, 59512, 793820, 144063]
    c = hashed_ngram_counts(["Hello, World"], buckets=1_000_003, hashing="sha256", canonical=False)
    assert c.indices.tolist() == [501190, 358295, 81952, 677371, 205699]


def test_hash_stable_across_processes():
    code = (
        "from datasel.ops.ngrams import hashed_ngram_counts as h;"
        "print(h(['Hello, World'], buckets=1_000_003, canonical=False).indices.tolist())"
    )
    root = str(Path(__file__).resolve().parents[1])
    outs = set()
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [env.get("PYTHONPATH"), root]))
        r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        outs.add(r.stdout.strip())
    assert outs == {"[57434, 599203, 59512, 793820, 144063]"}


def test_fit_distribution_inputs_and_smoothing():
    c = hashed_ngram_counts(DOCS, buckets=50)
    dense = c.toarray()
    p_sparse = fit_distribution([c[:3], c[3:]], 50)
    p_dense = fit_distribution([dense], 50)
    p_tuple = fit_distribution([(c.indptr, c.indices, c.data)], 50)
    p_totals = fit_distribution([dense.sum(0)], 50)
    for p in (p_dense, p_tuple, p_totals):
        np.testing.assert_allclose(p, p_sparse)
    assert p_sparse.sum() == pytest.approx(1.0)
    np.testing.assert_allclose(p_sparse, (dense.sum(0) + 1) / (dense.sum() + 50))
    p0 = fit_distribution([c], 50, smoothing=0)
    np.testing.assert_allclose(p0, dense.sum(0) / dense.sum() + 1e-8)


def test_log_importance_is_counts_dot_logratio():
    c = hashed_ngram_counts(DOCS, buckets=64)
    rng = np.random.default_rng(0)
    lp, lq = np.log(rng.dirichlet(np.ones(64))), np.log(rng.dirichlet(np.ones(64)))
    np.testing.assert_allclose(log_importance(c, lp, lq), c.toarray() @ (lp - lq))
    np.testing.assert_allclose(log_importance(c.toarray(), lp, lq), c.toarray() @ (lp - lq))


def test_hashed_kl():
    rng = np.random.default_rng(1)
    p, q = rng.dirichlet(np.ones(30)), rng.dirichlet(np.ones(30))
    assert hashed_kl(p, p) == pytest.approx(0.0, abs=1e-12)
    assert hashed_kl(p, q) == pytest.approx(float(np.sum(p * np.log(p / q))))
    p[:5] = 0
    assert hashed_kl(p, q) > 0


def _toy_corpus(rng, n, vocab, length=40):
    return [" ".join(rng.choice(vocab, size=length)) for _ in range(n)]


def test_dsir_ranks_target_like_docs_first():
    rng = np.random.default_rng(0)
    code = ["def", "return", "import", "self", "lambda", "(", ")", ":", "class", "yield"]
    prose = ["the", "king", "spake", "unto", "them", "and", "lo", "behold", "thou", "art"]
    shared = ["of", "a", "in", "is"]
    target = _toy_corpus(rng, 50, code + shared)
    pool_code = _toy_corpus(rng, 100, code + shared)
    pool_prose = _toy_corpus(rng, 300, prose + shared)
    pool = pool_prose[:150] + pool_code + pool_prose[150:]
    is_code = np.r_[np.zeros(150), np.ones(100), np.zeros(150)].astype(bool)

    b = 2048
    ct, cp = hashed_ngram_counts(target, b), hashed_ngram_counts(pool, b)
    p, q = fit_distribution([ct], b), fit_distribution([cp], b)
    logw = log_importance(cp, np.log(p), np.log(q))
    assert logw[is_code].min() > logw[~is_code].max()
    chosen = topk(logw, 100)
    assert is_code[chosen].all()

    # DSIR's KL reduction: the selection's n-gram distribution is closer to the target.
    sel = fit_distribution([cp[chosen]], b)
    assert hashed_kl(p, sel) < 0.2 * hashed_kl(p, q)


def test_features_are_the_counts_unsorted():
    from datasel.ops.ngrams import hashed_ngram_features
    from datasel.ops.words import doc_sums

    for buckets, dtype in ((97, np.uint16), (70_000, np.int32)):
        features, nnz = hashed_ngram_features(DOCS, buckets)
        assert features.dtype == dtype and len(nnz) == len(DOCS)
        c = hashed_ngram_counts(DOCS, buckets)
        np.testing.assert_array_equal(nnz, np.asarray(c.sum(1)).ravel())
        values = np.random.default_rng(0).standard_normal(buckets)
        np.testing.assert_allclose(doc_sums(values[features], nnz), c @ values)


def test_leave_one_out_log_ratios_match_the_formula():
    """Each document weighed against the totals without its own n-grams, in any chunking."""
    from datasel.ops.ngrams import doc_log_ratios

    rng = np.random.default_rng(0)
    nnz = rng.integers(0, 40, 200)
    nnz[5] = 0
    feats = rng.integers(0, 97, int(nnz.sum()))
    counted = np.bincount(feats, minlength=97)  # both totals count every document
    p = counted + rng.integers(0, 20, 97).astype(float)
    q = 2 * counted + rng.integers(0, 30, 97)
    starts = np.cumsum(nnz) - nnz
    for counted_in in ("p", "q"):
        got = doc_log_ratios(feats, nnz, p, q, 0.5, counted_in=counted_in)
        assert np.allclose(
            got, doc_log_ratios(feats, nnz, p, q, 0.5, counted_in=counted_in, chunk=37)
        )
        for i in (0, 5, 199):
            own = np.bincount(feats[starts[i] : starts[i] + nnz[i]], minlength=97)
            pp, qq = (p - own, q) if counted_in == "p" else (p, q - own)
            lp = np.log((pp + 0.5) / (pp.sum() + 0.5 * 97))
            lq = np.log((qq + 0.5) / (qq.sum() + 0.5 * 97))
            assert np.isclose(got[i], float(own @ (lp - lq)))
    assert got[5] == 0.0  # a document without n-grams weighs nothing either way
