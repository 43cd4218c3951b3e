"""PreSelect scorer fitting (Shum et al., 2025, "Predictive Data Selection: The Data That Predicts
Is the Data That Teaches"): documents whose losses under several models rank the models as a
benchmark does are positives for a fastText classifier, the least predictive ones negatives."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from scorers.fasttext import LABEL_PREFIX, FastTextScorer, train_classifier

POS_LABEL = LABEL_PREFIX + "pos"
NEG_LABEL = LABEL_PREFIX + "neg"


def _check_inputs(losses: np.ndarray, benchmark: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    losses = np.asarray(losses, dtype=np.float64)
    benchmark = np.asarray(benchmark, dtype=np.float64)
    if losses.ndim != 2:
        raise ValueError(f"losses must be 2-D (n_docs, n_models), got shape {losses.shape}")
    if benchmark.ndim != 1:
        raise ValueError(f"benchmark must be 1-D (n_models,), got shape {benchmark.shape}")
    if losses.shape[1] != benchmark.shape[0]:
        raise ValueError(
            f"losses has {losses.shape[1]} model columns but benchmark has "
            f"{benchmark.shape[0]} scores"
        )
    if benchmark.shape[0] < 2:
        raise ValueError(f"PreSelect needs at least 2 models, got {benchmark.shape[0]}")
    if np.isnan(benchmark).any():
        raise ValueError(
            f"benchmark score is NaN for model {int(np.flatnonzero(np.isnan(benchmark))[0])}"
        )
    bad = np.isnan(losses).any(axis=1)
    if bad.any():
        rows = np.flatnonzero(bad)
        raise ValueError(f"losses have NaN in row {int(rows[0])} ({rows.size} such rows)")
    if np.unique(benchmark).size < 2:
        raise ValueError("all benchmark scores are equal: there is no model order to predict")
    return losses, benchmark


def predictive_strength(
    losses: np.ndarray, benchmark: np.ndarray, *, loss_tie_credit: float = 0.5
) -> np.ndarray:
    """Fraction of model pairs whose loss order on a document agrees with their benchmark order.

    A pair of models agrees on a document when the model with the higher benchmark score has the
    lower loss there, as in the paper's reference code. Only the order within a row matters, so
    losses may be totals, per-token or bits per character.

    Ties: a pair of models with equal benchmark scores says nothing about the order and is left
    out of both the count and the number of pairs. A pair with equal losses on a document gets
    ``loss_tie_credit`` (default 0.5, a coin flip, so an uninformative document sits in the
    middle rather than among the negatives; the reference code gives 0).

    Parameters
    ----------
    losses : (n_docs, n_models) array
        Loss of each document under each model (lower is better); no NaN.
    benchmark : (n_models,) array
        Benchmark score of each model (higher is better).

    Returns
    -------
    (n_docs,) float64 array in [0, 1]; 1 means the losses rank the models exactly as the
    benchmark does.

    Examples
    --------
    >>> predictive_strength(np.array([[3.0, 2.0, 1.0], [1.0, 2.0, 3.0]]), np.array([1, 2, 3]))
    array([1., 0.])
    """
    losses, benchmark = _check_inputs(losses, benchmark)
    # sort models by benchmark so that in every pair (i, j) with i < j, j is at least as good
    order = np.argsort(benchmark, kind="stable")
    losses = losses[:, order]
    bench = benchmark[order]
    n_docs, m = losses.shape
    agree = np.zeros(n_docs, dtype=np.float64)
    n_pairs = 0
    for i in range(m - 1):
        better = bench[i + 1 :] > bench[i]  # excludes benchmark-tied pairs
        if not better.any():
            continue
        li = losses[:, i : i + 1]
        lj = losses[:, i + 1 :][:, better]
        agree += (lj < li).sum(axis=1)
        if loss_tie_credit:
            agree += loss_tie_credit * (lj == li).sum(axis=1)
        n_pairs += int(better.sum())
    return agree / n_pairs


def choose_examples(
    strength: np.ndarray, *, n: int | None = None, fraction: float = 0.1, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Pick the ``n`` most predictive documents as positives and the ``n`` least as negatives.

    Strength takes few distinct values (``n_pairs + 1``; 16 for 6 models), so ties at the cut
    are common: they are broken by a random permutation drawn from ``seed``, deterministic and
    unbiased with respect to the documents' position in the corpus.

    Parameters
    ----------
    strength : (n_docs,) array
        From :func:`predictive_strength`.
    n : int, optional
        Examples per class. Default ``floor(fraction * n_docs)``. To follow the paper's
        reference (every perfectly predictive document a positive), pass
        ``n=int((strength == 1).sum())``.
    fraction : float
        Used when ``n`` is None.
    seed : int
        Seed of the tie-break permutation.

    Returns
    -------
    pos_idx, neg_idx : int64 arrays of length ``n``, disjoint, best (resp. worst) first.
    """
    strength = np.asarray(strength, dtype=np.float64)
    if strength.ndim != 1:
        raise ValueError(f"strength must be 1-D, got shape {strength.shape}")
    n_docs = strength.shape[0]
    if n is None:
        if not 0.0 < fraction <= 0.5:
            raise ValueError(f"fraction must be in (0, 0.5], got {fraction}")
        n = int(fraction * n_docs)
    if n < 1 or 2 * n > n_docs:
        raise ValueError(f"n={n} examples per class needs 2*n <= {n_docs} documents and n >= 1")
    tie = np.random.default_rng(seed).permutation(n_docs)
    # lexsort: last key is primary
    pos = np.lexsort((tie, -strength))[:n]
    neg = np.lexsort((tie, strength))[:n]
    return pos.astype(np.int64), neg.astype(np.int64)


