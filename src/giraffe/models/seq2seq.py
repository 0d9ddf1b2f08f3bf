"""Encoder-decoder transformer (T5; Raffel et al. 2020, arXiv:1910.10683) from one `ModelConfig`.

One token embedding shared by both halves. The encoder reads the whole input both
ways; the decoder reads its own tokens causally and, in every block, the encoder's
output through cross-attention. T5's wiring: pre-norm blocks with RMSNorm (no bias, no
mean), no biases anywhere, attention scores not divided by sqrt(d) (T5 folds that into
its initialisation), and no position embeddings: a learned relative position bias,
owned by each stack's first layer and shared by all its layers, is added to the
self-attention scores (`giraffe.nn.relative_position`). A tied output head scales the
final states by hidden_size**-0.5 first, as Mesh TensorFlow's T5 does.

Parameter names: `embed.weight`, `encoder.rel_bias.weight`,
`encoder.layers.0.attn.q_proj.weight`, `encoder.norm.weight`,
`decoder.layers.0.cross_attn.q_proj.weight`, `decoder.layers.0.cross_norm.weight`, ...,
`lm_head.weight` (untied only); Hugging Face names live in `giraffe.formats.names`.

`forward(encoder_ids, decoder_ids, targets=None)` returns logits (B, T, V) for the
decoder positions, or the mean cross-entropy when targets are given (aligned with
decoder_ids: targets[t] is the token after decoder_ids[t], -100 = ignore; build
decoder_ids with `shift_right`). This module knows neither tokenizers, files nor how
spans get corrupted for pretraining (`giraffe.train.objectives`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from giraffe.config import ConfigError, ModelConfig
from giraffe.models.common import embedding, init_weights
from giraffe.nn import MLP, Attention, make_norm
from giraffe.nn.bidirectional import padding_mask
from giraffe.nn.cross_attention import CrossAttention
from giraffe.nn.relative_position import RelativePositionBias


def shift_right(targets: torch.Tensor, start_id: int) -> torch.Tensor:
    """Decoder inputs for teacher forcing: (B, T) targets -> [start, targets[:-1]] per row.

    Ignored targets (-100) become `start_id` in the inputs: the model reads a real token
    there, and its prediction at that position is ignored anyway.
    """
    shifted = targets.new_full(targets.shape, start_id)  # (B, T)
    shifted[:, 1:] = targets[:, :-1]
    return shifted.masked_fill(shifted == -100, start_id)


def _attention(cfg: ModelConfig, cls=Attention) -> Attention:
    return cls(cfg.hidden_size, cfg.n_heads, cfg.n_heads, cfg.dim_per_head, False, False, 1.0)


class Seq2SeqBlock(nn.Module):
    """Pre-norm self-attention (+ cross-attention in the decoder), then a pre-norm MLP."""

    def __init__(self, cfg: ModelConfig, cross: bool) -> None:
        super().__init__()
        C = cfg.hidden_size
        self.attn_norm = make_norm(cfg.norm, C, cfg.norm_eps, False)
        self.attn = _attention(cfg)
        if cross:
            self.cross_norm = make_norm(cfg.norm, C, cfg.norm_eps, False)
            self.cross_attn = _attention(cfg, CrossAttention)
        self.mlp_norm = make_norm(cfg.norm, C, cfg.norm_eps, False)
        self.mlp = MLP(C, cfg.intermediate_size, cfg.mlp, cfg.activation, False)

    def forward(self, x, bias, memory=None, memory_mask=None, memory_kv=None, keep_weights=None):
        x = x + self.attn(self.attn_norm(x), None, bias, False, keep_weights=keep_weights)
        if memory is not None or memory_kv is not None:
            x = x + self.cross_attn(self.cross_norm(x), memory, memory_mask, memory_kv)
        return x + self.mlp(self.mlp_norm(x))


class Stack(nn.Module):
    """The encoder (bidirectional) or the decoder (causal, with cross-attention) half."""

    def __init__(self, cfg: ModelConfig, n_layers: int, causal: bool) -> None:
        super().__init__()
        self.causal = causal
        self.rel_bias = RelativePositionBias(
            cfg.n_heads, cfg.relative_buckets, cfg.relative_max_distance, bidirectional=not causal
        )
        self.layers = nn.ModuleList(Seq2SeqBlock(cfg, cross=causal) for _ in range(n_layers))
        self.norm = make_norm(cfg.norm, cfg.hidden_size, cfg.norm_eps, False)

    def forward(self, x, key_mask=None, memory=None, memory_mask=None, memory_kvs=None, kw=None):
        """x (B, T, C) embedded tokens -> final-norm hidden states (B, T, C)."""
        T = x.shape[1]
        bias = self.rel_bias(T, T)  # (1, H, T, T)
        if self.causal:
            future = torch.ones(T, T, dtype=torch.bool, device=x.device).triu(1)
            bias = bias.masked_fill(future, float("-inf"))
        if key_mask is not None:
            bias = bias.masked_fill(~padding_mask(key_mask), float("-inf"))  # (B, H, T, T)
        for i, layer in enumerate(self.layers):
            kv = memory_kvs[i] if memory_kvs is not None else None
            x = layer(x, bias, memory, memory_mask, kv, kw)
        return self.norm(x)


class Seq2Seq(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        if cfg.kind != "encoder-decoder":
            raise ConfigError(
                f"Seq2Seq needs an encoder-decoder config; arch={cfg.arch!r} is a {cfg.kind}"
            )
        self.config = cfg
        self.embed = embedding(cfg.vocab_size, cfg.hidden_size)
        self.encoder = Stack(cfg, cfg.n_layers, causal=False)
        self.decoder = Stack(cfg, cfg.decoder_layers, causal=True)
        self.lm_head = (
            None if cfg.tie_embeddings else nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        )
        if not self.embed.weight.is_meta:  # built on "meta" only to receive loaded weights
            self.apply(init_weights)
            for stack in (self.encoder, self.decoder):
                nn.init.normal_(stack.rel_bias.weight, std=0.02)

    def forward(
        self,
        encoder_ids: torch.Tensor,
        decoder_ids: torch.Tensor,
        targets: torch.Tensor | None = None,
        *,
        encoder_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """encoder_ids (B, S), decoder_ids (B, T) -> logits (B, T, V), or the loss.

        encoder_mask: (B, S) bool, False at the encoder's padding; None = no padding.
        """
        memory = self.encode(encoder_ids, encoder_mask)
        logits = self.head(self.decode(decoder_ids, memory, encoder_mask))  # (B, T, V)
        if targets is None:
            return logits
        return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=-100)

    def encode(
        self,
        ids: torch.Tensor,
        key_mask: torch.Tensor | None = None,
        attention_weights: list | None = None,
    ) -> torch.Tensor:
        """The encoder's final-norm hidden states (B, S, C) (what cross-attention reads).

        attention_weights: pass a list to receive each layer's (B, H, S, S) weights.
        """
        return self.encoder(self.embed(ids), key_mask, kw=attention_weights)

    def decode(
        self,
        ids: torch.Tensor,
        memory: torch.Tensor | None,
        memory_mask: torch.Tensor | None = None,
        *,
        memory_kvs: list | None = None,
        attention_weights: list | None = None,
    ) -> torch.Tensor:
        """The decoder's final-norm hidden states (B, T, C) for ids reading `memory` (B, S, C).

        memory_mask: (B, S) bool, False at the encoder's padding.
        memory_kvs: per layer, the cross-attention keys/values from `memory_keys_values`
        (to compute them once when decoding step by step); then memory may be None.
        attention_weights: pass a list to receive each layer's self-attention weights.
        """
        mask = padding_mask(memory_mask)  # (B, 1, 1, S) or None
        x = self.embed(ids)  # (B, T, C)
        return self.decoder(x, None, memory, mask, memory_kvs, attention_weights)

    def memory_keys_values(self, memory: torch.Tensor) -> list:
        """Every decoder layer's cross-attention (k, v) of the encoder output, computed once."""
        return [layer.cross_attn.memory_kv(memory) for layer in self.decoder.layers]

    def head(self, h: torch.Tensor) -> torch.Tensor:
        if self.lm_head is not None:
            return self.lm_head(h)  # (B, T, V)
        # Tied (T5 v1.0): rescale before reusing the embedding matrix (Mesh TensorFlow).
        return F.linear(h * self.config.hidden_size**-0.5, self.embed.weight)

    @torch.no_grad()
    def generate(
        self,
        encoder_ids: torch.Tensor,
        max_new_tokens: int,
        stop_id: int | None = None,
        encoder_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Greedy decoding: (B, S) inputs -> (B, n <= max_new_tokens) ids, start token left out.

        A plain loop that re-reads the whole decoder prefix each step (no self-attention
        cache; the encoder's keys/values are computed once). A row that produced
        `stop_id` is padded with it until every row has stopped.
        """
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
        memory = self.encode(encoder_ids, encoder_mask)
        kvs = self.memory_keys_values(memory)
        B = encoder_ids.shape[0]
        out = torch.full((B, 1), self.config.decoder_start_id, device=encoder_ids.device)
        done = torch.zeros(B, dtype=torch.bool, device=encoder_ids.device)
        for _ in range(max_new_tokens):
            h = self.decode(out, None, encoder_mask, memory_kvs=kvs)[:, -1:]  # (B, 1, C)
            nxt = self.head(h).argmax(-1)  # (B, 1)
            if stop_id is not None:
                nxt = nxt.masked_fill(done[:, None], stop_id)
                done |= nxt[:, 0] == stop_id
            out = torch.cat([out, nxt], dim=1)
            if done.all():
                break
        return out[:, 1:]

    def reset_buffers(self) -> None:
        """Nothing to recompute: relative position biases are weights (kept for the loaders)."""

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
