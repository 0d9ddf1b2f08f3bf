"""How big is a model? Parameters by part, memory per number format, KV cache per token.

The "7B parameters x 2 bytes = 14 GB" arithmetic, done for a real config. Works from a
`ModelConfig` alone (no weights needed); it does not measure a running process.
"""

from __future__ import annotations

from giraffe.config import ModelConfig

# Bytes per weight; the 4-bit figure includes one fp16 scale per 32 weights (ggml Q4_0: 18 B / 32).
FORMATS = {"fp32": 4.0, "fp16/bf16": 2.0, "int8 (Q8_0)": 34 / 32, "int4 (Q4_0)": 18 / 32}


def parameter_counts(cfg: ModelConfig) -> dict[str, int]:
    C, d = cfg.hidden_size, cfg.dim_per_head
    q, kv = cfg.n_heads * d, cfg.kv_heads * d
    attn = C * q + 2 * C * kv + q * C
    if cfg.attention_bias:
        attn += q + 2 * kv
    if cfg.attention_out_bias:
        attn += C
    n_mats = 3 if cfg.mlp == "gated" else 2
    mlp = n_mats * C * cfg.intermediate_size
    if cfg.mlp_bias:
        mlp += (n_mats - 1) * cfg.intermediate_size + C
    norm = C * (2 if cfg.norm_bias else 1)
    counts = {
        "token embedding": cfg.vocab_size * C,
        "position embedding": cfg.max_position_embeddings * C if cfg.position == "learned" else 0,
        "attention (all layers)": cfg.n_layers * attn,
        "MLP (all layers)": cfg.n_layers * mlp,
        "norms": (2 * cfg.n_layers + 1) * norm,
        "output head": 0 if cfg.tie_embeddings else cfg.vocab_size * C,
    }
    return {k: v for k, v in counts.items() if v}


def total_parameters(cfg: ModelConfig) -> int:
    return sum(parameter_counts(cfg).values())


def kv_cache_bytes(cfg: ModelConfig, tokens: int, bytes_per_value: float = 4.0) -> float:
    """Keys and values for every layer: 2 x layers x kv_heads x head_dim x tokens."""
    return 2 * cfg.n_layers * cfg.kv_heads * cfg.dim_per_head * tokens * bytes_per_value


def memory_table(cfg: ModelConfig) -> list[dict]:
    n = total_parameters(cfg)
    return [
        {
            "format": name,
            "bytes_per_weight": per,
            "weights_bytes": n * per,
            "kv_cache_per_1k_tokens_bytes": kv_cache_bytes(
                cfg, 1000, 4.0 if name == "fp32" else 2.0
            ),
        }
        for name, per in FORMATS.items()
    ]


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} TiB"
