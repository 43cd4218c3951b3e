"""One tokenizer for every arm: byte-level BPE trained on a sample of all arms, or a given
local HF tokenizer folder. Saved in the eval folder, so a resumed eval uses the same one."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from datasel.errors import DataselError

EOS = "<|endoftext|>"
SAMPLE_BYTES = 4 << 20  # per arm: ~1M tokens of text, enough for 4k-50k merges in seconds


def load_or_train(
    folder: Path, arms: dict[str, list[str]], *, vocab_size: int, given: str | None
) -> object:
    """The tokenizer saved in `folder`, else `given` (an HF folder) or a BPE trained on a
    random sample of every arm's documents, saved to `folder` for a resumed run."""
    from transformers import AutoTokenizer

    if (folder / "tokenizer.json").is_file():
        return _checked(AutoTokenizer.from_pretrained(folder), str(folder))
    if given is not None:
        if not Path(given).is_dir():
            raise DataselError(f"--tokenizer {given}: no such tokenizer folder")
        try:
            tok = AutoTokenizer.from_pretrained(given)
        except (OSError, ValueError) as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise DataselError(f"--tokenizer {given}: cannot load a tokenizer: {first}") from None
    else:
        tok = train_bpe([t for texts in arms.values() for t in sample(texts)], vocab_size)
    tok = _checked(tok, given or "the trained tokenizer")
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tok.save_pretrained(tmp)
    shutil.rmtree(folder, ignore_errors=True)
    tmp.replace(folder)
    return tok


def sample(texts: list[str], budget: int = SAMPLE_BYTES, seed: int = 0) -> list[str]:
    """Documents in a seeded random order until `budget` characters."""
    out, size = [], 0
    for i in np.random.default_rng(seed).permutation(len(texts)):
        if size >= budget:
            break
        out.append(texts[i])
        size += len(texts[i])
    return out


def train_bpe(texts: list[str], vocab_size: int):
    """Byte-level BPE (any UTF-8 text round-trips) with one special token, the EOS that
    separates packed documents (also used as BOS and padding, as GPT-2 does)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe, eos_token=EOS, bos_token=EOS, pad_token=EOS, model_max_length=1 << 30
    )


def _checked(tok, where: str):
    if tok.eos_token_id is None:
        raise DataselError(f"{where}: the tokenizer has no EOS token to separate documents")
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    tok.model_max_length = 1 << 30  # we cut sequences ourselves; no length warnings
    return tok


def encode(tok, texts: list[str]) -> list[np.ndarray]:
    """Token ids of each text, no special tokens (batched in the Rust tokenizer)."""
    if not texts:
        return []
    ids = tok(texts, add_special_tokens=False, return_attention_mask=False, verbose=False)
    return [np.asarray(x, dtype=np.int32) for x in ids["input_ids"]]
