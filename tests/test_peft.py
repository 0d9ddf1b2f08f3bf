"""Adapter folders in the PEFT layout: `peft` is the oracle both ways; bad folders are refused."""

from __future__ import annotations

import json
import warnings

import peft
import pytest
import torch
from hf_tiny import hf_logits, tiny_hf_model
from safetensors.torch import load_file, save_file

import giraffe
from giraffe.config import PRESETS
from giraffe.formats import load_hf
from giraffe.models import Decoder
from giraffe.train.adapter import (
    CONFIG_FILE,
    FINGERPRINT_FILE,
    WEIGHTS_FILE,
    AdapterError,
    AdapterWarning,
    load_adapter,
    load_with_adapter,
    save_adapter,
    target_suffixes,
)
from giraffe.train.lora import (
    LoraConfig,
    LoraLinear,
    apply_lora,
    disable_adapters,
    lora_parameters,
)

# transformers' own deprecation notice, raised inside peft's calls
pytestmark = pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated")
IDS = torch.randint(0, 300, (2, 11), generator=torch.Generator().manual_seed(3))


@pytest.fixture
def llama(tmp_path):
    """(transformers model, the same weights loaded by giraffe)."""
    hf = tiny_hf_model("llama")
    hf.save_pretrained(tmp_path / "base")
    return hf, load_hf(tmp_path / "base")


def randomise(model) -> None:
    with torch.no_grad():
        for p in lora_parameters(model):
            p.normal_(0, 0.2)


def giraffe_adapter(model, folder, cfg: LoraConfig):
    apply_lora(model, cfg)
    randomise(model)
    save_adapter(model, folder, "tiny-llama")
    return model


def edit_config(folder, **changes) -> None:
    path = folder / CONFIG_FILE
    raw = json.loads(path.read_text())
    raw.update(changes)
    path.write_text(json.dumps(raw))


def tiny(**changes) -> Decoder:
    return Decoder(PRESETS["llama-tiny"].replace(**changes)).eval()


def has_lora(model) -> bool:
    return any(isinstance(m, LoraLinear) for m in model.modules())


# ---- interop --------------------------------------------------------------------------


def test_peft_loads_a_giraffe_adapter_and_computes_the_same_logits(llama, tmp_path):
    hf, ours = llama
    giraffe_adapter(ours, tmp_path / "a", LoraConfig(r=4, alpha=12, targets="all-linear"))
    raw = json.loads((tmp_path / "a" / CONFIG_FILE).read_text())
    assert raw["peft_type"] == "LORA" and raw["task_type"] == "CAUSAL_LM"
    assert (raw["r"], raw["lora_alpha"], raw["base_model_name_or_path"]) == (4, 12, "tiny-llama")
    assert sorted(raw["target_modules"]) == sorted(
        ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )
    keys = load_file(tmp_path / "a" / WEIGHTS_FILE)
    assert "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight" in keys
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with_peft = peft.PeftModel.from_pretrained(hf, tmp_path / "a")
    assert not [w for w in caught if "peft" in w.filename], [str(w.message) for w in caught]
    expected = hf_logits(with_peft, IDS)
    with with_peft.disable_adapter():
        assert not torch.allclose(expected, hf_logits(with_peft, IDS), atol=1e-3)
    with torch.no_grad():
        assert torch.allclose(ours(IDS), expected, atol=1e-5)


def test_giraffe_loads_a_peft_adapter_and_computes_the_same_logits(llama, tmp_path):
    hf, ours = llama
    cfg = peft.LoraConfig(
        r=3,
        lora_alpha=7,
        lora_dropout=0.1,
        target_modules=["q_proj", "v_proj", "o_proj", "down_proj"],
        task_type="CAUSAL_LM",
        init_lora_weights=False,  # random B: the update is visible
    )
    with_peft = peft.get_peft_model(hf, cfg).eval()
    with_peft.save_pretrained(tmp_path / "p")
    expected = hf_logits(with_peft, IDS)
    loaded = load_adapter(ours, tmp_path / "p")
    assert (loaded.r, loaded.alpha, loaded.dropout) == (3, 7.0, 0.1)
    assert loaded.targets == ("q_proj", "v_proj", "o_proj", "down_proj")
    assert not ours.layers[1].attn.o_proj.training and not ours.layers[1].attn.o_proj.merged
    with torch.no_grad():
        assert torch.allclose(ours(IDS), expected, atol=1e-5)


