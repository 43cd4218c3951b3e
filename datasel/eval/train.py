"""Train one proxy model on one arm's blocks, scoring the eval sets at a few checkpoints.

Same recipe for every arm: AdamW (0.9, 0.95), weight decay 0.1 on matrices, linear warm-up
over the first 5% of steps then cosine decay to 10% of the peak, gradient clipping at 1.0,
bf16 autocast on CUDA (fp32 weights), fp32 on the CPU. The seed fixes the initial weights (the
data order is fixed by the caller), so the same seed on the same device gives the same numbers.

A step whose activations would not fit in half the free memory (estimated from the model's
shape) runs as several forward/backward passes with the gradients summed: the same update as one
pass, up to float rounding. A 135M model's 16 x 1024-token step needs ~29 GB in one pass.
"""

from __future__ import annotations

import math
import os
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


def blocks_per_pass(net, context: int, batch: int, device: str) -> int:
    """How many of a step's `batch` blocks one forward/backward pass may take (fp32 estimate:
    logits and their gradient, each layer's activations; SmolLM2-135M measured 1.75 GB per
    1024-token block on the CPU against 2.3 GB estimated)."""
    cfg = net.config.get_text_config()
    shape = [getattr(cfg, k, None) for k in ("vocab_size", "num_hidden_layers", "hidden_size")]
    if not all(shape):
        return batch  # a config without the usual names: no estimate, one pass
    vocab, layers, width = shape
    per_token = 4 * (3 * vocab + 24 * layers * width)
    weights = sum(p.numel() for p in net.parameters())
    budget = (free_memory(device) - 12 * weights) / 2  # gradients and AdamW's two moments
    return int(min(batch, max(1, budget // (per_token * context))))


def free_memory(device: str) -> float:
    """Bytes free on the device: CUDA's free memory, or the host's available memory."""
    import torch

    if device.startswith("cuda"):
        return float(torch.cuda.mem_get_info(torch.device(device))[0])
    try:
        with open("/proc/meminfo") as f:
            info = dict(line.split(":", 1) for line in f)
        return float(info["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES"))


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
    per_pass = blocks_per_pass(net, blocks.shape[1], recipe.batch_size, recipe.device)
    curve, losses, start = [], [], time.perf_counter()
    for step in range(steps):
        lo, hi = step * recipe.batch_size, (step + 1) * recipe.batch_size
        if mask is not None and not mask[lo:hi, 1:].any():
            on_step()  # only prompt tokens in these blocks: nothing to learn from
            continue
        for group in opt.param_groups:
            group["lr"] = lr_at(step, steps, recipe.lr)
        if per_pass >= recipe.batch_size:
            ids = torch.from_numpy(blocks[lo:hi].astype(np.int64)).to(dev)
            labels = torch.from_numpy(labels_all[lo:hi]).to(dev)
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
                loss = net(input_ids=ids, labels=labels, use_cache=False).loss
            loss.backward()
        else:
            loss = _accumulate(net, blocks[lo:hi], labels_all[lo:hi], per_pass, dev)
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


def _accumulate(net, ids: np.ndarray, labels: np.ndarray, per_pass: int, dev):
    """Backward of the step's mean token loss in passes of `per_pass` blocks: each pass adds
    its summed loss over the step's count of predicted tokens; the step's mean loss."""
    import torch

    counted = int((labels[:, 1:] != -100).sum())
    total = torch.zeros((), device=dev)
    for lo in range(0, len(ids), per_pass):
        y = torch.from_numpy(labels[lo : lo + per_pass, 1:]).to(dev)
        if not (y != -100).any():
            continue  # prompt tokens only: no loss, no gradient
        x = torch.from_numpy(ids[lo : lo + per_pass].astype(np.int64)).to(dev)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
            logits = net(input_ids=x, use_cache=False).logits[:, :-1]
        loss = (
            torch.nn.functional.cross_entropy(
                logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1), reduction="sum"
            )
            / counted
        )
        loss.backward()
        total += loss.detach()
    return total
