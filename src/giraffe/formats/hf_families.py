"""config.json <-> `ModelConfig` for the families beyond Llama: Qwen3, Gemma 2/3, Phi-3, GPT-NeoX.

Reads both spellings transformers has used: the legacy keys (`rope_theta`, `rope_scaling`,
`rope_local_base_freq`, `rotary_pct`, `sliding_window_pattern`) that checkpoints on disk
carry, and transformers 5's `rope_parameters` (per layer type for Gemma 3). Writes the
legacy keys, which both transformers and llama.cpp's converter read. This module moves
no tensors (`giraffe.formats.names` maps those) and reads no files.
"""

from __future__ import annotations

from giraffe.config import (
    GEMMA2_WIRING,
    GEMMA3_WIRING,
    GPTNEOX_WIRING,
    PHI3_WIRING,
    QWEN3_WIRING,
    ConfigError,
    ModelConfig,
    periodic_layer_types,
)

# config.json model_type -> giraffe family, for the families this module reads
MODEL_TYPES = {
    "qwen3": "qwen3",
    "gemma2": "gemma2",
    "gemma3_text": "gemma3",
    "phi3": "phi3",
    "gpt_neox": "gptneox",
}
_TANH_GELU = ("gelu_pytorch_tanh", "gelu_new")
_HF_LAYER_TYPES = {"sliding_attention": "sliding", "full_attention": "full"}


def family_config(raw: dict, model_type: str, source: str) -> ModelConfig:
    arch = MODEL_TYPES[model_type]
    return {
        "qwen3": _qwen3,
        "gemma2": _gemma,
        "gemma3": _gemma,
        "phi3": _phi3,
        "gptneox": _gptneox,
    }[arch](raw, source)


def _rope(raw: dict, layer_type: str = "full_attention") -> dict:
    """The rope parameters of one layer type: rope_theta, rope_type, factor, ..."""
    params = raw.get("rope_parameters") or {}
    if layer_type in params:  # transformers 5, per layer type (Gemma 3)
        params = params[layer_type]
    legacy = raw.get("rope_scaling") or {}
    merged = {**legacy, **params}
    merged.setdefault("rope_theta", raw.get("rope_theta", raw.get("rotary_emb_base", 10000.0)))
    return merged


def _scaling(rope: dict, source: str, allowed=("default", "linear", "llama3")):
    kind = rope.get("rope_type", rope.get("type", "default"))
    if kind not in allowed:
        raise ConfigError(
            f"{source}: rope scaling {kind!r} is not supported here (giraffe knows {', '.join(allowed)})"
        )
    if kind == "default":
        return None
    items = {k: v for k, v in rope.items() if k not in ("rope_theta", "type")}
    return tuple(sorted((k, v) for k, v in items.items() if isinstance(v, (int, float, str))))


def _common(raw: dict) -> dict:
    heads = raw["num_attention_heads"]
    return dict(
        vocab_size=raw["vocab_size"],
        hidden_size=raw["hidden_size"],
        n_layers=raw["num_hidden_layers"],
        n_heads=heads,
        n_kv_heads=raw.get("num_key_value_heads") or heads,
        head_dim=raw.get("head_dim"),
        intermediate_size=raw["intermediate_size"],
        max_position_embeddings=raw.get("max_position_embeddings", 2048),
    )


def _check_act(raw: dict, key: str, allowed: tuple[str, ...], source: str) -> str:
    act = raw.get(key, allowed[0])
    if act not in allowed:
        raise ConfigError(f"{source}: {key} {act!r} is not supported (giraffe has {allowed})")
    return act


def _qwen3(raw: dict, source: str) -> ModelConfig:
    _check_act(raw, "hidden_act", ("silu",), source)
    rope = _rope(raw)
    window = raw.get("sliding_window") if raw.get("use_sliding_window") else None
    return ModelConfig(
        **{**QWEN3_WIRING, "norm_eps": raw.get("rms_norm_eps", 1e-6)},
        **_common(raw),
        rope_theta=float(rope["rope_theta"]),
        rope_scaling=_scaling(rope, source),
        attention_bias=bool(raw.get("attention_bias", False)),
        attention_out_bias=bool(raw.get("attention_bias", False)),
        tie_embeddings=bool(raw.get("tie_word_embeddings", False)),
        sliding_window=window,
    )


