"""Group-wise int8/int4 weights: the error bound, the layer's two paths, the folder format."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from fast_path import counting

from giraffe.quant import kernels
from giraffe.quant.blocks import round_activations_int8
from giraffe.quant.groupwise import (
    GroupConfig,
    GroupQuantEmbedding,
    GroupQuantLinear,
    dequantize_groups,
    quantize_groups,
)

CONFIGS = [
    GroupConfig(8, 32, True),
    GroupConfig(8, 64, False),
    GroupConfig(4, 32, True),
    GroupConfig(4, 128, False),
    GroupConfig(4, 16, True),  # not whole 32-weight blocks: the reference path only
]


def weight(rows=40, cols=256, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(rows, cols, generator=g) * torch.linspace(0.01, 2, cols)


@pytest.mark.parametrize("cfg", CONFIGS, ids=str)
def test_every_weight_is_within_half_a_step_of_its_group(cfg):
    w = weight()
    parts = quantize_groups(w, cfg)
    error = (dequantize_groups(parts, cfg) - w).abs()  # (O, I)
    step = parts["scale"].float().repeat_interleave(cfg.group_size, dim=1)
    assert (error <= step / 2 + 1e-6 * w.abs()).all()
    assert parts["q"].shape == (40, 256 if cfg.bits == 8 else 128)
    assert parts["scale"].dtype == torch.float16 and ("min" in parts) != cfg.symmetric


def test_values_on_the_grid_come_back_exactly():
    cfg = GroupConfig(4, 32, False)
    w = torch.arange(15 * 32, dtype=torch.float32).reshape(15, 32) % 16 * 0.5 - 2  # 16 levels
    assert torch.equal(dequantize_groups(quantize_groups(w, cfg), cfg), w)


def test_a_group_size_that_does_not_divide_the_row_is_named():
    with pytest.raises(ValueError, match=r"group size 48 does not divide .* \(256 weights\)"):
        quantize_groups(weight(), GroupConfig(8, 48))
    with pytest.raises(ValueError, match="8 or 4 bits"):
        GroupConfig(bits=3)


@pytest.mark.parametrize("cfg", CONFIGS, ids=str)
@torch.inference_mode()
def test_layer_equals_its_reference_with_int8_or_float_activations(cfg, monkeypatch):
    w, bias = weight(rows=37), torch.randn(37)  # 37 rows: a ragged last tile of 16
    layer = GroupQuantLinear(quantize_groups(w, cfg), cfg, bias)
    x = torch.randn(5, 256)
    deq = layer.dequantized_weight()
    if layer.int8_weights() is not None:
        expected = F.linear(round_activations_int8(x), deq, bias)
        torch.testing.assert_close(layer(x), expected, atol=1e-5, rtol=2e-6)
    else:
        assert cfg.group_size % 32 or not kernels.int8_kinds()
        torch.testing.assert_close(layer(x), F.linear(x, deq, bias))
    monkeypatch.setenv("GIRAFFE_INT8_ACTIVATIONS", "0")
    torch.testing.assert_close(layer(x), F.linear(x, deq, bias))


@pytest.mark.skipif(not kernels.int8_kinds(), reason="no AVX-512 VNNI: nothing to compact into")
@pytest.mark.parametrize("cfg", CONFIGS[:4], ids=str)
@torch.inference_mode()
def test_compacted_layer_and_table_keep_the_stored_numbers(cfg, monkeypatch):
    """After compact() only the tiles remain; weights, products and looked-up rows are the
    same bits as before (a table of 4,131 rows crosses the chunks tiles are made in)."""
    from giraffe.quant import groupwise

    monkeypatch.setattr(groupwise, "TILE_CHUNK_ROWS", 1024)
    w, bias = weight(rows=4131, seed=3), torch.randn(4131)
    parts = quantize_groups(w, cfg)
    layer, table = GroupQuantLinear(parts, cfg, bias), GroupQuantEmbedding(parts, cfg)
    x, ids = torch.randn(3, 256), torch.tensor([[0, 4130], [1023, 1024]])
    before = (layer.dequantized_weight(), layer(x), table(ids))
    assert layer.compact() and table.table.compact()
    assert layer.compacted and not layer.parts() and not table.table.parts()
    after = (layer.dequantized_weight(), layer(x), table(ids))
    assert all(torch.equal(a, b) for a, b in zip(before, after, strict=True))
    assert torch.equal(before[0], dequantize_groups(parts, cfg))
    monkeypatch.setenv("GIRAFFE_INT8_ACTIVATIONS", "0")  # the float path reads the tiles
    torch.testing.assert_close(layer(x), F.linear(x, before[0], bias), atol=0, rtol=0)
    assert GroupQuantLinear(parts, cfg).compact() is False  # float activations: parts kept


@pytest.fixture(scope="module")
def tiny_lm(tiny_folder):
    import giraffe

    return giraffe.load(tiny_folder)


@pytest.mark.parametrize("cfg", [GroupConfig(4, 32, True), GroupConfig(8, 64, False)], ids=str)
@torch.inference_mode()
def test_folder_round_trip_keeps_integers_and_equals_the_dequantized_model(
    tiny_lm, cfg, tmp_path, monkeypatch
):
    import json

    import giraffe

    out = tiny_lm.save(tmp_path / "q", group=cfg)
    written = json.loads((out / "config.json").read_text())["quantization_config"]
    assert written == cfg.to_json()
    packed, reference = giraffe.load(out), giraffe.load(out, packed=False)
    layer = packed.model.layers[0].mlp.up_proj
    assert isinstance(layer, GroupQuantLinear) and layer.cfg == cfg
    assert (packed.model.runtime.step is not None) == bool(kernels.int8_kinds())
    assert isinstance(packed.model.embed, GroupQuantEmbedding)  # the tied head reads it too
    stored = quantize_groups(tiny_lm.model.layers[0].mlp.up_proj.weight.detach(), cfg)
    if kernels.int8_kinds():  # one resident copy: the int8 tiles, the stored groups dropped
        assert layer.compacted and not layer.parts() and not packed.model.embed.table.parts()
    else:
        assert all(torch.equal(layer.parts()[k], stored[k]) for k in stored)  # bytes as written
    # either way the integers are those written: the same weights back, bit for bit
    assert torch.equal(layer.dequantized_weight(), dequantize_groups(stored, cfg))
    ids = torch.randint(0, 200, (2, 12))
    monkeypatch.setenv("GIRAFFE_INT8_ACTIVATIONS", "0")
    torch.testing.assert_close(packed.model(ids), reference.model(ids), atol=1e-4, rtol=1e-4)
    monkeypatch.setenv("GIRAFFE_INT8_ACTIVATIONS", "1")
    close = (packed.model(ids) - reference.model(ids)).abs().max() / reference.model(
        ids
    ).abs().max()
    assert close < 0.05  # int8 activations: near, not equal
    assert packed.complete([5, 6, 7], max_new_tokens=3, temperature=0).token_ids


def test_quantize_command_writes_a_folder_and_refuses_to_quantize_it_again(tiny_folder, tmp_path):
    import subprocess
    import sys

    def giraffe_cli(*args):
        cmd = [sys.executable, "-m", "giraffe.cli", *map(str, args)]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=300)

    out = tmp_path / "int4"
    done = giraffe_cli("quantize", tiny_folder, "--to", "int4", "--group-size", "32", "--out", out)
    assert done.returncode == 0, done.stderr
    assert "int4 symmetric, groups of 32" in done.stdout
    assert (out / "tokenizer.json").exists() and (out / "model.safetensors").exists()
    again = giraffe_cli("quantize", out, "--to", "int8", "--out", tmp_path / "again")
    assert again.returncode != 0 and "already quantized" in again.stderr
    bad = giraffe_cli(
        "quantize", tiny_folder, "--to", "int8", "--group-size", "48", "--out", tmp_path / "b"
    )
    assert bad.returncode != 0 and "group size 48 does not divide" in bad.stderr
    assert not (tmp_path / "b").exists()  # nothing half-written


@pytest.mark.skipif(not kernels.int8_kinds(), reason="no AVX-512 VNNI: no compiled step")
@torch.inference_mode()
def test_folder_models_take_the_compiled_step_with_the_module_paths_numbers(tiny_lm, tmp_path):
    import giraffe

    packed = giraffe.load(tiny_lm.save(tmp_path / "q", group=GroupConfig(4, 32, False)))
    model, fast = packed.model, packed.model.runtime.step
    ids, outputs, taken = torch.randint(0, 200, (1, 10)), [], []

    for model.runtime.step in (counting(fast, taken), None):
        cache = model.new_cache(1, 16)
        steps = [model.hidden(ids, cache=cache)]
        steps += [model.hidden(torch.tensor([[t]]), cache=cache) for t in (3, 9, 4)]
        outputs.append(torch.cat(steps, dim=1))
    assert taken == [True] * 4  # the prompt and three single tokens, compiled
    torch.testing.assert_close(outputs[0], outputs[1], atol=1e-4, rtol=1e-4)
