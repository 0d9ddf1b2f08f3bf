"""The families beyond Llama (Qwen3, Llama 3 rope scaling, Gemma 2/3, Phi-3, GPT-NeoX) against
transformers: tiny random models built here, loaded from their folders and through
giraffe's own GGUF round trip, cached decoding past the sliding window, continuous
batching, and the folders giraffe writes loaded back by transformers."""

from __future__ import annotations

import json
import shutil
import warnings

import pytest
import torch

from giraffe.config import ConfigError, ModelConfig
from giraffe.formats import load_hf, save_hf
from giraffe.formats.gguf import load_gguf, save_gguf
from giraffe.models import Decoder

FAMILIES = ["qwen3", "llama3", "llama3-tied", "gemma2", "gemma3", "phi3", "gptneox"]
ARCH = {"llama3": "llama", "llama3-tied": "llama"} | {f: f for f in FAMILIES if "llama" not in f}
VOCAB, SEQ = 300, 16  # SEQ > every window below, so the windows bite


def tiny_hf(kind: str, vocab: int = VOCAB):
    """A tiny random transformers model of this family, eager attention, non-trivial norms."""
    import transformers as tf

    c = dict(
        vocab_size=vocab, hidden_size=48, intermediate_size=96, num_hidden_layers=6,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=128,
    )  # fmt: skip
    if kind == "qwen3":
        model = tf.Qwen3ForCausalLM(tf.Qwen3Config(**c, tie_word_embeddings=False))
    elif kind.startswith("llama3"):
        scaling = dict(
            rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
            original_max_position_embeddings=16,
        )  # fmt: skip
        tied = kind.endswith("tied")
        cfg = tf.LlamaConfig(**c, rope_scaling=scaling, tie_word_embeddings=tied)
        model = tf.LlamaForCausalLM(cfg)
    elif kind == "gemma2":
        cfg = tf.Gemma2Config(
            **c, sliding_window=5, query_pre_attn_scalar=16, attn_logit_softcapping=4.0,
            final_logit_softcapping=2.0,
        )  # fmt: skip
        model = tf.Gemma2ForCausalLM(cfg)
    elif kind == "gemma3":
        # five sliding layers (own base) then a global one (linear scaling): the 5:1 pattern
        cfg = tf.Gemma3TextConfig(
            **c, sliding_window=5, query_pre_attn_scalar=16, rope_theta=1e6,
            rope_local_base_freq=1e4, rope_scaling={"rope_type": "linear", "factor": 2.0},
        )  # fmt: skip
        model = tf.Gemma3ForCausalLM(cfg)
    elif kind == "phi3":
        c = {k: v for k, v in c.items() if k != "head_dim"} | {"hidden_size": 64}
        cfg = tf.Phi3Config(
            **c, sliding_window=7, partial_rotary_factor=0.5, pad_token_id=0,
            bos_token_id=1, eos_token_id=2,
        )  # fmt: skip
        model = tf.Phi3ForCausalLM(cfg)
    elif kind == "gptneox":
        c = {k: v for k, v in c.items() if k not in ("head_dim", "num_key_value_heads")}
        cfg = tf.GPTNeoXConfig(**c | {"hidden_size": 64}, rotary_pct=0.25)
        model = tf.GPTNeoXForCausalLM(cfg)
    else:
        raise ValueError(kind)
    model.config._attn_implementation = "eager"  # soft-capping: transformers' reference path
    with torch.no_grad():  # random init leaves norms at 1 (or 0) and biases at 0
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.add_(torch.randn_like(p) * 0.3)
    return model.eval()


def hf_logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


@pytest.fixture(scope="module", params=FAMILIES)
def family(request, tmp_path_factory, tiny_folder):
    import giraffe

    torch.manual_seed(0)
    # the tiny tokenizer's size, so the folder also runs as a chat model (lm_folder)
    hf = tiny_hf(request.param, giraffe.load_tokenizer(tiny_folder).vocab_size)
    folder = tmp_path_factory.mktemp(request.param)
    hf.save_pretrained(folder)
    ids = torch.randint(0, VOCAB, (2, SEQ))
    return request.param, hf, folder, ids, hf_logits(hf, ids)


