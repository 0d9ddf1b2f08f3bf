"""Our loaders against `transformers` on tiny random models: HF folders and GGUF, both ways."""

from __future__ import annotations

import pytest
import torch
from hf_tiny import hf_logits, tiny_hf_model

from giraffe.config import ConfigError
from giraffe.formats.gguf import load_gguf, save_gguf
from giraffe.formats.hf import load_hf, save_hf
from giraffe.formats.names import WeightsError

KINDS = ["llama", "qwen2", "gpt2", "mistral"]


def ours(model, ids):
    with torch.no_grad():
        return model(ids)


@pytest.fixture(params=KINDS)
def hf_folder(request, tmp_path):
    model = tiny_hf_model(request.param)
    folder = tmp_path / request.param
    model.save_pretrained(folder)
    return model, folder


def test_hf_folder_logits_match_transformers(hf_folder):
    reference, folder = hf_folder
    ids = torch.randint(0, 300, (2, 17))
    got = ours(load_hf(folder), ids)
    assert (got - hf_logits(reference, ids)).abs().max() <= 1e-4


def test_gguf_round_trip_logits_match_transformers(hf_folder, tmp_path):
    reference, folder = hf_folder
    path = save_gguf(load_hf(folder), tmp_path / "m.gguf")
    ids = torch.randint(0, 300, (2, 17))
    got = ours(load_gguf(path), ids)
    assert (got - hf_logits(reference, ids)).abs().max() <= 1e-4


def test_saved_folder_loads_in_transformers(hf_folder, tmp_path):
    import transformers

    reference, folder = hf_folder
    save_hf(load_hf(folder), tmp_path / "out")
    again = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    ids = torch.randint(0, 300, (1, 9))
    assert (hf_logits(again, ids) - hf_logits(reference, ids)).abs().max() <= 1e-5


def test_gguf_writes_permuted_rope_rows_like_llama_cpp(tmp_path):
    """llama.cpp's GGUF stores Llama q/k rows permuted; a non-permuted load must differ."""
    import gguf

    reference = tiny_hf_model("llama")
    reference.save_pretrained(tmp_path / "f")
    model = load_hf(tmp_path / "f")
    save_gguf(model, tmp_path / "m.gguf")
    reader = gguf.GGUFReader(str(tmp_path / "m.gguf"))
    stored = {t.name: t for t in reader.tensors}["blk.0.attn_q.weight"]
    q = model.layers[0].attn.q_proj.weight
    assert not torch.equal(torch.from_numpy(stored.data.copy()).reshape(q.shape), q)


def test_missing_tensor_is_named(tmp_path):
    from safetensors.torch import load_file, save_file

    tiny_hf_model("llama").save_pretrained(tmp_path)
    tensors = load_file(tmp_path / "model.safetensors")
    del tensors["model.layers.1.mlp.up_proj.weight"]
    save_file(tensors, tmp_path / "model.safetensors")
    with pytest.raises(WeightsError, match="layers.1.mlp.up_proj.weight"):
        load_hf(tmp_path)


def test_unsupported_architecture_is_named(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "mamba"}')
    with pytest.raises(ConfigError, match="mamba"):
        load_hf(tmp_path)


def test_corrupt_files_are_reported(tmp_path):
    (tmp_path / "bad.gguf").write_bytes(b"GGUF" + b"\x00" * 20)
    with pytest.raises(WeightsError, match="bad.gguf"):
        load_gguf(tmp_path / "bad.gguf")
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="config.json"):
        load_hf(tmp_path)


@pytest.mark.parametrize("kind", ["q8_0", "q4_0", "q4_1"])
@pytest.mark.parametrize("preset", ["llama-tiny", "gpt2-tiny"])
def test_quantized_gguf_packed_equals_dequantized(tmp_path, kind, preset, float_activations):
    from giraffe.config import PRESETS
    from giraffe.models import Decoder
    from giraffe.quant.linear import QuantEmbedding, QuantLinear

    path = save_gguf(Decoder(PRESETS[preset]), tmp_path / "q.gguf", dtype=kind)
    reference, packed = load_gguf(path), load_gguf(path, packed=True)
    assert isinstance(packed.layers[1].attn.k_proj, QuantLinear)
    assert isinstance(packed.embed, QuantEmbedding)
    ids = torch.randint(0, 512, (2, 9))
    assert (ours(packed, ids) - ours(reference, ids)).abs().max() <= 1e-4


def test_sharded_folder_loads(tmp_path):
    reference = tiny_hf_model("llama")
    reference.save_pretrained(tmp_path, max_shard_size="20KB")
    assert (tmp_path / "model.safetensors.index.json").exists()
    assert len(list(tmp_path.glob("model-*.safetensors"))) > 1
    ids = torch.randint(0, 300, (1, 11))
    assert (ours(load_hf(tmp_path), ids) - hf_logits(reference, ids)).abs().max() <= 1e-4
