"""Model configuration: one frozen dataclass that describes every model giraffe runs.

A `ModelConfig` covers the decoders GPT-2 (learned positions, LayerNorm, GELU, biases,
tied embeddings) and the Llama family (RoPE, RMSNorm, SwiGLU, grouped-query attention):
Llama, Mistral, Qwen2 (q/k/v biases), SmolLM; the BERT encoder (bidirectional
attention, learned positions, token types, post-LayerNorm, GELU), e.g. MiniLM; and the
T5 encoder-decoder (Raffel et al. 2020: cross-attention, bucketed relative position
biases, RMSNorm without bias, no biases anywhere). Presets are plain data: `PRESETS`
holds one "{arch}-{size}" entry per size ("tiny" for tests, "small" to train on a CPU
in minutes, "base" for the published base shapes) plus the shapes of real checkpoints.

It does not know about files: reading `config.json` or GGUF metadata into a
`ModelConfig` lives in `giraffe.formats`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

# family -> what kind of model it is: `giraffe.models.decoder` wires decoders,
# `giraffe.models.encoder` encoders, `giraffe.models.seq2seq` encoder-decoders.
# The decoder families beyond Llama differ from a Llama block only in the wiring fields
# below (qk_norm, norm_offset, sandwich_norm, ...): `arch` names the family so that file
# formats map cleanly (Hugging Face `model_type`, GGUF `general.architecture`, the tensor
# names), while the model code reads the fields, never the name. docs/architectures.md
# has the table.
ARCHITECTURES = {
    "llama": "decoder",  # Llama 1-3, Mistral, Qwen2, SmolLM
    "qwen3": "decoder",
    "gemma2": "decoder",
    "gemma3": "decoder",
    "phi3": "decoder",
    "gptneox": "decoder",  # GPT-NeoX, Pythia
    "gpt2": "decoder",
    "bert": "encoder",
    "t5": "encoder-decoder",
}
LAYER_TYPES = ("full", "sliding")  # attention over all earlier tokens / the last sliding_window


class ConfigError(ValueError):
    """A configuration value is missing, inconsistent or unsupported."""


class InputError(ValueError):
    """A request that cannot be served as asked (a text, a question, a name); the message
    says what to change. The packages that take such input (explain, rag, the embedder)
    raise their own subclasses, so that a server, which may not import them, answers
    exactly these with a 400 and any other error, a plain ValueError included, with a 500."""


@dataclass(frozen=True)
class ModelConfig:
    arch: str = (
        "llama"  # family, a key of ARCHITECTURES ("llama" also covers Mistral, Qwen2, SmolLM)
    )
    vocab_size: int = 32000  # rows of the token embedding
    hidden_size: int = 512  # width of the residual stream (d_model)
    n_layers: int = 8  # transformer blocks (of the encoder, in an encoder-decoder)
    n_heads: int = 8  # query heads
    n_kv_heads: int | None = None  # key/value heads (grouped-query attention); None = n_heads
    head_dim: int | None = None  # per-head width; None = hidden_size // n_heads
    intermediate_size: int = 1376  # MLP hidden width
    max_position_embeddings: int = 2048  # context length the model was trained for
    norm: str = "rmsnorm"  # "rmsnorm" (Llama) or "layernorm" (GPT-2)
    norm_eps: float = 1e-5  # epsilon inside the normalisation
    mlp: str = (
        "gated"  # "gated" = SwiGLU-style gate*up (Llama), "plain" = up -> act -> down (GPT-2)
    )
    activation: str = "silu"  # "silu", "gelu" (erf), "gelu_tanh" (GPT-2's gelu_new) or "relu" (T5)
    # "rope" (rotary, Su et al. 2021), "learned" (GPT-2, BERT) or "relative" (T5's bucketed
    # relative position bias added to the attention scores, Raffel et al. 2020 section 2.1)
    position: str = "rope"
    rope_theta: float = 10000.0  # RoPE base frequency
    rope_scaling: tuple[tuple[str, float], ...] | None = (
        None  # e.g. (("rope_type","llama3"),...), as sorted items
    )
    attention_bias: bool = False  # biases on q/k/v projections (Qwen2, GPT-2)
    attention_out_bias: bool = False  # bias on the output projection (GPT-2)
    mlp_bias: bool = False  # biases on MLP projections (GPT-2)
    norm_bias: bool = False  # LayerNorm with a bias (GPT-2)
    tie_embeddings: bool = True  # output head shares the token embedding matrix
    sliding_window: int | None = None  # Mistral-style local attention span; None = full
    # "decoder" (causal, predicts the next token) or "encoder" (bidirectional, BERT);
    # None = the kind of `arch` (filled in, so a built config always names it).
    kind: str | None = None
    type_vocab_size: int = 0  # rows of the token-type (segment) embedding; 0 = none (BERT: 2)
    # Where each block normalises: "pre" = x + f(norm(x)) (GPT-2, Llama), "post" =
    # norm(x + f(x)) (BERT, Vaswani et al. 2017).
    norm_position: str = "pre"
    # Encoder-decoder only (T5). Relative positions: distances fall into this many
    # buckets, exact near zero and log-spaced up to relative_max_distance, beyond which
    # all share the last bucket.
    relative_buckets: int = 32
    relative_max_distance: int = 128
    n_decoder_layers: int | None = None  # decoder blocks; None = n_layers
    decoder_start_id: int = 0  # the token the decoder reads first (T5: the pad id, 0)
    # --- Decoder wiring beyond a Llama block; every default is Llama's. ---
    qk_norm: bool = False  # per-head RMSNorm on q and k before RoPE (Qwen3, Gemma 3)
    # RMSNorm multiplies by (norm_offset + w) in float32: Gemma stores w around 0 and
    # uses (1 + w); 0 = Llama's plain w. Applies to every RMSNorm of the model.
    norm_offset: float = 0.0
    # A second norm on the attention and MLP outputs before each residual add:
    # x + post(attn(pre(x))) (Gemma 2/3's "sandwich" norms).
    sandwich_norm: bool = False
    scale_embed: bool = (
        False  # token embeddings times sqrt(hidden_size), in the model dtype (Gemma)
    )
    query_scale: float | None = (
        None  # multiplies q.k; None = head_dim^-1/2 (Gemma: query_pre_attn_scalar^-1/2)
    )
    attn_softcap: float | None = (
        None  # scores -> cap * tanh(scores / cap) before the mask (Gemma 2)
    )
    final_softcap: float | None = None  # logits -> cap * tanh(logits / cap) (Gemma 2)
    parallel_residual: bool = False  # x + attn(norm1(x)) + mlp(norm2(x)) (GPT-NeoX, GPT-J)
    rotary_dim: int | None = None  # leading dims of each head RoPE rotates; None = all (NeoX: 1/4)
    # Per layer "full" or "sliding" (only sliding layers use `sliding_window`); None = all
    # layers alike: sliding when sliding_window is set (Mistral). Gemma 2 alternates,
    # Gemma 3 has five sliding layers to one full.
    layer_types: tuple[str, ...] | None = None
    # RoPE base of the sliding layers, unscaled (Gemma 3: 10000); None = the full layers'
    # rope (rope_theta, rope_scaling, rope_freq_factors), as in every other family.
    rope_local_theta: float | None = None
    # Divisors of each RoPE inverse frequency (head_dim/2 values): llama.cpp stores Llama
    # 3.1's frequency scaling as a `rope_freqs` tensor; applied after rope_scaling.
    rope_freq_factors: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if self.arch not in ARCHITECTURES:
            raise ConfigError(
                f"architecture {self.arch!r} is not supported; giraffe runs {', '.join(ARCHITECTURES)}"
            )
        if self.kind is None:  # frozen: the one place a field is filled in after the fact
            object.__setattr__(self, "kind", ARCHITECTURES[self.arch])
        if self.kind != ARCHITECTURES[self.arch]:
            raise ConfigError(
                f"kind={self.kind!r} does not fit arch={self.arch!r}, which is "
                f"a{'n' if ARCHITECTURES[self.arch][0] == 'e' else ''} {ARCHITECTURES[self.arch]}"
            )
        for name in ("vocab_size", "hidden_size", "n_layers", "n_heads", "intermediate_size"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        if self.n_heads % self.kv_heads:
            raise ConfigError(
                f"n_heads ({self.n_heads}) must be a multiple of n_kv_heads ({self.kv_heads})"
            )
        if self.head_dim is None and self.hidden_size % self.n_heads:
            raise ConfigError(
                f"hidden_size ({self.hidden_size}) is not divisible by n_heads ({self.n_heads}); "
                "set head_dim explicitly"
            )
        if self.position == "rope" and self.dim_per_head % 2:
            raise ConfigError(f"RoPE needs an even head_dim, got {self.dim_per_head}")
        _check_choice("norm", self.norm, ("rmsnorm", "layernorm"))
        _check_choice("mlp", self.mlp, ("gated", "plain"))
        _check_choice("activation", self.activation, ("silu", "gelu", "gelu_tanh", "relu"))
        _check_choice("position", self.position, ("rope", "learned", "relative"))
        _check_choice("norm_position", self.norm_position, ("pre", "post"))
        _check_wiring(self)
        if self.type_vocab_size < 0:
            raise ConfigError(f"type_vocab_size must be >= 0, got {self.type_vocab_size}")
        if self.kind == "encoder":
            _check_encoder(self)
        elif self.kind == "encoder-decoder":
            _check_seq2seq(self)
        elif self.norm_position != "pre":
            raise ConfigError("giraffe's decoders are pre-norm: set norm_position='pre'")
        elif self.position == "relative":
            raise ConfigError("relative position biases are T5's: decoders use 'rope' or 'learned'")

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads or self.n_heads

    @property
    def dim_per_head(self) -> int:
        return self.head_dim or self.hidden_size // self.n_heads

    @property
    def decoder_layers(self) -> int:
        return self.n_decoder_layers or self.n_layers

    @property
    def rotary_dims(self) -> int:
        return self.rotary_dim or self.dim_per_head

    def layer_window(self, layer: int) -> int | None:
        """The sliding window of this layer's attention; None = it sees every earlier token."""
        if self.layer_types is not None and self.layer_types[layer] != "sliding":
            return None
        return self.sliding_window

    def layer_local_rope(self, layer: int) -> bool:
        """Whether this layer takes the sliding layers' own RoPE (`rope_local_theta`)."""
        return self.rope_local_theta is not None and self.layer_window(layer) is not None

    @property
    def compiled_block(self) -> bool:
        """Whether the compiled decode step (giraffe.quant.decode_step, csrc/qmatmul.c's
        layer_step) implements this decoder's blocks: pre-norm (RMSNorm or LayerNorm, with
        or without biases), a gated or plain MLP with any of the four activations, RoPE
        over whole or partial heads or learned positions, biases on any projection, and
        any of the wiring in `_COMPILED_WIRING` (the flags layer_step carries) except
        parallel branches with sandwich norms (no family has both).

        RoPE tables (rope_theta, rope_scaling, rope_freq_factors, rope_local_theta) and
        learned positions are computed outside the block; final_softcap and scale_embed act
        outside the layers.
        """
        return (
            self.kind == "decoder"
            and self.position in ("rope", "learned")
            and not (self.parallel_residual and self.sandwich_norm)
            and not any(getattr(self, f) for f in _BLOCK_WIRING if f not in _COMPILED_WIRING)
        )

    @property
    def rope_scaling_dict(self) -> dict[str, float] | None:
        return dict(self.rope_scaling) if self.rope_scaling else None

    def replace(self, **changes) -> ModelConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# Wiring fields only `giraffe.models.decoder` implements; their defaults are falsy.
