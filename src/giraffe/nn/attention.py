"""Multi-head / grouped-query self-attention with causal, padding and sliding-window masks.

`attend` is the fast path (torch's fused scaled_dot_product_attention); `attend_reference`
is the plain softmax(QK^T / sqrt(d)) V written out, which also returns the attention
weights for the explainers. Tests hold the two equal. A mask is boolean (True = may
attend) or a float tensor added to the scores (T5's relative position bias, with -inf
where attention is not allowed). Options some families add: a per-head RMSNorm on q and
k before RoPE (Qwen3, Gemma 3), a query scale other than 1/sqrt(d) (Gemma), and tanh
soft-capping of the scores (Gemma 2), which the fused kernel lacks, so capped attention
takes the written-out path. A model with packed weights may hand `forward` its layer's
packed kernels (`fast`: q/k/v in one product, compiled causal attention), used in place of
the projections and of torch's attention. This module does not know where positions come
from (it receives RoPE tables or a bias) or how a cache is laid out beyond `KVCache`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from giraffe.nn.kv_cache import KVCache
from giraffe.nn.norms import RMSNorm
from giraffe.nn.positions import apply_rotary


def build_mask(
    q_start: int, q_len: int, k_len: int, key_mask: torch.Tensor | None, window: int | None
) -> torch.Tensor:
    """Boolean (B|1, 1, T, S) mask, True = may attend, over cache slots.

    A query at slot s sees keys at slots <= s (causal), within `window` if set, and only
    keys whose `key_mask` is True (False marks left padding). Every query may always see
    itself, so a padding row is never all-masked (that would give NaN, not just garbage).
    """
    q_slots = torch.arange(q_start, q_start + q_len)[:, None]  # (T, 1)
    k_slots = torch.arange(k_len)[None, :]  # (1, S)
    allowed = k_slots <= q_slots
    if window is not None:
        allowed &= k_slots > q_slots - window
    allowed = allowed[None, None]  # (1, 1, T, S)
    if key_mask is not None:
        allowed = allowed & key_mask[:, None, None, :k_len]  # (B, 1, T, S)
    return allowed | (k_slots == q_slots)[None, None]


def attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None,
    causal: bool,
    scale: float | None = None,
    softcap: float | None = None,
) -> torch.Tensor:
    # q: (B, H, T, D); k, v: (B, H_kv, S, D); grouped-query heads share k/v (Ainslie et al. 2023)
    if softcap is not None:  # scaled_dot_product_attention has no soft-capping
        return attend_reference(q, k, v, mask, causal, scale, softcap)[0]
    if mask is not None and mask.dtype != torch.bool and mask.dtype != q.dtype:
        mask = mask.to(q.dtype)  # an additive bias must match q (e.g. under bf16 autocast)
    return F.scaled_dot_product_attention(
        q, k, v, attn_mask=mask, is_causal=causal and mask is None, scale=scale, enable_gqa=True
    )


def attend_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None,
    causal: bool,
    scale: float | None = None,
    softcap: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The textbook computation; returns (output (B,H,T,D), weights (B,H,T,S)).

    scale: multiplies q.k; None = 1/sqrt(D) (Vaswani et al. 2017). T5 uses 1.
    softcap: scores -> softcap * tanh(scores / softcap) before masking (Gemma 2).
    """
    groups = q.shape[1] // k.shape[1]
    k = k.repeat_interleave(groups, dim=1)  # (B, H, S, D)
    v = v.repeat_interleave(groups, dim=1)
    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    scores = q @ k.transpose(-2, -1) * scale  # (B, H, T, S)
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    if mask is None and causal:
        mask = build_mask(k.shape[2] - q.shape[2], q.shape[2], k.shape[2], None, None)
    if mask is not None and mask.dtype != torch.bool:
        scores = scores + mask  # an additive bias (-inf where not allowed)
    elif mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    weights = scores.softmax(dim=-1)
    return weights @ v, weights


