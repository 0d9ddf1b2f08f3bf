"""THE one table of external tensor names: giraffe <-> Hugging Face <-> GGUF.

Each `Rule` says which giraffe parameter(s) one external tensor holds and how its
layout differs (transposed Conv1D weights, fused q/k/v, llama.cpp's permuted RoPE
rows). Every loader and writer goes through `to_giraffe` / `from_giraffe`; no other
module spells an external tensor name. This module does not read files.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from giraffe.config import ModelConfig

if TYPE_CHECKING:  # the table is read without torch (`giraffe info`, the registry)
    import torch


class WeightsError(ValueError):
    """A weights file does not fit the model its config describes."""


@dataclass(frozen=True)
class Rule:
    ours: tuple[str, ...]  # giraffe names; several when the external tensor is fused
    theirs: str  # external name; "{i}" stands for the layer index
    # "same" | "conv1d" (stored (in, out)) | "rope_q" | "rope_k" (GGUF row permutation) |
    # "norm_shift" (llama.cpp stores Gemma's norms as norm_offset + w) | "neox_qkv" (GPT-NeoX's
    # fused rows interleaved per head: q, k, v of head 0, then of head 1, ...)
    layout: str = "same"
    mlp: str | None = None  # only for configs with this MLP kind ("gated"/"plain"); None = all


def _r(ours: str | tuple[str, ...], theirs: str, layout: str = "same", mlp=None) -> Rule:
    return Rule(ours if isinstance(ours, tuple) else (ours,), theirs, layout, mlp)


def _t5_block(stack: str, var: str, cross: bool) -> list[Rule]:
    """One T5 block's rules; `var` is the layer placeholder ({i} encoder, {j} decoder)."""
    ours, theirs = f"{stack}.layers.{var}", f"{stack}.block.{var}.layer"
    parts = [("attn", "0.SelfAttention", "attn_norm", "0.layer_norm")]
    if cross:
        parts.append(("cross_attn", "1.EncDecAttention", "cross_norm", "1.layer_norm"))
    ff = "2" if cross else "1"  # the feed-forward sub-layer's index in the block
    rules = [
        _r(f"{ours}.{norm}.weight", f"{theirs}.{hf_norm}.weight") for *_, norm, hf_norm in parts
    ]
    rules += [
        _r(f"{ours}.{a}.{p}_proj.weight", f"{theirs}.{hf_a}.{p}.weight")
        for a, hf_a, *_ in parts
        for p in "qkvo"
    ]
    dense = f"{theirs}.{ff}.DenseReluDense"
    return rules + [
        _r(f"{ours}.mlp_norm.weight", f"{theirs}.{ff}.layer_norm.weight"),
        _r(f"{ours}.mlp.up_proj.weight", f"{dense}.wi.weight", mlp="plain"),
        _r(f"{ours}.mlp.gate_proj.weight", f"{dense}.wi_0.weight", mlp="gated"),
        _r(f"{ours}.mlp.up_proj.weight", f"{dense}.wi_1.weight", mlp="gated"),
        _r(f"{ours}.mlp.down_proj.weight", f"{dense}.wo.weight"),
    ]


_QKV = tuple(f"layers.{{i}}.attn.{p}_proj" for p in "qkv")
_GATE_UP = ("layers.{i}.mlp.gate_proj.weight", "layers.{i}.mlp.up_proj.weight")


