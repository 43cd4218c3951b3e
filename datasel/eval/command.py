"""The `datasel eval` command (registered in datasel/cli.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from datasel.errors import DataselError, fail
from datasel.io import TEXT_COLUMN


def named(values: list[str] | None, flag: str) -> dict[str, str]:
    """NAME=PATH options as an ordered dict; a repeated name is an error."""
    out: dict[str, str] = {}
    for value in values or []:
        name, sep, path = value.partition("=")
        if not sep or not name or not path:
            raise DataselError(f"{flag} {value!r}: expected NAME=PATH")
        if name in out:
            raise DataselError(f"{flag} {name}: given twice")
        out[name] = path
    return out


def eval_command(
    out: Annotated[Path, typer.Argument(help="folder for eval.json, report.html and run results")],
    train: Annotated[
        list[str],
        typer.Option(
            "--train",
            help="an arm to train on: NAME=PATH (repeat); {seed} in PATH: one selection per seed",
        ),
    ],
    eval_: Annotated[
        list[str], typer.Option("--eval", help="a held-out set to score: NAME=PATH (repeat)")
    ],
    baseline: Annotated[
        list[str] | None,
        typer.Option(help="random=POOL: add random POOL documents matched in tokens to the arms"),
    ] = None,
    model: Annotated[
        str,
        typer.Option(
            help="tiny (~1M parameters) | small (~9M) | base (~124M) | config.json | model folder"
        ),
    ] = "tiny",
    tokens: Annotated[int, typer.Option(help="training tokens per arm")] = 1_000_000,
    seeds: Annotated[int, typer.Option(help="runs per arm; figures are mean ± spread")] = 2,
    tokenizer: Annotated[
        str | None,
        typer.Option(help="local HF tokenizer folder (default: BPE trained on the arms)"),
    ] = None,
    finetune: Annotated[
        str | None,
        typer.Option(help="local HF model folder: fine-tune it on prompt/response arms instead"),
    ] = None,
    text_column: Annotated[str, typer.Option(help="text column (pre-training arms)")] = TEXT_COLUMN,
    prompt_column: Annotated[str, typer.Option(help="with --finetune")] = "instruction",
    response_column: Annotated[str, typer.Option(help="with --finetune")] = "response",
    eval_tokens: Annotated[int, typer.Option(help="tokens scored per eval set")] = 50_000,
    checkpoints: Annotated[int, typer.Option(help="evaluations per run (learning curves)")] = 4,
    lr: Annotated[
        float | None, typer.Option(help="peak learning rate (default: the preset's)")
    ] = None,
    batch_size: Annotated[
        int | None, typer.Option(help="blocks per step (default: the preset's)")
    ] = None,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda")] = "auto",
    save_model: Annotated[
        bool,
        typer.Option(help="also save each trained model to OUT/models/ARM.seedS (for score ppl)"),
    ] = False,
    quiet: Annotated[bool, typer.Option(help="no progress, estimate or table")] = False,
):
    """Train the same small causal LM on each selection and compare held-out loss (bits per
    byte and nats per token), with the seeds' spread. Resumable: rerun to finish a killed eval.

    Example:

      datasel eval out/eval --train dsir=out/dsir --baseline random=pool.jsonl --eval target=heldout.jsonl
    """  # fmt: skip
    from datasel.eval.run import evaluate

    try:
        evaluate(
            out,
            named(train, "--train"),
            named(eval_, "--eval"),
            model_name=model,
            tokens=tokens,
            seeds=seeds,
            baseline=named(baseline, "--baseline"),
            tokenizer_path=tokenizer,
            finetune=finetune,
            text_column=text_column,
            prompt_column=prompt_column,
            response_column=response_column,
            eval_tokens=eval_tokens,
            checkpoints=checkpoints,
            lr=lr,
            batch_size=batch_size,
            device=device,
            save_models=save_model,
            quiet=quiet,
        )
    except DataselError as e:
        raise fail(str(e)) from None