def test_folder_logits_match_transformers(family):
    kind, _, folder, ids, expected = family
    model = load_hf(folder)
    with torch.no_grad():
        torch.testing.assert_close(model(ids), expected, atol=1e-4, rtol=0)
    assert model.config.arch == ARCH[kind]


def test_gguf_round_trip_logits_match_transformers(family, tmp_path):
    _, _, folder, ids, expected = family
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a query scale llama.cpp would not assume (tested below)
        save_gguf(load_hf(folder), tmp_path / "m.gguf")
    model = load_gguf(tmp_path / "m.gguf")
    with torch.no_grad():
        torch.testing.assert_close(model(ids), expected, atol=1e-4, rtol=0)


def test_saved_folder_loads_in_transformers(family, tmp_path):
    import transformers as tf

    _, _, folder, ids, expected = family
    save_hf(load_hf(folder), tmp_path)
    theirs = tf.AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="eager")
    torch.testing.assert_close(hf_logits(theirs.eval(), ids), expected, atol=1e-4, rtol=0)


@torch.inference_mode()
def test_cached_decoding_equals_uncached_past_the_window(family):
    _, _, folder, ids, expected = family
    model = load_hf(folder)
    cache = model.new_cache(2, SEQ)
    prompt = 3
    steps = [model(ids[:, :prompt], cache=cache)[:, -1]]
    steps += [model(ids[:, t : t + 1], cache=cache)[:, -1] for t in range(prompt, SEQ)]
    torch.testing.assert_close(torch.stack(steps, 1), expected[:, prompt - 1 :], atol=1e-4, rtol=0)


# ---- giraffe-built configs: continuous batching, packed weights, the compiled-step gate ----


def gemma3_config(**changes) -> ModelConfig:
    from giraffe.config import GEMMA3_WIRING, periodic_layer_types

    base = dict(
        GEMMA3_WIRING, vocab_size=VOCAB, hidden_size=64, n_layers=6, n_heads=4, n_kv_heads=2,
        head_dim=32, intermediate_size=128, max_position_embeddings=128, sliding_window=4,
        layer_types=periodic_layer_types(6, 3), rope_theta=1e6, rope_local_theta=1e4,
        query_scale=0.2, attn_softcap=6.0, final_softcap=5.0,
    )  # fmt: skip
    return ModelConfig(**{**base, **changes})