def _hf_llama_like(mlp_norm: str, extra_norms: tuple[tuple[str, str], ...] = ()) -> list[Rule]:
    """Hugging Face names of a Llama-style model (Llama, Qwen3, Gemma): `model.layers.{i}...`.

    mlp_norm: the HF name of the norm before the MLP (Gemma names the post-attention one
    differently); extra_norms: (ours, theirs) of further per-layer norms.
    """
    layer = "model.layers.{i}"
    norms = [("attn_norm", "input_layernorm"), ("mlp_norm", mlp_norm), *extra_norms]
    return [
        _r("embed.weight", "model.embed_tokens.weight"),
        *[_r(f"layers.{{i}}.{ours}.weight", f"{layer}.{theirs}.weight") for ours, theirs in norms],
        *[
            _r(f"layers.{{i}}.attn.{p}.{w}", f"{layer}.self_attn.{p}.{w}")
            for p in ("q_proj", "k_proj", "v_proj", "o_proj")
            for w in ("weight", "bias")
        ],
        *[
            _r(f"layers.{{i}}.attn.{n}.weight", f"{layer}.self_attn.{n}.weight")
            for n in ("q_norm", "k_norm")
        ],
        *[
            _r(f"layers.{{i}}.mlp.{p}.{w}", f"{layer}.mlp.{p}.{w}")
            for p in ("gate_proj", "up_proj", "down_proj")
            for w in ("weight", "bias")
        ],
        _r("norm.weight", "model.norm.weight"),
        _r("lm_head.weight", "lm_head.weight"),
    ]


def _gguf_llama_like(norm_layout: str = "same") -> list[Rule]:
    """llama.cpp's names of a Llama-style model; norm_layout "norm_shift" for Gemma's norms."""
    norms = [
        ("attn_norm", "attn_norm"),
        ("mlp_norm", "ffn_norm"),
        ("attn_post_norm", "post_attention_norm"),  # only models with sandwich norms have them
        ("mlp_post_norm", "post_ffw_norm"),
        ("attn.q_norm", "attn_q_norm"),  # only models with qk_norm
        ("attn.k_norm", "attn_k_norm"),
    ]
    return [
        _r("embed.weight", "token_embd.weight"),
        *[
            _r(f"layers.{{i}}.{ours}.weight", f"blk.{{i}}.{theirs}.weight", norm_layout)
            for ours, theirs in norms
        ],
        _r("layers.{i}.attn.q_proj.weight", "blk.{i}.attn_q.weight", "rope_q"),
        _r("layers.{i}.attn.k_proj.weight", "blk.{i}.attn_k.weight", "rope_k"),
        _r("layers.{i}.attn.q_proj.bias", "blk.{i}.attn_q.bias", "rope_q"),
        _r("layers.{i}.attn.k_proj.bias", "blk.{i}.attn_k.bias", "rope_k"),
        _r("layers.{i}.attn.v_proj.weight", "blk.{i}.attn_v.weight"),
        _r("layers.{i}.attn.v_proj.bias", "blk.{i}.attn_v.bias"),
        _r("layers.{i}.attn.o_proj.weight", "blk.{i}.attn_output.weight"),
        _r("layers.{i}.attn.o_proj.bias", "blk.{i}.attn_output.bias"),
        _r("layers.{i}.mlp.gate_proj.weight", "blk.{i}.ffn_gate.weight"),
        _r("layers.{i}.mlp.up_proj.weight", "blk.{i}.ffn_up.weight"),
        _r("layers.{i}.mlp.down_proj.weight", "blk.{i}.ffn_down.weight"),
        _r("norm.weight", "output_norm.weight", norm_layout),
        _r("lm_head.weight", "output.weight"),
    ]


# GPT-NeoX's per-layer modules: (ours, Hugging Face, llama.cpp), each with weight and bias.
_NEOX_LAYER = (
    ("attn_norm", "input_layernorm", "attn_norm"),
    ("mlp_norm", "post_attention_layernorm", "ffn_norm"),
    ("attn.o_proj", "attention.dense", "attn_output"),
    ("mlp.up_proj", "mlp.dense_h_to_4h", "ffn_up"),
    ("mlp.down_proj", "mlp.dense_4h_to_h", "ffn_down"),
)

