"""The compiled whole-layer step (giraffe.quant.decode_step) on the families beyond Llama:
tiny packed Qwen3 (QK-norm), Gemma 3 ((1 + w) norms, sandwich norms, GELU-tanh gating, a
query scale, QK-norm, per-layer windows and RoPE bases, scaled embeddings) and Gemma 2
(soft-capped scores instead of QK-norm), Phi-3 (a Llama block stored fused; also with
partial rotary), GPT-NeoX (LayerNorms with biases, parallel residual, partial rotary,
biased projections, a plain erf-GELU MLP) and GPT-2 (learned positions, a plain
GELU-tanh MLP), written through giraffe's GGUF writer as Q8_0 or Q4_K blocks or BF16 (which
runs on the float kernel whatever the activations) and loaded
packed. The reference is the same model on its module path
(`runtime.step = None`): prompts, single-row decoding and continuous batches past the
sliding window, int8 activations on and off; float32 tolerance 1e-4 on the logits."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from fast_path import counting

from giraffe.config import (
    GEMMA2_WIRING,
    GEMMA3_WIRING,
    GPT2_WIRING,
    GPTNEOX_WIRING,
    PHI3_WIRING,
    QWEN3_WIRING,
    ModelConfig,
    periodic_layer_types,
)
from giraffe.formats.gguf import load_gguf, save_gguf
from giraffe.models import Decoder
from giraffe.nn.slot_cache import BatchView, RowView, SlotCache
from giraffe.quant import kernels

pytestmark = pytest.mark.skipif(
    kernels.decode_layer_function() is None, reason="the compiled kernels could not be built here"
)

VOCAB, WINDOW = 300, 4
# hidden 256 and q heads of 4 x 64: every product's rows hold whole Q4_K super-blocks
SHAPE = dict(
    vocab_size=VOCAB, hidden_size=256, n_layers=3, n_heads=4, n_kv_heads=2, head_dim=64,
    intermediate_size=256, max_position_embeddings=128,
)  # fmt: skip
CONFIGS = {
    "qwen3": dict(QWEN3_WIRING, tie_embeddings=False),
    # two sliding layers (their own RoPE base) and a global one; a query scale of its own
    "gemma3": dict(
        GEMMA3_WIRING,
        sliding_window=WINDOW,
        layer_types=periodic_layer_types(3, 3),
        rope_theta=1e6,
        rope_local_theta=1e4,
        query_scale=0.1,
    ),  # fmt: skip
    "phi3": dict(
        PHI3_WIRING, sliding_window=WINDOW
    ),  # stored fused: q|k|v and gate|up split at load
    "gemma2": dict(
        GEMMA2_WIRING,
        sliding_window=WINDOW,
        layer_types=periodic_layer_types(3, 2),
        query_scale=0.1,
        attn_softcap=3.0,
        final_softcap=5.0,
    ),  # fmt: skip
    # partial rotary (48 of 64 dims), as Phi-4-mini's 0.75
    "phi3-partial-rotary": dict(PHI3_WIRING, rotary_dim=48),
    # LayerNorms with biases, parallel attention and MLP, RoPE on a quarter of each head,
    # biases on every projection, a plain erf-GELU MLP
    "gptneox": dict(GPTNEOX_WIRING, rotary_dim=16, n_kv_heads=None),
    # learned positions, LayerNorms, a plain GELU-tanh MLP, biases everywhere
    "gpt2": dict(GPT2_WIRING, n_kv_heads=None),
    # a Llama block gated by erf GELU with MLP biases (the activations outside the vector loop)
    "llama-gated-gelu": dict(activation="gelu", mlp_bias=True),
}


@pytest.fixture(scope="module", params=[(f, d) for f in CONFIGS for d in ("q8_0", "q4_k", "bf16")])
def gguf(request, tmp_path_factory):
    """(family, GGUF file) of a random model with non-trivial norms, in these blocks."""
    family, dtype = request.param
    torch.manual_seed(0)
    model = Decoder(ModelConfig(**{**SHAPE, **CONFIGS[family]})).eval()
    with torch.no_grad():  # random init leaves every norm at 1 (or 0 with an offset)
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(torch.randn_like(p) * 0.3)
    path = tmp_path_factory.mktemp(f"{family}-{dtype}") / "m.gguf"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # query scales llama.cpp would not assume
        save_gguf(model, path, dtype=dtype)
    return family, path


def load_packed(path, monkeypatch, int8: bool):
    """The file loaded packed with int8 activations on or off (from loading on: with them
    on, the loader keeps only the int8 tiles of each product)."""
    monkeypatch.setenv("GIRAFFE_INT8_ACTIVATIONS", "1" if int8 else "0")
    model = load_gguf(path, packed=True)
    assert model.runtime.step is not None, f"{path} has no compiled step"
    return model


@pytest.fixture(params=["int8", "float"])
def packed(request, gguf, monkeypatch):
    """(packed model, tolerance), with int8 activations on or off.

    Float activations: the two paths agree to float32 rounding. Int8 activations: each
    product rounds its input rows to int8, so a 1e-7 difference upstream can flip one
    rounding and move the logits by ~5e-3 (as it does on the plain Llama block too)."""
    int8 = request.param == "int8"
    return load_packed(gguf[1], monkeypatch, int8), 2e-2 if int8 else 1e-4


def both_paths(model, run) -> tuple:
    """run(model) on the compiled step (every call it is offered must be taken), then on
    the module path."""
    fast, taken = model.runtime.step, []
    try:
        model.runtime.step = counting(fast, taken)
        compiled = run(model)
        model.runtime.step = None
        reference = run(model)
    finally:
        model.runtime.step = fast
    assert taken and all(taken), f"the compiled step declined calls: {taken}"
    return compiled, reference


def one_row(model, ids: torch.Tensor, prompt: int) -> torch.Tensor:
    """Logits of a prompt's last token, then of each token decoded one at a time."""
    cache = model.new_cache(1, ids.shape[1])
    steps = [model(ids[:, :prompt], cache=cache)[:, -1]]
    steps += [model(ids[:, t : t + 1], cache=cache)[:, -1] for t in range(prompt, ids.shape[1])]
    return torch.stack(steps, 1)  # (1, T - prompt + 1, V)


