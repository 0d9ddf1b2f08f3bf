"""Tiny random Hugging Face models (built with `transformers`) for differential tests."""

from __future__ import annotations

import torch


def tiny_hf_model(kind: str):
    import transformers as tf

    common = dict(vocab_size=300, max_position_embeddings=128)
    if kind == "gpt2":
        cfg = tf.GPT2Config(n_embd=48, n_layer=2, n_head=4, n_positions=128, vocab_size=300)
        model = tf.GPT2LMHeadModel(cfg)
    else:
        llama_like = dict(
            hidden_size=48,
            intermediate_size=96,
            num_hidden_layers=2,
            num_attention_heads=6,
            num_key_value_heads=2,
            rms_norm_eps=1e-6,
            **common,
        )
        if kind == "llama":
            cfg = tf.LlamaConfig(rope_theta=10000.0, tie_word_embeddings=False, **llama_like)
            model = tf.LlamaForCausalLM(cfg)
        elif kind == "qwen2":
            cfg = tf.Qwen2Config(rope_theta=1e6, tie_word_embeddings=True, **llama_like)
            model = tf.Qwen2ForCausalLM(cfg)
        elif kind == "mistral":
            cfg = tf.MistralConfig(sliding_window=5, tie_word_embeddings=False, **llama_like)
            model = tf.MistralForCausalLM(cfg)
        else:
            raise ValueError(kind)
    with torch.no_grad():  # random init leaves biases at zero: make them count
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name or "ln_" in name:
                p.add_(torch.randn_like(p) * 0.1)
    return model.eval()


def hf_logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(ids).logits
