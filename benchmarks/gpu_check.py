"""The real `score ppl` and `pick` code paths on a GPU: throughput, and batch independence.

    python benchmarks/gpu_check.py            # on a CUDA machine (run from the repo root)

Builds a ~125M-parameter Llama from a config (random weights, saved as a local model folder),
then through `scorers.lm` on CUDA:
- bf16 `score_bpb` over the bundled sample's 2,250 real documents: tokens/s, vs a naive
  one-document-at-a-time loop on the same GPU over the first 200 documents;
- fp32 batch independence: each document's score batched vs alone, max relative difference;
- `score_conditional` (GRAPE) candidates/s on the same model.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from scorers.lm import load_lm, score_bpb, score_conditional  # noqa: E402


def build_model(path: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    texts = (
        pq.read_table(Path(__file__).parents[1] / "datasel/data/sample.parquet")
        .column("text")
        .to_pylist()
    )
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.train_from_iterator(
        texts,
        trainers.BpeTrainer(vocab_size=16000, special_tokens=["<s>", "</s>", "<pad>", "<unk>"]),
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
    )
    cfg = LlamaConfig(
        hidden_size=768,
        intermediate_size=2048,
        num_hidden_layers=12,
        num_attention_heads=12,
        vocab_size=len(fast),
        max_position_embeddings=2048,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(path)
    fast.save_pretrained(path)


def naive(lm, texts):
    out = []
    for t in texts:
        ids = torch.tensor(
            [[lm.prefix_id, *lm.tokenizer(t, add_special_tokens=False)["input_ids"]]],
            device=lm.device,
        )
        ids = ids[:, : lm.max_tokens]
        with torch.inference_mode():
            logits = lm.model(ids).logits[0, :-1].float()
        out.append(torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="sum").item())
    torch.cuda.synchronize()
    return np.array(out)


def main() -> None:
    assert torch.cuda.is_available(), "needs a CUDA GPU"
    texts = (
        pq.read_table(Path(__file__).parents[1] / "datasel/data/sample.parquet")
        .column("text")
        .to_pylist()
    )
    with tempfile.TemporaryDirectory() as tmp:
        build_model(Path(tmp) / "m")
        print(f"GPU: {torch.cuda.get_device_name()}")
        lm = load_lm(str(Path(tmp) / "m"), device="cuda")  # bf16 on CUDA
        score_bpb(lm, texts[:50])  # warm-up
        for budget in (16384, 65536):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            nll, n = score_bpb(lm, texts, batch_tokens=budget)
            sec = time.perf_counter() - t0
            print(
                f"score_bpb bf16, batch_tokens={budget}: {n.sum():,} tokens in {sec:.2f} s = {n.sum() / sec:,.0f} tokens/s"
            )
        sub = texts[:200]
        t0 = time.perf_counter()
        naive(lm, sub)
        sec_naive = time.perf_counter() - t0
        t0 = time.perf_counter()
        _, n_sub = score_bpb(lm, sub)
        sec_ours = time.perf_counter() - t0
        print(
            f"200 docs: naive loop {n_sub.sum() / sec_naive:,.0f} tokens/s, batched {n_sub.sum() / sec_ours:,.0f} tokens/s, ratio {sec_naive / sec_ours:.1f}x"
        )
        lm32 = load_lm(str(Path(tmp) / "m"), device="cuda", dtype="float32")
        mixed = texts[:64]
        batched, _ = score_bpb(lm32, mixed, batch_tokens=8192)
        alone = np.array([score_bpb(lm32, [t])[0][0] for t in mixed])
        print(
            f"fp32 batch independence on GPU: max relative difference {np.max(np.abs(batched - alone) / alone):.2e} over {len(mixed)} docs"
        )
        prompts = [t[:300] for t in texts[:100] for _ in range(8)]
        responses = [t[300:900] for t in texts[100:900]]
        t0 = time.perf_counter()
        score_conditional(lm, prompts, responses)
        torch.cuda.synchronize()
        print(
            f"score_conditional bf16: {len(prompts) / (time.perf_counter() - t0):,.0f} candidates/s"
        )


if __name__ == "__main__":
    main()
