"""GPU perplexity-scoring throughput and model FLOP utilisation, padded vs packed rows.

    python benchmarks/gpu_ppl.py --json gpu_ppl.json   # CUDA: ~125M and ~1.24B Llama, bf16, ~3 min
    python benchmarks/gpu_ppl.py --smoke               # tiny model on CPU, checks the script runs

Runs the real `scorers.lm.score_ids` (`score_bpb` after tokenisation) on random-weight Llamas
built from a config on the GPU (nothing downloaded), once per row layout and batch budget:
- padded: windows length-sorted, right-padded rows, SDPA's causal kernel (the CPU default);
- packed: windows back to back in one row, torch's flash varlen kernel (`scorers.varlen`; the
  CUDA default since this benchmark).
Documents are random token ids, lengths drawn log-normally (median ~250 tokens, capped at the
context). Per model it also prints how far packed scores are from padded ones (bf16 rounding,
~1e-3; a mask leaking across packed documents would give far more), and for the 1B model a
profile of the packed run's top CUDA kernels (`<json>.profile.txt`), to show where time goes.

MFU counts inference as 2 * N FLOPs per scored token (one multiply-add per weight; N excludes
the input embedding table, includes the LM head), not the 6 * N of training, and leaves out
attention's 4 * layers * context * d_model per token (it adds ~10% at 2k context for the 125M
model), so it is a lower bound. Peak: the dense bf16 figure of the card (H100/H200 SXM 989
TFLOP/s), or --peak-tflops.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

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


def peak_for(device_name: str, override: float | None) -> float | None:
    if override:
        return override
    for key, v in PEAK_TFLOPS.items():
        if key in device_name:
            return v
    return None


def timed(lm, docs, budget: int, cuda: bool):
    """(nll, seconds, peak GiB) of one `score_ids` run after a warm-up on 64 documents."""
    import torch

    from scorers.lm import score_ids

    score_ids(lm, docs[:64], batch_tokens=budget)  # kernels, allocator
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    nll, _ = score_ids(lm, docs, batch_tokens=budget)  # ends with a device->host copy (sync)
    sec = time.perf_counter() - t0
    mem = torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan")
    assert np.isfinite(nll).all()
    return nll, sec, mem


def measure(model, name, n_params, docs, layout, budgets, peak, rows) -> np.ndarray:
    """Time `layout` rows at each budget, appending result rows; return the last run's NLL."""
    from scorers.lm import LM

    device, dtype = model.device.type, model.dtype
    packed = layout == "packed"
    lm = LM(model=model, tokenizer=None, device=device, dtype=dtype,
            max_tokens=model.config.max_position_embeddings, packed=packed)  # fmt: skip
    assert lm.packed == packed, f"{name} cannot take packed attention"
    n_tok = sum(len(d) - 1 for d in docs)
    for budget in budgets:
        nll, sec, mem = timed(lm, docs, budget, device == "cuda")
        tps = n_tok / sec
        mfu = 2 * n_params * tps / (peak * 1e12) if peak else float("nan")
        rows.append(
            dict(
                model=name,
                params=n_params,
                layout=layout,
                batch_tokens=budget,
                tokens=n_tok,
                seconds=round(sec, 3),
                tokens_per_s=round(tps),
                mfu=round(mfu, 4),
                peak_gib=round(mem, 2),
            )
        )
        print(
            f"{name} {layout} batch {budget}: {tps:,.0f} tokens/s, MFU {mfu:.1%}, "
            f"{sec:.1f} s, peak {mem:.1f} GiB",
            flush=True,
        )
    return nll


