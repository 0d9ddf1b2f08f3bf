"""Encoder-only transformer (BERT, MiniLM) from one `ModelConfig`.

BERT's wiring (Devlin et al. 2019, arXiv:1810.04805): word + learned position +
token-type embeddings summed and normalised, then post-norm blocks
x = norm(x + attn(x)), x = norm(x + mlp(x)) whose attention looks both ways and hides
only padding keys. An optional masked-LM head (dense -> GELU -> LayerNorm -> the word
embedding matrix, tied, + a bias) turns hidden states into vocabulary scores for
pretraining; checkpoints made for sentence embeddings (MiniLM) carry none.

Parameter names follow the decoder's (`layers.0.attn.q_proj.weight`, `attn_norm`,
`mlp_norm`; here the norms come *after* their sub-layer); Hugging Face names live in
`giraffe.formats.names` alone.

`forward(ids, targets=None)` returns MLM logits (B, T, V), or the mean cross-entropy
when targets are given (aligned with ids: the original token where one was masked,
-100 elsewhere). `hidden` returns the last layer's states, what sentence embeddings pool.
This module does not know tokenizers, pooling (`giraffe.embedder`), files
(`giraffe.formats`) or how tokens get masked for training.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from giraffe.config import ConfigError, ModelConfig
from giraffe.models.common import embedding as _embedding
from giraffe.models.common import init_weights as _init_weights  # BERT's N(0, 0.02)
from giraffe.nn import MLP, Attention, make_norm
from giraffe.nn.bidirectional import padding_mask
from giraffe.nn.mlp import ACTIVATIONS


class EncoderBlock(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        C = cfg.hidden_size
        self.attn = Attention(
            C,
            cfg.n_heads,
            cfg.n_heads,
            cfg.dim_per_head,
            cfg.attention_bias,
            cfg.attention_out_bias,
        )
        self.attn_norm = make_norm(cfg.norm, C, cfg.norm_eps, cfg.norm_bias)
        self.mlp = MLP(C, cfg.intermediate_size, cfg.mlp, cfg.activation, cfg.mlp_bias)
        self.mlp_norm = make_norm(cfg.norm, C, cfg.norm_eps, cfg.norm_bias)

    def forward(self, x, mask, keep_weights=None):
        # Post-norm (Vaswani et al. 2017, as BERT): normalise the sum, not the branch input.
        attended = self.attn(x, None, mask, False, keep_weights=keep_weights)
        x = self.attn_norm(x + attended)
        return self.mlp_norm(x + self.mlp(x))


class MLMHead(nn.Module):
    """BERT's prediction head: transform, then score against the (tied) word embeddings."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        C = cfg.hidden_size
        self.dense = nn.Linear(C, C)
        self.activation = cfg.activation
        self.norm = make_norm(cfg.norm, C, cfg.norm_eps, cfg.norm_bias)
        self.bias = nn.Parameter(torch.zeros(cfg.vocab_size))

    def forward(self, h: torch.Tensor, word_embeddings: torch.Tensor) -> torch.Tensor:
        h = self.norm(ACTIVATIONS[self.activation](self.dense(h)))  # (B, T, C)
        return F.linear(h, word_embeddings, self.bias)  # (B, T, V)


class Encoder(nn.Module):
    def __init__(self, cfg: ModelConfig, mlm_head: bool = True) -> None:
        super().__init__()
        if cfg.kind != "encoder":
            raise ConfigError(f"Encoder needs an encoder config; arch={cfg.arch!r} is a {cfg.kind}")
        self.config = cfg
        C = cfg.hidden_size
        self.embed = _embedding(cfg.vocab_size, C)
        self.pos_embed = _embedding(cfg.max_position_embeddings, C)
        self.type_embed = _embedding(cfg.type_vocab_size, C) if cfg.type_vocab_size else None
        self.embed_norm = make_norm(cfg.norm, C, cfg.norm_eps, cfg.norm_bias)
        self.layers = nn.ModuleList(EncoderBlock(cfg) for _ in range(cfg.n_layers))
        self.mlm_head = MLMHead(cfg) if mlm_head else None
        if not self.embed.weight.is_meta:  # built on "meta" only to receive loaded weights
            self.apply(_init_weights)

    def forward(
        self,
        ids: torch.Tensor,
        targets: torch.Tensor | None = None,
        *,
        key_mask: torch.Tensor | None = None,
        token_types: torch.Tensor | None = None,
    ) -> torch.Tensor:
        logits = self.head(self.hidden(ids, key_mask, token_types))  # (B, T, V)
        if targets is None:
            return logits
        return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=-100)

    def hidden(
        self,
        ids: torch.Tensor,
        key_mask: torch.Tensor | None = None,
        token_types: torch.Tensor | None = None,
        attention_weights: list | None = None,
    ) -> torch.Tensor:
        """Last-layer hidden states (B, T, C).

        ids: (B, T), padded on the right (positions count from the first slot).
        key_mask: (B, T) bool, False at padding; None = no padding.
        token_types: (B, T) segment ids (BERT's sentence A = 0 / B = 1); None = all 0.
        attention_weights: pass a list to receive each layer's (B, H, T, T) weights
        (switches to the reference attention path; costs nothing when None).
        """
        x = self.embed_tokens(ids, token_types)  # (B, T, C)
        mask = padding_mask(key_mask)  # (B, 1, 1, T) or None
        for layer in self.layers:
            x = layer(x, mask, attention_weights)
        return x

    def embed_tokens(self, ids: torch.Tensor, token_types: torch.Tensor | None) -> torch.Tensor:
        """Word + position + token-type embeddings, normalised: (B, T, C)."""
        T, limit = ids.shape[1], self.config.max_position_embeddings
        if T > limit:
            raise ValueError(f"{T} tokens exceed the encoder's {limit} positions; truncate them")
        x = self.embed(ids) + self.pos_embed.weight[:T]  # (B, T, C) + (T, C)
        if token_types is not None and self.type_embed is None:
            raise ValueError("token_types given, but this encoder has no token-type embedding")
        if self.type_embed is not None:
            # No types given means every token is segment 0, as in Hugging Face's BertModel.
            x = x + (
                self.type_embed.weight[0] if token_types is None else self.type_embed(token_types)
            )
        return self.embed_norm(x)

    def head(self, h: torch.Tensor) -> torch.Tensor:
        if self.mlm_head is None:
            raise ValueError(
                "this encoder has no masked-LM head (sentence-embedding checkpoints such as "
                "MiniLM ship none); call add_mlm_head() to start a fresh one"
            )
        return self.mlm_head(h, self.embed.weight)

    def add_mlm_head(self) -> MLMHead:
        """A freshly initialised MLM head (for pretraining further a checkpoint without one)."""
        self.mlm_head = MLMHead(self.config).to(self.embed.weight.device)
        self.mlm_head.apply(_init_weights)
        return self.mlm_head

    def reset_buffers(self) -> None:
        """Nothing to recompute: learned positions are weights (kept for the loaders' sake)."""

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