# Per-layer templates use {i}; biases are listed and simply skipped when absent.
TABLES: dict[tuple[str, str], list[Rule]] = {
    ("hf", "llama"): _hf_llama_like("post_attention_layernorm"),
    ("hf", "qwen3"): _hf_llama_like("post_attention_layernorm"),
    # Gemma 2 and 3: "post_attention_layernorm" is the norm *after* attention (sandwich).
    **{
        ("hf", arch): _hf_llama_like(
            "pre_feedforward_layernorm",
            (
                ("attn_post_norm", "post_attention_layernorm"),
                ("mlp_post_norm", "post_feedforward_layernorm"),
            ),
        )
        for arch in ("gemma2", "gemma3")
    },
    ("hf", "phi3"): [
        _r("embed.weight", "model.embed_tokens.weight"),
        _r("layers.{i}.attn_norm.weight", "model.layers.{i}.input_layernorm.weight"),
        _r("layers.{i}.mlp_norm.weight", "model.layers.{i}.post_attention_layernorm.weight"),
        _r(tuple(f"{n}.weight" for n in _QKV), "model.layers.{i}.self_attn.qkv_proj.weight"),
        _r("layers.{i}.attn.o_proj.weight", "model.layers.{i}.self_attn.o_proj.weight"),
        _r(_GATE_UP, "model.layers.{i}.mlp.gate_up_proj.weight"),
        _r("layers.{i}.mlp.down_proj.weight", "model.layers.{i}.mlp.down_proj.weight"),
        _r("norm.weight", "model.norm.weight"),
        _r("lm_head.weight", "lm_head.weight"),
    ],
    ("hf", "gptneox"): [
        _r("embed.weight", "gpt_neox.embed_in.weight"),
        *[
            _r(f"layers.{{i}}.{ours}.{w}", f"gpt_neox.layers.{{i}}.{theirs}.{w}")
            for ours, theirs, _ in _NEOX_LAYER
            for w in ("weight", "bias")
        ],
        *[
            _r(
                tuple(f"{n}.{w}" for n in _QKV),
                f"gpt_neox.layers.{{i}}.attention.query_key_value.{w}",
                "neox_qkv",
            )
            for w in ("weight", "bias")
        ],
        *[_r(f"norm.{w}", f"gpt_neox.final_layer_norm.{w}") for w in ("weight", "bias")],
        _r("lm_head.weight", "embed_out.weight"),
    ],
    ("hf", "gpt2"): [
        _r("embed.weight", "transformer.wte.weight"),
        _r("pos_embed.weight", "transformer.wpe.weight"),
        *[
            _r(f"layers.{{i}}.{ours}.{w}", f"transformer.h.{{i}}.{theirs}.{w}")
            for ours, theirs in (("attn_norm", "ln_1"), ("mlp_norm", "ln_2"))
            for w in ("weight", "bias")
        ],
        _r(tuple(f"{n}.weight" for n in _QKV), "transformer.h.{i}.attn.c_attn.weight", "conv1d"),
        _r(tuple(f"{n}.bias" for n in _QKV), "transformer.h.{i}.attn.c_attn.bias"),
        _r("layers.{i}.attn.o_proj.weight", "transformer.h.{i}.attn.c_proj.weight", "conv1d"),
        _r("layers.{i}.attn.o_proj.bias", "transformer.h.{i}.attn.c_proj.bias"),
        _r("layers.{i}.mlp.up_proj.weight", "transformer.h.{i}.mlp.c_fc.weight", "conv1d"),
        _r("layers.{i}.mlp.up_proj.bias", "transformer.h.{i}.mlp.c_fc.bias"),
        _r("layers.{i}.mlp.down_proj.weight", "transformer.h.{i}.mlp.c_proj.weight", "conv1d"),
        _r("layers.{i}.mlp.down_proj.bias", "transformer.h.{i}.mlp.c_proj.bias"),
        _r("norm.weight", "transformer.ln_f.weight"),
        _r("norm.bias", "transformer.ln_f.bias"),
        _r("lm_head.weight", "lm_head.weight"),
    ],
    # BertForMaskedLM's names; a bare BertModel's (no "bert." prefix) are canonicalised
    # to these by the loader, as GPT-2's are to "transformer.".
    ("hf", "bert"): [
        _r("embed.weight", "bert.embeddings.word_embeddings.weight"),
        _r("pos_embed.weight", "bert.embeddings.position_embeddings.weight"),
        _r("type_embed.weight", "bert.embeddings.token_type_embeddings.weight"),
        *[_r(f"embed_norm.{w}", f"bert.embeddings.LayerNorm.{w}") for w in ("weight", "bias")],
        *[
            _r(f"layers.{{i}}.{ours}.{w}", f"bert.encoder.layer.{{i}}.{theirs}.{w}")
            for ours, theirs in (
                ("attn.q_proj", "attention.self.query"),
                ("attn.k_proj", "attention.self.key"),
                ("attn.v_proj", "attention.self.value"),
                ("attn.o_proj", "attention.output.dense"),
                ("attn_norm", "attention.output.LayerNorm"),  # post-norm: after attention
                ("mlp.up_proj", "intermediate.dense"),
                ("mlp.down_proj", "output.dense"),
                ("mlp_norm", "output.LayerNorm"),
            )
            for w in ("weight", "bias")
        ],
        *[
            _r(f"mlm_head.{ours}.{w}", f"cls.predictions.transform.{theirs}.{w}")
            for ours, theirs in (("dense", "dense"), ("norm", "LayerNorm"))
            for w in ("weight", "bias")
        ],
        _r("mlm_head.bias", "cls.predictions.bias"),
    ],
    # T5ForConditionalGeneration's names. The relative position bias lives in each stack's
    # first block and is shared by the others. Transformers 5 always ties T5's lm_head
    # to `shared` (scaling the states only when the config says so), so an unscaled
    # (untied) giraffe T5 whose file carries no lm_head takes its head from `shared`:
    # that rule comes first, and the file's own lm_head.weight, when present, wins.
    ("hf", "t5"): [
        _r("lm_head.weight", "shared.weight"),
        _r("embed.weight", "shared.weight"),
        *[
            _r(
                f"{s}.rel_bias.weight",
                f"{s}.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
            )
            for s in ("encoder", "decoder")
        ],
        *_t5_block("encoder", "{i}", cross=False),
        *_t5_block("decoder", "{j}", cross=True),
        *[_r(f"{s}.norm.weight", f"{s}.final_layer_norm.weight") for s in ("encoder", "decoder")],
        _r("lm_head.weight", "lm_head.weight"),
    ],
    ("gguf", "llama"): _gguf_llama_like(),
    ("gguf", "qwen3"): _gguf_llama_like(),
    ("gguf", "gemma2"): _gguf_llama_like("norm_shift"),
    ("gguf", "gemma3"): _gguf_llama_like("norm_shift"),
    # Phi-3: one fused q|k|v tensor, and ffn_up holding gate|up (llama.cpp splits it in two).
    ("gguf", "phi3"): [
        _r("embed.weight", "token_embd.weight"),
        _r("layers.{i}.attn_norm.weight", "blk.{i}.attn_norm.weight"),
        _r("layers.{i}.mlp_norm.weight", "blk.{i}.ffn_norm.weight"),
        _r(tuple(f"{n}.weight" for n in _QKV), "blk.{i}.attn_qkv.weight"),
        _r("layers.{i}.attn.o_proj.weight", "blk.{i}.attn_output.weight"),
        _r(_GATE_UP, "blk.{i}.ffn_up.weight"),
        _r("layers.{i}.mlp.down_proj.weight", "blk.{i}.ffn_down.weight"),
        _r("norm.weight", "output_norm.weight"),
        _r("lm_head.weight", "output.weight"),
    ],
    # llama.cpp's converter stores GPT-NeoX's fused q/k/v as plain q|k|v blocks.
    ("gguf", "gptneox"): [
        _r("embed.weight", "token_embd.weight"),
        *[
            _r(f"layers.{{i}}.{ours}.{w}", f"blk.{{i}}.{theirs}.{w}")
            for ours, _, theirs in _NEOX_LAYER
            for w in ("weight", "bias")
        ],
        *[
            _r(tuple(f"{n}.{w}" for n in _QKV), f"blk.{{i}}.attn_qkv.{w}")
            for w in ("weight", "bias")
        ],
        *[_r(f"norm.{w}", f"output_norm.{w}") for w in ("weight", "bias")],
        _r("lm_head.weight", "output.weight"),
    ],
    ("gguf", "gpt2"): [
        _r("embed.weight", "token_embd.weight"),
        _r("pos_embed.weight", "position_embd.weight"),
        *[
            _r(f"layers.{{i}}.{ours}.{w}", f"blk.{{i}}.{theirs}.{w}")
            for ours, theirs in (
                ("attn_norm", "attn_norm"),
                ("mlp_norm", "ffn_norm"),
                ("attn.o_proj", "attn_output"),
                ("mlp.up_proj", "ffn_up"),
                ("mlp.down_proj", "ffn_down"),
            )
            for w in ("weight", "bias")
        ],
        _r(tuple(f"{n}.weight" for n in _QKV), "blk.{i}.attn_qkv.weight"),
        _r(tuple(f"{n}.bias" for n in _QKV), "blk.{i}.attn_qkv.bias"),
        _r("norm.weight", "output_norm.weight"),
        _r("norm.bias", "output_norm.bias"),
        _r("lm_head.weight", "output.weight"),
    ],
}

