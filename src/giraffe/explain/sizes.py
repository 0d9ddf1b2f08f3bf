"""How big is a model? Parameters by part, memory per number format, KV cache, FLOPs, what fits.

The "7B parameters x 2 bytes = 14 GB" arithmetic, done for a real config or a
hypothetical one (`SIZE_PRESETS`: well-known models giraffe does not ship). Works from a
`ModelConfig` alone (no weights needed); it does not measure a running process, and its
memory figures leave out activations, the framework and the operating system. Encoders
(BERT) are counted without a masked-LM head (sentence-embedding checkpoints ship none)
and have no KV cache: they read the whole text at once and generate nothing.
"""

from __future__ import annotations

from giraffe.config import PRESETS, ModelConfig

GIB = 1024**3

# Bytes per weight, block scales included (ggml block layouts: Q8_0 = 34 B per 32 weights,
# Q5_K = 176 B per 256, Q4_K = 144 B per 256, Q4_0 = 18 B per 32).
FORMATS = {
    "fp32": 4.0,
    "fp16/bf16": 2.0,
    "int8 (Q8_0)": 34 / 32,
    "Q5_K": 176 / 256,
    "Q4_K": 144 / 256,
    "int4 (Q4_0)": 18 / 32,
}

# Hypothetical configs for "what would it cost?" (values from each model's config.json).
SIZE_PRESETS: dict[str, ModelConfig] = {
    "llama2-7b": ModelConfig(
        vocab_size=32000,
        hidden_size=4096,
        n_layers=32,
        n_heads=32,
        intermediate_size=11008,
        max_position_embeddings=4096,
        tie_embeddings=False,
    ),
    "llama2-13b": ModelConfig(
        vocab_size=32000,
        hidden_size=5120,
        n_layers=40,
        n_heads=40,
        intermediate_size=13824,
        max_position_embeddings=4096,
        tie_embeddings=False,
    ),
    "llama3-8b": ModelConfig(
        vocab_size=128256,
        hidden_size=4096,
        n_layers=32,
        n_heads=32,
        n_kv_heads=8,
        intermediate_size=14336,
        max_position_embeddings=8192,
        rope_theta=500000.0,
        tie_embeddings=False,
    ),
    "mistral-7b": ModelConfig(
        vocab_size=32000,
        hidden_size=4096,
        n_layers=32,
        n_heads=32,
        n_kv_heads=8,
        intermediate_size=14336,
        max_position_embeddings=32768,
        tie_embeddings=False,
        sliding_window=4096,
    ),
    "qwen2-0.5b": ModelConfig(
        vocab_size=151936,
        hidden_size=896,
        n_layers=24,
        n_heads=14,
        n_kv_heads=2,
        intermediate_size=4864,
        max_position_embeddings=32768,
        rope_theta=1000000.0,
        attention_bias=True,
        norm_eps=1e-6,
    ),
}


def preset(name: str) -> ModelConfig:
    """A named config from `SIZE_PRESETS` or giraffe's own `PRESETS`."""
    every = {**PRESETS, **SIZE_PRESETS}
    if name not in every:
        raise ValueError(
            f"there is no preset called {name!r}; choose one of {', '.join(sorted(every))}."
        )
    return every[name]


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
    if cfg.kind == "encoder-decoder":
        return _seq2seq_counts(cfg, attn, mlp, norm)
    counts = {
        "token embedding": cfg.vocab_size * C,
        "position embedding": cfg.max_position_embeddings * C if cfg.position == "learned" else 0,
        "token-type embedding": cfg.type_vocab_size * C,
        "attention (all layers)": cfg.n_layers * attn,
        "MLP (all layers)": cfg.n_layers * mlp,
        # two per block (four with Gemma's sandwich norms), plus the final norm (decoders)
        # or the embedding norm (BERT); QK-norm adds two per-head norms per block
        "norms": ((4 if cfg.sandwich_norm else 2) * cfg.n_layers + 1) * norm
        + (2 * cfg.n_layers * d if cfg.qk_norm else 0),
        "output head": 0 if cfg.tie_embeddings or _is_encoder(cfg) else cfg.vocab_size * C,
    }
    return {k: v for k, v in counts.items() if v}


def _seq2seq_counts(cfg: ModelConfig, attn: int, mlp: int, norm: int) -> dict[str, int]:
    """T5: both stacks, cross-attention in each decoder block, one bias table per stack."""
    enc, dec = cfg.n_layers, cfg.decoder_layers
    counts = {
        "token embedding": cfg.vocab_size * cfg.hidden_size,
        "relative position bias": 2 * cfg.relative_buckets * cfg.n_heads,
        "attention (all layers)": (enc + 2 * dec) * attn,
        "MLP (all layers)": (enc + dec) * mlp,
        "norms": (2 * enc + 3 * dec + 2) * norm,
        "output head": 0 if cfg.tie_embeddings else cfg.vocab_size * cfg.hidden_size,
    }
    return {k: v for k, v in counts.items() if v}


def _is_encoder(cfg: ModelConfig) -> bool:
    return getattr(cfg, "kind", "decoder") == "encoder"


def total_parameters(cfg: ModelConfig) -> int:
    return sum(parameter_counts(cfg).values())


