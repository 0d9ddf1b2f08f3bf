"""giraffe's T5 against `transformers` on tiny random models, both ways; and a BERT we
train with its MLM head saved for `BertForMaskedLM`."""

from __future__ import annotations

import pytest
import torch

from giraffe.config import PRESETS, ConfigError, ModelConfig
from giraffe.formats.hf import load_hf, save_hf
from giraffe.formats.hf_config import config_from_hf, config_to_hf
from giraffe.models import Seq2Seq, build_model
from giraffe.models.seq2seq import shift_right
from giraffe.nn.relative_position import relative_position_bucket
from giraffe.train.objectives import SpecialTokens, loss_for, t5_sentinels

VOCAB = 120


def tiny_t5(feed_forward: str, tied: bool):
    """A random T5ForConditionalGeneration; norms made to count, decoder deeper than encoder."""
    import transformers as tf

    cfg = tf.T5Config(
        vocab_size=VOCAB,
        d_model=32,
        d_kv=8,
        d_ff=64,
        num_layers=2,
        num_decoder_layers=3,
        num_heads=4,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=20,
        feed_forward_proj=feed_forward,
        tie_word_embeddings=tied,
        decoder_start_token_id=0,
    )
    model = tf.T5ForConditionalGeneration(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "layer_norm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    return model.eval()


def inputs(vocab: int = VOCAB):
    """Encoder ids (2, 30) with row 1 padded after 20 tokens; decoder ids (2, 25).

    Both are longer than relative_attention_max_distance, so the far buckets count.
    """
    g = torch.Generator().manual_seed(0)
    enc = torch.randint(0, vocab, (2, 30), generator=g)
    dec = torch.randint(0, vocab, (2, 25), generator=g)
    mask = torch.ones(2, 30, dtype=torch.bool)
    mask[1, 20:] = False
    return enc, dec, mask


def hf_logits(model, enc, dec, mask):
    with torch.no_grad():
        out = model(input_ids=enc, attention_mask=mask.long(), decoder_input_ids=dec)
    return out.logits


@pytest.mark.parametrize(
    "feed_forward, tied",
    [("relu", True), ("gated-gelu", True), ("gated-gelu", False), ("gated-silu", True)],
    ids=["t5-relu-tied", "t5v1.1-gated-gelu", "t5v1.1-unscaled", "gated-silu"],
)
def test_t5_matches_transformers(tmp_path, feed_forward, tied):
    torch.manual_seed(0)
    reference = tiny_t5(feed_forward, tied)
    reference.save_pretrained(tmp_path)
    model = load_hf(tmp_path)
    assert isinstance(model, Seq2Seq) and model.config.decoder_layers == 3
    enc, dec, mask = inputs()
    with torch.no_grad():
        got = model(enc, dec, encoder_mask=mask)
    assert (got - hf_logits(reference, enc, dec, mask)).abs().max() <= 1e-4
    # The same loss as transformers computes from labels (its own shift right).
    targets = dec.clone()
    targets[0, -3:] = -100
    with torch.no_grad():
        want = reference(input_ids=enc, attention_mask=mask.long(), labels=targets).loss
        ours = model(enc, shift_right(targets, 0), targets, encoder_mask=mask)
    assert abs(float(ours) - float(want)) <= 1e-5


def trained(cfg: ModelConfig, steps: int = 5):
    """A model of `cfg` after a few AdamW steps of its pretraining objective."""
    torch.manual_seed(0)
    model = build_model(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    ids = torch.randint(4, cfg.vocab_size - 20, (4, 32), generator=torch.Generator().manual_seed(1))
    special = SpecialTokens(
        pad_id=0, mask_id=3, never_mask=(1, 2), sentinel_ids=t5_sentinels(cfg.vocab_size, 20)
    )
    for step in range(steps):
        loss = loss_for(cfg.arch)(model, ids, torch.Generator().manual_seed(step), special)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


@pytest.mark.parametrize("mlp", ["plain", "gated"])
def test_a_t5_we_train_and_save_loads_in_transformers(tmp_path, mlp):
    import transformers as tf

    cfg = PRESETS["t5-tiny"].replace(vocab_size=VOCAB)
    if mlp == "gated":
        cfg = cfg.replace(mlp="gated", activation="gelu_tanh", tie_embeddings=False)
    model = trained(cfg)
    save_hf(model, tmp_path, extra_json={"config.json": {"pad_token_id": 0, "eos_token_id": 1}})
    reference = tf.T5ForConditionalGeneration.from_pretrained(tmp_path).eval()
    enc, dec, mask = inputs()
    with torch.no_grad():
        got = model(enc, dec, encoder_mask=mask)
    assert (got - hf_logits(reference, enc, dec, mask)).abs().max() <= 1e-4
    assert reference.config.pad_token_id == 0 and reference.config.decoder_start_token_id == 0
    assert config_from_hf(config_to_hf(cfg)) == cfg  # config.json round trip
    again = load_hf(tmp_path)
    with torch.no_grad():
        assert torch.equal(again(enc, dec, encoder_mask=mask), got)


def test_a_bert_we_train_and_save_loads_as_bert_for_masked_lm(tmp_path):
    import transformers as tf

    model = trained(PRESETS["bert-tiny"].replace(vocab_size=VOCAB))
    save_hf(model, tmp_path)
    reference = tf.BertForMaskedLM.from_pretrained(tmp_path).eval()
    ids, _, key_mask = inputs()
    with torch.no_grad():
        got = model(ids, key_mask=key_mask)
        want = reference(input_ids=ids, attention_mask=key_mask.long()).logits
    assert (got - want).abs().max() <= 1e-4


def test_greedy_generation_matches_transformers(tmp_path):
    torch.manual_seed(1)
    reference = tiny_t5("relu", True)
    reference.save_pretrained(tmp_path)
    model = load_hf(tmp_path)
    enc, _, mask = inputs()
    got = model.generate(enc, 8, encoder_mask=mask)
    with torch.no_grad():  # transformers' cache assumes as many decoder as encoder layers
        want = reference.generate(
            enc, attention_mask=mask.long(), max_new_tokens=8, do_sample=False, use_cache=False
        )
    assert torch.equal(got, want[:, 1:])  # transformers keeps the start token
    # A stop token ends its row; finished rows are padded with it until all have stopped.
    stop = int(got[1, 0])
    stopped = model.generate(enc, 8, stop_id=stop, encoder_mask=mask)
    expected = []
    for row in got.tolist():
        end = row.index(stop) + 1 if stop in row else len(row)
        expected.append(row[:end] + [stop] * (len(row) - end))
    assert stopped.tolist() == [r[: stopped.shape[1]] for r in expected]
    assert stopped.shape[1] == max(r.index(stop) + 1 if stop in r else 8 for r in got.tolist())


def test_relative_buckets_equal_transformers():
    from transformers.models.t5.modeling_t5 import T5Attention

    relative = torch.arange(-300, 300)[None, :]
    for bidirectional in (True, False):
        for buckets, distance in ((32, 128), (8, 20)):
            want = T5Attention._relative_position_bucket(relative, bidirectional, buckets, distance)
            assert torch.equal(
                relative_position_bucket(relative, bidirectional, buckets, distance), want
            )


def test_reference_attention_path_equals_the_fast_one():
    model = build_model(PRESETS["t5-tiny"]).eval()
    enc, dec, mask = inputs(512)
    with torch.no_grad():
        fast = model.decode(dec, model.encode(enc, mask), mask)
        weights_enc, weights_dec = [], []
        memory = model.encode(enc, mask, attention_weights=weights_enc)
        slow = model.decode(dec, memory, mask, attention_weights=weights_dec)
    assert (fast - slow).abs().max() <= 1e-5
    assert len(weights_enc) == 2 and weights_enc[0].shape == (2, 4, 30, 30)
    assert weights_enc[0][1, :, :, 20:].abs().max() == 0  # padding keys get no weight
    assert weights_dec[0][0].triu(1).abs().max() == 0  # no peeking at later tokens


def test_t5_config_errors():
    with pytest.raises(ConfigError, match="T5-style"):
        PRESETS["t5-tiny"].replace(attention_bias=True)
    with pytest.raises(ConfigError, match="T5-style"):
        PRESETS["t5-tiny"].replace(position="rope")
    with pytest.raises(ConfigError, match="relative position"):
        PRESETS["llama-tiny"].replace(position="relative")
    with pytest.raises(ConfigError, match="gelu_tanh"):
        PRESETS["t5-tiny"].replace(mlp="gated", activation="gelu")
    with pytest.raises(ConfigError, match="decoder_start_id"):
        PRESETS["t5-tiny"].replace(decoder_start_id=512)
    with pytest.raises(ConfigError, match="feed_forward_proj"):
        config_from_hf({**config_to_hf(PRESETS["t5-tiny"]), "feed_forward_proj": "gated-tanh-x"})
    with pytest.raises(ConfigError, match="encoder-decoder config"):
        Seq2Seq(PRESETS["llama-tiny"])


def test_the_language_model_facade_names_the_door_for_t5(tmp_path):
    from giraffe.lm import load

    save_hf(build_model(PRESETS["t5-tiny"]), tmp_path)
    with pytest.raises(ValueError, match="encoder-decoder .*load_hf"):
        load(tmp_path)


def test_incomplete_t5_file_names_the_missing_tensor(tmp_path):
    from safetensors.torch import load_file, save_file

    from giraffe.formats.names import WeightsError

    save_hf(build_model(PRESETS["t5-tiny"]), tmp_path)
    tensors = load_file(tmp_path / "model.safetensors")
    del tensors["decoder.block.1.layer.1.EncDecAttention.k.weight"]
    save_file(tensors, tmp_path / "model.safetensors")
    with pytest.raises(WeightsError, match=r"decoder\.layers\.1\.cross_attn\.k_proj\.weight"):
        load_hf(tmp_path)