def _layer_types(raw: dict, period: int, source: str) -> tuple[str, ...]:
    types = raw.get("layer_types")
    if types is None:
        period = raw.get("sliding_window_pattern", raw.get("_sliding_window_pattern", period))
        return periodic_layer_types(raw["num_hidden_layers"], int(period))
    unknown = sorted(set(types) - set(_HF_LAYER_TYPES))
    if unknown:
        raise ConfigError(f"{source}: layer type {unknown[0]!r} is not supported")
    return tuple(_HF_LAYER_TYPES[t] for t in types)


def _gemma(raw: dict, source: str) -> ModelConfig:
    gemma3 = raw["model_type"] == "gemma3_text"
    _check_act(raw, "hidden_activation", _TANH_GELU, source)
    full = _rope(raw, "full_attention")
    local = None
    if gemma3:
        # legacy `rope_scaling` is the global layers' (transformers 4 applied it there only)
        per_type = "sliding_attention" in (raw.get("rope_parameters") or {})
        local = _rope(raw, "sliding_attention") if per_type else {}
        local_theta = raw.get("rope_local_base_freq", local.get("rope_theta", 10000.0))
        if _scaling(local, source) is not None:
            raise ConfigError(f"{source}: rope scaling of the sliding layers is not supported")
    common = _common(raw)
    head_dim = common["head_dim"] or common["hidden_size"] // common["n_heads"]
    return ModelConfig(
        **{
            **(GEMMA3_WIRING if gemma3 else GEMMA2_WIRING),
            "norm_eps": raw.get("rms_norm_eps", 1e-6),
            "tie_embeddings": bool(raw.get("tie_word_embeddings", True)),
        },
        **common,
        rope_theta=float(full["rope_theta"]),
        rope_scaling=_scaling(full, source, ("default", "linear")),
        rope_local_theta=float(local_theta) if gemma3 else None,
        query_scale=float(raw.get("query_pre_attn_scalar", head_dim)) ** -0.5,
        attn_softcap=raw.get("attn_logit_softcapping"),
        final_softcap=raw.get("final_logit_softcapping"),
        sliding_window=raw.get("sliding_window"),
        layer_types=_layer_types(raw, 6 if gemma3 else 2, source),
        attention_bias=bool(raw.get("attention_bias", False)),
        attention_out_bias=bool(raw.get("attention_bias", False)),
    )


def _partial(raw: dict, rope: dict, head_dim: int) -> int | None:
    pct = rope.get(
        "partial_rotary_factor", raw.get("partial_rotary_factor", raw.get("rotary_pct", 1.0))
    )
    return None if pct == 1.0 else int(head_dim * pct)


def _phi3(raw: dict, source: str) -> ModelConfig:
    _check_act(raw, "hidden_act", ("silu",), source)
    rope = _rope(raw)
    common = _common(raw)
    head_dim = common["head_dim"] or common["hidden_size"] // common["n_heads"]
    return ModelConfig(
        **{
            **PHI3_WIRING,
            "norm_eps": raw.get("rms_norm_eps", 1e-5),
            "tie_embeddings": bool(raw.get("tie_word_embeddings", False)),
        },
        **common,
        rope_theta=float(rope["rope_theta"]),
        rope_scaling=_scaling(rope, source, ("default", "linear")),
        rotary_dim=_partial(raw, rope, head_dim),
        sliding_window=raw.get("sliding_window"),
    )


def _gptneox(raw: dict, source: str) -> ModelConfig:
    act = _check_act(raw, "hidden_act", ("gelu", *_TANH_GELU), source)
    rope = _rope(raw)
    common = _common(raw)
    head_dim = common["hidden_size"] // common["n_heads"]
    bias = bool(raw.get("attention_bias", True))
    return ModelConfig(
        **{
            **GPTNEOX_WIRING,
            "activation": "gelu" if act == "gelu" else "gelu_tanh",
            "norm_eps": raw.get("layer_norm_eps", 1e-5),
            "parallel_residual": bool(raw.get("use_parallel_residual", True)),
            "attention_bias": bias,
            "attention_out_bias": bias,
            "tie_embeddings": bool(raw.get("tie_word_embeddings", False)),
        },
        **common,
        rope_theta=float(rope["rope_theta"]),
        rope_scaling=_scaling(rope, source, ("default", "linear")),
        rotary_dim=_partial(raw, rope, head_dim),
    )


