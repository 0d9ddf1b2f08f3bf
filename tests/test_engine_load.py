"""Loading packed GGUF models: untied heads packed, one resident copy, the kernels' table
checked against Python's, corrupt tensors and block types the engine lacks."""

from __future__ import annotations

import ctypes
import warnings

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType
from gguf.quants import quantize

from giraffe.config import PRESETS
from giraffe.formats.gguf import load_gguf, save_gguf
from giraffe.formats.names import WeightsError
from giraffe.models import Decoder
from giraffe.quant import kernels, library, types
from giraffe.quant.decode_step import FastDecode
from giraffe.quant.linear import QuantEmbedding, QuantLinear

needs_vnni = pytest.mark.skipif(not kernels.int8_kinds(), reason="no AVX-512 VNNI int8 GEMM")
IDS = torch.tensor([[5, 17, 3, 99, 250, 7]])


def untied_model(tmp_path, dtype="q8_0"):
    torch.manual_seed(0)
    cfg = PRESETS["llama-tiny"].replace(tie_embeddings=False)
    return save_gguf(Decoder(cfg), tmp_path / "untied.gguf", dtype=dtype)


@pytest.mark.parametrize("int8", ["1", "0"])
def test_untied_head_and_embedding_stay_packed_and_equal_the_float_model(
    tmp_path, int8, monkeypatch
):
    monkeypatch.setenv("GIRAFFE_INT8_ACTIVATIONS", int8)
    path = untied_model(tmp_path)
    packed, reference = load_gguf(path, packed=True), load_gguf(path, packed=False)
    assert isinstance(packed.lm_head, QuantLinear) and isinstance(packed.embed, QuantEmbedding)
    with torch.inference_mode():
        got, want = packed(IDS), reference(IDS)
    # float activations: the same weights, float32 sums in another order; int8: rounding
    tolerance = 1e-4 if int8 == "0" else 0.05
    assert (got - want).abs().max() / want.abs().max() < tolerance


@needs_vnni
def test_one_resident_copy_at_inference(tmp_path, monkeypatch):
    """Products keep only their int8 tiles; the untied embedding only the file's blocks."""
    monkeypatch.setenv("GIRAFFE_INT8_ACTIVATIONS", "1")
    model = load_gguf(untied_model(tmp_path), packed=True)
    layers = [m for m in model.modules() if isinstance(m, QuantLinear)]
    products = [m for m in layers if m is not model.embed.table]
    assert products and all(m.packed is None and m._int8 is not None for m in products)
    assert model.embed.table.packed is not None and model.embed.table._int8 is None
    # float activations still work, dequantizing whichever form is resident
    with torch.inference_mode():
        int8_logits = model(IDS)
        monkeypatch.setenv("GIRAFFE_INT8_ACTIVATIONS", "0")
        float_logits = model(IDS)
    reference = load_gguf(untied_model(tmp_path), packed=False)
    with torch.inference_mode():
        want = reference(IDS)
    assert torch.allclose(float_logits, want, atol=1e-4)
    assert (int8_logits - want).abs().max() / want.abs().max() < 0.05


@needs_vnni
def test_tied_table_compacted_serves_lookups_and_the_head(tmp_path, monkeypatch):
    monkeypatch.setenv("GIRAFFE_INT8_ACTIVATIONS", "1")
    torch.manual_seed(0)
    path = save_gguf(Decoder(PRESETS["llama-tiny"]), tmp_path / "tied.gguf", dtype="q4_1")
    model, reference = load_gguf(path, packed=True), load_gguf(path, packed=False)
    assert model.embed.table.packed is None  # the head: int8 tiles only
    ids = torch.tensor([[0, 511, 42]])
    assert torch.equal(model.embed(ids), reference.embed(ids))


def test_mismatched_block_table_is_refused_at_load(monkeypatch):
    path = kernels.library_path()
    if path is None:
        pytest.skip("no C compiler: no kernel library to check")
    lib = ctypes.CDLL(str(path))
    kernels.check_library(lib)  # the real table agrees
    wrong = types.BLOCK_TYPES["Q6_K"]._replace(bytes=208)
    monkeypatch.setitem(types.BLOCK_TYPES, "Q6_K", wrong)
    with pytest.raises(kernels.KernelMismatchError, match="block table differs .* Q6_K"):
        kernels.check_library(lib)
    monkeypatch.setitem(types.BLOCK_TYPES, "Q6_K", wrong._replace(bytes=210))
    monkeypatch.setattr(library, "ABI_VERSION", library.ABI_VERSION + 1)
    with pytest.raises(kernels.KernelMismatchError, match="speaks ABI"):
        kernels.check_library(lib)