# Qwen2 GGUF files use the Llama names but Hugging Face's rotary layout (no permutation);
# so do all the other families (llama.cpp runs them with its "NEOX" rope mode).
GGUF_ROPE_PERMUTED = {"llama"}

# Tensors llama.cpp keeps beside the weights that hold configuration, not parameters:
# Llama 3.1's RoPE frequency divisors (`ModelConfig.rope_freq_factors`).
GGUF_ROPE_FREQS = "rope_freqs.weight"
CONFIG_TENSORS = (GGUF_ROPE_FREQS,)

# Buffers some checkpoints carry that hold no weights giraffe needs; and BERT's pooler
# and next-sentence head, which serve classification, not MLM or mean-pooled embeddings.
IGNORED_SUFFIXES = (
    "rotary_emb.inv_freq",
    "attn.bias",
    "attn.masked_bias",
    "embeddings.position_ids",
    "pooler.dense.weight",
    "pooler.dense.bias",
    "cls.seq_relationship.weight",
    "cls.seq_relationship.bias",
    # T5's copies of `shared.weight`, and a bias table cross-attention never uses.
    "encoder.embed_tokens.weight",
    "decoder.embed_tokens.weight",
    "EncDecAttention.relative_attention_bias.weight",
)

# Copies of the tied output head (the embedding matrix; BERT's decoder bias is
# cls.predictions.bias) that some checkpoints still carry.
TIED_HEAD_NAMES = (
    "lm_head.weight",
    "output.weight",
    "cls.predictions.decoder.weight",
    "cls.predictions.decoder.bias",
)

