"""GGUF metadata <-> `ModelConfig`, as llama.cpp's converter writes it and llama.cpp reads it.

Some facts are not in a GGUF file's keys but in llama.cpp's code, and are reproduced
here: Gemma's query scale (1/sqrt(head_dim), or 1/sqrt(width/heads) for the 27B
models), its fixed pattern of sliding and global layers (Gemma 2: every other one,
Gemma 3: one in six) and Gemma 3's local RoPE base (10000). Llama 3.1's RoPE scaling
travels as a `rope_freqs` tensor of per-frequency divisors (`rope_freq_factors`).
llama.cpp runs Phi-3 without its sliding window (transformers and giraffe apply it).
Where a config differs from what llama.cpp would assume, the writer stores the value
under the matching GGUF key (giraffe reads it back) and warns that llama.cpp will not.
This module opens files and reads and writes metadata only, with no torch (`giraffe
info` starts without it); tensors are `giraffe.formats.gguf`'s.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np

from giraffe.config import (
    GEMMA2_WIRING,
    GEMMA3_WIRING,
    GPT2_WIRING,
    GPTNEOX_WIRING,
    PHI3_WIRING,
    QWEN3_WIRING,
    ConfigError,
    ModelConfig,
    periodic_layer_types,
)
from giraffe.files.gguf_reader import FastGGUFReader, GGUFFormatError
from giraffe.formats.names import GGUF_ROPE_FREQS, WeightsError

# general.architecture -> giraffe family
GGUF_FAMILIES = {
    "llama": "llama",
    "qwen2": "llama",
    "mistral": "llama",
    "qwen3": "qwen3",
    "gemma2": "gemma2",
    "gemma3": "gemma3",
    "phi3": "phi3",
    "gptneox": "gptneox",
    "gpt2": "gpt2",
}
# Each family's wiring beyond the Llama defaults (see giraffe.config).
_WIRING = {
    "qwen3": QWEN3_WIRING,
    "gemma2": GEMMA2_WIRING,
    "gemma3": GEMMA3_WIRING,
    "phi3": PHI3_WIRING,
    "gptneox": GPTNEOX_WIRING,
}
# llama.cpp's fixed sliding/global layer periods, its Gemma 3 local RoPE base, and the
# layer counts of the 27B Gemmas whose query scale is 1/sqrt(width / heads).
_SWA_PERIOD = {"gemma2": 2, "gemma3": 6}
_GEMMA3_LOCAL_THETA = 10000.0
_GEMMA_27B_LAYERS = {"gemma2": 46, "gemma3": 62}


def open_gguf(path: str | os.PathLike):
    """A GGUF file's reader (header parsed, tensors mapped, none read), or WeightsError
    saying what is wrong with the file."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path} does not exist or is not a file")
    try:
        return FastGGUFReader(path)
    except GGUFFormatError as e:
        raise WeightsError(f"{e}; re-download or re-convert it") from None
    except (OSError, ValueError) as e:
        raise WeightsError(
            f"{path} is not a readable GGUF file ({e}); re-download or re-convert it"
        ) from None


def field(reader, key: str, default=None):
    f = reader.fields.get(key)
    return default if f is None else f.contents()


