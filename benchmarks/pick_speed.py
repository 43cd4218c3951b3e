"""GRAPE picking speed: batched `scorers.lm.score_conditional` vs a naive per-candidate loop.

    python benchmarks/pick_speed.py                    # 32 instructions x 8 responses, ~4 min
    python benchmarks/pick_speed.py --instructions 0   # all 252

Data: self-instruct-8way.jsonl (shared data). Prompt = instruction (+ input) in a plain
template, candidates = the 8 model responses; each candidate's score is log p(response |
prompt). Models: the random-weight bench models of score_speed.py (BENCH_MODELS) with a
4096-token context. Same process, same data;
prints candidates/s, tokens/s, peak RSS and the ratio, and checks both give the same scores
and the same pick per instruction.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from score_speed import (  # noqa: E402
    BENCH_MODELS,
    ROOT,
    bench_models,
    best_of,
    data_file,
    peak_rss_mb,
)

sys.path.insert(0, str(ROOT))


def load_pairs(n_instructions: int | None = None) -> tuple[list[str], list[str], list[int]]:
    """(prompts, responses, group) with one row per candidate response."""
    prompts, responses, group = [], [], []
    with open(data_file("self-instruct-8way.jsonl"), encoding="utf-8") as f:
        for g, line in enumerate(f):
            if n_instructions is not None and g >= n_instructions:
                break
            row = json.loads(line)
            prompt = f"Instruction: {row['instruction']}\n"
            if row.get("input"):
                prompt += f"Input: {row['input']}\n"
            prompt += "Response:"
            for r in row["responses"]:
                prompts.append(prompt)
                responses.append(r["text"])
                group.append(g)
    return prompts, responses, group


def naive_conditional(lm, prompts: list[str], responses: list[str], *, model=None):
    """One candidate at a time: tokenise prompt and response, one unpadded forward of `model`
    (default `lm.model`), full-vocabulary fp32 log-softmax, sum over the response tokens."""
    import torch

    model = model or lm.model
    out, ns = [], []
    with torch.inference_mode():
        for p, r in zip(prompts, responses, strict=True):
            pre = [lm.prefix_id] + lm.tokenizer(p, add_special_tokens=False)["input_ids"]
            rid = lm.tokenizer(r, add_special_tokens=False)["input_ids"]
            ids = (pre + rid)[: lm.max_tokens]  # the benchmark data fit the context
            lp = torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), dim=-1)
            k = len(ids) - len(pre)
            pos = torch.arange(len(pre) - 1, len(ids) - 1)
            out.append(lp[pos, torch.tensor(ids[len(pre) :])].sum().item() if k else 0.0)
            ns.append(k)
    return np.array(out), np.array(ns)


def group_argmax(scores: np.ndarray, group: np.ndarray) -> np.ndarray:
    best = {}
    for i, (s, g) in enumerate(zip(scores, group, strict=True)):
        if g not in best or s > scores[best[g]]:
            best[g] = i
    return np.array([best[g] for g in sorted(best)])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--instructions", type=int, default=32, help="0 = all 252")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = all cores)")
    ap.add_argument("--batch-tokens", type=int, default=None, help="default: scorers.lm's")
    ap.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="best of N interleaved runs (a shared machine is noisy)",
    )
    ap.add_argument(
        "--models",
        default="tiny,gpt2-4x256,test-size",
        help=f"bench models: {', '.join(BENCH_MODELS)}",
    )
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads or os.cpu_count() or 1)
    prompts, responses, group = load_pairs(args.instructions or None)
    group = np.array(group)
    print(
        f"{group.max() + 1} instructions, {len(responses)} candidates, "
        f"torch threads {torch.get_num_threads()}"
    )
    rows = []
    for label, lm, plain in bench_models(args.models, n_positions=4096):
        rows += bench_pick(
            lm, plain, label, prompts, responses, group, args.batch_tokens, args.repeats
        )
    print_table_cands(rows)


def bench_pick(lm, plain, name, prompts, responses, group, batch_tokens, repeats=1) -> list:
    from scorers.lm import score_conditional

    score_conditional(lm, prompts[:8], responses[:8])  # warm-up
    rss = []

    def batched():
        out = score_conditional(lm, prompts, responses, batch_tokens=batch_tokens)
        rss.append(peak_rss_mb())  # before the naive loop's first run
        return out

    ((lp, n), t_b), ((lp0, n0), t_n) = best_of(
        repeats, batched, lambda: naive_conditional(lm, prompts, responses, model=plain)
    )
    rss_b = rss[0]

    assert (n == n0).all()
    rel = np.max(np.abs(lp - lp0) / np.maximum(np.abs(lp0), 1e-9))
    same_pick = (group_argmax(lp, group) == group_argmax(lp0, group)).mean()
    c = len(responses)
    return [
        ("score_conditional", name, c, int(n.sum()), t_b, c / t_b, rss_b),
        ("naive loop", name, c, int(n0.sum()), t_n, c / t_n, peak_rss_mb()),
        (
            "ratio",
            name,
            "",
            "",
            "",
            f"{t_n / t_b:.2f}x",
            f"max rel diff {rel:.1e}, same pick {same_pick:.0%}",
        ),
    ]


def print_table_cands(rows: list) -> None:
    head = ("method", "model", "candidates", "resp tokens", "seconds", "cands/s", "peak RSS MB")
    cells = [head] + [
        tuple(f"{c:.1f}" if isinstance(c, float) else str(c) for c in r) for r in rows
    ]
    w = [max(len(r[i]) for r in cells) for i in range(len(head))]
    for r in cells:
        print("  ".join(x.rjust(w[i]) for i, x in enumerate(r)))


if __name__ == "__main__":
    main()