def random_gemma3(**changes) -> Decoder:
    torch.manual_seed(0)
    model = Decoder(gemma3_config(**changes)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(torch.randn_like(p) * 0.3)
    return model


@torch.inference_mode()
def test_continuous_batching_per_layer_windows():
    from giraffe.nn.slot_cache import BatchView, RowView, SlotCache

    model = random_gemma3()
    cfg = model.config
    cache = SlotCache(cfg.n_layers, 3, cfg.kv_heads, 64, cfg.dim_per_head)
    seqs = [[5, 9, 2, 7, 1, 3, 8], [4, 4], [11, 12, 13, 14, 15]]
    for row, ids in enumerate(seqs):
        model.hidden(torch.tensor([ids]), cache=RowView(cache, row, len(ids)))
    for step in range(6):  # every row passes the window of 4
        tokens = [(7 * step + 3 * row) % 50 + 1 for row in range(3)]
        view = BatchView(cache, 3)
        positions = cache.lengths[:3, None].clone()
        mask = cache.slot_mask(3)  # plain causal: the model narrows it for its sliding layers
        h = model.hidden(
            torch.tensor(tokens)[:, None], cache=view, positions=positions, attn_mask=mask
        )
        logits = model.head(h[:, -1])
        for row, t in enumerate(tokens):
            seqs[row].append(t)
            full = model(torch.tensor([seqs[row]]))[0, -1]
            torch.testing.assert_close(logits[row], full, atol=1e-4, rtol=0)


@torch.inference_mode()
def test_left_padded_batch_equals_each_row_alone():
    model = random_gemma3()
    rows = [[3, 1, 4, 1, 5, 9, 2, 6], [2, 7, 1]]
    width = max(map(len, rows))
    ids = torch.tensor([[0] * (width - len(r)) + r for r in rows])
    key_mask = torch.tensor([[False] * (width - len(r)) + [True] * len(r) for r in rows])
    positions = (key_mask.cumsum(1) - 1).clamp(min=0)
    logits = model(ids, positions=positions, key_mask=key_mask)[:, -1]
    for i, r in enumerate(rows):
        torch.testing.assert_close(logits[i], model(torch.tensor([r]))[0, -1], atol=1e-4, rtol=0)


@pytest.mark.parametrize("dtype", ["q8_0", "q4_k"])
def test_packed_gguf_takes_the_compiled_step_and_equals_dequantized(
    tmp_path, dtype, float_activations
):
    path = tmp_path / "m.gguf"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        save_gguf(random_gemma3(hidden_size=256, intermediate_size=256), path, dtype=dtype)
    packed, plain = load_gguf(path, packed=True), load_gguf(path, packed=False)
    assert packed.runtime.step is not None  # the compiled step runs Gemma's wiring too
    assert type(packed.layers[0].attn.q_proj).__name__ == "QuantLinear"
    ids = torch.randint(0, VOCAB, (1, 12))
    with torch.inference_mode():
        torch.testing.assert_close(packed(ids), plain(ids), atol=1e-3, rtol=0)
        cache = packed.new_cache(1, 12)
        last = [packed(ids[:, :6], cache=cache)[:, -1]]
        last += [packed(ids[:, t : t + 1], cache=cache)[:, -1] for t in range(6, 12)]
        torch.testing.assert_close(torch.stack(last, 1), plain(ids)[:, 5:], atol=1e-3, rtol=0)


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"rope_scaling": (("factor", 2.0), ("rope_type", "linear"))},
        {"sliding_window": 8},
        {"arch": "qwen3", "qk_norm": True},
        {"norm_offset": 1.0},
        {"sandwich_norm": True},
        {"scale_embed": True},
        {"query_scale": 0.1},
        {"attn_softcap": 50.0},
        {"final_softcap": 30.0},
        {"activation": "gelu_tanh"},
        {"sliding_window": 4, "layer_types": ("sliding", "full")},
        {"rope_local_theta": 1e4},
        {"parallel_residual": True},
        {"rotary_dim": 8},
        {"mlp_bias": True},
        {"activation": "gelu"},
        {"activation": "relu"},
        {"mlp": "plain"},
        {"norm": "layernorm", "norm_bias": True},
        {"position": "learned"},
    ],
)
def test_wiring_the_compiled_step_runs(changes):
    assert ModelConfig(n_layers=2, hidden_size=64, n_heads=4, **changes).compiled_block


def test_wiring_the_compiled_step_lacks():
    cfg = ModelConfig(
        n_layers=2, hidden_size=64, n_heads=4, parallel_residual=True, sandwich_norm=True
    )
    assert not cfg.compiled_block


def test_gguf_warns_where_llama_cpp_would_compute_differently(tmp_path):
    model = random_gemma3()  # query scale 0.2 (not 1/sqrt(32)), global layers every third
    with pytest.warns(UserWarning) as record:
        save_gguf(model, tmp_path / "m.gguf")
    said = " ".join(str(w.message) for w in record)
    assert "query scale 0.2" in said and "layer pattern" in said
    again = load_gguf(tmp_path / "m.gguf").config  # giraffe reads both back
    assert again.query_scale == pytest.approx(0.2) and again.layer_types == model.config.layer_types


# ---- bad input --------------------------------------------------------------------------


