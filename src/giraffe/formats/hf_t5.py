"""T5's config.json <-> `ModelConfig`, both ways (Hugging Face's T5Config field names).

Transformers 5 always ties T5's output head to the shared embedding and multiplies the
decoder's states by d_model**-0.5 when `scale_decoder_outputs` (older files:
`tie_word_embeddings` not false) says so. giraffe's tied T5 is that scaled head; an
unscaled one is read as untied (its head from lm_head.weight, or a copy of
shared.weight when the file has none). This module moves no tensors
(`giraffe.formats.names` maps those) and reads no files.
"""

from __future__ import annotations

from giraffe.config import T5_WIRING, ConfigError, ModelConfig

# feed_forward_proj activation -> giraffe's; "gated-gelu" means the tanh GELU (T5 v1.1).
_ACTIVATIONS = {
    "relu": "relu",
    "gelu": "gelu",
    "gelu_new": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "silu": "silu",
}


def t5_config(raw: dict, source: str = "config.json") -> ModelConfig:
    ffp = raw.get("feed_forward_proj", "relu")
    parts = ffp.split("-")
    gated = len(parts) == 2 and parts[0] == "gated"
    act = "gelu_new" if ffp == "gated-gelu" else parts[-1]
    if len(parts) > 2 or (len(parts) == 2 and not gated) or act not in _ACTIVATIONS:
        raise ConfigError(f"{source}: feed_forward_proj {ffp!r} is not supported for t5")
    scaled = raw.get("scale_decoder_outputs", raw.get("tie_word_embeddings", True) is not False)
    width, heads, d_kv = raw["d_model"], raw["num_heads"], raw["d_kv"]
    layers = raw["num_layers"]
    decoder_layers = raw.get("num_decoder_layers") or layers
    start = raw.get("decoder_start_token_id")
    return ModelConfig(
        **{
            **T5_WIRING,
            "mlp": "gated" if gated else "plain",
            "activation": _ACTIVATIONS[act],
            "norm_eps": raw.get("layer_norm_epsilon", 1e-6),
            "tie_embeddings": bool(scaled),
        },
        vocab_size=raw["vocab_size"],
        hidden_size=width,
        n_layers=layers,
        n_decoder_layers=None if decoder_layers == layers else decoder_layers,
        n_heads=heads,
        head_dim=None if d_kv * heads == width else d_kv,
        intermediate_size=raw["d_ff"],
        max_position_embeddings=raw.get("n_positions", 512),
        relative_buckets=raw.get("relative_attention_num_buckets", 32),
        relative_max_distance=raw.get("relative_attention_max_distance", 128),
        decoder_start_id=start if start is not None else raw.get("pad_token_id") or 0,
    )


def _feed_forward_proj(cfg: ModelConfig) -> str:
    if cfg.mlp == "gated":
        return "gated-" + {"gelu_tanh": "gelu", "silu": "silu", "relu": "relu"}[cfg.activation]
    return {"relu": "relu", "gelu": "gelu", "gelu_tanh": "gelu_new", "silu": "silu"}[cfg.activation]


def t5_config_to_hf(cfg: ModelConfig) -> dict:
    return {
        "model_type": "t5",
        "architectures": ["T5ForConditionalGeneration"],
        "is_encoder_decoder": True,
        "vocab_size": cfg.vocab_size,
        "d_model": cfg.hidden_size,
        "d_kv": cfg.dim_per_head,
        "d_ff": cfg.intermediate_size,
        "num_layers": cfg.n_layers,
        "num_decoder_layers": cfg.decoder_layers,
        "num_heads": cfg.n_heads,
        "relative_attention_num_buckets": cfg.relative_buckets,
        "relative_attention_max_distance": cfg.relative_max_distance,
        "layer_norm_epsilon": cfg.norm_eps,
        "feed_forward_proj": _feed_forward_proj(cfg),
        "n_positions": cfg.max_position_embeddings,
        "tie_word_embeddings": cfg.tie_embeddings,
        "scale_decoder_outputs": cfg.tie_embeddings,
        "decoder_start_token_id": cfg.decoder_start_id,
    }