class Attention(nn.Module):
    def __init__(
        self,
        dim: int,
        n_heads: int,
        kv_heads: int,
        head_dim: int,
        qkv_bias: bool,
        out_bias: bool,
        scale: float | None = None,  # None = 1/sqrt(head_dim); T5 uses 1 (folded into its init)
        qk_norm_eps: float | None = None,  # set: per-head RMSNorm on q and k before RoPE
        norm_offset: float = 0.0,  # the q/k norms' (offset + w), as the model's other norms
        softcap: float | None = None,  # tanh soft-capping of the scores (Gemma 2)
    ) -> None:
        super().__init__()
        self.n_heads, self.kv_heads, self.head_dim = n_heads, kv_heads, head_dim
        self.scale, self.softcap = scale, softcap
        if qk_norm_eps is not None:
            self.q_norm = RMSNorm(head_dim, qk_norm_eps, norm_offset)
            self.k_norm = RMSNorm(head_dim, qk_norm_eps, norm_offset)
        self.qk_norm = qk_norm_eps is not None
        self.q_proj = nn.Linear(dim, n_heads * head_dim, bias=qkv_bias)
        self.k_proj = nn.Linear(dim, kv_heads * head_dim, bias=qkv_bias)
        self.v_proj = nn.Linear(dim, kv_heads * head_dim, bias=qkv_bias)
        self.o_proj = nn.Linear(n_heads * head_dim, dim, bias=out_bias)

    def project_qkv(self, x: torch.Tensor, fast=None) -> tuple[torch.Tensor, ...]:
        if fast is not None and fast.qkv is not None:
            return fast.qkv(x)  # one packed product for all three
        return self.q_proj(x), self.k_proj(x), self.v_proj(x)

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor] | None,
        mask: torch.Tensor | None,
        causal: bool,
        cache: KVCache | None = None,
        layer: int = 0,
        keep_weights: list | None = None,
        fast=None,
    ) -> torch.Tensor:
        """fast: a layer's packed kernels (`.qkv(x)` -> (q, k, v) or None, `.attention(q, k,
        v, scale)` -> causal output or None; giraffe.quant.runtime.LayerKernels), handed
        in by a model with a packed runtime; None = this module's own projections."""
        B, T, _ = x.shape
        q, k, v = self.project_qkv(x, fast)
        q = q.view(B, T, self.n_heads, self.head_dim).transpose(1, 2)  # (B, H, T, D)
        k = k.view(B, T, self.kv_heads, self.head_dim).transpose(1, 2)  # (B, Hkv, T, D)
        v = v.view(B, T, self.kv_heads, self.head_dim).transpose(1, 2)
        if self.qk_norm:  # over each head's D values, before the rotation
            q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            q, k = apply_rotary(q, *rope), apply_rotary(k, *rope)
        if cache is not None:
            k, v = cache.write(layer, k, v)  # (B, Hkv, S, D), S = filled + T
        return self.combine(q, k, v, mask, causal, keep_weights, fast)

    def combine(self, q, k, v, mask, causal, keep_weights=None, fast=None) -> torch.Tensor:
        """Attention of q (B, H, T, D) over k, v (B, Hkv, S, D), heads joined, o_proj: (B, T, C)."""
        B, _, T, _ = q.shape
        out = None
        # mask None: a plain causal prompt, or one query that sees every cached key
        plain = mask is None and (causal or T == 1) and keep_weights is None
        plain = plain and self.softcap is None
        if plain and fast is not None and not torch.is_grad_enabled():
            scale = 1 / math.sqrt(q.shape[-1]) if self.scale is None else self.scale
            out = fast.attention(q, k, v, scale)  # the compiled kernel; None when it cannot
        if out is not None:
            pass
        elif keep_weights is None:
            out = attend(q, k, v, mask, causal, self.scale, self.softcap)
        else:
            out, weights = attend_reference(q, k, v, mask, causal, self.scale, self.softcap)
            keep_weights.append(weights)
        out = out.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim)  # (B, T, H*D)
        return self.o_proj(out)