@torch.inference_mode()
def test_single_row_prompt_and_steps_past_the_window(packed):
    model, atol = packed
    ids = torch.randint(1, VOCAB, (1, 14))
    compiled, reference = both_paths(model, lambda m: one_row(m, ids, prompt=6))
    torch.testing.assert_close(compiled, reference, atol=atol, rtol=0)


@torch.inference_mode()
def test_a_prompt_longer_than_the_window(packed):
    model, atol = packed
    ids = torch.randint(1, VOCAB, (1, 11))
    compiled, reference = both_paths(model, lambda m: one_row(m, ids, prompt=9))
    torch.testing.assert_close(compiled, reference, atol=atol, rtol=0)


def continuous_batch(model) -> torch.Tensor:
    """Three rows of different lengths prefilled one by one, then stepped together past
    the window; the logits of every prompt and step."""
    cfg = model.config
    cache = SlotCache(cfg.n_layers, 3, cfg.kv_heads, 32, cfg.dim_per_head)
    prompts = [[5, 9, 2, 7, 1, 3, 8], [4, 4], [11, 12, 13, 14, 15]]
    out = []
    for row, ids in enumerate(prompts):
        h = model.hidden(torch.tensor([ids]), cache=RowView(cache, row, len(ids)))
        out.append(model.head(h[:, -1]))
    for step in range(5):
        tokens = torch.tensor([(7 * step + 3 * row) % 50 + 1 for row in range(3)])[:, None]
        positions = cache.lengths[:3, None].clone()
        mask = cache.slot_mask(3)  # plain causal: the sliding layers narrow it themselves
        h = model.hidden(tokens, cache=BatchView(cache, 3), positions=positions, attn_mask=mask)
        out.append(model.head(h[:, -1]))
    return torch.cat(out)  # (3 + 5 * 3, V)


@torch.inference_mode()
def test_continuous_batch_of_rows_past_the_window(packed):
    model, atol = packed
    compiled, reference = both_paths(model, continuous_batch)
    torch.testing.assert_close(compiled, reference, atol=atol, rtol=0)


@pytest.mark.parametrize("threads", [2, 3])
@torch.inference_mode()
def test_decode_rows_as_one_team_equal_layer_by_layer(packed, threads):
    """Decode rows run with every thread together for the whole token (csrc/decode_rows.h);
    its numbers must be the layer-by-layer step's bit for bit: single rows past the
    window and a continuous batch, with 2 and 3 threads (3 shares heads and tiles unevenly)."""
    model, _ = packed
    step, before = model.runtime.step, torch.get_num_threads()
    ids = torch.randint(1, VOCAB, (1, 14))

    def run():
        return one_row(model, ids, prompt=6), continuous_batch(model)

    try:
        torch.set_num_threads(threads)
        team = run()
        step.team = False
        alone = run()
    finally:
        step.team = True
        torch.set_num_threads(before)
    for a, b in zip(team, alone, strict=True):
        assert torch.equal(a, b), (a - b).abs().max()


