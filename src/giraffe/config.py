"""Model configuration: one frozen dataclass that describes every model giraffe runs.

A `ModelConfig` covers the decoders GPT-2 (learned positions, LayerNorm, GELU, biases,
tied embeddings) and the Llama family (RoPE, RMSNorm, SwiGLU, grouped-query attention):
Llama, Mistral, Qwen2 (q/k/v biases), SmolLM; and the BERT encoder (bidirectional
attention, learned positions, token types, post-LayerNorm, GELU), e.g. MiniLM.
Presets are plain data.

It does not know about files: reading `config.json` or GGUF metadata into a
`ModelConfig` lives in `giraffe.formats`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

# family -> what kind of model it is: `giraffe.models.decoder` wires decoders,
# `giraffe.models.encoder` encoders.
ARCHITECTURES = {"llama": "decoder", "gpt2": "decoder", "bert": "encoder"}


class ConfigError(ValueError):
    """A configuration value is missing, inconsistent or unsupported."""


@dataclass(frozen=True)
class ModelConfig:
    arch: str = "llama"  # family: "llama" (also Mistral, Qwen2, SmolLM), "gpt2" or "bert"
    vocab_size: int = 32000  # rows of the token embedding
    hidden_size: int = 512  # width of the residual stream (d_model)
    n_layers: int = 8  # transformer blocks
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
    activation: str = "silu"  # "silu", "gelu" (erf) or "gelu_tanh" (GPT-2's gelu_new)
    position: str = "rope"  # "rope" (rotary, Su et al. 2021) or "learned" (GPT-2)
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
                f"a{'n' if ARCHITECTURES[self.arch] == 'encoder' else ''} {ARCHITECTURES[self.arch]}"
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
        _check_choice("activation", self.activation, ("silu", "gelu", "gelu_tanh"))
        _check_choice("position", self.position, ("rope", "learned"))
        _check_choice("norm_position", self.norm_position, ("pre", "post"))
        if self.type_vocab_size < 0:
            raise ConfigError(f"type_vocab_size must be >= 0, got {self.type_vocab_size}")
        if self.kind == "encoder":
            _check_encoder(self)
        elif self.norm_position != "pre":
            raise ConfigError("giraffe's decoders are pre-norm: set norm_position='pre'")

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads or self.n_heads

    @property
    def dim_per_head(self) -> int:
        return self.head_dim or self.hidden_size // self.n_heads

    @property
    def rope_scaling_dict(self) -> dict[str, float] | None:
        return dict(self.rope_scaling) if self.rope_scaling else None

    def replace(self, **changes) -> ModelConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


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

# Presets are data: named configs, never subclasses.
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
    "gpt2-tiny": ModelConfig(
        **GPT2_WIRING,
        vocab_size=512,
        hidden_size=64,
        n_layers=2,
        n_heads=4,
        intermediate_size=256,
        max_position_embeddings=256,
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
