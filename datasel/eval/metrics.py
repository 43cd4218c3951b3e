"""Held-out loss of a model on the eval sets: nats per token and bits per UTF-8 byte.

Bits per byte divides the same summed loss by the text's bytes instead of its tokens, so arms
(or models) with different tokenizers stay comparable. Every document is scored whole, alone,
after a BOS (EOS for our tokenizer, as in training), with sliding windows past the context
(`scorers.lm`); fine-tuning eval sets score only the reference response given its prompt.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from datasel.errors import DataselError
from datasel.eval.data import Docs, take_tokens


@dataclass
class EvalSet:
    name: str
    path: str
    texts: list[str]  # the scored text (documents, or reference responses)
    prompts: list[str] | None
    tokens: int
    bytes: int

    def info(self) -> dict:
        return {
            "path": self.path,
            "docs": len(self.texts),
            "tokens": self.tokens,
            "bytes": self.bytes,
        }


def prepare(docs: Docs, tok, *, max_tokens: int, context: int) -> EvalSet:
    """Documents of `docs` in a fixed (seed 0) random order up to `max_tokens`; an eval set
    smaller than one context window is an error (its loss would be mostly noise)."""
    idx = np.sort(take_tokens(docs, tok, max_tokens, np.random.default_rng(0)))
    tokens = sum(len(ids) for ids, _ in docs.tokens(tok, idx))
    if tokens < context:
        raise DataselError(
            f"eval set {docs.name}={docs.path}: {tokens:,} tokens, fewer than one context "
            f"window ({context:,}); give it more documents"
        )
    texts = [docs.texts[i] for i in idx]
    return EvalSet(
        name=docs.name,
        path=docs.path,
        texts=texts,
        prompts=None if docs.prompts is None else [docs.prompts[i] for i in idx],
        tokens=tokens,
        bytes=sum(len(t.encode("utf-8")) for t in texts),
    )


def score(net, tok, sets: list[EvalSet], *, context: int, device: str) -> dict[str, dict]:
    """{set name: {"loss": nats per token, "bpb": bits per byte}} of `net` on each set."""
    import torch

    from scorers.lm import LM, quiet_padding_warning, score_bpb, score_conditional

    quiet_padding_warning()

    lm = LM(model=net, tokenizer=tok, device=device, dtype=torch.float32, max_tokens=context)
    out = {}
    for s in sets:
        if s.prompts is None:
            nll, n = score_bpb(lm, s.texts)
        else:
            logp, n = score_conditional(lm, s.prompts, s.texts)
            nll = -logp
        total = float(np.sum(nll))
        out[s.name] = {
            "loss": round(total / max(1, int(np.sum(n))), 6),
            "bpb": round(total / (s.bytes * math.log(2)), 6),
        }
    return out