# Prefix of a bare Hugging Face BertModel's tensors when held by BertForMaskedLM.
# The scalar head of Hugging Face's *ForSequenceClassification (a reward model's score).
SEQUENCE_SCORE_HEAD = "score.weight"
BERT_PREFIX = "bert."
BERT_BODY = ("embeddings.", "encoder.", "pooler.")


def expand(fmt: str, cfg: ModelConfig) -> list[Rule]:
    """The table for this format and family with {i} (and a T5 decoder's {j}) filled in."""
    rules = []
    for rule in TABLES[(fmt, cfg.arch)]:
        if rule.mlp not in (None, cfg.mlp):
            continue
        if "{j}" in rule.theirs:
            layers = [{"j": j} for j in range(cfg.decoder_layers)]
        else:
            layers = [{"i": i} for i in range(cfg.n_layers)] if "{i}" in rule.theirs else [{}]
        for at in layers:
            ours = tuple(n.format(**at) for n in rule.ours)
            rules.append(Rule(ours, rule.theirs.format(**at), rule.layout))
    return rules


def to_giraffe(
    rule: Rule, tensor: torch.Tensor, cfg: ModelConfig, rope_permuted: bool = False
) -> dict[str, torch.Tensor]:
    """Convert one external tensor into the giraffe parameter(s) it holds."""
    if rule.layout == "conv1d":
        tensor = tensor.t()  # Conv1D (in, out) -> Linear (out, in)
    elif rule.layout in ("rope_q", "rope_k") and rope_permuted:
        tensor = _unpermute_rope(tensor, _rope_heads(rule, cfg))
    elif rule.layout == "norm_shift":
        tensor = tensor - cfg.norm_offset
    elif rule.layout == "neox_qkv":
        tensor = _neox_heads_to_blocks(tensor, cfg.n_heads)
    if len(rule.ours) == 1:
        return {rule.ours[0]: tensor.contiguous()}
    sizes = [part_rows(n, cfg) for n in rule.ours]
    return {n: t.contiguous() for n, t in zip(rule.ours, tensor.split(sizes, dim=0), strict=True)}


