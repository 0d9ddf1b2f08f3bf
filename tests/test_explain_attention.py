"""Attention maps: the explicit weights reproduce the fast path, respect the mask, and the
HTML page is standalone (no external URL) and carries the weights it claims to."""

from __future__ import annotations

import base64
import json
import re
import shutil

import numpy as np
import pytest
import torch

import giraffe
from giraffe.config import PRESETS
from giraffe.explain.attention import attention_maps, attention_weights, write_html, write_png
from giraffe.lm import LanguageModel
from giraffe.models import Decoder

TEXT = "No, I am not a giraffe. The giraffe is the tallest animal."


@pytest.fixture(scope="module")
def tokenizer(tiny_folder):
    return giraffe.load_tokenizer(tiny_folder)


def tiny_lm(tokenizer, preset: str, **changes) -> LanguageModel:
    torch.manual_seed(0)
    cfg = PRESETS[preset].replace(vocab_size=tokenizer.vocab_size, **changes)
    return LanguageModel(Decoder(cfg), tokenizer, preset)


def fast_path_outputs(model, ids):
    """Each layer's attention output (before o_proj) and its values, from the fused path."""
    outs, values = [], []
    hooks = []
    for layer in model.layers:
        hooks.append(layer.attn.o_proj.register_forward_pre_hook(lambda m, a: outs.append(a[0])))
        hooks.append(layer.attn.v_proj.register_forward_hook(lambda m, a, o: values.append(o)))
    with torch.inference_mode():
        model.hidden(torch.tensor([ids]))
    for h in hooks:
        h.remove()
    return outs, values


@pytest.mark.parametrize("preset", ["llama-tiny", "gpt2-tiny"])
def test_weights_times_values_reproduce_the_fast_path(tokenizer, preset):
    lm = tiny_lm(tokenizer, preset)
    cfg = lm.config
    ids = tokenizer.encode(TEXT)
    T = len(ids)
    outs, values = fast_path_outputs(lm.model, ids)
    weights = attention_weights(lm.model, ids)  # (L, H, T, T)
    assert weights.shape == (cfg.n_layers, cfg.n_heads, T, T)
    groups = cfg.n_heads // cfg.kv_heads
    for layer in range(cfg.n_layers):
        v = values[layer][0].view(T, cfg.kv_heads, cfg.dim_per_head).transpose(0, 1)  # (Hkv, T, D)
        v = v.repeat_interleave(groups, dim=0)  # (H, T, D): grouped-query heads share v
        mixed = (weights[layer] @ v).transpose(0, 1).reshape(T, -1)  # (T, H*D)
        torch.testing.assert_close(mixed, outs[layer][0], atol=1e-5, rtol=1e-4)


def test_rows_sum_to_one_and_respect_the_causal_mask(tokenizer):
    maps = attention_maps(tiny_lm(tokenizer, "llama-tiny"), TEXT)
    T = len(maps.ids)
    assert maps.causal and maps.tokens == tokenizer.token_strings(maps.ids)
    torch.testing.assert_close(maps.weights.sum(-1), torch.ones(2, 4, T))
    future = torch.triu(torch.ones(T, T, dtype=torch.bool), diagonal=1)
    assert (maps.weights[..., future] == 0).all()
    assert (maps.weights[..., ~future] > 0).all()  # softmax never gives an allowed key zero


def test_sliding_window_hides_old_keys(tokenizer):
    maps = attention_maps(tiny_lm(tokenizer, "llama-tiny", sliding_window=3), TEXT)
    T = len(maps.ids)
    q = torch.arange(T)[:, None]
    k = torch.arange(T)[None, :]
    hidden = (k > q) | (k <= q - 3)
    assert (maps.weights[..., hidden] == 0).all()
    torch.testing.assert_close(maps.weights.sum(-1), torch.ones(2, 4, T))


def page_data(path):
    text = path.read_text(encoding="utf-8")
    literal = re.search(r"const D = (\{.*?\});\n", text).group(1)
    return text, json.loads(literal)


def test_html_is_standalone_and_holds_the_weights(tokenizer, tmp_path):
    maps = attention_maps(tiny_lm(tokenizer, "llama-tiny"), TEXT + " See https://example.com//cdn")
    path = write_html(maps, tmp_path / "att.html", title="tiny </script> https://x")
    text, data = page_data(path)
    for external in ("http://", "https://", "//cdn", "<link", "src="):
        assert external not in text
    assert data["tokens"] == maps.tokens and data["causal"] is True
    assert (data["layers"], data["heads"]) == (2, 4)
    T = len(maps.ids)
    stored = np.frombuffer(base64.b64decode(data["weights"][1]), dtype=np.uint8)
    rows, cols = np.tril_indices(T)
    assert stored.size == 4 * T * (T + 1) // 2  # lower triangle only: causal
    expected = (maps.weights[1].numpy()[:, rows, cols] * 255).round().astype(np.uint8)
    assert np.array_equal(stored.reshape(4, -1), expected)