def test_inconsistent_wiring_is_refused():
    with pytest.raises(ConfigError, match="layer_types must name 2 layers"):
        ModelConfig(n_layers=2, sliding_window=4, layer_types=("sliding",))
    with pytest.raises(ConfigError, match="sliding_window is not set"):
        ModelConfig(n_layers=2, layer_types=("sliding", "full"))
    with pytest.raises(ConfigError, match="rotary_dim"):
        ModelConfig(hidden_size=64, n_heads=4, rotary_dim=3)
    with pytest.raises(ConfigError, match="decoders only"):
        ModelConfig(arch="bert", norm="layernorm", mlp="plain", position="learned",
                    norm_position="post", qk_norm=True)  # fmt: skip


def test_unsupported_hf_family_names_the_supported_ones(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "mamba"}))
    with pytest.raises(ConfigError, match=r"model_type 'mamba' is not supported .*gemma3_text"):
        load_hf(tmp_path)


def _gguf_with(tmp_path, arch: str, keys: dict):
    import gguf

    path = tmp_path / "bad.gguf"
    w = gguf.GGUFWriter(str(path), arch)
    for key, value in keys.items():
        w.add_uint32(key, value)
    w.add_tensor("token_embd.weight", torch.zeros(4, 8).numpy())
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_unsupported_gguf_architecture_names_the_supported_ones(tmp_path):
    with pytest.raises(
        ConfigError, match=r"architecture 'mamba' is not supported \(giraffe runs .*gemma3"
    ):
        load_gguf(_gguf_with(tmp_path, "mamba", {}))


def test_gguf_missing_key_is_named(tmp_path):
    keys = {"gemma3.embedding_length": 8, "gemma3.block_count": 1, "gemma3.feed_forward_length": 16}
    with pytest.raises(ConfigError, match=r"metadata key gemma3.attention.head_count is missing"):
        load_gguf(_gguf_with(tmp_path, "gemma3", keys))
    keys["gemma3.attention.head_count"] = 2
    with pytest.raises(
        ConfigError, match=r"metadata key gemma3.attention.sliding_window is missing"
    ):
        load_gguf(_gguf_with(tmp_path, "gemma3", keys))


# ---- through the rest of giraffe: load + generate, LoRA, explain --------------------------


@pytest.fixture(scope="module")
def lm_folder(family, tiny_folder, tmp_path_factory):
    """The family's folder with the tiny byte-level BPE tokenizer beside it."""
    kind, _, folder, _, _ = family
    target = tmp_path_factory.mktemp(f"{kind}-lm")
    for f in folder.iterdir():
        shutil.copy(f, target)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tiny_folder / name, target)
    return target


def test_load_and_generate_greedily(lm_folder):
    import giraffe

    lm = giraffe.load(lm_folder)
    out = lm.complete("No, I am", max_new_tokens=6, temperature=0)
    ids = lm.tokenizer.encode("No, I am")
    for _ in range(6):  # the plain reference: the whole sequence each step, no cache
        with torch.inference_mode():
            ids.append(int(lm.model(torch.tensor([ids]))[0, -1].argmax()))
    assert out.token_ids == ids[-len(out.token_ids) :]


def test_lora_attaches_to_every_projection(family):
    from giraffe.train.lora import LoraConfig, apply_lora, lora_layers, merge_lora

    model = load_hf(family[2])
    ids = family[3]
    with torch.no_grad():
        before = model(ids)
    names = apply_lora(model, LoraConfig(targets=("all-linear",), r=4))
    projections = {n.rsplit(".", 1)[-1] for n in names}
    expected = {"q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj"}
    assert expected <= projections
    for _, layer in lora_layers(model):
        torch.nn.init.normal_(layer.lora_B.weight, std=0.02)  # a trained adapter changes outputs
    with torch.no_grad():
        adapted = model(ids)
        merge_lora(model)
        torch.testing.assert_close(model(ids), adapted, atol=1e-4, rtol=0)
    assert not torch.allclose(adapted, before)


FUSED = {  # family -> (giraffe layers adapted alone, HF modules a PEFT adapter fuses)
    "phi3": (("q_proj", "v_proj", "gate_proj", "o_proj"), ["qkv_proj", "gate_up_proj", "o_proj"]),
    "gptneox": (("q_proj", "v_proj", "up_proj"), ["query_key_value", "dense_4h_to_h"]),
}


