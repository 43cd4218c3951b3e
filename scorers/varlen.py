"""Packed attention: many sequences in one row of a transformers model, none seeing another.

`enable(model)` registers `packed_attention` in transformers' ``AttentionInterface`` and switches
the model to it. A forward call then takes one row of concatenated sequences, position ids that
restart at 0 for each, and ``cu_seq_lens_q`` (int32 offsets ``[0, len_0, len_0 + len_1, ...]``)
plus ``max_length_q`` (the longest), the names transformers' own varlen kwargs use:

- on CUDA in bf16/fp16: torch's flash-attention varlen kernel (``aten::_flash_attention_forward``
  with cumulative lengths, the op under ``torch.nn.attention.varlen.varlen_attn``, called directly
  because that wrapper's keywords changed between torch 2.9 and 2.13 and the op's did not). No
  mask is built: each sequence costs its own ``len**2 / 2`` and no padding is computed.
- elsewhere (CPU, fp32): ``scaled_dot_product_attention`` per sequence, the same kernel the
  padded path runs, so packed and padded scores agree to rounding.

Causal for decoders (`scorers.lm`), bidirectional for encoders whose attention modules say
``is_causal = False`` (BERT in `scorers.embed`).

transformers builds no mask for an implementation it does not know (its mask factory exits
early), which is what we want: causality and the sequence boundaries are the kernel's job. A
call without ``cu_seq_lens_q`` (one sequence per row, right padding) is plain SDPA, as before.
"""

from __future__ import annotations

NAME = "datasel_varlen"


def packed_attention(
    module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None, **kwargs
):
    """transformers attention-interface function; query (1, heads, T, d), key/value
    (1, kv_heads, T, d); returns ((1, T, heads, d), None)."""
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    cu = kwargs.get("cu_seq_lens_q")
    if cu is None:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
            is_causal=is_causal, **kwargs,
        )  # fmt: skip
    if query.shape[0] != 1:
        raise ValueError(f"packed attention takes one row, got {query.shape[0]}")
    # encoders (BERT) are not causal; transformers' own SDPA path reads the same attribute
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    head_dim = query.shape[-1]
    half = query.dtype in (torch.float16, torch.bfloat16)
    if query.is_cuda and half and head_dim % 8 == 0 and head_dim <= 256:  # flash's limits
        # (1, H, T, d) -> (T, H, d): a view of transformers' (1, T, H, d) projections
        q, k, v = (x[0].transpose(0, 1) for x in (query, key, value))
        m = int(kwargs["max_length_q"])
        out = torch.ops.aten._flash_attention_forward(
            q, k, v, cu, cu, m, m, 0.0, causal, False, scale=scaling
        )[0]
        return out.unsqueeze(0), None
    gqa = query.shape[1] != key.shape[1]
    bounds = cu.tolist()
    parts = [
        torch.nn.functional.scaled_dot_product_attention(
            query[:, :, a:b],
            key[:, :, a:b],
            value[:, :, a:b],
            is_causal=causal,
            scale=scaling,
            enable_gqa=gqa,
        )
        for a, b in zip(bounds[:-1], bounds[1:], strict=True)
    ]
    return torch.cat(parts, dim=2).transpose(1, 2).contiguous(), None


def enable(model) -> bool:
    """Switch `model` to `packed_attention`; False (model unchanged) when it cannot take it: a
    model that does not dispatch attention through transformers' interface, or one whose
    attention has sliding windows or logit soft-capping (not implemented here)."""
    from transformers import AttentionInterface

    cfg = model.config
    text = getattr(cfg, "get_text_config", lambda: cfg)()
    windowed = getattr(text, "sliding_window", None) and getattr(text, "use_sliding_window", True)
    if windowed or getattr(text, "attn_logit_softcapping", None):
        return False
    if cfg._attn_implementation == NAME:
        return True
    AttentionInterface.register(NAME, packed_attention)
    try:
        model.set_attn_implementation(NAME)
    except (ValueError, KeyError, NotImplementedError):
        return False
    return cfg._attn_implementation == NAME