def test_gpt2_maps_its_conv1d_layers_and_its_fused_qkv(tmp_path):
    hf = tiny_hf_model("gpt2")
    hf.save_pretrained(tmp_path / "base")
    ours = load_hf(tmp_path / "base")
    targets = ("q_proj", "attn.o_proj", "up_proj")  # c_attn (fused), attn.c_proj, mlp.c_fc
    giraffe_adapter(ours, tmp_path / "a", LoraConfig(r=2, alpha=4, targets=targets))
    raw = json.loads((tmp_path / "a" / CONFIG_FILE).read_text())
    assert raw["fan_in_fan_out"] is True
    assert raw["target_modules"] == [
        "attn.c_proj",
        "c_attn",
        "c_fc",
    ]  # "c_proj" would add mlp.c_proj
    assert raw["rank_pattern"] == {}  # q alone: a block of one part, rank r as it is
    with_peft = peft.PeftModel.from_pretrained(hf, tmp_path / "a")
    with torch.no_grad():
        assert torch.allclose(ours(IDS), hf_logits(with_peft, IDS), atol=1e-5)
    import transformers

    base = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "base").eval()
    fused = peft.get_peft_model(
        base,
        peft.LoraConfig(target_modules=["c_attn"], fan_in_fan_out=True, init_lora_weights=False),
    ).eval()
    fused.save_pretrained(tmp_path / "c")
    ours = load_hf(tmp_path / "base")
    assert load_adapter(ours, tmp_path / "c").targets == ("q_proj", "k_proj", "v_proj")
    with torch.no_grad():
        assert torch.allclose(ours(IDS), hf_logits(fused, IDS), atol=1e-5)


def test_target_modules_are_the_shortest_exact_suffixes():
    every = [f"m.layers.{i}.{p}" for i in range(12) for p in ("attn.c_proj", "mlp.c_proj", "q")]
    chosen = [f"m.layers.{i}.attn.c_proj" for i in range(12)] + ["m.layers.1.q"]
    assert target_suffixes(chosen, every) == ["1.q", "attn.c_proj"]  # "11.q" is not ".1.q"
    assert target_suffixes(every, every) == ["c_proj", "q"]


def test_load_with_adapter_gives_a_language_model_with_live_adapters(tiny_folder, tmp_path):
    from giraffe.lm import load

    plain = load(tiny_folder)
    giraffe_adapter(plain.model, tmp_path / "a", LoraConfig())
    tokens = [1, 5, 9, 4]
    expected = plain.logits(tokens)
    lm = load_with_adapter(tiny_folder, tmp_path / "a")
    assert has_lora(lm.model) and not lm.model.training
    assert torch.allclose(lm.logits(tokens), expected, atol=1e-5)
    via_package = giraffe.load(tiny_folder, adapter=tmp_path / "a")  # the public door
    assert has_lora(via_package.model)
    assert torch.allclose(via_package.logits(tokens), expected, atol=1e-5)


def test_a_packed_base_runs_the_adapter_as_qlora(tiny_folder, tmp_path, float_activations):
    from giraffe.lm import load
    from giraffe.quant.linear import QuantLinear

    plain = load(tiny_folder)
    gguf = plain.save_gguf(tmp_path / "m.gguf", dtype="q8_0")
    giraffe_adapter(plain.model, tmp_path / "a", LoraConfig(targets="all-linear"))
    tokens = [1, 5, 9, 4, 7]
    expected = plain.logits(tokens)
    with pytest.warns(AdapterWarning, match="other weights"):  # Q8_0 rounded the embeddings
        lm = load_with_adapter(gguf, tmp_path / "a", packed=True)
    assert isinstance(lm.model.layers[0].mlp.up_proj.base, QuantLinear)
    got = lm.logits(tokens)
    assert (got - expected).abs().max() <= 0.02 * expected.abs().max()
    with disable_adapters(lm.model):
        assert not torch.allclose(lm.logits(tokens), got, atol=1e-3)
    assert len(lm.complete(tokens, max_new_tokens=3).token_ids) == 3


# ---- refusals -------------------------------------------------------------------------