def config_from_gguf(reader, source: str = "GGUF") -> ModelConfig:
    arch = field(reader, "general.architecture")
    if arch not in GGUF_FAMILIES:
        if arch is None:
            raise ConfigError(f"{source}: metadata key general.architecture is missing")
        known = ", ".join(sorted(GGUF_FAMILIES))
        raise ConfigError(
            f"{source}: architecture {arch!r} is not supported (giraffe runs {known})"
        )

    def get(key, default=None):
        value = field(reader, f"{arch}.{key}", default)
        if value is None:
            raise ConfigError(f"{source}: metadata key {arch}.{key} is missing")
        return value

    tensors = {t.name: t for t in reader.tensors}
    family = GGUF_FAMILIES[arch]
    n_heads = int(get("attention.head_count"))
    width = int(get("embedding_length"))
    common = dict(
        vocab_size=int(field(reader, f"{arch}.vocab_size") or _embedding_rows(tensors, source)),
        hidden_size=width,
        n_layers=int(get("block_count")),
        n_heads=n_heads,
        intermediate_size=int(get("feed_forward_length")),
        max_position_embeddings=int(get("context_length", 2048)),
        tie_embeddings="output.weight" not in tensors,
    )
    if family == "gpt2":
        eps = float(get("attention.layer_norm_epsilon", 1e-5))
        return ModelConfig(**GPT2_WIRING, norm_eps=eps, **common)
    head_dim = int(field(reader, f"{arch}.attention.key_length") or width // n_heads)
    rotary = int(get("rope.dimension_count", head_dim))
    wiring = dict(_WIRING.get(family, {"arch": "llama"}))
    if family == "gptneox":
        wiring["norm_eps"] = float(get("attention.layer_norm_epsilon", 1e-5))
        wiring["parallel_residual"] = bool(get("use_parallel_residual", True))
    else:
        wiring["norm_eps"] = float(get("attention.layer_norm_rms_epsilon", 1e-5))
    if "rope_factors_long" in tensors:
        raise ConfigError(f"{source}: LongRoPE (rope_factors_long/short) is not supported")
    # what the tensors present say wins over the family's usual wiring
    for key in ("tie_embeddings", "attention_bias", "attention_out_bias", "mlp_bias", "norm_bias"):
        wiring.pop(key, None)
    cfg = dict(
        **{**common, **wiring},
        n_kv_heads=int(get("attention.head_count_kv", n_heads)),
        head_dim=head_dim,
        rotary_dim=rotary if rotary != head_dim else None,
        rope_theta=float(get("rope.freq_base", 10000.0)),
        rope_scaling=_rope_scaling(reader, arch, source),
        rope_freq_factors=_freq_factors(tensors),
        attention_bias="blk.0.attn_q.bias" in tensors or "blk.0.attn_qkv.bias" in tensors,
        attention_out_bias="blk.0.attn_output.bias" in tensors,
        mlp_bias="blk.0.ffn_up.bias" in tensors,
        norm_bias="blk.0.attn_norm.bias" in tensors,
        sliding_window=field(reader, f"{arch}.attention.sliding_window"),
    )
    if family in _SWA_PERIOD:
        cfg.update(_gemma_fields(reader, arch, cfg, get))
    return ModelConfig(**cfg)


def _gemma_fields(reader, arch: str, cfg: dict, get) -> dict:
    out = dict(
        attn_softcap=field(reader, f"{arch}.attn_logit_softcapping"),
        final_softcap=field(reader, f"{arch}.final_logit_softcapping"),
        query_scale=float(
            field(reader, f"{arch}.attention.scale") or _llama_cpp_query_scale(arch, cfg)
        ),
        sliding_window=int(get("attention.sliding_window")),
    )
    pattern = field(reader, f"{arch}.attention.sliding_window_pattern")
    if isinstance(pattern, list):  # one bool per layer: True = sliding
        out["layer_types"] = tuple("sliding" if p else "full" for p in pattern)
    else:
        out["layer_types"] = periodic_layer_types(
            cfg["n_layers"], int(pattern or _SWA_PERIOD[arch])
        )
    if arch == "gemma3":
        out["rope_local_theta"] = float(
            field(reader, f"{arch}.rope.freq_base_swa") or _GEMMA3_LOCAL_THETA
        )
    return out


def _llama_cpp_query_scale(arch: str, cfg: dict) -> float:
    if cfg["n_layers"] == _GEMMA_27B_LAYERS[arch]:
        return (cfg["hidden_size"] / cfg["n_heads"]) ** -0.5
    return cfg["head_dim"] ** -0.5


def _rope_scaling(reader, arch: str, source: str):
    kind = field(reader, f"{arch}.rope.scaling.type")
    factor = field(reader, f"{arch}.rope.scaling.factor")
    if kind in (None, "none") and not factor:
        return None
    if kind not in (None, "linear"):
        raise ConfigError(
            f"{source}: rope scaling {kind!r} is not supported (giraffe knows linear)"
        )
    return (("factor", float(factor)), ("rope_type", "linear"))


def _freq_factors(tensors: dict) -> tuple[float, ...] | None:
    t = tensors.get(GGUF_ROPE_FREQS)
    if t is None:
        return None
    return tuple(float(v) for v in np.asarray(t.data, dtype=np.float32).reshape(-1))


def _embedding_rows(tensors: dict, source: str) -> int:
    t = tensors.get("token_embd.weight")
    if t is None:
        raise WeightsError(f"{source}: the GGUF file has no token_embd.weight tensor")
    return int(t.shape[1])


def gguf_arch(cfg: ModelConfig) -> str:
    """The general.architecture llama.cpp runs this config as."""
    if cfg.arch == "llama":
        return "qwen2" if cfg.attention_bias else "llama"
    return cfg.arch


def write_hparams(writer, cfg: ModelConfig) -> dict[str, np.ndarray]:
    """Write the architecture keys; returns the configuration tensors to store beside the
    weights (llama.cpp's `rope_freqs`)."""
    arch = gguf_arch(cfg)
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_block_count(cfg.n_layers)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(cfg.n_heads)
    writer.add_vocab_size(cfg.vocab_size)
    if cfg.arch == "gpt2":
        writer.add_layer_norm_eps(cfg.norm_eps)
        return {}
    writer.add_head_count_kv(cfg.kv_heads)
    writer.add_key_length(cfg.dim_per_head)
    writer.add_value_length(cfg.dim_per_head)
    writer.add_rope_dimension_count(cfg.rotary_dims)
    writer.add_rope_freq_base(cfg.rope_theta)
    if cfg.norm == "layernorm":
        writer.add_layer_norm_eps(cfg.norm_eps)
    else:
        writer.add_layer_norm_rms_eps(cfg.norm_eps)
    if cfg.arch == "gptneox":
        writer.add_parallel_residual(cfg.parallel_residual)
    if cfg.sliding_window:
        writer.add_sliding_window(cfg.sliding_window)
        if arch == "phi3":  # measured: llama.cpp's Phi-3 graph attends to every token
            _warn(f"sliding window of {cfg.sliding_window} tokens (llama.cpp ignores it for phi3)")
    scaling = cfg.rope_scaling_dict or {}
    kind = scaling.get("rope_type", scaling.get("type"))
    if kind == "linear":
        import gguf

        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(scaling["factor"]))
    if arch in _SWA_PERIOD:
        _write_gemma(writer, cfg, arch)
    factors = _rope_factors(cfg, kind)
    return {} if factors is None else {GGUF_ROPE_FREQS: factors}


