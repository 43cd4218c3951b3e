"""Arms and eval sets as documents, and the fixed-length training blocks cut from them.

Pre-training: a document is its text; training packs `ids(text) + EOS` of documents in a seeded
random order into blocks of `context` tokens (an arm smaller than the budget is repeated, a new
order each epoch, and the run records how many epochs it took). Fine-tuning: a document is
`[BOS] + ids(prompt) + ids(response) + EOS`, with the loss on the response and EOS only.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from datasel.errors import DataselError
from datasel.eval.tokenizer import encode
from datasel.io import Columns, plan_units, read_unit

ENCODE_BATCH = 512  # documents per call into the Rust tokenizer


@dataclass
class Docs:
    """The documents of one arm or eval set. `prompts` is None for pre-training text."""

    name: str
    path: str
    texts: list[str]  # pre-training: documents; fine-tuning: responses
    prompts: list[str] | None = None
    empty: int = 0  # rows skipped: null or empty text (response)
    _cache: dict[int, tuple[np.ndarray, np.ndarray | None]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.texts)

    def tokens(self, tok, idx) -> list[tuple[np.ndarray, np.ndarray | None]]:
        """(ids, loss mask or None) of documents `idx`, each ending with EOS; cached."""
        todo = [int(i) for i in idx if int(i) not in self._cache]
        for lo in range(0, len(todo), ENCODE_BATCH):
            part = todo[lo : lo + ENCODE_BATCH]
            for i, pair in zip(part, self._encode(tok, part), strict=True):
                self._cache[i] = pair
        return [self._cache[int(i)] for i in idx]

    def _encode(self, tok, idx: list[int]):
        eos = np.array([tok.eos_token_id], dtype=np.int32)
        body = encode(tok, [self.texts[i] for i in idx])
        if self.prompts is None:
            return [(np.concatenate([b, eos]), None) for b in body]
        bos = np.array([tok.bos_token_id or tok.eos_token_id], dtype=np.int32)
        heads = encode(tok, [self.prompts[i] for i in idx])
        out = []
        for h, b in zip(heads, body, strict=True):
            ids = np.concatenate([bos, h, b, eos])
            mask = np.zeros(len(ids), dtype=bool)
            mask[1 + len(h) :] = True
            out.append((ids, mask))
        return out

    def count_tokens(self, tok) -> int:
        """Tokens of every document (EOS included), without keeping them."""
        total = 0
        for lo in range(0, len(self), ENCODE_BATCH):
            part = list(range(lo, min(len(self), lo + ENCODE_BATCH)))
            total += sum(len(ids) for ids, _ in self._encode(tok, part))
        return total


def read_docs(name: str, path: str, *, text_column: str, prompt_column: str | None) -> Docs:
    """Read an arm or eval set with datasel's readers; `prompt_column` set = fine-tuning pairs
    (`text_column` is then the response column). Null or empty texts are counted and skipped;
    a set with no document left is an error."""
    columns = [text_column] if prompt_column is None else [prompt_column, text_column]
    got: dict[str, list] = {c: [] for c in columns}
    for unit in plan_units(path):
        for batch in read_unit(unit, Columns(text=text_column if prompt_column is None else None)):
            for c in columns:
                if c not in batch.schema.names:
                    have = ", ".join(n for n in batch.schema.names if n != "id")
                    raise DataselError(f"{unit.path}: no column '{c}' (columns: {have})")
                col = batch.column(c)
                if not (pa.types.is_string(col.type) or pa.types.is_large_string(col.type)):
                    raise DataselError(f"{unit.path}: column '{c}' holds {col.type}, not strings")
                got[c].extend(col.to_pylist())
    texts, prompts = got[text_column], got.get(prompt_column)
    keep = [i for i, t in enumerate(texts) if t and (prompts is None or prompts[i] is not None)]
    docs = Docs(
        name=name,
        path=str(path),
        texts=[texts[i] for i in keep],
        prompts=None if prompts is None else [prompts[i] for i in keep],
        empty=len(texts) - len(keep),
    )
    if not docs.texts:
        why = "no rows" if not texts else f"all {len(texts):,} rows have an empty '{text_column}'"
        raise DataselError(f"{name}={path}: {why}")
    return docs


def take_tokens(docs: Docs, tok, budget: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of documents, in a random order, until `budget` tokens (all when fewer)."""
    order = rng.permutation(len(docs))
    total = 0
    for lo in range(0, len(order), ENCODE_BATCH):
        part = order[lo : lo + ENCODE_BATCH]
        sizes = np.cumsum([len(ids) for ids, _ in docs.tokens(tok, part)]) + total
        if sizes[-1] >= budget:
            return order[: lo + int(np.searchsorted(sizes, budget)) + 1]
        total = int(sizes[-1])
    return order


def training_blocks(
    docs: Docs, tok, *, blocks: int, context: int, seed: int, subset: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray | None, float]:
    """`blocks` x `context` token ids (and loss mask, fine-tuning only) packed from the
    documents (`subset` of them when given) in a seeded order, and the epochs that took."""
    rng = np.random.default_rng(seed)
    pool = np.arange(len(docs)) if subset is None else np.asarray(subset)
    need, have, ids, masks, epochs = blocks * context, 0, [], [], 0.0
    while have < need:
        order = rng.permutation(pool)
        for lo in range(0, len(order), ENCODE_BATCH):
            part = docs.tokens(tok, order[lo : lo + ENCODE_BATCH])
            for k, (doc_ids, mask) in enumerate(part):
                ids.append(doc_ids)
                masks.append(mask)
                have += len(doc_ids)
                if have >= need:
                    epochs += (lo + k + 1) / len(order)
                    break
            if have >= need:
                break
        else:
            epochs += 1.0
    flat = np.concatenate(ids)[:need].reshape(blocks, context)
    if docs.prompts is None:
        return flat, None, epochs
    return flat, np.concatenate(masks)[:need].reshape(blocks, context), epochs