_BLOCK_WIRING = (
    "qk_norm", "norm_offset", "sandwich_norm", "scale_embed", "query_scale", "attn_softcap",
    "final_softcap", "parallel_residual", "rotary_dim", "layer_types", "rope_local_theta",
)  # fmt: skip


# The wiring among them the compiled decode step runs too (see compiled_block).
_COMPILED_WIRING = (
    "qk_norm", "norm_offset", "sandwich_norm", "scale_embed", "query_scale", "attn_softcap",
    "final_softcap", "layer_types", "rope_local_theta", "parallel_residual", "rotary_dim",
)  # fmt: skip


def _check_wiring(cfg: ModelConfig) -> None:
    """The decoder-only fields: set only on decoders, and consistent with each other."""
    if cfg.kind != "decoder":
        extra = [f for f in (*_BLOCK_WIRING, "rope_freq_factors") if getattr(cfg, f)]
        if extra:
            raise ConfigError(f"{', '.join(extra)} apply to decoders only, not a {cfg.kind}")
        return
    if cfg.layer_types is not None:
        if len(cfg.layer_types) != cfg.n_layers or not set(cfg.layer_types) <= set(LAYER_TYPES):
            raise ConfigError(
                f"layer_types must name {cfg.n_layers} layers, each one of {LAYER_TYPES}; "
                f"got {cfg.layer_types!r}"
            )
        if "sliding" in cfg.layer_types and not cfg.sliding_window:
            raise ConfigError("layer_types has sliding layers but sliding_window is not set")
    if cfg.sliding_window is not None and cfg.sliding_window < 1:
        raise ConfigError(f"sliding_window must be >= 1, got {cfg.sliding_window}")
    if cfg.rotary_dim is not None and not (
        0 < cfg.rotary_dim <= cfg.dim_per_head and cfg.rotary_dim % 2 == 0
    ):
        raise ConfigError(
            f"rotary_dim must be even and within head_dim ({cfg.dim_per_head}), got {cfg.rotary_dim}"
        )
    if cfg.rope_freq_factors is not None and len(cfg.rope_freq_factors) != cfg.rotary_dims // 2:
        raise ConfigError(
            f"rope_freq_factors has {len(cfg.rope_freq_factors)} values; RoPE over "
            f"{cfg.rotary_dims} dims needs {cfg.rotary_dims // 2}"
        )
    for name in ("attn_softcap", "final_softcap", "query_scale"):
        value = getattr(cfg, name)
        if value is not None and value <= 0:
            raise ConfigError(f"{name} must be positive, got {value}")
    if (cfg.qk_norm or cfg.norm_offset) and cfg.norm != "rmsnorm":
        raise ConfigError("qk_norm and norm_offset are RMSNorm features: set norm='rmsnorm'")