@pytest.mark.parametrize("kind", sorted(FUSED))
def test_peft_adapters_on_fused_modules_map_exactly_both_ways(kind, tmp_path):
    """Parts of a fused qkv/gate_up adapted in giraffe run in PEFT as one block-diagonal
    update, and a PEFT adapter on the fused module runs in giraffe split into its parts."""
    import json

    import peft

    from giraffe.train.adapter import load_adapter, save_adapter
    from giraffe.train.lora import LoraConfig, apply_lora, lora_parameters

    torch.manual_seed(1)
    hf = tiny_hf(kind)
    hf.save_pretrained(tmp_path / "base")
    ids = torch.randint(0, VOCAB, (2, SEQ))
    parts, fused = FUSED[kind]

    ours = load_hf(tmp_path / "base")
    apply_lora(ours, LoraConfig(r=3, alpha=5, targets=parts))
    with torch.no_grad():
        for p in lora_parameters(ours):
            p.normal_(0, 0.2)
        expected = ours(ids)
    save_adapter(ours, tmp_path / "ours", "tiny")
    raw = json.loads((tmp_path / "ours" / "adapter_config.json").read_text())
    assert raw["rank_pattern"] and set(raw["rank_pattern"].values()) <= {6, 9}  # 2-3 parts x r
    with_peft = peft.PeftModel.from_pretrained(tiny_hf_copy(tmp_path), tmp_path / "ours")
    torch.testing.assert_close(hf_logits(with_peft, ids), expected, atol=1e-5, rtol=0)
    back = load_hf(tmp_path / "base")  # giraffe reads its own block-diagonal adapter back
    load_adapter(back, tmp_path / "ours")
    with torch.no_grad():
        torch.testing.assert_close(back(ids), expected, atol=1e-5, rtol=0)

    cfg = peft.LoraConfig(r=4, lora_alpha=6, target_modules=fused, init_lora_weights=False)
    theirs = peft.get_peft_model(tiny_hf_copy(tmp_path), cfg).eval()
    theirs.save_pretrained(tmp_path / "peft")
    expected = hf_logits(theirs, ids)
    ours = load_hf(tmp_path / "base")
    load_adapter(ours, tmp_path / "peft")
    with torch.no_grad():
        torch.testing.assert_close(ours(ids), expected, atol=1e-5, rtol=0)
    save_adapter(ours, tmp_path / "again", "tiny")  # shared A: written back as PEFT's rank 4
    raw = json.loads((tmp_path / "again" / "adapter_config.json").read_text())
    assert raw["r"] == 4 and raw["rank_pattern"] == {}
    again = peft.PeftModel.from_pretrained(tiny_hf_copy(tmp_path), tmp_path / "again")
    torch.testing.assert_close(hf_logits(again, ids), expected, atol=1e-5, rtol=0)


def tiny_hf_copy(tmp_path):
    import transformers as tf

    model = tf.AutoModelForCausalLM.from_pretrained(tmp_path / "base", attn_implementation="eager")
    return model.eval()


def test_explain_attention_shows_the_sliding_layers(tiny_folder):
    import giraffe
    from giraffe.explain.attention import attention_maps
    from giraffe.lm import LanguageModel

    tokenizer = giraffe.load_tokenizer(tiny_folder)
    model = random_gemma3(vocab_size=tokenizer.vocab_size, attn_softcap=None)
    maps = attention_maps(LanguageModel(model, tokenizer, "gemma3-tiny"), "No, I am not a giraffe.")
    w = torch.as_tensor(maps.weights)  # (L, H, T, T)
    T = w.shape[-1]
    assert T > model.config.sliding_window
    torch.testing.assert_close(w.sum(-1), torch.ones_like(w.sum(-1)), atol=1e-5, rtol=0)
    far = torch.ones(T, T, dtype=torch.bool).tril(-model.config.sliding_window)  # beyond the window
    for layer, kind in enumerate(model.config.layer_types):
        seen = w[layer][:, far].abs().sum()
        assert (seen == 0) if kind == "sliding" else (seen > 0)


