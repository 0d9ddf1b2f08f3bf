"""giraffe's BERT encoder against `transformers` on tiny random models, both ways."""

from __future__ import annotations

import math

import pytest
import torch

from giraffe.config import PRESETS, ConfigError, ModelConfig
from giraffe.formats.hf import load_hf, save_hf
from giraffe.formats.names import WeightsError
from giraffe.models import Encoder


def tiny_bert(head: bool):
    """A random BertModel (head=False, like MiniLM) or BertForMaskedLM, biases made nonzero."""
    import transformers as tf

    cfg = tf.BertConfig(
        vocab_size=300,
        hidden_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=96,
        max_position_embeddings=64,
        type_vocab_size=2,
    )
    model = tf.BertForMaskedLM(cfg) if head else tf.BertModel(cfg)
    with torch.no_grad():  # random init leaves biases at 0 and norms at 1: make them count
        for name, p in model.named_parameters():
            if name.endswith("bias") or "LayerNorm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    return model.eval()


@pytest.fixture(params=[False, True], ids=["BertModel", "BertForMaskedLM"])
def bert_folder(request, tmp_path):
    reference = tiny_bert(request.param)
    reference.save_pretrained(tmp_path)
    return reference, tmp_path


def batch():
    """Ids, a right-padding mask (rows of 11, 7 and 3 real tokens) and token types."""
    ids = torch.randint(1, 300, (3, 11))
    key_mask = torch.ones(3, 11, dtype=torch.bool)
    key_mask[1, 7:] = False
    key_mask[2, 3:] = False
    types = torch.zeros(3, 11, dtype=torch.long)
    types[0, 6:] = 1  # a sentence pair in row 0
    return ids, key_mask, types


def hf_hidden(reference, ids, key_mask=None, types=None):
    body = getattr(reference, "bert", reference)
    mask = None if key_mask is None else key_mask.long()
    with torch.no_grad():
        return body(input_ids=ids, attention_mask=mask, token_type_ids=types).last_hidden_state


def test_hidden_states_match_transformers_without_padding(bert_folder):
    reference, folder = bert_folder
    model = load_hf(folder)
    ids = torch.randint(0, 300, (2, 13))
    with torch.no_grad():
        got = model.hidden(ids)
    assert (got - hf_hidden(reference, ids)).abs().max() <= 1e-4


def test_hidden_states_match_transformers_with_padding_and_types(bert_folder):
    reference, folder = bert_folder
    model = load_hf(folder)
    ids, key_mask, types = batch()
    with torch.no_grad():
        got = model.hidden(ids, key_mask, types)
    # Padding queries too: they attend to the real tokens exactly as in transformers.
    assert (got - hf_hidden(reference, ids, key_mask, types)).abs().max() <= 1e-4


def test_padding_does_not_change_real_tokens(bert_folder):
    _, folder = bert_folder
    model = load_hf(folder)
    ids, key_mask, _ = batch()
    with torch.no_grad():
        padded = model.hidden(ids, key_mask)[1, :7]
        alone = model.hidden(ids[1:2, :7])[0]
    assert (padded - alone).abs().max() <= 1e-5


def test_mlm_logits_and_loss_match_transformers(tmp_path):
    reference = tiny_bert(head=True)
    reference.save_pretrained(tmp_path)
    model = load_hf(tmp_path)
    ids, key_mask, types = batch()
    labels = torch.full_like(ids, -100)
    labels[:, 2] = ids[:, 2]  # predict one (unmasked) position per row
    with torch.no_grad():
        ref = reference(input_ids=ids, attention_mask=key_mask.long(), token_type_ids=types)
        ref_loss = reference(input_ids=ids, attention_mask=key_mask.long(), labels=labels).loss
        logits = model(ids, key_mask=key_mask, token_types=types)
        loss = model(ids, labels, key_mask=key_mask)
    assert logits.shape == (3, 11, 300)
    assert (logits - ref.logits).abs().max() <= 1e-4
    assert abs(loss.item() - ref_loss.item()) <= 1e-5