def prompt_in_pieces(model, ids, prompt: int, piece_rows) -> tuple[list, list]:
    """one_row's logits and the step's scratch (floats) with prompts cut into pieces of at
    most each of piece_rows rows, from an empty scratch each time."""
    step, outputs, scratch, before = model.runtime.step, [], [], model.runtime.step.prompt_rows
    try:
        for rows in piece_rows:
            step.prompt_rows, step.scratch = rows, np.empty(0, np.float32)
            outputs.append(one_row(model, ids, prompt=prompt))
            scratch.append(step.scratch.size)
    finally:
        step.prompt_rows = before
    return outputs, scratch


@torch.inference_mode()
def test_a_long_prompt_in_pieces_equals_it_whole(packed, gguf):
    """FastDecode runs a prompt longer than `prompt_rows` in pieces of nearly equal size,
    each attending to the cache the pieces before it wrote: the same numbers bit for bit
    as in one call (13 rows in pieces of at most 4: 3, 3, 3, 4 - none of one row), and the
    scratch sized for a piece. BF16 products sum in another order from 10 rows on (the
    panel GEMM, csrc/qmatmul.c's half_gemm, against the row kernel's lanes), so there the
    pieces equal the whole to float32 rounding."""
    model, _ = packed
    outputs, scratch = prompt_in_pieces(model, torch.randint(1, VOCAB, (1, 13)), 13, (4, 64))
    if "-bf16" in gguf[1].parent.name:  # (mktemp numbers the folder)
        torch.testing.assert_close(outputs[0], outputs[1], rtol=1e-5, atol=1e-5)
    else:
        assert torch.equal(outputs[0], outputs[1])
    assert scratch[0] * 3 <= scratch[1]  # 4 rows' scratch against 13 rows'


@torch.inference_mode()
def test_the_compiled_step_equals_the_unpacked_model(gguf, monkeypatch):
    """Against the float model of the same file too (float activations: products equal
    dequantize-then-matmul to rounding), so both paths are not wrong together."""
    model = load_packed(gguf[1], monkeypatch, int8=False)
    ids = torch.randint(1, VOCAB, (1, 12))
    compiled, _ = both_paths(model, lambda m: one_row(m, ids, prompt=5))
    plain = load_gguf(gguf[1], packed=False)
    torch.testing.assert_close(compiled, plain(ids)[:, 4:], atol=1e-4, rtol=0)


@pytest.mark.slow
@pytest.mark.parametrize("int8", [False, True], ids=["float", "int8"])
@torch.inference_mode()
def test_real_gemma3_file_takes_the_compiled_step(gemma_gguf, monkeypatch, int8):
    """Gemma 3 270M (Q8_0 embedding, Q5_0/Q4_K/Q6_K layers, 262k vocabulary): a prompt
    and 12 greedy steps on the compiled step against the module path.

    Float activations: equal to float32 rounding (measured 1.7e-5 on logits of ~25).
    Int8 activations: each product rounds its inputs to int8, so 1e-6 differences upstream
    flip roundings, which 18 layers amplify to ~0.6 on the logits (SmolLM2's plain Llama
    step shows the same ~0.5 against its module path); the greedy tokens must agree."""
    model = load_packed(gemma_gguf, monkeypatch, int8)

    def greedy(m):
        cache = m.new_cache(1, 40)
        ids = torch.tensor([[2, 818, 5279, 529, 7001, 563, 9079, 236761]])  # fixed ids after <bos>
        logits = [m.head(m.hidden(ids, cache=cache)[:, -1])]
        for _ in range(12):
            nxt = logits[-1].argmax(-1)[:, None]  # (1, 1)
            logits.append(m.head(m.hidden(nxt, cache=cache)[:, -1]))
        return torch.cat(logits)  # (13, V)

    compiled, reference = both_paths(model, greedy)
    assert torch.equal(compiled.argmax(-1), reference.argmax(-1))
    torch.testing.assert_close(compiled, reference, atol=1.5 if int8 else 1e-3, rtol=0)


