"""Perplexity and bits per byte of a model on a text, scored the way llama.cpp's tool does.

The token stream is cut into consecutive windows of `ctx` tokens; in each window only
the second half is scored, so every scored token sees at least ctx/2 tokens of context
(llama.cpp `perplexity`: same chunks, same halves, so the two numbers compare).
perplexity = exp(mean negative log-likelihood); bits per byte = total NLL / ln 2 /
UTF-8 bytes of the scored text, which compares models with different tokenizers.
It does not know how the model stores its weights.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class PerplexityResult:
    perplexity: float
    nll_per_token: float  # nats
    bits_per_byte: float
    tokens_scored: int
    bytes_scored: int
    windows: int
    ctx: int


@torch.inference_mode()
def perplexity(
    model,
    ids: list[int],
    ctx: int = 512,
    decode: Callable[[list[int]], str] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> PerplexityResult:
    """model: ids (1, T) -> logits (1, T, V). decode turns scored ids back into text for bytes."""
    windows, first = count_windows(len(ids), ctx), ctx // 2
    total_nll, scored, n_bytes = 0.0, 0, 0
    for w in range(windows):
        chunk = torch.tensor([ids[w * ctx : (w + 1) * ctx]])  # (1, ctx)
        logits = model(chunk)[0].float()  # (ctx, V)
        targets = chunk[0, first:]  # tokens first..ctx-1, each predicted from the one before
        nll = F.cross_entropy(logits[first - 1 : -1], targets, reduction="sum")
        total_nll += nll.item()
        scored += targets.numel()
        if decode is not None:
            n_bytes += len(decode(targets.tolist()).encode("utf-8"))
        if progress:
            progress(w + 1, windows)
    mean = total_nll / scored
    bpb = total_nll / math.log(2) / n_bytes if n_bytes else float("nan")
    return PerplexityResult(math.exp(mean), mean, bpb, scored, n_bytes, windows, ctx)


def count_windows(n_tokens: int, ctx: int) -> int:
    """Whole windows of `ctx` tokens in the text; ValueError when there is none."""
    if ctx < 4:
        raise ValueError(f"ctx={ctx} is too small: use at least 4 tokens per window")
    if n_tokens < ctx:
        raise ValueError(
            f"the text has {n_tokens} tokens, fewer than one window of ctx={ctx}: give a "
            f"longer text or a window of at most {n_tokens} tokens (--ctx)"
        )
    return n_tokens // ctx
