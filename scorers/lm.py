"""Causal-LM bits per byte and conditional log-likelihood, batched through torch.

Used by ``datasel score ppl`` (perplexity as bits per byte) and ``datasel pick`` (GRAPE:
log-probability of a response given an instruction, Zhang et al. 2025, arXiv:2502.04194).

How a batch is run (the numbers are what keeps a GPU busy and a CPU run light):

- Texts are tokenised on the CPU (fast tokenizer, no special tokens) and every sequence gets a
  BOS prefix (EOS when the tokenizer has no BOS, as GPT-2), so the first text token is
  scored too: a document of n tokens contributes exactly n scored tokens.
- Sequences longer than the context are cut into sliding windows: each token is scored exactly
  once, in the window that ends at the end of its chunk, so it sees at least
  ``max_tokens - stride`` tokens of left context (the HF perplexity recipe, with the last window
  pulled back to keep a full context).
- Two row layouts, one per device (`LM.packed`, chosen by `load_lm`):

  * padded (CPU; CUDA in fp32): windows sorted by length (longest first, so an out-of-memory
    error shows on the first batch; on OOM the batch is halved and retried), batched under a
    budget of ``batch_tokens`` padded tokens, each row right-padded to a multiple of 8. Random
    order wastes ~55% of tokens on padding, length-sorted ~0%. Position ids 0..width-1 on every
    row: a causal model never lets a real token see the pad tokens to its right, so padding
    cannot change a score and no attention mask is passed (SDPA's causal kernel).
  * packed (CUDA in bf16/fp16): windows in document order, back to back in one row of up to
    ``batch_tokens`` tokens, position ids restarting at 0 in each, their offsets
    (``cu_seqlens``) handed to `scorers.varlen`'s attention: torch's flash varlen kernel, where
    no window sees another, no mask is built and no padding computed; every batch has the same
    token count whatever the lengths, so no sort is needed and texts are tokenised in pieces of
    ~16 batches, the next piece in a background thread while the GPU runs the current one
    (a byte-level BPE did ~0.5M tokens per CPU-second here: an 8k-row map batch of 2k-char
    web pages is ~4.7M tokens, ~9 CPU-s, where an H100 at 50% MFU scores it in ~24 s at 1B
    and ~2 s at 125M; serial, that is a stall of up to several times the compute). A
    block-diagonal mask would cost ``T**2`` per row of T tokens in attention (SDPA with a
    dense mask) where varlen costs each window's own ``len**2 / 2``.

  The CPU keeps padded rows: the same kernels run either way (SDPA per window when packed),
  sorted padding wastes ~0%, and a tokeniser thread would only take cores from the model.
  Measured (``benchmarks/score_speed.py --packed --no-naive --threads 1 --cpu-time``, 40
  documents, three models): packed ran at 0.98-1.08x the padded speed, another run 0.94-1.03x,
  i.e. no gain; padded also keeps today's CPU outputs bit for bit.
  Both layouts give the same scores (tests/test_lm_packed.py: within 1e-4, GPT-2 and Llama).
- bf16 on CUDA is bf16 weights (``dtype="auto"``), not autocast over fp32 weights: the same
  bf16 matmuls without a cast per op and at half the memory; the head's logits are upcast to
  fp32 for the log-sum-exp.
- Only the body runs on the whole batch; the LM head and an fp32 log-softmax run on the scored
  positions in chunks of ~32M logits (128 MiB), never on full-vocabulary fp32 logits for the
  batch. Per-document totals stay on the device (float64) and are read back once per call.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from datasel.device import import_torch, pick_device
from datasel.errors import import_extra
from datasel.progress import batch_done
from scorers import varlen
from scorers.models import locate

log = logging.getLogger(__name__)

# Logits per LM-head chunk: 32M fp32 = 128 MiB on a GPU; 1M = 4 MiB on a CPU, where a chunk
# that stays in cache made the log-softmax ~3x faster and the whole run ~1.2x.
_LOGIT_CHUNK = {"cuda": 1 << 25, "cpu": 1 << 20}
# Padded tokens per batch when the caller gives none: big batches fill a GPU; on a CPU 1-2k
# tokens ran ~1.5x faster than 16k (activations stay in the 32 MiB L3 cache).
_BATCH_TOKENS = {"cuda": 16384, "cpu": 2048}
_PAD_MULTIPLE = 8
# Packed rows are tokenised in pieces of ~this many batches, the next while the device runs one
_PIECE_BATCHES = 16
# CPU LM head: vocabulary rows x tokens per step, a 4 MB logits block (2 MB per thread of a
# 2-core run). On 50k-vocabulary heads 2048 x 512 ran 1.13x faster than 2048 x 128 (width 128:
# 164 vs 145 GFLOP/s; width 576: 163 vs 149), and 2048 x 128 1.2x faster than 8192 x 128
_VOCAB_BLOCK = 2048
_TOKEN_CHUNK = 512
_LOG2E = 1 / math.log(2)


WHAT = "scoring with a language model"  # who needs torch and transformers, in their errors


@dataclass
class LM:
    """A causal LM and its tokenizer, loaded once per worker by `load_lm`.

    Attributes
    ----------
    model : transformers.PreTrainedModel
        In eval mode, on `device`.
    tokenizer : transformers.PreTrainedTokenizerBase
    device : str
        ``"cuda"``, ``"cpu"``, ...
    dtype : torch.dtype
        Weight dtype (bf16 on CUDA, fp32 on CPU by default).
    max_tokens : int
        Context length used for sliding windows (the model's max positions by default).
    packed : bool
        Run packed rows through `scorers.varlen` (switches the model's attention to it; left
        False when the model cannot take it) instead of right-padded length-sorted rows.
    """

    model: Any
    tokenizer: Any
    device: str
    dtype: Any
    max_tokens: int
    packed: bool = False

    def __post_init__(self) -> None:
        if self.packed and not varlen.enable(self.model):
            log.info("%s cannot take packed attention: padded batches", type(self.model).__name__)
            self.packed = False

    @property
    def prefix_id(self) -> int:
        """The token every sequence starts with: BOS, else EOS."""
        tok = self.tokenizer
        for tid in (tok.bos_token_id, tok.eos_token_id):
            if tid is not None:
                return int(tid)
        raise ValueError("the tokenizer has neither a BOS nor an EOS token to condition on")


def _resolve_dtype(dtype: str, device: str):
    import torch

    if dtype == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    names = {
        "float32": torch.float32,
        "fp32": torch.float32,
        "bfloat16": torch.bfloat16,
        "bf16": torch.bfloat16,
        "float16": torch.float16,
        "fp16": torch.float16,
    }
    if dtype not in names:
        raise ValueError(f"dtype must be 'auto' or one of {sorted(names)}, got {dtype!r}")
    return names[dtype]


def _packs_by_default(device: str, dtype) -> bool:
    import torch

    return device.startswith("cuda") and dtype in (torch.bfloat16, torch.float16)


def _max_positions(model, tokenizer) -> int:
    cfg = model.config
    cfg = getattr(cfg, "get_text_config", lambda: cfg)()
    for attr in ("max_position_embeddings", "n_positions", "n_ctx", "seq_length"):
        v = getattr(cfg, attr, None)
        if isinstance(v, int) and v > 1:
            return v
    v = getattr(tokenizer, "model_max_length", None)
    return v if isinstance(v, int) and 1 < v < 1_000_000 else 2048


def load_lm(
    model: str,
    *,
    device: str = "auto",
    dtype: str = "auto",
    gguf_file: str | None = None,
    max_tokens: int | None = None,
    packed: bool | None = None,
) -> LM:
    """Load a causal LM and its tokenizer.

    Parameters
    ----------
    model
        A local HF model folder, a path to a ``.gguf`` file, or a hub name (needs network).
    device
        ``"auto"`` (CUDA when available, else CPU) or a torch device string.
    dtype
        ``"auto"`` (bf16 on CUDA, fp32 on CPU), ``"float32"``, ``"bfloat16"``, ``"float16"``.
    gguf_file
        Name of a GGUF file inside the `model` folder (alternative to a ``.gguf`` path).
    max_tokens
        Context length for sliding windows; default the model's max positions.
    packed
        Packed rows (see the module docstring); default: on CUDA in bf16/fp16, where the
        flash varlen kernel runs them, padded rows elsewhere.

    Raises
    ------
    FileNotFoundError
        `model` is neither a local path nor a Hub name in the cache or reachable (see
        `scorers.models.locate`).
    ValueError
        The folder (or hub name) holds no loadable causal LM.

    Examples
    --------
    >>> lm = load_lm("models/smollm2-135m", device="cpu")  # doctest: +SKIP
    """
    import_torch(WHAT)
    import_extra("transformers", "lm", WHAT)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ref = locate(model)  # one line, at once, for a name that is neither local nor reachable
    p = Path(ref.source)
    if ref.local and p.is_file() and p.suffix == ".gguf":
        src, gguf_file = str(p.parent), p.name
    else:
        src = ref.source
    if gguf_file is not None and ref.local and not (Path(src) / gguf_file).is_file():
        raise FileNotFoundError(f"GGUF file not found: {Path(src) / gguf_file}")

    device = pick_device(device, WHAT)
    tdtype = _resolve_dtype(dtype, device)
    extra = {"gguf_file": gguf_file} if gguf_file else {}
    extra["local_files_only"] = ref.offline
    try:
        tokenizer = AutoTokenizer.from_pretrained(src, **extra)
        net = AutoModelForCausalLM.from_pretrained(src, dtype=tdtype, **extra)
    except ImportError as e:
        hint = " (GGUF files need `pip install gguf`)" if gguf_file else ""
        raise ImportError(f"cannot load {model}: {e}{hint}") from e
    except (OSError, ValueError, KeyError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ValueError(f"cannot load a causal LM from {src}: {first}") from e
    net.to(device).eval().requires_grad_(False)
    fuse_gelu(net)
    quiet_padding_warning()
    lm = LM(
        model=net,
        tokenizer=tokenizer,
        device=device,
        dtype=tdtype,
        max_tokens=int(max_tokens or _max_positions(net, tokenizer)),
        packed=_packs_by_default(device, tdtype) if packed is None else packed,
    )
    lm.prefix_id  # noqa: B018 - fail at load time, not mid-run, when there is no BOS/EOS
    return lm


class _RightPaddingIsSafe(logging.Filter):
    """transformers warns that padded input ids need an attention mask. Ours are padded on the
    right of every scored token, which a causal model never lets it see (tested: scores equal
    those of each text alone), so the warning would only alarm a user for nothing."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "passing in an `attention_mask`" not in record.getMessage()


def quiet_padding_warning() -> None:
    hf_log = logging.getLogger("transformers.modeling_utils")
    if not any(isinstance(f, _RightPaddingIsSafe) for f in hf_log.filters):
        hf_log.addFilter(_RightPaddingIsSafe())


def fuse_gelu(net) -> None:
    """Swap transformers' GELU-tanh written as eight tensor ops (``gelu_new``, GPT-2 and
    kin) for torch's fused kernel of the same formula: a quarter of a small model's CPU time."""
    import torch
    from transformers.activations import NewGELUActivation

    for module in list(net.modules()):
        for name, child in module.named_children():
            if type(child) is NewGELUActivation:
                setattr(module, name, torch.nn.GELU(approximate="tanh"))


def _tokenize(lm: LM, texts: list[str]) -> list[list[int]]:
    if not texts:
        return []
    enc = lm.tokenizer(
        list(texts), add_special_tokens=False, return_attention_mask=False, verbose=False
    )
    return enc["input_ids"]


def _windows(n: int, first: int, ctx: int, stride: int) -> list[tuple[int, int, int]]:
    """Windows ``(start, end, n_scored)`` over a sequence of `n` ids whose targets are
    positions ``first..n-1``; the scored targets are the last `n_scored` of each window."""
    if first >= n:
        return []
    if n <= ctx:
        return [(0, n, n - first)]
    end = min(n, max(ctx, first + stride))
    out = [(max(0, end - ctx), end, end - first)]
    while end < n:
        new = min(n, end + stride)
        out.append((new - ctx, new, new - end))
        end = new
    return out


def _round_up(x: int, m: int = _PAD_MULTIPLE) -> int:
    return -(-x // m) * m


class _Plan:
    """Sliding windows of all sequences (documents `offset`, `offset + 1`, ...), sorted longest
    first for padded rows; in document order for packed rows, which any order fills alike."""

    def __init__(
        self,
        seqs: list[np.ndarray],
        first: np.ndarray,
        ctx: int,
        stride: int,
        *,
        packed: bool = False,
        offset: int = 0,
    ):
        seg = [
            (d, a, b, k)
            for d, s in enumerate(seqs)
            for (a, b, k) in _windows(len(s), int(first[d]), ctx, stride)
        ]
        arr = np.array(seg, dtype=np.int64).reshape(-1, 4)
        if not packed:
            arr = arr[np.argsort(-(arr[:, 2] - arr[:, 1]), kind="stable")]
        self.seqs, self.ctx, self.packed, self.offset = seqs, ctx, packed, offset
        self.doc, self.start, self.end, self.n_scored = arr.T
        self.length = self.end - self.start
        self.cum = np.concatenate([[0], np.cumsum(self.length)])

    def __len__(self) -> int:
        return len(self.doc)

    def cost(self, lo: int, hi: int) -> int:
        """Tokens that windows lo..hi-1 put through the model (padding included)."""
        if self.packed:
            return int(self.cum[hi] - self.cum[lo])
        return (hi - lo) * _round_up(int(self.length[lo]))

    def stop(self, lo: int, budget: int) -> int:
        """End of the batch that starts at window `lo` and costs at most `budget` tokens (one
        window at least, whatever its length)."""
        if self.packed:
            hi = int(np.searchsorted(self.cum, self.cum[lo] + budget, side="right")) - 1
        else:
            hi = lo + budget // _round_up(int(self.length[lo]))
        return min(len(self), max(lo + 1, hi))

    def batch(self, lo: int, hi: int, pad_id: int) -> dict[str, np.ndarray]:
        """Model inputs for windows lo..hi-1 (`ids`, `pos`, and for packed rows `cu`, `max_len`),
        the flat positions whose next token is scored, those targets, and their documents."""
        lens = self.length[lo:hi]
        n = self.n_scored[lo:hi]
        if self.packed:
            # one row: the windows back to back, positions restarting at 0 in each
            starts = self.cum[lo:hi] - self.cum[lo]
            ids = np.concatenate(
                [self.seqs[self.doc[i]][self.start[i] : self.end[i]] for i in range(lo, hi)]
            )[None]
            pos = (np.arange(ids.shape[1], dtype=np.int64) - np.repeat(starts, lens))[None]
            out = {
                "cu": np.append(starts, starts[-1] + lens[-1]).astype(np.int32),
                "max_len": np.int64(lens.max()),
            }
        else:
            # padded to a multiple of 8, but never past the context (windows never are; a
            # learned position embedding has no row beyond it)
            rows, width = hi - lo, min(_round_up(int(lens.max())), self.ctx)
            ids = np.full((rows, width), pad_id, dtype=np.int64)
            for r in range(rows):
                i = lo + r
                ids[r, : lens[r]] = self.seqs[self.doc[i]][self.start[i] : self.end[i]]
            # positions run on through the padding: transformers reads a restart as a second
            # sequence packed in the row and then builds an explicit mask, where none (a plain
            # causal kernel) gives the same scores ~2x faster on long rows
            pos = np.tile(np.arange(width, dtype=np.int64), (rows, 1))
            starts = np.arange(rows, dtype=np.int64) * width
            out = {}
        total = int(n.sum())
        offs = np.arange(total, dtype=np.int64) - np.repeat(np.cumsum(n) - n, n)
        flat = np.repeat(starts + lens - n - 1, n) + offs  # position whose output predicts +1
        return {
            **out,
            "ids": ids,
            "pos": pos,
            "flat": flat,
            "target": ids.reshape(-1)[flat + 1],
            "doc": np.repeat(self.doc[lo:hi] + self.offset, n),
        }


def _head_parts(model):
    """(body, head, transform) so that transform(head(body(...))) are the logits; transform is
    None when the logits need none (no scale, no soft cap). Falls back to the full model
    (body and head None) when the head cannot be split off."""
    head = model.get_output_embeddings()
    body = getattr(model, "base_model", None)
    if head is None or body is None or body is model:
        return None, None, None
    cfg = model.config
    cfg = getattr(cfg, "get_text_config", lambda: cfg)()
    cap = getattr(cfg, "final_logit_softcapping", None)
    scale = getattr(cfg, "logit_scale", None)  # Cohere
    if scale is None and not cap:
        return body, head, None

    def transform(logits):
        if scale is not None:
            logits = logits * scale
        if cap:
            logits = (logits / cap).tanh() * cap
        return logits

    return body, head, transform


def _score_batch(lm: LM, b: dict[str, np.ndarray], totals) -> None:
    """Forward one batch and add its per-document negative log-likelihoods to `totals`."""
    import torch

    dev = torch.device(lm.device)
    cuda = dev.type == "cuda"

    def put(a: np.ndarray):
        t = torch.from_numpy(a)
        return t.pin_memory().to(dev, non_blocking=True) if cuda else t

    ids, pos, flat, target, doc = (put(b[k]) for k in ("ids", "pos", "flat", "target", "doc"))
    # packed rows: transformers' varlen kwargs, read by scorers.varlen's attention
    seqs = {"cu_seq_lens_q": put(b["cu"]), "max_length_q": int(b["max_len"])} if "cu" in b else {}
    body, head, transform = _head_parts(lm.model)
    if body is not None:
        h = body(input_ids=ids, position_ids=pos, use_cache=False, **seqs).last_hidden_state
    else:
        h = lm.model(input_ids=ids, position_ids=pos, use_cache=False, **seqs).logits
    h = h.reshape(-1, h.shape[-1])
    if body is not None and not cuda and isinstance(head, torch.nn.Linear):
        nll = _nll_vocab_blocked(h.index_select(0, flat), target, head, transform)
        totals.index_add_(0, doc, nll.to(totals.dtype))
        return
    vocab = head.out_features if body is not None else h.shape[-1]
    chunk = max(1, _LOGIT_CHUNK.get(dev.type, 1 << 25) // vocab)
    parts = []
    for c in range(0, flat.shape[0], chunk):
        x = h.index_select(0, flat[c : c + chunk])
        logits = (_apply(transform, head(x)) if body is not None else x).float()
        tgt = logits.gather(1, target[c : c + chunk, None]).squeeze(1)
        parts.append(torch.logsumexp(logits, dim=-1) - tgt)
    nll = torch.cat(parts).to(totals.dtype)
    totals.index_add_(0, doc, nll)


def _apply(transform, logits):
    return logits if transform is None else transform(logits)


def _nll_vocab_blocked(x, target, head, transform):
    """Negative log-likelihood of `target` given hidden states `x` (n, d), with the LM head
    applied one block of the vocabulary at a time (outer loop) over chunks of tokens (inner):
    the weight block and the logits chunk stay in cache, where full-vocabulary logits for a
    batch would stream hundreds of MB through memory.

    The target's logit is one dot product per token, and the matmul itself subtracts it
    (addmm), so NLL = log sum exp(z - z_target) takes two passes over each block (exp2, sum)
    where a log-sum-exp takes five. A term overflows only if a logit exceeds the target's by
    more than ~88 nats; such rows are redone by `_nll_logsumexp`, as are models whose logits
    are transformed (scaled, soft-capped) or not fp32."""
    import torch

    weight, bias = head.weight, head.bias
    tgt = (x * weight[target]).sum(-1)
    if bias is not None:
        tgt = tgt + bias[target]
    if transform is not None or x.dtype != torch.float32:
        return _nll_logsumexp(x, tgt, weight, bias, transform)
    n, vocab = x.shape[0], weight.shape[0]
    total = torch.zeros(n, dtype=torch.float32, device=x.device)
    # in base 2: torch's exp2 kernel is ~3x faster than its exp on the CPU
    x2, shift = x * _LOG2E, (tgt * -_LOG2E)[:, None]
    bias2 = None if bias is None else bias * _LOG2E
    buf = torch.empty(_TOKEN_CHUNK * _VOCAB_BLOCK, dtype=x.dtype, device=x.device)
    for v in range(0, vocab, _VOCAB_BLOCK):
        wt = weight[v : v + _VOCAB_BLOCK].T
        for t in range(0, n, _TOKEN_CHUNK):
            s = shift[t : t + _TOKEN_CHUNK]
            z = buf[: s.shape[0] * wt.shape[1]].view(s.shape[0], wt.shape[1])
            if bias2 is not None:
                s = s + bias2[v : v + _VOCAB_BLOCK]
            torch.addmm(s, x2[t : t + _TOKEN_CHUNK], wt, out=z)
            total[t : t + _TOKEN_CHUNK] += z.exp2_().sum(-1)
    nll = total.log()
    bad = (~torch.isfinite(nll)).nonzero().squeeze(1)
    if len(bad):
        nll[bad] = _nll_logsumexp(x[bad], tgt[bad], weight, bias, transform)
    return nll


def _nll_logsumexp(x, tgt, weight, bias, transform):
    """`_nll_vocab_blocked` by a max-shifted log-sum-exp per block: safe for any logits."""
    import torch

    n, vocab = x.shape[0], weight.shape[0]
    lse = torch.full((n,), -math.inf, dtype=torch.float32, device=x.device)
    for v in range(0, vocab, _VOCAB_BLOCK):
        w = weight[v : v + _VOCAB_BLOCK]
        b = None if bias is None else bias[v : v + _VOCAB_BLOCK]
        for t in range(0, n, _TOKEN_CHUNK):
            z = torch.nn.functional.linear(x[t : t + _TOKEN_CHUNK], w, b)
            part = lse[t : t + _TOKEN_CHUNK]
            torch.logaddexp(part, torch.logsumexp(_apply(transform, z).float(), dim=-1), out=part)
    return lse - _apply(transform, tgt).float()


def _default_batch_tokens(lm: LM) -> int:
    import torch

    return _BATCH_TOKENS.get(torch.device(lm.device).type, 16384)


def _run(
    lm: LM,
    n_docs: int,
    pieces: Iterable[tuple[int, list[np.ndarray], np.ndarray]],
    *,
    batch_tokens: int | None,
    max_tokens: int | None,
    stride: int | None,
) -> tuple[np.ndarray, np.ndarray]:
    """Summed NLL and scored-token count of documents 0..n_docs-1, given as `pieces`
    ``(offset, seqs, first)`` in order: ids of documents offset.. and their first scored
    position."""
    import torch

    dev = torch.device(lm.device)
    if batch_tokens is None:
        batch_tokens = _default_batch_tokens(lm)
    ctx = int(max_tokens or lm.max_tokens)
    stride = int(stride or ctx // 2)
    if ctx < 2:
        raise ValueError(f"max_tokens must be >= 2, got {ctx}")
    if not 1 <= stride < ctx:
        raise ValueError(f"stride must be in [1, max_tokens - 1] = [1, {ctx - 1}], got {stride}")
    if batch_tokens < 1:
        raise ValueError(f"batch_tokens must be >= 1, got {batch_tokens}")
    acc = torch.float32 if dev.type == "mps" else torch.float64
    totals = torch.zeros(n_docs, dtype=acc, device=dev)
    n_tok = np.zeros(n_docs, dtype=np.int64)
    tok = lm.tokenizer
    ids = (getattr(tok, "pad_token_id", None), getattr(tok, "eos_token_id", None))
    pad_id = next((t for t in ids if t is not None), 0)
    budget = int(batch_tokens)
    with torch.inference_mode():
        for offset, seqs, first in pieces:
            plan = _Plan(seqs, first, ctx, stride, packed=lm.packed, offset=offset)
            n = np.bincount(plan.doc, weights=plan.n_scored, minlength=len(seqs))
            n_tok[offset : offset + len(seqs)] = n
            budget = _run_plan(lm, plan, totals, budget, pad_id, n_docs)
    return totals.cpu().numpy().astype(np.float64), n_tok


def _run_plan(lm: LM, plan: _Plan, totals, budget: int, pad_id: int, n_docs: int) -> int:
    """Score every window of `plan` into `totals`; return the batch budget, halved on each
    out-of-memory error."""
    import torch

    share = plan.cum[1:] / max(1, int(plan.cum[-1]))  # of the piece's work, after each window
    lo = 0
    while lo < len(plan):
        hi = plan.stop(lo, budget)
        try:
            _score_batch(lm, plan.batch(lo, hi, pad_id), totals)
        except torch.OutOfMemoryError:
            if hi - lo == 1:
                raise
            budget = max(1, plan.cost(lo, hi) // 2)
            log.warning("out of memory at %d windows; batch budget now %d tokens", hi - lo, budget)
            if torch.device(lm.device).type == "cuda":
                torch.cuda.empty_cache()
            continue
        done = (plan.offset + len(plan.seqs) * float(share[hi - 1])) / max(1, n_docs)
        batch_done(done, int(plan.n_scored[lo:hi].sum()))
        lo = hi
    return budget


def _pieces(lm: LM, items: Sequence, sizes: np.ndarray, encode: Callable, budget: int | None):
    """``(offset, *encode(items[offset:end]))`` over `items`: all at once for padded rows (one
    length-sorted plan); for packed rows in pieces of ~16 batches (`sizes` in characters, ~4 a
    token), each encoded in a background thread while the device scores the one before."""
    if not lm.packed:
        return [(0, *encode(items))]
    per_piece = _PIECE_BATCHES * 4 * (budget or _default_batch_tokens(lm))
    cum = np.cumsum(sizes)
    cuts = np.searchsorted(cum, np.arange(per_piece, cum[-1] if len(cum) else 0, per_piece)) + 1
    bounds = np.unique(np.concatenate([[0], cuts, [len(items)]]))
    return _prefetch(
        (lo, *encode(items[lo:hi])) for lo, hi in zip(bounds[:-1], bounds[1:], strict=True)
    )


def _prefetch(gen: Iterator) -> Iterator:
    """Items of `gen`, the next one computed in a thread while the caller uses the current one
    (tokenizers' Rust encoder releases the GIL, and so do torch's kernels)."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        ahead = pool.submit(next, gen, None)
        while (item := ahead.result()) is not None:
            ahead = pool.submit(next, gen, None)
            yield item


def score_ids(
    lm: LM,
    seqs: list[np.ndarray],
    first: np.ndarray | None = None,
    *,
    batch_tokens: int | None = None,
    max_tokens: int | None = None,
    stride: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Negative log-likelihood of token-id sequences (`score_bpb` after tokenisation).

    Parameters
    ----------
    seqs
        Token ids of each sequence, prefix (BOS) included.
    first
        Index of each sequence's first scored token (default 1: all but the prefix).
    batch_tokens, max_tokens, stride
        As in `score_bpb`.

    Returns
    -------
    nll : ndarray of float64
        Summed negative log-likelihood (nats) of tokens ``first..`` of each sequence.
    n_tokens : ndarray of int64
        Number of scored tokens.
    """
    seqs = [np.asarray(s, dtype=np.int64) for s in seqs]
    first = np.ones(len(seqs), dtype=np.int64) if first is None else np.asarray(first, np.int64)
    sizes = np.array([4 * len(s) for s in seqs], dtype=np.int64)
    pieces = _pieces(
        lm, range(len(seqs)), sizes, lambda r: ([seqs[i] for i in r], first[r]), batch_tokens
    )
    return _run(
        lm, len(seqs), pieces, batch_tokens=batch_tokens, max_tokens=max_tokens, stride=stride
    )


def score_bpb(
    lm: LM,
    texts: list[str],
    *,
    batch_tokens: int | None = None,
    max_tokens: int | None = None,
    stride: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Negative log-likelihood of each text under `lm`, batched.

    Each text is tokenised without special tokens and prefixed with BOS (EOS when the
    tokenizer has no BOS, as GPT-2), so every text token is scored, the first one conditioned
    on BOS alone. Texts longer than `max_tokens` are scored with sliding windows.

    Parameters
    ----------
    lm
        From `load_lm`.
    texts
        Documents.
    batch_tokens
        Tokens per forward pass, padding included (halved on out-of-memory); default
        16384 on CUDA, 2048 on CPU.
    max_tokens
        Context length of a window (default ``lm.max_tokens``).
    stride
        Tokens scored per window after the first (default ``max_tokens // 2``); every token
        sees at least ``max_tokens - stride`` tokens of context where the text has them.

    Returns
    -------
    nll : ndarray of float64, shape (n,)
        Summed negative log-likelihood in nats of each text's tokens.
    n_tokens : ndarray of int64, shape (n,)
        Number of scored tokens (= the text's token count).

    Examples
    --------
    >>> nll, n = score_bpb(lm, ["Hello world."])  # doctest: +SKIP
    >>> bits_per_byte(["Hello world."], nll)  # doctest: +SKIP
    """
    pre = np.array([lm.prefix_id], dtype=np.int64)

    def encode(part: list[str]):
        seqs = [np.concatenate([pre, np.asarray(t, dtype=np.int64)]) for t in _tokenize(lm, part)]
        return seqs, np.ones(len(seqs), dtype=np.int64)

    sizes = np.array([len(t) for t in texts], dtype=np.int64)
    pieces = _pieces(lm, list(texts), sizes, encode, batch_tokens)
    return _run(
        lm, len(texts), pieces, batch_tokens=batch_tokens, max_tokens=max_tokens, stride=stride
    )


def bits_per_byte(texts: list[str], nll: np.ndarray) -> np.ndarray:
    """Bits per UTF-8 byte from summed nats: ``nll / (bytes * ln 2)``; NaN for empty texts."""
    nbytes = np.array([len(t.encode("utf-8")) for t in texts], dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.asarray(nll, dtype=np.float64) / (nbytes * math.log(2))
    return np.where(nbytes > 0, out, np.nan)


def score_conditional(
    lm: LM,
    prompts: list[str],
    responses: list[str],
    *,
    batch_tokens: int | None = None,
    max_tokens: int | None = None,
    stride: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Log-probability of each response given its prompt, batched (GRAPE picking).

    The sequence is ``[BOS] + ids(prompt) + ids(response)``, with prompt and response
    tokenised separately and the ids concatenated, so the scored tokens are exactly the
    response's own tokenisation whatever the prompt ends with (put any separator, e.g. a
    newline or a chat template's assistant header, at the end of the prompt). Prompt tokens
    are context only. Each distinct prompt string is tokenised once, so many candidates per
    prompt cost one prompt tokenisation; all (prompt, response) pairs are packed into
    length-sorted batches together. Sequences longer than `max_tokens` use sliding windows
    as in `score_bpb`.

    Returns
    -------
    logprob : ndarray of float64, shape (n,)
        Summed log-probability (nats, <= 0) of the response tokens.
    n_tokens : ndarray of int64, shape (n,)
        Number of response tokens.
    """
    if len(prompts) != len(responses):
        raise ValueError(
            f"prompts and responses differ in length: {len(prompts)} != {len(responses)}"
        )
    pre = np.array([lm.prefix_id], dtype=np.int64)

    def encode(pairs: list[tuple[str, str]]):
        uniq: dict[str, int] = {}
        p_index = [uniq.setdefault(p, len(uniq)) for p, _ in pairs]
        p_ids = [np.asarray(t, dtype=np.int64) for t in _tokenize(lm, list(uniq))]
        r_ids = _tokenize(lm, [r for _, r in pairs])
        seqs = [
            np.concatenate([pre, p_ids[p], np.asarray(r, dtype=np.int64)])
            for p, r in zip(p_index, r_ids, strict=True)
        ]
        return seqs, np.array([1 + len(p_ids[p]) for p in p_index], dtype=np.int64)

    pairs = list(zip(prompts, responses, strict=True))
    sizes = np.array([len(p) + len(r) for p, r in pairs], dtype=np.int64)
    pieces = _pieces(lm, pairs, sizes, encode, batch_tokens)
    nll, n = _run(
        lm, len(pairs), pieces, batch_tokens=batch_tokens, max_tokens=max_tokens, stride=stride
    )
    return -nll, n
