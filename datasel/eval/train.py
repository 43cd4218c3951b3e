"""Train one proxy model on one arm's blocks, scoring the eval sets at a few checkpoints.

Same recipe for every arm: AdamW (0.9, 0.95), weight decay 0.1 on matrices, linear warm-up
over the first 5% of steps then cosine decay to 10% of the peak, gradient clipping at 1.0,
bf16 autocast on CUDA (fp32 weights), fp32 on the CPU. The seed fixes the initial weights (the
data order is fixed by the caller), so the same seed on the same device gives the same numbers.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

WARMUP = 0.05
FINAL_LR = 0.1  # of the peak, at the last step


@dataclass(frozen=True, kw_only=True)
class Recipe:
    lr: float
    batch_size: int  # blocks per step
    checkpoints: int  # evenly spaced, the last at the final step
    device: str


def lr_at(step: int, steps: int, peak: float) -> float:
    warm = max(1, round(WARMUP * steps))
    if step < warm:
        return peak * (step + 1) / warm
    done = (step - warm) / max(1, steps - warm)
    return peak * (FINAL_LR + (1 - FINAL_LR) * 0.5 * (1 + math.cos(math.pi * done)))


def checkpoint_steps(steps: int, n: int) -> list[int]:
    """Step counts after which to evaluate: `n` evenly spaced, the last = `steps`."""
    return sorted({max(1, round(steps * (k + 1) / n)) for k in range(n)})


def train(
    net,
    blocks: np.ndarray,
    mask: np.ndarray | None,
    recipe: Recipe,
    evaluate: Callable[[], dict],
    on_step: Callable[[], None] = lambda: None,
) -> list[dict]:
    """Train `net` on `blocks` (steps = blocks // batch size, in order); return the curve:
    one record per checkpoint with the mean training loss since the last one and the result of
    `evaluate()` (called with the model in eval mode)."""
    import torch

    dev = torch.device(recipe.device)
    net.to(dev).train()
    decay = [p for p in net.parameters() if p.dim() >= 2]
    other = [p for p in net.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": other, "weight_decay": 0.0}],
        lr=recipe.lr,
        betas=(0.9, 0.95),
        foreach=dev.type == "cuda",
    )
    steps = len(blocks) // recipe.batch_size
    marks = set(checkpoint_steps(steps, recipe.checkpoints))
    labels_all = blocks.astype(np.int64)
    if mask is not None:
        labels_all = np.where(mask, labels_all, -100)
    curve, losses, start = [], [], time.perf_counter()
    for step in range(steps):
        lo, hi = step * recipe.batch_size, (step + 1) * recipe.batch_size
        if mask is not None and not mask[lo:hi, 1:].any():
            on_step()  # only prompt tokens in these blocks: nothing to learn from
            continue
        ids = torch.from_numpy(blocks[lo:hi].astype(np.int64)).to(dev)
        labels = torch.from_numpy(labels_all[lo:hi]).to(dev)
        for group in opt.param_groups:
            group["lr"] = lr_at(step, steps, recipe.lr)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
            loss = net(input_ids=ids, labels=labels, use_cache=False).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.detach())
        on_step()
        if step + 1 in marks:
            net.eval()
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
                scores = evaluate()
            net.train()
            curve.append(
                {
                    "step": step + 1,
                    "tokens": (step + 1) * recipe.batch_size * blocks.shape[1],
                    "train_loss": round(float(torch.stack(losses).float().mean()), 6)
                    if losses
                    else None,
                    "seconds": round(time.perf_counter() - start, 2),
                    "eval": scores,
                }
            )
            losses = []
    return curve
