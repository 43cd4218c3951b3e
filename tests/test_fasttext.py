import pickle

import numpy as np
import pytest

fasttext = pytest.importorskip("fasttext")

from scorers.fasttext import FastTextScorer, one_line, train_classifier  # noqa: E402

WORDS = {
    "a": "apple banana cherry grape melon".split(),
    "b": "car truck bus train plane".split(),
    "c": "red green blue yellow black".split(),
}


def _toy(n_per_class=60, classes=("a", "b", "c"), seed=0):
    rng = np.random.default_rng(seed)
    texts, labels = [], []
    for _ in range(n_per_class):
        for c in classes:
            texts.append(" ".join(rng.choice(WORDS[c], size=6)))
            labels.append(c)
    return texts, labels


@pytest.fixture(scope="module")
def model3(tmp_path_factory):
    texts, labels = _toy()
    path = tmp_path_factory.mktemp("ft") / "m3.bin"
    train_classifier(texts, labels, path, epoch=20, lr=0.5, dim=10, bucket=10_000)
    return str(path)


def test_numpy2_train_and_predict_single_and_list(model3):
    m = fasttext.load_model(model3)
    assert sorted(m.get_labels()) == ["__label__a", "__label__b", "__label__c"]
    labels, probs = m.predict("apple cherry melon")
    assert labels == ("__label__a",) and isinstance(probs, np.ndarray) and probs[0] > 0.5
    labels, probs = m.predict(["apple cherry", "bus train"], k=-1)
    assert [row[0] for row in labels] == ["__label__a", "__label__b"]
    assert len(probs) == 2 and all(p.shape == (3,) for p in probs)
    np.testing.assert_allclose([p.sum() for p in probs], 1.0, atol=1e-3)


def test_score_matches_single_predict_even_when_not_top(model3):
    m = fasttext.load_model(model3)
    texts = ["apple banana", "car truck plane", "red blue", "apple car red", "", "zzz unknown"]
    for label in ["__label__a", "b"]:  # prefix optional
        got = FastTextScorer(model3, label).score(texts)
        full = label if label.startswith("__label__") else "__label__" + label
        want = []
        for t in texts:
            labs, ps = m.predict(t, k=-1)
            want.append(min(1.0, ps[list(labs).index(full)]))
        assert got.dtype == np.float32 and got.shape == (len(texts),)
        np.testing.assert_allclose(got, want, rtol=1e-6)
        assert ((got >= 0) & (got <= 1)).all()
    # the label is not the top one for most of these texts, so k=1 would have been wrong
    assert (FastTextScorer(model3, "a").score(texts[1:3]) < 0.5).all()


def test_newlines_are_spaces_in_predict(model3):
    s = FastTextScorer(model3, "a")
    got = s.score(["apple\nbanana\r\ncherry", "bus\rtrain"])
    want = s.score(["apple banana  cherry", "bus train"])
    np.testing.assert_array_equal(got, want)
    assert one_line("x\ny\rz") == "x y z"
    assert s.score([]).shape == (0,)
    # a lone surrogate (bad upstream decoding) is scored as "?" instead of failing
    np.testing.assert_array_equal(s.score(["apple \udc80 melon"]), s.score(["apple ? melon"]))
    with pytest.raises(TypeError, match="index 1"):
        s.score(["apple", None])


def test_training_sees_text_after_a_newline(tmp_path):
    # the class word comes after a newline; without replacing it, fastText would read it as an
    # unlabelled line and learn only "filler", i.e. nothing
    rng = np.random.default_rng(1)
    texts, labels = [], []
    for _ in range(80):
        c = rng.choice(["a", "b"])
        texts.append("filler words here\n" + " ".join(rng.choice(WORDS[c], size=4)))
        labels.append(c)
    path = train_classifier(
        texts, labels, tmp_path / "nl.bin", epoch=20, lr=0.5, dim=10, bucket=5_000
    )
    p = FastTextScorer(path, "a").score(["filler words here\napple grape", "filler\nbus car"])
    assert p[0] > 0.8 and p[1] < 0.2


def test_errors(tmp_path, model3):
    with pytest.raises(FileNotFoundError, match="not found"):
        FastTextScorer(str(tmp_path / "missing.bin"), "a")
    with pytest.raises(ValueError, match=r"__label__zebra.*__label__a"):
        FastTextScorer(model3, "zebra")
    with pytest.raises(ValueError, match="2 texts but 1 labels"):
        train_classifier(["x", "y"], ["a"], tmp_path / "e.bin")
    with pytest.raises(ValueError, match="whitespace"):
        train_classifier(["x"], ["a b"], tmp_path / "e.bin")


def test_pickle_by_path(model3):
    s = FastTextScorer(model3, "b")
    blob = pickle.dumps(s)
    assert len(blob) < 1_000  # the model itself is not pickled
    s2 = pickle.loads(blob)
    texts = ["car bus", "apple"]
    np.testing.assert_array_equal(s.score(texts), s2.score(texts))


def test_training_initialises_every_weight(tmp_path):
    # fastText 0.9.2 leaves input-matrix blocks of absent threads uninitialised (zeros or
    # garbage such as 1e34); train_classifier must use >= 10 threads and dim % 10 == 0
    texts, labels = _toy(30, ("a", "b"))
    for k in range(3):
        p = train_classifier(texts, labels, tmp_path / f"i{k}.bin", dim=10, bucket=997, seed=k)
        w = fasttext.load_model(p).get_input_matrix()
        assert np.isfinite(w).all() and np.abs(w).max() < 10
        assert (np.abs(w).max(axis=1) > 0).all()  # no row left at zero
    with pytest.raises(ValueError, match="multiple of 10"):
        train_classifier(texts, labels, tmp_path / "bad.bin", dim=16)