def test_int8_tile_sizes_that_drifted_from_the_c_side_are_refused_at_load(monkeypatch):
    """repack_int8 sizes its buffers from library.FORM_BLOCK_BYTES and tile_scale_bytes; a
    copy that disagrees with csrc/gemm_i8.h must be an error, not a write past a buffer."""
    path = kernels.library_path()
    if path is None or not kernels.int8_kinds():
        pytest.skip("no int8 GEMM built here")
    lib = ctypes.CDLL(str(path))
    kernels.check_library(lib)  # the real sizes agree
    monkeypatch.setattr(library, "FORM_BLOCK_BYTES", (512, 256, 320, 352))
    with pytest.raises(kernels.KernelMismatchError, match="lay out Q6_K tiles"):
        kernels.check_library(lib)
    monkeypatch.undo()
    real = library.tile_scale_bytes
    monkeypatch.setattr(  # Q4_K's super-block scales forgotten
        library,
        "tile_scale_bytes",
        lambda kind, n_in, dtype: real(kind, n_in, dtype) - (kind == "Q4_K"),
    )
    with pytest.raises(kernels.KernelMismatchError, match="lay out Q4_K tiles"):
        kernels.check_library(lib)


def test_layer_struct_of_another_size_is_refused(tmp_path, monkeypatch):
    model = load_gguf(untied_model(tmp_path), packed=True)
    if model.runtime.step is None:
        pytest.skip("no compiled decode step on this machine")
    monkeypatch.setattr(library, "struct_size", lambda name: 8)
    with pytest.raises(kernels.KernelMismatchError, match="layer_step is 8 bytes"):
        FastDecode.build(model, model.runtime.layers)


def _patch_dims(path, name: str, dims: tuple[int, ...]) -> None:
    """Overwrite a tensor's shape in the GGUF header (name, u32 n_dims, u64 dims)."""
    data = bytearray(path.read_bytes())
    key = name.encode()
    at = data.index(len(key).to_bytes(8, "little") + key) + 8 + len(key)
    assert int.from_bytes(data[at : at + 4], "little") == len(dims)
    for i, d in enumerate(dims):
        data[at + 4 + 8 * i : at + 12 + 8 * i] = d.to_bytes(8, "little")
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    "dims,message",
    [((64, 256), "overlaps tensor"), ((48, 128), "not whole Q8_0 blocks of 32")],
)
def test_corrupt_tensor_shape_is_a_clear_error_at_load(tmp_path, dims, message):
    path = untied_model(tmp_path)
    _patch_dims(path, "blk.0.ffn_up.weight", dims)  # truly (64 in, 128 out), Q8_0
    with pytest.raises(WeightsError, match=message):
        load_gguf(path, packed=True)


def test_block_type_the_engine_lacks_runs_dequantized_with_one_warning(tmp_path, monkeypatch):
    """An MXFP4 matrix (a type the kernels lack) is dequantized; everything else stays packed."""
    import giraffe.formats.gguf as gguf_format

    plain = gguf_format.quantize_matrix

    def one_mxfp4(array: np.ndarray, dtype: str):
        if array.shape == (64, 128):  # the down projections
            return quantize(array, GGMLQuantizationType.MXFP4), "MXFP4"
        return plain(array, dtype)

    monkeypatch.setattr(gguf_format, "quantize_matrix", one_mxfp4)
    path = untied_model(tmp_path)
    monkeypatch.setenv("GIRAFFE_INT8_ACTIVATIONS", "0")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = load_gguf(path, packed=True)
    named = [w for w in caught if "MXFP4" in str(w.message)]
    assert len(named) == 1 and "dequantized to float32" in str(named[0].message)
    assert isinstance(model.layers[0].mlp.down_proj, torch.nn.Linear)
    assert isinstance(model.layers[0].mlp.up_proj, QuantLinear)
    reference = load_gguf(path, packed=False)
    with torch.inference_mode():
        assert torch.allclose(model(IDS), reference(IDS), atol=1e-4)


@pytest.mark.parametrize("dtype", ["f16", "bf16"])
def test_f16_and_bf16_weights_run_packed_on_the_compiled_step(tmp_path, dtype):
    """2-byte float files stay in the file's map (no float32 copy, q/k/v not concatenated)
    and run on the float kernel, prompts (its panel GEMM) and decode rows alike, on the
    compiled step: the float32 model's logits, int8 activations or not."""
    from fast_path import counting

    torch.manual_seed(0)
    path = save_gguf(Decoder(PRESETS["llama-tiny"]), tmp_path / "m.gguf", dtype=dtype)
    model, reference = load_gguf(path, packed=True), load_gguf(path, packed=False)
    q = model.layers[0].attn.q_proj
    assert isinstance(q, QuantLinear) and q.kind == dtype.upper() and q.packed is not None
    assert isinstance(model.embed, QuantEmbedding) and model.runtime.layers[0].qkv.kind is None
    fast, taken = model.runtime.step, []
    model.runtime.step = counting(fast, taken)
    prompt = torch.randint(0, 500, (1, 30))  # 2 tiles of 12 rows and 6
    outputs = []
    for m in (model, reference):
        cache = m.new_cache(1, 64)
        with torch.inference_mode():
            steps = [m.hidden(prompt, cache=cache)]
            steps += [m.hidden(torch.tensor([[t]]), cache=cache) for t in (7, 300, 2)]
            steps.append(m.hidden(torch.tensor([[1, 2, 3, 4, 5]]), cache=cache))  # a short chunk
            outputs.append(torch.cat([m.head(h) for h in steps], dim=1))
    assert taken == [True] * 5
    torch.testing.assert_close(outputs[0], outputs[1], atol=1e-4, rtol=1e-4)