def _split(
    idx: np.ndarray, heldout: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    idx = rng.permutation(idx)
    h = max(1, round(heldout * idx.size)) if heldout > 0 else 0
    return idx[h:], idx[:h]


def fit_preselect(
    texts: Sequence[str],
    losses: np.ndarray,
    benchmark: np.ndarray,
    out_dir: str | os.PathLike,
    *,
    model_names: Sequence[str],
    n: int | None = None,
    fraction: float = 0.1,
    epoch: int = 3,
    lr: float = 0.1,
    word_ngrams: int = 2,
    dim: int = 100,
    bucket: int = 2_000_000,
    heldout: float = 0.1,
    seed: int = 0,
    threads: int = 10,
) -> dict:
    """Fit a PreSelect fastText scorer and write ``out_dir/model.bin`` and ``out_dir/card.json``.

    Parameters
    ----------
    texts : sequence of str
        The documents, one per row of ``losses``.
    losses : (n_docs, n_models) array
        Loss of each document under each model (lower is better).
    benchmark : (n_models,) array
        Benchmark score of each model (higher is better).
    out_dir : path
        Output folder (created).
    model_names : sequence of str
        One name per loss column, recorded in the card.
    n, fraction :
        Examples per class, see :func:`choose_examples`.
    epoch, lr, word_ngrams, dim, bucket, threads :
        fastText training parameters (the paper's: epoch 3, lr 0.1, wordNgrams 2); see
        :func:`scorers.fasttext.train_classifier` for the model size ``bucket * dim``.
    heldout : float
        Fraction of each class held out to measure the classifier's accuracy (0 to skip).
    seed : int
        Seed for the tie-break, the held-out split, the training order and fastText.

    Returns
    -------
    dict
        The card written to ``card.json``. Score new documents with
        ``FastTextScorer(out_dir/"model.bin", card["score_label"])``.
    """
    losses, benchmark = _check_inputs(losses, benchmark)
    n_docs, m = losses.shape
    if len(texts) != n_docs:
        raise ValueError(f"{len(texts)} texts but losses has {n_docs} rows")
    names = [str(x) for x in model_names]
    if len(names) != m:
        raise ValueError(f"{len(names)} model_names but losses has {m} model columns")
    if len(set(names)) != m:
        raise ValueError(f"model_names must be unique, got {names}")
    if not 0.0 <= heldout < 1.0:
        raise ValueError(f"heldout must be in [0, 1), got {heldout}")
    k = n if n is not None else int(fraction * n_docs)
    if k < 2:
        raise ValueError(
            f"too few documents: {n_docs} documents give {k} example(s) per class "
            f"(n={n}, fraction={fraction}); need at least 2 per class"
        )

    strength = predictive_strength(losses, benchmark)
    pos, neg = choose_examples(strength, n=n, fraction=fraction, seed=seed)
    rng = np.random.default_rng(seed)
    pos_tr, pos_ho = _split(pos, heldout, rng)
    neg_tr, neg_ho = _split(neg, heldout, rng)
    train_idx = np.concatenate([pos_tr, neg_tr])
    train_lab = np.array([POS_LABEL] * pos_tr.size + [NEG_LABEL] * neg_tr.size)
    shuffle = rng.permutation(train_idx.size)  # SGD must not see all positives first
    train_idx, train_lab = train_idx[shuffle], train_lab[shuffle]

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model_path = out / "model.bin"
    ft_params = dict(
        epoch=epoch,
        lr=lr,
        word_ngrams=word_ngrams,
        dim=dim,
        bucket=bucket,
        seed=seed,
        threads=threads,
    )
    train_classifier([texts[i] for i in train_idx], train_lab.tolist(), model_path, **ft_params)

    acc = None
    if heldout > 0:
        scorer = FastTextScorer(str(model_path), POS_LABEL)
        ho = np.concatenate([pos_ho, neg_ho])
        truth = np.r_[np.ones(pos_ho.size, bool), np.zeros(neg_ho.size, bool)]
        p = scorer.score([texts[i] for i in ho])
        acc = float(((p >= 0.5) == truth).mean())

    card = {
        "method": "preselect",
        "paper": "Shum et al. 2025, Predictive Data Selection (arXiv:2503.00808)",
        "model_file": "model.bin",
        "score_label": POS_LABEL,
        "labels": {"positive": POS_LABEL, "negative": NEG_LABEL},
        "models": [
            {"name": nm, "benchmark": float(b)} for nm, b in zip(names, benchmark, strict=True)
        ],
        "strength": {
            "definition": "fraction of model pairs (distinct benchmark scores) where the better "
            "model has the lower loss; equal losses count 0.5",
            "pos_min": float(strength[pos].min()),
            "neg_max": float(strength[neg].max()),
            "mean": float(strength.mean()),
            "n_perfect": int((strength == 1.0).sum()),
        },
        "counts": {
            "docs": int(n_docs),
            "pos": int(pos.size),
            "neg": int(neg.size),
            "train": int(train_idx.size),
            "heldout": int(pos_ho.size + neg_ho.size),
        },
        "heldout_accuracy": acc,
        "fasttext": {
            "epoch": epoch,
            "lr": lr,
            "wordNgrams": word_ngrams,
            "dim": dim,
            "bucket": bucket,
            "seed": seed,
            "thread": max(threads, 10),
            "loss": "softmax",
        },
    }
    tmp = out / "card.json.tmp"
    tmp.write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, out / "card.json")
    return card