def _check_encoder(cfg: ModelConfig) -> None:
    """The wiring `giraffe.models.encoder` implements: BERT's, nothing else yet."""
    wanted = dict(position="learned", norm="layernorm", mlp="plain", norm_position="post")
    wrong = [f"{k}={getattr(cfg, k)!r}" for k, v in wanted.items() if getattr(cfg, k) != v]
    if wrong:
        raise ConfigError(
            f"giraffe's encoder is BERT-style ({', '.join(f'{k}={v!r}' for k, v in wanted.items())}); "
            f"this config has {', '.join(wrong)}"
        )
    if not cfg.tie_embeddings:
        raise ConfigError("the encoder's masked-LM head is tied to the word embeddings")
    if cfg.n_kv_heads not in (None, cfg.n_heads) or cfg.sliding_window is not None:
        raise ConfigError("the encoder has plain multi-head attention over the whole input")


def _check_seq2seq(cfg: ModelConfig) -> None:
    """The wiring `giraffe.models.seq2seq` implements: T5's (pre-norm, no biases)."""
    wanted = dict(position="relative", norm="rmsnorm", norm_position="pre", type_vocab_size=0)
    wrong = [f"{k}={getattr(cfg, k)!r}" for k, v in wanted.items() if getattr(cfg, k) != v]
    biases = ("attention_bias", "attention_out_bias", "mlp_bias", "norm_bias")
    wrong += [f"{b}=True" for b in biases if getattr(cfg, b)]
    if wrong:
        raise ConfigError(
            f"giraffe's encoder-decoder is T5-style ({', '.join(f'{k}={v!r}' for k, v in wanted.items())}, "
            f"no biases); this config has {', '.join(wrong)}"
        )
    if cfg.n_kv_heads not in (None, cfg.n_heads) or cfg.sliding_window is not None:
        raise ConfigError("the encoder-decoder has plain multi-head attention over the whole input")
    if cfg.mlp == "gated" and cfg.activation == "gelu":
        # T5's config.json spells gated GELU "gated-gelu", which means the tanh approximation.
        raise ConfigError("a gated T5 MLP uses activation='gelu_tanh' (T5 v1.1), not erf 'gelu'")
    if cfg.relative_buckets < 4 or cfg.relative_max_distance <= cfg.relative_buckets // 2:
        raise ConfigError(
            f"relative_buckets ({cfg.relative_buckets}) must be >= 4 and relative_max_distance "
            f"({cfg.relative_max_distance}) larger than half of it (T5: 32 and 128)"
        )
    if cfg.n_decoder_layers is not None and cfg.n_decoder_layers <= 0:
        raise ConfigError(f"n_decoder_layers must be positive, got {cfg.n_decoder_layers}")
    if not 0 <= cfg.decoder_start_id < cfg.vocab_size:
        raise ConfigError(
            f"decoder_start_id {cfg.decoder_start_id} is outside the vocabulary (0..{cfg.vocab_size - 1})"
        )


