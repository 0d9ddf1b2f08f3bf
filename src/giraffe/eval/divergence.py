"""How far a quantized model's predictions are from its float reference (llama.cpp's KLD).

Both models score the same llama.cpp-style windows as `perplexity` (second half of each
window of `ctx` tokens). Per scored position: KL(reference || model) of the next-token
distributions, whether both put the same token on top, and each model's negative
log-likelihood of the actual next token. Perplexity alone can hide damage (errors that
cancel on average); KL and top-1 agreement show how often and how much the quantized
model's choices differ. It does not know how either model stores its weights.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from giraffe.eval.perplexity import count_windows


@dataclass
class DivergenceResult:
    kl_mean: float  # nats, KL(reference || model) averaged over scored positions
    kl_p99: float  # the 99th percentile: the rare positions where the model goes astray
    top1_agreement: float  # fraction of positions where both models rank the same token first
    perplexity: float  # the model's
    reference_perplexity: float
    tokens_scored: int
    ctx: int


@torch.inference_mode()
def divergence(
    model,
    reference,
    ids: list[int],
    ctx: int = 512,
    progress: Callable[[int, int], None] | None = None,
) -> DivergenceResult:
    """model, reference: ids (1, T) -> logits (1, T, V) over the same vocabulary."""
    windows, first = count_windows(len(ids), ctx), ctx // 2
    kls, agree, nll, ref_nll = [], 0, 0.0, 0.0
    for w in range(windows):
        chunk = torch.tensor([ids[w * ctx : (w + 1) * ctx]])  # (1, ctx)
        targets = chunk[0, first:]
        logp = F.log_softmax(model(chunk)[0, first - 1 : -1].float(), dim=-1)  # (n, V)
        ref_logp = F.log_softmax(reference(chunk)[0, first - 1 : -1].float(), dim=-1)
        if logp.shape != ref_logp.shape:
            raise ValueError(
                f"the models disagree on the vocabulary ({logp.shape[-1]} vs "
                f"{ref_logp.shape[-1]} tokens): compare a model with its own float reference"
            )
        kls.append((ref_logp.exp() * (ref_logp - logp)).sum(dim=-1))  # (n,)
        agree += int((logp.argmax(-1) == ref_logp.argmax(-1)).sum())
        nll -= float(logp.gather(1, targets[:, None]).sum())
        ref_nll -= float(ref_logp.gather(1, targets[:, None]).sum())
        if progress:
            progress(w + 1, windows)
    kl = torch.cat(kls).clamp_min(0)  # rounding can make a near-zero KL slightly negative
    n = kl.numel()
    return DivergenceResult(
        kl_mean=float(kl.mean()),
        kl_p99=float(kl.quantile(0.99)),
        top1_agreement=agree / n,
        perplexity=math.exp(nll / n),
        reference_perplexity=math.exp(ref_nll / n),
        tokens_scored=n,
        ctx=ctx,
    )
