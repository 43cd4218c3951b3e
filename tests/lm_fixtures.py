"""Tiny causal LMs built offline (a config and a tokenizer trained on the fly) for tests.

`make_tiny_lm(path)` writes a HF model folder that `scorers.lm.load_lm(str(path))` loads
through the real loading code; the ppl and pick stage tests reuse it.
"""

from __future__ import annotations

from pathlib import Path

_WORDS = (
    "the a an one two three data model token text corpus cat dog bird fish tree river "
    "mountain city house road car train ship plane small large quick slow red green blue "
    "yellow runs jumps reads writes sees eats sleeps learns selects scores filters keeps "
    "drops and or but with without under over near far today tomorrow always never very "
    "quite rather happy sad bright dark old new good bad first last"
).split()


def tiny_corpus(n: int = 400, *, seed: int = 0) -> list[str]:
    """Pseudo-random English-like sentences (deterministic) to train a tokenizer on."""
    import numpy as np

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        k = int(rng.integers(3, 16))
        words = rng.choice(_WORDS, size=k)
        s = " ".join(words).capitalize() + rng.choice([".", "!", "?", ",", ";"])
        out.append(s)
    return out


def make_tiny_tokenizer(*, vocab_size: int = 600, corpus: list[str] | None = None):
    """A byte-level BPE tokenizer trained on `corpus` (default: `tiny_corpus()`).

    Byte-level, so any UTF-8 text round-trips; specials ``<s>`` (bos), ``</s>`` (eos),
    ``<pad>`` (pad).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<pad>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus if corpus is not None else tiny_corpus(), trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )


def make_tiny_lm(
    path: str | Path,
    *,
    n_layer: int = 2,
    n_head: int = 2,
    n_embd: int = 32,
    n_positions: int = 64,
    vocab_size: int = 600,
    seed: int = 0,
    corpus: list[str] | None = None,
) -> Path:
    """Write a random-weight GPT-2 and its trained tokenizer to `path`; return the path.

    Defaults give a ~50k-parameter model with a 64-token context (so sliding windows are
    exercised by short test documents). Takes ~0.2 s.
    """
    from transformers import GPT2Config, GPT2LMHeadModel

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tok = make_tiny_tokenizer(vocab_size=vocab_size, corpus=corpus)
    cfg = GPT2Config(
        vocab_size=len(tok),
        n_layer=n_layer,
        n_head=n_head,
        n_embd=n_embd,
        n_positions=n_positions,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    return _save_random_model(GPT2LMHeadModel, cfg, tok, path, seed)


def make_tiny_llama(path: str | Path, *, n_positions: int = 64, seed: int = 0) -> Path:
    """Write a random-weight Llama (RoPE, RMSNorm, grouped-query attention: 4 query heads on 2
    key/value heads, head dim 8) and the tiny tokenizer to `path`; return the path."""
    from transformers import LlamaConfig, LlamaForCausalLM

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tok = make_tiny_tokenizer()
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=n_positions,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    return _save_random_model(LlamaForCausalLM, cfg, tok, path, seed)


def _save_random_model(model_class, cfg, tok, path: Path, seed: int) -> Path:
    """Build `model_class(cfg)` with seeded random weights, save it and `tok` to `path`."""
    import torch

    torch.manual_seed(seed)
    model = model_class(cfg)
    # Random init gives near-uniform predictions; a larger scale on the embeddings makes
    # logits (and so score differences between documents) non-trivial.
    with torch.no_grad():
        model.get_input_embeddings().weight.mul_(20.0)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path