def from_giraffe(
    rule: Rule, params: dict[str, torch.Tensor], cfg: ModelConfig, rope_permuted: bool = False
) -> torch.Tensor:
    """The external tensor for this rule, built from giraffe parameters (inverse of to_giraffe)."""
    import torch  # (only writers join tensors; see the top)

    tensor = torch.cat([params[n] for n in rule.ours], dim=0)
    if rule.layout == "conv1d":
        tensor = tensor.t()
    elif rule.layout in ("rope_q", "rope_k") and rope_permuted:
        tensor = _permute_rope(tensor, _rope_heads(rule, cfg))
    elif rule.layout == "norm_shift":
        tensor = tensor + cfg.norm_offset
    elif rule.layout == "neox_qkv":
        tensor = _neox_blocks_to_heads(tensor, cfg.n_heads)
    return tensor.contiguous()


def _rope_heads(rule: Rule, cfg: ModelConfig) -> int:
    return cfg.n_heads if rule.layout == "rope_q" else cfg.kv_heads


def part_rows(name: str, cfg: ModelConfig) -> int:
    """Rows of one giraffe projection inside a fused tensor (q|k|v or gate|up)."""
    module = name.rsplit(".", 2)[-2]  # "layers.0.attn.q_proj.weight" -> "q_proj"
    if module == "q_proj":
        return cfg.n_heads * cfg.dim_per_head
    if module in ("k_proj", "v_proj"):
        return cfg.kv_heads * cfg.dim_per_head
    if module in ("gate_proj", "up_proj"):
        return cfg.intermediate_size
    raise ValueError(f"{name} is not part of a fused projection")


def _neox_heads_to_blocks(w: torch.Tensor, heads: int) -> torch.Tensor:
    """GPT-NeoX rows (H, 3, D) per head -> q|k|v blocks (3, H, D) (as llama.cpp's converter does)."""
    return w.reshape(heads, 3, -1, *w.shape[1:]).transpose(0, 1).reshape(w.shape)


def _neox_blocks_to_heads(w: torch.Tensor, heads: int) -> torch.Tensor:
    return w.reshape(3, heads, -1, *w.shape[1:]).transpose(0, 1).reshape(w.shape)


def _permute_rope(w: torch.Tensor, heads: int) -> torch.Tensor:
    """HF rotate-half rows -> llama.cpp adjacent pairs (as llama.cpp's converter does)."""
    rows = w.shape[0]
    return w.reshape(heads, 2, rows // heads // 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def _unpermute_rope(w: torch.Tensor, heads: int) -> torch.Tensor:
    rows = w.shape[0]
    return w.reshape(heads, rows // heads // 2, 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)
