"""The proxy model: a causal LM built from a preset, a config file or a local HF folder.

Presets are GPT-2 configs (transformers' own class, no hand-written transformer) with the
training hyperparameters that go with them. Parameter counts include the tied embeddings:

    tiny    2 layers x 128 wide, 256-token context, 4k vocabulary     ~1.0M   CPU minutes
    small   6 layers x 256 wide, 512-token context, 16k vocabulary    ~9.0M
    base    12 layers x 768 wide, 1024-token context, 50k vocabulary  ~124M   (GPT-2) a GPU
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

from datasel.errors import DataselError


@dataclass(frozen=True, kw_only=True)
class ModelSpec:
    """What to build and how to train it; `config` is a transformers config as a dict."""

    name: str  # preset name, or the path it came from
    config: dict
    context: int  # tokens per training block (and eval window)
    vocab_size: int  # of the BPE tokenizer trained when none is given
    batch_size: int  # blocks per optimizer step
    lr: float
    weights: str | None = None  # a local HF folder to start from (fine-tuning)


def _gpt2(n_layer: int, n_head: int, n_embd: int, n_positions: int) -> dict:
    return {
        "model_type": "gpt2",
        "n_layer": n_layer,
        "n_head": n_head,
        "n_embd": n_embd,
        "n_positions": n_positions,
        # no dropout: a proxy run sees each token about once, and dropout only adds noise
        "resid_pdrop": 0.0,
        "embd_pdrop": 0.0,
        "attn_pdrop": 0.0,
    }


PRESETS = {
    "tiny": ModelSpec(
        name="tiny", config=_gpt2(2, 4, 128, 256), context=256, vocab_size=4096,
        batch_size=16, lr=2e-3,
    ),
    "small": ModelSpec(
        name="small", config=_gpt2(6, 8, 256, 512), context=512, vocab_size=16384,
        batch_size=32, lr=1e-3,
    ),
    "base": ModelSpec(
        name="base", config=_gpt2(12, 12, 768, 1024), context=1024, vocab_size=50257,
        batch_size=64, lr=6e-4,
    ),
}  # fmt: skip


def resolve_model(model: str, *, finetune: bool = False) -> ModelSpec:
    """A preset name, a JSON config file, or a local HF model folder (its config.json; with
    `finetune`, its weights and tokenizer too)."""
    if not finetune and model in PRESETS:
        return PRESETS[model]
    path = Path(model).expanduser()
    if finetune:
        if not path.is_dir() or not (path / "config.json").is_file():
            what = "has no config.json" if path.is_dir() else "does not exist"
            raise DataselError(f"--finetune {model}: the model folder {what}")
    elif not path.exists():
        raise DataselError(
            f"--model {model}: not a preset ({', '.join(PRESETS)}), config file or model folder"
        )
    file = path / "config.json" if path.is_dir() else path
    if not file.is_file():
        raise DataselError(f"--model {model}: the folder has no config.json")
    try:
        config = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataselError(f"{file}: not a JSON model config ({e})") from None
    if not isinstance(config, dict) or "model_type" not in config:
        raise DataselError(f"{file}: a model config needs a 'model_type' (e.g. gpt2, llama)")
    context = min(_positions(config), 1024)
    return replace(
        PRESETS["small"],
        name=str(model),
        config=config,
        context=context,
        batch_size=max(1, 16384 // context),  # 16k tokens per step, as `small`
        lr=1e-4 if finetune else PRESETS["small"].lr,
        weights=str(path) if finetune else None,
    )


def _positions(config: dict) -> int:
    for key in ("n_positions", "max_position_embeddings", "n_ctx", "seq_length"):
        if isinstance(config.get(key), int) and config[key] > 1:
            return config[key]
    return 1024


def build_model(spec: ModelSpec, tokenizer, seed: int):
    """A freshly initialised model (seeded), or the fine-tuning folder's weights, in fp32."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from scorers.lm import fuse_gelu, quiet_padding_warning

    torch.manual_seed(seed)
    if spec.weights is not None:
        try:
            net = AutoModelForCausalLM.from_pretrained(spec.weights, dtype=torch.float32)
        except (OSError, ValueError, KeyError) as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise DataselError(
                f"--finetune {spec.weights}: cannot load a causal LM: {first}"
            ) from None
    else:
        cfg = dict(spec.config)
        kind = cfg.pop("model_type")
        ids = {"bos_token_id": tokenizer.eos_token_id, "eos_token_id": tokenizer.eos_token_id}
        cfg.update(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, **ids)
        try:
            config = AutoConfig.for_model(kind, **cfg)
        except (ValueError, KeyError, TypeError) as e:
            raise DataselError(f"--model {spec.name}: bad model config ({e})") from None
        net = AutoModelForCausalLM.from_config(config)
    quiet_padding_warning()  # blocks hold EOS, which is also the pad token: no padding here
    net.loss_type = "ForCausalLM"  # transformers warns about class names it does not know
    fuse_gelu(net)  # same formula, a quarter of a small GPT-2's CPU time
    return net


def count_parameters(net) -> int:
    """Distinct parameters (tied embeddings counted once)."""
    return sum(p.numel() for p in net.parameters())
