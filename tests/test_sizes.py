"""Parameter counts from a config equal the real model's; memory arithmetic is right."""

from __future__ import annotations

import pytest

from giraffe.config import PRESETS
from giraffe.explain.sizes import (
    SIZE_PRESETS,
    flops_per_token,
    kv_cache_bytes,
    memory_table,
    preset,
    size_report,
    total_parameters,
    what_fits,
)
from giraffe.models import Decoder, Encoder, build_model


def build(cfg):
    """The model a config describes; encoders without a masked-LM head (as MiniLM ships)."""
    return Encoder(cfg, mlm_head=False) if cfg.kind == "encoder" else build_model(cfg)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_counted_parameters_equal_the_model(name):
    cfg = PRESETS[name]
    if cfg.n_layers * cfg.hidden_size > 4_000:  # base sizes: shapes only, no 0.5 GB of weights
        import torch

        with torch.device("meta"):
            model = build(cfg)
    else:
        model = build(cfg)
    assert total_parameters(cfg) == model.num_parameters()


def test_smollm2_numbers():
    cfg = PRESETS["smollm2-135m"]
    assert total_parameters(cfg) == 134_515_008
    # 2 (k and v) x 30 layers x 3 kv heads x 64 dims x 4 bytes = 46,080 bytes per token
    assert kv_cache_bytes(cfg, 1) == 46_080
    fp16 = next(r for r in memory_table(cfg) if r["format"].startswith("fp16"))
    assert fp16["weights_bytes"] == 2 * 134_515_008


# ---- hypothetical presets, KV cache, FLOPs, what fits ----------------------------------

# Published parameter counts (each model card / config on the Hugging Face hub).
PUBLISHED = {
    "llama2-7b": 6_738_415_616,
    "llama2-13b": 13_015_864_320,
    "llama3-8b": 8_030_261_248,
    "mistral-7b": 7_241_732_096,
    "qwen2-0.5b": 494_032_768,
}


@pytest.mark.parametrize("name", sorted(SIZE_PRESETS))
def test_hypothetical_presets_match_their_models_and_published_counts(name):
    import torch

    cfg = SIZE_PRESETS[name]
    with torch.device("meta"):  # shapes only: no 7B of memory
        model = Decoder(cfg)
    assert total_parameters(cfg) == model.num_parameters() == PUBLISHED[name]


def test_llama2_7b_is_about_14_gb_in_fp16():
    rows = {r["format"]: r for r in memory_table(preset("llama2-7b"))}
    assert rows["fp16/bf16"]["weights_bytes"] == pytest.approx(13.48e9, rel=1e-3)
    assert (
        rows["Q4_K"]["bytes_per_weight"] == 4.5 / 8 and rows["Q5_K"]["bytes_per_weight"] == 5.5 / 8
    )
    # 2 x 32 layers x 32 kv heads x 128 dims x 2 bytes = 512 KiB per token in fp16
    assert kv_cache_bytes(preset("llama2-7b"), 1, 2.0) == 512 * 1024


@pytest.mark.parametrize("name", ["llama-tiny", "gpt2-tiny"])
def test_kv_cache_bytes_equal_the_real_cache(name):
    model = Decoder(PRESETS[name])
    cache = model.new_cache(1, 37)
    real = cache.k.numel() * cache.k.element_size() + cache.v.numel() * cache.v.element_size()
    assert kv_cache_bytes(PRESETS[name], 37, 4.0) == real


@pytest.mark.parametrize("name", ["llama-tiny", "gpt2-tiny"])
def test_flops_equal_torchs_count(name):
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    cfg, T = PRESETS[name], 9
    model = Decoder(cfg)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        # The reference attention computes every query against every key (masked ones too):
        # T tokens, each reading T keys.
        model(torch.zeros(1, T, dtype=torch.long), attention_weights=[])
    assert counter.get_total_flops() == T * flops_per_token(cfg, T)


def test_sliding_window_caps_the_cache():
    cfg = preset("mistral-7b")
    report = size_report(cfg)
    assert report["kv_cache"]["cached_tokens_at_full_context"] == 4096
    assert flops_per_token(cfg, 32768) == flops_per_token(cfg, 4096)


def test_what_fits():
    cfg = preset("llama2-7b")
    rows = {r["format"]: r for r in size_report(cfg, ram_gib=16)["what_fits"]}
    assert not rows["fp32"]["fits_weights"] and rows["fp32"]["max_context_tokens"] == 0
    fp16 = rows["fp16/bf16"]
    assert fp16["fits_weights"] and fp16["fits_full_context"]
    left = 16 * 1024**3 - total_parameters(cfg) * 2
    assert fp16["left_bytes"] == left
    tight = {r["format"]: r for r in what_fits(cfg, total_parameters(cfg) * 2 + 100 * 512 * 1024)}
    assert tight["fp16/bf16"]["max_context_tokens"] == 100
    assert not tight["fp16/bf16"]["fits_full_context"]
    with pytest.raises(ValueError, match="positive"):
        size_report(cfg, ram_gib=0)
    with pytest.raises(ValueError, match="no preset called 'llama9'"):
        preset("llama9")


def test_encoders_have_no_kv_cache():
    report = size_report(PRESETS["minilm-l6"], ram_gib=1)
    assert report["kv_cache"] is None and "output head" not in report["parameters"]
    assert report["parameters"]["token-type embedding"] == 2 * 384
    assert all(r["max_context_tokens"] == 512 for r in report["what_fits"])


@pytest.mark.slow
def test_minilm_counts_its_loaded_parameters():
    import giraffe
    from giraffe.formats.inspect import describe

    cfg, _ = describe("minilm-l6")
    assert total_parameters(cfg) == giraffe.load("minilm-l6").model.num_parameters()


@pytest.mark.slow
def test_smollm2_file_config_counts_its_loaded_parameters():
    import giraffe
    from giraffe.formats.inspect import describe

    cfg, _ = describe("smollm2-135m-instruct")
    model = giraffe.load("smollm2-135m-instruct", packed=False).model
    assert total_parameters(cfg) == model.num_parameters() == 134_515_008