@torch.inference_mode()
def test_positions_past_the_first_rope_table(tmp_path, monkeypatch):
    """The C step reads RoPE rows from tables it grows on demand (1024 rows first): a
    context running past them gives the module path's logits, for both RoPE bases."""
    torch.manual_seed(0)
    cfg = ModelConfig(**{**SHAPE, **CONFIGS["gemma3"], "max_position_embeddings": 2048})
    path = tmp_path / "m.gguf"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        save_gguf(Decoder(cfg).eval(), path, dtype="q8_0")
    model = load_packed(path, monkeypatch, int8=False)
    ids = torch.randint(1, VOCAB, (1, 1030))
    compiled, reference = both_paths(model, lambda m: one_row(m, ids, prompt=1020))
    assert model.runtime.step.rope[0][0].shape[0] == 2048  # grown once, past 1024
    torch.testing.assert_close(compiled, reference, atol=1e-4, rtol=0)


@pytest.mark.parametrize("threads", [2, 3])
@pytest.mark.parametrize("int8", [False, True], ids=["float", "int8"])
@torch.inference_mode()
def test_decode_past_512_keys_splits_them_between_threads(tmp_path, monkeypatch, int8, threads):
    """Past TEAM_SPLIT_KEYS (512) keys a decode row's attention splits its keys between the
    threads and merges their partial softmaxes (csrc/decode_rows.h): the module path's
    logits, with grouped-query heads (4 on 2 kv heads) and QK-norm, 2 and 3 threads."""
    torch.manual_seed(0)
    cfg = ModelConfig(**{**SHAPE, **CONFIGS["qwen3"], "max_position_embeddings": 1024})
    path = tmp_path / "m.gguf"
    save_gguf(Decoder(cfg).eval(), path, dtype="q8_0")
    model = load_packed(path, monkeypatch, int8=int8)
    ids, before = torch.randint(1, VOCAB, (1, 600)), torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        compiled, reference = both_paths(model, lambda m: one_row(m, ids, prompt=594))
    finally:
        torch.set_num_threads(before)
    torch.testing.assert_close(compiled, reference, atol=2e-2 if int8 else 1e-4, rtol=0)


@pytest.fixture(scope="module", params=["gemma3", "gptneox"])
def long_context(request, tmp_path_factory):
    """A Q8_0 model of a sequential (sandwich-normed) and a parallel-residual family with
    room for prompts longer than the C step's MLP_ROWS (128)."""
    torch.manual_seed(0)
    cfg = ModelConfig(**{**SHAPE, **CONFIGS[request.param], "max_position_embeddings": 512})
    path = tmp_path_factory.mktemp(request.param) / "m.gguf"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        save_gguf(Decoder(cfg).eval(), path, dtype="q8_0")
    return path


@torch.inference_mode()
def test_a_prompt_past_mlp_rows_runs_its_mlp_in_chunks(long_context, monkeypatch):
    """A 300-row prompt in one call runs its MLP 128 rows at a time (128, 128, 44) with
    buffers for 128 rows: the same numbers bit for bit as pieces of 100 rows (whose MLP
    runs whole), and the module path's to the int8 tolerance."""
    model = load_packed(long_context, monkeypatch, int8=True)
    ids = torch.randint(1, VOCAB, (1, 302))
    outputs, scratch = prompt_in_pieces(model, ids, 300, (512, 100))
    assert torch.equal(outputs[0], outputs[1])
    cfg = model.config
    attention = (
        cfg.hidden_size + 2 * cfg.n_heads * cfg.dim_per_head + 2 * cfg.kv_heads * cfg.dim_per_head
    )
    whole_mlp = 300 * (attention + 3 * cfg.intermediate_size)  # every row's MLP buffers at once
    assert scratch[0] < whole_mlp - 100 * 3 * cfg.intermediate_size
    model.runtime.step = None
    torch.testing.assert_close(outputs[0], one_row(model, ids, prompt=300), atol=2e-2, rtol=0)


def next_token_steps(model, ids: torch.Tensor, prompt: int, through_head: bool) -> list:
    """(numpy logits, argmax) of a prompt's next token, then of each following token fed
    one at a time: through `next_token_logits` (one C call from ids to logits when the
    step has the ends), or through `hidden` then the Python head."""
    cache, out = model.new_cache(1, ids.shape[1]), []
    for lo, hi in [(0, prompt)] + [(t, t + 1) for t in range(prompt, ids.shape[1])]:
        if through_head:
            out.append(model.next_token_logits(ids[:, lo:hi], cache=cache))
        else:
            h = model.hidden(ids[:, lo:hi], cache=cache)[:, -1]
            out.append((model.head(h).float().numpy(), None))
    return out