def rope_decoder_to_hf(cfg: ModelConfig) -> dict:
    """The config.json fields every RoPE decoder family spells alike (Llama's too)."""
    out = {
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.kv_heads,
        "head_dim": cfg.dim_per_head,
        "intermediate_size": cfg.intermediate_size,
        "max_position_embeddings": cfg.max_position_embeddings,
        "rope_theta": cfg.rope_theta,
        "tie_word_embeddings": cfg.tie_embeddings,
    }
    if cfg.rope_scaling:
        out["rope_scaling"] = cfg.rope_scaling_dict
    return out


def family_config_to_hf(cfg: ModelConfig) -> dict:
    """config.json for a Qwen3, Gemma 2/3, Phi-3 or GPT-NeoX config."""
    out = {
        **rope_decoder_to_hf(cfg),
        # transformers' per-family defaults (Phi-3: pad 32000) may not fit this vocabulary;
        # the tokenizer's ids, when a caller has them, are merged in by `save_hf`
        "pad_token_id": None,
        "bos_token_id": None,
        "eos_token_id": None,
    }
    return {**out, **_FAMILY_TO_HF[cfg.arch](cfg)}


def _qwen3_to_hf(cfg: ModelConfig) -> dict:
    return {
        "model_type": "qwen3",
        "architectures": ["Qwen3ForCausalLM"],
        "rms_norm_eps": cfg.norm_eps,
        "hidden_act": "silu",
        "attention_bias": cfg.attention_bias,
        "use_sliding_window": cfg.sliding_window is not None,
        "sliding_window": cfg.sliding_window,
    }


def _gemma_to_hf(cfg: ModelConfig) -> dict:
    gemma3 = cfg.arch == "gemma3"
    out = {
        "model_type": "gemma3_text" if gemma3 else "gemma2",
        "architectures": ["Gemma3ForCausalLM" if gemma3 else "Gemma2ForCausalLM"],
        "rms_norm_eps": cfg.norm_eps,
        "hidden_activation": "gelu_pytorch_tanh",
        "query_pre_attn_scalar": _query_pre_attn_scalar(cfg),
        "attn_logit_softcapping": cfg.attn_softcap,
        "final_logit_softcapping": cfg.final_softcap,
        "sliding_window": cfg.sliding_window,
        "layer_types": [f"{t}_attention" for t in cfg.layer_types or ("full",) * cfg.n_layers],
        "attention_bias": cfg.attention_bias,
    }
    if gemma3:
        out["rope_local_base_freq"] = cfg.rope_local_theta or cfg.rope_theta
    return out


def _query_pre_attn_scalar(cfg: ModelConfig) -> float | int:
    scalar = (cfg.query_scale or cfg.dim_per_head**-0.5) ** -2
    return round(scalar) if abs(scalar - round(scalar)) < 1e-6 * scalar else scalar


def _phi3_to_hf(cfg: ModelConfig) -> dict:
    return {
        "model_type": "phi3",
        "architectures": ["Phi3ForCausalLM"],
        "rms_norm_eps": cfg.norm_eps,
        "hidden_act": "silu",
        "partial_rotary_factor": cfg.rotary_dims / cfg.dim_per_head,
        "sliding_window": cfg.sliding_window,
    }


def _gptneox_to_hf(cfg: ModelConfig) -> dict:
    return {
        "model_type": "gpt_neox",
        "architectures": ["GPTNeoXForCausalLM"],
        "layer_norm_eps": cfg.norm_eps,
        "hidden_act": "gelu" if cfg.activation == "gelu" else "gelu_new",
        "rotary_pct": cfg.rotary_dims / cfg.dim_per_head,
        "partial_rotary_factor": cfg.rotary_dims / cfg.dim_per_head,
        "rotary_emb_base": cfg.rope_theta,
        "use_parallel_residual": cfg.parallel_residual,
        "attention_bias": cfg.attention_bias,
    }


_FAMILY_TO_HF = {
    "qwen3": _qwen3_to_hf,
    "gemma2": _gemma_to_hf,
    "gemma3": _gemma_to_hf,
    "phi3": _phi3_to_hf,
    "gptneox": _gptneox_to_hf,
}
