"""Hugging Face config.json <-> `ModelConfig`, and which files a model folder holds.

What `giraffe info` and the loaders read before any tensor: the family a model_type
means, each family's fields, the folder's weight files. Imports no torch, so commands
that only describe a model start without it. It does not read tensors (`hf.py` does).
"""

from __future__ import annotations

import json
from pathlib import Path

from giraffe.config import ARCHITECTURES, BERT_WIRING, GPT2_WIRING, ConfigError, ModelConfig
from giraffe.formats.hf_families import (
    MODEL_TYPES,
    family_config,
    family_config_to_hf,
    rope_decoder_to_hf,
)
from giraffe.formats.hf_t5 import t5_config, t5_config_to_hf
from giraffe.formats.names import WeightsError

# model_type in config.json -> giraffe family
HF_FAMILIES = {
    "llama": "llama",
    "mistral": "llama",
    "qwen2": "llama",
    "smollm": "llama",
    "gpt2": "gpt2",
    "bert": "bert",
    "t5": "t5",
    **MODEL_TYPES,
}
# Hugging Face's names for the activations giraffe has.
HF_ACTIVATIONS = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh"}


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path} not found: a Hugging Face model folder needs it") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path} is not valid JSON ({e.msg} at line {e.lineno})") from None


def config_from_hf(raw: dict, source: str = "config.json") -> ModelConfig:
    model_type = raw.get("model_type")
    if model_type not in HF_FAMILIES:
        known = ", ".join(sorted(HF_FAMILIES))
        raise ConfigError(
            f"{source}: model_type {model_type!r} is not supported (giraffe runs {known})"
        )
    if HF_FAMILIES[model_type] == "gpt2":
        return _gpt2_config(raw)
    if HF_FAMILIES[model_type] == "bert":
        return _bert_config(raw, source)
    if HF_FAMILIES[model_type] == "t5":
        return t5_config(raw, source)
    if model_type in MODEL_TYPES:
        return family_config(raw, model_type, source)
    return _llama_config(raw, model_type)


def model_kind(path: Path) -> str:
    """ "encoder", "decoder" or "encoder-decoder" for a model file or folder, from its config.json.

    A GGUF file (or anything without a readable config.json) counts as a decoder: the
    loaders that follow give their own errors for what they cannot read.
    """
    config = Path(path) / "config.json"
    if not config.is_file():
        return "decoder"
    family = HF_FAMILIES.get(read_json(config).get("model_type"))
    return ARCHITECTURES.get(family, "decoder")


def _llama_config(raw: dict, model_type: str) -> ModelConfig:
    act = raw.get("hidden_act", "silu")
    if act != "silu":
        raise ConfigError(
            f"config.json: hidden_act {act!r} is not supported for {model_type} (only silu)"
        )
    rope = raw.get("rope_parameters") or {}
    scaling = raw.get("rope_scaling") or (
        rope if rope.get("rope_type", "default") != "default" else None
    )
    if scaling:
        scaling = tuple(
            sorted((k, v) for k, v in scaling.items() if isinstance(v, (int, float, str)))
        )
    is_qwen2 = model_type == "qwen2"
    window = raw.get("sliding_window")
    if is_qwen2 and not raw.get("use_sliding_window", False):
        window = None
    return ModelConfig(
        arch="llama",
        vocab_size=raw["vocab_size"],
        hidden_size=raw["hidden_size"],
        n_layers=raw["num_hidden_layers"],
        n_heads=raw["num_attention_heads"],
        n_kv_heads=raw.get("num_key_value_heads") or raw["num_attention_heads"],
        head_dim=raw.get("head_dim"),
        intermediate_size=raw["intermediate_size"],
        max_position_embeddings=raw.get("max_position_embeddings", 2048),
        norm_eps=raw.get("rms_norm_eps", 1e-6),
        rope_theta=float(raw.get("rope_theta", rope.get("rope_theta", 10000.0))),
        rope_scaling=scaling or None,
        attention_bias=is_qwen2 or bool(raw.get("attention_bias", False)),
        attention_out_bias=(not is_qwen2) and bool(raw.get("attention_bias", False)),
        mlp_bias=bool(raw.get("mlp_bias", False)),
        tie_embeddings=bool(raw.get("tie_word_embeddings", False)),
        sliding_window=window,
    )


def _gpt2_config(raw: dict) -> ModelConfig:
    act = raw.get("activation_function", "gelu_new")
    acts = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu"}
    if act not in acts:
        raise ConfigError(f"config.json: activation_function {act!r} is not supported for gpt2")
    width = raw["n_embd"]
    return ModelConfig(
        **{**GPT2_WIRING, "activation": acts[act]},
        vocab_size=raw["vocab_size"],
        hidden_size=width,
        n_layers=raw["n_layer"],
        n_heads=raw["n_head"],
        intermediate_size=raw.get("n_inner") or 4 * width,
        max_position_embeddings=raw.get("n_positions", 1024),
        norm_eps=raw.get("layer_norm_epsilon", 1e-5),
        tie_embeddings=bool(raw.get("tie_word_embeddings", True)),
    )