def kv_cache_bytes(cfg: ModelConfig, tokens: int, bytes_per_value: float = 4.0) -> float:
    """Keys and values for every layer: 2 x layers x kv_heads x head_dim x tokens."""
    return 2 * cfg.n_layers * cfg.kv_heads * cfg.dim_per_head * tokens * bytes_per_value


def cached_tokens(cfg: ModelConfig, context: int) -> int:
    """Tokens a cache must hold for `context`, per layer on average: a sliding window caps
    the layers that have one (every layer in Mistral, five in six in Gemma 3)."""
    per_layer = [
        context if w is None else min(context, w)
        for w in map(cfg.layer_window, range(cfg.n_layers))
    ]
    return -(-sum(per_layer) // cfg.n_layers)  # rounded up


def memory_table(cfg: ModelConfig) -> list[dict]:
    n = total_parameters(cfg)
    return [
        {
            "format": name,
            "bytes_per_weight": per,
            "weights_bytes": n * per,
            "kv_cache_per_1k_tokens_bytes": 0
            if _is_encoder(cfg)
            else kv_cache_bytes(cfg, 1000, 4.0 if name == "fp32" else 2.0),
        }
        for name, per in FORMATS.items()
    ]


def matmul_parameters(cfg: ModelConfig) -> int:
    """Weights each token is multiplied by: every projection and the output head.

    Embedding and position rows are looked up, not multiplied, so they cost no FLOPs;
    a tied head still is a (V x C) matmul. Encoders produce vectors, not scores over the
    vocabulary, so they have no head to count. Biases and norms are negligible, left out.
    """
    C, q, kv = cfg.hidden_size, cfg.n_heads * cfg.dim_per_head, cfg.kv_heads * cfg.dim_per_head
    attn = 2 * C * q + 2 * C * kv
    mlp = (3 if cfg.mlp == "gated" else 2) * C * cfg.intermediate_size
    head = 0 if _is_encoder(cfg) else cfg.vocab_size * C
    return cfg.n_layers * (attn + mlp) + head


def flops_per_token(cfg: ModelConfig, context: int = 0) -> int:
    """Forward FLOPs for one new token whose attention reads `context` keys (itself included).

    2 FLOPs (multiply + add) per matmul weight (Kaplan et al. 2020, "2N"), plus the
    attention itself: q.k scores and the weighted sum of v, 2 x 2 x layers x heads x
    head_dim per attended token.
    """
    attended = cached_tokens(cfg, context)
    attention = 4 * cfg.n_layers * cfg.n_heads * cfg.dim_per_head * attended
    return 2 * matmul_parameters(cfg) + attention


def what_fits(cfg: ModelConfig, ram_bytes: float, kv_bytes_per_value: float = 2.0) -> list[dict]:
    """Per weight format: weights, what is left of `ram_bytes`, and how long a context fits.

    The KV cache is counted at `kv_bytes_per_value` (fp16 by default, as llama.cpp keeps it).
    """
    context = cfg.max_position_embeddings
    cached = 0 if _is_encoder(cfg) else 1  # an encoder keeps no cache between calls
    per_token = kv_cache_bytes(cfg, cached, kv_bytes_per_value)
    full = kv_cache_bytes(cfg, cached * cached_tokens(cfg, context), kv_bytes_per_value)
    rows = []
    for row in memory_table(cfg):
        left = ram_bytes - row["weights_bytes"]
        if left <= 0:
            tokens = 0
        else:
            tokens = int(left // per_token) if per_token else context
        rows.append(
            {
                "format": row["format"],
                "weights_bytes": row["weights_bytes"],
                "left_bytes": left,
                "max_context_tokens": min(tokens, context),
                "fits_weights": left > 0,
                "fits_full_context": left >= full,
            }
        )
    return rows


def _kv_summary(cfg: ModelConfig) -> dict | None:
    if _is_encoder(cfg):
        return None
    context = cfg.max_position_embeddings
    return {
        "bytes_per_token_fp16": kv_cache_bytes(cfg, 1, 2.0),
        "bytes_per_token_fp32": kv_cache_bytes(cfg, 1, 4.0),
        "context": context,
        "cached_tokens_at_full_context": cached_tokens(cfg, context),
        "bytes_full_context_fp16": kv_cache_bytes(cfg, cached_tokens(cfg, context), 2.0),
    }


def size_report(cfg: ModelConfig, ram_gib: float | None = None) -> dict:
    """Everything `giraffe explain sizes` prints, as plain data."""
    context = cfg.max_position_embeddings
    report = {
        "config": cfg.to_dict(),
        "parameters": parameter_counts(cfg),
        "total_parameters": total_parameters(cfg),
        "memory": memory_table(cfg),
        "kv_cache": _kv_summary(cfg),
        "flops_per_token": {
            "first_token": flops_per_token(cfg, 1),  # attends to itself only
            "at_full_context": flops_per_token(cfg, context),
        },
    }
    if ram_gib is not None:
        if ram_gib <= 0:
            raise ValueError(f"--ram must be a positive number of GiB, got {ram_gib}.")
        report["ram_gib"] = ram_gib
        report["what_fits"] = what_fits(cfg, ram_gib * GIB)
    return report


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} TiB"


def human_count(n: float) -> str:
    """1234567 -> '1.23 M' (for FLOPs and parameters in tables)."""
    for unit in ("", " K", " M", " G", " T"):
        if abs(n) < 1000 or unit == " T":
            return f"{n:.3g}{unit}"
        n /= 1000
    return f"{n:.3g} T"
