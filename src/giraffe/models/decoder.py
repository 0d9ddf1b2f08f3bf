"""Decoder-only transformer (GPT-2, the Llama family, Qwen3, Gemma 2/3, Phi-3, GPT-NeoX)
from one `ModelConfig`.

Pre-norm blocks: x + attn(norm(x)), then x + mlp(norm(x)); a final norm and an output
head (tied to the embedding or not). The config's wiring fields add what other families
do beyond that: norms after attention and MLP too (`sandwich_norm`), both branches read
the same x (`parallel_residual`), per-layer sliding windows with their own RoPE base
(`layer_types`, `rope_local_theta`), scaled embeddings, soft-capped logits. The code reads
those fields, never the family name. Parameter names are giraffe's own
(`layers.0.attn.q_proj.weight`, ...); the mapping to Hugging Face and GGUF names lives
in `giraffe.formats.names` alone.

`forward(ids, targets=None)` returns logits (B, T, V), or the mean cross-entropy when
targets (aligned with ids: targets[t] is the token after ids[t], -100 = ignore) are given.
Generation uses `hidden` + `head` to skip the vocabulary projection where it is not needed;
`next_token_logits` is the generation core's door, in its types (numpy in and out).
A packed loader attaches a runtime (`attach_runtime`, giraffe.quant.runtime): `hidden`
then offers each call to its compiled step first and hands each block its layer's fused
kernels; `detach_runtime` takes it off, leaving the modules as the reference path.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from giraffe.config import ModelConfig
from giraffe.models.common import embedding as _embedding
from giraffe.models.common import init_weights as _init_weights
from giraffe.nn import MLP, Attention, KVCache, Rotary, build_mask, make_norm


def _norm(cfg: ModelConfig) -> nn.Module:
    return make_norm(cfg.norm, cfg.hidden_size, cfg.norm_eps, cfg.norm_bias, cfg.norm_offset)


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int = 0) -> None:
        super().__init__()
        self.window = cfg.layer_window(layer)  # None = attends to every earlier token
        self.local_rope = cfg.layer_local_rope(layer)  # takes the sliding layers' RoPE
        self.parallel = cfg.parallel_residual
        self.attn_norm = _norm(cfg)
        self.attn = Attention(
            cfg.hidden_size,
            cfg.n_heads,
            cfg.kv_heads,
            cfg.dim_per_head,
            cfg.attention_bias,
            cfg.attention_out_bias,
            scale=cfg.query_scale,
            qk_norm_eps=cfg.norm_eps if cfg.qk_norm else None,
            norm_offset=cfg.norm_offset,
            softcap=cfg.attn_softcap,
        )
        self.mlp_norm = _norm(cfg)
        self.mlp = MLP(
            cfg.hidden_size, cfg.intermediate_size, cfg.mlp, cfg.activation, cfg.mlp_bias
        )
        if cfg.sandwich_norm:
            self.attn_post_norm, self.mlp_post_norm = _norm(cfg), _norm(cfg)
        self.sandwich = cfg.sandwich_norm

    def forward(self, x, rope, mask, causal, cache, layer, keep_weights=None, fast=None):
        """fast: this layer's packed kernels (giraffe.quant.runtime.LayerKernels) when the
        model has a runtime attached; None = the modules alone."""
        a = self.attn(self.attn_norm(x), rope, mask, causal, cache, layer, keep_weights, fast)
        if self.parallel:  # GPT-NeoX: both branches read the block's input
            return x + a + self.mlp(self.mlp_norm(x), fast)
        if self.sandwich:
            a = self.attn_post_norm(a)
        x = x + a
        m = self.mlp(self.mlp_norm(x), fast)
        return x + (self.mlp_post_norm(m) if self.sandwich else m)


class Decoder(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.config = cfg
        self.embed = _embedding(cfg.vocab_size, cfg.hidden_size)
        if cfg.position == "learned":
            self.pos_embed = _embedding(cfg.max_position_embeddings, cfg.hidden_size)
        else:
            self.reset_buffers()
        self.layers = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layers))
        self.norm = _norm(cfg)
        self.lm_head = (
            None if cfg.tie_embeddings else nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        )
        self._runtime = None  # the packed fast path (attach_runtime); None = these modules alone
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
        attn_mask: (B, 1, T, S) bool, the plain causal mask over cache slots, replacing
        the one built here (callers whose rows have different cache lengths, e.g.
        `giraffe.nn.slot_cache.BatchView`); sliding layers narrow it to their window.
        attention_weights: pass a list to receive each layer's (B, H, T, S) weights
        (switches to the reference attention path; costs nothing when None).
        """
        runtime = self._runtime
        if self._compiled_may_take(cache, key_mask, attn_mask) and attention_weights is None:
            # the fast path: the packed runtime's compiled step runs every layer at once
            h = runtime.decode(self, ids, cache, positions)  # None when it cannot take this call
            if h is not None:
                return h
        B, T = ids.shape
        start = cache.length if cache is not None else 0
        if positions is None:
            positions = torch.arange(start, start + T).expand(B, T)  # (B, T)
        x = self.embed(ids)  # (B, T, C)
        if self.config.scale_embed:  # Gemma: sqrt(width), rounded to the model dtype first
            x = x * torch.tensor(self.config.hidden_size**0.5, dtype=x.dtype)
        ropes = {}  # local_rope -> (cos, sin): the sliding layers' own base, where they have one
        if self.config.position == "learned":
            x = x + self.pos_embed(positions)
        else:
            ropes[False] = self.rotary(positions)
            if self.rotary_local is not None:
                ropes[True] = self.rotary_local(positions)
        masks = {}  # window -> (mask, causal), built once for all layers that share it
        for i, layer in enumerate(self.layers):
            if layer.window not in masks:
                masks[layer.window] = (
                    (_windowed(attn_mask, layer.window), False)
                    if attn_mask is not None
                    else self._mask(start, T, key_mask, layer.window)
                )
            mask, causal = masks[layer.window]
            rope = ropes.get(layer.local_rope)
            # with a runtime, the block runs its fused packed products and compiled attention
            fast = runtime.layers[i] if runtime is not None else None
            x = layer(x, rope, mask, causal, cache, i, attention_weights, fast)
        if cache is not None:
            cache.advance(T)
        return self.norm(x)

    @torch.inference_mode()
    def next_token_logits(
        self,
        ids: np.ndarray | torch.Tensor,
        *,
        cache: KVCache,
        positions: np.ndarray | torch.Tensor | None = None,
        key_mask: np.ndarray | torch.Tensor | None = None,
        attn_mask: np.ndarray | torch.Tensor | None = None,
    ) -> tuple[np.ndarray, list[int] | None]:
        """What a decoding step needs, in the generation core's types: numpy float32 logits
        (B, V) of each row's last new token, and each row's first maximal logit where the
        compiled step found it in the same C call as its layers (None otherwise; a greedy
        sampler then takes the argmax itself).

        Arguments as `hidden`, as numpy arrays (the session's, read in place) or tensors
        (the server's cache views and masks); the cache advances by T. Runs without
        gradients (inference mode, which the compiled step needs), so a cache made outside
        it is written in place; the logits are the float32 tensor's memory, not a copy."""
        ids, positions, key_mask, attn_mask = map(_tensor, (ids, positions, key_mask, attn_mask))
        if self._compiled_may_take(cache, key_mask, attn_mask):
            done = self._runtime.next_logits(self, ids, cache, positions)
            if done is not None:
                return done  # (numpy logits, argmax) from the compiled step
        kw = {"positions": positions, "key_mask": key_mask, "attn_mask": attn_mask}
        h = self.hidden(ids, cache=cache, **kw)  # (B, T, C)
        return self.head(h[:, -1]).float().numpy(), None

    def _compiled_may_take(self, cache, key_mask, attn_mask) -> bool:
        """Whether the runtime's compiled step may be asked (it still checks the rest)."""
        return (
            self._runtime is not None
            and cache is not None
            and key_mask is None
            # a cache that places each row's token itself (BatchView.slots) implies its mask
            and (attn_mask is None or hasattr(cache, "slots"))
        )

    @property
    def runtime(self):
        """The attached packed runtime (giraffe.quant.runtime.PackedRuntime), or None."""
        return self._runtime

    def attach_runtime(self, runtime) -> None:
        """Run through a packed runtime built for this model's layers (replacing any other).

        Its compiled step takes the calls it can; each block gets its layer's fused
        products and compiled attention. Whoever replaces layers detaches it first."""
        if len(runtime.layers) != len(self.layers):
            raise ValueError(
                f"this runtime was built for {len(runtime.layers)} layers, the model has "
                f"{len(self.layers)}: build it for this model (PackedRuntime.build(model))"
            )
        self._runtime = runtime

    def detach_runtime(self):
        """Take the runtime off and return it (None if there was none): from now on the
        model runs its plain modules, the reference path. Attach it again to go back."""
        runtime, self._runtime = self._runtime, None
        return runtime

    def head(self, h: torch.Tensor) -> torch.Tensor:
        if self.lm_head is not None:
            logits = self.lm_head(h)  # (B, T, V)
        else:
            # Tied: a packed embedding multiplies from its own blocks (giraffe.quant.linear).
            project = getattr(self.embed, "project", None)
            logits = project(h) if project is not None else F.linear(h, self.embed.weight)
        cap = self.config.final_softcap
        return logits if cap is None else torch.tanh(logits / cap) * cap

    def _mask(self, start: int, T: int, key_mask: torch.Tensor | None, window: int | None):
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
        if cfg.position != "rope":
            return
        dims, scaling = cfg.rotary_dims, cfg.rope_scaling_dict
        self.rotary = Rotary(dims, cfg.rope_theta, scaling, cfg.rope_freq_factors)
        # Gemma 3's sliding layers: their own base, no scaling; None = they share `rotary`
        local = cfg.rope_local_theta
        self.rotary_local = None if local is None else Rotary(dims, local)

    def new_cache(self, batch: int, max_len: int) -> KVCache:
        cfg = self.config
        dtype = self.norm.weight.dtype  # the embedding may be packed bytes
        return KVCache(cfg.n_layers, batch, cfg.kv_heads, max_len, cfg.dim_per_head, dtype)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def _tensor(x: np.ndarray | torch.Tensor | None) -> torch.Tensor | None:
    """A numpy argument as a tensor over the same memory (no copy); tensors and None as they are."""
    return torch.from_numpy(x) if isinstance(x, np.ndarray) else x


def _windowed(mask: torch.Tensor, window: int | None) -> torch.Tensor:
    """A caller's causal slot mask (B, 1, T, S) narrowed to the last `window` slots.

    Each query's own slot is the last True one in its row (a causal mask always lets a
    query see itself and nothing later), so the window is counted back from there.
    """
    if window is None:
        return mask
    slots = torch.arange(mask.shape[-1])  # (S,)
    own = (mask * slots).amax(dim=-1, keepdim=True)  # (B, 1, T, 1)
    return mask & (slots > own - window)