def _write_gemma(writer, cfg: ModelConfig, arch: str) -> None:
    if cfg.attn_softcap is not None:
        writer.add_attn_logit_softcapping(cfg.attn_softcap)
    if cfg.final_softcap is not None:
        writer.add_final_logit_softcapping(cfg.final_softcap)
    shape = dict(n_layers=cfg.n_layers, hidden_size=cfg.hidden_size, n_heads=cfg.n_heads)
    expected = _llama_cpp_query_scale(arch, {**shape, "head_dim": cfg.dim_per_head})
    scale = cfg.query_scale or cfg.dim_per_head**-0.5
    if abs(scale - expected) > 1e-6 * expected:
        writer.add_attention_scale(scale)
        _warn(f"query scale {scale:.6g} (llama.cpp assumes {expected:.6g})")
    types = cfg.layer_types or ("sliding" if cfg.sliding_window else "full",) * cfg.n_layers
    if types != periodic_layer_types(cfg.n_layers, _SWA_PERIOD[arch]):
        writer.add_sliding_window_pattern([t == "sliding" for t in types])
        _warn("sliding/global layer pattern (llama.cpp assumes its fixed one)")
    local = cfg.rope_local_theta
    if arch == "gemma3" and local is not None and local != _GEMMA3_LOCAL_THETA:
        writer.add_rope_freq_base_swa(local)
        _warn(f"sliding layers' RoPE base {local} (llama.cpp assumes {_GEMMA3_LOCAL_THETA})")


def _warn(what: str) -> None:
    warnings.warn(
        f"this GGUF stores a {what}: giraffe reads it back, llama.cpp will not", stacklevel=3
    )


def _rope_factors(cfg: ModelConfig, kind: str | None) -> np.ndarray | None:
    """Llama 3.1 scaling as llama.cpp's converter stores it: default / scaled frequencies."""
    if cfg.rope_freq_factors is not None:
        return np.asarray(cfg.rope_freq_factors, dtype=np.float32)
    if kind != "llama3":
        return None
    from giraffe.nn.positions import rope_inverse_frequencies

    plain = rope_inverse_frequencies(cfg.rotary_dims, cfg.rope_theta, None)
    scaled = rope_inverse_frequencies(cfg.rotary_dims, cfg.rope_theta, cfg.rope_scaling_dict)
    return (plain / scaled).numpy().astype(np.float32)