def test_missing_files_are_named(tmp_path, llama):
    _, ours = llama
    with pytest.raises(AdapterError, match="is not a folder"):
        load_adapter(ours, tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(AdapterError, match=f"{CONFIG_FILE} not found"):
        load_adapter(ours, tmp_path / "empty")
    giraffe_adapter(tiny(), tmp_path / "a", LoraConfig())
    (tmp_path / "a" / WEIGHTS_FILE).unlink()
    with pytest.raises(AdapterError, match=f"{WEIGHTS_FILE} not found"):
        load_adapter(ours, tmp_path / "a")
    (tmp_path / "a" / CONFIG_FILE).write_text("{not json")
    with pytest.raises(AdapterError, match="not valid JSON"):
        load_adapter(ours, tmp_path / "a")
    assert not has_lora(ours)


@pytest.mark.parametrize(
    "change,message",
    [
        (dict(peft_type="IA3"), "peft_type is 'IA3'"),
        (dict(task_type="SEQ_CLS"), "task_type 'SEQ_CLS'"),
        (dict(use_dora=True), r"use_dora=True \(DoRA"),
        (dict(use_rslora=True), r"use_rslora=True \(rank-stabilised"),
        (dict(rank_pattern={"q_proj": 2}), "per-layer ranks"),
        (dict(alpha_pattern={"q_proj": 2}), "per-layer alphas"),
        (dict(bias="all"), "trained biases"),
        (dict(modules_to_save=["lm_head"]), "modules_to_save"),
        (dict(init_lora_weights="pissa"), "rewrites the base weights"),
        (dict(some_future_option=3), "some_future_option=3"),
        (dict(r=0), "positive integer"),
        (dict(r=5), "rank 8/8 \\(A/B\\) but adapter_config.json says r=5"),
    ],
)
def test_unsupported_options_are_refused_by_name(tmp_path, change, message):
    giraffe_adapter(tiny(), tmp_path / "a", LoraConfig())
    edit_config(tmp_path / "a", **change)
    target = tiny()
    with pytest.raises(AdapterError, match=message):
        load_adapter(target, tmp_path / "a")
    assert not has_lora(target)


def test_tensors_that_are_not_lora_matrices_are_refused(tmp_path):
    giraffe_adapter(tiny(), tmp_path / "a", LoraConfig())
    path = tmp_path / "a" / WEIGHTS_FILE
    tensors = load_file(path)
    magnitude = "base_model.model.model.layers.0.self_attn.q_proj.lora_magnitude_vector"
    save_file({**tensors, magnitude: torch.ones(64)}, path)
    with pytest.raises(AdapterError, match="DoRA magnitude"):
        load_adapter(tiny(), tmp_path / "a")
    save_file({**tensors, "base_model.model.lm_head.weight": torch.ones(4, 4)}, path)
    with pytest.raises(AdapterError, match="lm_head.weight is not a LoRA A/B matrix"):
        load_adapter(tiny(), tmp_path / "a")
    del tensors["base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight"]
    save_file(tensors, path)
    with pytest.raises(AdapterError, match="v_proj has lora_A but not both"):
        load_adapter(tiny(), tmp_path / "a")


def test_an_adapter_for_another_hidden_size_names_the_layer_and_both_shapes(llama, tmp_path):
    _, ours = llama  # hidden size 48
    giraffe_adapter(tiny(), tmp_path / "a", LoraConfig())  # hidden size 64
    with pytest.raises(
        AdapterError, match=r"model\.layers\.0\.self_attn\.q_proj .*64x64 .*adapter but 48x48"
    ):
        load_adapter(ours, tmp_path / "a")
    assert not has_lora(ours)


def test_an_adapter_for_another_layer_count_is_refused(tmp_path):
    giraffe_adapter(tiny(n_layers=3), tmp_path / "deeper", LoraConfig())
    with pytest.raises(AdapterError, match="layers.2.self_attn.q_proj, but this model has only 2"):
        load_adapter(tiny(), tmp_path / "deeper")
    giraffe_adapter(tiny(), tmp_path / "shallower", LoraConfig())
    (tmp_path / "shallower" / FINGERPRINT_FILE).unlink()  # as PEFT writes it: shapes only
    with pytest.raises(AdapterError, match="layers.2.self_attn.q_proj.*fewer layers"):
        load_adapter(tiny(n_layers=3), tmp_path / "shallower")


def test_the_fingerprint_refuses_other_shapes_and_warns_about_other_weights(tmp_path):
    base = tiny()
    giraffe_adapter(base, tmp_path / "a", LoraConfig(targets=("q_proj",)))
    with pytest.raises(AdapterError, match="intermediate_size=128, this model 256"):
        load_adapter(tiny(intermediate_size=256), tmp_path / "a")  # q_proj shapes agree
    same = tiny()
    state = {k.replace(".base.", "."): v for k, v in base.state_dict().items()}
    same.load_state_dict({k: v for k, v in state.items() if ".lora_" not in k})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_adapter(same, tmp_path / "a")
    with pytest.warns(AdapterWarning, match="same shapes but other weights"):
        load_adapter(tiny(), tmp_path / "a")  # a fresh random model: other embeddings


def test_saving_needs_lora_layers_with_one_setting(tmp_path):
    model = tiny()
    with pytest.raises(AdapterError, match="no LoRA layers"):
        save_adapter(model, tmp_path / "a", "x")
    apply_lora(model, LoraConfig(r=2, targets=("q_proj",)))
    model.layers[0].attn.k_proj = LoraLinear(model.layers[0].attn.k_proj, r=4, alpha=16)
    with pytest.raises(AdapterError, match="differ in"):
        save_adapter(model, tmp_path / "a", "x")
    assert not (tmp_path / "a").exists() or not any((tmp_path / "a").iterdir())


def test_loading_twice_is_refused(tmp_path):
    model = giraffe_adapter(tiny(), tmp_path / "a", LoraConfig())
    with pytest.raises(AdapterError, match="already has LoRA layers"):
        load_adapter(model, tmp_path / "a")