def test_serve_scheduler_batches_rows_past_the_window(lm_folder):
    """Continuous batching in the server: each row as if it ran alone, past every window."""
    from test_scheduler import submit

    import giraffe
    from giraffe.serve.scheduler import Scheduler

    lm = giraffe.load(lm_folder)
    scheduler = Scheduler(lm, max_batch=4, max_queue=3)
    try:
        prompts = ["The giraffe", "No, I am not", "Giraffes eat leaves from tall"]
        jobs = [submit(scheduler, lm, p, max_new_tokens=14) for p in prompts]
        for (_, c), p in zip(jobs, prompts, strict=True):
            alone = lm.complete(p, temperature=0, max_new_tokens=14, ignore_eos=True)
            assert c.wait().tokens == alone.token_ids, p
        assert max(scheduler.stats()["batch_sizes"]) >= 2
    finally:
        scheduler.close()


def test_serve_prefix_cache_past_the_window_equals_no_cache(lm_folder):
    """Reused keys/values serve the sliding layers too: later turns equal a cold start."""
    from test_prefix_cache import with_and_without

    import giraffe

    lm = giraffe.load(lm_folder)
    turns = [["Giraffes eat leaves from tall", " trees", " and"], ["No, I am not", " a", " 0123"]]
    plain, cached, stats = with_and_without(lm, turns, max_batch=2, new_tokens=6)
    assert cached == plain
    # reused blocks reach past the windows (5 and 7 tokens): the sliding layers mask them
    assert stats["hit_tokens"] >= 2 * 16 > 2 * (lm.model.config.sliding_window or 0)


@pytest.mark.parametrize("to", ["q8_0", "int8"])
def test_quantize_and_eval_each_family(lm_folder, tmp_path, capsys, to):
    """`giraffe quantize` then `giraffe eval --perplexity`: close to the float model's score."""
    import json

    from giraffe.cli import main

    text = tmp_path / "text.txt"
    text.write_text("Giraffes eat leaves from tall trees. No, I am not 0123 a giraffe. " * 30)
    out = tmp_path / ("model.gguf" if to.startswith("q") else "model-int8")
    group = [] if to.startswith("q") else ["--group-size", "16"]  # rows of 48 weights
    assert main(["quantize", str(lm_folder), "--to", to, "--out", str(out), *group]) == 0
    scores = {}
    for name, path in (("float", lm_folder), ("quantized", out)):
        capsys.readouterr()
        assert main(["eval", str(path), "--perplexity", str(text), "--ctx", "64", "--json"]) == 0
        scores[name] = json.loads(capsys.readouterr().out)
    assert scores["quantized"]["tokens_scored"] == scores["float"]["tokens_scored"] > 64  # same ids
    ratio = scores["quantized"]["perplexity"] / scores["float"]["perplexity"]
    assert abs(ratio - 1) < 0.02, scores  # 8-bit weights: within 2 % of the float model
    # a near-uniform tiny model's perplexity barely notices wiring: compare the wiring itself
    # (rope as the tables it makes: GGUF keeps Llama 3 scaling as per-frequency factors)
    wiring = ("layer_types", "sliding_window", "query_scale", "attn_softcap", "final_softcap",
              "rotary_dim", "parallel_residual", "norm_offset", "sandwich_norm", "qk_norm")  # fmt: skip
    a, b = wiring_of(lm_folder, wiring), wiring_of(out, wiring)
    assert a[0] == b[0]
    for table_a, table_b in zip(a[1], b[1], strict=True):
        torch.testing.assert_close(table_a, table_b)


def wiring_of(path, fields):
    """A model's wiring fields, and the RoPE tables (cos, sin) of its layer kinds."""
    import giraffe

    model = giraffe.load(path).model
    positions = torch.arange(model.config.max_position_embeddings)[None]  # (1, S)
    ropes = [r for r in (getattr(model, "rotary", None), getattr(model, "rotary_local", None)) if r]
    tables = [t for rope in ropes for t in rope(positions)]
    return {k: getattr(model.config, k) for k in fields}, tables
