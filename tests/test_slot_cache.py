"""SlotCache: rows at different lengths, joined and compacted, equal each sequence alone."""

from __future__ import annotations

import pytest
import torch
from fast_path import counting

from giraffe.config import PRESETS
from giraffe.models import Decoder
from giraffe.nn.slot_cache import BatchView, RowView, SlotCache


def make_model(window=None):
    torch.manual_seed(0)
    return Decoder(PRESETS["llama-tiny"].replace(sliding_window=window)).eval()


def full_logits(model, ids):
    """The plain reference: the whole sequence at once, no cache."""
    return model(torch.tensor([ids]))[0, -1]


def slot_cache(model, rows=4, length=64):
    cfg = model.config
    return SlotCache(cfg.n_layers, rows, cfg.kv_heads, length, cfg.dim_per_head)


def prefill(model, cache, row, ids):
    h = model.hidden(torch.tensor([ids]), cache=RowView(cache, row, len(ids)))
    return model.head(h[:, -1])[0]


def batched_step(model, cache, tokens):
    n = len(tokens)
    view = BatchView(cache, n)
    positions = cache.lengths[:n, None].clone()  # rows start at slot 0: position == slot
    mask = cache.slot_mask(n, model.config.sliding_window)
    h = model.hidden(torch.tensor(tokens)[:, None], cache=view, positions=positions, attn_mask=mask)
    return model.head(h[:, -1])  # (n, V)


@pytest.mark.parametrize("window", [None, 3])
@torch.inference_mode()
def test_rows_of_different_lengths_step_together_exactly(window):
    model = make_model(window)
    prompts = [[5, 9, 2, 7, 1, 3, 8], [4, 4], [11, 12, 13, 14]]
    cache = slot_cache(model)
    seqs = [list(p) for p in prompts]
    for row, p in enumerate(prompts):
        torch.testing.assert_close(
            prefill(model, cache, row, p), full_logits(model, p), atol=1e-4, rtol=0
        )
    for step in range(5):
        tokens = [(7 * step + 3 * row) % 50 + 1 for row in range(len(seqs))]
        logits = batched_step(model, cache, tokens)
        for row, t in enumerate(tokens):
            seqs[row].append(t)
            torch.testing.assert_close(
                logits[row], full_logits(model, seqs[row]), atol=1e-4, rtol=0
            )
    assert cache.lengths[:3].tolist() == [len(s) for s in seqs]


@torch.inference_mode()
def test_a_row_that_leaves_is_replaced_by_the_last_and_a_new_one_joins():
    model = make_model()
    cache = slot_cache(model)
    seqs = [[1, 2, 3], [4, 5, 6, 7, 8], [9, 10]]
    for row, p in enumerate(seqs):
        prefill(model, cache, row, p)
    # row 0 leaves: the last row moves into its place
    cache.move(2, 0)
    seqs = [seqs[2], seqs[1]]
    seqs.append([20, 21, 22, 23])  # and a newcomer joins at row 2
    cache.clear(2)
    prefill(model, cache, 2, seqs[2])
    logits = batched_step(model, cache, [30, 31, 32])
    for row, t in enumerate([30, 31, 32]):
        seqs[row].append(t)
        torch.testing.assert_close(logits[row], full_logits(model, seqs[row]), atol=1e-4, rtol=0)


def test_full_cache_names_the_sizes():
    model = make_model()
    cache = slot_cache(model, rows=1, length=4)
    with pytest.raises(ValueError, match="5 slots needed, room for 4"):
        prefill(model, cache, 0, [1, 2, 3, 4, 5])


@torch.inference_mode()
def test_row_view_takes_the_compiled_decode_step_on_packed_weights(tmp_path):
    """A batch of one row keeps the fast path, with the module path's logits."""
    from giraffe.formats.gguf import load_gguf, save_gguf

    torch.manual_seed(0)
    path = save_gguf(Decoder(PRESETS["llama-tiny"]), tmp_path / "m.gguf", dtype="q8_0")
    model = load_gguf(path, packed=True)
    fast = model.runtime.step
    assert fast is not None
    taken = []

    model.runtime.step = counting(fast, taken)
    ids = [1, 2, 3, 4]
    outputs = []
    for _ in ("fast path", "module path"):
        cache = slot_cache(model, rows=2)
        prefill(model, cache, 1, ids)
        h = model.hidden(torch.tensor([[5]]), cache=RowView(cache, 1, 1))
        outputs.append(model.head(h)[0, -1])
        model.runtime.step = None
    assert taken == [True, True]  # the 4-token prompt and the one-token step, both compiled
    torch.testing.assert_close(outputs[0], outputs[1], atol=1e-4, rtol=0)


@torch.inference_mode()
def test_the_cache_grows_as_rows_get_longer_and_keeps_what_it_held():
    model = make_model()
    cache = slot_cache(model, rows=2, length=700)
    assert cache.allocated == 256
    short, long = list(range(1, 40)), [(7 * i) % 90 + 1 for i in range(300)]
    prefill(model, cache, 0, short)
    prefill(model, cache, 1, long)  # needs 300 slots: grows to 512, row 0 is kept
    assert cache.allocated == 512
    logits = batched_step(model, cache, [3, 4])
    torch.testing.assert_close(logits[0], full_logits(model, short + [3]), atol=1e-4, rtol=0)
    torch.testing.assert_close(logits[1], full_logits(model, long + [4]), atol=1e-4, rtol=0)


@pytest.mark.parametrize("window", [None, 3])
@torch.inference_mode()
def test_batched_rows_take_the_compiled_step_with_the_module_paths_logits(tmp_path, window):
    """Continuous batching on packed weights: one C call per layer for all rows."""
    from giraffe.formats.gguf import load_gguf, save_gguf

    torch.manual_seed(0)
    cfg = PRESETS["llama-tiny"].replace(sliding_window=window)
    model = load_gguf(save_gguf(Decoder(cfg), tmp_path / "m.gguf", dtype="q4_1"), packed=True)
    fast = model.runtime.step
    taken = []

    prompts = [[5, 9, 2, 7, 1, 3, 8], [4, 4], [11, 12, 13, 14]]
    outputs = []
    for model.runtime.step in (counting(fast, taken), None):
        cache = slot_cache(model)
        for row, p in enumerate(prompts):
            prefill(model, cache, row, p)
        steps = [batched_step(model, cache, [7 + s, 3 + s, 9 + s]) for s in range(4)]
        outputs.append(torch.stack(steps))
    assert taken == [True] * 7  # the 3 prompts and the 4 batched steps, all compiled
    torch.testing.assert_close(outputs[0], outputs[1], atol=1e-4, rtol=0)