def _bert_config(raw: dict, source: str) -> ModelConfig:
    act = raw.get("hidden_act", "gelu")
    if act not in HF_ACTIVATIONS:
        raise ConfigError(f"{source}: hidden_act {act!r} is not supported for bert")
    position = raw.get("position_embedding_type", "absolute")
    if position != "absolute":
        raise ConfigError(
            f"{source}: position_embedding_type {position!r} is not supported (only absolute)"
        )
    if raw.get("is_decoder") or raw.get("add_cross_attention"):
        raise ConfigError(f"{source}: BERT as a decoder is not supported; giraffe's is an encoder")
    return ModelConfig(
        **{
            **BERT_WIRING,
            "activation": HF_ACTIVATIONS[act],
            "norm_eps": raw.get("layer_norm_eps", 1e-12),
            "type_vocab_size": raw.get("type_vocab_size", 2),
        },
        vocab_size=raw["vocab_size"],
        hidden_size=raw["hidden_size"],
        n_layers=raw["num_hidden_layers"],
        n_heads=raw["num_attention_heads"],
        intermediate_size=raw["intermediate_size"],
        max_position_embeddings=raw.get("max_position_embeddings", 512),
        tie_embeddings=bool(raw.get("tie_word_embeddings", True)),
    )


def _bert_config_to_hf(cfg: ModelConfig, mlm_head: bool) -> dict:
    return {
        "model_type": "bert",
        "architectures": ["BertForMaskedLM" if mlm_head else "BertModel"],
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads,
        "intermediate_size": cfg.intermediate_size,
        "max_position_embeddings": cfg.max_position_embeddings,
        "type_vocab_size": cfg.type_vocab_size,
        "layer_norm_eps": cfg.norm_eps,
        "hidden_act": {"gelu": "gelu", "gelu_tanh": "gelu_new"}[cfg.activation],
        "position_embedding_type": "absolute",
        "tie_word_embeddings": True,
    }


def config_to_hf(cfg: ModelConfig, mlm_head: bool = True) -> dict:
    """config.json for `cfg`; mlm_head says whether an encoder carries its MLM head."""
    if cfg.arch == "bert":
        return _bert_config_to_hf(cfg, mlm_head)
    if cfg.arch == "t5":
        return t5_config_to_hf(cfg)
    if cfg.arch in MODEL_TYPES.values():
        return family_config_to_hf(cfg)
    if cfg.arch == "gpt2":
        return {
            "model_type": "gpt2",
            "architectures": ["GPT2LMHeadModel"],
            "vocab_size": cfg.vocab_size,
            "n_embd": cfg.hidden_size,
            "n_layer": cfg.n_layers,
            "n_head": cfg.n_heads,
            "n_inner": cfg.intermediate_size,
            "n_positions": cfg.max_position_embeddings,
            "layer_norm_epsilon": cfg.norm_eps,
            "activation_function": {"gelu_tanh": "gelu_new", "gelu": "gelu"}[cfg.activation],
            "tie_word_embeddings": cfg.tie_embeddings,
        }
    if cfg.rope_freq_factors is not None and not cfg.rope_scaling:
        raise ConfigError(
            "this model's RoPE frequencies come from a GGUF rope_freqs tensor, which a "
            "Hugging Face config.json cannot express; set rope_scaling (e.g. llama3) to save it"
        )
    # q/k/v biases without an output bias is exactly Qwen2's layout.
    model_type = "qwen2" if cfg.attention_bias and not cfg.attention_out_bias else "llama"
    if model_type == "llama" and cfg.sliding_window:
        model_type = "mistral"
    return {
        "model_type": model_type,
        "architectures": [
            {"llama": "Llama", "qwen2": "Qwen2", "mistral": "Mistral"}[model_type] + "ForCausalLM"
        ],
        **rope_decoder_to_hf(cfg),
        "rms_norm_eps": cfg.norm_eps,
        "hidden_act": "silu",
        "attention_bias": cfg.attention_out_bias,
        "mlp_bias": cfg.mlp_bias,
        "sliding_window": cfg.sliding_window,
    }


def weight_files(folder: Path) -> list[Path]:
    index = folder / "model.safetensors.index.json"
    if index.exists():
        shards = sorted(set(read_json(index)["weight_map"].values()))
        return [folder / s for s in shards]
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise WeightsError(
            f"{folder} has no *.safetensors weights (pytorch .bin files are not read)"
        )
    return files
