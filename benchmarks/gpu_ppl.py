"""GPU perplexity-scoring throughput and model FLOP utilisation (self-contained script).

    python benchmarks/gpu_ppl.py                 # on a CUDA machine: ~125M and ~1B Llama, bf16
    python benchmarks/gpu_ppl.py --smoke         # tiny models on CPU, checks the script runs

Imports only torch, transformers and numpy (not datasel), so it can be copied to any GPU box.
It runs the same algorithm as `scorers.lm.score_bpb`: documents (random token ids, lengths
drawn log-normally, median ~250 tokens, capped at the context) sorted by length, packed longest
first under a padded-token budget (pad to a multiple of 8), right padding, the model body on the
batch, then the LM head + fp32 log-softmax in chunks over the scored positions, per-document
totals index-added on the device and read back once at the end.

MFU counts inference as 2 * N FLOPs per scored token (one multiply-add per weight; N excludes
the input embedding table, includes the LM head), not the 6 * N of training, and leaves out
attention's 4 * layers * context * d_model per token (it adds ~10% at 2k context for the 125M
model), so it is a lower bound. Peak: the dense bf16 figure of the card (H100/H200 SXM 989
TFLOP/s), or --peak-tflops.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

PEAK_TFLOPS = {"H200": 989.0, "H100 PCIe": 756.0, "H100": 989.0, "A100": 312.0, "L4": 121.0}

CONFIGS = {
    # ~135M: 12 x 768, untied 32k head (GPT-2-small-sized Llama)
    "llama-125m": dict(
        hidden_size=768,
        intermediate_size=2048,
        num_hidden_layers=12,
        num_attention_heads=12,
        num_key_value_heads=12,
        vocab_size=32000,
        tie_word_embeddings=False,
    ),
    # ~1.24B: the Llama-3.2-1B shape (16 x 2048, GQA 32/8, 128k tied vocab)
    "llama-1b": dict(
        hidden_size=2048,
        intermediate_size=8192,
        num_hidden_layers=16,
        num_attention_heads=32,
        num_key_value_heads=8,
        vocab_size=128256,
        tie_word_embeddings=True,
    ),
    "smoke": dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=1000,
        tie_word_embeddings=False,
    ),
}


def build(name: str, device, dtype, ctx: int):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(max_position_embeddings=ctx, **CONFIGS[name])
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):  # init straight on the GPU: a 1B model inits in ~1 s
            model = LlamaForCausalLM(cfg)
    finally:
        torch.set_default_dtype(old)
    model.eval().requires_grad_(False)
    n_matmul = (
        sum(p.numel() for p in model.parameters()) - model.get_input_embeddings().weight.numel()
    )
    if cfg.tie_word_embeddings:  # the tied table is also the head's weight: count it once
        n_matmul += model.get_input_embeddings().weight.numel()
    return model, n_matmul


def make_docs(n_tokens: int, vocab: int, ctx: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    docs, total = [], 0
    while total < n_tokens:
        n = int(np.clip(rng.lognormal(np.log(250), 1.0), 8, ctx - 1))
        docs.append(rng.integers(0, vocab, size=n + 1))  # +1: the BOS slot
        total += n
    return docs


def score(model, docs: list[np.ndarray], budget: int, device, chunk_logits: int = 1 << 25):
    """Per-document NLL (float64 numpy) with the scorers.lm batching; one sync at the end."""
    import torch

    body, head = model.base_model, model.get_output_embeddings()
    order = np.argsort([-len(d) for d in docs], kind="stable")
    totals = torch.zeros(len(docs), dtype=torch.float64, device=device)
    cuda = torch.device(device).type == "cuda"

    def put(a):
        t = torch.from_numpy(a)
        return t.pin_memory().to(device, non_blocking=True) if cuda else t

    lo = 0
    with torch.inference_mode():
        while lo < len(order):
            width = -(-len(docs[order[lo]]) // 8) * 8
            idx = order[lo : lo + max(1, budget // width)]
            lo += len(idx)
            lens = np.array([len(docs[i]) for i in idx])
            ids = np.zeros((len(idx), width), dtype=np.int64)
            for r, i in enumerate(idx):
                ids[r, : lens[r]] = docs[i]
            col = np.arange(width)
            pos = np.where(col[None] < lens[:, None], col[None], 0)
            n = lens - 1
            row = np.repeat(np.arange(len(idx)), n)
            t = np.arange(n.sum()) - np.repeat(np.cumsum(n) - n, n)
            flat = row * width + t
            tgt, doc = ids.reshape(-1)[flat + 1], np.repeat(idx, n)
            ids_t, pos_t, flat_t, tgt_t, doc_t = map(put, (ids, pos, flat, tgt, doc))
            h = body(input_ids=ids_t, position_ids=pos_t, use_cache=False).last_hidden_state
            h = h.reshape(-1, h.shape[-1])
            step = max(1, chunk_logits // head.out_features)
            parts = []
            for c in range(0, len(flat), step):
                logits = head(h.index_select(0, flat_t[c : c + step])).float()
                parts.append(
                    torch.logsumexp(logits, -1) - logits.gather(1, tgt_t[c : c + step, None])[:, 0]
                )
            totals.index_add_(0, doc_t, torch.cat(parts).double())
    return totals.cpu().numpy()


def peak_for(device_name: str, override: float | None) -> float | None:
    if override:
        return override
    for key, v in PEAK_TFLOPS.items():
        if key in device_name:
            return v
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="tiny model, CPU, fp32, seconds")
    ap.add_argument("--models", default="llama-125m,llama-1b")
    ap.add_argument("--budgets", default="16384,32768,65536", help="padded tokens per batch")
    ap.add_argument(
        "--tokens",
        type=float,
        default=None,
        help="scored tokens per run (default 4M for 125M, 1M for 1B)",
    )
    ap.add_argument("--ctx", type=int, default=2048)
    ap.add_argument("--peak-tflops", type=float, default=None)
    args = ap.parse_args()

    import torch

    if args.smoke:
        device, dtype, models = "cpu", torch.float32, ["smoke"]
        budgets, ctx = [512, 2048], 256
    else:
        if not torch.cuda.is_available():
            raise SystemExit("no CUDA device: use --smoke on CPU")
        device, dtype, models = "cuda", torch.bfloat16, args.models.split(",")
        budgets, ctx = [int(b) for b in args.budgets.split(",")], args.ctx
        torch.backends.cuda.matmul.allow_tf32 = True
    dev_name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    peak = peak_for(dev_name, args.peak_tflops)
    print(
        f"device {dev_name}, dtype {dtype}, context {ctx}, "
        f"peak {peak or '?'} TFLOP/s; MFU = 2*N*tokens/s / peak"
    )
    rows = []
    for name in models:
        model, n_params = build(name, device, dtype, ctx)
        default_tokens = {"llama-1b": 1e6, "smoke": 5e3}.get(name, 4e6)
        docs = make_docs(int(args.tokens or default_tokens), model.config.vocab_size, ctx)
        n_tok = sum(len(d) - 1 for d in docs)
        for budget in budgets:
            score(model, docs[:64], budget, device)  # warm-up: kernels, allocator
            if device == "cuda":
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            t0 = time.perf_counter()
            nll = score(model, docs, budget, device)  # ends with a device->host copy (sync)
            dt = time.perf_counter() - t0
            assert np.isfinite(nll).all()
            tps = n_tok / dt
            mfu = 2 * n_params * tps / (peak * 1e12) if peak else float("nan")
            mem = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else float("nan")
            rows.append(
                (
                    name,
                    f"{n_params / 1e6:.3g}M",
                    budget,
                    n_tok,
                    f"{dt:.2f}",
                    f"{tps:,.0f}",
                    f"{mfu:.1%}",
                    f"{mem:.1f}",
                )
            )
        del model
        if device == "cuda":
            torch.cuda.empty_cache()
    head = ("model", "N", "batch tokens", "tokens", "seconds", "tokens/s", "MFU", "peak GiB")
    cells = [head] + [tuple(map(str, r)) for r in rows]
    w = [max(len(r[i]) for r in cells) for i in range(len(head))]
    for r in cells:
        print("  ".join(c.rjust(w[i]) for i, c in enumerate(r)))


if __name__ == "__main__":
    main()
