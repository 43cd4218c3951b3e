"""Prompts for fine-tuning arms: the model's chat template when it has one, else Alpaca's."""

from __future__ import annotations

from datasel.stages.pick import ALPACA_NO_INPUT


def format_prompts(tok, instructions: list[str]) -> list[str]:
    """The text the response follows, for each instruction (as `datasel pick` scores them)."""
    if getattr(tok, "chat_template", None):
        return [
            tok.apply_chat_template(
                [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
            )
            for text in instructions
        ]
    return [ALPACA_NO_INPUT.format(instruction=text) for text in instructions]
