"""Proxy-model evaluation of selections: train the same small LM on each, compare held-out loss.

Modules, one job each: tokenizer (one BPE for every arm), data (read arms, pack blocks), model
(presets and configs), train (the recipe), metrics (loss per token and bits per byte), sft
(prompts of fine-tuning arms), run (orchestration and resume), report (eval.json, table, HTML).
"""

from datasel.eval.run import evaluate

__all__ = ["evaluate"]