@needs_vnni
def test_second_load_maps_the_tiles_instead_of_repacking(tmp_path, monkeypatch):
    from giraffe.quant import file_cache

    monkeypatch.setenv("GIRAFFE_INT8_ACTIVATIONS", "1")
    monkeypatch.setattr(file_cache, "cache_root", lambda: tmp_path / "tiles")
    path = untied_model(tmp_path)
    real, calls = kernels.repack_int8, []

    def counted(*args, **kw):
        calls.append(args[1])
        return real(*args, **kw)

    monkeypatch.setattr(kernels, "repack_int8", counted)
    first = load_gguf(path, packed=True)
    assert len(list((tmp_path / "tiles").glob("*/index.json"))) == 1
    repacked_first, calls[:] = len(calls), []
    second = load_gguf(path, packed=True)
    # only q|k|v is made again: llama's files permute q and k rows, so those are copies,
    # not views of the file that a cache could name
    assert len(calls) == first.config.n_layers < repacked_first
    with torch.inference_mode():
        assert torch.equal(first(IDS), second(IDS))
    assert second.runtime.step is not None and second.lm_head.packed is None
    # a rewritten file is another file: its tiles are made afresh, never the stale ones
    monkeypatch.undo()
    monkeypatch.setattr(file_cache, "cache_root", lambda: tmp_path / "tiles")
    torch.manual_seed(1)
    save_gguf(Decoder(first.config), path, dtype="q8_0")
    third, reference = load_gguf(path, packed=True), load_gguf(path, packed=False)
    with torch.inference_mode():
        got, want = third(IDS), reference(IDS)
    assert (got - want).abs().max() / want.abs().max() < 0.05


@needs_vnni
def test_a_rebuilt_tile_cache_leaves_the_file_a_running_model_maps_whole(tmp_path, monkeypatch):
    """A load that records the tiles anew (a damaged index, or two first loads at once)
    writes a new file and renames it into place: rewriting the old one in place would cut
    pages from under a process that maps it (a server: SIGBUS at its next token)."""
    from giraffe.quant import file_cache

    monkeypatch.setenv("GIRAFFE_INT8_ACTIVATIONS", "1")
    monkeypatch.setattr(file_cache, "cache_root", lambda: tmp_path / "tiles")
    path = untied_model(tmp_path)
    load_gguf(path, packed=True)  # records the tiles
    mapped = load_gguf(path, packed=True)  # maps them
    with torch.inference_mode():
        before = mapped(IDS)
    (index,) = (tmp_path / "tiles").glob("*/index.json")
    tiles = index.parent / "tiles.bin"
    mapped_file = tiles.stat().st_ino
    index.unlink()
    load_gguf(path, packed=True)  # records them again
    assert tiles.stat().st_ino != mapped_file and index.exists()
    assert not list(index.parent.glob("*.tmp"))
    with torch.inference_mode():
        assert torch.equal(mapped(IDS), before)


def test_a_mirror_with_two_fields_swapped_is_refused(tmp_path, monkeypatch):
    """Same size, same types, another order: the library's field table tells them apart."""
    from giraffe.quant import compiled_step

    model = load_gguf(untied_model(tmp_path), packed=True)
    if model.runtime.step is None:
        pytest.skip("no compiled decode step on this machine")
    fields = list(compiled_step.DecodeCall._fields_)
    at = [name for name, _ in fields].index("cos")
    fields[at], fields[at + 1] = fields[at + 1], fields[at]  # cos <-> sin, both pointers

    class Swapped(ctypes.Structure):
        _fields_ = fields

    assert ctypes.sizeof(Swapped) == ctypes.sizeof(compiled_step.DecodeCall)
    monkeypatch.setattr(compiled_step, "DecodeCall", Swapped)
    with pytest.raises(kernels.KernelMismatchError, match="decode_call .* place their fields"):
        FastDecode.build(model, model.runtime.layers)