def profile(lm, docs, budget: int, path: Path) -> None:
    """Top CUDA kernels of one packed run, by total time."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from scorers.lm import score_ids

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        score_ids(lm, docs, batch_tokens=budget)
    table = prof.key_averages().table(
        sort_by="cuda_time_total", row_limit=25, max_name_column_width=70
    )
    path.write_text(table)
    print(f"profile of the packed run ({sum(len(d) - 1 for d in docs):,} tokens): {path}")
    torch.cuda.synchronize()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="tiny model, CPU, fp32, seconds")
    ap.add_argument("--models", default="llama-1b,llama-125m")
    ap.add_argument("--budgets", default="16384,32768,65536", help="tokens per batch")
    ap.add_argument(
        "--tokens",
        type=float,
        default=None,
        help="scored tokens per run (default 4M for 125M, 1M for 1B)",
    )
    ap.add_argument("--ctx", type=int, default=2048)
    ap.add_argument("--peak-tflops", type=float, default=None)
    ap.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = ap.parse_args()

    import torch

    from scorers.lm import LM

    if args.smoke:
        device, dtype, models = "cpu", torch.float32, ["smoke"]
        budgets, ctx = [512, 2048], 256
    else:
        if not torch.cuda.is_available():
            raise SystemExit("no CUDA device: use --smoke on CPU")
        device, dtype, models = "cuda", torch.bfloat16, args.models.split(",")
        budgets, ctx = [int(b) for b in args.budgets.split(",")], args.ctx
    cuda = device == "cuda"
    dev_name = torch.cuda.get_device_name() if cuda else "cpu"
    peak = peak_for(dev_name, args.peak_tflops)
    head = f"device {dev_name}, torch {torch.__version__}, dtype {dtype}, context {ctx}, "
    print(head + f"peak {peak or '?'} TFLOP/s; MFU = 2*N*tokens/s / peak", flush=True)
    rows, checks, errors = [], [], []
    for name in models:
        model, n_params = build(name, device, dtype, ctx)
        default_tokens = {"llama-1b": 1e6, "smoke": 5e3}.get(name, 4e6)
        docs = make_docs(int(args.tokens or default_tokens), model.config.vocab_size, ctx)
        nll = {}
        for layout in ("padded", "packed"):  # padded first: packing switches the attention
            try:
                nll[layout] = measure(model, name, n_params, docs, layout, budgets, peak, rows)
                if layout == "packed" and cuda and name == "llama-1b" and args.json:
                    best = max(
                        (r for r in rows if r["model"] == name), key=lambda r: r["tokens_per_s"]
                    )
                    lm = LM(model=model, tokenizer=None, device=device, dtype=dtype,
                            max_tokens=ctx, packed=True)  # fmt: skip
                    prof = args.json.with_suffix(".profile.txt")
                    profile(lm, docs[: len(docs) // 5], best["batch_tokens"], prof)
            except Exception as e:  # keep measuring the rest: a GPU run is rare
                errors.append(dict(model=name, layout=layout, error=f"{type(e).__name__}: {e}"))
                print(f"{name} {layout} FAILED: {errors[-1]['error']}", flush=True)
                traceback.print_exc()
        if len(nll) == 2:
            rel = np.abs(nll["packed"] - nll["padded"]) / np.maximum(np.abs(nll["padded"]), 1e-9)
            checks.append(
                dict(
                    model=name, max_rel_diff=float(rel.max()), median_rel_diff=float(np.median(rel))
                )
            )
            print(
                f"{name}: packed vs padded per-document NLL, max relative difference "
                f"{rel.max():.1e}, median {np.median(rel):.1e}",
                flush=True,
            )
        del model
        if cuda:
            torch.cuda.empty_cache()
    cols = (
        "model",
        "layout",
        "batch_tokens",
        "tokens",
        "seconds",
        "tokens_per_s",
        "mfu",
        "peak_gib",
    )
    cells = [cols] + [tuple(str(r[c]) for c in cols) for r in rows]
    w = [max(len(r[i]) for r in cells) for i in range(len(cols))]
    for r in cells:
        print("  ".join(c.rjust(w[i]) for i, c in enumerate(r)))
    for name in models:
        best = {}
        for lay in ("padded", "packed"):
            mine = [r for r in rows if r["model"] == name and r["layout"] == lay]
            if mine:
                r = max(mine, key=lambda r: r["tokens_per_s"])
                best[lay] = r
                print(f"{name}: best MFU {lay} {r['mfu']:.1%} (batch {r['batch_tokens']})")
        if len(best) == 2:
            ratio = best["packed"]["tokens_per_s"] / best["padded"]["tokens_per_s"]
            print(f"{name}: packed/padded tokens/s at the best budgets {ratio:.2f}x")
    if args.json:
        meta = dict(
            device=dev_name,
            torch=torch.__version__,
            dtype=str(dtype),
            context=ctx,
            peak_tflops=peak,
        )
        args.json.write_text(
            json.dumps(dict(meta=meta, rows=rows, packed_vs_padded=checks, errors=errors), indent=1)
        )
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