def test_attention_weights_reference_path_equals_fast_path(bert_folder):
    _, folder = bert_folder
    model = load_hf(folder)
    ids, key_mask, types = batch()
    weights = []
    with torch.no_grad():
        fast = model.hidden(ids, key_mask, types)
        slow = model.hidden(ids, key_mask, types, attention_weights=weights)
    assert (fast - slow).abs().max() <= 1e-5
    assert len(weights) == 2 and weights[0].shape == (3, 4, 11, 11)  # (B, H, T, S)
    assert torch.allclose(weights[0].sum(-1), torch.ones(3, 4, 11))
    assert weights[0][2, :, :, 3:].abs().max() == 0  # padding keys get no attention
    assert (weights[0][2, :, 0, 1] > 0).all()  # and earlier tokens see later ones (bidirectional)


def test_headless_checkpoint_loads_without_head_and_says_so(tmp_path):
    tiny_bert(head=False).save_pretrained(tmp_path)
    model = load_hf(tmp_path)
    assert isinstance(model, Encoder) and model.mlm_head is None
    with pytest.raises(ValueError, match="no masked-LM head"):
        model(torch.tensor([[1, 2, 3]]))
    model.add_mlm_head()
    assert model(torch.tensor([[1, 2, 3]])).shape == (1, 3, 300)


@pytest.mark.parametrize("head", [False, True])
def test_saved_encoder_loads_in_transformers(head, tmp_path):
    import transformers

    reference = tiny_bert(head)
    reference.save_pretrained(tmp_path / "in")
    save_hf(load_hf(tmp_path / "in"), tmp_path / "out")
    cls = transformers.BertForMaskedLM if head else transformers.BertModel
    again = cls.from_pretrained(tmp_path / "out").eval()
    ids, key_mask, types = batch()
    got = hf_hidden(again, ids, key_mask, types)
    assert (got - hf_hidden(reference, ids, key_mask, types)).abs().max() <= 1e-5
    if head:
        with torch.no_grad():
            diff = again(input_ids=ids).logits - reference(input_ids=ids).logits
        assert diff.abs().max() <= 1e-5


def test_missing_encoder_tensor_is_named(tmp_path):
    from safetensors.torch import load_file, save_file

    tiny_bert(head=False).save_pretrained(tmp_path)
    tensors = load_file(tmp_path / "model.safetensors")
    del tensors["encoder.layer.1.output.LayerNorm.weight"]
    save_file(tensors, tmp_path / "model.safetensors")
    with pytest.raises(WeightsError, match="layers.1.mlp_norm.weight"):
        load_hf(tmp_path)


def test_unsupported_bert_variant_is_named(tmp_path):
    import json

    tiny_bert(head=False).save_pretrained(tmp_path)
    raw = json.loads((tmp_path / "config.json").read_text())
    raw["position_embedding_type"] = "relative_key"
    (tmp_path / "config.json").write_text(json.dumps(raw))
    with pytest.raises(ConfigError, match="relative_key"):
        load_hf(tmp_path)


def test_untrained_preset_loss_is_about_ln_vocab():
    cfg = PRESETS["bert-tiny"]
    model = Encoder(cfg)
    ids = torch.randint(0, cfg.vocab_size, (2, 16))
    loss = model(ids, ids)
    assert abs(loss.item() - math.log(cfg.vocab_size)) < 0.5


def test_key_mask_row_without_tokens_is_refused():
    model = Encoder(PRESETS["bert-tiny"])
    key_mask = torch.tensor([[True, False], [False, False]])
    with pytest.raises(ValueError, match=r"rows \[1\]"):
        model.hidden(torch.tensor([[5, 0], [0, 0]]), key_mask)


def test_too_long_input_is_refused():
    cfg = PRESETS["bert-tiny"]
    with pytest.raises(ValueError, match="256 positions"):
        Encoder(cfg).hidden(torch.zeros(1, cfg.max_position_embeddings + 1, dtype=torch.long))


def test_config_kinds():
    assert PRESETS["bert-tiny"].kind == "encoder"
    assert PRESETS["llama-tiny"].kind == "decoder" and PRESETS["gpt2-tiny"].kind == "decoder"
    assert PRESETS["llama-tiny"].norm_position == "pre"
    with pytest.raises(ConfigError, match="BERT-style"):
        ModelConfig(arch="bert")  # the Llama defaults are not an encoder's wiring
    with pytest.raises(ConfigError, match="does not fit"):
        ModelConfig(arch="llama", kind="encoder")
    with pytest.raises(ConfigError, match="Encoder needs an encoder config"):
        Encoder(PRESETS["llama-tiny"])
    again = ModelConfig(**PRESETS["bert-tiny"].to_dict())  # plain data survives a round trip
    assert again == PRESETS["bert-tiny"]
