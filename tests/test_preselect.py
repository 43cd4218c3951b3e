import itertools
import json

import numpy as np
import pytest

from scorers.preselect import choose_examples, fit_preselect, predictive_strength


def _reference_strength(losses, bench, tie_credit):
    """The paper's reference loop, one document and one pair at a time."""
    out = []
    for row in losses:
        score, pairs = 0.0, 0
        for i, j in itertools.combinations(range(len(bench)), 2):
            if bench[i] == bench[j]:
                continue
            pairs += 1
            hi, lo = (i, j) if bench[i] > bench[j] else (j, i)
            if row[hi] < row[lo]:
                score += 1
            elif row[hi] == row[lo]:
                score += tie_credit
        out.append(score / pairs)
    return np.array(out)


@pytest.mark.parametrize("tie_credit", [0.5, 0.0])
def test_strength_matches_reference_loop_with_ties(tie_credit):
    rng = np.random.default_rng(0)
    losses = rng.integers(0, 4, size=(300, 6)).astype(float)  # many equal losses
    bench = np.array([70.0, 72.5, 72.5, 60.0, 80.0, 75.0])  # one tied benchmark pair
    got = predictive_strength(losses, bench, loss_tie_credit=tie_credit)
    np.testing.assert_allclose(got, _reference_strength(losses, bench, tie_credit))
    assert got.shape == (300,) and got.min() >= 0 and got.max() <= 1


def test_strength_extremes():
    bench = np.array([1.0, 3.0, 2.0])
    losses = np.array([[3.0, 1.0, 2.0], [1.0, 3.0, 2.0], [5.0, 5.0, 5.0]])
    np.testing.assert_allclose(predictive_strength(losses, bench), [1.0, 0.0, 0.5])


def test_strength_errors():
    with pytest.raises(ValueError, match="3 model columns but benchmark has 2"):
        predictive_strength(np.zeros((4, 3)), np.array([1.0, 2.0]))
    with pytest.raises(ValueError, match="at least 2 models"):
        predictive_strength(np.zeros((4, 1)), np.array([1.0]))
    losses = np.ones((5, 3))
    losses[3, 1] = np.nan
    with pytest.raises(ValueError, match="NaN in row 3"):
        predictive_strength(losses, np.array([1.0, 2.0, 3.0]))
    with pytest.raises(ValueError, match="all benchmark scores are equal"):
        predictive_strength(np.ones((2, 2)), np.array([1.0, 1.0]))


def _synthetic(n_docs=400, n_known=50, n_models=6, seed=0):
    """Known documents rank the models exactly by benchmark; the rest are shuffled, never exact."""
    rng = np.random.default_rng(seed)
    bench = rng.permutation(np.linspace(40, 80, n_models))
    known = np.sort(rng.choice(n_docs, n_known, replace=False))
    losses = np.empty((n_docs, n_models))
    best_first = np.argsort(-bench)
    for d in range(n_docs):
        levels = np.sort(rng.uniform(1, 3, n_models))  # ascending loss
        perm = best_first.copy()
        if d not in known:
            while (perm == best_first).all():
                perm = rng.permutation(best_first)
        losses[d, perm] = levels  # perm[0] gets the lowest loss
    return losses, bench, known


def test_choose_examples_takes_exactly_the_known_set():
    losses, bench, known = _synthetic()
    s = predictive_strength(losses, bench)
    assert (s[known] == 1).all() and (np.delete(s, known) < 1).all()
    pos, neg = choose_examples(s, n=known.size)
    np.testing.assert_array_equal(np.sort(pos), known)
    assert neg.size == pos.size and not set(pos) & set(neg)
    assert s[neg].max() <= np.sort(s)[known.size - 1 :].min() + 1e-12  # the least predictive
    # deterministic, and the default fraction gives balanced counts
    p2, n2 = choose_examples(s, n=known.size)
    np.testing.assert_array_equal(pos, p2)
    np.testing.assert_array_equal(neg, n2)
    p3, n3 = choose_examples(s)
    assert p3.size == n3.size == 40


def test_choose_examples_ties_broken_by_seed_not_position():
    s = np.zeros(1000)
    picks = [set(choose_examples(s, n=10, seed=k)[0]) for k in range(3)]
    assert picks[0] != picks[1] and picks[0] != set(range(10))
    with pytest.raises(ValueError, match="2\\*n <= 1000"):
        choose_examples(s, n=501)
    with pytest.raises(ValueError, match="fraction"):
        choose_examples(s, fraction=0.9)


def _texts(known, n_docs, seed=0):
    rng = np.random.default_rng(seed)
    good = "theorem proof lemma integral derivative matrix vector algebra".split()
    bad = "click subscribe cookie login banner advert promo discount".split()
    return [" ".join(rng.choice(good if d in set(known) else bad, size=12)) for d in range(n_docs)]


def test_fit_preselect_learns_the_known_set(tmp_path):
    losses, bench, known = _synthetic()
    texts = _texts(known, len(losses))
    names = [f"m{i}" for i in range(len(bench))]
    card = fit_preselect(
        texts,
        losses,
        bench,
        tmp_path / "ps",
        model_names=names,
        n=known.size,
        epoch=20,
        lr=0.5,
        dim=10,
        bucket=20_000,
        heldout=0.2,
    )
    assert (tmp_path / "ps" / "model.bin").is_file()
    assert json.loads((tmp_path / "ps" / "card.json").read_text()) == card
    assert card["counts"] == {"docs": 400, "pos": 50, "neg": 50, "train": 80, "heldout": 20}
    assert card["strength"]["pos_min"] == 1.0 and card["strength"]["neg_max"] < 1.0
    assert card["strength"]["n_perfect"] == 50
    assert card["heldout_accuracy"] > 0.9
    assert [m["name"] for m in card["models"]] == names
    assert card["labels"] == {"positive": "__label__pos", "negative": "__label__neg"}

    from scorers.fasttext import FastTextScorer

    scorer = FastTextScorer(str(tmp_path / "ps" / card["model_file"]), card["score_label"])
    p = scorer.score(["lemma proof matrix vector", "promo banner cookie click"])
    assert p[0] > 0.8 > 0.2 > p[1]


def test_fit_preselect_errors(tmp_path):
    losses, bench, known = _synthetic(n_docs=30, n_known=5)
    texts = _texts(known, 30)
    names = [f"m{i}" for i in range(6)]
    with pytest.raises(ValueError, match="too few documents"):
        fit_preselect(texts[:10], losses[:10], bench, tmp_path, model_names=names)
    with pytest.raises(ValueError, match="29 texts but losses has 30 rows"):
        fit_preselect(texts[:29], losses, bench, tmp_path, model_names=names)
    with pytest.raises(ValueError, match="5 model_names"):
        fit_preselect(texts, losses, bench, tmp_path, model_names=names[:5])
    with pytest.raises(ValueError, match="6 model columns but benchmark has 5"):
        fit_preselect(texts, losses, bench[:5], tmp_path, model_names=names)