@torch.inference_mode()
def test_one_call_from_ids_to_logits_equals_layers_then_head(packed):
    """`next_token_logits` runs the lookup (scaled for Gemma), the layers, the head and its
    argmax in one C call: the logits the compiled layers and the Python head give, bit for
    bit (prompt and single rows, int8 and float activations, Q8_0/Q4_K/BF16 heads, tied and
    untied), with the first maximal logit as argmax. Gemma 2's soft-capped head stays in
    Python (no argmax then) and GPT-2's learned positions keep their lookup in Python."""
    model, _ = packed
    ids = torch.randint(1, VOCAB, (1, 11))
    one_call = next_token_steps(model, ids, 6, through_head=True)
    apart = next_token_steps(model, ids, 6, through_head=False)
    step, cfg = model.runtime.step, model.config
    for (logits, argmax), (reference, _) in zip(one_call, apart, strict=True):
        assert logits.dtype == np.float32 and np.array_equal(logits, reference)
        if cfg.final_softcap is not None:
            assert argmax is None
        else:
            assert argmax == reference.argmax(-1).tolist()
    assert (step.head is None) == (cfg.final_softcap is not None)
    assert (step.embed is None) == (cfg.position == "learned")


@torch.inference_mode()
def test_a_continuous_batch_through_the_head_in_c(packed):
    """Three rows at their own cache slots, logits and argmax of each from the one C call,
    equal to the compiled layers followed by the Python head."""
    model, _ = packed
    cfg = model.config
    runs = []
    for through_head in (True, False):
        cache = SlotCache(cfg.n_layers, 3, cfg.kv_heads, 32, cfg.dim_per_head)
        for row, ids in enumerate([[5, 9, 2, 7, 1], [4, 4], [11, 12, 13]]):
            model.hidden(torch.tensor([ids]), cache=RowView(cache, row, len(ids)))
        tokens = torch.tensor([[3], [8], [21]])
        kw = dict(cache=BatchView(cache, 3), positions=cache.lengths[:3, None].clone())
        kw["attn_mask"] = cache.slot_mask(3)
        if through_head:
            runs.append(model.next_token_logits(tokens, **kw))
        else:
            runs.append((model.head(model.hidden(tokens, **kw)[:, -1]).float().numpy(), None))
    (logits, argmax), (reference, _) = runs
    assert np.array_equal(logits, reference)
    if cfg.final_softcap is None:
        assert argmax == reference.argmax(-1).tolist()


@torch.inference_mode()
def test_a_token_id_outside_the_vocabulary_is_refused_by_both_paths(packed):
    model, _ = packed
    for step in (model.runtime.step, None):
        model.runtime.step, cache = step, model.new_cache(1, 4)
        try:
            with pytest.raises(IndexError):
                model.next_token_logits(torch.tensor([[VOCAB]]), cache=cache)
        finally:
            model.runtime.step = step or model.runtime.step


@pytest.mark.parametrize("int8", [False, True], ids=["float", "int8"])
@pytest.mark.filterwarnings("ignore:invalid value encountered in cast")  # gguf on NaN rows
@torch.inference_mode()
def test_the_argmax_in_c_takes_the_first_of_equal_logits_and_a_nan(tmp_path, monkeypatch, int8):
    """Every head row equal: every logit ties and the argmax is 0, as numpy's and torch's
    (the first maximum); rows 5 and 9 NaN: the argmax is 5, as theirs (a NaN wins)."""
    torch.manual_seed(0)
    model = Decoder(ModelConfig(**{**SHAPE, **CONFIGS["qwen3"]})).eval()
    with torch.no_grad():
        model.lm_head.weight.copy_(model.lm_head.weight[:1].expand_as(model.lm_head.weight))
    for nan_rows, expected in (((), 0), ((5, 9), 5)):
        with torch.no_grad():
            model.lm_head.weight[list(nan_rows)] = float("nan")
        path = tmp_path / f"m{len(nan_rows)}.gguf"
        save_gguf(model, path, dtype="q8_0")
        packed = load_packed(path, monkeypatch, int8)
        logits, argmax = packed.next_token_logits(
            torch.tensor([[3, 1, 4]]), cache=packed.new_cache(1, 4)
        )
        assert argmax == [expected] == logits.argmax(-1).tolist()
