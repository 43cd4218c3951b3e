"""Apply and train fastText classifiers (Joulin et al., 2017, "Bag of Tricks for Efficient Text
Classification"): one batched predict per call, probability of one label per text."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from scorers.models import locate

LABEL_PREFIX = "__label__"

# fastText reads one example per line: a "\n" inside a text would end the example early in the
# training file (the rest becomes a new, unlabelled line) and `predict` refuses it outright. "\r"
# is a word separator for fastText anyway, but a bare "\r" also ends a line for some readers, so
# both become spaces; tokens are unchanged because fastText splits on any whitespace.
# (Two str.replace calls: 1.5 us per 2 KB doc; str.translate with a table took 23 us.)

# path -> (mtime_ns, size, model): one load per process even when a scorer is pickled to a worker
# once per task; a rewritten file (new mtime/size) is reloaded.
_MODELS: dict[str, tuple[int, int, object]] = {}

# fastText 0.9.2 initialises the input matrix in 10 blocks, one per thread: fewer threads leave
# uninitialised memory in the model (see train_classifier's notes)
_MIN_THREADS = 10


def _import_fasttext():
    try:
        import fasttext
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "fastText scoring needs the fasttext module: install datasel[fasttext]"
        ) from e
    return fasttext


def one_line(text: str) -> str:
    """Return ``text`` with newlines and carriage returns replaced by spaces."""
    return text.replace("\n", " ").replace("\r", " ")


def _load(path: str):
    st = os.stat(path)
    hit = _MODELS.get(path)
    if hit is not None and hit[0] == st.st_mtime_ns and hit[1] == st.st_size:
        return hit[2]
    model = _import_fasttext().load_model(path)
    _MODELS[path] = (st.st_mtime_ns, st.st_size, model)
    return model


class FastTextScorer:
    """Probability of one label of a supervised fastText model, for a batch of texts.

    The model is loaded once per process; the scorer pickles as ``(path, label)`` and reloads
    lazily, so it can be shipped to worker processes or Ray actors.

    Parameters
    ----------
    path : str
        A supervised fastText ``.bin`` file.
    label : str
        The label whose probability is returned, with or without the ``__label__`` prefix.

    Examples
    --------
    >>> scorer = FastTextScorer("model.bin", "__label__pos")  # doctest: +SKIP
    >>> scorer.score(["some text", "more\\ntext"])  # doctest: +SKIP
    array([0.91, 0.12], dtype=float32)
    """

    def __init__(self, path: str, label: str):
        try:
            path = os.path.abspath(locate(os.fspath(path), hub=False).source)
        except FileNotFoundError:
            raise FileNotFoundError(f"fastText model not found: {path}") from None
        if not os.path.isfile(path):
            raise FileNotFoundError(f"fastText model not found: {path} is not a file")
        if not label.startswith(LABEL_PREFIX):
            label = LABEL_PREFIX + label
        self.path = path
        self.label = label
        labels = list(self._model().get_labels())
        if label not in labels:
            raise ValueError(f"label {label!r} is not in the model {path}; its labels: {labels}")
        self.labels = labels

    def _model(self):
        return _load(self.path)

    def __getstate__(self) -> dict:
        return {"path": self.path, "label": self.label, "labels": self.labels}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)

    def __repr__(self) -> str:
        return f"FastTextScorer(path={self.path!r}, label={self.label!r})"

    def score(self, texts: Sequence[str]) -> np.ndarray:
        """Return the float32 probability of ``self.label`` for each text, shape ``(len(texts),)``.

        One ``predict(list, k=-1)`` call: with ``k=-1`` every label comes back, so the label's
        probability is there even when it is not the top one.
        """
        n = len(texts)
        if n == 0:
            return np.zeros(0, dtype=np.float32)
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise TypeError(f"texts must be str, got {type(t).__name__} at index {i}")
        lines = [one_line(t) for t in texts]
        model = self._model()
        try:
            labels, probs = model.predict(lines, k=-1)
        except TypeError:
            # lone surrogates (from bad upstream decoding) cannot cross into C++ as UTF-8, and
            # pybind11 reports that as a TypeError; replace them with "?"
            lines = [t.encode("utf-8", "replace").decode("utf-8") for t in lines]
            labels, probs = model.predict(lines, k=-1)
        # every row lists all labels in descending probability; find the label's column per row
        # and gather. list.index in C: 0.17 us/doc; comparing an (n, n_labels) numpy string array
        # with == took 0.41 us/doc; predict itself ~150 us/doc for 2 KB docs.
        p = np.asarray(probs, dtype=np.float32)
        lab = self.label
        col = np.fromiter((row.index(lab) for row in labels), dtype=np.intp, count=n)
        out = p[np.arange(n), col]
        # fastText reports exp(log(p + 1e-5)), which can exceed 1 by 1e-5
        return np.minimum(out, np.float32(1.0))


def train_classifier(
    texts: Sequence[str],
    labels: Sequence[str],
    out_path: str | os.PathLike,
    *,
    epoch: int = 3,
    lr: float = 0.1,
    word_ngrams: int = 2,
    dim: int = 100,
    bucket: int = 2_000_000,
    min_count: int = 1,
    seed: int = 0,
    threads: int = 10,
) -> str:
    """Train a supervised fastText classifier and save it atomically to ``out_path``.

    Parameters
    ----------
    texts, labels : sequences of str
        One label per text, with or without the ``__label__`` prefix; no whitespace in labels.
    out_path : path
        Where the ``.bin`` goes (written to ``<out_path>.tmp`` then renamed).
    epoch, lr, word_ngrams, dim, bucket, min_count, seed :
        fastText's ``epoch, lr, wordNgrams, dim, bucket, minCount, seed``. ``dim`` must be a
        multiple of 10 (see below). The model holds ``bucket * dim`` float32 n-gram weights:
        2,000,000 x 100 (fastText's default) is ~800 MB on disk and in memory, so lower
        ``bucket`` for small training sets.
    threads : int
        Training threads; values below 10 are raised to 10 (see below). fastText's lock-free
        updates make multi-threaded training not bit-for-bit reproducible, even with a seed.

    Notes
    -----
    fastText 0.9.2 (as built in ``fasttext-numpy2-wheel``) fills its input matrix in 10 blocks,
    one per training thread, and leaves the blocks of absent threads and the last
    ``rows * dim % 10`` values as uninitialised memory. Measured on a 201-line toy file: with
    ``thread=1``, weights of 1e14 to 1e34 and "Encountered NaN" in 4 of 5 runs; with
    ``thread=10, dim=8``, in 9 of 18 runs; with ``thread=10`` and ``dim`` a multiple of 10, in
    none of 32. Hence ``thread >= 10`` and ``dim % 10 == 0``.

    Returns
    -------
    str
        ``out_path``.
    """
    if len(texts) != len(labels):
        raise ValueError(f"{len(texts)} texts but {len(labels)} labels")
    if len(texts) == 0:
        raise ValueError("no training texts")
    if dim % 10:
        raise ValueError(
            f"dim must be a multiple of 10, got {dim}: fastText 0.9.2 leaves the last "
            "rows*dim % 10 input weights uninitialised (NaN during training)"
        )
    fasttext = _import_fasttext()
    prefixed = []
    for lab in dict.fromkeys(labels):
        if not lab or any(c.isspace() for c in lab):
            raise ValueError(f"label {lab!r} is empty or contains whitespace")
    for lab in labels:
        prefixed.append(lab if lab.startswith(LABEL_PREFIX) else LABEL_PREFIX + lab)
    out_path = os.fspath(out_path)
    Path(out_path).parent.mkdir(parents=True, exist_ok=True)
    fd, train_file = tempfile.mkstemp(
        prefix=".fasttext-train-", suffix=".txt", dir=os.path.dirname(os.path.abspath(out_path))
    )
    try:
        with os.fdopen(fd, "w", encoding="utf-8", errors="replace") as f:
            f.writelines(f"{lab} {one_line(t)}\n" for lab, t in zip(prefixed, texts, strict=True))
        model = fasttext.train_supervised(
            input=train_file,
            epoch=epoch,
            lr=lr,
            wordNgrams=word_ngrams,
            dim=dim,
            bucket=bucket,
            minCount=min_count,
            seed=seed,
            thread=max(threads, _MIN_THREADS),
            verbose=0,
        )
    finally:
        os.unlink(train_file)
    tmp = out_path + ".tmp"
    model.save_model(tmp)
    os.replace(tmp, out_path)
    _MODELS.pop(os.path.abspath(out_path), None)
    return out_path