def _check_choice(field: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{field}={value!r} is not supported; choose one of {allowed}")


# GPT-2's wiring (Radford et al. 2019), shared by its presets.
GPT2_WIRING = dict(
    arch="gpt2",
    norm="layernorm",
    mlp="plain",
    activation="gelu_tanh",
    position="learned",
    attention_bias=True,
    attention_out_bias=True,
    mlp_bias=True,
    norm_bias=True,
)

# BERT's wiring (Devlin et al. 2019): learned positions, token types, post-LayerNorm
# blocks, erf GELU, biases everywhere, LayerNorm eps 1e-12; shared by its presets.
BERT_WIRING = dict(
    arch="bert",
    norm="layernorm",
    norm_eps=1e-12,
    norm_position="post",
    mlp="plain",
    activation="gelu",
    position="learned",
    attention_bias=True,
    attention_out_bias=True,
    mlp_bias=True,
    norm_bias=True,
    type_vocab_size=2,
)

# T5's wiring (Raffel et al. 2020, the original v1.0): RMSNorm without bias or mean
# ("T5LayerNorm"), eps 1e-6, pre-norm, bucketed relative position biases (32 buckets up
# to 128 tokens), no biases, ReLU MLP, head tied to the embedding (and scaled by
# hidden_size**-0.5). T5 v1.1 would be mlp="gated", activation="gelu_tanh", untied.
T5_WIRING = dict(
    arch="t5",
    norm="rmsnorm",
    norm_eps=1e-6,
    mlp="plain",
    activation="relu",
    position="relative",
    tie_embeddings=True,
)

# The families beyond Llama, as wiring on top of ModelConfig's Llama defaults (see
# docs/architectures.md). Shapes, windows and scales come from each checkpoint.
QWEN3_WIRING = dict(arch="qwen3", qk_norm=True, norm_eps=1e-6)
# Gemma 2 (Gemma Team 2024): (1 + w) RMSNorms before and after attention and MLP, GeGLU
# with tanh-GELU, embeddings scaled by sqrt(width), tied head, alternating local/global
# layers, soft-capped attention scores and logits.
GEMMA2_WIRING = dict(
    arch="gemma2",
    norm_eps=1e-6,
    norm_offset=1.0,
    sandwich_norm=True,
    scale_embed=True,
    activation="gelu_tanh",
    tie_embeddings=True,
)
# Gemma 3 (Gemma Team 2025): Gemma 2's block with QK-norm instead of soft-capping, and
# five sliding layers (their own RoPE base) to each global one.
GEMMA3_WIRING = dict(GEMMA2_WIRING, arch="gemma3", qk_norm=True)
PHI3_WIRING = dict(arch="phi3", tie_embeddings=False)  # a Llama block stored fused
# GPT-NeoX (Black et al. 2022) / Pythia: LayerNorm with biases, parallel attention and
# MLP, RoPE on a quarter of each head, biases everywhere, erf GELU, untied head.
GPTNEOX_WIRING = dict(
    arch="gptneox",
    norm="layernorm",
    norm_bias=True,
    mlp="plain",
    activation="gelu",
    attention_bias=True,
    attention_out_bias=True,
    mlp_bias=True,
    parallel_residual=True,
    tie_embeddings=False,
)


def periodic_layer_types(n_layers: int, period: int) -> tuple[str, ...]:
    """Every `period`-th layer full, the others sliding (Gemma 2: period 2, Gemma 3: 6)."""
    return tuple("full" if (i + 1) % period == 0 else "sliding" for i in range(n_layers))


# The tiny shape every family's "-tiny" preset shares (tests, and training in seconds).
_TINY = dict(
    vocab_size=512, hidden_size=64, n_layers=2, n_heads=4, intermediate_size=128,
    max_position_embeddings=256,
)  # fmt: skip

# Presets are data: named configs, never subclasses. "{arch}-tiny" builds in
# milliseconds (tests), "{arch}-small" trains on two CPU cores in minutes, "{arch}-base"
# is the published base shape of the family (a GPU's job). The trainer looks presets up
# as f"{arch}-{size}" and replaces vocab_size with its tokenizer's.
PRESETS: dict[str, ModelConfig] = {
    "llama-tiny": ModelConfig(
        vocab_size=512,
        hidden_size=64,
        n_layers=2,
        n_heads=4,
        n_kv_heads=2,
        intermediate_size=128,
        max_position_embeddings=256,
    ),
    # The other decoder families at the tiny size, wired as their checkpoints are.
    "qwen3-tiny": ModelConfig(**QWEN3_WIRING, **_TINY, n_kv_heads=2, head_dim=32),
    "gemma2-tiny": ModelConfig(
        **GEMMA2_WIRING,
        **_TINY,
        n_kv_heads=2,
        head_dim=32,
        query_scale=32**-0.5,
        sliding_window=32,
        layer_types=periodic_layer_types(2, 2),
        attn_softcap=50.0,
        final_softcap=30.0,
    ),  # fmt: skip
    "gemma3-tiny": ModelConfig(
        **{**GEMMA3_WIRING, **_TINY, "n_layers": 6},
        n_kv_heads=1,
        head_dim=32,
        query_scale=32**-0.5,
        sliding_window=32,
        layer_types=periodic_layer_types(6, 6),
        rope_theta=1e6,
        rope_local_theta=1e4,
    ),  # fmt: skip
    "phi3-tiny": ModelConfig(**PHI3_WIRING, **_TINY),
    "gptneox-tiny": ModelConfig(
        **GPTNEOX_WIRING, **{**_TINY, "intermediate_size": 256}, rotary_dim=4
    ),
    "gpt2-tiny": ModelConfig(
        **GPT2_WIRING,
        vocab_size=512,
        hidden_size=64,
        n_layers=2,
        n_heads=4,
        intermediate_size=256,
        max_position_embeddings=256,
    ),
    "llama-small": ModelConfig(
        vocab_size=8192,
        hidden_size=256,
        n_layers=6,
        n_heads=8,
        n_kv_heads=4,
        intermediate_size=688,
        max_position_embeddings=512,
    ),
    "gpt2-small": ModelConfig(
        **GPT2_WIRING,
        vocab_size=8192,
        hidden_size=256,
        n_layers=6,
        n_heads=8,
        intermediate_size=1024,
        max_position_embeddings=512,
    ),
    # SmolLM2-135M's shape (a Llama).
    "llama-base": ModelConfig(
        vocab_size=49152,
        hidden_size=576,
        n_layers=30,
        n_heads=9,
        n_kv_heads=3,
        intermediate_size=1536,
        max_position_embeddings=2048,
        rope_theta=100000.0,
    ),
    # GPT-2 "small" (124M), the published base shape.
    "gpt2-base": ModelConfig(
        **GPT2_WIRING,
        vocab_size=50257,
        hidden_size=768,
        n_layers=12,
        n_heads=12,
        intermediate_size=3072,
        max_position_embeddings=1024,
    ),
    "smollm2-135m": ModelConfig(
        vocab_size=49152,
        hidden_size=576,
        n_layers=30,
        n_heads=9,
        n_kv_heads=3,
        intermediate_size=1536,
        max_position_embeddings=8192,
        rope_theta=100000.0,
    ),
    "gpt2-124m": ModelConfig(
        **GPT2_WIRING,
        vocab_size=50257,
        hidden_size=768,
        n_layers=12,
        n_heads=12,
        intermediate_size=3072,
        max_position_embeddings=1024,
    ),
    "bert-tiny": ModelConfig(
        **BERT_WIRING,
        vocab_size=512,
        hidden_size=64,
        n_layers=2,
        n_heads=4,
        intermediate_size=256,
        max_position_embeddings=256,
    ),
    "bert-small": ModelConfig(
        **BERT_WIRING,
        vocab_size=30522,
        hidden_size=256,
        n_layers=4,
        n_heads=4,
        intermediate_size=1024,
        max_position_embeddings=512,
    ),
    # BERT-base (Devlin et al. 2019), 110M.
    "bert-base": ModelConfig(
        **BERT_WIRING,
        vocab_size=30522,
        hidden_size=768,
        n_layers=12,
        n_heads=12,
        intermediate_size=3072,
        max_position_embeddings=512,
    ),
    "t5-tiny": ModelConfig(
        **T5_WIRING,
        vocab_size=512,
        hidden_size=64,
        n_layers=2,
        n_heads=4,
        intermediate_size=128,
        max_position_embeddings=256,
    ),
    "t5-small": ModelConfig(
        **T5_WIRING,
        vocab_size=8192,
        hidden_size=256,
        n_layers=4,
        n_heads=4,
        intermediate_size=1024,
        max_position_embeddings=512,
    ),
    # T5-base (Raffel et al. 2020), 220M.
    "t5-base": ModelConfig(
        **T5_WIRING,
        vocab_size=32128,
        hidden_size=768,
        n_layers=12,
        n_heads=12,
        intermediate_size=3072,
        max_position_embeddings=512,
    ),
    # all-MiniLM-L6-v2's shape (Wang et al. 2020, MiniLM; Reimers & Gurevych 2019).
    "minilm-l6": ModelConfig(
        **BERT_WIRING,
        vocab_size=30522,
        hidden_size=384,
        n_layers=6,
        n_heads=12,
        intermediate_size=1536,
        max_position_embeddings=512,
    ),
}
