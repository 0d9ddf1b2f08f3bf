"""Decoder-only transformer (GPT-2 and the Llama family) from one `ModelConfig`.

Pre-norm blocks: x + attn(norm(x)), then x + mlp(norm(x)); a final norm and an output
head (tied to the embedding or not). Parameter names are giraffe's own
(`layers.0.attn.q_proj.weight`, ...); the mapping to Hugging Face and GGUF names lives
in `giraffe.formats.names` alone.

`forward(ids, targets=None)` returns logits (B, T, V), or the mean cross-entropy when
targets (aligned with ids: targets[t] is the token after ids[t], -100 = ignore) are given.
Generation uses `hidden` + `head` to skip the vocabulary projection where it is not needed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from giraffe.config import ModelConfig
from giraffe.models.common import embedding as _embedding
from giraffe.models.common import init_weights as _init_weights
from giraffe.nn import MLP, Attention, KVCache, Rotary, build_mask, make_norm


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.attn_norm = make_norm(cfg.norm, cfg.hidden_size, cfg.norm_eps, cfg.norm_bias)
        self.attn = Attention(
            cfg.hidden_size,
            cfg.n_heads,
            cfg.kv_heads,
            cfg.dim_per_head,
            cfg.attention_bias,
            cfg.attention_out_bias,
        )
        self.mlp_norm = make_norm(cfg.norm, cfg.hidden_size, cfg.norm_eps, cfg.norm_bias)
        self.mlp = MLP(
            cfg.hidden_size, cfg.intermediate_size, cfg.mlp, cfg.activation, cfg.mlp_bias
        )

    def forward(self, x, rope, mask, causal, cache, layer, keep_weights=None):
        x = x + self.attn(self.attn_norm(x), rope, mask, causal, cache, layer, keep_weights)
        return x + self.mlp(self.mlp_norm(x))


class Decoder(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.config = cfg
        self.embed = _embedding(cfg.vocab_size, cfg.hidden_size)
        if cfg.position == "learned":
            self.pos_embed = _embedding(cfg.max_position_embeddings, cfg.hidden_size)
        else:
            self.rotary = Rotary(cfg.dim_per_head, cfg.rope_theta, cfg.rope_scaling_dict)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = make_norm(cfg.norm, cfg.hidden_size, cfg.norm_eps, cfg.norm_bias)
        self.lm_head = (
            None if cfg.tie_embeddings else nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        )
        # Optional compiled one-token step (giraffe.quant.decode_step); set by packed loaders.
        self.fast_decode = None
        if not self.embed.weight.is_meta:  # built on "meta" only to receive loaded weights
            self.apply(_init_weights)

    def forward(self, ids: torch.Tensor, targets: torch.Tensor | None = None, **kw) -> torch.Tensor:
        logits = self.head(self.hidden(ids, **kw))  # (B, T, V)
        if targets is None:
            return logits
        return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=-100)

    def hidden(
        self,
        ids: torch.Tensor,
        *,
        cache: KVCache | None = None,
        positions: torch.Tensor | None = None,
        key_mask: torch.Tensor | None = None,
        attention_weights: list | None = None,
        attn_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Final-norm hidden states (B, T, C).

        positions: (B, T) position ids; default = cache slots (no padding).
        key_mask: (B, S) bool over cache slots, False at left padding.
        attn_mask: (B, 1, T, S) bool, replaces the mask built here (callers whose rows
        have different cache lengths, e.g. `giraffe.nn.slot_cache.BatchView`).
        attention_weights: pass a list to receive each layer's (B, H, T, S) weights
        (switches to the reference attention path; costs nothing when None).
        """
        fast = self.fast_decode
        if (
            fast is not None
            and cache is not None
            and key_mask is None
            and attention_weights is None
            # a cache that places each row's token itself (BatchView.slots) implies its mask
            and (attn_mask is None or hasattr(cache, "slots"))
        ):
            h = fast(self, ids, cache, positions)  # None when it cannot take this call
            if h is not None:
                return h
        B, T = ids.shape
        start = cache.length if cache is not None else 0
        if positions is None:
            positions = torch.arange(start, start + T).expand(B, T)  # (B, T)
        x = self.embed(ids)  # (B, T, C)
        rope = None
        if self.config.position == "learned":
            x = x + self.pos_embed(positions)
        else:
            rope = self.rotary(positions)
        mask, causal = (
            (attn_mask, False) if attn_mask is not None else self._mask(start, T, key_mask)
        )
        for i, layer in enumerate(self.layers):
            x = layer(x, rope, mask, causal, cache, i, attention_weights)
        if cache is not None:
            cache.advance(T)
        return self.norm(x)

    def head(self, h: torch.Tensor) -> torch.Tensor:
        if self.lm_head is not None:
            return self.lm_head(h)  # (B, T, V)
        # Tied: a packed embedding multiplies from its own blocks (see giraffe.quant.linear).
        project = getattr(self.embed, "project", None)
        return project(h) if project is not None else F.linear(h, self.embed.weight)

    def _mask(self, start: int, T: int, key_mask: torch.Tensor | None):
        window = self.config.sliding_window
        if window is not None and start + T <= window:
            window = None  # the window cannot bite yet: keep the fast unmasked path
        if key_mask is None and window is None:
            if start == 0:
                return None, True  # plain causal prefill
            if T == 1:
                return None, False  # one new query sees every cached key
        return build_mask(start, T, start + T, key_mask, window), False

    def reset_buffers(self) -> None:
        """Recompute non-learned buffers (RoPE tables), e.g. after building on the meta device."""
        cfg = self.config
        if cfg.position == "rope":
            self.rotary = Rotary(cfg.dim_per_head, cfg.rope_theta, cfg.rope_scaling_dict)

    def new_cache(self, batch: int, max_len: int) -> KVCache:
        cfg = self.config
        dtype = self.norm.weight.dtype  # the embedding may be packed bytes
        return KVCache(cfg.n_layers, batch, cfg.kv_heads, max_len, cfg.dim_per_head, dtype)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
