"""LoRA layers: the update's algebra, merge/unmerge, disabling, and QLoRA on packed weights."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from fast_path import counting
from torch import nn

from giraffe.config import PRESETS
from giraffe.models import Decoder
from giraffe.quant import kernels
from giraffe.quant.linear import QuantLinear
from giraffe.quant.ptq import quantize_matrix
from giraffe.quant.runtime import PackedRuntime
from giraffe.train.lora import (
    LoraConfig,
    LoraLinear,
    apply_lora,
    disable_adapters,
    lora_parameters,
    merge_lora,
    strip_lora,
    unmerge_lora,
)

ALL = LoraConfig(r=4, alpha=8.0, targets=("all-linear",))


def tiny(**changes) -> Decoder:
    return Decoder(PRESETS["llama-tiny"].replace(**changes)).eval()


def ids(batch=2, length=9, vocab=512) -> torch.Tensor:
    return torch.randint(0, vocab, (batch, length), generator=torch.Generator().manual_seed(1))


def randomise(model: nn.Module, std: float = 0.2) -> None:
    """Nonzero B (a fresh adapter is exactly zero), so the update is visible."""
    with torch.no_grad():
        for p in lora_parameters(model):
            p.normal_(0, std)


def quantize_blocks(model: Decoder, kinds=("Q8_0", "Q4_1")) -> None:
    """Swap every block projection for a QuantLinear (alternating kinds) and fuse, as GGUF loads do."""
    for i, (name, layer) in enumerate(list(model.layers.named_modules())):
        if type(layer) is not nn.Linear:
            continue
        data, kind = quantize_matrix(layer.weight.detach().numpy(), kinds[i % len(kinds)])
        owner, _, attr = name.rpartition(".")
        packed = QuantLinear(torch.from_numpy(data), kind, layer.in_features, layer.out_features)
        setattr(model.layers.get_submodule(owner), attr, packed)
    model.attach_runtime(PackedRuntime.build(model))


def dequantized_copy(packed: Decoder) -> Decoder:
    """The float model with exactly the weights the packed one multiplies by."""
    model = tiny()
    state = {k: v for k, v in packed.state_dict().items() if "lora_" not in k}
    for name, m in packed.named_modules():
        if isinstance(m, QuantLinear):
            state[name.replace(".base", "") + ".weight"] = m.dequantized_weight()
    state = {k.replace(".base.", "."): v for k, v in state.items()}
    model.load_state_dict(state)
    return model


# ---- config ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad,message",
    [
        (dict(r=0), "positive integer"),
        (dict(r=2.5), "positive integer"),
        (dict(alpha=0), "alpha"),
        (dict(dropout=1.0), "dropout"),
        (dict(targets=()), "non-empty"),
        (dict(targets=("all-linear", "q_proj")), "alone"),
    ],
)
def test_config_refuses_bad_values(bad, message):
    with pytest.raises(ValueError, match=message):
        LoraConfig(**bad)


def test_config_takes_a_list_or_a_string_of_targets():
    assert LoraConfig(targets=["q_proj"]).targets == ("q_proj",)
    assert LoraConfig(targets="all-linear").targets == ("all-linear",)
    assert LoraConfig(r=4, alpha=8).scale == 2.0


def test_unknown_targets_name_what_the_model_has():
    model = tiny()
    with pytest.raises(ValueError, match="'qproj' matches no linear layer.*k_proj.*q_proj"):
        apply_lora(model, LoraConfig(targets=("qproj",)))
    with pytest.raises(ValueError, match="'mlp' is a module of type MLP"):
        apply_lora(model, LoraConfig(targets=("mlp",)))
    assert not any(isinstance(m, LoraLinear) for m in model.modules())


def test_targets_select_by_suffix_and_all_linear_skips_the_head():
    model = tiny(tie_embeddings=False)
    assert apply_lora(model, LoraConfig()) == [
        f"layers.{i}.attn.{p}_proj" for i in range(2) for p in "qv"
    ]
    strip_lora(model)
    wrapped = apply_lora(model, ALL)
    assert len(wrapped) == 2 * 7 and "lm_head" not in wrapped
    strip_lora(model)
    assert apply_lora(model, LoraConfig(targets=("lm_head", "layers.1.mlp.down_proj"))) == [
        "layers.1.mlp.down_proj",
        "lm_head",
    ]


# ---- the update -----------------------------------------------------------------------


def test_fresh_adapters_change_nothing_and_freeze_the_base():
    model = tiny()
    before = model(ids())
    apply_lora(model, ALL)
    assert torch.equal(model(ids()), before)  # B = 0
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {n for n, _ in model.named_parameters() if ".lora_" in n}
    assert len(lora_parameters(model)) == 2 * 14
    assert not model.layers[0].attn.q_proj.training  # an eval model stays in eval


def test_layer_output_is_base_plus_scaled_low_rank_update():
    base = nn.Linear(16, 12)
    layer = LoraLinear(base, r=3, alpha=6.0)
    randomise(layer)
    x = torch.randn(5, 16)
    a, b = layer.lora_A.weight, layer.lora_B.weight
    expected = base(x) + 2.0 * (x @ a.T @ b.T)
    assert torch.allclose(layer(x), expected, atol=1e-6)
    # A starts as nn.Linear's init (Kaiming-uniform, a=sqrt(5)): bound 1/sqrt(in)
    fresh = LoraLinear(nn.Linear(16, 12), r=3, alpha=6.0)
    assert fresh.lora_A.weight.abs().max() <= 16**-0.5 and fresh.lora_A.weight.std() > 0.05
    assert torch.equal(fresh.lora_B.weight, torch.zeros(12, 3))


def test_merge_equals_w_plus_scaled_b_a_and_unmerge_restores():
    model = tiny()
    apply_lora(model, ALL)
    randomise(model)
    layer = model.layers[1].mlp.down_proj
    w0 = layer.base.weight.detach().clone()
    by_hand = w0 + (layer.lora_B.weight @ layer.lora_A.weight).detach() * (8.0 / 4)
    unmerged = model(ids())
    merge_lora(model)
    assert layer.merged and torch.equal(layer.base.weight, by_hand)
    assert torch.allclose(model(ids()), unmerged, atol=1e-5)
    unmerge_lora(model)
    assert not layer.merged
    assert torch.allclose(layer.base.weight, w0, atol=1e-6)
    assert not torch.equal(layer.base.weight, by_hand)


def test_disable_adapters_gives_the_base_and_restores_them_after():
    model = tiny()
    base = model(ids())
    apply_lora(model, ALL)
    randomise(model)
    adapted = model(ids())
    assert not torch.allclose(adapted, base, atol=1e-3)
    with disable_adapters(model):
        assert torch.equal(model(ids()), base)
    assert torch.equal(model(ids()), adapted)
    merge_lora(model)  # a merged model is unmerged inside the block and merged again after
    with disable_adapters(model):
        assert torch.allclose(model(ids()), base, atol=1e-5)
    assert model.layers[0].attn.q_proj.merged
    assert torch.allclose(model(ids()), adapted, atol=1e-5)


def test_strip_returns_plain_layers_merged_or_not():
    model = tiny()
    apply_lora(model, ALL)
    randomise(model)
    adapted = model(ids())
    kept = strip_lora(model, merge=True)
    assert type(kept.layers[0].attn.q_proj) is nn.Linear
    assert torch.allclose(kept(ids()), adapted, atol=1e-5)
    apply_lora(model, ALL)
    randomise(model)
    strip_lora(model, merge=False)
    assert torch.allclose(model(ids()), adapted, atol=1e-5)  # the first merge stays, this one not
    assert not any(isinstance(m, LoraLinear) for m in model.modules())


def test_dropout_acts_on_the_adapter_branch_only_while_training():
    model = tiny()
    apply_lora(model, LoraConfig(r=4, alpha=8, dropout=0.5))
    randomise(model)
    evaluated = model(ids())
    assert torch.equal(model(ids()), evaluated)
    model.train()
    assert not torch.allclose(model(ids()), evaluated, atol=1e-4)
    with disable_adapters(model):
        model.eval()
        base = model(ids())
        model.train()
        assert torch.equal(model(ids()), base)  # the base has no dropout


# ---- QLoRA ----------------------------------------------------------------------------


def packed_model_with_lora() -> Decoder:
    model = tiny()
    quantize_blocks(model)
    assert model.runtime.layers[0].qkv is not None or not kernels.available()
    apply_lora(model, ALL)
    randomise(model, std=0.05)
    return model


def test_applying_lora_keeps_the_compiled_step_and_stripping_restores_fusions():
    model = packed_model_with_lora()
    # wrapped parts are not fused (a fusion would bypass the adapters) ...
    assert all(f.qkv is None and f.gate_up is None for f in model.runtime.layers)
    # ... but the compiled step takes them, each adapter beside its packed product
    assert (model.runtime.step is not None) == kernels.available()
    strip_lora(model, merge=False)  # packed bases: back to the fused fast path
    assert isinstance(model.layers[0].attn.q_proj, QuantLinear)
    assert (model.runtime.layers[0].qkv is not None) == kernels.available()


@pytest.mark.parametrize("int8", ["1", "0"])
@pytest.mark.parametrize("targets", [("all-linear",), ("q_proj", "v_proj")])
@pytest.mark.parametrize(
    "kinds", [("Q8_0", "Q4_1"), ("BF16", "Q8_0")], ids=["q8_0+q4_1", "bf16+q8_0"]
)
def test_lora_on_the_compiled_step_equals_lora_on_the_module_path(
    int8, targets, kinds, monkeypatch
):
    """Prompt, then one-token steps: the engine with adapters against the module path (the
    BF16 parts on the float kernel, beside int8 ones)."""
    monkeypatch.setenv("GIRAFFE_INT8_ACTIVATIONS", int8)
    model = tiny()
    quantize_blocks(model, kinds)
    apply_lora(model, LoraConfig(r=4, alpha=8.0, targets=targets))
    randomise(model, std=0.05)
    model.eval()
    fast = model.runtime.step
    if fast is None:
        pytest.skip("no compiled decode step on this machine")
    prompt, outputs, taken = ids(1, 6), [], []

    def prompt_then_steps():
        cache = model.new_cache(1, 32)
        with torch.inference_mode():
            first = model.hidden(prompt, cache=cache)
            more = [model.hidden(torch.tensor([[t]]), cache=cache) for t in (9, 2, 6)]
        return torch.cat([first, *more], dim=1)

    for step in (counting(fast, taken), None):
        model.runtime.step = step
        outputs.append(prompt_then_steps())
    assert taken == [True] * 4
    torch.testing.assert_close(outputs[0], outputs[1], atol=1e-4, rtol=1e-4)
    # decode rows with adapters as one team of threads: layer by layer's numbers, bit for bit
    model.runtime.step, fast.team = fast, False
    try:
        assert torch.equal(prompt_then_steps(), outputs[0])
    finally:
        fast.team = True
    # a disabled adapter is the base alone on both paths
    with disable_adapters(model), torch.inference_mode():
        model.runtime.step, cache = fast, model.new_cache(1, 32)
        engine = model.hidden(ids(1, 6), cache=cache)
        model.runtime.step, cache = None, model.new_cache(1, 32)
        torch.testing.assert_close(
            engine, model.hidden(ids(1, 6), cache=cache), atol=1e-4, rtol=1e-4
        )


def test_qlora_forward_equals_lora_on_the_dequantized_weights(float_activations):
    packed = packed_model_with_lora()
    reference = dequantized_copy(packed)
    apply_lora(reference, ALL)
    with torch.no_grad():
        for p, q in zip(lora_parameters(packed), lora_parameters(reference), strict=True):
            q.copy_(p)
    got, want = packed(ids()), reference(ids())
    assert (got - want).abs().max() <= 1e-4 * want.abs().max()


def test_qlora_backward_reaches_only_adapters_and_never_the_packed_bytes():
    model = packed_model_with_lora()
    packed = {n: b.clone() for n, b in model.named_buffers() if n.endswith("packed")}
    loss = model(ids(), targets=ids())
    loss.backward()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
    assert with_grad == {n for n, _ in model.named_parameters() if ".lora_" in n}
    # the first layer's adapters got gradients through every packed layer above them
    assert model.layers[0].attn.q_proj.lora_B.weight.grad.abs().sum() > 0
    optimizer = torch.optim.AdamW(lora_parameters(model), lr=1e-2)
    optimizer.step()
    for n, b in model.named_buffers():
        if n in packed:
            assert torch.equal(b, packed[n]), n


@pytest.mark.parametrize("rows", [3, 300])  # the kernel path, and dequantize-then-matmul
def test_packed_input_gradient_equals_the_reference_path(rows):
    w = torch.randn(24, 64)
    data, kind = quantize_matrix(w.numpy(), "Q4_1")
    base = QuantLinear(torch.from_numpy(data), kind, 64, 24)
    layer = LoraLinear(base, r=2, alpha=4)
    randomise(layer)
    x = torch.randn(rows, 64, requires_grad=True)
    grad_y = torch.randn(rows, 24)
    layer(x).backward(grad_y)
    x_ref = x.detach().clone().requires_grad_(True)
    a, b = layer.lora_A.weight.detach(), layer.lora_B.weight.detach()
    ref = F.linear(x_ref, base.dequantized_weight()) + 2.0 * (x_ref @ a.T @ b.T)
    ref.backward(grad_y)
    assert torch.allclose(x.grad, x_ref.grad, atol=1e-5)


def test_merging_into_packed_weights_is_refused():
    model = packed_model_with_lora()
    with pytest.raises(ValueError, match="packed layer: re-quantizing would change"):
        merge_lora(model)
    assert not any(getattr(m, "merged", False) for m in model.modules())
    with pytest.raises(ValueError, match="packed=False"):
        strip_lora(model, merge=True)


@pytest.mark.slow
def test_qlora_on_packed_smollm2_matches_float_lora(smollm2_gguf, float_activations):
    from giraffe.formats.gguf import load_gguf

    torch.manual_seed(0)
    cfg = LoraConfig(r=4, alpha=8, targets=("q_proj", "v_proj", "down_proj"))
    packed, floats = load_gguf(smollm2_gguf, packed=True), load_gguf(smollm2_gguf, packed=False)
    if not isinstance(packed.layers[0].attn.q_proj, QuantLinear):
        pytest.skip("the packed-weight kernel is not available here")
    for model in (packed, floats):
        torch.manual_seed(0)
        apply_lora(model, cfg)
        randomise(model, std=0.02)
    x = ids(1, 12, 49152)
    got = packed(x, targets=x)
    got.backward()
    with torch.no_grad():
        logits, want = packed(x), floats(x)
    assert (logits - want).abs().max() <= 1e-3 * want.abs().max()
    trained = {n for n, p in packed.named_parameters() if p.grad is not None}
    assert trained == {n for n, _ in packed.named_parameters() if ".lora_" in n}
    assert packed.layers[0].attn.q_proj.lora_A.weight.grad.abs().sum() > 0