def test_png_heatmap_and_bad_head(tokenizer, tmp_path):
    maps = attention_maps(tiny_lm(tokenizer, "llama-tiny"), TEXT)
    path = write_png(maps, 1, 3, tmp_path / "head.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="head 4 does not exist"):
        write_png(maps, 0, 4, tmp_path / "bad.png")
    with pytest.raises(ValueError, match="empty"):
        attention_maps(tiny_lm(tokenizer, "llama-tiny"), "")


def test_page_runs_in_chromium_without_errors(tokenizer, tmp_path):
    playwright = pytest.importorskip("playwright.sync_api")
    if shutil.which("chromium") is None:
        pytest.skip("the system Chromium is not installed (apt-get install chromium)")
    maps = attention_maps(tiny_lm(tokenizer, "llama-tiny"), TEXT)
    path = write_html(maps, tmp_path / "att.html")
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=shutil.which("chromium"))
        page = browser.new_page()
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(path.as_uri())
        page.click("#bModel")
        page.wait_for_function("drawn >= L")
        box = page.locator("#grid").bounding_box()
        page.mouse.click(box["x"] + 30, box["y"] + 40)  # layer 0, head 0
        page.wait_for_selector("#zoomBox", state="visible")
        page.screenshot(path=str(tmp_path / "model_view.png"))
        browser.close()
    assert not errors


@pytest.mark.slow
def test_smollm2_gqa_weights_and_a_300_token_page(tmp_path):
    lm = giraffe.load("smollm2-135m-instruct", packed=False)
    ids = lm.tokenizer.encode(TEXT)
    cfg = lm.config
    outs, values = fast_path_outputs(lm.model, ids)
    weights = attention_weights(lm.model, ids)
    T, groups = len(ids), cfg.n_heads // cfg.kv_heads  # 9 query heads share 3 kv heads
    for layer in (0, cfg.n_layers - 1):
        v = values[layer][0].view(T, cfg.kv_heads, cfg.dim_per_head).transpose(0, 1)
        mixed = (weights[layer] @ v.repeat_interleave(groups, dim=0)).transpose(0, 1).reshape(T, -1)
        torch.testing.assert_close(mixed, outs[layer][0], atol=1e-4, rtol=1e-3)
    long_text = lm.tokenizer.decode(lm.tokenizer.encode(TEXT * 40)[:300])
    maps = attention_maps(lm, long_text)
    assert maps.weights.shape[1:] == (9, len(maps.ids), len(maps.ids)) and maps.causal
    path = write_html(maps, tmp_path / "long.html")
    # one byte per weight of the lower triangle, base64 (4/3) and a little page around it
    triangle = 30 * 9 * len(maps.ids) * (len(maps.ids) + 1) // 2
    assert path.stat().st_size < 1.45 * triangle + 100_000
    assert "https://" not in path.read_text(encoding="utf-8")


def test_too_big_is_refused_with_a_reason(tokenizer, tmp_path, monkeypatch):
    import giraffe.explain.attention as attention

    lm = tiny_lm(tokenizer, "llama-tiny")
    maps = attention_maps(lm, TEXT)
    monkeypatch.setattr(attention, "MAX_PAGE_BYTES", 1000)
    with pytest.raises(ValueError, match="shorter text"):
        write_html(maps, tmp_path / "big.html")
    assert not (tmp_path / "big.html").exists()
    monkeypatch.setattr(attention, "MAX_WEIGHT_BYTES", 1000)
    with pytest.raises(ValueError, match="GiB"):
        attention_maps(lm, TEXT)


class EncoderStandIn:
    """What the explainers use of a SentenceEncoder: a model and a tokenizer."""

    def __init__(self, model, tokenizer) -> None:
        self.model, self.tokenizer, self.source = model, tokenizer, "bert-tiny"


def test_encoder_attention_is_bidirectional_and_reproduces_the_fast_path(tokenizer, tmp_path):
    from giraffe.models import Encoder

    torch.manual_seed(0)
    encoder = EncoderStandIn(Encoder(PRESETS["bert-tiny"], mlm_head=False), tokenizer)
    cfg = encoder.model.config
    ids = tokenizer.encode(TEXT, add_special_tokens=True)
    T = len(ids)
    outs, values = fast_path_outputs(encoder.model, ids)
    maps = attention_maps(encoder, TEXT)
    assert not maps.causal and maps.weights.shape == (cfg.n_layers, cfg.n_heads, T, T)
    for layer in range(cfg.n_layers):
        v = values[layer][0].view(T, cfg.kv_heads, cfg.dim_per_head).transpose(0, 1)
        mixed = (maps.weights[layer] @ v).transpose(0, 1).reshape(T, -1)  # (T, H*D)
        torch.testing.assert_close(mixed, outs[layer][0], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(maps.weights.sum(-1), torch.ones(cfg.n_layers, cfg.n_heads, T))
    assert (maps.weights > 0).all()  # every token sees every other one
    _, data = page_data(write_html(maps, tmp_path / "enc.html"))
    stored = np.frombuffer(base64.b64decode(data["weights"][0]), dtype=np.uint8)
    assert data["causal"] is False and stored.size == cfg.n_heads * T * T


def test_next_token_views_refuse_encoders_in_a_sentence(tokenizer):
    from giraffe.explain.decoding_lab import run_lab
    from giraffe.explain.lens import logit_lens
    from giraffe.explain.next_token import next_token_table
    from giraffe.models import Encoder

    encoder = EncoderStandIn(Encoder(PRESETS["bert-tiny"], mlm_head=False), tokenizer)
    for view in (next_token_table, logit_lens, run_lab):
        with pytest.raises(ValueError, match="needs a decoder .* bert-tiny is an encoder"):
            view(encoder, TEXT)
