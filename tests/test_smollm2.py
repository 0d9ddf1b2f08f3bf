"""The real SmolLM2-135M-Instruct GGUF: our logits and greedy text against `transformers`.

Both sides dequantize the same Q4_1/Q8_0 blocks to float32, so they must agree closely.
"""

from __future__ import annotations

import pytest
import torch

import giraffe
from giraffe.quant import kernels

pytestmark = pytest.mark.slow

PROMPTS = [
    "The giraffe is",
    "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n",
    "def fibonacci(n):\n    # return the n-th Fibonacci number, 12345 is not one",
]


@pytest.fixture(scope="module")
def ours(smollm2_gguf):
    # Dequantized to float32, exactly what transformers computes from the same file.
    return giraffe.load("smollm2-135m-instruct", packed=False)


@pytest.fixture(scope="module")
def packed(smollm2_gguf):
    return giraffe.load("smollm2-135m-instruct", packed=True)


@pytest.fixture(scope="module")
def reference(smollm2_gguf):
    import transformers

    return transformers.AutoModelForCausalLM.from_pretrained(
        smollm2_gguf.parent, gguf_file=smollm2_gguf.name, torch_dtype=torch.float32
    ).eval()


def test_alias_resolves_to_the_packaged_file(ours, smollm2_gguf):
    assert ours.config.n_layers == 30 and ours.config.kv_heads == 3
    assert ours.tokenizer.vocab_size == 49152


@pytest.mark.parametrize("prompt", PROMPTS)
def test_logits_match_transformers(ours, reference, prompt):
    ids = ours.tokenizer.encode(prompt)
    with torch.no_grad():
        expected = reference(torch.tensor([ids])).logits[0]
    got = ours.logits(ids)
    assert got.shape == (len(ids), 49152)
    assert (got - expected).abs().max().item() <= 1e-3


@pytest.mark.parametrize("prompt", PROMPTS)
def test_greedy_continuation_matches_transformers(ours, reference, prompt):
    ids = ours.tokenizer.encode(prompt)
    with torch.no_grad():
        out = reference.generate(
            torch.tensor([ids]),
            attention_mask=torch.ones(1, len(ids), dtype=torch.long),
            max_new_tokens=32,
            min_new_tokens=32,
            do_sample=False,
            pad_token_id=2,
        )
    expected = out[0, len(ids) :].tolist()
    # min_new_tokens bans the stop tokens on both sides, so all 32 tokens are compared.
    got = ours.complete(ids, max_new_tokens=32, min_new_tokens=32, temperature=0.0)
    assert got.token_ids == expected


def test_chat_answers_and_streams_the_same_text(ours):
    messages = [{"role": "user", "content": "Label as positive or negative: 'I like giraffes.'"}]
    full = ours.chat(messages, temperature=0.0, max_new_tokens=20)
    streamed = "".join(ours.chat(messages, stream=True, temperature=0.0, max_new_tokens=20))
    assert full == streamed and full.strip()
    assert "<|im_end|>" not in full


def test_same_seed_same_text(ours):
    kw = dict(max_new_tokens=20, temperature=0.9, top_p=0.95, seed=123)
    assert ours.generate("The giraffe is", **kw) == ours.generate("The giraffe is", **kw)


def test_packed_model_matches_the_dequantized_reference(ours, packed, float_activations):
    from giraffe.quant.linear import QuantLinear

    assert isinstance(packed.model.layers[0].mlp.up_proj, QuantLinear)
    ids = ours.tokenizer.encode(PROMPTS[1])
    for start in range(0, len(ids), 8):  # short chunks take the packed kernel, not the fallback
        prefix = ids[: start + 8]
        diff = (packed.logits(prefix)[-1] - ours.logits(prefix)[-1]).abs().max().item()
        assert diff <= 2e-3, (start, diff)
    kw = dict(max_new_tokens=32, min_new_tokens=32, temperature=0.0)
    assert packed.complete(ids, **kw).token_ids == ours.complete(ids, **kw).token_ids


@pytest.mark.skipif(not kernels.int8_kinds(), reason="no AVX-512 VNNI: float activations only")
def test_int8_activations_cost_far_less_than_the_weights_quantization(ours, packed):
    """Prompts take the int8 GEMM by default (as llama.cpp): close to, not equal to, float.

    Measured here: KL 0.005 nats/token and 92% top-1 agreement against the same weights
    with float activations; rounding the weights to Q4_1 itself costs ~0.05 nats.
    """
    ids = ours.tokenizer.encode(" ".join(PROMPTS))
    fast, exact = packed.logits(ids).log_softmax(-1), ours.logits(ids).log_softmax(-1)  # (T, V)
    kl = (exact.exp() * (exact - fast)).sum(-1).mean().item()
    agree = (fast.argmax(-1) == exact.argmax(-1)).float().mean().item()
    assert 0 < kl < 0.02 and agree >= 0.85, (kl, agree)
